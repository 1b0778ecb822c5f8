-- One cache shared by the users of one group (docs/cache.md, "Sharing one cache between
-- users"): two processes of two users, while one is killed with SIGKILL mid-write; a
-- rebuild as root that keeps the owner, group and modes; a bad mode refused before anything
-- is made. The processes run under numeric ids that need no account on the machine
-- (setpriv); they cannot read a clone in root's 0700 home, so they run from a copy of the
-- modules in the spec's temporary directory. Tagged #slow: `make unit` leaves it out.
local core = require("mtasts.core")
local util = require("support.util")
local proc = require("support.proc")

local UID1, UID2, GID = 61001, 61002, 61000
local SECONDS = 10

local as_root = util.run("id -u"):match("^0%s") ~= nil
-- under make valgrind the children log into a directory only root may write
local it_users = (as_root and (os.getenv("MTASTS_VALGRIND") or "") == "") and it or pending

local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- A directory the other users can run from: the modules, the module under test, the worker.
local function stage(dir)
  local so = (os.getenv("MTASTS_CPATH") or "./build/?.so"):gsub("%?", "mtasts/core")
  local out, status = util.run(table.concat({
    "cp -r lua " .. dir .. "/lua",
    "cp -r bin " .. dir .. "/bin",
    "mkdir -p " .. dir .. "/spec/support " .. dir .. "/" .. so:match("^(.*)/"),
    "cp spec/support/cache_worker.lua " .. dir .. "/spec/support/",
    "cp " .. so .. " " .. dir .. "/" .. so,
    "find " .. dir .. " -type d -exec chmod 0755 {} +",
    "find " .. dir .. " -type f -exec chmod 0644 {} +",
    "mkdir -m 1777 " .. dir .. "/logs",
  }, " && "))
  assert(status == 0, out)
end

-- A command line that runs `cmd` (a Lua script and its arguments) as uid, in group GID only,
-- from dir, under umask 077 (which must not strip the group's bits).
local function as_user(dir, uid, cmd)
  return ("setpriv --reuid=%d --regid=%d --clear-groups sh -c %s"):format(uid, GID,
    quote("cd " .. dir .. " && umask 077 && exec " .. util.lua_cmd() .. " " .. cmd))
end

-- "uid gid mode" of a path, as stat shows them.
local function owner(path) return (util.run("stat -c '%u %g %a' " .. path):gsub("%s+$", "")) end

-- Every file of a cache directory: { [name] = "uid gid mode" }.
local function files(path)
  local t = {}
  for line in util.run("find " .. path .. " -mindepth 1 -printf '%f %U %G %m\\n'"):gmatch(
    "[^\n]+") do
    local name, rest = line:match("^(%S+) (.*)$")
    t[name] = rest
  end
  return t
end

-- Runs as a member of the group: every domain of the file `expect` ("domain seq" lines) has a
-- row, one a single worker wrote holds at least the acknowledged sequence, and the files
-- verify. Prints "checked N" and a "bad ..." line per problem.
local CHECK = [[
local core = require("mtasts.core")
local c, msg, code = core.cache_open(arg[1])
if not c then print("bad open " .. tostring(code) .. " " .. tostring(msg)) os.exit(0) end
local n = 0
for line in io.lines(arg[2]) do
  local domain, seq = line:match("^(%S+) (%d+)$")
  local row = c:lookup(domain, 1000)
  if type(row) ~= "table" then print("bad " .. domain .. " lost")
  elseif domain:match("^w") and tonumber(row.record_id) < tonumber(seq) then
    print("bad " .. domain .. " has " .. row.record_id .. ", acknowledged " .. seq)
  end
  n = n + 1
end
local ok, vmsg = c:verify()
if not ok then print("bad verify " .. tostring(vmsg)) end
print("checked " .. n)
assert(c:close())
]]

-- Run CHECK as uid; returns the number of domains checked and the problems.
local function check(dir, uid, path, expect)
  local lines = {}
  for domain, seq in pairs(expect) do lines[#lines + 1] = domain .. " " .. seq end
  util.write(dir .. "/expect", table.concat(lines, "\n") .. "\n")
  util.write(dir .. "/check.lua", CHECK)
  util.run("chmod 0644 " .. dir .. "/expect " .. dir .. "/check.lua")
  local out = util.run(as_user(dir, uid, "check.lua " .. path .. " expect"))
  local bad = {}
  for b in out:gmatch("bad ([^\n]*)") do bad[#bad + 1] = b end
  return tonumber(out:match("checked (%d+)")), bad, out
end

describe("one cache shared by the users of a group #slow", function()
  local dir, cleanup, pids = nil, nil, {}
  before_each(function()
    dir, cleanup = util.tmpdir()
    util.run("chmod 0755 " .. dir)
  end)
  after_each(function()
    for _, pid in pairs(pids) do os.execute("kill -9 " .. pid .. " 2>/dev/null") end
    pids = {}
    cleanup()
  end)

  local function spawn(w, uid, path, deadline, mode)
    local log = dir .. "/logs/worker" .. w .. ".log"
    local out = util.run(as_user(dir, uid, "spec/support/cache_worker.lua " .. path .. " " ..
      w .. " " .. log .. " " .. deadline .. " " .. math.random(0, 1 << 31) ..
      (mode and " " .. mode or "")) .. " 2>>" .. log .. ".stderr >/dev/null & echo $!")
    return assert(tonumber(out:match("(%d+)")), out), log
  end

  local function read_log(log)
    local f = io.open(log)
    if not f then return "" end
    local t = f:read("a")
    f:close()
    return t
  end

  it_users("serves one user while the other is killed with SIGKILL mid-write, and loses " ..
    "nothing either acknowledged", function()
    stage(dir)
    util.seed()   -- when the kills come, and each worker's choices
    -- the state directory's parent, as a package would make it: the group may pass through
    util.run("mkdir -m 0750 " .. dir .. "/lib && chown " .. UID1 .. ":" .. GID .. " " .. dir ..
      "/lib")
    local path = dir .. "/lib/mtasts"
    local deadline = core.monotonic() + SECONDS
    -- the refresh timer's user makes the cache, mode 0660; the other user names no mode
    local log1, log2
    pids[1], log1 = spawn(1, UID1, path, deadline, "0660")
    assert(proc.poll(function() return read_log(log1):find("ack ") end, 10),
      "the first user did not write: " .. read_log(log1 .. ".stderr"))
    assert.equal(UID1 .. " " .. GID .. " 2770", owner(path))   -- setgid, the group's
    pids[2], log2 = spawn(2, UID2, path, deadline)

    local kills = 0
    while core.monotonic() < deadline - 1 do
      os.execute(string.format("sleep %.2f", 0.1 + math.random() * 0.4))
      os.execute("kill -9 " .. pids[1] .. " 2>/dev/null")
      kills = kills + 1
      pids[1] = spawn(1, UID1, path, deadline, "0660")
    end
    for w = 1, 2 do
      proc.poll(function() return not proc.alive(pids[w]) end, deadline + 20 - core.monotonic())
      assert.is_false(proc.alive(pids[w]), "worker " .. w .. " did not stop")
    end
    local want = 8
    assert.is_true(kills >= want, "only " .. kills .. " kills")

    local last, acks, errors, recoveries, maxwait = {}, { 0, 0 }, {}, 0, 0
    for w, log in ipairs({ log1, log2 }) do
      local text = read_log(log)
      for domain, seq in text:gmatch("ack (%S+) (%d+)") do
        acks[w] = acks[w] + 1
        seq = tonumber(seq)
        if not last[domain] or seq > last[domain] then last[domain] = seq end
      end
      for e in text:gmatch("error ([^\n]*)") do errors[#errors + 1] = w .. ": " .. e end
      for n in text:gmatch("recoveries (%d+)") do recoveries = math.max(recoveries, tonumber(n)) end
      if w == 2 then
        for mw in text:gmatch("maxwait (%S+)") do maxwait = math.max(maxwait, tonumber(mw)) end
        assert.matches("\ndone %d+\n", text, 1, false)   -- it served to the end
      end
    end
    assert.same({}, errors)
    assert.is_true(acks[1] > 50 and acks[2] > 50, ("acks: %d, %d"):format(acks[1], acks[2]))
    assert.is_true(recoveries >= 1, "no kill landed inside the cache")
    assert.is_true(maxwait < util.within(2.0), ("the survivor waited %.3f s"):format(maxwait))

    -- every file, whoever made it, is the group's and 0660, the umask of 077 notwithstanding
    local seen = files(path)
    assert.is_truthy(seen["policies.db"] and seen["mtasts.gate"] and seen["__db.001"])
    for name, what in pairs(seen) do
      assert.matches("^6100[12] " .. GID .. " 660$", what, nil, false, name)
    end
    -- root is no member of the group: its members could plant links for it to follow
    local c, msg, code = core.cache_open(path)
    assert.is_nil(c)
    assert.equal("eperm", code)
    assert.matches("writable by its group", msg, 1, true)

    local n, bad, out = check(dir, UID2, path, last)
    assert.same({}, bad)
    local domains = 0
    for _ in pairs(last) do domains = domains + 1 end
    assert.equal(domains, n, out)
    print(("\n    %d kills, %d recoveries, %d + %d acknowledged upserts, longest wait of the " ..
      "survivor %.3f s"):format(kills, recoveries, acks[1], acks[2], maxwait))
  end)

  it_users("a cache made 0600 is shared once its owner opens it with mode 0660", function()
    stage(dir)
    util.run("mkdir -m 2770 " .. dir .. "/cache && chown " .. UID1 .. ":" .. GID .. " " .. dir ..
      "/cache")
    local path = dir .. "/cache"
    util.write(dir .. "/open.lua", [[
      local c, msg, code = require("mtasts.core").cache_open(arg[1], tonumber(arg[2] or "", 8))
      io.write(tostring(code), "|", tostring(msg), "\n")
      if c then c:close() end
    ]])
    util.run("chmod 0644 " .. dir .. "/open.lua")
    assert.equal("nil|nil\n", util.run(as_user(dir, UID1, "open.lua " .. path)))
    assert.equal(UID1 .. " " .. GID .. " 600", files(path)["mtasts.gate"])
    local out = util.run(as_user(dir, UID2, "open.lua " .. path))
    assert.matches("^eacces|", out)
    assert.matches("a cache shared by a group needs mode 0660", out, 1, true)
    assert.equal("nil|nil\n", util.run(as_user(dir, UID1, "open.lua " .. path .. " 0660")))
    for name, what in pairs(files(path)) do
      assert.equal(UID1 .. " " .. GID .. " 660", what, name)
    end
    assert.equal("nil|nil\n", util.run(as_user(dir, UID2, "open.lua " .. path)))
  end)

  it_users("rebuild, run as root, keeps the owner, group and modes of a shared cache", function()
    stage(dir)
    util.run("mkdir -m 0750 " .. dir .. "/lib && chown " .. UID1 .. ":" .. GID .. " " .. dir ..
      "/lib")
    local path = dir .. "/lib/mtasts"
    util.write(dir .. "/fill.lua", [[
      local core = require("mtasts.core")
      local c = assert(core.cache_open(arg[1], 432))
      for i = 1, 5 do
        assert(c:upsert("w" .. i .. ".example", tostring(i), "version: STSv1\nmode: " ..
          "enforce\nmx: mx.example\nmax_age: 86400\n", 1000))
      end
      assert(c:close())
    ]])
    util.run("chmod 0644 " .. dir .. "/fill.lua")
    local out = util.run(as_user(dir, UID1, "fill.lua " .. path))
    assert.equal("", out)
    local before = files(path)
    assert.equal(UID1 .. " " .. GID .. " 660", before["policies.db"])

    local r = assert(core.cache_rebuild(path))
    assert.equal(5, r.salvaged)
    assert.equal(UID1 .. " " .. GID .. " 2770", owner(path))
    local after = files(path)
    assert.is_truthy(after["policies.db"] and after["mtasts.gate"])
    for name, what in pairs(after) do
      assert.equal(UID1 .. " " .. GID .. " 660", what, name)
    end
    assert.matches("policies.db", util.run("ls " .. r.moved_to), 1, true)
    -- the other user of the group uses the rebuilt cache as before
    local expect = {}
    for i = 1, 5 do expect["w" .. i .. ".example"] = i end
    local n, bad, cout = check(dir, UID2, path, expect)
    assert.same({}, bad)
    assert.equal(5, n, cout)
    -- and a mode asked for wins over the old one (owner and group are kept)
    r = assert(core.cache_rebuild(path, 384))
    assert.equal(5, r.salvaged)
    assert.equal(UID1 .. " " .. GID .. " 2770", owner(path))
    for name, what in pairs(files(path)) do
      assert.equal(UID1 .. " " .. GID .. " 600", what, name)
    end
  end)
end)

describe("the mode option", function()
  local mtasts = require("mtasts")
  local tlsrpt = require("mtasts.tlsrpt")
  local cache = require("mtasts.cache")
  local dir, cleanup
  before_each(function() dir, cleanup = util.tmpdir() end)
  after_each(function() cleanup() end)

  local function gone(path) return util.run("ls -d " .. path .. " 2>/dev/null") == "" end

  it("is a config failure naming the option when it cannot work, and nothing is made",
    function()
      local path = dir .. "/cache"
      local cases = {
        { "0640", "the group needs both read and write" },
        { "0666", "others may not use the cache" },
        { "0770", "no execute bits" },
        { "0060", "the owner must read and write" },
        { "rw-rw----", "is not an octal mode like 0660" },
      }
      for _, case in ipairs(cases) do
        local mode, why = case[1], case[2]
        for name, open in pairs({
          ["mtasts.open"] = function() return mtasts.open{ path = path, mode = mode } end,
          ["tlsrpt.open"] = function() return tlsrpt.open{ path = path, mode = mode } end,
          ["cache.open"] = function() return cache.open(path, { mode = mode }) end,
        }) do
          local x, msg, code, key = open()
          assert.is_nil(x, name)
          assert.equal("config", code, name)
          assert.equal("mode", key, name)
          assert.matches("^mode: '" .. mode:gsub("%p", "%%%0") .. "'", msg, nil, false, name)
          assert.matches(why, msg, 1, true, name)
          assert.is_true(gone(path), name .. " made the directory")
        end
      end
      util.run("mkdir " .. path)
      local r, msg, code, key = cache.rebuild(path, { mode = "0644" })
      assert.is_nil(r)
      assert.equal("config", code)
      assert.equal("mode", key)
      assert.matches("mode: '0644'", msg, 1, true)
      assert.equal("", util.run("ls -A " .. path))
    end)

  it("raises for a value of the wrong type or an unknown option", function()
    assert.has_error(function() mtasts.open{ path = dir, mode = 432 } end,
      "bad argument #1 to 'open' (mode must be a string)")
    assert.has_error(function() tlsrpt.open{ path = dir, mode = 432 } end,
      "bad argument #1 to 'open' (mode must be a string)")
    assert.has_error(function() cache.open(dir, { mode = 432 }) end,
      "bad argument #2 to 'open' (mode must be a string)")
    assert.has_error(function() cache.open(dir, { mdoe = "0660" }) end,
      "bad argument #2 to 'open' (unknown option 'mdoe')")
    assert.has_error(function() core.cache_open(dir, 420) end)    -- 0644
  end)

  -- Root does not make or open a cache its group can write (docs/cache.md, "Who may open a
  -- directory"): run as root, these run their Lua as a member of the group instead.
  local staged
  local function member(cmd)
    if not as_root then return util.run("umask 077 && " .. util.lua_cmd() .. " " .. cmd) end
    if not staged then
      util.run("chmod 0755 " .. dir)
      stage(dir)
      util.run("chown " .. UID1 .. ":" .. GID .. " " .. dir)   -- the member makes the cache
      staged = true
    end
    return util.run(as_user(dir, UID1, cmd))
  end
  after_each(function() staged = nil end)

  it("the CLI's --mode: a bad one is exit 78 naming the flag; 0660 makes a shared cache",
    function()
      local out, status = util.run(util.lua_cmd() .. " bin/mtasts --db " .. dir ..
        "/cache --mode 0640 refresh")
      assert.equal(78, status, out)
      assert.matches("--mode: '0640'", out, 1, true)
      assert.is_true(gone(dir .. "/cache"))
      if as_root then
        out, status = util.run(util.lua_cmd() .. " bin/mtasts --db " .. dir ..
          "/cache --mode 0660 report stats")
        assert.equal(3, status, out)
        assert.matches("root does not make a cache its group can write", out, 1, true)
        assert.is_true(gone(dir .. "/cache"))
      end
      out, status = member("bin/mtasts --db " .. dir .. "/cache --mode 0660 report stats")
      assert.equal(0, status, out)
      assert.equal("2770", util.mode(dir .. "/cache"))
      for name, what in pairs(files(dir .. "/cache")) do
        assert.matches(" 660$", what, nil, false, name)
      end
    end)

  it("an opener that names no mode keeps the mode of the cache's files", function()
    local path = dir .. "/cache"
    local function open(mode)
      return member("-e " .. quote("assert(require(\"mtasts.cache\").open(\"" .. path ..
        "\"" .. (mode and ", { mode = \"" .. mode .. "\" }" or "") .. ")):close()"))
    end
    assert.equal("", open("0660"))
    util.run("rm " .. path .. "/__db.*")      -- made again by the next opener
    assert.equal("", open())
    for name, what in pairs(files(path)) do
      assert.matches(" 660$", what, nil, false, name)
    end
    -- naming 0600 takes this user's files back to the owner alone
    assert.equal("", open("0600"))
    for name, what in pairs(files(path)) do
      assert.matches(" 600$", what, nil, false, name)
    end
  end)
end)

-- Recovery replays the file operations a log records, and a log can name a database file by
-- an absolute path, through a link: `mtasts cache rebuild` run as root recovers the copy of
-- another user's log as that user, never as root (module/rebuild.c, recover_as).
describe("a rebuild as root of a cache another user could write #slow", function()
  local dir, cleanup
  before_each(function()
    dir, cleanup = util.tmpdir()
    util.run("chmod 0755 " .. dir)
  end)
  after_each(function() cleanup() end)

  -- A program of the cache's user: opens a transactional environment in arg 1, makes the
  -- database named by arg 2 (an absolute path) and writes to it, then exits without a
  -- checkpoint, as if killed: only the log knows of the file.
  local MAKER = [[
#include <db.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
  DB_ENV *env; DB *db; DBT k, d;
  if (argc != 3 || db_env_create(&env, 0) != 0) return 1;
  if (env->open(env, argv[1], DB_CREATE | DB_INIT_TXN | DB_INIT_LOG | DB_INIT_LOCK |
                DB_INIT_MPOOL | DB_RECOVER, 0600) != 0) return 1;
  if (db_create(&db, env, 0) != 0) return 1;
  if (db->open(db, NULL, argv[2], NULL, DB_BTREE, DB_CREATE | DB_AUTO_COMMIT, 0644) != 0)
    return 1;
  memset(&k, 0, sizeof k); memset(&d, 0, sizeof d);
  k.data = "owned"; k.size = 5; d.data = "by-recovery"; d.size = 11;
  if (db->put(db, NULL, &k, &d, DB_AUTO_COMMIT) != 0) return 1;
  _exit(0);
}
]]

  local function compiled()
    util.write(dir .. "/maker.c", MAKER)
    local out, status = util.run("cc -o " .. dir .. "/maker " .. dir .. "/maker.c -ldb-5.3")
    return status == 0, out
  end

  it_users("does not let the log of another user's cache make root write a file through a " ..
    "link", function()
    local ok, out = compiled()
    if not ok then
      pending("no C compiler or Berkeley DB headers: " .. out)
      return
    end
    -- root's own directory, which nobody else may write, and the user's: a cache and a
    -- directory the log names, later swapped for a link to root's
    local victim, attacker = dir .. "/victim", dir .. "/attacker"
    util.run("mkdir -m 0700 " .. victim .. " && mkdir -m 0755 " .. attacker ..
      " && chown " .. UID1 .. ":" .. GID .. " " .. attacker)
    local as1 = ("setpriv --reuid=%d --regid=%d --clear-groups "):format(UID1, GID)
    out = util.run(as1 .. "sh -c " .. quote("umask 077 && mkdir -m 0700 " .. attacker ..
      "/cache " .. attacker .. "/x && " .. dir .. "/maker " .. attacker .. "/cache " ..
      attacker .. "/x/evil.db && rm -r " .. attacker .. "/x && ln -s " .. victim .. " " ..
      attacker .. "/x && echo made"))
    assert.matches("made", out, 1, true)
    assert.matches("log%.0000000001", util.run("ls " .. attacker .. "/cache"))

    local r, msg, code = core.cache_rebuild(attacker .. "/cache")
    assert.is_table(r, tostring(msg) .. " " .. tostring(code))
    assert.equal("", util.run("ls -A " .. victim))          -- nothing made in root's
    -- the rebuilt cache is the user's, as the old one was
    assert.equal(UID1 .. " " .. GID .. " 700", owner(attacker .. "/cache"))
  end)

  it_users("recovers as the owner: writes only the log had are kept", function()
    local ok, out = compiled()
    if not ok then
      pending("no C compiler or Berkeley DB headers: " .. out)
      return
    end
    stage(dir)
    util.run("mkdir -m 0700 " .. dir .. "/lib && chown " .. UID1 .. ":" .. GID .. " " .. dir ..
      "/lib")
    local path = dir .. "/lib/mtasts"
    -- the user writes three rows and is killed before a checkpoint; the file is put back as
    -- it was before them, so only the log has them
    util.write(dir .. "/writer.lua", [[
      local core = require("mtasts.core")
      local c = assert(core.cache_open(arg[1]))
      local p = "version: STSv1\nmode: enforce\nmx: mx.example\nmax_age: 86400\n"
      assert(c:upsert("first.example", "first", p, 1000))
      os.execute("cp " .. arg[1] .. "/policies.db " .. arg[1] .. "/../before.db")
      for i = 1, 3 do assert(c:upsert(("late%d.example"):format(i), "late", p, 1000)) end
      os.execute("kill -9 " .. io.open("/proc/self/stat"):read("l"):match("^(%d+)"))
    ]])
    util.run("chmod 0644 " .. dir .. "/writer.lua")
    out = util.run(as_user(dir, UID1, "writer.lua " .. path))
    util.run(("setpriv --reuid=%d --regid=%d --clear-groups sh -c %s"):format(UID1, GID,
      quote("cp " .. dir .. "/lib/before.db " .. path .. "/policies.db && rm -f " .. path ..
      "/__db.0*")))
    local r, msg, code = core.cache_rebuild(path)
    assert.is_table(r, tostring(msg) .. " " .. tostring(code) .. " " .. out)
    assert.equal(4, r.salvaged)
    assert.equal(UID1 .. " " .. GID .. " 700", owner(path))
    local expect = { ["first.example"] = "first" }
    for i = 1, 3 do expect[("late%d.example"):format(i)] = "late" end
    util.write(dir .. "/read.lua", [[
      local c = assert(require("mtasts.core").cache_open(arg[1]))
      for _, r in ipairs(assert(c:list())) do print(r.domain, r.record_id) end
      c:close()
    ]])
    util.run("chmod 0644 " .. dir .. "/read.lua")
    local seen = {}
    for d, id in util.run(as_user(dir, UID1, "read.lua " .. path)):gmatch("(%S+)\t(%S+)") do
      seen[d] = id
    end
    assert.same(expect, seen)
  end)
end)
