-- mtasts.script: the operator's policy script runs sandboxed, within a budget; its failures
-- are logged and give the default, and a reload that fails keeps the previous script.
local script = require("mtasts.script")
local util = require("support.util")

describe("mtasts.script", function()
  local dir, cleanup, lines, log
  before_each(function()
    dir, cleanup = util.tmpdir()
    lines = {}
    log = function(level, msg) lines[#lines + 1] = level .. " " .. msg end
  end)
  after_each(function() cleanup() end)

  local function file(text)
    local p = dir .. "/policy.lua"
    util.write(p, text)
    return p
  end

  it("calls the hooks with a copy of ctx and returns their answer", function()
    local s = assert(script.load(file([[
      local partners = { ["partner.example"] = true }
      return {
        answer = function(ctx)
          ctx.policy.mode = "changed"   -- a copy: the caller's table stays
          if partners[ctx.domain] then return "encrypt" end
        end,
      }
    ]]), { log = log }))
    local ctx = { domain = "partner.example", policy = { mode = "none" } }
    assert.equal("encrypt", s:call("answer", ctx, "may"))
    assert.equal("none", ctx.policy.mode)
    assert.equal("may", s:call("answer", { domain = "other.example" }, "may"))
    assert.equal("x", s:call("on_failure", { domain = "a" }, "x"), "no such hook: the default")
    assert.is_true(s:has("answer"))
    assert.is_false(s:has("on_failure"))
  end)

  it("an error, an overrun or a refused answer is logged and gives the default", function()
    local s = assert(script.load(file([[
      return { answer = function(ctx)
        if ctx.domain == "err.example" then error("boom") end
        if ctx.domain == "loop.example" then while true do end end
        if ctx.domain == "sly.example" then
          while true do pcall(function() while true do end end) end
        end
        return 42
      end }
    ]]), { log = log, budget = 0.05 }))
    assert.equal("d", s:call("answer", { domain = "err.example" }, "d"))
    assert.matches("^err policy script: answer%(err.example%) .*boom", lines[1])
    assert.equal("d", s:call("answer", { domain = "loop.example" }, "d"))
    assert.matches("took longer than 0.05 s", lines[2], 1, true)
    assert.equal("d", s:call("answer", { domain = "sly.example" }, "d"))
    assert.matches("took longer than 0.05 s", lines[3], 1, true)
    local function string_only(v) return type(v) == "string" or "not a string" end
    assert.equal("d", s:call("answer", { domain = "n.example" }, "d", string_only))
    assert.matches("returned 42: not a string", lines[4], 1, true)
    assert.equal(4, s.errors)
  end)

  it("runs sandboxed: no io, no os.execute, no require unless allowed", function()
    local p = file([[
      return { answer = function()
        return tostring(io) .. " " .. tostring(os.execute) .. " " .. tostring(require) ..
          " " .. os.date("!%Y", 0)
      end }
    ]])
    local s = assert(script.load(p, { log = log }))
    assert.equal("nil nil nil 1970", s:call("answer", {}, "d"))
    local open = assert(script.load(p, { log = log, allow_exec = true }))
    assert.matches("^table: .* function: .* function: .* 1970$", open:call("answer", {}, "d"))
    local logs = assert(script.load(file([[
      return { on_failure = function(ctx) log("warning", "failed: " .. ctx.domain) end }
    ]]), { log = log }))
    logs:call("on_failure", { domain = "x.example" })
    assert.equal("warning policy script: failed: x.example", lines[#lines])
  end)

  it("a script cannot reach the host's string library, finalizers or tables", function()
    local s = assert(script.load(file([[
      local kept
      return { answer = function(ctx)
        if ctx.domain == "meta.example" then
          local m = getmetatable("")
          return tostring(m)
        elseif ctx.domain == "gc.example" then
          setmetatable({}, { __gc = function() while true do end end })
        elseif ctx.domain == "rep.example" then
          return ("x"):rep(2 ^ 30)
        elseif ctx.domain == "tostring.example" then
          error(setmetatable({}, { __tostring = function() error("boom") end }))
        elseif ctx.domain == "deep.example" then
          ctx.t.a.b.c.d.e.f.g.h.i.j = "changed"
          kept = ctx.t
          return "may"
        end
      end }
    ]]), { log = log }))
    assert.equal("nil", s:call("answer", { domain = "meta.example" }, "d"))
    assert.equal("d", s:call("answer", { domain = "gc.example" }, "d"))
    assert.matches("__gc is not allowed", lines[#lines], 1, true)
    assert.equal("d", s:call("answer", { domain = "rep.example" }, "d"))
    assert.matches("a result over", lines[#lines], 1, true)
    assert.equal("d", s:call("answer", { domain = "tostring.example" }, "d"))
    assert.matches("answer(tostring.example) a table", lines[#lines], 1, true)
    local deep = { a = { b = { c = { d = { e = { f = { g = { h = { i = { j = "host" }
      } } } } } } } } }
    deep.self = deep
    assert.equal("may", s:call("answer", { domain = "deep.example", t = deep }, "d"))
    assert.equal("host", deep.a.b.c.d.e.f.g.h.i.j)
    assert.equal("X", ("x"):upper(), "the host's string methods are back")
    assert.equal(("ab"):rep(3), "ababab")
    collectgarbage()
    -- a hook table with a metatable is refused
    local _, msg = script.load(file([[
      return setmetatable({}, { __index = function() while true do end end })
    ]]), { log = log })
    assert.matches("must return a plain table of hooks", msg, 1, true)
  end)

  it("refuses a script that cannot load, naming the file", function()
    local function refused(text, part)
      local s, msg, code, key = script.load(file(text), { log = log })
      assert.is_nil(s)
      assert.equal("config", code)
      assert.equal("policy", key)
      assert.matches(part, msg, 1, true)
    end
    refused("return {", "policy: " .. dir .. "/policy.lua:1:")
    refused("return 5", "must return a plain table of hooks")
    refused("return { anwser = function() end }", "unknown hook 'anwser'")
    refused("return { answer = 5 }", "hook 'answer' must be a function")
    refused("while true do end", "took longer than 1 s")
    refused("os.execute('true')", "attempt to call a nil value")
    local s, msg = script.load(dir .. "/none.lua")
    assert.is_nil(s)
    assert.matches("No such file", msg, 1, true)
    s, msg = script.load(file("return {}"), { budget = 0 })
    assert.is_nil(s)
    assert.matches("policy budget: 0 is not", msg, 1, true)
  end)

  it("reload keeps the previous script when the new one fails", function()
    local p = file('return { answer = function() return "one" end }')
    local s = assert(script.load(p, { log = log }))
    util.write(p, "return {")
    local ok, msg = s:reload()
    assert.is_nil(ok)
    assert.matches("policy: ", msg, 1, true)
    assert.matches("^err policy script: reload failed, the previous one stays", lines[1])
    assert.equal("one", s:call("answer", {}, "d"))
    util.write(p, 'return { answer = function() return "two" end }')
    assert.is_true(s:reload())
    assert.equal("two", s:call("answer", {}, "d"))
  end)
end)
