/* libFuzzer harness: domain names to A-labels and back, and MX matching.
 * Properties: the A-label form is a fixed point, and the U-label form maps back to it. */
#include "mtasts.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char ascii[MTASTS_NAME_MAX + 1], again[MTASTS_NAME_MAX + 1], uni[MTASTS_UNAME_MAX];
  char err[MTASTS_ERR_MAX];
  const char *s = (const char *)data;
  const char *nul = memchr(s, '\0', size);
  /* input "pattern\0host" also exercises matching with arbitrary bytes on both sides */
  if (nul) mtasts_match(s, (size_t)(nul - s), nul + 1, size - (size_t)(nul - s) - 1);
  if (mtasts_domain_ascii(s, size, ascii, err) != 0) return 0;
  if (strlen(ascii) > MTASTS_NAME_MAX) abort();
  if (mtasts_domain_ascii(ascii, strlen(ascii), again, err) != 0 || strcmp(ascii, again) != 0)
    abort();
  if (mtasts_domain_unicode(ascii, uni, err) != 0) abort();
  if (mtasts_domain_ascii(uni, strlen(uni), again, err) != 0 || strcmp(ascii, again) != 0)
    abort();
  if (!mtasts_match(ascii, strlen(ascii), ascii, strlen(ascii))) abort();
  return 0;
}
