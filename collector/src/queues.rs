//! Bytes held for calls not yet answered: the collector's memory bounds.
//!
//! Two bounds, both answered with `TRY_LATER` rather than exhaustion:
//! - [`MemoryBudget`] (`max_inflight_bytes`), collector-wide: every byte a call
//!   holds from the moment its frame starts to arrive until it is answered (the
//!   frame as it grows, its decoded entries, its encoded parts, its place in the
//!   committer's rounds) is [`Held`] against it. Frames still arriving may hold at
//!   most half of it, so that clients that never finish a frame cannot starve the
//!   calls that arrive whole.
//! - [`TopicQueues`] (`topic_queue_bytes`), per topic: a call's parts hold their
//!   encoded size in their topics' counters from the moment the call is queued
//!   until the committer answers it. A call that would take a topic past the bound
//!   is refused whole, never stored in part; a part alone in an empty queue is
//!   always taken, however large (it is already bounded by `max_frame_bytes`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use conduit_core::http::prometheus_client::metrics::gauge::Gauge;
use conduit_core::Topic;

use crate::reasons::TryLaterReason;

/// The collector-wide bound on bytes held for calls not yet answered
/// (`max_inflight_bytes`); see the [module docs](self).
#[derive(Debug)]
pub struct MemoryBudget {
    /// `max_inflight_bytes`.
    limit: u64,
    /// Bytes held in all.
    held: AtomicU64,
    /// Of `held`, bytes of frames still arriving (at most `limit / 2`).
    arriving: AtomicU64,
    /// `conduit_collector_inflight_bytes`: `held`, for operators.
    gauge: Gauge,
}

/// Bytes of the [`MemoryBudget`] held by one frame or call; given back when
/// dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<MemoryBudget>,
    /// Bytes held.
    bytes: u64,
    /// Whether they count as a frame still arriving.
    arriving: bool,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, reporting what is held in `gauge`.
    pub fn new(limit: u64, gauge: Gauge) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            held: AtomicU64::new(0),
            arriving: AtomicU64::new(0),
            gauge,
        })
    }

    /// `max_inflight_bytes`.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Nothing held yet, for a frame about to arrive.
    pub fn arriving(self: &Arc<Self>) -> Held {
        Held {
            budget: self.clone(),
            bytes: 0,
            arriving: true,
        }
    }

    /// Adds `n` to `counter` unless that takes it past `max`.
    fn try_add(counter: &AtomicU64, n: u64, max: u64) -> bool {
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                v.checked_add(n).filter(|&sum| sum <= max)
            })
            .is_ok()
    }

    /// Takes `n` more bytes (`arriving`: for a frame still arriving), or nothing.
    fn take(&self, n: u64, arriving: bool) -> bool {
        if arriving && !Self::try_add(&self.arriving, n, self.limit / 2) {
            return false;
        }
        if !Self::try_add(&self.held, n, self.limit) {
            if arriving {
                self.arriving.fetch_sub(n, Ordering::Relaxed);
            }
            return false;
        }
        self.gauge.inc_by(n as i64);
        true
    }

    /// Takes `n` more bytes whatever the bound (a small frame: fb303 calls are
    /// always read and answered).
    fn force(&self, n: u64, arriving: bool) {
        if arriving {
            self.arriving.fetch_add(n, Ordering::Relaxed);
        }
        self.held.fetch_add(n, Ordering::Relaxed);
        self.gauge.inc_by(n as i64);
    }

    /// Gives `n` bytes back.
    fn give(&self, n: u64, arriving: bool) {
        if arriving {
            self.arriving.fetch_sub(n, Ordering::Relaxed);
        }
        self.held.fetch_sub(n, Ordering::Relaxed);
        self.gauge.dec_by(n as i64);
    }
}

impl Held {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds `total` bytes in all (no change if it holds that much already), or
    /// holds what it held and returns false when the budget has no room.
    pub fn grow_to(&mut self, total: u64) -> bool {
        if total <= self.bytes {
            return true;
        }
        let more = total - self.bytes;
        if !self.budget.take(more, self.arriving) {
            return false;
        }
        self.bytes = total;
        true
    }

    /// Holds `total` bytes in all whatever the bound.
    pub fn force_to(&mut self, total: u64) {
        if total > self.bytes {
            self.budget.force(total - self.bytes, self.arriving);
            self.bytes = total;
        }
    }

    /// Holds `n` more bytes, or returns false when the budget has no room.
    pub fn add(&mut self, n: u64) -> bool {
        self.grow_to(self.bytes.saturating_add(n))
    }

    /// Holds only `total` bytes (when it held more).
    pub fn shrink_to(&mut self, total: u64) {
        if total < self.bytes {
            self.budget.give(self.bytes - total, self.arriving);
            self.bytes = total;
        }
    }

    /// The frame has arrived whole: its bytes no longer count against the share of
    /// frames still arriving.
    pub fn arrived(&mut self) {
        if self.arriving {
            self.budget
                .arriving
                .fetch_sub(self.bytes, Ordering::Relaxed);
            self.arriving = false;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

/// One topic's queued bytes.
pub type TopicQueue = Arc<AtomicU64>;

/// The queued bytes of every topic seen.
#[derive(Debug)]
pub struct TopicQueues {
    /// `topic_queue_bytes`: the most a topic may hold queued.
    limit: u64,
    /// One counter per topic, created at its first call and kept (connections
    /// cache their topics' counters, so a counter must outlive any one call).
    queues: Mutex<HashMap<Topic, TopicQueue>>,
}

/// Bytes a queued call holds in its topics' queues and in the memory budget,
/// released when it is answered or refused.
#[derive(Debug, Default)]
pub struct Reservation {
    /// Each counter added to, and by how much.
    taken: Vec<(TopicQueue, u64)>,
    /// The call's bytes in the [`MemoryBudget`], given back when the reservation
    /// is dropped (with the call, once answered).
    memory: Option<Held>,
}

impl TopicQueues {
    /// Queues bounded at `limit` bytes each.
    pub fn new(limit: u64) -> TopicQueues {
        TopicQueues {
            limit,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// The counter of `topic`.
    pub fn of(&self, topic: &Topic) -> TopicQueue {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.entry(topic.clone()).or_default().clone()
    }

    /// Adds each `(topic, queue, bytes)` to its queue, or nothing at all when one
    /// of them would go over the limit ([`TryLaterReason::QueueFull`]).
    pub fn reserve<'a>(
        &self,
        wanted: impl ExactSizeIterator<Item = (&'a Topic, &'a TopicQueue, u64)>,
    ) -> Result<Reservation, TryLaterReason> {
        let mut reservation = Reservation {
            taken: Vec::with_capacity(wanted.len()),
            memory: None,
        };
        for (topic, queue, bytes) in wanted {
            let before = queue.fetch_add(bytes, Ordering::Relaxed);
            reservation.taken.push((queue.clone(), bytes));
            if before + bytes > self.limit && before > 0 {
                reservation.release();
                if let Some(suppressed) = conduit_core::ratelimit::allow("topic_queue_full") {
                    tracing::info!(topic = %topic, queued_bytes = before, topic_queue_bytes = self.limit, suppressed, "topic queue full: TRY_LATER");
                }
                return Err(TryLaterReason::QueueFull);
            }
        }
        Ok(reservation)
    }
}

impl Reservation {
    /// The reservation, also holding the call's bytes in the memory budget.
    pub fn with_memory(mut self, memory: Held) -> Reservation {
        self.memory = Some(memory);
        self
    }

    /// Gives the bytes back to their queues.
    pub fn release(&self) {
        for (queue, bytes) in &self.taken {
            queue.fetch_sub(*bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_its_limit_and_frames_arriving_get_half() {
        let gauge = Gauge::default();
        let budget = MemoryBudget::new(1000, gauge.clone());
        let mut a = budget.arriving();
        assert!(a.grow_to(400));
        assert!(a.grow_to(300), "holding more than asked is fine");
        assert_eq!(a.bytes(), 400);
        let mut b = budget.arriving();
        assert!(!b.grow_to(200), "frames arriving may hold half the budget");
        assert!(b.grow_to(100));
        assert_eq!((budget.held(), gauge.get()), (500, 500));
        // Arrived whole: the share of frames arriving is free again, and the
        // call may grow into the rest of the budget.
        a.arrived();
        assert!(b.grow_to(500));
        assert!(a.add(100));
        assert!(!a.add(1), "the whole budget is held");
        assert_eq!(budget.held(), 1000);
        a.shrink_to(10);
        assert_eq!(budget.held(), 510);
        drop(b);
        assert_eq!((budget.held(), gauge.get()), (10, 10));
        // A small frame is held whatever the bound.
        let mut c = budget.arriving();
        assert!(a.add(990));
        c.force_to(64);
        assert_eq!(budget.held(), 1064);
        drop((a, c));
        assert_eq!((budget.held(), gauge.get()), (0, 0));
        assert_eq!(budget.arriving.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_reservation_gives_its_memory_back_when_dropped() {
        let budget = MemoryBudget::new(1000, Gauge::default());
        let queues = TopicQueues::new(100);
        let a = topic("a");
        let qa = queues.of(&a);
        let mut held = budget.arriving();
        assert!(held.grow_to(400));
        held.arrived();
        assert!(held.add(300));
        let reservation = queues
            .reserve([(&a, &qa, 50)].into_iter())
            .unwrap()
            .with_memory(held);
        assert_eq!(budget.held(), 700);
        reservation.release();
        assert_eq!(qa.load(Ordering::Relaxed), 0);
        drop(reservation);
        assert_eq!(budget.held(), 0);
    }

    fn topic(name: &str) -> Topic {
        Topic::new(name).unwrap()
    }

    #[test]
    fn a_call_over_the_limit_takes_nothing() {
        let queues = TopicQueues::new(100);
        let (a, b) = (topic("a"), topic("b"));
        let (qa, qb) = (queues.of(&a), queues.of(&b));
        let held = queues.reserve([(&b, &qb, 60)].into_iter()).unwrap();
        let refused = queues.reserve([(&a, &qa, 10), (&b, &qb, 50)].into_iter());
        assert_eq!(refused.unwrap_err(), TryLaterReason::QueueFull);
        assert_eq!(qa.load(Ordering::Relaxed), 0);
        assert_eq!(qb.load(Ordering::Relaxed), 60);
        held.release();
        assert_eq!(qb.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_empty_queue_takes_a_part_larger_than_the_limit() {
        let queues = TopicQueues::new(100);
        let a = topic("a");
        let qa = queues.of(&a);
        let held = queues.reserve([(&a, &qa, 500)].into_iter()).unwrap();
        assert_eq!(queues.of(&a).load(Ordering::Relaxed), 500);
        held.release();
        assert_eq!(qa.load(Ordering::Relaxed), 0);
    }
}
