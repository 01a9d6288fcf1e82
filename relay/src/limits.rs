//! Connections per client address (`--max-connections-per-ip`).
//!
//! [`ConnectionsPerIp`] counts open connections by client and hands out an
//! [`IpPermit`] per connection; dropping the permit gives the place back,
//! and an address whose count reaches zero is removed, so the map holds
//! only addresses with connections open now, however many clients came
//! and went. The accept loop takes a permit beside its global one and
//! holds it for the connection's life.
//!
//! What counts as one client ([`Client`]):
//! - an IPv4 address (an IPv4-mapped IPv6 address counts as IPv4);
//! - an IPv6 /64 network, since one host commonly holds a whole /64 and
//!   could otherwise open the limit once per address;
//! - loopback addresses are not counted ([`ConnectionsPerIp::new`]):
//!   behind a reverse proxy on the same machine (the set-up
//!   `docs/operations.md` recommends) every connection comes from
//!   loopback, and counting them would cap the whole relay at the
//!   per-address limit. Limit per client at the proxy then.
//!   [`ConnectionsPerIp::counting_loopback`] counts them (tests).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// The default of `--max-connections-per-ip`: enough for a household or a
/// small office behind one NAT address, far below `--max-connections`.
pub const DEFAULT_MAX_PER_IP: usize = 64;

/// One client as far as the limit is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// The /64 network of an IPv6 address (its first 64 bits).
    V6Net(u64),
}

impl Client {
    /// The client an address belongs to.
    pub fn of(ip: IpAddr) -> Client {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Client::V4(v4),
            IpAddr::V6(v6) => Client::V6Net((v6.to_bits() >> 64) as u64),
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::V4(v4) => write!(f, "{v4}"),
            Client::V6Net(net) => {
                let network = Ipv6Addr::from_bits(u128::from(*net) << 64);
                write!(f, "{network}/64")
            }
        }
    }
}

/// A connection refused because its client already has the most
/// connections one client may have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{client} already has {max} connections open, the most one address may have")]
pub struct TooManyFromClient {
    /// The client.
    pub client: Client,
    /// `--max-connections-per-ip`.
    pub max: usize,
}

/// Open connections per client; cheap to clone (one shared count).
#[derive(Debug, Clone)]
pub struct ConnectionsPerIp {
    /// The counts, shared with every permit.
    inner: Arc<Counts>,
}

/// The shared state behind [`ConnectionsPerIp`].
#[derive(Debug)]
struct Counts {
    /// Most connections per client; 0 means no limit (nothing is counted).
    max: usize,
    /// Whether loopback addresses count (not behind a same-host proxy).
    count_loopback: bool,
    /// Open connections of each client that has at least one.
    open: Mutex<HashMap<Client, usize>>,
}

impl ConnectionsPerIp {
    /// A limit of `max` connections per client, loopback not counted; 0
    /// turns the limit off.
    pub fn new(max: usize) -> Self {
        Self::build(max, false)
    }

    /// Like [`ConnectionsPerIp::new`], counting loopback addresses too:
    /// for a relay whose loopback clients are real clients (a test on
    /// `127.0.0.1`), never behind a proxy on the same machine.
    pub fn counting_loopback(max: usize) -> Self {
        Self::build(max, true)
    }

    fn build(max: usize, count_loopback: bool) -> Self {
        ConnectionsPerIp {
            inner: Arc::new(Counts {
                max,
                count_loopback,
                open: Mutex::default(),
            }),
        }
    }

    /// The client `ip` is counted as, or `None` if it is not counted.
    fn counted(&self, ip: IpAddr) -> Option<Client> {
        let counted =
            self.inner.max > 0 && (self.inner.count_loopback || !ip.to_canonical().is_loopback());
        counted.then(|| Client::of(ip))
    }

    /// A place for one more connection from `ip`, or the refusal if its
    /// client is at the limit. Loopback (unless counted), and every
    /// address when the limit is off, always get an uncounted place.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<IpPermit, TooManyFromClient> {
        let Some(client) = self.counted(ip) else {
            return Ok(IpPermit { held: None });
        };
        let mut open = self.inner.lock();
        let count = open.entry(client).or_insert(0);
        if *count >= self.inner.max {
            return Err(TooManyFromClient {
                client,
                max: self.inner.max,
            });
        }
        *count += 1;
        Ok(IpPermit {
            held: Some((Arc::clone(&self.inner), client)),
        })
    }

    /// Connections open now from the client `ip` belongs to (0 for
    /// addresses that are not counted).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.counted(ip).map_or(0, |client| {
            self.inner.lock().get(&client).copied().unwrap_or(0)
        })
    }

    /// How many clients have connections open (the size of the map).
    pub fn clients(&self) -> usize {
        self.inner.lock().len()
    }
}

impl Counts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Client, usize>> {
        // A panic elsewhere while holding the lock leaves consistent
        // counts (every change is one statement), so carry on with them.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives one place of `client` back, forgetting it at zero.
    fn release(&self, client: Client) {
        let mut open = self.lock();
        if let Some(count) = open.get_mut(&client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&client);
            }
        }
    }
}

/// One connection's place in its client's count; dropping it gives the
/// place back.
#[derive(Debug)]
#[must_use = "the place is given back as soon as the permit is dropped"]
pub struct IpPermit {
    /// The count it belongs to and its client; `None` if uncounted.
    held: Option<(Arc<Counts>, Client)>,
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        if let Some((counts, client)) = self.held.take() {
            counts.release(client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn each_client_gets_max_places_and_others_are_unaffected() {
        let limit = ConnectionsPerIp::new(2);
        let a1 = limit.try_acquire(ip("203.0.113.7")).expect("first");
        let a2 = limit.try_acquire(ip("203.0.113.7")).expect("second");
        let refused = limit.try_acquire(ip("203.0.113.7")).expect_err("third");
        assert_eq!(
            refused.to_string(),
            "203.0.113.7 already has 2 connections open, the most one address may have"
        );
        let b = limit
            .try_acquire(ip("198.51.100.1"))
            .expect("another client");
        assert_eq!(limit.open_from(ip("203.0.113.7")), 2);
        assert_eq!(limit.clients(), 2);
        drop(a1);
        let a3 = limit
            .try_acquire(ip("203.0.113.7"))
            .expect("a place given back is free again");
        drop((a2, a3, b));
        assert_eq!(
            limit.clients(),
            0,
            "no client is kept once it has none open"
        );
        assert_eq!(limit.open_from(ip("203.0.113.7")), 0);
    }

    #[test]
    fn a_refusal_leaves_nothing_behind() {
        let limit = ConnectionsPerIp::new(1);
        let held = limit.try_acquire(ip("192.0.2.1")).expect("first");
        for _ in 0..10 {
            assert!(limit.try_acquire(ip("192.0.2.1")).is_err());
        }
        assert_eq!(limit.open_from(ip("192.0.2.1")), 1);
        drop(held);
        assert_eq!(limit.clients(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_counts_as_ipv4() {
        let limit = ConnectionsPerIp::new(1);
        let held = limit.try_acquire(ip("2001:db8:1:2::1")).expect("first");
        let refused = limit
            .try_acquire(ip("2001:db8:1:2:ffff::9"))
            .expect_err("the same /64");
        assert_eq!(refused.client.to_string(), "2001:db8:1:2::/64");
        let other = limit
            .try_acquire(ip("2001:db8:1:3::1"))
            .expect("another /64");
        let v4 = limit.try_acquire(ip("192.0.2.1")).expect("IPv4");
        assert!(
            limit.try_acquire(ip("::ffff:192.0.2.1")).is_err(),
            "the mapped form is the same client"
        );
        drop((held, other, v4));
        assert_eq!(limit.clients(), 0);
    }

    #[test]
    fn loopback_and_a_limit_of_zero_are_not_counted() {
        let limit = ConnectionsPerIp::new(1);
        let local: Vec<IpPermit> = ["127.0.0.1", "127.0.0.1", "::1", "::ffff:127.0.0.1"]
            .into_iter()
            .map(|a| limit.try_acquire(ip(a)).expect("loopback is not counted"))
            .collect();
        assert_eq!(limit.clients(), 0);
        drop(local);
        let counting = ConnectionsPerIp::counting_loopback(1);
        let held = counting.try_acquire(ip("127.0.0.1")).expect("first");
        let refused = counting
            .try_acquire(ip("::ffff:127.0.0.1"))
            .expect_err("counted when asked");
        assert_eq!(refused.client, Client::V4(Ipv4Addr::LOCALHOST));
        drop(held);
        assert_eq!(counting.clients(), 0);
        let off = ConnectionsPerIp::new(0);
        let many: Vec<IpPermit> = (0..100)
            .map(|_| off.try_acquire(ip("192.0.2.1")).expect("no limit"))
            .collect();
        assert_eq!(off.clients(), 0);
        assert_eq!(many.len(), 100);
    }

    #[test]
    fn concurrent_connections_never_exceed_the_limit_and_leave_no_keys() {
        let limit = ConnectionsPerIp::new(3);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let limit = limit.clone();
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, ((t + i) % 4) as u8));
                        if let Ok(permit) = limit.try_acquire(client) {
                            assert!(limit.open_from(client) <= 3, "over the limit");
                            drop(permit);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        assert_eq!(limit.clients(), 0, "every key removed at zero");
    }
}
