//! `conduit tail`: print a topic's events as they arrive (PinTail).
//!
//! One event per line on stdout: `raw` writes the payload bytes and a newline;
//! `json` writes `{"payload":...,"topic":...,"cluster":...,"collector":...,
//! "minute":...,"position":{...}}` (a payload that is not UTF-8 is written with
//! U+FFFD replacements, plus `payload_base64`). Output is flushed whenever no
//! further event is ready, so a pipe sees events as they arrive. With `--group`,
//! progress is committed every second and on exit (Ctrl-C, `--to` reached), and
//! members of the same group share the topic's partitions, each owning
//! `floor(P/N)` or `ceil(P/N)` of them (`docs/pintail.md`, "Consumer groups").
//! In the local view a partition is one collector's stream, or with
//! `--partitions K` one of its `K` sub-partitions, so a group can keep more
//! members busy than there are collectors (`docs/pintail.md`, "Sub-partitions").
//! `--member-id` keeps a member's id across restarts (static membership): a
//! restarted member resumes its partitions at once instead of waiting for its
//! old lease. SIGTERM or Ctrl-C commits, hands the partitions over and leaves,
//! so the next owners deliver nothing twice. A closed pipe (`| head`) ends the
//! command quietly.
//!
//! **Only what was handed over is committed.** A position is committed only
//! after every event up to it was written *and flushed* to stdout: the commit
//! round flushes the output first, then commits what was returned before the
//! flush (the consumer's auto-commit is off, since it would count an event as
//! processed while it still sits in the output buffer). Killed at any instant
//! (`kill -9`), a restarted member of the group resumes after an event the reader
//! of the pipe was given, so nothing is lost; the events handed over since the
//! last commit (at most about a second's worth) come again.
//!
//! A corrupt frame or a damaged file (truncated, or set aside in `quarantine/`)
//! ends the command with an error naming the file and what to do, after the
//! events before it are printed; it never waits silently. `--skip-corrupt`
//! skips (and counts) them instead.
//!
//! A topic that does not exist ends the command at once (exit 1) with the topics
//! that do, unless `--wait-for-topic` asks to wait for its first event. A topic
//! *exists* when it is declared in the config (`[topics.NAME]`) or has a
//! directory in any tree of the cluster read (for `--view merged`, also of its
//! mirrors): `data/` (collector files), `streams_local/`, `streams/` or
//! `streams_hourly/`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use conduit_core::{Config, Minute, Topic, View};
use conduit_pintail::{Consumer, ConsumerBuilder, DefaultStart, Message, ReadView, StartTime};

/// Where to read: a config and cluster, or a root.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Configuration file naming the clusters.
    #[arg(long, value_name = "FILE", required_unless_present = "root")]
    pub config: Option<String>,

    /// Storage root of the cluster instead of a config: a directory,
    /// `file:///path` or `hdfs://namenode:port/path`.
    #[arg(long, value_name = "DIR|URI", conflicts_with = "config")]
    pub root: Option<String>,

    /// The cluster to read (for `merged`, the merged cluster; its mirrors from the
    /// config are used when it fails; for `mirror`, the mirror cluster).
    #[arg(long, default_value = "dc1")]
    pub cluster: String,

    /// The topic.
    #[arg(long)]
    pub topic: String,

    /// The view: `local` (live collector files, then sealed local minutes),
    /// `merged`, or `mirror`.
    #[arg(long, default_value = "local", value_parser = ["local", "merged", "mirror"])]
    pub view: String,

    /// Keep checkpoints and group leases in this local directory instead of the
    /// cluster's storage.
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<String>,

    /// Into how many partitions a group splits the topic: in `merged` and
    /// `mirror`, the view's files by name (default 16); in `local`, each
    /// collector's stream by record (default 1), so a group can keep up to
    /// collectors × N members busy. Every member of a group must give the same
    /// N (the group records it; another N is refused).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(conduit_pintail::consumer::MAX_PARTITIONS)))]
    pub partitions: Option<u32>,
}

/// Arguments of `conduit tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    source: SourceArgs,

    /// Consumer group: resume from its checkpoints, commit progress, and share
    /// partitions with the group's other members.
    #[arg(long)]
    group: Option<String>,

    /// Start (without a checkpoint): a UTC time such as `2026-11-22T10:00`, or a
    /// duration before now such as `10m`. Default: the live end.
    #[arg(long, value_name = "TIME")]
    from: Option<String>,

    /// Last minute to print (inclusive); the command exits after it.
    #[arg(long, value_name = "TIME")]
    to: Option<String>,

    /// Start at the beginning of retention instead of the live end.
    #[arg(long, conflicts_with = "from")]
    from_beginning: bool,

    /// Output format.
    #[arg(long, default_value = "raw", value_parser = ["raw", "json"])]
    format: String,

    /// Skip (and count) corrupt frames and the rest of damaged (truncated or
    /// quarantined) files instead of stopping with an error naming them.
    #[arg(long)]
    skip_corrupt: bool,

    /// With `--group`: this member's id (`[A-Za-z0-9_-]`), kept across restarts
    /// (static membership, as Kafka's `group.instance.id`): a restarted member
    /// takes its own partitions back at once instead of waiting for its old
    /// lease, and a still-running process with the same id is stopped (exit 1).
    /// Default: a new id per process (`<host>-<pid>-<random>`).
    #[arg(long, value_name = "ID", requires = "group")]
    member_id: Option<String>,

    /// With `--group`: how long a member that stops renewing (killed, paused,
    /// cut off from storage) keeps its partitions before the others take them.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, requires = "group",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_secs: u64,

    /// With `--group`: how often the member checks the group (joins, leaves,
    /// new partitions) and hands partitions over; its files are rewritten only
    /// on change and every third of the lease.
    #[arg(long, value_name = "MS", default_value_t = 500, requires = "group",
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    heartbeat_ms: u64,

    /// Wait for a topic that does not exist yet (no data in the cluster, not
    /// declared in the config) instead of exiting with the topics that exist.
    #[arg(long)]
    wait_for_topic: bool,
}

/// The consumer builder for `source`: roots, view, encoding, checkpoints.
pub async fn builder(source: &SourceArgs) -> anyhow::Result<ConsumerBuilder> {
    let topic = Topic::new(source.topic.clone()).context("bad --topic")?;
    let view: ReadView = source.view.parse()?;
    let mut b = Consumer::builder(topic.as_str()).view(view);
    if let Some(n) = source.partitions {
        b = b.partitions(n);
    }
    match (&source.config, &source.root) {
        (Some(path), _) => {
            let config = Config::load(path)?;
            let root = config.cluster_root(&source.cluster)?.to_owned();
            b = b.cluster_uri(&source.cluster, &root);
            let settings = config.topic(&topic);
            b = b.encoding(settings.encoding);
            if view == ReadView::Merged {
                for mirror in settings.mirrors.iter().filter(|m| **m != source.cluster) {
                    if let Ok(root) = config.cluster_root(mirror) {
                        b = b.cluster_uri(mirror, root);
                    }
                }
            }
        }
        (None, Some(root)) => b = b.cluster_uri(&source.cluster, root),
        (None, None) => anyhow::bail!("give --config FILE or --root DIR|URI"),
    }
    if let Some(dir) = &source.checkpoint_dir {
        b = b.checkpoint_dir(dir);
    }
    Ok(b)
}

/// Fails, naming the topics that exist, when `source.topic` does not: not declared
/// in the config and no directory in any tree (`data/`, `streams_local/`,
/// `streams/`, `streams_hourly/`) of the roots read.
async fn ensure_topic_exists(source: &SourceArgs) -> anyhow::Result<()> {
    let topic = Topic::new(source.topic.clone()).context("bad --topic")?;
    let mut roots = Vec::new();
    let mut declared: Vec<String> = Vec::new();
    match (&source.config, &source.root) {
        (Some(path), _) => {
            let config = Config::load(path)?;
            if config.topics.contains_key(topic.as_str()) {
                return Ok(());
            }
            declared = config.topics.keys().cloned().collect();
            roots.push((
                source.cluster.clone(),
                config.cluster_root(&source.cluster)?.to_owned(),
            ));
            if source.view == "merged" {
                let mirrors = config.topic(&topic).mirrors;
                for mirror in mirrors.iter().filter(|m| **m != source.cluster) {
                    if let Ok(root) = config.cluster_root(mirror) {
                        roots.push((mirror.clone(), root.to_owned()));
                    }
                }
            }
        }
        (None, Some(root)) => roots.push((source.cluster.clone(), root.clone())),
        (None, None) => anyhow::bail!("give --config FILE or --root DIR|URI"),
    }
    let mut existing = std::collections::BTreeSet::new();
    for (_, root) in &roots {
        let storage = conduit_core::open_root(root)
            .await
            .with_context(|| format!("cannot open storage root {root}"))?;
        for view in View::ALL {
            let topics = conduit_core::tree::topics(&*storage, view)
                .await
                .with_context(|| format!("listing the topics of {root}"))?;
            if topics.contains(&topic) {
                return Ok(());
            }
            existing.extend(topics);
        }
    }
    let clusters: Vec<String> = roots
        .iter()
        .map(|(name, root)| format!("{name} ({root})"))
        .collect();
    let clusters = clusters.join(", ");
    let wait = "or add --wait-for-topic to wait for its first event";
    if existing.is_empty() && declared.is_empty() {
        anyhow::bail!(
            "no topic {topic} in cluster {clusters}: no topic has data there yet; \
             publish to it first (conduit publish --topic {topic}), {wait}"
        );
    }
    let with_data: Vec<&str> = existing.iter().map(Topic::as_str).collect();
    let declared: Vec<&str> = declared.iter().map(String::as_str).collect();
    let mut known = if with_data.is_empty() {
        "no topic has data there yet".to_owned()
    } else {
        format!("topics with data there: {}", listed(&with_data, 20))
    };
    if !declared.is_empty() {
        known.push_str(&format!(
            "; declared in the config: {}",
            listed(&declared, 20)
        ));
    }
    let candidates: Vec<&str> = with_data.iter().chain(&declared).copied().collect();
    let hint = closest(topic.as_str(), &candidates)
        .map(|name| format!("did you mean {name}? "))
        .unwrap_or_default();
    anyhow::bail!("no topic {topic} in cluster {clusters}: {known}; {hint}check --topic, {wait}")
}

/// `names` joined with `, `, at most `max` of them and a count of the rest.
fn listed(names: &[&str], max: usize) -> String {
    let mut text = names[..names.len().min(max)].join(", ");
    if names.len() > max {
        text.push_str(&format!(" and {} more", names.len() - max));
    }
    text
}

/// The name of `names` closest to `typed` when it is a likely typo: at most two
/// single-character edits (insert, delete, substitute, swap) away, case ignored.
fn closest<'a>(typed: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .map(|name| {
            (
                edit_distance(&typed.to_lowercase(), &name.to_lowercase()),
                *name,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, name)| name)
}

/// Optimal string alignment distance between `a` and `b` (Levenshtein plus
/// adjacent swaps), in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Parses `--to`: an absolute minute, or a duration before now.
pub fn parse_minute(text: &str) -> anyhow::Result<Minute> {
    Ok(StartTime::parse(text)?.minute(chrono::Utc::now()))
}

fn member_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    format!("{host}-{}-{:04x}", std::process::id(), rand_u16())
}

fn rand_u16() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        & 0xffff) as u16
}

/// Runs `conduit tail`.
pub async fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    if !args.wait_for_topic {
        ensure_topic_exists(&args.source).await?;
    }
    let mut b = builder(&args.source).await?;
    b = b.skip_corrupt_frames(args.skip_corrupt);
    b = match (&args.from, args.from_beginning) {
        (Some(from), _) => b.start(StartTime::parse(from)?),
        (None, true) => b.default_start(DefaultStart::Beginning),
        (None, false) => b.default_start(DefaultStart::LiveEnd),
    };
    if let Some(to) = &args.to {
        b = b.stop(parse_minute(to)?);
    }
    if let Some(group) = &args.group {
        let member = args.member_id.clone().unwrap_or_else(member_id);
        if args.heartbeat_ms * 3 > args.lease_secs * 1000 {
            anyhow::bail!(
                "--heartbeat-ms {} is more than a third of --lease-secs {}: the member \
                 would lose its partitions between two heartbeats; lower the heartbeat \
                 or raise the lease",
                args.heartbeat_ms,
                args.lease_secs
            );
        }
        tracing::info!(group = %group, member = %member, lease_secs = args.lease_secs,
            heartbeat_ms = args.heartbeat_ms, "joining the consumer group");
        b = b
            .group(group)
            .dynamic_member(&member, Duration::from_secs(args.lease_secs))
            .heartbeat(Duration::from_millis(args.heartbeat_ms));
    }
    let mut consumer = b.build().await?;
    let json = args.format == "json";
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 << 10, stdout.lock());
    let mut commits = CommitRound::new(args.group.is_some(), COMMIT_EVERY);
    let shutdown = crate::signals::wait_for_shutdown();
    tokio::pin!(shutdown);
    let result: anyhow::Result<()> = async {
        loop {
            // Whatever is ready now goes into the buffer; flush (and commit what
            // the flush handed over) before waiting.
            let next = match consumer.next_timeout(Duration::ZERO).await? {
                Some(m) => Some(m),
                None if consumer.is_finished() => None,
                None => {
                    out.flush()?;
                    commits.commit_if_due(&mut consumer).await?;
                    let wait = commits.wait();
                    let next = async {
                        match wait {
                            Some(wait) => consumer.next_timeout(wait).await,
                            None => consumer.next().await,
                        }
                    };
                    tokio::select! {
                        m = next => match m? {
                            Some(m) => Some(m),
                            None if consumer.is_finished() => None,
                            None => continue,
                        },
                        _ = &mut shutdown => None,
                    }
                }
            };
            let Some(m) = next else {
                break;
            };
            write_event(&mut out, &m, json)?;
            commits.wrote();
            if commits.is_due() {
                out.flush()?;
                commits.commit_if_due(&mut consumer).await?;
            }
        }
        out.flush()?;
        commits.commit(&mut consumer).await?;
        Ok(())
    }
    .await;
    match result {
        Err(e) if is_broken_pipe(&e) => {
            // `| head` closed the pipe: not an error. Progress is not committed
            // beyond what was flushed before.
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => {
            // What was read before the error is printed; then the error.
            let _ = out.flush();
            return Err(e);
        }
        Ok(()) => {}
    }
    consumer.close().await?;
    Ok(ExitCode::SUCCESS)
}

/// How often a `--group` tail commits what it has flushed.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// When a `--group` tail commits: at most every [`COMMIT_EVERY`], and only right
/// after a flush of the output, so that every event returned so far (all of them
/// written before the flush) has been handed over.
#[derive(Debug)]
struct CommitRound {
    /// Whether there is a group to commit for.
    enabled: bool,
    /// How often to commit.
    every: Duration,
    /// When the last commit was made (or the tail started).
    last: std::time::Instant,
    /// Whether events were written since the last commit.
    pending: bool,
}

impl CommitRound {
    fn new(enabled: bool, every: Duration) -> CommitRound {
        CommitRound {
            enabled,
            every,
            last: std::time::Instant::now(),
            pending: false,
        }
    }

    /// An event was written to the output buffer.
    fn wrote(&mut self) {
        self.pending = self.enabled;
    }

    /// Whether a commit is due: events written and the interval passed.
    fn is_due(&self) -> bool {
        self.pending && self.last.elapsed() >= self.every
    }

    /// How long to wait for the next event before the pending commit is due
    /// (`None`: nothing pending, wait as long as it takes).
    fn wait(&self) -> Option<Duration> {
        self.pending
            .then(|| self.every.saturating_sub(self.last.elapsed()))
    }

    /// Commits when due. The output must have been flushed just before.
    async fn commit_if_due(&mut self, consumer: &mut Consumer) -> anyhow::Result<()> {
        if self.is_due() {
            self.commit(consumer).await?;
        }
        Ok(())
    }

    /// Commits every event returned so far, the last one included. The output
    /// must have been flushed just before.
    async fn commit(&mut self, consumer: &mut Consumer) -> anyhow::Result<()> {
        if self.pending {
            consumer.commit_delivered(true).await?;
            self.pending = false;
            self.last = std::time::Instant::now();
        }
        Ok(())
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn write_event(out: &mut impl Write, m: &Message, json: bool) -> std::io::Result<()> {
    if !json {
        out.write_all(&m.payload)?;
        return out.write_all(b"\n");
    }
    let mut doc = serde_json::json!({
        "payload": String::from_utf8_lossy(&m.payload),
        "topic": m.topic.as_str(),
        "cluster": m.cluster().as_str(),
        "collector": m.collector().as_str(),
        "minute": m.minute.to_string(),
        "position": m.position,
    });
    if std::str::from_utf8(&m.payload).is_err() {
        let mut encoded = Vec::new();
        if conduit_core::Encoding::Base64
            .encode_into(&m.payload, &mut encoded)
            .is_ok()
        {
            let text = String::from_utf8_lossy(&encoded);
            doc["payload_base64"] = text.trim_end_matches('\n').into();
        }
    }
    serde_json::to_writer(&mut *out, &doc)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_is_matched_to_the_closest_topic() {
        let names = ["clicks", "views", "_audit"];
        assert_eq!(closest("clikcs", &names), Some("clicks"));
        assert_eq!(closest("Clicks", &names), Some("clicks"));
        assert_eq!(closest("view", &names), Some("views"));
        assert_eq!(closest("orders", &names), None);
        assert_eq!(edit_distance("clikcs", "clicks"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn long_topic_lists_are_capped() {
        assert_eq!(listed(&["a", "b", "c"], 2), "a, b and 1 more");
        assert_eq!(listed(&["a", "b"], 2), "a, b");
    }
}
