/* parse.c: strict parsers for MTA-STS records and policies, TLSRPT records, and MX matching.
 * Pure C, no Lua: the bindings (lua_parse.c) and the fuzz harnesses (fuzz/) call it.
 * Rules: docs/conformance.md §1, §3, §4, §7; grammar: RFC 8461 §3.1-3.2, RFC 8460 §3. */
#include "mtasts.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define QMAX 40  /* untrusted bytes quoted in an error message, at most */

static int is_alpha(unsigned char c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static int is_alnum(unsigned char c) { return is_alpha(c) || is_digit(c); }
static int is_wsp(unsigned char c) { return c == ' ' || c == '\t'; }
static unsigned char lower(unsigned char c) { return c >= 'A' && c <= 'Z' ? c | 0x20 : c; }

static int errf(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int errf(char *err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, MTASTS_ERR_MAX, fmt, ap);
  va_end(ap);
  return -1;
}

void mtasts_quote(char *out, size_t outlen, const char *p, size_t n, size_t max) {
  static const char hex[] = "0123456789abcdef";
  size_t i, o = 0;
  if (outlen == 0) return;
  for (i = 0; i < n && i < max && o + 5 < outlen; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out[o++] = (char)c;
    } else {
      out[o++] = '\\'; out[o++] = 'x';
      out[o++] = hex[c >> 4]; out[o++] = hex[c & 15];
    }
  }
  if (i < n && o + 4 <= outlen) { memcpy(out + o, "...", 3); o += 3; }
  out[o] = '\0';
}

/* Quote a span into a per-message scratch buffer (two are enough for one message). */
typedef struct { char a[4 * QMAX + 8], b[4 * QMAX + 8]; } quotes;
static const char *qa(quotes *q, mtasts_span s) {
  mtasts_quote(q->a, sizeof q->a, s.p, s.n, QMAX);
  return q->a;
}
static const char *qb(quotes *q, mtasts_span s) {
  mtasts_quote(q->b, sizeof q->b, s.p, s.n, QMAX);
  return q->b;
}

static int span_eq(mtasts_span s, const char *lit) {
  size_t n = strlen(lit);
  return s.n == n && memcmp(s.p, lit, n) == 0;
}

static int push_span(mtasts_spans *a, mtasts_span s) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 8;
    mtasts_span *v = realloc(a->v, cap * sizeof *v);
    if (!v) return -2;
    a->v = v; a->cap = cap;
  }
  a->v[a->n++] = s;
  return 0;
}

static int push_kv(mtasts_kvs *a, mtasts_span k, mtasts_span v) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 4;
    mtasts_kv *nv = realloc(a->v, cap * sizeof *nv);
    if (!nv) return -2;
    a->v = nv; a->cap = cap;
  }
  a->v[a->n].key = k;
  a->v[a->n].value = v;
  a->n++;
  return 0;
}

/* ext-name: (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".") */
static int valid_ext_name(mtasts_span k) {
  size_t i;
  if (k.n < 1 || k.n > 32 || !is_alnum((unsigned char)k.p[0])) return 0;
  for (i = 1; i < k.n; i++) {
    unsigned char c = (unsigned char)k.p[i];
    if (!is_alnum(c) && c != '_' && c != '-' && c != '.') return 0;
  }
  return 1;
}

/* record ext-value: 1*(%x21-3A / %x3C / %x3E-7E), i.e. visible ASCII except ';' and '=' */
static int valid_record_ext_value(mtasts_span v) {
  size_t i;
  if (v.n < 1) return 0;
  for (i = 0; i < v.n; i++) {
    unsigned char c = (unsigned char)v.p[i];
    if (c < 0x21 || c > 0x7e || c == ';' || c == '=') return 0;
  }
  return 1;
}

/* --- TXT records (shared by MTA-STS and TLSRPT) --- */

typedef int (*field_fn)(void *out, int fieldno, mtasts_span key, mtasts_span value, char *err);

static int starts_with_tag(const char *s, size_t n, const char *tag) {
  size_t t = strlen(tag);
  return n >= t && memcmp(s, tag, t) == 0 && (n == t || s[t] == ';' || is_wsp((unsigned char)s[t]));
}

int mtasts_is_sts_record(const char *s, size_t n) {
  return starts_with_tag(s, n, "v=STSv1") && n > 7;
}

int mtasts_is_tlsrpt_record(const char *s, size_t n) {
  return starts_with_tag(s, n, "v=TLSRPTv1") && n > 10;
}

/* version 1*(sep field) [sep]; sep = *WSP ";" *WSP. Trailing spaces and tabs are accepted. */
static int parse_txt(const char *s, size_t n, const char *tag, field_fn fn, void *out, char *err) {
  size_t t = strlen(tag), pos, fields = 0;
  quotes q;
  if (n > MTASTS_RECORD_MAX)
    return errf(err, "record is %zu bytes, more than the %d allowed", n, MTASTS_RECORD_MAX);
  if (!starts_with_tag(s, n, tag)) {
    mtasts_span head = { s, n };
    return errf(err, "record '%s' does not start with %s and a ';'", qa(&q, head), tag);
  }
  pos = t;
  for (;;) {
    size_t fe, fend, eq;
    mtasts_span key, value;
    int rc;
    while (pos < n && is_wsp((unsigned char)s[pos])) pos++;
    if (pos == n) break;
    if (s[pos] != ';') {
      mtasts_span rest = { s + pos, n - pos };
      return errf(err, "record offset %zu: expected ';' before '%s'", pos, qa(&q, rest));
    }
    pos++;
    while (pos < n && is_wsp((unsigned char)s[pos])) pos++;
    if (pos == n) break;  /* trailing separator */
    fields++;
    if (s[pos] == ';')
      return errf(err, "record field %zu is empty (';;' at offset %zu)", fields, pos);
    for (fe = pos; fe < n && s[fe] != ';'; fe++) {}
    for (fend = fe; fend > pos && is_wsp((unsigned char)s[fend - 1]); fend--) {}
    for (eq = pos; eq < fend && s[eq] != '='; eq++) {}
    if (eq == fend) {
      mtasts_span f = { s + pos, fend - pos };
      return errf(err, "record field %zu '%s' is not key=value", fields, qa(&q, f));
    }
    key.p = s + pos; key.n = eq - pos;
    value.p = s + eq + 1; value.n = fend - eq - 1;
    if (!valid_ext_name(key))
      return errf(err, "record field %zu: key '%s' is not 1-32 letters, digits, '_', '-' or '.' "
                  "starting with a letter or digit", fields, qa(&q, key));
    if ((rc = fn(out, (int)fields, key, value, err)) != 0) return rc;
    pos = fe;
  }
  if (fields == 0) return errf(err, "record has no field after %s", tag);
  return 0;
}

/* RFC 8461 §3.2: of a duplicated non-repeated field only the first counts; later ones are
 * ignored whatever their value (docs/conformance.md §8.1). The version is the record's first
 * field, so any later "v=" is such a duplicate. Extensions are not fields the RFC defines:
 * they are all kept. */
static int sts_field(void *o, int no, mtasts_span key, mtasts_span value, char *err) {
  mtasts_record *r = o;
  quotes q;
  if (span_eq(key, "v")) return 0;
  if (span_eq(key, "id")) {
    size_t i;
    int ok = value.n >= 1 && value.n <= 32;
    if (r->id.p) return 0;
    for (i = 0; ok && i < value.n; i++) ok = is_alnum((unsigned char)value.p[i]);
    if (!ok)
      return errf(err, "record field %d: id '%s' is not 1-32 letters or digits", no, qa(&q, value));
    r->id = value;
    return 0;
  }
  if (!valid_record_ext_value(value))
    return errf(err, "record field %d: value '%s' of '%s' is not 1 or more visible ASCII "
                "characters other than ';' and '='", no, qa(&q, value), qb(&q, key));
  return push_kv(&r->ext, key, value);
}

int mtasts_parse_record(const char *s, size_t n, mtasts_record *out, char *err) {
  int rc = parse_txt(s, n, "v=STSv1", sts_field, out, err);
  if (rc != 0) return rc;
  if (!out->id.p) return errf(err, "record has no id field");
  return 0;
}

void mtasts_record_free(mtasts_record *r) {
  free(r->ext.v);
  memset(r, 0, sizeof *r);
}


/* RFC 5322 atext. */
static int is_atext(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

int mtasts_mailto_address(const char *p, size_t n, char *out, size_t *outn, const char **why) {
  size_t i, len = 0, at;
  if (n < 7 || strncasecmp(p, "mailto:", 7) != 0) {
    *why = "is not a mailto: URI";
    return 0;
  }
  /* percent-decode the address (up to any ?hfields) into out */
  for (i = 7; i < n && p[i] != '?'; i++) {
    int c = (unsigned char)p[i];
    if (c == '%') {
      int hi = i + 2 < n ? mtasts_hexval((unsigned char)p[i + 1]) : -1;
      int lo = i + 2 < n ? mtasts_hexval((unsigned char)p[i + 2]) : -1;
      if (hi < 0 || lo < 0) {
        *why = "has a '%' that is not followed by two hex digits";
        return 0;
      }
      c = hi * 16 + lo;
      i += 2;
    }
    if (c < 0x20 || c > 0x7e) {
      *why = "has a control or non-ASCII character in its address (after %-decoding)";
      return 0;
    }
    if (len == MTASTS_MAILTO_MAX) {
      *why = "has an address longer than 254 bytes";
      return 0;
    }
    out[len++] = (char)c;
  }
  out[len] = '\0';
  /* local-part "@" domain: the domain after the last '@' */
  for (at = len; at > 0 && out[at - 1] != '@'; at--) {}
  if (at < 2 || at == len) {
    *why = "is not mailto:local-part@domain";
    return 0;
  }
  at--;   /* the index of '@' */
  {   /* the domain: what mtasts.domain accepts (LDH labels, no numeric top label), two
       * labels or more */
    char ascii[MTASTS_NAME_MAX + 1], derr[MTASTS_ERR_MAX];
    if (!memchr(out + at + 1, '.', len - at - 1) || out[len - 1] == '.' ||
        mtasts_domain_ascii(out + at + 1, len - at - 1, ascii, derr) != 0) {
      *why = "has a domain that is not a host name";
      return 0;
    }
  }
  if (out[0] == '"') {            /* quoted-string: qtext and quoted-pairs, space allowed */
    if (at < 2 || out[at - 1] != '"') {
      *why = "has a malformed quoted local-part";
      return 0;
    }
    for (i = 1; i < at - 1; i++) {
      if (out[i] == '\\') {
        if (++i >= at - 1) { *why = "has a malformed quoted local-part"; return 0; }
      } else if (out[i] == '"') {
        *why = "has a malformed quoted local-part";
        return 0;
      }
    }
  } else {                          /* dot-atom: atext, single dots inside */
    for (i = 0; i < at; i++) {
      int c = (unsigned char)out[i];
      if (c == '.') {
        if (i == 0 || i + 1 == at || out[i - 1] == '.') {
          *why = "has a local-part with a leading, trailing or double dot";
          return 0;
        }
      } else if (!is_atext(c)) {
        *why = "has a character its local-part may not hold unquoted";
        return 0;
      }
    }
  }
  *outn = len;
  return 1;
}

/* A TLSRPT rua URI: mailto:local@domain[?hfields] (the address checked after
 * percent-decoding) or https://authority[/...]. */
static int valid_rua_uri(mtasts_span u, const char **why) {
  size_t i, end;
  for (i = 0; i < u.n; i++) {
    unsigned char c = (unsigned char)u.p[i];
    if (c < 0x21 || c > 0x7e) { *why = "contains a space, control or non-ASCII byte"; return 0; }
  }
  if (u.n > 7 && strncasecmp(u.p, "mailto:", 7) == 0) {
    char addr[MTASTS_MAILTO_MAX + 1];
    size_t an;
    return mtasts_mailto_address(u.p, u.n, addr, &an, why);
  }
  if (u.n > 8 && strncasecmp(u.p, "https://", 8) == 0) {
    for (end = 8; end < u.n && u.p[end] != '/' && u.p[end] != '?' && u.p[end] != '#'; end++) {}
    if (end == 8) { *why = "has no host after https://"; return 0; }
    return 1;
  }
  *why = "is not a mailto: or https: URI";
  return 0;
}

static int tlsrpt_field(void *o, int no, mtasts_span key, mtasts_span value, char *err) {
  mtasts_tlsrpt_record *r = o;
  quotes q;
  if (span_eq(key, "rua")) {
    size_t pos = 0;
    if (value.n == 0) return errf(err, "record field %d: rua is empty", no);
    for (;;) {
      size_t e, b, t;
      mtasts_span uri;
      const char *why;
      int rc;
      for (e = pos; e < value.n && value.p[e] != ','; e++) {}
      for (b = pos; b < e && is_wsp((unsigned char)value.p[b]); b++) {}
      for (t = e; t > b && is_wsp((unsigned char)value.p[t - 1]); t--) {}
      uri.p = value.p + b; uri.n = t - b;
      if (uri.n == 0)
        return errf(err, "record field %d: empty URI in rua '%s'", no, qa(&q, value));
      if (!valid_rua_uri(uri, &why))
        return errf(err, "record field %d: rua URI '%s' %s", no, qa(&q, uri), why);
      if ((rc = push_span(&r->rua, uri)) != 0) return rc;
      if (e == value.n) break;
      pos = e + 1;
    }
    return 0;
  }
  if (!valid_record_ext_value(value))
    return errf(err, "record field %d: value '%s' of '%s' is not 1 or more visible ASCII "
                "characters other than ';' and '='", no, qa(&q, value), qb(&q, key));
  return push_kv(&r->ext, key, value);
}

int mtasts_parse_tlsrpt_record(const char *s, size_t n, mtasts_tlsrpt_record *out, char *err) {
  int rc = parse_txt(s, n, "v=TLSRPTv1", tlsrpt_field, out, err);
  if (rc != 0) return rc;
  if (out->rua.n == 0) return errf(err, "record has no rua field");
  return 0;
}

void mtasts_tlsrpt_record_free(mtasts_tlsrpt_record *r) {
  free(r->rua.v);
  free(r->ext.v);
  memset(r, 0, sizeof *r);
}

/* --- policy text --- */

/* Length of a valid UTF-8 sequence (2-4 bytes, no overlongs, no surrogates) at p, or 0. */
static size_t utf8_seq(const unsigned char *p, size_t n) {
  size_t len, i;
  uint32_t cp;
  if (p[0] >= 0xc2 && p[0] <= 0xdf) { len = 2; cp = p[0] & 0x1f; }
  else if (p[0] >= 0xe0 && p[0] <= 0xef) { len = 3; cp = p[0] & 0x0f; }
  else if (p[0] >= 0xf0 && p[0] <= 0xf4) { len = 4; cp = p[0] & 0x07; }
  else return 0;
  if (n < len) return 0;
  for (i = 1; i < len; i++) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3f);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) return 0;
  if (cp >= 0xd800 && cp <= 0xdfff) return 0;
  return len;
}

/* policy ext-value: visible ASCII or UTF-8, with inner spaces; never tabs or controls. */
static int valid_policy_ext_value(mtasts_span v) {
  size_t i = 0;
  if (v.n == 0) return 0;
  while (i < v.n) {
    unsigned char c = (unsigned char)v.p[i];
    if (c >= 0x20 && c <= 0x7e) { i++; continue; }
    if (c < 0x80) return 0;
    {
      size_t l = utf8_seq((const unsigned char *)v.p + i, v.n - i);
      if (l == 0) return 0;
      i += l;
    }
  }
  return v.p[0] != ' ';
}

/* mx value: ["*."] ldh-name, optional trailing dot. The pattern span drops the trailing dot. */
static int check_mx(size_t lineno, mtasts_span v, mtasts_span *pattern, char *err) {
  char ascii[MTASTS_NAME_MAX + 1], why[MTASTS_ERR_MAX];
  mtasts_span name = v;
  size_t i;
  quotes q;
  if (name.n > 0 && name.p[name.n - 1] == '.') name.n--;
  *pattern = name;
  if (name.n >= 2 && name.p[0] == '*' && name.p[1] == '.') { name.p += 2; name.n -= 2; }
  if (name.n == 0) return errf(err, "policy line %zu: mx '%s' has no host name", lineno, qa(&q, v));
  for (i = 0; i < name.n; i++) {
    unsigned char c = (unsigned char)name.p[i];
    if (c == '*')
      return errf(err, "policy line %zu: mx '%s': a wildcard is only allowed as '*.' at the start",
                  lineno, qa(&q, v));
    if (c >= 0x80)
      return errf(err, "policy line %zu: mx '%s' is not ASCII (write IDN host names as A-labels, "
                  "xn--...)", lineno, qa(&q, v));
  }
  if (mtasts_domain_ascii(name.p, name.n, ascii, why) != 0)
    return errf(err, "policy line %zu: mx '%s': %s", lineno, qa(&q, v), why);
  /* mtasts_domain_ascii accepts a trailing dot; a second one ("a..") must not sneak in */
  if (name.n > 0 && name.p[name.n - 1] == '.')
    return errf(err, "policy line %zu: mx '%s' has an empty label", lineno, qa(&q, v));
  return 0;
}

int mtasts_parse_policy(const char *s, size_t n, mtasts_policy *out, char *err) {
  size_t pos = 0, lineno = 0;
  int have_version = 0, have_mode = 0, have_max_age = 0, rc;
  quotes q;
  if (n > MTASTS_POLICY_MAX)
    return errf(err, "policy is %zu bytes, more than the %d allowed", n, MTASTS_POLICY_MAX);
  while (pos < n) {
    const char *nl = memchr(s + pos, '\n', n - pos);
    size_t end = nl ? (size_t)(nl - s) : n, next = nl ? end + 1 : n, colon, vs, i;
    mtasts_span line, key, value;
    lineno++;
    if (end > pos && s[end - 1] == '\r') end--;
    line.p = s + pos; line.n = end - pos;
    pos = next;
    while (line.n > 0 && is_wsp((unsigned char)line.p[line.n - 1])) line.n--;
    if (line.n == 0) continue;  /* empty lines, also trailing ones, are skipped */
    for (i = 0; i < line.n; i++)
      if (line.p[i] == '\r')
        return errf(err, "policy line %zu: carriage return inside the line '%s'", lineno,
                    qa(&q, line));
    for (colon = 0; colon < line.n && line.p[colon] != ':'; colon++) {}
    if (colon == line.n)
      return errf(err, "policy line %zu: '%s' is not 'key: value'", lineno, qa(&q, line));
    key.p = line.p; key.n = colon;
    for (vs = colon + 1; vs < line.n && is_wsp((unsigned char)line.p[vs]); vs++) {}
    value.p = line.p + vs; value.n = line.n - vs;
    if (!valid_ext_name(key))
      return errf(err, "policy line %zu: key '%s' is not 1-32 letters, digits, '_', '-' or '.' "
                  "starting with a letter or digit", lineno, qa(&q, key));
    /* RFC 8461 §3.2: a repeated version, mode or max_age line is ignored whatever its value;
     * the first one decides (docs/conformance.md §8.1) */
    if (span_eq(key, "version")) {
      if (have_version) continue;
      if (!span_eq(value, "STSv1"))
        return errf(err, "policy line %zu: version '%s' is not STSv1", lineno, qa(&q, value));
      have_version = 1;
    } else if (span_eq(key, "mode")) {
      if (have_mode) continue;
      if (span_eq(value, "enforce")) out->mode = MTASTS_MODE_ENFORCE;
      else if (span_eq(value, "testing")) out->mode = MTASTS_MODE_TESTING;
      else if (span_eq(value, "none")) out->mode = MTASTS_MODE_NONE;
      else
        return errf(err, "policy line %zu: mode '%s' is not enforce, testing or none", lineno,
                    qa(&q, value));
      have_mode = 1;
    } else if (span_eq(key, "max_age")) {
      uint64_t v = 0;
      int ok = value.n >= 1 && value.n <= 10;
      if (have_max_age) continue;
      for (i = 0; ok && i < value.n; i++) {
        ok = is_digit((unsigned char)value.p[i]);
        v = v * 10 + (uint64_t)(value.p[i] - '0');
      }
      if (!ok)
        return errf(err, "policy line %zu: max_age '%s' is not 1-10 digits", lineno,
                    qa(&q, value));
      out->max_age = v > MTASTS_MAX_AGE_MAX ? MTASTS_MAX_AGE_MAX : (uint32_t)v;
      have_max_age = 1;
    } else if (span_eq(key, "mx")) {
      mtasts_span pattern;
      if ((rc = check_mx(lineno, value, &pattern, err)) != 0) return rc;
      if ((rc = push_span(&out->mx, pattern)) != 0) return rc;
    } else {
      if (!valid_policy_ext_value(value))
        return errf(err, "policy line %zu: value '%s' of '%s' is not visible characters and "
                    "spaces (UTF-8 allowed)", lineno, qa(&q, value), qb(&q, key));
      if ((rc = push_kv(&out->ext, key, value)) != 0) return rc;
    }
  }
  if (n == 0) return errf(err, "policy is empty");
  if (!have_version) return errf(err, "policy has no 'version: STSv1' line");
  if (!have_mode) return errf(err, "policy has no mode line");
  if (!have_max_age) return errf(err, "policy has no max_age line");
  if (out->mode != MTASTS_MODE_NONE && out->mx.n == 0)
    return errf(err, "policy in mode %s has no mx line", mtasts_mode_name(out->mode));
  return 0;
}

void mtasts_policy_free(mtasts_policy *p) {
  free(p->mx.v);
  free(p->ext.v);
  memset(p, 0, sizeof *p);
}

const char *mtasts_mode_name(int mode) {
  switch (mode) {
  case MTASTS_MODE_ENFORCE: return "enforce";
  case MTASTS_MODE_TESTING: return "testing";
  default: return "none";
  }
}

/* --- MX matching (RFC 8461 §4.1) --- */

static int eq_nocase(const char *a, const char *b, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (lower((unsigned char)a[i]) != lower((unsigned char)b[i])) return 0;
  return 1;
}

int mtasts_match(const char *pattern, size_t pn, const char *host, size_t hn) {
  const char *dot;
  if (pn > 0 && pattern[pn - 1] == '.') pn--;
  if (hn > 0 && host[hn - 1] == '.') hn--;
  if (pn == 0 || hn == 0) return 0;
  if (pn >= 2 && pattern[0] == '*' && pattern[1] == '.') {
    /* exactly one extra leftmost label, which must not be empty */
    dot = memchr(host, '.', hn);
    if (!dot || dot == host) return 0;
    hn -= (size_t)(dot + 1 - host);
    host = dot + 1;
    pattern += 2; pn -= 2;
  }
  return pn == hn && eq_nocase(pattern, host, pn);
}
