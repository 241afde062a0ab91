//! ferry-limits: the vocabulary every ferry server uses to stay available
//! under abuse: which addresses count as one party ([`Bucketing`]), how fast
//! a party may do something ([`TokenBucket`]), a table of such budgets per
//! party that cannot grow without bound ([`RateTable`]), how many
//! connections each party holds open ([`OpenCounts`]), and a byte rate that
//! a copy may overdraw and then pays back by pausing ([`ByteRate`], the
//! relay's rate limits).
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
//!   bounded lingering refusals, graceful shutdown within a grace; and what
//!   both servers do around it: a connection's share of its address bucket
//!   ([`accept::BucketSlot`]), a refusal at accept ([`accept::refuse`]) and
//!   a close that lets the last frame arrive ([`accept::linger`]).
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
        secs_or_max((n - self.tokens) / self.rate)
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
            secs_or_max(-self.tokens / self.rate)
        }
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }
}

/// `secs` (positive) as a [`Duration`]; a pause too long for one (a huge
/// debt at a tiny rate) is [`Duration::MAX`] rather than a panic.
fn secs_or_max(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// A byte rate that a copy may overdraw: the copy asks [`ByteRate::pause`]
/// before a read (not knowing yet how much it will get) and
/// [`spend`](ByteRate::spend)s what the read brought, however much; the
/// next read then waits until the debt is paid. So the average rate holds,
/// and a burst is at most one second's worth (at least
/// [`ByteRate::MIN_BURST`]) plus one read. The relay's limits per pair and
/// in all are these, shared by both directions of a copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ByteRate {
    bucket: TokenBucket,
}

impl ByteRate {
    /// The least burst, however low the rate: one read of a small buffer.
    pub const MIN_BURST: u64 = 16 * 1024;
    /// The shortest pause [`ByteRate::pause`] asks for; shorter sleeps cost
    /// more wake-ups than they pace.
    pub const MIN_PAUSE: Duration = Duration::from_millis(1);

    /// `bytes_per_second` (at least 1), full at `now`.
    pub fn new(bytes_per_second: u64, now: Duration) -> Self {
        let rate = bytes_per_second.max(1) as f64;
        let burst = rate.max(Self::MIN_BURST as f64);
        ByteRate {
            bucket: TokenBucket::new(rate, burst, now),
        }
    }

    /// `None` when a read may go ahead at `now` (a byte is there to spend);
    /// otherwise how long to wait before asking again (at least
    /// [`ByteRate::MIN_PAUSE`]).
    pub fn pause(&mut self, now: Duration) -> Option<Duration> {
        if self.bucket.available(now) >= 1.0 {
            return None;
        }
        Some(self.bucket.wait_for(now, 1.0).max(Self::MIN_PAUSE))
    }

    /// `bytes` moved at `now`; they may leave the rate in debt.
    pub fn spend(&mut self, now: Duration, bytes: usize) {
        self.bucket.take_debt(now, bytes as f64);
    }
}

/// Connections open per address bucket. A bucket with none open holds no
/// entry, so the table is as large as the connections open, not as the
/// addresses ever seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenCounts(HashMap<AddrBucket, usize>);

impl OpenCounts {
    /// Connections open in `bucket`.
    pub fn count(&self, bucket: AddrBucket) -> usize {
        self.0.get(&bucket).copied().unwrap_or(0)
    }

    /// One more open in `bucket`.
    pub fn open(&mut self, bucket: AddrBucket) {
        *self.0.entry(bucket).or_insert(0) += 1;
    }

    /// One more open in `bucket` if it holds fewer than `max`: whether it
    /// was counted.
    pub fn try_open(&mut self, bucket: AddrBucket, max: usize) -> bool {
        if self.count(bucket) >= max {
            return false;
        }
        self.open(bucket);
        true
    }

    /// One in `bucket` closed.
    pub fn close(&mut self, bucket: AddrBucket) {
        if let Some(count) = self.0.get_mut(&bucket) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.0.remove(&bucket);
            }
        }
    }

    /// Buckets with a connection open.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no bucket has a connection open.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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

    #[test]
    fn byte_rate_allows_a_burst_then_paces() {
        let start = secs(7.0);
        let mut rate = ByteRate::new(100_000, start);
        assert_eq!(rate.pause(start), None);
        rate.spend(start, 100_000);
        let pause = rate.pause(start).expect("an empty bucket waits");
        assert_eq!(pause, ByteRate::MIN_PAUSE);
        // Debt of 50 000 bytes at 100 000 B/s: about half a second.
        rate.spend(start, 50_000);
        let wait = rate.pause(start).expect("in debt");
        assert!(
            wait >= Duration::from_millis(500) && wait < Duration::from_millis(510),
            "{wait:?}"
        );
        assert_eq!(rate.pause(start + Duration::from_millis(501)), None);
    }

    #[test]
    fn byte_rate_does_not_save_up_beyond_its_capacity() {
        let start = secs(0.0);
        let mut rate = ByteRate::new(20_000, start);
        let later = start + Duration::from_secs(3600);
        assert_eq!(rate.pause(later), None);
        rate.spend(later, 20_001);
        assert!(rate.pause(later).is_some());
    }

    #[test]
    fn byte_rate_bursts_at_least_16_kib() {
        let mut rate = ByteRate::new(1024, secs(0.0));
        rate.spend(secs(0.0), 16 * 1024 - 1);
        assert_eq!(rate.pause(secs(0.0)), None);
        rate.spend(secs(0.0), 1);
        // One byte short at 1 KiB/s: a thousandth of a second or so.
        let wait = rate.pause(secs(0.0)).unwrap();
        assert!(wait < Duration::from_millis(2), "{wait:?}");
        // A debt of 2 KiB at 1 KiB/s takes two seconds (and a byte) to pay.
        rate.spend(secs(0.0), 2048);
        let wait = rate.pause(secs(0.0)).unwrap();
        assert!(wait > secs(2.0) && wait < secs(2.01), "{wait:?}");
        assert!(rate.pause(secs(2.0)).is_some());
        assert_eq!(rate.pause(secs(2.01)), None);
    }

    #[test]
    fn byte_rate_of_zero_is_one_byte_a_second_and_a_huge_debt_does_not_panic() {
        let mut rate = ByteRate::new(0, secs(0.0));
        rate.spend(secs(0.0), usize::MAX);
        let wait = rate.pause(secs(0.0)).unwrap();
        assert!(wait > Duration::from_secs(1 << 40), "{wait:?}");
        let mut bucket = TokenBucket::new(1e-300, 1.0, secs(0.0));
        assert_eq!(bucket.take_debt(secs(0.0), 1e300), Duration::MAX);
        assert_eq!(bucket.wait_for(secs(0.0), 1e300), Duration::MAX);
    }

    #[test]
    fn open_counts_cap_each_bucket_and_forget_empty_ones() {
        let b = Bucketing::default();
        let x = b.bucket("198.51.100.7".parse().unwrap());
        let y = b.bucket("198.51.100.8".parse().unwrap());
        let mut open = OpenCounts::default();
        assert!(open.try_open(x, 2));
        assert!(open.try_open(x, 2));
        assert!(!open.try_open(x, 2));
        assert!(open.try_open(y, 2));
        assert_eq!((open.count(x), open.count(y), open.len()), (2, 1, 2));
        open.close(x);
        open.close(y);
        assert_eq!((open.count(x), open.len()), (1, 1));
        // A cap of 0 refuses without leaving an entry behind.
        assert!(!open.try_open(y, 0));
        assert_eq!(open.len(), 1);
        open.close(x);
        // Closing more than was opened neither panics nor goes below 0.
        open.close(x);
        assert!(open.is_empty());
        open.open(x);
        assert_eq!(open.count(x), 1);
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
