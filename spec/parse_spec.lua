-- The pure parsers of docs/parsing.md, driven by the case tables in spec/cases/
-- (the same tables seed the fuzz corpora: fuzz/seeds.lua).
local mtasts = require("mtasts")

local function check(fn, code, case)
  local name, input, expect = case[1], case[2], case[3]
  it(name, function()
    local res, msg, c = fn(input)
    if expect.err then
      assert.is_nil(res)
      assert.equal(code, c)
      assert.is_string(msg)
      assert.truthy(msg:find(expect.err, 1, true),
        "message '" .. tostring(msg) .. "' lacks '" .. expect.err .. "'")
      assert.is_nil(msg:find("\0", 1, true), "raw NUL byte in message")
    else
      assert.same(expect, res, msg)
      assert.is_nil(msg)
    end
  end)
end

local function each(fn, code, cases)
  for _, case in ipairs(cases) do check(fn, code, case) end
end

describe("mtasts.parse_record", function()
  each(mtasts.parse_record, "record-syntax", require("cases.record"))
  it("raises on a non-string argument", function()
    assert.has_error(function() mtasts.parse_record(nil) end,
      "bad argument #1 to 'parse_record' (string expected, got nil)")
    assert.has_error(function() mtasts.parse_record(1) end,
      "bad argument #1 to 'parse_record' (string expected, got number)")
  end)
end)

describe("mtasts.parse_policy", function()
  each(mtasts.parse_policy, "policy-syntax", require("cases.policy"))
  it("raises on a non-string argument", function()
    assert.has_error(function() mtasts.parse_policy({}) end,
      "bad argument #1 to 'parse_policy' (string expected, got table)")
  end)
  it("accepts a policy of 64 KiB of mx lines", function()
    local lines = { "version: STSv1", "mode: enforce", "max_age: 86400" }
    local size = 40
    local i = 0
    while size < 65536 - 24 do
      i = i + 1
      local l = string.format("mx: mx%d.example.com", i)
      lines[#lines + 1] = l
      size = size + #l + 1
    end
    local p = assert(mtasts.parse_policy(table.concat(lines, "\n")))
    assert.equal(i, #p.mx)
    assert.is_true(mtasts.matches(p, string.format("mx%d.example.com", i)))
  end)
end)

describe("mtasts.tlsrpt.parse_record", function()
  each(mtasts.tlsrpt.parse_record, "record-syntax", require("cases.tlsrpt_record"))
  it("raises on a non-string argument", function()
    assert.has_error(function() mtasts.tlsrpt.parse_record(false) end,
      "bad argument #1 to 'parse_record' (string expected, got boolean)")
  end)
end)

describe("mtasts.domain", function()
  for _, case in ipairs(require("cases.domain")) do
    local name, input, expect = case[1], case[2], case[3]
    it(name, function()
      local a, u, code = mtasts.domain(input)
      if expect.err then
        assert.is_nil(a)
        assert.equal("domain-syntax", code)
        assert.truthy(u:find(expect.err, 1, true), "message '" .. tostring(u) .. "' lacks '"
          .. expect.err .. "'")
      else
        assert.equal(expect[1], a, u)
        assert.equal(expect[2], u)
      end
    end)
  end
  it("is idempotent on its own output", function()
    for _, case in ipairs(require("cases.domain")) do
      if not case[3].err then
        local a, u = mtasts.domain(case[2])
        assert.equal(a, (mtasts.domain(a)))
        assert.equal(a, (mtasts.domain(u)))
      end
    end
  end)
  it("raises on a non-string argument", function()
    assert.has_error(function() mtasts.domain(nil) end,
      "bad argument #1 to 'domain' (string expected, got nil)")
  end)
end)

describe("mtasts.matches", function()
  for _, case in ipairs(require("cases.match")) do
    local name, patterns, host, expected = case[1], case[2], case[3], case[4]
    it(name, function()
      assert.equal(expected, mtasts.matches({ mx = patterns }, host))
    end)
  end
  it("matches against a parsed policy", function()
    local p = assert(mtasts.parse_policy("version: STSv1\nmode: enforce\nmax_age: 1\n" ..
      "mx: MAIL.example.com\nmx: *.example.net\n"))
    assert.is_true(mtasts.matches(p, "mail.EXAMPLE.com."))
    assert.is_true(mtasts.matches(p, "a.example.net"))
    assert.is_false(mtasts.matches(p, "example.net"))
  end)
  it("raises on misuse", function()
    assert.has_error(function() mtasts.matches(nil, "a.example") end,
      "bad argument #1 to 'matches' (table expected, got nil)")
    assert.has_error(function() mtasts.matches({}, "a.example") end,
      "bad argument #1 to 'matches' (policy.mx must be a table of patterns)")
    assert.has_error(function() mtasts.matches({ mx = { 1 } }, "a.example") end,
      "bad argument #1 to 'matches' (policy.mx[1] is not a string)")
    assert.has_error(function() mtasts.matches({ mx = {} }, nil) end,
      "bad argument #2 to 'matches' (string expected, got nil)")
  end)
end)

describe("record candidates", function()
  it("picks MTA-STS records out of a TXT set", function()
    assert.is_true(mtasts.is_record("v=STSv1; id=1"))
    assert.is_true(mtasts.is_record("v=STSv1 ;id=1"))
    assert.is_true(mtasts.is_record("v=STSv1;"))
    assert.is_false(mtasts.is_record("v=STSv1"))
    assert.is_false(mtasts.is_record("v=STSv10; id=1"))
    assert.is_false(mtasts.is_record("v=spf1 -all"))
    assert.is_false(mtasts.is_record(""))
  end)
  it("picks TLSRPT records out of a TXT set", function()
    assert.is_true(mtasts.tlsrpt.is_record("v=TLSRPTv1; rua=mailto:a@b.example"))
    assert.is_false(mtasts.tlsrpt.is_record("v=TLSRPTv1"))
    assert.is_false(mtasts.tlsrpt.is_record("v=TLSRPTv10;"))
  end)
end)

describe("error messages", function()
  it("quote untrusted bytes and stay short", function()
    local _, msg = mtasts.parse_policy("version: STSv1\nmode: " .. string.rep("\255", 5000) .. "\n")
    assert.truthy(msg:find("\\xff\\xff", 1, true))
    assert.truthy(msg:find("...", 1, true))
    assert.is_true(#msg < 256)
  end)
end)
