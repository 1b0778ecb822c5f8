--- mtasts.json: JSON text for mtasts's own output (CLI, reports), with what lua-cjson 2.1
-- as Debian ships it cannot do: empty tables are arrays ([]), object keys are sorted, so the
-- same value always gives the same text. Decoding is lua-cjson's (cjson.decode).
local type, pairs, tostring, concat, sort, format = type, pairs, tostring, table.concat,
  table.sort, string.format
local math_type, huge, ipairs, setmetatable, error = math.type, math.huge, ipairs,
  setmetatable, error

local _M = {}

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function string_json(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or format("\\u%04x", c:byte())
  end) .. '"'
end

local encode

local function is_array(t)
  local n = #t
  for k in pairs(t) do
    if math_type(k) ~= "integer" or k < 1 or k > n then return false end
  end
  return true
end

encode = function(v, out, depth)
  local tv = type(v)
  if depth > 100 then error("json: nested too deeply", 0) end
  if v == nil or v == _M.null then
    out[#out + 1] = "null"
  elseif tv == "boolean" then
    out[#out + 1] = tostring(v)
  elseif tv == "number" then
    if v ~= v or v == huge or v == -huge then error("json: cannot encode " .. tostring(v), 0) end
    out[#out + 1] = math_type(v) == "integer" and tostring(v) or format("%.17g", v)
  elseif tv == "string" then
    out[#out + 1] = string_json(v)
  elseif tv == "table" then
    if is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out, depth + 1)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" then error("json: object keys must be strings", 0) end
        keys[#keys + 1] = k
      end
      sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = string_json(k)
        out[#out + 1] = ":"
        encode(v[k], out, depth + 1)
      end
      out[#out + 1] = "}"
    end
  else
    error("json: cannot encode a " .. tv, 0)
  end
end

--- A value standing for JSON null inside tables.
_M.null = setmetatable({}, { __name = "mtasts.json.null",
  __tostring = function() return "null" end })

--- JSON text of `v`. Raises on values JSON cannot hold (functions, NaN, cycles).
function _M.encode(v)
  local out = {}
  encode(v, out, 0)
  return concat(out)
end

return _M
