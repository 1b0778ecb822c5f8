/* core.c: luaopen_mtasts_core, the one exported symbol. Builds the module table and lets
 * each binding file add its functions and classes. mtasts.core is internal: applications
 * use the Lua modules in lua/mtasts/. */
#include "mtasts.h"

#include <lauxlib.h>
#include <lua.h>
#include <time.h>

/* monotonic() -> seconds (float) on a clock that never jumps: for measuring durations in
 * tests and benchmarks. Policy logic takes its time from the client's clock instead. */
static int monotonic(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

MTASTS_EXPORT int luaopen_mtasts_core(lua_State *L);
MTASTS_EXPORT int luaopen_mtasts_core(lua_State *L) {
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
  mtasts_open_parse(L);
  mtasts_open_cache(L);
  return 1;
}
