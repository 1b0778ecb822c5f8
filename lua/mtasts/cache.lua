--- mtasts.cache: the policy cache as operators' tools see it, without DNS or HTTPS: read
-- rows, delete one, verify the files, rebuild a damaged cache. Lookups that fetch go through
-- the client (mtasts.open); this module never fetches. Reference: docs/cache.md.
local core = require("mtasts.core")

local type, error, setmetatable, getmetatable = type, error, setmetatable, getmetatable

local _M = {}
local Cache = {}
local cache_mt = { __index = Cache, __name = "mtasts.cache.reader" }

--- Open the cache in directory `path` (created if missing). Returns the cache, or
-- nil, message, code (docs/errors.md: eacces, eperm, corrupt, ...).
function _M.open(path)
  if type(path) ~= "string" then
    error("bad argument #1 to 'open' (string expected, got " .. type(path) .. ")", 2)
  end
  local c, err, code = core.cache_open(path)
  if not c then return nil, err, code end
  return setmetatable({ c = c, path = path }, cache_mt)
end

--- Rebuild a damaged cache (no process may have it open): salvages every readable row and
-- carries the result store over. Returns { salvaged =, skipped =, results =, stopped =,
-- moved_to = } or nil, message, code (ebusy while a process has it open).
function _M.rebuild(path)
  if type(path) ~= "string" then
    error("bad argument #1 to 'rebuild' (string expected, got " .. type(path) .. ")", 2)
  end
  return core.cache_rebuild(path)
end

local function inner(self, fn)
  if getmetatable(self) ~= cache_mt then
    error("bad self to '" .. fn .. "' (mtasts.cache.reader expected)", 3)
  end
  if not self.c then error("attempt to use a closed mtasts.cache.reader", 3) end
  return self.c
end

--- The row of `domain` (docs/cache.md shows one), or nil when there is none, or nil,
-- message, code. `now` (default os.time()) decides whether the row is still valid.
function Cache:row(domain, now)
  local c = inner(self, "row")
  local ascii, err, code = core.domain(domain)
  if not ascii then return nil, err, code end
  return c:lookup(ascii, now or os.time())
end

--- Every row, most recently used first; or nil, message, code.
function Cache:list() return inner(self, "list"):list() end

--- Delete the row of `domain`: true, false (there was none), or nil, message, code.
function Cache:delete(domain) return inner(self, "delete"):delete(domain) end

--- Check the files page by page: true, or nil, message, code.
function Cache:verify() return inner(self, "verify"):verify() end

--- Close: true, or nil, message, code; a second close returns true.
function Cache:close()
  local c = self.c
  if not c then return true end
  self.c = nil
  return c:close()
end
cache_mt.__close = Cache.close
cache_mt.__tostring = function(self)
  return "mtasts.cache.reader " .. (self.c and self.path or "(closed)")
end
cache_mt.__gc = Cache.close

return _M
