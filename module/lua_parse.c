/* lua_parse.c: Lua bindings of parse.c and domain.c. Translate, and do nothing else.
 * Contract: docs/parsing.md and docs/architecture.md ("Public contract"); errors:
 * docs/errors.md. */
#include "lua_util.h"
#include "mtasts.h"

#include <stdio.h>
#include <string.h>

#define PARSEBOX_MT "mtasts.parsebox"

/* A parse result's arrays are malloc'd by parse.c. They live in this box, a userdata with a
 * __gc, so that nothing unanchored is held while results are pushed (any push can raise). */
enum { BOX_EMPTY, BOX_RECORD, BOX_POLICY, BOX_TLSRPT };
typedef struct {
  int kind;
  union { mtasts_record r; mtasts_policy p; mtasts_tlsrpt_record t; } u;
} parse_box;

static void box_release(parse_box *b) {
  switch (b->kind) {
  case BOX_RECORD: mtasts_record_free(&b->u.r); break;
  case BOX_POLICY: mtasts_policy_free(&b->u.p); break;
  case BOX_TLSRPT: mtasts_tlsrpt_record_free(&b->u.t); break;
  default: break;
  }
  b->kind = BOX_EMPTY;
}

static int parsebox__gc(lua_State *L) {
  box_release(luaL_checkudata(L, 1, PARSEBOX_MT));
  return 0;
}

static parse_box *box_new(lua_State *L, int kind) {
  parse_box *b = mtasts_lua_newbox(L, sizeof *b, PARSEBOX_MT, parsebox__gc);
  b->kind = kind;
  return b;
}

static const char *check_bytes(lua_State *L, int arg, size_t *n) {
  luaL_checktype(L, arg, LUA_TSTRING);
  return lua_tolstring(L, arg, n);
}

static void push_span(lua_State *L, mtasts_span s) { lua_pushlstring(L, s.p, s.n); }

static void push_lower(lua_State *L, mtasts_span s) {
  luaL_Buffer b;
  size_t i;
  char *p = luaL_buffinitsize(L, &b, s.n);
  for (i = 0; i < s.n; i++) {
    unsigned char c = (unsigned char)s.p[i];
    p[i] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
  }
  luaL_pushresultsize(&b, s.n);
}

/* extensions = { {key=, value=}, ... } set on the table on top */
static void set_extensions(lua_State *L, const mtasts_kvs *ext) {
  size_t i;
  lua_createtable(L, (int)ext->n, 0);
  for (i = 0; i < ext->n; i++) {
    lua_createtable(L, 0, 2);
    push_span(L, ext->v[i].key);
    lua_setfield(L, -2, "key");
    push_span(L, ext->v[i].value);
    lua_setfield(L, -2, "value");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "extensions");
}

static int oom(lua_State *L) { return luaL_error(L, "not enough memory"); }

/* parse_record(txt) -> {version=, id=, extensions=} | fail "record-syntax" */
static int parse_record(lua_State *L) {
  size_t n;
  const char *s = check_bytes(L, 1, &n);
  char err[MTASTS_ERR_MAX];
  parse_box *b = box_new(L, BOX_RECORD);
  int rc = mtasts_parse_record(s, n, &b->u.r, err);
  if (rc == -2) return oom(L);
  if (rc != 0) return mtasts_lua_fail(L, err, "record-syntax");
  lua_createtable(L, 0, 3);
  lua_pushliteral(L, "STSv1");
  lua_setfield(L, -2, "version");
  push_span(L, b->u.r.id);
  lua_setfield(L, -2, "id");
  set_extensions(L, &b->u.r.ext);
  box_release(b);
  return 1;
}

/* parse_policy(text) -> {version=, mode=, max_age=, mx=, extensions=} | fail "policy-syntax" */
static int parse_policy(lua_State *L) {
  size_t n, i;
  const char *s = check_bytes(L, 1, &n);
  char err[MTASTS_ERR_MAX];
  parse_box *b = box_new(L, BOX_POLICY);
  mtasts_policy *p = &b->u.p;
  int rc = mtasts_parse_policy(s, n, p, err);
  if (rc == -2) return oom(L);
  if (rc != 0) return mtasts_lua_fail(L, err, "policy-syntax");
  lua_createtable(L, 0, 5);
  lua_pushliteral(L, "STSv1");
  lua_setfield(L, -2, "version");
  lua_pushstring(L, mtasts_mode_name(p->mode));
  lua_setfield(L, -2, "mode");
  lua_pushinteger(L, (lua_Integer)p->max_age);
  lua_setfield(L, -2, "max_age");
  lua_createtable(L, (int)p->mx.n, 0);
  for (i = 0; i < p->mx.n; i++) {
    push_lower(L, p->mx.v[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "mx");
  set_extensions(L, &p->ext);
  box_release(b);
  return 1;
}

/* parse_tlsrpt_record(txt) -> {version=, rua=, extensions=} | fail "record-syntax" */
static int parse_tlsrpt_record(lua_State *L) {
  size_t n, i;
  const char *s = check_bytes(L, 1, &n);
  char err[MTASTS_ERR_MAX];
  parse_box *b = box_new(L, BOX_TLSRPT);
  int rc = mtasts_parse_tlsrpt_record(s, n, &b->u.t, err);
  if (rc == -2) return oom(L);
  if (rc != 0) return mtasts_lua_fail(L, err, "record-syntax");
  lua_createtable(L, 0, 3);
  lua_pushliteral(L, "TLSRPTv1");
  lua_setfield(L, -2, "version");
  lua_createtable(L, (int)b->u.t.rua.n, 0);
  for (i = 0; i < b->u.t.rua.n; i++) {
    push_span(L, b->u.t.rua.v[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "rua");
  set_extensions(L, &b->u.t.ext);
  box_release(b);
  return 1;
}

/* is_sts_record(txt) -> boolean; is_tlsrpt_record(txt) -> boolean */
static int is_sts_record(lua_State *L) {
  size_t n;
  const char *s = check_bytes(L, 1, &n);
  lua_pushboolean(L, mtasts_is_sts_record(s, n));
  return 1;
}

static int is_tlsrpt_record(lua_State *L) {
  size_t n;
  const char *s = check_bytes(L, 1, &n);
  lua_pushboolean(L, mtasts_is_tlsrpt_record(s, n));
  return 1;
}

/* domain(name) -> ascii, unicode | fail "domain-syntax" */
static int domain(lua_State *L) {
  size_t n;
  const char *s = check_bytes(L, 1, &n);
  char ascii[MTASTS_NAME_MAX + 1], uni[MTASTS_UNAME_MAX], err[MTASTS_ERR_MAX];
  if (mtasts_domain_ascii(s, n, ascii, err) != 0 || mtasts_domain_unicode(ascii, uni, err) != 0)
    return mtasts_lua_fail(L, err, "domain-syntax");
  lua_pushstring(L, ascii);
  lua_pushstring(L, uni);
  return 2;
}

/* mailto_address(uri) -> address | fail "record-syntax": the percent-decoded addr-spec of a
 * mailto: URI, checked as the rua parser checks it. */
static int mailto_address(lua_State *L) {
  size_t n, an;
  const char *s = check_bytes(L, 1, &n), *why;
  char addr[MTASTS_MAILTO_MAX + 1], err[MTASTS_ERR_MAX], q[4 * 64 + 4];
  if (!mtasts_mailto_address(s, n, addr, &an, &why)) {
    mtasts_quote(q, sizeof q, s, n, 64);
    snprintf(err, sizeof err, "mailto URI '%s' %s", q, why);
    return mtasts_lua_fail(L, err, "record-syntax");
  }
  lua_pushlstring(L, addr, an);
  return 1;
}

/* matches(policy, host) -> boolean. policy is a table with an mx array of patterns. */
static int matches(lua_State *L) {
  size_t n, i, len;
  const char *host = check_bytes(L, 2, &n);
  char ascii[MTASTS_NAME_MAX + 1], err[MTASTS_ERR_MAX];
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_getfield(L, 1, "mx") != LUA_TTABLE)
    return luaL_argerror(L, 1, "policy.mx must be a table of patterns");
  if (mtasts_domain_ascii(host, n, ascii, err) != 0) {
    lua_pushboolean(L, 0);  /* a host that is no valid name matches nothing */
    return 1;
  }
  len = (size_t)luaL_len(L, 3);
  for (i = 1; i <= len; i++) {
    size_t pn;
    const char *pat;
    if (lua_rawgeti(L, 3, (lua_Integer)i) != LUA_TSTRING)
      return luaL_error(L, "bad argument #1 to 'matches' (policy.mx[%d] is not a string)", (int)i);
    pat = lua_tolstring(L, -1, &pn);
    if (mtasts_match(pat, pn, ascii, strlen(ascii))) {
      lua_pushboolean(L, 1);
      return 1;
    }
    lua_pop(L, 1);
  }
  lua_pushboolean(L, 0);
  return 1;
}

void mtasts_open_parse(lua_State *L) {
  static const luaL_Reg f[] = {
    { "parse_record", parse_record },
    { "parse_policy", parse_policy },
    { "parse_tlsrpt_record", parse_tlsrpt_record },
    { "is_sts_record", is_sts_record },
    { "is_tlsrpt_record", is_tlsrpt_record },
    { "domain", domain },
    { "matches", matches },
    { "mailto_address", mailto_address },
    { NULL, NULL }
  };
  luaL_setfuncs(L, f, 0);
}
