/* lua_resolver.c: the mtasts.resolver class, binding resolver.c and rdata.c. Translate, and
 * do nothing else. Contract: docs/resolver.md; lifecycle: lua_util.h. */
#include "lua_util.h"
#include "rdata.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>   /* ns_t_*: RR types by name */
#include <string.h>
#include <unbound.h>

#define RESOLVER_MT "mtasts.resolver"
#define MAX_NAMESERVERS 16
#define MAX_STUBS 16          /* stub zone servers, all zones together */

typedef struct {
  mtasts_resolver *r;     /* first: NULL once closed (lua_util.h) */
  mtasts_buf txt;         /* scratch for TXT strings; freed in release */
} lresolver;

static int resolver_release(void *p, char *err) {
  lresolver *u = p;
  (void)err;
  mtasts_resolver_free(u->r);
  u->r = NULL;
  mtasts_buf_free(&u->txt);
  return 0;
}

static const mtasts_lua_class resolver_class = { RESOLVER_MT, resolver_release, NULL };

static lresolver *resolver_check(lua_State *L, int idx) {
  return mtasts_lua_class_check(L, idx, &resolver_class);
}


static const struct { const char *name; int type; } rrtypes[] = {
  { "A", ns_t_a }, { "CNAME", ns_t_cname }, { "MX", ns_t_mx }, { "TXT", ns_t_txt },
  { "AAAA", ns_t_aaaa }, { "TLSA", ns_t_tlsa },
  { NULL, 0 }
};

static const char *type_name(int t) {
  int i;
  for (i = 0; rrtypes[i].name; i++)
    if (rrtypes[i].type == t) return rrtypes[i].name;
  return "?";
}

/* stub = { [zone] = "IP@PORT" | { "IP@PORT", ... } } on top of the stack into o, one pair per
 * server: zones and addrs hold MAX_STUBS. The strings are anchored by the table, which stays
 * on the stack. */
static void read_stubs(lua_State *L, const char *fn, mtasts_resolver_opts *o, const char **zones,
                       const char **addrs) {
  int t = lua_gettop(L);
  o->stub_zones = zones;
  o->stub_addrs = addrs;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_Integer i, len = 1;
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "bad argument #1 to '%s' (stub: keys must be zone names)", fn);
    if (lua_type(L, -1) == LUA_TTABLE) len = luaL_len(L, -1);
    else if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "bad argument #1 to '%s' (stub: a zone's servers are a string or a table "
                 "of strings)", fn);
    for (i = 1; i <= len; i++) {
      if (o->n_stubs >= MAX_STUBS)
        luaL_error(L, "bad argument #1 to '%s' (stub: over %d servers)", fn, MAX_STUBS);
      if (lua_type(L, -1) == LUA_TTABLE) {
        if (lua_rawgeti(L, -1, i) != LUA_TSTRING)
          luaL_error(L, "bad argument #1 to '%s' (stub: a zone's servers are a string or a "
                     "table of strings)", fn);
        addrs[o->n_stubs] = lua_tostring(L, -1);
        lua_pop(L, 1);   /* anchored by the table */
      } else {
        addrs[o->n_stubs] = lua_tostring(L, -1);
      }
      zones[o->n_stubs++] = lua_tostring(L, -2);
    }
    lua_pop(L, 1);
  }
}

/* The options of resolver_new and resolver_check into o; ns holds the nameservers, zones and
 * addrs the stub zones. The values stay on the stack, anchoring the strings, until the C
 * function returns. */
static void read_opts(lua_State *L, const char *fn, mtasts_resolver_opts *o, const char **ns,
                      const char **zones, const char **addrs) {
  static const char *const keys[] = { "nameserver", "trust_anchor", "stub", NULL };
  memset(o, 0, sizeof *o);
  luaL_checktype(L, 1, LUA_TTABLE);
  mtasts_lua_opt_known(L, 1, fn, keys);
  o->n_nameservers = mtasts_lua_opt_strings(L, 1, "nameserver", ns, MAX_NAMESERVERS, fn);
  o->nameservers = ns;
  switch (lua_getfield(L, 1, "trust_anchor")) {
  case LUA_TNIL: break;
  case LUA_TBOOLEAN:
    if (lua_toboolean(L, -1))
      luaL_error(L, "bad argument #1 to '%s' (trust_anchor is a file or false)", fn);
    o->no_trust_anchor = 1;
    break;
  case LUA_TSTRING: o->trust_anchor = lua_tostring(L, -1); break;
  default:
    luaL_error(L, "bad argument #1 to '%s' (trust_anchor is a file or false)", fn);
  }
  switch (lua_getfield(L, 1, "stub")) {
  case LUA_TNIL: break;
  case LUA_TTABLE: read_stubs(L, fn, o, zones, addrs); break;
  default: luaL_error(L, "bad argument #1 to '%s' (stub must be a table)", fn);
  }
}

/* resolver_new{ nameserver = "IP@PORT" | { ... }, trust_anchor = file | false,
 *   stub = { [zone] = "IP@PORT" | { ... } } }
 *   -> resolver | fail (config, local) */
static int resolver_new(lua_State *L) {
  mtasts_resolver_opts o;
  const char *ns[MAX_NAMESERVERS], *zones[MAX_STUBS], *addrs[MAX_STUBS];
  char err[MTASTS_ERR_MAX];
  lresolver *u;
  int rc;
  read_opts(L, "resolver_new", &o, ns, zones, addrs);
  u = mtasts_lua_class_new(L, &resolver_class, sizeof *u);
  if ((rc = mtasts_resolver_new(&o, &u->r, err)) != 0) return mtasts_lua_fail_rc(L, rc, err);
  return 1;
}

/* resolver_check{ nameserver =, trust_anchor = } -> true | fail (config, local): the checks of
 * resolver_new, keeping nothing */
static int resolver_check_opts(lua_State *L) {
  mtasts_resolver_opts o;
  const char *ns[MAX_NAMESERVERS], *zones[MAX_STUBS], *addrs[MAX_STUBS];
  char err[MTASTS_ERR_MAX];
  int rc;
  read_opts(L, "resolver_check", &o, ns, zones, addrs);
  if ((rc = mtasts_resolver_check(&o, err)) != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* r:query(name, type, timeout) -> id | fail */
static int resolver_query(lua_State *L) {
  lresolver *u = resolver_check(L, 1);
  size_t n;
  const char *name = luaL_checklstring(L, 2, &n), *tn = luaL_checkstring(L, 3);
  double timeout = luaL_checknumber(L, 4);
  char err[MTASTS_ERR_MAX];
  int i, id, rc;
  for (i = 0; rrtypes[i].name; i++)
    if (strcmp(rrtypes[i].name, tn) == 0) break;
  if (!rrtypes[i].name) return luaL_argerror(L, 3, "type is A, AAAA, CNAME, MX, TXT or TLSA");
  if (timeout <= 0) return luaL_argerror(L, 4, "timeout must be positive");
  if (n == 0 || n > 255 || strlen(name) != n)
    return mtasts_lua_fail(L, "resolver: the name is empty, over 255 bytes or has a NUL byte",
                           "servfail");
  if ((rc = mtasts_resolver_query(u->r, name, rrtypes[i].type, timeout, &id, err)) != 0)
    return mtasts_lua_fail(L, err, rc == MTASTS_ELOCAL ? "local" : "servfail");
  lua_pushinteger(L, id);
  return 1;
}

/* r:fd() -> descriptor that becomes readable when answers are waiting */
static int resolver_fd(lua_State *L) {
  lua_pushinteger(L, mtasts_resolver_fd(resolver_check(L, 1)->r));
  return 1;
}

/* r:timeout() -> seconds until the next deadline, or nil when nothing is pending */
static int resolver_timeout(lua_State *L) {
  double t = mtasts_resolver_timeout(resolver_check(L, 1)->r);
  if (t < 0) lua_pushnil(L);
  else lua_pushnumber(L, t);
  return 1;
}

/* r:step() -> true | fail. Processes arrived answers and expires late queries. */
static int resolver_step(lua_State *L) {
  lresolver *u = resolver_check(L, 1);
  char err[MTASTS_ERR_MAX];
  int rc;
  if ((rc = mtasts_resolver_step(u->r, err)) != 0) return mtasts_lua_fail_rc(L, rc, err);
  lua_pushboolean(L, 1);
  return 1;
}

static const char *status_code(int s) {
  switch (s) {
  case MTASTS_DNS_OK: return "ok";
  case MTASTS_DNS_NXDOMAIN: return "nxdomain";
  case MTASTS_DNS_NODATA: return "nodata";
  case MTASTS_DNS_TIMEOUT: return "timeout";
  case MTASTS_DNS_BOGUS: return "bogus";
  case MTASTS_DNS_LOCAL: return "local";
  default: return "servfail";
  }
}

/* The records of an answer into the table on top, or a decoding error into q. */
static int push_records(lua_State *L, lresolver *u, mtasts_dns_query *q) {
  struct ub_result *res = q->result;
  char err[MTASTS_ERR_MAX];
  int i, n = 0;
  lua_newtable(L);
  for (i = 0; res && res->data[i]; i++) {
    const unsigned char *p = (const unsigned char *)res->data[i];
    size_t len = (size_t)res->len[i];
    switch (q->rrtype) {
    case ns_t_txt:
      if (mtasts_rdata_txt(p, len, &u->txt, err) != 0) goto bad;
      lua_pushlstring(L, (const char *)u->txt.p, u->txt.n);
      break;
    case ns_t_mx: {
      char host[MTASTS_NAME_MAX + 1];
      unsigned pref;
      if (mtasts_rdata_mx(p, len, &pref, host, err) != 0) goto bad;
      lua_createtable(L, 0, 2);
      lua_pushinteger(L, pref);
      lua_setfield(L, -2, "preference");
      lua_pushstring(L, host);
      lua_setfield(L, -2, "host");
      break;
    }
    case ns_t_tlsa: {
      unsigned usage, selector, mtype;
      mtasts_span data;
      if (mtasts_rdata_tlsa(p, len, &usage, &selector, &mtype, &data, err) != 0) goto bad;
      lua_createtable(L, 0, 4);
      lua_pushinteger(L, usage);
      lua_setfield(L, -2, "usage");
      lua_pushinteger(L, selector);
      lua_setfield(L, -2, "selector");
      lua_pushinteger(L, mtype);
      lua_setfield(L, -2, "mtype");
      lua_pushlstring(L, data.p, data.n);
      lua_setfield(L, -2, "data");
      break;
    }
    case ns_t_a: case ns_t_aaaa: {
      char addr[64];
      if (len != (q->rrtype == ns_t_a ? 4u : 16u) ||
          !inet_ntop(q->rrtype == ns_t_a ? AF_INET : AF_INET6, p, addr, sizeof addr)) {
        snprintf(err, sizeof err, "%s rdata of %zu bytes", type_name(q->rrtype), len);
        goto bad;
      }
      lua_pushstring(L, addr);
      break;
    }
    case ns_t_cname: {
      char name[MTASTS_NAME_MAX + 1];
      size_t used;
      if (mtasts_rdata_name(p, len, &used, name, err) != 0) goto bad;
      lua_pushstring(L, name);
      break;
    }
    default:
      lua_pushlstring(L, (const char *)p, len);
    }
    lua_rawseti(L, -2, ++n);
  }
  return 0;
bad:
  lua_pop(L, 1);
  q->status = MTASTS_DNS_ERROR;
  snprintf(q->why, sizeof q->why, "%.255s %s: %.200s", res && res->qname ? res->qname : "?",
           type_name(q->rrtype), err);
  return -1;
}

/* What DNSSEC said of an answer: "bogus" when validation failed; "secure" or "insecure" for
 * an answer with data, or a denial (NXDOMAIN, NODATA), libunbound's secure flag covering
 * every link of a CNAME chain; NULL when there was no answer to judge (a timeout, a
 * SERVFAIL, this host's failure, rdata that did not decode). */
static const char *dnssec_status(const mtasts_dns_query *q) {
  if (q->status == MTASTS_DNS_BOGUS) return "bogus";
  if (!q->result || (q->status != MTASTS_DNS_OK && q->status != MTASTS_DNS_NXDOMAIN &&
                     q->status != MTASTS_DNS_NODATA))
    return NULL;
  return q->result->secure ? "secure" : "insecure";
}

/* r:done() -> { { id =, type =, status =, secure =, dnssec =, records =, canonname =, name =,
 *   why = }, ... }
 * Every query answered (or timed out) since the last call, in order. */
static int resolver_done(lua_State *L) {
  lresolver *u = resolver_check(L, 1);
  mtasts_dns_query *q;
  const char *dnssec;
  int n = 0;
  lua_newtable(L);
  while ((q = mtasts_resolver_done(u->r)) != NULL) {
    /* the query stays owned by the resolver until its table is complete */
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, q->id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, type_name(q->rrtype));
    lua_setfield(L, -2, "type");
    if (q->status == MTASTS_DNS_OK && push_records(L, u, q) == 0)
      lua_setfield(L, -2, "records");
    lua_pushstring(L, status_code(q->status));
    lua_setfield(L, -2, "status");
    lua_pushboolean(L, q->result && q->result->secure);
    lua_setfield(L, -2, "secure");
    if ((dnssec = dnssec_status(q)) != NULL) {
      lua_pushstring(L, dnssec);
      lua_setfield(L, -2, "dnssec");
    }
    if (q->result && q->result->canonname) {
      lua_pushstring(L, q->result->canonname);
      lua_setfield(L, -2, "canonname");
    }
    if (q->result && q->result->qname) {
      lua_pushstring(L, q->result->qname);
      lua_setfield(L, -2, "name");
    }
    if (q->why[0]) {
      lua_pushstring(L, q->why);
      lua_setfield(L, -2, "why");
    }
    lua_rawseti(L, -2, ++n);
    mtasts_resolver_pop(u->r);
  }
  return 1;
}

/* r:cancel(id) */
static int resolver_cancel(lua_State *L) {
  lresolver *u = resolver_check(L, 1);   /* closed raises before a bad id does */
  mtasts_resolver_cancel(u->r, (int)luaL_checkinteger(L, 2));
  return 0;
}

/* r:pending() -> queries asked and not answered */
static int resolver_pending(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mtasts_resolver_pending(resolver_check(L, 1)->r));
  return 1;
}

void mtasts_open_resolver(lua_State *L) {
  static const luaL_Reg methods[] = {
    { "query", resolver_query },
    { "fd", resolver_fd },
    { "timeout", resolver_timeout },
    { "step", resolver_step },
    { "done", resolver_done },
    { "cancel", resolver_cancel },
    { "pending", resolver_pending },
    { NULL, NULL }
  };
  /* close comes with the class; the method table is kept as core.resolver_methods, so that
   * lua/mtasts/resolver.lua can add the blocking lookups */
  mtasts_lua_class_register(L, &resolver_class, methods);
  lua_setfield(L, -2, "resolver_methods");
  lua_pushcfunction(L, resolver_new);
  lua_setfield(L, -2, "resolver_new");
  lua_pushcfunction(L, resolver_check_opts);
  lua_setfield(L, -2, "resolver_check");
}
