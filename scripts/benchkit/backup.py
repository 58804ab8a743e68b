"""backup: pgpitr backup into the repository (local directory and S3, each
plain and encrypted; lz4 by the server, and zstd -1 by the server and by
pgpitr into the local directory) vs pg_basebackup -Ft (plain, client-lz4,
server-lz4, server-zstd) to local disk vs a pgBackRest full backup (posix
repository, process-max=2, lz4), on a pgbench database. Per run: wall
time, MB/s (database size / wall time), CPU of the client process tree and
of the server's walsenders, peak RSS of the client process tree, stored
size."""

import json
import shutil

from . import peers
from .common import Cluster, S3Server, du, log, pgbin, repetitions, run, run_measured, summarize

# -enc: into a repository initialised with a key (issue 20: MB/s ≥ 0.9× plain).
PGPITR = ["pgpitr-local", "pgpitr-s3", "pgpitr-local-enc", "pgpitr-s3-enc", "pgpitr-local-server-zstd",
          "pgpitr-local-client-zstd"]
PGPITR_COMPRESS = {"pgpitr-local-server-zstd": ["--compress", "server-zstd"],
                   "pgpitr-local-client-zstd": ["--compress", "client-zstd"]}
BASEBACKUP = ["pg_basebackup", "pg_basebackup-client-lz4", "pg_basebackup-server-lz4", "pg_basebackup-server-zstd"]
PGBACKREST = ["pgbackrest"]
BB_COMPRESS = {"pg_basebackup": [], "pg_basebackup-client-lz4": ["--compress=client-lz4"],
               "pg_basebackup-server-lz4": ["--compress=server-lz4"],
               "pg_basebackup-server-zstd": ["--compress=server-zstd:level=1"]}


def sizes(ctx):
    return {"scale": 20} if ctx.quick else {"scale": 200}


def pgpitr_has(ctx, sub):
    r = run([ctx.pgpitr, sub, "--help"], check=False)
    return r.returncode == 0


def main(ctx):
    sz = sizes(ctx)
    ctx.result["sizes"] = sz
    s3 = S3Server(ctx.work)
    s3.bucket("bench")
    contenders = list(BASEBACKUP)
    if pgpitr_has(ctx, "backup"):
        contenders = PGPITR + contenders
    else:
        ctx.skip("pgpitr backup", "this pgpitr has no `backup` command yet (issue 4)")
    cmdline = {}
    brest = None
    if peers.available():
        brest = peers.PgBackRest(ctx.work)
        contenders += PGBACKREST
        cmdline = {"archive_mode": "on", "archive_command": brest.archive_command()}
    else:
        ctx.skip("pgbackrest", "pgbackrest is not installed (apt-get install pgbackrest failed)")
    pg = Cluster(ctx.work, "primary", cmdline=cmdline)
    ctx.result["contenders"] = contenders
    try:
        log(f"backup: pgbench -i -s {sz['scale']}")
        pg.pgbench("-i", "-q", "-s", str(sz["scale"]))
        pg.sql("VACUUM ANALYZE")
        pg.sql("CHECKPOINT")
        size = pg.size_bytes()
        ctx.result["database_bytes"] = size
        if brest:
            brest.configure(pg)
            brest.stanza_create()
        ctx.command("pgpitr", "pgpitr init --repo REPO -d 'host=127.0.0.1 port=PORT user=postgres' (not timed); "
                              "pgpitr backup --repo REPO -d 'host=127.0.0.1 port=PORT user=postgres' --checkpoint fast --json")
        ctx.command("pgpitr-local-enc, pgpitr-s3-enc", "the same two commands with PGPITR_KEY_FILE=$WORK/pgpitr.key "
                    "in their environment (a 256-bit key file, mode 0600): init makes the repository encrypted")
        for c, extra in PGPITR_COMPRESS.items():
            ctx.command(c, "pgpitr backup --repo $WORK/runs/RUN -d 'host=127.0.0.1 port=PORT user=postgres' "
                           f"--checkpoint fast --json {' '.join(extra)}  (zstd level 1, the default)")
        for c, extra in BB_COMPRESS.items():
            ctx.command(c, ["pg_basebackup", "-D", "$WORK/runs/RUN", "-Ft", "-c", "fast", "-d",
                            "host=127.0.0.1 port=PORT user=postgres", *extra])
        if brest:
            ctx.command("pgbackrest", "pgbackrest --stanza=bench --type=full backup  (repo1-path=$WORK/pgbackrest/repo, "
                                      "process-max=2, compress-type=lz4, start-fast=y; archive_command = "
                                      "'pgbackrest --stanza=bench archive-push %p')")
        ctx.note("MB/s = size of all databases (pg_database_size) / wall time. The database fits in the page "
                 "cache, so every contender reads it from memory: this measures the tools, not the disk.")
        ctx.note("CPU: 'client' is the backup process and every descendant it waited for (wait4 rusage); "
                 "'server' is the walsenders serving it (sampled every 100 ms from /proc). pgBackRest reads the "
                 "data directory itself, so its work is all 'client'.")
        ctx.note("Stored size: pgpitr = the repository (backup parts and the WAL the backup needs); "
                 "pg_basebackup = base.tar + pg_wal.tar (+ manifest); pgBackRest = the backup set (its WAL "
                 "archive not counted).")
        repetitions(ctx, "backup", contenders, lambda c, rep: one_run(ctx, pg, s3, brest, c, rep, size))
    finally:
        pg.stop("immediate")
        s3.stop()
    out = {}
    for c in contenders:
        rows = [r for r in ctx.result["raw"] if r["contender"] == c and "error" not in r]
        out[c] = {k: summarize([r[k] for r in rows]) for k in
                  ("wall_s", "mb_s", "client_cpu_s", "server_cpu_s", "peak_rss", "stored_bytes")}
        out[c]["errors"] = sum(1 for r in ctx.result["raw"] if r["contender"] == c and "error" in r)
    ctx.result["summary"] = out


def one_run(ctx, pg, s3, brest, c, rep, size):
    name = f"backup_{c.replace('-', '_')}_{rep}"
    target = ctx.work / "runs" / name
    conn = f"host=127.0.0.1 port={pg.port} user=postgres"
    env = None
    pg.sql("CHECKPOINT")
    if c.startswith("pgpitr"):
        if c.startswith("pgpitr-s3"):
            repo, env = s3.repo_url("bench", name), s3.env()
        else:
            repo = str(target)
        if c.endswith("-enc"):
            env = ctx.key_env(env)
        run([ctx.pgpitr, "init", "--repo", repo, "-d", conn], env=env)
        # --checkpoint fast like pg_basebackup -c fast and pgBackRest start-fast=y.
        argv = [ctx.pgpitr, "backup", "--repo", repo, "-d", conn, "--checkpoint", "fast", "--json",
                *PGPITR_COMPRESS.get(c, [])]
    elif c.startswith("pg_basebackup"):
        argv = [pgbin("pg_basebackup"), "-D", str(target), "-Ft", "-c", "fast", "-d", conn, *BB_COMPRESS[c]]
    else:
        argv = brest.argv("--type=full", "backup")
    m = run_measured(argv, env=env, extra_pids=lambda: peers.walsender_pids(pg))
    if m["code"] != 0:
        raise RuntimeError(f"{c} exited {m['code']}: {m['stderr'][-600:]}")
    if c.startswith("pgpitr-s3"):
        stored = s3.stored("bench", name)
        shutil.rmtree(s3.data / "bench" / name, ignore_errors=True)
    elif c == "pgbackrest":
        stored = brest.last_backup()["info"]["repository"]["delta"]
    else:
        stored = du(target)
        shutil.rmtree(target, ignore_errors=True)
    rec = {"contender": c, "rep": rep, "wall_s": m["wall_s"], "mb_s": size / 1e6 / m["wall_s"],
           "client_cpu_s": m["cpu_s"], "server_cpu_s": m["extra_cpu_s"], "peak_rss": m["peak_rss"],
           "stored_bytes": stored}
    if c.startswith("pgpitr"):
        try:
            rec["pgpitr_json"] = json.loads(m["stdout"])
        except ValueError:
            rec["pgpitr_stdout"] = m["stdout"][-2000:]
    log(f"backup rep {rep} {c}: {m['wall_s']:.1f} s, {rec['mb_s']:.0f} MB/s, client CPU {m['cpu_s']:.1f} s, "
        f"server CPU {m['extra_cpu_s']:.1f} s, peak RSS {m['peak_rss'] / 2**20:.0f} MiB, "
        f"stored {stored / 2**20:.0f} MiB")
    return rec

