-- A test CA made with the openssl CLI when specs start, and certificates from it:
-- valid, expired, for another name, or from an issuer nobody trusts.
--
--   local ca = require("support.ca").new(dir)
--   local cert, key = ca:issue("mta-sts.a.example")                   -- valid
--   ca:issue("mta-sts.b.example", { expired = true })
--   ca:issue("other.example")                                        -- use it for a wrong name
--   ca:issue("mta-sts.c.example", { untrusted = true })              -- another CA signs it
--   ca.cafile                                                        -- trust this
local util = require("support.util")

local _M = {}
local CA = {}
CA.__index = CA

local function sh(cmd)
  local out, status = util.run(cmd)
  if status ~= 0 then error("openssl failed: " .. cmd .. "\n" .. out, 2) end
  return out
end

local function make_ca(dir, cn)
  sh("mkdir -p " .. dir .. "/newcerts && : > " .. dir .. "/index.txt && echo 1000 > " ..
    dir .. "/serial")
  util.write(dir .. "/ca.cnf", table.concat({
    "[ ca ]", "default_ca = test", "[ test ]", "dir = " .. dir,
    "database = " .. dir .. "/index.txt", "new_certs_dir = " .. dir .. "/newcerts",
    "serial = " .. dir .. "/serial", "default_md = sha256", "policy = any",
    "unique_subject = no", "copy_extensions = none", "[ any ]", "commonName = supplied",
  }, "\n") .. "\n")
  sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 " ..
    "-subj '/CN=" .. cn .. "' -keyout " .. dir .. "/ca.key -out " .. dir .. "/ca.crt " ..
    "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign")
  return { dir = dir, crt = dir .. "/ca.crt", key = dir .. "/ca.key", cnf = dir .. "/ca.cnf" }
end

function _M.new(dir)
  sh("mkdir -p " .. dir)
  local self = setmetatable({ dir = dir, n = 0 }, CA)
  self.trusted = make_ca(dir .. "/trusted", "mtasts test CA")
  self.other = make_ca(dir .. "/other", "mtasts untrusted CA")
  self.cafile = self.trusted.crt
  return self
end

--- Issue a certificate for `name` (and opts.names); returns cert and key paths.
function CA:issue(name, opts)
  opts = opts or {}
  self.n = self.n + 1
  local base = self.dir .. "/leaf" .. self.n
  local issuer = opts.untrusted and self.other or self.trusted
  local sans = { "DNS:" .. name }
  for _, n in ipairs(opts.names or {}) do sans[#sans + 1] = "DNS:" .. n end
  util.write(base .. ".ext", "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\n" ..
    "extendedKeyUsage = serverAuth\nsubjectAltName = " .. table.concat(sans, ",") .. "\n")
  sh("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=" ..
    name .. "' -keyout " .. base .. ".key -out " .. base .. ".csr")
  local dates = opts.expired and "-startdate 20200101000000Z -enddate 20200201000000Z"
    or "-days 30"
  sh("openssl ca -batch -notext -config " .. issuer.cnf .. " -cert " .. issuer.crt ..
    " -keyfile " .. issuer.key .. " -in " .. base .. ".csr -out " .. base .. ".crt " .. dates ..
    " -extfile " .. base .. ".ext")
  return base .. ".crt", base .. ".key"
end

--- A certificate for `name` under a chain of `depth` intermediate CAs below the trusted root;
-- returns the chain file (leaf first, then the intermediates) and the key.
function CA:chain(name, depth)
  self.n = self.n + 1
  local base = self.dir .. "/chain" .. self.n
  sh("mkdir -p " .. base)
  util.write(base .. "/ca.ext", "basicConstraints = critical,CA:TRUE\n" ..
    "keyUsage = critical,keyCertSign,cRLSign\n")
  util.write(base .. "/leaf.ext", "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\n" ..
    "extendedKeyUsage = serverAuth\nsubjectAltName = DNS:" .. name .. "\n")
  local issuer_crt, issuer_key = self.trusted.crt, self.trusted.key
  local files = {}
  for i = 1, depth + 1 do
    local leaf = i == depth + 1
    local f = base .. "/" .. (leaf and "leaf" or ("int" .. i))
    sh("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=" ..
      (leaf and name or ("mtasts intermediate " .. i)) .. "' -keyout " .. f .. ".key -out " ..
      f .. ".csr")
    sh("openssl x509 -req -in " .. f .. ".csr -CA " .. issuer_crt .. " -CAkey " .. issuer_key ..
      " -set_serial " .. (1000 + i) .. " -days 30 -extfile " .. base ..
      (leaf and "/leaf.ext" or "/ca.ext") .. " -out " .. f .. ".crt")
    table.insert(files, 1, f .. ".crt")
    issuer_crt, issuer_key = f .. ".crt", f .. ".key"
  end
  sh("cat " .. table.concat(files, " ") .. " > " .. base .. "/chain.crt")
  return base .. "/chain.crt", base .. "/leaf.key"
end

return _M
