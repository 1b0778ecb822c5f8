-- bench/socketmap.lua: `mtasts serve postfix` against the peer, postfix-mta-sts-resolver
-- (Debian's package, its in-memory cache), and a ceiling (bench/smceiling.c, a server that
-- answers every request with a fixed reply), all driven by one C client (bench/smclient.c),
-- all in the same private network namespace, in one run (make bench).
--
-- The fixture world inside the namespace: NSD on 127.0.0.1:53 (resolv.conf points there, for
-- the peer, which reads it), nginx on 127.0.0.1:443 with one certificate for every policy
-- host (the test CA is added to the system bundle, bind-mounted only here), 2,000 domains
-- d1..d2000.example with enforce policies, and slow.example whose policy host answers after 3 s.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = (os.getenv("MTASTS_CPATH") or "./build/?.so") .. ";" .. package.cpath

if os.getenv("MTASTS_BENCH_NS") ~= "1" then
  local lua = arg[-1] or "lua5.4"
  local ok = os.execute("MTASTS_BENCH_NS=1 unshare --net --mount " .. lua .. " " .. arg[0])
  os.exit(ok and 0 or 1)
end

local util = require("support.util")
local proc = require("support.proc")
local core = require("mtasts.core")

local N = 2000
local RUNS = 5
local DURATION = 3

local function sh(cmd)
  local out, status = util.run(cmd)
  if status ~= 0 then error(cmd .. ": " .. out, 0) end
  return out
end

local function median(t)
  local c = {}
  for i, v in ipairs(t) do c[i] = v end
  table.sort(c)
  return c[(#c + 1) // 2]
end

local function read_file(path)
  local f = io.open(path)
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

-- The processes of a server: its pid and its descendants (the peer forks workers), not the
-- `timeout` that proc.spawn wraps each in, and never threads (they share one memory: the
-- first version of this benchmark walked pstree's list, threads included, and counted our
-- server twice, once for the resolver's thread).
local function tree(pid, out)
  out = out or {}
  local comm = (read_file("/proc/" .. pid .. "/comm") or ""):gsub("%s+$", "")
  if comm ~= "" and comm ~= "timeout" then out[#out + 1] = pid end
  for task in util.run("ls /proc/" .. pid .. "/task 2>/dev/null"):gmatch("%d+") do
    for child in (read_file("/proc/" .. pid .. "/task/" .. task .. "/children") or ""):gmatch(
        "%d+") do
      tree(child, out)
    end
  end
  return out
end

-- Resident memory of a server's processes, in KiB: rss (the sum of their RSS: pages shared
-- between them count once per process), pss (proportional: a page shared by n processes
-- counts 1/n in each, so the sum is what the server costs the machine), and of each, the part
-- that is Berkeley DB's shared regions (the __db.00N files of the cache directory, mapped
-- by every process on the cache: their pages are counted in the RSS of each).
local function memory(pid)
  local m = { rss = 0, pss = 0, db_rss = 0, db_pss = 0, processes = 0 }
  for _, p in ipairs(tree(pid)) do
    local smaps = read_file("/proc/" .. p .. "/smaps")
    if smaps then
      m.processes = m.processes + 1
      local db = false
      for line in smaps:gmatch("[^\n]+") do
        local path = line:match("^%x+%-%x+ %S+ %x+ %S+ %d+%s*(.*)$")
        if path then
          db = path:match("/__db%.%d+$") ~= nil
        else
          local k, v = line:match("^(%a+):%s+(%d+) kB")
          if k == "Rss" then
            m.rss = m.rss + tonumber(v)
            if db then m.db_rss = m.db_rss + tonumber(v) end
          elseif k == "Pss" then
            m.pss = m.pss + tonumber(v)
            if db then m.db_pss = m.db_pss + tonumber(v) end
          end
        end
      end
    end
  end
  return m
end

local dir = util.tmpdir()
local results = {}
local ok, err = pcall(function()
  sh("ip link set lo up")
  -- the peer resolves through resolv.conf and verifies through the system CA bundle
  util.write(dir .. "/resolv.conf", "nameserver 127.0.0.1\noptions attempts:2 timeout:2\n")
  sh("mount --bind " .. dir .. "/resolv.conf /etc/resolv.conf")
  local ca = require("support.ca").new(dir .. "/ca")
  sh("cat /etc/ssl/certs/ca-certificates.crt " .. ca.cafile .. " > " .. dir .. "/bundle.crt")
  sh("mount --bind " .. dir .. "/bundle.crt /etc/ssl/certs/ca-certificates.crt")

  local records, names = {}, {}
  for i = 1, N do
    records[#records + 1] = ('_mta-sts.d%d IN TXT "v=STSv1; id=%d;"'):format(i, i)
    records[#records + 1] = ("mta-sts.d%d IN A 127.0.0.1"):format(i)
    names[#names + 1] = ("mta-sts.d%d.example"):format(i)
  end
  for _, d in ipairs({ "slow", "fresh1", "fresh2", "fresh3" }) do
    records[#records + 1] = ('_mta-sts.%s IN TXT "v=STSv1; id=1;"'):format(d)
    records[#records + 1] = ("mta-sts.%s IN A 127.0.0.1"):format(d)
    names[#names + 1] = "mta-sts." .. d .. ".example"
  end
  local dns = require("support.dns").start({ ["example."] = records }, 53)
  local crt, key = ca:issue("mta-sts.example", { names = names })
  sh("mkdir -p " .. dir .. "/nginx/tmp")
  util.write(dir .. "/nginx/nginx.conf", table.concat({
    "load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;",
    "daemon off;", "master_process off;", "worker_processes 1;",
    "pid " .. dir .. "/nginx/nginx.pid;", "error_log " .. dir .. "/nginx/error.log warn;",
    "events { worker_connections 4096; }",
    "http {",
    "  log_format host '$host';",
    "  access_log " .. dir .. "/nginx/access.log host;",
    "  client_body_temp_path " .. dir .. "/nginx/tmp/body;",
    "  proxy_temp_path " .. dir .. "/nginx/tmp/p;",
    "  fastcgi_temp_path " .. dir .. "/nginx/tmp/f;",
    "  uwsgi_temp_path " .. dir .. "/nginx/tmp/u;", "  scgi_temp_path " .. dir .. "/nginx/tmp/s;",
    "  server {",
    "    listen 127.0.0.1:443 ssl;",
    [[    server_name ~^mta-sts\.(?<d>[^.]+)\.example$;]],
    "    ssl_certificate " .. crt .. ";", "    ssl_certificate_key " .. key .. ";",
    "    location = /.well-known/mta-sts.txt {",
    "      default_type text/plain;",
    [[      if ($d = slow) { echo_sleep 3; echo "version: STSv1"; echo "mode: enforce";]],
    [[        echo "mx: mx.slow.example"; echo "max_age: 86400"; }]],
    [[      return 200 "version: STSv1\nmode: enforce\nmx: mx.$d.example\nmax_age: 86400\n";]],
    "    }", "  }", "}" }, "\n") .. "\n")
  local nginx = proc.spawn("nginx", "nginx -p " .. dir .. "/nginx -c " .. dir ..
    "/nginx/nginx.conf", dir .. "/nginx/out.log")
  assert(proc.poll(function() return proc.tcp_open(443) end, 10), "nginx did not start: " ..
    util.run("cat " .. dir .. "/nginx/error.log"))

  -- fetches so far: access log lines, once the count has stopped moving (nginx logs a
  -- request after its answer, which may be after the client saw the socketmap answer)
  -- DNS queries reaching NSD, counted by nftables inside the namespace (UDP and TCP SYNs)
  sh("nft add table inet mtastsbench && nft add counter inet mtastsbench dns && " ..
    "nft 'add chain inet mtastsbench in { type filter hook input priority 0; }' && " ..
    "nft add rule inet mtastsbench in udp dport 53 counter name dns && " ..
    "nft add rule inet mtastsbench in tcp dport 53 tcp flags syn counter name dns")
  local function dns_queries()
    local out = util.run("nft list counter inet mtastsbench dns")
    return tonumber(out:match("packets (%d+)")) or 0
  end

  local function fetches()
    local function count()
      local n = util.run("wc -l < " .. dir .. "/nginx/access.log 2>/dev/null"):match("%d+")
      return tonumber(n) or 0
    end
    local last = count()
    for _ = 1, 50 do
      proc.poll(function() return false end, 0.2)
      local now = count()
      if now == last then return now end
      last = now
    end
    return last
  end

  -- the three servers
  local servers = {}
  do
    local port = proc.free_port()
    local out = dir .. "/mtasts.out"
    local pid = proc.spawn("mtasts", util.lua_cmd() .. " bin/mtasts --db " .. dir ..
      "/mtasts-db --nameserver 127.0.0.1@53 --trust-anchor none --allow-private-addresses " ..
      "--cafile " .. ca.cafile ..
      " --timeout 10 serve postfix --listen inet:127.0.0.1:" .. port, out)
    assert(proc.poll(function() return proc.tcp_open(port) end, 10), util.run("cat " .. out))
    servers[#servers + 1] = { name = "mtasts", port = port, pid = pid }
  end
  do
    local port = proc.free_port()
    util.write(dir .. "/peer.yml", table.concat({ "host: 127.0.0.1", "port: " .. port,
      "reuse_port: true", "shutdown_timeout: 5", "cache:", "  type: internal", "  options:",
      "    cache_size: 10000", "default_zone:", "  strict_testing: false", "  timeout: 10" },
      "\n") .. "\n")
    local pid = proc.spawn("peer", "mta-sts-daemon -c " .. dir .. "/peer.yml -v warn",
      dir .. "/peer.out")
    assert(proc.poll(function() return proc.tcp_open(port) end, 20), util.run("cat " .. dir ..
      "/peer.out"))
    servers[#servers + 1] = { name = "peer", port = port, pid = pid }
  end
  do
    local port = proc.free_port()
    local pid = proc.spawn("ceiling", "build/bench/smceiling " .. port, dir .. "/ceiling.out")
    assert(proc.poll(function() return proc.tcp_open(port) end, 10))
    servers[#servers + 1] = { name = "ceiling", port = port, pid = pid }
  end

  local keys = dir .. "/keys"
  do
    local t = {}
    for i = 1, N do t[i] = ("d%d.example"):format(i) end
    util.write(keys, table.concat(t, "\n") .. "\n")
  end
  local function client(port, keyfile, conns, depth, seconds, count)
    local out = util.run(("build/bench/smclient 127.0.0.1 %d postfix %s %d %d %s %s"):format(
      port, keyfile, conns, depth, seconds, count or ""))
    local r = {}
    for k, v in out:gmatch("([%w_]+)=([%d.]+)") do r[k] = tonumber(v) end
    if not r.rps then error("smclient: " .. out, 0) end
    return r
  end

  for _, s in ipairs(servers) do
    local r = { name = s.name }
    results[#results + 1] = r
    if s.name ~= "ceiling" then
      -- first lookups of N distinct domains, 50 at a time
      local f0, q0 = fetches(), dns_queries()
      local t0 = core.monotonic()
      local c = client(s.port, keys, 50, 1, 600, N)
      r.first_seconds = core.monotonic() - t0
      r.first_fetches = fetches() - f0
      r.first_dns = dns_queries() - q0
      r.first_errors = c.errors
      -- 20 simultaneous first lookups of one domain
      local fresh = dir .. "/fresh-" .. s.name
      util.write(fresh, (s.name == "mtasts" and "fresh1" or "fresh2") .. ".example\n")
      f0 = fetches()
      client(s.port, fresh, 20, 1, 60, 20)
      r.same_fetches = fetches() - f0
    end
    if s.name ~= "ceiling" then
      -- head of line: cached answers on 8 connections while one waits 3 s on slow.example
      local slow = dir .. "/slow"
      util.write(slow, "slow.example\n")
      local bg = io.popen(("build/bench/smclient 127.0.0.1 %d postfix %s 1 1 6 1"):format(
        s.port, slow))
      proc.poll(function() return false end, 0.3)
      local c = client(s.port, keys, 8, 1, 2)
      bg:read("a")
      bg:close()
      r.hol = { p50 = c.p50_us, p99 = c.p99_us, max = c.max_us }
    end
    r.mem = memory(s.pid)
  end

  -- cached answers, every domain cached: run after run, each shape on each server in turn,
  -- so that a slower minute of the machine falls on all three alike
  local shapes = { { "c1d1", 1, 1 }, { "c1d32", 1, 32 }, { "c8d1", 8, 1 } }
  local samples = {}
  for run = 1, RUNS do
    for _, shape in ipairs(shapes) do
      for i, s in ipairs(servers) do
        local c = client(s.port, keys, shape[2], shape[3], DURATION)
        local id = i .. shape[1]
        samples[id] = samples[id] or { rps = {}, p50 = {}, p99 = {} }
        local t = samples[id]
        t.rps[run], t.p50[run], t.p99[run] = c.rps, c.p50_us, c.p99_us
      end
    end
  end
  for i, r in ipairs(results) do
    for _, shape in ipairs(shapes) do
      local t = samples[i .. shape[1]]
      r[shape[1]] = { rps = median(t.rps), p50 = median(t.p50), p99 = median(t.p99) }
    end
  end
  -- each run of mtasts against the ceiling's run of the same round (seconds apart, so the
  -- same state of the machine): the median of those ratios, beside the ratio of the medians
  local paired = {}
  for run = 1, RUNS do paired[run] = samples["1c1d1"].rps[run] / samples["3c1d1"].rps[run] end
  results[1].c1d1.paired = median(paired)
  results[1].c1d1.pairs = paired

  for _, s in ipairs(servers) do proc.stop(s.pid) end
  proc.stop(nginx)
  dns.stop()
end)
proc.stop_all()
util.run("rm -rf '" .. dir .. "'")
if not ok then
  io.stderr:write("bench/socketmap.lua failed: ", tostring(err), "\n")
  os.exit(1)
end

local by = {}
for _, r in ipairs(results) do by[r.name] = r end
local m, p, c = by.mtasts, by.peer, by.ceiling
local function ratio(a, b) return b and b > 0 and ("%.2f"):format(a / b) or "-" end
io.write(("\nsocketmap servers, one run, one network namespace; %d cores; medians of %d runs " ..
  "of %d s\n"):format(tonumber(util.run("nproc"):match("%d+")), RUNS, DURATION))
io.write(("%-34s %14s %14s %14s %9s %9s\n"):format("", "mtasts", "peer", "ceiling",
  "m/peer", "m/ceiling"))
for _, shape in ipairs({ { "c1d1", "cached, 1 conn, 1 in flight" },
    { "c1d32", "cached, 1 conn, 32 in flight" }, { "c8d1", "cached, 8 conns, 1 each" } }) do
  local k = shape[1]
  io.write(("%-34s %14.0f %14.0f %14.0f %9s %9s\n"):format(shape[2] .. " (req/s)", m[k].rps,
    p[k].rps, c[k].rps, ratio(m[k].rps, p[k].rps), ratio(m[k].rps, c[k].rps)))
  io.write(("%-34s %14s %14s %14s\n"):format("  p50 / p99 (us)", ("%.0f / %.0f"):format(
    m[k].p50, m[k].p99), ("%.0f / %.0f"):format(p[k].p50, p[k].p99), ("%.0f / %.0f"):format(
    c[k].p50, c[k].p99)))
end
io.write(("%-34s %14.2f %14.2f %14s %9s\n"):format(("first lookups of %d domains, 50 at " ..
  "once (s)"):format(N), m.first_seconds, p.first_seconds, "-", ratio(m.first_seconds,
  p.first_seconds)))
io.write(("%-34s %14d %14d\n"):format("  HTTPS fetches made", m.first_fetches, p.first_fetches))
io.write(("%-34s %14d %14d\n"):format("  DNS queries made", m.first_dns, p.first_dns))
io.write(("%-34s %14d %14d\n"):format("20 first lookups of 1 domain: fetches", m.same_fetches,
  p.same_fetches))
io.write(("%-34s %14s %14s\n"):format("cached p50/p99/max (us) beside a 3 s lookup",
  ("%.0f/%.0f/%.0f"):format(m.hol.p50, m.hol.p99, m.hol.max),
  ("%.0f/%.0f/%.0f"):format(p.hol.p50, p.hol.p99, p.hol.max)))
local function mib(kib) return ("%.1f"):format(kib / 1024) end
io.write(("%-34s %14s %14s %14s %9s\n"):format(("resident memory, %d cached: RSS (MiB)")
  :format(N), mib(m.mem.rss), mib(p.mem.rss), mib(c.mem.rss), ratio(m.mem.rss, p.mem.rss)))
io.write(("%-34s %14s %14s %14s %9s\n"):format("  PSS (MiB)", mib(m.mem.pss), mib(p.mem.pss),
  mib(c.mem.pss), ratio(m.mem.pss, p.mem.pss)))
io.write(("%-34s %14s %14s\n"):format("  Berkeley DB regions, RSS / PSS (MiB)",
  mib(m.mem.db_rss) .. " / " .. mib(m.mem.db_pss), "-"))
io.write(("%-34s %14d %14d %14d\n"):format("  processes", m.mem.processes, p.mem.processes,
  c.mem.processes))
local pairs_text = {}
for i, v in ipairs(m.c1d1.pairs) do pairs_text[i] = ("%.2f"):format(v) end
io.write(("aims: memory at most a quarter of the peer's: RSS %s, PSS %s; one request at a " ..
  "time at least 0.85 of the ceiling: %s (run by run: median %.2f of %s)\n"):format(
  ratio(m.mem.rss, p.mem.rss), ratio(m.mem.pss, p.mem.pss), ratio(m.c1d1.rps, c.c1d1.rps),
  m.c1d1.paired, table.concat(pairs_text, " ")))
