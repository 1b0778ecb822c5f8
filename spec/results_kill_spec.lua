-- A process adding results in a loop is killed with SIGKILL at no particular moment (in its
-- adds, in a commit of several transactions, or between): the store then holds every result
-- of each flush that had returned true, nothing the process did not add, and stays usable by
-- the next process. docs/tlsrpt.md, "Batching".
local tlsrpt = require("mtasts.tlsrpt")
local core = require("mtasts.core")
local util = require("support.util")
local proc = require("support.proc")

local DAY0 = tlsrpt.day_start("2026-11-20")
-- K adds between flushes, over as many policy domains: each flush commits about 5,700
-- distinct counters in 12 transactions, so a kill often lands inside one
local K, DOMAINS, ROUNDS = 5000, 5000, 4

local function last_flushed(log)
  local n = -1          -- -1: not started
  local f = io.open(log)
  if not f then return n end
  for line in f:lines() do
    if line == "started" then n = math.max(n, 0) end
    n = tonumber(line:match("^flushed (%d+)$")) or n
  end
  f:close()
  return n
end

describe("mtasts.tlsrpt.store killed with SIGKILL", function()
  local dir, cleanup
  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function()
    proc.stop_all()
    cleanup()
  end)

  it("keeps every result of a flush that returned true, and the next process goes on", function()
    local db = dir .. "/db"
    util.seed()
    for round = 1, ROUNDS do
      local day = tlsrpt.day_of(DAY0 + round * 86400)
      local log = dir .. "/round" .. round .. ".log"
      local pid = proc.spawn("flusher " .. round, util.lua_cmd() ..
        " spec/support/results_flusher.lua " .. db .. " " .. day .. " " .. K .. " " ..
        DOMAINS .. " " .. log, log)
      -- a few flushes in, and a random number of adds past one: the moment is the test
      local target = K * math.random(1, 4) + math.random(0, K - 1)
      assert.is_true(proc.poll(function() return last_flushed(log) >= target end,
        util.within(60)), "round " .. round .. ": " .. util.run("cat " .. log))
      local lua_pids = util.run("ps -o pid= --ppid " .. pid)
      proc.signal(pid, "KILL")
      for p in lua_pids:gmatch("%d+") do
        assert.is_true(proc.poll(function() return not proc.alive(p) end, util.within(10)))
      end
      local flushed = last_flushed(log)

      -- what the killed process had flushed is there; at most the adds since
      local store = assert(tlsrpt.open{ path = db, submitter = "mail.sender.example" })
      local stored = 0
      for _, d in ipairs(assert(store:stats()).days) do
        if d.day == day then stored = d.success end
      end
      assert.is_true(stored >= flushed and stored <= flushed + K,
        ("round %d: %d stored, %d flushed"):format(round, stored, flushed))
      -- a result went in whole: every result of k7.example carries a failure detail
      local p = assert(store:report("k7.example", day)).policies[1]
      assert.equal(p.summary["total-successful-session-count"],
        p["failure-details"][1]["failed-session-count"])
      -- the database is consistent: this process adds and reads back
      local r = tlsrpt.sts_result("after.example", "version: STSv1\nmode: none\nmax_age: 60\n")
      r.summary.success = 1
      assert.is_true(store:add(r, { day = day }))
      assert.is_true(store:flush())
      local after = 0
      for _, d in ipairs(assert(store:stats()).days) do
        if d.day == day then after = d.success end
      end
      assert.equal(stored + 1, after)
      assert(store:close())
    end
    assert.is_true(core.cache_open(db):verify())
  end)
end)
