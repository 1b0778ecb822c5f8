--- mtasts.tlsrpt.collector: receives the datagrams that Postfix 3.10+ (libtlsrpt) sends for
-- each TLS session and records them in the TLSRPT result store, so that the daily reports
-- cover Postfix's deliveries. Reference: docs/tlsrpt-collector.md.
--
-- The socket is read by a thread of the C module (module/collector.c): it parses each
-- datagram and sums the sessions in memory, so reading never waits for the database. step()
-- (the server's loop calls it every second) takes those sums and commits them in one
-- transaction, with a mark that says how many datagrams this instance has committed; the
-- thread keeps, in a small state file, how many it has accepted. A collector that starts
-- after a crash compares the two and logs what the one before it lost.
local core = require("mtasts.core")
local store_mod = require("mtasts.tlsrpt.store")
local settings = require("mtasts.settings")

local type, pairs, ipairs, tostring, setmetatable, error = type, pairs, ipairs, tostring,
  setmetatable, error
local format = string.format

local _M = { RCVBUF = 8 * 1024 * 1024, LOG_INTERVAL = 60, QLEN_ADVISED = 1024,
  SOCKET_MODE = "0660" }

local Collector = {}
local collector_mt = { __index = Collector, __name = "mtasts.tlsrpt.collector" }

local OPTIONS = { path = true, listen = true, socket_mode = true, socket_group = true,
  log = true, clock = true, mode = true, rcvbuf = true }

-- "unix:/PATH" or a plain absolute path: the path, or nil and why. A relative path is
-- refused: Postfix takes its socket name relative to its queue directory, the collector would
-- take it relative to its working directory.
local function socket_path(listen)
  if type(listen) ~= "string" then return nil, "a unix:PATH address expected" end
  local path = listen:match("^unix:(.+)$") or (listen:sub(1, 1) == "/" and listen) or nil
  if not path then return nil, settings.show(listen) .. " is not unix:PATH" end
  if path:sub(1, 1) ~= "/" then
    return nil, settings.show(listen) .. " is not an absolute path (Postfix's relative " ..
      "smtp_tlsrpt_socket_name is inside its queue directory, e.g. /var/spool/postfix/)"
  end
  if #path > 107 then return nil, settings.show(listen) .. ": the path is longer than 107 bytes" end
  return path
end

-- A group's id from its name or number, or nil and why.
local function group_id(g)
  local n = math.tointeger(type(g) == "number" and g or g:match("^%d+$") and tonumber(g))
  if n then
    if n < 0 or n >= 4294967295 then return nil, ("%s is not a group id"):format(tostring(g)) end
    return n
  end
  if type(g) == "number" then return nil, ("%s is not a group id"):format(tostring(g)) end
  local f = io.open("/etc/group", "r")
  if f then
    for line in f:lines() do
      local name, gid = line:match("^([^:]*):[^:]*:(%d+):")
      if name == g then f:close() return tonumber(gid) end
    end
    f:close()
  end
  return nil, ("no group %s"):format(settings.show(g))
end

--- The values of open's options, without making anything (mtasts config check): true, or
-- nil, message, "config", option.
function _M.check(opts)
  local _, why = socket_path(opts.listen)
  if why then return settings.fail("listen", why) end
  local m = opts.socket_mode
  if m ~= nil and not (type(m) == "string" and m:match("^0?[0-7][0-7][0-7]$")) then
    return settings.fail("socket_mode", settings.show(m) .. " is not an octal mode like 0660")
  end
  if opts.socket_group ~= nil then
    local gid, gwhy = group_id(opts.socket_group)
    if not gid then return settings.fail("socket_group", gwhy) end
  end
  return true
end

--- Open the socket and the result store. opts: path (the database directory), listen
-- ("unix:PATH"), socket_mode ("0660"), socket_group (a group name or id), mode (the store's
-- file mode, as tlsrpt.open), log (function(level, message)), clock (epoch seconds: the
-- day results count for). Returns the collector, or nil, message, code.
function _M.open(opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'open' (table expected)", 2) end
  for k in pairs(opts) do
    if not OPTIONS[k] then
      error("bad argument #1 to 'open' (unknown option '" .. tostring(k) .. "')", 2)
    end
  end
  if type(opts.path) ~= "string" then
    error("bad argument #1 to 'open' (path (the database directory) is required)", 2)
  end
  local ok, err, code, key = _M.check(opts)
  if not ok then return nil, err, code, key end
  local path = socket_path(opts.listen)
  local gid = opts.socket_group ~= nil and group_id(opts.socket_group) or -1
  local log = opts.log or function() end
  -- the store commits only when step() says so: with the mark, in one transaction
  local store, serr, scode = store_mod.open{ path = opts.path, mode = opts.mode,
    clock = opts.clock, batch_size = math.maxinteger, batch_interval = math.huge,
    resolver = {}, fetcher = {}, log = log }
  if not store then return nil, serr, scode end
  local mark = "tlsrpt-collector:" .. path
  -- the state file's name: the socket's path, readable, and a hash of it (b_c.sock and
  -- b/c.sock read alike)
  local h = 2166136261
  for i = 1, #path do h = ((h ~ path:byte(i)) * 16777619) & 0xffffffff end
  local state = ("%s/collector-%s-%08x.state"):format(opts.path,
    path:gsub("[^%w%.%-]", "_"):sub(-80), h)
  local c, info = core.collector_open{ path = path,
    mode = tonumber((opts.socket_mode or _M.SOCKET_MODE):match("([0-7][0-7][0-7])$"), 8),
    gid = gid, rcvbuf = opts.rcvbuf or _M.RCVBUF, state = state }
  if not c then
    store:release()
    return nil, "listen: " .. tostring(info), "listen"
  end
  local self = setmetatable({ c = c, store = store, log = log, path = path, mark = mark,
    instance = info.instance, taken = 0, committed = 0, lost_at_start = 0, commits = 0,
    commit_failures = 0, logged_seq = 0, logged_at = -math.huge, logged_counts = {},
    is_open = true }, collector_mt)
  -- what the collector before this one accepted and did not commit (killed, or the machine
  -- stopped): it is lost, and said so
  if info.previous_instance then
    local m, merr = store:mark(mark)
    if m == nil and merr ~= nil then
      log("warning", ("%s: what the collector before this one committed cannot be read (%s): " ..
        "its losses are not counted"):format(path, tostring(merr)))
      info.previous_accepted = 0
    end
    local inst, n = (m or ""):match("^(%x+) (%d+)$")
    local committed = inst == info.previous_instance and tonumber(n) or 0
    local lost = info.previous_accepted - committed
    if lost > 0 then
      self.lost_at_start = lost
      log("warning", ("%s: the collector before this one accepted %d datagrams it did not " ..
        "commit: lost"):format(path, lost))
    end
  end
  local st = c:stats()
  self.qlen = st.qlen
  if st.qlen >= 0 and st.qlen < _M.QLEN_ADVISED then
    log("notice", ("%s: net.unix.max_dgram_qlen is %d: a burst of more datagrams than that " ..
      "is lost at the sender while the collector is busy; raise it to %d (sysctl, then " ..
      "restart the collector; docs/tlsrpt-collector.md)"):format(path, st.qlen, _M.QLEN_ADVISED))
  end
  log("info", ("listening for libtlsrpt datagrams on %s"):format(path))
  return self
end

local function live(self, fn)
  if getmetatable(self) ~= collector_mt then error("bad self to '" .. fn .. "'", 3) end
  if not self.is_open then error("attempt to use a closed mtasts.tlsrpt.collector", 3) end
end

-- One line for the rejections since the last one, at most every LOG_INTERVAL seconds.
local function log_rejections(self, st, force)
  if st.last_seq == self.logged_seq then return end
  local now = core.monotonic()
  if not force and now - self.logged_at < _M.LOG_INTERVAL then return end
  local parts, total = {}, 0
  local function add(name, n)
    local d = n - (self.logged_counts[name] or 0)
    if d > 0 then
      parts[#parts + 1] = name .. " " .. d
      total = total + d
    end
    self.logged_counts[name] = n
  end
  local names = {}
  for name in pairs(st.rejected) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do add(name, st.rejected[name]) end
  add("oversized", st.oversized)
  self.logged_seq, self.logged_at = st.last_seq, now
  if total > 0 then
    self.log("warning", ("%s: %d datagrams not counted (%s); the last: %s"):format(self.path,
      total, table.concat(parts, ", "), tostring(st.last)))
  end
end

--- Take what the thread has gathered and commit it: true, or nil, message, code (what was
-- taken is kept and committed at the next step).
function Collector:step()
  live(self, "step")
  local entries, n = self.c:take()
  if not entries then return nil, n, "enomem" end
  for _, e in ipairs(entries) do
    self.store:add(e.result, { domain = e.domain, host = false, verbatim = true,
      record = e.record })
  end
  self.taken = self.taken + n
  if self.taken > self.committed then
    self.store:set_mark(self.mark, self.instance .. " " .. self.taken)
  end
  local ok, err, code = self.store:flush()
  log_rejections(self, self.c:stats())
  if not ok then
    self.commit_failures = self.commit_failures + 1
    return nil, err, code
  end
  if self.taken > self.committed then self.commits = self.commits + 1 end
  self.committed = self.taken
  return true
end

--- Counters: the thread's (received, accepted, sessions, rejected = { reason = n },
-- oversized, overflow, repaired, t_mismatch, unknown_type, qlen, rcvbuf, last), and
-- committed (datagrams committed by this instance), pending (taken, not yet committed),
-- lost_at_start, commits, commit_failures.
function Collector:stats()
  live(self, "stats")
  local st = self.c:stats()
  st.committed, st.pending = self.committed, self.taken - self.committed
  st.lost_at_start, st.commits, st.commit_failures = self.lost_at_start, self.commits,
    self.commit_failures
  return st
end

--- Metric families in registry `reg` (docs/metrics.md).
function Collector:families(reg)
  live(self, "families")
  local function stat(f, fill)
    if not self.is_open then return end
    fill(f, self:stats())
  end
  reg:counter("mtasts_tlsrpt_datagrams_total", "libtlsrpt datagrams by outcome: accepted, " ..
    "rejected (did not parse; see _rejected_total), oversized, overflow (not counted: too " ..
    "many distinct results held).", { "outcome" }, { collect = function(f)
      stat(f, function(ff, st)
        local rej = 0
        for _, v in pairs(st.rejected) do rej = rej + v end
        ff:labels("accepted").v = st.accepted
        ff:labels("rejected").v = rej
        ff:labels("oversized").v = st.oversized
        ff:labels("overflow").v = st.overflow
      end)
    end })
  reg:counter("mtasts_tlsrpt_datagrams_rejected_total", "libtlsrpt datagrams rejected, by " ..
    "reason.", { "reason" }, { collect = function(f)
      stat(f, function(ff, st)
        for k, v in pairs(st.rejected) do ff:labels(k).v = v end
      end)
    end })
  reg:counter("mtasts_tlsrpt_datagram_sessions_total", "TLS sessions (policy objects) in " ..
    "accepted datagrams.", nil, { collect = function(f)
      stat(f, function(ff, st) ff:labels().v = st.sessions end)
    end })
  reg:counter("mtasts_tlsrpt_datagrams_committed_total", "Accepted datagrams committed to " ..
    "the result store by this process.", nil, { collect = function(f)
      stat(f, function(ff, st) ff:labels().v = st.committed end)
    end })
  reg:counter("mtasts_tlsrpt_datagrams_lost_total", "Datagrams accepted by the collector " ..
    "before this one and never committed (it was killed).", nil, { collect = function(f)
      stat(f, function(ff, st) ff:labels().v = st.lost_at_start end)
    end })
  reg:counter("mtasts_tlsrpt_commit_failures_total", "Commits of datagrams that failed " ..
    "(kept and retried).", nil, { collect = function(f)
      stat(f, function(ff, st) ff:labels().v = st.commit_failures end)
    end })
end

--- Stop: the socket file removed (new datagrams find no collector), what is queued read,
-- everything committed, the store closed. true, or nil, message, code (what could not be
-- committed is lost, and logged). A second close returns true.
function Collector:close()
  if not self.is_open then return true end
  self.c:stop()
  local ok, err, code = self:step()
  local st = self.c:stats()
  log_rejections(self, st, true)
  self.is_open = false
  self.c:close()
  if not ok then
    self.log("err", ("%s: %d datagrams lost at close: %s"):format(self.path,
      self.taken - self.committed, tostring(err)))
    self.store:release()
    return nil, err, code
  end
  local cok, cerr, ccode = self.store:close()
  if not cok then return nil, cerr, ccode end
  self.log("info", format("%s: closed; %d datagrams committed", self.path, self.committed))
  return true
end

--- Close without committing (the finalizer): the thread stops, nothing is written.
function Collector:release()
  if not self.is_open then return true end
  self.is_open = false
  self.c:close()
  self.store:release()
  return true
end
collector_mt.__close = Collector.close
collector_mt.__gc = Collector.release

return _M
