-- DANE decisions on the signed fixture world (support.dnssec.dane_world): discover.dane and
-- sts:dane, delivery.plan with DANE first, `mtasts check`, and the socketmap server's
-- dane-only / dane / TEMP answers, all against real signed zones served by NSD.
local resolver = require("mtasts.resolver")
local discover = require("mtasts.discover")
local delivery = require("mtasts.delivery")
local mtasts = require("mtasts")
local postfix = require("mtasts.postfix")
local socket = require("cqueues.socket")
local util = require("support.util")
local proc = require("support.proc")

describe("DANE on the signed fixture world #fixture", function()
  local dnssec = require("support.dnssec")
  local w, r, dir, cleanup, ca, crt, key
  setup(function()
    dir, cleanup = util.tmpdir()
    ca = require("support.ca").new(dir .. "/ca")
    crt, key = ca:issue("mx.dane-ee.example")
    w = dnssec.dane_world{ ee = crt }
    r = assert(resolver.new(w:resolver_opts{ timeout = 2 }))
  end)
  teardown(function()
    if r then r:close() end
    if w then w.stop() end
    proc.stop_all()
    if cleanup then cleanup() end
  end)

  it("discover.dane: each domain's DANE state", function()
    local d = discover.dane(r, "dane-ee.example")
    assert.is_true(d.mx_secure)
    local h = d.hosts["mx.dane-ee.example"]
    assert.equal("secure", h.status)
    assert.equal(1, h.usable)
    assert.equal("tlsa", h.result.policy.type)
    assert.equal(1, discover.dane(r, "dane-ta.example").hosts["mx.dane-ta.example"].usable)
    assert.equal(1, discover.dane(r, "cname.example").hosts["mx.cname.example"].usable)
    local none = discover.dane(r, "nodane.example").hosts["mx.nodane.example"]
    assert.equal("secure", none.status)
    assert.equal(0, none.usable)
    assert.is_false(discover.dane(r, "insecure.example").mx_secure, "an unsigned zone's MX")
    assert.equal("bogus", discover.dane(r, "bogus.example").hosts["mx.bogus.example"].status)
    local slow = discover.dane(r, "slow.example").hosts["mx.slow.example"]
    assert.equal("failed", slow.status)
    assert.equal("timeout", slow.code)
  end)

  it("delivery.plan: DANE decides, a bogus or timed-out TLSA lookup defers", function()
    local function plan(domain)
      return delivery.plan{ domain = domain, mx = { "mx." .. domain },
        dane = discover.dane(r, domain) }
    end
    assert.equal("dane", plan("dane-ee.example").hosts[1].tls)
    assert.equal("opportunistic", plan("nodane.example").hosts[1].tls)
    assert.equal("opportunistic", plan("insecure.example").hosts[1].tls)
    assert.matches("TLSA lookup failed", plan("bogus.example").defer, 1, true)
    assert.matches("TLSA lookup failed", plan("slow.example").defer, 1, true)
  end)

  it("serve postfix answers dane-only, dane for a failed TLSA lookup, else MTA-STS", function()
    local client = assert(mtasts.open{ path = dir .. "/cache", resolver = r,
      fetcher = { fetch = function(_, d)
        return nil, "mta-sts." .. d .. ": no policy (HTTP 404)", "no-policy", "http-status-404"
      end } })
    local srv = assert(postfix.new{ client = client, listen = { "inet:127.0.0.1:0" },
      refresh = false })
    local port = tonumber(srv:addresses()[1]:match(":(%d+)$"))
    local got = {}
    srv.loop:wrap(function()
      for _, d in ipairs({ "dane-ee.example", "bogus.example", "nodane.example",
        "insecure.example" }) do
        local con = assert(socket.connect("127.0.0.1", port))
        con:setmode("b", "b")
        con:write(postfix.netstring("postfix " .. d))
        con:flush()
        local buf = ""
        while true do
          local v = postfix.netstring_decode(buf, 10000)
          if v then got[d] = v break end
          local chunk = con:xread(-4096, "b", 20)
          if not chunk then break end
          buf = buf .. chunk
        end
        con:close()
      end
      srv:stop()
    end)
    srv:run{ signals = false }
    srv:close()
    client:close()
    assert.equal("OK dane-only", got["dane-ee.example"])
    assert.equal("OK dane", got["bogus.example"])
    assert.equal("NOTFOUND ", got["nodane.example"])
    assert.equal("NOTFOUND ", got["insecure.example"])
  end)

  it("a Lua host verifies the chain its TLS handshake got with dane.verify", function()
    local dane = require("mtasts.dane")
    local port = proc.free_port()
    proc.spawn("s_server", "openssl s_server -quiet -accept 127.0.0.1:" .. port .. " -cert " ..
      crt .. " -key " .. key .. " -naccept 10", dir .. "/s_server.log")
    assert(proc.poll(function() return proc.tcp_open(port) end, 10))
    -- the chain the server sent, as a host's TLS library hands it over (PEM, leaf first)
    local chain = util.run("openssl s_client -connect 127.0.0.1:" .. port ..
      " -servername mx.dane-ee.example -showcerts </dev/null 2>/dev/null")
    assert.matches("BEGIN CERTIFICATE", chain, 1, true)
    local tlsa = assert(r:tlsa("mx.dane-ee.example", 25))
    assert.equal("secure", tlsa.dnssec)
    local ok, info = dane.verify(chain, tlsa, { names = { "mx.dane-ee.example" },
      now = os.time() })
    assert.is_true(ok, info and info.reason)
    assert.same({ usage = 3, selector = 1, mtype = 1, depth = 0 }, info)
    -- the same chain against another domain's records does not match
    ok, info = dane.verify(chain, assert(r:tlsa("mx.mismatch.example", 25)),
      { names = { "mx.mismatch.example" }, now = os.time() })
    assert.is_false(ok)
    assert.equal("validation-failure", info.result_type)
  end)

  it("mtasts check shows the DNSSEC status, the TLSA records and that DANE wins", function()
    local o = w:resolver_opts{}
    local cmd = util.lua_cmd() .. " bin/mtasts --nameserver " .. o.nameserver ..
      " --trust-anchor " .. o.trust_anchor .. " --timeout 3 "
    local out = util.run(cmd .. "check dane-ee.example 2>&1")
    assert.matches("DNSSEC:   MX records secure", out, 1, true)
    assert.matches("TLSA:     mx.dane-ee.example 3 1 1 " .. w.data.ee, out, 1, true)
    assert.matches("wins:     DANE", out, 1, true)
    assert.matches("deliver:  mx.dane-ee.example, TLS dane", out, 1, true)
    local j = require("cjson").decode((util.run(cmd .. "--json check dane-ee.example")))
    assert.equal("dane", j.wins)
    assert.is_true(j.dane.mx_secure)
    assert.same({ "3 1 1 " .. w.data.ee }, j.dane.hosts["mx.dane-ee.example"].records)
    out = util.run(cmd .. "check insecure.example 2>&1")
    assert.matches("DNSSEC:   MX records not secure (no DANE)", out, 1, true)
  end)
end)
