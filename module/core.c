/* core.c: luaopen_mtasts_core, the one exported symbol. Builds the module table and lets
 * each binding file add its functions and classes. mtasts.core is internal: applications
 * use the Lua modules in lua/mtasts/. */
#define _GNU_SOURCE 1  /* dladdr */
#include "dane.h"
#include "lua_util.h"
#include "mtasts.h"

#include <curl/curl.h>
#include <db.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <idn2.h>
#include <lauxlib.h>
#include <lua.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unbound.h>
#include <zlib.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

/* poll(fd, events, timeout) -> true (ready) | false (timed out) | fail. events is "r", "w"
 * or "rw"; timeout in seconds, nil for none. The blocking default of the client's `wait`. */
static int core_poll(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  const char *ev = luaL_checkstring(L, 2);
  struct pollfd p;
  int ms = -1, rc;
  if (!lua_isnoneornil(L, 3)) {
    lua_Number t = luaL_checknumber(L, 3);
    ms = t <= 0 ? 0 : t > 86400 ? 86400000 : (int)(t * 1000 + 0.999);
  }
  p.fd = fd;
  p.events = (short)((strchr(ev, 'r') ? POLLIN : 0) | (strchr(ev, 'w') ? POLLOUT : 0));
  p.revents = 0;
  do rc = poll(&p, 1, ms); while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    char msg[128];
    snprintf(msg, sizeof msg, "poll: %s", strerror(errno));
    return mtasts_lua_fail(L, msg, "poll");
  }
  lua_pushboolean(L, rc > 0);
  return 1;
}

/* monotonic() -> seconds (float) on a clock that never jumps: for measuring durations in
 * tests and benchmarks. Policy logic takes its time from the client's clock instead. */
static int monotonic(lua_State *L) {
  lua_pushnumber(L, (lua_Number)mtasts_monotonic());
  return 1;
}

/* library_versions() -> { lua =, curl =, openssl =, bdb =, unbound =, idn2 =, zlib = }: the
 * versions of the libraries this process runs with (not those it was built against), for
 * `mtasts --version` and bug reports. */
static int library_versions(lua_State *L) {
  lua_createtable(L, 0, 7);
  lua_pushliteral(L, LUA_VERSION_MAJOR "." LUA_VERSION_MINOR);
  lua_setfield(L, -2, "lua");
  lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
  lua_setfield(L, -2, "curl");
  lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION_STRING));
  lua_setfield(L, -2, "openssl");
  {
    int major, minor, patch;
    (void)db_version(&major, &minor, &patch);
    lua_pushfstring(L, "%d.%d.%d", major, minor, patch);
  }
  lua_setfield(L, -2, "bdb");
  lua_pushstring(L, ub_version());
  lua_setfield(L, -2, "unbound");
  lua_pushstring(L, idn2_check_version(NULL));
  lua_setfield(L, -2, "idn2");
  lua_pushstring(L, zlibVersion());
  lua_setfield(L, -2, "zlib");
  return 1;
}

/* nofile([want]) -> soft, hard, open: the process's limit on open descriptors
 * (RLIMIT_NOFILE) and how many are open now (-1 when /proc is not there). With want, the soft
 * limit is first raised towards want (never above the hard limit, never lowered), as servers
 * do at start; a refusal leaves it as it was. */
static int nofile(lua_State *L) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    char msg[128];
    snprintf(msg, sizeof msg, "getrlimit: %s", strerror(errno));
    return mtasts_lua_fail(L, msg, "eio");
  }
  if (!lua_isnoneornil(L, 1)) {
    lua_Integer want = luaL_checkinteger(L, 1);
    rlim_t target = want < 0 ? 0 : (rlim_t)want;
    if (rl.rlim_max != RLIM_INFINITY && target > rl.rlim_max) target = rl.rlim_max;
    if (rl.rlim_cur != RLIM_INFINITY && target > rl.rlim_cur) {
      struct rlimit raised = rl;
      raised.rlim_cur = target;
      if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
    }
  }
  lua_pushinteger(L, rl.rlim_cur == RLIM_INFINITY ? LUA_MAXINTEGER : (lua_Integer)rl.rlim_cur);
  lua_pushinteger(L, rl.rlim_max == RLIM_INFINITY ? LUA_MAXINTEGER : (lua_Integer)rl.rlim_max);
  {
    DIR *d = opendir("/proc/self/fd");
    lua_Integer n = -1;
    if (d) {
      struct dirent *e;
      n = 0;
      while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
      closedir(d);
      n--;   /* the directory's own descriptor */
    }
    lua_pushinteger(L, n);
  }
  return 3;
}

/* trim() -> true | false: give the free memory of the C heap back to the system: glibc's
 * malloc_trim(0), which releases the free pages inside the heap, not only at its top. true
 * when some were released; false when none were, or the C library has no such call. For
 * servers, after lookups that fetched: the buffers of finished TLS transfers leave free
 * memory scattered through the heap that stays resident otherwise. */
static int trim(lua_State *L) {
#if defined(__GLIBC__)
  lua_pushboolean(L, malloc_trim(0));
#else
  lua_pushboolean(L, 0);
#endif
  return 1;
}

/* Keep this library loaded until the process ends: Lua unloads C modules when a state
 * closes, but libunbound's thread and libdb's handles of an abandoned environment
 * (env.c) may outlive the state, and their code and the list that holds those handles
 * must stay mapped. */
static void pin_module(void) {
  Dl_info info;
  if (dladdr((void *)pin_module, &info) && info.dli_fname)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

MTASTS_EXPORT int luaopen_mtasts_core(lua_State *L);
MTASTS_EXPORT int luaopen_mtasts_core(lua_State *L) {
  pin_module();
  lua_newtable(L);
  lua_pushliteral(L, MTASTS_VERSION);
  lua_setfield(L, -2, "version");
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, MTASTS_RECORD_MAX);
  lua_setfield(L, -2, "record_max");
  lua_pushinteger(L, MTASTS_POLICY_MAX);
  lua_setfield(L, -2, "policy_max");
  lua_pushinteger(L, MTASTS_MAX_AGE_MAX);
  lua_setfield(L, -2, "max_age_max");
  lua_pushinteger(L, MTASTS_NAME_MAX);
  lua_setfield(L, -2, "name_max");
  lua_setfield(L, -2, "limits");
  lua_pushcfunction(L, monotonic);
  lua_setfield(L, -2, "monotonic");
  lua_pushcfunction(L, core_poll);
  lua_setfield(L, -2, "poll");
  lua_pushcfunction(L, library_versions);
  lua_setfield(L, -2, "library_versions");
  lua_pushcfunction(L, nofile);
  lua_setfield(L, -2, "nofile");
  lua_pushcfunction(L, trim);
  lua_setfield(L, -2, "trim");
  mtasts_open_parse(L);
  mtasts_open_cache(L);
  mtasts_open_resolver(L);
  mtasts_open_fetch(L);
  mtasts_open_results(L);
  mtasts_open_collector(L);
  mtasts_open_dane(L);
  mtasts_open_redis(L);
  mtasts_open_net(L);
  return 1;
}
