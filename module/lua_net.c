/* lua_net.c: descriptors for the Lua side's own event loops. mtasts.poller is an epoll set
 * that stays while the descriptors in it come and go; recv and send are single non-blocking
 * calls on a socket, for paths where a library's buffered socket costs more system calls
 * than the work (the socketmap server's answers from its memo). Contract: docs/postfix.md
 * ("How a connection is read") and docs/redis.md; lifecycle: lua_util.h. */
#include "lua_util.h"
#include "mtasts.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* --- mtasts.poller ---
 * A host's loop may remember the descriptors it was asked to wait on (cqueues does): a
 * connection closed while another coroutine waits on it, or a new one given the same
 * number, confuses it. So a client waits on an epoll descriptor of its own, made once, with
 * the descriptors of the moment in it; closing a descriptor takes it out of the set. */
#define POLLER_MT "mtasts.poller"
#define WAIT_MAX 64

typedef struct { void *self; int ep; } lpoller;   /* self: the userdata, NULL once closed */

static int poller_release(void *p, char *err) {
  lpoller *u = p;
  (void)err;
  if (u->self && u->ep >= 0) close(u->ep);
  u->self = NULL;
  u->ep = -1;
  return 0;
}

static const mtasts_lua_class poller_class = { POLLER_MT, poller_release, NULL };

/* poller() -> poller | fail (local) */
static int net_poller(lua_State *L) {
  lpoller *u = mtasts_lua_class_new(L, &poller_class, sizeof *u);
  char msg[128];
  u->ep = epoll_create1(EPOLL_CLOEXEC);
  if (u->ep < 0) {
    snprintf(msg, sizeof msg, "epoll_create1: %s", strerror(errno));
    return mtasts_lua_fail(L, msg, "local");
  }
  u->self = u;
  return 1;
}

/* poller:fd() -> the descriptor to wait on for reading */
static int poller_fd(lua_State *L) {
  lua_pushinteger(L, ((lpoller *)mtasts_lua_class_check(L, 1, &poller_class))->ep);
  return 1;
}

/* poller:watch(fd, events) -> true | fail: the poller is readable while fd is ready for
 * events ("r", "w", "rw"); a descriptor watched before is changed, a new one added */
static int poller_watch(lua_State *L) {
  lpoller *u = mtasts_lua_class_check(L, 1, &poller_class);
  int fd = (int)luaL_checkinteger(L, 2);
  const char *ev = luaL_checkstring(L, 3);
  struct epoll_event e;
  char msg[128];
  memset(&e, 0, sizeof e);
  e.events = (strchr(ev, 'r') ? EPOLLIN : 0) | (strchr(ev, 'w') ? EPOLLOUT : 0);
  e.data.fd = fd;
  if (epoll_ctl(u->ep, EPOLL_CTL_MOD, fd, &e) != 0 &&
      (errno != ENOENT || epoll_ctl(u->ep, EPOLL_CTL_ADD, fd, &e) != 0)) {
    snprintf(msg, sizeof msg, "epoll_ctl(%d): %s", fd, strerror(errno));
    return mtasts_lua_fail(L, msg, "local");
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* poller:unwatch(fd) -> true: before a watched descriptor is closed (closing also does it) */
static int poller_unwatch(lua_State *L) {
  lpoller *u = mtasts_lua_class_check(L, 1, &poller_class);
  (void)epoll_ctl(u->ep, EPOLL_CTL_DEL, (int)luaL_checkinteger(L, 2), NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* poller:wait(timeout, out) -> n | fail (local): waits at most timeout seconds (0: does not
 * wait) for watched descriptors to be ready, and puts those that are into out[1..n] (at
 * most 64 at a time; the rest are given by the next call). 0 when the time passed, or when a
 * signal interrupted the wait. */
static int poller_wait(lua_State *L) {
  lpoller *u = mtasts_lua_class_check(L, 1, &poller_class);
  lua_Number t = luaL_checknumber(L, 2);
  struct epoll_event ev[WAIT_MAX];
  int ms, n, i;
  char msg[128];
  luaL_checktype(L, 3, LUA_TTABLE);
  ms = !(t > 0) ? 0 : t > 86400 ? 86400000 : (int)(t * 1000 + 0.999);
  n = epoll_wait(u->ep, ev, WAIT_MAX, ms);
  if (n < 0) {
    if (errno == EINTR) n = 0;
    else {
      snprintf(msg, sizeof msg, "epoll_wait: %s", strerror(errno));
      return mtasts_lua_fail(L, msg, "local");
    }
  }
  for (i = 0; i < n; i++) {
    lua_pushinteger(L, ev[i].data.fd);
    lua_rawseti(L, 3, i + 1);
  }
  lua_pushinteger(L, n);
  return 1;
}

/* --- one call on a socket --- */

/* recv(fd, max) -> string | false (nothing to read now) | nil, message, code: one recv of at
 * most max bytes (1..16384) without waiting. code "closed" when the peer closed its side,
 * "local" for a failure of the socket (ECONNRESET, EBADF, ...). Read into the stack, so a
 * short read costs one string of its length and no buffer to collect. */
#define RECV_MAX 16384
static int net_recv(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  lua_Integer max = luaL_checkinteger(L, 2);
  char p[RECV_MAX], msg[128];
  ssize_t n;
  luaL_argcheck(L, max >= 1 && max <= RECV_MAX, 2, "between 1 and 16384 expected");
  do n = recv(fd, p, (size_t)max, MSG_DONTWAIT); while (n < 0 && errno == EINTR);
  if (n > 0) {
    lua_pushlstring(L, p, (size_t)n);
    return 1;
  }
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (n == 0) return mtasts_lua_fail(L, "connection closed by the peer", "closed");
  snprintf(msg, sizeof msg, "recv: %s", strerror(errno));
  return mtasts_lua_fail(L, msg, "local");
}

/* send(fd, s [, i]) -> bytes sent (0 when the socket takes nothing now) | nil, message, code
 * (local): one send of s from position i (default 1) without waiting, never SIGPIPE. */
static int net_send(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  lua_Integer i = luaL_optinteger(L, 3, 1);
  char msg[128];
  ssize_t n;
  luaL_argcheck(L, i >= 1 && (size_t)i <= len + 1, 3, "position out of range");
  if ((size_t)i > len) {
    lua_pushinteger(L, 0);
    return 1;
  }
  do n = send(fd, s + i - 1, len - (size_t)(i - 1), MSG_DONTWAIT | MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) n = 0;
  if (n < 0) {
    snprintf(msg, sizeof msg, "send: %s", strerror(errno));
    return mtasts_lua_fail(L, msg, "local");
  }
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

void mtasts_open_net(lua_State *L) {
  static const luaL_Reg pmethods[] = {
    { "fd", poller_fd },
    { "watch", poller_watch },
    { "unwatch", poller_unwatch },
    { "wait", poller_wait },
    { NULL, NULL }
  };
  mtasts_lua_class_register(L, &poller_class, pmethods);
  lua_pop(L, 1);
  lua_pushcfunction(L, net_poller);
  lua_setfield(L, -2, "poller");
  lua_pushcfunction(L, net_recv);
  lua_setfield(L, -2, "recv");
  lua_pushcfunction(L, net_send);
  lua_setfield(L, -2, "send");
}
