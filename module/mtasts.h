/* mtasts.h: internal header of mtasts.core. Shared structs and helper prototypes.
 *
 * The parse and domain parts below include no Lua header: they are used by the Lua bindings,
 * the fuzz harnesses and any C test alike. Everything here is hidden (-fvisibility=hidden);
 * the only exported symbol is luaopen_mtasts_core. */
#ifndef MTASTS_H
#define MTASTS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define MTASTS_EXPORT __attribute__((visibility("default")))
#define MTASTS_VERSION "0.1.0"

/* Limits (docs/conformance.md §1-§3). */
#define MTASTS_RECORD_MAX 4096        /* a TXT record (strings concatenated) */
#define MTASTS_POLICY_MAX 65536       /* a policy body */
#define MTASTS_MAX_AGE_MAX 31557600u  /* larger max_age values are clamped to this */
#define MTASTS_NAME_MAX 253           /* a domain name in A-label form, no trailing dot */
#define MTASTS_LABEL_MAX 63
#define MTASTS_UNAME_MAX 1024         /* a domain name in U-label form (UTF-8) + NUL */
#define MTASTS_ERR_MAX 512

/* A byte range inside the caller's input. Never NUL-terminated. */
typedef struct { const char *p; size_t n; } mtasts_span;
typedef struct { mtasts_span key, value; } mtasts_kv;

/* A growable array of spans or key/value pairs, owned by the struct that holds it. */
typedef struct { mtasts_kv *v; size_t n, cap; } mtasts_kvs;
typedef struct { mtasts_span *v; size_t n, cap; } mtasts_spans;

/* --- MTA-STS TXT record (RFC 8461 §3.1) --- */
typedef struct {
  mtasts_span id;
  mtasts_kvs ext;      /* extensions in record order */
} mtasts_record;

/* --- MTA-STS policy (RFC 8461 §3.2) --- */
enum { MTASTS_MODE_NONE = 0, MTASTS_MODE_TESTING = 1, MTASTS_MODE_ENFORCE = 2 };
typedef struct {
  int mode;
  uint32_t max_age;    /* clamped to MTASTS_MAX_AGE_MAX */
  mtasts_spans mx;     /* patterns as in the text (ASCII, any case, trailing dot dropped) */
  mtasts_kvs ext;
} mtasts_policy;

/* --- TLSRPT TXT record (RFC 8460 §3) --- */
typedef struct {
  mtasts_spans rua;    /* URIs in record order */
  mtasts_kvs ext;
} mtasts_tlsrpt_record;

/* Parsers. Each returns 0 on success or -1 with a message in err (MTASTS_ERR_MAX bytes,
 * always NUL-terminated). Output spans point into the input, which must outlive them.
 * The output struct must be zeroed before the call and released with its _free function
 * whatever the result (it may hold memory after a failure). -2 means out of memory. */
int mtasts_parse_record(const char *s, size_t n, mtasts_record *out, char *err);
void mtasts_record_free(mtasts_record *r);
int mtasts_parse_policy(const char *s, size_t n, mtasts_policy *out, char *err);
void mtasts_policy_free(mtasts_policy *p);
int mtasts_parse_tlsrpt_record(const char *s, size_t n, mtasts_tlsrpt_record *out, char *err);
void mtasts_tlsrpt_record_free(mtasts_tlsrpt_record *r);

/* The address of a mailto: URI (RFC 6068), percent-decoded, up to any "?hfields": 1 and
 * the address in out (MTASTS_MAILTO_MAX + 1 bytes, NUL-terminated; its length in *outn)
 * when it is an RFC 5322 addr-spec without control characters (a dot-atom or quoted
 * local-part, a host name of two or more labels as domain); else 0 with the reason in *why.
 * The rua parser applies it, and the report sender delivers to nothing else. */
#define MTASTS_MAILTO_MAX 254
int mtasts_mailto_address(const char *p, size_t n, char *out, size_t *outn, const char **why);

/* 1 when a TXT string is an MTA-STS (or TLSRPT) record candidate: starts with the version
 * tag followed by a delimiter (space, tab or ';'). Used to pick records out of a TXT set. */
int mtasts_is_sts_record(const char *s, size_t n);
int mtasts_is_tlsrpt_record(const char *s, size_t n);

/* RFC 8461 §4.1: 1 when host matches pattern. Both are compared case-insensitively, a
 * trailing dot on either is ignored; host must already be in A-label form. */
int mtasts_match(const char *pattern, size_t pn, const char *host, size_t hn);

const char *mtasts_mode_name(int mode);

/* Quote untrusted bytes for an error message: printable ASCII as is, everything else as
 * \xNN, cut at max input bytes with "...". out must hold 4*max+4 bytes. */
void mtasts_quote(char *out, size_t outlen, const char *p, size_t n, size_t max);

/* The value of a hex digit, or -1. */
static inline int mtasts_hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* --- domain names (domain.c) --- */
/* Convert a domain name (A-labels, U-labels, any case, optional trailing dot) to its
 * lower-case A-label form. ascii must hold MTASTS_NAME_MAX+1 bytes. 0 or -1 with err. */
int mtasts_domain_ascii(const char *s, size_t n, char *ascii, char *err);
/* The U-label form of a valid A-label name (as produced by mtasts_domain_ascii).
 * uni must hold MTASTS_UNAME_MAX bytes. 0 or -1 with err. */
int mtasts_domain_unicode(const char *ascii, char *uni, char *err);

/* Seconds on the monotonic clock, which never jumps: the one clock C reads (deadlines of DNS
 * queries, transfers and salvage helpers; core.monotonic). Policy time comes from callers. */
static inline double mtasts_monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --- error codes (errname.c) --- */
/* Codes of our own; Berkeley DB codes and errno values are passed through as they are. */
#define MTASTS_ECORRUPT (-40001)        /* a row that does not decode */
#define MTASTS_EPOLICY  (-40002)        /* upsert given a policy text that does not parse */
#define MTASTS_EDOMAIN  (-40003)        /* a key that is not a domain name */
#define MTASTS_ECONFIG  (-40004)        /* a setting's value is unusable (a CA file, a port) */
#define MTASTS_ELOCAL   (-40005)        /* this host failed (memory, descriptors, a thread) */
/* The stable code string of an error code (docs/errors.md): "db-runrecovery", "enospc",
 * "corrupt", ...; "bdb-error" for any other. */
const char *mtasts_code_name(int rc);

/* --- Lua bindings (lua_*.c); the prototypes need no Lua header --- */
struct lua_State;
void mtasts_open_parse(struct lua_State *L);   /* adds the parse functions to the table on top */
void mtasts_open_cache(struct lua_State *L);   /* adds cache_open and the mtasts.cache class */
void mtasts_open_resolver(struct lua_State *L); /* adds resolver_new and mtasts.resolver */
void mtasts_open_fetch(struct lua_State *L);    /* adds fetcher_new and mtasts.fetcher */
void mtasts_open_results(struct lua_State *L);  /* adds results_open, mtasts.results, codecs */
void mtasts_open_collector(struct lua_State *L);  /* adds collector_open, dgram_parse */
void mtasts_open_redis(struct lua_State *L);     /* adds redis_connect, mtasts.redis_conn */
void mtasts_open_net(struct lua_State *L);       /* adds poller (mtasts.poller), recv, send */

#endif
