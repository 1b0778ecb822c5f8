-- The OpenSMTPD filter against the reports of the audit, in a process of its own: a
-- compression bomb (a report whose JSON inflates to just under 16 MiB), a legitimate report
-- of 2.5 MB of JSON, and a message of 80,000 MIME parts. Prints, as JSON, the headers the
-- filter added, the files it stored, the longest time one protocol line took (the parse of
-- a whole report happens on its last line) and the process's peak memory (VmHWM).
--
-- usage: lua5.4 spec/support/filter_load.lua make FILE     write the protocol lines to FILE
--        lua5.4 spec/support/filter_load.lua run FILE DIR  feed them to a filter storing in DIR
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local core = require("mtasts.core")
local json = require("mtasts.json")
local mode, file, dir = arg[1], assert(arg[2]), arg[3]

if mode == "run" then
  local headers = {}
  local filter = require("mtasts.opensmtpd").new{ addresses = { "tlsrpt@example.org" },
    report_dir = assert(dir), log = function() end, write = function(l)
      local sid, h = l:match("^filter%-dataline|([^|]+)|tok|(X%-Mtasts%-TLSRPT: .*)$")
      if h then headers[sid] = h end
    end }
  local longest = 0
  for line in io.lines(file) do
    local t = core.monotonic()
    filter:line(line)
    longest = math.max(longest, core.monotonic() - t)
  end
  local f = io.open("/proc/self/status")
  local hwm = tonumber(f:read("a"):match("VmHWM:%s*(%d+)"))
  f:close()
  local files = {}
  for name in io.popen("ls " .. dir):lines() do files[#files + 1] = name end
  io.write(json.encode({ headers = headers, files = files, longest = longest, hwm_kib = hwm }),
    "\n")
  os.exit(0)
end

local out = assert(io.open(file, "wb"))
local function msg(sid, body)
  out:write(("report|0.6|1.0|smtp-in|tx-rcpt|%s|m1|ok|<tlsrpt@example.org>\n"):format(sid))
  for _, l in ipairs(body) do
    out:write(("filter|0.6|1.0|smtp-in|data-line|%s|tok|%s\n"):format(sid, l))
  end
  out:write(("filter|0.6|1.0|smtp-in|data-line|%s|tok|.\n"):format(sid))
end
local function gzip_message(text)
  local body = { "From: r@org.example", "To: tlsrpt@example.org", "MIME-Version: 1.0",
    "Content-Type: application/tlsrpt+gzip", "Content-Transfer-Encoding: base64", "" }
  for l in core.base64_encode(core.gzip(text), 76):gmatch("[^\r\n]+") do body[#body + 1] = l end
  return body
end
local RANGE = '"date-range":{"start-datetime":"2026-11-20T00:00:00Z",' ..
  '"end-datetime":"2026-11-20T23:59:59Z"}'

msg("bomb", gzip_message('{"organization-name":"' .. ("A"):rep(16 * 1024 * 1024 - 400) ..
  '",' .. RANGE .. ',"report-id":"bomb","policies":[]}'))
local fds = {}
for i = 1, 18000 do
  fds[i] = ('{"result-type":"certificate-expired","receiving-mx-hostname":"mx%d.example.com",' ..
    '"receiving-ip":"192.0.2.%d","failed-session-count":%d}'):format(i, i % 250, i)
end
msg("legit", gzip_message('{"organization-name":"Org",' .. RANGE .. ',"report-id":"big",' ..
  '"policies":[{"policy":{"policy-type":"sts","policy-domain":"example.org"},"summary":' ..
  '{"total-successful-session-count":1,"total-failure-session-count":18000},' ..
  '"failure-details":[' .. table.concat(fds, ",") .. ']}]}'))
local parts = { "From: r@org.example", "MIME-Version: 1.0",
  'Content-Type: multipart/report; report-type=tlsrpt; boundary="B"', "" }
for _ = 1, 80000 do
  parts[#parts + 1] = "--B"
  parts[#parts + 1] = "Content-Type: application/json"
  parts[#parts + 1] = ""
  parts[#parts + 1] = "{}"
end
parts[#parts + 1] = "--B--"
msg("parts", parts)
out:close()
