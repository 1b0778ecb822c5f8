/* domain.c: domain names to lower-case A-labels and back (UTS #46 through libidn2).
 * Pure C, no Lua. ASCII labels are checked as LDH host names here (so real names with
 * "--" in the third and fourth position still work); xn-- labels and non-ASCII labels go
 * through libidn2 with UTS #46 non-transitional mapping and an A-label round trip.
 *
 * Validity is that of UTS #46 (what browsers and Go's IDNA lookup profile accept; DNS resolves
 * any LDH name), not IDNA2008's stricter table: symbols such as U+263A and U+2764 are valid in
 * UTS #46 (status NV8) and disallowed in IDNA2008. libidn2 has no switch for that, so a label
 * is converted in two steps (to_alabel): libidn2's lookup with IDN2_NONTRANSITIONAL (UTS #46
 * mapping and checks, then IDNA2008's checks), and when that refuses a code point of the
 * label, its lookup with IDN2_TRANSITIONAL, the one mode in which libidn2 leaves IDNA2008's
 * checks out. The transitional mapping differs from the non-transitional one only on the four
 * deviation characters (U+00DF, U+03C2, U+200C, U+200D), so that second step is taken only
 * for labels without them. Of UTS #46's checks, the second step leaves out the bidi rule
 * (CheckJoiners concerns only U+200C and U+200D): it is applied here, conservatively, to the
 * whole name (a name with a label from the second step may have no right-to-left code
 * point). Every name ends with the LDH check of its A-labels. docs/conformance.md §8.2. */
#include "mtasts.h"

#include <idn2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IDN_FLAGS (IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL | IDN2_ALABEL_ROUNDTRIP)
#define UTS46_FLAGS (IDN2_NFC_INPUT | IDN2_TRANSITIONAL | IDN2_ALABEL_ROUNDTRIP)

static int errf(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int errf(char *err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, MTASTS_ERR_MAX, fmt, ap);
  va_end(ap);
  return -1;
}

static int is_xn(const char *p, size_t n) {
  return n >= 4 && (p[0] | 0x20) == 'x' && (p[1] | 0x20) == 'n' && p[2] == '-' && p[3] == '-';
}

/* The next code point of UTF-8, or -1 at the end. Bounded on any bytes; only meant for valid
 * UTF-8 (a label that is not is refused by libidn2 whatever this returns). */
static long next_cp(const unsigned char **p, const unsigned char *end) {
  const unsigned char *s = *p;
  long cp;
  size_t len, i;
  if (s >= end) return -1;
  if (s[0] < 0x80) { *p = s + 1; return s[0]; }
  if (s[0] >= 0xf0) { len = 4; cp = s[0] & 0x07; }
  else if (s[0] >= 0xe0) { len = 3; cp = s[0] & 0x0f; }
  else { len = 2; cp = s[0] & 0x1f; }
  if ((size_t)(end - s) < len) { *p = end; return -1; }
  for (i = 1; i < len; i++) cp = (cp << 6) | (s[i] & 0x3f);
  *p = s + len;
  return cp;
}

/* The UTS #46 deviation characters: sharp s, final sigma, ZWNJ, ZWJ. */
static int has_deviation(const char *u) {
  const unsigned char *p = (const unsigned char *)u, *end = p + strlen(u);
  long cp;
  while ((cp = next_cp(&p, end)) >= 0)
    if (cp == 0xdf || cp == 0x3c2 || cp == 0x200c || cp == 0x200d) return 1;
  return 0;
}

/* Code points of the blocks of right-to-left scripts: every code point of Bidi_Class R, AL or
 * AN is in them (Hebrew to Arabic Extended, the Hebrew and Arabic presentation forms, and the
 * right-to-left areas of planes 1), and a few others are too, which only makes the bidi check
 * below stricter. */
static int has_rtl(const char *u) {
  const unsigned char *p = (const unsigned char *)u, *end = p + strlen(u);
  long cp;
  while ((cp = next_cp(&p, end)) >= 0)
    if ((cp >= 0x590 && cp <= 0x8ff) || (cp >= 0xfb1d && cp <= 0xfdff) ||
        (cp >= 0xfe70 && cp <= 0xfeff) || (cp >= 0x10800 && cp <= 0x10fff) ||
        (cp >= 0x1e800 && cp <= 0x1efff))
      return 1;
  return 0;
}

/* One label (UTF-8, NUL-terminated, no separator) to its lower-case A-label, or to ASCII when
 * it maps to ASCII: *out is allocated by libidn2 (idn2_free), and may hold a '.' when a
 * compatibility character maps to one. *uts46 is set when only the UTS #46 path accepted it.
 * Returns IDN2_OK or a libidn2 code. */
static int to_alabel(const char *label, uint8_t **out, int *uts46) {
  int rc, rc2;
  *uts46 = 0;
  *out = NULL;
  rc = idn2_lookup_u8((const uint8_t *)label, out, IDN_FLAGS);
  /* only IDNA2008's own verdicts on code points get a second opinion: its table of valid
   * (and assigned) code points, and the CONTEXTO rules, which UTS #46 does not have */
  if ((rc != IDN2_DISALLOWED && rc != IDN2_UNASSIGNED && rc != IDN2_CONTEXTO &&
       rc != IDN2_CONTEXTO_NO_RULE) || has_deviation(label))
    return rc;
  idn2_free(*out);
  *out = NULL;
  rc2 = idn2_lookup_u8((const uint8_t *)label, out, UTS46_FLAGS);
  if (rc2 != IDN2_OK) {   /* UTS #46's reason: the rule that decides */
    idn2_free(*out);
    *out = NULL;
    return rc2;
  }
  *uts46 = 1;
  return IDN2_OK;
}

/* Validate a lower-case ASCII name of n <= MTASTS_NAME_MAX octets, label by label. */
static int check_ldh(const char *name, size_t n, int check_xn, char *err) {
  size_t start = 0, i;
  int uts46_any = 0, rtl_any = 0;
  char q[4 * 40 + 8], qn[4 * 40 + 8];   /* the name and a label quoted: only for a message */
#define QUOTE_NAME() mtasts_quote(qn, sizeof qn, name, n, 40)
#define QUOTE_BOTH() (QUOTE_NAME(), mtasts_quote(q, sizeof q, l, len, 20))
  if (n > MTASTS_NAME_MAX)
    return errf(err, "domain name is %zu octets, more than %d", n, MTASTS_NAME_MAX);
  while (start <= n) {
    const char *dot = memchr(name + start, '.', n - start);
    size_t end = dot ? (size_t)(dot - name) : n, len = end - start;
    const char *l = name + start;
    int digits = 1;
    if (len == 0) return QUOTE_NAME(), errf(err, "domain name '%s' has an empty label", qn);
    if (len > MTASTS_LABEL_MAX)
      return QUOTE_BOTH(), errf(err, "domain name '%s': label '%s' is %zu octets, more than %d",
                                qn, q, len, MTASTS_LABEL_MAX);
    for (i = 0; i < len; i++) {
      unsigned char c = (unsigned char)l[i];
      if (c >= '0' && c <= '9') continue;
      digits = 0;
      if ((c >= 'a' && c <= 'z') || c == '-') continue;
      return QUOTE_BOTH(), errf(err, "domain name '%s': label '%s' has a character other "
                                "than letters, digits and '-'", qn, q);
    }
    if (l[0] == '-' || l[len - 1] == '-')
      return QUOTE_BOTH(),
             errf(err, "domain name '%s': label '%s' starts or ends with '-'", qn, q);
    if (!dot && digits)
      return QUOTE_NAME(),
             errf(err, "'%s' ends in a numeric label: an IP address is not a domain name", qn);
    if (check_xn && is_xn(l, len)) {
      /* an A-label is valid when its U-label converts back to exactly it: libidn2's own
       * check accepts some that decode to disallowed code points ("xn--6a" is U+00A0), and
       * the round trip also refuses U-labels that are not in their mapped form */
      char label[MTASTS_LABEL_MAX + 1], *u = NULL;
      uint8_t *out = NULL;
      int rc, uts46 = 0;
      memcpy(label, l, len);
      label[len] = '\0';
      rc = idn2_to_unicode_8z8z(label, &u, 0);
      if (rc == IDN2_OK) rc = to_alabel(u, &out, &uts46);
      if (rc == IDN2_OK && strcmp((const char *)out, label) != 0)
        rc = IDN2_ALABEL_ROUNDTRIP_FAILED;
      if (rc == IDN2_OK && has_rtl(u)) rtl_any = 1;
      idn2_free(u);
      idn2_free(out);
      if (rc != IDN2_OK)
        return QUOTE_BOTH(), errf(err, "domain name '%s': label '%s' is not a valid A-label: "
                                  "%s", qn, q, idn2_strerror(rc));
      uts46_any |= uts46;
    }
    if (!dot) break;
    start = end + 1;
  }
  /* the bidi rule applies to every label of a name with a right-to-left label; libidn2
   * checks it only on IDNA2008's path, so a name that needed the UTS #46 path may have none */
  if (uts46_any && rtl_any)
    return QUOTE_NAME(), errf(err, "'%s' is not a valid internationalized domain name: "
                              "right-to-left labels with code points IDNA2008 disallows are "
                              "not supported", qn);
  return 0;
#undef QUOTE_NAME
#undef QUOTE_BOTH
}

/* Length of a label separator at p: '.' or one of the full stops UTS #46 maps to it
 * (U+3002, U+FF0E, U+FF61), else 0. */
static size_t separator(const char *p, size_t n) {
  const unsigned char *u = (const unsigned char *)p;
  if (u[0] == '.') return 1;
  if (n >= 3 && ((u[0] == 0xe3 && u[1] == 0x80 && u[2] == 0x82) ||
                 (u[0] == 0xef && u[1] == 0xbc && u[2] == 0x8e) ||
                 (u[0] == 0xef && u[1] == 0xbd && u[2] == 0xa1)))
    return 3;
  return 0;
}

/* Non-ASCII names are converted label by label, so that an ASCII label is judged by the
 * same LDH rules whether or not its neighbours are U-labels (and the U-label form of any
 * accepted name converts back to the same A-labels). */
static int ascii_from_unicode(const char *s, size_t n, char *ascii, const char *q, char *err) {
  size_t pos = 0, out = 0;
  for (;;) {
    size_t end = pos, sep = 0, len, i;
    int nonascii = 0;
    while (end < n && (sep = separator(s + end, n - end)) == 0) {
      if ((unsigned char)s[end] >= 0x80) nonascii = 1;
      end++;
    }
    len = end - pos;
    if (len == 0 && !(end == n && out > 0))  /* an empty label, but for a trailing dot */
      return errf(err, "domain name '%s' has an empty label", q);
    if (len == 0) break;
    if (out > 0) ascii[out++] = '.';
    if (!nonascii) {
      if (out + len > MTASTS_NAME_MAX) goto too_long;
      for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[pos + i];
        ascii[out + i] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
      }
      out += len;
    } else {
      char label[MTASTS_UNAME_MAX];
      uint8_t *a = NULL;
      size_t alen;
      int rc, uts46;
      memcpy(label, s + pos, len);
      label[len] = '\0';
      rc = to_alabel(label, &a, &uts46);
      if (rc != IDN2_OK) {
        char ql[4 * 20 + 8];
        mtasts_quote(ql, sizeof ql, s + pos, len, 20);
        if (rc == IDN2_TOO_BIG_DOMAIN || rc == IDN2_TOO_BIG_LABEL ||
            rc == IDN2_PUNYCODE_BIG_OUTPUT)
          return errf(err, "domain name '%s': label '%s' is more than %d octets as an A-label",
                      q, ql, MTASTS_LABEL_MAX);
        return errf(err, "'%s' is not a valid internationalized domain name: label '%s': %s", q,
                    ql, idn2_strerror(rc));
      }
      alen = strlen((const char *)a);
      if (memchr(a, '.', alen)) {  /* a compatibility character that maps to a dot */
        idn2_free(a);
        return errf(err, "'%s' is not a valid internationalized domain name: a character maps "
                    "to '.'", q);
      }
      if (out + alen > MTASTS_NAME_MAX) { idn2_free(a); goto too_long; }
      memcpy(ascii + out, a, alen);
      out += alen;
      idn2_free(a);
    }
    if (end == n) break;
    pos = end + sep;
  }
  ascii[out] = '\0';
  return check_ldh(ascii, out, 1, err);
too_long:
  return errf(err, "domain name '%s' is more than %d octets as A-labels", q, MTASTS_NAME_MAX);
}

int mtasts_domain_ascii(const char *s, size_t n, char *ascii, char *err) {
  char q[4 * 40 + 8];       /* the name quoted for a message: made only for one */
  size_t i;
  if (n == 0) return errf(err, "domain name is empty");
  if (memchr(s, '\0', n)) {
    mtasts_quote(q, sizeof q, s, n, 40);
    return errf(err, "domain name '%s' contains a NUL byte", q);
  }
  if (n >= MTASTS_UNAME_MAX) return errf(err, "domain name is %zu bytes, too long", n);
  if (s[0] == '[' || memchr(s, ':', n)) {
    mtasts_quote(q, sizeof q, s, n, 40);
    return errf(err, "'%s' is an address literal, not a domain name", q);
  }
  for (i = 0; i < n; i++)
    if ((unsigned char)s[i] >= 0x80) {
      mtasts_quote(q, sizeof q, s, n, 40);
      return ascii_from_unicode(s, n, ascii, q, err);
    }
  if (s[n - 1] == '.') n--;  /* one trailing dot is accepted and dropped */
  if (n == 0) return errf(err, "domain name is empty");
  if (n > MTASTS_NAME_MAX)
    return errf(err, "domain name is %zu octets, more than %d", n, MTASTS_NAME_MAX);
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    ascii[i] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
  }
  ascii[n] = '\0';
  return check_ldh(ascii, n, 1, err);
}

int mtasts_domain_unicode(const char *ascii, char *uni, char *err) {
  size_t n = strlen(ascii), start = 0;
  int any_xn = 0;
  char *out = NULL;
  int rc;
  while (start < n) {
    const char *dot = memchr(ascii + start, '.', n - start);
    size_t end = dot ? (size_t)(dot - ascii) : n;
    if (is_xn(ascii + start, end - start)) any_xn = 1;
    start = end + 1;
  }
  if (!any_xn) {
    if (n >= MTASTS_UNAME_MAX) return errf(err, "domain name is too long");
    memcpy(uni, ascii, n + 1);
    return 0;
  }
  rc = idn2_to_unicode_8z8z(ascii, &out, 0);
  if (rc != IDN2_OK || strlen(out) >= MTASTS_UNAME_MAX) {
    idn2_free(out);
    return errf(err, "cannot convert '%s' to U-labels: %s", ascii,
                rc != IDN2_OK ? idn2_strerror(rc) : "too long");
  }
  memcpy(uni, out, strlen(out) + 1);
  idn2_free(out);
  return 0;
}
