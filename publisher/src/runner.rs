//! The background task: batching, sending, retries, reconnects, failover and the
//! disk spool.
//!
//! State: `pending` holds sealed batches not yet finished, in send order. Each is
//! idle (to be sent), in flight on one of the current connections, or acknowledged
//! (waiting for the batches before it: batches are finished strictly in order, so
//! counters, flushes and the spool see acknowledgements in order even when
//! several connections answer out of order). Each connection keeps the ids of the
//! batches it sent in order, so a reply answers its first one (after `discard`
//! replies to calls that are re-sent anyway). Replies of all connections come
//! through one channel tagged with the connection set's generation, so a reply of
//! a dropped connection is ignored.
//!
//! With a spool ([`crate::spool`]), a sealed batch takes one of two routes:
//! - **memory**: straight into `pending` — while the spool is empty, nothing waits
//!   in `held` and the publisher is not spooling;
//! - **spool**: into `held`, then appended to the spool (fsynced) as soon as it
//!   fits. The first spool records are loaded into `pending` (up to
//!   `max_in_flight` batches) and sent from there; an acknowledged one is removed
//!   from the spool.
//!
//! So `pending` is homogeneous: either every batch in it is in memory only, or
//! every batch in it is the spool's next record, in spool order (acknowledgements
//! then pop the spool's front). The publisher starts *spooling* once no collector
//! has acknowledged anything for `spool_after` since a failure (connection lost or
//! refused, `TRY_LATER`): the memory batches in `pending` move to the spool first,
//! in order. It stops spooling at the next acknowledgement; batches keep going
//! through the spool until it is empty, so events are sent in the order they were
//! accepted.
//!
//! A batch a collector refuses with an exception (a `TApplicationException` other
//! than the `UNKNOWN_METHOD` of a plain Scribe server, e.g. PROTOCOL_ERROR for a
//! sequence out of range) is finished as *refused*: its events are failed (logged
//! as an error, counted in `failed`, `publish_acked` gets
//! [`PublishError::Refused`]) and it is not retried, since resending the same call
//! cannot succeed.
//!
//! Flushes and close wait until the events received before them are acknowledged
//! (or refused) and the spool is empty or, while the publisher is spooling, until
//! they are acknowledged or spooled. Both happen in the order events were received, so two
//! counts (`acked`, `settled`) suffice.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use conduit_core::records::{AuditRecord, Version};
use conduit_core::scribe::{
    decode_reply, encode_log_batch_call, encode_log_call, read_frame, ReplyValue, ResultCode,
    EXCEPTION_UNKNOWN_METHOD,
};
use conduit_core::{Minute, Topic};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::connect::{self, ConnectCause, ConnectError};
use crate::spool::{encode_record, Spool};
use crate::{Counters, Msg, PublishError, Settings};

/// Largest reply frame accepted (replies are tiny).
const MAX_REPLY_FRAME: usize = 1 << 20;
/// Most queued messages handled in one go before timers and replies are looked at.
const MAX_BURST: usize = 4096;

type Waiter = oneshot::Sender<Result<(), PublishError>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    InFlight,
    Acked,
}

#[derive(Debug)]
struct Batch {
    /// Position in send order (never reused).
    id: u64,
    state: State,
    /// The publisher id sent with it (this publisher's, or a previous run's when
    /// replayed from the spool).
    publisher: Bytes,
    seq: i64,
    entries: Vec<(Bytes, Bytes)>,
    /// Enqueue minute of each entry (epoch minutes), parallel to `entries`.
    minutes: Vec<i64>,
    /// How many of the entries are this publisher's own audit records.
    audit: u64,
    waiters: Vec<Waiter>,
    sends: u32,
    /// This batch is the spool record of the same position.
    spooled: bool,
    /// A spool record that no longer read back intact: no entries, these events
    /// are reported failed when it reaches the front.
    lost: u64,
    /// The collector refused it with an exception (this message): its events are
    /// failed when it reaches the front, not retried.
    refused: Option<String>,
}

#[derive(Debug, Default)]
struct Open {
    entries: Vec<(Bytes, Bytes)>,
    minutes: Vec<i64>,
    audit: u64,
    bytes: usize,
    waiters: Vec<Waiter>,
    deadline: Option<Instant>,
}

/// A connection's write half: plain TCP or TLS.
type Writer = Box<dyn AsyncWrite + Send + Sync + Unpin>;

struct Conn {
    writer: Writer,
    reader: JoinHandle<()>,
    /// Ids of the batches sent on it and not answered yet, in order.
    sent: VecDeque<u64>,
    /// Replies still to come for calls whose batches are re-sent anyway.
    discard: usize,
}

/// A reply (or a read failure) from connection `conn` of generation `generation`.
type Reply = (u64, usize, Result<ReplyValue, String>);

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("sent", &self.sent)
            .field("discard", &self.discard)
            .finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

enum Event {
    Msg(Option<Msg>),
    Linger,
    Reply(Option<Reply>),
    Resume,
    Reconnect,
    PreferredCheck,
    RequestTimeout,
    Audit,
    SpoolNow,
    SpoolRetry,
    Dropped,
}

#[derive(Debug)]
pub(crate) struct Runner {
    settings: Arc<Settings>,
    counters: Arc<Counters>,
    rx: mpsc::Receiver<Msg>,
    alive: watch::Receiver<()>,
    publisher_id: String,
    id_bytes: Bytes,
    open: Open,
    pending: VecDeque<Batch>,
    next_seq: i64,
    /// Events taken from the queue so far.
    received: u64,
    /// Events acknowledged or spooled so far (always a prefix of `received`).
    settled: u64,
    /// Events acknowledged (or refused: finished either way) so far (a prefix of
    /// `settled`).
    acked: u64,
    /// This run's first sequence: spooled batches of this id from `first_seq` on
    /// are this run's own events.
    first_seq: i64,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    closing: Option<(u64, oneshot::Sender<()>)>,
    /// The current connections, all to collector `conn_index`.
    conns: Vec<Conn>,
    conn_index: usize,
    /// Generation of `conns` (0: none).
    generation: u64,
    last_generation: u64,
    replies_tx: mpsc::UnboundedSender<Reply>,
    replies: mpsc::UnboundedReceiver<Reply>,
    /// Round-robin position over `conns`.
    next_conn: usize,
    next_batch_id: u64,
    /// The preferred collector answered: move there once nothing is in flight.
    switch_pending: bool,
    ever_connected: bool,
    /// Batches in flight (on any connection).
    inflight: usize,
    /// Oldest call without a reply was sent at this time.
    awaiting_since: Option<Instant>,
    legacy: bool,
    /// After `TRY_LATER`: one batch in flight until the retried one succeeds.
    cautious: bool,
    paused_until: Option<Instant>,
    try_later_attempts: u32,
    reconnect_at: Option<Instant>,
    connect_attempts: u32,
    preferred_check_at: Option<Instant>,
    seqid: i32,
    buf: Vec<u8>,
    /// Acknowledged events not yet reported, per topic and enqueue minute.
    audit: HashMap<Bytes, HashMap<i64, u64>>,
    /// When the next audit records are due (`None`: auditing disabled).
    audit_at: Option<Instant>,
    spool: Option<Spool>,
    /// Sealed batches waiting to be appended to the spool, in order.
    held: VecDeque<Batch>,
    /// Waiters of spooled batches of this publisher that are not in memory, by
    /// sequence.
    spool_waiters: HashMap<i64, Vec<Waiter>>,
    /// New batches go to the spool (no collector acknowledged since a failure).
    spooling: bool,
    /// Since when no collector has acknowledged anything after a failure.
    unhealthy_since: Option<Instant>,
    /// After a spool write error: when to try again.
    spool_retry_at: Option<Instant>,
}

/// The `_audit` topic's name.
fn audit_topic() -> Bytes {
    Bytes::from_static(Topic::AUDIT.as_bytes())
}

/// Adds a batch's events to the audit counts (`_audit` events excluded).
fn count_acked(audit: &mut HashMap<Bytes, HashMap<i64, u64>>, batch: &Batch) {
    let mut run: Option<(&Bytes, i64, u64)> = None;
    let mut add = |topic: &Bytes, minute: i64, n: u64| {
        if topic.as_ref() == Topic::AUDIT.as_bytes() {
            return;
        }
        let per_minute = match audit.get_mut(topic.as_ref()) {
            Some(m) => m,
            None => audit.entry(topic.clone()).or_default(),
        };
        *per_minute.entry(minute).or_insert(0) += n;
    };
    for ((topic, _), &minute) in batch.entries.iter().zip(&batch.minutes) {
        match &mut run {
            Some((t, m, n)) if *m == minute && *t == topic => *n += 1,
            _ => {
                if let Some((t, m, n)) = run {
                    add(t, m, n);
                }
                run = Some((topic, minute, 1));
            }
        }
    }
    if let Some((t, m, n)) = run {
        add(t, m, n);
    }
}

/// Reads a connection's replies into `tx`, tagged with its generation and
/// index, until the connection fails (that failure is the last item).
fn read_replies<R: AsyncRead + Unpin + Send + 'static>(
    mut reader: R,
    tx: mpsc::UnboundedSender<Reply>,
    generation: u64,
    k: usize,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        loop {
            let item = match read_frame(&mut reader, MAX_REPLY_FRAME, &mut buf).await {
                Ok(Some(frame)) => match decode_reply(frame) {
                    Ok(reply) => Ok(reply.value),
                    Err(e) => Err(format!("bad reply: {e}")),
                },
                Ok(None) => Err("connection closed by collector".to_string()),
                Err(e) => Err(format!("read failed: {e}")),
            };
            let stop = item.is_err();
            if tx.send((generation, k, item)).is_err() || stop {
                return;
            }
        }
    })
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Runner {
    pub(crate) fn new(
        settings: Arc<Settings>,
        counters: Arc<Counters>,
        rx: mpsc::Receiver<Msg>,
        alive: watch::Receiver<()>,
        publisher_id: String,
        spool: Option<Spool>,
        first_seq: i64,
    ) -> Runner {
        let settings_audit_at = settings.audit_interval.map(|d| Instant::now() + d);
        let (replies_tx, replies) = mpsc::unbounded_channel();
        let runner = Runner {
            settings,
            counters,
            rx,
            alive,
            id_bytes: Bytes::from(publisher_id.clone().into_bytes()),
            publisher_id,
            open: Open::default(),
            pending: VecDeque::new(),
            next_seq: first_seq,
            received: 0,
            settled: 0,
            acked: 0,
            first_seq,
            flushes: Vec::new(),
            closing: None,
            conns: Vec::new(),
            conn_index: 0,
            generation: 0,
            last_generation: 0,
            replies_tx,
            replies,
            next_conn: 0,
            next_batch_id: 0,
            switch_pending: false,
            ever_connected: false,
            inflight: 0,
            awaiting_since: None,
            legacy: false,
            cautious: false,
            paused_until: None,
            try_later_attempts: 0,
            reconnect_at: Some(Instant::now()),
            connect_attempts: 0,
            preferred_check_at: None,
            seqid: 0,
            buf: Vec::new(),
            audit: HashMap::new(),
            audit_at: settings_audit_at,
            spool,
            held: VecDeque::new(),
            spool_waiters: HashMap::new(),
            spooling: false,
            unhealthy_since: None,
            spool_retry_at: None,
        };
        runner.spool_gauges();
        runner
    }

    fn spool_gauges(&self) {
        if let Some(spool) = &self.spool {
            self.counters
                .spool_bytes
                .store(spool.bytes(), Ordering::Relaxed);
            self.counters
                .spool_events
                .store(spool.events(), Ordering::Relaxed);
        }
        self.counters
            .spooling
            .store(u64::from(self.spooling), Ordering::Relaxed);
    }

    /// Batches held in memory only (not in the spool).
    fn memory_batches(&self) -> usize {
        let pending = match self.pending.front() {
            Some(b) if !b.spooled => self.pending.len(),
            _ => 0,
        };
        pending + self.held.len()
    }

    fn failing(&mut self) {
        self.unhealthy_since.get_or_insert_with(Instant::now);
    }

    /// No collector acknowledged anything for `spool_after`: spool from now on,
    /// starting with the memory batches not yet acknowledged.
    fn start_spooling(&mut self) {
        if self.spool.is_none() || self.spooling {
            return;
        }
        tracing::warn!(
            after = ?self.settings.spool_after,
            "no collector is taking events; spooling to disk"
        );
        self.spooling = true;
        if self.pending.front().is_some_and(|b| !b.spooled) {
            // Replies to calls already sent are ignored: the batches are re-sent
            // from the spool with the same id and sequence.
            self.discard_in_flight();
            let mut moved: VecDeque<Batch> = std::mem::take(&mut self.pending);
            moved.append(&mut self.held);
            self.held = moved;
        }
        self.drain_held();
        self.spool_gauges();
        self.answer_flushes();
    }

    /// Appends as many held batches as fit to the spool (one fsync), or sends them
    /// from memory when spooling is over and the spool is empty.
    fn drain_held(&mut self) {
        let Some(spool) = &mut self.spool else {
            return;
        };
        if self.held.is_empty() {
            return;
        }
        if spool.is_empty() && !self.spooling {
            self.pending.extend(self.held.drain(..));
            return;
        }
        if self.spool_retry_at.is_some() {
            return;
        }
        let mut records = Vec::new();
        let mut planned = 0u64;
        for batch in &self.held {
            let mut out = Vec::new();
            encode_record(
                &batch.publisher,
                batch.seq,
                &batch.entries,
                &batch.minutes,
                &mut out,
            );
            if !spool.fits_after(planned, out.len() as u64) {
                break;
            }
            planned += out.len() as u64;
            let n = batch.entries.len() as u64;
            records.push((out, n, n - batch.audit));
        }
        if records.is_empty() {
            return;
        }
        let all_loaded = !spool.has_unloaded();
        if let Err(e) = spool.append(&records) {
            tracing::error!(error = %e, "cannot write to the spool; retrying in 1 s");
            self.spool_retry_at = Some(Instant::now() + Duration::from_secs(1));
            return;
        }
        let mut keeping = all_loaded;
        let mut kept = 0;
        for _ in 0..records.len() {
            let mut batch = self.held.pop_front().expect("encoded from held");
            let n = batch.entries.len() as u64;
            let user = n - batch.audit;
            self.settled += n;
            self.counters.spooled.fetch_add(user, Ordering::Relaxed);
            self.counters.queue_depth.fetch_sub(user, Ordering::Relaxed);
            batch.spooled = true;
            batch.state = State::Idle;
            // Kept in memory (as loaded) only while every earlier record is loaded.
            if keeping && self.pending.len() < self.settings.max_in_flight {
                kept += 1;
                self.pending.push_back(batch);
            } else {
                keeping = false;
                if !batch.waiters.is_empty() && batch.publisher == self.id_bytes {
                    self.spool_waiters.insert(batch.seq, batch.waiters);
                }
            }
        }
        self.spool.as_mut().expect("checked").mark_loaded(kept);
        self.spool_gauges();
        self.answer_flushes();
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.backoff_base.as_secs_f64();
        let max = self.settings.backoff_max.as_secs_f64();
        let raw = (base * 2f64.powi(attempt.min(30) as i32)).min(max);
        Duration::from_secs_f64(raw * rand::rng().random_range(0.5..=1.0))
    }

    pub(crate) async fn run(mut self) {
        self.serve().await;
        self.drop_conns();
    }

    async fn serve(&mut self) {
        loop {
            if self.finish_close() {
                return;
            }
            if self.send_now() {
                self.seal();
            }
            self.pump().await;
            let accepting =
                self.memory_batches() < self.settings.max_in_flight && self.closing.is_none();
            let linger = if self.open.entries.is_empty() {
                None
            } else {
                self.open.deadline
            };
            let resume = self.paused_until;
            let reconnect = if self.conns.is_empty() {
                self.reconnect_at
            } else {
                None
            };
            let preferred =
                if !self.conns.is_empty() && self.conn_index != 0 && !self.switch_pending {
                    self.preferred_check_at
                } else {
                    None
                };
            let timeout = self
                .awaiting_since
                .map(|t| t + self.settings.request_timeout);
            let audit = if self.closing.is_none() {
                self.audit_at
            } else {
                None
            };
            let spool_now = match (&self.spool, self.spooling) {
                (Some(_), false) => self.unhealthy_since.map(|t| t + self.settings.spool_after),
                _ => None,
            };
            let spool_retry = self.spool_retry_at;
            let event = tokio::select! {
                m = self.rx.recv(), if accepting => Event::Msg(m),
                _ = self.alive.changed() => Event::Dropped,
                r = self.replies.recv() => Event::Reply(r),
                _ = sleep_opt(linger) => Event::Linger,
                _ = sleep_opt(resume) => Event::Resume,
                _ = sleep_opt(reconnect) => Event::Reconnect,
                _ = sleep_opt(preferred) => Event::PreferredCheck,
                _ = sleep_opt(timeout) => Event::RequestTimeout,
                _ = sleep_opt(audit) => Event::Audit,
                _ = sleep_opt(spool_now) => Event::SpoolNow,
                _ = sleep_opt(spool_retry) => Event::SpoolRetry,
            };
            match event {
                Event::Msg(Some(msg)) => {
                    self.on_msg(msg);
                    self.drain_queue();
                }
                Event::Msg(None) | Event::Dropped => {
                    self.abandon();
                    return;
                }
                Event::Linger => self.seal(),
                Event::Reply(Some((generation, _, _)))
                    if generation != self.generation || self.conns.is_empty() => {}
                Event::Reply(Some((_, conn, Ok(value)))) => self.on_reply(conn, value),
                Event::Reply(Some((_, _, Err(e)))) => self.lost(&e),
                Event::Reply(None) => self.lost("reply channel closed"),
                Event::Resume => self.paused_until = None,
                Event::Reconnect => self.connect().await,
                Event::PreferredCheck => self.check_preferred().await,
                Event::RequestTimeout => self.lost("request timed out"),
                Event::Audit => {
                    self.emit_audit();
                    self.audit_at = self.settings.audit_interval.map(|d| Instant::now() + d);
                }
                Event::SpoolNow => self.start_spooling(),
                Event::SpoolRetry => {
                    self.spool_retry_at = None;
                    self.drain_held();
                }
            }
        }
    }

    /// Takes further queued messages without going back to the `select!` (whose
    /// timers cost more than handling an event), as long as they are accepted.
    fn drain_queue(&mut self) {
        for _ in 0..MAX_BURST {
            if self.memory_batches() >= self.settings.max_in_flight || self.closing.is_some() {
                return;
            }
            match self.rx.try_recv() {
                Ok(msg) => self.on_msg(msg),
                Err(_) => return,
            }
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Event {
                topic,
                payload,
                minute,
                ack,
            } => self.add_event(topic, payload, minute, ack, false),
            Msg::Flush(tx) => {
                self.seal();
                if self.done(self.received) {
                    let _ = tx.send(());
                } else {
                    self.flushes.push((self.received, tx));
                }
            }
            Msg::Close(tx) => {
                self.seal();
                self.closing = Some((self.received, tx));
            }
        }
    }

    fn add_event(
        &mut self,
        topic: Bytes,
        payload: Bytes,
        minute: i64,
        ack: Option<Waiter>,
        audit: bool,
    ) {
        self.received += 1;
        self.open.audit += u64::from(audit);
        if self.open.entries.is_empty() {
            self.open.deadline = Some(Instant::now() + self.settings.linger);
        }
        self.open.bytes += payload.len() + topic.len();
        self.open.entries.push((topic, payload));
        self.open.minutes.push(minute);
        if let Some(ack) = ack {
            self.open.waiters.push(ack);
        }
        if self.open.entries.len() >= self.settings.max_batch_events
            || self.open.bytes >= self.settings.max_batch_bytes
        {
            self.seal();
        }
    }

    /// Turns the audit counts accumulated so far into `_audit` events (queued like
    /// published ones) and resets them.
    fn emit_audit(&mut self) {
        if self.audit.is_empty() {
            return;
        }
        let sent_at = self.settings.clock.now();
        let mut rows: Vec<(Bytes, i64, u64)> = std::mem::take(&mut self.audit)
            .into_iter()
            .flat_map(|(topic, minutes)| {
                minutes
                    .into_iter()
                    .map(move |(minute, n)| (topic.clone(), minute, n))
            })
            .filter(|(_, _, n)| *n > 0)
            .collect();
        rows.sort();
        let mut queued = 0;
        for (topic, minute, acked) in rows {
            // `publish` only accepts valid topics and stamps minutes read from the
            // clock, so neither fails unless the clock is outside 1970..=9999.
            let (Ok(topic), Ok(minute)) = (
                Topic::new(String::from_utf8_lossy(&topic)),
                Minute::from_epoch_minutes(minute),
            ) else {
                tracing::warn!(
                    topic = %String::from_utf8_lossy(&topic),
                    minute,
                    acked,
                    "cannot write an audit record for this topic and minute; dropping its count"
                );
                continue;
            };
            let record = AuditRecord {
                version: Version,
                publisher: self.publisher_id.clone(),
                topic,
                minute,
                acked,
                sent_at,
            };
            self.add_event(audit_topic(), Bytes::from(record.to_json()), 0, None, true);
            queued += 1;
        }
        self.counters
            .audit_queued
            .fetch_add(queued, Ordering::Relaxed);
    }

    /// Returns true when a requested close is complete. Once every event enqueued
    /// before the close is acknowledged, the remaining audit counts are queued and
    /// the close waits for them too.
    fn finish_close(&mut self) -> bool {
        if matches!(&self.closing, Some((target, _)) if self.done(*target))
            && !self.audit.is_empty()
        {
            self.emit_audit();
            self.seal();
            if let Some((target, _)) = &mut self.closing {
                *target = self.received;
            }
        }
        match &self.closing {
            Some((target, _)) if self.done(*target) => {
                let (_, tx) = self.closing.take().expect("checked");
                self.answer_spooled_waiters();
                self.drop_conns();
                let _ = tx.send(());
                true
            }
            _ => false,
        }
    }

    /// Adaptive linger ([`crate::PublisherBuilder::adaptive_linger`]): the open
    /// batch goes out now, without waiting for its linger time, when nothing is
    /// on the wire (no batch sent and unanswered, none waiting to be sent) and a
    /// collector is connected. Under load a reply is always outstanding, so
    /// events gather until it comes back (or the linger time, or a full batch):
    /// Nagle's rule, batching by the collector's own round trip.
    fn send_now(&self) -> bool {
        self.settings.adaptive_linger
            && !self.open.entries.is_empty()
            && self.inflight == 0
            && !self.conns.is_empty()
            && self.held.is_empty()
            && !self.spooling
            && self.pending.iter().all(|b| b.state != State::Idle)
    }

    fn seal(&mut self) {
        if self.open.entries.is_empty() {
            return;
        }
        let open = std::mem::take(&mut self.open);
        let batch = Batch {
            id: self.next_batch_id,
            state: State::Idle,
            publisher: self.id_bytes.clone(),
            seq: self.next_seq,
            entries: open.entries,
            minutes: open.minutes,
            audit: open.audit,
            waiters: open.waiters,
            sends: 0,
            spooled: false,
            lost: 0,
            refused: None,
        };
        self.next_seq += 1;
        self.next_batch_id += 1;
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        let to_spool = match &self.spool {
            Some(spool) => self.spooling || !spool.is_empty() || !self.held.is_empty(),
            None => false,
        };
        if to_spool {
            self.held.push_back(batch);
            self.drain_held();
        } else {
            self.pending.push_back(batch);
        }
    }

    /// Loads spool records into `pending` while there is room (only while
    /// connected: loading is for sending).
    fn load_from_spool(&mut self) {
        let Some(spool) = &mut self.spool else {
            return;
        };
        while spool.has_unloaded() && self.pending.len() < self.settings.max_in_flight {
            match spool.load_next() {
                Ok(Ok(record)) => {
                    let audit = record
                        .entries
                        .iter()
                        .filter(|(t, _)| t.as_ref() == Topic::AUDIT.as_bytes())
                        .count() as u64;
                    let waiters = if record.publisher == self.id_bytes {
                        self.spool_waiters.remove(&record.seq).unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    self.next_batch_id += 1;
                    self.pending.push_back(Batch {
                        id: self.next_batch_id,
                        state: State::Idle,
                        publisher: record.publisher,
                        seq: record.seq,
                        entries: record.entries,
                        minutes: record.minutes,
                        audit,
                        waiters,
                        sends: 0,
                        spooled: true,
                        lost: 0,
                        refused: None,
                    });
                }
                Ok(Err(events)) => self.pending.push_back(Batch {
                    // Nothing to send: finished when it reaches the front.
                    id: u64::MAX,
                    state: State::Acked,
                    publisher: Bytes::new(),
                    seq: 0,
                    entries: Vec::new(),
                    minutes: Vec::new(),
                    audit: 0,
                    waiters: Vec::new(),
                    sends: 0,
                    spooled: true,
                    lost: events,
                    refused: None,
                }),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the spool; retrying in 1 s");
                    self.spool_retry_at = Some(Instant::now() + Duration::from_secs(1));
                    return;
                }
            }
        }
    }

    /// Removes the acknowledged (or lost) front record from the spool.
    fn spool_acked(&mut self) {
        if let Some(spool) = &mut self.spool {
            if let Err(e) = spool.ack_front() {
                tracing::warn!(error = %e, "cannot delete an acknowledged spool segment");
            }
        }
        self.spool_gauges();
        // Room may have been made for held batches.
        self.drain_held();
    }

    /// At close: waiters of events left in the spool learn they are spooled.
    fn answer_spooled_waiters(&mut self) {
        for batch in &mut self.pending {
            if batch.spooled {
                for w in batch.waiters.drain(..) {
                    let _ = w.send(Err(PublishError::Spooled));
                }
            }
        }
        for (_, waiters) in self.spool_waiters.drain() {
            for w in waiters {
                let _ = w.send(Err(PublishError::Spooled));
            }
        }
    }

    fn window(&self) -> usize {
        if self.legacy || self.cautious {
            1
        } else {
            self.settings.max_in_flight
        }
    }

    /// Sends idle batches, in order, while the window allows: round-robin over the
    /// connections (only the first after `TRY_LATER` and with plain `Log`).
    async fn pump(&mut self) {
        if !self.conns.is_empty() && self.spool_retry_at.is_none() {
            self.load_from_spool();
        }
        self.finish_front();
        loop {
            if self.conns.is_empty()
                || self.switch_pending
                || self.paused_until.is_some()
                || self.inflight >= self.window()
            {
                break;
            }
            let Some(at) = self.pending.iter().position(|b| b.state == State::Idle) else {
                break;
            };
            let k = if self.window() == 1 {
                0
            } else {
                self.next_conn = (self.next_conn + 1) % self.conns.len();
                self.next_conn
            };
            let batch = &mut self.pending[at];
            self.seqid = self.seqid.wrapping_add(1);
            self.buf.clear();
            let refs: Vec<(&[u8], &[u8])> = batch
                .entries
                .iter()
                .map(|(t, p)| (t.as_ref(), p.as_ref()))
                .collect();
            if self.legacy {
                encode_log_call(self.seqid, &refs, &mut self.buf);
            } else {
                encode_log_batch_call(
                    self.seqid,
                    &batch.publisher,
                    batch.seq,
                    &refs,
                    &mut self.buf,
                );
            }
            if batch.sends > 0 {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
            }
            batch.sends += 1;
            batch.state = State::InFlight;
            let (id, events) = (batch.id, batch.entries.len() as u64 - batch.audit);
            let conn = &mut self.conns[k];
            let written = tokio::time::timeout(
                self.settings.request_timeout,
                conn.writer.write_all(&self.buf),
            )
            .await;
            match written {
                Ok(Ok(())) => {
                    conn.sent.push_back(id);
                    self.counters.sent.fetch_add(events, Ordering::Relaxed);
                    self.inflight += 1;
                    if self.awaiting_since.is_none() {
                        self.awaiting_since = Some(Instant::now());
                    }
                }
                Ok(Err(e)) => {
                    self.lost(&format!("write failed: {e}"));
                    break;
                }
                Err(_) => {
                    self.lost("write timed out");
                    break;
                }
            }
        }
    }

    /// Finishes acknowledged batches at the front of `pending`, in order.
    fn finish_front(&mut self) {
        let mut finished = false;
        while self
            .pending
            .front()
            .is_some_and(|b| b.state == State::Acked)
        {
            let batch = self.pending.pop_front().expect("checked");
            finished = true;
            if batch.lost > 0 {
                // A spool record that did not read back: its events are failed.
                self.counters
                    .failed
                    .fetch_add(batch.lost, Ordering::Relaxed);
                self.spool_acked();
                continue;
            }
            let n = batch.entries.len() as u64;
            // The user-facing counters leave this publisher's audit records out.
            let user = n - batch.audit;
            if let Some(message) = batch.refused {
                self.finish_refused(
                    batch.spooled,
                    batch.publisher,
                    batch.seq,
                    n,
                    user,
                    batch.waiters,
                    message,
                );
                continue;
            }
            if batch.spooled {
                if batch.publisher == self.id_bytes && batch.seq >= self.first_seq {
                    self.acked += n;
                }
                self.counters.replayed.fetch_add(user, Ordering::Relaxed);
                self.spool_acked();
            } else {
                self.acked += n;
                self.settled += n;
                self.counters
                    .acknowledged
                    .fetch_add(user, Ordering::Relaxed);
                self.counters.queue_depth.fetch_sub(user, Ordering::Relaxed);
            }
            self.counters
                .audit_acked
                .fetch_add(batch.audit, Ordering::Relaxed);
            if self.audit_at.is_some() {
                count_acked(&mut self.audit, &batch);
            }
            for w in batch.waiters {
                let _ = w.send(Ok(()));
            }
        }
        if finished {
            self.answer_flushes();
            if !self.pending.is_empty() && self.spool.is_some() {
                self.load_from_spool();
            }
        }
    }

    /// Finishes a batch a collector refused: its events are failed and it is
    /// removed from the spool; flushes and close do not wait for it any more.
    #[allow(clippy::too_many_arguments)]
    fn finish_refused(
        &mut self,
        spooled: bool,
        publisher: Bytes,
        seq: i64,
        n: u64,
        user: u64,
        waiters: Vec<Waiter>,
        message: String,
    ) {
        self.counters.failed.fetch_add(user, Ordering::Relaxed);
        if spooled {
            if publisher == self.id_bytes && seq >= self.first_seq {
                self.acked += n;
            }
            self.spool_acked();
        } else {
            self.acked += n;
            self.settled += n;
            self.counters.queue_depth.fetch_sub(user, Ordering::Relaxed);
        }
        for w in waiters {
            let _ = w.send(Err(PublishError::Refused {
                message: message.clone(),
            }));
        }
    }

    /// Every call in flight will be answered but its batch is re-sent: count the
    /// replies to ignore and make the batches idle.
    fn discard_in_flight(&mut self) {
        for conn in &mut self.conns {
            conn.discard += conn.sent.len();
            conn.sent.clear();
        }
        for batch in &mut self.pending {
            if batch.state == State::InFlight {
                batch.state = State::Idle;
            }
        }
        self.inflight = 0;
    }

    fn on_reply(&mut self, k: usize, value: ReplyValue) {
        let outstanding: usize = self.conns.iter().map(|c| c.sent.len() + c.discard).sum();
        self.awaiting_since = if outstanding > 1 {
            Some(Instant::now())
        } else {
            None
        };
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        if conn.discard > 0 {
            conn.discard -= 1;
            self.maybe_switch();
            return;
        }
        let Some(id) = conn.sent.pop_front() else {
            self.lost("unexpected reply");
            return;
        };
        let Some(at) = self
            .pending
            .iter()
            .position(|b| b.id == id && b.state == State::InFlight)
        else {
            self.lost("reply for an unknown batch");
            return;
        };
        match value {
            ReplyValue::ResultCode(ResultCode::Ok) => {
                self.inflight -= 1;
                self.pending[at].state = State::Acked;
                self.unhealthy_since = None;
                if self.spooling {
                    tracing::info!("a collector is taking events again; replaying the spool");
                    self.spooling = false;
                    self.spool_gauges();
                }
                self.try_later_attempts = 0;
                self.connect_attempts = 0;
                self.cautious = false;
                self.finish_front();
                self.maybe_switch();
            }
            ReplyValue::ResultCode(ResultCode::TryLater) => {
                self.counters.try_later.fetch_add(1, Ordering::Relaxed);
                self.failing();
                self.discard_in_flight();
                self.cautious = true;
                let delay = self.backoff(self.try_later_attempts);
                self.try_later_attempts += 1;
                tracing::debug!(
                    sequence = self.pending[at].seq,
                    ?delay,
                    "collector answered TRY_LATER; retrying"
                );
                self.paused_until = Some(Instant::now() + delay);
            }
            ReplyValue::Exception { kind, message }
                if kind == EXCEPTION_UNKNOWN_METHOD && !self.legacy =>
            {
                tracing::warn!(
                    %message,
                    "collector does not know LogBatch; falling back to plain Log (a batch re-sent after a lost ack may be duplicated)"
                );
                self.legacy = true;
                self.counters.legacy.store(1, Ordering::Relaxed);
                self.drop_conns();
                self.reconnect_at = Some(Instant::now());
            }
            ReplyValue::Exception { kind, message } => {
                // Not transient: the same call would be refused again.
                let batch = &mut self.pending[at];
                tracing::error!(
                    collector = %self.settings.collectors[self.conn_index],
                    sequence = batch.seq,
                    exception_type = kind,
                    %message,
                    events = batch.entries.len() as u64 - batch.audit,
                    "collector refused a batch; its events are failed, not retried"
                );
                self.inflight -= 1;
                batch.state = State::Acked;
                batch.refused = Some(message);
                self.finish_front();
                self.maybe_switch();
            }
            other => self.lost(&format!("unexpected reply {other:?}")),
        }
    }

    /// Whether the first `target` events received are acknowledged and the spool
    /// is empty — or, while spooling, whether they are acknowledged or spooled.
    fn done(&self, target: u64) -> bool {
        if self.spooling {
            self.settled >= target
        } else {
            self.acked >= target && self.spool.as_ref().is_none_or(Spool::is_empty)
        }
    }

    fn answer_flushes(&mut self) {
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
            .into_iter()
            .partition(|(target, _)| self.done(*target));
        self.flushes = waiting;
        for (_, tx) in done {
            let _ = tx.send(());
        }
    }

    /// Drops the connections; every unacknowledged batch is re-sent on the next.
    fn drop_conns(&mut self) {
        self.conns.clear();
        self.generation = 0;
        for batch in &mut self.pending {
            if batch.state == State::InFlight {
                batch.state = State::Idle;
            }
        }
        self.inflight = 0;
        self.cautious = false;
        self.awaiting_since = None;
        self.counters.connected.store(0, Ordering::Relaxed);
    }

    fn lost(&mut self, why: &str) {
        self.failing();
        tracing::warn!(
            collector = (!self.conns.is_empty())
                .then(|| self.settings.collectors[self.conn_index].as_str()),
            reason = why,
            "connection to collector lost; reconnecting"
        );
        self.drop_conns();
        if self.switch_pending {
            // The preferred collector answered a moment ago: go there now.
            self.switch_pending = false;
            self.reconnect_at = Some(Instant::now());
            return;
        }
        let delay = self.backoff(self.connect_attempts);
        self.connect_attempts += 1;
        self.reconnect_at = Some(Instant::now() + delay);
    }

    /// Moves to the preferred collector once nothing is in flight any more.
    fn maybe_switch(&mut self) {
        let quiet = self.inflight == 0 && self.conns.iter().all(|c| c.discard == 0);
        if self.switch_pending && quiet {
            self.switch_pending = false;
            self.drop_conns();
            // `connect` tries the preferred collector first.
            self.reconnect_at = Some(Instant::now());
        }
    }

    /// The per-collector connect failures shared with [`crate::Publisher`].
    fn lock_connect_errors(&self) -> std::sync::MutexGuard<'_, Vec<Option<ConnectError>>> {
        self.counters
            .connect_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Records (and logs, rate-limited) a failed attempt to reach collector `index`.
    fn connect_failed(&self, index: usize, cause: ConnectCause) {
        let collector = &self.settings.collectors[index];
        let mut errors = self.lock_connect_errors();
        if errors.len() < self.settings.collectors.len() {
            errors.resize(self.settings.collectors.len(), None);
        }
        let attempts = errors[index].as_ref().map_or(0, |e| e.attempts) + 1;
        if let Some(suppressed) = conduit_core::ratelimit::allow("publisher_connect_failed") {
            tracing::warn!(
                %collector,
                %cause,
                attempts,
                suppressed,
                "cannot connect to collector; retrying with backoff"
            );
        }
        errors[index] = Some(ConnectError {
            collector: collector.clone(),
            cause,
            attempts,
        });
    }

    async fn open_conn(
        &self,
        index: usize,
        k: usize,
        generation: u64,
    ) -> Result<Conn, ConnectCause> {
        let addr = &self.settings.collectors[index];
        let stream = connect::open(addr, self.settings.connect_timeout).await?;
        let _ = stream.set_nodelay(true);
        let tx = self.replies_tx.clone();
        let (reader, writer): (JoinHandle<()>, Writer) = match &self.settings.tls {
            None => {
                let (reader, writer) = stream.into_split();
                (read_replies(reader, tx, generation, k), Box::new(writer))
            }
            Some(tls) => {
                let stream =
                    tokio::time::timeout(self.settings.connect_timeout, tls.connect(addr, stream))
                        .await
                        .map_err(|_| {
                            ConnectCause::Other(format!(
                                "tls handshake timed out after {:.1} s",
                                self.settings.connect_timeout.as_secs_f64()
                            ))
                        })?
                        .map_err(|e| ConnectCause::Other(format!("tls handshake failed: {e}")))?;
                let (reader, writer) = tokio::io::split(stream);
                (read_replies(reader, tx, generation, k), Box::new(writer))
            }
        };
        Ok(Conn {
            writer,
            reader,
            sent: VecDeque::new(),
            discard: 0,
        })
    }

    fn install(&mut self, conns: Vec<Conn>, index: usize, generation: u64) {
        if self.ever_connected {
            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if index == 0 && self.conn_index != 0 && self.ever_connected {
            tracing::info!(
                collector = %self.settings.collectors[0],
                "back on the preferred collector"
            );
        }
        self.ever_connected = true;
        self.counters
            .connected
            .store(index as u64 + 1, Ordering::Relaxed);
        self.preferred_check_at = if index != 0 {
            Some(Instant::now() + self.settings.preferred_retry)
        } else {
            None
        };
        self.conns = conns;
        self.conn_index = index;
        self.generation = generation;
        self.next_conn = 0;
        self.inflight = 0;
        self.reconnect_at = None;
    }

    /// Tries the collectors in order; the first that accepts gets the connections
    /// (`connections` of them; fewer if some of the extra ones fail).
    async fn connect(&mut self) {
        self.last_generation += 1;
        let generation = self.last_generation;
        for index in 0..self.settings.collectors.len() {
            match self.open_conn(index, 0, generation).await {
                Ok(first) => {
                    let mut conns = vec![first];
                    for k in 1..self.settings.connections {
                        match self.open_conn(index, k, generation).await {
                            Ok(conn) => conns.push(conn),
                            Err(e) => {
                                tracing::debug!(error = %e, "cannot open an extra connection");
                                break;
                            }
                        }
                    }
                    tracing::debug!(
                        collector = %self.settings.collectors[index],
                        connections = conns.len(),
                        "connected"
                    );
                    self.lock_connect_errors().clear();
                    self.install(conns, index, generation);
                    return;
                }
                Err(cause) => self.connect_failed(index, cause),
            }
        }
        self.failing();
        let delay = self.backoff(self.connect_attempts);
        self.connect_attempts += 1;
        self.reconnect_at = Some(Instant::now() + delay);
    }

    /// While on a failover collector: if the preferred one accepts a connection,
    /// move there once the batches in flight are answered.
    async fn check_preferred(&mut self) {
        match self.open_conn(0, usize::MAX, 0).await {
            Ok(probe) => {
                drop(probe);
                self.switch_pending = true;
                self.maybe_switch();
            }
            Err(_) => {
                self.preferred_check_at = Some(Instant::now() + self.settings.preferred_retry);
            }
        }
    }

    /// The publisher was dropped without close: fail what is left.
    fn abandon(&mut self) {
        // While spooling, this writes the last batch to the spool.
        self.seal();
        self.answer_spooled_waiters();
        let mut n = 0u64;
        for batch in self.pending.drain(..).chain(self.held.drain(..)) {
            if batch.spooled {
                continue;
            }
            n += batch.entries.len() as u64 - batch.audit;
            for w in batch.waiters {
                let _ = w.send(Err(PublishError::Closed));
            }
        }
        // Events still in the channel.
        self.rx.close();
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Event { ack, .. } = msg {
                n += 1;
                if let Some(w) = ack {
                    let _ = w.send(Err(PublishError::Closed));
                }
            }
        }
        if n > 0 {
            tracing::warn!(
                events = n,
                "publisher dropped without close; events abandoned"
            );
        }
        self.counters.failed.fetch_add(n, Ordering::Relaxed);
        self.counters.queue_depth.fetch_sub(n, Ordering::Relaxed);
    }
}
