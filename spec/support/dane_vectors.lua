-- DANE test vectors made with the openssl CLI in a spec's temporary directory: a root CA, an
-- intermediate under it, leaves under the intermediate (valid for one day from now), and
-- every TLSA record form of each certificate (cert or SPKI; full, SHA-256, SHA-512).
--
--   local v = require("support.dane_vectors").new(dir)
--   v.chain.pem, v.chain.der               -- leaf mx1.example.com, intermediate, root
--   v.certs.leaf.pem, v.certs.leaf.der     -- one certificate
--   v:tlsa(2, 1, 1, "int")                 -- { usage = 2, selector = 1, mtype = 1, data = ... }
local util = require("support.util")

local _M = {}
local V = {}
V.__index = V

local function sh(cmd)
  local out, status = util.run(cmd)
  if status ~= 0 then error("openssl failed: " .. cmd .. "\n" .. out, 2) end
  return out
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local CA_EXT = "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"

local function leaf_ext(sans)
  return "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\n" ..
    "extendedKeyUsage = serverAuth\nsubjectAltName = " .. sans .. "\n"
end

-- Make certificate `name` under issuer (nil: self-signed), valid `days` from now.
local serial = 1000

local function make(dir, name, cn, ext, issuer, days)
  serial = serial + 1
  local base = dir .. "/" .. name
  util.write(base .. ".ext", ext)
  sh("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=" .. cn ..
    "' -keyout " .. base .. ".key -out " .. base .. ".csr")
  local sign = issuer and ("-CA " .. issuer .. ".crt -CAkey " .. issuer .. ".key")
    or ("-signkey " .. base .. ".key")
  sh("openssl x509 -req -in " .. base .. ".csr " .. sign .. " -set_serial " .. serial ..
    " -days " .. days .. " -extfile " .. base .. ".ext -out " ..
    base .. ".crt")
  sh("openssl x509 -in " .. base .. ".crt -outform DER -out " .. base .. ".der")
  sh("openssl x509 -in " .. base .. ".crt -noout -pubkey | openssl pkey -pubin -outform DER " ..
    "-out " .. base .. ".spki")
  local c = { pem = read(base .. ".crt"), der = read(base .. ".der"),
    spki = read(base .. ".spki"), data = {} }
  for sel, file in pairs({ [0] = base .. ".der", [1] = base .. ".spki" }) do
    c.data[sel] = {
      [0] = read(file),
      [1] = sh("openssl dgst -sha256 -binary " .. file),
      [2] = sh("openssl dgst -sha512 -binary " .. file),
    }
  end
  return c
end

--- Vectors in dir; opts.leaf_days: how long the leaves are valid (default 1 day).
function _M.new(dir, opts)
  local days = opts and opts.leaf_days or 1
  local self = setmetatable({ dir = dir, certs = {} }, V)
  local c = self.certs
  c.root = make(dir, "root", "DANE test root", CA_EXT, nil, 3650)
  c.other = make(dir, "other", "DANE other root", CA_EXT, nil, 3650)
  c.int = make(dir, "int", "DANE test intermediate", CA_EXT, dir .. "/root", 3650)
  c.leaf = make(dir, "leaf", "mx1.example.com",
    leaf_ext("DNS:mx1.example.com,DNS:mail.example.net"), dir .. "/int", days)
  c.wild = make(dir, "wild", "wildcard", leaf_ext("DNS:*.example.org"), dir .. "/int", days)
  c.partial = make(dir, "partial", "partial", leaf_ext("DNS:mx*.example.org"), dir .. "/int", days)
  c.cn = make(dir, "cn", "mx9.example.com",
    "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\n", dir .. "/int", days)
  self.chain = self:chain_of("leaf", "int", "root")
  return self
end

--- The chain of certificates `...` (names), as { pem = <text>, der = { ... } }.
function V:chain_of(...)
  local pem, der = {}, {}
  for _, name in ipairs({ ... }) do
    pem[#pem + 1] = self.certs[name].pem
    der[#der + 1] = self.certs[name].der
  end
  return { pem = table.concat(pem), der = der }
end

--- The TLSA record of certificate `name` with usage, selector and matching type.
function V:tlsa(usage, selector, mtype, name)
  return { usage = usage, selector = selector, mtype = mtype,
    data = self.certs[name].data[selector][mtype] }
end

return _M
