-- Helpers shared by the specs.
local _M = {}

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

--- The Lua command line that runs a script with the module under test (build/ or asan).
function _M.lua_cmd()
  local cpath = os.getenv("MTASTS_CPATH") or "./build/?.so"
  local pre = os.getenv("MTASTS_PRELOAD")
  local env = "env LUA_CPATH='" .. cpath .. ";;' " ..
    "LUA_PATH='./lua/?.lua;./lua/?/init.lua;./spec/?.lua;;' "
  if pre and pre ~= "" then
    env = env .. "LD_PRELOAD='" .. pre .. "' ASAN_OPTIONS=detect_leaks=0 "
  end
  return env .. "lua5.4"
end

--- The octal mode of a file, e.g. "700".
function _M.mode(path)
  return (_M.run("stat -c %a '" .. path .. "'"):gsub("%s+$", ""))
end

return _M
