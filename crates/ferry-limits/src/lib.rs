//! ferry-limits: the vocabulary every ferry server uses to stay available
//! under abuse: which addresses count as one party ([`Bucketing`]), how fast
//! a party may do something ([`TokenBucket`]), and a table of such budgets
//! per party that cannot grow without bound ([`RateTable`]).
//!
//! Sans-IO: no clock, no sockets. Time is passed in as a [`Duration`] since
//! any fixed origin the caller chooses (e.g. the server's start), so tests
//! run in virtual time.
//!
//! Around that core, two tokio modules:
//!
//! - [`throttle`]: [`Throttled`], a stream whose writes are paced by a
//!   [`TokenBucket`] (`ferry send --limit-rate`), and [`parse_rate`].
//! - [`accept`]: the accept loop of ferry's TCP servers (the rendezvous
//!   server, the relay): a connection cap, back-off on accept errors,
//!   bounded lingering refusals, graceful shutdown within a grace.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod accept;
pub mod throttle;

pub use throttle::{Throttled, parse_rate};

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The party an address belongs to: its network prefix. One home router
/// shares one IPv4 address; one IPv6 customer gets a whole /64 (or more), so
/// counting IPv6 per /128 lets one host be 2^64 parties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrBucket(IpAddr);

impl AddrBucket {
    /// The prefix's network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.0
    }
}

impl std::fmt::Display for AddrBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How addresses are grouped into parties: prefix lengths for IPv4 and
/// IPv6. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) count as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucketing {
    /// IPv4 prefix length, 0 to 32 (default 32: one address is one party).
    pub ipv4_prefix: u8,
    /// IPv6 prefix length, 0 to 128 (default 64).
    pub ipv6_prefix: u8,
}

impl Default for Bucketing {
    fn default() -> Self {
        Bucketing {
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }
}

impl Bucketing {
    /// The party `ip` belongs to.
    pub fn bucket(&self, ip: IpAddr) -> AddrBucket {
        match ip {
            IpAddr::V4(v4) => AddrBucket(IpAddr::V4(mask_v4(v4, self.ipv4_prefix))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrBucket(IpAddr::V4(mask_v4(v4, self.ipv4_prefix))),
                None => AddrBucket(IpAddr::V6(mask_v6(v6, self.ipv6_prefix))),
            },
        }
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let prefix = u32::from(prefix.min(32));
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Ipv4Addr::from(u32::from(ip) & mask)
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let prefix = u32::from(prefix.min(128));
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    Ipv6Addr::from(u128::from(ip) & mask)
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up. Starts
/// full.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket at time `now`. A `rate` of 0 never refills.
    pub fn new(rate: f64, burst: f64, now: Duration) -> Self {
        let burst = burst.max(0.0);
        TokenBucket {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` tokens if the bucket holds them at `now`; otherwise takes
    /// nothing and returns false.
    pub fn try_take(&mut self, now: Duration, n: f64) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens even if that leaves the bucket in debt, and returns
    /// how long until it is out of debt again (zero if it is not in debt):
    /// the pause a byte-rate limiter should make.
    pub fn take_debt(&mut self, now: Duration, n: f64) -> Duration {
        self.refill(now);
        self.tokens -= n;
        self.debt_duration()
    }

    /// How long until the bucket holds `n` tokens (zero if it does now).
    pub fn wait_for(&mut self, now: Duration, n: f64) -> Duration {
        self.refill(now);
        if self.tokens >= n {
            return Duration::ZERO;
        }
        if self.rate <= 0.0 {
            return Duration::MAX;
        }
        Duration::from_secs_f64((n - self.tokens) / self.rate)
    }

    /// How many tokens the bucket holds at `now` (negative when in debt).
    pub fn available(&mut self, now: Duration) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Whether the bucket is full at `now` (a full bucket carries no state
    /// worth keeping, so tables may forget it).
    pub fn is_full(&mut self, now: Duration) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }

    fn debt_duration(&self) -> Duration {
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else if self.rate <= 0.0 {
            Duration::MAX
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }
}

/// Token buckets per key (usually an [`AddrBucket`]) in a table of at most
/// `capacity` entries, so a flood of distinct keys costs bounded memory.
/// When the table is full, buckets that have refilled completely are
/// forgotten (they hold no state); if none has, the new key is refused, which
/// makes a flood of fresh keys fail closed rather than grow the table.
#[derive(Debug)]
pub struct RateTable<K> {
    rate: f64,
    burst: f64,
    capacity: usize,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Eq + Hash + Clone> RateTable<K> {
    /// `rate` per second and `burst` per key, at most `capacity` keys.
    pub fn new(rate: f64, burst: f64, capacity: usize) -> Self {
        RateTable {
            rate,
            burst,
            capacity: capacity.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `key`'s bucket at `now`: true if allowed.
    pub fn allow(&mut self, key: &K, now: Duration) -> bool {
        self.allow_n(key, now, 1.0)
    }

    /// Takes `n` tokens from `key`'s bucket at `now`: true if allowed.
    pub fn allow_n(&mut self, key: &K, now: Duration, n: f64) -> bool {
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.try_take(now, n);
        }
        if self.buckets.len() >= self.capacity {
            self.forget_full(now);
            if self.buckets.len() >= self.capacity {
                return false;
            }
        }
        let mut bucket = TokenBucket::new(self.rate, self.burst, now);
        let allowed = bucket.try_take(now, n);
        self.buckets.insert(key.clone(), bucket);
        allowed
    }

    /// Forgets every bucket that has refilled by `now`; call now and then
    /// (e.g. from a periodic timer) so idle keys do not linger.
    pub fn forget_full(&mut self, now: Duration) {
        self.buckets.retain(|_, bucket| !bucket.is_full(now));
    }

    /// How many keys the table holds.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether the table holds no keys.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn ipv6_counts_per_64_and_ipv4_per_address_by_default() {
        let b = Bucketing::default();
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let c: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let d: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(b.bucket(a), b.bucket(c));
        assert_ne!(b.bucket(a), b.bucket(d));
        assert_eq!(b.bucket(a).to_string(), "2001:db8:1:2::");
        let x: IpAddr = "198.51.100.7".parse().unwrap();
        let y: IpAddr = "198.51.100.8".parse().unwrap();
        assert_ne!(b.bucket(x), b.bucket(y));
    }

    #[test]
    fn ipv4_prefix_groups_and_mapped_addresses_count_as_ipv4() {
        let b = Bucketing {
            ipv4_prefix: 24,
            ipv6_prefix: 64,
        };
        let x: IpAddr = "198.51.100.7".parse().unwrap();
        let y: IpAddr = "198.51.100.200".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.9".parse().unwrap();
        assert_eq!(b.bucket(x), b.bucket(y));
        assert_eq!(b.bucket(x), b.bucket(mapped));
        assert_eq!(b.bucket(x).to_string(), "198.51.100.0");
        let all = Bucketing {
            ipv4_prefix: 0,
            ipv6_prefix: 0,
        };
        assert_eq!(all.bucket(x).to_string(), "0.0.0.0");
        assert_eq!(all.bucket("2001:db8::1".parse().unwrap()).to_string(), "::");
    }

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let mut t = TokenBucket::new(2.0, 3.0, secs(0.0));
        assert!(t.try_take(secs(0.0), 1.0));
        assert!(t.try_take(secs(0.0), 1.0));
        assert!(t.try_take(secs(0.0), 1.0));
        assert!(!t.try_take(secs(0.0), 1.0));
        assert!(!t.try_take(secs(0.4), 1.0));
        assert!(t.try_take(secs(0.5), 1.0));
        assert_eq!(t.wait_for(secs(0.5), 1.0), secs(0.5));
        // Never more than the burst, however long it rests.
        assert!(t.is_full(secs(100.0)));
        assert!(t.try_take(secs(100.0), 3.0));
        assert!(!t.try_take(secs(100.0), 0.5));
    }

    #[test]
    fn token_bucket_debt_gives_the_pause() {
        let mut t = TokenBucket::new(1000.0, 100.0, secs(0.0));
        assert_eq!(t.take_debt(secs(0.0), 100.0), Duration::ZERO);
        assert_eq!(t.take_debt(secs(0.0), 500.0), secs(0.5));
        assert_eq!(t.take_debt(secs(0.5), 0.0), Duration::ZERO);
        assert_eq!(t.available(secs(0.5)), 0.0);
        assert_eq!(t.available(secs(0.6)), 100.0);
    }

    #[test]
    fn clock_going_back_does_not_mint_tokens() {
        let mut t = TokenBucket::new(1.0, 1.0, secs(10.0));
        assert!(t.try_take(secs(10.0), 1.0));
        assert!(!t.try_take(secs(5.0), 1.0));
        assert!(!t.try_take(secs(10.5), 1.0));
        assert!(t.try_take(secs(11.0), 1.0));
    }

    #[test]
    fn rate_table_is_per_key_and_bounded() {
        let mut table = RateTable::new(1.0, 2.0, 2);
        assert!(table.allow(&"a", secs(0.0)));
        assert!(table.allow(&"a", secs(0.0)));
        assert!(!table.allow(&"a", secs(0.0)));
        assert!(table.allow(&"b", secs(0.0)));
        // Full of keys with state: a third key fails closed.
        assert!(!table.allow(&"c", secs(0.0)));
        assert_eq!(table.len(), 2);
        // Once they have refilled they are forgotten and "c" gets a place.
        assert!(table.allow(&"c", secs(5.0)));
        assert_eq!(table.len(), 1);
        table.forget_full(secs(10.0));
        assert!(table.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn bucket_ignores_host_bits(raw in proptest::prelude::any::<u32>(), prefix in 0u8..=32) {
            let b = Bucketing { ipv4_prefix: prefix, ipv6_prefix: 64 };
            let ip = Ipv4Addr::from(raw);
            let net = b.bucket(IpAddr::V4(ip)).network();
            proptest::prop_assert_eq!(b.bucket(net), b.bucket(IpAddr::V4(ip)));
        }
    }
}
