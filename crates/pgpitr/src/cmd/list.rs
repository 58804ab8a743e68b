use crate::cli::ListArgs;
use crate::status;
use indicatif::HumanBytes;
use pgpitr_repo::RepoError;
use pgpitr_repo::catalog::Catalog;

pub async fn run(args: ListArgs) -> anyhow::Result<u8> {
    let repo = super::open_repo(&args.repo.repo, pgpitr_repo::Access::Read).await?;
    // Loading lists again by itself; reading the summaries may meet an
    // object merged away since, which a new reading settles.
    let st = pgpitr_repo::relisting(RepoError::is_not_found, || async {
        let mut cat = Catalog::load(&repo).await?;
        status::status(&mut cat, args.index).await
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(crate::exit::OK);
    }
    println!("repository:     {}", repo.location());
    println!("cluster:        {} (PostgreSQL {})", st.system_identifier, st.pg_major);
    println!(
        "latest restorable time: {}",
        st.latest_restorable_time.as_deref().unwrap_or("none (no complete base backup yet)")
    );
    if let Some(c) = &st.latest_commit_time {
        println!("latest commit stored: {c}");
    }
    println!(
        "earliest restorable time: {}",
        st.earliest_restorable_time.as_deref().unwrap_or("none (no complete base backup yet)")
    );
    for s in &st.streams {
        println!(
            "stream {} [{}]: timeline {}, durable up to {}, {} pid {}, renewed {}",
            s.slot,
            if s.live { "running" } else { "stale" },
            s.timeline,
            s.durable_lsn,
            s.host,
            s.pid,
            s.updated_at
        );
    }
    if st.backups.is_empty() {
        println!("backups: none");
    }
    for b in &st.backups {
        let dash = || "-".to_string();
        println!(
            "backup {} [{}] {:?}: timeline {}, WAL {} .. {}, stopped {}, {} ({} stored)",
            b.id,
            b.status.as_str(),
            b.label.as_deref().unwrap_or(""),
            b.timeline.map(|t| t.to_string()).unwrap_or_else(dash),
            b.start_lsn.map(|l| l.to_string()).unwrap_or_else(dash),
            b.stop_lsn.map(|l| l.to_string()).unwrap_or_else(dash),
            b.stop_time.clone().unwrap_or_else(dash),
            b.size_bytes.map(|n| HumanBytes(n).to_string()).unwrap_or_else(dash),
            b.stored_bytes.map(|n| HumanBytes(n).to_string()).unwrap_or_else(dash),
        );
        if let Some(r) = st.retention.iter().find(|r| r.id == b.id) {
            let reach = match r.restorable {
                "point_in_time" => "to any time from its end on",
                "to_its_end" => "to its end only (no WAL after it)",
                "as_a_parent" => "only through the incremental backups built on it (its own WAL is gone)",
                _ => "NOT restorable (its own WAL is incomplete)",
            };
            let kept = match (&st.retention_policy, r.kept_by.is_empty()) {
                (None, _) => String::new(),
                (Some(_), true) => "; the next expire deletes it".into(),
                (Some(_), false) => {
                    let why: Vec<String> = r.kept_by.iter().map(|k| k.describe()).collect();
                    format!("; kept by {}", why.join(", "))
                }
            };
            let held = if b.keep_forever { " [held]" } else { "" };
            let reach = match &r.chain_problem {
                Some(p) => format!("NOT restorable: {p}"),
                None => format!("restorable {reach}"),
            };
            println!("  {reach}{kept}{held}");
            if r.chain.len() > 1 {
                println!("  incremental: chain of {} backups, {}", r.chain.len(), r.chain.join(" <- "));
            }
        }
    }
    if st.timelines.is_empty() {
        println!("WAL: none stored yet");
    }
    for t in &st.timelines {
        println!(
            "timeline {}: WAL {} .. {} ({} objects, {} bytes stored){}",
            t.timeline,
            t.start_lsn,
            t.end_lsn,
            t.objects,
            t.stored_bytes,
            t.latest_commit_time.as_ref().map(|c| format!(", latest commit {c}")).unwrap_or_default()
        );
        if let (Some(e), Some(l)) = (&t.earliest_restorable_time, &t.latest_restorable_time) {
            println!("  restorable: {e} .. {l}");
        }
        for g in &t.gaps {
            println!("  GAP: {} .. {} is missing", g.start_lsn, g.end_lsn);
        }
        for u in st.unindexed.iter().flatten().filter(|u| u.timeline == t.timeline) {
            println!(
                "  INDEX INCOMPLETE: {} .. {} ({}): restores to a time after it use recovery_target_time",
                u.start_lsn, u.end_lsn, u.object
            );
        }
    }
    if st.unindexed.as_ref().is_some_and(|u| u.is_empty()) {
        println!("commit-time index: complete");
    }
    for d in &st.drills {
        let failed = d.failed_checks();
        let verdict = match (&d.error, d.ok) {
            (_, true) => "passed".to_string(),
            (Some(e), false) => format!("FAILED: {e}"),
            (None, false) if !failed.is_empty() => format!("FAILED: {}", failed.join(", ")),
            (None, false) => "FAILED: RTO above its objective".to_string(),
        };
        let rto = d.rto_seconds.map(|s| format!("RTO {s:.1} s")).unwrap_or_else(|| "no RTO".into());
        println!("drill {} [{verdict}]: {} -> {}, {rto}, {} checks", d.id, d.target, d.recovery_target, d.checks.len());
    }
    Ok(crate::exit::OK)
}
