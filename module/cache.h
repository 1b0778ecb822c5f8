/* cache.h: the MTA-STS policy cache (cache.c). Pure C, no Lua. Its rows are encoded by
 * row.c (row.h). Included by the binding (lua_cache.c). */
#ifndef MTASTS_CACHE_H
#define MTASTS_CACHE_H

#include "buf.h"
#include "env.h"
#include "mtasts.h"
#include "row.h"

#include <limits.h>

#define MTASTS_BACKOFF_SECONDS 300     /* a failed fetch is not retried for this long */
#define MTASTS_TOUCH_SECONDS 60        /* last_use is written at most this often per row */

/* The cache is policies.db of an environment (env.h: mtasts_env_open, mtasts_env_close);
 * every function takes a handle on it. */

/* A handle's memo: copies of rows it looked up, answered from without entering the gate
 * while the row's version (env.h) holds. For one thread at a time, like the handle. At most
 * `rows` rows (emptied when full); NULL when rows is 0 or there is no memory (no memo). */
typedef struct mtasts_memo mtasts_memo;
#define MTASTS_MEMO_ROWS 4096
mtasts_memo *mtasts_memo_new(size_t rows);
void mtasts_memo_free(mtasts_memo *m);
size_t mtasts_memo_rows(const mtasts_memo *m);   /* how many it holds */

/* Look a domain up. *found is 1 with the row decoded from b when a row exists and
 * now < valid_end; 0 otherwise. Writes last_use when it is MTASTS_TOUCH_SECONDS old.
 * key (MTASTS_NAME_MAX + 1 bytes) receives the domain as the cache keys it (A-labels).
 * With a memo, a row looked up before and not written since is answered from it. When
 * *versioned is 1, *version is the row's version: mtasts_env_row_version of key gives it
 * for as long as the row stays as it is (not after a touch, which wrote it). */
int mtasts_cache_lookup(mtasts_env *e, mtasts_memo *memo, const char *domain, int64_t now,
                        mtasts_buf *b, mtasts_row *row, int *found, char *key,
                        uint64_t *version, int *versioned, char *err);
/* Insert or replace the row of a domain: a policy (text parsed here), or a backoff row
 * when text is NULL. Committed durably before it returns 0. */
int mtasts_cache_upsert(mtasts_env *e, const char *domain, const char *record_id,
                        const char *text, size_t text_len, int64_t now, mtasts_buf *b,
                        char *err);
/* The record id was seen unchanged: last_update = now, and with extend also
 * valid_end = now + max_age (not for backoff rows). *found = 0 when there is no row. */
int mtasts_cache_mark_checked(mtasts_env *e, const char *domain, int64_t now, int extend,
                              int *found, mtasts_buf *b, char *err);
int mtasts_cache_delete(mtasts_env *e, const char *domain, int *found, char *err);

/* Every row that decodes and names its own key (the others are left out; verify counts
 * them), most recently used first, ties by domain. *rows points to *n rows decoded into
 * index, which point into scan: both buffers are the caller's, reused from call to call,
 * and hold the rows until the next call. */
int mtasts_cache_list(mtasts_env *e, mtasts_buf *scan, mtasts_buf *index,
                      const mtasts_row **rows, size_t *n, char *err);
/* Domains whose last_update <= now - older_than (oldest first is not guaranteed), copied
 * into b; read them with mtasts_cache_next. *count is how many. */
int mtasts_cache_due(mtasts_env *e, int64_t now, int64_t older_than, mtasts_buf *b,
                     size_t *count, char *err);
/* A record of a scan buffer: a key, and its encoded row (empty after mtasts_cache_due). */
typedef struct { mtasts_span key; const unsigned char *row; size_t rn; } mtasts_cache_rec;
/* The record at *pos of b (start with *pos = 0): 1 and the record, or 0 after the last. */
int mtasts_cache_next(const mtasts_buf *b, size_t *pos, mtasts_cache_rec *r);
/* Delete rows whose last_use < now - unused_for; *deleted is how many. */
int mtasts_cache_prune(mtasts_env *e, int64_t now, int64_t unused_for, size_t *deleted,
                       mtasts_buf *b, char *err);

/* Leases: a name held by one holder until a time, shared by every process of the cache
 * (one server refreshes a domain, the others skip it). A lease that ended is free; a holder
 * killed while holding one loses it when it ends. */
#define MTASTS_LEASE_NAME_MAX 300
#define MTASTS_LEASE_HOLDER_MAX 128
/* Take or renew the lease `name` for holder until `until` unless another holder has it and it
 * has not ended at `now`. *got is 1 when this holder has it now; held_by
 * (MTASTS_LEASE_HOLDER_MAX + 1 bytes) and *held_until say who has it and until when ("" and 0
 * when no one). Committed durably. */
int mtasts_cache_lease(mtasts_env *e, const char *name, const char *holder, int64_t now,
                       int64_t until, int *got, char *held_by, int64_t *held_until,
                       mtasts_buf *b, char *err);
/* Give the lease up if holder has it: *released is 1 when it did. */
int mtasts_cache_release(mtasts_env *e, const char *name, const char *holder, int *released,
                         mtasts_buf *b, char *err);

/* Flush everything to the database file (a forced checkpoint), verify the file's structure
 * with DB->verify, then decode every row. 0, DB_VERIFY_BAD or another code for the file,
 * or MTASTS_ECORRUPT ("2 of 6 rows are corrupt (the first: ...)"). */
int mtasts_cache_verify(mtasts_env *e, char *err);

/* A row read back from a damaged cache (rebuild.c), stored under the domain it names unless
 * a copy at least as new (by last_update) is there already. *outcome: IGNORED (not a row of
 * this format), BAD (does not decode, or names no proper domain), ADDED (a domain not there
 * before, or whose row did not decode), MERGED (a newer copy won, or this one replaced an
 * older one). old is scratch. 0, or an error code with a message in err. */
enum { MTASTS_SALVAGE_IGNORED, MTASTS_SALVAGE_BAD, MTASTS_SALVAGE_ADDED, MTASTS_SALVAGE_MERGED };
int mtasts_cache_put_salvaged(mtasts_env *e, const mtasts_buf *row, mtasts_buf *old,
                              int *outcome, char *err);

/* --- rebuild (rebuild.c) --- */

/* What a rebuild did: policy rows salvaged, rows that did not decode, result store records
 * carried over, how many helper processes (recovery, salvagers) were stopped after
 * 60 s or died (what they wrote by then is kept), and where the old directory
 * went. */
typedef struct {
  size_t salvaged, skipped, results;
  int stopped;
  char moved_to[PATH_MAX];
} mtasts_rebuild;

/* Salvage every readable row of the cache in path, and every readable record of its result
 * store, into a new cache, and swap them: the old directory is kept as
 * <path>.broken-<UTC time>[-N]. A copy of the old files is first brought up to date with
 * the log, so writes a killed process committed are kept. The new directory and its files
 * get the old directory's owner (when run as root), group and mode; the files' mode is mode
 * (0600 or 0660), or with 0 that of the old files. Fails with EBUSY while any process has
 * the cache open. */
int mtasts_cache_rebuild(const char *path, unsigned mode, mtasts_rebuild *r, char *err);

#endif
