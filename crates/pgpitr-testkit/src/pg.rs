use crate::*;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The major that Debian 12 packages; `scripts/setup` puts the others
/// under `$PGPITR_PG_DIR`.
pub const DEBIAN_MAJOR: u32 = 15;

/// The directory with Debian's PostgreSQL 15 binaries, server and client:
/// `$PG_BINDIR`, else Debian's location, else `pg_config --bindir`.
pub fn pg_bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(d);
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("initdb").is_file() {
        return debian;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    panic!("PostgreSQL 15 server binaries not found (set PG_BINDIR or run scripts/setup)")
}

/// The binaries (server and client tools) of `major`: Debian's for 15,
/// else those `scripts/setup` put under `$PGPITR_PG_DIR` (/opt/pgpitr-pg).
pub fn server_bindir(major: u32) -> PathBuf {
    if major == DEBIAN_MAJOR {
        return pg_bindir();
    }
    setup_bindir(&major.to_string())
}

/// The server that `scripts/setup` installs built without lz4 and zstd
/// (16; initdb, pg_ctl and postgres only), for the compression fallbacks.
pub const NO_LZ4_MAJOR: u32 = 16;

fn setup_bindir(name: &str) -> PathBuf {
    let root = std::env::var_os("PGPITR_PG_DIR").map_or_else(|| PathBuf::from("/opt/pgpitr-pg"), PathBuf::from);
    let dir = root.join(name).join("bin");
    assert!(dir.join("postgres").is_file(), "PostgreSQL binaries {name} not in {} (run scripts/setup)", dir.display());
    dir
}

/// The major the suite's clusters run: `$PGPITR_TEST_PG_MAJOR`, else 15.
pub fn test_major() -> u32 {
    match std::env::var("PGPITR_TEST_PG_MAJOR") {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("PGPITR_TEST_PG_MAJOR={v:?} is not a major version")),
        Err(_) => DEBIAN_MAJOR,
    }
}

/// The majors the cross-major tests run: `$PGPITR_TEST_PG_MAJORS` (e.g.
/// `14,15,16,17,18`), else all of them.
pub fn test_majors() -> Vec<u32> {
    let list = std::env::var("PGPITR_TEST_PG_MAJORS").unwrap_or_else(|_| "14,15,16,17,18".into());
    list.split(',')
        .map(|m| m.trim().parse().unwrap_or_else(|_| panic!("PGPITR_TEST_PG_MAJORS: {m:?} is not a major version")))
        .collect()
}

/// The uid/gid of the `postgres` OS user, read from /etc/passwd.
fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            return (f[2].parse().expect("uid"), f[3].parse().expect("gid"));
        }
    }
    panic!("tests run as root but there is no `postgres` OS user to run the server as (run scripts/setup)")
}

/// Options for a new cluster; see [`PgCluster::builder`].
#[derive(Debug, Clone, Default)]
pub struct PgClusterBuilder {
    major: u32,
    settings: Vec<(String, String)>,
    wal_segsize_mb: Option<u32>,
    data_checksums: bool,
    no_lz4: bool,
}

impl PgClusterBuilder {
    /// The PostgreSQL major (default: [`test_major`]).
    pub fn major(mut self, major: u32) -> Self {
        self.major = major;
        self
    }

    /// A postgresql.conf setting, applied after the defaults.
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_string(), value.to_string()));
        self
    }

    pub fn wal_segsize_mb(mut self, mb: u32) -> Self {
        self.wal_segsize_mb = Some(mb);
        self
    }

    pub fn data_checksums(mut self, on: bool) -> Self {
        self.data_checksums = on;
        self
    }

    /// A server of [`NO_LZ4_MAJOR`] built without lz4 and zstd (its client
    /// tools are 15's).
    pub fn without_lz4(mut self) -> Self {
        self.major = NO_LZ4_MAJOR;
        self.no_lz4 = true;
        self
    }

    pub fn start(self) -> PgCluster {
        PgCluster::create(self)
    }
}

/// A throwaway PostgreSQL cluster listening on 127.0.0.1 and on a private
/// Unix socket directory. Stopped (immediate) and deleted on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    port: u16,
    major: u32,
    /// initdb, pg_ctl, postgres of `major`.
    bindir: PathBuf,
    as_postgres: bool,
    running: bool,
    /// The build has only initdb, pg_ctl and postgres.
    server_only: bool,
}

impl PgCluster {
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder { data_checksums: true, major: test_major(), ..Default::default() }
    }

    pub fn start_default() -> PgCluster {
        Self::builder().start()
    }

    fn new_dirs() -> (tempfile::TempDir, bool) {
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new().prefix("pgpitr-pg-").tempdir().expect("create temp dir");
        if as_postgres {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        }
        for sub in ["data", "sock", "scratch", "log"] {
            let p = dir.path().join(sub);
            std::fs::create_dir(&p).expect("create cluster dir");
            if sub == "data" {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).expect("chmod data dir");
            }
            if as_postgres {
                let (uid, gid) = postgres_ids();
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown cluster dir to postgres");
            }
        }
        (dir, as_postgres)
    }

    fn create(opts: PgClusterBuilder) -> PgCluster {
        let bindir =
            if opts.no_lz4 { setup_bindir(&format!("{NO_LZ4_MAJOR}-nolz4")) } else { server_bindir(opts.major) };
        let (dir, as_postgres) = Self::new_dirs();
        let server_only = opts.no_lz4;
        let mut c =
            PgCluster { dir, port: free_port(), major: opts.major, bindir, as_postgres, running: false, server_only };
        let data = c.datadir();
        let mut initdb = c.command("initdb");
        initdb.arg("-D").arg(&data).args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--auth-local=trust"]);
        initdb.arg("--auth-host=scram-sha-256");
        if opts.data_checksums {
            initdb.arg("--data-checksums");
        }
        if let Some(mb) = opts.wal_segsize_mb {
            initdb.arg(format!("--wal-segsize={mb}"));
        }
        run(&mut initdb, "initdb");

        let mut conf = format!(
            "\n# pgpitr test harness\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\nfsync = off\n\
             shared_buffers = 32MB\nmax_connections = 40\npassword_encryption = 'scram-sha-256'\n\
             wal_sender_timeout = 60s\nlog_min_messages = warning\nlog_line_prefix = '%m [%p] %u '\n",
            c.port,
            c.sockdir().display()
        );
        for (k, v) in &opts.settings {
            conf.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        c.append_file("postgresql.conf", &conf);
        c.write_file("pg_hba.conf", &hba());
        c.start();
        let setup = format!(
            "ALTER ROLE {SUPERUSER} PASSWORD '{SUPERUSER_PASSWORD}';\n\
             CREATE ROLE {REPL_USER} LOGIN REPLICATION PASSWORD '{REPL_PASSWORD}';\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE {MD5_USER} LOGIN REPLICATION PASSWORD '{MD5_PASSWORD}';\n\
             RESET password_encryption;\n\
             CREATE ROLE {PLAIN_USER} LOGIN REPLICATION PASSWORD '{PLAIN_PASSWORD}';\n\
             CREATE ROLE {TRUST_USER} LOGIN REPLICATION;\n\
             CREATE ROLE {NOREPL_USER} LOGIN PASSWORD '{NOREPL_PASSWORD}';\n\
             GRANT pg_read_all_settings, pg_read_all_stats TO {REPL_USER};\n"
        );
        c.sql(&setup);
        c
    }

    /// A streaming standby of `self`, made with pg_basebackup -R and started.
    pub fn start_standby(&self) -> PgCluster {
        let (dir, as_postgres) = Self::new_dirs();
        let (port, major, bindir) = (free_port(), self.major, self.bindir.clone());
        let server_only = self.server_only;
        let mut s = PgCluster { dir, port, major, bindir, as_postgres, running: false, server_only };
        let data = s.datadir();
        let mut bb = s.command("pg_basebackup");
        bb.arg("-D").arg(&data).args(["-R", "-X", "stream", "-c", "fast", "-U", SUPERUSER, "-h"]);
        bb.arg(self.sockdir()).args(["-p", &self.port.to_string()]);
        run(&mut bb, "pg_basebackup");
        s.append_file(
            "postgresql.conf",
            &format!("\nport = {}\nunix_socket_directories = '{}'\n", s.port, s.sockdir().display()),
        );
        s.start();
        s
    }

    /// An empty data directory (0700, owned by the cluster's OS user) for a
    /// restore to fill; nothing is initialised or started. Start what was
    /// restored with [`PgCluster::start_restored`].
    pub fn empty() -> PgCluster {
        Self::empty_of(test_major())
    }

    /// Like [`PgCluster::empty`], for a restore of `major`.
    pub fn empty_of(major: u32) -> PgCluster {
        let (dir, as_postgres) = Self::new_dirs();
        PgCluster {
            dir,
            port: free_port(),
            major,
            bindir: server_bindir(major),
            as_postgres,
            running: false,
            server_only: false,
        }
    }

    pub fn major(&self) -> u32 {
        self.major
    }

    /// Where this cluster's initdb, pg_ctl and postgres are.
    pub fn server_bindir(&self) -> &std::path::Path {
        &self.bindir
    }

    /// Starts a data directory restored into [`PgCluster::datadir`]: hands
    /// it to the cluster's OS user, points it at this cluster's port and
    /// socket directory (it carries its source's), and starts it with `env`
    /// added to the server's environment. Recovery then runs as configured;
    /// see [`PgCluster::wait_promoted`].
    pub fn start_restored(&mut self, env: &[(&str, String)]) {
        if self.as_postgres {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(self.datadir());
            run(&mut chown, "chown restored data directory");
        }
        self.append_file(
            "postgresql.auto.conf",
            &format!(
                "\n# pgpitr test harness\nport = {}\nunix_socket_directories = '{}'\nlisten_addresses = '127.0.0.1'\n",
                self.port,
                self.sockdir().display()
            ),
        );
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.datadir()).arg("-l").arg(self.log_path()).args(["-W", "start"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd, "pg_ctl start (restored)");
        self.running = true;
    }

    /// Takes charge of a server that something else (`pgpitr restore
    /// --start`) started on [`PgCluster::datadir`]: it is stopped on drop.
    pub fn adopt_running(&mut self) {
        self.running = true;
    }

    /// Waits until a restored server has finished recovery and accepts
    /// writes; panics with the end of the server log otherwise.
    pub fn wait_promoted(&self, timeout: Duration) {
        let ok = wait_for(timeout, || (self.try_sql("SELECT pg_is_in_recovery()").ok()? == "f").then_some(()));
        if ok.is_none() {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("restored server did not finish recovery within {timeout:?}; log:\n{}", tail.join("\n"));
        }
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn datadir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn sockdir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// A directory the cluster's OS user may write to (for archives, dumps).
    pub fn scratch_dir(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("log/postgres.log")
    }

    /// A tool of this cluster's major (15's client tools for the build that
    /// has none: [`PgClusterBuilder::without_lz4`]).
    pub fn bin(&self, name: &str) -> PathBuf {
        let own = self.bindir.join(name);
        if own.is_file() || !self.server_only { own } else { pg_bindir().join(name) }
    }

    /// `postgres://user:password@127.0.0.1:port/postgres`
    pub fn url(&self, user: &str, password: &str) -> String {
        if password.is_empty() {
            format!("postgres://{user}@127.0.0.1:{}/postgres", self.port)
        } else {
            format!("postgres://{user}:{password}@127.0.0.1:{}/postgres", self.port)
        }
    }

    /// A Postgres tool run as the cluster's OS user (root cannot run them).
    pub fn command(&self, tool: &str) -> Command {
        let bin = self.bin(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.env("LC_ALL", "C").env_remove("PGPASSWORD").current_dir(self.dir.path());
        cmd
    }

    /// Runs SQL as the superuser over the Unix socket; panics on error.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|e| panic!("SQL failed: {e}\n--- SQL:\n{sql}"))
    }

    /// Runs SQL (several statements allowed) and returns unaligned,
    /// tuples-only output, or the error text.
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(self.bin("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-U", SUPERUSER, "-h"])
            .arg(self.sockdir())
            .args(["-p", &self.port.to_string(), "-f", "-"])
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn psql: {e}"))?;
        child.stdin.take().expect("stdin").write_all(sql.as_bytes()).map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Runs pgbench against this cluster as the superuser.
    pub fn pgbench(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(self.bin("pgbench"));
        cmd.args(["-U", SUPERUSER, "-h"]).arg(self.sockdir()).args(["-p", &self.port.to_string()]);
        cmd.args(args).arg("postgres").env("LC_ALL", "C");
        let out = cmd.output().expect("run pgbench");
        assert!(out.status.success(), "pgbench {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    pub fn start(&mut self) {
        let mut out = self.try_start();
        // free_port() races with other tests: on a lost race, take another port.
        for _ in 0..3 {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if out.status.success() || !log.contains("could not bind") {
                break;
            }
            self.port = free_port();
            self.append_file("postgresql.conf", &format!("\nport = {}\n", self.port));
            out = self.try_start();
        }
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}\n--- server log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
        }
        self.running = true;
    }

    fn try_start(&self) -> Output {
        // A fresh log per attempt, so the bind check reads this attempt only.
        let _ = std::fs::OpenOptions::new().write(true).truncate(true).open(self.log_path());
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.datadir()).arg("-l").arg(self.log_path()).args(["-w", "-t", "60", "start"]);
        cmd.output().expect("run pg_ctl start")
    }

    /// Stops the server; `mode` is pg_ctl's `-m`: smart, fast or immediate.
    pub fn stop_mode(&mut self, mode: &str) {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.datadir()).args(["-w", "-t", "60", "-m", mode, "stop"]);
        run(&mut cmd, "pg_ctl stop");
        self.running = false;
    }

    pub fn stop(&mut self) {
        self.stop_mode("fast");
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// A crash restart: `pg_ctl stop -m immediate`, then start.
    pub fn restart_immediate(&mut self) {
        self.stop_mode("immediate");
        self.start();
    }

    /// Promotes a standby and waits until it accepts writes.
    pub fn promote(&self) {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.datadir()).args(["-w", "-t", "60", "promote"]);
        run(&mut cmd, "pg_ctl promote");
        let ok = wait_for(Duration::from_secs(30), || {
            (self.try_sql("SELECT pg_is_in_recovery()").ok()? == "f").then_some(())
        });
        assert!(ok.is_some(), "standby did not leave recovery after promote");
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    fn append_file(&self, name: &str, text: &str) {
        let path = self.datadir().join(name);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).expect("open config file");
        f.write_all(text.as_bytes()).expect("append config");
    }

    fn write_file(&self, name: &str, text: &str) {
        // Rewrite in place so the file keeps its owner (the cluster's user).
        let path = self.datadir().join(name);
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&path).expect("open config file");
        f.write_all(text.as_bytes()).expect("write config");
    }

    /// Turns TLS on with `pki`'s server certificate, trusting its CA for
    /// client certificates, and puts `hba_lines` first in pg_hba.conf.
    pub fn enable_tls(&self, pki: &crate::TestPki, hba_lines: &str) {
        for name in ["server.crt", "server.key", "ca.crt"] {
            let dest = self.datadir().join(name);
            std::fs::copy(pki.path(name), &dest).expect("copy certificate into the data directory");
            if self.as_postgres {
                let (uid, gid) = postgres_ids();
                std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).expect("chown certificate");
            }
        }
        let hba = std::fs::read_to_string(self.datadir().join("pg_hba.conf")).expect("read pg_hba.conf");
        self.write_file("pg_hba.conf", &format!("{hba_lines}\n{hba}"));
        self.sql(
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt'; ALTER SYSTEM SET ssl_key_file = 'server.key'; \
             ALTER SYSTEM SET ssl_ca_file = 'ca.crt'; ALTER SYSTEM SET ssl = on; SELECT pg_reload_conf();",
        );
        let on = crate::wait_for(Duration::from_secs(10), || (self.sql("SHOW ssl") == "on").then_some(()));
        assert!(on.is_some(), "ssl did not turn on; server log:\n{}", self.log());
    }

    /// Appends to postgresql.auto.conf-style settings and reloads.
    pub fn set_and_reload(&self, key: &str, value: &str) {
        self.sql(&format!("ALTER SYSTEM SET {key} = '{}'; SELECT pg_reload_conf();", value.replace('\'', "''")));
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let mut cmd = self.command("pg_ctl");
            cmd.arg("-D").arg(self.datadir()).args(["-w", "-t", "30", "-m", "immediate", "stop"]);
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

fn hba() -> String {
    let mut s = String::from("# pgpitr test harness\nlocal all all trust\nlocal replication all trust\n");
    for (user, method) in [(TRUST_USER, "trust"), (MD5_USER, "md5"), (PLAIN_USER, "password")] {
        for db in ["all", "replication"] {
            s.push_str(&format!("host {db} {user} 127.0.0.1/32 {method}\n"));
        }
    }
    s.push_str("host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n");
    s
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
