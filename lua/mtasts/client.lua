--- mtasts.client: the policy lookup a mail server calls on every delivery (contract:
-- docs/architecture.md "Public contract"; rules: docs/conformance.md §5): the cache, the
-- record check, the fetch, and the TLSRPT result of each branch. Opened with
-- mtasts.open{...}. Reference: docs/client.md.
local core = require("mtasts.core")
local discover = require("mtasts.discover")
local tlsrpt = require("mtasts.tlsrpt.format")
local resolver = require("mtasts.resolver")
local fetch = require("mtasts.fetch")
local settings = require("mtasts.settings")
local metrics = require("mtasts.metrics")
local fleet = require("mtasts.fleet")

local type, pairs, ipairs, error, setmetatable, pcall = type, pairs, ipairs, error, setmetatable,
  pcall
local unpack, pack = table.unpack, table.pack

local _M = { DEFAULT_RECHECK = 60, REFRESH_AFTER = 12 * 3600, PRUNE_AFTER = 180 * 86400,
  DANE_MEMO = 10000, HIT_MEMO = 4096 }
local Client = {}
local client_mt = { __index = Client, __name = "mtasts.client" }

local OPTIONS = { path = true, resolver = true, fetcher = true, clock = true, wait = true,
  recheck = true, timeouts = true, cafile = true, capath = true, proxy = true,
  connect_to = true, nameserver = true, trust_anchor = true, log = true,
  allow_private_addresses = true, mode = true, policy = true, policy_budget = true,
  policy_exec = true, redis = true }

local function argerror(msg) error("bad argument #1 to 'open' (" .. msg .. ")", 3) end

-- Cache failures the client rides out (it goes on without the cache, and logs); anything
-- else (a directory it may not write, say) makes mtasts.open fail.
local DAMAGE = { corrupt = true, ["db-runrecovery"] = true, ["db-verify-bad"] = true,
  ["db-page-notfound"] = true, ["db-old-version"] = true, ["bdb-error"] = true }

-- The cache, or nil while it is unavailable (reopened at most once a minute).
local function cache_of(self)
  if self.cache then return self.cache end
  local now = self.clock()
  if self.cache_retry and now < self.cache_retry then return nil end
  local cache, err, code = core.cache_open(self.path, self.mode)
  if not cache then
    self.log("err", tostring(err))
    self.cache_retry, self.cache_err, self.cache_code = now + 60, err, code
    return nil
  end
  self.cache, self.cache_retry, self.cache_err, self.cache_code = cache, nil, nil, nil
  return cache
end

-- The failure of a call that needs the cache while it is unavailable: why it could not be
-- opened (corrupt, eacces, ...), as the last attempt said.
local function unavailable(self)
  return nil, "the cache is unavailable: " .. tostring(self.cache_err), self.cache_code or "corrupt"
end

--- Open a client. See docs/client.md for the options. Misuse raises (an unknown option, a
-- wrong type); a setting that cannot work fails with code "config" and the option's name as
-- the fourth value, before anything is made (no cache directory for a timeout of 0).
function _M.open(opts)
  if type(opts) ~= "table" then argerror("table expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not OPTIONS[k] then argerror("unknown option '" .. tostring(k) .. "'") end
  end
  if type(opts.path) ~= "string" then argerror("path (the cache directory) is required") end
  for _, k in ipairs({ "clock", "wait", "log" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "function" then argerror(k .. " must be a function") end
  end
  if opts.mode ~= nil and type(opts.mode) ~= "string" then argerror("mode must be a string") end
  if opts.policy ~= nil and type(opts.policy) ~= "string" then
    argerror("policy must be a file name")
  end
  local recheck = opts.recheck or _M.DEFAULT_RECHECK
  if type(recheck) ~= "number" then argerror("recheck must be a number") end
  local timeouts = opts.timeouts or {}
  if type(timeouts) ~= "table" then argerror("timeouts must be a table") end
  for _, k in ipairs({ "dns", "fetch" }) do
    if timeouts[k] ~= nil and type(timeouts[k]) ~= "number" then
      argerror("timeouts." .. k .. " must be a number")
    end
  end
  -- the values, before anything is made
  local ok, err, code, key = settings.nonempty("path", opts.path)
  if ok then ok, err, code, key = settings.at_least("recheck", recheck, 0) end
  if ok then ok, err, code, key = settings.timeouts(timeouts) end
  local mode
  if ok then ok, mode, code, key = settings.mode("mode", opts.mode) end
  if not ok then return nil, mode or err, code, key end

  local self = setmetatable({ recheck = recheck, clock = opts.clock or os.time,
    log = opts.log or function() end, negative = {}, negative_old = {}, negative_n = 0,
    negative_rotate = 0, inflight = {}, owned = {}, dane_memo = {}, dane_memo_old = {},
    dane_memo_n = 0, hits = {}, hits_old = {}, hits_n = 0, ascii_of = {}, ascii_n = 0 },
    client_mt)
  -- the default wait yields inside refresh's own loop, and blocks in poll elsewhere
  self.wait = opts.wait or function(fd, events, timeout)
    if self.yielding and coroutine.isyieldable() then
      coroutine.yield(fd, events, timeout)
    else
      core.poll(fd, events, timeout)
    end
  end
  self.path, self.mode = opts.path, mode
  self:_families()
  if opts.policy then
    -- the operator's policy script (docs/script.md): loaded now, so a broken one is a
    -- setting's failure at start
    local sc, serr, scode, skey = require("mtasts.script").load(opts.policy, { log = self.log,
      budget = opts.policy_budget, allow_exec = opts.policy_exec })
    if not sc then return nil, serr, scode, skey end
    self.script = sc
  end
  self.is_open = true
  -- the resolver and fetcher first: they check the rest of the settings (the CA file, the
  -- trust anchor, the nameservers), and a bad one must leave no cache directory behind
  local wait = function(...) return self.wait(...) end
  self.resolver = opts.resolver
  if not self.resolver then
    local r
    r, err, code, key = resolver.new{ nameserver = opts.nameserver,
      trust_anchor = opts.trust_anchor, timeout = timeouts.dns, wait = wait }
    if not r then self:close() return nil, err, code, key end
    self.resolver, self.owned.resolver = r, true
  end
  self.fetcher = opts.fetcher
  if not self.fetcher then
    local f
    f, err, code, key = fetch.new{
      resolver = type(self.resolver.a) == "function" and self.resolver or nil,
      cafile = opts.cafile, capath = opts.capath, proxy = opts.proxy,
      connect_to = opts.connect_to, timeout = timeouts.fetch, wait = wait,
      allow_private_addresses = opts.allow_private_addresses }
    if not f then self:close() return nil, err, code, key end
    self.fetcher, self.owned.fetcher = f, true
  end
  if opts.redis ~= nil then
    -- the fleet's shared tier (docs/fleet.md): consulted before a fetch, never for a hit
    local fl
    fl, err, code, key = fleet.new(opts.redis, { wait = wait, log = self.log,
      clock = self.clock, registry = self.registry })
    if not fl then self:close() return nil, err, code, key end
    self.fleet = fl
  end
  local cache
  cache, err, code = core.cache_open(opts.path, mode)
  if not cache then
    if not DAMAGE[code] then self:close() return nil, err, code end
    -- a damaged cache: mail keeps flowing without it until it is rebuilt
    self.log("err", tostring(err))
    self.cache_retry, self.cache_err, self.cache_code = self.clock() + 60, err, code
  end
  self.cache = cache
  return self
end

local function copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = copy(v) end
  return c
end

-- A result naming an STS policy domain without the policy (failures before a policy).
local function sts_failure(ascii, result_type, reason)
  local result = { policy = { type = "sts", domain = ascii },
    summary = { success = 0, failure = 0 }, failures = {} }
  tlsrpt.add_failure(result, result_type, reason)
  return result
end

local function policy_result(ascii, policy, text, info)
  local result = policy.mode == "none" and tlsrpt.no_policy_result(ascii)
    or tlsrpt.sts_result(ascii, text, policy)
  if info and info.content_type_ok == false and policy.mode ~= "none" then
    -- RFC 8461 §3.3: the policy SHOULD be text/plain; accepted since it parses, and noted
    tlsrpt.add_failure(result, "sts-policy-invalid", "content-type-not-text-plain")
  end
  return result
end

-- Cache hits within recheck are remembered per domain (two generations of at most
-- _M.HIT_MEMO entries) with the row's version: while the cache says the row has that version
-- (cache:version, which reads the shared counters without a lock) and the memo's time holds
-- (the row's valid_end, its next touch, last_update + recheck), sts:get answers from it
-- without reading the row. The policy table and the result's policy strings and MX list
-- are shared by every answer (docs/client.md: read-only); the result table is new each time.
local function hit_result(ascii, m)
  return { policy = { type = "sts", domain = ascii, strings = m.strings, mx_host = m.mx },
    summary = { success = 0, failure = 0 }, failures = {} }
end

local function remember_hit(self, ascii, row)
  local result = tlsrpt.sts_result(ascii, row.policy_text, row.policy)
  if not row.version then return result end      -- touched just now: next time
  local p = result.policy
  local m = { version = row.version, policy = row.policy, strings = p.strings, mx = p.mx_host,
    until_ = math.min(row.valid_end, row.last_use + core.touch_seconds,
      row.last_update + self.recheck) }
  if self.hits_n >= _M.HIT_MEMO then
    self.hits_old, self.hits, self.hits_n = self.hits, {}, 0
  end
  if not self.hits[ascii] then self.hits_n = self.hits_n + 1 end
  self.hits[ascii] = m
  return result
end

-- Record lookup failure reasons for TLSRPT details.
local function record_reason(code, reason)
  if code == "dns" then return "dns-" .. tostring(reason) end
  return code
end

function Client:_upsert(ascii, record_id, text, now, info)
  local cache = cache_of(self)
  if not cache then return end
  local shared = info and info.shared
  -- a policy from the fleet's Redis is stored as fetched when it was fetched (its expiry is
  -- that fetch's), and as checked now
  local ok, err = cache:upsert(ascii, record_id, text, shared or now)
  if ok and shared and shared < now then ok, err = cache:mark_checked(ascii, now) end
  if not ok then self.log("err", "cache: " .. tostring(err)) end
end

-- Negative answers ("no MTA-STS record") are remembered for `recheck` seconds in two
-- generations: the current one is retired every `recheck` seconds, or at NEGATIVE_MAX
-- entries, and the one before it is dropped then. So a server asked about endless distinct
-- domains without MTA-STS holds at most two generations of them.
local NEGATIVE_MAX = 100000

local function remember_negative(self, ascii, now, result)
  if now >= self.negative_rotate or self.negative_n >= NEGATIVE_MAX then
    self.negative_old, self.negative, self.negative_n = self.negative, {}, 0
    self.negative_rotate = now + self.recheck
  end
  if not self.negative[ascii] then self.negative_n = self.negative_n + 1 end
  self.negative[ascii] = { expires = now + self.recheck, result = result }
end

local function negative_of(self, ascii)
  return self.negative[ascii] or self.negative_old[ascii]
end

local function forget_negative(self, ascii)
  if self.negative[ascii] then self.negative_n = self.negative_n - 1 end
  self.negative[ascii], self.negative_old[ascii] = nil, nil
end

-- The client's metric families (docs/metrics.md): what DNS and HTTPS cost, how fetches end,
-- what refresh passes did. sts:metrics() is the registry, sts:stats() its values.
function Client:_families()
  local reg = metrics.registry()
  self.registry = reg
  self.m_dns = reg:histogram("mtasts_dns_lookup_seconds",
    "Time to look up a domain's _mta-sts TXT record, lookups of every outcome.")
  self.m_fetch = reg:histogram("mtasts_policy_fetch_seconds",
    "Time to fetch a policy file over HTTPS, fetches of every outcome.")
  self.m_fetches = reg:counter("mtasts_policy_fetches_total",
    "Policy fetches by outcome: ok, a TLSRPT result type, or local (this host failed).",
    { "result" }, { series = { { "ok" }, { "sts-policy-fetch-error" },
      { "sts-policy-invalid" }, { "sts-webpki-invalid" }, { "local" } } })
  self.m_refresh_runs = reg:counter("mtasts_refresh_runs_total",
    "Proactive refresh passes (refresh and maintain).")
  self.m_refresh = reg:counter("mtasts_refresh_domains_total",
    "Domains a refresh pass took up, by outcome; leased: another process held the lease.",
    { "outcome" }, { series = { { "extended" }, { "updated" }, { "deleted" }, { "kept" },
      { "failed" }, { "leased" } } })
end

-- The _mta-sts record, timed.
function Client:_record(ascii)
  local t0 = core.monotonic()
  local record, err, code, reason = discover.record(self.resolver, ascii)
  self.m_dns:observe(core.monotonic() - t0)
  return record, err, code, reason
end

-- The policy file, timed and counted by outcome.
function Client:_policy(ascii)
  local t0 = core.monotonic()
  local policy, text, info, reason = discover.policy(self.fetcher, ascii)
  self.m_fetch:observe(core.monotonic() - t0)
  local result = policy and "ok" or info == "local" and "local" or
    fetch.result_type(info, reason)
  self.m_fetches:labels(result):inc()
  return policy, text, info, reason
end

-- The policy for a record this host has no current policy for: from the fleet's Redis when
-- it has one for this record id, fetched no earlier than this host's row was,
-- else fetched here and written to Redis. While another host of the fleet holds the lease
-- on fetching it, wait a little for its policy (docs/fleet.md). Returns what _policy does;
-- info.shared is the fetch time of a policy from Redis.
function Client:_obtain(ascii, record, row, now)
  local fl = self.fleet
  if not fl then return self:_policy(ascii) end
  -- what the host has: when its policy was fetched, or last found current by a refresh
  -- (valid_end - max_age; a recheck within `recheck` does not move it)
  local since = row and not row.backoff and row.valid_end - row.policy.max_age or nil
  local policy, text, fetched = fl:policy(ascii, record.id, since, now)
  if policy then return policy, text, { content_type_ok = true, shared = fetched } end
  local leased
  if text ~= "error" then leased = fl:lease(ascii) end
  if leased and text == "miss" then
    -- another host may have written it and let go of the lease since the read above
    policy, text, fetched = fl:policy(ascii, record.id, since, now)
    if policy then
      fl:release(ascii)
      return policy, text, { content_type_ok = true, shared = fetched }
    end
  end
  if leased == false then
    local deadline = core.monotonic() + fleet.LEASE_WAIT
    while core.monotonic() < deadline do
      self.wait(-1, "r", 0.1)
      policy, text, fetched = fl:policy(ascii, record.id, since, now)
      if policy then return policy, text, { content_type_ok = true, shared = fetched } end
      if text == "error" or text == "rejected" then break end
    end
  end
  local info, reason
  policy, text, info, reason = self:_policy(ascii)
  if policy then fl:put(ascii, record.id, text, now, policy.max_age) end
  if leased then fl:release(ascii) end
  return policy, text, info, reason
end

--- The registry of the client's metric families: a host adds its own and exposes them all
-- (mtasts.postfix does).
function Client:metrics()
  if not self.is_open then error("attempt to use a closed mtasts.client", 2) end
  return self.registry
end

--- The client's counters as a plain table ({ [family] = { [labels] = value } }).
function Client:stats()
  if not self.is_open then error("attempt to use a closed mtasts.client", 2) end
  return self.registry:values()
end

-- No usable row: look the record up and fetch (docs/conformance.md §5, "No usable row").
-- When this host fails (code local), nothing is stored, remembered or reported: the
-- domain is not at fault, and the caller defers.
function Client:_first(ascii, now)
  local record, rerr, rcode, rreason = self:_record(ascii)
  if not record and rcode == "local" then return nil, nil, false, rerr, "local" end
  if not record then
    if rcode == "no-record" then
      local result = tlsrpt.no_policy_result(ascii)
      if self.recheck > 0 then remember_negative(self, ascii, now, result) end
      return nil, copy(result), true
    end
    local result = sts_failure(ascii, "sts-policy-fetch-error", record_reason(rcode, rreason))
    if rcode == "dns" then return nil, result, false, rerr, "dns" end
    return nil, result, true   -- multiple records, record syntax: nothing stored
  end
  local policy, text, info, reason = self:_obtain(ascii, record, nil, now)
  if not policy then
    local code = info
    if code == "local" then return nil, nil, false, text, "local" end
    self:_upsert(ascii, record.id, nil, now)    -- back off for 300 s
    return nil, sts_failure(ascii, fetch.result_type(code, reason), reason),
      true
  end
  self:_upsert(ascii, record.id, text, now, info)
  return policy, policy_result(ascii, policy, text, info), true
end

-- The lookup itself, without coalescing.
function Client:_get(ascii, force)
  local now = self.clock()
  local neg = negative_of(self, ascii)
  if neg then
    if not force and now < neg.expires then return nil, copy(neg.result), false end
    forget_negative(self, ascii)
  end
  local cache = cache_of(self)
  local row, cerr
  if cache then row, cerr = cache:lookup(ascii, now) end
  if cerr then self.log("err", "cache: " .. tostring(cerr)) end  -- carry on without it
  if not row then return self:_first(ascii, now) end
  if row.backoff then
    if force then return self:_first(ascii, now) end
    return nil, sts_failure(ascii, "sts-policy-fetch-error", "back-off-after-recent-fetch-error"),
      false
  end
  local cached = row.policy
  if not force and now - row.last_update < self.recheck then
    return cached, remember_hit(self, ascii, row), false
  end
  local record, rerr, rcode, rreason = self:_record(ascii)
  if not record and rcode == "local" then
    -- this host failed, not the domain: the cached policy as it is, nothing to report
    self.log("err", tostring(rerr))
    return cached, tlsrpt.sts_result(ascii, row.policy_text, cached), false
  end
  if not record then
    -- keep serving the cached policy: a removed or blocked record never drops it early
    local result = tlsrpt.sts_result(ascii, row.policy_text, cached)
    local reason = record_reason(rcode, rreason)
    if cached.mode ~= "none" then reason = reason .. "+fallback-to-cached-policy" end
    tlsrpt.add_failure(result, "sts-policy-fetch-error", reason)
    return cached, result, false
  end
  if record.id == row.record_id then
    local ok, err = cache:mark_checked(ascii, now)
    if ok == nil then self.log("err", "cache: " .. tostring(err)) end
    return cached, tlsrpt.sts_result(ascii, row.policy_text, cached), true
  end
  local policy, text, info, reason = self:_obtain(ascii, record, row, now)
  if not policy then
    local result = tlsrpt.sts_result(ascii, row.policy_text, cached)
    if info == "local" then
      self.log("err", tostring(text))    -- this host failed: nothing to report
    else
      tlsrpt.add_failure(result, fetch.result_type(info, reason),
        reason .. "+fallback-to-cached-policy")
    end
    return cached, result, false
  end
  self:_upsert(ascii, record.id, text, now, info)
  return policy, policy_result(ascii, policy, text, info), true
end

-- Something to wait on while another coroutine looks the same domain up.
function Client:_fd()
  local f = self.fetcher
  if type(f.fd) == "function" then return f:fd() end
  return -1
end

--- Look up the policy of `domain`. Returns policy, result, fresh; policy nil without an
-- error means no MTA-STS (or backing off). On a failure: nil, result, false, message, code;
-- for a name that is no domain, result is nil (there is no policy domain to report on) and
-- code is "domain-syntax"; when this host failed (the CA file vanished, no memory, the
-- resolver broke) and nothing is cached, result is nil (nothing to report) and code is
-- "local": defer, and fix this host.
-- opts.force re-reads the TXT record whatever recheck says.
function Client:get(domain, opts)
  if getmetatable(self) ~= client_mt then error("bad self (mtasts.client expected)", 2) end
  if not self.is_open then error("attempt to use a closed mtasts.client", 2) end
  if type(domain) ~= "string" then
    error("bad argument #1 to 'get' (string expected, got " .. type(domain) .. ")", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'get' (table expected, got " .. type(opts) .. ")", 2)
  end
  local ascii = self.ascii_of[domain]    -- core.domain, remembered (at most HIT_MEMO names)
  if not ascii then
    local err, code
    ascii, err, code = core.domain(domain)
    if not ascii then return nil, nil, false, err, code end
    if self.ascii_n >= _M.HIT_MEMO then self.ascii_of, self.ascii_n = {}, 0 end
    self.ascii_of[domain], self.ascii_n = ascii, self.ascii_n + 1
  end
  local force = opts and opts.force or false
  if not force and not self.inflight[ascii] then   -- a hit remembered (remember_hit)
    local m = self.hits[ascii] or self.hits_old[ascii]
    if m and self.clock() < m.until_ and self.cache and self.cache:version(ascii) == m.version
    then
      return m.policy, hit_result(ascii, m), false
    end
  end
  local key = force and ascii .. " force" or ascii
  local slot = self.inflight[ascii]
  while slot and slot.refresh do   -- maintain is refreshing it: the cache has it next
    while not slot.done do self.wait(self:_fd(), "r", 0.05) end
    slot = self.inflight[ascii]
  end
  slot = self.inflight[key]
  if slot then   -- another caller is looking this domain up: share its answer
    while not slot.done do self.wait(self:_fd(), "r", 0.05) end
    if slot.err then error(slot.err, 0) end
    return unpack(copy(slot.ret), 1, slot.ret.n)
  end
  slot = {}
  self.inflight[key] = slot
  local ret = pack(pcall(self._get, self, ascii, force))
  self.inflight[key] = nil
  slot.done = true
  if not ret[1] then
    slot.err = ret[2]
    error(ret[2], 0)
  end
  slot.ret = pack(unpack(ret, 2, ret.n))
  local result = ret[3]
  if self.script and result and result.failures and result.failures[1] then
    -- the policy script's on_failure hears of it (once per lookup; coalesced callers share it)
    local f = result.failures[1]
    self.script:call("on_failure", { domain = ascii, policy = ret[2], result = result,
      source = ret[4] and "fetched" or "cache", error = ret[5],
      failure = { result_type = f.result_type, reason = f.failure_reason_code } })
  end
  return unpack(ret, 2, ret.n)
end

--- The policy script given to mtasts.open (an mtasts.script), or nil: a host calls its own
-- hooks with it (`sts:policy_script():call("answer", ctx, default)`, docs/script.md).
function Client:policy_script()
  if not self.is_open then error("attempt to use a closed mtasts.client", 2) end
  return self.script
end

--- The DANE state of a domain's MX hosts (RFC 7672 §2.2), for delivery.plan's `dane`.
-- mx: the MX host names in use (default: the MX records looked up now). The MX RRset must be
-- DNSSEC-secure for DANE to apply (else mx_secure = false and nothing else is asked); then
-- each host's TLSA RRset (_25._tcp) is looked up. Returns { mx_secure =, hosts = { [host] =
-- { status = "secure"|"insecure"|"bogus"|"failed", records =, usable =, error =,
-- result = } }, error =, code = } where result is a TLSRPT tlsa result for the recipient
-- domain's report (docs/client.md). A bogus MX RRset gives code "bogus" (defer). Answers are
-- cached by libunbound for their TTLs.
function Client:dane(domain, mx)
  if not self.is_open then error("attempt to use a closed mtasts.client", 2) end
  if type(domain) ~= "string" then
    error("bad argument #1 to 'dane' (string expected, got " .. type(domain) .. ")", 2)
  end
  if mx ~= nil and type(mx) ~= "table" then
    error("bad argument #2 to 'dane' (table expected, got " .. type(mx) .. ")", 2)
  end
  local ascii, err, code = core.domain(domain)
  if not ascii then return { mx_secure = false, hosts = {}, error = err, code = code } end
  -- the answer of a lookup without `mx` is kept `recheck` seconds (the socketmap server asks
  -- for every lookup); two generations of at most DANE_MEMO entries
  local now = self.clock()
  if mx == nil and self.recheck > 0 then
    local m = self.dane_memo[ascii] or self.dane_memo_old[ascii]
    if m and now < m.expires then return copy(m.value) end
  end
  local out = self:_dane(ascii, mx)
  if mx == nil and self.recheck > 0 and out.code ~= "bogus" then
    if self.dane_memo_n >= _M.DANE_MEMO then
      self.dane_memo_old, self.dane_memo, self.dane_memo_n = self.dane_memo, {}, 0
    end
    if not self.dane_memo[ascii] then self.dane_memo_n = self.dane_memo_n + 1 end
    self.dane_memo[ascii] = { expires = now + self.recheck, value = copy(out) }
  end
  return out
end

function Client:_dane(ascii, mx)
  return discover.dane(self.resolver, ascii, mx)
end

--- True when get(domain) would answer now, without DNS or HTTPS: a lookup of it is in
-- flight already, or a negative answer is remembered, or the cache holds a backoff row or a
-- row checked less than `recheck` seconds ago. For servers that cap their lookups in flight
-- (mtasts.postfix): what the cache answers need not wait behind the cap.
function Client:answers_now(domain)
  if not self.is_open then error("attempt to use a closed mtasts.client", 2) end
  local ascii = core.domain(domain)
  if not ascii then return true end                 -- answered at once: domain-syntax
  if self.inflight[ascii] then return true end
  local now = self.clock()
  local neg = negative_of(self, ascii)
  if neg and now < neg.expires then return true end
  local cache = cache_of(self)
  local row = cache and cache:lookup(ascii, now)
  return row ~= nil and (row.backoff or now - row.last_update < self.recheck) or false
end

--- The cached row of `domain` as `records` shows it, without DNS or HTTPS: where a policy
-- came from, whether the domain is backing off. nil when there is none; nil, message, code
-- on failure (domain-syntax, or the cache's codes).
function Client:cached(domain)
  if not self.is_open then error("attempt to use a closed mtasts.client", 2) end
  local ascii, err, code = core.domain(domain)
  if not ascii then return nil, err, code end
  local cache = cache_of(self)
  if not cache then return unavailable(self) end
  return cache:lookup(ascii, self.clock())
end

--- Every cached row, most recently used first (docs/cache.md shows a row).
function Client:records()
  if not self.is_open then error("attempt to use a closed mtasts.client", 2) end
  local cache = cache_of(self)
  if not cache then return unavailable(self) end
  return cache:list()
end

--- Forget a domain: its row and any remembered negative answer.
function Client:delete(domain)
  if not self.is_open then error("attempt to use a closed mtasts.client", 2) end
  local ascii, err, code = core.domain(domain)
  if not ascii then return nil, err, code end
  forget_negative(self, ascii)
  local cache = cache_of(self)
  if not cache then return unavailable(self) end
  return cache:delete(ascii)
end

-- Refresh one due row (docs/conformance.md §5, proactive refresh); returns the outcome, and
-- for "failed" the message, code and TLSRPT reason of the lookup or fetch that failed.
function Client:_refresh_one(ascii, now)
  local row = self.cache:lookup(ascii, now)
  local record, rerr, rcode, rreason = self:_record(ascii)
  if not record then
    if rcode == "no-record" and (not row or row.backoff or row.policy.mode == "none") then
      self.cache:delete(ascii)
      return "deleted"
    end
    if rcode == "no-record" then return "kept" end
    return "failed", rerr, rcode, rreason
  end
  if row and not row.backoff and record.id == row.record_id then
    self.cache:mark_checked(ascii, now, true)
    return "extended"
  end
  local policy, text, info, freason = self:_obtain(ascii, record, row, now)
  if not policy then return "failed", text, info, freason end
  self:_upsert(ascii, record.id, text, now, info)
  return "updated"
end

--- One proactive-refresh pass: prune rows unused for 180 days, then refresh rows not
-- updated for 12 hours, `concurrency` at a time, their starts spread over `window` seconds
-- with jitter. Returns counts { due, pruned, extended, updated, deleted, kept, failed } and
-- failures = { { domain =, error =, code =, reason = }, ... } (in the order they finished).
function Client:refresh(opts)
  if not self.is_open then error("attempt to use a closed mtasts.client", 2) end
  if not cache_of(self) then return unavailable(self) end
  opts = opts or {}
  local window, concurrency = opts.window or 0, opts.concurrency or 10
  local now = self.clock()
  local summary = { due = 0, pruned = 0, extended = 0, updated = 0, deleted = 0, kept = 0,
    failed = 0, failures = {} }
  local pruned, err, code = self.cache:prune(now, opts.unused_for or _M.PRUNE_AFTER)
  if not pruned then return nil, err, code end
  summary.pruned = pruned
  self.m_refresh_runs:inc()
  local due
  due, err, code = self.cache:due_for_refresh(now, opts.older_than or _M.REFRESH_AFTER)
  if not due then return nil, err, code end
  summary.due = #due
  local starts, t0 = {}, core.monotonic()
  for i = 1, #due do starts[i] = window > 0 and math.random() * window or 0 end
  local next_i, finished, workers = 1, 0, {}
  for w = 1, math.min(concurrency, #due) do
    workers[w] = coroutine.create(function()
      while next_i <= #due do
        local i = next_i
        next_i = next_i + 1
        while core.monotonic() - t0 < starts[i] do coroutine.yield(-1, "r", 0.05) end
        local ok, outcome, ferr, fcode, freason = pcall(self._refresh_one, self, due[i],
          self.clock())
        if not ok then
          settings.pass_interrupt(outcome)
          self.log("err", "refresh " .. due[i] .. ": " .. tostring(outcome))
          outcome, ferr, fcode = "failed", tostring(outcome), "raised"
        end
        if outcome == "failed" then
          summary.failures[#summary.failures + 1] = { domain = due[i], error = tostring(ferr),
            code = fcode, reason = freason }
        end
        summary[outcome] = summary[outcome] + 1
    self.m_refresh:labels(outcome):inc()
        self.m_refresh:labels(outcome):inc()
        finished = finished + 1
        if opts.progress then opts.progress(finished, #due, due[i], outcome) end
      end
    end)
  end
  self.yielding = true
  local ok, perr = pcall(function()
    repeat
      local live, fd, timeout = 0, -1, 0.05
      for _, co in ipairs(workers) do
        if coroutine.status(co) == "suspended" then
          local r, wfd, _, wt = coroutine.resume(co)
          if not r then error(wfd, 0) end
          if coroutine.status(co) == "suspended" then
            live = live + 1
            if wfd and wfd >= 0 then fd = wfd end
            if wt and wt < timeout then timeout = wt end
          end
        end
      end
      if live > 0 then core.poll(fd, "r", timeout) end
    until live == 0
  end)
  self.yielding = false
  if not ok then error(perr, 0) end
  return summary
end

-- This process as a lease holder: "<pid>@<host name>".
local holder_name
local function holder()
  if holder_name then return holder_name end
  local f = io.open("/proc/self/stat")
  local pid = f and f:read("n") or 0
  if f then f:close() end
  f = io.open("/proc/sys/kernel/hostname")
  local host = f and f:read("l") or "localhost"
  if f then f:close() end
  holder_name = ("%d@%s"):format(pid, host):sub(1, 128)
  return holder_name
end

--- One maintenance pass for a long-running host, driven from a coroutine of the host's
-- loop (the socketmap server runs it on a timer): as refresh, but one domain at a time and
-- every wait through the client's `wait`, so lookups go on meanwhile; each domain under a
-- lease in the cache, so that several servers sharing it refresh a domain once (the others
-- count it as `leased`); coalesced with lookups (a lookup of the domain in flight is waited
-- for, and one that comes during the refresh waits for it and reads the refreshed row).
-- opts: older_than, unused_for (as refresh), lease (seconds, default 600), holder (default
-- "<pid>@<host>"), spacing (seconds between two domains' starts, default 0) and sleep
-- (function(seconds), the host's; default the client's wait). Returns the summary of
-- refresh plus `leased`, or nil, message, code when the cache fails.
function Client:maintain(opts)
  if not self.is_open then error("attempt to use a closed mtasts.client", 2) end
  if not cache_of(self) then return unavailable(self) end
  opts = opts or {}
  local lease, spacing = opts.lease or 600, opts.spacing or 0
  local me = opts.holder or holder()
  local sleep = opts.sleep or function(secs) self.wait(-1, "r", secs) end
  local now = self.clock()
  local summary = { due = 0, pruned = 0, extended = 0, updated = 0, deleted = 0, kept = 0,
    failed = 0, leased = 0, failures = {} }
  local pruned, err, code = self.cache:prune(now, opts.unused_for or _M.PRUNE_AFTER)
  if not pruned then return nil, err, code end
  summary.pruned = pruned
  self.m_refresh_runs:inc()
  local older_than = opts.older_than or _M.REFRESH_AFTER
  local due
  due, err, code = self.cache:due_for_refresh(now, older_than)
  if not due then return nil, err, code end
  summary.due = #due
  for i, ascii in ipairs(due) do
    if not self.is_open then break end
    if i > 1 and spacing > 0 then sleep(spacing) end
    -- a lookup in flight may be refreshing it already: wait, then see if it still is due
    local busy = self.inflight[ascii]
    while busy do
      while not busy.done do self.wait(self:_fd(), "r", 0.05) end
      busy = self.inflight[ascii]
    end
    now = self.clock()
    local got, held_by, lcode = self.cache:lease("refresh:" .. ascii, me, now, lease)
    local outcome, ferr, fcode, freason
    if got == nil then
      outcome, ferr, fcode = "failed", held_by, lcode   -- the cache's trouble, its code
    elseif not got then
      outcome = "leased"
    else
      local row = self.cache:lookup(ascii, now)
      if row and not row.backoff and now - row.last_update < older_than then
        outcome = "kept"      -- another process refreshed it since the scan
      else
        local slot = { refresh = true }
        self.inflight[ascii] = slot
        local ok
        ok, outcome, ferr, fcode, freason = pcall(self._refresh_one, self, ascii, now)
        self.inflight[ascii] = nil
        slot.done = true
        if not ok then
          settings.pass_interrupt(outcome)
          self.log("err", "refresh " .. ascii .. ": " .. tostring(outcome))
          outcome, ferr, fcode = "failed", tostring(outcome), "raised"
        end
      end
      self.cache:release("refresh:" .. ascii, me)
    end
    if outcome == "failed" then
      summary.failures[#summary.failures + 1] = { domain = ascii, error = tostring(ferr),
        code = fcode, reason = freason }
    end
    summary[outcome] = summary[outcome] + 1
    self.m_refresh:labels(outcome):inc()
  end
  return summary
end

--- Close the cache, and the resolver and fetcher the client made. Returns true, or nil,
-- message, code when one of them failed to close (the rest are closed all the same); a
-- second close returns true.
function Client:close()
  if not self.is_open then return true end
  self.is_open = false
  local ok, err, code = true, nil, nil
  local function step(obj)
    local r, e, c = obj:close()
    if r == nil and ok then ok, err, code = nil, e, c end
  end
  if self.owned.fetcher and self.fetcher then step(self.fetcher) end
  if self.owned.resolver and self.resolver then step(self.resolver) end
  if self.cache then step(self.cache) end
  if self.fleet then self.fleet:close() end
  self.cache, self.resolver, self.fetcher, self.fleet = nil, nil, nil, nil
  if not ok then return nil, err, code end
  return true
end
client_mt.__close = Client.close
client_mt.__gc = Client.close

return _M
