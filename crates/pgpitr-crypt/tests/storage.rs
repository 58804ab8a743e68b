//! The encrypting storage layer: the storage conformance suite over it (on
//! memory and on a local directory), and what an encrypted repository must
//! refuse.

use bytes::Bytes;
use pgpitr_crypt::kek::{FileKek, KeyEncryptionKey};
use pgpitr_crypt::storage::{EncryptedStorage, Keys, Span};
use pgpitr_storage::{LocalStorage, MemoryStorage, Storage};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

const SYS: u64 = 7_300_000_000_000_000_042;

fn kek(dir: &Path, name: &str, hex_byte: &str) -> Arc<dyn KeyEncryptionKey> {
    let p = dir.join(name);
    std::fs::write(&p, hex_byte.repeat(32)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    Arc::new(FileKek::load(&p).unwrap())
}

fn encrypted(inner: Arc<dyn Storage>, keks: Vec<Arc<dyn KeyEncryptionKey>>) -> EncryptedStorage {
    // Recycling as a repository does: objects of megabytes reuse buffers.
    EncryptedStorage::new(inner, Arc::new(Keys::new(keks, SYS, Span::default()))).recycling(4 << 20)
}

/// Recycled sealing buffers never change an object that is still held (a
/// stored object, a put in flight) and every object reads back as written.
#[tokio::test]
async fn recycled_sealing_buffers_leave_stored_objects_intact() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(MemoryStorage::new());
    let s = encrypted(inner.clone(), vec![kek(dir.path(), "kek", "ab")]);
    let objects: Vec<Bytes> = (0..6u8).map(|i| Bytes::from(vec![i; (1 << 20) + 4096 * usize::from(i)])).collect();
    for (i, o) in objects.iter().enumerate() {
        s.put(&format!("wal/00000001/{i}"), o.clone()).await.unwrap();
    }
    let mut sealed = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let key = format!("wal/00000001/{i}");
        assert_eq!(s.get(&key).await.unwrap(), *o, "{key} reads back as written");
        sealed.push(inner.get(&key).await.unwrap());
    }
    // Deleting drops the stored views: their buffers go back to the pool
    // and are sealed into again, while the others stay as they were.
    s.delete("wal/00000001/0").await.unwrap();
    s.delete("wal/00000001/1").await.unwrap();
    drop(sealed.drain(..2));
    for i in 6..10u8 {
        let o = Bytes::from(vec![i; 3 << 20]);
        s.put(&format!("wal/00000001/{i}"), o.clone()).await.unwrap();
        assert_eq!(s.get(&format!("wal/00000001/{i}")).await.unwrap(), o);
    }
    for (i, o) in objects.iter().enumerate().skip(2) {
        let key = format!("wal/00000001/{i}");
        assert_eq!(inner.get(&key).await.unwrap(), sealed[i - 2], "{key} unchanged in storage");
        assert_eq!(s.get(&key).await.unwrap(), *o);
    }
}

macro_rules! suite {
    ($backend:ident, $make:expr; $($name:ident),*) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let make: fn(&Path) -> Arc<dyn Storage> = $make;
                    let inner = make(dir.path());
                    let s = encrypted(inner, vec![kek(dir.path(), "kek", "ab")]);
                    pgpitr_storage::conformance::$name(&s).await;
                }
            )*
        }
    };
}

suite!(memory, |_: &Path| -> Arc<dyn Storage> { Arc::new(MemoryStorage::new()) };
    check_succeeds, put_get_roundtrip, overwrite, put_if_absent, put_if_absent_race, get_range, head, not_found,
    prefix_is_not_an_object, list_nested, list_many, list_pages, list_dirs, list_shallow, delete_idempotent,
    delete_many, multipart_upload, small_upload, upload_abort, invalid_keys, no_temp_objects_listed,
    concurrent_writers, overwrite_while_reading, journal);
suite!(local, |d: &Path| -> Arc<dyn Storage> { Arc::new(LocalStorage::new(d.join("repo"))) };
    put_get_roundtrip, get_range, head, list_nested, list_pages, multipart_upload, small_upload, journal);

/// No byte of what is stored is the plaintext; the binding and the keyring
/// stay readable (they hold no data, and wrapped keys only).
#[tokio::test]
async fn nothing_reaches_storage_in_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(MemoryStorage::new());
    let s = encrypted(inner.clone(), vec![kek(dir.path(), "kek", "ab")]);
    let secret = Bytes::from(b"password=hunter2; ".repeat(10_000));
    s.put("wal/00000001/seg", secret.clone()).await.unwrap();
    s.put("pgpitr.json", Bytes::from_static(b"{\"encryption\": \"file\"}")).await.unwrap();
    let mut j = match s.create_journal("wal/00000001/j", 4096).await.unwrap() {
        pgpitr_storage::JournalOpen::Created(j) => j,
        _ => panic!("memory journals are supported"),
    };
    j.append(Bytes::from_static(b"password=hunter2")).await.unwrap();
    for m in inner.list("").await.unwrap() {
        let stored = inner.get(&m.key).await.unwrap();
        let hit = stored.windows(16).any(|w| w == b"password=hunter2");
        assert!(!hit, "{} holds the plaintext", m.key);
    }
    assert_eq!(inner.get("pgpitr.json").await.unwrap(), Bytes::from_static(b"{\"encryption\": \"file\"}"));
    assert_eq!(inner.list("keyring/").await.unwrap().len(), 1, "one data key so far");
    assert_eq!(s.get("wal/00000001/seg").await.unwrap(), secret);
    // Ranges, out to any end, without a panic.
    assert_eq!(s.get_range("wal/00000001/seg", 100_000..u64::MAX).await.unwrap(), secret.slice(100_000..));
    assert!(s.get_range("wal/00000001/seg", u64::MAX - 1..u64::MAX).await.unwrap().is_empty());
    assert_eq!(s.get("wal/00000001/j").await.unwrap(), Bytes::from_static(b"password=hunter2"));
}

/// An object swapped for another, a wrong key-encryption key and a lost
/// keyring are each a one-line error naming what is wrong.
#[tokio::test]
async fn swapped_objects_wrong_keys_and_a_lost_keyring_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(MemoryStorage::new());
    let s = encrypted(inner.clone(), vec![kek(dir.path(), "kek", "ab")]);
    s.put("wal/a", Bytes::from_static(b"segment A")).await.unwrap();
    s.put("wal/b", Bytes::from_static(b"segment B")).await.unwrap();
    // B's bytes under A's key.
    inner.put("wal/a", inner.get("wal/b").await.unwrap()).await.unwrap();
    let e = s.get("wal/a").await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("does not decrypt"), "{e}");
    assert!(!e.to_string().contains('\n'));
    // Another key-encryption key: named, with the one the keyring wants.
    let other = encrypted(inner.clone(), vec![kek(dir.path(), "other", "cd")]);
    let e = other.get("wal/b").await.unwrap_err().to_string();
    assert!(e.contains("no such key-encryption key is configured") && e.contains("sha256:"), "{e}");
    // The keyring gone.
    let fresh = encrypted(inner.clone(), vec![kek(dir.path(), "kek2", "ab")]);
    for m in inner.list("keyring/").await.unwrap() {
        inner.delete(&m.key).await.unwrap();
    }
    let e = fresh.get("wal/b").await.unwrap_err().to_string();
    assert!(e.contains("missing from the keyring"), "{e}");
    // A plain object in an encrypted repository.
    inner.put("wal/plain", Bytes::from_static(b"not sealed")).await.unwrap();
    let e = s.get("wal/plain").await.unwrap_err().to_string();
    assert!(e.contains("not an encrypted object"), "{e}");
}

/// A new data key per span: after the span's bytes, the next object gets
/// a new key in the keyring, and every object still opens.
#[tokio::test]
async fn data_keys_change_per_span() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(MemoryStorage::new());
    let span = Span { bytes: 1000, time: std::time::Duration::from_secs(3600) };
    let s = EncryptedStorage::new(inner.clone(), Arc::new(Keys::new(vec![kek(dir.path(), "k", "ab")], SYS, span)));
    for i in 0..5 {
        s.put(&format!("wal/{i}"), Bytes::from(vec![i as u8; 600])).await.unwrap();
    }
    assert_eq!(inner.list("keyring/").await.unwrap().len(), 3, "600 + 600 bytes fill a 1000-byte span");
    let reopened = encrypted(inner.clone(), vec![kek(dir.path(), "k2", "ab")]);
    for i in 0..5 {
        assert_eq!(reopened.get(&format!("wal/{i}")).await.unwrap(), Bytes::from(vec![i as u8; 600]));
    }
}
