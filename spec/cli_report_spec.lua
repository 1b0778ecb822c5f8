-- bin/mtasts report and refresh against the fixture world: what an operator (or the mail a
-- cron job sends) sees of failed deliveries, pending retries, failed refreshes, and the
-- submitter reports are made with.
local cjson = require("cjson")
local tlsrpt = require("mtasts.tlsrpt")
local util = require("support.util")
local proc = require("support.proc")

local ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.enforce.example\nmax_age: 86400\n"
local world = {}

setup(function()
  local dir = util.tmpdir()
  world.dir = dir
  local ca = require("support.ca").new(dir .. "/ca")
  world.closed = proc.free_port()       -- nothing listens there: connection refused
  world.dns = require("support.dns").start({ ["example."] = {
    '_mta-sts.enforce IN TXT "v=STSv1; id=1;"', "mta-sts.enforce IN A 127.0.0.1",
    '_smtp._tls.enforce IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@enforce.example"',
    '_mta-sts.expired IN TXT "v=STSv1; id=2;"', "mta-sts.expired IN A 127.0.0.1",
    '_smtp._tls.busy IN TXT "v=TLSRPTv1; rua=https://reports.busy.example/report"',
    "reports.busy IN A 127.0.0.1",
    '_smtp._tls.refused IN TXT "v=TLSRPTv1; rua=https://reports.refused.example:' ..
      world.closed .. '/report"',
    "reports.refused IN A 127.0.0.1",
  }, ["broken.example."] = "BROKEN" })
  world.web = require("support.https").start(ca, {
    { host = "mta-sts.enforce.example", body = ENFORCE },
    { host = "mta-sts.expired.example", body = ENFORCE, cert = "expired" },
    { host = "reports.busy.example", report = "return 503;" },
  })
  world.flags = " --nameserver " .. world.dns.nameserver .. " --trust-anchor none " ..
    "--allow-private-addresses --cafile " .. ca.cafile .. " --connect-to :443:127.0.0.1:" ..
    world.web.port .. " --timeout 3"
  world.cafile = ca.cafile
  -- `hostname` for the default submitter: prints what the file `hostname.txt` holds
  util.run("mkdir -p " .. dir .. "/bin")
  util.write(dir .. "/bin/hostname", "#!/bin/sh\ncat " .. dir .. "/hostname.txt\n")
  util.run("chmod +x " .. dir .. "/bin/hostname")
  -- a submission command that fails, saying why on two lines of its standard error
  util.write(dir .. "/bin/sendmail-fails", "#!/bin/sh\ncat >/dev/null\n" ..
    "printf 'sendmail: fatal: no room in the queue\\n  try later\\n' >&2\nexit 75\n")
  util.run("chmod +x " .. dir .. "/bin/sendmail-fails")
end)

teardown(function()
  if world.web then world.web.stop() end
  if world.dns then world.dns.stop() end
  proc.stop_all()
  if world.dir then util.run("rm -rf '" .. world.dir .. "'") end
end)

-- Run bin/mtasts on the cache directory db: stdout, exit status, stderr. env: assignments
-- put before the command (PATH=...).
local function mtasts(db, args, env)
  local errfile = world.dir .. "/stderr"
  local out, status = util.run((env and env .. " " or "") .. util.lua_cmd() ..
    " bin/mtasts --db " .. db .. world.flags .. " " .. args .. " 2>" .. errfile)
  local f = io.open(errfile)
  local err = f:read("a")
  f:close()
  return out, status, err
end

local function lines(s)
  local out = {}
  for l in s:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

local function exists(path) return os.rename(path, path) ~= nil end

describe("bin/mtasts report send #fixture", function()
  local yesterday = tlsrpt.day_of(os.time() - 86400)
  local day_pat = yesterday:gsub("%-", "%%-")     -- the day inside a pattern
  local n = 0
  -- a new cache directory with a result of yesterday for each domain
  local function store_results(domains)
    n = n + 1
    local db = world.dir .. "/send-" .. n
    local store = assert(tlsrpt.open{ path = db })
    for _, d in ipairs(domains) do
      local r = tlsrpt.sts_result(d, ENFORCE, { mx = { "mx1.enforce.example" } })
      r.summary.success = 3
      assert(store:add(r, { day = yesterday }))
    end
    assert(store:close())
    return db
  end

  it("prints each failed delivery on a line of its own: where, why, the code, what next",
    function()
    local db = store_results({ "enforce.example", "busy.example", "refused.example" })
    local out, status, err = mtasts(db, "report send --submitter mail.sender.example " ..
      "--sendmail " .. world.dir .. "/bin/sendmail-fails")
    assert.equal(2, status, out .. err)
    assert.matches("^0 sent, 3 to retry, 0 failed, 0 dropped, 0 waiting, 0 done before", out)
    local got = lines(err)
    assert.equal(3, #got, err)     -- one line each: the store's own log lines are not repeated
    local at = "retry at [%d%-]+[T ][%d:]+Z$"
    assert.matches("^mtasts: send: " .. day_pat .. " busy%.example to " ..
      "https://reports%.busy%.example/report: HTTP 503 %(http%-status%); " .. at, got[1])
    assert.matches("^mtasts: send: " .. day_pat .. " enforce%.example to " ..
      "mailto:tlsrpt@enforce%.example: the submission command exited with status 75: " ..
      "sendmail: fatal: no room in the queue try later %(submission%); " .. at, got[2])
    assert.matches("^mtasts: send: " .. day_pat .. " refused%.example to " ..
      "https://reports%.refused%.example:" .. world.closed .. "/report: .+ %(post%-failed%); " ..
      at, got[3])
    -- the host is named once, by the URL
    assert.is_nil(got[3]:find("/report: reports.refused.example", 1, true), got[3])
  end)

  it("--json: the summary with its failures", function()
    local db = store_results({ "busy.example" })
    local out, status = mtasts(db, "--json report send --submitter mail.sender.example")
    assert.equal(2, status, out)
    local v = cjson.decode(out)
    assert.equal(1, v.retry)
    assert.equal(1, #v.failures)
    local f = v.failures[1]
    assert.equal("busy.example", f.domain)
    assert.equal(yesterday, f.day)
    assert.equal("https://reports.busy.example/report", f.destination)
    assert.equal("HTTP 503", f.error)
    assert.equal("http-status", f.code)
    assert.equal(503, f.status)
    assert.equal(1, f.attempts)
    assert.is_true(f.retry_at > os.date("!%Y-%m-%dT%H:%M:%SZ"), "RFC 3339, in the future")
  end)

  it("a submission command that cannot be run is this host's failure: no attempt used up",
    function()
    local db = store_results({ "enforce.example" })
    local out, status, err = mtasts(db, "report send --submitter mail.sender.example " ..
      "--sendmail " .. world.dir .. "/bin/no-such-sendmail")
    assert.equal(2, status, out .. err)
    assert.matches("the submission command '.-no%-such%-sendmail' cannot be run %(exit status " ..
      "127%): .-not found %(local%); retry at", err)
    out = mtasts(db, "--json report stats")
    local r = cjson.decode(out).retries[1]
    assert.equal(0, r.attempts)
    assert.equal("local", r.code)
  end)

  it("stats lists each delivery waiting for a retry, with its next attempt and last error",
    function()
    local db = store_results({ "busy.example", "enforce.example" })
    mtasts(db, "report send --submitter mail.sender.example --sendmail " .. world.dir ..
      "/bin/sendmail-fails")
    local out, status, err = mtasts(db, "report stats")
    assert.equal(0, status, out .. err)
    local got = lines(out)
    assert.equal(3, #got, out)
    assert.equal(yesterday .. "  2 report(s), 6 successful and 0 failed sessions", got[1])
    assert.matches("^retry " .. day_pat .. " busy%.example to https://reports%.busy%.example/" ..
      "report: next attempt [%d%-]+[T ][%d:]+Z, 1 attempt%(s%) so far, last error: HTTP 503 " ..
      "%(http%-status%)$", got[2])
    assert.matches("^retry " .. day_pat .. " enforce%.example to " ..
      "mailto:tlsrpt@enforce%.example: next attempt .+, 1 attempt%(s%) so far, last error: " ..
      "the submission command exited with status 75: sendmail: fatal: no room in the queue " ..
      "try later %(submission%)$", got[3])
    out = mtasts(db, "--json report stats")
    local v = cjson.decode(out)
    assert.equal(2, #v.retries)
    assert.equal("https://reports.busy.example/report", v.retries[1].destination)
    assert.equal("pending", v.retries[1].status)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", v.retries[1].next)
    assert.is_true(v.retries[1].next > os.date("!%Y-%m-%dT%H:%M:%SZ"))
    assert.equal("HTTP 503", v.retries[1].error)
  end)
end)

describe("bin/mtasts report: the submitter #fixture", function()
  local yesterday = tlsrpt.day_of(os.time() - 86400)
  local function with_results(name)
    local db = world.dir .. "/" .. name
    local store = assert(tlsrpt.open{ path = db })
    local r = tlsrpt.sts_result("enforce.example", ENFORCE, { mx = { "mx1.enforce.example" } })
    r.summary.success = 1
    assert(store:add(r, { day = yesterday }))
    assert(store:close())
    return db
  end
  local function fake_hostname(name)
    util.write(world.dir .. "/hostname.txt", name .. "\n")
    return "PATH=" .. world.dir .. "/bin:$PATH"
  end

  it("--submitter, --organization and --contact go after build and send, or before them",
    function()
    local db = with_results("submitter-positions")
    local outdir = world.dir .. "/built"
    util.run("mkdir -p " .. outdir)
    local out, status, err = mtasts(db, "report build --submitter mx.sender.example " ..
      "--organization 'Sender Org' --contact tlsrpt@sender.example --out " .. outdir)
    assert.equal(0, status, out .. err)
    local file = out:match("[^\n]+")
    assert.matches("/mx.sender.example!enforce.example!%d+!%d+%.json%.gz$", file)
    out = mtasts(db, "report show " .. file)
    assert.matches("from Sender Org (tlsrpt@sender.example)", out, 1, true)
    -- before the subcommand, as the systemd unit passes them; after it wins
    out, status, err = mtasts(db, "report --submitter mx.before.example --organization Before " ..
      "build --out " .. outdir)
    assert.equal(0, status, out .. err)
    assert.matches("/mx.before.example!", out, 1, true)
    out, status, err = mtasts(db, "report --submitter mx.before.example build --submitter " ..
      "mx.after.example --out " .. outdir)
    assert.equal(0, status, out .. err)
    assert.matches("/mx.after.example!", out, 1, true)
    local mail = world.dir .. "/sent.eml"
    out, status, err = mtasts(db, "report send --submitter mail.sender.example " ..
      "--organization 'Sender Org' --sendmail 'cat > " .. mail .. "'")
    assert.equal(0, status, out .. err)
    local f = assert(io.open(mail, "rb"))
    local report = assert(tlsrpt.parse_report(f:read("a")))
    f:close()
    assert.equal("Sender Org", report["organization-name"])
    assert.matches("@mail%.sender%.example$", report["report-id"])
  end)

  it("the default is this host's fully qualified name (hostname -f)", function()
    local db = with_results("submitter-default")
    local outdir = world.dir .. "/built-default"
    util.run("mkdir -p " .. outdir)
    local out, status, err = mtasts(db, "report build --out " .. outdir,
      fake_hostname("mx.fqdn.example"))
    assert.equal(0, status, out .. err)
    assert.matches("/mx.fqdn.example!enforce.example!", out, 1, true)
  end)

  it("a submitter without a dot is refused: exit 78, naming --submitter, nothing made",
    function()
    local db = world.dir .. "/submitter-refused"
    local out, status, err = mtasts(db, "report send --submitter mx")
    assert.equal(78, status, out .. err)
    assert.equal("mtasts: --submitter: 'mx' is not a fully qualified host name; pass " ..
      "--submitter with the fully qualified name of this mail server (mx.example.org)\n", err)
    assert.equal("", out)
    out, status, err = mtasts(db, "report --submitter localhost build --out " .. world.dir)
    assert.equal(78, status, out .. err)
    assert.matches("--submitter: 'localhost' is not a fully qualified host name", err, 1, true)
    -- the default, when this host's name has no dot
    out, status, err = mtasts(db, "report send", fake_hostname("vm"))
    assert.equal(78, status, out .. err)
    assert.equal("mtasts: --submitter: this host's name 'vm' is not fully qualified " ..
      "(hostname -f); pass --submitter with the fully qualified name of this mail server " ..
      "(mx.example.org)\n", err)
    assert.is_false(exists(db), "the cache directory was made")
    -- stats puts no submitter in anything: it runs
    local sdb = with_results("submitter-stats")
    out, status, err = mtasts(sdb, "report stats", fake_hostname("vm"))
    assert.equal(0, status, out .. err)
  end)
end)

describe("bin/mtasts refresh #fixture", function()
  -- a cache whose rows were last updated 13 hours ago: every one is due
  local function due_cache(name, rows)
    local db = world.dir .. "/" .. name
    local cache = assert(require("mtasts.core").cache_open(db))
    for _, d in ipairs(rows) do
      assert(cache:upsert(d, "1", ENFORCE, os.time() - 13 * 3600))
    end
    cache:close()
    return db
  end

  it("prints nothing at all when every domain is fine; the summary with -v or --json",
    function()
    local db = due_cache("refresh-fine", { "enforce.example" })
    local out, status, err = mtasts(db, "refresh")
    assert.equal(0, status, out .. err)
    assert.equal("", out)
    assert.equal("", err)
    db = due_cache("refresh-fine-v", { "enforce.example" })
    out, status, err = mtasts(db, "-v refresh")
    assert.equal(0, status, out .. err)
    assert.matches("^1 due: 1 extended, 0 updated, 0 deleted, 0 kept, 0 failed; 0 pruned\n$", out)
    db = due_cache("refresh-fine-json", { "enforce.example" })
    out, status = mtasts(db, "--json refresh")
    assert.equal(0, status, out)
    assert.same({ due = 1, pruned = 0, extended = 1, updated = 0, deleted = 0, kept = 0,
      failed = 0, failures = {} }, cjson.decode(out))
  end)

  it("names each domain that failed and why, one line each; exit 2", function()
    local db = due_cache("refresh-failed", { "enforce.example", "expired.example",
      "x.broken.example" })
    local out, status, err = mtasts(db, "refresh")
    assert.equal(2, status, out .. err)
    assert.equal("", out)
    local got = lines(err)
    table.sort(got)
    assert.equal(2, #got, err)
    assert.matches("^mtasts: refresh: expired%.example: mta%-sts%.expired%.example: " ..
      "certificate: .+ %(policy%-fetch%)$", got[1])
    assert.matches("^mtasts: refresh: x%.broken%.example: _mta%-sts%.x%.broken%.example TXT: " ..
      ".+ %(dns%)$", got[2])
    db = due_cache("refresh-failed-json", { "expired.example" })
    out, status = mtasts(db, "--json refresh")
    assert.equal(2, status, out)
    local v = cjson.decode(out)
    assert.equal(1, v.failed)
    assert.equal("expired.example", v.failures[1].domain)
    assert.equal("policy-fetch", v.failures[1].code)
    assert.equal("certificate-expired", v.failures[1].reason)
  end)
end)
