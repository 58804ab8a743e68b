use crate::cli::StreamArgs;
use crate::conn;
use crate::progress::ProgressDisplay;
use pgpitr_backup::{BackupOptions, WalMode};
use pgpitr_repo::mirror::Mirror;
use pgpitr_storage::RepoUrl;
use pgpitr_stream::{Archiver, StreamConfig, StreamStats};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn run(args: StreamArgs, log_format: crate::cli::LogFormat) -> anyhow::Result<u8> {
    let url = RepoUrl::parse(&args.repo.repo)?;
    let app_name = args.application_name.clone().unwrap_or_else(|| args.slot.clone());
    let mut cfg = conn::config(&args.conn, &app_name)?;
    if args.application_name.is_some() {
        cfg.set_application_name(app_name.clone());
    }
    if args.retention.policy().is_some() && args.backup_every.is_none() {
        // The PGPITR_KEEP_* variables may be set for `pgpitr expire` beside it.
        tracing::warn!(
            "retention rules (--keep-*, PGPITR_KEEP_*) apply after scheduled backups only: ignored without --backup-every"
        );
    }
    let cancel = CancellationToken::new();
    crate::signals::cancel_on_signal(cancel.clone())?;
    // Fail fast on bad settings, credentials or storage before daemonising;
    // a signal meanwhile (a server that does not answer) stops at once.
    let (repo, _) = tokio::select! {
        r = super::bind_repo(&url, &cfg, None) => r?,
        _ = cancel.cancelled() => {
            tracing::info!("stopped before streaming started");
            return Ok(crate::exit::OK);
        }
    };
    let copying = match &args.copy_to {
        Some(to) => {
            let copy = tokio::select! {
                r = mirrored(&url, to, &repo, args.copy_sync) => r?,
                _ = cancel.cancelled() => {
                    tracing::info!("stopped before streaming started");
                    return Ok(crate::exit::OK);
                }
            };
            Some(copy)
        }
        None => None,
    };
    let repo = match &copying {
        Some(c) => c.repo.clone(),
        None => repo,
    };
    let metrics = match &args.metrics_addr {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let stream_cfg = StreamConfig {
        slot: args.slot.clone(),
        flush_interval: args.flush_interval,
        status_interval: args.status_interval,
        synchronous: args.synchronous,
        max_segments_in_flight: args.max_segments_in_flight as usize,
        shutdown_timeout: args.shutdown_timeout,
        create_slot: !args.no_create_slot,
        backup_now: args.backup_every.map(|_| Arc::new(tokio::sync::Notify::new())),
    };
    let stats = Arc::new(StreamStats::default());
    tracing::info!(
        repo = %repo.location(),
        server = %cfg.display_target(),
        slot = %args.slot,
        application_name = %app_name,
        synchronous = args.synchronous,
        "pgpitr stream starting"
    );
    let schedule_stats = args.backup_every.map(|_| Arc::new(pgpitr_backup::ScheduleStats::default()));
    let drill_stats = args.drill_every.map(|_| Arc::new(crate::drills::DrillStats::default()));
    if let Some(listener) = metrics {
        let sources = crate::metrics::Sources {
            stream: stats.clone(),
            schedule: schedule_stats.clone(),
            drills: drill_stats.clone(),
            copy: copying.as_ref().map(|c| c.mirror.stats()),
        };
        crate::metrics::serve(listener, sources, &args.slot, cancel.clone());
    }
    let drills = args.drill_every.zip(drill_stats).map(|(every, stats)| {
        tracing::info!(every = ?every, "scheduled restore drills enabled");
        let schedule =
            crate::drills::DrillSchedule { every, args: args.drill_args(log_format), repo: args.repo.repo.clone() };
        tokio::spawn(crate::drills::run_scheduled(repo.clone(), schedule, stats, cancel.clone()))
    });
    let scheduler = args.backup_every.zip(schedule_stats.clone()).map(|(every, outcomes)| {
        // Its own application_name: the backup's walsenders are no standby.
        let mut backup_cfg = cfg.clone();
        backup_cfg.set_application_name(format!("{app_name}_backup"));
        let opts = BackupOptions {
            label: "pgpitr scheduled".to_string(),
            checkpoint: super::backup::checkpoint_mode(args.backup_checkpoint),
            wal_mode: WalMode::Stream,
            max_chain: args.max_chain,
            ..BackupOptions::default()
        };
        let retention = args.retention.policy();
        tracing::info!(every = ?every, ?retention, "scheduled base backups enabled");
        let display = ProgressDisplay::start(opts.progress.clone(), false);
        let schedule = pgpitr_backup::Schedule {
            every,
            full_every: args.full_every,
            retention,
            now: stream_cfg.backup_now.clone(),
        };
        let task = tokio::spawn(pgpitr_backup::run_scheduled(
            repo.clone(),
            backup_cfg,
            schedule,
            opts,
            outcomes,
            cancel.clone(),
        ));
        (task, display)
    });
    let passes = copying.as_ref().map(|c| {
        tokio::spawn(copy_passes(c.mirror.clone(), c.placement.clone(), args.copy_pass_every, cancel.clone()))
    });
    let shutdown_timeout = stream_cfg.shutdown_timeout;
    let mut archiver = Archiver::new(repo, cfg, stream_cfg, cancel.clone(), stats);
    // A thread with its own single-threaded runtime: the socket's readiness,
    // the loop and the small uploads then run where the message arrived. On
    // the shared multi-threaded runtime each message cost about three
    // cross-thread wake-ups. Compression still goes to the blocking pool.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new().name("pgpitr-stream".into()).spawn(move || {
        // I/O and timers only. (tokio still builds its signal and process
        // drivers into the I/O driver while its `process` feature is on, so
        // `reap_orphans` runs at every park regardless.)
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start the streaming runtime: {e}"))
            .and_then(|rt| rt.block_on(archiver.run()).map_err(anyhow::Error::from));
        let _ = done_tx.send(result);
    })?;
    let result = done_rx.await.unwrap_or_else(|_| Err(anyhow::anyhow!("the streaming thread failed")));
    let _ = thread.join();
    if let Some((task, display)) = scheduler {
        // The archiver stopped (signal or error): a backup in progress cannot complete without it.
        cancel.cancel();
        // A cancelled backup deletes what it stored; storage that does not
        // answer must not hold up the exit (the next backup cleans up).
        let abort = task.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(3), task).await.is_err() {
            abort.abort();
            tracing::warn!("the scheduled backup did not stop within 3 s; its leftovers are removed by the next one");
        }
        display.stop().await;
    }
    if let Some(task) = drills {
        // A drill in progress is told to stop (its server, its scratch).
        cancel.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(25), task).await;
    }
    if let Some(c) = &copying {
        cancel.cancel();
        if let Some(task) = passes {
            task.abort();
        }
        if !c.mirror.drain(shutdown_timeout).await {
            let behind = c.mirror.stats().lag_bytes.load(std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                copy = %c.mirror.copy().describe(),
                behind_bytes = behind,
                "the copy did not catch up before exit; the next start copies the rest"
            );
        }
    }
    result?;
    tracing::info!("stopped; everything received is durable in the repository");
    Ok(crate::exit::OK)
}

/// A stream that keeps a copy in step: the repository it writes through.
struct Copying {
    repo: pgpitr_repo::Repository,
    mirror: Mirror,
    placement: Option<pgpitr_repo::S3Placement>,
}

/// Opens `repo` again over a [`Mirror`] of its storage and the copy at
/// `to`, once the copy is bound to the same cluster (refused otherwise).
async fn mirrored(url: &RepoUrl, to: &str, repo: &pgpitr_repo::Repository, sync: bool) -> anyhow::Result<Copying> {
    let to_url = RepoUrl::parse(to)?;
    if repo.binding().format_version == 1 {
        anyhow::bail!(
            "--copy-to needs a repository of format 2 or later; {} has format 1: run `pgpitr migrate` first",
            repo.location()
        );
    }
    let primary = pgpitr_repo::connect(url, pgpitr_repo::Access::Write).await?;
    let copy = pgpitr_repo::connect(&to_url, pgpitr_repo::Access::Write).await?;
    if primary.describe() == copy.describe() {
        anyhow::bail!("--copy-to names the repository itself ({})", copy.describe());
    }
    let placement = pgpitr_repo::S3Placement::of(&to_url);
    pgpitr_repo::copy::prepare(primary.as_ref(), copy.as_ref(), &placement).await?;
    let mirror = Mirror::new(primary, copy, repo.seg_size(), sync);
    let repo = pgpitr_repo::Repository::open(Arc::new(mirror.clone())).await?;
    tracing::info!(copy = %mirror.copy().describe(), synchronous = sync, "keeping a copy in step");
    Ok(Copying { repo, mirror, placement })
}

/// Full copy passes: at start (what the copy missed while no stream wrote
/// it), then every `every` (what other processes wrote); a failed pass is
/// tried again within a minute.
async fn copy_passes(
    mirror: Mirror,
    placement: Option<pgpitr_repo::S3Placement>,
    every: Duration,
    cancel: CancellationToken,
) {
    let stats = mirror.stats();
    loop {
        stats.catching_up.store(true, Ordering::Relaxed);
        let began = std::time::Instant::now();
        let pause =
            match pgpitr_repo::copy::copy_beside_mirror(mirror.primary(), mirror.copy(), placement.clone(), 4).await {
                Ok(done) => {
                    stats.passes.fetch_add(1, Ordering::Relaxed);
                    stats.last_pass_us.store(jiff::Timestamp::now().as_microsecond(), Ordering::Relaxed);
                    tracing::info!(
                        copy = %mirror.copy().describe(),
                        objects = done.copied_objects,
                        bytes = done.copied_bytes,
                        took = ?began.elapsed(),
                        "copy pass complete"
                    );
                    every
                }
                Err(e) => {
                    tracing::warn!(copy = %mirror.copy().describe(), "copy pass failed, trying again in a minute: {e}");
                    every.min(Duration::from_secs(60))
                }
            };
        stats.catching_up.store(false, Ordering::Relaxed);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
