--- mtasts.tlsrpt.format: the formats of SMTP TLS Reporting (RFC 8460), without I/O: the TXT
-- record parser, the TLSRPT result tables the client and delivery build (docs/architecture.md,
-- "The TLSRPT result table"), report JSON, file names and mail messages, incoming reports.
-- Callers use it through mtasts.tlsrpt. Reference: docs/tlsrpt.md, docs/incoming-reports.md.
local core = require("mtasts.core")
local json = require("mtasts.json")

local type, pairs, ipairs, error, tostring, tonumber = type, pairs, ipairs, error, tostring,
  tonumber
local concat, format, unpack = table.concat, string.format, table.unpack

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

-- The lines of the policy texts sts_result saw, by text: a result is made per delivery, from
-- the few policies a host meets again and again. Never handed out (each result gets a copy
-- of its own); emptied when the texts in it pass LINES_BYTES.
local lines_of, lines_bytes, LINES_BYTES = {}, 0, 2 * 1024 * 1024

--- A result for an STS policy of `domain` (A-labels): policy text and parsed policy.
function _M.sts_result(domain, text, policy)
  text = text or ""
  local lines = lines_of[text]
  if not lines then
    lines = _M.policy_strings(text)
    if lines_bytes + #text > LINES_BYTES then lines_of, lines_bytes = {}, 0 end
    lines_of[text], lines_bytes = lines, lines_bytes + #text
  end
  local mx = policy and policy.mx
  return { policy = { type = "sts", domain = domain, strings = { unpack(lines) },
      mx_host = mx and { unpack(mx) } or {} },
    summary = { success = 0, failure = 0 }, failures = {} }
end

--- A result for a domain without a policy.
--- The TLSA record in presentation form, "3 1 1 <hex>" (RFC 6698 §2.2), as a TLSRPT policy
-- string shows it.
function _M.tlsa_string(r)
  local hex = tostring(r.data or ""):gsub(".", function(c) return ("%02x"):format(c:byte()) end)
  return ("%d %d %d %s"):format(r.usage or 0, r.selector or 0, r.mtype or 0, hex)
end

--- A result for a DANE policy (RFC 8460 §4.4, policy-type "tlsa"): `domain` is the policy
-- domain (the recipient domain in its own report, or the MX host in the MX host's report, as
-- mox sends both), `records` the TLSA records (their presentation forms are the policy
-- strings), `mx_host` the MX host the records are for.
function _M.tlsa_result(domain, records, mx_host)
  local strings = {}
  for i, r in ipairs(records or {}) do strings[i] = _M.tlsa_string(r) end
  return { policy = { type = "tlsa", domain = domain, strings = strings,
      mx_host = mx_host and { mx_host } or nil },
    summary = { success = 0, failure = 0 }, failures = {} }
end

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


--- Days since 1970-01-01 of a civil date (proleptic Gregorian), without the C library's
-- time zone.
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

local MDAYS = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

--- Epoch seconds of a UTC day "YYYY-MM-DD" at midnight, or nil when it is not one.
function _M.day_start(day)
  if type(day) ~= "string" then return nil end
  local y, m, d = day:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
  y, m, d = tonumber(y), tonumber(m), tonumber(d)
  if not y or m < 1 or m > 12 or d < 1 or d > MDAYS[m] then return nil end
  if m == 2 and d == 29 and not (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) then return nil end
  return days_from_civil(y, m, d) * 86400
end

--- The UTC day "YYYY-MM-DD" of epoch seconds t.
function _M.day_of(t) return os.date("!%Y-%m-%d", t // 1) end

--- Epoch seconds of an RFC 3339 date-time. A missing zone is taken as UTC (some large
-- senders write none); fractions of a second are dropped. nil when it does not parse.
function _M.parse_time(s)
  if type(s) ~= "string" or #s > 64 then return nil end
  local date, hh, mi, ss, rest = s:match("^(%d%d%d%d%-%d%d%-%d%d)[Tt ](%d%d):(%d%d):(%d%d)(.*)$")
  local t = date and _M.day_start(date)
  if not t then return nil end
  hh, mi, ss = tonumber(hh), tonumber(mi), tonumber(ss)
  if hh > 23 or mi > 59 or ss > 60 then return nil end
  rest = rest:gsub("^%.%d+", "")
  local off = 0
  if rest ~= "Z" and rest ~= "z" and rest ~= "" then
    local sign, oh, om = rest:match("^([+-])(%d%d):?(%d%d)$")
    if not sign then return nil end
    off = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "-" and -1 or 1)
  end
  return t + hh * 3600 + mi * 60 + ss - off
end

-- Result detail fields (result tables use snake_case) and their report names.
_M.DETAIL_FIELDS = {
  { "result_type", "result-type" }, { "sending_mta_ip", "sending-mta-ip" },
  { "receiving_mx_hostname", "receiving-mx-hostname" },
  { "receiving_mx_helo", "receiving-mx-helo" }, { "receiving_ip", "receiving-ip" },
  { "additional_information", "additional-information" },
  { "failure_reason_code", "failure-reason-code" },
}

_M.POLICY_TYPES = { sts = true, tlsa = true, ["no-policy-found"] = true }

_M.RESULT_TYPES = { ["starttls-not-supported"] = true, ["certificate-host-mismatch"] = true,
  ["certificate-expired"] = true, ["certificate-not-trusted"] = true,
  ["validation-failure"] = true, ["tlsa-invalid"] = true, ["dnssec-invalid"] = true,
  ["dane-required"] = true, ["sts-policy-fetch-error"] = true, ["sts-policy-invalid"] = true,
  ["sts-webpki-invalid"] = true }

--- JSON text of a report (keys sorted: the same report always gives the same text).
function _M.encode(report) return json.encode(report) end

-- What a file name and a message need of a report, read from the report itself.
local function report_facts(report)
  if type(report) ~= "table" then error("bad argument #1 (report table expected)", 3) end
  local range = type(report["date-range"]) == "table" and report["date-range"] or {}
  local begin = _M.parse_time(range["start-datetime"])
  local finish = _M.parse_time(range["end-datetime"])
  local id = report["report-id"]
  local submitter = type(id) == "string" and id:match("@([^@]+)$")
  local domain
  if type(report.policies) == "table" and type(report.policies[1]) == "table" then
    domain = (report.policies[1].policy or {})["policy-domain"]
  end
  if not (begin and finish and submitter and domain and type(id) == "string") then
    error("bad argument #1 (report without date-range, report-id or policy domain)", 3)
  end
  return { begin = begin, finish = finish, submitter = submitter, domain = domain, id = id }
end

--- RFC 8460 §5.3 file name: <submitter>!<policy-domain>!<begin>!<end>.json.gz
function _M.filename(report)
  local f = report_facts(report)
  return format("%s!%s!%d!%d.json.gz", f.submitter, f.domain, f.begin, f.finish)
end

--- gzip of the report JSON (the body of an https report and of the mail attachment).
function _M.gzip(report) return core.gzip(_M.encode(report)) end

local function random_token(n)
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(n)
  if f then f:close() end
  if not bytes then
    local t = {}
    for i = 1, n do t[i] = string.char(math.random(0, 255)) end
    bytes = concat(t)
  end
  return (bytes:gsub(".", function(c) return format("%02x", c:byte()) end))
end

local function header_safe(v, what)
  if type(v) ~= "string" or v == "" or v:find("[%c]") then
    error("bad argument #2 to 'message' (" .. what .. " must be a one-line string)", 3)
  end
  return v
end

--- The RFC 8460 §5.3 mail message of a report: headers, multipart/report with a text part
-- and the gzip report as base64. opts: from, to (required), date (epoch, default now),
-- message_id, boundary, gzip (the body, if already made). Lines end in CRLF.
function _M.message(report, opts)
  if type(opts) ~= "table" then error("bad argument #2 to 'message' (table expected)", 2) end
  local f = report_facts(report)
  local from, to = header_safe(opts.from, "from"), header_safe(opts.to, "to")
  local boundary = opts.boundary or ("=_tlsrpt_" .. random_token(12))
  local body = opts.gzip or _M.gzip(report)
  local id = opts.message_id or ("<" .. random_token(12) .. "." .. f.begin .. "@" ..
    f.submitter .. ">")
  local lines = {
    "From: " .. from,
    "To: " .. to,
    -- folded (RFC 5322 §2.2.3) so lines stay within 78 characters for ordinary names
    "Subject: Report Domain: " .. f.domain .. "\r\n Submitter: " .. f.submitter ..
      "\r\n Report-ID: <" .. f.id .. ">",
    "Date: " .. os.date("!%a, %d %b %Y %H:%M:%S +0000", (opts.date or os.time()) // 1),
    "Message-ID: " .. id,
    "MIME-Version: 1.0",
    "TLS-Report-Domain: " .. f.domain,
    "TLS-Report-Submitter: " .. f.submitter,
    "TLS-Required: No",
    'Content-Type: multipart/report; report-type="tlsrpt";',
    '\tboundary="' .. boundary .. '"',
    "",
    "This is a multipart message in MIME format.",
    "",
    "--" .. boundary,
    "Content-Type: text/plain; charset=us-ascii",
    "Content-Transfer-Encoding: 7bit",
    "",
    "This is an aggregate TLS report from " .. f.submitter .. ".",
    "Policy domain: " .. f.domain .. ", day: " .. os.date("!%Y-%m-%d", f.begin) .. " (UTC).",
    "",
    "--" .. boundary,
    "Content-Type: application/tlsrpt+gzip",
    "Content-Transfer-Encoding: base64",
    "Content-Disposition: attachment;",
    '\tfilename="' .. _M.filename(report) .. '"',
    "",
    core.base64_encode(body, 76),
    "",
    "--" .. boundary .. "--",
    "",
  }
  return concat(lines, "\r\n")
end

-- --- incoming reports ---

_M.MAX_INPUT = 16 * 1024 * 1024     -- bytes of message or file accepted
_M.MAX_JSON = 16 * 1024 * 1024      -- bytes of JSON a gzip body may inflate to
_M.MAX_PARTS = 100                  -- MIME parts looked at in one message, nested ones too

local function bad(msg) return nil, msg, "report-syntax" end

-- A JSON count: lua-cjson 2.1 decodes every number as a float, so an integral float is
-- turned into an integer (in place, by the caller); nil when it is not a count.
local function count(v)
  if type(v) ~= "number" or v < 0 or v > 2 ^ 53 then return nil end
  return math.tointeger(v)
end

local function opt_string(t, k, where)
  local v = t[k]
  if v == nil then return true end
  if type(v) ~= "string" then return false, where .. "." .. k .. " is not a string" end
  return true
end

local function check_report(r, cjson_null)
  local function strip(t, depth)    -- JSON null counts as absent
    if depth > 20 then return end
    for k, v in pairs(t) do
      if v == cjson_null then t[k] = nil
      elseif type(v) == "table" then strip(v, depth + 1) end
    end
  end
  if type(r) ~= "table" then return bad("report: the JSON is not an object") end
  strip(r, 0)
  for _, k in ipairs({ "organization-name", "report-id" }) do
    if type(r[k]) ~= "string" then return bad("report: " .. k .. " is missing or not a string") end
  end
  local ok, why = opt_string(r, "contact-info", "report")
  if not ok then return bad(why) end
  local range = r["date-range"]
  if type(range) ~= "table" then return bad("report: date-range is missing") end
  for _, k in ipairs({ "start-datetime", "end-datetime" }) do
    if not _M.parse_time(range[k]) then
      return bad("report: date-range." .. k .. " is not an RFC 3339 date-time: " ..
        format("%q", tostring(range[k])):sub(1, 60))
    end
  end
  if type(r.policies) ~= "table" then return bad("report: policies is missing") end
  for i, p in ipairs(r.policies) do
    local where = "report: policies[" .. i .. "]"
    if type(p) ~= "table" or type(p.policy) ~= "table" then
      return bad(where .. ".policy is missing")
    end
    local pol = p.policy
    if not _M.POLICY_TYPES[pol["policy-type"]] then
      return bad(where .. ".policy.policy-type is not sts, tlsa or no-policy-found")
    end
    if type(pol["policy-domain"]) ~= "string" then
      return bad(where .. ".policy.policy-domain is missing or not a string")
    end
    for _, k in ipairs({ "policy-string", "mx-host" }) do
      local v = pol[k]
      if type(v) == "string" then pol[k] = { v }        -- a lone string: some senders do this
      elseif v == nil then pol[k] = {}
      elseif type(v) ~= "table" then return bad(where .. ".policy." .. k .. " is not an array")
      end
      for _, s in pairs(pol[k]) do
        if type(s) ~= "string" then return bad(where .. ".policy." .. k .. " has a non-string") end
      end
    end
    local sum = p.summary
    if type(sum) ~= "table" or not count(sum["total-successful-session-count"]) or
        not count(sum["total-failure-session-count"]) then
      return bad(where .. ".summary needs non-negative integer session counts")
    end
    for _, k in ipairs({ "total-successful-session-count", "total-failure-session-count" }) do
      sum[k] = count(sum[k])
    end
    local fds = p["failure-details"]
    if fds == nil then p["failure-details"] = {} fds = p["failure-details"] end
    if type(fds) ~= "table" then return bad(where .. ".failure-details is not an array") end
    for j, d in ipairs(fds) do
      local w = where .. ".failure-details[" .. j .. "]"
      if type(d) ~= "table" or type(d["result-type"]) ~= "string" then
        return bad(w .. ".result-type is missing")
      end
      if not count(d["failed-session-count"]) then
        return bad(w .. ".failed-session-count is not a non-negative integer")
      end
      d["failed-session-count"] = count(d["failed-session-count"])
      for _, f in ipairs(_M.DETAIL_FIELDS) do
        ok, why = opt_string(d, f[2], w)
        if not ok then return bad(why) end
      end
    end
  end
  return r
end

local function decode_json(text)
  local cjson = require("cjson.safe").new()
  cjson.decode_max_depth(64)
  local r, err = cjson.decode(text)
  if r == nil then return bad("report: not JSON: " .. tostring(err)) end
  return check_report(r, cjson.null)
end

local function from_body(body, lim)
  if body:sub(1, 2) == "\31\139" then
    local text, err, code = core.gunzip(body, lim.max_json)
    if not text then
      if code == "too-large" then
        return nil, "report: the gzip data inflates to over " .. lim.max_json .. " bytes", code
      end
      return nil, "report: " .. tostring(err), "gzip"
    end
    return decode_json(text)
  end
  if #body > lim.max_json then
    return nil, "report: " .. #body .. " bytes of JSON is over the limit of " .. lim.max_json,
      "too-large"
  end
  return decode_json(body)
end

-- A MIME entity: headers (lower-case names, unfolded) and body.
local function split_entity(text)
  local head, body = text:match("^(.-)\r?\n\r?\n(.*)$")
  if not head then head, body = text, "" end
  local headers = {}
  head = head:gsub("\r?\n[ \t]+", " ")
  for line in (head .. "\n"):gmatch("(.-)\r?\n") do
    local name, value = line:match("^([!-9;-~]+):[ \t]*(.-)[ \t]*$")
    if name then
      name = name:lower()
      if not headers[name] then headers[name] = value end
    end
  end
  return headers, body
end

local function content_type(v)
  v = v or "text/plain"
  local mime = (v:match("^%s*([^;%s]+)") or ""):lower()
  local params = {}
  for k, val in v:gmatch(';%s*([%w%-_]+)%s*=%s*("?[^;"]*"?)') do
    params[k:lower()] = val:gsub('^"(.*)"$', "%1")
  end
  return mime, params
end

local function decode_transfer(body, cte)
  cte = (cte or "7bit"):lower():match("^%s*(%S+)")
  if cte == "base64" then
    local out, err = core.base64_decode(body)
    if not out then return nil, "report: " .. err, "report-syntax" end
    return out
  elseif cte == "quoted-printable" then
    body = body:gsub("=\r?\n", ""):gsub("=(%x%x)", function(h)
      return string.char(tonumber(h, 16))
    end)
    return body
  end
  return body
end

local REPORT_TYPES = { ["application/tlsrpt+gzip"] = true, ["application/tlsrpt+json"] = true,
  ["application/gzip"] = true, ["application/json"] = true, ["application/x-gzip"] = true }

local function from_entity(text, depth, lim)
  local headers, body = split_entity(text)
  local mime, params = content_type(headers["content-type"])
  if mime:match("^multipart/") then
    if depth >= 4 then return nil, "report: multipart nested too deeply", "report-syntax" end
    local b = params.boundary
    if not b or b == "" or #b > 200 then
      return nil, "report: multipart without a boundary", "report-syntax"
    end
    local delim = "\n%-%-" .. b:gsub("%p", "%%%0")
    local parts = {}
    body = "\n" .. body
    -- A delimiter line opens a part that runs to the next one; "--" after the boundary closes
    -- the list. A last part whose closing delimiter is missing (seen in the wild) runs to the
    -- end of the body, less its trailing line ends: its content decides whether it is whole
    -- (base64, gzip and JSON all fail on a truncated body).
    local _, e = body:find(delim, 1)
    while e and body:sub(e + 1, e + 2) ~= "--" do
      local ns, ne = body:find(delim, e + 1)
      local part = body:sub(e + 1, ns and ns - 1 or -1):gsub("^[ \t]*\r?\n", "")
      if ns then part = part:gsub("\r$", "") else part = part:gsub("[\r\n]+$", "") end
      if ns or part ~= "" then
        lim.parts = lim.parts + 1
        if lim.parts > lim.max_parts then
          return nil, "report: more than " .. lim.max_parts .. " MIME parts", "report-syntax"
        end
        parts[#parts + 1] = part
      end
      e = ne
    end
    local last_err, last_code
    for _, part in ipairs(parts) do
      local h = split_entity(part)
      local pm = content_type(h["content-type"])
      if REPORT_TYPES[pm] or pm:match("^multipart/") then
        local r, err, code = from_entity(part, depth + 1, lim)
        if r then return r end
        last_err, last_code = err, code
      end
    end
    if last_err then return nil, last_err, last_code end
    return nil, "report: the message has no application/tlsrpt+gzip or +json part", "report-syntax"
  end
  if REPORT_TYPES[mime] then
    local data, err, code = decode_transfer(body, headers["content-transfer-encoding"])
    if not data then return nil, err, code end
    return from_body(data, lim)
  end
  return nil, "report: a " .. mime .. " message is not a TLS report", "report-syntax"
end

--- Parse an incoming report: JSON, gzip JSON, or a whole message (multipart/report with a
-- tlsrpt part, or a bare application/tlsrpt+json or +gzip body). Returns the report table
-- (the JSON's shape and hyphenated keys, `mx-host`, `policy-string` and `failure-details`
-- always arrays) or nil, message, code: report-syntax, gzip, too-large. opts (optional):
-- max_input (bytes of data, default MAX_INPUT), max_json (bytes of JSON, inflated or not,
-- default MAX_JSON), max_parts (MIME parts looked at, default MAX_PARTS): what one report
-- may cost, in memory and time. A second argument that is not a table is ignored.
function _M.parse_report(data, opts)
  if type(data) ~= "string" then
    error("bad argument #1 to 'parse_report' (string expected, got " .. type(data) .. ")", 2)
  end
  -- a table, or ignored: parse_report(text:gsub(...)) passes gsub's count along
  if type(opts) ~= "table" then opts = {} end
  local lim = { max_input = opts.max_input or _M.MAX_INPUT, max_json = opts.max_json or
    _M.MAX_JSON, max_parts = opts.max_parts or _M.MAX_PARTS, parts = 0 }
  if #data > lim.max_input then
    return nil, "report: " .. #data .. " bytes is over the limit of " .. lim.max_input,
      "too-large"
  end
  if data:sub(1, 2) == "\31\139" then return from_body(data, lim) end
  if data:match("^%s*{") then return from_body(data, lim) end
  if data:match("^[!-9;-~]+:") then return from_entity(data, 0, lim) end
  return bad("report: neither JSON, gzip nor a mail message")
end

return _M
