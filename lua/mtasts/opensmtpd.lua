--- mtasts.opensmtpd: an OpenSMTPD filter (the line protocol of `filter proc-exec`, versions
-- 0.4 to 0.7: OpenSMTPD 6.6 to 7.x). Reference: docs/opensmtpd.md.
--
-- smtp-in: mail to the configured TLSRPT addresses is held line by line until its end, parsed
-- with tlsrpt.parse_report, stored in a directory, and passed on with a header
-- "X-Mtasts-TLSRPT:" saying whether it parsed. Nothing is ever rejected; if anything goes
-- wrong the lines go on unchanged.
-- smtp-out: the report events show, per session, the peer address, whether TLS was
-- established, and the recipients; each session that established TLS is recorded as a
-- successful TLSRPT session of each recipient domain, with the policy the cache holds.
local core = require("mtasts.core")
local tlsrpt = require("mtasts.tlsrpt")
local json = require("mtasts.json")

local type, error, pairs, ipairs, tostring, tonumber, pcall, setmetatable = type, error, pairs,
  ipairs, tostring, tonumber, pcall, setmetatable
local concat, format = table.concat, string.format

-- What the filter may hold and store (docs/opensmtpd.md "Limits"): one TLSRPT message held
-- for parsing, all of them together, the JSON one report may inflate to, and the report
-- directory's size and file count.
local _M = { MAX_HELD = 4 * 1024 * 1024, MAX_HELD_TOTAL = 16 * 1024 * 1024,
  MAX_JSON = 4 * 1024 * 1024, MAX_STORE_BYTES = 256 * 1024 * 1024, MAX_STORE_FILES = 10000,
  RESCAN = 60 }
local Filter = {}
local filter_mt = { __index = Filter, __name = "mtasts.opensmtpd.filter" }

local function split(line, n)
  local out, pos = {}, 1
  for i = 1, n - 1 do
    local bar = line:find("|", pos, true)
    if not bar then out[i] = line:sub(pos) return out end
    out[i] = line:sub(pos, bar - 1)
    pos = bar + 1
  end
  out[n] = line:sub(pos)          -- the rest, which may hold "|"
  return out
end

local function version_at_least(v, want)
  local a, b = tostring(v):match("^(%d+)%.(%d+)")
  local c, d = want:match("^(%d+)%.(%d+)")
  a, b, c, d = tonumber(a) or 0, tonumber(b) or 0, tonumber(c), tonumber(d)
  return a > c or (a == c and b >= d)
end

--- opts: addresses (TLSRPT mailboxes, lower-case, or "@domain" for a whole domain),
-- report_dir (where parsed reports go; nil: not stored), store (a result store for smtp-out
-- sessions; nil: not recorded), policy_of (function(domain) -> policy, text from the cache),
-- write (function(line) for stdout), log (function(level, message)), clock; limits:
-- max_held (bytes of one message held for parsing), max_held_total (of all messages held at
-- once), max_json (bytes of JSON one report may inflate to), max_store_bytes and
-- max_store_files (what the report directory may hold).
local OPTIONS = { addresses = true, report_dir = true, store = true, policy_of = true,
  write = true, log = true, clock = true, max_held = true, max_held_total = true,
  max_json = true, max_store_bytes = true, max_store_files = true }

local function argerror(msg) error("bad argument #1 to 'new' (" .. msg .. ")", 3) end

function _M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then argerror("table expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not OPTIONS[k] then argerror("unknown option '" .. tostring(k) .. "'") end
  end
  for _, k in ipairs({ "policy_of", "write", "log", "clock" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "function" then argerror(k .. " must be a function") end
  end
  for _, k in ipairs({ "max_held", "max_held_total", "max_json", "max_store_bytes",
      "max_store_files" }) do
    if opts[k] ~= nil and (type(opts[k]) ~= "number" or opts[k] < 0) then
      argerror(k .. " must be a number >= 0")
    end
  end
  local addresses = {}
  for _, a in ipairs(opts.addresses or {}) do addresses[a:lower()] = true end
  return setmetatable({ addresses = addresses, report_dir = opts.report_dir,
    store = opts.store, policy_of = opts.policy_of, write = opts.write or function(l)
      io.stdout:write(l, "\n")
      io.stdout:flush()
    end, log = opts.log or function() end, clock = opts.clock or os.time,
    max_held = opts.max_held or _M.MAX_HELD,
    max_held_total = opts.max_held_total or _M.MAX_HELD_TOTAL,
    max_json = opts.max_json or _M.MAX_JSON,
    max_store_bytes = opts.max_store_bytes or _M.MAX_STORE_BYTES,
    max_store_files = opts.max_store_files or _M.MAX_STORE_FILES,
    held_total = 0, usage = nil, noted = {}, sessions = {}, out = {}, ready = false,
    stored = 0, refused = 0, seq = 0, is_open = true }, filter_mt)
end

-- Log a kind of message at most once a minute.
local function note(self, kind, msg)
  local now = self.clock()
  if (self.noted[kind] or -math.huge) + 60 <= now then
    self.noted[kind] = now
    self.log("warning", msg)
  end
end

-- What the report directory holds: { bytes =, files =, at = }, scanned at first use and
-- again at most once a minute when a report would not fit (an operator may have cleaned up).
local function usage(self, want)
  local u = self.usage
  if u and (u.bytes + want <= self.max_store_bytes and u.files < self.max_store_files or
      self.clock() < u.at + _M.RESCAN) then
    return u
  end
  u = { bytes = 0, files = 0, at = self.clock() }
  local dir = self.report_dir:gsub("'", "'\\''")
  local p = io.popen("find '" .. dir .. "' -maxdepth 1 -type f -name '*.json' " ..
    "-printf '%s\\n' 2>/dev/null")
  if p then
    for size in p:lines() do
      u.bytes = u.bytes + (tonumber(size) or 0)
      u.files = u.files + 1
    end
    p:close()
  end
  self.usage = u
  return u
end

-- Write a parsed report into the report directory, within its limits: true, or nil, why.
local function store_report(self, sid, report)
  local text = json.encode(report) .. "\n"
  local u = usage(self, #text)
  if u.files >= self.max_store_files or u.bytes + #text > self.max_store_bytes then
    self.refused = self.refused + 1
    note(self, "full", ("%s holds %d reports, %d bytes (limits %d, %d): " ..
      "not storing more until some are removed"):format(self.report_dir, u.files, u.bytes,
      self.max_store_files, self.max_store_bytes))
    return nil, "the report directory is full"
  end
  self.seq = self.seq + 1
  local name = format("%s/%d-%s-%d.json", self.report_dir, self.clock() // 1, sid, self.seq)
  local f = assert(io.open(name .. ".tmp", "wb"))
  local ok, err = f:write(text)
  f:close()
  if not ok then
    os.remove(name .. ".tmp")
    error(err, 0)
  end
  assert(os.rename(name .. ".tmp", name))
  u.bytes, u.files = u.bytes + #text, u.files + 1
  self.stored = self.stored + 1
  return true
end

-- Forget what a session holds.
local function drop_held(self, s)
  if s.held then self.held_total = self.held_total - s.held.size end
  s.held = nil
end

local function is_tlsrpt_rcpt(self, addr)
  addr = tostring(addr):lower():gsub("^<", ""):gsub(">$", "")
  if self.addresses[addr] then return true end
  local domain = addr:match("@(.+)$")
  return domain and self.addresses["@" .. domain] or false
end

local function session(self, sid)
  local s = self.sessions[sid]
  if not s then
    s = { rcpts = {}, held = nil }
    self.sessions[sid] = s
  end
  return s
end

-- The registration, once smtpd said config|ready.
local function register(self)
  local w = self.write
  w("register|filter|smtp-in|data-line")
  for _, ev in ipairs({ "tx-rcpt", "tx-reset", "link-disconnect" }) do
    w("register|report|smtp-in|" .. ev)
  end
  if self.store then
    for _, ev in ipairs({ "link-connect", "link-tls", "tx-rcpt", "tx-reset",
        "link-disconnect" }) do
      w("register|report|smtp-out|" .. ev)
    end
  end
  w("register|ready")
  self.ready = true
end

local function dataline(self, version, sid, token, line)
  if version_at_least(version, "0.5") then
    self.write("filter-dataline|" .. sid .. "|" .. token .. "|" .. line)
  else
    self.write("filter-dataline|" .. token .. "|" .. sid .. "|" .. line)
  end
end

local function safe_header(s)
  return (tostring(s):gsub("[%c]", " "):sub(1, 200))
end

-- Pass a line of a TLSRPT message on, unless it belongs to an X-Mtasts-TLSRPT header the
-- sender put in the message's own header (continuation lines too, and the obsolete form
-- with white space before the colon): only the header this filter adds may be believed.
-- hs: the session's header state, { body = true once past the header }.
local function pass_line(self, version, sid, token, hs, l)
  if not hs.body then
    if l == "" then
      hs.body = true
    elseif hs.dropping and l:find("^[ \t]") then
      return                                           -- a continuation of a dropped header
    else
      hs.dropping = l:lower():find("^x%-mtasts%-tlsrpt[ \t]*:") ~= nil
      if hs.dropping then return end
    end
  end
  dataline(self, version, sid, token, l)
end

local function pass_held(self, version, sid, token, s, lines)
  s.hs = s.hs or {}
  for _, l in ipairs(lines) do pass_line(self, version, sid, token, s.hs, l) end
end

-- A held TLSRPT message is complete: parse it, store it, pass it on with the header.
local function release(self, version, sid, token, s)
  local held = s.held
  drop_held(self, s)
  local header
  local ok, err = pcall(function()
    local report, msg, code
    do
      local lines = {}
      for i, l in ipairs(held.lines) do
        lines[i] = l:sub(1, 1) == "." and l:sub(2) or l     -- undo dot-stuffing
      end
      report, msg, code = tlsrpt.parse_report(concat(lines, "\r\n") .. "\r\n",
        { max_input = self.max_held, max_json = self.max_json })
    end
    if report then
      local policies = {}
      for _, p in ipairs(report.policies) do
        policies[#policies + 1] = tostring(p.policy["policy-domain"])
      end
      header = format("X-Mtasts-TLSRPT: parsed; report-id=%s; organization=%s; policies=%s",
        safe_header(report["report-id"]), safe_header(report["organization-name"]),
        safe_header(concat(policies, ",")))
      if self.report_dir then
        local stored, why = store_report(self, sid, report)
        if not stored then header = header .. "; not stored: " .. why end
      end
    else
      header = "X-Mtasts-TLSRPT: not parsed (" .. tostring(code) .. "): " .. safe_header(msg)
    end
  end)
  if not ok then
    self.log("err", tostring(err))
    header = "X-Mtasts-TLSRPT: not processed (internal error)"
  end
  dataline(self, version, sid, token, header)
  pass_held(self, version, sid, token, s, held.lines)
  dataline(self, version, sid, token, ".")
end

local function on_data_line(self, version, sid, token, line)
  local s = session(self, sid)
  if not s.tlsrpt then
    dataline(self, version, sid, token, line)
    return
  end
  if line == "." then
    if s.held and not s.streaming then release(self, version, sid, token, s)
    else dataline(self, version, sid, token, line) end
    drop_held(self, s)
    s.tlsrpt, s.streaming, s.hs = false, false, nil
    return
  end
  if s.streaming then
    pass_line(self, version, sid, token, s.hs, line)   -- our header went out already
    return
  end
  if not s.held then s.held = { lines = {}, size = 0 } end
  local held = s.held
  local size = #line + 2
  local why
  if held.size + size > self.max_held then
    why = "(too-large): over " .. self.max_held .. " bytes"
  elseif self.held_total + size > self.max_held_total then
    why = "(busy): other reports in flight hold " .. self.held_total .. " bytes"
    note(self, "busy", self.held_total .. " bytes held for parsing, " ..
      "the limit: passing a report on unparsed")
  end
  if why then
    -- too much to hold: say so, and stream the rest
    dataline(self, version, sid, token, "X-Mtasts-TLSRPT: not parsed " .. why)
    pass_held(self, version, sid, token, s, held.lines)
    pass_line(self, version, sid, token, s.hs, line)
    drop_held(self, s)
    s.streaming = true
    return
  end
  held.lines[#held.lines + 1] = line
  held.size = held.size + size
  self.held_total = self.held_total + size
end

-- smtp-out: record the sessions that established TLS, per recipient domain.
local function out_session_end(self, s)
  if not (self.store and s.tls) then return end
  local domains = {}
  for _, r in ipairs(s.rcpts) do
    local d = r:lower():match("@([^>]+)>?$")
    if d then domains[d] = true end
  end
  for name in pairs(domains) do
    -- a recipient domain that is no domain name has no policy to report on: skipped
    local d = core.domain(name)
    if not d then goto next_domain end
    local policy, text
    if self.policy_of then policy, text = self.policy_of(d) end
    local result = policy and tlsrpt.sts_result(d, text, policy) or tlsrpt.no_policy_result(d)
    result.summary.success = 1
    local ok, err = self.store:add(result, { recipient_domain = d })
    if not ok then self.log("err", "recording failed: " .. tostring(err)) end
    ::next_domain::
  end
end

--- Handle one line from smtpd.
function Filter:line(line)
  if not self.is_open then error("attempt to use a closed mtasts.opensmtpd.filter", 2) end
  if line:sub(1, 7) == "config|" then
    if line == "config|ready" then register(self) end
    return
  end
  local kind = line:match("^(%a+)|")
  if kind == "filter" then
    -- filter|version|timestamp|subsystem|phase|session|token|data
    local f = split(line, 8)
    local version, phase, sid, token = f[2], f[5], f[6], f[7]
    if phase == "data-line" then
      local ok, err = pcall(on_data_line, self, version, sid, token, f[8] or "")
      if not ok then
        self.log("err", tostring(err))
        dataline(self, version, sid, token, f[8] or "")
      end
    elseif version_at_least(version, "0.5") then
      self.write("filter-result|" .. sid .. "|" .. token .. "|proceed")
    else
      self.write("filter-result|" .. token .. "|" .. sid .. "|proceed")
    end
    return
  end
  if kind == "report" then
    -- report|version|timestamp|subsystem|event|session|...
    local f = split(line, 7)
    local subsystem, event, sid, rest = f[4], f[5], f[6], f[7] or ""
    local key = subsystem .. ":" .. tostring(sid)
    if event == "link-disconnect" then
      local s = self.sessions[key]
      if s and subsystem == "smtp-out" then pcall(out_session_end, self, s) end
      if self.sessions[sid] then drop_held(self, self.sessions[sid]) end
      self.sessions[key] = nil
      self.sessions[sid] = nil
      return
    end
    if subsystem == "smtp-in" then
      local s = session(self, sid)
      if event == "tx-rcpt" then
        -- tx-rcpt|message-id|result|address
        local _, result, addr = rest:match("^([^|]*)|([^|]*)|(.*)$")
        if result == "ok" and is_tlsrpt_rcpt(self, addr) then s.tlsrpt = true end
      elseif event == "tx-reset" then
        drop_held(self, s)
        s.tlsrpt, s.streaming, s.hs = false, false, nil
      end
    elseif subsystem == "smtp-out" then
      local s = self.sessions[key] or { rcpts = {} }
      self.sessions[key] = s
      if event == "link-connect" then
        s.dest = rest:match("|([^|]*)$")
      elseif event == "link-tls" then
        s.tls = rest
      elseif event == "tx-rcpt" then
        local _, result, addr = rest:match("^([^|]*)|([^|]*)|(.*)$")
        if result == "ok" then s.rcpts[#s.rcpts + 1] = addr end
      end
    end
  end
end

--- Run on stdin until it closes (the executable bin/mtasts-opensmtpd-filter), then flush
-- the store. Returns true, or nil, message, code when that flush failed.
function Filter:run(input)
  if not self.is_open then error("attempt to use a closed mtasts.opensmtpd.filter", 2) end
  input = input or io.stdin
  for line in input:lines() do
    local ok, err = pcall(self.line, self, line)
    if not ok then self.log("err", tostring(err)) end
  end
  if self.store then return self.store:flush() end
  return true
end

--- Close the filter. It owns nothing (the store and policy_of are the caller's): true; a
-- second close returns true too.
function Filter:close()
  self.is_open = false
  return true
end
filter_mt.__close = Filter.close
filter_mt.__gc = Filter.close

return _M
