-- The build itself: what the shared object exports, the dependency script (without side
-- effects), the rockspec, `make install`/`uninstall`, the units, the programs' --version and
-- --help, the man pages and `make help`.
local util = require("support.util")

-- Runs a command with nothing from this shell's environment but PATH, from /, so that only
-- the paths a program finds by itself count.
local function bare(cmd)
  return util.run("cd / && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin " .. cmd)
end

describe("build", function()
  it("exports exactly one symbol, luaopen_mtasts_core", function()
    local out, status = util.run("nm -D --defined-only build/mtasts/core.so")
    assert.equal(0, status, out)
    local names = {}
    for name in out:gmatch("%x+ [TDB] (%S+)") do names[#names + 1] = name end
    assert.same({ "luaopen_mtasts_core" }, names)
  end)
end)

describe("scripts/deps", function()
  -- A PATH whose dpkg-query says that nothing is installed, and whose apt-get and sudo only
  -- leave a mark: what the script would do on a new machine, with no side effect.
  local dir, cleanup
  before_each(function()
    dir, cleanup = util.tmpdir()
    util.write(dir .. "/dpkg-query", "#!/bin/sh\nexit 1\n")
    util.write(dir .. "/apt-get", "#!/bin/sh\necho \"apt-get $*\" >> " .. dir .. "/called\n")
    util.write(dir .. "/debconf-set-selections", "#!/bin/sh\ncat >/dev/null\n")
    util.run("chmod 755 " .. dir .. "/*")
  end)
  after_each(function() cleanup() end)

  it("--check finds nothing missing for the groups make test installed", function()
    local out, status = util.run("scripts/deps --check build test rock")
    assert.equal(0, status, out)
    assert.equal("", out)
  end)

  it("--check names what is missing, exits 1, and runs no apt-get", function()
    local out, status = util.run("PATH=" .. dir .. ":$PATH scripts/deps --check build")
    assert.equal(1, status, out)
    assert.matches("^scripts/deps: missing build%-essential pkg%-config lua5%.4 ", out)
    assert.matches("libdb5.3-dev", out, 1, true)
    assert.is_nil(io.open(dir .. "/called"))
  end)

  it("installs only the missing packages, after apt-get update", function()
    local out, status = util.run("PATH=" .. dir .. ":$PATH MTASTS_POLICY_RC_D=" .. dir ..
      "/policy-rc.d scripts/deps fuzz")
    assert.equal(0, status, out)
    local f = assert(io.open(dir .. "/called"))
    local calls = f:read("a")
    f:close()
    local update = calls:find("apt-get update", 1, true)
    local install = calls:find("apt-get install", 1, true)
    assert.truthy(update and install and update < install, calls)
    assert.matches("clang libclang-rt-14-dev\n", calls, 1, true)
    -- the policy-rc.d that keeps services from starting is gone again
    assert.is_nil(io.open(dir .. "/policy-rc.d"))
  end)

  it("rejects an unknown group", function()
    local out, status = util.run("scripts/deps --check nonsense")
    assert.equal(2, status)
    assert.truthy(out:find("unknown group 'nonsense'", 1, true))
  end)
end)

describe("luarocks make", function()
  it("installs a tree whose programs and modules work with only that tree's paths", function()
    local tree, cleanup = util.tmpdir()
    finally(cleanup)
    local out, status = util.run("luarocks --lua-version 5.4 make --tree " .. tree)
    assert.equal(0, status, out)
    out, status = bare(tree .. "/bin/mtasts --version")
    assert.equal(0, status, out)
    assert.matches("^mtasts %d+%.%d+%.%d+ %(Lua 5%.4; libcurl ", out)
    out, status = bare(tree .. "/bin/mtasts-opensmtpd-filter --version")
    assert.equal(0, status, out)
    assert.matches("^mtasts%-opensmtpd%-filter %d+%.%d+%.%d+\n$", out)
    local check = [[lua5.4 -e 'package.path = "]] .. tree .. [[/share/lua/5.4/?.lua;]] .. tree ..
      [[/share/lua/5.4/?/init.lua"; package.cpath = "]] .. tree .. [[/lib/lua/5.4/?.so";
      local m = require("mtasts"); io.write((m.domain("B\195\188cher.example")))']]
    out, status = bare(check)
    assert.equal(0, status, out)
    assert.equal("xn--bcher-kva.example", out)
  end)
end)

describe("make install", function()
  local dir, cleanup
  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function() cleanup() end)

  local function install(vars)
    local out, status = util.run("make -s install " .. vars)
    assert.equal(0, status, out)
  end

  local function files(root)
    local list = {}
    for f in util.run("cd " .. root .. " && find . -type f | sort"):gmatch("[^\n]+") do
      list[#list + 1] = f:sub(2)
    end
    return list
  end

  it("installs under PREFIX programs that find their own modules", function()
    install("PREFIX=" .. dir .. "/p")
    local out, status = bare(dir .. "/p/bin/mtasts --version")
    assert.equal(0, status, out)
    assert.matches("^mtasts %d", out)
    out, status = bare(dir .. "/p/bin/mtasts-opensmtpd-filter --help")
    assert.equal(0, status, out)
    assert.matches("^Usage: mtasts%-opensmtpd%-filter", out)
  end)

  it("puts the units where they find the programs (DESTDIR, PREFIX=/usr)", function()
    local s = dir .. "/stage"
    install("DESTDIR=" .. s .. " PREFIX=/usr")
    local got = {}
    for _, name in ipairs(files(s)) do got[name] = true end
    for _, want in ipairs({ "/usr/bin/mtasts", "/usr/bin/mtasts-opensmtpd-filter",
      "/usr/lib/lua/5.4/mtasts/core.so", "/usr/share/lua/5.4/mtasts/init.lua",
      "/usr/share/man/man1/mtasts.1", "/usr/share/man/man1/mtasts-opensmtpd-filter.1",
      "/usr/lib/systemd/system/mtasts-postfix.service",
      "/usr/lib/systemd/system/mtasts-refresh.service",
      "/usr/lib/systemd/system/mtasts-refresh.timer",
      "/usr/lib/systemd/system/mtasts-report.service",
      "/usr/lib/systemd/system/mtasts-report.timer",
      "/usr/lib/systemd/system/mtasts-tlsrpt.service", "/usr/lib/sysctl.d/60-mtasts.conf",
      "/usr/lib/sysusers.d/mtasts.conf", "/usr/lib/tmpfiles.d/mtasts.conf",
      "/usr/share/doc/mtasts/README.md", "/usr/share/doc/mtasts/architecture.md" }) do
      assert.truthy(got[want], want)
    end
    local f = assert(io.open(s .. "/usr/bin/mtasts"))
    assert.matches('local INSTALL_PATHS = { "/usr/share/lua/5.4", "/usr/lib/lua/5.4" }',
      f:read("a"), 1, true)
    f:close()
    for _, unit in ipairs({ "mtasts-postfix", "mtasts-refresh", "mtasts-report",
      "mtasts-tlsrpt" }) do
      f = assert(io.open(s .. "/usr/lib/systemd/system/" .. unit .. ".service"))
      local text = f:read("a")
      f:close()
      local exec = assert(text:match("\nExecStart=(%S+)"), unit)
      assert.equal("/usr/bin/mtasts", exec)
      assert.is_nil(text:find("@", 1, true), unit .. ": a placeholder is left")
    end
    local out, status = util.run("make -s uninstall DESTDIR=" .. s .. " PREFIX=/usr")
    assert.equal(0, status, out)
    assert.same({}, files(s))
  end)

  it("writes units that systemd accepts", function()
    install("PREFIX=" .. dir .. "/p")
    local out, status = util.run("systemd-analyze verify --man=no " .. dir ..
      "/p/lib/systemd/system/mtasts-*")
    assert.equal(0, status, out)
    assert.equal("", out)
  end)
end)

describe("documentation of the programs", function()
  -- every option of every command, from argparse's own help
  local function options_of(words)
    local out = util.run("lua5.4 bin/mtasts " .. words .. " --help")
    local opts = {}
    local list = out:match("\nOptions:\n(.*)") or ""
    for opt in list:gmatch("%-%-[%w-]+") do opts[opt] = true end
    return opts, out
  end

  local function man(page)
    local f = assert(io.open("man/" .. page))
    local text = f:read("a"):gsub("\\%-", "-")
    f:close()
    return text
  end

  it("mtasts(1) names every option of every command", function()
    local text = man("mtasts.1")
    local commands = { "", "lookup", "check", "cache", "cache list", "cache show",
      "cache delete", "cache rebuild", "cache verify", "refresh", "report", "report build",
      "report send", "report show", "report stats", "serve", "serve postfix", "serve tlsrpt",
      "postfix-log" }
    local missing = {}
    for _, c in ipairs(commands) do
      local opts, out = options_of(c)
      assert.truthy(next(opts), "no options in the help of '" .. c .. "': " .. out)
      for opt in pairs(opts) do
        if not text:find(opt, 1, true) then missing[#missing + 1] = c .. " " .. opt end
      end
    end
    assert.same({}, missing)
  end)

  it("mtasts-opensmtpd-filter(1) names every option of the filter", function()
    local text = man("mtasts-opensmtpd-filter.1")
    local out = util.run("lua5.4 bin/mtasts-opensmtpd-filter --help")
    for opt in out:gmatch("%-%-[%w-]+") do assert.truthy(text:find(opt, 1, true), opt) end
  end)

  it("the man pages render without a warning", function()
    for _, page in ipairs({ "mtasts.1", "mtasts-opensmtpd-filter.1" }) do
      local out, status = util.run("LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l man/" .. page ..
        " 2>&1 >/dev/null")
      assert.equal(0, status, out)
      assert.equal("", out, page)
    end
  end)

  it("the filter rejects an unknown option with status 64", function()
    local out, status = util.run("lua5.4 bin/mtasts-opensmtpd-filter --no-such-option")
    assert.equal(64, status)
    assert.matches("unknown option --no-such-option", out, 1, true)
  end)

  it("make help lists every target", function()
    local out = util.run("make -s help")
    local f = assert(io.open("Makefile"))
    local phony = assert(f:read("a"):match("\n%.PHONY:(.-[^\\])\n"))
    f:close()
    local missing = {}
    for t in phony:gmatch("[%w-]+") do
      -- check-lua-deps is the rockspec's, run by `make` itself
      if t ~= "check-lua-deps" and not out:find("make " .. t:gsub("%-", "%%-") .. "%f[%s]")
        and not (t == "all" and out:find("make all", 1, true)) then
        missing[#missing + 1] = t
      end
    end
    assert.same({}, missing)
  end)
end)
