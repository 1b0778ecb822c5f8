-- Report delivery end to end (#fixture): the _smtp._tls records from NSD, https reports to
-- nginx with certificates from the test CA, mailto reports through a private Postfix that
-- delivers to a Maildir. Each delivered report is read back and parsed.
local tlsrpt = require("mtasts.tlsrpt")
local util = require("support.util")
local proc = require("support.proc")
local dns = require("support.dns")
local https = require("support.https")
local postfix = require("support.postfix")

local DAY = "2026-11-20"
local AFTER = tlsrpt.day_start(DAY) + 86400 + 60
local MAILBOX = "tlsrpt@report.example"
local POLICY = "version: STSv1\nmode: enforce\nmx: mx1.good.example\nmax_age: 86400\n"

local world = {}

describe("#fixture report delivery", function()
  setup(function()
    local dir = util.tmpdir()
    world.dir = dir
    world.ca = require("support.ca").new(dir .. "/ca")
    world.https = https.start(world.ca, {
      { host = "reports.good.example" },
      { host = "reports.expired.example", cert = "expired" },
      { host = "reports.busy.example", report = "return 503;" },
      { host = "reports.ported.example" },
    })
    -- twelve report hosts that accept TCP and never answer TLS
    world.stall = proc.free_port()
    proc.spawn("stall", "build/support/stall " .. world.stall .. " 600", dir .. "/stall.log")
    assert(proc.poll(function() return proc.tcp_open(world.stall) end, 10))
    local fanout = {}
    for i = 1, 12 do
      fanout[i] = ('"https://r%d.stall.example:%d/report%s"'):format(i, world.stall,
        i < 12 and "," or "")
    end
    world.dns = dns.start({ ["example."] = {
      -- only NSD knows this name, and the URL names nginx's port: reached through the
      -- configured resolver, never connect_to or the system's resolver
      '_smtp._tls.ported IN TXT "v=TLSRPTv1; rua=https://reports.ported.example:' ..
        world.https.port .. '/report"', "reports.ported IN A 127.0.0.1",
      '_smtp._tls.fanout IN TXT "v=TLSRPTv1; rua=" ' .. table.concat(fanout, " "),
      "*.stall IN A 127.0.0.1",
      '_smtp._tls.good IN TXT "v=TLSRPTv1; rua=https://reports.good.example/report,' ..
        'mailto:' .. MAILBOX .. '"',
      '_smtp._tls.mail IN TXT "v=TLSRPTv1; rua=mailto:' .. MAILBOX .. '"',
      '_smtp._tls.expired IN TXT "v=TLSRPTv1; rua=https://reports.expired.example/report"',
      '_smtp._tls.busy IN TXT "v=TLSRPTv1; rua=https://reports.busy.example/report"',
      "reports.good IN A 127.0.0.1", "reports.expired IN A 127.0.0.1",
      "reports.busy IN A 127.0.0.1", "norecord IN A 127.0.0.1",
    } })
    world.mta = postfix.start({ MAILBOX })
    -- a submission command that fails while the file `down` exists
    world.sendmail = dir .. "/sendmail"
    util.write(world.sendmail, "#!/bin/sh\n[ -e " .. dir .. "/down ] && exit 75\nexec " ..
      world.mta.sendmail .. "\n")
    util.run("chmod +x " .. world.sendmail)
  end)

  teardown(function()
    if world.mta then world.mta.stop() end
    if world.https then world.https.stop() end
    if world.dns then world.dns.stop() end
    proc.stop_all()
    if world.dir then util.run("rm -rf '" .. world.dir .. "'") end
  end)

  -- The POSTs nginx has logged, once there are at least n (or after a deadline): nginx writes
  -- its log line after the answer, so a client can see its 2xx before the line is there.
  local function reports_at_least(n)
    local got = world.https.reports()
    proc.poll(function()
      got = world.https.reports()
      return #got >= n
    end, util.within(10))
    return got
  end

  local now, dbdir
  local function open(opts)
    local o = { path = dbdir, submitter = "mail.sender.example",
      organization = "Sender", from = "reports@sender.example", window = 0, backoff = 60,
      clock = function() return now end, nameserver = world.dns.nameserver,
      trust_anchor = false, cafile = world.ca.cafile, connect_to = world.https.connect_to,
      timeouts = { dns = 2, fetch = 3 }, sendmail = world.sendmail,
      allow_private_addresses = true }
    for k, v in pairs(opts or {}) do o[k] = v end
    return assert(tlsrpt.open(o))
  end
  local function result(domain, success, failure)
    local r = tlsrpt.sts_result(domain, POLICY, { mx = { "mx1.good.example" } })
    r.summary.success, r.summary.failure = success, failure
    if failure > 0 then
      tlsrpt.add_failure(r, "certificate-expired", "certificate-expired",
        { receiving_mx_hostname = "mx1.good.example", count = failure })
    end
    return r
  end

  before_each(function()
    now = tlsrpt.day_start(DAY) + 3600
    dbdir = util.tmpdir()
  end)
  after_each(function() util.run("rm -rf '" .. dbdir .. "' " .. world.dir .. "/down") end)

  it("delivers by https and by mail through Postfix, once", function()
    local before_mail = #world.mta:messages(MAILBOX)
    local before_posts = #world.https.reports()
    local store = open()
    store:add(result("good.example", 10, 2))
    local report = assert(store:report("good.example", DAY))
    now = AFTER
    local sum = assert(store:send(DAY))
    assert.same({ sent = 2, failed = 0, retry = 0, dropped = 0, waiting = 0, done = 0,
      failures = {} }, sum)

    -- nginx logs a request after it has answered it: wait for the line
    local posts = reports_at_least(before_posts + 1)
    assert.equal(before_posts + 1, #posts)
    assert.equal("application/tlsrpt+gzip", posts[#posts].type)
    assert.same(report, assert(tlsrpt.parse_report(posts[#posts].body)))

    local mails = world.mta:wait_messages(MAILBOX, before_mail + 1)
    assert.equal(before_mail + 1, #mails, world.mta.log())
    local msg = mails[#mails]
    assert.truthy(msg:find("\nTLS-Required: No\n", 1, true))
    assert.truthy(msg:find("\nTLS-Report-Domain: good.example\n", 1, true))
    assert.truthy(msg:find("multipart/report; report-type=\"tlsrpt\"", 1, true))
    assert.same(report, assert(tlsrpt.parse_report(msg)))
    store:close()

    -- a restart: nothing is delivered twice
    store = open()
    now = now + 7200
    sum = assert(store:send())
    assert.equal(0, sum.sent)
    assert.equal(1, sum.done)
    store:close()
    proc.poll(function() return false end, 1)   -- give Postfix a moment to show a duplicate
    assert.equal(before_mail + 1, #world.mta:messages(MAILBOX))
    assert.equal(before_posts + 1, #world.https.reports())
  end)

  it("resolves a report host through the configured resolver, at the URL's port", function()
    local before = #world.https.reports()
    local store = open()
    store:add(result("ported.example", 3, 0))
    now = AFTER
    local sum = assert(store:send(DAY))
    assert.equal(1, sum.sent)
    assert.equal(before + 1, #reports_at_least(before + 1))
    store:close()
  end)

  it("refuses a report host at an internal address unless allowed, at once", function()
    local before = #world.https.reports()
    local logs = {}
    local store = open{ allow_private_addresses = false,
      log = function(_, m) logs[#logs + 1] = m end }
    store:add(result("good.example", 1, 0))
    store:add(result("ported.example", 1, 0))
    now = AFTER
    local sum = assert(store:send(DAY))
    -- good.example's mailto goes out; both https destinations fail for good
    assert.equal(1, sum.sent)
    assert.equal(2, sum.failed)
    assert.equal(0, sum.retry)
    assert.equal(before, #world.https.reports())
    assert.matches("127.0.0.1 is not a global address", table.concat(logs, "\n"), 1, true)
    store:close()
  end)

  it("sends to at most ten destinations of a record, all at once", function()
    local logs = {}
    local store = open{ timeouts = { dns = 2, fetch = 1 }, max_attempts = 1,
      log = function(_, m) logs[#logs + 1] = m end }
    store:add(result("fanout.example", 1, 0))
    now = AFTER
    local t0 = require("mtasts.core").monotonic()
    local sum = assert(store:send(DAY))
    local took = require("mtasts.core").monotonic() - t0
    assert.equal(10, sum.failed)
    assert.is_true(took < util.within(5), ("ten stalled POSTs took %.1f s"):format(took))
    local text = table.concat(logs, "\n")
    assert.matches("the record names 12 destinations; sending to the first 10", text, 1, true)
    assert.is_nil(text:find("r11.stall.example", 1, true))
    store:close()
  end)

  it("retries a failed mail submission after the backoff, across a restart", function()
    local before = #world.mta:messages(MAILBOX)
    util.write(world.dir .. "/down", "")
    local store = open()
    store:add(result("mail.example", 1, 0))
    now = AFTER
    local sum = assert(store:send(DAY))
    assert.equal(1, sum.retry)
    assert.same({ { day = DAY, domain = "mail.example", host = false,
      destination = "mailto:" .. MAILBOX, error = "the submission command exited with status 75",
      code = "submission", exit = 75, attempts = 1, retry_at = now + 60 } }, sum.failures)
    store:close()
    os.remove(world.dir .. "/down")
    store = open()
    assert.equal(0, assert(store:send(DAY)).sent)      -- backoff not over
    now = now + 61
    assert.equal(1, assert(store:send(DAY)).sent)
    store:close()
    assert.equal(before + 1, #world.mta:wait_messages(MAILBOX, before + 1))
  end)

  it("an expired certificate or HTTP 503 is retried, then given up", function()
    local store = assert(tlsrpt.open{ path = dbdir, submitter = "mail.sender.example",
      window = 0, backoff = 1, max_attempts = 2, clock = function() return now end,
      nameserver = world.dns.nameserver, trust_anchor = false, cafile = world.ca.cafile,
      connect_to = world.https.connect_to, timeouts = { dns = 2, fetch = 3 },
      log = function(_, m) world.last_log = m end, allow_private_addresses = true })
    store:add(result("expired.example", 1, 0))
    store:add(result("busy.example", 1, 0))
    now = AFTER
    local sum = assert(store:send(DAY))
    assert.equal(2, sum.retry)
    local by = {}
    for _, f in ipairs(sum.failures) do by[f.domain] = f end
    -- each says why once: the URL names the host, the message does not again
    assert.equal("post-failed", by["expired.example"].code)
    assert.equal("certificate-expired", by["expired.example"].reason)
    assert.equal("certificate has expired", by["expired.example"].error)
    assert.equal("HTTP 503", by["busy.example"].error)
    assert.equal(503, by["busy.example"].status)
    assert.equal(now + 1, by["busy.example"].retry_at)
    assert.equal(2, #assert(store:stats()).retries)
    now = now + 10
    sum = assert(store:send(DAY))
    assert.equal(2, sum.failed)
    for _, f in ipairs(sum.failures) do assert.is_true(f.dropped) end
    assert.same({}, assert(store:stats()).retries)
    store:close()
  end)

  it("drops the results of a domain without a TLSRPT record", function()
    local store = open()
    store:add(result("norecord.example", 1, 0))
    now = AFTER
    local sum = assert(store:send(DAY))
    assert.equal(1, sum.dropped)
    assert.equal(1, assert(store:send(DAY)).done)
    store:close()
  end)
end)
