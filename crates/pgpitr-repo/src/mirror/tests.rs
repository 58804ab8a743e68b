use super::*;
use pgpitr_storage::{FaultMode, FaultyStorage, MemoryStorage};
use pgpitr_types::{SegNo, TimelineId};

fn seg() -> WalSegSize {
    WalSegSize::new(16 << 20).unwrap()
}

async fn keys(s: &MemoryStorage) -> Vec<String> {
    s.list("").await.unwrap().into_iter().map(|m| m.key).collect()
}

fn piece(n: u32) -> String {
    WalObjectId::piece(TimelineId(1), SegNo(3), n * 100, n * 100 + 100).key(seg())
}

fn segment() -> String {
    WalObjectId::segment(TimelineId(1), SegNo(3)).key(seg())
}

#[tokio::test]
async fn the_copy_follows_writes_and_only_the_deletions_that_keep_it_consistent() {
    let (primary, copy) = (Arc::new(MemoryStorage::new()), Arc::new(MemoryStorage::new()));
    let m = Mirror::new(primary.clone(), copy.clone(), seg(), false);
    let old = BackupId::parse("20260101T000000Z").unwrap();
    let done = BackupId::parse("20260102T000000Z").unwrap();
    let failed = BackupId::parse("20260103T000000Z").unwrap();
    // Older objects the copy already holds (from a catch-up pass).
    for k in [old.info_key(), format!("{}base.tar.lz4", old.dir())] {
        primary.put(&k, Bytes::from_static(b"old")).await.unwrap();
        copy.put(&k, Bytes::from_static(b"old")).await.unwrap();
    }
    for k in [piece(0), piece(1), segment(), crate::lease::StreamLease::key_for("s")] {
        m.put_if_absent(&k, Bytes::from(k.clone())).await.unwrap();
    }
    for id in [&done, &failed] {
        m.put(&id.marker_key(), Bytes::from_static(b"running")).await.unwrap();
        m.put(&format!("{}base.tar.lz4", id.dir()), Bytes::from_static(b"data")).await.unwrap();
    }
    m.put(&done.info_key(), Bytes::from_static(b"{}")).await.unwrap();
    m.delete(&done.marker_key()).await.unwrap();
    // The stream's pieces, covered by the segment; a failed backup's leftovers.
    m.delete_many(&[piece(0), piece(1)]).await.unwrap();
    backup::delete_backup(&m, &failed).await.unwrap();
    // Expiry: the old backup and the segment stay in the copy.
    backup::delete_backup(&m, &old).await.unwrap();
    m.delete(&segment()).await.unwrap();
    m.delete(&crate::lease::StreamLease::key_for("s")).await.unwrap();
    assert!(m.drain(Duration::from_secs(5)).await, "the copy catches up");
    let mut want = vec![
        old.info_key(),
        format!("{}base.tar.lz4", old.dir()),
        done.info_key(),
        format!("{}base.tar.lz4", done.dir()),
        segment(),
    ];
    want.sort();
    assert_eq!(keys(&copy).await, want);
    assert!(keys(&primary).await.iter().all(|k| k.contains("20260102")), "{:?}", keys(&primary).await);
    let st = m.stats();
    assert_eq!(st.lag_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(st.oldest_pending_us.load(Ordering::Relaxed), 0);
    assert_eq!(st.copied_objects.load(Ordering::Relaxed), 8, "all but the lease");
    assert_eq!(copy.get(&segment()).await.unwrap(), Bytes::from(segment()));
}

/// Past `MAX_HELD` the queue keeps keys only and reads the objects back
/// from the primary; one deleted from the primary meanwhile is skipped,
/// and the lag counts every byte until the copy holds it.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_copy_costs_requests_not_memory() {
    let (primary, copy) = (Arc::new(MemoryStorage::new()), Arc::new(MemoryStorage::new()));
    let m = Mirror::new(primary.clone(), copy.clone(), seg(), false);
    // Objects of a MiB count as the segment buffer they may be views of.
    let n = (MAX_HELD / seg().bytes()) as u32 + 4;
    // The worker runs on this thread only once the test yields.
    for i in 0..n {
        m.put(&piece(i), Bytes::from(vec![i as u8; 1 << 20])).await.unwrap();
    }
    {
        let q = m.shared.queue.lock().unwrap();
        assert_eq!(q.held, MAX_HELD);
        assert_eq!(q.ops.iter().filter(|o| matches!(o, Pending::Put { data: None, .. })).count(), 4);
    }
    assert_eq!(m.stats().lag_bytes.load(Ordering::Relaxed), u64::from(n) << 20);
    assert!(m.stats().oldest_pending_us.load(Ordering::Relaxed) > 0);
    primary.delete(&piece(n - 1)).await.unwrap();
    assert!(m.drain(Duration::from_secs(10)).await);
    let copied = keys(&copy).await;
    assert_eq!(copied.len(), n as usize - 1);
    assert!(!copied.contains(&piece(n - 1)));
    assert_eq!(copy.get(&piece(n - 2)).await.unwrap(), Bytes::from(vec![(n - 2) as u8; 1 << 20]));
    assert_eq!(m.stats().lag_bytes.load(Ordering::Relaxed), 0);
}

/// A copy that fails keeps its writes queued and retried; the primary's
/// writes are not held up.
#[tokio::test]
async fn a_failing_copy_is_retried_without_holding_up_the_primary() {
    let primary = Arc::new(MemoryStorage::new());
    let copy = Arc::new(FaultyStorage::new(MemoryStorage::new(), FaultMode::FailFirst(2)));
    let m = Mirror::new(primary.clone(), copy.clone(), seg(), false);
    m.put_if_absent(&segment(), Bytes::from_static(b"wal")).await.unwrap();
    assert_eq!(primary.get(&segment()).await.unwrap(), Bytes::from_static(b"wal"));
    assert!(m.drain(Duration::from_secs(10)).await);
    assert_eq!(copy.inner().get(&segment()).await.unwrap(), Bytes::from_static(b"wal"));
    assert_eq!(m.stats().failures.load(Ordering::Relaxed), 2);
}

/// `--copy-sync`: a write returns only once both hold it; when the copy
/// fails, so does the write (the stream then reports nothing flushed).
#[tokio::test]
async fn synchronous_writes_need_both_repositories() {
    let primary = Arc::new(MemoryStorage::new());
    let copy = Arc::new(MemoryStorage::new());
    let m = Mirror::new(primary.clone(), copy.clone(), seg(), true);
    assert_eq!(m.put_if_absent(&piece(0), Bytes::from_static(b"a")).await.unwrap(), PutOutcome::Created);
    assert_eq!(copy.get(&piece(0)).await.unwrap(), Bytes::from_static(b"a"), "in the copy when put returns");
    m.put_if_absent(&piece(1), Bytes::from_static(b"b")).await.unwrap();
    m.put_if_absent(&segment(), Bytes::from_static(b"ab")).await.unwrap();
    // Covered by the segment in the copy: deleted there too, at once.
    m.delete(&piece(0)).await.unwrap();
    assert_eq!(keys(&copy).await, vec![segment(), piece(1)]);

    let broken = Arc::new(FaultyStorage::new(MemoryStorage::new(), FaultMode::FailAllPermanent));
    let m = Mirror::new(primary.clone(), broken, seg(), true);
    assert!(m.put_if_absent(&piece(1), Bytes::from_static(b"b")).await.is_err());
    assert!(matches!(m.create_journal(&piece(2), 0).await.unwrap(), JournalOpen::Unsupported));
}
