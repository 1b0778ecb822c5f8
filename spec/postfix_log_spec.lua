-- mtasts.postfix_log on the logs of real Postfix 3.7 (spec/fixtures/postfix-log/, captured
-- from spec/support/postfix_log_world.lua): each TLS outcome to its TLSRPT result, one result
-- per session, the line forms, and the follower: resuming after a kill at any line (and in
-- the middle of one) without counting twice or missing a session, rotation by rename and by
-- copytruncate, while running and while stopped.
local postfix_log = require("mtasts.postfix_log")
local mtasts = require("mtasts")
local tlsrpt = require("mtasts.tlsrpt")
local util = require("support.util")

local FIX = "spec/fixtures/postfix-log/"

local function read(name)
  local f = assert(io.open(FIX .. name, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function lines_of(text)
  local t = {}
  for l in text:gmatch("([^\n]*)\n") do t[#t + 1] = l end
  return t
end

-- The policies of the world the fixtures come from, as the cache holds them after
-- `mtasts serve postfix` looked them up: domain label -> mode and mx lines.
local POLICIES = {
  good = { "enforce" }, expired = { "enforce" }, wrongname = { "enforce" },
  untrusted = { "enforce" }, nostarttls = { "enforce" }, handshake = { "enforce" },
  testing = { "testing" }, multi = { "enforce" }, cached = { "enforce" },
  nomatch = { "enforce", { "mx.nomatch.example" } },
  twomx = { "enforce", { "mx1.twomx.example", "mx2.twomx.example" } },
  reuse = { "enforce" },
}

local function policy_text(domain)
  local label = domain:match("^([^.]+)")
  local p = POLICIES[label]
  if not p then return nil end
  local mx = p[2] or { "mx." .. label .. ".example" }
  return "version: STSv1\nmode: " .. p[1] .. "\nmx: " .. table.concat(mx, "\nmx: ") ..
    "\nmax_age: 86400\n"
end

local function policy_of(domain, _, plain)
  local text = policy_text(domain)
  if not text and plain and domain:find("^plain") then
    -- not so in the world: sessions without TLS under a policy, for the follower's specs
    text = "version: STSv1\nmode: testing\nmx: *.example\nmax_age: 86400\n"
  end
  if not text then return tlsrpt.no_policy_result(domain) end
  local policy = assert(mtasts.parse_policy(text))
  return tlsrpt.sts_result(domain, text, policy), policy
end

-- One string per result: "<domain> <policy type> ok" or "<domain> <policy type> <result
-- type> <reason> <mx> <ip>", sorted.
local function brief(result, o)
  local f = result.failures[#result.failures]
  local s = o.recipient_domain .. " " .. result.policy.type
  if result.summary.success == 1 then return s .. " ok" end
  return ("%s %s %s %s %s"):format(s, f.result_type, tostring(f.failure_reason_code),
    tostring(f.receiving_mx_hostname), tostring(f.receiving_ip))
end

local function run(text, opts)
  local got, full = {}, {}
  opts = opts or {}
  local reader = postfix_log.new{ policy_of = opts.policy_of or policy_of, partial = opts.partial,
    add = function(result, o)
      got[#got + 1] = brief(result, o)
      full[#full + 1] = { result = result, opts = o }
      return true
    end }
  for _, l in ipairs(lines_of(text)) do reader:line(l) end
  table.sort(got)
  return got, reader, full
end

-- What every fixture of the world gives (the journal forms too, but for what they lack).
local EXPECTED = {
  "cached.example sts ok", "cached.example sts ok", "cached.example sts ok",
  "expired.example sts certificate-expired certificate has expired mx.expired.example " ..
    "127.0.0.3",
  "good.example sts ok",
  "handshake.example sts validation-failure tls-handshake-failure: legacy sigalg disallowed " ..
    "or unsupported mx.handshake.example 127.0.0.7",
  "mayhs.example no-policy-found ok",
  "multi.example sts ok",
  "nomatch.example sts validation-failure mtasts-policy-mx-mismatch mx.elsewhere.example " ..
    "127.0.0.13",
  "nopolicy.example no-policy-found ok",
  "nopolicyexp.example no-policy-found ok",
  "nostarttls.example sts starttls-not-supported nil mx.nostarttls.example 127.0.0.6",
  "testing.example sts ok",
  "twomx.example sts certificate-expired certificate has expired mx1.twomx.example 127.0.0.14",
  "twomx.example sts ok",
  "untrusted.example sts certificate-not-trusted untrusted issuer /CN=mtasts untrusted CA " ..
    "mx.untrusted.example 127.0.0.5",
  "wrongname.example sts certificate-host-mismatch num=62:hostname mismatch " ..
    "mx.wrongname.example 127.0.0.4",
}

describe("mtasts.postfix_log reader", function()
  it("maps each outcome of Postfix's own log (maillog_file) to its TLSRPT result", function()
    local got, reader = run(read("maillog"))
    assert.same(EXPECTED, got)
    local st = reader:stats()
    assert.equal(121, st.lines)
    assert.equal(17, st.sessions)
    assert.equal(10, st.success)
    assert.equal(7, st.failure)
    assert.equal(2, st.reused)        -- plaincached: conn_use=2 and 3
    assert.equal(2, st.plaintext)     -- plain, plaincached's first: no policy, not recorded
    assert.equal(0, st.errors)
    assert.equal(st.lines, st.used + st.ignored)
  end)

  it("takes the failures tlsproxy logged for the smtp process (smtp_tls_connection_reuse)",
    function()
      local got, reader = run(read("maillog-tlsproxy"))
      assert.same(EXPECTED, got)
      assert.equal(17, reader:stats().sessions)   -- tlsproxy's own TLS lines are not sessions
    end)

  it("records the whole result table: policy, summary, the failure's fields", function()
    local _, _, full = run(read("maillog"))
    local expired, twomx = {}, {}
    for _, r in ipairs(full) do
      if r.opts.recipient_domain == "expired.example" then expired[#expired + 1] = r end
      if r.opts.recipient_domain == "twomx.example" then twomx[#twomx + 1] = r end
    end
    assert.equal(1, #expired)
    -- the day of the log line (local time, as syslog writes it)
    local t = os.time{ year = tonumber(os.date("%Y")), month = 11, day = 30, hour = 19,
      min = 30, sec = 18 }
    assert.same({ day = tlsrpt.day_of(t), recipient_domain = "expired.example" }, expired[1].opts)
    assert.same({
      policy = { type = "sts", domain = "expired.example",
        strings = { "version: STSv1", "mode: enforce", "mx: mx.expired.example",
          "max_age: 86400" },
        mx_host = { "mx.expired.example" } },
      summary = { success = 0, failure = 1 },
      failures = { { result_type = "certificate-expired",
        failure_reason_code = "certificate has expired",
        receiving_mx_hostname = "mx.expired.example", receiving_ip = "127.0.0.3",
        count = 1 } } }, expired[1].result)
    -- the MX host Postfix gave up on, then the one it delivered to: two sessions
    assert.equal(2, #twomx)
    assert.same({ success = 0, failure = 1 }, twomx[1].result.summary)
    assert.same({ success = 1, failure = 0 }, twomx[2].result.summary)
    assert.same({}, twomx[2].result.failures)
  end)

  it("counts a connection delivering several recipients once", function()
    local got = run(read("maillog"))
    local n = 0
    for _, g in ipairs(got) do if g:find("^multi%.example") then n = n + 1 end end
    assert.equal(1, n)
    -- three to= lines on one connection
    local _, lines = read("maillog"):gsub("to=<user%d@multi%.example>", "")
    assert.equal(3, lines)
  end)

  it("does not count deliveries on a cached connection (conn_use=2, TLS reused)", function()
    local got, reader = run(read("maillog-reuse"))
    local n = 0
    for _, g in ipairs(got) do if g:find("^reuse%.example") then n = n + 1 end end
    -- three messages: two connections, and one "Verified TLS connection reused"
    assert.equal(2, n)
    assert.matches("Verified TLS connection reused to mx%.reuse%.example", read("maillog-reuse"))
    assert.equal(2, reader:stats().reused)   -- reuse.example's third, plainreuse's conn_use=2
  end)

  it("reads journalctl -o short-iso and -o json as the log file", function()
    assert.same(EXPECTED, (run(read("journal-short-iso"))))
    local got, reader = run(read("journal.json"))
    assert.same(EXPECTED, got)
    assert.matches("^s=%x+;i=%x+;", reader:journal_cursor())
  end)

  it("reads journalctl -o cat (no program, no process) but for what only those tell", function()
    local got = run(read("journal-cat"))
    local want = {}
    for _, e in ipairs(EXPECTED) do
      -- lines are told apart by their peer: the MX host Postfix left for another is not
      -- tied to the delivery; the TLS library's reason has no peer to go with
      if e:find("^twomx.-mx1") then goto skip end
      e = e:gsub("tls%-handshake%-failure: legacy sigalg disallowed or unsupported",
        "tls-handshake-failure")
      want[#want + 1] = e
      ::skip::
    end
    table.sort(want)
    assert.same(want, got)
  end)

  it("counts lines it does not use, and never raises on them", function()
    local reader = postfix_log.new{ policy_of = policy_of }
    local junk = { "", "garbage", "{not json", '{"MESSAGE": 5}', ("x"):rep(20000),
      "Nov 30 19:24:41 mail postfix/qmgr[1]: F1EB6ACC689: removed",
      "Nov 30 19:24:41 mail postfix/smtp[1]: connect to mx.example[192.0.2.1]:25: " ..
        "Connection refused",
      "Nov 30 19:24:41 mail postfix/smtp[1]: ABC: to=<a@b.example>, relay=none, delay=1, " ..
        "status=deferred (connect to mx.example[192.0.2.1]:25: Connection refused)",
      "Nov 30 19:24:41 mail postfix/smtp[1]: Verified TLS connection established to x",
      "Nov 30 19:24:41 mail postfix/lmtp[2]: ABC: to=<a@b.example>, relay=h[private/x], " ..
        "delay=1, status=sent (250 ok)",
      "Nov 30 19:24:41 mail postfix/smtp[3]: ABC: to=<a@[192.0.2.1]>, relay=h[192.0.2.1]:25, " ..
        "delay=1, status=sent (250 ok)" }
    for _, l in ipairs(junk) do reader:line(l) end
    local st = reader:stats()
    assert.equal(#junk, st.lines)
    assert.equal(0, st.sessions)
    assert.equal(0, st.errors)
    assert.is_true(st.ignored >= 8)
    assert.equal(st.lines, st.used + st.ignored)
    assert.has_error(function() reader:line(nil) end,
      "bad argument #1 to 'line' (string expected, got nil)")
    assert.has_error(function() postfix_log.new{ pth = 1 } end,
      "bad argument #1 to 'new' (unknown option 'pth')")
  end)

  it("splits every line form: syslog, maillog_file, RFC 3339, tag alone, json, bare", function()
    local now = os.time{ year = 2026, month = 12, day = 1, hour = 12 }
    local t = postfix_log.split("Nov 30 19:24:40 mail postfix/smtp[16919]: hello", now)
    assert.same({ t = os.time{ year = 2026, month = 11, day = 30, hour = 19, min = 24,
      sec = 40 }, tag = "postfix/smtp", pid = "16919", msg = "hello" }, t)
    -- a date ahead of now is last year's
    t = postfix_log.split("Dec 31 23:59:59.123456 mail postfix-out/smtp[7]: x", now)
    assert.equal(os.time{ year = 2025, month = 12, day = 31, hour = 23, min = 59, sec = 59 },
      t.t)
    assert.equal("postfix-out/smtp", t.tag)
    t = postfix_log.split("2026-11-30T12:00:00.123456+01:00 host postfix/smtp[123]: m")
    assert.same({ t = tlsrpt.day_start("2026-11-30") + 11 * 3600, tag = "postfix/smtp",
      pid = "123", msg = "m" }, t)
    t = postfix_log.split("2026-11-30T19:29:02+0000 vm postfix/smtp[9]: m")
    assert.equal(tlsrpt.day_start("2026-11-30") + 19 * 3600 + 29 * 60 + 2, t.t)
    assert.same({ tag = "postfix/relay/smtp", pid = "5", msg = "m" },
      postfix_log.split("postfix/relay/smtp[5]: m"))
    assert.same({ msg = "Verified TLS connection established to x" },
      postfix_log.split("Verified TLS connection established to x"))
    t = postfix_log.split('{"MESSAGE":"m","SYSLOG_IDENTIFIER":"postfix/smtp","_PID":"9",' ..
      '"SYSLOG_PID":"42","__REALTIME_TIMESTAMP":"1796066942858220","__CURSOR":"s=1;i=2"}')
    assert.same({ msg = "m", tag = "postfix/smtp", pid = "42", t = 1796066942.85822,
      cursor = "s=1;i=2" }, t)
    -- a message that is not UTF-8: journald gives its bytes as numbers
    t = postfix_log.split('{"MESSAGE":[104,105,255],"SYSLOG_IDENTIFIER":"postfix/smtp"}')
    assert.equal("hi\255", t.msg)
  end)

  it("under an MTA-STS policy: untrusted is a failure, no TLS is starttls-not-supported;" ..
    " without one both are fine (and no TLS is not counted)", function()
    local log = table.concat({
      "Nov 30 10:00:00 m postfix/smtp[1]: Untrusted TLS connection established to " ..
        "mx.testing.example[192.0.2.1]:25: TLSv1.3 with cipher X",
      "Nov 30 10:00:00 m postfix/smtp[1]: A1: to=<u@testing.example>, " ..
        "relay=mx.testing.example[192.0.2.1]:25, delay=1, status=sent (250 ok)",
      "Nov 30 10:00:01 m postfix/smtp[2]: A2: to=<u@testing.example>, " ..
        "relay=mx.testing.example[192.0.2.2]:25, delay=1, status=sent (250 ok)",
      "Nov 30 10:00:02 m postfix/smtp[3]: Untrusted TLS connection established to " ..
        "mx.other.example[192.0.2.3]:25: TLSv1.3 with cipher X",
      "Nov 30 10:00:02 m postfix/smtp[3]: A3: to=<u@other.example>, " ..
        "relay=mx.other.example[192.0.2.3]:25, delay=1, status=sent (250 ok)",
      "Nov 30 10:00:03 m postfix/smtp[4]: A4: to=<u@other.example>, " ..
        "relay=mx.other.example[192.0.2.4]:25, delay=1, status=sent (250 ok)",
      "Nov 30 10:00:04 m postfix/smtp[5]: Anonymous TLS connection established to " ..
        "mx.testing.example[192.0.2.5]:25: TLSv1 with cipher AECDH-AES256-SHA (256/256 bits)",
      "Nov 30 10:00:04 m postfix/smtp[5]: A5: to=<u@testing.example>, " ..
        "relay=mx.testing.example[192.0.2.5]:25, delay=1, status=bounced (host " ..
        "mx.testing.example[192.0.2.5] said: 550 no (in reply to RCPT TO command))",
    }, "\n") .. "\n"
    local got, reader = run(log)
    assert.same({
      "other.example no-policy-found ok",
      "testing.example sts certificate-not-trusted anonymous-tls-no-certificate " ..
        "mx.testing.example 192.0.2.5",
      "testing.example sts certificate-not-trusted nil mx.testing.example 192.0.2.1",
      "testing.example sts starttls-not-supported nil mx.testing.example 192.0.2.2",
    }, got)
    assert.equal(1, reader:stats().plaintext)
  end)

  it("tells a connection's further recipients (sent or deferred) from the next message's " ..
    "new connection",
    function()
      local function to(pid, qid, rcpt, extra)
        return ("Nov 30 10:00:00 m postfix/smtp[%d]: %s: to=<%s@testing.example>, " ..
          "relay=mx.testing.example[192.0.2.1]:25, %sdelay=1, status=sent (250 ok)")
          :format(pid, qid, rcpt, extra or "")
      end
      local got, reader = run(table.concat({
        to(1, "A1", "u1"), to(1, "A1", "u2"),          -- one message, two recipients
        to(1, "A2", "u1"),                              -- the next message: a new connection
        to(1, "A3", "u1", "conn_use=2, "),              -- a cached connection: not counted
      }, "\n") .. "\n")
      assert.same({
        "testing.example sts starttls-not-supported nil mx.testing.example 192.0.2.1",
        "testing.example sts starttls-not-supported nil mx.testing.example 192.0.2.1" }, got)
      assert.equal(1, reader:stats().reused)
      -- a message deferred for each of its recipients: one session
      got = run(table.concat({
        "Nov 30 10:00:00 m postfix/smtp[1]: A4: to=<u1@nostarttls.example>, relay=" ..
          "mx.nostarttls.example[192.0.2.6]:25, delay=1, dsn=4.7.4, status=deferred (TLS is " ..
          "required, but was not offered by host mx.nostarttls.example[192.0.2.6])",
        "Nov 30 10:00:00 m postfix/smtp[1]: A4: to=<u2@nostarttls.example>, relay=" ..
          "mx.nostarttls.example[192.0.2.6]:25, delay=1, dsn=4.7.4, status=deferred (TLS is " ..
          "required, but was not offered by host mx.nostarttls.example[192.0.2.6])",
        "Nov 30 10:00:01 m postfix/smtp[2]: SSL_connect error to mx.handshake.example" ..
          "[192.0.2.7]:25: -1",
        "Nov 30 10:00:01 m postfix/smtp[2]: A5: to=<u1@handshake.example>, relay=" ..
          "mx.handshake.example[192.0.2.7]:25, delay=1, status=deferred (Cannot start TLS: " ..
          "handshake failure)",
        "Nov 30 10:00:01 m postfix/smtp[2]: A5: to=<u2@handshake.example>, relay=" ..
          "mx.handshake.example[192.0.2.7]:25, delay=1, status=deferred (Cannot start TLS: " ..
          "handshake failure)",
      }, "\n") .. "\n")
      assert.same({
        "handshake.example sts validation-failure tls-handshake-failure mx.handshake.example " ..
          "192.0.2.7",
        "nostarttls.example sts starttls-not-supported nil mx.nostarttls.example 192.0.2.6" },
        got)
    end)

  local function L(time, pid, msg)
    return ("Nov 30 %s m postfix/smtp[%d]: %s"):format(time, pid, msg)
  end
  local function plain_too(d, t) return policy_of(d, t, true) end

  it("takes the failure of an MX host Postfix left for the next from its QID: line, and the " ..
    "delivery status of the last one", function()
    local got = run(table.concat({
      -- mx1 offers no STARTTLS, mx2 verifies: both sessions
      L("10:00:00", 1, "Q1: TLS is required, but was not offered by host " ..
        "mx1.twomx.example[192.0.2.1]"),
      L("10:00:00", 1, "Verified TLS connection established to mx2.twomx.example" ..
        "[192.0.2.2]:25: TLSv1.3 with cipher X"),
      L("10:00:01", 1, "Q1: to=<u@twomx.example>, relay=mx2.twomx.example[192.0.2.2]:25, " ..
        "delay=1, delays=0.1/0/0.5/0.2, dsn=2.0.0, status=sent (250 ok)"),
      -- mx1 verifies, then 421; the last MX offers no STARTTLS
      L("10:00:02", 2, "Verified TLS connection established to mx1.twomx.example" ..
        "[192.0.2.1]:25: TLSv1.3 with cipher X"),
      L("10:00:02", 2, "Q2: host mx1.twomx.example[192.0.2.1] said: 421 4.3.2 closing (in " ..
        "reply to MAIL FROM command)"),
      L("10:00:03", 2, "Q2: to=<u@twomx.example>, relay=mx2.twomx.example[192.0.2.2]:25, " ..
        "delay=1, delays=0.1/0/0.8/0, dsn=4.7.4, status=deferred (TLS is required, but was " ..
        "not offered by host mx2.twomx.example[192.0.2.2])"),
    }, "\n") .. "\n")
    assert.same({
      "twomx.example sts ok", "twomx.example sts ok",
      "twomx.example sts starttls-not-supported nil mx1.twomx.example 192.0.2.1",
      "twomx.example sts starttls-not-supported nil mx2.twomx.example 192.0.2.2" }, got)
  end)

  it("does not give a process's leftover TLS line to the next delivery of its id", function()
    local got, reader = run(table.concat({
      -- killed after its TLS line; the id comes again five minutes later
      L("10:00:00", 100, "Verified TLS connection established to mx.good.example" ..
        "[192.0.2.1]:25: TLSv1.3 with cipher X"),
      L("10:05:00", 100, "Q1: to=<u@plain.example>, relay=mxplain.example[192.0.2.9]:25, " ..
        "delay=1, delays=0.1/0/0.2/0.1, dsn=2.0.0, status=sent (250 ok)"),
      -- master says it was killed
      L("10:06:00", 101, "Verified TLS connection established to mx.good.example" ..
        "[192.0.2.1]:25: TLSv1.3 with cipher X"),
      "Nov 30 10:06:00 m postfix/master[9]: warning: process /usr/lib/postfix/sbin/smtp pid " ..
        "101 killed by signal 9",
      L("10:06:00", 101, "Q2: to=<u@plain.example>, relay=mxplain.example[192.0.2.9]:25, " ..
        "delay=1, dsn=2.0.0, status=sent (250 ok)"),
    }, "\n") .. "\n", { policy_of = plain_too })
    assert.same({
      "plain.example sts starttls-not-supported nil mxplain.example 192.0.2.9",
      "plain.example sts starttls-not-supported nil mxplain.example 192.0.2.9" }, got)
    assert.equal(2, reader:stats().expired)
  end)

  it("skips a hop to a content filter (127.0.0.1, a port other than 25)", function()
    local got, reader = run(table.concat({
      L("10:00:00", 1, "Q1: to=<u@good.example>, relay=127.0.0.1[127.0.0.1]:10024, delay=1, " ..
        "delays=0.1/0/0/0.9, dsn=2.0.0, status=sent (250 2.0.0 Ok, id=1, from MTA)"),
      L("10:00:01", 2, "Q2: to=<u@good.example>, relay=localhost[::1]:25, delay=1, " ..
        "dsn=2.0.0, status=sent (250 ok)"),
    }, "\n") .. "\n")
    assert.same({}, got)
    assert.equal(2, reader:stats().skipped)
  end)

  it("takes a retry of the same message by the same process as a new connection", function()
    local function deferred(time, delays)
      return L(time, 7, "Q7: to=<u@testing.example>, relay=mx.testing.example[192.0.2.1]:25, " ..
        "delay=1, delays=" .. delays .. ", dsn=4.0.0, status=deferred (host mx.testing." ..
        "example[192.0.2.1] said: 451 later (in reply to RCPT TO command))")
    end
    local got = run(table.concat({ deferred("10:00:00", "0.1/0/0.1/0"),
      deferred("10:06:00", "360/0/0.1/0") }, "\n") .. "\n")
    assert.same({
      "testing.example sts starttls-not-supported nil mx.testing.example 192.0.2.1",
      "testing.example sts starttls-not-supported nil mx.testing.example 192.0.2.1" }, got)
  end)

  it("keeps tlsproxy's notes in the position, one per connection to the same MX host",
    function()
      local got = {}
      local reader = postfix_log.new{ policy_of = policy_of,
        add = function(r, o) got[#got + 1] = brief(r, o) return true end }
      local function P(pid, msg)
        return "Nov 30 10:00:00 m postfix/tlsproxy[" .. pid .. "]: " .. msg
      end
      local peer = "mx.expired.example[192.0.2.3]:25"
      reader:line(P(50, "server certificate verification failed for " .. peer ..
        ": certificate has expired"), 100)
      assert.equal(100, reader:oldest())        -- the note is state: the mark stays before it
      reader:line(P(50, "server certificate verification failed for " .. peer ..
        ": num=62:hostname mismatch"), 200)
      for i, pid in ipairs({ 1, 2 }) do
        reader:line(L("10:00:01", pid, "Untrusted TLS connection established to " .. peer ..
          ": TLSv1.3 with cipher X"), 200 + i * 100)
      end
      for _, pid in ipairs({ 1, 2 }) do
        reader:line(L("10:00:01", pid, "Q" .. pid .. ": to=<u@expired.example>, relay=" .. peer ..
          ", delay=1, delays=0/0/0.5/0.5, dsn=2.0.0, status=sent (250 ok)"), 600)
      end
      table.sort(got)
      assert.same({
        "expired.example sts certificate-expired certificate has expired mx.expired.example " ..
          "192.0.2.3",
        "expired.example sts certificate-host-mismatch num=62:hostname mismatch " ..
          "mx.expired.example 192.0.2.3" }, got)
      -- a TLS library reason of a tlsproxy process is state too, and is forgotten in time
      reader = postfix_log.new{ policy_of = policy_of }
      reader:line(P(51, "warning: TLS library problem: error:0A00014D:SSL routines::x:y.c:1:"),
        700)
      assert.equal(700, reader:oldest())
      reader:line(L("10:30:00", 3, "Q3: removed"), 800)
      assert.is_nil(reader:oldest())
      assert.is_nil(next(reader.proxy_reason))
    end)

  it("keeps the state of at most MAX_PROCS processes, and sweeps in linear time", function()
    local max = postfix_log.MAX_PROCS
    postfix_log.MAX_PROCS = 1000
    local reader = postfix_log.new{ policy_of = policy_of }
    local ok, err = pcall(function()
      for i = 1, 1500 do
        reader:line(L("10:00:00", i, "Verified TLS connection established to mx.good.example" ..
          "[192.0.2.1]:25: TLSv1.3 with cipher X"))
      end
    end)
    postfix_log.MAX_PROCS = max
    assert(ok, err)
    assert.equal(500, reader:stats().dropped)
    assert.equal(1000, reader.nprocs)
  end)

  it("dates each result by its own line, and takes no time from a line far ahead or not finite",
    function()
      local got = {}
      local now = os.time{ year = 2026, month = 12, day = 1, hour = 12 }
      local reader = postfix_log.new{ policy_of = policy_of, clock = function() return now end,
        add = function(_, o) got[#got + 1] = o.day return true end }
      local function session(stamp, pid)
        reader:line(stamp .. " m postfix/smtp[" .. pid .. "]: Verified TLS connection " ..
          "established to mx.good.example[192.0.2.1]:25: TLSv1.3 with cipher X")
        reader:line(stamp .. " m postfix/smtp[" .. pid .. "]: Q" .. pid .. ": to=<u@good." ..
          "example>, relay=mx.good.example[192.0.2.1]:25, delay=1, status=sent (250 ok)")
      end
      session("2026-12-01T10:00:00+00:00", 1)
      session("2026-12-05T10:00:00+00:00", 2)       -- four days ahead: no time
      session("2026-11-30T10:00:00+00:00", 3)       -- earlier than the last: its own
      reader:line('{"MESSAGE": "Verified TLS connection established to mx.good.example' ..
        '[192.0.2.1]:25: x", "SYSLOG_IDENTIFIER": "postfix/smtp", "SYSLOG_PID": "4", ' ..
        '"__REALTIME_TIMESTAMP": "1e999"}')
      session("2026-12-01T11:00:00+00:00", 5)
      assert.same({ "2026-12-01", "2026-12-01", "2026-11-30", "2026-12-01" }, got)
      assert.equal(3, reader:stats().bad_time)
      assert.equal(0, reader:stats().errors)
    end)

  it("takes num=21:unable to verify the first certificate for certificate-not-trusted",
    function()
      local peer = "mx.untrusted.example[192.0.2.5]:25"
      local got = run(table.concat({
        L("10:00:00", 1, "server certificate verification failed for " .. peer ..
          ": num=21:unable to verify the first certificate"),
        L("10:00:00", 1, "Untrusted TLS connection established to " .. peer .. ": TLSv1.3 x"),
        L("10:00:00", 1, "Q1: to=<u@untrusted.example>, relay=" .. peer .. ", delay=1, " ..
          "status=sent (250 ok)"),
      }, "\n") .. "\n")
      assert.same({ "untrusted.example sts certificate-not-trusted num=21:unable to verify " ..
        "the first certificate mx.untrusted.example 192.0.2.5" }, got)
    end)

  it("started in the middle of a log, does not take a connection it saw no start of for " ..
    "one without TLS", function()
    local log = table.concat({
      "Nov 30 10:00:00 m postfix/smtp[1]: A1: to=<u1@testing.example>, " ..
        "relay=mx.testing.example[192.0.2.1]:25, delay=1, status=sent (250 ok)",
      "Nov 30 10:00:00 m postfix/smtp[1]: A1: to=<u2@testing.example>, " ..
        "relay=mx.testing.example[192.0.2.1]:25, delay=1, status=sent (250 ok)",
      -- a process seen from its first line on
      "Nov 30 10:00:01 m postfix/smtp[2]: Verified TLS connection established to " ..
        "mx.testing.example[192.0.2.1]:25: TLSv1.3 with cipher X",
      "Nov 30 10:00:01 m postfix/smtp[2]: A2: to=<u1@testing.example>, " ..
        "relay=mx.testing.example[192.0.2.1]:25, delay=1, status=sent (250 ok)",
      -- max_age later, a process never seen before is taken as it looks: no TLS
      "Nov 30 10:20:00 m postfix/smtp[3]: A3: to=<u1@testing.example>, " ..
        "relay=mx.testing.example[192.0.2.1]:25, delay=1, status=sent (250 ok)",
    }, "\n") .. "\n"
    local got, reader = run(log, { partial = true })
    assert.same({ "testing.example sts ok",
      "testing.example sts starttls-not-supported nil mx.testing.example 192.0.2.1" }, got)
    assert.equal(1, reader:stats().unknown)
  end)

  it("forgets a session whose delivery line never comes, after max_age", function()
    local reader = postfix_log.new{ policy_of = policy_of, max_age = 60 }
    reader:line("Nov 30 10:00:00 m postfix/smtp[1]: Verified TLS connection established to " ..
      "mx.good.example[192.0.2.1]:25: TLSv1.3 with cipher X", 100)
    assert.equal(100, reader:oldest())
    reader:line("Nov 30 10:00:59 m postfix/qmgr[2]: A1: removed", 200)
    assert.equal(100, reader:oldest())
    reader:line("Nov 30 10:01:01 m postfix/qmgr[2]: A1: removed", 300)
    assert.is_nil(reader:oldest())
    assert.equal(1, reader:stats().expired)
  end)

  it("replays lines without recording them", function()
    local got = {}
    local reader = postfix_log.new{ policy_of = policy_of,
      add = function(r, o) got[#got + 1] = brief(r, o) return true end }
    for _, l in ipairs(lines_of(read("maillog"))) do reader:line(l, nil, true) end
    assert.same({}, got)
    assert.equal(121, reader:stats().replayed)
    assert.equal(0, reader:stats().lines)
  end)
end)

describe("mtasts.postfix_log.cache_policy", function()
  local function fake(rows)
    return { row = function(_, domain) return rows[domain] end }
  end

  it("gives the result sts:get gives for the cached row, without a lookup", function()
    local text = policy_text("good.example")
    local policy = assert(mtasts.parse_policy(text))
    local of = postfix_log.cache_policy(fake{
      ["good.example"] = { policy = policy, policy_text = text },
      ["none.example"] = { policy = { mode = "none", mx = {} }, policy_text = "x" },
      ["off.example"] = { backoff = true } })
    local r, p = of("good.example", 0)
    assert.same(tlsrpt.sts_result("good.example", text, policy), r)
    assert.equal(policy, p)
    assert.same(tlsrpt.no_policy_result("none.example"), (of("none.example")))
    assert.same(tlsrpt.no_policy_result("nothing.example"), (of("nothing.example")))
    r, p = of("off.example")
    assert.is_nil(p)
    assert.equal("sts", r.policy.type)
    assert.same({ { result_type = "sts-policy-fetch-error",
      failure_reason_code = "back-off-after-recent-fetch-error", count = 1 } }, r.failures)
  end)

  it("records without the policy, and says so, when the cache fails", function()
    local logged = {}
    local of = postfix_log.cache_policy({ row = function() return nil, "broken", "corrupt" end },
      function(level, m) logged[#logged + 1] = level .. " " .. m end)
    assert.same(tlsrpt.no_policy_result("a.example"), (of("a.example")))
    assert.same(tlsrpt.no_policy_result("b.example"), (of("b.example")))
    assert.equal(1, #logged)       -- at most once a minute
    assert.matches("^warning postfix%-log: cache: broken", logged[1])
  end)
end)

describe("mtasts.postfix_log follower", function()
  local dir, cleanup, log_path
  local text = read("maillog")
  local LINES = lines_of(text)

  before_each(function()
    dir, cleanup = util.tmpdir()
    log_path = dir .. "/maillog"
  end)
  after_each(function() cleanup() end)

  local function open_store(path)
    return assert(tlsrpt.open{ path = path or (dir .. "/db"), batch_size = math.huge,
      batch_interval = math.huge })
  end

  -- plain.example and plaincached.example (no STARTTLS) with a testing policy: their
  -- sessions without TLS are failures to record, and must survive a restart too
  local function with_plain(domain, t) return policy_of(domain, t, true) end

  local function follow(store, opts)
    opts = opts or {}
    opts.file, opts.store, opts.policy_of = opts.file or log_path, store, with_plain
    return assert(postfix_log.follow(opts))
  end

  local function append(path, data)
    local f = assert(io.open(path, "ab"))
    f:write(data)
    f:close()
  end

  -- The reports of every day in the store: what a restart must neither add to nor lose.
  local function snapshot(store)
    local out = {}
    for _, day in ipairs(store:days()) do
      for _, d in ipairs(store:domains(day)) do
        out[day .. " " .. d.domain] = store:report(d.domain, day).policies
      end
    end
    return out
  end

  local reference
  local function want()
    if reference then return reference end
    local rdir, rclean = util.tmpdir()
    util.write(rdir .. "/maillog", text)
    local store = open_store(rdir .. "/db")
    local f = follow(store, { file = rdir .. "/maillog", from_start = true })
    f:step()
    assert(f:close())
    reference = snapshot(store)
    store:close()
    rclean()
    local n = 0
    for _ in pairs(reference) do n = n + 1 end
    assert.equal(16, n)             -- 16 recipient domains with a session
    -- plaincached.example: three messages, one connection without TLS (used again twice)
    local day = tlsrpt.day_of(os.time{ year = tonumber(os.date("%Y")), month = 11, day = 30,
      hour = 19 })
    assert.same({ ["total-successful-session-count"] = 0, ["total-failure-session-count"] = 1 },
      reference[day .. " plaincached.example"][1].summary)
    return reference
  end

  local function upto(k) return table.concat(LINES, "\n", 1, k) .. (k > 0 and "\n" or "") end

  it("resumes after a kill at any line, or in the middle of one: no session twice, none " ..
    "missed", function()
    local expect = want()
    for k = 0, #LINES - 1, 4 do
      local d = dir .. "/k" .. k
      os.execute("mkdir -p " .. d)
      local path = d .. "/maillog"
      -- the first k lines and half of the next: the writer is in the middle of a line
      local next_line = LINES[k + 1] .. "\n"
      local half = #next_line // 2
      util.write(path, upto(k) .. next_line:sub(1, half))
      local a = open_store(d .. "/db")
      local fa = follow(a, { file = path, from_start = true })
      fa:step()
      assert(fa:commit())
      -- more lines read after the last commit: lost with the process
      append(path, next_line:sub(half + 1) .. table.concat(LINES, "\n", k + 2,
        math.min(#LINES, k + 6)) .. "\n")
      fa:step()
      a:release()                    -- killed: nothing more is committed
      append(path, table.concat(LINES, "\n", math.min(#LINES, k + 6) + 1) .. "\n")
      local b = open_store(d .. "/db")
      local fb = follow(b, { file = path })
      fb:step()
      assert(fb:close())
      assert.same(expect, snapshot(b), "killed after line " .. k)
      b:close()
    end
  end)

  it("keeps the mark at the oldest unfinished connection, and its offset after the last " ..
    "whole line", function()
    -- the good.example TLS line, and not yet its delivery line
    local at
    for i, l in ipairs(LINES) do
      if l:find("Verified TLS connection established to mx.good.example", 1, true) then at = i end
    end
    util.write(log_path, upto(at) .. "Nov 30 19:30:18 mail postfix/smtp[2049")
    local store = open_store()
    local f = follow(store, { from_start = true })
    f:step()
    assert(f:commit())
    local dev, ino, replay, done = store:mark("postfix-log:" .. log_path):match(
      "^file (%d+) (%d+) (%d+) (%d+) %x+$")
    assert.truthy(dev)
    assert.equal(#upto(at), tonumber(done))
    assert.equal(#upto(at - 1), tonumber(replay))
    assert.equal(postfix_log.stat(log_path).ino, tonumber(ino))
    store:close()
  end)

  it("starts at the end of the file without a mark, at the start with from_start", function()
    util.write(log_path, text)
    local store = open_store()
    local f = follow(store)
    f:step()
    assert(f:commit())
    assert.same({}, snapshot(store))
    append(log_path, text)          -- the same deliveries again, as new lines
    f:step()
    assert(f:close())
    assert.same(want(), snapshot(store))
    store:close()
  end)

  it("follows a file renamed away and made again (logrotate's create), running and stopped",
    function()
      local expect = want()
      local cut = 40
      util.write(log_path, upto(cut))
      local store = open_store()
      local f = follow(store, { from_start = true })
      f:step()
      append(log_path, table.concat(LINES, "\n", cut + 1, 70) .. "\n")
      assert(os.rename(log_path, log_path .. ".1"))
      util.write(log_path, table.concat(LINES, "\n", 71) .. "\n")
      f:step()
      assert(f:close())
      assert.same(expect, snapshot(store))
      store:close()

      -- stopped, rotated, started again: the old file is read from the mark first
      local d = dir .. "/down"
      os.execute("mkdir -p " .. d)
      local path = d .. "/maillog"
      local quiet = 63
      util.write(path, upto(quiet))
      local a = open_store(d .. "/db")
      local fa = follow(a, { file = path, from_start = true })
      fa:step()
      assert(fa:close())
      a:close()
      append(path, table.concat(LINES, "\n", quiet + 1, 90) .. "\n")
      assert(os.rename(path, path .. ".1"))
      util.write(path, table.concat(LINES, "\n", 91) .. "\n")
      local b = open_store(d .. "/db")
      local logged = {}
      local fb = follow(b, { file = path, log = function(level, m)
        logged[#logged + 1] = level .. " " .. m end })
      fb:step()
      assert(fb:close())
      assert.same(expect, snapshot(b))
      assert.matches("notice postfix%-log: .* was rotated while stopped", logged[1])
      b:close()
    end)

  it("follows a file truncated in place (copytruncate), running and stopped", function()
    local expect = want()
    util.write(log_path, upto(40))
    local store = open_store()
    local f = follow(store, { from_start = true })
    f:step()
    append(log_path, table.concat(LINES, "\n", 41, 70) .. "\n")
    -- copy, truncate, then more lines; longer than before, so only the bytes show it
    assert(os.execute("cp " .. log_path .. " " .. log_path .. ".1 && : > " .. log_path))
    util.write(log_path, table.concat(LINES, "\n", 71) .. "\n")
    f:step()
    assert(f:close())
    assert.same(expect, snapshot(store))
    store:close()

    local d = dir .. "/down"
    os.execute("mkdir -p " .. d)
    local path = d .. "/maillog"
    local quiet = 63
    util.write(path, upto(quiet))
    local a = open_store(d .. "/db")
    local fa = follow(a, { file = path, from_start = true })
    fa:step()
    assert(fa:close())
    a:close()
    append(path, table.concat(LINES, "\n", quiet + 1, 90) .. "\n")
    assert(os.execute("cp " .. path .. " " .. path .. ".1 && : > " .. path))
    util.write(path, table.concat(LINES, "\n", 91) .. "\n")
    local b = open_store(d .. "/db")
    local fb = follow(b, { file = path })
    fb:step()
    assert(fb:close())
    assert.same(expect, snapshot(b))
    b:close()
  end)

  it("skips a run of NULs longer than a line (a crash) without taking the file for another",
    function()
      local half = #LINES // 2
      util.write(log_path, upto(40))
      local store = open_store()
      local logged = {}
      local function log(level, m) logged[#logged + 1] = level .. " " .. m end
      local f = follow(store, { from_start = true, log = log })
      f:step()
      append(log_path, string.rep("\0", 20000))     -- no line end: dropped, as a long line
      f:step()
      append(log_path, "\n" .. table.concat(LINES, "\n", 41, half) .. "\n")
      f:step()                                       -- running: no "truncated", no reread
      assert(f:close())
      append(log_path, table.concat(LINES, "\n", half + 1) .. "\n")
      f = follow(store, { log = log })               -- restarted: the same file
      f:step()
      assert(f:close())
      for _, l in ipairs(logged) do assert.not_matches("truncated", l) end
      for _, l in ipairs(logged) do assert.not_matches("changed while stopped", l) end
      assert.same(want(), snapshot(store))
      store:close()
    end)

  it("commits before its batch needs more than one transaction of the store", function()
    local t = {}
    for i = 1, 1200 do
      t[#t + 1] = ("Nov 30 10:00:00 m postfix/smtp[%d]: Verified TLS connection established " ..
        "to mx.d%d.example[192.0.2.1]:25: TLSv1.3 with cipher X"):format(i, i)
      t[#t + 1] = ("Nov 30 10:00:00 m postfix/smtp[%d]: Q%d: to=<u@d%d.example>, " ..
        "relay=mx.d%d.example[192.0.2.1]:25, delay=1, status=sent (250 ok)"):format(i, i, i, i)
    end
    util.write(log_path, table.concat(t, "\n") .. "\n")
    for _, stdin in ipairs({ false, true }) do
      local store = open_store(dir .. "/db" .. tostring(stdin))
      local most, flushes, flush = 0, 0, store.flush
      store.flush = function(st)
        most, flushes = math.max(most, st:pending_keys()), flushes + 1
        return flush(st)
      end
      local input = stdin and assert(io.open(log_path, "rb")) or nil
      local f = follow(store, { from_start = not stdin or nil, input = input })
      while f:step() > 0 do end
      assert(f:close())
      if input then input:close() end
      assert.is_true(most <= require("mtasts.tlsrpt.store").KEYS_PER_TXN, tostring(most))
      assert.is_true(flushes >= 3)
      local n = 0
      for _ in pairs(snapshot(store)) do n = n + 1 end
      assert.equal(1200, n)
      store:close()
    end
  end)

  it("refuses a store that commits by itself (without the position)", function()
    local store = assert(tlsrpt.open{ path = dir .. "/db" })
    assert.has_error(function() postfix_log.follow{ file = log_path, store = store } end,
      "bad argument #1 to 'follow' (store must be opened with batch_size and batch_interval " ..
      "math.huge)")
    store:close()
  end)

  it("reads the new file from its start when the old one is gone, and says so", function()
    util.write(log_path, upto(63))
    local a = open_store()
    local fa = follow(a, { from_start = true })
    fa:step()
    assert(fa:close())
    a:close()
    os.remove(log_path)
    util.write(log_path, table.concat(LINES, "\n", 91) .. "\n")
    local b = open_store()
    local logged = {}
    local fb = follow(b, { log = function(level, m) logged[#logged + 1] = level .. " " .. m end })
    fb:step()
    assert(fb:close())
    assert.matches("^warning postfix%-log: .* changed while stopped", logged[1])
    -- the connections begun in the old file are unknown, not sessions without TLS
    assert.is_true(fb.reader.partial)
    local st = b:stats()
    assert.equal(1, #st.days)
    b:close()
  end)

  it("waits for a file that is not there yet, and says so; and why it cannot open one", function()
    local store = open_store()
    local logged = {}
    local f = follow(store, { log = function(l, m) logged[#logged + 1] = l .. " " .. m end })
    assert.equal(0, f:step())
    assert.equal(0, f:step())
    assert.equal(1, #logged)
    assert.matches("^notice postfix%-log: waiting for .*journalctl", logged[1])
    util.write(log_path, text)
    f:step()
    assert(f:close())
    assert.same(want(), snapshot(store))
    store:close()
  end)

  it("warns when a file is there and cannot be opened", function()
    local store = open_store()
    local logged, there = {}, false
    local f = follow(store, { log = function(l, m) logged[#logged + 1] = l .. " " .. m end,
      stat = function(p)
        -- there, and io.open fails (as for a file of mode 000, which root reads anyway)
        if p == log_path and there then return { dev = 1, ino = 2, size = 10, mode = "file" } end
        return postfix_log.stat(p)
      end })
    there, logged = true, {}
    assert.equal(0, f:step())
    assert.equal(0, f:step())
    assert.equal(1, #logged)
    assert.matches("^warning postfix%-log: cannot open the new .*maillog", logged[1])
    assert(f:close())
    store:close()
  end)

  it("fails for a directory; stat works without LuaFileSystem too", function()
    local store = open_store()
    local f, msg, code = postfix_log.follow{ file = dir, store = store }
    assert.is_nil(f)
    assert.equal("eisdir", code)
    assert.matches("is a directory", msg)
    store:close()
    util.write(log_path, "abc\n")
    local a = postfix_log.stat(log_path)
    local b = postfix_log.stat_command(log_path)
    assert.same(a, b)
    assert.equal(4, b.size)
    local none, _, ncode = postfix_log.stat_command(dir .. "/nothing")
    assert.is_nil(none)
    assert.equal("enoent", ncode)
  end)

  it("reads a stream (standard input) and marks the journal cursor of json lines", function()
    local store = open_store()
    local input = assert(io.open(FIX .. "journal.json", "rb"))
    local f = follow(store, { input = input, file = "-" })
    local ok, why = f:run{ signals = false, interval = 0.01 }
    input:close()
    assert.is_true(ok)
    assert.equal("eof", why)
    assert(f:close())
    local mark = store:mark("postfix-log:-")
    assert.matches("^journal s=%x+;i=%x+;", mark)
    assert.equal(14, #store:domains(store:days()[1]))
    assert.has_error(function() f:step() end,
      "attempt to use a closed mtasts.postfix_log.follower")
    store:close()
  end)
end)

describe("mtasts postfix-log (the command)", function()
  local dir, cleanup
  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function() cleanup() end)

  -- standard output only (the log lines go to standard error)
  local function mtasts_cmd(args)
    return util.run(util.lua_cmd() .. " bin/mtasts --db " .. dir .. "/db " .. args ..
      " 2>" .. dir .. "/stderr")
  end

  it("reads standard input to its end, records, and prints its counts", function()
    local out, status = mtasts_cmd("postfix-log - < " .. FIX .. "maillog")
    assert.equal(0, status, out)
    assert.matches("^121 lines: 44 used, 77 ignored; 17 sessions recorded %(10 successful, 7 " ..
      "failed%)", out)
    out, status = mtasts_cmd("--json report stats")
    assert.equal(0, status, out)
    local days = require("cjson").decode(out).days
    assert.equal(1, #days)
    assert.equal(10, days[1].success)
    assert.equal(7, days[1].failure)
  end)

  it("reads lines up to 16 KiB long on standard input, and skips longer ones", function()
    local function line(n, len)
      local l = ("Nov 30 10:00:00 m postfix/smtp[%d]: Q%d: to=<u@d%d.example>, relay=mx.d%d." ..
        "example[192.0.2.1]:25, delay=1, status=sent (250 ok "):format(n, n, n, n)
      return l .. ("x"):rep(len - #l - 1) .. ")"
    end
    local v = "Nov 30 10:00:00 m postfix/smtp[%d]: Verified TLS connection established to " ..
      "mx.d%d.example[192.0.2.1]:25: TLSv1.3 with cipher X\n"
    util.write(dir .. "/log", v:format(1, 1) .. line(1, 4203) .. "\n" .. v:format(2, 2) ..
      line(2, 40000) .. "\n" .. v:format(3, 3) .. line(3, 16000) .. "\n")
    local out, status = mtasts_cmd("--json postfix-log - < " .. dir .. "/log")
    assert.equal(0, status, out)
    local stats = require("cjson").decode(out)
    assert.equal(2, stats.sessions)
    assert.equal(6, stats.lines)
    assert.equal(1, stats.ignored)
  end)

  it("records the journal cursor of journalctl -o json lines, and prints it", function()
    local out, status = mtasts_cmd("postfix-log --cursor")
    assert.equal(1, status, out)
    assert.equal("", out)
    out, status = mtasts_cmd("--json postfix-log < " .. FIX .. "journal.json")
    assert.equal(0, status, out)
    local stats = require("cjson").decode(out)
    assert.equal("eof", stats.stopped)
    assert.equal(17, stats.sessions)
    out, status = mtasts_cmd("postfix-log --cursor")
    assert.equal(0, status, out)
    local last = read("journal.json"):match('"__CURSOR":"([^"]+)"[^\n]*\n$')
    assert.equal(last .. "\n", out)
  end)

  it("refuses --from-start with standard input, and a directory for FILE", function()
    local _, status = mtasts_cmd("postfix-log --from-start -")
    assert.equal(64, status)
    assert.matches("^mtasts: %-%-from%-start: only for a FILE", util.run("cat " .. dir ..
      "/stderr"))
    local out
    out, status = mtasts_cmd("--json postfix-log " .. dir)
    assert.equal(3, status, out)
    assert.same({ code = "eisdir", error = dir .. ": is a directory" },
      require("cjson").decode(out))
  end)
end)
