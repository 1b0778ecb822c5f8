/* libFuzzer harness: the MTA-STS TXT record parser, and the record-candidate test. */
#include "mtasts.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mtasts_record r;
  char err[MTASTS_ERR_MAX];
  const char *s = (const char *)data;
  memset(&r, 0, sizeof r);
  if (mtasts_parse_record(s, size, &r, err) == 0) {
    size_t i;
    /* a parsed record has an id of 1-32 bytes inside the input, and is a candidate */
    if (r.id.n < 1 || r.id.n > 32 || r.id.p < s || r.id.p + r.id.n > s + size) abort();
    if (!mtasts_is_sts_record(s, size)) abort();
    for (i = 0; i < r.ext.n; i++)
      if (r.ext.v[i].key.n == 0 || r.ext.v[i].value.n == 0) abort();
  } else if (strlen(err) == 0 || strlen(err) >= MTASTS_ERR_MAX) {
    abort();
  }
  mtasts_record_free(&r);
  return 0;
}
