/* lua_redis.c: the mtasts.redis_conn class, binding redis.c: one non-blocking connection
 * whose replies come back as Lua values. Translate, and do nothing else (mtasts.redis does
 * the waiting, deadlines, AUTH, sentinels). Contract: docs/redis.md; lifecycle: lua_util.h. */
#include "lua_util.h"
#include "redis.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define REDIS_MT "mtasts.redis_conn"
#define MAX_ARGS 1048576

typedef struct { mtasts_redis *c; } lredis;   /* c: NULL once closed (lua_util.h) */

static int redis_release(void *p, char *err) {
  lredis *u = p;
  (void)err;
  mtasts_redis_free(u->c);
  u->c = NULL;
  return 0;
}

static const mtasts_lua_class redis_class = { REDIS_MT, redis_release, NULL };

static lredis *redis_check(lua_State *L, int idx) {
  return mtasts_lua_class_check(L, idx, &redis_class);
}

/* The failure of a redis.c call: the codes of docs/errors.md. */
static int redis_fail(lua_State *L, int rc, const char *err) {
  return mtasts_lua_fail(L, err, rc == MTASTS_REDIS_EPROTO ? "redis-protocol"
                         : rc == MTASTS_REDIS_EUNAVAIL ? "redis-unavailable"
                         : rc == ENOMEM ? "local" : mtasts_code_name(rc));
}

/* redis_connect{ host =, port =, tls =, server_name =, cafile =, capath = }
 *   -> conn | fail (config, redis-unavailable, local). host is an IP literal. */
static int redis_connect(lua_State *L) {
  static const char *const keys[] = { "host", "port", "tls", "server_name", "cafile", "capath",
                                      NULL };
  char err[MTASTS_ERR_MAX];
  mtasts_redis_opts o;
  lredis *u;
  int rc;
  memset(&o, 0, sizeof o);
  luaL_checktype(L, 1, LUA_TTABLE);
  mtasts_lua_opt_known(L, 1, "redis_connect", keys);
  if (!(o.host = mtasts_lua_opt_string(L, 1, "host", "redis_connect")))
    return luaL_error(L, "bad argument #1 to 'redis_connect' (host required)");
  if (lua_getfield(L, 1, "port") != LUA_TNUMBER || !lua_isinteger(L, -1))
    return luaL_error(L, "bad argument #1 to 'redis_connect' (port must be an integer)");
  o.port = (int)(lua_tointeger(L, -1) > 65536 || lua_tointeger(L, -1) < 0 ? 0
                                                                         : lua_tointeger(L, -1));
  lua_pop(L, 1);
  lua_getfield(L, 1, "tls");
  o.tls = lua_toboolean(L, -1);
  lua_pop(L, 1);
  o.server_name = mtasts_lua_opt_string(L, 1, "server_name", "redis_connect");
  o.cafile = mtasts_lua_opt_string(L, 1, "cafile", "redis_connect");
  o.capath = mtasts_lua_opt_string(L, 1, "capath", "redis_connect");
  u = mtasts_lua_class_new(L, &redis_class, sizeof *u);
  if ((rc = mtasts_redis_connect(&o, &u->c, err)) != 0) return redis_fail(L, rc, err);
  return 1;
}

/* conn:fd() -> descriptor */
static int redis_fd(lua_State *L) {
  lua_pushinteger(L, mtasts_redis_fd(redis_check(L, 1)->c));
  return 1;
}

/* conn:want() -> "r" | "w" | "rw": what to wait for before the next step */
static int redis_want(lua_State *L) {
  int w = mtasts_redis_want(redis_check(L, 1)->c);
  lua_pushstring(L, w == (MTASTS_REDIS_WANT_READ | MTASTS_REDIS_WANT_WRITE) ? "rw"
                 : w == MTASTS_REDIS_WANT_WRITE ? "w" : "r");
  return 1;
}

/* conn:send(arg, ...) -> true | fail: one command, arguments strings or integers */
static int redis_send(lua_State *L) {
  lredis *u = redis_check(L, 1);
  int i, n = lua_gettop(L) - 1;
  const char **argv;
  size_t *lens;
  char err[MTASTS_ERR_MAX];
  int rc;
  if (n < 1) return luaL_error(L, "bad argument #2 to 'send' (a command expected)");
  if (n > MAX_ARGS) return luaL_error(L, "bad argument #2 to 'send' (too many arguments)");
  for (i = 2; i <= n + 1; i++) {
    if (lua_type(L, i) != LUA_TSTRING && !lua_isinteger(L, i))
      return luaL_argerror(L, i, "string or integer expected");
  }
  /* scratch arrays in a plain userdata: anchored on the stack, collected with it */
  argv = lua_newuserdatauv(L, (size_t)n * (sizeof *argv + sizeof *lens), 0);
  lens = (size_t *)(void *)(argv + n);
  for (i = 0; i < n; i++) argv[i] = lua_tolstring(L, i + 2, &lens[i]);  /* integers in place */
  if ((rc = mtasts_redis_send(u->c, n, argv, lens, err)) != 0) return redis_fail(L, rc, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* Push a reply tree: strings, integers, false for nil, arrays with n, { err = } for errors. */
static void push_reply(lua_State *L, const mtasts_redis_reply *r) {
  size_t i;
  luaL_checkstack(L, 4, "redis reply");
  switch (r->type) {
  case MTASTS_REDIS_STRING:
  case MTASTS_REDIS_STATUS:
    lua_pushlstring(L, r->str, r->len);
    break;
  case MTASTS_REDIS_INTEGER:
    lua_pushinteger(L, (lua_Integer)r->integer);
    break;
  case MTASTS_REDIS_ERROR:
    lua_createtable(L, 0, 1);
    lua_pushlstring(L, r->str, r->len);
    lua_setfield(L, -2, "err");
    break;
  case MTASTS_REDIS_ARRAY:
    lua_createtable(L, r->n > 1u << 24 ? 1 << 24 : (int)r->n, 1);
    for (i = 0; i < r->n; i++) {
      if (r->elem[i]) push_reply(L, r->elem[i]);
      else lua_pushboolean(L, 0);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_pushinteger(L, (lua_Integer)r->n);
    lua_setfield(L, -2, "n");
    break;
  default:   /* nil */
    lua_pushboolean(L, 0);
  }
}

/* conn:step() -> { reply, ... } (possibly empty) | fail (redis-unavailable, redis-protocol):
 * after a failure the connection is dead */
static int redis_step(lua_State *L) {
  lredis *u = redis_check(L, 1);
  char err[MTASTS_ERR_MAX];
  mtasts_redis_reply *r;
  int rc, n = 0;
  if ((rc = mtasts_redis_step(u->c, err)) != 0) return redis_fail(L, rc, err);
  lua_newtable(L);
  while ((r = mtasts_redis_peek(u->c)) != NULL) {
    push_reply(L, r);   /* the reply stays owned by the connection until it is pushed */
    lua_rawseti(L, -2, ++n);
    mtasts_redis_pop(u->c);
  }
  return 1;
}

/* conn:pending() -> commands sent whose replies have not been returned by step */
static int redis_pending(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mtasts_redis_pending(redis_check(L, 1)->c));
  return 1;
}

void mtasts_open_redis(lua_State *L) {
  static const luaL_Reg methods[] = {
    { "fd", redis_fd },
    { "want", redis_want },
    { "send", redis_send },
    { "step", redis_step },
    { "pending", redis_pending },
    { NULL, NULL }
  };
  mtasts_lua_class_register(L, &redis_class, methods);
  lua_pop(L, 1);
  lua_pushcfunction(L, redis_connect);
  lua_setfield(L, -2, "redis_connect");
}
