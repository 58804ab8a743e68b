//! `pgpitr copy`: a second repository (another region) kept in step with
//! the first, object by object, as stored: an encrypted repository stays
//! encrypted and the copy never needs its key.
//!
//! Order, so that the target is a consistent repository at every moment:
//! the keyring, the binding (new, or changed by a key rotation), timeline
//! histories, WAL in key order (LSN order within a timeline) one object at
//! a time, then each complete backup's parts and manifest and its
//! `backup.json` last; drill reports and the retention record after.
//! Running backups, leases and leftovers are not copied. Every object's
//! CRC-32 as the target stored it (S3: computed by its server on arrival;
//! elsewhere read back) is compared with the source bytes' before the next
//! step relies on it; inside one S3 endpoint, objects are copied there
//! (CopyObject) and compared by entity tag. What the target already holds (same
//! key, same size) is skipped, so a copy is incremental, idempotent and
//! resumable. Tail pieces the source has merged away are deleted from the
//! target once copied over; other deletions (expiry) are the target's own.

use crate::backup::{self, BackupId};
use crate::{RepoError, Result, layout, read_binding, wal};
use futures_util::{StreamExt, TryStreamExt};
use pgpitr_storage::{S3Site, Storage};
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
    /// Copied inside the object store (S3 CopyObject), not through pgpitr.
    pub server_side: bool,
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
        let (stats, done) = pass(from.clone(), to.clone(), &placement, parallel, false).await?;
        total.copied_objects += stats.copied_objects;
        total.copied_bytes += stats.copied_bytes;
        total.present_objects = stats.present_objects;
        total.deleted_pieces += stats.deleted_pieces;
        total.backups += stats.backups;
        total.server_side = stats.server_side;
        if done {
            return Ok(total);
        }
    }
    Err(RepoError::Busy(format!(
        "{} changed under every copy pass (WAL merged while it was copied): run the copy again",
        from.describe()
    )))
}

/// One pass of [`copy`] beside a [`crate::mirror::Mirror`] that writes the
/// target as the source is written: WAL merged away while the pass reads
/// reaches the target through the mirror, so the pass goes on past it.
pub async fn copy_beside_mirror(
    from: Arc<dyn Storage>,
    to: Arc<dyn Storage>,
    placement: Option<crate::S3Placement>,
    parallel: usize,
) -> Result<CopyStats> {
    Ok(pass(from, to, &placement, parallel, true).await?.0)
}

/// One pass; `false` when it stopped at WAL that vanished from the source
/// (unless `mirrored`: it goes on then).
async fn pass(
    from: Arc<dyn Storage>,
    to: Arc<dyn Storage>,
    placement: &Option<crate::S3Placement>,
    parallel: usize,
    mirrored: bool,
) -> Result<(CopyStats, bool)> {
    let source = check_target(from.as_ref(), to.as_ref()).await?;
    let have: BTreeMap<String, u64> = to.list("").await?.into_iter().map(|m| (m.key, m.size)).collect();
    let mut listed = from.list("").await?;
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let sizes: BTreeMap<&str, u64> = listed.iter().map(|m| (m.key.as_str(), m.size)).collect();
    let mut stats = CopyStats::default();
    let missing = |key: &str| have.get(key) != sizes.get(key);
    let site = server_side(from.as_ref(), to.as_ref());
    let site = site.as_ref();
    stats.server_side = site.is_some();

    keys_and_binding(from.as_ref(), to.as_ref(), &source, placement, &have, &mut stats).await?;
    for prefix in [wal::HISTORY_PREFIX, wal::PREFIX] {
        let keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).filter(|k| k.starts_with(prefix)).collect();
        let todo: Vec<&str> = keys.iter().copied().filter(|k| missing(k)).collect();
        stats.present_objects += keys.len() - todo.len();
        if site.is_some() {
            // Inside the store, in order, one at a time.
            for key in todo {
                match copy_one(from.as_ref(), to.as_ref(), site, key).await? {
                    None if prefix == wal::PREFIX && !mirrored => return Ok((stats, false)),
                    c => stats.add(c),
                }
            }
            continue;
        }
        // Read ahead from the source, `parallel` at a time; write strictly
        // in order, each verified before the next is written.
        // Owned keys: a stream of futures over borrowed ones is not Send
        // for every lifetime, as a spawned pass needs.
        let source = from.as_ref();
        let mut reads = futures_util::stream::iter(todo.into_iter().map(str::to_owned))
            .map(|k: String| async move {
                let data = get_opt(source, &k).await?;
                Ok::<_, RepoError>((k, data))
            })
            .buffered(parallel.max(1));
        // Read-backs run beside the next writes, `parallel` at most.
        let target = to.as_ref();
        let mut checks = futures_util::stream::FuturesUnordered::new();
        while let Some(read) = reads.next().await {
            let (key, data) = read?;
            let Some(data) = data else {
                if prefix == wal::PREFIX && !mirrored {
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
            target.put(&key, data).await?;
            checks.push(async move { verify(target, &key, crc, len).await });
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
        let (source, target) = (from.as_ref(), to.as_ref());
        let copied: Vec<Option<u64>> = futures_util::stream::iter(todo.into_iter().map(str::to_owned))
            .map(|k: String| async move { copy_one(source, target, site, &k).await })
            .buffer_unordered(parallel.max(1))
            .try_collect()
            .await?;
        copied.into_iter().for_each(|c| stats.add(c));
        if missing(&info) || differs(from.as_ref(), to.as_ref(), &info).await? {
            // Expiry deletes backup.json first: if it is still there, every
            // part was. (It changes in place when a hold is set.)
            let c = copy_one(from.as_ref(), to.as_ref(), site, &info).await?;
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
            stats.add(copy_one(from.as_ref(), to.as_ref(), site, &m.key).await?);
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

/// Makes `to` ready to receive `from`'s objects as they are written (see
/// [`crate::mirror`]): refused if it belongs to another cluster or key;
/// given `from`'s keyring and binding (with `placement`) otherwise.
pub async fn prepare(
    from: &dyn Storage,
    to: &dyn Storage,
    placement: &Option<crate::S3Placement>,
) -> Result<CopyStats> {
    let source = check_target(from, to).await?;
    let have: BTreeMap<String, u64> =
        to.list(pgpitr_crypt::keyring::PREFIX).await?.into_iter().map(|m| (m.key, m.size)).collect();
    let mut stats = CopyStats::default();
    keys_and_binding(from, to, &source, placement, &have, &mut stats).await?;
    Ok(stats)
}

/// The source's binding, once the target is empty or a copy of the same
/// cluster, bound to a key the source knows.
async fn check_target(from: &dyn Storage, to: &dyn Storage) -> Result<crate::Binding> {
    let source = read_binding(from).await?;
    match read_binding(to).await {
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
    Ok(source)
}

/// Copies the keyring and writes the binding: `have` holds at least what
/// the target lists under the keyring's prefix.
async fn keys_and_binding(
    from: &dyn Storage,
    to: &dyn Storage,
    source: &crate::Binding,
    placement: &Option<crate::S3Placement>,
    have: &BTreeMap<String, u64>,
    stats: &mut CopyStats,
) -> Result<()> {
    // The keyring, then the binding (new, or rotated to a key the keyring
    // now wraps with), then histories, then WAL: in order, one at a time.
    // Keyring entries change in place (rotation adds a wrapping, retiring
    // removes one), possibly at the same size: compared by content.
    // Listed again after the rest: a data key made while the rest was
    // listed seals objects that listing holds.
    let keyring = from.list(pgpitr_crypt::keyring::PREFIX).await?;
    for m in &keyring {
        if have.get(&m.key) != Some(&m.size) || differs(from, to, &m.key).await? {
            stats.add(copy_one(from, to, None, &m.key).await?);
        } else {
            stats.present_objects += 1;
        }
    }
    let mut binding = source.clone();
    binding.s3_placement = placement.clone();
    let binding = bytes::Bytes::from(serde_json::to_vec_pretty(&binding).expect("a binding serialises"));
    if get_opt(to, layout::BINDING).await?.as_ref() != Some(&binding) {
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
    Ok(())
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
    let objects: Vec<wal::WalObjectId> = ids.iter().map(|(_, id)| *id).collect();
    let stale = ids
        .iter()
        .filter(|(key, id)| key.ends_with(".part") && !source.contains_key(key.as_str()) && covered(&objects, id, seg))
        .map(|(key, _)| key.clone())
        .collect();
    Ok(stale)
}

/// Whether another of `objects` covers `id`: the same timeline, a range
/// holding its own and larger.
pub(crate) fn covered(objects: &[wal::WalObjectId], id: &wal::WalObjectId, seg: pgpitr_types::WalSegSize) -> bool {
    let (start, end) = id.range(seg);
    objects.iter().any(|o| {
        let (s, e) = o.range(seg);
        o.tli == id.tli && s <= start && e >= end && (s, e) != (start, end)
    })
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

/// Copies one object and verifies it ([`verify`]: the target stored the
/// bytes read from the source); or, inside the store (`site`), by the
/// entity tag the copy got, which must be the source's (else [`verify`]
/// against the source's bytes: SSE-KMS tags are no checksums).
/// Returns its size; `None` for an object the source deleted since its
/// listing (a merged piece, an expired backup, whose `backup.json` goes
/// first): the next copy sees what replaced it.
async fn copy_one(from: &dyn Storage, to: &dyn Storage, site: Option<&S3Site>, key: &str) -> Result<Option<u64>> {
    let Some(site) = site else {
        return match get_opt(from, key).await? {
            Some(data) => Ok(Some(put_verified(to, key, data).await?)),
            None => Ok(None),
        };
    };
    let source = match from.head(key).await {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let etag = match to.copy_object(site, key).await {
        Ok(t) => t,
        Err(e) if e.is_not_found() => return Ok(None),
        // Refused (not implemented, not allowed across these buckets): the
        // bytes go through pgpitr instead.
        Err(e) if e.is_permanent() => {
            tracing::debug!(key, "copy inside the store refused, copying through pgpitr: {e}");
            return Box::pin(copy_one(from, to, None, key)).await;
        }
        Err(e) => return Err(e.into()),
    };
    let tag = |t: &Option<String>| t.as_deref().map(|t| t.trim_matches('"').to_owned());
    if etag.is_some() && tag(&etag) == tag(&source.etag) {
        return Ok(Some(source.size));
    }
    // Entity tags that are no checksums: the two stored CRC-32s compared.
    let (len, crc) = match from.stored_checksum(key).await {
        Ok(c) => c,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(verify(to, key, crc, len).await?))
}

/// Where `to` can copy `from`'s objects inside the store: both S3, through
/// the same endpoint, at different places.
fn server_side(from: &dyn Storage, to: &dyn Storage) -> Option<S3Site> {
    let (a, b) = (from.s3_site()?, to.s3_site()?);
    (a.endpoint == b.endpoint && (a.bucket != b.bucket || a.prefix != b.prefix)).then_some(a)
}

/// Writes `data` as `key` and reads it back: the target must return
/// exactly these bytes. Returns their size.
async fn put_verified(to: &dyn Storage, key: &str, data: bytes::Bytes) -> Result<u64> {
    let (crc, len) = (crc32fast::hash(&data), data.len() as u64);
    to.put(key, data).await?;
    verify(to, key, crc, len).await
}

/// Checks what the target stored as `key`: `len` bytes with CRC-32
/// `crc` (S3: the checksum its server computed on arrival, one HEAD;
/// elsewhere read back).
async fn verify(to: &dyn Storage, key: &str, crc: u32, len: u64) -> Result<u64> {
    let (size, stored) = to.stored_checksum(key).await?;
    if size != len || stored != crc {
        return Err(RepoError::Corrupt {
            location: to.describe(),
            key: key.to_string(),
            reason: format!(
                "the copy is stored as {size} bytes with CRC-32 {stored:08x}, not the {len} bytes with {crc:08x} written"
            ),
        });
    }
    Ok(len)
}
