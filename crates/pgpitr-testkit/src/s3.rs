use crate::start_listening;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// A real S3-compatible server (s3s-fs) on 127.0.0.1, killed on drop.
///
/// s3s-fs checks SigV4 signatures, so wrong credentials really fail. It maps
/// buckets to directories, which is how `create_bucket` works. A PUT to a
/// missing bucket creates it, so "missing bucket" must be detected by a
/// HEAD/list before writing.
pub struct S3Server {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    access_key: String,
    secret_key: String,
}

/// Locates the s3s-fs binary: `$S3S_FS_BIN`, then `PATH`, then cargo's bin dir.
fn s3s_fs_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS_BIN") {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("s3s-fs")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin/s3s-fs"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("s3s-fs not found (looked in $S3S_FS_BIN, PATH and cargo's bin dir): run scripts/setup")
    })
}

impl S3Server {
    pub fn start() -> S3Server {
        Self::start_with(format!("AKTEST{:016X}", fastrand::u64(..)), format!("secret-{:032x}", fastrand::u128(..)))
    }

    /// A second server that takes `other`'s credentials, as two regions of
    /// one account do.
    pub fn start_sharing(other: &S3Server) -> S3Server {
        Self::start_with(other.access_key.clone(), other.secret_key.clone())
    }

    fn start_with(access_key: String, secret_key: String) -> S3Server {
        let bin = s3s_fs_binary();
        let dir = tempfile::Builder::new().prefix("pgpitr-s3-").tempdir().expect("create temp dir for s3s-fs");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("create s3s-fs data dir");
        let log = dir.path().join("s3s-fs.log");
        let (child, port) = start_listening("s3s-fs", &log, |port| {
            let mut c = Command::new(&bin);
            c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &access_key, "--secret-key", &secret_key])
                .arg(&data);
            c
        });
        S3Server { child, dir, port, access_key, secret_key }
    }

    /// Stops answering (SIGSTOP): see [`crate::signal`].
    pub fn pause(&self) {
        crate::signal(&self.child, "-STOP", "s3s-fs");
    }

    /// Answers again (SIGCONT), the waiting requests first.
    pub fn resume(&self) {
        crate::signal(&self.child, "-CONT", "s3s-fs");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    pub fn region(&self) -> &str {
        "us-east-1"
    }

    /// Buckets are directories to s3s-fs.
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.data_dir().join(name)).expect("create bucket dir");
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> &Path {
        self.dir.path()
    }

    /// A repository URL for `pgpitr --repo`, pointing at this server.
    pub fn repo_url(&self, bucket: &str, prefix: &str) -> String {
        format!("s3://{bucket}/{prefix}?endpoint={}&region=us-east-1&path-style=true", self.endpoint())
    }

    /// Environment a child process needs to reach this server with the
    /// standard AWS credential chain.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
