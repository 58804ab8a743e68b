"""pgBackRest set-up shared by the backup and restore parts, and the
walsender pids of a cluster read from /proc (no SQL, so sampling them every
100 ms costs the server nothing)."""

import json
import os
import shutil
from pathlib import Path

from .common import as_postgres, chown_postgres, run


class PgBackRest:
    """A posix repository in work/pgbackrest, process-max=2, lz4."""

    def __init__(self, work, stanza="bench", binary="pgbackrest", extra=None):
        self.dir = Path(work) / "pgbackrest"
        self.stanza = stanza
        self.binary = binary
        self.extra = extra or {}
        for d in (self.dir, self.dir / "repo", self.dir / "lock", self.dir / "spool"):
            d.mkdir(parents=True, exist_ok=True)
            chown_postgres(d)
        os.chmod(self.dir, 0o755)
        self.conf = self.dir / "pgbackrest.conf"

    def configure(self, pg):
        with open(self.conf, "w") as f:
            f.write(f"[global]\nrepo1-path={self.dir / 'repo'}\nrepo1-retention-full=100\nprocess-max=2\n"
                    f"compress-type=lz4\nstart-fast=y\nlog-level-console=warn\nlog-level-stderr=warn\n"
                    f"log-level-file=off\nlock-path={self.dir / 'lock'}\nspool-path={self.dir / 'spool'}\n"
                    + "".join(f"{k}={v}\n" for k, v in self.extra.items()) + "\n"
                    f"[{self.stanza}]\npg1-path={pg.data}\npg1-port={pg.port}\npg1-socket-path={pg.sock}\n"
                    f"pg1-user=postgres\n")
        os.chmod(self.conf, 0o644)

    def archive_command(self):
        return f"{self.binary} --config={self.conf} --stanza={self.stanza} archive-push %p"

    def argv(self, *args):
        return as_postgres([self.binary, f"--config={self.conf}", f"--stanza={self.stanza}", *args])

    def stanza_create(self):
        run(self.argv("stanza-create"))

    def info(self):
        out = run(self.argv("info", "--output=json")).stdout
        return json.loads(out)

    def last_backup(self):
        return self.info()[0]["backup"][-1]


def available():
    return shutil.which("pgbackrest") is not None


def version():
    return run(["pgbackrest", "version"], check=False).stdout.strip() or "unknown version"


def walsender_pids(pg):
    """Children of the postmaster whose title says walsender."""
    try:
        with open(pg.data / "postmaster.pid") as f:
            pm = int(f.readline())
    except (FileNotFoundError, ValueError, PermissionError):
        return []
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pm:
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if b"walsender" in f.read():
                    pids.append(int(d))
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
    return pids
