-- Real Postfix from Debian using `mtasts serve postfix` as smtp_tls_policy_maps, delivering
-- to a second real Postfix that plays four MX hosts with STARTTLS. Everything runs inside a
-- private network and mount namespace (spec/support/postfix_world.lua): loopback only, and
-- a resolv.conf pointing Postfix's MX lookups at the fixture DNS server on 127.0.0.1:53.
local cjson = require("cjson")
local util = require("support.util")

describe("Postfix with mtasts serve postfix #fixture", function()
  local result

  setup(function()
    local dir = util.tmpdir()
    util.run("mkdir -p " .. dir .. "/pm && touch " .. dir .. "/pm/main.cf")
    local out, status = util.run("timeout -s KILL 240 unshare --net --mount " ..
      util.lua_cmd() .. " spec/support/postfix_world.lua " .. dir)
    util.run("rm -rf '" .. dir .. "'")
    assert.equal(0, status, out)
    result = cjson.decode(out:match("{.*}"))
    assert(result.ok, result.error)
  end)

  it("runs isolated: nothing but loopback is reachable", function()
    assert.is_true(result.isolated)
  end)

  it("delivers to an enforce domain whose MX certificate verifies", function()
    assert.equal(1, result.delivered.good)
    assert.matches("Verified TLS connection established to mx.good.example", result.sender_log,
      1, true)
    assert.matches("to=<user@good.example>, relay=mx.good.example%[127.0.0.2%]:25.-status=sent",
      result.sender_log)
  end)

  it("defers an enforce domain whose MX certificate has the wrong name", function()
    assert.equal(0, result.delivered.badcert)
    assert.matches("to=<user@badcert.example>.-status=deferred %(Server certificate not " ..
      "verified%)", result.sender_log)
  end)

  it("defers an enforce domain whose MX the policy does not list", function()
    assert.equal(0, result.delivered.nomatch)
    assert.matches("to=<user@nomatch.example>.-status=deferred", result.sender_log)
  end)

  it("delivers to a testing domain anyway", function()
    assert.equal(1, result.delivered.testing)
    assert.matches("to=<user@testing.example>.-status=sent", result.sender_log)
  end)

  it("answers postmap -q inside the namespace", function()
    assert.equal("secure match=mx.good.example servername=hostname",
      (result.postmap:gsub("%s+$", "")))
  end)
end)
