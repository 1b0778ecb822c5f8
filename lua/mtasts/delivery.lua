--- mtasts.delivery: what a sending MTA does with a policy, per MX host (docs/conformance.md §6,
-- mox queue/direct.go). Pure decisions on tables; nothing here does I/O.
-- Reference: docs/delivery.md.
local core = require("mtasts.core")
local tlsrpt = require("mtasts.tlsrpt.format")

local type, ipairs, pairs, error = type, ipairs, pairs, error

local _M = {}

local PLAN_KEYS = { domain = true, mx = true, policy = true, result = true,
  tls_required_no = true, require_tls = true, policy_error = true, policy_code = true,
  dane = true }

-- The DANE state of one MX host (RFC 7672 §2.2), from opts.dane (what sts:dane returns):
-- "dane" (usable TLSA records over a secure path: DANE decides, whatever MTA-STS says),
-- "encrypt" (a secure TLSA RRset with no usable record: TLS, unauthenticated), "failed" (the
-- TLSA lookup was bogus or failed: never a silent downgrade), or nil (no DANE: insecure, no
-- records, or the MX RRset itself is not secure).
local function dane_state(dane, host)
  if type(dane) ~= "table" or not dane.mx_secure then return nil end
  local h = type(dane.hosts) == "table" and dane.hosts[host:lower()] or nil
  if type(h) ~= "table" then return nil end
  if h.status == "bogus" or h.status == "failed" then return "failed", h end
  if h.status ~= "secure" then return nil end
  if (h.usable or 0) > 0 then return "dane", h end
  if type(h.records) == "table" and #h.records > 0 then return "encrypt", h end
  return nil
end

local function host_of(mx)
  if type(mx) == "table" then return mx.host end
  return mx
end

--- Decide, per MX host, how to deliver. opts:
--   domain            the recipient domain (the policy was looked up there)
--   mx                the MX hosts in preference order (names, or { host = } tables)
--   policy, result    what client:get returned (policy may be nil: no MTA-STS; result is nil
--                     for a name that is no domain)
--   policy_error      set when client:get failed (its message, position 4)
--   policy_code       its code (position 5): "domain-syntax" means the name can have no
--                     policy, so there is nothing to wait for: no policy applies
--   tls_required_no   the message has "TLS-Required: No" (RFC 8689): policies are ignored
--   require_tls       the message asks for REQUIRETLS (RFC 8689)
--   dane              what sts:dane returned ({ mx_secure =, hosts = { [mx] = { status =,
--                     records =, usable = } } }): DANE first, per MX (docs/delivery.md)
-- Returns { hosts = { { host =, tls = "dane"|"required"|"opportunistic", verify_pkix =,
--   tlsa = } }, skipped = { { host =, reason = } }, plaintext_fallback = bool,
--   defer = reason | nil, fail = reason | nil }. Adds mx-mismatch details to `result`.
function _M.plan(opts)
  if type(opts) ~= "table" then
    error("bad argument #1 to 'plan' (table expected, got " .. type(opts) .. ")", 2)
  end
  for k in pairs(opts) do
    if not PLAN_KEYS[k] then
      error("bad argument #1 to 'plan' (unknown option '" .. tostring(k) .. "')", 2)
    end
  end
  if type(opts.mx) ~= "table" then error("bad argument #1 to 'plan' (mx must be a table)", 2) end
  local policy, result = opts.policy, opts.result
  local plan = { hosts = {}, skipped = {}, plaintext_fallback = true }

  if opts.policy_error and opts.policy_code ~= "domain-syntax" and not opts.tls_required_no
  then
    -- a temporary policy error defers the attempt: delivering now could be a downgrade
    plan.defer = "mta-sts policy lookup failed: " .. tostring(opts.policy_error)
    plan.plaintext_fallback = false
    return plan
  end
  local mode = (not opts.tls_required_no and policy and policy.mode) or "none"
  local dane = not opts.tls_required_no and opts.dane or nil
  if dane ~= nil and type(dane) ~= "table" then
    error("bad argument #1 to 'plan' (dane must be a table)", 2)
  end
  if dane and dane.code == "bogus" then
    -- the MX RRset failed DNSSEC validation: the MX list itself cannot be trusted now
    plan.defer = "dane: the MX records of " .. tostring(opts.domain) .. " are bogus: " ..
      tostring(dane.error)
    plan.plaintext_fallback = false
    return plan
  end
  local any_dane = false
  for _, mx in ipairs(opts.mx) do
    local host = host_of(mx)
    if type(host) == "string" and dane_state(dane, host) == "dane" then any_dane = true end
  end
  if opts.require_tls and mode ~= "enforce" and not any_dane then
    plan.fail = "REQUIRETLS needs an enforced MTA-STS policy or DANE, and " ..
      tostring(opts.domain) .. " has neither"
    plan.plaintext_fallback = false
    return plan
  end
  local failed_tlsa, encrypt = 0, false
  for _, mx in ipairs(opts.mx) do
    local host = host_of(mx)
    if type(host) ~= "string" then error("bad argument #1 to 'plan' (mx entries are names)", 2) end
    local state, d = dane_state(dane, host)
    if state == "dane" then
      -- DANE takes precedence over MTA-STS (RFC 8461 §2): the TLSA records decide
      plan.hosts[#plan.hosts + 1] = { host = host, tls = "dane", verify_pkix = false,
        tlsa = d.records }
    elseif state == "failed" then
      failed_tlsa = failed_tlsa + 1
      plan.skipped[#plan.skipped + 1] = { host = host, reason = "tlsa-lookup-failed" }
    elseif opts.require_tls and mode ~= "enforce" then
      -- REQUIRETLS met by DANE only: hosts without it are not tried
      plan.skipped[#plan.skipped + 1] = { host = host, reason = "requiretls-without-dane" }
    elseif state == "encrypt" and mode ~= "enforce" then
      -- secure TLSA records, none usable: TLS is still mandatory (RFC 7672 §2.2)
      encrypt = true
      plan.hosts[#plan.hosts + 1] = { host = host, tls = "required", verify_pkix = false }
    elseif mode == "none" then
      plan.hosts[#plan.hosts + 1] = { host = host, tls = "opportunistic", verify_pkix = true }
    elseif core.matches(policy, host) then
      plan.hosts[#plan.hosts + 1] = { host = host,
        tls = mode == "enforce" and "required" or "opportunistic", verify_pkix = true }
    else
      if result then
        tlsrpt.add_failure(result, "validation-failure", "mtasts-policy-mx-mismatch",
          { receiving_mx_hostname = host })
      end
      if mode == "enforce" then
        plan.skipped[#plan.skipped + 1] = { host = host, reason = "mx-mismatch" }
      else   -- testing: deliver anyway, the mismatch is reported
        plan.hosts[#plan.hosts + 1] = { host = host, tls = "opportunistic", verify_pkix = true }
      end
    end
  end
  -- plaintext after a TLS failure only when nothing is enforced (or TLS-Required: No)
  plan.plaintext_fallback = mode ~= "enforce" and not opts.require_tls and not any_dane and
    not encrypt
  if #plan.hosts == 0 and failed_tlsa > 0 then
    -- every host left had a TLSA lookup fail: wait, never deliver around DANE
    plan.defer = "dane: the TLSA lookup failed for " .. failed_tlsa .. " MX host(s)"
    plan.plaintext_fallback = false
  end
  return plan
end

local DETAIL_KEYS = { "result_type", "failure_reason_code", "receiving_mx_hostname",
  "receiving_ip", "sending_mta_ip", "receiving_mx_helo", "additional_information" }

--- Record the outcome of one SMTP session with `host` in `result`: { ok = true }, or
-- { result_type =, failure_reason_code =, receiving_ip =, ... } for a failure. A failure
-- detail equal in every field but the count to an existing one is merged into it. Returns
-- result; a nil result (client:get of a name that is no domain) records nothing: nil.
function _M.outcome(result, host, outcome)
  if result ~= nil and (type(result) ~= "table" or type(result.summary) ~= "table") then
    error("bad argument #1 to 'outcome' (a TLSRPT result expected)", 2)
  end
  if type(outcome) ~= "table" then
    error("bad argument #3 to 'outcome' (table expected, got " .. type(outcome) .. ")", 2)
  end
  if result == nil then return nil end
  if outcome.ok then
    result.summary.success = result.summary.success + 1
    return result
  end
  if type(outcome.result_type) ~= "string" then
    error("bad argument #3 to 'outcome' (result_type required for a failure)", 2)
  end
  result.summary.failure = result.summary.failure + 1
  local detail = { receiving_mx_hostname = host }
  for _, k in ipairs(DETAIL_KEYS) do
    if outcome[k] ~= nil then detail[k] = outcome[k] end
  end
  for _, d in ipairs(result.failures) do
    local same = true
    for _, k in ipairs(DETAIL_KEYS) do
      if d[k] ~= detail[k] then same = false break end
    end
    if same then
      d.count = (d.count or 0) + 1
      return result
    end
  end
  detail.count = 1
  result.failures[#result.failures + 1] = detail
  return result
end

return _M
