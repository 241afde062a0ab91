//! Direct TCP connections between paired peers, secured with pinned TLS 1.3.
//!
//! Message flow (the listener is the sender, the connector the receiver):
//!
//! ```text
//! listener                                              connector
//! DirectListener::bind()  (0.0.0.0:P and [::]:P)
//! candidates() ──── under the SPAKE2 key, via rendezvous ───▶
//!                                     connect_first(): every candidate,
//!                                     best first, the rest 25 ms apart
//!   ◀────────────── TCP connect on each path ──────────────────
//!   ◀────────────── TLS 1.3, both certificates pinned ────────▶
//! first handshake that passes: chosen
//!   ─────────────── "ferry-ok" (8 bytes, inside TLS) ─────────▶
//! other handshakes dropped               first confirmed path wins,
//!                                         other attempts dropped
//! ```
//!
//! Why the confirmation: in TLS 1.3 the client finishes its handshake before
//! the server has checked the client's certificate, and when several paths
//! reach the same listener (a LAN address and loopback, say) each side could
//! otherwise pick a different connection. Only the listener's choice is
//! confirmed, so both sides end up on the same connection, and a client whose
//! certificate is rejected gets an error instead of a dead stream. After the
//! confirmation the stream belongs to the caller.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rustls::pki_types::ServerName;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tracing::debug;

use ferry_proto::peer::{Candidate, Transport};

use crate::address;
use crate::confirm::{confirm, secure_client};
use crate::error::{CandidateFailure, ConnectError, FailureReason, classify_io};
use crate::tls::ALPN;

/// Delay between starting one candidate and the next (happy eyeballs).
pub const STAGGER: Duration = Duration::from_millis(25);

/// Longest time one candidate may take to connect, handshake and confirm.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest time one incoming connection may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most candidates tried by [`connect_first`]; a peer sending more gets the
/// best ones tried.
pub const MAX_CANDIDATES: usize = 32;

/// Incoming handshakes in flight at once; further connections are dropped
/// until some finish, so a flood of idle connections cannot exhaust memory.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A TCP listener on an ephemeral port, on all IPv4 addresses and, where the
/// host has IPv6, on all IPv6 addresses too.
#[derive(Debug)]
pub struct DirectListener {
    v4: TcpListener,
    v6: Option<TcpListener>,
}

impl DirectListener {
    /// Binds TCP on an ephemeral port on `0.0.0.0` and, if possible, on `[::]`
    /// with the same port (another port if that one is taken; no IPv6
    /// listener at all if IPv6 is unavailable, which is not an error).
    pub async fn bind() -> Result<DirectListener, ConnectError> {
        let bind_error = |source| ConnectError::Bind { source };
        let v4 = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .await
            .map_err(bind_error)?;
        let port = v4.local_addr().map_err(bind_error)?.port();
        let v6 = match bind_v6(port).or_else(|error| {
            debug!(%error, port, "IPv6 listener on the IPv4 port failed; trying another port");
            bind_v6(0)
        }) {
            Ok(listener) => Some(listener),
            Err(error) => {
                debug!(%error, "no IPv6 listener for direct connections");
                None
            }
        };
        Ok(DirectListener { v4, v6 })
    }

    /// The IPv4 listening port.
    pub fn port(&self) -> u16 {
        local_port(&self.v4).unwrap_or(0)
    }

    /// The IPv6 listening port, if there is an IPv6 listener.
    pub fn port_v6(&self) -> Option<u16> {
        self.v6.as_ref().and_then(local_port)
    }

    /// Host candidates: every interface address (except scoped IPv6
    /// link-local ones) with our port, best first: private LAN, then other
    /// and public addresses, loopback last. All are TCP host candidates.
    pub fn candidates(&self) -> Vec<Candidate> {
        let addresses: Vec<IpAddr> = match ferry_nat::addr::try_interfaces() {
            Ok(interfaces) => interfaces.iter().map(|i| i.addr).collect(),
            Err(error) => {
                debug!(%error, "could not list interfaces; offering loopback only");
                vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
            }
        };
        address::host_candidates(addresses, self.port(), self.port_v6())
    }

    /// Accepts connections until one completes the pinned TLS handshake, or
    /// `timeout` passes.
    ///
    /// Handshakes run concurrently, each with its own timeout, so a slow or
    /// silent client does not hold up the peer. Connections that fail the
    /// handshake (wrong certificate, garbage, scanners) are dropped, logged
    /// at debug level, and accepting continues.
    pub async fn accept(
        &self,
        acceptor: &TlsAcceptor,
        timeout: Duration,
    ) -> Result<(TlsStream<TcpStream>, SocketAddr), ConnectError> {
        let deadline = Instant::now() + timeout;
        let mut handshakes = JoinSet::new();
        let mut rejected = 0usize;
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let mut paused_until: Option<Instant> = None;

        loop {
            tokio::select! {
                () = sleep_until(deadline) => {
                    return Err(ConnectError::AcceptTimeout { waited: timeout, rejected });
                }
                () = sleep_until(paused_until.unwrap_or(deadline)), if paused_until.is_some() => {
                    paused_until = None;
                }
                accepted = self.accept_tcp(), if paused_until.is_none() => match accepted {
                    Ok((tcp, peer)) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        if handshakes.len() >= MAX_PENDING_HANDSHAKES {
                            debug!(%peer, "too many handshakes in flight; dropping connection");
                            rejected += 1;
                            continue;
                        }
                        if let Err(error) = tcp.set_nodelay(true) {
                            debug!(%peer, %error, "could not set TCP_NODELAY");
                        }
                        let acceptor = acceptor.clone();
                        let handshake_deadline = deadline.min(Instant::now() + HANDSHAKE_TIMEOUT);
                        handshakes.spawn(async move {
                            let result = match timeout_at(handshake_deadline, acceptor.accept(tcp)).await {
                                Ok(result) => result,
                                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
                            };
                            (peer, result)
                        });
                    }
                    Err(error) => {
                        // Usually out of file descriptors: wait instead of spinning.
                        debug!(%error, ?backoff, "accepting a direct connection failed; backing off");
                        paused_until = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    }
                },
                Some(joined) = handshakes.join_next(), if !handshakes.is_empty() => match joined {
                    Ok((peer, Ok(mut tls))) => {
                        if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
                            debug!(%peer, "direct connection without the ferry ALPN; dropped");
                            rejected += 1;
                            continue;
                        }
                        let confirm_deadline = deadline.min(Instant::now() + CONFIRM_TIMEOUT);
                        match timeout_at(confirm_deadline, confirm(&mut tls)).await {
                            Ok(Ok(())) => {
                                debug!(%peer, "direct connection established");
                                return Ok((tls.into(), peer));
                            }
                            Ok(Err(error)) => {
                                debug!(%peer, %error, "peer went away before the confirmation");
                                rejected += 1;
                            }
                            Err(_) => {
                                debug!(%peer, "confirmation timed out");
                                rejected += 1;
                            }
                        }
                    }
                    Ok((peer, Err(error))) => {
                        debug!(%peer, %error, "direct connection failed the TLS handshake; dropped");
                        rejected += 1;
                    }
                    Err(error) => {
                        debug!(%error, "handshake task failed");
                        rejected += 1;
                    }
                },
            }
        }
    }

    async fn accept_tcp(&self) -> io::Result<(TcpStream, SocketAddr)> {
        match &self.v6 {
            // Both accepts are cancel safe.
            Some(v6) => tokio::select! {
                accepted = self.v4.accept() => accepted,
                accepted = v6.accept() => accepted,
            },
            None => self.v4.accept().await,
        }
    }
}

/// Connects to all TCP candidates at once and returns the first connection
/// that completes the pinned TLS handshake and is confirmed by the peer,
/// together with the address it went to.
///
/// The best candidate (highest priority) starts first, the others follow
/// [`STAGGER`] apart, all running concurrently; each has its own
/// [`ATTEMPT_TIMEOUT`] and none outlives `timeout`. Non-TCP candidates are
/// ignored, duplicates are tried once, at most [`MAX_CANDIDATES`] are tried. On failure the error lists every candidate and why it failed.
pub async fn connect_first(
    candidates: &[Candidate],
    connector: &TlsConnector,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, SocketAddr), ConnectError> {
    let mut tcp: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| matches!(c.transport, Transport::Tcp))
        .collect();
    // Stable: equal priorities keep the peer's order.
    tcp.sort_by_key(|c| std::cmp::Reverse(c.priority));
    let mut targets: Vec<SocketAddr> = Vec::with_capacity(tcp.len());
    for candidate in tcp {
        if !targets.contains(&candidate.addr) {
            targets.push(candidate.addr);
        }
    }
    if targets.is_empty() {
        return Err(ConnectError::NoCandidates);
    }
    if targets.len() > MAX_CANDIDATES {
        debug!(
            offered = targets.len(),
            "peer offered too many candidates; trying the best {MAX_CANDIDATES}"
        );
        targets.truncate(MAX_CANDIDATES);
    }

    let started = Instant::now();
    let deadline = started + timeout;
    let mut attempts = JoinSet::new();
    for (index, &addr) in targets.iter().enumerate() {
        let start_at = started + STAGGER.saturating_mul(u32::try_from(index).unwrap_or(u32::MAX));
        let connector = connector.clone();
        attempts.spawn(async move { (index, attempt(addr, connector, start_at, deadline).await) });
    }

    let mut reasons: Vec<Option<FailureReason>> = vec![None; targets.len()];
    // The attempts end by the deadline on their own; the guard is for safety.
    let winner = timeout_at(deadline + Duration::from_millis(100), async {
        while let Some(joined) = attempts.join_next().await {
            match joined {
                Ok((index, Ok(stream))) => return Some((stream, index)),
                Ok((index, Err(reason))) => {
                    debug!(addr = %targets[index], %reason, "direct candidate failed");
                    reasons[index] = Some(reason);
                }
                Err(error) => debug!(%error, "connection attempt task failed"),
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    // Dropping the set aborts the attempts still running.
    drop(attempts);

    if let Some((stream, index)) = winner {
        debug!(addr = %targets[index], "direct connection established");
        return Ok((stream.into(), targets[index]));
    }
    let failures = targets
        .iter()
        .zip(reasons)
        .map(|(&addr, reason)| CandidateFailure {
            addr,
            reason: reason.unwrap_or(FailureReason::TimedOut),
        })
        .collect();
    Err(ConnectError::AllFailed { failures })
}

async fn attempt(
    addr: SocketAddr,
    connector: TlsConnector,
    start_at: Instant,
    deadline: Instant,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, FailureReason> {
    if addr.ip().is_unspecified() || addr.ip().is_multicast() || addr.port() == 0 {
        return Err(FailureReason::NotConnectable);
    }
    sleep_until(start_at).await;
    let attempt_deadline = deadline.min(Instant::now() + ATTEMPT_TIMEOUT);
    let connect = async {
        let tcp = TcpStream::connect(addr).await.map_err(classify_io)?;
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%addr, %error, "could not set TCP_NODELAY");
        }
        secure_client(tcp, &connector, ServerName::from(addr.ip())).await
    };
    match timeout_at(attempt_deadline, connect).await {
        Ok(result) => result,
        Err(_) => Err(FailureReason::TimedOut),
    }
}

fn bind_v6(port: u16) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    // The IPv4 listener has its own socket; don't claim the port twice.
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

fn local_port(listener: &TcpListener) -> Option<u16> {
    listener.local_addr().ok().map(|addr| addr.port())
}
