-- The public contract's uniform shapes (docs/errors.md, docs/architecture.md): a name that
-- is no domain through every adapter; the same lifecycle for every class; unknown options
-- refused; one logger signature; finalizers that neither write nor log.
local mtasts = require("mtasts")
local tlsrpt = require("mtasts.tlsrpt")
local delivery = require("mtasts.delivery")
local hooks = require("mtasts.hooks")
local postfix = require("mtasts.postfix")
local opensmtpd = require("mtasts.opensmtpd")
local cache = require("mtasts.cache")
local mlog = require("mtasts.log")
local cqueues = require("cqueues")
local socket = require("cqueues.socket")
local util = require("support.util")

local DAY = "2026-11-20"
local NOW = tlsrpt.day_start(DAY) + 3600

-- No DNS, no HTTPS: every domain has no MTA-STS record.
local function offline_client(dir, log)
  return assert(mtasts.open{ path = dir, clock = function() return NOW end, log = log,
    resolver = { txt = function() return nil, "no such name", "nxdomain" end },
    fetcher = { fetch = function() error("no fetch expected") end } })
end

-- The message of a call that raises (without its position).
local function raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return (tostring(err):gsub("^[^:]*:%d+: ", ""))
end

describe("a name that is no domain", function()
  local dir, cleanup
  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function() cleanup() end)

  it("delivery.plan: domain-syntax is no policy, not a reason to defer", function()
    local plan = delivery.plan{ domain = "bad..domain", mx = { "mx.example.net" },
      policy_error = "'bad..domain' has an empty label", policy_code = "domain-syntax" }
    assert.is_nil(plan.defer)
    assert.is_nil(plan.fail)
    assert.same({ { host = "mx.example.net", tls = "opportunistic", verify_pkix = true } },
      plan.hosts)
    assert.is_true(plan.plaintext_fallback)
    -- a temporary failure still defers
    plan = delivery.plan{ domain = "example.com", mx = { "mx.example.net" },
      policy_error = "SERVFAIL", policy_code = "dns" }
    assert.matches("policy lookup failed", plan.defer, 1, true)
  end)

  it("delivery.outcome records nothing on a nil result, and still checks its arguments",
    function()
    assert.is_nil(delivery.outcome(nil, "mx.example.net", { ok = true }))
    assert.equal("bad argument #1 to 'outcome' (a TLSRPT result expected)",
      raised(delivery.outcome, "text", "mx.example.net", { ok = true }))
  end)

  it("hooks: get_mx plans without a policy, and delivered records nothing", function()
    local store = assert(tlsrpt.open{ path = dir, submitter = "mail.sender.example",
      clock = function() return NOW end })
    local client = offline_client(dir)
    local h = assert(hooks.new{ client = client, store = store })
    local msg = {}
    local hosts, err, code = h:get_mx("bad..domain", { "mx.example.net" }, msg)
    assert.is_nil(err, code)
    assert.same({ { host = "mx.example.net", priority = 1, tls = "opportunistic",
      verify_pkix = true, plaintext_fallback = true } }, hosts)
    assert.is_true(h:delivered(msg, "bad..domain", "mx.example.net"))
    assert.is_true(h:deferred(msg, "bad..domain", "mx.example.net",
      { result_type = "starttls-not-supported" }))
    assert.is_true(h:close())
    assert(store:flush())
    assert.same({}, assert(store:days()))
    store:close()
    client:close()
  end)

  it("postfix: a client answering domain-syntax gives NOTFOUND, and logs no error", function()
    local fake = { get = function() return nil, nil, false, "not a domain name",
      "domain-syntax" end, close = function() return true end }
    local logs = {}
    local srv = assert(postfix.new{ client = fake, listen = { "inet:127.0.0.1:0" },
      log = function(level, m) logs[#logs + 1] = level .. ": " .. m end })
    local port = tonumber(srv:addresses()[1]:match(":(%d+)$"))
    local answer, ok, perr
    srv.loop:wrap(function()
      ok, perr = pcall(function()
        local con = assert(socket.connect("127.0.0.1", port))
        con:setmode("b", "b")
        con:write(postfix.netstring("mtasts example.com"))
        con:flush()
        local buf, deadline = "", cqueues.monotime() + 10
        while not answer and cqueues.monotime() < deadline do
          local chunk = con:xread(-4096, "b", deadline - cqueues.monotime())
          if not chunk then break end
          buf = buf .. chunk
          answer = postfix.netstring_decode(buf, 1000)
        end
        con:close()
      end)
      srv:stop()
    end)
    srv:run{ signals = false }
    assert.is_true(srv:close())
    assert(ok, perr)
    assert.equal("NOTFOUND ", answer)
    for _, l in ipairs(logs) do assert.is_nil(l:match("^err"), l) end
  end)
end)

describe("every class has the same lifecycle", function()
  local dir, cleanup
  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function() cleanup() end)

  -- name: the metatable name in "attempt to use a closed ..."; make() -> object;
  -- use(object) calls one method.
  local classes = {
    { name = "mtasts.client", make = function(d) return offline_client(d) end,
      use = function(o) return o:get("example.com") end },
    { name = "mtasts.tlsrpt.store",
      make = function(d) return assert(tlsrpt.open{ path = d }) end,
      use = function(o) return o:days() end },
    { name = "mtasts.hooks",
      make = function(d) return assert(hooks.new{ client = offline_client(d), store = false }) end,
      use = function(o) return o:get_mx("example.com", { "mx.example.net" }, {}) end },
    { name = "mtasts.postfix.server",
      make = function(d) return assert(postfix.new{ client = offline_client(d) }) end,
      use = function(o) return o:stats() end },
    { name = "mtasts.opensmtpd.filter",
      make = function() return opensmtpd.new{ write = function() end } end,
      use = function(o) return o:line("config|ready") end },
    { name = "mtasts.cache.reader",
      make = function(d) return assert(cache.open(d)) end,
      use = function(o) return o:list() end },
    { name = "mtasts.postfix_log.follower",
      make = function(d)
        local store = assert(tlsrpt.open{ path = d, batch_size = math.huge,
          batch_interval = math.huge })
        return assert(require("mtasts.postfix_log").follow{ file = d .. "/maillog",
          store = store })
      end,
      use = function(o) return o:stats() end },
  }
  for _, c in ipairs(classes) do
    it(c.name .. ": close returns true, twice; use after close raises", function()
      local o = c.make(dir)
      c.use(o)
      assert.is_true(o:close())
      assert.is_true(o:close())
      assert.equal("attempt to use a closed " .. c.name, raised(c.use, o))
    end)
    it(c.name .. ": a <close> variable closes it", function()
      local kept
      do
        local o <close> = c.make(dir)
        kept = o
      end
      assert.equal("attempt to use a closed " .. c.name, raised(c.use, kept))
    end)
  end

  it("every constructor refuses an unknown option", function()
    local function unknown(fn, opts)
      opts.pth = "x"
      assert.matches("unknown option 'pth'", raised(fn, opts), 1, true)
    end
    unknown(mtasts.open, { path = dir })
    unknown(tlsrpt.open, { path = dir })
    unknown(hooks.new, { store = false })
    unknown(postfix.new, {})
    unknown(opensmtpd.new, {})
    unknown(mlog.new, {})
    unknown(require("mtasts.fetch").new, {})
    unknown(require("mtasts.resolver").new, {})
    unknown(delivery.plan, { mx = {} })
    unknown(require("mtasts.postfix_log").new, {})
    unknown(require("mtasts.postfix_log").follow, { file = "-", store = {} })
  end)

  it("the store's finalizer neither commits the batch nor logs", function()
    local logged = {}
    do
      local store = assert(tlsrpt.open{ path = dir, batch_size = 1000, batch_interval = 3600,
        clock = function() return NOW end,
        log = function(level, m) logged[#logged + 1] = level .. ": " .. m end })
      assert(store:add(tlsrpt.no_policy_result("example.com")))
      store = nil   -- luacheck: ignore 311
    end
    collectgarbage()
    collectgarbage()
    assert.same({}, logged)
    local store = assert(tlsrpt.open{ path = dir })
    assert.same({}, assert(store:days()))
    -- close commits
    assert(store:add(tlsrpt.no_policy_result("example.com"), { day = DAY }))
    assert.is_true(store:close())
    store = assert(tlsrpt.open{ path = dir })
    assert.same({ DAY }, assert(store:days()))
    store:close()
  end)
end)

describe("store:send when the delivery state cannot be written", function()
  it("stops with the database's failure instead of going on without a record", function()
    local dir, cleanup = util.tmpdir()
    local now = NOW
    local posts = 0
    local logs = {}
    local store = assert(tlsrpt.open{ path = dir, submitter = "mail.sender.example",
      clock = function() return now end, window = 0,
      log = function(level, m) logs[#logs + 1] = level .. ": " .. m end,
      resolver = { txt = function(_, name)
        if name == "_smtp._tls.example.com" then
          return { "v=TLSRPTv1; rua=https://r.example/x" }
        end
        return nil, "no such name", "nxdomain"
      end },
      fetcher = { post = function() posts = posts + 1 return 200 end } })
    local result = tlsrpt.no_policy_result("example.com")
    result.summary.success = 1
    assert(store:add(result, { day = DAY }))
    assert(store:flush())
    -- the database refuses every compare-and-swap, as a full disk would
    local db = store.db
    store.db = setmetatable({ cas = function() return nil, "disk full", "enospc" end }, {
      __index = function(_, k) return function(_, ...) return db[k](db, ...) end end })
    now = tlsrpt.day_start(DAY) + 86400 + 60
    local ok, msg, code = store:send(DAY)
    assert.is_nil(ok)
    assert.equal("enospc", code)
    assert.equal("delivery state: disk full", msg)
    assert.equal(0, posts)            -- nothing delivered on a claim that was not written
    assert.equal("err: report " .. DAY .. " example.com: the delivery state cannot be " ..
      "written: disk full; stopping", logs[#logs])
    store.db = db
    local sum = assert(store:send(DAY))
    assert.equal(1, sum.sent, require("mtasts.json").encode(sum) .. table.concat(logs, "\n"))
    store:close()
    cleanup()
  end)
end)

describe("the result store under misuse", function()
  it("a result refused half-way leaves nothing of itself in the batch", function()
    local dir, cleanup = util.tmpdir()
    local store = assert(tlsrpt.open{ path = dir, clock = function() return NOW end })
    local bad = tlsrpt.no_policy_result("example.com")
    bad.summary.failure = 2
    bad.failures = { { result_type = "starttls-not-supported", count = 1 }, { count = 1 } }
    assert.equal("bad argument #1 to 'add' (each failure needs a result_type)",
      raised(store.add, store, bad, { day = DAY }))
    local good = tlsrpt.no_policy_result("example.com")
    good.summary.success = 1
    assert(store:add(good, { day = DAY }))
    assert.is_true(store:close())
    store = assert(tlsrpt.open{ path = dir, clock = function() return NOW end })
    local r = assert(store:report("example.com", DAY))
    assert.equal(1, r.policies[1].summary["total-successful-session-count"])
    assert.equal(0, r.policies[1].summary["total-failure-session-count"])
    assert.same({}, r.policies[1]["failure-details"])
    store:close()
    cleanup()
  end)

  it("results:apply reads its table raw: metamethods neither feed it nor free its keys",
    function()
    local dir, cleanup = util.tmpdir()
    local db = assert(require("mtasts.core").results_open(dir))
    local proxy = setmetatable({}, { __len = function() return 3 end,
      __index = function(_, i)
        if i % 3 == 1 then return ("R2026-11-20\0dx" .. i):rep(3) end
        collectgarbage()
        return 1
      end })
    assert.is_true(db:apply(proxy))       -- raw length 0: nothing to apply
    assert.same({}, assert(db:scan("R")))
    assert.is_true(db:close())
    cleanup()
  end)
end)

describe("mtasts.cache and sts:cached", function()
  it("read rows without DNS, and fail in the shape of every failure", function()
    local dir, cleanup = util.tmpdir()
    local sts = offline_client(dir)
    assert.is_nil(sts:cached("example.com"))          -- absence: a single nil
    local ok, msg, code = sts:cached("bad..domain")
    assert.is_nil(ok)
    assert.equal("domain-syntax", code)
    assert.is_string(msg)
    sts:close()
    local c = assert(cache.open(dir))
    assert.is_nil(c:row("example.com"))
    ok, msg, code = c:row("bad..domain")
    assert.is_nil(ok)
    assert.equal("domain-syntax", code)
    assert.is_string(msg)
    assert.is_true(c:verify())
    assert.same({}, assert(c:list()))
    assert.is_false(c:delete("example.com"))
    assert.is_true(c:close())
    util.write(dir .. "/file", "x")
    ok, msg, code = cache.open(dir .. "/file/cache")
    assert.is_nil(ok)
    assert.equal("enotdir", code)
    assert.matches(dir .. "/file/cache", msg, 1, true)
    cleanup()
  end)
end)

describe("mtasts.log", function()
  it("takes syslog's level names and refuses others", function()
    local log = mlog.new{ to = "stderr" }
    log("debug", "not shown without verbose")
    assert.matches("a syslog level name expected, got \"error\"", raised(log, "error", "x"), 1,
      true)
    assert.matches("to must be", raised(mlog.new, { to = "file" }), 1, true)
  end)

  it("writes to a syslog socket, and falls back to stderr where there is none", function()
    local dir, cleanup = util.tmpdir()
    local path = dir .. "/log"
    local srv = assert(socket.listen{ path = path, type = socket.SOCK_DGRAM })
    srv:setmode("b", "b")
    assert(srv:listen(5))             -- binds the socket (cqueues binds lazily)
    local log = mlog.new{ to = "syslog", path = path, ident = "t", facility = "local0" }
    log("warning", "hello")
    local got = srv:xread(-1000, "b", 5)
    assert.matches("^<132>t%[%d+%]: hello$", got or "")
    srv:close()
    -- no socket: the logger is made, says so on stderr, and logs there
    local out = util.run(util.lua_cmd() .. " -e 'local l = require(\"mtasts.log\").new{ to = " ..
      "\"syslog\", path = \"" .. dir .. "/none\" }; l(\"notice\", \"still here\")' 2>&1")
    assert.matches("cannot reach syslog at " .. dir .. "/none", out, 1, true)
    assert.matches("notice: still here", out, 1, true)
    cleanup()
  end)
end)
