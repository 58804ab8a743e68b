//! Rebuilding segments from stored objects, over a real local directory.

use pgpitr_repo::object::{Codec, WalSummary, encode};
use pgpitr_repo::wal::{WalObjectId, assemble_segment, scan};
use pgpitr_storage::{LocalStorage, Storage};
use pgpitr_types::{Lsn, SegNo, TimelineId, WalSegSize};

fn seg() -> WalSegSize {
    WalSegSize::new(1 << 20).unwrap()
}

fn wal_bytes() -> Vec<u8> {
    (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()
}

async fn put(storage: &LocalStorage, id: WalObjectId, data: &[u8]) {
    let (start, _) = id.range(seg());
    let obj = encode(id.tli, start, data, Codec::Lz4, &WalSummary::default());
    storage.put(&id.key(seg()), obj).await.unwrap();
}

#[tokio::test]
async fn parts_overlaps_holes_and_complete_segments() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(dir.path());
    let wal = wal_bytes();
    let t = TimelineId(1);
    // Segment 3: parts 0..1000, 0..3000 (a second writer), 3000..5000.
    put(&storage, WalObjectId::part(t, SegNo(3), 0, 1000), &wal[..1000]).await;
    put(&storage, WalObjectId::part(t, SegNo(3), 0, 3000), &wal[..3000]).await;
    put(&storage, WalObjectId::part(t, SegNo(3), 3000, 5000), &wal[3000..5000]).await;
    // Segment 4: a hole at 100..200.
    put(&storage, WalObjectId::part(t, SegNo(4), 0, 100), &wal[..100]).await;
    put(&storage, WalObjectId::part(t, SegNo(4), 200, 300), &wal[200..300]).await;
    // Segment 2: complete.
    put(&storage, WalObjectId::segment(t, SegNo(2)), &wal).await;

    let (tls, leftovers) = scan(&storage, seg()).await.unwrap();
    assert!(leftovers.is_empty());
    let tl = &tls[&t];
    let s3 = assemble_segment(&storage, seg(), tl, SegNo(3)).await.unwrap().unwrap();
    assert!(!s3.complete);
    assert_eq!(s3.valid_len, 5000);
    assert_eq!(&s3.data[..5000], &wal[..5000]);
    assert!(s3.data[5000..].iter().all(|&b| b == 0), "zero-filled past the durable end");
    assert_eq!(s3.data.len(), 1 << 20);

    let s4 = assemble_segment(&storage, seg(), tl, SegNo(4)).await.unwrap().unwrap();
    assert_eq!(s4.valid_len, 100, "only the prefix before the hole counts");

    let s2 = assemble_segment(&storage, seg(), tl, SegNo(2)).await.unwrap().unwrap();
    assert!(s2.complete);
    assert_eq!(&s2.data[..], &wal[..]);
    assert!(assemble_segment(&storage, seg(), tl, SegNo(9)).await.unwrap().is_none());
    let mib = 1u64 << 20;
    assert_eq!(tl.gaps(), vec![(Lsn(3 * mib + 5000), Lsn(4 * mib)), (Lsn(4 * mib + 100), Lsn(4 * mib + 200))]);

    // A part made redundant by its complete segment is reported as leftover.
    put(&storage, WalObjectId::part(t, SegNo(2), 0, 10), &wal[..10]).await;
    let (_, leftovers) = scan(&storage, seg()).await.unwrap();
    assert_eq!(leftovers, vec!["wal/00000001/000000010000000000000002.00000000-0000000A.part".to_string()]);
}

#[tokio::test]
async fn corrupt_object_is_an_error_not_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(dir.path());
    let wal = wal_bytes();
    let id = WalObjectId::segment(TimelineId(1), SegNo(7));
    put(&storage, id, &wal).await;
    let path = dir.path().join(id.key(seg()));
    let mut raw = std::fs::read(&path).unwrap();
    let n = raw.len();
    raw[n - 10] ^= 0xFF;
    std::fs::write(&path, &raw).unwrap();
    let (tls, _) = scan(&storage, seg()).await.unwrap();
    let err = assemble_segment(&storage, seg(), &tls[&TimelineId(1)], SegNo(7)).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("corrupt") && msg.contains("000000010000000000000007"), "{msg}");
}
