//! Repositories of format 1 kept every WAL object of a timeline in one
//! directory (`wal/<TLI>/<SEGMENT>...`) and the history files beside them
//! (`wal/<TLI>.history`). [`Flat`] serves such a repository in today's
//! layout ([`crate::wal`]): keys and prefixes are mapped on the way in and
//! out, so nothing else knows format 1. Its listings cost what they always
//! did: all of a timeline's keys, every time. `pgpitr migrate` moves a
//! repository to format 2.
//!
//! Keys in today's layout that a format-1 repository holds (the copies an
//! interrupted `pgpitr migrate` made) are not shown: until the migration
//! switches the binding, the format-1 keys are the repository.

use async_trait::async_trait;
use bytes::Bytes;
use pgpitr_storage::{JournalOpen, ListPage, ObjectMeta, ObjectStream, PutOutcome, Result, Storage, Upload};
use std::ops::Range;

use crate::wal::{HISTORY_PREFIX, PREFIX};

const FLAT_HISTORY_SUFFIX: &str = ".history";

/// A format-1 repository's storage, seen in today's layout.
pub struct Flat<S> {
    inner: S,
}

impl<S: Storage> Flat<S> {
    pub fn new(inner: S) -> Self {
        Flat { inner }
    }
}

/// `wal/<TLI>/<LOG>/<name>` → `wal/<TLI>/<name>`; `timelines/<TLI>.history`
/// → `wal/<TLI>.history`; anything else as it is.
pub fn to_flat(key: &str) -> String {
    if let Some(h) = key.strip_prefix(HISTORY_PREFIX) {
        return format!("{PREFIX}{h}");
    }
    if let Some(rest) = key.strip_prefix(PREFIX)
        && let Some((tli, rest)) = rest.split_once('/')
        && let Some((log, name)) = rest.split_once('/')
        && tli.len() == 8
        && log.len() == 8
        && name.get(8..16) == Some(log)
    {
        return format!("{PREFIX}{tli}/{name}");
    }
    key.to_string()
}

/// The inverse of [`to_flat`]; `None` for a key in today's layout, which
/// a format-1 repository does not show.
pub fn from_flat(key: &str) -> Option<String> {
    let Some(rest) = key.strip_prefix(PREFIX) else { return Some(key.to_string()) };
    match rest.split_once('/') {
        None if rest.ends_with(FLAT_HISTORY_SUFFIX) => Some(format!("{HISTORY_PREFIX}{rest}")),
        None => Some(key.to_string()),
        Some((tli, name)) if tli.len() == 8 && !name.contains('/') => match name.get(8..16) {
            Some(log) if name.len() >= 24 && log.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(format!("{PREFIX}{tli}/{log}/{name}"))
            }
            _ => Some(key.to_string()),
        },
        Some((tli, _)) if tli.len() == 8 => None,
        Some(_) => Some(key.to_string()),
    }
}

/// The format-1 prefixes whose keys, mapped, include every key under
/// `prefix`: as narrow as the mapping allows.
fn flat_prefixes(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    if HISTORY_PREFIX.starts_with(prefix) || prefix.starts_with(HISTORY_PREFIX) {
        out.push(PREFIX.to_string());
    }
    let wal = if let Some(rest) = prefix.strip_prefix(PREFIX) {
        match rest.split_once('/') {
            // wal/<TLI>/<LOG>/<name prefix>: the names of that log ID.
            Some((tli, rest)) if tli.len() == 8 => match rest.split_once('/') {
                Some((log, name)) if log.len() == 8 && !name.contains('/') => {
                    if name.is_empty() {
                        format!("{PREFIX}{tli}/{tli}{log}")
                    } else {
                        format!("{PREFIX}{tli}/{name}")
                    }
                }
                _ => format!("{PREFIX}{tli}/"),
            },
            _ => PREFIX.to_string(),
        }
    } else {
        prefix.to_string()
    };
    if !prefix.starts_with(HISTORY_PREFIX) {
        out.push(wal);
    }
    out.sort();
    out.dedup();
    // A prefix that covers another makes it redundant.
    let all = out.clone();
    out.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q.as_str())));
    out
}

impl<S: Storage> Flat<S> {
    /// Every key under `prefix` in today's layout, sorted.
    async fn mapped(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        for p in flat_prefixes(prefix) {
            for m in self.inner.list(&p).await? {
                if let Some(key) = from_flat(&m.key).filter(|k| k.starts_with(prefix)) {
                    out.push(ObjectMeta { key, ..m });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    /// Whether a listing under `prefix` can touch mapped keys at all.
    fn mapped_under(prefix: &str) -> bool {
        [PREFIX, HISTORY_PREFIX].iter().any(|p| p.starts_with(prefix) || prefix.starts_with(p))
    }
}

#[async_trait]
impl<S: Storage> Storage for Flat<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.inner.put(&to_flat(key), data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        self.inner.put_if_absent(&to_flat(key), data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.inner.get(&to_flat(key)).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.inner.get_range(&to_flat(key), range).await
    }
    async fn get_stream(&self, key: &str) -> Result<ObjectStream> {
        self.inner.get_stream(&to_flat(key)).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let m = self.inner.head(&to_flat(key)).await?;
        Ok(ObjectMeta { key: key.to_string(), ..m })
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        pgpitr_storage::validate_prefix(prefix)?;
        self.mapped(prefix).await
    }
    async fn list_page(&self, prefix: &str, start_after: Option<&str>, max: usize) -> Result<ListPage> {
        if !Self::mapped_under(prefix) {
            return self.inner.list_page(prefix, start_after, max).await;
        }
        if max == 0 || max > pgpitr_storage::MAX_PAGE {
            // The inner store refuses it with the usual error.
            return self.inner.list_page(prefix, start_after, max).await;
        }
        let mut objects: Vec<ObjectMeta> =
            self.list(prefix).await?.into_iter().filter(|m| start_after.is_none_or(|a| m.key.as_str() > a)).collect();
        let next = (objects.len() > max).then(|| objects[max - 1].key.clone());
        objects.truncate(max);
        Ok(ListPage { objects, next })
    }
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        // Format 1 has the same timeline directories.
        if !Self::mapped_under(prefix) || prefix == PREFIX {
            return self.inner.list_dirs(prefix).await;
        }
        pgpitr_storage::validate_prefix(prefix)?;
        let mut dirs: Vec<String> = self
            .mapped(prefix)
            .await?
            .iter()
            .filter_map(|m| m.key[prefix.len()..].split_once('/').map(|(d, _)| format!("{prefix}{d}/")))
            .collect();
        dirs.sort();
        dirs.dedup();
        Ok(dirs)
    }
    async fn list_shallow(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        if !Self::mapped_under(prefix) {
            return self.inner.list_shallow(prefix).await;
        }
        if prefix == HISTORY_PREFIX {
            // Format 1 keeps the histories directly under wal/, beside the timelines' directories.
            let flat = self.inner.list_shallow(PREFIX).await?;
            return Ok(flat
                .into_iter()
                .filter_map(|m| Some(ObjectMeta { key: from_flat(&m.key).filter(|k| k.starts_with(prefix))?, ..m }))
                .collect());
        }
        pgpitr_storage::validate_prefix(prefix)?;
        Ok(self.mapped(prefix).await?.into_iter().filter(|m| !m.key[prefix.len()..].contains('/')).collect())
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(&to_flat(key)).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        let flat: Vec<String> = keys.iter().map(|k| to_flat(k)).collect();
        self.inner.delete_many(&flat).await
    }
    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        self.inner.start_upload(&to_flat(key)).await
    }
    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }
    async fn create_journal(&self, key: &str, size_hint: u64) -> Result<JournalOpen> {
        self.inner.create_journal(&to_flat(key), size_hint).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_both_ways() {
        for (today, flat) in [
            ("wal/00000001/00000000/000000010000000000000003", "wal/00000001/000000010000000000000003"),
            (
                "wal/00000002/0000000A/000000020000000A000000FF.00000000-00002000.part",
                "wal/00000002/000000020000000A000000FF.00000000-00002000.part",
            ),
            (
                "wal/00000003/00000001/000000030000000100000010.00002000.journal",
                "wal/00000003/000000030000000100000010.00002000.journal",
            ),
            ("timelines/00000002.history", "wal/00000002.history"),
            ("backups/20261206T000000Z/backup.json", "backups/20261206T000000Z/backup.json"),
            ("pgpitr.json", "pgpitr.json"),
        ] {
            assert_eq!(to_flat(today), flat, "{today}");
            assert_eq!(from_flat(flat).as_deref(), Some(today), "{flat}");
        }
        // Today's layout inside a format-1 repository: an interrupted migration's copies.
        assert_eq!(from_flat("wal/00000001/00000000/000000010000000000000003"), None);
    }

    #[test]
    fn prefixes_narrow_to_a_log_id() {
        assert_eq!(flat_prefixes("wal/00000001/0000000A/"), ["wal/00000001/000000010000000A"]);
        assert_eq!(flat_prefixes("wal/00000001/0000000A/00000001000000"), ["wal/00000001/00000001000000"]);
        assert_eq!(flat_prefixes("wal/00000001/"), ["wal/00000001/"]);
        assert_eq!(flat_prefixes("wal/"), ["wal/"]);
        assert_eq!(flat_prefixes("timelines/"), ["wal/"]);
        assert_eq!(flat_prefixes(""), [""]);
        assert_eq!(flat_prefixes("backups/"), ["backups/"]);
    }
}
