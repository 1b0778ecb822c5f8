-- The build itself: what the shared object exports, the dependency script, the rockspec.
local util = require("support.util")

describe("build", function()
  it("exports exactly one symbol, luaopen_mtasts_core", function()
    local out, status = util.run("nm -D --defined-only build/mtasts/core.so")
    assert.equal(0, status, out)
    local names = {}
    for name in out:gmatch("%x+ [TDB] (%S+)") do names[#names + 1] = name end
    assert.same({ "luaopen_mtasts_core" }, names)
  end)

  it("scripts/deps installs nothing and prints nothing when every package is present", function()
    local out, status = util.run("scripts/deps")
    assert.equal(0, status, out)
    assert.equal("", out)
  end)

  it("scripts/deps rejects an unknown group", function()
    local out, status = util.run("scripts/deps nonsense")
    assert.equal(2, status)
    assert.truthy(out:find("unknown group 'nonsense'", 1, true))
  end)

  it("installs a working copy with luarocks make", function()
    local tree, cleanup = util.tmpdir()
    finally(cleanup)
    local out, status = util.run("luarocks --lua-version 5.4 make --tree '" .. tree ..
      "' mtasts-scm-1.rockspec")
    assert.equal(0, status, out)
    local check = [[lua5.4 -e 'package.path = "]] .. tree .. [[/share/lua/5.4/?.lua;]] .. tree ..
      [[/share/lua/5.4/?/init.lua"; package.cpath = "]] .. tree .. [[/lib/lua/5.4/?.so";
      local m = require("mtasts"); io.write((m.domain("B\195\188cher.example")))']]
    out, status = util.run("cd / && " .. check)
    assert.equal(0, status, out)
    assert.equal("xn--bcher-kva.example", out)
  end)
end)
