//! Which connections the collector serves: at most `max_connections` in all and
//! `max_connections_per_ip` per client address, and who makes room at a limit.
//!
//! At a limit the newcomer is not simply refused: the connection idle the longest
//! (no call in progress, nothing read or answered for at least [`EVICT_MIN_IDLE`])
//! is closed to make room for it, as nginx closes idle keep-alive connections when
//! it runs out. Idle clients reconnect when they next have something to send;
//! clients that connect and never send (or send once and sit) can no longer keep
//! everyone else out. Only when no connection is idle is the newcomer refused, with
//! a courtesy: it is answered once (`TRY_LATER` for a call) so that its client
//! backs off instead of hanging. At most [`COURTESY_MAX`] such connections are open
//! at once; beyond that a refused connection is closed at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::reasons::ConnectionError;

/// How long a connection must have been idle before it may be closed to make room
/// for a newcomer: a client between two calls is not idle.
pub const EVICT_MIN_IDLE: Duration = Duration::from_secs(1);

/// Refused connections kept open at once to be answered once; further refused
/// connections are closed at once.
pub const COURTESY_MAX: usize = 64;

/// The open connections and their limits.
#[derive(Debug)]
pub struct Admission {
    /// `max_connections`.
    max: usize,
    /// `max_connections_per_ip`.
    max_per_ip: usize,
    /// Origin of [`Activity::last_active_ms`].
    epoch: Instant,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// Id of the next connection.
    next_id: u64,
    /// The served connections.
    open: HashMap<u64, Arc<Activity>>,
    /// Served connections per client address.
    per_ip: HashMap<IpAddr, usize>,
    /// Refused connections still open to be answered once.
    courtesy: usize,
}

/// What a served connection's tasks report, and how it is told it was evicted.
#[derive(Debug)]
pub struct Activity {
    id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// Calls started (their first byte read) and not yet answered.
    calls: AtomicU32,
    /// When a byte was last read or a reply last written, in ms since
    /// [`Admission::epoch`].
    last_active_ms: AtomicU64,
    /// Origin of `last_active_ms`.
    epoch: Instant,
    /// Notified once the connection is evicted.
    evicted: Notify,
}

/// What becomes of a new connection.
#[derive(Debug)]
pub enum Admitted {
    /// Served until the slot is dropped. `evicted` is the connection closed to make
    /// room for it, if any (and how long it had been idle).
    Served {
        /// The connection's place, given back when dropped.
        slot: Slot,
        /// The idle connection closed to make room, and how long it had been idle.
        evicted: Option<(SocketAddr, Duration)>,
    },
    /// Over a limit: answered once while the courtesy is held, then closed; with no
    /// courtesy ([`COURTESY_MAX`] reached), closed at once.
    Refused {
        /// Which limit.
        reason: ConnectionError,
        /// The courtesy held while the refusal is answered, if any.
        courtesy: Option<Courtesy>,
    },
}

/// A served connection's place in the table, given up when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    /// What the connection reports.
    pub activity: Arc<Activity>,
}

/// A refused connection's place among those answered once, given up when dropped.
#[derive(Debug)]
pub struct Courtesy {
    admission: Arc<Admission>,
}

impl Admission {
    /// At most `max` connections in all and `max_per_ip` per client address.
    pub fn new(max: usize, max_per_ip: usize) -> Arc<Admission> {
        Self::with_epoch(max, max_per_ip, Instant::now())
    }

    /// [`Admission::new`] measuring activity from `epoch`.
    fn with_epoch(max: usize, max_per_ip: usize, epoch: Instant) -> Arc<Admission> {
        Arc::new(Admission {
            max,
            max_per_ip,
            epoch,
            table: Mutex::new(Table::default()),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Served connections.
    pub fn open(&self) -> usize {
        self.table().open.len()
    }

    /// Admits a connection from `peer`, evicting the longest idle one at a limit.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Admitted {
        let ip = peer.ip().to_canonical();
        let now = Instant::now();
        let mut table = self.table();
        let mut evicted = None;
        let from_ip = table.per_ip.get(&ip).copied().unwrap_or(0);
        let over = if from_ip >= self.max_per_ip {
            Some(ConnectionError::MaxConnectionsPerIp)
        } else if table.open.len() >= self.max {
            Some(ConnectionError::MaxConnections)
        } else {
            None
        };
        if let Some(reason) = over {
            let same_ip = reason == ConnectionError::MaxConnectionsPerIp;
            let victim = table
                .open
                .values()
                .filter(|a| !same_ip || a.peer.ip().to_canonical() == ip)
                .filter_map(|a| a.idle_for(now).map(|idle| (idle, a)))
                .filter(|(idle, _)| *idle >= EVICT_MIN_IDLE)
                .max_by_key(|(idle, a)| (*idle, std::cmp::Reverse(a.id)))
                .map(|(idle, a)| (idle, a.clone()));
            match victim {
                Some((idle, victim)) => {
                    table.remove(&victim);
                    victim.evicted.notify_one();
                    evicted = Some((victim.peer, idle));
                }
                None => {
                    let courtesy = (table.courtesy < COURTESY_MAX).then(|| {
                        table.courtesy += 1;
                        Courtesy {
                            admission: self.clone(),
                        }
                    });
                    return Admitted::Refused { reason, courtesy };
                }
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let activity = Arc::new(Activity {
            id,
            peer,
            calls: AtomicU32::new(0),
            last_active_ms: AtomicU64::new(0),
            epoch: self.epoch,
            evicted: Notify::new(),
        });
        activity.touch();
        table.open.insert(id, activity.clone());
        *table.per_ip.entry(ip).or_default() += 1;
        Admitted::Served {
            slot: Slot {
                admission: self.clone(),
                activity,
            },
            evicted,
        }
    }
}

impl Table {
    /// Forgets a served connection (evicted, or closed).
    fn remove(&mut self, activity: &Activity) {
        if self.open.remove(&activity.id).is_none() {
            return;
        }
        let ip = activity.peer.ip().to_canonical();
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

impl Activity {
    /// A byte was read or a reply written.
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// The first byte of a call arrived.
    pub fn call_started(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// A call was answered (or needs no answer).
    pub fn call_answered(&self) {
        self.calls.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// How long the connection has been idle at `now`; `None` while a call is in
    /// progress.
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.calls.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = self.epoch + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
        Some(now.saturating_duration_since(last))
    }

    /// Resolves once the connection has been evicted (at once if it already was).
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.table().remove(&self.activity);
    }
}

impl Drop for Courtesy {
    fn drop(&mut self) {
        self.admission.table().courtesy -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Limits measuring activity from an hour ago, so that a test can make a
    /// connection look idle for up to an hour.
    fn admission(max: usize, max_per_ip: usize) -> Arc<Admission> {
        let epoch = Instant::now() - Duration::from_secs(3600);
        Admission::with_epoch(max, max_per_ip, epoch)
    }

    fn addr(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    fn served(a: Admitted) -> (Slot, Option<(SocketAddr, Duration)>) {
        match a {
            Admitted::Served { slot, evicted } => (slot, evicted),
            Admitted::Refused { reason, .. } => panic!("refused: {reason:?}"),
        }
    }

    /// Makes a connection look idle for `idle`.
    fn idle(slot: &Slot, idle: Duration) {
        let ms = slot
            .activity
            .epoch
            .elapsed()
            .saturating_sub(idle)
            .as_millis() as u64;
        slot.activity.last_active_ms.store(ms, Ordering::Relaxed);
    }

    #[test]
    fn at_the_limit_the_longest_idle_connection_makes_room() {
        let admission = admission(3, 10);
        let (a, _) = served(admission.admit(addr("10.0.0.1", 1)));
        let (b, _) = served(admission.admit(addr("10.0.0.2", 1)));
        let (c, _) = served(admission.admit(addr("10.0.0.3", 1)));
        idle(&a, Duration::from_secs(5));
        idle(&b, Duration::from_secs(50));
        idle(&c, Duration::from_secs(500));
        c.activity.call_started();
        // c is busy: b, idle the longest of the others, goes.
        let (d, evicted) = served(admission.admit(addr("10.0.0.4", 1)));
        assert_eq!(evicted.unwrap().0, b.activity.peer);
        assert!(
            futures::FutureExt::now_or_never(b.activity.evicted()).is_some(),
            "b is told"
        );
        assert_eq!(admission.open(), 3);
        drop(b);
        assert_eq!(
            admission.open(),
            3,
            "dropping an evicted slot frees nothing"
        );
        // Nobody idle long enough: refused, with a courtesy answer.
        idle(&a, Duration::ZERO);
        match admission.admit(addr("10.0.0.5", 1)) {
            Admitted::Refused {
                reason: ConnectionError::MaxConnections,
                courtesy: Some(_),
            } => {}
            other => panic!("{other:?}"),
        }
        drop((a, c, d));
        assert_eq!(admission.open(), 0);
    }

    #[test]
    fn per_ip_limit_evicts_only_from_that_address_and_courtesies_are_bounded() {
        let admission = admission(100, 2);
        let (other, _) = served(admission.admit(addr("10.0.0.9", 1)));
        idle(&other, Duration::from_secs(900));
        let (a, _) = served(admission.admit(addr("::ffff:10.0.0.1", 1)));
        let (b, _) = served(admission.admit(addr("10.0.0.1", 2)));
        idle(&a, Duration::from_secs(9));
        let (_c, evicted) = served(admission.admit(addr("10.0.0.1", 3)));
        assert_eq!(
            evicted.unwrap().0,
            a.activity.peer,
            "IPv4-mapped addresses count as IPv4"
        );
        b.activity.call_started();
        let mut kept = Vec::new();
        for port in 0..COURTESY_MAX as u16 + 1 {
            match admission.admit(addr("10.0.0.1", 100 + port)) {
                Admitted::Refused {
                    reason: ConnectionError::MaxConnectionsPerIp,
                    courtesy,
                } => kept.push(courtesy),
                other => panic!("{other:?}"),
            }
        }
        assert!(kept[..COURTESY_MAX].iter().all(Option::is_some));
        assert!(
            kept[COURTESY_MAX].is_none(),
            "closed at once beyond the bound"
        );
        kept.clear();
        assert!(matches!(
            admission.admit(addr("10.0.0.1", 7)),
            Admitted::Refused {
                courtesy: Some(_),
                ..
            }
        ));
    }
}
