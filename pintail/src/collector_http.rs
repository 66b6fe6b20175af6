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
//! [`ADDR_REFRESH`] and after a failure. One keep-alive connection per partition;
//! a minimal HTTP/1.1 client (requests with `Content-Length` answers only, which is
//! what conduit's HTTP server sends). When the collector cannot be reached the
//! reader falls back to storage, logs it once per outage, counts
//! `pintail_collector_http_fallbacks`, and tries again after a backoff (250 ms
//! doubling to 5 s).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use conduit_core::heartbeat::{CollectorState, Heartbeat};
use conduit_core::layout::Layout;
use conduit_core::{NodeName, Topic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
/// Largest answer head accepted.
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
    conn: Option<TcpStream>,
    buf: BytesMut,
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
            buf: BytesMut::new(),
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
            let reused = self.conn.is_some();
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
        let header = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
        };
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

    async fn request(
        &mut self,
        addr: &str,
        target: &str,
    ) -> Result<(u16, Vec<(String, String)>, Bytes), String> {
        if self.conn.is_none() {
            let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            self.conn = Some(s);
            self.buf.clear();
        }
        let conn = self.conn.as_mut().expect("connected");
        let req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        conn.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // Head.
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > MAX_HEAD {
                return Err("answer head too large".into());
            }
            if conn
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("connection closed".into());
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let _ = self.buf.split_to(head_end + 4);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or("bad status line")?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: u64 = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .ok_or("answer without content-length")?;
        if len > MAX_BODY {
            return Err(format!("answer of {len} bytes is too large"));
        }
        while (self.buf.len() as u64) < len {
            if conn
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("connection closed mid-answer".into());
            }
        }
        let body = self.buf.split_to(len as usize).freeze();
        if headers
            .iter()
            .any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"))
        {
            self.conn = None;
        }
        Ok((status, headers, body))
    }
}
