-- Four processes add results to one store at once while one of them is killed with SIGKILL
-- mid-run: the totals equal what was acknowledged. Tagged #slow: `make unit` leaves
-- it out; `make test` runs it.
local tlsrpt = require("mtasts.tlsrpt")
local core = require("mtasts.core")
local util = require("support.util")

local WORKERS, COUNT, BATCH = 4, 20000, 100

local function spawn(dir, w, log, count)
  local out = util.run(util.lua_cmd() .. " spec/support/results_worker.lua " .. dir .. " " .. w ..
    " " .. (count or COUNT) .. " " .. BATCH .. " " .. log .. " 2>>" .. log ..
    ".stderr >/dev/null & echo $!")
  return assert(tonumber(out:match("(%d+)")), out)
end

local proc = require("support.proc")
local alive = proc.alive

local function last_ack(log)
  local n, done = 0, false
  local f = io.open(log)
  if not f then return 0, false end
  for line in f:lines() do
    n = tonumber(line:match("^ack (%d+)$")) or n
    if line == "done" then done = true end
  end
  f:close()
  return n, done
end

describe("mtasts.tlsrpt.store under many processes #slow", function()
  local dir, cleanup, pids = nil, nil, {}
  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function()
    for _, pid in pairs(pids) do os.execute("kill -9 " .. pid .. " 2>/dev/null") end
    cleanup()
  end)

  it("keeps every acknowledged result while one writer is killed mid-batch", function()
    local db = dir .. "/db"
    local logs = {}
    -- worker 1, the victim, has ten times as much to do: on a machine with fast syncs the
    -- others' 200 commits can all be over before the kill comes
    local victim = 1
    for w = 1, WORKERS do
      logs[w] = dir .. "/w" .. w .. ".log"
      pids[w] = spawn(db, w, logs[w], w == victim and 10 * COUNT or COUNT)
    end
    -- kill the victim once it has committed a few batches, at no particular moment
    local until_t = core.monotonic() + 60
    proc.poll(function() return last_ack(logs[victim]) >= 5 * BATCH end, until_t - core.monotonic())
    util.seed()
    os.execute(string.format("sleep %.3f", math.random() * 0.05))   -- the moment is the test
    os.execute("kill -9 " .. pids[victim])
    for w = 1, WORKERS do
      proc.poll(function() return not alive(pids[w]) end, until_t + 60 - core.monotonic())
      assert.is_false(alive(pids[w]), "worker " .. w .. " did not finish")
    end

    local store = assert(tlsrpt.open{ path = db, submitter = "mail.sender.example" })
    for w = 1, WORKERS do
      local acked, done = last_ack(logs[w])
      local report = store:report("w" .. w .. ".example", "2026-11-20")
      local p = report and report.policies[1]
      local success = p and p.summary["total-successful-session-count"] or 0
      local failure = p and p.summary["total-failure-session-count"] or 0
      local details = p and p["failure-details"][1] and
        p["failure-details"][1]["failed-session-count"] or 0
      if w == victim then
        assert.is_false(done, "the victim finished before it was killed")
        -- nothing acknowledged is lost; at most the batch in flight is
        assert.is_true(success == acked or success == acked + BATCH,
          ("victim: %d stored, %d acknowledged"):format(success, acked))
      else
        assert.is_true(done, "worker " .. w .. ": " .. util.run("cat " .. logs[w] .. ".stderr"))
        assert.equal(COUNT, acked)
        assert.equal(COUNT, success)
      end
      assert.equal(success, failure)
      assert.equal(success, details)
    end
    store:close()
    assert.is_true(core.cache_open(db):verify())
    -- retried commits (a worker waited over 5 s for the gate, e.g. behind a recovery under
    -- a loaded ASan run) are reported, not hidden
    local retries = util.run("cat " .. dir .. "/*.stderr 2>/dev/null | grep -c retrying")
    io.stderr:write(("    %s retried commits\n"):format(retries:match("%d+") or "0"))
  end)
end)
