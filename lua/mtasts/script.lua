--- mtasts.script: the operator's policy script, Lua that changes decisions without changing
-- mtasts. The file returns a table of optional hook functions (HOOKS below); each call runs
-- sandboxed (no io, no os.execute, no require unless the operator opts in with
-- `allow_exec`), within a time budget, and an error or an overrun is logged and gives the
-- caller's default: a broken script never crashes the host and never weakens a decision by
-- failing. Reloading keeps the previous script when the new one fails to load.
-- Reference: docs/script.md.
local type, pairs, tostring, error, setmetatable = type, pairs, tostring, error, setmetatable
local core = require("mtasts.core")

-- The error a call over its budget raises; the sandbox's pcall and xpcall pass it on, so a
-- script cannot catch it and loop on.
local OVERRUN = setmetatable({}, { __tostring = function() return "ran over its budget" end })

local function guarded_pcall(f, ...)
  local r = table.pack(pcall(f, ...))
  if not r[1] and r[2] == OVERRUN then error(OVERRUN, 0) end
  return table.unpack(r, 1, r.n)
end

local function guarded_xpcall(f, handler, ...)
  local r = table.pack(xpcall(f, function(e)
    if e == OVERRUN then return OVERRUN end
    return handler(e)
  end, ...))
  if not r[1] and r[2] == OVERRUN then error(OVERRUN, 0) end
  return table.unpack(r, 1, r.n)
end

local _M = { DEFAULT_BUDGET = 0.05, LOAD_BUDGET = 1, CHECK_EVERY = 1000 }

-- The hooks a script may define; any other key is a mistake (a typo would silently do
-- nothing).
_M.HOOKS = { answer = true, on_failure = true }

local function copy_lib(lib, names)
  local t = {}
  for _, n in pairs(names) do t[n] = lib[n] end
  return t
end

-- A value as messages show it: strings, numbers and booleans as they are (cut), anything else
-- by its type alone (a table's __tostring is the script's code, run outside its budget).
local function show(v)
  local t = type(v)
  if t == "string" then return v:sub(1, 200) end
  if t == "number" or t == "boolean" or t == "nil" then return tostring(v) end
  return "a " .. t
end

-- What a result of string.rep may hold: one C call the budget cannot stop.
local REP_MAX = 1048576
local function safe_rep(s, n, sep)
  local total = #tostring(s) * (tonumber(n) or 0) + #tostring(sep or "") * (tonumber(n) or 0)
  if total > REP_MAX then error("string.rep: a result over " .. REP_MAX .. " bytes", 2) end
  return string.rep(s, n, sep)
end

-- setmetatable without finalizers: a __gc would run in the host, outside any budget.
local function safe_setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("setmetatable: __gc is not allowed in a policy script", 2)
  end
  return setmetatable(t, mt)
end

-- getmetatable of tables only: the string metatable is the host's string library.
local function safe_getmetatable(t)
  if type(t) == "table" then return getmetatable(t) end
  return nil
end

-- What a script sees: the pure parts of the standard library, os.time/date/clock, and
-- `log(level, message)` into the host's log.
local function sandbox(log, allow_exec)
  local env = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    pcall = guarded_pcall, select = select, tonumber = tonumber, tostring = tostring, type = type,
    rawequal = rawequal, rawget = rawget, rawlen = rawlen, rawset = rawset,
    setmetatable = safe_setmetatable, getmetatable = safe_getmetatable,
    xpcall = guarded_xpcall,
    string = copy_lib(string, { "byte", "char", "find", "format", "gmatch", "gsub", "len",
      "lower", "match", "rep", "reverse", "sub", "upper" }),
    table = copy_lib(table, { "concat", "insert", "move", "pack", "remove", "sort", "unpack" }),
    math = copy_lib(math, { "abs", "ceil", "floor", "fmod", "huge", "max", "maxinteger", "min",
      "mininteger", "modf", "pi", "sqrt", "tointeger", "type", "ult", "random" }),
    utf8 = copy_lib(utf8, { "char", "charpattern", "codepoint", "codes", "len", "offset" }),
    os = copy_lib(os, { "time", "date", "clock", "difftime" }),
    log = function(level, msg)
      if type(level) ~= "string" or require("mtasts.log").LEVELS[level] == nil then
        error("log: the level must be a syslog level name (err, warning, notice, info, debug)",
          2)
      end
      log(level, "policy script: " .. tostring(msg))
    end,
  }
  if allow_exec then
    env.io, env.os, env.require = io, os, require
  end
  env.string.rep = safe_rep
  env._G = env
  return env
end

-- Run fn(...) in a coroutine under a budget of `seconds`: true, results... or false, why.
-- While it runs, strings' methods are the sandbox's (("x"):rep(n) is its capped rep), and the
-- host's are back afterwards.
local function run(fn, seconds, strings, ...)
  local string_meta = getmetatable("")
  local host_index = string_meta.__index
  string_meta.__index = strings
  local co = coroutine.create(fn)
  local deadline = core.monotonic() + seconds
  debug.sethook(co, function()
    if core.monotonic() > deadline then error(OVERRUN, 0) end
  end, "", _M.CHECK_EVERY)
  local res = table.pack(coroutine.resume(co, ...))
  string_meta.__index = host_index
  if not res[1] then
    if res[2] == OVERRUN then return false, ("took longer than %g s"):format(seconds) end
    return false, show(res[2])
  end
  if coroutine.status(co) ~= "dead" then return false, "must not yield" end
  return true, table.unpack(res, 2, res.n)
end

local Script = {}
Script.__index = Script

-- Read and run the file: the hook table, or nil, message.
local function read(self)
  local f, oerr = io.open(self.path, "r")
  if not f then return nil, tostring(oerr) end
  local text = f:read("a")
  f:close()
  local env = sandbox(self.log, self.allow_exec)
  local chunk, lerr = load(text or "", "@" .. self.path, "t", env)
  if not chunk then return nil, lerr end
  local ok, hooks = run(chunk, _M.LOAD_BUDGET, env.string)
  if not ok then return nil, self.path .. ": " .. hooks end
  if type(hooks) ~= "table" or getmetatable(hooks) ~= nil then
    return nil, self.path .. ": must return a plain table of hooks (answer, on_failure), got " ..
      (type(hooks) == "table" and "a table with a metatable" or type(hooks))
  end
  local copy = {}   -- the functions as they are now: the script keeps no handle on this table
  for k, v in next, hooks do
    if not _M.HOOKS[k] then
      return nil, self.path .. ": unknown hook '" .. show(k) .. "' (known: answer, " ..
        "on_failure)"
    end
    if type(v) ~= "function" then
      return nil, self.path .. ": hook '" .. k .. "' must be a function, got " .. type(v)
    end
    copy[k] = v
  end
  return copy, env.string
end

--- Load a policy script. opts: log (the host's logger), budget (seconds per call, default
-- 0.05), allow_exec (give the script io, os and require). Returns a script, or nil, message,
-- "config", "policy" when it cannot be read or fails to load.
function _M.load(path, opts)
  opts = opts or {}
  if type(path) ~= "string" then error("bad argument #1 to 'load' (a file name expected)", 2) end
  for k in pairs(opts) do
    if k ~= "log" and k ~= "budget" and k ~= "allow_exec" then
      error("bad argument #2 to 'load' (unknown option '" .. tostring(k) .. "')", 2)
    end
  end
  local budget = opts.budget or _M.DEFAULT_BUDGET
  if type(budget) ~= "number" or budget ~= budget or budget <= 0 or budget > 10 then
    return nil, "policy budget: " .. tostring(budget) .. " is not a number of seconds above " ..
      "0 and at most 10", "config", "policy"
  end
  local self = setmetatable({ path = path, log = opts.log or function() end, budget = budget,
    allow_exec = opts.allow_exec == true, calls = 0, errors = 0 }, Script)
  local hooks, strings = read(self)
  if not hooks then return nil, "policy: " .. strings, "config", "policy" end
  self.hooks, self.strings = hooks, strings
  return self
end

--- Read the file again. true, or nil, message, "config" with the previous script kept (and
-- the failure logged).
function Script:reload()
  local hooks, strings = read(self)
  if not hooks then
    self.log("err", "policy script: reload failed, the previous one stays: " .. strings)
    return nil, "policy: " .. strings, "config", "policy"
  end
  self.hooks, self.strings = hooks, strings
  self.log("notice", "policy script reloaded from " .. self.path)
  return true
end

--- Whether the script defines `hook`.
function Script:has(hook) return self.hooks[hook] ~= nil end

-- ctx for the script: its own copy (cycles kept as cycles of the copy; tables deeper than
-- 16 levels left out), so it cannot change the caller's tables.
local function view(v, depth, seen)
  if type(v) ~= "table" then return v end
  if seen[v] then return seen[v] end
  if depth > 16 then return nil end
  local t = {}
  seen[v] = t
  for k, x in next, v do
    if type(k) ~= "table" then t[k] = view(x, depth + 1, seen) end
  end
  return t
end

--- Call `hook` with ctx. Returns what it returned, or `default` when the script has no such
-- hook, failed, ran over its budget or returned something `accept` (a function of the value:
-- true, or a reason) refuses; failures are logged with the domain.
function Script:call(hook, ctx, default, accept)
  local fn = self.hooks[hook]
  if not fn then return default end
  self.calls = self.calls + 1
  local ok, v = run(fn, self.budget, self.strings, view(ctx, 0, {}))
  local why
  if not ok then why = v
  elseif v == nil then return default
  elseif accept then
    local fine = accept(v)
    if fine ~= true then why = "returned " .. show(v):sub(1, 100) .. ": " .. tostring(fine) end
  end
  if why then
    self.errors = self.errors + 1
    self.log("err", ("policy script: %s(%s) %s; using the default answer"):format(hook,
      tostring(ctx and ctx.domain or ""), why))
    return default
  end
  return v
end

return _M
