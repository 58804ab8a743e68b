"""archive: `pgpitr wal-push` as PostgreSQL's archive_command (issue 22)
vs pgBackRest `archive-push`, in segments per second.

One cluster writes N complete WAL segments (pgbench-like INSERTs, the
segments filled by the inserts themselves) that its archiver copies with
`cp %p $WORK/wal/%f` into a directory: the files exactly as PostgreSQL
hands them to an archive_command. Each contender then pushes every file of
that directory into a fresh repository, one process per file and one at a
time, as the archiver runs archive_command: pgpitr into a local directory
and into S3 (s3s-fs), pgBackRest into a posix repository (lz4, archive-async
off). Per run: wall time of the whole loop, segments/s, MB/s, CPU of the
pushing processes (wait4 rusage), bytes stored; pgpitr also pushes one file
a second time afterwards (idempotent: exit 0), outside the timing."""

import os
import shutil
import time

from . import peers
from .common import (repetitions, S3Server, Cluster, as_postgres, chown_postgres, du, log, lsn_int, run,
                     run_measured, summarize)

CONTENDERS = ["pgpitr-local", "pgpitr-s3", "pgbackrest-local"]
BUCKET = "bench"
# INSERTs of this many rows (~4 MB of WAL each) until the segments are
# filled; the table is emptied every TRUNCATE_EVERY segments to bound its size.
BATCH_ROWS = 20000
TRUNCATE_EVERY = 8
PUSH_TIMEOUT_S = 3600
# The archiver's loop: one process per file, one at a time, stopping at the
# first failure (with its exit code), as PostgreSQL would retry it.
PUSH_SH = """#!/bin/sh
# push.sh LIST CMD...: runs CMD FILE for every FILE listed in LIST, one at a time.
list=$1
shift
while IFS= read -r f; do
  "$@" "$f"
  rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "push.sh: $1 ... $f exited $rc" >&2
    exit "$rc"
  fi
done < "$list"
"""
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION",
          "AWS_EC2_METADATA_DISABLED")


def sizes(ctx):
    return {"segments": 64} if ctx.quick else {"segments": 256}


def pgpitr_has(ctx, sub):
    return run([ctx.pgpitr, sub, "--help"], check=False).returncode == 0


def main(ctx):
    sz = sizes(ctx)
    ctx.result["sizes"] = sz
    contenders = []
    if pgpitr_has(ctx, "wal-push"):
        contenders += ["pgpitr-local", "pgpitr-s3"]
    else:
        ctx.skip("pgpitr wal-push", "this pgpitr has no `wal-push` command yet (issue 22)")
    if peers.available():
        contenders.append("pgbackrest-local")
    else:
        ctx.skip("pgbackrest-local", "pgbackrest is not installed (apt-get install pgbackrest failed)")
    ctx.skip("pgbackrest-s3", "pgBackRest's S3 driver speaks HTTPS only (no release supports bare HTTP: "
                              "pgbackrest/pgbackrest#2612) and the s3s-fs server here serves plain HTTP; the backup "
                              "and restore parts use a posix pgBackRest repository too. pgpitr-s3 is compared with "
                              "pgbackrest-local")
    ctx.result["contenders"] = contenders
    if not contenders:
        return
    wal = ctx.work / "wal"
    runs = ctx.work / "runs"
    for d in (wal, runs):
        d.mkdir()
        os.chmod(d, 0o755)
        chown_postgres(d)
    push_sh = ctx.work / "push.sh"
    push_sh.write_text(PUSH_SH)
    os.chmod(push_sh, 0o755)
    s3 = S3Server(ctx.work)
    s3.bucket(BUCKET)
    pg = Cluster(ctx.work, "primary", cmdline={"archive_mode": "on", "archive_command": f"cp %p {wal}/%f"})
    try:
        files = make_segments(ctx, pg, wal, sz["segments"])
        seg_bytes = os.path.getsize(files[0])
        total = sum(os.path.getsize(f) for f in files)
        listing = ctx.work / "segments.txt"
        listing.write_text("".join(f"{f}\n" for f in files))
        os.chmod(listing, 0o644)
        ctx.result.update({"segments": len(files), "segment_bytes": seg_bytes, "wal_bytes": total,
                           "first_segment": files[0].name, "last_segment": files[-1].name})
        conn = f"host=127.0.0.1 port={pg.port} user=postgres"
        shown_s3 = "s3://bench/RUN?endpoint=http://127.0.0.1:PORT&region=us-east-1&path-style=true"
        ctx.command("WAL (not timed)", f"CREATE TABLE archive_load (aid bigint, bid int, abalance int, note text, "
                                       f"filler char(84)); SELECT pg_switch_wal(); then INSERT INTO archive_load "
                                       f"SELECT g, g % 100 + 1, (random() * 100000)::int - 50000, "
                                       f"md5(g::text || random()::text), '' FROM generate_series(K + 1, K + "
                                       f"{BATCH_ROWS}) g, repeated (TRUNCATE every {TRUNCATE_EVERY} segments) until "
                                       f"{sz['segments']} segments are complete; archive_command = "
                                       f"'cp %p $WORK/wal/%f'")
        ctx.command("every contender", "sh $WORK/push.sh $WORK/segments.txt CMD... (as the postgres user): runs "
                                       "`CMD... FILE` for each archived file in name order, one process at a time, "
                                       "stopping at the first non-zero exit; this whole loop is timed")
        ctx.command("pgpitr-local", "pgpitr init --repo $WORK/runs/RUN -d 'host=127.0.0.1 port=PORT user=postgres' "
                                    "(not timed); then per file: pgpitr wal-push --repo $WORK/runs/RUN "
                                    "$WORK/wal/FILE")
        ctx.command("pgpitr-s3", f"env AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_REGION=us-east-1 pgpitr "
                                 f"init --repo '{shown_s3}' -d 'host=127.0.0.1 port=PORT user=postgres' (not timed); "
                                 f"then per file: pgpitr wal-push --repo '{shown_s3}' $WORK/wal/FILE (same environment)")
        ctx.command("pgpitr idempotence (not timed)", "pgpitr wal-push --repo REPO $WORK/wal/FIRST_FILE again after "
                                                      "the loop: must exit 0 and store nothing new")
        if "pgbackrest-local" in contenders:
            ctx.command("pgbackrest-local", "pgbackrest --config=$WORK/runs/RUN/pgbackrest/pgbackrest.conf "
                                            "--stanza=bench stanza-create (not timed); then per file: pgbackrest "
                                            "--config=$WORK/runs/RUN/pgbackrest/pgbackrest.conf --stanza=bench "
                                            "archive-push $WORK/wal/FILE  (repo1-path=$WORK/runs/RUN/pgbackrest/repo, "
                                            "compress-type=lz4, pg1-path = the cluster's data directory; "
                                            "archive-async not set: off, its default)")
        ctx.note(f"{len(files)} WAL segments of {seg_bytes >> 20} MiB ({total / 1e6:.0f} MB), written by "
                 "INSERTs of pgbench_accounts-like rows (an md5 text column, a blank-padded filler) so they are "
                 "partly compressible, and filled by the inserts themselves: full segments as a busy server "
                 "archives them, not pg_switch_wal()'s zero-padded ones (one pg_switch_wal() before the first "
                 "only aligns the start). The server's own archiver copied them with `cp %p $WORK/wal/%f`; "
                 "every contender pushes those files, which sit in the page cache.")
        ctx.note("Each run pushes every file into a fresh, empty repository, one process per file and one at a "
                 "time, as PostgreSQL's archiver runs archive_command; segments/s = files / wall time of the "
                 "whole loop, MB/s = their bytes / the same time. Both run as the postgres user (the archiver's), "
                 "from one shell loop (the archiver starts each command through `sh -c`; the loop spares both "
                 "that same cost). The repository init (pgpitr init, pgbackrest stanza-create) is not timed.")
        ctx.note("pgBackRest: the posix repository and configuration the backup and restore parts use "
                 "(compress-type=lz4 rather than pgBackRest's default gz, since pgpitr stores lz4 too; "
                 "process-max=2 has no effect on a synchronous push), archive-async off (its default), so each "
                 "archive-push stores its file before exiting, as wal-push does. Each tool keeps its default "
                 "durability (file syncs) on the local disk.")
        ctx.note("CPU: the pushing processes and every descendant (wait4 rusage of the loop), per GB of WAL "
                 "pushed; for pgpitr-s3 the s3s-fs server's CPU over the loop is given apart. Stored: the "
                 "repository's bytes after the loop (metadata from init or stanza-create included), deleted "
                 "after each run.")
        repetitions(ctx, "archive", contenders, lambda c, rep: one_run(ctx, pg, s3, conn, c, rep, files, listing, push_sh, total))
    finally:
        pg.stop("immediate")
        s3.stop()
    out = {}
    for c in contenders:
        rows = [r for r in ctx.result["raw"] if r["contender"] == c and "error" not in r]
        out[c] = {k: summarize([r.get(k) for r in rows]) for k in
                  ("wall_s", "segments_s", "mb_s", "push_ms", "cpu_s", "cpu_s_per_gb", "s3_server_cpu_s",
                   "peak_rss", "stored_bytes", "stored_files")}
        out[c]["runs"] = len(rows)
        out[c]["errors"] = sum(1 for r in ctx.result["raw"] if r["contender"] == c and "error" in r)
        if c.startswith("pgpitr"):
            out[c]["repush_ok"] = sum(1 for r in rows if r.get("repush_ok"))
            # Runs whose second push of the same file stored anything more.
            out[c]["repush_added"] = sum(1 for r in rows if r.get("repush_stored_delta"))
    ctx.result["summary"] = out


def make_segments(ctx, pg, wal, n):
    """Fills n WAL segments with INSERTs, waits until the archiver has
    copied them all into wal/, and returns their paths in name order."""
    seg = int(pg.one("SELECT pg_size_bytes(current_setting('wal_segment_size'))"))
    tli = int(pg.one("SELECT timeline_id FROM pg_control_checkpoint()"))
    pg.sql("CREATE TABLE archive_load (aid bigint, bid int, abalance int, note text, filler char(84))")
    pg.sql("SELECT pg_switch_wal()")
    first = lsn_int(pg.one("SELECT pg_current_wal_insert_lsn()::text")) // seg
    log(f"archive: writing {n} WAL segments from segment {first:X}")
    t0 = time.monotonic()
    c = pg.connect()
    k = 0
    done = 0
    try:
        with c.cursor() as cur:
            while True:
                cur.execute("INSERT INTO archive_load SELECT g, g %% 100 + 1, (random() * 100000)::int - 50000, "
                            "md5(g::text || random()::text), '' FROM generate_series(%s, %s) g",
                            (k + 1, k + BATCH_ROWS))
                k += BATCH_ROWS
                cur.execute("SELECT pg_current_wal_insert_lsn()::text")
                now = lsn_int(cur.fetchone()[0]) // seg - first
                if now >= n:
                    break
                if now // TRUNCATE_EVERY > done // TRUNCATE_EVERY:
                    cur.execute("TRUNCATE archive_load")
                done = now
    finally:
        c.close()
    per_id = 0x100000000 // seg
    names = [f"{tli:08X}{s // per_id:08X}{s % per_id:08X}" for s in range(first, first + n)]
    log(f"archive: {n} segments written in {time.monotonic() - t0:.0f} s; waiting for the archiver "
        f"({names[0]}..{names[-1]})")
    deadline = time.monotonic() + 600
    while True:
        last = pg.one("SELECT last_archived_wal FROM pg_stat_archiver")
        if last and len(last) >= 24 and last[:24] >= names[-1]:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the archiver did not reach {names[-1]} within 10 minutes (last archived: {last})")
        time.sleep(0.2)
    pg.sql("TRUNCATE archive_load")
    pg.sql("CHECKPOINT")  # pg_wal may recycle what is archived now
    files = [wal / x for x in names]
    for f in files:
        if not f.is_file() or os.path.getsize(f) != seg:
            raise RuntimeError(f"{f.name} is missing from the archive directory or not {seg} bytes")
    return files


def one_run(ctx, pg, s3, conn, c, rep, files, listing, push_sh, total):
    name = f"archive_{c.replace('-', '_')}_{rep}"
    target = ctx.work / "runs" / name
    s3_cpu0 = None
    repush = None
    try:
        if c.startswith("pgpitr"):
            if c == "pgpitr-s3":
                repo, env = s3.repo_url(BUCKET, name), s3.env()
                # Explicitly: runuser need not pass the environment on.
                envargs = [f"{k}={env[k]}" for k in S3_ENV]
            else:
                repo, env, envargs = str(target), None, []
            run(as_postgres(["env", *envargs, ctx.pgpitr, "init", "--repo", repo, "-d", conn]), env=env)
            cmd = ["env", *envargs, ctx.pgpitr, "wal-push", "--repo", repo]
        else:
            env = None
            brest = peers.PgBackRest(target)
            brest.configure(pg)
            brest.stanza_create()
            repo = brest.dir / "repo"
            cmd = ["pgbackrest", f"--config={brest.conf}", f"--stanza={brest.stanza}", "archive-push"]
        if c == "pgpitr-s3":
            s3_cpu0 = s3.cpu()
        m = run_measured(as_postgres(["sh", str(push_sh), str(listing), *cmd]), env=env, timeout=PUSH_TIMEOUT_S)
        s3_cpu = s3.cpu() - s3_cpu0 if s3_cpu0 is not None else None
        if m["code"] != 0:
            raise RuntimeError(f"{c} exited {m['code']}: {m['stderr'][-600:]}")
        stored, nfiles = stored_of(s3, c, name, repo)
        if c.startswith("pgpitr"):
            # A retry of the archiver (the same file again) must succeed and add nothing.
            r = run(as_postgres([*cmd, str(files[0])]), check=False, env=env)
            again, _ = stored_of(s3, c, name, repo)
            repush = {"repush_ok": r.returncode == 0, "repush_code": r.returncode,
                      "repush_stored_delta": again - stored}
            if r.returncode != 0:
                raise RuntimeError(f"{c}: pushing {files[0].name} a second time exited {r.returncode}: "
                                   f"{r.stderr[-600:]}")
    finally:
        if c == "pgpitr-s3":
            shutil.rmtree(s3.data / BUCKET / name, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
    n = len(files)
    rec = {"contender": c, "rep": rep, "files": n, "wall_s": m["wall_s"], "segments_s": n / m["wall_s"],
           "mb_s": total / 1e6 / m["wall_s"], "push_ms": m["wall_s"] / n * 1000, "cpu_s": m["cpu_s"],
           "cpu_s_per_gb": m["cpu_s"] / (total / 1e9), "s3_server_cpu_s": s3_cpu, "peak_rss": m["peak_rss"],
           "stored_bytes": stored, "stored_files": nfiles, **(repush or {})}
    log(f"archive rep {rep} {c}: {n} files in {m['wall_s']:.2f} s = {rec['segments_s']:.1f} segments/s, "
        f"{rec['mb_s']:.0f} MB/s, CPU {m['cpu_s']:.2f} s ({rec['cpu_s_per_gb']:.1f} s/GB)"
        + (f", s3s-fs CPU {s3_cpu:.2f} s" if s3_cpu is not None else "")
        + f", stored {stored / 2**20:.0f} MiB in {nfiles} files"
        + (f", second push of {files[0].name}: exit {repush['repush_code']}, "
           f"{repush['repush_stored_delta']} bytes more" if repush else ""))
    return rec


def stored_of(s3, c, name, repo):
    """Bytes and files stored in c's repository."""
    d = s3.data / BUCKET / name if c == "pgpitr-s3" else repo
    nfiles = sum(len(f) for _, _, f in os.walk(d))
    return (s3.stored(BUCKET, name) if c == "pgpitr-s3" else du(d)), nfiles
