use crate::cli::ListArgs;
use pgpitr_repo::status;

pub async fn run(args: ListArgs) -> anyhow::Result<u8> {
    let repo = super::open_repo(&args.repo.repo).await?;
    let st = status::status(&repo).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(crate::exit::OK);
    }
    println!("repository:     {}", repo.location());
    println!("cluster:        {} (PostgreSQL {})", st.system_identifier, st.pg_major);
    println!(
        "latest restorable time: {}",
        st.latest_restorable_time.as_deref().unwrap_or("none (no commit stored yet)")
    );
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
        for g in &t.gaps {
            println!("  GAP: {} .. {} is missing", g.start_lsn, g.end_lsn);
        }
    }
    Ok(crate::exit::OK)
}
