/* libFuzzer harness: DNS rdata decoding (TXT, MX, names, TLSA). The first byte picks the
 * decoder; the rest is the rdata. */
#include "rdata.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[MTASTS_ERR_MAX], name[MTASTS_NAME_MAX + 1];
  mtasts_buf out = { NULL, 0, 0 };
  unsigned a, b, c;
  mtasts_span span;
  size_t used;
  if (size < 1) return 0;
  switch (data[0] % 4) {
  case 0:
    if (mtasts_rdata_txt(data + 1, size - 1, &out, err) == 0 && out.n >= size) abort();
    break;
  case 1:
    if (mtasts_rdata_mx(data + 1, size - 1, &a, name, err) == 0 &&
        strlen(name) > MTASTS_NAME_MAX) abort();
    break;
  case 2:
    if (mtasts_rdata_name(data + 1, size - 1, &used, name, err) == 0 && used > size - 1) abort();
    break;
  default:
    if (mtasts_rdata_tlsa(data + 1, size - 1, &a, &b, &c, &span, err) == 0 &&
        span.p + span.n != (const char *)data + size) abort();
  }
  mtasts_buf_free(&out);
  return 0;
}
