-- bench/fetch.lua: discover 1,000 distinct policies (TXT record, policy host address, HTTPS
-- fetch) from the fixture world, 50 at a time, in one process driven by its own loop
-- (coroutines, `wait` yields). Prints the wall time, the rate and the peak memory.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = (os.getenv("MTASTS_CPATH") or "./build/?.so") .. ";" .. package.cpath
local core = require("mtasts.core")
local resolver = require("mtasts.resolver")
local fetch = require("mtasts.fetch")
local sts = require("mtasts.discover")
local util = require("support.util")
local proc = require("support.proc")

local N, CONCURRENCY = tonumber(arg[1]) or 1000, tonumber(arg[2]) or 50

local function rss_kib(field)
  for line in io.lines("/proc/self/status") do
    local v = line:match("^" .. field .. ":%s+(%d+)")
    if v then return tonumber(v) end
  end
end

local dir = util.tmpdir()
local ok, err = pcall(function()
  local world = require("support.world").bulk(dir, N)
  local function wait(fd, events, timeout) coroutine.yield(fd, events, timeout) end
  local r = assert(resolver.new{ nameserver = world.dns.nameserver, trust_anchor = false,
    timeout = 10, wait = wait })
  local f = assert(fetch.new{ resolver = r, cafile = world.ca.cafile,
    connect_to = world.connect_to,
    timeout = 30, wait = wait, allow_private_addresses = true })
  local before = rss_kib("VmRSS")
  local next_domain, done, failures = 1, 0, 0
  local workers = {}
  local t0 = core.monotonic()
  for w = 1, CONCURRENCY do
    workers[w] = coroutine.create(function()
      while next_domain <= N do
        local i = next_domain
        next_domain = next_domain + 1
        local _, policy = sts.get(r, f, ("d%d.example"):format(i))
        if type(policy) == "table" and policy.mx[1] == ("mx.d%d.example"):format(i) then
          done = done + 1
        else
          failures = failures + 1
        end
      end
    end)
  end
  repeat
    local live = 0
    for _, co in ipairs(workers) do
      if coroutine.status(co) == "suspended" then
        assert(coroutine.resume(co))
        live = live + 1
      end
    end
    if live > 0 then core.poll(f:fd(), "r", 0.002) end
  until live == 0
  local wall = core.monotonic() - t0
  print(("%-40s %12s"):format("policy discovery (" .. N .. " domains)", "figure"))
  print(("%-40s %12.2f s"):format(("wall time, %d at a time"):format(CONCURRENCY), wall))
  print(("%-40s %12.0f"):format("policies per second", done / wall))
  print(("%-40s %12d"):format("policies fetched and parsed", done))
  print(("%-40s %12d"):format("failures", failures))
  print(("%-40s %12d KiB"):format("peak resident memory (VmHWM)", rss_kib("VmHWM")))
  print(("%-40s %12d KiB"):format("resident memory before the run", before))
  r:close()
  f:close()
  world.stop()
end)
proc.stop_all()
util.run("rm -rf '" .. dir .. "'")
if not ok then error(err) end
