--- mtasts.pending (internal): waiting for one request of a C object (resolver, fetcher) that
-- several coroutines may share. The object has fd(), timeout(), step() and done() (finished
-- requests, each with an `id`). Whichever waiter steps first collects everyone's results and
-- the descriptor goes quiet, so while more than one coroutine waits, each wait is capped at
-- SHARED_WAIT seconds: nobody sleeps until a timeout on a result already in (a lost wakeup).
local ipairs = ipairs

local _M = { SHARED_WAIT = 0.05 }

--- The waiting state of one object: wait(fd, events, timeout) is the host's.
function _M.new(wait)
  return { wait = wait, results = {}, waiters = 0 }
end

--- Step the object and keep every finished request by id. Returns true, or fail.
function _M.collect(st, obj)
  local ok, err, code = obj:step()
  if not ok then return nil, err, code end
  for _, r in ipairs(obj:done()) do st.results[r.id] = r end
  return true
end

--- Wait for the object's descriptor, at most `timeout` seconds (nil: the object's own).
function _M.sleep(st, obj, timeout)
  if timeout == nil then timeout = obj:timeout() end
  if st.waiters > 1 and (not timeout or timeout > _M.SHARED_WAIT) then
    timeout = _M.SHARED_WAIT
  end
  st.wait(obj:fd(), "r", timeout)
end

--- Claim the result of request `id` if it is in.
function _M.take(st, id)
  local r = st.results[id]
  if r then st.results[id] = nil end
  return r
end

--- Run `body(st)` counted as one waiter (body returns what the caller returns).
function _M.waiting(st, body)
  st.waiters = st.waiters + 1
  local a, b, c, d = body(st)
  st.waiters = st.waiters - 1
  return a, b, c, d
end

--- Wait for request `id` to finish; returns its result table, or fail.
function _M.await(st, obj, id)
  return _M.waiting(st, function()
    while true do
      local ok, err, code = _M.collect(st, obj)
      if not ok then return nil, err, code end
      local r = _M.take(st, id)
      if r then return r end
      _M.sleep(st, obj)
    end
  end)
end

return _M
