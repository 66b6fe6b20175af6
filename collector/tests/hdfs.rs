//! The collector on the real HDFS of `scripts/hdfs.sh` (`CONDUIT_TEST_HDFS`, set by
//! `.ci/run`): durable writes read back through HDFS, and an outage made by
//! stopping the real DataNode, during which the collector spools and after which it
//! replays. One test binary with tests that run one at a time (they share the
//! cluster and one of them stops its DataNode).

use std::time::Duration;

use conduit_core::scribe::ResultCode;
use conduit_testkit::collector::{self, payload_counts, stored_files, wait_status};
use conduit_testkit::hdfs::{self, Outage};
use conduit_testkit::scribe::{events, Client};
use tokio::sync::Mutex;

/// Serializes the tests of this binary.
static HDFS: Mutex<()> = Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_are_in_hdfs() {
    let _guard = HDFS.lock().await;
    let Some(root) = hdfs::root("collector_acknowledged_events_are_in_hdfs").await else {
        return;
    };
    let storage = root.storage;
    let collector = collector::on(storage.clone()).start().await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    for round in 0..10 {
        let batch = events("clicks", &format!("r{round}"), 200);
        assert_eq!(client.log(&batch).await, ResultCode::Ok);
    }
    collector.stop().await.unwrap();
    let files = stored_files(&*storage, "clicks").await;
    assert!(
        files.iter().all(|f| f.is_closed()),
        "every HDFS file closed"
    );
    let counts = payload_counts(&*storage, "clicks").await;
    assert_eq!(counts.len(), 2000);
    assert!(counts.values().all(|&c| c == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datanode_outage_spools_and_replays() {
    let _guard = HDFS.lock().await;
    let Some(root) = hdfs::root("collector_a_datanode_outage_spools_and_replays").await else {
        return;
    };
    let storage = root.storage;
    let spool = tempfile::tempdir().unwrap();
    let collector = collector::on(storage.clone())
        .spool(spool.path())
        .start()
        .await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    assert_eq!(
        client.log(&events("clicks", "before", 300)).await,
        ResultCode::Ok
    );

    let outage = Outage::datanode();
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
    outage.end();

    wait_status(
        &collector,
        "the spool replayed after the DataNode's return",
        Duration::from_secs(120),
        |s| s.storage_healthy && s.spooled_bytes == 0,
    )
    .await;
    assert_eq!(
        client.log(&events("clicks", "after", 100)).await,
        ResultCode::Ok
    );
    acked += 100;
    collector.stop().await.unwrap();

    let counts = payload_counts(&*storage, "clicks").await;
    assert_eq!(counts.len(), acked, "every acknowledged event is in HDFS");
    assert!(counts.values().all(|&c| c == 1), "exactly once");
    assert!(stored_files(&*storage, "clicks")
        .await
        .iter()
        .all(|f| f.is_closed()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namenode_restart_spools_and_replays() {
    let _guard = HDFS.lock().await;
    let Some(root) = hdfs::root("collector_a_namenode_restart_spools_and_replays").await else {
        return;
    };
    let storage = root.storage;
    let spool = tempfile::tempdir().unwrap();
    let collector = collector::on(storage.clone())
        .spool(spool.path())
        .start()
        .await;
    let mut client = Client::connect(collector.thrift_addr()).await;
    assert_eq!(
        client.log(&events("views", "before", 300)).await,
        ResultCode::Ok
    );
    let mut acked = 300;
    {
        let outage = Outage::namenode();
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
        // Those rounds went to the file `views` already had open, whose syncs
        // need only the DataNodes (`hsync` calls the NameNode only after a new
        // block, as Java's client): they may have been acknowledged from HDFS
        // or from the spool. A topic without a file needs the NameNode's
        // `create`, so its round must go to the spool.
        assert_eq!(
            client.log(&events("likes", "during", 100)).await,
            ResultCode::Ok,
            "a new topic while the NameNode is down"
        );
        assert!(
            collector.status().spooled_bytes > 0,
            "spooled while the NameNode was down"
        );
        outage.end();
    }
    wait_status(
        &collector,
        "the spool replayed after the NameNode's return",
        Duration::from_secs(180),
        |s| s.storage_healthy && s.spooled_bytes == 0,
    )
    .await;
    assert_eq!(
        client.log(&events("views", "after", 100)).await,
        ResultCode::Ok
    );
    acked += 100;
    collector.stop().await.unwrap();
    let counts = payload_counts(&*storage, "views").await;
    assert_eq!(counts.len(), acked, "every acknowledged event is in HDFS");
    assert!(counts.values().all(|&c| c == 1), "exactly once");
    let likes = payload_counts(&*storage, "likes").await;
    assert_eq!(likes.len(), 100, "the spooled topic's events are in HDFS");
    assert!(likes.values().all(|&c| c == 1), "exactly once");
    for topic in ["views", "likes"] {
        assert!(stored_files(&*storage, topic)
            .await
            .iter()
            .all(|f| f.is_closed()));
    }
}
