//! Waiting for SIGINT (Ctrl-C) or SIGTERM.

/// Resolves on the first SIGINT or SIGTERM.
pub async fn wait_for_shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A shutdown that must finish within a deadline; see [`bounded_shutdown`].
#[derive(Debug)]
pub struct Deadline {
    done: tokio::sync::oneshot::Sender<()>,
}

impl Deadline {
    /// The shutdown finished in time: the watch ends.
    pub fn finished(self) {
        let _ = self.done.send(());
    }
}

/// Watches for SIGINT or SIGTERM on a thread of its own, with its own runtime, so
/// that the signal is seen and the deadline kept even if every thread of the
/// service's runtime is stuck (in a blocking call, or out of file descriptors).
///
/// The returned receiver resolves at the first signal; from then on the service
/// has `limit` to call [`Deadline::finished`]. If it does not (or a second signal
/// comes), the process exits with status 1 after an ERROR naming `unfinished()`,
/// what the service was still doing: a service that acknowledges only durable data
/// loses nothing acknowledged by stopping, and whatever it left open is recovered
/// at its next start.
pub fn bounded_shutdown(
    limit: std::time::Duration,
    unfinished: impl Fn() -> String + Send + 'static,
) -> (tokio::sync::oneshot::Receiver<()>, Deadline) {
    let (requested_tx, requested_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let watch = move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the shutdown watch; SIGTERM is not bounded");
                return;
            }
        };
        runtime.block_on(async move {
            wait_for_shutdown().await;
            let _ = requested_tx.send(());
            let started = std::time::Instant::now();
            let why = tokio::select! {
                _ = done_rx => return,
                _ = tokio::time::sleep(limit) => "did not finish within shutdown_timeout_secs",
                _ = wait_for_shutdown() => "was interrupted by a second signal",
            };
            tracing::error!(
                unfinished = unfinished(),
                shutdown_timeout_secs = limit.as_secs(),
                elapsed_secs = started.elapsed().as_secs_f64(),
                "shutdown {why}; exiting now (acknowledged data is durable; files left open are recovered at the next start)"
            );
            std::process::exit(1);
        });
    };
    if let Err(e) = std::thread::Builder::new()
        .name("shutdown-watch".to_owned())
        .spawn(watch)
    {
        tracing::error!(error = %e, "cannot start the shutdown watch thread");
    }
    (requested_rx, Deadline { done: done_tx })
}
