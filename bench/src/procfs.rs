//! What `/proc` says about a process (Linux): CPU time, resident memory, peak
//! resident memory and open file descriptors, and the machine's load average.
//!
//! Every reader returns `None` when the process is gone or the entry cannot be
//! parsed: a benchmark reports "n/a" rather than failing on a missing sample.

/// A process whose `/proc` entry is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// Another process, by pid (a child: a collector, a worker, nats-server).
    Pid(u32),
    /// This process (`/proc/self`).
    Own,
}

impl Process {
    fn entry(self, name: &str) -> String {
        match self {
            Process::Pid(pid) => format!("/proc/{pid}/{name}"),
            Process::Own => format!("/proc/self/{name}"),
        }
    }
}

/// utime + stime, in seconds.
pub fn cpu_seconds(process: Process) -> Option<f64> {
    parse_stat_cpu(&std::fs::read_to_string(process.entry("stat")).ok()?)
}

/// utime + stime in seconds from the text of `/proc/<pid>/stat`.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // Fields after "pid (comm)" (comm may hold spaces and parentheses): state is
    // field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...), in KiB.
fn status_kib(process: Process, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(process.entry("status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size (`VmRSS`), in KiB.
pub fn rss_kib(process: Process) -> Option<u64> {
    status_kib(process, "VmRSS")
}

/// Peak resident set size (`VmHWM`), in MiB.
pub fn peak_rss_mib(process: Process) -> Option<f64> {
    status_kib(process, "VmHWM").map(|kib| kib as f64 / 1024.0)
}

/// Open file descriptors (entries of `/proc/<pid>/fd`).
pub fn open_fds(process: Process) -> Option<u64> {
    Some(std::fs::read_dir(process.entry("fd")).ok()?.count() as u64)
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` shows them (empty if
/// unreadable).
pub fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_parses_after_the_command_name() {
        let stat = "1234 (conduit (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0";
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(parse_stat_cpu(stat), Some(300.0 / ticks));
    }

    #[test]
    fn this_process_has_memory_descriptors_and_cpu() {
        assert!(rss_kib(Process::Own).is_some_and(|k| k > 0));
        assert!(peak_rss_mib(Process::Own).is_some_and(|m| m > 0.0));
        assert!(open_fds(Process::Own).is_some_and(|n| n >= 3));
        assert!(cpu_seconds(Process::Own).is_some());
        assert_eq!(load_avg().split(' ').count(), 3);
    }
}
