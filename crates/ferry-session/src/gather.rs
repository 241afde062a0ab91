//! Gathering our candidates while the peer is on its way: the UDP socket
//! and its STUN mapping, the TCP listener, UPnP mappings.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use ferry_connect::{ConnectError, DirectListener};
use ferry_nat::stun::{BindingOptions, RetransmitConfig, binding_udp};
use ferry_nat::upnp::{MappingGuard, Protocol, UpnpOptions};
use ferry_proto::peer::{Candidate, CandidateKind, Transport, UdpMapping};
use ferry_rendezvous::Welcome;
use tokio::net::UdpSocket;
use tracing::debug;

use crate::*;

/// Gathering in the background (see [`gather`]) while the peer is on its way.
pub(crate) type Gathering = tokio::task::JoinHandle<Result<Gathered, SessionError>>;

pub(crate) fn start_gathering(welcome: &Welcome, listen: bool, upnp: bool) -> Gathering {
    tokio::spawn(gather(
        stun_server(welcome),
        welcome.stun_second_port,
        listen,
        upnp,
    ))
}

pub(crate) fn stun_server(welcome: &Welcome) -> Option<SocketAddr> {
    welcome
        .stun_port
        .map(|port| SocketAddr::new(welcome.server_addr.ip(), port))
}

/// What one side offers the other.
pub(crate) struct Gathered {
    pub(crate) udp: UdpSocket,
    pub(crate) udp_mapping: UdpMapping,
    pub(crate) listener: Option<DirectListener>,
    pub(crate) candidates: Vec<Candidate>,
    pub(crate) upnp: Option<tokio::task::JoinHandle<Mapped>>,
}

/// Binds the UDP socket (and, for the sender, the TCP listener), learns the
/// UDP mapping from the server's STUN responder and, for the sender, maps
/// both ports on a UPnP gateway when there is one.
pub(crate) async fn gather(
    stun: Option<SocketAddr>,
    second_port: Option<u16>,
    listen: bool,
    upnp: bool,
) -> Result<Gathered, SessionError> {
    let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(|source| ConnectError::UdpSocket { source })?;
    let udp_port = udp.local_addr()?.port();
    let listener = if listen {
        Some(DirectListener::bind().await?)
    } else {
        None
    };
    let mut candidates = listener
        .as_ref()
        .map(DirectListener::candidates)
        .unwrap_or_default();
    for interface in ferry_nat::interfaces() {
        if let IpAddr::V4(ip) = interface.addr {
            if interface.class.is_candidate() {
                candidates.push(Candidate {
                    addr: SocketAddr::from((ip, udp_port)),
                    transport: Transport::Udp,
                    kind: CandidateKind::Host,
                    priority: ferry_connect::priority::of(
                        ferry_connect::priority::Origin::Host(interface.addr),
                        Transport::Udp,
                    ),
                });
            }
        }
    }

    let stun_lookup = async {
        let server = stun?;
        let options = BindingOptions {
            retransmit: RetransmitConfig {
                rto: Duration::from_millis(200),
                max_sends: 4,
                last_wait_factor: 4,
            },
            ..BindingOptions::default()
        };
        let first = match binding_udp(&udp, server, options).await {
            Ok(result) => result,
            Err(error) => {
                debug!(%error, "no STUN mapping: UDP may be blocked");
                return Some((None, UdpMapping::Blocked));
            }
        };
        // A second port of the server (RFC 5780 servers name it): a NAT
        // that maps each destination apart gives another public port.
        let Some(second_port) = first.other_address.map(|a| a.port()).or(second_port) else {
            return Some((Some(first.mapped), UdpMapping::Unknown));
        };
        let second = SocketAddr::new(server.ip(), second_port);
        let mapping = match binding_udp(&udp, second, options).await {
            Ok(again) if again.mapped == first.mapped => UdpMapping::Stable,
            Ok(again) => {
                debug!(first = %first.mapped, second = %again.mapped, "the UDP mapping varies by destination");
                UdpMapping::Varies
            }
            Err(error) => {
                debug!(%error, "no answer from the server's second STUN port");
                UdpMapping::Unknown
            }
        };
        Some((Some(first.mapped), mapping))
    };
    let upnp = if upnp {
        let tcp_port = listener.as_ref().map(DirectListener::port);
        Some(tokio::spawn(map_ports(udp_port, tcp_port)))
    } else {
        None
    };
    let (stun_mapped, udp_mapping) = stun_lookup.await.unwrap_or((None, UdpMapping::Unknown));
    if let Some(mapped) = stun_mapped {
        candidates.push(Candidate {
            addr: mapped,
            transport: Transport::Udp,
            kind: CandidateKind::Stun,
            priority: ferry_connect::priority::of(
                ferry_connect::priority::Origin::Stun,
                Transport::Udp,
            ),
        });
    }
    debug!(?candidates, "gathered candidates");
    Ok(Gathered {
        udp,
        udp_mapping,
        listener,
        candidates,
        upnp,
    })
}

/// What UPnP mapping produced: the guard that removes the mappings, and
/// the mapped external addresses.
pub(crate) type Mapped = Option<(MappingGuard, Vec<(Protocol, SocketAddrV4)>)>;

/// Maps our UDP port (and TCP port) on a UPnP gateway, if there is one.
pub(crate) async fn map_ports(udp_port: u16, tcp_port: Option<u16>) -> Mapped {
    let options = UpnpOptions {
        search_timeout: Duration::from_millis(1500),
        tries: 1,
        bind: None,
    };
    let gateway = match ferry_nat::upnp::discover(&options).await {
        Ok(Some(gateway)) => gateway,
        Ok(None) => return None,
        Err(error) => {
            debug!(%error, "UPnP search failed");
            return None;
        }
    };
    let mut guard = MappingGuard::new(gateway);
    let mut mapped = Vec::new();
    let mut ports = vec![(Protocol::Udp, udp_port)];
    ports.extend(tcp_port.map(|port| (Protocol::Tcp, port)));
    for (protocol, port) in ports {
        let local = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        match guard
            .add(protocol, local, UPNP_LEASE, "ferry transfer")
            .await
        {
            Ok(mapping) => mapped.push((protocol, mapping.external)),
            Err(error) => debug!(%error, %protocol, "UPnP mapping failed"),
        }
    }
    Some((guard, mapped))
}

/// The UPnP result if it is ready within [`UPNP_WAIT`]; a search still
/// running then is abandoned (no gateway answered: there is none).
pub(crate) async fn upnp_result(task: Option<tokio::task::JoinHandle<Mapped>>) -> Mapped {
    let mut task = task?;
    match tokio::time::timeout(UPNP_WAIT, &mut task).await {
        Ok(Ok(mapped)) => mapped,
        Ok(Err(_)) => None,
        Err(_) => {
            debug!("no UPnP answer in time; going on without");
            task.abort();
            None
        }
    }
}
