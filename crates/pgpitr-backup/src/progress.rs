//! Live progress of a backup, read by whoever displays it (a progress bar,
//! periodic log lines); the backup only stores counters.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupPhase {
    Connecting,
    /// Waiting for the server's backup checkpoint.
    Checkpoint,
    /// Receiving and storing data files.
    Streaming,
    /// Waiting for the WAL from start to stop LSN to become durable.
    Wal,
    Finishing,
    Done,
}

impl BackupPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupPhase::Connecting => "connecting",
            BackupPhase::Checkpoint => "waiting for checkpoint",
            BackupPhase::Streaming => "streaming",
            BackupPhase::Wal => "waiting for WAL",
            BackupPhase::Finishing => "finishing",
            BackupPhase::Done => "done",
        }
    }

    fn from_u8(v: u8) -> BackupPhase {
        match v {
            0 => BackupPhase::Connecting,
            1 => BackupPhase::Checkpoint,
            2 => BackupPhase::Streaming,
            3 => BackupPhase::Wal,
            4 => BackupPhase::Finishing,
            _ => BackupPhase::Done,
        }
    }
}

/// Counters updated while a backup runs; share it with `Arc`.
#[derive(Debug, Default)]
pub struct BackupProgress {
    phase: AtomicU8,
    /// The server's size estimate (sum over tablespaces), bytes; 0 = unknown.
    pub total_estimate: AtomicU64,
    /// Tar bytes received from the server (with server compression, as
    /// the server's progress reports count them).
    pub received: AtomicU64,
    /// Tar bytes durable in the repository (with server compression, up to
    /// the server's progress count when the newest stored part was cut).
    pub stored_raw: AtomicU64,
    /// Bytes written to the repository (compressed).
    pub stored: AtomicU64,
}

impl BackupProgress {
    pub fn phase(&self) -> BackupPhase {
        BackupPhase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Zeroes the counters for a new backup.
    pub(crate) fn reset(&self) {
        self.set_phase(BackupPhase::Connecting);
        for c in [&self.total_estimate, &self.received, &self.stored_raw, &self.stored] {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_phase(&self, p: BackupPhase) {
        self.phase.store(p as u8, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn raise(counter: &AtomicU64, to: u64) {
        counter.fetch_max(to, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
