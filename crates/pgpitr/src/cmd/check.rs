//! `pgpitr check`: does the setup work, end to end? One finding per line.

use crate::cli::{ConnOpts, RepoOpts};
use clap::Args;
use pgpitr_pgwire::{ReplicationConnection, SimpleRow, quote_literal};
use pgpitr_repo::backup::BackupStatus;
use pgpitr_repo::wal::WalObjectId;
use pgpitr_types::{Lsn, TimelineId};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub repo: RepoOpts,
    #[command(flatten)]
    pub conn: ConnOpts,
    /// The replication slot the stream uses.
    #[arg(long, env = "PGPITR_SLOT", default_value = "pgpitr")]
    pub slot: String,
    /// Force a segment switch (pg_switch_wal(); needs EXECUTE on it) and
    /// wait for the switched segment to be durable, instead of a fresh
    /// commit.
    #[arg(long)]
    pub switch_wal: bool,
    /// How long the fresh commit (or switch) may take to become durable.
    #[arg(long, value_parser = crate::cli::parse_duration, default_value = "10s", value_name = "DURATION")]
    pub timeout: Duration,
    /// Warn when the newest complete backup is older than this.
    #[arg(long, value_parser = crate::cli::parse_retention, default_value = "8d", value_name = "DURATION")]
    pub max_backup_age: Duration,
    /// Warn when the newest passed restore drill is older than this (once
    /// drills exist).
    #[arg(long, value_parser = crate::cli::parse_retention, default_value = "8d", value_name = "DURATION")]
    pub max_drill_age: Duration,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Finding {
    check: &'static str,
    status: Status,
    detail: String,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    ok: bool,
    findings: Vec<Finding>,
}

impl Report {
    fn add(&mut self, check: &'static str, status: Status, detail: impl Into<String>) {
        self.findings.push(Finding { check, status, detail: detail.into() });
    }

    fn ok(&mut self, check: &'static str, detail: impl Into<String>) {
        self.add(check, Status::Ok, detail)
    }

    fn warn(&mut self, check: &'static str, detail: impl Into<String>) {
        self.add(check, Status::Warn, detail)
    }

    fn fail(&mut self, check: &'static str, detail: impl Into<String>) {
        self.add(check, Status::Fail, detail)
    }

    fn worst(&self) -> Status {
        self.findings.iter().map(|f| f.status).max_by_key(|s| *s as u8).unwrap_or(Status::Ok)
    }
}

pub async fn run(args: CheckArgs) -> anyhow::Result<u8> {
    let mut report = Report::default();
    server_and_repository(&args, &mut report).await;
    report.ok = report.worst() == Status::Ok;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for f in &report.findings {
            let tag = match f.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!("{tag} {}: {}", f.check, f.detail);
        }
    }
    Ok(match report.worst() {
        Status::Ok => crate::exit::OK,
        Status::Warn => crate::exit::WARNINGS,
        Status::Fail => crate::exit::FAILURE,
    })
}

/// Every check, in order; one that others depend on ends the run when it fails.
async fn server_and_repository(args: &CheckArgs, report: &mut Report) {
    let cfg = match crate::conn::config(&args.conn, "pgpitr check") {
        Ok(c) => c,
        Err(e) => return report.fail("connection", format!("{e:#}")),
    };
    let target = cfg.display_target();
    let mut repl = match ReplicationConnection::connect(&cfg).await {
        Ok(c) => c,
        Err(e) => {
            let text = e.to_string();
            if text.contains("REPLICATION attribute")
                || text.contains("replication role")
                || text.contains("WAL sender")
            {
                report.ok("connection", format!("{target} accepts {}", cfg.user()));
                return report.fail(
                    "replication attribute",
                    format!("role {} lacks REPLICATION: ALTER ROLE {} REPLICATION ({text})", cfg.user(), cfg.user()),
                );
            }
            return report.fail("connection", text);
        }
    };
    let (system, identity) = match repl.cluster_identity().await {
        Ok(id) => id,
        Err(e) => return report.fail("connection", e.to_string()),
    };
    let version = repl.parameter("server_version").unwrap_or("?").to_string();
    report.ok("connection", format!("{target} as {}, PostgreSQL {version}", cfg.user()));
    report.ok("replication attribute", format!("role {} may replicate", cfg.user()));
    match repl.show("wal_level").await {
        Ok(l) if l == "minimal" => {
            report.fail("wal_level", "minimal: set wal_level = replica (or logical) and restart")
        }
        Ok(l) => report.ok("wal_level", l),
        Err(e) => report.fail("wal_level", e.to_string()),
    }
    repl.close().await;

    // The rest asks SQL: a walsender connection to a database.
    let mut sql = match ReplicationConnection::connect(&cfg.for_sql()).await {
        Ok(c) => c,
        Err(e) => return report.fail("connection", format!("SQL connection: {e}")),
    };
    let slot = slot_state(&mut sql, &args.slot, report).await;
    let repo = repository(args, &identity, report).await;
    if let Some(repo) = &repo {
        if slot.active {
            durable(&mut sql, args, repo, system.timeline, report).await;
        } else if let Some(detail) = archived_by_wal_push(&mut sql, repo).await {
            // No slot is what such a setup has.
            if let Some(f) = report.findings.iter_mut().find(|f| f.check == "slot" && f.status == Status::Warn) {
                f.status = Status::Ok;
                f.detail = format!("{} (none needed: archive_command archives)", f.detail);
            }
            report.ok("archiving", detail);
        } else {
            report.fail(
                "stream",
                format!(
                    "no stream is connected to slot {}, and archive_command stores nothing here: WAL is not being \
                     archived",
                    args.slot
                ),
            );
        }
        backups_and_drills(args, repo, report).await;
    }
    sql.close().await;
}

/// Archiving by archive_command (`pgpitr wal-push`) into this repository:
/// its last archived segment is newer than its last failure, and stored.
async fn archived_by_wal_push(sql: &mut ReplicationConnection, repo: &pgpitr_repo::Repository) -> Option<String> {
    let q = "SELECT current_setting('archive_mode'), coalesce(last_archived_wal, ''), \
             coalesce(last_archived_time::text, ''), \
             (last_failed_time IS NULL OR last_failed_time < last_archived_time)::text FROM pg_stat_archiver";
    let rows = sql.simple_query(q).await.ok()?;
    let row = rows.first()?;
    let last = row.get(1).filter(|w| !w.is_empty())?;
    if row.get(0) == Some("off") || row.get(3) != Some("true") {
        return None;
    }
    let seg = repo.seg_size();
    let pgpitr_types::WalFileName::Segment { tli, segno } = pgpitr_types::WalFileName::parse(last, seg).ok()? else {
        return None;
    };
    repo.storage().head(&WalObjectId::segment(tli, segno).key(seg)).await.ok()?;
    Some(format!("archive_command stores into the repository: last archived {last} at {}", row.get(2).unwrap_or("?")))
}

#[derive(Debug, Default)]
struct Slot {
    active: bool,
}

fn cell(rows: &[SimpleRow], col: usize) -> Option<&str> {
    rows.first().and_then(|r| r.get(col))
}

/// Free walsenders and replication slots, and the slot's state.
async fn slot_state(sql: &mut ReplicationConnection, slot: &str, report: &mut Report) -> Slot {
    // This connection is a walsender itself.
    let q = "SELECT current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int + 1, \
             current_setting('max_wal_senders'), \
             current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int";
    let (free_senders, free_slots) = match sql.simple_query(q).await {
        Ok(rows) => {
            let n = |c| cell(&rows, c).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            report.add(
                "walsenders",
                if n(0) > 0 { Status::Ok } else { Status::Warn },
                format!("{} of max_wal_senders = {} free", n(0), cell(&rows, 1).unwrap_or("?")),
            );
            (n(0), n(2))
        }
        Err(e) => {
            report.fail("walsenders", e.to_string());
            (0, 0)
        }
    };
    let q = format!(
        "SELECT active::text, coalesce(wal_status, ''), \
         coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
         ELSE pg_current_wal_lsn() END, restart_lsn)::bigint, -1), slot_type \
         FROM pg_replication_slots WHERE slot_name = {}",
        quote_literal(slot)
    );
    let rows = match sql.simple_query(&q).await {
        Ok(r) => r,
        Err(e) => {
            report.fail("slot", e.to_string());
            return Slot::default();
        }
    };
    let Some(row) = rows.first() else {
        let status = if free_slots > 0 && free_senders > 0 { Status::Warn } else { Status::Fail };
        report.add(
            "slot",
            status,
            format!("{slot} does not exist: `pgpitr stream` creates it ({free_slots} replication slots free)"),
        );
        return Slot::default();
    };
    let active = row.get(0) == Some("true");
    let retained = row.get(2).and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1);
    let held = if retained >= 0 {
        format!("retains {}", indicatif::HumanBytes(retained as u64))
    } else {
        "retains nothing".into()
    };
    let status = match (row.get(3), row.get(1)) {
        (Some(t), _) if t != "physical" => {
            report.fail("slot", format!("{slot} is a {t} slot, not a physical one"));
            return Slot::default();
        }
        (_, Some("lost")) => Status::Fail,
        (_, Some("unreserved")) => Status::Warn,
        _ if !active => Status::Warn,
        _ => Status::Ok,
    };
    let state = match row.get(1) {
        Some("") | None => String::new(),
        Some(s) => format!(", wal_status {s}"),
    };
    report.add("slot", status, format!("{slot} {}{state}, {held}", if active { "active" } else { "inactive" }));
    Slot { active }
}

/// Reachable, writable, bound to this cluster.
async fn repository(
    args: &CheckArgs,
    identity: &pgpitr_repo::ClusterIdentity,
    report: &mut Report,
) -> Option<pgpitr_repo::Repository> {
    let repo = match super::open_repo(&args.repo.repo, pgpitr_repo::Access::Write).await {
        Ok(r) => r,
        Err(e) => {
            report.fail("repository", format!("{e:#}"));
            return None;
        }
    };
    if let Err(e) = repo.check_cluster(identity) {
        report.fail("repository", e.to_string());
        return None;
    }
    report.ok("repository", format!("{} is writable and bound to this cluster", repo.location()));
    Some(repo)
}

/// A fresh commit (or a switched segment) durable in the repository within
/// the timeout: the server's view of the stream's flush position first,
/// then the repository's own objects.
async fn durable(
    sql: &mut ReplicationConnection,
    args: &CheckArgs,
    repo: &pgpitr_repo::Repository,
    tli: TimelineId,
    report: &mut Report,
) {
    let name = "stream";
    let make = if args.switch_wal {
        "SELECT pg_switch_wal()::text"
    } else {
        // An assigned transaction ID makes the statement's end a commit record.
        "SELECT pg_current_xact_id()::text"
    };
    let started = Instant::now();
    let target = match sql.simple_query("SELECT pg_is_in_recovery()::text").await {
        Ok(rows) if cell(&rows, 0) == Some("true") => {
            match sql.simple_query("SELECT pg_last_wal_receive_lsn()::text").await {
                Ok(rows) => cell(&rows, 0).and_then(|v| v.parse::<Lsn>().ok()),
                Err(e) => return report.fail(name, e.to_string()),
            }
        }
        Ok(_) => match sql.simple_query(make).await {
            // Asked after: the commit record is written as the statement ends.
            Ok(_) => match sql.simple_query("SELECT pg_current_wal_flush_lsn()::text").await {
                Ok(rows) => cell(&rows, 0).and_then(|v| v.parse::<Lsn>().ok()),
                Err(e) => return report.fail(name, e.to_string()),
            },
            Err(e) => return report.fail(name, e.to_string()),
        },
        Err(e) => return report.fail(name, e.to_string()),
    };
    let Some(target) = target else { return report.fail(name, "the server gave no WAL position") };
    let q = format!(
        "SELECT coalesce(r.flush_lsn, '0/0')::text FROM pg_replication_slots s \
         LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = {}",
        quote_literal(&args.slot)
    );
    loop {
        let flushed = match sql.simple_query(&q).await {
            Ok(rows) => cell(&rows, 0).and_then(|v| v.parse::<Lsn>().ok()).unwrap_or(Lsn(0)),
            Err(e) => return report.fail(name, e.to_string()),
        };
        if flushed >= target {
            break;
        }
        if started.elapsed() > args.timeout {
            return report.fail(
                name,
                format!("WAL up to {target} was not durable within {:?}: the stream reports {flushed}", args.timeout),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    match stored(repo, tli, target).await {
        Ok(true) => report.ok(
            name,
            format!(
                "{} at {target} durable in the repository after {:.2} s",
                if args.switch_wal { "a segment switch" } else { "a fresh commit" },
                took.as_secs_f64()
            ),
        ),
        Ok(false) => report.fail(
            name,
            format!("the stream reported {target} flushed, but the repository holds no WAL object reaching it"),
        ),
        Err(e) => report.fail(name, format!("{e:#}")),
    }
}

/// Whether a stored WAL object of `tli` holds the byte before `lsn`.
async fn stored(repo: &pgpitr_repo::Repository, tli: TimelineId, lsn: Lsn) -> anyhow::Result<bool> {
    let seg = repo.seg_size();
    let last = Lsn(lsn.0.saturating_sub(1));
    let segno = last.segment_number(seg);
    let dir = WalObjectId::segment(tli, segno).key(seg);
    let objects = repo.storage().list(&dir).await?;
    Ok(objects.iter().filter_map(|m| WalObjectId::parse(&m.key, seg)).any(|id| {
        let (start, end) = id.range(seg);
        id.tli == tli && start <= last && end >= lsn
    }))
}

async fn backups_and_drills(args: &CheckArgs, repo: &pgpitr_repo::Repository, report: &mut Report) {
    let now = jiff::Timestamp::now();
    let cat = match pgpitr_repo::catalog::Catalog::load(repo).await {
        Ok(c) => c,
        Err(e) => return report.fail("backups", e.to_string()),
    };
    let newest = cat
        .backups()
        .iter()
        .filter(|b| b.status(now, pgpitr_repo::backup::STALE_AFTER) == BackupStatus::Complete)
        .filter_map(|b| b.info.as_ref())
        .filter_map(|i| i.stop_time.parse::<jiff::Timestamp>().ok().map(|t| (t, i.id.clone())))
        .max();
    match newest {
        None => report
            .fail("backups", "no complete backup: nothing can be restored (`pgpitr backup`, or stream --backup-every)"),
        Some((t, id)) => {
            let age = Duration::from_secs(now.duration_since(t).as_secs().max(0) as u64);
            let detail = format!("newest complete backup {id}, {} old", humantime_secs(age));
            if age > args.max_backup_age {
                report.warn("backups", format!("{detail} (more than --max-backup-age)"))
            } else {
                report.ok("backups", detail)
            }
        }
    }
    match repo.recent_drills(1).await {
        Ok(drills) => match drills.first() {
            None => report.ok("drills", "none yet (`pgpitr drill`, or stream --drill-every)"),
            Some(d) if !d.ok => report.warn("drills", format!("the newest drill {} failed", d.id)),
            Some(d) => {
                let age = d
                    .finished_at
                    .parse::<jiff::Timestamp>()
                    .map(|t| Duration::from_secs(now.duration_since(t).as_secs().max(0) as u64))
                    .unwrap_or(Duration::MAX);
                let detail = format!("the newest drill {} passed, {} ago", d.id, humantime_secs(age));
                if age > args.max_drill_age {
                    report.warn("drills", format!("{detail} (more than --max-drill-age)"))
                } else {
                    report.ok("drills", detail)
                }
            }
        },
        Err(e) => report.fail("drills", e.to_string()),
    }
}

fn humantime_secs(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}m {}s", s / 60, s % 60),
    }
}
