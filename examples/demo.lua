-- examples/demo.lua: what `make demo` runs. It starts the fixture world of the specs (a DNS
-- server, an HTTPS server with a test CA) on loopback, runs the mtasts CLI against a handful
-- of domains, and stops the servers again. Nothing leaves this machine.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local util = require("support.util")
local proc = require("support.proc")

local ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.enforce.example\nmax_age: 86400\n"
local DOMAINS = {
  { "enforce", "MX 10 mx1.enforce", "MX 20 mx2.enforce",
    site = { body = ENFORCE } },
  { "testing", "MX 10 mx.testing", "MX 20 backup.elsewhere",
    site = { body = "version: STSv1\nmode: testing\nmx: mx.testing.example\nmax_age: 3600\n" } },
  { "none", "MX 10 mx.none",
    site = { body = "version: STSv1\nmode: none\nmax_age: 86400\n" } },
  { "expired", "MX 10 mx.expired",
    site = { body = "version: STSv1\nmode: enforce\nmx: mx.expired.example\nmax_age: 86400\n",
      cert = "expired" } },
  { "plain", "MX 10 mx.plain", record = false },
}

local function heading(s) io.write("\n\27[1m== ", s, "\27[0m\n") end

local dir = util.tmpdir()
local ok, err = pcall(function()
  io.write("Starting the fixture world (NSD, nginx, a test CA) on loopback...\n")
  local ca = require("support.ca").new(dir .. "/ca")
  local records, sites = {}, {}
  for _, d in ipairs(DOMAINS) do
    local name = d[1]
    for i = 2, #d do records[#records + 1] = name .. " IN " .. d[i] end
    if d.record ~= false then
      records[#records + 1] = ('_mta-sts.%s IN TXT "v=STSv1; id=%s1;"'):format(name, name)
      records[#records + 1] = "mta-sts." .. name .. " IN A 127.0.0.1"
      records[#records + 1] = ('_smtp._tls.%s IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@%s.example%s"')
        :format(name, name, name == "enforce" and ",https://tlsrpt.enforce.example/report" or "")
    end
    if d.site then
      d.site.host = "mta-sts." .. name .. ".example"
      sites[#sites + 1] = d.site
    end
  end
  records[#records + 1] = "tlsrpt.enforce IN A 127.0.0.1"
  sites[#sites + 1] = { host = "tlsrpt.enforce.example" }    -- takes POSTed reports
  local dns = require("support.dns").start({ ["example."] = records })
  local web = require("support.https").start(ca, sites)
  local cli = "bin/mtasts --db " .. dir .. "/cache --nameserver " .. dns.nameserver ..
    " --trust-anchor none --cafile " .. ca.cafile .. " --connect-to :443:127.0.0.1:" .. web.port ..
    " --timeout 5"
  local function run(args)
    io.write("\n$ mtasts ", args, "\n")
    local out, status = util.run(cli .. " " .. args)
    io.write(out)
    -- 0: a policy, 1: none, 2: temporary failure; anything else is the demo failing
    if status > 2 or out:find("stack traceback", 1, true) then
      error("mtasts " .. args .. " failed with exit status " .. tostring(status))
    end
  end
  heading("check: MX hosts, MTA-STS record and policy, TLSRPT record, the delivery plan")
  for _, d in ipairs(DOMAINS) do run("check " .. d[1] .. ".example") end
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
  local sts = assert(mtasts.open{ path = dir .. "/cache", nameserver = dns.nameserver,
    trust_anchor = false, cafile = ca.cafile, connect_to = { ":443:127.0.0.1:" .. web.port },
    timeouts = { dns = 5, fetch = 5 } })
  local store = assert(tlsrpt.open{ path = dir .. "/cache", submitter = "mail.sender.example" })
  for _, d in ipairs(DOMAINS) do
    local domain = d[1] .. ".example"
    local mx = {}
    for i = 2, #d do mx[#mx + 1] = d[i]:match("^MX %d+ (%S+)") .. ".example" end
    for _ = 1, 5 do     -- five messages each; the first MX host answers with TLS
      local policy, result, _, msg, code = sts:get(domain)
      local plan = delivery.plan{ domain = domain, mx = mx, policy = policy, result = result,
        policy_error = msg and code }
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
  web.stop()
  dns.stop()
end)
proc.stop_all()
util.run("rm -rf '" .. dir .. "'")
if not ok then
  io.stderr:write("demo failed: ", tostring(err), "\n")
  os.exit(1)
end
io.write("\nThe fixture servers are stopped. See README.md and docs/ for what comes next.\n")
