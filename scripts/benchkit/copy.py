"""copy: pgpitr copy of an S3 repository to a second S3 server (another
region of the same account) vs an `aws s3 sync`-like baseline (list, then
GET + PUT of every object, 4 at a time; s3_sync_like.py), both from the same
source repository on server A into a fresh prefix on server B. Two s3s-fs
servers on 127.0.0.1 that accept the same keys.

The source: pgpitr stream into server A after pgbench -i, a pgpitr backup
with the stream running, then a TPC-B load for its WAL. Per run: wall time, bytes
copied (pgpitr: its --json copied_bytes; baseline: the bytes it read),
MB/s = bytes / wall time, CPU of the copying process and of both S3
servers, peak RSS, bytes stored in the target.

Then continuous copy lag (issue 21): per repetition, `pgpitr stream --repo A
--copy-to B --metrics-addr` from the same cluster into fresh prefixes on
both servers, a TPC-B load, and its /metrics scraped every 100 ms:
pgpitr_copy_lag_seconds p50/p99/max and pgpitr_copy_lag_bytes max under the
load, and the catch-up after it (until the stream holds all the load's WAL
and the copy lacks nothing)."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from .common import (repetitions, S3Server, Cluster, free_port, log, lsn_int, parse_tps, pct, pgpitr_receiver,
                     proc_cpu, proc_status, proc_tree, run, run_measured, summarize, wait_streaming, Ticker)

CONTENDERS = ["pgpitr-copy", "s3-sync-like"]
# The continuous copy (stream --copy-to): its raw records have "measure": "lag".
LAG = "pgpitr-copy-to"
LAG_INTERVAL_S = 0.1
# After the load: sampled at least this long, and until caught up for at
# most CATCHUP_TIMEOUT_S.
LAG_POST_S = 5
CATCHUP_TIMEOUT_S = 60
BUCKET = "bench"
SOURCE = "src"
SYNC_SCRIPT = Path(__file__).resolve().parent / "s3_sync_like.py"


def sizes(ctx):
    if ctx.quick:
        return {"scale": 20, "tpcb_s": 10, "lag_tpcb_s": 10}
    return {"scale": 200, "tpcb_s": 30, "lag_tpcb_s": 60}


def baseline_python():
    """The interpreter of scripts/setup's moto environment (it has boto3), or None."""
    d = Path(os.environ.get("PGPITR_MOTO_DIR") or Path.home() / ".local/share/pgpitr-moto")
    py = d / "bin" / "python"
    if py.is_file() and os.access(py, os.X_OK) and run([str(py), "-c", "import boto3"], check=False).returncode == 0:
        return str(py)
    return None


def pgpitr_has(ctx, sub):
    return run([ctx.pgpitr, sub, "--help"], check=False).returncode == 0


def stream_has_copy_to(ctx):
    r = run([ctx.pgpitr, "stream", "--help"], check=False)
    return r.returncode == 0 and "--copy-to" in r.stdout


def main(ctx):
    sz = sizes(ctx)
    ctx.result["sizes"] = sz
    lag_ok = stream_has_copy_to(ctx)
    if not lag_ok:
        ctx.skip("continuous copy lag (stream --copy-to)", "this pgpitr stream has no --copy-to")
    contenders = []
    if pgpitr_has(ctx, "copy"):
        contenders.append("pgpitr-copy")
    else:
        ctx.skip("pgpitr copy", "this pgpitr has no `copy` command")
    py = baseline_python()
    if py:
        contenders.append("s3-sync-like")
    else:
        ctx.skip("s3-sync-like", "no python with boto3 at ~/.local/share/pgpitr-moto/bin/python (scripts/setup "
                                 "makes it)")
    ctx.result["contenders"] = contenders
    if not pgpitr_has(ctx, "backup"):
        ctx.skip("copy", "this pgpitr has no `backup` command to build the source repository")
        return
    if not contenders:
        return
    # Run from $WORK, not from scripts/benchkit: there, this module would
    # shadow the standard library's `copy` for the script's own imports.
    sync_script = ctx.work / SYNC_SCRIPT.name
    shutil.copyfile(SYNC_SCRIPT, sync_script)
    (ctx.work / "logs").mkdir(exist_ok=True)
    a = S3Server(ctx.work, "s3-a")
    b = S3Server(ctx.work, "s3-b", same_keys_as=a)
    a.bucket(BUCKET)
    b.bucket(BUCKET)
    env = a.env()  # the same keys open both servers
    pg = Cluster(ctx.work, "primary")
    rcv = None
    try:
        src_url = a.repo_url(BUCKET, SOURCE)
        conn = f"host=127.0.0.1 port={pg.port} user=postgres"
        log(f"copy: pgbench -i -s {sz['scale']}")
        pg.pgbench("-i", "-q", "-s", str(sz["scale"]))
        pg.sql("VACUUM ANALYZE")
        pg_size = pg.size_bytes()
        rcv = pgpitr_receiver(ctx, pg, "source", src_url, env, "copy_source").start(ctx.work / "logs")
        wait_streaming(pg, rcv)
        run([ctx.pgpitr, "backup", "--repo", src_url, "-d", conn, "--checkpoint", "fast", "--json"], env=env)
        log(f"copy: pgbench -T {sz['tpcb_s']} for WAL")
        run(pg.pgbench_argv("-n", "-c", "4", "-j", "2", "-T", str(sz["tpcb_s"])))
        end = pg.lsn()
        pg.sql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 300
        while (lsn_int(pg.one("SELECT flush_lsn::text FROM pg_stat_replication WHERE application_name = %s",
                              (rcv.app,))) or 0) < end:
            if not rcv.alive() or time.monotonic() > deadline:
                raise RuntimeError("the source stream did not reach the end of the load")
            time.sleep(0.2)
        rcv.stop()
        rcv = None
        pg.drop_slot("copy_source")
        pg.stop("fast")
        src_bytes = a.stored(BUCKET, SOURCE)
        src_objects = sum(len(f) for _, _, f in os.walk(a.data / BUCKET / SOURCE))
        ctx.result.update({"source_bytes": src_bytes, "source_objects": src_objects,
                           "database_bytes": pg_size})
        log(f"copy: source repository {src_bytes / 2**20:.0f} MiB in {src_objects} objects")
        shown_a = "s3://bench/src?endpoint=http://127.0.0.1:PORT_A&region=us-east-1&path-style=true"
        shown_b = "s3://bench/RUN?endpoint=http://127.0.0.1:PORT_B&region=us-east-1&path-style=true"
        ctx.command("source (not timed)", f"pgpitr stream --repo {shown_a} -d CONN (running throughout); "
                                          f"pgbench -i -s {sz['scale']}; pgpitr backup --repo {shown_a} -d CONN "
                                          f"--checkpoint fast --json; pgbench -n -c 4 -j 2 -T {sz['tpcb_s']}")
        ctx.command("pgpitr-copy", f"pgpitr copy --from '{shown_a}' --to '{shown_b}' --json  (default --parallel 4)")
        ctx.command("s3-sync-like", "python scripts/benchkit/s3_sync_like.py http://127.0.0.1:PORT_A bench src "
                                    "http://127.0.0.1:PORT_B bench RUN --concurrency 4  (boto3: list_objects_v2, then "
                                    "get_object + put_object of each object, 4 at a time)")
        ctx.note("Two s3s-fs servers on this machine that accept the same keys (two regions of one account); "
                 "every run copies the same source repository into a fresh, empty prefix of server B, deleted "
                 "after the run. MB/s = the bytes the contender copied / its wall time: pgpitr's copied_bytes "
                 "(--json), the baseline's bytes read.")
        ctx.note("pgpitr copy does more than the baseline: it compares every object's CRC-32 as the target stored it "
                 "(a HEAD returning the checksum s3s-fs computed on arrival) with the source bytes', writes WAL one object at a time in LSN order (reading ahead and checking "
                 "--parallel at a time beside the writes; backup parts --parallel at a time) and each backup's "
                 "backup.json last, so the target is a consistent repository at every moment. It skips leases and leftovers the baseline copies.")
        ctx.note("The baseline holds whole objects in memory (no multipart) and does 4 at a time, pgpitr copy's "
                 "default --parallel; the AWS CLI's own default is 10 concurrent requests. CPU: 'client' is the "
                 "copying process, 'servers' both s3s-fs (sampled from /proc).")
        repetitions(ctx, "copy", contenders, lambda c, rep: one_run(ctx, a, b, env, [py, str(sync_script)], c, rep))
        if lag_ok:
            lag_part(ctx, pg, a, b, env, sz)
    finally:
        if rcv:
            rcv.stop()
        pg.stop("immediate")
        a.stop()
        b.stop()
    out = {}
    for c in contenders:
        rows = [r for r in ctx.result["raw"] if r["contender"] == c and "error" not in r]
        out[c] = {k: summarize([r[k] for r in rows]) for k in
                  ("wall_s", "bytes", "objects", "mb_s", "client_cpu_s", "servers_cpu_s", "peak_rss",
                   "stored_bytes")}
        out[c]["errors"] = sum(1 for r in ctx.result["raw"] if r["contender"] == c and "error" in r)
    lag = lag_summary(ctx)
    if lag:
        out[LAG] = lag
    ctx.result["summary"] = out


def one_run(ctx, a, b, env, sync, c, rep):
    prefix = f"copy_{c.replace('-', '_')}_{rep}"
    target = b.data / BUCKET / prefix
    shutil.rmtree(target, ignore_errors=True)
    if c == "pgpitr-copy":
        argv = [ctx.pgpitr, "copy", "--from", a.repo_url(BUCKET, SOURCE), "--to", b.repo_url(BUCKET, prefix),
                "--json"]
    else:
        argv = [*sync, a.endpoint, BUCKET, SOURCE, b.endpoint, BUCKET, prefix, "--concurrency", "4"]
    try:
        m = run_measured(argv, env=env, extra_pids=lambda: [a.proc.pid, b.proc.pid], timeout=3600)
        if m["code"] != 0:
            raise RuntimeError(f"{c} exited {m['code']}: {m['stderr'][-600:]}")
        stored = b.stored(BUCKET, prefix)
    finally:
        shutil.rmtree(target, ignore_errors=True)
    try:
        out = json.loads(m["stdout"])
    except ValueError:
        raise RuntimeError(f"{c} printed no JSON: {m['stdout'][-600:]}") from None
    if c == "pgpitr-copy":
        nbytes, nobj = out.get("copied_bytes"), out.get("copied_objects")
    else:
        nbytes, nobj = out.get("bytes"), out.get("objects")
    if not nbytes:
        raise RuntimeError(f"{c} copied nothing: {m['stdout'][-600:]}")
    rec = {"contender": c, "rep": rep, "wall_s": m["wall_s"], "bytes": nbytes, "objects": nobj,
           "mb_s": nbytes / 1e6 / m["wall_s"], "client_cpu_s": m["cpu_s"], "servers_cpu_s": m["extra_cpu_s"],
           "peak_rss": m["peak_rss"], "stored_bytes": stored, "output": out}
    log(f"copy rep {rep} {c}: {nbytes / 2**20:.0f} MiB in {nobj} objects, {m['wall_s']:.1f} s, "
        f"{rec['mb_s']:.0f} MB/s, client CPU {m['cpu_s']:.1f} s, servers CPU {m['extra_cpu_s']:.1f} s, "
        f"peak RSS {m['peak_rss'] / 2**20:.0f} MiB")
    return rec


# ---------------------------------------------------------------- continuous copy lag


def lag_part(ctx, pg, a, b, env, sz):
    """ctx.reps runs of stream --copy-to under TPC-B, on the cluster that
    made the source (started again) and the same two servers."""
    if not pg.running:
        pg.start()
    shown_a = "s3://bench/lag_a_REP?endpoint=http://127.0.0.1:PORT_A&region=us-east-1&path-style=true"
    shown_b = "s3://bench/lag_b_REP?endpoint=http://127.0.0.1:PORT_B&region=us-east-1&path-style=true"
    ctx.command("continuous copy", f"pgpitr stream --repo '{shown_a}' -d 'host=127.0.0.1 port=PORT user=postgres "
                                   "application_name=copy_lag_REP' --slot copy_lag_REP --application-name "
                                   f"copy_lag_REP --copy-to '{shown_b}' --metrics-addr 127.0.0.1:PORT_M  "
                                   "(fresh prefixes on both servers each run; stopped with SIGTERM)")
    ctx.command("continuous copy load", f"pgbench -n -c 8 -j 2 -T {sz['lag_tpcb_s']} (scale {sz['scale']}; before "
                                        "each run: TRUNCATE pgbench_history, VACUUM of the other pgbench tables "
                                        "and CHECKPOINT)")
    ctx.note("Continuous copy lag (pgpitr-copy-to): a `pgpitr stream --copy-to` of the same cluster into a fresh "
             "prefix on server A, copying to a fresh prefix on server B. Its /metrics is scraped every "
             f"{int(LAG_INTERVAL_S * 1000)} ms; p50/p99/max are of the pgpitr_copy_lag_seconds samples during the "
             "TPC-B load (the age of the oldest write the copy lacks at each scrape, 0 when in step: a gauge "
             "sampled, not a per-write latency), with the largest pgpitr_copy_lag_bytes. Catch-up: from the end of "
             "the load until a scrape shows pgpitr_stream_durable_lsn at the end of the load's WAL and "
             f"pgpitr_copy_lag_bytes 0 (sampled at least {LAG_POST_S} s after the load, given up after "
             f"{CATCHUP_TIMEOUT_S} s). The load starts once the stream streams and its start-up copy pass ended. "
             "CPU: the stream's process tree from the start of the load to the end of the sampling; servers: both "
             "s3s-fs.")
    for rep in range(ctx.reps):
        try:
            ctx.result["raw"].append(lag_run(ctx, pg, a, b, env, sz, rep))
        except Exception as e:
            log(f"copy lag rep {rep} failed: {e}")
            ctx.result["raw"].append({"contender": LAG, "measure": "lag", "rep": rep, "error": str(e)[-800:]})


METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)")


def parse_metrics(text):
    """{name: value} of an OpenMetrics text (labels dropped; the stream
    labels everything with its slot only)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = METRIC_RE.match(line)
        if m:
            try:
                out[m.group(1)] = float(m.group(2))
            except ValueError:
                pass
    return out


class MetricsSampler(Ticker):
    """Scrapes url every `interval` s: (t, copy lag s, copy lag bytes,
    stream durable LSN, copy pass running), t taken when the answer came."""

    def __init__(self, url, interval=LAG_INTERVAL_S):
        super().__init__(interval)
        self.url = url
        self.samples = []
        self.errors = 0
        self.last_error = None

    def scrape(self):
        with urllib.request.urlopen(self.url, timeout=2) as r:
            return parse_metrics(r.read().decode())

    def tick(self):
        try:
            m = self.scrape()
            self.samples.append((time.monotonic(), m.get("pgpitr_copy_lag_seconds"),
                                 m.get("pgpitr_copy_lag_bytes"), m.get("pgpitr_stream_durable_lsn"),
                                 m.get("pgpitr_copy_pass_running")))
        except Exception as e:  # counted; a scrape that failed is no sample
            self.errors += 1
            self.last_error = str(e)


def tree_cpu(pid):
    return sum(proc_cpu(p) or 0.0 for p in proc_tree(pid))


def lag_run(ctx, pg, a, b, env, sz, rep):
    app = f"copy_lag_{rep}"
    pa, pb = f"lag_a_{rep}", f"lag_b_{rep}"
    da, db = a.data / BUCKET / pa, b.data / BUCKET / pb
    for d in (da, db):
        shutil.rmtree(d, ignore_errors=True)
    pg.sql("TRUNCATE pgbench_history")
    pg.sql("VACUUM pgbench_accounts, pgbench_branches, pgbench_tellers")
    pg.sql("CHECKPOINT")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    rcv = pgpitr_receiver(ctx, pg, LAG, a.repo_url(BUCKET, pa), env, app,
                          extra=["--copy-to", b.repo_url(BUCKET, pb), "--metrics-addr", f"127.0.0.1:{port}"])
    rcv.start(ctx.work / "logs")
    sampler = None
    try:
        wait_streaming(pg, rcv)
        # The start-up copy pass (of a fresh repository: next to nothing) out
        # of the way, and the copy metrics there at all.
        probe = MetricsSampler(url)
        deadline = time.monotonic() + 60
        while True:
            if not rcv.alive():
                raise RuntimeError(f"{LAG} exited before the load; see {app}.log in the work directory")
            try:
                m = probe.scrape()
            except Exception as e:
                m, err = None, e
            if m is not None:
                if "pgpitr_copy_lag_seconds" not in m:
                    raise RuntimeError(f"{url} has no pgpitr_copy_lag_seconds")
                if not m.get("pgpitr_copy_pass_running") and "pgpitr_copy_last_pass_timestamp_seconds" in m:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the start-up copy pass did not end within 60 s (last scrape: "
                                   f"{'failed: ' + str(err) if m is None else m.get('pgpitr_copy_pass_running')})")
            time.sleep(0.1)
        sampler = MetricsSampler(url).start()
        time.sleep(1.0)
        cpu0, scpu0, lsn0, t0 = tree_cpu(rcv.pid), a.cpu() + b.cpu(), pg.lsn(), time.monotonic()
        out = run(pg.pgbench_argv("-n", "-c", "8", "-j", "2", "-T", str(sz["lag_tpcb_s"])))
        t_end, lsn_end = time.monotonic(), pg.lsn()
        tps = parse_tps(out.stdout)
        catchup = None
        while True:
            now = time.monotonic()
            if not rcv.alive():
                raise RuntimeError(f"{LAG} exited during the run; see {app}.log in the work directory")
            if catchup is None:
                for s in sampler.samples:
                    if s[0] >= t_end and s[2] == 0 and s[3] is not None and s[3] >= lsn_end:
                        catchup = s[0] - t_end
                        break
            if now - t_end >= LAG_POST_S and (catchup is not None or now - t_end >= CATCHUP_TIMEOUT_S):
                break
            time.sleep(0.05)
        cpu1, scpu1, t1 = tree_cpu(rcv.pid), a.cpu() + b.cpu(), time.monotonic()
        hwm = proc_status(rcv.pid, "VmHWM")
        sampler.stop()
        # SIGTERM: the stream waits (up to --shutdown-timeout) for the copy.
        ts = time.monotonic()
        rcv.proc.send_signal(signal.SIGTERM)
        try:
            code = rcv.proc.wait(120)
        except subprocess.TimeoutExpired:
            code = None
        stop_s = time.monotonic() - ts
        load = [s for s in sampler.samples if t0 <= s[0] <= t_end]
        secs = [s[1] for s in load if s[1] is not None]
        nbytes = [s[2] for s in load if s[2] is not None]
        post = [s for s in sampler.samples if s[0] > t_end]
        wal = lsn_end - lsn0
        rec = {
            "contender": LAG, "measure": "lag", "rep": rep,
            "load_s": t_end - t0, "tps": tps, "wal_bytes": wal, "wal_mb_s": wal / 1e6 / (t_end - t0),
            "samples": len(secs), "scrape_errors": sampler.errors,
            "lag_p50_s": pct(secs, 50), "lag_p99_s": pct(secs, 99), "lag_max_s": max(secs) if secs else None,
            "lag_max_bytes": max(nbytes) if nbytes else None,
            "lag_bytes_p99": pct(nbytes, 99),
            "in_step_share": (sum(1 for v in nbytes if v == 0) / len(nbytes)) if nbytes else None,
            "pass_ran_during_load": any(s[4] for s in load),
            "post_samples": len(post),
            "post_max_s": max((s[1] for s in post if s[1] is not None), default=None),
            "catchup_s": catchup,
            "cpu_s": cpu1 - cpu0, "window_s": t1 - t0,
            "cpu_s_per_gb": (cpu1 - cpu0) / (wal / 1e9) if wal else None,
            "servers_cpu_s": scpu1 - scpu0, "peak_rss": hwm,
            "exit_code": code, "stop_s": stop_s,
        }
        if code != 0:
            ctx.note(f"{LAG}: the stream exited {code} after SIGTERM in run {app} (see its log)")
        rec["primary_stored_bytes"] = a.stored(BUCKET, pa)
        rec["copy_stored_bytes"] = b.stored(BUCKET, pb)
        if not secs:
            raise RuntimeError(f"no metrics sample during the load ({sampler.errors} scrapes failed: "
                               f"{sampler.last_error})")
        log(f"copy lag rep {rep}: {wal / 1e6:.0f} MB WAL at {rec['wal_mb_s']:.0f} MB/s ({tps:.0f} tps), "
            f"copy lag p50 {rec['lag_p50_s']:.3f} s p99 {rec['lag_p99_s']:.3f} s max {rec['lag_max_s']:.3f} s, "
            f"max {rec['lag_max_bytes'] / 2**20:.1f} MiB behind, catch-up {catchup}, {len(secs)} samples, "
            f"CPU {rec['cpu_s']:.1f} s, exit {code} after {stop_s:.1f} s")
        return rec
    finally:
        if sampler and not sampler.stopped:
            sampler.stop()
        rcv.stop()
        pg.drop_slot(app)
        for d in (da, db):
            shutil.rmtree(d, ignore_errors=True)


def lag_summary(ctx):
    rows = [r for r in ctx.result["raw"] if r["contender"] == LAG and "error" not in r]
    errors = sum(1 for r in ctx.result["raw"] if r["contender"] == LAG and "error" in r)
    if not rows and not errors:
        return None
    out = {k: summarize([r.get(k) for r in rows]) for k in
           ("lag_p50_s", "lag_p99_s", "lag_max_s", "lag_max_bytes", "catchup_s", "samples", "tps", "wal_mb_s",
            "cpu_s", "cpu_s_per_gb", "servers_cpu_s", "peak_rss", "stop_s")}
    out.update({"measure": "lag", "runs": len(rows), "errors": errors,
                "catchup_missing": sum(1 for r in rows if r.get("catchup_s") is None),
                "bad_exits": sum(1 for r in rows if r.get("exit_code") != 0)})
    return out
