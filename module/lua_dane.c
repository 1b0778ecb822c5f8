/* lua_dane.c: the binding of dane.c, core.dane_verify. Checks arguments and converts; the
 * decisions are dane.c's (RFC 7672 over OpenSSL's DANE). Contract: docs/dane.md. */
#include "dane.h"
#include "lua_util.h"

#include <string.h>

#define DANE_NAMES_MAX 64   /* reference identifiers: the MX host and a few more */
#define DANEBOX_MT "mtasts.danebox"

/* The SSL_CTX every call of this Lua state shares (dane.h), in a box that is dane_verify's
 * upvalue: made at the first call (not at require: it costs half a millisecond), freed with
 * the state. A Lua state runs one call at a time, so the lazy making needs no lock. */
typedef struct { mtasts_dane_ctx *ctx; } dane_box;

static int danebox__gc(lua_State *L) {
  dane_box *b = luaL_checkudata(L, 1, DANEBOX_MT);
  mtasts_dane_ctx_free(b->ctx);
  b->ctx = NULL;
  return 0;
}

/* Raise "bad argument #arg to 'verify' (why)": the name the Lua facade gives it. */
static int argerr(lua_State *L, int arg, const char *why) {
  return luaL_error(L, "bad argument #%d to 'verify' (%s)", arg, why);
}

/* Argument arg is a table: "table expected, got nil", as luaL_checktype says it. */
static void check_table(lua_State *L, int arg) {
  if (lua_type(L, arg) != LUA_TTABLE) {
    lua_pushfstring(L, "table expected, got %s", luaL_typename(L, arg));
    argerr(L, arg, lua_tostring(L, -1));
  }
}

/* A string argument or field without NUL bytes (names go to C strings). */
static const char *plain_string(lua_State *L, int idx, int arg, const char *what) {
  size_t n;
  const char *s;
  if (lua_type(L, idx) != LUA_TSTRING) argerr(L, arg, what);
  s = lua_tolstring(L, idx, &n);
  if (strlen(s) != n) argerr(L, arg, what);
  return s;
}

/* An integer field of record i, 0-255. */
static unsigned record_field(lua_State *L, int rec, lua_Integer i, const char *k) {
  lua_Integer v;
  int isint;
  lua_getfield(L, rec, k);
  v = lua_tointegerx(L, -1, &isint);
  lua_pop(L, 1);
  if (!isint || v < 0 || v > 255) {
    lua_pushfstring(L, "tlsa[%d].%s must be an integer 0-255", (int)i, k);
    argerr(L, 2, lua_tostring(L, -1));
  }
  return (unsigned)v;
}

/* dane_verify(chain, tlsa, {names =, now =}) -> true, {usage, selector, mtype, depth}
 *   | false, {result_type, reason}. Raises on misuse, never on what the network sent. */
static int dane_verify(lua_State *L) {
  static const char *const keys[] = { "names", "now", NULL };
  mtasts_dane_chain chain;
  mtasts_dane_result res;
  mtasts_tlsa *recs;
  const char **names;
  char err[MTASTS_ERR_MAX];
  lua_Integer i, nrec, nnames;
  lua_Integer now;
  int isint, rc;

  lua_settop(L, 3);   /* the arguments at 1-3, what this function anchors above them */
  memset(&chain, 0, sizeof chain);
  /* the chain: PEM text, or a list of DER strings (borrowed from the argument) */
  if (lua_type(L, 1) == LUA_TSTRING) {
    chain.pem = lua_tolstring(L, 1, &chain.pemlen);
  } else if (lua_type(L, 1) == LUA_TTABLE) {
    const unsigned char **der;
    size_t *len;
    lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
    der = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *der, 0);   /* anchored here */
    len = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *len, 0);
    for (i = 1; i <= n; i++) {
      if (lua_rawgeti(L, 1, i) != LUA_TSTRING) argerr(L, 1, "chain must be PEM text or a list "
                                                        "of DER strings");
      der[i - 1] = (const unsigned char *)lua_tolstring(L, -1, &len[i - 1]);
      lua_pop(L, 1);   /* anchored by the table */
    }
    chain.der = der;
    chain.derlen = len;
    chain.nder = (size_t)n;
  } else {
    argerr(L, 1, "chain must be PEM text or a list of DER strings");
  }

  /* the records */
  check_table(L, 2);
  nrec = (lua_Integer)lua_rawlen(L, 2);
  recs = lua_newuserdatauv(L, (size_t)(nrec ? nrec : 1) * sizeof *recs, 0);
  for (i = 1; i <= nrec; i++) {
    mtasts_tlsa *t = &recs[i - 1];
    int rec;
    if (lua_rawgeti(L, 2, i) != LUA_TTABLE) {
      lua_pushfstring(L, "tlsa[%d] must be a table", (int)i);
      argerr(L, 2, lua_tostring(L, -1));
    }
    rec = lua_gettop(L);
    t->usage = record_field(L, rec, i, "usage");
    t->selector = record_field(L, rec, i, "selector");
    t->mtype = record_field(L, rec, i, "mtype");
    if (lua_getfield(L, rec, "data") != LUA_TSTRING) {
      lua_pushfstring(L, "tlsa[%d].data must be a string", (int)i);
      argerr(L, 2, lua_tostring(L, -1));
    }
    t->data = (const unsigned char *)lua_tolstring(L, -1, &t->n);
    lua_pop(L, 2);   /* data and the record: anchored by the tlsa table */
  }

  /* the options */
  check_table(L, 3);
  lua_pushnil(L);
  while (lua_next(L, 3)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    if (strcmp(k, keys[0]) != 0 && strcmp(k, keys[1]) != 0) {
      lua_pushfstring(L, "unknown option '%s'", k);
      argerr(L, 3, lua_tostring(L, -1));
    }
    lua_pop(L, 1);
  }
  if (lua_getfield(L, 3, "now") != LUA_TNUMBER) argerr(L, 3, "now must be an integer");
  now = lua_tointegerx(L, -1, &isint);
  if (!isint) argerr(L, 3, "now must be an integer");
  lua_pop(L, 1);
  if (lua_getfield(L, 3, "names") != LUA_TTABLE)
    argerr(L, 3, "names must be a list of 1 to 64 names");
  nnames = (lua_Integer)lua_rawlen(L, -1);
  if (nnames < 1 || nnames > DANE_NAMES_MAX) argerr(L, 3, "names must be a list of 1 to 64 names");
  names = lua_newuserdatauv(L, (size_t)nnames * sizeof *names, 0);
  for (i = 1; i <= nnames; i++) {
    lua_rawgeti(L, -2, i);
    names[i - 1] = plain_string(L, -1, 3, "names must be strings without NUL bytes");
    lua_pop(L, 1);   /* anchored by the names table, itself on the stack */
  }

  {
    dane_box *b = lua_touserdata(L, lua_upvalueindex(1));
    if (!b->ctx && mtasts_dane_ctx_new(&b->ctx, err) != 0)
      return luaL_error(L, "dane.verify: %s", err);   /* this host: memory */
    rc = mtasts_dane_verify(b->ctx, &chain, recs, (size_t)nrec, names, (size_t)nnames,
                            (int64_t)now, &res, err);
  }
  if (rc == -1) {
    lua_pushstring(L, err);
    return argerr(L, 3, lua_tostring(L, -1));
  }
  if (rc != 0) return luaL_error(L, "dane.verify: %s", err);   /* this host: memory */
  lua_pushboolean(L, res.ok);
  if (res.ok) {
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, res.usage);
    lua_setfield(L, -2, "usage");
    lua_pushinteger(L, res.selector);
    lua_setfield(L, -2, "selector");
    lua_pushinteger(L, res.mtype);
    lua_setfield(L, -2, "mtype");
    lua_pushinteger(L, res.depth);
    lua_setfield(L, -2, "depth");
  } else {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, res.result_type);
    lua_setfield(L, -2, "result_type");
    lua_pushstring(L, res.reason);
    lua_setfield(L, -2, "reason");
  }
  return 2;
}

void mtasts_open_dane(lua_State *L) {
  (void)mtasts_lua_newbox(L, sizeof(dane_box), DANEBOX_MT, danebox__gc);
  lua_pushcclosure(L, dane_verify, 1);
  lua_setfield(L, -2, "dane_verify");
}
