/* dgram.h: libtlsrpt datagrams (what Postfix 3.10+ sends to a TLSRPT collector) parsed into
 * the sessions they count. Pure C, no Lua. The wire format and how it is counted:
 * docs/tlsrpt-collector.md.
 *
 * A datagram is one JSON object: {"dpv": "1", "d": DOMAIN, "pr": RECORD, "policies": [...]}.
 * Each policy object is one session under that policy (its final result `f` says success or
 * failure), and each of its failure-detail objects one failed session of that detail. The
 * parser turns a datagram into entries, each a canonical key (equal policies give equal bytes,
 * so entries of many datagrams can be summed by key) and counts:
 *   'S' entry: the policy's session: a = successful sessions, b = failed sessions;
 *   'D' entry: a failure detail of the policy: a = failed sessions.
 * The key layout is private to dgram.c; mtasts_dgram_decode reads it back. */
#ifndef MTASTS_DGRAM_H
#define MTASTS_DGRAM_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

#define MTASTS_DGRAM_MAX_POLICIES 64    /* policy objects in one datagram */
#define MTASTS_DGRAM_MAX_DETAILS 64     /* failure details of one policy */
#define MTASTS_DGRAM_MAX_STRINGS 1024   /* policy-string or mx-host items of one policy */
#define MTASTS_DGRAM_MAX_DEPTH 32       /* nesting of JSON values (unknown members) */
#define MTASTS_DGRAM_MAX_KEYS (1u << 20) /* bytes of all the entries' keys of one datagram */

typedef struct { size_t off, len; uint64_t a, b; } mtasts_dgram_entry;

typedef struct {
  mtasts_buf keys;        /* the entries' keys, back to back */
  mtasts_buf ents;        /* mtasts_dgram_entry[n] */
  size_t n;               /* entries */
  unsigned sessions;      /* policy objects counted */
  unsigned repaired;      /* strings with invalid UTF-8 or lone surrogates, repaired (U+FFFD) */
  unsigned t_mismatch;    /* policies whose "t" differs from their number of details */
  unsigned unknown_type;  /* failure details left out: a result type ("c") we do not know */
} mtasts_dgram;

/* Why a datagram was refused (the reason codes of the collector's counters). */
#define MTASTS_DGRAM_REASONS(X) \
  X(JSON, "json")           /* not JSON, or not one object */ \
  X(VERSION, "version")     /* a "dpv" other than the string "1" */ \
  X(MISSING, "missing")     /* no "d" or no "policies", or a policy without "policy-type" or "f" */ \
  X(INVALID, "invalid")     /* a member of the wrong type or value: a bad domain, f not 0 or 1 */ \
  X(POLICY_TYPE, "policy-type") /* a policy type other than 1 (tlsa), 2 (sts), 9 (none) */ \
  X(LIMIT, "limit")         /* more policies, details, strings, nesting or key bytes than above */ \
  X(NOMEM, "nomem")

enum {
#define MTASTS_DGRAM_ENUM(e, s) MTASTS_DGRAM_E##e,
  MTASTS_DGRAM_OK = 0,
  MTASTS_DGRAM_REASONS(MTASTS_DGRAM_ENUM)
  MTASTS_DGRAM_NREASONS
#undef MTASTS_DGRAM_ENUM
};

/* The reason code's name ("json", ...), for 1 <= r < MTASTS_DGRAM_NREASONS. */
const char *mtasts_dgram_reason(int r);

/* Parse one datagram into d (reset first; its buffers are reused, free with
 * mtasts_dgram_free). 0, or a reason (MTASTS_DGRAM_E*) with a one-line message in err. */
int mtasts_dgram_parse(const unsigned char *in, size_t n, mtasts_dgram *d, char *err,
                       size_t errn);
void mtasts_dgram_free(mtasts_dgram *d);

/* An entry's key, read back. Strings point into the key. */
typedef struct { const char *p; size_t n; } mtasts_dgram_str;
typedef struct {
  char kind;                  /* 'S' or 'D' */
  mtasts_dgram_str d;         /* the report's domain (lower case, no trailing dot) */
  int has_pr;
  mtasts_dgram_str pr;        /* the TLSRPT record the MTA used */
  int type;                   /* 1 tlsa, 2 sts, 9 no-policy-found */
  mtasts_dgram_str pdomain;   /* policy-domain (d when the datagram had none) */
  uint32_t nstrings, nmx;
  const unsigned char *strings, *mx;   /* nstrings / nmx encoded strings: use _next */
  unsigned code;              /* 'D': the failure's result type (201 ...) */
  int has[6];                 /* 'D': s n h r a f present */
  mtasts_dgram_str field[6];  /* 'D': sending-mta-ip, receiving-mx-hostname, receiving-mx-helo,
                                 receiving-ip, additional-information, failure-reason-code */
} mtasts_dgram_view;

/* 0, or -1 when the key is not one mtasts_dgram_parse made. */
int mtasts_dgram_decode(const unsigned char *key, size_t n, mtasts_dgram_view *v);
/* The next string of a list (strings or mx) of a decoded key; advances *p. */
mtasts_dgram_str mtasts_dgram_next(const unsigned char **p);

/* RFC 8460 names: of a policy type (1, 2, 9), of a result type (201-205, 301-306); NULL for
 * an unknown number. */
const char *mtasts_dgram_policy_type(int t);
const char *mtasts_dgram_result_type(unsigned c);

#endif
