//! The open-file endpoint (`GET /v1/open/<topic>/<collector>/<name>?offset=N&max=M`)
//! of a real in-process collector: the bytes served are exactly the synced bytes in
//! storage, never unsynced ones; unknown files are 404, old offsets 416 (`too_old`),
//! closed files 410 with their final length, bad requests 400.

use std::sync::Arc;
use std::time::Duration;

use conduit_core::scribe::ResultCode;
use conduit_core::storage::{FaultPlan, FaultStorage, Op};
use conduit_core::{SharedStorage, TestClock};
use conduit_testkit::clock::{self, clock_at};
use conduit_testkit::collector::{self, wait_status};
use conduit_testkit::scribe::{events, Client};
use conduit_testkit::{local_storage, minute};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FILE: &str = "data/clicks/c1/clicks-2026-11-22-10-05_00000.zst";
const URL: &str = "/v1/open/clicks/c1/clicks-2026-11-22-10-05_00000.zst";

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn num(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("header {name}"))
            .parse()
            .unwrap()
    }
}

async fn get(addr: std::net::SocketAddr, target: &str) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

fn test_clock() -> TestClock {
    clock_at(10, 5, 30)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_synced_bytes_of_an_open_file_then_gone_once_closed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let clock = test_clock();
    let collector = collector::on(storage.clone())
        .clock(clock.shared())
        .start()
        .await;
    let http = collector.http_addr();
    let mut client = Client::connect(collector.thrift_addr()).await;

    // Nothing written yet: the file does not exist.
    let a = get(http, &format!("{URL}?offset=0")).await;
    assert_eq!(a.status, 404);

    for i in 0..5 {
        let tag = format!("a{i}");
        assert_eq!(
            client.log(&events("clicks", &tag, 50)).await,
            ResultCode::Ok
        );
    }
    let in_storage = storage.read(FILE).await.unwrap();
    let a = get(http, &format!("{URL}?offset=0")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("conduit-file-state"), Some("open"));
    assert_eq!(a.header("conduit-cluster"), Some("dc1"));
    assert_eq!(a.header("conduit-collector"), Some("c1"));
    assert_eq!(a.num("conduit-synced-length"), in_storage.len() as u64);
    assert_eq!(a.body, in_storage.to_vec(), "the same bytes as in storage");

    // A range, cut by max (the first frame is always whole).
    let second = conduit_core::format::scan(&in_storage, 0).frames[1].offset;
    let a = get(http, &format!("{URL}?offset={second}&max=1")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.num("conduit-offset"), second);
    let frame_len = conduit_core::format::scan(&in_storage, 0).frames[1].len;
    assert_eq!(
        a.body,
        in_storage[second as usize..(second + frame_len) as usize].to_vec()
    );

    // At the synced end: nothing yet. Past it: 416.
    let len = in_storage.len();
    let a = get(http, &format!("{URL}?offset={len}")).await;
    assert_eq!((a.status, a.body.len()), (200, 0));
    let a = get(http, &format!("{URL}?offset={}", len + 1)).await;
    assert_eq!(a.status, 416);
    assert_eq!(a.header("conduit-refused"), Some("past_end"));

    // Other names, other collectors, bad requests.
    let a = get(
        http,
        "/v1/open/clicks/c1/clicks-2026-11-22-10-05_00001.zst?offset=0",
    )
    .await;
    assert_eq!(a.status, 404);
    let a = get(
        http,
        "/v1/open/clicks/c2/clicks-2026-11-22-10-05_00000.zst?offset=0",
    )
    .await;
    assert_eq!(a.status, 404);
    let a = get(
        http,
        "/v1/open/views/c1/clicks-2026-11-22-10-05_00000.zst?offset=0",
    )
    .await;
    assert_eq!(a.status, 404);
    let a = get(http, "/v1/open/clicks/c1?offset=0").await;
    assert_eq!(a.status, 404);
    let a = get(http, &format!("{URL}?offset=-1")).await;
    assert_eq!(a.status, 400);
    assert!(String::from_utf8_lossy(&a.body).contains("offset"));
    let a = get(http, URL).await;
    assert_eq!(a.status, 400);
    let a = get(http, &format!("{URL}?offset=0&max=lots")).await;
    assert_eq!(a.status, 400);

    // The minute rolls: the file is closed; 410 with its final length.
    clock::set(&clock, 10, 6, 1);
    wait_status(
        &collector,
        "watermark 10:05",
        Duration::from_secs(30),
        |s| s.watermark == Some(minute("2026-11-22T10:05")),
    )
    .await;
    let closed = storage.read(FILE).await.unwrap();
    let a = get(http, &format!("{URL}?offset=0")).await;
    assert_eq!(a.status, 410);
    assert_eq!(a.header("conduit-file-state"), Some("closed"));
    assert_eq!(a.num("conduit-synced-length"), closed.len() as u64);
    assert!(conduit_core::format::scan(&closed, 0).trailer.is_some());

    let metrics = get(http, "/metrics").await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.contains("conduit_collector_open_reads_total{result=\"too_old\"}")
            || text.contains("conduit_collector_open_reads_total{result=\"bad_request\"} 3"),
        "{text}"
    );
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_whose_sync_failed_are_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let real = local_storage(dir.path());
    let plan = FaultPlan::new();
    let faulty: SharedStorage = Arc::new(FaultStorage::new(real.clone(), plan.clone()));
    let clock = test_clock();
    let collector = collector::on(faulty).clock(clock.shared()).start().await;
    let http = collector.http_addr();
    let mut client = Client::connect(collector.thrift_addr()).await;
    assert_eq!(
        client.log(&events("clicks", "a", 100)).await,
        ResultCode::Ok
    );
    let synced = real.read(FILE).await.unwrap();

    // The next frame is written, but its sync fails: never acknowledged, never served.
    plan.fail_ops(&[Op::Sync]);
    assert_eq!(
        client.log(&events("clicks", "b", 100)).await,
        ResultCode::TryLater
    );
    // (The local writer buffers until the sync, so the failed frame may or may not
    // be in the file; either way it was never synced.)
    let a = get(http, &format!("{URL}?offset=0")).await;
    assert_eq!(a.status, 410);
    assert_eq!(a.header("conduit-file-state"), Some("abandoned"));
    assert_eq!(a.num("conduit-synced-length"), synced.len() as u64);
    let a = get(http, &format!("{URL}?offset={}", synced.len())).await;
    assert_eq!(a.status, 410, "nothing past the acknowledged length");
    plan.heal();
    collector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_older_than_the_bytes_kept_in_memory_get_416() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    let clock = test_clock();
    let collector = collector::on(storage.clone())
        .clock(clock.shared())
        .start()
        .await;
    let http = collector.http_addr();
    let mut client = Client::connect(collector.thrift_addr()).await;
    // Barely compressible payloads: ~12 MiB on disk, more than one file keeps.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..8 {
        let payloads: Vec<(&str, String)> = (0..2)
            .map(|_| {
                let s: String = (0..900_000)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        char::from(
                            b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                [(x % 62) as usize],
                        )
                    })
                    .collect();
                ("clicks", s)
            })
            .collect();
        assert_eq!(client.log(&payloads).await, ResultCode::Ok);
    }
    let len = storage.len(FILE).await.unwrap();
    assert!(len > conduit_collector::open::RING_BYTES_PER_FILE);
    let a = get(http, &format!("{URL}?offset=0")).await;
    assert_eq!(a.status, 416);
    assert_eq!(a.header("conduit-refused"), Some("too_old"));
    let start = a.num("conduit-ring-start");
    assert!(start > 0 && len - start <= conduit_collector::open::RING_BYTES_PER_FILE);
    assert_eq!(a.num("conduit-synced-length"), len);
    // From the oldest kept offset on, bytes are served, at most 4 MiB (plus the
    // rest of the first frame) per answer, equal to storage.
    let a = get(http, &format!("{URL}?offset={start}&max=100000000")).await;
    assert_eq!(a.status, 200);
    let want = storage
        .read_range(FILE, start..start + a.body.len() as u64)
        .await
        .unwrap();
    assert_eq!(a.body, want.to_vec());
    assert!(a.body.len() as u64 <= conduit_collector::open::MAX_READ_BYTES + (2 << 20));
    collector.stop().await.unwrap();
}
