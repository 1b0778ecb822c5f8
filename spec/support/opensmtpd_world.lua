-- The OpenSMTPD integration world, run by spec/opensmtpd_integration_spec.lua inside a
-- private network and mount namespace (`unshare --net --mount`). Debian's opensmtpd conflicts
-- with postfix, so it is not installed: the Makefile unpacks its package (`apt-get download`,
-- `dpkg -x`) into build/opensmtpd/, and here the paths smtpd was built with are mounted from
-- there (only inside this namespace): /usr/libexec/opensmtpd, /var/spool/smtpd,
-- /var/lib/opensmtpd/empty, and a passwd/group with its users (Debian: opensmtpd, opensmtpq).
--
-- OpenSMTPD listens on 127.0.0.1 (namespace loopback) with the mtasts filter; a TLS report is
-- mailed to it with curl; the delivered message and the stored report are printed as JSON.
--
-- usage: lua5.4 spec/support/opensmtpd_world.lua DIR ROOT   (ROOT: the unpacked package)
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local util = require("support.util")
local proc = require("support.proc")
local json = require("mtasts.json")
local tlsrpt = require("mtasts.tlsrpt")

local dir, root = assert(arg[1]), assert(arg[2])
local out = {}

local function sh(cmd)
  local o, status = util.run(cmd)
  if status ~= 0 then error(cmd .. ": " .. o, 0) end
  return o
end

local ok, err = pcall(function()
  sh("ip link set lo up")
  local _, probe = util.run("ip route get 192.0.2.1 2>/dev/null")
  out.isolated = probe ~= 0
  -- what smtpd expects, from the unpacked package and temporary directories
  sh("mount -t tmpfs tmpfs /usr/libexec && mkdir -p /usr/libexec/opensmtpd && " ..
    "mount --bind " .. root .. "/usr/libexec/opensmtpd /usr/libexec/opensmtpd")
  sh("mount -t tmpfs tmpfs /var/spool && mkdir -m 711 -p /var/spool/smtpd")
  sh("mount -t tmpfs tmpfs /var/lib && mkdir -p /var/lib/opensmtpd/empty")
  sh("mount -t tmpfs tmpfs /run")
  sh("cp /etc/passwd " .. dir .. "/passwd && cp /etc/group " .. dir .. "/group")
  local f = assert(io.open(dir .. "/passwd", "a"))
  f:write("opensmtpd:x:64990:64990::/var/lib/opensmtpd/empty:/usr/sbin/nologin\n",
    "opensmtpq:x:64991:64991::/var/lib/opensmtpd/empty:/usr/sbin/nologin\n")
  f:close()
  f = assert(io.open(dir .. "/group", "a"))
  f:write("opensmtpd:x:64990:\nopensmtpq:x:64991:\n")
  f:close()
  sh("mount --bind " .. dir .. "/passwd /etc/passwd && mount --bind " .. dir ..
    "/group /etc/group")

  local port = proc.free_port()
  sh("mkdir -p " .. dir .. "/Maildir " .. dir .. "/reports && chown -R 65534:65534 " .. dir ..
    "/Maildir && chmod 777 " .. dir .. "/reports && chmod 755 " .. dir)
  -- smtpd runs the filter as its unprivileged user, who may not reach the source tree (a
  -- clone under root's 0700 home): inside this namespace the tree is also mounted under dir
  local cwd = dir .. "/src"
  sh("mkdir " .. cwd .. " && mount --bind -o ro . " .. cwd)
  util.write(dir .. "/vusers", "@report.example nobody\n")
  util.write(dir .. "/smtpd.conf", table.concat({
    -- smtpd runs a relative program from /usr/libexec/opensmtpd: the path is absolute
    ('filter mtasts proc-exec "/usr/bin/lua5.4 %s/bin/mtasts-opensmtpd-filter --address ' ..
      'tlsrpt@report.example --report-dir %s/reports"'):format(cwd, dir),
    "listen on 127.0.0.1 port " .. port .. " filter mtasts",
    "table vusers file:" .. dir .. "/vusers",
    'action "deliver" maildir "' .. dir .. '/Maildir" user nobody virtual <vusers>',
    'match from any for domain "report.example" action "deliver"',
  }, "\n") .. "\n")
  out.check = util.run(root .. "/usr/sbin/smtpd -n -f " .. dir .. "/smtpd.conf")
  local pid = proc.spawn("smtpd", root .. "/usr/sbin/smtpd -d -f " .. dir .. "/smtpd.conf",
    dir .. "/smtpd.log")
  assert(proc.poll(function() return proc.tcp_open(port) or not proc.alive(pid) end, 15),
    "smtpd did not listen")
  assert(proc.alive(pid), "smtpd exited: " .. util.run("tail -20 " .. dir .. "/smtpd.log"))

  -- a report as a sender would mail it, and an ordinary message
  local report = { ["organization-name"] = "Reporter Org",
    ["date-range"] = { ["start-datetime"] = "2026-11-20T00:00:00Z",
      ["end-datetime"] = "2026-11-20T23:59:59Z" },
    ["contact-info"] = "tlsrpt@reporter.example", ["report-id"] = "20261120.report.example@r",
    policies = { { policy = { ["policy-type"] = "sts", ["policy-domain"] = "report.example",
      ["policy-string"] = { "version: STSv1", "mode: enforce" }, ["mx-host"] = { "mx" } },
      summary = { ["total-successful-session-count"] = 42,
        ["total-failure-session-count"] = 1 },
      ["failure-details"] = { { ["result-type"] = "certificate-expired",
        ["failed-session-count"] = 1 } } } } }
  util.write(dir .. "/report.eml", tlsrpt.message(report, { from = "tlsrpt@reporter.example",
    to = "tlsrpt@report.example" }))
  util.write(dir .. "/plain.eml", "From: a@reporter.example\r\nTo: user@report.example\r\n" ..
    "Subject: hello\r\n\r\n.leading dot\r\nbye\r\n")
  local function send(file, rcpt)
    return util.run(("curl -s -S --max-time 20 --url smtp://127.0.0.1:%d --mail-from " ..
      "tlsrpt@reporter.example --mail-rcpt %s --upload-file %s 2>&1"):format(port, rcpt, file))
  end
  out.send_report = send(dir .. "/report.eml", "tlsrpt@report.example")
  out.send_plain = send(dir .. "/plain.eml", "user@report.example")
  proc.poll(function()
    return #util.run("ls " .. dir .. "/Maildir/new 2>/dev/null"):gsub("%s", "") > 0 and
      select(2, util.run("ls " .. dir .. "/Maildir/new | wc -l")) == 0 and
      tonumber(util.run("ls " .. dir .. "/Maildir/new | wc -l"):match("%d+")) >= 2
  end, 20)
  out.delivered = {}
  for name in util.run("ls " .. dir .. "/Maildir/new 2>/dev/null"):gmatch("%S+") do
    local fh = io.open(dir .. "/Maildir/new/" .. name, "rb")
    out.delivered[#out.delivered + 1] = fh:read("a")
    fh:close()
  end
  out.reports = {}
  for name in util.run("ls " .. dir .. "/reports 2>/dev/null"):gmatch("%S+%.json") do
    local fh = io.open(dir .. "/reports/" .. name, "rb")
    out.reports[#out.reports + 1] = fh:read("a")
    fh:close()
  end
  out.log = util.run("tail -30 " .. dir .. "/smtpd.log")
  proc.stop(pid)
end)
proc.stop_all()
out.ok, out.error = ok, not ok and tostring(err) or nil
io.write(json.encode(out), "\n")
