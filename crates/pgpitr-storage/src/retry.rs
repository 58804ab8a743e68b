//! Retrying transient storage errors: capped exponential backoff with full
//! jitter. This is the only place in the crate that retries (the AWS SDK's
//! own retries are disabled), so attempts never multiply.

use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Op, Result, StorageError};
use crate::{JournalOpen, ListPage, ObjectMeta, ObjectStream, PutOutcome, Storage, Upload};

/// How often and how patiently to retry transient errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (values below 1 count as 1).
    pub max_attempts: u32,
    /// Backoff cap after the first failure; doubles after each failure.
    pub base_delay: Duration,
    /// Upper bound for any single wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 6 attempts, waits capped at 100 ms, 200 ms, 400 ms, 800 ms, 1.6 s
    /// (about 1.5 s expected in total): long enough to ride out an S3
    /// `SlowDown` or a load balancer blip, short enough to report a real
    /// outage promptly.
    fn default() -> Self {
        RetryPolicy { max_attempts: 6, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(5) }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn no_retries() -> Self {
        RetryPolicy { max_attempts: 1, ..RetryPolicy::default() }
    }

    /// The longest wait after `failures` failed attempts (1-based):
    /// `min(max_delay, base_delay * 2^(failures-1))`.
    pub fn delay_cap(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(31);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// A random wait in `[0, delay_cap(failures)]` ("full jitter", so many
    /// clients hitting the same throttled bucket spread out).
    pub fn backoff(&self, failures: u32) -> Duration {
        let cap = u64::try_from(self.delay_cap(failures).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=cap))
    }

    fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }
}

/// Bookkeeping for one retried operation.
struct Attempts<'a> {
    policy: &'a RetryPolicy,
    op: &'a str,
    attempt: u32,
}

impl<'a> Attempts<'a> {
    fn new(policy: &'a RetryPolicy, op: &'a str) -> Self {
        Attempts { policy, op, attempt: 1 }
    }

    /// After a failed attempt: waits and returns `Ok` when another attempt
    /// should be made, or returns the final error (with the retry count).
    async fn failed(&mut self, err: StorageError) -> Result<()> {
        if !err.is_transient() || self.attempt >= self.policy.attempts() {
            return Err(err.with_retries(self.attempt - 1));
        }
        let delay = self.policy.backoff(self.attempt);
        // Logged here, once per retry; the final error is left to the caller.
        tracing::warn!(
            op = self.op,
            attempt = self.attempt,
            max_attempts = self.policy.attempts(),
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %err,
            "transient storage error, retrying"
        );
        tokio::time::sleep(delay).await;
        self.attempt += 1;
        Ok(())
    }
}

/// Runs `f` until it succeeds, fails permanently, or `policy.max_attempts`
/// attempts have failed transiently. Each retry is logged at WARN; the
/// returned transient error says how many retries were made.
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, op_name: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempts = Attempts::new(policy, op_name);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => attempts.failed(e).await?,
        }
    }
}

/// Applies a [`RetryPolicy`] to every operation of the wrapped storage,
/// including each `put_part`, `try_complete` and `try_abort` of uploads.
#[derive(Debug, Clone)]
pub struct RetryingStorage<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S: Storage> RetryingStorage<S> {
    /// Wraps `inner`, retrying its transient errors under `policy`.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        RetryingStorage { inner, policy }
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

#[async_trait]
impl<S: Storage> Storage for RetryingStorage<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        retry(&self.policy, Op::Put.name(), || self.inner.put(key, data.clone())).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        let mut attempts = Attempts::new(&self.policy, Op::PutIfAbsent.name());
        // Set once an attempt failed in a way that may have stored the data
        // anyway (e.g. the response was lost).
        let mut maybe_stored = false;
        loop {
            match self.inner.put_if_absent(key, data.clone()).await {
                Ok(PutOutcome::AlreadyExists) if maybe_stored => {
                    let existing = retry(&self.policy, Op::Get.name(), || self.inner.get(key)).await?;
                    return Ok(if existing == data { PutOutcome::Created } else { PutOutcome::AlreadyExists });
                }
                Ok(outcome) => return Ok(outcome),
                Err(e) => {
                    maybe_stored |= e.is_transient();
                    attempts.failed(e).await?;
                }
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        retry(&self.policy, Op::Get.name(), || self.inner.get(key)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        retry(&self.policy, Op::GetRange.name(), || self.inner.get_range(key, range.clone())).await
    }

    async fn get_stream(&self, key: &str) -> Result<ObjectStream> {
        retry(&self.policy, Op::GetStream.name(), || self.inner.get_stream(key)).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        retry(&self.policy, Op::Head.name(), || self.inner.head(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        retry(&self.policy, Op::List.name(), || self.inner.list(prefix)).await
    }

    async fn list_page(&self, prefix: &str, start_after: Option<&str>, max: usize) -> Result<ListPage> {
        retry(&self.policy, Op::List.name(), || self.inner.list_page(prefix, start_after, max)).await
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        retry(&self.policy, Op::ListDirs.name(), || self.inner.list_dirs(prefix)).await
    }

    async fn list_shallow(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        retry(&self.policy, Op::List.name(), || self.inner.list_shallow(prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        retry(&self.policy, Op::Delete.name(), || self.inner.delete(key)).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        // Deleting is idempotent, so repeating the whole batch is safe.
        retry(&self.policy, Op::DeleteMany.name(), || self.inner.delete_many(keys)).await
    }

    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        let inner = retry(&self.policy, Op::StartUpload.name(), || self.inner.start_upload(key)).await?;
        Ok(Box::new(RetryingUpload { inner, policy: self.policy.clone() }))
    }

    async fn check(&self) -> Result<()> {
        retry(&self.policy, Op::Check.name(), || self.inner.check()).await
    }

    fn s3_site(&self) -> Option<crate::S3Site> {
        self.inner.s3_site()
    }

    async fn stored_checksum(&self, key: &str) -> Result<(u64, u32)> {
        retry(&self.policy, Op::Head.name(), || self.inner.stored_checksum(key)).await
    }

    async fn copy_object(&self, from: &crate::S3Site, key: &str) -> Result<Option<String>> {
        retry(&self.policy, Op::CopyObject.name(), || self.inner.copy_object(from, key)).await
    }

    /// Creation is retried like `put_if_absent`; appends are not (see [`Journal`]).
    async fn create_journal(&self, key: &str, size_hint: u64) -> Result<JournalOpen> {
        let mut attempts = Attempts::new(&self.policy, Op::CreateJournal.name());
        let mut maybe_created = false;
        loop {
            match self.inner.create_journal(key, size_hint).await {
                // An empty journal our own lost attempt made (zeros at most,
                // when preallocated): nothing in it to lose.
                Ok(JournalOpen::AlreadyExists) if maybe_created => {
                    let existing = retry(&self.policy, Op::Get.name(), || self.inner.get(key)).await?;
                    if existing.iter().any(|&b| b != 0) {
                        return Ok(JournalOpen::AlreadyExists);
                    }
                    retry(&self.policy, Op::Delete.name(), || self.inner.delete(key)).await?;
                    maybe_created = false;
                }
                Ok(outcome) => return Ok(outcome),
                Err(e) => {
                    maybe_created |= e.is_transient();
                    attempts.failed(e).await?;
                }
            }
        }
    }
}

struct RetryingUpload {
    inner: Box<dyn Upload>,
    policy: RetryPolicy,
}

#[async_trait]
impl Upload for RetryingUpload {
    async fn put_part(&mut self, data: Bytes) -> Result<()> {
        // A failed put_part took none of `data` (the Upload contract), so
        // sending the same bytes again is safe.
        let mut attempts = Attempts::new(&self.policy, Op::PutPart.name());
        loop {
            match self.inner.put_part(data.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => attempts.failed(e).await?,
            }
        }
    }

    async fn try_complete(&mut self) -> Result<u64> {
        let mut attempts = Attempts::new(&self.policy, Op::CompleteUpload.name());
        loop {
            match self.inner.try_complete().await {
                Ok(n) => return Ok(n),
                Err(e) => attempts.failed(e).await?,
            }
        }
    }

    async fn try_abort(&mut self) -> Result<()> {
        let mut attempts = Attempts::new(&self.policy, Op::AbortUpload.name());
        loop {
            match self.inner.try_abort().await {
                Ok(()) => return Ok(()),
                Err(e) => attempts.failed(e).await?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(2) }
    }

    #[test]
    fn backoff_is_capped_exponential() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_cap(1), Duration::from_millis(100));
        assert_eq!(p.delay_cap(2), Duration::from_millis(200));
        assert_eq!(p.delay_cap(5), Duration::from_millis(1600));
        assert_eq!(p.delay_cap(7), Duration::from_secs(5));
        assert_eq!(p.delay_cap(u32::MAX), Duration::from_secs(5));
        for n in 1..10 {
            assert!(p.backoff(n) <= p.delay_cap(n));
        }
    }

    #[tokio::test]
    async fn retries_transient_until_success() {
        let calls = AtomicU32::new(0);
        let v = retry(&fast(), "t", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(StorageError::transient(Op::Get, "k", "/r", "flaky"))
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!((v, calls.load(Ordering::SeqCst)), (7, 3));
    }

    #[tokio::test]
    async fn permanent_fails_at_once_and_exhaustion_counts_retries() {
        let calls = AtomicU32::new(0);
        let e = retry(&fast(), "t", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(StorageError::permanent(Op::Get, "k", "/r", "denied"))
        })
        .await
        .unwrap_err();
        assert!(e.is_permanent());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        calls.store(0, Ordering::SeqCst);
        let e = retry(&fast(), "t", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(StorageError::transient(Op::Get, "k", "/r", "down"))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert!(e.to_string().ends_with("(transient, retried 3 times)"), "{e}");
    }
}
