//! A [`Storage`] that seals every object before it reaches the one below
//! and opens it on the way back, so that no byte of an encrypted repository
//! is stored in plain text except the binding (`pgpitr.json`, which says how
//! the repository is encrypted) and the keyring (wrapped keys only).
//!
//! Sizes in listings are the plaintext sizes (an envelope's follows from
//! its stored size); a ranged read fetches the chunks that hold the range.
//! Data keys are made per span of sealed bytes or of time, stored in the
//! keyring before any object uses them, and cached once unwrapped.

use crate::envelope::{self, Envelope, HEADER_LEN, KeyId};
use crate::kek::KeyEncryptionKey;
use crate::keyring::{self, KeyringEntry};
use crate::{Binding, CryptError, DataKey, journal};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use pgpitr_storage::{
    BufPool, Journal, JournalOpen, ListPage, ObjectMeta, ObjectStream, Op, PutOutcome, Result, Storage, StorageError,
    Upload,
};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository's binding, never encrypted: it says how to open the rest.
pub const BINDING_KEY: &str = "pgpitr.json";

/// When a new data key is made.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub bytes: u64,
    pub time: Duration,
}

impl Default for Span {
    fn default() -> Self {
        Span { bytes: 1 << 30, time: Duration::from_secs(3600) }
    }
}

struct Current {
    id: KeyId,
    key: Arc<DataKey>,
    since: Instant,
    sealed: u64,
}

/// The keys of one repository: key-encryption keys (the first wraps new
/// data keys) and the data keys unwrapped so far.
pub struct Keys {
    keks: Vec<Arc<dyn KeyEncryptionKey>>,
    system_identifier: u64,
    span: Span,
    cache: Mutex<HashMap<KeyId, Arc<DataKey>>>,
    current: tokio::sync::Mutex<Option<Current>>,
}

impl Keys {
    pub fn new(keks: Vec<Arc<dyn KeyEncryptionKey>>, system_identifier: u64, span: Span) -> Keys {
        Keys { keks, system_identifier, span, cache: Mutex::default(), current: tokio::sync::Mutex::new(None) }
    }

    /// The data key for `len` more bytes: the current one, or a new one
    /// stored in the keyring first.
    async fn for_sealing(&self, inner: &dyn Storage, len: u64) -> Result<(KeyId, Arc<DataKey>)> {
        let mut cur = self.current.lock().await;
        let fresh = cur.as_ref().is_some_and(|c| c.sealed < self.span.bytes && c.since.elapsed() < self.span.time);
        if !fresh {
            let kek = self.keks.first().ok_or_else(|| key_error(Op::Put, "", "no key-encryption key configured"))?;
            let (id, dk, entry) = KeyringEntry::create(kek.as_ref(), jiff::Timestamp::now().to_string())
                .await
                .map_err(|e| open_error(Op::Put, keyring::PREFIX, e))?;
            let body = serde_json::to_vec_pretty(&entry).map_err(|e| key_error(Op::Put, keyring::PREFIX, e))?;
            inner.put_if_absent(&keyring::key_of(&id), Bytes::from(body)).await?;
            let key = Arc::new(dk);
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(id, key.clone());
            *cur = Some(Current { id, key, since: Instant::now(), sealed: 0 });
        }
        let c = cur.as_mut().expect("set above");
        c.sealed += len;
        Ok((c.id, c.key.clone()))
    }

    /// The data key `id`, from the cache or the keyring.
    async fn for_opening(&self, inner: &dyn Storage, id: &KeyId, what: &str) -> Result<Arc<DataKey>> {
        if let Some(k) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(k.clone());
        }
        let key = keyring::key_of(id);
        let body = match inner.get(&key).await {
            Err(e) if e.is_not_found() => {
                return Err(key_error(Op::Get, what, format!("its data key {key} is missing from the keyring")));
            }
            r => r?,
        };
        let entry = KeyringEntry::parse(&body, &key).map_err(|e| key_error(Op::Get, what, e))?;
        let keks: Vec<&dyn KeyEncryptionKey> = self.keks.iter().map(|k| k.as_ref()).collect();
        let dk = Arc::new(entry.open(&keks).await.map_err(|e| open_error(Op::Get, what, e))?);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(*id, dk.clone());
        Ok(dk)
    }

    fn binding<'a>(&self, key: &'a str) -> Binding<'a> {
        Binding { system_identifier: self.system_identifier, key }
    }
}

/// A key or authentication failure: definite, never retried.
fn key_error(op: Op, key: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::permanent(op, key, "encrypted repository", e)
}

/// A failure of the key service (KMS unreachable) is transient: the caller
/// retries, as it does for storage; anything else is definite.
fn open_error(op: Op, key: &str, e: CryptError) -> StorageError {
    if e.is_transient() {
        return StorageError::transient(op, key, "encrypted repository", e);
    }
    key_error(op, key, e)
}

#[derive(Clone)]
pub struct EncryptedStorage {
    inner: Arc<dyn Storage>,
    keys: Arc<Keys>,
    /// Sealed objects' buffers, recycled (none by default).
    sealed: BufPool,
}

/// Idle sealing buffers kept: one per upload in flight at the defaults.
const SEALED_BUFFERS: usize = 2;

impl EncryptedStorage {
    pub fn new(inner: Arc<dyn Storage>, keys: Arc<Keys>) -> EncryptedStorage {
        EncryptedStorage { inner, keys, sealed: BufPool::new(0, 0) }
    }

    /// Recycles the buffers of sealed objects of up to `max_plain` bytes
    /// (a writer's largest object): sealing into fresh megabytes faulted
    /// every page in again, most of what encryption cost a bulk load.
    pub fn recycling(mut self, max_plain: usize) -> EncryptedStorage {
        self.sealed = BufPool::new(SEALED_BUFFERS, envelope::sealed_len(max_plain));
        self
    }

    fn plain(key: &str) -> bool {
        key == BINDING_KEY || key.starts_with(keyring::PREFIX)
    }

    /// Seals the concatenation of `parts` as the object `key`.
    async fn seal(&self, op: Op, key: &str, parts: &[Bytes]) -> Result<Bytes> {
        let len = parts.iter().map(|p| p.len() as u64).sum();
        let (id, dk) = self.keys.for_sealing(self.inner.as_ref(), len).await?;
        let (mut buf, pooled) = self.sealed.take_or_alloc(envelope::sealed_len(len as usize));
        let n = envelope::seal_parts_into(&dk, id, self.keys.binding(key), parts, &mut buf)
            .map_err(|e| key_error(op, key, e))?;
        Ok(self.sealed.finish(buf, n, pooled))
    }

    /// Opens a whole stored object (an envelope or a journal).
    async fn open(&self, op: Op, key: &str, stored: &[u8]) -> Result<Bytes> {
        let (env, is_journal) = Envelope::parse_any(stored, key).map_err(|e| open_error(op, key, e))?;
        let dk = self.keys.for_opening(self.inner.as_ref(), &env.key_id, key).await?;
        let binding = self.keys.binding(key);
        let plain = if is_journal {
            journal::open_prefix(&dk, binding, stored).map(|(p, _)| p)
        } else {
            env.open_chunks(&dk, binding, &stored[HEADER_LEN..], 0, true)
        };
        plain.map(Bytes::from).map_err(|e| open_error(op, key, e))
    }

    /// A listed object's plaintext size (journals: their stored size, an
    /// upper bound, since only reading them tells).
    fn plain_meta(&self, mut m: ObjectMeta) -> ObjectMeta {
        if !Self::plain(&m.key) {
            m.size = Envelope::plain_len_of(m.size).unwrap_or(m.size);
        }
        m
    }
}

#[async_trait]
impl Storage for EncryptedStorage {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        if Self::plain(key) {
            return self.inner.put(key, data).await;
        }
        let sealed = self.seal(Op::Put, key, std::slice::from_ref(&data)).await?;
        self.inner.put(key, sealed).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        if Self::plain(key) {
            return self.inner.put_if_absent(key, data).await;
        }
        let sealed = self.seal(Op::PutIfAbsent, key, std::slice::from_ref(&data)).await?;
        self.inner.put_if_absent(key, sealed).await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let stored = self.inner.get(key).await?;
        if Self::plain(key) {
            return Ok(stored);
        }
        self.open(Op::Get, key, &stored).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        if Self::plain(key) {
            return self.inner.get_range(key, range).await;
        }
        if range.start >= range.end {
            self.head(key).await?;
            return Ok(Bytes::new());
        }
        // A range in the first chunk (a header and summary read) comes in
        // one request with the envelope's header; any other in two.
        let first_chunk = Envelope::chunk_of(range.start) == 0;
        let want = if first_chunk { Envelope::stored_end_of(range.end) } else { HEADER_LEN as u64 };
        let head = self.inner.get_range(key, 0..want).await?;
        let (env, is_journal) = Envelope::parse_any(&head, key).map_err(|e| open_error(Op::GetRange, key, e))?;
        if is_journal {
            // Journals open record by record, from the start.
            let all = self.get(key).await?;
            let end = (range.end as usize).min(all.len());
            return Ok(all.slice((range.start as usize).min(end)..end));
        }
        let (stored_range, first) = env.range(range.start, range.end);
        let sealed = if first_chunk && env.chunk_len() == 1 << envelope::CHUNK_LOG2 {
            head.slice(HEADER_LEN.min(head.len())..)
        } else {
            self.inner.get_range(key, stored_range.clone()).await?
        };
        if sealed.is_empty() {
            return Ok(Bytes::new()); // the range starts past the object's end
        }
        let dk = self.keys.for_opening(self.inner.as_ref(), &env.key_id, key).await?;
        let binding = self.keys.binding(key);
        // A short read reached the object's end: its last chunk is sealed
        // as the last. A full one may end exactly there too: try both.
        let short = (sealed.len() as u64) < stored_range.end - stored_range.start;
        let plain = match env.open_chunks(&dk, binding, &sealed, first, short) {
            Err(_) if !short => env.open_chunks(&dk, binding, &sealed, first, true),
            r => r,
        }
        .map_err(|e| open_error(Op::GetRange, key, e))?;
        let off = (range.start - first * env.chunk_len() as u64) as usize;
        let start = off.min(plain.len());
        let end = off.saturating_add(usize::try_from(range.end - range.start).unwrap_or(usize::MAX)).min(plain.len());
        Ok(Bytes::from(plain).slice(start..end))
    }

    async fn get_stream(&self, key: &str) -> Result<ObjectStream> {
        if Self::plain(key) {
            return self.inner.get_stream(key).await;
        }
        let mut s = self.inner.get_stream(key).await?;
        let mut pending = Vec::new();
        while pending.len() < HEADER_LEN {
            match s.next().await {
                Some(b) => pending.extend_from_slice(&b?),
                None => break,
            }
        }
        let (env, is_journal) = Envelope::parse_any(&pending, key).map_err(|e| open_error(Op::GetStream, key, e))?;
        if is_journal {
            while let Some(b) = s.next().await {
                pending.extend_from_slice(&b?);
            }
            let plain = self.open(Op::GetStream, key, &pending).await?;
            return Ok(Box::pin(futures_util::stream::iter([Ok(plain)])));
        }
        let dk = self.keys.for_opening(self.inner.as_ref(), &env.key_id, key).await?;
        pending.drain(..HEADER_LEN);
        let st = Opening {
            inner: s,
            pending,
            env,
            dk,
            key: key.to_owned(),
            system_identifier: self.keys.system_identifier,
            index: 0,
            ended: false,
            done: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(st, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        })))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let m = self.inner.head(key).await?;
        Ok(self.plain_meta(m))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        Ok(self.inner.list(prefix).await?.into_iter().map(|m| self.plain_meta(m)).collect())
    }

    async fn list_page(&self, prefix: &str, start_after: Option<&str>, max: usize) -> Result<ListPage> {
        let mut page = self.inner.list_page(prefix, start_after, max).await?;
        page.objects = page.objects.into_iter().map(|m| self.plain_meta(m)).collect();
        Ok(page)
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_dirs(prefix).await
    }

    async fn list_shallow(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        Ok(self.inner.list_shallow(prefix).await?.into_iter().map(|m| self.plain_meta(m)).collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.inner.delete_many(keys).await
    }

    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        // Sealed whole at completion: an object is at most a backup part.
        let inner = self.inner.start_upload(key).await?;
        Ok(Box::new(SealedUpload { storage: self.clone(), key: key.to_owned(), inner, parts: Vec::new(), sent: false }))
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }

    async fn create_journal(&self, key: &str, size_hint: u64) -> Result<JournalOpen> {
        let (id, dk) = self.keys.for_sealing(self.inner.as_ref(), size_hint).await?;
        let header = journal::header(id).map_err(|e| key_error(Op::CreateJournal, key, e))?;
        // Frames cost 20 bytes each; the hint stays a hint.
        match self.inner.create_journal(key, size_hint + size_hint / 16 + HEADER_LEN as u64).await? {
            JournalOpen::Created(mut j) => {
                j.append(Bytes::from(header.clone())).await?;
                let system_identifier = self.keys.system_identifier;
                Ok(JournalOpen::Created(Box::new(SealedJournal {
                    inner: j,
                    key: key.to_owned(),
                    system_identifier,
                    header,
                    dk,
                    index: 0,
                    len: 0,
                })))
            }
            other => Ok(other),
        }
    }
}

/// A sealed object opened chunk by chunk as its bytes arrive: a chunk is
/// opened once the next one has begun (or the stream ended, for the last).
struct Opening {
    inner: ObjectStream,
    pending: Vec<u8>,
    env: Envelope,
    dk: Arc<DataKey>,
    key: String,
    system_identifier: u64,
    index: u64,
    ended: bool,
    done: bool,
}

impl Opening {
    async fn next(&mut self) -> Option<Result<Bytes>> {
        if self.done {
            return None;
        }
        let sealed = self.env.chunk_len() + envelope::TAG_LEN;
        loop {
            let last = self.ended;
            if self.pending.len() > sealed || (last && (!self.pending.is_empty() || self.index == 0)) {
                let n = if last { self.pending.len() } else { sealed };
                let binding = Binding { system_identifier: self.system_identifier, key: &self.key };
                let r = self.env.open_chunks(
                    &self.dk,
                    binding,
                    &self.pending[..n.min(sealed)],
                    self.index,
                    last && n <= sealed,
                );
                self.pending.drain(..n.min(sealed));
                self.index += 1;
                if r.is_err() {
                    self.done = true;
                }
                return Some(r.map(Bytes::from).map_err(|e| open_error(Op::GetStream, &self.key, e)));
            }
            if last {
                self.done = true;
                return None;
            }
            match self.inner.next().await {
                Some(Ok(b)) => self.pending.extend_from_slice(&b),
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                None => self.ended = true,
            }
        }
    }
}

struct SealedUpload {
    storage: EncryptedStorage,
    key: String,
    inner: Box<dyn Upload>,
    /// The plaintext's parts: sealed at completion (an object is at most a
    /// backup part), without first copying them into one buffer.
    parts: Vec<Bytes>,
    sent: bool,
}

#[async_trait]
impl Upload for SealedUpload {
    async fn put_part(&mut self, data: Bytes) -> Result<()> {
        self.parts.push(data);
        Ok(())
    }

    async fn try_complete(&mut self) -> Result<u64> {
        if !self.sent {
            let sealed = self.storage.seal(Op::CompleteUpload, &self.key, &self.parts).await?;
            // Not taken when it fails: sealed afresh next time.
            self.inner.put_part(sealed).await?;
            self.sent = true;
        }
        self.inner.try_complete().await?;
        Ok(self.parts.iter().map(|p| p.len() as u64).sum())
    }

    async fn try_abort(&mut self) -> Result<()> {
        self.inner.try_abort().await
    }
}

struct SealedJournal {
    inner: Box<dyn Journal>,
    key: String,
    system_identifier: u64,
    header: Vec<u8>,
    dk: Arc<DataKey>,
    index: u64,
    len: u64,
}

#[async_trait]
impl Journal for SealedJournal {
    async fn append(&mut self, data: Bytes) -> Result<()> {
        let binding = Binding { system_identifier: self.system_identifier, key: &self.key };
        let record = journal::seal_record(&self.dk, binding, &self.header, self.index, &data)
            .map_err(|e| key_error(Op::Append, &self.key, e))?;
        self.inner.append(Bytes::from(record)).await?;
        self.index += 1;
        self.len += data.len() as u64;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }
}
