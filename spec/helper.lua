-- Loaded by busted before the specs (.busted "helper"). Shared helpers live in
-- spec/support/util.lua; this file makes sure the module under test is the built one.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path

-- Under `make asan` the sanitizer runtime is preloaded into lua5.4: support.util keeps it out
-- of the commands specs run (see there).
require("support.util")
