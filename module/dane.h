/* dane.h: the DANE verification primitive (RFC 7672 §3.1-§3.2, on OpenSSL's own DANE
 * support): a certificate chain against a TLSA record set, at a given time, for given names.
 * Pure C (OpenSSL only, no Lua header); module/dane.c. Contract: docs/dane.md. */
#ifndef MTASTS_DANE_H
#define MTASTS_DANE_H

#include "mtasts.h"

#include <stddef.h>
#include <stdint.h>

/* One TLSA record as it came from DNS. data is borrowed for the call. */
typedef struct {
  unsigned usage, selector, mtype;          /* each 0-255 */
  const unsigned char *data;
  size_t n;
} mtasts_tlsa;

/* The chain the server sent, leaf first: either one PEM text (pem != NULL) or der[0..nder)
 * with lengths derlen[] (pem == NULL). Borrowed for the call. */
typedef struct {
  const char *pem;
  size_t pemlen;
  const unsigned char *const *der;
  const size_t *derlen;
  size_t nder;
} mtasts_dane_chain;

/* The outcome of a verification. ok: the record that matched and its depth (0 = the leaf;
 * a trust anchor given only by the record is one above the last certificate of the chain).
 * Not ok: the RFC 8460 result type (a static string) and a reason, short and printable. */
typedef struct {
  int ok;
  unsigned usage, selector, mtype;
  int depth;
  const char *result_type;
  char reason[MTASTS_ERR_MAX];
} mtasts_dane_result;

/* The shared part of every verification: an SSL_CTX with DANE enabled (SHA-256 and SHA-512
 * as matching types 1 and 2). Making one costs about half a millisecond; once made it is only
 * read (SSL_new takes a reference), so one may serve any number of calls from any thread. */
typedef struct mtasts_dane_ctx mtasts_dane_ctx;
/* 0 and a new context in *out, or -2 with a message in err (OpenSSL failed: memory). */
int mtasts_dane_ctx_new(mtasts_dane_ctx **out, char *err);
void mtasts_dane_ctx_free(mtasts_dane_ctx *c);   /* NULL is allowed */

/* Verify chain against recs[0..nrec) for any of names[0..nnames) (nnames >= 1, each a
 * NUL-terminated A-label name) at time now (seconds since the epoch). Returns 0 with the
 * outcome in *res, whatever the chain and the records hold (they come from the network and
 * never make this fail); -1 with a message in err when a name is refused (empty, over 253
 * bytes); -2 with a message in err when OpenSSL fails on this host (memory). ctx is from
 * mtasts_dane_ctx_new, or NULL to make one for this call only. Thread-safe: every other
 * OpenSSL object is made and freed inside the call. */
int mtasts_dane_verify(mtasts_dane_ctx *ctx, const mtasts_dane_chain *chain,
                       const mtasts_tlsa *recs, size_t nrec, const char *const *names,
                       size_t nnames, int64_t now, mtasts_dane_result *res, char *err);

/* --- the binding (lua_dane.c); the prototype needs no Lua header --- */
struct lua_State;
void mtasts_open_dane(struct lua_State *L);   /* adds dane_verify to the table on top */

#endif
