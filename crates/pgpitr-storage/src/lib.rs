//! Repository object storage: one [`Storage`] trait, a local-directory and an
//! S3 backend, a retry wrapper and a fault-injecting wrapper.
//!
//! ```text
//!   RepoUrl::parse("s3://bucket/prefix?endpoint=..")      open(&url)
//!                  |                                         |
//!                  v                                         v
//!   Arc<dyn Storage> = RetryingStorage< LocalStorage | S3Storage >
//!                                   ^
//!        tests: RetryingStorage<FaultyStorage<real backend>>
//! ```
//!
//! Invariants every backend keeps (checked by [`conformance`]):
//! - An object is never visible half-written: `put`, `put_if_absent` and
//!   uploads become visible atomically, or not at all.
//! - `put_if_absent` never replaces an existing object.
//! - Listings never show temporary objects and are sorted by key.
//! - A missing object is [`StorageError::NotFound`], never a generic failure;
//!   every other error says whether retrying can help
//!   ([`StorageError::is_permanent`]).
//! - Keys follow one set of rules ([`validate_key`]) on every backend.
//!
//! Backends do not retry by themselves (the AWS SDK's retries are disabled);
//! [`RetryingStorage`] is the single place where retrying happens.

#![deny(unsafe_code)]

pub mod conformance;
mod error;
mod faulty;
mod key;
mod local;
mod memory;
mod pool;
mod repo_url;
pub mod requests;
mod retry;
mod s3;

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

pub use error::{Op, Result, StorageError};
pub use faulty::{FaultMode, FaultyStorage};
pub use key::{MAX_KEY_LEN, TEMP_PREFIX, validate_key, validate_prefix};
pub use local::LocalStorage;
pub use memory::MemoryStorage;
pub use pool::{BufPool, POOL_MIN};
pub use repo_url::{RepoUrl, S3Url, connect};
pub use retry::{RetryPolicy, RetryingStorage, retry};
pub use s3::{DEFAULT_PART_SIZE, MIN_PART_SIZE, S3Options, S3Storage, aws_error};

/// A stream of an object's bytes, in chunks.
pub type ObjectStream = BoxStream<'static, Result<Bytes>>;

/// What [`Storage::put_if_absent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object did not exist and now holds the given data.
    Created,
    /// An object already existed under the key; it was left untouched.
    AlreadyExists,
}

/// Metadata of one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key, relative to the repository root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, when the backend reports one.
    pub last_modified: Option<SystemTime>,
    /// S3's entity tag (quotes included), when the backend reports one:
    /// for an object stored by one PUT, the MD5 of its bytes.
    pub etag: Option<String>,
}

/// Where an S3 repository's objects are: another repository reached
/// through the same endpoint (and credentials) can copy them without the
/// bytes passing through this process ([`Storage::copy_object`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Site {
    /// The endpoint, as the backend describes it (an override, or AWS's
    /// endpoint of a region).
    pub endpoint: String,
    pub bucket: String,
    /// `""` or `"some/prefix/"`.
    pub prefix: String,
}

/// One page of a listing: see [`Storage::list_page`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPage {
    /// Keys after the page's start, in key order.
    pub objects: Vec<ObjectMeta>,
    /// Where the next page starts (its `start_after`), or `None` when the
    /// listing is complete. A page may be short and still not the last.
    pub next: Option<String>,
}

/// The most keys one [`Storage::list_page`] returns (S3's page size).
pub const MAX_PAGE: usize = 1000;

/// Refuses a page size outside 1..=[`MAX_PAGE`].
fn check_page_size(max: usize, prefix: &str, location: String) -> Result<()> {
    if (1..=MAX_PAGE).contains(&max) {
        return Ok(());
    }
    Err(StorageError::permanent(
        error::Op::List,
        prefix,
        location,
        format!("a listing page holds 1 to {MAX_PAGE} keys, not {max}"),
    ))
}

/// An object store holding the repository.
///
/// Keys are `/`-separated relative paths (see [`validate_key`]); every
/// method rejects invalid keys with [`StorageError::InvalidKey`] before any
/// I/O. Implementations are cheap to share as `Arc<dyn Storage>`.
#[async_trait]
pub trait Storage: Send + Sync {
    /// Where the repository lives, for messages: `s3://bucket/prefix` or a
    /// path. Never contains credentials.
    fn describe(&self) -> String;

    /// Stores `data` under `key`, atomically replacing any existing object.
    ///
    /// The whole object is sent in one request; for large objects use
    /// [`Storage::start_upload`].
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;

    /// Stores `data` under `key` only if no object exists there.
    ///
    /// Behind [`RetryingStorage`], `AlreadyExists` after a failed attempt
    /// whose outcome is unknown is resolved by comparing the stored bytes: if
    /// they equal `data` the result is `Created`.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome>;

    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Bytes>;

    /// Reads bytes `range.start..range.end` of an object.
    ///
    /// An end beyond the object's size is clamped to the size; a start at or
    /// beyond the size, or an empty range, gives empty bytes. A missing
    /// object is `NotFound` in every case.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;

    /// Streams an object without buffering it whole.
    ///
    /// Only opening the stream is retried by [`RetryingStorage`]; an error
    /// in the middle of the stream ends it and is the caller's to handle.
    async fn get_stream(&self, key: &str) -> Result<ObjectStream>;

    /// Metadata of one object.
    async fn head(&self, key: &str) -> Result<ObjectMeta>;

    /// All objects whose key starts with `prefix` (a plain string prefix;
    /// `""` lists everything), sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Up to `max` (1 to [`MAX_PAGE`]) objects whose key starts with
    /// `prefix` and sorts after `start_after` (byte order), in key order: a
    /// range of keys is listed without listing what comes before it. A
    /// failed page is an error, never a short listing.
    async fn list_page(&self, prefix: &str, start_after: Option<&str>, max: usize) -> Result<ListPage>;

    /// The "directories" one level below `prefix`: for every object whose
    /// key continues past `prefix` with a `/`, the key up to and including
    /// that first `/` (S3 common prefixes with delimiter `/`). Results are
    /// full prefixes such as `backups/2024-01-01/`, sorted, without
    /// duplicates. Empty directories never appear.
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>>;

    /// The objects whose key starts with `prefix` and continues without a
    /// `/`: one "directory" (`a/b/` lists `a/b/x` but not `a/b/c/y`), sorted
    /// by key. A server that keeps objects in a tree (s3s-fs, a file system)
    /// reads only that directory, whatever else the repository holds.
    async fn list_shallow(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Deletes an object. Deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Deletes many objects (missing ones are fine). All keys are validated
    /// before anything is deleted. If some deletions fail, the error names
    /// how many and which keys.
    async fn delete_many(&self, keys: &[String]) -> Result<()>;

    /// Starts a streaming upload to `key`. Nothing is visible under `key`
    /// until [`Upload::complete`] succeeds, and an upload that is aborted or
    /// dropped leaves nothing visible.
    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>>;

    /// Verifies the repository location is reachable and usable (S3: the
    /// bucket exists and the credentials are accepted; local: the directory
    /// exists or can be created, and is writable).
    async fn check(&self) -> Result<()>;

    /// The size and CRC-32 (IEEE) of an object's stored bytes, to verify a
    /// copy. S3 answers with the checksum its server computed as the
    /// object arrived (one HEAD, when it kept one); others read it back.
    async fn stored_checksum(&self, key: &str) -> Result<(u64, u32)> {
        let data = self.get(key).await?;
        Ok((data.len() as u64, crc32fast::hash(&data)))
    }

    /// Where this repository is, when another one can copy from it
    /// server-side ([`Storage::copy_object`]); `None` for all but S3.
    fn s3_site(&self) -> Option<S3Site> {
        None
    }

    /// Copies the object `key` of the repository at `from` to `key` here,
    /// inside the object store (S3 CopyObject: the bytes never pass through
    /// this process), with this repository's S3 placement. Returns the new
    /// object's entity tag. A missing source object is `NotFound`; backends
    /// that cannot copy answer a permanent error.
    async fn copy_object(&self, from: &S3Site, key: &str) -> Result<Option<String>> {
        validate_key(key)?;
        Err(StorageError::permanent(
            Op::CopyObject,
            key,
            self.describe(),
            format!("cannot copy from {}/{}{} inside the store", from.bucket, from.prefix, key),
        ))
    }

    /// Creates an empty [`Journal`] under `key`, never replacing an existing
    /// object. Backends that cannot make an append durable in place (S3)
    /// answer [`JournalOpen::Unsupported`].
    ///
    /// The one exception to "never visible half-written": a journal is
    /// visible from creation on and grows; readers use its valid prefix.
    /// It may also be preallocated: zeros up to about `size_hint` bytes
    /// follow what was appended, so that an append's sync need not record a
    /// new file size (measured: that took the synchronous archiver from
    /// ~0.85× to ~1.05× of pg_receivewal's throughput, which zero-fills its
    /// segments the same way).
    async fn create_journal(&self, key: &str, size_hint: u64) -> Result<JournalOpen> {
        let _ = size_hint;
        validate_key(key)?;
        Ok(JournalOpen::Unsupported)
    }
}

/// What [`Storage::create_journal`] did.
pub enum JournalOpen {
    Created(Box<dyn Journal>),
    /// An object already exists under the key; it was left untouched.
    AlreadyExists,
    Unsupported,
}

/// An object that grows by durable appends: a synchronous archiver makes
/// each group commit durable with one write and one data sync, instead of
/// one new object (a new inode and two syncs on a file system) per commit.
///
/// Not retried: after a failed `append` the object's tail is unknown (it
/// may hold a torn piece of the data), so the caller must stop appending to
/// it and store the data elsewhere.
#[async_trait]
pub trait Journal: Send {
    /// Appends `data`; once this returns `Ok` the data is on stable storage.
    async fn append(&mut self, data: Bytes) -> Result<()>;

    /// Bytes appended so far.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A streaming upload started by [`Storage::start_upload`].
///
/// Retry contract: when `put_part` fails, the data of that call was not
/// taken, and calling `put_part` again with the same data is safe (earlier
/// accepted data is kept). When `try_complete` or `try_abort` fails it may be
/// called again. Dropping an upload that was not completed discards it.
///
/// Not cancel-safe: if a `put_part` or `try_complete` future is dropped
/// before it finishes, the upload's state is unknown and it must be dropped
/// or aborted, not continued.
#[async_trait]
pub trait Upload: Send {
    /// Appends `data` to the object. Chunks may be any size.
    async fn put_part(&mut self, data: Bytes) -> Result<()>;

    /// Makes the object visible under its key and returns its total size.
    /// May be called again after a failure; once it has succeeded, later
    /// calls return the same size without doing anything.
    async fn try_complete(&mut self) -> Result<u64>;

    /// Discards the upload; nothing becomes visible under the key. May be
    /// called again after a failure. Fails if the upload was completed.
    async fn try_abort(&mut self) -> Result<()>;

    /// Makes the object visible and returns its total size in bytes.
    async fn complete(mut self: Box<Self>) -> Result<u64> {
        self.try_complete().await
    }

    /// Discards the upload; nothing becomes visible under the key. Even if
    /// this fails, nothing is visible: dropping the upload cleans up too.
    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.try_abort().await
    }
}

// Lets wrappers hold an `Arc` to a backend (or to a `FaultyStorage` whose
// counters a test reads) and still be a `Storage` themselves.
#[async_trait]
impl<T: Storage + ?Sized> Storage for Arc<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        (**self).put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        (**self).put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        (**self).get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        (**self).get_range(key, range).await
    }
    async fn get_stream(&self, key: &str) -> Result<ObjectStream> {
        (**self).get_stream(key).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        (**self).head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        (**self).list(prefix).await
    }
    async fn list_page(&self, prefix: &str, start_after: Option<&str>, max: usize) -> Result<ListPage> {
        (**self).list_page(prefix, start_after, max).await
    }
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        (**self).list_dirs(prefix).await
    }
    async fn list_shallow(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        (**self).list_shallow(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        (**self).delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        (**self).delete_many(keys).await
    }
    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        (**self).start_upload(key).await
    }
    async fn check(&self) -> Result<()> {
        (**self).check().await
    }
    async fn create_journal(&self, key: &str, size_hint: u64) -> Result<JournalOpen> {
        (**self).create_journal(key, size_hint).await
    }
    async fn stored_checksum(&self, key: &str) -> Result<(u64, u32)> {
        (**self).stored_checksum(key).await
    }
    fn s3_site(&self) -> Option<S3Site> {
        (**self).s3_site()
    }
    async fn copy_object(&self, from: &S3Site, key: &str) -> Result<Option<String>> {
        (**self).copy_object(from, key).await
    }
}

/// Summarises per-key failures of `delete_many` in one line.
pub(crate) fn summarize_failures(total: usize, failures: &[(String, String)]) -> String {
    const SHOWN: usize = 5;
    let mut msg = format!("{} of {} deletions failed: ", failures.len(), total);
    let listed: Vec<String> = failures.iter().take(SHOWN).map(|(k, e)| format!("{k:?}: {e}")).collect();
    msg.push_str(&listed.join("; "));
    if failures.len() > SHOWN {
        msg.push_str(&format!("; and {} more", failures.len() - SHOWN));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_summary_is_bounded() {
        let failures: Vec<(String, String)> = (0..7).map(|i| (format!("k{i}"), "AccessDenied".to_owned())).collect();
        let s = summarize_failures(100, &failures);
        assert!(s.starts_with("7 of 100 deletions failed: \"k0\": AccessDenied"), "{s}");
        assert!(s.ends_with("and 2 more"), "{s}");
    }
}
