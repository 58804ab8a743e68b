use crate::PgTimestamp;
use pgpitr_types::{Lsn, TimelineId};

/// Something a recovery target can refer to, found in the WAL.
///
/// `lsn` is where the record starts (what `pg_waldump` prints). `end_lsn` is
/// where the next record may start: the record's end rounded up to 8 bytes,
/// which is Postgres's `EndRecPtr`. For a WAL switch it is the next segment's
/// start. Replaying WAL up to `end_lsn` replays the record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum WalEvent {
    /// `COMMIT`, or `COMMIT_PREPARED` when `two_phase` (then `xid` is the
    /// prepared transaction's xid, not the committing session's).
    Commit { lsn: Lsn, end_lsn: Lsn, xid: u32, time: PgTimestamp, two_phase: bool },
    /// `ABORT`, or `ABORT_PREPARED` when `two_phase`.
    Abort { lsn: Lsn, end_lsn: Lsn, xid: u32, time: PgTimestamp, two_phase: bool },
    /// `PREPARE TRANSACTION 'gid'`: not an end of a transaction, the later
    /// `Commit`/`Abort` with `two_phase` is.
    Prepare { lsn: Lsn, end_lsn: Lsn, xid: u32, gid: String, time: PgTimestamp },
    /// `pg_create_restore_point(name)`.
    RestorePoint { lsn: Lsn, end_lsn: Lsn, name: String, time: PgTimestamp },
    /// A checkpoint record. Its time has whole-second precision only.
    Checkpoint {
        lsn: Lsn,
        end_lsn: Lsn,
        redo: Lsn,
        tli: TimelineId,
        prev_tli: TimelineId,
        time: PgTimestamp,
        shutdown: bool,
    },
    /// A promotion without an end-of-recovery checkpoint: `tli` starts here.
    EndOfRecovery { lsn: Lsn, end_lsn: Lsn, tli: TimelineId, prev_tli: TimelineId, time: PgTimestamp },
    /// `pg_switch_wal()` or `archive_timeout`: the rest of the segment is padding.
    Switch { lsn: Lsn, end_lsn: Lsn },
}

impl WalEvent {
    pub fn lsn(&self) -> Lsn {
        match *self {
            WalEvent::Commit { lsn, .. }
            | WalEvent::Abort { lsn, .. }
            | WalEvent::Prepare { lsn, .. }
            | WalEvent::RestorePoint { lsn, .. }
            | WalEvent::Checkpoint { lsn, .. }
            | WalEvent::EndOfRecovery { lsn, .. }
            | WalEvent::Switch { lsn, .. } => lsn,
        }
    }

    pub fn end_lsn(&self) -> Lsn {
        match *self {
            WalEvent::Commit { end_lsn, .. }
            | WalEvent::Abort { end_lsn, .. }
            | WalEvent::Prepare { end_lsn, .. }
            | WalEvent::RestorePoint { end_lsn, .. }
            | WalEvent::Checkpoint { end_lsn, .. }
            | WalEvent::EndOfRecovery { end_lsn, .. }
            | WalEvent::Switch { end_lsn, .. } => end_lsn,
        }
    }

    pub fn time(&self) -> Option<PgTimestamp> {
        match *self {
            WalEvent::Commit { time, .. }
            | WalEvent::Abort { time, .. }
            | WalEvent::Prepare { time, .. }
            | WalEvent::RestorePoint { time, .. }
            | WalEvent::Checkpoint { time, .. }
            | WalEvent::EndOfRecovery { time, .. } => Some(time),
            WalEvent::Switch { .. } => None,
        }
    }
}
