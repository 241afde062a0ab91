//! The path attempts: each [`Step`] of the plan becomes a socket
//! operation (accept, connect, simultaneous open, punch + QUIC, relay),
//! and the race runs them all at once.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use ferry_connect::race::{PathFailure, PathKind, PeerStream};
use ferry_connect::{ConnectError, DirectListener, Identity};
use ferry_proto::pairing::SecureChannel;
use ferry_proto::peer::Candidate;
use ferry_rendezvous::{SignalClient, Welcome};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tracing::debug;

use crate::*;

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
        let steps = plan_paths(&PlanInput {
            controlling: self.controlling,
            options: self.options,
            theirs: &self.theirs,
            our_observed: self.welcome.observed_addr,
            listening: listener.is_some(),
            relay_token: self.relay_token.is_some(),
            hopeless: self.hopeless,
        });
        let mut listener = listener;
        let mut udp = Some(udp);
        let mut attempts: Vec<(PathKind, Attempt)> = Vec::new();
        for step in steps {
            let kind = step.kind();
            let attempt: Attempt = match step {
                Step::AcceptTcp => {
                    let Some(listener) = listener.take() else {
                        continue;
                    };
                    let acceptor =
                        ferry_connect::tls_acceptor(&self.identity, &self.peer_fingerprint)?;
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
                    })
                }
                Step::ConnectTcp { targets } => {
                    let connector =
                        ferry_connect::tls_connector(&self.identity, &self.peer_fingerprint)?;
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
                        let local = local_of(tls.get_ref().0);
                        Ok(Established {
                            stream: PeerStream::Tls(Box::new(tls)),
                            kind: PathKind::SimultaneousOpen,
                            local,
                            remote,
                            relay_limits: None,
                        })
                    })
                }
                Step::PunchQuic { targets } => {
                    let Some(udp) = udp.take() else {
                        continue;
                    };
                    let identity = self.identity.clone();
                    let fingerprint = self.peer_fingerprint.clone();
                    let controlling = self.controlling;
                    let key = self.punch_key;
                    let mapped = self.udp_mapped;
                    Box::pin(async move {
                        let punched =
                            ferry_connect::punch(&udp, key, controlling, &targets, PUNCH_TIMEOUT)
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
                    })
                }
                Step::Relay { head_start } => {
                    let Some(token) = self.relay_token else {
                        continue;
                    };
                    Box::pin(relay_path(
                        self.welcome.relay_addr,
                        token,
                        self.identity.clone(),
                        self.peer_fingerprint.clone(),
                        self.controlling,
                        head_start,
                    ))
                }
            };
            attempts.push((kind, attempt));
        }
        Ok(attempts)
    }

    pub(crate) async fn race(
        self,
        udp: UdpSocket,
        listener: Option<DirectListener>,
        signal: &mut SignalClient,
        channel: &mut SecureChannel,
    ) -> Result<(Established, Vec<(PathKind, PathFailure)>), SessionError> {
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
