/* env.c: the shared Berkeley DB 5.3 environment of a cache directory, which the policy cache
 * (cache.c, policies.db) and the result store (results.c, results.db) use as peers. Pure C,
 * no Lua. API: module/env.h; operators' view: docs/cache.md ("Sharing, crashes and
 * recovery").
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
 * Berkeley DB's handles are shared by every mtasts_env handle of a process on a directory
 * (policy caches and result stores, any number of Lua states, in any threads) through a
 * small process-wide registry: the one mutable global of the module, guarded by a mutex. An entry remembers the process that opened it; a forked
 * child never uses its parent's handles. */
#define _GNU_SOURCE 1  /* fallocate */
#include "env.h"
#include "buf.h"

#include <ctype.h>
#include <db.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define DB_FILE MTASTS_POLICIES_FILE
#define RESULTS_FILE MTASTS_RESULTS_FILE
#define GATE_FILE MTASTS_GATE_FILE
#define GATE_MAGIC 0x6d747367u     /* "mtsg" */
#define GATE_VERSION 3             /* 3: the row versions (rowver) */
#define GATE_VERSION_PLAIN 2       /* the layout before them: joined while in use (no memo) */
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
  /* Row versions (version 3): a counter per bucket of policy keys, bumped before every write
   * of a key of that bucket and, all of them, after every recovery. Read without the gate,
   * so a process can tell that a row it read has not been written since (env.h). */
  uint64_t rowver[MTASTS_ROWVER_BUCKETS];
} gate_t;

typedef struct shared_env {
  struct shared_env *next;
  char path[PATH_MAX];
  pid_t pid;              /* the process that opened it */
  unsigned mode;          /* of the files it makes: 0600, or 0660 (the group shares them) */
  int refs;               /* mtasts_env handles using it */
  gate_t *gate;           /* mapped mtasts.gate */
  int gate_fd;            /* kept open with a shared fcntl lock on byte 1: "in use" */
  uint64_t gen;           /* the gate generation the handles below belong to */
  DB_ENV *env;            /* NULL when (re)joining failed: the next operation tries again */
  DB *db;
  DB *rdb;                /* results.db, the TLSRPT result store (results.c); NULL when */
  int rdb_rc;             /* ... it failed to open: this code, and this message */
  char rdb_err[MTASTS_ERR_MAX];
  int own_panic;          /* this process saw the panic: its handles can be closed safely */
  int versions;           /* the gate has row versions (GATE_VERSION); 0 for a gate of the
                           * earlier layout that processes of the earlier release use: its
                           * writers do not bump them, so no row is answered from a memo */
  double ckp_at;          /* monotonic time of this process's last checkpoint test */
} shared_env;

struct mtasts_env { shared_env *s; };

#define CHECKPOINT_TEST_EVERY 1.0   /* seconds: see mtasts_env_run */

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static shared_env *registry;

/* The environment whose operation this thread runs (set by mtasts_env_run around fn), so
 * that an operation can bump the version of a row it writes (mtasts_env_row_written). */
static __thread shared_env *running;

/* The text of the last BDB error in this thread (set by errcall, read right after). */
static __thread char bdb_msg[MTASTS_ERR_MAX];

void mtasts_env_errcall(const DB_ENV *e, const char *pfx, const char *msg) {
  (void)e; (void)pfx;
  snprintf(bdb_msg, sizeof bdb_msg, "%s", msg);
}

/* "cache <path>: <what>: <library text>[; <hint>]" */
static int fail(char *err, int rc, const char *path, const char *what) {
  const char *text = bdb_msg[0] ? bdb_msg : db_strerror(rc), *hint = "";
  if (rc == EACCES || rc == EPERM || rc == EROFS)
    hint = "; the directory and its files must be writable by this user (a cache shared by "
           "a group needs mode 0660)";
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

/* The mode of a directory mtasts makes for files of mode `mode`: the leaf 0700, or 02770
 * when the group shares the files (setgid: what is made in it takes its group); a parent
 * 0700, or 0710 (the group may pass through, not write). Set with chmod, so the process's
 * umask (which the host owns) does not strip the group's bits. */
static int mkdirs(const char *path, unsigned mode) {
  char tmp[PATH_MAX];
  size_t i, n = strlen(path);
  int shared = (mode & 060) != 0;
  if (n == 0 || n >= sizeof tmp) return ENAMETOOLONG;
  memcpy(tmp, path, n + 1);
  for (i = 1; i <= n; i++) {
    if (tmp[i] == '/' || tmp[i] == '\0') {
      char c = tmp[i];
      mode_t m = c == '\0' ? (shared ? 02770 : 0700) : (shared ? 0710 : 0700);
      tmp[i] = '\0';
      if (mkdir(tmp, m) == 0) {
        if (m != 0700 && chmod(tmp, m) != 0) return errno;
      } else if (errno != EEXIST) {
        return errno;
      }
      tmp[i] = c;
    }
  }
  return 0;
}

/* Whether a file name in a cache directory is one Berkeley DB makes there. (Not the gate:
 * gate_map sets its mode through its own descriptor; opening and closing another one here
 * would drop this process's fcntl locks on it.) */
static int own_name(const char *name) {
  return strncmp(name, "__db.", 5) == 0 || strncmp(name, "log.", 4) == 0 ||
         strcmp(name, DB_FILE) == 0 || strcmp(name, RESULTS_FILE) == 0;
}

/* Give the files of the directory that this user owns the mode s->mode. Berkeley DB makes
 * its region and database files with the mode it is given less the process's umask, which
 * belongs to the host and may strip the group's bits; the umask is left alone and the files
 * are set here, inside the gate, before another process can join. Never through a link:
 * each file is opened with O_NOFOLLOW and changed through its descriptor. */
static void fix_modes(shared_env *s) {
  int dfd = open(s->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  uid_t me = geteuid();
  DIR *d;
  struct dirent *e;
  if (dfd < 0) return;
  if (!(d = fdopendir(dfd))) {
    close(dfd);
    return;
  }
  while ((e = readdir(d)) != NULL) {
    struct stat st;
    int fd;
    if (!own_name(e->d_name)) continue;
    fd = openat(dfd, e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == me &&
        (st.st_mode & 07777) != s->mode)
      (void)fchmod(fd, s->mode);
    close(fd);
  }
  closedir(d);      /* closes dfd */
}

/* What the log files of a directory look like: their numbers, sizes and modification times,
 * hashed (FNV-1a). Any write to the log changes it. */
static uint64_t log_fingerprint(const char *path) {
  char file[PATH_MAX + 260];   /* the directory, "/", a d_name of up to 255 bytes */
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
  char file[PATH_MAX + 260];   /* the directory, "/", a d_name of up to 255 bytes */
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
  int fd, rc = 0, made = 0;
  snprintf(file, sizeof file, "%s/%s", s->path, GATE_FILE);
  /* made here with O_EXCL, so that this process knows whether it made it: a gate made
   * before keeps deciding the mode of the files when the opener names none */
  while ((fd = open(file, O_RDWR | O_CLOEXEC | O_NOFOLLOW)) < 0 && errno == ENOENT) {
    if ((fd = open(file, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                   s->mode ? s->mode : 0600)) >= 0) {
      made = 1;
      break;
    }
    if (errno != EEXIST) break;
  }
  if (fd < 0) {
    rc = errno;
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: open %s: %s%s", s->path, GATE_FILE,
             strerror(rc), rc == EACCES || rc == EROFS ?
             "; the directory and its files must be writable by this user (a cache shared "
             "by a group needs mode 0660)" :
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
  if (!S_ISREG(st.st_mode)) {
    rc = EINVAL;
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: %s is not a regular file", s->path, GATE_FILE);
    goto done;
  }
  /* the mode of the files: the one asked for; else the gate's (a shared cache stays shared
   * whoever opens it), or 0600 for a new cache */
  if (!s->mode) s->mode = !made && (st.st_mode & S_IWGRP) ? 0660 : 0600;
  if (st.st_uid == geteuid() && (st.st_mode & 07777) != s->mode) (void)fchmod(fd, s->mode);
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
  s->versions = 1;
  if (g->magic != GATE_MAGIC || g->version != GATE_VERSION || memcmp(g->boot_id, boot, 40)) {
    pthread_mutexattr_t a;
    struct timespec now;
    uint64_t gen;
    int in_use;
    /* never re-made under a process that uses it (another version of mtasts, or damage):
     * its mutex would be pulled from under it */
    fl.l_type = F_WRLCK;
    fl.l_start = 1;
    in_use = fcntl(fd, F_SETLK, &fl) != 0;
    fl.l_start = 0;
    if (in_use && g->magic == GATE_MAGIC && g->version == GATE_VERSION_PLAIN &&
        memcmp(g->boot_id, boot, 40) == 0) {
      /* the previous release's layout, in use by its processes: joined as they join it,
       * without row versions (their writers do not bump them); the next opener after they
       * all stopped makes the gate anew */
      s->versions = 0;
    } else if (in_use) {
      rc = EBUSY;
      snprintf(err, MTASTS_ERR_MAX, "cache %.160s: %s is of another version of mtasts (or "
               "damaged) and processes use the cache: restart them (an upgrade leaves the old "
               "ones running)", s->path, GATE_FILE);
      munmap(g, sizeof *g);
      goto done;
    } else {
      /* continue the count; from an unknown state start far from any earlier count, so a
       * stale handle can never mistake the new generation for its own */
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
  env->set_errcall(env, mtasts_env_errcall);
  /* DB_REGION_INIT: region files are written out when made, so a full disk is an error
   * now, not a SIGBUS when libdb first touches a sparse page of the mapping */
  if ((rc = env->set_flags(env, DB_REGION_INIT, 1)) != 0 ||
      (rc = env->set_lk_detect(env, DB_LOCK_DEFAULT)) != 0 ||
      (rc = env->set_cachesize(env, 0, 4u << 20, 1)) != 0 ||
      /* a batch of results writes many pages in one transaction */
      (rc = env->set_lk_max_locks(env, 3000)) != 0 ||
      (rc = env->set_lk_max_objects(env, 3000)) != 0 ||
      (rc = env->set_lg_max(env, 1u << 20)) != 0 ||
      /* log files are made later, by any process: their mode is set absolutely (fchmod),
       * whatever the umask of the process that makes them */
      (rc = env->set_lg_filemode(env, (int)s->mode)) != 0 ||
      (rc = env->log_set_config(env, DB_LOG_AUTO_REMOVE, 1)) != 0) {
    fail(err, rc, s->path, "configure");
    env->close(env, 0);
    return rc;
  }
  if ((rc = env->open(env, s->path, flags, (int)s->mode)) != 0) {
    fail(err, rc, s->path, recover ? "recover environment" : "open environment");
    env->close(env, 0);
    return rc;
  }
  /* DB_CHKSUM: every page read is checked, so a damaged file gives an error instead of
   * letting libdb walk garbage (without it, a corrupted btree page can crash the process) */
  if ((rc = db_create(&db, env, 0)) != 0 || (rc = db->set_flags(db, DB_CHKSUM)) != 0 ||
      (rc = db->open(db, NULL, DB_FILE, NULL, DB_BTREE, DB_CREATE | DB_AUTO_COMMIT | DB_THREAD,
                     (int)s->mode)) != 0) {
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
                      DB_CREATE | DB_AUTO_COMMIT | DB_THREAD, (int)s->mode)) != 0) {
    fail(s->rdb_err, rc, s->path, "open " RESULTS_FILE);
    s->rdb_rc = rc;
    if (rdb) rdb->close(rdb, 0);
    rdb = NULL;
    rc = 0;
  }
  s->env = env;
  s->db = db;
  s->rdb = rdb;
  fix_modes(s);
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
    v->set_errcall(v, mtasts_env_errcall);
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
      /* recovery may undo writes of the dead holder (and lose ones committed without a
       * sync): no row read before it may be taken as current after it */
      for (size_t i = 0; i < MTASTS_ROWVER_BUCKETS; i++)
        __atomic_add_fetch(&g->rowver[i], 1, __ATOMIC_RELEASE);
    }
    s->gen = g->generation;
  }
  return 0;
}

static void leave(shared_env *s) { pthread_mutex_unlock(&s->gate->mu); }

/* Whether this process is a member of group gid (its effective or a supplementary group). */
static int in_group(gid_t gid) {
  gid_t *groups;
  int i, n, found = 0;
  if (gid == getegid()) return 1;
  if ((n = getgroups(0, NULL)) <= 0) return 0;
  if (!(groups = malloc((size_t)n * sizeof *groups))) return 0;
  n = getgroups(n, groups);
  for (i = 0; i < n && !found; i++) found = groups[i] == gid;
  free(groups);
  return found;
}

/* The POSIX ACLs of a directory as Linux stores them (the extended attributes below): a
 * 4-byte version (2), then 8-byte entries of a tag, permissions and an id, little-endian. */
#define ACL_ACCESS "system.posix_acl_access"
#define ACL_DEFAULT "system.posix_acl_default"
#define ACL_TAG_USER 0x02          /* a named user */
#define ACL_TAG_GROUP 0x08         /* a named group */
#define ACL_PERM_WRITE 0x02

/* Whether the ACL `name` of path gives write to a named user or group: 1 when it does, or
 * when it cannot be read or does not parse (refused: the directory's writers are then
 * unknown); 0 when it does not, or there is none. */
static int acl_names_writer(const char *path, const char *name) {
  unsigned char b[4 + 8 * 512];
  ssize_t n = getxattr(path, name, b, sizeof b), i;
  if (n < 0) return errno == ENODATA || errno == ENOTSUP ? 0 : 1;
  if (n < 4 || (n - 4) % 8 != 0 || mtasts_get_u32le(b) != 2) return 1;
  for (i = 4; i < n; i += 8) {
    unsigned tag = (unsigned)b[i] | (unsigned)b[i + 1] << 8, perm = b[i + 2];
    if ((tag == ACL_TAG_USER || tag == ACL_TAG_GROUP) && (perm & ACL_PERM_WRITE)) return 1;
  }
  return 0;
}

/* Whether an ACL lets a user or group other than the directory's owner and group write the
 * directory (its access ACL, effective only while the group bits, which are then the ACL's
 * mask, include write) or the files made in it (its default ACL, effective on files of mode
 * 0660). stat shows neither: the group bits of a directory with an ACL are its mask. */
int mtasts_env_acl_writers(const char *path, const struct stat *st) {
  return ((st->st_mode & S_IWGRP) && acl_names_writer(path, ACL_ACCESS)) ||
         acl_names_writer(path, ACL_DEFAULT);
}

/* The directory may be written only by users this process trusts: anyone else who can write
 * it could plant links there (mtasts.gate, a log file, policies.db) that make this process,
 * often root, overwrite another file, or write a log that recovery replays (and a log can
 * name files anywhere). Berkeley DB opens its files without O_NOFOLLOW, so the directory is
 * what keeps them safe. The rule (docs/cache.md, "Who may open a directory"):
 *   1. others may not write it, and no ACL names another user or group that may;
 *   2. if its group may write it, that group must be one this process is a member of (the
 *      operator put this process in it); its owner may then be anyone, since a user other
 *      than root can give a directory only to a group it is a member of itself. Never for
 *      root: it would trust every member of the group with its own writes;
 *   3. otherwise it must belong to this process's user, or to root.
 * For a rebuild (which never opens Berkeley DB in the directory, reads its files without
 * following links, recovers their copy as the directory's owner, never as root, and only
 * renames it) root may also claim a directory of another user, one its group can write, or
 * one an ACL lets others write. */
static int check_dir(const char *path, int rebuild, char *err) {
  struct stat st;
  uid_t me = geteuid();
  int root_rebuild = rebuild && me == 0;
  if (stat(path, &st) != 0) {
    int rc = errno;
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: %s", path, strerror(rc));
    return rc;
  }
  if (!S_ISDIR(st.st_mode)) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: not a directory", path);
    return ENOTDIR;
  }
  if (st.st_mode & S_IWOTH) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: the directory is writable by others (mode "
             "%04o): a link planted there could make this process overwrite other files; run "
             "chmod o-w on it", path, (unsigned)(st.st_mode & 07777));
    return EPERM;
  }
  if (!root_rebuild && mtasts_env_acl_writers(path, &st)) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: an ACL lets another user or group write the "
             "directory or its files: a link planted there could make this process overwrite "
             "other files; remove it (setfacl -b) and share the cache through the directory's "
             "group", path);
    return EPERM;
  }
  if (st.st_mode & S_IWGRP) {
    struct group grp, *gr = NULL;
    char buf[1024];
    if (root_rebuild) return 0;
    if (getgrgid_r(st.st_gid, &grp, buf, sizeof buf, &gr) != 0) gr = NULL;
    if (me == 0 && in_group(st.st_gid)) {
      snprintf(err, MTASTS_ERR_MAX, "cache %.160s: the directory is writable by its group %s "
               "(gid %u), and root does not trust a group's members with its writes: a "
               "member could plant a link that makes root overwrite other files; run mtasts "
               "as a member of the group (e.g. sudo -u mtasts), or chmod g-w the directory",
               path, gr ? gr->gr_name : "", (unsigned)st.st_gid);
      return EPERM;
    }
    if (me != 0 && in_group(st.st_gid)) return 0;
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: the directory is writable by its group %s "
             "(gid %u), which this process is not a member of: a member could plant a link "
             "that makes this process overwrite other files; run mtasts as a member of that "
             "group, or chmod g-w the directory", path, gr ? gr->gr_name : "",
             (unsigned)st.st_gid);
    return EPERM;
  }
  if (st.st_uid != me && st.st_uid != 0 && !root_rebuild) {
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
  return 0;
}

int mtasts_env_open(const char *path, unsigned mode, mtasts_env **out, char *err) {
  char real[PATH_MAX];
  shared_env *s;
  mtasts_env *e;
  int rc = 0;
  err[0] = '\0';
  if (mode != 0 && mode != 0600 && mode != 0660) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: mode %04o is not 0600 or 0660", path, mode);
    return EINVAL;
  }
  if (geteuid() == 0 && (mode & 060) && access(path, F_OK) != 0 && errno == ENOENT) {
    /* it would be made group-writable, which root refuses to open (check_dir) */
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: root does not make a cache its group can "
             "write (mode 0660): its members could plant links that make root overwrite "
             "other files; make it as a member of the group (e.g. sudo -u mtasts)", path);
    return EPERM;
  }
  if ((rc = mkdirs(path, mode)) != 0) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: create directory: %s", path, strerror(rc));
    return rc;
  }
  if (!realpath(path, real)) {
    rc = errno;
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: %s", path, strerror(rc));
    return rc;
  }
  if ((rc = check_dir(real, 0, err)) != 0) return rc;
  if (!(e = calloc(1, sizeof *e))) return ENOMEM;
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
    s->mode = mode;    /* 0: decided by gate_map */
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
    free(e);
    if (rc == ENOMEM) snprintf(err, MTASTS_ERR_MAX, "cache %.200s: out of memory", path);
    return rc;
  }
  e->s = s;
  *out = e;
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

int mtasts_env_close(mtasts_env *e, char *err) {
  shared_env *s = e->s, **pp;
  int rc = 0;
  free(e);
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

const char *mtasts_env_path(const mtasts_env *e) { return e->s->path; }

uint64_t mtasts_env_generation(const mtasts_env *e) { return e->s->gate->generation; }

uint64_t mtasts_env_recoveries(const mtasts_env *e) { return e->s->gate->recoveries; }

/* FNV-1a of a key, folded to a bucket of the row versions. */
static size_t rowver_bucket(const char *key, size_t n) {
  uint64_t h = 14695981039346656037ull;
  size_t i;
  for (i = 0; i < n; i++) {
    h ^= (unsigned char)key[i];
    h *= 1099511628211ull;
  }
  return (size_t)(h ^ (h >> 32)) & (MTASTS_ROWVER_BUCKETS - 1);
}

int mtasts_env_row_version(const mtasts_env *e, const char *key, size_t n, uint64_t *v) {
  gate_t *g = e->s->gate;
  if (!e->s->versions) return ENOTSUP;
  if (__atomic_load_n(&g->damaged, __ATOMIC_ACQUIRE)) return MTASTS_ECORRUPT;
  *v = __atomic_load_n(&g->rowver[rowver_bucket(key, n)], __ATOMIC_ACQUIRE);
  return 0;
}

void mtasts_env_row_written(const char *key, size_t n) {
  if (running && running->versions)
    __atomic_add_fetch(&running->gate->rowver[rowver_bucket(key, n)], 1, __ATOMIC_RELEASE);
}

/* Deadlocks (possible only between threads of one process) are retried; a panic
 * (DB_RUNRECOVERY) makes the next holder recover, once. */
int mtasts_env_run(mtasts_env *e, int which, int writes, mtasts_env_fn fn, void *ctx,
                   const char *what, char *err) {
  shared_env *s = e->s;
  int results = which == MTASTS_DB_RESULTS;
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
    running = s;
    rc = fn(s->env, results ? s->rdb : s->db, ctx);
    running = NULL;
    if (rc == 0 && writes) {
      /* after 256 KiB of log or 5 minutes: lets old log files be removed, so the directory
       * stays small whatever the mix of writes. libdb answers "is one due?" by opening the
       * log and reading 32 KiB of it, four fifths of the time of a write not synced to disk
       * (mark_checked: 26-40 us with it, 6-10 us without). So the log's own counters (the
       * region, no I/O) say when 256 KiB were written, and the 5 minutes are asked about
       * once a second per process. */
      double t = mtasts_monotonic();
      DB_LOG_STAT *ls = NULL;
      int due = t - s->ckp_at >= CHECKPOINT_TEST_EVERY || t < s->ckp_at;
      if (!due && s->env->log_stat(s->env, &ls, 0) == 0 && ls) {
        due = ls->st_wc_mbytes > 0 || ls->st_wc_bytes >= 256u * 1024;
      }
      free(ls);
      if (due) {
        s->ckp_at = t;
        (void)s->env->txn_checkpoint(s->env, 256, 5, 0);
      }
    }
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

static int op_checkpoint(DB_ENV *env, DB *db, void *ctx) {
  (void)ctx;
  (void)db;
  return env->txn_checkpoint(env, 0, 0, DB_FORCE);
}

int mtasts_env_verify(mtasts_env *e, int which, char *err) {
  char file[PATH_MAX + 16];
  DB *v;
  int rc;
  if ((rc = mtasts_env_run(e, which, 1, op_checkpoint, NULL, "checkpoint", err)) != 0) return rc;
  snprintf(file, sizeof file, "%s/%s", e->s->path,
           which == MTASTS_DB_RESULTS ? RESULTS_FILE : DB_FILE);
  bdb_msg[0] = '\0';
  if ((rc = db_create(&v, NULL, 0)) != 0) return fail(err, rc, e->s->path, "verify");
  v->set_errcall(v, mtasts_env_errcall);
  /* DB->verify reads the file itself and always discards the handle */
  if ((rc = v->verify(v, file, NULL, NULL, 0)) != 0) return fail(err, rc, e->s->path, "verify");
  return 0;
}

int mtasts_env_claim(const char *real, int *fd, char *err) {
  char gate[PATH_MAX + sizeof GATE_FILE + 1];
  struct flock fl;
  shared_env *s;
  int rc;
  pthread_mutex_lock(&registry_mu);
  for (s = registry; s; s = s->next)
    if (s->pid == getpid() && strcmp(s->path, real) == 0) break;
  pthread_mutex_unlock(&registry_mu);
  if (s) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: this process has it open; close it first",
             real);
    return EBUSY;
  }
  if ((rc = check_dir(real, 1, err)) != 0) return rc;
  snprintf(gate, sizeof gate, "%s/%s", real, GATE_FILE);
  if ((*fd = open(gate, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0) {
    rc = errno;
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: open %s: %s", real, GATE_FILE, strerror(rc));
    return rc;
  }
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 1;
  fl.l_len = 1;
  if (fcntl(*fd, F_SETLK, &fl) != 0) {
    (void)fcntl(*fd, F_GETLK, &fl);
    close(*fd);
    *fd = -1;
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: in use by process %ld; stop the processes "
             "that use it first", real, (long)fl.l_pid);
    return EBUSY;
  }
  return 0;
}
