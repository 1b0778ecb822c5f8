--- mtasts.tlsrpt: SMTP TLS Reporting (RFC 8460) for callers: the formats of
-- mtasts.tlsrpt.format (records, result tables, report JSON, file names, messages, incoming
-- reports) and `open`, the result store of mtasts.tlsrpt.store. Reference: docs/tlsrpt.md,
-- docs/incoming-reports.md.
local format = require("mtasts.tlsrpt.format")
local store = require("mtasts.tlsrpt.store")

local _M = {}
for k, v in pairs(format) do _M[k] = v end

--- Open the result store (docs/tlsrpt.md): mtasts.tlsrpt.store.open.
_M.open = store.open

return _M
