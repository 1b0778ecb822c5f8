/* collector.c: the libtlsrpt datagram collector's socket side (collector.h). Pure C, no Lua.
 *
 * One receiver thread: poll on the socket and a stop pipe, then recvmmsg (VLEN datagrams a
 * call, MSG_DONTWAIT) until the queue is empty; each datagram is parsed and its entries are
 * added to the current map under the mutex (held for one recvmmsg batch). take() swaps in an
 * empty map under the mutex and serialises the old one outside it, so the reader waits at
 * most for a pointer swap. The state file is a small shared mapping the thread updates after
 * each batch (how many datagrams this instance accepted): it outlives a killed process, and
 * the next one compares it with what the store says was committed. */
#define _GNU_SOURCE
#include "collector.h"
#include "mtasts.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define VLEN 32
#define QUIET 0.002    /* seconds of quiet after which the reader waits in poll again */
#define NAP_NS 20000   /* nanoseconds between reads while datagrams come */
#define NAP_MAX_NS 640000  /* the longest nap: naps double while the socket is quiet */
#define RT_WINDOW 0.1  /* seconds over which the reader's share of a CPU is measured */
#define RT_SHARE 0.8   /* over this share it is a flood: the reader leaves the real-time class */
#define LAST_MAX 300

typedef struct { uint64_t hash; size_t off, len; uint64_t a, b; } ment;

typedef struct {
  mtasts_buf arena;        /* keys */
  ment *e;
  size_t n, cap;
  uint32_t *idx;           /* open addressing: entry index + 1, 0 empty */
  size_t mask;
  uint64_t datagrams;
} map;

typedef struct {
  char magic[8];
  volatile uint64_t instance, accepted;
} state_page;

struct mtasts_collector {
  int fd, stopfd[2], started, stopped, bound;
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  pthread_t th;
  pthread_mutex_t mu;
  map *cur;
  mtasts_collector_stats st;
  char last[LAST_MAX];
  state_page *state;
  unsigned char *bufs;     /* VLEN * MAX_DGRAM */
  mtasts_dgram d;
};

static const char MAGIC[8] = "mtcol01";

static int errf(char *err, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int errf(char *err, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, MTASTS_ERR_MAX, fmt, ap);
  va_end(ap);
  return rc;
}

/* --- the map --- */

static uint64_t hash(const unsigned char *p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  size_t i;
  for (i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
  return h ^ (h >> 29);
}

static map *map_new(void) {
  map *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->mask = 4095;
  if (!(m->idx = calloc(m->mask + 1, sizeof *m->idx))) { free(m); return NULL; }
  return m;
}

static void map_free(map *m) {
  if (!m) return;
  mtasts_buf_free(&m->arena);
  free(m->e);
  free(m->idx);
  free(m);
}

static int map_grow(map *m) {
  size_t ncap = (m->mask + 1) * 2, i;
  uint32_t *idx = calloc(ncap, sizeof *idx);
  if (!idx) return ENOMEM;
  for (i = 0; i < m->n; i++) {
    size_t j = m->e[i].hash & (ncap - 1);
    while (idx[j]) j = (j + 1) & (ncap - 1);
    idx[j] = (uint32_t)i + 1;
  }
  free(m->idx);
  m->idx = idx;
  m->mask = ncap - 1;
  return 0;
}

/* Add a, b to the entry of key (made if new). 0 or ENOMEM. */
static int map_add(map *m, const unsigned char *key, size_t n, uint64_t a, uint64_t b) {
  uint64_t h = hash(key, n);
  size_t j = h & m->mask;
  ment *e;
  while (m->idx[j]) {
    e = &m->e[m->idx[j] - 1];
    if (e->hash == h && e->len == n && memcmp(m->arena.p + e->off, key, n) == 0) {
      e->a += a;
      e->b += b;
      return 0;
    }
    j = (j + 1) & m->mask;
  }
  /* grow first: a table that could not grow is never filled (the probe needs an empty slot) */
  if ((m->n + 1) * 2 > m->mask + 1) {
    if (map_grow(m)) return ENOMEM;
    j = h & m->mask;
    while (m->idx[j]) j = (j + 1) & m->mask;
  }
  if (m->n == m->cap) {
    size_t ncap = m->cap ? m->cap * 2 : 64;
    ment *ne = realloc(m->e, ncap * sizeof *ne);
    if (!ne) return ENOMEM;
    m->e = ne;
    m->cap = ncap;
  }
  if (mtasts_buf_reserve(&m->arena, m->arena.n + n)) return ENOMEM;
  e = &m->e[m->n];
  e->hash = h;
  e->off = m->arena.n;
  e->len = n;
  e->a = a;
  e->b = b;
  memcpy(m->arena.p + m->arena.n, key, n);
  m->arena.n += n;
  m->idx[j] = (uint32_t)++m->n;
  return 0;
}

/* --- the receiver --- */

/* why, the datagram's length n and its first bytes (of the have bytes read), escaped */
static void excerpt(char *o, size_t on, const char *why, const unsigned char *p, size_t n,
                    size_t have) {
  size_t k = (size_t)snprintf(o, on, "%s; datagram of %zu bytes: ", why, n), i;
  for (i = 0; i < have && k + 5 < on && i < 120; i++) {
    unsigned char c = p[i];
    if (c >= 0x20 && c < 0x7F && c != '\\') o[k++] = (char)c;
    else k += (size_t)snprintf(o + k, on - k, "\\x%02x", c);
  }
  if (i < n && k + 4 < on) { memcpy(o + k, "...", 3); k += 3; }
  o[k < on ? k : on - 1] = '\0';
}

/* One datagram: parsed outside the mutex (only this thread uses c->d), then its entries
 * added under it. n is its length (for an oversized one, its real length: MSG_TRUNC). */
static void take_one(mtasts_collector *c, const unsigned char *p, size_t n, int trunc) {
  char err[200], why[260];
  int rc = 0;
  size_t i;
  if (!trunc) rc = mtasts_dgram_parse(p, n, &c->d, err, sizeof err);
  pthread_mutex_lock(&c->mu);
  c->st.received++;
  c->st.bytes += n;
  if (trunc) {
    c->st.oversized++;
    c->st.last_seq++;
    excerpt(c->last, sizeof c->last, "oversized: longer than the collector reads", p, n,
            n < MTASTS_COLLECTOR_MAX_DGRAM ? n : MTASTS_COLLECTOR_MAX_DGRAM);
  } else if (rc) {
    c->st.rejected[rc]++;
    c->st.last_seq++;
    snprintf(why, sizeof why, "%s: %s", mtasts_dgram_reason(rc), err);
    excerpt(c->last, sizeof c->last, why, p, n, n);
  } else if (c->cur->n + c->d.n > MTASTS_COLLECTOR_MAX_ENTRIES ||
             c->cur->arena.n + c->d.keys.n > MTASTS_COLLECTOR_MAX_ARENA) {
    c->st.overflow++;
    c->st.last_seq++;
    excerpt(c->last, sizeof c->last, "overflow: too many distinct results held since the "
            "last commit", p, n, n);
  } else {
    for (i = 0; i < c->d.n; i++) {
      const mtasts_dgram_entry *e = (const mtasts_dgram_entry *)c->d.ents.p + i;
      if (map_add(c->cur, c->d.keys.p + e->off, e->len, e->a, e->b)) {
        rc = -1;       /* no memory: what was added of it stays; counted as not counted */
        break;
      }
    }
    if (rc) {
      c->st.overflow++;
      c->st.last_seq++;
      excerpt(c->last, sizeof c->last, "overflow: out of memory", p, n, n);
    } else {
      c->cur->datagrams++;
      c->st.accepted++;
      c->st.sessions += c->d.sessions;
      if (c->d.repaired) c->st.repaired++;
      c->st.t_mismatch += c->d.t_mismatch;
      c->st.unknown_type += c->d.unknown_type;
    }
  }
  pthread_mutex_unlock(&c->mu);
  /* a large datagram's scratch is not kept */
  if (c->d.keys.cap > (64u << 10) || c->d.ents.cap > (64u << 10)) mtasts_dgram_free(&c->d);
}

/* Read until the queue is empty (returns whether anything was read). */
static int drain(mtasts_collector *c) {
  struct mmsghdr msgs[VLEN];
  struct iovec iov[VLEN];
  int i, n, any = 0;
  for (;;) {
    memset(msgs, 0, sizeof msgs);
    for (i = 0; i < VLEN; i++) {
      iov[i].iov_base = c->bufs + (size_t)i * MTASTS_COLLECTOR_MAX_DGRAM;
      iov[i].iov_len = MTASTS_COLLECTOR_MAX_DGRAM;
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    /* MSG_TRUNC: an oversized datagram's msg_len is its real length */
    n = recvmmsg(c->fd, msgs, VLEN, MSG_DONTWAIT | MSG_TRUNC, NULL);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return any;
    }
    any = 1;
    for (i = 0; i < n; i++)
      take_one(c, iov[i].iov_base, msgs[i].msg_len, (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0);
    pthread_mutex_lock(&c->mu);
    c->st.reads++;
    if (c->state) __atomic_store_n(&c->state->accepted, c->st.accepted, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&c->mu);
    if (n < VLEN) return any;
  }
}

static double thread_cpu(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double mono(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The first burst must not wait for page faults: the buffers' first pages, this thread's
 * malloc arena and the parser's scratch are touched before the first datagram. */
static void warm(mtasts_collector *c) {
  static const char sample[] = "{\"dpv\": \"1\",\"d\": \"warm.example\",\"pr\": \"v=TLSRPTv1; "
    "rua=mailto:t@warm.example\",\"policies\":[{\"policy-type\":2,\"policy-domain\": "
    "\"warm.example\",\"policy-string\":[\"version: STSv1\"],\"mx-host\":[\"mx.warm.example\"],"
    "\"failure-details\":[{\"c\":204,\"n\": \"mx.warm.example\"}],\"t\":1,\"f\":1}]}";
  int i;
  for (i = 0; i < VLEN; i++) memset(c->bufs + (size_t)i * MTASTS_COLLECTOR_MAX_DGRAM, 0, 8192);
  (void)mtasts_dgram_parse((const unsigned char *)sample, sizeof sample - 1, &c->d, NULL, 0);
  map_free(map_new());
}

static void *run(void *arg) {
  mtasts_collector *c = arg;
  struct timespec nap = {0, NAP_NS};
  /* short naps wake on a timer: exact, with no slack added */
  (void)prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  struct sched_param rt = {1}, other = {0};
  int fifo;
  /* A real-time priority (when the process may have one: root, LimitRTPRIO, CAP_SYS_NICE)
   * while waiting and reading: the wake-up then puts the reader on a CPU where it runs at
   * once, and its naps end on time. The reader naps whenever the socket is empty, so it
   * takes only what the datagrams cost; if that passes RT_SHARE of a CPU over RT_WINDOW, it
   * is a flood, and the reader goes on in the normal class, so that it cannot take a CPU
   * from the rest of the machine; it waits with its priority again once it is quiet. */
  fifo = pthread_setschedparam(pthread_self(), SCHED_FIFO, &rt) == 0;
  pthread_mutex_lock(&c->mu);
  c->st.rt = fifo;
  pthread_mutex_unlock(&c->mu);
  warm(c);
  for (;;) {
    struct pollfd p[2] = {{c->fd, POLLIN, 0}, {c->stopfd[0], POLLIN, 0}};
    double last, start, cpu0;
    int rc, rt_now = fifo;
    rc = poll(p, 2, -1);
    if (rc < 0 && errno != EINTR) break;
    if (p[1].revents) break;
    /* Busy: read without a pause while datagrams come, then read and nap (20 us, doubling to
     * 640 us while nothing comes, so a quiet socket costs few wake-ups) until the socket has
     * been quiet for QUIET seconds. A sender at full speed refills the short queue (11
     * datagrams by default) in about 100 us. Waiting in poll between datagrams would not
     * do: AF_UNIX wakes its reader "synchronously", so the scheduler runs the reader on the
     * sender's CPU, where the two take turns of milliseconds while the other CPU idles and
     * the queue overflows. A nap ends on a timer, on an idle CPU. */
    nap.tv_nsec = NAP_NS;
    nanosleep(&nap, NULL);
    start = last = mono();
    cpu0 = thread_cpu();
    while (!__atomic_load_n(&c->stopped, __ATOMIC_RELAXED)) {
      double t;
      if (drain(c)) {
        last = mono();
        nap.tv_nsec = NAP_NS;
        if (rt_now && last - start > RT_WINDOW) {
          if ((thread_cpu() - cpu0) / (last - start) > RT_SHARE) {
            (void)pthread_setschedparam(pthread_self(), SCHED_OTHER, &other);
            rt_now = 0;
          }
          start = last;
          cpu0 = thread_cpu();
        }
        continue;
      }
      t = mono();
      if (t - last > QUIET) break;
      nanosleep(&nap, NULL);
      if (nap.tv_nsec < NAP_MAX_NS) nap.tv_nsec *= 2;
    }
    if (fifo && !rt_now) (void)pthread_setschedparam(pthread_self(), SCHED_FIFO, &rt);
  }
  drain(c);      /* what is still queued at the stop */
  return NULL;
}

/* --- the socket --- */

static int read_qlen(void) {
  FILE *f = fopen("/proc/sys/net/unix/max_dgram_qlen", "r");
  int v = -1;
  if (f) {
    if (fscanf(f, "%d", &v) != 1) v = -1;
    fclose(f);
  }
  return v;
}

/* Remove a stale socket at path; 0, or an errno with err set when something live or not a
 * socket is there. */
static int clear_path(const char *path, char *err) {
  struct stat sb;
  struct sockaddr_un a;
  int s, rc;
  if (lstat(path, &sb) != 0) return errno == ENOENT ? 0 : errf(err, errno, "%s: %s", path, strerror(errno));
  if (!S_ISSOCK(sb.st_mode)) return errf(err, EEXIST, "%s exists and is not a socket", path);
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  memcpy(a.sun_path, path, strlen(path));
  if ((s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0)
    return errf(err, errno, "socket: %s", strerror(errno));
  rc = connect(s, (struct sockaddr *)&a, sizeof a);
  close(s);
  if (rc == 0) return errf(err, EADDRINUSE, "%s: another collector is listening there", path);
  if (errno != ECONNREFUSED) return errf(err, errno, "%s: %s", path, strerror(errno));
  if (unlink(path) != 0 && errno != ENOENT) return errf(err, errno, "%s: %s", path, strerror(errno));
  return 0;
}

/* What the collector before this one left in the state file: 0 and the values (0, 0 when
 * there is no such file), or an errno with err set. Nothing is written. */
static int read_state(const char *path, uint64_t *prev_instance, uint64_t *prev_accepted,
                      char *err) {
  state_page st;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  ssize_t r;
  if (fd < 0) return errno == ENOENT ? 0 : errf(err, errno, "%s: %s", path, strerror(errno));
  r = read(fd, &st, sizeof st);
  close(fd);
  if (r == (ssize_t)sizeof st && memcmp(st.magic, MAGIC, 8) == 0) {
    *prev_instance = st.instance;
    *prev_accepted = st.accepted;
  }
  return 0;
}

/* Map the state file and start this instance's count in it. */
static int map_state(mtasts_collector *c, const char *path, uint64_t instance, char *err) {
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  void *p;
  if (fd < 0) return errf(err, errno, "the state file %s: %s", path, strerror(errno));
  if (ftruncate(fd, 4096) != 0) {
    int e = errno;
    close(fd);
    return errf(err, e, "the state file %s: %s", path, strerror(e));
  }
  p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return errf(err, errno, "the state file %s: %s", path, strerror(errno));
  c->state = p;
  memcpy(c->state->magic, MAGIC, 8);
  c->state->instance = instance;
  c->state->accepted = 0;
  return 0;
}

int mtasts_collector_open(const mtasts_collector_opts *o, mtasts_collector **out,
                          uint64_t *instance, uint64_t *prev_instance, uint64_t *prev_accepted,
                          char *err) {
  mtasts_collector *c;
  struct sockaddr_un a;
  size_t pn = strlen(o->path);
  mode_t old;
  socklen_t sl = sizeof(int);
  int rc;
  *out = NULL;
  *prev_instance = *prev_accepted = 0;
  if (pn == 0 || pn >= sizeof a.sun_path)
    return errf(err, ENAMETOOLONG, "%s: a socket path is 1 to %zu bytes", o->path, sizeof a.sun_path - 1);
  if (getrandom(instance, sizeof *instance, 0) != (ssize_t)sizeof *instance)
    *instance = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
  if (!(c = calloc(1, sizeof *c))) return errf(err, ENOMEM, "out of memory");
  c->fd = c->stopfd[0] = c->stopfd[1] = -1;
  memcpy(c->path, o->path, pn + 1);
  pthread_mutex_init(&c->mu, NULL);
  c->st.qlen = read_qlen();
  if (!(c->cur = map_new()) || !(c->bufs = malloc((size_t)VLEN * MTASTS_COLLECTOR_MAX_DGRAM))) {
    rc = errf(err, ENOMEM, "out of memory");
    goto fail;
  }
  /* a live collector at the path is refused before its state file is read */
  if ((rc = clear_path(o->path, err)) != 0) goto fail;
  if (o->state && (rc = read_state(o->state, prev_instance, prev_accepted, err)) != 0) goto fail;
  if ((c->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0) {
    rc = errf(err, errno, "socket: %s", strerror(errno));
    goto fail;
  }
  if (o->rcvbuf > 0 &&
      setsockopt(c->fd, SOL_SOCKET, SO_RCVBUFFORCE, &o->rcvbuf, sizeof o->rcvbuf) != 0)
    (void)setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &o->rcvbuf, sizeof o->rcvbuf);
  if (getsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &c->st.rcvbuf, &sl) != 0) c->st.rcvbuf = -1;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  memcpy(a.sun_path, o->path, pn);
  old = umask((mode_t)(~o->mode & 0777));
  rc = bind(c->fd, (struct sockaddr *)&a, sizeof a);
  umask(old);
  if (rc != 0) {
    rc = errf(err, errno, "%s: %s", o->path, strerror(errno));
    goto fail;
  }
  c->bound = 1;    /* from here on the socket file is ours to remove */
  if (chmod(o->path, (mode_t)o->mode) != 0 ||
      (o->gid >= 0 && chown(o->path, (uid_t)-1, (gid_t)o->gid) != 0)) {
    rc = errf(err, errno, "%s: %s", o->path, strerror(errno));
    goto fail;
  }
  if (pipe2(c->stopfd, O_CLOEXEC) != 0) {
    rc = errf(err, errno, "pipe: %s", strerror(errno));
    goto fail;
  }
  /* the state file is written only now, when nothing else can fail but the thread: a start
   * that fails keeps what the collector before it left there */
  if (o->state && (rc = map_state(c, o->state, *instance, err)) != 0) goto fail;
  /* the thread takes no signal: they are the host's (a SIGTERM delivered to a thread that
   * does not block it would end the process before the host's handler sees it). It
   * inherits the mask it is created with. */
  {
    sigset_t all, mask;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &mask);
    rc = pthread_create(&c->th, NULL, run, c);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
  }
  if (rc != 0) {
    errf(err, rc, "pthread_create: %s", strerror(rc));
    if (c->state) {                            /* put back what was there */
      c->state->instance = *prev_instance;
      c->state->accepted = *prev_accepted;
    }
    goto fail;
  }
  c->started = 1;
  *out = c;
  return 0;
fail:
  mtasts_collector_free(c);
  return rc;
}

int mtasts_collector_take(mtasts_collector *c, mtasts_buf *out, size_t *entries,
                          uint64_t *datagrams) {
  map *m, *fresh = map_new();
  size_t i;
  out->n = 0;
  *entries = 0;
  *datagrams = 0;
  if (!fresh) return ENOMEM;
  pthread_mutex_lock(&c->mu);
  m = c->cur;
  c->cur = fresh;
  pthread_mutex_unlock(&c->mu);
  for (i = 0; i < m->n; i++) {
    const ment *e = &m->e[i];
    unsigned char h[4], ab[16];
    if (mtasts_buf_reserve(out, out->n + 20 + e->len)) {
      /* put them back: nothing is lost for want of memory here */
      pthread_mutex_lock(&c->mu);
      {
        map *t = c->cur;
        size_t j;
        c->cur = m;
        for (j = 0; j < t->n; j++)
          (void)map_add(m, t->arena.p + t->e[j].off, t->e[j].len, t->e[j].a, t->e[j].b);
        m->datagrams += t->datagrams;
        map_free(t);
      }
      pthread_mutex_unlock(&c->mu);
      out->n = 0;
      return ENOMEM;
    }
    mtasts_put_u32(h, (uint32_t)e->len);
    mtasts_put_u64(ab, e->a);
    mtasts_put_u64(ab + 8, e->b);
    memcpy(out->p + out->n, h, 4);
    memcpy(out->p + out->n + 4, m->arena.p + e->off, e->len);
    memcpy(out->p + out->n + 4 + e->len, ab, 16);
    out->n += 20 + e->len;
  }
  *entries = m->n;
  *datagrams = m->datagrams;
  map_free(m);
  return 0;
}

void mtasts_collector_counters(mtasts_collector *c, mtasts_collector_stats *s, char *last,
                            size_t lastn) {
  pthread_mutex_lock(&c->mu);
  *s = c->st;
  if (lastn) snprintf(last, lastn, "%s", c->last);
  pthread_mutex_unlock(&c->mu);
}

void mtasts_collector_stop(mtasts_collector *c) {
  if (c->stopped) return;
  __atomic_store_n(&c->stopped, 1, __ATOMIC_RELAXED);
  /* new senders find no socket (their loss, as with any stop); what is queued is read */
  if (c->bound) unlink(c->path);
  if (c->started) {
    ssize_t w;
    do w = write(c->stopfd[1], "x", 1);
    while (w < 0 && errno == EINTR);
    pthread_join(c->th, NULL);
    c->started = 0;
  }
}

void mtasts_collector_free(mtasts_collector *c) {
  if (!c) return;
  mtasts_collector_stop(c);
  if (c->fd >= 0) close(c->fd);
  if (c->stopfd[0] >= 0) close(c->stopfd[0]);
  if (c->stopfd[1] >= 0) close(c->stopfd[1]);
  if (c->state) munmap(c->state, 4096);
  map_free(c->cur);
  free(c->bufs);
  mtasts_dgram_free(&c->d);
  pthread_mutex_destroy(&c->mu);
  free(c);
}
