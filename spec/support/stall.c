/* stall PORT SECONDS: accept TCP connections on 127.0.0.1:PORT and never answer (a TLS
 * handshake that stalls), and read UDP datagrams on the same port and never answer (a DNS
 * server whose answers never come), for SECONDS at most. Part of the fixture world. */
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
  struct sockaddr_in a;
  int s, one = 1;
  time_t end;
  if (argc != 3) {
    fprintf(stderr, "usage: stall PORT SECONDS\n");
    return 2;
  }
  end = time(NULL) + atoi(argv[2]);
  s = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)atoi(argv[1]));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 64) != 0) {
    perror("stall");
    return 1;
  }
  {
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    char buf[4096];
    if (u < 0 || bind(u, (struct sockaddr *)&a, sizeof a) != 0) {
      perror("stall: udp");
      return 1;
    }
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
