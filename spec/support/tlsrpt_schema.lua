-- The RFC 8460 §4.4 report schema (with the erratum making mx-host an array), as a check
-- for specs: schema(report) -> true, or false and the path of the first violation.
local _M = {}

local POLICY_TYPES = { sts = true, tlsa = true, ["no-policy-found"] = true }
local RESULT_TYPES = { ["starttls-not-supported"] = true, ["certificate-host-mismatch"] = true,
  ["certificate-expired"] = true, ["certificate-not-trusted"] = true,
  ["validation-failure"] = true, ["tlsa-invalid"] = true, ["dnssec-invalid"] = true,
  ["dane-required"] = true, ["sts-policy-fetch-error"] = true, ["sts-policy-invalid"] = true,
  ["sts-webpki-invalid"] = true }
local DATETIME = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"

local function object(t, path, required, optional)
  if type(t) ~= "table" then error(path .. ": object expected", 0) end
  for k in pairs(t) do
    if not required[k] and not optional[k] then
      error(path .. "." .. tostring(k) .. ": unknown", 0)
    end
  end
  for k, kind in pairs(required) do
    if t[k] == nil then error(path .. "." .. k .. ": required", 0) end
    kind(t[k], path .. "." .. k)
  end
  for k, kind in pairs(optional) do
    if t[k] ~= nil then kind(t[k], path .. "." .. k) end
  end
end

local function str(v, path)
  if type(v) ~= "string" then error(path .. ": string expected", 0) end
end
local function datetime(v, path)
  str(v, path)
  if not v:match(DATETIME) then error(path .. ": RFC 3339 UTC date-time expected", 0) end
end
local function count(v, path)
  if math.type(v) ~= "integer" or v < 0 then error(path .. ": non-negative integer expected", 0) end
end
local function enum(set) return function(v, path)
  str(v, path)
  if not set[v] then error(path .. ": " .. v .. " is not allowed", 0) end
end end
local function array(item) return function(v, path)
  if type(v) ~= "table" then error(path .. ": array expected", 0) end
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > #v then error(path .. ": array expected", 0) end
  end
  for i, x in ipairs(v) do item(x, path .. "[" .. i .. "]") end
end end

local function detail(v, path)
  object(v, path, { ["result-type"] = enum(RESULT_TYPES), ["failed-session-count"] = count }, {
    ["sending-mta-ip"] = str, ["receiving-mx-hostname"] = str, ["receiving-mx-helo"] = str,
    ["receiving-ip"] = str, ["additional-information"] = str, ["failure-reason-code"] = str })
end

local function policy(v, path)
  object(v, path, {
    policy = function(p, pp)
      object(p, pp, { ["policy-type"] = enum(POLICY_TYPES), ["policy-domain"] = str },
        { ["policy-string"] = array(str), ["mx-host"] = array(str) })
    end,
    summary = function(s, sp)
      object(s, sp, { ["total-successful-session-count"] = count,
        ["total-failure-session-count"] = count }, {})
    end,
  }, { ["failure-details"] = array(detail) })
end

function _M.check(report)
  local ok, err = pcall(object, report, "report", {
    ["organization-name"] = str,
    ["date-range"] = function(v, path)
      object(v, path, { ["start-datetime"] = datetime, ["end-datetime"] = datetime }, {})
    end,
    ["contact-info"] = str, ["report-id"] = str, policies = array(policy) }, {})
  if ok then return true end
  return false, err
end

return _M
