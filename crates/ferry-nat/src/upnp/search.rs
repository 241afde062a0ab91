//! Gateway search: find the router with SSDP, from the right LAN addresses.
//!
//! ```text
//! search_addrs(route source, interfaces)  -> up to MAX_SEARCH_ADDRS binds
//! discover(): per try, one search_once() per bind, at once (JoinSet)
//!             first gateway to answer wins -> Gateway::new(found, bind)
//!             nobody answers after `tries` -> Ok(None)
//! ```
//!
//! Why several addresses and in which order: see the [`upnp`](crate::upnp)
//! module documentation.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use igd_next::aio::Gateway as IgdGateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{GatewayIpVersion, SearchError, SearchOptions};
use tokio::task::JoinSet;
use tracing::debug;

use super::{Gateway, UpnpError};
use crate::addr::{self, AddrClass, Interface};

/// Default time to wait for a gateway to answer one SSDP search.
pub const DEFAULT_SEARCH_TIMEOUT: Duration = Duration::from_millis(2500);
/// Default number of SSDP searches before concluding there is no gateway.
pub const DEFAULT_TRIES: u32 = 2;

/// At most this many local addresses are searched from at once.
pub const MAX_SEARCH_ADDRS: usize = 4;

/// Used to find the local address of the default route: `connect()` on a UDP
/// socket picks a route and a source address without sending anything.
/// 198.51.100.1 (TEST-NET-2) is off-link everywhere, so it follows the
/// default route.
const DEFAULT_ROUTE_PROBE: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 9));

/// How to look for a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpnpOptions {
    /// How long one SSDP search waits for an answer (default 2.5 s).
    pub search_timeout: Duration,
    /// How many searches to make before giving up (default 2; 0 counts as 1).
    /// Discovery takes at most about `tries × search_timeout`.
    pub tries: u32,
    /// Search only from this local address (e.g. `192.168.1.20:0`). `None`
    /// (the default) picks LAN addresses automatically; see the module
    /// documentation.
    pub bind: Option<SocketAddr>,
}

impl Default for UpnpOptions {
    fn default() -> Self {
        UpnpOptions {
            search_timeout: DEFAULT_SEARCH_TIMEOUT,
            tries: DEFAULT_TRIES,
            bind: None,
        }
    }
}

/// Looks for a UPnP IGD gateway on the LAN.
///
/// Returns `Ok(None)` when no gateway answers within about
/// `opts.tries × opts.search_timeout` — the normal case on many networks, so
/// it is logged at debug level only. Returns an error only when an explicit
/// [`UpnpOptions::bind`] address cannot be searched from at all.
pub async fn discover(opts: &UpnpOptions) -> Result<Option<Gateway>, UpnpError> {
    let binds: Vec<SocketAddr> = match opts.bind {
        Some(bind) => vec![bind],
        None => {
            let route = match route_source(DEFAULT_ROUTE_PROBE) {
                Some(IpAddr::V4(ip)) => Some(ip),
                _ => None,
            };
            search_addrs(route, &addr::interfaces())
                .into_iter()
                .map(|ip| SocketAddr::new(IpAddr::V4(ip), 0))
                .collect()
        }
    };
    if binds.is_empty() {
        debug!("UPnP: no IPv4 LAN address to search from; no gateway");
        return Ok(None);
    }
    let tries = opts.tries.max(1);
    let mut last_error = None;
    for attempt in 1..=tries {
        debug!(attempt, tries, ?binds, "UPnP: searching for a gateway");
        let mut searches = JoinSet::new();
        for &bind in &binds {
            searches.spawn(search_once(bind, opts.search_timeout));
        }
        while let Some(joined) = searches.join_next().await {
            match joined {
                Ok((bind, Ok(found))) => {
                    // Dropping the JoinSet aborts the other searches.
                    let gateway = Gateway::new(found, bind);
                    debug!(gateway = %gateway.addr(), %bind, "UPnP: gateway found");
                    return Ok(Some(gateway));
                }
                Ok((bind, Err(SearchError::NoResponseWithinTimeout))) => {
                    debug!(%bind, "UPnP: no gateway answered");
                    last_error = None;
                }
                Ok((bind, Err(e))) => {
                    debug!(%bind, "UPnP: search failed: {e}");
                    last_error = Some((bind, e));
                }
                Err(e) => debug!("UPnP: search task failed: {e}"),
            }
        }
    }
    match (opts.bind, last_error) {
        (Some(_), Some((bind, source))) => Err(UpnpError::Search { bind, source }),
        _ => {
            debug!("UPnP: no gateway found");
            Ok(None)
        }
    }
}

async fn search_once(
    bind: SocketAddr,
    timeout: Duration,
) -> (SocketAddr, Result<IgdGateway<Tokio>, SearchError>) {
    let mut options = SearchOptions::default();
    options.bind_addr = bind;
    options.timeout = Some(timeout);
    options.single_search_timeout = Some(timeout);
    options.gateway_ip_version = GatewayIpVersion::V4;
    // igd-next bounds the search by `timeout` itself; this outer bound only
    // guards against that changing.
    let search = igd_next::aio::tokio::search_gateway(options);
    let result = match tokio::time::timeout(timeout + Duration::from_millis(500), search).await {
        Ok(result) => result,
        Err(_) => Err(SearchError::NoResponseWithinTimeout),
    };
    (bind, result)
}

/// The local addresses to search from, best first (see the `upnp` module doc):
/// the default route's source address, then private, then CGNAT interface
/// addresses; IPv4 only, no duplicates, at most [`MAX_SEARCH_ADDRS`].
fn search_addrs(route_source: Option<Ipv4Addr>, interfaces: &[Interface]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    let push = |ip: Ipv4Addr, out: &mut Vec<Ipv4Addr>| {
        if !out.contains(&ip) && out.len() < MAX_SEARCH_ADDRS {
            out.push(ip);
        }
    };
    if let Some(ip) = route_source {
        if matches!(
            addr::classify(IpAddr::V4(ip)),
            AddrClass::Private
                | AddrClass::SharedCgnat
                | AddrClass::Public
                | AddrClass::Documentation
        ) {
            push(ip, &mut out);
        }
    }
    for wanted in [AddrClass::Private, AddrClass::SharedCgnat] {
        for iface in interfaces {
            if let IpAddr::V4(ip) = iface.addr {
                if iface.class == wanted {
                    push(ip, &mut out);
                }
            }
        }
    }
    out
}

/// The local source address the kernel would use towards `dst`. No packet
/// is sent: `connect()` on a UDP socket only picks a route.
pub(crate) fn route_source(dst: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match dst {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(dst).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ip: &str) -> Interface {
        let addr: IpAddr = ip.parse().unwrap();
        Interface {
            name: name.into(),
            addr,
            class: addr::classify(addr),
        }
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn search_addrs_prefer_default_route_then_private_then_cgnat() {
        let ifaces = [
            iface("lo", "127.0.0.1"),
            iface("tun0", "100.72.1.2"),
            iface("eth0", "192.168.1.20"),
            iface("eth0", "fe80::1"),
            iface("wlan0", "169.254.3.4"),
            iface("docker0", "172.17.0.1"),
            iface("eth1", "8.8.4.4"),
        ];
        assert_eq!(
            search_addrs(Some(v4("192.168.1.20")), &ifaces),
            [v4("192.168.1.20"), v4("172.17.0.1"), v4("100.72.1.2")],
            "route source first and not repeated; loopback, link-local, IPv6 and \
             non-route public addresses left out"
        );
        assert_eq!(
            search_addrs(Some(v4("100.72.1.2")), &ifaces),
            [v4("100.72.1.2"), v4("192.168.1.20"), v4("172.17.0.1")]
        );
        assert_eq!(
            search_addrs(None, &ifaces),
            [v4("192.168.1.20"), v4("172.17.0.1"), v4("100.72.1.2")]
        );
        // A loopback or link-local "route source" is never used.
        assert_eq!(
            search_addrs(Some(v4("127.0.0.1")), &ifaces[..1]),
            Vec::<Ipv4Addr>::new()
        );
        assert_eq!(
            search_addrs(Some(v4("169.254.3.4")), &[]),
            Vec::<Ipv4Addr>::new()
        );
        // A public route source is still searched from (the host may be the
        // DMZ host of a router).
        assert_eq!(search_addrs(Some(v4("8.8.4.4")), &[]), [v4("8.8.4.4")]);
    }

    #[test]
    fn search_addrs_are_capped() {
        let ifaces: Vec<Interface> = (1..=10)
            .map(|i| iface(&format!("eth{i}"), &format!("10.0.{i}.2")))
            .collect();
        let addrs = search_addrs(None, &ifaces);
        assert_eq!(addrs.len(), MAX_SEARCH_ADDRS);
        assert_eq!(addrs[0], v4("10.0.1.2"));
    }

    #[test]
    fn route_source_of_loopback_is_loopback() {
        // connect() on UDP sends nothing; loopback keeps this test local.
        assert_eq!(
            route_source("127.0.0.1:9".parse().unwrap()),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
    }

    #[tokio::test]
    async fn discover_without_gateway_is_quiet_none_within_tries_times_timeout() {
        // Bound to 127.0.0.1, Linux sends the SSDP multicast out of `lo`
        // only (the interface owning the source address), so nothing leaves
        // this host. Real gateways are covered by scripts/upnp-check.sh.
        let opts = UpnpOptions {
            search_timeout: Duration::from_millis(300),
            tries: 2,
            bind: Some("127.0.0.1:0".parse().unwrap()),
        };
        let start = std::time::Instant::now();
        let found = discover(&opts).await.expect("no gateway is not an error");
        let took = start.elapsed();
        assert!(found.is_none());
        assert!(
            took >= Duration::from_millis(600),
            "searched twice: {took:?}"
        );
        assert!(took < Duration::from_millis(1800), "bounded: {took:?}");
    }

    #[tokio::test]
    async fn discover_from_a_foreign_bind_address_is_an_error() {
        // 192.0.2.1 is not on this host, so bind fails before anything is sent.
        let opts = UpnpOptions {
            search_timeout: Duration::from_millis(200),
            tries: 1,
            bind: Some("192.0.2.1:0".parse().unwrap()),
        };
        let e = discover(&opts).await.unwrap_err();
        assert!(matches!(e, UpnpError::Search { .. }), "{e:?}");
        assert!(e.to_string().contains("192.0.2.1"), "{e}");
    }
}
