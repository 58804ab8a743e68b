"""sync: primary TPC-B tps with no standby, with `pgpitr stream
--synchronous` (local directory and S3) as the synchronous standby, and with
`pg_receivewal --synchronous` as the synchronous standby."""

import shutil
import time

from .common import (Cluster, S3Server, alternate, log, parse_tps, pgpitr_receiver, receivewal_receiver, run,
                     summarize, wait_streaming)

CONTENDERS = ["none", "pgpitr-local", "pgpitr-s3", "pg_receivewal"]


def sizes(ctx):
    return {"scale": 10, "duration_s": 15} if ctx.quick else {"scale": 50, "duration_s": 30}


def main(ctx):
    sz = sizes(ctx)
    ctx.result["sizes"] = sz
    s3 = S3Server(ctx.work)
    s3.bucket("bench")
    (ctx.work / "logs").mkdir(exist_ok=True)
    pg = Cluster(ctx.work, "primary")
    ctx.command("load", f"pgbench -n -c 8 -j 2 -T {sz['duration_s']} (TPC-B, scale {sz['scale']}, "
                        f"synchronous_commit = on)")
    ctx.command("pgpitr-local", "pgpitr stream --synchronous --repo $WORK/runs/RUN -d 'host=127.0.0.1 port=PORT "
                                "user=postgres application_name=RUN' --slot RUN --application-name RUN")
    ctx.command("pgpitr-s3", "pgpitr stream --synchronous --repo 's3://bench/RUN?endpoint=...&region=us-east-1"
                             "&path-style=true' -d ... --slot RUN --application-name RUN")
    ctx.command("pg_receivewal", "pg_receivewal --synchronous -D $WORK/runs/RUN --slot RUN -d '... "
                                 "application_name=RUN' --no-loop")
    ctx.command("primary", "ALTER SYSTEM SET synchronous_standby_names = 'RUN'; SELECT pg_reload_conf()")
    ctx.note("Each receiver's row in pg_stat_replication must show sync_state = 'sync' before the load starts.")
    ctx.note("CPU ms/tx: CPU seconds of the receiver process (and, for pgpitr-s3, of the s3s-fs process) during "
             "the load, per committed transaction. Both run on the same cores as the primary and pgbench, so what "
             "they spend is taken from the primary's throughput.")
    try:
        pg.pgbench("-i", "-q", "-s", str(sz["scale"]))
        for rep in range(ctx.reps):
            for c in alternate(CONTENDERS, rep):
                try:
                    ctx.result["raw"].append(one_run(ctx, pg, s3, c, rep, sz))
                except Exception as e:  # keep going: one failure must not hide the other figures
                    log(f"sync rep {rep} {c} failed: {e}")
                    ctx.result["raw"].append({"contender": c, "rep": rep, "error": str(e)[-500:]})
    finally:
        pg.stop("immediate")
        s3.stop()
    out = {}
    for c in CONTENDERS:
        rows = [r for r in ctx.result["raw"] if r["contender"] == c and "tps" in r]
        out[c] = {"tps": summarize([r["tps"] for r in rows]),
                  "receiver_cpu_s": summarize([r.get("receiver_cpu_s") for r in rows]),
                  "receiver_cpu_ms_per_tx": summarize([r.get("receiver_cpu_ms_per_tx") for r in rows]),
                  "s3_server_cpu_ms_per_tx": summarize([r.get("s3_server_cpu_ms_per_tx") for r in rows]),
                  "errors": sum(1 for r in ctx.result["raw"] if r["contender"] == c and "error" in r)}
    ctx.result["summary"] = out


def one_run(ctx, pg, s3, c, rep, sz):
    pg.sql("VACUUM pgbench_branches, pgbench_tellers")
    pg.sql("TRUNCATE pgbench_history")
    pg.sql("CHECKPOINT")
    app = f"sync_{c.replace('-', '_')}_{rep}"
    rcv = None
    if c == "pgpitr-local":
        repo = ctx.work / "runs" / app
        rcv = pgpitr_receiver(ctx, pg, c, str(repo), None, app, ["--synchronous"])
        rcv.cleanup = lambda: shutil.rmtree(repo, ignore_errors=True)
    elif c == "pgpitr-s3":
        rcv = pgpitr_receiver(ctx, pg, c, s3.repo_url("bench", app), s3.env(), app, ["--synchronous"])
        rcv.cleanup = lambda: shutil.rmtree(s3.data / "bench" / app, ignore_errors=True)
    elif c == "pg_receivewal":
        rcv = receivewal_receiver(ctx, pg, c, ctx.work / "runs" / app, app, ["--synchronous"])
    try:
        cpu0 = None
        if rcv:
            rcv.start(ctx.work / "logs")
            wait_streaming(pg, rcv)
            pg.sql(f"ALTER SYSTEM SET synchronous_standby_names = '\"{app}\"'")
            pg.sql("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 30
            while pg.one("SELECT sync_state FROM pg_stat_replication WHERE application_name = %s", (app,)) != "sync":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{c} did not become the synchronous standby")
                time.sleep(0.1)
            cpu0 = rcv.cpu()
        s3cpu0 = s3.cpu()
        out = run(pg.pgbench_argv("-n", "-c", "8", "-j", "2", "-T", str(sz["duration_s"])))
        tps = parse_tps(out.stdout)
        rec = {"contender": c, "rep": rep, "tps": tps}
        txs = tps * sz["duration_s"]
        if rcv:
            rec["receiver_cpu_s"] = rcv.cpu() - cpu0
            rec["receiver_cpu_ms_per_tx"] = rec["receiver_cpu_s"] * 1000 / txs
        if c == "pgpitr-s3":
            # The S3 server is a process of its own on the same cores: what
            # it spends per transaction is part of what the standby costs.
            rec["s3_server_cpu_s"] = s3.cpu() - s3cpu0
            rec["s3_server_cpu_ms_per_tx"] = rec["s3_server_cpu_s"] * 1000 / txs
        log(f"sync rep {rep} {c}: {tps:.0f} tps")
        return rec
    finally:
        pg.sql("ALTER SYSTEM RESET synchronous_standby_names")
        pg.sql("SELECT pg_reload_conf()")
        if rcv:
            rcv.stop()
            pg.drop_slot(app)
