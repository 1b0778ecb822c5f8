--- mtasts.resolver: DNS lookups through libunbound that never block the host's loop.
-- The C object (mtasts.core.resolver_new) runs queries on libunbound's thread and exposes a
-- descriptor and a step; the lookups here wait on that descriptor with the `wait` function
-- they were given (the default blocks in poll), so a host with its own event loop passes a
-- `wait` that yields to it. Reference: docs/resolver.md.
local core = require("mtasts.core")
local pending = require("mtasts.pending")
local settings = require("mtasts.settings")

local type, pairs, ipairs, error, setmetatable, tostring = type, pairs, ipairs, error, setmetatable,
  tostring
local math = math

local _M = { DEFAULT_TIMEOUT = 5 }

local methods = core.resolver_methods
-- Lua-side state of each resolver: mtasts.pending state (wait, results not yet claimed),
-- and the timeout.
local state = setmetatable({}, { __mode = "k" })

local OPTIONS = { nameserver = true, trust_anchor = true, stub = true, timeout = true,
  wait = true }

-- Misuse raises (at the caller of `fn`): an unknown option, a wrong type. Returns the timeout.
local function check_types(opts, fn)
  if type(opts) ~= "table" then
    error("bad argument #1 to '" .. fn .. "' (table expected, got " .. type(opts) .. ")", 3)
  end
  for k in pairs(opts) do
    if not OPTIONS[k] then
      error("bad argument #1 to '" .. fn .. "' (unknown option '" .. tostring(k) .. "')", 3)
    end
  end
  local timeout = opts.timeout or _M.DEFAULT_TIMEOUT
  if type(timeout) ~= "number" then
    error("bad argument #1 to '" .. fn .. "' (timeout must be a number)", 3)
  end
  if opts.wait ~= nil and type(opts.wait) ~= "function" then
    error("bad argument #1 to '" .. fn .. "' (wait must be a function)", 3)
  end
  if opts.stub ~= nil then
    if type(opts.stub) ~= "table" then
      error("bad argument #1 to '" .. fn .. "' (stub must be a table)", 3)
    end
    for zone, servers in pairs(opts.stub) do
      local ok = type(zone) == "string" and (type(servers) == "string" or
        type(servers) == "table")
      if ok and type(servers) == "table" then
        for _, v in pairs(servers) do ok = ok and type(v) == "string" end
      end
      if not ok then
        error("bad argument #1 to '" .. fn .. "' (stub: zone names to a server or a list " ..
          "of servers, strings)", 3)
      end
    end
  end
  return timeout
end

local failed = settings.failed

--- Create a resolver. opts: nameserver ("IP@PORT" or a list), trust_anchor (a file, or
-- false for no DNSSEC validation), stub ({ [zone] = "IP@PORT" or a list }: zones asked of
-- their own servers), timeout (seconds, default 5), wait(fd, events, timeout).
-- Every setting is checked and loaded now: a bad one fails with code "config" (and the
-- option's name as the fourth value), never later as a failed lookup.
function _M.new(opts)
  opts = opts or {}
  local timeout = check_types(opts, "new")
  local ok, err, code, key = settings.seconds("timeout", timeout)
  if not ok then return nil, err, code, key end
  local r
  r, err, code = core.resolver_new{ nameserver = opts.nameserver,
    trust_anchor = opts.trust_anchor, stub = opts.stub }
  if not r then return failed(err, code) end
  local st = pending.new(opts.wait or core.poll)
  st.timeout = timeout
  state[r] = st
  return r
end

--- Check the settings new would take (the same options), making nothing: true, or nil,
-- message, "config", option (or "local" when this host could not do the check). For
-- owners that make their resolver later (the result store).
function _M.check(opts)
  opts = opts or {}
  local timeout = check_types(opts, "check")
  local ok, err, code, key = settings.seconds("timeout", timeout)
  if not ok then return nil, err, code, key end
  ok, err, code = core.resolver_check{ nameserver = opts.nameserver,
    trust_anchor = opts.trust_anchor, stub = opts.stub }
  if not ok then return failed(err, code) end
  return true
end

local function await(r, id) return pending.await(state[r], r, id) end

-- The records of an answer, with what is said of them as fields.
local function records_of(a)
  local records = a.records
  records.secure, records.dnssec, records.canonname = a.secure, a.dnssec, a.canonname
  return records
end

-- The DNSSEC status a failure carries as its fourth value: that of a denial (nxdomain,
-- nodata: "secure" or "insecure"), or "bogus"; nil for failures without an answer.
local function failure_dnssec(a)
  if a.status == "nxdomain" or a.status == "nodata" or a.status == "bogus" then
    return a.dnssec
  end
  return nil
end

-- Ask and wait: the answer table of r:done(), or nil, message, code when the query could
-- not be asked or waiting failed.
local function answer(self, name, rrtype)
  local st = state[self]
  if not st then error("resolver not made by mtasts.resolver.new", 3) end
  local id, err, code = self:query(name, rrtype, st.timeout)
  if not id then return nil, err, code end
  return await(self, id)
end

local function failure_message(self, name, rrtype, a)
  local what = name .. " " .. rrtype
  return a.status == "nxdomain" and what .. ": no such domain"
    or a.status == "nodata" and what .. ": no records of this type"
    or a.status == "timeout" and what .. ": timed out after " .. state[self].timeout ..
      " s: no nameserver answered"
    or what .. ": " .. (a.why or a.status)
end

--- Look `name` up for records of `rrtype` ("TXT", "MX", "A", "AAAA", "TLSA", "CNAME").
-- Returns the records (an array; .dnssec is "secure" or "insecure", .secure the same as a
-- boolean, .canonname where CNAMEs led), or nil, message, code with code nxdomain, nodata,
-- servfail, timeout, bogus, or local (this host failed: libunbound out of memory, its thread
-- or its pipe); nxdomain and nodata carry the denial's DNSSEC status as a fourth value
-- ("secure" or "insecure"), bogus carries "bogus".
function methods:lookup(name, rrtype)
  local a, err, code = answer(self, name, rrtype)
  if not a then return nil, err, code end
  if a.status == "ok" then return records_of(a) end
  return nil, failure_message(self, name, rrtype, a), a.status, failure_dnssec(a)
end

--- Look up several (name, type) pairs at once: queries = { { name, type }, ... }. Returns
-- an array of { records } or { nil, message, code } in the same order. Once one of them
-- has records, the others get `grace` more seconds (default: the full timeout), so one
-- unanswered query does not hold up the rest.
function methods:lookup_all(queries, grace)
  local st = state[self]
  if not st then error("resolver not made by mtasts.resolver.new", 2) end
  local ids, out, pending_n = {}, {}, 0
  for i, q in ipairs(queries) do
    local id, err, code = self:query(q[1], q[2], st.timeout)
    if id then
      ids[id] = i
      pending_n = pending_n + 1
    else
      out[i] = { nil, err, code }
    end
  end
  local clock, deadline = core.monotonic, nil
  local ok, err, code = pending.waiting(st, function()
    while pending_n > 0 do
      local stepped, serr, scode = pending.collect(st, self)
      if not stepped then return nil, serr, scode end
      for id, i in pairs(ids) do
        local a = pending.take(st, id)
        if a then
          ids[id], pending_n = nil, pending_n - 1
          if a.status == "ok" then
            out[i] = { records_of(a) }
            if grace and not deadline then deadline = clock() + grace end
          else
            out[i] = { nil, failure_message(self, queries[i][1], queries[i][2], a), a.status,
              failure_dnssec(a) }
          end
        end
      end
      if pending_n > 0 then
        if deadline and clock() >= deadline then
          for id, i in pairs(ids) do
            self:cancel(id)
            out[i] = { nil, queries[i][1] .. " " .. queries[i][2] .. ": no answer in time",
              "timeout" }
          end
          break
        end
        local t = self:timeout()
        if deadline then t = math.min(t or grace, math.max(deadline - clock(), 0)) end
        pending.sleep(st, self, t)
      end
    end
    return true
  end)
  if not ok then return nil, err, code end
  return out
end

--- r:txt(name): the TXT records, each record's strings concatenated.
function methods:txt(name) return self:lookup(name, "TXT") end
--- r:mx(name): { { preference =, host = }, ... }
function methods:mx(name) return self:lookup(name, "MX") end
--- r:a(name), r:aaaa(name): addresses as text.
function methods:a(name) return self:lookup(name, "A") end
function methods:aaaa(name) return self:lookup(name, "AAAA") end
--- r:tlsa(host, port): the TLSA records of _PORT._tcp.HOST (port default 25),
-- { { usage =, selector =, mtype =, data = }, ..., dnssec =, secure =, name =, canonname = }.
-- A denial (NXDOMAIN, NODATA) is no failure here: an empty list with its DNSSEC status and
-- .denial ("nxdomain" or "nodata"), so that "securely no TLSA" and "insecure" stay apart.
-- A bogus answer fails (code bogus), as do servfail, timeout and local: never "no TLSA".
function methods:tlsa(host, port)
  if type(host) ~= "string" then
    error("bad argument #1 to 'tlsa' (string expected, got " .. type(host) .. ")", 2)
  end
  port = port == nil and 25 or port
  if math.type(port) ~= "integer" or port < 1 or port > 65535 then
    error("bad argument #2 to 'tlsa' (port must be an integer of 1-65535)", 2)
  end
  local name = "_" .. port .. "._tcp." .. host
  local a, err, code = answer(self, name, "TLSA")
  if not a then return nil, err, code end
  local records
  if a.status == "ok" then
    records = records_of(a)
  elseif a.status == "nxdomain" or a.status == "nodata" then
    records = { dnssec = a.dnssec, secure = a.secure, canonname = a.canonname,
      denial = a.status }
  else
    return nil, failure_message(self, name, "TLSA", a), a.status, failure_dnssec(a)
  end
  records.name = name
  return records
end

return _M
