-- `mtasts serve postfix` (mtasts.postfix): the socketmap protocol, the answers
-- postfix-mta-sts-resolver gives, concurrency, limits, shutdown, and Postfix's own `postmap -q`
-- against it. The server runs as a process of its own against the fixture world.
local cqueues = require("cqueues")
local socket = require("cqueues.socket")
local postfix = require("mtasts.postfix")
local core = require("mtasts.core")
local util = require("support.util")
local proc = require("support.proc")

describe("mtasts.postfix protocol", function()
  it("decodes netstrings, asks for more, refuses garbage and oversize", function()
    assert.same({ "postfix a.example", "rest" },
      { postfix.netstring_decode("17:postfix a.example,rest") })
    assert.same({ nil, "17:postfix a" }, { postfix.netstring_decode("17:postfix a") })
    assert.same({ nil, "" }, { postfix.netstring_decode("") })
    assert.same({ nil, "12" }, { postfix.netstring_decode("12") })
    assert.equal("malformed netstring", select(3, postfix.netstring_decode("x:abc,")))
    assert.equal("malformed netstring", select(3, postfix.netstring_decode("03:abc,")))
    assert.equal("netstring without its comma", select(3, postfix.netstring_decode("3:abc;")))
    assert.matches("over the limit", select(3, postfix.netstring_decode("5000:")))
    assert.matches("too long", select(3, postfix.netstring_decode("123456789")))
    assert.equal("5:hello,", postfix.netstring("hello"))
  end)

  it("maps keys to domains; IP literals and parent keys need no lookup", function()
    local cases = {
      { "example.com", "example.com" }, { "Example.COM.", "example.com" },
      { "[mx.example.com]", "mx.example.com" }, { "[mx.example.com]:25", "mx.example.com" },
      { "mx.example.com:587", "mx.example.com" }, { "bücher.example", "xn--bcher-kva.example" },
      { "[192.0.2.1]", nil }, { "192.0.2.1", nil }, { "[ipv6:2001:db8::1]", nil },
      { "[2001:db8::1]:25", nil }, { ".example.com", nil }, { "com", nil }, { "", nil },
      { "a..b", nil }, { "exa mple.com", nil },
    }
    for _, c in ipairs(cases) do assert.equal(c[2], postfix.key_domain(c[1]), c[1]) end
  end)

  local ENFORCE = { mode = "enforce", mx = { "mx1.example.com", "*.example.net" } }
  it("answers as postfix-mta-sts-resolver", function()
    assert.equal("OK secure match=mx1.example.com:.example.net servername=hostname",
      postfix.answer(ENFORCE))
    assert.equal("OK secure match=mx1.example.com:.example.net",
      postfix.answer(ENFORCE, { require_sni = false }))
    local testing = { mode = "testing", mx = { "mx.example.org" } }
    assert.equal("NOTFOUND ", postfix.answer(testing))
    assert.equal("OK secure match=mx.example.org servername=hostname",
      postfix.answer(testing, { strict_testing = true }))
    assert.equal("NOTFOUND ", postfix.answer({ mode = "none", mx = {} }, { strict_testing = true }))
    assert.equal("NOTFOUND ", postfix.answer(nil))
  end)

  it("adds the Postfix 3.10 TLSRPT attributes when asked", function()
    local a = postfix.answer(ENFORCE, { tlsrpt = true, domain = "example.com",
      text = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.example.net\n" ..
        "max_age: 86400\n" })
    assert.equal("OK secure match=mx1.example.com:.example.net servername=hostname " ..
      "policy_type=sts policy_domain=example.com mx_host_pattern=mx1.example.com " ..
      "mx_host_pattern=*.example.net { policy_string = version: STSv1 } " ..
      "{ policy_string = mode: enforce } { policy_string = mx: mx1.example.com } " ..
      "{ policy_string = mx: *.example.net } { policy_string = max_age: 86400 }", a)
    assert.equal("NOTFOUND ", postfix.answer(nil, { tlsrpt = true, domain = "x.example",
      failure = "sts-policy-fetch-error" }))
    assert.equal("OK may policy_type=sts policy_domain=x.example " ..
      "policy_failure=sts-policy-fetch-error", postfix.answer(nil, { tlsrpt = true,
      domain = "x.example", failure = "sts-policy-fetch-error", failure_level = "may" }))
  end)
end)

describe("mtasts serve postfix #fixture", function()
  local world = {}

  setup(function()
    local dir = util.tmpdir()
    world.dir = dir
    local ca = require("support.ca").new(dir .. "/ca")
    world.ca = ca
    world.dns = require("support.dns").start({ ["example."] = {
      '_mta-sts.enforce IN TXT "v=STSv1; id=1;"', "mta-sts.enforce IN A 127.0.0.1",
      '_mta-sts.testing IN TXT "v=STSv1; id=1;"', "mta-sts.testing IN A 127.0.0.1",
      '_mta-sts.none IN TXT "v=STSv1; id=1;"', "mta-sts.none IN A 127.0.0.1",
      '_mta-sts.stall IN TXT "v=STSv1; id=1;"', "mta-sts.stall IN A 127.0.0.1",
      '_mta-sts.stall2 IN TXT "v=STSv1; id=1;"', "mta-sts.stall2 IN A 127.0.0.1",
    } })
    world.web = require("support.https").start(ca, {
      { host = "mta-sts.enforce.example", body = "version: STSv1\nmode: enforce\n" ..
        "mx: mx1.enforce.example\nmx: *.b.enforce.example\nmax_age: 86400\n" },
      { host = "mta-sts.testing.example",
        body = "version: STSv1\nmode: testing\nmx: mx.testing.example\nmax_age: 86400\n" },
      { host = "mta-sts.none.example", body = "version: STSv1\nmode: none\nmax_age: 86400\n" },
    })
    local stall = proc.free_port()
    world.stall = stall
    proc.spawn("stall", "build/support/stall " .. stall .. " 600", dir .. "/stall.log")
    assert(proc.poll(function() return proc.tcp_open(stall) end, 10))
    local cmd = util.lua_cmd() .. " bin/mtasts --db " .. dir .. "/cache --nameserver " ..
      world.dns.nameserver .. " --trust-anchor none --allow-private-addresses --cafile " ..
      ca.cafile ..
      " --connect-to mta-sts.stall.example:443:127.0.0.1:" .. stall ..
      " --connect-to mta-sts.stall2.example:443:127.0.0.1:" .. stall ..
      " --connect-to :443:127.0.0.1:" .. world.web.port .. " --timeout 3 serve postfix" ..
      " --listen inet:127.0.0.1:0 --listen unix:" .. dir .. "/pf.sock --socket-mode 0660" ..
      " --zone postfix --zone strict:strict_testing --zone nosni:no_sni" ..
      " --zone tlsrpt:tlsrpt --max-request 600"
    world.out = dir .. "/server.out"
    world.pid = proc.spawn("mtasts-serve", cmd, world.out)
    assert(proc.poll(function()
      return util.run("cat " .. world.out):match("inet:127%.0%.0%.1:(%d+)")
    end, 10), util.run("cat " .. world.out))
    world.port = tonumber(util.run("cat " .. world.out):match("inet:127%.0%.0%.1:(%d+)"))
  end)

  teardown(function()
    if world.pid then proc.stop(world.pid) end
    if world.web then world.web.stop() end
    if world.dns then world.dns.stop() end
    proc.stop_all()
    if world.dir then util.run("rm -rf '" .. world.dir .. "'") end
  end)

  local function connect(path)
    local con = assert(path and socket.connect{ path = path } or
      socket.connect("127.0.0.1", world.port))
    con:setmode("b", "b")
    return con
  end

  -- send requests on one connection, return the answers in order
  local function ask(requests, con, timeout)
    local own = not con
    con = con or connect()
    for _, r in ipairs(requests) do assert(con:write(postfix.netstring(r))) end
    assert(con:flush())
    local answers, buf = {}, ""
    local deadline = core.monotonic() + (timeout or 10)
    while #answers < #requests and core.monotonic() < deadline do
      local v, rest, err = postfix.netstring_decode(buf, 100000)
      assert.is_nil(err)
      if v then
        answers[#answers + 1] = v
        buf = rest
      else
        local chunk = con:xread(-4096, "b", deadline - core.monotonic())
        if not chunk then break end
        buf = buf .. chunk
      end
    end
    if own then con:close() end
    return answers
  end

  local function run(fn)
    local loop = cqueues.new()
    local ok, err
    loop:wrap(function() ok, err = pcall(fn) end)
    assert(loop:loop())
    assert(ok, err)
  end

  it("answers enforce, testing, none and no-policy domains in every key form", function()
    run(function()
      local enforce = "OK secure match=mx1.enforce.example:.b.enforce.example " ..
        "servername=hostname"
      assert.same({ enforce, "NOTFOUND ", "NOTFOUND ", "NOTFOUND ", enforce, enforce, enforce,
        enforce, "NOTFOUND ", "NOTFOUND ", "NOTFOUND " },
        ask({ "postfix enforce.example", "postfix testing.example", "postfix none.example",
          "postfix plain.example", "postfix ENFORCE.example.", "postfix [enforce.example]",
          "postfix [enforce.example]:25", "postfix enforce.example:587", "postfix [127.0.0.1]",
          "postfix .enforce.example", "postfix [ipv6:::1]" }))
    end)
  end)

  it("zones: strict_testing, no SNI, TLSRPT attributes, and any other name", function()
    run(function()
      local a = ask({ "strict testing.example", "nosni enforce.example",
        "tlsrpt enforce.example", "other enforce.example", "QUERYwithTLSRPT enforce.example" })
      assert.equal("OK secure match=mx.testing.example servername=hostname", a[1])
      assert.equal("OK secure match=mx1.enforce.example:.b.enforce.example", a[2])
      assert.matches("policy_type=sts policy_domain=enforce.example mx_host_pattern=" ..
        "mx1.enforce.example mx_host_pattern=*.b.enforce.example { policy_string = " ..
        "version: STSv1 }", a[3], 1, true)
      assert.matches("^OK secure match=", a[4])
      assert.is_nil(a[4]:find("policy_type", 1, true))
      -- the name QUERYwithTLSRPT, with no zone of its own: "*" with the TLSRPT attributes
      assert.matches("policy_type=sts policy_domain=enforce.example", a[5], 1, true)
    end)
  end)

  it("answers on the unix socket, whose mode is as asked", function()
    assert.equal("srw-rw----", util.run("stat -c %A " .. world.dir .. "/pf.sock"):match("%S+"))
    run(function()
      assert.same({ "NOTFOUND " },
        ask({ "postfix none.example" }, connect(world.dir .. "/pf.sock")))
    end)
  end)

  it("a stalled lookup delays neither another connection nor a cached answer", function()
    run(function()
      ask({ "postfix enforce.example" })           -- cached now
      local t0 = core.monotonic()
      local slow_done, fast_at
      local fetching = proc.connections(world.stall)
      cqueues.running():wrap(function()
        local a = ask({ "postfix stall.example" }, nil, 20)
        slow_done = core.monotonic() - t0
        assert.same({ "NOTFOUND " }, a)
      end)
      -- the stalled lookup is in flight once its policy fetch has reached the stall server
      assert(proc.poll(function() return proc.connections(world.stall) > fetching end, 10,
        cqueues.sleep), "the stalled lookup did not reach the stall server")
      local fast = ask({ "postfix enforce.example", "postfix [192.0.2.1]" })
      fast_at = core.monotonic() - t0
      assert.matches("^OK secure", fast[1])
      assert.is_true(fast_at < util.within(0.6), "cached answer took " .. fast_at .. " s")
      assert(proc.poll(function() return slow_done end, 30, cqueues.sleep),
        "the stalled lookup was never answered")
      assert.is_true(slow_done >= 2, "the stall answered after " .. slow_done .. " s")
      -- on one connection: both lookups run at once, answers come in order
      t0 = core.monotonic()
      local both = ask({ "postfix stall.example", "postfix enforce.example" }, nil, 20)
      assert.equal("NOTFOUND ", both[1])
      assert.matches("^OK secure", both[2])
    end)
  end)

  it("reads requests split at any byte, and many in one write, answering each in order",
    function()
    run(function()
      local reqs = { "postfix enforce.example", "postfix none.example", "postfix [1.2.3.4]" }
      local wire = {}
      for _, r in ipairs(reqs) do wire[#wire + 1] = postfix.netstring(r) end
      wire = table.concat(wire)
      local con = connect()
      for i = 1, #wire do   -- a byte at a time
        con:write(wire:sub(i, i))
        con:flush()
        if i % 7 == 0 then cqueues.sleep(0.01) end
      end
      local answers, buf = {}, ""
      while #answers < #reqs do
        local v, rest = postfix.netstring_decode(buf, 100000)
        if v then answers[#answers + 1], buf = v, rest
        else buf = buf .. assert(con:xread(-4096, "b", 10)) end
      end
      assert.matches("^OK secure match=mx1%.enforce%.example", answers[1])
      assert.same({ "NOTFOUND ", "NOTFOUND " }, { answers[2], answers[3] })
      -- and twenty in one write
      local many = {}
      for i = 1, 20 do many[i] = i % 2 == 0 and "postfix none.example" or "postfix [::1]" end
      local twenty = ask(many, con)
      assert.equal(20, #twenty)
      for i = 1, 20 do assert.equal("NOTFOUND ", twenty[i]) end
      con:close()
    end)
  end)

  it("closes the connection on a malformed or oversize request, and serves on", function()
    run(function()
      -- no digits; a comma missing after 5 bytes; over --max-request
      for _, bad in ipairs({ "hello", "5:abcdef,", "700:" .. ("x"):rep(700) .. "," }) do
        local con = connect()
        con:write(bad)
        con:flush()
        local got, err = con:xread(-100, "b", 5)
        assert.is_nil(got, bad)
        assert.is_nil(err, bad .. ": not closed (" .. tostring(err) .. ")")   -- EOF, no timeout
        con:close()
      end
      assert.same({ "NOTFOUND " }, ask({ "postfix none.example" }))
    end)
  end)

  it("is a table Postfix's postmap -q can query", function()
    util.write(world.dir .. "/main.cf", "")
    local out, status = util.run("postmap -c " .. world.dir .. " -q enforce.example " ..
      "socketmap:inet:127.0.0.1:" .. world.port .. ":postfix")
    assert.equal(0, status, out)
    assert.equal("secure match=mx1.enforce.example:.b.enforce.example servername=hostname",
      out:gsub("%s+$", ""))
    out, status = util.run("postmap -c " .. world.dir .. " -q none.example " ..
      "socketmap:unix:" .. world.dir .. "/pf.sock:postfix")
    assert.equal(1, status, out)   -- not found
  end)

  it("answers TEMP when its CA file vanished after start, and caches nothing", function()
    -- a server of its own, whose CA file is a copy removed once it listens
    local cafile, db = world.dir .. "/vanishing-ca.pem", world.dir .. "/vanish-cache"
    assert(os.execute("cp '" .. world.ca.cafile .. "' '" .. cafile .. "'"))
    local out = world.dir .. "/vanish.out"
    local pid = proc.spawn("mtasts-vanish", util.lua_cmd() .. " bin/mtasts --db " .. db ..
      " --nameserver " .. world.dns.nameserver .. " --trust-anchor none " ..
      "--allow-private-addresses --cafile " .. cafile .. " --connect-to :443:127.0.0.1:" ..
      world.web.port .. " --timeout 3 serve postfix --listen inet:127.0.0.1:0" ..
      " --zone postfix --zone tlsrpt:tlsrpt,failure_level=may", out)
    finally(function() proc.stop(pid) end)
    assert(proc.poll(function() return util.run("cat " .. out):match("inet:127%.0%.0%.1:%d+")
    end, 10), util.run("cat " .. out))
    local port = tonumber(util.run("cat " .. out):match("inet:127%.0%.0%.1:(%d+)"))
    assert(os.remove(cafile))
    run(function()
      local con = assert(socket.connect("127.0.0.1", port))
      con:setmode("b", "b")
      -- never NOTFOUND (opportunistic TLS for an enforce domain), never a policy_failure
      local a = ask({ "postfix enforce.example", "tlsrpt enforce.example" }, con)
      con:close()
      for i = 1, 2 do
        assert.matches("^TEMP mta%-sts%.enforce%.example: this host failed: .*vanishing%-ca",
          a[i])
      end
    end)
    -- no backoff row: the domain is not at fault
    local cache = assert(require("mtasts.cache").open(db))
    assert.same({}, assert(cache:list()))
    cache:close()
    assert.matches("this host failed: answering TEMP", util.run("cat " .. out), 1, true)
  end)

  it("stops on SIGTERM after answering the request in flight", function()
    run(function()
      local con = connect()
      local fetching = proc.connections(world.stall)
      -- stall2: the server remembers stall.example's failed fetch and would answer at once
      con:write(postfix.netstring("postfix stall2.example"))
      con:flush()
      assert(proc.poll(function() return proc.connections(world.stall) > fetching end, 10,
        cqueues.sleep), "the lookup did not reach the stall server")   -- in flight now
      proc.signal(world.pid, "TERM")
      local buf = con:xread(-100, "b", 10)
      assert.equal(postfix.netstring("NOTFOUND "), buf)
      con:close()
    end)
    assert.is_true(proc.poll(function() return not proc.alive(world.pid) end, 15),
      util.run("cat " .. world.out))
    assert.matches("finishing the requests in flight", util.run("cat " .. world.out), 1, true)
    world.pid = nil
  end)
end)

describe("mtasts.postfix server, in process", function()
  it("closes a connection idle for idle_timeout seconds, and not one that talks", function()
    local fake = { get = function() return nil end, close = function() end }
    local srv = assert(postfix.new{ client = fake, listen = { "inet:127.0.0.1:0" },
      idle_timeout = 2 })
    local port = tonumber(srv:addresses()[1]:match(":(%d+)$"))
    local idle_closed_at, busy_answers
    srv.loop:wrap(function()
      local t0 = cqueues.monotime()
      local idle = assert(socket.connect("127.0.0.1", port))
      local busy = assert(socket.connect("127.0.0.1", port))
      busy:setmode("b", "b")
      busy_answers = 0
      local closed = false
      srv.loop:wrap(function()
        local got = idle:xread(-100, "b", 10)
        assert.is_nil(got)
        idle_closed_at = cqueues.monotime() - t0
        closed = true
      end)
      while not closed do   -- a request every 0.5 s keeps this one open
        busy:write(postfix.netstring("postfix [1.2.3.4]"))
        busy:flush()
        if busy:xread(-100, "b", 5) then busy_answers = busy_answers + 1 end
        cqueues.sleep(0.5)
      end
      busy:write(postfix.netstring("postfix [1.2.3.4]"))
      busy:flush()
      if busy:xread(-100, "b", 5) then busy_answers = busy_answers + 1 end
      idle:close()
      busy:close()
      srv:stop()
    end)
    srv:run{ signals = false }
    srv:close()
    assert.is_true(idle_closed_at >= 1.9 and idle_closed_at < 4, "closed after " ..
      tostring(idle_closed_at))
    assert.is_true(busy_answers >= 4, "busy connection answered " .. tostring(busy_answers))
  end)

  it("core.recv and core.send: data, nothing yet, a closed peer, a bad descriptor", function()
    local a, b = assert(socket.pair())
    local fa, fb = a:pollfd(), b:pollfd()
    assert.is_false(core.recv(fa, 100))                      -- nothing to read yet
    assert.equal(5, core.send(fb, "hello"))
    assert.equal(3, core.send(fb, "hello", 3))               -- from position 3: "llo"
    assert.equal(0, core.send(fb, "x", 2))                   -- nothing left to send
    assert.equal("hello", core.recv(fa, 5))
    assert.equal("llo", core.recv(fa, 100))
    b:close()
    local v, msg, code = core.recv(fa, 100)
    assert.is_nil(v)
    assert.equal("closed", code, msg)
    a:close()
    v, msg, code = core.recv(fa, 100)                        -- closed descriptor: this host
    assert.is_nil(v)
    assert.equal("local", code)
    assert.matches("^recv: ", msg)
    v, msg, code = core.send(fa, "x")
    assert.is_nil(v)
    assert.equal("local", code)
    assert.matches("^send: ", msg)
    assert.has_error(function() core.recv(0, 0) end)         -- misuse raises
    assert.has_error(function() core.recv(0, 16385) end)
    assert.has_error(function() core.send(0, "x", 3) end)
    local p = assert(core.poller())
    local out = {}
    assert.equal(0, p:wait(0, out))
    local v2, msg2, code2 = p:watch(-1, "r")
    assert.is_nil(v2)
    assert.equal("local", code2, msg2)
    p:close()
  end)

  it("closes a connection idle for idle_timeout seconds after half a request", function()
    local fake = { get = function() return nil end, close = function() end }
    local srv = assert(postfix.new{ client = fake, listen = { "inet:127.0.0.1:0" },
      idle_timeout = 2 })
    local port = tonumber(srv:addresses()[1]:match(":(%d+)$"))
    local closed_at
    srv.loop:wrap(function()
      local t0 = cqueues.monotime()
      local con = assert(socket.connect("127.0.0.1", port))
      con:setmode("b", "b")
      con:write(postfix.netstring("postfix [1.2.3.4]"))    -- answered; the reader parks
      con:flush()
      assert(con:xread(-100, "b", 5))
      con:write("20:postfix d")                               -- and then nothing more
      con:flush()
      assert.is_nil(con:xread(-100, "b", 10))
      closed_at = cqueues.monotime() - t0
      con:close()
      srv:stop()
    end)
    srv:run{ signals = false }
    srv:close()
    assert.is_true(closed_at >= 1.9 and closed_at < 5, "closed after " .. tostring(closed_at))
  end)

  it("core.trim gives free memory inside the C heap back to the system", function()
    -- scattered free memory: every tenth string stays, the rest are freed
    local keep, all = {}, {}
    for i = 1, 200000 do
      all[i] = ("%099d"):format(i)
      if i % 10 == 0 then keep[#keep + 1] = all[i] end
    end
    all = nil   -- luacheck: ignore 311
    collectgarbage()
    collectgarbage()
    local trimmed = core.trim()
    -- glibc's allocator releases pages; under `make asan` the sanitizer's allocator stands in
    -- for it and its malloc_trim releases nothing (false)
    if (os.getenv("LD_PRELOAD") or "") == "" then assert.is_true(trimmed)
    else assert.is_boolean(trimmed) end
    assert.equal(20000, #keep)
  end)

  it("answers at once what the client answers at once, and in order what waits", function()
    -- a client whose lookups answer at once, wait (a poll of the loop) or raise; pipelined
    -- on one connection, in order
    local ENFORCE = { mode = "enforce", mx = { "mx.now.example" } }
    local calls = 0
    local fake = { close = function() end, get = function(_, domain)
      calls = calls + 1
      if domain == "wait.example" then
        cqueues.sleep(0.2)
        return { mode = "enforce", mx = { "mx.wait.example" } }, {}, true
      elseif domain == "raise.example" then
        error("boom")
      end
      return ENFORCE, {}, false
    end }
    local srv = assert(postfix.new{ client = fake, listen = { "inet:127.0.0.1:0" },
      memo_seconds = 0 })
    local port = tonumber(srv:addresses()[1]:match(":(%d+)$"))
    local got = {}
    srv.loop:wrap(function()
      local con = assert(socket.connect("127.0.0.1", port))
      con:setmode("b", "b")
      local names = { "now.example", "wait.example", "now.example", "raise.example",
        "now.example" }
      for _, d in ipairs(names) do con:write(postfix.netstring("postfix " .. d)) end
      con:flush()
      local buf = ""
      while #got < #names do
        local chunk = con:xread(-4096, "b", 5)
        if not chunk then break end
        buf = buf .. chunk
        repeat
          local v, rest = postfix.netstring_decode(buf)
          if v then got[#got + 1], buf = v, rest end
        until not v
      end
      -- one at a time: the answer comes back before the next request is sent
      for _, d in ipairs({ "wait.example", "now.example" }) do
        con:write(postfix.netstring("postfix " .. d))
        con:flush()
        local v = postfix.netstring_decode(con:xread(-4096, "b", 5))
        got[#got + 1] = v
      end
      con:close()
      srv:stop()
    end)
    srv:run{ signals = false }
    local stats = srv:stats()
    srv:close()
    assert.same({ "OK secure match=mx.now.example servername=hostname",
      "OK secure match=mx.wait.example servername=hostname",
      "OK secure match=mx.now.example servername=hostname",
      "TEMP internal error",
      "OK secure match=mx.now.example servername=hostname",
      "OK secure match=mx.wait.example servername=hostname",
      "OK secure match=mx.now.example servername=hostname" }, got)
    assert.equal(7, calls)
    assert.equal(0, stats.lookups)
  end)

  it("answers a parked connection from the memo in the loop, in order with what waits", function()
    local calls = {}
    local fake = { close = function() end, get = function(_, domain)
      calls[domain] = (calls[domain] or 0) + 1
      if domain == "wait.example" then cqueues.sleep(0.2) end
      return { mode = "enforce", mx = { "mx." .. domain } }, {}, false
    end }
    local srv = assert(postfix.new{ client = fake, listen = { "inet:127.0.0.1:0" },
      memo_seconds = 60 })
    local port = tonumber(srv:addresses()[1]:match(":(%d+)$"))
    local got, parked_before, closed_left = {}, nil, nil
    local function answer(d) return "OK secure match=mx." .. d .. " servername=hostname" end
    srv.loop:wrap(function()
      local con = assert(socket.connect("127.0.0.1", port))
      con:setmode("b", "b")
      local buf = ""
      local function read(n)
        while #got < n do
          local chunk = con:xread(-4096, "b", 5)
          if not chunk then return end
          buf = buf .. chunk
          repeat
            local v, rest = postfix.netstring_decode(buf)
            if v then got[#got + 1], buf = v, rest end
          until not v
        end
      end
      -- the first asks the client; the reader parks once it has answered
      con:write(postfix.netstring("postfix a.example"))
      con:flush()
      read(1)
      cqueues.sleep(0.1)
      parked_before = srv:stats().parked_answers
      -- one write: the memo's, one that waits, the memo's behind it, a new one, and a
      -- netstring cut in two writes
      con:write(postfix.netstring("postfix a.example") .. postfix.netstring(
        "postfix wait.example") .. postfix.netstring("postfix a.example") ..
        postfix.netstring("postfix b.example") .. "17:postfix a.exa")
      con:flush()
      cqueues.sleep(0.3)
      con:write("mple,")
      con:flush()
      read(6)
      -- one at a time again, as Postfix asks: the loop answers each
      for _ = 1, 3 do
        cqueues.sleep(0.05)
        con:write(postfix.netstring("postfix b.example"))
        con:flush()
        read(#got + 1)
      end
      con:close()
      -- the parked connection's end is noticed, and its slot given back
      assert(proc.poll(function() return srv:stats().connections == 0 end, 5, cqueues.sleep))
      closed_left = srv:stats().connections
      srv:stop()
    end)
    srv:run{ signals = false }
    local stats = srv:stats()
    srv:close()
    assert.same({ answer("a.example"), answer("a.example"), answer("wait.example"),
      answer("a.example"), answer("b.example"), answer("a.example"), answer("b.example"),
      answer("b.example"), answer("b.example") }, got)
    assert.same({ ["a.example"] = 1, ["wait.example"] = 1, ["b.example"] = 1 }, calls)
    assert.equal(0, parked_before)
    -- the second request came while parked, and the last three: the loop answered them
    assert.is_true(stats.parked_answers >= 4, "parked answers: " .. stats.parked_answers)
    assert.equal(0, closed_left)
  end)

  it("keeps the order of answers a parked connection's socket did not take at once", function()
    -- a peer that pipelines far more than the socket buffers hold before it reads: the
    -- loop's sends come up short: what they left is sent by the reader before anything
    -- else, and every answer arrives whole and in order, the one the memo did not know too
    local fake = { close = function() end, get = function(_, domain)
      return { mode = "enforce", mx = { "mx." .. domain } }, {}, false
    end }
    -- (a Unix socket: its buffers do not grow as loopback TCP's do)
    local path = util.tmpdir() .. "/socketmap"
    local srv = assert(postfix.new{ client = fake, listen = { "unix:" .. path },
      memo_seconds = 60 })
    local function answer(d)
      return postfix.netstring("OK secure match=mx." .. d .. " servername=hostname")
    end
    local K, N = 50, 60000
    local names, reqs, answers = {}, {}, {}
    for i = 1, N do
      names[i] = ("d%d.example"):format(i % K)
      reqs[i] = postfix.netstring("postfix " .. names[i])
      answers[i] = answer(names[i])
    end
    local expected = table.concat(answers) .. answer("new.example") ..
      table.concat(answers, "", 1, 100)
    local got, done = {}, false
    srv.loop:wrap(function()
      local con = assert(socket.connect{ path = path })
      con:setmode("b", "b")
      for i = 1, K do           -- each into the memo, one at a time
        con:write(reqs[i])
        con:flush()
        assert.equal(answers[i], con:xread(#answers[i], "b", 5))
      end
      cqueues.sleep(0.1)                   -- parked now
      srv.loop:wrap(function()             -- the reading half, late
        cqueues.sleep(0.5)
        local n = 0
        while n < #expected do
          local chunk = con:xread(-65536, "b", 10)
          if not chunk then break end
          got[#got + 1] = chunk
          n = n + #chunk
        end
        done = true
      end)
      con:write(table.concat(reqs) .. postfix.netstring("postfix new.example") ..
        table.concat(reqs, "", 1, 100))
      con:flush()
      assert(proc.poll(function() return done end, 30, cqueues.sleep))
      con:close()
      srv:stop()
    end)
    srv:run{ signals = false }
    local stats = srv:stats()
    srv:close()
    local text = table.concat(got)
    assert.equal(#expected, #text)
    assert.is_true(text == expected, "answers out of order")
    assert.is_true(stats.parked_answers > 0)
  end)

  it("serves through the cqueues loop alone when stepped from a host's cqueues thread", function()
    local fake = { close = function() end, get = function(_, domain)
      return { mode = "enforce", mx = { "mx." .. domain } }, {}, false
    end }
    local srv = assert(postfix.new{ client = fake, listen = { "inet:127.0.0.1:0" },
      memo_seconds = 60 })
    local port = tonumber(srv:addresses()[1]:match(":(%d+)$"))
    local host, got, done = cqueues.new(), {}, false
    host:wrap(function()          -- the host's loop steps the server
      while not done do assert(srv:step(0.05)) end
    end)
    host:wrap(function()
      local con = assert(socket.connect("127.0.0.1", port))
      con:setmode("b", "b")
      for _ = 1, 3 do
        con:write(postfix.netstring("postfix a.example"))
        con:flush()
        got[#got + 1] = postfix.netstring_decode(con:xread(-4096, "b", 5) or "")
        cqueues.sleep(0.05)
      end
      con:close()
      done = true
    end)
    local deadline = cqueues.monotime() + 10
    while not host:empty() and cqueues.monotime() < deadline do assert(host:step(0.1)) end
    local stats = srv:stats()
    srv:close()
    local a = "OK secure match=mx.a.example servername=hostname"
    assert.same({ a, a, a }, got)
    assert.equal(0, stats.parked_answers)
  end)
end)

describe("mtasts.postfix answer memo", function()
  -- a real client on a cache of its own, its clock in the test's hands; the records it asks
  -- for once recheck is due say the policy is unchanged
  local mtasts = require("mtasts")
  local function text(mx)
    return "version: STSv1\nmode: enforce\nmx: " .. mx .. "\nmax_age: 86400\n"
  end

  it("keeps an answer the cache gave while the row is unchanged, and rechecks behind it",
    function()
    local dir = util.tmpdir()
    local now = 1700000000
    local txt_asked = 0
    local client = assert(mtasts.open{ path = dir .. "/cache", fetcher = {}, recheck = 60,
      resolver = { txt = function()
        txt_asked = txt_asked + 1
        return { "v=STSv1; id=2;" }
      end }, clock = function() return now end })
    -- another handle on the cache: what another process writes
    local other = assert(core.cache_open(dir .. "/cache"))
    assert(other:upsert("keep.example", "1", text("mx1.keep.example"), now))
    local gets = 0
    local get = client.get
    client.get = function(...) gets = gets + 1 return get(...) end
    local srv = assert(postfix.new{ client = client, listen = { "inet:127.0.0.1:0" },
      memo_seconds = 0.05, zones = { ["*"] = { dane = false } } })
    local port = tonumber(srv:addresses()[1]:match(":(%d+)$"))
    local got = {}
    srv.loop:wrap(function()
      local con = assert(socket.connect("127.0.0.1", port))
      con:setmode("b", "b")
      local function ask(step)
        con:write(postfix.netstring("postfix keep.example"))
        con:flush()
        got[#got + 1] = { postfix.netstring_decode(con:xread(-4096, "b", 5)), gets, step }
      end
      ask("first")                   -- looked up
      cqueues.sleep(0.2)             -- past memo_seconds
      ask("kept")                    -- the memo, the row unchanged
      assert(other:upsert("keep.example", "2", text("mx2.keep.example"), now))
      ask("written")                 -- the row's version moved: looked up
      ask("kept again")
      now = now + 61                 -- past recheck: the client looks at DNS again, behind
      ask("recheck")                 -- the answer kept, given meanwhile
      cqueues.sleep(0.2)
      got[#got + 1] = { txt_asked, gets, "rechecked" }
      ask("after the recheck")       -- the recheck wrote the row: looked up
      ask("kept after the recheck")
      now = now + 86400              -- past valid_end: never given again
      ask("expired")
      con:close()
      srv:stop()
    end)
    srv:run{ signals = false }
    srv:close()
    other:close()
    client:close()
    local A1 = "OK secure match=mx1.keep.example servername=hostname"
    local A2 = "OK secure match=mx2.keep.example servername=hostname"
    assert.same({ { A1, 1, "first" }, { A1, 1, "kept" }, { A2, 2, "written" },
      { A2, 2, "kept again" }, { A2, 2, "recheck" }, { 1, 3, "rechecked" },
      { A2, 4, "after the recheck" }, { A2, 4, "kept after the recheck" } },
      { got[1], got[2], got[3], got[4], got[5], got[6], got[7], got[8] })
    assert.equal(5, got[9][2], "looked up once past valid_end")
  end)

  it("keeps nothing past memo_seconds for a client without a cache", function()
    local gets = 0
    local fake = { close = function() end, get = function()
      gets = gets + 1
      return { mode = "enforce", mx = { "mx.fake.example" } }, {}, false
    end }
    local srv = assert(postfix.new{ client = fake, listen = { "inet:127.0.0.1:0" },
      memo_seconds = 0.05 })
    local port = tonumber(srv:addresses()[1]:match(":(%d+)$"))
    srv.loop:wrap(function()
      local con = assert(socket.connect("127.0.0.1", port))
      con:setmode("b", "b")
      for _ = 1, 3 do
        con:write(postfix.netstring("postfix fake.example"))
        con:flush()
        assert(con:xread(-4096, "b", 5))
        cqueues.sleep(0.1)
      end
      con:close()
      srv:stop()
    end)
    srv:run{ signals = false }
    srv:close()
    assert.equal(3, gets)
  end)
end)

describe("mtasts.postfix logging", function()
  local ENFORCE = { mode = "enforce", mx = { "mx1.enforce.example" } }
  local function sts(domain, rtype, reason)
    local r = { policy = { type = "sts", domain = domain }, summary = {}, failures = {} }
    if rtype then
      r.failures[1] = { result_type = rtype, failure_reason_code = reason, count = 1 }
    end
    return r
  end
  -- what the client answers, by domain: policy, result, fresh, message, code
  local ANSWERS = {
    ["enforce.example"] = { ENFORCE, sts("enforce.example"), true },
    ["cached.example"] = { ENFORCE, sts("cached.example"), false },
    ["expired.example"] = { nil, sts("expired.example", "sts-webpki-invalid",
      "certificate-expired"), true },
    ["dns.example"] = { nil, sts("dns.example", "sts-policy-fetch-error", "dns-timeout"), false,
      "_mta-sts.dns.example TXT: timed out after 2 s: no nameserver answered", "dns" },
    ["backoff.example"] = { nil, sts("backoff.example", "sts-policy-fetch-error",
      "back-off-after-recent-fetch-error"), false },
    ["fallback.example"] = { ENFORCE, sts("fallback.example", "sts-policy-fetch-error",
      "dns-servfail+fallback-to-cached-policy"), false },
  }
  local function sorted(t) table.sort(t) return t end
  local client = { close = function() end, get = function(_, domain)
    local a = ANSWERS[domain]
    return a[1], a[2], a[3], a[4], a[5]
  end }

  -- ask for each domain on one connection of a server with `log`; the answers
  local function run_server(log, domains, zones)
    local srv = assert(postfix.new{ client = client, listen = { "inet:127.0.0.1:0" },
      memo_seconds = 0, log = log, zones = zones })
    local port = tonumber(srv:addresses()[1]:match(":(%d+)$"))
    local got, ok, err = {}, nil, nil
    srv.loop:wrap(function()
      ok, err = pcall(function()
        local con = assert(socket.connect("127.0.0.1", port))
        con:setmode("b", "b")
        for _, d in ipairs(domains) do con:write(postfix.netstring("postfix " .. d)) end
        con:flush()
        local buf = ""
        while #got < #domains do
          local v, rest = postfix.netstring_decode(buf, 100000)
          if v then got[#got + 1], buf = v, rest
          else buf = buf .. assert(con:xread(-4096, "b", util.within(10))) end
        end
        con:close()
      end)
      srv:stop()
    end)
    srv:run{ signals = false }
    srv:close()
    assert(ok, err)
    return got
  end

  it("logs one info line per lookup, and a warning for a failure found now", function()
    local lines = {}
    local answers = run_server(function(level, msg) lines[#lines + 1] = level .. ": " .. msg end,
      { "enforce.example", "cached.example", "expired.example", "dns.example",
        "backoff.example", "fallback.example" })
    assert.equal("OK secure match=mx1.enforce.example servername=hostname", answers[1])
    -- the lookups run at once: their lines come in any order
    table.sort(lines)
    assert.same(sorted{
      "info: enforce.example: OK secure match=mx1.enforce.example servername=hostname (fetched)",
      "info: cached.example: OK secure match=mx1.enforce.example servername=hostname (cache)",
      "info: expired.example: NOTFOUND (fetched, sts-webpki-invalid certificate-expired)",
      "warning: expired.example: sts-webpki-invalid certificate-expired (answered NOTFOUND)",
      "info: dns.example: NOTFOUND (fetched, sts-policy-fetch-error dns-timeout: " ..
        "_mta-sts.dns.example TXT: timed out after 2 s: no nameserver answered)",
      "warning: dns.example: sts-policy-fetch-error dns-timeout: _mta-sts.dns.example TXT: " ..
        "timed out after 2 s: no nameserver answered (answered NOTFOUND)",
      "info: backoff.example: NOTFOUND (cache, sts-policy-fetch-error " ..
        "back-off-after-recent-fetch-error)",
      "info: fallback.example: OK secure match=mx1.enforce.example servername=hostname (cache, " ..
        "sts-policy-fetch-error dns-servfail+fallback-to-cached-policy)",
      "warning: fallback.example: sts-policy-fetch-error dns-servfail+fallback-to-cached-policy" ..
        " (answered OK secure match=mx1.enforce.example servername=hostname)",
    }, lines)
  end)

  it("logs the answer sent with failure_level, and TEMP for this host's failure", function()
    local lines = {}
    local was = ANSWERS["local.example"]
    ANSWERS["local.example"] = { nil, nil, false, "mta-sts.local.example: this host failed: " ..
      "no memory", "local" }
    finally(function() ANSWERS["local.example"] = was end)
    run_server(function(level, msg) lines[#lines + 1] = level .. ": " .. msg end,
      { "expired.example", "local.example" }, { ["*"] = { tlsrpt = true, failure_level = "may" } })
    table.sort(lines)
    assert.equal(4, #lines, table.concat(lines, "\n"))
    assert.equal("info: expired.example: OK may policy_type=sts policy_domain=expired.example " ..
      "policy_failure=sts-webpki-invalid (fetched, sts-webpki-invalid certificate-expired)",
      lines[2])
    assert.matches("^warning: expired%.example: sts%-webpki%-invalid certificate%-expired " ..
      "%(answered OK may ", lines[4])
    assert.equal("err: local.example: mta-sts.local.example: this host failed: no memory " ..
      "(this host failed: answering TEMP)", lines[1])
    assert.equal("info: local.example: TEMP mta-sts.local.example: this host failed: no memory" ..
      " (fetched, local this-host-failed)", lines[3])
  end)

  it("formats nothing for a level that is off", function()
    local calls = { lookup_line = 0, failure_line = 0 }
    local was = { lookup_line = postfix.lookup_line, failure_line = postfix.failure_line }
    for k in pairs(calls) do
      postfix[k] = function(...) calls[k] = calls[k] + 1 return was[k](...) end
    end
    finally(function() for k, f in pairs(was) do postfix[k] = f end end)
    local log = require("mtasts.log")
    -- log.null: no line at all, for lookups that succeed and that fail
    run_server(log.null, { "enforce.example", "cached.example", "expired.example",
      "dns.example" })
    assert.same({ lookup_line = 0, failure_line = 0 }, calls)
    -- the stderr logger without verbose drops info: no info line is built
    assert.is_false(log.enabled(log.new{ to = "stderr" }, "info"))
    run_server(log.new{ to = "stderr" }, { "enforce.example", "cached.example" })
    assert.same({ lookup_line = 0, failure_line = 0 }, calls)
    -- a host's own function: every level is on
    run_server(function() end, { "enforce.example", "expired.example" })
    assert.same({ lookup_line = 2, failure_line = 1 }, calls)
  end)
end)

-- failure_level (docs/postfix.md, "When the policy cannot be obtained"): Postfix's own
-- postmap -q against `mtasts serve postfix`, one domain per kind of failure, in the fixture
-- world (the test CA, NSD, nginx on loopback).
describe("failure_level with postmap -q #fixture", function()
  local world = {}
  local POLICY = "version: STSv1\nmode: enforce\nmx: mx.%s.example\nmax_age: 86400\n"
  -- domain: its site (nil: none), or a zone of its own
  local SITES = {
    enforce = {}, expired = { cert = "expired" }, untrusted = { cert = "untrusted" },
    wrongname = { cert = "wrongname" }, status500 = { status = 500 }, status404 = { status = 404 },
    syntax = { body = "version: STSv1\nmode: enforcing\nmx: mx.syntax.example\nmax_age: 1\n" },
  }

  -- a server with these zones: fl (tlsrpt, failure_level=may), dane (failure_level=dane,
  -- without tlsrpt), plain (no failure_level)
  local function serve(name, nameserver, extra)
    local out = world.dir .. "/" .. name .. ".out"
    local pid = proc.spawn("mtasts-" .. name, util.lua_cmd() .. " bin/mtasts --db " ..
      world.dir .. "/" .. name .. "-cache --nameserver " .. nameserver ..
      " --trust-anchor none --allow-private-addresses --cafile " .. world.ca.cafile ..
      (extra or "") .. " --connect-to :443:127.0.0.1:" .. world.web.port ..
      " --timeout 2 -v serve postfix --listen inet:127.0.0.1:0" ..
      " --zone fl:tlsrpt,failure_level=may --zone dane:failure_level=dane --zone plain", out)
    assert(proc.poll(function() return util.run("cat " .. out):match("inet:127%.0%.0%.1:%d+")
    end, 10), util.run("cat " .. out))
    return { pid = pid, out = out,
      port = tonumber(util.run("cat " .. out):match("inet:127%.0%.0%.1:(%d+)")) }
  end

  setup(function()
    local dir = util.tmpdir()
    world.dir = dir
    util.write(dir .. "/main.cf", "")
    world.ca = require("support.ca").new(dir .. "/ca")
    local records, sites = {}, {}
    for name, site in pairs(SITES) do
      records[#records + 1] = ('_mta-sts.%s IN TXT "v=STSv1; id=1;"'):format(name)
      records[#records + 1] = "mta-sts." .. name .. " IN A 127.0.0.1"
      site.host = "mta-sts." .. name .. ".example"
      if not site.status and not site.body then site.body = POLICY:format(name) end
      sites[#sites + 1] = site
    end
    -- a policy host nothing listens on (connect_to a free port), and a record only
    records[#records + 1] = '_mta-sts.refused IN TXT "v=STSv1; id=1;"'
    records[#records + 1] = "mta-sts.refused IN A 127.0.0.1"
    records[#records + 1] = "norecord IN MX 10 mx.norecord.example"
    world.dns = require("support.dns").start({ ["example."] = records,
      ["broken.example."] = "BROKEN" })
    world.web = require("support.https").start(world.ca, sites)
    world.server = serve("serve", world.dns.nameserver,
      " --connect-to mta-sts.refused.example:443:127.0.0.1:" .. proc.free_port())
    -- a nameserver that never answers: every _mta-sts lookup times out
    world.silent = proc.free_port()
    proc.spawn("stall", "build/support/stall " .. world.silent .. " 600", dir .. "/stall.log")
    assert(proc.poll(function() return proc.tcp_open(world.silent) end, 10))
    world.timeouts = serve("timeouts", "127.0.0.1@" .. world.silent)
  end)

  teardown(function()
    if world.web then world.web.stop() end
    if world.dns then world.dns.stop() end
    proc.stop_all()
    if world.dir then util.run("rm -rf '" .. world.dir .. "'") end
  end)

  -- postmap -q KEY against the map NAME of a server: the answer without "OK ", or NOTFOUND
  local function postmap(server, name, key)
    local out, status = util.run(("postmap -c %s -q %s socketmap:inet:127.0.0.1:%d:%s 2>&1")
      :format(world.dir, key, server.port, name))
    if status == 1 and out == "" then return "NOTFOUND" end
    assert.equal(0, status, out)
    return (out:gsub("%s+$", ""))
  end

  -- every kind: its domain, the server, the TLSRPT result type, the reason in the log
  for _, case in ipairs({
    { "an expired certificate on the policy host", "expired", "sts-webpki-invalid",
      "certificate-expired" },
    { "a certificate from an untrusted issuer", "untrusted", "sts-webpki-invalid",
      "certificate-not-trusted" },
    { "a certificate for another name", "wrongname", "sts-webpki-invalid",
      "certificate-host-mismatch" },
    { "a policy that does not parse", "syntax", "sts-policy-invalid", "policy-syntax" },
    { "an HTTP status 500", "status500", "sts-policy-fetch-error", "http-status-500" },
    { "an HTTP status 404", "status404", "sts-policy-fetch-error", "http-status-404" },
    { "a policy host that refuses the connection", "refused", "sts-policy-fetch-error",
      "connection-failed" },
    { "a SERVFAIL for the _mta-sts record", "x.broken", "sts-policy-fetch-error",
      "dns-servfail" },
    { "a timeout of the _mta-sts record", "timeout", "sts-policy-fetch-error", "dns-timeout",
      "timeouts" },
  }) do
    local label, name, rtype, reason, which = table.unpack(case)
    it(label .. ": OK LEVEL with policy_failure=" .. rtype, function()
      local server = world[which or "server"]
      local domain = name .. ".example"
      assert.equal(("may policy_type=sts policy_domain=%s policy_failure=%s"):format(domain,
        rtype), postmap(server, "fl", domain))
      -- again (the client's backoff, or a second DNS failure), in a zone without tlsrpt
      assert.equal("dane", postmap(server, "dane", domain))
      -- without failure_level: NOTFOUND, as before
      assert.equal("NOTFOUND", postmap(server, "plain", domain))
      local log = util.run("cat " .. server.out)
      assert.matches(("info: %s: OK may policy_type=sts policy_domain=%s policy_failure=%s " ..
        "(fetched, %s %s"):format(domain, domain, rtype, rtype, reason), log, 1, true)
      assert.matches(("warning: %s: %s %s"):format(domain, rtype, reason), log, 1, true)
    end)
  end

  it("answers a policy as before, and NOTFOUND for a domain without a record", function()
    assert.equal("secure match=mx.enforce.example servername=hostname policy_type=sts " ..
      "policy_domain=enforce.example mx_host_pattern=mx.enforce.example " ..
      "{ policy_string = version: STSv1 } { policy_string = mode: enforce } " ..
      "{ policy_string = mx: mx.enforce.example } { policy_string = max_age: 86400 }",
      postmap(world.server, "fl", "enforce.example"))
    assert.equal("NOTFOUND", postmap(world.server, "fl", "norecord.example"))
    assert.equal("NOTFOUND", postmap(world.server, "dane", "norecord.example"))
    assert.matches("info: norecord.example: NOTFOUND (fetched)",
      util.run("cat " .. world.server.out), 1, true)
  end)
end)
