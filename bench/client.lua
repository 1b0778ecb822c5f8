-- bench/client.lua: sts:get from Lua on cached policies (make bench): what a Lua host pays
-- per delivery when the policy is in the cache and was checked within `recheck` seconds
-- (the common case). 1,000 domains, fake resolver and fetcher (never reached on hits).
-- Prints the median of 5 runs of 0.5 s.
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

local runs = {}
for r = 1, 5 do
  local n, t0 = 0, clock()
  repeat
    for i = 1, N do sts:get(names[i]) end
    n = n + N
  until clock() - t0 >= 0.5
  runs[r] = n / (clock() - t0)
end
table.sort(runs)
sts:close()
os.execute("rm -rf '" .. dir .. "'")
io.write(("sts:get on cached policies (1,000 domains, checked within recheck): %.0f/s " ..
  "(%.1f us each)\n"):format(runs[3], 1e6 / runs[3]))
