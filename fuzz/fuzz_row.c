/* libFuzzer harness: the cache row decoder (bytes read back from disk). A row it accepts
 * must be walkable to its end, and re-encoding it must give back the same bytes. */
#include "row.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mtasts_row row, meta;
  mtasts_row_iter it;
  mtasts_span a, b;
  mtasts_policy p;
  mtasts_buf out = { NULL, 0, 0 };
  char err[MTASTS_ERR_MAX];
  int lower = 1;
  size_t i;
  if (mtasts_row_decode(data, size, &row, err) != 0) {
    if (strlen(err) == 0) abort();
    return 0;
  }
  memset(&p, 0, sizeof p);
  p.mode = row.mode;
  p.max_age = row.max_age;
  p.mx.v = calloc(row.n_mx + 1, sizeof *p.mx.v);
  p.ext.v = calloc(row.n_ext + 1, sizeof *p.ext.v);
  if (!p.mx.v || !p.ext.v) abort();
  mtasts_row_mx_iter(&row, &it);
  while (mtasts_row_next_mx(&it, &a)) {
    if (a.p < (const char *)data || a.p + a.n > (const char *)data + size) abort();
    for (i = 0; i < a.n; i++) if (a.p[i] >= 'A' && a.p[i] <= 'Z') lower = 0;
    p.mx.v[p.mx.n++] = a;
  }
  mtasts_row_ext_iter(&row, &it);
  while (mtasts_row_next_ext(&it, &a, &b)) {
    if (b.p + b.n > (const char *)data + size) abort();
    p.ext.v[p.ext.n].key = a;
    p.ext.v[p.ext.n].value = b;
    p.ext.n++;
  }
  if (p.mx.n != row.n_mx || p.ext.n != row.n_ext) abort();
  meta = row;
  /* a backoff row encodes without a policy; otherwise the policy fields come from p */
  if (mtasts_row_encode(&out, &meta, row.backoff && row.n_mx == 0 && row.n_ext == 0 &&
                        row.mode == MTASTS_MODE_NONE ? NULL : &p, row.policy_text) != 0)
    abort();
  if (lower && (out.n != size || memcmp(out.p, data, size) != 0)) abort();
  mtasts_buf_free(&out);
  free(p.mx.v);
  free(p.ext.v);
  return 0;
}
