//! `pgpitr wal-fetch`: what Postgres's `restore_command` runs, once per file.
//!
//! ```text
//!  postgres ──%f %p──▶ wal-fetch ──hit──▶ rename spool/<name> ──▶ %p
//!                         │ miss: list wal/<TLI>/<name>*, get, verify, assemble ──▶ %p
//!                         └─ .want = <name>; start the prefetcher if none runs
//!  prefetcher (one per spool, flock) ── next N complete segments, P at a time ──▶ spool/<name>
//! ```
//!
//! A file is never handed over half-written or unverified: it is written to
//! a temporary name beside its destination, synced and renamed. "Not
//! stored" is [`Fetched::NotFound`] (exit 1, which Postgres takes as the end
//! of WAL); anything else that goes wrong is an error, which the binary
//! turns into an exit code above 125 so that Postgres stops recovery
//! instead of ending it early at an outage or a hole.

use pgpitr_repo::wal::{self, TimelineWal, WalObjectId, WalObjectKind};
use pgpitr_repo::{RepoError, Repository};
use pgpitr_storage::{LocalStorage, RepoUrl, RetryPolicy, RetryingStorage, S3Storage, Storage};
use pgpitr_types::{SegNo, TimelineHistory, TimelineId, WalFileName, WalSegSize};
use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Segments the prefetcher keeps ready by default.
pub const DEFAULT_PREFETCH: usize = 8;
/// Downloads the prefetcher runs at once.
const PREFETCH_PARALLEL: usize = 4;
/// The prefetcher exits when Postgres has asked for nothing new this long.
const PREFETCH_IDLE_EXIT: Duration = Duration::from_secs(60);
const WANT: &str = ".want";
const LOCK: &str = ".lock";

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
}

/// Opens the repository without the up-front `check`: every call costs a
/// process start, and the first read reports the same failures.
pub async fn open_repo(url: &RepoUrl) -> Result<Repository, FetchError> {
    let policy = RetryPolicy::default();
    let storage: Arc<dyn Storage> = match url {
        RepoUrl::Local(path) => Arc::new(RetryingStorage::new(LocalStorage::new(path), policy)),
        RepoUrl::S3(s3) => Arc::new(RetryingStorage::new(S3Storage::new(s3.options()).await?, policy)),
    };
    Ok(Repository::open(storage).await?)
}

/// Serves one file to Postgres.
pub async fn fetch(req: &FetchRequest) -> Result<Fetched, FetchError> {
    let name = req.name.as_str();
    if name.is_empty() || name.contains('/') || !name.is_ascii() {
        return Err(FetchError::Usage(format!("{name:?} is not a WAL file name")));
    }
    let segment_like = name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit());
    if segment_like
        && let Some(spool) = &req.spool
        && let Some(how) = from_spool(spool, name, &req.dest).await?
    {
        start_prefetch(req, spool);
        return Ok(how);
    }
    let repo = open_repo(&req.repo).await?;
    let seg = repo.seg_size();
    let file = WalFileName::parse(name, seg).map_err(|e| FetchError::Usage(e.to_string()))?;
    let got = match file {
        WalFileName::History { tli } => fetch_history(&repo, tli, &req.dest).await?,
        WalFileName::Segment { tli, segno } => {
            let got = fetch_segment(&repo, seg, tli, segno, &req.dest).await?;
            if got != Fetched::NotFound
                && let Some(spool) = &req.spool
            {
                start_prefetch(req, spool);
            }
            got
        }
        // Postgres never asks for these through restore_command.
        WalFileName::Partial { .. } | WalFileName::Backup { .. } => Fetched::NotFound,
    };
    Ok(got)
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

/// The stored objects of one segment, found by listing only its own keys.
async fn segment_objects(
    repo: &Repository,
    seg: WalSegSize,
    tli: TimelineId,
    segno: SegNo,
) -> Result<TimelineWal, FetchError> {
    let prefix = WalObjectId::segment(tli, segno).key(seg);
    let mut objects: Vec<_> = repo
        .storage()
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|m| {
            WalObjectId::parse(&m.key, seg).filter(|id| id.tli == tli && id.segno == segno).map(|id| (id, m))
        })
        .collect();
    objects.sort_by_key(|(id, _)| (id.segno, id.kind));
    Ok(TimelineWal { objects, ranges: Vec::new() })
}

async fn fetch_segment(
    repo: &Repository,
    seg: WalSegSize,
    tli: TimelineId,
    segno: SegNo,
    dest: &Path,
) -> Result<Fetched, FetchError> {
    let tl = segment_objects(repo, seg, tli, segno).await?;
    let storage = repo.storage().as_ref();
    match wal::assemble_segment(storage, seg, &tl, segno).await? {
        Some(s) => {
            write_atomically(dest, s.data).await?;
            Ok(Fetched::Repository)
        }
        None => {
            // Missing while later WAL of the timeline is stored is a hole,
            // not the end: ending recovery here would silently lose data.
            let later = storage
                .list(&format!("{}{:08X}/", wal::PREFIX, tli.0))
                .await?
                .iter()
                .filter_map(|m| WalObjectId::parse(&m.key, seg))
                .find(|id| id.segno > segno);
            match later {
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
/// Postgres never sees a partial file. Nothing is synced: Postgres deletes
/// `%p` before every call and fetches it again after a crash, and syncing
/// 16 MiB per segment would bound replay by the disk.
async fn write_atomically(dest: &Path, data: bytes::Bytes) -> Result<(), FetchError> {
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let tmp = temp_beside(&dest);
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
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

/// The spooled file for segment `name`: `<name>.<crc32 hex>`. Spool files
/// are not synced (that would bound replay by the disk); the checksum in
/// the name catches one torn by a crash before Postgres could see it.
fn spooled(spool: &Path, name: &str) -> Option<(PathBuf, u32)> {
    let prefix = format!("{name}.");
    std::fs::read_dir(spool).ok()?.flatten().find_map(|e| {
        let f = e.file_name().to_string_lossy().into_owned();
        let crc = u32::from_str_radix(f.strip_prefix(&prefix)?, 16).ok()?;
        Some((e.path(), crc))
    })
}

/// Moves a prefetched, verified segment to `dest`. Waits for a download the
/// prefetcher is running for it, but not for a prefetcher that is gone.
async fn from_spool(spool: &Path, name: &str, dest: &Path) -> Result<Option<Fetched>, FetchError> {
    let partial = spool.join(format!(".{name}.tmp"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while spooled(spool, name).is_none() && partial.exists() && prefetcher_running(spool) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some((ready, crc)) = spooled(spool, name) else { return Ok(None) };
    let intact = tokio::task::spawn_blocking({
        let ready = ready.clone();
        move || std::fs::read(&ready).map(|d| crc32fast::hash(&d) == crc).unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    if !intact {
        let _ = std::fs::remove_file(&ready);
        return Ok(None); // torn or unreadable: fetch from the repository
    }
    match std::fs::rename(&ready, dest) {
        Ok(()) => Ok(Some(Fetched::Spool)),
        // The spool is on another file system: fetch.
        Err(_) => Ok(None),
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

/// Records what Postgres asked for and makes sure a prefetcher runs. Best
/// effort: prefetching only saves time, so failures here are ignored.
fn start_prefetch(req: &FetchRequest, spool: &Path) {
    if req.prefetch == 0 || !spool.is_dir() {
        return;
    }
    let want = spool.join(WANT);
    let tmp = spool.join(format!("{WANT}.{}", std::process::id()));
    if std::fs::write(&tmp, &req.name).and_then(|_| std::fs::rename(&tmp, &want)).is_err() {
        return;
    }
    if prefetcher_running(spool) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let spawned = std::process::Command::new(exe)
        .arg("wal-fetch")
        .arg("--repo")
        .arg(req.repo.to_string())
        .arg("--spool")
        .arg(spool)
        .arg("--prefetch")
        .arg(req.prefetch.to_string())
        .arg("--prefetch-daemon")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        tracing::debug!("cannot start the WAL prefetcher: {e}");
    }
}

/// The prefetcher: keeps the `prefetch` complete segments after the one
/// Postgres last asked for in the spool, until Postgres stops asking or the
/// spool disappears. Only complete segments are prefetched: an unfinished
/// one may still grow, so it is always fetched when asked for.
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
    let mut listed: Option<(TimelineId, BTreeSet<SegNo>, Instant)> = None;
    let mut last_want: Option<(TimelineId, SegNo)> = None;
    let mut changed_at = Instant::now();
    let mut tasks: tokio::task::JoinSet<SegNo> = tokio::task::JoinSet::new();
    let mut running: HashSet<SegNo> = HashSet::new();
    loop {
        if !spool.is_dir() || changed_at.elapsed() > PREFETCH_IDLE_EXIT {
            break;
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
                Some((t, set, when)) => {
                    *t != tli
                        || (window.last().is_some_and(|w| set.last().is_none_or(|l| l < w))
                            && when.elapsed() > Duration::from_secs(5))
                }
                None => true,
            };
            if stale {
                listed = Some((tli, complete_segments(&repo, seg, tli).await?, Instant::now()));
            }
            let set = listed.as_ref().map(|(_, s, _)| s).expect("listed above");
            for s in window {
                if running.len() >= PREFETCH_PARALLEL {
                    break;
                }
                let name = WalFileName::segment(tli, s).to_name(seg);
                if !set.contains(&s) || running.contains(&s) || spooled(spool, &name).is_some() {
                    continue;
                }
                running.insert(s);
                let (repo, spool) = (repo.clone(), spool.to_path_buf());
                tasks.spawn(async move {
                    let dest = spool.join(&name);
                    let tmp = spool.join(format!(".{name}.tmp"));
                    if let Err(e) = download(&repo, seg, tli, s, &tmp, &dest).await {
                        tracing::debug!("prefetching {name} failed: {e}");
                        let _ = std::fs::remove_file(&tmp);
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
    }
    tasks.abort_all();
    drop(lock);
    Ok(())
}

async fn complete_segments(repo: &Repository, seg: WalSegSize, tli: TimelineId) -> Result<BTreeSet<SegNo>, FetchError> {
    Ok(repo
        .storage()
        .list(&format!("{}{:08X}/", wal::PREFIX, tli.0))
        .await?
        .iter()
        .filter_map(|m| WalObjectId::parse(&m.key, seg))
        .filter(|id| id.kind == WalObjectKind::Segment)
        .map(|id| id.segno)
        .collect())
}

async fn download(
    repo: &Repository,
    seg: WalSegSize,
    tli: TimelineId,
    segno: SegNo,
    tmp: &Path,
    dest: &Path,
) -> Result<(), FetchError> {
    let tl = segment_objects(repo, seg, tli, segno).await?;
    let Some(s) = wal::assemble_segment(repo.storage().as_ref(), seg, &tl, segno).await? else {
        return Ok(());
    };
    if !s.complete {
        return Ok(());
    }
    let crc = crc32fast::hash(&s.data);
    let dest = dest.with_file_name(format!("{}.{crc:08x}", dest.file_name().unwrap_or_default().to_string_lossy()));
    let (tmp, shown) = (tmp.to_path_buf(), dest.clone());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&s.data)?;
        std::fs::rename(&tmp, &dest)
    })
    .await
    .map_err(|e| FetchError::Storage(format!("internal error: {e}")))?
    .map_err(|e| io_err("write", &shown, e))
}

/// Removes spooled segments Postgres will not ask for: at or before the one
/// it just took, beyond the window, or of another timeline.
fn clean_spool(spool: &Path, seg: WalSegSize, tli: TimelineId, at: SegNo, prefetch: usize) {
    let Ok(entries) = std::fs::read_dir(spool) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let base = name.split_once('.').map_or(name.as_str(), |(b, _)| b);
        let keep = match WalFileName::parse(base, seg) {
            Ok(WalFileName::Segment { tli: t, segno }) => t == tli && segno > at && segno.0 <= at.0 + prefetch as u64,
            _ => true,
        };
        if !keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
