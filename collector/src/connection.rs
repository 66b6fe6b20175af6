//! Connections: Scribe/Thrift binary in, framed or unframed, durable
//! acknowledgements out.
//!
//! ```text
//! Listener ──accept──▶ Admission (limits, eviction)
//!              │
//!              ▼
//!           Handler: wait for a frame (timeouts) → read it under the memory
//!                    budget → decode → dispatch (submit, fb303)
//!              │ PendingReply, in request order (bounded)
//!              ▼
//!           ReplyWriter: await the committer's outcome → write reply
//! ```
//!
//! The [`Listener`] accepts connections and spawns one task per connection. Which
//! connections are served is [`crate::admission`]'s: at `max_connections` (or
//! `max_connections_per_ip`) the longest idle connection makes room; if none is
//! idle, the newcomer is still served, once, so that it learns `TRY_LATER`. Each
//! connection's `Handler` reads requests and its `ReplyWriter` answers them in
//! request order, so pipelined calls are answered correctly while later calls are
//! already being validated and queued. A bad frame closes only its own connection.
//!
//! # Transports
//! The first four bytes decide a connection's transport for its life
//! ([`Transport::detect`]): framed (`TFramedTransport`, conduit's publisher), or
//! unframed (`TBufferedTransport`, Thrift's generated clients and old Scribe
//! clients), whose messages are found by walking their structure as they arrive
//! ([`read_message_within`]) and whose replies go out unframed. Either way a
//! message is a "frame" below, under the same limits. Bytes that are neither
//! (HTTP, TLS, text) close the connection with one line naming the peer and what
//! was expected (`connection_errors_total{reason="not_thrift"}`).
//!
//! # Limits
//! - Time: a new connection must complete its first frame within
//!   `first_call_timeout_ms`; a frame begun must complete within
//!   `frame_timeout_ms`; a connection with no call in progress that sends nothing
//!   for `idle_timeout_secs` is closed. Each close is counted in
//!   `conduit_collector_connections_closed_total{reason}`.
//! - Memory: a frame holds the [`MemoryBudget`](crate::queues::MemoryBudget) as
//!   its bytes arrive (frames of at most [`SMALL_FRAME_BYTES`], such as fb303
//!   calls, are always read). A frame the budget cannot hold is read to its end
//!   and dropped as it arrives, and answered from its header: `TRY_LATER` (reason
//!   `memory`) for a `Log`/`LogBatch` call. A call then holds the budget until it
//!   is answered: its decoded entries, its encoded parts, its place in the queue.
//! - Logs: client bytes (method names) are shown escaped and capped
//!   ([`conduit_core::text`]); protocol errors, refusals and timeouts are logged
//!   at most once per 10 s per kind ([`conduit_core::ratelimit`]).
//!
//! # Who may connect
//! The listener's [`FrontDoor`]: a peer outside `allow_networks` is closed at
//! accept, before admission and before any byte is read (counted as
//! `connection_errors{reason="not_allowed"}`, logged naming the peer and the
//! list). On a TLS port the connection is admitted first (so it counts against
//! `max_connections` and `max_connections_per_ip`, and can be evicted while it
//! handshakes), then its handshake must complete within the first call's deadline
//! (`first_call_timeout_ms` from accept); a failed or late handshake is counted
//! as `reason="tls_handshake"` and logged with the peer and rustls's error. The
//! plain and the TLS connection run the same [`Handler`] and [`ReplyWriter`],
//! monomorphized over their halves, so the plain path is what it was.
//!
//! Shutdown: the listener stops accepting; each handler stops reading; each writer
//! answers the calls already read (giving up on a client that does not read its
//! replies after `SHUTDOWN_WRITE_GRACE`); the listener returns once every
//! connection is done.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use conduit_core::allow::AllowList;
use conduit_core::scribe::{
    decode_header, decode_request, encode_reply, read_first_word, read_frame_within,
    read_message_within, Call, Frame, LogEntry, MessageHeader, ProtocolError, Request, ResultCode,
    Transport,
};
use conduit_core::text::shown;
use conduit_core::tls::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::admission::{Activity, Admission, Admitted, Courtesy, Slot};
use crate::dedup::BatchKey;
use crate::engine::Outcome;
use crate::metrics::Metrics;
use crate::queues::Held;
use crate::reasons::{CloseReason, ConnectionError, ProtocolErrorKind, TryLaterReason};
use crate::server::{CallCache, OwnedReply, Shared};

/// How long a connection refused for a connection limit may stay open to receive
/// its `TRY_LATER` (or one fb303 answer) before it is closed.
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

/// Write buffer of a connection's replies.
const SOCKET_BUFFER_BYTES: usize = 64 << 10;

/// Most bytes read while waiting for a frame to begin (before the memory budget
/// is asked about the frame).
const FIRST_READ_BYTES: usize = 16 << 10;

/// Frames of at most this many bytes are read whatever the memory budget (fb303
/// calls are tiny and always answered; a small `Log` call still needs the budget
/// for its encoded parts).
pub const SMALL_FRAME_BYTES: u64 = 4 << 10;

/// Who may connect: the client networks allowed and, for a TLS port, the
/// acceptor (its certificate and, if asked for, the client CA).
#[derive(Clone, Default)]
pub struct FrontDoor {
    /// `allow_networks`: peers outside it are closed at accept.
    pub allow: AllowList,
    /// TLS on this port; `None`: plain Scribe.
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for FrontDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDoor")
            .field("allow", &self.allow)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Accepts connections and runs one task per connection until shutdown.
#[derive(Debug)]
pub struct Listener {
    /// The Thrift socket. Dropped as soon as shutdown begins, so that new clients
    /// are refused at once instead of waiting in the backlog of a collector that
    /// will not accept them.
    listener: TcpListener,
    /// What every connection needs: limits, the queue to the committer, metrics.
    shared: Arc<Shared>,
    /// Which connections are served, and who makes room at a limit.
    admission: Arc<Admission>,
    /// Which peers may connect, and whether they speak TLS.
    door: FrontDoor,
    /// The connection tasks, so that shutdown waits until every connection has
    /// answered the calls it read (each answer says whether the data is durable).
    connections: JoinSet<()>,
    /// Becomes `true` when shutdown begins.
    shutdown: watch::Receiver<bool>,
}

impl Listener {
    /// A listener serving `listener` to the peers `door` lets in until
    /// `shared.shutting_down` is set.
    pub fn new(listener: TcpListener, shared: Arc<Shared>, door: FrontDoor) -> Listener {
        Listener {
            listener,
            door,
            admission: Admission::new(
                shared.limits.max_connections,
                shared.limits.max_connections_per_ip,
            ),
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
            shared,
            ..
        } = self;
        drop(listener);
        tracing::info!(
            connections = connections.len(),
            "stopped accepting; finishing in-flight calls"
        );
        shared.progress.set(format!(
            "finishing the calls of {} connections",
            connections.len()
        ));
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
                    if let Some(suppressed) = conduit_core::ratelimit::allow("accept_failed") {
                        tracing::warn!(error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }

    /// Runs the connection in its own task if it is admitted (or refused with a
    /// courtesy answer).
    fn spawn(&mut self, stream: TcpStream, peer: SocketAddr) {
        let limits = &self.shared.limits;
        if !self.door.allow.allows(peer.ip()) {
            self.shared
                .count_connection_error(ConnectionError::NotAllowed);
            if let Some(suppressed) = conduit_core::ratelimit::allow("collector_not_allowed") {
                tracing::warn!(%peer, allow_networks = %self.door.allow, suppressed, "connection from an address outside allow_networks: closed");
            }
            return;
        }
        let mode = match self.admission.admit(peer) {
            Admitted::Served { slot, evicted } => {
                if let Some((victim, idle)) = evicted {
                    self.shared.count_closed(CloseReason::EvictedIdle);
                    if let Some(suppressed) = conduit_core::ratelimit::allow("evicted_idle") {
                        tracing::info!(%peer, evicted = %victim, idle_secs = idle.as_secs(), max_connections = limits.max_connections, max_connections_per_ip = limits.max_connections_per_ip, suppressed, "connection limit reached: closed the connection idle the longest to make room");
                    }
                }
                Mode::Served(slot)
            }
            Admitted::Refused { reason, courtesy } => {
                self.shared.count_connection_error(reason);
                if let Some(suppressed) = conduit_core::ratelimit::allow(reason.as_str()) {
                    tracing::warn!(%peer, limit = reason.as_str(), max_connections = limits.max_connections, max_connections_per_ip = limits.max_connections_per_ip, open = self.admission.open(), suppressed, "connection over its limit and none idle: answering TRY_LATER once");
                }
                match courtesy {
                    Some(place) => Mode::Refused {
                        _place: place,
                        reason: reason.try_later(),
                    },
                    None => return,
                }
            }
        };
        let shared = self.shared.clone();
        let tls = self.door.tls.clone();
        self.connections
            .spawn(serve_connection(stream, peer, shared, mode, tls));
    }
}

/// How a connection is served.
enum Mode {
    /// Fully, while the slot is held.
    Served(Slot),
    /// Once (with this `TRY_LATER` reason for a call), within
    /// [`OVER_LIMIT_GRACE`], then closed; its place among the refused
    /// connections is given up with it.
    Refused {
        _place: Courtesy,
        reason: TryLaterReason,
    },
}

/// Serves one connection (after its TLS handshake, with `tls`), counted in
/// `open_connections`, until it is closed.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mode: Mode,
    tls: Option<TlsAcceptor>,
) {
    let accepted = Instant::now();
    shared.metrics.open_connections.inc();
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            let (reader, writer) = stream.into_split();
            run_connection(reader, writer, peer, &shared, &mode, accepted).await;
        }
        Some(acceptor) => {
            if let Some(stream) = handshake(acceptor, stream, peer, &shared, &mode, accepted).await
            {
                let (reader, writer) = tokio::io::split(stream);
                run_connection(reader, writer, peer, &shared, &mode, accepted).await;
            }
        }
    }
    shared.metrics.open_connections.dec();
    drop(mode);
}

/// The TLS handshake of a connection accepted at `accepted`: bounded by its
/// first call's deadline, and given up on eviction or shutdown. `None` (counted
/// and logged) when it fails or is late.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    mode: &Mode,
    accepted: Instant,
) -> Option<conduit_core::tls::ServerStream<TcpStream>> {
    let (limit, evicted) = match mode {
        Mode::Served(slot) => (
            Duration::from_millis(shared.limits.first_call_timeout_ms),
            Some(slot.activity.clone()),
        ),
        Mode::Refused { .. } => (OVER_LIMIT_GRACE, None),
    };
    let evicted = async {
        match &evicted {
            Some(activity) => activity.evicted().await,
            None => std::future::pending().await,
        }
    };
    let mut shutdown = shared.shutting_down.clone();
    let error = tokio::select! {
        done = acceptor.accept(stream) => match done {
            Ok(stream) => return Some(stream),
            Err(e) => e.to_string(),
        },
        _ = sleep_until(accepted + limit) => format!(
            "no complete handshake within first_call_timeout_ms ({} ms)",
            limit.as_millis()
        ),
        _ = evicted => return None,
        _ = shutdown.wait_for(|s| *s) => return None,
    };
    shared.count_connection_error(ConnectionError::TlsHandshake);
    if let Some(suppressed) = conduit_core::ratelimit::allow("collector_tls_handshake") {
        tracing::warn!(%peer, %error, suppressed, "tls handshake failed: closed");
    }
    None
}

/// A connection's read half: plain TCP, or TLS.
trait ReadHalf: AsyncRead + Unpin + Send + 'static {
    /// Waits until bytes arrive and reads at most `limit` of them into `buf`
    /// (`Ok(0)`: the peer closed). Room is reserved only once bytes are there
    /// to read (where the transport can tell), so an idle connection holds no
    /// buffer.
    fn read_some(
        &mut self,
        buf: &mut BytesMut,
        limit: usize,
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send;
}

/// Reserves room for a read of up to `limit` bytes if `buf` has (almost) none.
fn make_room(buf: &mut BytesMut, limit: usize) {
    if buf.capacity() - buf.len() < 4 {
        buf.reserve(limit);
    }
}

impl ReadHalf for OwnedReadHalf {
    async fn read_some(&mut self, buf: &mut BytesMut, limit: usize) -> std::io::Result<usize> {
        loop {
            self.readable().await?;
            make_room(buf, limit);
            match self.try_read_buf(&mut buf.limit(limit)) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                read => return read,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ReadHalf for tokio::io::ReadHalf<S> {
    async fn read_some(&mut self, buf: &mut BytesMut, limit: usize) -> std::io::Result<usize> {
        // rustls holds its own buffers; reading needs room of ours first.
        make_room(buf, limit);
        self.read_buf(&mut buf.limit(limit)).await
    }
}

/// Runs a connection's handler and reply writer until the peer closes it, it
/// misbehaves, a limit closes it, or shutdown; returns once every call read has
/// been answered.
async fn run_connection<R: ReadHalf, W: AsyncWrite + Unpin + Send + Sync + 'static>(
    reader: R,
    writer: W,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    mode: &Mode,
    accepted: Instant,
) {
    let peer = peer.to_string();
    let cache = match CallCache::new(shared.limits.zstd_level) {
        Ok(cache) => cache,
        Err(e) => {
            tracing::error!(error = %e, "cannot create a zstd encoder; closing the connection");
            return;
        }
    };
    let (activity, refused) = match mode {
        Mode::Served(slot) => (Some(slot.activity.clone()), None),
        Mode::Refused { reason, .. } => (None, Some(*reason)),
    };
    let (replies, pending) = mpsc::channel(REPLIES_IN_FLIGHT);
    let writer = ReplyWriter::new(
        writer,
        pending,
        shared.clone(),
        peer.clone(),
        activity.clone(),
    );
    let writer = tokio::spawn(writer.run());
    let handler = Handler {
        shared: shared.clone(),
        peer,
        reader,
        buf: BytesMut::new(),
        replies,
        cache,
        refused,
        activity,
        accepted,
        first: true,
        transport: None,
        shutdown: shared.shutting_down.clone(),
    };
    handler.run().await;
    // The handler's sender is gone with it: the writer answers what is left, then
    // stops.
    let _ = writer.await;
}

/// Where a reply goes: what of the request the reply needs (the request itself,
/// whose entries are views of the frame, is dropped once dispatched).
#[derive(Debug)]
struct ReplyTo {
    /// The method name (at most `MAX_METHOD_NAME_BYTES`).
    name: String,
    /// The client's sequence id.
    seqid: i32,
    /// Whether the request used the strict header.
    strict: bool,
    /// Whether the request was ONEWAY: no reply is written.
    oneway: bool,
    /// The connection's transport: the reply is framed, or not.
    transport: Transport,
}

impl ReplyTo {
    fn of(header: MessageHeader, oneway: bool, transport: Transport) -> ReplyTo {
        ReplyTo {
            name: header.name,
            seqid: header.seqid,
            strict: header.strict,
            oneway,
            transport,
        }
    }
}

/// A reply the writer must send, in request order.
enum PendingReply {
    /// Known when the request was read (fb303, refusals, unknown methods).
    Now(ReplyTo, OwnedReply),
    /// The committer's answer to a queued call.
    AfterCommit(ReplyTo, oneshot::Receiver<Outcome>),
}

/// Reads one connection's requests and turns each into a [`PendingReply`].
struct Handler<R> {
    /// Limits, the queue to the committer, metrics and totals.
    shared: Arc<Shared>,
    /// The peer's address, for logs.
    peer: String,
    /// The socket's read half (plain or TLS).
    reader: R,
    /// Bytes read and not yet framed; each frame is split off it without a copy.
    buf: BytesMut,
    /// To the [`ReplyWriter`], in request order. Bounded by [`REPLIES_IN_FLIGHT`],
    /// so that a client pipelining without reading its replies stops being read.
    replies: mpsc::Sender<PendingReply>,
    /// Resolved categories and a zstd context, reused from call to call.
    cache: CallCache,
    /// Refused for a connection limit: answer one request (`TRY_LATER` with this
    /// reason for a call) within [`OVER_LIMIT_GRACE`], then close.
    refused: Option<TryLaterReason>,
    /// What eviction reads (calls in progress, last activity), for a served
    /// connection.
    activity: Option<Arc<Activity>>,
    /// When the connection was accepted (its first frame's deadline).
    accepted: Instant,
    /// No frame read yet.
    first: bool,
    /// Decided on the connection's first four bytes.
    transport: Option<Transport>,
    /// Changes when shutdown begins: stop reading (calls already read are still
    /// answered by the writer).
    shutdown: watch::Receiver<bool>,
}

/// A frame read, and the memory budget it holds.
type Read = (Frame, Held);

impl<R: ReadHalf> Handler<R> {
    /// Reads and dispatches requests until the connection ends.
    async fn run(mut self) {
        while !*self.shutdown.borrow() {
            let Some((frame, held)) = self.next_frame().await else {
                break;
            };
            let Some(reply) = self.answer(frame, held) else {
                break;
            };
            if self.replies.send(reply).await.is_err() || self.refused.is_some() {
                break;
            }
        }
    }

    /// When the first frame must be complete.
    fn first_frame_deadline(&self) -> Instant {
        let limit = match self.refused {
            Some(_) => OVER_LIMIT_GRACE,
            None => Duration::from_millis(self.shared.limits.first_call_timeout_ms),
        };
        self.accepted + limit
    }

    /// The next frame; `None` when the peer closed the connection or broke the
    /// protocol, when a limit closed it, or when shutdown began.
    async fn next_frame(&mut self) -> Option<Read> {
        if self.buf.is_empty() && !self.wait_for_bytes().await {
            return None;
        }
        if let Some(activity) = &self.activity {
            activity.call_started();
        }
        let limits = &self.shared.limits;
        let frame_deadline = Instant::now() + Duration::from_millis(limits.frame_timeout_ms);
        let (deadline, late) = if self.first && self.first_frame_deadline() < frame_deadline {
            (self.first_frame_deadline(), CloseReason::FirstCallTimeout)
        } else {
            (frame_deadline, CloseReason::FrameTimeout)
        };
        let max_frame = limits.max_frame_bytes as usize;
        let mut held = self.shared.memory.arriving();
        let admit = |n: usize| {
            let n = n as u64;
            if n <= SMALL_FRAME_BYTES {
                held.force_to(n);
                true
            } else {
                held.grow_to(n)
            }
        };
        let (reader, buf, known) = (&mut self.reader, &mut self.buf, self.transport);
        let read = async move {
            let transport = match known {
                Some(transport) => transport,
                None => match read_first_word(reader, buf).await? {
                    Some(first) => Transport::detect(first, max_frame)?,
                    None => return Ok(None),
                },
            };
            let frame = match transport {
                Transport::Framed => read_frame_within(reader, max_frame, buf, admit).await?,
                Transport::Unframed => read_message_within(reader, max_frame, buf, admit).await?,
            };
            Ok(frame.map(|frame| (frame, transport)))
        };
        let mut shutdown = self.shutdown.clone();
        let frame: Result<Option<(Frame, Transport)>, ProtocolError> = tokio::select! {
            r = read => r,
            _ = sleep_until(deadline) => {
                self.closed_late(late);
                return None;
            }
            _ = shutdown.wait_for(|s| *s) => return None,
        };
        match frame {
            Ok(Some((frame, transport))) => {
                if self.first {
                    self.shared
                        .metrics
                        .connections
                        .get_or_create(&Metrics::label("transport", transport.as_str()))
                        .inc();
                }
                self.first = false;
                self.transport = Some(transport);
                Some((frame, held))
            }
            Ok(None) => None,
            Err(e) => {
                let peer = &self.peer;
                let kind = self.protocol_error(&e);
                if let Some(suppressed) = conduit_core::ratelimit::allow(kind.as_str()) {
                    if kind == ProtocolErrorKind::NotThrift {
                        tracing::warn!(peer, error = %e, suppressed, "closing connection: not a Scribe client");
                    } else if kind == ProtocolErrorKind::FrameTooLarge {
                        tracing::warn!(peer, error = %e, max_frame_bytes = max_frame, suppressed, "closing connection: frame too large");
                    } else {
                        tracing::info!(peer, error = %e, suppressed, "closing connection");
                    }
                }
                None
            }
        }
    }

    /// Waits until bytes of a frame arrive (and reads them into `buf`): `false`
    /// when the peer closed the connection, a timeout closed it, it was evicted or
    /// shutdown began.
    async fn wait_for_bytes(&mut self) -> bool {
        let idle_timeout = Duration::from_secs(self.shared.limits.idle_timeout_secs);
        let activity = self.activity.clone();
        let evicted = async {
            match &activity {
                Some(activity) => activity.evicted().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(evicted);
        let mut shutdown = self.shutdown.clone();
        loop {
            let deadline = if self.first {
                self.first_frame_deadline()
            } else {
                let idle = activity
                    .as_ref()
                    .and_then(|a| a.idle_for(std::time::Instant::now()))
                    .unwrap_or_default();
                Instant::now() + idle_timeout.saturating_sub(idle)
            };
            tokio::select! {
                read = self.reader.read_some(&mut self.buf, FIRST_READ_BYTES) => {
                    match read {
                        Ok(0) => return false,
                        Ok(_) => return true,
                        Err(e) => {
                            self.io_error(&e);
                            return false;
                        }
                    }
                }
                _ = sleep_until(deadline) => {
                    if self.first {
                        self.closed_late(CloseReason::FirstCallTimeout);
                        return false;
                    }
                    let idle = activity.as_ref().and_then(|a| a.idle_for(std::time::Instant::now()));
                    if idle.is_some_and(|idle| idle >= idle_timeout) {
                        self.closed_late(CloseReason::IdleTimeout);
                        return false;
                    }
                }
                _ = &mut evicted => return false,
                _ = shutdown.wait_for(|s| *s) => return false,
            }
        }
    }

    /// Counts and logs a connection closed for a time limit.
    fn closed_late(&self, reason: CloseReason) {
        let peer = &self.peer;
        let limits = &self.shared.limits;
        if self.refused.is_some() {
            return;
        }
        self.shared.count_closed(reason);
        if let Some(suppressed) = conduit_core::ratelimit::allow(reason.as_str()) {
            match reason {
                CloseReason::FirstCallTimeout => tracing::info!(
                    peer,
                    first_call_timeout_ms = limits.first_call_timeout_ms,
                    suppressed,
                    "closing connection: no complete first call within first_call_timeout_ms"
                ),
                CloseReason::IdleTimeout => tracing::info!(
                    peer,
                    idle_timeout_secs = limits.idle_timeout_secs,
                    suppressed,
                    "closing connection: idle for idle_timeout_secs"
                ),
                CloseReason::FrameTimeout => tracing::warn!(
                    peer,
                    frame_timeout_ms = limits.frame_timeout_ms,
                    buffered_bytes = self.buf.len(),
                    suppressed,
                    "closing connection: frame not complete within frame_timeout_ms"
                ),
                CloseReason::EvictedIdle => {}
            }
        }
    }

    /// Counts a failed read (the connection closes).
    fn io_error(&self, e: &std::io::Error) {
        let kind = ProtocolErrorKind::Io;
        self.shared
            .count_connection_error(ConnectionError::Protocol(kind));
        if let Some(suppressed) = conduit_core::ratelimit::allow(kind.as_str()) {
            tracing::info!(peer = self.peer, error = %e, suppressed, "closing connection");
        }
    }

    /// What a frame read comes to; `None` (the connection closes) if it does not
    /// decode.
    fn answer(&mut self, frame: Frame, mut held: Held) -> Option<PendingReply> {
        match frame {
            Frame::Whole(payload) => {
                // An unframed message may have been admitted a read ahead of its end.
                held.shrink_to(payload.len() as u64);
                held.arrived();
                match decode_request(payload) {
                    Ok(request) => Some(self.dispatch(request, held)),
                    Err(e) => self.undecodable(&e),
                }
            }
            Frame::Refused { head, len } => {
                drop(held);
                let header = decode_header(&head);
                match header.and_then(|h| h.oneway().map(|oneway| (h, oneway))) {
                    Ok((header, oneway)) => {
                        let to = ReplyTo::of(header, oneway, self.transport());
                        Some(self.refuse(to, len))
                    }
                    Err(e) => self.undecodable(&e),
                }
            }
        }
    }

    /// The connection's transport (known once a frame was read).
    fn transport(&self) -> Transport {
        self.transport.unwrap_or(Transport::Framed)
    }

    /// Counts and logs a request that does not decode; `None`: the connection
    /// closes.
    fn undecodable(&self, e: &ProtocolError) -> Option<PendingReply> {
        let kind = self.protocol_error(e);
        if let Some(suppressed) = conduit_core::ratelimit::allow(kind.as_str()) {
            let peer = &self.peer;
            tracing::warn!(peer, error = %e, suppressed, "closing connection: undecodable request");
        }
        None
    }

    /// Counts a protocol error that closes the connection.
    fn protocol_error(&self, error: &ProtocolError) -> ProtocolErrorKind {
        let kind = ProtocolErrorKind::of(error);
        self.shared
            .count_connection_error(ConnectionError::Protocol(kind));
        kind
    }

    /// Counts a call by method.
    fn count_call(&self, method: &str) {
        self.shared
            .metrics
            .calls
            .get_or_create(&Metrics::label("method", method))
            .inc();
    }

    /// Starts the work `request` asks for: queues a call, or answers it now.
    fn dispatch(&mut self, request: Request, held: Held) -> PendingReply {
        let Request {
            seqid,
            name,
            strict,
            oneway,
            call,
        } = request;
        let to = ReplyTo {
            name,
            seqid,
            strict,
            oneway,
            transport: self.transport(),
        };
        let method = match &call {
            Call::Log { .. } => "Log",
            Call::LogBatch { .. } => "LogBatch",
            Call::Fb303(c) => c.method_name(),
            Call::Unknown { .. } => "unknown",
        };
        self.count_call(method);
        match call {
            Call::Log { .. } | Call::LogBatch { .. } if self.refused.is_some() => {
                let reason = self.refused.unwrap_or(TryLaterReason::MaxConnections);
                self.try_later(to, reason)
            }
            Call::Log { entries } => self.submit(to, entries, None, held),
            Call::LogBatch {
                publisher_id,
                sequence,
                entries,
            } => {
                // A copy: the id outlives the call (in the dedup table), the frame
                // must not.
                let id = Bytes::copy_from_slice(&publisher_id);
                match self.shared.batch_key(id, sequence, &entries, &self.peer) {
                    Ok(key) => self.submit(to, entries, Some(key), held),
                    Err(message) => PendingReply::Now(to, OwnedReply::ProtocolError(message)),
                }
            }
            Call::Fb303(call) => {
                let reply = self.shared.fb303(&call);
                PendingReply::Now(to, reply)
            }
            Call::Unknown { name } => {
                if let Some(suppressed) = conduit_core::ratelimit::allow("unknown_method") {
                    tracing::info!(peer = self.peer, method = %shown(&name), suppressed, "unknown method");
                }
                PendingReply::Now(to, OwnedReply::UnknownMethod)
            }
        }
    }

    /// Answers a frame the memory budget could not hold, from its header.
    fn refuse(&mut self, to: ReplyTo, len: usize) -> PendingReply {
        let method = match to.name.as_str() {
            "Log" | "LogBatch" => to.name.clone(),
            _ => "unknown".to_owned(),
        };
        self.count_call(&method);
        self.log_memory_refusal(len as u64);
        if method == "unknown" {
            self.shared.count_try_later(TryLaterReason::Memory);
            let message = format!(
                "request of {len} bytes refused: the collector's memory budget (max_inflight_bytes) is full; retry later"
            );
            return PendingReply::Now(to, OwnedReply::ProtocolError(message));
        }
        self.try_later(to, TryLaterReason::Memory)
    }

    /// Queues a `Log`/`LogBatch` call for the committer, or refuses it now.
    fn submit(
        &mut self,
        to: ReplyTo,
        entries: Vec<LogEntry>,
        batch: Option<BatchKey>,
        mut held: Held,
    ) -> PendingReply {
        // The decoded entries are held too while the call is routed.
        let decoded = (entries.len() * std::mem::size_of::<LogEntry>()) as u64;
        let call_bytes = held.bytes() + decoded;
        if !held.add(decoded) {
            self.log_memory_refusal(call_bytes);
            return self.try_later(to, TryLaterReason::Memory);
        }
        match self.shared.submit(entries, batch, &mut self.cache, held) {
            Ok(outcome) => PendingReply::AfterCommit(to, outcome),
            Err(reason) => {
                if reason == TryLaterReason::Memory {
                    self.log_memory_refusal(call_bytes);
                }
                self.try_later(to, reason)
            }
        }
    }

    /// Logs (rate-limited) a call refused for memory, with the budget's numbers.
    fn log_memory_refusal(&self, bytes: u64) {
        if let Some(suppressed) = conduit_core::ratelimit::allow("memory") {
            let budget = &self.shared.memory;
            tracing::warn!(
                peer = self.peer,
                call_bytes = bytes,
                inflight_bytes = budget.held(),
                max_inflight_bytes = budget.limit(),
                suppressed,
                "memory budget full: TRY_LATER"
            );
        }
    }

    /// Answers `TRY_LATER` now, counted in Prometheus and in fb303's `try_later`.
    fn try_later(&self, to: ReplyTo, reason: TryLaterReason) -> PendingReply {
        self.shared.count_try_later(reason);
        PendingReply::Now(to, OwnedReply::Code(ResultCode::TryLater))
    }
}

/// Writes one connection's replies in request order.
struct ReplyWriter<W> {
    /// The socket's write half (plain or TLS), buffered: the replies of pipelined
    /// calls answered together go out in one write.
    writer: BufWriter<W>,
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
    /// Told of each call answered (a served connection).
    activity: Option<Arc<Activity>>,
}

impl<W: AsyncWrite + Unpin + Send + Sync> ReplyWriter<W> {
    fn new(
        writer: W,
        pending: mpsc::Receiver<PendingReply>,
        shared: Arc<Shared>,
        peer: String,
        activity: Option<Arc<Activity>>,
    ) -> ReplyWriter<W> {
        ReplyWriter {
            writer: BufWriter::with_capacity(SOCKET_BUFFER_BYTES, writer),
            pending,
            out: Vec::with_capacity(256),
            shutdown: shared.shutting_down.clone(),
            shared,
            peer,
            activity,
        }
    }

    /// Answers every request the handler sends, then flushes. Stops early if the
    /// socket fails or, during shutdown, the client does not read.
    async fn run(mut self) {
        while let Some(pending) = self.pending.recv().await {
            let (to, reply) = self.ready(pending).await;
            let written = if to.oneway {
                Ok(())
            } else {
                self.write(&to, &reply).await
            };
            if let Some(activity) = &self.activity {
                activity.call_answered();
            }
            if let Err(e) = written {
                self.gave_up(&e);
                return;
            }
        }
        // Flushes, then closes the write side (for TLS, with close_notify, so the
        // client sees a clean end rather than a truncation).
        if let Err(e) = write_unless_stuck(self.writer.shutdown(), &mut self.shutdown).await {
            self.gave_up(&e);
        }
    }

    /// The reply, once the committer has answered a queued call.
    async fn ready(&self, pending: PendingReply) -> (ReplyTo, OwnedReply) {
        match pending {
            PendingReply::Now(to, reply) => (to, reply),
            PendingReply::AfterCommit(to, outcome) => {
                let code = match outcome.await {
                    Ok(Outcome::Durable) => ResultCode::Ok,
                    Ok(Outcome::TryLater(_)) | Err(_) => {
                        self.shared.totals.try_later.fetch_add(1, Ordering::Relaxed);
                        ResultCode::TryLater
                    }
                };
                (to, OwnedReply::Code(code))
            }
        }
    }

    /// Writes one reply; flushes when no other reply is waiting.
    async fn write(&mut self, to: &ReplyTo, reply: &OwnedReply) -> std::io::Result<()> {
        self.out.clear();
        encode_reply(
            &to.name,
            to.seqid,
            to.strict,
            &reply.as_reply(),
            &mut self.out,
        );
        // `encode_reply` frames the reply; an unframed client gets the message alone.
        let reply = match to.transport {
            Transport::Framed => &self.out[..],
            Transport::Unframed => &self.out[4..],
        };
        write_unless_stuck(self.writer.write_all(reply), &mut self.shutdown).await?;
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
