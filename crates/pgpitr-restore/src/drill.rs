//! `pgpitr drill`: a restore that proves itself. It restores into a scratch
//! directory exactly as `restore --wait` does, starts the server there on a
//! free port, checks it, stops it, and reports the RTO per phase and every
//! check's outcome; the report is also stored in the repository.
//!
//! A drill that cannot start (a target outside the window, a scratch
//! directory that is not empty, no binaries of the backup's major, a
//! backup larger than the disk limit) is an error before anything is
//! written. Once the restore has begun, every failure, the time limit
//! included, ends in a report whose `ok` is false.

use crate::restore::{RestoreError, RestoreOptions, check_target_dir, restore};
use crate::server::{self, Replaying, ServerError, StartOptions};
use crate::target::{Target, TargetAction, TimelineTarget, format_time, parse_time};
use crate::{PlanRequest, Restored};
use futures_util::future::BoxFuture;
use pgpitr_repo::Repository;
use pgpitr_repo::drills::{CheckOutcome, DrillReached, DrillReport};
use pgpitr_repo::reader::ReadProgress;
use pgpitr_storage::RepoUrl;
use pgpitr_types::Lsn;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a drill restores to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrillTarget {
    /// Everything stored.
    Latest,
    /// A time drawn uniformly from the restorable window.
    Random,
    /// This commit time (Unix µs).
    Time(i64),
}

/// A user check: `sql` in `database` returns one value, which must be
/// `expect`, or true when no value is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub database: String,
    pub sql: String,
    pub expect: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub repo_url: RepoUrl,
    /// The binary `restore_command` calls (this one).
    pub exe: PathBuf,
    /// Binaries of the backup's major (checked by the caller).
    pub bindir: PathBuf,
    /// `--pgdata`: kept after the drill; otherwise a temporary directory,
    /// removed after.
    pub pgdata: Option<PathBuf>,
    /// Where the temporary directory goes (default: the system's).
    pub scratch_parent: Option<PathBuf>,
    /// Its port (the socket is private: any port serves).
    pub port: u16,
    /// Run the server as this OS user (pgpitr running as root).
    pub run_as: Option<String>,
    /// The database user the checks connect as (trusted on the private
    /// socket; it must exist in the restored cluster).
    pub db_user: String,
    pub target: DrillTarget,
    pub checks: Vec<Check>,
    pub amcheck: bool,
    pub parallelism: usize,
    /// The whole drill, checks included; past it the drill fails.
    pub time_limit: Option<Duration>,
    /// Refused before writing when the backup restores to more than this.
    pub max_disk: Option<u64>,
    /// A drill whose RTO exceeds this fails.
    pub rto_objective: Option<Duration>,
    /// Settings for the drill's server, after the isolation (e.g.
    /// `shared_buffers`, or `shared_preload_libraries` without a scheduler).
    pub server_settings: Vec<(String, String)>,
    pub progress: Arc<ReadProgress>,
    pub replay: Arc<Mutex<Replaying>>,
    /// Stops the drill (its server stopped, its scratch removed, a report).
    pub cancel: tokio_util::sync::CancellationToken,
    /// Compare every table's row count with this server's (target `latest`).
    pub live: Option<Arc<dyn LiveServer>>,
}

/// Rows of text, as the simple query protocol returns them.
pub type TextRows = Vec<Vec<Option<String>>>;
/// What [`LiveServer::query`] returns.
pub type Rows<'a> = BoxFuture<'a, Result<TextRows, String>>;

/// The live server a drill compares its row counts with (`drill -d`):
/// runs SQL in a database of it.
pub trait LiveServer: Send + Sync + std::fmt::Debug {
    fn query<'a>(&'a self, database: &'a str, sql: &'a str) -> Rows<'a>;
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("{0}")]
    Invalid(String),
}

/// Runs a drill; see the module's description for what is an error and
/// what is a failed report. The report is stored before it is returned.
pub async fn drill(repo: &Repository, opts: &DrillOptions) -> Result<DrillReport, DrillError> {
    let started = jiff::Timestamp::now();
    let t0 = Instant::now();
    let mut report = DrillReport {
        id: started.strftime("%Y%m%dT%H%M%SZ").to_string(),
        started_at: started.to_string(),
        target: match opts.target {
            DrillTarget::Latest => "latest".into(),
            DrillTarget::Random => "random".into(),
            DrillTarget::Time(t) => format_time(t),
        },
        rto_objective_seconds: opts.rto_objective.map(|d| d.as_secs_f64()),
        pgpitr_version: format!("pgpitr {}", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };

    // Everything that can refuse the drill, before anything is written.
    if server::running_as_root() && opts.run_as.is_none() {
        return Err(DrillError::Invalid("PostgreSQL refuses to run as root: give the server's OS user".into()));
    }
    let (scratch, pgdata) = match &opts.pgdata {
        Some(d) => (None, d.clone()),
        None => {
            let mut b = tempfile::Builder::new();
            b.prefix("pgpitr-drill-");
            let dir = match &opts.scratch_parent {
                Some(p) => b.tempdir_in(p),
                None => b.tempdir(),
            }
            .map_err(|e| DrillError::Invalid(format!("cannot make a scratch directory: {e}")))?;
            let pgdata = dir.path().join("pgdata");
            (Some(dir), pgdata)
        }
    };
    check_target_dir(&pgdata)?;
    // Tablespaces go beside the data directory, never to the server's own
    // locations (on the production host they are in use).
    let tablespaces = match &scratch {
        Some(dir) => dir.path().join("tablespaces"),
        None => pgdata.with_file_name(format!(
            "{}.tablespaces",
            pgdata.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        )),
    };
    check_target_dir(&tablespaces)?;
    let live = match &opts.live {
        Some(server) => {
            if !matches!(opts.target, DrillTarget::Latest) {
                return Err(DrillError::Invalid(
                    "comparing row counts with the live server needs target latest".into(),
                ));
            }
            // Counted first: every commit they hold is before this position.
            let counts =
                row_counts(server.as_ref()).await.map_err(|e| DrillError::Invalid(format!("live server: {e}")))?;
            let lsn = live_lsn(server.as_ref()).await.map_err(|e| DrillError::Invalid(format!("live server: {e}")))?;
            Some(LiveBefore { lsn, counts })
        }
        None => None,
    };
    let target = resolve_target(repo, opts, &pgdata).await?;
    let mut ropts = restore_options(opts, &pgdata, target.clone(), None, Vec::new());
    ropts.dry_run = true;
    let mut planned = restore(repo, &ropts).await?;
    if let Some(l) = &live {
        // The stream stores what the server wrote within about a second.
        let t = Instant::now();
        while planned.plan.wal_end < l.lsn && t.elapsed() < LIVE_WAIT {
            tokio::time::sleep(Duration::from_millis(250)).await;
            planned = restore(repo, &ropts).await?;
        }
    }
    let backup = planned.plan.backup.clone();
    if let Some(max) = opts.max_disk
        && backup.size_bytes > max
    {
        return Err(DrillError::Invalid(format!(
            "backup {} restores to {} bytes, more than --max-disk {max}",
            backup.id, backup.size_bytes
        )));
    }
    let map = tablespace_map(repo, &backup.id, &tablespaces).await?;
    report.recovery_target = target.to_string();
    // The server's socket, and its own pg_hba.conf: short paths, private.
    let sock = tempfile::Builder::new()
        .prefix("pgpitr-drill-sock-")
        .tempdir()
        .map_err(|e| DrillError::Invalid(format!("cannot make the drill's socket directory: {e}")))?;

    let ropts = restore_options(opts, &pgdata, target, Some(backup.id.clone()), map);
    let run = run_phases(repo, opts, &ropts, sock.path(), &tablespaces, live, &mut report);
    let limit = async {
        match opts.time_limit {
            Some(l) => tokio::time::sleep(l.saturating_sub(t0.elapsed())).await,
            None => std::future::pending().await,
        }
    };
    let mut interrupted = false;
    let outcome = tokio::select! {
        r = run => r,
        _ = limit => Err(format!(
            "the drill passed its time limit of {} s",
            opts.time_limit.map(|l| l.as_secs()).unwrap_or_default()
        )),
        _ = opts.cancel.cancelled() => {
            interrupted = true;
            Err("interrupted (SIGTERM or SIGINT)".to_string())
        }
    };
    if let Err(e) = outcome {
        report.error = Some(e);
    }
    if let Err(e) = clean_up(opts, &pgdata, scratch).await {
        tracing::warn!(error = %e, "the drill could not clean up after itself");
        report.error.get_or_insert(format!("cleaning up: {e}"));
    }
    if interrupted {
        // No report: the schedule keeps its place and retries.
        return Err(DrillError::Invalid(
            "the drill was interrupted; its server is stopped and its scratch removed".into(),
        ));
    }
    report.rto_seconds = match (report.phases.plan, report.phases.download, report.phases.replay) {
        (Some(p), Some(d), Some(r)) => Some(p + d + r),
        _ => None,
    };
    let rto_met = match (report.rto_seconds, opts.rto_objective) {
        (Some(rto), Some(obj)) => rto <= obj.as_secs_f64(),
        _ => true,
    };
    report.ok = report.error.is_none() && rto_met && report.checks.iter().all(|c| c.ok);
    report.finished_at = jiff::Timestamp::now().to_string();
    repo.put_drill(&mut report)
        .await
        .map_err(|e| DrillError::Invalid(format!("cannot store the drill report: {e}")))?;
    Ok(report)
}

/// Each tablespace of backup `id` into `root/<oid>`.
async fn tablespace_map(repo: &Repository, id: &str, root: &Path) -> Result<Vec<(PathBuf, PathBuf)>, DrillError> {
    let bid = pgpitr_repo::backup::BackupId::parse(id)
        .ok_or_else(|| DrillError::Invalid(format!("backup ID {id:?} cannot be read")))?;
    let info = pgpitr_repo::backup::read_info(repo.storage().as_ref(), &bid)
        .await
        .map_err(RestoreError::Repo)?
        .ok_or_else(|| DrillError::Invalid(format!("backup {id} vanished while planning")))?;
    Ok(info
        .archives
        .iter()
        .filter_map(|a| {
            Some((PathBuf::from(a.tablespace_location.as_ref()?), root.join(a.tablespace_oid?.to_string())))
        })
        .collect())
}

/// Stops the drill's server (immediately: nothing in it is kept), removes
/// the scratch directory (its tablespaces with it), and takes the isolation
/// out of a kept `--pgdata`, so that it starts as restored.
async fn clean_up(opts: &DrillOptions, pgdata: &Path, scratch: Option<tempfile::TempDir>) -> Result<(), String> {
    // `pg_ctl start` returns before the postmaster writes its pid file.
    if pgdata.join("log").join(server::RECOVERY_LOG).exists() {
        for _ in 0..30 {
            if pgdata.join("postmaster.pid").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    server::stop(pgdata, &opts.bindir, opts.run_as.as_deref()).map_err(|e| e.0)?;
    match scratch {
        Some(dir) => remove_all(&dir.keep()).await,
        // Kept, with its tablespaces.
        None => crate::conf::strip_isolation(pgdata).map_err(|e| format!("{}: {e}", pgdata.display())),
    }
}

/// `remove_dir_all`, again while something (a prefetcher that has not yet
/// seen its spool go) still writes there.
async fn remove_all(dir: &Path) -> Result<(), String> {
    let mut last = None;
    for _ in 0..20 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("cannot remove {}: {}", dir.display(), last.map(|e| e.to_string()).unwrap_or_default()))
}

fn restore_options(
    opts: &DrillOptions,
    pgdata: &Path,
    target: Target,
    backup: Option<String>,
    tablespace_map: Vec<(PathBuf, PathBuf)>,
) -> RestoreOptions {
    RestoreOptions {
        repo_url: opts.repo_url.clone(),
        pgdata: pgdata.to_path_buf(),
        request: PlanRequest { target, inclusive: true, timeline: TimelineTarget::Latest, backup },
        action: TargetAction::Promote,
        tablespace_map,
        exe: opts.exe.clone(),
        parallelism: opts.parallelism,
        progress: opts.progress.clone(),
        dry_run: false,
        prefetch_wal: !server::running_as_root(),
    }
}

/// The target to plan for: a random time is drawn from the window that a
/// plan to the latest point reports.
async fn resolve_target(repo: &Repository, opts: &DrillOptions, pgdata: &Path) -> Result<Target, DrillError> {
    match opts.target {
        DrillTarget::Latest => Ok(Target::Latest),
        DrillTarget::Time(t) => Ok(Target::Time(t)),
        DrillTarget::Random => {
            let mut ropts = restore_options(opts, pgdata, Target::Latest, None, Vec::new());
            ropts.dry_run = true;
            let plan = restore(repo, &ropts).await?.plan;
            let latest = plan.latest_us.unwrap_or(plan.earliest_us);
            let t = random_in(plan.earliest_us, latest);
            // Retention tiers leave gaps between old backups, which restore
            // to their end only; the newest backup's window has none.
            let mut probe = restore_options(opts, pgdata, Target::Time(t), None, Vec::new());
            probe.dry_run = true;
            match restore(repo, &probe).await {
                Ok(_) => Ok(Target::Time(t)),
                Err(_) => Ok(Target::Time(random_in(plan.backup.stop_time_us, latest))),
            }
        }
    }
}

/// A time in `earliest..=latest`, whole microseconds.
fn random_in(earliest: i64, latest: i64) -> i64 {
    if latest <= earliest { earliest } else { fastrand::i64(earliest..=latest) }
}

/// Restore, start and check; the phases' times go into `report` as they
/// end, so a drill stopped by its time limit reports how far it came.
async fn run_phases(
    repo: &Repository,
    opts: &DrillOptions,
    ropts: &RestoreOptions,
    sock: &Path,
    tablespaces: &Path,
    live: Option<LiveBefore>,
    report: &mut DrillReport,
) -> Result<(), String> {
    let pgdata = ropts.pgdata.as_path();
    let restored: Restored = restore(repo, ropts).await.map_err(|e| e.to_string())?;
    isolate(opts, pgdata, sock, tablespaces).map_err(|e| format!("cannot set the drill's server up: {e}"))?;
    report.phases.plan = Some(restored.plan_secs);
    report.phases.download = Some(restored.download_secs);
    report.backup = Some(restored.plan.backup.id.clone());
    report.backup_bytes = restored.bytes;
    report.wal_bytes = restored.plan.wal_end.0.saturating_sub(restored.plan.backup.start_lsn.0);
    report.expected_last_commit = restored.plan.last_commit.map(|c| format!("{} at {}", format_time(c.time_us), c.lsn));

    let sopts = StartOptions {
        pgdata: pgdata.to_path_buf(),
        bindir: opts.bindir.clone(),
        port: Some(opts.port),
        action: TargetAction::Promote,
        wait: true,
        progress: opts.replay.clone(),
        run_as: opts.run_as.clone(),
        db_user: Some(opts.db_user.clone()),
    };
    let reached = server::start(&sopts).await.map_err(|e| e.to_string())?;
    report.phases.replay = Some(reached.replay_secs);
    report.reached = Some(DrillReached {
        state: reached.state.clone(),
        last_replayed_commit_time: reached.last_replayed_commit_time.clone(),
        last_replayed_lsn: reached.last_replayed_lsn.map(|l| l.to_string()),
        timeline: reached.timeline,
    });

    let t = Instant::now();
    let until = match ropts.request.target {
        Target::Time(t) => Some(t),
        _ => None,
    };
    report.checks.push(point_check(&reached, restored.plan.last_commit.map(|c| c.time_us), until));
    let user = opts.db_user.as_str();
    let databases = match databases(pgdata, user).await {
        Ok(d) => d,
        Err(e) => {
            report.checks.push(outcome("databases accept connections", Err(e.0), t));
            report.phases.checks = Some(t.elapsed().as_secs_f64());
            return Ok(());
        }
    };
    for db in &databases {
        let t = Instant::now();
        let r = match server::connect_to(pgdata, db, user).await {
            Ok(c) => c
                .simple_query("SELECT 1")
                .await
                .map(|_| "accepts connections".to_string())
                .map_err(|e| server::one_line(&e)),
            Err(e) => Err(e.0),
        };
        report.checks.push(outcome(&format!("connect {db}"), r, t));
    }
    if opts.amcheck {
        for db in &databases {
            let t = Instant::now();
            report.checks.push(outcome(&format!("amcheck {db}"), amcheck(pgdata, db, user).await, t));
        }
    }
    for c in &opts.checks {
        let t = Instant::now();
        report.checks.push(outcome(&c.name, user_check(pgdata, c, user).await, t));
    }
    if let (Some(before), Some(server)) = (live, &opts.live) {
        let t = Instant::now();
        let restored_server = Scratch { pgdata, user };
        let r = compare_live(&before, restored.plan.wal_end, server.as_ref(), &restored_server).await;
        report.checks.push(outcome("row counts equal the live server's", r, t));
    }
    report.phases.checks = Some(t.elapsed().as_secs_f64());
    Ok(())
}

/// Points the restored configuration at the private socket and its own
/// `pg_hba.conf`, and hands everything to the server's OS user.
fn isolate(opts: &DrillOptions, pgdata: &Path, sock: &Path, tablespaces: &Path) -> Result<(), String> {
    let hba = sock.join("pg_hba.conf");
    std::fs::write(&hba, "# pgpitr drill: the private socket only\nlocal all all trust\n")
        .map_err(|e| format!("{}: {e}", hba.display()))?;
    let text = crate::conf::isolation(sock, &hba, opts.port, &opts.server_settings)?;
    crate::conf::append(pgdata, &text).map_err(|e| format!("{}: {e}", pgdata.display()))?;
    if let Some(user) = &opts.run_as {
        // The temporary scratch directory too (not a --pgdata's parent: it
        // is the operator's).
        let mut dirs = vec![pgdata, sock];
        if tablespaces.exists() {
            dirs.push(tablespaces);
        }
        if opts.pgdata.is_none() {
            dirs.extend(pgdata.parent());
        }
        for dir in dirs {
            let out = std::process::Command::new("chown")
                .args(["-R", &format!("{user}:")])
                .arg(dir)
                .output()
                .map_err(|e| format!("cannot run chown: {e}"))?;
            if !out.status.success() {
                let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(format!("chown -R {user} {}: {why}", dir.display()));
            }
        }
    }
    Ok(())
}

fn outcome(name: &str, r: Result<String, String>, t: Instant) -> CheckOutcome {
    let seconds = t.elapsed().as_secs_f64();
    match r {
        Ok(detail) => CheckOutcome { name: name.into(), ok: true, detail, seconds },
        Err(detail) => CheckOutcome { name: name.into(), ok: false, detail, seconds },
    }
}

/// The server promoted, and the last transaction it replayed lies where
/// the plan said: not before the last commit the plan expected (an abort
/// may follow it, and `latest` replays WAL stored since the plan), and not
/// after a target time.
fn point_check(reached: &server::Reached, expected_us: Option<i64>, until_us: Option<i64>) -> CheckOutcome {
    let name = "promoted at the planned point";
    let replayed = reached.last_replayed_commit_time.as_deref();
    let r = if reached.state != "promoted" {
        Err(format!("the server is {}, not promoted", reached.state))
    } else {
        match replayed.map(|t| parse_time(t, Some("UTC"))) {
            None if expected_us.is_some() => Err(format!(
                "the plan expected a last commit at {}, the server replayed none",
                format_time(expected_us.unwrap_or_default())
            )),
            None => Ok("promoted; no transaction replayed after the backup".to_string()),
            Some(Err(e)) => Err(format!("the server reports an unreadable replay time: {e}")),
            Some(Ok(got)) => match (expected_us, until_us) {
                (Some(e), _) if got < e => Err(format!(
                    "the last replayed transaction is at {}, before the planned last commit at {}",
                    format_time(got),
                    format_time(e)
                )),
                (_, Some(u)) if got > u => Err(format!(
                    "the last replayed transaction is at {}, after the target {}",
                    format_time(got),
                    format_time(u)
                )),
                _ => Ok(format!("promoted; last replayed transaction at {}", format_time(got))),
            },
        }
    };
    outcome(name, r, Instant::now())
}

/// How long a drill that compares with the live server waits, before
/// planning, for the repository to reach the live server's WAL.
const LIVE_WAIT: Duration = Duration::from_secs(10);

/// The live server's row counts and end of WAL before the drill planned.
struct LiveBefore {
    lsn: Lsn,
    counts: BTreeMap<String, i64>,
}

const DATABASES_SQL: &str = "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1";
/// Permanent tables without row security (whose counts depend on the
/// user: the drill's is a superuser, the live server's need not be).
const TABLES_SQL: &str = "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
     AND NOT c.relrowsecurity AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1";
const LSN_SQL: &str =
    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text";

async fn live_lsn(server: &dyn LiveServer) -> Result<Lsn, String> {
    let rows = server.query("postgres", LSN_SQL).await?;
    let text = rows.first().and_then(|r| r.first()).cloned().flatten().ok_or("no WAL position")?;
    text.parse().map_err(|e| format!("WAL position {text:?}: {e}"))
}

fn first_column(rows: TextRows) -> Vec<String> {
    rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect()
}

/// Rows of every permanent table of every database that takes
/// connections (`database.schema.table`), each database in one snapshot.
async fn row_counts(server: &dyn LiveServer) -> Result<BTreeMap<String, i64>, String> {
    let mut out = BTreeMap::new();
    for db in first_column(server.query("postgres", DATABASES_SQL).await?) {
        let tables = first_column(server.query(&db, TABLES_SQL).await?);
        if tables.is_empty() {
            continue;
        }
        let mut sql = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;");
        // Names come quoted by format('%I'); rows say which by position.
        for (c, chunk) in tables.chunks(200).enumerate() {
            let counts: Vec<String> =
                chunk.iter().enumerate().map(|(i, t)| format!("SELECT {}, count(*) FROM {t}", c * 200 + i)).collect();
            sql.push_str(&counts.join(" UNION ALL "));
            sql.push(';');
        }
        sql.push_str("COMMIT");
        for row in server.query(&db, &sql).await.map_err(|e| format!("counting rows in {db}: {e}"))? {
            if let [Some(i), Some(n)] = row.as_slice() {
                let t = i.parse::<usize>().ok().and_then(|i| tables.get(i)).ok_or(format!("a count for {i:?}"))?;
                let n = n.parse().map_err(|e| format!("count {n:?} of {t}: {e}"))?;
                out.insert(format!("{db}.{t}"), n);
            }
        }
    }
    Ok(out)
}

/// Compares the restored server's row counts with the live server's: the
/// repository must reach the live server's WAL at the drill's start, and
/// every table whose count did not change on the live server during the
/// drill must hold as many rows restored. Tables that changed are named
/// as not compared (a restore to `latest` holds the state of its planning).
async fn compare_live(
    before: &LiveBefore,
    restored_end: Lsn,
    live: &dyn LiveServer,
    restored: &dyn LiveServer,
) -> Result<String, String> {
    if restored_end < before.lsn {
        return Err(format!(
            "the repository ends at {restored_end}, before {}, the live server's WAL when the drill began: \
             the stream is behind or stopped",
            before.lsn
        ));
    }
    let after = row_counts(live).await.map_err(|e| format!("live server: {e}"))?;
    let got = row_counts(restored).await?;
    compare_counts(&before.counts, &after, &got)
}

fn compare_counts(
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
    restored: &BTreeMap<String, i64>,
) -> Result<String, String> {
    let (mut equal, mut changed, mut wrong) = (0, Vec::new(), Vec::new());
    for (table, n) in before {
        if after.get(table) != Some(n) {
            changed.push(table.as_str());
            continue;
        }
        match restored.get(table) {
            Some(r) if r == n => equal += 1,
            Some(r) => wrong.push(format!("{table}: {r} rows restored, {n} live")),
            None => wrong.push(format!("{table}: missing restored, {n} rows live")),
        }
    }
    if wrong.is_empty() {
        let mut named = changed.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        if changed.len() > 5 {
            named.push_str(&format!(" and {} more", changed.len() - 5));
        }
        let not = if changed.is_empty() { String::new() } else { format!(": {named}") };
        return Ok(format!(
            "{equal} tables hold the live server's row counts; {} changed on it during the drill (not compared){not}",
            changed.len()
        ));
    }
    let shown: Vec<&str> = wrong.iter().take(5).map(String::as_str).collect();
    Err(format!("{} of {} tables differ from the live server: {}", wrong.len(), wrong.len() + equal, shown.join("; ")))
}

/// The drill's own server, queried as the live one is.
#[derive(Debug)]
struct Scratch<'a> {
    pgdata: &'a Path,
    user: &'a str,
}

impl LiveServer for Scratch<'_> {
    fn query<'a>(&'a self, database: &'a str, sql: &'a str) -> Rows<'a> {
        Box::pin(async move {
            let c = server::connect_to(self.pgdata, database, self.user).await.map_err(|e| e.0)?;
            let msgs = c.simple_query(sql).await.map_err(|e| server::one_line(&e))?;
            Ok(msgs
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                    }
                    _ => None,
                })
                .collect())
        })
    }
}

/// The databases that allow connections.
async fn databases(pgdata: &Path, user: &str) -> Result<Vec<String>, ServerError> {
    let c = server::connect_to(pgdata, "postgres", user).await?;
    let rows = c
        .query("SELECT datname::text FROM pg_database WHERE datallowconn ORDER BY datname", &[])
        .await
        .map_err(|e| ServerError(server::one_line(&e)))?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// `bt_index_check` on every valid B-tree index of `db`, where the
/// extension is installed on this server.
async fn amcheck(pgdata: &Path, db: &str, user: &str) -> Result<String, String> {
    let c = server::connect_to(pgdata, db, user).await.map_err(|e| e.0)?;
    let q = |e: tokio_postgres::Error| server::one_line(&e);
    let available =
        c.query_opt("SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'", &[]).await.map_err(q)?.is_some();
    if !available {
        return Ok("skipped: amcheck is not installed on this server".into());
    }
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck").await.map_err(q)?;
    let indexes = c
        .query(
            "SELECT c.oid, c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND i.indisvalid AND i.indisready \
             AND c.relpersistence <> 't' ORDER BY 2",
            &[],
        )
        .await
        .map_err(q)?;
    for row in &indexes {
        let oid: u32 = row.get(0);
        let name: String = row.get(1);
        c.query("SELECT bt_index_check($1::oid::regclass)", &[&oid])
            .await
            .map_err(|e| format!("index {name}: {}", server::one_line(&e)))?;
    }
    Ok(format!("{} B-tree indexes checked", indexes.len()))
}

async fn user_check(pgdata: &Path, check: &Check, user: &str) -> Result<String, String> {
    let c = server::connect_to(pgdata, &check.database, user).await.map_err(|e| e.0)?;
    let msgs = c.simple_query(&check.sql).await.map_err(|e| match e.code() {
        Some(s) if *s == tokio_postgres::error::SqlState::SYNTAX_ERROR => {
            format!("not valid SQL: {}", server::one_line(&e))
        }
        _ => server::one_line(&e),
    })?;
    let rows: Vec<&tokio_postgres::SimpleQueryRow> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    let value = match rows.as_slice() {
        [row] if row.len() == 1 => row.get(0).map(str::to_string),
        _ => return Err(format!("returned {} rows; a check returns one row of one column", rows.len())),
    };
    let shown = value.clone().unwrap_or_else(|| "NULL".into());
    match &check.expect {
        None if value.as_deref() == Some("t") => Ok("true".into()),
        None => Err(format!("returned {shown}, not true")),
        Some(e) if value.as_deref() == Some(e.as_str()) => Ok(shown),
        Some(e) => Err(format!("returned {shown}, expected {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_counts_compare_where_the_live_server_held_still() {
        let m = |v: &[(&str, i64)]| v.iter().map(|(k, n)| (k.to_string(), *n)).collect::<BTreeMap<_, _>>();
        let before = m(&[("db.public.a", 10), ("db.public.b", 5), ("db.public.c", 7)]);
        let after = m(&[("db.public.a", 10), ("db.public.b", 6), ("db.public.c", 7)]);
        let same = compare_counts(&before, &after, &m(&[("db.public.a", 10), ("db.public.b", 1), ("db.public.c", 7)]));
        assert_eq!(
            same.unwrap(),
            "2 tables hold the live server's row counts; 1 changed on it during the drill (not compared): db.public.b"
        );
        let err = compare_counts(&before, &after, &m(&[("db.public.a", 9)])).unwrap_err();
        assert_eq!(
            err,
            "2 of 2 tables differ from the live server: db.public.a: 9 rows restored, 10 live; \
             db.public.c: missing restored, 7 rows live"
        );
    }

    #[test]
    fn random_times_stay_in_the_window() {
        for _ in 0..1000 {
            let t = random_in(100, 200);
            assert!((100..=200).contains(&t));
        }
        assert_eq!(random_in(5, 5), 5);
        assert_eq!(random_in(9, 3), 9);
    }

    #[test]
    fn the_point_check_compares_the_last_replayed_transaction_with_the_plan() {
        let reached = |state: &str, t: Option<&str>| server::Reached {
            state: state.into(),
            last_replayed_commit_time: t.map(str::to_string),
            ..Default::default()
        };
        let us = parse_time("2026-12-06T10:42:16.123456Z", None).unwrap();
        let target = parse_time("2026-12-06T10:43:00Z", None).unwrap();
        let at = |t: &str| reached("promoted", Some(t));
        assert!(point_check(&at("2026-12-06T10:42:16.123456Z"), Some(us), Some(target)).ok);
        // An abort after the last commit, before the target.
        assert!(point_check(&at("2026-12-06T10:42:30Z"), Some(us), Some(target)).ok);
        let early = point_check(&at("2026-12-06T10:42:15Z"), Some(us), Some(target));
        assert!(!early.ok && early.detail.contains("before the planned last commit"), "{}", early.detail);
        let late = point_check(&at("2026-12-06T10:43:01Z"), Some(us), Some(target));
        assert!(!late.ok && late.detail.contains("after the target"), "{}", late.detail);
        // latest: WAL stored since the plan is replayed too.
        assert!(point_check(&at("2026-12-06T11:00:00Z"), Some(us), None).ok);
        assert!(!point_check(&reached("paused", None), None, None).ok);
        assert!(!point_check(&reached("promoted", None), Some(us), None).ok);
        assert!(point_check(&reached("promoted", None), None, None).ok);
    }
}
