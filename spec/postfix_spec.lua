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
        "tlsrpt enforce.example", "other enforce.example" })
      assert.equal("OK secure match=mx.testing.example servername=hostname", a[1])
      assert.equal("OK secure match=mx1.enforce.example:.b.enforce.example", a[2])
      assert.matches("policy_type=sts policy_domain=enforce.example mx_host_pattern=" ..
        "mx1.enforce.example mx_host_pattern=*.b.enforce.example { policy_string = " ..
        "version: STSv1 }", a[3], 1, true)
      assert.matches("^OK secure match=", a[4])
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
end)
