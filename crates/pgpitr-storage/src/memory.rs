//! A backend in memory, for simulations: deterministic, instantaneous, and
//! held to the same conformance suite as the real ones. Nothing survives
//! the process; no command offers it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Op, Result, StorageError};
use crate::{
    Journal, JournalOpen, ListPage, ObjectMeta, ObjectStream, PutOutcome, Storage, Upload, check_page_size,
    validate_key, validate_prefix,
};

/// What `get_stream` yields at a time, like a network read.
const STREAM_CHUNK: usize = 1 << 20;

#[derive(Debug)]
enum Data {
    Object(Bytes),
    /// A journal grows in place; like a local one, it reads as zeros up to
    /// its preallocated size. `id` tells it from a journal created again
    /// under the same key.
    Journal {
        id: u64,
        data: Vec<u8>,
        hint: usize,
    },
}

#[derive(Debug)]
struct Entry {
    data: Data,
    modified: SystemTime,
}

impl Entry {
    fn object(b: Bytes) -> Entry {
        Entry { data: Data::Object(b), modified: SystemTime::now() }
    }

    fn bytes(&self) -> Bytes {
        match &self.data {
            Data::Object(b) => b.clone(),
            Data::Journal { data, hint, .. } => {
                let mut v = vec![0u8; data.len().max(*hint)];
                v[..data.len()].copy_from_slice(data);
                Bytes::from(v)
            }
        }
    }

    fn len(&self) -> usize {
        match &self.data {
            Data::Object(b) => b.len(),
            Data::Journal { data, hint, .. } => data.len().max(*hint),
        }
    }
}

type Map = Arc<Mutex<BTreeMap<String, Entry>>>;

#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    map: Map,
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        lock(&self.map)
    }

    fn meta(key: &str, e: &Entry) -> ObjectMeta {
        ObjectMeta { key: key.to_owned(), size: e.len() as u64, last_modified: Some(e.modified), etag: None }
    }

    fn not_found(&self, op: Op, key: &str) -> StorageError {
        StorageError::not_found(op, key, self.describe())
    }

    fn listed(&self, prefix: &str, after: Option<&str>, shallow: bool) -> Vec<ObjectMeta> {
        let map = self.map();
        map.range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .filter(|(k, _)| !shallow || !k[prefix.len()..].contains('/'))
            .map(|(k, e)| Self::meta(k, e))
            .collect()
    }
}

fn lock(map: &Map) -> MutexGuard<'_, BTreeMap<String, Entry>> {
    // A panic elsewhere while holding the lock leaves the map consistent:
    // every change is one insert or remove.
    map.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl Storage for MemoryStorage {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        validate_key(key)?;
        self.map().insert(key.to_owned(), Entry::object(data));
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        validate_key(key)?;
        let mut map = self.map();
        if map.contains_key(key) {
            return Ok(PutOutcome::AlreadyExists);
        }
        map.insert(key.to_owned(), Entry::object(data));
        Ok(PutOutcome::Created)
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        validate_key(key)?;
        self.map().get(key).map(Entry::bytes).ok_or_else(|| self.not_found(Op::Get, key))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let all = self.get(key).await?;
        let end = (range.end as usize).min(all.len());
        let start = (range.start as usize).min(end);
        Ok(all.slice(start..end))
    }

    async fn get_stream(&self, key: &str) -> Result<ObjectStream> {
        let all = self.get(key).await?;
        let chunks: Vec<Result<Bytes>> =
            (0..all.len()).step_by(STREAM_CHUNK).map(|i| Ok(all.slice(i..(i + STREAM_CHUNK).min(all.len())))).collect();
        Ok(Box::pin(futures_util::stream::iter(chunks)))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        validate_key(key)?;
        self.map().get(key).map(|e| Self::meta(key, e)).ok_or_else(|| self.not_found(Op::Head, key))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        validate_prefix(prefix)?;
        Ok(self.listed(prefix, None, false))
    }

    async fn list_page(&self, prefix: &str, start_after: Option<&str>, max: usize) -> Result<ListPage> {
        validate_prefix(prefix)?;
        check_page_size(max, prefix, self.describe())?;
        let mut objects = self.listed(prefix, start_after, false);
        let more = objects.len() > max;
        objects.truncate(max);
        let next = if more { objects.last().map(|o| o.key.clone()) } else { None };
        Ok(ListPage { objects, next })
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        let mut dirs: Vec<String> = self
            .listed(prefix, None, false)
            .into_iter()
            .filter_map(|o| o.key[prefix.len()..].find('/').map(|i| o.key[..prefix.len() + i + 1].to_owned()))
            .collect();
        dirs.dedup();
        Ok(dirs)
    }

    async fn list_shallow(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        validate_prefix(prefix)?;
        Ok(self.listed(prefix, None, true))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        self.map().remove(key);
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        keys.iter().try_for_each(|k| validate_key(k))?;
        let mut map = self.map();
        keys.iter().for_each(|k| {
            map.remove(k);
        });
        Ok(())
    }

    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        validate_key(key)?;
        Ok(Box::new(MemoryUpload { map: self.map.clone(), key: key.to_owned(), data: Vec::new(), done: None }))
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }

    async fn create_journal(&self, key: &str, size_hint: u64) -> Result<JournalOpen> {
        validate_key(key)?;
        let mut map = self.map();
        if map.contains_key(key) {
            return Ok(JournalOpen::AlreadyExists);
        }
        let id = JOURNALS.fetch_add(1, Ordering::Relaxed);
        let data = Data::Journal { id, data: Vec::new(), hint: size_hint as usize };
        map.insert(key.to_owned(), Entry { data, modified: SystemTime::now() });
        Ok(JournalOpen::Created(Box::new(MemoryJournal { map: self.map.clone(), key: key.to_owned(), id, len: 0 })))
    }
}

struct MemoryUpload {
    map: Map,
    key: String,
    data: Vec<u8>,
    /// The size, once completed.
    done: Option<u64>,
}

#[async_trait]
impl Upload for MemoryUpload {
    async fn put_part(&mut self, data: Bytes) -> Result<()> {
        self.data.extend_from_slice(&data);
        Ok(())
    }

    async fn try_complete(&mut self) -> Result<u64> {
        if let Some(n) = self.done {
            return Ok(n);
        }
        let data = Bytes::from(std::mem::take(&mut self.data));
        let n = data.len() as u64;
        lock(&self.map).insert(self.key.clone(), Entry::object(data));
        self.done = Some(n);
        Ok(n)
    }

    async fn try_abort(&mut self) -> Result<()> {
        match self.done {
            Some(_) => Err(StorageError::permanent(Op::AbortUpload, &self.key, "memory", "the upload was completed")),
            None => Ok(()),
        }
    }
}

/// Tells journals apart across the process.
static JOURNALS: AtomicU64 = AtomicU64::new(0);

struct MemoryJournal {
    map: Map,
    key: String,
    id: u64,
    len: u64,
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn append(&mut self, data: Bytes) -> Result<()> {
        // Like a local journal's file once deleted (or replaced): the
        // append succeeds, and nothing can read it.
        if let Some(Entry { data: Data::Journal { id, data: v, .. }, modified }) = lock(&self.map).get_mut(&self.key)
            && *id == self.id
        {
            v.extend_from_slice(&data);
            *modified = SystemTime::now();
        }
        self.len += data.len() as u64;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }
}
