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
INST_LIBDIR ?= /usr/local/lib/lua/5.4
INST_LUADIR ?= /usr/local/share/lua/5.4
INST_BINDIR ?= /usr/local/bin
# Installs missing Debian packages for a group (build, test, fuzz, rock). The rockspec sets
# DEPS=true: luarocks users bring their own libraries.
DEPS       ?= scripts/deps
FUZZ_SECONDS ?= 60
FUZZ_CC    ?= clang
BUSTED     ?= $(LUA) /usr/bin/busted

# Recursive (=), not immediate (:=): pkg-config and the .pc files it reads may come with the
# packages that scripts/deps installs, which happens after make has read this file. These are
# expanded when a recipe runs, after its deps-* prerequisite.
LUA_CFLAGS = $(if $(LUA_INCDIR),-I$(LUA_INCDIR),$(shell $(PKG_CONFIG) --cflags $(LUA_PC) 2>/dev/null))
DEP_CFLAGS = $(shell $(PKG_CONFIG) --cflags libidn2 libcurl openssl 2>/dev/null)
DEP_LIBS   = -l$(BDB_LIB) -lidn2 -lunbound -lz $(shell $(PKG_CONFIG) --libs libcurl openssl 2>/dev/null) -lpthread
XCFLAGS    := -std=c99 -D_DEFAULT_SOURCE -fvisibility=hidden -MMD \
              -Wall -Wextra -Wmissing-prototypes -Wstrict-prototypes -Wshadow
SAN_FLAGS  := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer

SRCS := $(wildcard module/*.c)
OBJS := $(patsubst module/%.c,build/obj/%.o,$(SRCS))
ASAN_OBJS := $(patsubst module/%.c,build/asan/obj/%.o,$(SRCS))
# the pure C parts (no Lua header): what the fuzz harnesses link
PURE := module/parse.c module/domain.c module/row.c module/rdata.c module/codec.c
HARNESSES := $(patsubst fuzz/fuzz_%.c,%,$(wildcard fuzz/fuzz_*.c))

all: build/mtasts/core.so

build/obj/%.o: module/%.c | deps-build
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(XCFLAGS) $(LUA_CFLAGS) -I$(BDB_INCDIR) $(DEP_CFLAGS) -c -o $@ $<

build/mtasts/core.so: $(OBJS)
	@mkdir -p $(@D)
	$(CC) $(LIBFLAG) -o $@ $(OBJS) -L$(BDB_LIBDIR) $(DEP_LIBS)

# --- sanitizer build: the same module with ASan and UBSan, for `make asan` ---
build/asan/obj/%.o: module/%.c | deps-build
	@mkdir -p $(@D)
	$(CC) -O1 -g -fPIC $(SAN_FLAGS) $(XCFLAGS) $(LUA_CFLAGS) -I$(BDB_INCDIR) $(DEP_CFLAGS) -c -o $@ $<

build/asan/mtasts/core.so: $(ASAN_OBJS)
	@mkdir -p $(@D)
	$(CC) -shared $(SAN_FLAGS) -o $@ $(ASAN_OBJS) -L$(BDB_LIBDIR) $(DEP_LIBS)

# --- fuzz harnesses: libFuzzer builds, and replay builds (gcc, ASan/UBSan) for `make test` ---
build/fuzz/%: fuzz/fuzz_%.c $(PURE) module/mtasts.h | deps-fuzz
	@mkdir -p $(@D)
	$(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -Imodule $(DEP_CFLAGS) -o $@ $< $(PURE) $(DEP_LIBS)

build/replay/%: fuzz/fuzz_%.c fuzz/replay.c $(PURE) module/mtasts.h | deps-build
	@mkdir -p $(@D)
	$(CC) -g -O1 $(SAN_FLAGS) -std=c99 -D_DEFAULT_SOURCE -Wall -Wextra \
	  -Imodule $(DEP_CFLAGS) -o $@ $< fuzz/replay.c $(PURE) $(DEP_LIBS)

# The Lua parsers' harness embeds Lua 5.4 with the whole module linked in (explicit rules
# win over the patterns above).
LUA_HARNESS_SRC := fuzz/fuzz_lua.c $(SRCS)
LUA_HARNESS_FLAGS = -Imodule -I$(BDB_INCDIR) $(LUA_CFLAGS) $(DEP_CFLAGS) -D_DEFAULT_SOURCE
build/fuzz/lua: $(LUA_HARNESS_SRC) module/mtasts.h | deps-fuzz
	@mkdir -p $(@D)
	$(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  $(LUA_HARNESS_FLAGS) -o $@ $(LUA_HARNESS_SRC) -llua5.4 -L$(BDB_LIBDIR) $(DEP_LIBS)

build/replay/lua: $(LUA_HARNESS_SRC) fuzz/replay.c module/mtasts.h | deps-build
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

asan: deps-test build/asan/mtasts/core.so $(SUPPORT) $(OPENSMTPD) $(addprefix build/replay/,$(HARNESSES)) build/fuzz/seeds/.stamp
	@MTASTS_CPATH=./build/asan/?.so MTASTS_PRELOAD="$$($(CC) -print-file-name=libasan.so)" \
	  scripts/test all

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
	$(LUA) bench/socketmap.lua

demo: deps-test all $(SUPPORT)
	@$(LUA) examples/demo.lua

install: all
	install -d $(DESTDIR)$(INST_LIBDIR)/mtasts $(DESTDIR)$(INST_LUADIR)/mtasts
	install -m 755 build/mtasts/core.so $(DESTDIR)$(INST_LIBDIR)/mtasts/core.so
	install -m 644 lua/mtasts/*.lua $(DESTDIR)$(INST_LUADIR)/mtasts/
	install -d $(DESTDIR)$(INST_BINDIR)
	install -m 755 bin/mtasts $(DESTDIR)$(INST_BINDIR)/mtasts
	install -m 755 bin/mtasts-opensmtpd-filter $(DESTDIR)$(INST_BINDIR)/mtasts-opensmtpd-filter

clean:
	rm -rf build

help:
	@echo "make          build build/mtasts/core.so"
	@echo "make test     every suite (lint, specs, C replay under ASan); last line 'N passed, N failed'"
	@echo "make unit     the specs that start no servers"
	@echo "make asan     the specs against an ASan/UBSan build of the module"
	@echo "make valgrind every spec, and the Lua processes they start, under valgrind memcheck"
	@echo "make fuzz     each libFuzzer harness for FUZZ_SECONDS (default 60)"
	@echo "make bench    benchmarks"
	@echo "make demo     the demo"

-include $(OBJS:.o=.d) $(ASAN_OBJS:.o=.d)
.PHONY: all test unit lint asan valgrind fuzz fuzz-merge bench demo install clean help
