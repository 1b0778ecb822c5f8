--- mtasts.discover: discovering a domain's MTA-STS policy: the TXT record, then the policy file
-- (docs/conformance.md §1-§2; mox's mtasts.Get). No cache here: the client (mtasts.open) keeps
-- what this finds. Reference: docs/fetch.md.
local core = require("mtasts.core")
local tlsrpt = require("mtasts.tlsrpt.format")

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

-- A TLSA record SMTP can use (RFC 7672 §3.1): DANE-TA(2) or DANE-EE(3), a full certificate
-- or SPKI (selector 0, 1), exact data or a SHA-256/512 digest of the right length.
local DIGEST_LEN = { [1] = 32, [2] = 64 }
local function usable(r)
  if r.usage ~= 2 and r.usage ~= 3 then return false end
  if r.selector ~= 0 and r.selector ~= 1 then return false end
  if type(r.data) ~= "string" or r.data == "" then return false end
  if r.mtype == 0 then return true end
  return DIGEST_LEN[r.mtype] == #r.data
end

--- The DANE state of `ascii`'s MX hosts through resolver `r` (RFC 7672 §2.2): the MX RRset,
-- and when it is DNSSEC-secure each host's TLSA RRset (_25._tcp). mx: the host names in use
-- (default the MX records). Returns { mx_secure =, hosts = { [host] = { status =, records =,
-- usable =, error =, code =, result = } }, error =, code = } (docs/client.md, sts:dane).
function _M.dane(r, ascii, mx)
  if type(r.mx) ~= "function" or type(r.tlsa) ~= "function" then
    return { mx_secure = false, hosts = {} }      -- a resolver without DNSSEC answers
  end
  local answer, merr, mcode = r:mx(ascii)
  if not answer then
    return { mx_secure = false, hosts = {}, error = merr, code = mcode }
  end
  local out = { mx_secure = answer.dnssec == "secure", hosts = {} }
  if not out.mx_secure then return out end
  local names = {}
  for i, m in ipairs(mx or answer) do
    names[i] = (type(m) == "table" and m.host or m):lower():gsub("%.$", "")
  end
  for _, host in ipairs(names) do
    if not out.hosts[host] then
      local t, terr, tcode = r:tlsa(host, 25)
      local h
      if not t then
        h = { status = tcode == "bogus" and "bogus" or "failed", error = terr, code = tcode }
      elseif t.dnssec ~= "secure" then
        h = { status = "insecure", records = {}, usable = 0 }
      else
        local recs, n = {}, 0
        for i, rec in ipairs(t) do
          recs[i] = { usage = rec.usage, selector = rec.selector, mtype = rec.mtype,
            data = rec.data }
          if usable(rec) then n = n + 1 end
        end
        h = { status = "secure", records = recs, usable = n }
        if #recs > 0 then h.result = tlsrpt.tlsa_result(ascii, recs, host) end
      end
      out.hosts[host] = h
    end
  end
  return out
end

return _M
