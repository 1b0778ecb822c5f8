-- One mail host of a fleet, as its own process (spec/fleet_spec.lua): reads a job from the
-- JSON file named by its first argument and writes what it did, as JSON, to the second.
--   { lookup = { domains... }, open = { mtasts.open options, redis included } }
--     -> { answers = { [domain] = mode or false }, fetches = n, shared = n, rejected = n }
--   { record = { { domain =, success =, failure = }, ... }, store = { tlsrpt.open options },
--     now = seconds, ship = bool } -> { shipped = { days =, keys = } | false, error = }
local mtasts = require("mtasts")
local json = require("cjson")

local f = assert(io.open(arg[1], "rb"))
local job = json.decode(f:read("a"))
f:close()
-- cjson gives every number as a float: integers where they are integral
local function ints(t)
  for k, v in pairs(t) do
    if type(v) == "table" then ints(v)
    elseif math.type(v) == "float" and math.tointeger(v) then t[k] = math.tointeger(v) end
  end
  return t
end
ints(job)
local out = {}

local function sum(values, family, label)
  local n = 0
  for labels, v in pairs(values[family] or {}) do
    if label == nil or labels == label then n = n + v end
  end
  return n
end

if job.lookup then
  local sts = assert(mtasts.open(job.open))
  out.answers = {}
  for _, d in ipairs(job.lookup) do
    local policy = sts:get(d)
    out.answers[d] = policy and policy.mode or false
  end
  local values = sts:stats()
  out.fetches = sum(values, "mtasts_policy_fetches_total")
  out.shared = sum(values, "mtasts_fleet_policy_reads_total", "hit")
  out.rejected = sum(values, "mtasts_fleet_policy_reads_total", "rejected")
  sts:close()
elseif job.record then
  local now = job.now
  local o = job.store
  o.clock = function() return now end
  local store = assert(mtasts.tlsrpt.open(o))
  local POLICY = "version: STSv1\nmode: enforce\nmx: mx1.enforce.example\nmax_age: 86400\n"
  for _, r in ipairs(job.record) do
    for _ = 1, r.times or 1 do
      local res = mtasts.tlsrpt.sts_result(r.domain, POLICY, { mx = { "mx1.enforce.example" } })
      res.summary.success, res.summary.failure = r.success or 0, r.failure or 0
      if (r.failure or 0) > 0 then
        mtasts.tlsrpt.add_failure(res, "certificate-expired", "certificate-expired",
          { receiving_mx_hostname = "mx1.enforce.example", count = r.failure })
      end
      assert(store:add(res))
    end
  end
  assert(store:flush())
  if job.ship then
    local s, err = store:ship()
    out.shipped, out.error = s or false, err
  end
  store:close()
end
local o = assert(io.open(arg[2], "wb"))
o:write(require("mtasts.json").encode(out), "\n")
o:close()
