#!/bin/sh
# bench/sys4-collector.sh: sys4's reference TLSRPT collector (tlsrpt-collectd from the PyPI
# package tlsrpt-reporter, github.com/sys4/tlsrpt-reporter, storing into SQLite) under the
# same sender and the same scenarios as bench/collector.lua, for a side-by-side figure:
#   blocking, a new socket per datagram, 200,000: datagrams/s; lost = sent - recorded
#   blocking, one socket reused, 200,000: datagrams/s
#   non-blocking at full speed, 200,000: lost at the sender (EAGAIN), in % (3 runs)
#   non-blocking, 10 bursts of 1,000 datagrams 0.3 s apart: lost, in %
# each with net.unix.max_dgram_qlen as the machine has it and, when run as root, again with
# 1024 in a network namespace of its own (unshare -n), as bench/collector.lua does. Each run
# has a fresh collector and database; after it, the datagrams recorded in its SQLite database
# (sum of finalresults.cntrtotal: one policy per datagram in the mix) are counted against
# those the kernel accepted.
#
# Usage: sh bench/sys4-collector.sh DGSEND WORKDIR
#   DGSEND   the sender (build/support/dgsend)
#   WORKDIR  a directory of its own: WORKDIR/venv holds the package (kept: not installed again
#            while WORKDIR/venv/bin/tlsrpt-collectd exists), runs go in WORKDIR/run.*
# Environment: TLSRPT_REPORTER_VERSION pins the version (default: the newest), PYTHON the
# interpreter for the venv (default python3). Prints "skipped: <why>" and exits 0 when the
# package cannot be installed (no python3 venv, no registry).
set -u
if [ "${1:-}" = "--inner" ]; then inner=1; shift; else inner=0; fi
if [ $# -ne 2 ]; then
  echo "usage: $0 DGSEND WORKDIR" >&2
  exit 2
fi
dgsend=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
work=$2
if [ ! -x "$dgsend" ]; then
  echo "$0: $dgsend: not an executable (make build/support/dgsend)" >&2
  exit 2
fi
mkdir -p "$work" || exit 2
work=$(cd "$work" && pwd)
venv=$work/venv
collectd=$venv/bin/tlsrpt-collectd

if [ ! -x "$collectd" ]; then
  py=${PYTHON:-python3}
  if ! command -v "$py" >/dev/null 2>&1; then
    echo "skipped: no $py"
    exit 0
  fi
  rm -rf "$venv"
  if ! "$py" -m venv "$venv" >"$work/venv.log" 2>&1; then
    echo "skipped: $py -m venv failed (Debian: apt-get install python3-venv); see $work/venv.log"
    rm -rf "$venv"
    exit 0
  fi
  spec=tlsrpt-reporter${TLSRPT_REPORTER_VERSION:+==$TLSRPT_REPORTER_VERSION}
  if ! "$venv/bin/python" -m pip install -q --retries 1 "$spec" >>"$work/venv.log" 2>&1 || [ ! -x "$collectd" ]; then
    why=$(grep -m1 -E 'ERROR|No matching|Could not' "$work/venv.log")
    echo "skipped: pip could not install $spec${why:+ ($why)}"
    rm -rf "$venv"
    exit 0
  fi
fi

"$venv/bin/python" - "$dgsend" "$work" "$collectd" "$inner" <<'EOF'
import importlib.metadata, json, os, platform, shutil, signal, sqlite3, statistics, subprocess
import sys, tempfile, time

dgsend, work, collectd, inner = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
N = 200000
try:
    version = importlib.metadata.version("tlsrpt-reporter")
except importlib.metadata.PackageNotFoundError:
    version = "?"


def qlen():
    try:
        with open("/proc/sys/net/unix/max_dgram_qlen") as f:
            return int(f.read())
    except OSError:
        return None


class Collector:
    """One tlsrpt-collectd in the foreground (it has no daemon mode), on a fresh database."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="run.", dir=work)
        self.sock = os.path.join(self.dir, "s.sock")
        self.db = os.path.join(self.dir, "collectd.sqlite")
        self.log = os.path.join(self.dir, "collectd.log")
        cfg = os.path.join(self.dir, "collectd.cfg")  # an empty one: /etc/tlsrpt/collectd.cfg is not read
        with open(cfg, "w") as f:
            f.write("[tlsrpt_collectd]\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TLSRPT_COLLECTD_")}
        self.proc = subprocess.Popen(
            [collectd, "--config_file", cfg, "--storage", "sqlite://" + self.db,
             "--socketname", self.sock, "--log_level", "warning", "--logfilename", self.log],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        # ready: the socket is bound and the database set up (it binds first, then creates the
        # database and moves it aside as "yesterday's" at once, then creates today's)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit("tlsrpt-collectd exited with %d at start; see %s" % (self.proc.returncode, self.log))
            if os.path.exists(self.sock) and os.path.exists(self.db + ".yesterday") and self._ready():
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit("tlsrpt-collectd not ready in 30 s; see " + self.log)
            time.sleep(0.05)
        time.sleep(0.2)

    def _ready(self):
        try:
            with sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=1) as c:
                return c.execute("SELECT count(*) FROM dbversion").fetchone()[0] >= 1
        except sqlite3.Error:
            return False

    def recorded(self):
        """Datagrams committed to its database: each datagram of the mix has one policy."""
        for _ in range(50):
            try:
                c = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=10)
                try:
                    return c.execute("SELECT coalesce(sum(cntrtotal), 0) FROM finalresults").fetchone()[0]
                finally:
                    c.close()
            except sqlite3.OperationalError:
                time.sleep(0.1)
        return -1

    def close(self, sent):
        """Wait until it has committed all it was sent (it commits every 1,000 datagrams and
        after 5 s without any), or until its count stays put for 8 s; stop it (SIGTERM: it
        commits); return what its database holds."""
        last, since, deadline = -1, time.monotonic(), time.monotonic() + 300
        while time.monotonic() < deadline:
            n = self.recorded()
            if n >= sent:
                break
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since > 8:
                break
            time.sleep(0.25)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        n = self.recorded()
        errors = 0
        if os.path.exists(self.log):
            with open(self.log, errors="replace") as f:
                errors = sum(1 for line in f if " ERROR " in line or " CRITICAL " in line)
        Collector.errors += errors
        shutil.rmtree(self.dir, ignore_errors=True)
        return n


Collector.errors = 0
totals = {"sent": 0, "recorded": 0}


def send(c, args):
    out = subprocess.run([dgsend, c.sock, "mix"] + args, stdout=subprocess.PIPE, check=True,
                         universal_newlines=True).stdout
    total = {"sent": 0, "eagain": 0, "refused": 0, "other": 0, "seconds": 0.0}
    for line in out.splitlines():
        if line.strip():
            for k, v in json.loads(line).items():
                total[k] = total.get(k, 0) + v
    return total


def run(args):
    c = Collector()
    r = send(c, args)
    r["recorded"] = c.close(r["sent"])
    totals["sent"] += r["sent"]
    totals["recorded"] += r["recorded"]
    return r


rows = []
rates, lost = [], 0
for _ in range(3):
    r = run([str(N), "--blocking"])
    rates.append(r["sent"] / r["seconds"])
    lost += N - r["recorded"]
rows.append(("blocking, new socket each: datagrams/s (median of 3), lost", "%.0f, %d" % (statistics.median(rates), lost)))
rates = []
for _ in range(3):
    r = run([str(N), "--blocking", "--reuse"])
    rates.append(r["sent"] / r["seconds"])
rows.append(("blocking, one socket: datagrams/s (median of 3)", "%.0f" % statistics.median(rates)))
losses, speed = [], []
for _ in range(3):
    r = run([str(N)])
    losses.append(100.0 * r["eagain"] / N)
    speed.append(N / r["seconds"])
rows.append(("non-blocking, full speed, 200,000: lost % (median of 3; runs)",
             "%.2f (%s); sender at %.0f/s" % (statistics.median(losses), ", ".join("%.2f" % l for l in losses),
                                               statistics.median(speed))))
c = Collector()
burst, sent = [], 0
for _ in range(10):
    r = send(c, ["1000"])
    burst.append(r["eagain"] / 10.0)
    sent += r["sent"]
    time.sleep(0.3)
n = c.close(sent)
totals["sent"] += sent
totals["recorded"] += n
rows.append(("non-blocking, 10 bursts of 1,000: lost % (mean; per burst)",
             "%.1f (%s)" % (sum(burst) / 10, " ".join("%.1f" % l for l in burst))))
rows.append(("recorded in its SQLite db / accepted by the kernel (all runs)",
             "%d / %d%s" % (totals["recorded"], totals["sent"],
                            "" if Collector.errors == 0 else "; %d ERROR lines in its logs" % Collector.errors)))

print("sys4 tlsrpt-collectd (tlsrpt-reporter %s, Python %s, SQLite %s), net.unix.max_dgram_qlen = %s%s"
      % (version, platform.python_version(), sqlite3.sqlite_version, qlen(),
         " (own network namespace)" if inner else ""))
for name, value in rows:
    print("  %-66s %s" % (name, value))
sys.stdout.flush()
EOF
rc=$?
[ $rc -eq 0 ] || exit $rc

if [ $inner -eq 0 ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null 2>&1; then
  q=$(cat /proc/sys/net/unix/max_dgram_qlen 2>/dev/null || echo 0)
  if [ "$q" -lt 1024 ]; then
    unshare -n sh -c 'sysctl -qw net.unix.max_dgram_qlen=1024 && exec sh "$0" --inner "$1" "$2"' \
      "$0" "$dgsend" "$work"
  fi
fi
exit 0
