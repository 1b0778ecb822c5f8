/* results.c: the TLSRPT result store: counters and plain values in results.db of a cache
 * directory's environment (env.c), a peer of the policy cache. Pure C, no Lua. Every
 * operation runs through mtasts_env_run, so it has the gate, recovery and retry rules; every
 * write is one transaction. */
#include "results.h"

#include <db.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void dbt(DBT *t, const void *p, size_t n) {
  memset(t, 0, sizeof *t);
  t->data = (void *)p;
  t->size = (u_int32_t)n;
}

/* Counts stop at INT64_MAX, the largest a Lua integer holds. */
static uint64_t sat_add(uint64_t x, uint64_t y) {
  if (x > (uint64_t)INT64_MAX) x = (uint64_t)INT64_MAX;
  return y > (uint64_t)INT64_MAX - x ? (uint64_t)INT64_MAX : x + y;
}

/* --- apply --- */

typedef struct {
  const mtasts_delta *d;
  size_t n;
  const mtasts_mark *mark;   /* written in this transaction too, or NULL */
  int last;                  /* the batch's last transaction: its commit syncs the log */
} apply_ctx;

/* One cursor walks the sorted keys: a counter that exists is read and rewritten in place
 * (DB_CURRENT: one search of the tree per key, not two). */
static int op_apply(DB_ENV *env, DB *db, void *vctx) {
  apply_ctx *x = vctx;
  DB_TXN *t;
  DBC *c = NULL;
  size_t i;
  int rc = 0, r2;
  if ((rc = env->txn_begin(env, NULL, &t, 0)) != 0) return rc;
  if ((rc = db->cursor(db, t, &c, 0)) != 0) {
    t->abort(t);
    return rc;
  }
  for (i = 0; i < x->n; i++) {
    unsigned char cur[16], val[16];
    uint64_t a = 0, b = 0;
    u_int32_t how = DB_CURRENT;
    DBT k, v;
    dbt(&k, x->d[i].key, x->d[i].kn);
    memset(&v, 0, sizeof v);
    v.flags = DB_DBT_USERMEM;
    v.data = cur;
    v.ulen = sizeof cur;
    rc = c->get(c, &k, &v, DB_SET | DB_RMW);
    if (rc == 0 && v.size == 16) {
      a = mtasts_get_u64(cur);
      b = mtasts_get_u64(cur + 8);
    } else if (rc == DB_BUFFER_SMALL || (rc == 0 && v.size != 16)) {
      rc = 0;   /* not a counter record (cannot happen with our keys): start it afresh */
      how = DB_KEYFIRST;   /* replaces it: no duplicates in this tree */
    } else if (rc == DB_NOTFOUND) {
      rc = 0;
      how = DB_KEYFIRST;
    } else {
      break;
    }
    mtasts_put_u64(val, sat_add(a, x->d[i].a));
    mtasts_put_u64(val + 8, sat_add(b, x->d[i].b));
    dbt(&v, val, sizeof val);
    if ((rc = c->put(c, &k, &v, how)) != 0) break;
  }
  if ((r2 = c->close(c)) != 0 && rc == 0) rc = r2;
  if (rc == 0 && x->mark) {
    DBT k, v;
    dbt(&k, x->mark->key, x->mark->kn);
    dbt(&v, x->mark->value, x->mark->vn);
    rc = db->put(db, t, &k, &v, 0);
  }
  if (rc != 0) {
    t->abort(t);
    return rc;
  }
  /* one sync per batch: the last commit's sync writes the log up to its end, so it makes
   * the earlier transactions of the batch durable too (a failure before it: see below) */
  return t->commit(t, x->last ? 0 : DB_TXN_WRITE_NOSYNC);
}

static int op_log_flush(DB_ENV *env, DB *db, void *ctx) {
  (void)db;
  (void)ctx;
  return env->log_flush(env, NULL);
}

/* Keys per transaction: each holds a write lock on its page until the commit, and the
 * environment has locks for 3,000 objects (env.c), so a large batch is split. */
#define APPLY_CHUNK 500

/* keys in btree order: a batch then walks the tree's pages in one direction */
static int delta_cmp(const void *x, const void *y) {
  const mtasts_delta *a = x, *b = y;
  size_t n = a->kn < b->kn ? a->kn : b->kn;
  int c = memcmp(a->key, b->key, n);
  return c ? c : (a->kn > b->kn) - (a->kn < b->kn);
}

int mtasts_results_apply(mtasts_env *e, mtasts_delta *d, size_t n, const mtasts_mark *mark,
                         size_t *done, char *err) {
  size_t off = 0;
  int rc = 0;
  err[0] = '\0';
  *done = 0;
  if (n > 1) qsort(d, n, sizeof *d, delta_cmp);
  do {
    size_t len = n - off < APPLY_CHUNK ? n - off : APPLY_CHUNK;
    /* the mark goes with the last transaction: it is durable only when every update is */
    apply_ctx x = {d + off, len, off + len == n ? mark : NULL, off + len == n};
    if (len == 0 && !mark) break;
    /* the checkpoint after the last transaction only: one after every 256 KiB of log
     * wrote the cache's dirty pages out (and synced them) a dozen times in a large batch */
    rc = mtasts_env_run(e, MTASTS_DB_RESULTS, x.last, op_apply, &x, "results: add", err);
    if (rc == 0) *done = off += len;
  } while (rc == 0 && off < n);
  if (rc != 0 && *done > 0) {
    /* the transactions that went through were committed without a sync: make them durable
     * before the caller drops them from its batch (a failure here leaves them in the log
     * written to the system, which a killed process does not lose) */
    char ferr[MTASTS_ERR_MAX];
    (void)mtasts_env_run(e, MTASTS_DB_RESULTS, 0, op_log_flush, NULL, "results: sync", ferr);
  }
  return rc;
}

/* --- the batch --- */

/* Eight bytes a step (keys are 100-200 bytes; a byte-wise hash was a tenth of an add),
 * each word mixed in with a multiply and a shift, from a seed of the batch's own: keys hold
 * policy texts and host names from remote sites, which should not be able to choose keys
 * that collide in every process. */
static uint64_t key_hash(uint64_t seed, const char *k, size_t n) {
  uint64_t h = seed ^ n, w;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    memcpy(&w, k + i, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  w = 0;
  memcpy(&w, k + i, n - i);
  h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 29);
}

/* the slot of key: where it is, or the empty one where it goes */
static size_t batch_find(const mtasts_batch *b, const char *key, size_t kn, uint64_t h) {
  size_t mask = b->nslot - 1, i = (size_t)h & mask;
  for (;; i = (i + 1) & mask) {
    uint32_t s = b->slot[i];
    const mtasts_batch_entry *x;
    if (s == 0) return i;
    x = &b->e[s - 1];
    if (x->hash == h && x->kn == kn && memcmp(b->keys.p + x->off, key, kn) == 0) return i;
  }
}

static void batch_reindex(mtasts_batch *b) {
  size_t j;
  memset(b->slot, 0, b->nslot * sizeof *b->slot);
  for (j = 0; j < b->n; j++) {
    size_t mask = b->nslot - 1, i = (size_t)b->e[j].hash & mask;
    while (b->slot[i]) i = (i + 1) & mask;
    b->slot[i] = (uint32_t)(j + 1);
  }
}

int mtasts_batch_reserve(mtasts_batch *b, size_t entries, size_t bytes) {
  size_t need = b->n + entries;
  if (need >= UINT32_MAX / 4 || bytes > SIZE_MAX / 2) return ENOMEM;
  if (mtasts_buf_reserve(&b->keys, b->keys.n + bytes) != 0) return ENOMEM;
  if (need > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    mtasts_batch_entry *e;
    while (cap < need) cap *= 2;
    if (!(e = realloc(b->e, cap * sizeof *e))) return ENOMEM;
    b->e = e;
    b->cap = cap;
  }
  if (b->seed == 0) {   /* the first reserve: the seed, from the clock and an address */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    b->seed = ((uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull) ^ (uint64_t)ts.tv_sec ^
              (uint64_t)(uintptr_t)b ^ 0x2545f4914f6cdd1dull;
    if (b->seed == 0) b->seed = 1;
  }
  if (need * 2 > b->nslot) {
    size_t nslot = b->nslot ? b->nslot : 128;
    uint32_t *slot;
    while (need * 2 > nslot) nslot *= 2;
    if (!(slot = malloc(nslot * sizeof *slot))) return ENOMEM;
    free(b->slot);
    b->slot = slot;
    b->nslot = nslot;
    batch_reindex(b);
  }
  return 0;
}

void mtasts_batch_bump(mtasts_batch *b, const char *key, size_t kn, uint64_t a, uint64_t bb) {
  uint64_t h = key_hash(b->seed, key, kn);
  size_t i = batch_find(b, key, kn, h);
  mtasts_batch_entry *x;
  if (b->slot[i]) {
    x = &b->e[b->slot[i] - 1];
    x->a = sat_add(x->a, a);
    x->b = sat_add(x->b, bb);
    return;
  }
  x = &b->e[b->n];
  x->off = b->keys.n;
  x->kn = kn;
  x->hash = h;
  x->a = sat_add(0, a);
  x->b = sat_add(0, bb);
  memcpy(b->keys.p + b->keys.n, key, kn);
  b->keys.n += kn;
  b->slot[i] = (uint32_t)++b->n;
}

void mtasts_batch_deltas(const mtasts_batch *b, mtasts_delta *d) {
  size_t j;
  for (j = 0; j < b->n; j++) {
    d[j].key = (const char *)b->keys.p + b->e[j].off;
    d[j].kn = b->e[j].kn;
    d[j].a = b->e[j].a;
    d[j].b = b->e[j].b;
  }
}

void mtasts_batch_drop(mtasts_batch *b, const mtasts_delta *d, size_t n) {
  size_t j, k = 0;
  if (n == 0 || b->n == 0) return;
  for (j = 0; j < n; j++) {   /* marked by a length no key has; its bytes stay until clear */
    size_t i = batch_find(b, d[j].key, d[j].kn, key_hash(b->seed, d[j].key, d[j].kn));
    if (b->slot[i]) b->e[b->slot[i] - 1].kn = SIZE_MAX;
  }
  for (j = 0; j < b->n; j++)
    if (b->e[j].kn != SIZE_MAX) b->e[k++] = b->e[j];
  b->n = k;
  batch_reindex(b);
}

void mtasts_batch_clear(mtasts_batch *b) {
  b->n = 0;
  b->keys.n = 0;
  if (b->slot) memset(b->slot, 0, b->nslot * sizeof *b->slot);
}

void mtasts_batch_free(mtasts_batch *b) {
  mtasts_buf_free(&b->keys);
  free(b->e);
  free(b->slot);
  memset(b, 0, sizeof *b);   /* the seed too: made again at the next reserve */
}

/* --- scans --- */

typedef struct {
  const char *prefix, *after;
  size_t pn, an, limit, count;
  int distinct;
  mtasts_buf *b;
} scan_ctx;

static int op_scan(DB_ENV *env, DB *db, void *vctx) {
  scan_ctx *x = vctx;
  DBC *cur;
  DBT k, d;
  char *seek = NULL;
  int rc, r2;
  u_int32_t flag = DB_SET_RANGE;
  (void)env;
  x->b->n = 0;
  x->count = 0;
  if ((rc = db->cursor(db, NULL, &cur, DB_READ_COMMITTED)) != 0) return rc;
  memset(&k, 0, sizeof k);
  memset(&d, 0, sizeof d);
  k.flags = DB_DBT_REALLOC;
  d.flags = DB_DBT_REALLOC;
  /* the first key to look at: the prefix, or just past `after` */
  {
    const char *from = x->after ? x->after : x->prefix;
    size_t fn = x->after ? x->an : x->pn;
    if (!(k.data = malloc(fn + 1))) { cur->close(cur); return ENOMEM; }
    memcpy(k.data, from, fn);
    k.size = (u_int32_t)fn;
    if (x->after) ((char *)k.data)[k.size++] = '\0';  /* the smallest key after `after` */
  }
  for (;;) {
    rc = cur->get(cur, &k, &d, flag);
    flag = DB_NEXT;
    if (rc != 0) break;
    if (k.size < x->pn || memcmp(k.data, x->prefix, x->pn) != 0) break;
    if (!x->distinct) {
      if ((rc = mtasts_buf_add_u32_bytes(x->b, k.data, k.size)) != 0 ||
          (rc = mtasts_buf_add_u32_bytes(x->b, d.data, d.size)) != 0)
        break;
      if (++x->count == x->limit) break;
      continue;
    }
    {
      const char *rest = (const char *)k.data + x->pn, *nul;
      size_t rn = k.size - x->pn, cn;
      nul = memchr(rest, '\0', rn);
      cn = nul ? (size_t)(nul - rest) : rn;
      if ((rc = mtasts_buf_add_u32_bytes(x->b, rest, cn)) != 0) break;
      x->count++;
      /* jump past every key with this component: prefix, component, "\x01" */
      free(seek);
      if (!(seek = malloc(x->pn + cn + 1))) { rc = ENOMEM; break; }
      memcpy(seek, k.data, x->pn + cn);
      seek[x->pn + cn] = '\x01';
      free(k.data);
      k.data = seek;
      k.size = (u_int32_t)(x->pn + cn + 1);
      seek = NULL;
      flag = DB_SET_RANGE;
    }
  }
  if (rc == DB_NOTFOUND) rc = 0;
  if ((r2 = cur->close(cur)) != 0 && rc == 0) rc = r2;
  free(k.data);
  free(d.data);
  free(seek);
  return rc;
}

int mtasts_results_scan(mtasts_env *e, const char *prefix, size_t pn, const char *after,
                        size_t an, size_t limit, mtasts_buf *b, size_t *count, char *err) {
  scan_ctx x = {prefix, after, pn, an, limit, 0, 0, b};
  int rc = mtasts_env_run(e, MTASTS_DB_RESULTS, 0, op_scan, &x, "results: scan", err);
  *count = x.count;
  return rc;
}

int mtasts_results_next(const mtasts_buf *b, size_t *pos, mtasts_span *s) {
  size_t p = *pos;
  if (p + 4 > b->n) return 0;
  s->n = mtasts_get_u32(b->p + p);
  s->p = (const char *)b->p + p + 4;
  *pos = p + 4 + s->n;
  return 1;
}

int mtasts_results_distinct(mtasts_env *e, const char *prefix, size_t pn, mtasts_buf *b,
                            size_t *count, char *err) {
  scan_ctx x = {prefix, NULL, pn, 0, 0, 0, 1, b};
  int rc = mtasts_env_run(e, MTASTS_DB_RESULTS, 0, op_scan, &x, "results: scan", err);
  *count = x.count;
  return rc;
}

/* --- plain values --- */

typedef struct {
  const char *key, *expect, *value;
  size_t kn, en, vn;
  mtasts_buf *b;
  int found;
} value_ctx;

static int read_value(DB *db, DB_TXN *t, value_ctx *x, u_int32_t flags) {
  DBT k, d;
  int rc;
  dbt(&k, x->key, x->kn);
  for (;;) {
    memset(&d, 0, sizeof d);
    d.flags = DB_DBT_USERMEM;
    d.data = x->b->p;
    d.ulen = (u_int32_t)x->b->cap;
    rc = db->get(db, t, &k, &d, flags);
    if (rc != DB_BUFFER_SMALL) break;
    if (mtasts_buf_reserve(x->b, d.size) != 0) return ENOMEM;
  }
  x->found = rc == 0;
  x->b->n = rc == 0 ? d.size : 0;
  return rc == DB_NOTFOUND ? 0 : rc;
}

static int op_get(DB_ENV *env, DB *db, void *vctx) {
  (void)env;
  return read_value(db, NULL, vctx, DB_READ_COMMITTED);
}

int mtasts_results_get(mtasts_env *e, const char *key, size_t kn, mtasts_buf *b,
                       int *found, char *err) {
  value_ctx x = {key, NULL, NULL, kn, 0, 0, b, 0};
  int rc = mtasts_env_run(e, MTASTS_DB_RESULTS, 0, op_get, &x, "results: get", err);
  *found = x.found;
  return rc;
}

static int op_cas(DB_ENV *env, DB *db, void *vctx) {
  value_ctx *x = vctx;
  DB_TXN *t;
  DBT k, d;
  int rc, same;
  if ((rc = env->txn_begin(env, NULL, &t, 0)) != 0) return rc;
  if ((rc = read_value(db, t, x, DB_RMW)) != 0) goto abort;
  same = x->expect ? x->found && x->b->n == x->en && memcmp(x->b->p, x->expect, x->en) == 0
                   : !x->found;
  x->found = 0;   /* reused as "swapped" */
  if (!same) goto abort;
  dbt(&k, x->key, x->kn);
  if (x->value) {
    dbt(&d, x->value, x->vn);
    rc = db->put(db, t, &k, &d, 0);
  } else if (x->expect) {
    rc = db->del(db, t, &k, 0);
  }
  if (rc != 0) goto abort;
  if ((rc = t->commit(t, 0)) == 0) x->found = 1;
  return rc;
abort:
  t->abort(t);
  return rc;
}

int mtasts_results_cas(mtasts_env *e, const char *key, size_t kn, const char *expect,
                       size_t en, const char *value, size_t vn, int *swapped, char *err) {
  mtasts_buf scratch = {0};
  value_ctx x = {key, expect, value, kn, en, vn, &scratch, 0};
  int rc = mtasts_env_run(e, MTASTS_DB_RESULTS, 1, op_cas, &x, "results: put", err);
  *swapped = rc == 0 && x.found;
  mtasts_buf_free(&scratch);
  return rc;
}

/* --- delete a range --- */

typedef struct { const char *lo, *hi; size_t ln, hn, deleted; int more; } range_ctx;

static int op_delete_some(DB_ENV *env, DB *db, void *vctx) {
  range_ctx *x = vctx;
  DB_TXN *t;
  DBC *cur;
  DBT k, d;
  size_t n = 0;
  int rc, r2;
  x->more = 0;
  if ((rc = env->txn_begin(env, NULL, &t, 0)) != 0) return rc;
  if ((rc = db->cursor(db, t, &cur, 0)) != 0) { t->abort(t); return rc; }
  memset(&k, 0, sizeof k);
  memset(&d, 0, sizeof d);
  k.flags = DB_DBT_REALLOC;
  d.flags = DB_DBT_REALLOC | DB_DBT_PARTIAL;   /* keys only */
  if (!(k.data = malloc(x->ln ? x->ln : 1))) { rc = ENOMEM; goto done; }
  memcpy(k.data, x->lo, x->ln);
  k.size = (u_int32_t)x->ln;
  for (rc = cur->get(cur, &k, &d, DB_SET_RANGE | DB_RMW); rc == 0;
       rc = cur->get(cur, &k, &d, DB_NEXT | DB_RMW)) {
    size_t m = k.size < x->hn ? k.size : x->hn;
    int cmp = memcmp(k.data, x->hi, m);
    if (cmp > 0 || (cmp == 0 && k.size >= x->hn)) break;
    if ((rc = cur->del(cur, 0)) != 0) break;
    if (++n == 1000) { x->more = 1; break; }
  }
  if (rc == DB_NOTFOUND) rc = 0;
done:
  if ((r2 = cur->close(cur)) != 0 && rc == 0) rc = r2;
  free(k.data);
  free(d.data);
  if (rc != 0) { t->abort(t); return rc; }
  if ((rc = t->commit(t, 0)) == 0) x->deleted += n;
  return rc;
}

int mtasts_results_delete_range(mtasts_env *e, const char *lo, size_t ln, const char *hi,
                                size_t hn, size_t *deleted, char *err) {
  range_ctx x = {lo, hi, ln, hn, 0, 0};
  int rc;
  do rc = mtasts_env_run(e, MTASTS_DB_RESULTS, 1, op_delete_some, &x, "results: delete", err);
  while (rc == 0 && x.more);
  *deleted = x.deleted;
  return rc;
}

/* --- salvage (for rebuild.c) --- */

/* The records lua/mtasts/tlsrpt/store.lua writes (docs/tlsrpt.md): a counter under
 * "R" yyyy-mm-dd NUL ..., a delivery state (a JSON object) under "Q" yyyy-mm-dd NUL .... What
 * the rest of a key means is the store's business; these are the shapes only. */
int mtasts_results_is_key(const unsigned char *k, size_t n) {
  size_t i;
  if (n >= 2 && n <= MTASTS_RESULTS_KEY_MAX && k[0] == 'S') return 1;   /* a mark */
  if (n < 13 || n > MTASTS_RESULTS_KEY_MAX || (k[0] != 'R' && k[0] != 'Q') || k[11] != 0)
    return 0;
  for (i = 1; i <= 10; i++)
    if (i == 5 || i == 8 ? k[i] != '-' : (k[i] < '0' || k[i] > '9')) return 0;
  return 1;
}

int mtasts_results_is_value(const unsigned char *k, const unsigned char *v, size_t vn) {
  if (k[0] == 'R') return vn == 16;
  if (k[0] == 'S') return vn <= MTASTS_RESULTS_VALUE_MAX;
  return vn >= 2 && vn <= MTASTS_RESULTS_VALUE_MAX && v[0] == '{' && v[vn - 1] == '}';
}

typedef struct { const unsigned char *k, *v; size_t kn, vn; int existed; } pair_ctx;

static int op_put_pair(DB_ENV *env, DB *db, void *vctx) {
  pair_ctx *x = vctx;
  DB_TXN *t;
  DBT k, v;
  int rc;
  dbt(&k, x->k, x->kn);
  dbt(&v, x->v, x->vn);
  if ((rc = env->txn_begin(env, NULL, &t, 0)) != 0) return rc;
  /* the plain read comes first and wins: the salvager's copy of a key only fills a gap */
  if ((rc = db->put(db, t, &k, &v, DB_NOOVERWRITE)) != 0) {
    t->abort(t);
    if (rc == DB_KEYEXIST) x->existed = 1;
    return rc == DB_KEYEXIST ? 0 : rc;
  }
  return t->commit(t, DB_TXN_WRITE_NOSYNC);
}

int mtasts_results_put_salvaged(mtasts_env *e, const unsigned char *k, size_t kn,
                                const unsigned char *v, size_t vn, int *added, char *err) {
  pair_ctx x = {k, v, kn, vn, 0};
  int rc = mtasts_env_run(e, MTASTS_DB_RESULTS, 1, op_put_pair, &x, "rebuild", err);
  *added = rc == 0 && !x.existed;
  return rc;
}
