/* lua_results.c: the mtasts.results class (results.c) and the codecs (codec.c). Translate,
 * and do nothing else. Contract: docs/tlsrpt.md; errors: docs/errors.md; lifecycle:
 * lua_util.h. */
#include "lua_util.h"
#include "results.h"

#include <string.h>

#define RESULTS_MT "mtasts.results"

typedef struct {
  mtasts_env *e;          /* first: NULL once closed (lua_util.h) */
  mtasts_buf buf;         /* what scans and gets copy out; owned here, freed in release */
  mtasts_batch batch;     /* the counters of r:add not yet committed; owned here */
  mtasts_buf kbuf, kidx;  /* scratch of r:add (the keys of one result), of r:commit (deltas) */
} lresults;

static int results_release(void *p, char *err) {
  lresults *u = p;
  int rc = 0;
  if (u->e) rc = mtasts_env_close(u->e, err);
  u->e = NULL;
  mtasts_buf_free(&u->buf);
  mtasts_batch_free(&u->batch);   /* what was not committed is dropped, never written */
  mtasts_buf_free(&u->kbuf);
  mtasts_buf_free(&u->kidx);
  return rc;
}

/* __tostring shows the directory instead of the address */
static const char *results_label(const void *p) {
  return mtasts_env_path(((const lresults *)p)->e);
}

static const mtasts_lua_class results_class = { RESULTS_MT, results_release, results_label };

static lresults *results_check(lua_State *L, int idx) {
  return mtasts_lua_class_check(L, idx, &results_class);
}

static const char *check_key(lua_State *L, int idx, size_t *n) {
  const char *s = luaL_checklstring(L, idx, n);
  luaL_argcheck(L, *n > 0 && *n <= MTASTS_RESULTS_KEY_MAX, idx, "key length out of range");
  return s;
}

/* results_open(path [, mode]) -> results | fail */
static int results_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  unsigned mode = mtasts_lua_opt_filemode(L, 2);
  char err[MTASTS_ERR_MAX];
  lresults *u = mtasts_lua_class_new(L, &results_class, sizeof *u);
  int rc;
  if ((rc = mtasts_env_open(path, mode, &u->e, err)) != 0) return mtasts_lua_fail_rc(L, rc, err);
  return 1;
}

/* An optional mark at arguments idx (its key: "S" and a name) and idx + 1 (its value) into
 * *m: m, or NULL when there is none. Raises on a bad one. */
static mtasts_mark *opt_mark(lua_State *L, int idx, mtasts_mark *m) {
  if (lua_isnoneornil(L, idx)) return NULL;
  m->key = check_key(L, idx, &m->kn);
  m->value = luaL_checklstring(L, idx + 1, &m->vn);
  luaL_argcheck(L, m->key[0] == 'S' && m->kn >= 2, idx, "a mark's key starts with S");
  luaL_argcheck(L, m->vn <= MTASTS_RESULTS_VALUE_MAX, idx + 1, "value too long");
  return m;
}

/* r:apply({key, a, b, key, a, b, ...} [, mark_key, mark_value]) -> true | fail, committed:
 * transactions of at most 500 keys, the mark (a key starting with "S") in the last one.
 * After a failure, the keys whose updates were committed before it come as a 4th value
 * (an array), so that the caller can keep only the rest for a retry. */
static int results_apply(lua_State *L) {
  lresults *u = results_check(L, 1);
  lua_Integer i, n;
  mtasts_delta *d = NULL;
  mtasts_mark mark, *mp;
  size_t done;
  char err[MTASTS_ERR_MAX];
  int rc;
  luaL_checktype(L, 2, LUA_TTABLE);
  mp = opt_mark(L, 3, &mark);
  /* raw reads only: a value from an __index metamethod would not be anchored by the table */
  n = (lua_Integer)lua_rawlen(L, 2);
  luaL_argcheck(L, n % 3 == 0, 2, "expected key, a, b triples");
  if (n == 0 && !mp) { lua_pushboolean(L, 1); return 1; }
  if (n > 0) d = lua_newuserdatauv(L, (size_t)(n / 3) * sizeof *d, 0);   /* freed by the GC */
  for (i = 0; i < n / 3; i++) {
    lua_Integer a, b;
    lua_rawgeti(L, 2, i * 3 + 1);
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "apply: key %d is not a string", (int)i + 1);
    d[i].key = lua_tolstring(L, -1, &d[i].kn);   /* anchored by the table (a raw read) */
    lua_pop(L, 1);
    if (d[i].kn == 0 || d[i].kn > MTASTS_RESULTS_KEY_MAX)
      luaL_error(L, "apply: key %d length out of range", (int)i + 1);
    lua_rawgeti(L, 2, i * 3 + 2);
    lua_rawgeti(L, 2, i * 3 + 3);
    a = luaL_checkinteger(L, -2);
    b = luaL_checkinteger(L, -1);
    lua_pop(L, 2);
    if (a < 0 || b < 0) luaL_error(L, "apply: counts must not be negative");
    d[i].a = (uint64_t)a;
    d[i].b = (uint64_t)b;
  }
  if ((rc = mtasts_results_apply(u->e, d, (size_t)(n / 3), mp, &done, err)) != 0) {
    size_t j;
    mtasts_lua_fail_rc(L, rc, err);
    lua_createtable(L, (int)(done > 100000 ? 100000 : done), 0);
    for (j = 0; j < done; j++) {
      lua_pushlstring(L, d[j].key, d[j].kn);
      lua_rawseti(L, -2, (lua_Integer)j + 1);
    }
    return 4;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* --- the batch: r:add, r:commit, r:pending ---
 * The counter keys of one result, made here so that recording one costs no Lua string and
 * no allocation once its keys are in the batch. The layout is the store's (docs/tlsrpt.md,
 * "Key layout"; lua/mtasts/tlsrpt/store.lua decodes it): a prefix
 *   "R" day NUL kind report-domain NUL recipient-domain NUL flag
 * then "S" policy, "D" policy NUL detail for each failure, "P" record; policy is
 *   type \1 esc(policy-domain) \1 esc(string) \2 ... \1 esc(mx) \2 ...
 * and a detail is the fields of DETAIL_FIELDS below, each "" when nil or "=" esc(value),
 * joined with \1. Domains are lower-cased (ASCII, as string.lower in the C locale) with one
 * trailing dot dropped. */

/* the failure detail fields in key order: tlsrpt.DETAIL_FIELDS (lua/mtasts/tlsrpt/format.lua),
 * which the store checks against this list when it loads; part of the file format */
static const char *const DETAIL_FIELDS[] = {
  "result_type", "sending_mta_ip", "receiving_mx_hostname", "receiving_mx_helo",
  "receiving_ip", "additional_information", "failure_reason_code", NULL};

typedef struct { size_t off, kn; uint64_t a, b; } key_ref;

static unsigned char *kb_room(lua_State *L, mtasts_buf *b, size_t n) {
  if (n > SIZE_MAX - b->n || mtasts_buf_reserve(b, b->n + n) != 0)
    luaL_error(L, "not enough memory");
  return b->p + b->n;
}

static void kb_add(lua_State *L, mtasts_buf *b, const void *p, size_t n) {
  if (n) memcpy(kb_room(L, b, n), p, n);
  b->n += n;
}

static void kb_byte(lua_State *L, mtasts_buf *b, int c) {
  *kb_room(L, b, 1) = (unsigned char)c;
  b->n++;
}

/* bytes [off, off + n) of b appended to b itself */
static void kb_again(lua_State *L, mtasts_buf *b, size_t off, size_t n) {
  kb_room(L, b, n);
  memcpy(b->p + b->n, b->p + off, n);
  b->n += n;
}

/* a domain as the store keys it: lower-case, one trailing dot dropped; escaped or not */
static void kb_domain(lua_State *L, mtasts_buf *b, const char *s, size_t n, int escape) {
  size_t i;
  unsigned char *o;
  if (n > 0 && s[n - 1] == '.') n--;
  o = kb_room(L, b, 2 * n);
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
    if (escape && c <= 3) {
      *o++ = '\3';
      c = (unsigned char)(c + 64);
    }
    *o++ = c;
  }
  b->n = (size_t)(o - b->p);
}

/* tostring(value at idx), escaped as blob_escape does (below) */
static void kb_escaped(lua_State *L, mtasts_buf *b, int idx) {
  size_t n, i;
  const char *v;
  unsigned char *o;
  if (lua_type(L, idx) == LUA_TSTRING) {   /* most values: tostring is the string itself */
    lua_pushvalue(L, idx);
    v = lua_tolstring(L, -1, &n);
  } else {
    v = luaL_tolstring(L, idx, &n);        /* pushed: tostring's rules, __tostring too */
  }
  o = kb_room(L, b, 2 * n);
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)v[i];
    if (c <= 3) {
      *o++ = '\3';
      c = (unsigned char)(c + 64);
    }
    *o++ = c;
  }
  b->n = (size_t)(o - b->p);
  lua_pop(L, 1);
}

/* the items of the list in field `name` of the table at idx, escaped, joined with \2 */
static void kb_list(lua_State *L, mtasts_buf *b, int idx, const char *name) {
  lua_Integer i, n;
  int t = lua_getfield(L, idx, name);
  if (t != LUA_TNIL) {
    if (t != LUA_TTABLE) luaL_error(L, "bad argument #1 to 'add' (policy.%s must be a list)", name);
    n = luaL_len(L, -1);
    for (i = 1; i <= n; i++) {
      if (i > 1) kb_byte(L, b, '\2');
      lua_geti(L, -1, i);
      kb_escaped(L, b, lua_gettop(L));
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

static void kb_ref(lua_State *L, mtasts_buf *idx, size_t off, size_t kn, uint64_t a, uint64_t b) {
  key_ref r = {off, kn, a, b};
  kb_add(L, idx, &r, sizeof r);
}

static uint64_t sat_sum(uint64_t x, uint64_t y) {
  return y > (uint64_t)INT64_MAX - x ? (uint64_t)INT64_MAX : x + y;
}

/* a count of the result at idx: nil is `dflt`; otherwise a non-negative integer, or -1 */
static lua_Integer add_count(lua_State *L, int idx, lua_Integer dflt) {
  lua_Integer v;
  if (lua_isnil(L, idx)) return dflt;
  if (!lua_isinteger(L, idx)) return -1;
  v = lua_tointeger(L, idx);
  return v < 0 ? -1 : v;
}

/* what the store raises for (store:add's argument number and reason): nil, argn, reason */
static int add_refused(lua_State *L, int argn, const char *why) {
  lua_pushnil(L);
  lua_pushinteger(L, argn);
  lua_pushstring(L, why);
  return 3;
}

/* r:add(day, kind, report_domain|nil, recipient_domain|nil, flag, policy, success|nil,
 *       failure|nil [, failures [, record]]) -> counters in the batch | nil, argn, reason:
 * the counters of one result into the batch. The store has checked the types of the
 * arguments and of policy.type and policy.domain (docs/tlsrpt.md); what is checked here (a
 * NUL in a domain, the counts, each failure's result_type) is refused with the argument
 * number and reason store:add raises with. Every key is made, and room for it in the
 * batch, before any counter changes: a refused result leaves nothing behind. */
static int results_add(lua_State *L) {
  lresults *u = results_check(L, 1);
  size_t dn, kn, rn = 0, cn = 0, pn, fn, plen, slen, j, nref, bytes = 0;
  const char *day = luaL_checklstring(L, 2, &dn);
  const char *kind = luaL_checklstring(L, 3, &kn);
  const char *rep = luaL_optlstring(L, 4, NULL, &rn);
  const char *rdom = luaL_optlstring(L, 5, NULL, &cn);
  const char *flag = luaL_checklstring(L, 6, &fn);
  const char *pdomain;
  lua_Integer success = add_count(L, 8, 0), failure = add_count(L, 9, 0);
  mtasts_buf *b = &u->kbuf, *ix = &u->kidx;
  const key_ref *refs;
  luaL_checktype(L, 7, LUA_TTABLE);
  if (success < 0) return add_refused(L, 1, "summary.success must be a non-negative integer");
  if (failure < 0) return add_refused(L, 1, "summary.failure must be a non-negative integer");
  if (!lua_isnoneornil(L, 10) && !lua_istable(L, 10))
    return add_refused(L, 1, "failures must be a list");
  lua_settop(L, 11);
  b->n = ix->n = 0;
  lua_getfield(L, 7, "domain");
  pdomain = lua_tolstring(L, -1, &pn);    /* stays on the stack until the end */
  if (!pdomain || pn == 0 || memchr(pdomain, 0, pn))
    return add_refused(L, 1, "policy.domain must be a domain name");
  if (rep && (rn == 0 || memchr(rep, 0, rn)))
    return add_refused(L, 2, "domain must be a domain name");
  if (rdom && memchr(rdom, 0, cn)) return add_refused(L, 2, "recipient_domain must be a string");
  if (!rep) rep = pdomain, rn = pn;
  if (!rdom) rdom = rep, cn = rn;
  /* the prefix */
  kb_byte(L, b, 'R');
  kb_add(L, b, day, dn);
  kb_byte(L, b, 0);
  kb_add(L, b, kind, kn);
  kb_domain(L, b, rep, rn, 0);
  kb_byte(L, b, 0);
  kb_domain(L, b, rdom, cn, 0);
  kb_byte(L, b, 0);
  kb_add(L, b, flag, fn);
  plen = b->n;
  /* the summary: "S" policy */
  kb_byte(L, b, 'S');
  lua_getfield(L, 7, "type");
  kb_escaped(L, b, lua_gettop(L));   /* a policy type has no byte to escape */
  lua_pop(L, 1);
  kb_byte(L, b, '\1');
  kb_domain(L, b, pdomain, pn, 1);
  kb_byte(L, b, '\1');
  kb_list(L, b, 7, "strings");
  kb_byte(L, b, '\1');
  kb_list(L, b, 7, "mx_host");
  slen = b->n;
  kb_ref(L, ix, 0, slen, (uint64_t)success, (uint64_t)failure);
  /* each failure detail: "D" policy NUL detail */
  if (lua_istable(L, 10)) {
    lua_Integer i;
    for (i = 1; lua_geti(L, 10, i) != LUA_TNIL; i++) {
      size_t off = b->n;
      lua_Integer count;
      int f;
      if (!lua_istable(L, -1) || lua_getfield(L, -1, "result_type") != LUA_TSTRING)
        return add_refused(L, 1, "each failure needs a result_type");
      lua_pop(L, 1);
      if (lua_getfield(L, -1, "count") == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        lua_pushnil(L);                 /* count or 1: false is 1 too */
      }
      count = add_count(L, -1, 1);
      lua_pop(L, 1);
      if (count < 0) return add_refused(L, 1, "count must be a non-negative integer");
      kb_again(L, b, 0, plen);
      kb_byte(L, b, 'D');
      kb_again(L, b, plen + 1, slen - plen - 1);
      kb_byte(L, b, 0);
      for (f = 0; DETAIL_FIELDS[f]; f++) {
        if (f > 0) kb_byte(L, b, '\1');
        if (lua_getfield(L, -1, DETAIL_FIELDS[f]) != LUA_TNIL) {
          kb_byte(L, b, '=');
          kb_escaped(L, b, lua_gettop(L));
        }
        lua_pop(L, 1);
      }
      lua_pop(L, 1);   /* the failure */
      kb_ref(L, ix, off, b->n - off, (uint64_t)count, 0);
    }
    lua_pop(L, 1);     /* the nil after the last */
  }
  /* the TLSRPT record the MTA used: "P" record, counting the sessions that named it */
  if (lua_type(L, 11) == LUA_TSTRING) {
    uint64_t n = sat_sum((uint64_t)success, (uint64_t)failure);
    if (n > 0) {
      size_t off = b->n;
      kb_again(L, b, 0, plen);
      kb_byte(L, b, 'P');
      kb_escaped(L, b, 11);
      kb_ref(L, ix, off, b->n - off, n, 0);
    }
  }
  nref = ix->n / sizeof(key_ref);
  refs = (const key_ref *)(const void *)ix->p;
  for (j = 0; j < nref; j++) {
    luaL_argcheck(L, refs[j].kn <= MTASTS_RESULTS_KEY_MAX, 1, "a key longer than 1 MiB");
    bytes += refs[j].kn;
  }
  if (mtasts_batch_reserve(&u->batch, nref, bytes) != 0) luaL_error(L, "not enough memory");
  for (j = 0; j < nref; j++)   /* cannot fail now: every counter of the result, or none */
    mtasts_batch_bump(&u->batch, (const char *)b->p + refs[j].off, refs[j].kn, refs[j].a,
                      refs[j].b);
  lua_pushinteger(L, (lua_Integer)u->batch.n);
  return 1;
}

/* r:commit([mark_key, mark_value]) -> true | fail: the batch (and the mark) committed as
 * apply does; the batch is then empty. After a failure, the updates that were committed are
 * dropped from the batch and the rest kept for the next commit. */
static int results_commit(lua_State *L) {
  lresults *u = results_check(L, 1);
  mtasts_mark mark, *mp;
  mtasts_delta *d;
  size_t n = u->batch.n, done;
  char err[MTASTS_ERR_MAX];
  int rc;
  mp = opt_mark(L, 2, &mark);
  if (n == 0 && !mp) { lua_pushboolean(L, 1); return 1; }
  if (n > SIZE_MAX / sizeof *d || mtasts_buf_reserve(&u->kidx, n * sizeof *d) != 0)
    return luaL_error(L, "not enough memory");
  d = (mtasts_delta *)(void *)u->kidx.p;
  mtasts_batch_deltas(&u->batch, d);
  if ((rc = mtasts_results_apply(u->e, d, n, mp, &done, err)) != 0) {
    mtasts_batch_drop(&u->batch, d, done);
    return mtasts_lua_fail_rc(L, rc, err);
  }
  mtasts_batch_clear(&u->batch);
  lua_pushboolean(L, 1);
  return 1;
}

/* r:pending() -> how many counters the batch holds */
static int results_pending(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)results_check(L, 1)->batch.n);
  return 1;
}

/* push the strings of a scan of u->buf as an array */
static void push_strings(lua_State *L, lresults *u, size_t count) {
  mtasts_span v;
  size_t pos = 0;
  lua_Integer i;
  lua_createtable(L, (int)(count > 1000000 ? 1000000 : count), 0);
  for (i = 1; mtasts_results_next(&u->buf, &pos, &v); i++) {
    lua_pushlstring(L, v.p, v.n);
    lua_rawseti(L, -2, i);
  }
}

/* r:scan(prefix [, after [, limit]]) -> {key, value, key, value, ...} | fail */
static int results_scan(lua_State *L) {
  lresults *u = results_check(L, 1);
  size_t pn, an = 0, count;
  const char *prefix = luaL_checklstring(L, 2, &pn);
  const char *after = luaL_optlstring(L, 3, NULL, &an);
  lua_Integer limit = luaL_optinteger(L, 4, 0);
  char err[MTASTS_ERR_MAX];
  int rc;
  luaL_argcheck(L, limit >= 0, 4, "limit must not be negative");
  if ((rc = mtasts_results_scan(u->e, prefix, pn, after, an, (size_t)limit, &u->buf, &count,
                                err)) != 0)
    return mtasts_lua_fail_rc(L, rc, err);
  push_strings(L, u, count * 2);
  return 1;
}

/* r:distinct(prefix) -> {component, ...} | fail */
static int results_distinct(lua_State *L) {
  lresults *u = results_check(L, 1);
  size_t pn, count;
  const char *prefix = luaL_checklstring(L, 2, &pn);
  char err[MTASTS_ERR_MAX];
  int rc;
  if ((rc = mtasts_results_distinct(u->e, prefix, pn, &u->buf, &count, err)) != 0)
    return mtasts_lua_fail_rc(L, rc, err);
  push_strings(L, u, count);
  return 1;
}

/* r:get(key) -> value | nil | fail */
static int results_get(lua_State *L) {
  lresults *u = results_check(L, 1);
  size_t kn;
  const char *key = check_key(L, 2, &kn);
  char err[MTASTS_ERR_MAX];
  int rc, found;
  if ((rc = mtasts_results_get(u->e, key, kn, &u->buf, &found, err)) != 0)
    return mtasts_lua_fail_rc(L, rc, err);
  if (!found) lua_pushnil(L);
  else lua_pushlstring(L, (const char *)u->buf.p, u->buf.n);
  return 1;
}

/* r:cas(key, expect|nil, value|nil) -> true (swapped) | false | fail */
static int results_cas(lua_State *L) {
  lresults *u = results_check(L, 1);
  size_t kn, en = 0, vn = 0;
  const char *key = check_key(L, 2, &kn);
  const char *expect = luaL_optlstring(L, 3, NULL, &en);
  const char *value = luaL_optlstring(L, 4, NULL, &vn);
  char err[MTASTS_ERR_MAX];
  int rc, swapped;
  luaL_argcheck(L, vn <= MTASTS_RESULTS_VALUE_MAX, 4, "value too long");
  if ((rc = mtasts_results_cas(u->e, key, kn, expect, en, value, vn, &swapped, err)) != 0)
    return mtasts_lua_fail_rc(L, rc, err);
  lua_pushboolean(L, swapped);
  return 1;
}

/* r:delete_range(lo, hi) -> count | fail */
static int results_delete_range(lua_State *L) {
  lresults *u = results_check(L, 1);
  size_t ln, hn, deleted;
  const char *lo = luaL_checklstring(L, 2, &ln);
  const char *hi = luaL_checklstring(L, 3, &hn);
  char err[MTASTS_ERR_MAX];
  int rc = mtasts_results_delete_range(u->e, lo, ln, hi, hn, &deleted, err);
  if (rc != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_pushinteger(L, (lua_Integer)deleted);
  return 1;
}

/* r:path() -> the directory, resolved */
static int results_path(lua_State *L) {
  lua_pushstring(L, mtasts_env_path(results_check(L, 1)->e));
  return 1;
}

/* --- codecs --- */

static int codec_fail(lua_State *L, int rc, const char *err, const char *code) {
  return mtasts_lua_fail(L, rc == MTASTS_CODEC_ENOMEM ? "out of memory" : err,
                         rc == MTASTS_CODEC_ELARGE ? "too-large" :
                         rc == MTASTS_CODEC_ENOMEM ? "enomem" : code);
}

/* The codecs fill a buffer in a box userdata (lua_util.h): pushing the result can raise,
 * and the box's __gc frees the buffer then; otherwise it is freed at once after the push. */
static int push_buf(lua_State *L, mtasts_buf *b) {
  lua_pushlstring(L, (const char *)b->p, b->n);
  mtasts_buf_free(b);
  return 1;
}

/* gzip(s) -> gzip data */
static int core_gzip(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  mtasts_buf *b = mtasts_lua_newbuf(L);
  if (mtasts_gzip((const unsigned char *)s, n, b) != 0)
    return luaL_error(L, "gzip: out of memory");
  return push_buf(L, b);
}

/* gunzip(s, limit) -> data | nil, msg, "gzip"|"too-large" */
static int core_gunzip(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Integer limit = luaL_checkinteger(L, 2);
  mtasts_buf *b;
  char err[MTASTS_ERR_MAX];
  int rc;
  luaL_argcheck(L, limit >= 0 && limit <= (1 << 30), 2, "limit out of range");
  b = mtasts_lua_newbuf(L);
  if ((rc = mtasts_gunzip((const unsigned char *)s, n, (size_t)limit, b, err)) != 0) {
    mtasts_buf_free(b);
    return codec_fail(L, rc, err, "gzip");
  }
  return push_buf(L, b);
}

/* base64_encode(s [, wrap]) -> text (CRLF every wrap characters) */
static int core_base64_encode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Integer wrap = luaL_optinteger(L, 2, 0);
  mtasts_buf *b;
  luaL_argcheck(L, wrap >= 0 && wrap % 4 == 0, 2, "wrap must be a multiple of 4");
  b = mtasts_lua_newbuf(L);
  if (mtasts_base64_encode((const unsigned char *)s, n, (size_t)wrap, b) != 0)
    return luaL_error(L, "base64: out of memory");
  return push_buf(L, b);
}

/* base64_decode(s) -> data | nil, msg, "base64" */
static int core_base64_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  mtasts_buf *b = mtasts_lua_newbuf(L);
  char err[MTASTS_ERR_MAX];
  int rc = mtasts_base64_decode((const unsigned char *)s, n, b, err);
  if (rc != 0) {
    mtasts_buf_free(b);
    return codec_fail(L, rc, err, "base64");
  }
  return push_buf(L, b);
}

/* --- the escaping of values inside result keys ---
 * lua/mtasts/tlsrpt/store.lua joins a policy's and a failure's fields with \1 and list items
 * with \2 inside its keys, whose parts are separated by NUL; so inside a value the bytes
 * \0-\3 are written as \3 followed by the byte + 64 (the store's unesc undoes it). This is
 * the one implementation of that escaping; the stored bytes are part of the file format. */

/* Push tostring(value at idx) escaped (idx absolute). */
static void push_escaped(lua_State *L, int idx) {
  size_t n, extra = 0, i, at = 0;
  const char *v = luaL_tolstring(L, idx, &n);   /* pushed: tostring's rules, __tostring too */
  luaL_Buffer b;
  char *o;
  for (i = 0; i < n; i++) extra += (unsigned char)v[i] <= 3;
  if (extra == 0) return;                       /* most values: the string as it is */
  o = luaL_buffinitsize(L, &b, n + extra);
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)v[i];
    if (c <= 3) {
      o[at++] = '\3';
      o[at++] = (char)(c + 64);
    } else {
      o[at++] = (char)c;
    }
  }
  luaL_pushresultsize(&b, at);
  lua_remove(L, -2);                            /* the string before escaping */
}

/* blob_escape(v) -> tostring(v), escaped */
static int core_blob_escape(lua_State *L) {
  luaL_checkany(L, 1);
  push_escaped(L, 1);
  return 1;
}

/* blob_list(t) -> the items of array t, each escaped as blob_escape does, joined with \2;
 * "" for nil. */
static int core_blob_list(lua_State *L) {
  luaL_Buffer b;
  lua_Integer i, n;
  if (lua_isnoneornil(L, 1)) {
    lua_pushliteral(L, "");
    return 1;
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  n = luaL_len(L, 1);
  luaL_buffinit(L, &b);
  for (i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, '\2');
    lua_geti(L, 1, i);
    push_escaped(L, lua_gettop(L));
    lua_remove(L, -2);      /* the item: the escaped string alone is left for addvalue */
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  return 1;
}

void mtasts_open_results(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"apply", results_apply}, {"scan", results_scan}, {"distinct", results_distinct},
    {"get", results_get}, {"cas", results_cas}, {"delete_range", results_delete_range},
    {"path", results_path}, {"add", results_add}, {"commit", results_commit},
    {"pending", results_pending}, {NULL, NULL}};
  mtasts_lua_class_register(L, &results_class, methods);   /* close comes with the class */
  lua_pop(L, 1);
  lua_pushcfunction(L, results_open);
  lua_setfield(L, -2, "results_open");
  lua_pushcfunction(L, core_gzip);
  lua_setfield(L, -2, "gzip");
  lua_pushcfunction(L, core_gunzip);
  lua_setfield(L, -2, "gunzip");
  lua_pushcfunction(L, core_base64_encode);
  lua_setfield(L, -2, "base64_encode");
  lua_pushcfunction(L, core_base64_decode);
  lua_setfield(L, -2, "base64_decode");
  lua_pushcfunction(L, core_blob_list);
  lua_setfield(L, -2, "blob_list");
  lua_pushcfunction(L, core_blob_escape);
  lua_setfield(L, -2, "blob_escape");
  {
    luaL_Buffer b;
    int f;
    luaL_buffinit(L, &b);
    for (f = 0; DETAIL_FIELDS[f]; f++) {
      if (f > 0) luaL_addchar(&b, ',');
      luaL_addstring(&b, DETAIL_FIELDS[f]);
    }
    luaL_pushresult(&b);
    lua_setfield(L, -2, "result_detail_fields");   /* checked by the store against its own */
  }
}
