//! The one module that owns every path conduit reads or writes.
//!
//! Every path built or parsed here is **relative to a cluster root**, uses `/`
//! separators and has no leading or trailing slash; storage backends join it
//! onto their root. No other module should format or split a conduit path.
//!
//! # Names
//!
//! * [`Topic`]: `[A-Za-z0-9_]{1,128}`. Topics starting with `_` are system
//!   topics ([`Topic::audit`], [`Topic::invalid`]).
//! * [`NodeName`] (cluster names and collector ids):
//!   `[A-Za-z0-9][A-Za-z0-9_]{0,63}`. `-` is forbidden in both because file
//!   names use it as a separator, which is what makes every file name below
//!   parse unambiguously. A node name must not start with `_`, so local and
//!   merged data files (named `<cluster>-...`) are never hidden from Hadoop.
//! * checkpoint jobs and keys, lease names: `[A-Za-z0-9_.-]{1,200}`, not
//!   starting with `.`.
//!
//! # Minutes
//!
//! A [`Minute`] is a UTC minute between `1970-01-01T00:00Z` and
//! `9999-12-31T23:59Z` inclusive, so years always format as exactly four
//! digits and every formatted minute parses back to the same value.
//!
//! # Tree
//!
//! ```text
//! data/<topic>/<collector>/<ftopic>-yyyy-MM-dd-HH-mm_NNNNN.zst    View::Collector
//! streams_local/<topic>/yyyy/MM/dd/HH/mm/<cluster>-<collector>-<collector file name>
//!                                                                 View::Local
//! streams/<topic>/yyyy/MM/dd/HH/mm/<local file name, unchanged>   View::Merged
//! streams_hourly/<topic>/yyyy/MM/dd/HH/<ftopic>-yyyy-MM-dd-HH.zst View::Hourly
//! <minute or hour dir>/_SUCCESS                                   completion marker
//! <dir>/_tmp.<name>                                               in-progress copy
//! system/heartbeats/<cluster>/<collector>.json
//! system/checkpoints/<job>/<key>.json
//! system/leases/<name>.json
//! system/trash/...
//! quarantine/<original path>                                      damaged files set aside
//! ```
//!
//! `NNNNN` is the collector's per-minute sequence number (`u32`), zero padded
//! to five digits; larger numbers use more digits (never a leading zero), so
//! formatting stays injective.
//!
//! `<ftopic>` is the topic's file token ([`Layout::file_topic_token`]): the
//! topic itself, except that a system topic gets a `sys` prefix (`_audit`
//! becomes `sys_audit`, e.g. `sys_audit-2026-11-22-10-05_00000.zst`), because
//! Hadoop input formats skip files whose names start with `_` or `.`, so no
//! data file name may start with either. A file name alone is then ambiguous
//! (a user topic may be called `sys_audit`): the file-name parsers return the
//! token read literally as the topic, and only the directory topic decides
//! ([`Layout::file_topic_token_matches`]). Local and merged names start with
//! the cluster name, which never starts with `_`.
//!
//! # Invariants
//!
//! [`Layout::parse_path`] is the exact inverse of the builders: for every
//! value `x`, `parse_path(build(x)) == x`, and for every path `p` that parses,
//! `build(parse_path(p)) == p` ([`Located::to_path`]). Both directions are
//! property tested below.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors from building or parsing conduit names, minutes and paths.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A topic name does not match `[A-Za-z0-9_]{1,128}`.
    #[error("invalid topic name {topic:?}: must match [A-Za-z0-9_]{{1,128}}")]
    InvalidTopic {
        /// The rejected topic name.
        topic: String,
    },
    /// Any other name (node, job, checkpoint key, lease, view) is invalid.
    #[error("invalid {kind} name {name:?}: {}", name_rule(kind))]
    InvalidName {
        /// What kind of name it is (`node`, `job`, `checkpoint key`, `lease`, `view`).
        kind: &'static str,
        /// The rejected name.
        name: String,
    },
    /// A text or number is not a UTC minute between 1970 and 9999.
    #[error(
        "invalid minute {text:?}: expected a UTC minute like 2026-11-22T10:05Z \
         between 1970-01-01T00:00Z and 9999-12-31T23:59Z"
    )]
    InvalidMinute {
        /// The rejected text (or a description of the out-of-range value).
        text: String,
    },
    /// A path or file name is not one conduit builds.
    #[error("not a conduit path {path:?}: {reason}")]
    NotAConduitPath {
        /// The rejected path or file name.
        path: String,
        /// Why it was rejected.
        reason: String,
    },
}

const NODE_KIND: &str = "node";
const VIEW_KIND: &str = "view";
const JOB_KIND: &str = "job";
const KEY_KIND: &str = "checkpoint key";
const LEASE_KIND: &str = "lease";

/// The rule quoted in [`LayoutError::InvalidName`] messages.
fn name_rule(kind: &str) -> &'static str {
    match kind {
        NODE_KIND => "must match [A-Za-z0-9][A-Za-z0-9_]{0,63}",
        VIEW_KIND => "must be one of collector, local, merged, hourly",
        _ => "must match [A-Za-z0-9_.-]{1,200} and not start with '.'",
    }
}

/// `[A-Za-z0-9_]{1,max}`; all accepted characters are ASCII, so byte length
/// equals character count.
fn is_word(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `[A-Za-z0-9_]{1,128}`.
fn is_topic(s: &str) -> bool {
    is_word(s, 128)
}

/// `[A-Za-z0-9][A-Za-z0-9_]{0,63}`.
fn is_node(s: &str) -> bool {
    is_word(s, 64) && !s.starts_with('_')
}

/// `[A-Za-z0-9_.-]{1,200}` not starting with `.` (so never `.` or `..`).
fn is_system_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn validate_system_name(kind: &'static str, name: &str) -> Result<(), LayoutError> {
    if is_system_name(name) {
        Ok(())
    } else {
        Err(LayoutError::InvalidName {
            kind,
            name: name.to_owned(),
        })
    }
}

macro_rules! name_newtype {
    ($(#[$meta:meta])* $ty:ident, $max:expr, $valid:path, |$s:ident| $err:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        // Shared, immutable text: names are cloned into every PinTail message, so
        // a clone must be a reference count, not an allocation.
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Maximum length in characters.
            pub const MAX_LEN: usize = $max;

            /// Validates `name`, returning an error quoting it if it is invalid.
            pub fn new(name: impl Into<String>) -> Result<Self, LayoutError> {
                let $s: String = name.into();
                if $valid(&$s) {
                    Ok(Self($s.into()))
                } else {
                    Err($err)
                }
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $ty {
            type Err = LayoutError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = LayoutError;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$ty> for String {
            fn from(name: $ty) -> String {
                name.0.to_string()
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_newtype!(
    /// A topic name, valid iff it matches `[A-Za-z0-9_]{1,128}`.
    ///
    /// Serializes as a plain string; deserialization validates.
    Topic,
    128,
    is_topic,
    |s| LayoutError::InvalidTopic { topic: s }
);

name_newtype!(
    /// A cluster name or collector id, valid iff it matches
    /// `[A-Za-z0-9][A-Za-z0-9_]{0,63}`.
    ///
    /// `-` is forbidden because file names use it as a separator; a leading
    /// `_` is forbidden because local and merged file names start with the
    /// cluster name, and Hadoop skips names starting with `_`.
    /// Serializes as a plain string; deserialization validates.
    NodeName,
    64,
    is_node,
    |s| LayoutError::InvalidName {
        kind: NODE_KIND,
        name: s
    }
);

impl Topic {
    /// Name of the system topic receiving audit records.
    pub const AUDIT: &'static str = "_audit";
    /// Name of the system topic receiving messages rejected as invalid.
    pub const INVALID: &'static str = "_invalid";

    /// The `_audit` system topic.
    pub fn audit() -> Topic {
        // `_audit` matches [A-Za-z0-9_]{1,128}; checked by a unit test.
        Topic(Self::AUDIT.into())
    }

    /// The `_invalid` system topic.
    pub fn invalid() -> Topic {
        // `_invalid` matches [A-Za-z0-9_]{1,128}; checked by a unit test.
        Topic(Self::INVALID.into())
    }

    /// True for system topics, i.e. names starting with `_`.
    pub fn is_system(&self) -> bool {
        self.0.starts_with('_')
    }
}

/// A UTC minute between `1970-01-01T00:00Z` and `9999-12-31T23:59Z`
/// inclusive, stored as minutes since the Unix epoch.
///
/// Displays (and serializes) as `2026-11-22T10:05Z`; deserialization accepts
/// everything [`Minute::parse_flexible`] does.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Minute(i64);

/// Broken-down fields of a minute: year, month, day, hour, minute.
type Fields = (i32, u32, u32, u32, u32);

impl Minute {
    /// The first representable minute, `1970-01-01T00:00Z`.
    pub const MIN: Minute = Minute(0);
    /// The last representable minute, `9999-12-31T23:59Z`
    /// (`10000-01-01T00:00:00Z` is 253_402_300_800 s after the epoch).
    pub const MAX: Minute = Minute(253_402_300_800 / 60 - 1);

    /// The minute containing `t` (floors seconds and sub-seconds).
    pub fn from_datetime(t: DateTime<Utc>) -> Result<Minute, LayoutError> {
        let minutes = t.timestamp().div_euclid(60);
        Self::from_epoch_minutes(minutes).map_err(|_| LayoutError::InvalidMinute {
            text: t.to_rfc3339(),
        })
    }

    /// The minute starting `minutes` minutes after the Unix epoch.
    pub fn from_epoch_minutes(minutes: i64) -> Result<Minute, LayoutError> {
        if (Self::MIN.0..=Self::MAX.0).contains(&minutes) {
            Ok(Minute(minutes))
        } else {
            Err(LayoutError::InvalidMinute {
                text: format!("epoch minute {minutes}"),
            })
        }
    }

    /// Minutes since the Unix epoch.
    pub fn epoch_minutes(self) -> i64 {
        self.0
    }

    /// The instant the minute starts.
    pub fn start(self) -> DateTime<Utc> {
        Self::instant(self.0)
    }

    /// The instant the minute ends, i.e. the next minute's start (exclusive).
    pub fn end(self) -> DateTime<Utc> {
        Self::instant(self.0 + 1)
    }

    fn instant(minutes: i64) -> DateTime<Utc> {
        // Infallible: `minutes` is at most MAX + 1, i.e. the year 10000,
        // far inside chrono's range (about ±262_000 years).
        DateTime::from_timestamp(minutes * 60, 0).expect("minute within chrono's range")
    }

    /// The following minute; an error after `9999-12-31T23:59Z`.
    pub fn next(self) -> Result<Minute, LayoutError> {
        self.add_minutes(1)
    }

    /// The preceding minute; an error before `1970-01-01T00:00Z`.
    pub fn prev(self) -> Result<Minute, LayoutError> {
        self.add_minutes(-1)
    }

    /// The minute `delta` minutes later (earlier if negative); an error if
    /// that leaves the representable range.
    pub fn add_minutes(self, delta: i64) -> Result<Minute, LayoutError> {
        self.0
            .checked_add(delta)
            .and_then(|m| Self::from_epoch_minutes(m).ok())
            .ok_or_else(|| LayoutError::InvalidMinute {
                text: format!(
                    "{self} {} {} minutes",
                    if delta < 0 { '-' } else { '+' },
                    delta.unsigned_abs()
                ),
            })
    }

    /// The first minute of the hour containing this minute.
    pub fn hour_start(self) -> Minute {
        // The epoch is an hour start and Unix time has no leap seconds, so
        // flooring to a multiple of 60 stays within [MIN, self].
        Minute(self.0 - self.0.rem_euclid(60))
    }

    /// True if this is the first minute of an hour.
    pub fn is_hour_start(self) -> bool {
        self.0.rem_euclid(60) == 0
    }

    fn fields(self) -> Fields {
        let t = self.start();
        (t.year(), t.month(), t.day(), t.hour(), t.minute())
    }

    /// The minute-directory suffix `yyyy/MM/dd/HH/mm`, e.g. `2026/11/22/10/05`
    /// (levels of [`DATE_DIR_WIDTHS`] digits).
    pub fn dir_path(self) -> String {
        let (y, mo, d, h, mi) = self.fields();
        format!("{y:04}/{mo:02}/{d:02}/{h:02}/{mi:02}")
    }

    /// The hour-directory suffix `yyyy/MM/dd/HH`, e.g. `2026/11/22/10`.
    pub fn hour_dir_path(self) -> String {
        let (y, mo, d, h, _) = self.fields();
        format!("{y:04}/{mo:02}/{d:02}/{h:02}")
    }

    /// The file-name stamp `yyyy-MM-dd-HH-mm`, e.g. `2026-11-22-10-05`.
    pub fn file_stamp(self) -> String {
        let (y, mo, d, h, mi) = self.fields();
        format!("{y:04}-{mo:02}-{d:02}-{h:02}-{mi:02}")
    }

    /// The hourly file-name stamp `yyyy-MM-dd-HH`, e.g. `2026-11-22-10`.
    pub fn hour_stamp(self) -> String {
        let (y, mo, d, h, _) = self.fields();
        format!("{y:04}-{mo:02}-{d:02}-{h:02}")
    }

    /// Parses exactly `yyyy/MM/dd/HH/mm` (the inverse of [`Minute::dir_path`]).
    pub fn parse_dir_path(text: &str) -> Result<Minute, LayoutError> {
        Self::parse_separated(text, '/', 5)
    }

    /// The first minute of the date directory named by the leading levels
    /// `fields` of `yyyy/MM/dd/HH/mm` (a year, month, day, hour or minute), each
    /// exactly its [`DATE_DIR_WIDTHS`] digits; `None` if they name no valid date.
    pub(crate) fn parse_dir_prefix(fields: &[&str]) -> Option<Minute> {
        // `from_fields` wants at least the hour: pad a shorter prefix with the
        // first month, day and hour.
        const FIRST: [&str; 3] = ["01", "01", "00"];
        if fields.is_empty() || fields.len() > DATE_DIR_WIDTHS.len() {
            return None;
        }
        let mut full = fields.to_vec();
        full.extend_from_slice(&FIRST[(full.len() - 1).min(FIRST.len())..]);
        Self::from_fields(&full)
    }

    /// Parses exactly `yyyy-MM-dd-HH-mm` (the inverse of [`Minute::file_stamp`]).
    pub fn parse_file_stamp(text: &str) -> Result<Minute, LayoutError> {
        Self::parse_separated(text, '-', 5)
    }

    /// Parses exactly `yyyy-MM-dd-HH` (the inverse of [`Minute::hour_stamp`]),
    /// giving the hour's first minute.
    pub fn parse_hour_stamp(text: &str) -> Result<Minute, LayoutError> {
        Self::parse_separated(text, '-', 4)
    }

    /// `parts` fields (4: up to the hour, 5: up to the minute) separated by `sep`.
    fn parse_separated(text: &str, sep: char, parts: usize) -> Result<Minute, LayoutError> {
        let fields: Vec<&str> = text.split(sep).collect();
        let minute = if fields.len() == parts {
            Self::from_fields(&fields)
        } else {
            None
        };
        minute.ok_or_else(|| LayoutError::InvalidMinute {
            text: text.to_owned(),
        })
    }

    /// `[yyyy, MM, dd, HH]` or `[yyyy, MM, dd, HH, mm]`, each exactly that many
    /// ASCII digits, forming a valid date and time in range.
    fn from_fields(fields: &[&str]) -> Option<Minute> {
        let (year, rest) = fields.split_first()?;
        let year = digits(year, 4)?;
        let mut two = rest.iter().map(|f| digits(f, 2));
        let month = two.next()??;
        let day = two.next()??;
        let hour = two.next()??;
        let minute = match two.next() {
            Some(m) => m?,
            None => 0,
        };
        if two.next().is_some() {
            return None;
        }
        Self::from_ymd_hm(i32::try_from(year).ok()?, month, day, hour, minute)
    }

    fn from_ymd_hm(year: i32, month: u32, day: u32, hour: u32, minute: u32) -> Option<Minute> {
        let t = NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(hour, minute, 0)?;
        Minute::from_datetime(t.and_utc()).ok()
    }

    /// Parses a minute typed by a human. Accepts, with optional surrounding
    /// whitespace:
    ///
    /// * `2026-11-22T10:05`, `2026-11-22T10:05Z`, `2026-11-22 10:05`
    /// * with seconds (and fractions): `2026-11-22T10:05:00Z`,
    ///   `2026-11-22 10:05:37.5` — the minute containing that instant
    /// * RFC 3339 with an offset: `2026-11-22T12:05:00+02:00` (converted to UTC)
    /// * the path forms `2026/11/22/10/05` and `2026-11-22-10-05`
    ///
    /// Times without an offset are UTC.
    pub fn parse_flexible(text: &str) -> Result<Minute, LayoutError> {
        let t = text.trim();
        Self::parse_dir_path(t)
            .or_else(|_| Self::parse_file_stamp(t))
            .ok()
            .or_else(|| Self::parse_naive(t))
            .or_else(|| {
                DateTime::parse_from_rfc3339(t)
                    .ok()
                    .and_then(|dt| Minute::from_datetime(dt.with_timezone(&Utc)).ok())
            })
            .ok_or_else(|| LayoutError::InvalidMinute {
                text: text.to_owned(),
            })
    }

    /// `yyyy-MM-dd{T| }HH:mm[:ss[.f+]][Z]`, in UTC.
    fn parse_naive(t: &str) -> Option<Minute> {
        let t = t
            .strip_suffix('Z')
            .or_else(|| t.strip_suffix('z'))
            .unwrap_or(t);
        let date = t.get(..10)?;
        if !matches!(t.get(10..11)?, "T" | "t" | " ") {
            return None;
        }
        let time = t.get(11..)?;
        let mut d = date.split('-');
        let year = digits(d.next()?, 4)?;
        let month = digits(d.next()?, 2)?;
        let day = digits(d.next()?, 2)?;
        if d.next().is_some() {
            return None;
        }
        let mut hms = time.split(':');
        let hour = digits(hms.next()?, 2)?;
        let minute = digits(hms.next()?, 2)?;
        if let Some(sec) = hms.next() {
            // Seconds are validated, then floored away.
            let (whole, frac) = match sec.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (sec, None),
            };
            if digits(whole, 2)? > 59 {
                return None;
            }
            if let Some(f) = frac {
                if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
            }
        }
        if hms.next().is_some() {
            return None;
        }
        Self::from_ymd_hm(i32::try_from(year).ok()?, month, day, hour, minute)
    }
}

/// Exactly `width` ASCII digits, as a number.
fn digits(s: &str, width: usize) -> Option<u32> {
    if s.len() == width && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

impl fmt::Display for Minute {
    /// `2026-11-22T10:05Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d, h, mi) = self.fields();
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}Z")
    }
}

impl fmt::Debug for Minute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Minute({self})")
    }
}

impl FromStr for Minute {
    type Err = LayoutError;

    /// Same as [`Minute::parse_flexible`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_flexible(s)
    }
}

impl Serialize for Minute {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Minute {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Minute::parse_flexible(&text).map_err(serde::de::Error::custom)
    }
}

/// Widths in digits of the levels of a date directory `yyyy/MM/dd/HH/mm`: year,
/// month, day, hour, minute. Minute views ([`View::Local`], [`View::Merged`])
/// use all five levels, [`View::Hourly`] the first four ([`View::date_levels`]).
pub const DATE_DIR_WIDTHS: [usize; 5] = [4, 2, 2, 2, 2];

/// One of the four directory trees holding topic data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum View {
    /// `data/`: files as written by collectors.
    Collector,
    /// `streams_local/`: per-cluster minute directories.
    Local,
    /// `streams/`: minute directories merged across clusters.
    Merged,
    /// `streams_hourly/`: hourly compacted files.
    Hourly,
}

impl View {
    /// All views, in tree order.
    pub const ALL: [View; 4] = [View::Collector, View::Local, View::Merged, View::Hourly];

    /// The top-level directory of this view (`data`, `streams_local`,
    /// `streams`, `streams_hourly`).
    pub fn dir_name(self) -> &'static str {
        match self {
            View::Collector => "data",
            View::Local => "streams_local",
            View::Merged => "streams",
            View::Hourly => "streams_hourly",
        }
    }

    /// The short name used by [`Display`](fmt::Display) and [`FromStr`]
    /// (`collector`, `local`, `merged`, `hourly`).
    pub fn name(self) -> &'static str {
        match self {
            View::Collector => "collector",
            View::Local => "local",
            View::Merged => "merged",
            View::Hourly => "hourly",
        }
    }

    /// How many levels of [`DATE_DIR_WIDTHS`] the view's date directories have
    /// below `<view>/<topic>`: 5 (`yyyy/MM/dd/HH/mm`) for minute views, 4
    /// (`yyyy/MM/dd/HH`) for the hourly view, 0 for the collector view (which
    /// has none).
    pub fn date_levels(self) -> usize {
        match self {
            View::Local | View::Merged => 5,
            View::Hourly => 4,
            View::Collector => 0,
        }
    }

    fn from_dir_name(dir: &str) -> Option<View> {
        View::ALL.into_iter().find(|v| v.dir_name() == dir)
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for View {
    type Err = LayoutError;

    /// Parses `collector`, `local`, `merged` or `hourly`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        View::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| LayoutError::InvalidName {
                kind: VIEW_KIND,
                name: s.to_owned(),
            })
    }
}

/// The parts of a collector file name `<ftopic>-yyyy-MM-dd-HH-mm_NNNNN.zst`
/// (`<ftopic>` is [`Layout::file_topic_token`] of the topic).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CollectorFileName {
    /// The topic. When parsed, the token read literally (`sys_audit` for a
    /// file of `_audit`); see [`Layout::parse_collector_file_name`].
    pub topic: Topic,
    /// The minute the file belongs to.
    pub minute: Minute,
    /// The collector's sequence number within the minute.
    pub seq: u32,
}

impl fmt::Display for CollectorFileName {
    /// Formats the file name (inverse of [`Layout::parse_collector_file_name`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_{:05}{}",
            Layout::minute_stamped(&self.topic, self.minute),
            self.seq,
            Layout::DATA_EXTENSION
        )
    }
}

/// The parts of a local-view file name
/// `<cluster>-<collector>-<ftopic>-yyyy-MM-dd-HH-mm_NNNNN.zst`, i.e.
/// `<cluster>-<collector>-<collector file name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalFileName {
    /// The cluster whose local stream produced the file.
    pub cluster: NodeName,
    /// The collector that wrote the original file.
    pub collector: NodeName,
    /// The topic. When parsed, the token read literally, as in
    /// [`CollectorFileName::topic`].
    pub topic: Topic,
    /// The minute of the original collector file.
    pub minute: Minute,
    /// The collector's sequence number within the minute.
    pub seq: u32,
}

impl fmt::Display for LocalFileName {
    /// Formats the file name (inverse of [`Layout::parse_local_file_name`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-{}_{:05}{}",
            self.cluster,
            self.collector,
            Layout::minute_stamped(&self.topic, self.minute),
            self.seq,
            Layout::DATA_EXTENSION
        )
    }
}

/// What [`Layout::parse_path`] found in a stream path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Located {
    /// The tree the path is in.
    pub view: View,
    /// The topic.
    pub topic: Topic,
    /// The minute: from the file name for [`View::Collector`], from the
    /// directory for minute views, the hour's first minute for [`View::Hourly`].
    pub minute: Minute,
    /// The file name inside the collector, minute or hour directory; `None`
    /// when the path is a minute or hour directory itself (never `None` for
    /// [`View::Collector`]).
    pub file: Option<String>,
    /// The collector id; `Some` exactly for [`View::Collector`].
    pub collector: Option<NodeName>,
}

impl Located {
    /// Rebuilds the path, so that `Layout::parse_path(&l.to_path()?) == Ok(l)`.
    ///
    /// Fails if the fields are inconsistent (e.g. a collector outside the
    /// collector view, an hourly minute that is not an hour start, or a file
    /// name `parse_path` would reject).
    pub fn to_path(&self) -> Result<String, LayoutError> {
        let path = match (self.view, &self.collector, &self.file) {
            (View::Collector, Some(collector), Some(file)) => {
                Layout::collector_dir(&self.topic, collector) + "/" + file
            }
            (View::Collector, _, _) => {
                return Err(self.inconsistent("the collector view needs a collector and a file"))
            }
            (_, Some(_), _) => {
                return Err(self.inconsistent("only the collector view has a collector"))
            }
            (View::Hourly, None, _) if !self.minute.is_hour_start() => {
                return Err(self.inconsistent("hourly minutes must be hour starts"))
            }
            (view, None, file) => {
                let dir = Layout::minute_dir(view, &self.topic, self.minute);
                match file {
                    Some(file) => dir + "/" + file,
                    None => dir,
                }
            }
        };
        // Validates the file name and, for the collector view, that it agrees
        // with `topic` and `minute`.
        match Layout::parse_path(&path) {
            Ok(parsed) if parsed == *self => Ok(path),
            Ok(_) => Err(self.inconsistent("the file name disagrees with the topic or minute")),
            Err(e) => Err(e),
        }
    }

    fn inconsistent(&self, reason: &str) -> LayoutError {
        LayoutError::NotAConduitPath {
            path: format!("{self:?}"),
            reason: reason.to_owned(),
        }
    }
}

/// Builds and parses every conduit path (see the [module docs](self)).
///
/// All builders return paths relative to the cluster root.
#[derive(Debug, Clone, Copy, Default)]
pub struct Layout;

impl Layout {
    /// Extension of every data file.
    pub const DATA_EXTENSION: &'static str = ".zst";
    /// Extension of hourly Parquet files ([`Layout::hourly_parquet_file_name`]).
    pub const PARQUET_EXTENSION: &'static str = ".parquet";
    /// Prefix of an hour's file of rows its Parquet file could not hold
    /// ([`Layout::hourly_invalid_file_name`]).
    pub const HOURLY_INVALID_PREFIX: &'static str = "_invalid.";
    /// Name of the completion marker inside a minute or hour directory.
    pub const SUCCESS_MARKER: &'static str = "_SUCCESS";
    /// Prefix of in-progress copies (starts with `_`, so Hadoop skips them).
    pub const TMP_PREFIX: &'static str = "_tmp.";
    /// Top-level directory of heartbeats, checkpoints, leases and trash.
    pub const SYSTEM_DIR: &'static str = "system";
    /// Top-level directory of damaged data files set aside
    /// ([`Layout::quarantine_path`]).
    pub const QUARANTINE_DIR: &'static str = "quarantine";
    /// Prefix of a system topic's file token ([`Layout::file_topic_token`]).
    pub const SYSTEM_FILE_PREFIX: &'static str = "sys";

    /// How `topic` starts data file names (collector, local and hourly):
    /// `sys` followed by the topic for system topics (`_audit` gives
    /// `sys_audit`), the topic itself otherwise. Data file names must never
    /// start with `_` or `.`, which Hadoop input formats skip.
    ///
    /// Not injective (the user topic `sys_audit` has the same token), which
    /// is why files are only matched against their directory's topic
    /// ([`Layout::file_topic_token_matches`]).
    pub fn file_topic_token(topic: &Topic) -> String {
        if topic.is_system() {
            format!("{}{topic}", Self::SYSTEM_FILE_PREFIX)
        } else {
            topic.as_str().to_owned()
        }
    }

    /// True if `token`, the topic part of a data file name, is the file token
    /// of `dir_topic` (the topic of the directory holding the file), i.e.
    /// `token == Layout::file_topic_token(dir_topic)`: `sys_audit` matches
    /// both `_audit` and the user topic `sys_audit`; `_audit` matches nothing.
    ///
    /// For a topic `t` returned by a file-name parser, the token is
    /// `Layout::file_topic_token(&t)`.
    pub fn file_topic_token_matches(token: &str, dir_topic: &Topic) -> bool {
        if dir_topic.is_system() {
            token.strip_prefix(Self::SYSTEM_FILE_PREFIX) == Some(dir_topic.as_str())
        } else {
            token == dir_topic.as_str()
        }
    }

    /// The topic read from the token starting a data file name: the token
    /// itself, literally (`sys_audit` may be the user topic `sys_audit` or
    /// the system topic `_audit`). A token too long to be a topic (`sys` and
    /// a system topic of 126 to 128 characters) can only name that system
    /// topic, which is returned. A token starting with `_` is rejected: no
    /// builder writes one. In all cases `file_topic_token` of the result is
    /// `token` again.
    fn parse_file_topic_token(token: &str) -> Result<Topic, String> {
        match Topic::new(token) {
            Ok(topic) if topic.is_system() => Err(format!(
                "data file names never start with '_' (system topic files start with {:?})",
                Self::file_topic_token(&topic)
            )),
            Ok(topic) => Ok(topic),
            Err(e) => token
                .strip_prefix(Self::SYSTEM_FILE_PREFIX)
                .and_then(|t| Topic::new(t).ok())
                .filter(Topic::is_system)
                .ok_or_else(|| e.to_string()),
        }
    }

    /// `<view dir>/<topic>`, e.g. `streams/clicks`.
    pub fn topic_dir(view: View, topic: &Topic) -> String {
        format!("{}/{topic}", view.dir_name())
    }

    /// `data/<topic>/<collector>`.
    pub fn collector_dir(topic: &Topic, collector: &NodeName) -> String {
        format!("{}/{collector}", Self::topic_dir(View::Collector, topic))
    }

    /// `<ftopic>-yyyy-MM-dd-HH-mm_NNNNN.zst`, where `<ftopic>` is
    /// [`Layout::file_topic_token`] of `topic`.
    pub fn collector_file_name(topic: &Topic, minute: Minute, seq: u32) -> String {
        CollectorFileName {
            topic: topic.clone(),
            minute,
            seq,
        }
        .to_string()
    }

    /// `data/<topic>/<collector>/<ftopic>-yyyy-MM-dd-HH-mm_NNNNN.zst`.
    pub fn collector_file(topic: &Topic, collector: &NodeName, minute: Minute, seq: u32) -> String {
        format!(
            "{}/{}",
            Self::collector_dir(topic, collector),
            Self::collector_file_name(topic, minute, seq)
        )
    }

    /// `<ftopic>-yyyy-MM-dd-HH-mm`.
    fn minute_stamped(topic: &Topic, minute: Minute) -> String {
        format!("{}-{}", Self::file_topic_token(topic), minute.file_stamp())
    }

    /// Parses `<ftopic>-yyyy-MM-dd-HH-mm_NNNNN.zst`. The topic is the token
    /// read literally (`sys_audit-...` gives the topic `sys_audit`, which
    /// may be a file of `_audit`: see [`Layout::file_topic_token_matches`]);
    /// names starting with `_` are rejected. Formatting the result gives
    /// `name` back.
    pub fn parse_collector_file_name(name: &str) -> Result<CollectorFileName, LayoutError> {
        let bad = |reason: &str| LayoutError::NotAConduitPath {
            path: name.to_owned(),
            reason: format!(
                "collector file names look like <ftopic>-yyyy-MM-dd-HH-mm_NNNNN.zst: {reason}"
            ),
        };
        let stem = name
            .strip_suffix(Self::DATA_EXTENSION)
            .ok_or_else(|| bad("wrong extension"))?;
        let (topic, rest) = stem
            .split_once('-')
            .ok_or_else(|| bad("no '-' after the topic"))?;
        let topic = Self::parse_file_topic_token(topic).map_err(|e| bad(&e))?;
        // `get` rather than indexing: `rest` may not be ASCII.
        let (stamp, seq) = match (rest.get(..16), rest.get(16..)) {
            (Some(stamp), Some(seq)) => (stamp, seq),
            _ => return Err(bad("too short")),
        };
        let minute = Minute::parse_file_stamp(stamp).map_err(|e| bad(&e.to_string()))?;
        let seq = seq
            .strip_prefix('_')
            .and_then(parse_seq)
            .ok_or_else(|| bad("bad sequence number"))?;
        Ok(CollectorFileName { topic, minute, seq })
    }

    /// The directory of `minute` in `view`:
    /// `streams_local/<topic>/yyyy/MM/dd/HH/mm`, `streams/<topic>/yyyy/MM/dd/HH/mm`,
    /// or for [`View::Hourly`] the hour directory ([`Layout::hour_dir`]).
    ///
    /// # Panics
    ///
    /// If `view` is [`View::Collector`], which has no minute directories
    /// (a programming error: callers pass a constant view).
    pub fn minute_dir(view: View, topic: &Topic, minute: Minute) -> String {
        match view {
            View::Local | View::Merged => {
                format!("{}/{}", Self::topic_dir(view, topic), minute.dir_path())
            }
            View::Hourly => Self::hour_dir(topic, minute),
            View::Collector => panic!("the collector view has no minute directories"),
        }
    }

    /// `streams_hourly/<topic>/yyyy/MM/dd/HH` for the hour containing `minute`.
    pub fn hour_dir(topic: &Topic, minute: Minute) -> String {
        format!(
            "{}/{}",
            Self::topic_dir(View::Hourly, topic),
            minute.hour_dir_path()
        )
    }

    /// `<cluster>-<collector>-<ftopic>-yyyy-MM-dd-HH-mm_NNNNN.zst`, the name of
    /// a collector file inside a local (and merged) minute directory.
    pub fn local_file_name(
        cluster: &NodeName,
        collector: &NodeName,
        minute: Minute,
        seq: u32,
        topic: &Topic,
    ) -> String {
        LocalFileName {
            cluster: cluster.clone(),
            collector: collector.clone(),
            topic: topic.clone(),
            minute,
            seq,
        }
        .to_string()
    }

    /// Parses `<cluster>-<collector>-<ftopic>-yyyy-MM-dd-HH-mm_NNNNN.zst`; the
    /// topic is read literally, as in [`Layout::parse_collector_file_name`].
    pub fn parse_local_file_name(name: &str) -> Result<LocalFileName, LayoutError> {
        let bad = |reason: String| {
            LayoutError::NotAConduitPath {
            path: name.to_owned(),
            reason: format!(
                "local file names look like <cluster>-<collector>-<ftopic>-yyyy-MM-dd-HH-mm_NNNNN.zst: {reason}"
            ),
        }
        };
        let mut parts = name.splitn(3, '-');
        let (cluster, collector, rest) = match (parts.next(), parts.next(), parts.next()) {
            (Some(cluster), Some(collector), Some(rest)) => (cluster, collector, rest),
            _ => return Err(bad("too few '-' separated parts".to_owned())),
        };
        let cluster = NodeName::new(cluster).map_err(|e| bad(e.to_string()))?;
        let collector = NodeName::new(collector).map_err(|e| bad(e.to_string()))?;
        let file = Self::parse_collector_file_name(rest).map_err(|e| match e {
            LayoutError::NotAConduitPath { reason, .. } => bad(reason),
            other => bad(other.to_string()),
        })?;
        Ok(LocalFileName {
            cluster,
            collector,
            topic: file.topic,
            minute: file.minute,
            seq: file.seq,
        })
    }

    /// `name` as a collector file of `topic`, i.e. a data file of
    /// `data/<topic>/<collector>/` (`docs/format.md` §2): not hidden (`_tmp.`
    /// copies, markers, dot files), a collector file name, and its topic token
    /// is `topic`'s ([`Layout::file_topic_token_matches`]), so
    /// `sys_audit-...` is a file of `_audit` in `data/_audit/` and of the user
    /// topic `sys_audit` in `data/sys_audit/`, and of nothing elsewhere. The
    /// result names `topic`. `None` for every other name: such files are not
    /// the topic's and are left alone.
    pub fn collector_file_in(topic: &Topic, name: &str) -> Option<CollectorFileName> {
        if Self::is_hidden(name) {
            return None;
        }
        let parsed = Self::parse_collector_file_name(name).ok()?;
        Self::is_file_of(&parsed.topic, topic).then(|| CollectorFileName {
            topic: topic.clone(),
            ..parsed
        })
    }

    /// `name` as a local (or merged) file of `topic`, i.e. a data file of a
    /// minute directory of `streams_local/<topic>/` or `streams/<topic>/`:
    /// a local file name whose topic token is `topic`'s, as in
    /// [`Layout::collector_file_in`]. The result names `topic`.
    pub fn local_file_in(topic: &Topic, name: &str) -> Option<LocalFileName> {
        let parsed = Self::parse_local_file_name(name).ok()?;
        Self::is_file_of(&parsed.topic, topic).then(|| LocalFileName {
            topic: topic.clone(),
            ..parsed
        })
    }

    /// Whether a file whose name parsed to `parsed` (the token read literally)
    /// belongs in a directory of `dir_topic`.
    fn is_file_of(parsed: &Topic, dir_topic: &Topic) -> bool {
        Self::file_topic_token_matches(&Self::file_topic_token(parsed), dir_topic)
    }

    /// `<ftopic>-yyyy-MM-dd-HH.zst`, the compacted file of the hour containing
    /// `minute` (`<ftopic>` is [`Layout::file_topic_token`] of `topic`).
    pub fn hourly_file_name(topic: &Topic, minute: Minute) -> String {
        format!(
            "{}-{}{}",
            Self::file_topic_token(topic),
            minute.hour_stamp(),
            Self::DATA_EXTENSION
        )
    }

    /// `<ftopic>-yyyy-MM-dd-HH.parquet`, the compacted file of the hour containing
    /// `minute` for a topic with `compact_format = "parquet"` (`docs/format.md` §7.5).
    pub fn hourly_parquet_file_name(topic: &Topic, minute: Minute) -> String {
        format!(
            "{}-{}{}",
            Self::file_topic_token(topic),
            minute.hour_stamp(),
            Self::PARQUET_EXTENSION
        )
    }

    /// `_invalid.<ftopic>-yyyy-MM-dd-HH.zst`: the events of the hour that its
    /// Parquet file could not hold, as `_invalid` records (`docs/format.md` §7.5).
    /// Hidden (`_`), so readers of the hour directory skip it.
    pub fn hourly_invalid_file_name(topic: &Topic, minute: Minute) -> String {
        format!(
            "{}{}",
            Self::HOURLY_INVALID_PREFIX,
            Self::hourly_file_name(topic, minute)
        )
    }

    /// Parses `<ftopic>-yyyy-MM-dd-HH.zst` into the topic and the hour's first
    /// minute; the topic is read literally, as in
    /// [`Layout::parse_collector_file_name`].
    pub fn parse_hourly_file_name(name: &str) -> Result<(Topic, Minute), LayoutError> {
        let bad = |reason: String| LayoutError::NotAConduitPath {
            path: name.to_owned(),
            reason: format!("hourly file names look like <ftopic>-yyyy-MM-dd-HH.zst: {reason}"),
        };
        let stem = name
            .strip_suffix(Self::DATA_EXTENSION)
            .ok_or_else(|| bad("wrong extension".to_owned()))?;
        let (topic, stamp) = stem
            .split_once('-')
            .ok_or_else(|| bad("no '-' after the topic".to_owned()))?;
        let topic = Self::parse_file_topic_token(topic).map_err(bad)?;
        let minute = Minute::parse_hour_stamp(stamp).map_err(|e| bad(e.to_string()))?;
        Ok((topic, minute))
    }

    /// `<dir>/_SUCCESS`.
    pub fn success_marker(dir: &str) -> String {
        format!("{dir}/{}", Self::SUCCESS_MARKER)
    }

    /// `_tmp.<file_name>`: the name of an in-progress copy of `file_name`.
    pub fn tmp_name(file_name: &str) -> String {
        format!("{}{file_name}", Self::TMP_PREFIX)
    }

    /// The in-progress copy of `path`, in the same directory:
    /// `a/b/c.zst` becomes `a/b/_tmp.c.zst`.
    pub fn tmp_path(path: &str) -> String {
        match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/{}", Self::tmp_name(name)),
            None => Self::tmp_name(path),
        }
    }

    /// True if the last component of `name` starts with `_` or `.` (markers,
    /// in-progress copies, dot files), which Hadoop input formats skip. Never
    /// true for a data file name built here, system topics included.
    pub fn is_hidden(name: &str) -> bool {
        let last = name.rsplit('/').next().unwrap_or(name);
        last.starts_with('_') || last.starts_with('.')
    }

    /// True if the last component of `name` is an in-progress copy
    /// ([`Layout::tmp_name`]).
    pub fn is_tmp(name: &str) -> bool {
        let last = name.rsplit('/').next().unwrap_or(name);
        last.starts_with(Self::TMP_PREFIX)
    }

    /// `system/heartbeats/<cluster>/<collector>.json`.
    pub fn heartbeat_path(cluster: &NodeName, collector: &NodeName) -> String {
        format!("{}/heartbeats/{cluster}/{collector}.json", Self::SYSTEM_DIR)
    }

    /// `system/checkpoints/<job>/<key>.json`; `job` and `key` must match
    /// `[A-Za-z0-9_.-]{1,200}` and not start with `.`.
    pub fn checkpoint_path(job: &str, key: &str) -> Result<String, LayoutError> {
        validate_system_name(JOB_KIND, job)?;
        validate_system_name(KEY_KIND, key)?;
        Ok(format!("{}/checkpoints/{job}/{key}.json", Self::SYSTEM_DIR))
    }

    /// `system/leases/<name>.json`; `name` must match `[A-Za-z0-9_.-]{1,200}`
    /// and not start with `.`.
    pub fn lease_path(name: &str) -> Result<String, LayoutError> {
        validate_system_name(LEASE_KIND, name)?;
        Ok(format!("{}/leases/{name}.json", Self::SYSTEM_DIR))
    }

    /// `system/trash`.
    pub fn trash_dir() -> String {
        format!("{}/trash", Self::SYSTEM_DIR)
    }

    /// `quarantine/<path>`: where a damaged data file at `path` (relative to
    /// the root, e.g. `data/clicks/c1/clicks-2026-11-22-10-05_00000.zst`) is
    /// moved, unchanged, by the collector's recovery or the worker, so that it
    /// is kept for an operator but no reader, recovery or seal sees it again
    /// (`docs/format.md` §1.3).
    pub fn quarantine_path(path: &str) -> String {
        format!("{}/{path}", Self::QUARANTINE_DIR)
    }

    /// The original path of a file under `quarantine/`
    /// ([`Layout::quarantine_path`] inverted); `None` for any other path.
    pub fn quarantined_original(path: &str) -> Option<&str> {
        path.strip_prefix(Self::QUARANTINE_DIR)?
            .strip_prefix('/')
            .filter(|original| !original.is_empty())
    }

    /// Parses a stream path built by this module:
    ///
    /// * `data/<topic>/<collector>/<collector file name>` (the file name's
    ///   topic token must be `<topic>`'s, see
    ///   [`Layout::file_topic_token_matches`]; in-progress copies are rejected),
    /// * `streams_local|streams/<topic>/yyyy/MM/dd/HH/mm[/<file>]`,
    /// * `streams_hourly/<topic>/yyyy/MM/dd/HH[/<file>]`.
    ///
    /// In minute and hour directories `<file>` is not interpreted (markers,
    /// temp copies and data files all parse) but must be printable ASCII
    /// without spaces and not `.` or `..`.
    pub fn parse_path(path: &str) -> Result<Located, LayoutError> {
        let bad = |reason: String| LayoutError::NotAConduitPath {
            path: path.to_owned(),
            reason,
        };
        if path.is_empty() {
            return Err(bad("empty path".to_owned()));
        }
        if path.starts_with('/') {
            return Err(bad(
                "must be relative to the cluster root (no leading '/')".to_owned()
            ));
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("empty component (doubled or trailing '/')".to_owned()));
        }
        let view = match View::from_dir_name(parts[0]) {
            Some(view) => view,
            None if parts[0] == Self::SYSTEM_DIR => {
                return Err(bad("system paths carry no topic or minute".to_owned()))
            }
            None => {
                return Err(bad(format!(
                    "unknown top-level directory {:?}: expected data, streams_local, streams or streams_hourly",
                    parts[0]
                )))
            }
        };
        let topic = match parts.get(1) {
            Some(topic) => Topic::new(*topic).map_err(|e| bad(e.to_string()))?,
            None => return Err(bad("missing topic".to_owned())),
        };
        let rest = &parts[2..];
        match view {
            View::Collector => {
                let [collector, file] = rest else {
                    return Err(bad(
                        "expected data/<topic>/<collector>/<collector file name>".to_owned(),
                    ));
                };
                let collector = NodeName::new(*collector).map_err(|e| bad(e.to_string()))?;
                let parsed =
                    Self::parse_collector_file_name(file).map_err(|e| bad(e.to_string()))?;
                if !Self::is_file_of(&parsed.topic, &topic) {
                    let token = Self::file_topic_token(&parsed.topic);
                    return Err(bad(format!(
                        "file topic {token:?} differs from directory topic {:?} (expected {:?})",
                        topic.as_str(),
                        Self::file_topic_token(&topic)
                    )));
                }
                Ok(Located {
                    view,
                    topic,
                    minute: parsed.minute,
                    file: Some((*file).to_owned()),
                    collector: Some(collector),
                })
            }
            View::Local | View::Merged | View::Hourly => {
                let depth = view.date_levels();
                if rest.len() != depth && rest.len() != depth + 1 {
                    let shape = if view == View::Hourly {
                        "yyyy/MM/dd/HH"
                    } else {
                        "yyyy/MM/dd/HH/mm"
                    };
                    return Err(bad(format!(
                        "expected {}/<topic>/{shape}[/<file>]",
                        view.dir_name()
                    )));
                }
                let minute = Minute::from_fields(&rest[..depth]).ok_or_else(|| {
                    bad(format!(
                        "invalid {} directory {:?}",
                        if view == View::Hourly {
                            "hour"
                        } else {
                            "minute"
                        },
                        rest[..depth].join("/")
                    ))
                })?;
                let file = match rest.get(depth) {
                    Some(file) if is_plain_file_name(file) => Some((*file).to_owned()),
                    Some(file) => return Err(bad(format!("invalid file name {file:?}"))),
                    None => None,
                };
                Ok(Located {
                    view,
                    topic,
                    minute,
                    file,
                    collector: None,
                })
            }
        }
    }
}

/// A file name inside a minute or hour directory: printable ASCII, no space
/// or `/`, not `.` or `..`.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

/// `NNNNN`: at least five ASCII digits, no leading zero beyond the padding
/// (so each `u32` has exactly one spelling), fitting a `u32`.
fn parse_seq(s: &str) -> Option<u32> {
    let canonical = s.len() == 5 || (s.len() > 5 && !s.starts_with('0'));
    if canonical && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn node(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn min(s: &str) -> Minute {
        Minute::parse_flexible(s).unwrap()
    }

    fn reason(e: LayoutError) -> String {
        match e {
            LayoutError::NotAConduitPath { reason, .. } => reason,
            other => panic!("expected NotAConduitPath, got {other:?}"),
        }
    }

    #[test]
    fn topic_validation() {
        for ok in ["clicks", "a", "_audit", "A_b_9", &"x".repeat(128)] {
            assert_eq!(topic(ok).as_str(), ok);
        }
        for bad in [
            "",
            "clicks-x",
            "a/b",
            "clïcks",
            "a b",
            "a.b",
            &"x".repeat(129),
        ] {
            assert_eq!(
                Topic::new(bad),
                Err(LayoutError::InvalidTopic {
                    topic: bad.to_owned()
                })
            );
        }
        assert_eq!(
            Topic::new("a-b").unwrap_err().to_string(),
            r#"invalid topic name "a-b": must match [A-Za-z0-9_]{1,128}"#
        );
    }

    #[test]
    fn system_topics() {
        assert_eq!(Topic::audit(), topic("_audit"));
        assert_eq!(Topic::invalid(), topic("_invalid"));
        assert!(Topic::audit().is_system());
        assert!(Topic::invalid().is_system());
        assert!(!topic("clicks").is_system());
    }

    #[test]
    fn node_name_validation() {
        assert_eq!(node("dc1").to_string(), "dc1");
        assert!(NodeName::new("x".repeat(64)).is_ok());
        assert!(NodeName::new("dc_1_").is_ok());
        for bad in ["", "dc-1", "a/b", "ünï", "_dc1", "_", &"x".repeat(65)] {
            assert!(NodeName::new(bad).is_err(), "{bad}");
        }
        assert_eq!(
            NodeName::new("dc-1").unwrap_err().to_string(),
            r#"invalid node name "dc-1": must match [A-Za-z0-9][A-Za-z0-9_]{0,63}"#
        );
    }

    #[test]
    fn names_serde_as_strings_and_validate() {
        assert_eq!(
            serde_json::to_string(&topic("clicks")).unwrap(),
            r#""clicks""#
        );
        assert_eq!(
            serde_json::from_str::<Topic>(r#""clicks""#).unwrap(),
            topic("clicks")
        );
        let err = serde_json::from_str::<Topic>(r#""a-b""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"invalid topic name "a-b""#), "{err}");
        assert_eq!(
            serde_json::from_str::<NodeName>(r#""c1""#).unwrap(),
            node("c1")
        );
        assert!(serde_json::from_str::<NodeName>(r#""c-1""#).is_err());
        assert_eq!("clicks".parse::<Topic>().unwrap(), topic("clicks"));
    }

    #[test]
    fn minute_formats() {
        let m = min("2026-11-22T10:05Z");
        assert_eq!(m.to_string(), "2026-11-22T10:05Z");
        assert_eq!(format!("{m:?}"), "Minute(2026-11-22T10:05Z)");
        assert_eq!(m.dir_path(), "2026/11/22/10/05");
        assert_eq!(m.file_stamp(), "2026-11-22-10-05");
        assert_eq!(m.hour_dir_path(), "2026/11/22/10");
        assert_eq!(m.hour_stamp(), "2026-11-22-10");
        assert_eq!(m.start().to_rfc3339(), "2026-11-22T10:05:00+00:00");
        assert_eq!(m.end().to_rfc3339(), "2026-11-22T10:06:00+00:00");
        assert_eq!(m.next().unwrap(), min("2026-11-22T10:06Z"));
        assert_eq!(m.prev().unwrap(), min("2026-11-22T10:04Z"));
        assert_eq!(m.hour_start(), min("2026-11-22T10:00Z"));
        assert!(!m.is_hour_start());
        assert!(m.hour_start().is_hour_start());
        assert_eq!(Minute::parse_dir_path("2026/11/22/10/05").unwrap(), m);
        assert_eq!(Minute::parse_file_stamp("2026-11-22-10-05").unwrap(), m);
    }

    #[test]
    fn minute_crosses_days_and_years() {
        let m = min("2026-12-31T23:59Z");
        assert_eq!(m.next().unwrap().to_string(), "2027-01-01T00:00Z");
        assert_eq!(
            min("2028-03-01T00:00Z").prev().unwrap().to_string(),
            "2028-02-29T23:59Z"
        );
    }

    #[test]
    fn minute_range() {
        assert_eq!(Minute::MIN.to_string(), "1970-01-01T00:00Z");
        assert_eq!(Minute::MAX.to_string(), "9999-12-31T23:59Z");
        assert_eq!(
            Minute::MAX.end().to_rfc3339(),
            "+10000-01-01T00:00:00+00:00"
        );
        assert!(Minute::MAX.next().is_err());
        assert!(Minute::MIN.prev().is_err());
        assert!(Minute::from_epoch_minutes(-1).is_err());
        assert!(Minute::from_epoch_minutes(Minute::MAX.epoch_minutes() + 1).is_err());
        assert!(Minute::from_epoch_minutes(i64::MAX).is_err());
        assert!(Minute::MIN.add_minutes(i64::MIN).is_err());
        assert!(Minute::MAX.add_minutes(i64::MAX).is_err());
        let before = DateTime::from_timestamp(-1, 0).unwrap();
        assert!(Minute::from_datetime(before).is_err());
        assert_eq!(
            Minute::from_epoch_minutes(-1).unwrap_err().to_string(),
            "invalid minute \"epoch minute -1\": expected a UTC minute like 2026-11-22T10:05Z \
             between 1970-01-01T00:00Z and 9999-12-31T23:59Z"
        );
    }

    #[test]
    fn minute_floors() {
        let t = DateTime::parse_from_rfc3339("2026-11-22T10:05:59.999Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(Minute::from_datetime(t).unwrap(), min("2026-11-22T10:05"));
    }

    #[test]
    fn parse_flexible_forms() {
        let m = min("2026-11-22T10:05Z");
        for text in [
            "2026-11-22T10:05",
            "2026-11-22T10:05Z",
            "2026-11-22T10:05:00Z",
            "2026-11-22 10:05",
            " 2026-11-22 10:05 ",
            "2026-11-22T10:05:37.25Z",
            "2026-11-22T10:05:59",
            "2026-11-22T12:05:00+02:00",
            "2026/11/22/10/05",
            "2026-11-22-10-05",
        ] {
            assert_eq!(Minute::parse_flexible(text), Ok(m), "{text}");
        }
        for bad in [
            "",
            "2026-13-22T10:05",
            "2026-11-22T10:60",
            "2026-11-22T24:00",
            "2026-02-30T10:05",
            "2026-11-22T10:05:61Z",
            "1969-12-31T23:59",
            "10000-01-01T00:00",
            "26-11-22T10:05",
            "2026-11-22T1:05",
            "2026-11-22T10:05:00.Z",
            "2026-11-22X10:05",
            "2026/11/22/10",
            "2026/11/22/10/05/00",
            "+2026-11-22T10:05",
            "2026-11-22T10:0５",
        ] {
            let err = Minute::parse_flexible(bad).expect_err(bad);
            assert_eq!(
                err,
                LayoutError::InvalidMinute {
                    text: bad.to_owned()
                },
                "{bad}"
            );
        }
    }

    #[test]
    fn strict_parsers_reject_loose_forms() {
        for bad in [
            "2026/1/22/10/05",
            "2026/11/22/10/5",
            "2026/11/22/10/05/",
            "2026-11-22-10-05",
            "２026/11/22/10/05",
        ] {
            assert!(Minute::parse_dir_path(bad).is_err(), "{bad}");
        }
        for bad in [
            "2026/11/22/10/05",
            "2026-11-22T10:05",
            "2026-11-22-10-5",
            "2026-11-22-10",
        ] {
            assert!(Minute::parse_file_stamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn minute_serde() {
        let m = min("2026-11-22T10:05Z");
        assert_eq!(serde_json::to_string(&m).unwrap(), r#""2026-11-22T10:05Z""#);
        assert_eq!(
            serde_json::from_str::<Minute>(r#""2026-11-22T10:05Z""#).unwrap(),
            m
        );
        assert!(serde_json::from_str::<Minute>(r#""2026-13-22T10:05Z""#).is_err());
    }

    #[test]
    fn views() {
        let names: Vec<_> = View::ALL
            .iter()
            .map(|v| (v.to_string(), v.dir_name()))
            .collect();
        assert_eq!(
            names,
            [
                ("collector".to_owned(), "data"),
                ("local".to_owned(), "streams_local"),
                ("merged".to_owned(), "streams"),
                ("hourly".to_owned(), "streams_hourly"),
            ]
        );
        for v in View::ALL {
            assert_eq!(v.to_string().parse::<View>(), Ok(v));
        }
        assert_eq!(
            "streams".parse::<View>().unwrap_err().to_string(),
            r#"invalid view name "streams": must be one of collector, local, merged, hourly"#
        );
    }

    #[test]
    fn builders_match_documented_examples() {
        let (t, c, dc, m) = (
            topic("clicks"),
            node("c1"),
            node("dc1"),
            min("2026-11-22T10:05"),
        );
        assert_eq!(Layout::collector_dir(&t, &c), "data/clicks/c1");
        assert_eq!(
            Layout::collector_file(&t, &c, m, 3),
            "data/clicks/c1/clicks-2026-11-22-10-05_00003.zst"
        );
        assert_eq!(
            Layout::collector_file_name(&t, m, 1_234_567),
            "clicks-2026-11-22-10-05_1234567.zst"
        );
        assert_eq!(Layout::topic_dir(View::Merged, &t), "streams/clicks");
        assert_eq!(
            Layout::minute_dir(View::Local, &t, m),
            "streams_local/clicks/2026/11/22/10/05"
        );
        assert_eq!(
            Layout::minute_dir(View::Merged, &t, m),
            "streams/clicks/2026/11/22/10/05"
        );
        assert_eq!(
            Layout::minute_dir(View::Hourly, &t, m),
            "streams_hourly/clicks/2026/11/22/10"
        );
        assert_eq!(
            Layout::hour_dir(&t, m),
            "streams_hourly/clicks/2026/11/22/10"
        );
        assert_eq!(
            Layout::local_file_name(&dc, &c, m, 3, &t),
            "dc1-c1-clicks-2026-11-22-10-05_00003.zst"
        );
        assert_eq!(Layout::hourly_file_name(&t, m), "clicks-2026-11-22-10.zst");
        assert_eq!(
            Layout::success_marker("streams/clicks/2026/11/22/10/05"),
            "streams/clicks/2026/11/22/10/05/_SUCCESS"
        );
        assert_eq!(Layout::tmp_name("a.zst"), "_tmp.a.zst");
        assert_eq!(Layout::tmp_path("streams/x/a.zst"), "streams/x/_tmp.a.zst");
        assert_eq!(Layout::tmp_path("a.zst"), "_tmp.a.zst");
        assert_eq!(
            Layout::heartbeat_path(&dc, &c),
            "system/heartbeats/dc1/c1.json"
        );
        assert_eq!(
            Layout::checkpoint_path("merger", "clicks.dc1").unwrap(),
            "system/checkpoints/merger/clicks.dc1.json"
        );
        assert_eq!(
            Layout::lease_path("merger-lock").unwrap(),
            "system/leases/merger-lock.json"
        );
        assert_eq!(Layout::trash_dir(), "system/trash");
        let file = "data/clicks/c1/clicks-2026-11-22-10-05_00000.zst";
        let quarantined = Layout::quarantine_path(file);
        assert_eq!(
            quarantined,
            "quarantine/data/clicks/c1/clicks-2026-11-22-10-05_00000.zst"
        );
        assert_eq!(Layout::quarantined_original(&quarantined), Some(file));
        assert_eq!(Layout::quarantined_original(file), None);
        assert_eq!(Layout::quarantined_original("quarantine/"), None);
        assert_eq!(Layout::quarantined_original("quarantined/x"), None);
        let local =
            "streams_local/clicks/2026/11/22/10/05/dc1-c1-clicks-2026-11-22-10-05_00000.zst";
        assert_eq!(
            Layout::quarantined_original(&Layout::quarantine_path(local)),
            Some(local)
        );
        assert!(
            Layout::parse_path(&Layout::quarantine_path(local)).is_err(),
            "not a stream path"
        );
    }

    #[test]
    #[should_panic(expected = "no minute directories")]
    fn collector_view_has_no_minute_dir() {
        Layout::minute_dir(View::Collector, &topic("t"), Minute::MIN);
    }

    #[test]
    fn system_names_are_validated() {
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(201),
        ] {
            assert!(Layout::lease_path(bad).is_err(), "{bad:?}");
            assert!(Layout::checkpoint_path(bad, "k").is_err(), "{bad:?}");
            assert!(Layout::checkpoint_path("j", bad).is_err(), "{bad:?}");
        }
        assert!(Layout::lease_path(&"x".repeat(200)).is_ok());
        assert_eq!(
            Layout::checkpoint_path("j", "../x")
                .unwrap_err()
                .to_string(),
            r#"invalid checkpoint key name "../x": must match [A-Za-z0-9_.-]{1,200} and not start with '.'"#
        );
        assert_eq!(
            Layout::lease_path("a/b").unwrap_err(),
            LayoutError::InvalidName {
                kind: "lease",
                name: "a/b".to_owned()
            }
        );
    }

    #[test]
    fn hidden_and_tmp() {
        assert!(Layout::is_hidden("_SUCCESS"));
        assert!(Layout::is_hidden("_tmp.x.zst"));
        assert!(Layout::is_hidden(".x.crc"));
        assert!(Layout::is_hidden("streams/t/_SUCCESS"));
        assert!(!Layout::is_hidden("dc1-c1-t-2026-11-22-10-05_00001.zst"));
        let (a, c, m) = (Topic::audit(), node("c1"), min("2026-11-22T10:05"));
        assert!(!Layout::is_hidden(&Layout::collector_file(&a, &c, m, 0)));
        assert!(!Layout::is_hidden(&Layout::hourly_file_name(&a, m)));
        assert!(!Layout::is_hidden("_dir/file"));
        assert!(Layout::is_tmp("a/_tmp.x"));
        assert!(!Layout::is_tmp("_SUCCESS"));
    }

    #[test]
    fn parses_file_names() {
        assert_eq!(
            Layout::parse_local_file_name("dc1-c1-clicks-2026-11-22-10-05_00003.zst").unwrap(),
            LocalFileName {
                cluster: node("dc1"),
                collector: node("c1"),
                topic: topic("clicks"),
                minute: min("2026-11-22T10:05"),
                seq: 3
            }
        );
        assert_eq!(
            Layout::parse_collector_file_name("sys_audit-2026-11-22-10-05_4294967295.zst").unwrap(),
            CollectorFileName {
                topic: topic("sys_audit"),
                minute: min("2026-11-22T10:05"),
                seq: u32::MAX
            }
        );
        assert_eq!(
            Layout::parse_hourly_file_name("clicks-2026-11-22-10.zst").unwrap(),
            (topic("clicks"), min("2026-11-22T10:00"))
        );
        for bad in [
            "",
            "clicks-2026-11-22-10-05_00003.gz",
            "clicks-2026-11-22-10-05_00003",
            "clicks-2026-11-22-10-05_3.zst",
            "clicks-2026-11-22-10-05_000003.zst",
            "clicks-2026-11-22-10-05_4294967296.zst",
            "clicks-2026-11-22-10-05_+0003.zst",
            "clicks-2026-11-22-10-05-00003.zst",
            "clicks-2026-13-22-10-05_00003.zst",
            "clicks-2026-11-22-10-60_00003.zst",
            "clicks-x-2026-11-22-10-05_00003.zst",
            "clicks_2026-11-22-10-05_00003.zst",
            "_tmp.clicks-2026-11-22-10-05_00003.zst",
            "clicks-2026-11-22-10-0é_00003.zst",
            "clicks-2026-11-22-10-05é00003.zst",
            "clicks-2026-11-22-10-05_00003.zst.zst",
            "_audit-2026-11-22-10-05_00003.zst",
            "_-2026-11-22-10-05_00003.zst",
        ] {
            let e = Layout::parse_collector_file_name(bad).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("not a conduit path {bad:?}: collector file names")),
                "{e}"
            );
        }
        let e = Layout::parse_collector_file_name("clicks-2026-11-22-10-05_00003.gz").unwrap_err();
        assert!(reason(e).ends_with("wrong extension"));
        for bad in [
            "c1-clicks-2026-11-22-10-05_00003.zst",
            "dc1-c1-clicks-2026-11-22-10-05_00003.gz",
            "d-c-t",
        ] {
            assert!(Layout::parse_local_file_name(bad).is_err(), "{bad}");
        }
        for bad in [
            "clicks-2026-11-22-10-05.zst",
            "clicks-2026-11-22.zst",
            "clicks-2026-11-22-10.gz",
            "_audit-2026-11-22-10.zst",
        ] {
            assert!(Layout::parse_hourly_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn system_topic_file_names_get_a_sys_prefix() {
        let (audit, user, m) = (Topic::audit(), topic("sys_audit"), min("2026-11-22T10:05"));
        assert_eq!(Layout::file_topic_token(&audit), "sys_audit");
        assert_eq!(Layout::file_topic_token(&user), "sys_audit");
        assert_eq!(Layout::file_topic_token(&topic("clicks")), "clicks");
        assert_eq!(Layout::file_topic_token(&topic("_")), "sys_");
        assert!(Layout::file_topic_token_matches("sys_audit", &audit));
        assert!(Layout::file_topic_token_matches("sys_audit", &user));
        assert!(!Layout::file_topic_token_matches("_audit", &audit));
        assert!(!Layout::file_topic_token_matches(
            "sys_audit",
            &topic("audit")
        ));
        assert!(!Layout::file_topic_token_matches("syssys_audit", &user));

        let name = "sys_audit-2026-11-22-10-05_00000.zst";
        assert_eq!(Layout::collector_file_name(&audit, m, 0), name);
        assert_eq!(Layout::collector_file_name(&user, m, 0), name);
        assert_eq!(
            Layout::collector_file_name(&topic("clicks"), m, 0),
            "clicks-2026-11-22-10-05_00000.zst"
        );
        assert_eq!(
            Layout::hourly_file_name(&audit, m),
            "sys_audit-2026-11-22-10.zst"
        );
        assert_eq!(
            Layout::hourly_file_name(&topic("clicks"), m),
            "clicks-2026-11-22-10.zst"
        );
        assert_eq!(
            Layout::local_file_name(&node("dc1"), &node("c1"), m, 0, &audit),
            "dc1-c1-sys_audit-2026-11-22-10-05_00000.zst"
        );
        // File-name parsers read the token literally.
        let parsed = Layout::parse_collector_file_name(name).unwrap();
        assert_eq!(parsed.topic, user);
        assert_eq!(parsed.to_string(), name);
        assert_eq!(
            Layout::parse_hourly_file_name("sys_audit-2026-11-22-10.zst").unwrap(),
            (user.clone(), m.hour_start())
        );
        assert_eq!(
            Layout::parse_local_file_name("dc1-c1-sys_audit-2026-11-22-10-05_00000.zst")
                .unwrap()
                .topic,
            user
        );

        // The directory decides.
        let located = Layout::parse_path(&format!("data/sys_audit/c1/{name}")).unwrap();
        assert_eq!(located.topic, user);
        assert_eq!(
            located.to_path().unwrap(),
            format!("data/sys_audit/c1/{name}")
        );
        let path = format!("data/_audit/c1/{name}");
        assert_eq!(Layout::collector_file(&audit, &node("c1"), m, 0), path);
        let located = Layout::parse_path(&path).unwrap();
        assert_eq!(
            located,
            Located {
                view: View::Collector,
                topic: audit.clone(),
                minute: m,
                file: Some(name.to_owned()),
                collector: Some(node("c1")),
            }
        );
        assert_eq!(located.to_path().unwrap(), path);
        for bad in [
            "data/_audit/c1/_audit-2026-11-22-10-05_00000.zst",
            "data/audit/c1/sys_audit-2026-11-22-10-05_00000.zst",
            "data/_audit/c1/audit-2026-11-22-10-05_00000.zst",
            "data/_sys_audit/c1/sys_audit-2026-11-22-10-05_00000.zst",
        ] {
            assert!(Layout::parse_path(bad).is_err(), "{bad}");
        }
        assert!(reason(
            Layout::parse_path("data/_audit/c1/_audit-2026-11-22-10-05_00000.zst").unwrap_err()
        )
        .contains("never start with '_'"));
        assert!(reason(
            Layout::parse_path("data/audit/c1/sys_audit-2026-11-22-10-05_00000.zst").unwrap_err()
        )
        .contains("differs from directory topic"));

        // A token too long to be a topic can only name a system topic.
        let long = topic(&format!("_{}", "x".repeat(127)));
        let name = Layout::collector_file_name(&long, m, 7);
        assert_eq!(
            name,
            format!("sys_{}-2026-11-22-10-05_00007.zst", "x".repeat(127))
        );
        assert_eq!(
            Layout::parse_collector_file_name(&name).unwrap().topic,
            long
        );
        let path = Layout::collector_file(&long, &node("c1"), m, 7);
        assert_eq!(Layout::parse_path(&path).unwrap().topic, long);
        assert!(Layout::parse_collector_file_name(&format!(
            "sys{}-2026-11-22-10-05_00007.zst",
            "x".repeat(127)
        ))
        .is_err());
    }

    #[test]
    fn files_of_a_topic_are_chosen_by_their_directory() {
        let (audit, user, plain) = (Topic::audit(), topic("sys_audit"), topic("audit"));
        let m = min("2026-11-22T10:05");
        let name = "sys_audit-2026-11-22-10-05_00007.zst";
        // One name, two topics: the directory decides, and the result names it.
        for dir_topic in [&audit, &user] {
            let parsed = Layout::collector_file_in(dir_topic, name).unwrap();
            assert_eq!(parsed.topic, *dir_topic);
            assert_eq!((parsed.minute, parsed.seq), (m, 7));
            assert_eq!(parsed.to_string(), name);
        }
        for (dir_topic, not_its) in [
            (&plain, name.to_owned()),
            (&audit, "audit-2026-11-22-10-05_00007.zst".to_owned()),
            (&audit, "_audit-2026-11-22-10-05_00007.zst".to_owned()),
            (&audit, Layout::tmp_name(name)),
            (
                &audit,
                format!("{}.0123456789abcdef", Layout::tmp_name(name)),
            ),
            (&audit, ".sys_audit-2026-11-22-10-05_00007.zst".to_owned()),
            (
                &audit,
                "sys_audit-2026-11-22-10-05_00007.zst.crc".to_owned(),
            ),
            (&audit, Layout::SUCCESS_MARKER.to_owned()),
        ] {
            assert_eq!(
                Layout::collector_file_in(dir_topic, &not_its),
                None,
                "{not_its}"
            );
        }
        let local = format!("dc1-c1-{name}");
        for dir_topic in [&audit, &user] {
            let parsed = Layout::local_file_in(dir_topic, &local).unwrap();
            assert_eq!(parsed.topic, *dir_topic);
            assert_eq!(parsed.to_string(), local);
        }
        assert_eq!(Layout::local_file_in(&plain, &local), None);
        assert_eq!(Layout::local_file_in(&audit, name), None);
        assert_eq!(
            Layout::local_file_in(&audit, &Layout::tmp_name(&local)),
            None
        );
    }

    #[test]
    fn date_levels_and_prefixes() {
        assert_eq!(View::Local.date_levels(), DATE_DIR_WIDTHS.len());
        assert_eq!(View::Merged.date_levels(), 5);
        assert_eq!(View::Hourly.date_levels(), 4);
        assert_eq!(View::Collector.date_levels(), 0);
        let m = min("2026-11-22T10:05");
        let fields: Vec<String> = m.dir_path().split('/').map(str::to_owned).collect();
        let widths: Vec<usize> = fields.iter().map(String::len).collect();
        assert_eq!(widths, DATE_DIR_WIDTHS);
        let firsts = [
            "2026-01-01T00:00",
            "2026-11-01T00:00",
            "2026-11-22T00:00",
            "2026-11-22T10:00",
        ];
        for (depth, first) in (1..=4).zip(firsts) {
            let prefix: Vec<&str> = fields[..depth].iter().map(String::as_str).collect();
            assert_eq!(
                Minute::parse_dir_prefix(&prefix),
                Some(min(first)),
                "{prefix:?}"
            );
        }
        let all: Vec<&str> = fields.iter().map(String::as_str).collect();
        assert_eq!(Minute::parse_dir_prefix(&all), Some(m));
        for bad in [
            &[][..],
            &["26"],
            &["2026", "13"],
            &["2026", "02", "30"],
            &["2026", "1"],
        ] {
            assert_eq!(Minute::parse_dir_prefix(bad), None, "{bad:?}");
        }
        let too_long = ["2026", "11", "22", "10", "05", "00"];
        assert_eq!(Minute::parse_dir_prefix(&too_long), None);
    }

    #[test]
    fn parse_path_examples() {
        let (t, m) = (topic("clicks"), min("2026-11-22T10:05"));
        assert_eq!(
            Layout::parse_path("data/clicks/c1/clicks-2026-11-22-10-05_00003.zst").unwrap(),
            Located {
                view: View::Collector,
                topic: t.clone(),
                minute: m,
                file: Some("clicks-2026-11-22-10-05_00003.zst".to_owned()),
                collector: Some(node("c1")),
            }
        );
        assert_eq!(
            Layout::parse_path("streams/clicks/2026/11/22/10/05/_SUCCESS").unwrap(),
            Located {
                view: View::Merged,
                topic: t.clone(),
                minute: m,
                file: Some("_SUCCESS".to_owned()),
                collector: None
            }
        );
        assert_eq!(
            Layout::parse_path("streams_hourly/clicks/2026/11/22/10").unwrap(),
            Located {
                view: View::Hourly,
                topic: t,
                minute: m.hour_start(),
                file: None,
                collector: None
            }
        );
    }

    #[test]
    fn parse_path_rejects_bad_paths() {
        let cases = [
            ("", "empty path"),
            ("/streams/clicks/2026/11/22/10/05", "relative"),
            ("streams/clicks/2026/11/22/10/05/", "empty component"),
            ("streams//clicks/2026/11/22/10/05", "empty component"),
            (
                "streamz/clicks/2026/11/22/10/05",
                "unknown top-level directory",
            ),
            ("system/leases/x.json", "system paths"),
            ("streams", "missing topic"),
            (
                "streams/clicks",
                "expected streams/<topic>/yyyy/MM/dd/HH/mm[/<file>]",
            ),
            (
                "streams/clicks-x/2026/11/22/10/05",
                "invalid topic name \"clicks-x\"",
            ),
            ("streams/clïcks/2026/11/22/10/05", "invalid topic name"),
            (
                &format!("streams/{}/2026/11/22/10/05", "x".repeat(129)),
                "invalid topic name",
            ),
            ("streams/clicks/2026/11/22/10", "expected streams/<topic>"),
            (
                "streams/clicks/2026/13/22/10/05",
                "invalid minute directory \"2026/13/22/10/05\"",
            ),
            (
                "streams/clicks/2026/11/22/10/60",
                "invalid minute directory",
            ),
            (
                "streams/clicks/1969/12/31/23/59",
                "invalid minute directory",
            ),
            ("streams/clicks/2026/11/22/10/5", "invalid minute directory"),
            (
                "streams/clicks/2026/11/22/10/05/a/b",
                "expected streams/<topic>",
            ),
            ("streams/clicks/2026/11/22/10/05/..", "invalid file name"),
            ("streams/clicks/2026/11/22/10/05/a b", "invalid file name"),
            ("streams/clicks/2026/11/22/10/05/é", "invalid file name"),
            (
                "streams_hourly/clicks/2026/11/22/10/05/x.zst",
                "expected streams_hourly/<topic>/yyyy/MM/dd/HH[/<file>]",
            ),
            (
                "streams_hourly/clicks/2026/11/22/25",
                "invalid hour directory",
            ),
            (
                "data/clicks/c1",
                "expected data/<topic>/<collector>/<collector file name>",
            ),
            (
                "data/clicks/c1/x/clicks-2026-11-22-10-05_00003.zst",
                "expected data/",
            ),
            (
                "data/clicks/c-1/clicks-2026-11-22-10-05_00003.zst",
                "invalid node name",
            ),
            (
                "data/clicks/c1/clicks-2026-11-22-10-05_00003.gz",
                "wrong extension",
            ),
            (
                "data/clicks/c1/_tmp.clicks-2026-11-22-10-05_00003.zst",
                "invalid topic name \"_tmp.clicks\"",
            ),
            (
                "data/clicks/c1/views-2026-11-22-10-05_00003.zst",
                "differs from directory topic",
            ),
        ];
        for (path, expected) in cases {
            let err = Layout::parse_path(path).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("not a conduit path {path:?}: ")),
                "{message}"
            );
            assert!(reason(err).contains(expected), "{path}: {message}");
        }
    }

    #[test]
    fn to_path_rejects_inconsistent_locations() {
        let l = Located {
            view: View::Local,
            topic: topic("t"),
            minute: Minute::MIN,
            file: None,
            collector: Some(node("c")),
        };
        assert!(l.to_path().is_err());
        let l = Located {
            view: View::Hourly,
            collector: None,
            minute: Minute::MIN.next().unwrap(),
            ..l
        };
        assert!(l.to_path().is_err());
        let l = Located {
            view: View::Collector,
            ..l
        };
        assert!(l.to_path().is_err());
        let l = Located {
            collector: Some(node("c")),
            file: Some(Layout::collector_file_name(&topic("t"), Minute::MAX, 1)),
            ..l
        };
        assert!(
            l.to_path().is_err(),
            "file minute differs from located minute"
        );
        let l = Located {
            minute: Minute::MAX,
            ..l
        };
        assert_eq!(
            l.to_path().unwrap(),
            "data/t/c/t-9999-12-31-23-59_00001.zst"
        );
        let l = Located {
            view: View::Merged,
            collector: None,
            file: Some("a/b".to_owned()),
            ..l
        };
        assert!(l.to_path().is_err());
    }

    /// User and system topics, including user topics that look like system
    /// file tokens (`sys_...`) and lengths near the limit.
    fn topics() -> impl Strategy<Value = Topic> {
        prop_oneof![
            3 => "[A-Za-z0-9_]{1,128}",
            2 => "_[A-Za-z0-9_]{0,127}",
            1 => "_[A-Za-z0-9_]{124,127}",
            1 => "sys_[A-Za-z0-9_]{0,124}",
        ]
        .prop_map(|s| Topic::new(s).unwrap())
    }

    /// Checks what a file-name parser returned as the topic of a name built
    /// for `t`: the token read literally, which matches `t`.
    fn check_parsed_topic(parsed: &Topic, t: &Topic, name: &str) -> Result<(), TestCaseError> {
        let token = Layout::file_topic_token(parsed);
        prop_assert_eq!(&token, &Layout::file_topic_token(t));
        let prefix = format!("{token}-");
        prop_assert!(name.starts_with(&prefix));
        prop_assert!(Layout::file_topic_token_matches(&token, t));
        if !t.is_system() {
            prop_assert_eq!(parsed, t);
        }
        Ok(())
    }

    fn nodes() -> impl Strategy<Value = NodeName> {
        "[A-Za-z0-9][A-Za-z0-9_]{0,63}".prop_map(|s| NodeName::new(s).unwrap())
    }

    fn minutes() -> impl Strategy<Value = Minute> {
        (Minute::MIN.epoch_minutes()..=Minute::MAX.epoch_minutes())
            .prop_map(|m| Minute::from_epoch_minutes(m).unwrap())
    }

    fn seqs() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..100_000, any::<u32>()]
    }

    fn minute_views() -> impl Strategy<Value = View> {
        prop_oneof![Just(View::Local), Just(View::Merged)]
    }

    /// Plausible-looking path components, valid and not, to fuzz `parse_path`.
    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("data".to_owned()),
            Just("streams".to_owned()),
            Just("streams_local".to_owned()),
            Just("streams_hourly".to_owned()),
            Just("system".to_owned()),
            Just("_SUCCESS".to_owned()),
            "[a-c_-]{0,3}",
            "[0-9]{1,5}",
            "(_|sys_)?[a-c]{1,2}-(19[67][0-9]|20[0-9]{2}|9999)-[01][0-9]-[0-3][0-9]-[0-2][0-9]-[0-6][0-9]_[0-9]{5,6}\\.(zst|gz)",
            "(19[67][0-9]|20[0-9]{2}|9999)/[01][0-9]/[0-3][0-9]/[0-2][0-9]/[0-6][0-9]",
            "\\PC{0,4}",
        ]
    }

    /// Near-valid stream paths (over 5% of them parse): a root, a topic,
    /// a minute/hour/collector body and an optional file, each sometimes wrong.
    fn candidate_paths() -> impl Strategy<Value = String> {
        let root = prop_oneof![
            Just("data"),
            Just("streams"),
            Just("streams_local"),
            Just("streams_hourly"),
            Just("Streams"),
        ];
        let topic = prop_oneof![
            4 => "[A-Za-z0-9_]{1,8}",
            1 => Just("a-b".to_owned()),
            1 => Just("t\u{e9}".to_owned()),
        ];
        let minute = prop_oneof![
            8 => minutes().prop_map(|m| m.dir_path()),
            1 => "[0-9]{4}/[0-9]{2}/[0-9]{2}/[0-9]{2}/[0-9]{2}",
        ];
        let hour = prop_oneof![
            8 => minutes().prop_map(|m| m.hour_dir_path()),
            1 => "[0-9]{4}/[0-9]{2}/[0-9]{2}/[0-9]{2}",
        ];
        let body = prop_oneof![
            minute,
            hour,
            (nodes(), "[A-Za-z0-9_]{1,3}", minutes(), seqs()).prop_map(|(c, t, m, seq)| format!(
                "{c}/{}",
                Layout::collector_file_name(&Topic::new(t).unwrap(), m, seq)
            )),
        ];
        let file = prop_oneof![
            2 => Just(None),
            1 => Just(Some("_SUCCESS".to_owned())),
            1 => "[ -~]{1,6}".prop_map(Some),
            1 => (nodes(), nodes(), minutes(), seqs()).prop_map(|(dc, c, m, seq)| {
                Some(Layout::local_file_name(&dc, &c, m, seq, &Topic::audit()))
            }),
        ];
        (root, topic, body, file).prop_map(|(root, topic, body, file)| match file {
            Some(file) => format!("{root}/{topic}/{body}/{file}"),
            None => format!("{root}/{topic}/{body}"),
        })
    }

    #[test]
    fn candidate_paths_often_parse() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = candidate_paths();
        let total = 2000;
        let parsed = (0..total)
            .filter(|_| {
                let path = strategy.new_tree(&mut runner).unwrap().current();
                Layout::parse_path(&path).is_ok()
            })
            .count();
        assert!(
            parsed * 20 > total,
            "only {parsed} of {total} candidates parse"
        );
        assert!(
            parsed * 10 < total * 9,
            "{parsed} of {total} candidates parse"
        );
    }

    proptest! {
        #[test]
        fn topic_accepts_exactly_the_pattern(s in "[A-Za-z0-9_\\-/. é]{0,130}") {
            let expected = !s.is_empty()
                && s.chars().count() <= 128
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            prop_assert_eq!(Topic::new(s.as_str()).is_ok(), expected);
            let expected_node = expected && s.len() <= 64 && !s.starts_with('_');
            prop_assert_eq!(NodeName::new(s.as_str()).is_ok(), expected_node);
        }

        #[test]
        fn minute_formats_round_trip(m in minutes()) {
            prop_assert_eq!(Minute::parse_dir_path(&m.dir_path()), Ok(m));
            prop_assert_eq!(Minute::parse_file_stamp(&m.file_stamp()), Ok(m));
            prop_assert_eq!(Minute::parse_flexible(&m.to_string()), Ok(m));
            prop_assert_eq!(Minute::parse_hour_stamp(&m.hour_stamp()), Ok(m.hour_start()));
            prop_assert_eq!(m.dir_path().len(), 16);
            prop_assert_eq!(Minute::from_datetime(m.start()), Ok(m));
            prop_assert_eq!(m.end(), m.start() + chrono::TimeDelta::minutes(1));
            prop_assert!(m.hour_start() <= m && m.hour_start().add_minutes(60).map_or(true, |h| m < h));
            let json = serde_json::to_string(&m).unwrap();
            prop_assert_eq!(serde_json::from_str::<Minute>(&json).unwrap(), m);
            if let Ok(n) = m.next() {
                prop_assert!(n > m);
                prop_assert_eq!(n.start(), m.end());
                prop_assert_eq!(n.prev(), Ok(m));
            }
        }

        #[test]
        fn from_datetime_floors(secs in 0i64..253_402_300_800, nanos in 0u32..1_000_000_000) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            let m = Minute::from_datetime(t).unwrap();
            prop_assert!(m.start() <= t && t < m.end());
        }

        #[test]
        fn collector_file_round_trips(t in topics(), c in nodes(), m in minutes(), seq in seqs()) {
            let path = Layout::collector_file(&t, &c, m, seq);
            let name = Layout::collector_file_name(&t, m, seq);
            let located = Layout::parse_path(&path).unwrap();
            prop_assert_eq!(&located, &Located {
                view: View::Collector,
                topic: t.clone(),
                minute: m,
                file: Some(name.clone()),
                collector: Some(c.clone()),
            });
            prop_assert_eq!(located.to_path().unwrap(), path.clone());
            prop_assert!(!Layout::is_hidden(&name) && !Layout::is_hidden(&path));
            let parsed = Layout::parse_collector_file_name(&name).unwrap();
            prop_assert_eq!((parsed.minute, parsed.seq), (m, seq));
            check_parsed_topic(&parsed.topic, &t, &name)?;
            prop_assert_eq!(&parsed.to_string(), &name);
            prop_assert_eq!(
                CollectorFileName { topic: t.clone(), minute: m, seq }.to_string(),
                name.clone()
            );
            prop_assert_eq!(format!("{}/{}", Layout::collector_dir(&t, &c), name), path);
        }

        #[test]
        fn minute_dir_round_trips(view in minute_views(), t in topics(), m in minutes()) {
            let dir = Layout::minute_dir(view, &t, m);
            let located = Layout::parse_path(&dir).unwrap();
            prop_assert_eq!(&located, &Located { view, topic: t.clone(), minute: m, file: None, collector: None });
            prop_assert_eq!(located.to_path().unwrap(), dir.clone());
            let prefix = Layout::topic_dir(view, &t) + "/";
            prop_assert!(dir.starts_with(&prefix));

            let marker = Layout::success_marker(&dir);
            let located = Layout::parse_path(&marker).unwrap();
            prop_assert_eq!(located.file.as_deref(), Some(Layout::SUCCESS_MARKER));
            prop_assert_eq!(located.to_path().unwrap(), marker);
        }

        #[test]
        fn local_file_round_trips(
            view in minute_views(), t in topics(), dc in nodes(), c in nodes(), m in minutes(), seq in seqs()
        ) {
            let name = Layout::local_file_name(&dc, &c, m, seq, &t);
            prop_assert_eq!(
                &name,
                &format!("{dc}-{c}-{}", Layout::collector_file_name(&t, m, seq))
            );
            let parsed = Layout::parse_local_file_name(&name).unwrap();
            check_parsed_topic(&parsed.topic, &t, &Layout::collector_file_name(&t, m, seq))?;
            prop_assert_eq!(
                &parsed,
                &LocalFileName { cluster: dc.clone(), collector: c.clone(), topic: parsed.topic.clone(), minute: m, seq }
            );
            prop_assert_eq!(&parsed.to_string(), &name);
            prop_assert!(!Layout::is_hidden(&name));
            let path = format!("{}/{name}", Layout::minute_dir(view, &t, m));
            let located = Layout::parse_path(&path).unwrap();
            prop_assert_eq!(&located, &Located { view, topic: t.clone(), minute: m, file: Some(name.clone()), collector: None });
            prop_assert_eq!(located.to_path().unwrap(), path.clone());

            let tmp = Layout::tmp_path(&path);
            prop_assert!(Layout::is_hidden(&tmp) && Layout::is_tmp(&tmp));
            let located = Layout::parse_path(&tmp).unwrap();
            prop_assert_eq!(located.file, Some(Layout::tmp_name(&name)));
            // A temp copy is never mistaken for a data file.
            prop_assert!(Layout::parse_local_file_name(&Layout::tmp_name(&name)).is_err());
            prop_assert!(Layout::parse_collector_file_name(&Layout::tmp_name(&Layout::collector_file_name(&t, m, seq))).is_err());
        }

        #[test]
        fn hourly_round_trips(t in topics(), m in minutes()) {
            let dir = Layout::hour_dir(&t, m);
            prop_assert_eq!(&Layout::minute_dir(View::Hourly, &t, m), &dir);
            let located = Layout::parse_path(&dir).unwrap();
            prop_assert_eq!(&located, &Located { view: View::Hourly, topic: t.clone(), minute: m.hour_start(), file: None, collector: None });
            prop_assert_eq!(located.to_path().unwrap(), dir.clone());

            let name = Layout::hourly_file_name(&t, m);
            prop_assert!(!Layout::is_hidden(&name));
            let (parsed, hour) = Layout::parse_hourly_file_name(&name).unwrap();
            prop_assert_eq!(hour, m.hour_start());
            check_parsed_topic(&parsed, &t, &name)?;
            prop_assert_eq!(Layout::hourly_file_name(&parsed, m), name.clone());
            let path = format!("{dir}/{name}");
            let located = Layout::parse_path(&path).unwrap();
            prop_assert_eq!(located.minute, m.hour_start());
            prop_assert_eq!(located.to_path().unwrap(), path);
        }

        #[test]
        fn system_paths_round_trip_their_names(dc in nodes(), c in nodes(), job in "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}") {
            let hb = Layout::heartbeat_path(&dc, &c);
            prop_assert_eq!(hb, format!("system/heartbeats/{dc}/{c}.json"));
            prop_assert_eq!(Layout::checkpoint_path(&job, &job).unwrap(), format!("system/checkpoints/{job}/{job}.json"));
            prop_assert_eq!(Layout::lease_path(&job).unwrap(), format!("system/leases/{job}.json"));
            prop_assert!(Layout::parse_path(&Layout::lease_path(&job).unwrap()).is_err());
        }

        #[test]
        fn parsed_paths_rebuild_exactly(parts in proptest::collection::vec(fragment(), 1..9)) {
            let path = parts.join("/");
            if let Ok(located) = Layout::parse_path(&path) {
                prop_assert_eq!(located.to_path(), Ok(path));
            }
        }

        #[test]
        fn parsed_candidates_rebuild_exactly(path in candidate_paths()) {
            match Layout::parse_path(&path) {
                Ok(located) => prop_assert_eq!(located.to_path(), Ok(path)),
                Err(e) => prop_assert!(
                    e.to_string().starts_with(&format!("not a conduit path {path:?}: ")),
                    "unexpected error {}", e
                ),
            }
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,80}") {
            let _ = Layout::parse_path(&s);
            let _ = Layout::parse_collector_file_name(&s);
            let _ = Layout::parse_local_file_name(&s);
            let _ = Layout::parse_hourly_file_name(&s);
            let _ = Minute::parse_flexible(&s);
        }
    }
}
