/* libFuzzer harness: the report codecs (incoming bytes). The first byte picks gunzip (even)
 * or base64 decoding (odd). What a decoder accepts must survive a round trip through its
 * encoder; anything else must fail with a message; gunzip never passes its limit. */
#include "results.h"

#include <stdlib.h>
#include <string.h>

#define LIMIT (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mtasts_buf out = {NULL, 0, 0}, again = {NULL, 0, 0}, back = {NULL, 0, 0};
  char err[MTASTS_ERR_MAX];
  int rc;
  if (size < 1) return 0;
  if ((data[0] & 1) == 0) {
    rc = mtasts_gunzip(data + 1, size - 1, LIMIT, &out, err);
    if (rc != 0) {
      if (rc != MTASTS_CODEC_ENOMEM && strlen(err) == 0) abort();
    } else {
      if (out.n > LIMIT) abort();
      if (mtasts_gzip(out.p, out.n, &again) != 0) abort();
      if (mtasts_gunzip(again.p, again.n, LIMIT, &back, err) != 0) abort();
      if (back.n != out.n || (out.n && memcmp(back.p, out.p, out.n) != 0)) abort();
    }
  } else {
    rc = mtasts_base64_decode(data + 1, size - 1, &out, err);
    if (rc != 0) {
      if (rc != MTASTS_CODEC_ENOMEM && strlen(err) == 0) abort();
    } else {
      if (mtasts_base64_encode(out.p, out.n, 76, &again) != 0) abort();
      if (mtasts_base64_decode(again.p, again.n, &back, err) != 0) abort();
      if (back.n != out.n || (out.n && memcmp(back.p, out.p, out.n) != 0)) abort();
    }
    /* and any bytes encode and decode back */
    mtasts_buf_free(&again);
    mtasts_buf_free(&back);
    if (mtasts_base64_encode(data + 1, size - 1, 0, &again) != 0) abort();
    if (mtasts_base64_decode(again.p, again.n, &back, err) != 0) abort();
    if (back.n != size - 1 || (back.n && memcmp(back.p, data + 1, back.n) != 0)) abort();
  }
  mtasts_buf_free(&out);
  mtasts_buf_free(&again);
  mtasts_buf_free(&back);
  return 0;
}
