//! Stream leases: a running `pgpitr stream` says so in the repository.
//!
//! ```text
//! streams/<SLOT>.json    StreamLease: timeline, durable LSN, host/pid, renewed every 10 s
//! ```
//!
//! The stream writes its lease once it holds its slot, renews it every
//! [`RENEW_INTERVAL`], and deletes it when it stops. A backup reads the
//! leases to learn, instead of guessing, whether a stream will store the
//! WAL it needs: a lease renewed within [`STALE_INTERVALS`] of its own
//! renewal interval is live; an older one is what a killed stream left.
//! Leases are hints for efficiency only: durability never depends on them
//! (a backup that finds none fetches its WAL itself).

use crate::{RepoError, Result, u64_string};
use bytes::Bytes;
use pgpitr_storage::{Storage, StorageError};
use pgpitr_types::{Lsn, TimelineId};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const PREFIX: &str = "streams/";
/// A stream renews its lease this often.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// A lease not renewed for this many of its renewal intervals is stale.
pub const STALE_INTERVALS: u32 = 3;
/// Bumped when the lease changes incompatibly.
pub const LEASE_FORMAT_VERSION: u32 = 1;
/// Renewal intervals outside this range are taken as its nearest end, so a
/// damaged lease cannot claim to be live for days.
const INTERVAL_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

/// `streams/<SLOT>.json`: what a running stream tells backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamLease {
    pub format_version: u32,
    /// The replication slot the stream holds; also the key.
    pub slot: String,
    /// A string: JSON readers lose precision above 2^53.
    #[serde(with = "u64_string")]
    pub system_identifier: u64,
    /// The timeline being streamed.
    pub timeline: TimelineId,
    /// Everything of `timeline` the stream received before this is durable
    /// in the repository (as of `updated_at`).
    pub durable_lsn: Lsn,
    pub host: String,
    pub pid: u32,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// RFC 3339, UTC; refreshed every `renew_interval_ms`.
    pub updated_at: String,
    pub renew_interval_ms: u64,
    /// `pgpitr <version>` of the stream.
    pub pgpitr_version: String,
}

impl StreamLease {
    /// `streams/<slot>.json`
    pub fn key_for(slot: &str) -> String {
        format!("{PREFIX}{slot}.json")
    }

    pub fn key(&self) -> String {
        Self::key_for(&self.slot)
    }

    /// The renewal interval the lease promises, within sane bounds.
    pub fn renew_interval(&self) -> Duration {
        Duration::from_millis(self.renew_interval_ms).clamp(INTERVAL_RANGE.0, INTERVAL_RANGE.1)
    }

    /// How long ago the lease was renewed (zero if the writer's clock is
    /// ahead); `None` when `updated_at` is unreadable.
    pub fn age(&self, now: jiff::Timestamp) -> Option<Duration> {
        let t: jiff::Timestamp = self.updated_at.parse().ok()?;
        Some(Duration::try_from(now.duration_since(t)).unwrap_or_default())
    }

    /// Renewed within [`STALE_INTERVALS`] renewal intervals: its stream is
    /// running (or died only moments ago).
    pub fn is_live(&self, now: jiff::Timestamp) -> bool {
        self.age(now).is_some_and(|a| a < self.renew_interval() * STALE_INTERVALS)
    }
}

/// Stores (creates or renews) a lease.
pub async fn write(storage: &dyn Storage, lease: &StreamLease) -> Result<(), StorageError> {
    let body = serde_json::to_vec_pretty(lease).expect("lease serialises");
    storage.put(&lease.key(), Bytes::from(body)).await
}

/// Deletes the lease of `slot`; a missing one is fine.
pub async fn delete(storage: &dyn Storage, slot: &str) -> Result<(), StorageError> {
    storage.delete(&StreamLease::key_for(slot)).await
}

/// Every readable lease, live or not, by slot. Keys that are not
/// `streams/<name>.json` are ignored; an unreadable lease (half-written by
/// a crash, or damaged) is skipped with a debug log, since leases are hints.
pub async fn read_all(storage: &dyn Storage) -> Result<Vec<StreamLease>> {
    let mut out = Vec::new();
    for meta in storage.list(PREFIX).await? {
        let Some(slot) = meta.key.strip_prefix(PREFIX).and_then(|k| k.strip_suffix(".json")) else { continue };
        if slot.is_empty() || slot.contains('/') {
            continue;
        }
        let raw = match storage.get(&meta.key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue, // the stream stopped meanwhile
            Err(e) => return Err(RepoError::Storage(e)),
        };
        match serde_json::from_slice::<StreamLease>(&raw) {
            Ok(l) if l.slot == slot => out.push(l),
            Ok(l) => tracing::debug!(key = %meta.key, slot = %l.slot, "stream lease names another slot; ignored"),
            Err(e) => tracing::debug!(key = %meta.key, "unreadable stream lease ignored: {e}"),
        }
    }
    out.sort_by(|a, b| a.slot.cmp(&b.slot));
    Ok(out)
}

/// One lease as `pgpitr list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamSummary {
    pub slot: String,
    pub timeline: TimelineId,
    pub durable_lsn: Lsn,
    pub host: String,
    pub pid: u32,
    pub started_at: String,
    pub updated_at: String,
    /// Renewed recently enough to count as running.
    pub live: bool,
}

impl StreamSummary {
    pub fn of(lease: &StreamLease, now: jiff::Timestamp) -> StreamSummary {
        StreamSummary {
            slot: lease.slot.clone(),
            timeline: lease.timeline,
            durable_lsn: lease.durable_lsn,
            host: lease.host.clone(),
            pid: lease.pid,
            started_at: lease.started_at.clone(),
            updated_at: lease.updated_at.clone(),
            live: lease.is_live(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(slot: &str, updated: jiff::Timestamp) -> StreamLease {
        StreamLease {
            format_version: LEASE_FORMAT_VERSION,
            slot: slot.into(),
            system_identifier: 7_000_000_000_000_000_001,
            timeline: TimelineId(2),
            durable_lsn: Lsn(0x3000_0000),
            host: "h".into(),
            pid: 1,
            started_at: updated.to_string(),
            updated_at: updated.to_string(),
            renew_interval_ms: 10_000,
            pgpitr_version: "pgpitr test".into(),
        }
    }

    #[test]
    fn liveness_follows_the_renewal_interval() {
        let t0: jiff::Timestamp = "2026-03-02T10:00:00Z".parse().unwrap();
        let secs = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        let mut l = lease("pgpitr", t0);
        assert!(l.is_live(t0));
        assert!(l.is_live(secs(29)));
        assert!(!l.is_live(secs(30)));
        // A writer whose clock is ahead is not punished.
        assert!(l.is_live(secs(-100)));
        assert_eq!(l.age(secs(-100)), Some(Duration::ZERO));
        // The interval is the lease's own, within bounds.
        l.renew_interval_ms = 2_000;
        assert!(!l.is_live(secs(6)));
        l.renew_interval_ms = u64::MAX;
        assert!(!l.is_live(secs(901)));
        l.renew_interval_ms = 0;
        assert!(l.is_live(secs(2)) && !l.is_live(secs(3)));
        l.updated_at = "garbage".into();
        assert!(!l.is_live(t0));
        assert_eq!(StreamLease::key_for("pgpitr"), "streams/pgpitr.json");
    }

    #[tokio::test]
    async fn written_read_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let storage = pgpitr_storage::LocalStorage::new(dir.path());
        let now = jiff::Timestamp::now();
        assert!(read_all(&storage).await.unwrap().is_empty());
        write(&storage, &lease("b", now)).await.unwrap();
        write(&storage, &lease("a", now)).await.unwrap();
        // Foreign, damaged and mismatched objects are not leases.
        storage.put("streams/c.json", Bytes::from_static(b"{not json")).await.unwrap();
        storage.put("streams/x/y.json", Bytes::from_static(b"{}")).await.unwrap();
        storage.put("streams/d.json", Bytes::from(serde_json::to_vec(&lease("other", now)).unwrap())).await.unwrap();
        let all = read_all(&storage).await.unwrap();
        assert_eq!(all.iter().map(|l| l.slot.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(all[0], lease("a", now));
        let raw = storage.get("streams/a.json").await.unwrap();
        assert!(std::str::from_utf8(&raw).unwrap().contains("\"system_identifier\": \"7000000000000000001\""));
        delete(&storage, "a").await.unwrap();
        delete(&storage, "a").await.unwrap();
        assert_eq!(read_all(&storage).await.unwrap().len(), 1);
        let s = StreamSummary::of(&all[1], now);
        assert!(s.live);
        assert_eq!(serde_json::to_value(&s).unwrap()["durable_lsn"], "0/30000000");
    }
}
