/* libFuzzer harness: the parsers written in Lua, run in an embedded Lua 5.4 with mtasts.core
 * linked in. The first byte picks the parser:
 *   0  tlsrpt.parse_report (incoming TLS reports: JSON, gzip, MIME messages)
 *   1  mtasts.postfix netstring_decode and key_domain (socketmap requests)
 *   2  mtasts.opensmtpd filter lines (the smtpd protocol, one line per "\n")
 * Properties: nothing raises; an accepted report encodes to JSON that parses back to the same
 * JSON; decoded netstrings, one after another, re-encode to the bytes they consumed (the
 * server reads with the same function, by position). A violation aborts. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int luaopen_mtasts_core(lua_State *L);
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static int fuzz_ref;

static const char *CHUNK =
  "package.path = './lua/?.lua;./lua/?/init.lua;' .. package.path\n"
  "local tlsrpt = require('mtasts.tlsrpt')\n"
  "local json = require('mtasts.json')\n"
  "local postfix = require('mtasts.postfix')\n"
  "local opensmtpd = require('mtasts.opensmtpd')\n"
  "return function(kind, data)\n"
  "  if kind == 0 then\n"
  "    local r, msg, code = tlsrpt.parse_report(data)\n"
  "    if r then\n"
  "      local t = json.encode(r)\n"
  "      local r2, m2 = tlsrpt.parse_report(t)\n"
  "      assert(r2, 'an accepted report does not parse back: ' .. tostring(m2))\n"
  "      assert(json.encode(r2) == t, 'a report changes when parsed back')\n"
  "    else\n"
  "      assert(type(msg) == 'string' and type(code) == 'string', 'failure without message')\n"
  "    end\n"
  "  elseif kind == 1 then\n"
  "    local v, rest, err = postfix.netstring_decode(data, 2048)\n"
  "    if v then assert(postfix.netstring(v) .. rest == data, 'netstring round trip') end\n"
  "    if err then assert(type(err) == 'string') end\n"
  "    local buf, taken = data, {}\n"
  "    while true do\n"
  "      local dv, drest = postfix.netstring_decode(buf, 2048)\n"
  "      if not dv then break end\n"
  "      taken[#taken + 1] = postfix.netstring(dv)\n"
  "      assert(table.concat(taken) .. drest == data, 'netstrings in a row')\n"
  "      buf = drest\n"
  "    end\n"
  "    postfix.key_domain(data)\n"
  "  else\n"
  "    local out = {}\n"
  "    local f = opensmtpd.new{ addresses = { 'tlsrpt@example.org', '@r.example' },\n"
  "      write = function(l) out[#out + 1] = l end, max_held = 4096 }\n"
  "    for line in (data .. '\\n'):gmatch('([^\\n]*)\\n') do f:line(line) end\n"
  "  end\n"
  "end\n";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "mtasts.core", luaopen_mtasts_core, 0);
  lua_pop(L, 1);
  if (luaL_loadstring(L, CHUNK) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_lua: %s\n", lua_tostring(L, -1));
    abort();
  }
  fuzz_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!L) LLVMFuzzerInitialize(NULL, NULL);
  if (size < 1) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, fuzz_ref);
  lua_pushinteger(L, data[0] % 3);
  lua_pushlstring(L, (const char *)data + 1, size - 1);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_lua: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
