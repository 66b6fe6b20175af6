//! The collector's status page: `GET /` on its HTTP listener.
//!
//! One server-rendered HTML page (inline CSS, no script) of what the collector
//! already knows in memory, so it costs no storage call: who it is and where it
//! listens, storage health, spool and watermark (the heartbeat's fields), open
//! connections, in-flight bytes and open data files (each beside its limit), open
//! data files by topic, and the call totals of fb303's `getCounters`. Every other path goes to the open-file routes.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use conduit_core::http::{HttpRequest, HttpResponse, Routes};
use conduit_core::text::html as escape;
use tokio::sync::watch;

use crate::engine::EngineStatus;
use crate::open::OpenRoutes;
use crate::server::Shared;

/// The collector's routes: `/` (this page) and the open-file endpoint.
#[derive(Debug)]
pub struct CollectorRoutes {
    /// The open-file endpoint.
    pub open: OpenRoutes,
    /// What connections share (identity, metrics, totals).
    pub shared: Arc<Shared>,
    /// The committer's status.
    pub status: watch::Receiver<EngineStatus>,
    /// Where the Scribe listener is.
    pub thrift_addr: String,
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin:1.2em 0 .3em}table{border-collapse:collapse}\
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:.9em}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.bad{background:#e06666;color:#fff}\
.ok{background:#b7dfb9}";

impl CollectorRoutes {
    fn page(&self) -> String {
        let s = &self.shared;
        let status = self.status.borrow().clone();
        let m = &s.metrics;
        let now = s.clock.now().timestamp();
        let name = escape(s.collector.as_str());
        let mut out = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>conduit collector {name}</title>\
             <style>{STYLE}</style></head><body><h1>conduit collector {name}</h1><table id=\"collector\">"
        );
        let mut row = |key: &str, id: &str, value: String, class: &str| {
            let _ = write!(
                out,
                "<tr><th>{key}</th><td id=\"{id}\" class=\"{class}\">{value}</td></tr>"
            );
        };
        row("cluster", "cluster", escape(s.cluster.as_str()), "");
        row("scribe (thrift)", "thrift", escape(&self.thrift_addr), "");
        row("up", "uptime", format!("{} s", now - s.started_at), "n");
        let (health, class) = if status.storage_healthy {
            ("healthy", "ok")
        } else {
            ("unhealthy: writing to the spool", "bad")
        };
        row("storage", "storage", health.to_owned(), class);
        let limits = &s.limits;
        row(
            "spooled bytes",
            "spooled",
            status.spooled_bytes.to_string(),
            "n",
        );
        row(
            "spool limit",
            "spool-limit",
            limits.spool_max_bytes.to_string(),
            "n",
        );
        row(
            "watermark",
            "watermark",
            status
                .watermark
                .map(|m| m.to_string())
                .unwrap_or_else(|| "none yet".to_owned()),
            "",
        );
        row(
            "open connections",
            "connections",
            m.open_connections.get().to_string(),
            "n",
        );
        row(
            "connection limit",
            "connection-limit",
            limits.max_connections.to_string(),
            "n",
        );
        row(
            "in-flight bytes",
            "inflight",
            m.inflight_bytes.get().to_string(),
            "n",
        );
        row(
            "in-flight limit",
            "inflight-limit",
            limits.max_inflight_bytes.to_string(),
            "n",
        );
        row(
            "open data files",
            "open-files",
            m.open_files.get().to_string(),
            "n",
        );
        row(
            "open data file limit",
            "open-file-limit",
            limits.open_files_limit().to_string(),
            "n",
        );
        let t = &s.totals;
        for (key, id, value) in [
            ("calls", "calls", &t.calls),
            ("entries", "entries", &t.entries),
            ("TRY_LATER answers", "try-later", &t.try_later),
            ("entries to _invalid", "invalid", &t.invalid),
            ("protocol errors", "protocol-errors", &t.protocol_errors),
        ] {
            row(key, id, value.load(Ordering::Relaxed).to_string(), "n");
        }
        out.push_str("</table><h2>Topics with open files</h2>");
        let by_topic = self.open.0.open_by_topic();
        if by_topic.is_empty() {
            out.push_str("<p>none</p>");
        } else {
            out.push_str("<table id=\"topics\"><tr><th>topic</th><th>open files</th></tr>");
            for (topic, n) in by_topic {
                let topic = escape(&topic);
                let _ = write!(
                    out,
                    "<tr data-topic=\"{topic}\"><td>{topic}</td><td class=\"n\">{n}</td></tr>"
                );
            }
            out.push_str("</table>");
        }
        out.push_str("</body></html>");
        out
    }
}

impl Routes for CollectorRoutes {
    fn handle<'a, 'b>(
        &'a self,
        req: HttpRequest,
    ) -> Pin<Box<dyn Future<Output = Option<HttpResponse>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        if req.path == "/" {
            let mut response = HttpResponse::text(200, self.page());
            response.content_type = "text/html; charset=utf-8";
            let response = response.with_header("cache-control", "no-store");
            return Box::pin(async move { Some(response) });
        }
        self.open.handle(req)
    }
}
