//! Which new connections the server takes, sans-IO: at most so many at
//! once per address bucket (IPv4 per configurable prefix, IPv6 per /64),
//! and at most so many new ones a second per bucket (a token bucket).
//!
//! ```text
//! accept -> admit(now, ip) -> Ok(bucket)  ... connection ends -> release(bucket)
//!                          -> Err(Refusal) -> one error frame, close
//! ```
//!
//! The server holds it behind a mutex, each connection a
//! `ferry_limits::accept::BucketSlot` of it that releases on drop.

use std::net::IpAddr;
use std::time::Duration;

use ferry_limits::accept::Release;
use ferry_limits::{AddrBucket, Bucketing, OpenCounts, RateTable};

/// Limits of [`Admission`].
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// How addresses group into buckets.
    pub bucketing: Bucketing,
    /// Connections open at once per bucket.
    pub max_per_bucket: usize,
    /// New connections a second per bucket, sustained.
    pub per_second: f64,
    /// New connections per bucket in a burst.
    pub burst: f64,
    /// Buckets the rate table tracks at most.
    pub max_tracked_buckets: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The bucket already holds its share of connections.
    #[error("too many connections from your address (at most {limit} at once); try again later")]
    PerAddress {
        /// The per-bucket limit.
        limit: usize,
    },
    /// The bucket opens connections too fast.
    #[error("your address opens connections too fast; wait a second and try again")]
    TooFast,
}

/// Connection counts and rates per address bucket.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    open: OpenCounts,
    rate: RateTable<AddrBucket>,
}

impl Admission {
    /// Nothing open yet.
    pub fn new(limits: AdmissionLimits) -> Self {
        Admission {
            limits,
            open: OpenCounts::default(),
            rate: RateTable::new(limits.per_second, limits.burst, limits.max_tracked_buckets),
        }
    }

    /// A connection from `ip` at `now` (since any fixed origin): its bucket
    /// when taken (hand it back with [`Admission::release`]), or why not.
    pub fn admit(&mut self, now: Duration, ip: IpAddr) -> Result<AddrBucket, Refusal> {
        let bucket = self.limits.bucketing.bucket(ip);
        if self.open.count(bucket) >= self.limits.max_per_bucket {
            return Err(Refusal::PerAddress {
                limit: self.limits.max_per_bucket,
            });
        }
        if !self.rate.allow(&bucket, now) {
            return Err(Refusal::TooFast);
        }
        self.open.open(bucket);
        Ok(bucket)
    }

    /// A connection of `bucket` ended.
    pub fn release(&mut self, bucket: AddrBucket) {
        self.open.close(bucket);
    }

    /// Connections open in `ip`'s bucket.
    pub fn open_in(&self, ip: IpAddr) -> usize {
        self.open.count(self.limits.bucketing.bucket(ip))
    }
}

impl Release for Admission {
    fn release(&mut self, bucket: AddrBucket) {
        Admission::release(self, bucket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            bucketing: Bucketing::default(),
            max_per_bucket: 16,
            per_second: 10.0,
            burst: 30.0,
            max_tracked_buckets: 1000,
        }
    }

    #[test]
    fn one_ipv6_64_is_one_party() {
        let mut a = Admission::new(limits());
        let t = Duration::ZERO;
        let mut held = Vec::new();
        // 16 different /128s of one /64 fill its share...
        for host in 1..=16u16 {
            let ip: IpAddr = format!("2001:db8:7:9::{host:x}").parse().unwrap();
            held.push(a.admit(t, ip).unwrap());
        }
        // ...so a 17th host of that /64 is refused, whatever its address...
        let other_host: IpAddr = "2001:db8:7:9:ffff:1:2:3".parse().unwrap();
        assert_eq!(
            a.admit(t, other_host),
            Err(Refusal::PerAddress { limit: 16 })
        );
        // ...while the next /64 is another party.
        let neighbour: IpAddr = "2001:db8:7:a::1".parse().unwrap();
        assert!(a.admit(t, neighbour).is_ok());
        a.release(held.pop().unwrap());
        assert!(a.admit(t, other_host).is_ok());
        assert_eq!(a.open_in(other_host), 16);
    }

    #[test]
    fn ipv4_prefix_is_configurable() {
        let mut a = Admission::new(AdmissionLimits {
            bucketing: Bucketing {
                ipv4_prefix: 24,
                ipv6_prefix: 64,
            },
            max_per_bucket: 2,
            ..limits()
        });
        let t = Duration::ZERO;
        assert!(a.admit(t, "198.51.100.1".parse().unwrap()).is_ok());
        assert!(a.admit(t, "198.51.100.2".parse().unwrap()).is_ok());
        assert_eq!(
            a.admit(t, "198.51.100.3".parse().unwrap()),
            Err(Refusal::PerAddress { limit: 2 })
        );
        assert!(a.admit(t, "198.51.101.3".parse().unwrap()).is_ok());
    }

    #[test]
    fn new_connections_are_rate_limited_per_bucket() {
        let mut a = Admission::new(AdmissionLimits {
            max_per_bucket: 1000,
            ..limits()
        });
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        for _ in 0..30 {
            let bucket = a.admit(Duration::ZERO, ip).unwrap();
            a.release(bucket);
        }
        assert_eq!(a.admit(Duration::ZERO, ip), Err(Refusal::TooFast));
        assert!(
            a.admit(Duration::ZERO, "203.0.113.6".parse().unwrap())
                .is_ok()
        );
        assert!(a.admit(Duration::from_millis(100), ip).is_ok());
    }
}
