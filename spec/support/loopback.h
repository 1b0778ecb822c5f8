/* loopback.h: the listening sockets of the fixture helpers in spec/support/ C files (stall,
 * evildns, evilhttps). Loopback only: the specs send traffic nowhere else. */
#ifndef MTASTS_SPEC_LOOPBACK_H
#define MTASTS_SPEC_LOOPBACK_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* A socket of type (SOCK_STREAM: listening; SOCK_DGRAM) bound to 127.0.0.1:port; on
 * failure, says why (as who) and exits 1. */
static int loopback_socket(int type, const char *port, const char *who) {
  struct sockaddr_in a;
  int s = socket(AF_INET, type, 0), one = 1;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)atoi(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (s >= 0 && type == SOCK_STREAM) setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 ||
      (type == SOCK_STREAM && listen(s, 64) != 0)) {
    perror(who);
    exit(1);
  }
  return s;
}

#endif
