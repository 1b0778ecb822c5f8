/* fetch.c: HTTPS transfers on one curl multi handle, driven without blocking. Pure C.
 *
 * curl's sockets are kept in an epoll set, so the host waits on one descriptor
 * (mtasts_fetcher_fd) plus a timeout, and mtasts_fetcher_step does the work that is ready.
 * Every transfer is HTTPS only, verified (peer and name, TLS 1.2 or newer), follows no
 * redirect, uses no proxy unless one is configured, sends no cookies, asks for no
 * compression, reuses no connection, and stops reading past max_size. Library callbacks
 * never call Lua: they append to buffers of the transfer or set fields. Failures are
 * returned as facts (curl code, HTTP status, OpenSSL verify result, what failed on this
 * host); lua/mtasts/fetch.lua classifies them. The trust store is checked when the fetcher
 * is made (mtasts_fetch_check_trust), so a bad cafile is a setting's error at start, never a
 * failure of every transfer. */
#define _GNU_SOURCE 1
#include "fetch.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

struct mtasts_fetcher {
  CURLM *multi;
  int epfd;
  double deadline;                  /* curl's timer, monotonic seconds; < 0 when unset */
  mtasts_transfer *active;          /* owned: added, not finished */
  mtasts_transfer *done, **done_tail;
  size_t n_active;
  int next_id;
  struct curl_slist *connect_to;    /* owned */
  char *cafile, *capath, *proxy;    /* owned copies */
  long timeout_ms, connect_timeout_ms;
  size_t max_size;
  int allow_private;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void init_curl(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* CURLMOPT_SOCKETFUNCTION: keep the epoll set in step with what curl waits for. */
static int on_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp) {
  mtasts_fetcher *f = userp;
  mtasts_transfer *t = NULL;
  struct epoll_event ev;
  (void)socketp;
  if (what == CURL_POLL_REMOVE) {
    epoll_ctl(f->epfd, EPOLL_CTL_DEL, s, NULL);
    return 0;
  }
  memset(&ev, 0, sizeof ev);
  ev.data.fd = s;
  ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
  if (epoll_ctl(f->epfd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT &&
      epoll_ctl(f->epfd, EPOLL_CTL_ADD, s, &ev) != 0) {
    /* no room in the epoll set (ENOMEM, ENOSPC): the transfer waits out its timeout, and
     * that is this host's failure, not the peer's */
    int e2 = errno;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&t);
    if (t && !t->local_error[0])
      snprintf(t->local_error, sizeof t->local_error, "epoll_ctl: %s", strerror(e2));
  }
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: remember when curl wants to be called without socket activity. */
static int on_timer(CURLM *m, long timeout_ms, void *userp) {
  mtasts_fetcher *f = userp;
  (void)m;
  f->deadline = timeout_ms < 0 ? -1 : mtasts_monotonic() + (double)timeout_ms / 1000.0;
  return 0;
}

/* CURLOPT_WRITEFUNCTION: the body, never more than max_size bytes of it. */
static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  mtasts_transfer *t = ud;
  size_t len = size * n;
  if (t->body.n + len > t->max_size) {
    t->too_large = 1;
    return 0;   /* aborts the transfer: CURLE_WRITE_ERROR */
  }
  if (mtasts_buf_reserve(&t->body, t->body.n + len + 1) != 0) return 0;
  memcpy(t->body.p + t->body.n, p, len);
  t->body.n += len;
  return len;
}

/* CURLOPT_SSL_CTX_FUNCTION: have OpenSSL check the name too, so that a mismatch shows in
 * the verify result (X509_V_ERR_HOSTNAME_MISMATCH) beside expiry and trust errors. */
static CURLcode on_ssl_ctx(CURL *e, void *sslctx, void *ud) {
  mtasts_transfer *t = ud;
  X509_VERIFY_PARAM *param = SSL_CTX_get0_param((SSL_CTX *)sslctx);
  (void)e;
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  if (X509_VERIFY_PARAM_set1_host(param, t->host, 0) != 1) {
    snprintf(t->local_error, sizeof t->local_error, "OpenSSL: cannot set the name to verify");
    return CURLE_SSL_CERTPROBLEM;
  }
  return CURLE_OK;
}

static int v4_is_global(uint32_t a) {
  static const struct { uint32_t net, mask; } deny[] = {
    { 0x00000000u, 0xff000000u },   /* 0.0.0.0/8 "this network" */
    { 0x0a000000u, 0xff000000u },   /* 10.0.0.0/8 private */
    { 0x64400000u, 0xffc00000u },   /* 100.64.0.0/10 CGNAT */
    { 0x7f000000u, 0xff000000u },   /* 127.0.0.0/8 loopback */
    { 0xa9fe0000u, 0xffff0000u },   /* 169.254.0.0/16 link-local (cloud metadata) */
    { 0xac100000u, 0xfff00000u },   /* 172.16.0.0/12 private */
    { 0xc0000000u, 0xffffff00u },   /* 192.0.0.0/24 protocol assignments */
    { 0xc0000200u, 0xffffff00u },   /* 192.0.2.0/24 documentation */
    { 0xc0a80000u, 0xffff0000u },   /* 192.168.0.0/16 private */
    { 0xc6120000u, 0xfffe0000u },   /* 198.18.0.0/15 benchmarking */
    { 0xc6336400u, 0xffffff00u },   /* 198.51.100.0/24 documentation */
    { 0xcb007100u, 0xffffff00u },   /* 203.0.113.0/24 documentation */
    { 0xe0000000u, 0xe0000000u },   /* 224.0.0.0/3 multicast, reserved, broadcast */
  };
  size_t i;
  for (i = 0; i < sizeof deny / sizeof deny[0]; i++)
    if ((a & deny[i].mask) == deny[i].net) return 0;
  return 1;
}

int mtasts_address_is_global(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    return v4_is_global(ntohl(s4->sin_addr.s_addr));
  }
  if (sa->sa_family == AF_INET6) {
    const unsigned char *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    static const unsigned char zero[15] = { 0 };
    static const unsigned char nat64[12] = { 0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0 };
    /* an IPv4 address carried in IPv6: IPv4-mapped ::ffff:0:0/96, NAT64 64:ff9b::/96, and
     * IPv4-compatible ::/96 are judged by the IPv4 address; 6to4 2002::/16 by the one in
     * bytes 2-5 */
    if (memcmp(b, mapped, 12) == 0 || memcmp(b, nat64, 12) == 0 ||
        (memcmp(b, zero, 12) == 0 && (b[12] | b[13] | b[14]) != 0))
      return v4_is_global(mtasts_get_u32(b + 12));
    if (b[0] == 0x20 && b[1] == 0x02)
      return v4_is_global(mtasts_get_u32(b + 2));
    if (memcmp(b, zero, 15) == 0) return 0;                  /* :: and ::1 */
    if ((b[0] & 0xfe) == 0xfc) return 0;                     /* fc00::/7 unique local */
    if (b[0] == 0xfe && (b[1] & 0x80) == 0x80) return 0;     /* fe80::/10, fec0::/10 */
    if (b[0] == 0xff) return 0;                              /* ff00::/8 multicast */
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) return 0; /* doc */
    if (b[0] == 0x01 && b[1] == 0x00 && memcmp(b + 2, zero, 6) == 0) return 0; /* 100::/64 */
    return 1;
  }
  return 0;
}

/* CURLOPT_OPENSOCKETFUNCTION: the one place every connection passes, whatever named the
 * address (DNS, a RESOLVE entry, CONNECT_TO): a non-global address is refused unless the
 * fetcher allows them, and noted in the transfer so the failure can say why. */
static curl_socket_t on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
  mtasts_transfer *t = ud;
  (void)purpose;
  if (!t->allow_private && !mtasts_address_is_global(&a->addr)) {
    const void *raw = a->family == AF_INET6
      ? (const void *)&((const struct sockaddr_in6 *)&a->addr)->sin6_addr
      : (const void *)&((const struct sockaddr_in *)&a->addr)->sin_addr;
    if (!inet_ntop(a->family, raw, t->refused, sizeof t->refused))
      snprintf(t->refused, sizeof t->refused, "a non-global address");
    return CURL_SOCKET_BAD;
  }
  t->opened++;
  {
    curl_socket_t fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    /* out of descriptors or memory: curl reports a connection that failed, but it is this
     * host that failed (EAFNOSUPPORT, an address family this host lacks, is the peer's
     * address being unusable from here, as for a connection that fails) */
    if (fd < 0 && errno != EAFNOSUPPORT && !t->local_error[0])
      snprintf(t->local_error, sizeof t->local_error, "socket: %s", strerror(errno));
    return fd;
  }
}

static void free_transfer(mtasts_transfer *t) {
  if (t->easy) curl_easy_cleanup(t->easy);
  curl_slist_free_all(t->headers);
  curl_slist_free_all(t->resolve);
  free(t->host);
  free(t->post);
  mtasts_buf_free(&t->body);
  free(t);
}

/* The trust store curl uses when none is set: its built-in CA bundle and directory (the
 * configure-time defaults, ca-certificates' files on Debian). Without the bundle every policy
 * fetch would fail as the policy host's certificate trouble, so its absence is a setting's
 * error at start like a bad cafile. Copies the paths into file and dir (PATH_MAX each; ""
 * where curl has no such default); 0, or a failure code with err. */
static int default_trust(char *file, char *dir, char *err) {
  file[0] = dir[0] = '\0';
#if LIBCURL_VERSION_NUM >= 0x075400   /* CURLINFO_CAINFO and CURLINFO_CAPATH: 7.84.0 */
  {
    CURL *e;
    char *f = NULL, *d = NULL;
    pthread_once(&curl_once, init_curl);
    if (curl_init_rc != CURLE_OK || !(e = curl_easy_init())) {
      snprintf(err, MTASTS_ERR_MAX, "cafile: cannot ask libcurl for its default CA bundle");
      return MTASTS_ELOCAL;
    }
    if (curl_easy_getinfo(e, CURLINFO_CAINFO, &f) == CURLE_OK && f)
      snprintf(file, PATH_MAX, "%s", f);
    if (curl_easy_getinfo(e, CURLINFO_CAPATH, &d) == CURLE_OK && d)
      snprintf(dir, PATH_MAX, "%s", d);
    curl_easy_cleanup(e);
  }
#else
  (void)err;
#endif
  return 0;
}

int mtasts_fetch_check_trust(const char *cafile, const char *capath, char *err) {
  struct stat st;
  X509_STORE *store = NULL;
  const char *note = "";
  char deffile[PATH_MAX], defdir[PATH_MAX];
  int fd, rc = 0;
  if (capath) {
    if (stat(capath, &st) == 0 && !S_ISDIR(st.st_mode)) {
      snprintf(err, MTASTS_ERR_MAX, "capath: '%.200s' is not a directory", capath);
      return MTASTS_ECONFIG;
    }
    if (access(capath, R_OK | X_OK) != 0) {
      snprintf(err, MTASTS_ERR_MAX, "capath: cannot read '%.200s': %s", capath,
               strerror(errno));
      return MTASTS_ECONFIG;
    }
  }
  if (!cafile && !capath) {
    if ((rc = default_trust(deffile, defdir, err)) != 0) return rc;
    if (!deffile[0] && defdir[0]) return mtasts_fetch_check_trust(NULL, defdir, err);
    if (deffile[0]) cafile = deffile;
    note = " (the default: set cafile, or install ca-certificates)";
  }
  if (!cafile) return 0;
  if ((fd = open(cafile, O_RDONLY | O_CLOEXEC)) < 0) {
    snprintf(err, MTASTS_ERR_MAX, "cafile: cannot read '%.200s'%s: %s", cafile, note,
             strerror(errno));
    return MTASTS_ECONFIG;
  }
  rc = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
  close(fd);
  if (rc) {
    snprintf(err, MTASTS_ERR_MAX, "cafile: '%.200s'%s is a directory (capath takes one)",
             cafile, note);
    return MTASTS_ECONFIG;
  }
  /* what curl does with it (SSL_CTX_load_verify_file): at least one certificate must load */
  ERR_clear_error();
  if (!(store = X509_STORE_new())) {
    snprintf(err, MTASTS_ERR_MAX, "cafile: out of memory");
    rc = MTASTS_ELOCAL;
    goto done;
  }
  if (X509_STORE_load_file(store, cafile) != 1) {
    const char *why = ERR_reason_error_string(ERR_peek_error());   /* the first error */
    snprintf(err, MTASTS_ERR_MAX, "cafile: '%.200s'%s holds no certificate OpenSSL can load "
             "(%s)", cafile, note, why ? why : "no certificate found");
    rc = MTASTS_ECONFIG;
    goto done;
  }
  rc = 0;
done:
  X509_STORE_free(store);
  ERR_clear_error();   /* drain the rest of the queue */
  return rc;
}

int mtasts_fetcher_new(const mtasts_fetch_opts *o, mtasts_fetcher **out, char *err) {
  mtasts_fetcher *f;
  size_t i;
  int rc;
  pthread_once(&curl_once, init_curl);
  if (curl_init_rc != CURLE_OK) {
    snprintf(err, MTASTS_ERR_MAX, "fetcher: curl_global_init: %s",
             curl_easy_strerror(curl_init_rc));
    return MTASTS_ELOCAL;
  }
  if ((rc = mtasts_fetch_check_trust(o->cafile, o->capath, err)) != 0) return rc;
  if (!(f = calloc(1, sizeof *f))) goto oom;
  f->done_tail = &f->done;
  f->deadline = -1;
  f->epfd = -1;
  f->timeout_ms = (long)(o->timeout * 1000);
  f->connect_timeout_ms = (long)(o->connect_timeout * 1000);
  f->max_size = o->max_size;
  f->allow_private = o->allow_private;
  if ((o->cafile && !(f->cafile = strdup(o->cafile))) ||
      (o->capath && !(f->capath = strdup(o->capath))) ||
      (o->proxy && !(f->proxy = strdup(o->proxy))))
    goto oom;
  for (i = 0; i < o->n_connect_to; i++) {
    struct curl_slist *l = curl_slist_append(f->connect_to, o->connect_to[i]);
    if (!l) goto oom;
    f->connect_to = l;
  }
  if ((f->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
    snprintf(err, MTASTS_ERR_MAX, "fetcher: epoll_create1: %s", strerror(errno));
    mtasts_fetcher_free(f);
    return MTASTS_ELOCAL;
  }
  if (!(f->multi = curl_multi_init())) goto oom;
  curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f);
  curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f);
  *out = f;
  return 0;
oom:
  snprintf(err, MTASTS_ERR_MAX, "fetcher: out of memory");
  mtasts_fetcher_free(f);
  return MTASTS_ELOCAL;
}

void mtasts_fetcher_free(mtasts_fetcher *f) {
  mtasts_transfer *t, *next;
  if (!f) return;
  /* libcurl's order: remove each handle from the multi, clean each up, then the multi */
  for (t = f->active; t; t = t->next)
    if (f->multi && t->easy) curl_multi_remove_handle(f->multi, t->easy);
  for (t = f->active; t; t = next) { next = t->next; free_transfer(t); }
  for (t = f->done; t; t = next) { next = t->next; free_transfer(t); }
  if (f->multi) curl_multi_cleanup(f->multi);
  if (f->epfd >= 0) close(f->epfd);
  curl_slist_free_all(f->connect_to);
  free(f->cafile);
  free(f->capath);
  free(f->proxy);
  free(f);
}

int mtasts_fetcher_add(mtasts_fetcher *f, const mtasts_fetch_req *r, int *id, char *err) {
  mtasts_transfer *t = calloc(1, sizeof *t);
  CURL *e;
  size_t i;
  CURLMcode mc;
  if (!t || !(t->host = strdup(r->host)) || !(e = curl_easy_init())) goto oom;
  t->easy = e;
  t->max_size = f->max_size;
  /* through a proxy, it is the proxy that connects to the host: no check here (the
   * operator chose the proxy, and its address may well be a private one) */
  t->allow_private = f->allow_private || f->proxy != NULL;
  t->id = ++f->next_id;
  for (i = 0; i < r->n_resolve; i++) {
    struct curl_slist *l = curl_slist_append(t->resolve, r->resolve[i]);
    if (!l) goto oom;
    t->resolve = l;
  }
  curl_easy_setopt(e, CURLOPT_PRIVATE, t);
  curl_easy_setopt(e, CURLOPT_URL, r->url);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
  curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx);
  curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, t);
  if (f->cafile) curl_easy_setopt(e, CURLOPT_CAINFO, f->cafile);
  if (f->capath) curl_easy_setopt(e, CURLOPT_CAPATH, f->capath);
  curl_easy_setopt(e, CURLOPT_PROXY, f->proxy ? f->proxy : "");   /* "": not even from env */
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, f->timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, f->connect_timeout_ms);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "mtasts/" MTASTS_VERSION);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)f->max_size);
  curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
  curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, t);
  if (f->connect_to) curl_easy_setopt(e, CURLOPT_CONNECT_TO, f->connect_to);
  if (t->resolve) curl_easy_setopt(e, CURLOPT_RESOLVE, t->resolve);
  if (r->body) {
    char ct[300];
    if (!(t->post = malloc(r->body_len ? r->body_len : 1))) goto oom;
    memcpy(t->post, r->body, r->body_len);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->post);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
    snprintf(ct, sizeof ct, "Content-Type: %.250s",
             r->content_type ? r->content_type : "application/octet-stream");
    if (!(t->headers = curl_slist_append(NULL, ct))) goto oom;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
  }
  if ((mc = curl_multi_add_handle(f->multi, e)) != CURLM_OK) {
    snprintf(err, MTASTS_ERR_MAX, "fetcher: %s", curl_multi_strerror(mc));
    free_transfer(t);
    return MTASTS_ELOCAL;
  }
  t->next = f->active;
  f->active = t;
  f->n_active++;
  *id = t->id;
  return 0;
oom:
  snprintf(err, MTASTS_ERR_MAX, "fetcher: out of memory");
  if (t) free_transfer(t);
  return MTASTS_ELOCAL;
}

int mtasts_fetcher_fd(mtasts_fetcher *f) { return f->epfd; }

double mtasts_fetcher_timeout(mtasts_fetcher *f) {
  double t;
  if (f->done) return 0;
  if (f->deadline < 0) return f->n_active ? 1.0 : -1;   /* curl has no timer: look again */
  t = f->deadline - mtasts_monotonic();
  return t > 0 ? t : 0;
}

static void collect(mtasts_fetcher *f) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(f->multi, &left)) != NULL) {
    mtasts_transfer *t = NULL, **pp;
    char *ct = NULL;
    if (m->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&t);
    if (!t) continue;
    t->curl_code = (int)m->data.result;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
    curl_easy_getinfo(t->easy, CURLINFO_SSL_VERIFYRESULT, &t->verify_result);
    if (curl_easy_getinfo(t->easy, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct)
      snprintf(t->content_type, sizeof t->content_type, "%s", ct);
    curl_multi_remove_handle(f->multi, t->easy);
    for (pp = &f->active; *pp; pp = &(*pp)->next)
      if (*pp == t) { *pp = t->next; f->n_active--; break; }
    t->next = NULL;
    t->done = 1;
    *f->done_tail = t;
    f->done_tail = &t->next;
  }
}

int mtasts_fetcher_step(mtasts_fetcher *f, char *err) {
  struct epoll_event evs[64];
  int n, i, running;
  CURLMcode mc;
  do n = epoll_wait(f->epfd, evs, 64, 0); while (n < 0 && errno == EINTR);
  if (n < 0) {
    snprintf(err, MTASTS_ERR_MAX, "fetcher: epoll_wait: %s", strerror(errno));
    return MTASTS_ELOCAL;
  }
  for (i = 0; i < n; i++) {
    int mask = (evs[i].events & EPOLLIN ? CURL_CSELECT_IN : 0) |
               (evs[i].events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
               (evs[i].events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
    if ((mc = curl_multi_socket_action(f->multi, evs[i].data.fd, mask, &running)) != CURLM_OK) {
      snprintf(err, MTASTS_ERR_MAX, "fetcher: %s", curl_multi_strerror(mc));
      return MTASTS_ELOCAL;
    }
  }
  if (f->n_active && (f->deadline < 0 || mtasts_monotonic() >= f->deadline)) {
    f->deadline = -1;
    mc = curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    if (mc != CURLM_OK) {
      snprintf(err, MTASTS_ERR_MAX, "fetcher: %s", curl_multi_strerror(mc));
      return MTASTS_ELOCAL;
    }
  }
  collect(f);
  return 0;
}

mtasts_transfer *mtasts_fetcher_done(mtasts_fetcher *f) { return f->done; }

void mtasts_fetcher_pop(mtasts_fetcher *f) {
  mtasts_transfer *t = f->done;
  if (!t) return;
  f->done = t->next;
  if (!f->done) f->done_tail = &f->done;
  free_transfer(t);
}

void mtasts_fetcher_cancel(mtasts_fetcher *f, int id) {
  mtasts_transfer **pp;
  for (pp = &f->active; *pp; pp = &(*pp)->next)
    if ((*pp)->id == id) {
      mtasts_transfer *t = *pp;
      *pp = t->next;
      f->n_active--;
      curl_multi_remove_handle(f->multi, t->easy);
      free_transfer(t);
      return;
    }
}

size_t mtasts_fetcher_running(mtasts_fetcher *f) { return f->n_active; }

const char *mtasts_curl_code_name(int code) {
  switch (code) {
  case CURLE_OK: return "CURLE_OK";
  case CURLE_UNSUPPORTED_PROTOCOL: return "CURLE_UNSUPPORTED_PROTOCOL";
  case CURLE_FAILED_INIT: return "CURLE_FAILED_INIT";
  case CURLE_URL_MALFORMAT: return "CURLE_URL_MALFORMAT";
  case CURLE_NOT_BUILT_IN: return "CURLE_NOT_BUILT_IN";
  case CURLE_COULDNT_RESOLVE_PROXY: return "CURLE_COULDNT_RESOLVE_PROXY";
  case CURLE_COULDNT_RESOLVE_HOST: return "CURLE_COULDNT_RESOLVE_HOST";
  case CURLE_COULDNT_CONNECT: return "CURLE_COULDNT_CONNECT";
  case CURLE_HTTP2: return "CURLE_HTTP2";
  case CURLE_PARTIAL_FILE: return "CURLE_PARTIAL_FILE";
  case CURLE_WRITE_ERROR: return "CURLE_WRITE_ERROR";
  case CURLE_OUT_OF_MEMORY: return "CURLE_OUT_OF_MEMORY";
  case CURLE_OPERATION_TIMEDOUT: return "CURLE_OPERATION_TIMEDOUT";
  case CURLE_SSL_CONNECT_ERROR: return "CURLE_SSL_CONNECT_ERROR";
  case CURLE_BAD_FUNCTION_ARGUMENT: return "CURLE_BAD_FUNCTION_ARGUMENT";
  case CURLE_INTERFACE_FAILED: return "CURLE_INTERFACE_FAILED";
  case CURLE_UNKNOWN_OPTION: return "CURLE_UNKNOWN_OPTION";
  case CURLE_SSL_ENGINE_NOTFOUND: return "CURLE_SSL_ENGINE_NOTFOUND";
  case CURLE_SSL_ENGINE_SETFAILED: return "CURLE_SSL_ENGINE_SETFAILED";
  case CURLE_SSL_ENGINE_INITFAILED: return "CURLE_SSL_ENGINE_INITFAILED";
  case CURLE_SSL_CRL_BADFILE: return "CURLE_SSL_CRL_BADFILE";
  case CURLE_TOO_MANY_REDIRECTS: return "CURLE_TOO_MANY_REDIRECTS";
  case CURLE_GOT_NOTHING: return "CURLE_GOT_NOTHING";
  case CURLE_SEND_ERROR: return "CURLE_SEND_ERROR";
  case CURLE_RECV_ERROR: return "CURLE_RECV_ERROR";
  case CURLE_SSL_CERTPROBLEM: return "CURLE_SSL_CERTPROBLEM";
  case CURLE_SSL_CIPHER: return "CURLE_SSL_CIPHER";
  case CURLE_PEER_FAILED_VERIFICATION: return "CURLE_PEER_FAILED_VERIFICATION";
  case CURLE_BAD_CONTENT_ENCODING: return "CURLE_BAD_CONTENT_ENCODING";
  case CURLE_FILESIZE_EXCEEDED: return "CURLE_FILESIZE_EXCEEDED";
  case CURLE_SSL_CACERT_BADFILE: return "CURLE_SSL_CACERT_BADFILE";
  case CURLE_HTTP2_STREAM: return "CURLE_HTTP2_STREAM";
  case CURLE_WEIRD_SERVER_REPLY: return "CURLE_WEIRD_SERVER_REPLY";
  default: return "CURLE_OTHER";
  }
}

const char *mtasts_verify_error_string(long v) { return X509_verify_cert_error_string(v); }
