/* libFuzzer harness: the TLSRPT TXT record parser. */
#include "mtasts.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mtasts_tlsrpt_record r;
  char err[MTASTS_ERR_MAX];
  const char *s = (const char *)data;
  memset(&r, 0, sizeof r);
  if (mtasts_parse_tlsrpt_record(s, size, &r, err) == 0) {
    size_t i;
    if (r.rua.n == 0 || !mtasts_is_tlsrpt_record(s, size)) abort();
    for (i = 0; i < r.rua.n; i++)
      if (r.rua.v[i].n < 8 || r.rua.v[i].p < s || r.rua.v[i].p + r.rua.v[i].n > s + size)
        abort();
  } else if (strlen(err) == 0) {
    abort();
  }
  mtasts_tlsrpt_record_free(&r);
  return 0;
}
