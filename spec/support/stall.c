/* stall PORT SECONDS: accept TCP connections on 127.0.0.1:PORT and never answer (a TLS
 * handshake that stalls), and read UDP datagrams on the same port and never answer (a DNS
 * server whose answers never come), for SECONDS at most. Part of the fixture world. */
#include "loopback.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int s;
  time_t end;
  if (argc != 3) {
    fprintf(stderr, "usage: stall PORT SECONDS\n");
    return 2;
  }
  end = time(NULL) + atoi(argv[2]);
  s = loopback_socket(SOCK_STREAM, argv[1], "stall");
  {
    int u = loopback_socket(SOCK_DGRAM, argv[1], "stall: udp");
    char buf[4096];
    while (time(NULL) < end) {
      struct pollfd p[2] = { { s, POLLIN, 0 }, { u, POLLIN, 0 } };
      if (poll(p, 2, 200) > 0) {
        if (p[0].revents) (void)accept(s, NULL, NULL);   /* kept open, never read */
        if (p[1].revents) (void)recv(u, buf, sizeof buf, 0);   /* dropped */
      }
    }
  }
  return 0;
}
