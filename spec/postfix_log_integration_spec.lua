-- `mtasts postfix-log` on the log of a real Postfix 3.7 (Debian's) delivering through `mtasts
-- serve postfix` to a second Postfix that plays one MX host per case, inside a private network
-- and mount namespace (spec/support/postfix_log_world.lua): the reports built from the result
-- store hold exactly the TLS sessions Postfix had, field by field; a second reader started
-- later goes on from the recorded position.
local cjson = require("cjson")
local util = require("support.util")

describe("mtasts postfix-log on real Postfix #fixture", function()
  local result

  setup(function()
    local dir = util.tmpdir()
    local out, status = util.run("timeout -s KILL 300 unshare --net --mount " ..
      util.lua_cmd() .. " spec/support/postfix_log_world.lua " .. dir)
    util.run("rm -rf '" .. dir .. "'")
    assert.equal(0, status, out)
    result = cjson.decode(out:match("{.*}"))
    assert(result.ok, result.error)
  end)

  -- Each domain's report, its days added up (a run across midnight has two).
  local function reports()
    local out = {}
    for _, day in ipairs(result.days) do
      for domain, r in pairs(result.reports[day]) do
        assert.equal(1, #r.policies, domain)
        local p = r.policies[1]
        local mine = out[domain]
        if not mine then
          mine = { policy = p.policy, success = 0, failure = 0, details = {} }
          out[domain] = mine
        end
        assert.same(mine.policy, p.policy)
        mine.success = mine.success + p.summary["total-successful-session-count"]
        mine.failure = mine.failure + p.summary["total-failure-session-count"]
        for _, d in ipairs(p["failure-details"]) do mine.details[#mine.details + 1] = d end
      end
    end
    return out
  end

  local function sts(domain, mode, mx)
    mx = mx or { "mx." .. domain }
    local strings = { "version: STSv1", "mode: " .. mode }
    for _, m in ipairs(mx) do strings[#strings + 1] = "mx: " .. m end
    strings[#strings + 1] = "max_age: 86400"
    return { ["policy-type"] = "sts", ["policy-domain"] = domain, ["policy-string"] = strings,
      ["mx-host"] = mx }
  end
  local function none(domain)
    return { ["policy-type"] = "no-policy-found", ["policy-domain"] = domain,
      ["policy-string"] = {}, ["mx-host"] = {} }
  end
  local function failure(result_type, mx, ip, reason)
    return { ["result-type"] = result_type, ["receiving-mx-hostname"] = mx,
      ["receiving-ip"] = ip, ["failure-reason-code"] = reason, ["failed-session-count"] = 1 }
  end

  it("runs isolated, and Postfix delivered or deferred every message", function()
    assert.is_true(result.isolated)
    assert.is_true(result.settled)
    assert.is_true(result.settled_more)
  end)

  it("followed the log while Postfix delivered, and stopped on SIGTERM, committing", function()
    local r = result.reader1
    assert.equal(0, r.status, r.log)
    assert.equal("signal 15", r.stats.stopped)
    assert.equal(17, r.stats.sessions)
    assert.equal(10, r.stats.success)
    assert.equal(7, r.stats.failure)
    -- plain's message and plaincached's three, no TLS, no policy: each over a connection of
    -- its own (not counted) or over a cached one (conn_use=2, 3), as Postfix's timing goes
    assert.equal(4, r.stats.plaintext + r.stats.reused)
    assert.equal(0, r.stats.errors)
    assert.equal(r.stats.lines, r.stats.used + r.stats.ignored)
    assert.matches("following .* from byte 0\n", r.log)
  end)

  it("went on from the recorded position: only the mail sent while it was stopped", function()
    local r = result.reader2
    assert.equal(0, r.status, r.log)
    assert.matches("the recorded position", r.log, 1, true)
    assert.equal(2, r.stats.sessions)        -- good.example, and multi.example's 3 recipients
    assert.equal(2, r.stats.success)
    assert.is_true(r.stats.replayed > 0)
  end)

  it("stores exactly the sessions Postfix had, field by field", function()
    local got = reports()
    -- the handshake's reason is OpenSSL's text: checked apart
    local hs = got["handshake.example"].details[1]
    assert.matches("^tls%-handshake%-failure", hs["failure-reason-code"])
    hs["failure-reason-code"] = "tls-handshake-failure"
    local want = {
      ["good.example"] = { policy = sts("good.example", "enforce"), success = 2, failure = 0,
        details = {} },
      ["multi.example"] = { policy = sts("multi.example", "enforce"), success = 2, failure = 0,
        details = {} },
      ["cached.example"] = { policy = sts("cached.example", "enforce"), success = 3,
        failure = 0, details = {} },
      ["testing.example"] = { policy = sts("testing.example", "testing"), success = 1,
        failure = 0, details = {} },
      ["expired.example"] = { policy = sts("expired.example", "enforce"), success = 0,
        failure = 1, details = { failure("certificate-expired", "mx.expired.example",
          "127.0.0.3", "certificate has expired") } },
      ["wrongname.example"] = { policy = sts("wrongname.example", "enforce"), success = 0,
        failure = 1, details = { failure("certificate-host-mismatch", "mx.wrongname.example",
          "127.0.0.4", "num=62:hostname mismatch") } },
      ["untrusted.example"] = { policy = sts("untrusted.example", "enforce"), success = 0,
        failure = 1, details = { failure("certificate-not-trusted", "mx.untrusted.example",
          "127.0.0.5", "untrusted issuer /CN=mtasts untrusted CA") } },
      ["nostarttls.example"] = { policy = sts("nostarttls.example", "enforce"), success = 0,
        failure = 1, details = { failure("starttls-not-supported", "mx.nostarttls.example",
          "127.0.0.6") } },
      ["handshake.example"] = { policy = sts("handshake.example", "enforce"), success = 0,
        failure = 1, details = { failure("validation-failure", "mx.handshake.example",
          "127.0.0.7", "tls-handshake-failure") } },
      ["nomatch.example"] = { policy = sts("nomatch.example", "enforce",
        { "mx.nomatch.example" }), success = 0, failure = 1, details = {
          failure("validation-failure", "mx.elsewhere.example", "127.0.0.13",
            "mtasts-policy-mx-mismatch") } },
      ["twomx.example"] = { policy = sts("twomx.example", "enforce",
        { "mx1.twomx.example", "mx2.twomx.example" }), success = 1, failure = 1, details = {
          failure("certificate-expired", "mx1.twomx.example", "127.0.0.14",
            "certificate has expired") } },
      ["nopolicy.example"] = { policy = none("nopolicy.example"), success = 1, failure = 0,
        details = {} },
      ["nopolicyexp.example"] = { policy = none("nopolicyexp.example"), success = 1,
        failure = 0, details = {} },
      ["mayhs.example"] = { policy = none("mayhs.example"), success = 1, failure = 0,
        details = {} },
    }
    assert.same(want, got)
  end)

  it("mtasts report build writes a report for each of those domains", function()
    local n = 0
    for path in result.build:gmatch("[^\n]+") do
      n = n + 1
      assert.matches("/mail%.sender%.example!%a+%.example!%d+!%d+%.json%.gz$", path)
    end
    local domains = 0
    for _, day in ipairs(result.days) do
      for _ in pairs(result.reports[day]) do domains = domains + 1 end
    end
    assert.equal(domains, n)
    assert.is_nil(result.build:find("plain", 1, true))
  end)
end)
