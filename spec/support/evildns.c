/* evildns PORT SECONDS: a hostile DNS server on 127.0.0.1:PORT (UDP and TCP) for SECONDS at
 * most. Part of the fixture world (spec/hostile_spec.lua). What it sends depends on the
 * second label of the question, `_mta-sts.<mode>.example`:
 *   tc     UDP: an empty answer with TC set; TCP: the connection is closed unanswered
 *   cut    an answer that claims a 200-byte TXT record and stops after 10 of them
 *   loop   an answer whose owner name is a compression pointer to itself
 *   big    one TXT record "v=STSv1; id=big;" in 1-character strings followed by 20,000
 *          empty strings (20 KiB), sent over UDP whatever size the client offered
 *   many   2,000 TXT records of which one is "v=STSv1; id=many;" (30 KiB), over UDP too
 *   spoof  an answer with the wrong message id (never matches: the client waits it out)
 * Anything else gets NXDOMAIN. */
#include "loopback.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXMSG 65535

static unsigned char out[MAXMSG];

static size_t put16(size_t o, unsigned v) {
  out[o] = (unsigned char)(v >> 8);
  out[o + 1] = (unsigned char)v;
  return o + 2;
}

/* The question's end (offset past qtype/qclass) and its second label, or 0 if malformed. */
static size_t question(const unsigned char *q, size_t n, char *mode, size_t modesz) {
  size_t o = 12;
  int label = 0;
  mode[0] = 0;
  if (n < 12) return 0;
  while (o < n && q[o] != 0) {
    size_t len = q[o];
    if (len > 63 || o + 1 + len > n) return 0;
    if (label == 1 && len < modesz) {
      size_t i;
      for (i = 0; i < len; i++) mode[i] = (char)tolower(q[o + 1 + i]);
      mode[len] = 0;
    }
    label++;
    o += 1 + len;
  }
  if (o + 5 > n) return 0;
  return o + 5;
}

/* An answer ready to send for query q (n bytes); its length, or 0 to send nothing. */
static size_t answer(const unsigned char *q, size_t n, int tcp) {
  char mode[64];
  size_t qend = question(q, n, mode, sizeof mode), o, i;
  unsigned flags = 0x8180;   /* QR, RD, RA */
  if (qend == 0) return 0;
  memcpy(out, q, qend);
  out[4] = 0; out[5] = 1;                                  /* one question */
  out[6] = out[7] = out[8] = out[9] = out[10] = out[11] = 0;
  o = qend;
  if (strcmp(mode, "tc") == 0) {
    if (tcp) return 0;
    flags |= 0x0200;
  } else if (strcmp(mode, "cut") == 0) {
    out[7] = 1;
    o = put16(o, 0xC00C); o = put16(o, 16); o = put16(o, 1);
    o = put16(o, 0); o = put16(o, 300); o = put16(o, 200);
    memcpy(out + o, "\x0fv=STSv1; id=cu", 10);
    o += 10;
  } else if (strcmp(mode, "loop") == 0) {
    out[7] = 1;
    o = put16(o, 0xC000 | (unsigned)qend);                 /* points at itself */
    o = put16(o, 16); o = put16(o, 1); o = put16(o, 0); o = put16(o, 300);
    o = put16(o, 4); memcpy(out + o, "\x03v=S", 4); o += 4;
  } else if (strcmp(mode, "big") == 0) {
    const char *rec = "v=STSv1; id=big;";
    size_t len = strlen(rec), rd;
    out[7] = 1;
    o = put16(o, 0xC00C); o = put16(o, 16); o = put16(o, 1);
    o = put16(o, 0); o = put16(o, 300);
    rd = o; o += 2;
    for (i = 0; i < len; i++) { out[o++] = 1; out[o++] = (unsigned char)rec[i]; }
    for (i = 0; i < 20000; i++) out[o++] = 0;
    put16(rd, (unsigned)(o - rd - 2));
  } else if (strcmp(mode, "many") == 0) {
    out[6] = (unsigned char)(2000 >> 8); out[7] = (unsigned char)(2000 & 0xff);
    for (i = 0; i < 2000; i++) {
      char txt[32];
      size_t len;
      if (i == 1000) snprintf(txt, sizeof txt, "v=STSv1; id=many;");
      else snprintf(txt, sizeof txt, "filler-%04zu", i);
      len = strlen(txt);
      o = put16(o, 0xC00C); o = put16(o, 16); o = put16(o, 1);
      o = put16(o, 0); o = put16(o, 300); o = put16(o, (unsigned)len + 1);
      out[o++] = (unsigned char)len;
      memcpy(out + o, txt, len);
      o += len;
    }
  } else if (strcmp(mode, "spoof") == 0) {
    out[0] ^= 0x5a;
  } else {
    flags |= 3;                                            /* NXDOMAIN */
  }
  flags |= (unsigned)(q[2] & 0x01) << 8;                   /* keep RD as asked */
  put16(2, flags);
  return o;
}

static void serve_tcp(int c) {
  unsigned char q[MAXMSG];
  size_t got = 0, need = 2, len;
  struct pollfd p = { c, POLLIN, 0 };
  while (got < need && poll(&p, 1, 2000) > 0) {
    ssize_t r = recv(c, q + got, need - got, 0);
    if (r <= 0) break;
    got += (size_t)r;
    if (got == 2) need = 2 + (((size_t)q[0] << 8) | q[1]);
  }
  if (got == need && need > 2 && (len = answer(q + 2, need - 2, 1)) > 0) {
    unsigned char hdr[2] = { (unsigned char)(len >> 8), (unsigned char)len };
    (void)!send(c, hdr, 2, MSG_NOSIGNAL);
    (void)!send(c, out, len, MSG_NOSIGNAL);
  }
  close(c);
}

int main(int argc, char **argv) {
  int s, u, big = 1 << 20;
  time_t end;
  if (argc != 3) {
    fprintf(stderr, "usage: evildns PORT SECONDS\n");
    return 2;
  }
  end = time(NULL) + atoi(argv[2]);
  s = loopback_socket(SOCK_STREAM, argv[1], "evildns");
  u = loopback_socket(SOCK_DGRAM, argv[1], "evildns: udp");
  setsockopt(u, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  while (time(NULL) < end) {
    struct pollfd p[2] = { { s, POLLIN, 0 }, { u, POLLIN, 0 } };
    if (poll(p, 2, 200) <= 0) continue;
    if (p[0].revents) {
      int c = accept(s, NULL, NULL);
      if (c >= 0) serve_tcp(c);
    }
    if (p[1].revents) {
      unsigned char q[4096];
      struct sockaddr_in from;
      socklen_t fl = sizeof from;
      ssize_t r = recvfrom(u, q, sizeof q, 0, (struct sockaddr *)&from, &fl);
      size_t len;
      if (r > 0 && (len = answer(q, (size_t)r, 0)) > 0)
        (void)!sendto(u, out, len, 0, (struct sockaddr *)&from, fl);
    }
  }
  return 0;
}
