-- mtasts.opensmtpd: the filter protocol, fed line by line as smtpd would.
local opensmtpd = require("mtasts.opensmtpd")
local tlsrpt = require("mtasts.tlsrpt")
local core = require("mtasts.core")
local util = require("support.util")

local REPORT = [[{"organization-name":"Org","date-range":{"start-datetime":"2026-11-20T00:00:00Z",
"end-datetime":"2026-11-20T23:59:59Z"},"contact-info":"x@org.example","report-id":"r-1",
"policies":[{"policy":{"policy-type":"sts","policy-domain":"example.org","mx-host":["mx"]},
"summary":{"total-successful-session-count":3,"total-failure-session-count":0}}]}]]

local function message()
  return { "From: reporter@org.example", "To: tlsrpt@example.org",
    "Subject: Report Domain: example.org", "MIME-Version: 1.0",
    "Content-Type: application/tlsrpt+gzip", "Content-Transfer-Encoding: base64", "",
    core.base64_encode(core.gzip(REPORT)) }
end

describe("mtasts.opensmtpd filter", function()
  local dir, cleanup, out, f
  before_each(function()
    dir, cleanup = util.tmpdir()
    out = {}
    f = opensmtpd.new{ addresses = { "tlsrpt@example.org", "@reports.example" },
      report_dir = dir, write = function(l) out[#out + 1] = l end }
  end)
  after_each(function() cleanup() end)

  local function feed(version, sid, lines)
    for _, l in ipairs(lines) do
      f:line(("filter|%s|1.0|smtp-in|data-line|%s|tok|%s"):format(version, sid, l))
    end
  end

  it("registers after config|ready", function()
    f:line("config|smtpd-version|6.8.0p2")
    f:line("config|subsystem|smtp-in")
    assert.same({}, out)
    f:line("config|ready")
    assert.equal("register|filter|smtp-in|data-line", out[1])
    assert.equal("register|ready", out[#out])
  end)

  it("passes other mail through line by line", function()
    f:line("report|0.6|1.0|smtp-in|tx-rcpt|s1|m1|ok|<user@example.org>")
    feed("0.6", "s1", { "Subject: hi", "", "..dot", "." })
    assert.same({ "filter-dataline|s1|tok|Subject: hi", "filter-dataline|s1|tok|",
      "filter-dataline|s1|tok|..dot", "filter-dataline|s1|tok|." }, out)
  end)

  it("holds a report, parses and stores it, adds the header", function()
    f:line("report|0.6|1.0|smtp-in|tx-rcpt|s2|m1|ok|<TLSRPT@example.org>")
    local lines = message()
    feed("0.6", "s2", lines)
    assert.same({}, out)                       -- held until the end
    feed("0.6", "s2", { "." })
    assert.equal(#lines + 2, #out)             -- the header, the lines, the end
    assert.matches("^filter%-dataline|s2|tok|X%-Mtasts%-TLSRPT: parsed; report%-id=r%-1; " ..
      "organization=Org; policies=example.org$", out[1])
    assert.equal("filter-dataline|s2|tok|From: reporter@org.example", out[2])
    assert.equal("filter-dataline|s2|tok|.", out[#out])
    local files = util.run("ls " .. dir)
    local name = files:match("(%S+%.json)")
    assert.truthy(name, files)
    local stored = io.open(dir .. "/" .. name):read("a")
    assert.equal("r-1", assert(tlsrpt.parse_report(stored))["report-id"])
  end)

  it("says when a report does not parse, and never holds back the mail", function()
    f:line("report|0.6|1.0|smtp-in|tx-rcpt|s3|m1|ok|<any@reports.example>")
    feed("0.6", "s3", { "Content-Type: application/tlsrpt+json", "", "{broken", "." })
    assert.matches("X%-Mtasts%-TLSRPT: not parsed %(report%-syntax%)", out[1])
    assert.equal(5, #out)
  end)

  it("streams a message over the holding limit with a header saying so", function()
    f = opensmtpd.new{ addresses = { "tlsrpt@example.org" }, max_held = 100,
      write = function(l) out[#out + 1] = l end }
    f:line("report|0.6|1.0|smtp-in|tx-rcpt|s4|m1|ok|<tlsrpt@example.org>")
    local lines = {}
    for i = 1, 20 do lines[i] = ("line %02d xxxxxxxxxx"):format(i) end
    lines[#lines + 1] = "."
    feed("0.6", "s4", lines)
    assert.matches("too-large", out[1], 1, true)
    assert.equal(#lines + 1, #out)
    assert.equal("filter-dataline|s4|tok|.", out[#out])
  end)

  it("holds at most max_held_total bytes across sessions; the rest streams, marked busy",
    function()
    f = opensmtpd.new{ addresses = { "tlsrpt@example.org" }, max_held = 1000,
      max_held_total = 1500, write = function(l) out[#out + 1] = l end }
    for _, sid in ipairs({ "a", "b" }) do
      f:line("report|0.6|1.0|smtp-in|tx-rcpt|" .. sid .. "|m1|ok|<tlsrpt@example.org>")
    end
    local line = ("y"):rep(98)
    for _ = 1, 8 do feed("0.6", "a", { line }) end          -- a holds 800 bytes
    for _ = 1, 7 do feed("0.6", "b", { line }) end          -- 1500 in all: the limit
    assert.equal(800 + 700, f.held_total)
    assert.same({}, out)
    feed("0.6", "b", { line })
    assert.matches("X%-Mtasts%-TLSRPT: not parsed %(busy%)", out[1])
    assert.equal(800, f.held_total)
    feed("0.6", "a", { "." })
    assert.equal(0, f.held_total)
    -- a session that ends without its "." gives its bytes back too
    f:line("report|0.6|1.0|smtp-in|tx-rcpt|c|m1|ok|<tlsrpt@example.org>")
    feed("0.6", "c", { line, line })
    assert.equal(200, f.held_total)
    f:line("report|0.6|1.0|smtp-in|link-disconnect|c")
    assert.equal(0, f.held_total)
  end)

  it("stores within the directory's limits, and says when it does not", function()
    local logs = {}
    f = opensmtpd.new{ addresses = { "tlsrpt@example.org" }, report_dir = dir,
      max_store_files = 2, write = function(l) out[#out + 1] = l end,
      log = function(_, m) logs[#logs + 1] = m end }
    for i = 1, 3 do
      out = {}
      local sid = "s" .. i
      f:line("report|0.6|1.0|smtp-in|tx-rcpt|" .. sid .. "|m1|ok|<tlsrpt@example.org>")
      feed("0.6", sid, message())
      feed("0.6", sid, { "." })
      if i < 3 then
        assert.matches("parsed; report%-id=r%-1; organization=Org; policies=example.org$", out[1])
      else
        assert.matches("; not stored: the report directory is full$", out[1])
      end
    end
    assert.equal(2, select(2, util.run("ls " .. dir):gsub("%.json", "")))
    assert.matches("holds 2 reports", table.concat(logs, "\n"), 1, true)
  end)

  it("removes a sender's X-Mtasts-TLSRPT header also from a message it streams", function()
    f = opensmtpd.new{ addresses = { "tlsrpt@example.org" }, max_held = 200,
      write = function(l) out[#out + 1] = l end }
    f:line("report|0.6|1.0|smtp-in|tx-rcpt|s8|m1|ok|<tlsrpt@example.org>")
    local lines = { "From: a@evil.example" }
    for i = 1, 10 do lines[#lines + 1] = "X-Padding-" .. i .. ": " .. ("p"):rep(30) end
    lines[#lines + 1] = "X-Mtasts-TLSRPT: parsed; report-id=forged"
    lines[#lines + 1] = "X-Mtasts-TLSRPT : parsed; report-id=obsolete-form"
    lines[#lines + 1] = ""
    lines[#lines + 1] = "body"
    lines[#lines + 1] = "."
    feed("0.6", "s8", lines)
    local text = table.concat(out, "\n")
    assert.matches("X%-Mtasts%-TLSRPT: not parsed %(too%-large%)", out[1])
    assert.is_nil(text:find("forged", 1, true), text)
    assert.is_nil(text:find("obsolete-form", 1, true), text)
    assert.matches("X-Padding-10:", text, 1, true)
    assert.matches("|body\n", text, 1, true)
  end)

  it("removes an X-Mtasts-TLSRPT header the sender wrote", function()
    f:line("report|0.6|1.0|smtp-in|tx-rcpt|s9|m1|ok|<tlsrpt@example.org>")
    feed("0.6", "s9", { "From: a@evil.example", "X-Mtasts-TLSRPT: parsed; report-id=fake;",
      "\torganization=Trusted", "x-mtasts-tlsrpt: parsed", "Subject: hi", "",
      "X-Mtasts-TLSRPT: in the body, kept", "." })
    local text = table.concat(out, "\n")
    assert.matches("^filter%-dataline|s9|tok|X%-Mtasts%-TLSRPT: not parsed", text)
    assert.is_nil(text:find("report-id=fake", 1, true))
    assert.is_nil(text:find("organization=Trusted", 1, true))
    assert.is_nil(text:find("x-mtasts-tlsrpt: parsed", 1, true))
    assert.matches("Subject: hi", text, 1, true)
    assert.matches("X-Mtasts-TLSRPT: in the body, kept", text, 1, true)
  end)

  it("answers other filter phases proceed, in the order of the protocol version", function()
    f:line("filter|0.6|1.0|smtp-in|rcpt-to|s5|tok5|<a@b>")
    f:line("filter|0.4|1.0|smtp-in|rcpt-to|s6|tok6|<a@b>")
    assert.same({ "filter-result|s5|tok5|proceed", "filter-result|tok6|s6|proceed" }, out)
  end)

  it("a reset transaction is not held", function()
    f:line("report|0.6|1.0|smtp-in|tx-rcpt|s7|m1|ok|<tlsrpt@example.org>")
    f:line("report|0.6|1.0|smtp-in|tx-reset|s7|m1")
    feed("0.6", "s7", { "x", "." })
    assert.same({ "filter-dataline|s7|tok|x", "filter-dataline|s7|tok|." }, out)
  end)

  it("records smtp-out sessions that established TLS", function()
    local store = assert(tlsrpt.open{ path = dir .. "/db", batch_size = 1,
      clock = function() return tlsrpt.day_start("2026-11-20") + 10 end })
    f = opensmtpd.new{ store = store, write = function(l) out[#out + 1] = l end }
    f:line("report|0.6|1.0|smtp-out|link-connect|o1|mx.example.com|pass|127.0.0.1:1|192.0.2.1:25")
    f:line("report|0.6|1.0|smtp-out|link-tls|o1|version=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384")
    f:line("report|0.6|1.0|smtp-out|tx-rcpt|o1|m1|ok|<u@example.com>")
    f:line("report|0.6|1.0|smtp-out|link-disconnect|o1")
    f:line("report|0.6|1.0|smtp-out|link-connect|o2|mx.example.com|pass|127.0.0.1:1|192.0.2.1:25")
    f:line("report|0.6|1.0|smtp-out|tx-rcpt|o2|m2|ok|<u@example.com>")
    f:line("report|0.6|1.0|smtp-out|link-disconnect|o2")   -- no TLS: not a TLS session
    local r = assert(store:report("example.com", "2026-11-20"))
    assert.equal("no-policy-found", r.policies[1].policy["policy-type"])
    assert.equal(1, r.policies[1].summary["total-successful-session-count"])
    store:close()
  end)

  it("skips a recipient domain that is no domain name, and records the others", function()
    local store = assert(tlsrpt.open{ path = dir .. "/db", batch_size = 1,
      clock = function() return tlsrpt.day_start("2026-11-20") + 10 end })
    local asked = {}
    f = opensmtpd.new{ store = store, write = function(l) out[#out + 1] = l end,
      policy_of = function(d) asked[#asked + 1] = d end }
    f:line("report|0.6|1.0|smtp-out|link-connect|o1|mx.example.com|pass|127.0.0.1:1|192.0.2.1:25")
    f:line("report|0.6|1.0|smtp-out|link-tls|o1|version=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384")
    f:line("report|0.6|1.0|smtp-out|tx-rcpt|o1|m1|ok|<u@bad..domain>")
    f:line("report|0.6|1.0|smtp-out|tx-rcpt|o1|m1|ok|<u@Example.COM>")
    f:line("report|0.6|1.0|smtp-out|link-disconnect|o1")
    assert.same({ "example.com" }, asked)
    assert.same({ { domain = "example.com", host = false } }, assert(store:domains("2026-11-20")))
    store:close()
  end)
end)

describe("mtasts.opensmtpd filter against hostile reports", function()
  -- the audit's inputs, in a process of its own (spec/support/filter_load.lua): before the
  -- limits, the bomb was stored as a 16.8 MB file and the 80,000 parts took 1.7 s to refuse
  it("refuses the bomb and the parts quickly, and stays small", function()
    local dir, cleanup = util.tmpdir()
    finally(cleanup)
    util.run("mkdir " .. dir .. "/reports")
    local out, status = util.run(util.lua_cmd() .. " spec/support/filter_load.lua make " ..
      dir .. "/input")
    assert.equal(0, status, out)
    out, status = util.run(util.lua_cmd() .. " spec/support/filter_load.lua run " .. dir ..
      "/input " .. dir .. "/reports")
    assert.equal(0, status, out)
    local r = require("cjson").decode(out:match("{.*}"))
    assert.matches("not parsed %(too%-large%): report: the gzip data inflates to over 4194304",
      r.headers.bomb)
    assert.matches("^X%-Mtasts%-TLSRPT: parsed; report%-id=big", r.headers.legit)
    assert.matches("more than 100 MIME parts", r.headers.parts)
    assert.equal(1, #r.files)
    print(("\n    longest protocol line (a whole parse) %.2f s, peak memory %d MiB"):format(
      r.longest, r.hwm_kib // 1024))
    assert.is_true(r.longest < util.within(1.5), "a parse took " .. r.longest .. " s")
    if (os.getenv("MTASTS_VALGRIND") or "") == "" and (os.getenv("MTASTS_PRELOAD") or "") == ""
    then
      assert.is_true(r.hwm_kib < 100 * 1024, "peak memory " .. r.hwm_kib .. " KiB")
    end
  end)
end)
