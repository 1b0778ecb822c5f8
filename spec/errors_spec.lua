-- Every error code the code base can return is listed in docs/errors.md (docs/style.md §3: a
-- new code goes into errors.md in the same change). The codes are found by reading the
-- sources, not by running them, in every file under module/ (*.c), lua/ (**/*.lua) and
-- bin/mtasts*, so a new file needs no change here:
--   C    the names of mtasts_code_name (the Berkeley DB and errno table); the code argument
--        of binding helpers (a function taking lua_State *L and a parameter named `code`,
--        such as fail(L, msg, "code")); a string pushed right before `return 3`
--   Lua  the third value of `return nil, message, "code"`, and the code argument of helpers
--        that return `nil, message, <a parameter>`
-- A code is a lower-case hyphenated word; the fourth value of a failure (a TLSRPT reason such
-- as certificate-expired) is never read. Codes chosen at run time (a resolver status, a
-- Berkeley DB number through mtasts_code_name) are found through the tables they come from.

local CODE = "^[a-z][a-z0-9]*%-?[a-z0-9%-]*$"

local function is_code(s) return s:match(CODE) ~= nil and not s:find("%-%-") and
  not s:find("%-$") end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function files(cmd)
  local out = {}
  local p = assert(io.popen(cmd))
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  table.sort(out)
  return out
end

-- --- tokens -------------------------------------------------------------------------------

-- Lua source as tokens { k = "name" | "string" | "number" | "op", v = text }, comments left
-- out. Strings keep their raw text (codes have no escapes).
local function lua_tokens(src)
  local t, i, n = {}, 1, #src
  while i <= n do
    local c = src:sub(i, i)
    if c:match("%s") then
      i = i + 1
    elseif src:sub(i, i + 1) == "--" then
      local eq = src:match("^%[(=*)%[", i + 2)
      local e
      if eq then e = select(2, src:find("]" .. eq .. "]", i + 2, true))
      else e = src:find("\n", i, true) end
      i = (e or n) + 1
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= n and src:sub(j, j) ~= c do j = j + (src:sub(j, j) == "\\" and 2 or 1) end
      t[#t + 1] = { k = "string", v = src:sub(i + 1, j - 1) }
      i = j + 1
    elseif src:match("^%[=*%[", i) then
      local eq = src:match("^%[(=*)%[", i)
      local s = i + #eq + 2
      local b, e = src:find("]" .. eq .. "]", s, true)
      t[#t + 1] = { k = "string", v = src:sub(s, (b or n + 1) - 1) }
      i = (e or n) + 1
    elseif c:match("[%a_]") then
      local w = src:match("^[%w_]+", i)
      t[#t + 1] = { k = "name", v = w }
      i = i + #w
    elseif c:match("%d") then
      local num = src:match("^0[xX][%x%.]*", i) or src:match("^%d[%d%.]*[eE][+-]?%d+", i) or
        src:match("^%d[%d%.]*", i)
      t[#t + 1] = { k = "number", v = num }
      i = i + #num
    else
      local op = src:match("^%.%.%.", i) or src:match("^[=~<>]=", i) or src:match("^%.%.", i) or
        src:match("^//", i) or src:match("^::", i) or src:match("^<<", i) or
        src:match("^>>", i) or c
      t[#t + 1] = { k = "op", v = op }
      i = i + #op
    end
  end
  return t
end

-- C source as tokens, comments and preprocessor lines left out.
local function c_tokens(src)
  local t, i, n = {}, 1, #src
  local line_start = true
  while i <= n do
    local c = src:sub(i, i)
    if c == "\n" then
      line_start = true
      i = i + 1
    elseif c:match("%s") then
      i = i + 1
    elseif line_start and c == "#" then   -- a directive, with its continuation lines
      local j = i
      repeat
        local e = src:find("\n", j, true) or n
        local cont = src:sub(e - 1, e - 1) == "\\"
        j = e + 1
      until not cont or j > n
      i = j
    elseif src:sub(i, i + 1) == "/*" then
      local _, e = src:find("*/", i + 2, true)
      i = (e or n) + 1
    elseif src:sub(i, i + 1) == "//" then
      i = (src:find("\n", i, true) or n) + 1
    else
      line_start = false
      if c == '"' or c == "'" then
        local j = i + 1
        while j <= n and src:sub(j, j) ~= c do j = j + (src:sub(j, j) == "\\" and 2 or 1) end
        t[#t + 1] = { k = c == '"' and "string" or "char", v = src:sub(i + 1, j - 1) }
        i = j + 1
      elseif c:match("[%a_]") then
        local w = src:match("^[%w_]+", i)
        t[#t + 1] = { k = "name", v = w }
        i = i + #w
      elseif c:match("%d") then
        local num = src:match("^[%w%.]+", i)
        t[#t + 1] = { k = "number", v = num }
        i = i + #num
      else
        t[#t + 1] = { k = "op", v = c }
        i = i + 1
      end
    end
  end
  return t
end

local OPEN = { ["("] = 1, ["["] = 1, ["{"] = 1, [")"] = -1, ["]"] = -1, ["}"] = -1 }

-- The comma-separated lists inside the brackets opening at t[k]: a list of token lists, and
-- the index of the closing bracket.
local function args_at(t, k)
  local list, cur, depth = {}, {}, 0
  for j = k, #t do
    local tok = t[j]
    local d = tok.k == "op" and OPEN[tok.v] or 0
    depth = depth + d
    if depth == 0 then
      if #cur > 0 or #list > 0 then list[#list + 1] = cur end
      return list, j
    end
    if j > k then
      if depth == 1 and tok.k == "op" and tok.v == "," then
        list[#list + 1], cur = cur, {}
      else
        cur[#cur + 1] = tok
      end
    end
  end
  return list, #t
end

-- The strings an expression can evaluate to: the expression itself when it is one string, or
-- each string that is an alternative of `and`/`or` (Lua) or `?`/`:` (C). A string compared
-- (`code == "x"`) or passed to a call is not one.
local ALTERNATIVE = { ["and"] = true, ["or"] = true, ["?"] = true, [":"] = true }
local function values(expr, out)
  for j, tok in ipairs(expr) do
    if tok.k == "string" and (#expr == 1 or (j > 1 and ALTERNATIVE[expr[j - 1].v])) then
      out[#out + 1] = tok.v
    end
  end
  return out
end

-- --- C --------------------------------------------------------------------------------------

-- Binding helpers defined in src, NAME(lua_State *L, ..., const char *code) { ...: into
-- helpers, NAME -> the position of code. Helpers are shared between files (lua_util.c), so
-- every file is read for them before any is read for calls.
local function c_helpers(src, helpers)
  local t = c_tokens(src)
  for k = 1, #t - 4 do
    if t[k].k == "name" and t[k + 1].v == "(" and t[k + 2].v == "lua_State" then
      local params, close = args_at(t, k + 1)
      if t[close + 1] and t[close + 1].v == "{" then
        for i, p in ipairs(params) do
          if p[#p] and p[#p].v == "code" then helpers[t[k].v] = i end
        end
      end
    end
  end
end

local function c_codes(src, helpers, found)
  local t = c_tokens(src)
  for k = 1, #t - 1 do
    local tok = t[k]
    if tok.k == "name" and t[k + 1].v == "(" then
      if helpers[tok.v] then
        local args = args_at(t, k + 1)
        local a = args[helpers[tok.v]]
        if a then values(a, found.c_helper) end
      elseif tok.v:match("^lua_push") then
        local args, close = args_at(t, k + 1)
        if t[close + 1] and t[close + 1].v == ";" and t[close + 2] and t[close + 2].v ==
          "return" and t[close + 3] and t[close + 3].v == "3" and args[2] then
          values(args[2], found.c_return3)
        end
      elseif tok.v == "mtasts_code_name" then
        local _, close = args_at(t, k + 1)
        if t[close + 1] and t[close + 1].v == "{" then   -- the definition: its table
          local _, last = args_at(t, close + 1)
          for j = close + 2, last - 1 do
            if t[j].k == "string" and t[j - 1].v == "return" then
              table.insert(found.code_name, t[j].v)
            end
          end
        end
      end
    end
  end
end

-- --- Lua ------------------------------------------------------------------------------------

local STOP = { ["end"] = true, ["else"] = true, ["elseif"] = true, ["until"] = true }
local BLOCK_OPEN = { ["function"] = true, ["if"] = true, ["do"] = true, ["repeat"] = true }
local BLOCK_CLOSE = { ["end"] = true, ["until"] = true }

-- The expressions of the return statement at t[k]: a return ends its block, so the list ends
-- at the first end/else/elseif/until (or ;) outside brackets and function bodies.
local function return_list(t, k)
  local list, cur, depth, blocks = {}, {}, 0, 0
  local j = k + 1
  while j <= #t do
    local tok = t[j]
    if tok.k == "op" and OPEN[tok.v] then
      depth = depth + OPEN[tok.v]
      if depth < 0 then break end
    elseif tok.k == "name" and depth == 0 then
      if blocks == 0 and STOP[tok.v] then break end
      if BLOCK_OPEN[tok.v] then blocks = blocks + 1
      elseif BLOCK_CLOSE[tok.v] then blocks = blocks - 1 end
    end
    if depth == 0 and blocks == 0 and tok.k == "op" and tok.v == ";" then break end
    if depth == 0 and blocks == 0 and tok.k == "op" and tok.v == "," then
      list[#list + 1], cur = cur, {}
    else
      cur[#cur + 1] = tok
    end
    j = j + 1
  end
  if #cur > 0 then list[#list + 1] = cur end
  return list
end

local function is_tok(expr, v) return #expr == 1 and expr[1].v == v end

local function lua_codes(src, found)
  local t = lua_tokens(src)
  -- which function each token is in: a stack of { name =, params = { name = position } }
  local helpers, stack, blocks = {}, {}, {}
  for k = 1, #t do
    local tok = t[k]
    if tok.k == "name" and tok.v == "function" then
      local j, name = k + 1, nil
      while t[j] and (t[j].k == "name" or t[j].v == "." or t[j].v == ":") do
        name = t[j].k == "name" and t[j].v or name
        j = j + 1
      end
      local params = {}
      if t[j] and t[j].v == "(" then
        for i, p in ipairs((args_at(t, j))) do
          if p[1] and p[1].k == "name" then params[p[1].v] = i end
        end
      end
      stack[#stack + 1] = { name = name, params = params }
      blocks[#blocks + 1] = "function"
    elseif tok.k == "name" and (tok.v == "if" or tok.v == "do" or tok.v == "repeat") then
      blocks[#blocks + 1] = tok.v
    elseif tok.k == "name" and (tok.v == "end" or tok.v == "until") then
      if table.remove(blocks) == "function" then table.remove(stack) end
    elseif tok.k == "name" and tok.v == "return" then
      local list = return_list(t, k)
      if #list >= 3 and is_tok(list[1], "nil") and not is_tok(list[2], "nil") then
        values(list[3], found.lua_return)
        local fn, third = stack[#stack], list[3]
        if fn and fn.name and #third == 1 and third[1].k == "name" and fn.params[third[1].v] then
          helpers[fn.name] = fn.params[third[1].v]
        end
      end
    end
  end
  return t, helpers
end

local function lua_helper_calls(t, helpers, found)
  for k = 2, #t - 1 do
    local tok = t[k]
    if tok.k == "name" and helpers[tok.v] and t[k + 1].v == "(" and t[k - 1].v ~= "function" then
      local a = (args_at(t, k + 1))[helpers[tok.v]]
      if a then values(a, found.lua_helper) end
    end
  end
end

-- --- the scan -------------------------------------------------------------------------------

local function scan()
  local found = { code_name = {}, c_helper = {}, c_return3 = {}, lua_return = {},
    lua_helper = {} }
  local sources = {}
  local c_files, c_helper_pos = files("ls module/*.c"), {}
  for _, path in ipairs(c_files) do c_helpers(read(path), c_helper_pos) end
  for _, path in ipairs(c_files) do c_codes(read(path), c_helper_pos, found) end
  local lua_files = files("find lua -name '*.lua'")
  for _, path in ipairs(files("ls bin/mtasts*")) do lua_files[#lua_files + 1] = path end
  for _, path in ipairs(lua_files) do
    local t, helpers = lua_codes(read(path), found)
    sources[#sources + 1] = { t = t, helpers = helpers }
  end
  -- helpers are called from the file they are defined in
  for _, s in ipairs(sources) do lua_helper_calls(s.t, s.helpers, found) end
  local all = {}
  for _, list in pairs(found) do
    for _, v in ipairs(list) do if is_code(v) then all[v] = true end end
  end
  return all, found, #lua_files
end

describe("docs/errors.md", function()
  local all, found, nlua = scan()
  local function set(list)
    local s = {}
    for _, v in ipairs(list) do s[v] = true end
    return s
  end

  it("the scan finds the codes of every kind of source", function()
    local n = 0
    for _ in pairs(all) do n = n + 1 end
    assert.is_true(n > 30, "only " .. n .. " codes found")
    assert.is_true(nlua >= 10, "only " .. nlua .. " Lua files read")
    -- each way a code is written is found (a rename that breaks one fails here)
    local code_name, c_helper = set(found.code_name), set(found.c_helper)
    local c_return3, lua_return = set(found.c_return3), set(found.lua_return)
    for _, c in ipairs({ "enospc", "db-runrecovery", "corrupt", "bdb-error" }) do
      assert.is_true(code_name[c], c .. " not in mtasts_code_name's table")
    end
    for _, c in ipairs({ "record-syntax", "policy-fetch", "gzip", "base64" }) do
      assert.is_true(c_helper[c], c .. " not found as a C helper's code argument")
    end
    assert.is_true(c_helper["poll"] or c_return3["poll"], "poll not found in C")
    assert.is_true(c_helper["too-large"] or c_return3["too-large"], "too-large not found in C")
    for _, c in ipairs({ "no-policy", "no-record", "day-not-over", "report-syntax" }) do
      assert.is_true(lua_return[c], c .. " not found in a Lua return nil, msg, code")
    end
    -- reasons and messages are not codes
    for _, not_code in ipairs({ "certificate-expired", "http-status-404", "fetch-failed",
      "policy-host-not-found", "ok" }) do
      assert.is_nil(all[not_code], not_code .. " taken for a code")
    end
  end)

  it("reads the code argument of a Lua helper that returns nil, message, code", function()
    -- no module has such a helper today: this keeps that part of the scan honest
    local f = { lua_return = {}, lua_helper = {} }
    local t, helpers = lua_codes([[
      local function oops(msg, code) return nil, "x: " .. msg, code end
      local function g() return oops("it broke, badly", "made-up-code") end
    ]], f)
    lua_helper_calls(t, helpers, f)
    assert.same({ "made-up-code" }, f.lua_helper)
    assert.same({}, f.lua_return)
  end)

  it("lists every code", function()
    local doc = read("docs/errors.md")
    local missing = {}
    for code in pairs(all) do
      if not doc:find("`" .. code .. "`", 1, true) then missing[#missing + 1] = code end
    end
    table.sort(missing)
    assert.same({}, missing, "codes missing from docs/errors.md: " ..
      table.concat(missing, ", "))
  end)
end)
