/* stall PORT SECONDS: accept TCP connections on 127.0.0.1:PORT and never answer (a TLS
 * handshake that stalls), for SECONDS at most. Part of the fixture world (spec/support). */
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
  while (time(NULL) < end) {
    struct pollfd p = { s, POLLIN, 0 };
    if (poll(&p, 1, 200) > 0) (void)accept(s, NULL, NULL);   /* kept open, never read */
  }
  return 0;
}
