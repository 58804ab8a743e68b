//! Showing progress from the libraries' counters: a backup's as a bar when
//! stderr is a terminal, periodic log lines otherwise (daemons, CI, pipes);
//! a restore's download and replay on a terminal only.

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgpitr_backup::{BackupPhase, BackupProgress};
use pgpitr_repo::reader::ReadProgress;
use pgpitr_restore::server::Replaying;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the log-line display reports.
const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct ProgressDisplay {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressDisplay {
    /// Starts showing `progress`; a bar only when `allow_bar` and stderr is
    /// a terminal.
    pub fn start(progress: Arc<BackupProgress>, allow_bar: bool) -> ProgressDisplay {
        let bar = allow_bar && std::io::stderr().is_terminal();
        Self::spawn(move |token| async move {
            if bar { show_bar(progress, token).await } else { log_lines(progress, token).await }
        })
    }

    /// A restore's download as a bar, when `show` and stderr is a terminal.
    pub fn restore(progress: Arc<ReadProgress>, show: bool) -> ProgressDisplay {
        let show = show && std::io::stderr().is_terminal();
        Self::spawn(move |token| async move {
            if show {
                restore_bar(progress, token).await
            }
        })
    }

    /// Where replay stands, on one line, when `show` and stderr is a terminal.
    pub fn replay(progress: Arc<Mutex<Replaying>>, show: bool) -> ProgressDisplay {
        let show = show && std::io::stderr().is_terminal();
        Self::spawn(move |token| async move {
            if show {
                replay_line(progress, token).await
            }
        })
    }

    fn spawn<F>(f: impl FnOnce(CancellationToken) -> F) -> ProgressDisplay
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(f(stop.clone()));
        ProgressDisplay { stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn counters(p: &BackupProgress) -> (u64, u64, u64) {
    (BackupProgress::get(&p.stored_raw), BackupProgress::get(&p.total_estimate), BackupProgress::get(&p.stored))
}

async fn show_bar(progress: Arc<BackupProgress>, stop: CancellationToken) {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} {msg:22} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({binary_bytes_per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    loop {
        let (done, total, _) = counters(&progress);
        if total > 0 {
            // The server's estimate can be exceeded by files that grow meanwhile.
            bar.set_length(total.max(done));
        }
        bar.set_position(done);
        bar.set_message(progress.phase().as_str());
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    bar.finish_and_clear();
}

async fn log_lines(progress: Arc<BackupProgress>, stop: CancellationToken) {
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(LOG_EVERY) => {}
        }
        let (done, total, stored) = counters(&progress);
        let rate = (done.saturating_sub(last.1)) as f64 / last.0.elapsed().as_secs_f64().max(0.001);
        last = (Instant::now(), done);
        let phase = progress.phase();
        // Between scheduled backups there is nothing to report.
        if phase == BackupPhase::Done {
            continue;
        }
        let of = match total {
            0 => String::new(),
            t => format!(" of ~{} ({}%)", HumanBytes(t), done.saturating_mul(100) / t.max(1)),
        };
        tracing::info!(
            phase = phase.as_str(),
            "backup progress: {}{of} stored ({} compressed), {}/s",
            HumanBytes(done),
            HumanBytes(stored),
            HumanBytes(rate as u64)
        );
    }
}

async fn restore_bar(progress: Arc<ReadProgress>, stop: CancellationToken) {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("restoring {bar:30} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    loop {
        let (done, total) = (ReadProgress::get(&progress.bytes), ReadProgress::get(&progress.total));
        bar.set_length(total.max(done));
        bar.set_position(done);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }
    bar.finish_and_clear();
}

async fn replay_line(progress: Arc<Mutex<Replaying>>, stop: CancellationToken) {
    let mut shown = None;
    loop {
        let now = progress.lock().map(|p| p.clone()).unwrap_or_default();
        if now != Replaying::default() && shown.as_ref() != Some(&now) {
            eprint!(
                "\rreplaying: LSN {} last commit {}   ",
                now.lsn.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
                now.commit_time.as_deref().unwrap_or("none yet")
            );
            shown = Some(now);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    if shown.is_some() {
        eprintln!();
    }
}
