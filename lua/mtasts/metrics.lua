--- mtasts.metrics: counters, gauges and histograms with fixed label sets, and their
-- Prometheus text exposition (format 0.0.4). Made for the hot path: a labelled series is
-- looked up once (`family:labels(...)`) and kept; `inc` and `observe` are one addition and
-- a short loop, and nothing is formatted until a scrape. Reference: docs/metrics.md.
local type, error, tostring, tonumber, select, ipairs, setmetatable = type, error, tostring,
  tonumber, select, ipairs, setmetatable
local concat, format = table.concat, string.format
local math_type, huge = math.type, math.huge

local _M = {}

-- Latency buckets in seconds, from a memory hit to a slow fetch.
_M.SECONDS_BUCKETS = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
  30, 60 }

local function number(v)
  if v == huge then return "+Inf" elseif v == -huge then return "-Inf"
  elseif v ~= v then return "NaN"
  elseif math_type(v) == "integer" or (v % 1 == 0 and v > -2^53 and v < 2^53) then
    return format("%d", v)
  end
  for digits = 15, 16 do   -- the shortest that reads back the same
    local s = format("%." .. digits .. "g", v)
    if tonumber(s) == v then return s end
  end
  return format("%.17g", v)
end

local function escape_label(v)
  return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ["\""] = "\\\"", ["\n"] = "\\n" }))
end

local function escape_help(v)
  return (v:gsub("[\\\n]", { ["\\"] = "\\\\", ["\n"] = "\\n" }))
end

local Family = {}
Family.__index = Family

-- A series: the counter/gauge value, or a histogram's bucket counts, sum and count.
local Series = {}
Series.__index = Series

--- Add `n` (default 1) to a counter or gauge series. A counter refuses to go down.
function Series:inc(n)
  n = n or 1
  if self.counter and n < 0 then error("a counter only goes up", 2) end
  self.v = self.v + n
end

--- Set a gauge series.
function Series:set(v)
  if self.counter then error("a counter cannot be set", 2) end
  self.v = v
end

--- Record one observation in a histogram series.
function Series:observe(v)
  local b, counts = self.bounds, self.counts
  for i = 1, #b do
    if v <= b[i] then counts[i] = counts[i] + 1 break end
  end
  self.sum = self.sum + v
  self.count = self.count + 1
end

--- The series of these label values (one per label name, in order), made on first use.
function Family:labels(...)
  local n = select("#", ...)
  if n ~= #self.label_names then
    error(format("%s takes %d label value(s), got %d", self.name, #self.label_names, n), 2)
  end
  local key = n == 0 and "" or concat({ ... }, "\0")
  local s = self.series[key]
  if s then return s end
  s = setmetatable({ values = { ... }, v = 0, counter = self.kind == "counter" }, Series)
  if self.kind == "histogram" then
    s.bounds, s.counts, s.sum, s.count = self.buckets, {}, 0, 0
    for i = 1, #self.buckets do s.counts[i] = 0 end
  end
  self.series[key] = s
  self.order[#self.order + 1] = key
  return s
end

-- Shortcuts for a family without labels.
function Family:inc(n) return self:labels():inc(n) end
function Family:set(v) return self:labels():set(v) end
function Family:observe(v) return self:labels():observe(v) end

local function label_text(names, values, extra_name, extra_value)
  local parts = {}
  for i, name in ipairs(names) do
    parts[#parts + 1] = name .. "=\"" .. escape_label(values[i]) .. "\""
  end
  if extra_name then parts[#parts + 1] = extra_name .. "=\"" .. extra_value .. "\"" end
  if #parts == 0 then return "" end
  return "{" .. concat(parts, ",") .. "}"
end

function Family:_expose(out)
  out[#out + 1] = "# HELP " .. self.name .. " " .. escape_help(self.help)
  out[#out + 1] = "# TYPE " .. self.name .. " " .. self.kind
  if self.collect then self.collect(self) end
  for _, key in ipairs(self.order) do
    local s = self.series[key]
    if self.kind == "histogram" then
      local cum = 0
      for i, bound in ipairs(s.bounds) do
        cum = cum + s.counts[i]
        out[#out + 1] = self.name .. "_bucket" ..
          label_text(self.label_names, s.values, "le", number(bound)) .. " " .. number(cum)
      end
      out[#out + 1] = self.name .. "_bucket" ..
        label_text(self.label_names, s.values, "le", "+Inf") .. " " .. number(s.count)
      out[#out + 1] = self.name .. "_sum" .. label_text(self.label_names, s.values) .. " " ..
        number(s.sum)
      out[#out + 1] = self.name .. "_count" .. label_text(self.label_names, s.values) .. " " ..
        number(s.count)
    else
      out[#out + 1] = self.name .. label_text(self.label_names, s.values) .. " " .. number(s.v)
    end
  end
end

local Registry = {}
Registry.__index = Registry

local function add(self, kind, name, help, label_names, opts)
  if type(name) ~= "string" or not name:match("^[%a_:][%w_:]*$") then
    error("bad metric name " .. tostring(name), 3)
  end
  if kind == "counter" and not name:match("_total$") then
    error("a counter's name ends in _total: " .. name, 3)
  end
  if self.families[name] then error("metric " .. name .. " registered twice", 3) end
  label_names = label_names or {}
  for _, l in ipairs(label_names) do
    if type(l) ~= "string" or not l:match("^[%a_][%w_]*$") or l:match("^__") or l == "le" then
      error("bad label name " .. tostring(l) .. " of " .. name, 3)
    end
  end
  opts = opts or {}
  local f = setmetatable({ kind = kind, name = name, help = help or name,
    label_names = label_names, series = {}, order = {}, collect = opts.collect,
    buckets = kind == "histogram" and (opts.buckets or _M.SECONDS_BUCKETS) or nil }, Family)
  self.families[name] = f
  self.list[#self.list + 1] = f
  -- a family without labels has its one series from the start (it shows as 0)
  if #label_names == 0 then f:labels() end
  -- and fixed label sets, given up front, show as 0 too
  for _, values in ipairs(opts.series or {}) do f:labels(table.unpack(values)) end
  return f
end

--- A counter family: name (ending in _total), help, label names, opts { series = {{...}},
-- collect = function(family) called before each exposition }.
function Registry:counter(name, help, labels, opts)
  return add(self, "counter", name, help, labels, opts)
end
--- A gauge family (opts.collect sets its values at scrape time).
function Registry:gauge(name, help, labels, opts)
  return add(self, "gauge", name, help, labels, opts)
end
--- A histogram family: opts.buckets (upper bounds, ascending; default SECONDS_BUCKETS).
function Registry:histogram(name, help, labels, opts)
  return add(self, "histogram", name, help, labels, opts)
end

--- The family registered under `name`, or nil.
function Registry:get(name) return self.families[name] end

--- Every family in Prometheus text exposition format 0.0.4, in registration order.
function Registry:expose()
  local out = {}
  for _, f in ipairs(self.list) do f:_expose(out) end
  out[#out + 1] = ""
  return concat(out, "\n")
end

--- The values as a plain table: { [name] = { [label values joined by ","] = value } }
-- (histograms: { count =, sum = }); a family without labels is its one value. For a Lua
-- host's own metrics.
function Registry:values()
  local t = {}
  for _, f in ipairs(self.list) do
    if f.collect then f.collect(f) end
    local fam = {}
    for _, key in ipairs(f.order) do
      local s = f.series[key]
      local k = concat(s.values, ",")
      fam[k] = f.kind == "histogram" and { count = s.count, sum = s.sum } or s.v
    end
    if #f.label_names == 0 then fam = fam[""] end
    t[f.name] = fam
  end
  return t
end

--- A new, empty registry.
function _M.registry()
  return setmetatable({ families = {}, list = {} }, Registry)
end

--- The Content-Type of the exposition.
_M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

return _M
