-- A result-store worker for spec/results_processes_spec.lua: adds results of its own policy
-- domain (w<N>.example, success = 1 each) in batches until it has added COUNT, or is killed.
-- usage: results_worker.lua DIR WORKER COUNT BATCH LOG
-- After every committed batch it appends "ack <total committed>" to LOG; "done" at the end.
local tlsrpt = require("mtasts.tlsrpt")
local dir, worker, count, batch, logpath = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4]),
  arg[5]

local log = assert(io.open(logpath, "a"))
log:setvbuf("line")
local store = assert(tlsrpt.open{ path = dir, batch_size = batch, batch_interval = 3600,
  submitter = "mail.sender.example", clock = function() return 1795132800 + 3600 end })
local domain = "w" .. worker .. ".example"
local result = tlsrpt.sts_result(domain, "version: STSv1\nmode: enforce\nmx: mx." .. domain ..
  "\nmax_age: 86400\n", { mx = { "mx." .. domain } })
result.summary.success = 1
local detail = { result_type = "certificate-expired", receiving_mx_hostname = "mx." .. domain }
result.failures = { detail }
result.summary.failure = 1
for i = 1, count do
  local ok, err, code = store:add(result)
  -- a failed commit keeps the batch; a host retries it (here: at once, a few times)
  local tries = 0
  while not ok and tries < 20 do
    io.stderr:write("add: ", tostring(code), " ", tostring(err), "; retrying\n")
    tries = tries + 1
    os.execute("sleep 0.2")
    ok, err, code = store:flush()
  end
  if not ok then
    io.stderr:write("add failed: ", tostring(code), " ", tostring(err), "\n")
    os.exit(3)
  end
  if store.npending == 0 then log:write("ack ", i, "\n") end
end
assert(store:close())
log:write("ack ", count, "\ndone\n")
