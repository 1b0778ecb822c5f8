# mtasts: build, test and tooling. `make help` lists the targets.
# Every path variable can be overridden (that is how the rockspec drives it).
PKG_CONFIG ?= pkg-config
LUA        ?= lua5.4
LUA_PC     ?= lua5.4
LUA_INCDIR ?=
BDB_INCDIR ?= /usr/include
BDB_LIBDIR ?= /usr/lib
BDB_LIB    ?= db-5.3
CFLAGS     ?= -O2 -fPIC -g
LIBFLAG    ?= -shared
# Installation: `make install PREFIX=/usr DESTDIR=/tmp/stage`. The Lua directories default to
# where lua5.4 looks first under PREFIX.
PREFIX     ?= /usr/local
DESTDIR    ?=
INST_LIBDIR ?= $(PREFIX)/lib/lua/5.4
INST_LUADIR ?= $(PREFIX)/share/lua/5.4
INST_BINDIR ?= $(PREFIX)/bin
MANDIR     ?= $(PREFIX)/share/man
DOCDIR     ?= $(PREFIX)/share/doc/mtasts
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
SYSCTLDIR  ?= $(PREFIX)/lib/sysctl.d
# Installs missing Debian packages for a group (build, test, fuzz, rock, bench). The rockspec
# sets DEPS=true: luarocks users bring their own libraries.
DEPS       ?= scripts/deps
FUZZ_SECONDS ?= 60
FUZZ_CC    ?= clang
BUSTED     ?= $(LUA) /usr/bin/busted
# Lua modules the build checks that $(LUA) can load (the rockspec sets it inside a clone, where
# luarocks is told that Debian's packages provide them: .luarocks/config-5.4.lua).
CHECK_LUA_DEPS ?=

# Recursive (=), not immediate (:=): pkg-config and the .pc files it reads may come with the
# packages that scripts/deps installs, which happens after make has read this file. These are
# expanded when a recipe runs, after its deps-* prerequisite.
LUA_CFLAGS = $(if $(LUA_INCDIR),-I$(LUA_INCDIR),$(shell $(PKG_CONFIG) --cflags $(LUA_PC) 2>/dev/null))
DEP_CFLAGS = $(shell $(PKG_CONFIG) --cflags libidn2 libcurl openssl 2>/dev/null)
DEP_LIBS   = -l$(BDB_LIB) -lidn2 -lunbound -lhiredis -lz $(shell $(PKG_CONFIG) --libs libcurl openssl 2>/dev/null) -lpthread
XCFLAGS    := -std=c99 -D_DEFAULT_SOURCE -fvisibility=hidden -MMD \
              -Wall -Wextra -Wmissing-prototypes -Wstrict-prototypes -Wshadow
SAN_FLAGS  := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer

SRCS := $(wildcard module/*.c)
OBJS := $(patsubst module/%.c,build/obj/%.o,$(SRCS))
ASAN_OBJS := $(patsubst module/%.c,build/asan/obj/%.o,$(SRCS))
# the pure C parts (no Lua header): what the fuzz harnesses link
PURE := module/parse.c module/domain.c module/row.c module/rdata.c module/codec.c module/dane.c \
        module/dgram.c module/redis.c
HDRS := $(wildcard module/*.h)
HARNESSES := $(patsubst fuzz/fuzz_%.c,%,$(wildcard fuzz/fuzz_*.c))

all: build/mtasts/core.so $(if $(strip $(CHECK_LUA_DEPS)),check-lua-deps)

check-lua-deps:
	@miss=""; for m in $(CHECK_LUA_DEPS); do \
	  $(LUA) -e "require('$$m')" >/dev/null 2>&1 || miss="$$miss $$m"; done; \
	if [ -n "$$miss" ]; then echo "mtasts: $(LUA) cannot load the Lua modules:$$miss" \
	  "(on Debian: apt-get install lua-cjson lua-argparse lua-cqueues)" >&2; exit 1; fi

build/obj/%.o: module/%.c | deps-build
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(XCFLAGS) $(LUA_CFLAGS) -I$(BDB_INCDIR) $(DEP_CFLAGS) -c -o $@ $<

build/mtasts/core.so: $(OBJS)
	@mkdir -p $(@D)
	$(CC) $(LIBFLAG) -o $@ $(OBJS) -L$(BDB_LIBDIR) $(DEP_LIBS)

# --- sanitizer build: the same module with ASan and UBSan, for `make asan` (timed assertions
# get 3 times their time there: the preloaded runtime slows every malloc, OpenSSL's too) ---
build/asan/obj/%.o: module/%.c | deps-build
	@mkdir -p $(@D)
	$(CC) -O1 -g -fPIC $(SAN_FLAGS) $(XCFLAGS) $(LUA_CFLAGS) -I$(BDB_INCDIR) $(DEP_CFLAGS) -c -o $@ $<

build/asan/mtasts/core.so: $(ASAN_OBJS)
	@mkdir -p $(@D)
	$(CC) -shared $(SAN_FLAGS) -o $@ $(ASAN_OBJS) -L$(BDB_LIBDIR) $(DEP_LIBS)

# --- fuzz harnesses: libFuzzer builds, and replay builds (gcc, ASan/UBSan) for `make test` ---
build/fuzz/%: fuzz/fuzz_%.c $(PURE) $(HDRS) | deps-fuzz
	@mkdir -p $(@D)
	$(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -Imodule $(DEP_CFLAGS) -o $@ $< $(PURE) $(DEP_LIBS)

build/replay/%: fuzz/fuzz_%.c fuzz/replay.c $(PURE) $(HDRS) | deps-build
	@mkdir -p $(@D)
	$(CC) -g -O1 $(SAN_FLAGS) -std=c99 -D_DEFAULT_SOURCE -Wall -Wextra \
	  -Imodule $(DEP_CFLAGS) -o $@ $< fuzz/replay.c $(PURE) $(DEP_LIBS)

# The Lua parsers' harness embeds Lua 5.4 with the whole module linked in (explicit rules
# win over the patterns above).
LUA_HARNESS_SRC := fuzz/fuzz_lua.c $(SRCS)
LUA_HARNESS_FLAGS = -Imodule -I$(BDB_INCDIR) $(LUA_CFLAGS) $(DEP_CFLAGS) -D_DEFAULT_SOURCE
build/fuzz/lua: $(LUA_HARNESS_SRC) $(HDRS) | deps-fuzz
	@mkdir -p $(@D)
	$(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  $(LUA_HARNESS_FLAGS) -o $@ $(LUA_HARNESS_SRC) -llua5.4 -L$(BDB_LIBDIR) $(DEP_LIBS)

build/replay/lua: $(LUA_HARNESS_SRC) fuzz/replay.c $(HDRS) | deps-build
	@mkdir -p $(@D)
	$(CC) -g -O1 $(SAN_FLAGS) -std=c99 $(LUA_HARNESS_FLAGS) \
	  -o $@ $(LUA_HARNESS_SRC) fuzz/replay.c -llua5.4 -L$(BDB_LIBDIR) $(DEP_LIBS)

# OpenSMTPD, unpacked (not installed: it conflicts with postfix), for its integration spec
build/opensmtpd/usr/sbin/smtpd: | deps-test
	scripts/opensmtpd build/opensmtpd

# fixture helpers the specs start (spec/support/*.c)
build/support/%: spec/support/%.c spec/support/loopback.h | deps-test
	@mkdir -p $(@D)
	$(CC) -O1 -g -Wall -Wextra -o $@ $< -lssl -lcrypto

build/fuzz/seeds/.stamp: fuzz/seeds.lua $(wildcard spec/cases/*.lua) | deps-build
	$(LUA) fuzz/seeds.lua build/fuzz/seeds
	@touch $@

deps-%:
	@$(DEPS) $*

SUPPORT := $(patsubst spec/support/%.c,build/support/%,$(wildcard spec/support/*.c))
OPENSMTPD := build/opensmtpd/usr/sbin/smtpd

test: deps-test all $(SUPPORT) $(OPENSMTPD) $(addprefix build/replay/,$(HARNESSES)) build/fuzz/seeds/.stamp
	@scripts/test all

unit: deps-test all $(SUPPORT)
	@scripts/test unit

lint: deps-test
	luacheck lua spec fuzz bench examples bin/mtasts bin/mtasts-opensmtpd-filter

asan: deps-test all build/asan/mtasts/core.so $(SUPPORT) $(OPENSMTPD) $(addprefix build/replay/,$(HARNESSES)) build/fuzz/seeds/.stamp
	@MTASTS_CPATH=./build/asan/?.so MTASTS_PRELOAD="$$($(CC) -print-file-name=libasan.so)" \
	  MTASTS_TIME_SCALE=3 scripts/test all

# Every spec under memcheck: busted in one lua5.4 process (--ignore-lua: busted would re-exec
# itself outside valgrind), and every Lua process a spec starts (the workers killed in loops,
# the socketmap servers, the filter) through spec/support/util.lua's lua_cmd, each logging to
# build/valgrind/child-PID.log (the directory is 1777: one spec runs a child as nobody).
# Timed assertions get 20 times their time (MTASTS_TIME_SCALE: memcheck also runs threads one
# at a time, so a busy libunbound thread holds up the loop).
# Any error or definite leak fails. Left out: #failedrecovery, where libdb itself loses
# ~10 KiB inside an env->open(DB_RECOVER) that fails on a damaged log.
valgrind: deps-test all $(SUPPORT) $(OPENSMTPD)
	@rm -rf build/valgrind && mkdir -p build/valgrind && chmod 1777 build/valgrind
	MTASTS_TIME_SCALE=20 MTASTS_VALGRIND=build/valgrind valgrind -q --keep-debuginfo=yes \
	  --suppressions=scripts/valgrind.supp --error-exitcode=9 --leak-check=full \
	  --show-leak-kinds=definite --errors-for-leak-kinds=definite \
	  $(LUA) /usr/bin/busted --ignore-lua --exclude-tags=failedrecovery
	@n=$$(ls build/valgrind | wc -l); bad=$$(find build/valgrind -type f -size +0 | wc -l); \
	  echo "valgrind: $$n child Lua processes checked, $$bad with a report"; \
	  if [ "$$bad" -ne 0 ]; then find build/valgrind -type f -size +0 -exec cat {} +; exit 1; fi

fuzz: $(addprefix build/fuzz/,$(HARNESSES)) build/fuzz/seeds/.stamp
	@for h in $(HARNESSES); do \
	  mkdir -p build/fuzz/work/$$h fuzz/corpus/$$h; \
	  echo "== fuzz $$h for $(FUZZ_SECONDS) s (log: build/fuzz/$$h.log)"; \
	  build/fuzz/$$h -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -max_len=70000 \
	    -timeout=10 -rss_limit_mb=2048 -artifact_prefix=build/fuzz/crash-$$h- \
	    build/fuzz/work/$$h build/fuzz/seeds/$$h fuzz/corpus/$$h > build/fuzz/$$h.log 2>&1; \
	  rc=$$?; grep -E '^(stat::(number_of_executed|average_exec|new_units|peak_rss)|SUMMARY)' \
	    build/fuzz/$$h.log; \
	  if [ $$rc -ne 0 ]; then tail -n 40 build/fuzz/$$h.log; echo "fuzz $$h FAILED"; exit 1; fi; \
	done

# Minimise what `make fuzz` found into the committed corpora (fuzz/corpus/<harness>/).
fuzz-merge: $(addprefix build/fuzz/,$(HARNESSES))
	@for h in $(HARNESSES); do mkdir -p fuzz/corpus/$$h; \
	  build/fuzz/$$h -merge=1 fuzz/corpus/$$h build/fuzz/work/$$h 2>&1 | tail -1; done

build/bench/%: bench/%.c | deps-build
	@mkdir -p $(@D)
	$(CC) -O2 -Wall -Wextra -o $@ $<

bench: deps-test deps-bench all $(SUPPORT) build/bench/smclient build/bench/smceiling
	$(LUA) bench/parse.lua
	$(LUA) bench/cache.lua
	$(LUA) bench/fetch.lua
	$(LUA) bench/client.lua
	$(LUA) bench/results.lua
	$(LUA) bench/fleet.lua
	$(LUA) bench/collector.lua
	$(LUA) bench/socketmap.lua

demo: deps-test all $(SUPPORT)
	@$(LUA) examples/demo.lua

# The demo's fixture world in the foreground, for trying the CLI by hand; Ctrl-C stops it.
world: deps-test all $(SUPPORT)
	@$(LUA) examples/world.lua

# --- installation ---
# install-lua: the module, the Lua files and the two programs as they are (what the rockspec
# installs; luarocks wraps the programs with its own paths). install: all of that, with the
# programs told where their modules are, and the man pages, the systemd units (with the
# installed paths), the sysusers.d/tmpfiles.d snippets and the docs.
LUA_FILES := $(wildcard lua/mtasts/*.lua)
LUA_TLSRPT := $(wildcard lua/mtasts/tlsrpt/*.lua)
# modules of earlier versions, renamed since: removed on install, so they cannot be loaded
OLD_LUA_FILES := sts.lua report.lua
PROGRAMS  := mtasts mtasts-opensmtpd-filter
MANPAGES  := man/mtasts.1 man/mtasts-opensmtpd-filter.1
UNITS_IN  := $(wildcard dist/systemd/*.in)
UNITS     := $(patsubst dist/systemd/%.in,%,$(UNITS_IN)) $(notdir $(wildcard dist/systemd/*.timer))
DOCS      := README.md LICENSE $(wildcard docs/*.md)

install-lua: all
	install -d $(DESTDIR)$(INST_LIBDIR)/mtasts $(DESTDIR)$(INST_LUADIR)/mtasts/tlsrpt $(DESTDIR)$(INST_BINDIR)
	install -m 755 build/mtasts/core.so $(DESTDIR)$(INST_LIBDIR)/mtasts/core.so
	install -m 644 $(LUA_FILES) $(DESTDIR)$(INST_LUADIR)/mtasts/
	install -m 644 $(LUA_TLSRPT) $(DESTDIR)$(INST_LUADIR)/mtasts/tlsrpt/
	rm -f $(addprefix $(DESTDIR)$(INST_LUADIR)/mtasts/,$(OLD_LUA_FILES))
	for p in $(PROGRAMS); do install -m 755 bin/$$p $(DESTDIR)$(INST_BINDIR)/$$p; done

install: install-lua
	for p in $(PROGRAMS); do \
	  sed 's|^local INSTALL_PATHS = nil$$|local INSTALL_PATHS = { "$(INST_LUADIR)", "$(INST_LIBDIR)" }|' \
	    bin/$$p > $(DESTDIR)$(INST_BINDIR)/$$p; done
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) \
	  $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(SYSCTLDIR) $(DESTDIR)$(DOCDIR)
	install -m 644 $(MANPAGES) $(DESTDIR)$(MANDIR)/man1/
	for u in $(UNITS_IN); do \
	  sed 's|@BINDIR@|$(INST_BINDIR)|g' $$u > $(DESTDIR)$(UNITDIR)/$$(basename $$u .in); \
	  chmod 644 $(DESTDIR)$(UNITDIR)/$$(basename $$u .in); done
	install -m 644 dist/systemd/*.timer $(DESTDIR)$(UNITDIR)/
	install -m 644 dist/sysusers.d/mtasts.conf $(DESTDIR)$(SYSUSERSDIR)/mtasts.conf
	install -m 644 dist/tmpfiles.d/mtasts.conf $(DESTDIR)$(TMPFILESDIR)/mtasts.conf
	install -m 644 dist/sysctl.d/60-mtasts.conf $(DESTDIR)$(SYSCTLDIR)/60-mtasts.conf
	install -m 644 $(DOCS) $(DESTDIR)$(DOCDIR)/
	@echo "installed under $(DESTDIR)$(PREFIX); next: systemd-sysusers; systemd-tmpfiles --create;" \
	  "systemctl enable --now mtasts-postfix.service mtasts-refresh.timer mtasts-report.timer"

# Removes what install put there; never the state directory (/var/lib/mtasts).
uninstall:
	rm -f $(DESTDIR)$(INST_LIBDIR)/mtasts/core.so
	rm -f $(addprefix $(DESTDIR)$(INST_LUADIR)/mtasts/,$(notdir $(LUA_FILES)))
	rm -f $(addprefix $(DESTDIR)$(INST_LUADIR)/mtasts/tlsrpt/,$(notdir $(LUA_TLSRPT)))
	rm -f $(addprefix $(DESTDIR)$(INST_LUADIR)/mtasts/,$(OLD_LUA_FILES))
	-rmdir $(DESTDIR)$(INST_LUADIR)/mtasts/tlsrpt 2>/dev/null
	rm -f $(addprefix $(DESTDIR)$(INST_BINDIR)/,$(PROGRAMS))
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man1/,$(notdir $(MANPAGES)))
	rm -f $(addprefix $(DESTDIR)$(UNITDIR)/,$(UNITS))
	rm -f $(DESTDIR)$(SYSUSERSDIR)/mtasts.conf $(DESTDIR)$(TMPFILESDIR)/mtasts.conf
	rm -f $(DESTDIR)$(SYSCTLDIR)/60-mtasts.conf
	rm -f $(addprefix $(DESTDIR)$(DOCDIR)/,$(notdir $(DOCS)))
	-rmdir $(DESTDIR)$(INST_LIBDIR)/mtasts $(DESTDIR)$(INST_LUADIR)/mtasts $(DESTDIR)$(DOCDIR) 2>/dev/null

clean:
	rm -rf build

# Every target, one line each (spec/build_spec.lua checks that each .PHONY target is here).
help:
	@echo "make             build build/mtasts/core.so (also: make all)"
	@echo "make demo        the main job end to end on the built-in fixture world (DNS, HTTPS, test CA)"
	@echo "make world       that fixture world in the foreground, with the flags to try mtasts by hand"
	@echo "make test        every suite (lint, specs, C replay under ASan); last line 'N passed, N failed'"
	@echo "make unit        lint and the specs that start no servers"
	@echo "make lint        luacheck only"
	@echo "make asan        the specs against an ASan/UBSan build of the module"
	@echo "make valgrind    every spec, and the Lua processes they start, under valgrind memcheck"
	@echo "make fuzz        each libFuzzer harness for FUZZ_SECONDS (default 60; HARNESSES=...)"
	@echo "make fuzz-merge  minimise what make fuzz found into fuzz/corpus/"
	@echo "make bench       benchmarks, against postfix-mta-sts-resolver where it applies"
	@echo "make install     everything under PREFIX (default /usr/local), staged in DESTDIR"
	@echo "make install-lua the module, Lua files and programs only (what the rockspec installs)"
	@echo "make uninstall   remove what make install put there (same PREFIX and DESTDIR)"
	@echo "make clean       remove build/"
	@echo "make help        this list"

-include $(OBJS:.o=.d) $(ASAN_OBJS:.o=.d)
.PHONY: all check-lua-deps test unit lint asan valgrind fuzz fuzz-merge bench demo world install install-lua \
  uninstall clean help
