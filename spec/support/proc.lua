-- Starting and stopping the fixture world's servers: free loopback ports, background
-- processes that never outlive the test run, readiness polled with a deadline.
local util = require("support.util")
local core = require("mtasts.core")

local _M = {}
local running = {}   -- pid -> name, for stop_all

--- Ports in use on this machine (TCP and UDP), from ss.
local function used_ports()
  local used = {}
  for port in util.run("ss -Htuan"):gmatch("[%d%.%*%]]:(%d+)%s") do used[tonumber(port)] = true end
  return used
end

-- A random port in 20000-59999 from /dev/urandom, not math.random: busted seeds that with
-- the time, so two copies of the suite started in the same second picked the same "free"
-- ports in the same order, and one copy's servers answered the other's clients.
local function random_port()
  local f = assert(io.open("/dev/urandom", "rb"))
  local bytes = f:read(4)
  f:close()
  return 20000 + string.unpack("<I4", bytes) % 40000
end

--- A port that nothing listens on now (20000-59999).
function _M.free_port()
  local used = used_ports()
  for _ = 1, 100 do
    local p = random_port()
    if not used[p] then return p end
  end
  error("no free port found")
end

--- How long a spawned process may live at most, in seconds (`make world` raises it).
_M.limit = 900

--- Start a command in the background; returns its pid. It is killed by stop_all at the
-- latest, and `timeout` ends it after `limit` seconds (default _M.limit) whatever happens.
function _M.spawn(name, cmd, log, limit)
  local out = util.run("timeout -s KILL " .. (limit or _M.limit) .. " " .. cmd .. " >>" .. log ..
    " 2>&1 & echo $!")
  local pid = assert(tonumber(out:match("(%d+)%s*$")), out)
  running[pid] = name
  return pid
end

--- True while the process runs. A zombie counts as gone: our processes are orphaned (their
-- parent, the shell of spawn, exits at once), and how soon init reaps them is up to init;
-- on some machines that took seconds, which every stop waited out.
function _M.alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read("a") or ""
  f:close()
  local state = stat:match(".*%) (%a)")   -- after the last ")": comm may hold any byte
  return state ~= nil and state ~= "Z" and state ~= "X"
end

--- Poll until fn() is true or the deadline passes; fn is tried at least once. pause(s) waits
-- between tries: by default it blocks the process; inside a cqueues loop pass cqueues.sleep,
-- so the loop's other coroutines run meanwhile.
function _M.poll(fn, seconds, pause)
  local deadline = core.monotonic() + (seconds or 10)
  repeat
    if fn() then return true end
    if pause then pause(0.02) else core.poll(-1, "", 0.02) end   -- 20 ms (poll ignores fd -1)
  until core.monotonic() > deadline
  return false
end

--- True when something accepts TCP connections on 127.0.0.1:port.
function _M.tcp_open(port)
  local _, status = util.run("bash -c 'exec 3<>/dev/tcp/127.0.0.1/" .. port .. "' 2>/dev/null")
  return status == 0
end

--- How many TCP connections to 127.0.0.1:port are established now, accepted or not (from
-- ss): that a client has reached a server that never answers (stall), without a fixed sleep.
function _M.connections(port)
  local out = util.run("ss -Htn state established '( sport = :" .. port .. " )'")
  return select(2, out:gsub("[^\n]+", ""))
end

--- Send a signal ("TERM", "INT", "KILL") to a process spawn started and to its children, by
-- pid, never by name. The children (from ps --ppid) are listed before the signal: once their
-- parent is gone they belong to init. `timeout` relays TERM and INT to its command, not KILL.
function _M.signal(pid, sig)
  local pids = { tostring(pid) }
  for child in util.run("ps -o pid= --ppid " .. pid):gmatch("%d+") do pids[#pids + 1] = child end
  os.execute("kill -" .. sig .. " " .. table.concat(pids, " ") .. " 2>/dev/null")
end

--- Stop a process (TERM, then KILL) and wait until it is gone.
function _M.stop(pid)
  if not running[pid] then return end
  _M.signal(pid, "TERM")
  if not _M.poll(function() return not _M.alive(pid) end, 5) then _M.signal(pid, "KILL") end
  running[pid] = nil
end

function _M.stop_all()
  for pid in pairs(running) do _M.stop(pid) end
end

return _M
