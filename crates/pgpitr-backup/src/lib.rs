//! Base backups: `BASE_BACKUP` over the replication protocol, streamed into
//! the repository in bounded parts, and extracted back into a directory.
//!
//! ```text
//!  Postgres ──BASE_BACKUP (lz4 frames of the tar)──▶ cut into parts ──container──▶ put ──▶ backups/<ID>/…
//!     │         (server-lz4; or the plain tar,        (≤ part_size)   (client-lz4: lz4 on the blocking pool)
//!     │          client-lz4 / none)                    ≤ max_in_flight parts at once: the
//!     │                                                connection is read only when a slot is free
//!     └──temporary slot (2nd connection)──▶ WAL start..stop ──▶ wal/…
//!                         (unless a live stream lease, streams/<slot>.json, says a stream stores it)
//!
//!  backups/<ID>/…  ──get, check (parallel, in order)──▶ [lz4 frame decoder] ──▶ tar reader ──▶ files (CRC32C vs manifest)
//! ```
//!
//! Invariants:
//! - `backup.json` is written only after every part, the manifest, and all
//!   WAL from start to stop LSN are durable; a backup without it is never
//!   listed as complete, whatever interrupted it.
//! - Memory is bounded by `part_size × (max_in_flight × 2 + 1)` (plus the
//!   manifest), whatever the size of the database; nothing is staged on disk.
//! - Extraction verifies every part against `backup.json` and every file
//!   against the manifest, and writes `global/pg_control` last, so a
//!   half-extracted directory can never start.

mod delta;
mod incremental;
mod notice;
mod progress;
mod schedule;
mod take;
mod upload;
mod walrange;

pub use notice::parse_checksum_notice;
pub use progress::{BackupPhase, BackupProgress};
pub use schedule::{Schedule, ScheduleStats, run_scheduled};
pub use take::take_backup;

pub use pgpitr_repo::backup::IncrementalMethod;
use pgpitr_types::{Lsn, TimelineId};
use std::sync::Arc;
use std::time::Duration;

/// `CHECKPOINT` mode of `BASE_BACKUP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointMode {
    /// As fast as possible: an I/O burst on the server, the backup starts at once.
    Fast,
    /// Spread over `checkpoint_completion_target`: gentle, but may take minutes.
    Spread,
}

impl CheckpointMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointMode::Fast => "fast",
            CheckpointMode::Spread => "spread",
        }
    }
}

/// Where the WAL from start to stop LSN is expected to come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalMode {
    /// Use what a running `pgpitr stream` stores, when its lease in the
    /// repository says one runs on the backup's timeline; otherwise (or when
    /// the stream cannot or does not store it) fetch it over a temporary
    /// slot taken before the backup starts.
    Auto,
    /// A `pgpitr stream` in the same process stores it: only wait.
    Stream,
}

/// A compression algorithm for backup archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Fastest, least CPU.
    Lz4,
    /// About half of lz4's size at level 1, for more CPU.
    Zstd,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Lz4 => "lz4",
            Algorithm::Zstd => "zstd",
        }
    }
}

/// How the archives are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `server-lz4` when the server supports it, else `client-lz4` (with a warning).
    Auto,
    /// The server compresses (`COMPRESSION 'lz4'` or `'zstd'`); pgpitr
    /// stores the frames as they arrive, without touching them. Fails when
    /// the server was built without the algorithm.
    Server(Algorithm),
    /// The server sends the plain tar; pgpitr compresses each part on its
    /// own cores, sparing the server's CPU.
    Client(Algorithm),
    /// The plain tar, uncompressed.
    None,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Auto => "auto",
            Compression::Server(Algorithm::Lz4) => "server-lz4",
            Compression::Server(Algorithm::Zstd) => "server-zstd",
            Compression::Client(Algorithm::Lz4) => "client-lz4",
            Compression::Client(Algorithm::Zstd) => "client-zstd",
            Compression::None => "none",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub label: String,
    pub checkpoint: CheckpointMode,
    /// Keep a backup in which Postgres found page checksum failures
    /// (recorded in `backup.json`) instead of failing.
    pub allow_checksum_failures: bool,
    /// Overall limit for the WAL from start to stop LSN to become durable.
    pub wal_timeout: Duration,
    pub wal_mode: WalMode,
    pub compression: Compression,
    /// The zstd level (1 to 19), server-side or client-side.
    pub zstd_level: i32,
    /// Raw bytes per stored part (at most 1 GiB).
    pub part_size: usize,
    /// Parts compressed and uploaded at once.
    pub max_in_flight: usize,
    /// Give up on storage after retrying transient errors this long.
    pub upload_timeout: Duration,
    /// `MAX_RATE` in kB/s (32..=1048576), to spare the server's disks.
    pub max_rate_kbps: Option<u32>,
    pub heartbeat_interval: Duration,
    /// A marker older than this is a leftover, deleted by the next backup.
    pub stale_after: Duration,
    /// Live counters for a progress display.
    pub progress: Arc<BackupProgress>,
    /// Held from the start: no retention rule deletes it.
    pub keep_forever: bool,
    /// Whether to take an incremental backup.
    pub incremental: IncrementalMode,
    /// The most backups a chain may hold, its full backup included: past
    /// it, a full backup is taken instead of an incremental one.
    pub max_chain: u32,
}

/// Whether a backup builds on an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncrementalMode {
    /// A full backup.
    Off,
    /// Incremental to the newest backup when the server and the repository
    /// allow it (natively from 17 on, by block delta before), else a full
    /// backup with a warning saying why (scheduled backups).
    Prefer,
    /// Incremental, or an error saying why not (`backup --incremental`):
    /// by this method, or (`None`) natively from 17 on and by block delta
    /// before. A chain already `max_chain` long still gets a full backup.
    Require(Option<IncrementalMethod>),
}

/// `--max-chain`'s default: a full backup and six incrementals.
pub const DEFAULT_MAX_CHAIN: u32 = 7;

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            label: "pgpitr".to_string(),
            checkpoint: CheckpointMode::Spread,
            allow_checksum_failures: false,
            wal_timeout: Duration::from_secs(600),
            wal_mode: WalMode::Auto,
            compression: Compression::Auto,
            zstd_level: pgpitr_repo::object::ZSTD_LEVEL,
            part_size: 16 << 20,
            max_in_flight: 4,
            upload_timeout: Duration::from_secs(600),
            max_rate_kbps: None,
            heartbeat_interval: pgpitr_repo::backup::HEARTBEAT_INTERVAL,
            stale_after: pgpitr_repo::backup::STALE_AFTER,
            progress: Arc::default(),
            keep_forever: false,
            incremental: IncrementalMode::Off,
            max_chain: DEFAULT_MAX_CHAIN,
        }
    }
}

/// The largest part a container holds.
pub const MAX_PART_SIZE: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error(transparent)]
    Pg(#[from] pgpitr_pgwire::Error),
    #[error(transparent)]
    Storage(#[from] pgpitr_storage::StorageError),
    #[error(transparent)]
    Repo(#[from] pgpitr_repo::RepoError),
    #[error("fetching WAL for the backup: {0}")]
    Stream(#[from] pgpitr_archive::StreamError),
    /// Postgres reported page checksum failures; the backup was not kept.
    #[error(
        "PostgreSQL reported page checksum failures during the backup{}; the backup was discarded \
         (--allow-checksum-failures keeps such a backup)",
        describe_failures(.0)
    )]
    ChecksumFailures(Vec<pgpitr_repo::backup::ChecksumFailure>),
    #[error(
        "WAL {start}..{stop} on timeline {tli} did not become durable in the repository within {} s{}",
        .waited.as_secs(), .detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    WalTimeout { tli: TimelineId, start: Lsn, stop: Lsn, waited: Duration, detail: Option<String> },
    #[error("base backup protocol: {0}")]
    Protocol(String),
    #[error("backup {id}: corrupt {what}: {reason}")]
    Corrupt { id: String, what: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    /// An incremental backup was taken but cannot be kept as one (say, a
    /// database made again since its parent): nothing is kept; a full
    /// backup is what to take.
    #[error("{0}; take a full backup")]
    IncrementalUnusable(String),
    #[error("cancelled")]
    Cancelled,
}

fn describe_failures(f: &[pgpitr_repo::backup::ChecksumFailure]) -> String {
    let mut files: Vec<&str> = f.iter().filter_map(|c| c.file.as_deref()).collect();
    files.dedup();
    if files.is_empty() {
        return String::new();
    }
    const SHOWN: usize = 5;
    let more = files.len().saturating_sub(SHOWN);
    let list = files.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
    if more > 0 { format!(" in {list} and {more} more files") } else { format!(" in {list}") }
}

impl BackupError {
    /// Whether trying again later may succeed (network, storage outage,
    /// server restart), as opposed to what needs a person.
    pub fn is_transient(&self) -> bool {
        match self {
            BackupError::Pg(e) => e.is_transient(),
            BackupError::Storage(e) => e.is_transient(),
            BackupError::Repo(pgpitr_repo::RepoError::Storage(e)) => e.is_transient(),
            BackupError::Stream(e) => e.is_transient(),
            BackupError::WalTimeout { .. } => true,
            _ => false,
        }
    }
}
