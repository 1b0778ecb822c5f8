-- mtasts.resolver against a real authoritative server (NSD) on loopback.
local resolver = require("mtasts.resolver")
local dns = require("support.dns")
local proc = require("support.proc")
local core = require("mtasts.core")
local util = require("support.util")

describe("mtasts.resolver #fixture", function()
  local server, r
  setup(function()
    server = dns.start({
      ["example."] = {
        '_mta-sts.enforce IN TXT "v=STSv1; id=20240101T000000;"',
        'enforce IN MX 10 mx1.enforce', 'enforce IN MX 20 mx2.enforce',
        'mx1.enforce IN A 127.0.0.1', 'mx1.enforce IN AAAA ::1',
        '_mta-sts.split IN TXT "v=STSv1; " "id=split1;"',
        '_mta-sts.two IN TXT "v=STSv1; id=1;"', '_mta-sts.two IN TXT "v=spf1 -all"',
        '_mta-sts.alias IN CNAME _mta-sts.enforce',
        'nodata IN A 127.0.0.1',
        '_25._tcp.mx1.enforce IN TLSA 3 1 1 ' ..
          '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef',
        'big IN TXT "' .. string.rep("a", 255) .. '" "' .. string.rep("b", 255) .. '"',
      },
      ["broken.example."] = "BROKEN",
    })
    r = assert(resolver.new{ nameserver = server.nameserver, trust_anchor = false, timeout = 5 })
  end)
  teardown(function()
    if r then r:close() end
    if server then server.stop() end
    proc.stop_all()
  end)

  it("returns a TXT record", function()
    local txt = assert(r:txt("_mta-sts.enforce.example"))
    assert.same({ "v=STSv1; id=20240101T000000;" }, { txt[1] })
    assert.equal(1, #txt)
    assert.is_false(txt.secure)
  end)
  it("concatenates the strings of one TXT record", function()
    assert.equal("v=STSv1; id=split1;", r:txt("_mta-sts.split.example")[1])
    local big = r:txt("big.example")[1]
    assert.equal(510, #big)
  end)
  it("returns every TXT record of a name", function()
    local txt = assert(r:txt("_mta-sts.two.example"))
    table.sort(txt)
    assert.same({ "v=STSv1; id=1;", "v=spf1 -all" }, { txt[1], txt[2] })
  end)
  it("follows a CNAME and says where it led", function()
    local txt = assert(r:txt("_mta-sts.alias.example"))
    assert.equal("v=STSv1; id=20240101T000000;", txt[1])
    assert.equal("_mta-sts.enforce.example.", txt.canonname)
  end)
  it("returns MX records with their preference", function()
    local mx = assert(r:mx("enforce.example"))
    table.sort(mx, function(a, b) return a.preference < b.preference end)
    assert.same({ preference = 10, host = "mx1.enforce.example" }, mx[1])
    assert.same({ preference = 20, host = "mx2.enforce.example" }, mx[2])
  end)
  it("returns A and AAAA addresses", function()
    assert.equal("127.0.0.1", r:a("mx1.enforce.example")[1])
    assert.equal("::1", r:aaaa("mx1.enforce.example")[1])
  end)
  it("returns TLSA records of _PORT._tcp.HOST, insecure without a trust anchor", function()
    local t = assert(r:tlsa("mx1.enforce.example"))
    assert.equal(3, t[1].usage)
    assert.equal(1, t[1].selector)
    assert.equal(1, t[1].mtype)
    assert.equal(32, #t[1].data)
    assert.equal("insecure", t.dnssec)
    assert.equal("_25._tcp.mx1.enforce.example", t.name)
    assert.same(t[1], assert(r:tlsa("mx1.enforce.example", 25))[1])
    assert.same({ "insecure", "nxdomain", 0 }, { r:tlsa("mx1.enforce.example", 465).dnssec,
      r:tlsa("mx1.enforce.example", 465).denial, #r:tlsa("mx1.enforce.example", 465) })
  end)
  it("says every answer is insecure without a trust anchor, a denial too", function()
    assert.equal("insecure", r:mx("enforce.example").dnssec)
    assert.is_false(r:mx("enforce.example").secure)
    assert.equal("insecure", r:a("mx1.enforce.example").dnssec)
    local res, _, code, dnssec = r:txt("_mta-sts.nothere.example")
    assert.is_nil(res)
    assert.same({ "nxdomain", "insecure" }, { code, dnssec })
  end)
  it("says nxdomain for a name that does not exist", function()
    local res, msg, code = r:txt("_mta-sts.nothere.example")
    assert.is_nil(res)
    assert.equal("nxdomain", code)
    assert.matches("no such domain", msg, 1, true)
  end)
  it("says nodata for a name without records of that type", function()
    local res, _, code = r:txt("nodata.example")
    assert.is_nil(res)
    assert.equal("nodata", code)
  end)
  it("says servfail when the zone cannot be served", function()
    local res, msg, code = r:txt("_mta-sts.x.broken.example")
    assert.is_nil(res)
    assert.equal("servfail", code)
    assert.is_string(msg)
  end)
  it("says timeout when the server never answers, within the timeout", function()
    -- a port nothing listens on: libunbound keeps retrying until our deadline
    local hole = proc.free_port()
    local slow = assert(resolver.new{ nameserver = "127.0.0.1@" .. hole, trust_anchor = false,
      timeout = 0.5 })
    local t0 = core.monotonic()
    local res, msg, code = slow:txt("_mta-sts.enforce.example")
    local took = core.monotonic() - t0
    slow:close()
    assert.is_nil(res)
    assert.equal("timeout", code)
    assert.equal("_mta-sts.enforce.example TXT: timed out after 0.5 s: no nameserver answered",
      msg)
    assert.is_true(took < util.within(2), "took " .. took)
  end)
  it("says timeout, not servfail, when libunbound gives up on a silent server first", function()
    -- a bound UDP port that reads and never answers: libunbound stops retrying after about
    -- 17 s and answers SERVFAIL by itself; no nameserver answered, so it is a timeout, at
    -- the resolver's deadline (docs/resolver.md, "Timeouts")
    local silent = proc.free_port()
    local dir, cleanup = util.tmpdir()
    local pid = proc.spawn("stall", "build/support/stall " .. silent .. " 120", dir .. "/stall.log")
    assert(proc.poll(function() return proc.tcp_open(silent) end, 10))
    local slow = assert(resolver.new{ nameserver = "127.0.0.1@" .. silent, trust_anchor = false,
      timeout = 19 })
    local t0 = core.monotonic()
    local res, msg, code = slow:txt("_mta-sts.silent.example")
    local took = core.monotonic() - t0
    slow:close()
    proc.stop(pid)
    cleanup()
    assert.is_nil(res)
    assert.equal("timeout", code, msg)
    assert.equal("_mta-sts.silent.example TXT: timed out after 19 s: no nameserver answered", msg)
    assert.is_true(took >= 18.9 and took < util.within(21), "took " .. took)
  end)
  it("says servfail at once when the server answers SERVFAIL, with a long timeout", function()
    -- the probe that tells libunbound's own SERVFAIL from a server's is answered at once
    local slow = assert(resolver.new{ nameserver = server.nameserver, trust_anchor = false,
      timeout = 30 })
    local t0 = core.monotonic()
    local res, msg, code = slow:txt("_mta-sts.y.broken.example")
    local took = core.monotonic() - t0
    slow:close()
    assert.is_nil(res)
    assert.equal("servfail", code, msg)
    assert.matches("rcode 2 (SERVFAIL)", msg, 1, true)
    assert.is_true(took < util.within(5), "took " .. took)
  end)
  it("runs many queries at once on one resolver", function()
    local ids = {}
    for i = 1, 50 do
      ids[i] = assert(r:query(i % 2 == 0 and "enforce.example" or "_mta-sts.enforce.example",
        i % 2 == 0 and "MX" or "TXT", 5))
    end
    local got = {}
    local deadline = core.monotonic() + 10
    while #got < 50 and core.monotonic() < deadline do
      core.poll(r:fd(), "r", r:timeout())
      assert(r:step())
      for _, a in ipairs(r:done()) do got[#got + 1] = a end
    end
    assert.equal(50, #got)
    local asked = {}
    for _, id in ipairs(ids) do asked[id] = true end
    for _, a in ipairs(got) do
      assert.equal("ok", a.status)
      assert.is_true(asked[a.id])
      asked[a.id] = nil
    end
    assert.same({}, asked)
  end)
  it("raises on misuse", function()
    assert.has_error(function() resolver.new{ bogus = 1 } end,
      "bad argument #1 to 'new' (unknown option 'bogus')")
    assert.has_error(function() r:query("a.example", "SPF", 1) end,
      "bad argument #2 to 'query' (type is A, AAAA, CNAME, MX, TXT or TLSA)")
    assert.has_error(function() r:query("a.example", "TXT", 0) end,
      "bad argument #3 to 'query' (timeout must be positive)")
    assert.has_error(function() r:tlsa(nil) end,
      "bad argument #1 to 'tlsa' (string expected, got nil)")
    assert.has_error(function() r:tlsa("mx.example", 0) end,
      "bad argument #2 to 'tlsa' (port must be an integer of 1-65535)")
    assert.has_error(function() r:tlsa("mx.example", "25") end,
      "bad argument #2 to 'tlsa' (port must be an integer of 1-65535)")
    assert.has_error(function() resolver.new{ stub = "127.0.0.1" } end,
      "bad argument #1 to 'new' (stub must be a table)")
    assert.has_error(function() resolver.new{ stub = { ["a.example"] = 53 } } end,
      "bad argument #1 to 'new' (stub: zone names to a server or a list of servers, strings)")
  end)
  it("closes twice and raises the exact message after close", function()
    local x = assert(resolver.new{ nameserver = server.nameserver, trust_anchor = false })
    assert.is_true(x:close())
    assert.is_true(x:close())
    assert.equal("mtasts.resolver (closed)", tostring(x))
    assert.has_error(function() x:fd() end, "attempt to use a closed mtasts.resolver")
  end)
end)

-- The signed fixture world of support.dnssec: example. signed (its DS the trust anchor), an
-- unsigned child zone, a bogus RRset, a TLSA name delegated to a server that never answers.
describe("mtasts.resolver with DNSSEC #fixture", function()
  local dnssec = require("support.dnssec")
  local w, r
  local function unhex(h)
    return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
  end
  setup(function()
    w = dnssec.dane_world{
      records = {
        "_25._tcp.mx.nodata.example. IN TXT \"not a TLSA record\"",
        "_25._tcp.mx.toinsecure.example. IN CNAME _25._tcp.mx.insecure.example.",
        "_25._tcp.mx.chain.example. IN CNAME _25._tcp.mx.cname.example.",
      },
      insecure_records = {
        "_25._tcp.mx.tosecure.insecure.example. IN CNAME _25._tcp.mx.dane-ee.example.",
      },
    }
    r = assert(resolver.new(w:resolver_opts{ timeout = 2 }))
  end)
  teardown(function()
    if r then r:close() end
    if w then w.stop() end
    proc.stop_all()
  end)

  it("says secure for a validated TLSA answer (DANE-EE and DANE-TA)", function()
    local t = assert(r:tlsa("mx.dane-ee.example", 25))
    assert.equal(1, #t)
    assert.same({ usage = 3, selector = 1, mtype = 1, data = unhex(w.data.ee) }, t[1])
    assert.equal("secure", t.dnssec)
    assert.is_true(t.secure)
    assert.equal("_25._tcp.mx.dane-ee.example", t.name)
    assert.is_nil(t.canonname)
    assert.is_nil(t.denial)
    local ta = assert(r:tlsa("mx.dane-ta.example"))
    assert.same({ usage = 2, selector = 0, mtype = 1, data = unhex(w.data.ta) }, ta[1])
    assert.equal("secure", ta.dnssec)
    -- data that matches no key is still a secure answer: matching it is DANE's business
    assert.equal(unhex(w.data.other), assert(r:tlsa("mx.mismatch.example"))[1].data)
  end)
  it("says secure for the MX, address and TXT answers of a signed zone", function()
    local mx = assert(r:mx("dane-ee.example"))
    assert.same({ "secure", true, "mx.dane-ee.example" }, { mx.dnssec, mx.secure, mx[1].host })
    assert.equal("secure", assert(r:a("mx.dane-ee.example")).dnssec)
    assert.equal("secure", assert(r:txt("_mta-sts.dane-ee.example")).dnssec)
  end)
  it("tells securely no TLSA (an empty list, secure) from a failure", function()
    local t = assert(r:tlsa("mx.nodane.example"))
    assert.same({ 0, "secure", true, "nxdomain" }, { #t, t.dnssec, t.secure, t.denial })
    t = assert(r:tlsa("mx.nodata.example"))
    assert.same({ 0, "secure", "nodata" }, { #t, t.dnssec, t.denial })
    -- other lookups keep failing on a denial, with its status as the fourth value
    local res, msg, code, status = r:mx("nothere.example")
    assert.is_nil(res)
    assert.same({ "nxdomain", "secure" }, { code, status })
    assert.equal("nothere.example MX: no such domain", msg)
  end)
  it("says insecure for an unsigned zone delegated without DS, records and denials", function()
    local t = assert(r:tlsa("mx.insecure.example"))
    assert.same({ 1, "insecure", false }, { #t, t.dnssec, t.secure })
    assert.equal(unhex(w.data.ee), t[1].data)
    t = assert(r:tlsa("nothere.insecure.example"))
    assert.same({ 0, "insecure", "nxdomain" }, { #t, t.dnssec, t.denial })
    assert.equal("insecure", assert(r:mx("insecure.example")).dnssec)
  end)
  it("fails bogus for a record changed after signing, never as no TLSA", function()
    local t, msg, code, status = r:tlsa("mx.bogus.example")
    assert.is_nil(t)
    assert.equal("bogus", code)
    assert.equal("bogus", status)
    assert.matches("^_25%._tcp%.mx%.bogus%.example TLSA: DNSSEC validation failed: ", msg)
    -- the rest of the zone still validates
    assert.equal("secure", assert(r:mx("bogus.example")).dnssec)
    local all = assert(r:lookup_all{ { "_25._tcp.mx.bogus.example", "TLSA" },
      { "mx.bogus.example", "A" } })
    assert.same({ nil, "bogus", "bogus" }, { all[1][1], all[1][3], all[1][4] })
    assert.equal("secure", all[2][1].dnssec)
  end)
  it("fails timeout for a TLSA name delegated to a server that never answers", function()
    assert.equal("secure", assert(r:a("mx.slow.example")).dnssec)
    local t0 = core.monotonic()
    local t, msg, code = r:tlsa("mx.slow.example")
    local took = core.monotonic() - t0
    assert.is_nil(t)
    assert.equal("timeout", code, msg)
    assert.equal("_25._tcp.mx.slow.example TLSA: timed out after 2 s: no nameserver answered",
      msg)
    assert.is_true(took >= 1.9 and took < util.within(4), "took " .. took)
  end)
  it("says timeout, not servfail, when libunbound gives up on a silent stub zone first",
    function()
    -- libunbound answers SERVFAIL by itself after 12-17 s; the probe then asks the stub
    -- zone's own server (silent), not the nameserver NSD (which would answer): a timeout
    local slow = assert(resolver.new(w:resolver_opts{ timeout = 19 }))
    local t0 = core.monotonic()
    local t, msg, code = slow:tlsa("mx.slow.example")
    local took = core.monotonic() - t0
    slow:close()
    assert.is_nil(t)
    assert.equal("timeout", code, msg)
    assert.is_true(took >= 18.9 and took < util.within(21), "took " .. took)
  end)
  it("follows CNAMEs: secure only when every link is", function()
    local t = assert(r:tlsa("mx.cname.example"))
    assert.same({ "secure", "_25._tcp.mx.dane-ee.example." }, { t.dnssec, t.canonname })
    assert.equal(unhex(w.data.ee), t[1].data)
    t = assert(r:tlsa("mx.chain.example"))   -- two links, both signed
    assert.same({ "secure", "_25._tcp.mx.dane-ee.example." }, { t.dnssec, t.canonname })
    -- a signed CNAME into the unsigned zone, and an unsigned one into the signed zone
    t = assert(r:tlsa("mx.toinsecure.example"))
    assert.same({ 1, "insecure", "_25._tcp.mx.insecure.example." }, { #t, t.dnssec, t.canonname })
    t = assert(r:tlsa("mx.tosecure.insecure.example"))
    assert.same({ 1, "insecure", "_25._tcp.mx.dane-ee.example." }, { #t, t.dnssec, t.canonname })
  end)
  it("says insecure for everything without the trust anchor", function()
    local plain = assert(resolver.new(w:resolver_opts{ trust_anchor = false, timeout = 2 }))
    local t = assert(plain:tlsa("mx.dane-ee.example"))
    local bogus = assert(plain:tlsa("mx.bogus.example"))
    plain:close()
    assert.equal("insecure", t.dnssec)
    assert.same({ 1, "insecure", unhex(w.data.other) }, { #bogus, bogus.dnssec, bogus[1].data })
  end)
  it("checks stub zones as settings: a zone name, servers IP[@PORT]", function()
    local ok, msg, code, key = resolver.new{ trust_anchor = false, nameserver = "127.0.0.1",
      stub = { ["a..example"] = "127.0.0.1" } }
    assert.same({ nil, "config", "stub" }, { ok, code, key })
    assert.equal("stub: 'a..example' is not a zone name", msg)
    ok, msg, code, key = resolver.new{ trust_anchor = false, nameserver = "127.0.0.1",
      stub = { ["a.example"] = { "127.0.0.1@5353", "127.0.0.1@99999" } } }
    assert.same({ nil, "config", "stub" }, { ok, code, key })
    assert.equal("stub: '127.0.0.1@99999': port 99999 is out of range (1-65535)", msg)
    assert.is_true(resolver.check{ trust_anchor = false, nameserver = "127.0.0.1",
      stub = { ["a.example."] = { "127.0.0.1@5353", "::1" } } })
  end)
end)
