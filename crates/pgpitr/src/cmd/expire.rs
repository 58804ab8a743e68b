//! `pgpitr expire`: apply a retention policy to the repository.

use crate::cli::ExpireArgs;
use anyhow::Context;
use indicatif::HumanBytes;
use pgpitr_repo::retention;

pub async fn run(args: ExpireArgs) -> anyhow::Result<u8> {
    let repo = super::open_repo(&args.repo.repo, pgpitr_repo::Access::Write).await?;
    let policy = args.retention.policy().context("give at least one --keep-* rule")?;
    let plan = retention::plan(&repo, &policy, jiff::Timestamp::now()).await?;
    // Applied even when nothing goes: it records the policy for `list`.
    let applied = if args.dry_run { None } else { Some(retention::apply(&repo, &plan).await?) };
    if args.json {
        let out = serde_json::json!({ "dry_run": args.dry_run, "plan": plan, "deleted": applied });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(crate::exit::OK);
    }
    let verb = if args.dry_run { "would delete" } else { "deleted" };
    if plan.kept_backups.is_empty() {
        println!("no complete base backup in {}: nothing to expire, WAL kept", repo.location());
        return Ok(crate::exit::OK);
    }
    println!("keeping {} backup(s):", plan.kept.len());
    for k in &plan.kept {
        let why: Vec<String> = k.kept_by.iter().map(|r| r.describe()).collect();
        let reach = if k.point_in_time { "point in time" } else { "to its end only" };
        println!(
            "  {} (stopped {}): {}; restorable {reach}",
            k.id,
            k.stop_time.as_deref().unwrap_or("?"),
            why.join(", ")
        );
    }
    for b in &plan.expired_backups {
        let stored = b.stored_bytes.map(|n| HumanBytes(n).to_string()).unwrap_or_else(|| "?".into());
        println!("{verb} backup {} (stopped {}, {stored})", b.id, b.stop_time.as_deref().unwrap_or("?"));
    }
    for id in &plan.leftover_backups {
        println!("{verb} leftover of interrupted backup {id}");
    }
    match plan.wal_horizon {
        Some(h) if plan.wal_objects > 0 => {
            println!("{verb} {} WAL objects ({}) before {h}", plan.wal_objects, HumanBytes(plan.wal_bytes))
        }
        _ => println!("no WAL to delete"),
    }
    if plan.old_drill_reports > 0 {
        println!("{verb} the {} oldest drill reports", plan.old_drill_reports);
    }
    println!("earliest restorable time: {}", plan.earliest_restorable_time.as_deref().unwrap_or("none"));
    Ok(crate::exit::OK)
}
