/* evilhttps PORT CERT KEY SECONDS [headers|body]: an HTTPS server on 127.0.0.1:PORT that
 * completes the TLS handshake, reads the request, answers "HTTP/1.1 200 OK" and then sends,
 * for SECONDS at most, either header lines forever (headers, the default) or a complete
 * header and then a body that never ends (body), 4 KiB every 2 ms, from the first
 * millisecond on. Part of the fixture world: a policy host with endless headers, or an
 * endless policy. One connection at a time. */
#include "loopback.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int s;
  time_t end;
  SSL_CTX *ctx;
  char line[4096];
  int body;
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: evilhttps PORT CERT KEY SECONDS [headers|body]\n");
    return 2;
  }
  body = argc == 6 && strcmp(argv[5], "body") == 0;
  signal(SIGPIPE, SIG_IGN);
  end = time(NULL) + atoi(argv[4]);
  ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, argv[2]) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, argv[3], SSL_FILETYPE_PEM) != 1) {
    ERR_print_errors_fp(stderr);
    return 1;
  }
  s = loopback_socket(SOCK_STREAM, argv[1], "evilhttps");
  memset(line, 'a', sizeof line);
  if (!body) memcpy(line, "X-Endless: ", 11);
  line[sizeof line - 2] = '\r';
  line[sizeof line - 1] = '\n';
  while (time(NULL) < end) {
    struct pollfd p = { s, POLLIN, 0 };
    int c;
    SSL *ssl;
    char req[4096];
    if (poll(&p, 1, 200) <= 0) continue;
    if ((c = accept(s, NULL, NULL)) < 0) continue;
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, c);
    if (SSL_accept(ssl) == 1 && SSL_read(ssl, req, sizeof req) > 0 &&
        SSL_write(ssl, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n", 43) > 0 &&
        (!body || SSL_write(ssl, "\r\n", 2) > 0)) {
      while (time(NULL) < end && SSL_write(ssl, line, sizeof line) > 0) usleep(2000);
    }
    SSL_free(ssl);
    close(c);
  }
  return 0;
}
