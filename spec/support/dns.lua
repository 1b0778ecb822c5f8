-- An authoritative DNS server for specs: NSD from Debian, on a free loopback port, serving
-- the zones a spec declares. The resolver reaches it with nameserver = server.nameserver.
--
--   local server = dns.start({ ["example."] = { "_mta-sts.a IN TXT \"v=STSv1; id=1\"" } })
--   ... server.nameserver == "127.0.0.1@<port>" ...
--   server:stop()
--
-- A zone whose records are the string "BROKEN" fails to load, so NSD answers SERVFAIL for
-- it. A zone given as { text = "..." } is served as that complete zone file (a signed zone
-- from support.dnssec). Names outside every zone are REFUSED (the resolver reports servfail).
local util = require("support.util")
local proc = require("support.proc")

local _M = {}

--- The text of a zone file for origin `name` (with its SOA, NS and ns A 127.0.0.1) and the
-- record lines, relative to the origin unless they end with a dot.
local function zone_file(name, records)
  local lines = { "$ORIGIN " .. name, "$TTL 60",
    "@ IN SOA ns." .. name .. " hostmaster." .. name .. " 1 3600 600 86400 60",
    "@ IN NS ns." .. name, "ns IN A 127.0.0.1" }
  if records == "BROKEN" then
    lines[#lines + 1] = "this is not a resource record"
  else
    for _, r in ipairs(records) do lines[#lines + 1] = r end
  end
  return table.concat(lines, "\n") .. "\n"
end

_M.zone_file = zone_file

--- Start NSD with zones { [origin] = { record lines } | "BROKEN" | { text = zone file } };
-- returns a server.
-- port: a fixed port (53 inside a private network namespace), else a free one.
function _M.start(zones, port)
  local dir = util.tmpdir()
  local names = {}
  for name in pairs(zones) do names[#names + 1] = name end
  table.sort(names)
  local fixed = port
  for attempt = 1, 5 do
    port = fixed or proc.free_port()
    local conf = { "server:", "  ip-address: 127.0.0.1@" .. port, "  port: " .. port,
      '  username: ""', '  chroot: ""', '  zonesdir: "' .. dir .. '"',
      '  pidfile: "' .. dir .. '/nsd.pid"', '  xfrdfile: "' .. dir .. '/xfrd.state"',
      '  zonelistfile: "' .. dir .. '/zone.list"', '  database: ""',
      "  verbosity: 1", "  server-count: 1", "  do-ip6: no", "  hide-version: yes",
      "  tcp-count: 20", "  rrl-ratelimit: 0", "remote-control:", "  control-enable: no" }
    for i, name in ipairs(names) do
      local file = "zone" .. i .. ".zone"
      local z = zones[name]
      util.write(dir .. "/" .. file, type(z) == "table" and z.text or zone_file(name, z))
      conf[#conf + 1] = "zone:"
      conf[#conf + 1] = "  name: " .. name
      conf[#conf + 1] = "  zonefile: " .. file
    end
    util.write(dir .. "/nsd.conf", table.concat(conf, "\n") .. "\n")
    local log = dir .. "/nsd.log"
    local pid = proc.spawn("nsd", "nsd -d -c " .. dir .. "/nsd.conf", log)
    if proc.poll(function() return proc.tcp_open(port) or not proc.alive(pid) end, 10)
      and proc.alive(pid) then
      local server = { port = port, nameserver = "127.0.0.1@" .. port, dir = dir, pid = pid }
      function server.stop()
        proc.stop(pid)
        util.run("rm -rf '" .. dir .. "'")
      end
      return server
    end
    proc.stop(pid)
    if attempt == 5 then
      error("nsd did not start: " .. (util.run("tail -5 " .. log)))
    end
  end
end

return _M
