--- mtasts.sts: discovering a domain's MTA-STS policy: the TXT record, then the policy file
-- (REFERENCE.md §1-§2; mox's mtasts.Get). No cache here: the client (mtasts.open) keeps
-- what this finds. Reference: docs/fetch.md.
local core = require("mtasts.core")

local _M = {}

--- Look up the record of `domain` with resolver `r` and fetch its policy with fetcher `f`.
-- Returns record, policy, text, info (info from the fetcher: content_type, content_type_ok)
-- or nil, message, code, reason with code:
--   domain-syntax                          the domain is not a domain name
--   no-record, multiple-records, record-syntax, dns (temporary: servfail, timeout, bogus)
--   no-policy, policy-fetch, policy-syntax (from the fetch, or the text does not parse)
function _M.get(r, f, domain)
  local ascii, err, code = core.domain(domain)
  if not ascii then return nil, err, code end
  local name = "_mta-sts." .. ascii
  local txt, terr, tcode = r:txt(name)
  if not txt then
    if tcode == "nxdomain" or tcode == "nodata" then
      return nil, name .. ": no MTA-STS record", "no-record", tcode
    end
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
  local text, info, fcode, reason = f:fetch(ascii)
  if not text then return nil, info, fcode, reason end
  local policy, perr = core.parse_policy(text)
  if not policy then
    return nil, "mta-sts." .. ascii .. ": " .. perr, "policy-syntax",
      info.content_type_ok and "policy-syntax" or "content-type-not-text-plain"
  end
  return record, policy, text, info
end

return _M
