/* libFuzzer harness: the policy parser, then MX matching with each parsed pattern. */
#include "mtasts.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mtasts_policy p;
  char err[MTASTS_ERR_MAX];
  memset(&p, 0, sizeof p);
  if (mtasts_parse_policy((const char *)data, size, &p, err) == 0) {
    size_t i;
    if (p.max_age > MTASTS_MAX_AGE_MAX) abort();
    if (p.mode != MTASTS_MODE_NONE && p.mx.n == 0) abort();
    for (i = 0; i < p.mx.n; i++) {
      mtasts_span m = p.mx.v[i];
      char host[MTASTS_NAME_MAX + 8];
      /* every pattern names a host it matches: itself, or "x." + base for a wildcard */
      if (m.n > MTASTS_NAME_MAX + 2) abort();
      if (m.n >= 2 && m.p[0] == '*') {
        host[0] = 'x';
        memcpy(host + 1, m.p + 1, m.n - 1);
        if (!mtasts_match(m.p, m.n, host, m.n)) abort();
        if (mtasts_match(m.p, m.n, m.p + 2, m.n - 2)) abort();   /* never its base */
      } else if (!mtasts_match(m.p, m.n, m.p, m.n)) {
        abort();
      }
    }
  }
  mtasts_policy_free(&p);
  return 0;
}
