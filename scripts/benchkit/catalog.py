"""catalog: what reading the repository costs as it grows. `list --json`,
`restore --dry-run` to an early and a late target, `expire --dry-run` and
`verify --backup`, on an S3 repository (s3s-fs) of 1,000, 10,000 and
100,000 WAL objects (16 MiB segments), with the same distance from the
chosen backup to the target at every size. Per command: the wall time
(median of the repetitions) and the storage requests, which pgpitr counts
itself (`PGPITR_LOG=requests=debug`: every page of a listing, every GET).

The repository: a real cluster streamed into it with one real base backup
(`pgpitr stream`, `pgpitr backup`), then grown by `catalog-gen`
(benches/catalog_gen.rs): synthetic but well-formed segments after the
real WAL, written straight into s3s-fs's directory, and copies of the real
backup moved along the WAL (their parts hard links to the real one's)."""

import json
import re
import time

import datetime
from pathlib import Path

from .common import Cluster, S3Server, log, lsn_int, pgpitr_receiver, run, summarize, wait_streaming

# Backup to target, in segments (one commit a minute per generated segment).
DISTANCE = 50
REQUESTS = re.compile(r"storage requests: (.*)$", re.M)


def sizes(ctx):
    return [1000, 10000] if ctx.quick else [1000, 10000, 100000]


def requests_of(stderr):
    m = REQUESTS.findall(stderr)
    if not m:
        raise RuntimeError(f"pgpitr printed no request count:\n{stderr[-2000:]}")
    return sum(int(kv.split("=")[1]) for kv in m[-1].split())


def measured(ctx, label, argv, env, ok_codes=(0,)):
    """Runs argv reps times; the median wall time and the requests of one run."""
    times, reqs, out = [], None, None
    e = dict(env)
    e["PGPITR_LOG"] = "warn,requests=debug"
    for _ in range(ctx.reps):
        t0 = time.monotonic()
        p = run(argv, check=False, env=e)
        times.append(time.monotonic() - t0)
        if p.returncode not in ok_codes:
            raise RuntimeError(f"{label}: exit {p.returncode}: {p.stderr[-2000:]}")
        reqs, out = requests_of(p.stderr), p.stdout
    ctx.command(label, argv)
    return {"s": summarize(times)["median"], "requests": reqs}, out


def main(ctx):
    gen = str(Path(ctx.pgpitr).with_name("catalog-gen"))
    s3 = S3Server(ctx.work)
    s3.bucket("bench")
    url, env = s3.repo_url("bench", "cat"), s3.env()
    repo_dir = s3.data / "bench" / "cat"
    ctx.result["sizes"] = {"WAL objects": sizes(ctx), "backup to target (segments)": DISTANCE}

    # The real part: a cluster, its WAL and one base backup.
    pg = Cluster(ctx.work, "source")
    try:
        pg.pgbench("-i", "-q", "-s", "1")
        r = pgpitr_receiver(ctx, pg, "pgpitr-s3", url, env, "catalog").start(ctx.work)
        try:
            wait_streaming(pg, r)
            conn = f"host=127.0.0.1 port={pg.port} user=postgres"
            run([ctx.pgpitr, "backup", "--repo", url, "-d", conn, "--checkpoint", "fast"], env=env)
            switched = pg.one("SELECT pg_switch_wal()::text")
            end = pg.lsn()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = json.loads(run([ctx.pgpitr, "list", "--json", "--repo", url], env=env).stdout)
                if st["timelines"] and lsn_int(st["timelines"][0]["end_lsn"]) >= end:
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"the stream did not store the WAL up to {switched}")
        finally:
            r.stop()
    finally:
        pg.stop()

    results = {}
    have = count_segments(repo_dir)
    for n, size in enumerate(sizes(ctx)):
        grow = size - have
        # Backups 2·DISTANCE into the first growth (the early targets' backup)
        # and 2·DISTANCE before the end (the late targets').
        marks = [2 * DISTANCE] if n == 0 else []
        marks.append(grow - 2 * DISTANCE)
        log(f"catalog: growing to {size} WAL objects (+{grow})")
        t0 = time.monotonic()
        run([gen, "--repo", str(repo_dir), "--segments", str(grow)] + [a for m in marks for a in ("--backup-at", str(m))])
        ctx.note(f"catalog-gen wrote {grow} segments in {time.monotonic() - t0:.1f} s")
        have = count_segments(repo_dir)
        results[size] = measure(ctx, url, env)
        log(f"catalog: {size}: {results[size]}")
    ctx.result["raw"] = results
    first, last = sizes(ctx)[0], sizes(ctx)[-1]
    ctx.result["summary"] = {
        "by_size": results,
        "ratio": {op: round(results[last][op]["s"] / results[first][op]["s"], 2) for op in results[first]},
        "request_ratio": {op: round(results[last][op]["requests"] / max(1, results[first][op]["requests"]), 2)
                          for op in results[first]},
    }
    s3.stop()


def count_segments(repo_dir):
    return sum(1 for p in (repo_dir / "wal").rglob("*") if p.is_file() and "." not in p.name)


def measure(ctx, url, env):
    listing, out = measured(ctx, "list --json", [ctx.pgpitr, "list", "--json", "--repo", url], env)
    st = json.loads(out)
    backups = [b for b in st["backups"] if b["status"] == "complete"]
    # The first copy (early targets) and the newest (late targets).
    early_b, late_b = backups[1], backups[-1]

    def target(b):
        stop = datetime.datetime.fromisoformat(b["stop_time"])
        return (stop + datetime.timedelta(minutes=DISTANCE, seconds=30)).isoformat()

    out = {"list": listing}
    for name, b in (("restore_early", early_b), ("restore_late", late_b)):
        dest = ctx.work / f"restore-{name}"
        argv = [ctx.pgpitr, "restore", "--dry-run", "--repo", url, "--pgdata", str(dest), "--target-time", target(b)]
        out[name], _ = measured(ctx, f"restore --dry-run ({name.split('_')[1]} target)", argv, env)
    keep = str(len(backups) - 1)
    out["expire"], _ = measured(ctx, "expire --dry-run", [ctx.pgpitr, "expire", "--dry-run", "--repo", url,
                                                         "--keep-backups", keep], env)
    out["verify_backup"], _ = measured(ctx, "verify --backup", [ctx.pgpitr, "verify", "--repo", url, "--backup",
                                                               late_b["id"]], env)
    return out

