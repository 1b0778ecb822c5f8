-- The Postfix integration world, run by spec/postfix_integration_spec.lua inside a private
-- network and mount namespace (`unshare --net --mount`): only loopback exists, and
-- /etc/resolv.conf is bind-mounted to point at NSD on 127.0.0.1:53, so Postfix's MX lookups
-- (through the system resolver, which cannot use another port) reach the fixture and nothing
-- else is reachable.
--
--   sender Postfix --smtp_tls_policy_maps--> mtasts serve postfix --> NSD, nginx (policies)
--        |  MX lookups: NSD on 127.0.0.1:53
--        v  SMTP + STARTTLS
--   receiver Postfix on 127.0.0.2-.5:25, one certificate per MX host, Maildir delivery
--
-- usage: lua5.4 spec/support/postfix_world.lua DIR   (prints one JSON line of results)
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local util = require("support.util")
local proc = require("support.proc")
local json = require("mtasts.json")

local dir = assert(arg[1], "usage: postfix_world.lua DIR")
local out = {}

-- domain: MX host, its address, its certificate, the policy (nil: no policy)
local DOMAINS = {
  { "good", "mx.good", "127.0.0.2", "valid", "enforce", "mx.good.example" },
  { "badcert", "mx.badcert", "127.0.0.3", "wrongname", "enforce", "mx.badcert.example" },
  { "nomatch", "mx.elsewhere", "127.0.0.4", "valid", "enforce", "mx.nomatch.example" },
  { "testing", "mx.testing", "127.0.0.5", "wrongname", "testing", "mx.testing.example" },
}

local ok, err = pcall(function()
  assert(os.execute("ip link set lo up"))
  for i = 2, 5 do   -- the MX hosts' addresses, as interfaces Postfix can see
    assert(os.execute("ip addr add 127.0.0." .. i .. "/32 dev lo"))
  end
  util.write(dir .. "/resolv.conf", "nameserver 127.0.0.1\noptions attempts:2 timeout:2\n")
  assert(os.execute("mount --bind " .. dir .. "/resolv.conf /etc/resolv.conf"))
  -- the namespace may not reach anything but loopback
  local _, probe = util.run("ip route get 192.0.2.1 2>/dev/null")
  out.isolated = probe ~= 0

  local ca = require("support.ca").new(dir .. "/ca")
  local records, sites, smtpd, mailboxes = {}, {}, {}, {}
  for _, d in ipairs(DOMAINS) do
    local name, mx, addr, cert, mode, pattern = table.unpack(d)
    records[#records + 1] = name .. " IN MX 10 " .. mx
    records[#records + 1] = mx .. " IN A " .. addr
    records[#records + 1] = ('_mta-sts.%s IN TXT "v=STSv1; id=%s1;"'):format(name, name)
    records[#records + 1] = "mta-sts." .. name .. " IN A 127.0.0.1"
    sites[#sites + 1] = { host = "mta-sts." .. name .. ".example", body = ("version: STSv1\n" ..
      "mode: %s\nmx: %s\nmax_age: 86400\n"):format(mode, pattern) }
    local crt, key
    if cert == "wrongname" then crt, key = ca:issue("wrong-" .. mx .. ".example")
    else crt, key = ca:issue(mx .. ".example") end
    smtpd[#smtpd + 1] = { address = addr .. ":25", cert = crt, key = key }
    mailboxes[#mailboxes + 1] = "user@" .. name .. ".example"
  end
  local dns = require("support.dns").start({ ["example."] = records }, 53)
  local web = require("support.https").start(ca, sites)
  local serve_out = dir .. "/serve.out"
  os.remove(serve_out)
  local serve = proc.spawn("mtasts-serve", util.lua_cmd() .. " bin/mtasts --db " .. dir ..
    "/cache --nameserver 127.0.0.1@53 --trust-anchor none --allow-private-addresses --cafile " ..
    ca.cafile ..
    " --connect-to :443:127.0.0.1:" .. web.port .. " --timeout 3 serve postfix" ..
    " --listen inet:127.0.0.1:0 -v", serve_out)
  assert(proc.poll(function() return util.run("cat " .. serve_out):match("inet:127") end, 10))
  local port = util.run("cat " .. serve_out):match("inet:127%.0%.0%.1:(%d+)")

  local postfix = require("support.postfix")
  local receiver = postfix.start(mailboxes, { hostname = "mx.receiver.example", smtpd = smtpd,
    main = { "inet_interfaces = 127.0.0.2, 127.0.0.3, 127.0.0.4, 127.0.0.5" } })
  local sender = postfix.start({ "postmaster@sender.example" }, { main = {
    "default_transport = smtp", "relay_transport = smtp",
    -- only 127.0.0.1 is "myself": the MX hosts live on 127.0.0.2-5
    "inet_interfaces = 127.0.0.1",
    "smtp_tls_security_level = may", "smtp_tls_loglevel = 1",
    "smtp_tls_CAfile = " .. ca.cafile,
    "smtp_tls_policy_maps = socketmap:inet:127.0.0.1:" .. port .. ":postfix",
    "smtp_connect_timeout = 5s", "maximal_backoff_time = 3600s",
    "minimal_backoff_time = 3600s", "queue_run_delay = 3600s",
  } })
  for _, d in ipairs(DOMAINS) do
    util.run(("printf 'From: postmaster@sender.example\\nTo: user@%s.example\\nSubject: %s\\n" ..
      "\\nhello\\n' | %s"):format(d[1], d[1], sender.sendmail))
  end
  -- two deliveries, two deferrals
  local function settled()
    local log = sender.log()
    local n = 0
    for _, d in ipairs(DOMAINS) do
      if log:find("to=<user@" .. d[1] .. ".example>.-status=") then n = n + 1 end
    end
    return n == #DOMAINS
  end
  proc.poll(settled, 60)
  -- the sender logs status=sent once the receiver has accepted the message; the receiver's
  -- own delivery into the Maildir comes after that: wait for it (a busy machine is slow)
  out.delivered = {}
  local log = sender.log()
  for _, d in ipairs(DOMAINS) do
    local addr = "user@" .. d[1] .. ".example"
    local sent = log:find("to=<" .. addr .. ">[^\n]-status=sent") and 1 or 0
    out.delivered[d[1]] = #receiver:wait_messages(addr, sent, 30)
  end
  out.sender_log = sender.log()
  out.postmap = util.run("postmap -c " .. dir .. "/pm -q good.example socketmap:inet:127.0.0.1:" ..
    port .. ":postfix 2>&1 || true")
  out.serve_log = util.run("cat " .. serve_out)
  sender.stop()
  receiver.stop()
  proc.stop(serve)
  web.stop()
  dns.stop()
end)
proc.stop_all()
out.ok, out.error = ok, not ok and tostring(err) or nil
io.write(json.encode(out), "\n")
