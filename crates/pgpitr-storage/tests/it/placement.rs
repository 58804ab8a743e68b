//! Server-side encryption and storage classes reach the S3 server: the
//! requests are recorded on their way to s3s-fs, which stores and serves
//! the objects.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pgpitr_storage::{S3Storage, Storage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{BUCKET, s3_options};

/// A proxy that keeps a copy of every byte sent to the server.
async fn recording_proxy(target: u16) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                let (mut ci, mut co) = inbound.into_split();
                let (mut si, mut so) = outbound.into_split();
                let up = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = ci.read(&mut buf).await {
                        if n == 0 || so.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = so.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut si, &mut co).await;
                    let _ = co.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (port, seen)
}

/// The request heads of PUTs (and multipart creations) of `key`.
fn heads_for(seen: &[u8], key: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(seen);
    // A head follows the body of the request before it on a kept-alive
    // connection: it starts at its method.
    text.split("\r\n\r\n")
        .filter_map(|chunk| chunk.find("PUT /").or_else(|| chunk.find("POST /")).map(|at| &chunk[at..]))
        .filter(|h| h.lines().next().is_some_and(|l| l.contains(key)))
        .map(|h| h.to_ascii_lowercase())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_storage_classes_are_sent_with_every_write() {
    let fx = crate::common::s3().await;
    let (port, seen) = recording_proxy(fx.server.port()).await;
    let mut opts = s3_options(&fx.server, BUCKET);
    opts.endpoint = Some(format!("http://127.0.0.1:{port}"));
    opts.sse = Some("AES256".into());
    opts.wal_storage_class = Some("STANDARD".into());
    opts.backup_storage_class = Some("REDUCED_REDUNDANCY".into());
    let s = S3Storage::new(opts).await.unwrap();
    s.put("wal/00000001/00000000/seg", Bytes::from_static(b"wal")).await.unwrap();
    s.put_if_absent("backups/B/base/000000", Bytes::from_static(b"part")).await.unwrap();
    s.put("streams/pgpitr.json", Bytes::from_static(b"{}")).await.unwrap();
    let big = Bytes::from(vec![7u8; 12 << 20]);
    let mut up = s.start_upload("backups/B/base/000001").await.unwrap();
    up.put_part(big.clone()).await.unwrap();
    up.complete().await.unwrap();
    assert_eq!(s.get("backups/B/base/000001").await.unwrap(), big);

    let seen = seen.lock().unwrap().clone();
    let wal = heads_for(&seen, "wal/00000001/00000000/seg");
    assert!(!wal.is_empty(), "no PUT of the WAL object recorded");
    for h in &wal {
        assert!(h.contains("x-amz-server-side-encryption: aes256"), "{h}");
        assert!(h.contains("x-amz-storage-class: standard"), "{h}");
    }
    for key in ["backups/B/base/000000", "backups/B/base/000001?uploads"] {
        let heads = heads_for(&seen, key);
        assert!(!heads.is_empty(), "no request for {key}");
        assert!(heads.iter().all(|h| h.contains("x-amz-storage-class: reduced_redundancy")), "{heads:?}");
        assert!(heads.iter().all(|h| h.contains("x-amz-server-side-encryption: aes256")), "{heads:?}");
    }
    // Leases and the like: the bucket's default class.
    let lease = heads_for(&seen, "streams/pgpitr.json");
    assert!(lease.iter().all(|h| !h.contains("x-amz-storage-class")), "{lease:?}");
}
