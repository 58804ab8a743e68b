//! The behaviour every [`Storage`] backend must show, as one async function
//! per behaviour. Backends' integration tests run all of them against a
//! real instance (a temp directory, a real S3 server); the functions panic
//! with a message on the first deviation.
//!
//! Each function works under its own `conf/<name>/` prefix, so they can
//! share one storage, but it must start empty under those prefixes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt, stream};

use crate::{PutOutcome, Storage, StorageError};

/// Keys written for the "more than one listing page" cases (S3 pages hold
/// at most 1000 keys).
pub const MANY: usize = 1100;
/// Requests in flight when writing many keys.
const PARALLEL: usize = 32;

/// Deterministic pseudo-random bytes.
pub fn data(seed: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut v);
    Bytes::from(v)
}

fn ok<T>(r: crate::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: unexpected error: {e}"))
}

fn assert_not_found<T: std::fmt::Debug>(r: crate::Result<T>, what: &str) {
    match r {
        Err(e) if e.is_not_found() => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

fn assert_invalid_key<T: std::fmt::Debug>(r: crate::Result<T>, what: &str) {
    match r {
        Err(StorageError::InvalidKey { .. }) => {}
        other => panic!("{what}: expected InvalidKey, got {other:?}"),
    }
}

async fn keys(s: &dyn Storage, prefix: &str) -> Vec<String> {
    ok(s.list(prefix).await, &format!("list {prefix:?}")).into_iter().map(|m| m.key).collect()
}

async fn put_all(s: &dyn Storage, keys: &[String]) {
    stream::iter(keys)
        .map(|k| async move { ok(s.put(k, Bytes::from(k.clone().into_bytes())).await, &format!("put {k}")) })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<()>>()
        .await;
}

/// `check` succeeds on a usable repository.
pub async fn check_succeeds(s: &dyn Storage) {
    ok(s.check().await, "check");
}

/// What `put` stores, `get` returns byte for byte, including empty objects
/// and keys with spaces and non-ASCII characters.
pub async fn put_get_roundtrip(s: &dyn Storage) {
    let cases = [
        ("conf/rt/small", Bytes::from_static(b"hello")),
        ("conf/rt/empty", Bytes::new()),
        ("conf/rt/big.bin", data(1, 1024 * 1024 + 3)),
        ("conf/rt/dir with space/ü-ß.json", Bytes::from_static(b"{}")),
    ];
    for (key, value) in &cases {
        ok(s.put(key, value.clone()).await, key);
    }
    for (key, value) in &cases {
        assert_eq!(ok(s.get(key).await, key), value, "get {key}");
        assert_eq!(ok(s.head(key).await, key).size, value.len() as u64, "head {key}");
    }
}

/// `put` replaces an existing object entirely (a shorter value leaves no
/// tail of the longer one).
pub async fn overwrite(s: &dyn Storage) {
    let key = "conf/ow/obj";
    ok(s.put(key, data(2, 5000)).await, "first put");
    let v2 = data(3, 100);
    ok(s.put(key, v2.clone()).await, "second put");
    assert_eq!(ok(s.get(key).await, "get"), v2);
    assert_eq!(ok(s.head(key).await, "head").size, 100);
    assert_eq!(keys(s, "conf/ow/").await, vec![key.to_owned()]);
}

/// `put_if_absent` creates once and never replaces.
pub async fn put_if_absent(s: &dyn Storage) {
    let key = "conf/pia/obj";
    assert_eq!(ok(s.put_if_absent(key, Bytes::from_static(b"first")).await, "create"), PutOutcome::Created);
    assert_eq!(ok(s.put_if_absent(key, Bytes::from_static(b"second")).await, "again"), PutOutcome::AlreadyExists);
    assert_eq!(&ok(s.get(key).await, "get")[..], b"first");
    ok(s.put(key, Bytes::from_static(b"replaced")).await, "put over it");
    assert_eq!(ok(s.put_if_absent(key, Bytes::from_static(b"third")).await, "again"), PutOutcome::AlreadyExists);
    assert_eq!(&ok(s.get(key).await, "get")[..], b"replaced");
}

/// Of many racing `put_if_absent` calls exactly one creates the object.
/// AWS S3 and the local backend guarantee this; s3s-fs checks for the
/// object and then writes it without a lock, so the S3 run leaves this out.
pub async fn put_if_absent_race(s: &dyn Storage) {
    let race = "conf/pia/race";
    let outcomes = futures_util::future::join_all((0..8u8).map(|i| async move {
        (i, ok(s.put_if_absent(race, Bytes::from(vec![i; 4096])).await, "racing put_if_absent"))
    }))
    .await;
    let winners: Vec<u8> = outcomes.iter().filter(|(_, o)| *o == PutOutcome::Created).map(|(i, _)| *i).collect();
    assert_eq!(winners.len(), 1, "exactly one racer must create the object: {outcomes:?}");
    assert_eq!(ok(s.get(race).await, "get race"), Bytes::from(vec![winners[0]; 4096]));
}

/// Ranged reads: exact ranges, an end past the size is clamped, a start at
/// or past the size or an empty range gives empty bytes.
pub async fn get_range(s: &dyn Storage) {
    let key = "conf/range/obj";
    let v = data(4, 1000);
    ok(s.put(key, v.clone()).await, "put");
    let cases: [(std::ops::Range<u64>, &[u8]); 8] = [
        (0..10, &v[0..10]),
        (990..1000, &v[990..1000]),
        (500..2000, &v[500..]),
        (0..u64::MAX, &v[..]),
        (999..1000, &v[999..]),
        (1000..1010, b""),
        (5000..6000, b""),
        (10..10, b""),
    ];
    for (range, want) in cases {
        let got = ok(s.get_range(key, range.clone()).await, &format!("get_range {range:?}"));
        assert_eq!(&got[..], want, "get_range {range:?}");
    }
    let empty = "conf/range/empty";
    ok(s.put(empty, Bytes::new()).await, "put empty");
    assert!(ok(s.get_range(empty, 0..10).await, "range of empty object").is_empty());
}

/// `head` reports key, size and a plausible modification time.
pub async fn head(s: &dyn Storage) {
    let key = "conf/head/obj";
    ok(s.put(key, data(5, 4321)).await, "put");
    let m = ok(s.head(key).await, "head");
    assert_eq!((m.key.as_str(), m.size), (key, 4321));
    let t = m.last_modified.expect("last_modified reported");
    let now = SystemTime::now();
    let skew = Duration::from_secs(3600);
    assert!(t > now - skew && t < now + skew, "last_modified {t:?} is not close to now {now:?}");
}

/// A missing object is `NotFound` on every read, distinct from other errors,
/// also where a prefix of the key is an object or the key is a "directory".
pub async fn not_found(s: &dyn Storage) {
    let missing = "conf/nf/missing";
    assert_not_found(s.get(missing).await, "get");
    assert_not_found(s.head(missing).await, "head");
    assert_not_found(s.get_range(missing, 0..10).await, "get_range");
    assert_not_found(s.get_range(missing, 5..5).await, "empty get_range");
    assert_not_found(s.get_stream(missing).await.map(|_| ()), "get_stream");

    ok(s.put("conf/nf/file", Bytes::from_static(b"x")).await, "put file");
    assert_not_found(s.get("conf/nf/file/child").await, "get below an object");
    assert_not_found(s.head("conf/nf/file/child").await, "head below an object");
}

/// A key that is only a prefix of other keys ("a directory") is not an
/// object. AWS S3 and the local backend answer NotFound; s3s-fs answers
/// HTTP 500 for a GET of a directory, so the S3 run leaves this one out.
pub async fn prefix_is_not_an_object(s: &dyn Storage) {
    ok(s.put("conf/pno/dir/x", Bytes::from_static(b"x")).await, "put dir/x");
    assert_not_found(s.get("conf/pno/dir").await, "get of a directory");
    assert_not_found(s.head("conf/pno/dir").await, "head of a directory");
    assert_not_found(s.get_range("conf/pno/dir", 0..1).await, "get_range of a directory");
    assert_not_found(s.get_stream("conf/pno/dir").await.map(|_| ()), "get_stream of a directory");
    ok(s.delete("conf/pno/dir").await, "delete of a directory is a no-op");
    assert_eq!(keys(s, "conf/pno/").await, ["conf/pno/dir/x"]);
}

/// `list` is a string-prefix match over all nesting levels, sorted, with
/// correct sizes.
pub async fn list_nested(s: &dyn Storage) {
    let all = ["conf/ls/a", "conf/ls/b/1", "conf/ls/b/2", "conf/ls/b/c/3", "conf/ls/bb", "conf/lsx/4"];
    for (i, k) in all.iter().enumerate() {
        ok(s.put(k, data(i as u64, i * 10)).await, k);
    }
    let listed = ok(s.list("conf/ls/").await, "list conf/ls/");
    assert_eq!(listed.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), &all[..5]);
    for (i, m) in listed.iter().enumerate() {
        assert_eq!(m.size, (i * 10) as u64, "size of {}", m.key);
    }
    assert_eq!(keys(s, "conf/ls/b").await, ["conf/ls/b/1", "conf/ls/b/2", "conf/ls/b/c/3", "conf/ls/bb"]);
    assert_eq!(keys(s, "conf/ls/b/").await, ["conf/ls/b/1", "conf/ls/b/2", "conf/ls/b/c/3"]);
    assert_eq!(keys(s, "conf/ls/a").await, ["conf/ls/a"]);
    assert_eq!(keys(s, "conf/ls").await, all);
    assert!(keys(s, "conf/none/").await.is_empty());
    let everything = keys(s, "").await;
    assert!(all.iter().all(|k| everything.iter().any(|e| e == k)), "list(\"\") misses keys: {everything:?}");
}

/// Listing more keys than fit one S3 page returns every key exactly once.
pub async fn list_many(s: &dyn Storage) {
    let want: Vec<String> = (0..MANY).map(|i| format!("conf/many/k{i:05}")).collect();
    put_all(s, &want).await;
    assert_eq!(keys(s, "conf/many/").await, want);
    let sub: Vec<String> = (100..200).map(|i| format!("conf/many/k{i:05}")).collect();
    assert_eq!(keys(s, "conf/many/k001").await, sub);
}

/// `list_page` lists a range of keys in pages that join up to `list`.
pub async fn list_pages(s: &dyn Storage) {
    let prefix = "conf/pages/";
    let want: Vec<String> = (0..MANY).map(|i| format!("{prefix}d{}/k{i:05}", i / 300)).collect();
    put_all(s, &want).await;
    let page = |after: Option<&'static str>, max: usize| async move {
        ok(s.list_page(prefix, after, max).await, &format!("list_page after {after:?}, {max}"))
    };
    let names = |p: &crate::ListPage| p.objects.iter().map(|m| m.key.clone()).collect::<Vec<_>>();
    for max in [crate::MAX_PAGE, 250] {
        let (mut got, mut after) = (Vec::new(), None::<String>);
        loop {
            let p = ok(s.list_page(prefix, after.as_deref(), max).await, "list_page");
            assert!(p.objects.len() <= max, "{} keys in a page of {max}", p.objects.len());
            got.extend(names(&p));
            match p.next {
                Some(next) => {
                    assert_eq!(Some(&next), got.last(), "the next page starts after this one's last key");
                    after = Some(next);
                }
                None => break,
            }
        }
        assert_eq!(got, want, "pages of {max} join up to the listing");
    }
    // From the middle: after a key that exists, one that does not, a directory.
    let p = page(Some("conf/pages/d1/k00450"), 3).await;
    assert_eq!(names(&p), want[451..454]);
    assert_eq!(p.next.as_deref(), Some(want[453].as_str()));
    assert_eq!(names(&page(Some("conf/pages/d1/k00450x"), 2).await), want[451..453]);
    assert_eq!(names(&page(Some("conf/pages/d2"), 1).await), want[600..601]);
    assert_eq!(names(&page(Some("conf/"), 2).await), want[..2], "a start before the prefix lists from its start");
    let last = page(Some("conf/pages/d3/k01099"), 10).await;
    assert!(last.objects.is_empty() && last.next.is_none(), "{last:?}");
    let tail = page(Some("conf/pages/d3/k01095"), 4).await;
    assert_eq!(names(&tail), want[1096..]);
    if let Some(next) = tail.next {
        let after = ok(s.list_page(prefix, Some(&next), 1).await, "list_page after the tail");
        assert!(after.objects.is_empty() && after.next.is_none(), "{after:?}");
    }
    for max in [0, crate::MAX_PAGE + 1] {
        assert!(s.list_page(prefix, None, max).await.is_err(), "a page of {max} keys is refused");
    }
}

/// `list_dirs` returns the prefixes one level down that hold objects.
pub async fn list_dirs(s: &dyn Storage) {
    for k in ["conf/dirs/x/1", "conf/dirs/x/2", "conf/dirs/y/z/3", "conf/dirs/file", "conf/dirsx/9"] {
        ok(s.put(k, Bytes::from_static(b"d")).await, k);
    }
    let dirs = |p: &'static str| async move { ok(s.list_dirs(p).await, &format!("list_dirs {p:?}")) };
    assert_eq!(dirs("conf/dirs/").await, ["conf/dirs/x/", "conf/dirs/y/"]);
    assert_eq!(dirs("conf/dirs/y/").await, ["conf/dirs/y/z/"]);
    assert!(dirs("conf/dirs/x/").await.is_empty());
    assert!(dirs("conf/nothing/").await.is_empty());
    assert_eq!(dirs("conf/dirs").await, ["conf/dirs/", "conf/dirsx/"]);
    let top = dirs("conf/").await;
    assert!(top.contains(&"conf/dirs/".to_owned()) && top.contains(&"conf/dirsx/".to_owned()), "{top:?}");
    ok(s.delete("conf/dirs/y/z/3").await, "delete");
    assert_eq!(dirs("conf/dirs/").await, ["conf/dirs/x/"], "a directory without objects is not listed");
}

/// `list_shallow` lists one directory: not what lies deeper, nor beside it.
pub async fn list_shallow(s: &dyn Storage) {
    for k in ["conf/shallow/a/1", "conf/shallow/a/2", "conf/shallow/a/b/3", "conf/shallow/ax", "conf/shallow/c/4"] {
        ok(s.put(k, Bytes::from_static(b"s")).await, k);
    }
    let shallow = |p: &'static str| async move {
        let got = ok(s.list_shallow(p).await, &format!("list_shallow {p:?}"));
        got.into_iter().map(|m| (m.key, m.size)).collect::<Vec<_>>()
    };
    assert_eq!(
        shallow("conf/shallow/a/").await,
        [("conf/shallow/a/1".to_owned(), 1), ("conf/shallow/a/2".to_owned(), 1)]
    );
    assert_eq!(shallow("conf/shallow/a").await, [("conf/shallow/ax".to_owned(), 1)]);
    assert_eq!(shallow("conf/shallow/").await, [("conf/shallow/ax".to_owned(), 1)]);
    assert!(shallow("conf/shallow/none/").await.is_empty());
    assert_eq!(shallow("conf/shallow/a/b/").await, [("conf/shallow/a/b/3".to_owned(), 1)]);
}

/// `delete` removes, and deleting a missing key succeeds.
pub async fn delete_idempotent(s: &dyn Storage) {
    let key = "conf/del/obj";
    ok(s.put(key, Bytes::from_static(b"x")).await, "put");
    ok(s.delete(key).await, "delete");
    assert_not_found(s.get(key).await, "get after delete");
    ok(s.delete(key).await, "second delete");
    ok(s.delete("conf/del/never/existed").await, "delete of a never-written key");
    assert!(keys(s, "conf/del/").await.is_empty());
}

/// `delete_many` deletes more keys than one S3 request takes, ignores
/// missing ones, and validates every key before deleting anything.
pub async fn delete_many(s: &dyn Storage) {
    let mut all: Vec<String> = (0..MANY).map(|i| format!("conf/dm/k{i:05}")).collect();
    put_all(s, &all).await;
    ok(s.put("conf/dm-keep/x", Bytes::from_static(b"keep")).await, "put keep");

    let with_bad = vec!["conf/dm-keep/x".to_owned(), "conf//bad".to_owned()];
    assert_invalid_key(s.delete_many(&with_bad).await, "delete_many with an invalid key");
    assert!(ok(s.head("conf/dm-keep/x").await, "head").size == 4, "nothing deleted on invalid input");

    all.extend((0..5).map(|i| format!("conf/dm/missing{i}")));
    ok(s.delete_many(&all).await, "delete_many");
    ok(s.delete_many(&[]).await, "delete_many of nothing");
    assert!(keys(s, "conf/dm/").await.is_empty());
    assert_eq!(keys(s, "conf/dm-keep/").await, ["conf/dm-keep/x"]);
}

async fn read_stream(s: &dyn Storage, key: &str) -> (Bytes, usize) {
    let mut st = ok(s.get_stream(key).await, "get_stream");
    let mut buf = BytesMut::new();
    let mut chunks = 0;
    while let Some(chunk) = ok(st.try_next().await, "stream chunk") {
        buf.extend_from_slice(&chunk);
        chunks += 1;
    }
    (buf.freeze(), chunks)
}

/// A ~20 MiB upload in uneven chunks (several S3 parts) reads back
/// byte-identical, and is invisible until `complete`.
pub async fn multipart_upload(s: &dyn Storage) {
    let key = "conf/mp/big";
    let v = data(6, 20 * 1024 * 1024 + 12345);
    let mut up = ok(s.start_upload(key).await, "start_upload");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut off = 0;
    while off < v.len() {
        let n = rng.usize(1..3 * 1024 * 1024).min(v.len() - off);
        ok(up.put_part(v.slice(off..off + n)).await, "put_part");
        off += n;
    }
    assert_not_found(s.head(key).await, "head before complete");
    assert!(keys(s, "conf/mp/").await.is_empty(), "nothing listed before complete");
    assert_eq!(ok(up.complete().await, "complete"), v.len() as u64);
    assert_eq!(ok(s.head(key).await, "head").size, v.len() as u64);
    let got = ok(s.get(key).await, "get");
    assert!(got == v, "uploaded object differs (len {} vs {})", got.len(), v.len());
    let (streamed, chunks) = read_stream(s, key).await;
    assert!(streamed == v, "streamed object differs");
    assert!(chunks > 1, "a 20 MiB object should arrive in more than one chunk");
    let tail = ok(s.get_range(key, v.len() as u64 - 100..v.len() as u64 + 100).await, "range");
    assert_eq!(&tail[..], &v[v.len() - 100..]);
}

/// Small and empty uploads work, and an upload replaces an existing object.
pub async fn small_upload(s: &dyn Storage) {
    let key = "conf/su/obj";
    ok(s.put(key, data(8, 50_000)).await, "put old");
    let mut up = ok(s.start_upload(key).await, "start_upload");
    for part in [&b"abc"[..], b"", b"defg", b"h"] {
        ok(up.put_part(Bytes::copy_from_slice(part)).await, "put_part");
    }
    assert_eq!(ok(up.complete().await, "complete"), 8);
    assert_eq!(&ok(s.get(key).await, "get")[..], b"abcdefgh");

    let empty = "conf/su/empty";
    let up = ok(s.start_upload(empty).await, "start_upload empty");
    assert_eq!(ok(up.complete().await, "complete empty"), 0);
    assert!(ok(s.get(empty).await, "get empty").is_empty());
}

/// Aborted or dropped uploads leave nothing visible and do not touch an
/// existing object under the same key.
pub async fn upload_abort(s: &dyn Storage) {
    let key = "conf/ab/new";
    let mut up = ok(s.start_upload(key).await, "start_upload");
    ok(up.put_part(data(9, 6 * 1024 * 1024)).await, "put_part");
    ok(up.put_part(data(10, 1000)).await, "put_part");
    ok(up.abort().await, "abort");
    assert_not_found(s.head(key).await, "head after abort");

    let dropped = "conf/ab/dropped";
    let mut up = ok(s.start_upload(dropped).await, "start_upload");
    ok(up.put_part(data(11, 6 * 1024 * 1024)).await, "put_part");
    drop(up);
    assert_not_found(s.head(dropped).await, "head after drop");

    let existing = "conf/ab/existing";
    ok(s.put(existing, Bytes::from_static(b"old")).await, "put");
    let mut up = ok(s.start_upload(existing).await, "start_upload");
    ok(up.put_part(Bytes::from_static(b"new data")).await, "put_part");
    ok(up.abort().await, "abort");
    assert_eq!(&ok(s.get(existing).await, "get")[..], b"old");
    assert_eq!(keys(s, "conf/ab/").await, [existing]);
}

/// Invalid keys are rejected by every operation with `InvalidKey`.
pub async fn invalid_keys(s: &dyn Storage) {
    let bad = ["", "/abs", "a//b", "a/", "./a", "a/../b", "..", "a\0b", "a\\b", "a/.tmp-x"];
    for key in bad {
        let d = Bytes::from_static(b"x");
        assert_invalid_key(s.put(key, d.clone()).await, &format!("put {key:?}"));
        assert_invalid_key(s.put_if_absent(key, d).await, &format!("put_if_absent {key:?}"));
        assert_invalid_key(s.get(key).await, &format!("get {key:?}"));
        assert_invalid_key(s.get_range(key, 0..1).await, &format!("get_range {key:?}"));
        assert_invalid_key(s.get_stream(key).await.map(|_| ()), &format!("get_stream {key:?}"));
        assert_invalid_key(s.head(key).await, &format!("head {key:?}"));
        assert_invalid_key(s.delete(key).await, &format!("delete {key:?}"));
        assert_invalid_key(s.start_upload(key).await.map(|_| ()), &format!("start_upload {key:?}"));
    }
    for prefix in ["/", "/a", "a//", "../x"] {
        assert_invalid_key(s.list(prefix).await, &format!("list {prefix:?}"));
        assert_invalid_key(s.list_dirs(prefix).await, &format!("list_dirs {prefix:?}"));
        assert_invalid_key(s.list_shallow(prefix).await, &format!("list_shallow {prefix:?}"));
    }
}

/// Temporary objects of uploads and writes in progress never show up in
/// listings.
pub async fn no_temp_objects_listed(s: &dyn Storage) {
    let key = "conf/tmp/up";
    let mut up = ok(s.start_upload(key).await, "start_upload");
    ok(up.put_part(data(12, 100_000)).await, "put_part");
    let writes = async {
        for i in 0..20 {
            ok(s.put(&format!("conf/tmp/w{}", i % 3), data(i, 200_000)).await, "put");
        }
    };
    let lists = async {
        for _ in 0..20 {
            for k in keys(s, "conf/").await {
                assert!(!k.contains(".tmp-") && k != key, "temporary or incomplete object listed: {k}");
            }
            let dirs = ok(s.list_dirs("conf/tmp/").await, "list_dirs");
            assert!(dirs.is_empty(), "unexpected directories {dirs:?}");
            for m in ok(s.list_shallow("conf/tmp/").await, "list_shallow") {
                assert!(!m.key.contains(".tmp-") && m.key != key, "temporary or incomplete object listed: {}", m.key);
            }
        }
    };
    tokio::join!(writes, lists);
    assert_eq!(ok(up.complete().await, "complete"), 100_000);
    assert_eq!(keys(s, "conf/tmp/").await, ["conf/tmp/up", "conf/tmp/w0", "conf/tmp/w1", "conf/tmp/w2"]);
}

/// Concurrent writers to one key never expose a torn or mixed object: every
/// read returns one writer's complete value.
///
/// s3s-fs stores an object's checksum apart from its data, so racing PUTs
/// can leave the data of one and the checksum of another, which the SDK's
/// checksum check then rejects on every read (AWS S3 replaces both at
/// once). The S3 run therefore uses [`overwrite_while_reading`] instead.
pub async fn concurrent_writers(s: &dyn Storage) {
    writers_and_readers(s, "conf/cw/obj", 6).await;
}

/// One writer replacing an object while others read it never exposes a
/// torn object.
///
/// A read racing a write may fail transiently instead (with s3s-fs, until
/// the new object's checksum is stored); it must then succeed when
/// repeated, at the latest once the writer is done.
pub async fn overwrite_while_reading(s: &dyn Storage) {
    writers_and_readers(s, "conf/owr/obj", 1).await;
}

async fn writers_and_readers(s: &dyn Storage, key: &str, n_writers: u8) {
    const LEN: usize = 256 * 1024;
    const ROUNDS: usize = 24;
    ok(s.put(key, Bytes::from(vec![0xFFu8; LEN])).await, "initial put");
    let writers_done = AtomicBool::new(false);
    let writers = async {
        futures_util::future::join_all((0..n_writers).map(|w| async move {
            for _ in 0..ROUNDS / usize::from(n_writers) {
                ok(s.put(key, Bytes::from(vec![w; LEN])).await, "concurrent put");
            }
        }))
        .await;
        writers_done.store(true, Ordering::SeqCst);
    };
    let readers = futures_util::future::join_all((0..3).map(|_| async {
        for _ in 0..10 {
            let mut tries_after_writers = 0;
            let v = loop {
                match s.get(key).await {
                    Err(e) if e.is_transient() && tries_after_writers < 3 => {
                        if writers_done.load(Ordering::SeqCst) {
                            tries_after_writers += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    other => break ok(other, "concurrent get"),
                }
            };
            assert_eq!(v.len(), LEN, "torn read: wrong length");
            let first = v[0];
            assert!(v.iter().all(|&b| b == first), "torn read: bytes of different writers mixed");
        }
    }));
    tokio::join!(writers, readers);
    let last = ok(s.get(key).await, "final get");
    assert!(last.len() == LEN && last[0] < n_writers && last.iter().all(|&b| b == last[0]));
}

/// A journal is created only where nothing exists, shows each append at
/// once (followed by nothing but zeros, where preallocated), and refuses
/// invalid keys; a backend that cannot append durably says so without
/// creating anything.
pub async fn journal(s: &dyn Storage) {
    let key = "conf/journal/j1";
    let hint = 100_000;
    let mut j = match ok(s.create_journal(key, hint).await, "create_journal") {
        crate::JournalOpen::Created(j) => j,
        crate::JournalOpen::Unsupported => {
            assert_not_found(s.head(key).await, "head of an unsupported journal");
            return;
        }
        crate::JournalOpen::AlreadyExists => panic!("create_journal on a fresh key: AlreadyExists"),
    };
    assert!(j.is_empty());
    // What was appended, then zeros at most.
    let holds = |got: Bytes, want: &[u8], what: &str| {
        assert!(got.len() >= want.len(), "{what}: {} bytes, {} appended", got.len(), want.len());
        assert!(got[..want.len()] == *want, "{what}: appended bytes differ");
        assert!(got[want.len()..].iter().all(|&b| b == 0), "{what}: non-zero bytes after the appended ones");
        assert!(got.len() as u64 <= hint.max(want.len() as u64), "{what}: {} bytes, more than the hint", got.len());
    };
    holds(ok(s.get(key).await, "get empty journal"), &[], "empty journal");
    let (a, b) = (data(11, 5000), data(12, 70_000));
    ok(j.append(a.clone()).await, "append a");
    holds(ok(s.get(key).await, "get after a"), &a, "after a");
    ok(j.append(b.clone()).await, "append b");
    assert_eq!(j.len(), (a.len() + b.len()) as u64);
    let mut both = BytesMut::from(&a[..]);
    both.extend_from_slice(&b);
    holds(ok(s.get(key).await, "get after b"), &both, "after b");
    // Past the hint the journal just grows.
    let c = data(13, 40_000);
    ok(j.append(c.clone()).await, "append c");
    both.extend_from_slice(&c);
    assert_eq!(ok(s.get(key).await, "get after c"), both.freeze());
    assert!(matches!(ok(s.create_journal(key, hint).await, "create again"), crate::JournalOpen::AlreadyExists));
    ok(s.put("conf/journal/obj", Bytes::from_static(b"x")).await, "put");
    assert!(matches!(
        ok(s.create_journal("conf/journal/obj", hint).await, "create over an object"),
        crate::JournalOpen::AlreadyExists
    ));
    assert_eq!(ok(s.get("conf/journal/obj").await, "object untouched"), Bytes::from_static(b"x"));
    assert_eq!(keys(s, "conf/journal/").await, vec!["conf/journal/j1", "conf/journal/obj"]);
    assert_invalid_key(s.create_journal("../escape", 0).await.map(|_| ()), "create_journal ../escape");
}
