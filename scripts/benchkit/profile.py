"""Profiles `pgpitr stream` (or pg_receivewal, for comparison) under one
load: prints receiver CPU seconds per GB of WAL, peak RSS and catch-up time,
then where the CPU went (perf's top symbols, or strace's syscall counts).

    python3 -m benchkit.profile WORKLOAD RECEIVER [--tool T] [-- EXTRA STREAM ARGS]

WORKLOAD: tpcb (pgbench TPC-B, 8 clients, 15 s) | bulk (INSERT of ~350 MB
of WAL) | sync (TPC-B with the receiver as the synchronous standby).
RECEIVER: local | s3 (pgpitr stream) | receivewal | receivewal-lz4.
--tool: perf (flat profile, default) | perf-g (with DWARF call graphs) |
stat (counts of the syscalls that matter, from tracepoints: little overhead) |
strace (syscall counts and times) | none (just the figures, no profiler overhead).
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .common import (Cluster, S3Server, lsn_int, parse_tps, pgpitr_receiver, proc_status, receivewal_receiver, run,
                     wait_streaming)


# The syscalls of a receiver's loop, counted by --tool stat.
STAT_SYSCALLS = ["fdatasync", "fsync", "pwrite64", "write", "recvfrom", "sendto", "epoll_wait", "pselect6", "poll",
                 "futex"]
# With --target s3: s3s-fs writes each object (and two metadata files) to a
# temporary file renamed into place, so renames count its files.
STAT_SYSCALLS_S3 = ["rename", "renameat", "renameat2", "unlink", "unlinkat", "openat", "write", "futex"]


def machine_cpu():
    """(busy, total) CPU seconds of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = v[3] + v[4]
    return (sum(v) - idle) / tick, sum(v) / tick


class Ctx:
    def __init__(self, pgpitr):
        self.pgpitr = pgpitr


def main():
    ap = argparse.ArgumentParser(prog="benchkit.profile")
    ap.add_argument("workload", choices=["tpcb", "bulk", "sync"])
    ap.add_argument("receiver", choices=["local", "s3", "receivewal", "receivewal-lz4"])
    ap.add_argument("--tool", choices=["perf", "perf-g", "stat", "strace", "none"], default="perf")
    ap.add_argument("--pgpitr", required=True)
    ap.add_argument("--target", choices=["receiver", "s3"], default="receiver",
                    help="the process to profile: the receiver, or the s3s-fs server")
    ap.add_argument("--out", default=".", help="where perf.data / strace.txt go")
    ap.add_argument("--rows", type=int, default=1500000, help="rows of the bulk INSERT (1.5 M is ~350 MB of WAL)")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    a = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    work = tempfile.mkdtemp(prefix="pgpitr-profile.", dir=os.environ.get("TMPDIR", "/var/tmp"))
    os.chmod(work, 0o755)
    os.makedirs(os.path.join(work, "logs"))
    s3 = S3Server(work)
    s3.bucket("bench")
    pg = Cluster(work, "primary")
    ctx = Ctx(a.pgpitr)
    if a.workload == "sync":
        extra.append("--synchronous")
    try:
        pg.pgbench("-i", "-q", "-s", "10")
        pg.sql("CREATE TABLE bulk (id bigint, a text, b text)")
        pg.sql("CHECKPOINT")
        if a.receiver.startswith("receivewal"):
            lz = ["--compress=lz4"] if a.receiver == "receivewal-lz4" else []
            r = receivewal_receiver(ctx, pg, a.receiver, os.path.join(work, "rw"), "prof", lz + extra)
        elif a.receiver == "local":
            r = pgpitr_receiver(ctx, pg, "local", os.path.join(work, "repo"), None, "prof", extra)
        else:
            r = pgpitr_receiver(ctx, pg, "s3", s3.repo_url("bench", "prof"), s3.env(), "prof", extra)
        r.start(os.path.join(work, "logs"))
        wait_streaming(pg, r)
        out = os.path.abspath(a.out)
        pid = s3.proc.pid if a.target == "s3" else r.pid
        if a.tool == "none":
            prof = None
        elif a.tool == "strace":
            prof = subprocess.Popen(["strace", "-c", "-f", "-o", os.path.join(out, "strace.txt"), "-p", str(pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif a.tool == "stat":
            calls = STAT_SYSCALLS_S3 if a.target == "s3" else STAT_SYSCALLS
            events = ",".join(["context-switches"] + [f"syscalls:sys_enter_{c}" for c in calls])
            prof = subprocess.Popen(["perf", "stat", "-e", events, "-o", os.path.join(out, "stat.txt"), "-p",
                                     str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            g = ["-g", "--call-graph", "dwarf,32768"] if a.tool == "perf-g" else []
            prof = subprocess.Popen(["perf", "record", "-F", "1999", *g, "-o", os.path.join(out, "perf.data"), "-p",
                                     str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        if a.workload == "sync":
            pg.sql("ALTER SYSTEM SET synchronous_standby_names = 'prof'")
            pg.sql("SELECT pg_reload_conf()")
            time.sleep(1)
        c0, s0, m0, l0, t0 = r.cpu(), s3.cpu(), machine_cpu(), pg.lsn(), time.monotonic()
        tps = None
        if a.workload == "bulk":
            pg.sql("INSERT INTO bulk SELECT g, md5(g::text), repeat(md5(g::text), 4) "
                   f"FROM generate_series(1, {a.rows}) g")
        else:
            tps = parse_tps(run(pg.pgbench_argv("-n", "-c", "8", "-j", "2", "-T", "15")).stdout)
        l1, t1 = pg.lsn(), time.monotonic()
        col = "sent_lsn" if a.receiver.startswith("receivewal") and a.workload != "sync" else "flush_lsn"
        while time.monotonic() - t1 < 120:
            f = pg.one(f"SELECT {col}::text FROM pg_stat_replication WHERE application_name = 'prof'")
            if f and lsn_int(f) >= l1:
                break
            time.sleep(0.05)
        catchup = time.monotonic() - t1
        c1, s1, m1 = r.cpu(), s3.cpu(), machine_cpu()
        hwm = proc_status(r.pid, "VmHWM")
        if a.workload == "sync":
            pg.sql("ALTER SYSTEM RESET synchronous_standby_names")
            pg.sql("SELECT pg_reload_conf()")
        if prof:
            prof.send_signal(signal.SIGINT)
            prof.wait()
        # Before stop(): it removes pg_receivewal's directory.
        stored = sum(os.path.getsize(os.path.join(d, f)) for sub in ("rw", "repo", "s3")
                     for d, _, fs in os.walk(os.path.join(work, sub)) for f in fs)
        r.stop()
        wal = l1 - l0
        print(f"{a.workload} {a.receiver} {' '.join(extra)}: {wal / 1e6:.0f} MB of WAL in {t1 - t0:.1f} s"
              + (f" ({tps:.0f} tps)" if tps else "")
              + f"; receiver CPU {c1 - c0:.2f} s = {(c1 - c0) / (wal / 1e9):.2f} s/GB; VmHWM {hwm / 2**20:.1f} MiB; "
                f"{col} caught up {catchup:.2f} s after the load; {stored / 1e6:.0f} MB stored in all; "
                f"s3s-fs CPU {s1 - s0:.2f} s; machine busy {m1[0] - m0[0]:.1f} of {m1[1] - m0[1]:.1f} CPU s")
    finally:
        pg.stop("immediate")
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    if a.tool in ("perf", "perf-g"):
        data = os.path.join(os.path.abspath(a.out), "perf.data")
        for sort in ("dso", "symbol"):
            rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort, "--stdio"],
                                 capture_output=True, text=True)
            lines = [ln.rstrip()[:120] for ln in rep.stdout.splitlines() if ln.strip() and ln.lstrip()[:1].isdigit()]
            print(f"--- perf top by {sort}")
            print("\n".join(lines[: 6 if sort == "dso" else 25]))
    elif a.tool == "stat":
        print(f"--- perf stat (per transaction at {tps:.0f} tps)" if tps else "--- perf stat")
        with open(os.path.join(os.path.abspath(a.out), "stat.txt")) as f:
            for ln in f:
                parts = ln.split()
                if len(parts) >= 2 and parts[0].replace(",", "").isdigit():
                    n = int(parts[0].replace(",", ""))
                    per = f"  {n / (tps * (t1 - t0)):.2f}/tx" if tps else ""
                    print(f"{n:>12,}  {parts[1]}{per}")
    elif a.tool == "strace":
        print("--- strace -c")
        with open(os.path.join(os.path.abspath(a.out), "strace.txt")) as f:
            print("".join(f.readlines()[:16]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
