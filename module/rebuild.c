/* rebuild.c: `mtasts cache rebuild`: salvage what can be read of a damaged cache directory
 * into a new one and swap the directories. Pure C, no Lua. Operators' view: docs/cache.md
 * ("Damage"). It claims the directory through env.c (nobody may have it open), reads the
 * files in child processes (libdb's salvager can loop or crash on damage), and stores what it
 * finds through the owners of the two databases: rows through cache.c (which knows rows),
 * result records through results.c (which knows their shape). Root may rebuild a cache of
 * another user (env.c: check_dir): the old directory is only read, never through a link
 * (O_NOFOLLOW, regular files only), its log is recovered on a copy by a child that runs as
 * the directory's owner (recover_as: a log can name files anywhere), and the new one is
 * made by this process, 0700 until it is complete, then given the old one's owner, group
 * and modes. */
#include "cache.h"
#include "results.h"

#include <db.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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

/* Open a file of the old directory for reading: never through a link, and only a regular
 * file (a FIFO planted there would block the read). A descriptor, or -1 with errno set. */
static int open_plain(const char *file) {
  struct stat st;
  int fd = open(file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return -1;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    errno = EINVAL;
    return -1;
  }
  return fd;
}

/* A btree meta page (magic 0x053162, either byte order) with a page size libdb can have. */
static int is_btree_file(const char *file) {
  unsigned char m[32];
  unsigned ps;
  int fd = open_plain(file), ok = 0;
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
  int in = open_plain(from), out, rc = 0, first = uncheck;
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
    v->set_errcall(v, mtasts_env_errcall);
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
  db->set_errcall(db, mtasts_env_errcall);
  if (db->verify(db, j->copy, NULL, NULL, 0) != 0) _exit(1);   /* verify frees db */
  setvbuf(j->out, NULL, _IOFBF, 1 << 16);
  if (db_create(&db, NULL, 0) != 0) _exit(1);
  db->set_errcall(db, mtasts_env_errcall);
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
  char file[PATH_MAX + 32], copy[PATH_MAX + 48], plain[PATH_MAX + 48];
  struct stat st;
  salvage_job j;
  *rc = 0;
  snprintf(file, sizeof file, "%s/%s", dir, name);
  snprintf(copy, sizeof copy, "%s/salvage-%ld.db", scratch, (long)getpid());
  snprintf(plain, sizeof plain, "%s/plain-%ld.db", scratch, (long)getpid());
  if (lstat(file, &st) != 0) return NULL;       /* nothing to salvage */
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
  {   /* first what a cursor reaches in the file as it is (with its checksums), read from a
       * copy: libdb opens a file by its name, and would follow a link */
    salvage_job w = j;
    w.copy = plain;
    if (copy_file(file, plain, 0) == 0)
      (void)in_child(walk_child, &w);  /* whatever became of it, the salvage reads on */
    unlink(plain);
    fseek(j.out, 0, SEEK_END);
    fputs("SALVAGE=BEGIN\n", j.out);     /* where the salvager's part starts */
    fflush(j.out);
  }
  if (in_child(salvage_child, &j) < 0) (*stopped)++;
  unlink(copy);
  rewind(j.out);
  return j.out;
}

/* Read every salvageable row of dir's policies.db into the cache e; keeps the newest row
 * (by last_update) when the salvage shows a domain twice. */
static int salvage_into(const char *dir, mtasts_env *e, mtasts_rebuild *r, char *err) {
  char *line = NULL;
  size_t cap = 0;
  mtasts_buf d = { NULL, 0, 0 }, old = { NULL, 0, 0 };
  int rc = 0, outcome;
  size_t skipped[2] = { 0, 0 }, part = 0;   /* rows that did not decode, per part */
  FILE *out = salvage_dump(dir, MTASTS_POLICIES_FILE, mtasts_env_path(e),
                           DB_SALVAGE | DB_AGGRESSIVE, 1, &r->stopped, &rc, err);
  if (!out) return rc;
  /* Rows name their own domain, so salvage needs no key: aggressive salvage does not keep
   * keys and data in strict turns, and pairing them by position could give one domain
   * another's policy. Every line that decodes as a row is taken under the domain it names,
   * wherever it is in the dump (of a truncated file libdb writes no header). */
  while (getline(&line, &cap, out) > 0) {
    if (strncmp(line, "SALVAGE=BEGIN", 13) == 0) { part = 1; continue; }
    if (unhex(line, &d) != 0) continue;
    if ((rc = mtasts_cache_put_salvaged(e, &d, &old, &outcome, err)) != 0) break;
    if (outcome == MTASTS_SALVAGE_BAD) skipped[part]++;
    else if (outcome == MTASTS_SALVAGE_ADDED) r->salvaged++;
  }
  /* the same bad row is seen by both parts: count the part that saw more */
  r->skipped = skipped[0] > skipped[1] ? skipped[0] : skipped[1];
  free(line);
  fclose(out);
  mtasts_buf_free(&d);
  mtasts_buf_free(&old);
  return rc;
}

/* Carry dir's results.db over into e's. A plain (not aggressive) salvage of the file as it
 * is (checksums on) gives keys and values in turns; as that can slip on damage, a pair is
 * taken only when the key has the store's shape and the value fits the key, and a line that
 * is not a value but a key starts the next pair. The shapes are the result store's
 * (results.c); what records mean is Lua's (docs/tlsrpt.md). */
static int salvage_results(const char *dir, mtasts_env *e, mtasts_rebuild *r, char *err) {
  char *line = NULL;
  size_t cap = 0;
  mtasts_buf k = { NULL, 0, 0 }, v = { NULL, 0, 0 };
  int rc = 0, have_key = 0;
  FILE *out = salvage_dump(dir, MTASTS_RESULTS_FILE, mtasts_env_path(e), DB_SALVAGE, 0,
                           &r->stopped, &rc, err);
  if (!out) return rc;
  while (getline(&line, &cap, out) > 0) {
    if (line[0] != ' ') { have_key = 0; continue; }   /* header lines, DATA=END */
    if (!have_key) {
      have_key = unhex(line, &k) == 0 && mtasts_results_is_key(k.p, k.n);
      continue;
    }
    if (unhex(line, &v) != 0) { have_key = 0; continue; }
    if (!mtasts_results_is_value(k.p, v.p, v.n)) {
      mtasts_buf t = k;
      k = v;
      v = t;
      have_key = mtasts_results_is_key(k.p, k.n);
      continue;
    }
    have_key = 0;
    {
      int added;
      if ((rc = mtasts_results_put_salvaged(e, k.p, k.n, v.p, v.n, &added, err)) != 0) break;
      r->results += (size_t)added;
    }
  }
  free(line);
  fclose(out);
  mtasts_buf_free(&k);
  mtasts_buf_free(&v);
  return rc;
}

/* Who recovers the copy. Recovery replays the file operations the log records, and a log
 * can name database files by absolute paths, through links: run as root on a log someone
 * else could write, it makes root create or overwrite files anywhere. So root recovers as
 * root only a directory nobody else could write; any other one as the directory's owner
 * and group (or, for a directory of root that its group or an ACL lets others write, as
 * nobody with that group), which could have done the same from their own processes. */
typedef struct {
  const char *dir;   /* the scratch copy */
  int drop;          /* 1: become uid and gid first */
  uid_t uid;
  gid_t gid;
} recover_job;

/* Give the scratch directory this process made, and the copies in it, to uid and gid;
 * never through a link. 0, or -1. */
static int give_scratch(int dfd, uid_t uid, gid_t gid) {
  int fd = dup(dfd);
  DIR *dh;
  struct dirent *e;
  int rc = 0;
  if (fd < 0) return -1;
  if (!(dh = fdopendir(fd))) {
    close(fd);
    return -1;
  }
  while (rc == 0 && (e = readdir(dh)))
    if (e->d_name[0] != '.' && fchownat(dfd, e->d_name, uid, gid, AT_SYMLINK_NOFOLLOW) != 0)
      rc = -1;
  closedir(dh);     /* closes fd */
  if (rc == 0 && fchown(dfd, uid, gid) != 0) rc = -1;
  return rc;
}

/* In the child: recover the copy in j->dir, as j->uid and j->gid when j->drop. Exits 0 when
 * the copy is recovered; any failure, of the change of user too, exits non-zero (the
 * rebuild then salvages the files as they are). */
static void recover_child(void *arg) {
  recover_job *j = arg;
  DB_ENV *env;
  int dfd = open(j->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  /* the environment is opened as ".", from inside the copy: the user it runs as need not
   * be able to reach the directory by its path */
  if (dfd < 0 || fchdir(dfd) != 0) _exit(3);
  if (j->drop) {
    if (give_scratch(dfd, j->uid, j->gid) != 0) _exit(3);
    if (setgroups(0, NULL) != 0 || setgid(j->gid) != 0 || setuid(j->uid) != 0) _exit(3);
    if (getuid() != j->uid || geteuid() != j->uid || getgid() != j->gid ||
        getegid() != j->gid || (j->uid != 0 && setuid(0) == 0))
      _exit(3);
  }
  close(dfd);
  if (db_env_create(&env, 0) != 0) _exit(1);
  env->set_errcall(env, mtasts_env_errcall);
  if (env->open(env, ".", DB_CREATE | DB_INIT_TXN | DB_INIT_LOCK | DB_INIT_LOG |
                DB_INIT_MPOOL | DB_PRIVATE | DB_RECOVER, 0600) != 0 ||
      env->txn_checkpoint(env, 0, 0, DB_FORCE) != 0) {
    env->close(env, 0);
    _exit(1);
  }
  _exit(env->close(env, 0) == 0 ? 0 : 1);
}

/* Who recovers a copy of dir (stat old) for this process: itself, unless it is root and
 * someone else could have written dir (its owner, its group, an ACL). */
static void recover_as(const char *dir, const struct stat *old, recover_job *j) {
  j->drop = 0;
  if (geteuid() != 0) return;
  if (old->st_uid == 0 && !(old->st_mode & (S_IWGRP | S_IWOTH)) &&
      !mtasts_env_acl_writers(dir, old))
    return;
  j->drop = 1;
  j->gid = old->st_gid;
  j->uid = old->st_uid;
  if (j->uid == 0) {     /* root's directory, writable by others: recover as nobody */
    struct passwd pwd, *pw = NULL;
    char buf[1024];
    j->uid = getpwnam_r("nobody", &pwd, buf, sizeof buf, &pw) == 0 && pw && pw->pw_uid != 0
           ? pw->pw_uid : 65534;
  }
}

/* Bring a copy of dir's files up to date with its log before salvaging: writes that a
 * killed process committed may still be only in the log. The copy goes to scratch (dir is
 * kept as it was, for the operator); recovery runs in a child, as it may meet the damage,
 * and as the user recover_as names. 1 when scratch now holds a recovered copy of dir's
 * databases, 0 when salvage should read dir's own files (nothing to recover, or recovery
 * failed on the damage or could not run as that user). */
static int recovered_copy(const char *dir, const struct stat *old, const char *scratch,
                          int *stopped) {
  char from[PATH_MAX + 300], to[PATH_MAX + 300];
  DIR *dh = opendir(dir);
  struct dirent *e;
  recover_job j;
  int ok = 1, logs = 0;
  if (!dh || mkdir(scratch, 0700) != 0) {
    if (dh) closedir(dh);
    return 0;
  }
  while (ok && (e = readdir(dh))) {
    if (strcmp(e->d_name, MTASTS_POLICIES_FILE) != 0 &&
        strcmp(e->d_name, MTASTS_RESULTS_FILE) != 0 &&
        strncmp(e->d_name, "log.", 4) != 0)
      continue;
    logs += strncmp(e->d_name, "log.", 4) == 0;
    snprintf(from, sizeof from, "%s/%s", dir, e->d_name);
    snprintf(to, sizeof to, "%s/%s", scratch, e->d_name);
    ok = copy_file(from, to, 0) == 0;
  }
  closedir(dh);
  if (!ok || logs == 0) return 0;
  recover_as(dir, old, &j);
  j.dir = scratch;
  switch (in_child(recover_child, &j)) {
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

/* The mode of the old directory's files: 0660 when its database or gate is group-writable
 * (a shared cache stays shared), else 0600. */
static unsigned old_mode(const char *dir) {
  static const char *const names[] = { MTASTS_POLICIES_FILE, MTASTS_GATE_FILE };
  char file[PATH_MAX + 32];
  struct stat st;
  size_t i;
  for (i = 0; i < sizeof names / sizeof *names; i++) {
    snprintf(file, sizeof file, "%s/%s", dir, names[i]);
    if (lstat(file, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & S_IWGRP)) return 0660;
  }
  return 0600;
}

/* Give the rebuilt directory (made by this process, 0700, so nothing in it was planted) and
 * its files the old directory's owner and group, the files mode, and the directory the old
 * one's mode. Only root can give files to another user; anyone else keeps them and gives
 * them the group when it is one of its own. 0 or an errno. */
static int adopt(const char *fresh, const struct stat *old, unsigned mode) {
  int fd = open(fresh, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), rc = 0;
  int root = geteuid() == 0;
  uid_t uid = root ? old->st_uid : (uid_t)-1;
  DIR *dh;
  struct dirent *e;
  if (fd < 0) return errno;
  if (!(dh = fdopendir(fd))) {
    rc = errno;
    close(fd);
    return rc;
  }
  while (rc == 0 && (e = readdir(dh))) {
    if (e->d_name[0] == '.') continue;
    if (fchownat(fd, e->d_name, uid, old->st_gid, AT_SYMLINK_NOFOLLOW) != 0 && root)
      rc = errno;
    else if (fchmodat(fd, e->d_name, mode, 0) != 0)
      rc = errno;
  }
  if (rc == 0 && fchown(fd, uid, old->st_gid) != 0 && root) rc = errno;
  /* after chown, which may clear the setgid bit */
  if (rc == 0 && fchmod(fd, old->st_mode & 07777) != 0) rc = errno;
  closedir(dh);     /* closes fd */
  return rc;
}

int mtasts_cache_rebuild(const char *path, unsigned mode, mtasts_rebuild *r, char *err) {
  char real[PATH_MAX], fresh[PATH_MAX + 32], scratch[PATH_MAX + 32];
  const char *from;
  mtasts_env *e = NULL;
  struct stat old;
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
  if (mode != 0 && mode != 0600 && mode != 0660) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: mode %04o is not 0600 or 0660", path, mode);
    return EINVAL;
  }
  if (stat(real, &old) != 0) {
    rc = errno;
    snprintf(err, MTASTS_ERR_MAX, "cache %.200s: %s", real, strerror(rc));
    return rc;
  }
  if (!mode) mode = old_mode(real);    /* before the claim, which may make the gate */
  if ((rc = mtasts_env_claim(real, &fd, err)) != 0) return rc;
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
  from = recovered_copy(real, &old, scratch, &r->stopped) ? scratch : real;
  if ((rc = mtasts_env_open(fresh, mode, &e, err)) == 0) {
    rc = salvage_into(from, e, r, err);
    if (rc == 0) rc = salvage_results(from, e, r, err);
    if (rc == 0) rc = mtasts_cache_verify(e, err);
    {
      char e2[MTASTS_ERR_MAX];
      int r2 = mtasts_env_close(e, e2);
      if (rc == 0 && r2 != 0) { rc = r2; memcpy(err, e2, MTASTS_ERR_MAX); }
    }
  }
  if (rc == 0 && (rc = adopt(fresh, &old, mode)) != 0)
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: give the rebuilt cache the owner, group and "
             "modes of the old one: %s (it is in %.160s)", real, strerror(rc), fresh);
  if (rc == 0) {
    char stamp[32];
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    snprintf(moved_to, PATH_MAX, "%.*s.broken-%s", PATH_MAX - 48, real, stamp);
    {   /* two rebuilds in one second: the second old copy gets a number */
      struct stat st;
      unsigned n;
      for (n = 2; lstat(moved_to, &st) == 0 && n < 1000; n++)
        snprintf(moved_to, PATH_MAX, "%.*s.broken-%s-%u", PATH_MAX - 48, real, stamp, n);
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
