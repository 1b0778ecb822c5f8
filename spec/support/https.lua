-- An HTTPS server for specs: nginx from Debian on a free loopback port, one server block
-- (SNI) per fixture site, with certificates from the test CA. Sites:
--
--   { host = "mta-sts.a.example",
--     cert = "valid" | "expired" | "untrusted" | "wrongname" | N,  -- N: under N intermediates
--     body = "version: STSv1...", type = "text/plain",           -- the policy file, or
--     status = 404 | redirect = "https://..." | nginx = "raw location directives",
--     names = { more host names for the certificate and connect_to },
--     server_name = "nginx server_name, e.g. a ~regex",
--     report = "nginx directives answering POST /report" }  -- default: echo the body
--
-- POST /report bodies are logged; server:reports() returns them as { {type=, body=}, ... }.
--
-- The server's connect_to list maps every host's port 443 to it (curl CONNECT_TO form).
local util = require("support.util")
local proc = require("support.proc")

local _M = {}

local ECHO = "/usr/lib/nginx/modules/ngx_http_echo_module.so"

local function location(dir, i, site)
  if site.nginx then return site.nginx end
  if site.status then return "return " .. site.status .. ";" end
  if site.redirect then return "return 301 " .. site.redirect .. ";" end
  local file = dir .. "/site" .. i .. ".txt"
  util.write(file, site.body or "")
  local lines = { "default_type " .. (site.type or "text/plain") .. ";", "alias " .. file .. ";" }
  if site.charset then lines[#lines + 1] = "charset " .. site.charset .. ";" end
  return table.concat(lines, " ")
end

--- Start nginx with the sites; returns { port =, connect_to =, cafile =, stop = }.
function _M.start(ca, sites)
  local dir = util.tmpdir()
  util.run("mkdir -p " .. dir .. "/tmp")
  local servers = {}
  local hosts = {}
  for i, site in ipairs(sites) do
    local kind = site.cert or "valid"
    local crt, key
    if kind == "wrongname" then crt, key = ca:issue("wrong-" .. site.host)
    elseif type(kind) == "number" then crt, key = ca:chain(site.host, kind)   -- chain depth
    else crt, key = ca:issue(site.host, { expired = kind == "expired",
      untrusted = kind == "untrusted", names = site.names }) end
    servers[#servers + 1] = table.concat({
      "server {", "  listen 127.0.0.1:PORT ssl;",
      "  server_name " .. (site.server_name or site.host) .. ";",
      "  ssl_certificate " .. crt .. ";", "  ssl_certificate_key " .. key .. ";",
      "  ssl_protocols TLSv1.2 TLSv1.3;",
      "  location = /.well-known/mta-sts.txt { " .. location(dir, i, site) .. " }",
      "  location = /report { client_max_body_size 1m; echo_read_request_body; " ..
        "access_log " .. dir .. "/report.log reportbody; " ..
        "default_type application/octet-stream; " .. (site.report or "echo_request_body;") ..
        " }",
      "}" }, "\n")
    hosts[#hosts + 1] = site.host
    for _, n in ipairs(site.names or {}) do hosts[#hosts + 1] = n end
  end
  for attempt = 1, 5 do
    local port = proc.free_port()
    local conf = table.concat({
      "load_module " .. ECHO .. ";", "daemon off;", "master_process off;",
      "worker_processes 1;", "pid " .. dir .. "/nginx.pid;",
      "error_log " .. dir .. "/error.log warn;", "events { worker_connections 512; }",
      "http {", "  access_log off;",
      "  log_format reportbody escape=default '$content_type $request_body';",
      "  client_body_temp_path " .. dir .. "/tmp/body;",
      "  proxy_temp_path " .. dir .. "/tmp/proxy;", "  fastcgi_temp_path " .. dir .. "/tmp/fcgi;",
      "  uwsgi_temp_path " .. dir .. "/tmp/uwsgi;", "  scgi_temp_path " .. dir .. "/tmp/scgi;",
      (table.concat(servers, "\n"):gsub("PORT", tostring(port))), "}" }, "\n")
    util.write(dir .. "/nginx.conf", conf)
    local pid = proc.spawn("nginx", "nginx -p " .. dir .. " -c " .. dir .. "/nginx.conf -e " ..
      dir .. "/error.log", dir .. "/stdout.log")
    if proc.poll(function() return proc.tcp_open(port) or not proc.alive(pid) end, 10)
      and proc.alive(pid) then
      local connect_to = {}
      for _, h in ipairs(hosts) do connect_to[#connect_to + 1] = h .. ":443:127.0.0.1:" .. port end
      return { port = port, connect_to = connect_to, cafile = ca.cafile, dir = dir,
        reports = function()
          local out = {}
          local f = io.open(dir .. "/report.log", "rb")
          if not f then return out end
          for line in f:lines() do
            local ct, body = line:match("^(%S+) (.*)$")
            if ct then
              body = body:gsub("\\x(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
              out[#out + 1] = { type = ct, body = body }
            end
          end
          f:close()
          return out
        end,
        stop = function()
          proc.stop(pid)
          util.run("rm -rf '" .. dir .. "'")
        end }
    end
    proc.stop(pid)
    if attempt == 5 then
      error("nginx did not start: " .. util.run("tail -5 " .. dir .. "/error.log"))
    end
  end
end

return _M
