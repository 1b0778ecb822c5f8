/* bench/smceiling.c: the ceiling for socketmap benchmarks. A server that answers every
 * request with a fixed reply and looks nothing up: what the machine allows a socketmap
 * server on one core. epoll, one thread.
 *
 * usage: smceiling PORT   (listens on 127.0.0.1:PORT; prints "ready" once listening) */
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
#include <unistd.h>

#define REPLY "OK secure match=mx.example.com servername=hostname"

typedef struct { int fd; char in[8192]; size_t n; } conn;

int main(int argc, char **argv) {
  struct sockaddr_in sa;
  int lfd, ep, one = 1;
  char reply[128];
  int rn = snprintf(reply, sizeof reply, "%zu:%s,", strlen(REPLY), REPLY);
  struct epoll_event ev;
  if (argc < 2) { fprintf(stderr, "usage: smceiling PORT\n"); return 64; }
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)atoi(argv[1]));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  lfd = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 128) != 0) {
    perror("listen");
    return 2;
  }
  ep = epoll_create1(0);
  ev.events = EPOLLIN;
  ev.data.ptr = NULL;
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  printf("ready\n");
  fflush(stdout);
  for (;;) {
    struct epoll_event evs[64];
    int n = epoll_wait(ep, evs, 64, -1), k;
    for (k = 0; k < n; k++) {
      conn *c = evs[k].data.ptr;
      if (!c) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) continue;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c = calloc(1, sizeof *c);
        c->fd = fd;
        ev.events = EPOLLIN;
        ev.data.ptr = c;
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        continue;
      }
      {
        ssize_t r = read(c->fd, c->in + c->n, sizeof c->in - c->n);
        char out[65536];
        size_t on = 0;
        if (r <= 0) {
          if (r < 0 && errno == EAGAIN) continue;
          close(c->fd);
          free(c);
          continue;
        }
        c->n += (size_t)r;
        for (;;) {      /* answer every complete netstring */
          size_t i = 0, len = 0;
          while (i < c->n && c->in[i] >= '0' && c->in[i] <= '9') len = len * 10 + (size_t)(c->in[i++] - '0');
          if (i == c->n || c->n < i + 1 + len + 1) break;
          memmove(c->in, c->in + i + len + 2, c->n - (i + len + 2));
          c->n -= i + len + 2;
          if (on + (size_t)rn < sizeof out) { memcpy(out + on, reply, (size_t)rn); on += (size_t)rn; }
        }
        if (on && write(c->fd, out, on) < 0) { close(c->fd); free(c); }
      }
    }
  }
}
