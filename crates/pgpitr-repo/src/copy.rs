//! `pgpitr copy`: a second repository (another region) kept in step with
//! the first, object by object, as stored: an encrypted repository stays
//! encrypted and the copy never needs its key.
//!
//! Order, so that the target is a consistent repository at every moment:
//! the keyring, the binding (new, or changed by a key rotation), timeline
//! histories, WAL in key order (LSN order within a timeline) one object at
//! a time, then each complete backup's parts and manifest and its
//! `backup.json` last; drill reports and the retention record after.
//! Running backups, leases and leftovers are not copied. Every object is
//! read back from the target and its CRC-32 compared with the source's
//! before the next step relies on it. What the target already holds (same
//! key, same size) is skipped, so a copy is incremental, idempotent and
//! resumable. Tail pieces the source has merged away are deleted from the
//! target once copied over; other deletions (expiry) are the target's own.

use crate::backup::{self, BackupId};
use crate::{RepoError, Result, layout, read_binding, wal};
use futures_util::{StreamExt, TryStreamExt};
use pgpitr_storage::Storage;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What a copy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyStats {
    pub copied_objects: usize,
    pub copied_bytes: u64,
    /// Already in the target with the same size.
    pub present_objects: usize,
    /// Tail pieces the source merged away, deleted from the target.
    pub deleted_pieces: usize,
    pub backups: usize,
}

impl CopyStats {
    fn add(&mut self, copied: Option<u64>) {
        if let Some(n) = copied {
            self.copied_objects += 1;
            self.copied_bytes += n;
        }
    }
}

/// Copies what `to` lacks from `from`; both are raw storages (no keys).
/// A pass that meets WAL merged away since its listing (a stream writes
/// the source) lists again, up to a few times.
/// `placement` is the target's own S3 placement (from its URL), recorded in
/// its binding instead of the source's.
pub async fn copy(
    from: Arc<dyn Storage>,
    to: Arc<dyn Storage>,
    placement: Option<crate::S3Placement>,
    parallel: usize,
) -> Result<CopyStats> {
    let mut total = CopyStats::default();
    for _ in 0..5 {
        let (stats, done) = pass(from.clone(), to.clone(), &placement, parallel).await?;
        total.copied_objects += stats.copied_objects;
        total.copied_bytes += stats.copied_bytes;
        total.present_objects = stats.present_objects;
        total.deleted_pieces += stats.deleted_pieces;
        total.backups += stats.backups;
        if done {
            return Ok(total);
        }
    }
    Err(RepoError::Busy(format!(
        "{} changed under every copy pass (WAL merged while it was copied): run the copy again",
        from.describe()
    )))
}

/// One pass; `false` when it stopped at WAL that vanished from the source.
async fn pass(
    from: Arc<dyn Storage>,
    to: Arc<dyn Storage>,
    placement: &Option<crate::S3Placement>,
    parallel: usize,
) -> Result<(CopyStats, bool)> {
    let source = read_binding(from.as_ref()).await?;
    match read_binding(to.as_ref()).await {
        Ok(target) if target.system_identifier != source.system_identifier => {
            return Err(RepoError::OtherCluster {
                location: to.describe(),
                bound: target.system_identifier,
                found: source.system_identifier,
            });
        }
        Ok(target) if target.encryption.is_some() != source.encryption.is_some() => {
            return Err(RepoError::Mismatch {
                location: to.describe(),
                what: "encryption",
                bound: describe_encryption(&target),
                found: describe_encryption(&source),
            });
        }
        // Bound to a key the source does not know: the copy would rebind it.
        Ok(target)
            if target
                .encryption
                .as_ref()
                .zip(source.encryption.as_ref())
                .is_some_and(|(t, s)| t.kek != s.kek && !s.previous.contains(&t.kek)) =>
        {
            return Err(RepoError::Mismatch {
                location: to.describe(),
                what: "encryption key",
                bound: describe_encryption(&target),
                found: describe_encryption(&source),
            });
        }
        Ok(_) | Err(RepoError::NotInitialised { .. }) => {}
        Err(e) => return Err(e),
    }
    let have: BTreeMap<String, u64> = to.list("").await?.into_iter().map(|m| (m.key, m.size)).collect();
    let mut listed = from.list("").await?;
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let sizes: BTreeMap<&str, u64> = listed.iter().map(|m| (m.key.as_str(), m.size)).collect();
    let mut stats = CopyStats::default();
    let missing = |key: &str| have.get(key) != sizes.get(key);

    // The keyring, then the binding (new, or rotated to a key the keyring
    // now wraps with), then histories, then WAL: in order, one at a time.
    // Keyring entries change in place (rotation adds a wrapping, retiring
    // removes one), possibly at the same size: compared by content.
    // Listed again after the rest: a data key made while the rest was
    // listed seals objects that listing holds.
    let keyring = from.list(pgpitr_crypt::keyring::PREFIX).await?;
    for m in &keyring {
        if have.get(&m.key) != Some(&m.size) || differs(from.as_ref(), to.as_ref(), &m.key).await? {
            stats.add(copy_one(from.as_ref(), to.as_ref(), &m.key).await?);
        } else {
            stats.present_objects += 1;
        }
    }
    let mut binding = source.clone();
    binding.s3_placement = placement.clone();
    let binding = bytes::Bytes::from(serde_json::to_vec_pretty(&binding).expect("a binding serialises"));
    if get_opt(to.as_ref(), layout::BINDING).await?.as_ref() != Some(&binding) {
        to.put(layout::BINDING, binding.clone()).await?;
        if to.get(layout::BINDING).await? != binding {
            return Err(RepoError::Corrupt {
                location: to.describe(),
                key: layout::BINDING.into(),
                reason: "the binding reads back otherwise than written".into(),
            });
        }
        stats.add(Some(binding.len() as u64));
    }
    for prefix in [wal::HISTORY_PREFIX, wal::PREFIX] {
        let keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).filter(|k| k.starts_with(prefix)).collect();
        let todo: Vec<&str> = keys.iter().copied().filter(|k| missing(k)).collect();
        stats.present_objects += keys.len() - todo.len();
        // Read ahead from the source, `parallel` at a time; write strictly
        // in order, each verified before the next is written.
        let source = from.as_ref();
        let mut reads = futures_util::stream::iter(todo)
            .map(|k| async move { Ok::<_, RepoError>((k, get_opt(source, k).await?)) })
            .buffered(parallel.max(1));
        // Read-backs run beside the next writes, `parallel` at most.
        let target = to.as_ref();
        let mut checks = futures_util::stream::FuturesUnordered::new();
        while let Some(read) = reads.next().await {
            let (key, data) = read?;
            let Some(data) = data else {
                if prefix == wal::PREFIX {
                    // Merged away since the listing: its segment object is
                    // newer than the listing. Stop here, so that the target
                    // ends where its WAL does, without a gap, and list again.
                    while let Some(c) = checks.next().await {
                        stats.add(Some(c?));
                    }
                    return Ok((stats, false));
                }
                continue;
            };
            let (crc, len) = (crc32fast::hash(&data), data.len() as u64);
            target.put(key, data).await?;
            checks.push(verify(target, key, crc, len));
            if checks.len() >= parallel.max(1) {
                stats.add(checks.next().await.transpose()?);
            }
        }
        while let Some(c) = checks.next().await {
            stats.add(Some(c?));
        }
    }
    // Complete backups: everything but backup.json, `parallel` at a time, then it.
    let complete: BTreeSet<&str> = listed
        .iter()
        .filter_map(|m| m.key.strip_prefix(backup::PREFIX)?.strip_suffix(&format!("/{}", backup::INFO)))
        .filter(|id| BackupId::parse(id).is_some())
        .collect();
    for id in &complete {
        let dir = format!("{}{id}/", backup::PREFIX);
        let info = format!("{dir}{}", backup::INFO);
        let marker = format!("{dir}{}", backup::MARKER);
        let parts: Vec<&str> = listed
            .iter()
            .map(|m| m.key.as_str())
            .filter(|k| k.starts_with(&dir) && *k != info && *k != marker)
            .collect();
        let todo: Vec<&str> = parts.iter().copied().filter(|k| missing(k)).collect();
        stats.present_objects += parts.len() - todo.len();
        let copied: Vec<Option<u64>> = futures_util::stream::iter(todo)
            .map(|k| copy_one(from.as_ref(), to.as_ref(), k))
            .buffer_unordered(parallel.max(1))
            .try_collect()
            .await?;
        copied.into_iter().for_each(|c| stats.add(c));
        if missing(&info) || differs(from.as_ref(), to.as_ref(), &info).await? {
            // Expiry deletes backup.json first: if it is still there, every
            // part was. (It changes in place when a hold is set.)
            let c = copy_one(from.as_ref(), to.as_ref(), &info).await?;
            stats.backups += usize::from(c.is_some());
            stats.add(c);
        } else {
            stats.present_objects += 1;
        }
    }
    for m in listed.iter().filter(|m| m.key.starts_with(crate::drills::PREFIX) || m.key == crate::retention::RECORD_KEY)
    {
        if missing(&m.key)
            || (m.key == crate::retention::RECORD_KEY && differs(from.as_ref(), to.as_ref(), &m.key).await?)
        {
            stats.add(copy_one(from.as_ref(), to.as_ref(), &m.key).await?);
        }
    }
    // Pieces merged away in the source, once the target holds what covers
    // them; never while a stream writes the target (after a failover its
    // pieces are its own).
    let streamed = have.keys().any(|k| k.starts_with(crate::lease::PREFIX));
    let stale = if streamed { Vec::new() } else { covered_pieces(to.as_ref(), &sizes).await? };
    for chunk in stale.chunks(1000) {
        to.delete_many(chunk).await?;
    }
    stats.deleted_pieces = stale.len();
    Ok((stats, true))
}

/// Tail pieces in the target that the source no longer lists and that
/// another object of the target covers (the same timeline, a range
/// holding theirs).
async fn covered_pieces(to: &dyn Storage, source: &BTreeMap<&str, u64>) -> Result<Vec<String>> {
    let seg = read_binding(to).await?.wal_segment_size;
    let ids: Vec<(String, wal::WalObjectId)> = to
        .list(wal::PREFIX)
        .await?
        .into_iter()
        .filter_map(|m| Some((m.key.clone(), wal::WalObjectId::parse(&m.key, seg)?)))
        .collect();
    let mut stale = Vec::new();
    for (key, id) in &ids {
        if !key.ends_with(".part") || source.contains_key(key.as_str()) {
            continue;
        }
        let (start, end) = id.range(seg);
        let covered = ids.iter().any(|(k, o)| {
            let (s, e) = o.range(seg);
            k != key && o.tli == id.tli && s <= start && e >= end && !(s == start && e == end)
        });
        if covered {
            stale.push(key.clone());
        }
    }
    Ok(stale)
}

/// Whether the target's copy of a small object that changes in place
/// differs from the source's (either missing counts as different).
async fn differs(from: &dyn Storage, to: &dyn Storage, key: &str) -> Result<bool> {
    let (a, b) = (get_opt(from, key).await?, get_opt(to, key).await?);
    Ok(a.is_none() || a != b)
}

/// An object's bytes; `None` when it does not exist.
async fn get_opt(s: &dyn Storage, key: &str) -> Result<Option<bytes::Bytes>> {
    match s.get(key).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn describe_encryption(b: &crate::Binding) -> String {
    match &b.encryption {
        Some(e) => format!("key {} {}", e.kek.kind, e.kek.id),
        None => "none".into(),
    }
}

/// Copies one object and reads it back: the target must return exactly
/// the bytes read from the source. Returns their size; `None` for an object
/// the source deleted since its listing (a merged piece, an expired backup,
/// whose `backup.json` goes first): the next copy sees what replaced it.
async fn copy_one(from: &dyn Storage, to: &dyn Storage, key: &str) -> Result<Option<u64>> {
    match get_opt(from, key).await? {
        Some(data) => Ok(Some(put_verified(to, key, data).await?)),
        None => Ok(None),
    }
}

/// Writes `data` as `key` and reads it back: the target must return
/// exactly these bytes. Returns their size.
async fn put_verified(to: &dyn Storage, key: &str, data: bytes::Bytes) -> Result<u64> {
    let (crc, len) = (crc32fast::hash(&data), data.len() as u64);
    to.put(key, data).await?;
    verify(to, key, crc, len).await
}

/// Reads `key` back from the target: `len` bytes with CRC-32 `crc`.
async fn verify(to: &dyn Storage, key: &str, crc: u32, len: u64) -> Result<u64> {
    let back = to.get(key).await?;
    if back.len() as u64 != len || crc32fast::hash(&back) != crc {
        return Err(RepoError::Corrupt {
            location: to.describe(),
            key: key.to_string(),
            reason: format!(
                "the copy reads back as {} bytes with CRC-32 {:08x}, not the {len} bytes with {crc:08x} written",
                back.len(),
                crc32fast::hash(&back)
            ),
        });
    }
    Ok(len)
}
