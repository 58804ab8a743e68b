//! `pgpitr restore`: plan, extract, configure recovery, optionally start
//! the server and report the point reached.

use crate::cli::RepoOpts;
use anyhow::Context;
use clap::{ArgGroup, Args, ValueEnum};
use pgpitr_restore::server::{self, StartOptions};
use pgpitr_restore::{
    PlanRequest, Reached, RecoveryTarget, RestoreOptions, Restored, Target, TargetAction, TimelineTarget, format_time,
};
use pgpitr_storage::RepoUrl;
use pgpitr_types::Lsn;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NamedTarget {
    /// Everything stored, the unfinished tail included.
    Latest,
    /// The end of the backup: the earliest consistent point.
    Immediate,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Action {
    Promote,
    Pause,
    Shutdown,
}

fn parse_lsn(s: &str) -> Result<Lsn, String> {
    s.parse().map_err(|e: pgpitr_types::ParseError| e.to_string())
}

fn parse_map(s: &str) -> Result<(PathBuf, PathBuf), String> {
    match s.split_once('=') {
        Some((o, n)) if !o.is_empty() && !n.is_empty() => Ok((PathBuf::from(o), PathBuf::from(n))),
        _ => Err(format!("expected OLD=NEW (tablespace directories), got {s:?}")),
    }
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("what")
        .required(true)
        .args(["target_time", "target_lsn", "target_xid", "target_name", "target"])
))]
pub struct RestoreArgs {
    #[command(flatten)]
    pub repo: RepoOpts,
    /// Data directory to restore into; must be empty or not exist.
    #[arg(short = 'D', long, value_name = "DIR")]
    pub pgdata: PathBuf,
    /// Recover to this commit time: RFC 3339 or PostgreSQL text, e.g.
    /// "2026-11-21 10:42:16+00", 2026-11-21T10:42:16.5Z, "2026-11-21
    /// 10:42:16 Europe/Berlin". Commits at or before it are kept.
    #[arg(long, value_name = "TIMESTAMP")]
    pub target_time: Option<String>,
    /// Time zone (IANA name) for a --target-time written without one.
    #[arg(long, value_name = "ZONE", requires = "target_time")]
    pub timezone: Option<String>,
    /// Recover to this WAL position (X/Y).
    #[arg(long, value_name = "LSN", value_parser = parse_lsn)]
    pub target_lsn: Option<Lsn>,
    /// Recover to the end of this transaction.
    #[arg(long, value_name = "XID", value_parser = pgpitr_restore::parse_xid)]
    pub target_xid: Option<u64>,
    /// Recover to this restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// latest: all stored WAL; immediate: the end of the backup.
    #[arg(long, value_enum)]
    pub target: Option<NamedTarget>,
    /// Stop just before the target instead of just after it.
    #[arg(long)]
    pub target_exclusive: bool,
    /// Timeline to follow: latest, current (the backup's) or a number.
    #[arg(long, default_value = "latest", value_name = "TIMELINE")]
    pub target_timeline: TimelineTarget,
    /// What the server does at the target.
    #[arg(long, value_enum, default_value_t = Action::Promote)]
    pub target_action: Action,
    /// Restore from this backup instead of the newest suitable one.
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Put the tablespace stored for directory OLD into NEW (repeatable).
    #[arg(long = "tablespace-map", value_name = "OLD=NEW", value_parser = parse_map)]
    pub tablespace_map: Vec<(PathBuf, PathBuf)>,
    /// Start PostgreSQL on the restored directory (as its owner, not root).
    #[arg(long)]
    pub start: bool,
    /// Start PostgreSQL, wait until recovery has reached the target, and
    /// report the point reached.
    #[arg(long)]
    pub wait: bool,
    /// Port for --start/--wait (default: the restored configuration's).
    #[arg(long)]
    pub port: Option<u16>,
    /// Directory of pg_ctl (default: pg_config --bindir).
    #[arg(long, value_name = "DIR")]
    pub pg_bindir: Option<PathBuf>,
    /// Backup parts downloaded and decompressed at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// The pgpitr binary restore_command runs (default: this one), for a
    /// server started elsewhere: a Kubernetes Job restores, the database
    /// pod replays with the binary at another path.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["start", "wait"])]
    pub restore_command_binary: Option<PathBuf>,
    /// Plan and print the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Timings {
    plan_secs: f64,
    download_secs: f64,
    replay_secs: Option<f64>,
}

#[derive(serde::Serialize)]
struct Output<'a> {
    #[serde(flatten)]
    restored: &'a Restored,
    reached: Option<&'a Reached>,
    timings: Timings,
}

pub async fn run(args: RestoreArgs) -> anyhow::Result<u8> {
    let target = if let Some(t) = &args.target_time {
        Target::Time(pgpitr_restore::parse_time(t, args.timezone.as_deref())?)
    } else if let Some(l) = args.target_lsn {
        Target::Lsn(l)
    } else if let Some(x) = args.target_xid {
        Target::Xid(x)
    } else if let Some(n) = &args.target_name {
        Target::Name(n.clone())
    } else {
        match args.target {
            Some(NamedTarget::Immediate) => Target::Immediate,
            _ => Target::Latest,
        }
    };
    let action = match args.target_action {
        Action::Promote => TargetAction::Promote,
        Action::Pause => TargetAction::Pause,
        Action::Shutdown => TargetAction::Shutdown,
    };
    let pgdata = std::path::absolute(&args.pgdata).context("resolve --pgdata")?;
    let url = RepoUrl::parse(&args.repo.repo)?;
    let exe = match &args.restore_command_binary {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => anyhow::bail!("--restore-command-binary {}: give an absolute path", p.display()),
        None => {
            let exe = std::env::current_exe().context("find this program's path for restore_command")?;
            exe.canonicalize().unwrap_or(exe)
        }
    };
    pgpitr_restore::restore::check_target_dir(&pgdata)?;
    let repo = pgpitr_repo::Repository::open_url(&url, pgpitr_repo::Access::Read).await?;
    let opts = RestoreOptions {
        repo_url: url.clone(),
        pgdata: pgdata.clone(),
        request: PlanRequest {
            target,
            inclusive: !args.target_exclusive,
            timeline: args.target_timeline,
            backup: args.backup.clone(),
        },
        action,
        tablespace_map: args.tablespace_map.clone(),
        exe,
        parallelism: args.parallel as usize,
        progress: Default::default(),
        dry_run: args.dry_run,
        // Spooled files must be the server's: --start refuses root.
        prefetch_wal: (args.start || args.wait) && !server::running_as_root(),
    };
    // The binaries that will start the server are checked before anything is written.
    let bindir = if (args.start || args.wait) && !args.dry_run {
        Some(server::pg_bindir_for(args.pg_bindir.as_deref(), repo.major())?)
    } else {
        None
    };
    let display = crate::progress::ProgressDisplay::restore(opts.progress.clone(), !args.json);
    let restored = pgpitr_restore::restore(&repo, &opts).await;
    display.stop().await;
    let restored = restored?;
    if !args.json {
        print_plan(&restored, &opts);
    }
    let reached = if let Some(bindir) = bindir {
        let sopts = StartOptions {
            pgdata,
            bindir,
            port: args.port,
            action,
            wait: args.wait,
            progress: Default::default(),
            run_as: None,
            db_user: None,
        };
        let display = crate::progress::ProgressDisplay::replay(sopts.progress.clone(), !args.json);
        let reached = server::start(&sopts).await;
        display.stop().await;
        Some(reached?)
    } else {
        None
    };
    let timings = Timings {
        plan_secs: restored.plan_secs,
        download_secs: restored.download_secs,
        replay_secs: reached.as_ref().filter(|_| args.wait).map(|r| r.replay_secs),
    };
    if args.json {
        let out = Output { restored: &restored, reached: reached.as_ref(), timings };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(crate::exit::OK);
    }
    if let Some(r) = &reached {
        print_reached(r);
    }
    let replay = timings.replay_secs.map(|s| format!(", replay {s:.1} s")).unwrap_or_default();
    println!("time:    plan {:.1} s, download {:.1} s{replay}", timings.plan_secs, timings.download_secs);
    Ok(crate::exit::OK)
}

fn print_plan(r: &Restored, opts: &RestoreOptions) {
    let p = &r.plan;
    let b = &p.backup;
    println!(
        "backup:  {} (timeline {}, WAL {}..{}, ended {})",
        b.id,
        b.timeline,
        b.start_lsn,
        b.stop_lsn,
        format_time(b.stop_time_us)
    );
    if p.chain.len() > 1 {
        println!("chain:   {} (incremental; full backup first)", p.chain.join(" <- "));
    }
    match p.latest_us {
        Some(latest) => println!(
            "window:  timeline {} is restorable from {} to {}",
            p.timeline,
            format_time(p.earliest_us),
            format_time(latest)
        ),
        // Its end was not read: a stored commit follows the target.
        None => println!("window:  timeline {} is restorable from {}", p.timeline, format_time(p.earliest_us)),
    }
    let how = match &p.recovery {
        RecoveryTarget::None => "to the end of the stored WAL".to_string(),
        RecoveryTarget::Immediate => "to the end of the backup".to_string(),
        RecoveryTarget::Time { time_us, inclusive } => {
            format!("recovery_target_time {}{}", format_time(*time_us), if *inclusive { "" } else { " (exclusive)" })
        }
        RecoveryTarget::Lsn { lsn, inclusive } => {
            format!("recovery_target_lsn {lsn}{}", if *inclusive { "" } else { " (exclusive)" })
        }
        RecoveryTarget::Xid { xid, inclusive } => {
            format!("recovery_target_xid {xid}{}", if *inclusive { "" } else { " (exclusive)" })
        }
        RecoveryTarget::Name { name } => format!("recovery_target_name {name:?}"),
    };
    println!("target:  {} -> {how} on timeline {}, then {}", opts.request.target, p.timeline, opts.action.as_str());
    if let Some(c) = p.last_commit {
        println!("expect:  last commit replayed {} at {}", format_time(c.time_us), c.lsn);
    }
    if let Some(c) = p.first_excluded {
        println!("         first commit not replayed {} at {}", format_time(c.time_us), c.lsn);
    }
    println!("WAL:     {}..{} stored without gaps", b.start_lsn, p.wal_end);
    if let Some(n) = &p.note {
        println!("note:    {n}");
    }
    if opts.dry_run {
        println!("dry run: nothing written");
        return;
    }
    println!(
        "restored {} files ({:.1} MB) into {} with recovery.signal and postgresql.auto.conf",
        r.files,
        r.bytes as f64 / 1e6,
        r.pgdata.display()
    );
    if server::running_as_root() {
        println!(
            "owner:   the files belong to root; hand them to the server's user first: chown -R postgres: {}",
            r.pgdata.display()
        );
    }
    println!("start:   pg_ctl -D {} start   (S3 credentials must be in the server's environment)", r.pgdata.display());
}

fn print_reached(r: &Reached) {
    if let Some(m) = &r.stop_message {
        println!("stopped: {m}");
    }
    println!(
        "reached: {}; last replayed commit {} at LSN {}{}",
        r.state,
        r.last_replayed_commit_time.as_deref().unwrap_or("none"),
        r.last_replayed_lsn.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
        r.timeline.map(|t| format!(", now on timeline {t}")).unwrap_or_default()
    );
}
