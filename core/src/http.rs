//! The HTTP listener every conduit service runs beside its data port.
//!
//! Each service (collector, worker, tail reader) binds a separate port and hands
//! the listener to an [`HttpServer`], which serves:
//!
//! * `GET /metrics`: every metric registered in the shared
//!   [`Registry`], encoded by
//!   [`prometheus_client::encoding::text::encode`]. That encoder emits the
//!   **OpenMetrics** text format (counters typed under their family name with
//!   `_total` samples, closing `# EOF` line), served with the OpenMetrics
//!   content type [`METRICS_CONTENT_TYPE`] when the `Accept` header prefers
//!   it (Prometheus does); otherwise, as Prometheus client libraries do, the
//!   classic text format (`text/plain; version=0.0.4`, what `curl` and
//!   `promtool check metrics` read), rewritten from it
//!   ([`exposition`]: [`negotiate`], [`to_classic`]).
//! * `GET /health`: `200 {"status":"ok", ...details}` while the service's
//!   [`HealthFn`] says healthy, `503 {"status":"unhealthy", ...details}`
//!   otherwise. Without a health function it is always `200 {"status":"ok"}`.
//! * anything else: the service's own [`Routes`] (for example the collector's
//!   synced bytes of open data files, `/v1/open/<topic>/<collector>/<name>?offset=N&max=M`), and
//!   `404` when they return `None` or there are none.
//!
//! Only `GET` and `HEAD` are routed (`HEAD` gets the `GET` answer without the
//! body); any other method gets `405` with `Allow: GET, HEAD`.
//!
//! # Robustness
//! * Request bodies are never read by the server or shown to routes. Hyper
//!   discards whatever of a body is already buffered and otherwise closes the
//!   connection. Request heads are limited to [`MAX_REQUEST_BUFFER`] (64 KiB,
//!   `431` beyond), which is also the target size of the per-connection read
//!   buffer, so a connection holds about that much at most.
//! * Every connection runs in its own task; a malformed request gets a `400`
//!   (or `431`) from hyper and costs only its own connection. A route handler
//!   or health function that panics produces a `500` for that request.
//! * At most [`MAX_CONNECTIONS`] connections are served at once (see
//!   [`HttpServer::with_limits`]). At the limit, the connection that has been
//!   waiting longest for request headers (a new connection that has sent no
//!   complete request yet, or an idle keep-alive one) is closed to make room for
//!   the newcomer, as nginx reuses idle connections; only when every connection
//!   has a request in progress is the newcomer closed without a response. So a
//!   slowloris (hundreds of connections trickling header bytes) cannot keep
//!   `/health` and `/metrics` from answering.
//! * A client has [`HEADER_READ_TIMEOUT`] to send a request's headers, counted
//!   from the connection's start or the end of its previous request.
//! * Who may connect ([`HttpServer::with_front_door`]): a client outside the
//!   [`AllowList`] is closed at accept, before anything is read; with a
//!   [`TlsAcceptor`] every connection is TLS, its handshake bounded by the header
//!   timeout (a client that opens TCP and never handshakes is closed, and while
//!   it handshakes it counts as waiting for headers, so it can be evicted).
//! * Connections closed for these limits are counted in
//!   `conduit_http_connections_closed_total{reason}` (`evicted_waiting`,
//!   `over_limit`, `header_timeout`, `not_allowed`, `tls_handshake`) and logged
//!   at most once per 10 s per reason.
//! * Accept errors (for example running out of file descriptors) are logged
//!   and the accept loop continues after a short pause.
//!
//! # Metrics
//! The registry is shared as `Arc<Mutex<Registry>>` ([`SharedRegistry`]):
//! [`Registry::register`](prometheus_client::registry::Registry::register)
//! takes `&mut self`, and a service's components may register their metrics
//! after the HTTP server is already running. The lock is held only while
//! encoding a scrape (synchronously, never across an `.await`). The crate is
//! re-exported as [`prometheus_client`] so every service uses the same version;
//! [`latency_histogram`] gives the standard buckets for sync and ack latencies.
//!
//! # Example
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use conduit_core::http::{latency_histogram, HttpServer};
//! use conduit_core::http::prometheus_client::registry::Registry;
//!
//! # async fn run() -> std::io::Result<()> {
//! let mut registry = Registry::default();
//! let sync_latency = latency_histogram();
//! registry.register("sync_latency_seconds", "Latency of file syncs", sync_latency.clone());
//! let registry = Arc::new(Mutex::new(registry));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9400").await?;
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! HttpServer::new(registry).serve(listener, shutdown).await
//! # }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use crate::allow::AllowList;
use crate::tls::TlsAcceptor;

/// The Prometheus client every conduit service uses, re-exported so that all
/// crates register metrics of the same version as the one this server encodes.
pub use prometheus_client;

/// The metrics registry shared between a service's components and its
/// [`HttpServer`]; see the [module documentation](self#metrics) for why it is
/// behind a mutex.
pub type SharedRegistry = Arc<Mutex<Registry>>;

/// What `/health` reports: a closure returning whether the service is healthy
/// and a JSON value of details.
///
/// When the details are a JSON object, its fields are merged into the response
/// next to `"status"` (a `"status"` field of its own is overwritten); any other
/// value is reported under `"details"`. The closure is called on every request
/// to `/health`, on the connection's task, so it should be cheap and must not
/// block.
pub type HealthFn = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

/// Content type of `/metrics`: the OpenMetrics text format that
/// [`prometheus_client::encoding::text::encode`] produces.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

mod exposition;
mod process;

pub use exposition::{negotiate, to_classic, Format, CLASSIC_CONTENT_TYPE};
pub use process::{register_process_metrics, RUSTC, VERSION};

/// Most connections served at once by default (`collector.http_max_connections`);
/// see the [module docs](self#robustness) for what happens at the limit.
pub const MAX_CONNECTIONS: usize = 256;

/// Largest request head (request line and headers) accepted; a larger one
/// gets `431` and its connection is closed. Also the target size of hyper's
/// read buffer per connection (which may overshoot it by one allocation).
pub const MAX_REQUEST_BUFFER: usize = 64 * 1024;

/// How long a client may take by default to send a request's headers before its
/// connection is closed (`collector.http_header_timeout_ms`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`HttpServer::serve`] waits for in-flight requests after shutdown
/// before aborting their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after an accept error, so that a persistent one (such as running out
/// of file descriptors) does not spin the accept loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";
const BYTES_CONTENT_TYPE: &str = "application/octet-stream";

/// A response from a route handler (or from the server's own routes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status code; a value outside 100..=999 is sent as `500`.
    pub status: u16,
    /// Value of the `Content-Type` header.
    pub content_type: &'static str,
    /// Further headers, sent in order after `Content-Type`. A name or value
    /// that is not valid in HTTP (upper-case or spaces in a name, line breaks
    /// in a value) is dropped with a warning. `Content-Length` is set by the
    /// server from the body and must not be given here.
    pub headers: Vec<(&'static str, String)>,
    /// The body; for a `HEAD` request it is measured for `Content-Length` but
    /// not sent.
    pub body: Bytes,
}

impl HttpResponse {
    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::with_type(status, TEXT_CONTENT_TYPE, Bytes::from(body.into()))
    }

    /// An `application/json` response holding `value` serialized compactly.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::with_type(status, JSON_CONTENT_TYPE, Bytes::from(value.to_string()))
    }

    /// An `application/octet-stream` response.
    pub fn bytes(status: u16, body: Bytes) -> Self {
        Self::with_type(status, BYTES_CONTENT_TYPE, body)
    }

    /// The `404 not found` text response.
    pub fn not_found() -> Self {
        Self::text(404, "not found\n")
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn with_type(status: u16, content_type: &'static str, body: Bytes) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// Converts into hyper's response, dropping invalid headers.
    fn into_hyper(self) -> Response<Full<Bytes>> {
        let status = StatusCode::from_u16(self.status).unwrap_or_else(|_| {
            tracing::warn!(
                status = self.status,
                "invalid HTTP status from handler, sending 500"
            );
            StatusCode::INTERNAL_SERVER_ERROR
        });
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        let content_type = HeaderValue::from_str(self.content_type).unwrap_or_else(|_| {
            tracing::warn!(
                content_type = self.content_type,
                "invalid content type from handler"
            );
            HeaderValue::from_static(BYTES_CONTENT_TYPE)
        });
        headers.insert(CONTENT_TYPE, content_type);
        for (name, value) in self.headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.append(name, value);
                }
                _ => tracing::warn!(name, value, "dropping invalid response header"),
            }
        }
        response
    }
}

/// A parsed request, as given to [`Routes::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method, upper case: `GET` or `HEAD` (the only ones routed).
    pub method: String,
    /// The path, percent-decoded (`/v1/files/a%20b` becomes `/v1/files/a b`;
    /// `%2F` becomes `/`, so routes serving files must still reject `..` and
    /// other escapes themselves). Never includes the query.
    pub path: String,
    /// The query pairs in order, keys and values decoded as
    /// `application/x-www-form-urlencoded` (`+` is a space); a segment without
    /// `=` has an empty value. Repeated keys are kept.
    pub query: Vec<(String, String)>,
    /// The request headers in order, names lower case; a value that is not
    /// UTF-8 is decoded lossily.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    /// The value of the first query pair named `key`.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Builds the request from hyper's parts; `None` when the path or query
    /// does not decode to UTF-8.
    fn parse(method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Self> {
        let path = percent_decode(uri.path(), false)?;
        let query = match uri.query() {
            None => Vec::new(),
            Some(query) => parse_query(query)?,
        };
        let headers = headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        Some(Self {
            method: method.as_str().to_owned(),
            path,
            query,
            headers,
        })
    }
}

/// A service's own routes; `/metrics` and `/health` are answered by the server
/// before these are consulted.
///
/// Called for `GET` and `HEAD` requests only (check [`HttpRequest::method`] if
/// the difference matters; the server drops the body of a `HEAD` answer
/// itself). Each call runs on its connection's task; a panic becomes a `500`.
#[async_trait::async_trait]
pub trait Routes: Send + Sync + 'static {
    /// Answers `req`, or returns `None` for a path this service does not
    /// serve, which becomes a `404`.
    async fn handle(&self, req: HttpRequest) -> Option<HttpResponse>;
}

/// The HTTP server of a conduit service: `/metrics`, `/health` and the
/// service's [`Routes`]. See the [module documentation](self).
pub struct HttpServer {
    registry: SharedRegistry,
    health: Option<HealthFn>,
    routes: Option<Arc<dyn Routes>>,
    max_connections: usize,
    header_timeout: Duration,
    allow: AllowList,
    tls: Option<TlsAcceptor>,
}

impl fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServer")
            .field("health", &self.health.as_ref().map(|_| "HealthFn"))
            .field("routes", &self.routes.as_ref().map(|_| "Routes"))
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .field("allow", &self.allow)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// A server exposing `registry` on `/metrics`, always healthy, with no
    /// routes of its own.
    pub fn new(registry: SharedRegistry) -> Self {
        Self {
            registry,
            health: None,
            routes: None,
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_READ_TIMEOUT,
            allow: AllowList::default(),
            tls: None,
        }
    }

    /// Serves only clients whose address `allow` allows (others are closed at
    /// accept), over TLS when `tls` is given (defaults: everyone, plain HTTP).
    pub fn with_front_door(mut self, allow: AllowList, tls: Option<TlsAcceptor>) -> Self {
        self.allow = allow;
        self.tls = tls;
        self
    }

    /// Serves at most `max_connections` at once (at least 1) and gives a client
    /// `header_timeout` to send a request's headers (defaults:
    /// [`MAX_CONNECTIONS`], [`HEADER_READ_TIMEOUT`]).
    pub fn with_limits(mut self, max_connections: usize, header_timeout: Duration) -> Self {
        self.max_connections = max_connections.max(1);
        self.header_timeout = header_timeout;
        self
    }

    /// Uses `f` to answer `/health`.
    pub fn with_health(mut self, f: HealthFn) -> Self {
        self.health = Some(f);
        self
    }

    /// Uses `routes` for every path other than `/metrics` and `/health`.
    pub fn with_routes(mut self, routes: Arc<dyn Routes>) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Serves HTTP/1.1 on `listener` until `shutdown` resolves.
    ///
    /// Then it closes the listener (new connections are refused), tells every
    /// open connection to finish its in-flight request and close (idle
    /// keep-alive connections close at once), and waits for them for at most
    /// [`SHUTDOWN_GRACE`] before aborting the rest. Accept errors are logged
    /// and never end the loop, so this returns `Ok(())` once shut down; the
    /// `io::Result` is kept for errors a future version may report.
    ///
    /// Dropping the returned future instead aborts every connection at once.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let local = listener.local_addr().ok();
        let max_connections = self.max_connections;
        let closed = ClosedCounter::register(&self.registry, self.header_timeout);
        let (allow, tls) = (self.allow, self.tls);
        let handler = Arc::new(Handler {
            registry: self.registry,
            health: self.health,
            routes: self.routes,
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_header_size(MAX_REQUEST_BUFFER)
            .max_buf_size(MAX_REQUEST_BUFFER);
        let table = Arc::new(ConnectionTable::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        tracing::info!(addr = ?local, tls = tls.is_some(), allow_networks = %allow, "http server listening");

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = done {
                        tracing::warn!(error = %e, "http connection task failed");
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if !allow.allows(peer.ip()) {
                            closed.count(Closed::NotAllowed);
                            if let Some(suppressed) = crate::ratelimit::allow("http_not_allowed") {
                                tracing::warn!(
                                    %peer,
                                    allow_networks = %allow,
                                    suppressed,
                                    "http connection from an address outside allow_networks: closed"
                                );
                            }
                            drop(stream);
                            continue;
                        }
                        let Some(entry) = table.admit(max_connections, &closed) else {
                            closed.count(Closed::OverLimit);
                            if let Some(suppressed) = crate::ratelimit::allow("http_over_limit") {
                                tracing::warn!(
                                    %peer,
                                    http_max_connections = max_connections,
                                    suppressed,
                                    "http connections at the limit, each with a request in progress: closing the new one"
                                );
                            }
                            drop(stream);
                            continue;
                        };
                        let abort = connections.spawn(serve_connection(
                            builder.clone(),
                            stream,
                            tls.clone(),
                            peer,
                            Arc::clone(&handler),
                            stop_rx.clone(),
                            entry.clone(),
                            closed.clone(),
                        ));
                        entry.set_abort(abort);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "http accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                },
            }
        }

        drop(listener);
        let in_flight = connections.len();
        tracing::info!(addr = ?local, in_flight, "http server shutting down");
        // Tell every connection to finish its request and close (a dropped
        // sender, as when this future is dropped, means the same).
        let _ = stop_tx.send(true);
        let drain = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!(
                remaining = connections.len(),
                "http connections still open after shutdown grace, aborting them"
            );
            connections.shutdown().await;
        }
        drop(stop_tx);
        tracing::info!(addr = ?local, "http server stopped");
        Ok(())
    }
}

/// Serves one connection (after its TLS handshake, with `tls`) until it closes,
/// finishing gracefully on `stop`; its place in the table is given up when this
/// ends (or is aborted).
#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    handler: Arc<Handler>,
    stop: watch::Receiver<bool>,
    entry: Arc<Entry>,
    closed: ClosedCounter,
) {
    let place = Place(Arc::clone(&entry));
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = tls else {
        return serve_http(builder, stream, peer, handler, stop, place, closed).await;
    };
    // Bounded like the request headers that follow it: a client that opens a
    // connection and never completes the handshake holds it no longer.
    let handshake = tokio::time::timeout(closed.header_timeout, acceptor.accept(stream)).await;
    let error = match handshake {
        Ok(Ok(stream)) => {
            return serve_http(builder, stream, peer, handler, stop, place, closed).await;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!(
            "no complete handshake within the header timeout ({} ms)",
            closed.header_timeout.as_millis()
        ),
    };
    closed.count(Closed::TlsHandshake);
    if let Some(suppressed) = crate::ratelimit::allow("http_tls_handshake") {
        tracing::warn!(%peer, %error, suppressed, "http tls handshake failed: closed");
    }
}

/// Serves HTTP/1.1 on one connection's byte stream (plain or TLS) until it
/// closes, finishing gracefully on `stop`.
async fn serve_http<S>(
    builder: http1::Builder,
    stream: S,
    peer: SocketAddr,
    handler: Arc<Handler>,
    mut stop: watch::Receiver<bool>,
    place: Place,
    closed: ClosedCounter,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let entry = Arc::clone(&place.0);
    let _place = place;
    let service = service_fn(move |req| {
        let handler = Arc::clone(&handler);
        let busy = Busy::new(Arc::clone(&entry));
        async move {
            let response = handler.respond(req).await;
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // A dropped sender (serve itself dropped) also counts as stop.
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            closed.count(Closed::HeaderTimeout);
            if let Some(suppressed) = crate::ratelimit::allow("http_header_timeout") {
                tracing::info!(
                    %peer,
                    header_timeout_ms = closed.header_timeout.as_millis() as u64,
                    suppressed,
                    "http client sent no complete request headers within the header timeout: closed"
                );
            }
        } else {
            tracing::debug!(%peer, error = %e, "http connection ended with an error");
        }
    }
}

/// Why the server closed a connection for one of its limits.
#[derive(Debug, Clone, Copy)]
enum Closed {
    /// Waiting longest for request headers when a newcomer needed its place.
    EvictedWaiting,
    /// A newcomer at the limit with no connection waiting for headers.
    OverLimit,
    /// No complete request headers within the header timeout.
    HeaderTimeout,
    /// The client's address is outside the allow-list.
    NotAllowed,
    /// The TLS handshake failed or did not complete within the header timeout.
    TlsHandshake,
}

impl Closed {
    const ALL: [Closed; 5] = [
        Self::EvictedWaiting,
        Self::OverLimit,
        Self::HeaderTimeout,
        Self::NotAllowed,
        Self::TlsHandshake,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::EvictedWaiting => "evicted_waiting",
            Self::OverLimit => "over_limit",
            Self::HeaderTimeout => "header_timeout",
            Self::NotAllowed => "not_allowed",
            Self::TlsHandshake => "tls_handshake",
        }
    }
}

/// `conduit_http_connections_closed_total{reason}`, and the header timeout its
/// log lines name.
#[derive(Clone)]
struct ClosedCounter {
    family: Family<Vec<(&'static str, &'static str)>, Counter>,
    header_timeout: Duration,
}

impl ClosedCounter {
    /// Registers the counter, every reason at 0.
    fn register(registry: &SharedRegistry, header_timeout: Duration) -> ClosedCounter {
        let family = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        for reason in Closed::ALL {
            let _ = family.get_or_create(&vec![("reason", reason.as_str())]);
        }
        registry.lock().unwrap_or_else(|p| p.into_inner()).register(
            "conduit_http_connections_closed",
            "HTTP connections closed for a limit (evicted_waiting, over_limit, header_timeout, not_allowed, tls_handshake)",
            family.clone(),
        );
        ClosedCounter {
            family,
            header_timeout,
        }
    }

    fn count(&self, reason: Closed) {
        self.family
            .get_or_create(&vec![("reason", reason.as_str())])
            .inc();
    }
}

/// The open connections, and which of them wait for request headers.
#[derive(Default)]
struct ConnectionTable {
    inner: Mutex<TableInner>,
}

#[derive(Default)]
struct TableInner {
    next_id: u64,
    open: HashMap<u64, Arc<Entry>>,
}

/// One open connection.
struct Entry {
    id: u64,
    table: Arc<ConnectionTable>,
    state: Mutex<EntryState>,
}

struct EntryState {
    /// Since when it has been waiting for request headers; `None` while a request
    /// is in progress.
    waiting_since: Option<Instant>,
    /// Its task, aborted to evict it (set right after it is spawned).
    abort: Option<AbortHandle>,
}

impl ConnectionTable {
    fn lock(&self) -> MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection: free, or made by evicting the connection
    /// waiting longest for headers; `None` when every connection is busy.
    fn admit(self: &Arc<Self>, max: usize, closed: &ClosedCounter) -> Option<Arc<Entry>> {
        let mut inner = self.lock();
        if inner.open.len() >= max {
            let oldest = inner
                .open
                .values()
                .filter_map(|e| {
                    let state = e.state();
                    let abort = state.abort.clone()?;
                    Some((state.waiting_since?, e.id, abort))
                })
                .min_by_key(|(since, id, _)| (*since, *id));
            let (since, id, abort) = oldest?;
            inner.open.remove(&id);
            abort.abort();
            closed.count(Closed::EvictedWaiting);
            if let Some(suppressed) = crate::ratelimit::allow("http_evicted_waiting") {
                tracing::warn!(
                    waited = ?since.elapsed(),
                    http_max_connections = max,
                    suppressed,
                    "http connections at the limit: closed the one waiting longest for request headers"
                );
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let entry = Arc::new(Entry {
            id,
            table: Arc::clone(self),
            state: Mutex::new(EntryState {
                waiting_since: Some(Instant::now()),
                abort: None,
            }),
        });
        inner.open.insert(id, Arc::clone(&entry));
        Some(entry)
    }
}

impl Entry {
    fn state(&self) -> MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_abort(&self, abort: AbortHandle) {
        self.state().abort = Some(abort);
    }
}

/// Gives a connection's place up when its task ends or is aborted.
struct Place(Arc<Entry>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.table.lock().open.remove(&self.0.id);
    }
}

/// A request in progress: its connection is not waiting for headers until the
/// response is ready.
struct Busy(Arc<Entry>);

impl Busy {
    fn new(entry: Arc<Entry>) -> Busy {
        entry.state().waiting_since = None;
        Busy(entry)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.state().waiting_since = Some(Instant::now());
    }
}

/// What every connection shares: the server's configuration.
struct Handler {
    registry: SharedRegistry,
    health: Option<HealthFn>,
    routes: Option<Arc<dyn Routes>>,
}

impl Handler {
    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method();
        if method != Method::GET && method != Method::HEAD {
            return HttpResponse::text(405, "method not allowed\n")
                .with_header("allow", "GET, HEAD")
                .into_hyper();
        }
        let Some(parsed) = HttpRequest::parse(method, req.uri(), req.headers()) else {
            return HttpResponse::text(400, "bad request: path or query is not UTF-8\n")
                .into_hyper();
        };
        // The body is never read: dropping it lets hyper discard what is
        // buffered or close the connection.
        drop(req);
        let response = match parsed.path.as_str() {
            "/metrics" => self.metrics(negotiate(parsed.header("accept"))),
            "/health" => self.health(),
            _ => self.route(parsed).await,
        };
        response.into_hyper()
    }

    fn metrics(&self, format: Format) -> HttpResponse {
        let mut body = String::new();
        let encoded = {
            let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            prometheus_client::encoding::text::encode(&mut body, &registry)
        };
        let (content_type, body) = match format {
            Format::OpenMetrics => (METRICS_CONTENT_TYPE, body),
            Format::Classic => (CLASSIC_CONTENT_TYPE, to_classic(&body)),
        };
        match encoded {
            Ok(()) => HttpResponse {
                status: 200,
                content_type,
                headers: Vec::new(),
                body: Bytes::from(body),
            },
            Err(e) => {
                tracing::error!(error = %e, "encoding metrics failed");
                HttpResponse::text(500, "encoding metrics failed\n")
            }
        }
    }

    fn health(&self) -> HttpResponse {
        let Some(health) = &self.health else {
            return health_response(true, serde_json::json!({}));
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| health())) {
            Ok((healthy, details)) => health_response(healthy, details),
            Err(_) => {
                tracing::error!("health function panicked");
                health_response(false, serde_json::json!({"error": "health check panicked"}))
            }
        }
    }

    async fn route(&self, req: HttpRequest) -> HttpResponse {
        let Some(routes) = &self.routes else {
            return HttpResponse::not_found();
        };
        let path = req.path.clone();
        match AssertUnwindSafe(routes.handle(req)).catch_unwind().await {
            Ok(Some(response)) => response,
            Ok(None) => HttpResponse::not_found(),
            Err(_) => {
                tracing::error!(path, "http route handler panicked");
                HttpResponse::text(500, "internal error\n")
            }
        }
    }
}

/// The `/health` answer: status 200/503 and the details merged next to
/// `"status"`.
fn health_response(healthy: bool, details: serde_json::Value) -> HttpResponse {
    let mut body = match details {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => serde_json::Map::new(),
        other => {
            let mut map = serde_json::Map::new();
            map.insert("details".to_owned(), other);
            map
        }
    };
    let (status, word) = if healthy {
        (200, "ok")
    } else {
        (503, "unhealthy")
    };
    body.insert("status".to_owned(), serde_json::Value::from(word));
    HttpResponse::json(status, &serde_json::Value::Object(body))
}

/// A latency histogram for sync and ack latencies, observed in **seconds**
/// (`elapsed.as_secs_f64()`).
///
/// Its bounds double from 50 µs: 19 buckets from 50 µs to 13.1 s (0.00005,
/// 0.0001, 0.0002, ..., 6.5536, 13.1072) plus `+Inf`, so everything from
/// 50 µs to 10 s lands in a finite bucket of at most 2x width. Doubling an
/// exactly-rounded bound keeps it exactly rounded, so the `le` labels print as
/// the short decimals above.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 19))
}

/// Percent-decodes `input` (and `+` to space when `plus_as_space`); a `%` not
/// followed by two hex digits is kept literally. `None` if the result is not
/// UTF-8.
fn percent_decode(input: &str, plus_as_space: bool) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push((hi << 4) | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_as_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits a query string into decoded pairs; `None` if any part is not UTF-8.
fn parse_query(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
            Some((percent_decode(key, true)?, percent_decode(value, true)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{oneshot, Notify};
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A response as read off the socket.
    #[derive(Debug)]
    struct Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Raw {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn parse_raw(bytes: &[u8]) -> Raw {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {text:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|line| {
                let (n, v) = line.split_once(':').expect("header line");
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        Raw {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// Sends `raw` bytes on a new connection and reads until the server closes.
    async fn send_raw(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
        timeout(DEADLINE, async {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(raw).await.expect("write");
            let mut out = Vec::new();
            stream.read_to_end(&mut out).await.expect("read");
            out
        })
        .await
        .expect("request timed out")
    }

    async fn request(addr: SocketAddr, method: &str, target: &str) -> Raw {
        request_accepting(addr, method, target, None).await
    }

    /// A request with an `Accept` header, when given.
    async fn request_accepting(
        addr: SocketAddr,
        method: &str,
        target: &str,
        accept: Option<&str>,
    ) -> Raw {
        let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
        let raw = format!(
            "{method} {target} HTTP/1.1\r\nHost: test\r\n{accept}Connection: close\r\n\r\n"
        );
        parse_raw(&send_raw(addr, raw.as_bytes()).await)
    }

    /// What Prometheus asks for.
    const OPENMETRICS: Option<&str> =
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5");

    struct TestRoutes {
        /// Told when `/slow` has started; `/slow` then waits for `release`.
        slow_entered: Mutex<Option<oneshot::Sender<()>>>,
        /// `/slow` requests started.
        slow_started: AtomicUsize,
        release: Notify,
    }

    #[async_trait::async_trait]
    impl Routes for TestRoutes {
        async fn handle(&self, req: HttpRequest) -> Option<HttpResponse> {
            match req.path.as_str() {
                "/v1/echo" => Some(
                    HttpResponse::text(
                        200,
                        format!(
                            "x={} method={} ua={}",
                            req.query_param("x").unwrap_or("-"),
                            req.method,
                            req.header("User-Agent").unwrap_or("-"),
                        ),
                    )
                    .with_header("x-conduit-test", "yes"),
                ),
                p if p.starts_with("/v1/files/") => Some(
                    HttpResponse::bytes(206, Bytes::from(p["/v1/files/".len()..].to_owned()))
                        .with_header("x-offset", req.query_param("offset").unwrap_or("0")),
                ),
                "/slow" => {
                    self.slow_started.fetch_add(1, Ordering::SeqCst);
                    let entered = self.slow_entered.lock().unwrap().take();
                    if let Some(tx) = entered {
                        let _ = tx.send(());
                    }
                    self.release.notified().await;
                    Some(HttpResponse::text(200, "slow done"))
                }
                "/panic" => panic!("route panicked on purpose"),
                "/bad-header" => Some(HttpResponse::text(200, "ok").with_header("Bad Name", "v")),
                _ => None,
            }
        }
    }

    struct Fixture {
        addr: SocketAddr,
        counter: Counter,
        healthy: Arc<AtomicBool>,
        routes: Arc<TestRoutes>,
        slow_entered: Option<oneshot::Receiver<()>>,
        stop: Option<oneshot::Sender<()>>,
        server: JoinHandle<std::io::Result<()>>,
    }

    async fn start(max_connections: usize) -> Fixture {
        start_with(max_connections, HEADER_READ_TIMEOUT).await
    }

    async fn start_with(max_connections: usize, header_timeout: Duration) -> Fixture {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("requests", "Requests seen", counter.clone());
        let histogram = latency_histogram();
        registry.register("sync_latency_seconds", "Sync latency", histogram.clone());
        histogram.observe(0.003);
        let registry = Arc::new(Mutex::new(registry));

        let healthy = Arc::new(AtomicBool::new(true));
        let health_flag = Arc::clone(&healthy);
        let health: HealthFn = Arc::new(move || {
            (
                health_flag.load(Ordering::SeqCst),
                serde_json::json!({"open_files": 3}),
            )
        });
        let (entered_tx, entered_rx) = oneshot::channel();
        let routes = Arc::new(TestRoutes {
            slow_entered: Mutex::new(Some(entered_tx)),
            slow_started: AtomicUsize::new(0),
            release: Notify::new(),
        });

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = HttpServer::new(registry)
            .with_health(health)
            .with_routes(Arc::clone(&routes) as Arc<dyn Routes>)
            .with_limits(max_connections, header_timeout);
        let server = tokio::spawn(server.serve(listener, async move {
            let _ = stop_rx.await;
        }));
        Fixture {
            addr,
            counter,
            healthy,
            routes,
            slow_entered: Some(entered_rx),
            stop: Some(stop_tx),
            server,
        }
    }

    impl Fixture {
        /// Triggers shutdown and waits for `serve` to return.
        async fn shutdown(mut self) {
            let _ = self.stop.take().unwrap().send(());
            timeout(DEADLINE, self.server)
                .await
                .expect("serve did not return")
                .expect("serve task panicked")
                .expect("serve failed");
        }
    }

    #[tokio::test]
    async fn metrics_expose_counter_and_histogram() {
        let fx = start(MAX_CONNECTIONS).await;
        fx.counter.inc_by(41);
        fx.counter.inc();
        let resp = request_accepting(fx.addr, "GET", "/metrics", OPENMETRICS).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some(METRICS_CONTENT_TYPE));
        assert!(
            resp.body.contains("# TYPE requests counter\n"),
            "{}",
            resp.body
        );
        assert!(resp.body.contains("\nrequests_total 42\n"), "{}", resp.body);
        assert!(
            resp.body
                .contains("sync_latency_seconds_bucket{le=\"0.0032\"} 1\n"),
            "{}",
            resp.body
        );
        assert!(
            resp.body
                .contains("sync_latency_seconds_bucket{le=\"0.0016\"} 0\n"),
            "{}",
            resp.body
        );
        assert!(resp.body.contains("sync_latency_seconds_count 1\n"));
        assert!(resp.body.ends_with("# EOF\n"));
        // Without an Accept header: the classic format, the same samples.
        let classic = request(fx.addr, "GET", "/metrics").await;
        assert_eq!(classic.header("content-type"), Some(CLASSIC_CONTENT_TYPE));
        assert!(
            classic.body.contains("# TYPE requests_total counter\n"),
            "{}",
            classic.body
        );
        assert!(classic.body.contains("\nrequests_total 42\n"));
        assert!(classic.body.contains("sync_latency_seconds_count 1\n"));
        assert!(!classic.body.contains("# EOF"));
        fx.shutdown().await;
    }

    #[tokio::test]
    async fn health_follows_the_health_fn() {
        let fx = start(MAX_CONNECTIONS).await;
        let resp = request(fx.addr, "GET", "/health").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(body, serde_json::json!({"status": "ok", "open_files": 3}));

        fx.healthy.store(false, Ordering::SeqCst);
        let resp = request(fx.addr, "GET", "/health").await;
        assert_eq!(resp.status, 503);
        let body: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"status": "unhealthy", "open_files": 3})
        );
        fx.shutdown().await;
    }

    #[tokio::test]
    async fn default_health_is_ok_and_no_routes_is_404() {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(HttpServer::new(registry).serve(listener, async move {
            let _ = stop_rx.await;
        }));
        let resp = request(addr, "GET", "/health").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, r#"{"status":"ok"}"#);
        let resp = request(addr, "GET", "/v1/echo").await;
        assert_eq!(resp.status, 404);
        // Nothing registered but the server's own counter of connections it
        // closed, every reason at 0.
        let resp = request_accepting(addr, "GET", "/metrics", OPENMETRICS).await;
        assert_eq!(resp.status, 200);
        let samples: Vec<&str> = resp.body.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples.len(), 5, "{}", resp.body);
        for reason in [
            "evicted_waiting",
            "over_limit",
            "header_timeout",
            "not_allowed",
            "tls_handshake",
        ] {
            let line = format!("conduit_http_connections_closed_total{{reason=\"{reason}\"}} 0");
            assert!(samples.contains(&line.as_str()), "{line} in {}", resp.body);
        }
        assert!(resp.body.ends_with("# EOF\n"));
        stop_tx.send(()).unwrap();
        timeout(DEADLINE, server).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_address_outside_the_allow_list_is_closed_at_accept() {
        let serve = |allow: &[&str]| {
            let registry = Arc::new(Mutex::new(Registry::default()));
            let allow = AllowList::parse(allow).unwrap();
            async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let (stop_tx, stop_rx) = oneshot::channel::<()>();
                let server = tokio::spawn(
                    HttpServer::new(registry.clone())
                        .with_front_door(allow, None)
                        .serve(listener, async move {
                            let _ = stop_rx.await;
                        }),
                );
                (addr, registry, stop_tx, server)
            }
        };
        let (addr, registry, stop_tx, server) = serve(&["10.0.0.0/8", "fd00::/8"]).await;
        // Closed before anything is read: the request may even be reset.
        let out = timeout(DEADLINE, async {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let _ = stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                .await;
            let mut out = Vec::new();
            let _ = stream.read_to_end(&mut out).await;
            out
        })
        .await
        .expect("closed at once");
        assert!(out.is_empty(), "{out:?}");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry.lock().unwrap()).unwrap();
        assert!(
            text.contains("conduit_http_connections_closed_total{reason=\"not_allowed\"} 1"),
            "{text}"
        );
        stop_tx.send(()).unwrap();
        timeout(DEADLINE, server).await.unwrap().unwrap().unwrap();

        let (addr, _, stop_tx, server) = serve(&["127.0.0.0/8"]).await;
        assert_eq!(request(addr, "GET", "/health").await.status, 200);
        stop_tx.send(()).unwrap();
        timeout(DEADLINE, server).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn custom_routes_get_decoded_path_query_and_headers() {
        let fx = start(MAX_CONNECTIONS).await;
        let raw = b"GET /v1/echo?x=a%20b+c&y HTTP/1.1\r\nHost: t\r\nUser-Agent: raw-test\r\nConnection: close\r\n\r\n";
        let resp = parse_raw(&send_raw(fx.addr, raw).await);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, "x=a b c method=GET ua=raw-test");
        assert_eq!(resp.header("x-conduit-test"), Some("yes"));
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain; charset=utf-8")
        );

        let resp = request(fx.addr, "GET", "/v1/files/dir/a%20b.zst?offset=17&len=4").await;
        assert_eq!(resp.status, 206);
        assert_eq!(resp.body, "dir/a b.zst");
        assert_eq!(resp.header("x-offset"), Some("17"));
        assert_eq!(resp.header("content-length"), Some("11"));
        assert_eq!(
            resp.header("content-type"),
            Some("application/octet-stream")
        );

        // An invalid header name from a handler is dropped, not fatal.
        let resp = request(fx.addr, "GET", "/bad-header").await;
        assert_eq!((resp.status, resp.body.as_str()), (200, "ok"));
        fx.shutdown().await;
    }

    #[tokio::test]
    async fn head_gets_headers_without_body() {
        let fx = start(MAX_CONNECTIONS).await;
        let resp = request(fx.addr, "HEAD", "/v1/echo?x=1").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-conduit-test"), Some("yes"));
        assert_eq!(resp.body, "");
        fx.shutdown().await;
    }

    #[tokio::test]
    async fn unknown_path_is_404_and_other_methods_405() {
        let fx = start(MAX_CONNECTIONS).await;
        let resp = request(fx.addr, "GET", "/nope").await;
        assert_eq!(resp.status, 404);

        let raw = b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        let resp = parse_raw(&send_raw(fx.addr, raw).await);
        assert_eq!(resp.status, 405);
        assert_eq!(resp.header("allow"), Some("GET, HEAD"));
        let resp = request(fx.addr, "DELETE", "/v1/echo").await;
        assert_eq!(resp.status, 405);
        fx.shutdown().await;
    }

    #[tokio::test]
    async fn garbage_and_panics_do_not_stop_the_server() {
        let fx = start(MAX_CONNECTIONS).await;
        let out = send_raw(fx.addr, b"\x00\x01\x02 this is not http\r\n\r\n").await;
        assert!(out.starts_with(b"HTTP/1.1 400"), "{out:?}");
        // Headers larger than the read buffer.
        let huge = format!(
            "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_BUFFER + 10)
        );
        let out = send_raw(fx.addr, huge.as_bytes()).await;
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            &out[..out.len().min(64)]
        );
        // A path that is not UTF-8 once decoded.
        let resp = request(fx.addr, "GET", "/v1/%FF").await;
        assert_eq!(resp.status, 400);
        // A panicking route.
        let resp = request(fx.addr, "GET", "/panic").await;
        assert_eq!(resp.status, 500);
        // A body far beyond the limit on a GET is not read.
        let mut big =
            b"GET /v1/echo?x=big HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n".to_vec();
        big.extend(vec![b'z'; 100_000]);
        let out = timeout(DEADLINE, async {
            let mut stream = TcpStream::connect(fx.addr).await.unwrap();
            // The server may close before everything is written.
            let _ = stream.write_all(&big).await;
            let mut out = Vec::new();
            let _ = stream.read_to_end(&mut out).await;
            out
        })
        .await
        .unwrap();
        // Either the answer arrives, or the close (a reset, as the body was left
        // unread) overtakes it; the server must not wait for the whole body.
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );

        let resp = request(fx.addr, "GET", "/v1/echo?x=still-alive").await;
        assert_eq!(resp.status, 200);
        assert!(resp.body.starts_with("x=still-alive"));
        fx.shutdown().await;
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests_on_one_connection() {
        let fx = start(MAX_CONNECTIONS).await;
        let out = send_raw(
            fx.addr,
            b"GET /v1/echo?x=1 HTTP/1.1\r\nHost: t\r\n\r\nGET /v1/echo?x=2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
        assert!(text.contains("x=1 ") && text.contains("x=2 "), "{text}");
        fx.shutdown().await;
    }

    /// Reads one response (headers and the body of `Content-Length`) from a
    /// keep-alive connection.
    async fn read_response(stream: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            got.push(byte[0]);
        }
        let head = String::from_utf8(got).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.unwrap();
        head + &String::from_utf8(body).unwrap()
    }

    #[tokio::test]
    async fn at_the_limit_a_connection_waiting_for_headers_makes_room() {
        let fx = start(2).await;
        // Two connections, each with a request in progress.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(fx.addr).await.unwrap();
            stream
                .write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            held.push(stream);
        }
        timeout(DEADLINE, async {
            while fx.routes.slow_started.load(Ordering::SeqCst) < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("both slow requests start");
        // No connection waits for headers: the third is accepted and closed
        // without an answer.
        let out = timeout(DEADLINE, async {
            let mut stream = TcpStream::connect(fx.addr).await.unwrap();
            let _ = stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                .await;
            let mut out = Vec::new();
            let _ = stream.read_to_end(&mut out).await;
            out
        })
        .await
        .unwrap();
        assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));

        // The slow requests end; both connections wait for their next request,
        // the second since later (it asks once more).
        fx.routes.release.notify_waiters();
        for stream in held.iter_mut() {
            let response = timeout(DEADLINE, read_response(stream)).await.unwrap();
            assert!(response.ends_with("slow done"), "{response}");
        }
        held[1]
            .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let response = timeout(DEADLINE, read_response(&mut held[1]))
            .await
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");

        // A newcomer takes the place of the one waiting longest.
        let out = send_raw(
            fx.addr,
            b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        let mut rest = Vec::new();
        let closed = timeout(DEADLINE, held[0].read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the connection waiting longest is closed: {closed:?} {rest:?}"
        );
        // The other keeps its place; the counter says what happened.
        held[1]
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let metrics = timeout(DEADLINE, read_response(&mut held[1]))
            .await
            .unwrap();
        for reason in ["over_limit", "evicted_waiting"] {
            let line = format!("conduit_http_connections_closed_total{{reason=\"{reason}\"}} 1\n");
            assert!(metrics.contains(&line), "{line} in {metrics}");
        }
        drop(held);
        fx.shutdown().await;
    }

    #[tokio::test]
    async fn health_answers_under_a_slowloris_and_silent_clients_time_out() {
        let header_timeout = Duration::from_secs(2);
        let fx = start_with(4, header_timeout).await;
        // Every place is taken by a client that has sent one byte of its
        // request line and nothing more.
        let mut loris = Vec::new();
        for _ in 0..4 {
            let mut stream = TcpStream::connect(fx.addr).await.unwrap();
            stream.write_all(b"G").await.unwrap();
            loris.push(stream);
        }
        for path in ["/health", "/metrics", "/v1/echo?x=1"] {
            let resp = request(fx.addr, "GET", path).await;
            assert_eq!(resp.status, 200, "{path}: {resp:?}");
        }
        // A silent connection is closed once the header timeout has passed.
        let started = std::time::Instant::now();
        let mut silent = TcpStream::connect(fx.addr).await.unwrap();
        let mut out = Vec::new();
        let closed = timeout(DEADLINE, silent.read_to_end(&mut out)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        assert!(
            started.elapsed() >= header_timeout,
            "{:?}",
            started.elapsed()
        );
        let metrics = request(fx.addr, "GET", "/metrics").await.body;
        let count = |reason: &str| -> u64 {
            let prefix = format!("conduit_http_connections_closed_total{{reason=\"{reason}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("{prefix} in {metrics}"))
                .parse()
                .unwrap()
        };
        assert!(count("evicted_waiting") >= 1, "{metrics}");
        assert!(count("header_timeout") >= 1, "{metrics}");
        drop(loris);
        fx.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_finishes_in_flight_requests_then_refuses_connections() {
        let mut fx = start(MAX_CONNECTIONS).await;
        let addr = fx.addr;
        // An idle keep-alive connection must not hold shutdown up.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        timeout(DEADLINE, idle.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();

        let slow = tokio::spawn(async move { request(addr, "GET", "/slow").await });
        timeout(DEADLINE, fx.slow_entered.take().unwrap())
            .await
            .unwrap()
            .unwrap();

        let _ = fx.stop.take().unwrap().send(());
        // The listener closes: new connections are refused (retry until the
        // accept loop has seen the shutdown).
        timeout(DEADLINE, async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("port still accepting after shutdown");
        assert!(
            !fx.server.is_finished(),
            "serve returned with a request in flight"
        );

        fx.routes.release.notify_one();
        let resp = timeout(DEADLINE, slow).await.unwrap().unwrap();
        assert_eq!((resp.status, resp.body.as_str()), (200, "slow done"));
        let started = tokio::time::Instant::now();
        timeout(DEADLINE, fx.server)
            .await
            .expect("serve did not return")
            .unwrap()
            .unwrap();
        assert!(
            started.elapsed() < SHUTDOWN_GRACE,
            "idle connection delayed shutdown"
        );
        // The idle connection was closed by the server.
        let mut rest = Vec::new();
        let _ = timeout(DEADLINE, idle.read_to_end(&mut rest))
            .await
            .expect("idle connection was not closed");
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("/a%20b%2Fc", false).unwrap(), "/a b/c");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert_eq!(percent_decode("a+b", true).unwrap(), "a b");
        assert_eq!(percent_decode("100%", false).unwrap(), "100%");
        assert_eq!(percent_decode("%zz%4", false).unwrap(), "%zz%4");
        assert_eq!(percent_decode("%C3%A9", false).unwrap(), "é");
        assert_eq!(percent_decode("%FF", false), None);
        assert_eq!(
            parse_query("a=1&&b&c=x%3Dy&a=2").unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "".into()),
                ("c".into(), "x=y".into()),
                ("a".into(), "2".into()),
            ]
        );
    }

    #[test]
    fn health_details_merge() {
        let body = |r: &HttpResponse| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap();
        let r = health_response(true, serde_json::json!({"status": "mine", "n": 1}));
        assert_eq!(r.status, 200);
        assert_eq!(body(&r), serde_json::json!({"n": 1, "status": "ok"}));
        let r = health_response(false, serde_json::json!("disk full"));
        assert_eq!(r.status, 503);
        assert_eq!(
            body(&r),
            serde_json::json!({"details": "disk full", "status": "unhealthy"})
        );
        let r = health_response(true, serde_json::Value::Null);
        assert_eq!(body(&r), serde_json::json!({"status": "ok"}));
    }

    #[test]
    fn latency_buckets_span_50us_to_10s() {
        let bounds: Vec<f64> = exponential_buckets(50e-6, 2.0, 19).collect();
        assert_eq!(bounds.first(), Some(&0.00005));
        assert_eq!(bounds[1], 0.0001);
        assert_eq!(bounds[6], 0.0032);
        assert!(bounds[17] < 10.0 && bounds[18] > 10.0);
        let _ = latency_histogram();
    }
}
