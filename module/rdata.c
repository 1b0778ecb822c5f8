/* rdata.c: decoding DNS rdata as libunbound hands it over (wire format, names uncompressed).
 * Pure C, no Lua, no libunbound: fuzzed from fuzz/fuzz_rdata.c. */
#include "rdata.h"

#include <stdio.h>
#include <string.h>

static int errf(char *err, const char *what) {
  snprintf(err, MTASTS_ERR_MAX, "%s", what);
  return -1;
}

int mtasts_rdata_txt(const unsigned char *p, size_t n, mtasts_buf *out, char *err) {
  size_t pos = 0;
  out->n = 0;
  if (n == 0) return errf(err, "TXT rdata is empty");
  while (pos < n) {
    size_t len = p[pos++];
    if (n - pos < len) return errf(err, "TXT rdata: a string runs past the end");
    if (mtasts_buf_reserve(out, out->n + len + 1) != 0) return errf(err, "out of memory");
    memcpy(out->p + out->n, p + pos, len);
    out->n += len;
    pos += len;
  }
  return 0;
}

int mtasts_rdata_name(const unsigned char *p, size_t n, size_t *used, char *name, char *err) {
  size_t pos = 0, o = 0;
  for (;;) {
    size_t len, i;
    if (pos >= n) return errf(err, "name runs past the end of the rdata");
    len = p[pos++];
    if (len == 0) break;
    if (len > 63) return errf(err, "name has a compressed or invalid label");
    if (n - pos < len) return errf(err, "name runs past the end of the rdata");
    /* the dot before the label counts: name holds MTASTS_NAME_MAX octets and the NUL */
    if ((o > 0 ? o + 1 : o) + len > MTASTS_NAME_MAX)
      return errf(err, "name is longer than 253 octets");
    if (o > 0) name[o++] = '.';
    for (i = 0; i < len; i++) {
      unsigned char c = p[pos + i];
      if (c == '.' || c < 0x21 || c > 0x7e) return errf(err, "name has a byte that is no LDH");
      name[o++] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
    }
    pos += len;
  }
  name[o] = '\0';
  *used = pos;
  return 0;
}

int mtasts_rdata_mx(const unsigned char *p, size_t n, unsigned *pref, char *host, char *err) {
  size_t used;
  if (n < 3) return errf(err, "MX rdata is too short");
  *pref = (unsigned)mtasts_get_u16(p);
  if (mtasts_rdata_name(p + 2, n - 2, &used, host, err) != 0) return -1;
  if (used != n - 2) return errf(err, "MX rdata has bytes after the name");
  return 0;
}

int mtasts_rdata_tlsa(const unsigned char *p, size_t n, unsigned *usage, unsigned *selector,
                      unsigned *mtype, mtasts_span *data, char *err) {
  if (n < 4) return errf(err, "TLSA rdata is too short");
  *usage = p[0];
  *selector = p[1];
  *mtype = p[2];
  data->p = (const char *)p + 3;
  data->n = n - 3;
  return 0;
}
