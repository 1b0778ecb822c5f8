-- mtasts.redis against private redis-server and redis-sentinel processes on loopback
-- (spec/support/redis.lua), a stalling listener and hostile servers in this process
-- (cqueues). docs/redis.md is the contract.
local core = require("mtasts.core")
local redis = require("mtasts.redis")
local util = require("support.util")
local proc = require("support.proc")
local sredis = require("support.redis")
local cqueues = require("cqueues")
local socket = require("cqueues.socket")

-- A client with a timeout that make valgrind scales (the TLS handshake is slow there).
local function new(opts)
  opts.timeout = opts.timeout or util.within(1)
  return redis.new(opts)
end

local function failed(code, part, r, msg, c)
  assert.is_nil(r)
  assert.equal(code, c, msg)
  if part then assert.truthy(msg:find(part, 1, true), msg) end
end

-- Run fn in a cqueues loop next to a server that answers every connection with payload
-- (after the first bytes of a command, when read_first) and then keeps it open.
local function with_hostile(payload, fn)
  local srv = assert(socket.listen{ host = "127.0.0.1", port = 0 })
  assert(srv:listen())
  local _, _, port = srv:localname()
  local loop, done = cqueues.new(), false
  loop:wrap(function()
    while not done do
      local c = srv:accept(0.05)
      if c then
        loop:wrap(function()
          c:setmode("b", "b")   -- no end-of-line translation
          c:xread(1, "b", 1)
          c:write(payload)
          c:flush()
          while not done do cqueues.sleep(0.05) end
          c:close()
        end)
      end
    end
  end)
  local out
  loop:wrap(function()
    out = table.pack(fn(port, function(fd, events, timeout)
      cqueues.poll({ pollfd = fd, events = events }, timeout)
    end, cqueues.cancel))
    done = true
  end)
  assert(loop:loop())
  srv:close()
  return table.unpack(out, 1, out.n)
end

describe("mtasts.redis #fixture", function()
  local dir, cleanup, s

  setup(function()
    dir, cleanup = util.tmpdir()
    s = sredis.start(dir)
  end)

  teardown(function()
    proc.stop_all()
    cleanup()
  end)

  local function url(db) return "redis://127.0.0.1:" .. s.port .. (db and "/" .. db or "") end

  it("calls: strings (binary-safe), integers, nil as false, arrays with n, errors", function()
    local r <close> = assert(new{ url = url() })
    assert.equal("OK", r:call("SET", "bin", "a\0b\255"))
    assert.equal("a\0b\255", r:call("GET", "bin"))
    assert.is_false(r:call("GET", "missing"))
    assert.equal("integer", math.type(r:call("DEL", "n")))
    assert.equal(1, r:call("INCR", "n"))
    assert.equal(12, r:call("INCRBY", "n", 11))
    r:call("DEL", "l")
    assert.equal(3, r:call("RPUSH", "l", "x", "", "z\0"))
    assert.same({ "x", "", "z\0", n = 3 }, r:call("LRANGE", "l", 0, -1))
    assert.same({ n = 0 }, r:call("LRANGE", "nothing", 0, -1))
    failed("redis-error", "WRONGTYPE", r:call("INCR", "l"))
    failed("redis-error", "ERR unknown command", r:call("NOSUCHCOMMAND"))
    assert.has_error(function() r:call() end, "bad argument #1 to 'call' (a command expected)")
    assert.has_error(function() r:call("SET", "k", 1.5) end,
      "bad argument #3 to 'call' (string or integer expected, got float)")
    assert.has_error(function() r:call("SET", "k", {}) end)
  end)

  it("pipeline: replies in order, error replies as { err = }", function()
    local r <close> = assert(new{ url = url() })
    local out = assert(r:pipeline{ { "DEL", "h" }, { "HSET", "h", "f", "v\0" },
      { "EXPIRE", "h", 10 }, { "HGETALL", "h" }, { "LPUSH", "h", "x" }, { "GET", "none" } })
    assert.equal(6, out.n)
    assert.same({ 0, 1, 1, { "f", "v\0", n = 2 } }, { out[1], out[2], out[3], out[4] })
    assert.truthy(out[5].err:find("^WRONGTYPE"))
    assert.is_false(out[6])
    -- many at once: one write, every reply comes back to its command
    local cmds = {}
    for i = 1, 2000 do cmds[i] = { "ECHO", ("x"):rep(i) } end
    out = assert(r:pipeline(cmds))
    for i = 1, 2000 do assert.equal(i, #out[i]) end
    assert.has_error(function() r:pipeline{} end, "bad argument #1 to 'pipeline' (no commands)")
  end)

  it("eval: EVAL with SCRIPT LOAD first, then EVALSHA, EVAL again after SCRIPT FLUSH", function()
    local r <close> = assert(new{ url = url() })
    local script = "return { KEYS[1], ARGV[1], #ARGV }"
    assert.same({ "k", "a", 2, n = 3 }, r:eval(script, { "k" }, { "a", "b" }))
    assert.is_string(r.scripts[script])
    assert.same({ "k2", "c", 1, n = 3 }, r:eval(script, { "k2" }, { "c" }))
    assert.equal("OK", s:cmd("SCRIPT", "FLUSH"))
    assert.same({ "k3", "d", 1, n = 3 }, r:eval(script, { "k3" }, { "d" }))
    failed("redis-error", "BOOM", r:eval("return redis.error_reply('BOOM here')"))
  end)

  it("SELECT: the database of the URL", function()
    local r <close> = assert(new{ url = url(5) })
    assert.truthy(r:call("CLIENT", "INFO"):find(" db=5 ", 1, true))
    assert.equal("OK", r:call("SET", "in5", "yes"))
    local r0 <close> = assert(new{ url = url() })
    assert.is_false(r0:call("GET", "in5"))
  end)

  it("AUTH: a password, an ACL user; a wrong password fails clearly", function()
    local a = sredis.start(dir, { requirepass = "s3cret",
      users = { "alice on >wonder ~* &* +@all" } })
    local base = "127.0.0.1:" .. a.port
    local r <close> = assert(new{ url = "redis://:s3cret@" .. base })
    assert.equal("PONG", r:call("PING"))
    local u <close> = assert(new{ url = "redis://alice:wonder@" .. base .. "/2" })
    assert.equal("alice", u:call("ACL", "WHOAMI"))
    assert.equal("redis://alice@" .. base .. "/2", u.url_safe)
    local pf = dir .. "/password"
    util.write(pf, "s3cret\n")
    local f <close> = assert(new{ url = "redis://" .. base, password_file = pf })
    assert.equal("PONG", f:call("PING"))
    local w <close> = assert(new{ url = "redis://alice:wrong@" .. base })
    failed("redis-unavailable", "AUTH failed: WRONGPASS", w:call("PING"))
    local n <close> = assert(new{ url = "redis://" .. base })
    failed("redis-unavailable", "PING failed: NOAUTH", n:call("PING"))
    a:stop()
  end)

  it("TLS: verified against the CA file; an untrusted CA and a wrong name are refused", function()
    local ca = require("support.ca").new(dir .. "/ca")
    local cert, key = ca:issue("localhost")
    local t = sredis.start(dir, { tls = { cert = cert, key = key, ca = ca.cafile } })
    local r <close> = assert(new{ url = "rediss://localhost:" .. t.tls_port,
      cafile = ca.cafile })
    assert.equal("PONG", r:call("PING"))
    local byip <close> = assert(new{ url = "rediss://127.0.0.1:" .. t.tls_port,
      cafile = ca.cafile, server_name = "localhost" })
    assert.equal("PONG", byip:call("PING"))
    local other <close> = assert(new{ url = "rediss://localhost:" .. t.tls_port,
      cafile = ca.other.crt })
    failed("redis-unavailable", "certificate verify failed", other:call("PING"))
    local wrong <close> = assert(new{ url = "rediss://127.0.0.1:" .. t.tls_port,
      cafile = ca.cafile, server_name = "wrong.example" })
    failed("redis-unavailable", "certificate verify failed", wrong:call("PING"))
    local noname <close> = assert(new{ url = "rediss://127.0.0.1:" .. t.tls_port,
      cafile = ca.cafile })
    failed("redis-unavailable", "certificate verify failed", noname:call("PING"))
    -- TLS to the plain port: the handshake fails, no hang
    local plain <close> = assert(new{ url = "rediss://localhost:" .. t.port,
      cafile = ca.cafile })
    failed("redis-unavailable", nil, plain:call("PING"))
    t:stop()
  end)

  it("times out against a server that accepts and never answers, then backs off", function()
    local srv = assert(socket.listen{ host = "127.0.0.1", port = 0 })
    assert(srv:listen())   -- the kernel accepts; nobody ever reads or answers
    local _, _, port = srv:localname()
    local r <close> = assert(new{ url = "redis://127.0.0.1:" .. port, timeout = 0.3 })
    local t0 = core.monotonic()
    failed("redis-unavailable", "redis 127.0.0.1:" .. port .. ": timed out after 0.3 s",
      r:call("PING"))
    local took = core.monotonic() - t0
    assert.is_true(took >= 0.29 and took < util.within(1), took)
    t0 = core.monotonic()
    failed("redis-unavailable", "not retrying", r:call("PING"))
    assert.is_true(core.monotonic() - t0 < util.within(0.05))
    srv:close()
  end)

  it("Redis down: fails fast, backs off (doubling), connects once it is up", function()
    local port = proc.free_port()
    local logs = {}
    local r <close> = assert(new{ url = "redis://127.0.0.1:" .. port, retry = 0.2,
      log = function(level, msg) logs[#logs + 1] = level .. " " .. msg end })
    failed("redis-unavailable", "Connection refused", r:call("PING"))
    failed("redis-unavailable", "Connection refused (not retrying for 0.", r:call("PING"))
    assert.equal(1, #logs)
    assert.truthy(logs[1]:find("next try in 0.2 s", 1, true), logs[1])
    assert(proc.poll(function() return r.down_until < core.monotonic() end, 1))
    failed("redis-unavailable", "Connection refused", r:call("PING"))
    assert.truthy(logs[2]:find("next try in 0.4 s", 1, true), logs[2])
    failed("redis-unavailable", "not retrying", r:call("PING"))
    for _ = 1, 6 do   -- doubling, up to 30 s at most
      r.down_until = 0
      r:call("PING")
    end
    assert.truthy(logs[#logs]:find("next try in 25.6 s", 1, true), logs[#logs])
    r.down_until = 0
    r:call("PING")
    assert.truthy(logs[#logs]:find("next try in 30 s", 1, true), logs[#logs])
    r.down_until = 0
    local up = sredis.start(dir, { port = port })
    assert(proc.poll(function() return r:call("PING") == "PONG" end, util.within(3)))
    assert.truthy(logs[#logs]:find("connected again", 1, true), logs[#logs])
    up:stop()
  end)

  it("Redis killed and restarted: the call in flight fails, later calls reconnect", function()
    local k = sredis.start(dir)
    local r <close> = assert(new{ url = "redis://127.0.0.1:" .. k.port, retry = 0.1 })
    assert.equal("OK", r:call("SET", "a", "1"))
    k:kill("KILL")
    failed("redis-unavailable", nil, r:call("GET", "a"))
    k:restart()
    assert(proc.poll(function() return r:call("PING") == "PONG" end, util.within(3)))
    k:stop()
  end)

  it("refuses hostile replies with redis-protocol: huge lengths, deep nesting, garbage",
    function()
      local cases = {
        { "$99999999999\r\n", "a bulk string of 99999999999 bytes, over the limit of 64 MiB" },
        { "$67108865\r\nabc", "over the limit of 64 MiB" },
        { "*2000000\r\n", "over 1048576 array elements" },
        { ("*1\r\n"):rep(12) .. ":1\r\n", "nested" },
        { "!garbage\r\n", "Protocol error" },
        { "+" .. ("x"):rep(70000), "a line over 64 KiB" },
        { "$-5\r\n", "length" },
        { "+PONG\r\n+PONG\r\n", "a reply to no command" },
      }
      for _, case in ipairs(cases) do
        local r, msg, code = with_hostile(case[1], function(port, wait, cancel)
          local c <close> = assert(new{ url = "redis://127.0.0.1:" .. port, wait = wait,
            cancel = cancel, timeout = 2 })
          return c:call("PING")
        end)
        assert.is_nil(r, case[2])
        assert.equal("redis-protocol", code, msg)
        assert.truthy(msg:find(case[2], 1, true), case[2] .. ": " .. msg)
      end
    end)

  it("many coroutines in a cqueues loop share one client and get their own replies", function()
    local r <close> = assert(new{ url = url(), cancel = cqueues.cancel,
      wait = function(fd, events, timeout)
        cqueues.poll({ pollfd = fd, events = events }, timeout)
      end })
    assert(r:call("DEL", "c"))
    local loop, got = cqueues.new(), {}
    for i = 1, 50 do
      loop:wrap(function()
        got[i] = { r:call("ECHO", "n" .. i), r:pipeline{ { "INCR", "c" }, { "ECHO", i } } }
      end)
    end
    assert(loop:loop())
    for i = 1, 50 do
      assert.equal("n" .. i, got[i][1])
      assert.equal(tostring(i), got[i][2][2])
    end
    assert.equal("50", s:cmd("GET", "c"))
  end)

  it("Sentinel: finds the master, follows a failover #slow", function()
    local m = sredis.start(dir)
    local rep = sredis.start(dir, { replicaof = m.port })
    assert(proc.poll(function()
      return (rep:cmd("INFO", "replication") or ""):find("master_link_status:up", 1, true)
    end, 10))
    local t = sredis.sentinel(dir, m.port)
    assert(proc.poll(function()
      local reps = t:cmd("SENTINEL", "replicas", sredis.MASTER)
      return type(reps) == "table" and reps.n == 1
    end, 15), "the sentinel never saw the replica")
    local logs = {}
    local r <close> = assert(new{ sentinels = { "127.0.0.1:" .. t.port },
      master = sredis.MASTER, retry = 0.1, timeout = util.within(1),
      log = function(level, msg) logs[#logs + 1] = level .. " " .. msg end })
    assert.equal("OK", r:call("SET", "k", "before"))
    assert.truthy(logs[1]:find("is at 127.0.0.1:" .. m.port, 1, true), logs[1])
    assert(proc.poll(function() return t:cmd("SENTINEL", "failover", sredis.MASTER) == "OK" end,
      15), "the sentinel would not fail over")
    assert(proc.poll(function()
      local role = rep:cmd("ROLE")
      return type(role) == "table" and role[1] == "master"
    end, 15), "no failover")
    -- until the client has moved: a write may still reach the old master before the sentinel
    -- demotes it (Redis loses such writes in a failover)
    assert(proc.poll(function()
      return r:call("SET", "k", "after") == "OK" and r.master_addr == "127.0.0.1:" .. rep.port
    end, 15))
    assert.equal("after", rep:cmd("GET", "k"))
    assert.truthy(logs[#logs]:find("moved from 127.0.0.1:" .. m.port .. " to 127.0.0.1:" ..
      rep.port, 1, true) or table.concat(logs, "\n"):find("to 127.0.0.1:" .. rep.port, 1, true),
      table.concat(logs, "\n"))
    -- no sentinel answers: redis-unavailable naming each
    t:stop()
    local gone <close> = assert(new{ sentinels = { "127.0.0.1:" .. t.port },
      master = sredis.MASTER })
    failed("redis-unavailable", "redis 127.0.0.1:" .. t.port, gone:call("PING"))
    m:stop()
    rep:stop()
  end)

  describe("settings", function()
    it("a value that cannot work: nil, message, config, option", function()
      local cases = {
        { { url = "http://127.0.0.1" }, "url", "scheme 'http'" },
        { { url = "redis://mail.example.com" }, "url", "not an IP address or localhost" },
        { { url = "redis://127.0.0.1:0" }, "url", "port 0 is out of range" },
        { { url = "redis://127.0.0.1:70000" }, "url", "out of range" },
        { { url = "redis://127.0.0.1/-1" }, "url", "not a non-negative integer" },
        { { url = "redis://127.0.0.1/x" }, "url", "not a non-negative integer" },
        { { url = "redis://127.0.0.1?db=1" }, "url", "query" },
        { { url = "redis://[::1" }, "url", "']'" },
        { { url = "redis://" }, "url", "required" },
        { {}, "url", "required" },
        { { url = "redis://127.0.0.1", timeout = 0 }, "timeout", "" },
        { { url = "redis://127.0.0.1", retry = -1 }, "retry", "" },
        { { url = "redis://127.0.0.1", master = "m" }, "master", "only with sentinels" },
        { { sentinels = { "127.0.0.1" } }, "master", "required" },
        { { sentinels = {}, master = "m" }, "sentinels", "empty" },
        { { sentinels = { "sentinel.example:26379" }, master = "m" }, "sentinels", "entry 1" },
        { { url = "redis://127.0.0.1", sentinels = { "127.0.0.1" }, master = "m" }, "url",
          "no host" },
        { { url = "redis://127.0.0.1", password_file = "/nonexistent/pw" }, "password_file",
          "cannot read" },
        { { url = "redis://127.0.0.1", username = "u" }, "username", "needs a password" },
      }
      for _, c in ipairs(cases) do
        local r, msg, code, key = redis.new(c[1])
        assert.is_nil(r, c[2])
        assert.equal("config", code, msg)
        assert.equal(c[2], key, msg)
        assert.truthy(msg:find(c[3], 1, true), msg)
      end
    end)

    it("misuse raises: unknown options, wrong types", function()
      assert.has_error(function() redis.new{ url = "redis://127.0.0.1", db = 1 } end,
        "bad argument #1 to 'new' (unknown option 'db')")
      assert.has_error(function() redis.new{ url = 6379 } end,
        "bad argument #1 to 'new' (url must be a string)")
      assert.has_error(function() redis.new{ url = "redis://127.0.0.1", timeout = "1" } end,
        "bad argument #1 to 'new' (timeout must be a number)")
      assert.has_error(function() redis.new("redis://127.0.0.1") end,
        "bad argument #1 to 'new' (table expected, got string)")
    end)

    it("accepts localhost, [::1], a default port, and hides the password", function()
      local r = assert(new{ url = "rediss://:pw@localhost/3" })
      assert.equal("rediss://localhost:6379/3", r.url_safe)
      r = assert(new{ url = "redis://u:p%40ss@[::1]:7000" })
      assert.equal("redis://u@[::1]:7000/0", r.url_safe)
      assert.equal("p@ss", r.password)
      r = assert(new{ sentinels = { "127.0.0.1", "[::1]:26380" }, master = "m",
        url = "redis:///4" })
      assert.equal("redis://127.0.0.1:26379,::1:26380/m/4", r.url_safe)
    end)
  end)

  describe("lifecycle", function()
    it("the client: close twice, use after close raises, <close>, __tostring", function()
      local r = assert(new{ url = url() })
      assert.equal("PONG", r:call("PING"))
      assert.equal("mtasts.redis (" .. r.url_safe .. ")", tostring(r))
      assert.is_true(r:close())
      assert.is_true(r:close())
      assert.equal("mtasts.redis (closed)", tostring(r))
      assert.has_error(function() r:call("PING") end, "attempt to use a closed mtasts.redis")
      assert.has_error(function() r:pipeline{ { "PING" } } end,
        "attempt to use a closed mtasts.redis")
      assert.has_error(function() r:eval("return 1") end, "attempt to use a closed mtasts.redis")
      do local _ <close> = assert(new{ url = url() }) end
      local g = assert(new{ url = url() })
      assert.equal("PONG", g:call("PING"))   -- connected, then dropped: __gc closes it
      g = nil   -- luacheck: ignore
      collectgarbage()
      collectgarbage()
    end)

    it("the connection (core.redis_connect): close twice, methods after close raise", function()
      local c = assert(core.redis_connect{ host = "127.0.0.1", port = s.port })
      assert.matches("^mtasts.redis_conn %(0x", tostring(c))
      assert.equal("w", c:want())
      assert(c:send("PING"))
      assert.equal(1, c:pending())
      assert.is_true(c:close())
      assert.is_true(c:close())
      assert.equal("mtasts.redis_conn (closed)", tostring(c))
      for _, m in ipairs({ "fd", "want", "step", "pending", "send" }) do
        assert.has_error(function() c[m](c, "PING") end,
          "attempt to use a closed mtasts.redis_conn")
      end
      do local _ <close> = assert(core.redis_connect{ host = "127.0.0.1", port = s.port }) end
      failed("config", "not an IPv4 or IPv6 address",
        core.redis_connect{ host = "localhost", port = 1 })
      assert.has_error(function() core.redis_connect{ host = "127.0.0.1", port = 1, x = 1 } end,
        "bad argument #1 to 'redis_connect' (unknown option 'x')")
      collectgarbage()
      collectgarbage()
    end)
  end)
end)
