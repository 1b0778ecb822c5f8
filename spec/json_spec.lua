-- mtasts.json: deterministic JSON with empty tables as arrays.
local json = require("mtasts.json")
local cjson = require("cjson")

describe("mtasts.json", function()
  it("encodes values, sorting object keys", function()
    assert.equal('{"a":[1,2,3],"b":{"c":true,"d":null},"e":"x\\"y\\n","f":1.5,"g":[]}',
      json.encode({ g = {}, e = 'x"y\n', f = 1.5, a = { 1, 2, 3 },
        b = { d = json.null, c = true } }))
  end)
  it("escapes control characters and round-trips through cjson", function()
    local v = { s = "\0\1\31 é \\ /", n = -7, list = { "a", { k = "v" } } }
    assert.same(v, cjson.decode(json.encode(v)))
  end)
  it("raises on what JSON cannot hold", function()
    assert.has_error(function() json.encode({ f = print }) end, "json: cannot encode a function")
    local ok, err = pcall(json.encode, 0 / 0)
    assert.is_false(ok)
    assert.matches("^json: cannot encode %-?nan$", err)   -- "-nan" or "nan", by C library
    assert.has_error(function() json.encode({ [true] = 1 }) end,
      "json: object keys must be strings")
    local t = {}
    t.self = t
    assert.has_error(function() json.encode(t) end, "json: nested too deeply")
  end)
end)
