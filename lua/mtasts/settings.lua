--- mtasts.settings (internal): checking the values of constructors' options, the one way
-- every constructor reports a setting that cannot work (docs/errors.md, code `config`).
-- A value of the wrong type is misuse, and the constructor raises before it gets here; a value
-- of the right type that cannot work (a timeout of 0, a port over 65535, an empty path) fails
-- as nil, message, "config", option: the message starts with the option's name
-- ("timeouts.dns: 0 is not ..."), and the fourth value is that name, so that a program (the
-- CLI) can say which of its own flags it was.
local type, tostring, tonumber, error = type, tostring, tonumber, error

local _M = { MAX_SECONDS = 86400 }

--- A setting's value as messages show it: strings quoted, bytes outside printable ASCII as
-- \xNN, at most 100 bytes.
function _M.show(v)
  if type(v) ~= "string" then return tostring(v) end
  local s = v:sub(1, 100):gsub("[^\32-\126]", function(c) return ("\\x%02x"):format(c:byte()) end)
  return "'" .. s .. (#v > 100 and "...'" or "'")
end

--- The failure of option `key`: nil, "<key>: <reason>", "config", key.
function _M.fail(key, reason)
  return nil, key .. ": " .. reason, "config", key
end

--- The option `key` named in a failure of a constructor below (the C resolver and fetcher
-- start their messages with it): the fourth value of a config failure that has none.
function _M.key_of(msg)
  return type(msg) == "string" and msg:match("^([%w_%.]+):") or nil
end

--- A failure of a C constructor or check, passed on: a config failure gets its option's
-- name (from the message) as the fourth value, as the Lua checks give it.
function _M.failed(err, code)
  if code == "config" then return nil, err, code, _M.key_of(err) end
  return nil, err, code
end

--- A number of seconds (or nil): more than 0, at most a day. true, or a config failure.
function _M.seconds(key, v)
  if v == nil then return true end
  if v ~= v or v <= 0 or v > _M.MAX_SECONDS then
    return _M.fail(key, ("%s is not a number of seconds above 0 and at most %d"):format(
      tostring(v), _M.MAX_SECONDS))
  end
  return true
end

--- An integer of at least `min` (or nil). true, or a config failure.
function _M.integer(key, v, min)
  if v == nil then return true end
  if v ~= v or v % 1 ~= 0 or v < min then
    return _M.fail(key, ("%s is not an integer of at least %d"):format(tostring(v), min))
  end
  return true
end

--- A number of at least `min` (or nil). true, or a config failure.
function _M.at_least(key, v, min)
  if v == nil then return true end
  if v ~= v or v < min then
    return _M.fail(key, ("%s is not a number of at least %s"):format(tostring(v),
      tostring(min)))
  end
  return true
end

--- A string that must not be empty (or nil). true, or a config failure.
function _M.nonempty(key, v)
  if v == "" then return _M.fail(key, "must not be empty") end
  return true
end

--- A port: digits, 1-65535 (0 too when zero_ok). true, or a config failure naming `what`.
function _M.port(key, what, p, zero_ok)
  local n = type(p) == "string" and p:match("^%d+$") and tonumber(p) or nil
  if not n then return _M.fail(key, ("%s: port %s is not a number"):format(what, _M.show(p))) end
  if n > 65535 or (n == 0 and not zero_ok) then
    return _M.fail(key, ("%s: port %d is out of range (%d-65535)"):format(what, n,
      zero_ok and 0 or 1))
  end
  return true
end

--- The mode of the files of a cache and result store (the `mode` option of mtasts.open,
-- tlsrpt.open and mtasts.cache; docs/cache.md "Files"): an octal string, "0600" (this user
-- only) or "0660" (the directory's group shares them), or nil. true and the mode as a number
-- (nil for nil), or a config failure.
function _M.mode(key, v)
  if v == nil then return true end
  local n = v:match("^0?[0-7][0-7][0-7]$") and tonumber(v, 8)
  if not n then return _M.fail(key, _M.show(v) .. " is not an octal mode like 0660") end
  if n == 384 or n == 432 then return true, n end
  local why = n & 7 ~= 0 and "others may not use the cache (anyone could change its policies)"
    or n & 384 ~= 384 and "the owner must read and write its files"
    or n & 73 ~= 0 and "its files are not programs (no execute bits)"
    or "the group needs both read and write (Berkeley DB's readers write its shared regions)"
  return _M.fail(key, ("%s: %s; use 0660 (the directory's group shares the files) or 0600 " ..
    "(this user only)"):format(_M.show(v), why))
end

--- The timeouts option of mtasts.open and tlsrpt.open ({ dns =, fetch = }, numbers checked
-- by the caller): true, or a config failure naming timeouts.dns or timeouts.fetch.
function _M.timeouts(t)
  local ok, err, code, key = _M.seconds("timeouts.dns", t.dns)
  if not ok then return nil, err, code, key end
  return _M.seconds("timeouts.fetch", t.fetch)
end

--- Ctrl-C in the standalone interpreter (lua.c) raises "interrupted!" once, wherever the code
-- is: a pcall that turns errors into one domain's or destination's failure passes it on.
function _M.pass_interrupt(e)
  if type(e) == "string" and e:sub(-12) == "interrupted!" then error(e, 0) end
end

return _M
