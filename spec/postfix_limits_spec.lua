-- The socketmap server under pressure (docs/security.md): out of descriptors it keeps
-- accepting once descriptors are free again; over its connection cap it closes new
-- connections at once; over its lookup cap it answers TEMP; its answer memo stays within
-- its byte budget; policy lines cannot add Postfix attributes.
local cqueues = require("cqueues")
local socket = require("cqueues.socket")
local postfix = require("mtasts.postfix")
local util = require("support.util")
local proc = require("support.proc")

-- A client that answers after `delay` seconds: no policy.
local function slow_client(delay)
  return { get = function()
    if delay > 0 then cqueues.sleep(delay) end
    return nil, { policy = { type = "no-policy-found" }, summary = {}, failures = {} }, true
  end, close = function() end }
end

local function connect(port)
  local con = assert(socket.connect("127.0.0.1", port))
  con:setmode("b", "b")
  return con
end

-- Read n netstring answers from con (nil in the list where the connection ended first).
local function answers(con, n, timeout)
  local got, buf = {}, ""
  local deadline = cqueues.monotime() + (timeout or 10)
  while #got < n and cqueues.monotime() < deadline do
    local v, rest = postfix.netstring_decode(buf, 100000)
    if v then
      got[#got + 1], buf = v, rest
    else
      local chunk = con:xread(-4096, "b", deadline - cqueues.monotime())
      if not chunk then break end
      buf = buf .. chunk
    end
  end
  return got
end

-- Run fn in the server's loop, then stop the server and close it.
local function with_server(opts, fn)
  local logs = {}
  opts.listen = { "inet:127.0.0.1:0" }
  opts.log = function(level, msg) logs[#logs + 1] = level .. ": " .. msg end
  local srv = assert(postfix.new(opts))
  local port = tonumber(srv:addresses()[1]:match(":(%d+)$"))
  local ok, err
  srv.loop:wrap(function()
    ok, err = pcall(fn, srv, port, logs)
    srv:stop()
  end)
  srv:run{ signals = false }
  srv:close()
  assert(ok, err)
end

describe("mtasts.postfix server limits", function()
  it("closes connections over max_connections at once and serves the others", function()
    with_server({ client = slow_client(0), max_connections = 3 }, function(srv, port, logs)
      local cons = {}
      for i = 1, 5 do cons[i] = connect(port) end
      assert(proc.poll(function() return srv:stats().accepted + srv:stats().refused == 5 end,
        util.within(10), cqueues.sleep), "the server did not take all five connections")
      for i = 1, 5 do
        cons[i]:write(postfix.netstring("postfix a" .. i .. ".example"))
        cons[i]:flush()
      end
      for i = 1, 3 do
        assert.same({ "NOTFOUND " }, answers(cons[i], 1, util.within(5)), "connection " .. i)
      end
      for i = 4, 5 do assert.same({}, answers(cons[i], 1, 5), "connection " .. i) end
      assert.equal(2, srv:stats().refused)
      assert.matches("3 connections, the limit", table.concat(logs, "\n"), 1, true)
      for i = 1, 5 do cons[i]:close() end
      assert(proc.poll(function() return srv:stats().connections == 0 end, util.within(10),
        cqueues.sleep), "the server did not see the connections close")
      local again = connect(port)
      again:write(postfix.netstring("postfix b.example"))
      again:flush()
      assert.same({ "NOTFOUND " }, answers(again, 1, util.within(5)))
      again:close()
    end)
  end)

  it("answers TEMP for requests over max_lookups, in request order, and goes on", function()
    with_server({ client = slow_client(0.3), max_lookups = 2 }, function(srv, port)
      local con = connect(port)
      for i = 1, 5 do con:write(postfix.netstring("postfix d" .. i .. ".example")) end
      con:flush()
      local got = answers(con, 5, 10)
      assert.same({ "NOTFOUND ", "NOTFOUND ", "TEMP busy: too many lookups in flight",
        "TEMP busy: too many lookups in flight", "TEMP busy: too many lookups in flight" }, got)
      assert.equal(3, srv:stats().busy)
      assert.equal(0, srv:stats().lookups)
      con:write(postfix.netstring("postfix d3.example"))
      con:flush()
      assert.same({ "NOTFOUND " }, answers(con, 1, util.within(5)))
      con:close()
    end)
  end)

  it("keeps its answer memo within two generations of memo_bytes", function()
    -- 1,000 distinct domains of ~240 bytes each in the memo: about 240 KB without the bound
    with_server({ client = slow_client(0), memo_bytes = 20000 }, function(srv, port)
      local con = connect(port)
      for round = 1, 4 do
        for i = 1, 250 do
          con:write(postfix.netstring(("postfix r%d-%03d-%s.%s.example"):format(round, i,
            ("x"):rep(50), ("y"):rep(50))))
        end
        con:flush()
        assert.equal(250, #answers(con, 250, 10))
      end
      local used = srv:stats().memo_bytes
      assert.is_true(used > 20000, "the memo was not used: " .. used .. " bytes")
      assert.is_true(used <= 2 * 20000 + 400, "memo holds " .. used .. " bytes")
      con:close()
    end)
  end)

  it("gives a connection's slot back when the peer resets it, or stops reading and idles",
    function()
    -- answers of about 7 KB (an enforce policy of 200 mx patterns), so that a peer that
    -- reads none of them fills the kernel's buffers and the server's writes stall
    local mx = {}
    for i = 1, 200 do mx[i] = ("mx%03d.some-long-name.example.com"):format(i) end
    local client = { close = function() end, get = function()
      return { mode = "enforce", mx = mx }, { policy = { type = "sts" }, summary = {},
        failures = {} }, true
    end }
    with_server({ client = client, max_connections = 2, write_timeout = 1, idle_timeout = 2 },
      function(srv, port)
      local reset, stuck = connect(port), connect(port)
      local junk = postfix.netstring("postfix big.example"):rep(4000)
      for _, c in ipairs({ reset, stuck }) do
        c:setmode("b", "bn")
        c:onerror(function(_, _, why) return why end)
        c:settimeout(0.5)
        c:write(junk)
        c:flush()
      end
      proc.poll(function() return srv:stats().accepted >= 2 end, util.within(10), cqueues.sleep)
      assert.equal(2, srv:stats().connections)
      reset:close()    -- with answers unread in its buffer: the kernel sends an RST
      proc.poll(function() return srv:stats().connections == 0 end, util.within(15),
        cqueues.sleep)
      assert.equal(0, srv:stats().connections, "a slot stayed taken")
      stuck:close()
      local again = connect(port)
      again:write(postfix.netstring("postfix [192.0.2.9]"))
      again:flush()
      assert.same({ "NOTFOUND " }, answers(again, 1, util.within(5)))
      again:close()
    end)
  end)

  it("stops reading a connection whose answers wait, so its memory stays small", function()
    with_server({ client = slow_client(2), max_pending = 16 }, function(srv, port)
      local con = connect(port)
      con:setmode("b", "bn")
      con:onerror(function(_, _, why) return why end)
      con:settimeout(0.2)
      con:write(postfix.netstring("postfix stalls.example"))   -- 2 s before its answer
      collectgarbage()
      local before = collectgarbage("count")
      local junk = postfix.netstring("postfix [192.0.2.1]"):rep(2000)
      -- up to 8 MB of requests, as fast as the kernel takes them (each flush waits at most
      -- 50 ms, and lets the server run); ten flushes in a row that time out end it
      local sent, stalled = 0, 0
      while sent < 8000000 and stalled < 10 do
        if stalled == 0 then sent = sent + (con:send(junk, 1, #junk, "n") or 0) end
        if con:flush("n", 0.05) then stalled = 0 else stalled = stalled + 1 end
      end
      collectgarbage()
      -- the server runs in this Lua state: without back-pressure it reads all 8 MB and keeps
      -- an answer for each request (4 MiB of heap; with it, under 0.1 MiB)
      local grew = collectgarbage("count") - before
      assert.is_true(grew < 1024, ("the Lua heap grew by %d KiB after %d bytes"):format(
        grew // 1, sent))
      con:close()
      assert.is_true(srv:stats().connections <= 1)
    end)
  end)

  it("lets what the cache answers through at the lookup cap", function()
    local client = slow_client(0.5)
    client.answers_now = function(_, domain) return domain == "cached.example" end
    with_server({ client = client, max_lookups = 1 }, function(_, port)
      local con = connect(port)
      con:write(postfix.netstring("postfix slow.example"))
      con:write(postfix.netstring("postfix cached.example"))
      con:write(postfix.netstring("postfix other.example"))
      con:flush()
      assert.same({ "NOTFOUND ", "NOTFOUND ", "TEMP busy: too many lookups in flight" },
        answers(con, 3, 10))
      con:close()
    end)
  end)

  it("lowers its caps to fit the descriptor limit, and says so", function()
    local script = [[
      local postfix = require("mtasts.postfix")
      local logs = {}
      local srv = assert(postfix.new{ client = { get = function() end, close = function() end },
        listen = { "inet:127.0.0.1:0" }, log = function(_, m) logs[#logs + 1] = m end })
      local st = srv:stats()
      srv:close()
      io.write(st.max_connections, " ", st.max_lookups, "\n", table.concat(logs, "\n"))
    ]]
    local dir, cleanup = util.tmpdir()
    finally(cleanup)
    util.write(dir .. "/fit.lua", script)
    local out, status = util.run("prlimit --nofile=128:128 " .. util.lua_cmd() .. " " .. dir ..
      "/fit.lua")
    assert.equal(0, status, out)
    local conns, lookups = out:match("^(%d+) (%d+)\n")
    conns, lookups = tonumber(conns), tonumber(lookups)
    assert.truthy(conns and lookups, out)
    -- 128, less what a memcheck wrapper (make valgrind) keeps for itself
    local limit = tonumber(out:match("the descriptor limit is (%d+):"))
    assert.truthy(limit and limit <= 128 and limit > 64, out)
    assert.is_true(conns >= 1 and conns + 3 * lookups <= limit - 32, out)
  end)
end)

-- Under make valgrind the server runs inside memcheck, which keeps descriptors of its own and
-- lowers the limit the process sees: what these specs exhaust is not what the server has.
-- make test and make asan run them.
local it_fds = (os.getenv("MTASTS_VALGRIND") or "") == "" and it or pending

describe("mtasts.postfix server out of descriptors #fixture", function()
  -- A server process whose descriptors are all taken (by files it opens itself) when a
  -- connection arrives: accept fails with EMFILE. It frees them a second later; the waiting
  -- connection must then be accepted and answered.
  it_fds("logs EMFILE, backs off and accepts again once descriptors are free", function()
    local dir, cleanup = util.tmpdir()
    finally(cleanup)
    util.write(dir .. "/emfile.lua", [[
      local cqueues = require("cqueues")
      local postfix = require("mtasts.postfix")
      local poll = require("support.proc").poll   -- loaded while descriptors are free
      local srv = assert(postfix.new{ listen = { "inet:127.0.0.1:0" },
        client = { get = function() return nil end, close = function() end },
        log = function(level, m) io.stderr:write(level, ": ", m, "\n") end })
      local hog = {}
      repeat
        local f = io.open("/dev/null")
        hog[#hog + 1] = f
      until not f
      io.stdout:write(srv:addresses()[1], "\n")
      io.stdout:flush()
      srv.loop:wrap(function()
        -- no assert: whatever happens, this process frees its descriptors and stops
        poll(function() return srv:stats().accept_errors > 0 end, 30, cqueues.sleep)
        cqueues.sleep(1)   -- out of descriptors for a second on purpose: accept backs off
        for _, f in ipairs(hog) do f:close() end
        hog = nil
        collectgarbage()
        poll(function() return srv:stats().accepted > 0 end, 30, cqueues.sleep)
        -- the spec closes its connection once it has read the answer
        poll(function() return srv:stats().connections == 0 end, 30, cqueues.sleep)
        srv:stop()
      end)
      srv:run{ signals = false }
      io.stderr:write("accept errors: ", srv:stats().accept_errors, "\n")
      srv:close()
    ]])
    local log = dir .. "/emfile.log"
    local pid = proc.spawn("emfile", "prlimit --nofile=64:64 " .. util.lua_cmd() .. " " .. dir ..
      "/emfile.lua", log)
    local port
    assert.is_true(proc.poll(function()
      port = tonumber((util.run("cat " .. log):match("inet:127%.0%.0%.1:(%d+)")))
      return port ~= nil or not proc.alive(pid)
    end, util.within(10)), util.run("cat " .. log))
    assert.truthy(port, util.run("cat " .. log))
    local got
    local loop = cqueues.new()
    loop:wrap(function()
      local con = connect(port)
      con:write(postfix.netstring("postfix late.example"))
      con:flush()
      got = answers(con, 1, util.within(10))
      con:close()
    end)
    assert(loop:loop())
    assert.same({ "NOTFOUND " }, got, util.run("cat " .. log))
    assert.is_true(proc.poll(function() return not proc.alive(pid) end, util.within(10)))
    local text = util.run("cat " .. log)
    assert.matches("Too many open files", text, 1, true)
    assert.matches("retrying in", text, 1, true)
  end)
end)

describe("mtasts.postfix answers", function()
  it("leave out policy lines that could add Postfix attributes", function()
    local policy = { mode = "enforce", mx = { "mx.example.com" } }
    local a = postfix.answer(policy, { tlsrpt = true, domain = "example.com",
      text = "version: STSv1\nmode: enforce\nmx: mx.example.com\n" ..
        "x: } tafile=/etc/passwd level=may {\nmax_age: 86400\n" })
    assert.is_nil(a:find("tafile", 1, true), a)
    assert.is_nil(a:find("level=may", 1, true), a)
    assert.matches("{ policy_string = max_age: 86400 }", a, 1, true)
    assert.equal(select(2, a:gsub("{", "")), select(2, a:gsub("}", "")))
    -- Postfix splits at commas too: a value with one is braced whole
    a = postfix.answer(policy, { tlsrpt = true, domain = "example.com",
      text = "version: STSv1\nmode: enforce\nx:a,tafile=/etc/passwd\n" })
    assert.matches("{ policy_string = x:a,tafile=/etc/passwd }", a, 1, true)
    assert.is_nil(a:find(" policy_string=x:a", 1, true), a)
  end)

  it("answer TEMP when this host failed (local), so Postfix defers, and log it once",
    function()
      local calls = 0
      local client = { close = function() end, get = function()
        calls = calls + 1
        return nil, nil, false, "mta-sts.x.example: this host failed: error setting " ..
          "certificate file:\n/etc/ca.pem", "local"
      end }
      with_server({ client = client, memo_seconds = 0, zones = { ["*"] = { tlsrpt = true,
        failure_level = "may" } } }, function(_, port, logs)
        local con = connect(port)
        for i = 1, 3 do con:write(postfix.netstring("postfix x" .. i .. ".example")) end
        con:flush()
        local want = "TEMP mta-sts.x.example: this host failed: error setting certificate " ..
          "file: /etc/ca.pem"
        assert.same({ want, want, want }, answers(con, 3, util.within(5)))
        con:close()
        assert.equal(3, calls)
        local errs = {}
        for _, l in ipairs(logs) do
          if l:find("this host failed: answering TEMP", 1, true) then errs[#errs + 1] = l end
        end
        assert.equal(1, #errs, table.concat(logs, "\n"))    -- held back for 10 s
        assert.matches("^err: x%d.example: mta%-sts.x.example: this host failed: ", errs[1])
      end)
    end)
end)

describe("mtasts.postfix settings", function()
  local dir, cleanup
  setup(function() dir, cleanup = util.tmpdir() end)
  teardown(function() cleanup() end)
  local client = slow_client(0)

  local function assert_config(option, part, ok, msg, code, key)
    assert.is_nil(ok)
    assert.equal("config", code, msg)
    assert.equal(option, key, msg)
    assert.matches(part, msg, 1, true)
  end

  it("fails with config on a listen address that does not parse, before the client opens",
    function()
      local path = dir .. "/cache"
      assert_config("listen", "listen: 'inet:127.0.0.1:99999': port 99999 is out of range",
        postfix.new{ client_opts = { path = path }, listen = { "inet:127.0.0.1:99999" } })
      assert_config("listen", "listen: 'tcp:x': 'tcp' is not a known scheme",
        postfix.new{ client_opts = { path = path }, listen = { "tcp:x" } })
      assert_config("listen", "expected inet:HOST:PORT, HOST:PORT or unix:PATH",
        postfix.new{ client_opts = { path = path }, listen = { "inet:127.0.0.1" } })
      assert_config("listen", "unix: needs a path", postfix.new{ client = client,
        listen = { "unix:" } })
      assert.is_nil(os.rename(path, path), "the client's cache directory was made")
      -- the client's settings: a nameserver port out of range (--nameserver 127.0.0.1@99999)
      local ok, msg, code, key = postfix.new{ client_opts = { path = path,
        nameserver = "127.0.0.1@99999", trust_anchor = false }, listen = { "inet:127.0.0.1:0" } }
      assert.same({ nil, "nameserver: '127.0.0.1@99999': port 99999 is out of range (1-65535)",
        "config", "nameserver" }, { ok, msg, code, key })
      assert.is_nil(os.rename(path, path), "the client's cache directory was made")
      -- the forms that parse
      assert.same({ host = "127.0.0.1", port = 8461 }, postfix.parse_listen("inet:127.0.0.1:8461"))
      assert.same({ host = "localhost", port = 0 }, postfix.parse_listen("localhost:0"))
      assert.same({ host = "::1", port = 25 }, postfix.parse_listen("inet:[::1]:25"))
      assert.same({ path = "/run/x.sock" }, postfix.parse_listen("unix:/run/x.sock"))
    end)

  it("fails with config on limits, zones and a socket mode that cannot work", function()
    assert_config("max_connections", "-1 is not an integer of at least 0",
      postfix.new{ client = client, max_connections = -1 })
    assert_config("max_lookups", "1.5 is not an integer",
      postfix.new{ client = client, max_lookups = 1.5 })
    assert_config("socket_mode", "'999' is not an octal mode",
      postfix.new{ client = client, socket_mode = "999" })
    assert_config("zones", "failure_level 'maybe' of zone 'postfix' is not a Postfix " ..
      "security level", postfix.new{ client = client,
      zones = { postfix = { tlsrpt = true, failure_level = "maybe" } } })
    assert.has_error(function() postfix.new{ client = client, max_lookups = "256" } end,
      "bad argument #1 to 'new' (max_lookups must be a number)")
    assert.has_error(function() postfix.new{ client = client, zones = { x = { sni = 1 } } } end,
      "bad argument #1 to 'new' (unknown option 'sni' in zone 'x')")
  end)

  it("names the address and the reason when it cannot be bound", function()
    local first = assert(postfix.new{ client = client, listen = { "inet:127.0.0.1:0" } })
    local taken = first:addresses()[1]
    local srv, msg, code = postfix.new{ client = client, listen = { taken } }
    assert.is_nil(srv)
    assert.equal("listen", code)
    assert.equal("listen: '" .. taken .. "': Address already in use", msg)
    first:close()
  end)
end)



describe("mtasts serve postfix at a low descriptor limit #fixture", function()
  -- The attack of the audit: 400 pipelined lookups of distinct domains whose policy hosts
  -- never answer, against a server limited to 256 descriptors. Lookups past the cap are
  -- answered TEMP at once; the resolver never runs out of sockets; other connections are
  -- served meanwhile and afterwards.
  it_fds("answers every request and stays open to others", function()
    local dir, cleanup = util.tmpdir()
    local dns
    -- one finally: busted keeps only the last one a test registers
    finally(function()
      if dns then dns.stop() end
      proc.stop_all()
      cleanup()
    end)
    dns = require("support.dns").start({ ["example."] = {
      '*.slow IN TXT "v=STSv1; id=1;"', "*.slow IN A 127.0.0.1" } })
    local stall = proc.free_port()
    proc.spawn("stall", "build/support/stall " .. stall .. " 120", dir .. "/stall.log")
    assert(proc.poll(function() return proc.tcp_open(stall) end, 10))
    local out = dir .. "/server.out"
    local pid = proc.spawn("mtasts-serve", "prlimit --nofile=256:256 " .. util.lua_cmd() ..
      " bin/mtasts --db " .. dir .. "/cache --nameserver " .. dns.nameserver ..
      " --trust-anchor none --allow-private-addresses --connect-to :443:127.0.0.1:" .. stall ..
      -- scaled like every wait here: under ASan or a loaded machine the ~30 stalled fetches
      -- take seconds to start, and must all still be stalled when they are counted
      " --timeout " .. util.within(3) ..
      " serve postfix --listen inet:127.0.0.1:0", out)
    local port
    assert(proc.poll(function()
      port = tonumber((util.run("cat " .. out):match("inet:127%.0%.0%.1:(%d+)")))
      return port or not proc.alive(pid)
    end, util.within(10)), util.run("cat " .. out))
    assert.truthy(port, util.run("cat " .. out))
    local got, quick, after
    local loop = cqueues.new()
    loop:wrap(function()
      -- four connections of 100 each: one connection alone is read only while at most 64 of
      -- its answers wait, so these are what reaches the lookup cap at once
      local cons = {}
      for c = 1, 4 do
        cons[c] = connect(port)
        for i = 1, 100 do
          cons[c]:write(postfix.netstring(("postfix c%dd%d.slow.example"):format(c, i)))
        end
        cons[c]:flush()
      end
      cqueues.running():wrap(function()
        -- once the lookups at the cap all stall: their policy fetches reached the stall server
        local cap = tonumber(util.run("cat " .. out):match("(%d+) lookups at once")) or 1
        assert(proc.poll(function() return proc.connections(stall) >= cap end, util.within(10),
          cqueues.sleep), "the lookups did not reach the stall server")
        local other = connect(port)
        local t0 = cqueues.monotime()
        other:write(postfix.netstring("postfix [192.0.2.1]"))
        other:flush()
        quick = { answers(other, 1, util.within(5)), cqueues.monotime() - t0 }
        other:close()
      end)
      got = {}
      local done = 0
      for c = 1, 4 do
        cqueues.running():wrap(function()
          for _, a in ipairs(answers(cons[c], 100, util.within(60))) do got[#got + 1] = a end
          cons[c]:close()
          done = done + 1
        end)
      end
      assert(proc.poll(function() return done == 4 end, util.within(90), cqueues.sleep),
        "the four connections were not all answered")
      local last = connect(port)
      last:write(postfix.netstring("postfix [192.0.2.2]"))
      last:flush()
      after = answers(last, 1, util.within(5))
      last:close()
    end)
    assert(loop:loop())
    local log = util.run("cat " .. out)
    assert.equal(400, #got, log)
    local busy, none = 0, 0
    for _, a in ipairs(got) do
      if a == "NOTFOUND " then none = none + 1
      elseif a:match("^TEMP busy") then busy = busy + 1 end
    end
    assert.equal(400, busy + none, log)
    assert.is_true(none >= 1 and busy >= 1, ("%d NOTFOUND, %d TEMP"):format(none, busy))
    assert.same({ "NOTFOUND " }, quick[1])
    -- well before the stalled lookups end (3 s scaled); not at once, though: each of the ~30 policy
    -- fetches that start together costs OpenSSL ~20 ms of CPU in the loop (a new SSL_CTX)
    assert.is_true(quick[2] < util.within(2), "the other connection waited " .. quick[2] ..
      " s: " .. log)
    assert.same({ "NOTFOUND " }, after)
    assert.is_nil(log:find("Too many open files", 1, true), log)
    assert.is_nil(log:find("can't create socket", 1, true), log)
    assert.matches("the descriptor limit is 256", log, 1, true)
  end)
end)
