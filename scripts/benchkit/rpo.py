"""rpo: one row committed every 100 ms on an otherwise idle server; for each
commit, the time from COMMIT returning to the receiver's flush_lsn in
pg_stat_replication passing it (polled every 10 ms), or for
barman-cloud-wal-archive (archive_command with archive_timeout) to
pg_stat_archiver reporting its segment archived.

The contenders run side by side on the same primary and see the same
commits: at 10 commits per second they compete for nothing, and every one of
them is measured against exactly the same WAL.
"""

import shutil
import subprocess
import threading
import time

from .common import (Cluster, S3Server, lag_stats, log, lsn_int, pgpitr_receiver, receivewal_receiver, summarize,
                     wait_streaming)

BASE = ["pgpitr-local", "pgpitr-s3", "pg_receivewal", "pg_receivewal-sync"]


def sizes(ctx):
    if ctx.quick:
        return {"duration_s": 30, "archive_timeout_s": 10}
    return {"duration_s": 90, "archive_timeout_s": 60}


def barman_available():
    return shutil.which("barman-cloud-wal-archive") is not None


def barman_command(s3, prefix):
    env = f"AWS_ACCESS_KEY_ID={s3.access_key} AWS_SECRET_ACCESS_KEY={s3.secret_key} AWS_DEFAULT_REGION=us-east-1"
    return f"env {env} barman-cloud-wal-archive --endpoint-url {s3.endpoint} s3://barman/{prefix} primary %p"


def main(ctx):
    sz = sizes(ctx)
    ctx.result["sizes"] = sz
    s3 = S3Server(ctx.work)
    s3.bucket("bench")
    (ctx.work / "logs").mkdir(exist_ok=True)
    barman = barman_available()
    conf = {}
    if barman:
        s3.bucket("barman")
        # A trial upload of a small file with a WAL name, into a prefix of its own.
        probe = ctx.work / "probe" / "000000010000000000000001"
        probe.parent.mkdir()
        probe.write_bytes(b"\0" * 8192)
        r = subprocess.run(["barman-cloud-wal-archive", "--endpoint-url", s3.endpoint, "s3://barman/probe", "primary",
                            str(probe)], capture_output=True, text=True, env=s3.env())
        if r.returncode != 0:
            ctx.skip("barman-cloud", f"barman-cloud-wal-archive cannot upload to s3s-fs: {r.stderr.strip()[-300:]}")
            barman = False
    else:
        ctx.skip("barman-cloud", "barman-cloud-wal-archive is not installed (apt-get install barman-cli-cloud failed)")
    if barman:
        conf = {"archive_mode": "on", "archive_timeout": f"{sz['archive_timeout_s']}s",
                "archive_command": barman_command(s3, "rpo-0")}
    pg = Cluster(ctx.work, "primary", conf=conf)
    contenders = BASE + (["barman-cloud"] if barman else [])
    ctx.result["contenders"] = contenders
    seg_size = int(pg.one("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"))
    ctx.command("pgpitr-local", "pgpitr stream --repo $WORK/runs/RUN -d 'host=127.0.0.1 port=PORT user=postgres "
                                "application_name=RUN' --slot RUN --application-name RUN   (default --flush-interval 1s)")
    ctx.command("pgpitr-s3", "pgpitr stream --repo 's3://bench/RUN?endpoint=http://127.0.0.1:S3PORT&region=us-east-1"
                             "&path-style=true' -d ... --slot RUN --application-name RUN")
    ctx.command("pg_receivewal", "pg_receivewal -D $WORK/runs/RUN --slot RUN -d '... application_name=RUN' --no-loop")
    ctx.command("pg_receivewal-sync", "pg_receivewal -D $WORK/runs/RUN --slot RUN -d '...' --no-loop --synchronous"
                                      "   (flushes on every write; not listed in synchronous_standby_names)")
    if barman:
        ctx.command("barman-cloud", f"archive_mode = on, archive_timeout = {sz['archive_timeout_s']}s, archive_command = "
                                    f"'barman-cloud-wal-archive --endpoint-url http://127.0.0.1:S3PORT "
                                    f"s3://barman/RUN primary %p' (credentials from the environment)")
    ctx.command("workload", "INSERT INTO rpo(v) VALUES (1) every 100 ms (autocommit), then pg_current_wal_lsn()")
    ctx.note("Latency of a commit = time from COMMIT returning until the receiver's flush_lsn in "
             "pg_stat_replication (polled every 10 ms) passes pg_current_wal_lsn() read right after the commit; "
             "for barman-cloud, until pg_stat_archiver.last_archived_wal reaches the commit's segment. Resolution "
             "about 10 ms.")
    ctx.note("pg_receivewal without --synchronous fsyncs only complete segments and reports every 10 s; on an idle "
             "server its segment completes only when something switches it (here archive_timeout, when barman runs).")
    if ctx.quick and barman:
        ctx.note(f"Quick mode uses archive_timeout = {sz['archive_timeout_s']} s; the full run uses 60 s, a common "
                 "production value. barman-cloud's RPO is bounded by archive_timeout plus one upload.")
    pg.sql("CREATE TABLE rpo (id bigserial PRIMARY KEY, v int, t timestamptz DEFAULT clock_timestamp())")
    try:
        for rep in range(ctx.reps):
            ctx.result["raw"].extend(one_rep(ctx, pg, s3, rep, sz, contenders, barman, seg_size))
    finally:
        pg.stop("immediate")
        s3.stop()
    out = {}
    for c in contenders:
        rows = [r for r in ctx.result["raw"] if r["contender"] == c and r.get("lat")]
        out[c] = {k: summarize([r["lat"][k] for r in rows]) for k in ("p50", "p99", "max", "censored")}
        out[c]["commits"] = sum(r["lat"]["n"] for r in rows)
    ctx.result["summary"] = out


def seg_end(walname, seg_size):
    if not walname or len(walname) != 24:
        return None
    per = 0x100000000 // seg_size
    segno = int(walname[8:16], 16) * per + int(walname[16:24], 16)
    return (segno + 1) * seg_size


def one_rep(ctx, pg, s3, rep, sz, contenders, barman, seg_size):
    if barman:
        pg.sql("ALTER SYSTEM SET archive_command = %s", (barman_command(s3, f"rpo-{rep}"),))
        pg.sql("SELECT pg_reload_conf()")
    pg.sql("SELECT pg_switch_wal()")
    pg.sql("CHECKPOINT")
    rcvs = []
    apps = {}
    for c in contenders:
        if c == "barman-cloud":
            continue
        app = f"rpo_{c.replace('-', '_')}_{rep}"
        apps[c] = app
        if c == "pgpitr-local":
            repo = ctx.work / "runs" / app
            r = pgpitr_receiver(ctx, pg, c, str(repo), None, app)
            r.cleanup = (lambda p: lambda: shutil.rmtree(p, ignore_errors=True))(repo)
        elif c == "pgpitr-s3":
            r = pgpitr_receiver(ctx, pg, c, s3.repo_url("bench", app), s3.env(), app)
        else:
            extra = ["--synchronous"] if c == "pg_receivewal-sync" else []
            r = receivewal_receiver(ctx, pg, c, ctx.work / "runs" / app, app, extra)
        rcvs.append(r.start(ctx.work / "logs"))
    try:
        for r in rcvs:
            wait_streaming(pg, r)
        time.sleep(2)
        polls = []  # (t, {app: flush}, archived_end)
        stop = threading.Event()

        def poll():
            c = pg.connect()
            cur = c.cursor()
            while not stop.is_set():
                cur.execute("SELECT (SELECT coalesce(json_object_agg(application_name, flush_lsn::text), '{}') "
                            "FROM pg_stat_replication), (SELECT last_archived_wal FROM pg_stat_archiver)")
                flush, archived = cur.fetchone()
                polls.append((time.monotonic(), {a: lsn_int(v) for a, v in flush.items()}, seg_end(archived, seg_size)))
                stop.wait(0.01)
            c.close()

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        commits = []  # (t_start, t_commit, lsn)
        conn = pg.connect()
        cur = conn.cursor()
        t_next = time.monotonic()
        t_stop = t_next + sz["duration_s"]
        while t_next < t_stop:
            time.sleep(max(0.0, t_next - time.monotonic()))
            ts = time.monotonic()
            cur.execute("INSERT INTO rpo(v) VALUES (1)")
            tc = time.monotonic()
            cur.execute("SELECT pg_current_wal_lsn()::text")
            commits.append((ts, tc, lsn_int(cur.fetchone()[0])))
            t_next += 0.1
        conn.close()
        last = commits[-1][2]
        # Wait for every contender to cover the last commit, within reason.
        settle = sz["archive_timeout_s"] + 15 if barman else 15
        deadline = time.monotonic() + settle

        def covered(p):
            ok = all(p[1].get(a) is not None and p[1][a] >= last for a in apps.values())
            return ok and (not barman or (p[2] is not None and p[2] >= last))

        while time.monotonic() < deadline and not (polls and covered(polls[-1])):
            time.sleep(0.1)
        stop.set()
        th.join()
    finally:
        for r in rcvs:
            r.stop()
            pg.drop_slot(r.slot)
        shutil.rmtree(s3.data / "bench", ignore_errors=True)
        s3.bucket("bench")

    out = []
    for c in contenders:
        lat = []
        i0 = 0
        for ts, tc, lsn in commits:
            while i0 < len(polls) and polls[i0][0] < ts:
                i0 += 1
            found = None
            for p in polls[i0:]:
                d = p[2] if c == "barman-cloud" else p[1].get(apps[c])
                if d is not None and d >= lsn:
                    found = p[0]
                    break
            if found is None:
                lat.append((polls[-1][0] - tc, True))
            else:
                lat.append((max(0.0, found - tc), False))
        st = lag_stats(lat)
        log(f"rpo rep {rep} {c}: p50 {st['p50']:.3f} s, p99 {st['p99']:.3f} s, max {st['max']:.3f} s, "
            f"censored {st['censored']:.0%}")
        out.append({"contender": c, "rep": rep, "lat": st})
    return out

