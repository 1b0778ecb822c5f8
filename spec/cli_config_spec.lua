-- bin/mtasts with a configuration file (docs/cli.md, "The configuration file"): the file
-- sets what flags do not, flags win, every mistake is exit 78 naming the file's setting, and
-- `config check` prints the effective settings without making anything.
local cjson = require("cjson")
local util = require("support.util")
local proc = require("support.proc")

local world = {}

setup(function()
  local dir = util.tmpdir()
  world.dir = dir
  local ca = require("support.ca").new(dir .. "/ca")
  world.ca = ca
  world.dns = require("support.dns").start({ ["example."] = {
    '_mta-sts.enforce IN TXT "v=STSv1; id=1;"', "mta-sts.enforce IN A 127.0.0.1",
  } })
  world.web = require("support.https").start(ca, {
    { host = "mta-sts.enforce.example",
      body = "version: STSv1\nmode: enforce\nmx: mx1.enforce.example\nmax_age: 86400\n" },
  })
end)

teardown(function()
  if world.web then world.web.stop() end
  if world.dns then world.dns.stop() end
  proc.stop_all()
  if world.dir then util.run("rm -rf '" .. world.dir .. "'") end
end)

local function conf(text)
  local p = world.dir .. "/mtasts.conf"
  util.write(p, text)
  return p
end

local function mtasts(args)
  local out, status = util.run(util.lua_cmd() .. " bin/mtasts " .. args .. " 2>" ..
    world.dir .. "/stderr")
  local f = io.open(world.dir .. "/stderr")
  local err = f:read("a")
  f:close()
  return out, status, err
end

local function world_conf(extra, db)
  return conf(([[
db = %q
nameserver = %q
trust_anchor = false
cafile = %q
connect_to = ":443:127.0.0.1:%d"
allow_private_addresses = true
timeout = 3
]]):format(db or world.dir .. "/cache", world.dns.nameserver, world.ca.cafile, world.web.port) ..
    (extra or ""))
end

describe("bin/mtasts --config #fixture", function()
  it("takes every global setting from the file", function()
    local p = world_conf()
    local out, status, err = mtasts("--config " .. p .. " lookup enforce.example")
    assert.equal(0, status, out .. err)
    assert.matches("enforce.example: MTA-STS policy (fetched now)", out, 1, true)
  end)

  it("a flag wins over the file", function()
    local p = world_conf()
    local _, status, err = mtasts("--config " .. p .. " --timeout 0 lookup enforce.example")
    assert.equal(78, status)
    assert.equal("mtasts: --timeout: 0 is not a number of seconds above 0 and at most 86400\n",
      err)
  end)

  it("a value from the file that cannot work names the file's setting; nothing is made",
    function()
    local p = conf(('db = %q\ntimeout = 0\n'):format(world.dir .. "/never"))
    local _, status, err = mtasts("--config " .. p .. " lookup enforce.example")
    assert.equal(78, status)
    assert.equal("mtasts: " .. p .. ": timeout: 0 is not a number of seconds above 0 and at " ..
      "most 86400\n", err)
    assert.is_nil(io.open(world.dir .. "/never"))
    p = conf('postfix = { zones = { ["*"] = { failure_level = "sometimes" } } }\n')
    local out
    out, status = mtasts("--json --config " .. p .. " config check")
    assert.equal(78, status)
    local v = cjson.decode(out)
    assert.equal("config", v.code)
    assert.matches(p .. ": postfix.zones: failure_level 'sometimes'", v.error, 1, true)
  end)

  it("a mistake in the file is one line with the file, the line and the setting", function()
    local p = conf("db = '/tmp/x'\npostfx = {}\n")
    local _, status, err = mtasts("--config " .. p .. " cache list")
    assert.equal(78, status)
    assert.equal("mtasts: --config: " .. p .. ":2: postfx: unknown setting\n", err)
    _, status, err = mtasts("--config " .. world.dir .. "/none.conf cache list")
    assert.equal(78, status)
    assert.matches("No such file or directory", err, 1, true)
  end)

  it("config check prints the effective settings and makes nothing", function()
    local p = world_conf('mode = "0660"\npostfix = { listen = "inet:127.0.0.1:0", ' ..
      'zones = { ["*"] = { tlsrpt = true } } }\nreport = { organization = "Example" }\n',
      world.dir .. "/checked")
    local out, status, err = mtasts("--config " .. p .. " --timeout 7 config check")
    assert.equal(0, status, out .. err)
    assert.matches("\ntimeout = 7\n", out, 1, true)
    assert.matches("\nmode = 0660\n", out, 1, true)
    assert.matches("\npostfix.zones[*] = tlsrpt=true\n", out, 1, true)
    assert.matches("\nreport.organization = Example\n", out, 1, true)
    out, status = mtasts("--json --config " .. p .. " config check")
    assert.equal(0, status)
    local v = cjson.decode(out)
    assert.equal(3, v.timeout)
    assert.same({ "inet:127.0.0.1:0" }, v.postfix.listen)
    assert.is_nil(io.open(world.dir .. "/checked"), "no cache made")
  end)

  it("config check shows and checks the collector's settings", function()
    local p = world_conf('tlsrpt = { listen = "unix:/tmp/c.sock", socket_group = "mail" }\n' ..
      'postfix = { tlsrpt_listen = "unix:/tmp/d.sock" }\n')
    local out, status, err = mtasts("--config " .. p .. " config check")
    assert.equal(0, status, out .. err)
    assert.matches("\ntlsrpt.listen = unix:/tmp/c.sock\n", out, 1, true)
    assert.matches("\ntlsrpt.socket_mode = 0660\n", out, 1, true)
    assert.matches("\npostfix.tlsrpt_listen = unix:/tmp/d.sock\n", out, 1, true)
    for _, case in ipairs({
      { 'tlsrpt = { socket_group = "no-such-grp" }', "tlsrpt.socket_group: no group" },
      { 'tlsrpt = { socket_mode = "8" }', "tlsrpt.socket_mode: " },
      { 'postfix = { tlsrpt_listen = "tcp:x" }', "postfix.tlsrpt_listen: 'tcp:x' is not" },
    }) do
      out, status, err = mtasts("--config " .. world_conf(case[1] .. "\n") .. " config check")
      assert.equal(78, status, out .. err)
      assert.matches(case[2], err, 1, true)
    end
  end)
end)
