-- examples/parse_demo.lua: what `make demo` runs until the client arrives. It parses the
-- records and policies a sender meets and decides which MX hosts a policy allows.
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local mtasts = require("mtasts")

local function show(label, res, msg, code)
  if res then
    print(string.format("  %-34s ok", label))
  else
    print(string.format("  %-34s %s: %s", label, code, msg))
  end
  return res
end

print("mtasts " .. mtasts._VERSION .. ": parsers (the end-to-end demo arrives with the client)")
print("\nMTA-STS TXT records at _mta-sts.<domain>:")
local rec = show("v=STSv1; id=20160831085700Z;",
  mtasts.parse_record("v=STSv1; id=20160831085700Z;"))
print("    id = " .. rec.id)
show("v=STSv1; id=2016-08-31", mtasts.parse_record("v=STSv1; id=2016-08-31"))

print("\nPolicy from https://mta-sts.example.com/.well-known/mta-sts.txt:")
local text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n" ..
  "max_age: 604800\r\n"
local policy = show("RFC 8461 example policy", mtasts.parse_policy(text))
print(string.format("    mode = %s, max_age = %d, mx = %s", policy.mode, policy.max_age,
  table.concat(policy.mx, ", ")))
show("mode: enforcing", mtasts.parse_policy("version: STSv1\nmode: enforcing\nmax_age: 1\n"))

print("\nWhich MX hosts may receive mail under that policy:")
for _, host in ipairs({ "mail.example.com", "MX1.example.net.", "example.net", "a.b.example.net",
  "evil.example.org" }) do
  print(string.format("  %-34s %s", host, mtasts.matches(policy, host) and "allowed" or "refused"))
end

print("\nTLSRPT record at _smtp._tls.<domain>:")
local t = show("rua=mailto:...,https://...", mtasts.tlsrpt.parse_record(
  "v=TLSRPTv1; rua=mailto:tlsrpt@example.com, https://reports.example.com/tlsrpt"))
print("    rua = " .. table.concat(t.rua, " | "))

print("\nDomain names (IDNA2008):")
for _, name in ipairs({ "B\195\188cher.Example.", "xn--bcher-kva.example", "192.0.2.1" }) do
  local a, u, code = mtasts.domain(name)
  print(string.format("  %-34s %s", name, a and (a .. "  (" .. u .. ")") or (code .. ": " .. u)))
end
