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
    assert.matches("mode:    enforce", out, 1, true)
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
    assert.matches("enforce.example%s+enforce", out)
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
    assert.matches("Try 'mtasts --help'", err, 1, true)
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
    assert.matches("1 x certificate-expired (certificate-expired) at mx1.enforce.example", out,
      1, true)
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
