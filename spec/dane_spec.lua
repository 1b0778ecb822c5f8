-- mtasts.dane.verify (docs/dane.md): a chain against TLSA records on OpenSSL's DANE code, with
-- RFC 7672's rules for SMTP. The certificates are made with the openssl CLI in a temporary
-- directory (spec/support/dane_vectors.lua); no network.
local dane = require("mtasts.dane")
local util = require("support.util")
local vectors = require("support.dane_vectors")

local DAY = 86400

-- The message of a call that raises (without its position).
local function raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return (tostring(err):gsub("^[^:]*:%d+: ", ""))
end

describe("mtasts.dane.verify", function()
  local v, cleanup, now, opts

  setup(function()
    local dir
    dir, cleanup = util.tmpdir()
    v = vectors.new(dir)
    now = os.time()
    opts = { names = { "mx1.example.com" }, now = now }
  end)
  teardown(function() cleanup() end)

  local function passes(chain, tlsa, o, expect)
    local ok, info = dane.verify(chain, tlsa, o or opts)
    assert.is_true(ok, info and info.reason)
    assert.same(expect, info)
  end

  local function fails(chain, tlsa, o, result_type, reason)
    local ok, info = dane.verify(chain, tlsa, o or opts)
    assert.is_false(ok)
    assert.equal(result_type, info.result_type, info.reason)
    assert.is_string(info.reason)
    if reason then assert.matches(reason, info.reason, 1, true) end
  end

  describe("usages, selectors, matching types", function()
    it("DANE-EE(3) matches the leaf with every selector and matching type", function()
      for sel = 0, 1 do
        for mt = 0, 2 do
          passes(v.chain.der, { v:tlsa(3, sel, mt, "leaf") }, nil,
            { usage = 3, selector = sel, mtype = mt, depth = 0 })
          passes(v.chain.pem, { v:tlsa(3, sel, mt, "leaf") }, nil,
            { usage = 3, selector = sel, mtype = mt, depth = 0 })
        end
      end
    end)

    it("DANE-TA(2) matches the intermediate (depth 1) and the root (depth 2) in the chain",
      function()
      for sel = 0, 1 do
        for mt = 0, 2 do
          passes(v.chain.der, { v:tlsa(2, sel, mt, "int") }, nil,
            { usage = 2, selector = sel, mtype = mt, depth = 1 })
          passes(v.chain.der, { v:tlsa(2, sel, mt, "root") }, nil,
            { usage = 2, selector = sel, mtype = mt, depth = 2 })
        end
      end
    end)

    it("PKIX-TA(0) and PKIX-EE(1) are unusable in SMTP, even when they match", function()
      for usage = 0, 1 do
        for sel = 0, 1 do
          for mt = 0, 2 do
            fails(v.chain.der, { v:tlsa(usage, sel, mt, usage == 1 and "leaf" or "root") }, nil,
              "tlsa-invalid", "1 with a PKIX or unknown usage")
          end
        end
      end
    end)

    it("DANE-EE given the digest of another certificate does not match", function()
      fails(v.chain.der, { v:tlsa(3, 0, 1, "int") }, nil, "validation-failure",
        "no usable TLSA record matches the chain")
      fails(v.chain.der, { v:tlsa(3, 1, 2, "other") }, nil, "validation-failure")
    end)

    it("a DANE-TA record of the leaf itself is no trust anchor", function()
      fails(v.chain.der, { v:tlsa(2, 0, 1, "leaf") }, nil, "validation-failure")
    end)

    it("when DANE-EE and DANE-TA records both match, the leaf's is reported", function()
      passes(v.chain.der, { v:tlsa(2, 1, 1, "int"), v:tlsa(3, 1, 1, "leaf") }, nil,
        { usage = 3, selector = 1, mtype = 1, depth = 0 })
    end)
  end)

  describe("trust anchors outside the chain", function()
    it("DANE-TA 2 0 0 (the full certificate in the record) completes the chain", function()
      passes(v:chain_of("leaf", "int").der, { v:tlsa(2, 0, 0, "root") }, nil,
        { usage = 2, selector = 0, mtype = 0, depth = 2 })
      passes(v:chain_of("leaf").der, { v:tlsa(2, 0, 0, "int") }, nil,
        { usage = 2, selector = 0, mtype = 0, depth = 1 })
    end)

    it("DANE-TA 2 1 0 (the full public key) verifies the top certificate's signature",
      function()
      passes(v:chain_of("leaf", "int").der, { v:tlsa(2, 1, 0, "root") }, nil,
        { usage = 2, selector = 1, mtype = 0, depth = 1 })
      passes(v:chain_of("leaf").der, { v:tlsa(2, 1, 0, "int") }, nil,
        { usage = 2, selector = 1, mtype = 0, depth = 0 })
    end)

    it("a digest of a trust anchor the chain lacks cannot match", function()
      for sel = 0, 1 do
        for mt = 1, 2 do
          fails(v:chain_of("leaf", "int").der, { v:tlsa(2, sel, mt, "root") }, nil,
            "validation-failure")
        end
      end
    end)

    it("an unrelated trust anchor, in the record or in the chain, does not verify", function()
      fails(v:chain_of("leaf", "int").der, { v:tlsa(2, 0, 0, "other") }, nil,
        "validation-failure")
      fails(v:chain_of("leaf", "int").der, { v:tlsa(2, 1, 0, "other") }, nil,
        "validation-failure")
      fails(v:chain_of("leaf", "int", "other").der, { v:tlsa(2, 0, 1, "other") }, nil,
        "validation-failure")
    end)

    it("a chain with a missing link does not verify", function()
      fails(v:chain_of("leaf", "root").der, { v:tlsa(2, 0, 1, "root") }, nil,
        "validation-failure")
    end)
  end)

  describe("names (DANE-TA only)", function()
    local ta
    setup(function() ta = { v:tlsa(2, 1, 1, "int") } end)
    local function with(names, t) return { names = names, now = t or now } end

    it("fails with certificate-host-mismatch for a name the leaf does not have", function()
      fails(v.chain.der, ta, with({ "mx2.example.com" }), "certificate-host-mismatch",
        "matches none of 'mx2.example.com'")
      fails(v.chain.der, ta, with({ "example.com", "mx1.example.net" }),
        "certificate-host-mismatch", "'example.com', 'mx1.example.net'")
    end)

    it("passes when any of the names matches any of the leaf's names", function()
      local expect = { usage = 2, selector = 1, mtype = 1, depth = 1 }
      passes(v.chain.der, ta, with({ "mx2.example.com", "mail.example.net" }), expect)
      passes(v.chain.der, ta, with({ "MX1.Example.COM" }), expect)
      passes(v.chain.der, ta, with({ "mx1.example.com." }), expect)
    end)

    it("takes a wildcard in the leftmost label, and only a whole one", function()
      local wild = v:chain_of("wild", "int", "root").der
      passes(wild, ta, with({ "mx1.example.org" }), { usage = 2, selector = 1, mtype = 1,
        depth = 1 })
      fails(wild, ta, with({ "a.mx1.example.org" }), "certificate-host-mismatch")
      fails(wild, ta, with({ "example.org" }), "certificate-host-mismatch")
      fails(v:chain_of("partial", "int").der, ta, with({ "mx1.example.org" }),
        "certificate-host-mismatch")
    end)

    it("checks the subject CN of a leaf without DNS names", function()
      local cn = v:chain_of("cn", "int").der
      passes(cn, ta, with({ "mx9.example.com" }), { usage = 2, selector = 1, mtype = 1,
        depth = 1 })
      fails(cn, ta, with({ "mx1.example.com" }), "certificate-host-mismatch")
    end)

    it("DANE-EE ignores the names", function()
      passes(v.chain.der, { v:tlsa(3, 1, 1, "leaf") }, with({ "unrelated.example" }),
        { usage = 3, selector = 1, mtype = 1, depth = 0 })
      passes(v:chain_of("partial").der, { v:tlsa(3, 0, 2, "partial") }, with({ "x.example" }),
        { usage = 3, selector = 0, mtype = 2, depth = 0 })
    end)
  end)

  describe("dates", function()
    it("DANE-EE passes with an expired or not yet valid leaf", function()
      for _, t in ipairs({ now + 2 * DAY, now - 2 * DAY, now + 20000 * DAY }) do
        passes(v.chain.der, { v:tlsa(3, 1, 1, "leaf") }, { names = opts.names, now = t },
          { usage = 3, selector = 1, mtype = 1, depth = 0 })
      end
    end)

    it("DANE-TA fails with certificate-expired for an expired or not yet valid leaf", function()
      fails(v.chain.der, { v:tlsa(2, 0, 1, "int") }, { names = opts.names, now = now + 2 * DAY },
        "certificate-expired", "certificate at depth 0: certificate has expired")
      fails(v.chain.der, { v:tlsa(2, 0, 1, "int") }, { names = opts.names, now = now - 2 * DAY },
        "certificate-expired", "certificate at depth 0: certificate is not yet valid")
    end)

    it("DANE-TA takes the time from opts.now, not the clock", function()
      passes(v.chain.der, { v:tlsa(2, 0, 1, "int") }, { names = opts.names, now = now + 3600 },
        { usage = 2, selector = 0, mtype = 1, depth = 1 })
    end)

    it("a name failure is reported before the dates", function()
      fails(v.chain.der, { v:tlsa(2, 0, 1, "int") }, { names = { "x.example" },
        now = now + 2 * DAY }, "certificate-host-mismatch")
    end)
  end)

  describe("malformed and mixed record sets", function()
    local leaf
    setup(function() leaf = v.certs.leaf end)

    it("are tlsa-invalid when no record is usable", function()
      local bad = {
        { usage = 3, selector = 0, mtype = 1, data = leaf.data[0][1]:sub(2) },   -- 31 bytes
        { usage = 3, selector = 1, mtype = 1, data = leaf.data[1][2] },          -- 64 for 32
        { usage = 3, selector = 1, mtype = 2, data = leaf.data[1][1] },          -- 32 for 64
        { usage = 3, selector = 0, mtype = 0, data = "not a certificate" },
        { usage = 2, selector = 1, mtype = 0, data = leaf.spki:sub(1, -2) },
        { usage = 3, selector = 2, mtype = 1, data = leaf.data[1][1] },          -- selector 2
        { usage = 3, selector = 1, mtype = 3, data = leaf.data[1][1] },          -- mtype 3
        { usage = 3, selector = 1, mtype = 255, data = leaf.data[1][1] },
        { usage = 3, selector = 1, mtype = 1, data = "" },
      }
      for _, r in ipairs(bad) do
        fails(v.chain.der, { r }, nil, "tlsa-invalid", "0 with a PKIX or unknown usage, 1 with")
      end
      fails(v.chain.der, bad, nil, "tlsa-invalid", "no usable TLSA record among 9")
    end)

    it("are tlsa-invalid with unknown usages", function()
      for _, usage in ipairs({ 4, 128, 255 }) do
        fails(v.chain.der, { { usage = usage, selector = 1, mtype = 1, data = leaf.data[1][1] } },
          nil, "tlsa-invalid", "1 with a PKIX or unknown usage")
      end
    end)

    it("are tlsa-invalid when empty", function()
      fails(v.chain.der, {}, nil, "tlsa-invalid", "no usable TLSA record among 0")
    end)

    it("ignore the unusable records beside a usable one", function()
      local set = {
        { usage = 1, selector = 1, mtype = 1, data = leaf.data[1][1] },
        { usage = 3, selector = 1, mtype = 1, data = leaf.data[1][1]:sub(2) },
        { usage = 7, selector = 1, mtype = 1, data = leaf.data[1][1] },
        v:tlsa(3, 0, 2, "leaf"),
      }
      passes(v.chain.der, set, nil, { usage = 3, selector = 0, mtype = 2, depth = 0 })
      set[4] = v:tlsa(2, 1, 1, "int")
      passes(v.chain.der, set, nil, { usage = 2, selector = 1, mtype = 1, depth = 1 })
    end)

    it("a matching PKIX-EE record beside a usable one that does not match fails", function()
      fails(v.chain.der, { v:tlsa(1, 1, 1, "leaf"), v:tlsa(3, 1, 1, "other") }, nil,
        "validation-failure")
    end)
  end)

  describe("the chain", function()
    local ee
    setup(function() ee = { v:tlsa(3, 1, 1, "leaf") } end)

    it("is PEM text, with text around the blocks, or DER strings", function()
      local expect = { usage = 3, selector = 1, mtype = 1, depth = 0 }
      passes("subject=mx1\n" .. v.chain.pem .. "trailing words\n", ee, nil, expect)
      passes(v.certs.leaf.pem, ee, nil, expect)
      passes({ v.certs.leaf.der }, ee, nil, expect)
    end)

    it("that does not parse is a validation-failure, never an error", function()
      local pem = v.certs.leaf.pem
      local broken = pem:gsub("\n(.)(.)", "\n%2%1", 1)   -- swap two base64 characters
      fails(broken, ee, nil, "validation-failure")
      fails(pem:sub(1, 200), ee, nil, "validation-failure", "certificate 1 of the chain")
      fails(pem .. v.certs.int.pem:sub(1, 100), ee, nil, "validation-failure",
        "certificate 2 of the chain does not parse")
      fails("", ee, nil, "validation-failure", "the chain holds no certificate")
      fails("junk", ee, nil, "validation-failure", "the chain holds no certificate")
      fails({}, ee, nil, "validation-failure", "the chain holds no certificate")
      fails({ v.certs.leaf.der, "junk" }, ee, nil, "validation-failure",
        "certificate 2 of the chain does not parse")
      fails({ v.certs.leaf.der .. "\0" }, ee, nil, "validation-failure", "trailing bytes")
      fails({ v.certs.leaf.der:sub(1, -2) }, ee, nil, "validation-failure")
    end)

    it("never raises on random chains and record data", function()
      util.seed()
      for _ = 1, 200 do
        local chain = math.random(2) == 1 and util.random_bytes(math.random(0, 300))
          or { util.random_bytes(math.random(0, 300)), v.certs.int.der }
        local rec = { usage = math.random(0, 255), selector = math.random(0, 3),
          mtype = math.random(0, 3), data = util.random_bytes(math.random(0, 80)) }
        local ok, info = dane.verify(chain, { rec, v:tlsa(2, 1, 1, "int") }, opts)
        assert.is_false(ok)
        assert.is_string(info.result_type)
      end
    end)
  end)

  describe("misuse raises", function()
    local ee
    setup(function() ee = { v:tlsa(3, 1, 1, "leaf") } end)

    it("on a chain that is neither PEM text nor a list of DER strings", function()
      assert.equal("bad argument #1 to 'verify' (chain must be PEM text or a list of DER " ..
        "strings)", raised(dane.verify, 42, ee, opts))
      assert.equal("bad argument #1 to 'verify' (chain must be PEM text or a list of DER " ..
        "strings)", raised(dane.verify, { v.certs.leaf.der, 1 }, ee, opts))
    end)

    it("on records of the wrong shape", function()
      assert.equal("bad argument #2 to 'verify' (table expected, got nil)",
        raised(dane.verify, v.chain.der, nil, opts))
      assert.equal("bad argument #2 to 'verify' (tlsa[1] must be a table)",
        raised(dane.verify, v.chain.der, { "3 1 1" }, opts))
      assert.equal("bad argument #2 to 'verify' (tlsa[1].usage must be an integer 0-255)",
        raised(dane.verify, v.chain.der, { { selector = 1, mtype = 1, data = "" } }, opts))
      assert.equal("bad argument #2 to 'verify' (tlsa[1].selector must be an integer 0-255)",
        raised(dane.verify, v.chain.der, { { usage = 3, selector = 256, mtype = 1,
          data = "" } }, opts))
      assert.equal("bad argument #2 to 'verify' (tlsa[2].mtype must be an integer 0-255)",
        raised(dane.verify, v.chain.der, { ee[1], { usage = 3, selector = 1, mtype = 1.5,
          data = "" } }, opts))
      assert.equal("bad argument #2 to 'verify' (tlsa[1].data must be a string)",
        raised(dane.verify, v.chain.der, { { usage = 3, selector = 1, mtype = 1 } }, opts))
    end)

    it("on options that are missing, unknown or of the wrong type", function()
      local function msg(why) return "bad argument #3 to 'verify' (" .. why .. ")" end
      assert.equal("bad argument #3 to 'verify' (table expected, got nil)",
        raised(dane.verify, v.chain.der, ee))
      assert.equal(msg("unknown option 'name'"),
        raised(dane.verify, v.chain.der, ee, { name = "mx1.example.com", now = now }))
      assert.equal(msg("now must be an integer"),
        raised(dane.verify, v.chain.der, ee, { names = opts.names }))
      assert.equal(msg("now must be an integer"),
        raised(dane.verify, v.chain.der, ee, { names = opts.names, now = now + 0.5 }))
      assert.equal(msg("names must be a list of 1 to 64 names"),
        raised(dane.verify, v.chain.der, ee, { now = now }))
      assert.equal(msg("names must be a list of 1 to 64 names"),
        raised(dane.verify, v.chain.der, ee, { names = "mx1.example.com", now = now }))
      assert.equal(msg("names must be a list of 1 to 64 names"),
        raised(dane.verify, v.chain.der, ee, { names = {}, now = now }))
      assert.equal(msg("names must be strings without NUL bytes"),
        raised(dane.verify, v.chain.der, ee, { names = { "a.example\0b" }, now = now }))
      assert.equal(msg("names must be strings without NUL bytes"),
        raised(dane.verify, v.chain.der, ee, { names = { 1 }, now = now }))
      assert.equal(msg("name '' is empty"),
        raised(dane.verify, v.chain.der, ee, { names = { "" }, now = now }))
      assert.equal(msg("name '.' is empty"),
        raised(dane.verify, v.chain.der, ee, { names = { "." }, now = now }))
      assert.matches("is over 253 bytes",
        raised(dane.verify, v.chain.der, ee, { names = { ("a"):rep(300) }, now = now }), 1,
        true)
    end)
  end)
end)
