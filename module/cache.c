/* cache.c: the MTA-STS policy cache: rows of policies.db, keyed by A-label domain, in the
 * environment of env.c. Pure C, no Lua. Semantics: docs/conformance.md §5; operations:
 * module/cache.h. Every operation runs through mtasts_env_run (the gate, retries, recovery);
 * rows are encoded and read by row.c. */
#define _GNU_SOURCE 1  /* getline */
#include "cache.h"
#include "results.h"

#include <db.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int op_lookup(DB_ENV *env, DB *db, void *vctx);   /* the read-only operations */
static int op_scan(DB_ENV *env, DB *db, void *vctx);

/* An operation on policies.db inside the gate (env.c); all but the reads may checkpoint. */
static int run(mtasts_env *e, mtasts_env_fn fn, void *ctx, const char *what, char *err) {
  return mtasts_env_run(e, MTASTS_DB_POLICIES, fn != op_lookup && fn != op_scan, fn, ctx, what,
                        err);
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

int mtasts_cache_lookup(mtasts_env *c, const char *domain, int64_t now, mtasts_buf *b,
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
             "or upsert it again", mtasts_env_path(c), key, why);
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

int mtasts_cache_upsert(mtasts_env *c, const char *domain, const char *record_id,
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

int mtasts_cache_mark_checked(mtasts_env *c, const char *domain, int64_t now, int extend,
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

int mtasts_cache_delete(mtasts_env *c, const char *domain, int *found, char *err) {
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

int mtasts_cache_scan(mtasts_env *c, mtasts_buf *b, size_t *count, char *err) {
  scan_ctx x = { SCAN_ALL, 0, b, 0 };
  int rc = run(c, op_scan, &x, "list", err);
  *count = x.count;
  return rc;
}

int mtasts_cache_due(mtasts_env *c, int64_t now, int64_t older_than, mtasts_buf *b,
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

int mtasts_cache_prune(mtasts_env *c, int64_t now, int64_t unused_for, size_t *deleted,
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
static int verify_rows(mtasts_env *c, char *err) {
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
             "%.100s); run `mtasts cache rebuild`", mtasts_env_path(c), bad, count, first);
    rc = MTASTS_ECORRUPT;
  }
  return rc;
}

int mtasts_cache_verify(mtasts_env *c, char *err) {
  int rc = mtasts_env_verify(c, MTASTS_DB_POLICIES, err);
  return rc != 0 ? rc : verify_rows(c, err);
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
static int salvage_into(const char *dir, mtasts_env *c, mtasts_rebuild *r, char *err) {
  char *line = NULL;
  size_t cap = 0;
  mtasts_buf d = { NULL, 0, 0 }, old = { NULL, 0, 0 };
  int rc = 0;
  size_t skipped[2] = { 0, 0 }, part = 0;   /* rows that did not decode, per part */
  FILE *out = salvage_dump(dir, MTASTS_POLICIES_FILE, mtasts_env_path(c), DB_SALVAGE | DB_AGGRESSIVE,
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
static int salvage_results(const char *dir, mtasts_env *c, mtasts_rebuild *r, char *err) {
  char *line = NULL;
  size_t cap = 0;
  mtasts_buf k = { NULL, 0, 0 }, v = { NULL, 0, 0 };
  int rc = 0, have_key = 0;
  FILE *out = salvage_dump(dir, MTASTS_RESULTS_FILE, mtasts_env_path(c), DB_SALVAGE, 0,
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
      if ((rc = mtasts_env_run(c, MTASTS_DB_RESULTS, 1, op_put_pair, &x, "rebuild", err)) != 0) break;
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
  env->set_errcall(env, mtasts_env_errcall);
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
    if (strcmp(e->d_name, MTASTS_POLICIES_FILE) != 0 && strcmp(e->d_name, MTASTS_RESULTS_FILE) != 0 &&
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
  char real[PATH_MAX], fresh[PATH_MAX + 32], scratch[PATH_MAX + 32];
  const char *from;
  mtasts_env *c = NULL;
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
  from = recovered_copy(real, scratch, &r->stopped) ? scratch : real;
  if ((rc = mtasts_env_open(fresh, &c, err)) == 0) {
    rc = salvage_into(from, c, r, err);
    if (rc == 0) rc = salvage_results(from, c, r, err);
    if (rc == 0) rc = mtasts_cache_verify(c, err);
    {
      char e2[MTASTS_ERR_MAX];
      int r2 = mtasts_env_close(c, e2);
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
