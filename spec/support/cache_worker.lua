-- A cache worker for spec/cache_processes_spec.lua and spec/cache_users_spec.lua: mixed
-- lookups and upserts until a deadline.
-- usage: cache_worker.lua DIR WORKER LOG DEADLINE(monotonic seconds) [SEED [MODE]]
-- MODE (octal, "0660") is the mode of the cache's files. After each committed upsert it
-- appends "ack <domain> <seq>" to LOG; every 20 operations it appends "maxwait <seconds>",
-- the longest single operation so far, and "recoveries <n>", the cache's count of recoveries
-- after a death inside it. A restarted worker continues its sequence above anything its log
-- shows, so sequences only grow. A lookup of a row this worker writes alone (w<worker>-N)
-- must show its last acknowledged upsert or a later one, memo or not ("error stale ..."
-- otherwise).
local core = require("mtasts.core")
local dir, worker, logpath, deadline, seed = arg[1], arg[2], arg[3], tonumber(arg[4]),
  math.tointeger(tonumber(arg[5]))
local mode = arg[6] and tonumber(arg[6], 8)

local seq = 0
do
  local f = io.open(logpath, "r")
  if f then
    for line in f:lines() do
      local n = tonumber(line:match("^ack %S+ (%d+)$"))
      if n and n > seq then seq = n end
    end
    f:close()
  end
end
seq = seq + 100000     -- past anything committed but not acknowledged before a kill

local log = assert(io.open(logpath, "a"))
log:setvbuf("line")
local clock = core.monotonic
math.randomseed(seed or math.floor(clock() * 1e6) + #worker)   -- the spec passes a seed

local t0 = clock()
local cache, err, code = core.cache_open(dir, mode)
local maxwait = clock() - t0
if not cache then
  io.stderr:write("open failed: ", tostring(code), " ", tostring(err), "\n")
  os.exit(3)
end

local POLICY = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n"
local ops = 0
local acked = {}     -- domain -> the last sequence this run acknowledged for it
while clock() < deadline do
  local r = math.random()
  local t = clock()
  local ok, msg, c
  if r < 0.3 then
    ok, msg, c = cache:lookup(("s%d.example"):format(math.random(50)), 1000)
    if ok == nil and msg == nil then ok = true end
  elseif r < 0.5 then
    local domain = ("w%s-%d.example"):format(worker, math.random(200))
    ok, msg, c = cache:lookup(domain, 1000)
    if ok == nil and msg == nil then ok = true end
    if ok and acked[domain] and (type(ok) ~= "table" or tonumber(ok.record_id) < acked[domain])
    then
      ok, c, msg = nil, "stale", domain .. " shows " .. tostring(type(ok) == "table" and
        ok.record_id) .. ", acknowledged " .. acked[domain]
    end
  else
    seq = seq + 1
    local domain = r < 0.8 and ("w%s-%d.example"):format(worker, math.random(200))
      or ("s%d.example"):format(math.random(50))
    ok, msg, c = cache:upsert(domain, tostring(seq), POLICY, 1000)
    if ok then
      log:write("ack ", domain, " ", seq, "\n")
      acked[domain] = seq
    end
  end
  local took = clock() - t
  if took > maxwait then maxwait = took end
  if not ok then
    io.stderr:write("operation failed: ", tostring(c), " ", tostring(msg), "\n")
    log:write("error ", tostring(c), "\n")
  end
  ops = ops + 1
  if ops % 20 == 0 then
    log:write("maxwait ", maxwait, "\n")
    log:write("recoveries ", cache:stats().recoveries, "\n")
  end
end
log:write("maxwait ", maxwait, "\n")
log:write("done ", ops, "\n")
cache:close()
