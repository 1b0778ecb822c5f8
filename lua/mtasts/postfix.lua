--- mtasts.postfix: a socketmap server for Postfix's smtp_tls_policy_maps, answering as
-- postfix-mta-sts-resolver does (so a switch needs no change in Postfix), on a cqueues loop.
-- Reference: docs/postfix.md.
--
--   smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix
--   request  "postfix example.com"  ->  "OK secure match=mx.example.com:.example.net
--                                        servername=hostname"  |  "NOTFOUND "
--
-- Each request is answered by a coroutine of its own: a slow lookup delays no other request,
-- on its connection or another; answers on one connection are written in request order, as
-- Postfix expects. Concurrent lookups of one domain share one fetch (the client coalesces).
local cqueues = require("cqueues")
local socket = require("cqueues.socket")
local condition = require("cqueues.condition")
local mtasts = require("mtasts")
local tlsrpt = require("mtasts.tlsrpt")
local settings = require("mtasts.settings")
local logging = require("mtasts.log")
local metrics = require("mtasts.metrics")
local script_mod = require("mtasts.script")

local type, pairs, ipairs, error, tostring, tonumber, setmetatable, pcall = type, pairs, ipairs,
  error, tostring, tonumber, setmetatable, pcall
local concat, format, pack, unpack = table.concat, string.format, table.pack, table.unpack
local find, sub, byte, smatch = string.find, string.sub, string.byte, string.match
local monotime = cqueues.monotime

local _M = { MAX_REQUEST = 2048, IDLE_TIMEOUT = 600, SHUTDOWN_GRACE = 10, MEMO_SECONDS = 1,
  MAX_CONNECTIONS = 1024, MAX_LOOKUPS = 256, MEMO_BYTES = 8 * 1024 * 1024, WRITE_TIMEOUT = 30,
  MAX_PENDING = 64 }
local errno = require("cqueues.errno")
local EAGAIN, ETIMEDOUT = errno.EAGAIN, errno.ETIMEDOUT
local poll = cqueues.poll
local core = require("mtasts.core")
local recv, send = core.recv, core.send

-- Descriptors a lookup in flight may hold (the resolver's sockets for its queries, the
-- fetcher's connection), and those kept free beyond what is open when the server starts.
local FDS_PER_LOOKUP, FDS_SPARE = 3, 32

-- --- the protocol, pure functions ---

--- A netstring of s.
function _M.netstring(s) return #s .. ":" .. s .. "," end

--- The next netstring of buf from position pos (maxdigits: #tostring(max), given by callers
-- on a hot path): value, the position after it; or nil when more bytes are needed; or nil,
-- nil, error when buf can never become a netstring (or passes max). The server reads with
-- this, by position, so the unread input is never copied.
local function take(buf, pos, max, maxdigits)
  maxdigits = maxdigits or #tostring(max)
  local _, colon, digits = find(buf, "^(%d+):", pos)
  if not colon then
    if find(buf, "^%d*$", pos) then
      if #buf - pos + 1 > maxdigits then return nil, nil, "netstring length too long" end
      return nil
    end
    return nil, nil, "malformed netstring"
  end
  if #digits > 1 and byte(digits, 1) == 48 then return nil, nil, "malformed netstring" end
  local n = tonumber(digits)
  if n > max then return nil, nil, "request of " .. n .. " bytes is over the limit of " .. max end
  local last = colon + n + 1
  if #buf < last then return nil end
  if byte(buf, last) ~= 44 then return nil, nil, "netstring without its comma" end
  return sub(buf, colon + 1, last - 1), last + 1
end

--- Take one netstring off the front of buf: value, rest; or nil, rest when more bytes are
-- needed; or nil, nil, error when buf can never become a netstring (or passes max).
function _M.netstring_decode(buf, max)
  local value, pos, err = take(buf, 1, max or _M.MAX_REQUEST)
  if err then return nil, nil, err end
  if not value then return nil, buf end
  return value, sub(buf, pos)
end

--- The domain a policy-map key names, or nil when the key is answered NOTFOUND without a
-- lookup (IP literals, ".parent" keys, what is not a domain). Keys: domain, domain.,
-- [host], [host]:port, host:port.
function _M.key_domain(key)
  if type(key) ~= "string" or key == "" or #key > 300 then return nil end
  local host = key:match("^%[(.*)%]:%d+$") or key:match("^%[(.*)%]$")
  if not host then
    if key:find(":", 1, true) then
      host = key:match("^([^:]+):%d+$")         -- host:port (one colon: not IPv6)
      if not host then return nil end
    else
      host = key
    end
  end
  if host:sub(1, 1) == "." then return nil end   -- parent-domain match: no MTA-STS there
  if host:match("^%d+%.%d+%.%d+%.%d+$") or host:find(":", 1, true) or
      host:lower():match("^ipv6:") then
    return nil
  end
  local ascii = mtasts.domain(host:gsub("%.$", ""))
  if not ascii or not ascii:find(".", 1, true) then return nil end
  return ascii
end

-- { policy_string = text } for Postfix's attribute syntax (braces when it has white space).
-- A value with a brace could close the group and add attributes of its own (tafile=...):
-- nil, and the caller leaves it out.
local function attr(name, value)
  value = tostring(value):gsub("[%c]", " ")
  if value:find("[{}]") then return nil end
  -- Postfix splits attributes at white space and commas: braces keep the value whole
  if value:find("[%s,]") or value == "" then return "{ " .. name .. " = " .. value .. " }" end
  return name .. "=" .. value
end

--- The answer for a lookup result. policy as from sts:get (or nil); opts: strict_testing,
-- require_sni (default true), tlsrpt (Postfix 3.10 attributes), text (the policy text, for
-- policy_string), domain, failure (a TLSRPT result type when the policy could not be
-- obtained), failure_level (the security level to send with a failure: "OK LEVEL", with the
-- policy_failure attributes when tlsrpt; NOTFOUND without it).
-- Policy lines holding '{' or '}' are left out of the policy_string attributes: Postfix's
-- attribute syntax has no escape for them.
function _M.answer(policy, opts)
  opts = opts or {}
  local mode = policy and policy.mode
  if mode == "enforce" or (mode == "testing" and opts.strict_testing) then
    local match = {}
    for i, p in ipairs(policy.mx) do match[i] = p:gsub("^%*%.", ".") end
    local out = { "secure", "match=" .. concat(match, ":") }
    if opts.require_sni ~= false then out[#out + 1] = "servername=hostname" end
    if opts.tlsrpt then
      out[#out + 1] = "policy_type=sts"
      out[#out + 1] = "policy_domain=" .. tostring(opts.domain)
      for _, p in ipairs(policy.mx) do out[#out + 1] = "mx_host_pattern=" .. p end
      for _, line in ipairs(tlsrpt.policy_strings(opts.text)) do
        out[#out + 1] = attr("policy_string", line)   -- nil (left out) for a line with braces
      end
    end
    return "OK " .. concat(out, " ")
  end
  if opts.failure and opts.failure_level then
    if not opts.tlsrpt then return "OK " .. opts.failure_level end
    return "OK " .. opts.failure_level .. " policy_type=sts policy_domain=" ..
      tostring(opts.domain) .. " policy_failure=" .. opts.failure
  end
  return "NOTFOUND "
end

-- --- the server ---

local Server = {}
local server_mt = { __index = Server, __name = "mtasts.postfix.server" }
local serve_http   -- the metrics' HTTP answer (below): the socketmap port takes scrapes too
local families     -- the metric families (below)
local drive        -- one step of the server's own loop (below)
local collect_loop -- the libtlsrpt collector's commits (below)
local dane_answer  -- DANE first (below)
local START_TIME = os.time()   -- when the module was loaded: the process's start

-- The map name QUERYwithTLSRPT asks for the TLSRPT attributes (the name other policy
-- servers for Postfix 3.10 use): without a zone of its own, it is "*" with tlsrpt.
local TLSRPT_NAME = "QUERYwithTLSRPT"

local function zone_of(self, name)
  local z = self.zones[name]
  if z then return z end
  if name == TLSRPT_NAME then
    local base = self.zones["*"] or {}
    if self.tlsrpt_zone_of ~= base then
      local t = {}
      for k, v in pairs(base) do t[k] = v end
      t.tlsrpt = true
      self.tlsrpt_zone_of, self.tlsrpt_zone = base, t
    end
    return self.tlsrpt_zone
  end
  return self.zones["*"] or {}
end

-- The map name and domain of a request that needs a lookup; or nil and the answer when it
-- needs none (a malformed request, an IP literal, a parent-domain key, no domain).
local function parse_request(request)
  local name, key = request:match("^(%S+) (.+)$")
  if not name then return nil, "PERM malformed request" end
  local domain = _M.key_domain(key)
  if not domain then return nil, "NOTFOUND " end
  return name, domain
end

-- The reason a backed-off domain carries: its failure was found earlier and is remembered
-- (the client's 300 s backoff), not found now.
local BACKOFF = "back-off-after-recent-fetch-error"

-- Answers longer than this are cut in log lines (the TLSRPT attributes of a long policy).
local LOG_ANSWER_MAX = 160

-- The failure of a lookup as text: "<result type> <reason>[: <message>]", or nil.
local function failure_text(how)
  if not how.result_type then return nil end
  local t = how.result_type .. " " .. tostring(how.reason)
  if how.message then t = t .. ": " .. how.message end
  return t
end

--- The info line of one lookup: domain, the answer sent (cut at 160 bytes), where it came
-- from ("cache" or "fetched": looked up now), and the failure if any. how: { source =,
-- result_type =, reason =, message = }. Called only when info is logged.
function _M.lookup_line(domain, answer, how)
  answer = answer:gsub("%s+$", "")
  if #answer > LOG_ANSWER_MAX then answer = answer:sub(1, LOG_ANSWER_MAX) .. " ..." end
  local failure = failure_text(how)
  return ("%s: %s (%s%s)"):format(domain, answer, how.source,
    failure and ", " .. failure or "")
end

--- The warning line of a lookup that failed: domain, the failure, the answer sent. Called
-- only when warning is logged.
function _M.failure_line(domain, answer, how)
  answer = answer:gsub("%s+$", "")
  if #answer > LOG_ANSWER_MAX then answer = answer:sub(1, LOG_ANSWER_MAX) .. " ..." end
  return ("%s: %s (answered %s)"):format(domain, failure_text(how), answer)
end

-- Log one lookup: the info line, and for a failure found now the warning line; each only
-- when its level is on (nothing is formatted otherwise).
local function log_lookup(self, domain, answer, how)
  if self.info_on then self.log("info", _M.lookup_line(domain, answer, how)) end
  if how.result_type and how.reason ~= BACKOFF and self.warning_on then
    self.log("warning", _M.failure_line(domain, answer, how))
  end
end

-- DANE before MTA-STS (RFC 8461 §2): for a domain whose MX RRset is DNSSEC-secure, "dane-only"
-- when every MX host has usable TLSA records, "dane" when some have (or their lookups failed:
-- Postfix's own DANE lookups then defer those hosts), so that Postfix's DANE is never
-- replaced by "secure" (WebPKI); a bogus MX RRset is TEMP. Otherwise the MTA-STS answer.
function dane_answer(self, domain, answer)
  local ok, d = pcall(self.client.dane, self.client, domain)
  if not ok then
    self.log("err", "dane " .. domain .. ": " .. tostring(d))
    return answer
  end
  if d.code == "bogus" then
    return "TEMP dane: the MX records of " .. domain .. " fail DNSSEC validation"
  end
  if not d.mx_secure then return answer end
  local n, with, failed = 0, 0, 0
  for _, h in pairs(d.hosts) do
    n = n + 1
    if h.status == "secure" and (h.usable or 0) > 0 then with = with + 1
    elseif h.status == "bogus" or h.status == "failed" then failed = failed + 1 end
  end
  if n > 0 and with == n then return "OK dane-only" end
  if with > 0 or failed > 0 then return "OK dane" end
  return answer
end

-- What the policy script's answer hook may return: a Postfix security level with its
-- attributes, on one line (the server sends "OK " and it).
local SCRIPT_LEVELS = { none = true, may = true, encrypt = true, dane = true,
  ["dane-only"] = true, fingerprint = true, verify = true, secure = true }
local function script_answer_ok(v)
  if type(v) ~= "string" then return "not a string" end
  local level = v:match("^(%S+)")
  if not (level and SCRIPT_LEVELS[level]) then
    return "not a Postfix security level (none, may, encrypt, dane, dane-only, fingerprint, " ..
      "verify, secure) with its attributes"
  end
  if #v > 1000 or find(v, "%c") then return "not one line of at most 1000 bytes" end
  return true
end

-- The policy script's say (docs/postfix.md, "Policy script"): on_failure is told of a
-- failure, answer may replace the answer. A script that fails or answers what Postfix cannot
-- take leaves the answer as it was (mtasts.script logs why).
local function scripted(self, name, domain, policy, result, source, answer, f, msg)
  local sc = self.script
  local ctx = { domain = domain, map = name, policy = policy, result = result,
    source = source, answer = answer, error = msg,
    failure = f and { result_type = f.result_type, reason = f.failure_reason_code } or nil }
  if f and sc:has("on_failure") then sc:call("on_failure", ctx) end
  if not sc:has("answer") then return answer end
  local v = sc:call("answer", ctx, nil, script_answer_ok)
  if v == nil then return answer end
  return "OK " .. v
end

-- The row version of a domain as the client's cache gives it now (a lock-free read), or nil:
-- no cache, a cache shared with a release without row versions, or a failure.
local function row_version(self, domain)
  local cache = self.client.cache
  if not cache then return nil end
  local ok, v = pcall(cache.version, cache, domain)
  if ok and math.type(v) == "integer" then return v end
  return nil
end

-- What lets an answer from the cache be kept past memo_seconds (see memo_get): the domain,
-- the row's version read before the lookup, the client's time until which the client would
-- answer the same without a write or a query (the row's next last_use touch, last_update +
-- recheck when it looks at DNS again, and with DANE consulted, recheck from now: the client
-- remembers its DANE answers that long), and the row's valid_end, past which the policy is
-- never used. nil when the row changed since v0 (or is not there).
local function keep_of(self, domain, v0, dane)
  local client = self.client
  local recheck, clock = client.recheck, self.clock
  if type(recheck) ~= "number" or not clock then return nil end
  local ok, row = pcall(client.cached, client, domain)
  if not (ok and type(row) == "table" and row.version == v0) then return nil end
  local soft = math.min(row.valid_end, row.last_use + core.touch_seconds,
    row.last_update + recheck)
  if dane then soft = math.min(soft, clock() + recheck) end
  return { domain, v0, soft, row.valid_end }
end

-- Answer one request (map name, domain) with the client: answer, source ("cache" or
-- "fetched"), and what lets the answer be remembered longer (keep_of), if anything.
local function lookup(self, name, domain)
  local zone = zone_of(self, name)
  local v0 = self.memo_rows and row_version(self, domain)
  local ok, policy, result, fresh, msg, code = pcall(self.client.get, self.client, domain)
  if not ok then
    self.log("err", "lookup " .. domain .. ": " .. tostring(policy))
    return "TEMP internal error"
  end
  if code == "domain-syntax" then    -- a name that can have no policy: nothing to enforce
    self.log("debug", ("%s: %s"):format(domain, tostring(msg)))
    return _M.answer(nil)
  end
  if code == "local" then
    -- this host failed (the CA file vanished, no memory or descriptors): TEMP, so Postfix
    -- defers; NOTFOUND would send an enforce domain's mail with opportunistic TLS
    local why = tostring(msg):gsub("%c", " "):sub(1, 200)
    self:note("local", "err", ("%s: %s (this host failed: answering TEMP)"):format(domain, why))
    local answer = "TEMP " .. why
    if self.info_on then
      self.log("info", _M.lookup_line(domain, answer, { source = "fetched",
        result_type = "local", reason = "this-host-failed" }))
    end
    return answer
  end
  -- The first failure the client recorded (a DNS failure or timeout of the _mta-sts record,
  -- an unusable record, a fetch that failed, a certificate, a policy that does not parse):
  -- with no policy to use, it is the policy_failure of the answer (docs/postfix.md,
  -- "When the policy cannot be obtained"); with a cached policy, that policy is served.
  local f = result and result.failures and result.failures[1]
  local failure = not policy and f and f.result_type or nil
  if self.on_lookup then pcall(self.on_lookup, domain, policy, result) end
  local text
  if policy and zone.tlsrpt then
    for _, s in ipairs(result and result.policy and result.policy.strings or {}) do
      text = (text and text .. "\n" or "") .. s
    end
    if text and find(text, "[{}]") then
      self:note("braces", "warning", domain .. ": policy lines with '{' or '}' are left out " ..
        "of the TLSRPT attributes")
    end
  end
  local answer = _M.answer(policy, { strict_testing = zone.strict_testing,
    require_sni = zone.require_sni, tlsrpt = zone.tlsrpt, text = text, domain = domain,
    failure = failure, failure_level = zone.failure_level })
  local source = (fresh or msg) and "fetched" or "cache"
  local dane = zone.dane ~= false and self.client.dane
  if dane then
    answer = dane_answer(self, domain, answer)
  end
  if self.script then
    answer = scripted(self, name, domain, policy, result, source, answer, f, msg)
  end
  if self.info_on or self.warning_on then
    log_lookup(self, domain, answer, { source = source,
      result_type = f and f.result_type, reason = f and f.failure_reason_code,
      message = msg and tostring(msg):gsub("%c", " ") or nil })
  end
  -- only what the row alone decides: not a TEMP (a bogus DANE answer, a failure), nor an
  -- answer the policy script may change
  local keep
  if v0 and source == "cache" and sub(answer, 1, 5) ~= "TEMP " and
      not (self.script and self.script:has("answer")) then
    keep = keep_of(self, domain, v0, dane)
  end
  return answer, source, keep
end

-- Answers by request ("name key"), as the netstrings to write: a burst of requests for one
-- domain costs one client lookup, and an answer can be written without a coroutine. An
-- answer is kept memo_seconds; one the cache gave (keep_of) is kept while the domain's row
-- keeps the version it had before the lookup (cache:version, one atomic load): a row another
-- process writes ends it at once, as it ends the client's own memo of hits. Once the client
-- would do something for it (touch the row, look at the _mta-sts record or DANE again), the
-- answer is still given while one lookup in a thread of the loop does that (refresh_entry),
-- until that lookup's answer replaces it, and never past the row's valid_end: a request
-- for a cached policy never waits on DNS. `now` is the loop's time when the request's bytes
-- were read. Two generations: the current one is retired after MEMO_GENERATION seconds
-- (memo_seconds when no answer can be kept longer), or once it holds memo_bytes, and the one
-- before it is dropped then, so the memo never holds more than twice memo_bytes; an answer
-- found in the retired generation moves to the current one.
-- An entry: { reply, monotonic end, lookups series, domain, version, soft end, size,
-- valid_end, refreshing } (the client's clock for the soft end and valid_end).
local MEMO_GENERATION = 60
local refresh_entry

local function memo_get(self, request, now)
  local m = self.memo[request]
  if not m then
    m = self.memo_old[request]
    if not m then return nil end
    if m[2] > now then        -- still good: into the current generation
      self.memo_old[request] = nil
      self.memo_old_used = self.memo_old_used - m[7]
      self.memo[request] = m
      self.memo_used = self.memo_used + m[7]
    end
  end
  if m[2] <= now then return nil end
  local domain = m[4]
  if domain then
    local t = self.clock()
    if t >= m[8] then return nil end
    if not m[9] then         -- (while a refresh runs, its own writes move the version)
      local cache = self.client.cache
      if not cache or cache:version(domain) ~= m[5] then return nil end
      if t >= m[6] and not refresh_entry(self, request, m) then return nil end
    end
  end
  return m[1], m[3]
end

-- The answer the cache gave for a request before, whatever its row's version and soft end,
-- while its policy's valid_end holds (reply, series); nil otherwise. For a lookup of the
-- request that has to wait: this answer is given meanwhile.
local function memo_stale(self, request)
  local m = self.memo[request] or self.memo_old[request]
  if m and m[8] and self.clock() < m[8] then return m[1], m[3] end
end

local function memo_put(self, request, reply, series, keep)
  if self.memo_seconds <= 0 then return end
  local t = monotime()
  if t >= self.memo_retire or self.memo_used >= self.memo_bytes then
    self.memo_old, self.memo = self.memo, {}
    self.memo_old_used, self.memo_used = self.memo_used, 0
    self.memo_retire = t + (self.memo_rows and math.max(MEMO_GENERATION, self.memo_seconds) or
      self.memo_seconds)
  end
  local size = #request + #reply + (keep and 160 or 96)
  local old = self.memo[request]
  self.memo_used = self.memo_used + size - (old and old[7] or 0)
  if keep then
    self.memo[request] = { reply, math.huge, series, keep[1], keep[2], keep[3], size, keep[4] }
  else
    -- the same answer as a kept one before it (a lookup that wrote the row, a recheck): its
    -- valid_end still bounds memo_stale
    old = old or self.memo_old[request]
    local hard = old and old[8] and old[1] == reply and old[8] or nil
    self.memo[request] = { reply, t + self.memo_seconds, series, nil, nil, nil, size, hard }
  end
end

local BUSY = _M.netstring("TEMP busy: too many lookups in flight")
local INTERNAL_ERROR = _M.netstring("TEMP internal error")

-- The kind of an answer, for the lookups metric: the security level of an OK, else the
-- status word in lower case (notfound, temp, perm).
local function answer_kind(answer)
  local level = answer:match("^OK (%S+)")
  if level then return level end
  return (answer:match("^(%u+)") or "other"):lower()
end

-- The netstring to write for a lookup's outcome (pcall's of lookup), counted in the lookups
-- metric and kept in the memo under the request `value`.
local function reply_of(self, value, looked, answer, source, keep)
  if not looked then
    self.log("err", "lookup: " .. tostring(answer))
    return INTERNAL_ERROR
  end
  local reply = _M.netstring(answer)
  local kind = answer_kind(answer)
  if source == "fetched" then self.trim_due = true end
  self.m_lookups:labels(kind, source or "none"):inc()
  memo_put(self, value, reply, self.m_lookups:labels(kind, "memo"), keep)
  return reply
end

-- Look up again, in a thread of the loop, the request of a memo entry whose soft end has
-- passed (memo_get): the entry is given meanwhile, and the lookup's answer replaces it.
-- At most REFRESHES such lookups run at once (each ends with a write to the cache that
-- holds the loop for a moment: hundreds at once held it for a second); past that the entry
-- is given without one, and a later request starts it. false (the entry is not given) when
-- the lookup cap is reached or the server stops.
local REFRESHES = 4
function refresh_entry(self, request, m)
  if self.stopping or self.lookups >= self.max_lookups then return false end
  if self.refreshes >= REFRESHES then return true end
  m[9] = true
  self.lookups, self.refreshes = self.lookups + 1, self.refreshes + 1
  self.loop:wrap(function()
    reply_of(self, request, pcall(lookup, self, smatch(request, "^(%S+) "), m[4]))
    self.lookups, self.refreshes = self.lookups - 1, self.refreshes - 1
    m[9] = nil
  end)
  return true
end

-- A lookup as the body of a coroutine: looked, answer, source (pcall's).
local function lookup_job(self, name, domain) return pcall(lookup, self, name, domain) end

-- A lookup started inline that waits (for DNS, HTTPS, another caller's fetch) goes on in a
-- thread of the loop: each poll it yields is made from that thread (cqueues' _POLL protocol,
-- as cqueues.auxlib.resume passes it on), until it returns.
local _POLL = cqueues._POLL
local function settle(co, ok, first, ...)
  if ok and first == _POLL then
    return settle(co, coroutine.resume(co, coroutine.yield(_POLL, ...)))
  end
  if coroutine.status(co) ~= "dead" then   -- not a poll: pass the yield on, as the loop would
    return settle(co, coroutine.resume(co, coroutine.yield(first, ...)))
  end
  if not ok then return false, first end
  return first, ...
end

-- Put s into the connection's output buffer within write_timeout seconds: true, or nil when
-- the peer does not take it. (cqueues' write waits afresh after every partial write, and
-- then flushes without a time limit: a peer that stops reading held it forever.)
local function send_all(self, con, s, i)
  i = i or 1
  local deadline = monotime() + self.write_timeout
  while true do
    local n, err = con:send(s, i, #s, "f")
    i = i + (n or 0)
    if i > #s then return true end
    if err ~= EAGAIN then return nil end
    local left = deadline - monotime()
    if left <= 0 then return nil end
    poll(con, left)
  end
end

-- Flush the output buffer within write_timeout seconds: true, or false.
local function flush(self, con)
  return con:flush("n", self.write_timeout) and true or false
end

-- --- metrics over HTTP ---

local HTTP_HEAD_MAX, HTTP_TIMEOUT = 8192, 5

-- Answer one HTTP request on con, whose first bytes are `buf`: GET or HEAD /metrics gets the
-- exposition, anything else 404 or 405; then the connection is closed by the caller. Reads
-- the request head within HTTP_TIMEOUT seconds. true when the answer was written.
function serve_http(self, con, buf)
  local deadline = monotime() + HTTP_TIMEOUT
  buf = buf or ""
  while not find(buf, "\r?\n\r?\n") and #buf < HTTP_HEAD_MAX do
    local left = deadline - monotime()
    if left <= 0 then return false end
    local chunk, rerr = con:recv(-4096)
    if chunk then buf = buf .. chunk
    elseif rerr == EAGAIN then poll(con, left)
    else break end
  end
  local method, path = buf:match("^(%u+) (%S+) HTTP/1%.[01]\r?\n")
  local status, body, ctype = "400 Bad Request", "bad request\n", "text/plain"
  if method and method ~= "GET" and method ~= "HEAD" then
    status, body = "405 Method Not Allowed", "GET /metrics\n"
  elseif path and (path == "/metrics" or path:match("^/metrics%?")) then
    status, ctype = "200 OK", metrics.CONTENT_TYPE
    self.scrapes = self.scrapes + 1
    local ok, text = pcall(self.registry.expose, self.registry)
    if ok then body = text else
      self.log("err", "metrics: " .. tostring(text))
      status, body, ctype = "500 Internal Server Error", "internal error\n", "text/plain"
    end
  elseif path then
    status, body = "404 Not Found", "metrics are at /metrics\n"
  end
  local head = format("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" ..
    "Connection: close\r\n\r\n", status, ctype, #body)
  return send_all(self, con, method == "HEAD" and head or head .. body) and flush(self, con)
end

-- A connection to a metrics listener: one request, one answer, closed.
local function serve_metrics(self, con)
  con:setmode("b", "bf")
  con:onerror(function(_, _, why) return why end)
  self.connections[con] = true
  local ok, err = pcall(serve_http, self, con, "")
  if not ok then self.log("warning", "metrics connection: " .. tostring(err)) end
  self.connections[con] = nil
  self.nconnections = self.nconnections - 1
  con:close()
end

-- One connection: read netstrings, start a lookup per request, write answers in order.
-- The path of a remembered answer with nothing before it (the common case) is kept short:
-- no coroutine, no copy of the input, one write and one flush per chunk read.
-- Whatever the peer does (reset, stop reading, pipeline without end), the connection's slot
-- is given back: socket errors are values, writes and flushes time out (write_timeout), at
-- most max_pending answers wait to be written before the reader stops reading, and both
-- halves run under pcall with one cleanup.
local function serve_connection(self, con)
  con:setmode("b", "bf")    -- writes are buffered; flushed when there is nothing more to read
  con:onerror(function(_, _, why) return why end)
  self.connections[con] = true
  local answers, next_write, next_slot = {}, 1, 1
  local writer_wake, reader_wake = condition.new(), condition.new()
  -- writing: the writer is inside a write (its send may wait for the socket with part of an
  -- answer still to go); nothing else may write to the socket then
  local reading, closed, writing = true, false, false
  local max = self.max_request
  local maxdigits = #tostring(max)
  self.loop:wrap(function()     -- the writer: answers in request order
    local ok, err = pcall(function()
      while true do
        while answers[next_write] do
          local a = answers[next_write]
          answers[next_write] = nil
          next_write = next_write + 1
          if not closed then
            writing = true
            if not (send_all(self, con, a) and flush(self, con)) then closed = true end
            writing = false
          end
          reader_wake:signal()
        end
        if not reading and next_write == next_slot then break end
        if closed and not reading then break end
        writer_wake:wait()
      end
    end)
    if not ok then self.log("warning", "connection writer: " .. tostring(err)) end
    closed = true
    reader_wake:signal()
    self.connections[con] = nil
    self.nconnections = self.nconnections - 1
    con:close()
  end)
  -- The input is read with one recv of the socket (core.recv), not through cqueues' buffer,
  -- so the server's loop can read it too while this reader is parked (below).
  local fd = con:pollfd()
  local readable = { pollfd = fd, events = "r" }
  local buf, pos, idle, now = "", 1, 0, monotime()
  local parked, park_wake, unsent, unsent_at = false, condition.new(), nil, 1
  local counts = self.counts
  local function append(chunk)   -- input read, by the reader or by the loop for it
    if pos > #buf then buf = chunk else buf = sub(buf, pos) .. chunk end
    pos, idle, now = 1, 0, monotime()
  end
  local serve_parked
  local function unpark()
    parked = false
    if self.parked[fd] == serve_parked then     -- (not another connection's, on a new fd)
      self.parked[fd] = nil
      if self.poller then self.poller:unwatch(fd) end
    end
  end
  -- While the reader is parked, the server's loop calls this when the socket is readable: it
  -- reads, and answers from the memo the requests it can, in order, as the reader would,
  -- with one send for all of them. true: parked still; false: unparked, and the reader is
  -- woken for what is left (a request the memo does not know, a netstring error, answers the
  -- socket did not wholly take, a closed socket).
  local replies = {}
  local function parked_read()
    local chunk = recv(fd, 4096)
    if chunk == false then return true end
    local stay, n = chunk and true or false, 0
    if chunk then
      append(chunk)
      while true do
        local value, nextpos, terr = take(buf, pos, max, maxdigits)
        if not value then
          stay = not terr
          break
        end
        local known, series = memo_get(self, value, now)
        if not known then
          stay = false
          break
        end
        pos = nextpos
        series.v = series.v + 1   -- (series:inc(), inlined: this is the hot path)
        n = n + 1
        replies[n] = known
      end
    end
    if n > 0 then
      counts.parked = counts.parked + n
      local out = n == 1 and replies[1] or concat(replies, "", 1, n)
      for i = 1, n do replies[i] = nil end
      local sent = send(fd, out) or 0
      if sent < #out then
        unsent, unsent_at, stay = out, sent + 1, false
      end
    end
    return stay
  end
  function serve_parked()
    local ok, stay = pcall(parked_read)
    if ok and stay then return true end
    if not ok then
      -- requests were taken whose answers were not sent: the connection cannot go on in
      -- order, so it ends (Postfix asks again on a new one)
      self.log("err", "socketmap connection: " .. tostring(stay))
      for i = #replies, 1, -1 do replies[i] = nil end
      closed = true
    end
    unpark()
    park_wake:signal()
    return false
  end
  local ok, err = pcall(function()
    while reading and not closed and self.is_open do
      -- back-pressure: Postfix asks one request at a time; a peer that pipelines without
      -- reading its answers is not read from until they are written
      while next_slot - next_write >= self.max_pending and not closed do
        if not flush(self, con) then closed = true end
        reader_wake:wait(1)
      end
      if closed then break end
      if unsent then              -- what the server's loop could not send for it: first
        local s, i = unsent, unsent_at
        unsent = nil
        if not send_all(self, con, s, i) then closed = true break end
      end
      local value, nextpos, terr = take(buf, pos, max, maxdigits)
      if terr and self.metrics_on_socketmap and next_slot == 1 and sub(buf, pos, pos + 3) ==
          "GET " then
        -- a scrape on the socketmap port: no netstring starts with a letter
        if not serve_http(self, con, sub(buf, pos)) then closed = true end
        closed = true
        break
      end
      if terr then
        self.log("warning", "closing a connection: " .. terr)
        closed = true
        break
      end
      if value then
        pos = nextpos
        local known, series = memo_get(self, value, now)
        local name, domain
        if known then
          series:inc()
        else
          name, domain = parse_request(value)
          if not name then         -- answered without a lookup
            known = _M.netstring(domain)
            self.m_lookups:labels(answer_kind(domain), "none"):inc()
          end
        end
        local handed = false
        if not known and next_write == next_slot and self.lookups < self.max_lookups then
          -- nothing waits before it: look up inline, in a coroutine resumed here. The cache
          -- answers most at once, and then the answer is written below as a remembered one
          -- is, without a thread of the loop or a hop through the writer. A lookup that
          -- waits (DNS, HTTPS) goes on in a thread of the loop, its answer in its slot.
          self.lookups = self.lookups + 1
          local co = coroutine.create(lookup_job)
          local r = pack(coroutine.resume(co, self, name, domain))
          local stale, sseries
          if coroutine.status(co) ~= "dead" and self.refreshes < REFRESHES then
            stale, sseries = memo_stale(self, value)
          end
          if coroutine.status(co) == "dead" then
            self.lookups = self.lookups - 1
            if r[1] then known = reply_of(self, value, r[2], r[3], r[4], r[5])
            else known = reply_of(self, value, false, r[2]) end
          elseif stale then
            -- it waits (DNS, HTTPS), and the answer the cache gave before is still within
            -- its policy's valid_end: that answer now, and the lookup's replaces it
            known = stale
            sseries:inc()
            self.refreshes = self.refreshes + 1
            local request = value
            self.loop:wrap(function()
              reply_of(self, request, settle(co, unpack(r, 1, r.n)))
              self.lookups, self.refreshes = self.lookups - 1, self.refreshes - 1
            end)
          else
            local slot, request = next_slot, value
            next_slot, handed = next_slot + 1, true
            self.loop:wrap(function()
              local reply = reply_of(self, request, settle(co, unpack(r, 1, r.n)))
              self.lookups = self.lookups - 1
              answers[slot] = reply
              writer_wake:signal()
            end)
          end
        end
        if known and next_write == next_slot and not writing then
          -- nothing waits before it: answer now, no coroutine (into the socket's buffer:
          -- the raw send, as cqueues' write adds two layers of Lua per call)
          local n = con:send(known, 1, #known, "f") or 0
          if n < #known and not send_all(self, con, known, n + 1) then closed = true end
        elseif not handed then
          local slot = next_slot
          next_slot = next_slot + 1
          if known then
            answers[slot] = known
            writer_wake:signal()
          elseif self.lookups >= self.max_lookups and not (self.client.answers_now and
              self.client:answers_now(domain)) then
            -- at the cap: Postfix defers this delivery and asks again, rather than wait
            -- here (what the cache answers at once still goes through)
            self.counts.busy = self.counts.busy + 1
            self.m_lookups:labels("temp", "busy"):inc()
            self:note("busy", "warning", ("%d lookups in flight, the limit: answering " ..
              "TEMP"):format(self.lookups))
            answers[slot] = BUSY
            writer_wake:signal()
          else
            self.lookups = self.lookups + 1
            local request = value
            self.loop:wrap(function()
              local reply = reply_of(self, request, pcall(lookup, self, name, domain))
              self.lookups = self.lookups - 1
              answers[slot] = reply
              writer_wake:signal()
            end)
          end
        end
      else
        if not flush(self, con) then closed = true break end
        -- a second at a time, so a stop is noticed: Postfix keeps idle connections open
        if self.stopping and next_write == next_slot then break end
        local chunk = recv(fd, 4096)
        local arrived = false       -- bytes the server's loop read for this reader meanwhile
        if chunk == false then
          local P = self.poller
          if self.driven and P and next_write == next_slot and not writing and
              self.memo_seconds > 0 and P:watch(fd, "r") then
            -- nothing in flight: park. The server's loop waits on the socket with everything
            -- else, and answers from the memo without waking this reader (serve_parked):
            -- no hop through cqueues per request. Woken for anything else, or after a second.
            -- (Without a memo, every request would wake it: no parking then.)
            local t0 = now
            parked = true
            self.parked[fd] = serve_parked
            park_wake:wait(1)
            if parked then unpark() end
            arrived = now ~= t0
          else
            poll(readable, 1)
          end
          if closed then break end
          if not arrived then chunk = recv(fd, 4096) end
        end
        if chunk then
          append(chunk)
        elseif chunk == false then
          if not arrived then
            if monotime() - now >= idle + 1 then idle = idle + 1 end
            if idle >= self.idle_timeout then break end
          end
        else
          break                      -- closed by Postfix, or an error
        end
      end
    end
  end)
  if not ok then
    self.log("warning", "connection reader: " .. tostring(err))
    closed = true
  end
  reading = false
  writer_wake:signal()
end


-- The server's metric families, in the client's registry when it has one (its DNS, fetch
-- and refresh families are exposed beside these): docs/metrics.md lists them all.
function families(self)
  local client = self.client
  local reg = type(client.metrics) == "function" and client:metrics() or metrics.registry()
  self.registry = reg
  local series = {}
  for _, a in ipairs({ "secure", "notfound", "temp" }) do
    for _, src in ipairs({ "memo", "cache", "fetched" }) do series[#series + 1] = { a, src } end
  end
  self.m_lookups = reg:counter("mtasts_lookups_total", "Socketmap requests answered, by " ..
    "answer (the security level of an OK, else notfound, temp, perm) and source (memo: " ..
    "the same request's answer given before, still good; cache; fetched: DNS or HTTPS " ..
    "now; none: no lookup needed; busy: over the lookup limit).", { "answer", "source" },
    { series = series })
  reg:counter("mtasts_connections_total", "Connections by outcome: accepted, refused (over " ..
    "the limit), accept errors.", { "outcome" }, { collect = function(f)
      f:labels("accepted").v = self.counts.accepted
      f:labels("refused").v = self.counts.refused
      f:labels("error").v = self.counts.accept_errors
    end })
  reg:gauge("mtasts_connections_open", "Connections open now.", nil,
    { collect = function(f) f:set(self.nconnections) end })
  reg:gauge("mtasts_lookups_in_flight", "Lookups in flight now.", nil,
    { collect = function(f) f:set(self.lookups) end })
  -- the cache's rows, read at most every 30 s (a list decodes every row)
  local rows_at, rows = -math.huge, {}
  reg:gauge("mtasts_cache_rows", "Cached policies by state: enforce, testing, none (valid " ..
    "rows by mode), expired, backoff.", { "state" }, {
    series = { { "enforce" }, { "testing" }, { "none" }, { "expired" }, { "backoff" } },
    collect = function(f)
      if monotime() - rows_at >= 30 then
        rows_at = monotime()
        rows = { enforce = 0, testing = 0, none = 0, expired = 0, backoff = 0 }
        local list = self.client.records and self.client:records() or {}
        local now = os.time()
        for _, r in ipairs(list) do
          local state = r.backoff and "backoff" or (r.valid_end <= now and "expired") or
            r.policy.mode
          rows[state] = (rows[state] or 0) + 1
        end
      end
      for state, n in pairs(rows) do f:labels(state):set(n) end
    end })
  -- the TLSRPT result store beside the cache (what Postfix or a host recorded, the reports'
  -- deliveries waiting for a retry), read at most every 60 s
  local store_at, store_stats, store = -math.huge, nil, nil
  local function tlsrpt_stats()
    if monotime() - store_at < 60 then return store_stats end
    store_at = monotime()
    local path = self.client.path
    if not path then return nil end
    if not store then
      local st, err = tlsrpt.open{ path = path, resolver = {}, fetcher = {} }
      if not st then
        self:note("tlsrpt-metrics", "warning", "metrics: the result store: " .. tostring(err))
        return nil
      end
      store = st
      self.metrics_store = st
    end
    store_stats = store:stats()
    return store_stats
  end
  reg:gauge("mtasts_tlsrpt_sessions", "TLS sessions in the result store's retained days, " ..
    "by result.", { "result" }, { series = { { "success" }, { "failure" } },
    collect = function(f)
      local st = tlsrpt_stats()
      local ok_n, fail_n = 0, 0
      for _, d in ipairs(st and st.days or {}) do
        ok_n, fail_n = ok_n + d.success, fail_n + d.failure
      end
      f:labels("success"):set(ok_n)
      f:labels("failure"):set(fail_n)
    end })
  reg:gauge("mtasts_tlsrpt_deliveries", "Report deliveries of the retained days by state: " ..
    "sent, failed (given up), pending (waiting for a retry), sending.", { "status" },
    { series = { { "sent" }, { "failed" }, { "pending" }, { "sending" } },
    collect = function(f)
      local st = tlsrpt_stats()
      for _, k in ipairs({ "sent", "failed", "pending", "sending" }) do
        f:labels(k):set(st and st.deliveries and st.deliveries[k] or 0)
      end
    end })
  reg:gauge("mtasts_tlsrpt_report_retries", "Report deliveries waiting for a retry.", nil,
    { collect = function(f)
      local st = tlsrpt_stats()
      f:set(st and #st.retries or 0)
    end })
  reg:counter("mtasts_policy_script_calls_total", "Calls of the policy script's hooks.", nil,
    { collect = function(f) f:labels().v = self.script and self.script.calls or 0 end })
  reg:counter("mtasts_policy_script_errors_total", "Policy script calls that failed, ran " ..
    "over their budget or answered what Postfix cannot take (the default answer was sent).",
    nil, { collect = function(f) f:labels().v = self.script and self.script.errors or 0 end })
  reg:counter("mtasts_metrics_scrapes_total", "Scrapes of these metrics.", nil,
    { collect = function(f) f:labels().v = self.scrapes end })
  reg:gauge("process_start_time_seconds", "Start time of the process since the epoch.", nil)
    :set(START_TIME)
  local v = core.library_versions and core.library_versions() or {}
  reg:gauge("mtasts_build_info", "Versions of mtasts and the libraries it runs with.",
    { "version", "lua", "curl", "openssl", "bdb", "unbound" }):labels(mtasts._VERSION,
    tostring(v.lua), tostring(v.curl), tostring(v.openssl), tostring(v.bdb),
    tostring(v.unbound)):set(1)
end

--- Make a server. opts: client (an mtasts client; made from client_opts otherwise, with
-- the loop's wait), client_opts, listen ({ "inet:127.0.0.1:8461", "unix:/path" }),
-- socket_mode (e.g. "0660" for unix sockets), zones ({ [mapname] = { strict_testing =,
-- require_sni =, tlsrpt =, failure_level = } }, "*" for any other name), log
-- (function(level, message)), max_request, idle_timeout, on_lookup, memo_seconds (how long
-- an answer is reused for the same request: default 1, and one the cache gave while its row
-- is unchanged, see memo_get; 0 turns the memo off), memo_bytes (what
-- the memo may hold, default 8 MiB), max_connections (default 1024: a connection over it is
-- closed at once, so Postfix defers), max_lookups (lookups in flight, default 256: a request
-- over it is answered TEMP, unless the cache answers it at once). Both caps are lowered to
-- fit the descriptor limit. write_timeout (default 30 s: a peer that reads none of its
-- answers for that long is dropped), max_pending (answers waiting to be written on one
-- connection before it is not read from, default 64).
-- Unattended running (docs/postfix.md): refresh ({ interval = 3600, spacing = 1 } by
-- default: a maintain pass of the client every interval, with jitter; false: none), metrics
-- (listen addresses of a Prometheus endpoint), metrics_on_socketmap (default true: a GET on
-- the socketmap port is answered with the metrics too), policy (a policy script's file),
-- policy_budget, policy_exec (mtasts.script's budget and allow_exec), on_reload (called on
-- SIGHUP before the policy script is read again: a host re-reads its settings and calls
-- server:set_zones), tlsrpt (a libtlsrpt datagram collector run by this server, recording
-- Postfix 3.10's TLS results in the result store beside the cache: { listen = "unix:PATH",
-- socket_mode =, socket_group = }, docs/tlsrpt-collector.md).
local OPTIONS = { client = true, client_opts = true, listen = true, socket_mode = true,
  zones = true, log = true, max_request = true, idle_timeout = true, on_lookup = true,
  memo_seconds = true, memo_bytes = true, max_connections = true, max_lookups = true,
  write_timeout = true, max_pending = true, refresh = true, metrics = true,
  metrics_on_socketmap = true, policy = true, policy_budget = true, policy_exec = true,
  on_reload = true, tlsrpt = true }

-- Zone options and their types; failure_level must be one of Postfix's security levels.
local ZONE_OPTIONS = { strict_testing = "boolean", require_sni = "boolean", tlsrpt = "boolean",
  failure_level = "string", dane = "boolean" }
local LEVELS = { none = true, may = true, encrypt = true, dane = true, ["dane-only"] = true,
  fingerprint = true, verify = true, secure = true }
local LIMITS = { "max_request", "idle_timeout", "memo_seconds", "memo_bytes",
  "max_connections", "max_lookups", "write_timeout", "max_pending" }

--- Parse a listen address: { path = } for "unix:PATH", { host =, port = } for
-- "inet:HOST:PORT", "HOST:PORT", "[IPv6]:PORT" (PORT 0: any free port); or nil, the reason.
function _M.parse_listen(spec)
  local path = spec:match("^unix:(.*)$")
  if path then
    if path == "" then return nil, "unix: needs a path" end
    return { path = path }
  end
  local rest = spec:match("^inet:(.*)$")
  if not rest then
    -- without a scheme, HOST:PORT with a numeric port; anything else names a scheme
    if not (spec:find("^%[[^%]]*%]:%d+$") or spec:find("^[^:%[%]]+:%d+$")) then
      local scheme = spec:match("^(%a[%w+.-]*):")
      if scheme then
        return nil, ("'%s' is not a known scheme (inet:HOST:PORT, HOST:PORT or unix:PATH)")
          :format(scheme)
      end
      return nil, "expected inet:HOST:PORT, HOST:PORT or unix:PATH"
    end
    rest = spec
  end
  local host, port = rest:match("^%[([^%]]*)%]:([^:]*)$")
  if not host then host, port = rest:match("^([^:%[%]]+):([^:]*)$") end
  if not host then return nil, "expected inet:HOST:PORT, HOST:PORT or unix:PATH" end
  if host == "" then return nil, "the host is empty" end
  local n = port:match("^%d+$") and tonumber(port)
  if not n then return nil, ("port %s is not a number"):format(settings.show(port)) end
  if n > 65535 then return nil, ("port %d is out of range (0-65535)"):format(n) end
  return { host = host, port = n }
end

-- A socket mode ("0660", "660" or a number read as octal digits): the number, or nil.
local function parse_mode(mode)
  local m = tostring(mode):match("^0?([0-7][0-7][0-7])$")
  return m and tonumber(m, 8) or nil
end

-- The values of new's options (their types checked already): true, or a config failure.
local function check_values(opts, listen, zones)
  for _, k in ipairs(LIMITS) do
    local ok, err, code, key
    if k == "memo_seconds" then ok, err, code, key = settings.at_least(k, opts[k], 0)
    else ok, err, code, key = settings.integer(k, opts[k], 0) end
    if not ok then return nil, err, code, key end
  end
  for _, spec in ipairs(listen) do
    local ok, why = _M.parse_listen(spec)
    if not ok then return settings.fail("listen", settings.show(spec) .. ": " .. why) end
  end
  local m = opts.metrics
  for _, spec in ipairs(type(m) == "table" and m or { m }) do
    local ok, why = _M.parse_listen(spec)
    if not ok then return settings.fail("metrics", settings.show(spec) .. ": " .. why) end
  end
  local r = opts.refresh
  if type(r) == "table" then
    local ok, err, code, key = settings.seconds("refresh.interval", r.interval)
    if ok then ok, err, code, key = settings.at_least("refresh.spacing", r.spacing, 0) end
    if not ok then return nil, err, code, key end
  end
  if opts.socket_mode ~= nil and not parse_mode(opts.socket_mode) then
    return settings.fail("socket_mode", settings.show(opts.socket_mode) ..
      " is not an octal mode like 0660")
  end
  for name, zone in pairs(zones) do
    if zone.failure_level ~= nil and not LEVELS[zone.failure_level] then
      return settings.fail("zones", ("failure_level %s of zone '%s' is not a Postfix " ..
        "security level (none, may, encrypt, dane, dane-only, fingerprint, verify, secure)")
        :format(settings.show(zone.failure_level), name))
    end
  end
  return true
end

--- Check the values of new's options without making anything (mtasts config check): listen
-- addresses, socket_mode, zones' failure_level, the limits. true, or nil, message, "config",
-- option.
function _M.check(opts)
  opts = opts or {}
  return check_values(opts, opts.listen or {}, opts.zones or {})
end

function _M.new(opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'new' (table expected)", 2) end
  for k in pairs(opts) do
    if not OPTIONS[k] then
      error("bad argument #1 to 'new' (unknown option '" .. tostring(k) .. "')", 2)
    end
  end
  local function bad(msg) error("bad argument #1 to 'new' (" .. msg .. ")", 3) end
  for _, k in ipairs({ "log", "on_lookup" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "function" then bad(k .. " must be a function") end
  end
  for _, k in ipairs(LIMITS) do
    if opts[k] ~= nil and type(opts[k]) ~= "number" then bad(k .. " must be a number") end
  end
  local listen = opts.listen or {}
  if type(listen) ~= "table" then bad("listen must be a list of addresses") end
  for _, spec in ipairs(listen) do
    if type(spec) ~= "string" then bad("listen must be a list of addresses") end
  end
  if opts.socket_mode ~= nil and type(opts.socket_mode) ~= "string" and
      type(opts.socket_mode) ~= "number" then
    bad("socket_mode must be a string")
  end
  local zones = opts.zones or {}
  if type(zones) ~= "table" then bad("zones must be a table") end
  for name, zone in pairs(zones) do
    if type(name) ~= "string" or type(zone) ~= "table" then
      bad("zones must map names to tables")
    end
    for k, v in pairs(zone) do
      if not ZONE_OPTIONS[k] then
        bad("unknown option '" .. tostring(k) .. "' in zone '" .. name .. "'")
      end
      if type(v) ~= ZONE_OPTIONS[k] then
        bad(("%s of zone '%s' must be a %s"):format(k, name, ZONE_OPTIONS[k]))
      end
    end
  end
  if opts.client == nil and opts.client_opts ~= nil and type(opts.client_opts) ~= "table" then
    bad("client_opts must be a table")
  end
  if opts.refresh ~= nil and opts.refresh ~= false and type(opts.refresh) ~= "table" then
    bad("refresh must be a table or false")
  end
  if type(opts.refresh) == "table" then
    for k, v in pairs(opts.refresh) do
      if (k ~= "interval" and k ~= "spacing") or type(v) ~= "number" then
        bad("refresh takes numbers interval and spacing")
      end
    end
  end
  if opts.metrics ~= nil and type(opts.metrics) ~= "string" and type(opts.metrics) ~= "table"
  then
    bad("metrics must be an address or a list of addresses")
  end
  if opts.policy ~= nil and type(opts.policy) ~= "string" then bad("policy must be a file name") end
  if opts.on_reload ~= nil and type(opts.on_reload) ~= "function" then
    bad("on_reload must be a function")
  end
  if opts.tlsrpt ~= nil and type(opts.tlsrpt) ~= "table" then bad("tlsrpt must be a table") end
  -- the values, before the client is opened (its cache directory made) or anything bound
  do
    local ok, err, code, key = check_values(opts, listen, zones)
    if ok and opts.tlsrpt then
      ok, err, code, key = require("mtasts.tlsrpt.collector").check(opts.tlsrpt)
      if not ok then err, key = "tlsrpt." .. tostring(err), "tlsrpt." .. tostring(key) end
    end
    if not ok then return nil, err, code, key end
  end
  local self = setmetatable({ loop = cqueues.new(), zones = zones,
    log = opts.log or logging.null, max_request = opts.max_request or _M.MAX_REQUEST,
    idle_timeout = opts.idle_timeout or _M.IDLE_TIMEOUT, listeners = {}, connections = {},
    on_lookup = opts.on_lookup, stopping = false, memo = {}, memo_old = {}, memo_used = 0,
    memo_retire = 0, memo_seconds = opts.memo_seconds or _M.MEMO_SECONDS,
    memo_bytes = opts.memo_bytes or _M.MEMO_BYTES, nconnections = 0, lookups = 0, refreshes = 0,
    max_connections = opts.max_connections or _M.MAX_CONNECTIONS,
    max_lookups = opts.max_lookups or _M.MAX_LOOKUPS, noted = {},
    write_timeout = opts.write_timeout or _M.WRITE_TIMEOUT,
    max_pending = opts.max_pending or _M.MAX_PENDING, memo_old_used = 0, parked = {},
    ready = {}, driven = false,
    counts = { accepted = 0, refused = 0, busy = 0, accept_errors = 0, parked = 0 },
    is_open = true },
    server_mt)
  -- the levels are asked once: a line is built only when its level is written
  self.info_on = logging.enabled(self.log, "info")
  self.warning_on = logging.enabled(self.log, "warning")
  if opts.client then
    self.client = opts.client
  else
    local co = {}
    for k, v in pairs(opts.client_opts or {}) do co[k] = v end
    co.wait = function(fd, events, timeout)
      cqueues.poll({ pollfd = fd, events = events }, timeout)
    end
    local client, err, code, key = mtasts.open(co)
    if not client then return nil, err, code, key end
    self.client, self.owns_client = client, true
  end
  -- answers the cache gave are kept while their row is unchanged (memo_get) when the client
  -- has a cache with row versions and says how long its hits stand (recheck, its clock)
  local client = self.client
  self.clock = type(client.clock) == "function" and client.clock or os.time
  self.memo_rows = self.memo_seconds > 0 and type(client.recheck) == "number" and
    type(client.cached) == "function"
  if opts.policy then
    local sc, serr, scode, skey = script_mod.load(opts.policy, { log = self.log,
      budget = opts.policy_budget, allow_exec = opts.policy_exec })
    if not sc then self:close() return nil, serr, scode, skey end
    self.script = sc
  end
  self.refresh = opts.refresh
  if self.refresh == nil then self.refresh = {} end
  self.metrics_on_socketmap = opts.metrics_on_socketmap ~= false
  self.on_reload = opts.on_reload
  self.scrapes = 0
  families(self)
  if opts.tlsrpt then
    local t = opts.tlsrpt
    local col, cerr, ccode = require("mtasts.tlsrpt.collector").open{ path = self.client.path,
      listen = t.listen, socket_mode = t.socket_mode, socket_group = t.socket_group,
      log = self.log }
    if not col then
      self:close()
      if ccode == "listen" then return nil, "tlsrpt." .. tostring(cerr), ccode, "tlsrpt.listen" end
      return nil, cerr, ccode
    end
    self.collector = col
    col:families(self.registry)
    self.listeners[#self.listeners + 1] = { spec = "unix:" .. col.path, kind = "tlsrpt" }
    self.loop:wrap(function() collect_loop(self) end)
  end
  for _, spec in ipairs(listen) do
    local ok, err, code = self:listen(spec, opts.socket_mode)
    if not ok then self:close() return nil, err, code end
  end
  local m = opts.metrics
  for _, spec in ipairs(type(m) == "table" and m or { m }) do
    local ok, err, code = self:listen(spec, opts.socket_mode, "metrics")
    if not ok then self:close() return nil, err, code end
  end
  self:fit_descriptors()
  return self
end

-- Methods raise on a wrong self and once the object is closed.
local function live(self, fn)
  if getmetatable(self) ~= server_mt then
    error("bad self to '" .. fn .. "' (mtasts.postfix.server expected)", 3)
  end
  if not self.is_open then error("attempt to use a closed mtasts.postfix.server", 3) end
end

--- Log a message of a kind at most once every 10 seconds, saying how many were held back.
function Server:note(kind, level, msg)
  live(self, "note")
  local now = monotime()
  local n = self.noted[kind]
  if n and now < n.next then
    n.held = n.held + 1
    return
  end
  local held = n and n.held or 0
  self.noted[kind] = { next = now + 10, held = 0 }
  self.log(level, held > 0 and ("%s (and %d more like it)"):format(msg, held) or msg)
end

--- Fit max_connections and max_lookups to the descriptor limit: raise the soft limit as far
-- as they need (and the hard limit allows), else lower them, keeping descriptors free for
-- the resolver, the fetcher and the cache. Returns the two caps.
function Server:fit_descriptors()
  live(self, "fit_descriptors")
  local _, _, open = core.nofile()
  local reserve = (open and open > 0 and open or 16) + FDS_SPARE
  local need = reserve + self.max_connections + FDS_PER_LOOKUP * self.max_lookups
  local soft = core.nofile(need)
  if soft and soft < need then
    local room = soft - reserve
    local conns = math.max(1, math.min(self.max_connections, room // 2))
    local lookups = math.max(1, math.min(self.max_lookups, (room - conns) // FDS_PER_LOOKUP))
    self.log("warning", ("the descriptor limit is %d: serving at most %d connections and " ..
      "%d lookups at once (asked for %d and %d; raise LimitNOFILE or ulimit -n)"):format(
      soft, conns, lookups, self.max_connections, self.max_lookups))
    self.max_connections, self.max_lookups = conns, lookups
  end
  return self.max_connections, self.max_lookups
end

--- What the server holds and has refused: { connections =, lookups =, max_connections =,
-- max_lookups =, accepted = (connections served so far), refused = (connections closed at
-- the cap), busy = (requests answered TEMP at the cap), accept_errors = (accept failures,
-- e.g. out of descriptors), memo_bytes = (both generations) }.
function Server:stats()
  live(self, "stats")
  return { connections = self.nconnections, lookups = self.lookups,
    max_connections = self.max_connections, max_lookups = self.max_lookups,
    accepted = self.counts.accepted, refused = self.counts.refused, busy = self.counts.busy,
    accept_errors = self.counts.accept_errors, parked_answers = self.counts.parked,
    memo_bytes = self.memo_used + self.memo_old_used }
end

--- Listen on "inet:HOST:PORT" (PORT 0: any free port), "HOST:PORT", or "unix:PATH".
-- Returns the bound address as "inet:host:port" / "unix:path", or nil, message, "listen"
-- (the message names the address and the reason: a port out of range, an unknown scheme,
-- an address in use).
function Server:listen(spec, mode, kind)
  live(self, "listen")
  if type(spec) ~= "string" then
    error("bad argument #1 to 'listen' (string expected, got " .. type(spec) .. ")", 2)
  end
  local where, bad = _M.parse_listen(spec)
  if not where then return nil, ("listen: %s: %s"):format(settings.show(spec), bad), "listen" end
  local nmode = mode ~= nil and parse_mode(mode) or nil
  if mode ~= nil and not nmode then
    return nil, "socket_mode: " .. settings.show(mode) .. " is not an octal mode like 0660",
      "listen"
  end
  local path = where.path
  local srv, err
  if path then
    srv, err = socket.listen{ path = path, unlink = true, mode = nmode }
  else
    srv, err = socket.listen{ host = where.host, port = where.port, reuseaddr = true }
  end
  local function failed(e)
    if srv then pcall(srv.close, srv) end
    return nil, ("listen: %s: %s"):format(settings.show(spec),
      type(e) == "number" and errno.strerror(e) or tostring(e)), "listen"
  end
  if not srv then return failed(err) end
  -- errors as values (cqueues raises them by default), for bind too: it happens here
  srv:onerror(function(_, _, e) return e end)
  local lok, ok, lerr = pcall(srv.listen, srv)
  if not lok then return failed(ok) end
  if not ok then return failed(lerr) end
  if path and nmode then os.execute(format("chmod %o '%s'", nmode, (path:gsub("'", "'\\''")))) end
  local bound = spec
  if not path then
    local _, host, port = srv:localname()
    bound = "inet:" .. tostring(host) .. ":" .. tostring(port)
  end
  self.listeners[#self.listeners + 1] = { srv = srv, spec = bound, kind = kind or "socketmap" }
  local serve = kind == "metrics" and serve_metrics or serve_connection
  -- (errors stay values: out of descriptors (EMFILE, ENFILE) or memory is a moment's
  -- trouble, and the accept loop must go on once it passes)
  self.loop:wrap(function()
    local delay = 0.05
    while not self.stopping do
      local accepted, con, aerr = pcall(srv.accept, srv, 1)
      if self.stopping then
        if accepted and con then con:close() end
        break
      end
      if accepted and con then
        delay = 0.05
        if self.nconnections >= self.max_connections then
          self.counts.refused = self.counts.refused + 1
          self:note("refused", "warning", ("%d connections, the limit: closing a new one on " ..
            "%s (Postfix defers its lookups)"):format(self.nconnections, bound))
          con:close()
        else
          self.nconnections = self.nconnections + 1
          self.counts.accepted = self.counts.accepted + 1
          self.loop:wrap(function() serve(self, con) end)
        end
      elseif not accepted or (aerr and aerr ~= ETIMEDOUT) then
        self.counts.accept_errors = self.counts.accept_errors + 1
        local why = accepted and errno.strerror(aerr) or tostring(con)
        self:note("accept", "err", ("accept on %s: %s (%d connections open); retrying in " ..
          "%.2f s"):format(bound, why, self.nconnections, delay))
        cqueues.sleep(delay)
        delay = math.min(delay * 2, 1)
      end
    end
  end)
  return bound
end

--- The addresses listened on: the socketmap's, or those of `kind` ("metrics").
function Server:addresses(kind)
  live(self, "addresses")
  local out = {}
  for _, l in ipairs(self.listeners) do
    if l.kind == (kind or "socketmap") then out[#out + 1] = l.spec end
  end
  return out
end

--- Use these zones from now on (after a reload of the host's settings); they are checked as
-- new checks them. true, or nil, message, "config", "zones" with the old ones kept.
function Server:set_zones(zones)
  live(self, "set_zones")
  if type(zones) ~= "table" then
    error("bad argument #1 to 'set_zones' (table expected, got " .. type(zones) .. ")", 2)
  end
  local ok, err, code, key = _M.check{ zones = zones }
  if not ok then return nil, err, code, key end
  self.zones = zones
  self.memo, self.memo_old, self.memo_used, self.memo_old_used = {}, {}, 0, 0
  return true
end

--- SIGHUP: the host's on_reload, then the policy script read again; what fails to load keeps
-- what runs (logged at err).
function Server:reload()
  live(self, "reload")
  if self.on_reload then
    local ok, err = pcall(self.on_reload, self)
    if not ok then self.log("err", "reload: " .. tostring(err) .. "; the running settings stay") end
  end
  if self.script then self.script:reload() end
  -- answers given under the old settings are not reused
  self.memo, self.memo_old, self.memo_used, self.memo_old_used = {}, {}, 0, 0
  self.log("notice", "reloaded")
end

-- The refresh timer (docs/postfix.md, "Refresh"): a maintain pass of the client at start
-- (after a short random wait) and every interval, with 10% jitter; each domain under a
-- lease, so servers sharing a cache refresh it once.
local function refresh_loop(self)
  local r = self.refresh
  local interval, spacing = r.interval or 3600, r.spacing or 1
  cqueues.sleep(math.random() * math.min(60, interval))
  while not self.stopping and self.is_open do
    local ok, summary, err = pcall(self.client.maintain, self.client, { sleep = cqueues.sleep,
      spacing = spacing })
    self.trim_due = true
    if not ok then
      self.log("err", "refresh: " .. tostring(summary))
    elseif not summary then
      self.log("err", "refresh: " .. tostring(err))
    else
      for _, f in ipairs(summary.failures) do
        self.log("warning", ("refresh: %s: %s (%s)"):format(f.domain, tostring(f.error),
          tostring(f.code)))
      end
      if self.info_on then
        self.log("info", ("refresh: %d due: %d extended, %d updated, %d deleted, %d kept, " ..
          "%d failed, %d leased elsewhere; %d pruned"):format(summary.due, summary.extended,
          summary.updated, summary.deleted, summary.kept, summary.failed, summary.leased,
          summary.pruned))
      end
    end
    local wait = interval * (0.9 + 0.2 * math.random())
    local until_ = monotime() + wait
    while not self.stopping and monotime() < until_ do
      cqueues.sleep(math.min(1, until_ - monotime()))
    end
  end
end

-- Once a second, after lookups that fetched (or a refresh pass), the C heap's free memory
-- goes back to the system (core.trim): the buffers of a burst of TLS transfers are freed
-- scattered through the heap, and stay resident otherwise (3 MiB after 2,000 first lookups,
-- 50 at a time: docs/postfix.md, "Memory").
local function trim_loop(self)
  while not self.stopping and self.is_open do
    cqueues.sleep(1)
    if self.trim_due then
      self.trim_due = false
      core.trim()
    end
  end
end

-- The collector's commits: every second, what its thread gathered goes to the result store
-- in one transaction. A failed commit is kept and retried (logged at most every 10 s).
function collect_loop(self)
  while not self.stopping and self.is_open do
    cqueues.sleep(1)
    if self.collector and self.collector.is_open then
      local ok, err = self.collector:step()
      if not ok then
        self:note("tlsrpt-commit", "err", "tlsrpt collector: commit failed: " .. tostring(err) ..
          "; kept, retrying")
      end
    end
  end
end

--- Stop accepting; idle connections close within a second, busy ones once their answers
-- are written; run() returns then, or after SHUTDOWN_GRACE seconds in any case.
function Server:stop()
  live(self, "stop")
  if self.stopping then return end
  self.stopping = true
  self.stop_by = cqueues.monotime() + _M.SHUTDOWN_GRACE
  for _, l in ipairs(self.listeners) do if l.srv then pcall(l.srv.close, l.srv) end end
end

-- One step of the server's own loop: one wait on an epoll set (core.poller) holding the
-- cqueues loop's descriptor and the sockets of parked connections (serve_connection), the
-- parked ones served, and the cqueues loop stepped when it has something to do (a thread
-- woken, a timer due). Inside another cqueues thread (a host's loop), or when the poller
-- cannot be made, the cqueues loop alone, as before: connections are then not parked.
function drive(self, timeout)
  local loop = self.loop
  local P = self.poller
  if not P and not self.no_poller and not cqueues.running() then
    local perr
    P, perr = core.poller()
    if P then
      local ok, werr = P:watch(loop:pollfd(), "r")
      if not ok then P:close() P, perr = nil, werr end
    end
    if not P then
      self.no_poller = true
      self.log("warning", "socketmap: no poller of its own (" .. tostring(perr) ..
        "): every request goes through the cqueues loop")
    end
    self.poller, self.loop_fd = P, loop:pollfd()
  end
  if not P or cqueues.running() then
    self.driven = false
    return loop:step(timeout)
  end
  self.driven = true
  -- (a timer due now steps the loop below whatever else is ready, so busy parked
  -- connections never hold the loop's timers back)
  local t = loop:timeout()
  local due = t ~= nil and t <= 0
  if t == nil or (timeout and t > timeout) then t = timeout end
  local ready = self.ready
  local n, werr = P:wait(t or 60, ready)
  if not n then
    -- (parked readers wake within a second and wait through the cqueues loop from then on)
    self.log("warning", "socketmap: " .. tostring(werr) .. ": every request goes through " ..
      "the cqueues loop from now on")
    P:close()
    self.poller, self.no_poller, self.driven = nil, true, false
    return loop:step(0)
  end
  local step = due or n == 0
  for i = 1, n do
    local fd = ready[i]
    local f = self.parked[fd]
    if f then
      f()                        -- (serve_parked: errors are its own, it never raises)
    elseif fd == self.loop_fd then
      step = true
    end
  end
  if step then return loop:step(0) end
  return true
end

--- Run the loop until stop() and every connection has closed; SIGTERM and SIGINT stop.
function Server:run(opts)
  live(self, "run")
  opts = opts or {}
  if opts.signals ~= false then
    local ok, signal = pcall(require, "cqueues.signal")
    if ok then
      signal.block(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
      local sl = signal.listen(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
      self.loop:wrap(function()
        while not self.stopping do
          local sig = sl:wait(1)
          if sig == signal.SIGHUP then
            self.log("notice", "SIGHUP: reloading")
            self:reload()
          elseif sig then
            self.log("notice", "signal " .. sig .. ": finishing the requests in flight")
            self:stop()
          end
        end
      end)
    end
  end
  if self.refresh and self.client.maintain and not self.refresh_started then
    self.refresh_started = true
    self.loop:wrap(function() refresh_loop(self) end)
  end
  if core.trim and not self.trim_started then
    self.trim_started = true
    self.loop:wrap(function() trim_loop(self) end)
  end
  while not self.loop:empty() do
    local ok, err = drive(self, 1)
    if not ok then self.log("err", "loop: " .. tostring(err)) end
    if self.stopping and (next(self.connections) == nil or cqueues.monotime() > self.stop_by)
    then
      break
    end
  end
  return true
end

--- Step the server once, waiting at most `timeout` seconds (for hosts that drive it): true,
-- or false, message as cqueues' step. Called from inside a cqueues thread, it steps the
-- server's loop as a nested cqueues controller (and connections are not parked).
function Server:step(timeout)
  live(self, "step")
  return drive(self, timeout)
end

--- Close the listeners and connections, and the client the server made. Returns true, or
-- nil, message, code when closing that client failed; a second close returns true.
function Server:close()
  if not self.is_open then return true end
  self.is_open, self.stopping = false, true
  for _, l in ipairs(self.listeners) do if l.srv then pcall(l.srv.close, l.srv) end end
  -- the collector reads what is queued and commits everything before the store closes; a
  -- failure there (datagrams lost, logged by the collector) is close's failure too
  local col_ok, col_err, col_code = true, nil, nil
  if self.collector then
    col_ok, col_err, col_code = self.collector:close()
    self.collector = nil
  end
  for con in pairs(self.connections) do pcall(con.close, con) end
  if self.poller then self.poller:close() end
  self.poller, self.no_poller = nil, true
  local ok, err, code = true, nil, nil
  if self.metrics_store then pcall(self.metrics_store.release, self.metrics_store) end
  self.metrics_store = nil
  if self.owns_client then ok, err, code = self.client:close() end
  self.owns_client = false
  if not col_ok then return nil, "tlsrpt collector: " .. tostring(col_err), col_code end
  if not ok then return nil, err, code end
  return true
end
server_mt.__close = Server.close
server_mt.__gc = Server.close


return _M
