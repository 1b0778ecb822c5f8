/* env.h: the shared Berkeley DB environment of a cache directory (env.c). Pure C, no Lua.
 *
 * One directory holds one transactional environment with two databases: the policy cache
 * (policies.db, cache.c) and the TLSRPT result store (results.db, results.c). They are peers
 * over one environment: it owns the crash gate, the per-process registry of environments,
 * recovery, verification, and running an operation inside the gate with retries. The rebuild
 * (rebuild.c) uses the functions at the end to claim a directory nobody uses. */
#ifndef MTASTS_ENV_H
#define MTASTS_ENV_H

#include "mtasts.h"

#include <limits.h>
#include <stdint.h>

#define MTASTS_POLICIES_FILE "policies.db"  /* the policy cache (cache.c) */
#define MTASTS_RESULTS_FILE "results.db"    /* the TLSRPT result store (results.c) */
#define MTASTS_GATE_FILE "mtasts.gate"      /* the crash gate, the in-use lock, the damaged mark */

/* A handle on the environment of a directory. Every handle of a process on one directory
 * shares one Berkeley DB environment; the environment closes with the last handle. */
typedef struct mtasts_env mtasts_env;

/* Open (creating if needed) the environment in directory path. mode is that of the files
 * this process makes there: 0600, 0660 (the directory's group shares them), or 0 for the
 * mode of the existing mtasts.gate (0600 for a new cache); the first handle of a process on
 * a directory decides. A directory made here is 0700, or 02770 for 0660 (docs/cache.md,
 * "Files"). 0, or an error code with a message in err (EINVAL for another mode); *out is
 * set only on success. A damaged cache opens: its operations fail with MTASTS_ECORRUPT and
 * the rebuild hint. */
int mtasts_env_open(const char *path, unsigned mode, mtasts_env **out, char *err);
/* Close the handle (gone whatever the result). 0 or an error code with a message in err.
 * Closes Berkeley DB's handles when it is the process's last handle. */
int mtasts_env_close(mtasts_env *e, char *err);
const char *mtasts_env_path(const mtasts_env *e);            /* the resolved directory */
/* The gate's generation (changes with every recovery), and how many recoveries a death
 * inside the cache or a panic caused since the gate was made. */
uint64_t mtasts_env_generation(const mtasts_env *e);
uint64_t mtasts_env_recoveries(const mtasts_env *e);

/* Row versions: a counter per bucket of policy keys, in the gate file, shared by every
 * process. An operation bumps the counter of a key before it writes or deletes the key's row
 * (mtasts_env_row_written), and a recovery bumps them all; nothing ever lowers one. So a row
 * read inside the gate together with its counter's value is still what the database holds
 * for as long as the counter keeps that value: a process may answer from its own copy then
 * without entering the gate (cache.c's memo), and many processes read at once. */
#define MTASTS_ROWVER_BUCKETS 4096     /* a power of 2 */
/* The counter of key's bucket, read without the gate: 0 and *v; MTASTS_ECORRUPT when the
 * cache was found damaged, ENOTSUP while processes of the previous release (whose gate has
 * no versions) share the cache: no copy may be used then. */
int mtasts_env_row_version(const mtasts_env *e, const char *key, size_t n, uint64_t *v);
/* Inside an operation (mtasts_env_run), before a write or delete of key: bump its counter. */
void mtasts_env_row_written(const char *key, size_t n);

/* Which database an operation runs on. */
enum { MTASTS_DB_POLICIES, MTASTS_DB_RESULTS };

struct __db_env;
struct __db;
/* An operation: called inside the gate with the environment and the database; returns 0
 * or a Berkeley DB or errno code. It begins and commits its own transaction, if any. */
typedef int (*mtasts_env_fn)(struct __db_env *env, struct __db *db, void *ctx);

/* Run fn on database which inside the gate. Deadlocks (only between threads of a process)
 * are retried; a panic (DB_RUNRECOVERY) makes the next holder recover, once; writes lets the
 * environment checkpoint afterwards. When results.db failed to open, operations on it fail
 * with that error and policy operations go on. 0, or the code with a message in err:
 * "cache <path>: <what>: <library text>[; <hint>]". */
int mtasts_env_run(mtasts_env *e, int which, int writes, mtasts_env_fn fn, void *ctx,
                   const char *what, char *err);

/* Force a checkpoint, so that the file holds every committed write, then check the
 * structure of database which with DB->verify. 0, DB_VERIFY_BAD or another code. */
int mtasts_env_verify(mtasts_env *e, int which, char *err);

/* --- for the rebuild (rebuild.c) --- */

/* Claim the directory real (resolved) for a rebuild: it must pass the checks of open (or,
 * for root, be writable by nobody but its owner and group), this process must not have it
 * open (EBUSY), and no other process may (EBUSY, naming one). On success *fd holds the gate's in-use lock, exclusively,
 * until it is closed; nobody can open the cache meanwhile. */
int mtasts_env_claim(const char *real, int *fd, char *err);

/* Whether an ACL of directory path (whose stat is st) lets a user or group other than its
 * owner and group write it or the files made in it; 1 also when the ACL cannot be read. */
struct stat;
int mtasts_env_acl_writers(const char *path, const struct stat *st);

/* The errcall of every Berkeley DB handle made here: keeps the library's text for the
 * message of a failure, never prints it. */
void mtasts_env_errcall(const struct __db_env *e, const char *pfx, const char *msg);

#endif
