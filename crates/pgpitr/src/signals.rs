//! SIGTERM and SIGINT ask for a clean stop: pending WAL is stored first.
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

pub fn cancel_on_signal(cancel: CancellationToken) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: storing pending WAL, then stopping"),
            _ = int.recv() => tracing::info!("SIGINT: storing pending WAL, then stopping"),
        }
        cancel.cancel();
    });
    Ok(())
}
