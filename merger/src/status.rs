//! The worker's status page: `GET /` on its HTTP listener.
//!
//! One server-rendered HTML page (inline CSS, no script, no external asset):
//! for every topic of the cluster, the last hour as a grid of minutes × tiers
//! (acked, collected, local, merged, mirror, invalid), each cell coloured by its
//! [`CellState`] with the count as text and in its `title`, computed by
//! [`audit_topics`] exactly as `conduit audit` does (every cell carries
//! `data-topic`, `data-minute`, `data-tier`, `data-count` and `data-state`
//! for scripts and tests); the collectors' heartbeats (age, watermark, spool)
//! and the holder of the worker lease.
//!
//! # Cost
//! Rendering reads every topic's files of the hour, so the page is computed at
//! most once per [`CACHE_FOR`] and by one task at a time; concurrent requests
//! share its result. A request waits for it at most [`WAIT_FOR`]: when storage is
//! slower, the page says so, with the previous result and its age (`200`) or,
//! before any, alone (`503`), while the computation goes on for the next
//! request. A computation that takes longer than [`GIVE_UP_AFTER`] is
//! abandoned, so a hung storage call cannot keep the page from ever being
//! computed again.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use conduit_core::heartbeat::Heartbeat;
use conduit_core::http::{HttpRequest, HttpResponse, Routes};
use conduit_core::text::html as escape;
use conduit_core::tree;
use conduit_core::{Config, Minute, SharedClock, SharedStorage, Topic, TopicSettings, View};
use tokio::sync::watch;

use crate::audit::{audit_topics, AuditRange, CellState, TopicAudit, LATE_AFTER_SECS};
use crate::daemon::DaemonStatus;
use crate::lease::{Lease, LeaseSettings};
use crate::Cluster;

/// A computed page is served again for this long.
pub const CACHE_FOR: Duration = Duration::from_secs(5);

/// A request waits this long for the page to be computed.
pub const WAIT_FOR: Duration = Duration::from_secs(3);

/// A computation still running after this long is abandoned.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// Minutes shown per topic (the last hour, the current minute included).
pub const MINUTES_SHOWN: i64 = 60;

/// Topics shown at most (by name), so the page's cost and size stay bounded
/// (each topic is an audit of the hour and a grid of 50 to 100 KB); the others
/// are named.
pub const MAX_TOPICS: usize = 50;

/// `conduit audit`'s default for the duplicate judgement's settling time.
const SETTLE_SECS: u64 = 180;

const HTML_CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// The status page's routes (`/`); see the [module docs](self).
#[derive(Debug, Clone)]
pub struct StatusPage {
    inner: Arc<Inner>,
}

struct Inner {
    this: Cluster,
    clusters: Vec<(String, SharedStorage)>,
    config: Arc<Config>,
    clock: SharedClock,
    daemon: Arc<Mutex<DaemonStatus>>,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusPage")
            .field("cluster", &self.this.name)
            .finish_non_exhaustive()
    }
}

/// The last page computed and the computation in progress.
#[derive(Default)]
struct Cache {
    last: Option<(Instant, Bytes)>,
    running: Option<watch::Receiver<Option<Bytes>>>,
}

impl StatusPage {
    /// The page of cluster `this`, auditing every cluster of `clusters`
    /// (merged and mirror views live in other clusters' storage) with the topic
    /// settings of `config`; `daemon` is this worker's own status.
    pub fn new(
        this: Cluster,
        clusters: impl IntoIterator<Item = Cluster>,
        config: Arc<Config>,
        clock: SharedClock,
        daemon: Arc<Mutex<DaemonStatus>>,
    ) -> Self {
        let clusters = clusters
            .into_iter()
            .map(|c| (c.name.as_str().to_owned(), c.storage))
            .collect();
        StatusPage {
            inner: Arc::new(Inner {
                this,
                clusters,
                config,
                clock,
                daemon,
                cache: Mutex::new(Cache::default()),
            }),
        }
    }

    /// The page: cached, computing, or saying storage is slow.
    pub async fn render(&self) -> HttpResponse {
        let rx = {
            let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, html)) = &cache.last {
                if at.elapsed() < CACHE_FOR {
                    return html_response(200, html.clone());
                }
            }
            // A computation whose task ended without a result (abandoned) is
            // started again.
            let alive = cache
                .running
                .as_ref()
                .is_some_and(|rx| rx.has_changed().is_ok());
            if !alive {
                cache.running = Some(self.start());
            }
            cache.running.clone().expect("set above")
        };
        let mut rx = rx;
        let waited = tokio::time::timeout(WAIT_FOR, rx.wait_for(Option::is_some)).await;
        if let Ok(Ok(html)) = waited {
            let html = html.clone().expect("waited for Some");
            return html_response(200, html);
        }
        let stale = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last
            .clone();
        let (status, page) = slow_page(self.inner.this.name.as_str(), stale);
        html_response(status, Bytes::from(page))
    }

    /// Starts computing the page in its own task.
    fn start(&self) -> watch::Receiver<Option<Bytes>> {
        let (tx, rx) = watch::channel(None);
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let started = Instant::now();
            match tokio::time::timeout(GIVE_UP_AFTER, compute(&inner)).await {
                Ok(html) => {
                    let html = Bytes::from(html);
                    let mut cache = inner.cache.lock().unwrap_or_else(|p| p.into_inner());
                    cache.last = Some((Instant::now(), html.clone()));
                    cache.running = None;
                    drop(cache);
                    let _ = tx.send(Some(html));
                }
                Err(_) => {
                    tracing::warn!(
                        secs = started.elapsed().as_secs(),
                        "status page: storage too slow, computation abandoned"
                    );
                    inner
                        .cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .running = None;
                }
            }
        });
        rx
    }
}

#[async_trait::async_trait]
impl Routes for StatusPage {
    async fn handle(&self, req: HttpRequest) -> Option<HttpResponse> {
        match req.path.as_str() {
            "/" => Some(self.render().await),
            _ => None,
        }
    }
}

fn html_response(status: u16, body: Bytes) -> HttpResponse {
    HttpResponse {
        status,
        content_type: HTML_CONTENT_TYPE,
        headers: vec![("cache-control", "no-store".to_owned())],
        body,
    }
}

/// The page's stylesheet, inline: one colour per [`CellState`].
pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}\
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .3em}\
p.meta{color:#555;margin:.2em 0}table{border-collapse:collapse}\
table.info td,table.info th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:.9em}\
.scroll{overflow-x:auto}table.grid{font-size:10px;font-variant-numeric:tabular-nums;table-layout:fixed;width:100%;min-width:60em}\
table.grid th{font-weight:normal;padding:1px 3px;white-space:nowrap;text-align:right;overflow:hidden}\
table.grid thead th{writing-mode:vertical-rl;transform:rotate(180deg);height:3.5em;width:auto;color:#555;text-align:left}\
table.grid th.label{width:7em}table.grid td{border:1px solid #fff;height:1.8em;text-align:center;padding:0;overflow:hidden;white-space:nowrap}\
.s-sealed{background:#b7dfb9}.s-sealed.zero{background:#e6f4e6;color:#9ab}.s-waiting{background:#e4e4e4;color:#555}.s-late{background:#f6b26b}\
.s-loss{background:#e06666;color:#fff}.s-duplicates{background:#8e7cc3;color:#fff}\
.s-quarantined{background:#a0522d;color:#fff}.s-invalid{background:#ffd966}\
.legend span{display:inline-block;padding:2px 8px;margin-right:4px;border-radius:3px;font-size:.85em}\
.error{color:#b00}.summary{font-family:ui-monospace,monospace;font-size:.9em}";

/// What a cell's state means, for the legend.
fn meaning(state: CellState) -> String {
    match state {
        CellState::Sealed => "sealed (or counted) and consistent".to_owned(),
        CellState::Waiting => "not sealed yet".to_owned(),
        CellState::Late => format!("not sealed {} s after the minute ended", LATE_AFTER_SECS),
        CellState::Loss => "fewer records than the tier it is built from".to_owned(),
        CellState::Duplicates => "more records than the tier it is built from".to_owned(),
        CellState::Quarantined => "a file of the minute was set aside".to_owned(),
        CellState::Invalid => "entries of the minute went to _invalid".to_owned(),
    }
}

/// The legend of cell colours.
pub fn legend() -> String {
    let mut out = String::from("<p class=\"legend\">");
    for state in CellState::ALL {
        let _ = write!(
            out,
            "<span class=\"s-{0}\" title=\"{1}\">{0}</span>",
            state.as_str(),
            meaning(state)
        );
    }
    out.push_str("</p>");
    out
}

/// The page shown when the computation did not finish within [`WAIT_FOR`]:
/// `200` with the previous page (its age said first) when there is one, else
/// `503`.
fn slow_page(cluster: &str, stale: Option<(Instant, Bytes)>) -> (u16, String) {
    let mut out = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>conduit worker {0}</title>\
         <style>{STYLE}</style></head><body><h1>conduit worker {0}</h1>",
        escape(cluster)
    );
    let waited = WAIT_FOR.as_secs();
    // The previous page after its title.
    let previous = stale.as_ref().and_then(|(at, html)| {
        let html = std::str::from_utf8(html).ok()?;
        let (_, rest) = html.split_once("</h1>")?;
        let (body, _) = rest.rsplit_once("</body>")?;
        Some((at.elapsed().as_secs(), body))
    });
    let status = match previous {
        Some((age, body)) => {
            let _ = write!(
                out,
                "<p class=\"error\" id=\"slow\">storage did not answer within {waited} s: \
                 this is the status computed {age} s ago; a new one is being computed</p>{body}"
            );
            200
        }
        None => {
            let _ = write!(
                out,
                "<p class=\"error\" id=\"slow\">storage did not answer within {waited} s: \
                 the status is still being computed, reload in a few seconds</p>"
            );
            503
        }
    };
    out.push_str("</body></html>");
    (status, out)
}

/// Computes the whole page.
async fn compute(inner: &Inner) -> String {
    let now = inner.clock.now();
    let this = inner.this.name.to_string();
    let mut out = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>conduit worker {0}</title>\
         <style>{STYLE}</style></head><body><h1>conduit worker {0}</h1>",
        escape(&this)
    );
    let _ = write!(
        out,
        "<p class=\"meta\">computed at {} UTC (cached for {} s)</p>",
        now.format("%Y-%m-%d %H:%M:%S"),
        CACHE_FOR.as_secs()
    );
    lease_section(inner, now, &mut out).await;
    collectors_section(inner, now, &mut out).await;
    topics_section(inner, now, &mut out).await;
    out.push_str("</body></html>");
    out
}

/// The lease holder and this worker's own state.
async fn lease_section(inner: &Inner, now: DateTime<Utc>, out: &mut String) {
    out.push_str("<h2>Worker lease</h2><table class=\"info\" id=\"lease\">");
    let name = LeaseSettings::worker("", 1).name;
    match Lease::read_record(&inner.this.storage, &name).await {
        Ok(Some(record)) => {
            let expired = record.expires_at <= now;
            let _ = write!(
                out,
                "<tr><th>holder</th><td data-holder=\"{0}\">{0}</td></tr>\
                 <tr><th>epoch</th><td>{1}</td></tr>\
                 <tr><th>renewed</th><td>{2} s ago</td></tr>\
                 <tr><th>expires</th><td>{3}</td></tr>",
                escape(&record.holder),
                record.epoch,
                (now - record.renewed_at).num_seconds(),
                if expired {
                    "expired".to_owned()
                } else {
                    format!("in {} s", (record.expires_at - now).num_seconds())
                }
            );
        }
        Ok(None) => out.push_str("<tr><th>holder</th><td>none (no lease taken)</td></tr>"),
        Err(e) => {
            let _ = write!(
                out,
                "<tr><th>holder</th><td class=\"error\">cannot read the lease: {}</td></tr>",
                escape(&e.to_string())
            );
        }
    }
    let status = inner
        .daemon
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let _ = write!(
        out,
        "<tr><th>this worker</th><td>{}{}, {} rounds</td></tr>",
        if status.holding { "holding" } else { "standby" },
        status
            .standby_reason
            .map(|r| format!(" ({})", escape(&r)))
            .unwrap_or_default(),
        status.rounds
    );
    for (job, error) in &status.last_errors {
        let _ = write!(
            out,
            "<tr><th>failing job</th><td class=\"error\">{}: {}</td></tr>",
            escape(job),
            escape(error)
        );
    }
    out.push_str("</table>");
}

/// The collectors' heartbeats.
async fn collectors_section(inner: &Inner, now: DateTime<Utc>, out: &mut String) {
    out.push_str("<h2>Collectors</h2>");
    match Heartbeat::read_all(inner.this.storage.as_ref(), &inner.this.name).await {
        Ok((beats, bad)) => {
            if beats.is_empty() {
                out.push_str("<p class=\"meta\">no collector heartbeat yet</p>");
            } else {
                out.push_str(
                    "<table class=\"info\" id=\"collectors\"><tr><th>collector</th><th>state</th>\
                     <th>heartbeat age</th><th>watermark</th><th>spooled bytes</th>\
                     <th>thrift</th><th>http</th></tr>",
                );
                for beat in beats {
                    let http = escape(&beat.http_addr);
                    let _ = write!(
                        out,
                        "<tr data-collector=\"{0}\"><td>{0}</td><td>{1}</td><td>{2} s</td>\
                         <td>{3}</td><td>{4}</td><td>{5}</td><td><a href=\"http://{6}/\">{6}</a></td></tr>",
                        escape(beat.collector.as_str()),
                        format!("{:?}", beat.state).to_lowercase(),
                        (now - beat.updated_at).num_seconds(),
                        beat.watermark.map(|m| m.to_string()).unwrap_or_default(),
                        beat.spooled_bytes,
                        escape(&beat.thrift_addr),
                        http
                    );
                }
                out.push_str("</table>");
            }
            for (path, reason) in bad {
                let _ = write!(
                    out,
                    "<p class=\"error\">{}: {}</p>",
                    escape(&path),
                    escape(&reason)
                );
            }
        }
        Err(e) => {
            let _ = write!(
                out,
                "<p class=\"error\">cannot read heartbeats: {}</p>",
                escape(&e.to_string())
            );
        }
    }
}

/// Every user topic of this cluster (with a local view or collector files).
async fn topics(inner: &Inner) -> Result<Vec<Topic>, conduit_core::StorageError> {
    let storage = inner.this.storage.as_ref();
    let mut topics = tree::topics(storage, View::Local).await?;
    for entry in storage.list_or_empty("data").await? {
        if let Ok(topic) = Topic::new(&entry.name) {
            if entry.is_dir {
                topics.push(topic);
            }
        }
    }
    topics.retain(|t| !t.is_system());
    topics.sort();
    topics.dedup();
    Ok(topics)
}

/// The grid of every topic.
async fn topics_section(inner: &Inner, now: DateTime<Utc>, out: &mut String) {
    out.push_str("<h2>Topics, last hour</h2>");
    out.push_str(&legend());
    let topics = match topics(inner).await {
        Ok(topics) => topics,
        Err(e) => {
            let _ = write!(
                out,
                "<p class=\"error\">cannot list topics: {}</p>",
                escape(&e.to_string())
            );
            return;
        }
    };
    if topics.is_empty() {
        out.push_str("<p class=\"meta\">no topic has data yet</p>");
        return;
    }
    let mut topics = topics;
    if topics.len() > MAX_TOPICS {
        let left: Vec<String> = topics[MAX_TOPICS..]
            .iter()
            .map(|t| escape(t.as_str()))
            .collect();
        let _ = write!(
            out,
            "<p class=\"meta\" id=\"more-topics\">the first {MAX_TOPICS} topics by name are shown; \
             {} more (<code>conduit audit --topic T --only-problems</code> shows any): {}</p>",
            left.len(),
            left.join(", ")
        );
        topics.truncate(MAX_TOPICS);
    }
    let Ok(to) = Minute::from_datetime(now) else {
        return;
    };
    let from = to.add_minutes(1 - MINUTES_SHOWN).unwrap_or(to);
    let range = AuditRange {
        from,
        to,
        now,
        settle_secs: SETTLE_SECS,
        late_secs: LATE_AFTER_SECS,
    };
    // One audit of every topic: the files they all read are read once.
    let topics: Vec<(Topic, TopicSettings)> = topics
        .into_iter()
        .map(|t| {
            let settings = inner.config.topic(&t);
            (t, settings)
        })
        .collect();
    match audit_topics(&inner.clusters, &topics, range).await {
        Ok(audits) => {
            for audit in &audits {
                grid(audit, out);
            }
        }
        Err(e) => {
            let _ = write!(
                out,
                "<p class=\"error\">cannot audit: {}</p>",
                escape(&e.to_string())
            );
        }
    }
}

/// One topic's grid: a row per tier, a column per minute.
pub fn grid(audit: &TopicAudit, out: &mut String) {
    let topic = escape(audit.topic.as_str());
    let _ = write!(
        out,
        "<section class=\"topic\" data-topic=\"{topic}\"><h3>{topic}</h3>\
         <p class=\"summary\">{}</p><div class=\"scroll\"><table class=\"grid\"><thead><tr><th class=\"label\"></th>",
        escape(&audit.summary().to_string())
    );
    for row in &audit.rows {
        let minute = row.minute.to_string();
        // `2026-12-03T19:40Z` → `19:40`.
        let short = minute.get(11..16).unwrap_or(&minute);
        let _ = write!(out, "<th title=\"{minute}\">{short}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    let tiers: Vec<&str> = audit
        .rows
        .first()
        .map(|r| r.cells.iter().map(|c| c.tier.as_str()).collect())
        .unwrap_or_default();
    for (i, tier) in tiers.iter().enumerate() {
        let tier = escape(tier);
        let _ = write!(out, "<tr><th>{tier}</th>");
        for row in &audit.rows {
            let Some(cell) = row.cells.get(i) else {
                continue;
            };
            let state = cell.state.as_str();
            let zero = if cell.count == 0 { " zero" } else { "" };
            let _ = write!(
                out,
                "<td class=\"s-{state}{zero}\" data-topic=\"{topic}\" data-minute=\"{minute}\" \
                 data-tier=\"{tier}\" data-count=\"{count}\" data-state=\"{state}\" \
                 title=\"{tier} {minute}: {count} ({state})\">{short}</td>",
                minute = row.minute,
                count = cell.count,
                short = compact(cell.count),
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div></section>");
}

/// `count` in at most 4 characters for a cell (`999`, `1.2k`, `12k`, `3.4M`);
/// the exact count is in the cell's `title` and `data-count`.
pub fn compact(count: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "k"),
    ];
    for (unit, suffix) in UNITS {
        if count >= unit {
            let tenths = count / (unit / 10);
            return if tenths < 100 {
                format!("{}.{}{suffix}", tenths / 10, tenths % 10)
            } else {
                format!("{}{suffix}", count / unit)
            };
        }
    }
    count.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_compact_in_cells() {
        let shown: Vec<String> = [0, 999, 1_000, 1_250, 12_345, 999_999, 3_400_000, u64::MAX]
            .into_iter()
            .map(compact)
            .collect();
        assert_eq!(
            shown,
            [
                "0",
                "999",
                "1.0k",
                "1.2k",
                "12k",
                "999k",
                "3.4M",
                "18446744T"
            ]
        );
    }

    #[test]
    fn the_legend_names_every_state() {
        let legend = legend();
        for state in CellState::ALL {
            assert!(
                legend.contains(&format!("class=\"s-{}\"", state.as_str())),
                "{legend}"
            );
            assert!(
                STYLE.contains(&format!(".s-{}{{", state.as_str())),
                "{state:?}"
            );
        }
    }
}
