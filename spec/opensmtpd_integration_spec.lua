-- Real OpenSMTPD (Debian's package, unpacked into build/opensmtpd by scripts/opensmtpd) with
-- the mtasts filter, inside a private network and mount namespace
-- (spec/support/opensmtpd_world.lua): a TLS report mailed to it is parsed, stored and
-- marked; an ordinary message passes untouched.
local cjson = require("cjson")
local tlsrpt = require("mtasts.tlsrpt")
local util = require("support.util")

describe("OpenSMTPD with the mtasts filter #fixture", function()
  local result

  setup(function()
    local dir = util.tmpdir()
    local root = util.run("pwd"):gsub("%s+$", "") .. "/build/opensmtpd"
    local out, status = util.run("timeout -s KILL 120 unshare --net --mount " ..
      util.lua_cmd() .. " spec/support/opensmtpd_world.lua " .. dir .. " " .. root)
    util.run("rm -rf '" .. dir .. "'")
    assert.equal(0, status, out)
    result = cjson.decode(out:match("{.*}"))
    assert(result.ok, result.error)
  end)

  it("runs isolated, with a configuration smtpd accepts", function()
    assert.is_true(result.isolated)
    assert.matches("configuration OK", result.check, 1, true)
  end)

  it("stores a mailed report and marks the message as parsed", function()
    assert.equal("", result.send_report)
    assert.equal(1, #result.reports)
    local report = assert(tlsrpt.parse_report(result.reports[1]))
    assert.equal("20261120.report.example@r", report["report-id"])
    assert.equal(42, report.policies[1].summary["total-successful-session-count"])
    local msg
    for _, m in ipairs(result.delivered) do
      if m:find("Delivered-To: tlsrpt@report.example", 1, true) then msg = m end
    end
    assert.truthy(msg, "the report was not delivered")
    assert.matches("X-Mtasts-TLSRPT: parsed; report-id=20261120.report.example@r; " ..
      "organization=Reporter Org; policies=report.example", msg, 1, true)
    assert.equal("20261120.report.example@r", assert(tlsrpt.parse_report(
      msg:gsub("\r?\n", "\r\n")))["report-id"])
  end)

  it("passes other mail through untouched", function()
    assert.equal("", result.send_plain)
    local msg
    for _, m in ipairs(result.delivered) do
      if m:find("Delivered-To: user@report.example", 1, true) then msg = m end
    end
    assert.truthy(msg, "the plain message was not delivered")
    assert.is_nil(msg:find("X-Mtasts-TLSRPT", 1, true))
    assert.matches("\n.leading dot\nbye\n", msg, 1, true)
  end)
end)
