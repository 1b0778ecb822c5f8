--- mtasts.fleet: many mail hosts sharing one Redis (docs/fleet.md). Two tiers:
-- - policies: a policy one host fetched is written to Redis, and another host that misses
--   it in its local cache reads it from there before fetching; a value read from Redis is
--   checked like a fetched policy, never older than what the host has;
-- - TLSRPT: each host ships its result counters (its local store's totals per day, an
--   idempotent overwrite: a retry never counts twice), and one host, elected by a lock
--   with an expiry, builds every domain's daily report from the fleet's totals.
-- Redis is never in the way of a delivery: lookups answered from the local cache and
-- results recorded locally never touch it, and every failure of Redis means "go on alone".
--
-- Keys (PREFIX is "mtasts:" unless told):
--   PREFIX policy:DOMAIN         hash v, id, fetched, text (expires with the policy)
--   PREFIX fetching:DOMAIN       a host's lease on fetching DOMAIN (seconds)
--   PREFIX hosts                 hash host -> last time it shipped
--   PREFIX days                  set of days with shipped counters
--   PREFIX rpt:DAY:hosts         set of hosts that shipped for DAY
--   PREFIX rpt:DAY:final         set of hosts that shipped DAY after it ended
--   PREFIX rpt:DAY:h:HOST        hash counter key -> 16 bytes (two big-endian u64): HOST's
--                                totals, as its local store holds them
--   PREFIX rpt:DAY:sender        the host that sends DAY's reports (a lock with an expiry)
--   PREFIX rpt:DAY:sent          hash report -> time it was sent or dropped, by any host
--   PREFIX rpt:DAY:done          present once every report of DAY is done
local core = require("mtasts.core")
local tlsrpt = require("mtasts.tlsrpt.format")

local type, pairs, ipairs, tostring, tonumber, error, setmetatable = type, pairs, ipairs,
  tostring, tonumber, error, setmetatable
local sort, sunpack = table.sort, string.unpack

local _M = { PREFIX = "mtasts:", SHIP_WINDOW = 7200, LEASE = 10, LEASE_WAIT = 3,
  SENDER_LEASE = 3 * 3600, HOST_ALIVE = 2 * 86400, KEEP_DAYS = 12, CHUNK = 500,
  MAX_TEXT = 65536, MAX_FIELD = 4096, FORMAT = "1" }
local Fleet = {}
local fleet_mt = { __index = Fleet, __name = "mtasts.fleet" }

-- Options of the fleet itself; the rest of a `redis` table goes to mtasts.redis.new.
local OWN = { prefix = true, host = true, ship_window = true }

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname", "r")
  local h = f and f:read("l")
  if f then f:close() end
  return h and h ~= "" and h or "localhost"
end

--- Make a fleet from the `redis` option of mtasts.open or tlsrpt.open: a URL, or a table
-- { url | sentinels + master, ..., prefix =, host =, ship_window = } (docs/fleet.md).
-- opts: wait, log, clock, registry (metric families are added to it). Returns the fleet, or
-- nil, message, "config", key for a bad setting; misuse raises.
function _M.new(spec, opts)
  opts = opts or {}
  if type(spec) == "string" then spec = { url = spec } end
  if type(spec) ~= "table" then
    error("bad argument #1 to 'fleet.new' (a URL or a table expected, got " .. type(spec) ..
      ")", 2)
  end
  local ropts = {}
  for k, v in pairs(spec) do
    if not OWN[k] then ropts[k] = v end
  end
  local prefix = spec.prefix or _M.PREFIX
  if type(prefix) ~= "string" or #prefix > 64 or prefix:find("[%s%c]") then
    return nil, "redis.prefix: at most 64 characters without spaces expected", "config",
      "redis.prefix"
  end
  local host = spec.host or hostname()
  if type(host) ~= "string" or not host:match("^[%w][%w%.%-_]*$") or #host > 253 then
    return nil, "redis.host: a host name (letters, digits, '.', '-', '_') expected, got " ..
      tostring(host), "config", "redis.host"
  end
  local window = spec.ship_window or _M.SHIP_WINDOW
  if type(window) ~= "number" or window ~= window or window < 0 or window > 7 * 86400 then
    return nil, "redis.ship_window: seconds from 0 to 604800 expected", "config",
      "redis.ship_window"
  end
  if ropts.sentinel_password_file ~= nil then
    -- read here: mtasts.redis takes the Sentinels' password itself
    local path = ropts.sentinel_password_file
    ropts.sentinel_password_file = nil
    local f = type(path) == "string" and io.open(path, "rb")
    local pw = f and f:read("l")
    if f then f:close() end
    if not pw or pw == "" then
      return nil, "redis.sentinel_password_file: cannot read a password from " ..
        tostring(path), "config", "redis.sentinel_password_file"
    end
    ropts.sentinel_password = pw
  end
  ropts.wait = ropts.wait or opts.wait
  ropts.log = ropts.log or opts.log
  local redis = opts.redis_module or require("mtasts.redis")
  local r, err, code, key = redis.new(ropts)
  if not r then
    if key and not key:match("^redis") then
      -- the setting as the configuration file names it
      if type(err) == "string" and err:sub(1, #key + 1) == key .. ":" then
        err = "redis." .. err
      end
      key = "redis." .. key
    end
    return nil, err, code, key
  end
  local self = setmetatable({ r = r, prefix = prefix, host = host, ship_window = window,
    log = opts.log or function() end, clock = opts.clock or os.time, wait = opts.wait,
    warned = {} }, fleet_mt)
  local reg = opts.registry
  if reg then
    self.m_policy = reg:counter("mtasts_fleet_policy_reads_total",
      "Policies looked for in Redis by outcome: hit, miss, stale (another record id, older " ..
      "than this host's, expired), rejected (not a valid value), error (Redis failed).",
      { "outcome" }, { series = { { "hit" }, { "miss" }, { "stale" }, { "rejected" },
        { "error" } } })
    self.m_put = reg:counter("mtasts_fleet_policy_writes_total",
      "Fetched policies written to Redis by outcome: stored, kept (Redis had a newer " ..
      "one), error.", { "outcome" }, { series = { { "stored" }, { "kept" }, { "error" } } })
  end
  return self
end

local function count(m, label)
  if m then m:labels(label):inc() end
end

-- Log a kind of trouble at most once a minute.
function Fleet:_warn(kind, msg)
  local now = self.clock()
  if (self.warned[kind] or -math.huge) + 60 <= now then
    self.warned[kind] = now
    self.log("warning", msg)
  end
end

function Fleet:close()
  if self.r then self.r:close() end
  self.r = nil
end

-- --- the policy tier ---

-- Writes a policy unless Redis has a valid one fetched at the same time or later, and sets
-- its expiry: one step on the server, so two hosts writing at once leave the newer. A value
-- of another format or from the future (a poisoned one) is replaced.
local PUT = [[
if redis.call('TYPE', KEYS[1]).ok == 'hash' and
    redis.call('HGET', KEYS[1], 'v') == ARGV[5] then
  local f = tonumber(redis.call('HGET', KEYS[1], 'fetched'))
  if f and f >= tonumber(ARGV[2]) and f <= tonumber(ARGV[2]) + 300 then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[5], 'id', ARGV[1], 'fetched', ARGV[2], 'text', ARGV[3])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
return 1
]]

local function int_of(s)
  if type(s) ~= "string" or not s:match("^%d+$") or #s > 15 then return nil end
  return math.tointeger(tonumber(s))
end

--- The policy of `ascii` as Redis has it, if it is usable here: for `record_id`, fetched at
-- `since` or later (the time of what this host has; nil: nothing), not expired at `now`.
-- Returns policy, text, fetched; or nil, why ("miss", "stale", "rejected", "error").
function Fleet:policy(ascii, record_id, since, now)
  local key = self.prefix .. "policy:" .. ascii
  local v, err, code = self.r:call("HMGET", key, "v", "id", "fetched", "text")
  if not v and code == "redis-error" then    -- not a hash (WRONGTYPE): not ours
    count(self.m_policy, "rejected")
    self:_warn("rejected:" .. ascii, "redis: " .. key .. " is rejected (" .. tostring(err) ..
      "); fetching the policy of " .. ascii .. " here")
    return nil, "rejected"
  end
  if not v then
    count(self.m_policy, "error")
    self:_warn("read", "redis: policy of " .. ascii .. ": " .. tostring(err) ..
      "; fetching it here")
    return nil, "error"
  end
  if type(v) ~= "table" or (v[1] == false and v[2] == false and v[3] == false and
      v[4] == false) then
    count(self.m_policy, "miss")
    return nil, "miss"
  end
  local why
  local fetched = int_of(v[3])
  if v[1] ~= _M.FORMAT then why = "an unknown format"
  elseif type(v[2]) ~= "string" or not v[2]:match("^%w+$") or #v[2] > 32 then
    why = "a bad record id"
  elseif not fetched then why = "a bad fetch time"
  elseif fetched > now + 300 then why = "a fetch time in the future"
  elseif type(v[4]) ~= "string" or #v[4] > _M.MAX_TEXT then why = "no policy text"
  end
  local policy
  if not why then
    local perr
    policy, perr = core.parse_policy(v[4])
    if not policy then why = "a policy that does not parse: " .. tostring(perr) end
  end
  if why then
    count(self.m_policy, "rejected")
    self:_warn("rejected:" .. ascii, "redis: the policy of " .. ascii .. " in " .. key ..
      " is rejected (" .. why .. "); fetching it here")
    return nil, "rejected"
  end
  if v[2] ~= record_id or (since and fetched < since) or fetched + policy.max_age <= now then
    count(self.m_policy, "stale")
    return nil, "stale"
  end
  count(self.m_policy, "hit")
  return policy, v[4], fetched
end

--- Write a policy this host fetched at `fetched`. Returns true (stored), false (Redis has one
-- as new), or nil, message, code; a failure is logged and harmless.
function Fleet:put(ascii, record_id, text, fetched, max_age)
  local key = self.prefix .. "policy:" .. ascii
  local r, err, code = self.r:eval(PUT, { key }, { record_id, fetched, text,
    fetched + max_age, _M.FORMAT })
  if r == nil then
    count(self.m_put, "error")
    self:_warn("write", "redis: storing the policy of " .. ascii .. ": " .. tostring(err))
    return nil, err, code
  end
  count(self.m_put, r == 1 and "stored" or "kept")
  return r == 1
end

--- Take the lease on fetching `ascii` for `seconds`. Returns true (ours), false (another
-- host holds it), or nil when Redis failed (fetch anyway).
function Fleet:lease(ascii, seconds)
  local r = self.r:call("SET", self.prefix .. "fetching:" .. ascii, self.host, "NX", "EX",
    seconds or _M.LEASE)
  if r == nil then return nil end
  return r ~= false
end

function Fleet:release(ascii)
  self.r:eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', " ..
    "KEYS[1]) end return 0", { self.prefix .. "fetching:" .. ascii }, { self.host })
end

-- --- TLSRPT: shipping ---

-- The last second of a UTC day "YYYY-MM-DD", or nil when it is not one (a day read from
-- Redis is checked so).
local function day_end(day)
  local t = tlsrpt.day_start(day)
  return t and t + 86399
end

-- A counter key as a fleet member may ship it: kind, a domain, the recipient domain, a flag
-- and a type, within bounds (what store.lua writes and reads back).
local function field_ok(f, v)
  return #f <= _M.MAX_FIELD and #v == 16 and
    f:match("^[dh][%w%.%-_]+%z[^%z]*%z[012][SDP]") ~= nil
end

--- Ship `store`'s counters of every day it holds that the fleet has not finished: each
-- day's totals overwrite what this host shipped before (a retry or a repeat counts once),
-- and a day that has ended is marked final for this host. Returns { days =, keys = } or
-- nil, message, code (Redis failed: nothing is lost, the next run ships it all again).
function Fleet:ship(store)
  local now = self.clock()
  local p, host = self.prefix, self.host
  local days, err, code = store:days()
  if not days then return nil, err, code end
  local fleet_days
  fleet_days, err, code = self.r:call("SMEMBERS", p .. "days")
  if not fleet_days then return nil, err, code end
  local all, seen = {}, {}
  for _, d in ipairs(days) do
    if not seen[d] then seen[d], all[#all + 1] = true, d end
  end
  for _, d in ipairs(fleet_days) do
    if day_end(d) and not seen[d] then
      seen[d], all[#all + 1] = true, d
    end
  end
  sort(all)
  local summary = { days = 0, keys = 0 }
  local keep = _M.KEEP_DAYS * 86400
  for _, d in ipairs(all) do
    local finish = day_end(d)
    local base = p .. "rpt:" .. d .. ":"
    local done
    done, err, code = self.r:call("EXISTS", base .. "done")
    if done == nil then return nil, err, code end
    if done == 0 and now <= finish + keep then
      local recs
      recs, err, code = store:counters(d)
      if not recs then return nil, err, code end
      local hkey = base .. "h:" .. host
      local cmds = { { "DEL", hkey } }
      local cmd = nil
      for i = 1, #recs, 2 do
        if not cmd or #cmd >= 2 + 2 * _M.CHUNK then
          cmd = { "HSET", hkey }
          cmds[#cmds + 1] = cmd
        end
        cmd[#cmd + 1] = recs[i]
        cmd[#cmd + 1] = recs[i + 1]
      end
      -- one MULTI: the day's hash is replaced whole, never seen half written
      local tx = { { "MULTI" } }
      for _, c in ipairs(cmds) do tx[#tx + 1] = c end
      local expire_at = finish + keep
      tx[#tx + 1] = { "EXPIREAT", hkey, expire_at }
      tx[#tx + 1] = { "SADD", base .. "hosts", host }
      tx[#tx + 1] = { "EXPIREAT", base .. "hosts", expire_at }
      tx[#tx + 1] = { "SADD", p .. "days", d }
      if now > finish then
        tx[#tx + 1] = { "SADD", base .. "final", host }
        tx[#tx + 1] = { "EXPIREAT", base .. "final", expire_at }
      end
      tx[#tx + 1] = { "HSET", p .. "hosts", host, now }
      tx[#tx + 1] = { "EXEC" }
      local out
      out, err, code = self.r:pipeline(tx)
      if not out then return nil, err, code end
      local exec = out[#out]
      if type(exec) ~= "table" or exec.err then
        return nil, "redis: shipping " .. d .. ": " .. tostring(type(exec) == "table" and
          exec.err or exec), "redis-error"
      end
      summary.days, summary.keys = summary.days + 1, summary.keys + #recs // 2
    end
  end
  -- days whose keys all expired leave the set
  for _, d in ipairs(fleet_days) do
    if not day_end(d) or now > day_end(d) + keep then
      self.r:call("SREM", p .. "days", d)
    end
  end
  return summary
end

-- --- TLSRPT: the fleet's reports ---

--- The fleet's totals of `day`: { key, a, b, ... } for store:replace_day (keys as the store
-- writes them), the hosts that shipped, those that shipped it final; or nil, message, code.
function Fleet:totals(day)
  local base = self.prefix .. "rpt:" .. day .. ":"
  local hosts, err, code = self.r:call("SMEMBERS", base .. "hosts")
  if not hosts then return nil, err, code end
  local final
  final, err, code = self.r:call("SMEMBERS", base .. "final")
  if not final then return nil, err, code end
  local sums, order, bad = {}, {}, 0
  for _, h in ipairs(hosts) do
    local kv
    kv, err, code = self.r:call("HGETALL", base .. "h:" .. tostring(h))
    if not kv then return nil, err, code end
    if type(kv) ~= "table" then kv = {} end
    for i = 1, #kv - 1, 2 do
      local f, v = kv[i], kv[i + 1]
      if type(f) == "string" and type(v) == "string" and field_ok(f, v) then
        local a, b = sunpack(">I8I8", v)
        local s = sums[f]
        if not s then
          s = { 0, 0 }
          sums[f], order[#order + 1] = s, f
        end
        -- saturating, as the store's own counters
        s[1] = (a < 0 or s[1] + a < s[1]) and math.maxinteger or s[1] + a
        s[2] = (b < 0 or s[2] + b < s[2]) and math.maxinteger or s[2] + b
      else
        bad = bad + 1
      end
    end
  end
  if bad > 0 then
    self.log("warning", ("redis: %d counter(s) of %s are not valid and are left out"):format(
      bad, day))
  end
  sort(order)
  local flat = {}
  for _, f in ipairs(order) do
    flat[#flat + 1] = "R" .. day .. "\0" .. f
    flat[#flat + 1] = sums[f][1]
    flat[#flat + 1] = sums[f][2]
  end
  return flat, hosts, final
end

-- The hosts the fleet expects a final shipment of `day` from: those that shipped for it and
-- those alive since (shipped anything after the day began).
function Fleet:_expected(day, hosts)
  local set = {}
  for _, h in ipairs(hosts) do set[h] = true end
  local seen = self.r:call("HGETALL", self.prefix .. "hosts")
  if type(seen) == "table" then
    local since = day_end(day) - 86399
    for i = 1, #seen - 1, 2 do
      local t = int_of(seen[i + 1])
      if type(seen[i]) == "string" and t and t >= since and
          t >= self.clock() - _M.HOST_ALIVE then
        set[seen[i]] = true
      end
    end
  end
  return set
end

--- Become (or stay) the sender of `day`'s reports. Returns true, or false and the host that
-- is, or nil, message, code.
function Fleet:elect(day)
  local key = self.prefix .. "rpt:" .. day .. ":sender"
  local r, err, code = self.r:eval([[
local h = redis.call('GET', KEYS[1])
if h and h ~= ARGV[1] then return h end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1]], { key }, { self.host, _M.SENDER_LEASE })
  if r == nil then return nil, err, code end
  if r == 1 then return true end
  return false, r
end

--- The report keys of `day` sent or dropped by any host (a set), or nil, message, code.
function Fleet:sent(day)
  local kv, err, code = self.r:call("HKEYS", self.prefix .. "rpt:" .. day .. ":sent")
  if not kv then return nil, err, code end
  local set = {}
  for _, k in ipairs(kv) do set[k] = true end
  return set
end

function Fleet:mark_sent(day, report_key)
  local key = self.prefix .. "rpt:" .. day .. ":sent"
  return self.r:pipeline({ { "HSET", key, report_key, self.clock() },
    { "EXPIREAT", key, day_end(day) + _M.KEEP_DAYS * 86400 } })
end

function Fleet:mark_done(day)
  local key = self.prefix .. "rpt:" .. day .. ":done"
  return self.r:call("SET", key, self.host, "EXAT", day_end(day) + _M.KEEP_DAYS * 86400)
end

--- Whether `day`'s reports may be built now: every expected host shipped it final, or the
-- shipping window is over (then the missing hosts are named). Returns ready, missing (an
-- array of hosts), or nil, message, code.
function Fleet:ready(day, hosts, final)
  local expected = self:_expected(day, hosts)
  local have = {}
  for _, h in ipairs(final) do have[h] = true end
  local missing = {}
  for h in pairs(expected) do
    if not have[h] then missing[#missing + 1] = h end
  end
  sort(missing)
  if #missing == 0 then return true, missing end
  return self.clock() > day_end(day) + self.ship_window, missing
end

--- What the fleet's Redis side holds for `day` (`mtasts report stats`): { hosts = {...},
-- final = {...}, sender = host | nil, sent = n, done = true | false }, or nil, message, code.
function Fleet:day_state(day)
  local base = self.prefix .. "rpt:" .. day .. ":"
  local out, err, code = self.r:pipeline({ { "SMEMBERS", base .. "hosts" },
    { "SMEMBERS", base .. "final" }, { "GET", base .. "sender" }, { "HLEN", base .. "sent" },
    { "EXISTS", base .. "done" } })
  if not out then return nil, err, code end
  local function list(v)
    local t = {}
    if type(v) == "table" and not v.err then
      for _, h in ipairs(v) do t[#t + 1] = h end
    end
    sort(t)
    return t
  end
  return { hosts = list(out[1]), final = list(out[2]),
    sender = type(out[3]) == "string" and out[3] or nil,
    sent = math.type(out[4]) == "integer" and out[4] or 0, done = out[5] == 1 }
end

local SUMS = { "sent", "failed", "retry", "dropped", "waiting", "done" }

--- `mtasts report send` in a fleet: ship this host's counters, then, for every ended day
-- (or `day`) this host is elected for, build the fleet's reports in `fleet_store` (a result
-- store of its own, docs/fleet.md) and send them. Returns the summary of store:send plus
-- shipped = { days =, keys = }, elsewhere (days another host sends), held (days waiting
-- for the shipping window); or nil, message, code when Redis or a store failed.
function Fleet:send(local_store, fleet_store, day)
  local shipped, err, code = self:ship(local_store)
  if not shipped then return nil, "redis: shipping results: " .. tostring(err), code end
  local days
  if day then
    days = { day }
  else
    days, err, code = self.r:call("SMEMBERS", self.prefix .. "days")
    if not days then return nil, err, code end
    sort(days)
  end
  local summary = { shipped = shipped, elsewhere = 0, held = 0, failures = {} }
  for _, k in ipairs(SUMS) do summary[k] = 0 end
  local now = self.clock()
  for _, d in ipairs(days) do
    local done = 1    -- 1: every report of the day went out, or the day has not ended
    if day_end(d) and now > day_end(d) then
      done, err, code = self.r:call("EXISTS", self.prefix .. "rpt:" .. d .. ":done")
      if done == nil then return nil, err, code end
    end
    if done == 0 then
      local mine, other, ecode = self:elect(d)
      if mine == nil then return nil, other, ecode end
      if not mine then
        summary.elsewhere = summary.elsewhere + 1
        self.log("info", ("report %s: host %s sends the fleet's reports"):format(d,
          tostring(other)))
      else
        local flat, hosts, final = self:totals(d)
        if not flat then return nil, hosts, final end
        local ready, missing = self:ready(d, hosts, final)
        if not ready then
          summary.held = summary.held + 1
          self.log("info", ("report %s: waiting for host(s) %s to ship their results (at " ..
            "most until %s)"):format(d, table.concat(missing, ", "),
            os.date("!%Y-%m-%dT%H:%M:%SZ", day_end(d) + self.ship_window)))
        else
          if #missing > 0 then
            self.log("warning", ("report %s: the shipping window (%d s) is over; the " ..
              "fleet's reports go out without host(s) %s"):format(d, self.ship_window,
              table.concat(missing, ", ")))
          end
          local ok
          ok, err, code = fleet_store:replace_day(d, flat)
          if not ok then return nil, err, code end
          local sent
          sent, err, code = self:sent(d)
          if not sent then return nil, err, code end
          fleet_store.shared = { is_sent = function(rkey) return sent[rkey] end,
            mark = function(rkey)
              sent[rkey] = true
              local m, merr = self:mark_sent(d, rkey)
              if not m then
                self:_warn("mark", "redis: recording report " .. d .. " " .. rkey ..
                  " as sent: " .. tostring(merr))
              end
            end }
          local s
          s, err, code = fleet_store:send(d)
          fleet_store.shared = nil
          if not s then return nil, err, code end
          for _, k in ipairs(SUMS) do summary[k] = summary[k] + s[k] end
          for _, f in ipairs(s.failures) do summary.failures[#summary.failures + 1] = f end
          if s.retry == 0 and s.waiting == 0 then self:mark_done(d) end
        end
      end
    end
  end
  return summary
end


return _M
