/* results.h: the TLSRPT result store (results.c) and the codecs (codec.c). Pure C, no Lua.
 *
 * The store is the file results.db of a cache directory's environment (env.c), beside the
 * policy cache: same gate, recovery and durability rules. It knows keys and counters only;
 * what a key means (day, policy domain, policy and failure detail) is decided in
 * lua/mtasts/tlsrpt/store.lua (docs/tlsrpt.md). */
#ifndef MTASTS_RESULTS_H
#define MTASTS_RESULTS_H

#include "buf.h"
#include "env.h"

#define MTASTS_RESULTS_KEY_MAX (1u << 20)   /* a longer key is misuse */
#define MTASTS_RESULTS_VALUE_MAX (1u << 20)

/* One counter update: the record under key holds two big-endian u64 counters (16 bytes);
 * a and b are added to them, stopping at INT64_MAX (so counts never wrap or go negative). */
typedef struct { const char *key; size_t kn; uint64_t a, b; } mtasts_delta;

/* A plain value stored with a batch of updates: a reader's position (how far a log or a
 * socket has been recorded), under a key that starts with 'S'. */
typedef struct { const char *key, *value; size_t kn, vn; } mtasts_mark;

/* Apply n updates in transactions of at most 500 keys, sorting d by key first (a batch then
 * walks the btree's pages in one direction), and store mark (if not NULL) in the last of
 * them: all of them are durable when it returns 0 (the transactions before the last are
 * committed without a sync of the log; the last one's sync writes the log up to its end, so
 * one sync covers the batch); after an error, the transactions before the failing one are
 * (the log is synced before it returns): *done says how many updates of the sorted d (its
 * first *done). */
int mtasts_results_apply(mtasts_env *e, mtasts_delta *d, size_t n, const mtasts_mark *mark,
                         size_t *done, char *err);

/* --- the batch: counter updates summed in memory before a commit ---
 * A hash of key -> (a, b) owned by its holder (the mtasts.results userdata), so that a result
 * recorded costs no allocation once its keys are there. Key bytes live back to back in one
 * buffer; entries keep offsets into it. */
typedef struct { size_t off, kn; uint64_t hash, a, b; } mtasts_batch_entry;
typedef struct {
  mtasts_buf keys;                /* the key bytes of every entry */
  mtasts_batch_entry *e;          /* entries, in the order they came */
  size_t n, cap;
  uint32_t *slot;                 /* open addressing: entry index + 1, 0 for empty */
  size_t nslot;                   /* a power of two, at least twice n */
  uint64_t seed;                  /* of the key hash; made at the first reserve */
} mtasts_batch;

/* Room for `entries` more entries holding `bytes` more key bytes: 0, or ENOMEM with the
 * batch unchanged. After it, that many mtasts_batch_bump calls cannot fail. */
int mtasts_batch_reserve(mtasts_batch *b, size_t entries, size_t bytes);
/* Add a and b (saturating) to the counters of key, making the entry when it is new. Call
 * mtasts_batch_reserve first: it needs the room for a new entry. */
void mtasts_batch_bump(mtasts_batch *b, const char *key, size_t kn, uint64_t a, uint64_t bb);
/* Point d[0..b->n) at the entries (valid until the next change of the batch). */
void mtasts_batch_deltas(const mtasts_batch *b, mtasts_delta *d);
/* Drop the entries whose keys are those of d[0..n) (the updates a failed commit did make),
 * keeping the rest; cannot fail. */
void mtasts_batch_drop(mtasts_batch *b, const mtasts_delta *d, size_t n);
/* Empty the batch (its memory is kept for the next); free releases it. */
void mtasts_batch_clear(mtasts_batch *b);
void mtasts_batch_free(mtasts_batch *b);

/* Records whose key starts with prefix, in key order, copied into b as u32 key length, key,
 * u32 value length, value; at most limit records (0: no limit) starting after `after`
 * (a full key, or NULL to start at the prefix). */
int mtasts_results_scan(mtasts_env *e, const char *prefix, size_t pn, const char *after,
                        size_t an, size_t limit, mtasts_buf *b, size_t *count, char *err);

/* The distinct components of keys that start with prefix: the bytes after the prefix up to
 * the next NUL (or the key's end), each once, in order; copied as u32 length, bytes.
 * Jumps over each component's records, so it costs one seek per component. */
int mtasts_results_distinct(mtasts_env *e, const char *prefix, size_t pn, mtasts_buf *b,
                            size_t *count, char *err);
/* The string at *pos of what a scan or distinct copied into b (start with *pos = 0): keys
 * and values in turns for a scan, components for distinct. 1 and the string, or 0 after the
 * last. */
int mtasts_results_next(const mtasts_buf *b, size_t *pos, mtasts_span *s);

/* Plain values (delivery state). get: *found 0 when absent. */
int mtasts_results_get(mtasts_env *e, const char *key, size_t kn, mtasts_buf *b,
                       int *found, char *err);
/* Compare and swap in one transaction: when the stored value equals expect (expect NULL:
 * when there is none), store value (value NULL: delete) and set *swapped = 1. */
int mtasts_results_cas(mtasts_env *e, const char *key, size_t kn, const char *expect,
                       size_t en, const char *value, size_t vn, int *swapped, char *err);

/* Delete every record with lo <= key < hi, in transactions of at most 1000 records. */
int mtasts_results_delete_range(mtasts_env *e, const char *lo, size_t ln, const char *hi,
                                size_t hn, size_t *deleted, char *err);

/* For a rebuild (rebuild.c), which reads records back from a damaged results.db: whether a
 * key has the shape of the store's keys, and whether a value fits its key (k passed
 * mtasts_results_is_key). Records that do not are left behind. */
int mtasts_results_is_key(const unsigned char *k, size_t n);
int mtasts_results_is_value(const unsigned char *k, const unsigned char *v, size_t vn);
/* Store a salvaged record unless its key is there already: *added is 1 when it was not. */
int mtasts_results_put_salvaged(mtasts_env *e, const unsigned char *k, size_t kn,
                                const unsigned char *v, size_t vn, int *added, char *err);

/* --- codecs (codec.c) --- */
#define MTASTS_CODEC_ESYNTAX (-1)   /* not gzip / not base64 / damaged */
#define MTASTS_CODEC_ELARGE (-2)    /* the output would pass the limit */
#define MTASTS_CODEC_ENOMEM (-3)
/* gzip (one member, level 6) of in into b. 0, or MTASTS_CODEC_ENOMEM. */
int mtasts_gzip(const unsigned char *in, size_t n, mtasts_buf *b);
/* Inflate gzip data (one or more members) into b, refusing to produce more than limit
 * bytes. 0, or a negative MTASTS_CODEC_* with a message in err. */
int mtasts_gunzip(const unsigned char *in, size_t n, size_t limit, mtasts_buf *b, char *err);
/* Base64 (RFC 4648 alphabet, padded); with wrap > 0, CRLF after every wrap characters. */
int mtasts_base64_encode(const unsigned char *in, size_t n, size_t wrap, mtasts_buf *b);
/* Decode base64, skipping white space (CR, LF, space, tab). Anything else outside the
 * alphabet, or bad padding, is MTASTS_CODEC_ESYNTAX with a message in err. */
int mtasts_base64_decode(const unsigned char *in, size_t n, mtasts_buf *b, char *err);

#endif
