-- bench/client.lua: sts:get from Lua on cached policies (make bench): what a Lua host pays
-- per delivery when the policy is in the cache and was checked within `recheck` seconds
-- (the common case). 1,000 domains, fake resolver and fetcher (never reached on hits).
-- Beside it, in the same run, the raw cache hit: cache:lookup of the same rows on a handle
-- of mtasts.core (what bench/cache.lua measures), and the ratio of the two (issue: sts:get
-- at least 0.8 of the raw hit). Runs of 0.5 s alternate between the two; medians of 5.
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("MTASTS_CPATH") or "./build/?.so") .. ";" .. package.cpath
local mtasts = require("mtasts")
local core = require("mtasts.core")
local clock = core.monotonic

local N = 1000
local POLICY = "version: STSv1\nmode: enforce\nmx: mx1.%s\nmx: *.%s\nmax_age: 604800\n"
local now = 1800000000
local resolver = { txt = function(_, name)
  return { "v=STSv1; id=" .. #name .. ";" }
end }
local fetcher = { fetch = function(_, domain) return POLICY:format(domain, domain) end }

local dir = os.tmpname()
os.remove(dir)
local sts = assert(mtasts.open{ path = dir, resolver = resolver, fetcher = fetcher,
  clock = function() return now end, recheck = 3600 })
local names = {}
for i = 1, N do
  names[i] = "d" .. i .. ".example"
  assert(sts:get(names[i]))
end

local raw = assert(core.cache_open(dir))
local runs, raws = {}, {}
for r = 1, 5 do
  local n, t0 = 0, clock()
  repeat
    for i = 1, N do sts:get(names[i]) end
    n = n + N
  until clock() - t0 >= 0.5
  runs[r] = n / (clock() - t0)
  n, t0 = 0, clock()
  repeat
    for i = 1, N do raw:lookup(names[i], now) end
    n = n + N
  until clock() - t0 >= 0.5
  raws[r] = n / (clock() - t0)
end
table.sort(runs)
table.sort(raws)
raw:close()
sts:close()
os.execute("rm -rf '" .. dir .. "'")
io.write(("sts:get on cached policies (1,000 domains, checked within recheck): %.0f/s " ..
  "(%.2f us each)\n"):format(runs[3], 1e6 / runs[3]))
io.write(("raw cache hits (cache:lookup, same rows, same run):              %.0f/s " ..
  "(%.2f us each)\n"):format(raws[3], 1e6 / raws[3]))
io.write(("sts:get / raw hit: %.2f\n"):format(runs[3] / raws[3]))
