--- mtasts.postfix_log: TLSRPT results from the logs of Postfix 3.7-3.9, which has no TLSRPT
-- library of its own. A reader is fed log lines; it keeps, per postfix/smtp process, the TLS
-- outcome of the connection at hand, and records one result per TLS session (a connection
-- and its handshake, not a recipient) once a delivery line names the recipient domain. The
-- policy of a result comes from the policy cache, never from the network. A follower reads a
-- log file as `tail -F` does, or standard input, and commits its position with the results.
-- Reference: docs/postfix-log.md.
local core = require("mtasts.core")
local tlsrpt = require("mtasts.tlsrpt.format")
local delivery = require("mtasts.delivery")

local type, pairs, ipairs, error, tostring, tonumber, setmetatable, getmetatable, pcall = type,
  pairs, ipairs, error, tostring, tonumber, setmetatable, getmetatable, pcall
local find, sub, format = string.find, string.sub, string.format

-- "host[address]:port" as Postfix logs a peer, captured as host, address, port
local PEER = "([^%[%s]+)%[([^%]]*)%]:(%d+)"
local RFC3339 = "^(%d%d%d%d%-%d%d%-%d%d[Tt ]%d%d:%d%d:%d%d[%.%d]*[Zz%+%-]?[%d:]*) +%S+ +(.*)$"

local _M = {
  MAX_AGE = 900,        -- seconds of log time an unfinished connection is remembered
  MAX_LINES = 100000,   -- lines an unfinished connection is remembered (logs without times)
  CURRENT_AGE = 60,     -- seconds (or CURRENT_LINES lines) a delivered connection's further
  CURRENT_LINES = 2000, -- recipients are waited for, before a restart may lose its state
  MAX_LINE = 16384,     -- a longer line is ignored
  MAX_PROCS = 20000,    -- processes (and tlsproxy notes) whose state is kept at once
  FLUSH_KEYS = 400,     -- counters in a batch that make the follower commit at once (below the
                        -- store's KEYS_PER_TXN: its mark is then in the same transaction)
  REASON_MAX = 160,     -- bytes of Postfix's text kept in a failure_reason_code
}

-- --- parsing one line ------------------------------------------------------------------

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
  Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- Epoch seconds of a classic syslog time ("Nov 30 19:24:40"), in this host's time zone, the
-- year being the one that puts it at most a day ahead of now.
local function classic_time(mon, day, hh, mi, ss, now)
  local m = MONTHS[mon]
  if not m then return nil end
  local y = tonumber(os.date("%Y", now))
  local t = os.time{ year = y, month = m, day = tonumber(day), hour = tonumber(hh),
    min = tonumber(mi), sec = tonumber(ss) }
  if t and t > now + 86400 then
    t = os.time{ year = y - 1, month = m, day = tonumber(day), hour = tonumber(hh),
      min = tonumber(mi), sec = tonumber(ss) }
  end
  return t
end

local cjson   -- loaded at the first journal line (docs/architecture.md: cjson where decoded)

-- A journal entry as `journalctl -o json` writes it: the message, the program, the process,
-- the time and the cursor; nil when it is not one.
local function journal_entry(line)
  if not cjson then
    local ok, m = pcall(require, "cjson.safe")
    if not ok then return nil end
    cjson = m
  end
  local e = cjson.decode(line)
  if type(e) ~= "table" then return nil end
  local msg = e.MESSAGE
  if type(msg) == "table" then            -- bytes that are not UTF-8: an array of numbers
    local ok, s = pcall(string.char, table.unpack(msg, 1, math.min(#msg, _M.MAX_LINE)))
    msg = ok and s or nil
  end
  if type(msg) ~= "string" then return nil end
  local pid = e.SYSLOG_PID or e._PID
  local usec = tonumber(e.__REALTIME_TIMESTAMP)
  return { msg = msg, tag = type(e.SYSLOG_IDENTIFIER) == "string" and e.SYSLOG_IDENTIFIER or nil,
    pid = type(pid) == "string" and pid or nil, t = usec and usec / 1e6,
    cursor = type(e.__CURSOR) == "string" and e.__CURSOR or nil }
end

--- Split a log line into its time (epoch seconds, or nil), program tag ("postfix/smtp"),
-- process id and message. Forms: classic syslog and Postfix's maillog_file ("Nov 30
-- 19:24:40 host tag[pid]: msg", also with fractions of a second), RFC 3339 times (rsyslog,
-- `journalctl -o short-iso`), "tag[pid]: msg" alone, `journalctl -o json` entries, and a bare
-- message (`journalctl -o cat`: no tag, no process, no time).
function _M.split(line, now)
  local c = sub(line, 1, 1)
  if c == "{" then
    local e = journal_entry(line)
    if e then return e end
  end
  local t, rest
  local mon, day, hh, mi, ss, r = line:match(
    "^(%a%a%a) +(%d%d?) (%d%d):(%d%d):(%d%d)%.?%d* +%S+ +(.*)$")
  if mon then
    t, rest = classic_time(mon, day, hh, mi, ss, now or os.time()), r
  else
    local stamp
    stamp, r = line:match(RFC3339)
    if stamp then t, rest = tlsrpt.parse_time(stamp), r end
  end
  local tag, pid, msg = (rest or line):match("^([%w%.%-_/]+)%[(%d+)%]: (.*)$")
  if tag then return { t = t, tag = tag, pid = pid, msg = msg } end
  if rest then return { t = t, msg = rest } end    -- a time and a host, but no tag[pid]
  return { msg = line }
end

-- The program of a tag: the part after its last "/" ("postfix-out/smtp" -> "smtp").
local function program_of(tag)
  if not tag then return nil end
  return tag:match("/([%w%-_]+)$")
end

-- "host[address]:port" (or without the port) as host, address, port.
local function peer(s)
  local host, ip, port = s:match("^([^%[%]%s]+)%[([^%]%s]*)%]:?(%d*)$")
  if not host then return nil end
  return host:lower(), ip, port ~= "" and port or nil
end

-- Postfix's text, as a failure_reason_code: printable ASCII, at most REASON_MAX bytes.
local function reason_text(s)
  s = s:gsub("[^\32-\126]", "?")
  if #s > _M.REASON_MAX then s = s:sub(1, _M.REASON_MAX) end
  return s
end

-- The RFC 8460 result type of Postfix's reason for a certificate that did not verify.
local function certificate_failure(text)
  local l = text:lower()
  if l:find("expired", 1, true) then return "certificate-expired" end
  if l:find("mismatch", 1, true) or l:find("not matched", 1, true) then
    return "certificate-host-mismatch"
  end
  if l:find("untrusted issuer", 1, true) or l:find("self-signed", 1, true) or
    l:find("self signed", 1, true) or l:find("not trusted", 1, true) or
    l:find("unable to get", 1, true) or l:find("unable to verify", 1, true) then
    return "certificate-not-trusted"
  end
  return "validation-failure"
end

-- The OpenSSL reason of "warning: TLS library problem: error:0A00014D:SSL routines::legacy
-- sigalg disallowed or unsupported:../ssl/statem/statem_clnt.c:2254:".
local function library_reason(text)
  return text:match("^error:%x+:[^:]*:[^:]*:([^:]+)") or text
end

-- The statuses of a delivery line that say the TLS session failed, for a session no TLS
-- line told about (Postfix logs no line of its own for these, or tlsproxy logged it).
local function status_failure(text)
  local h = text:match("^TLS is required, but was not offered by host (%S+)")
  if h then return { result_type = "starttls-not-supported", peer = h } end
  local host, why = text:match("^TLS is required, but host (%S+) refused to start TLS: (.*)$")
  if host then
    return { result_type = "starttls-not-supported", peer = host,
      failure_reason_code = reason_text(why) }
  end
  if text:find("^Cannot start TLS: handshake failure") then
    return { result_type = "validation-failure", failure_reason_code = "tls-handshake-failure" }
  end
  if text:find("^Server certificate not verified") or text:find("^Server certificate not trusted")
  then
    return { result_type = "validation-failure", failure_reason_code = "certificate-not-verified" }
  end
  return nil
end

-- A status text that shows an SMTP dialogue after EHLO: the message went (or was refused)
-- without TLS when no TLS line came before it.
local function after_ehlo(status, text)
  if status == "sent" then return true end
  return text:find("in reply to MAIL FROM command", 1, true) or
    text:find("in reply to RCPT TO command", 1, true) or
    text:find("in reply to DATA command", 1, true) or
    text:find("in reply to end of DATA command", 1, true) or false
end

-- --- the reader --------------------------------------------------------------------------

local Reader = {}
local reader_mt = { __index = Reader, __name = "mtasts.postfix_log.reader" }

local READER_OPTIONS = { policy_of = true, add = true, store = true, clock = true, log = true,
  max_age = true, max_lines = true, partial = true }

local function argerror(fn, msg) error("bad argument #1 to '" .. fn .. "' (" .. msg .. ")", 3) end

--- A reader: opts.policy_of(domain, t) -> result table (and the parsed policy, for its mx
-- patterns) for the recipient domain at log time t; opts.add(result, { day =,
-- recipient_domain = }) records a result (default: opts.store:add); opts.clock; opts.log;
-- opts.max_age, opts.max_lines (how long an unfinished connection is kept); opts.partial
-- (the input starts in the middle of the log: see docs/postfix-log.md).
function _M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then argerror("new", "table expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not READER_OPTIONS[k] then argerror("new", "unknown option '" .. tostring(k) .. "'") end
  end
  for _, k in ipairs({ "policy_of", "add", "clock", "log" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "function" then
      argerror("new", k .. " must be a function")
    end
  end
  for _, k in ipairs({ "max_age", "max_lines" }) do
    if opts[k] ~= nil and (type(opts[k]) ~= "number" or opts[k] < 0) then
      argerror("new", k .. " must be a number of at least 0")
    end
  end
  local add = opts.add
  if not add and opts.store then
    local store = opts.store
    add = function(result, o) return store:add(result, o) end
  end
  return setmetatable({
    policy_of = opts.policy_of or function(domain) return tlsrpt.no_policy_result(domain) end,
    add = add or function() return true end,
    clock = opts.clock or os.time, log = opts.log or function() end,
    max_age = opts.max_age or _M.MAX_AGE, max_lines = opts.max_lines or _M.MAX_LINES,
    partial = opts.partial == true,
    procs = {},       -- process key -> { pending = { session, ... }, current =, seen = }
    proxied = {},     -- "host[ip]:port" or "[ip]:port" -> what tlsproxy logged about it (a
                      -- list, oldest first: connections to one MX host may be open at once)
    expect_proxy = {},-- bare lines: "[ip]:port" -> tlsproxy lines still to come
    proxy_reason = {},-- tlsproxy process -> its last "TLS library problem"
    n = 0, t = nil, first_t = nil, since_sweep = 0, nprocs = 0, nnotes = 0,
    counts = { lines = 0, used = 0, ignored = 0, sessions = 0, results = 0, success = 0,
      failure = 0, reused = 0, plaintext = 0, unknown = 0, expired = 0, errors = 0,
      replayed = 0, skipped = 0, dropped = 0, bad_time = 0 },
  }, reader_mt)
end

local function proc_of(self, key)
  local p = self.procs[key]
  if not p then
    p = { pending = {}, n = self.n, t = self.t, seen_at = self.n }
    if self.nprocs >= _M.MAX_PROCS then
      -- lines of more processes than Postfix runs (made up, by any local user through
      -- logger -t postfix/smtp): their state is not kept
      self.counts.dropped = self.counts.dropped + 1
      return p
    end
    self.procs[key] = p
    self.nprocs = self.nprocs + 1
  end
  return p
end

-- tlsproxy's notes about a peer, for the smtp process whose TLS line comes next: first in,
-- first out.
local function push_note(self, k, note)
  local list = self.proxied[k]
  if not list then
    if self.nnotes >= _M.MAX_PROCS then
      self.counts.dropped = self.counts.dropped + 1
      return
    end
    list = {}
    self.proxied[k] = list
  end
  list[#list + 1] = note
  self.nnotes = self.nnotes + 1
end

local function take_note(self, k)
  local list = self.proxied[k]
  if not list then return nil end
  local note = table.remove(list, 1)
  if #list == 0 then self.proxied[k] = nil end
  self.nnotes = self.nnotes - 1
  return note
end

local function expired(self, e)
  if self.t and e.t then return self.t - e.t > self.max_age end
  return self.n - e.n > self.max_lines
end

-- Forget what is too old to be finished: sessions whose delivery line never came (a process
-- killed), connections long over, tlsproxy notes nobody took.
local function sweep(self)
  self.since_sweep = 0
  for key, p in pairs(self.procs) do
    local keep = {}
    for _, s in ipairs(p.pending) do
      if expired(self, s) then self.counts.expired = self.counts.expired + 1
      else keep[#keep + 1] = s end
    end
    p.pending = keep
    if p.current and expired(self, p.current) then p.current = nil end
    if p.failure and expired(self, p.failure) then p.failure = nil end
    if #keep == 0 and not p.current and not p.failure and expired(self, p) then
      self.procs[key] = nil
      self.nprocs = self.nprocs - 1
    end
  end
  for k, list in pairs(self.proxied) do
    local keep = {}
    for _, e in ipairs(list) do
      if expired(self, e) then self.nnotes = self.nnotes - 1 else keep[#keep + 1] = e end
    end
    self.proxied[k] = #keep > 0 and keep or nil
  end
  for _, tbl in ipairs({ self.proxy_reason, self.expect_proxy }) do
    for k, e in pairs(tbl) do
      if expired(self, e) then tbl[k] = nil end
    end
  end
end

local function new_session(self, pos, host, ip, port)
  return { host = host, ip = ip, port = port, pos = pos, n = self.n, t = self.t }
end

-- What happened to the session, for delivery.outcome: { ok = true } or a failure.
local function outcome_of(s, policy)
  if policy and s.host and not core.matches(policy, s.host) then
    return { result_type = "validation-failure", failure_reason_code = "mtasts-policy-mx-mismatch",
      receiving_ip = s.ip }
  end
  local f = s.failure
  if f then
    return { result_type = f.result_type, failure_reason_code = f.failure_reason_code,
      receiving_ip = s.ip }
  end
  if s.level == "Verified" or s.level == "Trusted" then return { ok = true } end
  if s.level == "Untrusted" or s.level == "Anonymous" then
    -- without a policy, TLS is all that is asked for; under one, the chain must verify
    if not policy then return { ok = true } end
    return { result_type = "certificate-not-trusted", failure_reason_code =
      s.level == "Anonymous" and "anonymous-tls-no-certificate" or nil, receiving_ip = s.ip }
  end
  -- plaintext: only recorded under a policy (below)
  return { result_type = "starttls-not-supported", receiving_ip = s.ip }
end

-- Record session s for recipient domain `domain` (A-labels).
local function record(self, s, domain, replay)
  if replay then return end
  local ok, result, policy = pcall(self.policy_of, domain, self.t)
  if not ok or type(result) ~= "table" then
    self.counts.errors = self.counts.errors + 1
    self.log("err", "postfix-log: policy of " .. domain .. ": " .. tostring(result))
    return
  end
  if policy and policy.mode == "none" then policy = nil end
  if s.level == "plaintext" and not policy then
    self.counts.plaintext = self.counts.plaintext + 1   -- no policy asked for TLS: not counted
    return
  end
  local outcome = outcome_of(s, policy)
  delivery.outcome(result, s.host, outcome)
  local day = tlsrpt.day_of(self.t or self.clock())
  local rok, err = self.add(result, { day = day, recipient_domain = domain })
  self.counts.results = self.counts.results + 1
  if rok then
    self.counts.sessions = self.counts.sessions + 1
    if outcome.ok then self.counts.success = self.counts.success + 1
    else self.counts.failure = self.counts.failure + 1 end
  else
    self.counts.errors = self.counts.errors + 1
    self.log("err", "postfix-log: recording failed: " .. tostring(err))
  end
end

-- An address Postfix connected to: IPv4 or IPv6 (not "private/dovecot-lmtp").
local function is_address(ip)
  return ip ~= nil and ip ~= "" and ip:match("^[%x:%.]+$") ~= nil
end

-- This host's own address, where content filters listen (amavis on 127.0.0.1:10024): no MX
-- host. (Only 127.0.0.1 and ::1: the specs' world has its MX hosts on 127.0.0.2 and on.)
local function is_loopback(ip)
  local l = ip:lower()
  return l == "127.0.0.1" or l == "::1" or l == "::ffff:127.0.0.1"
end

-- When the delivery attempt of a delivery line began (its connection setup, the first MX host
-- tried): the line's time less c and d of "delays=a/b/c/d"; nil without them.
local function attempt_start(self, rest)
  if not self.t then return nil end
  local c, d = rest:match("delays=[%d%.]+/[%d%.]+/([%d%.]+)/([%d%.]+)")
  c, d = tonumber(c), tonumber(d)
  if not c or not d then return nil end
  return self.t - c - d
end

-- Seconds of slack when comparing times of lines (whole seconds) with the start of an attempt.
local SLACK = 3

-- A delivery line: "QUEUEID: to=<addr>, [orig_to=<...>, ]relay=HOST[IP]:PORT, [conn_use=N, ]
-- delay=..., status=S (text)". key: the process, nil for a bare line.
local function on_delivery(self, key, msg, pos, replay)
  local qid, addr, after = msg:match("^(%w+): to=<([^<>]*)>, (.*)$")
  if not qid then return false end
  after = after:gsub("^orig_to=<[^<>]*>, ", "")
  local relay, rest = after:match("^relay=([^,%s]*), (.*)$")
  if not relay then return false end
  local conn_use = tonumber(rest:match("^conn_use=(%d+), "))
  -- the first ", status=": Postfix's own (the server's reply comes after it)
  local status, text = rest:match(", status=(%a+) %((.*)%)$")
  if not status then status, text = rest:match(", status=(%a+)$"), "" end
  if not status then return false end
  local host, ip, port = peer(relay)
  if not is_address(ip) then host, ip, port = nil, nil, nil end
  local bare = key == nil
  if host and (is_loopback(ip) or (port and port ~= "25")) then
    -- a hop to a content filter (127.0.0.1:10024), or a relay on another port: no MX host;
    -- what this process had pending was about that hop
    if not replay then self.counts.skipped = self.counts.skipped + 1 end
    local p = key and self.procs[key]
    if p then p.pending, p.current = {}, nil end
    return true
  end
  if bare then
    -- without process ids, lines are told apart by the peer they name
    if not host then return true end
    key = host .. "[" .. ip .. "]:" .. (port or "")
  end
  local p = proc_of(self, key)
  local first = p.seen_at == self.n
  local prev = p.n
  p.n, p.t = self.n, self.t
  local name = addr:match("@([^@]+)$")
  local domain = name and core.domain(name)
  if not domain then return true end          -- no domain name (an IP literal, a local user)
  local start = attempt_start(self, rest)
  local pending = p.pending
  if start and #pending > 0 and not bare then
    -- sessions that began before this attempt did are not its own (a process killed after
    -- its TLS line, its id used again): forgotten
    local keep = {}
    for _, s in ipairs(pending) do
      if s.t and s.t < start - SLACK then self.counts.expired = self.counts.expired + 1
      else keep[#keep + 1] = s end
    end
    if #keep < #pending then p.pending, pending = keep, keep end
  end
  local cur = p.current
  local same_attempt
  if cur and cur.start and start then same_attempt = math.abs(cur.start - start) <= SLACK
  else same_attempt = cur ~= nil and prev == cur.n end   -- its lines follow one another
  if #pending == 0 and cur and host and cur.qid == qid and cur.host == host and cur.ip == ip and
    same_attempt
  then
    -- the same connection: more recipients of the message (another message on a connection
    -- says conn_use, below; without it, it came over a new connection)
    cur.n, cur.t = self.n, self.t
    if not cur.domains[domain] then
      cur.domains[domain] = true
      if not cur.unknown then record(self, cur, domain, replay) end
    end
    return true
  end
  local last = pending[#pending]
  if not last or (host and last.host ~= host) then
    -- the status of the delivery is about the last MX host tried: when no session of it
    -- is pending (the others were MX hosts tried before), the status may say what failed
    local f = status_failure(text)
    if f then
      -- a session whose failure only the delivery line says (tlsproxy logged the rest)
      local h, i, pt = host, ip, port
      if f.peer then h, i = peer(f.peer) end
      local s = new_session(self, pos, h, i, pt)
      if f.failure_reason_code == "tls-handshake-failure" and i then
        local note = take_note(self, "[" .. i .. "]:" .. (pt or "25"))
        if note and note.reason then
          f.failure_reason_code = "tls-handshake-failure: " .. note.reason
        end
      end
      s.failure = { result_type = f.result_type, failure_reason_code = f.failure_reason_code }
      if not (last and last.host == h) then pending[#pending + 1] = s end
    end
  end
  if #pending > 0 then
    -- the sessions of this delivery: every MX host tried, the last one its connection; for
    -- bare lines, the oldest connection to this peer (others may be open to it at once)
    local conn
    if bare then
      conn = table.remove(pending, 1)
      record(self, conn, domain, replay)
    else
      for _, s in ipairs(pending) do record(self, s, domain, replay) end
      conn = pending[#pending]
      p.pending = {}
    end
    conn.domains, conn.qid, conn.start = { [domain] = true }, qid, start
    conn.n, conn.t = self.n, self.t
    p.current = conn
    return true
  end
  if conn_use and conn_use > 1 then
    -- a cached connection used again: not a new session, whatever its domain
    if not replay then self.counts.reused = self.counts.reused + 1 end
    return true
  end
  if not host or not after_ehlo(status, text) then return true end
  local s = new_session(self, pos, host, ip, port)
  s.domains, s.qid, s.start = { [domain] = true }, qid, start
  p.current = s
  if self.partial and first and
    not (self.first_t and self.t and self.t - self.first_t > self.max_age) then
    -- the log starts after this connection did: its TLS line may be before the start
    s.unknown = true
    if not replay then self.counts.unknown = self.counts.unknown + 1 end
    return true
  end
  -- no TLS line: a connection without TLS
  s.level = "plaintext"
  record(self, s, domain, replay)
  return true
end

-- A line of a tlsproxy process: what it found about a peer, for the smtp process that asked.
local function on_proxy(self, key, msg, pos)
  local host, ip, port, why = msg:match("certificate verification failed for " .. PEER ..
    ": (.*)$")
  if host then
    push_note(self, host:lower() .. "[" .. ip .. "]:" .. port, { n = self.n, t = self.t,
      pos = pos, result_type = certificate_failure(why), failure_reason_code = reason_text(why) })
    return true
  end
  local text = msg:match("^warning: TLS library problem: (.*)$")
  if text then
    if self.proxy_reason[key] or self.nprocs < _M.MAX_PROCS then
      self.proxy_reason[key] = { reason = reason_text(library_reason(text)), pos = pos,
        n = self.n, t = self.t }
    else
      self.counts.dropped = self.counts.dropped + 1
    end
    return true
  end
  ip, port = msg:match("^TLS handshake failed for service=%S+ peer=%[([^%]]*)%]:(%d+)")
  if ip then
    local r = self.proxy_reason[key]
    push_note(self, "[" .. ip .. "]:" .. port, { n = self.n, t = self.t, pos = pos,
      reason = r and r.reason })
    self.proxy_reason[key] = nil
    return true
  end
  ip, port = msg:match("^CONNECT to %[([^%]]*)%]:(%d+)")
  if ip then
    local e = self.expect_proxy["[" .. ip .. "]:" .. port]
    if e then e.count, e.n, e.t = e.count + 1, self.n, self.t
    else self.expect_proxy["[" .. ip .. "]:" .. port] = { count = 1, n = self.n, t = self.t } end
    return true
  end
  if msg:find("^DISCONNECT %[") or msg:find(" TLS connection established to ") then return true end
  return false
end

-- A line of a postfix/smtp process (or a bare line: key nil).
local function on_smtp(self, key, msg, pos, replay)
  local bare = key == nil
  local level, how, host, ip, port = msg:match("^(%a+) TLS connection (%a+) to " .. PEER .. ": ")
  if level then
    host = host:lower()
    if bare then
      -- `journalctl -o cat`: tlsproxy's line comes first, after its "CONNECT to"
      local e = self.expect_proxy["[" .. ip .. "]:" .. port]
      if e and how == "established" then
        e.count = e.count - 1
        if e.count <= 0 then self.expect_proxy["[" .. ip .. "]:" .. port] = nil end
        return true
      end
      key = host .. "[" .. ip .. "]:" .. port
    end
    local p = proc_of(self, key)
    p.n, p.t = self.n, self.t
    if how ~= "established" then        -- "reused": a cached TLS connection, no handshake
      p.current = { host = host, ip = ip, port = port, pos = pos, n = self.n, t = self.t,
        level = level, domains = {}, reused = true }
      return true
    end
    local s = new_session(self, pos, host, ip, port)
    s.level = level
    local peerkey = host .. "[" .. ip .. "]:" .. port
    -- a failure this process (or tlsproxy for it) logged just before
    local f = p.failure
    if f and f.peer == peerkey then s.failure = f end
    p.failure = nil
    if not s.failure then
      local note = take_note(self, peerkey)
      if note then
        if level == "Untrusted" then
          s.failure = { result_type = note.result_type,
            failure_reason_code = note.failure_reason_code }
        end
      end
    end
    if level ~= "Untrusted" then s.failure = nil end
    p.current = nil
    p.pending[#p.pending + 1] = s
    return true
  end
  local why
  host, ip, port, why = msg:match("certificate verification failed for " .. PEER .. ": (.*)$")
  if host then
    host = host:lower()
    local peerkey = host .. "[" .. ip .. "]:" .. port
    if bare then
      local e = self.expect_proxy["[" .. ip .. "]:" .. port]
      if e then return on_proxy(self, "", msg, pos) end
      key = peerkey
    end
    local p = proc_of(self, key)
    p.n, p.t = self.n, self.t
    p.failure = { peer = peerkey, result_type = certificate_failure(why),
      failure_reason_code = reason_text(why), pos = pos, n = self.n, t = self.t }
    return true
  end
  host, ip, port = msg:match("^SSL_connect error to " .. PEER)
  if host then
    host = host:lower()
    if bare then key = host .. "[" .. ip .. "]:" .. port end
    local p = proc_of(self, key)
    p.n, p.t = self.n, self.t
    local s = new_session(self, pos, host, ip, port)
    s.failure = { result_type = "validation-failure",
      failure_reason_code = "tls-handshake-failure" }
    s.handshake = true
    p.current = nil
    p.pending[#p.pending + 1] = s
    p.last_handshake = s
    return true
  end
  local text = msg:match("^warning: TLS library problem: (.*)$")
  if text then
    if bare then return true end
    local p = self.procs[key]
    local s = p and p.last_handshake
    if s and s.failure.failure_reason_code == "tls-handshake-failure" then
      s.failure.failure_reason_code = "tls-handshake-failure: " ..
        reason_text(library_reason(text))
    end
    return true
  end
  if msg:find("^%w+: to=<") then return on_delivery(self, key, msg, pos, replay) end
  local qtext = not bare and msg:match("^%w+: (.*)$")
  local f = qtext and status_failure(qtext)
  if f and f.peer then
    -- "QID: TLS is required, but was not offered by host H[IP]": an MX host Postfix then
    -- left for the next; the delivery line is about the last one only
    local h, i = peer(f.peer)
    if h then
      local p = proc_of(self, key)
      p.n, p.t = self.n, self.t
      local s = new_session(self, pos, h, i, nil)
      s.failure = { result_type = f.result_type, failure_reason_code = f.failure_reason_code }
      p.current = nil
      p.pending[#p.pending + 1] = s
      return true
    end
  end
  if bare then
    if on_proxy(self, "", msg, pos) then return true end
  end
  return false
end

-- A line of master: "warning: process /usr/lib/postfix/sbin/smtp pid 100 killed by signal 9"
-- (or "exit status 1"): what that process had pending ends with it (its id may come again).
local function on_master(self, tag, msg)
  local path, pid, how = msg:match("^warning: process (%S+) pid (%d+) (%a+)")
  if not path or (how ~= "killed" and how ~= "exit") then return false end
  local prefix = tag:match("^(.*)/[^/]+$")
  local prog = path:match("([^/]+)$")
  if not prefix or (prog ~= "smtp" and prog ~= "tlsproxy") then return true end
  local key = prefix .. "/" .. prog .. "[" .. pid .. "]"
  local p = self.procs[key]
  if p then
    self.counts.expired = self.counts.expired + #p.pending
    self.procs[key] = nil
    self.nprocs = self.nprocs - 1
  end
  return true
end

--- Feed one line (without its line end). pos: where the line starts in its input (a byte
-- offset), remembered with the state it begins, for oldest(); replay: the line was read
-- before and its results are recorded already (the state is rebuilt, nothing is recorded).
function Reader:line(text, pos, replay)
  if getmetatable(self) ~= reader_mt then error("bad self to 'line'", 2) end
  if type(text) ~= "string" then
    error("bad argument #1 to 'line' (string expected, got " .. type(text) .. ")", 2)
  end
  local counts = self.counts
  if replay then counts.replayed = counts.replayed + 1 else counts.lines = counts.lines + 1 end
  if #text > _M.MAX_LINE then
    if not replay then counts.ignored = counts.ignored + 1 end
    return false
  end
  text = text:gsub("\r$", "")
  self.n = self.n + 1
  local now = self.clock()
  local e = _M.split(text, now)
  if e.t and not (e.t > -math.huge and e.t <= now + 86400) then
    -- not a number, or more than a day ahead: a line without a time (one such line must
    -- neither date the results after it nor make os.date raise on each)
    counts.bad_time = counts.bad_time + 1
    e.t = nil
  end
  if e.t then
    self.t = e.t                      -- the line's own time, even when earlier than the last
    if not self.first_t then self.first_t = e.t end
  end
  if e.cursor then self.cursor = e.cursor end
  local used = false
  local program = program_of(e.tag)
  local ok, err = pcall(function()
    local key = e.tag and (e.tag .. "[" .. (e.pid or "?") .. "]")
    if program == "smtp" then
      used = on_smtp(self, key, e.msg, pos, replay)
    elseif program == "tlsproxy" then
      used = on_proxy(self, key, e.msg, pos)
    elseif program == "master" then
      used = on_master(self, e.tag, e.msg)
    elseif not e.tag then
      used = on_smtp(self, nil, e.msg, pos, replay)
    end
  end)
  if not ok then
    counts.errors = counts.errors + 1
    self.log("err", "postfix-log: " .. tostring(err))
  end
  if not replay then
    if used then counts.used = counts.used + 1 else counts.ignored = counts.ignored + 1 end
  end
  self.since_sweep = self.since_sweep + 1
  -- a sweep walks every entry: once per as many lines as there are entries (linear, not
  -- quadratic in the processes)
  if self.since_sweep >= 1000 and self.since_sweep >= self.nprocs + self.nnotes then
    sweep(self)
  end
  return used
end

--- Where the oldest unfinished connection starts (the pos given with its first line), or
-- nil when none is unfinished: reading again from there rebuilds the state. A connection
-- that has delivered counts for CURRENT_AGE seconds (more recipients on it come at once).
function Reader:oldest()
  sweep(self)
  local min
  local function take(pos)
    if pos and (not min or pos < min) then min = pos end
  end
  for _, p in pairs(self.procs) do
    for _, s in ipairs(p.pending) do take(s.pos) end
    local cur = p.current
    -- a delivered connection: its further recipients come at once, if at all
    if cur and not (self.t and cur.t and self.t - cur.t > _M.CURRENT_AGE) and
      self.n - cur.n <= _M.CURRENT_LINES then
      take(cur.pos)
    end
    if p.failure then take(p.failure.pos) end
  end
  -- tlsproxy's notes: a mark between one and the smtp line that takes it would lose it
  for _, list in pairs(self.proxied) do
    for _, e in ipairs(list) do take(e.pos) end
  end
  for _, e in pairs(self.proxy_reason) do take(e.pos) end
  return min
end

--- Positions given so far belong to an input that has ended (a log file rotated away): the
-- state they begin is kept, and counts from position `pos` (0) of the next input.
function Reader:rebase(pos)
  pos = pos or 0
  for _, p in pairs(self.procs) do
    for _, s in ipairs(p.pending) do s.pos = pos end
    if p.current then p.current.pos = pos end
    if p.failure then p.failure.pos = pos end
  end
  for _, list in pairs(self.proxied) do
    for _, e in ipairs(list) do e.pos = pos end
  end
  for _, e in pairs(self.proxy_reason) do e.pos = pos end
end

--- The counts: lines, used, ignored (lines that are no TLS or delivery line of
-- postfix/smtp or tlsproxy), sessions (recorded), results, success, failure, reused (deliveries
-- on a cached connection), plaintext (sessions without TLS for a domain without a policy:
-- not recorded), unknown (deliveries whose connection began before the input did), expired
-- (sessions no delivery line came for), errors, replayed.
function Reader:stats()
  local out = {}
  for k, v in pairs(self.counts) do out[k] = v end
  return out
end

--- The journal cursor of the last `journalctl -o json` line fed, or nil.
function Reader:journal_cursor() return self.cursor end

-- --- policies from the cache ---------------------------------------------------------------

--- policy_of for a reader, from a policy cache (mtasts.cache.open(path)): the result table
-- sts:get would give for a cached row (an sts policy; a backoff row: the fetch error; mode
-- none or no row: no-policy-found), and the policy. No DNS, no HTTPS.
function _M.cache_policy(cache, log)
  log = log or function() end
  local warned = 0
  return function(domain, t)
    local now = os.time()
    local row, err = cache:row(domain, t and math.min(t // 1, now) or now)
    if row == nil and err then
      if now - warned >= 60 then
        warned = now
        log("warning", "postfix-log: cache: " .. tostring(err) .. " (sessions recorded " ..
          "without their policies)")
      end
      return tlsrpt.no_policy_result(domain)
    end
    if not row then return tlsrpt.no_policy_result(domain) end
    if row.backoff or not row.policy then
      local result = { policy = { type = "sts", domain = domain },
        summary = { success = 0, failure = 0 }, failures = {} }
      tlsrpt.add_failure(result, "sts-policy-fetch-error", "back-off-after-recent-fetch-error")
      return result
    end
    if row.policy.mode == "none" then return tlsrpt.no_policy_result(domain) end
    return tlsrpt.sts_result(domain, row.policy_text, row.policy), row.policy
  end
end

-- --- following a file or standard input ----------------------------------------------------

local ERRNO = { [2] = "enoent", [13] = "eacces", [20] = "enotdir", [21] = "eisdir",
  [5] = "eio", [12] = "enomem", [40] = "eloop", [36] = "enametoolong" }

local lfs_ok, lfs = pcall(require, "lfs")

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- The device, inode, size and kind ("file", "directory", ...) of a file, following
-- symbolic links, from stat(1); or nil, message, code.
function _M.stat_command(path)
  local p = io.popen("stat -L -c '%d %i %s %F' -- " .. shell_quote(path) .. " 2>/dev/null")
  local out = p and p:read("a") or ""
  if p then p:close() end
  local dev, ino, size, kind = out:match("^(%d+) (%d+) (%d+) ([^\n]*)")
  if not dev then return nil, path .. ": cannot stat it", "enoent" end
  return { dev = tonumber(dev), ino = tonumber(ino), size = tonumber(size),
    mode = kind == "directory" and "directory" or "file" }
end

--- The same as stat_command, through LuaFileSystem when it is installed (no process).
function _M.stat(path)
  if not lfs_ok then return _M.stat_command(path) end
  local a, err, errno = lfs.attributes(path)
  if not a then return nil, tostring(err), ERRNO[errno] or "enoent" end
  return { dev = a.dev, ino = a.ino, size = a.size,
    mode = a.mode == "directory" and "directory" or "file" }
end

local function hex(s) return (s:gsub(".", function(c) return format("%02x", c:byte()) end)) end

local Follower = {}
local follower_mt = { __index = Follower, __name = "mtasts.postfix_log.follower" }

local FOLLOW_OPTIONS = { file = true, store = true, policy_of = true, from_start = true,
  name = true, log = true, stat = true, clock = true, max_age = true, max_lines = true,
  commit_interval = true, input = true }

local CHUNK = 65536
local TAIL = 64        -- bytes before the mark's offset kept as its fingerprint

--- Follow a log file (opts.file, a path) as `tail -F` does, or read opts.input (a file
-- handle, e.g. io.stdin; or the file "-" for standard input), feeding a reader whose
-- results go to opts.store (a result store that commits only when told: opened with
-- batch_size and batch_interval math.huge). The position is a mark of the store (opts.name,
-- default "postfix-log:" .. file), committed with the results. opts.from_start: read the file
-- from its start, whatever the mark says (default: from the mark, else from the end).
function _M.follow(opts)
  if type(opts) ~= "table" then argerror("follow", "table expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not FOLLOW_OPTIONS[k] then argerror("follow", "unknown option '" .. tostring(k) .. "'") end
  end
  if type(opts.file) ~= "string" and opts.input == nil then
    argerror("follow", "file (a path, or - for standard input) is required")
  end
  if opts.store == nil then argerror("follow", "store (a result store) is required") end
  local bs, bi = opts.store.batch_size, opts.store.batch_interval
  if (bs ~= nil and bs ~= math.huge) or (bi ~= nil and bi ~= math.huge) then
    -- a store that flushes by itself commits results without their position: counted twice
    -- after a crash
    argerror("follow", "store must be opened with batch_size and batch_interval math.huge")
  end
  local log = opts.log or function() end
  local stdin = opts.input ~= nil or opts.file == "-"
  local self = setmetatable({
    file = opts.file, store = opts.store, log = log, stat = opts.stat or _M.stat,
    clock = opts.clock or os.time, name = opts.name or ("postfix-log:" .. (opts.file or "-")),
    from_start = opts.from_start == true, stdin = stdin, input = opts.input,
    commit_interval = opts.commit_interval or 1, buf = "", offset = 0, tail = "",
    last_commit = nil, committed = nil, is_open = true, skip_partial = false,
  }, follower_mt)
  self.reader = _M.new{ policy_of = opts.policy_of, store = opts.store, clock = opts.clock,
    log = log, max_age = opts.max_age, max_lines = opts.max_lines }
  if stdin then
    self.reader.partial = true
  else
    local ok, err, code = self:_start()
    if not ok then return nil, err, code end
  end
  return self
end

local function live(self, fn)
  if getmetatable(self) ~= follower_mt then error("bad self to '" .. fn .. "'", 3) end
  if not self.is_open then error("attempt to use a closed mtasts.postfix_log.follower", 3) end
end

-- Open `path` as the file with inode st (stat again after opening: a rotation in between
-- would give us another file than the one stat named). Returns the handle, or nil.
local function open_checked(self, path, st)
  local fh, err = io.open(path, "rb")
  if not fh then return nil, err end
  local again = self.stat(path)
  if not again or again.ino ~= st.ino or again.dev ~= st.dev then
    fh:close()
    return nil
  end
  return fh
end

-- The bytes of `path` in [from, to), or nil.
local function bytes_at(path, from, to)
  if from < 0 or to <= from then return "" end
  local f = io.open(path, "rb")
  if not f then return nil end
  f:seek("set", from)
  local s = f:read(to - from)
  f:close()
  return s
end

-- The mark: "file <dev> <ino> <replay> <done> <hex of the TAIL bytes before done>".
local function encode_mark(dev, ino, replay, done, tail)
  return format("file %d %d %d %d %s", dev, ino, replay, done, hex(tail))
end

local function decode_mark(s)
  local dev, ino, replay, done, h = s:match("^file (%d+) (%d+) (%d+) (%d+) (%x*)$")
  if not dev then return nil end
  local tail = h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)
  return { dev = tonumber(dev), ino = tonumber(ino), replay = tonumber(replay),
    done = tonumber(done), tail = tail }
end

-- Where to start: the mark, the start (from_start), or the end of the file.
function Follower:_start()
  local path = self.file
  local st, err, code = self.stat(path)
  if st and st.mode == "directory" then return nil, path .. ": is a directory", "eisdir" end
  if st then
    local fh, ferr, errno = io.open(path, "rb")
    if not fh then return nil, tostring(ferr), ERRNO[errno] or "local" end
    fh:close()
  elseif code ~= "enoent" then
    return nil, err, code
  end
  local mark, merr, mcode = self.store:mark(self.name)
  if mark == nil and merr then return nil, merr, mcode end
  mark = not self.from_start and mark and decode_mark(mark) or nil
  self.queue = {}      -- files to read before the current one: { path, st, from, done }
  if self.from_start then
    self.start_at = 0
    return true
  end
  if not mark then
    -- no mark: new lines only, from the end of the file (a partial line there is skipped)
    self.reader.partial = true
    if st then
      self.start_at = st.size
      if st.size > 0 and bytes_at(path, st.size - 1, st.size) ~= "\n" then
        self.skip_partial = true
      end
    else
      self.start_at = 0
    end
    return true
  end
  local function matches(p, s)
    return s and s.dev == mark.dev and s.ino == mark.ino and s.size >= mark.done and
      bytes_at(p, mark.done - #mark.tail, mark.done) == mark.tail
  end
  -- from a mark, the state is rebuilt from the oldest unfinished connection on
  if st and matches(path, st) then
    self.start_at, self.replay_to = mark.replay, mark.done
    return true
  end
  -- rotated (or truncated) while we were stopped: finish the old file if it can be found
  for _, cand in ipairs({ path .. ".1", path .. ".0" }) do
    local cst = self.stat(cand)
    if cst and cst.mode ~= "directory" and (matches(cand, cst) or
      (st and st.dev == mark.dev and st.ino == mark.ino and cst.size >= mark.done and
        bytes_at(cand, mark.done - #mark.tail, mark.done) == mark.tail)) then
      self.queue[1] = { path = cand, st = cst, from = mark.replay, done = mark.done }
      self.log("notice", ("postfix-log: %s was rotated while stopped: reading %s from " ..
        "byte %d first"):format(path, cand, mark.done))
      self.start_at = 0
      return true
    end
  end
  self.log("warning", ("postfix-log: %s changed while stopped and the old file is not " ..
    "found (%s.1): reading the new one from its start; lines written to the old one after " ..
    "byte %d are not counted"):format(path, path, mark.done))
  self.start_at = 0
  self.reader.partial = true     -- connections begun in the old file: unknown, not without TLS
  return true
end

-- Feed the complete lines of self.buf; keep a partial last line. `replay_to`: lines ending
-- at or before it were recorded before (rebuild the state only).
local function consume(self, final)
  local buf, reader = self.buf, self.reader
  local i = 1
  while true do
    local j = find(buf, "\n", i, true)
    if not j then break end
    local line_start = self.offset + i - 1
    local line_end = self.offset + j
    if self.skip_partial then
      self.skip_partial = false
    else
      local replay = self.replay_to and line_end <= self.replay_to or false
      reader:line(sub(buf, i, j - 1), line_start, replay)
    end
    i = j + 1
    if reader.counts.results ~= self.results_seen and self:_full() then
      -- the batch is near one transaction's worth: commit it with the position after this line
      local used = sub(buf, 1, i - 1)
      self.tail = #used >= TAIL and sub(used, -TAIL) or sub(self.tail .. used, -TAIL)
      self.offset, buf, i = self.offset + i - 1, sub(buf, i), 1
      self.buf = buf
      self:_commit_full()
    end
  end
  if i > 1 then
    local used = sub(buf, 1, i - 1)
    self.tail = #used >= TAIL and sub(used, -TAIL) or sub(self.tail .. used, -TAIL)
    self.offset = self.offset + i - 1
    buf = sub(buf, i)
  end
  if final and #buf > 0 then
    -- the end of a file that is done with (rotated away): its last line has no line end
    reader:line(buf, self.offset, self.replay_to and self.offset + #buf <= self.replay_to)
    self.offset, buf = self.offset + #buf, ""
  end
  if #buf > _M.MAX_LINE then
    -- a line longer than any Postfix writes (or a block of NULs after a crash): dropped up to
    -- its end; the fingerprint follows the bytes dropped, or the file would look truncated
    self.tail = sub(self.tail .. sub(buf, -TAIL), -TAIL)
    self.offset, buf, self.skip_partial = self.offset + #buf, "", true
    reader.counts.ignored = reader.counts.ignored + 1
  end
  self.buf = buf
end

-- Has the store's batch reached FLUSH_KEYS counters? A commit of more than KEYS_PER_TXN takes
-- several transactions, and the mark is in the last one only: a crash between them would
-- count the first ones twice after a restart.
function Follower:_full()
  self.results_seen = self.reader.counts.results
  local store = self.store
  return store.pending_keys ~= nil and store:pending_keys() >= _M.FLUSH_KEYS
end

function Follower:_commit_full()
  local ok, err = self:commit()
  if not ok then self.log("err", "postfix-log: commit failed: " .. tostring(err)) end
end

-- Read what fh has from self.offset + #self.buf on; returns the bytes read.
local function drain(self, fh, limit)
  local total = 0
  fh:seek("set", self.offset + #self.buf)      -- also clears the end-of-file flag
  while not limit or total < limit do
    local chunk = fh:read(CHUNK)
    if not chunk then break end
    total = total + #chunk
    self.buf = self.buf .. chunk
    consume(self)
  end
  return total
end

-- Read a file that is done with (rotated away, or the copy of a truncated one) from byte
-- q.from to its end: lines ending at or before q.done were recorded before. The position is
-- then that file's end, until the current file is opened.
function Follower:_finish_old(q)
  local fh = io.open(q.path, "rb")
  local st = fh and self.stat(q.path)
  if not st then
    if fh then fh:close() end
    return
  end
  self.dev, self.ino = st.dev, st.ino
  self.offset, self.buf, self.replay_to = q.from, "", q.done
  self.tail = bytes_at(q.path, math.max(0, q.from - TAIL), q.from) or ""
  drain(self, fh)
  consume(self, true)
  fh:close()
  self.replay_to = nil
  self.reader:rebase(0)
end

-- Has the file under our handle been truncated (copytruncate)? Shorter than our position,
-- or other bytes before it than those we read.
local function truncated(self, st)
  if st.size < self.offset + #self.buf then return true end
  if #self.tail == 0 then return false end
  self.fh:seek("set", self.offset - #self.tail)
  return self.fh:read(#self.tail) ~= self.tail
end

--- Read what is there: every complete line, through rotations (rename and create, or
-- copytruncate). Returns the number of bytes read (a partial last line waits for its end).
function Follower:step(limit)
  live(self, "step")
  if self.stdin then return self:_step_stream() end
  local path = self.file
  while self.queue and #self.queue > 0 do self:_finish_old(table.remove(self.queue, 1)) end
  if not self.fh then
    local st = self.stat(path)
    if not st then                       -- not there (yet): wait for it
      if not self.said_missing then
        self.said_missing = true
        self.log("notice", "postfix-log: waiting for " .. path .. ", which is not there " ..
          "(no syslog daemon writing it? Where Postfix logs to the journal only, pipe " ..
          "journalctl -o json into mtasts postfix-log -)")
      end
      return 0
    end
    local fh, ferr = open_checked(self, path, st)
    if not fh then
      local now = os.time()
      if ferr and (not self.open_warned or now - self.open_warned >= 60) then
        self.open_warned = now
        self.log("warning", "postfix-log: cannot open the new " .. path .. ": " ..
          tostring(ferr) .. " (nothing is read until it can be)")
      end
      return 0
    end
    self.fh, self.dev, self.ino = fh, st.dev, st.ino
    local at = self.start_at or 0
    self.offset, self.buf, self.start_at = at, "", 0
    self.tail = at > 0 and bytes_at(path, math.max(0, at - TAIL), at) or ""
  end
  local st = self.stat(path)
  if st and st.ino == self.ino and st.dev == self.dev and truncated(self, st) then
    -- truncated in place (copytruncate): the copy has what came after our position
    local copy, done = path .. ".1", self.offset
    local cst = self.stat(copy)
    if cst and cst.size >= done and bytes_at(copy, done - #self.tail, done) == self.tail then
      self:_finish_old({ path = copy, from = done })
    else
      self.log("warning", ("postfix-log: %s was truncated and no copy of it (%s) goes on " ..
        "from byte %d: what was written between our last read and the truncation is not " ..
        "counted"):format(path, copy, done))
      self.reader:rebase(0)
    end
    self.dev, self.ino = st.dev, st.ino
    self.offset, self.buf, self.tail, self.replay_to = 0, "", "", nil
  end
  local n = drain(self, self.fh, limit)
  if limit and n >= limit then return n end
  -- at the end: renamed away and a new file made? What the old one still gets, then the new
  if st and (st.ino ~= self.ino or st.dev ~= self.dev) then
    n = n + drain(self, self.fh)
    consume(self, true)
    self.fh:close()
    self.fh, self.replay_to = nil, nil
    self.reader:rebase(0)
    self.log("info", "postfix-log: " .. path .. " was rotated: reading the new file")
    return n + self:step(limit)
  end
  return n
end

-- Standard input (or opts.input): lines as they come; at the end, the last partial line.
function Follower:_step_stream()
  local input = self.input or io.stdin
  local line = input:read("L")
  if not line then
    self.eof = true
    return 0
  end
  local n = #line
  self.reader:line((line:gsub("\n$", "")))
  if self.reader.counts.results ~= self.results_seen and self:_full() then self:_commit_full() end
  return n
end

--- The mark the follower would commit now: its position (docs/postfix-log.md, "Resuming").
function Follower:mark_value()
  live(self, "mark_value")
  if self.stdin then
    local c = self.reader:journal_cursor()
    return c and ("journal " .. c) or nil
  end
  if not self.dev then return nil end
  local done = self.offset
  local replay = self.reader:oldest() or done
  if replay > done then replay = done end
  return encode_mark(self.dev, self.ino, replay, done, self.tail)
end

--- Commit the results read so far with the position (the store's set_mark and flush, one
-- transaction). true, or nil, message, code (kept for the next commit).
function Follower:commit()
  live(self, "commit")
  local mark = self:mark_value()
  if mark and mark ~= self.committed then self.store:set_mark(self.name, mark) end
  local ok, err, code = self.store:flush()
  self.last_commit = os.time()
  if not ok then return nil, err, code end
  if mark then self.committed = mark end
  return true
end

--- Stop run() at its next turn.
function Follower:stop()
  live(self, "stop")
  self.stopping = true
end

--- The reader's counts (Reader:stats).
function Follower:stats()
  live(self, "stats")
  return self.reader:stats()
end

--- Read until stop(), a signal (SIGTERM, SIGINT, which it blocks and leaves blocked; unless
-- opts.signals is false) or the end of standard input, committing every commit_interval
-- seconds and at the end. opts.interval: seconds between looks at a file that has not grown
-- (default 0.25); opts.report_interval: seconds between log lines (info) with the counts
-- (default 600). Returns true and why it stopped ("eof", "signal 15", "stopped"), or nil,
-- message, code when the last commit failed.
function Follower:run(opts)
  live(self, "run")
  opts = opts or {}
  local cqueues = require("cqueues")
  local loop = cqueues.new()
  local why
  local sl, signal
  if opts.signals ~= false then
    signal = require("cqueues.signal")
    signal.block(signal.SIGTERM, signal.SIGINT)
    sl = signal.listen(signal.SIGTERM, signal.SIGINT)
    loop:wrap(function()
      while not self.stopping do
        local sig = sl:wait(0.5)
        if sig then
          why = "signal " .. sig
          self.log("notice", "postfix-log: signal " .. sig .. ": committing and stopping")
          self.stopping = true
        end
      end
    end)
  end
  if self.stdin then
    self.log("notice", "postfix-log: reading standard input")
  else
    self.log("notice", ("postfix-log: following %s from byte %d%s"):format(self.file,
      self.fh and self.offset or self.start_at or 0, self.replay_to and
      (" (the recorded position: sessions up to byte " .. self.replay_to ..
        " are recorded already)") or ""))
  end
  local interval = opts.interval or 0.25
  local every, said = opts.report_interval or 600, os.time()
  local commit_failed, commit_code
  local function maybe_commit(force)
    if not force and self.last_commit and os.time() - self.last_commit < self.commit_interval
    then
      return
    end
    if os.time() - said >= every then
      said = os.time()
      local c = self.reader.counts
      self.log("info", ("postfix-log: %d lines, %d ignored; %d sessions recorded (%d " ..
        "successful, %d failed)"):format(c.lines, c.ignored, c.sessions, c.success, c.failure))
    end
    local ok, err, code = self:commit()
    if not ok then
      commit_failed, commit_code = err, code
      self.log("err", "postfix-log: commit failed: " .. tostring(err) .. " (kept for the next)")
    else
      commit_failed = nil
    end
  end
  loop:wrap(function()
    if self.stdin and not self.input then
      local socket = require("cqueues.socket")
      local sock = socket.fdopen(0)
      sock:setmode("b", "b")
      -- cqueues splits lines at 4 KiB by default: a longer one came in pieces, each a line
      sock:setmaxline(_M.MAX_LINE + 1)
      sock:onerror(function(_, _, e) return e end)
      local dropping = false     -- in the pieces of a line over MAX_LINE
      while not self.stopping do
        local line, e = sock:xread("*L", interval)
        local long = line and sub(line, -1) ~= "\n" and #line > _M.MAX_LINE
        if line and (dropping or long) then
          if not dropping then
            local c = self.reader.counts
            c.lines, c.ignored = c.lines + 1, c.ignored + 1
          end
          dropping = long
        elseif line then
          self.reader:line((line:gsub("\n$", "")))
          if self.reader.counts.results ~= self.results_seen and self:_full() then
            self:_commit_full()
          end
        elseif e == nil then
          why = why or "eof"
          break
        else
          sock:clearerr()
        end
        maybe_commit()
      end
    else
      while not self.stopping do
        local n, err = self:step(4 * 1048576)
        if not n then
          self.log("err", "postfix-log: " .. tostring(err))
          cqueues.sleep(interval)
        elseif self.eof then
          why = why or "eof"
          break
        end
        maybe_commit()
        if n == 0 then cqueues.sleep(interval) end
      end
    end
    self.stopping = true
  end)
  while not loop:empty() do
    local ok, err = loop:step(1)
    if not ok then error(err, 0) end
  end
  -- SIGTERM and SIGINT stay blocked, as after server:run (mtasts.postfix): a second one,
  -- sent while this one is handled, must not kill the process before it has committed
  maybe_commit(true)
  if commit_failed then return nil, commit_failed, commit_code end
  return true, why or "stopped"
end

--- Commit and close the file (not the store, which is the caller's). true, or the failure
-- of that commit; a second close returns true. Also at the end of a `<close>` scope.
function Follower:close()
  if not self.is_open then return true end
  local ok, err, code = self:commit()
  self.is_open = false
  if self.fh then self.fh:close() self.fh = nil end
  if not ok then return nil, err, code end
  return true
end
follower_mt.__close = Follower.close
-- the finalizer lets go of the file and commits nothing (docs/style.md §4)
follower_mt.__gc = function(self)
  if self.is_open then
    self.is_open = false
    if self.fh then self.fh:close() self.fh = nil end
  end
end

return _M
