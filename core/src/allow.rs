//! Which client networks may connect: `collector.allow_networks`.
//!
//! An [`AllowList`] is a list of networks in CIDR form (`10.0.0.0/8`,
//! `fd00::/8`; a bare address such as `192.0.2.7` stands for that one host), as
//! nginx's `allow` directives are. Empty, the default, allows every address. A
//! peer is checked at accept, before anything is read from it; an IPv4 peer seen
//! on an IPv6 socket (`::ffff:10.1.2.3`) is checked as the IPv4 address it is.
//! Parsing uses [`ipnet`], so every form a CIDR may take is read the one way.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// A network of the list that is not a network.
#[derive(Debug, thiserror::Error)]
#[error("{value:?} is not a network like 10.0.0.0/8, fd00::/8 or 192.0.2.7")]
pub struct AllowListError {
    /// The offending entry, as given.
    pub value: String,
}

/// The client networks allowed to connect; empty allows everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<IpNet>,
}

impl AllowList {
    /// Parses every entry of `networks`, naming the first that is not a network.
    pub fn parse<S: AsRef<str>>(networks: &[S]) -> Result<AllowList, AllowListError> {
        let networks = networks
            .iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                IpNet::from_str(entry)
                    .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| AllowListError {
                        value: entry.to_owned(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(AllowList { networks })
    }

    /// Whether every address is allowed (the list is empty).
    pub fn is_open(&self) -> bool {
        self.networks.is_empty()
    }

    /// Whether a client at `ip` may connect.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.is_open() || self.networks.iter().any(|net| net.contains(&ip))
    }
}

impl fmt::Display for AllowList {
    /// As log lines name the limit: `10.0.0.0/8,fd00::/8` (`any` when empty).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_open() {
            return f.write_str("any");
        }
        for (i, net) in self.networks.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_allows_everyone() {
        let list = AllowList::parse::<&str>(&[]).unwrap();
        assert!(list.allows(ip("127.0.0.1")));
        assert!(list.allows(ip("::1")));
        assert_eq!(list.to_string(), "any");
    }

    #[test]
    fn networks_of_both_families_and_single_hosts() {
        let list = AllowList::parse(&["10.0.0.0/8", "fd00::/8", "192.0.2.7"]).unwrap();
        assert!(list.allows(ip("10.200.3.4")));
        assert!(list.allows(ip("fd12::1")));
        assert!(list.allows(ip("192.0.2.7")));
        assert!(!list.allows(ip("192.0.2.8")));
        assert!(!list.allows(ip("127.0.0.1")));
        assert!(!list.allows(ip("::1")));
        assert_eq!(list.to_string(), "10.0.0.0/8,fd00::/8,192.0.2.7/32");
    }

    #[test]
    fn ipv4_peers_on_an_ipv6_socket_are_checked_as_ipv4() {
        let list = AllowList::parse(&["127.0.0.0/8"]).unwrap();
        assert!(list.allows(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn host_bits_are_ignored() {
        let list = AllowList::parse(&["10.1.2.3/8"]).unwrap();
        assert!(list.allows(ip("10.9.9.9")));
        assert_eq!(list.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn a_bad_entry_is_named() {
        for bad in ["10.0.0.0/33", "10.0.0", "example.com", "", "fd00::/129"] {
            let err = AllowList::parse(&["127.0.0.0/8", bad]).unwrap_err();
            assert_eq!(err.value, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
