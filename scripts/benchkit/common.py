"""Shared machinery of the end-to-end benchmarks: throwaway PostgreSQL 15
clusters, an s3s-fs server, receivers started as child processes, samplers
that read /proc and pg_stat_replication, and the statistics the report uses.

Everything runs on 127.0.0.1 inside one work directory that is deleted at the
end. Server binaries run as the `postgres` OS user (via runuser) when the
benchmark runs as root, because Postgres refuses root; clients (pgpitr,
pg_receivewal, pg_basebackup) run as the invoking user.
"""

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2

AS_ROOT = os.geteuid() == 0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# The PostgreSQL major the clusters and the client tools (pg_receivewal,
# pg_basebackup) are: scripts/bench --major N.
DEBIAN_MAJOR = 15
MAJOR = int(os.environ.get("PGPITR_BENCH_PG_MAJOR") or DEBIAN_MAJOR)
# The incremental part runs here unless --major says otherwise: native
# incremental backups came with 17.
INCREMENTAL_MAJOR = 17


def pg_bindir():
    if MAJOR != DEBIAN_MAJOR:
        d = Path(os.environ.get("PGPITR_PG_DIR") or "/opt/pgpitr-pg") / str(MAJOR) / "bin"
        if not (d / "initdb").is_file():
            sys.exit(f"bench: PostgreSQL {MAJOR} binaries not in {d} (run scripts/setup)")
        return d
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    debian = Path("/usr/lib/postgresql/15/bin")
    if (debian / "initdb").is_file():
        return debian
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").is_file():
        return Path(out.stdout.strip())
    sys.exit("bench: PostgreSQL 15 binaries not found (run scripts/setup or set PG_BINDIR)")


BINDIR = pg_bindir()


def pgbin(tool):
    return str(BINDIR / tool)


def as_postgres(argv):
    """argv run as the postgres OS user when we are root."""
    return ["runuser", "-u", "postgres", "--"] + argv if AS_ROOT else argv


def chown_postgres(path):
    if AS_ROOT:
        shutil.chown(path, "postgres", "postgres")


def redact(text):
    """Text with secret values (…SECRET…=, …PASSWORD…=) masked, for errors that end up in results."""
    return re.sub(r"((?:secret|password)[a-z_]*=)[^\s']+", r"\1***", text, flags=re.I)


def run(argv, check=True, capture=True, env=None, timeout=None):
    try:
        r = subprocess.run(argv, capture_output=capture, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{redact(shlex.join(argv))} timed out after {timeout} s") from None
    if check and r.returncode != 0:
        raise RuntimeError(redact(f"{shlex.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"))
    return r


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def du(path):
    """Bytes stored under path (apparent sizes of regular files)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def lsn_int(text):
    if text is None:
        return None
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_text(v):
    return f"{v >> 32:X}/{v & 0xFFFFFFFF:X}"


# ---------------------------------------------------------------- /proc


def proc_cpu(pid):
    """utime+stime of pid (all its threads) in seconds, or None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def proc_status(pid, key):
    """A kB field of /proc/pid/status (VmRSS, VmHWM) in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def proc_children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def proc_tree(pid):
    kids = proc_children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


class TreeSampler:
    """Samples a process tree every `interval` s: summed RSS (peak and
    series) and the last CPU seen per pid, so CPU of short-lived children
    that exit between samples is still mostly counted. `extra_pids` is a
    callable returning more pids to follow (e.g. walsenders)."""

    def __init__(self, root_pid, interval=0.1, extra_pids=None):
        self.root, self.interval, self.extra = root_pid, interval, extra_pids
        self.peak_rss = 0
        self.rss_series = []
        self.cpu_seen = {}
        self.extra_cpu_seen = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self._t.start()
        return self

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self):
        pids = proc_tree(self.root) if self.root else []
        rss = 0
        for p in pids:
            r = proc_status(p, "VmRSS")
            if r:
                rss += r
            c = proc_cpu(p)
            if c is not None:
                self.cpu_seen[p] = c
        if pids:
            self.peak_rss = max(self.peak_rss, rss)
            self.rss_series.append(rss)
        if self.extra:
            for p in self.extra():
                c = proc_cpu(p)
                if c is not None:
                    self.extra_cpu_seen[p] = c

    def stop(self):
        self._stop.set()
        self._t.join()

    def tree_cpu(self):
        return sum(self.cpu_seen.values())

    def extra_cpu(self):
        return sum(self.extra_cpu_seen.values())


def run_measured(argv, env=None, extra_pids=None, stdout=None, timeout=None):
    """Runs argv to completion; returns wall time, CPU (user+sys of it and
    every descendant it waited for, from wait4), peak summed RSS of its tree
    (sampled every 100 ms), CPU of extra pids (sampled), exit code, output."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE if stdout is None else stdout,
                         stderr=subprocess.PIPE, text=True)
    s = TreeSampler(p.pid, extra_pids=extra_pids).start()
    out_chunks, err_chunks = [], []

    def drain(stream, into):
        for line in stream:
            into.append(line)

    readers = []
    if p.stdout:
        readers.append(threading.Thread(target=drain, args=(p.stdout, out_chunks), daemon=True))
    readers.append(threading.Thread(target=drain, args=(p.stderr, err_chunks), daemon=True))
    for r in readers:
        r.start()
    deadline = None if timeout is None else t0 + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if deadline and time.monotonic() > deadline:
            p.kill()
        time.sleep(0.02)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join(5)
    s.stop()
    return {
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "peak_rss": max(s.peak_rss, ru.ru_maxrss * 1024),
        "extra_cpu_s": s.extra_cpu(),
        "code": p.returncode,
        "stdout": "".join(out_chunks),
        "stderr": "".join(err_chunks),
    }


# ---------------------------------------------------------------- Postgres

BASE_CONF = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "replica",
    "max_wal_senders": "20",
    "max_replication_slots": "20",
    "shared_buffers": "512MB",
    "max_wal_size": "16GB",
    "min_wal_size": "1GB",
    "checkpoint_timeout": "30min",
    "max_connections": "60",
    "synchronous_commit": "on",
    "fsync": "on",
    "wal_sender_timeout": "60s",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] ",
    "log_checkpoints": "off",
}


class Cluster:
    """A throwaway cluster in work/<name>: initdb, trust auth on 127.0.0.1
    and the socket, started with pg_ctl. `cmdline` settings go on the
    postgres command line (pg_ctl -o) rather than into postgresql.conf, so
    that base backups of this cluster do not carry them (archive_command)."""

    def __init__(self, work, name, conf=None, cmdline=None, checksums=True, env=None):
        self.dir = Path(work) / name
        self.data, self.sock, self.logf = self.dir / "data", self.dir / "sock", self.dir / "postgres.log"
        self.port = free_port()
        self.cmdline = cmdline or {}
        self.env = env
        self.dir.mkdir(parents=True)
        os.chmod(self.dir, 0o755)
        for d in (self.data, self.sock):
            d.mkdir()
            os.chmod(d, 0o700 if d == self.data else 0o755)
            chown_postgres(d)
        self.logf.touch()
        chown_postgres(self.logf)
        argv = [pgbin("initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--locale=C",
                "--auth=trust"]
        if checksums:
            argv.append("--data-checksums")
        run(as_postgres(argv))
        settings = dict(BASE_CONF)
        settings.update({"port": str(self.port), "unix_socket_directories": str(self.sock)})
        settings.update(conf or {})
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n# pgpitr benchmark\n")
            for k, v in settings.items():
                f.write(f"{k} = '{v}'\n")
        with open(self.data / "pg_hba.conf", "w") as f:
            f.write("local all all trust\nlocal replication all trust\n"
                    "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n")
        self.running = False
        self.start()

    def pg_ctl_opts(self):
        return " ".join(f"-c {k}={shlex.quote(v)}" for k, v in self.cmdline.items())

    def start(self):
        argv = [pgbin("pg_ctl"), "-D", str(self.data), "-l", str(self.logf), "-w", "-t", "120"]
        if self.cmdline:
            argv += ["-o", self.pg_ctl_opts()]
        run(as_postgres(argv + ["start"]), env=self.env)
        self.running = True

    def stop(self, mode="fast"):
        if self.running:
            run(as_postgres([pgbin("pg_ctl"), "-D", str(self.data), "-w", "-t", "120", "-m", mode, "stop"]),
                check=False)
            self.running = False

    def conninfo(self, app=None, dbname="postgres"):
        s = f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"
        return s + (f" application_name={app}" if app else "")

    def repl_conninfo(self, app):
        return f"host=127.0.0.1 port={self.port} user=postgres application_name={app}"

    def connect(self):
        c = psycopg2.connect(host=str(self.sock), port=self.port, user="postgres", dbname="postgres")
        c.autocommit = True
        return c

    def sql(self, q, args=None):
        # Not `with conn`: psycopg2 2.9 opens a transaction there even in
        # autocommit mode, and VACUUM or CHECKPOINT cannot run inside one.
        c = self.connect()
        try:
            with c.cursor() as cur:
                cur.execute(q, args)
                return cur.fetchall() if cur.description else []
        finally:
            c.close()

    def one(self, q, args=None):
        rows = self.sql(q, args)
        return rows[0][0] if rows else None

    def lsn(self):
        return lsn_int(self.one("SELECT pg_current_wal_lsn()::text"))

    def pgbench_argv(self, *args):
        return [pgbin("pgbench"), "-h", str(self.sock), "-p", str(self.port), "-U", "postgres", *args, "postgres"]

    def pgbench(self, *args):
        return run(self.pgbench_argv(*args))

    def size_bytes(self):
        """Size of the data directory without pg_wal: what a backup copies."""
        return self.one("SELECT sum(pg_database_size(datname))::bigint FROM pg_database")

    def drop_slot(self, slot):
        self.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                 "WHERE slot_name = %s AND NOT active", (slot,))

    def walsender_pids(self):
        try:
            return [r[0] for r in self.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender'")]
        except psycopg2.Error:
            return []


def parse_tps(out):
    for line in out.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise RuntimeError(f"no tps in pgbench output:\n{out}")


# ---------------------------------------------------------------- S3


def s3s_fs_bin():
    for cand in (os.environ.get("S3S_FS_BIN"), shutil.which("s3s-fs"),
                 os.path.join(os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo")), "bin", "s3s-fs")):
        if cand and os.path.isfile(cand):
            return cand
    sys.exit("bench: s3s-fs not found: run scripts/setup")


class S3Server:
    """s3s-fs on 127.0.0.1 with throwaway keys, as crates/pgpitr-testkit does.
    `name` is its directory under work (two servers need two); `same_keys_as`
    another server whose keys this one accepts too, so that one process
    reaches both (two regions of one account)."""

    def __init__(self, work, name="s3", same_keys_as=None):
        self.dir = Path(work) / name
        self.data = self.dir / "data"
        self.data.mkdir(parents=True)
        if same_keys_as is not None:
            self.access_key, self.secret_key = same_keys_as.access_key, same_keys_as.secret_key
        else:
            self.access_key = "AKBENCH" + secrets.token_hex(8).upper()
            self.secret_key = "secret-" + secrets.token_hex(16)
        self.log = open(self.dir / "s3s-fs.log", "w")
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [s3s_fs_bin(), "--host", "127.0.0.1", "--port", str(self.port), "--access-key", self.access_key,
                 "--secret-key", self.secret_key, str(self.data)],
                stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                    return
                except OSError:
                    if self.proc.poll() is not None:
                        break
                    time.sleep(0.02)
            self.proc.kill()
        sys.exit("bench: s3s-fs did not start")

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def bucket(self, name):
        (self.data / name).mkdir(parents=True, exist_ok=True)
        return name

    def repo_url(self, bucket, prefix):
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}&region=us-east-1&path-style=true"

    def env(self):
        e = dict(os.environ)
        e.update({"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                  "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
        return e

    def cpu(self):
        return proc_cpu(self.proc.pid) or 0.0

    def stored(self, bucket, prefix=""):
        return du(self.data / bucket / prefix)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------- receivers


class Receiver:
    """A long-running WAL receiver (pgpitr stream or pg_receivewal) started
    as a direct child, so /proc/<pid> is the receiver itself."""

    def __init__(self, name, kind, argv, env, app, slot, target, cleanup=None):
        self.name, self.kind, self.argv, self.env = name, kind, argv, env
        self.app, self.slot, self.target, self.cleanup = app, slot, target, cleanup
        self.proc = None
        self.errlog = None

    def start(self, logdir):
        self.errlog = open(Path(logdir) / f"{self.app}.log", "w")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self.errlog, stderr=self.errlog)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def cpu(self):
        return proc_cpu(self.pid)

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.errlog:
            self.errlog.close()
        if self.cleanup:
            self.cleanup()


def pgpitr_receiver(ctx, pg, name, repo_url, env, app, extra=()):
    argv = [ctx.pgpitr, "stream", "--repo", repo_url, "-d", pg.repl_conninfo(app), "--slot", app,
            "--application-name", app, *extra]
    return Receiver(name, "pgpitr", argv, env, app, app, repo_url)


def receivewal_receiver(ctx, pg, name, outdir, app, extra=()):
    os.makedirs(outdir, exist_ok=True)
    run([pgbin("pg_receivewal"), "--create-slot", "--if-not-exists", "--slot", app, "-d", pg.repl_conninfo(app)])
    argv = [pgbin("pg_receivewal"), "-D", str(outdir), "--slot", app, "-d", pg.repl_conninfo(app), "--no-loop",
            *extra]
    return Receiver(name, "pg_receivewal", argv, None, app, app, outdir,
                    cleanup=lambda: shutil.rmtree(outdir, ignore_errors=True))


def wait_streaming(pg, rcv, timeout=60):
    """Until the receiver's walsender streams and has sent what existed."""
    want = pg.lsn()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not rcv.alive():
            raise RuntimeError(f"{rcv.name} exited early; see its log in the work directory")
        row = pg.sql("SELECT state, sent_lsn::text FROM pg_stat_replication WHERE application_name = %s",
                     (rcv.app,))
        if row and row[0][0] == "streaming" and lsn_int(row[0][1]) >= want:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{rcv.name} did not start streaming within {timeout} s")


class Ticker:
    """Calls tick() every `interval` s on a thread of its own, on a fixed
    schedule (a slow tick does not shift the later ones), until stop()."""

    def __init__(self, interval):
        self.interval = interval
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self._t.start()
        return self

    def tick(self):
        raise NotImplementedError

    def _loop(self):
        nxt = time.monotonic()
        while not self._stop.is_set():
            self.tick()
            nxt += self.interval
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    @property
    def stopped(self):
        return self._stop.is_set()

    def stop(self):
        self._stop.set()
        self._t.join()


class ReplSampler(Ticker):
    """Every `interval` s: pg_current_wal_lsn() and, per application_name,
    flush_lsn from pg_stat_replication, on one persistent connection; plus
    pg_stat_archiver's last archived segment and any pids' RSS."""

    def __init__(self, pg, apps, interval=0.1, rss_pids=(), archiver=False):
        super().__init__(interval)
        self.pg, self.apps = pg, list(apps)
        self.rss_pids = list(rss_pids)
        self.archiver = archiver
        self.samples = []  # (t, current_lsn, {app: flush_lsn}, archived_wal, {pid: rss})
        self.conn = pg.connect()
        self.cur = None
        self.q = ("SELECT pg_current_wal_lsn()::text, (SELECT coalesce(json_object_agg(application_name, "
                  "flush_lsn::text), '{}') FROM pg_stat_replication)")
        if self.archiver:
            self.q += ", (SELECT last_archived_wal FROM pg_stat_archiver)"

    def tick(self):
        if self.cur is None:
            self.cur = self.conn.cursor()
        t = time.monotonic()
        self.cur.execute(self.q)
        row = self.cur.fetchone()
        flush = {a: lsn_int(row[1].get(a)) for a in self.apps}
        rss = {p: proc_status(p, "VmRSS") for p in self.rss_pids}
        self.samples.append((t, lsn_int(row[0]), flush, row[2] if self.archiver else None, rss))

    def stop(self):
        super().stop()
        self.conn.close()


def lag_series(samples, app, t_from, t_to):
    """For each sample taken in [t_from, t_to]: the time until the WAL that
    existed then (pg_current_wal_lsn) was reported flushed by `app`. Samples
    never covered are censored: (lower bound, True)."""
    out = []
    n = len(samples)
    j = 0
    for i in range(n):
        t, cur = samples[i][0], samples[i][1]
        if t < t_from or t > t_to:
            continue
        j = max(j, i)
        while j < n and (samples[j][2].get(app) is None or samples[j][2][app] < cur):
            j += 1
        if j < n:
            out.append((samples[j][0] - t, False))
        else:
            out.append((samples[-1][0] - t, True))
    return out


# ---------------------------------------------------------------- statistics


def pct(values, p):
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def lag_stats(series):
    """p50/p99/max of a lag series; `censored` is the share of samples never
    reported durable within the run (their lag is at least the value used)."""
    if not series:
        return None
    vals = [v for v, _ in series]
    cens = sum(1 for _, c in series if c)
    return {"p50": pct(vals, 50), "p99": pct(vals, 99), "max": max(vals), "n": len(vals),
            "censored": cens / len(vals)}


def summarize(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


# ---------------------------------------------------------------- context


class Context:
    """What every part gets: the mode's sizes, the work directory, the
    pgpitr binary copied into it (so the postgres user can run it and a
    rebuild during the run changes nothing), and the result record."""

    def __init__(self, part, mode, work, pgpitr, reps):
        self.part, self.mode, self.work, self.pgpitr, self.reps = part, mode, Path(work), pgpitr, reps
        self.quick = mode == "quick"
        self.result = {"part": part, "mode": mode, "pg_major": MAJOR,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "reps": reps, "commands": [], "notes": [], "skipped": [], "raw": [], "summary": {}}
        self.t0 = time.monotonic()
        self._key = None

    def key_env(self, env=None):
        """env (None: ours) plus PGPITR_KEY_FILE naming this part's key file
        ($WORK/pgpitr.key), made on first use: 64 hex digits, mode 0600 (pgpitr
        refuses more) and, under root, owned by postgres, because restored
        servers read it for wal-fetch (root reads it regardless). $WORK is
        0755, so postgres reaches it. Only the path ever goes on a command
        line or into the results."""
        if self._key is None:
            path = self.work / "pgpitr.key"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            os.chmod(path, 0o600)
            chown_postgres(path)
            self._key = path
        return dict(os.environ if env is None else env, PGPITR_KEY_FILE=str(self._key))

    def command(self, label, argv_or_text):
        text = argv_or_text if isinstance(argv_or_text, str) else shlex.join(str(a) for a in argv_or_text)
        text = text.replace(str(self.work), "$WORK")
        entry = {"label": label, "command": text}
        if entry not in self.result["commands"]:
            self.result["commands"].append(entry)

    def note(self, text):
        if text not in self.result["notes"]:
            self.result["notes"].append(text)
        log("note: " + text)

    def skip(self, what, why):
        self.result["skipped"].append({"what": what, "why": why})
        log(f"skipped {what}: {why}")

    def save(self, results_dir):
        self.result["duration_s"] = round(time.monotonic() - self.t0, 1)
        path = Path(results_dir) / result_file(self.part, MAJOR)
        path.parent.mkdir(parents=True, exist_ok=True)
        # No path of this machine in the results: the scratch root becomes $SCRATCH.
        text = json.dumps(self.result, indent=1, default=str).replace(str(self.work.parent), "$SCRATCH")
        path.write_text(text)
        log(f"{self.part}: results in {path}")


# What makes pgpitr encrypt, or refuse a plain repository: never inherited
# from the invoking shell (benchkit.__main__ drops them); the encrypted
# contenders get PGPITR_KEY_FILE from Context.key_env.
KEY_VARS = ("PGPITR_KEY_FILE", "PGPITR_KMS_KEY_ID")


def result_file(part, major):
    """15's results are <part>.json; another major's <part>-pg<major>.json."""
    return f"{part}.json" if major == DEBIAN_MAJOR else f"{part}-pg{major}.json"


def alternate(contenders, rep):
    """The contenders in a different order each repetition."""
    k = rep % len(contenders)
    order = contenders[k:] + contenders[:k]
    return order if rep % 2 == 0 else list(reversed(order))


def repetitions(ctx, part, contenders, one_run):
    """ctx.reps repetitions of one_run(contender, rep) in alternating order
    into ctx.result["raw"]; a failed run is recorded with its error and the
    others go on (one failure must not hide the other figures)."""
    for rep in range(ctx.reps):
        for c in alternate(contenders, rep):
            try:
                ctx.result["raw"].append(one_run(c, rep))
            except Exception as e:
                log(f"{part} rep {rep} {c} failed: {e}")
                ctx.result["raw"].append({"contender": c, "rep": rep, "error": str(e)[-800:]})
