//! Error classification against real failures: a missing bucket, a wrong
//! secret key, an unreachable endpoint, an unusable local directory.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bytes::Bytes;
use pgpitr_storage::{FaultMode, LocalStorage, Op, S3Options, S3Storage, Storage};
use pgpitr_testkit::{S3Server, free_port};

use crate::common::{BUCKET, faulty, s3, s3_options};

#[tokio::test]
async fn s3_missing_bucket_is_permanent_and_named() {
    let server = S3Server::start();
    let storage = S3Storage::new(s3_options(&server, "no-such-bucket")).await.expect("client");
    let fx = faulty(storage, (), FaultMode::FailFirst(0), 6);
    let err = fx.storage.check().await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    let text = err.to_string();
    let want = format!(r#"bucket "no-such-bucket" does not exist at {}"#, server.endpoint());
    assert!(text.contains(&want), "{text}");
    assert!(text.ends_with("(permanent)"), "{text}");
    assert_eq!(fx.faults.attempts(Op::Check, ""), 1, "not retried");
    // check() looked before writing: the quirk of s3s-fs (a PUT creates the
    // bucket) must not have been triggered.
    assert!(!server.data_dir().join("no-such-bucket").exists());
}

#[tokio::test]
async fn s3_wrong_secret_is_permanent_and_not_retried() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let wrong_secret = "definitely-not-the-secret-0123456789";
    let opts = S3Options {
        static_credentials: Some((server.access_key().to_owned(), wrong_secret.to_owned())),
        ..s3_options(&server, BUCKET)
    };
    let fx = faulty(S3Storage::new(opts).await.expect("client"), (), FaultMode::FailFirst(0), 6);

    let err = fx.storage.check().await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    let text = err.to_string();
    assert!(text.contains("access denied") && text.contains("check credentials"), "{text}");
    assert_eq!(fx.faults.attempts(Op::Check, ""), 1);

    let err = fx.storage.put("k", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains("access denied"), "{err}");
    assert_eq!(fx.faults.attempts(Op::Put, "k"), 1);
    for text in [err.to_string(), format!("{err:?}"), fx.storage.describe()] {
        assert!(!text.contains(wrong_secret) && !text.contains(server.secret_key()), "secret leaked: {text}");
    }
}

#[tokio::test]
async fn s3_unreachable_endpoint_is_transient() {
    let port = free_port();
    let opts = S3Options {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".to_owned()),
        path_style: true,
        static_credentials: Some(("AKIDEXAMPLE".to_owned(), "not-used".to_owned())),
        ..S3Options::new("some-bucket")
    };
    let fx = faulty(S3Storage::new(opts).await.expect("client"), (), FaultMode::FailFirst(0), 3);
    let err = tokio::time::timeout(Duration::from_secs(30), fx.storage.check())
        .await
        .expect("an unreachable endpoint must fail, not hang")
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "the error names the endpoint: {text}");
    assert!(text.ends_with("(transient, retried 2 times)"), "{text}");
    assert_eq!(fx.faults.attempts(Op::Check, ""), 3);
}

#[tokio::test]
async fn s3_prefix_maps_to_bucket_keys() {
    let fx = s3().await;
    fx.storage.put("a/b", Bytes::from_static(b"v")).await.expect("put");
    let plain = S3Storage::new(S3Options { prefix: None, ..s3_options(&fx.server, BUCKET) }).await.expect("client");
    let keys: Vec<String> = plain.list("").await.expect("list").into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["repo/prefix/a/b"]);
    assert_eq!(plain.list_dirs("").await.expect("list_dirs"), ["repo/"]);
    assert_eq!(fx.storage.list_dirs("").await.expect("list_dirs"), ["a/"]);
    assert!(fx.storage.describe().starts_with("s3://pgpitr-test/repo/prefix at http://127.0.0.1:"));
}

#[tokio::test]
async fn local_path_below_a_file_is_permanent() {
    // Holds as root too: nobody can create a directory below a regular file.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write file");
    let root = file.join("repo");
    let fx = faulty(LocalStorage::new(&root), (), FaultMode::FailFirst(0), 6);

    let err = fx.storage.check().await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    let text = err.to_string();
    assert!(text.contains(&file.display().to_string()), "names the path: {text}");
    assert!(text.to_lowercase().contains("not a directory"), "names the OS error: {text}");
    assert_eq!(fx.faults.attempts(Op::Check, ""), 1);

    let err = fx.storage.put("k", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(err.is_permanent() && err.to_string().contains("not-a-dir"), "{err}");
    assert_eq!(fx.faults.attempts(Op::Put, "k"), 1);
}

#[tokio::test]
async fn local_read_only_directory_is_permanent_permission_denied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("ro");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o500)).expect("chmod 0500");
    // Root (CAP_DAC_OVERRIDE) ignores permission bits; find out what this
    // process can really do instead of guessing from the uid.
    let writable = std::fs::write(root.join("probe"), b"x").is_ok();
    let storage = LocalStorage::new(&root);
    let check = storage.check().await;
    let put = storage.put("a/b", Bytes::from_static(b"x")).await;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).expect("chmod back");

    if writable {
        // Permission bits are not enforced for this user: the backend must
        // then work normally, which is also a real assertion.
        check.expect("check in a directory this process can write");
        put.expect("put in a directory this process can write");
        return;
    }
    for err in [check.unwrap_err(), put.unwrap_err()] {
        assert!(err.is_permanent(), "{err}");
        let text = err.to_string();
        assert!(text.to_lowercase().contains("permission denied"), "{text}");
        assert!(text.contains(&root.display().to_string()), "names the path: {text}");
    }
}

#[tokio::test]
async fn local_check_creates_missing_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("a/b/c");
    LocalStorage::new(&root).check().await.expect("check");
    assert!(root.is_dir());
    let leftovers: Vec<_> = std::fs::read_dir(&root).expect("read_dir").collect();
    assert!(leftovers.is_empty(), "check left files behind: {leftovers:?}");
}
