-- Many processes on one cache while one of them is killed with SIGKILL at random moments
-- and restarted: a committed upsert survives kill -9 at any instant. Tagged #slow:
-- `make unit` leaves it out; `make test` runs it (about 12 s).
local core = require("mtasts.core")
local util = require("support.util")

local WORKERS, SECONDS = 4, 10

local function spawn(dir, w, log, deadline)
  local out = util.run(util.lua_cmd() .. " spec/support/cache_worker.lua " .. dir .. " " .. w ..
    " " .. log .. " " .. deadline .. " " .. math.random(0, 1 << 31) .. " 2>>" .. log ..
    ".stderr >/dev/null & echo $!")
  return assert(tonumber(out:match("(%d+)")), out)
end

local proc = require("support.proc")
local alive = proc.alive

describe("mtasts.cache under many processes #slow", function()
  local dir, cleanup, pids = nil, nil, {}
  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function()
    for _, pid in pairs(pids) do os.execute("kill -9 " .. pid .. " 2>/dev/null") end
    cleanup()
  end)

  it("loses no acknowledged upsert and never blocks over 2 s while writers are killed",
    function()
      local cachedir = dir .. "/cache"
      local deadline = core.monotonic() + SECONDS
      local logs = {}
      util.seed()   -- which worker dies when, and each worker's choices (its seed)
      for w = 1, WORKERS do
        logs[w] = dir .. "/worker" .. w .. ".log"
        pids[w] = spawn(cachedir, w, logs[w], deadline)
      end
      local kills = 0
      while core.monotonic() < deadline - 0.5 do
        os.execute(string.format("sleep %.2f", 0.05 + math.random() * 0.6))
        local w = math.random(WORKERS)
        os.execute("kill -9 " .. pids[w] .. " 2>/dev/null")
        kills = kills + 1
        pids[w] = spawn(cachedir, w, logs[w], deadline)
      end
      -- wait for the workers to reach the deadline and stop
      local stop_by = deadline + 20
      for w = 1, WORKERS do
        proc.poll(function() return not alive(pids[w]) end, stop_by - core.monotonic())
        assert.is_false(alive(pids[w]), "worker " .. w .. " did not stop")
      end
      -- under make valgrind a worker takes seconds to start, so fewer kills fit in the window
      local want = (os.getenv("MTASTS_VALGRIND") or "") == "" and 10 or 5
      assert.is_true(kills >= want, "only " .. kills .. " kills")

      local last, maxwait, acks, errors = {}, 0, 0, {}
      for w = 1, WORKERS do
        for line in io.lines(logs[w]) do
          local domain, seq = line:match("^ack (%S+) (%d+)$")
          if domain then
            acks = acks + 1
            seq = tonumber(seq)
            if not last[domain] or seq > last[domain] then last[domain] = seq end
          end
          local mw = tonumber(line:match("^maxwait (%S+)$"))
          if mw and mw > maxwait then maxwait = mw end
          local e = line:match("^error (.*)$")
          if e then errors[#errors + 1] = e end
        end
      end
      assert.same({}, errors)
      assert.is_true(acks > 500, "only " .. acks .. " acknowledged upserts")
      assert.is_true(maxwait < util.within(2.0), ("an operation waited %.3f s"):format(maxwait))

      local cache = assert(core.cache_open(cachedir))
      for domain, seq in pairs(last) do
        local row = cache:lookup(domain, 1000)
        assert.is_table(row, domain .. " lost")
        if domain:match("^w") then    -- written by one worker only: never older than its ack
          assert.is_true(tonumber(row.record_id) >= seq,
            domain .. " has " .. row.record_id .. ", acknowledged " .. seq)
        end
      end
      assert.is_true(cache:verify())
      -- old log files are removed: regions (~7.5 MiB), a log file or two, the rows
      local kib = tonumber((util.run("du -sk " .. cachedir):match("^(%d+)")))
      assert.is_true(kib < 16 * 1024, ("the cache directory holds %d KiB"):format(kib))
      -- each kill inside the gate makes the next process recover the environment
      local recoveries = cache:stats().recoveries
      assert.is_true(recoveries >= 1, "no kill landed inside the gate")
      cache:close()
      print(("\n    %d kills, %d recoveries, %d acknowledged upserts, longest operation %.3f s, " ..
        "directory %d KiB"):format(kills, recoveries, acks, maxwait, kib))
    end)
end)
