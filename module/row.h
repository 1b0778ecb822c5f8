/* row.h: the versioned binary encoding of a cache row (row.c). Pure C, no Lua, no BDB.
 * The layout is known to row.c alone: the cache (cache.c) and the rebuild (rebuild.c) read
 * and patch rows through the functions here, never at offsets of their own. Included by
 * cache.h, the binding (lua_cache.c) and the fuzz harness of the decoder (fuzz_row.c). */
#ifndef MTASTS_ROW_H
#define MTASTS_ROW_H

#include "buf.h"
#include "mtasts.h"

#define MTASTS_ROW_FORMAT 1            /* first byte of every encoded row */

/* A decoded row. Spans and sections point into the encoded bytes, which must outlive it. */
typedef struct {
  int64_t inserted, valid_end, last_update, last_use;
  int backoff, mode;
  uint32_t max_age;
  mtasts_span domain, record_id, policy_text;
  const unsigned char *mx, *ext;   /* encoded sections, read with mtasts_row_next_* */
  uint32_t n_mx, n_ext;
} mtasts_row;

typedef struct { const unsigned char *p; uint32_t left; } mtasts_row_iter;

/* Encode a row into b (replacing its contents). p may be NULL for a backoff row. */
int mtasts_row_encode(mtasts_buf *b, const mtasts_row *meta, const mtasts_policy *p,
                      mtasts_span text);
/* Decode and fully validate an encoded row: 0, or -1 with a message in err. */
int mtasts_row_decode(const unsigned char *s, size_t n, mtasts_row *row, char *err);
void mtasts_row_mx_iter(const mtasts_row *row, mtasts_row_iter *it);
void mtasts_row_ext_iter(const mtasts_row *row, mtasts_row_iter *it);
int mtasts_row_next_mx(mtasts_row_iter *it, mtasts_span *mx);            /* 1 or 0 at end */
int mtasts_row_next_ext(mtasts_row_iter *it, mtasts_span *k, mtasts_span *v);

/* 1 when an encoded row starts with the format this code writes (MTASTS_ROW_FORMAT). */
int mtasts_row_format_known(const unsigned char *s, size_t n);

/* The times of an encoded row, read and written in place without decoding the rest: a hit
 * touches last_use, mark_checked moves last_update and valid_end, scans filter on them. */
enum { MTASTS_ROW_INSERTED, MTASTS_ROW_VALID_END, MTASTS_ROW_LAST_UPDATE, MTASTS_ROW_LAST_USE };
/* 0 with *t set, or -1 (*t untouched) when the row is of another format or too short to
 * hold its times. */
int mtasts_row_get_time(const unsigned char *s, size_t n, int field, int64_t *t);
/* 0, or -1 (nothing written) as above. */
int mtasts_row_set_time(unsigned char *s, size_t n, int field, int64_t t);

#endif
