-- Policy discovery end to end: mtasts.resolver against NSD, mtasts.fetch against nginx and a
-- stalling server, all on loopback, with certificates from a test CA (docs/conformance.md §1-§2).
local resolver = require("mtasts.resolver")
local fetch = require("mtasts.fetch")
local sts = require("mtasts.discover")
local core = require("mtasts.core")
local util = require("support.util")
local proc = require("support.proc")
local dns = require("support.dns")
local https = require("support.https")

local ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.enforce.example\nmax_age: 86400\n"
local function policy_of(size)   -- a valid policy of exactly `size` bytes
  local head = "version: STSv1\nmode: none\nmax_age: 60\nc: "
  return head .. string.rep("x", size - #head - 1) .. "\n"
end

-- Domains: the TXT record of each (nil: none), and its policy site (nil: no policy host).
local DOMAINS = {
  enforce = { txt = '"v=STSv1; id=e1;"', site = { body = ENFORCE } },
  testing = { txt = '"v=STSv1; id=t1;"', site = { body =
    "version: STSv1\nmode: testing\nmx: *.testing.example\nmax_age: 600\n" } },
  none = { txt = '"v=STSv1; id=n1;"',
    site = { body = "version: STSv1\nmode: none\nmax_age: 60\n" } },
  crlf = { txt = '"v=STSv1; id=c1;"', site = { body =
    "version: STSv1\r\nmode: enforce\r\nmx: mx.crlf.example\r\nmax_age: 86400\r\n" } },
  ext = { txt = '"v=STSv1; id=x1; ext=value;"', site = { body = ENFORCE .. "note: kept\n" } },
  split = { txt = '"v=STSv1; " "id=s1;"', site = { body = ENFORCE } },
  othertxt = { txt = '"v=spf1 -all"', site = { body = ENFORCE } },
  two = { txt = { '"v=STSv1; id=a;"', '"v=STSv1; id=b;"' }, site = { body = ENFORCE } },
  badrecord = { txt = '"v=STSv1; id=bad-id;"', site = { body = ENFORCE } },
  cname = { cname = "_mta-sts.enforce", site = { body = ENFORCE } },
  notfound = { txt = '"v=STSv1; id=404;"', site = { status = 404 } },
  err500 = { txt = '"v=STSv1; id=500;"', site = { status = 500 } },
  redirect = { txt = '"v=STSv1; id=301;"', site = {
    redirect = "https://mta-sts.enforce.example/.well-known/mta-sts.txt" } },
  html = { txt = '"v=STSv1; id=h1;"', site = { body = ENFORCE, type = "text/html" } },
  htmlbad = { txt = '"v=STSv1; id=h2;"',
    site = { body = "<html>nope</html>", type = "text/html" } },
  charset = { txt = '"v=STSv1; id=cs;"', site = { body = ENFORCE, charset = "utf-8" } },
  exact = { txt = '"v=STSv1; id=64k;"', site = { body = policy_of(65536) } },
  over = { txt = '"v=STSv1; id=64k1;"', site = { body = policy_of(65537) } },
  chunked = { txt = '"v=STSv1; id=ch;"', site = { nginx =
    'default_type text/plain; echo_duplicate 65537 "a";' } },
  endless = { txt = '"v=STSv1; id=inf;"' },    -- evilhttps sends a body that never ends
  trickle = { txt = '"v=STSv1; id=tr;"', site = { nginx = 'default_type text/plain; ' ..
    'echo "version: STSv1"; echo_flush; echo_sleep 10; echo "mode: none";' } },
  expired = { txt = '"v=STSv1; id=ex;"', site = { body = ENFORCE, cert = "expired" } },
  wrongname = { txt = '"v=STSv1; id=wn;"', site = { body = ENFORCE, cert = "wrongname" } },
  untrusted = { txt = '"v=STSv1; id=un;"', site = { body = ENFORCE, cert = "untrusted" } },
  badpolicy = { txt = '"v=STSv1; id=bp;"', site = { body = "version: STSv1\nmode: enforcing\n" } },
  empty = { txt = '"v=STSv1; id=em;"', site = { body = "" } },
  nohost = { txt = '"v=STSv1; id=nh;"' },
  stall = { txt = '"v=STSv1; id=st;"' },        -- the policy host stalls the handshake
  nolistener = { txt = '"v=STSv1; id=nl;"' },   -- nothing listens
  ["xn--bcher-kva"] = { txt = '"v=STSv1; id=idn;"', site = { body = ENFORCE } },
}

local world = {}

setup(function()
  local dir = util.tmpdir()
  world.dir = dir
  world.ca = require("support.ca").new(dir .. "/ca")
  local records, sites = { "nodata._mta-sts IN A 127.0.0.1", "_mta-sts.nodata IN A 127.0.0.1" }, {}
  for name, d in pairs(DOMAINS) do
    local txts = type(d.txt) == "table" and d.txt or { d.txt }
    for _, t in ipairs(txts) do records[#records + 1] = "_mta-sts." .. name .. " IN TXT " .. t end
    if d.cname then records[#records + 1] = "_mta-sts." .. name .. " IN CNAME " .. d.cname end
    if name ~= "nohost" then records[#records + 1] = "mta-sts." .. name .. " IN A 127.0.0.1" end
    if d.site then
      d.site.host = "mta-sts." .. name .. ".example"
      sites[#sites + 1] = d.site
    end
  end
  records[#records + 1] = '_mta-sts.x IN TXT "v=STSv1; id=1;"'
  world.dns = dns.start({ ["example."] = records, ["broken.example."] = "BROKEN" })
  world.https = https.start(world.ca, sites)
  world.stall_port = proc.free_port()
  world.stall = proc.spawn("stall", "build/support/stall " .. world.stall_port .. " 600",
    dir .. "/stall.log")
  assert(proc.poll(function() return proc.tcp_open(world.stall_port) end, 10))
  -- an endless body, streamed from the first millisecond (nginx's echo_duplicate would build
  -- the whole body in memory first, which on a busy machine outlasts the client's timeout)
  local crt, key = world.ca:issue("mta-sts.endless.example")
  world.endless_port = proc.free_port()
  proc.spawn("evilhttps", ("build/support/evilhttps %d %s %s 600 body"):format(
    world.endless_port, crt, key), dir .. "/endless.log")
  assert(proc.poll(function() return proc.tcp_open(world.endless_port) end, 10))
  local connect_to = { "mta-sts.stall.example:443:127.0.0.1:" .. world.stall_port,
    "mta-sts.endless.example:443:127.0.0.1:" .. world.endless_port,
    "mta-sts.nolistener.example:443:127.0.0.1:" .. proc.free_port() }
  for _, c in ipairs(world.https.connect_to) do connect_to[#connect_to + 1] = c end
  world.r = assert(resolver.new{ nameserver = world.dns.nameserver, trust_anchor = false,
    timeout = 2 })
  world.f = assert(fetch.new{ resolver = world.r, cafile = world.ca.cafile,
    connect_to = connect_to, timeout = 2, allow_private_addresses = true })
end)

teardown(function()
  if world.f then world.f:close() end
  if world.r then world.r:close() end
  if world.https then world.https.stop() end
  if world.dns then world.dns.stop() end
  proc.stop_all()
  if world.dir then util.run("rm -rf '" .. world.dir .. "'") end
end)

-- { name, domain, expected } with expected { mode = } for a policy, or { code =, reason = }.
local CASES = {
  { "an enforce policy", "enforce.example", { mode = "enforce", id = "e1" } },
  { "a testing policy", "testing.example", { mode = "testing", id = "t1" } },
  { "a none policy", "none.example", { mode = "none", id = "n1" } },
  { "a CRLF policy", "crlf.example", { mode = "enforce", mx = "mx.crlf.example" } },
  { "extensions in record and policy", "ext.example", { mode = "enforce", record_ext = "ext",
    policy_ext = "note" } },
  { "a TXT record split in several strings", "split.example", { mode = "enforce", id = "s1" } },
  { "a record behind a CNAME, policy from the original domain", "cname.example",
    { mode = "enforce", id = "e1" } },
  { "an IDN domain given as U-labels", "b\195\188cher.example", { mode = "enforce", id = "idn" } },
  { "text/plain with a charset", "charset.example", { mode = "enforce", ct_ok = true } },
  { "text/html that parses: accepted, the violation noted", "html.example",
    { mode = "enforce", ct_ok = false } },
  { "a policy of 64 KiB exactly", "exact.example", { mode = "none" } },
  { "no record (NXDOMAIN)", "nothing.example", { code = "no-record", reason = "nxdomain" } },
  { "no record (NODATA)", "nodata.example", { code = "no-record", reason = "nodata" } },
  { "only other TXT records", "othertxt.example", { code = "no-record", reason = "no-record" } },
  { "two STS records", "two.example", { code = "multiple-records", reason = "multiple-records" } },
  { "a record syntax error", "badrecord.example", { code = "record-syntax",
    reason = "record-syntax" } },
  { "SERVFAIL", "x.broken.example", { code = "dns", reason = "servfail" } },
  { "404", "notfound.example", { code = "no-policy", reason = "http-status-404" } },
  { "500", "err500.example", { code = "policy-fetch", reason = "http-status-500" } },
  { "301 to a valid policy", "redirect.example", { code = "policy-fetch",
    reason = "redirect-not-allowed" } },
  { "text/html that does not parse", "htmlbad.example", { code = "policy-syntax",
    reason = "content-type-not-text-plain" } },
  { "64 KiB + 1 with Content-Length", "over.example", { code = "policy-syntax",
    reason = "policy-too-large" } },
  { "64 KiB + 1 without Content-Length", "chunked.example", { code = "policy-syntax",
    reason = "policy-too-large" } },
  { "a body that never ends", "endless.example", { code = "policy-syntax",
    reason = "policy-too-large" } },
  { "a body that trickles past the timeout", "trickle.example", { code = "policy-fetch",
    reason = "timeout" } },
  { "a stalled TLS handshake", "stall.example", { code = "policy-fetch", reason = "timeout" } },
  { "an expired certificate", "expired.example", { code = "policy-fetch",
    reason = "certificate-expired", type = "sts-webpki-invalid" } },
  { "a certificate for another name", "wrongname.example", { code = "policy-fetch",
    reason = "certificate-host-mismatch", type = "sts-webpki-invalid" } },
  { "a certificate from an untrusted issuer", "untrusted.example", { code = "policy-fetch",
    reason = "certificate-not-trusted", type = "sts-webpki-invalid" } },
  { "no listener", "nolistener.example", { code = "policy-fetch", reason = "connection-failed",
    type = "sts-policy-fetch-error" } },
  { "a policy host that does not exist", "nohost.example", { code = "no-policy",
    reason = "policy-host-not-found" } },
  { "a policy that does not parse", "badpolicy.example", { code = "policy-syntax",
    reason = "policy-syntax", type = "sts-policy-invalid" } },
  { "an empty policy", "empty.example", { code = "policy-syntax", reason = "policy-syntax" } },
  { "a domain that is no domain name", "192.0.2.1", { code = "domain-syntax" } },
}

describe("policy discovery #fixture", function()
  for _, case in ipairs(CASES) do
    local name, domain, want = case[1], case[2], case[3]
    it(name, function()
      local t0 = core.monotonic()
      local record, policy, text, info = sts.get(world.r, world.f, domain)
      local took = core.monotonic() - t0
      assert.is_true(took < util.within(5), ("took %.2f s"):format(took))
      if want.mode then
        assert.is_table(record, tostring(policy))
        assert.equal(want.mode, policy.mode)
        if want.id then assert.equal(want.id, record.id) end
        if want.mx then assert.equal(want.mx, policy.mx[1]) end
        if want.record_ext then assert.equal(want.record_ext, record.extensions[1].key) end
        if want.policy_ext then assert.equal(want.policy_ext, policy.extensions[1].key) end
        if want.ct_ok ~= nil then assert.equal(want.ct_ok, info.content_type_ok) end
        assert.is_string(text)
      else
        assert.is_nil(record)
        local msg, code, reason = policy, text, info
        assert.equal(want.code, code, msg)
        if want.reason then assert.equal(want.reason, reason, msg) end
        if want.type then assert.equal(want.type, fetch.result_type(code, reason)) end
        assert.is_string(msg)
      end
    end)
  end

  it("times a DNS server out that never answers", function()
    local dead = assert(resolver.new{ nameserver = "127.0.0.1@" .. proc.free_port(),
      trust_anchor = false, timeout = 0.5 })
    local record, msg, code, reason = sts.get(dead, world.f, "enforce.example")
    dead:close()
    assert.is_nil(record)
    assert.equal("dns", code)
    assert.equal("timeout", reason)
    assert.is_string(msg)
  end)

  it("runs many fetches at once on one fetcher", function()
    local ids, want = {}, {}
    for i = 1, 30 do
      local d = i % 3 == 0 and "testing" or i % 3 == 1 and "enforce" or "notfound"
      local host = "mta-sts." .. d .. ".example"
      ids[i] = assert(world.f:add{ url = "https://" .. host .. "/.well-known/mta-sts.txt",
        host = host, resolve = { host .. ":443:127.0.0.1" } })
      want[ids[i]] = d == "notfound" and 404 or 200
    end
    local got, deadline = 0, core.monotonic() + 10
    while got < 30 and core.monotonic() < deadline do
      core.poll(world.f:fd(), "r", world.f:timeout())
      assert(world.f:step())
      for _, t in ipairs(world.f:done()) do
        assert.equal(want[t.id], t.status)
        want[t.id] = nil
        got = got + 1
      end
    end
    assert.equal(30, got)
  end)

  it("never blocks a host loop: a slow policy host delays no other lookup", function()
    -- the host's own loop: each lookup is a coroutine, and `wait` yields to the loop
    local function wait(fd, events, timeout) coroutine.yield(fd, events, timeout) end
    local r = assert(resolver.new{ nameserver = world.dns.nameserver, trust_anchor = false,
      timeout = 2, wait = wait })
    local connect_to = {}
    for _, c in ipairs(world.https.connect_to) do connect_to[#connect_to + 1] = c end
    local f = assert(fetch.new{ resolver = r, cafile = world.ca.cafile, timeout = 2,
      connect_to = connect_to, wait = wait, allow_private_addresses = true })
    local domains = { "trickle.example" }
    for i = 1, 19 do
      domains[#domains + 1] = ({ "enforce", "testing", "none", "notfound" })[i % 4 + 1] ..
        ".example"
    end
    local tasks, finished = {}, {}
    local t0 = core.monotonic()
    for i, d in ipairs(domains) do
      tasks[i] = coroutine.create(function()
        local record, _, code = sts.get(r, f, d)
        finished[i] = { at = core.monotonic() - t0, ok = record ~= nil, code = code }
      end)
    end
    local deadline = t0 + 10
    repeat
      local live = 0
      for _, co in ipairs(tasks) do
        if coroutine.status(co) == "suspended" then
          assert(coroutine.resume(co))
          live = live + 1
        end
      end
      core.poll(f:fd(), "r", 0.005)   -- the loop sleeps on its own terms
    until live == 0 or core.monotonic() > deadline
    r:close()
    f:close()
    for i = 2, #domains do
      assert.is_table(finished[i], domains[i])
      assert.is_true(finished[i].at < util.within(1.0), ("%s took %.2f s"):format(domains[i],
        finished[i].at))
    end
    assert.equal("policy-fetch", finished[1].code)
    assert.is_true(finished[1].at >= 1.9, ("the slow one took only %.2f s"):format(
      finished[1].at))
  end)

  it("POSTs a body with the same rules and reads the answer", function()
    local body = string.rep("\0\1\2report", 100)
    local status, answer = world.f:post("https://mta-sts.enforce.example/report", body,
      "application/tlsrpt+gzip")
    assert.equal(200, status)
    assert.equal(body, answer)
    local ok, msg, code, reason = world.f:post("https://mta-sts.expired.example/report", body,
      "application/tlsrpt+gzip")
    assert.is_nil(ok)
    assert.equal("policy-fetch", code)
    assert.equal("certificate-expired", reason)
    assert.is_string(msg)
    ok, msg, code = world.f:post("http://mta-sts.enforce.example/report", body, "text/plain")
    assert.is_nil(ok)
    assert.equal("policy-fetch", code)
    assert.equal("only https:// URLs with a host", msg)
  end)

  it("refuses a policy host at a loopback address unless allowed", function()
    local f = assert(fetch.new{ resolver = world.r, cafile = world.ca.cafile,
      connect_to = world.https.connect_to, timeout = 2 })
    local text, msg, code, reason = f:fetch("enforce.example")
    assert.is_nil(text)
    assert.equal("policy-fetch", code)
    assert.equal("address-not-global", reason)
    assert.matches("127.0.0.1 is not a global address", msg, 1, true)
    -- a POST too, whatever the URL names
    local status, pmsg, pcode, preason = f:post("https://127.0.0.1:" .. world.https.port ..
      "/report", "x", "text/plain")
    assert.is_nil(status)
    assert.equal("policy-fetch", pcode)
    assert.equal("address-not-global", preason, pmsg)
    f:close()
  end)

  it("takes a CA file that vanished after start for this host's failure (local)", function()
    local cafile = world.dir .. "/vanishing-ca.pem"
    assert(os.execute("cp '" .. world.ca.cafile .. "' '" .. cafile .. "'"))
    local f = assert(fetch.new{ resolver = world.r, cafile = cafile,
      connect_to = world.https.connect_to, timeout = 2, allow_private_addresses = true })
    assert(os.remove(cafile))
    local text, msg, code, reason = f:fetch("enforce.example")
    assert.is_nil(text)
    assert.equal("local", code, msg)
    assert.is_nil(reason)
    assert.matches("mta-sts.enforce.example: this host failed: ", msg, 1, true)
    local status, pmsg, pcode, preason = f:post("https://mta-sts.enforce.example/report", "x",
      "text/plain")
    assert.is_nil(status)
    assert.equal("local", pcode, pmsg)
    assert.is_nil(preason)
    -- a certificate that does not verify stays the policy host's failure
    local _, _, ecode, ereason = world.f:fetch("untrusted.example")
    assert.equal("policy-fetch", ecode)
    assert.equal("certificate-not-trusted", ereason)
    f:close()
  end)

  it("raises on misuse and closes cleanly", function()
    assert.has_error(function() fetch.new{ nope = true } end,
      "bad argument #1 to 'new' (unknown option 'nope')")
    local f = assert(fetch.new{})
    assert.has_error(function() f:add{ url = "https://a.example/" } end,
      "bad argument #1 to 'add' (host required)")
    assert.is_true(f:close())
    assert.is_true(f:close())
    assert.equal("mtasts.fetcher (closed)", tostring(f))
    assert.has_error(function() f:fd() end, "attempt to use a closed mtasts.fetcher")
  end)
end)

describe("mtasts.core.is_global_address", function()
  it("tells the addresses a fetcher connects to from those it refuses", function()
    local global = { "8.8.8.8", "1.1.1.1", "193.0.14.129", "2001:4860:4860::8888",
      "2a00:1450::1", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1" }
    local internal = { "0.0.0.0", "10.1.2.3", "100.64.0.1", "127.0.0.1", "127.255.0.9",
      "169.254.169.254", "172.16.0.1", "172.31.255.255", "192.0.2.10", "192.168.1.1",
      "198.18.0.1", "198.51.100.7", "203.0.113.9", "224.0.0.251", "240.0.0.1",
      "255.255.255.255", "::", "::1", "fe80::1", "fec0::1", "fc00::1", "fd12:3456::1",
      "ff02::1", "2001:db8::1", "100::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
      "64:ff9b::a00:1", "64:ff9b::7f00:1", "2002:c0a8:101::1", "2002:7f00:1::1", "::10.0.0.1" }
    for _, ip in ipairs(global) do assert.is_true(core.is_global_address(ip), ip) end
    for _, ip in ipairs(internal) do assert.is_false(core.is_global_address(ip), ip) end
    assert.same({ nil, "not an IPv4 or IPv6 address", "einval" },
      { core.is_global_address("mta-sts.example") })
  end)
end)
