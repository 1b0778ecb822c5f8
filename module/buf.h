/* buf.h: the growable byte buffer and the big-endian integer helpers, written once for every
 * C file (rows, scans, result counters, rdata, codecs, transfers). Pure C, no Lua, no library
 * state: everything here is static inline, so the fuzz harnesses need no extra file. */
#ifndef MTASTS_BUF_H
#define MTASTS_BUF_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A growable byte buffer, owned by whoever holds it (a Lua userdata in the bindings, which
 * frees it in its release). p is NULL until the first reserve; n bytes are in use. */
typedef struct { unsigned char *p; size_t n, cap; } mtasts_buf;

/* Room for need bytes in all (not need more): 0, or ENOMEM with b unchanged. */
static inline int mtasts_buf_reserve(mtasts_buf *b, size_t need) {
  size_t cap;
  unsigned char *p;
  if (need <= b->cap) return 0;
  cap = b->cap ? b->cap : 256;
  while (cap < need) cap *= 2;
  if (!(p = realloc(b->p, cap))) return ENOMEM;
  b->p = p;
  b->cap = cap;
  return 0;
}

static inline void mtasts_buf_free(mtasts_buf *b) {
  free(b->p);
  b->p = NULL;
  b->n = b->cap = 0;
}

/* --- big-endian integers: put writes at o, get reads at p --- */

static inline void mtasts_put_u16(unsigned char *o, uint32_t v) {
  o[0] = (unsigned char)(v >> 8);
  o[1] = (unsigned char)v;
}

static inline void mtasts_put_u32(unsigned char *o, uint32_t v) {
  o[0] = (unsigned char)(v >> 24);
  o[1] = (unsigned char)(v >> 16);
  o[2] = (unsigned char)(v >> 8);
  o[3] = (unsigned char)v;
}

static inline void mtasts_put_u64(unsigned char *o, uint64_t v) {
  mtasts_put_u32(o, (uint32_t)(v >> 32));
  mtasts_put_u32(o + 4, (uint32_t)v);
}

static inline uint32_t mtasts_get_u16(const unsigned char *p) {
  return (uint32_t)p[0] << 8 | p[1];
}

static inline uint32_t mtasts_get_u32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t mtasts_get_u64(const unsigned char *p) {
  return (uint64_t)mtasts_get_u32(p) << 32 | mtasts_get_u32(p + 4);
}

/* Little-endian, for the one foreign format read here (a Berkeley DB meta page). */
static inline uint32_t mtasts_get_u32le(const unsigned char *p) {
  return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

/* Append a u32 length and n bytes: 0, or ENOMEM (b unchanged). */
static inline int mtasts_buf_add_u32_bytes(mtasts_buf *b, const void *p, size_t n) {
  if (n > UINT32_MAX || mtasts_buf_reserve(b, b->n + 4 + n) != 0) return ENOMEM;
  mtasts_put_u32(b->p + b->n, (uint32_t)n);
  if (n) memcpy(b->p + b->n + 4, p, n);
  b->n += 4 + n;
  return 0;
}

#endif
