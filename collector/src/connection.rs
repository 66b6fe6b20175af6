//! Connections: Scribe/Thrift framed binary in, durable acknowledgements out.
//!
//! ```text
//! Listener ──accept──▶ Handler: read frame → decode → dispatch (submit, fb303)
//!                         │ PendingReply, in request order (bounded)
//!                         ▼
//!                      ReplyWriter: await the committer's outcome → write reply
//! ```
//!
//! The [`Listener`] accepts connections and spawns one task per connection; a
//! connection over `max_connections` is still served, once, so that it learns
//! `TRY_LATER`. Each connection's `Handler` reads requests and its
//! `ReplyWriter` answers them in request order, so pipelined calls are answered
//! correctly while later calls are already being validated and queued. A bad frame
//! closes only its own connection.
//!
//! Shutdown: the listener stops accepting; each handler stops reading; each writer
//! answers the calls already read (giving up on a client that does not read its
//! replies after `SHUTDOWN_WRITE_GRACE`); the listener returns once every
//! connection is done.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use conduit_core::scribe::{
    decode_request, read_frame, Call, LogEntry, ProtocolError, Request, ResultCode,
};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::dedup::BatchKey;
use crate::engine::Outcome;
use crate::metrics::Metrics;
use crate::reasons::{ConnectionError, ProtocolErrorKind, TryLaterReason};
use crate::server::{CallCache, OwnedReply, Shared};

/// How long a connection over `max_connections` may stay open to receive its
/// `TRY_LATER` (or one fb303 answer) before it is closed.
const OVER_LIMIT_GRACE: Duration = Duration::from_secs(5);

/// Once shutdown has begun, how long one reply may wait for a client that does not
/// read; then the connection is dropped so that shutdown can finish.
const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(5);

/// How long the listener pauses after a failed `accept` (out of file descriptors
/// and the like) before it tries again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Replies a connection may have waiting for the committer or the socket; a client
/// that pipelines more calls is not read until the oldest is answered.
const REPLIES_IN_FLIGHT: usize = 256;

/// Read buffer of a connection, and write buffer of its replies.
const SOCKET_BUFFER_BYTES: usize = 64 << 10;

/// Accepts connections and runs one task per connection until shutdown.
#[derive(Debug)]
pub struct Listener {
    /// The Thrift socket. Dropped as soon as shutdown begins, so that new clients
    /// are refused at once instead of waiting in the backlog of a collector that
    /// will not accept them.
    listener: TcpListener,
    /// What every connection needs: limits, the queue to the committer, metrics.
    shared: Arc<Shared>,
    /// One permit per served connection, `max_connections` in all. The listener
    /// does not wait for a permit: a connection over the limit is accepted anyway
    /// and answered `TRY_LATER` once, so that its client backs off instead of
    /// hanging in the backlog.
    limit_connections: Arc<Semaphore>,
    /// The connection tasks, so that shutdown waits until every connection has
    /// answered the calls it read (each answer says whether the data is durable).
    connections: JoinSet<()>,
    /// Becomes `true` when shutdown begins.
    shutdown: watch::Receiver<bool>,
}

impl Listener {
    /// A listener serving `listener` until `shared.shutting_down` is set.
    pub fn new(listener: TcpListener, shared: Arc<Shared>) -> Listener {
        Listener {
            listener,
            limit_connections: Arc::new(Semaphore::new(shared.limits.max_connections)),
            connections: JoinSet::new(),
            shutdown: shared.shutting_down.clone(),
            shared,
        }
    }

    /// Accepts connections until shutdown begins, then stops accepting and waits
    /// for every connection to finish its in-flight calls.
    pub async fn run(mut self) {
        while let Some((stream, peer)) = self.accept().await {
            self.spawn(stream, peer);
        }
        let Listener {
            listener,
            mut connections,
            ..
        } = self;
        drop(listener);
        tracing::info!(
            connections = connections.len(),
            "stopped accepting; finishing in-flight calls"
        );
        while connections.join_next().await.is_some() {}
    }

    /// The next connection, or `None` once shutdown begins. A failed accept is
    /// logged and retried after [`ACCEPT_ERROR_PAUSE`].
    async fn accept(&mut self) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = self.shutdown.wait_for(|s| *s) => return None,
            };
            // Reap finished connection tasks so the set stays small.
            while self.connections.try_join_next().is_some() {}
            match accepted {
                Ok(accepted) => return Some(accepted),
                Err(e) if conduit_core::storage::is_out_of_descriptors(&e) => {
                    self.shared
                        .metrics
                        .fd_exhausted
                        .get_or_create(&Metrics::label("op", "accept"))
                        .inc();
                    if let Some(suppressed) =
                        conduit_core::ratelimit::allow("collector_accept_out_of_descriptors")
                    {
                        tracing::warn!(error = %e, suppressed, pause = ?ACCEPT_ERROR_PAUSE, "accept failed: too many open files; new connections wait in the backlog");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }

    /// Runs the connection in its own task, holding a permit while it is open.
    fn spawn(&mut self, stream: TcpStream, peer: SocketAddr) {
        let permit = self.limit_connections.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.shared
                .count_connection_error(ConnectionError::MaxConnections);
            tracing::warn!(%peer, max_connections = self.shared.limits.max_connections, "connection over max_connections: answering TRY_LATER");
        }
        let shared = self.shared.clone();
        self.connections
            .spawn(serve_connection(stream, shared, permit));
    }
}

/// Serves one connection, counted in `open_connections`, and returns its permit
/// (`None` for a connection over `max_connections`) when it is closed.
async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
) {
    shared.metrics.open_connections.inc();
    run_connection(stream, &shared, permit.is_none()).await;
    shared.metrics.open_connections.dec();
    drop(permit);
}

/// Runs a connection's handler and reply writer until the peer closes it, it
/// misbehaves, or shutdown; returns once every call read has been answered.
async fn run_connection(stream: TcpStream, shared: &Arc<Shared>, over_limit: bool) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let cache = match CallCache::new(shared.limits.zstd_level) {
        Ok(cache) => cache,
        Err(e) => {
            tracing::error!(error = %e, "cannot create a zstd encoder; closing the connection");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let (replies, pending) = mpsc::channel(REPLIES_IN_FLIGHT);
    let writer = ReplyWriter::new(writer, pending, shared.clone(), peer.clone());
    let writer = tokio::spawn(writer.run());
    let handler = Handler {
        shared: shared.clone(),
        peer,
        reader,
        buf: BytesMut::with_capacity(SOCKET_BUFFER_BYTES),
        replies,
        cache,
        over_limit,
        shutdown: shared.shutting_down.clone(),
    };
    handler.run().await;
    // The handler's sender is gone with it: the writer answers what is left, then
    // stops.
    let _ = writer.await;
}

/// A reply the writer must send, in request order.
enum PendingReply {
    /// Known when the request was read (fb303, refusals, unknown methods).
    Now(Request, OwnedReply),
    /// The committer's answer to a queued call.
    AfterCommit(Request, oneshot::Receiver<Outcome>),
}

/// Reads one connection's requests and turns each into a [`PendingReply`].
struct Handler {
    /// Limits, the queue to the committer, metrics and totals.
    shared: Arc<Shared>,
    /// The peer's address, for logs.
    peer: String,
    /// The socket's read half.
    reader: OwnedReadHalf,
    /// Bytes read and not yet framed; each frame is split off it without a copy.
    buf: BytesMut,
    /// To the [`ReplyWriter`], in request order. Bounded by [`REPLIES_IN_FLIGHT`],
    /// so that a client pipelining without reading its replies stops being read.
    replies: mpsc::Sender<PendingReply>,
    /// Resolved categories and a zstd context, reused from call to call.
    cache: CallCache,
    /// Over `max_connections`: answer one request (`TRY_LATER` for a `Log` call)
    /// within [`OVER_LIMIT_GRACE`], then close.
    over_limit: bool,
    /// Changes when shutdown begins: stop reading (calls already read are still
    /// answered by the writer).
    shutdown: watch::Receiver<bool>,
}

impl Handler {
    /// Reads and dispatches requests until the connection ends.
    async fn run(mut self) {
        while !*self.shutdown.borrow() {
            let Some(frame) = self.read_frame().await else {
                break;
            };
            let Some(request) = self.decode(frame) else {
                break;
            };
            let reply = self.dispatch(request);
            if self.replies.send(reply).await.is_err() || self.over_limit {
                break;
            }
        }
    }

    /// The next request frame; `None` when the peer closed the connection or broke
    /// the protocol, when shutdown began, or when an over-limit connection's grace
    /// ran out.
    async fn read_frame(&mut self) -> Option<Bytes> {
        let over_limit = self.over_limit;
        let over_limit_deadline = async {
            if over_limit {
                tokio::time::sleep(OVER_LIMIT_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let max_frame = self.shared.limits.max_frame_bytes as usize;
        let frame = tokio::select! {
            r = read_frame(&mut self.reader, max_frame, &mut self.buf) => r,
            _ = self.shutdown.changed() => return None,
            _ = over_limit_deadline => return None,
        };
        match frame {
            Ok(frame) => frame,
            Err(e) => {
                let peer = &self.peer;
                if self.protocol_error(&e) == ProtocolErrorKind::FrameTooLarge {
                    tracing::warn!(peer, error = %e, max_frame_bytes = max_frame, "closing connection: frame too large");
                } else {
                    tracing::info!(peer, error = %e, "closing connection");
                }
                None
            }
        }
    }

    /// The request in `frame`; `None` (the connection closes) if it does not decode.
    fn decode(&self, frame: Bytes) -> Option<Request> {
        match decode_request(frame) {
            Ok(request) => Some(request),
            Err(e) => {
                self.protocol_error(&e);
                let peer = &self.peer;
                tracing::warn!(peer, error = %e, "closing connection: undecodable request");
                None
            }
        }
    }

    /// Counts a protocol error that closes the connection.
    fn protocol_error(&self, error: &ProtocolError) -> ProtocolErrorKind {
        let kind = ProtocolErrorKind::of(error);
        self.shared
            .count_connection_error(ConnectionError::Protocol(kind));
        kind
    }

    /// Starts the work `request` asks for: queues a call, or answers it now.
    fn dispatch(&mut self, request: Request) -> PendingReply {
        let method = match &request.call {
            Call::Log { .. } => "Log",
            Call::LogBatch { .. } => "LogBatch",
            Call::Fb303(c) => c.method_name(),
            Call::Unknown { .. } => "unknown",
        };
        self.shared
            .metrics
            .calls
            .get_or_create(&Metrics::label("method", method))
            .inc();
        let peer = &self.peer;
        match request.call.clone() {
            Call::Log { .. } | Call::LogBatch { .. } if self.over_limit => {
                tracing::debug!(peer, "over max_connections: TRY_LATER");
                self.try_later(request, TryLaterReason::MaxConnections)
            }
            Call::Log { entries } => self.submit(request, entries, None),
            Call::LogBatch {
                publisher_id,
                sequence,
                entries,
            } => match self
                .shared
                .batch_key(publisher_id, sequence, &entries, peer)
            {
                Ok(key) => self.submit(request, entries, Some(key)),
                Err(message) => PendingReply::Now(request, OwnedReply::ProtocolError(message)),
            },
            Call::Fb303(call) => {
                let reply = self.shared.fb303(&call);
                PendingReply::Now(request, reply)
            }
            Call::Unknown { name } => {
                tracing::info!(peer, method = %name, "unknown method");
                PendingReply::Now(request, OwnedReply::UnknownMethod)
            }
        }
    }

    /// Queues a `Log`/`LogBatch` call for the committer, or refuses it now.
    fn submit(
        &mut self,
        request: Request,
        entries: Vec<LogEntry>,
        batch: Option<BatchKey>,
    ) -> PendingReply {
        match self.shared.submit(entries, batch, &mut self.cache) {
            Ok(outcome) => PendingReply::AfterCommit(request, outcome),
            Err(reason) => self.try_later(request, reason),
        }
    }

    /// Answers `TRY_LATER` now, counted in Prometheus and in fb303's `try_later`.
    fn try_later(&self, request: Request, reason: TryLaterReason) -> PendingReply {
        self.shared.count_try_later(reason);
        PendingReply::Now(request, OwnedReply::Code(ResultCode::TryLater))
    }
}

/// Writes one connection's replies in request order.
struct ReplyWriter {
    /// The socket's write half, buffered: the replies of pipelined calls answered
    /// together go out in one write.
    writer: BufWriter<OwnedWriteHalf>,
    /// Replies from the [`Handler`], in request order; closed when it is done.
    pending: mpsc::Receiver<PendingReply>,
    /// Encoding buffer, reused for each reply.
    out: Vec<u8>,
    /// fb303's `try_later` total, counted here for the committer's refusals.
    shared: Arc<Shared>,
    /// Once shutdown begins, a write waits at most [`SHUTDOWN_WRITE_GRACE`].
    shutdown: watch::Receiver<bool>,
    /// The peer's address, for logs.
    peer: String,
}

impl ReplyWriter {
    fn new(
        writer: OwnedWriteHalf,
        pending: mpsc::Receiver<PendingReply>,
        shared: Arc<Shared>,
        peer: String,
    ) -> ReplyWriter {
        ReplyWriter {
            writer: BufWriter::with_capacity(SOCKET_BUFFER_BYTES, writer),
            pending,
            out: Vec::with_capacity(256),
            shutdown: shared.shutting_down.clone(),
            shared,
            peer,
        }
    }

    /// Answers every request the handler sends, then flushes. Stops early if the
    /// socket fails or, during shutdown, the client does not read.
    async fn run(mut self) {
        while let Some(pending) = self.pending.recv().await {
            let (request, reply) = self.ready(pending).await;
            if request.oneway {
                continue;
            }
            if let Err(e) = self.write(&request, &reply).await {
                self.gave_up(&e);
                return;
            }
        }
        if let Err(e) = write_unless_stuck(self.writer.flush(), &mut self.shutdown).await {
            self.gave_up(&e);
        }
    }

    /// The reply, once the committer has answered a queued call.
    async fn ready(&self, pending: PendingReply) -> (Request, OwnedReply) {
        match pending {
            PendingReply::Now(request, reply) => (request, reply),
            PendingReply::AfterCommit(request, outcome) => {
                let code = match outcome.await {
                    Ok(Outcome::Durable) => ResultCode::Ok,
                    Ok(Outcome::TryLater(_)) | Err(_) => {
                        self.shared.totals.try_later.fetch_add(1, Ordering::Relaxed);
                        ResultCode::TryLater
                    }
                };
                (request, OwnedReply::Code(code))
            }
        }
    }

    /// Writes one reply; flushes when no other reply is waiting.
    async fn write(&mut self, request: &Request, reply: &OwnedReply) -> std::io::Result<()> {
        self.out.clear();
        request.encode_reply(&reply.as_reply(), &mut self.out);
        write_unless_stuck(self.writer.write_all(&self.out), &mut self.shutdown).await?;
        if self.pending.is_empty() {
            write_unless_stuck(self.writer.flush(), &mut self.shutdown).await?;
        }
        Ok(())
    }

    fn gave_up(&self, e: &std::io::Error) {
        if e.kind() == std::io::ErrorKind::TimedOut {
            tracing::warn!(peer = self.peer, grace = ?SHUTDOWN_WRITE_GRACE, "client does not read its replies; closing the connection to finish shutdown");
        }
    }
}

/// Runs a socket write; once shutdown has begun, gives up after
/// [`SHUTDOWN_WRITE_GRACE`] (a client that never reads would otherwise block the
/// reply writer, and with it the connection and the whole shutdown, forever).
async fn write_unless_stuck<T>(
    io: impl std::future::Future<Output = std::io::Result<T>>,
    shutdown: &mut watch::Receiver<bool>,
) -> std::io::Result<T> {
    let stuck = async {
        if shutdown.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(SHUTDOWN_WRITE_GRACE).await;
    };
    tokio::select! {
        r = io => r,
        _ = stuck => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client does not read its replies",
        )),
    }
}
