//! Address classes: what kind of address is this, and how much is it worth
//! as a connection candidate?
//!
//! [`classify`] is pure (no I/O). [`interfaces`] lists the host's interface
//! addresses with `if-addrs` and classifies each one.
//!
//! Classification rules (first match wins):
//!
//! | class | IPv4 | IPv6 |
//! |---|---|---|
//! | [`AddrClass::Unspecified`] | `0.0.0.0` | `::` |
//! | [`AddrClass::Loopback`] | `127.0.0.0/8` | `::1` |
//! | [`AddrClass::Private`] | `10/8`, `172.16/12`, `192.168/16` | — |
//! | [`AddrClass::SharedCgnat`] | `100.64/10` | — |
//! | [`AddrClass::LinkLocal`] | `169.254/16` | `fe80::/10` |
//! | [`AddrClass::UniqueLocal`] | — | `fc00::/7` |
//! | [`AddrClass::Documentation`] | `192.0.2/24`, `198.51.100/24`, `203.0.113/24` | `2001:db8::/32`, `3fff::/20` |
//! | [`AddrClass::Multicast`] | `224/4` | `ff00::/8` |
//! | [`AddrClass::Broadcast`] | `255.255.255.255` | — |
//! | [`AddrClass::Reserved`] | `0/8` (except `0.0.0.0`), `192.0.0/24` (IETF protocol assignments), `192.88.99/24` (deprecated 6to4 relay anycast), `198.18/15` (benchmarking), `240/4` (except broadcast) | `100::/64` (discard), `2001:2::/48` (benchmarking), `fec0::/10` (deprecated site-local), IPv4-compatible `::a.b.c.d`, and everything else outside `2000::/3` except the NAT64 prefix |
//! | [`AddrClass::Public`] | everything else | the rest of `2000::/3`, and `64:ff9b::/96` (NAT64, reaches public IPv4) |
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are classified as the IPv4
//! address they carry.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The kind of an IP address, as far as reachability is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddrClass {
    /// RFC 1918 private IPv4: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// RFC 6598 shared address space used by carrier-grade NAT: `100.64/10`.
    SharedCgnat,
    /// Loopback: `127/8`, `::1`.
    Loopback,
    /// Link-local: `169.254/16`, `fe80::/10`.
    LinkLocal,
    /// IPv6 unique-local (the IPv6 private range): `fc00::/7`.
    UniqueLocal,
    /// Documentation ranges: `192.0.2/24`, `198.51.100/24`, `203.0.113/24`,
    /// `2001:db8::/32`, `3fff::/20`. ferry's lab uses them for "public" hosts.
    Documentation,
    /// Multicast: `224/4`, `ff00::/8`.
    Multicast,
    /// The unspecified address: `0.0.0.0`, `::`.
    Unspecified,
    /// The IPv4 limited broadcast address `255.255.255.255`.
    Broadcast,
    /// Special-purpose ranges that are never useful as candidates (see the
    /// module documentation for the list).
    Reserved,
    /// Globally routable.
    Public,
}

impl AddrClass {
    /// How much this class is worth as a connection candidate: higher is
    /// tried first, `0` means "never a candidate".
    ///
    /// Order: `Private` (1000) > `UniqueLocal` (950) > `Public` (800) >
    /// `Documentation` (750, treated like public because test networks use
    /// it for public hosts) > `SharedCgnat` (600, only reaches peers behind
    /// the same carrier NAT) > `LinkLocal` (400, needs a scope and the same
    /// link) > `Loopback` (100, same host only) > `Multicast`, `Broadcast`,
    /// `Unspecified`, `Reserved` (0).
    ///
    /// LAN classes come first because a shared LAN is the fastest path and
    /// works even when the NAT does not hairpin.
    pub fn candidate_priority(&self) -> u32 {
        match self {
            AddrClass::Private => 1000,
            AddrClass::UniqueLocal => 950,
            AddrClass::Public => 800,
            AddrClass::Documentation => 750,
            AddrClass::SharedCgnat => 600,
            AddrClass::LinkLocal => 400,
            AddrClass::Loopback => 100,
            AddrClass::Multicast
            | AddrClass::Broadcast
            | AddrClass::Unspecified
            | AddrClass::Reserved => 0,
        }
    }

    /// Whether an address of this class may be offered as a candidate
    /// (`candidate_priority() > 0`).
    pub fn is_candidate(&self) -> bool {
        self.candidate_priority() > 0
    }
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddrClass::Private => "private LAN",
            AddrClass::SharedCgnat => "carrier-grade NAT (shared)",
            AddrClass::Loopback => "loopback",
            AddrClass::LinkLocal => "link-local",
            AddrClass::UniqueLocal => "IPv6 unique-local (private)",
            AddrClass::Documentation => "documentation/test range",
            AddrClass::Multicast => "multicast",
            AddrClass::Unspecified => "unspecified",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Reserved => "reserved",
            AddrClass::Public => "public",
        })
    }
}

/// Classifies an IPv4 or IPv6 address (see the module documentation for the
/// rules). IPv4-mapped IPv6 addresses are classified as the IPv4 address.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

/// `addr` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
/// dual-stack socket reports for IPv4 traffic) written as the IPv4
/// address it carries; every other address as it is.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// `dst` as a socket bound to `local` can send to it: an IPv4 address
/// becomes IPv4-mapped for an IPv6 (dual-stack) socket; otherwise as it is.
pub fn for_socket(local: SocketAddr, dst: SocketAddr) -> SocketAddr {
    match (local, dst) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => dst,
    }
}

/// One address of one network interface of this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The interface name, e.g. `eth0`.
    pub name: String,
    /// The address.
    pub addr: IpAddr,
    /// The address's class.
    pub class: AddrClass,
}

/// Lists this host's interface addresses, classified. Returns an empty list
/// (and logs a warning) when the OS refuses to list them; use
/// [`try_interfaces`] to see the error.
pub fn interfaces() -> Vec<Interface> {
    match try_interfaces() {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!("cannot list network interfaces: {e}");
            Vec::new()
        }
    }
}

/// The local address the kernel would send from towards `dst`, or `None`
/// when it has no route there. A UDP `connect()`: nothing is sent.
pub fn route_source(dst: std::net::SocketAddr) -> Option<IpAddr> {
    crate::upnp::search::route_source(dst)
}

/// Lists this host's interface addresses, classified, or the OS error.
pub fn try_interfaces() -> std::io::Result<Vec<Interface>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .map(|iface| {
            let addr = iface.ip();
            Interface {
                name: iface.name,
                addr,
                class: classify(addr),
            }
        })
        .collect())
}

fn in_v4(ip: u32, net: [u8; 4], prefix: u32) -> bool {
    let net = u32::from_be_bytes(net);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    ip & mask == net & mask
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let n = u32::from(ip);
    if n == 0 {
        return AddrClass::Unspecified;
    }
    if n == u32::MAX {
        return AddrClass::Broadcast;
    }
    const TABLE: &[([u8; 4], u32, AddrClass)] = &[
        ([0, 0, 0, 0], 8, AddrClass::Reserved),
        ([10, 0, 0, 0], 8, AddrClass::Private),
        ([100, 64, 0, 0], 10, AddrClass::SharedCgnat),
        ([127, 0, 0, 0], 8, AddrClass::Loopback),
        ([169, 254, 0, 0], 16, AddrClass::LinkLocal),
        ([172, 16, 0, 0], 12, AddrClass::Private),
        ([192, 0, 0, 0], 24, AddrClass::Reserved),
        ([192, 0, 2, 0], 24, AddrClass::Documentation),
        ([192, 88, 99, 0], 24, AddrClass::Reserved),
        ([192, 168, 0, 0], 16, AddrClass::Private),
        ([198, 18, 0, 0], 15, AddrClass::Reserved),
        ([198, 51, 100, 0], 24, AddrClass::Documentation),
        ([203, 0, 113, 0], 24, AddrClass::Documentation),
        ([224, 0, 0, 0], 4, AddrClass::Multicast),
        ([240, 0, 0, 0], 4, AddrClass::Reserved),
    ];
    TABLE
        .iter()
        .find(|(net, prefix, _)| in_v4(n, *net, *prefix))
        .map_or(AddrClass::Public, |(_, _, class)| *class)
}

fn in_v6(ip: u128, net: u128, prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    ip & mask == net & mask
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let n = u128::from(ip);
    if n == 0 {
        return AddrClass::Unspecified;
    }
    if n == 1 {
        return AddrClass::Loopback;
    }
    const TABLE: &[(u128, u32, AddrClass)] = &[
        (
            0x0064_ff9b_0000_0000_0000_0000_0000_0000,
            96,
            AddrClass::Public,
        ),
        (
            0x0100_0000_0000_0000_0000_0000_0000_0000,
            64,
            AddrClass::Reserved,
        ),
        (
            0x2001_0002_0000_0000_0000_0000_0000_0000,
            48,
            AddrClass::Reserved,
        ),
        (
            0x2001_0db8_0000_0000_0000_0000_0000_0000,
            32,
            AddrClass::Documentation,
        ),
        (
            0x3fff_0000_0000_0000_0000_0000_0000_0000,
            20,
            AddrClass::Documentation,
        ),
        (
            0x2000_0000_0000_0000_0000_0000_0000_0000,
            3,
            AddrClass::Public,
        ),
        (
            0xfc00_0000_0000_0000_0000_0000_0000_0000,
            7,
            AddrClass::UniqueLocal,
        ),
        (
            0xfe80_0000_0000_0000_0000_0000_0000_0000,
            10,
            AddrClass::LinkLocal,
        ),
        (
            0xff00_0000_0000_0000_0000_0000_0000_0000,
            8,
            AddrClass::Multicast,
        ),
    ];
    TABLE
        .iter()
        .find(|(net, prefix, _)| in_v6(n, *net, *prefix))
        .map_or(AddrClass::Reserved, |(_, _, class)| *class)
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddrClass::*;

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    fn v6(n: u128) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(n))
    }

    /// (network, prefix, class inside, class just below, class just above)
    #[allow(clippy::type_complexity)]
    const V4_RANGES: &[([u8; 4], u32, AddrClass, AddrClass, AddrClass)] = &[
        (
            [0, 0, 0, 0],
            8,
            Reserved,
            Reserved, /* unused */
            Public,
        ),
        ([10, 0, 0, 0], 8, Private, Public, Public),
        ([100, 64, 0, 0], 10, SharedCgnat, Public, Public),
        ([127, 0, 0, 0], 8, Loopback, Public, Public),
        ([169, 254, 0, 0], 16, LinkLocal, Public, Public),
        ([172, 16, 0, 0], 12, Private, Public, Public),
        ([192, 0, 0, 0], 24, Reserved, Public, Public),
        ([192, 0, 2, 0], 24, Documentation, Public, Public),
        ([192, 88, 99, 0], 24, Reserved, Public, Public),
        ([192, 168, 0, 0], 16, Private, Public, Public),
        ([198, 18, 0, 0], 15, Reserved, Public, Public),
        ([198, 51, 100, 0], 24, Documentation, Public, Public),
        ([203, 0, 113, 0], 24, Documentation, Public, Public),
        ([224, 0, 0, 0], 4, Multicast, Public, Reserved),
        (
            [240, 0, 0, 0],
            4,
            Reserved,
            Multicast,
            Reserved, /* unused */
        ),
    ];

    #[test]
    fn every_ipv4_range_edge() {
        for &(net, prefix, inside, below, above) in V4_RANGES {
            let first = u32::from_be_bytes(net);
            let last = first | (u32::MAX >> prefix);
            let name = format!("{}/{prefix}", Ipv4Addr::from(net));
            // 0.0.0.0 and 255.255.255.255 are special single addresses.
            let first_inside = if first == 0 { 1 } else { first };
            let last_inside = if last == u32::MAX { last - 1 } else { last };
            assert_eq!(classify(v4(first_inside)), inside, "first of {name}");
            assert_eq!(classify(v4(last_inside)), inside, "last of {name}");
            if first > 0 {
                assert_eq!(classify(v4(first - 1)), below, "below {name}");
            }
            if last < u32::MAX {
                assert_eq!(classify(v4(last + 1)), above, "above {name}");
            }
            // The IPv4-mapped form classifies the same.
            let mapped = IpAddr::V6(Ipv4Addr::from(first_inside).to_ipv6_mapped());
            assert_eq!(classify(mapped), inside, "mapped {name}");
        }
    }

    #[test]
    fn ipv4_single_addresses() {
        assert_eq!(classify("0.0.0.0".parse().unwrap()), Unspecified);
        assert_eq!(classify("0.0.0.1".parse().unwrap()), Reserved);
        assert_eq!(classify("255.255.255.255".parse().unwrap()), Broadcast);
        assert_eq!(classify("255.255.255.254".parse().unwrap()), Reserved);
        assert_eq!(classify("8.8.8.8".parse().unwrap()), Public);
        assert_eq!(classify("::ffff:192.168.1.1".parse().unwrap()), Private);
        assert_eq!(classify("::ffff:100.64.0.1".parse().unwrap()), SharedCgnat);
        assert_eq!(classify("::ffff:0.0.0.0".parse().unwrap()), Unspecified);
    }

    /// (network, prefix, class inside, class just below, class just above)
    #[allow(clippy::type_complexity)]
    const V6_RANGES: &[(&str, u32, AddrClass, AddrClass, AddrClass)] = &[
        ("64:ff9b::", 96, Public, Reserved, Reserved),
        ("100::", 64, Reserved, Reserved, Reserved),
        ("2001:2::", 48, Reserved, Public, Public),
        ("2001:db8::", 32, Documentation, Public, Public),
        ("3fff::", 20, Documentation, Public, Public),
        ("2000::", 3, Public, Reserved, Reserved),
        ("fc00::", 7, UniqueLocal, Reserved, Reserved),
        ("fe80::", 10, LinkLocal, Reserved, Reserved),
        ("fec0::", 10, Reserved, LinkLocal, Multicast),
        (
            "ff00::", 8, Multicast, Reserved, Multicast, /* unused */
        ),
    ];

    #[test]
    fn every_ipv6_range_edge() {
        for &(net, prefix, inside, below, above) in V6_RANGES {
            let first = u128::from(net.parse::<Ipv6Addr>().unwrap());
            let last = first | (u128::MAX >> prefix);
            let name = format!("{net}/{prefix}");
            assert_eq!(classify(v6(first)), inside, "first of {name}");
            assert_eq!(classify(v6(last)), inside, "last of {name}");
            assert_eq!(classify(v6(first - 1)), below, "below {name}");
            if last < u128::MAX {
                assert_eq!(classify(v6(last + 1)), above, "above {name}");
            }
        }
        // 2000::/3 contains holes: the edges next to them are public.
        assert_eq!(
            classify("2001:1:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()),
            Public
        );
        assert_eq!(
            classify("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()),
            Public
        );
        assert_eq!(
            classify("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()),
            Public
        );
    }

    #[test]
    fn ipv6_single_addresses() {
        assert_eq!(classify("::".parse().unwrap()), Unspecified);
        assert_eq!(classify("::1".parse().unwrap()), Loopback);
        assert_eq!(classify("::2".parse().unwrap()), Reserved);
        // IPv4-compatible (deprecated), not IPv4-mapped.
        assert_eq!(classify("::10.0.0.1".parse().unwrap()), Reserved);
        assert_eq!(classify("::fffe:10.0.0.1".parse().unwrap()), Reserved);
        assert_eq!(classify("2606:4700::1111".parse().unwrap()), Public);
        assert_eq!(classify("fd12:3456::1".parse().unwrap()), UniqueLocal);
        assert_eq!(classify("fe80::1".parse().unwrap()), LinkLocal);
    }

    #[test]
    fn priority_order_puts_lan_first_and_useless_last() {
        let order = [
            Private,
            UniqueLocal,
            Public,
            Documentation,
            SharedCgnat,
            LinkLocal,
            Loopback,
        ];
        for pair in order.windows(2) {
            assert!(
                pair[0].candidate_priority() > pair[1].candidate_priority(),
                "{} should beat {}",
                pair[0],
                pair[1]
            );
        }
        for class in [Multicast, Broadcast, Unspecified, Reserved] {
            assert_eq!(class.candidate_priority(), 0);
            assert!(!class.is_candidate());
        }
        assert!(Loopback.is_candidate());
    }

    #[test]
    fn display_names_are_user_facing() {
        assert_eq!(Private.to_string(), "private LAN");
        assert_eq!(SharedCgnat.to_string(), "carrier-grade NAT (shared)");
        assert_eq!(UniqueLocal.to_string(), "IPv6 unique-local (private)");
        assert_eq!(Public.to_string(), "public");
    }

    #[test]
    fn interfaces_include_classified_loopback() {
        let list = try_interfaces().expect("list interfaces");
        let lo = list
            .iter()
            .find(|i| i.addr == IpAddr::V4(Ipv4Addr::LOCALHOST))
            .expect("127.0.0.1 on some interface");
        assert_eq!(lo.class, Loopback);
        assert!(!lo.name.is_empty());
        for iface in &list {
            assert_eq!(iface.class, classify(iface.addr));
        }
    }

    #[test]
    fn ipv4_mapped_addresses_read_as_ipv4_and_ipv4_is_mapped_for_ipv6_sockets() {
        let mapped: SocketAddr = "[::ffff:198.51.100.2]:4000".parse().unwrap();
        let v4: SocketAddr = "198.51.100.2:4000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        assert_eq!(canonical(mapped), v4);
        assert_eq!(canonical(v4), v4);
        assert_eq!(canonical(v6), v6);
        let dual: SocketAddr = "[::]:5000".parse().unwrap();
        let plain: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        assert_eq!(for_socket(dual, v4), mapped);
        assert_eq!(for_socket(dual, v6), v6);
        assert_eq!(for_socket(plain, v4), v4);
    }
}
