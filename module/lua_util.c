/* lua_util.c: helpers shared by the bindings: failures, option tables, the lifecycle of the
 * C userdata classes, scratch buffers in boxes. Binding code (Lua headers); no decisions.
 * API and the lifecycle's rules: module/lua_util.h; docs/style.md §4. */
#include "lua_util.h"

#include <string.h>

#define BUFBOX_MT "mtasts.bufbox"

/* --- failures --- */

int mtasts_lua_fail(lua_State *L, const char *msg, const char *code) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, code);
  return 3;
}

int mtasts_lua_fail_rc(lua_State *L, int rc, const char *msg) {
  return mtasts_lua_fail(L, msg, mtasts_code_name(rc));
}

/* --- classes --- */

/* Whether a class's userdata is open: its first field, the object pointer, is set (read with
 * memcpy, which any object may be read through). */
static int is_open(const void *u) {
  void *obj;
  memcpy(&obj, u, sizeof obj);
  return obj != NULL;
}

static const mtasts_lua_class *class_of(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

/* u:close() -> true | fail; a second close returns true */
static int class_close(lua_State *L) {
  const mtasts_lua_class *c = class_of(L);
  void *u = luaL_checkudata(L, 1, c->name);
  char err[MTASTS_ERR_MAX];
  int rc = c->release(u, err);
  if (rc != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* __gc and __close: release, ignoring the result */
static int class_gc(lua_State *L) {
  const mtasts_lua_class *c = class_of(L);
  char err[MTASTS_ERR_MAX];
  (void)c->release(luaL_checkudata(L, 1, c->name), err);
  return 0;
}

static int class_tostring(lua_State *L) {
  const mtasts_lua_class *c = class_of(L);
  void *u = luaL_checkudata(L, 1, c->name);
  if (!is_open(u)) lua_pushfstring(L, "%s (closed)", c->name);
  else if (c->label) lua_pushfstring(L, "%s (%s)", c->name, c->label(u));
  else lua_pushfstring(L, "%s (%p)", c->name, u);
  return 1;
}

void mtasts_lua_class_register(lua_State *L, const mtasts_lua_class *c,
                               const luaL_Reg *methods) {
  if (luaL_newmetatable(L, c->name)) {
    lua_pushlightuserdata(L, (void *)c);
    lua_pushcclosure(L, class_gc, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "__gc");
    lua_setfield(L, -2, "__close");       /* the same function */
    lua_pushlightuserdata(L, (void *)c);
    lua_pushcclosure(L, class_tostring, 1);
    lua_setfield(L, -2, "__tostring");
    lua_newtable(L);           /* not luaL_newlib: it sizes the table from an array type */
    luaL_setfuncs(L, methods, 0);
    lua_pushlightuserdata(L, (void *)c);
    lua_pushcclosure(L, class_close, 1);
    lua_setfield(L, -2, "close");
    lua_setfield(L, -2, "__index");
  }
  lua_getfield(L, -1, "__index");
  lua_remove(L, -2);
}

void *mtasts_lua_class_new(lua_State *L, const mtasts_lua_class *c, size_t size) {
  void *u = lua_newuserdatauv(L, size, 0);
  memset(u, 0, size);
  luaL_setmetatable(L, c->name);
  return u;
}

void *mtasts_lua_class_check(lua_State *L, int idx, const mtasts_lua_class *c) {
  void *u = luaL_checkudata(L, idx, c->name);
  if (!is_open(u)) luaL_error(L, "attempt to use a closed %s", c->name);
  return u;
}

/* --- option tables --- */

void mtasts_lua_opt_known(lua_State *L, int t, const char *fn, const char *const *keys) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    int i, ok = 0;
    for (i = 0; keys[i]; i++) ok |= strcmp(keys[i], k) == 0;
    if (!ok) luaL_error(L, "bad argument #1 to '%s' (unknown option '%s')", fn, k);
    lua_pop(L, 1);
  }
}

const char *mtasts_lua_opt_string(lua_State *L, int t, const char *k, const char *fn) {
  int ty = lua_getfield(L, t, k);
  if (ty == LUA_TNIL) { lua_pop(L, 1); return NULL; }
  if (ty != LUA_TSTRING) luaL_error(L, "bad argument #1 to '%s' (%s must be a string)", fn, k);
  return lua_tostring(L, -1);
}

size_t mtasts_lua_opt_strings(lua_State *L, int t, const char *k, const char **v, size_t max,
                              const char *fn) {
  size_t n = 0;
  int ty = lua_getfield(L, t, k);
  if (ty == LUA_TSTRING) {
    v[n++] = lua_tostring(L, -1);
  } else if (ty == LUA_TTABLE) {
    lua_Integer i, len = luaL_len(L, -1);
    if (len < 0 || (size_t)len > max)
      luaL_error(L, "bad argument #1 to '%s' (%s: over %d)", fn, k, (int)max);
    for (i = 1; i <= len; i++) {
      if (lua_rawgeti(L, -1, i) != LUA_TSTRING)
        luaL_error(L, "bad argument #1 to '%s' (%s must be strings)", fn, k);
      v[n++] = lua_tostring(L, -1);
      lua_pop(L, 1);   /* anchored by the table */
    }
  } else if (ty != LUA_TNIL) {
    luaL_error(L, "bad argument #1 to '%s' (%s must be a string or a table of strings)", fn, k);
  }
  return n;
}

double mtasts_lua_opt_number(lua_State *L, int t, const char *k, double dflt, const char *fn) {
  double v;
  int ty = lua_getfield(L, t, k);
  if (ty == LUA_TNIL) v = dflt;
  else if (ty != LUA_TNUMBER || (v = lua_tonumber(L, -1)) <= 0)
    return luaL_error(L, "bad argument #1 to '%s' (%s must be a positive number)", fn, k);
  lua_pop(L, 1);
  return v;
}

unsigned mtasts_lua_opt_filemode(lua_State *L, int idx) {
  lua_Integer m = luaL_optinteger(L, idx, 0);
  if (m != 0 && m != 0600 && m != 0660) luaL_argerror(L, idx, "mode must be 0600 or 0660");
  return (unsigned)m;
}

/* --- memory --- */

static int bufbox__gc(lua_State *L) {
  mtasts_buf_free(luaL_checkudata(L, 1, BUFBOX_MT));
  return 0;
}

void *mtasts_lua_newbox(lua_State *L, size_t size, const char *mt, lua_CFunction gc) {
  void *p = lua_newuserdatauv(L, size, 0);
  memset(p, 0, size);
  if (luaL_newmetatable(L, mt)) {
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return p;
}

mtasts_buf *mtasts_lua_newbuf(lua_State *L) {
  return mtasts_lua_newbox(L, sizeof(mtasts_buf), BUFBOX_MT, bufbox__gc);
}
