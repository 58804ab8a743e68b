use crate::cli::{BackupArgs, Checkpoint, Compress, IncrementalArg, LogFormat};
use crate::conn;
use crate::progress::ProgressDisplay;
use indicatif::HumanBytes;
use pgpitr_backup::{Algorithm, BackupOptions, CheckpointMode, Compression, IncrementalMethod, IncrementalMode};
use pgpitr_repo::Repository;
use pgpitr_repo::backup::{BackupInfo, WalSource};
use pgpitr_storage::RepoUrl;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub fn checkpoint_mode(c: Checkpoint) -> CheckpointMode {
    match c {
        Checkpoint::Fast => CheckpointMode::Fast,
        Checkpoint::Spread => CheckpointMode::Spread,
    }
}

pub fn compression(c: Option<Compress>) -> Compression {
    match c {
        None => Compression::Auto,
        Some(Compress::ServerLz4) => Compression::Server(Algorithm::Lz4),
        Some(Compress::ServerZstd) => Compression::Server(Algorithm::Zstd),
        Some(Compress::ClientLz4) => Compression::Client(Algorithm::Lz4),
        Some(Compress::ClientZstd) => Compression::Client(Algorithm::Zstd),
        Some(Compress::None) => Compression::None,
    }
}

/// `backup hold|release ID`.
async fn hold(repo: &str, id: &str, hold: bool) -> anyhow::Result<u8> {
    let bid = pgpitr_repo::backup::BackupId::parse(id)
        .ok_or_else(|| anyhow::anyhow!("{id:?} is not a backup ID (as `pgpitr list` shows them)"))?;
    let repo = super::open_repo(repo, pgpitr_repo::Access::Write).await?;
    let info = pgpitr_repo::backup::set_hold(repo.storage().as_ref(), &bid, hold).await?;
    let what = if hold { "held: no retention rule deletes it" } else { "released: the retention rules apply to it" };
    println!("backup {} (stopped {}) {what}", info.id, info.stop_time);
    Ok(crate::exit::OK)
}

pub async fn run(args: BackupArgs, log_format: LogFormat) -> anyhow::Result<u8> {
    if let (Some(action), Some(id)) = (args.hold, &args.held_id) {
        return hold(&args.repo.repo, id, action == crate::cli::HoldAction::Hold).await;
    }
    let url = RepoUrl::parse(&args.repo.repo)?;
    let cfg = conn::config(&args.conn, "pgpitr_backup")?;
    let (repo, _) = super::bind_repo(&url, &cfg, None).await?;
    let opts = BackupOptions {
        label: args.label.clone(),
        keep_forever: args.keep_forever,
        checkpoint: checkpoint_mode(args.checkpoint),
        allow_checksum_failures: args.allow_checksum_failures,
        wal_timeout: args.wal_timeout,
        part_size: args.part_size,
        max_in_flight: args.parallel as usize,
        max_rate_kbps: args.max_rate,
        compression: compression(args.compress),
        zstd_level: args.zstd_level,
        incremental: match args.incremental {
            None => IncrementalMode::Off,
            Some(IncrementalArg::Auto) => IncrementalMode::Require(None),
            Some(IncrementalArg::Native) => IncrementalMode::Require(Some(IncrementalMethod::Native)),
            Some(IncrementalArg::Delta) => IncrementalMode::Require(Some(IncrementalMethod::Delta)),
        },
        max_chain: args.max_chain,
        ..BackupOptions::default()
    };
    let cancel = CancellationToken::new();
    crate::signals::cancel_on_signal(cancel.clone())?;
    let began = Instant::now();
    let display = ProgressDisplay::start(opts.progress.clone(), matches!(log_format, LogFormat::Text));
    let result = pgpitr_backup::take_backup(&repo, &cfg, &opts, &cancel).await;
    display.stop().await;
    let info = result?;
    for f in &info.checksum_failures {
        tracing::warn!(
            file = f.file.as_deref().unwrap_or("unknown"),
            "kept despite a page checksum failure: {}",
            f.message
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print_summary(&info, &repo, began.elapsed());
    }
    Ok(crate::exit::OK)
}

fn print_summary(info: &BackupInfo, repo: &Repository, took: std::time::Duration) {
    println!("backup {} complete in {}", info.id, repo.location());
    println!("  label:     {}", info.label);
    println!("  timeline:  {}, WAL {} .. {}", info.timeline, info.start_lsn, info.stop_lsn);
    println!("  time:      {} .. {}", info.start_time, info.stop_time);
    println!(
        "  size:      {} in {} files ({} stored), {} tablespace(s)",
        HumanBytes(info.size_bytes),
        info.file_count,
        HumanBytes(info.stored_bytes),
        info.archives.len().saturating_sub(1)
    );
    println!(
        "  stored:    compression {}, WAL {}",
        info.compression.as_deref().unwrap_or("client-lz4"),
        wal_source(info.wal_source)
    );
    match &info.incremental {
        Some(i) => println!(
            "  kind:      incremental ({}) to {} (from {} on timeline {}), chain of {} backups",
            i.method.as_str(),
            i.parent,
            i.from_lsn,
            i.from_tli,
            i.chain_length
        ),
        None => println!("  kind:      full"),
    }
    println!("  took:      {:.1} s", took.as_secs_f64());
    if !info.checksum_failures.is_empty() {
        println!("  WARNING:   {} page checksum failure(s) recorded", info.checksum_failures.len());
    }
}

fn wal_source(s: WalSource) -> &'static str {
    match s {
        WalSource::Repository => "stored by a running stream (or already there)",
        WalSource::Fetched => "fetched by the backup itself",
    }
}
