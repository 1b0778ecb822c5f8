-- The world of spec/postfix_log_integration_spec.lua, run inside a private network and mount
-- namespace (`unshare --net --mount`), as spec/support/postfix_world.lua is: a sender Postfix
-- 3.7 with `smtp_tls_loglevel = 1` asking `mtasts serve postfix` for policies, and a receiver
-- Postfix playing one MX host per case (a good certificate, an expired one, a wrong name, an
-- untrusted issuer, no STARTTLS, a TLS handshake that fails), for domains with an enforce, a
-- testing or no MTA-STS policy. `mtasts postfix-log` follows the sender's log file while
-- Postfix delivers, into the result store of the cache `mtasts serve postfix` filled, and the
-- day's reports are read back from the store.
--
--   sender Postfix --smtp_tls_policy_maps--> mtasts serve postfix --> NSD, nginx (policies)
--        |  maillog_file                      | the cache (policies, and the result store)
--        v                                    v
--   mtasts postfix-log FILE  ------------->  results.db  --> store:report(domain, day)
--
-- usage: lua5.4 spec/support/postfix_log_world.lua DIR [reuse]   (prints one JSON line)
-- With `reuse`, the sender reuses TLS connections through tlsproxy
-- (smtp_tls_connection_reuse = yes): then tlsproxy logs the certificate failures.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local util = require("support.util")
local proc = require("support.proc")
local json = require("mtasts.json")
local cjson = require("cjson")

local function json_decode(s)
  local ok, v = pcall(cjson.decode, s)
  return ok and v or s
end

local dir = assert(arg[1], "usage: postfix_log_world.lua DIR [reuse]")
local reuse = arg[2] == "reuse"
local out = {}

-- name: the domain's first label; mx: { { host label, address, certificate }, ... } where the
-- certificate is "valid", "expired", "wrongname", "untrusted" or false (no STARTTLS); mode:
-- the policy's (nil: no MTA-STS) and policy_mx its mx lines (default the MX hosts); rcpts:
-- recipients of its one message; messages: how many messages; smtpd: more smtpd options
local DOMAINS = {
  { name = "good", mx = { { "mx.good", "127.0.0.2", "valid" } }, mode = "enforce" },
  { name = "expired", mx = { { "mx.expired", "127.0.0.3", "expired" } }, mode = "enforce" },
  { name = "wrongname", mx = { { "mx.wrongname", "127.0.0.4", "wrongname" } },
    mode = "enforce" },
  { name = "untrusted", mx = { { "mx.untrusted", "127.0.0.5", "untrusted" } },
    mode = "enforce" },
  { name = "nostarttls", mx = { { "mx.nostarttls", "127.0.0.6", false } }, mode = "enforce" },
  { name = "handshake", mx = { { "mx.handshake", "127.0.0.7", "valid" } }, mode = "enforce",
    smtpd = { "smtpd_tls_protocols=TLSv1", "smtpd_tls_mandatory_protocols=TLSv1" } },
  { name = "nopolicy", mx = { { "mx.nopolicy", "127.0.0.8", "valid" } } },
  { name = "nopolicyexp", mx = { { "mx.nopolicyexp", "127.0.0.9", "expired" } } },
  { name = "plain", mx = { { "mx.plain", "127.0.0.10", false } } },
  { name = "testing", mx = { { "mx.testing", "127.0.0.11", "wrongname" } }, mode = "testing" },
  { name = "multi", mx = { { "mx.multi", "127.0.0.12", "valid" } }, mode = "enforce",
    rcpts = 3 },
  { name = "nomatch", mx = { { "mx.elsewhere", "127.0.0.13", "valid" } }, mode = "enforce",
    policy_mx = { "mx.nomatch.example" } },
  { name = "twomx", mx = { { "mx1.twomx", "127.0.0.14", "expired" },
    { "mx2.twomx", "127.0.0.15", "valid" } }, mode = "enforce" },
  { name = "mayhs", mx = { { "mx.mayhs", "127.0.0.16", "valid" } },
    smtpd = { "smtpd_tls_protocols=TLSv1", "smtpd_tls_mandatory_protocols=TLSv1" } },
  { name = "cached", mx = { { "mx.cached", "127.0.0.17", "valid" } }, mode = "enforce",
    messages = 3 },
  { name = "plaincached", mx = { { "mx.plaincached", "127.0.0.18", false } }, messages = 3 },
}

local ok, err = pcall(function()
  assert(os.execute("ip link set lo up"))
  for _, d in ipairs(DOMAINS) do
    for _, m in ipairs(d.mx) do assert(os.execute("ip addr add " .. m[2] .. "/32 dev lo")) end
  end
  util.write(dir .. "/resolv.conf", "nameserver 127.0.0.1\noptions attempts:2 timeout:2\n")
  assert(os.execute("mount --bind " .. dir .. "/resolv.conf /etc/resolv.conf"))
  local _, probe = util.run("ip route get 192.0.2.1 2>/dev/null")
  out.isolated = probe ~= 0

  local ca = require("support.ca").new(dir .. "/ca")
  local records, sites, smtpd, mailboxes, listen, cached = {}, {}, {}, {}, {}, {}
  for _, d in ipairs(DOMAINS) do
    local patterns = {}
    for i, m in ipairs(d.mx) do
      local host, addr, cert = m[1], m[2], m[3]
      records[#records + 1] = ("%s IN MX %d %s"):format(d.name, i * 10, host)
      records[#records + 1] = host .. " IN A " .. addr
      patterns[#patterns + 1] = host .. ".example"
      local crt, key
      if cert == "wrongname" then crt, key = ca:issue("wrong-" .. host .. ".example")
      elseif cert then
        crt, key = ca:issue(host .. ".example", { expired = cert == "expired",
          untrusted = cert == "untrusted" })
      end
      smtpd[#smtpd + 1] = { address = addr .. ":25", cert = crt, key = key, options = d.smtpd }
      listen[#listen + 1] = addr
    end
    if d.mode then
      records[#records + 1] = ('_mta-sts.%s IN TXT "v=STSv1; id=%s1;"'):format(d.name, d.name)
      records[#records + 1] = "mta-sts." .. d.name .. " IN A 127.0.0.1"
      sites[#sites + 1] = { host = "mta-sts." .. d.name .. ".example", body = "version: STSv1\n" ..
        "mode: " .. d.mode .. "\nmx: " .. table.concat(d.policy_mx or patterns, "\nmx: ") ..
        "\nmax_age: 86400\n" }
    end
    for i = 1, d.rcpts or 1 do
      mailboxes[#mailboxes + 1] = "user" .. i .. "@" .. d.name .. ".example"
    end
    if d.messages then cached[#cached + 1] = d.name .. ".example" end
  end
  local dns = require("support.dns").start({ ["example."] = records }, 53)
  local web = require("support.https").start(ca, sites)
  local serve_out = dir .. "/serve.out"
  os.remove(serve_out)
  local db = dir .. "/cache"
  local global = " --db " .. db .. " --nameserver 127.0.0.1@53 --trust-anchor none " ..
    "--allow-private-addresses --cafile " .. ca.cafile .. " --connect-to :443:127.0.0.1:" ..
    web.port .. " --timeout 3"
  local serve = proc.spawn("mtasts-serve", util.lua_cmd() .. " bin/mtasts" .. global ..
    " serve postfix --listen inet:127.0.0.1:0", serve_out)
  assert(proc.poll(function() return util.run("cat " .. serve_out):match("inet:127") end, 10))
  local port = util.run("cat " .. serve_out):match("inet:127%.0%.0%.1:(%d+)")

  local postfix = require("support.postfix")
  local receiver = postfix.start(mailboxes, { hostname = "mx.receiver.example", smtpd = smtpd,
    main = { "inet_interfaces = " .. table.concat(listen, ", ") } })
  local main = {
    "default_transport = smtp", "relay_transport = smtp",
    "inet_interfaces = 127.0.0.1",
    "smtp_tls_security_level = may", "smtp_tls_loglevel = 1",
    "smtp_tls_CAfile = " .. ca.cafile,
    "smtp_tls_policy_maps = socketmap:inet:127.0.0.1:" .. port .. ":postfix",
    "smtp_connect_timeout = 5s", "maximal_backoff_time = 3600s",
    "minimal_backoff_time = 3600s", "queue_run_delay = 3600s",
    -- connections to these are kept open for the next message (conn_use=2 in the log)
    "smtp_connection_cache_destinations = " .. table.concat(cached, ", "),
  }
  if reuse then main[#main + 1] = "smtp_tls_connection_reuse = yes" end
  local sender = postfix.start({ "postmaster@sender.example" }, { main = main,
    master = reuse and { "tlsproxy unix - - n - 0 tlsproxy" } or nil })
  local maillog = sender.dir .. "/maillog"
  out.maillog = maillog
  local name = "postfix-log:" .. maillog
  local tlsrpt = require("mtasts.tlsrpt")
  local core = require("mtasts.core")
  local function pause() core.poll(-1, "", 0.1) end

  -- mtasts postfix-log in the background: its pid and, once it ended, its exit status
  local n_readers = 0
  local function start_reader(flags)
    n_readers = n_readers + 1
    local base = dir .. "/reader" .. n_readers
    util.run(("( timeout -s KILL 120 %s bin/mtasts --json --db %s postfix-log %s %s " ..
      ">%s.out 2>%s.err & echo $! >%s.pid; wait $!; echo $? >%s.rc ) >/dev/null 2>&1 &")
      :format(util.lua_cmd(), db, flags, maillog, base, base, base, base))
    local r = { base = base }
    assert(proc.poll(function()
      return util.run("cat " .. base .. ".err 2>/dev/null"):find("following") ~= nil
    end, 20), "postfix-log did not start: " .. util.run("cat " .. base .. ".err"))
    r.pid = tonumber((util.run("cat " .. base .. ".pid")))
    return r
  end
  -- until the reader's committed position is the end of the log
  local function caught_up()
    local f = assert(io.open(maillog, "rb"))
    local size = f:seek("end")
    f:close()
    local store = assert(tlsrpt.open{ path = db })
    local mark = store:mark(name)
    store:close()
    return mark and tonumber(mark:match("^file %d+ %d+ %d+ (%d+)")) == size
  end
  local function stop_reader(r)
    assert(proc.poll(caught_up, 30, pause), "postfix-log did not catch up")
    proc.signal(r.pid, "TERM")
    assert(proc.poll(function() return util.run("cat " .. r.base .. ".rc 2>/dev/null") ~= ""
    end, 20), "postfix-log did not stop on SIGTERM")
    return { status = tonumber((util.run("cat " .. r.base .. ".rc"))),
      stats = json_decode((util.run("cat " .. r.base .. ".out"))),
      log = (util.run("cat " .. r.base .. ".err")) }
  end

  -- the first reader follows the log while Postfix delivers
  local reader = start_reader("--from-start")
  local function send(d, messages)
    local to = {}
    for i = 1, d.rcpts or 1 do to[i] = "user" .. i .. "@" .. d.name .. ".example" end
    for _ = 1, messages or d.messages or 1 do
      util.run(("printf 'From: postmaster@sender.example\\nTo: %s\\nSubject: %s\\n" ..
        "\\nhello\\n' | %s"):format(table.concat(to, ", "), d.name, sender.sendmail))
    end
  end
  for _, d in ipairs(DOMAINS) do send(d) end
  -- every recipient of every message has its status line
  local function settled(extra)
    local log = sender.log()
    for _, d in ipairs(DOMAINS) do
      for i = 1, d.rcpts or 1 do
        local n = 0
        for _ in log:gmatch("to=<user" .. i .. "@" .. d.name .. "%.example>[^\n]-status=") do
          n = n + 1
        end
        if n < (d.messages or 1) + (extra[d.name] or 0) then return false end
      end
    end
    return true
  end
  out.settled = proc.poll(function() return settled({}) end, 90)
  out.reader1 = stop_reader(reader)
  -- more mail while no reader runs; the next one goes on from the recorded position
  local more = { good = 1, multi = 1 }
  for _, d in ipairs(DOMAINS) do
    if more[d.name] then send(d, more[d.name]) end
  end
  out.settled_more = proc.poll(function() return settled(more) end, 90)
  reader = start_reader("")
  out.reader2 = stop_reader(reader)

  -- the day's reports, from the store
  local store = assert(tlsrpt.open{ path = db, submitter = "mail.sender.example" })
  out.days = store:days()
  out.reports = {}         -- day -> domain -> report
  for _, day in ipairs(out.days) do
    out.reports[day] = {}
    for _, d in ipairs(store:domains(day)) do
      out.reports[day][d.domain] = store:report(d.domain, day)
    end
  end
  store:close()
  -- and as `mtasts report build` writes them
  util.run("mkdir -p " .. dir .. "/reports")
  out.build = ""
  for _, day in ipairs(out.days) do
    out.build = out.build .. util.run(util.lua_cmd() .. " bin/mtasts --db " .. db ..
      " report build --day " .. day .. " --submitter mail.sender.example --out " .. dir ..
      "/reports")
  end
  out.sender_log = sender.log()
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
