/* redis.c: a non-blocking Redis connection: our own socket transport (TCP, or TLS with
 * OpenSSL 3, verified), hiredis only for the protocol: redisFormatCommandArgv for commands and
 * its reader, given our object functions, for replies. Pure C, no Lua; API in redis.h,
 * contract in docs/redis.md.
 *
 * Rules of this file:
 * - Nothing blocks: connect is started and finished in step (a poll of zero time tells when
 *   the socket is writable), TLS runs over a BIO of our own on the non-blocking socket.
 * - Every socket write is send(MSG_NOSIGNAL), the TLS ones too (our BIO): a closed peer gives
 *   EPIPE, never SIGPIPE to a host that did not ignore it.
 * - A reply is bounded while it is read (redis.h: bytes, elements, line length; hiredis bounds
 *   nesting): an oversized or malformed reply is MTASTS_REDIS_EPROTO, and the connection is
 *   dead, so a half-read reply is never left behind. */
#include "redis.h"

#include "buf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* --- replies --- */

void mtasts_redis_reply_free(mtasts_redis_reply *r) {
  size_t i;
  if (!r) return;
  for (i = 0; i < r->n; i++) mtasts_redis_reply_free(r->elem[i]);
  free(r->elem);
  free(r->str);
  free(r);
}

/* --- the reader --- */

struct mtasts_redis_reader {
  redisReader *r;          /* owned */
  size_t bytes, elements;  /* of the reply being read */
  int refused;             /* an object function refused: why holds the reason */
  int oom;
  char why[128];
};

/* Link a new node into its parent array (hiredis gives the index), or leave it as the root. */
static void *attach(const redisReadTask *t, mtasts_redis_reply *node) {
  if (t->parent) {
    mtasts_redis_reply *p = t->parent->obj;
    if (t->idx >= 0 && (size_t)t->idx < p->n) p->elem[t->idx] = node;
  }
  return node;
}

/* Count bytes of the reply being read: 0, or -1 (refused, with the reason) */
static int charge(mtasts_redis_reader *rd, size_t bytes) {
  if (bytes > MTASTS_REDIS_REPLY_MAX - rd->bytes) {
    rd->refused = 1;
    snprintf(rd->why, sizeof rd->why, "reply over the limit of %u MiB",
             MTASTS_REDIS_REPLY_MAX >> 20);
    return -1;
  }
  rd->bytes += bytes;
  return 0;
}

static mtasts_redis_reply *node_new(const redisReadTask *t, int type, size_t extra) {
  mtasts_redis_reader *rd = t->privdata;
  mtasts_redis_reply *node;
  if (charge(rd, sizeof *node + extra) != 0) return NULL;
  if (!(node = calloc(1, sizeof *node))) rd->oom = 1;
  else node->type = type;
  return node;
}

static void *create_string(const redisReadTask *t, char *s, size_t len) {
  int type = t->type == REDIS_REPLY_ERROR ? MTASTS_REDIS_ERROR
    : t->type == REDIS_REPLY_STATUS ? MTASTS_REDIS_STATUS : MTASTS_REDIS_STRING;
  mtasts_redis_reply *node = node_new(t, type, len);
  if (!node) return NULL;
  if (!(node->str = malloc(len + 1))) {
    ((mtasts_redis_reader *)t->privdata)->oom = 1;
    free(node);
    return NULL;
  }
  if (len) memcpy(node->str, s, len);
  node->str[len] = '\0';
  node->len = len;
  return attach(t, node);
}

static void *create_array(const redisReadTask *t, int elements) {
  mtasts_redis_reader *rd = t->privdata;
  size_t n = elements < 0 ? 0 : (size_t)elements;
  mtasts_redis_reply *node;
  if (n > MTASTS_REDIS_ELEMENTS_MAX - rd->elements) {
    rd->refused = 1;
    snprintf(rd->why, sizeof rd->why, "reply with over %u array elements",
             MTASTS_REDIS_ELEMENTS_MAX);
    return NULL;
  }
  rd->elements += n;
  if (!(node = node_new(t, MTASTS_REDIS_ARRAY, n * sizeof *node->elem))) return NULL;
  if (n && !(node->elem = calloc(n, sizeof *node->elem))) {
    rd->oom = 1;
    free(node);
    return NULL;
  }
  node->n = n;
  return attach(t, node);
}

static void *create_integer(const redisReadTask *t, long long v) {
  mtasts_redis_reply *node = node_new(t, MTASTS_REDIS_INTEGER, 0);
  if (!node) return NULL;
  node->integer = v;
  return attach(t, node);
}

static void *create_nil(const redisReadTask *t) {
  mtasts_redis_reply *node = node_new(t, MTASTS_REDIS_NIL, 0);
  return node ? attach(t, node) : NULL;
}

static void free_object(void *p) { mtasts_redis_reply_free(p); }

static redisReplyObjectFunctions reply_functions = {
  create_string, create_array, create_integer, create_nil, free_object
};

mtasts_redis_reader *mtasts_redis_reader_new(void) {
  mtasts_redis_reader *rd = calloc(1, sizeof *rd);
  if (!rd) return NULL;
  if (!(rd->r = redisReaderCreateWithFunctions(&reply_functions))) {
    free(rd);
    return NULL;
  }
  rd->r->privdata = rd;
  return rd;
}

void mtasts_redis_reader_free(mtasts_redis_reader *rd) {
  if (!rd) return;
  redisReaderFree(rd->r);
  free(rd);
}

static int reader_fail(char *err, int rc, const char *why) {
  snprintf(err, MTASTS_ERR_MAX, "%s", why);
  return rc;
}

int mtasts_redis_reader_feed(mtasts_redis_reader *rd, const char *p, size_t n, char *err) {
  size_t unread = rd->r->len - rd->r->pos;
  if (n > MTASTS_REDIS_REPLY_MAX + MTASTS_REDIS_LINE_MAX - unread)
    return reader_fail(err, MTASTS_REDIS_EPROTO, "protocol: reply over the size limit");
  if (redisReaderFeed(rd->r, p, n) != REDIS_OK)
    return reader_fail(err, ENOMEM, "no memory for a reply");
  return 0;
}

/* The item hiredis waits on is checked before its bytes arrive: a bulk string whose declared
 * length passes what is left of the limit, or a line longer than MTASTS_REDIS_LINE_MAX. hiredis
 * has consumed the type byte; its buffer at pos holds the rest of the item. */
static int check_waiting(mtasts_redis_reader *rd, char *err) {
  redisReader *r = rd->r;
  const char *p = r->buf + r->pos;
  size_t unread = r->len - r->pos, look = unread < MTASTS_REDIS_LINE_MAX ? unread
                                                                         : MTASTS_REDIS_LINE_MAX;
  const char *nl;
  if (r->ridx < 0 || r->rstack[r->ridx].type < 0) return 0;
  nl = memchr(p, '\n', look);
  if (!nl) {
    if (unread >= MTASTS_REDIS_LINE_MAX)
      return reader_fail(err, MTASTS_REDIS_EPROTO, "protocol: a line over 64 KiB");
    return 0;
  }
  if (r->rstack[r->ridx].type == REDIS_REPLY_STRING) {
    unsigned long long len = 0;
    const char *q = p;
    while (q < nl && *q >= '0' && *q <= '9' && len < 100000000000000000ULL)   /* 1e17 */
      len = len * 10 + (unsigned)(*q++ - '0');
    if (len > MTASTS_REDIS_REPLY_MAX - rd->bytes) {
      snprintf(err, MTASTS_ERR_MAX, "protocol: a bulk string of %s%llu bytes, over the limit "
               "of %u MiB", q < nl && *q >= '0' && *q <= '9' ? "over " : "", len,
               MTASTS_REDIS_REPLY_MAX >> 20);
      return MTASTS_REDIS_EPROTO;
    }
  }
  return 0;
}

int mtasts_redis_reader_get(mtasts_redis_reader *rd, mtasts_redis_reply **out, char *err) {
  void *reply = NULL;
  *out = NULL;
  if (redisReaderGetReply(rd->r, &reply) != REDIS_OK) {
    if (rd->oom) return reader_fail(err, ENOMEM, "no memory for a reply");
    snprintf(err, MTASTS_ERR_MAX, "protocol: %s", rd->refused ? rd->why : rd->r->errstr);
    return MTASTS_REDIS_EPROTO;
  }
  if (reply) {
    rd->bytes = rd->elements = 0;
    *out = reply;
    return 0;
  }
  return check_waiting(rd, err);
}

/* --- the connection --- */

enum { C_CONNECTING, C_HANDSHAKE, C_READY, C_DEAD };

struct mtasts_redis {
  int fd;                       /* owned; -1 once closed */
  int state;
  int tls;
  SSL_CTX *ctx;                 /* owned (TLS) */
  SSL *ssl;                     /* owned (TLS) */
  BIO_METHOD *bio_method;       /* owned (TLS): our BIO over the socket, one per connection */
  int ssl_want;                 /* what the last TLS call waits for (WANT bits) */
  mtasts_buf out;               /* formatted commands not yet written, from out_off */
  size_t out_off;
  mtasts_redis_reader *rd;      /* owned */
  mtasts_redis_reply *head, *tail;   /* complete replies not popped, owned */
  size_t pending;
};

/* A failure that kills the connection: later calls fail at once. The socket stays open until
 * mtasts_redis_free, so that the descriptor a host's loop may still watch keeps its number
 * until the owner has told the loop (cqueues.cancel) and closes it. */
static int die(mtasts_redis *c, char *err, int rc, const char *fmt, const char *what) {
  snprintf(err, MTASTS_ERR_MAX, fmt, what);
  c->state = C_DEAD;
  return rc;
}

/* The first queued OpenSSL error (drained), or fallback. */
static const char *ssl_reason(char *buf, size_t len, const char *fallback) {
  unsigned long e = ERR_get_error();
  if (e) ERR_error_string_n(e, buf, len);
  else snprintf(buf, len, "%s", fallback);
  ERR_clear_error();
  return buf;
}

/* --- our BIO: recv and send(MSG_NOSIGNAL) on the non-blocking socket --- */

static int bio_write(BIO *b, const char *p, int n) {
  int fd = (int)(intptr_t)BIO_get_data(b);
  ssize_t w;
  BIO_clear_retry_flags(b);
  do w = send(fd, p, (size_t)n, MSG_NOSIGNAL); while (w < 0 && errno == EINTR);
  if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_write(b);
  return w < 0 ? -1 : (int)w;
}

static int bio_read(BIO *b, char *p, int n) {
  int fd = (int)(intptr_t)BIO_get_data(b);
  ssize_t r;
  BIO_clear_retry_flags(b);
  do r = recv(fd, p, (size_t)n, 0); while (r < 0 && errno == EINTR);
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_read(b);
  return r < 0 ? -1 : (int)r;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b;
  (void)num;
  (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static int is_ip(const char *s) {
  unsigned char a[16];
  return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

/* The TLS side: context, trust store, the name to check. 0, or a code with err. */
static int tls_setup(mtasts_redis *c, const mtasts_redis_opts *o, char *err) {
  const char *name = o->server_name && o->server_name[0] ? o->server_name : o->host;
  X509_VERIFY_PARAM *vp;
  BIO *bio;
  char why[256];
  ERR_clear_error();
  if (!(c->ctx = SSL_CTX_new(TLS_client_method()))) goto nomem;
  SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
  if (o->cafile || o->capath) {
    if (SSL_CTX_load_verify_locations(c->ctx, o->cafile, o->capath) != 1) {
      snprintf(err, MTASTS_ERR_MAX, "%s: cannot load '%s': %s", o->cafile ? "cafile" : "capath",
               o->cafile ? o->cafile : o->capath, ssl_reason(why, sizeof why, "unknown"));
      return MTASTS_ECONFIG;
    }
  } else if (SSL_CTX_set_default_verify_paths(c->ctx) != 1) {
    snprintf(err, MTASTS_ERR_MAX, "cafile: cannot load the system's trust store: %s",
             ssl_reason(why, sizeof why, "unknown"));
    return MTASTS_ECONFIG;
  }
  if (!(c->ssl = SSL_new(c->ctx))) goto nomem;
  SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  vp = SSL_get0_param(c->ssl);
  X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  if (is_ip(name)) {
    if (X509_VERIFY_PARAM_set1_ip_asc(vp, name) != 1) goto nomem;
  } else if (X509_VERIFY_PARAM_set1_host(vp, name, 0) != 1 ||
             SSL_set_tlsext_host_name(c->ssl, name) != 1) {
    snprintf(err, MTASTS_ERR_MAX, "server_name: '%.200s' cannot be used", name);
    ERR_clear_error();
    return MTASTS_ECONFIG;
  }
  if (!(c->bio_method = BIO_meth_new(BIO_TYPE_SOURCE_SINK, "mtasts redis socket"))) goto nomem;
  BIO_meth_set_write(c->bio_method, bio_write);
  BIO_meth_set_read(c->bio_method, bio_read);
  BIO_meth_set_ctrl(c->bio_method, bio_ctrl);
  BIO_meth_set_create(c->bio_method, bio_create);
  if (!(bio = BIO_new(c->bio_method))) goto nomem;
  BIO_set_data(bio, (void *)(intptr_t)c->fd);
  SSL_set_bio(c->ssl, bio, bio);   /* the SSL owns it now */
  SSL_set_connect_state(c->ssl);
  return 0;
nomem:
  ERR_clear_error();
  snprintf(err, MTASTS_ERR_MAX, "no memory for TLS");
  return ENOMEM;
}

int mtasts_redis_connect(const mtasts_redis_opts *o, mtasts_redis **out, char *err) {
  struct sockaddr_storage ss;
  socklen_t sl;
  mtasts_redis *c;
  int one = 1, rc;
  *out = NULL;
  memset(&ss, 0, sizeof ss);
  if (o->port < 1 || o->port > 65535) {
    snprintf(err, MTASTS_ERR_MAX, "port: %d is out of range (1-65535)", o->port);
    return MTASTS_ECONFIG;
  }
  if (inet_pton(AF_INET, o->host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
    ((struct sockaddr_in *)&ss)->sin_family = AF_INET;
    ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)o->port);
    sl = sizeof(struct sockaddr_in);
  } else if (inet_pton(AF_INET6, o->host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
    ((struct sockaddr_in6 *)&ss)->sin6_family = AF_INET6;
    ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)o->port);
    sl = sizeof(struct sockaddr_in6);
  } else {
    char q[64];
    mtasts_quote(q, sizeof q, o->host, strlen(o->host), 40);
    snprintf(err, MTASTS_ERR_MAX, "host: '%s' is not an IPv4 or IPv6 address", q);
    return MTASTS_ECONFIG;
  }
  if (!(c = calloc(1, sizeof *c))) return reader_fail(err, ENOMEM, "no memory");
  c->fd = -1;
  c->tls = o->tls;
  if (!(c->rd = mtasts_redis_reader_new())) {
    mtasts_redis_free(c);
    return reader_fail(err, ENOMEM, "no memory");
  }
  if ((c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
    rc = errno == ENOMEM || errno == ENOBUFS ? ENOMEM : MTASTS_ELOCAL;
    snprintf(err, MTASTS_ERR_MAX, "socket: %s", strerror(errno));
    mtasts_redis_free(c);
    return rc;
  }
  (void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (o->tls && (rc = tls_setup(c, o, err)) != 0) {
    mtasts_redis_free(c);
    return rc;
  }
  c->state = C_CONNECTING;
  if (connect(c->fd, (struct sockaddr *)&ss, sl) != 0 && errno != EINPROGRESS) {
    snprintf(err, MTASTS_ERR_MAX, "connect: %s", strerror(errno));
    mtasts_redis_free(c);
    return MTASTS_REDIS_EUNAVAIL;
  }
  *out = c;
  return 0;
}

void mtasts_redis_free(mtasts_redis *c) {
  mtasts_redis_reply *r, *next;
  if (!c) return;
  SSL_free(c->ssl);   /* frees the BIO */
  SSL_CTX_free(c->ctx);
  BIO_meth_free(c->bio_method);
  if (c->fd >= 0) close(c->fd);
  mtasts_redis_reader_free(c->rd);
  for (r = c->head; r; r = next) {
    next = r->next;
    mtasts_redis_reply_free(r);
  }
  mtasts_buf_free(&c->out);
  free(c);
}

int mtasts_redis_fd(const mtasts_redis *c) { return c->fd; }

size_t mtasts_redis_pending(const mtasts_redis *c) { return c->pending; }

int mtasts_redis_want(const mtasts_redis *c) {
  switch (c->state) {
  case C_CONNECTING: return MTASTS_REDIS_WANT_WRITE;
  case C_HANDSHAKE: return c->ssl_want ? c->ssl_want : MTASTS_REDIS_WANT_READ;
  case C_READY:
    return MTASTS_REDIS_WANT_READ | (c->out_off < c->out.n || (c->ssl_want &
           MTASTS_REDIS_WANT_WRITE) ? MTASTS_REDIS_WANT_WRITE : 0);
  default: return MTASTS_REDIS_WANT_READ;   /* dead: step reports it */
  }
}

int mtasts_redis_send(mtasts_redis *c, int argc, const char **argv, const size_t *lens,
                      char *err) {
  char *cmd = NULL;
  int n;
  if (c->state == C_DEAD) return reader_fail(err, MTASTS_REDIS_EUNAVAIL, "connection lost");
  if ((n = redisFormatCommandArgv(&cmd, argc, argv, lens)) < 0)
    return reader_fail(err, ENOMEM, "no memory for a command");
  if (mtasts_buf_reserve(&c->out, c->out.n + (size_t)n) != 0) {
    redisFreeCommand(cmd);
    return reader_fail(err, ENOMEM, "no memory for a command");
  }
  memcpy(c->out.p + c->out.n, cmd, (size_t)n);
  c->out.n += (size_t)n;
  redisFreeCommand(cmd);
  c->pending++;
  return 0;
}

/* What a failed TLS call means: 0 when it only waits (ssl_want set), else the code of a dead
 * connection with err. */
static int tls_error(mtasts_redis *c, int ret, const char *op, char *err) {
  int e = SSL_get_error(c->ssl, ret), saved = errno;
  char why[256], msg[320];
  c->ssl_want = 0;
  if (e == SSL_ERROR_WANT_READ) c->ssl_want = MTASTS_REDIS_WANT_READ;
  else if (e == SSL_ERROR_WANT_WRITE) c->ssl_want = MTASTS_REDIS_WANT_WRITE;
  if (c->ssl_want) return 0;
  if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ret == 0 && !ERR_peek_error())) {
    ERR_clear_error();
    return die(c, err, MTASTS_REDIS_EUNAVAIL, "%s", "connection closed by the server");
  }
  if (c->state == C_HANDSHAKE && SSL_get_verify_result(c->ssl) != X509_V_OK) {
    ERR_clear_error();
    snprintf(msg, sizeof msg, "TLS: certificate verify failed: %s",
             X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
  } else if (e == SSL_ERROR_SYSCALL && !ERR_peek_error()) {
    snprintf(msg, sizeof msg, "TLS %s: %s", op, saved ? strerror(saved) : "connection lost");
  } else {
    snprintf(msg, sizeof msg, "TLS %s: %s", op, ssl_reason(why, sizeof why, "failed"));
  }
  return die(c, err, MTASTS_REDIS_EUNAVAIL, "%s", msg);
}

/* Queue what the reader has complete. */
static int drain(mtasts_redis *c, char *err) {
  mtasts_redis_reply *r;
  int rc;
  for (;;) {
    if ((rc = mtasts_redis_reader_get(c->rd, &r, err)) != 0) {
      char msg[MTASTS_ERR_MAX];
      memcpy(msg, err, sizeof msg);
      return die(c, err, rc, "%s", msg);
    }
    if (!r) return 0;
    if (c->pending == 0) {
      mtasts_redis_reply_free(r);
      return die(c, err, MTASTS_REDIS_EPROTO, "%s", "protocol: a reply to no command");
    }
    c->pending--;
    if (c->tail) c->tail->next = r;
    else c->head = r;
    c->tail = r;
  }
}

static int ready_io(mtasts_redis *c, char *err) {
  char buf[16384];
  int rc;
  while (c->out_off < c->out.n) {
    size_t left = c->out.n - c->out_off;
    ssize_t w;
    if (c->tls) {
      ERR_clear_error();
      w = SSL_write(c->ssl, c->out.p + c->out_off, left > INT32_MAX ? INT32_MAX : (int)left);
      if (w <= 0) {
        if ((rc = tls_error(c, (int)w, "write", err)) != 0) return rc;
        break;
      }
    } else {
      do w = send(c->fd, c->out.p + c->out_off, left, MSG_NOSIGNAL); while (w < 0 &&
                                                                           errno == EINTR);
      if (w < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        return die(c, err, MTASTS_REDIS_EUNAVAIL, "write: %s", strerror(errno));
      }
    }
    c->out_off += (size_t)w;
  }
  if (c->out_off == c->out.n) c->out_off = c->out.n = 0;
  for (;;) {
    ssize_t r;
    if (c->tls) {
      ERR_clear_error();
      r = SSL_read(c->ssl, buf, (int)sizeof buf);
      if (r <= 0) return tls_error(c, (int)r, "read", err);
      c->ssl_want = 0;
    } else {
      do r = recv(c->fd, buf, sizeof buf, 0); while (r < 0 && errno == EINTR);
      if (r == 0) return die(c, err, MTASTS_REDIS_EUNAVAIL, "%s", "connection closed by the "
                             "server");
      if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        return die(c, err, MTASTS_REDIS_EUNAVAIL, "read: %s", strerror(errno));
      }
    }
    if ((rc = mtasts_redis_reader_feed(c->rd, buf, (size_t)r, err)) != 0) {
      char msg[MTASTS_ERR_MAX];
      memcpy(msg, err, sizeof msg);
      return die(c, err, rc, "%s", msg);
    }
    if ((rc = drain(c, err)) != 0) return rc;
  }
}

int mtasts_redis_step(mtasts_redis *c, char *err) {
  if (c->state == C_DEAD) return reader_fail(err, MTASTS_REDIS_EUNAVAIL, "connection lost");
  if (c->state == C_CONNECTING) {
    struct pollfd p;
    int soerr = 0, rc;
    socklen_t len = sizeof soerr;
    p.fd = c->fd;
    p.events = POLLOUT;
    p.revents = 0;
    do rc = poll(&p, 1, 0); while (rc < 0 && errno == EINTR);
    if (rc == 0) return 0;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) soerr = errno;
    if (soerr) return die(c, err, MTASTS_REDIS_EUNAVAIL, "connect: %s", strerror(soerr));
    c->state = c->tls ? C_HANDSHAKE : C_READY;
  }
  if (c->state == C_HANDSHAKE) {
    int ret;
    ERR_clear_error();
    if ((ret = SSL_connect(c->ssl)) != 1) return tls_error(c, ret, "handshake", err);
    c->ssl_want = 0;
    c->state = C_READY;
  }
  return ready_io(c, err);
}

mtasts_redis_reply *mtasts_redis_peek(mtasts_redis *c) { return c->head; }

void mtasts_redis_pop(mtasts_redis *c) {
  mtasts_redis_reply *r = c->head;
  if (!r) return;
  if (!(c->head = r->next)) c->tail = NULL;
  r->next = NULL;
  mtasts_redis_reply_free(r);
}
