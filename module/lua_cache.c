/* lua_cache.c: the mtasts.cache class, binding cache.c (and rebuild.c). Translate, and do
 * nothing else. Contract: docs/cache.md; errors: docs/errors.md; lifecycle: lua_util.h. */
#include "cache.h"
#include "lua_util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define CACHE_MT "mtasts.cache"

typedef struct {
  mtasts_env *e;          /* first: NULL once closed (lua_util.h) */
  mtasts_buf buf;         /* rows read and written; owned here, freed in release */
  mtasts_buf scan;        /* what scans copy out */
  mtasts_buf index;       /* cache:list's decoded rows, pointing into scan */
  mtasts_memo *memo;      /* rows looked up (cache.h); NULL: none */
} lcache;

static int cache_release(void *p, char *err) {
  lcache *u = p;
  int rc = 0;
  if (u->e) rc = mtasts_env_close(u->e, err);
  u->e = NULL;
  mtasts_buf_free(&u->buf);
  mtasts_buf_free(&u->scan);
  mtasts_buf_free(&u->index);
  mtasts_memo_free(u->memo);
  u->memo = NULL;
  return rc;
}

static const mtasts_lua_class cache_class = { CACHE_MT, cache_release, NULL };

static lcache *cache_check(lua_State *L, int idx) {
  return mtasts_lua_class_check(L, idx, &cache_class);
}

/* A domain argument: a string without NUL bytes (a NUL is a domain-syntax failure). */
static const char *check_domain(lua_State *L, int idx, int *bad) {
  size_t n;
  const char *s;
  luaL_checktype(L, idx, LUA_TSTRING);
  s = lua_tolstring(L, idx, &n);
  *bad = strlen(s) != n;
  return s;
}

static int64_t check_time(lua_State *L, int idx) {
  return (int64_t)luaL_checkinteger(L, idx);
}

static void push_span(lua_State *L, mtasts_span s) { lua_pushlstring(L, s.p, s.n); }

/* The row table of docs/cache.md. */
static void push_row(lua_State *L, const mtasts_row *r) {
  mtasts_row_iter it;
  mtasts_span a, b;
  int i;
  lua_createtable(L, 0, 10);
  push_span(L, r->domain);
  lua_setfield(L, -2, "domain");
  lua_pushinteger(L, (lua_Integer)r->inserted);
  lua_setfield(L, -2, "inserted");
  lua_pushinteger(L, (lua_Integer)r->valid_end);
  lua_setfield(L, -2, "valid_end");
  lua_pushinteger(L, (lua_Integer)r->last_update);
  lua_setfield(L, -2, "last_update");
  lua_pushinteger(L, (lua_Integer)r->last_use);
  lua_setfield(L, -2, "last_use");
  lua_pushboolean(L, r->backoff);
  lua_setfield(L, -2, "backoff");
  push_span(L, r->record_id);
  lua_setfield(L, -2, "record_id");
  if (!r->backoff) {
    push_span(L, r->policy_text);
    lua_setfield(L, -2, "policy_text");
  }
  lua_createtable(L, 0, 5);
  lua_pushliteral(L, "STSv1");
  lua_setfield(L, -2, "version");
  lua_pushstring(L, mtasts_mode_name(r->mode));
  lua_setfield(L, -2, "mode");
  lua_pushinteger(L, (lua_Integer)r->max_age);
  lua_setfield(L, -2, "max_age");
  lua_createtable(L, (int)r->n_mx, 0);
  mtasts_row_mx_iter(r, &it);
  for (i = 1; mtasts_row_next_mx(&it, &a); i++) {
    push_span(L, a);
    lua_rawseti(L, -2, i);
  }
  lua_setfield(L, -2, "mx");
  lua_createtable(L, (int)r->n_ext, 0);
  mtasts_row_ext_iter(r, &it);
  for (i = 1; mtasts_row_next_ext(&it, &a, &b); i++) {
    lua_createtable(L, 0, 2);
    push_span(L, a);
    lua_setfield(L, -2, "key");
    push_span(L, b);
    lua_setfield(L, -2, "value");
    lua_rawseti(L, -2, i);
  }
  lua_setfield(L, -2, "extensions");
  lua_setfield(L, -2, "policy");
}

/* --- mtasts.cache --- */

/* cache_open(path [, mode [, memo_rows]]) -> cache | fail */
static int cache_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  unsigned mode = mtasts_lua_opt_filemode(L, 2);
  lua_Integer rows = luaL_optinteger(L, 3, MTASTS_MEMO_ROWS);
  char err[MTASTS_ERR_MAX];
  lcache *u;
  int rc;
  if (rows < 0 || rows > (1 << 20)) return luaL_argerror(L, 3, "0 to 1048576 rows expected");
  u = mtasts_lua_class_new(L, &cache_class, sizeof *u);
  if ((rc = mtasts_env_open(path, mode, &u->e, err)) != 0) return mtasts_lua_fail_rc(L, rc, err);
  u->memo = mtasts_memo_new((size_t)rows);   /* none for 0 or without memory: lookups work */
  return 1;
}

/* cache:lookup(domain, now) -> row | nil | fail */
static int cache_lookup(lua_State *L) {
  lcache *u = cache_check(L, 1);
  int bad, found, rc;
  const char *domain = check_domain(L, 2, &bad);
  int64_t now = check_time(L, 3);
  char err[MTASTS_ERR_MAX], key[MTASTS_NAME_MAX + 1];
  mtasts_row row;
  uint64_t version;
  int versioned;
  if (bad) return mtasts_lua_fail_rc(L, MTASTS_EDOMAIN, "domain name contains a NUL byte");
  rc = mtasts_cache_lookup(u->e, u->memo, domain, now, &u->buf, &row, &found, key, &version,
                           &versioned, err);
  if (rc != 0) return mtasts_lua_fail_rc(L, rc, err);
  if (!found) {
    lua_pushnil(L);
    return 1;
  }
  push_row(L, &row);   /* the row names key: mtasts_cache_lookup checked */
  if (versioned) {
    lua_pushinteger(L, (lua_Integer)version);
    lua_setfield(L, -2, "version");
  }
  return 1;
}

/* cache:version(domain) -> integer | false | fail: the version of the row's bucket now, read
 * without entering the gate; a row whose `version` equals it has not been written since.
 * false while processes of the previous release share the cache (rows carry none then). */
static int cache_version(lua_State *L) {
  lcache *u = cache_check(L, 1);
  int bad, rc;
  const char *domain = check_domain(L, 2, &bad);
  char err[MTASTS_ERR_MAX], key[MTASTS_NAME_MAX + 1];
  uint64_t version;
  if (bad) return mtasts_lua_fail_rc(L, MTASTS_EDOMAIN, "domain name contains a NUL byte");
  if (mtasts_domain_ascii(domain, strlen(domain), key, err) != 0)
    return mtasts_lua_fail_rc(L, MTASTS_EDOMAIN, err);
  if ((rc = mtasts_env_row_version(u->e, key, strlen(key), &version)) == ENOTSUP) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (rc != 0) {
    snprintf(err, sizeof err, "cache %.160s: the database failed verification after a "
             "recovery and is not used; run `mtasts cache rebuild` or move the directory "
             "aside (the cache refills itself)", mtasts_env_path(u->e));
    return mtasts_lua_fail_rc(L, rc, err);
  }
  lua_pushinteger(L, (lua_Integer)version);
  return 1;
}

/* cache:upsert(domain, record_id, policy_text | nil, now) -> true | fail */
static int cache_upsert(lua_State *L) {
  lcache *u = cache_check(L, 1);
  int bad, rc;
  const char *domain = check_domain(L, 2, &bad);
  size_t idn, tn = 0;
  const char *id = luaL_checklstring(L, 3, &idn), *text = NULL;
  int64_t now = check_time(L, 5);
  char err[MTASTS_ERR_MAX];
  if (!lua_isnil(L, 4)) {
    luaL_checktype(L, 4, LUA_TSTRING);
    text = lua_tolstring(L, 4, &tn);
  }
  if (bad) return mtasts_lua_fail_rc(L, MTASTS_EDOMAIN, "domain name contains a NUL byte");
  if (strlen(id) != idn) return luaL_argerror(L, 3, "record id contains a NUL byte");
  rc = mtasts_cache_upsert(u->e, domain, id, text, tn, now, &u->buf, err);
  if (rc != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* cache:mark_checked(domain, now [, extend]) -> true | false (no row) | fail */
static int cache_mark_checked(lua_State *L) {
  lcache *u = cache_check(L, 1);
  int bad, found, rc;
  const char *domain = check_domain(L, 2, &bad);
  int64_t now = check_time(L, 3);
  int extend = lua_toboolean(L, 4);
  char err[MTASTS_ERR_MAX];
  if (bad) return mtasts_lua_fail_rc(L, MTASTS_EDOMAIN, "domain name contains a NUL byte");
  rc = mtasts_cache_mark_checked(u->e, domain, now, extend, &found, &u->buf, err);
  if (rc != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_pushboolean(L, found);
  return 1;
}

/* cache:delete(domain) -> true | false (no row) | fail */
static int cache_delete(lua_State *L) {
  lcache *u = cache_check(L, 1);
  int bad, found, rc;
  const char *domain = check_domain(L, 2, &bad);
  char err[MTASTS_ERR_MAX];
  if (bad) return mtasts_lua_fail_rc(L, MTASTS_EDOMAIN, "domain name contains a NUL byte");
  rc = mtasts_cache_delete(u->e, domain, &found, err);
  if (rc != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_pushboolean(L, found);
  return 1;
}

/* A lease's name or holder: a string of 1 to max bytes without NUL, or raise. */
static const char *check_lease_arg(lua_State *L, int arg, size_t max) {
  size_t n;
  const char *s = luaL_checklstring(L, arg, &n);
  if (n == 0 || n > max || strlen(s) != n)
    luaL_argerror(L, arg, lua_pushfstring(L, "1 to %d bytes without NUL expected", (int)max));
  return s;
}

/* cache:lease(name, holder, now, seconds) -> true | false, held_by, held_until | fail */
static int cache_lease(lua_State *L) {
  lcache *u = cache_check(L, 1);
  const char *name = check_lease_arg(L, 2, MTASTS_LEASE_NAME_MAX);
  const char *holder = check_lease_arg(L, 3, MTASTS_LEASE_HOLDER_MAX);
  int64_t now = check_time(L, 4), held_until, secs = check_time(L, 5);
  char err[MTASTS_ERR_MAX], held_by[MTASTS_LEASE_HOLDER_MAX + 1];
  int got, rc;
  if (secs <= 0) return luaL_argerror(L, 5, "seconds above 0 expected");
  /* the end, now + seconds, must be an integer too: signed overflow is undefined */
  if (now > INT64_MAX - secs) return luaL_argerror(L, 5, "now + seconds out of range");
  rc = mtasts_cache_lease(u->e, name, holder, now, now + secs, &got, held_by, &held_until,
                          &u->buf, err);
  if (rc != 0) return mtasts_lua_fail_rc(L, rc, err);
  if (got) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_pushstring(L, held_by);
  lua_pushinteger(L, (lua_Integer)held_until);
  return 3;
}

/* cache:release(name, holder) -> true (released) | false (not this holder's) | fail */
static int cache_lease_release(lua_State *L) {
  lcache *u = cache_check(L, 1);
  const char *name = check_lease_arg(L, 2, MTASTS_LEASE_NAME_MAX);
  const char *holder = check_lease_arg(L, 3, MTASTS_LEASE_HOLDER_MAX);
  char err[MTASTS_ERR_MAX];
  int released, rc = mtasts_cache_release(u->e, name, holder, &released, &u->buf, err);
  if (rc != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_pushboolean(L, released);
  return 1;
}

/* cache:list() -> { row, ... } most recently used first | fail. Rows that do not decode or
 * name another domain are left out (cache:verify() counts them). */
static int cache_list(lua_State *L) {
  lcache *u = cache_check(L, 1);
  char err[MTASTS_ERR_MAX];
  const mtasts_row *rows;
  size_t n, i;
  int rc = mtasts_cache_list(u->e, &u->scan, &u->index, &rows, &n, err);
  if (rc != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_createtable(L, (int)n, 0);
  for (i = 0; i < n; i++) {
    push_row(L, &rows[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* cache:due_for_refresh(now, older_than) -> { domain, ... } | fail */
static int cache_due(lua_State *L) {
  lcache *u = cache_check(L, 1);
  int64_t now = check_time(L, 2), older = check_time(L, 3);
  char err[MTASTS_ERR_MAX];
  mtasts_cache_rec r;
  size_t count, pos = 0;
  lua_Integer i;
  int rc = mtasts_cache_due(u->e, now, older, &u->scan, &count, err);
  if (rc != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_createtable(L, (int)count, 0);
  for (i = 1; mtasts_cache_next(&u->scan, &pos, &r); i++) {
    push_span(L, r.key);
    lua_rawseti(L, -2, i);
  }
  return 1;
}

/* cache:prune(now, unused_for) -> count deleted | fail */
static int cache_prune(lua_State *L) {
  lcache *u = cache_check(L, 1);
  int64_t now = check_time(L, 2), unused = check_time(L, 3);
  char err[MTASTS_ERR_MAX];
  size_t deleted;
  int rc = mtasts_cache_prune(u->e, now, unused, &deleted, &u->scan, err);
  if (rc != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_pushinteger(L, (lua_Integer)deleted);
  return 1;
}

/* cache:verify() -> true | fail (DB_VERIFY_BAD when the file is damaged) */
static int cache_verify(lua_State *L) {
  lcache *u = cache_check(L, 1);
  char err[MTASTS_ERR_MAX];
  int rc = mtasts_cache_verify(u->e, err);
  if (rc != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* cache:stats() -> { path =, generation =, recoveries = } */
static int cache_stats(lua_State *L) {
  lcache *u = cache_check(L, 1);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)mtasts_env_recoveries(u->e));
  lua_setfield(L, -2, "recoveries");
  lua_pushstring(L, mtasts_env_path(u->e));
  lua_setfield(L, -2, "path");
  lua_pushinteger(L, (lua_Integer)mtasts_env_generation(u->e));
  lua_setfield(L, -2, "generation");
  return 1;
}

/* cache:path() -> the directory, resolved */
static int cache_path(lua_State *L) {
  lcache *u = cache_check(L, 1);
  lua_pushstring(L, mtasts_env_path(u->e));
  return 1;
}

/* cache_rebuild(path [, mode]) -> { salvaged =, skipped =, results =, stopped =, moved_to = }
 *   | fail */
static int cache_rebuild(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  unsigned mode = mtasts_lua_opt_filemode(L, 2);
  char err[MTASTS_ERR_MAX];
  mtasts_rebuild r;
  int rc = mtasts_cache_rebuild(path, mode, &r, err);
  if (rc != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)r.salvaged);
  lua_setfield(L, -2, "salvaged");
  lua_pushinteger(L, (lua_Integer)r.skipped);
  lua_setfield(L, -2, "skipped");
  lua_pushinteger(L, (lua_Integer)r.results);
  lua_setfield(L, -2, "results");
  lua_pushinteger(L, (lua_Integer)r.stopped);
  lua_setfield(L, -2, "stopped");
  lua_pushstring(L, r.moved_to);
  lua_setfield(L, -2, "moved_to");
  return 1;
}

void mtasts_open_cache(lua_State *L) {
  static const luaL_Reg methods[] = {
    { "lookup", cache_lookup },
    { "version", cache_version },
    { "upsert", cache_upsert },
    { "mark_checked", cache_mark_checked },
    { "delete", cache_delete },
    { "list", cache_list },
    { "due_for_refresh", cache_due },
    { "prune", cache_prune },
    { "verify", cache_verify },
    { "stats", cache_stats },
    { "path", cache_path },
    { "lease", cache_lease },
    { "release", cache_lease_release },
    { NULL, NULL }
  };
  mtasts_lua_class_register(L, &cache_class, methods);   /* close comes with the class */
  lua_pop(L, 1);
  lua_pushcfunction(L, cache_open);
  lua_setfield(L, -2, "cache_open");
  lua_pushcfunction(L, cache_rebuild);
  lua_setfield(L, -2, "cache_rebuild");
  lua_pushinteger(L, MTASTS_TOUCH_SECONDS);   /* a looked-up row's last_use is written this often */
  lua_setfield(L, -2, "touch_seconds");
}
