//! A blocking wrapper for threads without an async runtime: it owns a one-thread
//! Tokio runtime and runs each call to completion on it.

use std::time::Duration;

use crate::consumer::{Consumer, ConsumerBuilder, Message, StartTime};
use crate::error::{PintailError, Result};
use crate::metrics::Stats;
use crate::position::Position;

/// A [`Consumer`] with blocking calls.
///
/// ```
/// use conduit_pintail::{BlockingConsumer, Consumer, ReadView};
/// let dir = tempfile::tempdir().unwrap();
/// let mut consumer = BlockingConsumer::build(
///     Consumer::builder("clicks")
///         .cluster_uri("dc1", dir.path().to_str().unwrap())
///         .view(ReadView::Merged),
/// )
/// .unwrap();
/// assert!(consumer.next_timeout(std::time::Duration::from_millis(20)).unwrap().is_none());
/// consumer.close().unwrap();
/// ```
#[derive(Debug)]
pub struct BlockingConsumer {
    consumer: Option<Consumer>,
    runtime: tokio::runtime::Runtime,
}

impl BlockingConsumer {
    /// Builds the consumer on a runtime of its own.
    pub fn build(builder: ConsumerBuilder) -> Result<BlockingConsumer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("conduit-pintail")
            .enable_all()
            .build()
            .map_err(|e| PintailError::Runtime(e.to_string()))?;
        let consumer = runtime.block_on(builder.build())?;
        Ok(BlockingConsumer {
            consumer: Some(consumer),
            runtime,
        })
    }

    fn parts(&mut self) -> (&mut Consumer, &tokio::runtime::Runtime) {
        (
            self.consumer
                .as_mut()
                .expect("consumer present until close"),
            &self.runtime,
        )
    }

    /// See [`Consumer::next`].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Message>> {
        let (c, rt) = self.parts();
        rt.block_on(c.next())
    }

    /// See [`Consumer::next_timeout`].
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Message>> {
        let (c, rt) = self.parts();
        rt.block_on(c.next_timeout(timeout))
    }

    /// See [`Consumer::commit`].
    pub fn commit(&mut self, position: &Position) -> Result<()> {
        let (c, rt) = self.parts();
        rt.block_on(c.commit(position))
    }

    /// See [`Consumer::seek`].
    pub fn seek(&mut self, start: StartTime) -> Result<()> {
        let (c, rt) = self.parts();
        rt.block_on(c.seek(start))
    }

    /// See [`Consumer::stats`].
    pub fn stats(&self) -> Stats {
        self.consumer.as_ref().expect("consumer").stats()
    }

    /// See [`Consumer::close`].
    pub fn close(mut self) -> Result<()> {
        let consumer = self.consumer.take().expect("consumer");
        self.runtime.block_on(consumer.close())
    }
}
