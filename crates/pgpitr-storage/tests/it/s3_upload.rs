//! S3 multipart uploads against the real server: parts are really used,
//! abort and drop clean up server-side state, and part failures caused by a
//! broken network are retried until the object is complete and identical.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgpitr_storage::conformance::data;
use pgpitr_storage::{FaultMode, FaultyStorage, Op, RetryPolicy, RetryingStorage, S3Options, S3Storage, Storage};

use crate::common::{BUCKET, s3, s3_options};
use crate::proxy::Proxy;

/// s3s-fs keeps `.upload-<id>.json` per multipart upload and
/// `.upload_id-<id>.part-<n>` per uploaded part in its data directory.
fn upload_files(data_dir: &Path) -> (usize, usize) {
    let names: Vec<String> = std::fs::read_dir(data_dir)
        .expect("read s3s-fs data dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let uploads = names.iter().filter(|n| n.starts_with(".upload-")).count();
    let parts = names.iter().filter(|n| n.starts_with(".upload_id-")).count();
    (uploads, parts)
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_parts_are_used_and_cleaned_up() {
    let fx = s3().await;
    let dir = fx.server.data_dir();
    const MIB: usize = 1024 * 1024;

    // Below one part: a single PUT, no multipart state on the server.
    let mut up = fx.storage.start_upload("small").await.expect("start");
    up.put_part(data(1, MIB)).await.expect("put_part");
    assert_eq!(upload_files(&dir), (0, 0));
    assert_eq!(up.complete().await.expect("complete"), MIB as u64);

    // Two full 5 MiB parts and a short last one.
    let v = data(2, 11 * MIB);
    let mut up = fx.storage.start_upload("big").await.expect("start");
    for chunk in v.chunks(MIB) {
        up.put_part(Bytes::copy_from_slice(chunk)).await.expect("put_part");
    }
    assert_eq!(upload_files(&dir).0, 1, "a multipart upload was created");
    wait_until("two parts are stored", || upload_files(&dir).1 >= 2).await;
    assert_eq!(up.complete().await.expect("complete"), v.len() as u64);
    assert_eq!(upload_files(&dir), (0, 0), "completing cleans up the upload");
    assert!(fx.storage.get("big").await.expect("get") == v);

    let mut up = fx.storage.start_upload("aborted").await.expect("start");
    up.put_part(data(3, 6 * MIB)).await.expect("put_part");
    assert_eq!(upload_files(&dir).0, 1);
    up.abort().await.expect("abort");
    assert_eq!(upload_files(&dir), (0, 0), "abort removes the upload and its parts");

    let mut up = fx.storage.start_upload("dropped").await.expect("start");
    up.put_part(data(4, 6 * MIB)).await.expect("put_part");
    assert_eq!(upload_files(&dir).0, 1);
    drop(up);
    wait_until("the dropped upload is aborted", || upload_files(&dir) == (0, 0)).await;
    assert!(fx.storage.head("dropped").await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_survives_a_broken_network() {
    let fx = s3().await;
    let proxy = Proxy::start(fx.server.port()).await;
    let opts = S3Options { endpoint: Some(proxy.endpoint()), ..s3_options(&fx.server, BUCKET) };
    // Generous: the network stays down until a retry has been seen.
    let policy =
        RetryPolicy { max_attempts: 100, base_delay: Duration::from_millis(10), max_delay: Duration::from_millis(100) };
    // FailFirst(0) injects nothing; it counts attempts, so the test can see
    // that the outage really made calls fail and get retried.
    let counter = Arc::new(FaultyStorage::new(S3Storage::new(opts).await.expect("client"), FaultMode::FailFirst(0)));
    let storage = RetryingStorage::new(counter.clone(), policy);

    let v = data(5, 17 * 1024 * 1024 + 1);
    let mut up = storage.start_upload("flaky").await.expect("start");
    let mut chunks = v.chunks(512 * 1024).map(Bytes::copy_from_slice);
    let started = AtomicU64::new(0);
    let upload_attempts = || counter.total_attempts(Op::PutPart) + counter.total_attempts(Op::CompleteUpload);
    for chunk in chunks.by_ref().take(12) {
        started.fetch_add(1, Ordering::SeqCst);
        up.put_part(chunk).await.expect("put_part before the outage");
    }
    // A part is in flight now: cut it off, and keep the network down until
    // the retry wrapper has retried a call (more attempts than calls), so
    // the test does not depend on timing.
    proxy.set_broken(true);
    let healer = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while upload_attempts() <= started.load(Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.set_broken(false);
    };
    let writer = async {
        for chunk in chunks {
            started.fetch_add(1, Ordering::SeqCst);
            up.put_part(chunk).await.expect("put_part is retried through the outage");
        }
        started.fetch_add(1, Ordering::SeqCst);
        up.complete().await.expect("complete is retried through the outage")
    };
    let (_, total) = tokio::join!(healer, writer);
    assert_eq!(total, v.len() as u64);
    assert!(proxy.cuts() > 0, "the outage cut no connection; the test proved nothing");
    let (attempts, calls) = (upload_attempts(), started.load(Ordering::SeqCst));
    assert!(attempts > calls, "no put_part or complete was retried ({attempts} attempts for {calls} calls)");
    assert!(storage.get("flaky").await.expect("get") == v, "object differs after the outage");
}
