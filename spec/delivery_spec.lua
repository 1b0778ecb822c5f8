-- mtasts.delivery: per-MX decisions (docs/conformance.md §6) and session outcomes.
local delivery = require("mtasts.delivery")
local tlsrpt = require("mtasts.tlsrpt")
local mtasts = require("mtasts")

local function policy(mode)
  return assert(mtasts.parse_policy("version: STSv1\nmode: " .. mode ..
    "\nmx: mx1.example.com\nmx: *.backup.example.com\nmax_age: 86400\n"))
end
local MX = { "mx1.example.com", "a.backup.example.com", "evil.example.org" }

local function result(mode)
  return tlsrpt.sts_result("example.com", "version: STSv1\nmode: " .. mode .. "\n", policy(mode))
end

describe("mtasts.delivery.plan with DANE", function()
  local REC = { usage = 3, selector = 1, mtype = 1, data = ("\1"):rep(32) }
  local function dane(hosts, mx_secure)
    return { mx_secure = mx_secure ~= false, hosts = hosts }
  end

  it("usable TLSA records over a secure path decide, whatever MTA-STS says", function()
    local r = result("enforce")
    local plan = delivery.plan{ domain = "example.com", mx = MX, policy = policy("enforce"),
      result = r, dane = dane({ ["evil.example.org"] = { status = "secure",
        records = { REC }, usable = 1 } }) }
    assert.same({ host = "evil.example.org", tls = "dane", verify_pkix = false,
      tlsa = { REC } }, plan.hosts[3])
    assert.same({}, plan.skipped, "no mx-mismatch for a DANE host")
    assert.same({}, r.failures)
    assert.is_false(plan.plaintext_fallback)
  end)

  it("insecure, no records, or an insecure MX set: MTA-STS as before", function()
    for _, d in ipairs({
      dane({ ["mx1.example.com"] = { status = "insecure", records = { REC }, usable = 1 } }),
      dane({ ["mx1.example.com"] = { status = "secure", records = {}, usable = 0 } }),
      dane({ ["mx1.example.com"] = { status = "secure", records = { REC }, usable = 1 } },
        false) }) do
      local plan = delivery.plan{ domain = "example.com", mx = MX, policy = policy("testing"),
        result = result("testing"), dane = d }
      assert.equal("opportunistic", plan.hosts[1].tls)
      assert.is_true(plan.plaintext_fallback)
    end
  end)

  it("secure TLSA records none of which is usable: TLS without authentication", function()
    local plan = delivery.plan{ domain = "example.com", mx = { "mx1.example.com" },
      dane = dane({ ["mx1.example.com"] = { status = "secure", usable = 0,
        records = { { usage = 1, selector = 1, mtype = 1, data = ("\1"):rep(32) } } } }) }
    assert.same({ { host = "mx1.example.com", tls = "required", verify_pkix = false } },
      plan.hosts)
    assert.is_false(plan.plaintext_fallback)
  end)

  it("a bogus or failed TLSA lookup skips the host; none left defers", function()
    local plan = delivery.plan{ domain = "example.com", mx = { "mx1.example.com", "mx2.example" },
      dane = dane({ ["mx1.example.com"] = { status = "bogus" } }) }
    assert.same({ { host = "mx1.example.com", reason = "tlsa-lookup-failed" } }, plan.skipped)
    assert.equal("mx2.example", plan.hosts[1].host)
    plan = delivery.plan{ domain = "example.com", mx = { "mx1.example.com" },
      dane = dane({ ["mx1.example.com"] = { status = "failed" } }) }
    assert.same({}, plan.hosts)
    assert.matches("TLSA lookup failed", plan.defer, 1, true)
    assert.is_false(plan.plaintext_fallback)
  end)

  it("a bogus MX RRset defers", function()
    local plan = delivery.plan{ domain = "example.com", mx = MX,
      dane = { mx_secure = false, hosts = {}, code = "bogus", error = "MX: bogus" } }
    assert.matches("MX records of example.com are bogus", plan.defer, 1, true)
    assert.same({}, plan.hosts)
  end)

  it("REQUIRETLS is met by DANE hosts alone; TLS-Required: No ignores DANE too", function()
    local d = dane({ ["mx1.example.com"] = { status = "secure", records = { REC }, usable = 1 } })
    local plan = delivery.plan{ domain = "example.com", mx = MX, require_tls = true, dane = d }
    assert.is_nil(plan.fail)
    assert.equal(1, #plan.hosts)
    assert.equal("dane", plan.hosts[1].tls)
    assert.equal(2, #plan.skipped)
    assert.equal("requiretls-without-dane", plan.skipped[1].reason)
    plan = delivery.plan{ domain = "example.com", mx = MX, tls_required_no = true, dane = d }
    assert.equal("opportunistic", plan.hosts[1].tls)
    assert.has_error(function() delivery.plan{ mx = MX, dane = 5 } end,
      "bad argument #1 to 'plan' (dane must be a table)")
  end)
end)

describe("mtasts.delivery.plan", function()
  it("enforce: TLS required on matching hosts, others skipped and reported", function()
    local r = result("enforce")
    local plan = delivery.plan{ domain = "example.com", mx = MX, policy = policy("enforce"),
      result = r }
    assert.same({ { host = "mx1.example.com", tls = "required", verify_pkix = true },
      { host = "a.backup.example.com", tls = "required", verify_pkix = true } }, plan.hosts)
    assert.same({ { host = "evil.example.org", reason = "mx-mismatch" } }, plan.skipped)
    assert.is_false(plan.plaintext_fallback)
    assert.same({ { result_type = "validation-failure",
      failure_reason_code = "mtasts-policy-mx-mismatch",
      receiving_mx_hostname = "evil.example.org", count = 1 } }, r.failures)
  end)
  it("testing: every host, opportunistic, mismatches reported", function()
    local r = result("testing")
    local plan = delivery.plan{ domain = "example.com", mx = MX, policy = policy("testing"),
      result = r }
    assert.equal(3, #plan.hosts)
    for _, h in ipairs(plan.hosts) do assert.equal("opportunistic", h.tls) end
    assert.same({}, plan.skipped)
    assert.is_true(plan.plaintext_fallback)
    assert.equal(1, #r.failures)
  end)
  it("none or no policy: every host opportunistic, plaintext fallback allowed", function()
    for _, p in ipairs({ policy("none"), false }) do
      local plan = delivery.plan{ domain = "example.com", mx = MX, policy = p or nil }
      assert.equal(3, #plan.hosts)
      assert.is_true(plan.plaintext_fallback)
    end
  end)
  it("accepts MX tables and names in any case with a trailing dot", function()
    local plan = delivery.plan{ domain = "example.com", policy = policy("enforce"),
      mx = { { host = "MX1.Example.COM.", preference = 10 } } }
    assert.equal("required", plan.hosts[1].tls)
  end)
  it("TLS-Required: No ignores the policy", function()
    local plan = delivery.plan{ domain = "example.com", mx = MX, policy = policy("enforce"),
      tls_required_no = true }
    assert.equal(3, #plan.hosts)
    assert.is_true(plan.plaintext_fallback)
    assert.same({}, plan.skipped)
  end)
  it("defers on a temporary policy error, unless TLS-Required: No", function()
    local plan = delivery.plan{ domain = "example.com", mx = MX, policy_error = "dns timeout" }
    assert.matches("dns timeout", plan.defer, 1, true)
    assert.same({}, plan.hosts)
    plan = delivery.plan{ domain = "example.com", mx = MX, policy_error = "dns timeout",
      tls_required_no = true }
    assert.is_nil(plan.defer)
    assert.equal(3, #plan.hosts)
  end)
  it("REQUIRETLS needs an enforced policy", function()
    local plan = delivery.plan{ domain = "example.com", mx = MX, policy = policy("testing"),
      require_tls = true }
    assert.matches("REQUIRETLS", plan.fail, 1, true)
    assert.same({}, plan.hosts)
    plan = delivery.plan{ domain = "example.com", mx = MX, policy = policy("enforce"),
      require_tls = true }
    assert.is_nil(plan.fail)
    assert.equal("required", plan.hosts[1].tls)
    assert.is_false(plan.plaintext_fallback)
  end)
  it("raises on misuse", function()
    assert.has_error(function() delivery.plan() end,
      "bad argument #1 to 'plan' (table expected, got nil)")
    assert.has_error(function() delivery.plan{ mx = MX, nope = 1 } end,
      "bad argument #1 to 'plan' (unknown option 'nope')")
    assert.has_error(function() delivery.plan{ domain = "x" } end,
      "bad argument #1 to 'plan' (mx must be a table)")
  end)
end)

describe("mtasts.delivery.outcome", function()
  it("counts successes and merges equal failures", function()
    local r = result("enforce")
    delivery.outcome(r, "mx1.example.com", { ok = true })
    delivery.outcome(r, "mx1.example.com", { ok = true })
    local fail = { result_type = "certificate-expired", receiving_ip = "192.0.2.1" }
    delivery.outcome(r, "mx1.example.com", fail)
    delivery.outcome(r, "mx1.example.com", fail)
    delivery.outcome(r, "mx1.example.com", { result_type = "certificate-expired",
      receiving_ip = "192.0.2.2" })
    assert.same({ success = 2, failure = 3 }, r.summary)
    assert.equal(2, #r.failures)
    assert.equal(2, r.failures[1].count)
    assert.equal("mx1.example.com", r.failures[1].receiving_mx_hostname)
    assert.equal(1, r.failures[2].count)
  end)
  it("raises on misuse", function()
    assert.has_error(function() delivery.outcome({}, "h", { ok = true }) end,
      "bad argument #1 to 'outcome' (a TLSRPT result expected)")
    assert.has_error(function() delivery.outcome(result("none"), "h", { reason = "x" }) end,
      "bad argument #3 to 'outcome' (result_type required for a failure)")
  end)
end)
