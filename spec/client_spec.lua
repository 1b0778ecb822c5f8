-- mtasts.open and sts:get with a fake clock, resolver and fetcher: every branch of
-- docs/conformance.md §5 and the TLSRPT result of each.
local mtasts = require("mtasts")
local util = require("support.util")

local ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\n" ..
  "max_age: 86400\r\n"
local TESTING = "version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 3600\n"
local NONE = "version: STSv1\nmode: none\nmax_age: 86400\n"

-- A world of TXT records and policies that specs change as they go.
local function world()
  local w = { txt = {}, policy = {}, now = 100000, dns_calls = 0, fetch_calls = 0 }
  w.resolver = { txt = function(_, name)
    w.dns_calls = w.dns_calls + 1
    local r = w.txt[name]
    if r == nil then return nil, name .. " TXT: no such domain", "nxdomain" end
    if r.err then return nil, name .. " TXT: failed", r.err end
    return r
  end }
  w.fetcher = { fetch = function(_, domain)
    w.fetch_calls = w.fetch_calls + 1
    if w.yield_in_fetch then coroutine.yield() end
    local p = w.policy[domain]
    if p == nil then return nil, "mta-sts." .. domain .. ": no policy (HTTP 404)", "no-policy",
      "http-status-404" end
    if type(p) == "table" then
      if p.err then return nil, "failed", p.err, p.reason end
      return p.text, { content_type = p.type, content_type_ok = p.type == "text/plain" }
    end
    return p, { content_type = "text/plain", content_type_ok = true }
  end }
  w.clock = function() return w.now end
  return w
end

describe("mtasts.open", function()
  local dir, cleanup, w, sts
  before_each(function()
    dir, cleanup = util.tmpdir()
    w = world()
    sts = assert(mtasts.open{ path = dir .. "/db", resolver = w.resolver, fetcher = w.fetcher,
      clock = w.clock })
  end)
  after_each(function()
    sts:close()
    cleanup()
  end)

  describe("get, no cached row", function()
    it("fetches, stores and returns the policy with its result", function()
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
      w.policy["example.com"] = ENFORCE
      local policy, result, fresh = sts:get("Example.COM.")
      assert.equal("enforce", policy.mode)
      assert.is_true(fresh)
      assert.same({ policy = { type = "sts", domain = "example.com",
          strings = { "version: STSv1", "mode: enforce", "mx: mx1.example.com",
            "mx: *.example.net", "max_age: 86400" },
          mx_host = { "mx1.example.com", "*.example.net" } },
        summary = { success = 0, failure = 0 }, failures = {} }, result)
      local rows = sts:records()
      assert.equal(1, #rows)
      assert.equal("1", rows[1].record_id)
      assert.equal(w.now + 86400, rows[1].valid_end)
    end)
    it("without a record: no policy, a no-policy-found result, nothing stored", function()
      local policy, result, fresh = sts:get("example.com")
      assert.is_nil(policy)
      assert.is_true(fresh)
      assert.same({ policy = { type = "no-policy-found", domain = "example.com" },
        summary = { success = 0, failure = 0 }, failures = {} }, result)
      assert.same({}, sts:records())
    end)
    it("remembers a negative answer for recheck seconds, in memory", function()
      sts:get("example.com")
      assert.equal(1, w.dns_calls)
      w.now = w.now + 59
      assert.is_nil((sts:get("example.com")))
      assert.equal(1, w.dns_calls)
      w.now = w.now + 1
      sts:get("example.com")
      assert.equal(2, w.dns_calls)
      sts:get("example.com", { force = true })
      assert.equal(3, w.dns_calls)
    end)
    it("returns a temporary error on a DNS failure, with a result", function()
      w.txt["_mta-sts.example.com"] = { err = "servfail" }
      local policy, result, fresh, msg, code = sts:get("example.com")
      assert.is_nil(policy)
      assert.is_false(fresh)
      assert.equal("dns", code)
      assert.is_string(msg)
      assert.same({ { result_type = "sts-policy-fetch-error", failure_reason_code = "dns-servfail",
        count = 1 } }, result.failures)
      assert.equal("sts", result.policy.type)
    end)
    it("reports multiple records and stores nothing", function()
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;", "v=STSv1; id=2;" }
      local policy, result, fresh = sts:get("example.com")
      assert.is_nil(policy)
      assert.is_true(fresh)
      assert.equal("multiple-records", result.failures[1].failure_reason_code)
      assert.same({}, sts:records())
    end)
    it("reports a record syntax error and stores nothing", function()
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=not valid;" }
      local policy, result = sts:get("example.com")
      assert.is_nil(policy)
      assert.equal("record-syntax", result.failures[1].failure_reason_code)
      assert.same({}, sts:records())
    end)
    it("backs off for 300 s after a failed fetch, then tries again", function()
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
      w.policy["example.com"] = { err = "policy-fetch", reason = "certificate-expired" }
      local policy, result = sts:get("example.com")
      assert.is_nil(policy)
      assert.same({ { result_type = "sts-webpki-invalid",
        failure_reason_code = "certificate-expired", count = 1 } }, result.failures)
      assert.is_true(sts:records()[1].backoff)
      w.now = w.now + 299
      policy, result = sts:get("example.com")
      assert.is_nil(policy)
      assert.equal("back-off-after-recent-fetch-error", result.failures[1].failure_reason_code)
      assert.equal(1, w.fetch_calls)
      w.now = w.now + 1
      w.policy["example.com"] = ENFORCE
      assert.equal("enforce", sts:get("example.com").mode)
      assert.equal(2, w.fetch_calls)
    end)
    it("force looks again during a backoff", function()
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
      sts:get("example.com")                      -- 404: backoff
      w.policy["example.com"] = TESTING
      assert.equal("testing", sts:get("example.com", { force = true }).mode)
    end)
    it("classifies a 404 and a syntax error", function()
      w.txt["_mta-sts.a.example"] = { "v=STSv1; id=1;" }
      w.txt["_mta-sts.b.example"] = { "v=STSv1; id=1;" }
      w.policy["b.example"] = "version: STSv1\nmode: enforcing\n"
      local _, r404 = sts:get("a.example")
      assert.same({ result_type = "sts-policy-fetch-error", failure_reason_code = "http-status-404",
        count = 1 }, r404.failures[1])
      local _, rsyn = sts:get("b.example")
      assert.same({ result_type = "sts-policy-invalid", failure_reason_code = "policy-syntax",
        count = 1 }, rsyn.failures[1])
    end)
    it("stores a mode none policy and reports no-policy-found", function()
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
      w.policy["example.com"] = NONE
      local policy, result = sts:get("example.com")
      assert.equal("none", policy.mode)
      assert.equal("no-policy-found", result.policy.type)
      assert.equal(1, #sts:records())
    end)
    it("accepts a policy served as another type, and reports it", function()
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
      w.policy["example.com"] = { text = ENFORCE, type = "text/html" }
      local policy, result = sts:get("example.com")
      assert.equal("enforce", policy.mode)
      assert.same({ result_type = "sts-policy-invalid",
        failure_reason_code = "content-type-not-text-plain", count = 1 }, result.failures[1])
    end)
    it("fails with domain-syntax on a name that is no domain, in the positions of every failure",
      function()
      for _, name in ipairs({ "192.0.2.1", "bad..domain", "", ("a"):rep(64) .. ".example" }) do
        local n = select("#", sts:get(name))
        local policy, result, fresh, msg, code = sts:get(name)
        assert.equal(5, n)
        assert.is_nil(policy)
        assert.is_nil(result)         -- there is no policy domain to report on
        assert.is_false(fresh)
        assert.equal("domain-syntax", code)
        assert.is_string(msg)
      end
    end)
  end)

  describe("get, a cached policy", function()
    before_each(function()
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
      w.policy["example.com"] = ENFORCE
      assert(sts:get("example.com"))
      w.dns_calls, w.fetch_calls = 0, 0
    end)
    it("is served without DNS within recheck seconds", function()
      w.now = w.now + 59
      local policy, result, fresh = sts:get("example.com")
      assert.equal("enforce", policy.mode)
      assert.is_false(fresh)
      assert.equal(0, w.dns_calls)
      assert.same({}, result.failures)
    end)
    it("answers again from its memo: a new result, the policy and its strings shared",
      function()
        local p1, r1 = sts:get("example.com")     -- read from the cache, remembered
        local p2, r2 = sts:get("Example.COM")     -- from the memo
        assert.equal(p1, p2)
        assert.are_not.equal(r1, r2)
        assert.same(r1, r2)
        assert.are_not.equal(r1.summary, r2.summary)
        assert.are_not.equal(r1.failures, r2.failures)
        assert.equal(r1.policy.strings, r2.policy.strings)
        r2.summary.success = 1
        r2.failures[1] = { result_type = "x" }
        local _, r3 = sts:get("example.com")
        assert.same({ success = 0, failure = 0 }, r3.summary)
        assert.same({}, r3.failures)
        assert.equal(0, w.dns_calls + w.fetch_calls)
      end)
    it("sees another process's write of the row at once, memo or not", function()
      sts:get("example.com")
      sts:get("example.com")
      local script = dir .. "/writer.lua"
      util.write(script, "local c = assert(require('mtasts.core').cache_open(arg[1]))\n" ..
        "assert(c:upsert('example.com', '2', " .. ("%q"):format(TESTING) .. ", " .. w.now ..
        "))\nassert(c:close())\n")
      local out, status = util.run(util.lua_cmd() .. " " .. script .. " " .. dir .. "/db")
      assert.equal(0, status, out)
      local policy, result = sts:get("example.com")
      assert.equal("testing", policy.mode)
      assert.same({ "mx.example.com" }, result.policy.mx_host)
      assert.equal(0, w.dns_calls + w.fetch_calls)
    end)
    it("keeps the memo to recheck, valid_end and the touch of last_use", function()
      sts:get("example.com")
      w.now = w.now + 59
      sts:get("example.com")
      assert.equal(0, w.dns_calls)
      w.now = w.now + 1                            -- recheck (60 s) is up: the TXT record
      sts:get("example.com")
      assert.equal(1, w.dns_calls)
      assert.equal(w.now, sts.cache:lookup("example.com", w.now).last_use)
    end)
    it("holds at most two generations of HIT_MEMO domains", function()
      local client = require("mtasts.client")
      local saved = client.HIT_MEMO
      client.HIT_MEMO = 3
      for i = 1, 10 do
        local d = "d" .. i .. ".example"
        w.txt["_mta-sts." .. d] = { "v=STSv1; id=1;" }
        w.policy[d] = TESTING
        assert(sts:get(d))
        assert(sts:get(d))
      end
      client.HIT_MEMO = saved
      local n = 0
      for _ in pairs(sts.hits) do n = n + 1 end
      for _ in pairs(sts.hits_old) do n = n + 1 end
      assert.is_true(n <= 6, n .. " remembered")
      assert.equal("testing", (sts:get("d1.example")).mode)
    end)
    it("force re-reads the TXT record within recheck", function()
      sts:get("example.com", { force = true })
      assert.equal(1, w.dns_calls)
    end)
    it("same id after recheck: served fresh, marked checked, not fetched", function()
      w.now = w.now + 60
      local policy, _, fresh = sts:get("example.com")
      assert.equal("enforce", policy.mode)
      assert.is_true(fresh)
      assert.equal(1, w.dns_calls)
      assert.equal(0, w.fetch_calls)
      assert.equal(w.now, sts:records()[1].last_update)
      sts:get("example.com")
      assert.equal(1, w.dns_calls)      -- checked now, so within recheck again
    end)
    it("a new id: fetched and replaced", function()
      w.now = w.now + 60
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=2;" }
      w.policy["example.com"] = TESTING
      local policy, result, fresh = sts:get("example.com")
      assert.equal("testing", policy.mode)
      assert.is_true(fresh)
      assert.same({ "mx.example.com" }, result.policy.mx_host)
      assert.equal("2", sts:records()[1].record_id)
      assert.equal(TESTING, sts:records()[1].policy_text)
    end)
    it("a new id whose fetch fails: the cached policy, with a fallback detail", function()
      w.now = w.now + 60
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=2;" }
      w.policy["example.com"] = { err = "policy-fetch", reason = "certificate-host-mismatch" }
      local policy, result, fresh = sts:get("example.com")
      assert.equal("enforce", policy.mode)
      assert.is_false(fresh)
      assert.same({ { result_type = "sts-webpki-invalid",
        failure_reason_code = "certificate-host-mismatch+fallback-to-cached-policy", count = 1 } },
        result.failures)
      assert.equal("1", sts:records()[1].record_id)
    end)
    it("a DNS failure: the cached policy, with a fallback detail", function()
      w.now = w.now + 60
      w.txt["_mta-sts.example.com"] = { err = "timeout" }
      local policy, result, fresh = sts:get("example.com")
      assert.equal("enforce", policy.mode)
      assert.is_false(fresh)
      assert.equal("dns-timeout+fallback-to-cached-policy", result.failures[1].failure_reason_code)
    end)
    it("a removed TXT record never drops the policy before valid_end", function()
      w.txt["_mta-sts.example.com"] = nil
      for _, dt in ipairs({ 60, 3600, 86399 - 3660 }) do
        w.now = w.now + dt
        local policy, result = sts:get("example.com")
        assert.equal("enforce", policy.mode)
        assert.equal("no-record+fallback-to-cached-policy", result.failures[1].failure_reason_code)
      end
    end)
    it("expires at valid_end, then looks everything up again", function()
      w.now = w.now + 86400
      w.txt["_mta-sts.example.com"] = nil
      local policy, result = sts:get("example.com")
      assert.is_nil(policy)
      assert.equal("no-policy-found", result.policy.type)
    end)
  end)

  describe("get, a failure of this host (code local)", function()
    local logged, here
    before_each(function()
      logged = {}
      here = assert(mtasts.open{ path = dir .. "/local", resolver = w.resolver,
        fetcher = w.fetcher, clock = w.clock,
        log = function(level, m) logged[#logged + 1] = level .. ": " .. m end })
    end)
    after_each(function() here:close() end)

    it("a fetch that failed here: nil, nil, false, msg, local; no backoff, no result",
      function()
        w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
        w.policy["example.com"] = { err = "local" }
        local n = select("#", here:get("example.com"))
        local policy, result, fresh, msg, code = here:get("example.com")
        assert.equal(5, n)
        assert.is_nil(policy)
        assert.is_nil(result)              -- nothing to report: the domain is not at fault
        assert.is_false(fresh)
        assert.equal("local", code)
        assert.equal("failed", msg)
        assert.same({}, here:records())    -- no backoff row
        -- nothing remembered: the next call tries again, and succeeds once this host does
        w.policy["example.com"] = ENFORCE
        assert.equal("enforce", here:get("example.com").mode)
        assert.equal(3, w.fetch_calls)
      end)
    it("a lookup that failed here: the same, and no negative answer remembered", function()
      w.txt["_mta-sts.example.com"] = { err = "local" }
      local policy, result, fresh, msg, code = here:get("example.com")
      assert.same({ nil, nil, false, "_mta-sts.example.com TXT: failed", "local" },
        { policy, result, fresh, msg, code })
      assert.equal(0, w.fetch_calls)
      assert.is_false(here:answers_now("example.com"))
      assert.same({}, here:records())
    end)
    it("a backoff row looked at again with force: local leaves the row as it was", function()
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
      here:get("example.com")                                  -- 404: a backoff row
      local before = here:records()[1]
      w.policy["example.com"] = { err = "local" }
      w.now = w.now + 10
      local _, result, _, _, code = here:get("example.com", { force = true })
      assert.equal("local", code)
      assert.is_nil(result)
      assert.same(before, here:records()[1])
    end)
    it("with a cached policy: the policy as cached, no failure detail, the trouble logged",
      function()
        w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
        w.policy["example.com"] = ENFORCE
        assert(here:get("example.com"))
        -- the record check fails here
        w.now = w.now + 60
        w.txt["_mta-sts.example.com"] = { err = "local" }
        local policy, result, fresh, msg, code = here:get("example.com")
        assert.equal("enforce", policy.mode)
        assert.same({}, result.failures)
        assert.is_false(fresh)
        assert.is_nil(msg)
        assert.is_nil(code)
        assert.equal("err: _mta-sts.example.com TXT: failed", logged[#logged])
        -- a new id whose fetch fails here
        w.txt["_mta-sts.example.com"] = { "v=STSv1; id=2;" }
        w.policy["example.com"] = { err = "local" }
        policy, result = here:get("example.com")
        assert.equal("enforce", policy.mode)
        assert.same({}, result.failures)
        assert.equal("err: failed", logged[#logged])
        assert.equal("1", here:records()[1].record_id)
      end)
    it("delivery.plan defers on it, enforce or not", function()
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
      w.policy["example.com"] = { err = "local" }
      local policy, result, _, msg, code = here:get("example.com")
      local plan = require("mtasts.delivery").plan{ domain = "example.com",
        mx = { "mx1.example.com" }, policy = policy, result = result, policy_error = msg,
        policy_code = code }
      assert.matches("mta-sts policy lookup failed", plan.defer, 1, true)
      assert.same({}, plan.hosts)
      assert.is_false(plan.plaintext_fallback)
    end)
    it("refresh counts it as failed and keeps the row", function()
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
      w.policy["example.com"] = ENFORCE
      assert(here:get("example.com"))
      w.now = w.now + 13 * 3600
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=2;" }
      w.policy["example.com"] = { err = "local" }
      local summary = assert(here:refresh{})
      assert.equal(1, summary.failed)
      assert.same({ { domain = "example.com", error = "failed", code = "local" } },
        summary.failures)
      assert.equal("1", here:records()[1].record_id)
    end)
  end)

  describe("coalescing", function()
    it("shares one lookup and one fetch between concurrent callers", function()
      local d2 = util.tmpdir()
      local yielding = assert(mtasts.open{ path = d2, resolver = w.resolver, fetcher = w.fetcher,
        clock = w.clock, wait = function() coroutine.yield() end })
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
      w.policy["example.com"] = ENFORCE
      w.yield_in_fetch = true
      local got = {}
      local tasks = {}
      for i = 1, 5 do
        tasks[i] = coroutine.create(function() got[i] = yielding:get("example.com") end)
      end
      for _ = 1, 20 do
        for _, co in ipairs(tasks) do
          if coroutine.status(co) == "suspended" then assert(coroutine.resume(co)) end
        end
      end
      for i = 1, 5 do assert.equal("enforce", got[i].mode) end
      assert.equal(1, w.fetch_calls)
      assert.equal(1, w.dns_calls)
      assert.are_not.equal(got[1], got[2])   -- each caller gets its own tables
      yielding:close()
      util.run("rm -rf " .. d2)
    end)
  end)

  describe("refresh", function()
    it("prunes, extends, updates, deletes gone none-rows and keeps enforce rows", function()
      local doms = { same = ENFORCE, changed = TESTING, gone = ENFORCE, gonenone = NONE,
        stale = TESTING }
      for d, text in pairs(doms) do
        w.txt["_mta-sts." .. d .. ".example"] = { "v=STSv1; id=1;" }
        w.policy[d .. ".example"] = text
        assert.is_nil(select(4, sts:get(d .. ".example")))
      end
      -- stale.example is never used again; the others are used until the refresh
      w.now = w.now + 181 * 86400
      for d in pairs(doms) do
        if d ~= "stale" then sts.cache:upsert(d .. ".example", "1", doms[d], w.now - 13 * 3600) end
      end
      w.txt["_mta-sts.changed.example"] = { "v=STSv1; id=2;" }
      w.policy["changed.example"] = ENFORCE
      w.txt["_mta-sts.gone.example"] = nil
      w.txt["_mta-sts.gonenone.example"] = nil
      local summary = assert(sts:refresh{ window = 0, concurrency = 3 })
      assert.same({ due = 4, pruned = 1, extended = 1, updated = 1, deleted = 1, kept = 1,
        failed = 0, failures = {} }, summary)
      local rows = {}
      for _, r in ipairs(sts:records()) do rows[r.domain] = r end
      assert.is_nil(rows["stale.example"])
      assert.is_nil(rows["gonenone.example"])
      assert.equal(w.now + 86400, rows["same.example"].valid_end)
      assert.equal("2", rows["changed.example"].record_id)
      assert.equal(ENFORCE, rows["changed.example"].policy_text)
      assert.equal("enforce", rows["gone.example"].policy.mode)
    end)
    it("names each domain that failed, with the message and code of the lookup or fetch",
      function()
      for _, d in ipairs({ "dns", "fetch", "twice", "fine" }) do
        w.txt["_mta-sts." .. d .. ".example"] = { "v=STSv1; id=1;" }
        w.policy[d .. ".example"] = ENFORCE
        assert(sts:get(d .. ".example"))
      end
      w.now = w.now + 13 * 3600
      w.txt["_mta-sts.dns.example"] = { err = "servfail" }
      w.txt["_mta-sts.fetch.example"] = { "v=STSv1; id=2;" }
      w.policy["fetch.example"] = { err = "policy-fetch", reason = "certificate-expired" }
      w.txt["_mta-sts.twice.example"] = { "v=STSv1; id=1;", "v=STSv1; id=2;" }
      local summary = assert(sts:refresh{ concurrency = 1 })
      assert.equal(3, summary.failed)
      assert.equal(1, summary.extended)
      local by = {}
      for _, f in ipairs(summary.failures) do by[f.domain] = f end
      assert.same({ domain = "dns.example", error = "_mta-sts.dns.example TXT: failed",
        code = "dns", reason = "servfail" }, by["dns.example"])
      assert.same({ domain = "fetch.example", error = "failed", code = "policy-fetch",
        reason = "certificate-expired" }, by["fetch.example"])
      assert.equal("multiple-records", by["twice.example"].code)
      assert.matches("2 MTA-STS records", by["twice.example"].error, 1, true)
      assert.is_nil(by["fine.example"])
    end)
    it("a refresh of one domain that raises is that domain's failure", function()
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
      w.policy["example.com"] = ENFORCE
      assert(sts:get("example.com"))
      w.now = w.now + 13 * 3600
      w.resolver.txt = function() error("broke inside the resolver") end
      local summary = assert(sts:refresh{})
      assert.equal(1, summary.failed)
      assert.equal("raised", summary.failures[1].code)
      assert.matches("broke inside the resolver", summary.failures[1].error, 1, true)
    end)
  end)

  describe("dane", function()
    local function resolver(mx, tlsa)
      return { txt = w.resolver.txt,
        mx = function(_, d)
          local m = mx[d]
          if not m then return nil, d .. " MX: no such domain", "nxdomain", "secure" end
          if m.err then return nil, d .. " MX: failed", m.err, m.err end
          return m
        end,
        tlsa = function(_, host, port)
          assert.equal(25, port)
          local t = tlsa[host]
          if t == nil then
            return setmetatable({}, { __index = { dnssec = "secure" } })
          end
          if t.err then return nil, host .. " TLSA: failed", t.err, t.err end
          return t
        end }
    end
    local EE = { usage = 3, selector = 1, mtype = 1, data = ("\7"):rep(32) }
    local PKIX = { usage = 1, selector = 1, mtype = 1, data = ("\7"):rep(32) }
    local SHORT = { usage = 3, selector = 1, mtype = 1, data = ("\7"):rep(31) }

    it("secure MX: each host's TLSA status, usable records and a tlsa result", function()
      local c = assert(mtasts.open{ path = dir .. "/d", fetcher = w.fetcher, clock = w.clock,
        resolver = resolver({
          ["example.com"] = { dnssec = "secure", { preference = 10, host = "mx1.example.com." },
            { preference = 20, host = "MX2.example.com" },
            { preference = 30, host = "mx3.example.com" },
            { preference = 40, host = "mx4.example.com" } } }, {
          ["mx1.example.com"] = { dnssec = "secure", EE, PKIX },
          ["mx2.example.com"] = { dnssec = "secure", PKIX, SHORT },
          ["mx3.example.com"] = { err = "bogus" },
          ["mx4.example.com"] = { dnssec = "insecure", EE } }) })
      local d = c:dane("Example.COM")
      assert.is_true(d.mx_secure)
      assert.equal("secure", d.hosts["mx1.example.com"].status)
      assert.equal(1, d.hosts["mx1.example.com"].usable)
      assert.equal("tlsa", d.hosts["mx1.example.com"].result.policy.type)
      assert.equal(0, d.hosts["mx2.example.com"].usable, "PKIX usages and a short digest")
      assert.equal("bogus", d.hosts["mx3.example.com"].status)
      assert.equal("insecure", d.hosts["mx4.example.com"].status)
      assert.equal("secure", c:dane("example.com", { "mx9.example.com" })
        .hosts["mx9.example.com"].status, "the hosts given, secure denial: no records")
      c:close()
    end)

    it("an insecure or failed MX lookup: no DANE; a bogus one says so", function()
      local c = assert(mtasts.open{ path = dir .. "/d2", fetcher = w.fetcher, clock = w.clock,
        resolver = resolver({ ["plain.example"] = { dnssec = "insecure",
          { preference = 10, host = "mx.plain.example" } },
          ["bogus.example"] = { err = "bogus" } }, {}) })
      assert.same({ mx_secure = false, hosts = {} }, c:dane("plain.example"))
      local b = c:dane("bogus.example")
      assert.is_false(b.mx_secure)
      assert.equal("bogus", b.code)
      assert.equal("nxdomain", c:dane("none.example").code)
      c:close()
    end)
  end)

  describe("policy script", function()
    it("on_failure hears of each failed lookup; a host calls its own hooks", function()
      util.write(dir .. "/policy.lua", [[
        return {
          on_failure = function(ctx)
            log("warning", ctx.domain .. " " .. ctx.failure.result_type .. " " .. ctx.source)
          end,
          answer = function(ctx) return ctx.domain == "partner.example" and "encrypt" or nil end,
        }
      ]])
      local logged = {}
      local c = assert(mtasts.open{ path = dir .. "/p", resolver = w.resolver,
        fetcher = w.fetcher, clock = w.clock, policy = dir .. "/policy.lua",
        log = function(level, m) logged[#logged + 1] = level .. " " .. m end })
      w.txt["_mta-sts.broken.example"] = { "v=STSv1; id=1;" }
      c:get("broken.example")
      assert.equal("warning policy script: broken.example sts-policy-fetch-error fetched",
        logged[#logged])
      assert.equal("encrypt", c:policy_script():call("answer", { domain = "partner.example" }))
      c:close()
      local bad, msg, code, key = mtasts.open{ path = dir .. "/never", resolver = w.resolver,
        fetcher = w.fetcher, policy = dir .. "/none.lua" }
      assert.is_nil(bad)
      assert.equal("config", code)
      assert.equal("policy", key)
      assert.matches("No such file", msg, 1, true)
      assert.is_nil(io.open(dir .. "/never"), "nothing made")
    end)
  end)

  describe("maintain", function()
    -- clients whose waits yield, driven round-robin like a host's loop
    local function yielding_client(path)
      return assert(mtasts.open{ path = path, resolver = w.resolver, fetcher = w.fetcher,
        clock = w.clock, wait = function() coroutine.yield() end })
    end
    local function drive(fns)
      local cos, results = {}, {}
      for i, fn in ipairs(fns) do cos[i] = coroutine.create(fn) end
      local live = #cos
      while live > 0 do
        live = 0
        for i, co in ipairs(cos) do
          if coroutine.status(co) == "suspended" then
            local ok, r = coroutine.resume(co)
            assert(ok, r)
            if coroutine.status(co) == "dead" then results[i] = r else live = live + 1 end
          end
        end
      end
      return results
    end

    it("three servers on one cache refresh each domain once per round", function()
      for _, d in ipairs({ "a", "b", "c" }) do
        w.txt["_mta-sts." .. d .. ".example"] = { "v=STSv1; id=1;" }
        w.policy[d .. ".example"] = TESTING
        assert(sts:get(d .. ".example"))
      end
      local clients = {}
      for i = 1, 3 do clients[i] = yielding_client(dir .. "/db") end
      for round = 1, 2 do
        w.now = w.now + 13 * 3600
        for _, d in ipairs({ "a", "b", "c" }) do
          w.txt["_mta-sts." .. d .. ".example"] = { "v=STSv1; id=" .. (round + 1) .. ";" }
        end
        w.fetch_calls = 0
        w.yield_in_fetch = true
        local sums = drive({
          function() return assert(clients[1]:maintain{ holder = "s1" }) end,
          function() return assert(clients[2]:maintain{ holder = "s2" }) end,
          function() return assert(clients[3]:maintain{ holder = "s3" }) end })
        w.yield_in_fetch = false
        assert.equal(3, w.fetch_calls, "one fetch per domain in round " .. round)
        local updated, skipped = 0, 0
        for _, sum in ipairs(sums) do
          assert.equal(3, sum.due)
          updated = updated + sum.updated
          skipped = skipped + sum.leased + sum.kept
        end
        assert.equal(3, updated)
        assert.equal(6, skipped)
        for _, r in ipairs(sts:records()) do assert.equal(tostring(round + 1), r.record_id) end
      end
      for _, c in ipairs(clients) do c:close() end
    end)

    it("a lookup during the refresh of its domain waits and reads the refreshed row",
      function()
      w.txt["_mta-sts.a.example"] = { "v=STSv1; id=1;" }
      w.policy["a.example"] = TESTING
      local c = yielding_client(dir .. "/db")
      drive({ function() assert(c:get("a.example")) end })
      w.now = w.now + 13 * 3600
      w.txt["_mta-sts.a.example"] = { "v=STSv1; id=2;" }
      w.policy["a.example"] = ENFORCE
      w.fetch_calls = 0
      w.yield_in_fetch = true
      local got = drive({
        function() return assert(c:maintain{}) end,
        function()
          -- once the refresh is inside its fetch
          while w.fetch_calls == 0 do coroutine.yield() end
          return c:get("a.example")
        end })
      w.yield_in_fetch = false
      assert.equal(1, got[1].updated)
      assert.equal("enforce", got[2].mode)
      assert.equal(1, w.fetch_calls, "the lookup did not fetch again")
      c:close()
    end)

    it("a killed holder's lease ends; another takes the domain after it", function()
      w.txt["_mta-sts.a.example"] = { "v=STSv1; id=1;" }
      w.policy["a.example"] = TESTING
      assert(sts:get("a.example"))
      w.now = w.now + 13 * 3600
      assert.is_true(sts.cache:lease("refresh:a.example", "dead@host", w.now, 600))
      local sum = assert(sts:maintain{ holder = "s1" })
      assert.equal(1, sum.leased)
      w.now = w.now + 601
      sum = assert(sts:maintain{ holder = "s1" })
      assert.equal(1, sum.updated, "the testing policy's hour is over: fetched anew")
      assert.is_true(sts.cache:lease("refresh:a.example", "s2", w.now, 600), "released")
    end)
  end)

  describe("a damaged cache", function()
    it("opens, logs, and looks policies up without the cache", function()
      local path = dir .. "/damaged"
      util.run("mkdir -p " .. path .. " && cp spec/fixtures/damaged-page/* " .. path .. "/")
      local logged = {}
      local c = assert(mtasts.open{ path = path, resolver = w.resolver, fetcher = w.fetcher,
        clock = w.clock, log = function(_, m) logged[#logged + 1] = m end })
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
      w.policy["example.com"] = ENFORCE
      assert.equal("enforce", c:get("example.com").mode)
      assert.equal("enforce", c:get("example.com").mode)
      assert.equal(2, w.fetch_calls)                -- nothing could be cached
      assert.matches("mtasts cache rebuild", table.concat(logged, "\n"), 1, true)
      local rows, _, code = c:records()
      assert.is_nil(rows)
      assert.equal("corrupt", code)
      c:close()
    end)
  end)

  describe("misuse and lifecycle", function()
    it("raises on bad options and arguments", function()
      assert.has_error(function() mtasts.open{} end,
        "bad argument #1 to 'open' (path (the cache directory) is required)")
      assert.has_error(function() mtasts.open{ path = dir, bogus = 1 } end,
        "bad argument #1 to 'open' (unknown option 'bogus')")
      assert.has_error(function() sts:get(nil) end,
        "bad argument #1 to 'get' (string expected, got nil)")
      assert.has_error(function() sts:get("example.com", "force") end,
        "bad argument #2 to 'get' (table expected, got string)")
    end)
    it("deletes a domain, and closes", function()
      w.txt["_mta-sts.example.com"] = { "v=STSv1; id=1;" }
      w.policy["example.com"] = ENFORCE
      sts:get("example.com")
      assert.is_true(sts:delete("example.com"))
      assert.same({}, sts:records())
      local other = assert(mtasts.open{ path = dir .. "/db2", resolver = w.resolver,
        fetcher = w.fetcher })
      assert.is_true(other:close())
      assert.has_error(function() other:get("example.com") end,
        "attempt to use a closed mtasts.client")
    end)
  end)
end)
