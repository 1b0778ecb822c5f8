/* lua_collector.c: the mtasts.collector class (collector.c) and dgram_parse (dgram.c).
 * Translate, and do nothing else. Contract: docs/tlsrpt-collector.md; lifecycle:
 * lua_util.h. */
#include "collector.h"
#include "lua_util.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define COLLECTOR_MT "mtasts.collector"

typedef struct {
  mtasts_collector *c;    /* first: NULL once closed (lua_util.h) */
  char path[110];
} lcollector;

static int collector_release(void *p, char *err) {
  lcollector *u = p;
  (void)err;
  if (u->c) mtasts_collector_free(u->c);
  u->c = NULL;
  return 0;
}

static const char *collector_label(const void *p) { return ((const lcollector *)p)->path; }

static const mtasts_lua_class collector_class = { COLLECTOR_MT, collector_release,
                                                  collector_label };

static void push_str(lua_State *L, mtasts_dgram_str s) { lua_pushlstring(L, s.p, s.n); }

static void push_list(lua_State *L, const unsigned char *p, uint32_t n) {
  uint32_t i;
  lua_createtable(L, (int)(n > 1024 ? 1024 : n), 0);
  for (i = 0; i < n; i++) {
    push_str(L, mtasts_dgram_next(&p));
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

static const char *const detail_keys[6] = { "sending_mta_ip", "receiving_mx_hostname",
  "receiving_mx_helo", "receiving_ip", "additional_information", "failure_reason_code" };

/* Push one entry as { domain =, record =, result = { policy =, summary =, failures = } }:
 * what store:add takes (docs/tlsrpt-collector.md). */
static int push_entry(lua_State *L, const unsigned char *key, size_t n, uint64_t a, uint64_t b) {
  mtasts_dgram_view v;
  int i;
  if (mtasts_dgram_decode(key, n, &v) != 0) return -1;
  lua_createtable(L, 0, 3);
  push_str(L, v.d);
  lua_setfield(L, -2, "domain");
  if (v.has_pr) {
    push_str(L, v.pr);
    lua_setfield(L, -2, "record");
  }
  lua_createtable(L, 0, 3);                        /* result */
  lua_createtable(L, 0, 4);                        /* policy */
  lua_pushstring(L, mtasts_dgram_policy_type(v.type));
  lua_setfield(L, -2, "type");
  push_str(L, v.pdomain);
  lua_setfield(L, -2, "domain");
  push_list(L, v.strings, v.nstrings);
  lua_setfield(L, -2, "strings");
  push_list(L, v.mx, v.nmx);
  lua_setfield(L, -2, "mx_host");
  lua_setfield(L, -2, "policy");
  lua_createtable(L, 0, 2);                        /* summary */
  lua_pushinteger(L, v.kind == 'S' ? (lua_Integer)(a > INT64_MAX ? INT64_MAX : a) : 0);
  lua_setfield(L, -2, "success");
  lua_pushinteger(L, v.kind == 'S' ? (lua_Integer)(b > INT64_MAX ? INT64_MAX : b) : 0);
  lua_setfield(L, -2, "failure");
  lua_setfield(L, -2, "summary");
  lua_createtable(L, v.kind == 'D', 0);            /* failures */
  if (v.kind == 'D') {
    lua_createtable(L, 0, 8);
    lua_pushstring(L, mtasts_dgram_result_type(v.code));
    lua_setfield(L, -2, "result_type");
    for (i = 0; i < 6; i++)
      if (v.has[i]) {
        push_str(L, v.field[i]);
        lua_setfield(L, -2, detail_keys[i]);
      }
    lua_pushinteger(L, (lua_Integer)(a > INT64_MAX ? INT64_MAX : a));
    lua_setfield(L, -2, "count");
    lua_rawseti(L, -2, 1);
  }
  lua_setfield(L, -2, "failures");
  lua_setfield(L, -2, "result");
  return 0;
}

static int dgram_gc(lua_State *L) {
  mtasts_dgram_free(lua_touserdata(L, 1));
  return 0;
}

/* dgram_parse(s) -> entries, info | nil, message, reason: one datagram, for specs and tools */
static int core_dgram_parse(lua_State *L) {
  size_t n, i;
  const char *s = luaL_checklstring(L, 1, &n);
  char err[200];
  mtasts_dgram *dp = mtasts_lua_newbox(L, sizeof *dp, "mtasts.dgram", dgram_gc), d;
  int rc;
  rc = mtasts_dgram_parse((const unsigned char *)s, n, dp, err, sizeof err);
  d = *dp;
  if (rc) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushstring(L, mtasts_dgram_reason(rc));
    return 3;
  }
  /* a box frees d if a push raises */
  lua_createtable(L, (int)d.n, 0);
  for (i = 0; i < d.n; i++) {
    const mtasts_dgram_entry *e = (const mtasts_dgram_entry *)d.ents.p + i;
    if (!lua_checkstack(L, 8) || push_entry(L, d.keys.p + e->off, e->len, e->a, e->b) != 0)
      return luaL_error(L, "dgram_parse: an entry does not decode");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, d.sessions);
  lua_setfield(L, -2, "sessions");
  lua_pushinteger(L, d.repaired);
  lua_setfield(L, -2, "repaired");
  lua_pushinteger(L, d.t_mismatch);
  lua_setfield(L, -2, "t_mismatch");
  lua_pushinteger(L, d.unknown_type);
  lua_setfield(L, -2, "unknown_type");
  return 2;
}

static void push_u64_hex(lua_State *L, uint64_t v) {
  char b[17];
  snprintf(b, sizeof b, "%016" PRIx64, v);
  lua_pushstring(L, b);
}

/* collector_open{path =, mode =, gid =, rcvbuf =, state =} -> collector, info | fail */
static int collector_open(lua_State *L) {
  static const char *const keys[] = {"path", "mode", "gid", "rcvbuf", "state", NULL};
  mtasts_collector_opts o;
  char err[MTASTS_ERR_MAX];
  uint64_t inst, pinst, pacc;
  lcollector *u;
  int rc;
  luaL_checktype(L, 1, LUA_TTABLE);
  mtasts_lua_opt_known(L, 1, "collector_open", keys);
  memset(&o, 0, sizeof o);
  o.path = mtasts_lua_opt_string(L, 1, "path", "collector_open");
  luaL_argcheck(L, o.path != NULL, 1, "path is required");
  o.state = mtasts_lua_opt_string(L, 1, "state", "collector_open");
  lua_getfield(L, 1, "mode");
  o.mode = (unsigned)luaL_optinteger(L, -1, 0660);
  lua_getfield(L, 1, "gid");
  o.gid = (long)luaL_optinteger(L, -1, -1);
  lua_getfield(L, 1, "rcvbuf");
  o.rcvbuf = (int)luaL_optinteger(L, -1, 0);
  lua_pop(L, 3);
  luaL_argcheck(L, o.mode <= 0777, 1, "mode out of range");
  u = mtasts_lua_class_new(L, &collector_class, sizeof *u);
  snprintf(u->path, sizeof u->path, "%s", o.path);
  if ((rc = mtasts_collector_open(&o, &u->c, &inst, &pinst, &pacc, err)) != 0)
    return mtasts_lua_fail_rc(L, rc, err);
  lua_createtable(L, 0, 3);
  push_u64_hex(L, inst);
  lua_setfield(L, -2, "instance");
  if (pinst) {
    push_u64_hex(L, pinst);
    lua_setfield(L, -2, "previous_instance");
    lua_pushinteger(L, (lua_Integer)(pacc > INT64_MAX ? INT64_MAX : pacc));
    lua_setfield(L, -2, "previous_accepted");
  }
  return 2;
}

static lcollector *collector_check(lua_State *L) {
  return mtasts_lua_class_check(L, 1, &collector_class);
}


/* c:take() -> entries, datagrams | fail */
static int collector_take(lua_State *L) {
  lcollector *u = collector_check(L);
  mtasts_buf *b = mtasts_lua_newbuf(L);
  size_t n, i, at = 0;
  uint64_t dg;
  if (mtasts_collector_take(u->c, b, &n, &dg) != 0) return mtasts_lua_fail(L, "out of memory", "enomem");
  lua_createtable(L, (int)(n > 100000 ? 100000 : n), 0);
  for (i = 0; i < n; i++) {
    uint32_t kn = mtasts_get_u32(b->p + at);
    const unsigned char *k = b->p + at + 4;
    uint64_t a = mtasts_get_u64(k + kn), bb = mtasts_get_u64(k + kn + 8);
    if (push_entry(L, k, kn, a, bb) != 0) return luaL_error(L, "take: an entry does not decode");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
    at += 20 + kn;
  }
  lua_pushinteger(L, (lua_Integer)(dg > INT64_MAX ? INT64_MAX : dg));
  return 2;
}

#define SETU(name, v) (lua_pushinteger(L, (lua_Integer)((v) > INT64_MAX ? INT64_MAX : (v))), \
                       lua_setfield(L, -2, name))

/* c:stats() -> { received =, accepted =, ..., rejected = { reason = n }, last = } */
static int collector_stats(lua_State *L) {
  lcollector *u = collector_check(L);
  mtasts_collector_stats s;
  char last[320];
  int i;
  mtasts_collector_counters(u->c, &s, last, sizeof last);
  lua_createtable(L, 0, 16);
  SETU("received", s.received);
  SETU("accepted", s.accepted);
  SETU("sessions", s.sessions);
  SETU("bytes", s.bytes);
  SETU("reads", s.reads);
  SETU("oversized", s.oversized);
  SETU("overflow", s.overflow);
  SETU("repaired", s.repaired);
  SETU("t_mismatch", s.t_mismatch);
  SETU("unknown_type", s.unknown_type);
  SETU("last_seq", s.last_seq);
  lua_pushinteger(L, s.qlen);
  lua_setfield(L, -2, "qlen");
  lua_pushinteger(L, s.rcvbuf);
  lua_setfield(L, -2, "rcvbuf");
  lua_pushboolean(L, s.rt);
  lua_setfield(L, -2, "rt");
  lua_createtable(L, 0, MTASTS_DGRAM_NREASONS);
  for (i = 1; i < MTASTS_DGRAM_NREASONS; i++) {
    lua_pushinteger(L, (lua_Integer)s.rejected[i]);
    lua_setfield(L, -2, mtasts_dgram_reason(i));
  }
  lua_setfield(L, -2, "rejected");
  if (last[0]) {
    lua_pushstring(L, last);
    lua_setfield(L, -2, "last");
  }
  return 1;
}

/* c:stop(): the socket file removed, the queue read, the thread stopped (take() still works) */
static int collector_stop(lua_State *L) {
  lcollector *u = collector_check(L);
  mtasts_collector_stop(u->c);
  lua_pushboolean(L, 1);
  return 1;
}

void mtasts_open_collector(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"take", collector_take}, {"stats", collector_stats}, {"stop", collector_stop},
    {NULL, NULL}};
  mtasts_lua_class_register(L, &collector_class, methods);
  lua_pop(L, 1);
  lua_pushcfunction(L, collector_open);
  lua_setfield(L, -2, "collector_open");
  lua_pushcfunction(L, core_dgram_parse);
  lua_setfield(L, -2, "dgram_parse");
}
