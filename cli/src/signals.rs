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
