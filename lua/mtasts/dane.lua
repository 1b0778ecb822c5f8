--- mtasts.dane: DANE (RFC 7672) for Lua hosts that do their own TLS. The primitive: a server's
-- certificate chain verified against its TLSA records, on OpenSSL's own DANE code in
-- module/dane.c. Reference: docs/dane.md.
local core = require("mtasts.core")

local _M = {}

--- Verify `chain` (PEM text, or a list of DER strings, leaf first) against `tlsa`
-- ({ {usage =, selector =, mtype =, data =}, ... }) for any of opts.names at opts.now.
-- Returns true, {usage, selector, mtype, depth} of the record that matched, or false,
-- {result_type, reason} with the RFC 8460 result type. Raises on misuse only.
_M.verify = core.dane_verify

return _M
