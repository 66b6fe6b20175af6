//! Bytes queued for the committer, per topic: the collector's memory bound.
//!
//! A call's parts hold their encoded size in their topics' counters from the
//! moment the call is queued until the committer answers it. A call that would take
//! a topic past `topic_queue_bytes` is refused whole (`TRY_LATER`), never stored in
//! part; a part alone in an empty queue is always taken, however large (it is
//! already bounded by `max_frame_bytes`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use conduit_core::Topic;

use crate::reasons::TryLaterReason;

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

/// Bytes a queued call holds in its topics' queues, released when it is answered
/// or refused.
#[derive(Debug, Default)]
pub struct Reservation {
    /// Each counter added to, and by how much.
    taken: Vec<(TopicQueue, u64)>,
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
        };
        for (topic, queue, bytes) in wanted {
            let before = queue.fetch_add(bytes, Ordering::Relaxed);
            reservation.taken.push((queue.clone(), bytes));
            if before + bytes > self.limit && before > 0 {
                reservation.release();
                tracing::info!(topic = %topic, queued_bytes = before, topic_queue_bytes = self.limit, "topic queue full: TRY_LATER");
                return Err(TryLaterReason::QueueFull);
            }
        }
        Ok(reservation)
    }
}

impl Reservation {
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
