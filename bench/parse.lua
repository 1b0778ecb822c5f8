-- bench/parse.lua: parser throughput from Lua (make bench). Prints operations per second,
-- the median of 5 runs of about 0.3 s each.
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./build/?.so;" .. package.cpath
local mtasts = require("mtasts")
local clock = os.clock

local policy_text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n" ..
  "mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n"
local policy = assert(mtasts.parse_policy(policy_text))

local cases = {
  { "parse_record", function() return mtasts.parse_record("v=STSv1; id=20160831085700Z;") end },
  { "parse_policy (RFC example)", function() return mtasts.parse_policy(policy_text) end },
  { "tlsrpt.parse_record", function()
    return mtasts.tlsrpt.parse_record("v=TLSRPTv1; rua=mailto:reports@example.com")
  end },
  { "matches (wildcard hit)", function() return mtasts.matches(policy, "mx1.example.net") end },
  { "domain (ASCII)", function() return mtasts.domain("Mail.Example.COM") end },
  { "domain (U-labels)", function() return mtasts.domain("mail.B\195\188cher.example") end },
}

local function rate(fn)
  local n, t0 = 0, clock()
  local elapsed
  repeat
    for _ = 1, 1000 do fn() end
    n = n + 1000
    elapsed = clock() - t0
  until elapsed >= 0.3
  return n / elapsed
end

print(string.format("%-30s %14s", "operation", "ops/s (median)"))
for _, c in ipairs(cases) do
  local runs = {}
  for i = 1, 5 do runs[i] = rate(c[2]) end
  table.sort(runs)
  print(string.format("%-30s %14.0f", c[1], runs[3]))
end
