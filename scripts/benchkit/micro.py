"""micro: the criterion benchmarks of the pgpitr-benches package (object
container encode/decode, WAL record scan, backup part encode), collected
from criterion's estimates into MB/s per core."""

import json
import os
import subprocess
import time
from pathlib import Path

from .common import log


def target_dir(repo_root):
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], capture_output=True,
                         text=True, cwd=repo_root, check=True)
    return Path(json.loads(out.stdout)["target_directory"])


def main(ctx):
    root = Path(__file__).resolve().parents[2]
    args = ["--warm-up-time", "1", "--measurement-time", "2"] if ctx.quick else ["--warm-up-time", "3",
                                                                                "--measurement-time", "10"]
    argv = ["cargo", "bench", "--locked", "-p", "pgpitr-benches", "--", "--noplot", *args]
    ctx.command("criterion", " ".join(argv))
    ctx.note("Single-threaded: MB/s is per core (1 MB = 10^6 bytes). Median of criterion's samples, with the "
             "95% confidence interval of the median.")
    log("micro: " + " ".join(argv))
    crit = target_dir(root) / "criterion"
    started = time.time()
    r = subprocess.run(argv, cwd=root, text=True, capture_output=True)
    log_path = ctx.work / "criterion.log"
    log_path.write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"cargo bench failed ({r.returncode}); tail:\n{(r.stdout + r.stderr)[-3000:]}")
    ctx.result["criterion_notes"] = [ln for ln in (r.stdout + r.stderr).splitlines()
                                     if ln.startswith(("walscan:", "wal_object:", "backup_part:"))]
    rows = {}
    for bench_json in sorted(crit.glob("**/new/benchmark.json")):
        b = json.loads(bench_json.read_text())
        est = json.loads((bench_json.parent / "estimates.json").read_text())
        if os.path.getmtime(bench_json) < started - 1:
            continue  # left over from an earlier run of a benchmark that no longer exists
        tp = (b.get("throughput") or {}).get("Bytes")
        if not tp or not str(b.get("group_id", "")).startswith(("wal_object", "walscan", "backup_part")):
            continue
        med = est["median"]
        mbs = lambda ns: tp / ns * 1000.0  # noqa: E731  bytes per ns -> MB/s
        rows[b["full_id"]] = {"bytes": tp, "median_mb_s": mbs(med["point_estimate"]),
                              "ci_low_mb_s": mbs(med["confidence_interval"]["upper_bound"]),
                              "ci_high_mb_s": mbs(med["confidence_interval"]["lower_bound"])}
    if not rows:
        raise RuntimeError(f"no criterion results found under {crit}")
    ctx.result["summary"] = rows
    for k, v in rows.items():
        log(f"micro {k}: {v['median_mb_s']:.0f} MB/s")
