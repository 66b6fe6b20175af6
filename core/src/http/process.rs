//! Metrics every conduit process exposes about itself, read at each scrape:
//! the standard `process_*` metrics of the Prometheus client libraries (from
//! `/proc/self`, so on Linux only; elsewhere they are absent) and
//! `conduit_build_info{version, rustc} 1`.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `process_cpu_seconds_total` | counter | user and system CPU time |
//! | `process_resident_memory_bytes` | gauge | resident set size (`VmRSS`) |
//! | `process_virtual_memory_bytes` | gauge | virtual memory size |
//! | `process_open_fds` | gauge | open file descriptors |
//! | `process_max_fds` | gauge | the open-file limit (soft) |
//! | `process_start_time_seconds` | gauge | start time, Unix seconds |
//! | `conduit_build_info` | gauge | 1, labelled with the version and the compiler |

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::SharedRegistry;

/// The version of conduit this binary was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The compiler that built it (`rustc --version`, captured by `build.rs`).
pub const RUSTC: &str = env!("CONDUIT_RUSTC_VERSION");

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, 100 on every
/// architecture Linux runs conduit on.
const TICKS_PER_SECOND: f64 = 100.0;

/// Registers the process metrics and the build info in `registry` (once per
/// process, beside its own metrics).
pub fn register_process_metrics(registry: &SharedRegistry) {
    registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .register_collector(Box::new(ProcessCollector));
}

/// Reads `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self` says.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    open_fds: i64,
    max_fds: Option<i64>,
    start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// The stats of this process, `None` where `/proc` is not there.
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
        let mut stats = ProcessStats::parse(&stat, &status, &limits, &boot)?;
        stats.open_fds = open_fds;
        Some(stats)
    }

    /// Parses `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits` and
    /// `/proc/stat` (for the boot time).
    fn parse(stat: &str, status: &str, limits: &str, boot: &str) -> Option<ProcessStats> {
        // Fields after the command name, which is in parentheses and may hold
        // spaces: state is field 3, utime 14, stime 15, starttime 22, vsize 23.
        let after = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let ticks = field(14)? + field(15)?;
        let resident_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
            .unwrap_or(0);
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok());
        let boot_time = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        Some(ProcessStats {
            cpu_seconds: ticks as f64 / TICKS_PER_SECOND,
            resident_bytes: resident_kib * 1024,
            virtual_bytes: field(23).map_or(0, |v| v as i64),
            open_fds: 0,
            max_fds,
            start_time_seconds: boot_time
                .zip(field(22))
                .map(|(boot, start)| boot as f64 + start as f64 / TICKS_PER_SECOND),
        })
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = ConstGauge::new(1i64);
        let labels = [("version", VERSION), ("rustc", RUSTC)];
        info.encode(
            encoder
                .encode_descriptor(
                    "conduit_build_info",
                    "1, labelled with the version of conduit and the rustc that built it",
                    None,
                    info.metric_type(),
                )?
                .encode_family(&labels)?,
        )?;
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let mut gauges = vec![
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stats.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stats.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                stats.open_fds as f64,
            ),
        ];
        if let Some(max) = stats.max_fds {
            gauges.push((
                "process_max_fds",
                "Maximum number of open file descriptors (soft limit)",
                max as f64,
            ));
        }
        if let Some(start) = stats.start_time_seconds {
            gauges.push((
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                start,
            ));
        }
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc() {
        let stat =
            "4242 (conduit (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 12345 678900 77";
        let status = "Name:\tconduit\nVmRSS:\t   2048 kB\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 4096                 files\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\n";
        let stats = ProcessStats::parse(stat, status, limits, boot).unwrap();
        assert_eq!(
            stats,
            ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 2 * 1024 * 1024,
                virtual_bytes: 678_900,
                open_fds: 0,
                max_fds: Some(1024),
                start_time_seconds: Some(1_700_000_123.45),
            }
        );
    }

    #[test]
    fn reads_this_process() {
        let stats = ProcessStats::read().expect("/proc on linux");
        assert!(stats.resident_bytes > 0 && stats.open_fds > 0, "{stats:?}");
        let start = stats.start_time_seconds.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
    }
}
