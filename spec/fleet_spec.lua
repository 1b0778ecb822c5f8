-- A fleet of mail hosts on one Redis (docs/fleet.md), with real components: redis-server on
-- a loopback port, the fixture world's DNS and HTTPS servers, and each host a process of its
-- own with its own cache directory.
local util = require("support.util")
local proc = require("support.proc")
local world_mod = require("support.world")
local redis_support = require("support.redis")
local json = require("cjson")
local tlsrpt = require("mtasts.tlsrpt")
local fleet = require("mtasts.fleet")
local core = require("mtasts.core")
local mtasts = require("mtasts")

describe("a fleet on Redis #fixture", function()
  local dir, cleanup, world, redis, url

  setup(function()
    dir, cleanup = util.tmpdir()
    world = world_mod.start(dir .. "/world")
    util.run("mkdir -p " .. dir .. "/redis")
    redis = redis_support.start(dir .. "/redis")
    url = "redis://127.0.0.1:" .. redis.port
  end)

  teardown(function()
    if redis then redis:stop() end
    if world then world.stop() end
    proc.stop_all()
    cleanup()
  end)

  local function flush() assert(redis:cmd("FLUSHALL")) end
  -- a client of ours, to write what a poisoned Redis holds (binary-safe)
  local function poke(...)
    local r = require("mtasts.redis").new({ url = url })
    local v, err = r:call(...)
    r:close()
    return v, err
  end

  -- Run hosts at once, each a process with a job (spec/support/fleet_host.lua); returns
  -- what each printed, decoded.
  local function run_hosts(jobs)
    local pids, outs = {}, {}
    for i, job in ipairs(jobs) do
      local jf = dir .. "/job" .. i .. ".json"
      util.write(jf, json.encode(job))
      outs[i] = dir .. "/out" .. i .. ".json"
      os.remove(outs[i])
      pids[i] = proc.spawn("fleet host " .. i, util.lua_cmd() .. " spec/support/fleet_host.lua " ..
        jf .. " " .. outs[i], dir .. "/host" .. i .. ".log", 120)
    end
    for i, pid in ipairs(pids) do
      assert(proc.poll(function() return not proc.alive(pid) end, util.within(60)),
        "host " .. i .. " did not finish")
      proc.stop(pid)
    end
    local res = {}
    for i = 1, #jobs do
      local f = io.open(outs[i], "rb")
      local s = f and f:read("a") or ""
      if f then f:close() end
      res[i] = s ~= "" and json.decode(s) or
        error("host " .. i .. " printed nothing: " .. util.run("tail -20 " .. dir .. "/host" ..
          i .. ".log"))
    end
    return res
  end

  local function open_opts(i, redis_url, extra)
    local o = {}
    for k, v in pairs(world.open_opts) do o[k] = v end
    o.path = dir .. "/cache" .. i
    o.redis = redis_url and { url = redis_url, host = "h" .. i, timeout = 1 } or nil
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
  end

  local DOMAINS = { "enforce.example", "testing.example", "none.example" }

  describe("the policy tier", function()
    before_each(function()
      flush()
      for i = 1, 4 do util.run("rm -rf " .. dir .. "/cache" .. i) end
    end)

    it("fetches each policy once for three hosts looking up at once", function()
      local jobs = {}
      for i = 1, 3 do jobs[i] = { lookup = DOMAINS, open = open_opts(i, url) } end
      local res = run_hosts(jobs)
      local fetches, shared = 0, 0
      for i = 1, 3 do
        assert.same({ ["enforce.example"] = "enforce", ["testing.example"] = "testing",
          ["none.example"] = "none" }, res[i].answers)
        fetches, shared = fetches + res[i].fetches, shared + res[i].shared
      end
      assert.equal(#DOMAINS, fetches)
      assert.equal(2 * #DOMAINS, shared)
      -- what Redis holds for a domain: the record id, the fetch time, the text as served
      local v = redis:cmd("HGET", "mtasts:policy:enforce.example", "id")
      assert.equal("enforce1", v)
    end)

    it("gives a later host the policy from Redis, and its cache keeps it without Redis",
    function()
      local res = run_hosts({ { lookup = DOMAINS, open = open_opts(1, url) } })
      assert.equal(3, res[1].fetches)
      res = run_hosts({ { lookup = DOMAINS, open = open_opts(2, url) } })
      assert.equal(0, res[1].fetches)
      assert.equal(3, res[1].shared)
      -- the policy is in host 2's own cache: a lookup with Redis gone answers from it
      local c = assert(core.cache_open(dir .. "/cache2"))
      local row = c:lookup("enforce.example", os.time())
      c:close()
      assert.equal("enforce1", row.record_id)
      assert.equal("enforce", row.policy.mode)
    end)

    it("rejects poisoned values and fetches the policy itself", function()
      local now = tostring(os.time())
      assert(poke("HSET", "mtasts:policy:enforce.example", "v", "1", "id", "enforce1",
        "fetched", now, "text", "version: STSv1\nmode: enforce\nmx: \255\0evil\nmax_age: 1\n"))
      assert(poke("HSET", "mtasts:policy:testing.example", "v", "1", "id", "testing1",
        "fetched", "99999999999", "text", "version: STSv1\nmode: none\nmax_age: 86400\n"))
      assert(poke("SET", "mtasts:policy:none.example", "not a hash"))
      local res = run_hosts({ { lookup = DOMAINS, open = open_opts(1, url) } })
      assert.same({ ["enforce.example"] = "enforce", ["testing.example"] = "testing",
        ["none.example"] = "none" }, res[1].answers)
      assert.equal(3, res[1].fetches)
      assert.equal(3, res[1].rejected)
      -- the host's own fetches replaced them, the string key too
      assert.equal("enforce1", redis:cmd("HGET", "mtasts:policy:enforce.example", "id"))
      assert.equal("testing1", redis:cmd("HGET", "mtasts:policy:testing.example", "id"))
      -- the one from the future is replaced by the host's fetch, not kept for ever
      local fetched = tonumber(redis:cmd("HGET", "mtasts:policy:testing.example", "fetched"))
      assert.is_true(fetched <= os.time(), tostring(fetched))
      assert.equal("enforce", redis:cmd("HGET", "mtasts:policy:enforce.example", "text")
        :match("mode: (%a+)"))
      assert.equal("none1", redis:cmd("HGET", "mtasts:policy:none.example", "id"))
    end)

    it("never takes a policy older than what the host has", function()
      local fl = assert(fleet.new({ url = url, host = "t" }))
      local text = "version: STSv1\nmode: enforce\nmx: mx1.enforce.example\nmax_age: 86400\n"
      local now = os.time()
      assert.is_true(fl:put("old.example", "id2", text, now - 100, 86400))
      -- a write of an older fetch leaves the newer in Redis
      assert.is_false(fl:put("old.example", "id2", text, now - 200, 86400))
      local p, t, fetched = fl:policy("old.example", "id2", nil, now)
      assert.equal("enforce", p.mode)
      assert.equal(text, t)
      assert.equal(now - 100, fetched)
      -- the host has a row updated after that fetch: Redis's is older, and not taken
      assert.same({ nil, "stale" }, { fl:policy("old.example", "id2", now - 50, now) })
      -- another record id: not the policy the record announces
      assert.same({ nil, "stale" }, { fl:policy("old.example", "id3", nil, now) })
      -- expired: fetched + max_age is past
      assert.same({ nil, "stale" }, { fl:policy("old.example", "id2", nil, now + 86400) })
      fl:close()
    end)

    it("takes a changed policy another host fetched, never one older than its own", function()
      local now, id = 1800000000, "1"
      local texts = { ["1"] = "mode: testing", ["2"] = "mode: enforce", ["3"] = "mode: none" }
      local lag = {}   -- a host whose resolver still has the old record
      local function host(i)
        local resolver = { txt = function()
          return { "v=STSv1; id=" .. (lag[i] or id) .. ";" }
        end }
        local f = { n = 0 }
        function f.fetch()
          f.n = f.n + 1
          return "version: STSv1\n" .. texts[id] .. "\nmx: mx.a.example\nmax_age: 86400\n"
        end
        local sts = assert(mtasts.open{ path = dir .. "/unit" .. i, resolver = resolver,
          fetcher = f, clock = function() return now end, recheck = 60,
          redis = { url = url, host = "u" .. i } })
        return sts, f
      end
      util.run("rm -rf " .. dir .. "/unit1 " .. dir .. "/unit2")
      local a, fa = host(1)
      local b, fb = host(2)
      assert.equal("testing", a:get("a.example").mode)
      assert.equal("testing", b:get("a.example").mode)
      assert.same({ 1, 0 }, { fa.n, fb.n })
      -- the domain publishes a new policy; host 1 sees it first, host 2's resolver still
      -- answers the old record a while (its recheck finds it unchanged)
      now, id, lag[2] = now + 1000, "2", "1"
      assert.equal("enforce", a:get("a.example").mode)
      now = now + 70
      assert.equal("testing", b:get("a.example").mode)
      now, lag[2] = now + 100, nil
      assert.equal("enforce", b:get("a.example").mode)
      assert.same({ 2, 0 }, { fa.n, fb.n })
      -- Redis holds a policy for the next id, but fetched before host 2's own: not taken
      id = "3"
      assert(poke("HSET", "mtasts:policy:a.example", "v", "1", "id", "3", "fetched",
        tostring(now - 500), "text", "version: STSv1\nmode: none\nmax_age: 86400\n"))
      now = now + 100
      assert.equal("none", b:get("a.example").mode)
      assert.same({ 2, 1 }, { fa.n, fb.n })
      a:close()
      b:close()
    end)

    it("goes on without Redis when it is down, without waiting for it", function()
      local dead = "redis://127.0.0.1:" .. proc.free_port()
      local t0 = core.monotonic()
      local res = run_hosts({ { lookup = DOMAINS, open = open_opts(4, dead) } })
      assert.equal(3, res[1].fetches)
      assert.equal("enforce", res[1].answers["enforce.example"])
      assert.is_true(core.monotonic() - t0 < util.within(20))
    end)

    it("never holds up a host's event loop, even with a Redis that never answers", function()
      local cqueues = require("cqueues")
      local port = proc.free_port()
      local pid = proc.spawn("stall", "build/support/stall " .. port .. " 600",
        dir .. "/stall.log")
      assert(proc.poll(function() return proc.tcp_open(port) end, util.within(10)))
      local o = open_opts(5, "redis://127.0.0.1:" .. port)
      o.redis.timeout = 0.5
      o.redis.cancel = cqueues.cancel
      o.wait = function(fd, events, timeout)
        cqueues.poll({ pollfd = fd, events = events }, timeout)
      end
      local sts = assert(mtasts.open(o))
      local loop = cqueues.new()
      local ticks, running, answers = {}, true, {}
      local t0 = core.monotonic()
      loop:wrap(function()
        while running do
          ticks[#ticks + 1] = core.monotonic()
          cqueues.sleep(0.02)
        end
      end)
      for _, d in ipairs(DOMAINS) do
        loop:wrap(function()
          local policy = sts:get(d)
          answers[d] = policy and policy.mode or false
          if answers["enforce.example"] ~= nil and answers["testing.example"] ~= nil and
              answers["none.example"] ~= nil then
            running = false
          end
        end)
      end
      assert(loop:loop(util.within(30)))
      local took = core.monotonic() - t0
      sts:close()
      proc.stop(pid)
      local gap = 0
      for i = 2, #ticks do gap = math.max(gap, ticks[i] - ticks[i - 1]) end
      assert.same({ ["enforce.example"] = "enforce", ["testing.example"] = "testing",
        ["none.example"] = "none" }, answers)
      assert.is_true(gap < util.within(0.25), ("the loop stood still for %.3f s"):format(gap))
      -- each lookup waited at most one Redis timeout (the three at once), then fetched
      assert.is_true(took < util.within(5), ("the lookups took %.2f s"):format(took))
    end)
  end)

  it("follows a Sentinel failover: a policy written before it is read from the new master " ..
    "#slow", function()
    local sdir = dir .. "/sentinel"
    util.run("rm -rf " .. sdir .. " && mkdir -p " .. sdir)
    local m = redis_support.start(sdir)
    local rep = redis_support.start(sdir, { replicaof = m.port })
    local t
    local ok, err = pcall(function()
      assert(proc.poll(function()
        return (rep:cmd("INFO", "replication") or ""):find("master_link_status:up", 1, true)
      end, util.within(10)))
      t = redis_support.sentinel(sdir, m.port)
      assert(proc.poll(function()
        local reps = t:cmd("SENTINEL", "replicas", redis_support.MASTER)
        return type(reps) == "table" and reps.n == 1
      end, util.within(15)), "the sentinel never saw the replica")
      local spec = { sentinels = { "127.0.0.1:" .. t.port }, master = redis_support.MASTER,
        timeout = 1 }
      local o1 = open_opts(6)
      o1.redis = spec
      spec.host = "h6"
      local res = run_hosts({ { lookup = DOMAINS, open = o1 } })
      assert.equal(3, res[1].fetches)
      -- replicated, then the sentinel makes the replica the master
      assert(proc.poll(function()
        return rep:cmd("HGET", "mtasts:policy:enforce.example", "id") == "enforce1"
      end, util.within(10)))
      assert(proc.poll(function()
        return t:cmd("SENTINEL", "failover", redis_support.MASTER) == "OK"
      end, util.within(15)), "the sentinel would not fail over")
      assert(proc.poll(function()
        local a = t:cmd("SENTINEL", "get-master-addr-by-name", redis_support.MASTER)
        local role = rep:cmd("ROLE")
        return type(a) == "table" and a[2] == tostring(rep.port) and type(role) == "table" and
          role[1] == "master"
      end, util.within(15)), "no failover")
      local o2 = open_opts(7)
      o2.redis = { sentinels = spec.sentinels, master = spec.master, timeout = 1, host = "h7" }
      res = run_hosts({ { lookup = DOMAINS, open = o2 } })
      assert.equal(0, res[1].fetches)
      assert.equal(3, res[1].shared)
    end)
    if t then t:stop() end
    m:stop()
    rep:stop()
    if not ok then error(err, 0) end
  end)

  it("serves Postfix from a policy another server fetched (serve postfix --redis)", function()
    flush()
    local function serve(i, flags)
      local port = proc.free_port()
      util.run("rm -rf " .. dir .. "/sm" .. i)
      local pid = proc.spawn("serve " .. i, util.lua_cmd() .. " bin/mtasts " ..
        flags:gsub("%-%-db %S+", "--db " .. dir .. "/sm" .. i) .. " --redis " .. url ..
        " serve postfix --listen inet:127.0.0.1:" .. port, dir .. "/serve" .. i .. ".log")
      assert(proc.poll(function() return proc.tcp_open(port) end, util.within(10)),
        util.run("tail -5 " .. dir .. "/serve" .. i .. ".log"))
      return port, pid
    end
    local function postmap(port, domain)
      util.write(dir .. "/main.cf", "")
      local out = util.run("postmap -c " .. dir .. " -q " .. domain ..
        " socketmap:inet:127.0.0.1:" .. port .. ":postfix")
      return (out:gsub("%s+$", ""))
    end
    local p1, pid1 = serve(1, world.flags)
    local want = "secure match=mx1.enforce.example servername=hostname"
    assert.equal(want, postmap(p1, "enforce.example"))
    proc.stop(pid1)
    -- the second server cannot reach any policy host: its answer can only come from Redis
    local p2, pid2 = serve(2, world.flags:gsub("%-%-connect%-to %S+", "--connect-to :443:" ..
      "127.0.0.1:" .. proc.free_port()))
    assert.equal(want, postmap(p2, "enforce.example"))
    proc.stop(pid2)
  end)

  describe("settings", function()
    -- a mistake is the operator's, named at start (exit 78), never a fleet quietly missing
    local function cli(conf, rest)
      local path = dir .. "/mistake.conf"
      util.write(path, conf)
      util.run("rm -rf " .. dir .. "/never")
      local out, status = util.run(util.lua_cmd() .. " bin/mtasts --config " .. path ..
        " --db " .. dir .. "/never " .. rest .. " 2>&1")
      return out, status
    end
    it("names the setting and makes nothing", function()
      for _, case in ipairs({
        { "", "--redis ftp://127.0.0.1 lookup enforce.example", "^mtasts: %-%-redis: scheme" },
        { 'redis = { url = "redis://mail.example.net" }', "lookup enforce.example",
          "redis%.url: host 'mail%.example%.net' is not an IP address" },
        { 'redis = { url = "redis://127.0.0.1", host = "two words" }', "lookup a.example",
          "redis%.host: a host name" },
        { 'redis = { url = "redis://127.0.0.1", password_file = "' .. dir .. '/none" }',
          "report send --submitter mx.example.net", "redis%.password_file: cannot read it" },
        { 'redis = { url = "redis://127.0.0.1", ship_window = -1 }',
          "report send --submitter mx.example.net", "redis%.ship_window" },
        { 'redis = { url = "redis://127.0.0.1", pasword_file = "x" }', "lookup a.example",
          "redis%.pasword_file: unknown setting" },
      }) do
        local out, status = cli(case[1], case[2])
        assert.equal(78, status, out)
        assert.truthy(out:find(case[3]), out)
        assert.is_nil(io.open(dir .. "/never"), "a cache directory was made: " .. out)
      end
    end)

    it("config check shows the fleet's settings without the password", function()
      local out, status = cli('redis = { url = "redis://mtasts:s3cret@127.0.0.1:6390/2", ' ..
        'host = "mx1", ship_window = 600 }', "config check")
      assert.equal(0, status, out)
      assert.truthy(out:find("redis.url = redis://mtasts@127.0.0.1:6390/2", 1, true), out)
      assert.truthy(out:find("redis.host = mx1", 1, true), out)
      assert.truthy(out:find("redis.ship_window = 600", 1, true), out)
      assert.is_nil(out:find("s3cret", 1, true), out)
      out, status = cli('redis = { url = "redis://127.0.0.1", host = "a b" }', "config check")
      assert.equal(78, status, out)
      assert.truthy(out:find("redis.host", 1, true), out)
    end)
  end)

  describe("TLSRPT", function()
    -- yesterday (UTC): a day that has ended, for the CLI's report send
    local DAY = os.date("!%Y-%m-%d", os.time() - 86400)
    local MID = tlsrpt.day_start(DAY) + 43200
    local mailbox

    before_each(function()
      flush()
      for i = 1, 3 do util.run("rm -rf " .. dir .. "/rs" .. i) end
      mailbox = dir .. "/mail"
      util.run("rm -rf " .. mailbox .. " && mkdir -p " .. mailbox)
      util.write(dir .. "/sendmail", "#!/bin/sh\ncat > " .. mailbox .. "/$$.$(date +%s%N)\n")
      util.run("chmod +x " .. dir .. "/sendmail")
    end)

    local function store_opts(i)
      return { path = dir .. "/rs" .. i, submitter = "fleet.sender.example",
        redis = { url = url, host = "h" .. i, ship_window = 3600 } }
    end

    -- what host i records: n deliveries to enforce.example (10 ok, 1 failed each) and to
    -- testing.example (i ok)
    local function record(i, n, ship, now)
      return { record = { { domain = "enforce.example", success = 10, failure = 1, times = n },
        { domain = "testing.example", success = i, times = 1 } },
        store = store_opts(i), now = now or MID, ship = ship }
    end

    -- `mtasts report send` as host i: its config file names the fleet and the host
    local function send(i, extra)
      local conf = dir .. "/h" .. i .. ".conf"
      util.write(conf, ('redis = { url = %q, host = "h%d", ship_window = %d }\n'):format(url,
        i, extra and extra.window or 3 * 86400))
      local cmd = util.lua_cmd() .. " bin/mtasts --config " .. conf .. " " .. world.flags:gsub(
        "%-%-db %S+", "--db " .. dir .. "/rs" .. i) .. " --json report send --submitter " ..
        "fleet.sender.example --window 0 --sendmail " .. dir .. "/sendmail"
      local out, status = util.run(cmd .. " 2>" .. dir .. "/send" .. i .. ".err")
      if extra and extra.raw then return out .. util.run("cat " .. dir .. "/send" .. i ..
        ".err"), status end
      local ok, s = pcall(json.decode, out)
      assert(ok and type(s) == "table", "report send printed: " .. out .. "\n" ..
        util.run("cat " .. dir .. "/send" .. i .. ".err"))
      return s, status
    end

    local function reports()
      local got = {}
      for name in util.run("ls " .. mailbox):gmatch("%S+") do
        local f = assert(io.open(mailbox .. "/" .. name, "rb"))
        local msg = f:read("a")
        f:close()
        local r = assert(tlsrpt.parse_report(msg))
        got[#got + 1] = r
      end
      return got
    end

    local function totals(rs)
      local by = {}
      for _, r in ipairs(rs) do
        local dom = r.policies[1].policy["policy-domain"]
        local s = r.policies[1].summary
        local e = by[dom] or { reports = 0, ok = 0, failed = 0 }
        e.reports, e.ok = e.reports + 1, e.ok + s["total-successful-session-count"]
        e.failed = e.failed + s["total-failure-session-count"]
        by[dom] = e
      end
      return by
    end

    it("sends one report per domain a day with the sum of the hosts' sessions", function()
      local res = run_hosts({ record(1, 1, true), record(2, 2, true), record(3, 3, true) })
      for i = 1, 3 do assert.equal(1, res[i].shipped.days) end
      -- each host's send ships the day final; the first elected waits for the others
      local s1 = send(1)
      assert.equal(1, s1.held)
      assert.equal(0, s1.sent)
      local s2 = send(2)
      assert.equal(1, s2.elsewhere)
      local s3 = send(3)
      assert.equal(1, s3.elsewhere)
      s1 = send(1)
      assert.equal(0, s1.held)
      assert.is_true(s1.sent >= 2)
      local by = totals(reports())
      assert.same({ reports = 1, ok = 60, failed = 6 }, by["enforce.example"])
      assert.same({ reports = 1, ok = 6, failed = 0 }, by["testing.example"])
      -- nothing more goes out: the day is done for the fleet
      for i = 1, 3 do
        local s = send(i)
        assert.equal(0, s.sent)
      end
      assert.equal(2, #reports())
      -- what report stats says of the fleet's side of the day
      local out, status = util.run(util.lua_cmd() .. " bin/mtasts --config " .. dir ..
        "/h2.conf --db " .. dir .. "/rs2 report stats 2>&1")
      assert.equal(0, status, out)
      assert.truthy(out:find("fleet: shipped by h1, h2, h3 (final: h1, h2, h3); sender h1; " ..
        "2 report(s) sent; done", 1, true), out)
    end)

    it("loses nothing and counts nothing twice when Redis is killed mid-day", function()
      local res = run_hosts({ record(1, 2, true, MID - 3600), record(2, 1, true, MID - 3600) })
      assert.equal(1, res[1].shipped.days)
      redis:kill("KILL")
      -- Redis is down: recording goes on, shipping fails and says so
      res = run_hosts({ record(1, 1, true), record(2, 2, true) })
      assert.is_false(res[1].shipped)
      assert.is_string(res[1].error)
      redis:restart()   -- empty: it kept nothing on disk
      -- shipping again (twice: a retry) sends each host's totals, not increments
      run_hosts({ record(1, 0, true), record(2, 0, true) })
      run_hosts({ record(1, 0, true), record(2, 0, true) })
      send(1)
      send(2)
      local s = send(1)
      assert.is_true(s.sent >= 2)
      local by = totals(reports())
      -- host 1: 3 deliveries, host 2: 3; 10 + 1 each
      assert.same({ reports = 1, ok = 60, failed = 6 }, by["enforce.example"])
      -- testing.example: one delivery per record() call with success = i: 4 calls each
      assert.same({ reports = 1, ok = 4 * 1 + 4 * 2, failed = 0 }, by["testing.example"])
    end)

    it("sends nothing and says why when Redis is down; ignores days Redis should not hold",
    function()
      run_hosts({ record(1, 1, true) })
      -- what no host writes: an impossible date and junk, which the next send drops
      assert(poke("SADD", "mtasts:days", "2026-02-30", "junk\0"))
      local port = redis.port
      redis.port = proc.free_port()   -- send() builds its URL from `url`: point it elsewhere
      local saved = url
      url = "redis://127.0.0.1:" .. redis.port
      local s, status = send(1, { raw = true })
      url, redis.port = saved, port
      assert.equal(3, status)
      assert.truthy(s:find("redis: shipping results: redis 127.0.0.1:", 1, true), s)
      assert.equal(0, #reports())
      -- with Redis back, the send goes through and the junk is gone
      send(1, { window = 0 })
      assert.equal(2, #reports())
      assert.same({ DAY, n = 1 }, redis:cmd("SMEMBERS", "mtasts:days"))
    end)

    it("waits for the shipping window, then sends without the hosts that did not ship",
    function()
      run_hosts({ record(1, 1, true), record(2, 1, true) })
      -- host 2 never ships the day final; host 1 is elected and holds the reports
      local s = send(1)
      assert.equal(1, s.held)
      -- a shipping window of 0: over at once; the reports go out with what arrived
      s = send(1, { window = 0 })
      assert.is_true(s.sent >= 2)
      local by = totals(reports())
      assert.same({ reports = 1, ok = 20, failed = 2 }, by["enforce.example"])
      assert.truthy(util.run("cat " .. dir .. "/send1.err"):find("without host%(s%) h2"))
    end)
  end)
end)
