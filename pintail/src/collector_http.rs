//! Reading a collector's open file through its HTTP listener.
//!
//! A local-view reader that has caught up with a file its collector still has
//! open asks the collector that writes it:
//! `GET /v1/open/<topic>/<collector>/<name>?offset=N&max=M&wait_ms=W`
//! (`docs/pintail.md`). The collector holds the request until its next sync of
//! the file makes bytes past `N` durable and answers them at once, so delivery
//! follows the fsync (hsync) instead of a poll interval; on HDFS it is also the
//! only way to read the unfinished last block of a file still open for write
//! (hdfs-native returns only completed blocks). The bytes are the synced bytes
//! of the file at the same offsets as in storage, so positions are unchanged
//! whichever way a frame was read.
//!
//! The long-poll runs in a task of its own ([`CollectorHttp::fetch_wait`]) so
//! that one partition waiting does not hold up the others; the task owns the
//! partition's connection while it runs and notifies the consumer when the
//! answer is in. The collector's address is the `http_addr` of its heartbeat
//! (`system/heartbeats/<cluster>/<collector>.json`), re-read every
//! [`ADDR_REFRESH`] and after a failure. One keep-alive HTTP/1.1 connection per
//! partition: hyper's client connection (`hyper::client::conn::http1`), driven by a
//! task that ends with it. When the collector cannot be reached the
//! reader falls back to storage (polling it), logs it once per outage, counts
//! `pintail_collector_http_fallbacks`, and tries again after a backoff (250 ms
//! doubling to 5 s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conduit_core::heartbeat::{CollectorState, Heartbeat};
use conduit_core::layout::Layout;
use conduit_core::{NodeName, Topic};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper::header::{HeaderMap, CONTENT_LENGTH, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::roots::Roots;

/// How often the heartbeat is re-read for the collector's address.
const ADDR_REFRESH: Duration = Duration::from_secs(10);
/// Connect timeout (short: the consumer polls partitions one after another).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// Time for all of the lag's requests about one file ([`synced_from`]): the
/// lag is measured inside the consumer's upkeep, so a collector slow to answer
/// must not hold delivery up for long (storage is read instead).
const LAG_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// Whole-request timeout (a long-poll gets [`WAIT`] more).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a long-poll asks the collector to hold it (`wait_ms`; the collector
/// cuts it to its own limit, 2 s). A held request costs nothing, so this only
/// bounds how soon a reader notices a collector that stopped answering.
pub(crate) const WAIT: Duration = Duration::from_millis(1_000);
/// Largest answer accepted (a frame is bounded by `collector.max_frame_bytes`).
const MAX_BODY: u64 = 128 << 20;
/// Largest answer head accepted (status line and headers).
const MAX_HEAD: usize = 16 << 10;

/// What the collector said about a file.
#[derive(Debug)]
pub(crate) enum Fetch {
    /// `200`: the synced bytes at the offset asked (possibly none yet).
    Bytes(Bytes),
    /// `410` or `404`: not (or no longer) open at the collector: read storage.
    NotOpen,
    /// `416`: the offset is not served now (older than the collector keeps, or
    /// past its synced length): read storage, ask again later.
    NotNow,
    /// The collector could not be reached (or answered something unexpected).
    Unreachable,
    /// A long-poll is held at the collector ([`CollectorHttp::fetch_wait`]).
    Waiting,
}

/// A long-poll in flight: its task owns the partition's connection until it ends.
#[derive(Debug)]
struct Waiting {
    name: Arc<str>,
    offset: u64,
    task: JoinHandle<Exchange>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One partition's connection to its collector.
#[derive(Debug)]
pub(crate) struct CollectorHttp {
    cluster: NodeName,
    collector: NodeName,
    addr: Option<String>,
    addr_read: Option<Instant>,
    conn: Option<Connection>,
    down_until: Option<Instant>,
    backoff: Duration,
    /// Whether the current outage was logged.
    warned: bool,
    /// The long-poll in flight, if any.
    waiting: Option<Waiting>,
}

impl CollectorHttp {
    pub fn new(cluster: NodeName, collector: NodeName) -> CollectorHttp {
        CollectorHttp {
            cluster,
            collector,
            addr: None,
            addr_read: None,
            conn: None,
            down_until: None,
            backoff: Duration::ZERO,
            warned: false,
            waiting: None,
        }
    }

    /// Whether a request may be tried now (not backing off after a failure).
    pub fn available(&self) -> bool {
        self.down_until.is_none_or(|t| Instant::now() >= t)
    }

    /// Asks for the synced bytes of `name` from `offset`, at most `max` (the first
    /// frame is always whole), and waits for the answer.
    pub async fn fetch(
        &mut self,
        roots: &Roots,
        metrics: &Metrics,
        topic: &Topic,
        name: &str,
        offset: u64,
        max: u64,
    ) -> Fetch {
        self.cancel_wait();
        let target = match self
            .prepare(roots, metrics, topic, name, offset, max, None)
            .await
        {
            Ok(t) => t,
            Err(f) => return f,
        };
        let conn = self.conn.take();
        let (conn, answer) = exchange(
            conn,
            self.addr.clone().unwrap_or_default(),
            target,
            REQUEST_TIMEOUT,
        )
        .await;
        self.conn = conn;
        self.finish(metrics, offset, answer)
    }

    /// The long-poll: asks for the bytes of `name` from `offset` with
    /// `wait_ms=`[`WAIT`], in a task of its own, and answers
    /// [`Fetch::Waiting`] until the collector has answered (then `wake` is
    /// notified, and the next call with the same file and offset returns the
    /// answer). A call for another file or offset drops the request held.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch_wait(
        &mut self,
        roots: &Roots,
        metrics: &Metrics,
        topic: &Topic,
        name: &str,
        offset: u64,
        max: u64,
        wake: &Arc<Notify>,
    ) -> Fetch {
        match self.waiting.take() {
            Some(mut w) if w.name.as_ref() == name && w.offset == offset => {
                if !w.task.is_finished() {
                    self.waiting = Some(w);
                    return Fetch::Waiting;
                }
                let (conn, answer) = match (&mut w.task).await {
                    Ok(done) => done,
                    Err(e) => (None, Err(format!("long-poll task ended: {e}"))),
                };
                self.conn = conn;
                return self.finish(metrics, offset, answer);
            }
            Some(w) => drop(w),
            None => {}
        }
        let target = match self
            .prepare(roots, metrics, topic, name, offset, max, Some(WAIT))
            .await
        {
            Ok(t) => t,
            Err(f) => return f,
        };
        let conn = self.conn.take();
        let addr = self.addr.clone().unwrap_or_default();
        let wake = wake.clone();
        let task = tokio::spawn(async move {
            let done = exchange(conn, addr, target, WAIT + REQUEST_TIMEOUT).await;
            wake.notify_one();
            done
        });
        metrics.collector_http_waits.inc();
        self.waiting = Some(Waiting {
            name: name.into(),
            offset,
            task,
        });
        Fetch::Waiting
    }

    /// Drops the long-poll held, if any (and with it its connection).
    pub fn cancel_wait(&mut self) {
        self.waiting = None;
    }

    /// The request target for `name` at `offset`, after checking the collector
    /// may be asked now and reading its address; `Err` with the answer when not.
    #[allow(clippy::too_many_arguments)]
    async fn prepare(
        &mut self,
        roots: &Roots,
        metrics: &Metrics,
        topic: &Topic,
        name: &str,
        offset: u64,
        max: u64,
        wait: Option<Duration>,
    ) -> Result<String, Fetch> {
        if !self.available() {
            return Err(Fetch::Unreachable);
        }
        let fresh = self.addr_read.is_some_and(|t| t.elapsed() < ADDR_REFRESH);
        if !fresh {
            self.addr = self.read_addr(roots).await;
            self.addr_read = Some(Instant::now());
        }
        if self.addr.is_none() {
            return Err(self.failed(metrics, "no running collector heartbeat with an http_addr"));
        }
        let mut target = format!(
            "/v1/open/{topic}/{}/{name}?offset={offset}&max={max}",
            self.collector
        );
        if let Some(wait) = wait {
            target.push_str(&format!("&wait_ms={}", wait.as_millis()));
        }
        Ok(target)
    }

    /// What the collector's answer (or the failure to get one) means.
    fn finish(
        &mut self,
        metrics: &Metrics,
        offset: u64,
        answer: Result<(u16, HeaderMap, Bytes), String>,
    ) -> Fetch {
        let addr = self.addr.clone().unwrap_or_default();
        let (status, headers, body) = match answer {
            Ok(a) => a,
            Err(e) => {
                // The collector may have restarted elsewhere: re-read the heartbeat.
                self.addr_read = None;
                return self.failed(metrics, &format!("{addr}: {e}"));
            }
        };
        let header = |n: &str| header(&headers, n);
        if !answered_by(&headers, &self.cluster, &self.collector) {
            self.addr_read = None;
            return self.failed(
                metrics,
                &format!(
                    "{addr} is not collector {}/{}",
                    self.cluster, self.collector
                ),
            );
        }
        if self.warned {
            tracing::info!(cluster = %self.cluster, collector = %self.collector, addr,
                "collector reachable again; reading its open files over HTTP");
        }
        self.warned = false;
        self.backoff = Duration::ZERO;
        self.down_until = None;
        if header("conduit-wait") == Some("refused") {
            metrics.collector_http_waits_refused.inc();
        }
        match status {
            200 if header("conduit-offset") == Some(offset.to_string().as_str()) => {
                Fetch::Bytes(body)
            }
            404 | 410 => Fetch::NotOpen,
            416 => Fetch::NotNow,
            other => {
                tracing::debug!(status = other, addr, "unexpected open-file answer");
                Fetch::NotNow
            }
        }
    }

    fn failed(&mut self, metrics: &Metrics, why: &str) -> Fetch {
        self.conn = None;
        metrics.collector_http_fallbacks.inc();
        if !self.warned {
            tracing::warn!(cluster = %self.cluster, collector = %self.collector, reason = why,
                "collector unreachable over HTTP; reading its files from storage");
            self.warned = true;
        }
        self.backoff = (self.backoff * 2)
            .max(Duration::from_millis(250))
            .min(Duration::from_secs(5));
        self.down_until = Some(Instant::now() + self.backoff);
        Fetch::Unreachable
    }

    async fn read_addr(&self, roots: &Roots) -> Option<String> {
        http_addr(&**roots.first(), &self.cluster, &self.collector).await
    }
}

/// The HTTP address of a running collector, from its heartbeat in `storage`;
/// `None` when it has no heartbeat, is stopped, or has no HTTP listener.
async fn http_addr(
    storage: &dyn conduit_core::Storage,
    cluster: &NodeName,
    collector: &NodeName,
) -> Option<String> {
    let bytes = storage
        .read(&Layout::heartbeat_path(cluster, collector))
        .await
        .ok()?;
    let beat: Heartbeat = serde_json::from_slice(&bytes).ok()?;
    if beat.state == CollectorState::Stopped || beat.http_addr.is_empty() {
        return None;
    }
    Some(beat.http_addr)
}

/// Whether an answer's identity headers name `cluster`/`collector` (another
/// process may have the address now).
fn answered_by(headers: &HeaderMap, cluster: &NodeName, collector: &NodeName) -> bool {
    header(headers, "conduit-cluster") == Some(cluster.as_str())
        && header(headers, "conduit-collector") == Some(collector.as_str())
}

/// A header of an answer as text (`None` if absent or not text).
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// For the lag ([`crate::lag`]): the synced bytes of `name`, a file of
/// `collector` still open for write, from `offset` to its synced end (at most
/// `max`), asked of the collector's open-file endpoint (its address from its
/// heartbeat in `storage`) in as many requests as its answers take (each is
/// cut at 4 MiB), on one connection, until an empty answer. `None` when the
/// collector cannot say: not running, unreachable, another collector at that
/// address, the file no longer open, or an offset not served (older than the
/// collector keeps); the caller then reads storage.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn synced_from(
    storage: &dyn conduit_core::Storage,
    cluster: &NodeName,
    collector: &NodeName,
    topic: &Topic,
    name: &str,
    offset: u64,
    max: u64,
) -> Option<Bytes> {
    let addr = http_addr(storage, cluster, collector).await?;
    let deadline = tokio::time::Instant::now() + LAG_REQUEST_TIMEOUT;
    let mut conn = None;
    let mut out = bytes::BytesMut::new();
    let mut at = offset;
    while (out.len() as u64) < max {
        let target = format!(
            "/v1/open/{topic}/{collector}/{name}?offset={at}&max={}",
            max - out.len() as u64
        );
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (kept, answer) = exchange(conn, addr.clone(), target, left).await;
        conn = kept;
        let (status, headers, body) = answer.ok()?;
        let ok = status == 200
            && answered_by(&headers, cluster, collector)
            && header(&headers, "conduit-offset") == Some(at.to_string().as_str());
        if !ok {
            return None;
        }
        if body.is_empty() {
            break;
        }
        at += body.len() as u64;
        out.extend_from_slice(&body);
    }
    Some(out.freeze())
}

/// The answer to `target` from the collector at `addr`: one GET on `conn`
/// (kept alive; a new connection if there is none or the collector closed it,
/// and one retry on a new one when a kept-alive connection fails), within
/// `timeout`. Gives back the connection to keep (none after a failure).
type Exchange = (Option<Connection>, Result<(u16, HeaderMap, Bytes), String>);

async fn exchange(
    mut conn: Option<Connection>,
    addr: String,
    target: String,
    timeout: Duration,
) -> Exchange {
    let mut answer = Err("not tried".to_owned());
    for _ in 0..2 {
        let reused = conn.as_ref().is_some_and(Connection::is_open);
        answer = tokio::time::timeout(timeout, request(&mut conn, &addr, &target))
            .await
            .unwrap_or_else(|_| Err("timed out".to_owned()));
        if answer.is_ok() {
            return (conn, answer);
        }
        conn = None;
        if !reused {
            break;
        }
    }
    (None, answer)
}

/// One GET of `target` on the kept-alive connection to `addr` (a new one if there
/// is none or the collector closed it): status, headers and the whole body.
async fn request(
    conn: &mut Option<Connection>,
    addr: &str,
    target: &str,
) -> Result<(u16, HeaderMap, Bytes), String> {
    if !conn.as_ref().is_some_and(Connection::is_open) {
        *conn = Some(Connection::open(addr).await?);
    }
    let conn = conn.as_mut().expect("connected");
    conn.sender.ready().await.map_err(|e| chain(&e))?;
    let request = Request::get(target)
        .header(HOST, addr)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let (head, body) = conn
        .sender
        .send_request(request)
        .await
        .map_err(|e| chain(&e))?
        .into_parts();
    let len = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = len.filter(|&len| len > MAX_BODY) {
        return Err(format!("answer of {len} bytes is too large"));
    }
    let body = Limited::new(body, MAX_BODY as usize)
        .collect()
        .await
        .map_err(|e| chain(e.as_ref()))?
        .to_bytes();
    Ok((head.status.as_u16(), head.headers, body))
}

/// An error with its sources, `error: source: ...` (hyper's own messages are terse,
/// the I/O error is in the source).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A keep-alive HTTP/1.1 connection to a collector: hyper's request sender and the
/// task that drives the connection (aborted on drop, which closes the socket).
#[derive(Debug)]
struct Connection {
    sender: http1::SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Connection {
    async fn open(addr: &str) -> Result<Connection, String> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .max_header_size(MAX_HEAD)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| chain(&e))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "collector http connection ended");
            }
        });
        Ok(Connection { sender, driver })
    }

    /// Whether another request may be sent (the collector did not close it, after a
    /// `Connection: close` answer or an idle timeout).
    fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
