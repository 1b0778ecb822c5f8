-- LuaRocks' project configuration for this clone (LuaRocks reads it when it runs here, since
-- both .luarocks/ and lua_modules/ exist; `luarocks make` without --tree installs into
-- lua_modules/). luarocks knows nothing of Debian's packages, so without this it would try
-- to download lua-cjson, argparse and cqueues, which scripts/deps installs as lua-cjson,
-- lua-argparse and lua-cqueues. Here they count as provided by the system, and the build
-- (Makefile, CHECK_LUA_DEPS) makes sure that lua5.4 can really load them.
rocks_provided = {
  ["lua-cjson"] = "2.1.0-1",
  argparse = "0.7.1-1",
  cqueues = "20200726.54-0",
}
variables = { MTASTS_CHECK_LUA_DEPS = "cjson argparse cqueues" }
