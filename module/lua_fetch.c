/* lua_fetch.c: the mtasts.fetcher class, binding fetch.c. Translate, and do nothing else.
 * Contract: docs/fetch.md; lifecycle: lua_util.h. */
#include "fetch.h"
#include "lua_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define FETCHER_MT "mtasts.fetcher"
#define MAX_LIST 64

typedef struct { mtasts_fetcher *f; } lfetcher;   /* f: NULL once closed (lua_util.h) */

static int fetcher_release(void *p, char *err) {
  lfetcher *u = p;
  (void)err;
  mtasts_fetcher_free(u->f);
  u->f = NULL;
  return 0;
}

static const mtasts_lua_class fetcher_class = { FETCHER_MT, fetcher_release, NULL };

static lfetcher *fetcher_check(lua_State *L, int idx) {
  return mtasts_lua_class_check(L, idx, &fetcher_class);
}

/* fetcher_new{ cafile=, capath=, proxy=, connect_to=, timeout=, connect_timeout=,
 *              max_size=, allow_private= } -> fetcher | fail (config, local) */
static int fetcher_new(lua_State *L) {
  static const char *const keys[] = { "cafile", "capath", "proxy", "connect_to", "timeout",
                                      "connect_timeout", "max_size", "allow_private", NULL };
  const char *ct[MAX_LIST];
  char err[MTASTS_ERR_MAX];
  mtasts_fetch_opts o;
  lfetcher *u;
  int rc;
  memset(&o, 0, sizeof o);
  luaL_checktype(L, 1, LUA_TTABLE);
  mtasts_lua_opt_known(L, 1, "fetcher_new", keys);
  o.cafile = mtasts_lua_opt_string(L, 1, "cafile", "fetcher_new");
  o.capath = mtasts_lua_opt_string(L, 1, "capath", "fetcher_new");
  o.proxy = mtasts_lua_opt_string(L, 1, "proxy", "fetcher_new");
  o.n_connect_to = mtasts_lua_opt_strings(L, 1, "connect_to", ct, MAX_LIST, "fetcher_new");
  o.connect_to = ct;
  o.timeout = mtasts_lua_opt_number(L, 1, "timeout", 60, "fetcher_new");
  o.connect_timeout = mtasts_lua_opt_number(L, 1, "connect_timeout", o.timeout, "fetcher_new");
  o.max_size = (size_t)mtasts_lua_opt_number(L, 1, "max_size", MTASTS_POLICY_MAX, "fetcher_new");
  lua_getfield(L, 1, "allow_private");
  o.allow_private = lua_toboolean(L, -1);
  lua_pop(L, 1);
  u = mtasts_lua_class_new(L, &fetcher_class, sizeof *u);
  if ((rc = mtasts_fetcher_new(&o, &u->f, err)) != 0) return mtasts_lua_fail_rc(L, rc, err);
  return 1;
}

/* fetcher_check{ cafile=, capath= } -> true | fail (config, local): the trust store checks
 * of fetcher_new, keeping nothing */
static int fetcher_check_opts(lua_State *L) {
  static const char *const keys[] = { "cafile", "capath", NULL };
  char err[MTASTS_ERR_MAX];
  const char *cafile, *capath;
  int rc;
  luaL_checktype(L, 1, LUA_TTABLE);
  mtasts_lua_opt_known(L, 1, "fetcher_check", keys);
  cafile = mtasts_lua_opt_string(L, 1, "cafile", "fetcher_check");
  capath = mtasts_lua_opt_string(L, 1, "capath", "fetcher_check");
  if ((rc = mtasts_fetch_check_trust(cafile, capath, err)) != 0)
    return mtasts_lua_fail_rc(L, rc, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* f:add{ url=, host=, resolve=, body=, content_type= } -> id | fail */
static int fetcher_add(lua_State *L) {
  static const char *const keys[] = { "url", "host", "resolve", "body", "content_type", NULL };
  lfetcher *u = fetcher_check(L, 1);
  const char *rs[MAX_LIST];
  char err[MTASTS_ERR_MAX];
  mtasts_fetch_req r;
  int id, rc;
  memset(&r, 0, sizeof r);
  luaL_checktype(L, 2, LUA_TTABLE);
  mtasts_lua_opt_known(L, 2, "add", keys);
  if (!(r.url = mtasts_lua_opt_string(L, 2, "url", "add")))
    return luaL_error(L, "bad argument #1 to 'add' (url required)");
  if (!(r.host = mtasts_lua_opt_string(L, 2, "host", "add")))
    return luaL_error(L, "bad argument #1 to 'add' (host required)");
  r.n_resolve = mtasts_lua_opt_strings(L, 2, "resolve", rs, MAX_LIST, "add");
  r.resolve = rs;
  if (lua_getfield(L, 2, "body") == LUA_TSTRING) r.body = lua_tolstring(L, -1, &r.body_len);
  else if (!lua_isnil(L, -1))
    return luaL_error(L, "bad argument #1 to 'add' (body must be a string)");
  r.content_type = mtasts_lua_opt_string(L, 2, "content_type", "add");
  if (strncmp(r.url, "https://", 8) != 0)
    return mtasts_lua_fail(L, "fetcher: only https:// URLs", "policy-fetch");
  if ((rc = mtasts_fetcher_add(u->f, &r, &id, err)) != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_pushinteger(L, id);
  return 1;
}

/* f:fd() -> descriptor that becomes readable when a transfer has work */
static int fetcher_fd(lua_State *L) {
  lua_pushinteger(L, mtasts_fetcher_fd(fetcher_check(L, 1)->f));
  return 1;
}

/* f:timeout() -> seconds until curl wants to run again, or nil when idle */
static int fetcher_timeout(lua_State *L) {
  double t = mtasts_fetcher_timeout(fetcher_check(L, 1)->f);
  if (t < 0) lua_pushnil(L);
  else lua_pushnumber(L, t);
  return 1;
}

/* f:step() -> true | fail */
static int fetcher_step(lua_State *L) {
  lfetcher *u = fetcher_check(L, 1);
  char err[MTASTS_ERR_MAX];
  int rc;
  if ((rc = mtasts_fetcher_step(u->f, err)) != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* f:done() -> { { id=, curl_code=, error=, status=, verify_result=, verify_error=,
 *                 content_type=, body=, too_large=, refused_address=, local_error= }, ... } */
static int fetcher_done(lua_State *L) {
  lfetcher *u = fetcher_check(L, 1);
  mtasts_transfer *t;
  int n = 0;
  lua_newtable(L);
  while ((t = mtasts_fetcher_done(u->f)) != NULL) {
    /* the transfer stays owned by the fetcher until its table is complete */
    lua_createtable(L, 0, 10);
    lua_pushinteger(L, t->id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, mtasts_curl_code_name(t->curl_code));
    lua_setfield(L, -2, "curl_code");
    if (t->curl_code != 0) {
      lua_pushstring(L, t->errbuf[0] ? t->errbuf : "transfer failed");
      lua_setfield(L, -2, "error");
    }
    lua_pushinteger(L, t->status);
    lua_setfield(L, -2, "status");
    lua_pushinteger(L, t->verify_result);
    lua_setfield(L, -2, "verify_result");
    if (t->verify_result != 0) {
      lua_pushstring(L, mtasts_verify_error_string(t->verify_result));
      lua_setfield(L, -2, "verify_error");
    }
    if (t->content_type[0]) {
      lua_pushstring(L, t->content_type);
      lua_setfield(L, -2, "content_type");
    }
    lua_pushlstring(L, t->body.p ? (const char *)t->body.p : "", t->body.n);
    lua_setfield(L, -2, "body");
    lua_pushboolean(L, t->too_large);
    lua_setfield(L, -2, "too_large");
    if (t->refused[0] && t->opened == 0) {   /* refused, and nothing else was tried */
      lua_pushstring(L, t->refused);
      lua_setfield(L, -2, "refused_address");
    }
    if (t->local_error[0]) {
      lua_pushstring(L, t->local_error);
      lua_setfield(L, -2, "local_error");
    }
    lua_rawseti(L, -2, ++n);
    mtasts_fetcher_pop(u->f);
  }
  return 1;
}

/* f:cancel(id) */
static int fetcher_cancel(lua_State *L) {
  lfetcher *u = fetcher_check(L, 1);   /* closed raises before a bad id does */
  mtasts_fetcher_cancel(u->f, (int)luaL_checkinteger(L, 2));
  return 0;
}

/* f:running() -> transfers not finished */
static int fetcher_running(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mtasts_fetcher_running(fetcher_check(L, 1)->f));
  return 1;
}

/* is_global_address(ip) -> boolean | fail: whether the fetcher would connect to an IPv4 or
 * IPv6 address without allow_private (mtasts_address_is_global). */
static int is_global_address(lua_State *L) {
  const char *ip = luaL_checkstring(L, 1);
  struct sockaddr_in6 a6;
  struct sockaddr_in a4;
  memset(&a6, 0, sizeof a6);
  memset(&a4, 0, sizeof a4);
  if (inet_pton(AF_INET, ip, &a4.sin_addr) == 1) {
    a4.sin_family = AF_INET;
    lua_pushboolean(L, mtasts_address_is_global((struct sockaddr *)&a4));
  } else if (inet_pton(AF_INET6, ip, &a6.sin6_addr) == 1) {
    a6.sin6_family = AF_INET6;
    lua_pushboolean(L, mtasts_address_is_global((struct sockaddr *)&a6));
  } else {
    return mtasts_lua_fail(L, "not an IPv4 or IPv6 address", "einval");
  }
  return 1;
}

void mtasts_open_fetch(lua_State *L) {
  static const luaL_Reg methods[] = {
    { "add", fetcher_add },
    { "fd", fetcher_fd },
    { "timeout", fetcher_timeout },
    { "step", fetcher_step },
    { "done", fetcher_done },
    { "cancel", fetcher_cancel },
    { "running", fetcher_running },
    { NULL, NULL }
  };
  /* close comes with the class; the method table is core.fetcher_methods, to which
   * lua/mtasts/fetch.lua adds fetch and post */
  mtasts_lua_class_register(L, &fetcher_class, methods);
  lua_setfield(L, -2, "fetcher_methods");
  lua_pushcfunction(L, fetcher_new);
  lua_setfield(L, -2, "fetcher_new");
  lua_pushcfunction(L, fetcher_check_opts);
  lua_setfield(L, -2, "fetcher_check");
  lua_pushcfunction(L, is_global_address);
  lua_setfield(L, -2, "is_global_address");
}
