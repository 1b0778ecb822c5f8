/* libFuzzer harness: the libtlsrpt datagram parser (module/dgram.c). Properties: it never
 * crashes or overreads; a refusal has a reason and a message; every entry it makes decodes
 * back (mtasts_dgram_decode) to a known policy type, with counts that say one session ('S':
 * success or failure, one of them) or one failure ('D': a known result type); every string
 * in an entry is valid UTF-8; a datagram of k policies makes k 'S' entries. */
#include "dgram.h"

#include <stdlib.h>
#include <string.h>

static int valid_utf8(const unsigned char *p, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = p[i];
    size_t k, len;
    if (c < 0x80) { i++; continue; }
    if (c >= 0xC2 && c < 0xE0) len = 2;
    else if (c >= 0xE0 && c < 0xF0) len = 3;
    else if (c >= 0xF0 && c < 0xF5) len = 4;
    else return 0;
    if (n - i < len) return 0;
    for (k = 1; k < len; k++)
      if ((p[i + k] & 0xC0) != 0x80) return 0;
    i += len;
  }
  return 1;
}

static void check_str(mtasts_dgram_str s) {
  if (!valid_utf8((const unsigned char *)s.p, s.n)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mtasts_dgram d;
  char err[200];
  size_t i, sessions = 0;
  int rc;
  memset(&d, 0, sizeof d);
  rc = mtasts_dgram_parse(data, size, &d, err, sizeof err);
  if (rc) {
    if (rc < 1 || rc >= MTASTS_DGRAM_NREASONS || err[0] == '\0' || d.n != 0) abort();
  } else {
    for (i = 0; i < d.n; i++) {
      const mtasts_dgram_entry *e = (const mtasts_dgram_entry *)d.ents.p + i;
      mtasts_dgram_view v;
      const unsigned char *p;
      uint32_t j;
      int k;
      if (mtasts_dgram_decode(d.keys.p + e->off, e->len, &v) != 0) abort();
      if (!mtasts_dgram_policy_type(v.type)) abort();
      if (v.d.n == 0 || v.pdomain.n == 0) abort();
      check_str(v.d);
      check_str(v.pdomain);
      if (v.has_pr) check_str(v.pr);
      for (j = 0, p = v.strings; j < v.nstrings; j++) check_str(mtasts_dgram_next(&p));
      for (j = 0, p = v.mx; j < v.nmx; j++) check_str(mtasts_dgram_next(&p));
      if (v.kind == 'S') {
        if (e->a + e->b != 1) abort();
        sessions++;
      } else {
        if (e->a != 1 || e->b != 0 || !mtasts_dgram_result_type(v.code)) abort();
        for (k = 0; k < 6; k++)
          if (v.has[k]) check_str(v.field[k]);
      }
    }
    if (sessions != d.sessions || sessions == 0) abort();
  }
  mtasts_dgram_free(&d);
  return 0;
}
