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

mod kms;
mod pg;
mod s3;
mod tls;

pub use kms::KmsServer;
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

/// Starts the server `command(port)` makes on a free port of 127.0.0.1,
/// logging to `log`, and waits until it listens: another port if that one
/// was taken meanwhile; a panic with its log if it cannot start.
pub(crate) fn start_listening(
    name: &str,
    log: &std::path::Path,
    mut command: impl FnMut(u16) -> std::process::Command,
) -> (std::process::Child, u16) {
    use std::time::{Duration, Instant};
    for attempt in 0..5 {
        let port = free_port();
        let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let mut child = command(port)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (child, port);
            }
            if let Ok(Some(status)) = child.try_wait() {
                if attempt == 4 {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    panic!("{name} exited with {status}: {text}");
                }
                break; // port taken in the meantime: try another
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name} did not listen on 127.0.0.1:{port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    unreachable!("the loop above returns or panics")
}

/// Sends `sig` (`-STOP`, `-CONT`) to a test server: a stopped server still
/// accepts connections, and requests wait, as behind a network path that
/// went dead.
pub(crate) fn signal(child: &std::process::Child, sig: &str, what: &str) {
    let st = std::process::Command::new("kill").args([sig, &child.id().to_string()]).status().expect("run kill");
    assert!(st.success(), "kill {sig} {what}");
}

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
