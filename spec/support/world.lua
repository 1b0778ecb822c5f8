-- The demo's fixture world, shared by `make demo` (examples/demo.lua) and `make world`
-- (examples/world.lua): NSD serving the zone example. and nginx serving policies with
-- certificates from a test CA, both on free loopback ports, for five domains:
--
--   enforce.example  enforce policy for mx1 only; mx2 is not covered; TLSRPT by mail and https
--   testing.example  testing policy; one MX is not covered
--   none.example     mode none
--   expired.example  enforce policy behind an expired certificate
--   plain.example    no MTA-STS record at all
--
--   local w = world.start(dir)   -- dir: an empty directory of the caller's
--   w.flags                      -- the mtasts options that point at this world
--   w.stop()

local _M = {}

local ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.enforce.example\nmax_age: 86400\n"

-- { name, MX records..., site = the policy host (nil: none), record = false: no TXT records }
_M.DOMAINS = {
  { "enforce", "MX 10 mx1.enforce", "MX 20 mx2.enforce",
    site = { body = ENFORCE } },
  { "testing", "MX 10 mx.testing", "MX 20 backup.elsewhere",
    site = { body = "version: STSv1\nmode: testing\nmx: mx.testing.example\nmax_age: 3600\n" } },
  { "none", "MX 10 mx.none",
    site = { body = "version: STSv1\nmode: none\nmax_age: 86400\n" } },
  { "expired", "MX 10 mx.expired",
    site = { body = "version: STSv1\nmode: enforce\nmx: mx.expired.example\nmax_age: 86400\n",
      cert = "expired" } },
  { "plain", "MX 10 mx.plain", record = false },
}

--- The MX host names of a domain entry, as full names.
function _M.mx_hosts(d)
  local mx = {}
  for i = 2, #d do mx[#mx + 1] = d[i]:match("^MX %d+ (%S+)") .. ".example" end
  return mx
end

--- A world of n domains d1.example ... dn.example for the benchmarks, in dir: each with an
-- `_mta-sts` record (id = its number) and a testing policy (mx.dN.example) served by one
-- nginx site for every policy host. Returns { ca =, dns =, web =, connect_to = { ... },
-- stop = }; connect_to maps every host's port 443 to the site.
function _M.bulk(dir, n)
  local ca = require("support.ca").new(dir .. "/ca")
  local records, names = {}, {}
  for i = 1, n do
    records[#records + 1] = ('_mta-sts.d%d IN TXT "v=STSv1; id=%d;"'):format(i, i)
    records[#records + 1] = ("mta-sts.d%d IN A 127.0.0.1"):format(i)
    if i > 1 then names[#names + 1] = ("mta-sts.d%d.example"):format(i) end
  end
  local w = { ca = ca, dns = require("support.dns").start({ ["example."] = records }) }
  local ok, err = pcall(function()
    w.web = require("support.https").start(ca, { {
      host = "mta-sts.d1.example", names = names,
      server_name = [[~^mta-sts\.(?<d>[^.]+)\.example$]],
      nginx = [[default_type text/plain; ]] ..
        [[return 200 "version: STSv1\nmode: testing\nmx: mx.$d.example\nmax_age: 86400\n";]],
    } })
  end)
  if not ok then
    w.dns.stop()
    error(err, 0)
  end
  w.connect_to = { ":443:127.0.0.1:" .. w.web.port }   -- curl: an empty host maps every host
  function w.stop()
    w.web.stop()
    w.dns.stop()
  end
  return w
end

--- Start the world in dir; returns { dns =, web =, ca =, flags =, db =, stop = }.
function _M.start(dir)
  local ca = require("support.ca").new(dir .. "/ca")
  local records, sites = {}, {}
  for _, d in ipairs(_M.DOMAINS) do
    local name = d[1]
    for i = 2, #d do records[#records + 1] = name .. " IN " .. d[i] end
    if d.record ~= false then
      records[#records + 1] = ('_mta-sts.%s IN TXT "v=STSv1; id=%s1;"'):format(name, name)
      records[#records + 1] = "mta-sts." .. name .. " IN A 127.0.0.1"
      records[#records + 1] = ('_smtp._tls.%s IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@%s.example%s"')
        :format(name, name, name == "enforce" and ",https://tlsrpt.enforce.example/report" or "")
    end
    if d.site then
      local site = {}
      for k, v in pairs(d.site) do site[k] = v end
      site.host = "mta-sts." .. name .. ".example"
      sites[#sites + 1] = site
    end
  end
  records[#records + 1] = "tlsrpt.enforce IN A 127.0.0.1"
  sites[#sites + 1] = { host = "tlsrpt.enforce.example" }    -- takes POSTed reports
  local w = { ca = ca, db = dir .. "/cache" }
  w.dns = require("support.dns").start({ ["example."] = records })
  local ok, err = pcall(function() w.web = require("support.https").start(ca, sites) end)
  if not ok then
    w.dns.stop()
    error(err, 0)
  end
  w.flags = "--db " .. w.db .. " --nameserver " .. w.dns.nameserver ..
    " --trust-anchor none --allow-private-addresses --cafile " .. ca.cafile ..
    " --connect-to :443:127.0.0.1:" ..
    w.web.port .. " --timeout 5"
  --- the same, as options of mtasts.open
  w.open_opts = { path = w.db, nameserver = w.dns.nameserver, trust_anchor = false,
    cafile = ca.cafile, connect_to = { ":443:127.0.0.1:" .. w.web.port },
    allow_private_addresses = true,
    timeouts = { dns = 5, fetch = 5 } }
  function w.stop()
    w.web.stop()
    w.dns.stop()
  end
  return w
end

return _M
