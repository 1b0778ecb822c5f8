--- mtasts.tlsrpt: SMTP TLS Reporting (RFC 8460). For now the TXT record parser; result
-- recording and reports join it later. Reference: docs/parsing.md.
local core = require("mtasts.core")

local _M = {}

--- Parse a TLSRPT TXT record (`_smtp._tls.<domain>`, strings concatenated).
-- Returns {version="TLSRPTv1", rua={...}, extensions={...}} or nil, msg, "record-syntax".
_M.parse_record = core.parse_tlsrpt_record

--- True when a TXT string is a TLSRPT record candidate ("v=TLSRPTv1" and a delimiter).
_M.is_record = core.is_tlsrpt_record

return _M
