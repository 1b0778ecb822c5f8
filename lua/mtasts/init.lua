--- mtasts: MTA-STS (RFC 8461) and SMTP TLS Reporting (RFC 8460) for Lua 5.4.
-- This facade is what applications require: the parsers (pure functions) and mtasts.open,
-- the client. Delivery decisions are in mtasts.delivery, reports in mtasts.tlsrpt.
-- Reference: docs/parsing.md, docs/client.md.
local core = require("mtasts.core")
local tlsrpt = require("mtasts.tlsrpt")
local client = require("mtasts.client")

local _M = {
  _VERSION = core.version,
  limits = core.limits,
  tlsrpt = tlsrpt,
}

--- Parse an MTA-STS TXT record (the strings of one record, concatenated).
-- Returns {version="STSv1", id=, extensions={{key=,value=},...}} or nil, msg, "record-syntax".
_M.parse_record = core.parse_record

--- Parse a policy file body.
-- Returns {version="STSv1", mode=, max_age=, mx={...}, extensions={...}}
-- or nil, msg, "policy-syntax".
_M.parse_policy = core.parse_policy

--- True when `host` is covered by one of the policy's mx patterns (RFC 8461 §4.1).
_M.matches = core.matches

--- A domain name as lower-case A-labels and as U-labels, or nil, msg, "domain-syntax".
_M.domain = core.domain

--- True when a TXT string is an MTA-STS record candidate ("v=STSv1" and a delimiter).
_M.is_record = core.is_sts_record

--- The versions of the libraries the module runs on: { lua =, curl =, openssl =, bdb =,
-- unbound =, idn2 =, zlib = } (what `mtasts --version` prints).
_M.library_versions = core.library_versions

--- Open a client: the policy cache, a resolver and a fetcher (docs/client.md).
_M.open = client.open

return _M
