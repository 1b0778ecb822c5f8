--- mtasts.hooks: MTA-STS and TLSRPT for hosts with outbound plugin hooks (Haraka-style:
-- get_mx, delivered, deferred, bounced). The host asks get_mx for the MX hosts of a
-- recipient domain with the TLS each requires, tells the outcome of each SMTP session, and
-- ends each delivery attempt with delivered, deferred or bounced; the TLSRPT result of the
-- attempt then goes to the result store. Reference: docs/hooks.md.
local mtasts = require("mtasts")
local delivery = require("mtasts.delivery")
local tlsrpt = require("mtasts.tlsrpt")

local type, pairs, ipairs, error, tostring, setmetatable, next = type, pairs, ipairs, error,
  tostring, setmetatable, next

local _M = {}
local Hooks = {}
local hooks_mt = { __index = Hooks, __name = "mtasts.hooks" }

--- opts: client (an mtasts client) or client_opts (for mtasts.open); store (a result
-- store) or store_opts (for tlsrpt.open), or store = false for no recording; log.
local OPTIONS = { client = true, client_opts = true, store = true, store_opts = true,
  log = true }

function _M.new(opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'new' (table expected)", 2) end
  for k in pairs(opts) do
    if not OPTIONS[k] then
      error("bad argument #1 to 'new' (unknown option '" .. tostring(k) .. "')", 2)
    end
  end
  if opts.log ~= nil and type(opts.log) ~= "function" then
    error("bad argument #1 to 'new' (log must be a function)", 2)
  end
  local self = setmetatable({ attempts = setmetatable({}, { __mode = "k" }),
    log = opts.log or function() end, owned = {}, is_open = true }, hooks_mt)
  self.client = opts.client
  if not self.client then
    local c, err, code = mtasts.open(opts.client_opts or {})
    if not c then return nil, err, code end
    self.client, self.owned.client = c, true
  end
  if opts.store ~= nil then
    self.store = opts.store or nil
  elseif opts.store_opts then
    local s, err, code = tlsrpt.open(opts.store_opts)
    if not s then self:close() return nil, err, code end
    self.store, self.owned.store = s, true
  end
  return self
end

-- A message is a report when the host says so or it carries TLS-Report-Domain: results of
-- delivering reports must never cause a report (RFC 8460 §3).
local function is_report(msg)
  if msg.is_report ~= nil then return msg.is_report end
  local h = msg.headers
  if type(h) == "table" then
    for k in pairs(h) do
      if type(k) == "string" and k:lower() == "tls-report-domain" then return true end
    end
  end
  return false
end

local function attempt_of(self, msg, domain)
  local per = self.attempts[msg]
  return per and per[domain]
end

-- End an attempt: its result goes to the store once.
local function finish(self, msg, domain)
  local per = self.attempts[msg]
  local a = per and per[domain]
  if not a then return true end
  per[domain] = nil
  if not self.store or a.recorded then return true end
  a.recorded = true
  local report = not is_report(msg)
  local ok, err, code = true, nil, nil
  local function add(result, opts)
    local done, e, c = self.store:add(result, opts)
    if not done then
      self.log("err", "recording a TLSRPT result failed: " .. tostring(e))
      if ok then ok, err, code = nil, e, c end
    end
  end
  if a.result and (a.sts_sessions or not next(a.dane or {})) then
    add(a.result, { recipient_domain = domain, report = report })
  end
  -- DANE sessions: in the recipient domain's report and in the MX host's own (as mox does)
  for _, d in pairs(a.dane or {}) do
    if d.sessions > 0 then
      add(d.domain_result, { recipient_domain = domain, host = false, report = report })
      add(d.host_result, { recipient_domain = domain, report = report })
    end
  end
  return ok, err, code
end

-- Methods raise on a wrong self and once the object is closed.
local function live(self, fn)
  if getmetatable(self) ~= hooks_mt then
    error("bad self to '" .. fn .. "' (mtasts.hooks expected)", 3)
  end
  if not self.is_open then error("attempt to use a closed mtasts.hooks", 3) end
end

--- The MX hosts to try for `domain`, in order, with what TLS each requires:
-- { { host =, priority =, tls = "required"|"opportunistic", verify_pkix = true,
--     plaintext_fallback = bool }, ... }, or nil, message, "defer"|"fail".
-- mx: names or { host =, priority = } tables (sorted by priority here). msg: the message,
-- a table the host keeps for the attempt; msg.tls_required_no / msg.require_tls (RFC 8689),
-- msg.is_report or msg.headers["TLS-Report-Domain"]. opts.force re-reads the TXT record
-- (call it before failing a message permanently, RFC 8461 §5.1).
function Hooks:get_mx(domain, mx, msg, opts)
  live(self, "get_mx")
  if type(domain) ~= "string" then error("bad argument #1 to 'get_mx' (string expected)", 2) end
  if type(mx) ~= "table" then error("bad argument #2 to 'get_mx' (table expected)", 2) end
  if type(msg) ~= "table" then error("bad argument #3 to 'get_mx' (table expected)", 2) end
  finish(self, msg, domain)          -- an attempt the host did not end
  local list = {}
  for i, m in ipairs(mx) do
    if type(m) == "string" then list[i] = { host = m, priority = i }
    elseif type(m) == "table" and type(m.host) == "string" then
      list[i] = { host = m.host, priority = m.priority or i }
    else
      error("bad argument #2 to 'get_mx' (names or { host =, priority = } tables)", 2)
    end
  end
  table.sort(list, function(a, b)
    if a.priority ~= b.priority then return a.priority < b.priority end
    return a.host < b.host
  end)
  local policy, result, _, perr, pcode = self.client:get(domain,
    type(opts) == "table" and opts.force and { force = true } or nil)
  local names = {}
  for i, m in ipairs(list) do names[i] = m.host end
  -- DANE first, when the client can look it up (docs/delivery.md)
  local dane = type(self.client.dane) == "function" and self.client:dane(domain, names) or nil
  local plan = delivery.plan{ domain = domain, mx = names, policy = policy, result = result,
    policy_error = perr and (tostring(perr) .. " (" .. tostring(pcode) .. ")") or nil,
    policy_code = pcode, dane = dane,
    tls_required_no = msg.tls_required_no == true, require_tls = msg.require_tls == true }
  self.attempts[msg] = self.attempts[msg] or {}
  local a = { result = result, plan = plan, policy = policy, dane = {} }
  self.attempts[msg][domain] = a
  for _, h in ipairs(plan.hosts) do
    if h.tls == "dane" then
      local host = h.host:lower()
      a.dane[host] = { sessions = 0,
        domain_result = tlsrpt.tlsa_result(domain, h.tlsa, host),
        host_result = tlsrpt.tlsa_result(host, h.tlsa, host) }
    end
  end
  if plan.defer or plan.fail then
    if result then result.summary.failure = result.summary.failure + 1 end
    finish(self, msg, domain)
    return nil, plan.defer or plan.fail, plan.defer and "defer" or "fail"
  end
  if #plan.hosts == 0 then
    if result then result.summary.failure = result.summary.failure + 1 end
    finish(self, msg, domain)
    return nil, domain .. ": no MX host is allowed by the MTA-STS policy", "defer"
  end
  local prio = {}
  for _, m in ipairs(list) do prio[m.host] = m.priority end
  local out = {}
  for i, h in ipairs(plan.hosts) do
    out[i] = { host = h.host, priority = prio[h.host], tls = h.tls,
      verify_pkix = h.verify_pkix, plaintext_fallback = plan.plaintext_fallback,
      tlsa = h.tlsa }
  end
  return out
end

--- Record one SMTP session with `host`: outcome { ok = true [, receiving_ip =] } when TLS
-- was established (and verified where required), or a failure { result_type =,
-- failure_reason_code =, receiving_ip =, ... } (e.g. result_type "certificate-host-mismatch",
-- "starttls-not-supported"). Sessions that never reached TLS (connection refused) are not
-- TLS results: do not record them.
function Hooks:session(msg, domain, host, outcome)
  live(self, "session")
  local a = attempt_of(self, msg, domain)
  if not a then return false end
  local d = type(host) == "string" and a.dane and a.dane[host:lower()]
  if d then
    -- a DANE host (tls = "dane"): its sessions are tlsa results, for the recipient domain and
    -- for the MX host (result types of dane.verify: validation-failure, tlsa-invalid, ...)
    delivery.outcome(d.domain_result, host, outcome)
    delivery.outcome(d.host_result, host, outcome)
    d.sessions = d.sessions + 1
    a.sessions = (a.sessions or 0) + 1
    return true
  end
  if not a.result then return false end
  delivery.outcome(a.result, host, outcome)
  a.sessions = (a.sessions or 0) + 1
  a.sts_sessions = (a.sts_sessions or 0) + 1
  return true
end

--- The message was delivered to `host` (info: { receiving_ip =, tls = false when it went
-- without TLS }). Records a successful session unless the host already did, and ends the
-- attempt.
function Hooks:delivered(msg, domain, host, info)
  live(self, "delivered")
  local a = attempt_of(self, msg, domain)
  info = info or {}
  if a and not a.sessions and info.tls ~= false then
    self:session(msg, domain, host, { ok = true })
  end
  return finish(self, msg, domain)
end

--- The attempt failed temporarily. info may carry a TLS failure ({ result_type =, ... })
-- for the last host tried, recorded as its session. Ends the attempt.
function Hooks:deferred(msg, domain, host, info)
  live(self, "deferred")
  if info and info.result_type and host then self:session(msg, domain, host, info) end
  return finish(self, msg, domain)
end

--- The message failed permanently; as deferred. Before bouncing because of the policy, a
-- host should call get_mx again with { force = true }: the policy may have changed.
function Hooks:bounced(msg, domain, host, info)
  live(self, "bounced")
  return self:deferred(msg, domain, host, info)
end

--- Commit the result store's batch (call from the host's timer).
function Hooks:flush()
  live(self, "flush")
  if self.store then return self.store:flush() end
  return true
end

--- Close the store and the client the hooks made (the ones passed in are the caller's):
-- the store's batch is committed first. Returns true, or nil, message, code when closing one
-- failed (the other is closed all the same); a second close returns true.
function Hooks:close()
  if not self.is_open then return true end
  self.is_open = false
  local ok, err, code = true, nil, nil
  if self.owned.store and self.store then ok, err, code = self.store:close() end
  if self.owned.client and self.client then
    local r, e, c = self.client:close()
    if r == nil and ok then ok, err, code = nil, e, c end
  end
  self.owned = {}
  if not ok then return nil, err, code end
  return true
end
hooks_mt.__close = Hooks.close

-- The finalizer releases what the hooks made without writing: a batch not flushed or closed
-- is not committed by the garbage collector.
hooks_mt.__gc = function(self)
  if not self.is_open then return end
  self.is_open = false
  if self.owned.store and self.store then self.store:release() end
  if self.owned.client and self.client then self.client:close() end
  self.owned = {}
end

return _M
