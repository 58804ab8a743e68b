//! `pgpitr wal-fetch`: what Postgres's `restore_command` runs, once per file.
//!
//! ```text
//!  postgres ──%f %p──▶ wal-fetch ──hit: check, link spool/<name>.<crc32> ──▶ %p   (no runtime, no repository)
//!                         │ miss: get wal/<TLI>/<name> (else list its pieces), verify, assemble ──▶ %p
//!                         └─ .want = <name>; start the prefetcher if none runs
//!  prefetcher (one per spool, flock; `restore --start` starts it before Postgres)
//!      ── next N complete segments, P at a time ──▶ spool/.<name>.tmp ──rename──▶ spool/<name>.<crc32>
//! ```
//!
//! A file is never handed over half-written or unverified: it is written to
//! a temporary name beside its destination and renamed, and a spooled one
//! is checked against its checksum first. "Not
//! stored" is [`Fetched::NotFound`] (exit 1, which Postgres takes as the end
//! of WAL); anything else that goes wrong is an error, which the binary
//! turns into an exit code above 125 so that Postgres stops recovery
//! instead of ending it early at an outage or a hole.
//!
//! Postgres waits for every call, so a spool hit is served by
//! [`serve_from_spool`] alone: synchronous, before the binary builds a
//! runtime, opens the repository or reads credentials. It costs a process
//! start and one read of the file for its checksum.

use pgpitr_repo::catalog::Catalog;
use pgpitr_repo::wal::{self, WalObjectId, WalObjectKind};
use pgpitr_repo::{RepoError, Repository};
use pgpitr_storage::{ObjectMeta, RepoUrl, Storage};
use pgpitr_types::{SegNo, TimelineHistory, TimelineId, WalFileName, WalSegSize};
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Segments the prefetcher keeps ready by default.
pub const DEFAULT_PREFETCH: usize = 8;
/// Downloads the prefetcher runs at once.
const PREFETCH_PARALLEL: usize = 4;
/// The prefetcher exits when Postgres has asked for nothing new this long.
const PREFETCH_IDLE_EXIT: Duration = Duration::from_secs(60);
/// How long a request waits for a download the prefetcher is running
/// before fetching the file itself.
const SPOOL_WAIT: Duration = Duration::from_secs(10);
/// Spooled files are checked in chunks this large: small enough to be
/// summed while still in the CPU's cache (measured: 64 KiB beats 1 MiB by a
/// fifth), and no call faults in a whole segment's worth of fresh memory.
const CHECK_CHUNK: usize = 64 << 10;
const WANT: &str = ".want";
const LOCK: &str = ".lock";
/// One line per segment served with a spool: `hit`, `wait` (for the
/// prefetcher's download) or `miss` (fetched from the repository), and the
/// milliseconds replay waited. `restore --wait` sums it up.
const STATS: &str = ".stats";

/// What the spool did for one recovery: how often replay found the next
/// segment ready, waited for the prefetcher, or fetched it itself.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SpoolStats {
    pub hits: u64,
    pub waits: u64,
    pub waited_secs: f64,
    pub misses: u64,
    pub miss_secs: f64,
}

/// Appends one line to the spool's statistics; a failure costs only them.
fn note(spool: &Path, what: &str, name: &str, waited: Duration) {
    let line = format!("{what} {name} {}\n", waited.as_millis());
    let file = std::fs::OpenOptions::new().append(true).create(true).open(spool.join(STATS));
    if let Ok(mut f) = file {
        let _ = f.write_all(line.as_bytes());
    }
}

/// The spool's statistics so far, if it kept any.
pub fn spool_stats(spool: &Path) -> Option<SpoolStats> {
    let text = std::fs::read_to_string(spool.join(STATS)).ok()?;
    let mut s = SpoolStats::default();
    for line in text.lines() {
        let mut f = line.split(' ');
        let (Some(what), Some(_), Some(ms)) = (f.next(), f.next(), f.next().and_then(|m| m.parse::<u64>().ok())) else {
            continue;
        };
        let secs = ms as f64 / 1000.0;
        match what {
            "hit" => s.hits += 1,
            "wait" => (s.waits, s.waited_secs) = (s.waits + 1, s.waited_secs + secs),
            "miss" => (s.misses, s.miss_secs) = (s.misses + 1, s.miss_secs + secs),
            _ => {}
        }
    }
    Some(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    Repository,
    Spool,
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Bad arguments: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The repository could not say whether the file exists, or gave
    /// something wrong: Postgres must stop, not assume the end of WAL.
    #[error("{0}")]
    Storage(String),
}

impl From<RepoError> for FetchError {
    fn from(e: RepoError) -> Self {
        FetchError::Storage(e.to_string())
    }
}

impl From<pgpitr_storage::StorageError> for FetchError {
    fn from(e: pgpitr_storage::StorageError) -> Self {
        FetchError::Storage(e.to_string())
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> FetchError {
    FetchError::Storage(format!("cannot {what} {}: {e}", path.display()))
}

#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub repo: RepoUrl,
    /// `%f`: the file Postgres wants.
    pub name: String,
    /// `%p`: where to put it.
    pub dest: PathBuf,
    pub spool: Option<PathBuf>,
    /// Segments to prefetch into the spool (0: none).
    pub prefetch: usize,
    /// A segment missing past the one holding this LSN is "not stored",
    /// even with later WAL stored (see `conf::restore_command`).
    pub until: Option<pgpitr_types::Lsn>,
}

async fn open_repo(url: &RepoUrl) -> Result<Repository, FetchError> {
    Ok(Repository::open_url(url, pgpitr_repo::Access::Read).await?)
}

/// A segment file name (`%f` of a segment is 24 hex digits); anything else
/// (history files) never comes from the spool.
fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Serves one file to Postgres: from the spool if it can, otherwise from
/// the repository.
pub async fn fetch(req: &FetchRequest) -> Result<Fetched, FetchError> {
    match serve_from_spool(req) {
        Some(how) => Ok(how),
        None => fetch_from_repository(req).await,
    }
}

/// Serves one file from the repository (after [`serve_from_spool`] could
/// not), and keeps the spool's prefetcher going.
pub async fn fetch_from_repository(req: &FetchRequest) -> Result<Fetched, FetchError> {
    let t0 = Instant::now();
    let name = req.name.as_str();
    if name.is_empty() || name.contains('/') || !name.is_ascii() {
        return Err(FetchError::Usage(format!("{name:?} is not a WAL file name")));
    }
    let repo = open_repo(&req.repo).await?;
    let seg = repo.seg_size();
    let file = WalFileName::parse(name, seg).map_err(|e| FetchError::Usage(e.to_string()))?;
    let got = match file {
        WalFileName::History { tli } => fetch_history(&repo, tli, &req.dest).await?,
        WalFileName::Segment { tli, segno } => {
            let got = fetch_segment(&repo, seg, tli, segno, &req.dest, req.until).await?;
            if got != Fetched::NotFound
                && let Some(spool) = &req.spool
            {
                note(spool, "miss", name, t0.elapsed());
                start_prefetch(req, spool);
            }
            got
        }
        // Postgres never asks for these through restore_command.
        WalFileName::Partial { .. } | WalFileName::Backup { .. } => Fetched::NotFound,
    };
    Ok(got)
}

/// The fast path: serves a segment from the spool when it holds a copy
/// whose checksum holds (waiting for a download the prefetcher is running),
/// then records what Postgres took and makes sure a prefetcher runs.
/// `None` when the spool cannot serve it: the caller fetches it from the
/// repository. Synchronous and light, so that the binary can try it before
/// it builds anything else.
pub fn serve_from_spool(req: &FetchRequest) -> Option<Fetched> {
    let spool = req.spool.as_deref()?;
    if !is_segment_name(&req.name) {
        return None;
    }
    let how = take_spooled(spool, &req.name, &req.dest)?;
    start_prefetch(req, spool);
    Some(how)
}

async fn fetch_history(repo: &Repository, tli: TimelineId, dest: &Path) -> Result<Fetched, FetchError> {
    let key = wal::history_key(tli);
    let raw = match repo.storage().get(&key).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(Fetched::NotFound),
        Err(e) => return Err(e.into()),
    };
    // History files are stored verbatim; parsing is their integrity check.
    if let Err(e) = TimelineHistory::parse(tli, &String::from_utf8_lossy(&raw)) {
        return Err(FetchError::Storage(format!("corrupt {key} in {}: {e}", repo.location())));
    }
    write_atomically(dest, raw).await?;
    Ok(Fetched::Repository)
}

async fn fetch_segment(
    repo: &Repository,
    seg: WalSegSize,
    tli: TimelineId,
    segno: SegNo,
    dest: &Path,
    until: Option<pgpitr_types::Lsn>,
) -> Result<Fetched, FetchError> {
    match Catalog::stored_segment(repo, tli, segno).await? {
        Some(s) => {
            write_atomically(dest, s.data).await?;
            Ok(Fetched::Repository)
        }
        None if until.is_some_and(|u| segno.start_lsn(seg).is_some_and(|s| s > u)) => Ok(Fetched::NotFound),
        None => {
            // Missing while later WAL of the timeline is stored is a hole,
            // not the end: ending recovery here would silently lose data.
            match Catalog::wal_after(repo, tli, segno).await? {
                Some(id) => Err(FetchError::Storage(format!(
                    "{} is missing from {} although later WAL of timeline {tli} ({}) is stored: a gap",
                    WalFileName::segment(tli, segno).to_name(seg),
                    repo.location(),
                    id.key(seg)
                ))),
                None => Ok(Fetched::NotFound),
            }
        }
    }
}

/// Writes `data` beside `dest` under a temporary name and renames it, so
/// Postgres never sees a partial file. Nothing is synced on this path,
/// which replay waits for: Postgres deletes `%p` before every call, fetches
/// it again after a crash, and syncs what it keeps itself.
async fn write_atomically(dest: &Path, data: bytes::Bytes) -> Result<(), FetchError> {
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let tmp = temp_beside(&dest);
        let result = (|| {
            let mut f = create_private(&tmp)?;
            f.write_all(&data)?;
            std::fs::rename(&tmp, &dest)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(|e| io_err("write", &dest, e))
    })
    .await
    .map_err(|e| FetchError::Storage(format!("internal error: {e}")))?
}

fn temp_beside(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.pgpitr-{}.tmp", std::process::id()))
}

/// The spooled file for segment `name`: `<name>.<crc32 hex>`. The
/// prefetcher syncs it before giving it that name; the checksum still
/// catches one damaged since (or torn by a crash where the file system
/// lost the order of the sync and the rename) before Postgres could see it.
fn spooled(spool: &Path, name: &str) -> Option<(PathBuf, u32)> {
    let prefix = format!("{name}.");
    std::fs::read_dir(spool).ok()?.flatten().find_map(|e| {
        let f = e.file_name().to_string_lossy().into_owned();
        let hex = f.strip_prefix(&prefix).filter(|h| h.len() == 8)?;
        let crc = u32::from_str_radix(hex, 16).ok()?;
        Some((e.path(), crc))
    })
}

/// Where the prefetcher writes segment `name` while downloading it. It is
/// created when the download starts, so that a request for the segment
/// waits for it instead of fetching it a second time.
fn partial_path(spool: &Path, name: &str) -> PathBuf {
    spool.join(format!(".{name}.tmp"))
}

/// Creates (or truncates) a file only its owner can read: it holds WAL.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

/// CRC-32 of a file, read in chunks.
fn file_crc(path: &Path) -> std::io::Result<u32> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; CHECK_CHUNK];
    let mut crc = crc32fast::Hasher::new();
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(crc.finalize()),
            Ok(n) => crc.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Hands a prefetched, verified segment to `dest`. Waits for a download the
/// prefetcher is running for it, but not for a prefetcher that is gone.
fn take_spooled(spool: &Path, name: &str, dest: &Path) -> Option<Fetched> {
    let partial = partial_path(spool, name);
    let t0 = Instant::now();
    let deadline = t0 + SPOOL_WAIT;
    let (ready, crc) = loop {
        // Looked at before the spool, so that a download finishing in
        // between is found there.
        let in_flight = partial.exists() && prefetcher_running(spool);
        if let Some(found) = spooled(spool, name) {
            break found;
        }
        if !in_flight || Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if file_crc(&ready).ok() != Some(crc) {
        let _ = std::fs::remove_file(&ready);
        return None; // torn or unreadable: fetch from the repository
    }
    // The spool is on another file system, or refuses links: fetch.
    hand_over(&ready, dest).ok()?;
    let waited = t0.elapsed();
    note(spool, if waited >= Duration::from_millis(5) { "wait" } else { "hit" }, name, waited);
    Some(Fetched::Spool)
}

/// Gives Postgres the spooled file without copying it: a hard link, so
/// that the spool keeps it until Postgres takes a later segment (at the end
/// of recovery it asks for the last one again), or a rename where the file
/// system has no links. Spooled files are never written again, only
/// replaced by a rename, and every hand-over checks the checksum first.
fn hand_over(ready: &Path, dest: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(ready, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(dest)?;
            std::fs::hard_link(ready, dest)
        }
        Err(_) => std::fs::rename(ready, dest),
    }
}

fn prefetcher_running(spool: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(spool.join(LOCK))
    else {
        return false;
    };
    match f.try_lock() {
        Ok(()) => {
            let _ = f.unlock();
            false
        }
        Err(_) => true,
    }
}

/// Records the segment Postgres last took, which the prefetcher reads.
fn write_want(spool: &Path, name: &str) -> std::io::Result<()> {
    let tmp = spool.join(format!("{WANT}.{}", std::process::id()));
    std::fs::write(&tmp, name).and_then(|_| std::fs::rename(&tmp, spool.join(WANT)))
}

/// Records what Postgres asked for and makes sure a prefetcher runs. Best
/// effort: prefetching only saves time, so failures here are ignored.
fn start_prefetch(req: &FetchRequest, spool: &Path) {
    if req.prefetch == 0 || !spool.is_dir() || write_want(spool, &req.name).is_err() {
        return;
    }
    if prefetcher_running(spool) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    spawn_prefetcher(&exe, &req.repo, spool, req.prefetch);
}

/// Starts the prefetcher at a lower CPU priority (`nice -n 10`, where
/// there is a `nice`): while it keeps ahead, replay waits for nothing but
/// the CPU, so downloads that can wait should not take a core from it.
fn spawn_prefetcher(exe: &Path, repo: &RepoUrl, spool: &Path, prefetch: usize) {
    let spawn = |mut cmd: std::process::Command| {
        cmd.arg("wal-fetch")
            .arg("--repo")
            .arg(repo.to_string())
            .arg("--spool")
            .arg(spool)
            .arg("--prefetch")
            .arg(prefetch.to_string())
            .arg("--prefetch-daemon")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
    };
    let mut niced = std::process::Command::new("nice");
    niced.args(["-n", "10"]).arg(exe);
    if spawn(niced).is_err()
        && let Err(e) = spawn(std::process::Command::new(exe))
    {
        tracing::debug!("cannot start the WAL prefetcher: {e}");
    }
}

/// Starts the spool's prefetcher before Postgres asks for anything, so that
/// segment `first` of `tli` and the ones after it are ready when recovery
/// begins (`restore --start` calls it after extraction). `exe` is the
/// binary `restore_command` runs. Best effort, like all prefetching.
pub fn prefetch_ahead(exe: &Path, repo: &RepoUrl, spool: &Path, seg: WalSegSize, tli: TimelineId, first: SegNo) {
    // `.want` names the segment Postgres took last: the one before.
    let Some(before) = first.0.checked_sub(1) else { return };
    if write_want(spool, &WalFileName::segment(tli, SegNo(before)).to_name(seg)).is_ok() {
        spawn_prefetcher(exe, repo, spool, DEFAULT_PREFETCH);
    }
}

/// The prefetcher: keeps the `prefetch` complete segments after the one
/// Postgres last asked for in the spool, until Postgres stops asking or the
/// spool disappears, then removes what it spooled. Only complete segments
/// are prefetched: an unfinished one may still grow, so it is always
/// fetched when asked for.
pub async fn prefetch_daemon(repo_url: &RepoUrl, spool: &Path, prefetch: usize) -> Result<(), FetchError> {
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(spool.join(LOCK))
        .map_err(|e| io_err("open", &spool.join(LOCK), e))?;
    if lock.try_lock().is_err() {
        return Ok(()); // another prefetcher serves this spool
    }
    let repo = open_repo(repo_url).await?;
    let seg = repo.seg_size();
    // One decode buffer per download in flight, recycled: a fresh one per
    // segment faults in 16 MiB on the core replay shares.
    let pool = pgpitr_repo::object::BufPool::new(PREFETCH_PARALLEL, seg.bytes() as usize);
    let mut listed: Option<(TimelineId, CompleteSegments, std::ops::Range<u64>, Instant)> = None;
    let mut last_want: Option<(TimelineId, SegNo)> = None;
    let mut changed_at = Instant::now();
    let mut tasks: tokio::task::JoinSet<SegNo> = tokio::task::JoinSet::new();
    let mut running: HashSet<SegNo> = HashSet::new();
    let result = loop {
        if !spool.is_dir() || changed_at.elapsed() > PREFETCH_IDLE_EXIT {
            break Ok(());
        }
        let want = std::fs::read_to_string(spool.join(WANT)).ok().and_then(|n| {
            match WalFileName::parse(n.trim(), seg).ok()? {
                WalFileName::Segment { tli, segno } => Some((tli, segno)),
                _ => None,
            }
        });
        if want != last_want {
            changed_at = Instant::now();
            last_want = want;
            if let Some((tli, at)) = want {
                clean_spool(spool, seg, tli, at, prefetch);
            }
        }
        if let Some((tli, at)) = want {
            let window: Vec<SegNo> = (1..=prefetch as u64).map(|i| SegNo(at.0 + i)).collect();
            let stale = match &listed {
                Some((t, set, range, when)) => {
                    *t != tli
                        || window.iter().any(|w| !range.contains(&w.0))
                        || (window.last().is_some_and(|w| set.keys().next_back().is_none_or(|l| l < w))
                            && when.elapsed() > Duration::from_secs(5))
                }
                None => true,
            };
            if stale {
                match complete_segments(&repo, seg, tli, SegNo(at.0 + 1), prefetch as u64).await {
                    Ok((set, range)) => listed = Some((tli, set, range, Instant::now())),
                    Err(e) => break Err(e),
                }
            }
            let set = listed.as_ref().map(|(_, s, _, _)| s).expect("listed above");
            for s in window {
                if running.len() >= PREFETCH_PARALLEL {
                    break;
                }
                let name = WalFileName::segment(tli, s).to_name(seg);
                let Some(object) = set.get(&s) else { continue };
                if running.contains(&s) || spooled(spool, &name).is_some() {
                    continue;
                }
                let tmp = partial_path(spool, &name);
                if create_private(&tmp).is_err() {
                    continue;
                }
                running.insert(s);
                let (repo, spool, object, pool) = (repo.clone(), spool.to_path_buf(), object.0, pool.clone());
                tasks.spawn(async move {
                    let dest = spool.join(&name);
                    match download(&repo, seg, object, &tmp, &dest, &pool).await {
                        Ok(true) => {}
                        Ok(false) => {
                            let _ = std::fs::remove_file(&tmp);
                        }
                        Err(e) => {
                            tracing::debug!("prefetching {name} failed: {e}");
                            let _ = std::fs::remove_file(&tmp);
                        }
                    }
                    s
                });
            }
        }
        tokio::select! {
            Some(done) = tasks.join_next() => {
                if let Ok(s) = done {
                    running.remove(&s);
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    tasks.shutdown().await;
    // Nothing asks any more: what is spooled would only take space.
    clear_spool(spool);
    drop(lock);
    result
}

/// The complete segments of a timeline in a window, with their objects.
type CompleteSegments = BTreeMap<SegNo, (WalObjectId, ObjectMeta)>;

/// The complete segments of the log IDs (4 GiB of WAL each) that hold
/// `tli`'s segments `from..from + count`, and the segment range listed.
async fn complete_segments(
    repo: &Repository,
    seg: WalSegSize,
    tli: TimelineId,
    from: SegNo,
    count: u64,
) -> Result<(CompleteSegments, std::ops::Range<u64>), FetchError> {
    let per = seg.segments_per_xlogid();
    let listed = (from.0 / per * per)..((from.0 + count).div_ceil(per) * per);
    let lsn = |segno: u64| pgpitr_types::Lsn(segno.saturating_mul(seg.bytes()));
    let tl = Catalog::wal_range(repo, tli, lsn(listed.start), lsn(listed.end)).await?;
    let set = tl
        .objects
        .into_iter()
        .filter(|(id, _)| id.kind == WalObjectKind::Segment)
        .map(|(id, m)| (id.segno, (id, m)))
        .collect();
    Ok((set, listed))
}

/// Downloads one complete segment into the spool (through `tmp`, which
/// already exists); false when it turned out not to be stored complete.
async fn download(
    repo: &Repository,
    seg: WalSegSize,
    id: WalObjectId,
    tmp: &Path,
    dest: &Path,
    pool: &pgpitr_repo::object::BufPool,
) -> Result<bool, FetchError> {
    let Some(s) = wal::read_complete(repo.storage().as_ref(), seg, id.tli, id.segno, Some(pool)).await? else {
        return Ok(false);
    };
    // Checked against the data when it was decoded.
    let crc = s.raw_crc.unwrap_or_else(|| crc32fast::hash(&s.data));
    let dest = dest.with_file_name(format!("{}.{crc:08x}", dest.file_name().unwrap_or_default().to_string_lossy()));
    let (tmp, shown) = (tmp.to_path_buf(), dest.clone());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut f = create_private(&tmp)?;
        f.write_all(&s.data)?;
        // Synced here, off Postgres's path: it syncs every file it restores
        // (and its whole data directory at start-up), and then finds this
        // one already on disk instead of waiting for it.
        f.sync_data()?;
        std::fs::rename(&tmp, &dest)
    })
    .await
    .map_err(|e| FetchError::Storage(format!("internal error: {e}")))?
    .map_err(|e| io_err("write", &shown, e))?;
    Ok(true)
}

/// Removes spooled segments Postgres will not ask for: before the one it
/// just took (kept: it may ask for it again), beyond the window, or of
/// another timeline.
fn clean_spool(spool: &Path, seg: WalSegSize, tli: TimelineId, at: SegNo, prefetch: usize) {
    let Ok(entries) = std::fs::read_dir(spool) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // .want, .lock, and downloads in flight
        }
        let base = name.split_once('.').map_or(name.as_str(), |(b, _)| b);
        let keep = match WalFileName::parse(base, seg) {
            Ok(WalFileName::Segment { tli: t, segno }) => t == tli && segno >= at && segno.0 <= at.0 + prefetch as u64,
            _ => true,
        };
        if !keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Removes every spooled segment and download leftover.
fn clear_spool(spool: &Path) {
    let Ok(entries) = std::fs::read_dir(spool) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let base = name.trim_start_matches('.').split('.').next().unwrap_or_default();
        if is_segment_name(base) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_statistics_add_up() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(spool_stats(d.path()), None);
        note(d.path(), "hit", "000000010000000000000002", Duration::from_millis(1));
        note(d.path(), "wait", "000000010000000000000003", Duration::from_millis(250));
        note(d.path(), "miss", "000000010000000000000004", Duration::from_millis(40));
        note(d.path(), "miss", "000000010000000000000005", Duration::from_millis(60));
        std::fs::OpenOptions::new().append(true).open(d.path().join(STATS)).unwrap().write_all(b"torn li").unwrap();
        let s = spool_stats(d.path()).unwrap();
        assert_eq!((s.hits, s.waits, s.misses), (1, 1, 2));
        assert!((s.waited_secs - 0.25).abs() < 1e-9 && (s.miss_secs - 0.1).abs() < 1e-9, "{s:?}");
    }

    const NAME: &str = "000000010000000000000005";

    fn seg16() -> WalSegSize {
        WalSegSize::new(16 << 20).unwrap()
    }

    fn segment_bytes(fill: u8) -> Vec<u8> {
        (0..64 * 1024u32).map(|i| (i as u8) ^ fill).collect()
    }

    /// A spool holding `data` for NAME, named by its true checksum.
    fn spool_with(data: &[u8]) -> (tempfile::TempDir, PathBuf, FetchRequest) {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        let ready = spool.join(format!("{NAME}.{:08x}", crc32fast::hash(data)));
        std::fs::write(&ready, data).unwrap();
        let req = FetchRequest {
            until: None,
            repo: RepoUrl::parse(dir.path().join("no-repo").to_str().unwrap()).unwrap(),
            name: NAME.into(),
            dest: dir.path().join("RECOVERYXLOG"),
            spool: Some(spool),
            // No prefetcher: the test binary is not pgpitr.
            prefetch: 0,
        };
        (dir, ready, req)
    }

    #[test]
    fn serves_a_spooled_segment_without_copying_and_keeps_it_for_a_second_ask() {
        use std::os::unix::fs::MetadataExt;
        let data = segment_bytes(7);
        let (_dir, ready, req) = spool_with(&data);
        assert_eq!(serve_from_spool(&req), Some(Fetched::Spool));
        assert_eq!(std::fs::read(&req.dest).unwrap(), data);
        let (a, b) = (std::fs::metadata(&ready).unwrap(), std::fs::metadata(&req.dest).unwrap());
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "linked, not copied");
        // Postgres removes %p before asking again (at the end of recovery).
        std::fs::remove_file(&req.dest).unwrap();
        assert_eq!(serve_from_spool(&req), Some(Fetched::Spool));
        assert_eq!(std::fs::read(&req.dest).unwrap(), data);
    }

    #[test]
    fn refuses_a_torn_spooled_segment() {
        let data = segment_bytes(3);
        let (_dir, ready, req) = spool_with(&data);
        // Torn by a crash: shorter, or the right length with lost bytes.
        std::fs::write(&ready, &data[..4096]).unwrap();
        assert_eq!(serve_from_spool(&req), None);
        assert!(!req.dest.exists(), "a torn file reached Postgres");
        assert!(!ready.exists(), "the torn file is dropped, so it is fetched again");
        let (_dir, ready, req) = spool_with(&data);
        let mut zeroed = data.clone();
        zeroed[40_000..48_192].fill(0);
        std::fs::write(&ready, &zeroed).unwrap();
        assert_eq!(serve_from_spool(&req), None);
        assert!(!req.dest.exists() && !ready.exists());
    }

    #[test]
    fn only_segments_come_from_the_spool() {
        let (dir, _ready, mut req) = spool_with(&segment_bytes(1));
        for name in ["00000002.history", "00000001000000000000000", "../00000001000000000000005"] {
            req.name = name.into();
            assert_eq!(serve_from_spool(&req), None, "{name}");
        }
        req.name = "000000010000000000000006".into();
        assert_eq!(serve_from_spool(&req), None, "not spooled");
        req.name = NAME.into();
        req.spool = None;
        assert_eq!(serve_from_spool(&req), None, "no spool");
        assert!(std::fs::read_dir(dir.path()).unwrap().flatten().all(|e| e.file_name() != "RECOVERYXLOG"));
    }

    #[test]
    fn waits_for_a_download_in_flight_but_not_for_a_gone_prefetcher() {
        let data = segment_bytes(9);
        let (_dir, ready, req) = spool_with(&data);
        let spool = req.spool.clone().unwrap();
        std::fs::remove_file(&ready).unwrap();
        // A leftover partial file without a prefetcher: no waiting.
        let partial = partial_path(&spool, NAME);
        std::fs::write(&partial, b"").unwrap();
        let t0 = Instant::now();
        assert_eq!(serve_from_spool(&req), None);
        assert!(t0.elapsed() < Duration::from_secs(1));
        // A prefetcher (holding the lock) finishing the download a little later.
        let lock = std::fs::File::create(spool.join(LOCK)).unwrap();
        lock.lock().unwrap();
        let writer = std::thread::spawn({
            let (partial, ready, data) = (partial.clone(), ready.clone(), data.clone());
            move || {
                std::thread::sleep(Duration::from_millis(100));
                std::fs::write(&partial, &data).unwrap();
                std::fs::rename(&partial, &ready).unwrap();
            }
        });
        assert_eq!(serve_from_spool(&req), Some(Fetched::Spool));
        writer.join().unwrap();
        assert_eq!(std::fs::read(&req.dest).unwrap(), data);
    }

    #[test]
    fn cleaning_keeps_the_last_taken_segment_and_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let name = |n: u64| WalFileName::segment(TimelineId(1), SegNo(n)).to_name(seg16());
        for f in [
            format!("{}.00000001", name(4)),
            format!("{}.00000001", name(5)),
            format!("{}.00000001", name(6)),
            format!("{}.00000001", name(9)),
            format!("{}.00000001", WalFileName::segment(TimelineId(2), SegNo(6)).to_name(seg16())),
            format!(".{}.tmp", name(7)),
            WANT.to_string(),
        ] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        clean_spool(dir.path(), seg16(), TimelineId(1), SegNo(5), 3);
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
        left.sort();
        let want = vec![
            format!(".{}.tmp", name(7)),
            WANT.to_string(),
            format!("{}.00000001", name(5)),
            format!("{}.00000001", name(6)),
        ];
        assert_eq!(left, want);
        clear_spool(dir.path());
        let left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
        assert_eq!(left, vec![WANT.to_string()]);
    }
}
