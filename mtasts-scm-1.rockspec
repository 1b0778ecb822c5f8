rockspec_format = "3.0"
package = "mtasts"
version = "scm-1"
source = { url = "git+https://example.invalid/mtasts.git" }
description = {
  summary = "MTA-STS (RFC 8461) and SMTP TLS Reporting (RFC 8460) for mail servers, in C and Lua",
  detailed = [[
    Strict parsers, a Berkeley DB policy cache, an HTTPS policy fetcher and a DNS resolver in a
    C module, with Lua modules for policy lookup, delivery decisions and TLSRPT reports, a
    Postfix socketmap server, an OpenSMTPD filter and the mtasts command.
  ]],
  license = "MIT",
}
-- Inside a clone, .luarocks/config-5.4.lua counts Debian's lua-cjson, lua-argparse and
-- lua-cqueues as installed (luarocks cannot see Debian's packages) and the build checks that
-- they load; elsewhere luarocks installs these from its servers.
dependencies = {
  "lua >= 5.4, < 5.5",
  "lua-cjson >= 2.1",
  "argparse >= 0.7",
  "cqueues >= 20200726",
}
-- curl.h sits in a multiarch directory where luarocks does not look: the library only.
external_dependencies = {
  BDB = { header = "db.h", library = "db-5.3" },
  CURL = { library = "curl" },
  OPENSSL = { header = "openssl/ssl.h", library = "ssl" },
  UNBOUND = { header = "unbound.h", library = "unbound" },
  IDN2 = { header = "idn2.h", library = "idn2" },
  ZLIB = { header = "zlib.h", library = "z" },
  HIREDIS = { header = "hiredis/hiredis.h", library = "hiredis" },
}
build = {
  type = "make",
  build_variables = {
    CFLAGS = "$(CFLAGS)", LIBFLAG = "$(LIBFLAG)", LUA_INCDIR = "$(LUA_INCDIR)",
    BDB_INCDIR = "$(BDB_INCDIR)", BDB_LIBDIR = "$(BDB_LIBDIR)", LUA = "$(LUA)",
    CHECK_LUA_DEPS = "$(MTASTS_CHECK_LUA_DEPS)", DEPS = "true",
  },
  install_target = "install-lua",
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)", INST_LUADIR = "$(LUADIR)", INST_BINDIR = "$(BINDIR)",
    DEPS = "true",
  },
}
test_dependencies = { "busted >= 2.1" }
test = { type = "busted" }
