-- Real Postfix from Debian doing DANE with `mtasts serve postfix` as smtp_tls_policy_maps:
-- a signed example. zone (NSD) validated by Debian's unbound on 127.0.0.1:53, the sender's
-- libc resolver pointed at it, and a receiving Postfix playing the MX hosts. Everything runs
-- inside a private network and mount namespace (spec/support/postfix_dane_world.lua):
-- loopback only.
local cjson = require("cjson")
local util = require("support.util")

describe("Postfix DANE with mtasts serve postfix #fixture", function()
  local result

  setup(function()
    local dir = util.tmpdir()
    util.run("mkdir -p " .. dir .. "/pm && touch " .. dir .. "/pm/main.cf")
    local out, status = util.run("timeout -s KILL 240 unshare --net --mount " ..
      util.lua_cmd() .. " spec/support/postfix_dane_world.lua " .. dir)
    util.run("rm -rf '" .. dir .. "'")
    assert.equal(0, status, out)
    result = cjson.decode(out:match("{.*}"))
    assert(result.ok, result.error)
  end)

  it("runs isolated: nothing but loopback is reachable", function()
    assert.is_true(result.isolated)
  end)

  it("answers dane-only for DNSSEC-secure MX records with TLSA, dane for a bogus TLSA", function()
    assert.same({ good = "dane-only", bad = "dane-only", bogus = "dane", insecure = "" },
      result.postmap)
  end)

  it("Postfix's own lookups are DNSSEC-validated (unbound on 127.0.0.1:53)", function()
    assert.not_matches("DNSSEC validation may be unavailable", result.sender_log, 1, true)
    assert.not_matches("non DNSSEC destination", result.sender_log, 1, true)
  end)

  it("delivers to the MX host whose certificate matches its TLSA record", function()
    assert.equal(1, result.delivered.good)
    assert.matches("Verified TLS connection established to mx.good.example", result.sender_log,
      1, true)
    assert.matches("to=<user@good.example>, relay=mx.good.example%[127.0.0.2%]:25.-status=sent",
      result.sender_log)
  end)

  it("defers the MX host whose certificate does not match its TLSA record", function()
    assert.equal(0, result.delivered.bad)
    assert.matches("mx.bad.example[127.0.0.3]:25: num=65:no matching DANE TLSA records",
      result.sender_log, 1, true)
    assert.matches("to=<user@bad.example>.-status=deferred %(Server certificate not verified%)",
      result.sender_log)
  end)

  it("defers a host whose TLSA records fail validation (bogus)", function()
    assert.equal(0, result.delivered.bogus)
    assert.matches("to=<user@bogus.example>.-status=deferred %(TLSA lookup error for " ..
      "mx.bogus.example:25%)", result.sender_log)
    assert.matches("validation failure <_25._tcp.mx.bogus.example. TLSA IN>",
      result.unbound_log, 1, true)
  end)

  it("delivers to an unsigned domain with opportunistic TLS (no DANE, no policy)", function()
    assert.equal(1, result.delivered.insecure)
    assert.matches("Untrusted TLS connection established to mx.insecure.example",
      result.sender_log, 1, true)
    assert.matches("to=<user@insecure.example>.-status=sent", result.sender_log)
  end)
end)
