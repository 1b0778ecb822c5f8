-- mtasts.hooks with a fake client and a real result store.
local hooks = require("mtasts.hooks")
local tlsrpt = require("mtasts.tlsrpt")
local mtasts = require("mtasts")
local util = require("support.util")

local DAY = "2026-11-20"
local NOW = tlsrpt.day_start(DAY) + 3600
local TEXT = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.backup.example.com\n" ..
  "max_age: 86400\n"

local function fake_client(behaviour)
  local c = { calls = {} }
  function c.get(_, domain, opts)
    c.calls[#c.calls + 1] = { domain = domain, force = opts and opts.force }
    local b = behaviour[domain]
    if b == "error" then
      local r = { policy = { type = "sts", domain = domain }, summary = { success = 0,
        failure = 0 }, failures = {} }
      tlsrpt.add_failure(r, "sts-policy-fetch-error", "connection-refused")
      return nil, r, false, "fetch failed", "policy-fetch"
    end
    if b then
      local p = assert(mtasts.parse_policy(b))
      return p, tlsrpt.sts_result(domain, b, p), true
    end
    return nil, tlsrpt.no_policy_result(domain), true
  end
  function c.close() end
  return c
end

describe("mtasts.hooks", function()
  local dir, cleanup, store, h
  before_each(function()
    dir, cleanup = util.tmpdir()
    store = assert(tlsrpt.open{ path = dir, submitter = "mail.sender.example",
      clock = function() return NOW end })
  end)
  after_each(function()
    if h then h:close() end
    store:close()
    cleanup()
  end)
  local function report(domain)
    local r, trigger = store:report(domain, DAY)
    return r and r.policies[1], trigger
  end

  it("DANE first: a DANE host's sessions go to tlsa results, for the domain and the MX host",
    function()
    local REC = { usage = 3, selector = 1, mtype = 1, data = ("\9"):rep(32) }
    local client = fake_client({ ["example.com"] = TEXT })
    function client.dane(_, domain, names)
      assert.equal("example.com", domain)
      assert.same({ "mx1.example.com" }, names)
      return { mx_secure = true, hosts = { ["mx1.example.com"] = { status = "secure",
        records = { REC }, usable = 1 } } }
    end
    h = assert(hooks.new{ client = client, store = store })
    local msg = {}
    local hosts = assert(h:get_mx("example.com", { "mx1.example.com" }, msg))
    assert.same({ { host = "mx1.example.com", priority = 1, tls = "dane", verify_pkix = false,
      plaintext_fallback = false, tlsa = { REC } } }, hosts)
    assert(h:session(msg, "example.com", "mx1.example.com", { result_type = "validation-failure",
      failure_reason_code = "dane-no-match" }))
    assert(h:delivered(msg, "example.com", "mx1.example.com"))
    assert(store:flush())
    local p = report("example.com")
    assert.equal("tlsa", p.policy["policy-type"])
    assert.same({ "3 1 1 " .. ("09"):rep(32) }, p.policy["policy-string"])
    assert.equal(1, p.summary["total-failure-session-count"])
    local mxr = assert(store:report("mx1.example.com", DAY, { host = true }))
    local mxp = mxr.policies[1]
    assert.equal("tlsa", mxp.policy["policy-type"])
    assert.equal("mx1.example.com", mxp.policy["policy-domain"])
  end)

  it("enforce: allowed hosts by priority, TLS required; a delivery is a success", function()
    h = assert(hooks.new{ client = fake_client({ ["example.com"] = TEXT }), store = store })
    local msg = {}
    local hosts = assert(h:get_mx("example.com", { { host = "b.backup.example.com", priority = 20 },
      { host = "evil.example.org", priority = 5 }, { host = "mx1.example.com", priority = 10 } },
      msg))
    assert.same({
      { host = "mx1.example.com", priority = 10, tls = "required", verify_pkix = true,
        plaintext_fallback = false },
      { host = "b.backup.example.com", priority = 20, tls = "required", verify_pkix = true,
        plaintext_fallback = false } }, hosts)
    assert(h:delivered(msg, "example.com", "mx1.example.com", { receiving_ip = "192.0.2.1" }))
    local p = report("example.com")
    assert.equal(1, p.summary["total-successful-session-count"])
    assert.equal("mtasts-policy-mx-mismatch", p["failure-details"][1]["failure-reason-code"])
    assert.equal("evil.example.org", p["failure-details"][1]["receiving-mx-hostname"])
  end)

  it("records each TLS session: a failed one, then a delivery on the next host", function()
    h = assert(hooks.new{ client = fake_client({ ["example.com"] = TEXT }), store = store })
    local msg = {}
    assert(h:get_mx("example.com", { "mx1.example.com", "a.backup.example.com" }, msg))
    h:session(msg, "example.com", "mx1.example.com", { result_type = "certificate-expired",
      failure_reason_code = "certificate-expired", receiving_ip = "192.0.2.1" })
    h:session(msg, "example.com", "a.backup.example.com", { ok = true })
    h:delivered(msg, "example.com", "a.backup.example.com")
    local p = report("example.com")
    assert.equal(1, p.summary["total-successful-session-count"])
    assert.equal(1, p.summary["total-failure-session-count"])
    assert.equal("certificate-expired", p["failure-details"][1]["result-type"])
  end)

  it("deferred with a TLS failure records it; the attempt ends once", function()
    h = assert(hooks.new{ client = fake_client({ ["example.com"] = TEXT }), store = store })
    local msg = {}
    assert(h:get_mx("example.com", { "mx1.example.com" }, msg))
    h:deferred(msg, "example.com", "mx1.example.com", { result_type = "starttls-not-supported" })
    h:deferred(msg, "example.com", "mx1.example.com", { result_type = "starttls-not-supported" })
    local p = report("example.com")
    assert.equal(1, p.summary["total-failure-session-count"])
  end)

  it("a temporary policy error defers, and is recorded; TLS-Required: No goes on", function()
    local client = fake_client({ ["example.com"] = "error" })
    h = assert(hooks.new{ client = client, store = store })
    local hosts, msg, kind = h:get_mx("example.com", { "mx1.example.com" }, {})
    assert.is_nil(hosts)
    assert.equal("defer", kind)
    assert.matches("fetch failed", msg)
    local p = report("example.com")
    assert.equal(1, p.summary["total-failure-session-count"])
    hosts = assert(h:get_mx("example.com", { "mx1.example.com" }, { tls_required_no = true }))
    assert.equal("opportunistic", hosts[1].tls)
    assert.is_true(hosts[1].plaintext_fallback)
  end)

  it("REQUIRETLS without an enforced policy fails; force is passed on", function()
    local client = fake_client({})
    h = assert(hooks.new{ client = client, store = store })
    local hosts, _, kind = h:get_mx("plain.example", { "mx.plain.example" }, { require_tls = true },
      { force = true })
    assert.is_nil(hosts)
    assert.equal("fail", kind)
    assert.is_true(client.calls[1].force)
  end)

  it("results of delivering a report never cause a report", function()
    h = assert(hooks.new{ client = fake_client({ ["example.com"] = TEXT }), store = store })
    local msg = { headers = { ["TLS-Report-Domain"] = "other.example" } }
    assert(h:get_mx("example.com", { "mx1.example.com" }, msg))
    h:delivered(msg, "example.com", "mx1.example.com")
    local p, trigger = report("example.com")
    assert.equal(1, p.summary["total-successful-session-count"])
    assert.is_false(trigger)
  end)

  it("no MX allowed by an enforce policy defers", function()
    h = assert(hooks.new{ client = fake_client({ ["example.com"] = TEXT }), store = store })
    local hosts, _, kind = h:get_mx("example.com", { "evil.example.org" }, {})
    assert.is_nil(hosts)
    assert.equal("defer", kind)
  end)
end)
