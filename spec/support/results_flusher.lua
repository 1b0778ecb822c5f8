-- A result-store writer for spec/results_kill_spec.lua: adds results (success = 1 each, over
-- DOMAINS policy domains, every 7th with a failure detail too) to DAY with the store's default
-- batching, calls flush after every K adds and, once flush has returned true, appends
-- "flushed <results added so far>" to LOG. Runs until it is killed.
-- usage: results_flusher.lua DIR DAY K DOMAINS LOG
local tlsrpt = require("mtasts.tlsrpt")
local dir, day, k, domains, logpath = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4]), arg[5]

local log = assert(io.open(logpath, "a"))
log:setvbuf("line")
local now = tlsrpt.day_start(day) + 3600
local store = assert(tlsrpt.open{ path = dir, submitter = "mail.sender.example",
  clock = function() return now end })
local results = {}
for i = 1, domains do
  local d = "k" .. i .. ".example"
  local r = tlsrpt.sts_result(d, "version: STSv1\nmode: enforce\nmx: mx." .. d ..
    "\nmax_age: 86400\n", { mx = { "mx." .. d } })
  r.summary.success = 1
  if i % 7 == 0 then
    tlsrpt.add_failure(r, "certificate-expired", "certificate-expired",
      { receiving_mx_hostname = "mx." .. d })
  end
  results[i] = r
end
log:write("started\n")
local n = 0
while true do
  n = n + 1
  local ok, err, code = store:add(results[n % domains + 1])
  if not ok then
    io.stderr:write("add: ", tostring(code), " ", tostring(err), "\n")
    os.exit(3)
  end
  if n % k == 0 then
    ok, err, code = store:flush()
    if not ok then
      io.stderr:write("flush: ", tostring(code), " ", tostring(err), "\n")
      os.exit(3)
    end
    log:write("flushed ", n, "\n")
  end
end
