//! `pgpitr verify`: check every stored object a restore would read.

use crate::cli::VerifyArgs;
use indicatif::HumanBytes;

pub async fn run(args: VerifyArgs) -> anyhow::Result<u8> {
    let repo = super::open_repo(&args.repo.repo, pgpitr_repo::Access::Read).await?;
    let report = pgpitr_repo::verify::verify(&repo, args.backup.as_deref()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "checked {} backup(s) ({} objects) and {} WAL objects: {} read",
            report.backups,
            report.backup_objects,
            report.wal_objects,
            HumanBytes(report.bytes)
        );
        for p in &report.problems {
            println!("PROBLEM {}: {}", p.object, p.problem);
        }
        for u in &report.unindexed {
            println!(
                "NOTE {}: commit-time index incomplete for {} .. {} (restores to a time after it use recovery_target_time)",
                u.object, u.start_lsn, u.end_lsn
            );
        }
    }
    match report.problems.first() {
        None => Ok(crate::exit::OK),
        Some(first) => anyhow::bail!(
            "verify found {} problem(s) in {}; the first: {}: {}",
            report.problems.len(),
            repo.location(),
            first.object,
            first.problem
        ),
    }
}
