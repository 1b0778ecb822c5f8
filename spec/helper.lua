-- Loaded by busted before the specs (.busted "helper"). Shared helpers live in
-- spec/support/util.lua; this file makes sure the module under test is the built one.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path

-- Under `make asan` the sanitizer runtime is preloaded into lua5.4 (MTASTS_PRELOAD). The
-- commands specs run (sh, kill, pkill, nsd, nginx, openssl) must not inherit it: some
-- uninstrumented tools deadlock at start with it (pkill did). Lua processes that need it
-- get it back explicitly from support.util.lua_cmd().
if (os.getenv("MTASTS_PRELOAD") or "") ~= "" then
  local execute, popen = os.execute, io.popen
  local function clean(cmd)
    return "env -u LD_PRELOAD sh -c '" .. cmd:gsub("'", "'\\''") .. "'"
  end
  os.execute = function(cmd)   -- luacheck: ignore 122
    if cmd == nil then return execute() end
    return execute(clean(cmd))
  end
  io.popen = function(cmd, mode)   -- luacheck: ignore 122
    return popen(clean(cmd), mode)
  end
end
