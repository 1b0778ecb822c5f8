--- mtasts.redis: a Redis client for a fleet (a shared policy cache, shipped TLSRPT counters),
-- on the non-blocking connection of mtasts.core (redis_connect: TCP or TLS, replies bounded
-- in C). This module connects lazily, authenticates, selects the database, follows a master
-- through Sentinel, puts a deadline on every call and waits only through the injected `wait`.
-- Concurrent callers (coroutines under a `wait` that yields) pipeline on one connection: each
-- call's replies are the next ones in order, and whoever steps the connection hands them out.
-- Reference: docs/redis.md.
local core = require("mtasts.core")
local settings = require("mtasts.settings")

local type, pairs, ipairs, error, tostring, tonumber = type, pairs, ipairs, error, tostring,
  tonumber
local setmetatable, getmetatable, pcall, select = setmetatable, getmetatable, pcall, select
local min, mtype, tointeger = math.min, math.type, math.tointeger
local concat, unpack = table.concat, table.unpack

local _M = { DEFAULT_TIMEOUT = 0.5, DEFAULT_RETRY = 1, MAX_RETRY = 30, SHARED_WAIT = 0.05,
  DEFAULT_PORT = 6379, SENTINEL_PORT = 26379 }

local Redis = {}
local MT = { __index = Redis, __name = "mtasts.redis" }

local OPTIONS = { url = true, sentinels = true, master = true, username = true,
  password = true, password_file = true, sentinel_password = true, cafile = true, capath = true,
  server_name = true, timeout = true, retry = true, wait = true, cancel = true, log = true }

local STRINGS = { "url", "master", "username", "password", "password_file",
  "sentinel_password", "cafile", "capath", "server_name" }

-- Misuse raises at the caller of new: an unknown option, a wrong type.
local function check_types(opts)
  local function bad(msg) error("bad argument #1 to 'new' (" .. msg .. ")", 4) end
  if type(opts) ~= "table" then bad("table expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not OPTIONS[k] then bad("unknown option '" .. tostring(k) .. "'") end
  end
  for _, k in ipairs(STRINGS) do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then bad(k .. " must be a string") end
  end
  for _, k in ipairs({ "timeout", "retry" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "number" then bad(k .. " must be a number") end
  end
  for _, k in ipairs({ "wait", "cancel", "log" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "function" then bad(k .. " must be a function") end
  end
  if opts.sentinels ~= nil then
    if type(opts.sentinels) ~= "table" then bad("sentinels must be a list of strings") end
    for _, s in ipairs(opts.sentinels) do
      if type(s) ~= "string" then bad("sentinels must be a list of strings") end
    end
  end
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- An address as the C side takes it: an IP literal; "localhost" is 127.0.0.1; anything else
-- would need DNS, which would block: nil.
local function address(host)
  if host == "localhost" then return "127.0.0.1" end
  if core.is_global_address(host) ~= nil then return host end
end

-- HOST[:PORT] or [V6][:PORT]: ip, port, the name as written (for TLS), or nil, reason.
local function host_port(s, default_port)
  local host, port
  if s:sub(1, 1) == "[" then
    host, port = s:match("^%[([^%]]+)%](.*)$")
    if not host then return nil, "a '[' without its ']'" end
  else
    host, port = s:match("^([^:]*)(.*)$")
  end
  if port ~= "" then
    port = port:match("^:(.*)$")
    if not port then return nil, "junk after the host" end
    local ok, err = settings.port("x", settings.show(s), port)
    if not ok then return nil, err:gsub("^x: ", "") end
    port = tonumber(port)
  else
    port = default_port
  end
  if host == "" then return nil, "no host" end
  local ip = address(host)
  if not ip then
    return nil, ("host %s is not an IP address or localhost (names are not resolved: that " ..
      "would block; give an address)"):format(settings.show(host))
  end
  return ip, port, host
end

-- redis[s]://[user[:password]@][host[:port]][/db]: a table, or nil, reason. The host may be
-- left out (sentinels give it).
local function parse_url(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, settings.show(url) .. " is not a URL" end
  scheme = scheme:lower()
  if scheme ~= "redis" and scheme ~= "rediss" then
    return nil, ("scheme %s is not redis or rediss"):format(settings.show(scheme))
  end
  if rest:find("[?#]") then return nil, "query strings and fragments are not supported" end
  local u = { tls = scheme == "rediss", db = 0 }
  local authority, path = rest:match("^([^/]*)(.*)$")
  local at = authority:match("^.*()@")
  if at then
    local userinfo = authority:sub(1, at - 1)
    authority = authority:sub(at + 1)
    local user, pass = userinfo:match("^([^:]*):(.*)$")
    if not user then user = userinfo end
    u.username = user ~= "" and unescape(user) or nil
    u.password = pass and unescape(pass) or nil
  end
  if path ~= "" and path ~= "/" then
    local db = path:match("^/(%d+)$")
    if not db or #db > 9 then
      return nil, ("database %s is not a non-negative integer"):format(settings.show(path:sub(2)))
    end
    u.db = tonumber(db)
  end
  if authority ~= "" then
    local ip, port, name = host_port(authority, _M.DEFAULT_PORT)
    if not ip then return nil, port end
    u.host, u.port, u.name = ip, port, name
  end
  return u
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("a")
  f:close()
  return (s:gsub("\r?\n$", ""))
end

-- The settings of new, checked: a table, or a config failure.
local function check_values(opts)
  local fail = settings.fail
  local ok, err, code, key = settings.seconds("timeout", opts.timeout)
  if ok then ok, err, code, key = settings.seconds("retry", opts.retry) end
  if not ok then return nil, err, code, key end
  for _, k in ipairs({ "cafile", "capath", "password_file", "master", "server_name" }) do
    ok, err, code, key = settings.nonempty(k, opts[k])
    if not ok then return nil, err, code, key end
  end
  local u = { tls = false, db = 0 }
  if opts.url then
    local why
    u, why = parse_url(opts.url)
    if not u then return fail("url", why) end
  end
  local c = { tls = u.tls, db = u.db, host = u.host, port = u.port, name = u.name,
    username = opts.username or u.username, password = opts.password or u.password,
    sentinel_password = opts.sentinel_password, master = opts.master,
    cafile = opts.cafile, capath = opts.capath, server_name = opts.server_name }
  if opts.password_file then
    if opts.password then return fail("password_file", "give password or password_file") end
    local pw, why = read_file(opts.password_file)
    if not pw then return fail("password_file", "cannot read it: " .. why) end
    c.password = pw
  end
  if c.username and not c.password then return fail("username", "needs a password") end
  if opts.sentinels then
    if #opts.sentinels == 0 then return fail("sentinels", "the list is empty") end
    if not opts.master then return fail("master", "required with sentinels") end
    if u.host then
      return fail("url", "give no host with sentinels (they name the master): " ..
        "redis:///DB or rediss://user:password@/DB")
    end
    c.sentinels = {}
    for i, s in ipairs(opts.sentinels) do
      local ip, port, name = host_port(s, _M.SENTINEL_PORT)
      if not ip then return fail("sentinels", ("entry %d: %s"):format(i, port)) end
      c.sentinels[i] = { host = ip, port = port, name = name }
    end
  else
    if opts.master then return fail("master", "only with sentinels") end
    if opts.sentinel_password then return fail("sentinel_password", "only with sentinels") end
    if not u.host then return fail("url", "required: redis[s]://[user[:password]@]host" ..
      "[:port][/db], or sentinels and master") end
  end
  return c
end

-- The URL without the password, for logs.
local function url_safe(c)
  local auth = c.username and (c.username .. "@") or ""
  local where
  if c.sentinels then
    local list = {}
    for i, s in ipairs(c.sentinels) do list[i] = s.name .. ":" .. s.port end
    where = concat(list, ",") .. "/" .. c.master
  else
    where = (c.name:find(":", 1, true) and "[" .. c.name .. "]" or c.name) .. ":" .. c.port
  end
  return ("%s://%s%s/%d"):format(c.tls and "rediss" or "redis", auth, where, c.db)
end

--- Make a client; nothing is connected until the first call. opts: url, or sentinels and
-- master; username, password, password_file, sentinel_password, cafile, capath,
-- server_name, timeout (seconds per call, default 0.5), retry (seconds after a failed
-- connect, doubling up to 30; default 1), wait, cancel (called with a descriptor given to
-- wait before it is closed: cqueues.cancel under cqueues), log. A setting that cannot work
-- returns nil, message, "config", option; misuse raises.
function _M.new(opts)
  check_types(opts)
  local c, err, code, key = check_values(opts)
  if not c then return nil, err, code, key end
  c.timeout = opts.timeout or _M.DEFAULT_TIMEOUT
  c.retry = opts.retry or _M.DEFAULT_RETRY
  c.wait = opts.wait or core.poll
  c.cancel = opts.cancel
  c.log = opts.log
  c.url_safe = url_safe(c)
  c.open = true
  c.scripts = {}      -- script text -> sha1 (learned with SCRIPT LOAD)
  c.conn = nil        -- the connection in use: { c =, addr =, users =, fifo =, dead = }
  c.connecting = nil  -- { fd =, later = } while one caller connects; the others wait for it
  c.down_until = nil  -- after a failed connect: monotonic time before which calls fail
  c.backoff = nil
  return setmetatable(c, MT)
end

-- --- internals ----------------------------------------------------------------------------

local function log(self, level, msg)
  if self.log then pcall(self.log, level, msg) end
end

-- Bytes of a server's message as they may be shown: printable ASCII, at most 200 bytes.
local function show(s)
  s = tostring(s)
  return (s:sub(1, 200):gsub("[^\32-\126]", function(ch) return ("\\x%02x"):format(ch:byte()) end))
end

-- Close a connection; a host whose loop remembers descriptors (cqueues) is told first.
-- While a caller connects, the others wait on the descriptor it waits on: what it closes
-- then is closed once it is done, so that no waiter is left on a closed descriptor.
local function close_conn(self, c)
  if self.connecting then
    local later = self.connecting.later
    later[#later + 1] = c
    return
  end
  if self.cancel then pcall(self.cancel, c:fd()) end
  if self.poller then self.poller:unwatch(c:fd()) end
  c:close()
end

-- The one descriptor every wait of this client is on (core.poller): connections come
-- and go, and a host's loop that remembers descriptors (cqueues) must never be handed one
-- that another coroutine closes meanwhile. Watches c for what it wants; returns the
-- poller's descriptor, or fail (this host failed).
local function watch(self, c)
  if not self.poller then
    local p, err, code = core.poller()
    if not p then return nil, err, code end
    self.poller = p
  end
  local ok, err, code = self.poller:watch(c:fd(), c:want())
  if not ok then return nil, err, code end
  return self.poller:fd()
end

-- Wait through the host's wait; a raise (a cancelled coroutine) passes after cleanup.
local function wait(self, fd, events, timeout, cleanup)
  local ok, e = pcall(self.wait, fd, events, timeout)
  if not ok then
    cleanup()
    error(e, 0)
  end
end

-- Run commands on a connection nobody else uses (connect, sentinel questions) until all
-- replies are in or the deadline passes: the replies, or fail (the connection is then
-- closed by the caller).
local function exchange(self, c, addr, cmds, deadline)
  for _, cmd in ipairs(cmds) do
    local ok, err, code = c:send(unpack(cmd, 1, cmd.n or #cmd))
    if not ok then return nil, ("redis %s: %s"):format(addr, err), code end
  end
  local got = {}
  while true do
    local r, err, code = c:step()
    if not r then return nil, ("redis %s: %s"):format(addr, err), code end
    for _, v in ipairs(r) do got[#got + 1] = v end
    if #got >= #cmds then return got end
    local left = deadline - core.monotonic()
    if left <= 0 then
      return nil, ("redis %s: timed out after %s s"):format(addr, self.timeout),
        "redis-unavailable"
    end
    local pfd, perr, pcode = watch(self, c)
    if not pfd then return nil, ("redis %s: %s"):format(addr, perr), pcode end
    if self.connecting then self.connecting.fd = pfd end
    wait(self, pfd, "r", left, function() close_conn(self, c) end)
  end
end

local function addr_of(host, port)
  return (host:find(":", 1, true) and "[" .. host .. "]" or host) .. ":" .. port
end

local function open(self, host, port, name)
  return core.redis_connect{ host = host, port = port, tls = self.tls,
    server_name = self.server_name or name, cafile = self.cafile, capath = self.capath }
end

-- Ask the sentinels in turn where the master is: host, port, or fail.
local function discover(self, deadline)
  local errs = {}
  for i, s in ipairs(self.sentinels) do
    local addr = addr_of(s.host, s.port)
    -- each sentinel gets its share of the time left, so that a stalled one leaves time
    local share = (deadline - core.monotonic()) / (#self.sentinels - i + 1)
    local c, err, code = open(self, s.host, s.port, s.name)
    if c then
      local cmds = {}
      if self.sentinel_password then cmds[1] = { "AUTH", self.sentinel_password } end
      cmds[#cmds + 1] = { "SENTINEL", "get-master-addr-by-name", self.master }
      local r
      r, err = exchange(self, c, addr, cmds, core.monotonic() + share)
      close_conn(self, c)
      if r then
        local a = r[#r]
        if #r > 1 and type(r[1]) == "table" and r[1].err then
          err = ("redis sentinel %s: AUTH failed: %s"):format(addr, show(r[1].err))
        elseif type(a) == "table" and a.err then
          err = ("redis sentinel %s: %s"):format(addr, show(a.err))
        elseif type(a) ~= "table" or type(a[1]) ~= "string" or not tonumber(a[2]) then
          err = ("redis sentinel %s: does not know master %s"):format(addr,
            settings.show(self.master))
        elseif not address(a[1]) then
          err = ("redis sentinel %s: master address %s is not an IP address"):format(addr,
            settings.show(a[1]))
        else
          return address(a[1]), tointeger(tonumber(a[2])), nil
        end
      end
    elseif code == "config" then
      return nil, ("redis sentinel %s: %s"):format(addr, err), code
    else
      err = ("redis sentinel %s: %s"):format(addr, err)
    end
    errs[#errs + 1] = err
  end
  return nil, concat(errs, "; "), "redis-unavailable"
end

-- Connect (asking the sentinels first), AUTH, SELECT, ROLE: a connection table, or fail.
local function connect(self, deadline)
  local host, port, name = self.host, self.port, self.name
  if self.sentinels then
    local found, why, code = discover(self, deadline)
    if not found then return nil, why, code end
    host, port, name = found, why, found
    local at = addr_of(host, port)
    if self.master_addr ~= at then
      if self.master_addr then
        log(self, "notice", ("redis: master %s moved from %s to %s"):format(self.master,
          self.master_addr, at))
      else
        log(self, "info", ("redis: master %s is at %s"):format(self.master, at))
      end
      self.master_addr = at
    end
  end
  local addr = addr_of(host, port)
  local c, err, code = open(self, host, port, name)
  if not c then return nil, ("redis %s: %s"):format(addr, err), code end
  local cmds, what = {}, {}
  if self.password then
    cmds[1] = self.username and { "AUTH", self.username, self.password }
      or { "AUTH", self.password }
    what[1] = "AUTH"
  end
  if self.db ~= 0 then
    cmds[#cmds + 1] = { "SELECT", self.db }
    what[#cmds] = "SELECT " .. self.db
  end
  if self.sentinels then
    cmds[#cmds + 1] = { "ROLE" }
    what[#cmds] = "ROLE"
  end
  if #cmds == 0 then   -- a failed connect or handshake counts as one (backoff): finish it
    cmds[1], what[1] = { "PING" }, "PING"
  end
  local r
  r, err, code = exchange(self, c, addr, cmds, deadline)
  if not r then
    close_conn(self, c)
    return nil, err, code
  end
  for i, v in ipairs(r) do
    local why
    if type(v) == "table" and v.err then
      why = ("%s failed: %s"):format(what[i], show(v.err))
    elseif what[i] == "ROLE" and (type(v) ~= "table" or v[1] ~= "master") then
      why = ("not a master (ROLE says %s)"):format(type(v) == "table" and show(v[1]) or "?")
    end
    if why then
      close_conn(self, c)
      return nil, ("redis %s: %s"):format(addr, why), "redis-unavailable"
    end
  end
  return { c = c, addr = addr, users = 0, fifo = {}, head = 1, tail = 0 }
end

-- Forget a connection: its callers fail with msg, code; the last one out closes it.
local function drop(self, conn, msg, code)
  if not conn.dead then conn.dead = { msg, code } end
  if self.conn == conn then self.conn = nil end
  if conn.users == 0 then close_conn(self, conn.c) end
end

local function leave(self, conn)
  conn.users = conn.users - 1
  if conn.dead and conn.users == 0 then close_conn(self, conn.c) end
end

-- The connection to use, connecting when there is none: conn, or fail.
local function get_conn(self, deadline)
  while self.connecting do   -- another caller connects: wait for it
    local left = deadline - core.monotonic()
    if left <= 0 then
      return nil, ("redis %s: timed out after %s s"):format(self.url_safe, self.timeout),
        "redis-unavailable"
    end
    wait(self, self.connecting.fd or -1, "r", min(left, _M.SHARED_WAIT), function() end)
  end
  if self.conn then return self.conn end
  local now = core.monotonic()
  if self.down_until and now < self.down_until then
    return nil, ("%s (not retrying for %.1f s)"):format(self.down_why,
      self.down_until - now), "redis-unavailable"
  end
  self.connecting = { later = {} }
  local ok, conn, err, code = pcall(connect, self, deadline)
  local later = self.connecting.later
  self.connecting = nil
  for _, c in ipairs(later) do close_conn(self, c) end
  if not ok then error(conn, 0) end
  if not conn then
    self.backoff = self.backoff and min(self.backoff * 2, _M.MAX_RETRY) or self.retry
    self.down_until = core.monotonic() + self.backoff
    self.down_why = err
    log(self, "warning", ("%s; next try in %s s"):format(err, self.backoff))
    return nil, err, code
  end
  if not self.open then   -- closed by another coroutine meanwhile
    close_conn(self, conn.c)
    return nil, ("redis %s: client closed"):format(conn.addr), "redis-unavailable"
  end
  if self.backoff then log(self, "notice", ("redis %s: connected again"):format(conn.addr)) end
  self.backoff, self.down_until, self.down_why = nil, nil, nil
  self.conn = conn
  return conn
end

-- Hand out the replies read so far to the calls waiting, in order.
local function collect(conn)
  local r, err, code = conn.c:step()
  if not r then return nil, err, code end
  for _, v in ipairs(r) do
    local slot = conn.fifo[conn.head]
    conn.fifo[conn.head] = nil
    conn.head = conn.head + 1
    if slot then slot.reply, slot.done = v, true end
  end
  return true
end

local MASTER_GONE = { READONLY = true, MASTERDOWN = true }

-- Send cmds (argument lists, checked) and wait for their replies: the list, or fail.
local function run(self, cmds)
  local deadline = core.monotonic() + self.timeout
  local conn, err, code = get_conn(self, deadline)
  if not conn then return nil, err, code end
  local slots = {}
  for i, cmd in ipairs(cmds) do
    local ok
    ok, err, code = conn.c:send(unpack(cmd, 1, cmd.n))
    if not ok then
      drop(self, conn, ("redis %s: %s"):format(conn.addr, err), code)
      return nil, conn.dead[1], conn.dead[2]
    end
    slots[i] = {}
    conn.tail = conn.tail + 1
    conn.fifo[conn.tail] = slots[i]
  end
  conn.users = conn.users + 1
  local last = slots[#slots]
  while not last.done and not conn.dead do
    local ok
    ok, err, code = collect(conn)
    if not ok then
      drop(self, conn, ("redis %s: %s"):format(conn.addr, err), code)
    elseif not last.done then
      local left = deadline - core.monotonic()
      if left <= 0 then
        -- the replies would come later, out of step with the next calls: drop the connection
        drop(self, conn, ("redis %s: timed out after %s s"):format(conn.addr, self.timeout),
          "redis-unavailable")
      else
        if conn.users > 1 then left = min(left, _M.SHARED_WAIT) end
        local pfd, perr, pcode = watch(self, conn.c)
        if not pfd then
          pfd = -1    -- this host failed: wait out the slice, then the deadline drops it
          log(self, "err", ("redis %s: %s (%s)"):format(conn.addr, perr, pcode))
        end
        wait(self, pfd, "r", left, function()
          leave(self, conn)
          drop(self, conn, ("redis %s: the caller's wait raised"):format(conn.addr),
            "redis-unavailable")
        end)
      end
    end
  end
  if not last.done then
    leave(self, conn)
    return nil, conn.dead[1], conn.dead[2]
  end
  leave(self, conn)
  local out = { n = #slots }
  for i, s in ipairs(slots) do
    local v = s.reply
    out[i] = v
    if self.sentinels and type(v) == "table" and v.err and
      MASTER_GONE[v.err:match("^(%u+)")] and self.conn == conn then
      log(self, "notice", ("redis %s: %s: asking the sentinels again"):format(conn.addr,
        show(v.err)))
      drop(self, conn, ("redis %s: no longer the master"):format(conn.addr),
        "redis-unavailable")
    end
  end
  return out, conn
end

-- A command's arguments, checked before anything is sent: the list with n.
local function args(fn, argn, ...)
  local n = select("#", ...)
  if n == 0 then error(("bad argument #%d to '%s' (a command expected)"):format(argn, fn), 3) end
  local t = { n = n, ... }
  for i = 1, n do
    local v = t[i]
    if type(v) ~= "string" and mtype(v) ~= "integer" then
      error(("bad argument #%d to '%s' (string or integer expected, got %s)"):format(
        argn + i - 1, fn, mtype(v) or type(v)), 3)
    end
  end
  return t
end

local function error_reply(conn, v)
  return nil, ("redis %s: %s"):format(conn.addr, show(v.err)), "redis-error"
end

-- --- methods ------------------------------------------------------------------------------

local function check(self)
  if getmetatable(self) ~= MT then error("bad argument #1 (mtasts.redis expected)", 3) end
  if not self.open then error("attempt to use a closed mtasts.redis", 3) end
end

--- r:call(command, arg, ...) -> the reply, or fail; an error reply is nil, msg, "redis-error".
function Redis:call(...)
  check(self)
  local cmd = args("call", 1, ...)
  local out, conn_or_err, code = run(self, { cmd })
  if not out then return nil, conn_or_err, code end
  local v = out[1]
  if type(v) == "table" and v.err then return error_reply(conn_or_err, v) end
  return v
end

--- r:pipeline{ { command, ... }, ... } -> the replies in order (error replies as { err = }),
-- or fail. All commands go in one write; the call waits for the last reply.
function Redis:pipeline(list)
  check(self)
  if type(list) ~= "table" then
    error("bad argument #1 to 'pipeline' (table expected, got " .. type(list) .. ")", 2)
  end
  if #list == 0 then error("bad argument #1 to 'pipeline' (no commands)", 2) end
  local cmds = {}
  for i, c in ipairs(list) do
    if type(c) ~= "table" then
      error(("bad argument #1 to 'pipeline' (command %d is not a table)"):format(i), 2)
    end
    cmds[i] = args("pipeline", 1, unpack(c, 1, c.n or #c))
  end
  local out, err, code = run(self, cmds)
  if not out then return nil, err, code end
  return out
end

--- r:eval(script, keys, args) -> the script's reply, or fail. EVALSHA once the script's hash
-- is known (learned with SCRIPT LOAD alongside the first EVAL); EVAL again on NOSCRIPT.
function Redis:eval(script, keys, argv)
  check(self)
  if type(script) ~= "string" then
    error("bad argument #1 to 'eval' (string expected, got " .. type(script) .. ")", 2)
  end
  keys, argv = keys or {}, argv or {}
  if type(keys) ~= "table" then error("bad argument #2 to 'eval' (table expected)", 2) end
  if type(argv) ~= "table" then error("bad argument #3 to 'eval' (table expected)", 2) end
  local rest = { #keys }
  for _, v in ipairs(keys) do rest[#rest + 1] = v end
  for _, v in ipairs(argv) do rest[#rest + 1] = v end
  local sha = self.scripts[script]
  local out, conn, code
  if sha then
    out, conn, code = run(self, { args("eval", 1, "EVALSHA", sha, unpack(rest)) })
    if not out then return nil, conn, code end
    local v = out[1]
    if not (type(v) == "table" and v.err and v.err:match("^NOSCRIPT")) then
      if type(v) == "table" and v.err then return error_reply(conn, v) end
      return v
    end
  end
  out, conn, code = run(self, { args("eval", 1, "EVAL", script, unpack(rest)),
    { "SCRIPT", "LOAD", script, n = 3 } })
  if not out then return nil, conn, code end
  if type(out[2]) == "string" then self.scripts[script] = out[2] end
  local v = out[1]
  if type(v) == "table" and v.err then return error_reply(conn, v) end
  return v
end

--- r:close() -> true. Calls in flight fail; a second close returns true.
function Redis:close()
  if not self.open then return true end
  self.open = false
  local conn = self.conn
  if conn then drop(self, conn, ("redis %s: client closed"):format(conn.addr),
    "redis-unavailable") end
  -- the poller's descriptor goes now unless a call may still wait on it (then with the
  -- collector)
  if self.poller and not self.connecting and not (conn and conn.users > 0) then
    if self.cancel then pcall(self.cancel, self.poller:fd()) end
    self.poller:close()
    self.poller = nil
  end
  return true
end

MT.__close = function(self) self:close() end
-- The finalizer closes the socket without calling the host's cancel: no user code runs inside
-- the collector, and no coroutine waits on a client nobody refers to.
MT.__gc = function(self)
  self.open = false
  if self.conn then self.conn.c:close() end
end
MT.__tostring = function(self)
  return "mtasts.redis (" .. (self.open and self.url_safe or "closed") .. ")"
end

return _M
