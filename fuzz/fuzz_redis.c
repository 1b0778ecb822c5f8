/* libFuzzer harness: Redis replies (bytes from a server) through the bounded reader of
 * redis.c. The first byte sets the size of the pieces the rest is fed in, as a socket would
 * cut it. Every reply is a well-formed tree within the limits of redis.h; a failure has a
 * message; the same bytes fed in one piece give the same replies (the cuts change nothing). */
#include "redis.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const mtasts_redis_reply *r, int depth, size_t *elements) {
  size_t i;
  if (!r || depth > 8) abort();
  switch (r->type) {
  case MTASTS_REDIS_STRING: case MTASTS_REDIS_STATUS: case MTASTS_REDIS_ERROR:
    if (!r->str || r->str[r->len] != '\0' || r->len > MTASTS_REDIS_REPLY_MAX) abort();
    break;
  case MTASTS_REDIS_ARRAY:
    *elements += r->n;
    if (*elements > MTASTS_REDIS_ELEMENTS_MAX) abort();
    for (i = 0; i < r->n; i++) check(r->elem[i], depth + 1, elements);
    break;
  case MTASTS_REDIS_INTEGER: case MTASTS_REDIS_NIL:
    break;
  default:
    abort();
  }
}

static int same(const mtasts_redis_reply *a, const mtasts_redis_reply *b) {
  size_t i;
  if (a->type != b->type || a->integer != b->integer || a->len != b->len || a->n != b->n)
    return 0;
  if (a->len && memcmp(a->str, b->str, a->len) != 0) return 0;
  for (i = 0; i < a->n; i++)
    if (!same(a->elem[i], b->elem[i])) return 0;
  return 1;
}

/* Feed data in pieces of step bytes; the replies into out (up to max), their count in *count;
 * 0, or -1 on a failure. */
static int run(const uint8_t *data, size_t size, size_t step, mtasts_redis_reply **out,
               int max, int *count) {
  mtasts_redis_reader *rd = mtasts_redis_reader_new();
  char err[MTASTS_ERR_MAX];
  size_t off = 0;
  int n = 0, rc = 0;
  if (!rd) abort();
  while (off < size && rc == 0) {
    size_t k = size - off < step ? size - off : step;
    mtasts_redis_reply *r;
    err[0] = '\0';
    if ((rc = mtasts_redis_reader_feed(rd, (const char *)data + off, k, err)) != 0) break;
    off += k;
    while ((rc = mtasts_redis_reader_get(rd, &r, err)) == 0 && r) {
      size_t elements = 0;
      check(r, 0, &elements);
      if (n < max) out[n++] = r;
      else mtasts_redis_reply_free(r);
    }
  }
  if (rc != 0 && (rc != MTASTS_REDIS_EPROTO || strlen(err) == 0)) abort();
  mtasts_redis_reader_free(rd);
  *count = n;
  return rc != 0 ? -1 : 0;
}

#define MAX 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mtasts_redis_reply *a[MAX], *b[MAX];
  int na, nb, i, ra, rb;
  if (size < 1) return 0;
  ra = run(data + 1, size - 1, (size_t)data[0] + 1, a, MAX, &na);
  rb = run(data + 1, size - 1, size, b, MAX, &nb);
  if (ra != rb) abort();   /* the cuts change nothing, failures included */
  if (ra == 0) {
    if (na != nb) abort();
    for (i = 0; i < na; i++)
      if (!same(a[i], b[i])) abort();
  }
  for (i = 0; i < na; i++) mtasts_redis_reply_free(a[i]);
  for (i = 0; i < nb; i++) mtasts_redis_reply_free(b[i]);
  return 0;
}
