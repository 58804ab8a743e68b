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
//! 3. after a few seconds (a `wal-fetch` that read the old binding just
//!    before finishes), what is still missing is copied and the format-1
//!    keys are deleted: nothing reads them any more.
//!
//! Run again after an interruption, it starts over at step 1 (format 1) or
//! at step 3 (format 2). A running `pgpitr stream` or `pgpitr backup` would
//! keep writing format-1 keys, so a live lease or a running backup refuses
//! the migration, checked again just before the switch.

use crate::flat::from_flat;
use crate::{FORMAT_VERSION, RepoError, Result, backup, layout, lease};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use pgpitr_storage::{ObjectMeta, Storage};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Objects copied at once.
const AT_ONCE: usize = 16;
/// Between the switch and the deletions: a `wal-fetch` that read the old
/// binding just before the switch finishes its reads of the old keys.
const SWITCH_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

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
    let mut binding = crate::read_binding(storage.as_ref()).await?;
    let mut out = Migrated { from_format: binding.format_version, ..Migrated::default() };
    match binding.format_version {
        1 => {}
        FORMAT_VERSION => {
            // An interrupted run after the switch: what is left of format 1.
            copy_flat(&storage, &mut out).await?;
            out.deleted = delete_flat(storage.as_ref()).await?;
            return Ok(out);
        }
        // Encrypted repositories are made in the current layout.
        crate::ENCRYPTED_FORMAT => return Ok(out),
        found => return Err(RepoError::Format { location, found }),
    }
    refuse_writers(storage.as_ref()).await?;
    // 1. Copy.
    copy_flat(&storage, &mut out).await?;
    // 2. Switch, if nothing started writing format 1 meanwhile; a copy of
    // what such a writer stored would be missing.
    refuse_writers(storage.as_ref()).await?;
    copy_flat(&storage, &mut out).await?;
    binding.format_version = FORMAT_VERSION;
    let body = serde_json::to_vec_pretty(&binding).expect("binding serialises");
    storage.put(layout::BINDING, Bytes::from(body)).await?;
    // 3. Clean up.
    tokio::time::sleep(SWITCH_GRACE).await;
    copy_flat(&storage, &mut out).await?;
    out.deleted = delete_flat(storage.as_ref()).await?;
    Ok(out)
}

/// Every key of today's layout under `wal/` and `timelines/`, with its size.
async fn copies(storage: &dyn Storage) -> Result<HashMap<String, u64>> {
    let mut out = HashMap::new();
    for prefix in [crate::wal::PREFIX, crate::wal::HISTORY_PREFIX] {
        for m in storage.list(prefix).await? {
            if from_flat(&m.key).is_none() || prefix == crate::wal::HISTORY_PREFIX {
                out.insert(m.key, m.size);
            }
        }
    }
    Ok(out)
}

/// The format-1 keys: history files directly under `wal/`, WAL directly
/// under `wal/<TLI>/`.
async fn flat_keys(storage: &dyn Storage) -> Result<Vec<ObjectMeta>> {
    let mut flat = storage.list_shallow(crate::wal::PREFIX).await?;
    for tl in storage.list_dirs(crate::wal::PREFIX).await? {
        flat.extend(storage.list_shallow(&tl).await?);
    }
    flat.retain(|m| from_flat(&m.key).is_some_and(|k| k != m.key));
    Ok(flat)
}

/// Copies every format-1 key that has no copy of the same size yet; the
/// first pass also counts the copies already in place.
async fn copy_flat(storage: &Arc<dyn Storage>, out: &mut Migrated) -> Result<()> {
    let first = out.copied == 0 && out.already_copied == 0;
    let have = copies(storage.as_ref()).await?;
    let mut todo = Vec::new();
    for m in flat_keys(storage.as_ref()).await? {
        let Some(to) = from_flat(&m.key) else { continue };
        if have.get(&to) == Some(&m.size) {
            out.already_copied += usize::from(first);
        } else {
            todo.push((m.key, to));
        }
    }
    let n = todo.len();
    futures_util::stream::iter(todo)
        .map(|(from, to)| {
            let storage = storage.clone();
            async move {
                let body = storage.get(&from).await?;
                storage.put(&to, body).await?;
                Ok::<_, RepoError>(())
            }
        })
        .buffer_unordered(AT_ONCE)
        .try_collect::<Vec<()>>()
        .await?;
    out.copied += n;
    Ok(())
}

/// Deletes the format-1 keys whose copy is in place.
async fn delete_flat(storage: &dyn Storage) -> Result<usize> {
    let have = copies(storage).await?;
    let doomed: Vec<String> = flat_keys(storage)
        .await?
        .into_iter()
        .filter(|m| from_flat(&m.key).and_then(|k| have.get(&k).copied()) == Some(m.size))
        .map(|m| m.key)
        .collect();
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
