/* cache.c: the MTA-STS policy cache: rows of policies.db, keyed by A-label domain, in the
 * environment of env.c. Pure C, no Lua. Semantics: docs/conformance.md §5; operations:
 * module/cache.h. Every operation runs through mtasts_env_run (the gate, retries, recovery);
 * rows are encoded and read by row.c. */
#include "cache.h"

#include <db.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
  mtasts_env_row_written(key, k.size);   /* before the write: a copy made before is stale */
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

/* --- the memo --- */

/* A handle's copies of rows it read, each with the version of its bucket (env.h) at the
 * read: answered from while that version holds, without the gate. Open addressing with
 * linear probing over twice as many slots as rows; when full, it is emptied. */
typedef struct {
  char *key;                 /* NULL: a free slot */
  size_t kn;
  uint64_t version;
  int64_t valid_end, use_until;   /* answered from while now < both */
  unsigned char *row;
  size_t rn;
} memo_slot;

struct mtasts_memo {
  memo_slot *slots;
  size_t mask;               /* slots - 1 */
  size_t used, max;
};

mtasts_memo *mtasts_memo_new(size_t rows) {
  mtasts_memo *m;
  size_t slots = 16;
  if (rows == 0) return NULL;
  while (slots < 2 * rows) slots *= 2;
  if (!(m = calloc(1, sizeof *m))) return NULL;
  if (!(m->slots = calloc(slots, sizeof *m->slots))) {
    free(m);
    return NULL;
  }
  m->mask = slots - 1;
  m->max = rows;
  return m;
}

static void memo_clear(mtasts_memo *m) {
  size_t i;
  for (i = 0; i <= m->mask; i++) {
    free(m->slots[i].key);
    free(m->slots[i].row);
  }
  memset(m->slots, 0, (m->mask + 1) * sizeof *m->slots);
  m->used = 0;
}

void mtasts_memo_free(mtasts_memo *m) {
  if (!m) return;
  memo_clear(m);
  free(m->slots);
  free(m);
}

size_t mtasts_memo_rows(const mtasts_memo *m) { return m ? m->used : 0; }

/* The slot of key: its own, or the free one where it would go. */
static memo_slot *memo_slot_of(mtasts_memo *m, const char *key, size_t kn) {
  uint64_t h = 14695981039346656037ull;
  size_t i;
  for (i = 0; i < kn; i++) {
    h ^= (unsigned char)key[i];
    h *= 1099511628211ull;
  }
  for (i = (size_t)h & m->mask;; i = (i + 1) & m->mask) {
    memo_slot *s = &m->slots[i];
    if (!s->key || (s->kn == kn && memcmp(s->key, key, kn) == 0)) return s;
  }
}

/* Keep a copy of the row in b (decoded as row), read at version. Best effort: without
 * memory, there is no copy. */
static void memo_put(mtasts_memo *m, const char *key, size_t kn, uint64_t version,
                     const mtasts_buf *b, const mtasts_row *row) {
  memo_slot *s = memo_slot_of(m, key, kn);
  unsigned char *copy;
  if (!s->key) {
    char *k;
    if (m->used >= m->max) {
      memo_clear(m);
      s = memo_slot_of(m, key, kn);
    }
    if (!(k = malloc(kn))) return;
    memcpy(k, key, kn);
    s->key = k;
    s->kn = kn;
    s->row = NULL;
    s->rn = 0;
    m->used++;
  }
  if (s->rn != b->n) {
    if (!(copy = realloc(s->row, b->n ? b->n : 1))) {
      s->valid_end = 0;      /* stays, never answers: the key is kept for the probe chain */
      return;
    }
    s->row = copy;
    s->rn = b->n;
  }
  memcpy(s->row, b->p, b->n);
  s->version = version;
  s->valid_end = row->valid_end;
  s->use_until = row->last_use + MTASTS_TOUCH_SECONDS;
}

/* --- lookup --- */

typedef struct {
  const char *key;
  int64_t now;
  mtasts_buf *b;
  int found;
  uint64_t version;          /* of the key's bucket, read just before the row */
  int versioned;
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

int mtasts_cache_lookup(mtasts_env *e, mtasts_memo *memo, const char *domain, int64_t now,
                        mtasts_buf *b, mtasts_row *row, int *found, char *key,
                        uint64_t *version, int *versioned, char *err) {
  char why[MTASTS_ERR_MAX];
  lookup_ctx x;
  size_t kn;
  int rc, bad_row;
  *found = 0;
  *versioned = 0;
  if ((rc = normalise(domain, key, err)) != 0) return rc;
  kn = strlen(key);
  x.versioned = mtasts_env_row_version(e, key, kn, &x.version) == 0;
  if (memo && x.versioned) {
    memo_slot *s = memo_slot_of(memo, key, kn);
    if (s->key && s->version == x.version && now < s->valid_end && now < s->use_until &&
        mtasts_buf_reserve(b, s->rn) == 0) {
      memcpy(b->p, s->row, s->rn);
      b->n = s->rn;
      if (mtasts_row_decode(b->p, b->n, row, why) == 0) {   /* it did when it was kept */
        *found = 1;
        *version = x.version;
        *versioned = 1;
        return 0;
      }
    }
  }
  x.key = key; x.now = now; x.b = b; x.found = 0;
  if ((rc = run(e, op_lookup, &x, "lookup", err)) != 0) return rc;
  if (!x.found) return 0;
  bad_row = mtasts_row_decode(b->p, b->n, row, why) != 0;
  if (!bad_row && (row->domain.n != kn || memcmp(row->domain.p, key, kn))) {
    snprintf(why, sizeof why, "row names another domain");
    bad_row = 1;
  }
  if (bad_row) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: %.120s: %.100s; run `mtasts cache rebuild` "
             "or upsert it again", mtasts_env_path(e), key, why);
    return MTASTS_ECORRUPT;
  }
  if (now >= row->valid_end) return 0;
  if (row->last_use + MTASTS_TOUCH_SECONDS <= now) {
    /* touched: the row in b is no longer what the database holds; no copy, no version */
    char ignored[MTASTS_ERR_MAX];
    mtasts_buf tb = { NULL, 0, 0 };
    lookup_ctx t = x;
    t.b = &tb;
    (void)run(e, op_touch, &t, "touch", ignored);
    mtasts_buf_free(&tb);
    row->last_use = now;
  } else if (x.versioned) {
    if (memo) memo_put(memo, key, kn, x.version, b, row);
    *version = x.version;
    *versioned = 1;
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

int mtasts_cache_upsert(mtasts_env *e, const char *domain, const char *record_id,
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
  rc = run(e, op_upsert, &x, "upsert", err);
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

int mtasts_cache_mark_checked(mtasts_env *e, const char *domain, int64_t now, int extend,
                              int *found, mtasts_buf *b, char *err) {
  char key[MTASTS_NAME_MAX + 1];
  mark_ctx x;
  int rc;
  *found = 0;
  if ((rc = normalise(domain, key, err)) != 0) return rc;
  x.key = key; x.now = now; x.extend = extend; x.found = 0; x.b = b;
  rc = run(e, op_mark, &x, "mark_checked", err);
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
  mtasts_env_row_written(x->key, k.size);
  rc = db->del(db, t, &k, 0);
  x->found = rc == 0;
  if (rc == DB_NOTFOUND) rc = 0;
  if (rc != 0) { t->abort(t); return rc; }
  return t->commit(t, 0);
}

int mtasts_cache_delete(mtasts_env *e, const char *domain, int *found, char *err) {
  char key[MTASTS_NAME_MAX + 1];
  del_ctx x;
  int rc;
  *found = 0;
  if ((rc = normalise(domain, key, err)) != 0) return rc;
  x.key = key; x.found = 0;
  rc = run(e, op_delete, &x, "delete", err);
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
    if (((const unsigned char *)k.data)[0] == 0) continue;  /* a lease, not a domain */
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

int mtasts_cache_next(const mtasts_buf *b, size_t *pos, mtasts_cache_rec *r) {
  size_t p = *pos;
  if (p >= b->n) return 0;
  r->key.n = mtasts_get_u16(b->p + p);
  r->key.p = (const char *)b->p + p + 2;
  p += 2 + r->key.n;
  r->rn = mtasts_get_u32(b->p + p);
  r->row = b->p + p + 4;
  *pos = p + 4 + r->rn;
  return 1;
}

/* Every row, decoded or not, into b. */
static int scan_all(mtasts_env *e, mtasts_buf *b, size_t *count, char *err) {
  scan_ctx x = { SCAN_ALL, 0, b, 0 };
  int rc = run(e, op_scan, &x, "list", err);
  *count = x.count;
  return rc;
}

/* Most recently used first; ties by domain, so the order is stable. */
static int by_use(const void *a, const void *b) {
  const mtasts_row *x = a, *y = b;
  size_t n = x->domain.n < y->domain.n ? x->domain.n : y->domain.n;
  int c;
  if (x->last_use != y->last_use) return x->last_use > y->last_use ? -1 : 1;
  if ((c = memcmp(x->domain.p, y->domain.p, n)) != 0) return c;
  return x->domain.n < y->domain.n ? -1 : x->domain.n > y->domain.n;
}

/* A row that decodes and names its own key (key is the domain it was stored under). */
static int row_of_key(const mtasts_cache_rec *r, mtasts_row *row, char *why) {
  return mtasts_row_decode(r->row, r->rn, row, why) == 0 && row->domain.n == r->key.n &&
         memcmp(row->domain.p, r->key.p, r->key.n) == 0;
}

int mtasts_cache_list(mtasts_env *e, mtasts_buf *scan, mtasts_buf *index,
                      const mtasts_row **rows, size_t *n, char *err) {
  char why[MTASTS_ERR_MAX];
  mtasts_cache_rec r;
  mtasts_row *v;
  size_t count, pos = 0, k = 0;
  int rc = scan_all(e, scan, &count, err);
  *rows = NULL;
  *n = 0;
  if (rc != 0) return rc;
  if (mtasts_buf_reserve(index, (count ? count : 1) * sizeof *v) != 0) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: list: out of memory", mtasts_env_path(e));
    return ENOMEM;
  }
  v = (mtasts_row *)(void *)index->p;   /* realloc'd memory is aligned for any type */
  while (mtasts_cache_next(scan, &pos, &r))
    if (row_of_key(&r, &v[k], why)) k++;
  qsort(v, k, sizeof *v, by_use);
  index->n = k * sizeof *v;
  *rows = v;
  *n = k;
  return 0;
}

int mtasts_cache_due(mtasts_env *e, int64_t now, int64_t older_than, mtasts_buf *b,
                     size_t *count, char *err) {
  scan_ctx x = { SCAN_DUE, now - older_than, b, 0 };
  int rc = run(e, op_scan, &x, "due_for_refresh", err);
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
    mtasts_env_row_written(x->key, k.size);
    if ((rc = db->del(db, t, &k, 0)) != 0) goto abort;
    x->deleted = 1;
  }
  return t->commit(t, 0);
abort:
  t->abort(t);
  return rc;
}

int mtasts_cache_prune(mtasts_env *e, int64_t now, int64_t unused_for, size_t *deleted,
                       mtasts_buf *b, char *err) {
  scan_ctx x = { SCAN_UNUSED, now - unused_for, b, 0 };
  mtasts_buf rb = { NULL, 0, 0 };
  mtasts_cache_rec r;
  size_t pos = 0;
  int rc;
  *deleted = 0;
  if ((rc = run(e, op_scan, &x, "prune", err)) != 0) return rc;
  while (rc == 0 && mtasts_cache_next(b, &pos, &r)) {
    char key[MTASTS_NAME_MAX + 1];
    prune_ctx p;
    memcpy(key, r.key.p, r.key.n);   /* op_scan keeps keys of at most MTASTS_NAME_MAX */
    key[r.key.n] = '\0';
    p.key = key; p.cutoff = x.cutoff; p.deleted = 0; p.b = &rb;
    rc = run(e, op_prune_one, &p, "prune", err);
    *deleted += (size_t)p.deleted;
  }
  mtasts_buf_free(&rb);
  return rc;
}

/* --- leases --- */

/* A lease lives in policies.db under a key no domain has (a NUL, "lease:", the name), so that
 * scans, verify and rebuild pass over it; its value is LEASE_FORMAT (never a row format, so
 * a salvage ignores it), the end of the lease (8 bytes, big-endian) and the holder. */
#define LEASE_FORMAT 0x4c
#define LEASE_PREFIX "lease:"

typedef struct {
  const char *name, *holder;
  int64_t now, until;
  int got;
  char held_by[MTASTS_LEASE_HOLDER_MAX + 1];
  int64_t held_until;
  mtasts_buf *b;
} lease_ctx;

static void lease_key(DBT *k, char *buf, const char *name) {
  size_t n = strlen(name);
  buf[0] = '\0';
  memcpy(buf + 1, LEASE_PREFIX, sizeof LEASE_PREFIX - 1);
  memcpy(buf + sizeof LEASE_PREFIX, name, n);
  memset(k, 0, sizeof *k);
  k->data = buf;
  k->size = (u_int32_t)(sizeof LEASE_PREFIX + n);
}

/* Read the lease into x->held_by/held_until: 1 when there is a well-formed one. */
static int lease_get(DB *db, DB_TXN *t, DBT *k, lease_ctx *x, int *rc) {
  DBT d;
  size_t hn;
  memset(&d, 0, sizeof d);
  d.flags = DB_DBT_USERMEM;
  d.data = x->b->p;
  d.ulen = (u_int32_t)x->b->cap;
  *rc = db->get(db, t, k, &d, DB_RMW);
  if (*rc == DB_NOTFOUND || *rc == DB_BUFFER_SMALL) {   /* none, or not a lease of ours */
    *rc = 0;
    return 0;
  }
  if (*rc != 0 || d.size < 9 || x->b->p[0] != LEASE_FORMAT) return 0;
  hn = d.size - 9;
  if (hn > MTASTS_LEASE_HOLDER_MAX) return 0;
  x->held_until = (int64_t)mtasts_get_u64(x->b->p + 1);
  memcpy(x->held_by, x->b->p + 9, hn);
  x->held_by[hn] = '\0';
  return 1;
}

static int op_lease(DB_ENV *env, DB *db, void *vctx) {
  lease_ctx *x = vctx;
  char kb[1 + sizeof LEASE_PREFIX + MTASTS_LEASE_NAME_MAX];
  DBT k, d;
  DB_TXN *t;
  size_t hn = strlen(x->holder);
  int rc, held;
  x->got = 0;
  lease_key(&k, kb, x->name);
  if ((rc = env->txn_begin(env, NULL, &t, 0)) != 0) return rc;
  held = lease_get(db, t, &k, x, &rc);
  if (rc != 0) goto abort;
  if (held && x->held_until > x->now && strcmp(x->held_by, x->holder) != 0)
    return t->commit(t, 0);   /* another holder's, not ended: x->got stays 0 */
  x->b->p[0] = LEASE_FORMAT;
  mtasts_put_u64(x->b->p + 1, (uint64_t)x->until);
  memcpy(x->b->p + 9, x->holder, hn);
  memset(&d, 0, sizeof d);
  d.data = x->b->p;
  d.size = (u_int32_t)(9 + hn);
  if ((rc = db->put(db, t, &k, &d, 0)) != 0) goto abort;
  if ((rc = t->commit(t, 0)) != 0) return rc;
  x->got = 1;
  x->held_until = x->until;
  memcpy(x->held_by, x->holder, hn + 1);
  return 0;
abort:
  t->abort(t);
  return rc;
}

static int op_release(DB_ENV *env, DB *db, void *vctx) {
  lease_ctx *x = vctx;
  char kb[1 + sizeof LEASE_PREFIX + MTASTS_LEASE_NAME_MAX];
  DBT k;
  DB_TXN *t;
  int rc;
  x->got = 0;
  lease_key(&k, kb, x->name);
  if ((rc = env->txn_begin(env, NULL, &t, 0)) != 0) return rc;
  if (lease_get(db, t, &k, x, &rc) && strcmp(x->held_by, x->holder) == 0) {
    if ((rc = db->del(db, t, &k, 0)) != 0) goto abort;
    x->got = 1;
  }
  if (rc != 0) goto abort;
  return t->commit(t, 0);
abort:
  t->abort(t);
  return rc;
}

static int lease_check(const char *name, const char *holder, char *err) {
  size_t n = strlen(name), hn = strlen(holder);
  if (n == 0 || n > MTASTS_LEASE_NAME_MAX) {
    snprintf(err, MTASTS_ERR_MAX, "lease name of %zu bytes (1-%d)", n, MTASTS_LEASE_NAME_MAX);
    return EINVAL;
  }
  if (hn == 0 || hn > MTASTS_LEASE_HOLDER_MAX) {
    snprintf(err, MTASTS_ERR_MAX, "lease holder of %zu bytes (1-%d)", hn,
             MTASTS_LEASE_HOLDER_MAX);
    return EINVAL;
  }
  return 0;
}

int mtasts_cache_lease(mtasts_env *e, const char *name, const char *holder, int64_t now,
                       int64_t until, int *got, char *held_by, int64_t *held_until,
                       mtasts_buf *b, char *err) {
  lease_ctx x;
  int rc;
  *got = 0;
  if ((rc = lease_check(name, holder, err)) != 0) return rc;
  if (mtasts_buf_reserve(b, 9 + MTASTS_LEASE_HOLDER_MAX + 1) != 0) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: lease: out of memory", mtasts_env_path(e));
    return ENOMEM;
  }
  memset(&x, 0, sizeof x);
  x.name = name; x.holder = holder; x.now = now; x.until = until; x.b = b;
  if ((rc = run(e, op_lease, &x, "lease", err)) != 0) return rc;
  *got = x.got;
  memcpy(held_by, x.held_by, sizeof x.held_by);
  *held_until = x.held_until;
  return 0;
}

int mtasts_cache_release(mtasts_env *e, const char *name, const char *holder, int *released,
                         mtasts_buf *b, char *err) {
  lease_ctx x;
  int rc;
  *released = 0;
  if ((rc = lease_check(name, holder, err)) != 0) return rc;
  if (mtasts_buf_reserve(b, 9 + MTASTS_LEASE_HOLDER_MAX + 1) != 0) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: lease: out of memory", mtasts_env_path(e));
    return ENOMEM;
  }
  memset(&x, 0, sizeof x);
  x.name = name; x.holder = holder; x.b = b;
  if ((rc = run(e, op_release, &x, "release", err)) != 0) return rc;
  *released = x.got;
  return 0;
}

/* --- verify --- */

/* Every row decodes and names its own key: 0, or MTASTS_ECORRUPT with a count. */
static int verify_rows(mtasts_env *e, char *err) {
  mtasts_buf b = { NULL, 0, 0 };
  mtasts_cache_rec r;
  mtasts_row row;
  size_t count, pos = 0, bad = 0;
  char why[MTASTS_ERR_MAX], first[MTASTS_NAME_MAX + 1] = "";
  int rc = scan_all(e, &b, &count, err);
  while (rc == 0 && mtasts_cache_next(&b, &pos, &r))
    if (!row_of_key(&r, &row, why) && bad++ == 0) {
      memcpy(first, r.key.p, r.key.n);
      first[r.key.n] = '\0';
    }
  mtasts_buf_free(&b);
  if (rc == 0 && bad) {
    snprintf(err, MTASTS_ERR_MAX, "cache %.160s: %zu of %zu rows are corrupt (the first: "
             "%.100s); run `mtasts cache rebuild`", mtasts_env_path(e), bad, count, first);
    rc = MTASTS_ECORRUPT;
  }
  return rc;
}

int mtasts_cache_verify(mtasts_env *e, char *err) {
  int rc = mtasts_env_verify(e, MTASTS_DB_POLICIES, err);
  return rc != 0 ? rc : verify_rows(e, err);
}

/* --- salvage (for rebuild.c) --- */

typedef struct { const char *key; const mtasts_buf *row; } raw_ctx;

static int op_put_raw(DB_ENV *env, DB *db, void *vctx) {
  raw_ctx *x = vctx;
  DB_TXN *t;
  int rc;
  if ((rc = env->txn_begin(env, NULL, &t, 0)) != 0) return rc;
  if ((rc = put_row(db, t, x->key, x->row)) != 0) { t->abort(t); return rc; }
  return t->commit(t, DB_TXN_WRITE_NOSYNC);
}

int mtasts_cache_put_salvaged(mtasts_env *e, const mtasts_buf *d, mtasts_buf *old,
                              int *outcome, char *err) {
  char key[MTASTS_NAME_MAX + 1], ascii[MTASTS_NAME_MAX + 1], why[MTASTS_ERR_MAX];
  mtasts_row row, cur;
  lookup_ctx x = { key, 0, old, 0, 0, 0 };
  raw_ctx put = { key, d };
  int rc, found;
  *outcome = MTASTS_SALVAGE_IGNORED;
  if (!mtasts_row_format_known(d->p, d->n)) return 0;
  *outcome = MTASTS_SALVAGE_BAD;
  if (mtasts_row_decode(d->p, d->n, &row, why) != 0 || memchr(row.domain.p, 0, row.domain.n))
    return 0;
  memcpy(key, row.domain.p, row.domain.n);
  key[row.domain.n] = '\0';
  if (mtasts_domain_ascii(key, row.domain.n, ascii, why) != 0 || strcmp(ascii, key) != 0)
    return 0;
  if ((rc = run(e, op_lookup, &x, "rebuild", err)) != 0) return rc;
  found = x.found && mtasts_row_decode(old->p, old->n, &cur, why) == 0;
  *outcome = MTASTS_SALVAGE_MERGED;
  if (found && cur.last_update >= row.last_update) return 0;   /* a newer copy won */
  if ((rc = run(e, op_put_raw, &put, "rebuild", err)) != 0) return rc;
  if (!found) *outcome = MTASTS_SALVAGE_ADDED;
  return 0;
}
