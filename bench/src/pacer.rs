//! Load at a fixed rate: pre-generated payloads ([`payload_pool`]) and a
//! [`Pacer`] that publishes them with the `conduit-publisher` library, one
//! publisher per collector.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use crate::events::EventGenerator;
use crate::TOPIC;

/// `events` benchmark events of generator `seed`, slices of one buffer (so
/// handing one to `publish` costs no allocation while timing).
pub fn payload_pool(events: usize, seed: u64) -> Arc<Vec<Bytes>> {
    let mut generator = EventGenerator::new(seed);
    let mut buf = Vec::with_capacity(events * 320);
    let mut ends = Vec::with_capacity(events);
    for _ in 0..events {
        generator.next_into(&mut buf);
        ends.push(buf.len());
    }
    let buf = Bytes::from(buf);
    let mut start = 0;
    Arc::new(
        ends.iter()
            .map(|&end| {
                let p = buf.slice(start..end);
                start = end;
                p
            })
            .collect(),
    )
}

/// Publishes at a steady rate to one publisher per collector until stopped.
#[derive(Debug)]
pub struct Pacer {
    /// Set by [`Pacer::finish`]: the publishing task stops at its next step.
    stop: Arc<AtomicBool>,
    /// Events handed to `publish` so far.
    pub published: Arc<AtomicU64>,
    /// The publishing task; hands the publishers back to be flushed and closed.
    task: tokio::task::JoinHandle<anyhow::Result<Vec<conduit_publisher::Publisher>>>,
}

impl Pacer {
    /// Builds a publisher per address and starts publishing `rate` events/s in
    /// total, spread round-robin, cycling through `payloads`.
    pub async fn start(
        addrs: &[SocketAddr],
        rate: u64,
        payloads: Arc<Vec<Bytes>>,
    ) -> anyhow::Result<Pacer> {
        Pacer::start_with(addrs, rate, None, move |i| {
            payloads[(i % payloads.len() as u64) as usize].clone()
        })
        .await
    }

    /// Like [`Pacer::start`], with event `i`'s payload from `payload(i)` and at
    /// most `limit` events: publishes in steps of 10 ms (the count due is computed
    /// from the elapsed time, so a late step catches up).
    pub async fn start_with(
        addrs: &[SocketAddr],
        rate: u64,
        limit: Option<u64>,
        payload: impl FnMut(u64) -> Bytes + Send + 'static,
    ) -> anyhow::Result<Pacer> {
        Pacer::start_tuned(addrs, rate, limit, |b| b, payload).await
    }

    /// Like [`Pacer::start_with`], each publisher's builder passed through `tune`
    /// first (linger settings, for example).
    pub async fn start_tuned(
        addrs: &[SocketAddr],
        rate: u64,
        limit: Option<u64>,
        tune: impl Fn(conduit_publisher::PublisherBuilder) -> conduit_publisher::PublisherBuilder,
        mut payload: impl FnMut(u64) -> Bytes + Send + 'static,
    ) -> anyhow::Result<Pacer> {
        let mut publishers = Vec::new();
        for addr in addrs {
            publishers.push(
                tune(conduit_publisher::Publisher::builder().collectors([addr.to_string()]))
                    .build()
                    .await
                    .with_context(|| format!("cannot build a publisher for {addr}"))?,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), published.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0u64;
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                let due = limit.map_or(due, |l| due.min(l));
                while sent < due {
                    let publisher = &publishers[(sent % publishers.len() as u64) as usize];
                    publisher.publish(TOPIC, payload(sent)).await?;
                    sent += 1;
                }
                p.store(sent, Ordering::Relaxed);
            }
            Ok(publishers)
        });
        Ok(Pacer {
            stop,
            published,
            task,
        })
    }

    /// Stops publishing, flushes and closes every publisher; returns
    /// (events published, events acknowledged).
    pub async fn finish(self) -> anyhow::Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let publishers = self.task.await.context("the publishing task panicked")??;
        let mut acked = 0;
        for p in publishers {
            tokio::time::timeout(Duration::from_secs(120), p.flush())
                .await
                .context("flush timed out after 120 s")??;
            acked += p.stats().acknowledged;
            tokio::time::timeout(Duration::from_secs(60), p.close())
                .await
                .context("close timed out after 60 s")??;
        }
        Ok((self.published.load(Ordering::Relaxed), acked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_holds_the_generators_events_in_order() {
        let pool = payload_pool(3, 9);
        let mut generator = EventGenerator::new(9);
        for p in pool.iter() {
            assert_eq!(p.as_ref(), generator.next_event().as_slice());
        }
        assert_eq!(pool.len(), 3);
    }
}
