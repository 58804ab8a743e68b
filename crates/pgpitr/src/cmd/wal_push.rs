//! `pgpitr wal-push`, PostgreSQL's `archive_command`.

use crate::cli::RepoOpts;
use anyhow::Context as _;
use clap::Args;
use pgpitr_archive::push::{Pushed, push_segment};
use pgpitr_types::WalFileName;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct WalPushArgs {
    #[command(flatten)]
    pub repo: RepoOpts,
    /// The file to archive (%p, relative to the data directory).
    pub path: PathBuf,
}

pub async fn run(args: WalPushArgs) -> anyhow::Result<u8> {
    let name = args
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a WAL file name", args.path.display()))?
        .to_string();
    // Read-only credentials suffice to open; the write itself is the test.
    let repo = super::open_repo(&args.repo.repo, pgpitr_repo::Access::Read).await?;
    let seg = repo.seg_size();
    let file = WalFileName::parse(&name, seg).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let read =
        || async { tokio::fs::read(&args.path).await.with_context(|| format!("cannot read {}", args.path.display())) };
    match file {
        WalFileName::Segment { tli, segno } => {
            let raw = bytes::Bytes::from(read().await?);
            match push_segment(&repo, tli, segno, raw, &name).await? {
                Pushed::Stored => tracing::info!(file = %name, "archived"),
                Pushed::AlreadyStored => tracing::info!(file = %name, "already in the repository"),
            }
        }
        WalFileName::History { tli } => {
            let content = bytes::Bytes::from(read().await?);
            pgpitr_types::TimelineHistory::parse(tli, &String::from_utf8_lossy(&content))
                .map_err(|e| anyhow::anyhow!("{name}: not a timeline history: {e}"))?;
            pgpitr_archive::start::store_history(&repo, tli, &content).await?;
            tracing::info!(file = %name, "archived");
        }
        // A promoted standby's last segment of the old timeline: the new
        // timeline's first segment holds the same WAL up to the switch,
        // which is what every restore on it replays. Backup history files
        // are not needed either: backups carry their own metadata.
        WalFileName::Partial { .. } | WalFileName::Backup { .. } => {
            tracing::info!(file = %name, "not needed for restores; not stored");
        }
    }
    Ok(crate::exit::OK)
}
