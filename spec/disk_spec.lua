-- A hostile disk: a read-only directory for the cache and the result store, database files
-- truncated or overwritten with garbage, writes that reached only the log before the writer
-- was killed. Each gives a clear error (nil, message, code), never a crash, and
-- `mtasts cache rebuild` brings back every row and result record that can still be read.
-- (A full disk is in cache_spec and tlsrpt_spec; kill -9 loops in *_processes_spec.)
local core = require("mtasts.core")
local tlsrpt = require("mtasts.tlsrpt")
local util = require("support.util")

local POLICY = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n"
local NOW = 1800000000
local DAY = tlsrpt.day_of(NOW)
local N = 300

describe("a hostile disk", function()
  local dir, cleanup

  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function() cleanup() end)

  -- a cache directory with N policies and N recipient domains' results, closed cleanly
  local function fill(path)
    local c = assert(core.cache_open(path))
    for i = 1, N do assert(c:upsert(("d%d.example"):format(i), "id" .. i, POLICY, NOW)) end
    assert(c:close())
    local store = assert(tlsrpt.open{ path = path, clock = function() return NOW end })
    for i = 1, N do
      local r = tlsrpt.sts_result(("d%d.example"):format(i), POLICY,
        { mx = { "mx.example.com" } })
      r.summary.success = i
      assert(store:add(r))
    end
    assert(store:close())
  end

  -- what can be read back: policies found, result domains of the day
  local function readable(path)
    local c = assert(core.cache_open(path))
    local found, err = 0, nil
    for i = 1, N do
      local row, msg, code = c:lookup(("d%d.example"):format(i), NOW)
      if row then
        found = found + 1
        assert.equal("id" .. i, row.record_id)
      elseif code then err = { msg, code } end
    end
    c:close()
    local store = assert(tlsrpt.open{ path = path, clock = function() return NOW end })
    local domains, msg, code = store:domains(DAY)
    local ok = true
    for _, d in ipairs(domains or {}) do
      local i = math.tointeger(tonumber(d.domain:match("^d(%d+)%.example$")))
      local rep = store:report(d.domain, DAY)
      ok = ok and rep.policies[1].summary["total-successful-session-count"] == i
    end
    store:close()
    return found, domains and #domains, err, { msg, code }, ok
  end

  local function rebuild(path)
    local r, msg, code = core.cache_rebuild(path)
    assert.is_table(r, tostring(msg) .. " " .. tostring(code))
    return r
  end

  describe("a read-only directory (a read-only bind mount in a private namespace)", function()
    it("every opener says EROFS and what to do; nothing is created", function()
      fill(dir .. "/cache")
      util.write(dir .. "/ro.lua", [[
        local core = require("mtasts.core")
        local tlsrpt = require("mtasts.tlsrpt")
        local mtasts = require("mtasts")
        local dir = arg[1]
        local function show(what, ok, msg, code)
          io.write(what, "|", tostring(ok ~= nil), "|", tostring(code), "|", tostring(msg), "\n")
        end
        show("cache", core.cache_open(dir .. "/cache"))
        show("new", core.cache_open(dir .. "/new"))
        show("mtasts", mtasts.open{ path = dir .. "/cache" })
        show("store", tlsrpt.open{ path = dir .. "/cache" })
        show("rebuild", core.cache_rebuild(dir .. "/cache"))
      ]])
      util.write(dir .. "/ro.sh", "mount --bind " .. dir .. " " .. dir .. " && " ..
        "mount -o remount,ro,bind " .. dir .. " && " .. util.lua_cmd() .. " " .. dir ..
        "/ro.lua " .. dir .. "\n")
      local out, status = util.run("unshare -m sh " .. dir .. "/ro.sh")
      assert.equal(0, status, out)
      local seen = 0
      for what, ok, code, msg in out:gmatch("(%w+)|(%w+)|(%w+)|([^\n]*)") do
        seen = seen + 1
        assert.equal("false", ok, what .. ": " .. msg)
        assert.equal("erofs", code, what .. ": " .. msg)
        assert.matches("Read-only file system", msg, 1, true)
        if what == "cache" or what == "mtasts" or what == "store" then
          assert.matches("must be writable", msg, 1, true)
        end
      end
      assert.equal(5, seen, out)
      -- and the cache works where it is writable again
      local found, days = readable(dir .. "/cache")
      assert.equal(N, found)
      assert.equal(N, days)
    end)
  end)

  describe("a truncated file, after a reboot (the shared regions are gone)", function()
    it("policies.db: clear errors with the rebuild hint; rebuild keeps every result", function()
      local path = dir .. "/cache"
      fill(path)
      util.run("truncate -s 16384 " .. path .. "/policies.db; rm -f " .. path .. "/__db.0*")
      local c = assert(core.cache_open(path))
      local ok, msg, code = c:upsert("new.example", "n", POLICY, NOW)
      local _, vmsg, vcode = c:verify()
      c:close()
      assert.is_nil(ok)
      assert.equal("db-page-notfound", code, msg)
      assert.matches("mtasts cache rebuild", msg, 1, true)
      assert.equal("db-verify-bad", vcode, vmsg)
      local found, _, err = readable(path)
      assert.is_true(found < N)
      assert.equal("db-page-notfound", err[2])
      local r = rebuild(path)
      assert.is_true(r.salvaged > 0 and r.salvaged < N, "salvaged " .. r.salvaged)
      assert.equal(N, r.results)
      local found2, days, err2, _, counts = readable(path)
      assert.equal(r.salvaged, found2)
      assert.is_nil(err2)
      assert.equal(N, days)
      assert.is_true(counts)
    end)

    it("results.db: clear errors, policies unharmed; rebuild keeps the readable results",
      function()
      local path = dir .. "/cache"
      fill(path)
      util.run("truncate -s 16384 " .. path .. "/results.db; rm -f " .. path .. "/__db.0*")
      local found, days, _, serr = readable(path)
      assert.equal(N, found)
      assert.is_nil(days)
      assert.equal("db-page-notfound", serr[2], serr[1])
      assert.matches("mtasts cache rebuild", serr[1], 1, true)
      local r = rebuild(path)
      assert.equal(N, r.salvaged)
      -- what the truncation cut off comes back from the log, where it still is
      assert.is_true(r.results > 0 and r.results <= N, "results " .. r.results)
      local found2, days2, _, serr2, counts = readable(path)
      assert.equal(N, found2)
      assert.equal(r.results, days2, serr2[1])
      assert.is_true(counts)
    end)
  end)

  it("policies.db overwritten with garbage: rebuild keeps every result record", function()
    local path = dir .. "/cache"
    fill(path)
    util.seed()
    util.write(path .. "/policies.db", util.random_bytes(65536))
    util.run("rm -f " .. path .. "/__db.0*")
    local r = rebuild(path)
    assert.equal(0, r.salvaged)
    assert.equal(N, r.results)
    local found, days, _, _, counts = readable(path)
    assert.equal(0, found)
    assert.equal(N, days)
    assert.is_true(counts)
  end)

  it("writes a killed process committed that reached only the log are kept by rebuild",
    function()
    local path = dir .. "/cache"
    fill(path)
    -- the file as it was before the late writes stands for pages that never left the shared
    -- cache: the writer copies it after its first write (which may checkpoint), then writes
    -- three rows and is killed
    util.write(dir .. "/writer.lua", [[
      local core = require("mtasts.core")
      local c = assert(core.cache_open(arg[1]))
      assert(c:upsert("first.example", "first", arg[2], 1800000000))
      os.execute("cp " .. arg[1] .. "/policies.db " .. arg[1] .. "/../before.db")
      for i = 1, 3 do assert(c:upsert(("late%d.example"):format(i), "late", arg[2], 1800000000)) end
      io.stdout:write("written\n")
      io.stdout:flush()
      os.execute("kill -9 " .. io.open("/proc/self/stat"):read("l"):match("^(%d+)"))   -- itself
    ]])
    local out, status = util.run(util.lua_cmd() .. " " .. dir .. "/writer.lua " .. path .. " '" ..
      POLICY .. "'")
    assert.matches("written", out, 1, true)
    assert.equal(128 + 9, status, "the writer was not killed: " .. out)
    util.run("cp " .. dir .. "/before.db " .. path .. "/policies.db; rm -f " .. path ..
      "/__db.0*")
    local r = rebuild(path)
    assert.is_true(r.salvaged >= N + 3, "salvaged " .. r.salvaged)
    local c = assert(core.cache_open(path))
    for i = 1, 3 do
      assert.equal("late", c:lookup(("late%d.example"):format(i), NOW).record_id)
    end
    c:close()
  end)

  it("two rebuilds within one second keep both old copies", function()
    local path = dir .. "/cache"
    fill(path)
    local a = rebuild(path)
    local b = rebuild(path)
    assert.are_not.equal(a.moved_to, b.moved_to)
    assert.same({ N, N, 0, N, N, 0 }, { a.salvaged, a.results, a.stopped, b.salvaged,
      b.results, b.stopped })
    assert.is_true(util.run("ls " .. a.moved_to .. "/policies.db " .. b.moved_to ..
      "/policies.db"):find("No such") == nil)
    util.run("rm -rf " .. path .. ".broken-*")
  end)
end)

describe("a state directory others could write", function()
  local dir, cleanup
  before_each(function()
    dir, cleanup = util.tmpdir()
    util.run("chmod 755 " .. dir)
    util.write(dir .. "/target", "precious\n")
  end)
  after_each(function() cleanup() end)

  local function target()
    local f = assert(io.open(dir .. "/target"))
    local t = f:read("a")
    f:close()
    return t
  end

  it("refuses an mtasts.gate that is a symbolic link, and leaves its target alone", function()
    util.run("mkdir -m 700 " .. dir .. "/db && ln -s " .. dir .. "/target " .. dir ..
      "/db/mtasts.gate")
    for _, open in ipairs({ core.cache_open, core.results_open }) do
      local c, msg, code = open(dir .. "/db")
      assert.is_nil(c)
      assert.equal("eloop", code, msg)
      assert.matches("symbolic link", msg, 1, true)
    end
    local r, msg, code = core.cache_rebuild(dir .. "/db")
    assert.is_nil(r)
    assert.equal("eloop", code, msg)
    assert.equal("precious\n", target())
  end)

  it("refuses a directory that belongs to another user, as the CLI run as root would", function()
    -- the audit's attack: nobody owns the directory and plants the gate as a link
    util.run("mkdir -m 700 " .. dir .. "/db && ln -s " .. dir .. "/target " .. dir ..
      "/db/mtasts.gate && chown -h -R 65534:65534 " .. dir .. "/db")
    local c, msg, code = core.cache_open(dir .. "/db")
    assert.is_nil(c)
    assert.equal("eperm", code)
    assert.matches("belongs to nobody (uid 65534), not to this user", msg, 1, true)
    assert.matches("run mtasts as nobody", msg, 1, true)
    local out, status = util.run(util.lua_cmd() .. " bin/mtasts --db " .. dir ..
      "/db cache list")
    assert.equal(3, status, out)
    assert.matches("belongs to nobody", out, 1, true)
    assert.equal("precious\n", target())
  end)

  it("refuses a directory others can write", function()
    for _, mode in ipairs({ "0777", "1777", "2777" }) do
      local path = dir .. "/db" .. mode
      util.run("mkdir " .. path .. " && chmod " .. mode .. " " .. path)
      local c, msg, code = core.cache_open(path)
      assert.is_nil(c, mode)
      assert.equal("eperm", code, mode)
      assert.matches("writable by others", msg, 1, true)
      assert.matches("chmod o-w", msg, 1, true)
      local store, smsg = tlsrpt.open{ path = path }
      assert.is_nil(store, mode)
      assert.matches("writable by others", smsg, 1, true)
    end
  end)

  local as_root = util.run("id -u"):match("^0%s") ~= nil
  it("opens a directory its group can write when this process is in that group, unless root",
    function()
      local path = dir .. "/shared"
      util.run("mkdir " .. path .. " && chmod 2770 " .. path)   -- the group is this process's
      local c, msg, code = core.cache_open(path)
      if as_root then
        -- root would trust every member of the group with its writes
        assert.is_nil(c)
        assert.equal("eperm", code)
        assert.matches("root does not trust a group's members", msg, 1, true)
        assert.matches("sudo -u mtasts", msg, 1, true)
        assert.equal("", util.run("ls -A " .. path))   -- nothing made in it
      else
        assert(c:close())
      end
    end)

  -- only root can give a directory to a group it is not in
  local it_root = as_root and it or pending
  it_root("refuses a directory writable by a group this process is not in, whoever owns it",
    function()
      for _, owner in ipairs({ "0", "61001" }) do
        local path = dir .. "/group" .. owner
        util.run("mkdir " .. path .. " && chown " .. owner .. ":61000 " .. path ..
          " && chmod 2770 " .. path)
        local c, msg, code = core.cache_open(path)
        assert.is_nil(c, owner)
        assert.equal("eperm", code, owner)
        assert.matches("writable by its group", msg, 1, true)
        assert.matches("(gid 61000), which this process is not a member of", msg, 1, true)
        assert.matches("chmod g-w", msg, 1, true)
        assert.equal("", util.run("ls -A " .. path), owner)   -- nothing made in it
      end
    end)

  -- A POSIX ACL that names a writer hides behind the group bits, which are then its mask:
  -- setfacl -m u:nobody:rwx on a directory of root, mode 0700, makes stat show 0770.
  local has_setfacl = util.run("command -v setfacl"):match("setfacl") ~= nil
  local it_acl = (as_root and has_setfacl) and it or pending
  it_acl("refuses a directory an ACL lets another user or group write, and follows no link "
    .. "planted there", function()
    for _, acl in ipairs({ "-m u:65534:rwx", "-m g:65534:rwx", "-d -m u:65534:rw" }) do
      local path = dir .. "/acl" .. acl:gsub("[^%w]", "")
      util.run("mkdir -m 0700 " .. path .. " && setfacl " .. acl .. " " .. path ..
        " && ln -s " .. dir .. "/target " .. path .. "/log.0000000001")
      for _, open in ipairs({ core.cache_open, core.results_open }) do
        local c, msg, code = open(path)
        assert.is_nil(c, acl)
        assert.equal("eperm", code, acl)
        assert.matches("an ACL lets another user or group write", msg, 1, true)
        assert.matches("setfacl -b", msg, 1, true)
      end
      assert.equal("log.0000000001\n", util.run("ls -A " .. path), acl)   -- nothing made
    end
    assert.equal("precious\n", target())
    -- an ACL that names a reader only is no writer: the directory is root's alone
    local path = dir .. "/reader"
    util.run("mkdir -m 0700 " .. path .. " && setfacl -m u:65534:rx " .. path)
    local c = assert(core.cache_open(path))
    assert(c:close())
  end)
end)

describe("damaged shared region files (__db.00N)", function()
  -- The regions are rebuildable: no process ever joins leftover ones. After a clean close
  -- they are made anew; after a kill, recovery makes them anew from the files and the log.
  -- Before, a flipped byte crashed `cache verify` (SIGSEGV in __memp_walk_files) or made a
  -- lookup spin. Each case runs in processes of their own, under a time limit.
  local dir, cleanup
  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function() cleanup() end)

  local SCRIPT = [[
    local core = require("mtasts.core")
    local path, how = arg[1], arg[2]
    local c = assert(core.cache_open(path))
    assert(c:upsert("last.example", "idL", "version: STSv1\nmode: enforce\nmx: mx.example\n" ..
      "max_age: 86400\n", 1000))
    if how == "kill" then os.exit(0) end     -- without closing: as after a kill
    c:close()
  ]]

  local function flip(file, n, seed)
    math.randomseed(seed)
    local f = assert(io.open(file, "r+b"))
    local size = f:seek("end")
    for _ = 1, n do
      local pos = math.random(0, size - 1)
      f:seek("set", pos)
      local b = f:read(1):byte()
      f:seek("set", pos)
      f:write(string.char(b ~ (1 << math.random(0, 7))))
    end
    f:close()
  end

  it("never crash or hang an opener, whatever the bytes, and lose no row", function()
    util.write(dir .. "/leave.lua", SCRIPT)
    local outcomes = {}
    for _, how in ipairs({ "close", "kill" }) do
      for _, region in ipairs({ "001", "002", "003" }) do
        for seed = 1, 4 do
          local path = dir .. "/c-" .. how .. region .. seed
          local out, status = util.run(util.lua_cmd() .. " " .. dir .. "/leave.lua " .. path ..
            " " .. how)
          assert.equal(0, status, out)
          flip(path .. "/__db." .. region, seed * 100, seed)
          local cli = "timeout -s KILL 30 " .. util.lua_cmd() .. " bin/mtasts --db " .. path
          local vout, vst = util.run(cli .. " cache verify")
          local sout, sst = util.run(cli .. " cache show last.example")
          local key = ("%s %s seed %d: verify %d, show %d"):format(how, region, seed, vst, sst)
          outcomes[#outcomes + 1] = key
          assert.equal(0, vst, key .. ": " .. vout)
          assert.equal(0, sst, key .. ": " .. sout)
          assert.matches("record_id:%s+idL", sout)
        end
      end
    end
    assert.equal(24, #outcomes)
  end)

  it("cache rebuild recovers from them too", function()
    util.write(dir .. "/leave.lua", SCRIPT)
    local path = dir .. "/c"
    local out, status = util.run(util.lua_cmd() .. " " .. dir .. "/leave.lua " .. path .. " kill")
    assert.equal(0, status, out)
    for _, region in ipairs({ "001", "002", "003" }) do flip(path .. "/__db." .. region, 500, 7) end
    out, status = util.run("timeout -s KILL " .. util.within(60) // 1 .. " " .. util.lua_cmd() ..
      " bin/mtasts --db " .. path .. " cache rebuild")
    assert.equal(0, status, out)
    assert.matches("1 rows salvaged", out, 1, true)
  end)
end)
