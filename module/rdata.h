/* rdata.h: DNS rdata decoding (rdata.c) and the resolver (resolver.c). No Lua. */
#ifndef MTASTS_RDATA_H
#define MTASTS_RDATA_H

#include "buf.h"
#include "mtasts.h"

/* TXT: the strings of one record, concatenated into out. 0 or -1 with err. */
int mtasts_rdata_txt(const unsigned char *p, size_t n, mtasts_buf *out, char *err);
/* A wire-format name (no compression) at p: name gets it lower-cased with dots and no
 * trailing dot ("" for the root); *used the bytes it took. 0 or -1 with err. */
int mtasts_rdata_name(const unsigned char *p, size_t n, size_t *used, char *name, char *err);
/* MX: preference and exchange. host holds MTASTS_NAME_MAX + 1 bytes. */
int mtasts_rdata_mx(const unsigned char *p, size_t n, unsigned *pref, char *host, char *err);
/* TLSA: usage, selector, matching type and the association data (a span into p). */
int mtasts_rdata_tlsa(const unsigned char *p, size_t n, unsigned *usage, unsigned *selector,
                      unsigned *mtype, mtasts_span *data, char *err);

/* --- resolver (libunbound) --- */

enum {
  MTASTS_DNS_PENDING = 0, MTASTS_DNS_OK, MTASTS_DNS_NXDOMAIN, MTASTS_DNS_NODATA,
  MTASTS_DNS_SERVFAIL, MTASTS_DNS_TIMEOUT, MTASTS_DNS_BOGUS, MTASTS_DNS_ERROR,
  MTASTS_DNS_LOCAL              /* this host failed (libunbound out of memory, its thread) */
};

struct ub_result;
typedef struct mtasts_dns_query {
  struct mtasts_dns_query *next;
  struct mtasts_resolver *r;
  int id, async_id, rrtype, status;
  double deadline;              /* monotonic seconds */
  int probing;                  /* libunbound said SERVFAIL: a probe asks whether any
                                   nameserver answers at all (resolver.c) */
  unsigned short probe_id;      /* the DNS message id of that probe */
  struct ub_result *result;     /* owned; NULL for timeouts and errors */
  char why[MTASTS_ERR_MAX];     /* error text for SERVFAIL, BOGUS, ERROR, LOCAL */
} mtasts_dns_query;

typedef struct mtasts_resolver mtasts_resolver;

typedef struct {
  const char **nameservers;     /* "IP@PORT" or "IP"; NULL/empty: /etc/resolv.conf */
  size_t n_nameservers;
  const char *trust_anchor;     /* a file; NULL: Debian's dns-root-data when present */
  int no_trust_anchor;          /* 1: no DNSSEC validation at all */
  const char **stub_zones;      /* stub zones: names under stub_zones[i] are asked of */
  const char **stub_addrs;      /* stub_addrs[i] ("IP@PORT" or "IP"), not the nameservers */
  size_t n_stubs;               /* pairs; a zone with several servers comes once for each */
} mtasts_resolver_opts;

/* Make a resolver, its settings checked and loaded now (libunbound reads the trust anchor on
 * its first query otherwise, and a bad one would fail every lookup as SERVFAIL): 0, or
 * MTASTS_ECONFIG (a nameserver that is no IP[@PORT], a trust anchor or /etc/resolv.conf that
 * cannot be read or loaded, a stub zone that is no DNS name or whose server is no
 * IP[@PORT]; err starts with the option's name: "nameserver: ...") or
 * MTASTS_ELOCAL (out of memory, no libunbound context), with err. */
int mtasts_resolver_new(const mtasts_resolver_opts *o, mtasts_resolver **out, char *err);
/* Check the settings as mtasts_resolver_new does, keeping nothing: 0 or MTASTS_ECONFIG,
 * MTASTS_ELOCAL with err. A context is made only to load a trust anchor file. */
int mtasts_resolver_check(const mtasts_resolver_opts *o, char *err);
void mtasts_resolver_free(mtasts_resolver *r);
/* Start a query; *id names it. timeout in seconds from now. 0; -1 when the name is not a
 * DNS name (empty, a label over 63 bytes, over 253 bytes); MTASTS_ELOCAL when libunbound
 * failed (memory, its thread, its pipe); err says which. */
int mtasts_resolver_query(mtasts_resolver *r, const char *name, int rrtype, double timeout,
                          int *id, char *err);
/* The descriptor that becomes readable when answers wait to be processed. */
int mtasts_resolver_fd(mtasts_resolver *r);
/* Seconds until the next query deadline (0 when one passed), or -1 with none pending. */
double mtasts_resolver_timeout(mtasts_resolver *r);
/* Process answers that arrived and expire queries past their deadline. Never blocks. 0, or
 * MTASTS_ELOCAL when libunbound's pipe failed. */
int mtasts_resolver_step(mtasts_resolver *r, char *err);
/* The first finished query (still owned by r), or NULL; mtasts_resolver_pop frees it. */
mtasts_dns_query *mtasts_resolver_done(mtasts_resolver *r);
void mtasts_resolver_pop(mtasts_resolver *r);
void mtasts_resolver_cancel(mtasts_resolver *r, int id);
size_t mtasts_resolver_pending(mtasts_resolver *r);

#endif
