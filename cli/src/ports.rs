//! Whether a TCP port is free, and if not, which process listens on it.
//!
//! [`busy`] bind-probes an address (the listener is dropped at once). [`holder`]
//! finds the process listening on a port the way `ss -ltnp` does on Linux: the
//! socket's inode from `/proc/net/tcp{,6}` (state `0A`, LISTEN), then the
//! process with a `socket:[inode]` descriptor in `/proc/<pid>/fd/`, with its
//! command line and its parent's (a `conduit up` shows as the parent of its
//! collectors and workers). Only processes this user may inspect are found;
//! elsewhere (or without `/proc`) it is `None`.

use std::io::ErrorKind;
use std::path::Path;

/// A process found listening on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid.
    pub pid: u32,
    /// Its command line, arguments joined with spaces.
    pub command: String,
    /// Its parent's pid and command line, when readable.
    pub parent: Option<(u32, String)>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.command)?;
        if let Some((pid, command)) = &self.parent {
            write!(f, ", started by pid {pid} ({command})")?;
        }
        Ok(())
    }
}

/// `Some(error)` when `addr` cannot be bound (in use, or not an address of this
/// host); `None` when it is free.
pub fn busy(addr: &str) -> Option<std::io::Error> {
    std::net::TcpListener::bind(addr).err()
}

/// Whether a bind error means someone else listens there.
pub fn in_use(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::AddrInUse
}

/// The process listening on TCP `port` (any local address), if it can be found.
pub fn holder(port: u16) -> Option<Holder> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .find_map(|table| listening_inode(&table, port))?;
    let target = format!("socket:[{inode}]");
    let pid = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|link| link == Path::new(&target))
                })
        })?;
    let parent = parent_pid(pid)
        .filter(|&p| p > 1)
        .and_then(|p| Some((p, command_line(p)?)));
    Some(Holder {
        pid,
        command: command_line(pid).unwrap_or_else(|| "?".to_owned()),
        parent,
    })
}

/// The inode of the socket listening on `port` in a `/proc/net/tcp` table.
fn listening_inode(table: &str, port: u16) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1)?;
        let state = fields.get(3)?;
        let inode = fields.get(9)?.parse::<u64>().ok()?;
        let (_, hex_port) = local.rsplit_once(':')?;
        let listening = *state == "0A" && u16::from_str_radix(hex_port, 16).ok()? == port;
        (listening && inode != 0).then_some(inode)
    })
}

fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!args.is_empty()).then(|| args.join(" "))
}

fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_socket_of_a_port_is_found() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:05B7 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 100 0 0 10 0\n   \
            1: 0100007F:05B7 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inode(table, 1463), Some(4242));
        assert_eq!(listening_inode(table, 1464), None);
    }

    #[test]
    fn this_process_is_found_listening() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let e = busy(&addr.to_string()).expect("the port is taken");
        assert!(in_use(&e), "{e}");
        if Path::new("/proc/net/tcp").exists() {
            let found = holder(addr.port()).expect("this process holds it");
            assert_eq!(found.pid, std::process::id());
        }
        drop(listener);
        assert!(busy(&addr.to_string()).is_none());
    }
}
