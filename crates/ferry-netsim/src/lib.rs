//! ferry-netsim: one in-memory network for the tests of ferry's sans-IO
//! cores (hole punching, NAT behaviour discovery, the path race), in
//! virtual time and without sockets.
//!
//! ```text
//!  host 192.168.1.2:5000 ─┐                       ┌─ host 10.0.0.2:5000
//!                         Nat (mapping, filtering,  Nat
//!                         port allocation)          │
//!          203.0.113.10:p ─┴──── Wire (latency, loss, in time order) ────┴─ 203.0.113.20:q
//! ```
//!
//! - [`Nat`]: one NAT in front of one or more hosts. Mapping and filtering
//!   follow RFC 4787 ([`Behaviour`]: endpoint-independent, address-dependent,
//!   address-and-port-dependent); new mappings get ports by
//!   [`PortAllocation`] (the host's own port first, in steps, or at random).
//! - [`Wire`]: datagrams in flight, delivered in time order after a
//!   latency, some lost (seeded, so every run is the same).
//!
//! Time is the caller's: pass `now` in, ask [`Wire::next_due`].
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How a NAT keys its mappings or its filter (RFC 4787).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// One for all destinations.
    EndpointIndependent,
    /// One per destination address.
    AddressDependent,
    /// One per destination address and port.
    AddressAndPortDependent,
}

/// Which public port a new mapping gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortAllocation {
    /// The next port, `step` above the last one given (from `first`).
    Sequential {
        /// The port before the first one given.
        first: u16,
        /// The distance between two new mappings' ports.
        step: u16,
    },
    /// The host's own port for the first mapping, then like `Sequential`.
    PreserveThenSequential {
        /// The port before the first sequential one.
        first: u16,
        /// The distance between two new mappings' ports.
        step: u16,
    },
    /// A random port from 1024 up (seeded).
    Random {
        /// The seed.
        seed: u64,
    },
}

/// How one NAT behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatConfig {
    /// How mappings are keyed.
    pub mapping: Behaviour,
    /// How the filter is keyed.
    pub filtering: Behaviour,
    /// Ports for new mappings.
    pub allocation: PortAllocation,
    /// Drop all UDP, both ways.
    pub blocked: bool,
}

impl NatConfig {
    /// Full cone: endpoint-independent mapping and filtering.
    pub const FULL_CONE: NatConfig = NatConfig::cone(Behaviour::EndpointIndependent);
    /// Address-restricted cone.
    pub const ADDRESS_RESTRICTED: NatConfig = NatConfig::cone(Behaviour::AddressDependent);
    /// Port-restricted cone (Linux masquerade).
    pub const PORT_RESTRICTED: NatConfig = NatConfig::cone(Behaviour::AddressAndPortDependent);
    /// Symmetric: a new port per destination, scattered (masquerade
    /// fully-random, approximately), address-and-port-dependent filtering.
    pub const SYMMETRIC: NatConfig = NatConfig {
        mapping: Behaviour::AddressAndPortDependent,
        filtering: Behaviour::AddressAndPortDependent,
        allocation: PortAllocation::Sequential {
            first: 40_000,
            step: 7,
        },
        blocked: false,
    };

    const fn cone(filtering: Behaviour) -> NatConfig {
        NatConfig {
            mapping: Behaviour::EndpointIndependent,
            filtering,
            allocation: PortAllocation::Sequential {
                first: 40_000,
                step: 1,
            },
            blocked: false,
        }
    }
}

type MappingKey = (SocketAddr, Option<IpAddr>, Option<u16>);

/// One NAT with one public address.
#[derive(Debug)]
pub struct Nat {
    config: NatConfig,
    public_ip: IpAddr,
    next_port: u16,
    rng: StdRng,
    mappings: HashMap<MappingKey, u16>,
    internal_of: HashMap<u16, SocketAddr>,
    /// (public port, destination) pairs sent to: the filter's memory.
    sent_to: HashSet<(u16, SocketAddr)>,
}

impl Nat {
    /// A NAT behaving as `config` on `public_ip`.
    pub fn new(config: NatConfig, public_ip: IpAddr) -> Nat {
        let (next_port, seed) = match config.allocation {
            PortAllocation::Sequential { first, .. }
            | PortAllocation::PreserveThenSequential { first, .. } => (first, 0),
            PortAllocation::Random { seed } => (0, seed),
        };
        Nat {
            config,
            public_ip,
            next_port,
            rng: StdRng::seed_from_u64(seed),
            mappings: HashMap::new(),
            internal_of: HashMap::new(),
            sent_to: HashSet::new(),
        }
    }

    /// The NAT's public address.
    pub fn public_ip(&self) -> IpAddr {
        self.public_ip
    }

    /// How it behaves.
    pub fn config(&self) -> NatConfig {
        self.config
    }

    fn key(&self, internal: SocketAddr, dst: SocketAddr) -> MappingKey {
        match self.config.mapping {
            Behaviour::EndpointIndependent => (internal, None, None),
            Behaviour::AddressDependent => (internal, Some(dst.ip()), None),
            Behaviour::AddressAndPortDependent => (internal, Some(dst.ip()), Some(dst.port())),
        }
    }

    fn new_port(&mut self, internal: SocketAddr) -> u16 {
        loop {
            let port = match self.config.allocation {
                PortAllocation::PreserveThenSequential { .. } if self.mappings.is_empty() => {
                    internal.port()
                }
                PortAllocation::Sequential { step, .. }
                | PortAllocation::PreserveThenSequential { step, .. } => {
                    self.next_port = self.next_port.wrapping_add(step.max(1));
                    self.next_port
                }
                PortAllocation::Random { .. } => self.rng.gen_range(1024..=u16::MAX),
            };
            if !self.internal_of.contains_key(&port) && port != 0 {
                return port;
            }
        }
    }

    /// An outgoing datagram from `internal` to `dst`: its public source
    /// (creating the mapping and the filter's permission), or `None` when
    /// UDP is blocked.
    pub fn outbound(&mut self, internal: SocketAddr, dst: SocketAddr) -> Option<SocketAddr> {
        if self.config.blocked {
            return None;
        }
        let key = self.key(internal, dst);
        let port = match self.mappings.get(&key) {
            Some(&port) => port,
            None => {
                let port = self.new_port(internal);
                self.mappings.insert(key, port);
                self.internal_of.insert(port, internal);
                port
            }
        };
        self.sent_to.insert((port, dst));
        Some(SocketAddr::new(self.public_ip, port))
    }

    /// The public source an earlier datagram from `internal` to `dst`
    /// used, without sending anything.
    pub fn existing(&self, internal: SocketAddr, dst: SocketAddr) -> Option<SocketAddr> {
        let port = self.mappings.get(&self.key(internal, dst))?;
        Some(SocketAddr::new(self.public_ip, *port))
    }

    /// An incoming datagram from `from` to public `port`: the host it goes
    /// to, if a mapping exists and the filter lets it in.
    pub fn inbound(&self, port: u16, from: SocketAddr) -> Option<SocketAddr> {
        if self.config.blocked {
            return None;
        }
        let internal = *self.internal_of.get(&port)?;
        let allowed = match self.config.filtering {
            Behaviour::EndpointIndependent => true,
            Behaviour::AddressDependent => self
                .sent_to
                .iter()
                .any(|&(p, to)| p == port && to.ip() == from.ip()),
            Behaviour::AddressAndPortDependent => self.sent_to.contains(&(port, from)),
        };
        allowed.then_some(internal)
    }
}

/// A datagram on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<T> {
    /// When it arrives.
    pub deliver_at: Instant,
    /// Its (public) source.
    pub from: SocketAddr,
    /// Its destination.
    pub to: SocketAddr,
    /// What it carries, and anything the caller routes by.
    pub payload: T,
}

/// Datagrams in flight between NATs: a latency, a loss rate, time order.
#[derive(Debug)]
pub struct Wire<T> {
    latency: Duration,
    loss: f64,
    rng: StdRng,
    in_flight: Vec<Datagram<T>>,
    sent: usize,
    lost: usize,
}

impl<T> Wire<T> {
    /// A wire with one-way `latency` that loses a `loss` share of the
    /// datagrams (seeded by `seed`).
    pub fn new(latency: Duration, loss: f64, seed: u64) -> Wire<T> {
        Wire {
            latency,
            loss: loss.clamp(0.0, 1.0),
            rng: StdRng::seed_from_u64(seed),
            in_flight: Vec::new(),
            sent: 0,
            lost: 0,
        }
    }

    /// Puts a datagram on the wire at `now` (or loses it).
    pub fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, payload: T) {
        self.sent += 1;
        if self.loss > 0.0 && self.rng.gen_bool(self.loss) {
            self.lost += 1;
            return;
        }
        self.in_flight.push(Datagram {
            deliver_at: now + self.latency,
            from,
            to,
            payload,
        });
    }

    /// When the next datagram arrives.
    pub fn next_due(&self) -> Option<Instant> {
        self.in_flight.iter().map(|d| d.deliver_at).min()
    }

    /// Every datagram due by `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Datagram<T>> {
        let (mut due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|d| d.deliver_at <= now);
        self.in_flight = later;
        due.sort_by_key(|d| d.deliver_at);
        due
    }

    /// Datagrams sent, and of them lost.
    pub fn counts(&self) -> (usize, usize) {
        (self.sent, self.lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cones_keep_one_mapping_and_filter_by_what_was_sent() {
        let host = addr("192.168.1.2:5000");
        let (a, b) = (addr("198.51.100.1:3478"), addr("198.51.100.2:9000"));
        let mut nat = Nat::new(NatConfig::PORT_RESTRICTED, "203.0.113.10".parse().unwrap());
        let out = nat.outbound(host, a).unwrap();
        assert_eq!(
            nat.outbound(host, b),
            Some(out),
            "endpoint-independent mapping"
        );
        assert_eq!(nat.inbound(out.port(), a), Some(host));
        assert_eq!(
            nat.inbound(out.port(), addr("198.51.100.1:1")),
            None,
            "port-dependent filter"
        );
        let mut full = Nat::new(NatConfig::FULL_CONE, "203.0.113.11".parse().unwrap());
        let out = full.outbound(host, a).unwrap();
        assert_eq!(full.inbound(out.port(), addr("192.0.2.99:1")), Some(host));
        let mut restricted = Nat::new(
            NatConfig::ADDRESS_RESTRICTED,
            "203.0.113.12".parse().unwrap(),
        );
        let out = restricted.outbound(host, a).unwrap();
        assert_eq!(
            restricted.inbound(out.port(), addr("198.51.100.1:1")),
            Some(host)
        );
        assert_eq!(restricted.inbound(out.port(), b), None);
    }

    #[test]
    fn symmetric_nats_map_each_destination_apart() {
        let host = addr("10.0.0.2:5000");
        let mut nat = Nat::new(NatConfig::SYMMETRIC, "203.0.113.20".parse().unwrap());
        let a = nat.outbound(host, addr("198.51.100.1:3478")).unwrap();
        let b = nat.outbound(host, addr("198.51.100.1:3479")).unwrap();
        assert_ne!(a, b);
        assert_eq!(b.port() - a.port(), 7);
        assert_eq!(nat.existing(host, addr("198.51.100.1:3478")), Some(a));
        let mut random = Nat::new(
            NatConfig {
                allocation: PortAllocation::Random { seed: 3 },
                ..NatConfig::SYMMETRIC
            },
            "203.0.113.21".parse().unwrap(),
        );
        let ports: HashSet<u16> = (0..100)
            .map(|p| {
                random
                    .outbound(host, addr(&format!("198.51.100.1:{}", 2000 + p)))
                    .unwrap()
                    .port()
            })
            .collect();
        assert_eq!(ports.len(), 100, "no port given twice");
    }

    #[test]
    fn preserving_nats_keep_the_hosts_port_first_and_blocked_ones_pass_nothing() {
        let host = addr("10.0.0.2:5000");
        let config = NatConfig {
            allocation: PortAllocation::PreserveThenSequential {
                first: 61_000,
                step: 7,
            },
            ..NatConfig::SYMMETRIC
        };
        let mut nat = Nat::new(config, "203.0.113.9".parse().unwrap());
        assert_eq!(
            nat.outbound(host, addr("192.0.2.1:3478")).unwrap().port(),
            5000
        );
        assert_eq!(
            nat.outbound(host, addr("192.0.2.2:3479")).unwrap().port(),
            61_007
        );
        let blocked = NatConfig {
            blocked: true,
            ..NatConfig::FULL_CONE
        };
        let mut nat = Nat::new(blocked, "203.0.113.9".parse().unwrap());
        assert_eq!(nat.outbound(host, addr("192.0.2.1:3478")), None);
    }

    #[test]
    fn the_wire_delivers_in_time_order_and_loses_what_it_is_told_to() {
        let t0 = Instant::now();
        let mut wire = Wire::new(Duration::from_millis(20), 0.0, 1);
        wire.send(
            t0 + Duration::from_millis(5),
            addr("192.0.2.1:1"),
            addr("192.0.2.2:2"),
            2u8,
        );
        wire.send(t0, addr("192.0.2.1:1"), addr("192.0.2.2:2"), 1u8);
        assert_eq!(wire.next_due(), Some(t0 + Duration::from_millis(20)));
        assert!(wire.take_due(t0 + Duration::from_millis(19)).is_empty());
        let due: Vec<u8> = wire
            .take_due(t0 + Duration::from_millis(30))
            .into_iter()
            .map(|d| d.payload)
            .collect();
        assert_eq!(due, [1, 2]);
        let mut lossy = Wire::new(Duration::ZERO, 0.5, 7);
        for i in 0..1000 {
            lossy.send(t0, addr("192.0.2.1:1"), addr("192.0.2.2:2"), i);
        }
        let (sent, lost) = lossy.counts();
        assert_eq!(sent, 1000);
        assert!((400..600).contains(&lost), "{lost}");
    }
}
