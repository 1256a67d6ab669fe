//! Turning SIGTERM / SIGINT into a shutdown future.

use tokio::sync::watch;

/// Returns a future that resolves at the first SIGTERM or SIGINT (Ctrl-C).
///
/// A second signal while the process is still shutting down exits at once
/// with status 130, so an operator is never stuck behind a slow flush.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static>
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, mut rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut seen = 0u32;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            seen += 1;
            if seen == 1 {
                tracing::info!(signal = name, "shutting down");
                let _ = tx.send(true);
            } else {
                tracing::warn!(signal = name, "second signal: exiting immediately");
                std::process::exit(130);
            }
        }
    });
    Ok(async move {
        // An error means the sender is gone, which only happens if the
        // watcher task died: treat that as a request to stop too.
        let _ = rx.wait_for(|stop| *stop).await;
    })
}
