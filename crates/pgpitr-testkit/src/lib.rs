//! Test harness: throwaway PostgreSQL 15 clusters and a real S3-compatible
//! server (s3s-fs), both on 127.0.0.1 with free ports and temp directories.
//!
//! Nothing here is mocked and nothing skips: a missing Postgres or s3s-fs
//! binary panics with a message naming the fix (`scripts/setup`), so CI fails
//! instead of silently passing. Everything is torn down on `Drop`, which also
//! runs while a failing test unwinds.
//!
//! Postgres refuses to run as root; when the tests run as root, every server
//! binary is started as the `postgres` OS user via `runuser`.

mod pg;
mod s3;
mod tls;

pub use pg::{
    DEBIAN_MAJOR, NO_LZ4_MAJOR, PgCluster, PgClusterBuilder, pg_bindir, server_bindir, test_major, test_majors,
};
pub use s3::S3Server;
pub use tls::TestPki;

/// Superuser (SCRAM over TCP, trust over the Unix socket).
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "super-secret";
/// A role with REPLICATION, authenticated with SCRAM-SHA-256.
pub const REPL_USER: &str = "pgpitr_repl";
pub const REPL_PASSWORD: &str = "repl-secret";
/// A role with REPLICATION, authenticated with md5.
pub const MD5_USER: &str = "pgpitr_md5";
pub const MD5_PASSWORD: &str = "md5-secret";
/// A role with REPLICATION, authenticated with a cleartext password.
pub const PLAIN_USER: &str = "pgpitr_plain";
pub const PLAIN_PASSWORD: &str = "plain-secret";
/// A role with REPLICATION and `trust` authentication.
pub const TRUST_USER: &str = "pgpitr_trust";
/// A role that may log in but lacks REPLICATION.
pub const NOREPL_USER: &str = "pgpitr_norepl";
pub const NOREPL_PASSWORD: &str = "norepl-secret";

/// A port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// True when this process runs as root (uid 0), read without unsafe code.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
