/* codec.c: gzip (zlib) and base64 for TLSRPT reports. Pure C, no Lua; fuzzed from
 * fuzz/fuzz_codec.c. Inflation is bounded by the caller's limit, so a compression bomb
 * costs at most that much memory. */
#include "results.h"

#include <stdio.h>
#include <string.h>
#include <zlib.h>

int mtasts_gzip(const unsigned char *in, size_t n, mtasts_buf *b) {
  z_stream z;
  int rc;
  memset(&z, 0, sizeof z);
  b->n = 0;
  if (deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    return MTASTS_CODEC_ENOMEM;
  if (mtasts_buf_reserve(b, deflateBound(&z, (uLong)n)) != 0) {
    deflateEnd(&z);
    return MTASTS_CODEC_ENOMEM;
  }
  z.next_in = (Bytef *)in;
  z.avail_in = (uInt)n;
  z.next_out = b->p;
  z.avail_out = (uInt)b->cap;
  rc = deflate(&z, Z_FINISH);
  b->n = z.total_out;
  deflateEnd(&z);
  return rc == Z_STREAM_END ? 0 : MTASTS_CODEC_ENOMEM;
}

int mtasts_gunzip(const unsigned char *in, size_t n, size_t limit, mtasts_buf *b, char *err) {
  z_stream z;
  int rc = Z_OK;
  b->n = 0;
  err[0] = '\0';
  if (n < 18 || in[0] != 0x1f || in[1] != 0x8b) {
    snprintf(err, MTASTS_ERR_MAX, "gunzip: not gzip data");
    return MTASTS_CODEC_ESYNTAX;
  }
  memset(&z, 0, sizeof z);
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return MTASTS_CODEC_ENOMEM;
  z.next_in = (Bytef *)in;
  z.avail_in = (uInt)n;
  for (;;) {
    size_t want = b->cap - b->n < 16384 ? b->n + 65536 : b->cap;
    if (want > limit + 1) want = limit + 1;
    if (b->cap < want && mtasts_buf_reserve(b, want) != 0) {
      inflateEnd(&z);
      return MTASTS_CODEC_ENOMEM;
    }
    z.next_out = b->p + b->n;
    z.avail_out = (uInt)(want - b->n);
    rc = inflate(&z, Z_NO_FLUSH);
    b->n = want - z.avail_out;
    if (b->n > limit) {
      inflateEnd(&z);
      snprintf(err, MTASTS_ERR_MAX, "gunzip: the data inflates to over %zu bytes", limit);
      return MTASTS_CODEC_ELARGE;
    }
    if (rc == Z_STREAM_END) {
      /* another member may follow (concatenated gzip files are one stream) */
      if (z.avail_in == 0) break;
      if (z.avail_in >= 2 && z.next_in[0] == 0x1f && z.next_in[1] == 0x8b) {
        if (inflateReset(&z) != Z_OK) break;
        continue;
      }
      inflateEnd(&z);
      snprintf(err, MTASTS_ERR_MAX, "gunzip: %u bytes of garbage after the data", z.avail_in);
      return MTASTS_CODEC_ESYNTAX;
    }
    if (rc == Z_OK && z.avail_out == 0) continue;   /* more room needed */
    if (rc == Z_OK || rc == Z_BUF_ERROR) {
      if (z.avail_in == 0) {
        inflateEnd(&z);
        snprintf(err, MTASTS_ERR_MAX, "gunzip: the data is truncated");
        return MTASTS_CODEC_ESYNTAX;
      }
      continue;
    }
    inflateEnd(&z);
    snprintf(err, MTASTS_ERR_MAX, "gunzip: %s", z.msg ? z.msg : "damaged data");
    return rc == Z_MEM_ERROR ? MTASTS_CODEC_ENOMEM : MTASTS_CODEC_ESYNTAX;
  }
  inflateEnd(&z);
  return 0;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int mtasts_base64_encode(const unsigned char *in, size_t n, size_t wrap, mtasts_buf *b) {
  size_t out = (n + 2) / 3 * 4, i, col = 0;
  char *o;
  if (wrap) out += (out / wrap + 1) * 2;
  b->n = 0;
  if (mtasts_buf_reserve(b, out + 1) != 0) return MTASTS_CODEC_ENOMEM;
  o = (char *)b->p;
  for (i = 0; i < n; i += 3) {
    unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) |
                 (i + 2 < n ? in[i + 2] : 0);
    *o++ = b64[v >> 18 & 63];
    *o++ = b64[v >> 12 & 63];
    *o++ = i + 1 < n ? b64[v >> 6 & 63] : '=';
    *o++ = i + 2 < n ? b64[v & 63] : '=';
    if (wrap && (col += 4) >= wrap && i + 3 < n) {
      *o++ = '\r';
      *o++ = '\n';
      col = 0;
    }
  }
  b->n = (size_t)(o - (char *)b->p);
  return 0;
}

int mtasts_base64_decode(const unsigned char *in, size_t n, mtasts_buf *b, char *err) {
  unsigned v = 0;
  size_t i, got = 0, pad = 0;
  unsigned char *o;
  b->n = 0;
  err[0] = '\0';
  if (mtasts_buf_reserve(b, n / 4 * 3 + 3) != 0) return MTASTS_CODEC_ENOMEM;
  o = b->p;
  for (i = 0; i < n; i++) {
    unsigned char c = in[i];
    int d;
    if (c == '\r' || c == '\n' || c == ' ' || c == '\t') continue;
    if (c == '=') { pad++; continue; }
    if (pad) {
      snprintf(err, MTASTS_ERR_MAX, "base64: data after the padding at byte %zu", i);
      return MTASTS_CODEC_ESYNTAX;
    }
    if (c >= 'A' && c <= 'Z') d = c - 'A';
    else if (c >= 'a' && c <= 'z') d = c - 'a' + 26;
    else if (c >= '0' && c <= '9') d = c - '0' + 52;
    else if (c == '+') d = 62;
    else if (c == '/') d = 63;
    else {
      snprintf(err, MTASTS_ERR_MAX, "base64: invalid byte 0x%02x at byte %zu", c, i);
      return MTASTS_CODEC_ESYNTAX;
    }
    v = v << 6 | (unsigned)d;
    if (++got % 4 == 0) {
      *o++ = (unsigned char)(v >> 16);
      *o++ = (unsigned char)(v >> 8);
      *o++ = (unsigned char)v;
      v = 0;
    }
  }
  switch (got % 4) {
  case 0: break;
  case 2: *o++ = (unsigned char)(v >> 4); break;
  case 3: *o++ = (unsigned char)(v >> 10); *o++ = (unsigned char)(v >> 2); break;
  default:
    snprintf(err, MTASTS_ERR_MAX, "base64: truncated (%zu characters)", got);
    return MTASTS_CODEC_ESYNTAX;
  }
  if (pad > 2 || (pad && (got + pad) % 4 != 0)) {
    snprintf(err, MTASTS_ERR_MAX, "base64: bad padding");
    return MTASTS_CODEC_ESYNTAX;
  }
  b->n = (size_t)(o - b->p);
  return 0;
}
