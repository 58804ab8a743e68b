"""incremental: incremental backups, and restores from a chain of them
(issue 23), on PostgreSQL 17 beside pgBackRest's block incremental, on the
same data in one run. A pgbench database (scale 300; --quick 30); between
backups 1% of pgbench_accounts' rows are updated (a contiguous range of aid
at a random place). Each contender takes a full backup, then six
incrementals (a chain of 7), then a full backup of the same data as the
last incremental; the contenders take their backups of each state one after
the other, so they see the same data. Then each restores the chain's newest
backup and that full backup, to the end of the backup (no WAL replay),
--reps times in alternating order.

Contenders: pgpitr-native (`backup --incremental`: UPLOAD_MANIFEST +
BASE_BACKUP INCREMENTAL), pgpitr-delta (`--incremental=delta`, the method
of 14 to 16: the server sends everything, pgpitr keeps the changed blocks),
pgbackrest-block (pgBackRest --type=incr with repo1-block=y,
repo1-bundle=y; posix repository, process-max=2, lz4)."""

import json
import os
import random
import shutil

from . import peers
from .common import MAJOR, Cluster, alternate, chown_postgres, log, run, run_measured, summarize

CHAIN = 7
CONTENDERS = ["pgpitr-native", "pgpitr-delta", "pgbackrest-block"]


def sizes(ctx):
    return {"scale": 30} if ctx.quick else {"scale": 300}


def pgbackrest_binary():
    """A pgBackRest that knows this major and has block incremental (2.46+):
    scripts/bench puts one in $PGPITR_BENCH_PGBACKREST."""
    return os.environ.get("PGPITR_BENCH_PGBACKREST") or shutil.which("pgbackrest")


def main(ctx):
    sz = sizes(ctx)
    ctx.result["sizes"] = sz
    contenders = list(CONTENDERS)
    if MAJOR < 17:
        contenders.remove("pgpitr-native")
        ctx.skip("pgpitr-native", f"native incremental backups need PostgreSQL 17 or later (this run: {MAJOR})")
    brest_bin = pgbackrest_binary()
    brest = None
    if brest_bin:
        brest = peers.PgBackRest(ctx.work, binary=brest_bin,
                                 extra={"repo1-bundle": "y", "repo1-block": "y"})
        ctx.result["pgbackrest"] = run([brest_bin, "version"], check=False).stdout.strip()
    else:
        contenders.remove("pgbackrest-block")
        ctx.skip("pgbackrest-block", "no pgBackRest with block incremental (2.46 or later) found")
    ctx.result["contenders"] = contenders
    cmdline = {"archive_command": brest.archive_command(), "archive_mode": "on"} if brest else {}
    conf = {"autovacuum": "off", **({"summarize_wal": "on"} if MAJOR >= 17 else {})}
    pg = Cluster(ctx.work, "primary", conf=conf, cmdline=cmdline)
    repos = {}
    try:
        log(f"incremental: pgbench -i -s {sz['scale']}")
        pg.pgbench("-i", "-q", "-s", str(sz["scale"]))
        pg.sql("VACUUM ANALYZE")
        pg.sql("CHECKPOINT")
        size = pg.size_bytes()
        ctx.result["database_bytes"] = size
        rows = sz["scale"] * 100000
        conn = f"host=127.0.0.1 port={pg.port} user=postgres"
        for c in contenders:
            if c.startswith("pgpitr"):
                repos[c] = ctx.work / "repos" / c
                run([ctx.pgpitr, "init", "--repo", str(repos[c]), "-d", conn])
        if brest:
            brest.configure(pg)
            brest.stanza_create()
        ctx.command("pgpitr-native", "pgpitr backup --repo REPO -d 'host=127.0.0.1 port=PORT user=postgres' "
                                     "--checkpoint fast --json [--incremental]")
        ctx.command("pgpitr-delta", "pgpitr backup --repo REPO -d 'host=127.0.0.1 port=PORT user=postgres' "
                                    "--checkpoint fast --json [--incremental=delta]")
        ctx.command("pgpitr restores", "pgpitr restore --repo REPO --pgdata DIR --backup ID --target immediate")
        if brest:
            ctx.command("pgbackrest-block", "pgbackrest --stanza=bench --type=full|incr backup  (repo1-bundle=y, "
                                            "repo1-block=y, process-max=2, compress-type=lz4, start-fast=y)")
            ctx.command("pgbackrest restores", "pgbackrest --stanza=bench --set=LABEL --type=immediate "
                                               "--pg1-path=DIR restore")
        ctx.note(f"Between backups: UPDATE pgbench_accounts SET abalance = abalance + 1 for 1% of the rows "
                 f"({rows // 100} of {rows}), a contiguous aid range at a random place; autovacuum off, so "
                 "that every contender sees the same pages changed. Updates spread at random over 1% of the "
                 "rows would touch about half of the table's pages (61 rows a page), for every tool alike.")
        ctx.note("Restore: to the end of the backup (no WAL replay), into an empty directory, synced; "
                 "the chain's newest backup against a full backup of the same data.")
        rng = random.Random(23)
        chains = {c: [] for c in contenders}
        for step in range(CHAIN + 1):
            if 0 < step < CHAIN:
                lo = rng.randrange(1, rows - rows // 100)
                pg.sql(f"UPDATE pgbench_accounts SET abalance = abalance + 1 "
                       f"WHERE aid BETWEEN {lo} AND {lo + rows // 100 - 1}")
                pg.sql("CHECKPOINT")
            kind = "full" if step in (0, CHAIN) else "incremental"
            for c in alternate(contenders, step):
                rec = backup(ctx, pg, brest, repos.get(c), c, kind, step, conn)
                ctx.result["raw"].append(rec)
                chains[c].append(rec)
        for rep in range(ctx.reps):
            for c in alternate(contenders, rep):
                for which in ("chain", "full"):
                    b = chains[c][CHAIN - 1] if which == "chain" else chains[c][CHAIN]
                    try:
                        ctx.result["raw"].append(restore(ctx, brest, repos.get(c), c, which, b, rep))
                    except Exception as e:
                        log(f"incremental restore {c} {which} rep {rep} failed: {e}")
                        ctx.result["raw"].append({"contender": c, "op": "restore", "which": which, "rep": rep,
                                                  "error": str(e)[-800:]})
    finally:
        pg.stop("immediate")
    summarize_all(ctx, contenders)


def backup(ctx, pg, brest, repo, c, kind, step, conn):
    if c.startswith("pgpitr"):
        argv = [ctx.pgpitr, "backup", "--repo", str(repo), "-d", conn, "--checkpoint", "fast", "--json"]
        if kind == "incremental":
            argv.append("--incremental" if c == "pgpitr-native" else "--incremental=delta")
    else:
        argv = brest.argv("--type=full" if kind == "full" else "--type=incr", "backup")
    m = run_measured(argv)
    if m["code"] != 0:
        raise RuntimeError(f"{c} {kind} backup exited {m['code']}: {m['stderr'][-600:]}")
    if c.startswith("pgpitr"):
        info = json.loads(m["stdout"])
        stored, ident = info["stored_bytes"], info["id"]
        link = info.get("incremental")
        if kind == "incremental" and not link:
            raise RuntimeError(f"{c}: step {step} was not taken as an incremental backup")
    else:
        last = brest.last_backup()
        stored, ident = last["info"]["repository"]["delta"], last["label"]
    log(f"incremental {c} {kind} {step}: {m['wall_s']:.1f} s, stored {stored / 2**20:.1f} MiB, "
        f"peak RSS {m['peak_rss'] / 2**20:.0f} MiB")
    return {"contender": c, "op": "backup", "kind": kind, "step": step, "id": ident, "wall_s": m["wall_s"],
            "cpu_s": m["cpu_s"], "server_cpu_s": m["extra_cpu_s"], "peak_rss": m["peak_rss"], "stored_bytes": stored}


def restore(ctx, brest, repo, c, which, b, rep):
    target = ctx.work / "restore" / f"{c}-{which}-{rep}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if c.startswith("pgpitr"):
        argv = [ctx.pgpitr, "restore", "--repo", str(repo), "--pgdata", str(target), "--backup", b["id"],
                "--target", "immediate"]
    else:
        target.mkdir(mode=0o700)
        chown_postgres(target)
        argv = brest.argv(f"--set={b['id']}", "--type=immediate", f"--pg1-path={target}", "restore")
    m = run_measured(argv)
    shutil.rmtree(target, ignore_errors=True)
    if m["code"] != 0:
        raise RuntimeError(f"{c} restore of {which} exited {m['code']}: {m['stderr'][-600:]}")
    log(f"incremental {c} restore {which} rep {rep}: {m['wall_s']:.1f} s, peak RSS {m['peak_rss'] / 2**20:.0f} MiB")
    return {"contender": c, "op": "restore", "which": which, "rep": rep, "wall_s": m["wall_s"], "cpu_s": m["cpu_s"],
            "peak_rss": m["peak_rss"]}


def summarize_all(ctx, contenders):
    raw = [r for r in ctx.result["raw"] if "error" not in r]
    out = {}
    for c in contenders:
        mine = [r for r in raw if r["contender"] == c]
        full = [r for r in mine if r["op"] == "backup" and r["kind"] == "full"]
        inc = [r for r in mine if r["op"] == "backup" and r["kind"] == "incremental"]
        s = {}
        for name, rows in (("full", full), ("incremental", inc)):
            s[name] = {k: summarize([r[k] for r in rows]) for k in ("wall_s", "stored_bytes", "peak_rss", "cpu_s")}
        for which in ("chain", "full"):
            rows = [r for r in mine if r["op"] == "restore" and r["which"] == which]
            s[f"restore_{which}"] = {k: summarize([r[k] for r in rows]) for k in ("wall_s", "peak_rss")}
        med = lambda d, k: (d.get(k) or {}).get("median")  # noqa: E731
        if med(s["full"], "stored_bytes") and med(s["incremental"], "stored_bytes"):
            s["size_ratio"] = med(s["incremental"], "stored_bytes") / med(s["full"], "stored_bytes")
        if med(s["full"], "wall_s") and med(s["incremental"], "wall_s"):
            s["time_ratio"] = med(s["incremental"], "wall_s") / med(s["full"], "wall_s")
        if med(s["restore_full"], "wall_s") and med(s["restore_chain"], "wall_s"):
            s["restore_ratio"] = med(s["restore_chain"], "wall_s") / med(s["restore_full"], "wall_s")
        s["errors"] = sum(1 for r in ctx.result["raw"] if r["contender"] == c and "error" in r)
        out[c] = s
    ctx.result["summary"] = out
