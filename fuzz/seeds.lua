-- fuzz/seeds.lua OUTDIR: write every input of the spec case tables (spec/cases/) as a seed
-- file, OUTDIR/<harness>/<n>, so the fuzzers start from what the specs know.
package.path = "./spec/?.lua;" .. package.path
local out = assert(arg[1], "usage: lua5.4 fuzz/seeds.lua OUTDIR")

local function write(dir, n, data)
  local f = assert(io.open(string.format("%s/%04d", dir, n), "wb"))
  f:write(data)
  f:close()
end

local sets = {
  record = { "cases.record" },
  tlsrpt_record = { "cases.tlsrpt_record" },
  policy = { "cases.policy" },
  domain = { "cases.domain" },
}
for harness, modules in pairs(sets) do
  local dir = out .. "/" .. harness
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local n = 0
  for _, m in ipairs(modules) do
    for _, case in ipairs(require(m)) do
      n = n + 1
      write(dir, n, case[2])
    end
  end
  if harness == "domain" then   -- "pattern\0host" pairs for the matcher
    for _, case in ipairs(require("cases.match")) do
      for _, pattern in ipairs(case[2]) do
        n = n + 1
        write(dir, n, pattern .. "\0" .. case[3])
      end
    end
  end
  print(string.format("%s: %d seeds", harness, n))
end
