-- TLSRPT TXT record cases (docs/conformance.md §7.1, RFC 8460 §3): { name, input, expect }.
local function rec(rua, ...)
  local ext = {}
  local kv = { ... }
  for i = 1, #kv, 2 do ext[#ext + 1] = { key = kv[i], value = kv[i + 1] } end
  return { version = "TLSRPTv1", rua = rua, extensions = ext }
end
local function fails(text) return { err = text } end
local V = "v=TLSRPTv1; "

return {
  -- valid
  { "the RFC 8460 mailto example", "v=TLSRPTv1; rua=mailto:reports@example.com",
    rec({ "mailto:reports@example.com" }) },
  { "the RFC 8460 https example", "v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt",
    rec({ "https://reporting.example.com/v1/tlsrpt" }) },
  { "two URIs separated by a comma",
    V .. "rua=mailto:a@example.com,https://r.example.com/x",
    rec({ "mailto:a@example.com", "https://r.example.com/x" }) },
  { "spaces and tabs around commas",
    V .. "rua=mailto:a@example.com , \thttps://r.example.com",
    rec({ "mailto:a@example.com", "https://r.example.com" }) },
  { "rua repeated", V .. "rua=mailto:a@x.example; rua=mailto:b@x.example",
    rec({ "mailto:a@x.example", "mailto:b@x.example" }) },
  { "an extension", V .. "rua=mailto:a@x.example; ext=1",
    rec({ "mailto:a@x.example" }, "ext", "1") },
  { "a trailing separator", "v=TLSRPTv1;rua=mailto:a@x.example;",
    rec({ "mailto:a@x.example" }) },
  { "a mailto with a query", V .. "rua=mailto:a@x.example?subject=tls",
    rec({ "mailto:a@x.example?subject=tls" }) },
  { "schemes are case-insensitive", V .. "rua=MAILTO:a@x.example,HTTPS://r.example",
    rec({ "MAILTO:a@x.example", "HTTPS://r.example" }) },
  { "an https URI with a port and a query", V .. "rua=https://r.example.com:8443/p?a=b",
    rec({ "https://r.example.com:8443/p?a=b" }) },
  -- invalid
  { "v=TLSRPTv10", "v=TLSRPTv10; rua=mailto:a@x.example", fails("does not start with") },
  { "the version tag is case-sensitive", "v=tlsrptv1; rua=mailto:a@x.example",
    fails("does not start with v=TLSRPTv1") },
  { "a bare version", "v=TLSRPTv1", fails("record has no field after v=TLSRPTv1") },
  { "no rua", V .. "ext=1", fails("record has no rua field") },
  { "an empty rua", V .. "rua=", fails("rua is empty") },
  { "an http URI", V .. "rua=http://r.example.com", fails("is not a mailto: or https: URI") },
  { "an empty URI between commas", V .. "rua=mailto:a@x.example,,mailto:b@x.example",
    fails("empty URI in rua") },
  { "a trailing comma", V .. "rua=mailto:a@x.example,", fails("empty URI in rua") },
  { "a mailto without '@'", V .. "rua=mailto:reports", fails("is not mailto:user@domain") },
  { "a mailto without a local part", V .. "rua=mailto:@x.example",
    fails("is not mailto:user@domain") },
  { "a mailto without a domain", V .. "rua=mailto:a@", fails("is not mailto:user@domain") },
  { "a mailto with two '@'", V .. "rua=mailto:a@b@x.example", fails("has two '@'") },
  { "an https URI without a host", V .. "rua=https:///path", fails("has no host") },
  { "a space inside a URI", V .. "rua=mailto:a b@x.example", fails("contains a space") },
  { "a NUL byte in a URI", V .. "rua=mailto:a\0@x.example", fails("contains a space, control") },
  { "a non-ASCII byte in a URI", V .. "rua=mailto:r\xc3\xa9@x.example",
    fails("or non-ASCII byte") },
  { "a NUL byte in an extension value", V .. "rua=mailto:a@x.example; e=\0",
    fails("value '\\x00' of 'e'") },
  { "an empty field", "v=TLSRPTv1;;rua=mailto:a@x.example", fails("is empty") },
  { "an STS record is not a TLSRPT record", "v=STSv1; id=1", fails("does not start with") },
  { "a record over 4096 bytes", V .. "rua=mailto:a@x.example; e=" .. string.rep("x", 4096),
    fails("more than the 4096 allowed") },
}
