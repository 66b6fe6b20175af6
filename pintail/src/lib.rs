//! `conduit-pintail`: PinTail, the real-time tail reader of conduit topics.
//!
//! A [`Consumer`] follows one topic in one view, delivering each event as a
//! [`Message`] (payload, topic, cluster, collector, minute, [`Position`]):
//!
//! * `local`: the files collectors are writing right now (read while they grow, whole
//!   frames only) and then the sealed local minutes they are moved into; one
//!   partition per cluster and collector, or `N` sub-partitions of each
//!   collector's stream ([`partition`]) so a group can have more busy members
//!   than there are collectors.
//! * `merged` / `mirror`: sealed merged minutes (`_SUCCESS` manifests), oldest first;
//!   the files of each minute split over a fixed number of partitions by a hash of
//!   their name. A mirror holds the same paths and bytes, so positions and
//!   checkpoints carry over (failover).
//!
//! Start precedence: the group's checkpoint, else a [`StartTime`] (`15m`,
//! `2026-11-22T10:00`), else the beginning of retention or the live end
//! ([`DefaultStart`]). A stop minute ends the stream (`next()` returns `None`).
//! Delivery is at-least-once: checkpoints ([`position`]) are written by
//! [`Consumer::commit`] or auto-commit, and a restarted member resumes after its last
//! commit. Groups share partitions statically (`k/N`) or dynamically with leases
//! ([`group`]).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use conduit_core::{storage::LocalStorage, FrameEncoder, Manifest, ManifestFile, SharedStorage, Trailer, Encoding, Minute, NodeName, Topic, View};
//! use conduit_pintail::{Consumer, ReadView};
//!
//! // A sealed merged minute with one file of two records.
//! let dir = tempfile::tempdir().unwrap();
//! let storage: SharedStorage = Arc::new(LocalStorage::open(dir.path()).unwrap());
//! let minute = Minute::parse_flexible("2026-11-22T10:05").unwrap();
//! let mut file = FrameEncoder::new(3).unwrap().frame(b"hello\nworld\n").unwrap().to_vec();
//! file.extend_from_slice(&Trailer { encoding: Encoding::Lines, records: 2, record_bytes: 12 }.encode());
//! let name = "dc1-c1-clicks-2026-11-22-10-05_00000.zst";
//! let topic = Topic::new("clicks").unwrap();
//! let dir_path = Manifest::dir(View::Merged, &topic, minute);
//! storage.write_atomic(&format!("{dir_path}/{name}"), file.clone().into()).await.unwrap();
//! let entry = ManifestFile { name: name.into(), bytes: file.len() as u64, records: 2,
//!     crc32c: conduit_core::manifest::crc32c(&file), cluster: NodeName::new("dc1").unwrap(),
//!     collector: Some(NodeName::new("c1").unwrap()), minute, late: false };
//! Manifest::new(View::Merged, topic, minute, vec![NodeName::new("dc1").unwrap()], vec![],
//!     chrono::Utc::now(), "dc1/doc".into(), vec![entry]).seal(&*storage).await.unwrap();
//!
//! let mut consumer = Consumer::builder("clicks")
//!     .cluster("dc1", storage.clone())
//!     .view(ReadView::Merged)
//!     .group("doc")
//!     .stop(minute)
//!     .build()
//!     .await
//!     .unwrap();
//! let first = consumer.next().await.unwrap().unwrap();
//! assert_eq!(&first.payload[..], b"hello");
//! consumer.commit(&first.position).await.unwrap();
//! assert_eq!(&consumer.next().await.unwrap().unwrap().payload[..], b"world");
//! assert!(consumer.next().await.unwrap().is_none(), "stopped after 10:05");
//! # });
//! ```
//!
//! # Layout
//! - [`consumer`]: builder, `next`, commits, seek, group upkeep.
//! - `reader`: one partition's cursor over files and frames.
//! - [`partition`]: partition names, sub-partitions, the group's partition count.
//! - [`position`]: positions and the checkpoint format.
//! - [`group`]: static and dynamic membership.
//! - [`lag`]: how far a checkpoint is behind (events, bytes, seconds).
//! - [`blocking`]: the blocking wrapper.
//! - `roots`: failover across cluster roots (minute directories are walked with
//!   `conduit_core::tree`).

pub mod blocking;
mod collector_http;
pub mod consumer;
mod error;
pub mod group;
pub mod lag;
mod metrics;
pub mod partition;
pub mod position;
mod reader;
mod roots;

pub use blocking::BlockingConsumer;
pub use consumer::{Consumer, ConsumerBuilder, DefaultStart, Message, ReadView, StartTime};
pub use error::{PintailError, Result};
pub use group::Membership;
pub use metrics::Stats;
pub use position::{CheckpointStore, Position, CHECKPOINT_VERSION};
pub use reader::partition_of;
