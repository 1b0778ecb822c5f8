--- mtasts.tlsrpt.store: the TLSRPT result store (RFC 8460): recording results, building the daily
-- reports, delivering them. Opened with tlsrpt.open{...}. Reference: docs/tlsrpt.md.
--
-- Storage (results.db in a cache environment, module/results.c) holds counters under keys
--   "R" day NUL kind report-domain NUL recipient-domain NUL flag rtype policy [NUL detail]
-- kind "d" (recipient-domain report) or "h" (MX host / DANE report); flag "1" (asks for a
-- report), "0" (a result of delivering a report: included, never the reason for one) or "2"
-- (asks for a report, and is reported as it came: a libtlsrpt datagram's, never left out);
-- rtype "S" (summary: success, failure), "D" (failure detail: count) or "P" (the TLSRPT
-- record the MTA used, in place of the policy: how many results named it); policy and detail
-- are canonical encodings (made by results:add in module/lua_results.c, read back here by
-- policy_of_blob and detail_of_blob), so equal fields merge into one counter
-- (docs/conformance.md §7.2). The report domain is the policy domain unless add says
-- otherwise (opts.domain).
-- Marks (a reader's position, set_mark) live under "S" name.
-- Delivery state lives under "Q" day NUL kind policy-domain NUL [destination] as JSON.
local core = require("mtasts.core")
local json = require("mtasts.json")
local tlsrpt = require("mtasts.tlsrpt.format")
local resolver = require("mtasts.resolver")
local fetch = require("mtasts.fetch")
local settings = require("mtasts.settings")

local type, pairs, ipairs, error, tostring, setmetatable, pcall = type, pairs, ipairs,
  error, tostring, setmetatable, pcall
local sort, format, math_type, unpack, concat = table.sort, string.format, math.type,
  string.unpack, table.concat
local monotonic = core.monotonic

-- BATCH_KEYS: with the default batch_size, distinct counters that make add commit before
-- BATCH_SIZE results (memory: about 250 bytes each; BATCH_KEYS / KEYS_PER_TXN transactions).
-- A store given its own batch_size commits by results and time only, as it is told.
local _M = { RETENTION_DAYS = 10, BATCH_SIZE = 100000, BATCH_INTERVAL = 1.0, BATCH_KEYS = 20000,
  WINDOW = 4 * 3600,
  MAX_ATTEMPTS = 8, BACKOFF = 900, BACKOFF_MAX = 6 * 3600, LEASE = 900, MAX_RUA = 10,
  SENDMAIL = "/usr/sbin/sendmail -i -t", SENDMAIL_TIMEOUT = 120,
  KEYS_PER_TXN = 500 }   -- module/results.c's APPLY_CHUNK

local Store = {}
local store_mt = { __index = Store, __name = "mtasts.tlsrpt.store" }

-- Facts about the reports Store:report made that are not in their JSON (whether a failure
-- or a TLSA result is in it), for send to decide with; private to this module.
local facts_of = setmetatable({}, { __mode = "k" })

local OPTIONS = { path = true, organization = true, contact = true, submitter = true,
  from = true, clock = true, resolver = true, fetcher = true, sendmail = true,
  sendmail_timeout = true, window = true, retention = true, batch_size = true,
  batch_interval = true, max_attempts = true, backoff = true, skip_without_failures = true,
  nameserver = true, trust_anchor = true, cafile = true, capath = true, connect_to = true,
  timeouts = true, log = true, wait = true, allow_private_addresses = true, max_rua = true,
  mode = true, redis = true }

local function argerror(fn, msg) error("bad argument #1 to '" .. fn .. "' (" .. msg .. ")", 3) end

--- Open a result store. See docs/tlsrpt.md for the options.
function _M.open(opts)
  if type(opts) ~= "table" then argerror("open", "table expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not OPTIONS[k] then argerror("open", "unknown option '" .. tostring(k) .. "'") end
  end
  if type(opts.path) ~= "string" then
    argerror("open", "path (the database directory) is required")
  end
  for _, k in ipairs({ "organization", "submitter", "mode" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then
      argerror("open", k .. " must be a string")
    end
  end
  for _, k in ipairs({ "clock", "log", "wait" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "function" then
      argerror("open", k .. " must be a function")
    end
  end
  local NUMBERS = { "window", "retention", "batch_size", "batch_interval", "max_attempts",
    "backoff", "sendmail_timeout" }
  for _, k in ipairs(NUMBERS) do
    if opts[k] ~= nil and type(opts[k]) ~= "number" then
      argerror("open", k .. " must be a number")
    end
  end
  local timeouts = opts.timeouts or {}
  if type(timeouts) ~= "table" then argerror("open", "timeouts must be a table") end
  for _, k in ipairs({ "dns", "fetch" }) do
    if timeouts[k] ~= nil and type(timeouts[k]) ~= "number" then
      argerror("open", "timeouts." .. k .. " must be a number")
    end
  end
  -- the values, before the directory is made; the network settings too, although the
  -- resolver and fetcher are made only when a report is sent: a bad CA file must stop
  -- `mtasts report send` at start, not fail every https destination (docs/errors.md)
  local ok, err, code, key = settings.nonempty("path", opts.path)
  for _, k in ipairs({ "organization", "submitter" }) do
    if ok then ok, err, code, key = settings.nonempty(k, opts[k]) end
  end
  for _, k in ipairs(NUMBERS) do
    if ok then ok, err, code, key = settings.at_least(k, opts[k], 0) end
  end
  if ok then ok, err, code, key = settings.timeouts(timeouts) end
  local mode
  if ok then ok, mode, code, key = settings.mode("mode", opts.mode) end
  if not ok then err = mode or err end
  if ok and not opts.resolver then
    ok, err, code, key = resolver.check{ nameserver = opts.nameserver,
      trust_anchor = opts.trust_anchor }
  end
  if ok and not opts.fetcher then
    ok, err, code, key = fetch.check{ cafile = opts.cafile, capath = opts.capath,
      connect_to = opts.connect_to }
  end
  if not ok then return nil, err, code, key end
  local fl
  if opts.redis ~= nil then
    -- a fleet (docs/fleet.md): send ships this host's counters to Redis, and the host
    -- elected for a day sends the fleet's reports, from a store of their own (path/fleet)
    fl, err, code, key = require("mtasts.fleet").new(opts.redis, { log = opts.log,
      clock = opts.clock, wait = opts.wait })
    if not fl then return nil, err, code, key end
  end
  local db
  db, err, code = core.results_open(opts.path, mode)
  if not db then
    if fl then fl:close() end
    return nil, err, code
  end
  local submitter = opts.submitter or "localhost"
  local self = setmetatable({
    db = db, path = opts.path, clock = opts.clock or os.time, log = opts.log or function() end,
    organization = opts.organization or submitter, submitter = submitter,
    contact = opts.contact or ("postmaster@" .. submitter),
    from = opts.from or ("postmaster@" .. submitter),
    sendmail = opts.sendmail or _M.SENDMAIL,
    sendmail_timeout = opts.sendmail_timeout or _M.SENDMAIL_TIMEOUT,
    window = opts.window or _M.WINDOW, retention = opts.retention or _M.RETENTION_DAYS,
    batch_size = opts.batch_size or _M.BATCH_SIZE,
    batch_keys = opts.batch_size == nil and _M.BATCH_KEYS or math.huge,
    batch_interval = opts.batch_interval or _M.BATCH_INTERVAL,
    max_attempts = opts.max_attempts or _M.MAX_ATTEMPTS, backoff = opts.backoff or _M.BACKOFF,
    skip_without_failures = opts.skip_without_failures == true,
    resolver = opts.resolver, fetcher = opts.fetcher, owned = {},
    net = { nameserver = opts.nameserver, trust_anchor = opts.trust_anchor,
      cafile = opts.cafile, capath = opts.capath, connect_to = opts.connect_to,
      timeouts = timeouts,
      wait = opts.wait, allow_private_addresses = opts.allow_private_addresses },
    max_rua = opts.max_rua or _M.MAX_RUA,
    npending = 0, since = nil,
    is_open = true, fleet = fl,
  }, store_mt)
  if fl then
    local fo = {}
    for k, v in pairs(opts) do fo[k] = v end
    fo.redis, fo.path = nil, opts.path .. "/fleet"
    self.fleet_opts = fo
  end
  return self
end

local function check(self, fn)
  if getmetatable(self) ~= store_mt then error("bad self to '" .. fn .. "'", 3) end
  if not self.is_open then error("attempt to use a closed mtasts.tlsrpt.store", 3) end
end

local function check_day(day, fn, argn)
  if not tlsrpt.day_start(day) then
    error(("bad argument #%d to '%s' (a UTC day \"YYYY-MM-DD\" expected, got %s)"):format(
      argn, fn, type(day) == "string" and format("%q", day:sub(1, 20)) or type(day)), 3)
  end
  return day
end

local function lower_domain(d)
  return (d:lower():gsub("%.$", ""))
end

-- --- recording ---

-- Canonical encodings of a policy and of a failure detail, used inside keys: equal fields
-- give equal bytes, different fields different bytes. Fields are joined with \1, list
-- items with \2; the bytes \0-\3 inside a value are escaped as \3 followed by the byte + 64,
-- so no encoding holds a NUL (the key separator) and splitting is unambiguous. The keys are
-- made in C (results:add, module/lua_results.c: the escaping and the layout of the header
-- comment), with the batch's counters; they are read back here.

local function unesc(v)
  if v:find("\3", 1, true) then
    v = v:gsub("\3(.)", function(c) return string.char(c:byte() - 64) end)
  end
  return v
end

local function split(s, sep)
  local out = {}
  if s == "" then return out end
  for part in (s .. sep):gmatch("(.-)" .. sep) do out[#out + 1] = unesc(part) end
  return out
end

local function policy_of_blob(blob)
  local t, d, strings, mx = blob:match("^([^\1]*)\1([^\1]*)\1([^\1]*)\1([^\1]*)$")
  return { t = t, d = unesc(d), s = split(strings, "\2"), m = split(mx, "\2") }
end

-- Detail fields in tlsrpt.DETAIL_FIELDS order: "" when absent, "=" .. value when present.
local DETAIL_KEYS = {}
for i, f in ipairs(tlsrpt.DETAIL_FIELDS) do DETAIL_KEYS[i] = f[1] end
-- the C side writes the detail fields in the same order (it is part of the file format)
assert(concat(DETAIL_KEYS, ",") == core.result_detail_fields,
  "mtasts.core's detail fields differ from tlsrpt.DETAIL_FIELDS")

local function detail_of_blob(blob)
  local out, i = {}, 0
  for part in (blob .. "\1"):gmatch("([^\1]*)\1") do
    i = i + 1
    if part ~= "" and DETAIL_KEYS[i] then out[DETAIL_KEYS[i]] = unesc(part:sub(2)) end
  end
  return out
end

local NOOPTS = {}

--- Record a result (docs/architecture.md, "The TLSRPT result table"). opts: day
-- ("YYYY-MM-DD", default today by the store's clock), domain (the report it goes into;
-- default the policy domain), recipient_domain (default the report's domain), host (an MX
-- host / DANE result; default: policy type tlsa without opts.domain), report (false for
-- results of delivering a report: included in reports, never the cause of one), verbatim
-- (reported as given, never left out: results another program classified), record (the
-- TLSRPT record the MTA found for the domain: the report goes to its rua). Batched: returns
-- true, or a failure of the flush it triggered (the batch is kept and retried).
function Store:add(result, opts)
  check(self, "add")
  opts = opts or NOOPTS
  if type(result) ~= "table" or type(result.policy) ~= "table" then
    error("bad argument #1 to 'add' (a TLSRPT result table expected)", 2)
  end
  local p = result.policy
  if not tlsrpt.POLICY_TYPES[p.type] then
    error("bad argument #1 to 'add' (policy.type must be sts, tlsa or no-policy-found)", 2)
  end
  local pd = p.domain
  if type(pd) ~= "string" then
    error("bad argument #1 to 'add' (policy.domain must be a domain name)", 2)
  end
  local day = opts.day and check_day(opts.day, "add", 2)
  if not day then                      -- os.date once per second of the clock, not per add
    local now = self.clock() // 1
    if now ~= self.day_at then self.day_at, self.day = now, tlsrpt.day_of(now) end
    day = self.day
  end
  local rdomain = opts.recipient_domain
  if rdomain ~= nil and type(rdomain) ~= "string" then
    error("bad argument #2 to 'add' (recipient_domain must be a string)", 2)
  end
  local domain = opts.domain
  if domain ~= nil and type(domain) ~= "string" then
    error("bad argument #2 to 'add' (domain must be a domain name)", 2)
  end
  local record = opts.record
  if record ~= nil and type(record) ~= "string" then
    error("bad argument #2 to 'add' (record must be a string)", 2)
  end
  local host = opts.host
  if host == nil then host = domain == nil and p.type == "tlsa" end
  local sum = result.summary or NOOPTS
  -- results:add checks the rest (a NUL in a domain, the counts, each failure's result_type)
  -- and makes every key before the batch changes: a result refused half-way leaves nothing
  -- of itself behind
  local keys, argn, why = self.db:add(day, host and "h" or "d", domain, rdomain,
    opts.report == false and "0" or opts.verbatim and "2" or "1", p, sum.success, sum.failure,
    result.failures or nil, record)
  if not keys then error(("bad argument #%d to 'add' (%s)"):format(argn, why), 2) end
  self.npending = self.npending + 1
  local now = monotonic()
  local since = self.since
  if not since then self.since, since = now, now end
  if self.npending >= self.batch_size or now - since >= self.batch_interval or
      keys >= self.batch_keys then
    return self:flush()
  end
  return true
end

--- Commit the batch of this process, with the staged mark (set_mark). true, or nil,
-- message, code (what was not committed is kept for the next try).
function Store:flush()
  check(self, "flush")
  local mark = self.mark_pending
  local ok, err, code
  if mark then
    ok, err, code = self.db:commit(mark[1], mark[2])
  else
    ok, err, code = self.db:commit()
  end
  -- a large batch is committed in several transactions: after a failure, those before the
  -- failing one are durable, and results:commit has dropped them from the batch
  if not ok then return nil, err, code end
  self.npending, self.since, self.mark_pending = 0, nil, nil
  return true
end

--- How many distinct counters the batch holds. A commit of more than _M.KEYS_PER_TXN of
-- them takes several transactions, and a mark goes with the last: a reader that needs its
-- mark atomic with every result flushes before the batch passes that.
function Store:pending_keys()
  check(self, "pending_keys")
  return self.db:pending()
end

--- Stage a mark: a named value (how far a reader has recorded its input) committed with
-- the batch, in the same transaction as its last results, so that a reader that restarts
-- from the mark neither counts a result twice nor misses one. A later set_mark before the
-- commit replaces it.
function Store:set_mark(name, value)
  check(self, "set_mark")
  if type(name) ~= "string" or name == "" then
    error("bad argument #1 to 'set_mark' (a name expected)", 2)
  end
  if type(value) ~= "string" then error("bad argument #2 to 'set_mark' (string expected)", 2) end
  self.mark_pending = { "S" .. name, value }
  if not self.since then self.since = core.monotonic() end
end

--- The committed value of a mark, or nil when there is none; nil, message, code on failure.
function Store:mark(name)
  check(self, "mark")
  if type(name) ~= "string" or name == "" then
    error("bad argument #1 to 'mark' (a name expected)", 2)
  end
  return self.db:get("S" .. name)
end

-- --- queries ---

--- Days with stored results, oldest first.
function Store:days()
  check(self, "days")
  -- committed results stay readable when the batch cannot be committed (a full disk)
  self:flush()
  return self.db:distinct("R")
end

--- The reports a day has: array of { domain =, host = bool }, in key order.
function Store:domains(day)
  check(self, "domains")
  check_day(day, "domains", 1)
  -- committed results stay readable when the batch cannot be committed (a full disk)
  self:flush()
  local list, e2, c2 = self.db:distinct("R" .. day .. "\0")
  if not list then return nil, e2, c2 end
  local out = {}
  for i, k in ipairs(list) do out[i] = { domain = k:sub(2), host = k:sub(1, 1) == "h" } end
  return out
end

--- In a fleet (opened with `redis`): ship this host's counters to Redis now (send does
-- too). Returns { days =, keys = }, or nil, message, code.
function Store:ship()
  check(self, "ship")
  if not self.fleet then return nil, "this store has no fleet (no redis option)", "config" end
  return self.fleet:ship(self)
end

--- A day's counters as stored: { field, value, field, value, ... }, each field the counter's
-- key after "R" DAY NUL, each value its 16 bytes; what a fleet member ships (docs/fleet.md).
function Store:counters(day)
  check(self, "counters")
  check_day(day, "counters", 1)
  local ok, err, code = self:flush()
  if not ok then return nil, err, code end
  local prefix = "R" .. day .. "\0"
  local recs
  recs, err, code = self.db:scan(prefix)
  if not recs then return nil, err, code end
  for i = 1, #recs, 2 do recs[i] = recs[i]:sub(#prefix + 1) end   -- values: 16 bytes each
  return recs
end

--- Replace a day's counters with `flat` ({ key, a, b, ... }, whole keys): the fleet's
-- totals, in the store the elected host builds the fleet's reports from. Returns true or
-- nil, message, code.
function Store:replace_day(day, flat)
  check(self, "replace_day")
  check_day(day, "replace_day", 1)
  local ok, err, code = self:flush()
  if not ok then return nil, err, code end
  local n
  n, err, code = self.db:delete_range("R" .. day .. "\0", "R" .. day .. "\1")
  if not n then return nil, err, code end
  if #flat == 0 then return true end
  return self.db:apply(flat)
end

-- The stored records of one report: policies merged by policy blob.
local function gather(self, domain, day, host)
  local prefix = "R" .. day .. "\0" .. (host and "h" or "d") .. domain .. "\0"
  local recs, err, code = self.db:scan(prefix)
  if not recs then return nil, err, code end
  local by, order, trigger, records = {}, {}, false, {}
  for i = 1, #recs, 2 do
    local key, value = recs[i], recs[i + 1]
    local rest = key:sub(#prefix + 1)
    local flag, rtype, tail = rest:match("^[^%z]*%z([012])([SDP])(.*)$")
    if rtype == "P" then
      local rec = unesc(tail)
      records[rec] = (records[rec] or 0) + unpack(">I8", value)
    elseif flag then
      local blob, detail = tail, nil
      if rtype == "D" then blob, detail = tail:match("^([^%z]*)%z(.*)$") end
      if blob then
        local e = by[blob]
        if not e then
          e = { blob = blob, success = 0, failure = 0, details = {}, dorder = {} }
          by[blob] = e
          order[#order + 1] = blob
        end
        local a, b = unpack(">I8I8", value)
        if flag == "2" then e.verbatim = true end
        if rtype == "S" then
          e.success, e.failure = e.success + a, e.failure + b
          if flag ~= "0" and (a > 0 or b > 0) then trigger = true end
        else
          if not e.details[detail] then e.dorder[#e.dorder + 1] = detail end
          e.details[detail] = (e.details[detail] or 0) + a
          if flag ~= "0" then trigger = true end
        end
      end
    end
  end
  sort(order)
  -- the record most results named (the smallest text of equals): where the report goes
  local record, most = nil, 0
  for rec, n in pairs(records) do
    if n > most or (n == most and rec < record) then record, most = rec, n end
  end
  return by, order, trigger, record
end

local function day_range(day)
  local t = tlsrpt.day_start(day)
  return t, t + 86399
end

--- The RFC 8460 §4.4 report of a policy domain and day (hyphenated keys), or nil when there
-- is nothing to report. opts.host: the MX host (DANE) report instead of the recipient
-- domain's. The second value says whether a stored result asks for the report to be sent.
function Store:report(domain, day, opts)
  check(self, "report")
  if type(domain) ~= "string" then error("bad argument #1 to 'report' (string expected)", 2) end
  check_day(day, "report", 2)
  local host = type(opts) == "table" and opts.host == true
  domain = lower_domain(domain)
  -- committed results stay readable when the batch cannot be committed (a full disk)
  self:flush()
  local by, order, trigger, record = gather(self, domain, day, host)
  if not by then return nil, order, trigger end
  if #order == 0 then return nil end
  local policies, has_tlsa = {}, false
  for _, blob in ipairs(order) do
    local e = by[blob]
    local pol = policy_of_blob(blob)
    e.pol = pol
    if pol.t == "tlsa" then has_tlsa = true end
  end
  local failures = 0
  for _, blob in ipairs(order) do
    local e = by[blob]
    local pol = e.pol
    -- a domain with a TLSA result gets no no-policy-found result (mox does the same), unless
    -- another program classified it (a libtlsrpt datagram's: reported as it came)
    if not (has_tlsa and pol.t == "no-policy-found" and not e.verbatim) then
      local policy = { ["policy-type"] = pol.t, ["policy-domain"] = pol.d,
        ["policy-string"] = pol.s, ["mx-host"] = pol.m }
      local details = {}
      sort(e.dorder)
      for _, dblob in ipairs(e.dorder) do
        local d = detail_of_blob(dblob)
        local out = { ["failed-session-count"] = e.details[dblob] }
        for _, f in ipairs(tlsrpt.DETAIL_FIELDS) do
          if d[f[1]] ~= nil then out[f[2]] = d[f[1]] end
        end
        details[#details + 1] = out
      end
      failures = failures + e.failure
      policies[#policies + 1] = { policy = policy,
        summary = { ["total-successful-session-count"] = e.success,
          ["total-failure-session-count"] = e.failure },
        ["failure-details"] = details }
    end
  end
  if #policies == 0 then return nil end
  local begin, finish = day_range(day)
  local report = {
    ["organization-name"] = self.organization,
    ["date-range"] = { ["start-datetime"] = os.date("!%Y-%m-%dT%H:%M:%SZ", begin),
      ["end-datetime"] = os.date("!%Y-%m-%dT%H:%M:%SZ", finish) },
    ["contact-info"] = self.contact,
    ["report-id"] = day:gsub("-", "") .. "." .. domain .. (host and ".mx" or "") .. "@" ..
      self.submitter,
    policies = policies,
  }
  facts_of[report] = { failures = failures, has_tlsa = has_tlsa, record = record }
  return report, trigger
end

local function decode_state(v)
  if not v then return nil end
  local ok, t = pcall(require("cjson").decode, v)
  if not ok or type(t) ~= "table" then return nil end
  for k, x in pairs(t) do          -- lua-cjson 2.1 reads every number as a float
    if math_type(x) == "float" and math.tointeger(x) then t[k] = math.tointeger(x) end
  end
  return t
end

--- What is stored: { days = { { day =, reports =, records =, success =, failure = }, ... },
-- pending = n (results not yet committed), retries = { { day =, domain =, host =,
-- destination = (nil: the report's TLSRPT record), status =, attempts =, next =, error =,
-- code = }, ... } (deliveries that wait for another try, oldest day first) }.
function Store:stats()
  check(self, "stats")
  local days, err, code = self:days()
  if not days then return nil, err, code end
  local out = { days = {}, pending = self.npending, retries = {},
    deliveries = { sent = 0, failed = 0, pending = 0, sending = 0 } }
  for _, day in ipairs(days) do
    local recs, rerr, rcode = self.db:scan("R" .. day .. "\0")
    if not recs then return nil, rerr, rcode end
    local doms, derr, dcode = self.db:distinct("R" .. day .. "\0")
    if not doms then return nil, derr, dcode end
    local success, failure = 0, 0
    for i = 1, #recs, 2 do
      if recs[i]:match("^R[^%z]*%z[^%z]*%z[^%z]*%z[012]S") then
        local a, b = unpack(">I8I8", recs[i + 1])
        success, failure = success + a, failure + b
      end
    end
    out.days[#out.days + 1] = { day = day, reports = #doms, records = #recs // 2,
      success = success, failure = failure }
  end
  local recs, qerr, qcode = self.db:scan("Q")
  if not recs then return nil, qerr, qcode end
  -- a report's own "pending" is its record's lookup; once destinations have a state, the
  -- record was found after all (keys sort the report's state just before its destinations')
  local report_entry
  for i = 1, #recs, 2 do
    local day, kind, domain, dest = recs[i]:match("^Q([^%z]*)%z(.)([^%z]*)%z(.*)$")
    local st = decode_state(recs[i + 1])
    if day and st and dest ~= "" and out.deliveries[st.status] then
      out.deliveries[st.status] = out.deliveries[st.status] + 1
    end
    if day and st then
      if dest ~= "" and report_entry and report_entry.day == day and
        report_entry.domain == domain and report_entry.host == (kind == "h") then
        table.remove(out.retries)
      end
      report_entry = nil
      if st.status == "pending" or st.status == "sending" then
        local e = { day = day, domain = domain, host = kind == "h",
          destination = dest ~= "" and dest or nil, status = st.status,
          attempts = st.attempts or 0, next = st.next or st["until"], error = st.error,
          code = st.code }
        out.retries[#out.retries + 1] = e
        if dest == "" then report_entry = e end
      end
    end
  end
  return out
end

--- Delivery state of a day's reports: array of { domain =, host = bool, destination = (nil
-- for the report's own state), status = "pending"|"sending"|"sent"|"failed" (destinations),
-- "pending"|"done"|"dropped" (reports), attempts =, error =, reason =, at =, next = }.
function Store:deliveries(day)
  check(self, "deliveries")
  check_day(day, "deliveries", 1)
  local recs, err, code = self.db:scan("Q" .. day .. "\0")
  if not recs then return nil, err, code end
  local out = {}
  for i = 1, #recs, 2 do
    local kind, domain, dest = recs[i]:match("^Q[^%z]*%z(.)([^%z]*)%z(.*)$")
    local st = decode_state(recs[i + 1])
    if kind and st then
      st.domain, st.host = domain, kind == "h"
      st.destination = dest ~= "" and dest or nil
      st["until"] = nil
      out[#out + 1] = st
    end
  end
  return out
end

--- Keep the results and delivery state of the last `retention` days (default the store's,
-- 10), today included; delete older days. Returns how many records went.
function Store:prune(retention)
  check(self, "prune")
  retention = retention or self.retention
  local ok, err, code = self:flush()
  if not ok then return nil, err, code end
  if self.fleet_store then
    ok, err, code = self.fleet_store:prune(retention)
    if not ok then return nil, err, code end
  end
  local today = tlsrpt.day_start(tlsrpt.day_of(self.clock()))
  local cutoff = tlsrpt.day_of(today - (retention - 1) * 86400)
  local total = 0
  for _, p in ipairs({ "R", "Q" }) do
    local n, e2, c2 = self.db:delete_range(p, p .. cutoff)
    if not n then return nil, e2, c2 end
    total = total + n
  end
  return total
end

-- Close the database and what the store made, committing nothing: true, or nil, message,
-- code.
local function close_handles(self)
  self.is_open = false
  if self.fleet then self.fleet:close() end
  if self.fleet_store then self.fleet_store:close() end
  local ok, err, code = self.db:close()
  if self.owned.resolver and self.resolver.close then self.resolver:close() end
  if self.owned.fetcher and self.fetcher.close then self.fetcher:close() end
  return ok, err, code
end

--- Commit the batch and close. true, or nil, message, code (the close happens anyway, and
-- the results of a batch that could not be committed are lost: the log says how many). A
-- second close returns true.
function Store:close()
  if not self.is_open then return true end
  local n = self.npending
  local ok, err, code = self:flush()
  if not ok then
    self.log("err", ("%d results lost at close: %s"):format(n, tostring(err)))
  end
  local ok2, e2, c2 = close_handles(self)
  if not ok then return nil, err, code end
  if not ok2 then return nil, e2, c2 end
  return true
end

--- Close without committing the batch (what the garbage collector does: a finalizer neither
-- writes nor logs). Returns true, or nil, message, code; true when closed already.
function Store:release()
  if not self.is_open then return true end
  local ok, err, code = close_handles(self)
  if not ok then return nil, err, code end
  return true
end
store_mt.__close = Store.close
store_mt.__gc = Store.release

-- --- delivery ---

local function net(self)
  local wait = self.net.wait
  if not self.resolver then
    local r, err, code = resolver.new{ nameserver = self.net.nameserver,
      trust_anchor = self.net.trust_anchor, timeout = self.net.timeouts.dns, wait = wait }
    if not r then return nil, err, code end
    self.resolver, self.owned.resolver = r, true
  end
  if not self.fetcher then
    local f, err, code = fetch.new{
      resolver = type(self.resolver.a) == "function" and self.resolver or nil,
      cafile = self.net.cafile, capath = self.net.capath, connect_to = self.net.connect_to,
      timeout = self.net.timeouts.fetch, wait = wait,
      allow_private_addresses = self.net.allow_private_addresses }
    if not f then return nil, err, code end
    self.fetcher, self.owned.fetcher = f, true
  end
  return true
end

-- Replace a state value if it is still `old` (another process may be at it).
-- A failure of the store's own database while sending: raised inside send_one (so a report
-- is never delivered on a state that was not written) and returned by send.
local DbFailure = { __tostring = function(e) return e.msg end }

local function db_check(v, err, code)
  if v == nil and err ~= nil then
    error(setmetatable({ msg = tostring(err), code = code }, DbFailure), 0)
  end
  return v
end

-- The delivery state under key: the decoded table (or {}), and the raw value for a cas.
local function get_state(self, key)
  local raw = db_check(self.db:get(key))
  return decode_state(raw) or {}, raw
end

-- Swap the state under key from old to new: true, or false when another process changed it
-- first. A database failure raises a DbFailure.
local function set_state(self, key, old, new)
  return db_check(self.db:cas(key, old, json.encode(new)))
end

local function backoff(self, attempts)
  local d = self.backoff * 2 ^ (attempts - 1)
  return d > _M.BACKOFF_MAX and _M.BACKOFF_MAX or d // 1
end

-- A stable spread of reports over the window after the day ends (FNV-1a of the name).
local function jitter(self, name)
  if self.window <= 0 then return 0 end
  local h = 2166136261
  for i = 1, #name do h = ((h ~ name:byte(i)) * 16777619) & 0xffffffff end
  return h % (self.window // 1 + 1)
end

--- The address of a mailto: URI (the part before any ?query), percent-decoded and checked
-- as the record parser checks it (an RFC 5322 addr-spec, no control characters), or nil and
-- the reason.
function _M.mailto_address(uri)
  local addr, why = core.mailto_address(uri)
  return addr, why
end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local STDERR_MAX, ERROR_MAX = 4096, 300

-- What a command wrote on its standard error, as one line of a failure's message: runs of
-- white space (line ends too) become one space, other control bytes \xNN, at most
-- ERROR_MAX bytes.
local function one_line(s)
  s = s:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  if #s > ERROR_MAX then s = s:sub(1, ERROR_MAX) .. "..." end
  return (s:gsub("[%z\1-\31\127]", function(c) return format("\\x%02x", c:byte()) end))
end

-- A file of our own in /tmp (mkstemp), or nil and why.
local function tmpfile()
  local ok, name = pcall(os.tmpname)
  if not ok then return nil, tostring(name) end
  return name
end

-- Deliver one report by mail: the submission command gets the message on its standard
-- input, from a file (a command that exits without reading it cannot kill us with SIGPIPE),
-- and its standard error is kept for the failure's message. The outcome: { ok = true }, or
-- { error =, code =, permanent =, exit = } (code local when the command cannot be run at
-- all: exit status 126 or 127 from the shell, no temporary file).
local function deliver_mail(self, report, body, uri)
  local to = _M.mailto_address(uri)
  if not to then
    return { error = "not a usable mailto: address", code = "bad-uri", permanent = true }
  end
  local msg = tlsrpt.message(report, { from = self.from, to = to, gzip = body,
    date = self.clock() })
  msg = msg:gsub("\r\n", "\n")
  local cmd = self.sendmail
  if self.sendmail_timeout > 0 then
    cmd = ("timeout -s KILL %d sh -c %s"):format(self.sendmail_timeout // 1, shell_quote(cmd))
  end
  local msgfile, terr = tmpfile()
  local errfile
  if msgfile then errfile, terr = tmpfile() end
  local function cleanup()
    if msgfile then os.remove(msgfile) end
    if errfile then os.remove(errfile) end
  end
  local f
  if errfile then f, terr = io.open(msgfile, "wb") end
  local wrote = f and f:write(msg)
  if f then
    local closed, cerr = f:close()
    if not closed then wrote, terr = nil, cerr end
  end
  if not wrote then
    cleanup()
    return { error = "cannot write the message to a temporary file: " .. tostring(terr),
      code = "local" }
  end
  local ok, how, status = os.execute(cmd .. " <" .. shell_quote(msgfile) .. " >/dev/null 2>" ..
    shell_quote(errfile))
  local e = io.open(errfile, "rb")
  local stderr = one_line(e and e:read(STDERR_MAX) or "")
  if e then e:close() end
  cleanup()
  if ok then return { ok = true } end
  -- Ctrl-C reached the command (os.execute's system() ignores SIGINT here meanwhile): the
  -- operator's interrupt, passed on as the interpreter's own, never the destination's failure
  if (how == "signal" and status == 2) or (how == "exit" and status == 130) then
    error("interrupted!", 0)
  end
  local said = stderr ~= "" and ": " .. stderr or ""
  if how == "exit" and (status == 126 or status == 127) then
    -- the shell could not run it (not found, not executable): this host's setting
    return { error = ("the submission command %s cannot be run (exit status %d)%s"):format(
      settings.show(self.sendmail), status, said), code = "local", exit = status }
  end
  if how == "exit" and status == 137 and self.sendmail_timeout > 0 then
    return { error = ("the submission command was killed after %d s (exit status 137)%s")
      :format(self.sendmail_timeout // 1, said), code = "submission", exit = status }
  end
  if how == "signal" then
    return { error = ("the submission command was killed by signal %d%s"):format(status, said),
      code = "submission", exit = 128 + status }
  end
  return { error = ("the submission command exited with status %d%s"):format(status, said),
    code = "submission", exit = status }
end

-- The outcome of a POST (status, or nil, err, code, reason): { ok = true }, or { error =,
-- code =, permanent =, status = | reason = }. The message leaves out the host the fetcher
-- names first: the destination (the URL) names it already.
local function https_outcome(uri, status, err, code, reason)
  if not status then
    local why, host = tostring(err), uri:match("^https://([^/:?#]+)")
    if host and why:sub(1, #host + 2) == host .. ": " then why = why:sub(#host + 3) end
    if code == "local" then return { error = why, code = "local" } end
    -- a host that resolves only to internal addresses will not change by retrying
    return { error = why, code = "post-failed", reason = reason,
      permanent = reason == "address-not-global" }
  end
  if status >= 200 and status < 300 then return { ok = true } end
  -- RFC 8460 §5.2: a 4xx answer is final for this report; 5xx is retried
  return { error = ("HTTP %d"):format(status), code = "http-status", status = status,
    permanent = status >= 400 and status < 500 }
end

-- Start delivering one report to one rua URI: an https POST is started and a function that
-- finishes it is returned (so POSTs to several destinations run at once); anything else is
-- delivered now, and a function that returns the outcome is returned. The outcome is a table
-- (deliver_mail, https_outcome).
local function deliver_start(self, report, body, uri)
  local outcome
  if uri:match("^[Mm][Aa][Ii][Ll][Tt][Oo]:") then
    outcome = deliver_mail(self, report, body, uri)
  elseif uri:match("^https://") then
    local n, nerr = net(self)
    if not n then
      outcome = { error = tostring(nerr), code = "local" }
    elseif self.fetcher.post_start then
      local h, err, code, reason = self.fetcher:post_start(uri, body, "application/tlsrpt+gzip")
      if not h then
        outcome = https_outcome(uri, nil, err, code, reason)
      else
        return function() return https_outcome(uri, self.fetcher:post_finish(h)) end
      end
    else
      outcome = https_outcome(uri, self.fetcher:post(uri, body, "application/tlsrpt+gzip"))
    end
  else
    outcome = { error = "not a mailto: or https: URI", code = "bad-uri", permanent = true }
  end
  return function() return outcome end
end

-- Look up the TLSRPT record of a report's domain: rua list, or nil, why, final, code (dns,
-- or local when this host's resolver failed). The resolver's message names the record.
local function rua_of(self, domain)
  local name = "_smtp._tls." .. domain
  local txt, err, code = self.resolver:txt(name)
  if not txt then
    if code == "nxdomain" or code == "nodata" then
      return nil, name .. ": no TLSRPT record", true
    end
    return nil, tostring(err), false, code == "local" and "local" or "dns"
  end
  local found = {}
  for _, s in ipairs(txt) do
    if tlsrpt.is_record(s) then found[#found + 1] = s end
  end
  if #found == 0 then return nil, name .. ": no TLSRPT record", true end
  if #found > 1 then
    return nil, name .. ": more than one TLSRPT record", true
  end
  local rec, perr = tlsrpt.parse_record(found[1])
  if not rec then return nil, name .. ": " .. tostring(perr), true end
  return rec.rua
end

-- A failed delivery, for the summary's failures (docs/tlsrpt.md, "Delivery"): o is the
-- outcome, state what was written for it.
local function note_failure(summary, day, domain, host, destination, o, state)
  summary.failures[#summary.failures + 1] = { day = day, domain = domain, host = host,
    destination = destination, error = o.error, code = o.code, status = o.status,
    exit = o.exit, reason = o.reason, attempts = state.attempts,
    retry_at = state.status == "pending" and state.next or nil,
    dropped = state.status ~= "pending" or nil }
end

-- The next try after a failure of this host: not counted as an attempt (the destination is
-- not at fault), after the backoff of the attempts made so far.
local function local_retry(self, attempts, o)
  return { status = "pending", attempts = attempts, error = o.error, code = o.code,
    next = self.clock() + backoff(self, attempts > 0 and attempts or 1) }
end

-- Deliver one report to every destination; returns a summary word for it.
local function send_one(self, day, domain, host, now, summary)
  local qbase = "Q" .. day .. "\0" .. (host and "h" or "d") .. domain .. "\0"
  local st, raw = get_state(self, qbase)
  local rkey = (host and "h" or "d") .. domain
  local shared = self.shared    -- a fleet's record of what any host sent (docs/fleet.md)
  if st.status == "done" or st.status == "dropped" or (shared and shared.is_sent(rkey)) then
    summary.done = summary.done + 1
    return
  end
  if st.next and now < st.next then summary.waiting = summary.waiting + 1 return end
  local report, trigger, rcode = self:report(domain, day, { host = host })
  if report == nil and trigger ~= nil then db_check(nil, trigger, rcode) end  -- a failed read
  local function drop(why)
    local new = { status = "dropped", reason = why, at = now }
    if set_state(self, qbase, raw, new) then
      if shared then shared.mark(rkey) end
      summary.dropped = summary.dropped + 1
      self.log("notice", ("report %s %s%s not sent: %s"):format(day, domain,
        host and " (mx)" or "", why))
    end
    return new
  end
  if not report then return drop("nothing to report") end
  local facts = facts_of[report]
  if not trigger then return drop("only results of delivering reports") end
  if host and not facts.has_tlsa then return drop("an MX host report without a TLSA result") end
  if self.skip_without_failures and facts.failures == 0 then return drop("no failures") end
  local rua, why, final, lcode
  if facts.record then
    -- the record the MTA found when it delivered (a libtlsrpt datagram's "pr")
    local rec = tlsrpt.parse_record(facts.record)
    if rec then rua = rec.rua end
  end
  if not rua then rua, why, final, lcode = rua_of(self, domain) end
  if not rua then
    if final then return drop(why) end
    local o = { error = why, code = lcode }
    local before = st.attempts or 0
    local new
    if lcode == "local" then
      new = local_retry(self, before, o)
    elseif before + 1 >= self.max_attempts then
      new = drop(why .. " (gave up)")
      new.attempts = before + 1
      note_failure(summary, day, domain, host, nil, o, new)
      return
    else
      new = { status = "pending", attempts = before + 1, next = now + backoff(self, before + 1),
        error = why, code = lcode }
    end
    set_state(self, qbase, raw, new)
    summary.retry = summary.retry + 1
    note_failure(summary, day, domain, host, nil, o, new)
    self.log("warning", "report " .. day .. " " .. domain .. ": " .. why .. "; will retry")
    return
  end
  local body = tlsrpt.gzip(report)
  local open_left, seen, list = 0, {}, {}
  for _, uri in ipairs(rua) do
    if not seen[uri] then
      seen[uri] = true
      list[#list + 1] = uri
    end
  end
  if #list > self.max_rua then
    -- RFC 8460 expects a few; a record naming hundreds would make us its mail cannon
    self.log("warning", ("report %s %s: the record names %d destinations; sending to the first " ..
      "%d"):format(day, domain, #list, self.max_rua))
    for i = #list, self.max_rua + 1, -1 do list[i] = nil end
  end
  -- claim every destination that is due, then deliver (POSTs run at once), then record each
  -- outcome on its own: whatever one does, even raise, is that destination's failure. Nothing
  -- is started before every claim is made, so an error there leaves no transfer running.
  local jobs = {}
  for _, uri in ipairs(list) do
    local dkey = qbase .. uri
    local ds, draw = get_state(self, dkey)
    local busy = ds.status == "sending" and ds["until"] and now < ds["until"]
    if ds.status == "sent" or ds.status == "failed" then   -- luacheck: ignore 542
      -- delivered, or given up on, before
    elseif busy or (ds.next and now < ds.next) then
      open_left = open_left + 1
    else
      local attempts = (ds.attempts or 0) + 1
      local claim = { status = "sending", attempts = attempts,
        ["until"] = self.clock() + _M.LEASE }
      if set_state(self, dkey, draw, claim) then
        jobs[#jobs + 1] = { uri = uri, dkey = dkey, cur = json.encode(claim),
          attempts = attempts, https = uri:match("^https://") ~= nil }
      else
        open_left = open_left + 1   -- another process took it just now
      end
    end
  end
  -- mail first, then the POSTs, started together: a POST's timeout runs while it waits, so
  -- none is started before a slow submission command
  for pass = 1, 2 do
    for _, j in ipairs(jobs) do
      if j.https == (pass == 2) then
        local started, finish = pcall(deliver_start, self, report, body, j.uri)
        if not started then
          settings.pass_interrupt(finish)
          local raised = { error = tostring(finish), code = "raised" }
          finish = function() return raised end
        end
        j.finish = finish
      end
    end
  end
  local failed_write
  for _, j in ipairs(jobs) do
    local done, o = pcall(j.finish)
    if not done then
      settings.pass_interrupt(o)
      o = { error = tostring(o), code = "raised" }
    end
    local new
    if o.ok then
      new = { status = "sent", attempts = j.attempts, at = self.clock() }
      summary.sent = summary.sent + 1
    elseif o.code == "local" then
      -- this host failed, not the destination: the attempt is not counted
      new = local_retry(self, j.attempts - 1, o)
      summary.retry = summary.retry + 1
      open_left = open_left + 1
      self.log("warning", ("report %s %s to %s: %s; will retry (this host failed: not " ..
        "counted as an attempt)"):format(day, domain, j.uri, tostring(o.error)))
    elseif o.permanent or j.attempts >= self.max_attempts then
      new = { status = "failed", attempts = j.attempts, at = self.clock(), error = o.error,
        code = o.code }
      summary.failed = summary.failed + 1
      self.log("err", ("report %s %s to %s failed: %s"):format(day, domain, j.uri,
        tostring(o.error)))
    else
      new = { status = "pending", attempts = j.attempts, error = o.error, code = o.code,
        next = self.clock() + backoff(self, j.attempts) }
      summary.retry = summary.retry + 1
      open_left = open_left + 1
      self.log("warning", ("report %s %s to %s: %s; will retry"):format(day, domain, j.uri,
        tostring(o.error)))
    end
    if not o.ok then note_failure(summary, day, domain, host, j.uri, o, new) end
    -- every outcome is written, even after one write failed; the first failure is raised
    local wrote, werr = pcall(set_state, self, j.dkey, j.cur, new)
    if not wrote then failed_write = failed_write or werr end
  end
  if failed_write then error(failed_write, 0) end
  if open_left == 0 then
    set_state(self, qbase, raw, { status = "done", at = self.clock() })
    if shared then shared.mark(rkey) end
  end
end

--- Deliver the reports of `day` (default: every day with results that has ended) that are
-- due: after the day's end plus a stable jitter within `window`. Returns a summary
-- { sent =, failed =, retry =, dropped =, waiting =, done =, failures = { {day =, domain =,
-- host =, destination =, error =, code =, attempts =, retry_at = | dropped = true}, ... } }
-- or nil, message, code.
function Store:send(day)
  check(self, "send")
  if day ~= nil then check_day(day, "send", 1) end
  local ok, err, code = self:flush()
  if not ok then return nil, err, code end
  if self.fleet then
    local fs = self.fleet_store
    if not fs then
      fs, err, code = _M.open(self.fleet_opts)
      if not fs then return nil, "the fleet's report store: " .. tostring(err), code end
      self.fleet_store = fs
    end
    if day then
      local _, finish = day_range(day)
      if self.clock() <= finish then
        return nil, "day " .. day .. " has not ended yet (UTC)", "day-not-over"
      end
    end
    return self.fleet:send(self, fs, day)
  end
  local now = self.clock()
  local days
  if day then
    days = { day }
  else
    days, err, code = self.db:distinct("R")
    if not days then return nil, err, code end
  end
  local summary = { sent = 0, failed = 0, retry = 0, dropped = 0, waiting = 0, done = 0,
    failures = {} }
  if self.resolver == nil then
    local n, nerr, ncode = net(self)
    if not n then return nil, nerr, ncode end
  end
  for _, d in ipairs(days) do
    local _, finish = day_range(d)
    if now > finish then
      local list, lerr, lcode = self:domains(d)
      if not list then return nil, lerr, lcode end
      for _, r in ipairs(list) do
        if now < finish + 1 + jitter(self, r.domain) then
          summary.waiting = summary.waiting + 1
        else
          -- one report's trouble (a raised error included) is that report's, not the run's
          local sent_ok, serr = pcall(send_one, self, d, r.domain, r.host, now, summary)
          if not sent_ok then settings.pass_interrupt(serr) end
          if not sent_ok and getmetatable(serr) == DbFailure then
            -- the store cannot record what it does: stop before delivering anything more
            self.log("err", ("report %s %s: the delivery state cannot be written: %s; " ..
              "stopping"):format(d, r.domain, serr.msg))
            return nil, "delivery state: " .. serr.msg, serr.code
          elseif not sent_ok then
            summary.retry = summary.retry + 1
            note_failure(summary, d, r.domain, r.host, nil, { error = tostring(serr),
              code = "raised" }, { status = "pending", next = now })
            self.log("warning", ("report %s %s: %s; will retry"):format(d, r.domain,
              tostring(serr)))
          end
        end
      end
    elseif day then
      return nil, "day " .. d .. " has not ended yet (UTC)", "day-not-over"
    end
  end
  return summary
end

--- Write the gzip reports of a day into dir; returns the array of file paths.
function Store:build(day, dir)
  check(self, "build")
  check_day(day, "build", 1)
  local list, err, code = self:domains(day)
  if not list then return nil, err, code end
  local files = {}
  for _, r in ipairs(list) do
    local report = self:report(r.domain, day, { host = r.host })
    if report then
      local name = tlsrpt.filename(report)
      if r.host then name = name:gsub("%.json%.gz$", ".mx.json.gz") end
      local path = dir .. "/" .. name
      local f, ferr = io.open(path, "wb")
      if not f then return nil, ferr, "eio" end
      f:write(tlsrpt.gzip(report))
      f:close()
      files[#files + 1] = path
    end
  end
  return files
end

return _M
