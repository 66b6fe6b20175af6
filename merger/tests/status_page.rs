//! The worker's status page when storage stalls: a request is answered within
//! `WAIT_FOR` with a `503` saying storage did not answer (never hangs the
//! listener's connection), one computation runs however many requests come, and
//! once storage answers again the page shows the grid. When storage stalls
//! again, the previous page is served (`200`) with its age and the warning.
//!
//! Storage is local disk behind a wrapper whose listings block until released:
//! the hang a stuck NameNode causes, made on purpose.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use conduit_core::http::HttpResponse;
use conduit_core::storage::{CreateMode, FileStatus, FileWriter, RenameMode, StorageResult};
use conduit_core::{Config, NodeName, SharedStorage, Storage, SystemClock};
use conduit_merger::daemon::DaemonStatus;
use conduit_merger::status::{StatusPage, MAX_TOPICS, WAIT_FOR};
use conduit_merger::Cluster;
use conduit_testkit::local_storage;
use conduit_testkit::wait;
use tokio::sync::watch;

/// Local storage whose `list` calls wait while `stalled` is true.
#[derive(Debug)]
struct Stalling {
    inner: SharedStorage,
    stalled: watch::Receiver<bool>,
    lists: AtomicU64,
}

#[async_trait]
impl Storage for Stalling {
    fn root(&self) -> &str {
        self.inner.root()
    }
    async fn create(&self, path: &str, mode: CreateMode) -> StorageResult<Box<dyn FileWriter>> {
        self.inner.create(path, mode).await
    }
    async fn append(&self, path: &str) -> StorageResult<Box<dyn FileWriter>> {
        self.inner.append(path).await
    }
    async fn read_range(&self, path: &str, range: Range<u64>) -> StorageResult<Bytes> {
        self.inner.read_range(path, range).await
    }
    async fn stat(&self, path: &str) -> StorageResult<FileStatus> {
        self.inner.stat(path).await
    }
    async fn list(&self, dir: &str) -> StorageResult<Vec<FileStatus>> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        let mut stalled = self.stalled.clone();
        let _ = stalled.wait_for(|s| !*s).await;
        self.inner.list(dir).await
    }
    async fn rename(&self, from: &str, to: &str, mode: RenameMode) -> StorageResult<()> {
        self.inner.rename(from, to, mode).await
    }
    async fn mkdirs(&self, dir: &str) -> StorageResult<()> {
        self.inner.mkdirs(dir).await
    }
    async fn delete(&self, path: &str, recursive: bool) -> StorageResult<bool> {
        self.inner.delete(path, recursive).await
    }
}

fn body(response: &HttpResponse) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_storage_gets_a_503_in_bounded_time_then_the_grid() {
    let dir = tempfile::tempdir().unwrap();
    let local = local_storage(dir.path());
    local.mkdirs("streams_local/clicks").await.unwrap();
    let (stall, stalled) = watch::channel(true);
    let storage = Arc::new(Stalling {
        inner: local,
        stalled,
        lists: AtomicU64::new(0),
    });
    let shared: SharedStorage = storage.clone();
    let this = Cluster {
        name: NodeName::new("dc1").unwrap(),
        storage: shared,
    };
    let page = StatusPage::new(
        this.clone(),
        [this],
        Arc::new(Config::default()),
        SystemClock::shared(),
        Arc::new(Mutex::new(DaemonStatus::default())),
    );

    // Three requests at once while storage hangs: each answered within the wait.
    let started = Instant::now();
    let answers = futures_join(&page).await;
    let took = started.elapsed();
    assert!(
        took < WAIT_FOR + Duration::from_secs(2),
        "answered after {took:?}"
    );
    for answer in &answers {
        assert_eq!(answer.status, 503, "{}", body(answer));
        assert_eq!(answer.content_type, "text/html; charset=utf-8");
        assert!(
            body(answer).contains("storage did not answer within 3 s"),
            "{}",
            body(answer)
        );
    }
    let lists = storage.lists.load(Ordering::Relaxed);
    assert_eq!(lists, 1, "one computation, stuck in its first listing");

    // Storage answers again: the computation that was waiting finishes.
    stall.send(false).unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    wait::until("the page with its grid", Duration::from_secs(30), || {
        let (page, seen) = (page.clone(), seen.clone());
        async move {
            let answer = page.render().await;
            let text = body(&answer);
            let done = answer.status == 200 && text.contains("data-topic=\"clicks\"");
            *seen.lock().unwrap() = text;
            done
        }
    })
    .await;
    let last = seen.lock().unwrap().clone();
    assert!(last.contains("<h1>conduit worker dc1</h1>"), "{last}");
    assert!(
        last.contains("clicks: 60 minutes, 60 sealed"),
        "an empty topic: {last}"
    );

    // Storage stalls again: once the cached page has expired, a request gets it
    // back within the wait, with its age and the warning.
    stall.send(true).unwrap();
    wait::until(
        "the previous page with a warning",
        Duration::from_secs(30),
        || {
            let (page, seen) = (page.clone(), seen.clone());
            async move {
                let started = Instant::now();
                let answer = page.render().await;
                assert!(started.elapsed() < WAIT_FOR + Duration::from_secs(2));
                let text = body(&answer);
                let done =
                    text.contains("storage did not answer within 3 s: this is the status computed");
                *seen.lock().unwrap() = text;
                done.then(|| assert_eq!(answer.status, 200)).is_some()
            }
        },
    )
    .await;
    let stale = seen.lock().unwrap().clone();
    assert!(stale.contains("data-topic=\"clicks\""), "{stale}");
    assert_eq!(
        stale.matches("<h1>").count(),
        1,
        "one title, the previous page's body after it: {stale}"
    );
    stall.send(false).unwrap();
}

/// Three renders at once.
async fn futures_join(page: &StatusPage) -> Vec<HttpResponse> {
    let (a, b, c) = tokio::join!(page.render(), page.render(), page.render());
    vec![a, b, c]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_topics_are_shown_and_the_others_named() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_storage(dir.path());
    for i in 0..=MAX_TOPICS {
        storage
            .mkdirs(&format!("streams_local/t{i:03}"))
            .await
            .unwrap();
    }
    let this = Cluster {
        name: NodeName::new("dc1").unwrap(),
        storage,
    };
    let page = StatusPage::new(
        this.clone(),
        [this],
        Arc::new(Config::default()),
        SystemClock::shared(),
        Arc::new(Mutex::new(DaemonStatus::default())),
    );
    // On a slow machine the first request may get the 503 of a page still
    // being computed; the computation goes on.
    let seen = Arc::new(Mutex::new(String::new()));
    wait::until("the page", Duration::from_secs(60), || {
        let (page, seen) = (page.clone(), seen.clone());
        async move {
            let answer = page.render().await;
            *seen.lock().unwrap() = body(&answer);
            answer.status == 200
        }
    })
    .await;
    let text = seen.lock().unwrap().clone();
    assert_eq!(text.matches("<section class=\"topic\"").count(), MAX_TOPICS);
    assert!(
        text.contains(&format!(
            "the first {MAX_TOPICS} topics by name are shown; 1 more"
        )),
        "{text}"
    );
    let last = format!("t{MAX_TOPICS:03}");
    assert!(text.contains(&format!(": {last}</p>")), "{text}");
    assert!(!text.contains(&format!("data-topic=\"{last}\"")));
}
