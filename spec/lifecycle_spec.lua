-- The one lifecycle of the C userdata classes of mtasts.core (module/lua_util.h,
-- docs/style.md §4): mtasts.cache, mtasts.results, mtasts.fetcher, mtasts.resolver and the
-- Redis connection and poller.
-- No servers: the resolver is made with a forwarder it never asks.
local core = require("mtasts.core")
local util = require("support.util")

local dir, cleanup
before_each(function() dir, cleanup = util.tmpdir() end)
after_each(function() cleanup() end)

-- name: the metatable name; make() -> a new object; methods: every C method but close.
local classes = {
  { name = "mtasts.cache",
    make = function() return assert(core.cache_open(dir .. "/cache")) end,
    methods = { "lookup", "upsert", "mark_checked", "delete", "list", "due_for_refresh",
      "prune", "verify", "stats", "path" } },
  { name = "mtasts.results",
    make = function() return assert(core.results_open(dir .. "/cache")) end,
    methods = { "apply", "scan", "distinct", "get", "cas", "delete_range", "path" } },
  { name = "mtasts.fetcher",
    make = function() return assert(core.fetcher_new{}) end,
    methods = { "add", "fd", "timeout", "step", "done", "cancel", "running" } },
  { name = "mtasts.resolver",
    make = function()
      return assert(core.resolver_new{ nameserver = "127.0.0.1@9", trust_anchor = false })
    end,
    methods = { "query", "fd", "timeout", "step", "done", "cancel", "pending" } },
  { name = "mtasts.redis_conn",   -- a non-blocking connect to loopback, never finished
    make = function() return assert(core.redis_connect{ host = "127.0.0.1", port = 9 }) end,
    methods = { "fd", "want", "send", "step", "pending" } },
  { name = "mtasts.poller",
    make = function() return assert(core.poller()) end,
    methods = { "fd", "watch", "unwatch", "wait" } },
}

local function raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok)
  return err
end

describe("C userdata lifecycle", function()
  for _, c in ipairs(classes) do
    describe(c.name, function()
      it("closes with true, twice, and shows that it is closed", function()
        local o = c.make()
        assert.matches("^" .. c.name:gsub("%.", "%%.") .. " %(.+%)$", tostring(o))
        assert.is_true(o:close())
        assert.is_true(o:close())
        assert.equal(c.name .. " (closed)", tostring(o))
      end)
      it("raises the exact message for every method after close, arguments or not", function()
        local o = c.make()
        o:close()
        for _, m in ipairs(c.methods) do
          assert.is_function(o[m], m)
          assert.equal("attempt to use a closed " .. c.name, raised(o[m], o))
          assert.equal("attempt to use a closed " .. c.name, raised(o[m], o, "x", 1, 1))
        end
      end)
      it("has __name, and one function behind __gc and __close", function()
        local mt = getmetatable(c.make())
        assert.equal(c.name, mt.__name)
        assert.is_function(mt.__gc)
        assert.equal(mt.__gc, mt.__close)
        assert.is_function(mt.__index.close)
      end)
      it("closes at the end of a <close> scope", function()
        local kept
        do
          local o <close> = c.make()
          kept = o
        end
        assert.equal(c.name .. " (closed)", tostring(kept))
        assert.is_true(kept:close())
      end)
      it("is released by the collector, and a closed one is collected too", function()
        for _ = 1, 3 do c.make() end
        local closed = c.make()
        closed:close()
        closed = nil   -- luacheck: ignore 311
        collectgarbage()
        collectgarbage()
        local o = c.make()
        assert.is_true(o:close())
      end)
    end)
  end

  it("checks the class of self", function()
    local cache = assert(core.cache_open(dir .. "/cache"))
    local f = assert(core.fetcher_new{})
    assert.matches("mtasts.cache expected", raised(getmetatable(cache).__index.lookup, f,
      "example.com", 1), 1, true)
    assert.matches("mtasts.fetcher expected", raised(getmetatable(f).__index.close, cache), 1,
      true)
    cache:close()
    f:close()
  end)

  it("the cache's collected handles leave the environment usable by the next", function()
    for _ = 1, 4 do assert(core.results_open(dir .. "/shared")) end
    collectgarbage()
    collectgarbage()
    local c = assert(core.cache_open(dir .. "/shared"))
    local r = assert(core.results_open(dir .. "/shared"))
    assert.is_true(c:upsert("example.com", "id", nil, 1))
    assert.is_true(r:apply({ "Rkey", 1, 2 }))
    assert.is_true(c:close())
    assert.is_true(r:close())
    assert(core.cache_rebuild(dir .. "/shared"))   -- nothing of this process holds it open
  end)
end)
