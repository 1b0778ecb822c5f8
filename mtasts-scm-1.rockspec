rockspec_format = "3.0"
package = "mtasts"
version = "scm-1"
source = { url = "git+https://example.invalid/mtasts.git" }
description = {
  summary = "MTA-STS (RFC 8461) and SMTP TLS Reporting (RFC 8460) for mail servers, in C and Lua",
  detailed = [[
    Strict parsers, a Berkeley DB policy cache, an HTTPS policy fetcher and a DNS resolver in a
    C module, with Lua modules for policy lookup, delivery decisions and TLSRPT reports.
  ]],
  license = "MIT",
}
dependencies = { "lua >= 5.4, < 5.5" }
external_dependencies = {
  BDB = { header = "db.h", library = "db-5.3" },
  IDN2 = { header = "idn2.h", library = "idn2" },
  ZLIB = { header = "zlib.h", library = "z" },
}
build = {
  type = "make",
  build_variables = {
    CFLAGS = "$(CFLAGS)", LIBFLAG = "$(LIBFLAG)", LUA_INCDIR = "$(LUA_INCDIR)",
    BDB_INCDIR = "$(BDB_INCDIR)", BDB_LIBDIR = "$(BDB_LIBDIR)", DEPS = "true",
  },
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)", INST_LUADIR = "$(LUADIR)", INST_BINDIR = "$(BINDIR)",
    DEPS = "true",
  },
}
test_dependencies = { "busted >= 2.1" }
test = { type = "busted" }
