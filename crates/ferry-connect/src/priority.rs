//! Candidate priorities: the one table that ranks every candidate a side
//! offers, whatever its origin and transport (pure, no sockets).
//!
//! A candidate's priority travels with it in the `hello`. The peer sorts
//! what it receives by it ([`peer_candidates`](crate::address::peer_candidates)
//! keeps the best [`MAX_PEER_CANDIDATES`](crate::address::MAX_PEER_CANDIDATES)
//! of both transports together), then dials the TCP candidates and punches
//! to the UDP ones best first. Higher is better; equal priorities keep the
//! order in which they were offered.
//!
//! Addresses are classified with [`ferry_nat::classify`], the one address
//! classifier of ferry.

use std::net::IpAddr;

use ferry_nat::AddrClass;
use ferry_proto::peer::Transport;

/// Where a candidate address came from, as far as its priority goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An address of one of our interfaces (ranked by its address class and,
    /// over TCP, its family).
    Host(IpAddr),
    /// The public mapping of our UDP socket, learnt by STUN.
    Stun,
    /// A port mapped on the gateway by UPnP IGD.
    Upnp,
    /// Where the rendezvous server saw our signalling connection.
    ServerObserved,
}

/// How a host address ranks over TCP: by these coarse tiers, then IPv4
/// before IPv6 within a tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostTier {
    /// [`AddrClass::Private`] and [`AddrClass::UniqueLocal`]: peers on one
    /// LAN reach each other fastest and most reliably here.
    PrivateLan,
    /// Everything else that is not link-local or loopback (public,
    /// documentation, carrier-grade NAT, reserved...).
    Other,
    /// [`AddrClass::LinkLocal`]: only reaches peers on the same link.
    LinkLocal,
    /// [`AddrClass::Loopback`]: only reaches peers on this machine.
    Loopback,
}

/// The tier of a host address over TCP.
pub fn host_tier(ip: IpAddr) -> HostTier {
    match ferry_nat::classify(ip) {
        AddrClass::Private | AddrClass::UniqueLocal => HostTier::PrivateLan,
        AddrClass::LinkLocal => HostTier::LinkLocal,
        AddrClass::Loopback => HostTier::Loopback,
        AddrClass::SharedCgnat
        | AddrClass::Documentation
        | AddrClass::Multicast
        | AddrClass::Unspecified
        | AddrClass::Broadcast
        | AddrClass::Reserved
        | AddrClass::Public => HostTier::Other,
    }
}

/// The priority of a candidate: the one table.
///
/// Host addresses over TCP, by [`HostTier`] and family:
///
/// | host tier (TCP) | address classes | IPv4 | IPv6 |
/// |---|---|---|---|
/// | private LAN | `Private`, `UniqueLocal` | 1400 | 1350 |
/// | other | `Public`, `Documentation`, `SharedCgnat`, `Reserved`, `Broadcast` (`Unspecified`, `Multicast`: never offered) | 1300 | 1250 |
/// | link-local | `LinkLocal` | 1200 | 1150 |
/// | loopback | `Loopback` | 1100 | 1050 |
///
/// Everything else, best first:
///
/// | candidate | TCP | UDP |
/// |---|---|---|
/// | host, `Private` | (above) | 1000 |
/// | host, `UniqueLocal` | (above) | 950 |
/// | host, IPv6 `Public` or `Documentation` | (above) | 925 |
/// | STUN-mapped | 900 | 900 |
/// | UPnP-mapped | 850 | 850 |
/// | host, `Public` | (above) | 800 |
/// | host, `Documentation` | (above) | 750 |
/// | host, `SharedCgnat` | (above) | 600 |
/// | host, `LinkLocal` | (above) | 400 |
/// | host, `Loopback` | (above) | 100 |
/// | server-observed | 100 | 100 |
/// | host, `Multicast`, `Broadcast`, `Unspecified`, `Reserved` | (above) | 0 (never offered) |
///
/// So every TCP host candidate ranks above every other candidate. Within
/// a TCP tier all classes tie (host candidates of one priority are
/// ordered by address), while UDP host addresses are ranked by class: over
/// UDP a public address beats a documentation or carrier-grade NAT one,
/// over TCP they are equal. A global IPv6 address over UDP is its own
/// public mapping, with no NAT to cross (only a stateful firewall, which
/// the punch opens): it beats the STUN mapping of a NATed IPv4 socket.
/// Today's producers make STUN candidates over
/// UDP only and server-observed ones over TCP only; the other cells give
/// them the same rank on the other transport.
pub fn of(origin: Origin, transport: Transport) -> u32 {
    match (origin, transport) {
        (Origin::Host(ip), Transport::Tcp) => {
            let tier = match host_tier(ip) {
                HostTier::PrivateLan => 1400,
                HostTier::Other => 1300,
                HostTier::LinkLocal => 1200,
                HostTier::Loopback => 1100,
            };
            if ip.is_ipv4() { tier } else { tier - 50 }
        }
        // The address classes' own ranking (ferry-nat), the table's
        // UDP host column.
        (Origin::Host(IpAddr::V6(v6)), Transport::Udp)
            if v6.to_ipv4_mapped().is_none()
                && matches!(
                    ferry_nat::classify(IpAddr::V6(v6)),
                    AddrClass::Public | AddrClass::Documentation
                ) =>
        {
            925
        }
        (Origin::Host(ip), Transport::Udp) => ferry_nat::classify(ip).candidate_priority(),
        (Origin::Stun, _) => 900,
        (Origin::Upnp, _) => 850,
        (Origin::ServerObserved, _) => 100,
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;
    use std::net::SocketAddr;

    use ferry_proto::peer::{Candidate, CandidateKind};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn host_tiers_group_the_address_classes() {
        assert_eq!(host_tier(ip("10.1.2.3")), HostTier::PrivateLan);
        assert_eq!(host_tier(ip("172.16.0.1")), HostTier::PrivateLan);
        assert_eq!(host_tier(ip("172.31.255.1")), HostTier::PrivateLan);
        assert_eq!(host_tier(ip("172.32.0.1")), HostTier::Other);
        assert_eq!(host_tier(ip("192.168.1.20")), HostTier::PrivateLan);
        assert_eq!(host_tier(ip("fd12:3456::1")), HostTier::PrivateLan);
        assert_eq!(host_tier(ip("fc00::1")), HostTier::PrivateLan);
        assert_eq!(host_tier(ip("203.0.113.7")), HostTier::Other);
        assert_eq!(host_tier(ip("100.64.0.1")), HostTier::Other);
        assert_eq!(host_tier(ip("2001:db8::1")), HostTier::Other);
        assert_eq!(host_tier(ip("169.254.3.4")), HostTier::LinkLocal);
        assert_eq!(host_tier(ip("127.0.0.1")), HostTier::Loopback);
        assert_eq!(host_tier(ip("127.8.9.10")), HostTier::Loopback);
        assert_eq!(host_tier(ip("::1")), HostTier::Loopback);
        assert_eq!(host_tier(ip("::ffff:192.168.0.1")), HostTier::PrivateLan);
        // Ranges ferry_nat calls reserved were "other" to the old copy of
        // the classifier in this crate, and still are.
        assert_eq!(host_tier(ip("198.18.0.1")), HostTier::Other);
        assert_eq!(host_tier(ip("240.0.0.1")), HostTier::Other);
        assert_eq!(host_tier(ip("fec0::1")), HostTier::Other);
    }

    /// The priorities as the three places that set them did before this
    /// table: `host_priority` in `address.rs` for TCP host candidates,
    /// `AddrClass::candidate_priority` for UDP host candidates (`gather.rs`),
    /// 900 for STUN (`gather.rs`), 850 for UPnP and 100 for server-observed
    /// (`journey.rs`).
    fn before(origin: Origin, transport: Transport) -> u32 {
        match (origin, transport) {
            (Origin::Host(ip), Transport::Tcp) => {
                let class = match host_tier(ip) {
                    HostTier::PrivateLan => 4,
                    HostTier::Other => 3,
                    HostTier::LinkLocal => 2,
                    HostTier::Loopback => 1,
                };
                class * 100_000 + if ip.is_ipv4() { 10_000 } else { 0 }
            }
            (Origin::Host(ip), Transport::Udp) => match ferry_nat::classify(ip) {
                AddrClass::Private => 1000,
                AddrClass::UniqueLocal => 950,
                AddrClass::Public => 800,
                AddrClass::Documentation => 750,
                AddrClass::SharedCgnat => 600,
                AddrClass::LinkLocal => 400,
                AddrClass::Loopback => 100,
                _ => 0,
            },
            (Origin::Stun, Transport::Udp) => 900,
            (Origin::Upnp, _) => 850,
            (Origin::ServerObserved, Transport::Tcp) => 100,
            (Origin::Stun, Transport::Tcp) | (Origin::ServerObserved, Transport::Udp) => {
                unreachable!("not produced")
            }
        }
    }

    /// Every (origin, transport) the current code produces: TCP host
    /// candidates for any interface address the listener offers, UDP host
    /// candidates for IPv4 interface addresses of a candidate class, STUN
    /// over UDP, UPnP over both, server-observed over TCP.
    fn produced() -> Vec<(Origin, Transport)> {
        let tcp_hosts = [
            "10.0.0.2",
            "172.16.5.5",
            "192.168.1.20",
            "::ffff:192.168.1.21",
            "fd00::5",
            "fc00::1",
            "8.8.8.8",
            "2606:4700::1111",
            "203.0.113.7",
            "2001:db8::1",
            "100.64.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "fec0::1",
            "169.254.9.9",
            "127.0.0.1",
            "127.8.9.10",
            "::1",
        ];
        let udp_hosts = [
            "10.0.0.2",
            "192.168.1.20",
            "8.8.8.8",
            "203.0.113.7",
            "100.64.0.1",
            "169.254.9.9",
            "127.0.0.1",
        ];
        let mut all: Vec<(Origin, Transport)> = Vec::new();
        all.extend(
            tcp_hosts
                .iter()
                .map(|a| (Origin::Host(ip(a)), Transport::Tcp)),
        );
        all.extend(
            udp_hosts
                .iter()
                .map(|a| (Origin::Host(ip(a)), Transport::Udp)),
        );
        all.extend([
            (Origin::Stun, Transport::Udp),
            (Origin::Upnp, Transport::Udp),
            (Origin::Upnp, Transport::Tcp),
            (Origin::ServerObserved, Transport::Tcp),
        ]);
        all
    }

    #[test]
    fn the_table_orders_everything_produced_as_before() {
        let all = produced();
        for &(a, ta) in &all {
            assert!(
                of(a, ta) > 0,
                "{a:?} {ta:?} is produced but never a candidate"
            );
            for &(b, tb) in &all {
                assert_eq!(
                    of(a, ta).cmp(&of(b, tb)),
                    before(a, ta).cmp(&before(b, tb)),
                    "{a:?} {ta:?} against {b:?} {tb:?}"
                );
            }
        }
    }

    fn candidate(addr: &str, transport: Transport, kind: CandidateKind) -> Candidate {
        let addr: SocketAddr = addr.parse().unwrap();
        let origin = match kind {
            CandidateKind::Host => Origin::Host(addr.ip()),
            CandidateKind::Stun => Origin::Stun,
            CandidateKind::Upnp => Origin::Upnp,
            CandidateKind::ServerObserved | CandidateKind::Relay => Origin::ServerObserved,
        };
        Candidate {
            addr,
            transport,
            kind,
            priority: of(origin, transport),
        }
    }

    #[test]
    fn a_full_offer_is_tried_in_this_order() {
        use CandidateKind::*;
        use Transport::{Tcp, Udp};
        // In the order the gatherer and the journey put them in the hello:
        // TCP host candidates (already sorted), UDP host candidates in
        // interface order, STUN, UPnP (UDP, then TCP), server-observed.
        let offered = vec![
            candidate("192.168.1.20:4100", Tcp, Host),
            candidate("[fd00::5]:4200", Tcp, Host),
            candidate("198.51.100.7:4100", Tcp, Host),
            candidate("[2001:db8::1]:4200", Tcp, Host),
            candidate("127.0.0.1:4100", Tcp, Host),
            candidate("[::1]:4200", Tcp, Host),
            candidate("127.0.0.1:5000", Udp, Host),
            candidate("192.168.1.20:5000", Udp, Host),
            candidate("100.64.0.9:5000", Udp, Host),
            candidate("198.51.100.7:5000", Udp, Host),
            candidate("8.8.4.4:5000", Udp, Host),
            candidate("203.0.113.50:6000", Udp, Stun),
            candidate("203.0.113.50:7000", Udp, Upnp),
            candidate("203.0.113.50:7001", Tcp, Upnp),
            candidate("127.0.0.1:41000", Tcp, ServerObserved),
        ];
        let kept = crate::address::peer_candidates(offered, "127.0.0.1:40000".parse().unwrap());
        let order: Vec<(String, Transport)> = kept
            .iter()
            .map(|c| (c.addr.to_string(), c.transport))
            .collect();
        let expected = [
            ("192.168.1.20:4100", Tcp),
            ("[fd00::5]:4200", Tcp),
            ("198.51.100.7:4100", Tcp),
            ("[2001:db8::1]:4200", Tcp),
            ("127.0.0.1:4100", Tcp),
            ("[::1]:4200", Tcp),
            ("192.168.1.20:5000", Udp),
            ("203.0.113.50:6000", Udp),
            ("203.0.113.50:7000", Udp),
            ("203.0.113.50:7001", Tcp),
            ("8.8.4.4:5000", Udp),
            ("198.51.100.7:5000", Udp),
            ("100.64.0.9:5000", Udp),
            ("127.0.0.1:5000", Udp),
            ("127.0.0.1:41000", Tcp),
        ];
        let expected: Vec<(String, Transport)> =
            expected.iter().map(|&(a, t)| (a.to_owned(), t)).collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn a_public_ipv6_address_beats_a_natted_ipv4_mapping_over_udp() {
        let udp = |a: &str| of(Origin::Host(ip(a)), Transport::Udp);
        let stun = of(Origin::Stun, Transport::Udp);
        for global in ["2606:4700::1111", "2001:db8:a1::10"] {
            assert!(udp(global) > stun, "{global}");
            assert!(udp(global) > of(Origin::Upnp, Transport::Udp), "{global}");
            // A shared LAN still goes first.
            assert!(udp(global) < udp("192.168.1.20"), "{global}");
            assert!(udp(global) < udp("fd00::5"), "{global}");
        }
        // IPv4 public hosts keep their place below the mapping, and an
        // IPv4-mapped address counts as the IPv4 address it carries.
        assert!(udp("8.8.8.8") < stun);
        assert_eq!(udp("::ffff:8.8.8.8"), udp("8.8.8.8"));
        // Over TCP the host tiers stay as they were: IPv4 first in a tier.
        assert!(
            of(Origin::Host(ip("2001:db8::1")), Transport::Tcp)
                < of(Origin::Host(ip("203.0.113.7")), Transport::Tcp)
        );
    }

    #[test]
    fn ties_are_the_ones_there_were() {
        assert_eq!(
            of(Origin::Upnp, Transport::Tcp),
            of(Origin::Upnp, Transport::Udp)
        );
        assert_eq!(
            of(Origin::ServerObserved, Transport::Tcp),
            of(Origin::Host(ip("127.0.0.1")), Transport::Udp)
        );
        assert_eq!(
            of(Origin::Host(ip("8.8.8.8")), Transport::Tcp),
            of(Origin::Host(ip("100.64.0.1")), Transport::Tcp)
        );
        assert_eq!(
            of(Origin::Host(ip("8.8.8.8")), Transport::Udp)
                .cmp(&of(Origin::Host(ip("100.64.0.1")), Transport::Udp)),
            Ordering::Greater
        );
    }
}
