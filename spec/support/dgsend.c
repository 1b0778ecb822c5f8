/* dgsend: a libtlsrpt-like sender for the collector's specs and benchmark. It writes
 * datagrams in the libtlsrpt wire format (the worked examples' mix: sts successes, an
 * expired certificate, a TLSA failure, a no-policy success) to a Unix datagram socket, as
 * Postfix does: a new socket per datagram (or one socket with --reuse), non-blocking by
 * default (MSG_DONTWAIT, as the library in production) or blocking with --blocking.
 *
 *   dgsend SOCKET mix COUNT [--domains N] [--blocking] [--reuse] [--rate R]
 *   dgsend SOCKET raw FILE [--blocking] [--sndbuf N]   FILE: records of u32 big-endian length
 *                                                        + bytes; --sndbuf: SO_SNDBUFFORCE
 *
 * Prints one JSON line: {"sent":, "eagain":, "refused":, "other":, "seconds":}. A datagram
 * that cannot be sent is counted and dropped, as libtlsrpt drops it. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char *const MIX[4] = {
  "{\"dpv\": \"1\",\"d\": \"%s\",\"pr\": \"v=TLSRPTv1; rua=mailto:tlsrpt@%s\",\"policies\":"
  "[{\"policy-type\":2,\"policy-domain\": \"%s\",\"policy-string\":[\"version: STSv1\","
  "\"mode: enforce\",\"mx: mx1.%s\",\"mx: mx2.%s\",\"max_age: 604800\"],\"mx-host\":"
  "[\"mx1.%s\",\"mx2.%s\"],\"t\":0,\"f\":0}]}",
  "{\"dpv\": \"1\",\"d\": \"%s\",\"pr\": \"v=TLSRPTv1; rua=mailto:tlsrpt@%s\",\"policies\":"
  "[{\"policy-type\":2,\"policy-domain\": \"%s\",\"policy-string\":[\"version: STSv1\","
  "\"mode: enforce\",\"mx: mx1.%s\",\"mx: mx2.%s\",\"max_age: 604800\"],\"mx-host\":"
  "[\"mx1.%s\",\"mx2.%s\"],\"failure-details\":[{\"c\":204,\"s\": \"192.0.2.25\",\"n\": "
  "\"mx1.%s\",\"h\": \"mx1.%s\\r\\nPIPELINING\\r\\nSIZE 10240000\\r\\nSTARTTLS\\r\\n8BITMIME\","
  "\"r\": \"198.51.100.1\"}],\"t\":1,\"f\":1}]}",
  "{\"dpv\": \"1\",\"d\": \"%s\",\"pr\": \"v=TLSRPTv1; rua=mailto:tlsrpt@%s\",\"policies\":"
  "[{\"policy-type\":1,\"policy-domain\": \"mx1.%s\",\"policy-string\":[\"3 1 1 "
  "C7F198E7401ABDB4D405D68778A8713120BF418B5B2EE0F326C3B345BC4CBAFB\",\"2 1 1 "
  "F546EA827B8F17B2709B7CA258CDD7BDA3A8220CF67998F39B33A9BD8E146393\"],\"failure-details\":"
  "[{\"c\":205,\"s\": \"192.0.2.25\",\"n\": \"mx1.%s\",\"h\": \"mx1.%s\\r\\nPIPELINING\\r\\n"
  "SIZE 10240000\\r\\nSTARTTLS\\r\\n8BITMIME\",\"r\": \"198.51.100.1\",\"f\": "
  "\"all-trust-anchors-unusable\"}],\"t\":1,\"f\":1}]}",
  "{\"dpv\": \"1\",\"d\": \"%s\",\"pr\": \"v=TLSRPTv1; rua=mailto:tlsrpt@%s\",\"policies\":"
  "[{\"policy-type\":9,\"policy-domain\": \"%s\",\"t\":0,\"f\":0}]}",
};

/* the i-th datagram of the mix: of every 10, 7 sts successes, then one of each other kind */
static int make(char *o, size_t on, unsigned long i, unsigned domains) {
  char d[64];
  unsigned k = (unsigned)(i % 10);
  snprintf(d, sizeof d, "dom%lu.example", domains ? (i / 10) % domains : 0);
  if (k < 7) return snprintf(o, on, MIX[0], d, d, d, d, d, d, d);
  if (k == 7) return snprintf(o, on, MIX[1], d, d, d, d, d, d, d, d, d);
  if (k == 8) return snprintf(o, on, MIX[2], d, d, d, d, d);
  return snprintf(o, on, MIX[3], d, d, d);
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  struct sockaddr_un a;
  unsigned long count = 0, i, sent = 0, eagain = 0, refused = 0, other = 0;
  unsigned domains = 100;
  int blocking = 0, reuse = 0, fd = -1, k, sndbuf = 0;
  double rate = 0, t0;
  FILE *raw = NULL;
  static char buf[1 << 20];
  if (argc < 4) {
    fprintf(stderr, "usage: dgsend SOCKET mix COUNT [--domains N] [--blocking] [--reuse] "
                    "[--rate R] | dgsend SOCKET raw FILE [--blocking]\n");
    return 64;
  }
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  snprintf(a.sun_path, sizeof a.sun_path, "%s", argv[1]);
  if (strcmp(argv[2], "raw") == 0) {
    if (!(raw = fopen(argv[3], "rb"))) { perror(argv[3]); return 66; }
  } else {
    count = strtoul(argv[3], NULL, 10);
  }
  for (k = 4; k < argc; k++) {
    if (strcmp(argv[k], "--blocking") == 0) blocking = 1;
    else if (strcmp(argv[k], "--reuse") == 0) reuse = 1;
    else if (strcmp(argv[k], "--domains") == 0 && k + 1 < argc) domains = (unsigned)atoi(argv[++k]);
    else if (strcmp(argv[k], "--rate") == 0 && k + 1 < argc) rate = atof(argv[++k]);
    else if (strcmp(argv[k], "--sndbuf") == 0 && k + 1 < argc) sndbuf = atoi(argv[++k]);
    else { fprintf(stderr, "dgsend: unknown option %s\n", argv[k]); return 64; }
  }
  t0 = now();
  for (i = 0;; i++) {
    size_t n;
    ssize_t w;
    if (raw) {
      unsigned char h[4];
      if (fread(h, 1, 4, raw) != 4) break;
      n = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
      if (n > sizeof buf || fread(buf, 1, n, raw) != n) { fprintf(stderr, "dgsend: bad raw file\n"); return 65; }
    } else {
      if (i >= count) break;
      n = (size_t)make(buf, sizeof buf, i, domains);
    }
    if (rate > 0)
      while (now() - t0 < (double)i / rate) ;
    if (fd < 0) {
      if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0) { perror("socket"); return 71; }
      if (sndbuf && setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) != 0) {
        perror("SO_SNDBUFFORCE");
        return 71;
      }
    }
    w = sendto(fd, buf, n, blocking ? 0 : MSG_DONTWAIT, (struct sockaddr *)&a, sizeof a);
    if (w == (ssize_t)n) sent++;
    else if (errno == EAGAIN || errno == EWOULDBLOCK) eagain++;
    else if (errno == ECONNREFUSED || errno == ENOENT) refused++;
    else other++;
    if (!reuse) {
      close(fd);
      fd = -1;
    }
  }
  printf("{\"sent\":%lu,\"eagain\":%lu,\"refused\":%lu,\"other\":%lu,\"seconds\":%.4f}\n", sent,
         eagain, refused, other, now() - t0);
  return 0;
}
