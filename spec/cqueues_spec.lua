-- The client inside a real event loop (lua-cqueues): get never blocks the loop.
local cqueues = require("cqueues")
local mtasts = require("mtasts")
local core = require("mtasts.core")
local util = require("support.util")
local proc = require("support.proc")

local function wait(fd, events, timeout)   -- the host's wait: yield to the cqueues loop
  cqueues.poll({ pollfd = fd, events = events }, timeout)
end

describe("mtasts in a cqueues loop #fixture", function()
  local dir, dns, web, dir_conf
  setup(function()
    dir = util.tmpdir()
    local ca = require("support.ca").new(dir .. "/ca")
    local records, names = { '_mta-sts.stall IN TXT "v=STSv1; id=1;"',
      "mta-sts.stall IN A 127.0.0.1" }, {}
    for i = 1, 33 do
      records[#records + 1] = ('_mta-sts.d%d IN TXT "v=STSv1; id=%d;"'):format(i, i)
      records[#records + 1] = ("mta-sts.d%d IN A 127.0.0.1"):format(i)
      if i > 1 then names[#names + 1] = ("mta-sts.d%d.example"):format(i) end
    end
    dns = require("support.dns").start({ ["example."] = records })
    web = require("support.https").start(ca, { { host = "mta-sts.d1.example", names = names,
      server_name = [[~^mta-sts\.(?<d>[^.]+)\.example$]],
      nginx = [[default_type text/plain; ]] ..
        [[return 200 "version: STSv1\nmode: enforce\nmx: mx.$d.example\nmax_age: 86400\n";]] } })
    local port = proc.free_port()
    proc.spawn("stall", "build/support/stall " .. port .. " 600", dir .. "/stall.log")
    assert(proc.poll(function() return proc.tcp_open(port) end, 10))
    dir_conf = { cafile = ca.cafile, nameserver = dns.nameserver,
      connect_to = { "mta-sts.stall.example:443:127.0.0.1:" .. port,
        ":443:127.0.0.1:" .. web.port } }
  end)
  teardown(function()
    if web then web.stop() end
    if dns then dns.stop() end
    proc.stop_all()
    util.run("rm -rf '" .. dir .. "'")
  end)

  it("runs 100 gets at once; the stalled one delays no other and the loop ticks on", function()
    local sts = assert(mtasts.open{ path = dir .. "/cache", nameserver = dir_conf.nameserver,
      trust_anchor = false, cafile = dir_conf.cafile, connect_to = dir_conf.connect_to,
      timeouts = { dns = 3, fetch = 2 }, wait = wait, allow_private_addresses = true })
    local loop = cqueues.new()
    local t0 = core.monotonic()
    local finished, ticks, running = {}, {}, true
    loop:wrap(function()   -- the host's other work: it must keep its pace
      while running do
        ticks[#ticks + 1] = core.monotonic()
        cqueues.sleep(0.02)
      end
    end)
    for i = 1, 100 do
      local domain = i == 1 and "stall.example" or ("d%d.example"):format((i - 2) % 33 + 1)
      loop:wrap(function()
        local policy, result = sts:get(domain)
        finished[i] = { at = core.monotonic() - t0, policy = policy, result = result,
          domain = domain }
      end)
    end
    loop:wrap(function()
      proc.poll(function()   -- no assert: the checks below name a get that never finished
        local n = 0
        for _ in pairs(finished) do n = n + 1 end
        return n == 100
      end, util.within(15), cqueues.sleep)
      running = false
    end)
    assert(loop:loop(20))
    sts:close()
    local gap = 0
    for i = 2, #ticks do gap = math.max(gap, ticks[i] - ticks[i - 1]) end
    local slowest = 0
    for i = 2, 100 do slowest = math.max(slowest, finished[i] and finished[i].at or 99) end
    print(("\n    slowest of the 99: %.2f s, the stalled one: %.2f s, longest loop gap %.3f s")
      :format(slowest, finished[1] and finished[1].at or -1, gap))
    assert.is_true(gap < util.within(0.25), ("the loop stood still for %.3f s"):format(gap))
    for i = 2, 100 do
      local f = finished[i]
      assert.is_table(f, "get " .. i .. " never finished")
      assert.equal("enforce", f.policy and f.policy.mode, f.domain)
      assert.is_true(f.at < util.within(1.5), ("%s took %.2f s"):format(f.domain, f.at))
    end
    assert.is_nil(finished[1].policy)
    assert.equal("timeout", finished[1].result.failures[1].failure_reason_code)
    assert.is_true(finished[1].at >= 1.9)
  end)
end)
