//! Waiting for SIGINT (Ctrl-C) or SIGTERM.

use std::future::Future;

/// Resolves on the first SIGINT or SIGTERM. The handlers are installed when this
/// is called, not when the future is first polled, so a signal that arrives
/// between the call and the `.await` (a daemon that prints "ready" in between)
/// is not the default action that kills the process without a clean shutdown.
pub fn wait_for_shutdown() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
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

/// How long [`bounded_shutdown`] waits for its thread to listen for signals.
const WATCH_START: std::time::Duration = std::time::Duration::from_secs(5);

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
///
/// Returns once the thread listens for signals (call it before saying "ready", as
/// with [`wait_for_shutdown`]).
pub fn bounded_shutdown(
    limit: std::time::Duration,
    unfinished: impl Fn() -> String + Send + 'static,
) -> (tokio::sync::oneshot::Receiver<()>, Deadline) {
    let (requested_tx, requested_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let (installed_tx, installed) = std::sync::mpsc::channel();
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
            let signal = wait_for_shutdown();
            let _ = installed_tx.send(());
            signal.await;
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
    } else if installed.recv_timeout(WATCH_START).is_err() {
        tracing::warn!(
            "the shutdown watch did not start within {WATCH_START:?}; a signal until it does is seen by the service alone"
        );
    }
    (requested_rx, Deadline { done: done_tx })
}
