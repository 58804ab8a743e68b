//! WAL into the repository: the durability core that `pgpitr stream` and
//! a backup's WAL fetch (`archive_range`) both run.
//!
//! The durability contract: the write and flush positions reported to
//! Postgres never pass WAL that is durable in the repository (local
//! directory: fsynced; S3: PUT acknowledged). The slot therefore keeps on the
//! server every byte not yet stored, and `kill -9` at any moment loses
//! nothing: the next start resumes exactly where the repository ends.

mod compact;
mod durable;
mod freshness;
mod index;
mod journal;
pub mod push;
mod schedule;
mod segment;
mod source;
pub mod start;
mod tail;
mod upload;
mod writer;

pub use durable::DurableTracker;
pub use source::WalSource;
pub use start::ResumePlan;
pub use writer::{Flow, WalWriter, archive_range};

use pgpitr_types::Lsn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Physical replication slot name.
    pub slot: String,
    /// WAL is durable in the repository at most this long after it arrived.
    pub flush_interval: Duration,
    /// Standby status updates are sent at least this often.
    pub status_interval: Duration,
    /// Store WAL as soon as it arrives (batching while an upload is in
    /// flight), for use as a synchronous standby.
    pub synchronous: bool,
    /// Complete segments being stored at once; reading from the server
    /// pauses beyond this, which bounds memory.
    pub max_segments_in_flight: usize,
    /// How long a shutdown waits for storage to accept what is pending.
    pub shutdown_timeout: Duration,
    /// Create the slot when it is missing but the server continues the
    /// repository's history (after a failover).
    pub create_slot: bool,
    /// Told when a base backup is needed at once: after a gap in the WAL.
    pub backup_now: Option<Arc<tokio::sync::Notify>>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            slot: "pgpitr".into(),
            flush_interval: Duration::from_secs(1),
            status_interval: Duration::from_secs(10),
            synchronous: false,
            max_segments_in_flight: 2,
            shutdown_timeout: Duration::from_secs(8),
            create_slot: true,
            backup_now: None,
        }
    }
}

/// Live counters, for logs and metrics. Times are Unix µs, 0 for none.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub timeline: AtomicU32,
    pub received_lsn: AtomicU64,
    pub durable_lsn: AtomicU64,
    /// The server's end of WAL, from its last keepalive.
    pub server_lsn: AtomicU64,
    pub received_bytes: AtomicU64,
    pub uploads: AtomicU64,
    pub reconnects: AtomicU64,
    pub scan_errors: AtomicU64,
    /// Replicating now (between START_REPLICATION and the session's end).
    pub streaming: AtomicBool,
    /// Arrival of the oldest WAL received but not yet durable (up to 10 ms
    /// early); 0 when everything received is durable.
    pub unstored_since_us: AtomicI64,
    /// Commit time of the newest commit durable in the repository (from
    /// this process's stream; up to 10 ms behind).
    pub durable_commit_us: AtomicI64,
    /// When the durable position last moved.
    pub durable_advanced_us: AtomicI64,
    /// Pieces merged while their segment filled, and how many objects hold
    /// the open segment's bytes now (journals aside).
    pub merges: AtomicU64,
    pub open_segment_objects: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error(transparent)]
    Pg(#[from] pgpitr_pgwire::Error),
    #[error(transparent)]
    Storage(#[from] pgpitr_storage::StorageError),
    #[error(transparent)]
    Repo(#[from] pgpitr_repo::RepoError),
    #[error("refusing to overwrite {key} with different WAL: {detail}")]
    Conflict { key: String, detail: String },
    #[error(
        "replication slot \"{slot}\" does not exist, but the repository holds WAL up to {durable}: the server may \
         already have removed WAL after that point. Recreate the slot only after checking, e.g. \
         SELECT pg_create_physical_replication_slot('{slot}', true), then start again"
    )]
    SlotMissing { slot: String, durable: Lsn },
    /// A slot created after a failover cannot provide the WAL from where
    /// the repository ends (transient: the next session continues from what
    /// the slot keeps, and says what is missing).
    #[error("the server no longer has WAL from {from} on timeline {tli}, where the repository ends")]
    WalGone { tli: pgpitr_types::TimelineId, from: Lsn },
    #[error("replication protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Definite(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("cancelled")]
    Cancelled,
}

impl StreamError {
    /// An object that a listing named was gone when read.
    pub fn is_not_found(&self) -> bool {
        match self {
            StreamError::Repo(e) => e.is_not_found(),
            StreamError::Storage(e) => e.is_not_found(),
            _ => false,
        }
    }

    pub fn is_wal_removed(&self) -> bool {
        matches!(self, StreamError::Pg(e) if matches!(e.kind(), pgpitr_pgwire::ErrorKind::WalRemoved(_)))
    }

    pub fn is_slot_active(&self) -> bool {
        matches!(self, StreamError::Pg(e) if matches!(e.kind(), pgpitr_pgwire::ErrorKind::SlotActive { .. }))
    }

    /// Whether reconnecting (after a pause) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StreamError::Pg(e) => e.is_transient(),
            StreamError::Storage(e) => e.is_transient(),
            StreamError::Repo(pgpitr_repo::RepoError::Storage(e)) => e.is_transient(),
            StreamError::Protocol(_) | StreamError::WalGone { .. } => true,
            _ => false,
        }
    }
}
