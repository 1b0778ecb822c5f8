/* resolver.c: DNS through libunbound, without blocking. Pure C, no Lua.
 *
 * Queries run on libunbound's own thread (ub_ctx_async(ctx, 1)); answers are handed back
 * through a descriptor (mtasts_resolver_fd) that becomes readable, and mtasts_resolver_step
 * processes them: the host waits on that descriptor in its own loop, so no lookup blocks it.
 * The answer callback runs inside ub_process, in the caller's thread; it only moves the
 * query to the done list. Deadlines are kept here, on the monotonic clock: a query past its
 * deadline is cancelled and finishes as a timeout. */
#include "rdata.h"

#include <arpa/nameser.h>   /* ns_c_in */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unbound.h>

#define ROOT_KEY "/usr/share/dns/root.key"   /* Debian's dns-root-data */

struct mtasts_resolver {
  struct ub_ctx *ctx;
  mtasts_dns_query *pending;                /* asked, not answered */
  mtasts_dns_query *done, **done_tail;      /* answered, in order, until popped */
  size_t n_pending;
  int next_id;
};

static void unlink_pending(mtasts_resolver *r, mtasts_dns_query *q) {
  mtasts_dns_query **pp;
  for (pp = &r->pending; *pp; pp = &(*pp)->next)
    if (*pp == q) { *pp = q->next; r->n_pending--; break; }
  q->next = NULL;
}

static void finish(mtasts_resolver *r, mtasts_dns_query *q) {
  unlink_pending(r, q);
  *r->done_tail = q;
  r->done_tail = &q->next;
}

static void free_query(mtasts_dns_query *q) {
  if (q->result) ub_resolve_free(q->result);
  free(q);
}

/* Called by libunbound inside ub_process: classify, keep the answer, move to done. */
static void on_answer(void *arg, int err, struct ub_result *res) {
  mtasts_dns_query *q = arg;
  if (err != 0) {
    q->status = MTASTS_DNS_ERROR;
    snprintf(q->why, sizeof q->why, "%s", ub_strerror(err));
  } else if (res->bogus) {
    q->status = MTASTS_DNS_BOGUS;
    snprintf(q->why, sizeof q->why, "DNSSEC validation failed: %s",
             res->why_bogus ? res->why_bogus : "bogus answer");
  } else if (res->nxdomain || res->rcode == 3) {
    q->status = MTASTS_DNS_NXDOMAIN;
  } else if (res->rcode != 0) {
    q->status = MTASTS_DNS_SERVFAIL;
    snprintf(q->why, sizeof q->why, "the server answered rcode %d%s", res->rcode,
             res->rcode == 2 ? " (SERVFAIL)" : res->rcode == 5 ? " (REFUSED)" : "");
  } else if (!res->havedata) {
    q->status = MTASTS_DNS_NODATA;
  } else {
    q->status = MTASTS_DNS_OK;
  }
  q->result = res;
  finish(q->r, q);
}

static int fail(char *err, const char *what, int rc) {
  snprintf(err, MTASTS_ERR_MAX, "resolver: %s: %s", what, ub_strerror(rc));
  return -1;
}

int mtasts_resolver_new(const mtasts_resolver_opts *o, mtasts_resolver **out, char *err) {
  mtasts_resolver *r = calloc(1, sizeof *r);
  struct stat st;
  size_t i;
  int rc;
  if (!r) {
    snprintf(err, MTASTS_ERR_MAX, "resolver: out of memory");
    return -1;
  }
  r->done_tail = &r->done;
  if (!(r->ctx = ub_ctx_create())) {
    free(r);
    snprintf(err, MTASTS_ERR_MAX, "resolver: cannot create a libunbound context");
    return -1;
  }
  /* answers come back through a descriptor from libunbound's thread, not a forked process */
  if ((rc = ub_ctx_async(r->ctx, 1)) != 0) { fail(err, "async", rc); goto bad; }
  /* a forwarder on loopback (a local cache, or the fixture world) must be usable */
  if ((rc = ub_ctx_set_option(r->ctx, "do-not-query-localhost:", "no")) != 0) {
    fail(err, "do-not-query-localhost", rc);
    goto bad;
  }
  if (o->n_nameservers > 0) {
    for (i = 0; i < o->n_nameservers; i++)
      if ((rc = ub_ctx_set_fwd(r->ctx, o->nameservers[i])) != 0) {
        snprintf(err, MTASTS_ERR_MAX, "resolver: nameserver '%.100s': %s", o->nameservers[i],
                 ub_strerror(rc));
        goto bad;
      }
  } else if ((rc = ub_ctx_resolvconf(r->ctx, NULL)) != 0) {
    fail(err, "/etc/resolv.conf", rc);
    goto bad;
  }
  if (!o->no_trust_anchor) {
    const char *ta = o->trust_anchor;
    if (!ta && stat(ROOT_KEY, &st) == 0) ta = ROOT_KEY;
    if (ta && (rc = ub_ctx_add_ta_file(r->ctx, ta)) != 0) {
      snprintf(err, MTASTS_ERR_MAX, "resolver: trust anchor '%.150s': %s", ta, ub_strerror(rc));
      goto bad;
    }
  }
  *out = r;
  return 0;
bad:
  ub_ctx_delete(r->ctx);
  free(r);
  return -1;
}

void mtasts_resolver_free(mtasts_resolver *r) {
  mtasts_dns_query *q, *next;
  if (!r) return;
  ub_ctx_delete(r->ctx);   /* cancels what is outstanding; no callback runs after this */
  for (q = r->pending; q; q = next) { next = q->next; free_query(q); }
  for (q = r->done; q; q = next) { next = q->next; free_query(q); }
  free(r);
}

int mtasts_resolver_query(mtasts_resolver *r, const char *name, int rrtype, double timeout,
                          int *id, char *err) {
  mtasts_dns_query *q = calloc(1, sizeof *q);
  int rc;
  if (!q) {
    snprintf(err, MTASTS_ERR_MAX, "resolver: out of memory");
    return -1;
  }
  q->r = r;
  q->id = ++r->next_id;
  q->rrtype = rrtype;
  q->deadline = mtasts_monotonic() + timeout;
  q->next = r->pending;
  r->pending = q;
  r->n_pending++;
  rc = ub_resolve_async(r->ctx, name, rrtype, ns_c_in, q, on_answer, &q->async_id);
  if (rc != 0) {
    unlink_pending(r, q);
    free(q);
    return fail(err, "query", rc);
  }
  *id = q->id;
  return 0;
}

int mtasts_resolver_fd(mtasts_resolver *r) { return ub_fd(r->ctx); }

double mtasts_resolver_timeout(mtasts_resolver *r) {
  mtasts_dns_query *q;
  double now, first = -1;
  if (r->done) return 0;
  now = mtasts_monotonic();
  for (q = r->pending; q; q = q->next)
    if (first < 0 || q->deadline < first) first = q->deadline;
  if (first < 0) return -1;
  return first > now ? first - now : 0;
}

int mtasts_resolver_step(mtasts_resolver *r, char *err) {
  mtasts_dns_query *q, *next;
  double now;
  int rc;
  if (ub_poll(r->ctx) && (rc = ub_process(r->ctx)) != 0) return fail(err, "process", rc);
  now = mtasts_monotonic();
  for (q = r->pending; q; q = next) {
    next = q->next;
    if (q->deadline <= now && ub_cancel(r->ctx, q->async_id) == 0) {
      q->status = MTASTS_DNS_TIMEOUT;
      snprintf(q->why, sizeof q->why, "no answer in time");
      finish(r, q);
    }
  }
  return 0;
}

mtasts_dns_query *mtasts_resolver_done(mtasts_resolver *r) { return r->done; }

void mtasts_resolver_pop(mtasts_resolver *r) {
  mtasts_dns_query *q = r->done;
  if (!q) return;
  r->done = q->next;
  if (!r->done) r->done_tail = &r->done;
  free_query(q);
}

void mtasts_resolver_cancel(mtasts_resolver *r, int id) {
  mtasts_dns_query *q;
  for (q = r->pending; q; q = q->next)
    if (q->id == id) {
      if (ub_cancel(r->ctx, q->async_id) == 0) {
        unlink_pending(r, q);
        free_query(q);
      }
      return;
    }
}

size_t mtasts_resolver_pending(mtasts_resolver *r) { return r->n_pending; }
