//! Fixtures: real backends, torn down on drop.

use std::sync::Arc;
use std::time::Duration;

use pgpitr_storage::{FaultMode, FaultyStorage, LocalStorage, RetryPolicy, RetryingStorage, S3Options, S3Storage};
use pgpitr_testkit::S3Server;

/// Retries fast enough for tests, patient enough to ride out injected faults.
pub fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5) }
}

pub struct LocalFx {
    pub storage: LocalStorage,
    pub _dir: tempfile::TempDir,
}

impl LocalFx {
    pub fn after(&self) {}
}

pub async fn local() -> LocalFx {
    let dir = tempfile::tempdir().expect("create temp dir");
    // A root that does not exist yet: the backend creates it.
    LocalFx { storage: LocalStorage::new(dir.path().join("repo")), _dir: dir }
}

pub struct MemoryFx {
    pub storage: pgpitr_storage::MemoryStorage,
}

impl MemoryFx {
    pub fn after(&self) {}
}

pub async fn memory() -> MemoryFx {
    MemoryFx { storage: pgpitr_storage::MemoryStorage::new() }
}

pub struct S3Fx {
    pub storage: S3Storage,
    pub server: S3Server,
}

impl S3Fx {
    pub fn after(&self) {}
}

pub const BUCKET: &str = "pgpitr-test";

/// Options for `bucket` on `server`, with the smallest part size S3 allows
/// so multipart uploads have several parts.
pub fn s3_options(server: &S3Server, bucket: &str) -> S3Options {
    S3Options {
        prefix: Some("repo/prefix".to_owned()),
        endpoint: Some(server.endpoint()),
        region: Some(server.region().to_owned()),
        path_style: true,
        static_credentials: Some((server.access_key().to_owned(), server.secret_key().to_owned())),
        part_size: 5 * 1024 * 1024,
        upload_concurrency: 3,
        ..S3Options::new(bucket)
    }
}

pub async fn s3() -> S3Fx {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let storage = S3Storage::new(s3_options(&server, BUCKET)).await.expect("build S3 client");
    S3Fx { storage, server }
}

/// A real backend behind `FaultyStorage` behind `RetryingStorage`; keeps
/// an `Arc` to the faulty layer so tests can read its counters.
pub struct Faulty<S, G> {
    pub storage: RetryingStorage<Arc<FaultyStorage<S>>>,
    pub faults: Arc<FaultyStorage<S>>,
    pub _guard: G,
}

impl<S: pgpitr_storage::Storage, G> Faulty<S, G> {
    /// The suite passed through the faults: make sure there were some.
    pub fn after(&self) {
        assert!(self.faults.injected() > 0, "no faults were injected; the test proved nothing");
    }
}

pub fn faulty<S: pgpitr_storage::Storage, G>(inner: S, guard: G, mode: FaultMode, attempts: u32) -> Faulty<S, G> {
    let faults = Arc::new(FaultyStorage::new(inner, mode));
    Faulty { storage: RetryingStorage::new(faults.clone(), fast_policy(attempts)), faults, _guard: guard }
}

/// The conformance suite over a local directory where every distinct
/// (operation, key) fails transiently twice before reaching the backend.
pub async fn local_faulty() -> Faulty<LocalStorage, tempfile::TempDir> {
    let fx = local().await;
    faulty(fx.storage, fx._dir, FaultMode::FailFirst(2), 6)
}

pub async fn s3_faulty() -> Faulty<S3Storage, S3Server> {
    let fx = s3().await;
    faulty(fx.storage, fx.server, FaultMode::FailFirst(2), 6)
}
