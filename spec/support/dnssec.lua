-- Signed fixture zones: zones signed with ldns-signzone (Debian's ldnsutils) when the spec
-- starts, served by NSD (support.dns), and the trust anchor that makes libunbound validate
-- them. docs/testing.md ("Signed zones") explains the setup.
--
--   local dnssec = require("support.dnssec")
--   local w = dnssec.start{
--     ["example."] = { sign = true, records = { "mx IN A 127.0.0.1", ... },
--                      bogus = { "_25._tcp.mx.bogus IN TLSA 3 1 1 00ff..." } },
--     ["insecure.example."] = { records = { ... } },   -- unsigned: delegated without DS
--   }
--   local r = assert(resolver.new(w:resolver_opts{ timeout = 2 }))
--   w.stop()
--
-- Every zone gets its SOA, its NS ns.<origin> and ns A 127.0.0.1 (support.dns). A zone whose
-- origin is under another one is delegated from it (NS and glue), with a DS record when the
-- child is signed too, so the chain of trust runs from the trust anchor through it; an
-- unsigned child is a provably insecure delegation. Each signed zone gets its own key
-- (ECDSA P-256, one key as KSK and ZSK), and the signatures hold from a day before the
-- spec started to 30 days after. `bogus` lines replace the records of their owner and type
-- after signing, keeping the old signatures: a bogus RRset in a zone that validates
-- otherwise. The trust anchor (w.trust_anchor, a file) is the DS of the topmost signed zone.
--
-- `stall` names zones that are delegated (NS, no DS) to the stall server (spec/support/
-- stall.c), which never answers: w:resolver_opts gives them to the resolver as stub zones,
-- so a lookup of a name under one times out while the rest of the world answers.
local util = require("support.util")
local proc = require("support.proc")
local dns = require("support.dns")

local _M = {}

local function sh(cmd)
  local out, status = util.run(cmd)
  if status ~= 0 then error("dnssec fixture: " .. cmd .. "\n" .. out, 2) end
  return out
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  return data
end

local function depth(origin) return select(2, origin:gsub("%.", "")) end

-- The nearest other zone `origin` lies under, or nil.
local function parent_of(origin, zones)
  local best
  for name in pairs(zones) do
    if name ~= origin and origin:sub(-#name - 1) == "." .. name
      and (not best or #name > #best) then
      best = name
    end
  end
  return best
end

-- Replace, in signed zone text, the records of each bogus line's owner and type (not their
-- RRSIGs) by that line.
local function tamper(text, origin, lines)
  for _, line in ipairs(lines) do
    local owner, rtype, rdata = line:match("^(%S+)%s+IN%s+(%S+)%s+(.+)$")
    assert(owner, "bogus line is not 'owner IN TYPE rdata': " .. line)
    local fqdn = owner:sub(-1) == "." and owner or owner .. "." .. origin
    local out, found = {}, false
    for l in text:gmatch("[^\n]+") do
      local o, t = l:match("^(%S+)%s+%d+%s+IN%s+(%S+)")
      if o and o:lower() == fqdn:lower() and t == rtype then
        if not found then out[#out + 1] = fqdn .. " 60 IN " .. rtype .. " " .. rdata end
        found = true
      else
        out[#out + 1] = l
      end
    end
    assert(found, "bogus line names no record in " .. origin .. ": " .. line)
    text = table.concat(out, "\n") .. "\n"
  end
  return text
end

--- Hex TLSA association data of a PEM certificate file: selector 0 (the certificate) or 1
-- (its public key), matching type 0 (full), 1 (SHA-256) or 2 (SHA-512).
function _M.tlsa_data(cert, selector, mtype)
  local der = selector == 1
    and "openssl x509 -in '" .. cert .. "' -noout -pubkey | openssl pkey -pubin -outform DER"
    or "openssl x509 -in '" .. cert .. "' -outform DER"
  local digest = mtype == 1 and " | openssl dgst -sha256 -binary"
    or mtype == 2 and " | openssl dgst -sha512 -binary" or ""
  return (sh(der .. digest .. " | od -An -v -tx1 | tr -d ' \\n'"))
end

--- Sign and serve zones { [origin] = { sign =, records =, bogus = } }; opts.stall: a list
-- of zone origins delegated to the stall server. Returns a world: nameserver, trust_anchor
-- (a file, or nil when nothing is signed), stall_nameserver, dir, resolver_opts(extra),
-- stop().
function _M.start(zones, opts)
  opts = opts or {}
  local dir, cleanup = util.tmpdir()
  local origins = {}
  for name in pairs(zones) do origins[#origins + 1] = name end
  table.sort(origins, function(a, b)   -- children first: their DS goes into the parent
    if depth(a) ~= depth(b) then return depth(a) > depth(b) end
    return a < b
  end)
  local stall_port, stall_pid
  local extra = {}   -- origin -> lines the parent adds: delegations, DS, stall delegations
  if opts.stall and #opts.stall > 0 then
    stall_port = proc.free_port()
    stall_pid = proc.spawn("stall", "build/support/stall " .. stall_port .. " 900",
      dir .. "/stall.log")
    assert(proc.poll(function() return proc.tcp_open(stall_port) end, 10),
      "the stall server did not start")
    for _, z in ipairs(opts.stall) do
      local p = assert(parent_of(z, zones), "stall zone " .. z .. " is under no zone")
      extra[p] = extra[p] or {}
      table.insert(extra[p], z .. " IN NS ns." .. p)
    end
  end
  local now = os.time()
  local inception = os.date("!%Y%m%d%H%M%S", now - 86400)
  local expiration = os.date("!%Y%m%d%H%M%S", now + 30 * 86400)
  local served, anchor, anchor_depth = {}, nil, nil
  for i, origin in ipairs(origins) do
    local z = zones[origin]
    local lines = {}
    for _, l in ipairs(z.records or {}) do lines[#lines + 1] = l end
    for _, l in ipairs(extra[origin] or {}) do lines[#lines + 1] = l end
    local text = dns.zone_file(origin, lines)
    local parent = parent_of(origin, zones)
    if parent then
      extra[parent] = extra[parent] or {}
      table.insert(extra[parent], origin .. " IN NS ns." .. origin)
      table.insert(extra[parent], "ns." .. origin .. " IN A 127.0.0.1")
    end
    if z.sign then
      local file = dir .. "/zone" .. i
      util.write(file, text)
      local key = sh("cd '" .. dir .. "' && ldns-keygen -r /dev/urandom -a ECDSAP256SHA256 -k " ..
        origin):gsub("%s+$", "")
      local ds = read(dir .. "/" .. key .. ".ds"):gsub("%s+$", "")
      sh("cd '" .. dir .. "' && ldns-signzone -i " .. inception .. " -e " .. expiration ..
        " -o " .. origin .. " -f " .. file .. ".signed " .. file .. " " .. key)
      text = read(file .. ".signed")
      if z.bogus then text = tamper(text, origin, z.bogus) end
      if parent then
        table.insert(extra[parent], ds)
      elseif not anchor_depth or depth(origin) < anchor_depth then
        anchor, anchor_depth = ds, depth(origin)
      end
    else
      assert(not z.bogus, "bogus records need a signed zone: " .. origin)
    end
    served[origin] = { text = text }
  end
  local server = dns.start(served)
  local w = { nameserver = server.nameserver, dir = dir, server = server }
  if anchor then
    w.trust_anchor = dir .. "/trust-anchor.ds"
    util.write(w.trust_anchor, anchor .. "\n")
  end
  if stall_port then w.stall_nameserver = "127.0.0.1@" .. stall_port end
  --- The options of resolver.new for this world, merged with `more`.
  function w.resolver_opts(_, more)
    local o = { nameserver = w.nameserver, trust_anchor = w.trust_anchor or false }
    if stall_port then
      o.stub = {}
      for _, z in ipairs(opts.stall) do o.stub[z] = w.stall_nameserver end
    end
    for k, v in pairs(more or {}) do o[k] = v end
    return o
  end
  function w.stop()
    server.stop()
    if stall_pid then proc.stop(stall_pid) end
    cleanup()
  end
  return w
end

--- The DANE fixture world: a signed example. (the trust anchor) holding one domain per
-- case, each with an MX host mx.<domain> at opts.address (default 127.0.0.1), an MTA-STS
-- record and policy host (mta-sts.<domain>, same address) and a TLSRPT record:
--
-- | domain | TLSA of _25._tcp.mx.<domain> | r:tlsa says |
-- |---|---|---|
-- | dane-ee.example | 3 1 1, SHA-256 of opts.ee's public key | secure |
-- | dane-ta.example | 2 0 1, SHA-256 of the certificate opts.ta | secure |
-- | mismatch.example | 3 1 1, a digest of no key | secure (the data matches nothing) |
-- | cname.example | a CNAME to dane-ee's TLSA name | secure, canonname that name |
-- | nodane.example | none | secure, an empty list (denial nxdomain) |
-- | insecure.example | 3 1 1 as dane-ee, in an unsigned zone delegated without DS | insecure |
-- | bogus.example | 3 1 1 as dane-ee, replaced after signing by another digest | fail bogus |
-- | slow.example | the TLSA name is delegated to the stall server | fail timeout |
--
-- Without opts.ee or opts.ta their digests are made-up bytes (w.data has the hex of each:
-- ee, ta, other). opts.records: more lines for example. (names absolute),
-- opts.insecure_records for insecure.example. Returns the world of start, and w.domains (the
-- table above: domain -> { mx =, tlsa = the TLSA name, expect = "secure" | "insecure" |
-- "bogus" | "timeout" | "none" }).
function _M.dane_world(opts)
  opts = opts or {}
  local addr = opts.address or "127.0.0.1"
  local ee = opts.ee and _M.tlsa_data(opts.ee, 1, 1) or string.rep("e1", 32)
  local ta = opts.ta and _M.tlsa_data(opts.ta, 0, 1) or string.rep("7a", 32)
  local other = string.rep("0f", 32)
  -- the lines of domain d (no final dot), names absolute
  local function domain(d, tlsa)
    local lines = { d .. ". IN MX 10 mx." .. d .. ".", "mx." .. d .. ". IN A " .. addr,
      "mta-sts." .. d .. ". IN A " .. addr,
      "_mta-sts." .. d .. '. IN TXT "v=STSv1; id=1;"',
      "_smtp._tls." .. d .. '. IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@' .. d .. '"' }
    if tlsa then lines[#lines + 1] = "_25._tcp.mx." .. d .. ". IN " .. tlsa end
    return lines
  end
  local top = {}
  local function add(lines) for _, l in ipairs(lines) do top[#top + 1] = l end end
  add(domain("dane-ee.example", "TLSA 3 1 1 " .. ee))
  add(domain("dane-ta.example", "TLSA 2 0 1 " .. ta))
  add(domain("mismatch.example", "TLSA 3 1 1 " .. other))
  add(domain("cname.example", "CNAME _25._tcp.mx.dane-ee.example."))
  add(domain("nodane.example"))
  add(domain("bogus.example", "TLSA 3 1 1 " .. ee))
  add(domain("slow.example"))
  for _, l in ipairs(opts.records or {}) do top[#top + 1] = l end
  local insecure = domain("insecure.example", "TLSA 3 1 1 " .. ee)
  for _, l in ipairs(opts.insecure_records or {}) do insecure[#insecure + 1] = l end
  local w = _M.start({
    ["example."] = { sign = true, records = top,
      bogus = { "_25._tcp.mx.bogus.example. IN TLSA 3 1 1 " .. other } },
    ["insecure.example."] = { records = insecure },
  }, { stall = { "_25._tcp.mx.slow.example." } })
  w.domains, w.data = {}, { ee = ee, ta = ta, other = other }
  for d, expect in pairs{ ["dane-ee.example"] = "secure", ["dane-ta.example"] = "secure",
    ["mismatch.example"] = "secure", ["cname.example"] = "secure",
    ["nodane.example"] = "none", ["insecure.example"] = "insecure",
    ["bogus.example"] = "bogus", ["slow.example"] = "timeout" } do
    w.domains[d] = { mx = "mx." .. d, tlsa = "_25._tcp.mx." .. d, expect = expect }
  end
  return w
end

return _M
