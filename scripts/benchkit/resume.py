"""resume: what merging the unfinished segment's parts buys. While a WAL
segment fills, `pgpitr stream` merges its small parts into a few larger ones
(at most about 15 objects at rest), so a restart after kill -9 and a
`wal-fetch` of the unfinished segment read only a handful of objects however
many commits the segment holds.

All on the s3s-fs server, one primary, per repetition:

- sync: `pgpitr stream --synchronous` as the synchronous standby
  (application name pgpitr). After pg_switch_wal(), one client commits N tiny
  transactions (pgbench -c 1, one INSERT each: one stored part each without
  merging), all in the one open segment. Then, while a second client keeps
  committing and times every commit, the stream is killed with SIGKILL and
  started again at once. Measured: seconds from the new process's start to
  its log line `streaming ... start=` (logged right after START_REPLICATION;
  its stderr is read line by line and stamped by the harness on arrival),
  and the longest single commit of the second client across the restart.
- async: the same without --synchronous (default --flush-interval 1s) and
  without synchronous_standby_names; the restart time only.
- wal-fetch: after the sync case, the stream is stopped with SIGTERM and the
  still unfinished segment is fetched; then a stream stores the segment whole
  (after pg_switch_wal()) and the same segment, now complete, is fetched.
  No --spool, a fresh destination directory each time.
"""

import os
import re
import shutil
import signal
import subprocess
import threading
import time

from .common import Cluster, S3Server, log, lsn_int, pct, pgpitr_receiver, summarize

APP = "pgpitr"
BUCKET = "bench"
FETCHES_PER_REP = 5
BASELINE_S = 2.0  # the second client commits this long before the kill
AFTER_S = 3.0  # and this long after the restarted stream logs `streaming`
STREAMING_TIMEOUT_S = 120
# The line logged right after START_REPLICATION: `... INFO streaming tli=1 start=0/3000000 slot=pgpitr`.
# ("new repository: streaming from ..." does not match: its `streaming` is followed by a word, not fields.)
STREAMING_RE = re.compile(r"\sstreaming\s+(?:\S+=\S+\s+)*start=")


def sizes(ctx):
    return {"commits": 5000} if ctx.quick else {"commits": 100000}


# ---------------------------------------------------------------- helpers


class LoggedStream:
    """`pgpitr stream` with stdout and stderr read line by line by a thread
    (so the pipe never fills), each line stamped with time.monotonic() as it
    arrives, copied to a log file with the seconds since the start."""

    def __init__(self, argv, env, logpath):
        self.lines = []  # (seconds since start, text)
        self.streaming_at = None  # seconds since start of the first `streaming ... start=` line
        self.streaming = threading.Event()
        self.logf = open(logpath, "w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            t = time.monotonic() - self.t0
            line = line.rstrip("\n")
            self.lines.append((t, line))
            self.logf.write(f"[+{t:9.3f}s] {line}\n")
            self.logf.flush()
            if self.streaming_at is None and STREAMING_RE.search(line):
                self.streaming_at = t
                self.streaming.set()
        self.streaming.set()  # the process ended: nobody waits for a line that cannot come

    def alive(self):
        return self.proc.poll() is None

    def wait_streaming(self, timeout=STREAMING_TIMEOUT_S):
        self.streaming.wait(timeout)
        if self.streaming_at is None:
            tail = "\n".join(f"[+{t:.3f}s] {x}" for t, x in self.lines[-15:])
            state = "still running" if self.alive() else f"exited with {self.proc.returncode}"
            raise RuntimeError(f"pgpitr stream logged no `streaming ... start=` line within {timeout} s "
                               f"({state}); its last lines:\n{tail}")
        return self.streaming_at

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        self.logf.close()
        return self.proc.returncode

    def excerpt(self, limit=40):
        """The first lines with their times, for the results (where a slow restart spent its time)."""
        return [f"+{t:.3f}s {x[:300]}" for t, x in self.lines[:limit]]


def seg_name(tli, segno, seg_size):
    per = 0x100000000 // seg_size
    return f"{tli:08X}{segno // per:08X}{segno % per:08X}"


def segment_objects(s3, prefix, tli, seg):
    """The stored objects of segment `seg` (s3s-fs keeps an object under
    data/<bucket>/<key>, written to a temporary file elsewhere and renamed):
    {"complete": bool, "parts": n, "other": n, "bytes": total, "names": [...]}."""
    d = s3.data / BUCKET / prefix / "wal" / f"{tli:08X}"
    out = {"complete": False, "parts": 0, "other": 0, "bytes": 0, "names": []}
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return out
    for n in names:
        if not n.startswith(seg):
            continue
        try:
            out["bytes"] += os.lstat(d / n).st_size
        except FileNotFoundError:
            continue
        out["names"].append(n[len(seg):] or "(complete)")
        if n == seg:
            out["complete"] = True
        elif n.endswith(".part"):
            out["parts"] += 1
        else:
            out["other"] += 1
    return out


def objects_of_open(objs):
    return objs["parts"] + objs["other"] + (1 if objs["complete"] else 0)


def flush_lsn(pg, app=APP):
    return lsn_int(pg.one("SELECT flush_lsn::text FROM pg_stat_replication WHERE application_name = %s", (app,)))


def wait_flushed(pg, lsn, what, timeout=120, app=APP):
    deadline = time.monotonic() + timeout
    while True:
        f = flush_lsn(pg, app)
        if f is not None and f >= lsn:
            return f
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: flush_lsn {f} did not reach {lsn} within {timeout} s")
        time.sleep(0.05)


def wait_replication(pg, st, sync, timeout=60):
    """Until the stream's walsender streams and, with `sync`, is the synchronous standby."""
    st.wait_streaming()
    deadline = time.monotonic() + timeout
    while True:
        row = pg.sql("SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s", (APP,))
        if row and row[0][0] == "streaming" and (not sync or row[0][1] == "sync"):
            return
        if not st.alive():
            raise RuntimeError("pgpitr stream exited; see its log in the work directory")
        if time.monotonic() > deadline:
            raise RuntimeError(f"pgpitr stream is not {'the synchronous standby' if sync else 'streaming'} "
                               f"after {timeout} s: {row}")
        time.sleep(0.05)


def drop_slot(pg, timeout=30):
    """The slot goes with its repository: a new repository must not start from an old slot's position."""
    deadline = time.monotonic() + timeout
    while pg.one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (APP,)):
        pg.drop_slot(APP)
        if time.monotonic() > deadline:
            raise RuntimeError(f"slot {APP} still active {timeout} s after its stream stopped")
        time.sleep(0.1)


def set_sync_names(pg, value):
    if value:
        pg.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{value}'")
    else:
        pg.sql("ALTER SYSTEM RESET synchronous_standby_names")
    pg.sql("SELECT pg_reload_conf()")


def load(ctx, pg, n):
    """pgbench -c 1 with one INSERT per transaction; returns the transactions it reports."""
    r = subprocess.run(pg.pgbench_argv("-n", "-c", "1", "-t", str(n), "-f", str(ctx.work / "insert.sql")),
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pgbench failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    m = re.search(r"number of transactions actually processed: (\d+)", r.stdout)
    if not m:
        raise RuntimeError(f"no transaction count in pgbench output:\n{r.stdout}")
    done = int(m.group(1))
    if done != n:
        raise RuntimeError(f"pgbench committed {done} transactions, not {n}")
    return done


class Committer:
    """A second client: INSERT after INSERT on one autocommit connection,
    time.monotonic() around each, until stopped."""

    def __init__(self, pg):
        self.conn = pg.connect()
        self.commits = []  # (start, seconds)
        self.inflight = None  # start of the commit under way
        self.error = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self):
        cur = self.conn.cursor()
        try:
            while not self._stop.is_set():
                t = time.monotonic()
                self.inflight = t
                cur.execute("INSERT INTO t VALUES (1)")
                self.commits.append((t, time.monotonic() - t))
                self.inflight = None
        except Exception as e:  # reported by stop()
            self.error = e

    def stop(self, timeout=60):
        """Returns (longest commit, whether a commit was still waiting when given up on)."""
        self._stop.set()
        self._t.join(timeout)
        hung = self._t.is_alive()
        longest = max((d for _, d in self.commits), default=None)
        if hung and self.inflight is not None:
            longest = max(longest or 0.0, time.monotonic() - self.inflight)
        else:
            self.conn.close()
        if self.error:
            raise RuntimeError(f"the second client failed: {self.error}")
        return longest, hung


def timed_fetch(argv, env, errpath):
    """Runs one wal-fetch; wall time from just before the fork to its exit (os.wait4, no polling), its CPU."""
    with open(errpath, "w") as err:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, ru.ru_utime + ru.ru_stime, p.returncode


# ---------------------------------------------------------------- the part


def main(ctx):
    sz = sizes(ctx)
    ctx.result["sizes"] = {"commits": sz["commits"], "fetches_per_rep": FETCHES_PER_REP}
    s3 = S3Server(ctx.work)
    s3.bucket(BUCKET)
    for d in ("logs", "fetch"):
        (ctx.work / d).mkdir(exist_ok=True)
    (ctx.work / "insert.sql").write_text("INSERT INTO t VALUES (1);\n")
    pg = Cluster(ctx.work, "primary")
    seg_size = int(pg.one("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"))
    n = sz["commits"]
    url = "'s3://bench/RUN?endpoint=http://127.0.0.1:S3PORT&region=us-east-1&path-style=true'"
    conn = "'host=127.0.0.1 port=PORT user=postgres application_name=pgpitr'"
    ctx.command("primary (sync)", "ALTER SYSTEM SET synchronous_standby_names = 'pgpitr'; SELECT pg_reload_conf()")
    ctx.command("stream (sync)", f"PGPITR_LOG=info pgpitr stream --repo {url} -d {conn} --slot pgpitr "
                                 "--application-name pgpitr --synchronous")
    ctx.command("stream (async)", f"PGPITR_LOG=info pgpitr stream --repo {url} -d {conn} --slot pgpitr "
                                  "--application-name pgpitr   (default --flush-interval 1s; "
                                  "synchronous_standby_names empty)")
    ctx.command("load", f"CHECKPOINT; SELECT pg_switch_wal(); pgbench -n -c 1 -t {n} -f insert.sql   "
                        "(insert.sql: INSERT INTO t VALUES (1);)")
    ctx.command("second client (sync)", f"psycopg2, autocommit: INSERT INTO t VALUES (1) in a loop with "
                                        f"time.monotonic() around each, from {BASELINE_S:g} s before the kill "
                                        f"until {AFTER_S:g} s after the restarted stream logs 'streaming'")
    ctx.command("restart", "kill -9 the stream, then at once the same command; time from its start to the "
                           "stderr line 'streaming tli=.. start=..' (stamped by the harness as it arrives)")
    ctx.command("wal-fetch", f"PGPITR_REPO={url} pgpitr wal-fetch SEGMENT $WORK/fetch/RUN/SEGMENT   (no --spool; "
                             "a fresh directory each time)")
    ctx.note("Objects of the open segment: files under the segment's key prefix in s3s-fs's data directory "
             "(each object is one file there, renamed into place once written).")
    ctx.note("wal-fetch, unfinished: the sync case's segment after its stream stopped with SIGTERM (assembled "
             "from its parts and zero-filled). Complete: the same segment after pg_switch_wal() and a stream "
             "that stored it whole (one object). The fetched files are compared over the unfinished one's "
             "durable bytes.")
    ctx.note("s3s-fs leaves Nagle's algorithm on (ARCHITECTURE.md, storage notes): a GET body written after its "
             "headers waits for the client's delayed ACK, about 40 ms (strace of one wal-fetch here: the headers, "
             "then the body 48 ms later). Many fetches of either kind include one such wait, the unfinished "
             "segment's (small parts) more often, and the fastest none, so the medians swing between runs: the "
             "ratio of the fastest fetches and of CPU are given too. The restarts' S3 reads include such waits "
             "as well.")
    ctx.note("Longest commit: over all of the second client's commits, from before the kill to after the "
             "restart, so a commit slowed by other work on the machine before the kill counts too. The commit "
             "in flight at the kill (or the first after it) is the one the restart holds up; `slow_commits` in "
             "resume.json places every commit over 20 ms relative to the new process's start.")
    ctx.note("The restarted stream first resumes from what the repository holds (reading every object of the "
             "open segment) and then sends START_REPLICATION; in synchronous mode every commit made meanwhile "
             "waits for it.")
    pg.sql("CREATE TABLE t (v int)")
    tli = int(pg.one("SELECT timeline_id FROM pg_control_checkpoint()"))
    try:
        for rep in range(ctx.reps):
            for case in (("sync", "async") if rep % 2 == 0 else ("async", "sync")):
                try:
                    recs = case_sync(ctx, pg, s3, rep, n, seg_size, tli) if case == "sync" else \
                        case_async(ctx, pg, s3, rep, n, seg_size, tli)
                    ctx.result["raw"].extend(recs)
                except Exception as e:  # keep going: one failure must not hide the other figures
                    log(f"resume rep {rep} {case} failed: {e}")
                    ctx.result["raw"].append({"contender": case, "rep": rep, "error": str(e)[-1500:]})
    finally:
        pg.stop("immediate")
        s3.stop()
    summarize_results(ctx)


def stream_argv(ctx, pg, prefix, s3, extra):
    return pgpitr_receiver(ctx, pg, APP, s3.repo_url(BUCKET, prefix), None, APP, extra).argv


def stream_env(s3):
    e = s3.env()
    e["PGPITR_LOG"] = "info"
    e["PGPITR_LOG_FORMAT"] = "text"
    return e


def fill_open_segment(ctx, pg, s3, prefix, n, seg_size, tli, sync):
    """CHECKPOINT, pg_switch_wal(), then n commits; checks they all went
    into the one segment, still open, and waits until all are stored.
    Returns what was measured about the segment."""
    pg.sql("TRUNCATE t")
    pg.sql("CHECKPOINT")
    pg.sql("SELECT pg_switch_wal()")
    start = pg.lsn()
    segno = start // seg_size
    if start % seg_size:
        # pg_switch_wal() leaves the insert position at a segment boundary.
        raise RuntimeError(f"after pg_switch_wal() the WAL position {start:X} is not at a segment start")
    seg = seg_name(tli, segno, seg_size)
    t0 = time.monotonic()
    done = load(ctx, pg, n)
    load_s = time.monotonic() - t0
    end = pg.lsn()
    if end // seg_size != segno or end % seg_size == 0:
        raise RuntimeError(f"the load left segment {seg}: WAL position {end:X} (make the load smaller)")
    wait_flushed(pg, end, "the load's WAL")
    objs = segment_objects(s3, prefix, tli, seg)
    if objs["complete"]:
        raise RuntimeError(f"segment {seg} is stored complete after the load; expected it unfinished")
    log(f"resume {'sync' if sync else 'async'}: {done} commits in {load_s:.1f} s, {end - start} bytes of WAL in "
        f"{seg}, {objects_of_open(objs)} objects stored for it")
    return seg, segno, {"commits": done, "load_s": load_s, "wal_bytes": end - start,
                        "wal_bytes_per_commit": (end - start) / done, "objects_after_load": objects_of_open(objs),
                        "names_after_load": sorted(objs["names"])}


def case_sync(ctx, pg, s3, rep, n, seg_size, tli):
    prefix = f"sync-{rep}"
    argv, env = stream_argv(ctx, pg, prefix, s3, ["--synchronous"]), stream_env(s3)
    logs = ctx.work / "logs"
    streams = [LoggedStream(argv, env, logs / f"sync-{rep}-1.log")]
    client = None
    out = []
    try:
        wait_replication(pg, streams[0], sync=False)
        set_sync_names(pg, APP)
        wait_replication(pg, streams[0], sync=True)
        seg, segno, rec = fill_open_segment(ctx, pg, s3, prefix, n, seg_size, tli, sync=True)

        # ---- kill -9 and restart while a second client commits
        client = Committer(pg)
        time.sleep(BASELINE_S)
        t_kill = time.monotonic()
        at_kill = segment_objects(s3, prefix, tli, seg)  # about what the new process finds
        streams[0].kill9()
        streams.append(LoggedStream(argv, env, logs / f"sync-{rep}-2.log"))
        restart_s = streams[1].wait_streaming()
        time.sleep(AFTER_S)
        longest, hung = client.stop()
        commits = client.commits
        client = None
        before = [d for t, d in commits if t + d < t_kill]
        # The commit in flight at the kill (or, between two, the next one): the one the restart holds up.
        at_kill_wait = next((d for t, d in commits if t + d >= t_kill), None)
        wait_replication(pg, streams[1], sync=True)
        rec.update({"contender": "sync", "rep": rep, "segment": seg, "restart_s": restart_s,
                    "objects_at_kill": objects_of_open(at_kill), "names_at_kill": sorted(at_kill["names"]),
                    "max_commit_wait_s": longest, "commit_hung": hung, "client_commits": len(commits),
                    "commit_at_kill_s": at_kill_wait, "commit_p50_before_kill_s": pct(before, 50),
                    "commit_max_before_kill_s": max(before, default=None),
                    "restart_log": streams[1].excerpt(),
                    # Where the long waits fell: (start, end) relative to the new process's start.
                    "slow_commits": [[round(t - streams[1].t0, 4), round(t + d - streams[1].t0, 4)]
                                     for t, d in commits if d > 0.02][:20]})
        log(f"resume rep {rep} sync: restart → streaming {restart_s:.3f} s, longest commit {longest:.3f} s, "
            f"the one in flight at the kill {at_kill_wait or 0:.3f} s"
            + (" (still waiting when given up on)" if hung else ""))
        out.append(rec)

        # ---- wal-fetch: the unfinished segment after SIGTERM, then the same segment complete
        try:
            out.extend(walfetch_pair(ctx, pg, s3, rep, prefix, seg, segno, seg_size, tli, streams, argv, env, rec))
        except Exception as e:  # the restart figures above stand
            log(f"resume rep {rep} wal-fetch failed: {e}")
            out.append({"contender": "wal-fetch", "rep": rep, "error": str(e)[-1500:]})
        return out
    finally:
        set_sync_names(pg, None)  # releases any commit still waiting
        if client:
            client.stop()
        for st in streams:
            st.stop()
        drop_slot(pg)
        shutil.rmtree(s3.data / BUCKET / prefix, ignore_errors=True)


def walfetch_pair(ctx, pg, s3, rep, prefix, seg, segno, seg_size, tli, streams, argv, env, rec):
    """Stops the sync case's stream with SIGTERM, fetches its unfinished
    segment; then lets a new stream store it whole and fetches it again."""
    logs = ctx.work / "logs"
    out = []
    end = pg.lsn()
    if end // seg_size != segno:
        raise RuntimeError(f"segment {seg} was finished during the restart measurement; nothing unfinished "
                           "to fetch")
    durable = wait_flushed(pg, end, "the second client's WAL")
    code = streams[1].stop()
    if code != 0:
        raise RuntimeError(f"pgpitr stream exited with {code} on SIGTERM")
    objs = segment_objects(s3, prefix, tli, seg)
    rec["objects_after_restart"] = objects_of_open(objs)
    if objs["complete"]:
        raise RuntimeError(f"segment {seg} is stored complete after SIGTERM; expected it unfinished")
    url = s3.repo_url(BUCKET, prefix)
    unfinished = fetch(ctx, url, s3, seg, seg_size, f"{rep}-unfinished")
    streams.append(LoggedStream(argv, env, logs / f"sync-{rep}-3.log"))
    wait_replication(pg, streams[2], sync=True)
    pg.sql("SELECT pg_switch_wal()")
    seg_end = (segno + 1) * seg_size
    wait_flushed(pg, seg_end, f"segment {seg} after pg_switch_wal()")
    deadline = time.monotonic() + 30
    while not segment_objects(s3, prefix, tli, seg)["complete"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"segment {seg} reported flushed but not stored whole within 30 s")
        time.sleep(0.05)
    # The stream deletes the segment's parts once it is stored whole; a
    # reader takes the whole object regardless, with one GET.
    deadline = time.monotonic() + 3
    while objects_of_open(segment_objects(s3, prefix, tli, seg)) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    cobjs = segment_objects(s3, prefix, tli, seg)
    complete = fetch(ctx, url, s3, seg, seg_size, f"{rep}-complete")
    code = streams[2].stop()
    left = segment_objects(s3, prefix, tli, seg)
    if left["parts"] or left["other"]:
        ctx.note("After a segment was stored whole, parts of it stayed in the bucket: still there after the "
                 "stream stopped (`leftover_after_stop` in resume.json; wal-fetch reads only the whole object).")
    same = compare(unfinished["file"], complete["file"], durable % seg_size)
    if not same:
        ctx.note(f"rep {rep}: the unfinished and the complete fetch of {seg} differ within the durable bytes")
    for kind, f, o in (("unfinished", unfinished, objs), ("complete", complete, cobjs)):
        r = {"contender": f"wal-fetch/{kind}", "rep": rep, "segment": seg, "objects": objects_of_open(o),
             "stored_bytes": o["bytes"], "names": sorted(o["names"]), "wall_s": f["wall_s"], "cpu_s": f["cpu_s"],
             "durable_bytes": durable % seg_size, "content_match": same}
        if kind == "complete":
            # What the fetch reads is the whole object; the rest are parts not (yet) deleted.
            r.update({"objects": 1, "leftover_at_fetch": objects_of_open(o) - 1,
                      "leftover_after_stop": sorted(n for n in left["names"] if n != "(complete)"),
                      "stream_exit": code})
        out.append(r)
    u, c = summarize(unfinished["wall_s"]), summarize(complete["wall_s"])
    log(f"resume rep {rep} wal-fetch: unfinished ({objects_of_open(objs)} objects) {u['median'] * 1000:.1f} ms, "
        f"complete {c['median'] * 1000:.1f} ms, ratio {u['median'] / c['median']:.2f}")
    return out


def case_async(ctx, pg, s3, rep, n, seg_size, tli):
    prefix = f"async-{rep}"
    argv, env = stream_argv(ctx, pg, prefix, s3, []), stream_env(s3)
    logs = ctx.work / "logs"
    streams = [LoggedStream(argv, env, logs / f"async-{rep}-1.log")]
    try:
        wait_replication(pg, streams[0], sync=False)
        seg, _, rec = fill_open_segment(ctx, pg, s3, prefix, n, seg_size, tli, sync=False)
        at_kill = segment_objects(s3, prefix, tli, seg)
        streams[0].kill9()
        streams.append(LoggedStream(argv, env, logs / f"async-{rep}-2.log"))
        restart_s = streams[1].wait_streaming()
        wait_replication(pg, streams[1], sync=False)
        code = streams[1].stop()
        if code != 0:
            raise RuntimeError(f"pgpitr stream exited with {code} on SIGTERM")
        objs = segment_objects(s3, prefix, tli, seg)
        rec.update({"contender": "async", "rep": rep, "segment": seg, "restart_s": restart_s,
                    "objects_at_kill": objects_of_open(at_kill), "names_at_kill": sorted(at_kill["names"]),
                    "objects_after_restart": objects_of_open(objs), "restart_log": streams[1].excerpt()})
        log(f"resume rep {rep} async: restart → streaming {restart_s:.3f} s")
        return [rec]
    finally:
        for st in streams:
            st.stop()
        drop_slot(pg)
        shutil.rmtree(s3.data / BUCKET / prefix, ignore_errors=True)


def fetch(ctx, url, s3, seg, seg_size, label):
    """FETCHES_PER_REP wal-fetches of seg, each into a new directory."""
    env = s3.env()
    env["PGPITR_REPO"] = url
    walls, cpus, last = [], [], None
    for i in range(FETCHES_PER_REP):
        d = ctx.work / "fetch" / f"{label}-{i}"
        d.mkdir(parents=True)
        dest = d / seg
        wall, cpu, code = timed_fetch([ctx.pgpitr, "wal-fetch", seg, str(dest)], env, d / "stderr.log")
        if code != 0:
            raise RuntimeError(f"wal-fetch {seg} ({label}) exited with {code}: "
                               f"{(d / 'stderr.log').read_text()[-500:]}")
        if dest.stat().st_size != seg_size:  # the unfinished one is zero-filled to the segment size
            raise RuntimeError(f"wal-fetch {seg} ({label}) wrote {dest.stat().st_size} bytes")
        walls.append(wall)
        cpus.append(cpu)
        if last:
            shutil.rmtree(last.parent, ignore_errors=True)
        last = dest
    return {"wall_s": walls, "cpu_s": cpus, "file": last}


def compare(a, b, upto):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read(upto) == fb.read(upto)


def summarize_results(ctx):
    raw = [r for r in ctx.result["raw"] if "error" not in r]
    out = {}
    for case in ("sync", "async"):
        rows = [r for r in raw if r["contender"] == case]
        out[case] = {k: summarize([r.get(k) for r in rows]) for k in
                     ("restart_s", "max_commit_wait_s", "commit_at_kill_s", "commit_p50_before_kill_s",
                      "commit_max_before_kill_s", "objects_after_load",
                      "objects_at_kill", "objects_after_restart", "commits", "wal_bytes", "load_s", "client_commits")}
        out[case]["runs"] = len(rows)
        out[case]["commit_hung"] = sum(1 for r in rows if r.get("commit_hung"))
        out[case]["errors"] = sum(1 for r in ctx.result["raw"] if r["contender"] == case and "error" in r)
    for kind in ("unfinished", "complete"):
        rows = [r for r in raw if r["contender"] == f"wal-fetch/{kind}"]
        out[f"wal-fetch/{kind}"] = {"wall_s": summarize([w for r in rows for w in r["wall_s"]]),
                                    "cpu_s": summarize([c for r in rows for c in r["cpu_s"]]),
                                    "objects": summarize([r["objects"] for r in rows]),
                                    "stored_bytes": summarize([r["stored_bytes"] for r in rows]),
                                    "leftover_parts": summarize([len(r["leftover_after_stop"]) for r in rows
                                                                 if "leftover_after_stop" in r]),
                                    "runs": len(rows), "fetches": sum(len(r["wall_s"]) for r in rows),
                                    "mismatches": sum(1 for r in rows if not r["content_match"])}
    out["wal-fetch/errors"] = sum(1 for r in ctx.result["raw"] if r["contender"] == "wal-fetch" and "error" in r)
    u, c = out["wal-fetch/unfinished"]["wall_s"], out["wal-fetch/complete"]["wall_s"]
    out["wal-fetch/ratio"] = u["median"] / c["median"] if u and c and c["median"] else None
    # The fastest fetches are those without an s3s-fs stall (see the notes); CPU has none either.
    out["wal-fetch/ratio_min"] = u["min"] / c["min"] if u and c and c["min"] else None
    uc, cc = out["wal-fetch/unfinished"]["cpu_s"], out["wal-fetch/complete"]["cpu_s"]
    out["wal-fetch/ratio_cpu"] = uc["median"] / cc["median"] if uc and cc and cc["median"] else None
    ctx.result["summary"] = out
