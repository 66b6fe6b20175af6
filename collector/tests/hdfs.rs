//! The collector on the real HDFS of `scripts/hdfs.sh` (`CONDUIT_TEST_HDFS`, set by
//! `.ci/run`): durable writes read back through HDFS, and an outage made by
//! stopping the real DataNode, during which the collector spools and after which it
//! replays. One test binary with tests that run one at a time (they share the
//! cluster and one of them stops its DataNode).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use conduit_core::scribe::ResultCode;
use conduit_core::storage::open_root;
use conduit_core::{Config, SharedStorage, SystemClock};
use tokio::sync::Mutex;

/// Serializes the tests of this binary.
static HDFS: Mutex<()> = Mutex::const_new(());

async fn hdfs_root(name: &str) -> Option<(String, SharedStorage)> {
    let url = match std::env::var("CONDUIT_TEST_HDFS") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!("SKIPPED: collector on HDFS (set CONDUIT_TEST_HDFS; .ci/run does)");
            return None;
        }
    };
    let root = format!(
        "{}/collector_{name}_{}_{}",
        url.trim_end_matches('/'),
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    let storage = open_root(&root).await.expect("HDFS reachable");
    Some((root, storage))
}

fn hdfs_script(cmd: &str) {
    let script = std::env::var("CONDUIT_HDFS_SCRIPT")
        .expect("CONDUIT_HDFS_SCRIPT must point at scripts/hdfs.sh when CONDUIT_TEST_HDFS is set");
    let status = Command::new(&script)
        .arg(cmd)
        .status()
        .expect("run hdfs.sh");
    assert!(status.success(), "{script} {cmd} failed");
}

/// Restarts the DataNode when dropped, so a failing assertion never leaves the
/// shared cluster without one.
struct RestartDatanode;

impl Drop for RestartDatanode {
    fn drop(&mut self) {
        hdfs_script("start-datanode");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_are_in_hdfs() {
    let _guard = HDFS.lock().await;
    let Some((_root, storage)) = hdfs_root("ack").await else {
        return;
    };
    let collector = start(
        storage.clone(),
        SystemClock::shared(),
        None,
        Config::default(),
    )
    .await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    for round in 0..10 {
        let batch = events("clicks", &format!("r{round}"), 200);
        assert_eq!(client.log(&batch).await, ResultCode::Ok);
    }
    collector.stop().await.unwrap();
    let files = read_topic(&storage, "clicks").await;
    assert!(files.iter().all(|f| f.2), "every HDFS file closed");
    let counts = counts(&storage, "clicks").await;
    assert_eq!(counts.len(), 2000);
    assert!(counts.values().all(|&c| c == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datanode_outage_spools_and_replays() {
    let _guard = HDFS.lock().await;
    let Some((_root, storage)) = hdfs_root("outage").await else {
        return;
    };
    let spool = tempfile::tempdir().unwrap();
    let collector = start(
        storage.clone(),
        SystemClock::shared(),
        Some(spool.path()),
        Config::default(),
    )
    .await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    assert_eq!(
        client.log(&events("clicks", "before", 300)).await,
        ResultCode::Ok
    );

    hdfs_script("stop-datanode");
    let restart = RestartDatanode;
    let mut acked = 300;
    {
        // Every call is acknowledged: from HDFS while it still takes writes, from
        // the spool once it does not.
        for round in 0..5 {
            let code = client
                .log(&events("clicks", &format!("during{round}"), 100))
                .await;
            assert_eq!(code, ResultCode::Ok, "round {round} during the outage");
            acked += 100;
        }
        assert!(
            !collector.status().storage_healthy,
            "writes without a DataNode must fail over to the spool"
        );
        assert!(collector.status().spooled_bytes > 0);
    }
    drop(restart);

    tokio::time::timeout(Duration::from_secs(120), async {
        let mut rx = collector.status_watch();
        rx.wait_for(|s| s.storage_healthy && s.spooled_bytes == 0)
            .await
            .unwrap();
    })
    .await
    .expect("spool replayed within 120 s of the DataNode's return");
    assert_eq!(
        client.log(&events("clicks", "after", 100)).await,
        ResultCode::Ok
    );
    acked += 100;
    collector.stop().await.unwrap();

    let counts = counts(&storage, "clicks").await;
    assert_eq!(counts.len(), acked, "every acknowledged event is in HDFS");
    assert!(counts.values().all(|&c| c == 1), "exactly once");
    assert!(read_topic(&storage, "clicks").await.iter().all(|f| f.2));
}

/// Restarts the NameNode when dropped.
struct RestartNamenode;

impl Drop for RestartNamenode {
    fn drop(&mut self) {
        hdfs_script("start-namenode");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namenode_restart_spools_and_replays() {
    let _guard = HDFS.lock().await;
    let Some((_root, storage)) = hdfs_root("nn_outage").await else {
        return;
    };
    let spool = tempfile::tempdir().unwrap();
    let collector = start(
        storage.clone(),
        SystemClock::shared(),
        Some(spool.path()),
        Config::default(),
    )
    .await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    assert_eq!(
        client.log(&events("views", "before", 300)).await,
        ResultCode::Ok
    );
    let mut acked = 300;
    hdfs_script("stop-namenode");
    {
        let restart = RestartNamenode;
        for round in 0..3 {
            let code = client
                .log(&events("views", &format!("during{round}"), 100))
                .await;
            assert_eq!(
                code,
                ResultCode::Ok,
                "round {round} while the NameNode is down"
            );
            acked += 100;
        }
        assert!(
            collector.status().spooled_bytes > 0,
            "spooled while the NameNode was down"
        );
        drop(restart);
    }
    tokio::time::timeout(Duration::from_secs(180), async {
        let mut rx = collector.status_watch();
        rx.wait_for(|s| s.storage_healthy && s.spooled_bytes == 0)
            .await
            .unwrap();
    })
    .await
    .expect("spool replayed within 180 s of the NameNode's return");
    assert_eq!(
        client.log(&events("views", "after", 100)).await,
        ResultCode::Ok
    );
    acked += 100;
    collector.stop().await.unwrap();
    let counts = counts(&storage, "views").await;
    assert_eq!(counts.len(), acked, "every acknowledged event is in HDFS");
    assert!(counts.values().all(|&c| c == 1), "exactly once");
    assert!(read_topic(&storage, "views").await.iter().all(|f| f.2));
}
