-- examples/demo.lua: what `make demo` runs. It starts the fixture world of the specs (a DNS
-- server, an HTTPS server with a test CA: spec/support/world.lua) on loopback, runs the mtasts
-- CLI against a handful of domains, printing each command exactly as it runs it, and stops
-- the servers again. Nothing leaves this machine. `make world` starts the same world and
-- leaves it running, for trying the commands by hand.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local util = require("support.util")
local proc = require("support.proc")
local world = require("support.world")

-- bold headings on a terminal only: a log file or a pipe gets plain text
local tty = os.execute("test -t 1") == true
local function heading(s)
  io.write("\n", tty and "\27[1m" or "", "== ", s, tty and "\27[0m" or "", "\n")
end

local dir = util.tmpdir()
local ok, err = pcall(function()
  io.write("Starting the fixture world (NSD, nginx, a test CA) on loopback...\n")
  local w = world.start(dir)
  io.write("DNS on ", w.dns.nameserver, ", HTTPS on 127.0.0.1:", w.web.port,
    ", test CA in ", w.ca.cafile, "\n")
  local cli = "bin/mtasts " .. w.flags
  local function run(args)
    local cmd = cli .. " " .. args
    io.write("\n$ ", cmd, "\n")
    local out, status = util.run(cmd)
    io.write(out)
    -- 0: a policy, 1: none, 2: temporary failure; anything else is the demo failing
    if status > 2 or out:find("stack traceback", 1, true) then
      error("mtasts " .. args .. " failed with exit status " .. tostring(status))
    end
  end
  heading("check: MX hosts, MTA-STS record and policy, TLSRPT record, the delivery plan")
  for _, d in ipairs(world.DOMAINS) do run("check " .. d[1] .. ".example") end
  heading("lookup through the cache: the first time fetches, the second is served from it")
  run("lookup enforce.example")
  run("lookup enforce.example")
  run("lookup expired.example")
  run("lookup expired.example")
  heading("the TLSRPT result a delivery would record (JSON)")
  run("--json lookup testing.example")
  heading("the cache")
  run("cache list")

  heading("a day of deliveries, recorded for TLSRPT (Lua: mtasts.open, delivery.plan, store:add)")
  local mtasts = require("mtasts")
  local delivery = require("mtasts.delivery")
  local tlsrpt = require("mtasts.tlsrpt")
  local yesterday = tlsrpt.day_of(os.time() - 86400)
  local sts = assert(mtasts.open(w.open_opts))
  local store = assert(tlsrpt.open{ path = w.db, submitter = "mail.sender.example" })
  for _, d in ipairs(world.DOMAINS) do
    local domain = d[1] .. ".example"
    local mx = world.mx_hosts(d)
    for _ = 1, 5 do     -- five messages each; the first MX host answers with TLS
      local policy, result, _, msg, code = sts:get(domain)
      local plan = delivery.plan{ domain = domain, mx = mx, policy = policy, result = result,
        policy_error = msg, policy_code = code }
      if plan.hosts[1] then delivery.outcome(result, plan.hosts[1].host, { ok = true }) end
      assert(store:add(result, { day = yesterday }))
    end
    io.write(("  %-16s 5 deliveries recorded\n"):format(domain))
  end
  store:close()
  sts:close()
  run("report stats")
  heading("the daily job: build yesterday's reports and deliver them (mailto and https)")
  util.run("mkdir -p " .. dir .. "/outbox")
  run("report --submitter mail.sender.example send --sendmail 'cat > $(mktemp " .. dir ..
    "/outbox/mail.XXXXXX)'")
  heading("one of the mailed reports, parsed back as a receiver would")
  local mail = util.run("grep -l 'TLS-Report-Domain: enforce.example' " .. dir ..
    "/outbox/* | head -1"):gsub("%s+$", "")
  run("report show " .. mail)
  w.stop()
end)
proc.stop_all()
util.run("rm -rf '" .. dir .. "'")
if not ok then
  io.stderr:write("demo failed: ", tostring(err), "\n")
  os.exit(1)
end
io.write("\nThe fixture servers are stopped. `make world` starts them again and leaves them\n",
  "running, for trying these commands by hand. See README.md and docs/ for what comes next.\n")
