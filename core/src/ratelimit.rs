//! Rate-limited log lines: a client that repeats a mistake a million times a second
//! gets one log line per [`LOG_INTERVAL`] for it, not a million.
//!
//! Each kind of line has a `&'static str` key. [`allow`] says whether a line of that
//! kind may be written now and, if so, how many were suppressed since the last one
//! (log it as a `suppressed` field so nothing is silently lost). Counters in
//! `/metrics` still count every occurrence; only the log is thinned.
//!
//! ```
//! if let Some(suppressed) = conduit_core::ratelimit::allow("frame_too_large") {
//!     tracing::warn!(suppressed, "closing connection: frame too large");
//! }
//! ```

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// At most one line per key in this interval (process-wide).
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A set of per-key rate limits.
#[derive(Debug)]
pub struct LogLimiter {
    /// Minimum time between two lines of one key.
    interval: Duration,
    /// Per key: when the last line was allowed, and lines suppressed since.
    keys: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    /// A limiter allowing one line per key per `interval`.
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` if a line of `key` may be written at `now` (and counts
    /// it as written), `None` if it must be suppressed (and counts it).
    pub fn allow_at(&self, key: &'static str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        match keys.get_mut(key) {
            Some((last, suppressed)) if now.duration_since(*last) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                keys.insert(key, (now, 0));
                Some(0)
            }
        }
    }

    /// [`LogLimiter::allow_at`] now.
    pub fn allow(&self, key: &'static str) -> Option<u64> {
        self.allow_at(key, Instant::now())
    }
}

static PROCESS: LazyLock<LogLimiter> = LazyLock::new(|| LogLimiter::new(LOG_INTERVAL));

/// The process-wide limiter's answer for `key` (one line per [`LOG_INTERVAL`]).
pub fn allow(key: &'static str) -> Option<u64> {
    PROCESS.allow(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_per_key_with_the_suppressed_count() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.allow_at("a", t0), Some(0));
        assert_eq!(limiter.allow_at("b", t0), Some(0), "keys are independent");
        for i in 1..=5 {
            assert_eq!(limiter.allow_at("a", t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(limiter.allow_at("a", t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(limiter.allow_at("a", t0 + Duration::from_secs(11)), None);
        assert_eq!(limiter.allow_at("a", t0 + Duration::from_secs(25)), Some(1));
    }
}
