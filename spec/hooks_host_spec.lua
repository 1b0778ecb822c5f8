-- examples/hooks_host.lua end to end: MX lookups from NSD, policies from nginx, SMTP with
-- STARTTLS to a real Postfix playing four MX hosts on loopback ports, TLSRPT results in the
-- store.
local tlsrpt = require("mtasts.tlsrpt")
local util = require("support.util")
local proc = require("support.proc")

describe("examples/hooks_host.lua #fixture", function()
  local world = {}
  local DAY = "2026-11-20"
  -- name, policy mode (nil: none), certificate
  local DOMAINS = { { "good", "enforce", "valid" }, { "badcert", "enforce", "wrongname" },
    { "testing", "testing", "wrongname" }, { "plain", nil, "valid" } }

  setup(function()
    local dir = util.tmpdir()
    world.dir = dir
    local ca = require("support.ca").new(dir .. "/ca")
    world.ca = ca
    local records, sites, smtpd, boxes, map = {}, {}, {}, {}, {}
    for _, d in ipairs(DOMAINS) do
      local name, mode, cert = d[1], d[2], d[3]
      records[#records + 1] = name .. " IN MX 10 mx." .. name
      records[#records + 1] = "mx." .. name .. " IN A 127.0.0.1"
      if mode then
        records[#records + 1] = ('_mta-sts.%s IN TXT "v=STSv1; id=1;"'):format(name)
        records[#records + 1] = "mta-sts." .. name .. " IN A 127.0.0.1"
        sites[#sites + 1] = { host = "mta-sts." .. name .. ".example", body = ("version: STSv1\n" ..
          "mode: %s\nmx: mx.%s.example\nmax_age: 86400\n"):format(mode, name) }
      end
      local crt, key
      if cert == "wrongname" then crt, key = ca:issue("wrong.example")
      else crt, key = ca:issue("mx." .. name .. ".example") end
      local port = proc.free_port()
      smtpd[#smtpd + 1] = { address = "127.0.0.1:" .. port, cert = crt, key = key }
      boxes[#boxes + 1] = "user@" .. name .. ".example"
      map[#map + 1] = "--smtp mx." .. name .. ".example=127.0.0.1:" .. port
    end
    world.dns = require("support.dns").start({ ["example."] = records })
    world.web = require("support.https").start(ca, sites)
    world.mta = require("support.postfix").start(boxes, { hostname = "mx.receiver.example",
      smtpd = smtpd })
    util.write(dir .. "/msg.eml", "From: postmaster@sender.example\r\nSubject: hello\r\n\r\nhi\r\n")
    world.cmd = util.lua_cmd() .. " examples/hooks_host.lua --db " .. dir .. "/db --nameserver " ..
      world.dns.nameserver .. " --allow-private-addresses --cafile " .. ca.cafile ..
      " --connect-to :443:127.0.0.1:" ..
      world.web.port .. " --day " .. DAY .. " " .. table.concat(map, " ") .. " " .. dir ..
      "/msg.eml"
  end)

  teardown(function()
    if world.mta then world.mta.stop() end
    if world.web then world.web.stop() end
    if world.dns then world.dns.stop() end
    proc.stop_all()
    if world.dir then util.run("rm -rf '" .. world.dir .. "'") end
  end)

  it("delivers as the policies say and records the TLS outcomes", function()
    local out, status = util.run(world.cmd .. " user@good.example user@badcert.example " ..
      "user@testing.example user@plain.example")
    assert.equal(0, status, out)
    assert.matches("user@good.example\tdelivered\tmx.good.example\tTLS", out, 1, true)
    assert.matches("user@badcert.example\tdeferred\tmx.badcert.example", out, 1, true)
    assert.matches("user@testing.example\tdelivered\tmx.testing.example\tplain", out, 1, true)
    assert.matches("user@plain.example\tdelivered\tmx.plain.example\tTLS", out, 1, true)
    for _, d in ipairs({ { "good", 1 }, { "badcert", 0 }, { "testing", 1 }, { "plain", 1 } }) do
      local got = #world.mta:wait_messages("user@" .. d[1] .. ".example", d[2], 10)
      assert.equal(d[2], got, d[1] .. ": " .. world.mta.log())
    end

    local store = assert(tlsrpt.open{ path = world.dir .. "/db" })
    local function policy(domain)
      local r = assert(store:report(domain, DAY), domain)
      return r.policies[1]
    end
    local good = policy("good.example")
    assert.equal("sts", good.policy["policy-type"])
    assert.equal(1, good.summary["total-successful-session-count"])
    local bad = policy("badcert.example")
    assert.equal(1, bad.summary["total-failure-session-count"])
    assert.equal("certificate-host-mismatch", bad["failure-details"][1]["result-type"])
    assert.equal("mx.badcert.example", bad["failure-details"][1]["receiving-mx-hostname"])
    local testing = policy("testing.example")
    assert.equal(1, testing.summary["total-failure-session-count"])
    local plain = policy("plain.example")
    assert.equal("no-policy-found", plain.policy["policy-type"])
    assert.equal(1, plain.summary["total-successful-session-count"])
    store:close()
  end)
end)
