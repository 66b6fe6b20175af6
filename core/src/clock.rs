//! Wall-clock time behind a trait, so minute boundaries are testable without
//! sleeping.
//!
//! Services never call `Utc::now()` or `tokio::time::sleep` for minute logic;
//! they hold a [`SharedClock`] and use [`Clock::now`], [`Clock::minute`] and
//! [`Clock::sleep_until`].
//!
//! * [`SystemClock`] reads the system clock. Its sleeps re-check the wall clock
//!   at least once a second, so a clock adjustment delays or hastens a wake-up
//!   by at most about a second.
//! * [`TestClock`] only moves when a test calls [`TestClock::set`] or
//!   [`TestClock::advance`]; sleepers wake on the first change that reaches their
//!   deadline and never sleep for real.
//!
//! Invariant for both: `sleep_until(deadline)` never completes while
//! `now() < deadline`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

use crate::layout::Minute;

/// A source of UTC wall-clock time that can also wait for a given instant.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;

    /// The minute containing [`Clock::now`].
    ///
    /// A clock outside the representable range (before 1970 or after 9999) is
    /// clamped to [`Minute::MIN`] or [`Minute::MAX`]; a real clock never is.
    fn minute(&self) -> Minute {
        let now = self.now();
        Minute::from_datetime(now).unwrap_or(if now < Minute::MIN.start() {
            Minute::MIN
        } else {
            Minute::MAX
        })
    }

    /// Completes once [`Clock::now`] has reached `deadline` (immediately if it
    /// already has).
    fn sleep_until(&self, deadline: DateTime<Utc>)
        -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// Completes once `duration` has passed on this clock.
    fn sleep(&self, duration: StdDuration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.sleep_until(add_saturating(self.now(), duration.into_time_delta()))
    }
}

/// A clock shared between tasks.
pub type SharedClock = Arc<dyn Clock>;

/// The longest single real sleep of [`SystemClock::sleep_until`] before it
/// re-reads the wall clock.
const MAX_SLEEP_SLICE: StdDuration = StdDuration::from_secs(1);

/// The system's wall clock ([`Utc::now`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl SystemClock {
    /// A [`SharedClock`] reading the system clock.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    /// Sleeps in slices of at most one second, re-reading the wall clock after
    /// each, so that a clock step in either direction is noticed.
    fn sleep_until(
        &self,
        deadline: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                // `to_std` fails only for negative deltas, i.e. deadline passed.
                let Ok(remaining) = (deadline - Utc::now()).to_std() else {
                    return;
                };
                if remaining.is_zero() {
                    return;
                }
                tokio::time::sleep(remaining.min(MAX_SLEEP_SLICE)).await;
            }
        })
    }
}

/// A manually driven clock for tests. Clones share the same time.
///
/// [`Clock::sleep_until`] completes as soon as [`TestClock::set`] or
/// [`TestClock::advance`] moves the time to or past the deadline; it never
/// sleeps for real.
#[derive(Debug, Clone)]
pub struct TestClock {
    time: Arc<watch::Sender<DateTime<Utc>>>,
}

impl TestClock {
    /// A clock reading `t` until moved.
    pub fn at(t: DateTime<Utc>) -> TestClock {
        TestClock {
            time: Arc::new(watch::Sender::new(t)),
        }
    }

    /// A clock reading the start of `minute` until moved.
    pub fn at_minute(minute: Minute) -> TestClock {
        Self::at(minute.start())
    }

    /// A [`SharedClock`] sharing this clock's time.
    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }

    /// Moves the clock to `t` (backwards too, like a clock adjustment) and
    /// wakes sleepers whose deadline it reaches.
    pub fn set(&self, t: DateTime<Utc>) {
        self.time.send_replace(t);
    }

    /// Moves the clock by `by` (a [`chrono::TimeDelta`], negative moves back,
    /// or a [`std::time::Duration`]) and wakes sleepers whose deadline it
    /// reaches. Saturates at chrono's representable range.
    pub fn advance(&self, by: impl IntoTimeDelta) {
        let by = by.into_time_delta();
        self.time.send_modify(|t| *t = add_saturating(*t, by));
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.time.borrow()
    }

    fn sleep_until(
        &self,
        deadline: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut rx = self.time.subscribe();
        Box::pin(async move {
            loop {
                let reached = *rx.borrow_and_update() >= deadline;
                if reached {
                    return;
                }
                if rx.changed().await.is_err() {
                    // Unreachable while `self` is borrowed (it owns the
                    // sender); if it ever happens time can no longer move,
                    // so the deadline is never reached.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

/// A duration [`TestClock::advance`] accepts: [`chrono::TimeDelta`] or
/// [`std::time::Duration`].
pub trait IntoTimeDelta {
    /// Converts, saturating at [`TimeDelta::MAX`].
    fn into_time_delta(self) -> TimeDelta;
}

impl IntoTimeDelta for TimeDelta {
    fn into_time_delta(self) -> TimeDelta {
        self
    }
}

impl IntoTimeDelta for StdDuration {
    fn into_time_delta(self) -> TimeDelta {
        TimeDelta::from_std(self).unwrap_or(TimeDelta::MAX)
    }
}

/// `t + by`, saturating at chrono's minimum and maximum instants.
fn add_saturating(t: DateTime<Utc>, by: TimeDelta) -> DateTime<Utc> {
    t.checked_add_signed(by)
        .unwrap_or(if by < TimeDelta::zero() {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    const GUARD: StdDuration = StdDuration::from_secs(10);

    fn minute(s: &str) -> Minute {
        Minute::parse_flexible(s).unwrap()
    }

    /// Polls `fut` exactly once, registering the current task's waker.
    async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
    }

    /// Lets every other task on the current-thread runtime run until idle.
    async fn settle() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn test_clock_reads_and_moves() {
        let m = minute("2026-11-22T10:05");
        let clock = TestClock::at_minute(m);
        let other = clock.clone();
        assert_eq!(clock.now(), m.start());
        assert_eq!(clock.minute(), m);
        clock.advance(StdDuration::from_secs(59));
        assert_eq!(other.minute(), m, "clones share time");
        other.advance(TimeDelta::seconds(1));
        assert_eq!(clock.minute(), m.next().unwrap());
        clock.set(m.start() - TimeDelta::hours(1));
        assert_eq!(clock.minute(), m.add_minutes(-60).unwrap());
        clock.advance(TimeDelta::seconds(-1));
        assert_eq!(clock.minute(), m.add_minutes(-61).unwrap());
    }

    #[test]
    fn minute_clamps_outside_range() {
        let clock = TestClock::at(DateTime::from_timestamp(-1, 0).unwrap());
        assert_eq!(clock.minute(), Minute::MIN);
        clock.set(Minute::MAX.end());
        assert_eq!(clock.minute(), Minute::MAX);
        clock.advance(StdDuration::MAX);
        assert_eq!(clock.now(), DateTime::<Utc>::MAX_UTC);
        clock.advance(TimeDelta::MIN);
        assert_eq!(clock.now(), DateTime::<Utc>::MIN_UTC);
    }

    #[tokio::test]
    async fn sleep_wakes_exactly_at_deadline() {
        let m = minute("2026-11-22T10:05");
        let clock = TestClock::at(m.start() + TimeDelta::seconds(10));
        let mut sleep = clock.sleep_until(m.end());
        assert!(poll_once(&mut sleep).await.is_pending());
        clock.advance(TimeDelta::seconds(49));
        assert!(poll_once(&mut sleep).await.is_pending());
        clock.advance(TimeDelta::nanoseconds(999_999_999));
        assert!(poll_once(&mut sleep).await.is_pending(), "1 ns early");
        clock.advance(TimeDelta::nanoseconds(1));
        assert_eq!(clock.now(), m.end());
        assert!(poll_once(&mut sleep).await.is_ready());
    }

    #[tokio::test]
    async fn spawned_task_wakes_when_minute_ends_not_before() {
        let m = minute("2026-11-22T10:05");
        let clock = TestClock::at_minute(m);
        let shared: SharedClock = clock.shared();
        let mut task = tokio::spawn(async move {
            shared.sleep_until(shared.minute().end()).await;
            shared.now()
        });
        settle().await;
        assert!(!task.is_finished());

        clock.advance(StdDuration::from_secs(30));
        settle().await;
        assert!(!task.is_finished(), "woke half way through the minute");
        clock.advance(StdDuration::from_millis(29_999));
        settle().await;
        assert!(!task.is_finished(), "woke 1 ms early");
        assert!(poll_once(&mut task).await.is_pending());

        clock.advance(StdDuration::from_millis(2));
        let woke_at = tokio::time::timeout(GUARD, task)
            .await
            .expect("task did not wake after the minute ended")
            .unwrap();
        assert!(woke_at > m.end());
        assert_eq!(clock.minute(), m.next().unwrap());
    }

    #[tokio::test]
    async fn set_wakes_all_reached_sleepers_only() {
        let t0 = minute("2026-11-22T10:05").start();
        let clock = TestClock::at(t0);
        let early = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(t0 + TimeDelta::minutes(1)).await }
        });
        let late = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(t0 + TimeDelta::minutes(10)).await }
        });
        settle().await;
        clock.set(t0 + TimeDelta::minutes(5));
        tokio::time::timeout(GUARD, early).await.unwrap().unwrap();
        settle().await;
        assert!(!late.is_finished());
        // Going back does not wake it either.
        clock.set(t0);
        settle().await;
        assert!(!late.is_finished());
        clock.set(t0 + TimeDelta::hours(1));
        tokio::time::timeout(GUARD, late).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn past_deadline_and_sleep_complete_immediately() {
        let clock = TestClock::at(minute("2026-11-22T10:05").start());
        let mut past = clock.sleep_until(clock.now() - TimeDelta::seconds(1));
        assert!(poll_once(&mut past).await.is_ready());
        let mut now = clock.sleep_until(clock.now());
        assert!(poll_once(&mut now).await.is_ready());
        let mut nap = clock.sleep(StdDuration::from_secs(5));
        assert!(poll_once(&mut nap).await.is_pending());
        clock.advance(StdDuration::from_secs(5));
        assert!(poll_once(&mut nap).await.is_ready());
    }

    #[tokio::test]
    async fn system_clock_sleeps_until_deadline() {
        let clock = SystemClock::shared();
        let mut past = clock.sleep_until(clock.now() - TimeDelta::hours(1));
        assert!(poll_once(&mut past).await.is_ready());

        let deadline = clock.now() + TimeDelta::milliseconds(30);
        tokio::time::timeout(GUARD, clock.sleep_until(deadline))
            .await
            .expect("system clock sleep overran");
        assert!(clock.now() >= deadline);
        assert!(clock.minute().start() <= clock.now());
    }

    #[test]
    fn clocks_are_object_safe_and_send() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        let clock: SharedClock = TestClock::at(Minute::MIN.start()).shared();
        assert_send_sync(&clock);
        let sleep = clock.sleep_until(Minute::MAX.start());
        fn assert_send<T: Send>(_: &T) {}
        assert_send(&sleep);
        assert_eq!(format!("{:?}", SystemClock), "SystemClock");
    }
}
