--- mtasts.discover: discovering a domain's MTA-STS policy: the TXT record, then the policy file
-- (docs/conformance.md §1-§2; mox's mtasts.Get). No cache here: the client (mtasts.open) keeps
-- what this finds. Reference: docs/fetch.md.
local core = require("mtasts.core")

local _M = {}

--- The MTA-STS record of `ascii` (lower-case A-labels) through resolver `r`.
-- Returns the parsed record, or nil, message, code, reason with code no-record,
-- multiple-records, record-syntax, or dns (temporary; reason servfail, timeout, bogus); or
-- nil, message, "local" when this host's resolver failed (not the domain's failure).
function _M.record(r, ascii)
  local name = "_mta-sts." .. ascii
  local txt, terr, tcode = r:txt(name)
  if not txt then
    if tcode == "nxdomain" or tcode == "nodata" then
      return nil, name .. ": no MTA-STS record", "no-record", tcode
    end
    if tcode == "local" then return nil, terr, "local" end
    return nil, terr, "dns", tcode
  end
  local found = {}
  for _, s in ipairs(txt) do
    if core.is_sts_record(s) then found[#found + 1] = s end
  end
  if #found == 0 then return nil, name .. ": no MTA-STS record", "no-record", "no-record" end
  if #found > 1 then
    return nil, ("%s: %d MTA-STS records"):format(name, #found), "multiple-records",
      "multiple-records"
  end
  local record, rerr = core.parse_record(found[1])
  if not record then return nil, name .. ": " .. rerr, "record-syntax", "record-syntax" end
  return record
end

--- The policy of `ascii` through fetcher `f`. Returns policy, text, info, or nil, message,
-- code, reason with code no-policy, policy-fetch or policy-syntax, or local (this host
-- failed; no reason).
function _M.policy(f, ascii)
  local text, info, fcode, reason = f:fetch(ascii)
  if not text then return nil, info, fcode, reason end
  info = info or { content_type_ok = true }
  local policy, perr = core.parse_policy(text)
  if not policy then
    return nil, "mta-sts." .. ascii .. ": " .. perr, "policy-syntax",
      info.content_type_ok == false and "content-type-not-text-plain" or "policy-syntax"
  end
  return policy, text, info
end

--- Look up the record of `domain` with resolver `r` and fetch its policy with fetcher `f`.
-- Returns record, policy, text, info, or nil, message, code, reason: domain-syntax, or a
-- code of _M.record or _M.policy.
function _M.get(r, f, domain)
  local ascii, err, code = core.domain(domain)
  if not ascii then return nil, err, code end
  local record, rerr, rcode, rreason = _M.record(r, ascii)
  if not record then return nil, rerr, rcode, rreason end
  local policy, text, info, reason = _M.policy(f, ascii)
  if not policy then return nil, text, info, reason end
  return record, policy, text, info
end

return _M
