//! Restore drills' reports, kept in the repository beside what they tested.
//!
//! ```text
//! drills/<ID>.json    DrillReport: target, point reached, RTO per phase, checks
//! ```
//!
//! `pgpitr drill` writes one report when it ends, passed or failed; `list`
//! shows the newest and the stream's metrics read the last one. The ID is
//! the drill's start time, so keys sort by age.

use crate::{Repository, Result};
use bytes::Bytes;
use pgpitr_storage::PutOutcome;
use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "drills/";
/// Reports beyond this many, oldest first, are deleted by `expire`.
pub const KEEP_REPORTS: usize = 200;

/// What one drill did and found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// The start time, `YYYYMMDDTHHMMSSZ`; also the key.
    pub id: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    /// Every check passed and the RTO met its objective.
    pub ok: bool,
    /// The target as asked: `latest`, `random` or a time.
    pub target: String,
    /// The recovery target restored to (a time for `random`), as planned.
    pub recovery_target: String,
    pub backup: Option<String>,
    /// The last commit the plan said recovery replays (time, LSN).
    pub expected_last_commit: Option<String>,
    pub reached: Option<DrillReached>,
    pub phases: DrillPhases,
    /// Plan, download and replay: until the restored server took writes.
    pub rto_seconds: Option<f64>,
    pub rto_objective_seconds: Option<f64>,
    /// Backup bytes read from the repository, and WAL replayed.
    pub backup_bytes: u64,
    pub wal_bytes: u64,
    pub checks: Vec<CheckOutcome>,
    /// Why the drill stopped before its checks, if it did.
    pub error: Option<String>,
    /// `pgpitr <version>` that ran it.
    pub pgpitr_version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillReached {
    /// `promoted`, or what the server did instead.
    pub state: String,
    pub last_replayed_commit_time: Option<String>,
    pub last_replayed_lsn: Option<String>,
    pub timeline: Option<u32>,
}

/// Seconds per phase; a phase not reached is absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillPhases {
    pub plan: Option<f64>,
    pub download: Option<f64>,
    pub replay: Option<f64>,
    pub checks: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckOutcome {
    pub name: String,
    pub ok: bool,
    /// What was found (a value, a count, the error), one line.
    pub detail: String,
    pub seconds: f64,
}

impl DrillReport {
    pub fn key(&self) -> String {
        format!("{PREFIX}{}.json", self.id)
    }

    /// The checks that failed, by name.
    pub fn failed_checks(&self) -> Vec<&str> {
        self.checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect()
    }
}

impl Repository {
    /// Stores a drill's report under a new key: a drill that started in
    /// the same second (a CronJob beside the stream's schedule) gets its
    /// ID suffixed (`-2`, `-3`, ...), never replacing the other's.
    pub async fn put_drill(&self, report: &mut DrillReport) -> Result<()> {
        let base = report.id.clone();
        for n in 1..=100u32 {
            if n > 1 {
                report.id = format!("{base}-{n}");
            }
            let body = serde_json::to_vec_pretty(report).expect("a drill report serialises");
            if self.storage().put_if_absent(&report.key(), Bytes::from(body)).await? == PutOutcome::Created {
                return Ok(());
            }
        }
        Err(crate::RepoError::Busy(format!("100 drill reports started in the second {base}")))
    }

    /// The keys of the stored drill reports, oldest first.
    pub async fn drill_keys(&self) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .storage()
            .list(PREFIX)
            .await?
            .into_iter()
            .map(|m| m.key)
            .filter(|k| k.ends_with(".json") && !k[PREFIX.len()..].contains('/'))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// The newest `n` drill reports, newest first. A report that cannot be
    /// read is skipped with a warning: it must not hide the others.
    pub async fn recent_drills(&self, n: usize) -> Result<Vec<DrillReport>> {
        let keys = self.drill_keys().await?;
        let mut out = Vec::new();
        for key in keys.iter().rev().take(n) {
            let body = match self.storage().get(key).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => continue,
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "skipping a drill report that cannot be read");
                    continue;
                }
            };
            match serde_json::from_slice::<DrillReport>(&body) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(key = %key, error = %e, "skipping a drill report that cannot be read"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterIdentity;
    use pgpitr_storage::{MemoryStorage, Storage};
    use std::sync::Arc;

    #[tokio::test]
    async fn reports_are_stored_and_read_newest_first_skipping_damaged_ones() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let identity = ClusterIdentity {
            system_identifier: 7,
            pg_version_num: 150_000,
            wal_segment_size: pgpitr_types::WalSegSize::new(16 << 20).unwrap(),
        };
        let (repo, _) = Repository::init(storage.clone(), &identity).await.unwrap();
        for (id, ok) in [("20261201T000000Z", true), ("20261203T000000Z", false), ("20261202T000000Z", true)] {
            let mut r = DrillReport { id: id.into(), ok, ..Default::default() };
            repo.put_drill(&mut r).await.unwrap();
        }
        // The same second again: stored beside it, not over it.
        let mut again = DrillReport { id: "20261201T000000Z".into(), ..Default::default() };
        repo.put_drill(&mut again).await.unwrap();
        assert_eq!(again.id, "20261201T000000Z-2");
        storage.put("drills/20261204T000000Z.json", Bytes::from_static(b"{not json")).await.unwrap();
        let recent = repo.recent_drills(3).await.unwrap();
        let ids: Vec<&str> = recent.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["20261203T000000Z", "20261202T000000Z"]);
        assert!(!recent[0].ok);
        assert_eq!(repo.drill_keys().await.unwrap().len(), 5);
    }
}
