-- Settings are checked when their owner starts (docs/errors.md, code config): a value of the
-- right type that cannot work fails the constructor with nil, message, "config", option and
-- makes nothing; a value of the wrong type raises. No network: every check here is local.
local resolver = require("mtasts.resolver")
local fetch = require("mtasts.fetch")
local discover = require("mtasts.discover")
local util = require("support.util")

-- The four values of a call, for assert.same.
local function four(...) return { n = select("#", ...), ... } end

-- A config failure: nil, a message starting with the option's name and holding `part`,
-- "config", the option's name.
local function assert_config(option, part, ok, msg, code, key)
  assert.is_nil(ok, "expected a failure, got " .. tostring(ok))
  assert.equal("config", code, msg)
  assert.equal(option, key, msg)
  assert.equal(option .. ":", msg:sub(1, #option + 1), msg)
  if part then assert.matches(part, msg, 1, true) end
  assert.is_nil(msg:find("\n"), "one line: " .. msg)
end

describe("settings of mtasts.resolver", function()
  local dir, cleanup
  setup(function() dir, cleanup = util.tmpdir() end)
  teardown(function() cleanup() end)

  it("refuses a nameserver that is no IP[@PORT], or a port out of range", function()
    assert_config("nameserver", "'127.0.0.1@99999': port 99999 is out of range (1-65535)",
      resolver.new{ nameserver = "127.0.0.1@99999", trust_anchor = false })
    assert_config("nameserver", "port 0 is out of range",
      resolver.new{ nameserver = "127.0.0.1@0", trust_anchor = false })
    assert_config("nameserver", "'ns.example' is not an IP address",
      resolver.new{ nameserver = { "127.0.0.1", "ns.example" }, trust_anchor = false })
    assert_config("nameserver", "the port is not a number",
      resolver.new{ nameserver = "::1@dns", trust_anchor = false })
    local r = assert(resolver.new{ nameserver = { "127.0.0.1@5353", "::1", "::1@53" },
      trust_anchor = false })
    r:close()
  end)

  it("loads the trust anchor now, and says why it cannot, in one line", function()
    assert_config("trust_anchor", "cannot read '" .. dir .. "/none.key': No such file",
      resolver.new{ nameserver = "127.0.0.1", trust_anchor = dir .. "/none.key" })
    assert_config("trust_anchor", "is a directory",
      resolver.new{ nameserver = "127.0.0.1", trust_anchor = dir })
    util.write(dir .. "/garbage.key", "this is no trust anchor\n")
    assert_config("trust_anchor", "does not load as DNSSEC trust anchors",
      resolver.new{ nameserver = "127.0.0.1", trust_anchor = dir .. "/garbage.key" })
    -- libunbound's own lines are not printed (it wrote five of them to stderr)
    local out = util.run(util.lua_cmd() .. [[ -e 'print(require("mtasts.resolver").new{
      nameserver = "127.0.0.1", trust_anchor = "]] .. dir .. [[/garbage.key" })']])
    assert.equal("nil\ttrust_anchor: '" .. dir .. "/garbage.key' does not load as DNSSEC " ..
      "trust anchors (libunbound refused it)\tconfig\ttrust_anchor\n", out)
  end)

  it("refuses a timeout of 0, negative or over a day; raises on a wrong type", function()
    assert_config("timeout", "0 is not a number of seconds",
      resolver.new{ nameserver = "127.0.0.1", trust_anchor = false, timeout = 0 })
    assert_config("timeout", nil, resolver.new{ trust_anchor = false, timeout = -1 })
    assert_config("timeout", nil, resolver.new{ trust_anchor = false, timeout = 1e9 })
    assert_config("timeout", nil, resolver.new{ trust_anchor = false, timeout = 0 / 0 })
    assert.has_error(function() resolver.new{ timeout = "5" } end,
      "bad argument #1 to 'new' (timeout must be a number)")
    assert.has_error(function() resolver.new{ nameserver = 53 } end)
    assert.has_error(function() resolver.new{ trust_anchor = true } end)
  end)

  it("check: the same checks, making nothing", function()
    assert.is_true(resolver.check{ nameserver = "127.0.0.1@5353", trust_anchor = false })
    assert_config("nameserver", "port 99999",
      resolver.check{ nameserver = "127.0.0.1@99999" })
    assert_config("trust_anchor", "does not load",
      resolver.check{ nameserver = "127.0.0.1", trust_anchor = dir .. "/garbage.key" })
    assert_config("timeout", nil, resolver.check{ timeout = 0 })
    assert.has_error(function() resolver.check{ bogus = 1 } end,
      "bad argument #1 to 'check' (unknown option 'bogus')")
  end)
end)

describe("settings of mtasts.fetch", function()
  local dir, cleanup
  setup(function() dir, cleanup = util.tmpdir() end)
  teardown(function() cleanup() end)

  it("loads the CA file now: missing, a directory, or no certificate in it", function()
    assert_config("cafile", "cannot read '/nonexistent/ca.pem': No such file or directory",
      fetch.new{ cafile = "/nonexistent/ca.pem" })
    assert_config("cafile", "is a directory", fetch.new{ cafile = dir })
    util.write(dir .. "/garbage.pem", "-----BEGIN NOTHING-----\nnope\n")
    assert_config("cafile", "holds no certificate OpenSSL can load",
      fetch.new{ cafile = dir .. "/garbage.pem" })
    assert_config("capath", "cannot read '/nonexistent'", fetch.new{ capath = "/nonexistent" })
    assert_config("capath", "is not a directory", fetch.new{ capath = dir .. "/garbage.pem" })
  end)

  it("without cafile or capath, loads curl's default CA bundle now: its absence is a " ..
    "setting's failure, not every policy host's", function()
    -- the default bundle is hidden in a mount namespace of the spec's own (root only)
    local bundle = util.run("curl-config --ca"):gsub("%s+$", "")
    if util.run("id -u"):match("^0") == nil or bundle == "" then
      pending("needs root (a private mount namespace) and curl's default CA bundle")
      return
    end
    util.write(dir .. "/nobundle.lua", [[
      local fetch = require("mtasts.fetch")
      local f, msg, code, key = fetch.new{}
      io.write(tostring(f), "|", tostring(msg), "|", tostring(code), "|", tostring(key))
    ]])
    util.write(dir .. "/empty.pem", "")
    util.write(dir .. "/nobundle.sh", "mount --bind " .. dir .. "/empty.pem " .. bundle ..
      " && " .. util.lua_cmd() .. " " .. dir .. "/nobundle.lua")
    local out, status = util.run("unshare -m sh " .. dir .. "/nobundle.sh")
    assert.equal(0, status, out)
    local f, msg, code, key = out:match("^([^|]*)|([^|]*)|([^|]*)|(.*)$")
    assert.equal("nil", f, out)
    assert.equal("config", code, out)
    assert.equal("cafile", key, out)
    assert.matches("cafile: '" .. bundle .. "' (the default: set cafile, or install " ..
      "ca-certificates) holds no certificate", msg, 1, true)
    -- with the bundle in place, the default loads
    local ok = fetch.new{}
    assert.is_truthy(ok, "the default CA bundle loads")
    ok:close()
  end)

  it("refuses timeouts, sizes, connect_to entries and a proxy that cannot work", function()
    assert_config("timeout", "0 is not", fetch.new{ timeout = 0 })
    assert_config("connect_timeout", nil, fetch.new{ connect_timeout = -2 })
    assert_config("max_size", "0 is not an integer of at least 1", fetch.new{ max_size = 0 })
    assert_config("max_size", nil, fetch.new{ max_size = 1.5 })
    assert_config("proxy", "must not be empty", fetch.new{ proxy = "" })
    assert_config("connect_to", "'x' is not HOST:PORT:HOST2:PORT2", fetch.new{ connect_to = "x" })
    assert_config("connect_to", "port 99999 is out of range",
      fetch.new{ connect_to = { ":443:127.0.0.1:8443", "a.example:443:b.example:99999" } })
    assert_config("connect_to", "port 'x' is not a number",
      fetch.new{ connect_to = ":x:127.0.0.1:8443" })
    for _, good in ipairs({ ":443:127.0.0.1:8443", "::127.0.0.1:", "a.example:443::",
      "[::1]:443:[::1]:8443", ":443:[2001:db8::1]:443" }) do
      local f = assert(fetch.new{ connect_to = good })
      f:close()
    end
  end)

  it("raises on a wrong type", function()
    assert.has_error(function() fetch.new{ timeout = "5" } end,
      "bad argument #1 to 'new' (timeout must be a number)")
    assert.has_error(function() fetch.new{ cafile = 5 } end,
      "bad argument #1 to 'new' (cafile must be a string)")
    assert.has_error(function() fetch.new{ connect_to = 5 } end,
      "bad argument #1 to 'new' (connect_to must be a string or a list)")
    assert.has_error(function() fetch.check{ connect_to = { 5 } } end,
      "bad argument #1 to 'check' (connect_to entries must be strings)")
  end)

  it("check: the same checks, making nothing", function()
    assert.is_true(fetch.check{ timeout = 3, connect_to = ":443:127.0.0.1:8443" })
    assert_config("cafile", "/nonexistent/ca.pem", fetch.check{ cafile = "/nonexistent/ca.pem" })
    assert_config("timeout", nil, fetch.check{ timeout = 0 })
  end)
end)

describe("settings of mtasts.open", function()
  local mtasts = require("mtasts")
  local dir, cleanup
  setup(function() dir, cleanup = util.tmpdir() end)
  teardown(function() cleanup() end)

  local function exists(path) return os.rename(path, path) ~= nil end

  it("fails before anything is made: no cache directory for a bad setting", function()
    local path = dir .. "/cache"
    assert_config("timeouts.dns", "0 is not a number of seconds",
      mtasts.open{ path = path, timeouts = { dns = 0 } })
    assert_config("timeouts.fetch", nil, mtasts.open{ path = path, timeouts = { fetch = -1 } })
    assert_config("cafile", "cannot read '/nonexistent/ca.pem'",
      mtasts.open{ path = path, nameserver = "127.0.0.1", trust_anchor = false,
        cafile = "/nonexistent/ca.pem" })
    assert_config("nameserver", "port 99999 is out of range",
      mtasts.open{ path = path, nameserver = "127.0.0.1@99999", trust_anchor = false })
    assert_config("trust_anchor", "cannot read",
      mtasts.open{ path = path, nameserver = "127.0.0.1", trust_anchor = dir .. "/none.key" })
    assert_config("recheck", "-1 is not a number of at least 0",
      mtasts.open{ path = path, recheck = -1 })
    assert.is_false(exists(path), "the cache directory was made")
    assert_config("path", "must not be empty", mtasts.open{ path = "" })
  end)

  it("raises on a wrong type", function()
    assert.has_error(function() mtasts.open{ path = dir, timeouts = { dns = "5" } } end,
      "bad argument #1 to 'open' (timeouts.dns must be a number)")
    assert.has_error(function() mtasts.open{ path = dir, recheck = "60" } end,
      "bad argument #1 to 'open' (recheck must be a number)")
  end)
end)

describe("settings of tlsrpt.open", function()
  local tlsrpt = require("mtasts.tlsrpt")
  local dir, cleanup
  setup(function() dir, cleanup = util.tmpdir() end)
  teardown(function() cleanup() end)

  it("fails before the directory is made, network settings included", function()
    local path = dir .. "/results"
    assert_config("window", "-1 is not a number of at least 0",
      tlsrpt.open{ path = path, window = -1 })
    assert_config("submitter", "must not be empty", tlsrpt.open{ path = path, submitter = "" })
    assert_config("timeouts.fetch", nil, tlsrpt.open{ path = path, timeouts = { fetch = 0 } })
    assert_config("cafile", "cannot read '/nonexistent/ca.pem'",
      tlsrpt.open{ path = path, nameserver = "127.0.0.1", cafile = "/nonexistent/ca.pem" })
    assert_config("nameserver", "port 99999",
      tlsrpt.open{ path = path, nameserver = "127.0.0.1@99999" })
    assert_config("connect_to", "is not HOST:PORT:HOST2:PORT2",
      tlsrpt.open{ path = path, nameserver = "127.0.0.1", connect_to = "nope" })
    assert.is_nil(os.rename(path, path), "the directory was made")
    assert_config("path", "must not be empty", tlsrpt.open{ path = "" })
    -- an injected fetcher and resolver: their settings are the caller's
    local store = assert(tlsrpt.open{ path = path, cafile = "/nonexistent/ca.pem",
      fetcher = {}, resolver = {} })
    store:close()
  end)

  it("raises on a wrong type", function()
    assert.has_error(function() tlsrpt.open{ path = dir, window = "0" } end,
      "bad argument #1 to 'open' (window must be a number)")
    assert.has_error(function() tlsrpt.open{ path = dir, submitter = 1 } end,
      "bad argument #1 to 'open' (submitter must be a string)")
  end)
end)

describe("local failures of discovery", function()
  it("passes a failure of this host's resolver on as local, without a TLSRPT reason",
    function()
      local r = { txt = function(_, name)
        return nil, name .. " TXT: libunbound: out of memory", "local"
      end }
      assert.same(four(nil, "_mta-sts.example.com TXT: libunbound: out of memory", "local"),
        four(discover.record(r, "example.com")))
      local f = { fetch = function() return nil, "mta-sts.example.com: this host failed: x",
        "local" end }
      local policy, msg, code, reason = discover.policy(f, "example.com")
      assert.same({ nil, "mta-sts.example.com: this host failed: x", "local" },
        { policy, msg, code })
      assert.is_nil(reason)
    end)
end)
