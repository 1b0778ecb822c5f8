-- MTA-STS TXT record cases (docs/conformance.md §1, RFC 8461 §3.1): { name, input, expect }.
-- expect is the parsed table, or { err = "text the message must contain" }.
local function rec(id, ...)
  local ext = {}
  local kv = { ... }
  for i = 1, #kv, 2 do ext[#ext + 1] = { key = kv[i], value = kv[i + 1] } end
  return { version = "STSv1", id = id, extensions = ext }
end
local function fails(text) return { err = text } end

local id32 = string.rep("a1", 16)
local key32 = "k" .. string.rep("x", 31)
-- a record of exactly 4096 bytes: prefix + one extension padded to fill
local prefix = "v=STSv1; id=1; e="
local at_limit = prefix .. string.rep("v", 4096 - #prefix)

return {
  -- valid
  { "the RFC 8461 example", "v=STSv1; id=20160831085700Z;", rec("20160831085700Z") },
  { "no trailing separator", "v=STSv1; id=abc123", rec("abc123") },
  { "no spaces around ';'", "v=STSv1;id=abc", rec("abc") },
  { "tabs around ';'", "v=STSv1\t;\tid=abc\t;", rec("abc") },
  { "several spaces around ';'", "v=STSv1  ;   id=abc  ;  ", rec("abc") },
  { "trailing spaces after the last field", "v=STSv1; id=abc  ", rec("abc") },
  { "an id of 32 characters", "v=STSv1; id=" .. id32, rec(id32) },
  { "an id of 1 character", "v=STSv1; id=Z", rec("Z") },
  { "an extension after id", "v=STSv1; id=abc; ext=value", rec("abc", "ext", "value") },
  { "an extension before id with every allowed character",
    "v=STSv1; a_b-1.x=v!al:ue~; id=1", rec("1", "a_b-1.x", "v!al:ue~") },
  { "an extension key of 32 characters", "v=STSv1; id=1; " .. key32 .. "=x",
    rec("1", key32, "x") },
  { "keys are case-sensitive: ID is an extension", "v=STSv1; ID=abc; id=def",
    rec("def", "ID", "abc") },
  { "duplicate extensions are kept in order", "v=STSv1; id=1; x=a; x=b",
    rec("1", "x", "a", "x", "b") },
  -- RFC 8461 §3.2: a duplicated non-repeated field is ignored whatever its value
  { "two ids: the first wins", "v=STSv1; id=a; id=b", rec("a") },
  { "a second id that is not a valid id is ignored", "v=STSv1; id=abc; id=not-an-id!",
    rec("abc") },
  { "an empty second id is ignored", "v=STSv1; id=abc; id=; x=y", rec("abc", "x", "y") },
  { "a second id after an extension is ignored", "v=STSv1; id=1; e=f; id=" .. id32 .. "x",
    rec("1", "e", "f") },
  { "a second v= is ignored", "v=STSv1; v=STSv1; id=1", rec("1") },
  { "a second v= of another version is ignored", "v=STSv1; id=1; v=STSv2", rec("1") },
  { "a second v= with a value no field may have is ignored", "v=STSv1; v=a b=c; id=1",
    rec("1") },
  { "a record of exactly 4096 bytes", at_limit, rec("1", "e", string.rep("v", 4096 - #prefix)) },
  -- invalid
  { "v=STSv10 is not the version", "v=STSv10; id=1", fails("does not start with v=STSv1") },
  { "a bare version", "v=STSv1", fails("record has no field after v=STSv1") },
  { "a version and a separator only", "v=STSv1;", fails("no field after v=STSv1") },
  { "the version tag is case-sensitive", "v=stsv1; id=1", fails("does not start with v=STSv1") },
  { "leading space", " v=STSv1; id=1", fails("does not start with v=STSv1") },
  { "the empty string", "", fails("does not start with v=STSv1") },
  { "spaces inside the version", "v = STSv1; id=1", fails("does not start with v=STSv1") },
  { "an empty id", "v=STSv1; id=", fails("id '' is not 1-32 letters or digits") },
  { "an id of 33 characters", "v=STSv1; id=" .. id32 .. "x", fails("is not 1-32 letters") },
  { "an id with a hyphen", "v=STSv1; id=2016-08-31", fails("is not 1-32 letters or digits") },
  { "no id", "v=STSv1; foo=bar", fails("record has no id field") },
  { "an empty field", "v=STSv1;; id=1", fails("record field 1 is empty") },
  { "an empty field in the middle", "v=STSv1; id=1;;x=y", fails("is empty (';;'") },
  { "an invalid first id is not rescued by a second", "v=STSv1; id=a-b; id=abc",
    fails("record field 1: id 'a-b' is not 1-32 letters or digits") },
  { "a second id that is not key=value", "v=STSv1; id=a; id",
    fails("record field 2 'id' is not key=value") },
  { "a second v that is not key=value", "v=STSv1; id=a; v", fails("record field 2 'v' is not") },
  { "a missing separator", "v=STSv1 id=abc", fails("expected ';'") },
  { "a field without '='", "v=STSv1; id", fails("record field 1 'id' is not key=value") },
  { "spaces around '='", "v=STSv1; id = abc", fails("key 'id ' is not 1-32") },
  { "an extension key starting with '_'", "v=STSv1; id=1; _x=1", fails("key '_x' is not") },
  { "an extension key of 33 characters", "v=STSv1; id=1; " .. key32 .. "y=x",
    fails("is not 1-32 letters, digits") },
  { "an empty extension value", "v=STSv1; id=1; foo=", fails("value '' of 'foo'") },
  { "a space inside an extension value", "v=STSv1; id=1; foo=a b",
    fails("value 'a b' of 'foo'") },
  { "'=' inside an extension value", "v=STSv1; id=1; foo=a=b", fails("value 'a=b' of 'foo'") },
  { "a NUL byte in the version", "v=STS\0v1; id=1", fails("does not start with v=STSv1") },
  { "a NUL byte in the id", "v=STSv1; id=ab\0c", fails("id 'ab\\x00c'") },
  { "a NUL byte in an extension key", "v=STSv1; id=1; a\0b=c", fails("key 'a\\x00b'") },
  { "a NUL byte in an extension value", "v=STSv1; id=1; ab=c\0", fails("value 'c\\x00'") },
  { "a non-ASCII byte in the id", "v=STSv1; id=abc\xc3\xa9", fails("id 'abc\\xc3\\xa9'") },
  { "a non-ASCII byte in an extension key", "v=STSv1; id=1; k\xffy=v", fails("key 'k\\xffy'") },
  { "a non-ASCII byte in an extension value", "v=STSv1; id=1; k=v\x80",
    fails("value 'v\\x80'") },
  { "a CRLF at the end", "v=STSv1; id=abc\r\n", fails("id 'abc\\x0d\\x0a'") },
  { "a record of 4097 bytes", at_limit .. "v", fails("record is 4097 bytes, more than the 4096") },
}
