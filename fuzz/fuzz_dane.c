/* libFuzzer harness: the DANE primitive (dane.c) on hostile TLSA records and chains.
 * Input: byte 0 = flags (bit 0: the chain is DER strings, else PEM text; bits 1-3: the number
 * of records; bit 4: a context made for this call, else the shared one), then each record as
 * usage, selector, mtype (1 byte each), a 2-byte big-endian length and the data, then the
 * chain: PEM text as it is, or DER strings each behind a 2-byte big-endian length. Properties: what comes from the network never fails the call; a result
 * is a match (a depth) or one of the RFC 8460 result types with a printable reason; without a
 * DANE-TA or DANE-EE record it is always tlsa-invalid. */
#include "dane.h"

#include <stdlib.h>
#include <string.h>

#define MAX_CERTS 16

static size_t take16(const uint8_t **p, const uint8_t *end) {
  size_t n;
  if (end - *p < 2) { *p = end; return 0; }
  n = ((size_t)(*p)[0] << 8) | (*p)[1];
  *p += 2;
  if (n > (size_t)(end - *p)) n = (size_t)(end - *p);
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static mtasts_dane_ctx *shared;   /* one SSL_CTX for every input, as the binding keeps */
  static const char *const names[] = { "mx1.example.com", "mail.example.net" };
  static const char *const types[] = { "tlsa-invalid", "certificate-host-mismatch",
                                       "certificate-expired", "validation-failure", NULL };
  const uint8_t *p = data, *end = data + size;
  const unsigned char *der[MAX_CERTS];
  size_t derlen[MAX_CERTS];
  mtasts_tlsa recs[8];
  mtasts_dane_chain chain;
  mtasts_dane_result res;
  char err[MTASTS_ERR_MAX];
  size_t nrec, i, dane_usages = 0;
  int flags, rc;
  if (size < 1) return 0;
  flags = *p++;
  nrec = (size_t)(flags >> 1) & 7;
  for (i = 0; i < nrec; i++) {
    if (end - p < 3) { nrec = i; break; }
    recs[i].usage = p[0];
    recs[i].selector = p[1];
    recs[i].mtype = p[2];
    p += 3;
    recs[i].n = take16(&p, end);
    recs[i].data = p;
    p += recs[i].n;
    if (recs[i].usage == 2 || recs[i].usage == 3) dane_usages++;
  }
  memset(&chain, 0, sizeof chain);
  if (flags & 1) {
    while (p < end && chain.nder < MAX_CERTS) {
      derlen[chain.nder] = take16(&p, end);
      der[chain.nder++] = p;
      p += derlen[chain.nder - 1];
    }
    chain.der = der;
    chain.derlen = derlen;
  } else {
    chain.pem = (const char *)p;
    chain.pemlen = (size_t)(end - p);
  }
  if (!shared && mtasts_dane_ctx_new(&shared, err) != 0) return 0;
  rc = mtasts_dane_verify(flags & 0x10 ? NULL : shared, &chain, recs, nrec, names, 2,
                          1800000000, &res, err);
  if (rc == -2) return 0;   /* out of memory: this host, not the input */
  if (rc != 0) abort();
  if (res.ok) {
    if (res.depth < 0 || res.depth > 100 || (res.usage != 2 && res.usage != 3)) abort();
  } else {
    for (i = 0; types[i] && strcmp(types[i], res.result_type) != 0; i++) {}
    if (!types[i] || res.reason[0] == '\0') abort();
    for (i = 0; res.reason[i]; i++)
      if ((unsigned char)res.reason[i] < 0x20 || (unsigned char)res.reason[i] > 0x7e) abort();
    if (dane_usages == 0 && strcmp(res.result_type, "tlsa-invalid") != 0) abort();
  }
  return 0;
}
