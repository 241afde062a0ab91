//! Ordering of host addresses for direct connections, and the check of the
//! candidates a peer sends (sans-IO, no sockets).
//!
//! Peers on one LAN reach each other fastest and most reliably through their
//! private addresses, so those come first; public addresses next; loopback
//! last (it only helps when both peers run on the same machine, and then
//! every other address works too). The priorities are the TCP host rows of
//! the [`priority`] table; addresses are classified by
//! [`ferry_nat::classify`].
//!
//! The peer's candidates arrive sealed in its `hello`, but the peer itself
//! may be hostile: [`peer_candidates`] keeps only addresses worth dialing,
//! so a peer cannot make us connect or punch to our own loopback services,
//! link-local neighbours, multicast or broadcast groups, port 0, or to
//! hundreds of targets. [`offered_candidates`] applies the same rule to
//! what we send.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ferry_nat::AddrClass;
use ferry_proto::peer::{Candidate, CandidateKind, Transport};
use tracing::debug;

use crate::priority::{self, Origin};

/// Most candidates taken from a peer's `hello` (TCP and UDP together);
/// the best by the peer's priority are kept, the rest dropped.
pub const MAX_PEER_CANDIDATES: usize = 32;

/// Priority of a (TCP) host candidate: higher is better, from the
/// [`priority`] table. Within a tier IPv4 goes first, because home routers
/// far more often route and filter IPv4 sanely between LAN hosts than IPv6.
pub(crate) fn host_priority(ip: IpAddr) -> u32 {
    priority::of(Origin::Host(ip), Transport::Tcp)
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
                if is_scoped_link_local(v6) {
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

/// The peer's candidates that we may dial or punch to, best first by the
/// peer's priority (ties keep the peer's order), at most
/// [`MAX_PEER_CANDIDATES`], each address and transport once. Refused (and
/// logged at debug): unspecified, multicast, broadcast, `0.0.0.0/8`,
/// link-local (169.254/16, fe80::/10: IPv6 link-local needs a scope id we
/// cannot know, and a LAN without DHCP still has its peers' other
/// addresses or the relay), port 0, and loopback unless both sides are on
/// this machine: our signalling connection reached the server over
/// loopback (`our_observed`) and the peer says the same of its own
/// (its server-observed candidate is loopback).
pub fn peer_candidates(candidates: Vec<Candidate>, our_observed: SocketAddr) -> Vec<Candidate> {
    let received = candidates.len();
    let their_observed_loopback = candidates
        .iter()
        .any(|c| c.kind == CandidateKind::ServerObserved && is_loopback(c.addr.ip()));
    let loopback_ok = is_loopback(our_observed.ip()) && their_observed_loopback;
    let mut kept: Vec<Candidate> = Vec::with_capacity(received.min(MAX_PEER_CANDIDATES));
    for candidate in candidates {
        if let Some(why) = refusal(candidate.addr, loopback_ok) {
            debug!(addr = %candidate.addr, why, "dropping a peer candidate");
            continue;
        }
        if kept
            .iter()
            .any(|c| c.addr == candidate.addr && c.transport == candidate.transport)
        {
            debug!(addr = %candidate.addr, "dropping a duplicate peer candidate");
            continue;
        }
        kept.push(candidate);
    }
    // Stable: equal priorities keep the peer's order.
    kept.sort_by_key(|c| std::cmp::Reverse(c.priority));
    if kept.len() > MAX_PEER_CANDIDATES {
        debug!(
            received,
            kept = MAX_PEER_CANDIDATES,
            "peer sent too many candidates; keeping its best"
        );
        kept.truncate(MAX_PEER_CANDIDATES);
    }
    kept
}

/// The peer's candidates without its IPv6 unique-local ones (fc00::/7)
/// that lie outside every /64 of `ours` (our interface addresses): a
/// unique-local address is reachable only inside its own site, so one on
/// none of our links belongs to another network, where dialing it would
/// at best time out and at worst reach a stranger. (Link-local ones never
/// get this far: [`peer_candidates`] refuses them.)
pub fn on_our_links(candidates: Vec<Candidate>, ours: &[IpAddr]) -> Vec<Candidate> {
    let prefix = |ip: Ipv6Addr| ip.segments()[..4].to_vec();
    let our_prefixes: Vec<Vec<u16>> = ours
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(v6) => Some(prefix(*v6)),
            IpAddr::V4(_) => None,
        })
        .collect();
    candidates
        .into_iter()
        .filter(|c| match c.addr.ip() {
            IpAddr::V6(v6) if ferry_nat::classify(IpAddr::V6(v6)) == AddrClass::UniqueLocal => {
                let here = our_prefixes.contains(&prefix(v6));
                if !here {
                    debug!(addr = %c.addr, "dropping a unique-local peer candidate on none of our links");
                }
                here
            }
            _ => true,
        })
        .collect()
}

/// Our own candidates as we offer them: the same rule as
/// [`peer_candidates`] (without the cap), with loopback offered only when
/// the rendezvous server is on loopback itself (then the peer may be on
/// this machine; otherwise it cannot be reached there and need not learn
/// of it).
pub fn offered_candidates(candidates: Vec<Candidate>, server: SocketAddr) -> Vec<Candidate> {
    let loopback_ok = is_loopback(server.ip());
    candidates
        .into_iter()
        .filter(|c| refusal(c.addr, loopback_ok).is_none())
        .collect()
}

/// Why `addr` is not a place to dial or punch to, or `None` when it is.
/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
pub(crate) fn refusal(addr: SocketAddr, loopback_ok: bool) -> Option<&'static str> {
    if addr.port() == 0 {
        return Some("port 0");
    }
    match ferry_nat::classify(addr.ip()) {
        AddrClass::Unspecified => Some("unspecified address"),
        AddrClass::Multicast => Some("multicast address"),
        AddrClass::Loopback => {
            (!loopback_ok).then_some("loopback address of a peer on another machine")
        }
        AddrClass::Broadcast => Some("broadcast address"),
        AddrClass::Reserved if is_this_network(addr.ip()) => {
            Some("\"this network\" address (0.0.0.0/8)")
        }
        AddrClass::LinkLocal => Some("link-local address"),
        _ => None,
    }
}

/// 127/8 and `::1`, also IPv4-mapped.
fn is_loopback(ip: IpAddr) -> bool {
    ferry_nat::classify(ip) == AddrClass::Loopback
}

/// 0.0.0.0/8, also IPv4-mapped (part of what `ferry_nat` calls reserved).
fn is_this_network(ip: IpAddr) -> bool {
    matches!(ip.to_canonical(), IpAddr::V4(v4) if v4.octets()[0] == 0)
}

/// An IPv6 link-local address (fe80::/10), which needs a scope id to be
/// dialed; IPv4-mapped addresses are never scoped.
fn is_scoped_link_local(ip: Ipv6Addr) -> bool {
    ip.to_ipv4_mapped().is_none() && ferry_nat::classify(IpAddr::V6(ip)) == AddrClass::LinkLocal
}

/// Sorts candidates best first; ties are broken by address so the order is
/// deterministic.
pub(crate) fn sort_by_priority(candidates: &mut [Candidate]) {
    candidates.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.addr.cmp(&b.addr)));
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

    fn peer(addr: &str, transport: Transport, kind: CandidateKind, priority: u32) -> Candidate {
        Candidate {
            addr: addr.parse().unwrap(),
            transport,
            kind,
            priority,
        }
    }

    fn tcp(addr: &str) -> Candidate {
        peer(addr, Transport::Tcp, CandidateKind::Host, 100)
    }

    fn addrs(candidates: &[Candidate]) -> Vec<String> {
        candidates.iter().map(|c| c.addr.to_string()).collect()
    }

    const REMOTE_OBSERVED: &str = "198.51.100.20:40000";
    const LOOPBACK_OBSERVED: &str = "127.0.0.1:40000";

    #[test]
    fn a_peer_cannot_point_us_at_loopback_link_local_or_nonsense() {
        let hostile = [
            "127.0.0.1:22",
            "127.8.9.10:6379",
            "[::1]:22",
            "[::ffff:127.0.0.1]:22",
            "0.0.0.0:4000",
            "[::]:4000",
            "0.1.2.3:4000",
            "169.254.169.254:80",
            "[fe80::1]:4000",
            "[::ffff:169.254.169.254]:80",
            "224.0.0.251:5353",
            "239.255.255.250:1900",
            "[ff02::1]:4000",
            "255.255.255.255:4000",
            "10.0.0.2:0",
        ];
        for transport in [Transport::Tcp, Transport::Udp] {
            for kind in [CandidateKind::Host, CandidateKind::ServerObserved] {
                let sent: Vec<Candidate> = hostile
                    .iter()
                    .map(|a| peer(a, transport, kind, 1000))
                    .collect();
                let kept = peer_candidates(sent, REMOTE_OBSERVED.parse().unwrap());
                assert!(
                    kept.is_empty(),
                    "{transport:?} {kind:?} kept {:?}",
                    addrs(&kept)
                );
            }
        }
    }

    #[test]
    fn lan_public_and_documentation_addresses_are_kept_best_first() {
        let sent = vec![
            peer("203.0.113.7:4000", Transport::Udp, CandidateKind::Stun, 900),
            tcp("10.0.0.2:4100"),
            peer(
                "192.0.2.5:4000",
                Transport::Tcp,
                CandidateKind::ServerObserved,
                100,
            ),
            peer(
                "[2001:db8::5]:4200",
                Transport::Tcp,
                CandidateKind::Host,
                300,
            ),
            peer("100.64.0.1:4000", Transport::Udp, CandidateKind::Host, 50),
        ];
        let kept = peer_candidates(sent, REMOTE_OBSERVED.parse().unwrap());
        assert_eq!(
            addrs(&kept),
            [
                "203.0.113.7:4000",
                "[2001:db8::5]:4200",
                "10.0.0.2:4100",
                "192.0.2.5:4000",
                "100.64.0.1:4000",
            ]
        );
    }

    #[test]
    fn loopback_only_when_both_sides_reached_the_server_over_loopback() {
        let sent = || {
            vec![
                tcp("127.0.0.1:4100"),
                peer("127.0.0.1:5000", Transport::Udp, CandidateKind::Host, 10),
                peer(
                    "127.0.0.1:41000",
                    Transport::Tcp,
                    CandidateKind::ServerObserved,
                    100,
                ),
            ]
        };
        // Two processes on one machine with the server on loopback: the
        // loopback tests rely on this.
        let kept = peer_candidates(sent(), LOOPBACK_OBSERVED.parse().unwrap());
        assert_eq!(kept.len(), 3);
        let kept = peer_candidates(sent(), "[::1]:40000".parse().unwrap());
        assert_eq!(kept.len(), 3);
        // We reached the server from elsewhere: the peer's loopback is ours.
        assert!(peer_candidates(sent(), REMOTE_OBSERVED.parse().unwrap()).is_empty());
        // The server is on our loopback but the peer came from elsewhere.
        let mut remote_peer = sent();
        remote_peer[2].addr = "198.51.100.9:41000".parse().unwrap();
        let kept = peer_candidates(remote_peer, LOOPBACK_OBSERVED.parse().unwrap());
        assert_eq!(addrs(&kept), ["198.51.100.9:41000"]);
    }

    #[test]
    fn at_most_max_peer_candidates_and_no_duplicates() {
        let mut sent: Vec<Candidate> = (0..200u32)
            .map(|i| {
                let addr = format!("10.0.{}.{}:4000", i / 250, i % 250 + 1);
                peer(&addr, Transport::Udp, CandidateKind::Host, i)
            })
            .collect();
        sent.push(peer(
            "10.9.9.9:4000",
            Transport::Tcp,
            CandidateKind::Host,
            5000,
        ));
        sent.push(peer(
            "10.9.9.9:4000",
            Transport::Tcp,
            CandidateKind::Host,
            5000,
        ));
        sent.push(peer(
            "10.9.9.9:4000",
            Transport::Udp,
            CandidateKind::Host,
            5000,
        ));
        let kept = peer_candidates(sent, REMOTE_OBSERVED.parse().unwrap());
        assert_eq!(kept.len(), MAX_PEER_CANDIDATES);
        assert_eq!(kept[0].addr.to_string(), "10.9.9.9:4000");
        assert_eq!(kept[0].transport, Transport::Tcp);
        assert_eq!(kept[1].addr.to_string(), "10.9.9.9:4000");
        assert_eq!(kept[1].transport, Transport::Udp);
        assert_eq!(kept[2].priority, 199);
        assert_eq!(kept[MAX_PEER_CANDIDATES - 1].priority, 200 - 30);
    }

    #[test]
    fn we_offer_loopback_only_when_the_server_is_on_loopback() {
        let ours = || {
            vec![
                tcp("192.168.1.20:4100"),
                tcp("127.0.0.1:4100"),
                peer("127.0.0.1:5000", Transport::Udp, CandidateKind::Host, 10),
                peer("169.254.9.9:5000", Transport::Udp, CandidateKind::Host, 10),
                peer(
                    "203.0.113.7:41000",
                    Transport::Tcp,
                    CandidateKind::ServerObserved,
                    100,
                ),
            ]
        };
        let offered = offered_candidates(ours(), "203.0.113.1:443".parse().unwrap());
        assert_eq!(addrs(&offered), ["192.168.1.20:4100", "203.0.113.7:41000"]);
        let offered = offered_candidates(ours(), "127.0.0.1:443".parse().unwrap());
        assert_eq!(
            addrs(&offered),
            [
                "192.168.1.20:4100",
                "127.0.0.1:4100",
                "127.0.0.1:5000",
                "203.0.113.7:41000"
            ]
        );
    }

    #[test]
    fn unique_local_candidates_only_on_one_of_our_links() {
        let sent = vec![
            peer(
                "[fd00:1:2:3::20]:4000",
                Transport::Udp,
                CandidateKind::Host,
                950,
            ),
            peer("[fd99::20]:4000", Transport::Udp, CandidateKind::Host, 950),
            peer(
                "[2001:db8:b1::10]:4000",
                Transport::Udp,
                CandidateKind::Host,
                925,
            ),
            peer(
                "192.168.2.10:4000",
                Transport::Udp,
                CandidateKind::Host,
                1000,
            ),
        ];
        let ours = [ip("fd00:1:2:3::10"), ip("10.0.1.10")];
        assert_eq!(
            addrs(&on_our_links(sent.clone(), &ours)),
            [
                "[fd00:1:2:3::20]:4000",
                "[2001:db8:b1::10]:4000",
                "192.168.2.10:4000"
            ]
        );
        // No IPv6 of ours at all: no unique-local address of theirs.
        assert_eq!(
            addrs(&on_our_links(sent, &[ip("10.0.1.10")])),
            ["[2001:db8:b1::10]:4000", "192.168.2.10:4000"]
        );
    }
}
