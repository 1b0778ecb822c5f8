--- mtasts.fetch: fetching MTA-STS policies (and POSTing reports) over HTTPS without blocking
-- the host. The C object (mtasts.core.fetcher_new) runs transfers on a curl multi handle and
-- returns raw facts; this module resolves the policy host through mtasts.resolver, waits
-- with the injected `wait`, and classifies failures into the codes of docs/architecture.md
-- ("Public contract") and the TLSRPT failure reasons of docs/errors.md. Reference:
-- docs/fetch.md.
local core = require("mtasts.core")
local pending = require("mtasts.pending")
local settings = require("mtasts.settings")

local type, pairs, ipairs, error, tostring = type, pairs, ipairs, error, tostring
local setmetatable, concat = setmetatable, table.concat

local _M = { MAX_SIZE = 65536, DEFAULT_TIMEOUT = 60 }

local methods = core.fetcher_methods
local state = setmetatable({}, { __mode = "k" })

local OPTIONS = { resolver = true, cafile = true, capath = true, proxy = true,
  connect_to = true, timeout = true, connect_timeout = true, max_size = true, wait = true,
  allow_private_addresses = true }

-- Misuse raises (at the caller of `fn`): an unknown option, a wrong type. Returns the list
-- of connect_to entries.
local function check_types(opts, fn)
  local function bad(msg) error("bad argument #1 to '" .. fn .. "' (" .. msg .. ")", 4) end
  if type(opts) ~= "table" then bad("table expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not OPTIONS[k] then bad("unknown option '" .. tostring(k) .. "'") end
  end
  for _, k in ipairs({ "timeout", "connect_timeout", "max_size" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "number" then bad(k .. " must be a number") end
  end
  for _, k in ipairs({ "cafile", "capath", "proxy" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then bad(k .. " must be a string") end
  end
  if opts.wait ~= nil and type(opts.wait) ~= "function" then bad("wait must be a function") end
  local ct = opts.connect_to
  if type(ct) == "string" then return { ct } end
  if ct ~= nil and type(ct) ~= "table" then bad("connect_to must be a string or a list") end
  for _, e in ipairs(ct or {}) do
    if type(e) ~= "string" then bad("connect_to entries must be strings") end
  end
  return ct or {}
end

-- One CONNECT_TO entry, HOST:PORT:HOST2:PORT2 (a host may be empty or an [IPv6] literal, a
-- port empty): its four parts, or nil.
local function connect_to_parts(s)
  local parts, i = {}, 1
  for n = 1, 4 do
    local stop
    if n % 2 == 1 and s:sub(i, i) == "[" then
      stop = s:find("]", i, true)
      if not stop then return nil end
      stop = stop + 1
    elseif n == 4 then
      stop = #s + 1                    -- the rest: a port, checked as one
    else
      stop = s:find(":", i, true) or #s + 1
    end
    parts[n] = s:sub(i, stop - 1)
    if n < 4 and s:sub(stop, stop) ~= ":" then return nil end
    i = stop + 1
  end
  return parts
end

-- The values of the options (their types checked): true, or a config failure.
local function check_values(opts, connect_to)
  local ok, err, code, key = settings.seconds("timeout", opts.timeout)
  if ok then ok, err, code, key = settings.seconds("connect_timeout", opts.connect_timeout) end
  if ok then ok, err, code, key = settings.integer("max_size", opts.max_size, 1) end
  if ok then ok, err, code, key = settings.nonempty("proxy", opts.proxy) end
  if not ok then return nil, err, code, key end
  for _, e in ipairs(connect_to) do
    local p = connect_to_parts(e)
    if not p then
      return settings.fail("connect_to", settings.show(e) .. " is not HOST:PORT:HOST2:PORT2")
    end
    for _, port in ipairs({ p[2], p[4] }) do
      if port ~= "" then
        ok, err, code, key = settings.port("connect_to", settings.show(e), port)
        if not ok then return nil, err, code, key end
      end
    end
  end
  return true
end

local failed = settings.failed

--- Create a fetcher. opts: resolver (an mtasts.resolver for the policy host and report
-- hosts; without one curl resolves them), cafile, capath, proxy, connect_to (curl CONNECT_TO
-- entries), timeout (total, seconds, default 60), connect_timeout, max_size (default 65536),
-- wait, allow_private_addresses (default false: connections to loopback, private,
-- link-local, unique-local, CGNAT, multicast and other non-global addresses are refused,
-- whatever named them). Every setting is checked now (the CA file is loaded): a bad one
-- fails with code "config" and the option's name as the fourth value.
function _M.new(opts)
  opts = opts or {}
  local connect_to = check_types(opts, "new")
  local ok, err, code, key = check_values(opts, connect_to)
  if not ok then return nil, err, code, key end
  local timeout = opts.timeout or _M.DEFAULT_TIMEOUT
  local f
  f, err, code = core.fetcher_new{ cafile = opts.cafile, capath = opts.capath,
    proxy = opts.proxy, connect_to = connect_to, timeout = timeout,
    connect_timeout = opts.connect_timeout, max_size = opts.max_size or _M.MAX_SIZE,
    allow_private = opts.allow_private_addresses and true or false }
  if not f then return failed(err, code) end
  local st = pending.new(opts.wait or core.poll)
  st.resolver, st.timeout, st.max_size = opts.resolver, timeout, opts.max_size or _M.MAX_SIZE
  state[f] = st
  return f
end

--- Check the settings new would take (the same options), making nothing: true, or nil,
-- message, "config", option (or "local"). For owners that make their fetcher later.
function _M.check(opts)
  opts = opts or {}
  local connect_to = check_types(opts, "check")
  local ok, err, code, key = check_values(opts, connect_to)
  if not ok then return nil, err, code, key end
  ok, err, code = core.fetcher_check{ cafile = opts.cafile, capath = opts.capath }
  if not ok then return failed(err, code) end
  return true
end

local function await(f, id) return pending.await(state[f], f, id) end

-- OpenSSL verify results (X509_V_ERR_*) -> TLSRPT failure reasons (docs/conformance.md §2).
local VERIFY = {
  [10] = "certificate-expired",        -- CERT_HAS_EXPIRED
  [62] = "certificate-host-mismatch",  -- HOSTNAME_MISMATCH
  [2] = "certificate-not-trusted",     -- UNABLE_TO_GET_ISSUER_CERT
  [18] = "certificate-not-trusted",    -- DEPTH_ZERO_SELF_SIGNED_CERT
  [19] = "certificate-not-trusted",    -- SELF_SIGNED_CERT_IN_CHAIN
  [20] = "certificate-not-trusted",    -- UNABLE_TO_GET_ISSUER_CERT_LOCALLY
  [21] = "certificate-not-trusted",    -- UNABLE_TO_VERIFY_LEAF_SIGNATURE
}

-- curl results without a certificate problem -> reasons.
local CURL = {
  CURLE_OPERATION_TIMEDOUT = "timeout",
  CURLE_COULDNT_CONNECT = "connection-failed",
  CURLE_COULDNT_RESOLVE_HOST = "policy-host-not-found",
  CURLE_SSL_CONNECT_ERROR = "tls-handshake-failed",
  CURLE_SSL_CIPHER = "tls-handshake-failed",
  CURLE_PEER_FAILED_VERIFICATION = "validation-failure",
  CURLE_GOT_NOTHING = "empty-response",
  CURLE_RECV_ERROR = "connection-reset",
  CURLE_SEND_ERROR = "connection-reset",
  CURLE_PARTIAL_FILE = "truncated-response",
  CURLE_WEIRD_SERVER_REPLY = "bad-http-response",
  CURLE_HTTP2 = "bad-http-response",
  CURLE_HTTP2_STREAM = "bad-http-response",
}

-- The verify result means something only when the transfer failed on TLS; otherwise it is
-- curl's initial X509_V_ERR_UNSPECIFIED (1) or X509_V_OK (0).
local TLS_FAILURE = { CURLE_PEER_FAILED_VERIFICATION = true, CURLE_SSL_CONNECT_ERROR = true }

local function cert_reason(t)
  if TLS_FAILURE[t.curl_code] and t.verify_result ~= 0 and t.verify_result ~= 1 then
    return VERIFY[t.verify_result] or "validation-failure"
  end
end

-- curl results that are this host's failure, not the policy host's (docs/errors.md, code
-- local): the trust store cannot be read (CURLE_SSL_CACERT_BADFILE: the CA file disappeared
-- after start), no memory, a libcurl without what it needs, the configured proxy's name
-- does not resolve. A certificate that does not verify is the peer's failure, never here.
local LOCAL = { CURLE_SSL_CACERT_BADFILE = true, CURLE_SSL_CRL_BADFILE = true,
  CURLE_OUT_OF_MEMORY = true, CURLE_FAILED_INIT = true, CURLE_NOT_BUILT_IN = true,
  CURLE_UNSUPPORTED_PROTOCOL = true, CURLE_BAD_FUNCTION_ARGUMENT = true,
  CURLE_UNKNOWN_OPTION = true, CURLE_INTERFACE_FAILED = true,
  CURLE_COULDNT_RESOLVE_PROXY = true, CURLE_SSL_ENGINE_NOTFOUND = true,
  CURLE_SSL_ENGINE_SETFAILED = true, CURLE_SSL_ENGINE_INITFAILED = true,
  CURLE_SSL_CERTPROBLEM = true }

-- Why a failed transfer is this host's failure, or nil when it is the peer's: what the C
-- side saw (no socket, no room in epoll), a curl result of LOCAL, or a body that could not
-- be stored for want of memory (the write callback refused it, not for its size).
local function local_failure(t)
  if t.local_error then return t.local_error end
  if LOCAL[t.curl_code] then return t.error or t.curl_code end
  if t.curl_code == "CURLE_WRITE_ERROR" and not t.too_large then return t.error or "no memory" end
end

-- The failure of a transfer this host could not do: nil, message, "local" (no TLSRPT
-- reason: nothing is reported, the domain is not at fault).
local function failed_here(host, why)
  return nil, ("%s: this host failed: %s"):format(host, why), "local"
end

local WEBPKI = { ["certificate-expired"] = true, ["certificate-host-mismatch"] = true,
  ["certificate-not-trusted"] = true, ["validation-failure"] = true }

--- The TLSRPT result type of a fetch failure: sts-webpki-invalid, sts-policy-invalid or
-- sts-policy-fetch-error.
function _M.result_type(code, reason)
  if code == "policy-syntax" then return "sts-policy-invalid" end
  if WEBPKI[reason] then return "sts-webpki-invalid" end
  return "sts-policy-fetch-error"
end

--- Is this Content-Type text/plain (parameters allowed)?
function _M.is_text_plain(ct)
  return type(ct) == "string" and ct:lower():match("^%s*text/plain%s*;?") ~= nil
end

-- Addresses of the policy host: the resolve entries for curl, or a failure.
local ADDRESS_GRACE = 0.25   -- once A or AAAA has answered, how long to wait for the other

local function addresses(r, host)
  local a, aerr, acode, aaaa, aaaaerr, aaaacode
  if type(r.lookup_all) == "function" then   -- both at once
    local res, err, code = r:lookup_all({ { host, "A" }, { host, "AAAA" } }, ADDRESS_GRACE)
    if not res then
      if code == "local" then return nil, host .. ": " .. tostring(err), "local" end
      return nil, host .. ": " .. tostring(err), "policy-fetch", "dns-" .. code
    end
    a, aerr, acode = res[1][1], res[1][2], res[1][3]
    aaaa, aaaaerr, aaaacode = res[2][1], res[2][2], res[2][3]
  else
    a, aerr, acode = r:a(host)
    aaaa, aaaaerr, aaaacode = r:aaaa(host)
  end
  local list = {}
  for _, x in ipairs(a or {}) do list[#list + 1] = x end
  for _, x in ipairs(aaaa or {}) do list[#list + 1] = "[" .. x .. "]" end
  if #list > 0 then return { host .. ":443:" .. concat(list, ",") } end
  if acode == "nxdomain" or aaaacode == "nxdomain" then
    return nil, host .. ": no such host", "no-policy", "policy-host-not-found"
  end
  if acode == "nodata" and aaaacode == "nodata" then
    return nil, host .. ": the host has no address", "no-policy", "policy-host-not-found"
  end
  -- this host's resolver failed: not the domain's failure
  if acode == "local" then return nil, host .. ": " .. tostring(aerr), "local" end
  if aaaacode == "local" then return nil, host .. ": " .. tostring(aaaaerr), "local" end
  return nil, host .. ": " .. tostring(aerr), "policy-fetch", "dns-" .. tostring(acode)
end

-- A transfer that failed because every address it tried was not a global one.
local function refused(host, t)
  return nil, ("%s: %s is not a global address (allow_private_addresses allows it)"):format(
    host, t.refused_address), "policy-fetch", "address-not-global"
end

--- Run one transfer to the end: the raw result table of f:done(), or nil, msg, code.
function methods:transfer(req)
  local st = state[self]
  if not st then error("fetcher not made by mtasts.fetch.new", 2) end
  local id, err, code = self:add(req)
  if not id then return nil, err, code end
  return await(self, id)
end

--- Fetch the policy of `domain` (lower-case A-labels). Returns the text and
-- { content_type =, content_type_ok = }, or nil, message, code, reason: code no-policy
-- (404, no such host), policy-fetch (network, HTTP, TLS) or policy-syntax (too large); or
-- nil, message, "local" without a reason when this host failed (the CA file cannot be read,
-- no memory, no descriptor, the resolver failed): not the domain's failure.
function methods:fetch(domain)
  local st = state[self]
  if not st then error("fetcher not made by mtasts.fetch.new", 2) end
  local host = "mta-sts." .. domain
  local resolve
  if st.resolver then
    local r, msg, code, reason = addresses(st.resolver, host)
    if not r then return nil, msg, code, reason end
    resolve = r
  end
  local t, err, code = self:transfer{ url = "https://" .. host .. "/.well-known/mta-sts.txt",
    host = host, resolve = resolve }
  if not t then
    if code == "local" then return nil, err, code end
    return nil, err, code, "fetch-failed"
  end
  if t.too_large or t.curl_code == "CURLE_FILESIZE_EXCEEDED" then
    return nil, ("%s: the policy is larger than %d bytes"):format(host, st.max_size),
      "policy-syntax", "policy-too-large"
  end
  if t.curl_code ~= "CURLE_OK" then
    local why = local_failure(t)
    if why then return failed_here(host, why) end
    if t.refused_address then return refused(host, t) end
    local reason = cert_reason(t)
    if reason then
      return nil, ("%s: certificate: %s"):format(host, t.verify_error), "policy-fetch", reason
    end
    return nil, ("%s: %s"):format(host, t.error), "policy-fetch",
      CURL[t.curl_code] or ("fetch-failed+" .. t.curl_code)
  end
  if t.status == 404 then
    return nil, host .. ": no policy (HTTP 404)", "no-policy", "http-status-404"
  end
  if t.status >= 300 and t.status < 400 then
    return nil, ("%s: HTTP %d: redirects are not followed"):format(host, t.status),
      "policy-fetch", "redirect-not-allowed"
  end
  if t.status ~= 200 then
    return nil, ("%s: HTTP %d"):format(host, t.status), "policy-fetch",
      "http-status-" .. t.status
  end
  return t.body, { content_type = t.content_type,
    content_type_ok = _M.is_text_plain(t.content_type) }
end

--- Start a POST of `body` to an https URL, with the same safety rules as a policy fetch
-- (no redirects, verified TLS, size limits, the host resolved through the fetcher's
-- resolver, no non-global address unless allowed). Returns a handle for post_finish, or nil,
-- message, code, reason. Several may run at once.
function methods:post_start(url, body, content_type)
  local st = state[self]
  if not st then error("fetcher not made by mtasts.fetch.new", 2) end
  local host = type(url) == "string" and url:match("^https://([^/:?#]+)")
  if not host then return nil, "only https:// URLs with a host", "policy-fetch", "bad-url" end
  local resolve
  if st.resolver and not host:match("^%[") and not host:match("^%d+%.%d+%.%d+%.%d+$") then
    local port = url:match("^https://[^/:?#]+:(%d+)") or "443"
    local r, msg, code, reason = addresses(st.resolver, host)
    if not r then return nil, msg, code == "no-policy" and "policy-fetch" or code, reason end
    resolve = { (r[1]:gsub(":443:", ":" .. port .. ":", 1)) }
  end
  local id, err, code = self:add{ url = url, host = host, body = body,
    content_type = content_type, resolve = resolve }
  if not id then
    if code == "local" then return nil, err, code end
    return nil, err, code, "fetch-failed"
  end
  return { id = id, host = host }
end

--- Wait for a POST started with post_start: the HTTP status and response body, or nil,
-- message, code, reason.
function methods:post_finish(h)
  local t, err, code = await(self, h.id)
  if not t then
    if code == "local" then return nil, err, code end
    return nil, err, code, "fetch-failed"
  end
  if t.curl_code ~= "CURLE_OK" and not t.too_large then
    local here = local_failure(t)
    if here then return failed_here(h.host, here) end
    if t.refused_address then return refused(h.host, t) end
    local reason = cert_reason(t)
    local why = reason and t.verify_error or t.error
    reason = reason or CURL[t.curl_code] or ("fetch-failed+" .. t.curl_code)
    return nil, ("%s: %s"):format(h.host, why), "policy-fetch", reason
  end
  return t.status, t.body
end

--- POST `body` to an https URL and wait for the answer (post_start, then post_finish).
-- Returns the HTTP status and response body, or nil, message, code, reason.
function methods:post(url, body, content_type)
  local h, err, code, reason = self:post_start(url, body, content_type)
  if not h then return nil, err, code, reason end
  return self:post_finish(h)
end

return _M
