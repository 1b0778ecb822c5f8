-- Loaded by busted before the specs (.busted "helper"). Shared helpers live in
-- spec/support/util.lua; this file only makes sure the module under test is the built one.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
