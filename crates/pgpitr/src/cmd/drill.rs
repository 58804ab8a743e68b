//! `pgpitr drill`: restore into a scratch directory, start the server,
//! check it, stop it, and report (stdout and `drills/<ID>.json`).

use crate::cli::RepoOpts;
use anyhow::Context;
use clap::{Args, ValueEnum};
use pgpitr_repo::drills::DrillReport;
use pgpitr_restore::drill::{Check, DrillOptions, DrillTarget};
use pgpitr_restore::server;
use pgpitr_storage::RepoUrl;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NamedDrillTarget {
    /// Everything stored.
    Latest,
    /// A time drawn from the restorable window.
    Random,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    #[command(flatten)]
    pub repo: RepoOpts,
    /// latest, or a random time in the restorable window.
    #[arg(long, value_enum, default_value_t = NamedDrillTarget::Random, conflicts_with = "target_time")]
    pub target: NamedDrillTarget,
    /// Restore to this commit time instead (as `restore --target-time`).
    #[arg(long, value_name = "TIMESTAMP")]
    pub target_time: Option<String>,
    /// Time zone (IANA name) for a --target-time written without one.
    #[arg(long, value_name = "ZONE", requires = "target_time")]
    pub timezone: Option<String>,
    /// Restore into this directory (empty or new) and keep it, stopped;
    /// otherwise a temporary directory, removed after.
    #[arg(short = 'D', long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
    /// Where the temporary directory goes (default: $TMPDIR or /tmp).
    #[arg(long, value_name = "DIR", conflicts_with = "pgdata")]
    pub scratch_dir: Option<PathBuf>,
    /// A check: SQL returning one value that must be true (repeatable).
    #[arg(long = "check", value_name = "SQL")]
    pub checks: Vec<String>,
    /// The database --check queries run in.
    #[arg(long, default_value = "postgres", value_name = "NAME")]
    pub check_database: String,
    /// More checks from a TOML file: [[check]] with name, sql, and
    /// optionally database and expect (the value it must return).
    #[arg(long, value_name = "FILE")]
    pub checks_file: Option<PathBuf>,
    /// Run amcheck's bt_index_check on every B-tree index, in every
    /// database, where the extension is installed.
    #[arg(long)]
    pub amcheck: bool,
    /// Fail the drill when plan, download and replay take longer.
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_retention)]
    pub rto_objective: Option<Duration>,
    /// Fail the drill when it takes longer than this, checks included.
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_retention)]
    pub time_limit: Option<Duration>,
    /// Refuse, before writing, a backup that restores to more than this.
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::parse_size)]
    pub max_disk: Option<usize>,
    /// Port of the drill's server (its socket is private; default: a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Directory of pg_ctl and postgres of the backup's major
    /// (default: pg_config --bindir).
    #[arg(long, value_name = "DIR")]
    pub pg_bindir: Option<PathBuf>,
    /// When pgpitr runs as root: the OS user that runs the server.
    #[arg(long, value_name = "USER", default_value = "postgres")]
    pub run_as: String,
    /// The database user the checks connect as (default: PGUSER, else the
    /// server's OS user).
    #[arg(long, value_name = "USER")]
    pub db_user: Option<String>,
    /// A setting for the drill's server, after the isolation (repeatable):
    /// e.g. shared_buffers=256MB on a small drill host, or
    /// shared_preload_libraries=... without a job scheduler.
    #[arg(long = "server-setting", value_name = "NAME=VALUE", value_parser = parse_setting)]
    pub server_settings: Vec<(String, String)>,
    /// Backup parts downloaded and decompressed at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The live server, as a libpq connection string (PGHOST, PGPORT,
    /// PGUSER, PGPASSWORD and PGPASSFILE fill the gaps): with --target
    /// latest, every table's row count restored must equal the live
    /// server's where it did not change during the drill (one count(*) per
    /// table on the live server before and after; the user needs SELECT).
    #[arg(short = 'd', long = "dbname", value_name = "CONNSTR")]
    pub live: Option<String>,
}

/// The live server of `drill -d`: SQL over our client, one connection per
/// query (a drill asks a handful).
#[derive(Debug)]
struct Live(pgpitr_pgwire::ConnConfig);

impl pgpitr_restore::drill::LiveServer for Live {
    fn query<'a>(&'a self, database: &'a str, sql: &'a str) -> pgpitr_restore::drill::Rows<'a> {
        Box::pin(async move {
            let mut cfg = self.0.for_sql();
            cfg.set_dbname(database);
            let mut c = pgpitr_pgwire::ReplicationConnection::connect(&cfg).await.map_err(|e| e.to_string())?;
            let rows = c.simple_query(sql).await.map_err(|e| e.to_string());
            c.close().await;
            Ok(rows?.iter().map(|r| (0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()).collect())
        })
    }
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChecksFile {
    #[serde(default)]
    check: Vec<FileCheck>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCheck {
    name: String,
    sql: String,
    database: Option<String>,
    expect: Option<String>,
}

/// The checks of `--check` and `--checks-file`, in that order.
fn load_checks(args: &DrillArgs) -> anyhow::Result<Vec<Check>> {
    let mut checks: Vec<Check> = args
        .checks
        .iter()
        .enumerate()
        .map(|(i, sql)| Check {
            name: format!("check {}", i + 1),
            database: args.check_database.clone(),
            sql: sql.clone(),
            expect: None,
        })
        .collect();
    if let Some(path) = &args.checks_file {
        checks.extend(parse_checks_file(path, &args.check_database)?);
    }
    if let Some(c) = checks.iter().find(|c| c.sql.trim().is_empty()) {
        anyhow::bail!("{}: the SQL is empty", c.name);
    }
    Ok(checks)
}

fn parse_checks_file(path: &Path, database: &str) -> anyhow::Result<Vec<Check>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--checks-file {}", path.display()))?;
    let file: ChecksFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1));
        anyhow::anyhow!("--checks-file {}: {}{}", path.display(), e.message().trim(), line.unwrap_or_default())
    })?;
    Ok(file
        .check
        .into_iter()
        .map(|c| Check {
            name: c.name,
            database: c.database.unwrap_or_else(|| database.to_string()),
            sql: c.sql,
            expect: c.expect,
        })
        .collect())
}

/// A port nothing listens on at the moment.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port for the drill's server")?;
    Ok(l.local_addr()?.port())
}

pub async fn run(args: DrillArgs) -> anyhow::Result<u8> {
    let target = match &args.target_time {
        Some(t) => DrillTarget::Time(pgpitr_restore::parse_time(t, args.timezone.as_deref())?),
        None => match args.target {
            NamedDrillTarget::Latest => DrillTarget::Latest,
            NamedDrillTarget::Random => DrillTarget::Random,
        },
    };
    let checks = load_checks(&args)?;
    let live = match &args.live {
        Some(conninfo) => {
            if args.target_time.is_some() || !matches!(args.target, NamedDrillTarget::Latest) {
                anyhow::bail!("comparing row counts with the live server (-d) needs --target latest");
            }
            let opts = crate::cli::ConnOpts { dbname: Some(conninfo.clone()), host: None, port: None, username: None };
            let cfg = crate::conn::config(&opts, "pgpitr drill")?;
            Some(Arc::new(Live(cfg)) as Arc<dyn pgpitr_restore::drill::LiveServer>)
        }
        None => None,
    };
    let url = RepoUrl::parse(&args.repo.repo)?;
    let pgdata = match &args.pgdata {
        Some(d) => Some(std::path::absolute(d).context("resolve --pgdata")?),
        None => None,
    };
    let exe = std::env::current_exe().context("find this program's path for restore_command")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let repo = pgpitr_repo::Repository::open_url(&url, pgpitr_repo::Access::Write).await?;
    let bindir = server::pg_bindir_for(args.pg_bindir.as_deref(), repo.major())?;
    let root = server::running_as_root();
    let run_as = root.then(|| args.run_as.clone());
    let db_user = match (&args.db_user, &run_as) {
        (Some(u), _) => u.clone(),
        (None, Some(os_user)) => std::env::var("PGUSER").unwrap_or_else(|_| os_user.clone()),
        (None, None) => server::default_user(),
    };
    let opts = DrillOptions {
        repo_url: url,
        exe,
        bindir,
        pgdata,
        scratch_parent: args.scratch_dir.clone(),
        port: match args.port {
            Some(p) => p,
            None => free_port()?,
        },
        run_as,
        db_user,
        target,
        checks,
        amcheck: args.amcheck,
        parallelism: args.parallel as usize,
        time_limit: args.time_limit,
        max_disk: args.max_disk.map(|b| b as u64),
        rto_objective: args.rto_objective,
        server_settings: args.server_settings.clone(),
        progress: Default::default(),
        replay: Default::default(),
        cancel: tokio_util::sync::CancellationToken::new(),
        live,
    };
    crate::signals::cancel_on_signal(opts.cancel.clone())?;
    let display = crate::progress::ProgressDisplay::restore(opts.progress.clone(), !args.json);
    let report = pgpitr_restore::drill::drill(&repo, &opts).await;
    display.stop().await;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if report.ok {
        return Ok(crate::exit::OK);
    }
    let why = match (&report.error, report.failed_checks()) {
        (Some(e), _) => e.clone(),
        (None, failed) if !failed.is_empty() => format!("failed checks: {}", failed.join(", ")),
        (None, _) => format!(
            "the RTO of {:.1} s is above the objective of {:.0} s",
            report.rto_seconds.unwrap_or_default(),
            report.rto_objective_seconds.unwrap_or_default()
        ),
    };
    eprintln!("pgpitr: error: drill {} failed: {why}", report.id);
    Ok(crate::exit::FAILURE)
}

fn secs(s: Option<f64>) -> String {
    s.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "-".into())
}

fn print_report(r: &DrillReport) {
    println!("drill:   {} ({})", r.id, if r.ok { "passed" } else { "FAILED" });
    println!("target:  {} -> {} from backup {}", r.target, r.recovery_target, r.backup.as_deref().unwrap_or("-"));
    if let Some(e) = &r.expected_last_commit {
        println!("expect:  last commit replayed {e}");
    }
    if let Some(p) = &r.reached {
        println!(
            "reached: {}; last replayed commit {} at LSN {}",
            p.state,
            p.last_replayed_commit_time.as_deref().unwrap_or("none"),
            p.last_replayed_lsn.as_deref().unwrap_or("?")
        );
    }
    let objective = r.rto_objective_seconds.map(|o| format!(" (objective {o:.0} s)")).unwrap_or_default();
    println!(
        "RTO:     {}{objective}: plan {}, download {}, replay {}; checks {}",
        secs(r.rto_seconds),
        secs(r.phases.plan),
        secs(r.phases.download),
        secs(r.phases.replay),
        secs(r.phases.checks)
    );
    println!(
        "fetched: {:.1} MB of backup, {:.1} MB of WAL replayed",
        r.backup_bytes as f64 / 1e6,
        r.wal_bytes as f64 / 1e6
    );
    for c in &r.checks {
        println!("  {} {}: {} ({:.2} s)", if c.ok { "ok  " } else { "FAIL" }, c.name, c.detail, c.seconds);
    }
    if let Some(e) = &r.error {
        println!("error:   {e}");
    }
}
