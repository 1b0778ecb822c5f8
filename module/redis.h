/* redis.h: a non-blocking Redis connection (TCP, or TLS with OpenSSL) and the bounded reply
 * reader under it. Pure C, no Lua. hiredis does only the protocol: formatting commands
 * (redisFormatCommandArgv) and reading replies (its reader, with our object functions, so
 * replies become the tree below and every size is checked as it is read). Contract:
 * docs/redis.md. */
#ifndef MTASTS_REDIS_H
#define MTASTS_REDIS_H

#include "mtasts.h"

#include <stddef.h>

/* Limits on one reply, so that a hostile server cannot exhaust memory: the bytes of its
 * strings and arrays together, the elements of its arrays together, the length of a line
 * (a status, an error, an integer, a length). Nesting is bounded by hiredis (7 levels). */
#define MTASTS_REDIS_REPLY_MAX (64u << 20)
#define MTASTS_REDIS_ELEMENTS_MAX (1u << 20)
#define MTASTS_REDIS_LINE_MAX 65536u

/* Return codes beyond 0: the connection is unusable (refused, reset, closed, TLS), or the
 * server broke the protocol (malformed or oversized reply); MTASTS_ECONFIG for settings,
 * ENOMEM for memory. After any failure of step the connection is dead. */
#define MTASTS_REDIS_EUNAVAIL (-1)
#define MTASTS_REDIS_EPROTO (-2)

enum {
  MTASTS_REDIS_STRING = 1, MTASTS_REDIS_ARRAY, MTASTS_REDIS_INTEGER, MTASTS_REDIS_NIL,
  MTASTS_REDIS_STATUS, MTASTS_REDIS_ERROR
};

/* One reply. str (NUL-terminated after len bytes) for STRING, STATUS and ERROR; integer for
 * INTEGER; n elements in elem for ARRAY. A tree owned by its root. */
typedef struct mtasts_redis_reply {
  int type;
  long long integer;
  char *str;
  size_t len;
  size_t n;
  struct mtasts_redis_reply **elem;
  struct mtasts_redis_reply *next;   /* the queue of complete replies of a connection */
} mtasts_redis_reply;

void mtasts_redis_reply_free(mtasts_redis_reply *r);

/* --- the reader alone (fuzz/fuzz_redis.c feeds it bytes) --- */

typedef struct mtasts_redis_reader mtasts_redis_reader;

mtasts_redis_reader *mtasts_redis_reader_new(void);
void mtasts_redis_reader_free(mtasts_redis_reader *rd);
/* Add n bytes: 0, MTASTS_REDIS_EPROTO (the reply would pass a limit) or ENOMEM, with err. */
int mtasts_redis_reader_feed(mtasts_redis_reader *rd, const char *p, size_t n, char *err);
/* The next complete reply into *out (the caller owns it), or *out = NULL when more bytes are
 * needed: 0, or MTASTS_REDIS_EPROTO / ENOMEM with err. After a failure the reader is spent. */
int mtasts_redis_reader_get(mtasts_redis_reader *rd, mtasts_redis_reply **out, char *err);

/* --- the connection --- */

typedef struct {
  const char *host;          /* an IPv4 or IPv6 literal */
  int port;
  int tls;
  const char *server_name;   /* TLS: the name checked and sent as SNI; default host */
  const char *cafile, *capath;
} mtasts_redis_opts;

typedef struct mtasts_redis mtasts_redis;

#define MTASTS_REDIS_WANT_READ 1
#define MTASTS_REDIS_WANT_WRITE 2

/* Start connecting (never blocks): 0 with *out, or MTASTS_ECONFIG (an address that is no IP
 * literal, a CA file that does not load), MTASTS_REDIS_EUNAVAIL (refused at once), ENOMEM. */
int mtasts_redis_connect(const mtasts_redis_opts *o, mtasts_redis **out, char *err);
void mtasts_redis_free(mtasts_redis *c);
int mtasts_redis_fd(const mtasts_redis *c);
/* What to wait for: MTASTS_REDIS_WANT_READ and/or _WRITE. */
int mtasts_redis_want(const mtasts_redis *c);
/* Append one command (binary-safe arguments) to the output: 0, or ENOMEM, or
 * MTASTS_REDIS_EUNAVAIL on a dead connection. */
int mtasts_redis_send(mtasts_redis *c, int argc, const char **argv, const size_t *lens,
                      char *err);
/* Do what I/O can be done now; complete replies are queued (peek, pop). 0, or a code with
 * err: the connection is dead from then on. */
int mtasts_redis_step(mtasts_redis *c, char *err);
/* The oldest complete reply not popped (still owned by the connection), or NULL. */
mtasts_redis_reply *mtasts_redis_peek(mtasts_redis *c);
void mtasts_redis_pop(mtasts_redis *c);
/* Commands sent whose replies have not been read. */
size_t mtasts_redis_pending(const mtasts_redis *c);

#endif
