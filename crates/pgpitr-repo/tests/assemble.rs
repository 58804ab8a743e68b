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
async fn pieces_overlaps_holes_and_complete_segments() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(dir.path());
    let wal = wal_bytes();
    let t = TimelineId(1);
    // Segment 3: pieces 0..1000, 0..3000 (a second writer), 3000..5000.
    put(&storage, WalObjectId::piece(t, SegNo(3), 0, 1000), &wal[..1000]).await;
    put(&storage, WalObjectId::piece(t, SegNo(3), 0, 3000), &wal[..3000]).await;
    put(&storage, WalObjectId::piece(t, SegNo(3), 3000, 5000), &wal[3000..5000]).await;
    // Segment 4: a hole at 100..200.
    put(&storage, WalObjectId::piece(t, SegNo(4), 0, 100), &wal[..100]).await;
    put(&storage, WalObjectId::piece(t, SegNo(4), 200, 300), &wal[200..300]).await;
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

    // A piece made redundant by its complete segment is reported as leftover.
    put(&storage, WalObjectId::piece(t, SegNo(2), 0, 10), &wal[..10]).await;
    let (_, leftovers) = scan(&storage, seg()).await.unwrap();
    let leftovers: Vec<String> = leftovers.into_iter().map(|m| m.key).collect();
    assert_eq!(leftovers, vec!["wal/00000001/00000000/000000010000000000000002.00000000-0000000A.part".to_string()]);
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

/// A journal: frames appended through the storage's own journal, a torn
/// tail, a piece continuing it after a failed append, and a journal that
/// never got a frame. Scan, headers and assembly all see the valid prefix.
#[tokio::test]
async fn journals_count_up_to_their_last_valid_frame() {
    use pgpitr_repo::object::TimedLsn;
    use pgpitr_repo::wal::{WalObjectKind, read_header};
    use pgpitr_storage::JournalOpen;
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(dir.path());
    let wal = wal_bytes();
    let t = TimelineId(1);
    let mib = 1u64 << 20;
    let base = 5 * mib;
    put(&storage, WalObjectId::piece(t, SegNo(5), 0, 1000), &wal[..1000]).await;
    let jid = WalObjectId::journal(t, SegNo(5), 1000);
    let JournalOpen::Created(mut j) = storage.create_journal(&jid.key(seg()), 1 << 16).await.unwrap() else {
        panic!("local storage makes journals")
    };
    let commit = |at: u64| WalSummary {
        last_commit: Some(TimedLsn { lsn: Lsn(base + at), end_lsn: Lsn(base + at + 8), time_us: at as i64 }),
        commits: 1,
        ..Default::default()
    };
    for (from, to) in [(1000u64, 1500u64), (1500, 4000)] {
        let frame = encode(t, Lsn(base + from), &wal[from as usize..to as usize], Codec::None, &commit(from));
        j.append(frame).await.unwrap();
    }
    // A torn third frame: the start of one, as a crash mid-append leaves it.
    let torn = encode(t, Lsn(base + 4000), &wal[4000..6000], Codec::None, &commit(4000));
    j.append(torn.slice(..torn.len() / 2)).await.unwrap();

    let (tls, leftovers) = scan(&storage, seg()).await.unwrap();
    assert!(leftovers.is_empty());
    let tl = &tls[&t];
    assert_eq!(tl.ranges, vec![(Lsn(base), Lsn(base + 4000))]);
    assert!(tl.objects.iter().any(|(id, _)| id.kind == WalObjectKind::Journal { from: 1000, to: 4000 }));
    let h = read_header(&storage, &jid.key(seg())).await.unwrap();
    assert_eq!((h.start, h.end, h.summary.commits), (Lsn(base + 1000), Lsn(base + 4000), 2));
    assert_eq!(h.summary.last_commit.unwrap().time_us, 1500);
    let s = assemble_segment(&storage, seg(), tl, SegNo(5)).await.unwrap().unwrap();
    assert_eq!(s.valid_len, 4000);
    assert_eq!(&s.data[..4000], &wal[..4000]);
    assert!(s.data[4000..].iter().all(|&b| b == 0));

    // The append failed: the same bytes went into a piece, then a new journal.
    put(&storage, WalObjectId::piece(t, SegNo(5), 4000, 6000), &wal[4000..6000]).await;
    let JournalOpen::Created(mut j2) =
        storage.create_journal(&WalObjectId::journal(t, SegNo(5), 6000).key(seg()), 4096).await.unwrap()
    else {
        panic!("local storage makes journals")
    };
    j2.append(encode(t, Lsn(base + 6000), &wal[6000..7000], Codec::Lz4, &commit(6000))).await.unwrap();
    // Created and never appended to: nothing in it, and no harm.
    let JournalOpen::Created(_empty) =
        storage.create_journal(&WalObjectId::journal(t, SegNo(5), 7000).key(seg()), 0).await.unwrap()
    else {
        panic!("local storage makes journals")
    };
    let (tls, _) = scan(&storage, seg()).await.unwrap();
    let tl = &tls[&t];
    assert_eq!(tl.ranges, vec![(Lsn(base), Lsn(base + 7000))]);
    let s = assemble_segment(&storage, seg(), tl, SegNo(5)).await.unwrap().unwrap();
    assert_eq!(s.valid_len, 7000);
    assert_eq!(&s.data[..7000], &wal[..7000]);

    // Once the segment is complete, every journal of it is a leftover.
    put(&storage, WalObjectId::segment(t, SegNo(5)), &wal).await;
    let (tls, leftovers) = scan(&storage, seg()).await.unwrap();
    let mut leftovers: Vec<String> = leftovers.into_iter().map(|m| m.key).collect();
    leftovers.sort();
    assert_eq!(leftovers.len(), 5, "{leftovers:?}");
    assert_eq!(leftovers.iter().filter(|k| k.ends_with(".journal")).count(), 3, "{leftovers:?}");
    assert_eq!(tls[&t].objects.len(), 1);
}

/// A merge cut short leaves its inputs beside the merged piece: readers take
/// the merged piece and check the others against it; one that holds other
/// bytes is an error naming both, never silently one of them.
#[tokio::test]
async fn pieces_inside_a_merged_piece_are_checked_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(dir.path());
    let wal = wal_bytes();
    let t = TimelineId(1);
    let merged = WalObjectId::piece(t, SegNo(3), 0, 3000);
    put(&storage, merged, &wal[..3000]).await;
    put(&storage, WalObjectId::piece(t, SegNo(3), 0, 1000), &wal[..1000]).await;
    put(&storage, WalObjectId::piece(t, SegNo(3), 1000, 2000), &wal[1000..2000]).await;
    put(&storage, WalObjectId::piece(t, SegNo(3), 3000, 3500), &wal[3000..3500]).await;

    let (tls, _) = scan(&storage, seg()).await.unwrap();
    let tl = &tls[&t];
    let cover: Vec<_> = tl.objects.iter().map(|(id, _)| *id).collect();
    assert_eq!(cover, vec![merged, WalObjectId::piece(t, SegNo(3), 3000, 3500)]);
    assert_eq!(tl.covered.len(), 2, "the merge's inputs are set aside");
    let s = assemble_segment(&storage, seg(), tl, SegNo(3)).await.unwrap().unwrap();
    assert_eq!(s.valid_len, 3500);
    assert_eq!(&s.data[..3500], &wal[..3500]);
    assert_eq!(s.used.iter().map(|(id, _)| *id).collect::<Vec<_>>(), cover, "each byte is taken once");

    // An input that disagrees with the merged piece.
    let mut other = wal[1000..2000].to_vec();
    other[500] ^= 1;
    let bad = WalObjectId::piece(t, SegNo(3), 1000, 2000);
    put(&storage, bad, &other).await;
    let err = assemble_segment(&storage, seg(), tl, SegNo(3)).await.unwrap_err().to_string();
    assert!(err.contains(&bad.key(seg())) && err.contains(&merged.key(seg())), "{err}");
    assert!(err.contains("0x5DC"), "names the offset: {err}");
}

/// A journal's end is read from its file, where a frame whose sync failed
/// can still be: the piece that holds those bytes since is never set aside
/// as redundant (nor deleted), however far the journal reaches.
#[tokio::test]
async fn a_journal_never_makes_a_piece_redundant() {
    use pgpitr_repo::wal::split_cover;
    let t = TimelineId(1);
    let journal = WalObjectId {
        kind: pgpitr_repo::wal::WalObjectKind::Journal { from: 0, to: 3000 },
        ..WalObjectId::journal(t, SegNo(5), 0)
    };
    let piece = WalObjectId::piece(t, SegNo(5), 1000, 2000);
    let (cover, covered) = split_cover(vec![(journal, ()), (piece, ())]);
    assert_eq!(cover.len(), 2, "{cover:?}");
    assert!(covered.is_empty());
    // A piece does make a journal inside it redundant.
    let inner = WalObjectId { kind: pgpitr_repo::wal::WalObjectKind::Journal { from: 0, to: 500 }, ..journal };
    let (_, covered) = split_cover(vec![(WalObjectId::piece(t, SegNo(5), 0, 1000), ()), (inner, ())]);
    assert_eq!(covered.len(), 1);
}
