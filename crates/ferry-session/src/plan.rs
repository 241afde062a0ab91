//! The path plan: which paths to try, to which targets, with which head
//! start, and whether a direct path can work at all.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use ferry_connect::race::{PathKind, PeerStream};
use ferry_connect::{ConnectError, DirectListener, Identity};
use ferry_proto::pairing::SecureChannel;
use ferry_proto::peer::{Candidate, CandidateKind, NetworkHint, Transport, UdpMapping};
use ferry_rendezvous::{SignalClient, Welcome};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tracing::debug;

use crate::*;

/// Why no direct path can work, when both sides' networks say so: UDP
/// useless on both sides (blocked, or a symmetric NAT whose punched holes
/// lead nowhere), no TCP address reachable from outside, and TCP
/// simultaneous open impossible (a side whose NAT changes TCP ports).
/// Then the relay starts at once instead of after its head start.
pub fn direct_hopeless(
    ours: &NetworkHint,
    theirs: &NetworkHint,
    our_candidates: &[Candidate],
    their_candidates: &[Candidate],
) -> Option<String> {
    pub(crate) fn udp_words(mapping: UdpMapping) -> Option<&'static str> {
        match mapping {
            UdpMapping::Varies => Some("symmetric NAT"),
            UdpMapping::Blocked => Some("UDP blocked"),
            UdpMapping::Stable | UdpMapping::Unknown => None,
        }
    }
    let here = udp_words(ours.udp)?;
    let there = udp_words(theirs.udp)?;
    let reachable_tcp = our_candidates.iter().chain(their_candidates).any(|c| {
        c.transport == Transport::Tcp
            && match c.kind {
                CandidateKind::Upnp => true,
                CandidateKind::Host => matches!(
                    ferry_nat::classify(c.addr.ip()),
                    ferry_nat::AddrClass::Public | ferry_nat::AddrClass::Documentation
                ),
                _ => false,
            }
    });
    if reachable_tcp {
        return None;
    }
    let simultaneous_open_fails =
        ours.tcp_port_kept == Some(false) || theirs.tcp_port_kept == Some(false);
    if !simultaneous_open_fails {
        return None;
    }
    Some(if here == there {
        format!("{here} on both sides")
    } else {
        format!("{here} here, {there} at the peer")
    })
}

/// One authenticated, confirmed path.
pub(crate) struct Established {
    pub(crate) stream: PeerStream,
    pub(crate) kind: PathKind,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    /// On the relay path: the limits the relay set on the pair.
    pub(crate) relay_limits: Option<ferry_relay::PairLimits>,
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
}

impl Plan {
    pub(crate) fn attempts(
        &self,
        udp: UdpSocket,
        listener: Option<DirectListener>,
    ) -> Result<Vec<(PathKind, Attempt)>, SessionError> {
        let mut attempts: Vec<(PathKind, Attempt)> = Vec::new();
        let lan_only = self.options.force_path == Some(PathKind::Lan);
        // Direct TCP: the sender listens, the receiver connects to all of
        // the sender's host and UPnP addresses.
        if self.options.allows(PathKind::Tcp) {
            if self.controlling {
                if let Some(listener) = listener {
                    let acceptor =
                        ferry_connect::tls_acceptor(&self.identity, &self.peer_fingerprint)?;
                    attempts.push((
                        PathKind::Tcp,
                        Box::pin(async move {
                            let (tls, remote) = listener.accept(&acceptor, ACCEPT_TIMEOUT).await?;
                            let local = local_of(tls.get_ref().0);
                            Ok(Established {
                                stream: PeerStream::Tls(Box::new(tls)),
                                kind: tcp_kind(remote),
                                local,
                                remote,
                                relay_limits: None,
                            })
                        }),
                    ));
                }
            } else {
                let targets: Vec<Candidate> = self
                    .theirs
                    .iter()
                    .filter(|c| c.transport == Transport::Tcp)
                    .filter(|c| matches!(c.kind, CandidateKind::Host | CandidateKind::Upnp))
                    .filter(|c| !lan_only || tcp_kind(c.addr) == PathKind::Lan)
                    .cloned()
                    .collect();
                if !targets.is_empty() {
                    let connector =
                        ferry_connect::tls_connector(&self.identity, &self.peer_fingerprint)?;
                    attempts.push((
                        PathKind::Tcp,
                        Box::pin(async move {
                            let (tls, remote) =
                                ferry_connect::connect_first(&targets, &connector, ACCEPT_TIMEOUT)
                                    .await?;
                            let local = local_of(tls.get_ref().0);
                            Ok(Established {
                                stream: PeerStream::Tls(Box::new(tls)),
                                kind: tcp_kind(remote),
                                local,
                                remote,
                                relay_limits: None,
                            })
                        }),
                    ));
                }
            }
        }
        // TCP simultaneous open between the signalling ports' public
        // mappings. Pointless when both sit behind the same public address
        // (NATs rarely hairpin): the LAN path covers that.
        let peer_observed = self
            .theirs
            .iter()
            .find(|c| c.transport == Transport::Tcp && c.kind == CandidateKind::ServerObserved)
            .map(|c| c.addr);
        if let Some(remote) = peer_observed {
            if self.options.allows(PathKind::SimultaneousOpen)
                && !lan_only
                && remote.ip() != self.welcome.observed_addr.ip()
            {
                let local = self.welcome.local_addr;
                let identity = self.identity.clone();
                let fingerprint = self.peer_fingerprint.clone();
                let controlling = self.controlling;
                attempts.push((
                    PathKind::SimultaneousOpen,
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
                        let local = local_of(tls.get_ref().0);
                        Ok(Established {
                            stream: PeerStream::Tls(Box::new(tls)),
                            kind: PathKind::SimultaneousOpen,
                            local,
                            remote,
                            relay_limits: None,
                        })
                    }),
                ));
            }
        }
        // UDP hole punching from the very socket whose mapping we sent,
        // then QUIC on it.
        let mut udp_targets: Vec<&Candidate> = self
            .theirs
            .iter()
            .filter(|c| c.transport == Transport::Udp)
            .collect();
        udp_targets.sort_by_key(|c| std::cmp::Reverse(c.priority));
        let mut seen = HashSet::new();
        let udp_targets: Vec<SocketAddr> = udp_targets
            .into_iter()
            .map(|c| c.addr)
            .filter(|a| seen.insert(*a))
            .collect();
        if self.options.allows(PathKind::Quic) && !lan_only && !udp_targets.is_empty() {
            let identity = self.identity.clone();
            let fingerprint = self.peer_fingerprint.clone();
            let controlling = self.controlling;
            let key = self.punch_key;
            let mapped = self.udp_mapped;
            attempts.push((
                PathKind::Quic,
                Box::pin(async move {
                    let punched =
                        ferry_connect::punch(&udp, key, controlling, &udp_targets, PUNCH_TIMEOUT)
                            .await?;
                    let local = match (mapped, udp.local_addr()) {
                        (Some(mapped), _) => mapped,
                        (None, Ok(local)) => local,
                        (None, Err(_)) => UNSPECIFIED,
                    };
                    let socket = udp
                        .into_std()
                        .map_err(|source| ConnectError::UdpSocket { source })?;
                    let quic = ferry_connect::quic_connect(
                        socket,
                        punched.remote,
                        &identity,
                        &fingerprint,
                        controlling,
                        Some(punched.rtt),
                        QUIC_TIMEOUT,
                    )
                    .await?;
                    Ok(Established {
                        stream: PeerStream::Quic(Box::new(quic)),
                        kind: PathKind::Quic,
                        local,
                        remote: punched.remote,
                        relay_limits: None,
                    })
                }),
            ));
        }
        // The relay the server named (its own port unless it runs apart),
        // after a head start for the direct paths (none when it is the
        // only path, or when both networks rule out a direct one).
        if let (Some(token), true) = (self.relay_token, self.options.allows(PathKind::Relay)) {
            let head_start = if attempts.is_empty() || self.hopeless {
                Duration::ZERO
            } else {
                RELAY_HEAD_START
            };
            attempts.push((
                PathKind::Relay,
                Box::pin(relay_path(
                    self.welcome.relay_addr,
                    token,
                    self.identity.clone(),
                    self.peer_fingerprint.clone(),
                    self.controlling,
                    head_start,
                )),
            ));
        }
        Ok(attempts)
    }

    pub(crate) async fn race(
        self,
        udp: UdpSocket,
        listener: Option<DirectListener>,
        signal: &mut SignalClient,
        channel: &mut SecureChannel,
    ) -> Result<(Established, Vec<(PathKind, String)>), SessionError> {
        let attempts = self.attempts(udp, listener)?;
        let mut set = JoinSet::new();
        let mut kinds = Vec::new();
        for (id, (kind, attempt)) in attempts.into_iter().enumerate() {
            debug!(path = %kind, "trying");
            kinds.push(kind);
            set.spawn(async move { (id, attempt.await) });
        }
        let mut mailbox = Mailbox { signal, channel };
        if self.controlling {
            race_controlling(set, &kinds, mailbox).await
        } else {
            if !kinds.contains(&PathKind::Tcp) {
                // Nothing to connect to: the sender need not wait for us.
                mailbox
                    .path_failed(PathKind::Tcp, "no TCP address to try")
                    .await;
            }
            race_controlled(set, &kinds, mailbox).await
        }
    }
}

pub(crate) const UNSPECIFIED: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// Our address on a TCP path (informational only).
pub(crate) fn local_of(tcp: &tokio::net::TcpStream) -> SocketAddr {
    tcp.local_addr().unwrap_or(UNSPECIFIED)
}

/// A TCP path to a private, link-local or loopback address is a LAN path.
pub(crate) fn tcp_kind(remote: SocketAddr) -> PathKind {
    use ferry_nat::AddrClass as C;
    match ferry_nat::classify(remote.ip()) {
        C::Private | C::UniqueLocal | C::LinkLocal | C::Loopback => PathKind::Lan,
        _ => PathKind::Tcp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_paths_are_told_apart() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(tcp_kind(addr("10.0.1.10:1")), PathKind::Lan);
        assert_eq!(tcp_kind(addr("192.168.2.10:1")), PathKind::Lan);
        assert_eq!(tcp_kind(addr("127.0.0.1:1")), PathKind::Lan);
        assert_eq!(tcp_kind(addr("[fd00::2]:1")), PathKind::Lan);
        assert_eq!(tcp_kind(addr("198.51.100.2:1")), PathKind::Tcp);
    }

    #[test]
    fn direct_is_hopeless_only_when_both_networks_say_so() {
        let hint = |udp, kept| NetworkHint {
            udp,
            tcp_port_kept: Some(kept),
        };
        let tcp = |addr: &str, kind| Candidate {
            addr: addr.parse().unwrap(),
            transport: Transport::Tcp,
            kind,
            priority: 1,
        };
        let behind_nat = [tcp("10.0.1.10:4000", CandidateKind::Host)];
        let symmetric = hint(UdpMapping::Varies, false);
        assert_eq!(
            direct_hopeless(&symmetric, &symmetric, &behind_nat, &behind_nat).as_deref(),
            Some("symmetric NAT on both sides")
        );
        let blocked = hint(UdpMapping::Blocked, true);
        assert_eq!(
            direct_hopeless(&symmetric, &blocked, &behind_nat, &[]).as_deref(),
            Some("symmetric NAT here, UDP blocked at the peer")
        );
        // A cone NAT on one side: punching may work.
        let cone = hint(UdpMapping::Stable, true);
        assert_eq!(
            direct_hopeless(&symmetric, &cone, &behind_nat, &behind_nat),
            None
        );
        // Nothing known about the peer (an older version): try everything.
        assert_eq!(
            direct_hopeless(
                &symmetric,
                &NetworkHint::default(),
                &behind_nat,
                &behind_nat
            ),
            None
        );
        // UDP blocked on both sides, but port-preserving NATs: simultaneous open.
        assert_eq!(
            direct_hopeless(&blocked, &blocked, &behind_nat, &behind_nat),
            None
        );
        // A public TCP address or a UPnP mapping: direct TCP.
        let public = [tcp("198.51.100.66:4000", CandidateKind::Host)];
        assert_eq!(
            direct_hopeless(&symmetric, &symmetric, &public, &behind_nat),
            None
        );
        let mapped = [tcp("198.51.100.2:4000", CandidateKind::Upnp)];
        assert_eq!(
            direct_hopeless(&symmetric, &symmetric, &behind_nat, &mapped),
            None
        );
        // The server-observed address is no listener.
        let observed = [tcp("198.51.100.2:4000", CandidateKind::ServerObserved)];
        assert!(direct_hopeless(&symmetric, &symmetric, &observed, &observed).is_some());
    }
}
