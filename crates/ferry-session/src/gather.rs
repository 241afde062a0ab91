//! Gathering our candidates while the peer is on its way: the UDP socket
//! and its STUN mapping, the TCP listener, port mappings (UPnP IGD and
//! NAT-PMP/PCP at once, [`map_ports`]). A UPnP search
//! still running when the hello goes out does not hold it up (unless the
//! peer is an older ferry, see [`upnp_result`]): its candidates follow
//! during the race ([`Upnp`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use ferry_connect::{ConnectError, DirectListener};
use ferry_nat::AddrClass;
use ferry_nat::family::Family;
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

/// `server` is the server spec we reached `welcome`'s server by: its name
/// gives the server's IPv4 address when we came over IPv6 ([`stun_targets`]).
pub(crate) fn start_gathering(
    welcome: &Welcome,
    server: &str,
    listen: bool,
    upnp: bool,
) -> Gathering {
    let stun = stun_server(welcome);
    let server = server
        .split_once('#')
        .map_or(server, |(name, _)| name)
        .to_string();
    let second_port = welcome.stun_second_port;
    tokio::spawn(async move {
        let found = ferry_nat::interfaces();
        let dual_stack = ferry_nat::family::has_global_address(&found, Family::Ipv6);
        let targets = stun_targets(stun, &server, dual_stack).await;
        gather(found, dual_stack, &targets, second_port, listen, upnp).await
    })
}

/// How long the server's name may take to resolve again for its IPv4
/// address; without it, STUN asks where we reached the server.
const IPV4_LOOKUP_WAIT: Duration = Duration::from_secs(1);

/// The STUN responders to ask, in order, until one answers. Where we
/// reached the server, normally. But a dual-stack host that reached it
/// over IPv6 asks the server's IPv4 address first: only IPv4 is behind a
/// NAT, so the IPv4 mapping is the one a peer needs (our global IPv6
/// addresses are candidates as they are), and a server's STUN responder
/// listens on IPv4 unless told otherwise.
async fn stun_targets(stun: Option<SocketAddr>, server: &str, dual_stack: bool) -> Vec<SocketAddr> {
    let Some(stun) = stun else {
        return Vec::new();
    };
    if !dual_stack || stun.is_ipv4() {
        return vec![stun];
    }
    let lookup = tokio::time::timeout(IPV4_LOOKUP_WAIT, tokio::net::lookup_host(server)).await;
    let ipv4 = match lookup {
        Ok(Ok(mut addrs)) => addrs.find(SocketAddr::is_ipv4),
        _ => None,
    };
    match ipv4 {
        Some(v4) => {
            debug!(%v4, "STUN over IPv4 first: the server's name has an IPv4 address");
            vec![SocketAddr::new(v4.ip(), stun.port()), stun]
        }
        None => vec![stun],
    }
}

/// Our UDP socket for STUN, punching and QUIC: dual-stack (`[::]`, IPv4
/// arriving IPv4-mapped) when `dual_stack` (this host has a global IPv6
/// address), so that candidates of both families share one port; IPv4
/// only otherwise, or when IPv6 sockets fail here.
pub(crate) fn bind_udp(dual_stack: bool) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let v4 = || -> std::io::Result<std::net::UdpSocket> {
        std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
    };
    let v6 = || -> std::io::Result<std::net::UdpSocket> {
        let socket = Socket::new(Domain::IPV6, Type::DGRAM, None)?;
        socket.set_only_v6(false)?;
        socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())?;
        Ok(socket.into())
    };
    let socket = if dual_stack {
        v6().or_else(|error| {
            debug!(%error, "no dual-stack UDP socket; IPv4 only");
            v4()
        })?
    } else {
        v4()?
    };
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
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

/// Binds the UDP socket (and, with `listen`, the TCP listener: both sides
/// listen now), learns the UDP mapping from the server's STUN responder
/// and, with `upnp`, maps both ports on the gateway when it lets us
/// ([`map_ports`]).
///
/// `found` are this host's interfaces, `dual_stack` whether one has a
/// global IPv6 address; `stun` the responders to ask, in order, until one
/// answers.
pub(crate) async fn gather(
    found: Vec<ferry_nat::Interface>,
    dual_stack: bool,
    stun: &[SocketAddr],
    second_port: Option<u16>,
    listen: bool,
    upnp: bool,
) -> Result<Gathered, SessionError> {
    let udp = bind_udp(dual_stack).map_err(|source| ConnectError::UdpSocket { source })?;
    let dual_stack = udp.local_addr()?.is_ipv6();
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
    for interface in found {
        // IPv6 on the dual-stack socket only; never link-local (a peer
        // cannot dial it without our scope id).
        let family_ok = match interface.addr {
            IpAddr::V4(_) => true,
            IpAddr::V6(_) => dual_stack && interface.class != AddrClass::LinkLocal,
        };
        if family_ok && interface.class.is_candidate() {
            candidates.push(Candidate {
                addr: SocketAddr::new(interface.addr, udp_port),
                transport: Transport::Udp,
                kind: CandidateKind::Host,
                priority: ferry_connect::priority::of(
                    ferry_connect::priority::Origin::Host(interface.addr),
                    Transport::Udp,
                ),
            });
        }
    }

    let stun_lookup = async {
        if stun.is_empty() {
            return None;
        }
        let options = BindingOptions {
            retransmit: RetransmitConfig {
                rto: Duration::from_millis(200),
                max_sends: 4,
                last_wait_factor: 4,
            },
            ..BindingOptions::default()
        };
        let mut answered = None;
        for &server in stun {
            match binding_udp(&udp, server, options).await {
                Ok(result) => {
                    answered = Some((server, result));
                    break;
                }
                Err(error) => debug!(%server, %error, "no STUN mapping: UDP may be blocked"),
            }
        }
        let Some((server, first)) = answered else {
            return Some((None, UdpMapping::Blocked, None));
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
    /// The first protocol's guard while the other's attempt may still
    /// settle: `closed` says it is closed, so that the other does not let
    /// go of a rule they share after it was removed ([`settle_loser`]).
    First {
        guard: Box<PortGuard>,
        closed: Arc<tokio::sync::Mutex<bool>>,
    },
    /// Records what was done with it, for tests without a gateway.
    #[cfg(test)]
    Fake(tests::FakeGuard),
}

impl PortGuard {
    /// The protocol that made the mappings, for people.
    pub(crate) fn protocol(&self) -> &'static str {
        match self {
            PortGuard::Upnp(_) => "UPnP IGD",
            PortGuard::Pmp(_) => "NAT-PMP/PCP",
            PortGuard::First { guard, .. } => guard.protocol(),
            #[cfg(test)]
            PortGuard::Fake(_) => "test",
        }
    }

    /// Removes every mapping; says what failed.
    pub(crate) async fn close(self) -> Result<(), String> {
        match self {
            PortGuard::Upnp(guard) => guard.close().await.map_err(|e| e.to_string()),
            PortGuard::Pmp(guard) => guard.close().await.map_err(|e| e.to_string()),
            PortGuard::First { guard, closed } => {
                let mut closed = closed.lock().await;
                *closed = true;
                Box::pin(guard.close()).await
            }
            #[cfg(test)]
            PortGuard::Fake(guard) => {
                guard.record("closed");
                Ok(())
            }
        }
    }

    /// Lets go of the mappings without removing them (they expire with
    /// their leases).
    fn forget(self) {
        match self {
            PortGuard::Upnp(guard) => guard.forget(),
            PortGuard::Pmp(guard) => guard.forget(),
            PortGuard::First { guard, .. } => guard.forget(),
            #[cfg(test)]
            PortGuard::Fake(guard) => guard.record("forgotten"),
        }
    }
}

/// Maps our UDP port (and TCP port) on the gateway, by UPnP IGD and by
/// PCP/NAT-PMP at once: the first that maps something is used, the other
/// is settled in the background ([`first_mapped`]). The candidates are
/// [`CandidateKind::Upnp`] either way: a mapped port is a mapped port.
pub(crate) async fn map_ports(udp_port: u16, tcp_port: Option<u16>) -> Option<Mapped> {
    let mut ports = vec![(Protocol::Udp, udp_port)];
    ports.extend(tcp_port.map(|port| (Protocol::Tcp, port)));
    let upnp = {
        let ports = ports.clone();
        tokio::spawn(async move { map_ports_upnp(&ports).await })
    };
    let pmp = tokio::spawn(async move { map_ports_pmp(&ports).await });
    first_mapped(upnp, pmp).await
}

/// A port-mapping attempt under way.
type MapTask = tokio::task::JoinHandle<Option<Mapped>>;

/// The first of two mapping attempts, run at once, that maps something
/// (`first` when both are ready together). The other goes on in the
/// background and what it maps too is settled ([`settle_loser`]); an
/// attempt that found a gateway but mapped nothing has its guard closed.
/// Dropped midway, the attempts still under way finish on their own and
/// their guards remove what they mapped.
async fn first_mapped(mut first: MapTask, mut second: MapTask) -> Option<Mapped> {
    let (done, other) = tokio::select! {
        biased;
        done = &mut first => (done, second),
        done = &mut second => (done, first),
    };
    let Some(mut winner) = usable(done).await else {
        return usable(other.await).await;
    };
    let taken: Vec<(Transport, SocketAddr)> = winner
        .candidates
        .iter()
        .map(|c| (c.transport, c.addr))
        .collect();
    let closed = Arc::new(tokio::sync::Mutex::new(false));
    if let Some(guard) = winner.guard.take() {
        winner.guard = Some(PortGuard::First {
            guard: Box::new(guard),
            closed: Arc::clone(&closed),
        });
    }
    tokio::spawn(async move {
        if let Some(loser) = usable(other.await).await {
            // The winner's removal and this settlement do not interleave.
            let closed = closed.lock().await;
            settle_loser(loser, &taken, *closed).await;
        }
    });
    Some(winner)
}

/// A finished attempt's mapping, if it mapped something.
async fn usable(done: Result<Option<Mapped>, tokio::task::JoinError>) -> Option<Mapped> {
    let mapped = done.ok().flatten()?;
    if !mapped.candidates.is_empty() {
        return Some(mapped);
    }
    if let Some(guard) = mapped.guard {
        if let Err(error) = guard.close().await {
            debug!(%error, "removing the port mappings failed");
        }
    }
    None
}

/// The losing protocol mapped too: its mappings are removed, unless one of
/// them is one the winner holds (the same external address: a gateway with
/// one table behind UPnP and PCP/NAT-PMP hands both the same rule), which
/// removing would take from the winner; then its guard lets go instead.
/// When the winner's mappings are gone already (`winner_closed`: a short
/// race), the loser's are removed whatever they are: a rule it shares was
/// made anew by it after the winner removed it.
async fn settle_loser(loser: Mapped, taken: &[(Transport, SocketAddr)], winner_closed: bool) {
    let Some(guard) = loser.guard else {
        return;
    };
    let shared = !winner_closed
        && loser
            .candidates
            .iter()
            .any(|c| taken.contains(&(c.transport, c.addr)));
    if shared {
        debug!(candidates = ?loser.candidates, "the other protocol mapped the same ports; leaving them to the first");
        guard.forget();
    } else {
        debug!(candidates = ?loser.candidates, "the other protocol mapped too; removing its mappings");
        if let Err(error) = guard.close().await {
            debug!(%error, "removing the port mappings failed");
        }
    }
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

    /// The protocol of our gateway's port mappings, when it made some.
    pub(crate) fn mapped_by(&self) -> Option<&'static str> {
        self.guard.as_ref().map(PortGuard::protocol)
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::oneshot;

    use super::*;

    /// A guard that tells the test what became of it.
    #[derive(Debug)]
    pub(crate) struct FakeGuard {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl FakeGuard {
        pub(crate) fn record(&self, what: &str) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{} {what}", self.name));
        }
    }

    fn mapped(name: &'static str, addrs: &[&str], log: &Arc<Mutex<Vec<String>>>) -> Mapped {
        Mapped {
            candidates: addrs
                .iter()
                .map(|a| mapped_candidate(Protocol::Tcp, a.parse().unwrap()))
                .collect(),
            guard: Some(PortGuard::Fake(FakeGuard {
                name,
                log: Arc::clone(log),
            })),
        }
    }

    /// An attempt that finishes with `result` when the test says so.
    fn attempt(result: Option<Mapped>) -> (oneshot::Sender<()>, MapTask) {
        let (go, wait) = oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = wait.await;
            result
        });
        (go, task)
    }

    async fn settled(log: &Arc<Mutex<Vec<String>>>, count: usize) -> Vec<String> {
        for _ in 0..100 {
            if log.lock().unwrap().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        log.lock().unwrap().clone()
    }

    fn addrs(mapped: &Mapped) -> Vec<SocketAddr> {
        mapped.candidates.iter().map(|c| c.addr).collect()
    }

    #[tokio::test]
    async fn a_dual_stack_socket_learns_its_ipv4_mapping_by_stun() {
        let udp = bind_udp(true).unwrap();
        let lo = std::net::IpAddr::V4(Ipv4Addr::LOCALHOST);
        let server = ferry_nat::stun::StunServer::bind(ferry_nat::stun::StunServerConfig::new(
            SocketAddr::new(lo, 0),
        ))
        .await
        .unwrap();
        let stun = server.udp_addrs()[0];
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let result = binding_udp(&udp, stun, BindingOptions::default())
            .await
            .unwrap();
        // The mapping reads as plain IPv4 on a dual-stack socket too.
        let port = udp.local_addr().unwrap().port();
        assert_eq!(result.mapped, SocketAddr::new(lo, port));
        assert_eq!(result.source, stun);
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_first_mapping_wins_and_the_later_one_is_removed() {
        let log = Arc::default();
        let (go_upnp, upnp) = attempt(Some(mapped("upnp", &["203.0.113.1:4000"], &log)));
        let (go_pmp, pmp) = attempt(Some(mapped("pmp", &["203.0.113.1:5000"], &log)));
        go_pmp.send(()).unwrap();
        let winner = first_mapped(upnp, pmp).await.unwrap();
        assert_eq!(addrs(&winner), ["203.0.113.1:5000".parse().unwrap()]);
        go_upnp.send(()).unwrap();
        assert_eq!(settled(&log, 1).await, ["upnp closed"]);
        drop(winner);
    }

    #[tokio::test]
    async fn a_later_mapping_of_the_same_rule_is_left_to_the_first() {
        let log = Arc::default();
        let (go_upnp, upnp) = attempt(Some(mapped("upnp", &["203.0.113.1:4000"], &log)));
        let (go_pmp, pmp) = attempt(Some(mapped("pmp", &["203.0.113.1:4000"], &log)));
        go_upnp.send(()).unwrap();
        let winner = first_mapped(upnp, pmp).await.unwrap();
        assert_eq!(addrs(&winner), ["203.0.113.1:4000".parse().unwrap()]);
        go_pmp.send(()).unwrap();
        assert_eq!(settled(&log, 1).await, ["pmp forgotten"]);
    }

    #[tokio::test]
    async fn a_shared_rule_made_after_the_first_was_removed_is_removed_too() {
        // A short race: the first protocol's guard is closed before the
        // other's attempt ends; the rule that one made anew must go.
        let log = Arc::default();
        let (go_upnp, upnp) = attempt(Some(mapped("upnp", &["203.0.113.1:4000"], &log)));
        let (go_pmp, pmp) = attempt(Some(mapped("pmp", &["203.0.113.1:4000"], &log)));
        go_pmp.send(()).unwrap();
        let winner = first_mapped(upnp, pmp).await.unwrap();
        winner.guard.unwrap().close().await.unwrap();
        go_upnp.send(()).unwrap();
        assert_eq!(settled(&log, 2).await, ["pmp closed", "upnp closed"]);
    }

    #[tokio::test]
    async fn a_gateway_that_maps_nothing_gives_way_to_the_other_protocol() {
        let log = Arc::default();
        let (go_upnp, upnp) = attempt(Some(mapped("upnp", &[], &log)));
        let (go_pmp, pmp) = attempt(Some(mapped("pmp", &["198.51.100.7:6000"], &log)));
        go_upnp.send(()).unwrap();
        let waiting = tokio::spawn(first_mapped(upnp, pmp));
        assert_eq!(settled(&log, 1).await, ["upnp closed"]);
        go_pmp.send(()).unwrap();
        let winner = waiting.await.unwrap().unwrap();
        assert_eq!(addrs(&winner), ["198.51.100.7:6000".parse().unwrap()]);
    }

    #[tokio::test]
    async fn no_gateway_on_either_protocol_maps_nothing() {
        let (go_upnp, upnp) = attempt(None);
        let (go_pmp, pmp) = attempt(None);
        go_upnp.send(()).unwrap();
        go_pmp.send(()).unwrap();
        assert!(first_mapped(upnp, pmp).await.is_none());
    }

    #[tokio::test]
    async fn a_failed_first_answer_waits_for_the_other() {
        let log = Arc::default();
        let (go_upnp, upnp) = attempt(Some(mapped("upnp", &["203.0.113.1:4000"], &log)));
        let (go_pmp, pmp) = attempt(None);
        go_pmp.send(()).unwrap();
        let waiting = tokio::spawn(first_mapped(upnp, pmp));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        go_upnp.send(()).unwrap();
        let winner = waiting.await.unwrap().unwrap();
        assert_eq!(addrs(&winner), ["203.0.113.1:4000".parse().unwrap()]);
        assert!(log.lock().unwrap().is_empty());
    }
}
