-- Private Redis servers and sentinels for the specs, on loopback ports, never as a service:
--
--   local sredis = require("support.redis")
--   local s = sredis.start(dir, { port =, requirepass = "pw",
--     users = { "alice on >pw ~* &* +@all" }, tls = { cert =, key =, ca = }, replicaof = port,
--     save = false })
--   s.port, s.tls_port, s.pid; s:cmd("SET", "k", "v") (a blocking raw client, AUTH done);
--   s:kill("KILL"); s:restart(); s:stop()
--   local t = sredis.sentinel(dir, master_port, { password =, auth_pass = })
--   t.port; t:cmd("SENTINEL", "failover", "m"); t:stop()
--
-- Readiness is polled with a deadline (proc.poll), processes are killed by pid.
local proc = require("support.proc")
local util = require("support.util")
local core = require("mtasts.core")

local _M = { MASTER = "m" }

local Server = {}
Server.__index = Server

--- One command on a fresh connection, blocking (at most `timeout` seconds, default 2): the
-- reply, or nil, message, code. opts: password, username, tls = { cafile =, name = }.
function _M.raw(port, opts, ...)
  opts = opts or {}
  local c, err, code = core.redis_connect{ host = "127.0.0.1", port = port,
    tls = opts.tls ~= nil, server_name = opts.tls and opts.tls.name,
    cafile = opts.tls and opts.tls.cafile }
  if not c then return nil, err, code end
  local cmds = {}
  if opts.password then
    cmds[1] = opts.username and { "AUTH", opts.username, opts.password }
      or { "AUTH", opts.password }
  end
  cmds[#cmds + 1] = table.pack(...)
  for _, cmd in ipairs(cmds) do assert(c:send(table.unpack(cmd, 1, cmd.n or #cmd))) end
  local got, deadline = {}, core.monotonic() + (opts.timeout or 2)
  while #got < #cmds do
    local r
    r, err, code = c:step()
    if not r then
      c:close()
      return nil, err, code
    end
    for _, v in ipairs(r) do got[#got + 1] = v end
    if #got < #cmds then
      if core.monotonic() > deadline then
        c:close()
        return nil, "timed out", "redis-unavailable"
      end
      core.poll(c:fd(), c:want(), 0.1)
    end
  end
  c:close()
  return got[#got]
end

function Server:cmd(...)
  return _M.raw(self.port, { password = self.password }, ...)
end

-- Start the process and wait until it answers PING.
function Server:launch()
  self.pid = proc.spawn(self.name, self.program .. " " .. self.conf, self.log)
  local ok = proc.poll(function() return self:cmd("PING") == "PONG" end, 10)
  if not ok then
    error(self.name .. " did not start:\n" .. (util.run("tail -20 " .. self.log)), 3)
  end
end

function Server:stop()
  if self.pid then proc.stop(self.pid) end
  self.pid = nil
end

--- Send a signal (by pid) and wait until the process is gone (for KILL and TERM).
function Server:kill(sig)
  proc.signal(self.pid, sig or "KILL")
  proc.poll(function() return not proc.alive(self.pid) end, 5)
  proc.stop(self.pid)   -- forget it
  self.pid = nil
end

function Server:restart()
  if self.pid then self:kill("KILL") end
  self:launch()
end

local function write_conf(path, lines)
  util.write(path, table.concat(lines, "\n") .. "\n")
end

--- A redis-server on a free loopback port, its files in dir. See the top for opts.
function _M.start(dir, opts)
  opts = opts or {}
  local port = opts.port or proc.free_port()
  local s = setmetatable({ port = port, password = opts.requirepass, name = "redis-" .. port,
    program = "redis-server", conf = dir .. "/redis-" .. port .. ".conf",
    log = dir .. "/redis-" .. port .. ".log" }, Server)
  local lines = { "port " .. port, "bind 127.0.0.1", "daemonize no", "dir " .. dir,
    "appendonly no", "logfile ''", "protected-mode no",
    "dbfilename dump-" .. port .. ".rdb" }
  lines[#lines + 1] = opts.save and "save 3600 1" or "save ''"
  if opts.requirepass then
    lines[#lines + 1] = "requirepass " .. opts.requirepass
    lines[#lines + 1] = "masterauth " .. opts.requirepass
  end
  for _, u in ipairs(opts.users or {}) do lines[#lines + 1] = "user " .. u end
  if opts.tls then
    s.tls_port = proc.free_port()
    lines[#lines + 1] = "tls-port " .. s.tls_port
    lines[#lines + 1] = "tls-cert-file " .. opts.tls.cert
    lines[#lines + 1] = "tls-key-file " .. opts.tls.key
    lines[#lines + 1] = "tls-ca-cert-file " .. opts.tls.ca
    lines[#lines + 1] = "tls-auth-clients no"
  end
  if opts.replicaof then lines[#lines + 1] = "replicaof 127.0.0.1 " .. opts.replicaof end
  write_conf(s.conf, lines)
  s:launch()
  return s
end

--- A redis-sentinel watching the master on master_port as "m" (quorum 1, down after 1 s).
-- opts: password (the sentinel's own requirepass), auth_pass (the master's password).
function _M.sentinel(dir, master_port, opts)
  opts = opts or {}
  local port = proc.free_port()
  local s = setmetatable({ port = port, password = opts.password, name = "sentinel-" .. port,
    program = "redis-sentinel", conf = dir .. "/sentinel-" .. port .. ".conf",
    log = dir .. "/sentinel-" .. port .. ".log" }, Server)
  local lines = { "port " .. port, "bind 127.0.0.1", "daemonize no", "dir " .. dir,
    "logfile ''", "protected-mode no",
    ("sentinel monitor %s 127.0.0.1 %d 1"):format(_M.MASTER, master_port),
    ("sentinel down-after-milliseconds %s 1000"):format(_M.MASTER),
    ("sentinel failover-timeout %s 5000"):format(_M.MASTER) }
  if opts.auth_pass then
    lines[#lines + 1] = ("sentinel auth-pass %s %s"):format(_M.MASTER, opts.auth_pass)
  end
  if opts.password then lines[#lines + 1] = "requirepass " .. opts.password end
  write_conf(s.conf, lines)
  s:launch()
  return s
end

return _M
