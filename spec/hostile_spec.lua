-- A hostile network against real servers (#fixture): a DNS server whose answers never come,
-- or come truncated, cut off, looping, spoofed or oversized,
-- a TXT record of 255 strings, a policy of 64 KiB of mx lines, policy hosts that send endless
-- headers, a gzip bomb, a redirect loop, or a chain of 50 certificates, and an attacker who,
-- after an
-- enforce policy is cached, blocks the TXT record, changes the policy without a new id, or
-- serves `mode: none` over an invalid certificate. None of it may crash, hang, or weaken
-- the cached policy before valid_end.
local mtasts = require("mtasts")
local core = require("mtasts.core")
local resolver_mod = require("mtasts.resolver")
local util = require("support.util")
local proc = require("support.proc")

local ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.victim.example\nmax_age: 604800\n"

describe("a hostile network #fixture", function()
  local world = {}

  setup(function()
    local dir = util.tmpdir()
    world.dir = dir
    local ca = require("support.ca").new(dir .. "/ca")
    world.ca = ca
    local long = {}
    long[1] = '"v=STSv1; id=huge; "'
    for i = 2, 255 do long[i] = '"x' .. ("x"):rep(250) .. i .. '"' end
    world.dns = require("support.dns").start({ ["example."] = {
      -- the attacker's view of victim domains: see each case
      "_mta-sts.same IN TXT \"v=STSv1; id=same1;\"", "mta-sts.same IN A 127.0.0.1",
      "_mta-sts.newid IN TXT \"v=STSv1; id=new2;\"", "mta-sts.newid IN A 127.0.0.1",
      "_mta-sts.huge IN TXT " .. table.concat(long, " "),
      "_mta-sts.bigpolicy IN TXT \"v=STSv1; id=big;\"", "mta-sts.bigpolicy IN A 127.0.0.1",
      "_mta-sts.chain IN TXT \"v=STSv1; id=chain;\"", "mta-sts.chain IN A 127.0.0.1",
      "_mta-sts.gzip IN TXT \"v=STSv1; id=gzip;\"", "mta-sts.gzip IN A 127.0.0.1",
      "_mta-sts.loop IN TXT \"v=STSv1; id=loop;\"", "mta-sts.loop IN A 127.0.0.1",
      "_mta-sts.headers IN TXT \"v=STSv1; id=headers;\"", "mta-sts.headers IN A 127.0.0.1",
      -- blocked: no _mta-sts record at all
    } })
    local mx = {}
    for i = 1, 3000 do mx[#mx + 1] = ("mx: mx%04d.bigpolicy.example"):format(i) end
    local big = "version: STSv1\nmode: enforce\nmax_age: 86400\n" .. table.concat(mx, "\n")
    big = big:sub(1, 65536 - 1):gsub("\n[^\n]*$", "") .. "\n"
    world.big = big
    -- a gzip bomb: 50 MiB of policy lines in about 50 KiB, served as Content-Encoding: gzip
    util.run("head -c 52428800 /dev/zero | tr '\\0' 'a' | gzip -9 > " .. dir .. "/bomb.gz")
    world.web = require("support.https").start(ca, {
      { host = "mta-sts.chain.example", cert = 50, body = ENFORCE },
      { host = "mta-sts.gzip.example", nginx = "default_type text/plain; " ..
        "add_header Content-Encoding gzip; alias " .. dir .. "/bomb.gz;" },
      { host = "mta-sts.loop.example",
        redirect = "https://mta-sts.loop.example/.well-known/mta-sts.txt" },
      { host = "mta-sts.same.example", body = "version: STSv1\nmode: none\nmax_age: 86400\n" },
      { host = "mta-sts.newid.example", cert = "expired",
        body = "version: STSv1\nmode: none\nmax_age: 86400\n" },
      { host = "mta-sts.bigpolicy.example", body = big },
    })
    -- a policy host that sends header lines forever
    local crt, key = ca:issue("mta-sts.headers.example")
    world.evil = proc.free_port()
    proc.spawn("evilhttps", ("build/support/evilhttps %d %s %s 600"):format(world.evil, crt, key),
      dir .. "/evil.log")
    assert(proc.poll(function() return proc.tcp_open(world.evil) end, 10))
    world.evildns = proc.free_port()
    proc.spawn("evildns", ("build/support/evildns %d 600"):format(world.evildns),
      dir .. "/evildns.log")
    assert(proc.poll(function() return proc.tcp_open(world.evildns) end, 10))
    world.silent = proc.free_port()
    proc.spawn("stall", "build/support/stall " .. world.silent .. " 600", dir .. "/stall.log")
    assert(proc.poll(function() return proc.tcp_open(world.silent) end, 10))
  end)

  teardown(function()
    if world.web then world.web.stop() end
    if world.dns then world.dns.stop() end
    proc.stop_all()
    if world.dir then util.run("rm -rf '" .. world.dir .. "'") end
  end)

  local now = 1800000000
  local function client(path, opts)
    opts = opts or {}
    local connect_to = { "mta-sts.headers.example:443:127.0.0.1:" .. world.evil }
    for _, c in ipairs(world.web.connect_to) do connect_to[#connect_to + 1] = c end
    return assert(mtasts.open{ path = path, nameserver = opts.nameserver or
      world.dns.nameserver, trust_anchor = false, cafile = world.ca.cafile,
      connect_to = connect_to, timeouts = { dns = 2, fetch = 3 }, recheck = 0,
      clock = function() return now end, allow_private_addresses = true })
  end

  local function rss_kib()
    for line in io.lines("/proc/self/status") do
      local v = line:match("^VmRSS:%s+(%d+)")
      if v then return tonumber(v) end
    end
  end

  -- each hostile policy host: the documented outcome within the fetch timeout (3 s), and no
  -- more than a few MiB of memory for it
  for _, case in ipairs({
    { "endless headers", "headers.example", "policy-fetch" },
    { "a gzip bomb as Content-Encoding", "gzip.example", "policy-syntax" },
    { "a redirect loop", "loop.example", "policy-fetch", "redirect-not-allowed" },
  }) do
    it(case[1] .. ": " .. case[3] .. " within the timeout, memory bounded", function()
      local sts = client(world.dir .. "/h-" .. case[2])
      collectgarbage()
      local rss0 = rss_kib()
      local t0 = core.monotonic()
      local policy, result = sts:get(case[2])
      local took = core.monotonic() - t0
      assert.is_nil(policy)
      assert.is_true(took < util.within(6), case[2] .. " took " .. took .. " s")
      assert.is_true(rss_kib() - rss0 < 20 * 1024, "memory grew by " .. (rss_kib() - rss0) ..
        " KiB")
      local d = result.failures[1]
      assert.truthy(d, "no failure detail")
      io.stderr:write(("    %s: %s / %s in %.2f s\n"):format(case[2], d.result_type,
        tostring(d.failure_reason_code), took))
      if case[4] then assert.equal(case[4], d.failure_reason_code) end
      sts:close()
    end)
  end

  it("a chain of 50 intermediate certificates: verified, the policy is served", function()
    local sts = client(world.dir .. "/h-chain")
    local t0 = core.monotonic()
    local policy = sts:get("chain.example")
    assert.is_true(core.monotonic() - t0 < util.within(6))
    assert.equal("enforce", policy and policy.mode)
    sts:close()
  end)

  it("a DNS server that never answers: timeout within the deadline, nothing hangs", function()
    local r = assert(resolver_mod.new{ nameserver = "127.0.0.1@" .. world.silent,
      trust_anchor = false, timeout = 1.5 })
    local t0 = core.monotonic()
    local txt, msg, code = r:txt("_mta-sts.victim.example")
    local took = core.monotonic() - t0
    r:close()
    assert.is_nil(txt)
    assert.equal("timeout", code, msg)
    assert.is_true(took < util.within(4), "took " .. took .. " s")
  end)

  -- a hostile DNS server (spec/support/evildns.c): broken answers end in servfail at once, a
  -- spoofed one is waited out to the timeout, oversized ones are read whole
  for _, case in ipairs({
    { "truncated (TC) with TCP refused", "tc", "servfail" },
    { "cut off inside a record", "cut", "servfail" },
    { "a compression pointer loop", "loop", "servfail" },
    { "a wrong message id (spoofed)", "spoof", "timeout" },
    { "oversized: 20,000 TXT strings over UDP", "big", "v=STSv1; id=big;" },
    { "oversized: 2,000 TXT records over UDP", "many", "v=STSv1; id=many;" },
  }) do
    it("a DNS answer " .. case[1] .. ": " .. case[3] .. " within the timeout", function()
      local r = assert(resolver_mod.new{ nameserver = "127.0.0.1@" .. world.evildns,
        trust_anchor = false, timeout = 1.5 })
      local t0 = core.monotonic()
      local txt, msg, code = r:txt("_mta-sts." .. case[2] .. ".example")
      local took = core.monotonic() - t0
      r:close()
      assert.is_true(took < util.within(4), "took " .. took .. " s")
      if case[3]:match("^v=") then
        assert.is_table(txt, msg)
        local found = {}
        for _, v in ipairs(txt) do if v:match("^v=STSv1") then found[#found + 1] = v end end
        assert.same({ case[3] }, found)
      else
        assert.is_nil(txt)
        assert.equal(case[3], code, msg)
      end
    end)
  end

  it("sts:get over a hostile DNS server: sts-policy-fetch-error with the DNS reason", function()
    local sts = client(world.dir .. "/evildns", { nameserver = "127.0.0.1@" .. world.evildns })
    for domain, reason in pairs({ ["tc.example"] = "dns-servfail",
                                  ["loop.example"] = "dns-servfail" }) do
      local policy, result = sts:get(domain)
      assert.is_nil(policy)
      assert.equal("sts-policy-fetch-error", result.failures[1].result_type)
      assert.equal(reason, result.failures[1].failure_reason_code)
    end
    sts:close()
  end)

  it("a TXT record of 255 strings (64 KiB, over TCP): record-syntax, no crash", function()
    local sts = client(world.dir .. "/c1")
    local policy, result = sts:get("huge.example")
    assert.is_nil(policy)
    assert.equal("record-syntax", result.failures[1].failure_reason_code)
    sts:close()
  end)

  it("a policy of 64 KiB of mx lines parses and matches in bounded time", function()
    local sts = client(world.dir .. "/c2")
    local t0 = core.monotonic()
    local policy = assert(sts:get("bigpolicy.example"))
    assert.is_true(#policy.mx > 2000)
    assert.is_true(mtasts.matches(policy, "mx0001.bigpolicy.example"))
    assert.is_false(mtasts.matches(policy, "evil.example.org"))
    assert.is_true(core.monotonic() - t0 < util.within(3))
    sts:close()
  end)

  describe("downgrade, with an enforce policy cached", function()
    -- an enforce policy cached for domain under id, then `later` seconds on: what get says
    -- (the policy must still be the cached enforce one), and its result
    local function after(domain, id, later)
      local path = world.dir .. "/d-" .. domain
      local c = assert(core.cache_open(path))
      assert(c:upsert(domain, id, ENFORCE, now))
      c:close()
      local sts = client(path)
      now = now + later
      local policy, result = sts:get(domain)
      sts:close()
      assert.equal("enforce", policy and policy.mode)
      return result
    end

    it("a blocked TXT record: the cached policy until valid_end", function()
      after("blocked.example", "b1", 86400)
    end)

    it("a different policy without a new id: not fetched, the cached policy", function()
      after("same.example", "same1", 3600)
    end)

    it("a new id and mode none over an expired certificate: the cached policy", function()
      local result = after("newid.example", "old1", 3600)
      local types = {}
      for _, d in ipairs(result.failures) do types[#types + 1] = d.result_type end
      assert.matches("sts%-webpki%-invalid", table.concat(types, ","))
    end)
  end)
end)
