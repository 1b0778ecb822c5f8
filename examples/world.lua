-- examples/world.lua [ENVFILE]: what `make world` runs. It starts the demo's fixture world
-- (spec/support/world.lua: NSD and nginx on loopback, a test CA), prints the exact mtasts
-- flags that point at it, writes them as a shell function to ENVFILE (default
-- build/world.env), and keeps the servers running until Ctrl-C (SIGINT) or SIGTERM; then it
-- stops them and removes its files. Nothing leaves this machine.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local util = require("support.util")
local proc = require("support.proc")
local world = require("support.world")
local signal = require("cqueues.signal")

local envfile = arg[1] or "build/world.env"
local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

proc.limit = 7 * 86400     -- the servers may run for a week; Ctrl-C stops them before
local dir = util.tmpdir()
local ok, err = pcall(function()
  io.write("Starting the fixture world (NSD, nginx, a test CA) on loopback...\n")
  local w = world.start(dir)
  local top = util.run("pwd"):gsub("%s+$", "")
  local words = {}
  for word in w.flags:gmatch("%S+") do words[#words + 1] = quote(word) end
  util.write(envfile, table.concat({
    "# Written by `make world` (examples/world.lua); removed when it stops. In a POSIX shell:",
    "#   . " .. envfile .. "   then   mtasts lookup enforce.example",
    "MTASTS_WORLD_FLAGS=" .. quote(w.flags),
    "mtasts() { " .. quote(top .. "/bin/mtasts") .. " " .. table.concat(words, " ") ..
      ' "$@"; }', "" }, "\n"))
  io.write(([[

The fixture world is running; Ctrl-C stops it.
  DNS    %s (NSD, authoritative for example.)
  HTTPS  127.0.0.1:%d (nginx: mta-sts.*.example, tlsrpt.enforce.example)
  CA     %s (the test CA that issued the policy hosts' certificates)

Run mtasts against it with these flags, from %s:
  bin/mtasts %s lookup enforce.example

or load them as a shell function named mtasts:
  . %s
  mtasts check enforce.example
  mtasts lookup expired.example
  mtasts --json lookup testing.example
  mtasts cache list

Domains:
  enforce.example  enforce, mx1 only (mx2 is refused); TLSRPT by mail and https
  testing.example  testing, one MX not covered
  none.example     mode none
  expired.example  enforce, behind an expired certificate
  plain.example    no MTA-STS record
]]):format(w.dns.nameserver, w.web.port, w.ca.cafile, top, w.flags, envfile))
  io.stdout:flush()
  -- wait for a signal: blocked here and read through a signalfd (the servers started
  -- before this, so they do not inherit the block)
  signal.block(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
  local got = signal.listen(signal.SIGINT, signal.SIGTERM, signal.SIGHUP):wait()
  io.write("\nsignal ", tostring(got), ": stopping the fixture world\n")
  w.stop()
end)
proc.stop_all()
os.remove(envfile)
util.run("rm -rf '" .. dir .. "'")
if not ok then
  io.stderr:write("make world failed: ", tostring(err), "\n")
  os.exit(1)
end
io.write("stopped\n")
