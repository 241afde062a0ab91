//! The path attempts: each [`Step`] of the plan becomes a socket
//! operation (accept, connect, simultaneous open, punch + QUIC, relay),
//! and the race runs them all at once; the steps that candidates arriving
//! during the race add ([`late_steps`]) join it ([`Trickle`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use ferry_connect::race::{PathId, PathKind, PeerStream};
use ferry_connect::{ConnectError, DirectListener, Identity};
use ferry_proto::pairing::SecureChannel;
use ferry_proto::peer::{Candidate, CandidateKind};
use ferry_rendezvous::{SignalClient, Welcome};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::*;

/// One authenticated, confirmed path.
pub(crate) struct Established {
    pub(crate) stream: PeerStream,
    pub(crate) kind: PathKind,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    /// On the relay path: the limits the relay set on the pair.
    pub(crate) relay_limits: Option<ferry_relay::PairLimits>,
    /// How the path was found, where there is more than one way.
    pub(crate) found_by: Option<FoundBy>,
    /// Our listener accepted it (the peer connected to one of our TCP
    /// addresses).
    pub(crate) accepted: bool,
}

pub(crate) type Attempt = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Established, ConnectError>> + Send + 'static>,
>;

/// Everything the path attempts need.
pub(crate) struct Plan {
    pub(crate) identity: Arc<Identity>,
    pub(crate) peer_fingerprint: String,
    pub(crate) theirs: Vec<Candidate>,
    pub(crate) welcome: Welcome,
    pub(crate) punch_key: [u8; 32],
    pub(crate) relay_token: Option<[u8; 32]>,
    pub(crate) udp_mapped: Option<SocketAddr>,
    pub(crate) controlling: bool,
    pub(crate) options: SessionOptions,
    /// Both networks rule out a direct path: no head start for them.
    pub(crate) hopeless: bool,
    /// Port spraying instead of a plain punch ([`spray_role`](crate::plan::spray_role)).
    pub(crate) spray: Option<Spray>,
    /// The key of the spray probes.
    pub(crate) spray_key: [u8; 32],
    /// Both sides can move a running transfer from the relay to a direct
    /// path ([`Upgrade`]).
    pub(crate) can_move: bool,
    /// How to reach the relay: direct, or through the proxy.
    pub(crate) relay_route: RelayRoute,
}

impl Plan {
    /// What the plan is made from; `listening`: we hold a TCP listener.
    pub(crate) fn input(&self, listening: bool) -> PlanInput<'_> {
        PlanInput {
            controlling: self.controlling,
            options: self.options,
            theirs: &self.theirs,
            our_observed: self.welcome.observed_addr,
            listening,
            relay_token: self.relay_token.is_some(),
            hopeless: self.hopeless,
            spray: self.spray.as_ref(),
            can_move: self.can_move,
        }
    }

    /// The attempt that makes `step`, if it needs one: a step for a
    /// resource already taken (the listener) makes none, and late punch
    /// targets go to the punch under way instead ([`Punch::Running`]).
    pub(crate) fn attempt(
        &self,
        step: Step,
        listener: &mut Option<DirectListener>,
        punch: &mut Punch,
    ) -> Result<Option<Attempt>, SessionError> {
        let attempt: Attempt = match step {
            Step::AcceptTcp => {
                let Some(listener) = listener.take() else {
                    return Ok(None);
                };
                let acceptor = ferry_connect::tls_acceptor(&self.identity, &self.peer_fingerprint)?;
                Box::pin(async move {
                    let (tls, remote) = listener.accept(&acceptor, ACCEPT_TIMEOUT).await?;
                    Ok(Established {
                        accepted: true,
                        ..direct_tls(tls, tcp_kind(remote), remote)
                    })
                })
            }
            Step::ConnectTcp { targets } => {
                let connector =
                    ferry_connect::tls_connector(&self.identity, &self.peer_fingerprint)?;
                Box::pin(async move {
                    let (tls, remote) =
                        ferry_connect::connect_first(&targets, &connector, ACCEPT_TIMEOUT).await?;
                    let mapped = targets
                        .iter()
                        .any(|c| c.addr == remote && c.kind == CandidateKind::Upnp);
                    Ok(Established {
                        found_by: mapped.then_some(FoundBy::PeerPortMapping),
                        ..direct_tls(tls, tcp_kind(remote), remote)
                    })
                })
            }
            Step::SimultaneousOpen { remote } => {
                let local = self.welcome.local_addr;
                let identity = self.identity.clone();
                let fingerprint = self.peer_fingerprint.clone();
                let controlling = self.controlling;
                Box::pin(async move {
                    let (tls, remote) = ferry_connect::simultaneous_open(
                        local,
                        remote,
                        tokio::time::Instant::now(),
                        controlling,
                        &identity,
                        &fingerprint,
                        SIMOPEN_DEADLINE,
                    )
                    .await?;
                    Ok(direct_tls(tls, PathKind::SimultaneousOpen, remote))
                })
            }
            Step::PunchQuic { targets } => {
                let udp = match std::mem::replace(punch, Punch::Gone) {
                    Punch::Unused(udp) => udp,
                    Punch::Running(late) => {
                        // More targets for the punch under way.
                        match late.try_send(targets) {
                            Ok(()) => *punch = Punch::Running(late),
                            Err(error) => {
                                debug!(%error, "the punch is over; late UDP targets unused")
                            }
                        }
                        return Ok(None);
                    }
                    Punch::Gone => {
                        debug!("no UDP socket left to punch from; late UDP targets unused");
                        return Ok(None);
                    }
                };
                let (late, mut late_targets) = tokio::sync::mpsc::channel(LATE_TARGET_BATCHES);
                *punch = Punch::Running(late);
                let identity = self.identity.clone();
                let fingerprint = self.peer_fingerprint.clone();
                let controlling = self.controlling;
                let key = self.punch_key;
                let mapped = self.udp_mapped;
                Box::pin(async move {
                    let punched = ferry_connect::punch_with_late(
                        &udp,
                        key,
                        controlling,
                        &targets,
                        &mut late_targets,
                        PUNCH_TIMEOUT,
                    )
                    .await?;
                    // Late targets from now on find the punch over.
                    drop(late_targets);
                    let local = match (mapped, udp.local_addr()) {
                        (Some(mapped), _) if mapped.is_ipv4() == punched.remote.is_ipv4() => mapped,
                        (_, Ok(local)) => source_towards(local, punched.remote),
                        (_, Err(_)) => UNSPECIFIED,
                    };
                    let ends = QuicEnds {
                        identity: &identity,
                        fingerprint: &fingerprint,
                        controlling,
                    };
                    let found_by = FoundBy::Punch;
                    quic_path(
                        udp,
                        local,
                        punched.remote,
                        found_by,
                        Some(punched.rtt),
                        ends,
                    )
                    .await
                })
            }
            Step::SprayQuic { spray } => {
                // Sprayed from the socket whose mapping we sent (the easy
                // side) or from many new ones (the hard side): the punch
                // socket is taken either way.
                let Punch::Unused(udp) = std::mem::replace(punch, Punch::Gone) else {
                    return Ok(None);
                };
                let identity = self.identity.clone();
                let fingerprint = self.peer_fingerprint.clone();
                let controlling = self.controlling;
                let key = self.spray_key;
                let mapped = self.udp_mapped;
                Box::pin(async move {
                    let (socket, remote, local, found_by) =
                        spray_path(udp, spray, key, mapped).await?;
                    let ends = QuicEnds {
                        identity: &identity,
                        fingerprint: &fingerprint,
                        controlling,
                    };
                    quic_path(socket, local, remote, found_by, None, ends).await
                })
            }
            Step::Relay { head_start } => {
                let Some(token) = self.relay_token else {
                    return Ok(None);
                };
                Box::pin(relay_path(
                    self.relay_route.clone(),
                    self.welcome.relay_tls.clone(),
                    token,
                    self.identity.clone(),
                    self.peer_fingerprint.clone(),
                    self.controlling,
                    head_start,
                ))
            }
        };
        Ok(Some(attempt))
    }

    pub(crate) async fn race(
        mut self,
        udp: UdpSocket,
        listener: Option<DirectListener>,
        signal: &mut SignalClient,
        channel: &mut SecureChannel,
        upnp: &mut Upnp,
    ) -> Result<Won, SessionError> {
        let listening = listener.is_some();
        let mut listener = listener;
        let mut punch = Punch::Unused(udp);
        let mut paths = Paths::default();
        for step in plan_paths(&self.input(listening)) {
            let kind = step.kind();
            if let Some(attempt) = self.attempt(step, &mut listener, &mut punch)? {
                paths.start(kind, attempt);
            }
        }
        let has_tcp = paths.kinds.contains(&PathKind::Tcp);
        let mut mailbox = Mailbox { signal, channel };
        let trickle = Trickle {
            plan: &mut self,
            punch,
            listening,
            upnp,
        };
        if trickle.plan.controlling {
            race_controlling(paths, mailbox, trickle).await
        } else {
            if !has_tcp {
                // Nothing to connect to: the sender need not wait for us.
                mailbox
                    .path_failed(PathKind::Tcp, "no TCP address to try")
                    .await;
            }
            race_controlled(paths, mailbox, trickle).await
        }
    }
}

/// Who we are to the peer on a QUIC path.
struct QuicEnds<'a> {
    identity: &'a Identity,
    fingerprint: &'a str,
    controlling: bool,
}

/// QUIC on `udp` towards `remote`, the peer found on it (`found_by`);
/// `local` is our end as shown, `rtt` the round trip measured while
/// finding the peer.
async fn quic_path(
    udp: UdpSocket,
    local: SocketAddr,
    remote: SocketAddr,
    found_by: FoundBy,
    rtt: Option<std::time::Duration>,
    ends: QuicEnds<'_>,
) -> Result<Established, ConnectError> {
    let socket = udp
        .into_std()
        .map_err(|source| ConnectError::UdpSocket { source })?;
    let quic = ferry_connect::quic_connect(
        socket,
        remote,
        ends.identity,
        ends.fingerprint,
        ends.controlling,
        rtt,
        QUIC_TIMEOUT,
    )
    .await?;
    Ok(Established {
        stream: PeerStream::Quic(Box::new(quic)),
        kind: PathKind::Quic,
        local,
        remote,
        relay_limits: None,
        found_by: Some(found_by),
        accepted: false,
    })
}

/// Port spraying in our part ([`Spray`]): the socket that found the peer,
/// the peer's address on it, and our end as shown (our mapping when we are
/// the easy side, else the socket's local address).
async fn spray_path(
    udp: UdpSocket,
    spray: Spray,
    key: [u8; 32],
    mapped: Option<SocketAddr>,
) -> Result<(UdpSocket, SocketAddr, SocketAddr, FoundBy), ConnectError> {
    use ferry_connect::spray::{SprayConfig, bind_spray_sockets, spray_easy, spray_hard};
    let config = SprayConfig {
        seed: rand::random(),
        ..SprayConfig::default()
    };
    let started = tokio::time::Instant::now();
    match spray {
        Spray::Hard { easy } => {
            drop(udp);
            let any = match easy {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            };
            let sockets = bind_spray_sockets(any, config.sockets)?;
            let won = spray_hard(sockets, easy, key, config).await?;
            info!(
                remote = %won.remote,
                socket = won.index,
                after_ms = started.elapsed().as_millis() as u64,
                "port spraying found the peer (our NAT maps a port per destination)"
            );
            let local = won.socket.local_addr().unwrap_or(UNSPECIFIED);
            let found_by = FoundBy::Spray {
                hard_here: true,
                probes: None,
                predicted: false,
            };
            Ok((won.socket, won.remote, local, found_by))
        }
        Spray::Easy { hard_ip, predicted } => {
            let found = spray_easy(&udp, hard_ip, &predicted, key, config).await?;
            let remote = found.remote;
            let predicted_hit = predicted.contains(&remote.port());
            info!(
                %remote,
                probes = found.probes,
                predicted = predicted.len(),
                predicted_hit,
                after_ms = started.elapsed().as_millis() as u64,
                "port spraying found the peer (its NAT maps a port per destination)"
            );
            let local = mapped
                .or_else(|| udp.local_addr().ok())
                .unwrap_or(UNSPECIFIED);
            let found_by = FoundBy::Spray {
                hard_here: false,
                probes: Some(found.probes),
                predicted: predicted_hit,
            };
            Ok((udp, remote, local, found_by))
        }
    }
}

/// How many batches of late targets may wait for the punch at once; more
/// are dropped (they come one per message of the peer, a few at most).
const LATE_TARGET_BATCHES: usize = 8;

/// The UDP socket: not yet punched from, punching (late targets go in
/// here), or gone (punched, or never to be used).
pub(crate) enum Punch {
    Unused(UdpSocket),
    Running(tokio::sync::mpsc::Sender<Vec<SocketAddr>>),
    Gone,
}

/// The path attempts of one race, by [`PathId`] (the index in `kinds`).
#[derive(Default)]
pub(crate) struct Paths {
    pub(crate) set: JoinSet<(PathId, Result<Established, ConnectError>)>,
    pub(crate) kinds: Vec<PathKind>,
}

impl Paths {
    /// Runs `attempt`; returns its id.
    pub(crate) fn start(&mut self, kind: PathKind, attempt: Attempt) -> PathId {
        let id = self.kinds.len();
        debug!(path = %kind, id, "trying");
        self.kinds.push(kind);
        self.set.spawn(async move { (id, attempt.await) });
        id
    }
}

/// What comes during the race besides the paths' results: the peer's late
/// candidates (new attempts, more punch targets, by [`late_steps`]) and our
/// own (the UPnP mapping still under way, [`Upnp`]).
pub(crate) struct Trickle<'a> {
    pub(crate) plan: &'a mut Plan,
    pub(crate) punch: Punch,
    pub(crate) listening: bool,
    pub(crate) upnp: &'a mut Upnp,
}

impl Trickle<'_> {
    /// The attempts that the peer's late candidates add (punch targets go
    /// to the punch under way); starts them in `paths` and returns their
    /// ids and kinds, for the race to count.
    pub(crate) fn take_theirs(
        &mut self,
        late: Vec<Candidate>,
        paths: &mut Paths,
    ) -> Vec<(PathId, PathKind)> {
        let (new, steps) = late_steps(&self.plan.input(self.listening), late);
        debug!(?new, ?steps, "late peer candidates");
        self.plan.theirs.extend(new);
        let mut started = Vec::new();
        let mut none = None;
        for step in steps {
            let kind = step.kind();
            match self.plan.attempt(step, &mut none, &mut self.punch) {
                Ok(Some(attempt)) => started.push((paths.start(kind, attempt), kind)),
                Ok(None) => {}
                Err(error) => debug!(%error, "cannot try a late candidate"),
            }
        }
        started
    }
}

/// Our address towards `remote` from a socket bound to `local`: on a
/// wildcard (dual-stack) socket, the source address the kernel picks for
/// `remote` (asked with a connected throw-away socket, which sends
/// nothing), with `local`'s port; `local` itself when that fails.
fn source_towards(local: SocketAddr, remote: SocketAddr) -> SocketAddr {
    let local = ferry_nat::addr::canonical(local);
    if !local.ip().is_unspecified() {
        return local;
    }
    let any: SocketAddr = match remote {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    std::net::UdpSocket::bind(any)
        .and_then(|probe| {
            probe.connect(remote)?;
            probe.local_addr()
        })
        .map_or(local, |source| SocketAddr::new(source.ip(), local.port()))
}

pub(crate) const UNSPECIFIED: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// Our address on a TCP path (informational only).
/// A direct path secured by TLS over TCP.
fn direct_tls(
    tls: tokio_rustls::TlsStream<tokio::net::TcpStream>,
    kind: PathKind,
    remote: SocketAddr,
) -> Established {
    Established {
        local: local_of(tls.get_ref().0),
        stream: PeerStream::Tls(Box::new(tls)),
        kind,
        remote,
        relay_limits: None,
        found_by: None,
        accepted: false,
    }
}

pub(crate) fn local_of(tcp: &tokio::net::TcpStream) -> SocketAddr {
    tcp.local_addr().unwrap_or(UNSPECIFIED)
}
