//! Running the real `pgpitr` binary in a clean environment.

use std::process::{Command, Output};

/// `pgpitr` with the host's Postgres and AWS settings removed, so that tests
/// see only what they set.
pub fn pgpitr() -> Command {
    pgpitr_at(env!("CARGO_BIN_EXE_pgpitr").as_ref())
}

/// Like [`pgpitr`], for a copy of the binary elsewhere (one the `postgres`
/// OS user can run as a restore_command).
pub fn pgpitr_at(path: &std::path::Path) -> Command {
    let mut cmd = Command::new(path);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k.starts_with("AWS_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("PGPASSFILE", "/nonexistent/pgpass")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        .env("PGPITR_LOG", "warn");
    cmd
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Run {
    let Output { status, stdout, stderr } = cmd.output().expect("run pgpitr");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "pgpitr failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    /// Asserts a failure with exactly one error line that mentions every
    /// fragment, and returns that line.
    pub fn fails_with(&self, fragments: &[&str]) -> String {
        assert_eq!(self.code, Some(1), "expected exit 1\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        let errors: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("pgpitr: error: ")).collect();
        assert_eq!(errors.len(), 1, "expected one error line, stderr was:\n{}", self.stderr);
        let line = errors[0];
        for f in fragments {
            assert!(line.contains(f), "error line lacks {f:?}: {line}");
        }
        line.to_string()
    }
}

/// Where a test's repository lives: both backends run the same tests.
pub enum Backend {
    Local(tempfile::TempDir),
    S3(pgpitr_testkit::S3Server),
}

impl Backend {
    pub fn local() -> Backend {
        Backend::Local(tempfile::tempdir().expect("temp dir"))
    }

    pub fn s3() -> Backend {
        let s3 = pgpitr_testkit::S3Server::start();
        s3.create_bucket("pitr");
        Backend::S3(s3)
    }

    /// Another S3 server with the credentials of `other`'s (when S3): one
    /// process reaches both, as two regions of one account.
    pub fn s3_beside(other: &Backend) -> Backend {
        let s3 = match other {
            Backend::S3(o) => pgpitr_testkit::S3Server::start_sharing(o),
            Backend::Local(_) => pgpitr_testkit::S3Server::start(),
        };
        s3.create_bucket("pitr");
        Backend::S3(s3)
    }

    pub fn url(&self) -> String {
        match self {
            Backend::Local(d) => d.path().join("repo").display().to_string(),
            Backend::S3(s3) => s3.repo_url("pitr", "db"),
        }
    }

    /// The repository's directory, for a local one.
    pub fn local_path(&self) -> std::path::PathBuf {
        match self {
            Backend::Local(d) => d.path().join("repo"),
            Backend::S3(_) => panic!("an S3 repository has no local path"),
        }
    }

    /// Applies what `pgpitr` needs to reach the repository.
    pub fn env(&self, cmd: &mut Command) {
        if let Backend::S3(s3) = self {
            for (k, v) in s3.env() {
                cmd.env(k, v);
            }
        }
    }

    /// The same repository, opened in-process.
    pub async fn storage(&self) -> std::sync::Arc<dyn pgpitr_storage::Storage> {
        match self {
            Backend::Local(d) => std::sync::Arc::new(pgpitr_storage::LocalStorage::new(d.path().join("repo"))),
            Backend::S3(s3) => {
                std::sync::Arc::new(pgpitr_storage::S3Storage::new(s3_options(s3)).await.expect("open S3 storage"))
            }
        }
    }

    pub async fn repo(&self) -> pgpitr_repo::Repository {
        pgpitr_repo::Repository::open(self.storage().await).await.expect("open repository")
    }
}

/// In-process S3 settings for the bucket/prefix `Backend::s3()` uses.
pub fn s3_options(s3: &pgpitr_testkit::S3Server) -> pgpitr_storage::S3Options {
    let mut o = pgpitr_storage::S3Options::new("pitr");
    o.prefix = Some("db".into());
    o.endpoint = Some(s3.endpoint());
    o.region = Some("us-east-1".into());
    o.path_style = true;
    o.static_credentials = Some((s3.access_key().into(), s3.secret_key().into()));
    o
}

/// A running `pgpitr stream`, killed (SIGKILL) on drop.
pub struct StreamProc {
    pub child: std::process::Child,
}

impl StreamProc {
    pub fn start(pg: &pgpitr_testkit::PgCluster, backend: &Backend, extra: &[&str]) -> StreamProc {
        Self::start_env(pg, backend, extra, &[])
    }

    /// [`StreamProc::start`] with more environment.
    pub fn start_env(
        pg: &pgpitr_testkit::PgCluster,
        backend: &Backend,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> StreamProc {
        let mut cmd = pgpitr();
        backend.env(&mut cmd);
        cmd.envs(env.iter().copied());
        cmd.args(["stream", "--repo", &backend.url(), "-d"])
            .arg(format!("host=127.0.0.1 port={} user={} dbname=postgres", pg.port(), pgpitr_testkit::REPL_USER))
            .args(extra)
            .env("PGPASSWORD", pgpitr_testkit::REPL_PASSWORD)
            .env("PGPITR_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        // To look closer: every stream's log into a file of that directory.
        if let Some(dir) = std::env::var_os("PGPITR_TEST_STREAM_LOGS") {
            let path = std::path::Path::new(&dir).join(format!("stream-{}.log", fastrand::u64(..)));
            cmd.stderr(std::fs::File::create(path).expect("create stream log"));
        }
        let child = cmd.spawn().expect("spawn pgpitr stream");
        StreamProc { child }
    }

    /// SIGKILL, the harshest stop.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit code and stderr.
    pub fn terminate(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Waits for the process to exit by itself; returns code and stderr.
    pub fn wait_exit(mut self, timeout: std::time::Duration) -> (Option<i32>, String) {
        let t0 = std::time::Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(t0.elapsed() < timeout, "pgpitr stream did not exit within {timeout:?}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for StreamProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The end of stored WAL on `tli` (contiguous from the first object), if any.
pub async fn durable_end(
    storage: &dyn pgpitr_storage::Storage,
    seg: pgpitr_types::WalSegSize,
    tli: u32,
) -> Option<pgpitr_types::Lsn> {
    // s3s-fs fails a listing that races a delete (the stream deletes pieces
    // once merged): a passing error, as RetryingStorage treats it.
    let mut tries = 0;
    let tls = loop {
        match pgpitr_repo::wal::scan(storage, seg).await {
            Ok((tls, _)) => break tls,
            Err(e) if tries < 10 => {
                tries += 1;
                eprintln!("listing failed, again: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot list the repository: {e}"),
        }
    };
    let tl = tls.get(&pgpitr_types::TimelineId(tli))?;
    tl.ranges.first().map(|r| r.1)
}

/// Polls until WAL up to `lsn` on `tli` is stored; returns how long it took.
pub async fn wait_durable(
    storage: &dyn pgpitr_storage::Storage,
    seg: pgpitr_types::WalSegSize,
    tli: u32,
    lsn: pgpitr_types::Lsn,
    timeout: std::time::Duration,
) -> std::time::Duration {
    let t0 = std::time::Instant::now();
    loop {
        if durable_end(storage, seg, tli).await.is_some_and(|e| e >= lsn) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < timeout, "WAL up to {lsn} on timeline {tli} not durable within {timeout:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub fn lsn(s: &str) -> pgpitr_types::Lsn {
    s.trim().parse().unwrap_or_else(|e| panic!("not an LSN {s:?}: {e}"))
}

pub fn seg16() -> pgpitr_types::WalSegSize {
    pgpitr_types::WalSegSize::new(16 << 20).unwrap()
}

/// Waits until the slot is active (pgpitr is streaming).
pub fn wait_streaming(pg: &pgpitr_testkit::PgCluster, slot: &str) {
    let ok = pgpitr_testkit::wait_for(std::time::Duration::from_secs(30), || {
        let q = format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'");
        (pg.try_sql(&q).ok()? == "t").then_some(())
    });
    assert!(ok.is_some(), "pgpitr never started streaming on slot {slot}");
}

pub fn conninfo(pg: &pgpitr_testkit::PgCluster) -> String {
    format!("host=127.0.0.1 port={} user={} dbname=postgres", pg.port(), pgpitr_testkit::REPL_USER)
}

/// `pgpitr backup` with a fast checkpoint and small parts, so small test
/// databases still span several parts.
pub fn backup_cmd(pg: &pgpitr_testkit::PgCluster, backend: &Backend, extra: &[&str]) -> Command {
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    cmd.args(["backup", "--repo", &backend.url(), "-d", &conninfo(pg), "--checkpoint", "fast", "--part-size", "1MiB"])
        .args(extra)
        .env("PGPASSWORD", pgpitr_testkit::REPL_PASSWORD);
    cmd
}

/// pgbench against `pg` as the superuser over its socket, with `args`
/// (options, then the database), on a thread of its own.
pub fn pgbench_thread(pg: &pgpitr_testkit::PgCluster, args: &[&str]) -> std::thread::JoinHandle<Output> {
    let mut cmd = Command::new(pg.bin("pgbench"));
    cmd.args(["-U", pgpitr_testkit::SUPERUSER, "-h"])
        .arg(pg.sockdir())
        .args(["-p", &pg.port().to_string()])
        .args(args)
        .stdout(std::process::Stdio::null());
    std::thread::spawn(move || cmd.output().expect("pgbench"))
}
