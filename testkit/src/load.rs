//! A steady Scribe load whose every call is remembered, and the exactly-once
//! check of what was stored against it.
//!
//! [`Load::start`] runs one real Scribe client (our framed binary codec, one
//! connection, reconnecting when it is closed) that calls `Log` with
//! `per_call` new events `<tag>-<n>` of one topic, pausing `pause` after each
//! call (at least [`REFUSED_PAUSE`] after a refused one, so a client with no
//! pause still backs off), until [`Load::stop`]. [`Seen`] records each call's first event and
//! whether it was acknowledged (`OK`); [`Seen::check_exactly_once`] then
//! asserts, against the payload counts of a view, that every acknowledged event
//! is stored exactly once, an unacknowledged one at most once, and nothing else
//! of the tag is stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conduit_core::scribe::ResultCode;

use crate::scribe::Client;
use crate::wait::until_blocking;

/// The least pause after a call that was refused or not answered.
pub const REFUSED_PAUSE: Duration = Duration::from_millis(50);

/// What a [`Load`]'s client saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The events' tag.
    pub tag: String,
    /// Events per call.
    pub per_call: u64,
    /// (first event, acknowledged) of every call.
    pub calls: Vec<(u64, bool)>,
    /// Longest time between two acknowledgements.
    pub longest_gap: Duration,
    /// When that gap ended, relative to the client's start.
    pub longest_gap_at: Duration,
    /// Calls answered TRY_LATER (or not answered).
    pub refused: u64,
}

impl Seen {
    /// The payload of event `n`.
    pub fn payload(&self, n: u64) -> String {
        format!("{}-{n}", self.tag)
    }

    /// Events acknowledged.
    pub fn acked_events(&self) -> u64 {
        self.calls.iter().filter(|(_, ok)| *ok).count() as u64 * self.per_call
    }

    /// Checks `counts` (payload -> times stored, of a whole view) against the
    /// calls: every acknowledged event exactly once, unacknowledged ones at most
    /// once, no other payload with this tag. Returns (acknowledged events,
    /// unacknowledged events stored).
    pub fn check_exactly_once(&self, counts: &HashMap<Bytes, usize>) -> (u64, u64) {
        let (mut acked, mut extra, mut known) = (0, 0, 0);
        for &(first, ok) in &self.calls {
            for n in first..first + self.per_call {
                let c = counts
                    .get(self.payload(n).as_bytes())
                    .copied()
                    .unwrap_or_default();
                known += c;
                if ok {
                    assert_eq!(
                        c,
                        1,
                        "acknowledged event {} stored {c} times",
                        self.payload(n)
                    );
                    acked += 1;
                } else {
                    assert!(
                        c <= 1,
                        "unacknowledged event {} stored {c} times",
                        self.payload(n)
                    );
                    extra += c as u64;
                }
            }
        }
        let prefix = format!("{}-", self.tag);
        let mine: usize = counts
            .iter()
            .filter(|(p, _)| p.starts_with(prefix.as_bytes()))
            .map(|(_, c)| c)
            .sum();
        assert_eq!(
            mine, known,
            "stored events of {} that were never sent",
            self.tag
        );
        (acked, extra)
    }
}

/// A running client (see the module docs).
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Seen>,
}

impl Load {
    /// Starts the client on `rt` against the Scribe address `addr`.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        addr: &str,
        topic: &str,
        tag: &str,
        per_call: u64,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let seen = Seen {
            tag: tag.to_owned(),
            per_call,
            ..Seen::default()
        };
        let task = rt.spawn(client(
            addr.to_owned(),
            topic.to_owned(),
            pause,
            seen,
            stop.clone(),
            acked.clone(),
        ));
        Load { stop, acked, task }
    }

    /// Calls acknowledged so far.
    pub fn acked_calls(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits (up to 60 s, else panics naming `what`) until `more` more calls
    /// are acknowledged.
    pub fn wait_acks(&self, more: u64, what: &str) {
        let target = self.acked_calls() + more;
        until_blocking(what, Duration::from_secs(60), || {
            (self.acked_calls() >= target).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the client after its current call and returns what it saw.
    pub fn stop(self, rt: &tokio::runtime::Runtime) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(40), self.task)
                .await
                .expect("the client ends within 40 s")
                .expect("client panicked")
        })
    }
}

async fn client(
    addr: String,
    topic: String,
    pause: Duration,
    mut seen: Seen,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Seen {
    let start = Instant::now();
    let mut last_ack: Option<Instant> = None;
    let mut next = 0u64;
    let mut conn: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let client = match conn.as_mut() {
            Some(c) => c,
            None => match Client::try_connect(&addr).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    tokio::time::sleep(pause.max(REFUSED_PAUSE)).await;
                    continue;
                }
            },
        };
        let first = next;
        next += seen.per_call;
        let entries: Vec<(&str, String)> = (first..next)
            .map(|n| (topic.as_str(), seen.payload(n)))
            .collect();
        let code = client.try_log(&entries, Duration::from_secs(30)).await;
        let ok = code == Some(ResultCode::Ok);
        seen.calls.push((first, ok));
        if ok {
            let now = Instant::now();
            if let Some(last) = last_ack.filter(|last| now - *last > seen.longest_gap) {
                seen.longest_gap = now - last;
                seen.longest_gap_at = now - start;
            }
            last_ack = Some(now);
            acked.fetch_add(1, Ordering::Relaxed);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        } else {
            seen.refused += 1;
            if code.is_none() {
                conn = None;
            }
            tokio::time::sleep(pause.max(REFUSED_PAUSE)).await;
        }
    }
    seen
}
