"""What the benchmark ran on, recorded with every part's results."""

import os
import platform
import shutil
import subprocess
from pathlib import Path

from .common import pgbin


def _out(argv, cwd=None):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=20)
        return (r.stdout or r.stderr).strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem():
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return None


def _disk(path):
    src = _out(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(path)])
    if not src:
        return None
    dev, _, fstype = src.partition(" ")
    name = os.path.basename(dev)
    base = name.rstrip("0123456789") if not name.startswith("nvme") else name.split("p")[0]
    rot = None
    try:
        rot = Path(f"/sys/block/{base}/queue/rotational").read_text().strip()
    except OSError:
        pass
    model = None
    try:
        model = Path(f"/sys/block/{base}/device/model").read_text().strip()
    except OSError:
        pass
    kind = {"0": "non-rotational", "1": "rotational"}.get(rot, "unknown kind")
    return f"{dev} ({fstype}, {kind}{', ' + model if model else ''})"


def describe(work, pgpitr, repo_root):
    commit = _out(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo_root)
    dirty = _out(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_root)
    barman = _out(["barman-cloud-wal-archive", "--version"]) if shutil.which("barman-cloud-wal-archive") else None
    s3s = shutil.which("s3s-fs") or os.path.join(os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo")),
                                                 "bin", "s3s-fs")
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory": _mem(),
        "kernel": platform.release(),
        "os": _out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "disk": _disk(work),
        "postgres": _out([pgbin("postgres"), "--version"]),
        "pgbackrest": _out(["pgbackrest", "version"]) if shutil.which("pgbackrest") else None,
        "barman_cloud": barman,
        "s3s_fs": _out([s3s, "--version"]),
        "pgpitr": _out([pgpitr, "--version"]),
        "pgpitr_commit": (commit + (" (with uncommitted changes)" if dirty else "")) if commit else None,
        "python": platform.python_version(),
        # Other work on the machine makes every figure noisier: say how busy it was.
        "loadavg_at_start": _loadavg(),
    }


def _loadavg():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return None
