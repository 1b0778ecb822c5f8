-- A private Postfix for specs: Debian's postfix with its own configuration, queue and
-- Maildir under a temporary directory, no network listener at all (mail comes in through
-- its sendmail command, which the spec gives to the code under test) and one virtual
-- domain delivered to Maildir:
--
--   local mta = postfix.start({ "tlsrpt@report.example" })
--   store with sendmail = mta.sendmail          -- "/usr/sbin/sendmail -C <conf> -i -t"
--   mta:messages("tlsrpt@report.example")       -- the delivered messages, oldest first
--   mta:stop()
local util = require("support.util")
local proc = require("support.proc")

local _M = {}

local MASTER = [[
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
]]

--- Start Postfix delivering `mailboxes` (addresses under one or more domains) to Maildirs.
-- opts.main: more main.cf lines; opts.smtpd: { { address = "127.0.0.2:25", cert =, key = } }
-- SMTP listeners with STARTTLS (only inside a private network namespace, or on loopback;
-- without cert, no STARTTLS; `options`: more "-o name=value" of that listener);
-- opts.master: more master.cf lines; opts.hostname: myhostname.
function _M.start(mailboxes, opts)
  opts = opts or {}
  local dir = util.tmpdir()
  local conf = dir .. "/conf"
  -- the postfix user must reach data/ and the virtual delivery agent mail/
  util.run(("chmod 755 %s && mkdir -p %s %s/queue %s/data %s/mail && chown postfix %s/data && " ..
    "chown 65534:65534 %s/mail"):format(dir, conf, dir, dir, dir, dir, dir))
  local domains, map = {}, {}
  for _, addr in ipairs(mailboxes) do
    local d = addr:match("@(.+)$")
    if not domains[d] then domains[d] = true domains[#domains + 1] = d end
    map[#map + 1] = addr .. " " .. addr:gsub("@", "_at_") .. "/"
  end
  util.write(conf .. "/vmailbox", table.concat(map, "\n") .. "\n")
  local master = { MASTER }
  for _, l in ipairs(opts.smtpd or {}) do
    local line
    if l.cert then
      line = ("%s inet n - n - - smtpd -o smtpd_tls_security_level=may " ..
        "-o smtpd_tls_cert_file=%s -o smtpd_tls_key_file=%s"):format(l.address, l.cert, l.key)
    else
      line = l.address .. " inet n - n - - smtpd -o smtpd_tls_security_level=none"
    end
    for _, o in ipairs(l.options or {}) do line = line .. " -o " .. o end
    master[#master + 1] = line
  end
  for _, l in ipairs(opts.master or {}) do master[#master + 1] = l end
  util.write(conf .. "/master.cf", table.concat(master, "\n") .. "\n")
  local lines = {
    "compatibility_level = 3.6",
    "queue_directory = " .. dir .. "/queue", "data_directory = " .. dir .. "/data",
    "command_directory = /usr/sbin", "daemon_directory = /usr/lib/postfix/sbin",
    "meta_directory = /etc/postfix", "shlib_directory = /usr/lib/postfix",
    "mail_owner = postfix", "setgid_group = postdrop",
    "myhostname = " .. (opts.hostname or "mail.sender.example"), "mydomain = sender.example",
    "mydestination =", "inet_interfaces = loopback-only", "inet_protocols = ipv4",
    "relayhost =", "alias_maps =", "alias_database =", "smtputf8_enable = no",
    "default_transport = error:no relaying in specs",
    "virtual_mailbox_domains = " .. table.concat(domains, ", "),
    "virtual_mailbox_base = " .. dir .. "/mail",
    "virtual_mailbox_maps = texthash:" .. conf .. "/vmailbox",
    "virtual_uid_maps = static:65534", "virtual_gid_maps = static:65534",
    "virtual_minimum_uid = 1",
    "maillog_file_prefixes = " .. dir, "maillog_file = " .. dir .. "/maillog",
  }
  -- opts.main replaces defaults of the same name (Postfix would warn about a repeat)
  local at = {}
  for i, l in ipairs(lines) do at[l:match("^(%S+)")] = i end
  for _, l in ipairs(opts.main or {}) do
    local k = l:match("^(%S+)")
    if at[k] then lines[at[k]] = l else lines[#lines + 1] = l end
  end
  util.write(conf .. "/main.cf", table.concat(lines, "\n") .. "\n")
  local pid = proc.spawn("postfix", "postfix -c " .. conf .. " start-fg", dir .. "/start.log")
  local ready = proc.poll(function()
    return util.run("test -e " .. dir .. "/queue/public/pickup && echo y"):match("y")
      or not proc.alive(pid)
  end, 20)
  if not ready or not proc.alive(pid) then
    proc.stop(pid)
    error("postfix did not start: " .. util.run("cat " .. dir .. "/start.log " .. dir ..
      "/maillog 2>&1 | tail -5; postfix -c " .. conf .. " check 2>&1 | tail -5"))
  end
  local self = { dir = dir, sendmail = "/usr/sbin/sendmail -C " .. conf .. " -i -t" }
  function self.messages(_, addr)
    local out = {}
    local list = util.run("ls -1tr " .. dir .. "/mail/" .. addr:gsub("@", "_at_") ..
      "/new 2>/dev/null")
    for name in list:gmatch("[^\n]+") do
      local f = io.open(dir .. "/mail/" .. addr:gsub("@", "_at_") .. "/new/" .. name, "rb")
      if f then out[#out + 1] = f:read("a") f:close() end
    end
    return out
  end
  function self.wait_messages(s, addr, n, seconds)
    proc.poll(function() return #s:messages(addr) >= n end, seconds or 20)
    return s:messages(addr)
  end
  function self.log() return util.run("cat " .. dir .. "/maillog 2>/dev/null") end
  function self.stop()
    util.run("postfix -c " .. conf .. " stop >/dev/null 2>&1")
    proc.stop(pid)
    util.run("rm -rf '" .. dir .. "'")
  end
  return self
end

return _M
