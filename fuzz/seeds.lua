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

-- DNS rdata: first byte picks the decoder (0 TXT, 1 MX, 2 name, 3 TLSA)
do
  local dir = out .. "/rdata"
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local function name(n)
    local t = {}
    for label in n:gmatch("[^.]+") do t[#t + 1] = string.pack("s1", label) end
    return table.concat(t) .. "\0"
  end
  local seeds = {
    "\0" .. string.pack("s1s1", "v=STSv1; ", "id=1;"),
    "\0" .. string.pack("s1", string.rep("x", 255)),
    "\1" .. string.pack(">I2", 10) .. name("mx1.example.com"),
    "\2" .. name("_mta-sts.example.com"),
    "\2\0",
    "\3\3\1\1" .. string.rep("\171", 32),
  }
  for i, s in ipairs(seeds) do write(dir, i, s) end
  print(string.format("rdata: %d seeds", #seeds))
end

-- cache rows (module/row.c format 1), built with string.pack
do
  local dir = out .. "/row"
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local function row(flags, mode, max_age, id, mx, ext, text)
    local parts = { string.pack(">BBi8i8i8i8BI4s1s1", 1, flags, 1000, 87400, 1000, 1060, mode,
      max_age, "example.com", id), string.pack(">I2", #mx) }
    for _, m in ipairs(mx) do parts[#parts + 1] = string.pack(">s1", m) end
    parts[#parts + 1] = string.pack(">I2", #ext)
    for _, e in ipairs(ext) do parts[#parts + 1] = string.pack(">s1s2", e[1], e[2]) end
    parts[#parts + 1] = string.pack(">s4", text)
    return table.concat(parts)
  end
  local rows = {
    row(0, 2, 86400, "20160831085700Z", { "mail.example.com", "*.example.net" },
      { { "note", "kept" } }, "version: STSv1\nmode: enforce\nmax_age: 86400\n"),
    row(1, 0, 300, "id", {}, {}, ""),
    row(0, 1, 600, "", { "a.example" }, {}, "x"),
    row(0, 0, 31557600, string.rep("i", 32), {}, { { "a", "" }, { "b", "c" } }, ""),
  }
  for i, r in ipairs(rows) do write(dir, i, r) end
  print(string.format("row: %d seeds", #rows))
end

-- codecs: first byte even = gunzip, odd = base64 (fuzz/corpus/codec has gzip members too)
do
  local dir = out .. "/codec"
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local seeds = { "\1aGVsbG8gd29ybGQ=", "\1aGVs\r\nbG8=", "\1====", "\0\31\139\8\0",
    "\0" .. string.rep("\31\139", 20) }
  for i, s in ipairs(seeds) do write(dir, i, s) end
  print(string.format("codec: %d seeds", #seeds))
end

-- the Lua parsers (fuzz/fuzz_lua.c): first byte 0 report, 1 socketmap, 2 filter lines; the
-- committed corpus (fuzz/corpus/lua) has the realistic seeds
do
  local dir = out .. "/lua"
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local seeds = { "\0{}", "\1" .. "3:abc,", "\2" .. "config|ready" }
  for i, s in ipairs(seeds) do write(dir, i, s) end
  print(string.format("lua: %d seeds", #seeds))
end

-- Redis replies (fuzz/fuzz_redis.c): first byte the size of the pieces, then RESP2 replies
do
  local dir = out .. "/redis"
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local seeds = { "\3+OK\r\n:42\r\n$3\r\na\0b\r\n$-1\r\n*-1\r\n-ERR x\r\n",
    "\0*2\r\n$1\r\nx\r\n*1\r\n:-7\r\n", "\1*3\r\n$-1\r\n*0\r\n+\r\n", "\5$0\r\n\r\n" }
  for i, s in ipairs(seeds) do write(dir, i, s) end
  print(string.format("redis: %d seeds", #seeds))
end
