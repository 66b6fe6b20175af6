//! The synced bytes of the collector's open files, served over its HTTP listener.
//!
//! On HDFS a reader cannot read the unfinished last block of a file that is still
//! open for write (hdfs-native returns only completed blocks), so PinTail's live
//! view asks the collector instead:
//!
//! ```text
//! GET /v1/open/<topic>/<collector>/<file name>?offset=N[&max=M][&wait_ms=W]
//! ```
//!
//! answers the bytes `[N, min(synced_len, N + M))` of that file, the same bytes
//! that are (or will be) in storage at those offsets. `synced_len` is the length
//! made durable by the last successful sync (fsync/hsync) of a commit round; a byte
//! written but not yet synced is never served. The exact protocol is in
//! `docs/pintail.md` ("The collector's open-file endpoint").
//!
//! # Long-poll (`wait_ms`)
//! With `wait_ms=W` a request at the file's synced length (nothing to send yet)
//! is held until the next sync of that file makes bytes past `offset` durable
//! (then they are answered at once), the file is closed or abandoned (`410`), or
//! `W` ms pass (`200`, empty). The wake-up comes from the sync path itself: the
//! engine's [`OpenFiles::synced`] (and [`OpenFiles::closed`]) bump a
//! `tokio::sync::watch` of that file that the held requests wait on; nothing
//! polls. Bounded: `W` is cut to [`MAX_WAIT_MS`], and at most [`MAX_WAITERS`]
//! requests are held at once (fewer than the HTTP listener's connection limit,
//! so `/health` and `/metrics` always find room); a request over that limit is
//! answered at once as without `wait_ms`, with `conduit-wait: refused`, a
//! warning naming the limit (at most one per 10 s) and
//! `conduit_collector_open_waits_total{result="refused"}`.
//!
//! # Memory
//! The engine hands every frame it appends to the file's entry here, and they
//! become visible only after the sync. Each open file keeps only its most recent
//! synced frames: at most [`RING_BYTES_PER_FILE`], less when many files are open
//! ([`RING_BYTES_TOTAL`] shared between them), at least the last frame while the
//! total allows. The total is a hard bound (plus the file synced last): once it is
//! exceeded every other open file is cut to half an even share, its last frame
//! included, so memory does not grow with the number of open files.
//! An offset older than what is kept gets `416` (`conduit-refused: too_old`): read
//! it from storage. Closed files are remembered (state and final length, no bytes)
//! for the last [`CLOSED_REMEMBERED`] files, so a reader learns to switch to
//! storage with `410 Gone`; older names, files of an earlier run and files in the
//! local spool are `404`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use conduit_core::http::prometheus_client::metrics::counter::Counter;
use conduit_core::http::prometheus_client::metrics::family::Family;
use conduit_core::http::prometheus_client::metrics::gauge::Gauge;
use conduit_core::http::{HttpRequest, HttpResponse, Routes};
use conduit_core::NodeName;

use crate::metrics::{Labels, Metrics};

/// Largest `max` a request may ask for (a larger one is cut to this). A body is at
/// most this long, except that it always holds the whole frame at `offset` (one
/// commit round's frame of one topic, bounded by `collector.max_frame_bytes`).
pub const MAX_READ_BYTES: u64 = 4 << 20;
/// `max` when the request does not give one.
pub const DEFAULT_READ_BYTES: u64 = 1 << 20;
/// Synced bytes kept per open file.
pub const RING_BYTES_PER_FILE: u64 = 8 << 20;
/// Synced bytes kept for all open files together (split evenly when many are
/// open, but never less than [`RING_BYTES_MIN`] per file).
pub const RING_BYTES_TOTAL: u64 = 64 << 20;
/// Lower bound of one file's share of [`RING_BYTES_TOTAL`].
pub const RING_BYTES_MIN: u64 = 512 << 10;
/// Closed files whose state is remembered (for `410`).
pub const CLOSED_REMEMBERED: usize = 4096;

/// Path prefix of the endpoint.
pub const PREFIX: &str = "/v1/open/";
/// Longest long-poll (`wait_ms`) a request may ask for (a longer one is cut to
/// this). Below the HTTP listener's shutdown grace (5 s), so a stopping
/// collector never cuts a held request short.
pub const MAX_WAIT_MS: u64 = 2_000;
/// Long-polls held at once; more are answered at once. Below the HTTP
/// listener's connection limit (`conduit_core::http::MAX_CONNECTIONS`, 256).
pub const MAX_WAITERS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Closed with its trailer; the final length.
    Closed(u64),
    /// The writer failed; storage holds the file unclosed until recovery cuts it
    /// back to this (acknowledged) length and closes it.
    Abandoned(u64),
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// Synced frames, oldest first; the first starts at `start`.
    chunks: VecDeque<Bytes>,
    start: u64,
    synced: u64,
    /// Bumped after every sync and at close: what long-polls wait on.
    tick: tokio::sync::watch::Sender<()>,
}

impl Entry {
    fn kept(&self) -> u64 {
        self.synced - self.start
    }
}

#[derive(Debug, Default)]
struct Inner {
    files: HashMap<(String, String), Entry>,
    closed: VecDeque<(String, String)>,
    open: usize,
    kept: u64,
}

/// The open files' synced bytes, shared by the engine (writer) and the HTTP
/// listener (reader).
pub struct OpenFiles {
    cluster: NodeName,
    collector: NodeName,
    inner: Mutex<Inner>,
    reads: Family<Labels, Counter>,
    waits: Family<Labels, Counter>,
    waiters_gauge: Gauge,
    /// Long-polls held now, at most `max_waiters`.
    waiters: AtomicUsize,
    max_waiters: usize,
}

impl std::fmt::Debug for OpenFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("OpenFiles")
            .field("open", &inner.open)
            .field("kept_bytes", &inner.kept)
            .finish()
    }
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `200`: the bytes at `offset`; the file is open and `synced` long.
    Bytes {
        /// Where in the file `body` starts.
        offset: u64,
        /// The synced bytes from `offset` on.
        body: Bytes,
        /// The file's synced length.
        synced: u64,
        /// The oldest offset still kept in memory.
        ring_start: u64,
    },
    /// `410`: closed (final length) or abandoned (acknowledged length).
    Gone {
        /// `closed` or `abandoned`.
        state: &'static str,
        /// The final (closed) or acknowledged (abandoned) length.
        len: u64,
    },
    /// `416`: older than the bytes kept.
    TooOld {
        /// The oldest offset still kept in memory.
        ring_start: u64,
        /// The file's synced length.
        synced: u64,
    },
    /// `416`: past the synced length.
    PastEnd {
        /// The file's synced length.
        synced: u64,
    },
    /// `404`: not a file this collector has open (or closed recently).
    Unknown,
}

impl OpenFiles {
    /// An empty registry for this collector; `reads` counts answers by result.
    pub fn new(cluster: NodeName, collector: NodeName, metrics: &Metrics) -> OpenFiles {
        OpenFiles {
            cluster,
            collector,
            inner: Mutex::new(Inner::default()),
            reads: metrics.open_reads.clone(),
            waits: metrics.open_waits.clone(),
            waiters_gauge: metrics.open_waiters.clone(),
            waiters: AtomicUsize::new(0),
            max_waiters: MAX_WAITERS,
        }
    }

    /// The same with another waiter limit (tests).
    pub fn with_max_waiters(mut self, max_waiters: usize) -> OpenFiles {
        self.max_waiters = max_waiters;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A file was created in storage (empty).
    pub fn opened(&self, topic: &str, name: &str) {
        let mut inner = self.lock();
        let old = inner.files.insert(
            (topic.to_owned(), name.to_owned()),
            Entry {
                state: State::Open,
                chunks: VecDeque::new(),
                start: 0,
                synced: 0,
                tick: tokio::sync::watch::Sender::new(()),
            },
        );
        if let Some(old) = old {
            // Names are never reused; keep the counts right anyway.
            if old.state == State::Open {
                inner.open -= 1;
                inner.kept -= old.kept();
            }
        }
        inner.open += 1;
    }

    /// `frames` (in order) were synced: the file is now `synced_len` long and every
    /// byte up to there is durable.
    pub fn synced(&self, topic: &str, name: &str, frames: Vec<Bytes>, synced_len: u64) {
        let mut inner = self.lock();
        let share = (RING_BYTES_TOTAL / inner.open.max(1) as u64)
            .clamp(RING_BYTES_MIN, RING_BYTES_PER_FILE);
        let Inner { files, kept, .. } = &mut *inner;
        let Some(e) = files.get_mut(&(topic.to_owned(), name.to_owned())) else {
            return;
        };
        if e.state != State::Open {
            return;
        }
        let added: u64 = frames.iter().map(|f| f.len() as u64).sum();
        if e.synced + added != synced_len {
            // Not contiguous (cannot happen: the engine hands over every frame).
            // Serve nothing rather than wrong offsets.
            tracing::error!(
                topic,
                name,
                synced = e.synced,
                added,
                synced_len,
                "open-file bytes out of step; no longer serving this file"
            );
            *kept -= e.kept();
            e.chunks.clear();
            e.start = synced_len;
            e.synced = synced_len;
            e.tick.send_replace(());
            return;
        }
        e.chunks
            .extend(frames.into_iter().filter(|f| !f.is_empty()));
        e.synced = synced_len;
        *kept += added;
        while e.kept() > share && e.chunks.len() > 1 {
            let old = e.chunks.pop_front().expect("more than one");
            e.start += old.len() as u64;
            *kept -= old.len() as u64;
        }
        // Wake the long-polls of this file (a no-op without any).
        e.tick.send_replace(());
        if *kept > RING_BYTES_TOTAL {
            // Many open files, each keeping its last frame: the total would grow
            // with the number of open files times the frame size (800 files of
            // 1 MiB frames held 800 MiB). Cut every other open file to half of an
            // even share, last frame included (a reader then gets `416 too_old`
            // and reads storage), so the next syncs have room before the next sweep.
            let open = inner.open.max(1) as u64;
            let target = RING_BYTES_TOTAL / open / 2;
            let this = (topic, name);
            let Inner { files, kept, .. } = &mut *inner;
            for ((t, n), f) in files.iter_mut() {
                if f.state != State::Open || (t.as_str(), n.as_str()) == this {
                    continue;
                }
                while f.kept() > target {
                    let Some(old) = f.chunks.pop_front() else {
                        break;
                    };
                    f.start += old.len() as u64;
                    *kept -= old.len() as u64;
                }
            }
        }
    }

    /// The file was closed with its trailer; `len` is its final length.
    pub fn closed(&self, topic: &str, name: &str, len: u64) {
        self.finish(topic, name, State::Closed(len));
    }

    /// The file's writer failed; storage will hold `acked_len` bytes and a trailer
    /// once recovery closes it.
    pub fn abandoned(&self, topic: &str, name: &str, acked_len: u64) {
        self.finish(topic, name, State::Abandoned(acked_len));
    }

    fn finish(&self, topic: &str, name: &str, state: State) {
        let mut inner = self.lock();
        let key = (topic.to_owned(), name.to_owned());
        let Some(e) = inner.files.get_mut(&key) else {
            return;
        };
        if e.state != State::Open {
            return;
        }
        let freed = e.kept();
        e.state = state;
        e.chunks = VecDeque::new();
        e.start = e.synced;
        e.tick.send_replace(());
        inner.kept -= freed;
        inner.open -= 1;
        inner.closed.push_back(key);
        while inner.closed.len() > CLOSED_REMEMBERED {
            let old = inner.closed.pop_front().expect("non-empty");
            inner.files.remove(&old);
        }
    }

    /// Data files open now, by topic (for the status page).
    pub fn open_by_topic(&self) -> std::collections::BTreeMap<String, usize> {
        let mut by_topic = std::collections::BTreeMap::new();
        for ((topic, _), e) in &self.lock().files {
            if e.state == State::Open {
                *by_topic.entry(topic.clone()).or_default() += 1;
            }
        }
        by_topic
    }

    /// Bytes kept in memory for every open file together.
    pub fn kept_bytes(&self) -> u64 {
        self.lock().kept
    }

    /// The bytes of `topic`/`name` at `offset`, at most `max` (see the module docs).
    pub fn read(&self, topic: &str, name: &str, offset: u64, max: u64) -> Answer {
        let inner = self.lock();
        let Some(e) = inner.files.get(&(topic.to_owned(), name.to_owned())) else {
            return Answer::Unknown;
        };
        match e.state {
            State::Closed(len) => {
                return Answer::Gone {
                    state: "closed",
                    len,
                }
            }
            State::Abandoned(len) => {
                return Answer::Gone {
                    state: "abandoned",
                    len,
                }
            }
            State::Open => {}
        }
        if offset > e.synced {
            return Answer::PastEnd { synced: e.synced };
        }
        if offset < e.start {
            return Answer::TooOld {
                ring_start: e.start,
                synced: e.synced,
            };
        }
        let max = max.clamp(1, MAX_READ_BYTES);
        let mut at = e.start;
        let mut parts: Vec<Bytes> = Vec::new();
        let mut len = 0u64;
        for chunk in &e.chunks {
            let end = at + chunk.len() as u64;
            if end > offset {
                let from = offset.max(at);
                let piece = chunk.slice((from - at) as usize..);
                if len == 0 {
                    // The whole first frame, even beyond `max`.
                    len += piece.len() as u64;
                    parts.push(piece);
                } else {
                    let room = max.saturating_sub(len);
                    if room == 0 {
                        break;
                    }
                    let take = room.min(piece.len() as u64) as usize;
                    len += take as u64;
                    parts.push(piece.slice(..take));
                }
                if len >= max {
                    break;
                }
            }
            at = end;
        }
        let body = match parts.len() {
            0 => Bytes::new(),
            1 => parts.pop().expect("one"),
            _ => {
                let mut b = BytesMut::with_capacity(len as usize);
                for p in parts {
                    b.extend_from_slice(&p);
                }
                b.freeze()
            }
        };
        Answer::Bytes {
            offset,
            body,
            synced: e.synced,
            ring_start: e.start,
        }
    }

    /// [`OpenFiles::read`], but when there is nothing past `offset` yet (the file
    /// is open and `offset` is its synced length) waits up to `wait` for the next
    /// sync or close of the file ([module docs](self)). The second value is how
    /// a wait ended (`None`: there was none).
    pub async fn read_wait(
        &self,
        topic: &str,
        name: &str,
        offset: u64,
        max: u64,
        wait: Duration,
    ) -> (Answer, Option<&'static str>) {
        let mut rx = {
            let inner = self.lock();
            match inner.files.get(&(topic.to_owned(), name.to_owned())) {
                Some(e) if !wait.is_zero() && e.state == State::Open && e.synced == offset => {
                    e.tick.subscribe()
                }
                _ => {
                    drop(inner);
                    return (self.read(topic, name, offset, max), None);
                }
            }
        };
        let Some(_held) = self.hold() else {
            return (self.read(topic, name, offset, max), Some("refused"));
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                // Synced or closed (or forgotten: the sender is gone): look again.
                Ok(_) => {
                    let answer = self.read(topic, name, offset, max);
                    let more = !matches!(&answer, Answer::Bytes { body, .. } if body.is_empty());
                    if more || rx.has_changed().is_err() {
                        return (answer, Some("notified"));
                    }
                }
                Err(_) => return (self.read(topic, name, offset, max), Some("timeout")),
            }
        }
    }

    /// A place among the held long-polls, given back on drop; `None` at the limit.
    fn hold(&self) -> Option<Held<'_>> {
        let n = self.waiters.fetch_add(1, Ordering::AcqRel);
        if n >= self.max_waiters {
            self.waiters.fetch_sub(1, Ordering::AcqRel);
            if let Some(suppressed) = conduit_core::ratelimit::allow("open_waiters_full") {
                tracing::warn!(
                    max_waiters = self.max_waiters,
                    suppressed,
                    "open-file long-poll answered at once: {} requests are already held (the limit); readers poll until one ends",
                    self.max_waiters
                );
            }
            return None;
        }
        self.waiters_gauge.inc();
        Some(Held(self))
    }

    fn count(&self, result: &'static str) {
        self.reads
            .get_or_create(&Metrics::label("result", result))
            .inc();
    }

    /// Answers one HTTP request of the endpoint; `None` for other paths.
    pub async fn handle(&self, req: &HttpRequest) -> Option<HttpResponse> {
        let rest = req.path.strip_prefix(PREFIX)?;
        let mut it = rest.split('/');
        let (Some(topic), Some(collector), Some(name), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            self.count("not_found");
            return Some(self.tag(HttpResponse::text(
                404,
                "not found: the path is /v1/open/<topic>/<collector>/<file name>\n",
            )));
        };
        if collector != self.collector.as_str() {
            self.count("not_found");
            return Some(self.tag(HttpResponse::text(
                404,
                format!(
                    "not found: this is collector {} of cluster {}, not {collector}\n",
                    self.collector, self.cluster
                ),
            )));
        }
        let number = |key: &str| -> Result<Option<u64>, String> {
            match req.query_param(key) {
                None => Ok(None),
                Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                    format!("bad request: {key}={v:?} is not a non-negative integer\n")
                }),
            }
        };
        let offset = match number("offset") {
            Ok(Some(o)) => o,
            Ok(None) => {
                let message = "bad request: offset=N is required\n".to_string();
                return Some(self.bad_request(topic, name, message));
            }
            Err(e) => return Some(self.bad_request(topic, name, e)),
        };
        let max = match number("max") {
            Ok(m) => m.unwrap_or(DEFAULT_READ_BYTES),
            Err(e) => return Some(self.bad_request(topic, name, e)),
        };
        let wait = match number("wait_ms") {
            Ok(w) => Duration::from_millis(w.unwrap_or(0).min(MAX_WAIT_MS)),
            Err(e) => return Some(self.bad_request(topic, name, e)),
        };
        let (answer, waited) = self.read_wait(topic, name, offset, max, wait).await;
        if let Some(result) = waited {
            self.waits
                .get_or_create(&Metrics::label("result", result))
                .inc();
        }
        let response = match answer {
            Answer::Bytes {
                offset,
                body,
                synced,
                ring_start,
            } => {
                self.count("ok");
                HttpResponse::bytes(200, body)
                    .with_header("conduit-file-state", "open")
                    .with_header("conduit-synced-length", synced.to_string())
                    .with_header("conduit-offset", offset.to_string())
                    .with_header("conduit-ring-start", ring_start.to_string())
            }
            Answer::Gone { state, len } => {
                self.count("gone");
                HttpResponse::text(
                    410,
                    format!("gone: the file is {state} ({len} bytes); read it from storage\n"),
                )
                .with_header("conduit-file-state", state)
                .with_header("conduit-synced-length", len.to_string())
            }
            Answer::TooOld { ring_start, synced } => {
                self.count("too_old");
                tracing::info!(
                    topic,
                    name,
                    offset,
                    ring_start,
                    synced,
                    "open-file read refused: offset older than the bytes kept in memory"
                );
                HttpResponse::text(
                    416,
                    format!(
                        "offset {offset} is older than the bytes kept in memory \
                         (from {ring_start}); read it from storage\n"
                    ),
                )
                .with_header("conduit-file-state", "open")
                .with_header("conduit-refused", "too_old")
                .with_header("conduit-synced-length", synced.to_string())
                .with_header("conduit-ring-start", ring_start.to_string())
            }
            Answer::PastEnd { synced } => {
                self.count("past_end");
                tracing::info!(
                    topic,
                    name,
                    offset,
                    synced,
                    "open-file read refused: offset past the synced length"
                );
                HttpResponse::text(
                    416,
                    format!("offset {offset} is past the synced length {synced}\n"),
                )
                .with_header("conduit-file-state", "open")
                .with_header("conduit-refused", "past_end")
                .with_header("conduit-synced-length", synced.to_string())
            }
            Answer::Unknown => {
                self.count("not_found");
                HttpResponse::text(
                    404,
                    "not found: not a file this collector has open or closed recently\n",
                )
            }
        };
        let response = match waited {
            Some("refused") => response.with_header("conduit-wait", "refused"),
            _ => response,
        };
        Some(self.tag(response))
    }

    fn bad_request(&self, topic: &str, name: &str, message: String) -> HttpResponse {
        self.count("bad_request");
        tracing::info!(
            topic,
            name,
            message = message.trim_end(),
            "open-file read refused"
        );
        self.tag(HttpResponse::text(400, message))
    }

    fn tag(&self, r: HttpResponse) -> HttpResponse {
        r.with_header("conduit-cluster", self.cluster.to_string())
            .with_header("conduit-collector", self.collector.to_string())
    }
}

/// The collector's HTTP routes (the open-file endpoint).
#[derive(Debug)]
pub struct OpenRoutes(pub Arc<OpenFiles>);

impl Routes for OpenRoutes {
    fn handle<'a, 'b>(
        &'a self,
        req: HttpRequest,
    ) -> Pin<Box<dyn Future<Output = Option<HttpResponse>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let files = self.0.clone();
        Box::pin(async move { files.handle(&req).await })
    }
}

/// One held long-poll (see [`OpenFiles::hold`]).
struct Held<'a>(&'a OpenFiles);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
        self.0.waiters_gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> OpenFiles {
        let registry = Arc::new(Mutex::new(Default::default()));
        OpenFiles::new(
            NodeName::new("dc1").unwrap(),
            NodeName::new("c1").unwrap(),
            &Metrics::new(&registry),
        )
    }

    fn b(n: usize, v: u8) -> Bytes {
        Bytes::from(vec![v; n])
    }

    #[test]
    fn only_synced_bytes_are_served() {
        let f = files();
        f.opened("t", "a.zst");
        assert!(
            matches!(f.read("t", "a.zst", 0, 100), Answer::Bytes { ref body, synced: 0, .. } if body.is_empty())
        );
        f.synced("t", "a.zst", vec![b(10, 1), b(5, 2)], 15);
        match f.read("t", "a.zst", 10, 100) {
            Answer::Bytes { body, synced, .. } => {
                assert_eq!(body, b(5, 2));
                assert_eq!(synced, 15);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.read("t", "a.zst", 16, 1), Answer::PastEnd { synced: 15 });
        assert_eq!(f.read("t", "b.zst", 0, 1), Answer::Unknown);
        assert_eq!(f.read("u", "a.zst", 0, 1), Answer::Unknown);
        // max cuts the body, but the first frame is always whole.
        match f.read("t", "a.zst", 0, 12) {
            Answer::Bytes { body, .. } => assert_eq!(body.len(), 12),
            other => panic!("{other:?}"),
        }
        match f.read("t", "a.zst", 0, 3) {
            Answer::Bytes { body, .. } => assert_eq!(body, b(10, 1)),
            other => panic!("{other:?}"),
        }
        f.closed("t", "a.zst", 55);
        assert_eq!(
            f.read("t", "a.zst", 0, 1),
            Answer::Gone {
                state: "closed",
                len: 55
            }
        );
        assert_eq!(f.kept_bytes(), 0);
    }

    #[test]
    fn the_ring_is_bounded_and_old_offsets_are_refused() {
        let f = files();
        f.opened("t", "a.zst");
        let frame = (1 << 20) as usize;
        for i in 0..20u64 {
            f.synced(
                "t",
                "a.zst",
                vec![b(frame, i as u8)],
                (i + 1) * frame as u64,
            );
        }
        assert!(f.kept_bytes() <= RING_BYTES_PER_FILE);
        let start = 20 * frame as u64 - RING_BYTES_PER_FILE;
        assert_eq!(
            f.read("t", "a.zst", 0, 1),
            Answer::TooOld {
                ring_start: start,
                synced: 20 * frame as u64
            }
        );
        match f.read("t", "a.zst", start, MAX_READ_BYTES * 10) {
            Answer::Bytes { body, .. } => assert_eq!(body.len() as u64, MAX_READ_BYTES),
            other => panic!("{other:?}"),
        }
        // Many open files share the total.
        for i in 0..200 {
            f.opened("t", &format!("f{i}.zst"));
        }
        for i in 0..200 {
            for k in 0..4u64 {
                f.synced(
                    "t",
                    &format!("f{i}.zst"),
                    vec![b(300 << 10, 0)],
                    (k + 1) * (300 << 10),
                );
            }
        }
        // The total holds, whatever the number of open files: at most the total
        // plus the last file's own share.
        assert!(f.kept_bytes() <= RING_BYTES_TOTAL + RING_BYTES_PER_FILE);
        // The file synced last still serves its newest frame.
        assert!(matches!(
            f.read("t", "f199.zst", 3 * (300 << 10), 1),
            Answer::Bytes { .. }
        ));
        f.abandoned("t", "f0.zst", 7);
        assert_eq!(
            f.read("t", "f0.zst", 0, 1),
            Answer::Gone {
                state: "abandoned",
                len: 7
            }
        );
    }

    /// Waits (bounded) until `n` long-polls are held.
    async fn held(f: &OpenFiles, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while f.waiters.load(Ordering::Acquire) != n {
            assert!(std::time::Instant::now() < deadline, "never {n} waiters");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_long_poll_is_answered_by_the_next_sync_or_close() {
        let f = Arc::new(files());
        f.opened("t", "a.zst");
        f.synced("t", "a.zst", vec![b(10, 1)], 10);
        // Bytes past the offset: answered at once, no wait.
        let (a, waited) = f
            .read_wait("t", "a.zst", 0, 100, Duration::from_secs(30))
            .await;
        assert!(matches!(a, Answer::Bytes { ref body, .. } if body.len() == 10));
        assert_eq!(waited, None);
        // At the synced length: held until the next sync, which it returns.
        let g = f.clone();
        let waiter = tokio::spawn(async move {
            g.read_wait("t", "a.zst", 10, 100, Duration::from_secs(30))
                .await
        });
        held(&f, 1).await;
        f.synced("t", "a.zst", vec![b(7, 2)], 17);
        let (a, waited) = waiter.await.unwrap();
        assert_eq!(waited, Some("notified"));
        match a {
            Answer::Bytes {
                offset,
                body,
                synced,
                ..
            } => {
                assert_eq!((offset, synced), (10, 17));
                assert_eq!(body, b(7, 2));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.waiters.load(Ordering::Acquire), 0);
        // Closed while held: 410 at once.
        let g = f.clone();
        let waiter = tokio::spawn(async move {
            g.read_wait("t", "a.zst", 17, 100, Duration::from_secs(30))
                .await
        });
        held(&f, 1).await;
        f.closed("t", "a.zst", 40);
        let (a, waited) = waiter.await.unwrap();
        assert_eq!(waited, Some("notified"));
        assert_eq!(
            a,
            Answer::Gone {
                state: "closed",
                len: 40
            }
        );
    }

    #[tokio::test]
    async fn a_long_poll_ends_empty_after_its_wait_and_the_waiters_are_bounded() {
        let f = Arc::new(files().with_max_waiters(1));
        f.opened("t", "a.zst");
        let started = std::time::Instant::now();
        let (a, waited) = f
            .read_wait("t", "a.zst", 0, 100, Duration::from_millis(30))
            .await;
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(waited, Some("timeout"));
        assert!(matches!(a, Answer::Bytes { ref body, synced: 0, .. } if body.is_empty()));
        // One held: a second one is answered at once, refused.
        let g = f.clone();
        let first = tokio::spawn(async move {
            g.read_wait("t", "a.zst", 0, 100, Duration::from_secs(30))
                .await
        });
        held(&f, 1).await;
        let (a, waited) = f
            .read_wait("t", "a.zst", 0, 100, Duration::from_secs(30))
            .await;
        assert_eq!(waited, Some("refused"));
        assert!(matches!(a, Answer::Bytes { ref body, .. } if body.is_empty()));
        f.synced("t", "a.zst", vec![b(3, 9)], 3);
        let (a, waited) = first.await.unwrap();
        assert_eq!(waited, Some("notified"));
        assert!(matches!(a, Answer::Bytes { ref body, .. } if body.len() == 3));
        // A dropped request (client gone) gives its place back.
        let g = f.clone();
        let dropped = tokio::spawn(async move {
            g.read_wait("t", "a.zst", 3, 100, Duration::from_secs(30))
                .await
        });
        held(&f, 1).await;
        dropped.abort();
        held(&f, 0).await;
    }
}
