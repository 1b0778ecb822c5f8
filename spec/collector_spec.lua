-- The libtlsrpt datagram collector (docs/tlsrpt-collector.md): the parser on every kind of
-- datagram, then the real socket: datagrams sent by spec/support/dgsend.c (the library's way:
-- a new socket each, non-blocking unless said), counted, committed and reported field by
-- field; a collector killed mid-stream; `mtasts serve tlsrpt` and `serve postfix
-- --tlsrpt-listen`.
local core = require("mtasts.core")
local cjson = require("cjson")
local tlsrpt = require("mtasts.tlsrpt")
local collector = require("mtasts.tlsrpt.collector")
local util = require("support.util")
local proc = require("support.proc")

local SEND = "build/support/dgsend"
local PR = "v=TLSRPTv1; rua=mailto:tlsrpt@dom0.example"

-- the worked examples of the format (libtlsrpt 0.5.1's bytes)
local STS_OK = '{"dpv": "1","d": "dom0.example","pr": "' .. PR .. '","policies":[{"policy-type"' ..
  ':2,"policy-domain": "dom0.example","policy-string":["version: STSv1","mode: enforce","mx: ' ..
  'mx1.dom0.example","mx: mx2.dom0.example","max_age: 604800"],"mx-host":["mx1.dom0.example",' ..
  '"mx2.dom0.example"],"t":0,"f":0}]}'
local HELO = "mx1.dom0.example\\r\\nPIPELINING\\r\\nSIZE 10240000\\r\\nSTARTTLS\\r\\n8BITMIME"
local STS_EXPIRED = '{"dpv": "1","d": "dom0.example","pr": "' .. PR .. '","policies":[{' ..
  '"policy-type":2,"policy-domain": "dom0.example","policy-string":["version: STSv1","mode: ' ..
  'enforce","mx: mx1.dom0.example","mx: mx2.dom0.example","max_age: 604800"],"mx-host":[' ..
  '"mx1.dom0.example","mx2.dom0.example"],"failure-details":[{"c":204,"s": "192.0.2.25","n": ' ..
  '"mx1.dom0.example","h": "' .. HELO .. '","r": "198.51.100.1"}],"t":1,"f":1}]}'
local TLSA_FAIL = '{"dpv": "1","d": "dom0.example","pr": "' .. PR .. '","policies":[{' ..
  '"policy-type":1,"policy-domain": "mx1.dom0.example","policy-string":["3 1 1 C7F198E7401A' ..
  'BDB4D405D68778A8713120BF418B5B2EE0F326C3B345BC4CBAFB","2 1 1 F546EA827B8F17B2709B7CA258CD' ..
  'D7BDA3A8220CF67998F39B33A9BD8E146393"],"failure-details":[{"c":205,"s": "192.0.2.25","n": ' ..
  '"mx1.dom0.example","h": "' .. HELO .. '","r": "198.51.100.1","f": ' ..
  '"all-trust-anchors-unusable"}],"t":1,"f":1}]}'
local NONE_OK = '{"dpv": "1","d": "dom0.example","pr": "' .. PR .. '","policies":[{' ..
  '"policy-type":9,"policy-domain": "dom0.example","t":0,"f":0}]}'

local RESULT_TYPES = { [201] = "starttls-not-supported", [202] = "certificate-host-mismatch",
  [203] = "certificate-not-trusted", [204] = "certificate-expired",
  [205] = "validation-failure", [301] = "sts-policy-fetch-error", [302] = "sts-policy-invalid",
  [303] = "sts-webpki-invalid", [304] = "tlsa-invalid", [305] = "dnssec-invalid",
  [306] = "dane-required" }

local function failing(c, extra)
  return '{"dpv":"1","d":"fail.example","pr":"v=TLSRPTv1; rua=mailto:r@fail.example",' ..
    '"policies":[{"policy-type":2,"policy-domain":"fail.example","policy-string":[' ..
    '"version: STSv1","mode: enforce","mx: mx.fail.example","max_age: 86400"],"mx-host":[' ..
    '"mx.fail.example"],"failure-details":[{"c":' .. c .. ',"n":"mx.fail.example"' ..
    (extra or "") .. '}],"t":1,"f":1}]}'
end

describe("libtlsrpt datagrams (dgram_parse)", function()
  it("reads an MTA-STS success as one successful session under its policy", function()
    local e, info = assert(core.dgram_parse(STS_OK))
    assert.equal(1, #e)
    assert.same({ domain = "dom0.example", record = PR, result = {
      policy = { type = "sts", domain = "dom0.example", strings = { "version: STSv1",
        "mode: enforce", "mx: mx1.dom0.example", "mx: mx2.dom0.example", "max_age: 604800" },
        mx_host = { "mx1.dom0.example", "mx2.dom0.example" } },
      summary = { success = 1, failure = 0 }, failures = {} } }, e[1])
    assert.same({ sessions = 1, repaired = 0, t_mismatch = 0, unknown_type = 0 }, info)
  end)

  it("reads a failure as a failed session and one failure detail, fields named", function()
    local e = assert(core.dgram_parse(TLSA_FAIL))
    assert.equal(2, #e)
    assert.same({ success = 0, failure = 1 }, e[1].result.summary)
    assert.equal("tlsa", e[1].result.policy.type)
    assert.equal("mx1.dom0.example", e[1].result.policy.domain)
    assert.same({ success = 0, failure = 0 }, e[2].result.summary)
    assert.same({ { result_type = "validation-failure", sending_mta_ip = "192.0.2.25",
      receiving_mx_hostname = "mx1.dom0.example",
      receiving_mx_helo = "mx1.dom0.example\r\nPIPELINING\r\nSIZE 10240000\r\nSTARTTLS\r\n8BITMIME",
      receiving_ip = "198.51.100.1", failure_reason_code = "all-trust-anchors-unusable",
      count = 1 } }, e[2].result.failures)
  end)

  it("maps every failure code to its RFC 8460 result type", function()
    for c, name in pairs(RESULT_TYPES) do
      local e = assert(core.dgram_parse(failing(c)))
      assert.equal(name, e[2].result.failures[1].result_type)
      assert.is_nil(e[2].result.failures[1].failure_reason_code)
    end
  end)

  it("keeps the session of a failure code it does not know, without inventing a type", function()
    local e, info = assert(core.dgram_parse(failing(299)))
    assert.equal(1, #e)
    assert.same({ success = 0, failure = 1 }, e[1].result.summary)
    assert.equal(1, info.unknown_type)
  end)

  it("reads a no-policy-found success, and a datagram without dpv (an older library)", function()
    local e = assert(core.dgram_parse(NONE_OK))
    assert.same({ type = "no-policy-found", domain = "dom0.example", strings = {},
      mx_host = {} }, e[1].result.policy)
    e = assert(core.dgram_parse('{"d":"old.example","policies":[{"policy-type":9,"f":0}]}'))
    assert.equal("old.example", e[1].result.policy.domain)   -- policy-domain defaults to d
    assert.is_nil(e[1].record)
  end)

  it("counts k sessions for k policies, and checks t only to count a mismatch", function()
    local e, info = assert(core.dgram_parse('{"d":"k.example","policies":[' ..
      '{"policy-type":9,"f":0,"t":2},{"policy-type":2,"f":1},{"policy-type":1,' ..
      '"policy-domain":"mx.k.example","f":0}]}'))
    assert.equal(3, #e)
    assert.equal(3, info.sessions)
    assert.equal(1, info.t_mismatch)
  end)

  it("normalises the domains: lower case, one trailing dot removed", function()
    local e = assert(core.dgram_parse('{"d":"Dom0.Example.","policies":[{"policy-type":1,' ..
      '"policy-domain":"MX1.dom0.example.","f":0}]}'))
    assert.equal("dom0.example", e[1].domain)
    assert.equal("mx1.dom0.example", e[1].result.policy.domain)
  end)

  it("repairs invalid UTF-8 and lone surrogates, and decodes escapes", function()
    local e, info = assert(core.dgram_parse('{"d":"u.example","pr":"caf\233 \\ud83d\\ude00 ' ..
      '\\ud800 \\"q\\" \\u00e9\\/","policies":[{"policy-type":9,"f":0}]}'))
    assert.equal("caf\239\191\189 \240\159\152\128 \239\191\189 \"q\" \195\169/", e[1].record)
    assert.equal(1, info.repaired)
  end)

  it("skips members it does not know, of any shape", function()
    local e = assert(core.dgram_parse('{"x":{"y":[1,2.5e3,true,null,{"z":"w"}]},"d":' ..
      '"s.example","policies":[{"policy-type":9,"f":0,"extra":[[]]}]}'))
    assert.equal(1, #e)
  end)

  local REFUSED = {
    { "not JSON", "policy-type", "json" },
    { "truncated", STS_OK:sub(1, 100), "json" },
    { "bytes after the object", STS_OK .. "x", "json" },
    { "an array", "[" .. STS_OK .. "]", "json" },
    { "empty", "", "json" },
    { "dpv 2", '{"dpv":"2","d":"v.example","policies":[{"policy-type":9,"f":0}]}', "version" },
    { "dpv a number", '{"dpv":1,"d":"v.example","policies":[{"policy-type":9,"f":0}]}',
      "version" },
    { "no d", '{"policies":[{"policy-type":9,"f":0}]}', "missing" },
    { "no policies", '{"d":"v.example"}', "missing" },
    { "no policy", '{"d":"v.example","policies":[]}', "missing" },
    { "no f", '{"d":"v.example","policies":[{"policy-type":9}]}', "missing" },
    { "no policy-type", '{"d":"v.example","policies":[{"f":0}]}', "missing" },
    { "a detail without c", '{"d":"v.example","policies":[{"policy-type":9,"f":1,' ..
      '"failure-details":[{"n":"x"}]}]}', "missing" },
    { "policy-type 3", '{"d":"v.example","policies":[{"policy-type":3,"f":0}]}',
      "policy-type" },
    { "f 2", '{"d":"v.example","policies":[{"policy-type":9,"f":2}]}', "invalid" },
    { "f 0.0", '{"d":"v.example","policies":[{"policy-type":9,"f":0.0}]}', "invalid" },
    { "d not a domain", '{"d":"a b","policies":[{"policy-type":9,"f":0}]}', "invalid" },
    { "d empty", '{"d":"","policies":[{"policy-type":9,"f":0}]}', "invalid" },
    { "d a number", '{"d":7,"policies":[{"policy-type":9,"f":0}]}', "invalid" },
    { "d twice", '{"d":"a.example","d":"b.example","policies":[{"policy-type":9,"f":0}]}',
      "invalid" },
    { "a string list with a number", '{"d":"v.example","policies":[{"policy-type":2,' ..
      '"policy-string":[1],"f":0}]}', "invalid" },
    { "a control byte in a string", '{"d":"v.example","pr":"a\1b","policies":[' ..
      '{"policy-type":9,"f":0}]}', "json" },
    { "65 policies", '{"d":"v.example","policies":[' ..
      string.rep('{"policy-type":9,"f":0},', 64) .. '{"policy-type":9,"f":0}]}', "limit" },
    { "nested 40 deep", '{"x":' .. string.rep("[", 40) .. string.rep("]", 40) ..
      ',"d":"v.example","policies":[{"policy-type":9,"f":0}]}', "limit" },
  }
  for _, case in ipairs(REFUSED) do
    it("refuses " .. case[1] .. " (" .. case[3] .. ")", function()
      local e, msg, reason = core.dgram_parse(case[2])
      assert.is_nil(e)
      assert.equal(case[3], reason)
      assert.is_string(msg)
      assert.is_true(#msg > 0)
    end)
  end

  it("refuses a datagram whose results would pass 1 MiB, at once", function()
    -- every entry repeats its policy's key: 64 policies of 64 details over a long record
    local det = string.rep('{"c":201},', 63) .. '{"c":201}'
    local pol = '{"policy-type":2,"f":1,"failure-details":[' .. det .. ']}'
    local s = '{"d":"a.example","pr":"' .. string.rep("x", 168000) .. '","policies":[' ..
      string.rep(pol .. ",", 63) .. pol .. "]}"
    local t0 = core.monotonic()
    local e, msg, reason = core.dgram_parse(s)
    assert.is_nil(e)
    assert.equal("limit", reason)
    assert.matches("pass 1048576 bytes", msg)
    assert.is_true(core.monotonic() - t0 < util.within(1))
  end)

  it("never raises or overreads on random bytes and mutations", function()
    util.seed()
    local seeds = { STS_OK, STS_EXPIRED, TLSA_FAIL, NONE_OK }
    for i = 1, 3000 do
      local s = seeds[i % 4 + 1]
      local p = math.random(1, #s)
      local mutated = s:sub(1, p - 1) .. util.random_bytes(math.random(0, 3)) ..
        s:sub(p + math.random(0, 3))
      local e, msg, reason = core.dgram_parse(mutated)
      assert(e or (type(msg) == "string" and type(reason) == "string"))
    end
  end)
end)

-- datagrams in dgsend's raw format: u32 big-endian length + bytes each
local function raw_file(path, list)
  local parts = {}
  for i, d in ipairs(list) do parts[i] = string.pack(">s4", d) end
  util.write(path, table.concat(parts))
end

-- TLS sessions in the result store of a database directory, or of an open store
local function stored_sessions(store)
  local own = type(store) == "string"
  if own then store = assert(tlsrpt.open{ path = store }) end
  local total = 0
  for _, d in ipairs(store:stats().days) do total = total + d.success + d.failure end
  if own then store:close() end
  return total
end

-- wait until a collector started elsewhere has made its socket
local function wait_socket(path)
  assert(proc.poll(function() return select(2, util.run("test -S " .. path)) == 0 end,
    util.within(10)), path .. " was not made")
end

describe("the collector on its socket", function()
  local dir, cleanup, c, now, logged
  local day = "2026-11-20"
  local function open(extra)
    local opts = { path = dir .. "/db", listen = "unix:" .. dir .. "/t.sock",
      clock = function() return now end,
      log = function(level, msg) logged[#logged + 1] = level .. ": " .. msg end }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return collector.open(opts)
  end
  local function send(list, flags)
    raw_file(dir .. "/raw", list)
    local out, status = util.run(SEND .. " " .. dir .. "/t.sock raw " .. dir .. "/raw " ..
      (flags or "--blocking"))
    assert.equal(0, status, out)
    return cjson.decode(out)
  end
  local function wait_received(n)
    assert(proc.poll(function() return c:stats().received >= n end, util.within(10)),
      "the collector did not read " .. n .. " datagrams")
  end
  before_each(function()
    dir, cleanup = util.tmpdir()
    now = tlsrpt.day_start(day) + 3600
    logged = {}
    c = nil
  end)
  after_each(function()
    if c then c:release() end
    cleanup()
  end)

  it("records each kind of datagram and builds the day's report field by field", function()
    c = assert(open())
    local list = {}
    for _ = 1, 7 do list[#list + 1] = STS_OK end
    list[#list + 1] = STS_EXPIRED
    list[#list + 1] = TLSA_FAIL
    list[#list + 1] = NONE_OK
    for code in pairs(RESULT_TYPES) do list[#list + 1] = failing(code) end
    local r = send(list)
    assert.equal(#list, r.sent)
    wait_received(#list)
    assert(c:step())
    local st = c:stats()
    assert.equal(#list, st.accepted)
    assert.equal(#list, st.committed)
    assert(c:close())
    c = nil
    local store = assert(tlsrpt.open{ path = dir .. "/db", submitter = "mail.sender.example",
      organization = "Sender Org", contact = "tlsrpt@sender.example" })
    local rep = assert(store:report("dom0.example", day))
    assert.equal("20261120.dom0.example@mail.sender.example", rep["report-id"])
    assert.same({ ["start-datetime"] = "2026-11-20T00:00:00Z",
      ["end-datetime"] = "2026-11-20T23:59:59Z" }, rep["date-range"])
    assert.equal(3, #rep.policies)
    local by = {}
    for _, p in ipairs(rep.policies) do by[p.policy["policy-type"]] = p end
    assert.same({ ["policy-type"] = "sts", ["policy-domain"] = "dom0.example",
      ["policy-string"] = { "version: STSv1", "mode: enforce", "mx: mx1.dom0.example",
        "mx: mx2.dom0.example", "max_age: 604800" },
      ["mx-host"] = { "mx1.dom0.example", "mx2.dom0.example" } }, by.sts.policy)
    assert.same({ ["total-successful-session-count"] = 7, ["total-failure-session-count"] = 1 },
      by.sts.summary)
    assert.same({ { ["result-type"] = "certificate-expired", ["sending-mta-ip"] = "192.0.2.25",
      ["receiving-mx-hostname"] = "mx1.dom0.example",
      ["receiving-mx-helo"] = "mx1.dom0.example\r\nPIPELINING\r\nSIZE 10240000\r\nSTARTTLS\r\n" ..
        "8BITMIME", ["receiving-ip"] = "198.51.100.1", ["failed-session-count"] = 1 } },
      by.sts["failure-details"])
    -- DANE results stay in the recipient domain's report, policy-domain the MX host
    assert.equal("mx1.dom0.example", by.tlsa.policy["policy-domain"])
    assert.same({ ["total-successful-session-count"] = 0, ["total-failure-session-count"] = 1 },
      by.tlsa.summary)
    assert.equal("all-trust-anchors-unusable",
      by.tlsa["failure-details"][1]["failure-reason-code"])
    -- and a no-policy-found session is reported beside a tlsa one, as the datagram said
    assert.same({ ["total-successful-session-count"] = 1, ["total-failure-session-count"] = 0 },
      by["no-policy-found"].summary)
    -- every failure code, in fail.example's report
    local frep = assert(store:report("fail.example", day))
    local seen = {}
    for _, d in ipairs(frep.policies[1]["failure-details"]) do
      seen[d["result-type"]] = d["failed-session-count"]
    end
    for _, name in pairs(RESULT_TYPES) do assert.equal(1, seen[name], name) end
    assert.equal(11, frep.policies[1].summary["total-failure-session-count"])
    assert.same({ { domain = "dom0.example", host = false }, { domain = "fail.example",
      host = false } }, store:domains(day))
    store:close()
  end)

  it("counts what it refuses by reason, logs it, and goes on", function()
    c = assert(open())
    send({ "nonsense", '{"dpv":"9","d":"v.example","policies":[{"policy-type":9,"f":0}]}',
      STS_OK:sub(1, 50), '{"d":"v.example","policies":[{"policy-type":4,"f":0}]}', NONE_OK })
    wait_received(5)
    assert(c:step())
    local st = c:stats()
    assert.equal(1, st.accepted)
    assert.same({ json = 2, version = 1, missing = 0, invalid = 0, ["policy-type"] = 1,
      limit = 0, nomem = 0 }, st.rejected)
    assert.matches("policy%-type", st.last)
    assert(c:close())
    c = nil
    local line = table.concat(logged, "\n")
    assert.matches("4 datagrams not counted %(json 2, policy%-type 1, version 1%)", line)
  end)

  it("reads a datagram of 200 KB, and counts one over its 256 KiB buffer as oversized", function()
    c = assert(open())
    local big = '{"d":"big.example","pr":"' .. string.rep("x", 200000) ..
      '","policies":[{"policy-type":9,"f":0}]}'
    local huge = '{"d":"big.example","pr":"' .. string.rep("x", 300000) ..
      '","policies":[{"policy-type":9,"f":0}]}'
    local r = send({ big, huge }, "--blocking --reuse --sndbuf 4000000")
    assert.equal(2, r.sent)
    wait_received(2)
    assert(c:step())
    local st = c:stats()
    assert.equal(1, st.accepted)
    assert.equal(1, st.oversized)
    assert(c:close())
    c = nil
  end)

  it("loses nothing from a blocking sender", function()
    c = assert(open())
    local out, status = util.run(SEND .. " " .. dir .. "/t.sock mix 20000 --blocking")
    assert.equal(0, status, out)
    local r = cjson.decode(out)
    assert.same({ 20000, 0 }, { r.sent, r.eagain })
    wait_received(20000)
    assert(c:step())
    assert.equal(20000, c:stats().committed)
    assert.equal(20000, stored_sessions(c.store))
  end)

  it("refuses a socket another collector listens on, and a file that is no socket", function()
    c = assert(open())
    local c2, msg, code = open()
    assert.is_nil(c2)
    assert.equal("listen", code)
    assert.matches("another collector is listening", msg)
    assert(c:close())
    c = nil
    -- its socket file is gone; a stale one (left by a kill) is replaced
    assert.is_nil(io.open(dir .. "/t.sock"))
    util.write(dir .. "/t.sock", "not a socket")
    local c3, msg3, code3 = open()
    assert.is_nil(c3)
    assert.equal("listen", code3)
    assert.matches("exists and is not a socket", msg3)
  end)

  it("counts what a killed collector lost even after a start that failed", function()
    local listen = "unix:" .. dir .. "/sub/t.sock"
    os.execute("mkdir '" .. dir .. "/sub'")
    c = assert(open{ listen = listen })
    raw_file(dir .. "/raw", { NONE_OK, NONE_OK, NONE_OK })
    util.run(SEND .. " " .. dir .. "/sub/t.sock raw " .. dir .. "/raw --blocking")
    wait_received(3)
    c:release()           -- as a kill: nothing committed
    c = nil
    os.execute("rm -rf '" .. dir .. "/sub'")
    local bad, _, code = open{ listen = listen }   -- the same socket: its directory is gone
    assert.is_nil(bad)
    assert.equal("listen", code)
    os.execute("mkdir '" .. dir .. "/sub'")
    c = assert(open{ listen = listen })
    assert.equal(3, c:stats().lost_at_start)
    assert.matches("accepted 3 datagrams it did not commit: lost", table.concat(logged, "\n"))
  end)

  it("refuses a relative socket path and a group id out of range", function()
    local _, msg, code, key = open{ listen = "unix:run/tlsrpt/tlsrpt.sock" }
    assert.same({ "config", "listen" }, { code, key })
    assert.matches("not an absolute path", msg)
    _, msg, code, key = open{ socket_group = "99999999999" }
    assert.same({ "config", "socket_group" }, { code, key })
    assert.matches("not a group id", msg)
  end)

  it("gives the socket the mode and group asked for", function()
    c = assert(open{ socket_mode = "0620", socket_group = "mail" })
    assert.equal("620", util.mode(dir .. "/t.sock"))
    assert.equal("mail", (util.run("stat -c %G " .. dir .. "/t.sock"):gsub("%s+$", "")))
    local bad, msg, code, key = open{ socket_group = "no-such-group-here" }
    assert.is_nil(bad)
    assert.same({ "config", "socket_group" }, { code, key })
    assert.matches("no group", msg)
    local _
    _, _, code, key = open{ listen = "inet:127.0.0.1:1" }
    assert.same({ "config", "listen" }, { code, key })
    _, _, code, key = open{ socket_mode = "999" }
    assert.same({ "config", "socket_mode" }, { code, key })
  end)

  it("reports to the record the MTA used, without looking it up", function()
    c = assert(open())
    send({ NONE_OK })
    wait_received(1)
    assert(c:close())
    c = nil
    local mailed = dir .. "/mailed"
    now = tlsrpt.day_start(day) + 2 * 86400
    local store = assert(tlsrpt.open{ path = dir .. "/db", submitter = "mail.sender.example",
      window = 0, clock = function() return now end,
      sendmail = "cat > " .. mailed,
      resolver = { txt = function() error("no lookup expected") end }, fetcher = {} })
    local sum = assert(store:send(day))
    assert.equal(1, sum.sent)
    local f = assert(io.open(mailed))
    local msg = f:read("a")
    f:close()
    assert.matches("To: tlsrpt@dom0.example", msg, 1, true)
    store:close()
  end)
end)

describe("a collector killed mid-stream", function()
  local dir, cleanup
  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function()
    proc.stop_all()
    cleanup()
  end)

  local function start(log)
    local pid = proc.spawn("tlsrpt", util.lua_cmd() .. " bin/mtasts --db " .. dir ..
      "/db serve tlsrpt --listen unix:" .. dir .. "/t.sock", log)
    wait_socket(dir .. "/t.sock")
    return pid
  end
  -- how many datagrams the running collector has accepted (its state file)
  local function accepted()
    local name = util.run("ls " .. dir .. "/db/collector-*.state 2>/dev/null"):match("%S+")
    local f = name and io.open(name, "rb")
    if not f then return 0 end
    local s = f:read(24)
    f:close()
    if not s or #s < 24 then return 0 end
    return (string.unpack("<I8", s, 17))
  end
  local function sessions() return stored_sessions(dir .. "/db") end

  it("keeps what it committed, counts what it lost on restart, and drains at SIGTERM", function()
    local pid = start(dir .. "/log1")
    local out = util.run(SEND .. " " .. dir .. "/t.sock mix 3000 --blocking")
    assert.equal(3000, cjson.decode(out).sent)
    -- committed within a second or two
    assert(proc.poll(function() return sessions() == 3000 end, util.within(10)))
    out = util.run(SEND .. " " .. dir .. "/t.sock mix 2000 --blocking")
    assert.equal(2000, cjson.decode(out).sent)
    assert(proc.poll(function() return accepted() == 5000 end, util.within(10)))
    proc.signal(pid, "KILL")
    assert(proc.poll(function() return not proc.alive(pid) end, util.within(10)))
    local kept = sessions()
    assert.is_true(kept >= 3000 and kept <= 5000)
    -- the restart replaces the stale socket and says how many were lost
    pid = start(dir .. "/log2")
    local lost = 5000 - kept
    if lost > 0 then
      assert(proc.poll(function()
        local f = io.open(dir .. "/log2")
        local t = f and f:read("a") or ""
        if f then f:close() end
        return t:find("accepted " .. lost .. " datagrams it did not commit: lost", 1, true)
      end, util.within(10)))
    end
    -- what is queued at SIGTERM is read and committed before it exits
    out = util.run(SEND .. " " .. dir .. "/t.sock mix 1000 --blocking")
    assert.equal(1000, cjson.decode(out).sent)
    proc.stop(pid)
    assert.equal(kept + 1000, sessions())
    assert.is_nil(io.open(dir .. "/t.sock"))
  end)
end)

describe("mtasts serve tlsrpt and serve postfix --tlsrpt-listen", function()
  local dir, cleanup
  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function()
    proc.stop_all()
    cleanup()
  end)

  local function cli(rest)
    return util.run(util.lua_cmd() .. " bin/mtasts --config /dev/null --db " .. dir .. "/db " ..
      rest)
  end

  it("refuses a bad address, mode or group at start with exit 78", function()
    for _, case in ipairs({
      { "serve tlsrpt --listen inet:127.0.0.1:9", "%-%-listen: " },
      { "serve tlsrpt --listen unix:" .. dir .. "/s --socket-mode 999", "%-%-socket%-mode: " },
      { "serve tlsrpt --listen unix:" .. dir .. "/s --socket-group no-such-grp",
        "%-%-socket%-group: " },
      { "serve postfix --listen inet:127.0.0.1:0 --tlsrpt-listen tcp:x", "%-%-tlsrpt%-listen: " },
    }) do
      local out, status = cli(case[1])
      assert.equal(78, status, out)
      assert.matches("^mtasts: " .. case[2], out)
    end
  end)

  it("runs the collector beside the socketmap server in one process", function()
    local log = dir .. "/log"
    local pid = proc.spawn("postfix", util.lua_cmd() .. " bin/mtasts --config /dev/null --db " ..
      dir .. "/db serve postfix --listen inet:127.0.0.1:0 --refresh-interval 0 " ..
      "--tlsrpt-listen unix:" .. dir .. "/t.sock", log)
    wait_socket(dir .. "/t.sock")
    local out = util.run(SEND .. " " .. dir .. "/t.sock mix 100 --blocking")
    assert.equal(100, cjson.decode(out).sent)
    proc.stop(pid)
    assert.equal(100, stored_sessions(dir .. "/db"))
  end)
end)
