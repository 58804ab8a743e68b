//! Chains of incremental backups: an incremental backup restores only
//! together with its parent, the parent's parent, and so on down to a full
//! backup. One place decides what a chain is and whether its links hold, for
//! restore, verify, retention and listing.

use crate::backup::BackupInfo;
use std::collections::HashMap;

/// Why a backup's chain cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error(
        "backup {child} is incremental to backup {parent}, which is not a complete backup in the repository: \
         restoring {child} needs its whole chain"
    )]
    MissingParent { child: String, parent: String },
    #[error("backup {child} does not build on backup {parent} as it says: {reason}")]
    BrokenLink { child: String, parent: String, reason: String },
}

/// The complete backups by ID.
pub struct Backups<'a> {
    by_id: HashMap<&'a str, &'a BackupInfo>,
}

impl<'a> Backups<'a> {
    pub fn new(infos: impl IntoIterator<Item = &'a BackupInfo>) -> Backups<'a> {
        Backups { by_id: infos.into_iter().map(|i| (i.id.as_str(), i)).collect() }
    }

    pub fn get(&self, id: &str) -> Option<&'a BackupInfo> {
        self.by_id.get(id).copied()
    }

    /// The backups a restore of `newest` reads, full backup first. Every
    /// member must be complete, and each link hold: the child was taken
    /// from its parent's start, on the same cluster, later than it.
    pub fn chain(&self, newest: &'a BackupInfo) -> Result<Vec<&'a BackupInfo>, ChainError> {
        let mut chain = vec![newest];
        let mut child = newest;
        while let Some(inc) = &child.incremental {
            let parent = self
                .get(&inc.parent)
                .ok_or_else(|| ChainError::MissingParent { child: child.id.clone(), parent: inc.parent.clone() })?;
            let broken =
                |reason: String| ChainError::BrokenLink { child: child.id.clone(), parent: parent.id.clone(), reason };
            if parent.system_identifier != child.system_identifier {
                return Err(broken(format!(
                    "the parent is of another cluster (system identifier {})",
                    parent.system_identifier
                )));
            }
            if (inc.from_lsn, inc.from_tli) != (parent.start_lsn, parent.timeline) {
                return Err(broken(format!(
                    "it starts from {} on timeline {}, the parent at {} on timeline {}",
                    inc.from_lsn, inc.from_tli, parent.start_lsn, parent.timeline
                )));
            }
            // Links only go back in WAL, so a chain cannot loop.
            if parent.start_lsn >= child.start_lsn {
                return Err(broken(format!("the parent starts at {}, not before the child", parent.start_lsn)));
            }
            chain.push(parent);
            child = parent;
        }
        chain.reverse();
        Ok(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{Incremental, IncrementalMethod};
    use pgpitr_types::{Lsn, TimelineId};

    fn info(id: &str, start: u64, parent: Option<(&str, u64)>) -> BackupInfo {
        let json = format!(
            r#"{{"format_version":4,"id":"{id}","label":"t","status":"complete","timeline":1,
            "start_lsn":"0/{start:X}","stop_lsn":"0/{:X}","start_time":"2026-01-01T00:00:00Z",
            "stop_time":"2026-01-01T00:00:01Z","pg_version_num":170000,"system_identifier":"7",
            "archives":[],"manifest":{{"size":0,"crc":0}},"size_bytes":0,"stored_bytes":0,
            "file_count":0,"checksum_failures":[],"wal_source":"repository","pgpitr_version":"t"}}"#,
            start + 1
        );
        let mut i: BackupInfo = serde_json::from_str(&json).unwrap();
        i.incremental = parent.map(|(p, from)| Incremental {
            parent: p.into(),
            from_lsn: Lsn(from),
            from_tli: TimelineId(1),
            method: IncrementalMethod::Native,
            chain_length: 2,
        });
        i
    }

    #[test]
    fn a_chain_goes_back_to_its_full_backup_and_every_link_is_checked() {
        let full = info("A", 0x100, None);
        let i1 = info("B", 0x200, Some(("A", 0x100)));
        let i2 = info("C", 0x300, Some(("B", 0x200)));
        let all = [full.clone(), i1.clone(), i2.clone()];
        let b = Backups::new(&all);
        let ids: Vec<&str> = b.chain(&i2).unwrap().iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["A", "B", "C"]);
        assert_eq!(b.chain(&full).unwrap().len(), 1);

        // The parent deleted: named.
        let without = [full.clone(), i2.clone()];
        let err = Backups::new(&without).chain(&i2).unwrap_err().to_string();
        assert!(err.contains("backup C is incremental to backup B, which is not a complete backup"), "{err}");

        // Taken from another start than the parent's.
        let stray = info("C", 0x300, Some(("B", 0x180)));
        let err = b.chain(&stray).unwrap_err().to_string();
        assert!(err.contains("starts from 0/180 on timeline 1, the parent at 0/200"), "{err}");

        // Of another cluster.
        let mut other = i1.clone();
        other.system_identifier = 8;
        let mixed = [full, other, i2.clone()];
        let err = Backups::new(&mixed).chain(&i2).unwrap_err().to_string();
        assert!(err.contains("another cluster"), "{err}");

        // A link that does not go back in WAL (a loop) is refused.
        let a = info("A", 0x100, Some(("B", 0x200)));
        let b2 = info("B", 0x200, Some(("A", 0x100)));
        let looped = [a.clone(), b2];
        assert!(Backups::new(&looped).chain(&a).is_err());
    }
}
