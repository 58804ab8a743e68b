//! Repository URL parsing, display and `open`.

use std::path::PathBuf;

use bytes::Bytes;
use pgpitr_storage::{RepoUrl, RetryPolicy, S3Url, Storage, StorageError, connect};

fn s3(url: &str) -> S3Url {
    match RepoUrl::parse(url) {
        Ok(RepoUrl::S3(s)) => s,
        other => panic!("{url}: expected an S3 URL, got {other:?}"),
    }
}

fn local(url: &str) -> PathBuf {
    match RepoUrl::parse(url) {
        Ok(RepoUrl::Local(p)) => p,
        other => panic!("{url}: expected a local path, got {other:?}"),
    }
}

fn rejected(url: &str) -> String {
    match RepoUrl::parse(url) {
        Err(e @ StorageError::InvalidUrl { .. }) => {
            let text = e.to_string();
            assert!(text.starts_with("invalid repository URL: ") && !text.contains('\n'), "{text}");
            text
        }
        other => panic!("{url:?}: expected InvalidUrl, got {other:?}"),
    }
}

#[test]
fn local_forms() {
    assert_eq!(local("/var/lib/pgpitr"), PathBuf::from("/var/lib/pgpitr"));
    assert_eq!(local("file:///var/lib/pg%20pitr"), PathBuf::from("/var/lib/pg pitr"));
    assert_eq!(local("file://localhost/srv/repo"), PathBuf::from("/srv/repo"));
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(local("backups/repo"), cwd.join("backups/repo"));
    assert_eq!(local("weird:name"), cwd.join("weird:name"));
}

#[test]
fn s3_forms() {
    let u = s3("s3://my-bucket");
    let bare = S3Url {
        bucket: "my-bucket".into(),
        prefix: None,
        endpoint: None,
        region: None,
        path_style: None,
        sse: None,
        wal_storage_class: None,
        backup_storage_class: None,
    };
    assert_eq!(u, bare);
    assert_eq!(s3("s3://my-bucket/").prefix, None);
    assert_eq!(s3("s3://my-bucket/a/b/").prefix.as_deref(), Some("a/b"));

    let u = s3("s3://my.bucket-1/pg/main?endpoint=http://127.0.0.1:9000&region=eu-west-1&path-style=true");
    assert_eq!(u.bucket, "my.bucket-1");
    assert_eq!(u.prefix.as_deref(), Some("pg/main"));
    assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(u.region.as_deref(), Some("eu-west-1"));
    assert_eq!(u.path_style, Some(true));

    // Server-side encryption and storage classes, and back to a URL (what
    // restore_command carries).
    let text = "s3://bkt/p?sse=aws%3Akms%3Aarn%3Aaws%3Akms%3Aeu-west-1%3A1%3Akey%2Fk&wal-storage-class=STANDARD_IA&backup-storage-class=GLACIER_IR";
    let u = s3(text);
    assert_eq!(u.sse.as_deref(), Some("aws:kms:arn:aws:kms:eu-west-1:1:key/k"));
    assert_eq!(u.wal_storage_class.as_deref(), Some("STANDARD_IA"));
    assert_eq!(u.backup_storage_class.as_deref(), Some("GLACIER_IR"));
    assert_eq!(s3(&u.to_string()), u);
    let o = u.options();
    assert_eq!(
        (o.sse.as_deref(), o.backup_storage_class.as_deref()),
        (Some("aws:kms:arn:aws:kms:eu-west-1:1:key/k"), Some("GLACIER_IR"))
    );
    assert_eq!(s3("s3://bkt?sse=AES256").sse.as_deref(), Some("AES256"));
    for bad in [
        "s3://bkt?sse=rot13",
        "s3://bkt?sse=aws:kms:",
        "s3://bkt?wal-storage-class=cold",
        "s3://bkt?sse=AES256&sse=AES256",
    ] {
        assert!(RepoUrl::parse(bad).is_err(), "{bad}");
    }

    // Path-style follows the endpoint override unless given explicitly.
    let opts = s3("s3://bucket?endpoint=https://minio.local:9000").options();
    assert!(opts.path_style && opts.static_credentials.is_none());
    assert!(!s3("s3://bucket?endpoint=https://minio.local&path-style=false").options().path_style);
    let encoded = s3("s3://bucket?endpoint=http%3A%2F%2Fhost%3A9000");
    assert_eq!(encoded.endpoint.as_deref(), Some("http://host:9000"));
}

#[test]
fn display_round_trips() {
    for url in [
        "s3://bucket",
        "s3://bucket/a/b",
        "s3://bucket/p?endpoint=http://127.0.0.1:9000&region=us-east-1&path-style=true",
        "s3://bucket?path-style=false",
        "/srv/repo",
    ] {
        let parsed = RepoUrl::parse(url).expect(url);
        assert_eq!(parsed.to_string(), url);
        assert_eq!(RepoUrl::parse(&parsed.to_string()).expect("reparse"), parsed);
    }
    assert_eq!(RepoUrl::parse("file:///srv/repo").expect("file").to_string(), "/srv/repo");
}

#[test]
fn malformed_urls_are_rejected_clearly() {
    assert!(rejected("").contains("empty"));
    assert!(rejected("gs://bucket/x").contains(r#"unsupported scheme "gs""#));
    assert!(rejected("s3://").contains("missing bucket"));
    assert!(rejected("s3:///prefix").contains("missing bucket"));
    assert!(rejected("s3:bucket").contains("missing \"//\""));
    assert!(rejected("s3://Bad_Bucket/x").contains(r#"invalid bucket name "Bad_Bucket""#));
    assert!(rejected("s3://ab").contains("3 to 63"));
    assert!(rejected("s3://192.168.1.1").contains("IP address"));
    assert!(rejected("s3://bucket/a/../b").contains("bad key prefix"));
    assert!(rejected("s3://bucket?foo=1").contains(r#"unknown query parameter "foo""#));
    assert!(rejected("s3://bucket?region=us-east-1&region=eu-west-1").contains("given twice"));
    assert!(rejected("s3://bucket?path-style=maybe").contains("true or false"));
    assert!(rejected("s3://bucket?region=US_EAST").contains("invalid region"));
    assert!(rejected("s3://bucket?endpoint=ftp://host").contains("http:// or https://"));
    assert!(rejected("s3://bucket?endpoint=not%20a%20url").contains("not a valid URL"));
    assert!(rejected("s3://bucket#frag").contains("fragment"));
    assert!(rejected("file://otherhost/x").contains("must not name a host"));
    assert!(rejected("file:///x?y=1").contains("query"));
}

#[test]
fn credentials_in_urls_are_rejected_without_echo() {
    for (url, secrets) in [
        ("s3://AKIAEXAMPLEKEY:wJalrXUtnFEMIsecret@bucket/prefix", &["AKIAEXAMPLEKEY", "wJalrXUtnFEMIsecret"][..]),
        ("s3://AKIAEXAMPLEKEY:abc/def+ghi@bucket", &["AKIAEXAMPLEKEY", "abc/def+ghi"][..]),
        ("s3://bucket?secret_key=wJalrXUtnFEMIsecret", &["wJalrXUtnFEMIsecret"][..]),
        ("s3://bucket?aws_access_key_id=AKIAEXAMPLEKEY", &["AKIAEXAMPLEKEY"][..]),
        ("s3://bucket?endpoint=http://user:hunter2pass@host:9000", &["hunter2pass"][..]),
    ] {
        let text = rejected(url);
        assert!(text.contains("credentials must not be embedded"), "{text}");
        for secret in secrets {
            assert!(!text.contains(secret), "{url}: message echoes a secret: {text}");
        }
    }
}

#[tokio::test]
async fn connect_local_wraps_and_check_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("new/repo");
    let url = RepoUrl::parse(&format!("file://{}", root.display())).expect("parse");
    let storage = connect(&url, RetryPolicy::default()).await.expect("connect");
    storage.check().await.expect("check creates the directory and writes to it");
    assert!(root.is_dir());
    assert_eq!(storage.describe(), root.display().to_string());
    storage.put("x/y", Bytes::from_static(b"z")).await.expect("put");
    assert!(root.join("x/y").is_file());

    let file = dir.path().join("file");
    std::fs::write(&file, b"").expect("write");
    let below = connect(&RepoUrl::Local(file.join("repo")), RetryPolicy::default()).await.expect("connect");
    let err = match below.check().await {
        Err(e) => e,
        Ok(_) => panic!("a check below a regular file must fail"),
    };
    assert!(err.is_permanent() && err.to_string().to_lowercase().contains("not a directory"), "{err}");
}
