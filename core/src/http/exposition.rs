//! `/metrics` formats: which one a scraper asked for, and the classic text
//! format made from the OpenMetrics text `prometheus-client` encodes.
//!
//! Prometheus client libraries serve the classic text format (`text/plain;
//! version=0.0.4`) unless the `Accept` header prefers OpenMetrics
//! (`application/openmetrics-text`); [`negotiate`] does the same, weighing the
//! media ranges by their `q`. The Prometheus server asks for OpenMetrics first;
//! `curl` and `promtool check metrics` get the classic format.
//!
//! The two formats differ, for what conduit registers, in: a counter's family is
//! named without `_total` in OpenMetrics and with it in the classic format (its
//! samples are `_total` in both); an info family is `_info`-suffixed and a
//! gauge in the classic format; `unknown` is `untyped`; `# UNIT` and `# EOF` do
//! not exist in the classic format; `HELP` escapes `"` only in OpenMetrics.
//! [`to_classic`] rewrites exactly these.

/// The classic text format's content type.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A format of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Classic,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

/// The format an `Accept` header asks for: OpenMetrics when it accepts
/// `application/openmetrics-text` with a higher `q` than `text/plain` (or
/// without `text/plain` at all), the classic format otherwise, and when there
/// is no header. Among ranges of equal `q`, the first wins.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Classic;
    };
    let mut best: Option<(f32, Format)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let format = match media.as_str() {
            "application/openmetrics-text" => Format::OpenMetrics,
            "text/plain" | "text/*" | "*/*" => Format::Classic,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, format));
        }
    }
    best.map_or(Format::Classic, |(_, format)| format)
}

/// The classic text format of `openmetrics`, the OpenMetrics text
/// `prometheus_client::encoding::text::encode` wrote.
pub fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + openmetrics.len() / 16);
    // The family whose HELP was read: its OpenMetrics name and help text,
    // written once its TYPE says what the classic name is.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (classic, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_owned(), "untyped"),
                "stateset" => (name.to_owned(), "gauge"),
                "gaugehistogram" => (name.to_owned(), "histogram"),
                other => (name.to_owned(), other),
            };
            if let Some((_, text)) = help.take().filter(|(h, _)| *h == name) {
                out.push_str("# HELP ");
                out.push_str(&classic);
                out.push(' ');
                push_classic_help(&mut out, text);
                out.push('\n');
            }
            out.push_str("# TYPE ");
            out.push_str(&classic);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            // A sample; an exemplar (` # {...}`) has no classic form.
            let sample = match line.find(" # {") {
                Some(at) => &line[..at],
                None => line,
            };
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

/// An OpenMetrics HELP text in the classic escaping (`\\` and `\n`; a quote is
/// itself).
fn push_classic_help(out: &mut String, text: &str) {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_the_client_libraries() {
        assert_eq!(negotiate(None), Format::Classic);
        assert_eq!(negotiate(Some("*/*")), Format::Classic);
        assert_eq!(negotiate(Some("text/plain")), Format::Classic);
        assert_eq!(
            negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        // Prometheus configured to prefer the classic format.
        let classic_first =
            "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5";
        assert_eq!(negotiate(Some(classic_first)), Format::Classic);
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0, text/plain")),
            Format::Classic
        );
        assert_eq!(negotiate(Some("application/json")), Format::Classic);
    }

    #[test]
    fn rewrites_what_differs_between_the_formats() {
        let om = "# HELP requests Requests \\\"served\\\" \\\\ all.\n# TYPE requests counter\nrequests_total{path=\"/a\"} 3\n# HELP build Build.\n# TYPE build info\nbuild_info{version=\"1\"} 1\n# HELP up_seconds Up.\n# TYPE up_seconds gauge\n# UNIT up_seconds seconds\nup_seconds 5 # {trace=\"x\"} 1\n# EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP requests_total Requests \"served\" \\\\ all.\n# TYPE requests_total counter\nrequests_total{path=\"/a\"} 3\n# HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{version=\"1\"} 1\n# HELP up_seconds Up.\n# TYPE up_seconds gauge\nup_seconds 5\n"
        );
    }
}
