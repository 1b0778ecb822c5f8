-- mtasts.config: the configuration file is read in a sandbox and checked against its schema;
-- every mistake is one `config` failure naming the file, the line and the setting.
local config = require("mtasts.config")
local util = require("support.util")

local function assert_config(part, key, ok, msg, code, k)
  assert.is_nil(ok, "expected a failure")
  assert.equal("config", code, msg)
  if key then assert.equal(key, k, msg) end
  assert.matches(part, msg, 1, true)
  assert.is_nil(msg:find("\n"), "one line: " .. msg)
end

describe("mtasts.config", function()
  it("reads settings, sections and zones", function()
    local c = assert(config.parse([[
      -- the cache
      db = "/var/lib/mtasts"
      nameserver = { "127.0.0.1@53", "::1" }
      trust_anchor = false
      timeout = 5 * 4
      mode = "0660"
      postfix = {
        listen = "inet:127.0.0.1:8461",
        zones = { ["*"] = { tlsrpt = true, failure_level = "encrypt" },
                  strict = { strict_testing = true } },
      }
      postfix.max_lookups = 64
      report = { organization = "Example Mail", submitter = "mx.example.org" }
    ]], "mtasts.conf"))
    assert.equal("/var/lib/mtasts", c.db)
    assert.same({ "127.0.0.1@53", "::1" }, c.nameserver)
    assert.is_false(c.trust_anchor)
    assert.equal(20, c.timeout)
    assert.equal(64, c.postfix.max_lookups)
    assert.is_true(c.postfix.zones["*"].tlsrpt)
    assert.equal("Example Mail", c.report.organization)
  end)

  it("names the file, line and setting of every mistake", function()
    assert_config("mtasts.conf:2: dbb: unknown setting", "dbb",
      config.parse("db = 'x'\ndbb = 'y'\n", "mtasts.conf"))
    assert_config("mtasts.conf:1: timeout: a number expected, got string", "timeout",
      config.parse("timeout = '5'\n", "mtasts.conf"))
    assert_config("mtasts.conf:1: postfix.lissen: unknown setting", "postfix.lissen",
      config.parse("postfix = { lissen = 'inet:127.0.0.1:1' }\n", "mtasts.conf"))
    assert_config("postfix.zones[*].failure_level: a string expected",
      "postfix.zones[*].failure_level",
      config.parse("postfix = { zones = { ['*'] = { failure_level = 3 } } }", "mtasts.conf"))
    assert_config("unknown zone option 'strict'", "postfix.zones[x]",
      config.parse("postfix = { zones = { x = { strict = true } } }", "mtasts.conf"))
    assert_config("mtasts.conf:3: db: set twice (first on line 1)", "db",
      config.parse("db = 'a'\n\ndb = 'b'\n", "mtasts.conf"))
    assert_config("mtasts.conf:1: var: is not a value", "var",
      config.parse("db = var/lib\n", "mtasts.conf"))
    assert_config("mtasts.conf:1:", "config", config.parse("db = = 'x'\n", "mtasts.conf"))
    assert_config("postfix.max_lookups: an integer expected, got 1.5", "postfix.max_lookups",
      config.parse("postfix = { max_lookups = 1.5 }", "mtasts.conf"))
    assert_config("nameserver: a list of strings expected, item 2 is number", "nameserver",
      config.parse("nameserver = { 'x', 5 }", "mtasts.conf"))
  end)

  it("runs nothing but assignments: no library, a budget, no string methods", function()
    assert_config("os: is not a value", "os", config.parse("os.execute('true')", "c"))
    assert_config("takes too long to read", "config", config.parse("while true do end", "c"))
    assert_config("attempt to index a string value", "config",
      config.parse("db = ('x'):rep(2^40)", "c"))
    assert.equal("X", ("x"):upper(), "the string library is back afterwards")
    assert_config("makes more than 64 MiB of data", "config",
      config.parse('local s = "xxxxxxxxxxxxxxxx" for i = 1, 40 do s = s .. s end', "c"))
    assert_config("attempt to load a binary chunk", "config",
      config.parse(string.dump(function() end), "c"))
  end)

  it("load: the default path may be missing, a named one may not", function()
    local dir, cleanup = util.tmpdir()
    finally(cleanup)
    assert.same({}, config.load(dir .. "/none.conf", { optional = true }))
    assert_config("No such file or directory", "config", config.load(dir .. "/none.conf"))
    util.write(dir .. "/m.conf", "db = '" .. dir .. "/db'\n")
    assert.same({ db = dir .. "/db" }, config.load(dir .. "/m.conf"))
    util.write(dir .. "/big.conf", ("-- x\n"):rep(300000))
    assert_config("larger than", "config", config.load(dir .. "/big.conf"))
    local names = config.names()
    assert.is_truthy(#names > 20)
    assert.equal("allow_private_addresses", names[1])
  end)
end)
