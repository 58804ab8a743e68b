//! An encrypted repository over a real local directory: what reaches the
//! disk is sealed, reading through the repository gives the bytes back,
//! and a repository is never opened with the wrong key, without its key,
//! or (plain) with a key.

use pgpitr_crypt::kek::{FileKek, KeyEncryptionKey};
use pgpitr_repo::catalog::Catalog;
use pgpitr_repo::object::{Codec, WalSummary, encode};
use pgpitr_repo::wal::WalObjectId;
use pgpitr_repo::{ClusterIdentity, ENCRYPTED_FORMAT, Kek, Repository};
use pgpitr_storage::{LocalStorage, Storage};
use pgpitr_types::{Lsn, SegNo, TimelineId, WalSegSize};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

fn seg() -> WalSegSize {
    WalSegSize::new(1 << 20).unwrap()
}

fn kek(dir: &Path, name: &str, hex_byte: &str) -> Kek {
    let p = dir.join(name);
    std::fs::write(&p, hex_byte.repeat(32)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let k: Arc<dyn KeyEncryptionKey> = Arc::new(FileKek::load(&p).unwrap());
    Some(k)
}

fn identity() -> ClusterIdentity {
    ClusterIdentity { system_identifier: 7_400_000_000_000_000_001, pg_version_num: 150000, wal_segment_size: seg() }
}

/// Every file under `dir`, whole.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn an_encrypted_repository_stores_only_sealed_objects_and_needs_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(&root));
    let key = kek(dir.path(), "key", "ab");
    let (repo, _) = Repository::init_with(storage.clone(), &identity(), key.clone()).await.unwrap();
    assert_eq!(repo.binding().format_version, ENCRYPTED_FORMAT);
    assert_eq!(repo.binding().encryption.as_ref().unwrap().kek, key.as_ref().unwrap().id());

    // A WAL piece whose bytes carry a recognisable text.
    let wal: Vec<u8> = b"CREATE ROLE alice PASSWORD 'hunter2'; ".iter().copied().cycle().take(8192).collect();
    let id = WalObjectId::piece(TimelineId(1), SegNo(2), 0, 8192);
    let obj = encode(id.tli, id.range(seg()).0, &wal, Codec::None, &WalSummary::default());
    repo.storage().put(&id.key(seg()), obj.clone()).await.unwrap();
    for (path, bytes) in files(&root) {
        assert!(!bytes.windows(7).any(|w| w == b"hunter2"), "{path} holds the plaintext");
    }
    // Read back through the repository: the listing and the bytes.
    assert_eq!(repo.storage().get(&id.key(seg())).await.unwrap(), obj);
    let cat = Catalog::load_wal(&repo).await.unwrap();
    let start = id.range(seg()).0;
    assert_eq!(cat.timelines()[&TimelineId(1)].ranges, vec![(start, Lsn(start.0 + 8192))]);

    // Opened again: only with its key.
    let again = Repository::open_with(storage.clone(), key.clone()).await.unwrap();
    assert_eq!(again.storage().get(&id.key(seg())).await.unwrap(), obj);
    let e = Repository::open_with(storage.clone(), None).await.unwrap_err().to_string();
    assert!(e.contains("is encrypted (key file sha256:") && e.contains("PGPITR_KEY_FILE"), "{e}");
    let e = Repository::open_with(storage.clone(), kek(dir.path(), "other", "cd")).await.unwrap_err().to_string();
    assert!(e.contains("and the key given is file sha256:"), "{e}");
    // Migration has nothing to do.
    assert_eq!(pgpitr_repo::migrate::migrate(storage.clone()).await.unwrap().from_format, ENCRYPTED_FORMAT);
}

#[tokio::test]
async fn a_plain_repository_refuses_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path().join("repo")));
    Repository::init_with(storage.clone(), &identity(), None).await.unwrap();
    let e = Repository::open_with(storage.clone(), kek(dir.path(), "key", "ab")).await.unwrap_err().to_string();
    assert!(e.contains("is not encrypted, but a key was given"), "{e}");
    // Nor does init turn it into an encrypted one.
    let e = Repository::init_with(storage, &identity(), kek(dir.path(), "key2", "ab")).await.unwrap_err().to_string();
    assert!(e.contains("is not encrypted, but a key was given"), "{e}");
}
