-- bench/results.lua: the TLSRPT result store (make bench).
--   adds/s, one process: store:add of a fresh result per delivery (built by
--     tlsrpt.sts_result as the client builds it), 10,000 policy domains, 1 in 10 with a
--     failure detail; the default batching (commits of up to 100,000 results, at least
--     every second), committed durably. The figure is build + add, what a host sees; the
--     time building the results alone is measured apart and shown as a split
--   adds/s, two processes at once: the same, side by side on one store (total)
--   adds/s, one process, 100 policy domains: most results of a batch merge in memory
--   a day of 1,000,000 results over 10,000 policy domains: time to record them, then to
--     build and gzip every report of the day; peak memory (VmHWM) of the process
-- Figures of the first three are the median of 3 runs.
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("MTASTS_CPATH") or "./build/?.so") .. ";" .. package.cpath
local core = require("mtasts.core")
local tlsrpt = require("mtasts.tlsrpt")
local clock = core.monotonic

local DOMAINS = 10000      -- DOMAINS_SMALL for the third figure
local DOMAINS_SMALL = 100
local DAY = "2026-11-20"
local NOW = tlsrpt.day_start(DAY) + 3600

local policies = {}
local function policy_text(i)
  return "version: STSv1\nmode: enforce\nmx: mx1.d" .. i .. ".example\nmx: *.d" .. i ..
    ".example.net\nmax_age: 604800\n"
end
local spread = DOMAINS
local function result_for(n)
  local i = n % spread
  local p = policies[i]
  if not p then
    p = { text = policy_text(i), parsed = { mx = { "mx1.d" .. i .. ".example",
      "*.d" .. i .. ".example.net" } } }
    policies[i] = p
  end
  local r = tlsrpt.sts_result("d" .. i .. ".example", p.text, p.parsed)
  if n % 10 == 0 then
    r.summary.failure = 1
    tlsrpt.add_failure(r, "certificate-expired", "certificate-expired",
      { receiving_mx_hostname = "mx1.d" .. i .. ".example", receiving_ip = "192.0.2." .. n % 200 })
  else
    r.summary.success = 1
  end
  return r
end

local function open(dir)
  return assert(tlsrpt.open{ path = dir, submitter = "mail.sender.example",
    clock = function() return NOW end })
end

local function adds(store, secs, offset)
  local n, t0 = 0, clock()
  repeat
    for k = 1, 1000 do assert(store:add(result_for(offset + n + k))) end
    n = n + 1000
  until clock() - t0 >= secs
  assert(store:flush())
  return n / (clock() - t0)
end

-- microseconds to build one result alone (the same results adds builds)
local function build_us(count, offset)
  local t0 = clock()
  for n = 1, count do result_for(offset + n) end
  return (clock() - t0) / count * 1e6
end

local mode, dir = arg[1], arg[2]
if mode == "adds-child" then
  local store = open(dir)
  local start = tonumber(arg[3])
  while clock() < start do end      -- start together
  print(adds(store, 1.0, tonumber(arg[4])))
  store:close()
  return
end

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  return d
end

local function hwm_mib()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmHWM:%s+(%d+)")
    if kb then return tonumber(kb) / 1024 end
  end
end

io.write("results store (", DOMAINS, " policy domains, 1 in 10 results with a failure detail)\n")
do
  local one, two, build = {}, {}, {}
  for run = 1, 3 do
    local d = tmpdir()
    local store = open(d)
    one[run] = adds(store, 1.0, 0)
    store:close()
    build[run] = build_us(200000, 0)
    local start = clock() + 0.5
    local lua = arg[-1] or "lua5.4"
    local cmd = ("%s bench/results.lua adds-child %s %.6f %d & %s bench/results.lua adds-child " ..
      "%s %.6f %d; wait"):format(lua, d, start, 0, lua, d, start, 5000000)
    local p = io.popen(cmd)
    local total = 0
    for line in p:lines() do total = total + tonumber(line) end
    p:close()
    two[run] = total
    os.execute("rm -rf '" .. d .. "'")
  end
  io.write(("  add, 1 process:              %9.0f results/s  (%.1f us each: building the " ..
    "result %.1f, add %.1f)\n"):format(median(one), 1e6 / median(one), median(build),
    1e6 / median(one) - median(build)))
  io.write(("  add, 2 processes at once:    %9.0f results/s  (total)\n"):format(median(two)))
  local few, few_build = {}, {}
  spread = DOMAINS_SMALL
  for run = 1, 3 do
    local d = tmpdir()
    local store = open(d)
    few[run] = adds(store, 1.0, 0)
    store:close()
    few_build[run] = build_us(200000, 0)
    os.execute("rm -rf '" .. d .. "'")
  end
  spread = DOMAINS
  io.write(("  add, 1 process, %d domains: %9.0f results/s  (%.1f us each: building the " ..
    "result %.1f, add %.1f)\n"):format(DOMAINS_SMALL, median(few), 1e6 / median(few),
    median(few_build), 1e6 / median(few) - median(few_build)))
end

do
  local d = tmpdir()
  local store = open(d)
  local t0 = clock()
  for n = 1, 1000000 do assert(store:add(result_for(n))) end
  assert(store:flush())
  local t_add = clock() - t0
  policies = {}
  collectgarbage()
  t0 = clock()
  local list = assert(store:domains(DAY))
  local bytes, reports = 0, 0
  for _, r in ipairs(list) do
    local report = assert(store:report(r.domain, DAY, { host = r.host }))
    bytes = bytes + #tlsrpt.gzip(report)
    reports = reports + 1
  end
  local t_build = clock() - t0
  store:close()
  local du = io.popen("du -sk '" .. d .. "/results.db'"):read("l")
  os.execute("rm -rf '" .. d .. "'")
  io.write(("  a day of 1,000,000 results:  recorded in %.2f s; %d reports built and gzipped " ..
    "in %.2f s (%.0f per s, %.1f MiB gzip)\n"):format(t_add, reports, t_build, reports / t_build,
    bytes / 1048576))
  io.write(("  results.db for that day:     %.1f MiB; peak RSS of this process %.1f MiB\n"):format(
    tonumber(du:match("^(%d+)")) / 1024, hwm_mib()))
end
