/* resolver.c: DNS through libunbound, without blocking. Pure C, no Lua.
 *
 * Queries run on libunbound's own thread (ub_ctx_async(ctx, 1)); answers are handed back
 * through a descriptor (mtasts_resolver_fd) that becomes readable, and mtasts_resolver_step
 * processes them: the host waits on that descriptor in its own loop, so no lookup blocks it.
 * The answer callback runs inside ub_process, in the caller's thread; it only moves the
 * query to the done list (or marks it for the probe, below, which the step sends). Deadlines are kept here, on the
 * monotonic clock: a query past its deadline is cancelled and finishes as a timeout.
 *
 * The probe. libunbound answers a bare SERVFAIL both when a nameserver answered SERVFAIL and
 * when none answered at all: it gives up on a silent forwarder after its own retries (12-17 s
 * for the first lookups, at once for later ones while it remembers the server as down), with
 * no reason and no extended error in the answer. So a SERVFAIL is not taken as it is: the
 * same question is sent once, directly, to every configured nameserver, from a socket of our
 * own, and the query finishes when one of them answers (anything: servfail, as libunbound
 * said) or at its deadline (timeout: no nameserver answered within it). The descriptor the
 * host waits on is an epoll descriptor holding libunbound's and the probe sockets. A name
 * under a stub zone (libunbound asks that zone's own servers, not the nameservers) is probed
 * at the servers of the closest such zone. */
#include "rdata.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>   /* ns_c_in, ns_t_a */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>   /* strncasecmp */
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unbound.h>
#include <unistd.h>

#define ROOT_KEY "/usr/share/dns/root.key"   /* Debian's dns-root-data */
#define MAX_PROBED 16                        /* nameservers a probe is sent to */

struct mtasts_resolver {
  struct ub_ctx *ctx;
  mtasts_dns_query *pending;                /* asked, not answered (or being probed) */
  mtasts_dns_query *done, **done_tail;      /* answered, in order, until popped */
  size_t n_pending;
  int next_id;
  int epfd;                                 /* libunbound's descriptor and the probe sockets */
  int sock[2];                              /* probe sockets, IPv4 and IPv6; -1 until used */
  struct sockaddr_storage fwd[MAX_PROBED];  /* the nameservers libunbound asks */
  socklen_t fwd_len[MAX_PROBED];
  char fwd_zone[MAX_PROBED][MTASTS_NAME_MAX + 1];   /* "" (a nameserver) or the stub zone
                                                       it serves: lower case, no final dot */
  size_t n_fwd;
  unsigned short probe_seq;
};

static int is_dns_name(const char *name);

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

/* --- the probe (see the top of this file) --- */

/* A nameserver setting ("IP", "IP@PORT", checked before) into r's list of probed servers;
 * zone: NULL for a nameserver, else the stub zone it serves. */
static void add_forwarder(mtasts_resolver *r, const char *spec, const char *zone) {
  char ip[INET6_ADDRSTRLEN + 1];
  const char *at = strchr(spec, '@');
  size_t n = at ? (size_t)(at - spec) : strlen(spec), zn = zone ? strlen(zone) : 0, i;
  unsigned long port = at ? strtoul(at + 1, NULL, 10) : 53;
  struct sockaddr_storage *ss = &r->fwd[r->n_fwd];
  if (r->n_fwd >= MAX_PROBED || n == 0 || n >= sizeof ip || port < 1 || port > 65535) return;
  if (zn > 0 && zone[zn - 1] == '.') zn--;
  if (zn > MTASTS_NAME_MAX) return;
  for (i = 0; i < zn; i++)
    r->fwd_zone[r->n_fwd][i] = (char)(zone[i] >= 'A' && zone[i] <= 'Z' ? zone[i] | 0x20 : zone[i]);
  r->fwd_zone[r->n_fwd][zn] = '\0';
  memcpy(ip, spec, n);
  ip[n] = '\0';
  memset(ss, 0, sizeof *ss);
  if (inet_pton(AF_INET, ip, &((struct sockaddr_in *)ss)->sin_addr) == 1) {
    ((struct sockaddr_in *)ss)->sin_family = AF_INET;
    ((struct sockaddr_in *)ss)->sin_port = htons((unsigned short)port);
    r->fwd_len[r->n_fwd++] = sizeof(struct sockaddr_in);
  } else if (inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1) {
    ((struct sockaddr_in6 *)ss)->sin6_family = AF_INET6;
    ((struct sockaddr_in6 *)ss)->sin6_port = htons((unsigned short)port);
    r->fwd_len[r->n_fwd++] = sizeof(struct sockaddr_in6);
  }   /* anything else (an address with a scope) is not probed */
}

/* The nameservers of /etc/resolv.conf, as libunbound reads them (ub_ctx_resolvconf). */
static void add_resolvconf(mtasts_resolver *r) {
  char line[512], ip[INET6_ADDRSTRLEN + 1];
  FILE *f = fopen("/etc/resolv.conf", "re");
  if (!f) return;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, " nameserver %46s", ip) == 1) add_forwarder(r, ip, NULL);
  fclose(f);
}

/* The probe socket of a family, made (and added to the epoll set) on first use; or -1. */
static int probe_socket(mtasts_resolver *r, int family) {
  int i = family == AF_INET ? 0 : 1, s;
  struct epoll_event ev;
  if (r->sock[i] >= 0) return r->sock[i];
  if ((s = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) return -1;
  memset(&ev, 0, sizeof ev);
  ev.events = EPOLLIN;
  ev.data.fd = s;
  if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, s, &ev) != 0) { close(s); return -1; }
  return r->sock[i] = s;
}

/* The servers that answer for name: those of the closest stub zone it lies in, or the
 * nameservers ("") when it lies in none. */
static const char *probe_zone(const mtasts_resolver *r, const char *name) {
  size_t n = strlen(name), i, best_n = 0;
  const char *best = "";
  if (n > 0 && name[n - 1] == '.') n--;
  for (i = 0; i < r->n_fwd; i++) {
    const char *z = r->fwd_zone[i];
    size_t zn = strlen(z);
    if (zn == 0 || zn <= best_n || zn > n || strncasecmp(name + n - zn, z, zn) != 0) continue;
    if (zn < n && name[n - zn - 1] != '.') continue;
    best = z;
    best_n = zn;
  }
  return best;
}

/* Send the question of q (name, its type, class IN, recursion desired) to every server that
 * answers for the name: 1 when it went to at least one, 0 when it could not be sent (no
 * probe, then). */
static int start_probe(mtasts_resolver *r, mtasts_dns_query *q, const char *name) {
  unsigned char msg[12 + 256 + 4];
  size_t n = 12, i, sent = 0;
  const char *p = name, *zone = probe_zone(r, name);
  memset(msg, 0, 12);
  if (++r->probe_seq == 0) r->probe_seq = 1;   /* 0: not sent yet */
  q->probe_id = r->probe_seq;
  msg[0] = (unsigned char)(q->probe_id >> 8);
  msg[1] = (unsigned char)q->probe_id;
  msg[2] = 0x01;                                /* RD */
  msg[5] = 1;                                   /* one question */
  while (*p) {                                  /* the name, checked by is_dns_name */
    size_t len = strcspn(p, ".");
    if (len == 0 || len > 63 || n + len + 1 > 12 + 255) return 0;
    msg[n++] = (unsigned char)len;
    memcpy(msg + n, p, len);
    n += len;
    p += len;
    if (*p == '.') p++;
  }
  msg[n++] = 0;
  msg[n++] = (unsigned char)(q->rrtype >> 8);
  msg[n++] = (unsigned char)q->rrtype;
  msg[n++] = 0;
  msg[n++] = 1;                                 /* class IN */
  for (i = 0; i < r->n_fwd; i++) {
    int s;
    if (strcmp(r->fwd_zone[i], zone) != 0) continue;
    s = probe_socket(r, r->fwd[i].ss_family);
    if (s >= 0 && sendto(s, msg, n, 0, (struct sockaddr *)&r->fwd[i], r->fwd_len[i]) ==
        (ssize_t)n)
      sent++;
  }
  return sent > 0;
}

/* Is this address one of the nameservers? */
static int is_forwarder(mtasts_resolver *r, const struct sockaddr_storage *from) {
  size_t i;
  for (i = 0; i < r->n_fwd; i++) {
    const struct sockaddr_storage *f = &r->fwd[i];
    if (f->ss_family != from->ss_family) continue;
    if (f->ss_family == AF_INET) {
      const struct sockaddr_in *a = (const void *)f, *b = (const void *)from;
      if (a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr) return 1;
    } else {
      const struct sockaddr_in6 *a = (const void *)f, *b = (const void *)from;
      if (a->sin6_port == b->sin6_port &&
          memcmp(&a->sin6_addr, &b->sin6_addr, sizeof a->sin6_addr) == 0)
        return 1;
    }
  }
  return 0;
}

/* Read what the nameservers answered to probes: a probed query with an answer finishes as
 * the SERVFAIL libunbound gave (a nameserver did answer). */
static void drain_probes(mtasts_resolver *r) {
  unsigned char msg[512];
  int i;
  for (i = 0; i < 2; i++) {
    ssize_t n;
    struct sockaddr_storage from;
    socklen_t fromlen = sizeof from;
    if (r->sock[i] < 0) continue;
    while ((n = recvfrom(r->sock[i], msg, sizeof msg, MSG_TRUNC, (struct sockaddr *)&from,
                         &fromlen)) >= 0) {
      unsigned short id;
      mtasts_dns_query *q;
      if (n >= 12 && (msg[2] & 0x80) && is_forwarder(r, &from)) {
        id = (unsigned short)(msg[0] << 8 | msg[1]);
        for (q = r->pending; q; q = q->next)
          if (q->probing && q->probe_id == id) {
            q->probing = 0;
            finish(r, q);
            break;
          }
      }
      fromlen = sizeof from;
    }
  }
}

/* libunbound failures of this host, not of the name asked: memory, its thread, its pipe. */
static int is_local(int ub_err) {
  return ub_err == UB_NOMEM || ub_err == UB_PIPE || ub_err == UB_FORKFAIL ||
         ub_err == UB_INITFAIL || ub_err == UB_SOCKET || ub_err == UB_READFILE ||
         ub_err == UB_AFTERFINAL;
}

/* Called by libunbound inside ub_process: classify, keep the answer, move to done. */
static void on_answer(void *arg, int err, struct ub_result *res) {
  mtasts_dns_query *q = arg;
  if (err != 0) {
    q->status = is_local(err) ? MTASTS_DNS_LOCAL : MTASTS_DNS_ERROR;
    snprintf(q->why, sizeof q->why, "libunbound: %s", ub_strerror(err));
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
    if (res->rcode == 2 && q->deadline <= mtasts_monotonic()) {
      /* libunbound gave up no sooner than our deadline: no nameserver answered in time */
      q->status = MTASTS_DNS_TIMEOUT;
      snprintf(q->why, sizeof q->why, "no answer in time");
    } else if (res->rcode == 2 && q->r->n_fwd > 0) {
      q->probing = 1;      /* pending: the probe is sent by mtasts_resolver_step, after this */
      q->result = res;
      return;
    }
  } else if (!res->havedata) {
    q->status = MTASTS_DNS_NODATA;
  } else {
    q->status = MTASTS_DNS_OK;
  }
  q->result = res;
  finish(q->r, q);
}

/* A libunbound failure while setting up: this host's (MTASTS_ELOCAL). */
static int fail_local(char *err, const char *what, int rc) {
  snprintf(err, MTASTS_ERR_MAX, "resolver: %s: %s", what, ub_strerror(rc));
  return MTASTS_ELOCAL;
}

/* A nameserver setting, "IP" or "IP@PORT": 0, or MTASTS_ECONFIG with err, which starts with
 * `what` (the option). libunbound takes "127.0.0.1@99999" and asks port 34463; it is checked
 * here instead. */
static int check_nameserver(const char *what, const char *ns, char *err) {
  char ip[INET6_ADDRSTRLEN + 1];
  unsigned char addr[sizeof(struct in6_addr)];
  const char *at = strchr(ns, '@');
  size_t n = at ? (size_t)(at - ns) : strlen(ns);
  if (n == 0 || n >= sizeof ip) goto not_ip;
  memcpy(ip, ns, n);
  ip[n] = '\0';
  if (inet_pton(AF_INET, ip, addr) != 1 && inet_pton(AF_INET6, ip, addr) != 1) goto not_ip;
  if (at) {
    const char *p = at + 1;
    unsigned long port = 0;
    size_t digits = strspn(p, "0123456789");
    if (digits == 0 || p[digits] != '\0' || digits > 5) {
      snprintf(err, MTASTS_ERR_MAX, "%s: '%.100s': the port is not a number", what, ns);
      return MTASTS_ECONFIG;
    }
    port = strtoul(p, NULL, 10);
    if (port < 1 || port > 65535) {
      snprintf(err, MTASTS_ERR_MAX, "%s: '%.100s': port %lu is out of range (1-65535)", what,
               ns, port);
      return MTASTS_ECONFIG;
    }
  }
  return 0;
not_ip:
  snprintf(err, MTASTS_ERR_MAX, "%s: '%.100s' is not an IP address (IP or IP@PORT)", what, ns);
  return MTASTS_ECONFIG;
}

/* The trust anchor file libunbound will read, or NULL for none: the setting, or Debian's
 * dns-root-data when installed. */
static const char *trust_anchor_of(const mtasts_resolver_opts *o) {
  struct stat st;
  if (o->no_trust_anchor) return NULL;
  if (o->trust_anchor) return o->trust_anchor;
  return stat(ROOT_KEY, &st) == 0 ? ROOT_KEY : NULL;
}

/* A file this process must read: 0, or MTASTS_ECONFIG with "<what>: ..." in err. */
static int check_readable(const char *what, const char *path, const char *note, char *err) {
  struct stat st;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(err, MTASTS_ERR_MAX, "%s: cannot read '%.200s'%s: %s", what, path, note,
             strerror(errno));
    return MTASTS_ECONFIG;
  }
  if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    close(fd);
    snprintf(err, MTASTS_ERR_MAX, "%s: '%.200s'%s is a directory, not a file", what, path,
             note);
    return MTASTS_ECONFIG;
  }
  close(fd);
  return 0;
}

/* Everything that needs no context: the nameservers' syntax, the files' readability. */
static int check_plain(const mtasts_resolver_opts *o, char *err) {
  const char *ta = trust_anchor_of(o);
  size_t i;
  int rc;
  for (i = 0; i < o->n_nameservers; i++)
    if ((rc = check_nameserver("nameserver", o->nameservers[i], err)) != 0) return rc;
  for (i = 0; i < o->n_stubs; i++) {
    if (!is_dns_name(o->stub_zones[i])) {
      snprintf(err, MTASTS_ERR_MAX, "stub: '%.100s' is not a zone name", o->stub_zones[i]);
      return MTASTS_ECONFIG;
    }
    if ((rc = check_nameserver("stub", o->stub_addrs[i], err)) != 0) return rc;
  }
  if (o->n_nameservers == 0 &&
      (rc = check_readable("nameserver", "/etc/resolv.conf", " (none is given)", err)) != 0)
    return rc;
  if (ta && (rc = check_readable("trust_anchor", ta, ta == o->trust_anchor ? "" :
                                 " (the default)", err)) != 0)
    return rc;
  return 0;
}

/* Set up a new context from the settings and load them: libunbound reads the trust anchor
 * and starts its modules only on the first query, so one is asked here, for localhost.,
 * which libunbound answers from its own local zone without any traffic. Its log is switched
 * off: it writes lines of its own to stderr, where our failures already say what went
 * wrong (the switch is process-wide in libunbound; nothing else here logs through it). */
static int setup(const mtasts_resolver_opts *o, struct ub_ctx **out, char *err) {
  struct ub_ctx *ctx;
  struct ub_result *res = NULL;
  const char *ta = trust_anchor_of(o);
  size_t i;
  int rc;
  if ((rc = check_plain(o, err)) != 0) return rc;
  if (!(ctx = ub_ctx_create())) {
    snprintf(err, MTASTS_ERR_MAX, "resolver: cannot create a libunbound context: %s",
             strerror(errno));
    return MTASTS_ELOCAL;
  }
  ub_ctx_debugout(ctx, NULL);
  /* answers come back through a descriptor from libunbound's thread, not a forked process */
  if ((rc = ub_ctx_async(ctx, 1)) != 0) { rc = fail_local(err, "async", rc); goto bad; }
  /* a forwarder on loopback (a local cache, or the fixture world) must be usable */
  if ((rc = ub_ctx_set_option(ctx, "do-not-query-localhost:", "no")) != 0) {
    rc = fail_local(err, "do-not-query-localhost", rc);
    goto bad;
  }
  if (o->n_nameservers > 0) {
    for (i = 0; i < o->n_nameservers; i++)
      if ((rc = ub_ctx_set_fwd(ctx, o->nameservers[i])) != 0) {
        snprintf(err, MTASTS_ERR_MAX, "nameserver: '%.100s': %s", o->nameservers[i],
                 ub_strerror(rc));
        rc = rc == UB_SYNTAX ? MTASTS_ECONFIG : MTASTS_ELOCAL;
        goto bad;
      }
  } else if ((rc = ub_ctx_resolvconf(ctx, NULL)) != 0) {
    snprintf(err, MTASTS_ERR_MAX, "nameserver: none is given, and /etc/resolv.conf: %s",
             ub_strerror(rc));
    rc = rc == UB_NOMEM ? MTASTS_ELOCAL : MTASTS_ECONFIG;
    goto bad;
  }
  for (i = 0; i < o->n_stubs; i++)
    if ((rc = ub_ctx_set_stub(ctx, o->stub_zones[i], o->stub_addrs[i], 0)) != 0) {
      snprintf(err, MTASTS_ERR_MAX, "stub: '%.100s' '%.100s': %s", o->stub_zones[i],
               o->stub_addrs[i], ub_strerror(rc));
      rc = rc == UB_SYNTAX ? MTASTS_ECONFIG : MTASTS_ELOCAL;
      goto bad;
    }
  if (ta && (rc = ub_ctx_add_ta_file(ctx, ta)) != 0) {
    rc = fail_local(err, "trust anchor", rc);
    goto bad;
  }
  if ((rc = ub_resolve(ctx, "localhost.", ns_t_a, ns_c_in, &res)) != 0) {
    if (rc == UB_INITFAIL && ta)
      snprintf(err, MTASTS_ERR_MAX, "trust_anchor: '%.200s'%s does not load as DNSSEC trust "
               "anchors (libunbound refused it)", ta, ta == o->trust_anchor ? "" :
               " (the default)");
    rc = rc == UB_INITFAIL && ta ? MTASTS_ECONFIG : fail_local(err, "start", rc);
    goto bad;
  }
  ub_resolve_free(res);
  *out = ctx;
  return 0;
bad:
  ub_ctx_delete(ctx);
  return rc;
}

int mtasts_resolver_new(const mtasts_resolver_opts *o, mtasts_resolver **out, char *err) {
  mtasts_resolver *r = calloc(1, sizeof *r);
  size_t i;
  int rc;
  if (!r) {
    snprintf(err, MTASTS_ERR_MAX, "resolver: out of memory");
    return MTASTS_ELOCAL;
  }
  r->done_tail = &r->done;
  r->sock[0] = r->sock[1] = -1;
  if ((rc = setup(o, &r->ctx, err)) != 0) {
    free(r);
    return rc;
  }
  if ((r->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
    snprintf(err, MTASTS_ERR_MAX, "resolver: epoll: %s", strerror(errno));
    goto bad;
  }
  {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.fd = ub_fd(r->ctx);
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, ev.data.fd, &ev) != 0) {
      snprintf(err, MTASTS_ERR_MAX, "resolver: epoll: %s", strerror(errno));
      close(r->epfd);
      goto bad;
    }
  }
  for (i = 0; i < o->n_nameservers; i++) add_forwarder(r, o->nameservers[i], NULL);
  if (o->n_nameservers == 0) add_resolvconf(r);
  for (i = 0; i < o->n_stubs; i++) add_forwarder(r, o->stub_addrs[i], o->stub_zones[i]);
  r->probe_seq = (unsigned short)(time(NULL) ^ getpid());
  *out = r;
  return 0;
bad:
  ub_ctx_delete(r->ctx);
  free(r);
  return MTASTS_ELOCAL;
}

int mtasts_resolver_check(const mtasts_resolver_opts *o, char *err) {
  struct ub_ctx *ctx;
  int rc;
  if (!trust_anchor_of(o)) return check_plain(o, err);   /* nothing to load */
  if ((rc = setup(o, &ctx, err)) != 0) return rc;
  ub_ctx_delete(ctx);
  return 0;
}

void mtasts_resolver_free(mtasts_resolver *r) {
  mtasts_dns_query *q, *next;
  if (!r) return;
  ub_ctx_delete(r->ctx);   /* cancels what is outstanding; no callback runs after this */
  for (q = r->pending; q; q = next) { next = q->next; free_query(q); }
  for (q = r->done; q; q = next) { next = q->next; free_query(q); }
  if (r->sock[0] >= 0) close(r->sock[0]);
  if (r->sock[1] >= 0) close(r->sock[1]);
  close(r->epfd);
  free(r);
}

/* A name libunbound can ask: 1-253 bytes (a final dot aside), labels of 1-63 bytes.
 * libunbound reports a name it cannot encode as out of memory, which would read as this
 * host's failure. */
static int is_dns_name(const char *name) {
  size_t n = strlen(name), label = 0, i;
  if (n > 1 && name[n - 1] == '.') n--;
  if (n == 0 || n > 253) return 0;
  for (i = 0; i < n; i++) {
    if (name[i] == '.') {
      if (label == 0) return 0;
      label = 0;
    } else if (++label > 63) {
      return 0;
    }
  }
  return label > 0;
}

int mtasts_resolver_query(mtasts_resolver *r, const char *name, int rrtype, double timeout,
                          int *id, char *err) {
  mtasts_dns_query *q;
  int rc;
  if (!is_dns_name(name)) {
    snprintf(err, MTASTS_ERR_MAX, "resolver: '%.100s' is not a DNS name (empty label, over 63 "
             "or 253 bytes)", name);
    return -1;
  }
  if (!(q = calloc(1, sizeof *q))) {
    snprintf(err, MTASTS_ERR_MAX, "resolver: out of memory");
    return MTASTS_ELOCAL;
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
    snprintf(err, MTASTS_ERR_MAX, "resolver: query: %s", ub_strerror(rc));
    return is_local(rc) ? MTASTS_ELOCAL : -1;
  }
  *id = q->id;
  return 0;
}

int mtasts_resolver_fd(mtasts_resolver *r) { return r->epfd; }

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
  if (ub_poll(r->ctx) && (rc = ub_process(r->ctx)) != 0) return fail_local(err, "process", rc);
  for (q = r->pending; q; q = next) {   /* SERVFAILs that came in: probe, or give up */
    next = q->next;
    if (q->probing && q->probe_id == 0 && !start_probe(r, q, q->result->qname)) {
      q->probing = 0;
      finish(r, q);
    }
  }
  drain_probes(r);
  now = mtasts_monotonic();
  for (q = r->pending; q; q = next) {
    next = q->next;
    if (q->deadline <= now && (q->probing || ub_cancel(r->ctx, q->async_id) == 0)) {
      q->probing = 0;         /* a probe unanswered: no nameserver answered in time */
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
      if (q->probing || ub_cancel(r->ctx, q->async_id) == 0) {
        unlink_pending(r, q);
        free_query(q);
      }
      return;
    }
}

size_t mtasts_resolver_pending(mtasts_resolver *r) { return r->n_pending; }
