--- mtasts.log: the one logger shape every module takes as its `log` option,
-- `log(level, message)`, with syslog's level names, and the two loggers the programs use:
-- to stderr, or to syslog. Reference: docs/log.md.
local type, error, tostring, setmetatable = type, error, tostring, setmetatable
local format = string.format

local _M = {}

-- What each logger made here lets through: logger -> function(level) -> boolean. Weak keys:
-- a logger dropped by its owner is not kept alive here.
local passes = setmetatable({}, { __mode = "k" })

--- The levels, as syslog names them, with their syslog priorities.
_M.LEVELS = { emerg = 0, alert = 1, crit = 2, err = 3, warning = 4, notice = 5, info = 6,
  debug = 7 }

--- A logger that says nothing: the default of every `log` option.
function _M.null() end
passes[_M.null] = function() return false end

--- Whether `logger` writes messages of `level`: false for log.null and for a logger of
-- log.new that drops the level (info and debug without verbose, ...); true for any other
-- function (a host's own decides for itself). For callers that would build a message only
-- to have it dropped.
function _M.enabled(logger, level)
  if _M.LEVELS[level] == nil then
    error(("bad argument #2 to 'enabled' (a syslog level name expected, got %s)"):format(
      type(level) == "string" and format("%q", level:sub(1, 20)) or type(level)), 2)
  end
  if type(logger) ~= "function" then
    error("bad argument #1 to 'enabled' (function expected, got " .. type(logger) .. ")", 2)
  end
  local p = passes[logger]
  if p == nil then return true end
  return p(level)
end

--- Raise unless `level` is one of the level names (for loggers that check their callers).
function _M.check(level)
  if _M.LEVELS[level] == nil then
    error(("bad argument #1 to 'log' (a syslog level name expected, got %s)"):format(
      type(level) == "string" and format("%q", level:sub(1, 20)) or type(level)), 3)
  end
end

local OPTIONS = { to = true, verbose = true, ident = true, facility = true, path = true }
local FACILITIES = { mail = 2, daemon = 3, user = 1, local0 = 16, local1 = 17, local2 = 18,
  local3 = 19, local4 = 20, local5 = 21, local6 = 22, local7 = 23 }

--- A logger. opts: to = "stderr" (default) or "syslog" (/dev/log), verbose (also info and
-- debug on stderr, debug on syslog), ident (default "mtasts"), facility (syslog, default
-- "mail"), path (the syslog socket, default /dev/log). Returns log(level, message); when
-- the syslog socket cannot be reached it falls back to stderr, and says so there once.
function _M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")", 2)
  end
  for k in pairs(opts) do
    if not OPTIONS[k] then
      error("bad argument #1 to 'new' (unknown option '" .. tostring(k) .. "')", 2)
    end
  end
  local to, verbose, ident = opts.to or "stderr", opts.verbose == true, opts.ident or "mtasts"
  if to ~= "stderr" and to ~= "syslog" then
    error("bad argument #1 to 'new' (to must be \"stderr\" or \"syslog\")", 2)
  end
  local facility = FACILITIES[opts.facility or "mail"]
  if not facility then
    error("bad argument #1 to 'new' (unknown facility '" .. tostring(opts.facility) .. "')", 2)
  end
  local function stderr(level, msg)
    _M.check(level)
    if (level == "debug" or level == "info") and not verbose then return end
    io.stderr:write(os.date("!%Y-%m-%dT%H:%M:%SZ "), ident, " ", level, ": ", tostring(msg),
      "\n")
  end
  passes[stderr] = function(level) return verbose or (level ~= "debug" and level ~= "info") end
  if to == "stderr" then return stderr end
  local socket = require("cqueues.socket")   -- only for syslog
  -- cqueues connects on first use: connect now, so a missing /dev/log is known here
  local sock = socket.connect{ path = opts.path or "/dev/log", type = socket.SOCK_DGRAM }
  local connected, why = false, "no socket"
  if sock then
    sock:onerror(function(_, _, e) return e end)
    connected, why = sock:connect(1)
    if not connected and type(why) == "number" then
      why = require("cqueues.errno").strerror(why)
    end
  end
  if not connected then
    stderr("warning", "cannot reach syslog at " .. (opts.path or "/dev/log") .. " (" ..
      tostring(why) .. "); logging to stderr")
    return stderr
  end
  sock:setmode("b", "b")
  local f = io.open("/proc/self/stat")
  local pid = f and f:read("n") or 0
  if f then f:close() end
  local function syslog(level, msg)
    _M.check(level)
    if level == "debug" and not verbose then return end
    sock:write(format("<%d>%s[%d]: %s", facility * 8 + _M.LEVELS[level], ident, pid,
      tostring(msg)))
    sock:flush()
  end
  passes[syslog] = function(level) return verbose or level ~= "debug" end
  return syslog
end

return _M
