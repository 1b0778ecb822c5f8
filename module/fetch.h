/* fetch.h: HTTPS transfers on a curl multi handle (fetch.c). No Lua. */
#ifndef MTASTS_FETCH_H
#define MTASTS_FETCH_H

#include "buf.h"
#include "mtasts.h"

typedef struct {
  const char *cafile, *capath;   /* NULL: the system's trust store */
  const char *proxy;             /* NULL: no proxy, whatever the environment says */
  const char **connect_to;       /* curl CONNECT_TO entries, "HOST:PORT:HOST2:PORT2" */
  size_t n_connect_to;
  double timeout, connect_timeout;   /* seconds */
  size_t max_size;               /* body limit, enforced while streaming */
  int allow_private;             /* connect to non-global addresses too (tests, labs) */
} mtasts_fetch_opts;

typedef struct {
  const char *url;               /* https:// only */
  const char *host;              /* the name the certificate must carry */
  const char **resolve;          /* curl RESOLVE entries, "HOST:PORT:ADDR[,ADDR]" */
  size_t n_resolve;
  const char *body;              /* POST body, or NULL for GET */
  size_t body_len;
  const char *content_type;      /* POST Content-Type */
} mtasts_fetch_req;

/* A finished transfer: raw facts, classified in Lua (lua/mtasts/fetch.lua). */
typedef struct mtasts_transfer {
  struct mtasts_transfer *next;
  int id;
  void *easy;                    /* CURL *, owned by the fetcher */
  void *headers, *resolve;       /* curl_slist *, owned */
  char *host, *post;             /* owned copies */
  int done, too_large;
  char refused[64];              /* a non-global address curl was about to connect to */
  int opened;                    /* sockets opened: refused means something only at 0 */
  int allow_private;
  int curl_code;                 /* CURLcode */
  long status;                   /* HTTP status, 0 without a response */
  long verify_result;            /* OpenSSL X509_V_* of the peer chain */
  char local_error[128];         /* set when this host failed the transfer (no socket, no
                                  * epoll room, no memory): not the peer's doing */
  char content_type[256];
  char errbuf[256];              /* CURL_ERROR_SIZE */
  mtasts_buf body;
  size_t max_size;
} mtasts_transfer;

typedef struct mtasts_fetcher mtasts_fetcher;

/* Make a fetcher, its trust store checked first (mtasts_fetch_check_trust): 0, or
 * MTASTS_ECONFIG or MTASTS_ELOCAL (no memory, no epoll descriptor) with err. */
int mtasts_fetcher_new(const mtasts_fetch_opts *o, mtasts_fetcher **out, char *err);
/* The trust store settings as curl will use them: cafile a readable file that OpenSSL loads
 * at least one certificate from, capath a readable directory. 0, or MTASTS_ECONFIG with err
 * starting with the option's name ("cafile: ..."), or MTASTS_ELOCAL. NULL: not set. */
int mtasts_fetch_check_trust(const char *cafile, const char *capath, char *err);
void mtasts_fetcher_free(mtasts_fetcher *f);
/* Start a transfer: 0, or MTASTS_ELOCAL (no memory, curl refused the handle) with err. */
int mtasts_fetcher_add(mtasts_fetcher *f, const mtasts_fetch_req *r, int *id, char *err);
int mtasts_fetcher_fd(mtasts_fetcher *f);             /* readable when curl has work */
double mtasts_fetcher_timeout(mtasts_fetcher *f);     /* seconds, or -1 when idle */
int mtasts_fetcher_step(mtasts_fetcher *f, char *err); /* never blocks; MTASTS_ELOCAL */
mtasts_transfer *mtasts_fetcher_done(mtasts_fetcher *f);
void mtasts_fetcher_pop(mtasts_fetcher *f);
void mtasts_fetcher_cancel(mtasts_fetcher *f, int id);
size_t mtasts_fetcher_running(mtasts_fetcher *f);
const char *mtasts_curl_code_name(int code);
/* 1 when an address (AF_INET or AF_INET6) is globally routable: not loopback, private,
 * link-local, unique-local, CGNAT, multicast, documentation, benchmarking or reserved (an
 * IPv4-mapped IPv6 address is judged by its IPv4 address). */
struct sockaddr;
int mtasts_address_is_global(const struct sockaddr *a);
const char *mtasts_verify_error_string(long v);

#endif
