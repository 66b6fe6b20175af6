//! Opening a TCP connection to a collector, and why it failed.
//!
//! A failed attempt has one [`ConnectCause`]: the name did not resolve (DNS),
//! the host refused the connection (nothing listens on that port), the attempt
//! timed out (a firewall dropping packets, a host that is down), or another
//! socket error. The runner keeps, per collector, the last failure and how many
//! attempts in a row failed ([`ConnectError`]) until a connection succeeds;
//! [`crate::Publisher::connect_errors`] returns them so an application (or
//! `conduit publish`) can say which address fails and why instead of only that
//! events are not acknowledged.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Why one connection attempt to a collector failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectCause {
    /// The address did not resolve (the lookup's error).
    Dns(String),
    /// The host answered with a reset: nothing listens on that port.
    Refused,
    /// No answer within the connect timeout (this long).
    TimedOut(Duration),
    /// Another socket error (its text, e.g. `Network is unreachable`).
    Other(String),
}

impl fmt::Display for ConnectCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectCause::Dns(e) => write!(f, "DNS lookup failed ({e})"),
            ConnectCause::Refused => f.write_str("connection refused"),
            ConnectCause::TimedOut(after) => {
                write!(f, "timed out after {:.1} s", after.as_secs_f64())
            }
            ConnectCause::Other(e) => f.write_str(e),
        }
    }
}

impl ConnectCause {
    /// The cause of a failed `connect` call.
    fn of(e: &std::io::Error, timeout: Duration) -> ConnectCause {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectCause::Refused,
            std::io::ErrorKind::TimedOut => ConnectCause::TimedOut(timeout),
            _ => ConnectCause::Other(e.to_string()),
        }
    }
}

/// A collector the publisher could not connect to: its address, the cause of the
/// last attempt and how many attempts in a row failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot connect to collector {collector}: {cause} ({attempts} {tries})", tries = if *.attempts == 1 { "try" } else { "tries" })]
pub struct ConnectError {
    /// The collector's address, as given.
    pub collector: String,
    /// Why the last attempt failed.
    pub cause: ConnectCause,
    /// Failed attempts since the last successful connection to any collector.
    pub attempts: u64,
}

/// Resolves `addr` and connects to it, each step within `timeout` (a lookup that
/// does not answer in time is a DNS failure, not a connect timeout).
pub(crate) async fn open(addr: &str, timeout: Duration) -> Result<TcpStream, ConnectCause> {
    let addrs: Vec<SocketAddr> = tokio::time::timeout(timeout, tokio::net::lookup_host(addr))
        .await
        .map_err(|_| ConnectCause::Dns(format!("no answer within {:.1} s", timeout.as_secs_f64())))?
        .map_err(|e| ConnectCause::Dns(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(ConnectCause::Dns("no address".to_owned()));
    }
    tokio::time::timeout(timeout, TcpStream::connect(&addrs[..]))
        .await
        .map_err(|_| ConnectCause::TimedOut(timeout))?
        .map_err(|e| ConnectCause::of(&e, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_nobody_listens_on_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let cause = open(&addr, Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(cause, ConnectCause::Refused);
        assert_eq!(cause.to_string(), "connection refused");
    }

    #[tokio::test]
    async fn a_listener_that_never_accepts_times_out() {
        // A backlog of 0 holds one connection the listener never accepts; the
        // kernel drops the SYNs of the next ones, so they time out.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let timeout = Duration::from_millis(300);
        let mut held = Vec::new();
        let cause = loop {
            match open(&addr, timeout).await {
                Ok(stream) if held.len() < 16 => held.push(stream),
                Ok(_) => panic!("{} connections accepted into a backlog of 0", held.len()),
                Err(cause) => break cause,
            }
        };
        assert_eq!(cause, ConnectCause::TimedOut(timeout));
        assert_eq!(cause.to_string(), "timed out after 0.3 s");
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_a_dns_failure() {
        // `.invalid` never resolves (RFC 2606).
        let cause = open("collector.invalid:1463", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&cause, ConnectCause::Dns(_)),
            "expected a DNS failure, got {cause:?}"
        );
        assert!(
            cause.to_string().starts_with("DNS lookup failed"),
            "{cause}"
        );
    }

    #[test]
    fn errors_name_the_address_the_cause_and_the_tries() {
        let e = ConnectError {
            collector: "10.0.0.7:1463".to_owned(),
            cause: ConnectCause::TimedOut(Duration::from_secs(2)),
            attempts: 3,
        };
        assert_eq!(
            e.to_string(),
            "cannot connect to collector 10.0.0.7:1463: timed out after 2.0 s (3 tries)"
        );
        let once = ConnectError {
            attempts: 1,
            cause: ConnectCause::Refused,
            ..e
        };
        assert_eq!(
            once.to_string(),
            "cannot connect to collector 10.0.0.7:1463: connection refused (1 try)"
        );
    }
}
