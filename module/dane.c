/* dane.c: the DANE verification primitive for hosts that do their own TLS (RFC 7672 §3.1,
 * §3.2). Pure C: OpenSSL only, no Lua header. API: dane.h; contract: docs/dane.md.
 *
 * The matching, the chain building to a trust anchor given by a record, the name check and
 * the dates are OpenSSL's own DANE code, run offline: an SSL object carries the TLSA records
 * (SSL_dane_tlsa_add) and the names (SSL_dane_enable, SSL_add1_host), and an X509_STORE_CTX
 * verifies the chain with that SSL's DANE state (X509_STORE_CTX_set0_dane), as libssl does in
 * a handshake and as OpenSSL's own danetest does. What is decided here is only what RFC 7672
 * adds: PKIX-TA(0) and PKIX-EE(1) are unusable in SMTP, DANE-EE(3) ignores names and dates
 * (OpenSSL ignores dates for DANE-EE itself; DANE_FLAG_NO_DANE_EE_NAMECHECKS the names), and
 * the RFC 8460 result type of a failure.
 *
 * Rules of this file: every OpenSSL object but the shared SSL_CTX (mtasts_dane_ctx, only
 * read once made) is made and freed inside mtasts_dane_verify (no global state,
 * thread-safe), the error queue is cleared before and drained after, and what
 * comes from the network (the chain, the records) never makes the call fail: it becomes a
 * result. */
#include "dane.h"

#include <limits.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum { USAGE_DANE_TA = 2, USAGE_DANE_EE = 3 };

static void fail(mtasts_dane_result *res, const char *type, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));
static void fail(mtasts_dane_result *res, const char *type, const char *fmt, ...) {
  va_list ap;
  res->ok = 0;
  res->result_type = type;
  va_start(ap, fmt);
  vsnprintf(res->reason, sizeof res->reason, fmt, ap);
  va_end(ap);
}

/* The reason text of the first queued OpenSSL error, or "unknown error". */
static const char *first_error(void) {
  const char *why = ERR_reason_error_string(ERR_peek_error());
  return why ? why : "unknown error";
}

/* The chain as X509 objects, leaf first, into *out (owned by the caller). 0; 1 when it does
 * not parse (res filled: the chain came from the network); -2 out of memory. */
static int load_chain(const mtasts_dane_chain *c, STACK_OF(X509) **out, mtasts_dane_result *res) {
  STACK_OF(X509) *sk = sk_X509_new_null();
  X509 *x = NULL;
  BIO *bio = NULL;
  int rc = -2;
  size_t i;
  if (!sk) goto done;
  if (c->pem) {
    unsigned long e;
    if (c->pemlen > INT_MAX) {
      fail(res, "validation-failure", "the chain is over %d bytes", INT_MAX);
      rc = 1;
      goto done;
    }
    if (!(bio = BIO_new_mem_buf(c->pem, (int)c->pemlen))) goto done;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
      if (!sk_X509_push(sk, x)) goto done;
      x = NULL;
    }
    e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) != ERR_LIB_PEM || ERR_GET_REASON(e) != PEM_R_NO_START_LINE) {
      fail(res, "validation-failure", "certificate %d of the chain does not parse: %s",
           sk_X509_num(sk) + 1, first_error());
      rc = 1;
      goto done;
    }
  } else {
    for (i = 0; i < c->nder; i++) {
      const unsigned char *p = c->der[i];
      if (c->derlen[i] > LONG_MAX || !(x = d2i_X509(NULL, &p, (long)c->derlen[i])) ||
          p != c->der[i] + c->derlen[i]) {
        fail(res, "validation-failure", "certificate %zu of the chain does not parse: %s",
             i + 1, x ? "trailing bytes" : first_error());
        rc = 1;
        goto done;
      }
      if (!sk_X509_push(sk, x)) goto done;
      x = NULL;
    }
  }
  if (sk_X509_num(sk) == 0) {
    fail(res, "validation-failure", "the chain holds no certificate");
    rc = 1;
    goto done;
  }
  *out = sk;
  sk = NULL;
  rc = 0;
done:
  X509_free(x);
  BIO_free(bio);
  sk_X509_pop_free(sk, X509_free);
  return rc;
}

/* The names for a message: "'a.example', 'b.example'", cut to fit out. */
static void names_text(char *out, size_t outlen, const char *const *names, size_t nnames) {
  size_t i, used = 0;
  out[0] = '\0';
  for (i = 0; i < nnames && used + 1 < outlen; i++) {
    char q[4 * 40 + 4];
    int w;
    mtasts_quote(q, sizeof q, names[i], strlen(names[i]), 40);
    w = snprintf(out + used, outlen - used, "%s'%s'", i ? ", " : "", q);
    if (w < 0) break;
    used += (size_t)w;
  }
}

/* The outcome of X509_verify_cert as an RFC 8460 result type (docs/dane.md, "Failures"). */
static void classify(X509_STORE_CTX *xctx, int verr, const char *const *names, size_t nnames,
                     int64_t now, mtasts_dane_result *res) {
  int depth = X509_STORE_CTX_get_error_depth(xctx);
  switch (verr) {
  case X509_V_ERR_HOSTNAME_MISMATCH: {
    char list[300];
    names_text(list, sizeof list, names, nnames);
    fail(res, "certificate-host-mismatch",
         "the chain matches a DANE-TA record, but the certificate matches none of %s", list);
    break;
  }
  case X509_V_ERR_CERT_HAS_EXPIRED:
  case X509_V_ERR_CERT_NOT_YET_VALID:
    fail(res, "certificate-expired", "certificate at depth %d: %s (at %lld)", depth,
         X509_verify_cert_error_string(verr), (long long)now);
    break;
  case X509_V_ERR_DANE_NO_MATCH:
    fail(res, "validation-failure", "no usable TLSA record matches the chain");
    break;
  case X509_V_OK:   /* failed without saying why: OpenSSL's own trouble (memory) */
    fail(res, "validation-failure", "OpenSSL: %s", first_error());
    break;
  default:
    fail(res, "validation-failure", "certificate at depth %d: %s", depth,
         X509_verify_cert_error_string(verr));
  }
}

/* The context is an SSL_CTX and nothing else: the struct only gives it a name of ours. */
struct mtasts_dane_ctx { SSL_CTX *ssl_ctx; };

int mtasts_dane_ctx_new(mtasts_dane_ctx **out, char *err) {
  mtasts_dane_ctx *c = OPENSSL_zalloc(sizeof *c);
  ERR_clear_error();
  if (!c || !(c->ssl_ctx = SSL_CTX_new(TLS_client_method())) ||
      SSL_CTX_dane_enable(c->ssl_ctx) <= 0) {
    snprintf(err, MTASTS_ERR_MAX, "OpenSSL: %s", first_error());
    mtasts_dane_ctx_free(c);
    ERR_clear_error();
    return -2;
  }
  *out = c;
  return 0;
}

void mtasts_dane_ctx_free(mtasts_dane_ctx *c) {
  if (!c) return;
  SSL_CTX_free(c->ssl_ctx);
  OPENSSL_free(c);
}

int mtasts_dane_verify(mtasts_dane_ctx *shared, const mtasts_dane_chain *chain,
                       const mtasts_tlsa *recs, size_t nrec, const char *const *names,
                       size_t nnames, int64_t now, mtasts_dane_result *res, char *err) {
  mtasts_dane_ctx *own = NULL;   /* made here when the caller has none, freed at the end */
  SSL *ssl = NULL;
  STACK_OF(X509) *sk = NULL;
  X509_STORE *store = NULL;
  X509_STORE_CTX *xctx = NULL;
  size_t i, usable = 0, pkix = 0, bad = 0;
  char name[MTASTS_NAME_MAX + 1];
  int rc = -2, vrc, verr;

  memset(res, 0, sizeof *res);
  res->depth = -1;
  ERR_clear_error();
  if (nnames == 0) {
    snprintf(err, MTASTS_ERR_MAX, "no name to verify");
    rc = -1;
    goto done;
  }
  if (!shared) {
    if ((rc = mtasts_dane_ctx_new(&own, err)) != 0) goto done;
    shared = own;
  }
  if (!(ssl = SSL_new(shared->ssl_ctx))) goto oom;
  /* the names: one trailing dot dropped; any of them may match (RFC 7672 §3.2.2) */
  for (i = 0; i < nnames; i++) {
    size_t n = strlen(names[i]);
    if (n > 0 && names[i][n - 1] == '.') n--;
    if (n == 0 || n > MTASTS_NAME_MAX) {
      char q[4 * 40 + 4];
      mtasts_quote(q, sizeof q, names[i], strlen(names[i]), 40);
      snprintf(err, MTASTS_ERR_MAX, "name '%s' is %s", q, n ? "over 253 bytes" : "empty");
      rc = -1;
      goto done;
    }
    memcpy(name, names[i], n);
    name[n] = '\0';
    if ((i == 0 ? SSL_dane_enable(ssl, name) : SSL_add1_host(ssl, name)) <= 0) {
      char q[4 * 40 + 4];
      mtasts_quote(q, sizeof q, name, n, 40);
      snprintf(err, MTASTS_ERR_MAX, "name '%s' is refused by OpenSSL: %s", q, first_error());
      rc = -1;
      goto done;
    }
  }
  SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);

  /* the records: RFC 7672 §3.1.3 leaves only DANE-TA(2) and DANE-EE(3); OpenSSL refuses (0)
   * unknown selectors and matching types, digests of the wrong length and full certificates
   * or keys that do not parse */
  for (i = 0; i < nrec; i++) {
    const mtasts_tlsa *t = &recs[i];
    int added;
    if (t->usage != USAGE_DANE_TA && t->usage != USAGE_DANE_EE) {
      pkix++;
      continue;
    }
    if (t->selector > 255 || t->mtype > 255 || !t->data) {
      bad++;
      continue;
    }
    added = SSL_dane_tlsa_add(ssl, (uint8_t)t->usage, (uint8_t)t->selector, (uint8_t)t->mtype,
                              t->data, t->n);
    if (added < 0) goto oom;
    if (added == 0) bad++;
    else usable++;
  }
  ERR_clear_error();   /* the refusals of unusable records */
  if (usable == 0) {
    fail(res, "tlsa-invalid", "no usable TLSA record among %zu (%zu with a PKIX or unknown "
         "usage, %zu with an unknown selector or matching type, or malformed data)",
         nrec, pkix, bad);
    rc = 0;
    goto done;
  }

  if ((rc = load_chain(chain, &sk, res)) != 0) {
    if (rc == 1) rc = 0;
    else goto oom;
    goto done;
  }

  /* an empty store: trust comes only from the records */
  if (!(store = X509_STORE_new()) || !(xctx = X509_STORE_CTX_new()) ||
      !X509_STORE_CTX_init(xctx, store, sk_X509_value(sk, 0), sk) ||
      !X509_STORE_CTX_set_default(xctx, "ssl_server") ||
      !X509_VERIFY_PARAM_set1(X509_STORE_CTX_get0_param(xctx), SSL_get0_param(ssl)))
    goto oom;
  X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(xctx), (time_t)now);
  X509_STORE_CTX_set0_dane(xctx, SSL_get0_dane(ssl));
  vrc = X509_verify_cert(xctx);
  verr = X509_STORE_CTX_get_error(xctx);
  SSL_set_verify_result(ssl, vrc == 1 ? X509_V_OK : (verr == X509_V_OK ? X509_V_ERR_UNSPECIFIED
                                                                        : verr));
  if (vrc == 1) {
    uint8_t u, s, m;
    const unsigned char *data;
    size_t dlen;
    int depth = SSL_get0_dane_tlsa(ssl, &u, &s, &m, &data, &dlen);
    if (depth < 0) {
      fail(res, "validation-failure", "the chain verified without a TLSA record matching");
    } else {
      res->ok = 1;
      res->usage = u;
      res->selector = s;
      res->mtype = m;
      res->depth = depth;
    }
  } else {
    classify(xctx, verr, names, nnames, now, res);
  }
  rc = 0;
  goto done;
oom:
  snprintf(err, MTASTS_ERR_MAX, "OpenSSL: %s", first_error());
  rc = -2;
done:
  X509_STORE_CTX_free(xctx);
  X509_STORE_free(store);
  sk_X509_pop_free(sk, X509_free);
  SSL_free(ssl);
  mtasts_dane_ctx_free(own);
  ERR_clear_error();
  return rc;
}
