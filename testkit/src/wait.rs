//! Waiting on a condition with a deadline, instead of sleeping for a while and
//! hoping: poll every [`POLL`] until the condition holds or the deadline passes,
//! then fail with a message naming what was awaited.
//!
//! The async [`until`] panics on timeout (what every in-process test wants); the
//! blocking [`until_blocking`] returns [`TimedOut`], so a test of child processes
//! can add their logs to the failure.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked (what the process harness used; a check may
/// spawn a process or walk a directory tree).
pub const POLL: Duration = Duration::from_millis(20);

/// A condition did not hold before its deadline.
#[derive(Debug, Clone, thiserror::Error)]
#[error("timed out after {after:?} waiting for {what}")]
pub struct TimedOut {
    /// What was awaited.
    pub what: String,
    /// The timeout.
    pub after: Duration,
}

/// Waits until `cond` holds, checking every [`POLL`]; panics naming `what` after
/// `timeout`.
pub async fn until<F, Fut>(what: &str, timeout: Duration, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until_every(what, timeout, POLL, cond).await;
}

/// [`until`], checking every `every` (for a state that may not last long).
pub async fn until_every<F, Fut>(what: &str, timeout: Duration, every: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        if Instant::now() >= deadline {
            panic!(
                "{}",
                TimedOut {
                    what: what.to_owned(),
                    after: timeout,
                }
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// Checks `cond` every [`POLL`] on this thread until it returns `Some`, or
/// [`TimedOut`] after `timeout`.
pub fn until_blocking<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(TimedOut {
                what: what.to_owned(),
                after: timeout,
            });
        }
        std::thread::sleep(POLL);
    }
}
