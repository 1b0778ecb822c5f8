-- bench/fleet.lua: what a fleet's Redis (docs/fleet.md) costs and saves, against a private
-- redis-server on a loopback port (make bench):
-- - sts:get on cached policies, with and without `redis`: a hit never reaches Redis, so
--   the two should be the same;
-- - a lookup that misses the local cache: answered from Redis (another host fetched the
--   policy), against fetched over HTTPS from the fixture world's nginx on loopback (DNS is
--   the world's NSD in both);
-- - shipping a day's TLSRPT counters: counters per second for 10,000 domains.
-- Medians of 5 runs where a rate is printed.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = (os.getenv("MTASTS_CPATH") or "./build/?.so") .. ";" .. package.cpath
local mtasts = require("mtasts")
local core = require("mtasts.core")
local fleet = require("mtasts.fleet")
local util = require("support.util")
local proc = require("support.proc")
local clock = core.monotonic

local N = tonumber(arg[1]) or 300          -- domains of the miss benchmark
local DOMAINS = tonumber(arg[2]) or 10000  -- domains of the shipping benchmark

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

local dir = util.tmpdir()
local redis
local ok, err = pcall(function()
  util.run("mkdir -p " .. dir .. "/redis")
  redis = require("support.redis").start(dir .. "/redis")
  local url = "redis://127.0.0.1:" .. redis.port

  -- 1. hits, with and without Redis
  local POLICY = "version: STSv1\nmode: enforce\nmx: mx1.%s\nmax_age: 604800\n"
  local now = 1800000000
  local fake_resolver = { txt = function(_, name) return { "v=STSv1; id=" .. #name .. ";" } end }
  local fake_fetcher = { fetch = function(_, d) return POLICY:format(d) end }
  local rates = {}
  for _, with in ipairs({ false, true }) do
    local sts = assert(mtasts.open{ path = dir .. "/hits" .. tostring(with),
      resolver = fake_resolver, fetcher = fake_fetcher, clock = function() return now end,
      recheck = 3600, redis = with and { url = url, host = "bench" } or nil })
    local names = {}
    for i = 1, 1000 do
      names[i] = "d" .. i .. ".example"
      assert(sts:get(names[i]))
    end
    local runs = {}
    for r = 1, 5 do
      local n, t0 = 0, clock()
      repeat
        for i = 1, 1000 do sts:get(names[i]) end
        n = n + 1000
      until clock() - t0 >= 0.3
      runs[r] = n / (clock() - t0)
    end
    rates[with] = median(runs)
    sts:close()
  end
  io.write(("sts:get on cached policies, 1,000 domains: %.0f/s without Redis, %.0f/s with " ..
    "(%.2f)\n"):format(rates[false], rates[true], rates[true] / rates[false]))

  -- 2. misses: from Redis, or fetched over HTTPS (the fixture world on loopback)
  local world = require("support.world").bulk(dir, N)
  local function open(i, with)
    return assert(mtasts.open{ path = dir .. "/miss" .. i, nameserver = world.dns.nameserver,
      trust_anchor = false, cafile = world.ca.cafile, connect_to = world.connect_to,
      allow_private_addresses = true, timeouts = { dns = 5, fetch = 5 },
      redis = with and { url = url, host = "h" .. i } or nil })
  end
  local function misses(sts)
    local lat = {}
    for i = 1, N do
      local t0 = clock()
      assert(sts:get("d" .. i .. ".example"))
      lat[i] = clock() - t0
    end
    local total = 0
    for _, v in ipairs(lat) do total = total + v end
    return median(lat), total
  end
  redis:cmd("FLUSHALL")
  local a = open(1, false)
  local fetched_med, fetched_total = misses(a)      -- no Redis: each one fetched
  a:close()
  local b = open(2, true)
  misses(b)                                         -- host 2 fetches and fills Redis
  b:close()
  local c = open(3, true)
  local shared_med, shared_total = misses(c)        -- host 3: every miss answered by Redis
  local st = c:stats()
  local hits = 0
  for labels, v in pairs(st.mtasts_fleet_policy_reads_total or {}) do
    if labels == "hit" then hits = v end
  end
  c:close()
  -- the Redis part of such a miss alone: reading and checking the policy
  local reader = assert(fleet.new({ url = url, host = "reader" }))
  local reads, tnow = {}, os.time()
  for i = 1, N do
    local t0 = clock()
    assert(reader:policy("d" .. i .. ".example", tostring(i), nil, tnow))
    reads[i] = clock() - t0
  end
  reader:close()
  io.write(("reading and checking one policy from Redis: %.0f us (median of %d)\n"):format(
    median(reads) * 1e6, N))
  io.write(("a local cache miss (%d domains, DNS on loopback): fetched over HTTPS %.2f ms " ..
    "(median), %.0f/s; answered by Redis %.2f ms, %.0f/s (%d of %d from Redis)\n"):format(N,
    fetched_med * 1e3, N / fetched_total, shared_med * 1e3, N / shared_total, hits, N))
  world.stop()

  -- 3. shipping a day's counters
  local tlsrpt = require("mtasts.tlsrpt")
  local day_now = tlsrpt.day_start("2026-11-20") + 3600
  local store = assert(tlsrpt.open{ path = dir .. "/results", submitter = "bench.example",
    clock = function() return day_now end })
  local text = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmax_age: 86400\n"
  for i = 1, DOMAINS do
    local r = tlsrpt.sts_result("d" .. i .. ".example", text, { mx = { "mx1.example.com" } })
    r.summary.success = 5
    if i % 10 == 0 then
      r.summary.failure = 1
      tlsrpt.add_failure(r, "certificate-expired", "certificate-expired",
        { receiving_mx_hostname = "mx1.example.com" })
    end
    assert(store:add(r))
  end
  assert(store:flush())
  local fl = assert(fleet.new({ url = url, host = "bench" }, { clock = function()
    return day_now end }))
  local runs, keys = {}, 0
  for r = 1, 5 do
    local t0 = clock()
    local s = assert(fl:ship(store))
    runs[r] = s.keys / (clock() - t0)
    keys = s.keys
  end
  io.write(("shipping a day's counters (%d domains, %d counters): %.0f counters/s " ..
    "(%.0f ms a day)\n"):format(DOMAINS, keys, median(runs), keys / median(runs) * 1e3))
  local t0 = clock()
  local flat = assert(fl:totals("2026-11-20"))
  io.write(("reading the fleet's totals of that day back: %.0f ms (%d counters)\n"):format(
    (clock() - t0) * 1e3, #flat // 3))
  fl:close()
  store:close()
end)
if redis then redis:stop() end
proc.stop_all()
os.execute("rm -rf '" .. dir .. "'")
if not ok then error(err, 0) end
