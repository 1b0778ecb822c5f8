--- mtasts.cache: the policy cache as operators' tools see it, without DNS or HTTPS: read
-- rows, delete one, verify the files, rebuild a damaged cache. Lookups that fetch go through
-- the client (mtasts.open); this module never fetches. Reference: docs/cache.md.
local core = require("mtasts.core")
local settings = require("mtasts.settings")

local type, error, setmetatable, getmetatable, pairs, tostring = type, error, setmetatable,
  getmetatable, pairs, tostring

local _M = {}
local Cache = {}
local cache_mt = { __index = Cache, __name = "mtasts.cache.reader" }

-- The options of open and rebuild ({ mode = "0660" }): the mode as a number (nil when not
-- given), or a config failure. Misuse raises.
local function mode_of(fn, path, opts)
  if type(path) ~= "string" then
    error("bad argument #1 to '" .. fn .. "' (string expected, got " .. type(path) .. ")", 3)
  end
  if opts == nil then return true end
  if type(opts) ~= "table" then
    error("bad argument #2 to '" .. fn .. "' (table expected, got " .. type(opts) .. ")", 3)
  end
  for k in pairs(opts) do
    if k ~= "mode" then
      error("bad argument #2 to '" .. fn .. "' (unknown option '" .. tostring(k) .. "')", 3)
    end
  end
  if opts.mode ~= nil and type(opts.mode) ~= "string" then
    error("bad argument #2 to '" .. fn .. "' (mode must be a string)", 3)
  end
  return settings.mode("mode", opts.mode)
end

--- Open the cache in directory `path` (created if missing). opts: { mode = "0660" } for the
-- files this process makes (docs/cache.md "Files"). Returns the cache, or nil, message,
-- code (docs/errors.md: eacces, eperm, corrupt, config, ...).
function _M.open(path, opts)
  local ok, mode, code, key = mode_of("open", path, opts)
  if not ok then return nil, mode, code, key end
  local c, err
  c, err, code = core.cache_open(path, mode)
  if not c then return nil, err, code end
  return setmetatable({ c = c, path = path }, cache_mt)
end

--- Rebuild a damaged cache (no process may have it open): salvages every readable row and
-- carries the result store over; the new directory keeps the old one's owner (as root),
-- group and modes (opts.mode sets the files' mode instead). Returns { salvaged =, skipped =,
-- results =, stopped =, moved_to = } or nil, message, code (ebusy while a process has it
-- open).
function _M.rebuild(path, opts)
  local ok, mode, code, key = mode_of("rebuild", path, opts)
  if not ok then return nil, mode, code, key end
  return core.cache_rebuild(path, mode)
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
