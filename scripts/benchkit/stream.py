"""stream: pgpitr stream (S3 and local directory, each plain and encrypted)
vs pg_receivewal (plain and --compress=lz4, local disk) under pgbench TPC-B
and a bulk INSERT.

Per run: receiver CPU seconds per GB of WAL (utime+stime from /proc/<pid>/stat
between the start of the load and the end of the run), peak RSS (VmHWM) and
median RSS under load, durable lag p50/p99/max (every 100 ms: how long until
the WAL that existed at that moment is reported flushed in
pg_stat_replication.flush_lsn for the receiver), and the time to catch up
after the load (flush_lsn reaching the WAL position at the end of the load).
"""

import json
import shlex
import shutil
import time

from .common import (MAJOR, Cluster, ReplSampler, S3Server, alternate, lag_series, lag_stats, log, lsn_int,
                     pgpitr_receiver, proc_status, receivewal_receiver, run, summarize, wait_streaming)

# -enc: the same repositories encrypted (issue 20: CPU per GB ≤ 1.1× plain).
CONTENDERS = ["pgpitr-s3", "pgpitr-local", "pgpitr-s3-enc", "pgpitr-local-enc", "pg_receivewal",
              "pg_receivewal-lz4"]
# pg_receivewal --compress=lz4 is 15 and later (14's --compress is a gzip level).
if MAJOR < 15:
    CONTENDERS.remove("pg_receivewal-lz4")
# pg_receivewal reports its flush position every --status-interval (10 s by
# default) and fsyncs only at the end of a segment; wait a bit more than one
# interval after the load so the report of the last completed segment is seen.
RECEIVEWAL_POST_S = 11
CATCHUP_TIMEOUT_S = 120


def sizes(ctx):
    if ctx.quick:
        return {"scale": 10, "tpcb_s": 15, "bulk_bytes": 200 << 20}
    return {"scale": 50, "tpcb_s": 60, "bulk_bytes": 2 << 30}


def make_receiver(ctx, pg, s3, contender, app):
    if contender.startswith("pgpitr"):
        if contender.startswith("pgpitr-s3"):
            repo, env, stored = s3.repo_url("bench", app), s3.env(), s3.data / "bench" / app
            shown = "s3://bench/RUN?endpoint=...&region=us-east-1&path-style=true"
        else:
            repo, env, stored = str(ctx.work / "runs" / app), None, ctx.work / "runs" / app
            shown = "$WORK/runs/RUN"
        # The stream initialises its new repository (as `pgpitr init` would),
        # encrypted when the key is in its environment; `list` gets it too (rcv.env).
        enc = contender.endswith("-enc")
        if enc:
            env = ctx.key_env(env)
        r = pgpitr_receiver(ctx, pg, contender, repo, env, app)
        r.cleanup = lambda: shutil.rmtree(stored, ignore_errors=True)
        ctx.command(contender, ("PGPITR_KEY_FILE=$WORK/pgpitr.key " if enc else "") + shlex.join(
            ["pgpitr", "stream", "--repo", shown, "-d", "host=127.0.0.1 port=PORT user=postgres application_name=RUN",
             "--slot", "RUN", "--application-name", "RUN"]))
        return r
    extra = ["--compress=lz4"] if contender == "pg_receivewal-lz4" else []
    ctx.command(contender, ["pg_receivewal", "-D", "$WORK/runs/RUN", "--slot", "RUN", "-d",
                            "host=127.0.0.1 port=PORT user=postgres application_name=RUN", "--no-loop", *extra])
    return receivewal_receiver(ctx, pg, contender, ctx.work / "runs" / app, app, extra)


def one_run(ctx, pg, s3, contender, workload, rep, sz, bulk_rows):
    app = f"{workload}_{contender.replace('-', '_')}_{rep}"
    # Same starting state for everyone: a checkpoint (so full-page images
    # follow, as in production) and for the bulk load an empty table.
    # Autovacuum is off for the pgbench tables: left to itself it vacuumed
    # pgbench_accounts during whichever run crossed its threshold, and that
    # run's WAL per transaction went from ~1.6 kB to 2.5-4 kB (vacuum records
    # and full-page images), changing its CPU per GB by up to 45%. Vacuuming
    # before every run gives every contender the same table state.
    if workload == "bulk":
        pg.sql("TRUNCATE bulk")
    else:
        pg.sql("TRUNCATE pgbench_history")
        pg.sql("VACUUM pgbench_accounts, pgbench_branches, pgbench_tellers")
    pg.sql("CHECKPOINT")
    rcv = make_receiver(ctx, pg, s3, contender, app).start(ctx.work / "logs")
    sampler = None
    try:
        wait_streaming(pg, rcv)
        sampler = ReplSampler(pg, [app], 0.1, rss_pids=[rcv.pid]).start()
        time.sleep(1.0)
        cpu0, s3cpu0, lsn0, t0 = rcv.cpu(), s3.cpu(), pg.lsn(), time.monotonic()
        if workload == "tpcb":
            out = run(pg.pgbench_argv("-n", "-c", "8", "-j", "2", "-T", str(sz["tpcb_s"])))
            tps = float([ln for ln in out.stdout.splitlines() if ln.startswith("tps = ")][0].split()[2])
        else:
            pg.sql("INSERT INTO bulk SELECT g, md5(g::text), repeat(md5(g::text), 4) "
                   "FROM generate_series(1, %s) g", (bulk_rows,))
            tps = None
        t_end, lsn_end = time.monotonic(), pg.lsn()
        catchup = None
        deadline = t_end + (CATCHUP_TIMEOUT_S if rcv.kind == "pgpitr" else RECEIVEWAL_POST_S)
        while time.monotonic() < deadline:
            if not rcv.alive():
                raise RuntimeError(f"{contender} exited during the run")
            s = sampler.samples[-1] if sampler.samples else None
            if catchup is None and s and s[2].get(app) is not None and s[2][app] >= lsn_end:
                catchup = s[0] - t_end
                if rcv.kind == "pgpitr":
                    break
            time.sleep(0.05)
        cpu1, s3cpu1, t1 = rcv.cpu(), s3.cpu(), time.monotonic()
        hwm = proc_status(rcv.pid, "VmHWM")
        time.sleep(0.15)
        sampler.stop()
        repo_ok = None
        if rcv.kind == "pgpitr":
            # Cross-check the reported flush position against the repository itself.
            reported = max((x[2].get(app) or 0) for x in sampler.samples)
            lst = run([ctx.pgpitr, "list", "--repo", rcv.target, "--json"], env=rcv.env, check=False)
            try:
                ends = [lsn_int(t["end_lsn"]) for t in json.loads(lst.stdout)["timelines"]]
                repo_ok = bool(ends) and max(ends) >= reported
            except (ValueError, KeyError, TypeError):
                repo_ok = None
            if repo_ok is False:
                ctx.note(f"{contender}: the repository ended before the flush position reported to the server "
                         f"in run {app} (durability contract!)")
        series = lag_series(sampler.samples, app, t0, t_end)
        rss_load = [s[4].get(rcv.pid) for s in sampler.samples if t0 <= s[0] <= t_end and s[4].get(rcv.pid)]
        wal = lsn_end - lsn0
        rec = {
            "contender": contender, "workload": workload, "rep": rep,
            "wal_bytes": wal, "load_s": t_end - t0, "wal_mb_s": wal / 1e6 / (t_end - t0),
            "tps": tps,
            "cpu_s": cpu1 - cpu0, "cpu_s_per_gb": (cpu1 - cpu0) / (wal / 1e9), "window_s": t1 - t0,
            "s3_server_cpu_s_per_gb": (s3cpu1 - s3cpu0) / (wal / 1e9) if contender.startswith("pgpitr-s3") else None,
            "peak_rss": hwm, "median_rss_under_load": sorted(rss_load)[len(rss_load) // 2] if rss_load else None,
            "lag": lag_stats(series), "catchup_s": catchup, "repo_covers_reported_flush": repo_ok,
        }
        log(f"stream {workload} rep {rep} {contender}: {wal / 1e6:.0f} MB WAL at {rec['wal_mb_s']:.0f} MB/s, "
            f"{rec['cpu_s_per_gb']:.2f} CPU s/GB, HWM {hwm / 2**20 if hwm else 0:.1f} MiB, lag {rec['lag']}, "
            f"catch-up {catchup}")
        return rec
    finally:
        if sampler and not sampler.stopped:
            sampler.stop()
        rcv.stop()
        pg.drop_slot(app)


def main(ctx):
    sz = sizes(ctx)
    ctx.result["sizes"] = sz
    s3 = S3Server(ctx.work)
    s3.bucket("bench")
    (ctx.work / "logs").mkdir(exist_ok=True)
    pg = Cluster(ctx.work, "primary")
    try:
        log(f"stream: pgbench -i -s {sz['scale']}")
        pg.pgbench("-i", "-q", "-s", str(sz["scale"]))
        for t in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"):
            pg.sql(f"ALTER TABLE {t} SET (autovacuum_enabled = false)")
        pg.sql("CREATE TABLE bulk (id bigint, a text, b text) WITH (autovacuum_enabled = false)")
        l0 = pg.lsn()
        pg.sql("INSERT INTO bulk SELECT g, md5(g::text), repeat(md5(g::text), 4) FROM generate_series(1, 20000) g")
        per_row = (pg.lsn() - l0) / 20000
        bulk_rows = int(sz["bulk_bytes"] / per_row)
        ctx.result["bulk_rows"] = bulk_rows
        ctx.command("TPC-B load", f"pgbench -n -c 8 -j 2 -T {sz['tpcb_s']} (scale {sz['scale']}; before each "
                                  "run: TRUNCATE pgbench_history, VACUUM of the other pgbench tables, whose "
                                  "autovacuum is off, and CHECKPOINT)")
        ctx.command("bulk load", f"INSERT INTO bulk SELECT g, md5(g::text), repeat(md5(g::text), 4) "
                                 f"FROM generate_series(1, {bulk_rows}) g  -- about {sz['bulk_bytes'] >> 20} MiB of WAL")
        ctx.note("Durable lag: every 100 ms the primary's pg_current_wal_lsn() and each receiver's flush_lsn "
                 "from pg_stat_replication are sampled; a sample's lag is the time until flush_lsn passed the "
                 "WAL position of that sample (100 ms resolution). pgpitr reports flush only once WAL is durable "
                 "in the repository (fsynced file / acknowledged PUT), on every advance.")
        ctx.note(f"pg_receivewal without --synchronous fsyncs only when a segment is complete and reports its "
                 f"flush position every --status-interval (10 s default); its lag is what it reports to the server. "
                 f"The run is followed for {RECEIVEWAL_POST_S} s after the load; samples never reported flushed "
                 f"count with the time they waited (a lower bound, share given as 'censored').")
        ctx.note("CPU is the receiver process only (all threads). For pgpitr-s3 the S3 server (s3s-fs, same "
                 "machine) used more CPU, given separately.")
        ctx.note("pgpitr-*-enc: the same stream into a repository it initialises encrypted (PGPITR_KEY_FILE "
                 "naming a 256-bit key file; AES-256-GCM after compression), in the same repetitions as the "
                 "plain ones.")
        for rep in range(ctx.reps):
            for workload in ("tpcb", "bulk"):
                for c in alternate(CONTENDERS, rep):
                    try:
                        ctx.result["raw"].append(one_run(ctx, pg, s3, c, workload, rep, sz, bulk_rows))
                    except Exception as e:  # keep going: one failure must not hide the other figures
                        log(f"stream {workload} rep {rep} {c} failed: {e}")
                        ctx.result["raw"].append({"contender": c, "workload": workload, "rep": rep,
                                                  "error": str(e)[-500:]})
    finally:
        pg.stop("immediate")
        s3.stop()
    summarise(ctx)


def summarise(ctx):
    out = {}
    for workload in ("tpcb", "bulk"):
        for c in CONTENDERS:
            rows = [r for r in ctx.result["raw"]
                    if r["contender"] == c and r["workload"] == workload and "error" not in r]
            errors = sum(1 for r in ctx.result["raw"]
                         if r["contender"] == c and r["workload"] == workload and "error" in r)
            if not rows and not errors:
                continue
            lag = [r["lag"] for r in rows if r["lag"]]
            out[f"{workload}/{c}"] = {
                "wal_mb_s": summarize([r["wal_mb_s"] for r in rows]),
                "tps": summarize([r["tps"] for r in rows]),
                "cpu_s_per_gb": summarize([r["cpu_s_per_gb"] for r in rows]),
                "s3_server_cpu_s_per_gb": summarize([r["s3_server_cpu_s_per_gb"] for r in rows]),
                "peak_rss": summarize([r["peak_rss"] for r in rows]),
                "median_rss_under_load": summarize([r["median_rss_under_load"] for r in rows]),
                "lag_p50": summarize([x["p50"] for x in lag]),
                "lag_p99": summarize([x["p99"] for x in lag]),
                "lag_max": summarize([x["max"] for x in lag]),
                "censored": summarize([x["censored"] for x in lag]),
                "catchup_s": summarize([r["catchup_s"] for r in rows]),
                "catchup_missing": sum(1 for r in rows if r["catchup_s"] is None),
                "errors": errors,
                "repo_checked": sum(1 for r in rows if r.get("repo_covers_reported_flush") is not None),
                "repo_behind_reported": sum(1 for r in rows if r.get("repo_covers_reported_flush") is False),
            }
    ctx.result["summary"] = out
