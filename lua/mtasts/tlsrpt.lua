--- mtasts.tlsrpt: SMTP TLS Reporting (RFC 8460). The TXT record parser and the TLSRPT result
-- tables the client and delivery build (DESIGN.md §3 "TLSRPT result"); recording and
-- reports join later. Reference: docs/parsing.md, docs/client.md.
local core = require("mtasts.core")

local _M = {}

--- Parse a TLSRPT TXT record (`_smtp._tls.<domain>`, strings concatenated).
-- Returns {version="TLSRPTv1", rua={...}, extensions={...}} or nil, msg, "record-syntax".
_M.parse_record = core.parse_tlsrpt_record

--- True when a TXT string is a TLSRPT record candidate ("v=TLSRPTv1" and a delimiter).
_M.is_record = core.is_tlsrpt_record

--- The lines of a policy text, line ends removed, as RFC 8460 policy-string (one trailing
-- line end is not a line of its own).
function _M.policy_strings(text)
  local lines = {}
  text = (text or ""):gsub("\r?\n$", "")
  for line in (text .. "\n"):gmatch("(.-)\r?\n") do lines[#lines + 1] = line end
  return lines
end

--- A result for an STS policy of `domain` (A-labels): policy text and parsed policy.
function _M.sts_result(domain, text, policy)
  local mx = {}
  for i, m in ipairs(policy and policy.mx or {}) do mx[i] = m end
  return { policy = { type = "sts", domain = domain, strings = _M.policy_strings(text),
      mx_host = mx },
    summary = { success = 0, failure = 0 }, failures = {} }
end

--- A result for a domain without a policy.
function _M.no_policy_result(domain)
  return { policy = { type = "no-policy-found", domain = domain },
    summary = { success = 0, failure = 0 }, failures = {} }
end

--- Add a failure detail to a result; returns the detail.
function _M.add_failure(result, result_type, reason, fields)
  local d = { result_type = result_type, failure_reason_code = reason, count = 1 }
  for k, v in pairs(fields or {}) do d[k] = v end
  result.failures[#result.failures + 1] = d
  return d
end

return _M
