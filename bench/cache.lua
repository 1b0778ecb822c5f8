-- bench/cache.lua: the policy cache from Lua (make bench).
--   hits/s, one process: lookup of cached domains (last_use already fresh, so no writes),
--     answered from the handle's memo after the first pass (docs/cache.md, "Row versions")
--   hits/s, two processes at once: the same, run side by side on one cache (total), and the
--     ratio to one process (issue 20: at least 1.6)
--   the same two without the memo (core.cache_open(dir, nil, 0)): every lookup enters the
--     gate and Berkeley DB, as a row written since its last read does
--   upserts/s: durable (fsync'd) upserts of a typical policy, one process
--   checks/s: mark_checked of cached domains (a write to the log, not synced: what a recheck
--     that finds the record unchanged costs), one process
-- Each figure is the median of 5 runs.
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("MTASTS_CPATH") or "./build/?.so") .. ";" .. package.cpath
local core = require("mtasts.core")
local clock = core.monotonic

local POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n" ..
  "mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n"
local DOMAINS = 1000
local NOW = 1000000

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

local mode, dir = arg[1], arg[2]

-- child mode: run hits for `secs` seconds, print the count
if mode == "hits-child" then
  local c = assert(core.cache_open(dir, nil, tonumber(arg[5])))
  local secs = tonumber(arg[3])
  local start = tonumber(arg[4])
  local names = {}   -- made before, as for one process: the loop measures lookups alone
  for i = 1, 1000 do names[i] = "d" .. (i % DOMAINS) .. ".example" end
  while clock() < start do end   -- start together
  local n, stop = 0, start + secs
  repeat
    for i = 1, 1000 do assert(c:lookup(names[i], NOW)) end
    n = n + 1000
  until clock() >= stop
  print(n / secs)
  return
end

dir = os.tmpname()
os.remove(dir)
local c = assert(core.cache_open(dir))
local cold = assert(core.cache_open(dir, nil, 0))   -- a handle without a memo
for i = 0, DOMAINS - 1 do assert(c:upsert("d" .. i .. ".example", "id" .. i, POLICY, NOW)) end
local names = {}
for i = 0, 999 do names[i + 1] = "d" .. (i % DOMAINS) .. ".example" end

local function hits_once(h)
  local n, t0 = 0, clock()
  repeat
    for i = 1, 1000 do h:lookup(names[i], NOW) end
    n = n + 1000
  until clock() - t0 >= 0.5
  return n / (clock() - t0)
end

local function upserts_once()
  local n, t0 = 0, clock()
  repeat
    n = n + 1
    assert(c:upsert("u" .. (n % 500) .. ".example", "id" .. n, POLICY, NOW))
  until clock() - t0 >= 0.5
  return n / (clock() - t0)
end

local function checks_once()
  local n, t0 = 0, clock()
  repeat
    for i = 1, 100 do assert(c:mark_checked(names[i], NOW + n + i)) end
    n = n + 100
  until clock() - t0 >= 0.5
  return n / (clock() - t0)
end

local function two_processes(memo_rows)
  local lua = "LUA_CPATH='" .. (os.getenv("MTASTS_CPATH") or "./build/?.so") .. ";;' lua5.4"
  local start = clock() + 0.3
  local cmd = lua .. " bench/cache.lua hits-child " .. dir .. " 1 " .. start .. " " .. memo_rows
  local a, b = io.popen(cmd), io.popen(cmd)
  local total = tonumber(a:read("a")) + tonumber(b:read("a"))
  a:close(); b:close()
  return total
end

local r = {}
for i = 1, 5 do r[i] = hits_once(c) end
local hits1 = median(r)
r = {}
for i = 1, 5 do r[i] = two_processes(4096) end
local hits2 = median(r)
r = {}
for i = 1, 5 do r[i] = hits_once(cold) end
local cold1 = median(r)
r = {}
for i = 1, 5 do r[i] = two_processes(0) end
local cold2 = median(r)
r = {}
for i = 1, 5 do r[i] = upserts_once() end
local ups = median(r)
r = {}
for i = 1, 5 do r[i] = checks_once() end
local checks = median(r)
c:close()
cold:close()
os.execute("rm -rf '" .. dir .. "'")

print(string.format("%-40s %12s", "cache (" .. DOMAINS .. " domains)", "per second"))
print(string.format("%-40s %12.0f", "hits, 1 process", hits1))
print(string.format("%-40s %12.0f  (%.2fx one process)", "hits, 2 processes at once (total)",
  hits2, hits2 / hits1))
print(string.format("%-40s %12.0f", "hits without the memo, 1 process", cold1))
print(string.format("%-40s %12.0f  (%.2fx one process)", "  the same, 2 processes (total)", cold2,
  cold2 / cold1))
print(string.format("%-40s %12.0f", "upserts (durable), 1 process", ups))
print(string.format("%-40s %12.0f", "mark_checked (not synced), 1 process", checks))
