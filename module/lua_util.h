/* lua_util.h: what the bindings (lua_*.c, core.c) share: pushing a failure, reading
 * constructor option tables, the one lifecycle of every C userdata class, and scratch
 * buffers that a raising push cannot leak. Binding code: includes the Lua headers. */
#ifndef MTASTS_LUA_UTIL_H
#define MTASTS_LUA_UTIL_H

#include "buf.h"
#include "mtasts.h"

#include <lauxlib.h>
#include <lua.h>

/* --- failures (docs/errors.md): nil, message, code; each returns 3 --- */

int mtasts_lua_fail(lua_State *L, const char *msg, const char *code);
/* The code is mtasts_code_name(rc): a Berkeley DB, errno or MTASTS_E* number. */
int mtasts_lua_fail_rc(lua_State *L, int rc, const char *msg);

/* --- userdata classes: mtasts.cache, mtasts.results, mtasts.fetcher, mtasts.resolver ---
 *
 * Every class has the same lifecycle, implemented here once:
 * - its userdata struct starts with a pointer to its C object, NULL once closed;
 * - release frees everything the userdata owns, sets that pointer to NULL whatever the
 *   library returned, may be called any number of times, and never raises: 0, or an error
 *   code with a message in err;
 * - close() is release, then true or nil, msg, code; a second close returns true;
 * - __gc and __close are one function that runs release and ignores the result: finalizers
 *   never raise, yield or log, and commit nothing (release only lets go of resources);
 * - every method but close goes through mtasts_lua_class_check, which raises
 *   "attempt to use a closed <name>";
 * - __tostring shows "<name> (0x...)", "<name> (closed)", or "<name> (<label>)". */
typedef struct {
  const char *name;                       /* the metatable name: "mtasts.cache" */
  int (*release)(void *u, char *err);
  const char *(*label)(const void *u);    /* optional: what __tostring shows of an open one */
} mtasts_lua_class;

/* Make the metatable of class c (once per state): __name, __gc, __close, __tostring, and
 * __index, a method table of methods plus close. Pushes the method table. */
void mtasts_lua_class_register(lua_State *L, const mtasts_lua_class *c, const luaL_Reg *methods);
/* Push a new zeroed userdata of class c, its finalizer armed: create before acquire. */
void *mtasts_lua_class_new(lua_State *L, const mtasts_lua_class *c, size_t size);
/* The userdata of class c at idx: raises on another value, and when it is closed. */
void *mtasts_lua_class_check(lua_State *L, int idx, const mtasts_lua_class *c);

/* --- option tables of constructors: misuse raises "bad argument #1 to '<fn>' (...)" --- */

/* Every key of the table at t must be one of keys (NULL-terminated). */
void mtasts_lua_opt_known(lua_State *L, int t, const char *fn, const char *const *keys);
/* t[k] as a string, or NULL when nil. The value stays on the stack, anchoring the string
 * until the C function returns. */
const char *mtasts_lua_opt_string(lua_State *L, int t, const char *k, const char *fn);
/* t[k] as a string or an array of at most max strings, into v; returns the count. The value
 * stays on the stack, anchoring the strings. */
size_t mtasts_lua_opt_strings(lua_State *L, int t, const char *k, const char **v, size_t max,
                              const char *fn);
/* t[k] as a positive number, or dflt when nil. */
double mtasts_lua_opt_number(lua_State *L, int t, const char *k, double dflt, const char *fn);
/* Argument idx, the mode of the files of a cache (env.h): nil (0: the gate decides), or the
 * integer 0600 or 0660; anything else raises (Lua checks the operator's value first). */
unsigned mtasts_lua_opt_filemode(lua_State *L, int idx);

/* --- memory --- */

/* Push a userdata box holding an empty mtasts_buf, freed by the box's __gc: the buffer can
 * be filled by C code and its bytes pushed without a leak if the push raises. */
/* Push a zeroed userdata of size bytes whose metatable mt has gc as __gc: a box for memory
 * the C side allocates, so that a push that raises cannot leak it. */
void *mtasts_lua_newbox(lua_State *L, size_t size, const char *mt, lua_CFunction gc);
mtasts_buf *mtasts_lua_newbuf(lua_State *L);

#endif
