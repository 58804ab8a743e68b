//! `pgpitr migrate`: moves a format-1 repository to today's layout
//! ([`crate::wal`]), so that a range of WAL is listed without the rest.
//!
//! Safe to interrupt and to run again, and readers see a whole repository
//! at every moment:
//!
//! 1. every format-1 WAL key and history file is copied to its new key
//!    (a copy already there with the same size is kept): readers of the
//!    format-1 repository do not see the copies ([`crate::flat`]);
//! 2. the binding is rewritten with format 2: from now on readers see the
//!    copies, which are complete;
//! 3. the format-1 keys are deleted: nothing reads them any more.
//!
//! Run again after an interruption, it starts over at step 1 (format 1) or
//! at step 3 (format 2). A running `pgpitr stream` or `pgpitr backup` would
//! keep writing format-1 keys that step 3 deletes, so a live lease or a
//! running backup refuses the migration.

use crate::flat::from_flat;
use crate::{Binding, FORMAT_VERSION, RepoError, Result, backup, layout, lease};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use pgpitr_storage::Storage;
use serde::Serialize;
use std::sync::Arc;

/// Objects copied at once.
const AT_ONCE: usize = 16;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Migrated {
    /// The format the repository had.
    pub from_format: u32,
    /// Objects copied to their new keys (those already there are not).
    pub copied: usize,
    pub already_copied: usize,
    /// Format-1 keys deleted.
    pub deleted: usize,
}

/// Migrates the repository in `storage` (the store itself, not a
/// repository opened on it) to [`FORMAT_VERSION`].
pub async fn migrate(storage: Arc<dyn Storage>) -> Result<Migrated> {
    let location = storage.describe();
    let raw = match storage.get(layout::BINDING).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Err(RepoError::NotInitialised { location }),
        Err(e) => return Err(e.into()),
    };
    let mut binding: Binding = serde_json::from_slice(&raw).map_err(|e| RepoError::Corrupt {
        location: location.clone(),
        key: layout::BINDING.to_string(),
        reason: e.to_string(),
    })?;
    let mut out = Migrated { from_format: binding.format_version, ..Migrated::default() };
    match binding.format_version {
        1 => {}
        FORMAT_VERSION => {
            out.deleted = delete_flat(storage.as_ref()).await?;
            return Ok(out);
        }
        found => return Err(RepoError::Format { location, found }),
    }
    refuse_writers(storage.as_ref()).await?;
    // 1. Copy.
    let moves: Vec<(String, String, u64)> = storage
        .list(crate::wal::PREFIX)
        .await?
        .into_iter()
        .filter_map(|m| {
            let to = from_flat(&m.key)?;
            (to != m.key).then_some((m.key, to, m.size))
        })
        .collect();
    let done: Vec<bool> = futures_util::stream::iter(moves)
        .map(|(from, to, size)| {
            let storage = storage.clone();
            async move {
                match storage.head(&to).await {
                    Ok(m) if m.size == size => return Ok::<_, RepoError>(false),
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
                let body = storage.get(&from).await?;
                storage.put(&to, body).await?;
                Ok(true)
            }
        })
        .buffer_unordered(AT_ONCE)
        .try_collect()
        .await?;
    out.copied = done.iter().filter(|c| **c).count();
    out.already_copied = done.len() - out.copied;
    // 2. Switch.
    binding.format_version = FORMAT_VERSION;
    let body = serde_json::to_vec_pretty(&binding).expect("binding serialises");
    storage.put(layout::BINDING, Bytes::from(body)).await?;
    // 3. Clean up.
    out.deleted = delete_flat(storage.as_ref()).await?;
    Ok(out)
}

/// Deletes the format-1 keys of a repository already switched to format 2,
/// each only once its copy is there.
async fn delete_flat(storage: &dyn Storage) -> Result<usize> {
    // History files directly under wal/, WAL directly under wal/<TLI>/.
    let mut flat = storage.list_shallow(crate::wal::PREFIX).await?;
    for tl in storage.list_dirs(crate::wal::PREFIX).await? {
        flat.extend(storage.list_shallow(&tl).await?);
    }
    let mut doomed = Vec::new();
    for m in flat {
        let Some(to) = from_flat(&m.key).filter(|k| *k != m.key) else { continue };
        match storage.head(&to).await {
            Ok(c) if c.size == m.size => doomed.push(m.key),
            _ => {
                return Err(RepoError::Corrupt {
                    location: storage.describe(),
                    key: m.key,
                    reason: format!("its copy {to} is missing or differs; run `pgpitr migrate` again"),
                });
            }
        }
    }
    for chunk in doomed.chunks(1000) {
        storage.delete_many(chunk).await?;
    }
    Ok(doomed.len())
}

/// Refuses while a stream or a backup writes format-1 keys.
async fn refuse_writers(storage: &dyn Storage) -> Result<()> {
    let now = jiff::Timestamp::now();
    if let Some(l) = lease::read_all(storage).await?.iter().find(|l| l.is_live(now)) {
        return Err(RepoError::Busy(format!(
            "pgpitr stream (slot {}, {} pid {}) is writing to the repository: stop it, migrate, then start it again",
            l.slot, l.host, l.pid
        )));
    }
    for e in backup::scan(storage).await? {
        if e.status(now, backup::STALE_AFTER) == backup::BackupStatus::Running {
            return Err(RepoError::Busy(format!(
                "backup {} is running: let it finish (or stop it), then migrate",
                e.id
            )));
        }
    }
    Ok(())
}
