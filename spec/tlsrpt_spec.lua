-- mtasts.tlsrpt and mtasts.tlsrpt.store: recording, merging, reports, messages, delivery state,
-- incoming reports. Fake resolver, fetcher, clock and submission command; the real servers
-- are in report_delivery_spec.lua.
local tlsrpt = require("mtasts.tlsrpt")
local core = require("mtasts.core")
local json = require("mtasts.json")
local util = require("support.util")
local schema = require("support.tlsrpt_schema")

local DAY = "2026-11-20"
local T0 = tlsrpt.day_start(DAY) + 3600
local POLICY = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.example.net\n" ..
  "max_age: 86400\n"
local PARSED = { mx = { "mx1.example.com", "*.example.net" } }

local function sts(domain, success, failure)
  local r = tlsrpt.sts_result(domain or "example.com", POLICY, PARSED)
  r.summary.success, r.summary.failure = success or 0, failure or 0
  return r
end

local function fake_resolver(records)
  local r = { asked = {} }
  function r.txt(_, name)
    r.asked[#r.asked + 1] = name
    local v = records[name]
    if type(v) == "string" and v:match("^!") then return nil, "fake " .. v:sub(2), v:sub(2) end
    if v == nil then return nil, "no such name", "nxdomain" end
    return type(v) == "table" and v or { v }
  end
  return r
end

local function fake_fetcher(status)
  local f = { posts = {} }
  function f.post(_, url, body, ct)
    f.posts[#f.posts + 1] = { url = url, body = body, type = ct }
    local s = type(status) == "function" and status(url) or status or 200
    if type(s) == "string" then return nil, s, "policy-fetch", "connection-refused" end
    return s, ""
  end
  return f
end

describe("mtasts.tlsrpt store", function()
  local dir, cleanup, now, store
  local function open(opts)
    opts = opts or {}
    opts.path = opts.path or dir .. "/db"
    opts.clock = opts.clock or function() return now end
    opts.submitter = opts.submitter or "mail.sender.example"
    opts.organization = opts.organization or "Sender Org"
    opts.contact = opts.contact or "tlsrpt@sender.example"
    if opts.window == nil then opts.window = 0 end
    return assert(tlsrpt.open(opts))
  end
  before_each(function()
    dir, cleanup = util.tmpdir()
    now = T0
    store = nil
  end)
  after_each(function()
    if store then store:close() end
    cleanup()
  end)

  it("records DANE results under the recipient domain and the MX host", function()
    store = open()
    local recs = { { usage = 3, selector = 1, mtype = 1, data = "\1\2\255" } }
    local r = tlsrpt.tlsa_result("example.com", recs, "mx.example.com")
    assert.same({ type = "tlsa", domain = "example.com", strings = { "3 1 1 0102ff" },
      mx_host = { "mx.example.com" } }, r.policy)
    r.summary.success = 2
    assert(store:add(r, { host = false }))
    local h = tlsrpt.tlsa_result("mx.example.com", recs, "mx.example.com")
    h.summary.success = 2
    assert(store:add(h))
    local rep = assert(store:report("example.com", DAY))
    assert.equal("tlsa", rep.policies[1].policy["policy-type"])
    assert.same({ "3 1 1 0102ff" }, rep.policies[1].policy["policy-string"])
  end)

  describe("merging", function()
    it("adds counts of equal policies and equal failure details", function()
      store = open()
      for _ = 1, 3 do assert(store:add(sts(nil, 1, 0))) end
      local f = sts(nil, 0, 1)
      tlsrpt.add_failure(f, "certificate-expired", "certificate-expired",
        { receiving_mx_hostname = "mx1.example.com", receiving_ip = "192.0.2.1" })
      assert(store:add(f))
      assert(store:add(f))
      local g = sts(nil, 0, 1)      -- differs in receiving_ip: a detail of its own
      tlsrpt.add_failure(g, "certificate-expired", "certificate-expired",
        { receiving_mx_hostname = "mx1.example.com", receiving_ip = "192.0.2.2" })
      assert(store:add(g))
      local report = assert(store:report("example.com", DAY))
      assert.equal(1, #report.policies)
      local p = report.policies[1]
      assert.same({ ["total-successful-session-count"] = 3,
        ["total-failure-session-count"] = 3 }, p.summary)
      assert.same({
        { ["result-type"] = "certificate-expired", ["failure-reason-code"] = "certificate-expired",
          ["receiving-mx-hostname"] = "mx1.example.com", ["receiving-ip"] = "192.0.2.1",
          ["failed-session-count"] = 2 },
        { ["result-type"] = "certificate-expired", ["failure-reason-code"] = "certificate-expired",
          ["receiving-mx-hostname"] = "mx1.example.com", ["receiving-ip"] = "192.0.2.2",
          ["failed-session-count"] = 1 } }, p["failure-details"])
    end)

    it("keeps policies apart when strings, domain, mx-host or type differ", function()
      store = open()
      store:add(sts(nil, 1))
      local other = tlsrpt.sts_result("example.com", POLICY:gsub("86400", "604800"), PARSED)
      other.summary.success = 2
      store:add(other)
      local nopol = tlsrpt.no_policy_result("example.com")
      nopol.summary.success = 5
      store:add(nopol)
      store:add(sts("other.example", 7))
      local report = assert(store:report("example.com", DAY))
      assert.equal(3, #report.policies)
      local seen = {}
      for _, p in ipairs(report.policies) do
        seen[#seen + 1] = p.policy["policy-type"] .. ":" ..
          p.summary["total-successful-session-count"]
      end
      table.sort(seen)
      assert.same({ "no-policy-found:5", "sts:1", "sts:2" }, seen)
      assert.equal(7, assert(store:report("other.example", DAY)).policies[1].summary[
        "total-successful-session-count"])
    end)

    it("keeps days apart, by the store's clock or the day given", function()
      store = open()
      store:add(sts(nil, 1))
      now = now + 86400
      store:add(sts(nil, 2))
      store:add(sts(nil, 4), { day = DAY })
      assert.same({ DAY, "2026-11-21" }, store:days())
      assert.equal(5, store:report("example.com", DAY).policies[1].summary[
        "total-successful-session-count"])
      assert.equal(2, store:report("example.com", "2026-11-21").policies[1].summary[
        "total-successful-session-count"])
    end)

    it("merges across recipient domains and lower-cases domains", function()
      store = open()
      store:add(sts("Example.COM.", 1), { recipient_domain = "a.example" })
      store:add(sts("example.com", 1), { recipient_domain = "b.example" })
      local report = assert(store:report("EXAMPLE.com", DAY))
      assert.equal(2, report.policies[1].summary["total-successful-session-count"])
      assert.equal("example.com", report.policies[1].policy["policy-domain"])
    end)

    it("keeps values with separator bytes apart and gives them back unchanged", function()
      store = open()
      local function res(strings, info)
        local r = { policy = { type = "sts", domain = "example.com", strings = strings,
          mx_host = { "mx" } }, summary = { success = 1, failure = 1 }, failures = {} }
        tlsrpt.add_failure(r, "validation-failure", "x", { additional_information = info })
        return r
      end
      store:add(res({ "a\2b" }, "i\0j"))
      store:add(res({ "a", "b" }, "i\1j"))
      store:add(res({ "a\3Bb" }, ""))
      local report = assert(store:report("example.com", DAY))
      local got = {}
      for _, p in ipairs(report.policies) do
        got[#got + 1] = table.concat(p.policy["policy-string"], "|") .. "=" ..
          p["failure-details"][1]["additional-information"]
      end
      table.sort(got)
      assert.same({ "a\2b=i\0j", "a\3Bb=", "a|b=i\1j" }, got)
    end)

    it("counts saturate instead of wrapping", function()
      store = open()
      store:add(sts(nil, math.maxinteger))
      store:add(sts(nil, math.maxinteger))
      assert(store:flush())
      local recs = store.db:scan("R")
      assert.equal(math.maxinteger, (string.unpack(">I8", recs[2])))
      store:add(sts(nil, 5))
      assert(store:flush())
      assert.equal(math.maxinteger, store:report("example.com", DAY).policies[1].summary[
        "total-successful-session-count"])
    end)

    it("rejects results that are not results", function()
      store = open()
      assert.has_error(function() store:add(nil) end,
        "bad argument #1 to 'add' (a TLSRPT result table expected)")
      assert.has_error(function() store:add({ policy = { type = "dane", domain = "x" } }) end,
        "bad argument #1 to 'add' (policy.type must be sts, tlsa or no-policy-found)")
      assert.has_error(function() store:add({ policy = { type = "sts" } }) end,
        "bad argument #1 to 'add' (policy.domain must be a domain name)")
      assert.has_error(function()
        store:add({ policy = { type = "sts", domain = "x" }, summary = { success = -1 } })
      end, "bad argument #1 to 'add' (summary.success must be a non-negative integer)")
      assert.has_error(function() store:add({ policy = { type = "sts", domain = "a\0b" } }) end,
        "bad argument #1 to 'add' (policy.domain must be a domain name)")
      assert.has_error(function() store:add(sts(), { domain = "a\0b" }) end,
        "bad argument #2 to 'add' (domain must be a domain name)")
      assert.has_error(function() store:add(sts(), { recipient_domain = "a\0b" }) end,
        "bad argument #2 to 'add' (recipient_domain must be a string)")
      local half = sts(nil, 1)
      half.failures = { { result_type = "certificate-expired" },
        { result_type = "certificate-expired", count = 1.5 } }
      assert.has_error(function() store:add(half) end,
        "bad argument #1 to 'add' (count must be a non-negative integer)")
      assert.equal(0, store:pending_keys(), "a refused result leaves nothing in the batch")
      assert.has_error(function() store:add(sts(), { day = "2026-13-01" }) end,
        'bad argument #2 to \'add\' (a UTC day "YYYY-MM-DD" expected, got "2026-13-01")')
      assert.has_error(function() store:add(sts(), { day = "yesterday" }) end,
        'bad argument #2 to \'add\' (a UTC day "YYYY-MM-DD" expected, got "yesterday")')
    end)
  end)

  describe("batching", function()
    it("commits every batch_size results and on flush and close", function()
      store = open{ batch_size = 3, batch_interval = 3600 }
      local other = open{ batch_size = 1 }     -- another handle sees only commits
      store:add(sts(nil, 1))
      store:add(sts(nil, 1))
      assert.same({}, other.db:scan("R"))
      store:add(sts(nil, 1))
      assert.equal(2, #other.db:scan("R"))
      store:add(sts(nil, 1))
      assert.equal(1, store.npending)
      assert(store:close())
      store = nil
      assert.equal(4, other:report("example.com", DAY).policies[1].summary[
        "total-successful-session-count"])
      other:close()
    end)

    it("commits a batch older than batch_interval at the next add", function()
      store = open{ batch_size = 1000, batch_interval = 0 }
      store:add(sts(nil, 1))
      assert.equal(0, store.npending)
    end)

    it("with the default batch_size, commits at BATCH_KEYS distinct counters too", function()
      local store_mod = require("mtasts.tlsrpt.store")
      store = open{ batch_interval = 3600 }
      local told = open{ batch_size = math.huge, batch_interval = math.huge }
      for i = 1, store_mod.BATCH_KEYS - 1 do
        local r = sts("d" .. i .. ".example", 1)
        store:add(r)
        told:add(r)
      end
      assert.equal(store_mod.BATCH_KEYS - 1, store:pending_keys())
      store:add(sts("last.example", 1))
      assert.equal(0, store:pending_keys())
      assert.equal(0, store.npending)
      -- a store given its batch_size commits when it is told (a reader with a mark)
      told:add(sts("last.example", 1))
      assert.equal(store_mod.BATCH_KEYS, told:pending_keys())
      assert(told:release())
    end)

    it("commits a mark with the batch, in its last transaction", function()
      store = open{ batch_size = 5000, batch_interval = 3600 }
      local other = open{ batch_size = 1 }
      assert.is_nil(store:mark("reader"))
      for i = 1, 1200 do      -- three transactions of at most 500 keys
        local r = sts(nil, 1)
        r.policy.domain = "d" .. i .. ".example"
        store:add(r)
      end
      store:set_mark("reader", "inode 7 offset 1200")
      assert.is_nil(other:mark("reader"))
      assert(store:flush())
      assert.equal("inode 7 offset 1200", other:mark("reader"))
      assert.equal(1200, #other:domains(DAY))
      store:set_mark("reader", "inode 7 offset 1300")   -- a mark alone is committed too
      assert(store:flush())
      assert.equal("inode 7 offset 1300", other:mark("reader"))
      assert.equal(0, other:prune(1) and 0)               -- prune keeps marks
      assert.equal("inode 7 offset 1300", other:mark("reader"))
      assert.has_error(function() store:set_mark("", "x") end)
      other:close()
      -- a rebuild of the directory carries the marks over with the results
      assert(store:close())
      store = nil
      assert(core.cache_rebuild(dir .. "/db"))
      store = open()
      assert.equal("inode 7 offset 1300", store:mark("reader"))
      assert.equal(1200, #store:domains(DAY))
    end)

    it("after close, use raises", function()
      store = open()
      store:close()
      assert.has_error(function() store:add(sts()) end,
        "attempt to use a closed mtasts.tlsrpt.store")
      store = nil
    end)
  end)

  describe("reports", function()
    it("match the RFC 8460 schema, with a day's range and the report id", function()
      store = open()
      local f = sts(nil, 2, 1)
      tlsrpt.add_failure(f, "validation-failure", "mtasts-policy-mx-mismatch",
        { receiving_mx_hostname = "evil.example.org", sending_mta_ip = "198.51.100.1",
          receiving_mx_helo = "evil", additional_information = "https://x.example/why" })
      store:add(f)
      local report = assert(store:report("example.com", DAY))
      assert.same({ true }, { schema.check(report) })
      assert.equal("Sender Org", report["organization-name"])
      assert.equal("tlsrpt@sender.example", report["contact-info"])
      assert.equal("20261120.example.com@mail.sender.example", report["report-id"])
      assert.same({ ["start-datetime"] = "2026-11-20T00:00:00Z",
        ["end-datetime"] = "2026-11-20T23:59:59Z" }, report["date-range"])
      local pol = report.policies[1].policy
      assert.same({ "mx1.example.com", "*.example.net" }, pol["mx-host"])
      assert.same({ "version: STSv1", "mode: enforce", "mx: mx1.example.com",
        "mx: *.example.net", "max_age: 86400" }, pol["policy-string"])
      -- the JSON text decodes to the same table, and is the same every time
      local text = tlsrpt.encode(report)
      assert.same(report, require("cjson").decode(text))
      assert.equal(text, tlsrpt.encode(assert(store:report("example.com", DAY))))
    end)

    it("has the RFC file name", function()
      store = open()
      store:add(sts(nil, 1))
      local report = store:report("example.com", DAY)
      local b = tlsrpt.day_start(DAY)
      assert.equal(("mail.sender.example!example.com!%d!%d.json.gz"):format(b, b + 86399),
        tlsrpt.filename(report))
      -- a report that came from elsewhere: facts taken from its JSON
      local copy = require("cjson").decode(tlsrpt.encode(report))
      assert.equal(tlsrpt.filename(report), tlsrpt.filename(copy))
    end)

    it("is nil for a domain or day without results", function()
      store = open()
      store:add(sts(nil, 1))
      assert.is_nil(store:report("nothing.example", DAY))
      assert.is_nil(store:report("example.com", "2026-11-19"))
    end)

    it("gzip round trip", function()
      store = open()
      store:add(sts(nil, 1))
      local report = store:report("example.com", DAY)
      local gz = tlsrpt.gzip(report)
      assert.equal("\31\139", gz:sub(1, 2))
      assert.equal(tlsrpt.encode(report), core.gunzip(gz, 1e6))
      assert.same(report, assert(tlsrpt.parse_report(gz)))
    end)

    it("keeps MX host (DANE) results apart and drops no-policy-found beside TLSA", function()
      store = open()
      local tlsa = { policy = { type = "tlsa", domain = "mx1.example.com",
        strings = { "3 1 1 abcdef" } }, summary = { success = 4, failure = 0 }, failures = {} }
      store:add(tlsa, { recipient_domain = "example.com" })
      local nopol = tlsrpt.no_policy_result("mx1.example.com")
      nopol.summary.success = 2
      store:add(nopol, { recipient_domain = "example.com", host = true })
      store:add(sts("mx1.example.com", 9))           -- mx1 as a recipient domain
      local host = assert(store:report("mx1.example.com", DAY, { host = true }))
      assert.equal(1, #host.policies)
      assert.equal("tlsa", host.policies[1].policy["policy-type"])
      assert.equal("20261120.mx1.example.com.mx@mail.sender.example", host["report-id"])
      local dom = assert(store:report("mx1.example.com", DAY))
      assert.equal(1, #dom.policies)
      assert.equal(9, dom.policies[1].summary["total-successful-session-count"])
      assert.same({ { domain = "mx1.example.com", host = false },
        { domain = "mx1.example.com", host = true } }, store:domains(DAY))
    end)
  end)

  describe("message", function()
    it("has the RFC 8460 §5.3 headers and parses back into the same report", function()
      store = open()
      local f = sts(nil, 3, 1)
      tlsrpt.add_failure(f, "certificate-not-trusted", "certificate-not-trusted")
      store:add(f)
      local report = store:report("example.com", DAY)
      local msg = tlsrpt.message(report, { from = "reports@sender.example",
        to = "tlsrpt@example.com", date = T0, boundary = "BOUNDARY" })
      local head = msg:match("^(.-)\r\n\r\n"):gsub("\r\n ", " ")
      assert.truthy(head:find("\r\nSubject: Report Domain: example.com Submitter: " ..
        "mail.sender.example Report-ID: <20261120.example.com@mail.sender.example>\r\n", 1, true))
      assert.truthy(head:find("\r\nTLS-Report-Domain: example.com\r\n", 1, true))
      assert.truthy(head:find("\r\nTLS-Report-Submitter: mail.sender.example\r\n", 1, true))
      assert.truthy(head:find("\r\nTLS-Required: No\r\n", 1, true))
      assert.truthy(head:find('Content-Type: multipart/report; report-type="tlsrpt";\r\n\t' ..
        'boundary="BOUNDARY"', 1, true))
      assert.truthy(msg:find("Content-Type: application/tlsrpt+gzip\r\n" ..
        "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment;\r\n\tfilename=\"" ..
        tlsrpt.filename(report) .. "\"\r\n", 1, true))
      for line in msg:gmatch("([^\n]*)\n") do assert.is_true(#line <= 78, line) end
      assert.same(report, assert(tlsrpt.parse_report(msg)))
      assert.same(report, assert(tlsrpt.parse_report(msg:gsub("\r\n", "\n"))))
    end)

    it("refuses header injection", function()
      store = open()
      store:add(sts(nil, 1))
      local report = store:report("example.com", DAY)
      assert.has_error(function()
        tlsrpt.message(report, { from = "a@b", to = "x@y\r\nBcc: z@w" })
      end, "bad argument #2 to 'message' (to must be a one-line string)")
    end)
  end)

  describe("send", function()
    local RECORD = "v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://reports.example.com/r"
    local function mail_dir() return dir .. "/outbox" end
    local function sendmail()
      os.execute("mkdir -p " .. mail_dir())
      return "cat > $(mktemp " .. mail_dir() .. "/m.XXXXXX)"
    end
    local function mails()
      local out = {}
      for name in util.run("ls -1 " .. mail_dir() .. " 2>/dev/null"):gmatch("[^\n]+") do
        local f = io.open(mail_dir() .. "/" .. name, "rb")
        out[#out + 1] = f:read("a")
        f:close()
      end
      return out
    end

    it("delivers to every rua once, and not again after a restart", function()
      local fetcher = fake_fetcher(200)
      local resolver = fake_resolver({ ["_smtp._tls.example.com"] = RECORD })
      store = open{ resolver = resolver, fetcher = fetcher, sendmail = sendmail() }
      store:add(sts(nil, 5, 0))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local sum = assert(store:send(DAY))
      assert.same({ sent = 2, failed = 0, retry = 0, dropped = 0, waiting = 0, done = 0,
        failures = {} }, sum)
      assert.equal(1, #fetcher.posts)
      assert.equal("https://reports.example.com/r", fetcher.posts[1].url)
      assert.equal("application/tlsrpt+gzip", fetcher.posts[1].type)
      local report = store:report("example.com", DAY)
      assert.same(report, assert(tlsrpt.parse_report(fetcher.posts[1].body)))
      local m = mails()
      assert.equal(1, #m)
      assert.truthy(m[1]:find("\nTo: tlsrpt@example.com\n", 1, true))
      assert.same(report, assert(tlsrpt.parse_report(m[1])))
      store:close()
      store = open{ resolver = resolver, fetcher = fetcher, sendmail = sendmail() }
      sum = assert(store:send(DAY))
      assert.equal(0, sum.sent)
      assert.equal(1, sum.done)
      assert.equal(1, #fetcher.posts)
      assert.equal(1, #mails())
    end)

    it("retries a failed destination with backoff, and only that one", function()
      local fail = true
      local fetcher = fake_fetcher(function() return fail and 503 or 200 end)
      store = open{ resolver = fake_resolver({ ["_smtp._tls.example.com"] = RECORD }),
        fetcher = fetcher, sendmail = sendmail(), backoff = 600 }
      store:add(sts(nil, 1))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local sum = assert(store:send(DAY))
      assert.equal(1, sum.sent)
      assert.equal(1, sum.retry)
      sum = assert(store:send(DAY))               -- not due yet: nothing happens
      assert.equal(1, #fetcher.posts)
      assert.equal(0, sum.sent)
      now = now + 601
      fail = false
      sum = assert(store:send(DAY))
      assert.equal(1, sum.sent)
      assert.equal(2, #fetcher.posts)
      assert.equal(1, #mails())
      assert.equal(1, assert(store:send(DAY)).done)
    end)

    it("gives up after max_attempts, and on a permanent HTTP error at once", function()
      local fetcher = fake_fetcher(function(url) return url:match("gone") and 404 or 500 end)
      store = open{ resolver = fake_resolver({ ["_smtp._tls.example.com"] =
        "v=TLSRPTv1; rua=https://r.example/gone,https://r.example/busy" }),
        fetcher = fetcher, max_attempts = 2, backoff = 1 }
      store:add(sts(nil, 1))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local sum = assert(store:send(DAY))
      assert.equal(1, sum.failed)
      assert.equal(1, sum.retry)
      now = now + 10
      sum = assert(store:send(DAY))
      assert.equal(1, sum.failed)
      now = now + 10
      assert.equal(1, assert(store:send(DAY)).done)
      assert.equal(3, #fetcher.posts)
      local states = {}
      for _, d in ipairs(assert(store:deliveries(DAY))) do
        states[d.destination or "report"] = d.status .. "/" .. tostring(d.attempts)
      end
      assert.same({ report = "done/nil", ["https://r.example/gone"] = "failed/1",
        ["https://r.example/busy"] = "failed/2" }, states)
    end)

    it("drops a domain without a TLSRPT record, and retries a temporary DNS error", function()
      local records = { ["_smtp._tls.b.example"] = "!servfail",
        ["_smtp._tls.c.example"] = { "v=spf1 -all" } }
      local resolver = fake_resolver(records)
      local fetcher = fake_fetcher(200)
      store = open{ resolver = resolver, fetcher = fetcher, backoff = 60 }
      store:add(sts("a.example", 1))
      store:add(sts("b.example", 1))
      store:add(sts("c.example", 1))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local sum = assert(store:send(DAY))
      assert.equal(2, sum.dropped)
      assert.equal(1, sum.retry)
      records["_smtp._tls.b.example"] = "v=TLSRPTv1; rua=https://r.example/b"
      now = now + 61
      sum = assert(store:send(DAY))
      assert.equal(1, sum.sent)
      assert.equal(2, sum.done)
      assert.equal("https://r.example/b", fetcher.posts[1].url)
    end)

    it("waits for the day to end and for each report's jitter in the window", function()
      local fetcher = fake_fetcher(200)
      store = open{ resolver = fake_resolver({ ["_smtp._tls.example.com"] =
        "v=TLSRPTv1; rua=https://r.example/x" }), fetcher = fetcher, window = 7200 }
      store:add(sts(nil, 1))
      local ok, _, code = store:send(DAY)
      assert.is_nil(ok)
      assert.equal("day-not-over", code)
      now = tlsrpt.day_start(DAY) + 86400
      assert.equal(1, assert(store:send(DAY)).waiting)
      now = now + 7201
      assert.equal(1, assert(store:send()).sent)
    end)

    it("never sends a report only for results of delivering reports", function()
      local fetcher = fake_fetcher(200)
      store = open{ resolver = fake_resolver({ ["_smtp._tls.a.example"] =
        "v=TLSRPTv1; rua=https://r.example/a", ["_smtp._tls.b.example"] =
        "v=TLSRPTv1; rua=https://r.example/b" }), fetcher = fetcher }
      store:add(sts("a.example", 1), { report = false })
      store:add(sts("b.example", 1), { report = false })
      store:add(sts("b.example", 2))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local sum = assert(store:send(DAY))
      assert.equal(1, sum.sent)
      assert.equal(1, sum.dropped)
      -- the report that is sent includes both kinds of results
      local sent = assert(tlsrpt.parse_report(fetcher.posts[1].body))
      assert.equal(3, sent.policies[1].summary["total-successful-session-count"])
    end)

    it("drops a domain whose rua holds a control character; the others go out", function()
      local fetcher = fake_fetcher(200)
      store = open{ resolver = fake_resolver({
        ["_smtp._tls.a.example"] = "v=TLSRPTv1; rua=mailto:x%01y@a.example",
        ["_smtp._tls.b.example"] = "v=TLSRPTv1; rua=mailto:x%00y@b.example",
        ["_smtp._tls.c.example"] = "v=TLSRPTv1; rua=mailto:tlsrpt@c.example" }),
        fetcher = fetcher, sendmail = sendmail() }
      store:add(sts("a.example", 1))
      store:add(sts("b.example", 1))
      store:add(sts("c.example", 1))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local sum = assert(store:send(DAY))
      assert.equal(1, sum.sent)
      assert.equal(2, sum.dropped)
      local m = mails()
      assert.equal(1, #m)
      assert.truthy(m[1]:find("\nTo: tlsrpt@c.example\n", 1, true))
      assert.equal(3, assert(store:send(DAY)).done)
    end)

    it("records a destination that raises as failed and delivers the rest", function()
      local fetcher = fake_fetcher(200)
      local post = fetcher.post
      function fetcher.post(f, url, ...)
        if url:match("boom") then error("something broke inside the delivery") end
        return post(f, url, ...)
      end
      local logs = {}
      store = open{ resolver = fake_resolver({
        ["_smtp._tls.a.example"] = "v=TLSRPTv1; rua=https://r.example/boom,https://r.example/a",
        ["_smtp._tls.b.example"] = "v=TLSRPTv1; rua=https://r.example/b" }),
        fetcher = fetcher, max_attempts = 2, backoff = 1,
        log = function(_, m) logs[#logs + 1] = m end }
      store:add(sts("a.example", 1))
      store:add(sts("b.example", 1))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local sum = assert(store:send(DAY))
      assert.equal(2, sum.sent)
      assert.equal(1, sum.retry)
      assert.matches("something broke inside the delivery", table.concat(logs, "\n"), 1, true)
      now = now + 10
      sum = assert(store:send(DAY))
      assert.equal(1, sum.failed)       -- the second attempt reaches max_attempts
      now = now + 10
      sum = assert(store:send(DAY))
      assert.equal(2, sum.done)
      local states = {}
      for _, d in ipairs(assert(store:deliveries(DAY))) do
        if d.destination then states[d.destination] = d.status .. "/" .. d.attempts end
      end
      assert.same({ ["https://r.example/boom"] = "failed/2", ["https://r.example/a"] = "sent/1",
        ["https://r.example/b"] = "sent/1" }, states)
    end)

    it("runs POSTs at once through post_start/post_finish; a raise in either is that URI's",
      function()
      local started, order = {}, {}
      local fetcher = { posts = {} }
      function fetcher.post_start(_, url, body)
        order[#order + 1] = "start " .. url
        if url:match("boom%-start") then error("broke while starting") end
        started[#started + 1] = url
        return { url = url, body = body }
      end
      function fetcher.post_finish(_, h)
        order[#order + 1] = "finish " .. h.url
        if h.url:match("boom%-finish") then error("broke while waiting") end
        fetcher.posts[#fetcher.posts + 1] = { url = h.url, body = h.body }
        return 200, ""
      end
      store = open{ resolver = fake_resolver({ ["_smtp._tls.a.example"] = "v=TLSRPTv1; " ..
        "rua=https://r.example/boom-start,https://r.example/ok,https://r.example/boom-finish" }),
        fetcher = fetcher, max_attempts = 1 }
      store:add(sts("a.example", 1))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local sum = assert(store:send(DAY))
      assert.equal(1, sum.sent)
      assert.equal(2, sum.failed)
      -- every start comes before the first finish: the POSTs run together
      assert.same({ "start https://r.example/boom-start", "start https://r.example/ok",
        "start https://r.example/boom-finish", "finish https://r.example/ok",
        "finish https://r.example/boom-finish" }, order)
      assert.equal("https://r.example/ok", fetcher.posts[1].url)
    end)

    it("skips days without failures when asked", function()
      local fetcher = fake_fetcher(200)
      store = open{ resolver = fake_resolver({ ["_smtp._tls.a.example"] =
        "v=TLSRPTv1; rua=https://r.example/a", ["_smtp._tls.b.example"] =
        "v=TLSRPTv1; rua=https://r.example/b" }), fetcher = fetcher,
        skip_without_failures = true }
      store:add(sts("a.example", 1))
      store:add(sts("b.example", 1, 1))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local sum = assert(store:send(DAY))
      assert.equal(1, sum.sent)
      assert.equal("https://r.example/b", fetcher.posts[1].url)
    end)

    it("a destination claimed by another process is left to it", function()
      local fetcher = fake_fetcher(200)
      local resolver = fake_resolver({ ["_smtp._tls.example.com"] =
        "v=TLSRPTv1; rua=https://r.example/x" })
      store = open{ resolver = resolver, fetcher = fetcher }
      store:add(sts(nil, 1))
      assert(store:flush())
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local key = "Q" .. DAY .. "\0dexample.com\0https://r.example/x"
      assert.is_true(store.db:cas(key, nil, json.encode({ status = "sending", attempts = 1,
        ["until"] = now + 100 })))
      assert.equal(0, assert(store:send(DAY)).sent)
      now = now + 101                              -- the claim ran out: that process died
      assert.equal(1, assert(store:send(DAY)).sent)
      assert.equal(1, #fetcher.posts)
    end)

    it("Ctrl-C reaching the submission command is passed on, never the destination's " ..
      "failure", function()
      store = open{ resolver = fake_resolver({ ["_smtp._tls.example.com"] = RECORD }),
        fetcher = fake_fetcher(200), sendmail = "kill -INT $$" }
      store:add(sts(nil, 1))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local ok, err = pcall(store.send, store, DAY)
      assert.is_false(ok)
      assert.equal("interrupted!", err)
      -- nothing was recorded against the mailto destination: its claim lapses as after a crash
      local st = assert(store:stats())
      for _, r in ipairs(st.retries) do
        assert.is_nil(r.destination == "mailto:tlsrpt@example.com" and r.error or nil)
      end
    end)

    it("lists each failed delivery with its reason: the HTTP status, the submission " ..
      "command's exit status and standard error, each named once", function()
      local fetcher = fake_fetcher(503)
      store = open{ resolver = fake_resolver({ ["_smtp._tls.example.com"] = RECORD }),
        fetcher = fetcher, backoff = 600, max_attempts = 2,
        sendmail = "printf 'sendmail: fatal: queue file write error\\n\\tretry later\\n' >&2; " ..
          "exit 75" }
      store:add(sts(nil, 1))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local sum = assert(store:send(DAY))
      assert.equal(2, sum.retry)
      local by = {}
      for _, f in ipairs(sum.failures) do by[f.destination] = f end
      assert.same({ day = DAY, domain = "example.com", host = false,
        destination = "https://reports.example.com/r", error = "HTTP 503", code = "http-status",
        status = 503, attempts = 1, retry_at = now + 600 }, by["https://reports.example.com/r"])
      assert.same({ day = DAY, domain = "example.com", host = false,
        destination = "mailto:tlsrpt@example.com", error = "the submission command exited " ..
        "with status 75: sendmail: fatal: queue file write error retry later",
        code = "submission", exit = 75, attempts = 1, retry_at = now + 600 },
        by["mailto:tlsrpt@example.com"])
      assert.same({ sent = 0, failed = 0, pending = 2, sending = 0 },
        assert(store:stats()).deliveries)
      -- the second attempt is the last: given up, and said so
      now = now + 601
      sum = assert(store:send(DAY))
      assert.equal(2, sum.failed)
      assert.equal(2, #sum.failures)
      for _, f in ipairs(sum.failures) do
        assert.is_true(f.dropped)
        assert.is_nil(f.retry_at)
        assert.equal(2, f.attempts)
      end
      assert.same({}, assert(store:send(DAY)).failures)
      assert.same({ sent = 0, failed = 2, pending = 0, sending = 0 },
        assert(store:stats()).deliveries)
    end)

    it("a POST that gets no answer: the fetcher's reason, the host not named twice", function()
      local fetcher = fake_fetcher("reports.example.com: Connection refused")
      local logs = {}
      store = open{ resolver = fake_resolver({ ["_smtp._tls.example.com"] =
        "v=TLSRPTv1; rua=https://reports.example.com/r" }), fetcher = fetcher, backoff = 60,
        log = function(_, m) logs[#logs + 1] = m end }
      store:add(sts(nil, 1))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local f = assert(store:send(DAY)).failures[1]
      assert.equal("Connection refused", f.error)
      assert.equal("post-failed", f.code)
      assert.equal("connection-refused", f.reason)
      assert.equal("report " .. DAY .. " example.com to https://reports.example.com/r: " ..
        "Connection refused; will retry", logs[#logs])
    end)

    it("a failure of this host uses up no attempt, for a POST and for the submission command",
      function()
      local here = true
      local fetcher = fake_fetcher(200)
      local post = fetcher.post
      function fetcher.post(f, url, ...)
        if here then return nil, "reports.example.com: this host failed: no memory", "local" end
        return post(f, url, ...)
      end
      local to_outbox = sendmail()
      store = open{ resolver = fake_resolver({ ["_smtp._tls.example.com"] = RECORD }),
        fetcher = fetcher, backoff = 60, max_attempts = 1,
        sendmail = "[ -e " .. dir .. "/fixed ] || exec " .. dir .. "/no-such-sendmail; " ..
          to_outbox }
      store:add(sts(nil, 1))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      for _ = 1, 3 do          -- max_attempts is 1: a counted failure would be the last
        local sum = assert(store:send(DAY))
        assert.equal(0, sum.failed)
        assert.equal(2, sum.retry)
        for _, f in ipairs(sum.failures) do
          assert.equal("local", f.code, f.error)
          assert.equal(0, f.attempts)
          assert.equal(now + 60, f.retry_at)
        end
        now = now + 61
      end
      local by = {}
      for _, f in ipairs(assert(store:send(DAY)).failures) do by[f.destination] = f end
      assert.equal("this host failed: no memory", by["https://reports.example.com/r"].error)
      assert.equal(127, by["mailto:tlsrpt@example.com"].exit)
      assert.matches("^the submission command '.*' cannot be run %(exit status 127%): .*" ..
        "no%-such%-sendmail", by["mailto:tlsrpt@example.com"].error)
      here = false
      util.write(dir .. "/fixed", "")
      now = now + 61
      local sum = assert(store:send(DAY))
      assert.equal(2, sum.sent)
      assert.same({}, sum.failures)
    end)

    it("a record lookup that fails for now: listed with the resolver's message, retried",
      function()
      local records = { ["_smtp._tls.b.example"] = "!servfail" }
      store = open{ resolver = fake_resolver(records), fetcher = fake_fetcher(200),
        backoff = 60 }
      store:add(sts("b.example", 1))
      now = tlsrpt.day_start(DAY) + 86400 + 60
      local sum = assert(store:send(DAY))
      assert.same({ { day = DAY, domain = "b.example", host = false, error = "fake servfail",
        code = "dns", attempts = 1, retry_at = now + 60 } }, sum.failures)
    end)

    it("stats lists the deliveries waiting for a retry until they are sent or given up",
      function()
      local status = 503
      local records = { ["_smtp._tls.a.example"] = "v=TLSRPTv1; rua=https://r.example/a",
        ["_smtp._tls.b.example"] = "!timeout" }
      store = open{ resolver = fake_resolver(records),
        fetcher = fake_fetcher(function() return status end), backoff = 600, max_attempts = 3 }
      store:add(sts("a.example", 1))
      store:add(sts("b.example", 1))
      assert.same({}, assert(store:stats()).retries)
      now = tlsrpt.day_start(DAY) + 86400 + 60
      assert(store:send(DAY))
      assert.same({
        { day = DAY, domain = "a.example", host = false, destination = "https://r.example/a",
          status = "pending", attempts = 1, next = now + 600, error = "HTTP 503",
          code = "http-status" },
        { day = DAY, domain = "b.example", host = false, status = "pending", attempts = 1,
          next = now + 600, error = "fake timeout", code = "dns" } },
        assert(store:stats()).retries)
      -- b's record is found now, its POST fails: the destination is what waits
      records["_smtp._tls.b.example"] = "v=TLSRPTv1; rua=https://r.example/b"
      now = now + 601
      assert(store:send(DAY))
      local retries = assert(store:stats()).retries
      assert.equal(2, #retries)
      assert.equal(2, retries[1].attempts)
      assert.equal("https://r.example/b", retries[2].destination)
      status = 200
      now = now + 1201
      assert.equal(2, assert(store:send(DAY)).sent)
      assert.same({}, assert(store:stats()).retries)
    end)

    it("writes the day's gzip files with build", function()
      store = open()
      store:add(sts("a.example", 1))
      store:add(sts("b.example", 2))
      os.execute("mkdir -p " .. dir .. "/out")
      local files = assert(store:build(DAY, dir .. "/out"))
      assert.equal(2, #files)
      for _, path in ipairs(files) do
        local f = io.open(path, "rb")
        local report = assert(tlsrpt.parse_report(f:read("a")))
        f:close()
        assert.equal(path:match("([^/]+)$"), tlsrpt.filename(report))
      end
    end)

    it("prune drops days past the retention", function()
      store = open()
      for i = 0, 11 do store:add(sts(nil, 1), { day = tlsrpt.day_of(T0 - i * 86400) }) end
      assert.equal(12, #store:days())
      assert.equal(2, assert(store:prune()))
      local days = store:days()
      assert.equal(10, #days)
      assert.equal(tlsrpt.day_of(T0 - 9 * 86400), days[1])
    end)

    it("on a full disk: enospc, the batch kept, the counts stored before intact", function()
      -- a 10 MiB tmpfs in a private mount namespace: the regions take about 7.5 MiB of it
      util.write(dir .. "/full.lua", [[
        package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
        local tlsrpt = require("mtasts.tlsrpt")
        local day = tlsrpt.day_start("2026-11-20") + 10
        local store = assert(tlsrpt.open{ path = arg[1], batch_size = 50,
          clock = function() return day end })
        local ok, msg, code
        local n = 0
        for i = 1, 200000 do
          local r = tlsrpt.sts_result("d" .. i .. ".example", "version: STSv1\nmode: enforce\n" ..
            "mx: mx.example.com\nmax_age: 86400\nc: " .. ("x"):rep(2000) .. "\n",
            { mx = { "mx.example.com" } })
          r.summary.success = 1
          ok, msg, code = store:add(r)
          if not ok then break end
          n = i
        end
        local pending = store.npending
        local first = store:report("d1.example", "2026-11-20")
        io.write(n, "|", tostring(code), "|", pending, "|",
          tostring(first and first.policies[1].summary["total-successful-session-count"]), "|",
          tostring(msg))
        os.exit(0)
      ]])
      util.write(dir .. "/full.sh", "mkdir -p " .. dir .. "/full && mount -t tmpfs -o size=10m " ..
        "tmpfs " .. dir .. "/full && " .. util.lua_cmd() .. " " .. dir .. "/full.lua " .. dir ..
        "/full/db")
      local out, status = util.run("unshare -m sh " .. dir .. "/full.sh")
      assert.equal(0, status, out)
      local n, code, pending, first, msg = out:match("^(%d+)|([^|]*)|(%d+)|([^|]*)|(.*)$")
      assert.equal("enospc", code, out)
      assert.is_true(tonumber(n) >= 50)
      assert.is_true(tonumber(pending) > 0, "the failed batch is kept")
      assert.equal("1", first, out)
      assert.matches("free some space", msg, 1, true)
    end)

    it("a garbage results.db: clear errors, policies unharmed, rebuild recovers", function()
      store = open()
      store:add(sts(nil, 1))
      assert(store:close())
      store = nil
      local c = assert(core.cache_open(dir .. "/db"))
      assert(c:upsert("example.com", "1", POLICY, T0))
      c:close()
      util.seed()
      util.write(dir .. "/db/results.db", util.random_bytes(16384))
      local s2 = open()
      s2:add(sts(nil, 1))
      local ok, msg = s2:flush()
      assert.is_nil(ok)
      assert.matches("results.db", msg, 1, true)
      assert.matches("rebuild", msg, 1, true)
      s2.pending, s2.npending = {}, 0
      s2:close()
      -- the policy cache in the same directory goes on
      c = assert(core.cache_open(dir .. "/db"))
      assert.equal("enforce", c:lookup("example.com", T0).policy.mode)
      c:close()
      assert(core.cache_rebuild(dir .. "/db"))
      store = open()
      assert(store:add(sts(nil, 2)))
      assert.equal(2, store:report("example.com", DAY).policies[1].summary[
        "total-successful-session-count"])
    end)

    it("stats counts what is stored", function()
      store = open()
      store:add(sts("a.example", 1, 2))
      store:add(sts("b.example", 3))
      local st = assert(store:stats())
      assert.same({ { day = DAY, reports = 2, records = 2, success = 4, failure = 2 } }, st.days)
    end)
  end)
end)

describe("mtasts.tlsrpt.parse_report", function()
  local GOOD = [[{
    "organization-name": "Company-X", "date-range": {"start-datetime": "2016-04-01T00:00:00Z",
    "end-datetime": "2016-04-01T23:59:59Z"}, "contact-info": "sts-reporting@company-x.example",
    "report-id": "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
    "policies": [{ "policy": { "policy-type": "sts", "policy-string": ["version: STSv1",
      "mode: testing", "mx: *.mail.company-y.example", "max_age: 86400"],
      "policy-domain": "company-y.example", "mx-host": ["*.mail.company-y.example"] },
      "summary": { "total-successful-session-count": 5326, "total-failure-session-count": 303 },
      "failure-details": [{ "result-type": "certificate-expired",
        "sending-mta-ip": "2001:db8:abcd:0012::1",
        "receiving-mx-hostname": "mx1.mail.company-y.example", "failed-session-count": 100 },
        { "result-type": "starttls-not-supported", "sending-mta-ip": "2001:db8:abcd:0013::1",
        "receiving-mx-hostname": "mx2.mail.company-y.example", "receiving-ip": "203.0.113.56",
        "failed-session-count": 200,
        "additional-information": "https://reports.company-x.example/" },
        { "result-type": "validation-failure", "sending-mta-ip": "198.51.100.62",
        "receiving-ip": "203.0.113.58", "failed-session-count": 3,
        "failure-reason-code": "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED" }] }]
  }]]

  it("reads the RFC 8460 example report", function()
    local r = assert(tlsrpt.parse_report(GOOD))
    assert.equal("Company-X", r["organization-name"])
    assert.equal(5326, r.policies[1].summary["total-successful-session-count"])
    assert.equal("integer", math.type(r.policies[1]["failure-details"][1]["failed-session-count"]))
    assert.same({ true }, { schema.check(r) })
  end)

  it("tolerates zone-less times, a missing or lone mx-host, nulls and unknown fields", function()
    local text = GOOD:gsub('"2016%-04%-01T00:00:00Z"', '"2016-04-01T00:00:00"')
      :gsub(', "mx%-host": %["%*%.mail%.company%-y%.example"%]', "")
      :gsub('"contact%-info"', '"x-vendor-extension": {"a": [1, 2]}, "contact-info"')
    local r = assert(tlsrpt.parse_report(text))
    assert.same({}, r.policies[1].policy["mx-host"])
    assert.equal(tlsrpt.day_start("2016-04-01"),
      tlsrpt.parse_time(r["date-range"]["start-datetime"]))
    r = assert(tlsrpt.parse_report(GOOD:gsub('%["%*%.mail%.company%-y%.example"%]',
      '"*.mail.company-y.example"')))
    assert.same({ "*.mail.company-y.example" }, r.policies[1].policy["mx-host"])
    r = assert(tlsrpt.parse_report(GOOD:gsub('"https://reports.company%-x.example/"', "null")))
    assert.is_nil(r.policies[1]["failure-details"][2]["additional-information"])
  end)

  it("reads bare application/tlsrpt+json and +gzip messages", function()
    local msg = "From: a@b.example\r\nContent-Type: application/tlsrpt+json\r\n\r\n" .. GOOD
    assert.equal("Company-X", assert(tlsrpt.parse_report(msg))["organization-name"])
    msg = "From: a@b.example\nContent-Type: application/tlsrpt+gzip\n" ..
      "Content-Transfer-Encoding: base64\n\n" .. core.base64_encode(core.gzip(GOOD), 76)
    assert.equal("Company-X", assert(tlsrpt.parse_report(msg))["organization-name"])
  end)

  local function fails(data, code, pattern)
    local r, msg, c = tlsrpt.parse_report(data)
    assert.is_nil(r)
    assert.equal(code, c, msg)
    if pattern then assert.truthy(msg:find(pattern), msg) end
  end

  it("gives clear errors for broken reports", function()
    fails("{", "report-syntax", "not JSON")
    fails("[]", "report-syntax")
    fails("{}", "report-syntax", "organization%-name")
    fails(GOOD:gsub('"2016%-04%-01T00:00:00Z"', '"yesterday"'), "report-syntax", "start%-datetime")
    fails(GOOD:gsub("5326", '"5326"'), "report-syntax", "summary")
    fails(GOOD:gsub("5326", "-1"), "report-syntax", "summary")
    fails(GOOD:gsub("5326", "1.5"), "report-syntax", "summary")
    fails(GOOD:gsub('"sts"', '"dane"'), "report-syntax", "policy%-type")
    fails(GOOD:gsub('"failed%-session%-count": 100', '"failed-session-count": "x"'),
      "report-syntax", "failed%-session%-count")
    fails(GOOD:gsub('"policy%-domain": "company%-y.example"', '"policy-domain": 7'),
      "report-syntax", "policy%-domain")
    fails(("["):rep(1000) .. ("]"):rep(1000), "report-syntax")
    fails("hello", "report-syntax")
    fails("Subject: hi\r\nContent-Type: text/plain\r\n\r\nhello", "report-syntax", "text/plain")
    fails("Content-Type: multipart/report; report-type=tlsrpt; boundary=x\r\n\r\n--x\r\n" ..
      "Content-Type: text/plain\r\n\r\nhi\r\n--x--\r\n", "report-syntax", "no application")
    fails("Content-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n" ..
      "!!!", "report-syntax", "base64")
  end)

  it("a truncated gzip, garbage after it, and a 50 MB bomb are refused", function()
    local gz = core.gzip(GOOD)
    fails(gz:sub(1, #gz - 10), "gzip", "truncated")
    fails(gz .. "garbage", "gzip", "garbage")
    fails("\31\139" .. ("x"):rep(40), "gzip")
    local bomb = core.gzip(("{" .. (" "):rep(1024 * 1024 - 2) .. "}"):rep(50))
    assert.is_true(#bomb < 200 * 1024)
    fails(bomb, "too-large", "inflates")
    local big = ("x"):rep(tlsrpt.MAX_INPUT + 1)
    fails(big, "too-large")
  end)

  -- a multipart/report message whose last part is the report; closing: the text after it
  local function mail(ctype, cte, body, closing, eol)
    eol = eol or "\r\n"
    return table.concat({ "From: a@b.example", 'Content-Type: multipart/report; ' ..
      'report-type="tlsrpt"; boundary="B"', "", "--B", "Content-Type: text/plain", "", "hi",
      "--B", "Content-Type: " .. ctype, "Content-Transfer-Encoding: " .. cte, "", body }, eol) ..
      (closing or "")
  end
  local B64 = core.base64_encode(core.gzip(GOOD), 76)

  it("reads a last part whose closing boundary is missing, when its content is whole", function()
    local gz, name = "application/tlsrpt+gzip", "Company-X"
    assert.equal(name, assert(tlsrpt.parse_report(mail(gz, "base64", B64, "\r\n--B--\r\n")))
      ["organization-name"])
    for _, closing in ipairs({ "", "\r\n", "\r\n\r\n\r\n", "\r\n--B\r\n" }) do
      local r, msg = tlsrpt.parse_report(mail(gz, "base64", B64, closing))
      assert.equal(name, r and r["organization-name"], msg)
    end
    local lf = mail(gz, "base64", B64:gsub("\r\n", "\n"), "\n", "\n")
    assert.equal(name, assert(tlsrpt.parse_report(lf))["organization-name"])
    local plain = mail("application/tlsrpt+json", "7bit", GOOD, "\r\n")
    assert.equal(name, assert(tlsrpt.parse_report(plain))["organization-name"])
    local binary = mail(gz, "binary", core.gzip(GOOD), "\r\n")
    assert.equal(name, assert(tlsrpt.parse_report(binary))["organization-name"])
    -- nested: neither the inner nor the outer multipart is closed
    local inner = mail(gz, "base64", B64, "\r\n"):gsub("^From: a@b.example\r\n", "")
    local outer = 'Content-Type: multipart/mixed; boundary="O"\r\n\r\n--O\r\n' .. inner
    assert.equal(name, assert(tlsrpt.parse_report(outer))["organization-name"])
  end)

  it("a truncated last part without a closing boundary still fails: gzip, report-syntax", function()
    local gz = "application/tlsrpt+gzip"
    local two_lines = B64:match("^[^\r]*\r\n[^\r]*\r\n")
    fails(mail(gz, "base64", two_lines), "gzip", "truncated")
    fails(mail(gz, "base64", two_lines .. "Q"), "report-syntax", "base64")
    fails(mail("application/tlsrpt+json", "7bit", GOOD:sub(1, 200)), "report-syntax", "not JSON")
    local bomb = core.gzip(("{" .. (" "):rep(1024 * 1024 - 2) .. "}"):rep(20))
    fails(mail(gz, "base64", core.base64_encode(bomb, 76)), "too-large", "inflates")
    fails(mail(gz, "base64", ""), "report-syntax")
  end)

  it("misuse raises", function()
    assert.has_error(function() tlsrpt.parse_report(nil) end,
      "bad argument #1 to 'parse_report' (string expected, got nil)")
    assert.has_error(function() tlsrpt.filename({}) end,
      "bad argument #1 (report without date-range, report-id or policy domain)")
  end)
end)

describe("codecs", function()
  it("base64 round trips every length and rejects junk", function()
    for n = 0, 40 do
      local s = ("\0\1\2\255abc"):rep(8):sub(1, n)
      assert.equal(s, core.base64_decode(core.base64_encode(s, 76)))
    end
    assert.equal("aGVsbG8=", core.base64_encode("hello"))
    local ok, _, code = core.base64_decode("aGVsbG8=x")
    assert.is_nil(ok)
    assert.equal("base64", code)
    assert.is_nil((core.base64_decode("a")))
    assert.is_nil((core.base64_decode("a===")))
  end)

  it("gunzip reads concatenated members and honours the limit", function()
    local two = core.gzip("ab") .. core.gzip("cd")
    assert.equal("abcd", core.gunzip(two, 10))
    local ok, _, code = core.gunzip(core.gzip(("a"):rep(1000)), 999)
    assert.is_nil(ok)
    assert.equal("too-large", code)
    assert.equal(("a"):rep(1000), core.gunzip(core.gzip(("a"):rep(1000)), 1000))
  end)
end)
