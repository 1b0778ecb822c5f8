-- Helpers shared by the specs, the demo and the benchmarks.
local _M = {}

-- Under `make asan` the sanitizer runtime is preloaded into lua5.4 (LD_PRELOAD). The commands
-- a Lua process here runs (sh, kill, ps, nsd, nginx, openssl) must not inherit it: some
-- uninstrumented tools deadlock at start with it (pkill and nsd did). Every process that
-- loads this module (busted through spec/helper.lua, examples/demo.lua, bench/) runs its
-- commands without it; Lua processes that need it get it back from _M.lua_cmd().
if (os.getenv("LD_PRELOAD") or "") ~= "" then   -- once per Lua state: require caches us
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

--- Run a shell command; returns its output (stdout and stderr) and exit status.
function _M.run(cmd)
  local p = assert(io.popen("{ " .. cmd .. "\n} 2>&1"))
  local out = p:read("a")
  local _, _, status = p:close()
  return out, status
end

--- A fresh temporary directory, removed by the returned cleanup function.
function _M.tmpdir()
  local out = _M.run("mktemp -d /tmp/mtasts-spec.XXXXXX")
  local dir = out:gsub("%s+$", "")
  return dir, function() os.execute("rm -rf '" .. dir .. "'") end
end

--- Write a file.
function _M.write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

--- Overwrite part of a file in place, as `dd conv=notrunc` does: data at byte offset.
function _M.overwrite(path, offset, data)
  local f = assert(io.open(path, "r+b"))
  assert(f:seek("set", offset))
  f:write(data)
  f:close()
end

local seed_value

--- The seed of the specs' random data and choices: MTASTS_SEED when set, else one from
-- /dev/urandom, chosen once per process and printed to stderr when first used, so that a
-- failing run replays with MTASTS_SEED=<seed>. Each call reseeds math.random with it: a test
-- that calls seed() first draws the same numbers whichever tests ran before it.
function _M.seed()
  if not seed_value then
    local env = os.getenv("MTASTS_SEED")
    if env and env ~= "" then
      seed_value = math.tointeger(tonumber(env)) or error("MTASTS_SEED is not an integer: " .. env)
    else
      local f = assert(io.open("/dev/urandom", "rb"))
      seed_value = string.unpack("<I4", f:read(4))
      f:close()
    end
    io.stderr:write(("\nMTASTS_SEED=%d (the specs' random data and choices; set it to replay)\n")
      :format(seed_value))
  end
  math.randomseed(seed_value)
  return seed_value
end

--- n random bytes from math.random (call seed() first): data a seed replays, unlike
-- /dev/urandom's.
function _M.random_bytes(n)
  local t = {}
  for i = 1, (n + 7) // 8 do t[i] = string.pack("<i8", math.random(0)) end
  return table.concat(t):sub(1, n)
end

--- How much longer than normal a timed assertion may take: MTASTS_TIME_SCALE (make valgrind
-- sets 20; memcheck runs code 10-50 times slower and one thread at a time). The properties
-- those assertions show (nothing blocks, timeouts hold) are measured by the normal run.
_M.TIME_SCALE = tonumber(os.getenv("MTASTS_TIME_SCALE")) or 1

--- seconds, scaled by TIME_SCALE.
function _M.within(seconds) return seconds * _M.TIME_SCALE end

--- The Lua command line that runs a script with the module under test (build/ or asan).
-- Under `make valgrind` (MTASTS_VALGRIND names a log directory) the script runs under memcheck
-- too, logging to a file of its own there, which the Makefile checks after the run.
function _M.lua_cmd()
  local cpath = os.getenv("MTASTS_CPATH") or "./build/?.so"
  local pre = os.getenv("MTASTS_PRELOAD")
  local vg = os.getenv("MTASTS_VALGRIND")
  local env = "env LUA_CPATH='" .. cpath .. ";;' " ..
    "LUA_PATH='./lua/?.lua;./lua/?/init.lua;./spec/?.lua;;' "
  if pre and pre ~= "" then
    env = env .. "LD_PRELOAD='" .. pre .. "' ASAN_OPTIONS=detect_leaks=0 "
  end
  if vg and vg ~= "" then
    env = env .. "valgrind -q --keep-debuginfo=yes --suppressions=scripts/valgrind.supp " ..
      "--leak-check=full " ..
      "--show-leak-kinds=definite --errors-for-leak-kinds=definite --log-file=" .. vg ..
      "/child-%p.log "
  end
  return env .. "lua5.4"
end

--- The octal mode of a file, e.g. "700".
function _M.mode(path)
  return (_M.run("stat -c %a '" .. path .. "'"):gsub("%s+$", ""))
end

return _M
