-- mtasts serve postfix run unattended: Prometheus metrics (their own listener, and scrapes on
-- the socketmap port), the policy script and SIGHUP, and refresh inside the server under a
-- lease shared by every server on the cache.
local socket = require("cqueues.socket")
local postfix = require("mtasts.postfix")
local util = require("support.util")
local proc = require("support.proc")

-- A client that answers from a table, with the metrics registry a real client has.
local function fake_client(policies)
  local c = { calls = 0, registry = require("mtasts.metrics").registry() }
  function c.get(_, domain)
    c.calls = c.calls + 1
    local p = policies[domain]
    if p then return p, { policy = { type = "sts", domain = domain } }, true end
    return nil, { policy = { type = "no-policy-found", domain = domain } }, true
  end
  function c.metrics() return c.registry end
  function c.close() return true end
  return c
end

local function port_of(addr) return tonumber(addr:match(":(%d+)$")) end

-- One socketmap request on a new connection.
local function ask(port, request)
  local con = assert(socket.connect("127.0.0.1", port))
  con:setmode("b", "b")
  con:write(postfix.netstring(request))
  con:flush()
  local buf = ""
  while true do
    local v, rest = postfix.netstring_decode(buf, 100000)
    if v then con:close() return v, rest end
    local chunk = con:xread(-4096, "b", 10)
    if not chunk then con:close() return nil end
    buf = buf .. chunk
  end
end

-- One HTTP GET; the status line and the body.
local function get(port, path)
  local con = assert(socket.connect("127.0.0.1", port))
  con:setmode("b", "b")
  con:write("GET " .. path .. " HTTP/1.1\r\nHost: localhost\r\n\r\n")
  con:flush()
  local all = con:read("*a") or ""
  con:close()
  return all:match("^([^\r]*)"), all:match("\r\n\r\n(.*)$")
end

describe("mtasts.postfix metrics and policy script", function()
  local dir, cleanup
  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function() cleanup() end)

  local ENFORCE = { mode = "enforce", mx = { "mx.enforce.example" } }

  local function with_server(opts, fn)
    local client = fake_client({ ["enforce.example"] = ENFORCE })
    -- the registry of a real client: its DNS, fetch and refresh families are exposed too
    local real = assert(require("mtasts").open{ path = dir .. "/client",
      resolver = { txt = function() end }, fetcher = { fetch = function() end } })
    client.registry = real:metrics()
    opts.client = client
    opts.listen = { "inet:127.0.0.1:0" }
    opts.refresh = false
    local srv = assert(postfix.new(opts))
    local failure
    srv.loop:wrap(function()
      local ok, err = pcall(fn, srv, client)
      if not ok then failure = err end
      srv:stop()
    end)
    srv:run{ signals = false }
    srv:close()
    real:close()
    assert(not failure, failure)
  end

  it("serves metrics on their own listener and on the socketmap port; lookups count",
    function()
    with_server({ metrics = "inet:127.0.0.1:0" }, function(srv)
      local sm, mp = port_of(srv:addresses()[1]), port_of(srv:addresses("metrics")[1])
      assert.equal("OK secure match=mx.enforce.example servername=hostname",
        ask(sm, "postfix enforce.example"))
      ask(sm, "postfix enforce.example")       -- the memo answers it
      ask(sm, "postfix none.example")
      ask(sm, "postfix [192.0.2.1]")
      local status, body = get(mp, "/metrics")
      assert.equal("HTTP/1.1 200 OK", status)
      assert.matches('mtasts_lookups_total{answer="secure",source="fetched"} 1\n', body, 1, true)
      assert.matches('mtasts_lookups_total{answer="secure",source="memo"} 1\n', body, 1, true)
      assert.matches('mtasts_lookups_total{answer="notfound",source="fetched"} 1\n', body, 1,
        true)
      assert.matches('mtasts_lookups_total{answer="notfound",source="none"} 1\n', body, 1, true)
      assert.matches("\nmtasts_build_info{version=", body, 1, true)
      local status2, body2 = get(sm, "/metrics")
      assert.equal("HTTP/1.1 200 OK", status2)
      assert.matches("mtasts_metrics_scrapes_total 2\n", body2, 1, true)
      assert.equal("HTTP/1.1 404 Not Found", (get(mp, "/other")))
      util.write(dir .. "/m.txt", body2)
      local out, st = util.run("promtool check metrics < " .. dir .. "/m.txt 2>&1")
      assert.equal(0, st, out)
      -- every family the shipped Grafana dashboard queries is exposed
      local f = assert(io.open("examples/grafana-dashboard.json"))
      local dash = require("cjson").decode(f:read("a"))
      f:close()
      local asked = 0
      for _, p in ipairs(dash.panels) do
        for _, t in ipairs(p.targets) do
          for name in t.expr:gmatch("[%a_][%w_]*") do
            if name:match("^mtasts_") or name:match("^process_") then
              local base = name:gsub("_bucket$", "")
              asked = asked + 1
              assert.matches("# TYPE " .. base .. " ", body2, 1, true)
            end
          end
        end
      end
      assert.is_true(asked >= 10)
      -- the socketmap still answers on that port after a scrape
      assert.equal("OK secure match=mx.enforce.example servername=hostname",
        ask(sm, "postfix enforce.example"))
    end)
  end)

  it("the policy script changes answers; a failing one gives the default; reload", function()
    local p = dir .. "/policy.lua"
    util.write(p, [[
      return {
        answer = function(ctx)
          if ctx.domain == "partner.example" then return "encrypt" end
          if ctx.domain == "bad.example" then return "tls please" end
          if ctx.domain == "loop.example" then while true do end end
          if ctx.domain == "enforce.example" and ctx.source then return nil end
        end,
      }
    ]])
    local lines = {}
    with_server({ policy = p, log = function(level, m) lines[#lines + 1] = level .. " " .. m end },
      function(srv)
      local sm = port_of(srv:addresses()[1])
      assert.equal("OK encrypt", ask(sm, "postfix partner.example"))
      assert.equal("NOTFOUND ", ask(sm, "postfix bad.example"))
      assert.equal("NOTFOUND ", ask(sm, "postfix loop.example"))
      assert.equal("OK secure match=mx.enforce.example servername=hostname",
        ask(sm, "postfix enforce.example"))
      util.write(p, 'return { answer = function(ctx) return "may" end }')
      srv:reload()
      assert.equal("OK may", ask(sm, "postfix partner.example"), "the memo was dropped")
      util.write(p, "return {")
      srv:reload()
      assert.equal("OK may", ask(sm, "postfix other.example"), "the previous script stays")
    end)
    local log = table.concat(lines, "\n")
    assert.matches("answer(bad.example) returned tls please: not a Postfix security level", log,
      1, true)
    assert.matches("answer(loop.example) took longer than", log, 1, true)
    assert.matches("reload failed, the previous one stays", log, 1, true)
  end)

  it("DANE first: dane-only, dane, TEMP for a bogus MX set, never secure over DANE",
    function()
    local states = {
      ["enforce.example"] = { mx_secure = true, hosts = {
        ["mx.enforce.example"] = { status = "secure", usable = 1 } } },
      ["some.example"] = { mx_secure = true, hosts = {
        ["a.some.example"] = { status = "secure", usable = 1 },
        ["b.some.example"] = { status = "insecure", usable = 0 } } },
      ["bogus.example"] = { mx_secure = false, hosts = {}, code = "bogus" },
      ["plain.example"] = { mx_secure = false, hosts = {} },
    }
    with_server({ zones = { ["*"] = {}, nodane = { dane = false } } }, function(srv, client)
      client.dane = function(_, d) return states[d] or { mx_secure = false, hosts = {} } end
      local sm = port_of(srv:addresses()[1])
      assert.equal("OK dane-only", ask(sm, "postfix enforce.example"))
      assert.equal("OK dane", ask(sm, "postfix some.example"))
      assert.matches("^TEMP dane: the MX records of bogus.example",
        ask(sm, "postfix bogus.example"))
      assert.equal("NOTFOUND ", ask(sm, "postfix plain.example"))
      assert.equal("OK secure match=mx.enforce.example servername=hostname",
        ask(sm, "nodane enforce.example"), "a zone with dane = false: MTA-STS only")
    end)
  end)

  it("a metrics address or refresh interval that cannot work is a config failure", function()
    local srv, msg, code, key = postfix.new{ client = fake_client({}), listen = {},
      metrics = "tcp:127.0.0.1:1" }
    assert.is_nil(srv)
    assert.equal("config", code)
    assert.equal("metrics", key)
    assert.matches("'tcp' is not a known scheme", msg, 1, true)
    srv, msg, code, key = postfix.new{ client = fake_client({}), listen = {},
      refresh = { interval = 0 } }
    assert.is_nil(srv)
    assert.equal("config", code)
    assert.equal("refresh.interval", key, msg)
  end)

  it("a policy script that does not load stops the server from starting", function()
    util.write(dir .. "/bad.lua", "return { anwser = function() end }")
    local srv, msg, code, key = postfix.new{ client = fake_client({}), listen = {},
      policy = dir .. "/bad.lua" }
    assert.is_nil(srv)
    assert.equal("config", code)
    assert.equal("policy", key)
    assert.matches("unknown hook 'anwser'", msg, 1, true)
  end)
end)

describe("refresh inside mtasts serve postfix #fixture", function()
  local world = {}

  setup(function()
    local dir = util.tmpdir()
    world.dir = dir
    local ca = require("support.ca").new(dir .. "/ca")
    world.ca = ca
    world.dns = require("support.dns").start({ ["example."] = {
      '_mta-sts.a IN TXT "v=STSv1; id=2;"', "mta-sts.a IN A 127.0.0.1",
      '_mta-sts.b IN TXT "v=STSv1; id=2;"', "mta-sts.b IN A 127.0.0.1",
    } })
    local function site(d)
      return { host = "mta-sts." .. d .. ".example", nginx = "access_log " .. dir ..
        "/fetch-" .. d .. ".log; default_type text/plain; return 200 " ..
        "'version: STSv1\\nmode: enforce\\nmx: mx." .. d .. ".example\\nmax_age: 86400\\n';" }
    end
    world.web = require("support.https").start(ca, { site("a"), site("b") })
  end)

  teardown(function()
    if world.web then world.web.stop() end
    if world.dns then world.dns.stop() end
    proc.stop_all()
    if world.dir then util.run("rm -rf '" .. world.dir .. "'") end
  end)

  local function lines_of(path)
    local f = io.open(path)
    if not f then return 0 end
    local n = 0
    for _ in f:lines() do n = n + 1 end
    f:close()
    return n
  end

  it("three servers on one cache fetch each due policy once", function()
    local dir = world.dir
    -- rows last updated 13 hours ago, with an old record id: due, and needing a fetch
    local core = require("mtasts.core")
    local cache = assert(core.cache_open(dir .. "/cache"))
    for _, d in ipairs({ "a", "b" }) do
      assert(cache:upsert(d .. ".example", "1", "version: STSv1\nmode: enforce\nmx: old." ..
        d .. ".example\nmax_age: 86400\n", os.time() - 13 * 3600))
    end
    cache:close()
    local pids = {}
    for i = 1, 3 do
      local cmd = util.lua_cmd() .. " bin/mtasts --db " .. dir .. "/cache --nameserver " ..
        world.dns.nameserver .. " --trust-anchor none --allow-private-addresses --cafile " ..
        world.ca.cafile .. " --connect-to :443:127.0.0.1:" .. world.web.port ..
        " --timeout 5 serve postfix --listen inet:127.0.0.1:0 --refresh-interval 2 -v"
      pids[i] = proc.spawn("mtasts-serve-" .. i, cmd, dir .. "/server" .. i .. ".out")
    end
    -- each server's first pass starts within 2 s; wait until both rows are refreshed
    local function refreshed()
      local c = assert(core.cache_open(dir .. "/cache"))
      local n = 0
      for _, r in ipairs(c:list()) do if r.record_id == "2" then n = n + 1 end end
      c:close()
      return n == 2
    end
    assert(proc.poll(refreshed, 30), util.run("cat " .. dir .. "/server*.out"))
    -- and until every server has finished a pass (their info lines)
    assert(proc.poll(function()
      for i = 1, 3 do
        if not util.run("cat " .. dir .. "/server" .. i .. ".out"):find("refresh: %d+ due") then
          return false
        end
      end
      return true
    end, 30), util.run("cat " .. dir .. "/server*.out"))
    -- their metrics say the same: two domains updated in all, the rest leased or kept
    local updated, fetched = 0, 0
    for i = 1, 3 do
      local port = tonumber(util.run("cat " .. dir .. "/server" .. i .. ".out")
        :match("inet:127%.0%.0%.1:(%d+)"))
      local body = util.run("curl -s http://127.0.0.1:" .. port .. "/metrics")
      updated = updated + tonumber(body:match(
        'mtasts_refresh_domains_total{outcome="updated"} (%d+)'))
      fetched = fetched + tonumber(body:match('mtasts_policy_fetches_total{result="ok"} (%d+)'))
      assert.matches('mtasts_cache_rows{state="enforce"} 2', body, 1, true)
    end
    assert.equal(2, updated)
    assert.equal(2, fetched)
    for _, pid in ipairs(pids) do proc.stop(pid) end
    assert.equal(1, lines_of(dir .. "/fetch-a.log"), "a.example fetched once")
    assert.equal(1, lines_of(dir .. "/fetch-b.log"), "b.example fetched once")
  end)
end)
