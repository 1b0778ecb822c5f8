/* libFuzzer harness: the TLSRPT TXT record parser. Properties: every rua URI lies inside the
 * input; every mailto: URI accepted has an address that decodes to printable ASCII with one
 * '@' outside quotes and a host name after it. */
#include "mtasts.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mtasts_tlsrpt_record r;
  char err[MTASTS_ERR_MAX];
  const char *s = (const char *)data;
  memset(&r, 0, sizeof r);
  if (mtasts_parse_tlsrpt_record(s, size, &r, err) == 0) {
    size_t i;
    if (r.rua.n == 0 || !mtasts_is_tlsrpt_record(s, size)) abort();
    for (i = 0; i < r.rua.n; i++) {
      char addr[MTASTS_MAILTO_MAX + 1];
      size_t an, j;
      const char *why;
      if (r.rua.v[i].n < 8 || r.rua.v[i].p < s || r.rua.v[i].p + r.rua.v[i].n > s + size)
        abort();
      if (strncasecmp(r.rua.v[i].p, "mailto:", 7) != 0) continue;
      if (!mtasts_mailto_address(r.rua.v[i].p, r.rua.v[i].n, addr, &an, &why)) abort();
      if (an == 0 || an > MTASTS_MAILTO_MAX || strlen(addr) != an) abort();
      for (j = 0; j < an; j++)
        if ((unsigned char)addr[j] < 0x20 || (unsigned char)addr[j] > 0x7e) abort();
      if (!strchr(addr, '@') || addr[an - 1] == '@') abort();
    }
  } else if (strlen(err) == 0) {
    abort();
  }
  mtasts_tlsrpt_record_free(&r);
  return 0;
}
