//! SIGTERM and SIGINT ask for a clean stop: a stream stores pending WAL
//! first, a drill stops its server and removes its scratch directory.
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

pub fn cancel_on_signal(cancel: CancellationToken) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping cleanly"),
            _ = int.recv() => tracing::info!("SIGINT: stopping cleanly"),
        }
        cancel.cancel();
    });
    Ok(())
}
