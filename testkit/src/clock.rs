//! The fixed test day: clock-driven tests run on 2026-11-22 (UTC), so file names,
//! minute directories and expected minutes are the same on every run.

use chrono::{DateTime, TimeZone, Utc};
use conduit_core::TestClock;

/// `h:m:s` on the test day.
pub fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, h, m, s)
        .single()
        .unwrap_or_else(|| panic!("no such time {h}:{m}:{s} on the test day"))
}

/// A test clock at `h:m:s` on the test day.
pub fn clock_at(h: u32, m: u32, s: u32) -> TestClock {
    TestClock::at(at(h, m, s))
}

/// Sets `clock` to `h:m:s` on the test day.
pub fn set(clock: &TestClock, h: u32, m: u32, s: u32) {
    clock.set(at(h, m, s));
}
