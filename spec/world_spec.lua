-- `make demo` and `make world` (examples/demo.lua, examples/world.lua): the demo prints the
-- exact commands it runs and no terminal codes into a pipe; the world can be used by hand
-- through the flags or the environment file it prints, and stops on SIGINT, cleaning up.
local util = require("support.util")
local proc = require("support.proc")

describe("make demo #fixture", function()
  it("runs end to end, printing each command with its flags and no ANSI codes", function()
    local out, status = util.run(util.lua_cmd() .. " examples/demo.lua | cat")
    assert.equal(0, status, out)
    assert.matches("\n%$ bin/mtasts %-%-db %S+ %-%-nameserver 127%.0%.0%.1@%d+ " ..
      "%-%-trust%-anchor none %-%-allow%-private%-addresses %-%-cafile %S+ " ..
      "%-%-connect%-to :443:127%.0%.0%.1:%d+ " ..
      "%-%-timeout 5 check enforce%.example\n", out)
    assert.is_nil(out:find("\27", 1, true), "an escape sequence went into a pipe")
    assert.matches("deliver:  mx1.enforce.example, TLS required", out, 1, true)
    assert.matches("refuse:   mx2.enforce.example (not in the policy)", out, 1, true)
    assert.matches("sts-webpki-invalid, certificate-expired", out, 1, true)
    assert.matches("The fixture servers are stopped.", out, 1, true)
  end)
end)

describe("make world #fixture", function()
  local dir, cleanup
  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function()
    proc.stop_all()
    cleanup()
  end)

  it("serves the demo's domains until SIGINT, then stops and removes its files", function()
    local env = dir .. "/world.env"
    local log = dir .. "/world.log"
    local pid = proc.spawn("world", util.lua_cmd() .. " examples/world.lua " .. env, log)
    assert.is_true(proc.poll(function()
      return io.open(env) ~= nil or not proc.alive(pid)
    end, util.within(30)), "no environment file")
    assert.is_true(proc.alive(pid), util.run("cat " .. log))
    local f = assert(io.open(log))
    local printed = f:read("a")
    f:close()
    assert.matches("bin/mtasts --db ", printed, 1, true)
    assert.matches(". " .. env, printed, 1, true)
    assert.is_nil(printed:find("\27", 1, true))

    local out, status = util.run("cd / && . " .. env .. " && mtasts lookup enforce.example")
    assert.equal(0, status, out)
    assert.matches("enforce.example: MTA-STS policy (fetched now)", out, 1, true)
    out, status = util.run(". " .. env .. " && mtasts lookup plain.example")
    assert.equal(1, status, out)
    -- the flags printed on their own line work the same
    local flags = assert(printed:match("bin/mtasts (%-%-db .-) lookup enforce%.example"))
    out, status = util.run("bin/mtasts " .. flags .. " check expired.example")
    assert.equal(1, status, out)
    assert.matches("certificate-expired", out, 1, true)

    local port = assert(tonumber(printed:match("HTTPS  127%.0%.0%.1:(%d+)")))
    os.execute("kill -INT " .. pid)
    assert.is_true(proc.poll(function() return not proc.alive(pid) end, util.within(20)),
      "world did not stop on SIGINT")
    assert.is_nil(io.open(env), "the environment file is left behind")
    assert.is_false(proc.tcp_open(port), "nginx still listens")
    f = assert(io.open(log))
    assert.matches("stopped\n$", f:read("a"))
    f:close()
  end)
end)
