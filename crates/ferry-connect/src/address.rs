//! Ordering of host addresses for direct connections (sans-IO, no sockets).
//!
//! Peers on one LAN reach each other fastest and most reliably through their
//! private addresses, so those come first; public addresses next; loopback
//! last (it only helps when both peers run on the same machine, and then
//! every other address works too). The full address classification lives in
//! `ferry-nat`; this is the small subset the priority order needs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{Candidate, CandidateKind, Transport};

/// Coarse class of an address, best for direct connections first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum AddressClass {
    /// 10/8, 172.16/12, 192.168/16, fc00::/7.
    PrivateLan,
    /// Everything routable that is not private (public, carrier-grade NAT).
    Other,
    /// 169.254/16: only reaches peers on the same link.
    LinkLocal,
    /// 127/8, ::1.
    Loopback,
}

/// Classifies an address for the priority order.
pub(crate) fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify_v4(v4);
            }
            if v6.is_loopback() {
                AddressClass::Loopback
            } else if is_unique_local(v6) {
                AddressClass::PrivateLan
            } else if is_unicast_link_local(v6) {
                AddressClass::LinkLocal
            } else {
                AddressClass::Other
            }
        }
    }
}

/// Priority of a host candidate: higher is better. Within a class IPv4 goes
/// first, because home routers far more often route and filter IPv4 sanely
/// between LAN hosts than IPv6.
pub(crate) fn host_priority(ip: IpAddr) -> u32 {
    let class_score = match classify(ip) {
        AddressClass::PrivateLan => 4,
        AddressClass::Other => 3,
        AddressClass::LinkLocal => 2,
        AddressClass::Loopback => 1,
    };
    let family_score = if ip.is_ipv4() { 1 } else { 0 };
    // Leave room below each step for later kinds (UPnP, STUN, relay) to slot in.
    class_score * 100_000 + family_score * 10_000
}

/// Builds the sorted, de-duplicated host candidates for the given interface
/// addresses. IPv6 link-local (scoped) addresses, unspecified and multicast
/// addresses are skipped; IPv6 addresses are skipped when there is no IPv6
/// listener (`port_v6` is `None`).
pub(crate) fn host_candidates(
    addresses: impl IntoIterator<Item = IpAddr>,
    port_v4: u16,
    port_v6: Option<u16>,
) -> Vec<Candidate> {
    let mut candidates: Vec<Candidate> = Vec::new();
    for ip in addresses {
        if ip.is_unspecified() || ip.is_multicast() {
            continue;
        }
        let port = match ip {
            IpAddr::V4(_) => port_v4,
            IpAddr::V6(v6) => {
                if is_unicast_link_local(v6) {
                    continue;
                }
                match port_v6 {
                    Some(port) => port,
                    None => continue,
                }
            }
        };
        let addr = SocketAddr::new(ip, port);
        if candidates.iter().any(|c| c.addr == addr) {
            continue;
        }
        candidates.push(Candidate {
            addr,
            transport: Transport::Tcp,
            kind: CandidateKind::Host,
            priority: host_priority(ip),
        });
    }
    sort_by_priority(&mut candidates);
    candidates
}

/// Sorts candidates best first; ties are broken by address so the order is
/// deterministic.
pub(crate) fn sort_by_priority(candidates: &mut [Candidate]) {
    candidates.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.addr.cmp(&b.addr)));
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_private() {
        AddressClass::PrivateLan
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else {
        AddressClass::Other
    }
}

/// fc00::/7.
fn is_unique_local(ip: Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xfe00) == 0xfc00
}

/// fe80::/10.
fn is_unicast_link_local(ip: Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xffc0) == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn order(addresses: &[&str]) -> Vec<String> {
        host_candidates(addresses.iter().map(|s| ip(s)), 4100, Some(4200))
            .into_iter()
            .map(|c| c.addr.to_string())
            .collect()
    }

    #[test]
    fn classifies_private_public_loopback_and_link_local() {
        assert_eq!(classify(ip("10.1.2.3")), AddressClass::PrivateLan);
        assert_eq!(classify(ip("172.16.0.1")), AddressClass::PrivateLan);
        assert_eq!(classify(ip("172.31.255.1")), AddressClass::PrivateLan);
        assert_eq!(classify(ip("172.32.0.1")), AddressClass::Other);
        assert_eq!(classify(ip("192.168.1.20")), AddressClass::PrivateLan);
        assert_eq!(classify(ip("fd12:3456::1")), AddressClass::PrivateLan);
        assert_eq!(classify(ip("fc00::1")), AddressClass::PrivateLan);
        assert_eq!(classify(ip("203.0.113.7")), AddressClass::Other);
        assert_eq!(classify(ip("100.64.0.1")), AddressClass::Other);
        assert_eq!(classify(ip("2001:db8::1")), AddressClass::Other);
        assert_eq!(classify(ip("169.254.3.4")), AddressClass::LinkLocal);
        assert_eq!(classify(ip("127.0.0.1")), AddressClass::Loopback);
        assert_eq!(classify(ip("127.8.9.10")), AddressClass::Loopback);
        assert_eq!(classify(ip("::1")), AddressClass::Loopback);
        assert_eq!(classify(ip("::ffff:192.168.0.1")), AddressClass::PrivateLan);
    }

    #[test]
    fn private_lan_first_then_public_then_loopback_last() {
        let got = order(&[
            "127.0.0.1",
            "203.0.113.7",
            "::1",
            "2001:db8::1",
            "192.168.1.20",
            "fd00::5",
            "10.0.0.2",
            "169.254.9.9",
        ]);
        assert_eq!(
            got,
            vec![
                "10.0.0.2:4100",
                "192.168.1.20:4100",
                "[fd00::5]:4200",
                "203.0.113.7:4100",
                "[2001:db8::1]:4200",
                "169.254.9.9:4100",
                "127.0.0.1:4100",
                "[::1]:4200",
            ]
        );
    }

    #[test]
    fn priorities_strictly_decrease_across_classes() {
        let lan = host_priority(ip("192.168.0.2"));
        let lan6 = host_priority(ip("fd00::2"));
        let public = host_priority(ip("198.51.100.1"));
        let loopback = host_priority(ip("127.0.0.1"));
        assert!(lan > lan6 && lan6 > public && public > loopback);
    }

    #[test]
    fn skips_scoped_link_local_unspecified_multicast_and_duplicates() {
        let got = order(&[
            "fe80::1",
            "0.0.0.0",
            "224.0.0.1",
            "10.0.0.2",
            "10.0.0.2",
            "::",
        ]);
        assert_eq!(got, vec!["10.0.0.2:4100"]);
    }

    #[test]
    fn skips_ipv6_without_an_ipv6_listener() {
        let got: Vec<String> =
            host_candidates([ip("::1"), ip("127.0.0.1"), ip("fd00::1")], 5000, None)
                .into_iter()
                .map(|c| c.addr.to_string())
                .collect();
        assert_eq!(got, vec!["127.0.0.1:5000"]);
    }

    #[test]
    fn candidates_are_tcp_host_candidates() {
        let candidates = host_candidates([ip("10.0.0.2")], 4100, None);
        assert_eq!(candidates.len(), 1);
        assert_eq!(candidates[0].transport, Transport::Tcp);
        assert_eq!(candidates[0].kind, CandidateKind::Host);
    }
}
