/* row.c: the versioned binary encoding of a cache row. Pure C, no Lua, no BDB.
 *
 * Layout (integers big-endian), format 1:
 *   0  u8  format (MTASTS_ROW_FORMAT)     1  u8  flags (bit 0: backoff)
 *   2  i64 inserted   10 i64 valid_end   18 i64 last_update   26 i64 last_use
 *   34 u8  mode       35 u32 max_age
 *   39 u8  domain length, domain (the key, lower-case A-labels: a row names its own domain,
 *          so a misplaced row is detected and a salvage needs no key)
 *   u8  record id length, record id
 *   u16 mx count,  each: u8 length, pattern (lower-case A-labels)
 *   u16 extension count, each: u8 key length, key, u16 value length, value
 *   u32 policy text length, policy text (as received)
 * A later format bumps the first byte; a decoder refuses formats it does not know. Only this
 * file knows the layout: the cache reads and patches the times through mtasts_row_get_time
 * and mtasts_row_set_time (row.h). */
#include "row.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Cursor wrappers over buf.h's big-endian helpers: each writes at o and returns the end. */
static unsigned char *put_u8(unsigned char *o, unsigned v) { *o = (unsigned char)v; return o + 1; }
static unsigned char *put_u16(unsigned char *o, unsigned v) { mtasts_put_u16(o, v); return o + 2; }
static unsigned char *put_u32(unsigned char *o, uint32_t v) { mtasts_put_u32(o, v); return o + 4; }
static unsigned char *put_i64(unsigned char *o, int64_t v) {
  mtasts_put_u64(o, (uint64_t)v);
  return o + 8;
}
static unsigned char *put_bytes(unsigned char *o, const char *p, size_t n) {
  if (n) memcpy(o, p, n);
  return o + n;
}

static int64_t get_i64(const unsigned char *p) { return (int64_t)mtasts_get_u64(p); }

int mtasts_row_encode(mtasts_buf *b, const mtasts_row *m, const mtasts_policy *p,
                      mtasts_span text) {
  size_t need = 39 + 1 + m->domain.n + 1 + m->record_id.n + 2 + 2 + 4 + text.n, i;
  unsigned char *o;
  if (m->domain.n == 0 || m->domain.n > 255 || m->record_id.n > 255 || text.n > UINT32_MAX)
    return EINVAL;
  if (p) {
    if (p->mx.n > 0xffff || p->ext.n > 0xffff) return EINVAL;
    for (i = 0; i < p->mx.n; i++) {
      if (p->mx.v[i].n > 255) return EINVAL;
      need += 1 + p->mx.v[i].n;
    }
    for (i = 0; i < p->ext.n; i++) {
      if (p->ext.v[i].key.n > 255 || p->ext.v[i].value.n > 0xffff) return EINVAL;
      need += 1 + p->ext.v[i].key.n + 2 + p->ext.v[i].value.n;
    }
  }
  if (mtasts_buf_reserve(b, need) != 0) return ENOMEM;
  o = b->p;
  o = put_u8(o, MTASTS_ROW_FORMAT);
  o = put_u8(o, m->backoff ? 1 : 0);
  o = put_i64(o, m->inserted);
  o = put_i64(o, m->valid_end);
  o = put_i64(o, m->last_update);
  o = put_i64(o, m->last_use);
  o = put_u8(o, p ? (unsigned)p->mode : MTASTS_MODE_NONE);
  o = put_u32(o, p ? p->max_age : m->max_age);
  o = put_u8(o, (unsigned)m->domain.n);
  o = put_bytes(o, m->domain.p, m->domain.n);
  o = put_u8(o, (unsigned)m->record_id.n);
  o = put_bytes(o, m->record_id.p, m->record_id.n);
  o = put_u16(o, p ? (unsigned)p->mx.n : 0);
  for (i = 0; p && i < p->mx.n; i++) {
    size_t j;
    o = put_u8(o, (unsigned)p->mx.v[i].n);
    for (j = 0; j < p->mx.v[i].n; j++) {   /* patterns are stored lower-cased */
      unsigned char c = (unsigned char)p->mx.v[i].p[j];
      *o++ = (unsigned char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
    }
  }
  o = put_u16(o, p ? (unsigned)p->ext.n : 0);
  for (i = 0; p && i < p->ext.n; i++) {
    o = put_u8(o, (unsigned)p->ext.v[i].key.n);
    o = put_bytes(o, p->ext.v[i].key.p, p->ext.v[i].key.n);
    o = put_u16(o, (unsigned)p->ext.v[i].value.n);
    o = put_bytes(o, p->ext.v[i].value.p, p->ext.v[i].value.n);
  }
  o = put_u32(o, (uint32_t)text.n);
  o = put_bytes(o, text.p, text.n);
  b->n = (size_t)(o - b->p);
  return 0;
}

static int bad(char *err, const char *what, size_t at) {
  snprintf(err, MTASTS_ERR_MAX, "row is corrupt: %s at byte %zu", what, at);
  return -1;
}

int mtasts_row_decode(const unsigned char *s, size_t n, mtasts_row *row, char *err) {
  size_t pos, len;
  uint32_t i, count;
  memset(row, 0, sizeof *row);
  if (n < 1) return bad(err, "empty", 0);
  if (s[0] != MTASTS_ROW_FORMAT) {
    snprintf(err, MTASTS_ERR_MAX, "row format %u is not known to this mtasts (it knows %d)",
             s[0], MTASTS_ROW_FORMAT);
    return -1;
  }
  if (n < 40) return bad(err, "truncated header", n);
  if (s[1] & ~1u) return bad(err, "unknown flags", 1);
  row->backoff = s[1] & 1;
  row->inserted = get_i64(s + 2);
  row->valid_end = get_i64(s + 10);
  row->last_update = get_i64(s + 18);
  row->last_use = get_i64(s + 26);
  if (s[34] > MTASTS_MODE_ENFORCE) return bad(err, "unknown mode", 34);
  row->mode = s[34];
  row->max_age = mtasts_get_u32(s + 35);
  if (row->max_age > MTASTS_MAX_AGE_MAX) return bad(err, "max_age out of range", 35);
  len = s[39];
  pos = 40;
  if (len == 0 || len > MTASTS_NAME_MAX) return bad(err, "domain length out of range", 39);
  if (n - pos < len) return bad(err, "truncated domain", pos);
  row->domain.p = (const char *)s + pos;
  row->domain.n = len;
  pos += len;
  if (n - pos < 1) return bad(err, "truncated record id", pos);
  len = s[pos];
  pos += 1;
  if (n - pos < len) return bad(err, "truncated record id", pos);
  row->record_id.p = (const char *)s + pos;
  row->record_id.n = len;
  pos += len;

  if (n - pos < 2) return bad(err, "truncated mx count", pos);
  count = mtasts_get_u16(s + pos);
  pos += 2;
  row->mx = s + pos;
  row->n_mx = count;
  for (i = 0; i < count; i++) {
    if (n - pos < 1) return bad(err, "truncated mx", pos);
    len = s[pos];
    if (len == 0) return bad(err, "empty mx", pos);
    if (n - pos - 1 < len) return bad(err, "truncated mx", pos);
    pos += 1 + len;
  }

  if (n - pos < 2) return bad(err, "truncated extension count", pos);
  count = mtasts_get_u16(s + pos);
  pos += 2;
  row->ext = s + pos;
  row->n_ext = count;
  for (i = 0; i < count; i++) {
    if (n - pos < 1) return bad(err, "truncated extension", pos);
    len = s[pos];
    if (n - pos - 1 < len) return bad(err, "truncated extension key", pos);
    pos += 1 + len;
    if (n - pos < 2) return bad(err, "truncated extension value", pos);
    len = mtasts_get_u16(s + pos);
    if (n - pos - 2 < len) return bad(err, "truncated extension value", pos);
    pos += 2 + len;
  }

  if (n - pos < 4) return bad(err, "truncated policy text", pos);
  len = mtasts_get_u32(s + pos);
  pos += 4;
  if (n - pos < len) return bad(err, "truncated policy text", pos);
  row->policy_text.p = (const char *)s + pos;
  row->policy_text.n = len;
  pos += len;
  if (pos != n) return bad(err, "trailing bytes", pos);
  return 0;
}

void mtasts_row_mx_iter(const mtasts_row *row, mtasts_row_iter *it) {
  it->p = row->mx;
  it->left = row->n_mx;
}

void mtasts_row_ext_iter(const mtasts_row *row, mtasts_row_iter *it) {
  it->p = row->ext;
  it->left = row->n_ext;
}

/* Only for rows that mtasts_row_decode accepted: the bounds were checked there. */
int mtasts_row_next_mx(mtasts_row_iter *it, mtasts_span *mx) {
  if (it->left == 0) return 0;
  mx->n = it->p[0];
  mx->p = (const char *)it->p + 1;
  it->p += 1 + mx->n;
  it->left--;
  return 1;
}

int mtasts_row_next_ext(mtasts_row_iter *it, mtasts_span *k, mtasts_span *v) {
  if (it->left == 0) return 0;
  k->n = it->p[0];
  k->p = (const char *)it->p + 1;
  it->p += 1 + k->n;
  v->n = mtasts_get_u16(it->p);
  v->p = (const char *)it->p + 2;
  it->p += 2 + v->n;
  it->left--;
  return 1;
}

int mtasts_row_format_known(const unsigned char *s, size_t n) {
  return n >= 1 && s[0] == MTASTS_ROW_FORMAT;
}

/* Where each time is (the enum's order), and the end of the four. */
static const size_t time_at[] = { 2, 10, 18, 26 };
#define TIMES_END 34

int mtasts_row_get_time(const unsigned char *s, size_t n, int field, int64_t *t) {
  if (!mtasts_row_format_known(s, n) || n < TIMES_END || field < 0 || field > 3) return -1;
  *t = get_i64(s + time_at[field]);
  return 0;
}

int mtasts_row_set_time(unsigned char *s, size_t n, int field, int64_t t) {
  if (!mtasts_row_format_known(s, n) || n < TIMES_END || field < 0 || field > 3) return -1;
  put_i64(s + time_at[field], t);
  return 0;
}
