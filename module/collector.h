/* collector.h: the libtlsrpt datagram collector's socket side. Pure C, no Lua.
 *
 * A receiver thread of its own drains the Unix datagram socket with recvmmsg, parses each
 * datagram (dgram.c) and sums the sessions in memory by key; the caller (the Lua loop,
 * lua/mtasts/tlsrpt/collector.lua) takes the sums every second or so and commits them to the
 * result store. The thread never waits on the store, so a slow commit does not stop reading:
 * the socket's queue holds only net.unix.max_dgram_qlen + 1 datagrams (11 by default), and
 * what a sender cannot queue is lost at the sender. Design: docs/tlsrpt-collector.md. */
#ifndef MTASTS_COLLECTOR_H
#define MTASTS_COLLECTOR_H

#include "buf.h"
#include "dgram.h"

#include <stdint.h>

#define MTASTS_COLLECTOR_MAX_DGRAM (256u * 1024)   /* larger ones are counted `oversized` */
#define MTASTS_COLLECTOR_MAX_ENTRIES 200000        /* distinct sums held between takes */
#define MTASTS_COLLECTOR_MAX_ARENA (64u << 20)     /* bytes of keys held between takes */

typedef struct mtasts_collector mtasts_collector;

typedef struct {
  const char *path;        /* the socket's path */
  unsigned mode;           /* its permissions (e.g. 0660) */
  long gid;                /* its group, or -1 to leave it */
  int rcvbuf;              /* SO_RCVBUF to ask for, 0 for the default */
  const char *state;       /* the state file (how many datagrams this instance accepted), or NULL */
} mtasts_collector_opts;

typedef struct {
  uint64_t received;       /* datagrams read */
  uint64_t accepted;       /* of them, counted */
  uint64_t sessions;       /* policy objects counted */
  uint64_t bytes;          /* bytes read */
  uint64_t reads;          /* recvmmsg calls that returned datagrams */
  uint64_t rejected[MTASTS_DGRAM_NREASONS];   /* by reason; [0] unused */
  uint64_t oversized;      /* longer than MTASTS_COLLECTOR_MAX_DGRAM: truncated, not counted */
  uint64_t overflow;       /* not counted: the sums held reached their limits */
  uint64_t repaired;       /* counted, with strings repaired (invalid UTF-8) */
  uint64_t t_mismatch;     /* policies whose "t" differed from their details */
  uint64_t unknown_type;   /* failure details left out: unknown result type */
  uint64_t last_seq;       /* rejections so far: changes when `last` does */
  int qlen;                /* net.unix.max_dgram_qlen when the socket was made, or -1 */
  int rcvbuf;              /* SO_RCVBUF the kernel gave */
  int rt;                  /* the reader runs with a real-time priority */
} mtasts_collector_stats;

/* Make the socket (a stale socket file is replaced; a live one, or a file of another kind at
 * the path, is an error) and start the receiver thread. The state file, when given, is read
 * first: prev_instance / prev_accepted say what the collector before this one had accepted
 * (0, 0 when none). 0, or an errno with err set. */
int mtasts_collector_open(const mtasts_collector_opts *o, mtasts_collector **out,
                          uint64_t *instance, uint64_t *prev_instance, uint64_t *prev_accepted,
                          char *err);

/* Take the sums gathered since the last take: out gets, per entry, u32 key length, key,
 * u64 a, u64 b (big-endian); *entries and *datagrams say how many. 0, or ENOMEM. */
int mtasts_collector_take(mtasts_collector *c, mtasts_buf *out, size_t *entries,
                          uint64_t *datagrams);

/* The counters, and the last rejection (reason: message; excerpt) into last. */
void mtasts_collector_counters(mtasts_collector *c, mtasts_collector_stats *s, char *last,
                            size_t lastn);

/* Remove the socket file, read what is still queued, stop the thread. Then take once more
 * and free. Idempotent. */
void mtasts_collector_stop(mtasts_collector *c);
void mtasts_collector_free(mtasts_collector *c);

#endif
