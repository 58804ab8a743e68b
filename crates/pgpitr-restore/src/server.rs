//! `restore --start/--wait`: start the restored cluster, follow its
//! recovery, and report the point it actually reached.

use crate::target::TargetAction;
use pgpitr_types::Lsn;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct StartOptions {
    pub pgdata: PathBuf,
    pub bindir: PathBuf,
    pub port: Option<u16>,
    pub action: TargetAction,
    /// Wait for recovery to finish (otherwise return once the server runs).
    pub wait: bool,
    /// Where replay stands while `wait` follows it, for whoever shows it.
    pub progress: std::sync::Arc<std::sync::Mutex<Replaying>>,
    /// Run the server as this OS user (through `runuser`, when pgpitr runs
    /// as root); `None`: as this process's user, never root.
    pub run_as: Option<String>,
    /// The database user to follow recovery as (default: [`default_user`]).
    pub db_user: Option<String>,
}

/// The server's log while pgpitr starts it, under `<pgdata>/log/`.
pub const RECOVERY_LOG: &str = "pgpitr-recovery.log";

/// `PGUSER`, else the OS user (which peer and trust authentication accept).
pub fn default_user() -> String {
    ["PGUSER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "postgres".into())
}

/// `pg_ctl` of `bindir`, through `runuser -u USER --` when `run_as` is set.
fn pg_ctl(bindir: &Path, run_as: Option<&str>) -> std::process::Command {
    let ctl = bindir.join("pg_ctl");
    match run_as {
        Some(user) => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", user, "--"]).arg(ctl);
            c
        }
        None => std::process::Command::new(ctl),
    }
}

/// The last replayed LSN and commit time seen while following recovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replaying {
    pub lsn: Option<Lsn>,
    pub commit_time: Option<String>,
}

/// Where recovery ended, as the server reports it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Reached {
    /// `promoted`, `paused`, `shut down` or `running` (not waited for).
    pub state: String,
    /// `pg_last_xact_replay_timestamp()`: the last replayed commit or abort, RFC 3339 UTC.
    pub last_replayed_commit_time: Option<String>,
    /// `pg_last_wal_replay_lsn()`.
    pub last_replayed_lsn: Option<Lsn>,
    /// The timeline the server writes on after promotion.
    pub timeline: Option<u32>,
    pub port: Option<u16>,
    /// PostgreSQL's own words on where it stopped (`recovery stopping ...`).
    pub stop_message: Option<String>,
    pub replay_secs: f64,
    pub log_file: PathBuf,
    /// How the WAL spool served replay: segments ready, waited for, or
    /// fetched by `wal-fetch` itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_fetch: Option<crate::walfetch::SpoolStats>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServerError(pub String);

/// `--pg-bindir`, else `pg_config --bindir`.
pub fn pg_bindir(explicit: Option<&Path>) -> Result<PathBuf, ServerError> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    let out = std::process::Command::new("pg_config").arg("--bindir").output().map_err(|e| {
        ServerError(format!("cannot run pg_config to find the PostgreSQL binaries ({e}); pass --pg-bindir"))
    })?;
    if !out.status.success() {
        return Err(ServerError("pg_config --bindir failed; pass --pg-bindir".into()));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// [`pg_bindir`], checked to hold the `postgres` of `major` (what the
/// restored data directory needs) before anything is written.
pub fn pg_bindir_for(explicit: Option<&Path>, major: pgpitr_types::PgMajor) -> Result<PathBuf, ServerError> {
    let dir = pg_bindir(explicit)?;
    let postgres = dir.join("postgres");
    let out = std::process::Command::new(&postgres)
        .arg("--version")
        .output()
        .map_err(|e| ServerError(format!("cannot run {} --version ({e}); pass --pg-bindir", postgres.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 17.10" (a distribution may add words after).
    let found = text
        .split_whitespace()
        .skip_while(|w| *w != "(PostgreSQL)")
        .nth(1)
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u32>().ok());
    match found {
        Some(m) if m == major.number() => Ok(dir),
        Some(m) => Err(ServerError(format!(
            "{} is PostgreSQL {m}, but the repository holds PostgreSQL {major}: pass --pg-bindir with {major}'s binaries",
            postgres.display()
        ))),
        None => Err(ServerError(format!(
            "{} --version said {:?}: not a PostgreSQL server",
            postgres.display(),
            text.trim()
        ))),
    }
}

/// True when this process runs as root (uid 0), read without unsafe code.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// `postmaster.pid`: port (line 4) and first socket directory (line 5).
fn postmaster_pid(pgdata: &Path) -> Option<(u16, String)> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    Some((lines.get(3)?.trim().parse().ok()?, lines.get(4).map(|s| s.trim().to_string()).unwrap_or_default()))
}

/// Starts the server on the restored directory and (with `wait`) follows
/// recovery until the target action has happened.
pub async fn start(opts: &StartOptions) -> Result<Reached, ServerError> {
    if running_as_root() && opts.run_as.is_none() {
        return Err(ServerError(
            "PostgreSQL refuses to run as root: run pgpitr restore --start as the data directory's owner \
             (e.g. runuser -u postgres -- pgpitr restore ...), or start it yourself with pg_ctl"
                .into(),
        ));
    }
    let log_dir = opts.pgdata.join("log");
    std::fs::create_dir_all(&log_dir).map_err(|e| ServerError(format!("{}: {e}", log_dir.display())))?;
    if let Some(user) = &opts.run_as {
        let st = std::process::Command::new("chown")
            .arg(format!("{user}:"))
            .arg(&log_dir)
            .status()
            .map_err(|e| ServerError(format!("cannot run chown: {e}")))?;
        if !st.success() {
            return Err(ServerError(format!("cannot hand {} to {user}", log_dir.display())));
        }
    }
    let log_file = log_dir.join(RECOVERY_LOG);
    let mut cmd = pg_ctl(&opts.bindir, opts.run_as.as_deref());
    cmd.arg("-D").arg(&opts.pgdata).arg("-l").arg(&log_file).arg("-W");
    if let Some(p) = opts.port {
        cmd.arg("-o").arg(format!("-p {p}"));
    }
    let out = cmd.arg("start").output().map_err(|e| ServerError(format!("cannot run pg_ctl: {e}")))?;
    if !out.status.success() {
        return Err(ServerError(format!(
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr).trim().replace('\n', " ")
        )));
    }
    let t0 = Instant::now();
    let mut reached =
        Reached { state: "running".into(), port: opts.port, log_file: log_file.clone(), ..Default::default() };
    let mut seen_pid = false;
    // One session, kept across polls (it survives promotion): polling often
    // then costs a query, not a backend started per poll while the server
    // replays.
    let mut session: Option<tokio_postgres::Client> = None;
    let mut tried: Option<Instant> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let pid = postmaster_pid(&opts.pgdata);
        if pid.is_none() && (seen_pid || t0.elapsed() > Duration::from_secs(30)) {
            // The server is gone: shut down at the target, or failed.
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            reached.replay_secs = t0.elapsed().as_secs_f64();
            if opts.action == TargetAction::Shutdown && log.contains("shutdown at recovery target") {
                reached.state = "shut down".into();
                from_log(&log, &mut reached);
                return Ok(reached);
            }
            let why = log
                .lines()
                .rev()
                .find(|l| l.contains("FATAL:") || l.contains("PANIC:"))
                .or_else(|| log.lines().rev().find(|l| !l.trim().is_empty()))
                .unwrap_or("the log is empty");
            return Err(ServerError(format!(
                "PostgreSQL stopped during recovery: {} (log: {})",
                why.trim(),
                log_file.display()
            )));
        }
        let Some((port, sockdir)) = pid else { continue };
        seen_pid = true;
        reached.port = Some(port);
        if !opts.wait {
            reached.replay_secs = t0.elapsed().as_secs_f64();
            return Ok(reached);
        }
        if session.as_ref().is_none_or(|c| c.is_closed()) {
            // Refused until the server is consistent; every attempt starts
            // a backend, so not at every poll.
            if tried.is_some_and(|t| t.elapsed() < CONNECT_EVERY) {
                continue;
            }
            tried = Some(Instant::now());
            let db = std::env::var("PGDATABASE").unwrap_or_else(|_| "postgres".into());
            let user = opts.db_user.clone().unwrap_or_else(default_user);
            session = connect(&sockdir, port, &db, &user).await.ok();
        }
        let Some(client) = &session else { continue };
        let row = match query_state(client).await {
            Ok(row) => row,
            Err(_) => {
                session = None;
                continue;
            }
        };
        reached.last_replayed_lsn = row.replay_lsn;
        reached.last_replayed_commit_time = row.replay_time.clone();
        if let Ok(mut p) = opts.progress.lock() {
            *p = Replaying { lsn: row.replay_lsn, commit_time: row.replay_time.clone() };
        }
        let done = match opts.action {
            TargetAction::Promote => !row.in_recovery,
            TargetAction::Pause => row.paused || !row.in_recovery,
            TargetAction::Shutdown => !row.in_recovery,
        };
        if done {
            reached.replay_secs = t0.elapsed().as_secs_f64();
            reached.timeline = row.timeline;
            reached.state = if row.in_recovery { "paused" } else { "promoted" }.into();
            let mut logged = Reached::default();
            from_log(&std::fs::read_to_string(&log_file).unwrap_or_default(), &mut logged);
            reached.stop_message = logged.stop_message;
            let spool = opts.pgdata.join(crate::restore::SPOOL_DIR);
            reached.wal_fetch = crate::walfetch::spool_stats(&spool);
            if !row.in_recovery {
                // Recovery is over: the prefetcher sees its spool go and exits.
                let _ = std::fs::remove_dir_all(&spool);
            }
            return Ok(reached);
        }
    }
}

struct State {
    in_recovery: bool,
    paused: bool,
    replay_lsn: Option<Lsn>,
    replay_time: Option<String>,
    timeline: Option<u32>,
}

/// How often `--wait` looks at the server: the report comes at most this
/// late after the target action.
const POLL: Duration = Duration::from_millis(20);
/// How often it tries to connect while the server refuses connections.
const CONNECT_EVERY: Duration = Duration::from_millis(100);

/// Connects as `user` to database `dbname` of the server running on
/// `pgdata`, over the socket its `postmaster.pid` names.
pub async fn connect_to(pgdata: &Path, dbname: &str, user: &str) -> Result<tokio_postgres::Client, ServerError> {
    let (port, sockdir) =
        postmaster_pid(pgdata).ok_or_else(|| ServerError(format!("no server is running on {}", pgdata.display())))?;
    connect(&sockdir, port, dbname, user)
        .await
        .map_err(|e| ServerError(format!("database {dbname:?}: {}", one_line(&e))))
}

/// A PostgreSQL error on one line, with its detail when it has one.
pub fn one_line(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{}: {} ({d})", db.severity(), db.message()),
            None => format!("{}: {}", db.severity(), db.message()),
        },
        None => e.to_string().replace('\n', " "),
    }
}

/// Stops the server running on `pgdata`, if one is, at once (immediate
/// shutdown: for scratch servers, whose data nobody keeps), and kills it
/// if `pg_ctl` could not.
pub fn stop(pgdata: &Path, bindir: &Path, run_as: Option<&str>) -> Result<(), ServerError> {
    if postmaster_pid(pgdata).is_none() {
        return Ok(());
    }
    let out = pg_ctl(bindir, run_as)
        .arg("-D")
        .arg(pgdata)
        .args(["-m", "immediate", "-w", "stop"])
        .output()
        .map_err(|e| ServerError(format!("cannot run pg_ctl: {e}")))?;
    if out.status.success() || postmaster_pid(pgdata).is_none() {
        return Ok(());
    }
    let pid = std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
        .ok_or_else(|| {
            ServerError(format!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr).trim().replace('\n', " ")
            ))
        })?;
    let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    match killed {
        Ok(st) if st.success() => Ok(()),
        _ => Err(ServerError(format!("cannot stop the server on {} (pid {pid})", pgdata.display()))),
    }
}

/// Connects over the Unix socket (TCP to 127.0.0.1 when the server has none).
async fn connect(
    sockdir: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    if sockdir.is_empty() {
        cfg.host("127.0.0.1");
    } else {
        cfg.host_path(sockdir);
    }
    cfg.port(port).user(user).dbname(dbname);
    if let Ok(p) = std::env::var("PGPASSWORD") {
        cfg.password(p);
    }
    cfg.application_name("pgpitr restore").connect_timeout(Duration::from_secs(5));
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    // Ends when the client is dropped or the server goes away.
    tokio::spawn(conn);
    Ok(client)
}

/// Reads the recovery state.
async fn query_state(client: &tokio_postgres::Client) -> Result<State, tokio_postgres::Error> {
    let q = "SELECT pg_is_in_recovery()::text, \
             CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END, \
             pg_last_wal_replay_lsn()::text, \
             to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
             CASE WHEN NOT pg_is_in_recovery() \
                  THEN (('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int)::text END";
    let rows = client.simple_query(q).await?;
    let row = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    });
    let get = |i: usize| row.and_then(|r| r.get(i)).map(str::to_string);
    Ok(State {
        in_recovery: get(0).as_deref() == Some("true"),
        paused: get(1).as_deref() == Some("paused"),
        replay_lsn: get(2).and_then(|s| s.parse().ok()),
        replay_time: get(3),
        timeline: get(4).and_then(|s| s.parse().ok()),
    })
}

/// What the log says when the server is no longer there to ask. A server
/// shut down at the target logs only where it stopped (before the usual
/// "redo done" lines).
fn from_log(log: &str, r: &mut Reached) {
    for line in log.lines() {
        if let Some((_, msg)) = line.split_once("LOG:  recovery stopping ") {
            r.stop_message = Some(format!("recovery stopping {}", msg.trim()));
            // "after commit of transaction 733, time 2026-11-21 10:42:16.5+00"
            if msg.starts_with("after commit") || msg.starts_with("after abort") {
                r.last_replayed_commit_time = msg.split_once(", time ").map(|(_, t)| t.trim().to_string());
            }
        }
        if let Some((_, t)) = line.split_once("last completed transaction was at log time ") {
            r.last_replayed_commit_time = Some(t.trim().to_string());
        }
        if let Some((_, rest)) = line.split_once("redo done at ") {
            r.last_replayed_lsn = rest.split_whitespace().next().and_then(|l| l.parse().ok());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_log_of_a_shutdown_at_target() {
        let log = "2026-11-21 10:00:00.000 UTC [1] LOG:  redo done at 0/3000148 system usage: CPU\n\
                   2026-11-21 10:00:00.000 UTC [1] LOG:  last completed transaction was at log time 2026-11-21 09:59:59.123456+00\n";
        let mut r = Reached::default();
        from_log(log, &mut r);
        assert_eq!(r.stop_message, None);
        assert_eq!(r.last_replayed_lsn, Some(Lsn(0x300_0148)));
        assert_eq!(r.last_replayed_commit_time.as_deref(), Some("2026-11-21 09:59:59.123456+00"));
        let log = "2026-11-21 10:00:00.000 UTC [1] LOG:  recovery stopping after commit of transaction 733, \
                   time 2026-11-21 09:58:00.5+00\n2026-11-21 10:00:00.001 UTC [1] LOG:  shutdown at recovery target\n";
        let mut r = Reached::default();
        from_log(log, &mut r);
        assert_eq!(r.last_replayed_commit_time.as_deref(), Some("2026-11-21 09:58:00.5+00"));
        assert!(r.stop_message.unwrap().starts_with("recovery stopping after commit of transaction 733"));
    }
}
