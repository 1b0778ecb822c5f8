-- examples/hooks_host.lua: a tiny outbound "MTA" built on mtasts.hooks, to show what a
-- Haraka-style host does with them (docs/hooks.md). It delivers one message file to each
-- recipient: MX lookup, hooks:get_mx, an SMTP session per allowed host (through the curl
-- command, with STARTTLS required, tried, or not, as get_mx says), and the outcome back to
-- the hooks, which record it for TLSRPT.
--
-- usage: lua5.4 examples/hooks_host.lua [options] MESSAGE-FILE RCPT...
--   --db DIR              cache and result store
--   --nameserver IP@PORT  DNS for MX and MTA-STS lookups
--   --cafile FILE         CA certificates, for policy hosts and MX hosts
--   --connect-to SPEC     curl CONNECT_TO for policy hosts (repeatable)
--   --smtp HOST=ADDR:PORT where to reach an MX host (repeatable; default: its name, port 25)
--   --day YYYY-MM-DD      record results under this day
--   --allow-private-addresses  fetch policies from loopback and private addresses (tests)
-- Prints one line per recipient: "<rcpt> delivered|deferred|bounced <host or -> <why>".
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local hooks = require("mtasts.hooks")
local resolver_mod = require("mtasts.resolver")

local opts = { connect_to = {}, smtp = {} }
local rest = {}
local i = 1
while i <= #arg do
  local a = arg[i]
  if a == "--db" then opts.db = arg[i + 1] i = i + 2
  elseif a == "--nameserver" then opts.nameserver = arg[i + 1] i = i + 2
  elseif a == "--cafile" then opts.cafile = arg[i + 1] i = i + 2
  elseif a == "--connect-to" then opts.connect_to[#opts.connect_to + 1] = arg[i + 1] i = i + 2
  elseif a == "--smtp" then
    local host, addr, port = arg[i + 1]:match("^([^=]+)=([^:]+):(%d+)$")
    opts.smtp[host] = { addr = addr, port = port }
    i = i + 2
  elseif a == "--day" then opts.day = arg[i + 1] i = i + 2
  elseif a == "--allow-private-addresses" then opts.allow_private = true i = i + 1
  else rest[#rest + 1] = a i = i + 1 end
end
local file = assert(rest[1], "usage: hooks_host.lua [options] MESSAGE-FILE RCPT...")

local h = assert(hooks.new{ client_opts = { path = opts.db, nameserver = opts.nameserver,
  trust_anchor = false, cafile = opts.cafile, connect_to = opts.connect_to,
  timeouts = { dns = 3, fetch = 3 }, allow_private_addresses = opts.allow_private },
  store_opts = { path = opts.db, submitter = "mail.sender.example" } })
if opts.day then
  -- record under a fixed day (the store's clock decides the day)
  local tlsrpt = require("mtasts.tlsrpt")
  local t = tlsrpt.day_start(opts.day) + 3600
  h.store.clock = function() return t end
end
local resolver = assert(resolver_mod.new{ nameserver = opts.nameserver, trust_anchor = false,
  timeout = 3 })

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- One SMTP session through curl. tls: "required" (STARTTLS or fail), "opportunistic"
-- (STARTTLS when offered), "none". Returns ok, TLS outcome for TLSRPT (or nil: no TLS
-- session took place), error text.
local CURL_TLS = { [60] = "certificate-not-trusted", [35] = "validation-failure",
  [64] = "starttls-not-supported", [51] = "certificate-host-mismatch" }
local function smtp(host, rcpt, tls)
  local target = opts.smtp[host] or { addr = host, port = "25" }
  -- env -u LD_PRELOAD: a preload meant for this Lua process (make asan preloads the
  -- sanitizer runtime) is not for curl, which hangs under it
  local cmd = { "env -u LD_PRELOAD curl -s -S --max-time 20 --url",
    sh_quote("smtp://" .. host .. ":" .. target.port), "--connect-to",
    sh_quote(host .. ":" .. target.port .. ":" .. target.addr .. ":" .. target.port),
    "--mail-from postmaster@sender.example --mail-rcpt", sh_quote(rcpt),
    "--upload-file", sh_quote(file) }
  if tls == "required" then cmd[#cmd + 1] = "--ssl-reqd"
  elseif tls == "opportunistic" then cmd[#cmd + 1] = "--ssl" end
  if opts.cafile then cmd[#cmd + 1] = "--cacert " .. sh_quote(opts.cafile) end
  local p = io.popen(table.concat(cmd, " ") .. " 2>&1")
  local out = p:read("a")
  local _, _, code = p:close()
  if code == 0 then
    return true, tls ~= "none" and { ok = true } or nil
  end
  local why = out:gsub("%s+$", "")
  if out:match("SSL: no alternative certificate subject name matches") then
    return false, { result_type = "certificate-host-mismatch",
      failure_reason_code = "certificate-host-mismatch" }, why
  end
  if out:match("certificate has expired") then
    return false, { result_type = "certificate-expired" }, why
  end
  local rt = CURL_TLS[code]
  return false, rt and { result_type = rt, failure_reason_code = "curl-" .. code } or nil, why
end

for k = 2, #rest do
  local rcpt = rest[k]
  local domain = rcpt:match("@(.+)$"):lower()
  local msg = {}
  local mx = resolver:mx(domain)
  local list = {}
  if mx then
    for _, r in ipairs(mx) do list[#list + 1] = { host = r.host, priority = r.preference } end
  else
    list = { domain }            -- no MX: the domain itself (RFC 5321 §5.1)
  end
  local hosts, why, kind = h:get_mx(domain, list, msg)
  if not hosts then
    print(rcpt, kind == "fail" and "bounced" or "deferred", "-", why)
  else
    local done = false
    for _, host in ipairs(hosts) do
      local ok, tls_outcome, serr = smtp(host.host, rcpt, host.tls)
      if tls_outcome then h:session(msg, domain, host.host, tls_outcome) end
      if not ok and tls_outcome and host.plaintext_fallback then
        ok, _, serr = smtp(host.host, rcpt, "none")   -- TLS failed, nothing enforced
      end
      if ok then
        h:delivered(msg, domain, host.host, { tls = tls_outcome ~= nil })
        print(rcpt, "delivered", host.host, tls_outcome and tls_outcome.ok and "TLS" or "plain")
        done = true
        break
      end
      why = serr
    end
    if not done then
      h:deferred(msg, domain, hosts[#hosts].host)
      print(rcpt, "deferred", hosts[#hosts].host, why)
    end
  end
end
resolver:close()
h:close()
