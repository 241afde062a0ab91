//! Gathering our candidates while the peer is on its way: the UDP socket
//! and its STUN mapping, the TCP listener, port mappings (UPnP IGD, else
//! NAT-PMP/PCP, [`map_ports`]). A UPnP search
//! still running when the hello goes out does not hold it up (unless the
//! peer is an older ferry, see [`upnp_result`]): its candidates follow
//! during the race ([`Upnp`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use ferry_connect::{ConnectError, DirectListener};
use ferry_nat::pmp::{PmpGateway, PmpGuard, PmpOptions, Retransmit};
use ferry_nat::stun::{BindingOptions, RetransmitConfig, binding_udp};
use ferry_nat::upnp::{MappingGuard, Protocol, UpnpOptions};
use ferry_proto::peer::{Candidate, CandidateKind, Transport, UdpMapping};
use ferry_rendezvous::Welcome;
use tokio::net::UdpSocket;
use tracing::{debug, info};

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
    /// The public ports towards the server's two STUN ports, when they
    /// differ.
    pub(crate) udp_ports: Option<[u16; 2]>,
    pub(crate) listener: Option<DirectListener>,
    pub(crate) candidates: Vec<Candidate>,
    pub(crate) upnp: Option<UpnpTask>,
}

/// The UPnP search and mapping, in the background.
pub(crate) type UpnpTask = tokio::task::JoinHandle<Option<Mapped>>;

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
                return Some((None, UdpMapping::Blocked, None));
            }
        };
        // A second port of the server (RFC 5780 servers name it): a NAT
        // that maps each destination apart gives another public port.
        let Some(second_port) = first.other_address.map(|a| a.port()).or(second_port) else {
            return Some((Some(first.mapped), UdpMapping::Unknown, None));
        };
        let second = SocketAddr::new(server.ip(), second_port);
        let (mapping, ports) = match binding_udp(&udp, second, options).await {
            Ok(again) if again.mapped == first.mapped => (UdpMapping::Stable, None),
            Ok(again) => {
                debug!(first = %first.mapped, second = %again.mapped, "the UDP mapping varies by destination");
                (
                    UdpMapping::Varies,
                    Some([first.mapped.port(), again.mapped.port()]),
                )
            }
            Err(error) => {
                debug!(%error, "no answer from the server's second STUN port");
                (UdpMapping::Unknown, None)
            }
        };
        Some((Some(first.mapped), mapping, ports))
    };
    let upnp = if upnp {
        let tcp_port = listener.as_ref().map(DirectListener::port);
        Some(tokio::spawn(map_ports(udp_port, tcp_port)))
    } else {
        None
    };
    let (stun_mapped, udp_mapping, udp_ports) =
        stun_lookup
            .await
            .unwrap_or((None, UdpMapping::Unknown, None));
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
        udp_ports,
        listener,
        candidates,
        upnp,
    })
}

/// What port mapping produced: the mapped external addresses as
/// candidates, and the guard that removes the mappings (none when nothing
/// needs removing).
pub(crate) struct Mapped {
    pub(crate) candidates: Vec<Candidate>,
    pub(crate) guard: Option<PortGuard>,
}

/// Removes our port mappings, whichever protocol made them.
#[derive(Debug)]
pub(crate) enum PortGuard {
    Upnp(MappingGuard),
    Pmp(PmpGuard),
}

impl PortGuard {
    /// Removes every mapping; says what failed.
    pub(crate) async fn close(self) -> Result<(), String> {
        match self {
            PortGuard::Upnp(guard) => guard.close().await.map_err(|e| e.to_string()),
            PortGuard::Pmp(guard) => guard.close().await.map_err(|e| e.to_string()),
        }
    }
}

/// Maps our UDP port (and TCP port) on the gateway: by UPnP IGD when one
/// answers and maps something, else by PCP or NAT-PMP on the default
/// gateway. The candidates are [`CandidateKind::Upnp`] either way: a
/// mapped port is a mapped port.
pub(crate) async fn map_ports(udp_port: u16, tcp_port: Option<u16>) -> Option<Mapped> {
    let mut ports = vec![(Protocol::Udp, udp_port)];
    ports.extend(tcp_port.map(|port| (Protocol::Tcp, port)));
    if let Some(mapped) = map_ports_upnp(&ports).await {
        if !mapped.candidates.is_empty() {
            return Some(mapped);
        }
        debug!("the UPnP gateway mapped nothing; trying PCP/NAT-PMP");
        if let Some(guard) = mapped.guard {
            if let Err(error) = guard.close().await {
                debug!(%error, "removing the UPnP mappings failed");
            }
        }
    }
    map_ports_pmp(&ports).await
}

fn mapped_candidate(protocol: Protocol, external: SocketAddrV4) -> Candidate {
    let transport = match protocol {
        Protocol::Udp => Transport::Udp,
        Protocol::Tcp => Transport::Tcp,
    };
    Candidate {
        addr: SocketAddr::V4(external),
        transport,
        kind: CandidateKind::Upnp,
        priority: ferry_connect::priority::of(ferry_connect::priority::Origin::Upnp, transport),
    }
}

/// Maps the ports on a UPnP gateway, if there is one.
async fn map_ports_upnp(ports: &[(Protocol, u16)]) -> Option<Mapped> {
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
    let mut candidates = Vec::new();
    for &(protocol, port) in ports {
        let local = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        match guard
            .add(protocol, local, UPNP_LEASE, "ferry transfer")
            .await
        {
            Ok(mapping) => candidates.push(mapped_candidate(protocol, mapping.external)),
            Err(error) => debug!(%error, %protocol, "UPnP mapping failed"),
        }
    }
    debug!(?candidates, "UPnP mapped");
    Some(Mapped {
        candidates,
        guard: Some(PortGuard::Upnp(guard)),
    })
}

/// Maps the ports by PCP, else NAT-PMP, on the default gateway. Two sends
/// per step: a gateway that offers neither costs 1.5 s in the background.
async fn map_ports_pmp(ports: &[(Protocol, u16)]) -> Option<Mapped> {
    let options = PmpOptions {
        gateway: None,
        retransmit: Retransmit {
            initial: Duration::from_millis(250),
            max_sends: 2,
        },
    };
    let gateway = match PmpGateway::find(&options) {
        Ok(gateway) => gateway,
        Err(error) => {
            debug!(%error, "no gateway for PCP/NAT-PMP");
            return None;
        }
    };
    let mut guard = PmpGuard::new(gateway);
    let mut candidates = Vec::new();
    for &(protocol, port) in ports {
        match guard.add(protocol, port, UPNP_LEASE).await {
            Ok(mapping) => {
                info!(
                    version = %mapping.version,
                    %protocol,
                    internal = port,
                    external = %mapping.external,
                    external_class = ?mapping.external_class,
                    "port mapped by {}", mapping.version
                );
                candidates.push(mapped_candidate(protocol, mapping.external));
            }
            Err(error) => {
                debug!(%error, %protocol, "PCP/NAT-PMP mapping failed");
                // A silent gateway will be silent for the other port too.
                if matches!(error, ferry_nat::pmp::PmpError::NoAnswer { .. }) {
                    break;
                }
            }
        }
    }
    if candidates.is_empty() {
        return None;
    }
    Some(Mapped {
        candidates,
        guard: Some(PortGuard::Pmp(guard)),
    })
}

/// The UPnP result if it is ready within [`UPNP_WAIT`]; a search still
/// running then is abandoned (no gateway answered: there is none). For a
/// peer that cannot take candidates during the race (an older ferry).
pub(crate) async fn upnp_result(task: Option<UpnpTask>) -> Option<Mapped> {
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

/// The UPnP result if it is there already, else the task still under way
/// (its candidates then follow the hello).
pub(crate) async fn upnp_if_done(task: Option<UpnpTask>) -> (Option<Mapped>, Option<UpnpTask>) {
    match task {
        Some(task) if task.is_finished() => (task.await.ok().flatten(), None),
        Some(task) => {
            debug!("UPnP still under way: its candidates follow the hello");
            (None, Some(task))
        }
        None => (None, None),
    }
}

/// Our UPnP mappings during the race: the search still under way when the
/// hello went out (its candidates then go to the peer), and the guard that
/// removes the mappings once the race is over ([`Upnp::close`]).
pub(crate) struct Upnp {
    pending: Option<UpnpTask>,
    guard: Option<PortGuard>,
    /// Late candidates are offered as in the hello
    /// ([`ferry_connect::address::offered_candidates`]).
    server: SocketAddr,
}

impl Upnp {
    pub(crate) fn new(
        pending: Option<UpnpTask>,
        guard: Option<PortGuard>,
        server: SocketAddr,
    ) -> Upnp {
        Upnp {
            pending,
            guard,
            server,
        }
    }

    /// A search is still under way.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Waits for the search under way (for ever when there is none) and
    /// returns its candidates, as offered to the peer. Cancel-safe: the
    /// search goes on when the wait is dropped.
    pub(crate) async fn late_candidates(&mut self) -> Vec<Candidate> {
        let Some(task) = self.pending.as_mut() else {
            return std::future::pending().await;
        };
        let done = task.await;
        self.pending = None;
        let Ok(Some(mapped)) = done else {
            return Vec::new();
        };
        self.guard = mapped.guard;
        ferry_connect::address::offered_candidates(mapped.candidates, self.server)
    }

    /// The race is over: a search still under way is abandoned (as
    /// [`upnp_result`] does), the mappings are removed. Established flows
    /// outlive the port mappings in the NAT's table.
    pub(crate) async fn close(self) {
        if let Some(task) = self.pending {
            debug!("UPnP still under way as the race ends; abandoned");
            task.abort();
        }
        if let Some(guard) = self.guard {
            if let Err(error) = guard.close().await {
                debug!(%error, "removing the port mappings failed");
            }
        }
    }
}
