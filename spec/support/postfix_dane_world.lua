-- The Postfix DANE world, run by spec/postfix_dane_spec.lua inside a private network and
-- mount namespace (`unshare --net --mount`): only loopback exists. A signed example. zone
-- (support.dnssec, NSD on a free port) is validated by Debian's unbound daemon on
-- 127.0.0.1:53, and /etc/resolv.conf is bind-mounted to point at it, so Postfix's own
-- lookups (libc) are DNSSEC-validated. `options trust-ad` makes glibc keep the AD bit for any
-- program; Postfix sets RES_TRUSTAD itself when it asks for DNSSEC (smtp_dns_support_level).
--
--   sender Postfix --smtp_tls_policy_maps--> mtasts serve postfix --> NSD (validates itself,
--        |  MX, A, TLSA lookups: unbound on 127.0.0.1:53 --> NSD          --trust-anchor)
--        v  SMTP + STARTTLS, smtp_dns_support_level = dnssec
--   receiver Postfix on 127.0.0.2-.5 (mx.<domain>.example), a certificate per host
--
-- | domain | _25._tcp.mx.<domain> TLSA 3 1 1 | mtasts answers | Postfix |
-- |---|---|---|---|
-- | good.example | SHA-256 of the host's key | dane-only | delivers (Verified) |
-- | bad.example | SHA-256 of another key | dane-only | defers (no matching TLSA) |
-- | bogus.example | altered after signing (dnssec `bogus`) | dane | defers (TLSA lookup error) |
-- | insecure.example | the host's, unsigned zone (no DS) | nothing | delivers (opportunistic) |
--
-- usage: lua5.4 spec/support/postfix_dane_world.lua DIR   (prints one JSON line of results)
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local util = require("support.util")
local proc = require("support.proc")
local json = require("mtasts.json")

local dir = assert(arg[1], "usage: postfix_dane_world.lua DIR")
local out = {}
-- domain, its MX host's address
local DOMAINS = { { "good", "127.0.0.2" }, { "bad", "127.0.0.3" }, { "insecure", "127.0.0.4" },
  { "bogus", "127.0.0.5" } }

local ok, err = pcall(function()
  assert(os.execute("ip link set lo up"))
  for _, d in ipairs(DOMAINS) do assert(os.execute("ip addr add " .. d[2] .. "/32 dev lo")) end
  util.write(dir .. "/resolv.conf", "nameserver 127.0.0.1\noptions trust-ad attempts:2 timeout:2\n")
  assert(os.execute("mount --bind " .. dir .. "/resolv.conf /etc/resolv.conf"))
  local _, probe = util.run("ip route get 192.0.2.1 2>/dev/null")
  out.isolated = probe ~= 0

  local dnssec = require("support.dnssec")
  local ca = require("support.ca").new(dir .. "/ca")
  local smtpd, mailboxes, records, insecure = {}, {}, {}, {}
  local other_crt = ca:issue("other.example")   -- its key is no MX host's
  for _, d in ipairs(DOMAINS) do
    local name, addr = d[1], d[2]
    local mx = "mx." .. name .. ".example"
    local crt, key = ca:issue(mx)
    smtpd[#smtpd + 1] = { address = addr .. ":25", cert = crt, key = key }
    mailboxes[#mailboxes + 1] = "user@" .. name .. ".example"
    local data = dnssec.tlsa_data(name == "bad" and other_crt or crt, 1, 1)
    local zone = name == "insecure" and insecure or records
    zone[#zone + 1] = name .. ".example. IN MX 10 " .. mx .. "."
    zone[#zone + 1] = mx .. ". IN A " .. addr
    zone[#zone + 1] = "_25._tcp." .. mx .. ". IN TLSA 3 1 1 " .. data
  end
  local w = dnssec.start({
    ["example."] = { sign = true, records = records,
      bogus = { "_25._tcp.mx.bogus.example. IN TLSA 3 1 1 " ..
        dnssec.tlsa_data(other_crt, 1, 1) } },
    ["insecure.example."] = { records = insecure },   -- delegated without DS
  })

  -- the validating resolver Postfix's libc asks: unbound, example. stubbed to NSD
  local ub_conf = dir .. "/unbound.conf"
  util.write(ub_conf, table.concat({
    "server:",
    "  interface: 127.0.0.1", "  port: 53", "  do-ip6: no",
    "  do-daemonize: no", "  username: \"\"", "  chroot: \"\"",
    "  directory: \"" .. dir .. "\"", "  pidfile: \"" .. dir .. "/unbound.pid\"",
    "  use-syslog: no", "  logfile: \"\"", "  verbosity: 1", "  val-log-level: 2",
    "  access-control: 127.0.0.0/8 allow",
    "  do-not-query-localhost: no",
    "  module-config: \"validator iterator\"",
    "  trust-anchor-file: \"" .. w.trust_anchor .. "\"",
    "  val-permissive-mode: no",
    -- both zones live on NSD (the delegation's glue says 127.0.0.1:53, unbound itself)
    "stub-zone:", "  name: \"example.\"", "  stub-addr: " .. w.nameserver,
    "stub-zone:", "  name: \"insecure.example.\"", "  stub-addr: " .. w.nameserver,
    "remote-control:", "  control-enable: no",
  }, "\n") .. "\n")
  local unbound = proc.spawn("unbound", "unbound -d -c " .. ub_conf, dir .. "/unbound.log")
  assert(proc.poll(function() return proc.tcp_open(53) or not proc.alive(unbound) end, 10)
    and proc.alive(unbound), "unbound did not start: " .. util.run("cat " .. dir ..
    "/unbound.log"))

  local serve_out = dir .. "/serve.out"
  local serve = proc.spawn("mtasts-serve", util.lua_cmd() .. " bin/mtasts --db " .. dir ..
    "/cache --nameserver " .. w.nameserver .. " --trust-anchor " .. w.trust_anchor ..
    " --timeout 3 serve postfix --listen inet:127.0.0.1:0 -v", serve_out)
  assert(proc.poll(function() return util.run("cat " .. serve_out):match("inet:127") end, 10),
    "mtasts serve did not start: " .. util.run("cat " .. serve_out))
  local port = util.run("cat " .. serve_out):match("inet:127%.0%.0%.1:(%d+)")
  local map = "socketmap:inet:127.0.0.1:" .. port .. ":postfix"

  local postfix = require("support.postfix")
  local receiver = postfix.start(mailboxes, { hostname = "mx.receiver.example", smtpd = smtpd,
    main = { "inet_interfaces = 127.0.0.2, 127.0.0.3, 127.0.0.4, 127.0.0.5" } })
  local sender = postfix.start({ "postmaster@sender.example" }, { main = {
    "default_transport = smtp", "relay_transport = smtp",
    "inet_interfaces = 127.0.0.1",
    -- the probe a process sends after its first unvalidated answer (the insecure domain's):
    -- the root is unreachable here, and Postfix 3.7 finds no AD bit for "ns:example."
    "smtp_dns_support_level = dnssec", "dnssec_probe = ns:example",
    "smtp_tls_security_level = dane", "smtp_tls_loglevel = 1",
    "smtp_tls_policy_maps = " .. map,
    "smtp_connect_timeout = 5s", "maximal_backoff_time = 3600s",
    "minimal_backoff_time = 3600s", "queue_run_delay = 3600s",
  } })
  out.postmap = {}
  for _, d in ipairs(DOMAINS) do
    out.postmap[d[1]] = util.run("postmap -c " .. dir .. "/pm -q " .. d[1] .. ".example " ..
      map .. " 2>&1 || true"):gsub("%s+$", "")
  end
  for _, d in ipairs(DOMAINS) do
    util.run(("printf 'From: postmaster@sender.example\\nTo: user@%s.example\\nSubject: %s\\n" ..
      "\\nhello\\n' | %s"):format(d[1], d[1], sender.sendmail))
  end
  local function settled()
    local log = sender.log()
    for _, d in ipairs(DOMAINS) do
      if not log:find("to=<user@" .. d[1] .. ".example>.-status=") then return false end
    end
    return true
  end
  proc.poll(settled, 60)
  out.delivered = {}
  local log = sender.log()
  for _, d in ipairs(DOMAINS) do
    local addr = "user@" .. d[1] .. ".example"
    local sent = log:find("to=<" .. addr .. ">[^\n]-status=sent") and 1 or 0
    out.delivered[d[1]] = #receiver:wait_messages(addr, sent, 30)
  end
  out.sender_log = sender.log()
  out.serve_log = util.run("cat " .. serve_out)
  out.unbound_log = util.run("cat " .. dir .. "/unbound.log")
  sender.stop()
  receiver.stop()
  proc.stop(serve)
  proc.stop(unbound)
  w.stop()
end)
proc.stop_all()
out.ok, out.error = ok, not ok and tostring(err) or nil
io.write(json.encode(out), "\n")
