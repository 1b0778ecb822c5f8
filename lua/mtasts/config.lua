--- mtasts.config: the operator's configuration file, /etc/mtasts/mtasts.conf. It is Lua
-- table syntax run in an empty sandbox: assignments of strings, numbers, booleans and tables,
-- nothing else (no functions, no library, a budget of instructions). Every setting is
-- checked against a fixed schema when the file is read: an unknown name, a wrong type or a
-- syntax error is a `config` failure naming the file, the line and the setting, before
-- anything is made. Values are checked further by the constructors they reach (a timeout of
-- 0, a port out of range), which name the option. Reference: docs/config.md.
local type, pairs, tostring, setmetatable, getmetatable = type, pairs, tostring,
  setmetatable, getmetatable
local math_type = math.type

local _M = { DEFAULT_PATH = "/etc/mtasts/mtasts.conf", MAX_SIZE = 1048576,
  BUDGET = 1000000, MEMORY = 64 * 1024 }   -- instructions; KiB the file may allocate

-- The kinds of value a setting takes; each returns true or a reason.
local function string_kind(v)
  return type(v) == "string" or "a string expected, got " .. type(v)
end
local function strings_kind(v)   -- a string, or a list of strings
  if type(v) == "string" then return true end
  if type(v) ~= "table" then return "a string or a list of strings expected, got " .. type(v) end
  local n = #v
  for k, s in pairs(v) do
    if math_type(k) ~= "integer" or k < 1 or k > n then
      return "a list of strings expected (key " .. tostring(k) .. " is not a list position)"
    end
    if type(s) ~= "string" then return "a list of strings expected, item " .. k .. " is " ..
      type(s) end
  end
  return true
end
local function number_kind(v)
  return type(v) == "number" or "a number expected, got " .. type(v)
end
local function integer_kind(v)
  return math_type(v) == "integer" or "an integer expected, got " ..
    (type(v) == "number" and tostring(v) or type(v))
end
local function boolean_kind(v)
  return type(v) == "boolean" or "true or false expected, got " .. type(v)
end
local function anchor_kind(v)   -- a file, or false for no DNSSEC validation
  return type(v) == "string" or v == false or "a file name or false expected, got " ..
    tostring(v)
end

-- A socketmap zone's options.
local ZONE = { strict_testing = boolean_kind, require_sni = boolean_kind,
  tlsrpt = boolean_kind, failure_level = string_kind, dane = boolean_kind }

-- The schema: a kind function, or a table of the settings of a section.
local SCHEMA = {
  db = string_kind, nameserver = strings_kind, trust_anchor = anchor_kind,
  cafile = string_kind, capath = string_kind, connect_to = strings_kind, timeout = number_kind,
  allow_private_addresses = boolean_kind, mode = string_kind, verbose = boolean_kind,
  postfix = { listen = strings_kind, socket_mode = string_kind, zones = "zones",
    syslog = boolean_kind, max_request = integer_kind, max_connections = integer_kind,
    max_lookups = integer_kind, metrics = strings_kind, metrics_on_socketmap = boolean_kind,
    policy = string_kind, policy_budget = number_kind, policy_exec = boolean_kind,
    refresh_interval = number_kind, tlsrpt_listen = string_kind },
  tlsrpt = { listen = string_kind, socket_mode = string_kind, socket_group = string_kind,
    syslog = boolean_kind, metrics = strings_kind },
  report = { submitter = string_kind, organization = string_kind, contact = string_kind,
    from = string_kind, sendmail = string_kind, window = number_kind,
    skip_without_failures = boolean_kind },
  refresh = { window = number_kind, concurrency = integer_kind },
  redis = { url = string_kind, sentinels = strings_kind, master = string_kind,
    username = string_kind, password_file = string_kind, sentinel_password_file = string_kind,
    cafile = string_kind, capath = string_kind, timeout = number_kind, prefix = string_kind,
    host = string_kind, ship_window = number_kind },
}

--- The names the schema knows, dotted ("postfix.listen"), sorted: for docs and `config check`.
function _M.names()
  local out = {}
  local function walk(t, prefix)
    for k, v in pairs(t) do
      if type(v) == "table" then walk(v, prefix .. k .. ".") else out[#out + 1] = prefix .. k end
    end
  end
  walk(SCHEMA, "")
  table.sort(out)
  return out
end

local function fail(where, key, reason)
  return nil, where .. ": " .. key .. ": " .. reason, "config", key
end

-- Check value `v` of setting `key` (dotted) against `kind`: true, or a reason and the dotted
-- name of the part that is wrong.
local function check(kind, v, key)
  if kind == "zones" then
    if type(v) ~= "table" then return "a table of zones expected, got " .. type(v), key end
    for name, z in pairs(v) do
      local zkey = key .. "[" .. tostring(name) .. "]"
      if type(name) ~= "string" or name == "" then
        return "zone names are non-empty strings ('*' is every other name)", key
      end
      if type(z) ~= "table" then return "a table of options expected, got " .. type(z), zkey end
      for opt, ov in pairs(z) do
        local f = ZONE[opt]
        if not f then return "unknown zone option '" .. tostring(opt) .. "'", zkey end
        local ok = f(ov)
        if ok ~= true then return ok, zkey .. "." .. opt end
      end
    end
    return true
  end
  if type(kind) == "table" then
    if type(v) ~= "table" then return "a table expected, got " .. type(v), key end
    for k, sv in pairs(v) do
      local sk = key .. "." .. tostring(k)
      if type(k) ~= "string" or kind[k] == nil then return "unknown setting", sk end
      local ok, bad = check(kind[k], sv, sk)
      if ok ~= true then return ok, bad end
    end
    return true
  end
  local ok = kind(v)
  if ok ~= true then return ok, key end
  return true
end

--- Read a configuration file. Returns the settings as a table (absent settings absent), or
-- nil, "<path>[:<line>]: <setting>: <reason>", "config", "<setting>". opts: optional = true
-- makes a missing file the empty configuration (the default path; a path the operator names
-- must exist).
function _M.load(path, opts)
  opts = opts or {}
  local f, oerr = io.open(path, "rb")
  if not f then
    if opts.optional and oerr and oerr:find("No such file", 1, true) then return {} end
    return nil, tostring(oerr), "config", "config"
  end
  local text = f:read(_M.MAX_SIZE + 1)
  f:close()
  if text == nil then text = "" end
  if #text > _M.MAX_SIZE then
    return nil, path .. ": larger than " .. _M.MAX_SIZE .. " bytes", "config", "config"
  end
  return _M.parse(text, path)
end

--- Parse configuration text (`name` names it in messages). Returns as `load`.
function _M.parse(text, name)
  name = name or "config"
  local values, lines = {}, {}
  -- assignments land here through __newindex, which knows the line; reading an unset name
  -- is an error (no library, no globals: a typo of a value is caught, not taken as nil)
  local env = setmetatable({}, {
    __newindex = function(_, k, v)
      local info = debug.getinfo(2, "l")
      if type(k) ~= "string" or SCHEMA[k] == nil then
        error({ line = info and info.currentline, key = tostring(k),
          reason = "unknown setting" }, 0)
      end
      if values[k] ~= nil then
        error({ line = info and info.currentline, key = k,
          reason = "set twice (first on line " .. tostring(lines[k]) .. ")" }, 0)
      end
      values[k], lines[k] = v, info and info.currentline
    end,
    __index = function(_, k)
      if values[k] ~= nil then return values[k] end   -- postfix.listen = ... after postfix = {}
      local info = debug.getinfo(2, "l")
      error({ line = info and info.currentline, key = tostring(k),
        reason = "is not a value (quote strings: \"...\")" }, 0)
    end,
  })
  local chunk, serr = load(text, "=" .. name, "t", env)
  if not chunk then
    -- "name:LINE: message": already names the file and line
    return nil, tostring(serr), "config", "config"
  end
  -- strings index the string library through their shared metatable (("x"):rep(2^40) is one
  -- C call the budget cannot stop): cut off while the file runs
  local string_meta = getmetatable("")
  local string_index = string_meta.__index
  -- checked every 10 instructions: the time a file takes, and the memory it makes (s .. s
  -- doubles a string in one instruction; a loop of them would fill the machine)
  local co = coroutine.create(chunk)
  local steps, base = 0, collectgarbage("count")
  debug.sethook(co, function()
    steps = steps + 10
    if steps > _M.BUDGET then
      error({ reason = "takes too long to read (a loop?)", key = "config" }, 0)
    end
    if collectgarbage("count") - base > _M.MEMORY then
      collectgarbage()
      if collectgarbage("count") - base > _M.MEMORY then
        error({ reason = "makes more than " .. _M.MEMORY // 1024 .. " MiB of data",
          key = "config" }, 0)
      end
    end
  end, "", 10)
  string_meta.__index = nil
  local ok, e = coroutine.resume(co)
  string_meta.__index = string_index
  if not ok then
    if type(e) == "table" then
      return nil, name .. (e.line and ":" .. e.line or "") .. ": " .. e.key .. ": " .. e.reason,
        "config", e.key
    end
    return nil, tostring(e), "config", "config"
  end
  if coroutine.status(co) ~= "dead" then
    return nil, name .. ": must not yield", "config", "config"
  end
  for k, v in pairs(values) do
    local reason, bad = check(SCHEMA[k], v, k)
    if reason ~= true then
      return fail(name .. (lines[k] and ":" .. lines[k] or ""), bad, reason)
    end
  end
  return values
end

return _M
