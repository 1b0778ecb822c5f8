-- bin/mtasts against the fixture world.
local cjson = require("cjson")
local util = require("support.util")
local proc = require("support.proc")

local world = {}

setup(function()
  local dir = util.tmpdir()
  world.dir = dir
  local ca = require("support.ca").new(dir .. "/ca")
  world.dns = require("support.dns").start({ ["example."] = {
    "enforce IN MX 10 mx1.enforce", "enforce IN MX 20 mx2.enforce",
    '_mta-sts.enforce IN TXT "v=STSv1; id=1;"', "mta-sts.enforce IN A 127.0.0.1",
    '_smtp._tls.enforce IN TXT "v=TLSRPTv1; rua=mailto:r@enforce.example"',
    '_mta-sts.gone IN TXT "v=STSv1; id=1;"', "mta-sts.gone IN A 127.0.0.1",
    "plain IN MX 10 mx.plain",
  }, ["broken.example."] = "BROKEN" })
  world.web = require("support.https").start(ca, {
    { host = "mta-sts.enforce.example",
      body = "version: STSv1\nmode: enforce\nmx: mx1.enforce.example\nmax_age: 86400\n" },
    { host = "mta-sts.gone.example", body = "version: STSv1\nmode: none\nmax_age: 86400\n" },
  })
  world.cli = util.lua_cmd() .. " bin/mtasts --db " .. dir .. "/cache --nameserver " ..
    world.dns.nameserver .. " --trust-anchor none --allow-private-addresses --cafile " ..
    ca.cafile ..
    " --connect-to :443:127.0.0.1:" .. world.web.port .. " --timeout 3"
end)

teardown(function()
  if world.web then world.web.stop() end
  if world.dns then world.dns.stop() end
  proc.stop_all()
  if world.dir then util.run("rm -rf '" .. world.dir .. "'") end
end)

local function mtasts(args)
  local out, status = util.run(world.cli .. " " .. args .. " 2>" .. world.dir .. "/stderr")
  local f = io.open(world.dir .. "/stderr")
  local err = f:read("a")
  f:close()
  return out, status, err
end

describe("bin/mtasts #fixture", function()
  it("lookup: fetches, then serves from the cache; exit 0", function()
    local out, status = mtasts("lookup Enforce.Example.")
    assert.equal(0, status, out)
    assert.matches("enforce.example: MTA-STS policy (fetched now)", out, 1, true)
    assert.matches("mode:     enforce", out, 1, true)
    out, status = mtasts("lookup enforce.example")
    assert.equal(0, status)
    assert.matches("(cache)", out, 1, true)
  end)
  it("lookup --json gives the policy and the TLSRPT result", function()
    local out, status = mtasts("--json lookup enforce.example")
    assert.equal(0, status)
    local v = cjson.decode(out)
    assert.equal("enforce", v.policy.mode)
    assert.equal("sts", v.result.policy.type)
    assert.same({ "mx1.enforce.example" }, v.result.policy.mx_host)
  end)
  it("lookup: no policy, exit 1; temporary failure, exit 2; bad domain, exit 3", function()
    local out, status = mtasts("lookup plain.example")
    assert.equal(1, status, out)
    assert.matches("no MTA-STS policy", out, 1, true)
    out, status = mtasts("lookup x.broken.example")
    assert.equal(2, status, out)
    assert.matches("temporary failure", out, 1, true)
    local _, err
    _, status, err = mtasts("lookup 192.0.2.1")
    assert.equal(3, status)
    assert.matches("IP address", err, 1, true)
  end)
  it("check: MX, record, policy, TLSRPT and the plan", function()
    local out, status = mtasts("check enforce.example")
    assert.equal(0, status, out)
    for _, want in ipairs({ "MX:       10 mx1.enforce.example", "record:   v=STSv1; id=1",
      "policy:   enforce", "TLSRPT:   mailto:r@enforce.example",
      "deliver:  mx1.enforce.example, TLS required",
      "refuse:   mx2.enforce.example (not in the policy)" }) do
      assert.matches(want, out, 1, true)
    end
    out, status = mtasts("--json check enforce.example")
    assert.equal(0, status)
    local v = cjson.decode(out)
    assert.equal("mx2.enforce.example", v.plan.skipped[1].host)
    assert.equal("mtasts-policy-mx-mismatch", v.result.failures[1].failure_reason_code)
    local _, pstatus = mtasts("check plain.example")
    assert.equal(1, pstatus)
  end)
  it("cache list, show, verify, delete", function()
    mtasts("lookup enforce.example")
    local out, status = mtasts("cache list")
    assert.equal(0, status)
    assert.matches("^domain%s+state%s+mode%s+valid_end%s+last_use%s+record_id\n", out)
    assert.matches("\nenforce.example%s+valid%s+enforce%s+%d+%-%d+%-%d+T%d+:%d+:%d+Z%s", out)
    out = mtasts("--json cache show enforce.example")
    assert.equal("1", cjson.decode(out).record_id)
    out, status = mtasts("cache verify")
    assert.equal(0, status, out)
    out, status = mtasts("cache delete enforce.example")
    assert.equal(0, status)
    assert.matches("deleted", out, 1, true)
    local _, sstatus = mtasts("cache show enforce.example")
    assert.equal(1, sstatus)
  end)
  it("cache rebuild keeps the rows and the old files", function()
    mtasts("lookup enforce.example")
    local out, status = mtasts("--json cache rebuild")
    assert.equal(0, status, out)
    local v = cjson.decode(out)
    assert.equal(1, v.salvaged)
    assert.matches("%.broken%-", v.moved_to)
    out = mtasts("cache list")
    assert.matches("enforce.example", out, 1, true)
  end)
  it("refresh: runs a pass and reports its summary (nothing is 12 hours old yet)", function()
    mtasts("lookup gone.example")
    local out, status = mtasts("--json refresh")
    assert.equal(0, status, out)
    assert.same({ due = 0, pruned = 0, extended = 0, updated = 0, deleted = 0, kept = 0,
      failed = 0, failures = {} }, cjson.decode(out))
    out, status = mtasts("refresh")       -- all is well: nothing for cron to mail
    assert.equal(0, status)
    assert.equal("", out)
    out, status = mtasts("-v refresh")
    assert.equal(0, status)
    assert.matches("0 due: 0 extended, 0 updated, 0 deleted, 0 kept, 0 failed; 0 pruned", out, 1,
      true)
  end)
  it("usage errors exit 64 with a hint", function()
    local _, status, err = mtasts("frobnicate")
    assert.equal(64, status)
    assert.equal("mtasts: unknown command 'frobnicate' (try 'mtasts --help')\n", err)
  end)
end)

describe("bin/mtasts settings #fixture", function()
  -- the command line of the world with some global options replaced, on a cache of its own
  local function cli(db, over)
    local o = { ["--nameserver"] = world.dns.nameserver, ["--trust-anchor"] = "none",
      ["--cafile"] = world.dir .. "/ca/trusted/ca.crt",
      ["--connect-to"] = ":443:127.0.0.1:" .. world.web.port, ["--timeout"] = "3" }
    for k, v in pairs(over or {}) do o[k] = v end
    local line = util.lua_cmd() .. " bin/mtasts --db " .. db .. " --allow-private-addresses"
    for _, k in ipairs({ "--nameserver", "--trust-anchor", "--cafile", "--connect-to",
      "--timeout" }) do
      line = line .. " " .. k .. " '" .. o[k] .. "'"
    end
    return line
  end
  local function run(line)
    local errfile = world.dir .. "/stderr"
    local out, status = util.run(line .. " 2>" .. errfile)
    local f = io.open(errfile)
    local err = f:read("a")
    f:close()
    return out, status, err
  end
  local function exists(path) return os.rename(path, path) ~= nil end

  it("a bad setting: exit 78, one line naming the option, no cache directory made", function()
    util.write(world.dir .. "/garbage.key", "not a trust anchor\n")
    local cases = {
      { { ["--cafile"] = "/nonexistent/ca.pem" }, "lookup enforce.example",
        "mtasts: --cafile: cannot read '/nonexistent/ca.pem': No such file or directory\n" },
      { { ["--trust-anchor"] = world.dir .. "/garbage.key" }, "lookup enforce.example",
        "mtasts: --trust-anchor: '" .. world.dir .. "/garbage.key' does not load as DNSSEC " ..
        "trust anchors (libunbound refused it)\n" },
      { { ["--timeout"] = "0" }, "lookup enforce.example",
        "mtasts: --timeout: 0 is not a number of seconds above 0 and at most 86400\n" },
      { { ["--nameserver"] = "127.0.0.1@99999" }, "lookup enforce.example",
        "mtasts: --nameserver: '127.0.0.1@99999': port 99999 is out of range (1-65535)\n" },
      { { ["--cafile"] = "/nonexistent/ca.pem" }, "check enforce.example",
        "mtasts: --cafile: cannot read '/nonexistent/ca.pem': No such file or directory\n" },
      { { ["--timeout"] = "0" }, "refresh",
        "mtasts: --timeout: 0 is not a number of seconds above 0 and at most 86400\n" },
      { { ["--cafile"] = "/nonexistent/ca.pem" }, "report send",
        "mtasts: --cafile: cannot read '/nonexistent/ca.pem': No such file or directory\n" },
      { {}, "serve postfix --listen inet:127.0.0.1:99999",
        "mtasts: --listen: 'inet:127.0.0.1:99999': port 99999 is out of range (0-65535)\n" },
      { {}, "serve postfix --listen tcp:x", "mtasts: --listen: 'tcp:x': 'tcp' is not a known " ..
        "scheme (inet:HOST:PORT, HOST:PORT or unix:PATH)\n" },
      { {}, "serve postfix --zone postfix:strict", "mtasts: --zone: unknown option 'strict' " ..
        "in 'postfix:strict'\n" },
      { { ["--nameserver"] = "127.0.0.1@99999" }, "serve postfix --listen inet:127.0.0.1:0",
        "mtasts: --nameserver: '127.0.0.1@99999': port 99999 is out of range (1-65535)\n" },
      { { ["--nameserver"] = "127.0.0.1@99999" }, "check enforce.example",
        "mtasts: --nameserver: '127.0.0.1@99999': port 99999 is out of range (1-65535)\n" },
      { {}, "serve postfix --listen inet:127.0.0.1:x",
        "mtasts: --listen: 'inet:127.0.0.1:x': port 'x' is not a number\n" },
      { {}, "serve postfix --listen inet:127.0.0.1:8461 --listen tcp:127.0.0.1:25",
        "mtasts: --listen: 'tcp:127.0.0.1:25': 'tcp' is not a known scheme (inet:HOST:PORT, " ..
        "HOST:PORT or unix:PATH)\n" },
    }
    for i, c in ipairs(cases) do
      local db = world.dir .. "/settings-" .. i
      local out, status, err = run(cli(db, c[1]) .. " " .. c[2])
      assert.equal(78, status, c[2] .. ": " .. out .. err)
      assert.equal(c[3], err, c[2])
      assert.equal("", out, c[2])
      -- no directory: so no backoff row, and no result store
      assert.is_false(exists(db), c[2] .. ": the cache directory was made")
    end
  end)

  it("an address in use: exit 78, the address and the reason", function()
    local socket = require("cqueues.socket")
    local taken = assert(socket.listen{ host = "127.0.0.1", port = 0 })
    assert(taken:listen())
    local _, _, port = taken:localname()
    local _, status, err = run(cli(world.dir .. "/settings-inuse") ..
      " serve postfix --listen inet:127.0.0.1:" .. port)
    taken:close()
    assert.equal(78, status, err)
    assert.equal("mtasts: --listen: 'inet:127.0.0.1:" .. port .. "': Address already in use\n",
      err)
    -- a socket in a directory that is not there: the address and the reason too
    local sock = world.dir .. "/nonexistent/pf.sock"
    _, status, err = run(cli(world.dir .. "/settings-nodir") .. " serve postfix --listen unix:" ..
      sock)
    assert.equal(78, status, err)
    assert.equal("mtasts: --listen: 'unix:" .. sock .. "': No such file or directory\n", err)
  end)

  it("the same setting that works is taken: the world's own lookup still succeeds", function()
    local out, status = run(cli(world.dir .. "/settings-ok") .. " lookup enforce.example")
    assert.equal(0, status, out)
  end)

  it("a CA file that vanished after the client started: local, no backoff row", function()
    -- a client made with the CA file, which is then removed: as in a server that runs for
    -- weeks (spec/postfix_spec.lua has the socketmap server's TEMP answer for it)
    local mtasts_mod = require("mtasts")
    local cafile = world.dir .. "/vanishing-ca.pem"
    assert(os.execute("cp '" .. world.dir .. "/ca/trusted/ca.crt' '" .. cafile .. "'"))
    local db = world.dir .. "/settings-vanish"
    local sts = assert(mtasts_mod.open{ path = db, nameserver = world.dns.nameserver,
      trust_anchor = false, cafile = cafile, timeouts = { dns = 3, fetch = 3 },
      connect_to = { ":443:127.0.0.1:" .. world.web.port }, allow_private_addresses = true })
    assert(os.remove(cafile))
    local policy, result, fresh, msg, code = sts:get("enforce.example")
    assert.is_nil(policy)
    assert.is_nil(result)
    assert.is_false(fresh)
    assert.equal("local", code)
    assert.matches("this host failed", msg, 1, true)
    assert.same({}, sts:records())
    sts:close()
    -- a command started now finds it missing at start: a setting's error, not a lookup's
    local out, status, err = run(cli(db, { ["--cafile"] = cafile }) .. " lookup enforce.example")
    assert.equal(78, status, out .. err)
    assert.matches("--cafile: cannot read", err, 1, true)
  end)
end)

describe("bin/mtasts report #fixture", function()
  local tlsrpt = require("mtasts.tlsrpt")
  local yesterday = tlsrpt.day_of(os.time() - 86400)
  local function store_results()
    local store = assert(tlsrpt.open{ path = world.dir .. "/cache" })
    local r = tlsrpt.sts_result("enforce.example",
      "version: STSv1\nmode: enforce\nmx: mx1.enforce.example\nmax_age: 86400\n",
      { mx = { "mx1.enforce.example" } })
    r.summary.success, r.summary.failure = 7, 1
    tlsrpt.add_failure(r, "certificate-expired", "certificate-expired",
      { receiving_mx_hostname = "mx1.enforce.example" })
    assert(store:add(r, { day = yesterday }))
    assert(store:close())
  end

  it("stats, build, show, send (once), and usage errors", function()
    store_results()
    local out, status = mtasts("report stats")
    assert.equal(0, status)
    assert.matches(yesterday .. "  1 report(s), 7 successful and 1 failed sessions", out, 1, true)
    local outdir = world.dir .. "/reports"
    util.run("mkdir -p " .. outdir)
    out, status = mtasts("report --submitter mail.sender.example build --out " .. outdir)
    assert.equal(0, status)
    local file = out:match("[^\n]+")
    assert.matches("mail.sender.example!enforce.example!%d+!%d+%.json%.gz$", file)
    out, status = mtasts("report show '" .. file .. "'")
    assert.equal(0, status)
    assert.matches("sts enforce.example: 7 successful, 1 failed sessions", out, 1, true)
    assert.matches("1 x certificate-expired at mx1.enforce.example", out, 1, true)
    local _, jst = mtasts("--json report show '" .. file .. "'")
    assert.equal(0, jst)

    local mail = world.dir .. "/sent.eml"
    out, status = mtasts("report --submitter mail.sender.example send --sendmail 'cat > " ..
      mail .. "'")
    assert.equal(0, status, out)
    assert.matches("1 sent, 0 to retry", out, 1, true)
    local f = assert(io.open(mail, "rb"))
    local report = assert(tlsrpt.parse_report(f:read("a")))
    f:close()
    assert.equal(7, report.policies[1].summary["total-successful-session-count"])
    out, status = mtasts("report send --submitter mail.sender.example --sendmail false")
    assert.equal(0, status)
    assert.matches("0 sent, 0 to retry, 0 failed, 0 dropped, 0 waiting, 1 done before", out,
      1, true)

    local _, st, err = mtasts("report build --day 2026-02-30")
    assert.equal(64, st)
    assert.matches("--day", err, 1, true)
    _, st, err = mtasts("report show " .. world.dir .. "/nonexistent")
    assert.equal(3, st)
    assert.matches("nonexistent", err, 1, true)
    -- a report that does not parse: its code is the parser's, in JSON too
    local bad = world.dir .. "/bad-report.json"
    local bf = assert(io.open(bad, "wb"))
    bf:write("{}")
    bf:close()
    local jout
    jout, st = mtasts("--json report show " .. bad)
    assert.equal(3, st)
    assert.equal("report-syntax", cjson.decode(jout).code)
  end)
end)

describe("bin/mtasts output #fixture", function()
  it("report show escapes the control characters of what a sender wrote", function()
    local report = { ["organization-name"] = "Evil\27]0;owned\7 Org\27[2J",
      ["date-range"] = { ["start-datetime"] = "2026-11-20T00:00:00Z",
        ["end-datetime"] = "2026-11-20T23:59:59Z" },
      ["contact-info"] = "a\r\nfake line", ["report-id"] = "id\194\155x",
      policies = { { policy = { ["policy-type"] = "sts", ["policy-domain"] = "x.example" },
        summary = { ["total-successful-session-count"] = 1,
          ["total-failure-session-count"] = 0 }, ["failure-details"] = {} } } }
    local file = world.dir .. "/evil.json"
    util.write(file, require("mtasts.tlsrpt").encode(report))
    local out, status = mtasts("report show " .. file)
    assert.equal(0, status, out)
    assert.is_nil(out:find("[\0-\8\11-\31\127]"), out)
    assert.is_nil(out:find("\194[\128-\159]"), out)
    assert.matches("Evil\\x1b]0;owned\\x07 Org\\x1b[2J", out, 1, true)
    assert.matches("a\\x0d\\nfake line", out, 1, true)
    assert.matches("id\\u009bx", out, 1, true)
  end)
end)

describe("refresh on the fixture world #fixture", function()
  it("extends a policy whose record is unchanged, deletes a gone none-row, keeps enforce",
    function()
      local mtasts_mod = require("mtasts")
      local now = 1700000000
      local sts = assert(mtasts_mod.open{ path = world.dir .. "/refresh-cache",
        nameserver = world.dns.nameserver, trust_anchor = false,
        cafile = world.dir .. "/ca/trusted/ca.crt",
        connect_to = { ":443:127.0.0.1:" .. world.web.port }, timeouts = { dns = 3, fetch = 3 },
        clock = function() return now end, allow_private_addresses = true })
      assert.equal("enforce", sts:get("enforce.example").mode)
      sts.cache:upsert("vanished.example", "1", "version: STSv1\nmode: none\nmax_age: 86400\n", now)
      sts.cache:upsert("kept.example", "1",
        "version: STSv1\nmode: enforce\nmx: mx.kept.example\nmax_age: 604800\n", now)
      now = now + 13 * 3600
      local summary = assert(sts:refresh{ concurrency = 2 })
      assert.same({ due = 3, pruned = 0, extended = 1, updated = 0, deleted = 1, kept = 1,
        failed = 0, failures = {} }, summary)
      local rows = {}
      for _, r in ipairs(sts:records()) do rows[r.domain] = r end
      assert.equal(now + 86400, rows["enforce.example"].valid_end)
      assert.is_nil(rows["vanished.example"])
      assert.equal("enforce", rows["kept.example"].policy.mode)
      sts:close()
    end)
end)

describe("bin/mtasts on the demo world #fixture", function()
  -- spec/support/world.lua: enforce, testing, none, expired (the fetch fails), plain (no
  -- record); each command on a cache of its own unless it says otherwise
  local demo = {}
  setup(function()
    demo.dir = util.tmpdir()
    demo.w = require("support.world").start(demo.dir)
    demo.n = 0
  end)
  teardown(function()
    if demo.w then demo.w.stop() end
    if demo.dir then util.run("rm -rf '" .. demo.dir .. "'") end
  end)
  -- run bin/mtasts with the world's flags; db: a cache directory (default: a new one)
  local function run(args, db)
    demo.n = demo.n + 1
    if not db then db = demo.dir .. "/db-" .. demo.n end
    local errfile = demo.dir .. "/stderr"
    local out, status = util.run(util.lua_cmd() .. " bin/mtasts " .. demo.w.flags .. " --db " ..
      db .. " " .. args .. " 2>" .. errfile)
    local f = io.open(errfile)
    local err = f:read("a")
    f:close()
    return out, status, err
  end
  local RFC3339 = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"

  it("lookup and check give the same exit status for every domain", function()
    local want = { enforce = 0, testing = 0, none = 1, expired = 1, plain = 1 }
    for _, d in ipairs(require("support.world").DOMAINS) do
      local domain = d[1] .. ".example"
      local lout, lstatus = run("lookup " .. domain)
      local cout, cstatus = run("check " .. domain)
      assert.equal(want[d[1]], lstatus, domain .. ": lookup\n" .. lout)
      assert.equal(want[d[1]], cstatus, domain .. ": check\n" .. cout)
      -- and in JSON
      local _, jl = run("--json lookup " .. domain)
      local _, jc = run("--json check " .. domain)
      assert.equal(lstatus, jl, domain)
      assert.equal(cstatus, jc, domain)
    end
    -- a record lookup that fails (SERVFAIL): 2 from both
    local _, lstatus = mtasts("lookup x.broken.example")
    local cout, cstatus = mtasts("check x.broken.example")
    assert.equal(2, lstatus)
    assert.equal(2, cstatus, cout)
    assert.matches("defer:    mta-sts policy lookup failed", cout, 1, true)
  end)

  it("check says what a testing policy would refuse under enforce, once per word", function()
    local out, status = run("check testing.example")
    assert.equal(0, status, out)
    assert.matches("deliver:  mx.testing.example, TLS opportunistic\n", out, 1, true)
    assert.matches("deliver:  backup.elsewhere.example, TLS opportunistic (not in the policy: " ..
      "testing mode would refuse it under enforce)\n", out, 1, true)
    local v = cjson.decode((run("--json check testing.example")))
    assert.is_true(v.plan.hosts[1].in_policy)
    assert.is_false(v.plan.hosts[2].in_policy)
    -- no word twice in a row ("policy-syntax (policy-syntax)") in any text output
    for _, args in ipairs({ "check enforce.example", "check expired.example",
      "check plain.example", "check none.example", "lookup expired.example",
      "-v check enforce.example" }) do
      out = run(args)
      for a, b in out:gmatch("([%w%-]+) %(([%w%-]+)%)") do
        assert.are_not.equal(a, b, args .. ": " .. out)
      end
    end
    out = run("check expired.example")
    assert.matches("policy:   policy-fetch (certificate-expired): ", out, 1, true)
  end)

  it("-v adds the details: lookup, check, cache", function()
    local db = demo.dir .. "/verbose"
    local plain = run("lookup enforce.example", db)
    local out, status = run("-v lookup enforce.example", db)
    assert.equal(0, status, out)
    assert.are_not.equal(plain:gsub("%(fetched now%)", "(cache)"), out)
    assert.matches("  cache:    " .. db .. "\n", out, 1, true)
    assert.matches("  record_id: enforce1\n", out, 1, true)
    assert.matches("\n  valid_end: %d+%-%d+%-%d+T[%d:]+Z\n", out)
    assert.matches("\n  took:     %d+%.%d+ s\n", out)
    local v = cjson.decode((run("--json -v lookup enforce.example", db)))
    assert.equal("enforce1", v.detail.row.record_id)
    assert.matches(RFC3339, v.detail.row.valid_end)
    assert.equal("number", type(v.detail.took))

    plain = run("check enforce.example")
    out = run("-v check enforce.example")
    assert.equal(1, select(2, out:find(plain, 1, true)) and 1 or 0, out)   -- the same, then more
    for _, want in ipairs({ 'TXT:      _mta-sts.enforce.example "v=STSv1; id=enforce1;"',
      'TXT:      _smtp._tls.enforce.example "v=TLSRPTv1; rua=mailto:tlsrpt@enforce.example,',
      "fetch:    https://mta-sts.enforce.example/.well-known/mta-sts.txt (HTTP 200, text/plain)",
      "policy text:\n    version: STSv1\n    mode: enforce\n" }) do
      assert.matches(want, out, 1, true)
    end
    assert.matches("took:     mx %d+%.%d+ s, mta%-sts %d+%.%d+ s, policy %d+%.%d+ s, " ..
      "tlsrpt %d+%.%d+ s, dane %d+%.%d+ s\n", out)
    v = cjson.decode((run("--json -v check enforce.example")))
    assert.equal(200, v.detail.fetch.status)
    assert.equal("text/plain", v.detail.fetch.content_type)
    assert.same({ "v=STSv1; id=enforce1;" }, v.detail.txt["_mta-sts.enforce.example"])

    for _, c in ipairs({ "cache list", "cache show enforce.example", "cache verify" }) do
      plain = run(c, db)
      out, status = run("-v " .. c, db)
      assert.equal(0, status, c .. ": " .. out)
      assert.equal("cache: " .. db .. " (policies.db)\n" .. plain, out, c)
    end
  end)

  it("times are RFC 3339 in text and JSON; cache rows have the same fields in both", function()
    local db = demo.dir .. "/times"
    run("lookup enforce.example", db)
    run("lookup expired.example", db)
    local list = cjson.decode((run("--json cache list", db)))
    assert.equal(2, #list)
    local by = {}
    for _, row in ipairs(list) do
      by[row.domain] = row
      for _, k in ipairs({ "inserted", "valid_end", "last_update", "last_use" }) do
        assert.matches(RFC3339, row[k], 1, false)
      end
      assert.is_nil(row.backoff)
    end
    assert.equal("valid", by["enforce.example"].state)
    assert.equal("backoff", by["expired.example"].state)
    local text = run("cache list", db)
    for _, row in ipairs(list) do
      local fields = { row.domain, row.state, row.mode, row.valid_end, row.last_use,
        row.record_id }
      for i, f in ipairs(fields) do fields[i] = f:gsub("%p", "%%%0") end
      assert.matches("\n" .. table.concat(fields, "%s+") .. "\n", text)
    end
    local show = run("cache show expired.example", db)
    local one = cjson.decode((run("--json cache show expired.example", db)))
    for _, k in ipairs({ "domain", "state", "mode", "record_id", "max_age", "inserted",
      "valid_end", "last_update", "last_use" }) do
      local value = tostring(math.tointeger(one[k]) or one[k])   -- cjson gives 300.0
      assert.matches("\n?" .. k .. ":%s+" .. value:gsub("%p", "%%%0") .. "\n", show)
    end
  end)

  it("--json: every failure is one object on stdout with the text mode's exit status", function()
    local db = demo.dir .. "/jsonerr"
    local cases = {
      { "frobnicate", 64, "usage" },
      { "--timeout x lookup enforce.example", 64, "usage" },
      { "--timeout 0 lookup enforce.example", 78, "config" },
      { "--nameserver 127.0.0.1@99999 check enforce.example", 78, "config" },
      { "lookup 192.0.2.1", 3, "domain-syntax" },
      { "check 192.0.2.1", 3, "domain-syntax" },
      { "cache show nowhere.example", 1, "not-cached" },
      { "serve postfix --listen tcp:x", 78, "config" },
    }
    for _, c in ipairs(cases) do
      local out, status, err = run(c[1], db)
      local tout, tstatus, terr = run("--json " .. c[1], db)
      assert.equal(c[2], status, c[1] .. ": " .. out .. err)
      assert.equal(status, tstatus, c[1])
      assert.equal("", out, c[1])
      assert.matches("^mtasts: [^\n]+\n$", err, 1, false)
      local v = cjson.decode(tout)
      assert.equal(c[3], v.code, c[1] .. ": " .. tout)
      assert.equal(err, "mtasts: " .. v.error .. "\n", c[1])
      assert.equal("", terr, c[1])
    end
    -- the commands without output in text print an object
    run("lookup enforce.example", db)
    assert.same({ cache = db, sound = true }, cjson.decode((run("--json cache verify", db))))
    local out, status = run("--json cache delete Enforce.Example", db)
    assert.equal(0, status)
    assert.same({ domain = "enforce.example", deleted = true }, cjson.decode(out))
    out, status = run("--json cache delete enforce.example", db)
    assert.equal(1, status)
    assert.same({ domain = "enforce.example", deleted = false }, cjson.decode(out))
    local version = cjson.decode((run("--json --version")))
    assert.matches("^%d+%.%d+%.%d+$", version.mtasts)
  end)
end)

describe("bin/mtasts failures #fixture", function()
  local dir
  setup(function() dir = util.tmpdir() end)
  teardown(function() util.run("rm -rf '" .. dir .. "'") end)

  it("an internal error is one line without file names; -v adds the traceback", function()
    -- a delivery module with a bug, loaded from a file as a module would be
    util.write(dir .. "/buggy.lua", "local t\nreturn { plan = function() return t.hosts end }\n")
    local cli = util.lua_cmd() .. [[ -e 'package.preload["mtasts.delivery"] = function() ]] ..
      [[return dofile("]] .. dir .. [[/buggy.lua") end' bin/mtasts --nameserver ]] ..
      world.dns.nameserver .. " --trust-anchor none --timeout 3 "
    local out, status = util.run(cli .. "check plain.example 2>&1 >/dev/null")
    assert.equal(3, status)
    assert.equal("mtasts: internal error: attempt to index a nil value (upvalue 't')\n", out)
    out, status = util.run(cli .. "-v check plain.example 2>&1 >/dev/null")
    assert.equal(3, status)
    assert.matches("^mtasts: internal error: attempt to index a nil value %(upvalue 't'%)\n" ..
      "[^\n]*buggy.lua:2: attempt to index", out)
    assert.matches("stack traceback:", out, 1, true)
    out, status = util.run(cli .. "--json check plain.example 2>/dev/null")
    assert.equal(3, status)
    assert.same({ code = "internal",
      error = "internal error: attempt to index a nil value (upvalue 't')" }, cjson.decode(out))
  end)

  it("a module that does not load: one line, exit 3, no traceback", function()
    -- a Lua path without Debian's tree: argparse is not found (before mtasts.core is loaded)
    local out, status = util.run("env LUA_PATH='" .. dir .. "/?.lua' lua5.4 bin/mtasts lookup " ..
      "enforce.example 2>&1")
    assert.equal(3, status)
    assert.equal("mtasts: cannot load the Lua module 'argparse': not found on Lua's path (is it " ..
      "installed?)\n", out)
  end)

  describe("Ctrl-C", function()
    local stall
    setup(function()
      stall = proc.free_port()
      proc.spawn("stall", "build/support/stall " .. stall .. " 600", dir .. "/stall.log")
      assert(proc.poll(function() return proc.tcp_open(stall) end, 10))
    end)
    teardown(function() proc.stop_all() end)

    -- Start bin/mtasts ARGS against a DNS server that never answers, wait until ready(pid)
    -- (the Lua process), send SIGINT to it alone (a terminal's Ctrl-C reaches it once), and
    -- return its exit status, stdout, stderr and how long it took to stop.
    local n = 0
    local function interrupt(args, ready, sig)
      n = n + 1
      local base = dir .. "/int-" .. n
      util.write(base .. ".sh", util.lua_cmd() .. " bin/mtasts --db " .. dir ..
        "/db-int --nameserver 127.0.0.1@" .. stall .. " --trust-anchor none --timeout 60 " ..
        args .. " >" .. base .. ".out 2>" .. base .. ".err\necho $? >" .. base .. ".status\n")
      local shell = proc.spawn("mtasts", "sh " .. base .. ".sh", base .. ".log")
      local pid
      assert(proc.poll(function()   -- timeout -> sh -> lua5.4
        local sh = util.run("ps -o pid= --ppid " .. shell):match("%d+")
        pid = sh and util.run("ps -o pid= --ppid " .. sh):match("%d+")
        return pid and ready(pid)
      end, util.within(20)), args .. ": never got ready")
      local t0 = require("mtasts.core").monotonic()
      os.execute("kill -" .. (sig or "INT") .. " " .. pid)
      local status
      assert(proc.poll(function()
        local f = io.open(base .. ".status")
        status = f and tonumber(f:read("a"))
        if f then f:close() end
        return status ~= nil
      end, util.within(20)), args .. ": did not stop")
      local function read(ext)
        local f = io.open(base .. ext)
        local s = f:read("a")
        f:close()
        return s
      end
      return status, read(".out"), read(".err"), require("mtasts.core").monotonic() - t0
    end
    it("check: its three lookups take one timeout, not three in a row", function()
      local t0 = require("mtasts.core").monotonic()
      local out, status = util.run(util.lua_cmd() .. " bin/mtasts --nameserver 127.0.0.1@" ..
        stall .. " --trust-anchor none --timeout 2 check stalled.example 2>&1")
      local took = require("mtasts.core").monotonic() - t0
      assert.equal(2, status, out)
      assert.is_true(took < 2 + util.within(1.5), "took " .. took .. " s")
      for _, want in ipairs({ "MX:       none (timeout)",
        "record:   dns (timeout): _mta-sts.stalled.example TXT: ",
        "TLSRPT:   lookup failed (timeout)",
        "defer:    mta-sts policy lookup failed: _mta-sts.stalled.example TXT: " }) do
        assert.matches(want, out, 1, true)
      end
    end)

    -- waiting on DNS: libunbound's thread is there once the first query is sent
    local function resolving(pid)
      local out = util.run("ls /proc/" .. pid .. "/task 2>/dev/null | wc -l")
      return tonumber(out) >= 2
    end

    it("exits 130 quietly, soon, while lookup, check or refresh wait on DNS", function()
      -- a row 13 hours old, so that refresh has work
      local core = require("mtasts.core")
      local c = assert(core.cache_open(dir .. "/db-int"))
      assert(c:upsert("due.example", "1", "version: STSv1\nmode: enforce\nmx: mx.due.example\n" ..
        "max_age: 604800\n", os.time() - 13 * 3600))
      c:close()
      for _, args in ipairs({ "lookup stalled.example", "check stalled.example", "refresh",
        "--json lookup stalled.example" }) do
        local status, out, err, took = interrupt(args, resolving)
        assert.equal(130, status, args .. ": " .. out .. err)
        assert.equal("", err, args)
        if args:find("--json", 1, true) then
          assert.same({ code = "interrupted", error = "interrupted" }, cjson.decode(out))
        else
          assert.equal("", out, args)
        end
        assert.is_true(took < util.within(5), args .. ": took " .. took .. " s")
      end
    end)

    it("serve postfix stops cleanly: SIGINT exits 130, SIGTERM 0", function()
      -- listening, and inside server:run: SIGINT is blocked there (read through a signalfd),
      -- and before that the interpreter's handler would take it
      local function listening(pid)
        local f = io.open(dir .. "/int-" .. n .. ".out")
        local s = f and f:read("a") or ""
        if f then f:close() end
        f = io.open("/proc/" .. pid .. "/status")
        local blocked = f and f:read("a"):match("\nSigBlk:%s*(%x+)")
        if f then f:close() end
        return s:find("inet:", 1, true) ~= nil and blocked ~= nil and
          (tonumber(blocked, 16) & 2) ~= 0   -- bit 1: SIGINT (2)
      end
      for sig, want in pairs({ INT = 130, TERM = 0 }) do
        local status, out, err = interrupt("serve postfix --listen inet:127.0.0.1:0", listening,
          sig)
        assert.equal(want, status, err)
        assert.matches("^inet:127%.0%.0%.1:%d+\n$", out)
        assert.matches("signal %d+: finishing the requests in flight", err)
        assert.matches("stopped\n$", err)
        assert.is_nil(err:find("traceback", 1, true))
      end
    end)
  end)
end)
