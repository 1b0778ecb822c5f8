/* dgram.c: libtlsrpt datagrams parsed into the sessions they count (dgram.h). Pure C, no
 * Lua. A small JSON reader made for this one shape: members in any order, unknown members
 * skipped (to a depth limit), duplicates of known members refused; strings are decoded
 * (escapes, surrogate pairs) and invalid UTF-8 is repaired to U+FFFD and counted, because the
 * library copies bytes >= 0x80 unchecked and such a datagram still counts a real session.
 *
 * Key layout (private): kind ('S' | 'D'), str d, opt pr, type byte, str policy-domain,
 * u32 count + strs (policy-string), u32 count + strs (mx-host); for 'D' then u32 result type
 * and six opt strs. str = u32 length + bytes; opt = byte 0 | byte 1 + str. Big-endian. */
#include "dgram.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const reasons[] = {
  "ok",
#define MTASTS_DGRAM_NAME(e, s) s,
  MTASTS_DGRAM_REASONS(MTASTS_DGRAM_NAME)
#undef MTASTS_DGRAM_NAME
};

const char *mtasts_dgram_reason(int r) {
  return r > 0 && r < MTASTS_DGRAM_NREASONS ? reasons[r] : "unknown";
}

const char *mtasts_dgram_policy_type(int t) {
  switch (t) {
  case 1: return "tlsa";
  case 2: return "sts";
  case 9: return "no-policy-found";
  default: return NULL;
  }
}

const char *mtasts_dgram_result_type(unsigned c) {
  switch (c) {
  case 201: return "starttls-not-supported";
  case 202: return "certificate-host-mismatch";
  case 203: return "certificate-not-trusted";
  case 204: return "certificate-expired";
  case 205: return "validation-failure";
  case 301: return "sts-policy-fetch-error";
  case 302: return "sts-policy-invalid";
  case 303: return "sts-webpki-invalid";
  case 304: return "tlsa-invalid";
  case 305: return "dnssec-invalid";
  case 306: return "dane-required";
  default: return NULL;
  }
}

/* --- the reader --- */

typedef struct {
  const unsigned char *s, *e;
  char *err;
  size_t errn;
  unsigned repaired;
} rd;

static int fail(rd *r, int reason, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(rd *r, int reason, const char *fmt, ...) {
  va_list ap;
  if (r->errn) {
    va_start(ap, fmt);
    vsnprintf(r->err, r->errn, fmt, ap);
    va_end(ap);
  }
  return reason;
}

static void ws(rd *r) {
  while (r->s < r->e && (*r->s == ' ' || *r->s == '\t' || *r->s == '\n' || *r->s == '\r')) r->s++;
}

static int eat(rd *r, unsigned char c) {
  ws(r);
  if (r->s < r->e && *r->s == c) { r->s++; return 1; }
  return 0;
}

static int put(mtasts_buf *b, const void *p, size_t n) {
  if (mtasts_buf_reserve(b, b->n + n)) return -1;
  if (n) memcpy(b->p + b->n, p, n);
  b->n += n;
  return 0;
}

static int put_u32(mtasts_buf *b, uint32_t v) {
  unsigned char o[4];
  mtasts_put_u32(o, v);
  return put(b, o, 4);
}

static int put_utf8(mtasts_buf *b, uint32_t cp) {
  unsigned char o[4];
  size_t n;
  if (cp < 0x80) { o[0] = (unsigned char)cp; n = 1; }
  else if (cp < 0x800) { o[0] = (unsigned char)(0xC0 | cp >> 6); o[1] = (unsigned char)(0x80 | (cp & 0x3F)); n = 2; }
  else if (cp < 0x10000) {
    o[0] = (unsigned char)(0xE0 | cp >> 12);
    o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  return put(b, o, n);
}

/* The length of a valid UTF-8 sequence at p (no overlongs, no surrogates, at most
 * U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *p, const unsigned char *e) {
  size_t n, i;
  uint32_t cp;
  if (p[0] < 0xC2) return 0;
  if (p[0] < 0xE0) { n = 2; cp = p[0] & 0x1F; }
  else if (p[0] < 0xF0) { n = 3; cp = p[0] & 0x0F; }
  else if (p[0] < 0xF5) { n = 4; cp = p[0] & 0x07; }
  else return 0;
  if ((size_t)(e - p) < n) return 0;
  for (i = 1; i < n; i++) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    cp = cp << 6 | (p[i] & 0x3F);
  }
  if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
      (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
    return 0;
  return n;
}

static int hex4(const unsigned char *p, uint32_t *v) {
  int i;
  *v = 0;
  for (i = 0; i < 4; i++) {
    unsigned c = p[i], x;
    if (c >= '0' && c <= '9') x = c - '0';
    else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') x = (c | 0x20) - 'a' + 10;
    else return 0;
    *v = *v << 4 | x;
  }
  return 1;
}

/* A JSON string, decoded, appended to out (out NULL: checked and skipped). */
static int string(rd *r, mtasts_buf *out) {
  static const unsigned char fffd[3] = {0xEF, 0xBF, 0xBD};
  int repaired = 0;
  if (!eat(r, '"')) return fail(r, MTASTS_DGRAM_EJSON, "a string expected");
  for (;;) {
    const unsigned char *run = r->s;
    while (r->s < r->e && *r->s != '"' && *r->s != '\\' && *r->s >= 0x20 && *r->s < 0x80) r->s++;
    if (out && put(out, run, (size_t)(r->s - run))) return MTASTS_DGRAM_ENOMEM;
    if (r->s >= r->e) return fail(r, MTASTS_DGRAM_EJSON, "a string is not closed");
    if (*r->s == '"') { r->s++; break; }
    if (*r->s < 0x20) return fail(r, MTASTS_DGRAM_EJSON, "a control byte in a string");
    if (*r->s >= 0x80) {
      size_t n = utf8_len(r->s, r->e);
      if (n) { if (out && put(out, r->s, n)) return MTASTS_DGRAM_ENOMEM; r->s += n; }
      else { if (out && put(out, fffd, 3)) return MTASTS_DGRAM_ENOMEM; r->s++; repaired = 1; }
      continue;
    }
    /* a backslash */
    if (r->e - r->s < 2) return fail(r, MTASTS_DGRAM_EJSON, "a string is not closed");
    r->s++;
    {
      unsigned char c = *r->s++, o = 0;
      uint32_t cp, lo;
      switch (c) {
      case '"': case '\\': case '/': o = c; break;
      case 'b': o = '\b'; break;
      case 'f': o = '\f'; break;
      case 'n': o = '\n'; break;
      case 'r': o = '\r'; break;
      case 't': o = '\t'; break;
      case 'u':
        if (r->e - r->s < 4 || !hex4(r->s, &cp)) return fail(r, MTASTS_DGRAM_EJSON, "a bad \\u escape");
        r->s += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF && r->e - r->s >= 6 && r->s[0] == '\\' && r->s[1] == 'u' &&
            hex4(r->s + 2, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
          r->s += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xD800 && cp <= 0xDFFF) {
          cp = 0xFFFD;   /* a lone surrogate */
          repaired = 1;
        }
        if (out && put_utf8(out, cp)) return MTASTS_DGRAM_ENOMEM;
        continue;
      default:
        return fail(r, MTASTS_DGRAM_EJSON, "a bad escape \\%c", c >= 0x20 && c < 0x7F ? c : '?');
      }
      if (out && put(out, &o, 1)) return MTASTS_DGRAM_ENOMEM;
    }
  }
  r->repaired += (unsigned)repaired;
  return 0;
}

/* A JSON string appended as u32 length + bytes. */
static int lstring(rd *r, mtasts_buf *out) {
  size_t at = out->n;
  int rc;
  if (put_u32(out, 0)) return MTASTS_DGRAM_ENOMEM;
  if ((rc = string(r, out)) != 0) return rc;
  if (out->n - at - 4 > 0xFFFFFFFFu) return fail(r, MTASTS_DGRAM_ELIMIT, "a string too long");
  mtasts_put_u32(out->p + at, (uint32_t)(out->n - at - 4));
  return 0;
}

/* A JSON number: its syntax checked; *v its value when it is an integer that fits (*isint). */
static int number(rd *r, long long *v, int *isint) {
  const unsigned char *p;
  int neg = 0, digits = 0, big = 0;
  unsigned long long x = 0;
  ws(r);
  p = r->s;
  *isint = 1;
  if (p < r->e && *p == '-') { neg = 1; p++; }
  if (p < r->e && *p == '0') { p++; digits = 1; }
  else
    while (p < r->e && *p >= '0' && *p <= '9') {
      if (x > 900000000000000000ULL) big = 1;
      else x = x * 10 + (unsigned)(*p - '0');
      p++;
      digits++;
    }
  if (!digits) return fail(r, MTASTS_DGRAM_EJSON, "a value expected");
  if (p < r->e && *p == '.') {
    *isint = 0;
    p++;
    if (p >= r->e || *p < '0' || *p > '9') return fail(r, MTASTS_DGRAM_EJSON, "a bad number");
    while (p < r->e && *p >= '0' && *p <= '9') p++;
  }
  if (p < r->e && (*p == 'e' || *p == 'E')) {
    *isint = 0;
    p++;
    if (p < r->e && (*p == '+' || *p == '-')) p++;
    if (p >= r->e || *p < '0' || *p > '9') return fail(r, MTASTS_DGRAM_EJSON, "a bad number");
    while (p < r->e && *p >= '0' && *p <= '9') p++;
  }
  if (big) *isint = 0;
  *v = neg ? -(long long)x : (long long)x;
  r->s = p;
  return 0;
}

static int word(rd *r, const char *w) {
  size_t n = strlen(w);
  ws(r);
  if ((size_t)(r->e - r->s) >= n && memcmp(r->s, w, n) == 0) { r->s += n; return 0; }
  return fail(r, MTASTS_DGRAM_EJSON, "a value expected");
}

/* Skip any JSON value (an unknown member's). */
static int skip(rd *r, int depth) {
  int rc;
  long long v;
  int isint;
  if (depth > MTASTS_DGRAM_MAX_DEPTH) return fail(r, MTASTS_DGRAM_ELIMIT, "nested too deep");
  ws(r);
  if (r->s >= r->e) return fail(r, MTASTS_DGRAM_EJSON, "a value expected");
  switch (*r->s) {
  case '"': return string(r, NULL);
  case '{':
    r->s++;
    if (eat(r, '}')) return 0;
    do {
      if ((rc = string(r, NULL)) != 0) return rc;
      if (!eat(r, ':')) return fail(r, MTASTS_DGRAM_EJSON, "':' expected");
      if ((rc = skip(r, depth + 1)) != 0) return rc;
    } while (eat(r, ','));
    return eat(r, '}') ? 0 : fail(r, MTASTS_DGRAM_EJSON, "'}' expected");
  case '[':
    r->s++;
    if (eat(r, ']')) return 0;
    do
      if ((rc = skip(r, depth + 1)) != 0) return rc;
    while (eat(r, ','));
    return eat(r, ']') ? 0 : fail(r, MTASTS_DGRAM_EJSON, "']' expected");
  case 't': return word(r, "true");
  case 'f': return word(r, "false");
  case 'n': return word(r, "null");
  default: return number(r, &v, &isint);
  }
}

/* The key of an object member: one of names (returns its index), or -1 for another. */
static int member(rd *r, const char *const *names, int nnames, mtasts_buf *tmp, int *rc) {
  int i;
  tmp->n = 0;
  if ((*rc = string(r, tmp)) != 0) return -1;
  if (!eat(r, ':')) { *rc = fail(r, MTASTS_DGRAM_EJSON, "':' expected"); return -1; }
  for (i = 0; i < nnames; i++)
    if (strlen(names[i]) == tmp->n && memcmp(names[i], tmp->p, tmp->n) == 0) return i;
  return -1;
}

static int peek(rd *r, unsigned char c) {
  ws(r);
  return r->s < r->e && *r->s == c;
}

/* An integer member's value. */
static int integer(rd *r, const char *name, long long *v) {
  int isint, rc;
  if (!peek(r, '-') && !(r->s < r->e && *r->s >= '0' && *r->s <= '9')) {
    if ((rc = skip(r, 0)) != 0) return rc;
    return fail(r, MTASTS_DGRAM_EINVALID, "\"%s\" is not a number", name);
  }
  if ((rc = number(r, v, &isint)) != 0) return rc;
  if (!isint) return fail(r, MTASTS_DGRAM_EINVALID, "\"%s\" is not an integer", name);
  return 0;
}

/* An array of strings, each as u32 length + bytes, into out; *count of them. */
static int strings(rd *r, const char *name, mtasts_buf *out, uint32_t *count) {
  int rc;
  if (!eat(r, '[')) return fail(r, MTASTS_DGRAM_EINVALID, "\"%s\" is not an array", name);
  if (eat(r, ']')) return 0;
  do {
    if (*count >= MTASTS_DGRAM_MAX_STRINGS)
      return fail(r, MTASTS_DGRAM_ELIMIT, "more than %d items in \"%s\"", MTASTS_DGRAM_MAX_STRINGS, name);
    if (!peek(r, '"')) return fail(r, MTASTS_DGRAM_EINVALID, "an item of \"%s\" is not a string", name);
    if ((rc = lstring(r, out)) != 0) return rc;
    (*count)++;
  } while (eat(r, ','));
  return eat(r, ']') ? 0 : fail(r, MTASTS_DGRAM_EJSON, "']' expected");
}

/* Lower case, one trailing dot removed, then a host name's syntax (letters, digits, '-', '_';
 * labels of 1-63, at most 253 in all). s is u32 length + bytes in b at off; 0 or a reason. */
static int domain(rd *r, mtasts_buf *b, size_t off, const char *name) {
  unsigned char *p = b->p + off + 4;
  size_t n = mtasts_get_u32(b->p + off), i, label = 0;
  if (n && p[n - 1] == '.') n--;
  if (n == 0 || n > 253) return fail(r, MTASTS_DGRAM_EINVALID, "\"%s\" is not a domain name", name);
  for (i = 0; i < n; i++) {
    unsigned char c = p[i];
    if (c >= 'A' && c <= 'Z') p[i] = c = (unsigned char)(c | 0x20);
    if (c == '.') {
      if (label == 0) return fail(r, MTASTS_DGRAM_EINVALID, "\"%s\" is not a domain name", name);
      label = 0;
    } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
      if (++label > 63) return fail(r, MTASTS_DGRAM_EINVALID, "\"%s\" has a label over 63", name);
    } else {
      return fail(r, MTASTS_DGRAM_EINVALID, "\"%s\" is not a domain name", name);
    }
  }
  if (label == 0) return fail(r, MTASTS_DGRAM_EINVALID, "\"%s\" is not a domain name", name);
  mtasts_put_u32(b->p + off, (uint32_t)n);
  b->n = off + 4 + n;
  return 0;
}

/* What one policy object holds, as offsets into the scratch buffer. */
typedef struct {
  int type, final, has_t, has_pd;
  long long t, tval;   /* failure details seen; the "t" member */
  size_t pd, ps, ps_end, mx, mx_end, det, det_end;
  uint32_t ns, nm, ndet;
} pol;

static const char *const detail_names[] = {"c", "s", "n", "h", "r", "a", "f"};
static const char *const policy_names[] = {"policy-type", "policy-domain", "policy-string",
                                           "mx-host", "failure-details", "t", "f"};
static const char *const top_names[] = {"dpv", "d", "pr", "policies"};

/* A failure-detail object appended to sc as: u32 c, then six opt strings. -1 when written,
 * 0 when left out (a result type we do not know: counted in *unknown), or a reason. */
static int detail(rd *r, mtasts_buf *sc, mtasts_buf *tmp, unsigned *unknown) {
  size_t at = sc->n;
  int seen[7] = {0}, rc, i;
  long long c = -1;
  mtasts_buf f[6];
  memset(f, 0, sizeof f);
  if (!eat(r, '{')) return fail(r, MTASTS_DGRAM_EINVALID, "a failure detail is not an object");
  if (!eat(r, '}')) {
    do {
      int k = member(r, detail_names, 7, tmp, &rc);
      if (rc) goto out;
      if (k < 0) { if ((rc = skip(r, 1)) != 0) goto out; continue; }
      if (seen[k]++) { rc = fail(r, MTASTS_DGRAM_EINVALID, "\"%s\" twice in a failure detail", detail_names[k]); goto out; }
      if (k == 0) {
        if ((rc = integer(r, "c", &c)) != 0) goto out;
      } else {
        if (!peek(r, '"')) { rc = fail(r, MTASTS_DGRAM_EINVALID, "\"%s\" of a failure detail is not a string", detail_names[k]); goto out; }
        if ((rc = lstring(r, &f[k - 1])) != 0) goto out;
      }
    } while (eat(r, ','));
    if (!eat(r, '}')) { rc = fail(r, MTASTS_DGRAM_EJSON, "'}' expected"); goto out; }
  }
  if (!seen[0]) { rc = fail(r, MTASTS_DGRAM_EMISSING, "a failure detail without \"c\""); goto out; }
  rc = 0;
  if (c < 0 || c > 0xFFFF || !mtasts_dgram_result_type((unsigned)c)) {
    (*unknown)++;    /* the session still counts; no result type is made up for it */
    goto out;
  }
  if (put_u32(sc, (uint32_t)c)) { rc = MTASTS_DGRAM_ENOMEM; goto out; }
  for (i = 0; i < 6; i++) {
    unsigned char has = seen[i + 1] ? 1 : 0;
    if (put(sc, &has, 1) || (has && put(sc, f[i].p, f[i].n))) { rc = MTASTS_DGRAM_ENOMEM; goto out; }
  }
  rc = -1;   /* one detail written */
out:
  for (i = 0; i < 6; i++) mtasts_buf_free(&f[i]);
  if (rc > 0) sc->n = at;
  return rc;
}

static int policy(rd *r, mtasts_buf *sc, mtasts_buf *tmp, pol *p, unsigned *unknown) {
  int seen[7] = {0}, rc;
  long long v;
  memset(p, 0, sizeof *p);
  p->final = -1;
  if (!eat(r, '{')) return fail(r, MTASTS_DGRAM_EINVALID, "a policy is not an object");
  if (!eat(r, '}')) {
    do {
      int k = member(r, policy_names, 7, tmp, &rc);
      if (rc) return rc;
      if (k < 0) { if ((rc = skip(r, 1)) != 0) return rc; continue; }
      if (seen[k]++) return fail(r, MTASTS_DGRAM_EINVALID, "\"%s\" twice in a policy", policy_names[k]);
      switch (k) {
      case 0:
        if ((rc = integer(r, "policy-type", &v)) != 0) return rc;
        if (v != 1 && v != 2 && v != 9)
          return fail(r, MTASTS_DGRAM_EPOLICY_TYPE, "policy-type %lld is not 1, 2 or 9", v);
        p->type = (int)v;
        break;
      case 1:
        if (!peek(r, '"')) return fail(r, MTASTS_DGRAM_EINVALID, "\"policy-domain\" is not a string");
        p->pd = sc->n;
        if ((rc = lstring(r, sc)) != 0) return rc;
        if ((rc = domain(r, sc, p->pd, "policy-domain")) != 0) return rc;
        p->has_pd = 1;
        break;
      case 2:
        p->ps = sc->n;
        if ((rc = strings(r, "policy-string", sc, &p->ns)) != 0) return rc;
        p->ps_end = sc->n;
        break;
      case 3:
        p->mx = sc->n;
        if ((rc = strings(r, "mx-host", sc, &p->nm)) != 0) return rc;
        p->mx_end = sc->n;
        break;
      case 4:
        if (!eat(r, '[')) return fail(r, MTASTS_DGRAM_EINVALID, "\"failure-details\" is not an array");
        p->det = sc->n;
        if (!eat(r, ']')) {
          do {
            if (p->ndet >= MTASTS_DGRAM_MAX_DETAILS || p->t >= MTASTS_DGRAM_MAX_DETAILS * 4)
              return fail(r, MTASTS_DGRAM_ELIMIT, "more than %d failure details", MTASTS_DGRAM_MAX_DETAILS);
            rc = detail(r, sc, tmp, unknown);
            if (rc > 0) return rc;
            if (rc < 0) p->ndet++;
            p->t++;      /* details seen, known result type or not: for the "t" check */
          } while (eat(r, ','));
          if (!eat(r, ']')) return fail(r, MTASTS_DGRAM_EJSON, "']' expected");
        }
        p->det_end = sc->n;
        break;
      case 5:
        if ((rc = integer(r, "t", &p->tval)) != 0) return rc;
        p->has_t = 1;
        break;
      default:
        if ((rc = integer(r, "f", &v)) != 0) return rc;
        if (v != 0 && v != 1) return fail(r, MTASTS_DGRAM_EINVALID, "\"f\" of a policy is %lld, not 0 or 1", v);
        p->final = (int)v;
        break;
      }
    } while (eat(r, ','));
    if (!eat(r, '}')) return fail(r, MTASTS_DGRAM_EJSON, "'}' expected");
  }
  if (!seen[0]) return fail(r, MTASTS_DGRAM_EMISSING, "a policy without \"policy-type\"");
  if (p->final < 0) return fail(r, MTASTS_DGRAM_EMISSING, "a policy without \"f\"");
  return 0;
}

/* The key of a policy, without its kind byte: d, pr, type, policy-domain, strings, mx. */
static int prefix(mtasts_buf *k, const mtasts_buf *sc, size_t d, int has_pr, size_t pr,
                  const pol *p) {
  unsigned char t = (unsigned char)p->type, one = 1, zero = 0;
  size_t dn = 4 + mtasts_get_u32(sc->p + d), pdo = p->has_pd ? p->pd : d;
  size_t pdn = 4 + mtasts_get_u32(sc->p + pdo);
  if (put(k, sc->p + d, dn)) return -1;
  if (has_pr) {
    if (put(k, &one, 1) || put(k, sc->p + pr, 4 + mtasts_get_u32(sc->p + pr))) return -1;
  } else if (put(k, &zero, 1)) {
    return -1;
  }
  if (put(k, &t, 1) || put(k, sc->p + pdo, pdn)) return -1;
  if (put_u32(k, p->ns) || put(k, sc->p + p->ps, p->ps_end - p->ps)) return -1;
  if (put_u32(k, p->nm) || put(k, sc->p + p->mx, p->mx_end - p->mx)) return -1;
  return 0;
}

/* Room for n more key bytes, within MTASTS_DGRAM_MAX_KEYS: 0, ELIMIT or ENOMEM. Every entry
 * repeats its policy's key (d, pr, strings), so a datagram of many details over a long
 * record would otherwise make hundreds of megabytes from a few hundred kilobytes. */
static int key_room(mtasts_dgram *d, size_t n) {
  if (d->keys.n + n > MTASTS_DGRAM_MAX_KEYS) return MTASTS_DGRAM_ELIMIT;
  return mtasts_buf_reserve(&d->keys, d->keys.n + n) ? MTASTS_DGRAM_ENOMEM : 0;
}

static int entry(mtasts_dgram *d, size_t off, uint64_t a, uint64_t b) {
  mtasts_dgram_entry e;
  e.off = off;
  e.len = d->keys.n - off;
  e.a = a;
  e.b = b;
  if (put(&d->ents, &e, sizeof e)) return -1;
  d->n++;
  return 0;
}

/* The byte length of a detail's encoding at p (u32 c and six opt strings). */
static size_t detail_len(const unsigned char *p) {
  size_t n = 4;
  int i;
  for (i = 0; i < 6; i++) {
    if (p[n++]) n += 4 + mtasts_get_u32(p + n);
  }
  return n;
}

int mtasts_dgram_parse(const unsigned char *in, size_t n, mtasts_dgram *d, char *err,
                       size_t errn) {
  rd r = {in, in + n, err, errn, 0};
  mtasts_buf sc = {0}, tmp = {0};
  pol *pols = NULL;
  size_t npol = 0, dom = 0, pr = 0, i;
  int seen[4] = {0}, rc = 0;
  unsigned unknown = 0, mismatch = 0;
  if (errn) err[0] = '\0';
  d->keys.n = d->ents.n = d->n = 0;
  d->sessions = d->repaired = d->t_mismatch = d->unknown_type = 0;
  if (!(pols = malloc(MTASTS_DGRAM_MAX_POLICIES * sizeof *pols))) return MTASTS_DGRAM_ENOMEM;
  if (!eat(&r, '{')) { rc = fail(&r, MTASTS_DGRAM_EJSON, "not a JSON object"); goto out; }
  if (!eat(&r, '}')) {
    do {
      int k = member(&r, top_names, 4, &tmp, &rc);
      if (rc) goto out;
      if (k < 0) { if ((rc = skip(&r, 1)) != 0) goto out; continue; }
      if (seen[k]++) { rc = fail(&r, MTASTS_DGRAM_EINVALID, "\"%s\" twice", top_names[k]); goto out; }
      switch (k) {
      case 0:   /* dpv: the string "1" (a missing dpv is an older library: the same format) */
        if (!peek(&r, '"')) {
          if ((rc = skip(&r, 1)) != 0) goto out;
          rc = fail(&r, MTASTS_DGRAM_EVERSION, "\"dpv\" is not a string");
          goto out;
        }
        tmp.n = 0;
        if ((rc = string(&r, &tmp)) != 0) goto out;
        if (tmp.n != 1 || tmp.p[0] != '1') {
          rc = fail(&r, MTASTS_DGRAM_EVERSION, "datagram protocol version \"%.*s\", not \"1\"",
                    tmp.n > 16 ? 16 : (int)tmp.n, (const char *)tmp.p);
          goto out;
        }
        break;
      case 1:
        if (!peek(&r, '"')) { rc = fail(&r, MTASTS_DGRAM_EINVALID, "\"d\" is not a string"); goto out; }
        dom = sc.n;
        if ((rc = lstring(&r, &sc)) != 0 || (rc = domain(&r, &sc, dom, "d")) != 0) goto out;
        break;
      case 2:
        if (!peek(&r, '"')) { rc = fail(&r, MTASTS_DGRAM_EINVALID, "\"pr\" is not a string"); goto out; }
        pr = sc.n;
        if ((rc = lstring(&r, &sc)) != 0) goto out;
        break;
      default:
        if (!eat(&r, '[')) { rc = fail(&r, MTASTS_DGRAM_EINVALID, "\"policies\" is not an array"); goto out; }
        if (!eat(&r, ']')) {
          do {
            if (npol >= MTASTS_DGRAM_MAX_POLICIES) {
              rc = fail(&r, MTASTS_DGRAM_ELIMIT, "more than %d policies", MTASTS_DGRAM_MAX_POLICIES);
              goto out;
            }
            if ((rc = policy(&r, &sc, &tmp, &pols[npol], &unknown)) != 0) goto out;
            npol++;
          } while (eat(&r, ','));
          if (!eat(&r, ']')) { rc = fail(&r, MTASTS_DGRAM_EJSON, "']' expected"); goto out; }
        }
        break;
      }
    } while (eat(&r, ','));
    if (!eat(&r, '}')) { rc = fail(&r, MTASTS_DGRAM_EJSON, "'}' or ',' expected"); goto out; }
  }
  ws(&r);
  if (r.s != r.e) { rc = fail(&r, MTASTS_DGRAM_EJSON, "bytes after the object"); goto out; }
  if (!seen[1]) { rc = fail(&r, MTASTS_DGRAM_EMISSING, "no \"d\""); goto out; }
  if (!seen[3]) { rc = fail(&r, MTASTS_DGRAM_EMISSING, "no \"policies\""); goto out; }
  if (npol == 0) { rc = fail(&r, MTASTS_DGRAM_EMISSING, "no policy in \"policies\""); goto out; }
  for (i = 0; i < npol; i++) {
    const pol *p = &pols[i];
    size_t off = d->keys.n, base, plen, at;
    unsigned char kind = 'S';
    uint32_t j;
    if (p->has_t && p->tval != p->t) mismatch++;
    if ((rc = key_room(d, 1 + sc.n + 16)) != 0) {   /* its key: parts of sc, at most once each */
      if (rc == MTASTS_DGRAM_ELIMIT) rc = fail(&r, rc, "the datagram's results pass %u bytes", (unsigned)MTASTS_DGRAM_MAX_KEYS);
      goto out;
    }
    if (put(&d->keys, &kind, 1) || prefix(&d->keys, &sc, dom, seen[2], pr, p) ||
        entry(d, off, p->final == 0, p->final == 1)) {
      rc = MTASTS_DGRAM_ENOMEM;
      goto out;
    }
    base = off + 1;
    plen = d->keys.n - base;       /* the policy's part of the key, copied into its details' */
    for (j = 0, at = p->det; j < p->ndet; j++) {
      size_t dl = detail_len(sc.p + at), koff = d->keys.n;
      if ((rc = key_room(d, 1 + plen + dl)) != 0) {
        if (rc == MTASTS_DGRAM_ELIMIT) rc = fail(&r, rc, "the datagram's results pass %u bytes", (unsigned)MTASTS_DGRAM_MAX_KEYS);
        goto out;
      }
      d->keys.p[d->keys.n++] = 'D';
      memcpy(d->keys.p + d->keys.n, d->keys.p + base, plen);
      d->keys.n += plen;
      memcpy(d->keys.p + d->keys.n, sc.p + at, dl);
      d->keys.n += dl;
      if (entry(d, koff, 1, 0)) { rc = MTASTS_DGRAM_ENOMEM; goto out; }
      at += dl;
    }
  }
  d->sessions = (unsigned)npol;
  d->repaired = r.repaired;
  d->t_mismatch = mismatch;
  d->unknown_type = unknown;
out:
  if (rc) d->keys.n = d->ents.n = d->n = 0;
  free(pols);
  mtasts_buf_free(&sc);
  mtasts_buf_free(&tmp);
  return rc;
}

void mtasts_dgram_free(mtasts_dgram *d) {
  mtasts_buf_free(&d->keys);
  mtasts_buf_free(&d->ents);
  d->n = 0;
}

/* --- reading a key back --- */

typedef struct { const unsigned char *p, *e; } cur;

static int get_str(cur *c, mtasts_dgram_str *s) {
  uint32_t n;
  if (c->e - c->p < 4) return -1;
  n = mtasts_get_u32(c->p);
  if ((size_t)(c->e - c->p - 4) < n) return -1;
  s->p = (const char *)c->p + 4;
  s->n = n;
  c->p += 4 + n;
  return 0;
}

static int get_list(cur *c, uint32_t *count, const unsigned char **start) {
  uint32_t i;
  mtasts_dgram_str s;
  if (c->e - c->p < 4) return -1;
  *count = mtasts_get_u32(c->p);
  c->p += 4;
  *start = c->p;
  for (i = 0; i < *count; i++)
    if (get_str(c, &s)) return -1;
  return 0;
}

int mtasts_dgram_decode(const unsigned char *key, size_t n, mtasts_dgram_view *v) {
  cur c = {key, key + n};
  int i;
  memset(v, 0, sizeof *v);
  if (n < 1 || (key[0] != 'S' && key[0] != 'D')) return -1;
  v->kind = (char)key[0];
  c.p++;
  if (get_str(&c, &v->d) || c.p >= c.e) return -1;
  v->has_pr = *c.p++;
  if (v->has_pr && get_str(&c, &v->pr)) return -1;
  if (c.p >= c.e) return -1;
  v->type = *c.p++;
  if (get_str(&c, &v->pdomain) || get_list(&c, &v->nstrings, &v->strings) ||
      get_list(&c, &v->nmx, &v->mx))
    return -1;
  if (v->kind == 'D') {
    if (c.e - c.p < 4) return -1;
    v->code = mtasts_get_u32(c.p);
    c.p += 4;
    for (i = 0; i < 6; i++) {
      if (c.p >= c.e) return -1;
      v->has[i] = *c.p++;
      if (v->has[i] && get_str(&c, &v->field[i])) return -1;
    }
  }
  return c.p == c.e ? 0 : -1;
}

mtasts_dgram_str mtasts_dgram_next(const unsigned char **p) {
  mtasts_dgram_str s;
  s.n = mtasts_get_u32(*p);
  s.p = (const char *)*p + 4;
  *p += 4 + s.n;
  return s;
}
