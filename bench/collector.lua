-- bench/collector.lua: the libtlsrpt datagram collector (make bench). A sender of our own
-- (spec/support/dgsend.c) writes libtlsrpt datagrams in the documented format (the worked
-- examples' mix: 158-536 bytes, 100 domains) to the collector's socket, as Postfix 3.10
-- does: a new socket per datagram, non-blocking (the library's production mode), or blocking
-- (the library's test mode: the sender waits while the queue is full). Figures:
--   blocking, a new socket per datagram: datagrams/s absorbed, lost (must be 0)
--   blocking, one socket reused: datagrams/s absorbed: the collector's ceiling here
--   non-blocking at full speed, 200,000 datagrams: lost at the sender (EAGAIN), in %
--   non-blocking, 10 bursts of 1,000 datagrams 0.3 s apart: lost, in %
--   the collector's CPU at steady rates of 2, 20, 200 and 2,000 datagrams/s
-- each with net.unix.max_dgram_qlen as the machine has it (10 by default) and, when run as
-- root, again with 1024 in a network namespace of its own (unshare -n: the sysctl is per
-- namespace). After each run, every datagram the kernel accepted must be committed to the
-- result store (checked). Usage: lua5.4 bench/collector.lua [--inner]
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("MTASTS_CPATH") or "./build/?.so") .. ";" .. package.cpath
local core = require("mtasts.core")
local cjson = require("cjson")
local collector = require("mtasts.tlsrpt.collector")

local SEND = "build/support/dgsend"
local inner = arg[1] == "--inner"

local function tmpdir()
  local h = io.popen("mktemp -d /tmp/mtasts-bench-collector.XXXXXX")
  local d = h:read("l")
  h:close()
  return d
end

local function qlen()
  local f = io.open("/proc/sys/net/unix/max_dgram_qlen")
  local v = f and tonumber(f:read("l"))
  if f then f:close() end
  return v
end

-- One run: a fresh collector and store, the sender's command, then everything committed.
local function run(sender_args)
  local dir = tmpdir()
  local c = assert(collector.open{ path = dir .. "/db", listen = "unix:" .. dir .. "/s.sock" })
  local h = io.popen(SEND .. " " .. dir .. "/s.sock " .. sender_args)
  local out = h:read("a")
  h:close()
  local total = { sent = 0, eagain = 0, refused = 0, other = 0, seconds = 0 }
  for line in out:gmatch("[^\n]+") do
    local r = cjson.decode(line)
    for k, v in pairs(r) do total[k] = total[k] + v end
  end
  -- the thread may still be reading the last datagrams
  local deadline = core.monotonic() + 10
  while c:stats().received < total.sent and core.monotonic() < deadline do
    core.poll(-1, "", 0.01)
  end
  assert(c:step())
  local st = c:stats()
  assert(st.committed == total.sent, ("sent %d, committed %d"):format(total.sent, st.committed))
  assert(c:close())
  os.execute("rm -rf '" .. dir .. "'")
  total.rt = st.rt
  return total
end

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

local N = 200000
local q = qlen()
local rows = {}
local function row(name, value) rows[#rows + 1] = { name, value } end

local rates = {}
for i = 1, 3 do
  local r = run("mix " .. N .. " --blocking")
  assert(r.eagain == 0 and r.sent == N)
  rates[i] = r.sent / r.seconds
end
row("blocking, new socket each: datagrams/s (median of 3), lost", ("%.0f, 0"):format(median(rates)))
rates = {}
for i = 1, 3 do
  local r = run("mix " .. N .. " --blocking --reuse")
  rates[i] = r.sent / r.seconds
end
row("blocking, one socket: datagrams/s (median of 3)", ("%.0f"):format(median(rates)))
local losses, speed = {}, {}
for i = 1, 3 do
  local r = run("mix " .. N)
  losses[i] = 100 * r.eagain / N
  speed[i] = N / r.seconds
end
row("non-blocking, full speed, 200,000: lost % (median of 3; runs)",
  ("%.2f (%s); sender at %.0f/s"):format(median({ table.unpack(losses) }),
  table.concat((function()
    local s = {}
    for i, l in ipairs(losses) do s[i] = ("%.2f"):format(l) end
    return s
  end)(), ", "), median(speed)))
-- bursts: the sender is started 10 times; the collector stays
do
  local dir = tmpdir()
  local c = assert(collector.open{ path = dir .. "/db", listen = "unix:" .. dir .. "/s.sock" })
  local lost, sent = {}, 0
  for i = 1, 10 do
    local h = io.popen(SEND .. " " .. dir .. "/s.sock mix 1000")
    local r = cjson.decode(h:read("a"))
    h:close()
    lost[i] = r.eagain / 10
    sent = sent + r.sent
    core.poll(-1, "", 0.3)
  end
  local deadline = core.monotonic() + 10
  while c:stats().received < sent and core.monotonic() < deadline do core.poll(-1, "", 0.01) end
  assert(c:step())
  assert(c:stats().committed == sent)
  local st = c:stats()
  assert(c:close())
  os.execute("rm -rf '" .. dir .. "'")
  local s = {}
  local sum = 0
  for i, l in ipairs(lost) do s[i] = ("%.1f"):format(l) sum = sum + l end
  row("non-blocking, 10 bursts of 1,000: lost % (mean; per burst)",
    ("%.1f (%s)"):format(sum / 10, table.concat(s, " ")))
  row("reader with a real-time priority while it waits", tostring(st.rt))
end

-- the reader's cost at steady rates: CPU of this process (the collector; the sender is
-- another) over 5 s of sending
if not inner then
  local function cpu()
    local f = io.open("/proc/self/stat")
    local st = f:read("a")
    f:close()
    local fields = {}
    for x in st:match("%) (.*)"):gmatch("%S+") do fields[#fields + 1] = x end
    return (tonumber(fields[12]) + tonumber(fields[13])) / 100
  end
  local dir = tmpdir()
  local c = assert(collector.open{ path = dir .. "/db", listen = "unix:" .. dir .. "/s.sock" })
  local parts = {}
  for _, rate in ipairs({ 2, 20, 200, 2000 }) do
    local c0, t0 = cpu(), core.monotonic()
    local h = io.popen(SEND .. " " .. dir .. "/s.sock mix " .. rate * 5 .. " --rate " .. rate)
    h:read("a")
    h:close()
    parts[#parts + 1] = ("%d/s %.1f%%"):format(rate, 100 * (cpu() - c0) / (core.monotonic() - t0))
  end
  assert(c:close())
  os.execute("rm -rf '" .. dir .. "'")
  row("reader's CPU (% of one core) at steady rates", table.concat(parts, ", "))
end

print(("collector, net.unix.max_dgram_qlen = %s%s"):format(tostring(q),
  inner and " (own network namespace)" or ""))
for _, r in ipairs(rows) do print(("  %-66s %s"):format(r[1], r[2])) end

if not inner then
  local uid = io.popen("id -u"):read("l")
  if uid == "0" and (q or 0) < 1024 then
    io.stdout:flush()
    os.execute("unshare -n sh -c 'sysctl -qw net.unix.max_dgram_qlen=1024 && " ..
      "lua5.4 bench/collector.lua --inner'")
  end
end
