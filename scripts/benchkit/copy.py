"""copy: pgpitr copy of an S3 repository to a second S3 server (another
region of the same account) vs an `aws s3 sync`-like baseline (list, then
GET + PUT of every object, 4 at a time; s3_sync_like.py), both from the same
source repository on server A into a fresh prefix on server B. Two s3s-fs
servers on 127.0.0.1 that accept the same keys.

The source: pgpitr stream into server A after pgbench -i, a pgpitr backup
with the stream running, then a TPC-B load for its WAL. Per run: wall time, bytes
copied (pgpitr: its --json copied_bytes; baseline: the bytes it read),
MB/s = bytes / wall time, CPU of the copying process and of both S3
servers, peak RSS, bytes stored in the target."""

import json
import os
import shutil
import time
from pathlib import Path

from .common import (S3Server, Cluster, alternate, log, lsn_int, pgpitr_receiver, run, run_measured, summarize,
                     wait_streaming)

CONTENDERS = ["pgpitr-copy", "s3-sync-like"]
BUCKET = "bench"
SOURCE = "src"
SYNC_SCRIPT = Path(__file__).resolve().parent / "s3_sync_like.py"


def sizes(ctx):
    return {"scale": 20, "tpcb_s": 10} if ctx.quick else {"scale": 200, "tpcb_s": 30}


def baseline_python():
    """The interpreter of scripts/setup's moto environment (it has boto3), or None."""
    d = Path(os.environ.get("PGPITR_MOTO_DIR") or Path.home() / ".local/share/pgpitr-moto")
    py = d / "bin" / "python"
    if py.is_file() and os.access(py, os.X_OK) and run([str(py), "-c", "import boto3"], check=False).returncode == 0:
        return str(py)
    return None


def pgpitr_has(ctx, sub):
    return run([ctx.pgpitr, sub, "--help"], check=False).returncode == 0


def main(ctx):
    sz = sizes(ctx)
    ctx.result["sizes"] = sz
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
        ctx.note("pgpitr copy does more than the baseline: it reads every object back from the target and compares "
                 "its CRC-32 with the source's, writes WAL one object at a time in LSN order (reading ahead and reading "
                 "back --parallel at a time beside the writes; backup parts --parallel at a time) and each backup's "
                 "backup.json last, so the target is a consistent repository at every moment. It skips leases and leftovers the baseline copies.")
        ctx.note("The baseline holds whole objects in memory (no multipart) and does 4 at a time, pgpitr copy's "
                 "default --parallel; the AWS CLI's own default is 10 concurrent requests. CPU: 'client' is the "
                 "copying process, 'servers' both s3s-fs (sampled from /proc).")
        for rep in range(ctx.reps):
            for c in alternate(contenders, rep):
                try:
                    ctx.result["raw"].append(one_run(ctx, a, b, env, [py, str(sync_script)], c, rep))
                except Exception as e:
                    log(f"copy rep {rep} {c} failed: {e}")
                    ctx.result["raw"].append({"contender": c, "rep": rep, "error": str(e)[-800:]})
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
