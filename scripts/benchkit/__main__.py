"""Entry point: `python3 -m benchkit PART ...` runs one part and writes its
results; `python3 -m benchkit report` writes BENCHMARKS.md from the results.
Use scripts/bench, which installs what is needed and builds pgpitr first."""

import argparse
import os
import shutil
import sys
import traceback
from pathlib import Path

from . import archive, backup, catalog, copy, incremental, machine, micro, report, restore, resume, rpo, stream, sync
from .common import KEY_VARS, Context, log

PARTS = {"micro": micro, "stream": stream, "rpo": rpo, "sync": sync, "backup": backup, "restore": restore,
         "resume": resume, "catalog": catalog, "copy": copy, "archive": archive, "incremental": incremental}


def main():
    ap = argparse.ArgumentParser(prog="benchkit")
    ap.add_argument("part", choices=list(PARTS) + ["report"])
    ap.add_argument("--mode", choices=["quick", "full"], default="quick")
    ap.add_argument("--work", help="scratch directory (deleted afterwards)")
    ap.add_argument("--pgpitr", help="the pgpitr binary to benchmark")
    ap.add_argument("--results", required=True, help="directory of <part>.json result files")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", help="report: the BENCHMARKS.md to write")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    root = Path(__file__).resolve().parents[2]
    # A key in our environment would make every unencrypted contender fail
    # (a plain repository refuses a key); the encrypted ones set their own.
    for k in KEY_VARS:
        os.environ.pop(k, None)
    if a.part == "report":
        report.write(Path(a.results), Path(a.out or root / "BENCHMARKS.md"))
        return 0
    work = Path(a.work) / a.part
    work.mkdir(parents=True)
    work.chmod(0o755)
    ctx = Context(a.part, a.mode, work, a.pgpitr, a.reps)
    ctx.result["machine"] = machine.describe(work, a.pgpitr, root)
    code = 0
    try:
        PARTS[a.part].main(ctx)
    except (Exception, KeyboardInterrupt) as e:  # the part could not run: say so in the results, never leave a stale table
        code = 1
        log(f"{a.part} failed: {e}")
        traceback.print_exc()
        ctx.result["failed"] = f"{type(e).__name__}: {e}"[-1500:]
    finally:
        ctx.save(a.results)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
