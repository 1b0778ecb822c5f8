-- Helpers shared by the specs.
local _M = {}

--- Run a shell command; returns its output and exit status.
function _M.run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local _, _, status = p:close()
  return out, status
end

--- A fresh temporary directory, removed by the returned cleanup function.
function _M.tmpdir()
  local out = _M.run("mktemp -d")
  local dir = out:gsub("%s+$", "")
  return dir, function() os.execute("rm -rf '" .. dir .. "'") end
end

return _M
