//! Reading a collector's open file through its HTTP listener.
//!
//! On HDFS the unfinished last block of a file still open for write cannot be read
//! (hdfs-native returns only completed blocks), so a local-view reader whose
//! storage has no new bytes asks the collector that writes the file:
//! `GET /v1/open/<topic>/<collector>/<name>?offset=N&max=M` (`docs/pintail.md`).
//! The bytes are the synced bytes of the file at the same offsets as in storage,
//! so positions are unchanged whichever way a frame was read.
//!
//! The collector's address is the `http_addr` of its heartbeat
//! (`system/heartbeats/<cluster>/<collector>.json`), re-read every
//! [`ADDR_REFRESH`] and after a failure. One keep-alive HTTP/1.1 connection per
//! partition: hyper's client connection (`hyper::client::conn::http1`), driven by a
//! task that ends with it. When the collector cannot be reached the
//! reader falls back to storage, logs it once per outage, counts
//! `pintail_collector_http_fallbacks`, and tries again after a backoff (250 ms
//! doubling to 5 s).

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
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::roots::Roots;

/// How often the heartbeat is re-read for the collector's address.
const ADDR_REFRESH: Duration = Duration::from_secs(10);
/// Connect timeout (short: the consumer polls partitions one after another).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// Whole-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
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
        }
    }

    /// Whether a request may be tried now (not backing off after a failure).
    pub fn available(&self) -> bool {
        self.down_until.is_none_or(|t| Instant::now() >= t)
    }

    /// Asks for the synced bytes of `name` from `offset`, at most `max` (the first
    /// frame is always whole).
    pub async fn fetch(
        &mut self,
        roots: &Roots,
        metrics: &Metrics,
        topic: &Topic,
        name: &str,
        offset: u64,
        max: u64,
    ) -> Fetch {
        if !self.available() {
            return Fetch::Unreachable;
        }
        let fresh = self.addr_read.is_some_and(|t| t.elapsed() < ADDR_REFRESH);
        if !fresh {
            self.addr = self.read_addr(roots).await;
            self.addr_read = Some(Instant::now());
        }
        let Some(addr) = self.addr.clone() else {
            return self.failed(metrics, "no running collector heartbeat with an http_addr");
        };
        let target = format!(
            "/v1/open/{topic}/{}/{name}?offset={offset}&max={max}",
            self.collector
        );
        // A kept-alive connection may have been closed by the server: one retry on
        // a new connection.
        let mut answer = Err("not tried".to_owned());
        for _ in 0..2 {
            let reused = self.conn.as_ref().is_some_and(Connection::is_open);
            answer = tokio::time::timeout(REQUEST_TIMEOUT, self.request(&addr, &target))
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()));
            if answer.is_ok() {
                break;
            }
            self.conn = None;
            if !reused {
                break;
            }
        }
        let (status, headers, body) = match answer {
            Ok(a) => a,
            Err(e) => {
                // The collector may have restarted elsewhere: re-read the heartbeat.
                self.addr_read = None;
                return self.failed(metrics, &format!("{addr}: {e}"));
            }
        };
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        if header("conduit-cluster") != Some(self.cluster.as_str())
            || header("conduit-collector") != Some(self.collector.as_str())
        {
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
        match status {
            200 if header("conduit-offset") == Some(offset.to_string().as_str()) => {
                Fetch::Bytes(body)
            }
            404 | 410 => Fetch::NotOpen,
            416 => Fetch::NotNow,
            other => {
                tracing::debug!(status = other, addr, target, "unexpected open-file answer");
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
        let path = Layout::heartbeat_path(&self.cluster, &self.collector);
        let bytes = roots.first().read(&path).await.ok()?;
        let beat: Heartbeat = serde_json::from_slice(&bytes).ok()?;
        if beat.state == CollectorState::Stopped || beat.http_addr.is_empty() {
            return None;
        }
        Some(beat.http_addr)
    }

    /// One GET of `target` on the kept-alive connection to `addr` (a new one if there
    /// is none or the collector closed it): status, headers and the whole body.
    async fn request(
        &mut self,
        addr: &str,
        target: &str,
    ) -> Result<(u16, HeaderMap, Bytes), String> {
        if !self.conn.as_ref().is_some_and(Connection::is_open) {
            self.conn = Some(Connection::open(addr).await?);
        }
        let conn = self.conn.as_mut().expect("connected");
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
