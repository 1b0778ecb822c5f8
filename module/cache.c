/* cache.c: the MTA-STS policy cache on a transactional Berkeley DB 5.3 environment.
 * Pure C, no Lua. Semantics: docs/conformance.md §5; operations: module/cache.h.
 *
 * Many processes share one environment directory. Berkeley DB 5.3 as Debian builds it uses
 * plain process-shared pthread mutexes: a process killed inside a BDB call (during a
 * commit's fsync, say) leaves a mutex locked forever, and every other process blocks on it
 * for good; DB_REGISTER and failchk cannot wake a process already waiting. So every BDB call
 * runs inside a gate: a robust, process-shared pthread mutex in the file mtasts.gate of the
 * directory. Only one thread of one process is inside BDB at a time, and when a holder dies
 * the next one to lock the gate is told (EOWNERDEAD) while nobody else is inside BDB: it runs
 * recovery (DB_RECOVER) then and there, and bumps a generation number in the gate, which
 * makes the other processes drop their stale handles and join the recovered environment.
 * A process that dies outside the gate holds nothing. The gate also remembers the boot it
 * was made in: the first opener after a reboot re-creates it and recovers the environment.
 * Waiting for the gate is bounded (GATE_TIMEOUT_S): a holder that hangs gives an error.
 *
 * Environment handles are shared by every cache object of a process (any number of Lua
 * states, in any threads) through a small process-wide registry: the one mutable global of
 * the module, guarded by a mutex. An entry remembers the process that opened it; a forked
 * child never uses its parent's handles. */
#define _GNU_SOURCE 1  /* fallocate */
#include "cache.h"
#include "results.h"

#include <ctype.h>
#include <db.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DB_FILE "policies.db"
#define RESULTS_FILE "results.db"    /* the TLSRPT result store (results.c) */
#define GATE_FILE "mtasts.gate"
#define GATE_MAGIC 0x6d747367u     /* "mtsg" */
#define GATE_VERSION 2
#define GATE_TIMEOUT_S 5           /* longest wait for the gate before giving up */
#define MAX_RETRIES 6              /* deadlocks between threads of a process, per operation */

typedef struct {
  uint32_t magic, version;
  char boot_id[40];               /* /proc/sys/kernel/random/boot_id when made */
  uint64_t generation;            /* bumped by every recovery */
  uint64_t recoveries;            /* recoveries after a death or a panic, since made */
  uint32_t need_recover;          /* set when the gate is made: the next opener recovers */
  uint32_t damaged;               /* the file failed verification after a recovery */
  pthread_mutex_t mu;             /* robust, process-shared */
  /* Appended later, so that processes of the earlier layout (the same version) still find
   * the mutex where they put it; a gate file of that layout is extended with zeros. */
  uint32_t closed_clean;          /* the last user closed the cache (not killed) ... */
  uint64_t clean_log;             /* ... and the log looked like this then (log_fingerprint) */
} gate_t;

typedef struct shared_env {
  struct shared_env *next;
  char path[PATH_MAX];
  pid_t pid;              /* the process that opened it */
  int refs;               /* cache handles using it */
  gate_t *gate;           /* mapped mtasts.gate */
  int gate_fd;            /* kept open with a shared fcntl lock on byte 1: "in use" */
  uint64_t gen;           /* the gate generation the handles below belong to */
  DB_ENV *env;            /* NULL when (re)joining failed: the next operation tries again */
  DB *db;
  DB *rdb;                /* results.db, the TLSRPT result store (results.c); NULL when */
  int rdb_rc;             /* ... it failed to open: this code, and this message */
  char rdb_err[MTASTS_ERR_MAX];
  int own_panic;          /* this process saw the panic: its handles can be closed safely */
} shared_env;

struct mtasts_cache { shared_env *s; };

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static shared_env *registry;

/* The text of the last BDB error in this thread (set by errcall, read right after). */
static __thread char bdb_msg[MTASTS_ERR_MAX];

static void errcall(const DB_ENV *e, const char *pfx, const char *msg) {
  (void)e; (void)pfx;
  snprintf(bdb_msg, sizeof bdb_msg, "%s", msg);
}

/* "cache <path>: <what>: <library text>[; <hint>]" */
static int fail(char *err, int rc, const char *path, const char *what) {
  const char *text = bdb_msg[0] ? bdb_msg : db_strerror(rc), *hint = "";
  if (rc == EACCES || rc == EPERM || rc == EROFS)
    hint = "; the directory and its files must be writable by this user";
  else if (rc == ENOSPC || rc == EDQUOT || rc == EFBIG)
    hint = "; the rows stored before stay readable: free some space";
  else if (rc == EINVAL || rc == DB_VERIFY_BAD || rc == DB_OLD_VERSION || rc == DB_RUNRECOVERY ||
           rc == DB_PAGE_NOTFOUND || rc == MTASTS_ECORRUPT)
    hint = "; if the files are damaged, run `mtasts cache rebuild` or move the directory "
           "aside (the cache refills itself)";
  snprintf(err, MTASTS_ERR_MAX, "cache %.160s: %s: %.150s%s", path, what, text, hint);
  bdb_msg[0] = '\0';
  return rc;
}

static int mkdirs(const char *path) {
  char tmp[PATH_MAX];
  size_t i, n = strlen(path);
  if (n == 0 || n >= sizeof tmp) return ENAMETOOLONG;
  memcpy(tmp, path, n + 1);
  for (i = 1; i <= n; i++) {
    if (tmp[i] == '/' || tmp[i] == '\0') {
      char c = tmp[i];
      tmp[i] = '\0';
      if (mkdir(tmp, 0700) != 0 && errno != EEXIST) return errno;
      tmp[i] = c;
    }
  }
  return 0;
}

/* What the log files of a directory look like: their numbers, sizes and modification times,
 * hashed (FNV-1a). Any write to the log changes it. */
static uint64_t log_fingerprint(const char *path) {
  char file[PATH_MAX + 64];
  uint64_t h = 14695981039346656037ull;
  DIR *d = opendir(path);
  struct dirent *e;
  if (!d) return 0;
  while ((e = readdir(d)) != NULL) {
    struct stat st;
    uint64_t v[4];
    size_t i;
    if (strncmp(e->d_name, "log.", 4) != 0) continue;
    snprintf(file, sizeof file, "%s/%s", path, e->d_name);
    if (lstat(file, &st) != 0) continue;
    v[0] = strtoull(e->d_name + 4, NULL, 10);
    v[1] = (uint64_t)st.st_size;
    v[2] = (uint64_t)st.st_mtim.tv_sec;
    v[3] = (uint64_t)st.st_mtim.tv_nsec;
    /* order-free: the directory's order may change, so each file's hash is added */
    {
      uint64_t fh = 14695981039346656037ull;
      for (i = 0; i < sizeof v; i++) {
        fh ^= ((const unsigned char *)v)[i];
        fh *= 1099511628211ull;
      }
      h += fh;
    }
  }
  closedir(d);
  return h;
}

/* Whether the file system has room to make the shared regions anew: removing the old ones
 * gives their blocks back, and the new ones take as many; what may come on top (the log
 * made ready again, growth) is kept under 2 MiB. */
static int room_for_regions(const char *path) {
  struct statvfs fs;
  if (statvfs(path, &fs) != 0) return 1;
  return (unsigned long long)fs.f_bavail * fs.f_frsize >= (2ull << 20);
}

/* Unlink the shared region files (__db.001, __db.002, ...) of a directory nobody uses. */
static void remove_regions(const char *path) {
  char file[PATH_MAX + 64];
  DIR *d = opendir(path);
  struct dirent *e;
  if (!d) return;
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, "__db.", 5) != 0 || !isdigit((unsigned char)e->d_name[5])) continue;
    snprintf(file, sizeof file, "%s/%s", path, e->d_name);
    (void)unlink(file);
  }
  closedir(d);
}

static void gate_boot_id(char out[40]) {
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
  memset(out, 0, 40);
  if (!f) return;    /* no /proc: the gate is then only re-made when it is missing */
  if (!fgets(out, 40, f)) memset(out, 0, 40);
  fclose(f);
}

/* Map the gate file, making (or re-making, after a reboot) it under an fcntl lock. */
static int gate_map(shared_env *s, char *err) {
  char file[PATH_MAX + sizeof GATE_FILE + 1], boot[40];
  struct flock fl;
  struct stat st;
  gate_t *g;
  int fd, rc = 0;
  snprintf(file, sizeof file, "%s/%s", s->path, GATE_FILE);
  if ((fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0) {
    rc = errno;
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: open %s: %s%s", s->path, GATE_FILE,
             strerror(rc), rc == EACCES || rc == EROFS ?
             "; the directory and its files must be writable by this user" :
             rc == ELOOP ? " (a symbolic link: refused)" : "");
    return rc;
  }
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_len = 1;
  while (fcntl(fd, F_SETLKW, &fl) != 0)
    if (errno != EINTR) { rc = errno; goto done; }
  if (fstat(fd, &st) != 0) { rc = errno; goto done; }
  if ((size_t)st.st_size < sizeof *g) {
    /* extended by writing, not ftruncate: a sparse page of a mapping faults with SIGBUS on a
     * full disk. Only the missing tail is written: the head may be in use. */
    char zero[sizeof *g];
    size_t have = (size_t)st.st_size;
    memset(zero, 0, sizeof zero);
    if (pwrite(fd, zero, sizeof zero - have, (off_t)have) != (ssize_t)(sizeof zero - have)) {
      rc = errno ? errno : ENOSPC;
      goto done;
    }
  }
  g = mmap(NULL, sizeof *g, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (g == MAP_FAILED) { rc = errno; goto done; }
  gate_boot_id(boot);
  if (g->magic != GATE_MAGIC || g->version != GATE_VERSION || memcmp(g->boot_id, boot, 40)) {
    pthread_mutexattr_t a;
    /* never re-made under a process that uses it (another version of mtasts, or damage):
     * its mutex would be pulled from under it */
    fl.l_type = F_WRLCK;
    fl.l_start = 1;
    if (fcntl(fd, F_SETLK, &fl) != 0) {
      rc = EBUSY;
      snprintf(err, MTASTS_ERR_MAX, "cache %.160s: %s is of another version of mtasts (or "
               "damaged) and processes use the cache: restart them (an upgrade leaves the old "
               "ones running)", s->path, GATE_FILE);
      munmap(g, sizeof *g);
      goto done;
    }
    fl.l_start = 0;
    /* continue the count; from an unknown state start far from any earlier count, so a
     * stale handle can never mistake the new generation for its own */
    struct timespec now;
    uint64_t gen;
    clock_gettime(CLOCK_REALTIME, &now);
    gen = g->magic == GATE_MAGIC ? g->generation
                                 : ((uint64_t)now.tv_sec << 20) ^ (uint64_t)now.tv_nsec;
    memset(g, 0, sizeof *g);
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    rc = pthread_mutex_init(&g->mu, &a);
    pthread_mutexattr_destroy(&a);
    memcpy(g->boot_id, boot, 40);
    g->generation = gen + 1;
    g->need_recover = 1;      /* whatever was there before was not shut down by us */
    g->version = GATE_VERSION;
    g->magic = GATE_MAGIC;
    if (msync(g, sizeof *g, MS_SYNC) != 0 && rc == 0) rc = errno;
  }
  if (rc == 0) {
    /* Nobody else has the cache open (byte 1 is free; we hold byte 0, so nobody can join
     * meanwhile): the shared regions (__db.00N) belong to no live process, and whatever is
     * in them, damage included, is a leftover; a flipped byte in one crashed or hung the next
     * opener inside libdb. So they are never joined: after a clean close (the files and the
     * log hold everything) they are removed and made anew; after a kill, recovery makes them
     * anew from the files and the log. */
    char region[PATH_MAX + 16];
    snprintf(region, sizeof region, "%s/__db.001", s->path);
    fl.l_type = F_WRLCK;
    fl.l_start = 1;
    if (fcntl(fd, F_SETLK, &fl) == 0 && access(region, F_OK) == 0) {
      /* removed here, not by libdb: DB_ENV->remove and DB_RECOVER read the old regions
       * first, and a damaged one hung or crashed them too. Clean means: the last user
       * closed it, and nobody has written to the log since (a process of an earlier
       * version, which does not clear the mark, may have used it and been killed) */
      int clean = g->closed_clean && g->clean_log == log_fingerprint(s->path);
      if (clean && !room_for_regions(s->path)) {
        /* a disk too full to make them anew: join the cleanly closed ones (as before this
         * rule), so the cache stays readable rather than fail with ENOSPC */
      } else {
        remove_regions(s->path);
        if (!clean) g->need_recover = 1;
      }
    }
    g->closed_clean = 0;
    /* byte 1, shared, for as long as this process has the cache open (the kernel drops it
     * when the process dies): rebuild takes it exclusively to know nobody uses the cache */
    fl.l_type = F_RDLCK;
    if (fcntl(fd, F_SETLK, &fl) != 0) rc = errno;
  }
  if (rc == 0) s->gate = g;
  else munmap(g, sizeof *g);
done:
  if (rc != 0 && !err[0])
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: %s: %s", s->path, GATE_FILE, strerror(rc));
  fl.l_type = F_UNLCK;      /* the make-or-join lock on byte 0 */
  fl.l_start = 0;
  (void)fcntl(fd, F_SETLK, &fl);
  if (rc == 0) s->gate_fd = fd;
  else close(fd);
  return rc;
}

static int reserve_regions(shared_env *s, char *err);

/* Open (join) the environment; with recover, run recovery first. Call inside the gate. */
static int open_env(shared_env *s, int recover, char *err) {
  DB_ENV *env = NULL;
  DB *db = NULL, *rdb = NULL;
  int rc;
  u_int32_t flags = DB_CREATE | DB_INIT_TXN | DB_INIT_LOCK | DB_INIT_LOG | DB_INIT_MPOOL |
                    DB_THREAD | (recover ? DB_RECOVER : 0);
  bdb_msg[0] = '\0';
  if ((rc = db_env_create(&env, 0)) != 0) return fail(err, rc, s->path, "db_env_create");
  env->set_errcall(env, errcall);
  /* DB_REGION_INIT: region files are written out when made, so a full disk is an error
   * now, not a SIGBUS when libdb first touches a sparse page of the mapping */
  if ((rc = env->set_flags(env, DB_REGION_INIT, 1)) != 0 ||
      (rc = env->set_lk_detect(env, DB_LOCK_DEFAULT)) != 0 ||
      (rc = env->set_cachesize(env, 0, 4u << 20, 1)) != 0 ||
      /* a batch of results writes many pages in one transaction */
      (rc = env->set_lk_max_locks(env, 3000)) != 0 ||
      (rc = env->set_lk_max_objects(env, 3000)) != 0 ||
      (rc = env->set_lg_max(env, 1u << 20)) != 0 ||
      (rc = env->log_set_config(env, DB_LOG_AUTO_REMOVE, 1)) != 0) {
    fail(err, rc, s->path, "configure");
    env->close(env, 0);
    return rc;
  }
  if ((rc = env->open(env, s->path, flags, 0600)) != 0) {
    fail(err, rc, s->path, recover ? "recover environment" : "open environment");
    env->close(env, 0);
    return rc;
  }
  /* DB_CHKSUM: every page read is checked, so a damaged file gives an error instead of
   * letting libdb walk garbage (without it, a corrupted btree page can crash the process) */
  if ((rc = db_create(&db, env, 0)) != 0 || (rc = db->set_flags(db, DB_CHKSUM)) != 0 ||
      (rc = db->open(db, NULL, DB_FILE, NULL, DB_BTREE, DB_CREATE | DB_AUTO_COMMIT | DB_THREAD,
                     0600)) != 0) {
    fail(err, rc, s->path, "open " DB_FILE);
    if (db) db->close(db, 0);
    env->close(env, 0);
    return rc;
  }
  /* results.db failing to open (damaged) must not take the policy cache down with it:
   * policy lookups go on, and result-store operations report the damage */
  s->rdb_rc = 0;
  if ((rc = db_create(&rdb, env, 0)) != 0 || (rc = rdb->set_flags(rdb, DB_CHKSUM)) != 0 ||
      (rc = rdb->open(rdb, NULL, RESULTS_FILE, NULL, DB_BTREE,
                      DB_CREATE | DB_AUTO_COMMIT | DB_THREAD, 0600)) != 0) {
    fail(s->rdb_err, rc, s->path, "open " RESULTS_FILE);
    s->rdb_rc = rc;
    if (rdb) rdb->close(rdb, 0);
    rdb = NULL;
    rc = 0;
  }
  s->env = env;
  s->db = db;
  s->rdb = rdb;
  if ((rc = reserve_regions(s, err)) != 0) {
    if (rdb) rdb->close(rdb, 0);
    db->close(db, 0);
    env->close(env, 0);
    s->env = NULL;
    s->db = NULL;
    s->rdb = NULL;
  }
  return rc;
}

/* Reserve disk space for the whole mapped length of each region file of this environment.
 * libdb maps a region at its largest size and grows the file into the mapping sparsely; on
 * a full disk the first touch of such a page kills the process with SIGBUS. With the space
 * reserved (fallocate, KEEP_SIZE) a full disk is ENOSPC here, at open. Filesystems without
 * fallocate keep libdb's behaviour. */
static int reserve_regions(shared_env *s, char *err) {
  char line[PATH_MAX + 128], prefix[PATH_MAX + 8];
  FILE *maps = fopen("/proc/self/maps", "r");
  int rc = 0;
  if (!maps) return 0;
  snprintf(prefix, sizeof prefix, "%s/__db.", s->path);
  while (rc == 0 && fgets(line, sizeof line, maps)) {
    unsigned long lo, hi;
    char *file = strstr(line, prefix);
    int fd;
    if (!file || sscanf(line, "%lx-%lx", &lo, &hi) != 2) continue;
    file[strcspn(file, "\n")] = '\0';
    if ((fd = open(file, O_RDWR | O_CLOEXEC)) < 0) continue;
    if (fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)(hi - lo)) != 0 &&
        errno != EOPNOTSUPP && errno != ENOSYS) {
      rc = errno;
      snprintf(err, MTASTS_ERR_MAX, "cache %.160s: reserve %zu KiB for the shared regions: "
               "%s; the rows stored before stay readable: free some space", s->path,
               (size_t)((hi - lo) >> 10), strerror(rc));
    }
    close(fd);
  }
  fclose(maps);
  return rc;
}

/* Handles of an environment that was recovered under us after a process died are dropped,
 * not closed: closing would touch regions whose mutexes the dead process may hold. This
 * costs a little memory and a mapping, once per such recovery. They are kept on a list
 * that nothing reads, so the memory stays reachable (a leak checker sees it as such, and a
 * real leak of an environment still shows). */
typedef struct abandoned { DB_ENV *env; DB *db, *rdb; struct abandoned *next; } abandoned;
static abandoned *abandoned_envs;
static pthread_mutex_t abandoned_mu = PTHREAD_MUTEX_INITIALIZER;   /* enter() may run under
                                                                     registry_mu */

static void abandon_env(shared_env *s) {
  abandoned *a = malloc(sizeof *a);
  if (a) {
    a->env = s->env;
    a->db = s->db;
    a->rdb = s->rdb;
    pthread_mutex_lock(&abandoned_mu);
    a->next = abandoned_envs;
    abandoned_envs = a;
    pthread_mutex_unlock(&abandoned_mu);
  }
  s->env = NULL;
  s->db = NULL;
  s->rdb = NULL;
}

/* Handles that no dead process can have left a mutex in (ones this process just opened, or
 * whose panic this process saw): closed properly. */
static void close_env(shared_env *s) {
  if (s->rdb) s->rdb->close(s->rdb, 0);
  if (s->db) s->db->close(s->db, 0);
  if (s->env) s->env->close(s->env, 0);
  s->env = NULL;
  s->db = NULL;
  s->rdb = NULL;
}

static int damaged(shared_env *s, char *err) {
  snprintf(err, MTASTS_ERR_MAX, "cache %.160s: the database failed verification after a "
           "recovery and is not used; run `mtasts cache rebuild` or move the directory aside "
           "(the cache refills itself)", s->path);
  return MTASTS_ECORRUPT;
}

/* DB->verify on the database file, through a handle of its own (verify reads the file). */
static int verify_file(shared_env *s, char *err) {
  /* only policies.db: a damaged results.db fails to open and disables the result store
   * alone (open_env), never the policy cache */
  static const char *const files[] = {DB_FILE};
  char file[PATH_MAX + 16];
  struct stat st;
  DB *v;
  int rc;
  size_t i;
  if ((rc = s->env->txn_checkpoint(s->env, 0, 0, DB_FORCE)) != 0)
    return fail(err, rc, s->path, "checkpoint");
  for (i = 0; i < sizeof files / sizeof *files; i++) {
    snprintf(file, sizeof file, "%s/%s", s->path, files[i]);
    if (stat(file, &st) != 0) continue;
    bdb_msg[0] = '\0';
    if ((rc = db_create(&v, NULL, 0)) != 0) return fail(err, rc, s->path, "verify");
    v->set_errcall(v, errcall);
    if ((rc = v->verify(v, file, NULL, NULL, 0)) != 0) return fail(err, rc, s->path, "verify");
  }
  return 0;
}

/* Lock the gate and make sure s holds current handles. On success the gate is held. */
static int enter(shared_env *s, char *err) {
  gate_t *g = s->gate;
  struct timespec until;
  int rc, recover = 0, dead = 0;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += GATE_TIMEOUT_S;
  rc = pthread_mutex_timedlock(&g->mu, &until);
  if (rc == EOWNERDEAD) {          /* a holder died inside BDB: recover, nobody else is in */
    pthread_mutex_consistent(&g->mu);
    g->recoveries++;
    recover = dead = 1;
  } else if (rc == ETIMEDOUT) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: another process has held the cache for over "
             "%d s", s->path, GATE_TIMEOUT_S);
    return ETIMEDOUT;
  } else if (rc != 0) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: gate: %s; remove %s when no process uses "
             "the cache", s->path, strerror(rc), GATE_FILE);
    return rc;
  }
  if (g->need_recover) recover = 1;
  if (g->damaged) {
    /* handles opened before the damage was found: no dead holder is implied, close them */
    if (!dead) close_env(s);
    else abandon_env(s);
    pthread_mutex_unlock(&g->mu);
    return damaged(s, err);
  }
  if (recover || s->gen != g->generation || !s->env) {
    if (s->own_panic && !dead) close_env(s);
    else abandon_env(s);
    s->own_panic = 0;
    if ((rc = open_env(s, recover, err)) != 0) {
      pthread_mutex_unlock(&g->mu);
      return rc;
    }
    if (recover) {
      /* Recovery replays the log onto pages and writes them back with fresh checksums, so a
       * page damaged on disk could come out "valid" and libdb would walk it (SIGBUS). The
       * file is verified now, while nobody else is inside, before anyone reads it. */
      if (verify_file(s, err) != 0) {
        g->damaged = 1;
        close_env(s);   /* opened just now by this process */
        pthread_mutex_unlock(&g->mu);
        return damaged(s, err);
      }
      g->generation++;
      g->need_recover = 0;
    }
    s->gen = g->generation;
  }
  return 0;
}

static void leave(shared_env *s) { pthread_mutex_unlock(&s->gate->mu); }

/* The directory must be this user's and writable by nobody else: anyone else who can write
 * it could plant links there (mtasts.gate, a log file, policies.db) that make this process,
 * often root, overwrite another file. Berkeley DB opens its files without O_NOFOLLOW, so the
 * directory is what keeps them safe. */
static int check_dir(const char *path, char *err) {
  struct stat st;
  uid_t me = geteuid();
  if (stat(path, &st) != 0) {
    int rc = errno;
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: %s", path, strerror(rc));
    return rc;
  }
  if (!S_ISDIR(st.st_mode)) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: not a directory", path);
    return ENOTDIR;
  }
  if (st.st_uid != me) {
    struct passwd pwd, *pw = NULL;
    char buf[1024];
    if (getpwuid_r(st.st_uid, &pwd, buf, sizeof buf, &pw) != 0) pw = NULL;
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: the directory belongs to %s (uid %u), not to "
             "this user (uid %u): its owner could plant links that make this process "
             "overwrite other files; run mtasts as %s (e.g. with sudo -u or runuser -u)",
             path, pw ? pw->pw_name : "another user", (unsigned)st.st_uid, (unsigned)me,
             pw ? pw->pw_name : "the directory's owner");
    return EPERM;
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: the directory is writable by %s (mode %04o): "
             "a link planted there could make this process overwrite other files; "
             "run chmod go-w on it", path, st.st_mode & S_IWOTH ? "others" : "its group",
             (unsigned)(st.st_mode & 07777));
    return EPERM;
  }
  return 0;
}

int mtasts_cache_open(const char *path, mtasts_cache **out, char *err) {
  char real[PATH_MAX];
  shared_env *s;
  mtasts_cache *c;
  int rc = 0;
  err[0] = '\0';
  if ((rc = mkdirs(path)) != 0) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: create directory: %s", path, strerror(rc));
    return rc;
  }
  if (!realpath(path, real)) {
    rc = errno;
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: %s", path, strerror(rc));
    return rc;
  }
  if ((rc = check_dir(real, err)) != 0) return rc;
  if (!(c = calloc(1, sizeof *c))) return ENOMEM;
  pthread_mutex_lock(&registry_mu);
  for (s = registry; s; s = s->next)
    if (s->pid == getpid() && strcmp(s->path, real) == 0) break;
  if (s) {
    s->refs++;
  } else if (!(s = calloc(1, sizeof *s))) {
    rc = ENOMEM;
  } else {
    memcpy(s->path, real, strlen(real) + 1);
    s->pid = getpid();
    if ((rc = gate_map(s, err)) == 0 && (rc = enter(s, err)) == 0) leave(s);
    /* a damaged cache still opens: its operations fail with CORRUPT and the rebuild hint,
     * and a client can carry on without it */
    if (rc == MTASTS_ECORRUPT) rc = 0;
    if (rc != 0) {
      if (s->gate) {
        munmap(s->gate, sizeof *s->gate);
        close(s->gate_fd);
      }
      free(s);
      s = NULL;
    } else {
      s->refs = 1;
      s->next = registry;
      registry = s;
    }
  }
  pthread_mutex_unlock(&registry_mu);
  if (!s) {
    free(c);
    if (rc == ENOMEM) snprintf(err, MTASTS_ERR_MAX, "cache %.200s: out of memory", path);
    return rc;
  }
  c->s = s;
  *out = c;
  return 0;
}

/* After a clean close: if no other process has the cache open, say so in the gate, so that
 * the next opener makes the shared regions anew without a recovery (gate_map). Byte 0 keeps
 * openers out meanwhile; closing the gate descriptor afterwards drops both locks at once. */
static void mark_closed_clean(shared_env *s) {
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_len = 1;
  while (fcntl(s->gate_fd, F_SETLKW, &fl) != 0)
    if (errno != EINTR) return;
  fl.l_start = 1;
  if (fcntl(s->gate_fd, F_SETLK, &fl) != 0) return;     /* someone else still uses it */
  s->gate->clean_log = log_fingerprint(s->path);
  s->gate->closed_clean = 1;
}

int mtasts_cache_close(mtasts_cache *c, char *err) {
  shared_env *s = c->s, **pp;
  int rc = 0;
  free(c);
  err[0] = '\0';
  pthread_mutex_lock(&registry_mu);
  if (--s->refs == 0) {
    for (pp = &registry; *pp; pp = &(*pp)->next)
      if (*pp == s) { *pp = s->next; break; }
    /* a forked child must not touch its parent's handles */
    if (s->pid == getpid() && s->env && enter(s, err) == 0) {
      bdb_msg[0] = '\0';
      if (s->rdb && (rc = s->rdb->close(s->rdb, 0)) != 0) fail(err, rc, s->path, "close");
      {
        int r1 = s->db->close(s->db, 0);
        if (r1 != 0 && rc == 0) rc = fail(err, r1, s->path, "close");
      }
      {
        int r2 = s->env->close(s->env, 0);
        if (r2 != 0 && rc == 0) rc = fail(err, r2, s->path, "close");
      }
      s->env = NULL;
      leave(s);
      if (rc == 0 && !s->gate->damaged) mark_closed_clean(s);
    }
    if (s->pid == getpid()) {
      munmap(s->gate, sizeof *s->gate);
      close(s->gate_fd);
    }
    free(s);
  }
  pthread_mutex_unlock(&registry_mu);
  return rc;
}

const char *mtasts_cache_path(const mtasts_cache *c) { return c->s->path; }

uint64_t mtasts_cache_generation(const mtasts_cache *c) { return c->s->gate->generation; }

uint64_t mtasts_cache_recoveries(const mtasts_cache *c) { return c->s->gate->recoveries; }

typedef int (*op_fn)(DB_ENV *env, DB *db, void *ctx);
static int op_lookup(DB_ENV *env, DB *db, void *vctx);   /* the read-only operations */
static int op_scan(DB_ENV *env, DB *db, void *vctx);

/* Run one operation inside the gate. Deadlocks (possible only between threads of one
 * process) are retried; a panic (DB_RUNRECOVERY) makes the next holder recover, once. */
static int run_on(mtasts_cache *c, int results, int writes, op_fn fn, void *ctx,
                  const char *what, char *err) {
  shared_env *s = c->s;
  int attempt, rc = 0, recovered = 0;
  err[0] = '\0';
  for (attempt = 0;; attempt++) {
    bdb_msg[0] = '\0';
    if ((rc = enter(s, err)) != 0) return rc;
    if (results && !s->rdb) {
      rc = s->rdb_rc ? s->rdb_rc : MTASTS_ECORRUPT;
      snprintf(err, MTASTS_ERR_MAX, "%s", s->rdb_err);
      leave(s);
      return rc;
    }
    rc = fn(s->env, results ? s->rdb : s->db, ctx);
    if (rc == 0 && writes)
      /* after 256 KiB of log or 5 minutes: lets old log files be removed, so the directory
       * stays small whatever the mix of writes */
      (void)s->env->txn_checkpoint(s->env, 256, 5, 0);
    if (rc == DB_RUNRECOVERY && !recovered) {
      s->own_panic = 1;
      s->gate->need_recover = 1;
      s->gate->recoveries++;
      recovered = 1;
      leave(s);
      continue;
    }
    leave(s);
    if ((rc == DB_LOCK_DEADLOCK || rc == DB_LOCK_NOTGRANTED) && attempt < MAX_RETRIES) continue;
    break;
  }
  return rc ? fail(err, rc, s->path, what) : 0;
}

static int run(mtasts_cache *c, op_fn fn, void *ctx, const char *what, char *err) {
  return run_on(c, 0, fn != op_lookup && fn != op_scan, fn, ctx, what, err);
}

int mtasts_store_run(mtasts_cache *c, mtasts_store_fn fn, void *ctx, int writes,
                     const char *what, char *err) {
  return run_on(c, 1, writes, fn, ctx, what, err);
}

static void set_key(DBT *k, const char *key) {
  memset(k, 0, sizeof *k);
  k->data = (void *)key;
  k->size = (u_int32_t)strlen(key);
}

/* Read a row into b; *found is 0 when there is none. */
static int get_row(DB *db, DB_TXN *t, const char *key, mtasts_buf *b, u_int32_t flags,
                   int *found) {
  DBT k, d;
  int rc;
  set_key(&k, key);
  for (;;) {
    memset(&d, 0, sizeof d);
    d.flags = DB_DBT_USERMEM;
    d.data = b->p;
    d.ulen = (u_int32_t)b->cap;
    rc = db->get(db, t, &k, &d, flags);
    if (rc != DB_BUFFER_SMALL) break;
    if (mtasts_buf_reserve(b, d.size) != 0) return ENOMEM;
  }
  *found = rc == 0;
  if (rc == DB_NOTFOUND) return 0;
  if (rc == 0) b->n = d.size;
  return rc;
}

static int put_row(DB *db, DB_TXN *t, const char *key, const mtasts_buf *b) {
  DBT k, d;
  set_key(&k, key);
  memset(&d, 0, sizeof d);
  d.data = b->p;
  d.size = (u_int32_t)b->n;
  return db->put(db, t, &k, &d, 0);
}

static int normalise(const char *domain, char *key, char *err) {
  char why[MTASTS_ERR_MAX];
  if (mtasts_domain_ascii(domain, strlen(domain), key, why) != 0) {
    memcpy(err, why, MTASTS_ERR_MAX);
    return MTASTS_EDOMAIN;
  }
  return 0;
}

/* --- lookup --- */

typedef struct {
  const char *key;
  int64_t now;
  mtasts_buf *b;
  int found;
} lookup_ctx;

static int op_lookup(DB_ENV *env, DB *db, void *vctx) {
  lookup_ctx *x = vctx;
  (void)env;
  return get_row(db, NULL, x->key, x->b, 0, &x->found);
}

/* Best effort, never waits for a lock: a lost touch only delays pruning. */
static int op_touch(DB_ENV *env, DB *db, void *vctx) {
  lookup_ctx *x = vctx;
  DB_TXN *t;
  int64_t last_use;
  int rc, found;
  if ((rc = env->txn_begin(env, NULL, &t, DB_TXN_NOWAIT)) != 0) return rc;
  rc = get_row(db, t, x->key, x->b, DB_RMW, &found);
  if (rc == 0 && found &&
      mtasts_row_get_time(x->b->p, x->b->n, MTASTS_ROW_LAST_USE, &last_use) == 0 &&
      last_use + MTASTS_TOUCH_SECONDS <= x->now) {
    (void)mtasts_row_set_time(x->b->p, x->b->n, MTASTS_ROW_LAST_USE, x->now);
    rc = put_row(db, t, x->key, x->b);
  }
  if (rc != 0) { t->abort(t); return rc; }
  return t->commit(t, DB_TXN_NOSYNC);
}

int mtasts_cache_lookup(mtasts_cache *c, const char *domain, int64_t now, mtasts_buf *b,
                        mtasts_row *row, int *found, char *key, char *err) {
  char why[MTASTS_ERR_MAX];
  lookup_ctx x;
  int rc, bad_row;
  *found = 0;
  if ((rc = normalise(domain, key, err)) != 0) return rc;
  x.key = key; x.now = now; x.b = b; x.found = 0;
  if ((rc = run(c, op_lookup, &x, "lookup", err)) != 0) return rc;
  if (!x.found) return 0;
  bad_row = mtasts_row_decode(b->p, b->n, row, why) != 0;
  if (!bad_row && (row->domain.n != strlen(key) || memcmp(row->domain.p, key, row->domain.n))) {
    snprintf(why, sizeof why, "row names another domain");
    bad_row = 1;
  }
  if (bad_row) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: %.120s: %.100s; run `mtasts cache rebuild` "
             "or upsert it again", c->s->path, key, why);
    return MTASTS_ECORRUPT;
  }
  if (now >= row->valid_end) return 0;
  if (row->last_use + MTASTS_TOUCH_SECONDS <= now) {
    char ignored[MTASTS_ERR_MAX];
    mtasts_buf tb = { NULL, 0, 0 };
    lookup_ctx t = x;
    t.b = &tb;
    (void)run(c, op_touch, &t, "touch", ignored);
    mtasts_buf_free(&tb);
    row->last_use = now;
  }
  *found = 1;
  return 0;
}

/* --- upsert --- */

typedef struct {
  const char *key;
  int64_t now;
  const mtasts_row *meta;
  const mtasts_policy *p;
  mtasts_span text;
  mtasts_buf *b;
} upsert_ctx;

static int op_upsert(DB_ENV *env, DB *db, void *vctx) {
  upsert_ctx *x = vctx;
  mtasts_row meta = *x->meta;
  DB_TXN *t;
  int rc, found;
  if ((rc = env->txn_begin(env, NULL, &t, 0)) != 0) return rc;
  if ((rc = get_row(db, t, x->key, x->b, DB_RMW, &found)) != 0) goto abort;
  /* keep the insertion time of an existing row; a row that does not decode is replaced */
  meta.inserted = x->now;
  if (found) (void)mtasts_row_get_time(x->b->p, x->b->n, MTASTS_ROW_INSERTED, &meta.inserted);
  if ((rc = mtasts_row_encode(x->b, &meta, x->p, x->text)) != 0) goto abort;
  if ((rc = put_row(db, t, x->key, x->b)) != 0) goto abort;
  return t->commit(t, 0);
abort:
  t->abort(t);
  return rc;
}

int mtasts_cache_upsert(mtasts_cache *c, const char *domain, const char *record_id,
                        const char *text, size_t text_len, int64_t now, mtasts_buf *b,
                        char *err) {
  char key[MTASTS_NAME_MAX + 1], why[MTASTS_ERR_MAX];
  mtasts_policy p;
  mtasts_row meta;
  upsert_ctx x;
  int rc;
  if ((rc = normalise(domain, key, err)) != 0) return rc;
  memset(&p, 0, sizeof p);
  memset(&meta, 0, sizeof meta);
  meta.domain.p = key;
  meta.domain.n = strlen(key);
  meta.record_id.p = record_id;
  meta.record_id.n = strlen(record_id);
  if (meta.record_id.n > 255) {
    snprintf(err, MTASTS_ERR_MAX, "record id is %zu bytes, more than 255", meta.record_id.n);
    return EINVAL;
  }
  if (text) {
    rc = mtasts_parse_policy(text, text_len, &p, why);
    if (rc != 0) {
      mtasts_policy_free(&p);
      if (rc == -2) return ENOMEM;
      memcpy(err, why, MTASTS_ERR_MAX);
      return MTASTS_EPOLICY;
    }
    meta.max_age = p.max_age;
  } else {
    meta.backoff = 1;
    meta.max_age = MTASTS_BACKOFF_SECONDS;
  }
  meta.valid_end = now + (int64_t)meta.max_age;
  meta.last_update = now;
  meta.last_use = now;
  x.key = key; x.now = now; x.meta = &meta; x.p = text ? &p : NULL; x.b = b;
  x.text.p = text ? text : ""; x.text.n = text ? text_len : 0;
  rc = run(c, op_upsert, &x, "upsert", err);
  mtasts_policy_free(&p);
  return rc;
}

/* --- mark_checked, delete --- */

typedef struct {
  const char *key;
  int64_t now;
  int extend, found;
  mtasts_buf *b;
} mark_ctx;

static int op_mark(DB_ENV *env, DB *db, void *vctx) {
  mark_ctx *x = vctx;
  mtasts_row row;
  char why[MTASTS_ERR_MAX];
  DB_TXN *t;
  int rc;
  if ((rc = env->txn_begin(env, NULL, &t, 0)) != 0) return rc;
  if ((rc = get_row(db, t, x->key, x->b, DB_RMW, &x->found)) != 0 || !x->found) goto abort;
  if (mtasts_row_decode(x->b->p, x->b->n, &row, why) != 0) { rc = MTASTS_ECORRUPT; goto abort; }
  (void)mtasts_row_set_time(x->b->p, x->b->n, MTASTS_ROW_LAST_UPDATE, x->now);
  if (x->extend && !row.backoff)
    (void)mtasts_row_set_time(x->b->p, x->b->n, MTASTS_ROW_VALID_END,
                              x->now + (int64_t)row.max_age);
  if ((rc = put_row(db, t, x->key, x->b)) != 0) goto abort;
  return t->commit(t, DB_TXN_WRITE_NOSYNC);
abort:
  t->abort(t);
  return rc;
}

int mtasts_cache_mark_checked(mtasts_cache *c, const char *domain, int64_t now, int extend,
                              int *found, mtasts_buf *b, char *err) {
  char key[MTASTS_NAME_MAX + 1];
  mark_ctx x;
  int rc;
  *found = 0;
  if ((rc = normalise(domain, key, err)) != 0) return rc;
  x.key = key; x.now = now; x.extend = extend; x.found = 0; x.b = b;
  rc = run(c, op_mark, &x, "mark_checked", err);
  *found = x.found;
  return rc;
}

typedef struct { const char *key; int found; } del_ctx;

static int op_delete(DB_ENV *env, DB *db, void *vctx) {
  del_ctx *x = vctx;
  DBT k;
  DB_TXN *t;
  int rc;
  if ((rc = env->txn_begin(env, NULL, &t, 0)) != 0) return rc;
  set_key(&k, x->key);
  rc = db->del(db, t, &k, 0);
  x->found = rc == 0;
  if (rc == DB_NOTFOUND) rc = 0;
  if (rc != 0) { t->abort(t); return rc; }
  return t->commit(t, 0);
}

int mtasts_cache_delete(mtasts_cache *c, const char *domain, int *found, char *err) {
  char key[MTASTS_NAME_MAX + 1];
  del_ctx x;
  int rc;
  *found = 0;
  if ((rc = normalise(domain, key, err)) != 0) return rc;
  x.key = key; x.found = 0;
  rc = run(c, op_delete, &x, "delete", err);
  *found = x.found;
  return rc;
}

/* --- scans --- */

enum { SCAN_ALL, SCAN_DUE, SCAN_UNUSED };
typedef struct {
  int kind;
  int64_t cutoff;
  mtasts_buf *b;
  size_t count;
} scan_ctx;

static int append(mtasts_buf *b, const void *key, size_t kn, const void *row, size_t rn) {
  unsigned char *o;
  if (mtasts_buf_reserve(b, b->n + 6 + kn + rn) != 0) return ENOMEM;
  o = b->p + b->n;
  mtasts_put_u16(o, (uint32_t)kn);
  memcpy(o + 2, key, kn);
  o += 2 + kn;
  mtasts_put_u32(o, (uint32_t)rn);
  if (rn) memcpy(o + 4, row, rn);
  b->n += 6 + kn + rn;
  return 0;
}

static int op_scan(DB_ENV *env, DB *db, void *vctx) {
  scan_ctx *x = vctx;
  DBC *cur;
  DBT k, d;
  int rc, r2;
  (void)env;
  x->b->n = 0;
  x->count = 0;
  if ((rc = db->cursor(db, NULL, &cur, DB_READ_COMMITTED)) != 0) return rc;
  memset(&k, 0, sizeof k);
  memset(&d, 0, sizeof d);
  k.flags = DB_DBT_REALLOC;
  d.flags = DB_DBT_REALLOC;
  while ((rc = cur->get(cur, &k, &d, DB_NEXT)) == 0) {
    const unsigned char *row = d.data;
    int keep = 1;
    if (k.size == 0 || k.size > MTASTS_NAME_MAX) continue;  /* not a key of ours */
    if (x->kind != SCAN_ALL) {
      int64_t t;
      if (mtasts_row_get_time(row, d.size, x->kind == SCAN_DUE ? MTASTS_ROW_LAST_UPDATE
                                                              : MTASTS_ROW_LAST_USE, &t) != 0)
        continue;
      keep = x->kind == SCAN_DUE ? t <= x->cutoff : t < x->cutoff;
    }
    if (!keep) continue;
    if ((rc = append(x->b, k.data, k.size, row, x->kind == SCAN_ALL ? d.size : 0)) != 0) break;
    x->count++;
  }
  if (rc == DB_NOTFOUND) rc = 0;
  if ((r2 = cur->close(cur)) != 0 && rc == 0) rc = r2;
  free(k.data);
  free(d.data);
  return rc;
}

int mtasts_cache_scan(mtasts_cache *c, mtasts_buf *b, size_t *count, char *err) {
  scan_ctx x = { SCAN_ALL, 0, b, 0 };
  int rc = run(c, op_scan, &x, "list", err);
  *count = x.count;
  return rc;
}

int mtasts_cache_due(mtasts_cache *c, int64_t now, int64_t older_than, mtasts_buf *b,
                     size_t *count, char *err) {
  scan_ctx x = { SCAN_DUE, now - older_than, b, 0 };
  int rc = run(c, op_scan, &x, "due_for_refresh", err);
  *count = x.count;
  return rc;
}

typedef struct { const char *key; int64_t cutoff; int deleted; mtasts_buf *b; } prune_ctx;

/* Delete one row if it is still unused since cutoff (another process may have used it). */
static int op_prune_one(DB_ENV *env, DB *db, void *vctx) {
  prune_ctx *x = vctx;
  DBT k;
  DB_TXN *t;
  int64_t last_use;
  int rc, found;
  x->deleted = 0;
  if ((rc = env->txn_begin(env, NULL, &t, 0)) != 0) return rc;
  if ((rc = get_row(db, t, x->key, x->b, DB_RMW, &found)) != 0) goto abort;
  if (found && mtasts_row_get_time(x->b->p, x->b->n, MTASTS_ROW_LAST_USE, &last_use) == 0 &&
      last_use < x->cutoff) {
    set_key(&k, x->key);
    if ((rc = db->del(db, t, &k, 0)) != 0) goto abort;
    x->deleted = 1;
  }
  return t->commit(t, 0);
abort:
  t->abort(t);
  return rc;
}

int mtasts_cache_prune(mtasts_cache *c, int64_t now, int64_t unused_for, size_t *deleted,
                       mtasts_buf *b, char *err) {
  scan_ctx x = { SCAN_UNUSED, now - unused_for, b, 0 };
  mtasts_buf rb = { NULL, 0, 0 };
  size_t i, pos = 0;
  int rc;
  *deleted = 0;
  if ((rc = run(c, op_scan, &x, "prune", err)) != 0) return rc;
  for (i = 0; i < x.count && rc == 0; i++) {
    char key[MTASTS_NAME_MAX + 1];
    size_t kn = mtasts_get_u16(b->p + pos);
    prune_ctx p;
    memcpy(key, b->p + pos + 2, kn);
    key[kn] = '\0';
    pos += 2 + kn + 4;     /* the row part is empty in this scan */
    p.key = key; p.cutoff = x.cutoff; p.deleted = 0; p.b = &rb;
    rc = run(c, op_prune_one, &p, "prune", err);
    *deleted += (size_t)p.deleted;
  }
  mtasts_buf_free(&rb);
  return rc;
}

/* --- verify --- */

/* Every row decodes and names its own key: 0, or MTASTS_ECORRUPT with a count. */
static int verify_rows(mtasts_cache *c, char *err) {
  mtasts_buf b = { NULL, 0, 0 };
  size_t count, i, pos = 0, bad = 0;
  char why[MTASTS_ERR_MAX], first[MTASTS_NAME_MAX + 1] = "";
  int rc = mtasts_cache_scan(c, &b, &count, err);
  for (i = 0; rc == 0 && i < count; i++) {
    size_t kn = mtasts_get_u16(b.p + pos), rn;
    const unsigned char *key = b.p + pos + 2, *row;
    mtasts_row r;
    pos += 2 + kn;
    rn = mtasts_get_u32(b.p + pos);
    row = b.p + pos + 4;
    pos += 4 + rn;
    if (mtasts_row_decode(row, rn, &r, why) != 0 || r.domain.n != kn ||
        memcmp(r.domain.p, key, kn) != 0) {
      if (bad++ == 0 && kn <= MTASTS_NAME_MAX) { memcpy(first, key, kn); first[kn] = '\0'; }
    }
  }
  mtasts_buf_free(&b);
  if (rc == 0 && bad) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: %zu of %zu rows are corrupt (the first: "
             "%.100s); run `mtasts cache rebuild`", c->s->path, bad, count, first);
    rc = MTASTS_ECORRUPT;
  }
  return rc;
}

static int op_checkpoint(DB_ENV *env, DB *db, void *ctx) {
  (void)ctx;
  (void)db;
  return env->txn_checkpoint(env, 0, 0, DB_FORCE);
}

int mtasts_cache_verify(mtasts_cache *c, char *err) {
  char file[PATH_MAX + sizeof DB_FILE + 1];
  DB *v;
  int rc;
  if ((rc = run(c, op_checkpoint, NULL, "checkpoint", err)) != 0) return rc;
  snprintf(file, sizeof file, "%s/%s", c->s->path, DB_FILE);
  bdb_msg[0] = '\0';
  if ((rc = db_create(&v, NULL, 0)) != 0) return fail(err, rc, c->s->path, "verify");
  v->set_errcall(v, errcall);
  /* DB->verify reads the file itself and always discards the handle */
  if ((rc = v->verify(v, file, NULL, NULL, 0)) != 0) return fail(err, rc, c->s->path, "verify");
  return verify_rows(c, err);
}

/* --- rebuild --- */


/* A dump line " 6b6579..." into b; 0, or -1 when it is not one. */
static int unhex(const char *line, mtasts_buf *b) {
  size_t n = strcspn(line, "\n"), i;
  if (n < 1 || line[0] != ' ' || (n - 1) % 2 != 0) return -1;
  if (mtasts_buf_reserve(b, (n - 1) / 2 + 1) != 0) return -1;
  for (i = 1; i < n; i += 2) {
    int h = mtasts_hexval((unsigned char)line[i]), l = mtasts_hexval((unsigned char)line[i + 1]);
    if (h < 0 || l < 0) return -1;
    b->p[(i - 1) / 2] = (unsigned char)(h << 4 | l);
  }
  b->n = (n - 1) / 2;
  return 0;
}

#define SALVAGE_TIMEOUT_S 60

/* A btree meta page (magic 0x053162, either byte order) with a page size libdb can have. */
static int is_btree_file(const char *file) {
  unsigned char m[32];
  unsigned ps;
  int fd = open(file, O_RDONLY | O_CLOEXEC), ok = 0;
  if (fd < 0) return 0;
  if (read(fd, m, sizeof m) == (ssize_t)sizeof m) {
    int le = m[12] == 0x62 && m[13] == 0x31 && m[14] == 0x05 && m[15] == 0;
    int be = m[15] == 0x62 && m[14] == 0x31 && m[13] == 0x05 && m[12] == 0;
    ps = le ? mtasts_get_u32le(m + 20) : mtasts_get_u32(m + 20);
    ok = (le || be) && ps >= 512 && ps <= 65536 && (ps & (ps - 1)) == 0;
  }
  close(fd);
  return ok;
}


typedef struct { const char *key; const mtasts_buf *row; } raw_ctx;

static int op_put_raw(DB_ENV *env, DB *db, void *vctx) {
  raw_ctx *x = vctx;
  DB_TXN *t;
  int rc;
  if ((rc = env->txn_begin(env, NULL, &t, 0)) != 0) return rc;
  if ((rc = put_row(db, t, x->key, x->row)) != 0) { t->abort(t); return rc; }
  return t->commit(t, DB_TXN_WRITE_NOSYNC);
}

/* Run fn(arg) in a child process killed after SALVAGE_TIMEOUT_S: libdb's salvager can loop
 * forever on some damage (seen: a page taken for a heap), and recovery of a damaged
 * environment can crash. The child's exit status, or -1 when it was killed or died. */
static int in_child(void (*fn)(void *), void *arg) {
  pid_t pid = fork();
  int status = 0;
  double end = mtasts_monotonic() + SALVAGE_TIMEOUT_S;
  struct timespec nap = { 0, 20 * 1000 * 1000 };
  if (pid == 0) {
    fn(arg);
    _exit(0);
  }
  if (pid < 0) return -1;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (mtasts_monotonic() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    nanosleep(&nap, NULL);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Copy a file; 0 or an errno (the partial copy removed). With uncheck, a database file's
 * copy has its page checksums switched off in its meta page (the DBMETA_CHKSUM bit of byte
 * 26, touched only under a btree magic 0x053162 at byte 12), so that the salvager reads
 * damaged pages as they are and keeps what it can: with checksums on, the first bad page
 * panics it and nothing comes out. */
static int copy_file(const char *from, const char *to, int uncheck) {
  unsigned char buf[65536];
  ssize_t n;
  int in = open(from, O_RDONLY | O_CLOEXEC), out, rc = 0, first = uncheck;
  if (in < 0) return errno;
  if ((out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0) {
    rc = errno;
    close(in);
    return rc;
  }
  while ((n = read(in, buf, sizeof buf)) > 0) {
    if (first && n >= 27 && ((buf[12] == 0x62 && buf[13] == 0x31 && buf[14] == 0x05) ||
                             (buf[15] == 0x62 && buf[14] == 0x31 && buf[13] == 0x05)))
      buf[26] &= (unsigned char)~1u;
    first = 0;
    if (write(out, buf, (size_t)n) != n) { rc = errno ? errno : EIO; break; }
  }
  if (n < 0) rc = errno;
  close(in);
  if (close(out) != 0 && rc == 0) rc = errno;
  if (rc != 0) unlink(to);
  return rc;
}

typedef struct { const char *copy; FILE *out; u_int32_t flags; } salvage_job;

static void salvage_child(void *arg) {
  salvage_job *j = arg;
  DB *v;
  setvbuf(j->out, NULL, _IONBF, 0);
  if (db_create(&v, NULL, 0) == 0) {
    v->set_errcall(v, errcall);
    (void)v->verify(v, j->copy, NULL, j->out, j->flags);
  }
}

/* A DBT as a dump line: a space, then hex. */
static void hexline(FILE *out, const DBT *t) {
  const unsigned char *p = t->data;
  u_int32_t i;
  fputc(' ', out);
  for (i = 0; i < t->size; i++) fprintf(out, "%02x", p[i]);
  fputc('\n', out);
}

/* The plain read: open the file alone, read-only, and write every record a cursor reaches
 * as a key line and a value line (" hex"), the salvager's format. On a file whose pages are
 * sound this is everything, whatever state libdb's salvager gets into (its aggressive mode
 * reads bookkeeping it leaves uninitialised, and was seen to drop rows under valgrind). A
 * file that fails verification is not walked: the salvage that follows is what reads it. */
static void walk_child(void *arg) {
  salvage_job *j = arg;
  DB *db;
  DBC *cur;
  DBT k, v;
  int rc;
  /* only a file that verifies is walked: libdb's cursor trusts the pages it reads, and on
   * damage it reads wild (the salvage that follows is made for that) */
  if (db_create(&db, NULL, 0) != 0) _exit(1);
  db->set_errcall(db, errcall);
  if (db->verify(db, j->copy, NULL, NULL, 0) != 0) _exit(1);   /* verify frees db */
  setvbuf(j->out, NULL, _IOFBF, 1 << 16);
  if (db_create(&db, NULL, 0) != 0) _exit(1);
  db->set_errcall(db, errcall);
  if (db->open(db, NULL, j->copy, NULL, DB_BTREE, DB_RDONLY, 0) != 0) {
    db->close(db, 0);
    _exit(1);
  }
  if (db->cursor(db, NULL, &cur, 0) != 0) {
    db->close(db, 0);
    _exit(1);
  }
  memset(&k, 0, sizeof k);
  memset(&v, 0, sizeof v);
  while ((rc = cur->get(cur, &k, &v, DB_NEXT)) == 0) {
    hexline(j->out, &k);
    hexline(j->out, &v);
  }
  fflush(j->out);
  cur->close(cur);
  db->close(db, 0);
  _exit(rc == DB_NOTFOUND ? 0 : 2);
}

/* What can be read of dir/name: the plain read (walk_child), then libdb's salvage dump, as
 * a temporary file to read from the start, or NULL (with *rc set on a real error) when
 * there is nothing to salvage. What a helper wrote before it died or was killed is kept. */
static FILE *salvage_dump(const char *dir, const char *name, const char *scratch,
                          u_int32_t flags, int unchecked, int *stopped, int *rc, char *err) {
  char file[PATH_MAX + 32], copy[PATH_MAX + 48];
  struct stat st;
  salvage_job j;
  *rc = 0;
  snprintf(file, sizeof file, "%s/%s", dir, name);
  snprintf(copy, sizeof copy, "%s/salvage-%ld.db", scratch, (long)getpid());
  if (stat(file, &st) != 0) return NULL;        /* nothing to salvage */
  if (!is_btree_file(file)) return NULL;        /* not ours, or its meta page is gone */
  if ((*rc = copy_file(file, copy, unchecked)) != 0) {
    snprintf(err, MTASTS_ERR_MAX, "cache: copy %.160s for salvage: %s", file, strerror(*rc));
    return NULL;
  }
  j.copy = copy;
  j.flags = flags;
  if (!(j.out = tmpfile())) {
    *rc = errno;
    snprintf(err, MTASTS_ERR_MAX, "cache: salvage %.160s: %s", file, strerror(*rc));
    unlink(copy);
    return NULL;
  }
  {   /* first what a cursor reaches in the file as it is (with its checksums) */
    salvage_job w = j;
    w.copy = file;
    (void)in_child(walk_child, &w);    /* whatever became of it, the salvage reads on */
    fseek(j.out, 0, SEEK_END);
    fputs("SALVAGE=BEGIN\n", j.out);     /* where the salvager's part starts */
    fflush(j.out);
  }
  if (in_child(salvage_child, &j) < 0) (*stopped)++;
  unlink(copy);
  rewind(j.out);
  return j.out;
}

/* Read every salvageable row of dir's policies.db into the cache c; keeps the newest row
 * (by last_update) when the salvage shows a domain twice. */
static int salvage_into(const char *dir, mtasts_cache *c, mtasts_rebuild *r, char *err) {
  char *line = NULL;
  size_t cap = 0;
  mtasts_buf d = { NULL, 0, 0 }, old = { NULL, 0, 0 };
  int rc = 0;
  size_t skipped[2] = { 0, 0 }, part = 0;   /* rows that did not decode, per part */
  FILE *out = salvage_dump(dir, DB_FILE, mtasts_cache_path(c), DB_SALVAGE | DB_AGGRESSIVE,
                           1, &r->stopped, &rc, err);
  if (!out) return rc;
  /* Rows name their own domain, so salvage needs no key: aggressive salvage does not keep
   * keys and data in strict turns, and pairing them by position could give one domain
   * another's policy. Every line that decodes as a row is taken under the domain it names,
   * wherever it is in the dump (of a truncated file libdb writes no header). */
  while (getline(&line, &cap, out) > 0) {
    char key[MTASTS_NAME_MAX + 1], ascii[MTASTS_NAME_MAX + 1], why[MTASTS_ERR_MAX];
    mtasts_row row, cur;
    int found;
    if (strncmp(line, "SALVAGE=BEGIN", 13) == 0) { part = 1; continue; }
    if (unhex(line, &d) != 0 || !mtasts_row_format_known(d.p, d.n)) continue;
    if (mtasts_row_decode(d.p, d.n, &row, why) != 0 || memchr(row.domain.p, 0, row.domain.n)) {
      skipped[part]++;
      continue;
    }
    memcpy(key, row.domain.p, row.domain.n);
    key[row.domain.n] = '\0';
    if (mtasts_domain_ascii(key, row.domain.n, ascii, why) != 0 || strcmp(ascii, key) != 0) {
      skipped[part]++;
      continue;
    }
    {
      lookup_ctx x = { key, 0, &old, 0 };
      if ((rc = run(c, op_lookup, &x, "rebuild", err)) != 0) break;
      found = x.found && mtasts_row_decode(old.p, old.n, &cur, why) == 0;
    }
    if (found && cur.last_update >= row.last_update) continue;   /* a newer copy won */
    {
      raw_ctx x = { key, &d };
      if ((rc = run(c, op_put_raw, &x, "rebuild", err)) != 0) break;
    }
    if (!found) r->salvaged++;
  }
  /* the same bad row is seen by both parts: count the part that saw more */
  r->skipped = skipped[0] > skipped[1] ? skipped[0] : skipped[1];
  free(line);
  fclose(out);
  mtasts_buf_free(&d);
  mtasts_buf_free(&old);
  return rc;
}

typedef struct { const mtasts_buf *k, *v; int existed; } pair_ctx;

static int op_put_pair(DB_ENV *env, DB *db, void *vctx) {
  pair_ctx *x = vctx;
  DB_TXN *t;
  DBT k, v;
  int rc;
  memset(&k, 0, sizeof k);
  memset(&v, 0, sizeof v);
  k.data = x->k->p;
  k.size = (u_int32_t)x->k->n;
  v.data = x->v->p;
  v.size = (u_int32_t)x->v->n;
  if ((rc = env->txn_begin(env, NULL, &t, 0)) != 0) return rc;
  /* the plain read comes first and wins: the salvager's copy of a key only fills a gap */
  if ((rc = db->put(db, t, &k, &v, DB_NOOVERWRITE)) != 0) {
    t->abort(t);
    if (rc == DB_KEYEXIST) x->existed = 1;
    return rc == DB_KEYEXIST ? 0 : rc;
  }
  return t->commit(t, DB_TXN_WRITE_NOSYNC);
}

/* A result store key as report.lua writes them: "R" or "Q", a yyyy-mm-dd day, NUL, more. */
static int is_result_key(const mtasts_buf *k) {
  size_t i;
  if (k->n < 13 || k->n > MTASTS_RESULTS_KEY_MAX || (k->p[0] != 'R' && k->p[0] != 'Q') ||
      k->p[11] != 0)
    return 0;
  for (i = 1; i <= 10; i++)
    if (i == 5 || i == 8 ? k->p[i] != '-' : (k->p[i] < '0' || k->p[i] > '9')) return 0;
  return 1;
}

/* Counters ("R") are two u64; delivery state ("Q") a JSON object. */
static int is_result_value(const mtasts_buf *k, const mtasts_buf *v) {
  if (k->p[0] == 'R') return v->n == 16;
  return v->n >= 2 && v->n <= MTASTS_RESULTS_VALUE_MAX && v->p[0] == '{' &&
         v->p[v->n - 1] == '}';
}

/* Carry dir's results.db over into c's. A plain (not aggressive) salvage of the file as it
 * is (checksums on) gives keys and values in turns; as that can slip on damage, a pair is
 * taken only when the key has the store's shape and the value fits the key, and a line that
 * is not a value but a key starts the next pair. The meaning of records is Lua's
 * (report.lua, docs/tlsrpt.md); here only their shape. */
static int salvage_results(const char *dir, mtasts_cache *c, mtasts_rebuild *r, char *err) {
  char *line = NULL;
  size_t cap = 0;
  mtasts_buf k = { NULL, 0, 0 }, v = { NULL, 0, 0 };
  int rc = 0, have_key = 0;
  FILE *out = salvage_dump(dir, RESULTS_FILE, mtasts_cache_path(c), DB_SALVAGE, 0,
                           &r->stopped, &rc, err);
  if (!out) return rc;
  while (getline(&line, &cap, out) > 0) {
    if (line[0] != ' ') { have_key = 0; continue; }   /* header lines, DATA=END */
    if (!have_key) {
      have_key = unhex(line, &k) == 0 && is_result_key(&k);
      continue;
    }
    if (unhex(line, &v) != 0) { have_key = 0; continue; }
    if (!is_result_value(&k, &v)) {
      mtasts_buf t = k;
      k = v;
      v = t;
      have_key = is_result_key(&k);
      continue;
    }
    have_key = 0;
    {
      pair_ctx x = { &k, &v, 0 };
      if ((rc = mtasts_store_run(c, op_put_pair, &x, 1, "rebuild", err)) != 0) break;
      if (!x.existed) r->results++;
    }
  }
  free(line);
  fclose(out);
  mtasts_buf_free(&k);
  mtasts_buf_free(&v);
  return rc;
}

static void recover_child(void *arg) {
  DB_ENV *env;
  if (db_env_create(&env, 0) != 0) _exit(1);
  env->set_errcall(env, errcall);
  if (env->open(env, arg, DB_CREATE | DB_INIT_TXN | DB_INIT_LOCK | DB_INIT_LOG |
                DB_INIT_MPOOL | DB_PRIVATE | DB_RECOVER, 0600) != 0 ||
      env->txn_checkpoint(env, 0, 0, DB_FORCE) != 0) {
    env->close(env, 0);
    _exit(1);
  }
  _exit(env->close(env, 0) == 0 ? 0 : 1);
}

/* Bring a copy of dir's files up to date with its log before salvaging: writes that a
 * killed process committed may still be only in the log. The copy goes to scratch (dir is
 * kept as it was, for the operator); recovery runs in a child, as it may meet the damage.
 * 1 when scratch now holds a recovered copy of dir's databases, 0 when salvage should read
 * dir's own files (nothing to recover, or recovery failed on the damage). */
static int recovered_copy(const char *dir, const char *scratch, int *stopped) {
  char from[PATH_MAX + 300], to[PATH_MAX + 300];
  DIR *dh = opendir(dir);
  struct dirent *e;
  int ok = 1, logs = 0;
  if (!dh || mkdir(scratch, 0700) != 0) {
    if (dh) closedir(dh);
    return 0;
  }
  while (ok && (e = readdir(dh))) {
    if (strcmp(e->d_name, DB_FILE) != 0 && strcmp(e->d_name, RESULTS_FILE) != 0 &&
        strncmp(e->d_name, "log.", 4) != 0)
      continue;
    logs += strncmp(e->d_name, "log.", 4) == 0;
    snprintf(from, sizeof from, "%s/%s", dir, e->d_name);
    snprintf(to, sizeof to, "%s/%s", scratch, e->d_name);
    ok = copy_file(from, to, 0) == 0;
  }
  closedir(dh);
  if (!ok || logs == 0) return 0;
  switch (in_child(recover_child, (void *)scratch)) {
  case 0: return 1;
  case -1: (*stopped)++; return 0;    /* killed at the timeout, or crashed on the damage */
  default: return 0;                  /* recovery failed: salvage the files as they are */
  }
}

/* Remove a scratch directory this process made, and the files in it. Never through a
 * symbolic link (the directory sits beside the cache, in a parent others may write): the
 * directory is opened with O_NOFOLLOW and its files are unlinked relative to it. */
static void remove_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  DIR *dh;
  struct dirent *e;
  if (fd < 0) return;
  if (!(dh = fdopendir(fd))) {
    close(fd);
    return;
  }
  while ((e = readdir(dh)))
    if (e->d_name[0] != '.') (void)unlinkat(fd, e->d_name, 0);
  closedir(dh);     /* closes fd */
  (void)rmdir(dir);
}

int mtasts_cache_rebuild(const char *path, mtasts_rebuild *r, char *err) {
  char real[PATH_MAX], fresh[PATH_MAX + 32], gate[PATH_MAX + sizeof GATE_FILE + 1];
  char scratch[PATH_MAX + 32];
  const char *from;
  struct flock fl;
  shared_env *s;
  mtasts_cache *c = NULL;
  struct tm tm;
  time_t now = time(NULL);
  int fd, rc;
  char *moved_to = r->moved_to;
  memset(r, 0, sizeof *r);
  err[0] = '\0';
  if (!realpath(path, real)) {
    rc = errno;
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: %s", path, strerror(rc));
    return rc;
  }
  pthread_mutex_lock(&registry_mu);
  for (s = registry; s; s = s->next)
    if (s->pid == getpid() && strcmp(s->path, real) == 0) break;
  pthread_mutex_unlock(&registry_mu);
  if (s) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: this process has it open; close it first",
             real);
    return EBUSY;
  }
  if ((rc = check_dir(real, err)) != 0) return rc;
  snprintf(gate, sizeof gate, "%s/%s", real, GATE_FILE);
  if ((fd = open(gate, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0) {
    rc = errno;
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: open %s: %s", real, GATE_FILE, strerror(rc));
    return rc;
  }
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 1;
  fl.l_len = 1;
  if (fcntl(fd, F_SETLK, &fl) != 0) {
    (void)fcntl(fd, F_GETLK, &fl);
    close(fd);
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: in use by process %ld; stop the processes "
             "that use it first", real, (long)fl.l_pid);
    return EBUSY;
  }
  snprintf(fresh, sizeof fresh, "%s.rebuild-%ld", real, (long)getpid());
  snprintf(scratch, sizeof scratch, "%s.recover-%ld", real, (long)getpid());
  /* both are made here, by mkdir, which never follows a link: a name someone planted beside
   * the cache is an error (fresh) or means no recovered copy (scratch), never a path to
   * write into or delete through */
  if (mkdir(fresh, 0700) != 0) {
    rc = errno;
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: make %.160s: %s", real, fresh, strerror(rc));
    close(fd);
    return rc;
  }
  from = recovered_copy(real, scratch, &r->stopped) ? scratch : real;
  if ((rc = mtasts_cache_open(fresh, &c, err)) == 0) {
    rc = salvage_into(from, c, r, err);
    if (rc == 0) rc = salvage_results(from, c, r, err);
    if (rc == 0) rc = mtasts_cache_verify(c, err);
    {
      char e2[MTASTS_ERR_MAX];
      int r2 = mtasts_cache_close(c, e2);
      if (rc == 0 && r2 != 0) { rc = r2; memcpy(err, e2, MTASTS_ERR_MAX); }
    }
  }
  if (rc == 0) {
    char stamp[32];
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    snprintf(moved_to, PATH_MAX, "%.*s.broken-%s", PATH_MAX - 48, real, stamp);
    {   /* two rebuilds in one second: the second old copy gets a number */
      struct stat st;
      int n;
      for (n = 2; lstat(moved_to, &st) == 0 && n < 1000; n++)
        snprintf(moved_to, PATH_MAX, "%.*s.broken-%s-%d", PATH_MAX - 48, real, stamp, n);
    }
    if (rename(real, moved_to) != 0 || rename(fresh, real) != 0) {
      rc = errno;
      snprintf(err, MTASTS_ERR_MAX, "cache %.160s: move the rebuilt cache into place: %s "
               "(it is in %.160s)", real, strerror(rc), fresh);
    }
  }
  remove_dir(scratch);
  close(fd);
  return rc;
}
