/* bench/smclient.c: a socketmap load client, in C so the client is not what limits the
 * servers it measures. Keeps DEPTH requests in flight on each of CONNS connections for
 * SECONDS (or until COUNT requests are answered), requests "NAME KEY" with keys taken in turn
 * from KEYS (a file, one per line), and prints one line:
 *   requests=N seconds=S rps=R p50_us=A p99_us=B max_us=C errors=E
 *
 * usage: smclient HOST PORT NAME KEYS CONNS DEPTH SECONDS [COUNT]
 * Loopback only: HOST must be an IPv4 address in 127.0.0.0/8. */
#define _GNU_SOURCE 1
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  int fd;
  char in[65536];
  size_t in_n;
  double sent_at[1024];      /* FIFO of send times of requests in flight */
  size_t head, tail, inflight;
  char out[65536];
  size_t out_n;
} conn;

static char **keys;
static size_t n_keys, next_key;
static const char *map_name;
static double *lat;
static size_t n_lat, cap_lat;
static long errors;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void queue_request(conn *c) {
  const char *key = keys[next_key++ % n_keys];
  size_t len = strlen(map_name) + 1 + strlen(key);
  int w = snprintf(c->out + c->out_n, sizeof c->out - c->out_n, "%zu:%s %s,", len, map_name, key);
  if (w <= 0 || (size_t)w >= sizeof c->out - c->out_n) { errors++; return; }
  c->out_n += (size_t)w;
  c->sent_at[c->tail] = now();
  c->tail = (c->tail + 1) % 1024;
  c->inflight++;
}

static int flush_out(conn *c) {
  while (c->out_n > 0) {
    ssize_t w = write(c->fd, c->out, c->out_n);
    if (w < 0) return errno == EAGAIN ? 0 : -1;
    memmove(c->out, c->out + w, c->out_n - (size_t)w);
    c->out_n -= (size_t)w;
  }
  return 0;
}

/* Take complete netstrings off c->in; returns how many answers. */
static long take_answers(conn *c) {
  long got = 0;
  for (;;) {
    size_t i = 0, len = 0;
    while (i < c->in_n && c->in[i] >= '0' && c->in[i] <= '9') len = len * 10 + (size_t)(c->in[i++] - '0');
    if (i == c->in_n) break;
    if (c->in[i] != ':') { errors++; c->in_n = 0; break; }
    if (c->in_n < i + 1 + len + 1) break;
    if (c->in[i + 1 + len] != ',') errors++;
    if (c->inflight > 0) {
      double t = now() - c->sent_at[c->head];
      c->head = (c->head + 1) % 1024;
      c->inflight--;
      if (n_lat == cap_lat) {
        cap_lat = cap_lat ? cap_lat * 2 : 65536;
        lat = realloc(lat, cap_lat * sizeof *lat);
        if (!lat) { perror("realloc"); exit(2); }
      }
      lat[n_lat++] = t;
    }
    memmove(c->in, c->in + i + 1 + len + 1, c->in_n - (i + 1 + len + 1));
    c->in_n -= i + 1 + len + 1;
    got++;
  }
  return got;
}

int main(int argc, char **argv) {
  struct sockaddr_in sa;
  int conns, depth, ep, i;
  double seconds, start, stop;
  long count = 0, answered = 0;
  conn *cs;
  FILE *f;
  char line[1024];
  if (argc < 8) {
    fprintf(stderr, "usage: smclient HOST PORT NAME KEYS CONNS DEPTH SECONDS [COUNT]\n");
    return 64;
  }
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)atoi(argv[2]));
  if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1 ||
      (ntohl(sa.sin_addr.s_addr) >> 24) != 127) {
    fprintf(stderr, "smclient: HOST must be an IPv4 loopback address\n");
    return 64;
  }
  map_name = argv[3];
  if (!(f = fopen(argv[4], "r"))) { perror(argv[4]); return 2; }
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = '\0';
    if (!line[0]) continue;
    keys = realloc(keys, (n_keys + 1) * sizeof *keys);
    keys[n_keys++] = strdup(line);
  }
  fclose(f);
  if (n_keys == 0) { fprintf(stderr, "smclient: no keys\n"); return 2; }
  conns = atoi(argv[5]);
  depth = atoi(argv[6]);
  seconds = atof(argv[7]);
  if (argc > 8) count = atol(argv[8]);
  if (conns < 1 || depth < 1 || depth > 1000) { fprintf(stderr, "smclient: bad CONNS/DEPTH\n"); return 64; }
  cs = calloc((size_t)conns, sizeof *cs);
  ep = epoll_create1(0);
  for (i = 0; i < conns; i++) {
    struct epoll_event ev;
    int one = 1;
    cs[i].fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(cs[i].fd, (struct sockaddr *)&sa, sizeof sa) != 0) { perror("connect"); return 2; }
    setsockopt(cs[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(cs[i].fd, F_SETFL, O_NONBLOCK);
    ev.events = EPOLLIN;
    ev.data.ptr = &cs[i];
    epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
  }
  start = now();
  stop = start + seconds;
  for (i = 0; i < conns; i++) {
    int d;
    for (d = 0; d < depth; d++) queue_request(&cs[i]);
    if (flush_out(&cs[i]) != 0) { perror("write"); return 2; }
  }
  while (now() < stop && (count == 0 || answered < count)) {
    struct epoll_event evs[64];
    int n = epoll_wait(ep, evs, 64, 100), k;
    for (k = 0; k < n; k++) {
      conn *c = evs[k].data.ptr;
      ssize_t r = read(c->fd, c->in + c->in_n, sizeof c->in - c->in_n);
      long got;
      if (r <= 0) {
        if (r < 0 && errno == EAGAIN) continue;
        fprintf(stderr, "smclient: a connection closed\n");
        errors++;
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        continue;
      }
      c->in_n += (size_t)r;
      got = take_answers(c);
      answered += got;
      while (got-- > 0 && now() < stop && (count == 0 || answered + (long)c->inflight < count))
        queue_request(c);
      if (flush_out(c) != 0) errors++;
    }
  }
  seconds = now() - start;
  qsort(lat, n_lat, sizeof *lat, cmp_double);
  printf("requests=%zu seconds=%.3f rps=%.0f p50_us=%.0f p99_us=%.0f max_us=%.0f errors=%ld\n",
         n_lat, seconds, (double)n_lat / seconds, n_lat ? lat[n_lat / 2] * 1e6 : 0,
         n_lat ? lat[(size_t)((double)n_lat * 0.99)] * 1e6 : 0,
         n_lat ? lat[n_lat - 1] * 1e6 : 0, errors);
  return 0;
}
