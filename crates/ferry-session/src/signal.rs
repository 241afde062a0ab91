//! Signalling and pairing: the connection to the rendezvous server (with
//! retries when it is down or restarts), SPAKE2 over the mailbox, and the
//! sealed hello with each side's certificate and candidates.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_proto::code::Code;
use ferry_proto::pairing::{Pairing, PairingError, Role, SecureChannel};
use ferry_proto::peer::{Candidate, NetworkHint, PeerToPeer};
use ferry_proto::signal::ErrorCode;
use ferry_proxy::{ProxyRules, ProxyUrl, Target};
use ferry_rendezvous::{SignalClient, SignalError, SignalEvent, Welcome};
use tracing::{debug, info};

use crate::*;

/// What happens while one side waits for the other, for the caller to
/// show.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Waiting {
    /// The receiver claimed the nameplate: pairing starts.
    Joined,
    /// The rendezvous server could not be reached, or the connection to it
    /// was lost: try `attempt` follows after `retry_in`.
    ServerLost {
        /// Why: the connection failed or was lost, or the server said it
        /// is shutting down.
        error: SignalError,
        /// Which try follows (1-based).
        attempt: u32,
        /// The pause before it.
        retry_in: Duration,
    },
    /// Connected again (and, for the sender, the nameplate is held again)
    /// `after` the connection was lost.
    ServerBack {
        /// Since the connection was lost.
        after: Duration,
    },
    /// The server restarted moments ago and knows no transfer under the
    /// code yet: the receiver waits `wait` for the sender to come back.
    SenderReturning {
        /// How long the receiver waits before claiming again.
        wait: Duration,
    },
}

/// How long the proxy may take to connect us to the rendezvous server.
const PROXY_CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long, through a proxy, we try to learn the server's address here
/// (for STUN; the relay goes by name without it).
const LOCAL_LOOKUP_WAIT: Duration = Duration::from_secs(2);

/// A receiver told "no transfer is waiting" by a server that has run for
/// less than this asks once more after [`RESTART_GRACE`] of uptime: the
/// sender may be reconnecting after the restart.
pub const RESTARTED_WITHIN: Duration = Duration::from_secs(30);
/// The uptime by which a waiting sender has reserved its nameplate again
/// after a restart: [`Backoff::SERVER_RESTART`] pauses at most 5 s, plus
/// the connection.
pub const RESTART_GRACE: Duration = Duration::from_secs(8);

/// How long a waiting sender that came back keeps asking for its
/// nameplate while the server says another holds it: in a cluster the
/// holder may be the instance that just died (its nameplates go free
/// within `ferry_cluster::ALIVE_TTL`, 6 s), and the sender came back
/// through another one.
pub const TAKEN_GRACE: Duration = Duration::from_secs(12);

/// After the connection to the server was lost (`error`) while waiting:
/// reconnects on [`Backoff::SERVER_RESTART`] and reserves `nameplate`
/// again.
pub(crate) async fn hold_again(
    server: &str,
    proxy: Option<&ProxyRules>,
    nameplate: u32,
    error: SignalError,
    on_wait: &mut impl FnMut(Waiting),
) -> Result<(SignalClient, Welcome), SessionError> {
    let lost = Instant::now();
    let mut last = error;
    let mut attempt = 0;
    let mut taken_since: Option<Instant> = None;
    loop {
        attempt += 1;
        let Some(pause) = Backoff::SERVER_RESTART.next(attempt, lost.elapsed()) else {
            return Err(SessionError::ServerLost(format!(
                "lost the rendezvous server at {server} while waiting for the receiver, and it \
                 did not come back within {} s (last: {last}); run `ferry send` again when \
                 the server is back",
                Backoff::SERVER_RESTART.budget.as_secs()
            )));
        };
        on_wait(Waiting::ServerLost {
            error: last.clone(),
            attempt,
            retry_in: pause,
        });
        tokio::time::sleep(pause).await;
        let (mut signal, welcome) = match connect_signal(server, proxy).await {
            Ok(connected) => connected,
            Err(SessionError::Signal(error)) if error.is_connection_lost() => {
                last = error;
                continue;
            }
            Err(error) => return Err(error),
        };
        match signal.reserve(nameplate).await {
            Ok(()) => {
                info!(nameplate, "holding the nameplate again");
                on_wait(Waiting::ServerBack {
                    after: lost.elapsed(),
                });
                return Ok((signal, welcome));
            }
            Err(error) if error.is_connection_lost() => last = error,
            Err(
                error @ SignalError::Server {
                    code: ErrorCode::NameplateTaken,
                    ..
                },
            ) if taken_since.get_or_insert_with(Instant::now).elapsed() < TAKEN_GRACE => {
                info!(
                    nameplate,
                    "the nameplate is held elsewhere still; asking again"
                );
                last = error;
            }
            Err(SignalError::Server {
                code: ErrorCode::NameplateTaken,
                ..
            }) => {
                return Err(SessionError::ServerLost(format!(
                    "the rendezvous server at {server} restarted, and someone else now holds \
                     nameplate {nameplate}, so this code is void; run `ferry send` again for a \
                     new code"
                )));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// [`connect_signal`], with a few tries more when the server cannot be
/// reached ([`Backoff::SERVER_CONNECT`]).
pub(crate) async fn connect_signal_retrying(
    server: &str,
    proxy: Option<&ProxyRules>,
    on_wait: &mut impl FnMut(Waiting),
) -> Result<(SignalClient, Welcome), SessionError> {
    let first = Instant::now();
    let mut attempt = 0;
    loop {
        let error = match connect_signal(server, proxy).await {
            Ok(connected) => {
                if attempt > 0 {
                    on_wait(Waiting::ServerBack {
                        after: first.elapsed(),
                    });
                }
                return Ok(connected);
            }
            Err(SessionError::Signal(error)) if error.is_connection_lost() => error,
            Err(error) => return Err(error),
        };
        attempt += 1;
        let Some(pause) = Backoff::SERVER_CONNECT.next(attempt, first.elapsed()) else {
            return Err(error.into());
        };
        on_wait(Waiting::ServerLost {
            error: error.clone(),
            attempt,
            retry_in: pause,
        });
        tokio::time::sleep(pause).await;
    }
}

/// Opens the signalling connection from a reusable local port, so that
/// its public mapping (what the server observes) can later serve TCP
/// simultaneous open; or, when `proxy` has a proxy for the server,
/// through it ([`connect_signal_via`]).
///
/// `server` is a server spec (`HOST:PORT`, maybe with `#sha256=...`,
/// `#tls` or `#tls-ca=...`): the name is dialled here,
/// [`SignalClient::connect_over`] wraps the connection in TLS when the
/// spec asks for it.
pub(crate) async fn connect_signal(
    server: &str,
    proxy: Option<&ProxyRules>,
) -> Result<(SignalClient, Welcome), SessionError> {
    let addr = server.split_once('#').map_or(server, |(addr, _)| addr);
    if let Some(proxy) = server_proxy(addr, proxy) {
        return connect_signal_via(server, proxy).await;
    }
    let resolved = tokio::net::lookup_host(addr).await.map_err(|e| {
        SessionError::Signal(SignalError::Resolve {
            server: addr.to_string(),
            reason: e.to_string(),
        })
    })?;
    // Every address of the name, IPv6 first, the next one 250 ms later
    // while the one before is still pending (Happy Eyeballs).
    let connected = ferry_connect::eyeballs::connect(resolved, |addr| {
        let local = match addr {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        };
        ferry_connect::simopen::connect_from(local, addr, Duration::from_secs(10))
    })
    .await;
    let stream = match connected {
        Ok((stream, addr)) => {
            debug!(%addr, "reached the rendezvous server");
            stream
        }
        Err(failures) if failures.is_empty() => {
            return Err(SessionError::Signal(SignalError::Connect {
                server: addr.to_string(),
                reason: "no address found".into(),
            }));
        }
        Err(failures) => {
            // The server's name is in the message already; the addresses
            // only when it had several.
            let reason = match failures.as_slice() {
                [(_, error)] => error.to_string(),
                several => several
                    .iter()
                    .map(|(addr, error)| format!("{addr}: {error}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            return Err(SessionError::Signal(SignalError::Connect {
                server: addr.to_string(),
                reason,
            }));
        }
    };
    let (signal, welcome) = SignalClient::connect_over(server, Some(stream)).await?;
    debug!(observed = %welcome.observed_addr, local = %welcome.local_addr, tls = welcome.tls, "connected to the rendezvous server");
    if welcome.tls_offered && !welcome.tls {
        info!(
            server = addr,
            "this server offers TLS on the same port, which hides the code's nameplate and the \
             relay token from the network: add --tls (a certificate from a public CA) or \
             --server HOST:PORT#sha256=... (a self-signed one; `ferry serve` prints it)"
        );
    }
    Ok((signal, welcome))
}

/// The proxy for the rendezvous server `server` (`host:port`), if the
/// rules have one for its host.
pub(crate) fn server_proxy<'a>(
    server: &str,
    proxy: Option<&'a ProxyRules>,
) -> Option<&'a ProxyUrl> {
    let target: Target = server.parse().ok()?;
    proxy?.select(&target.host)
}

/// The signalling connection as a tunnel through `proxy`.
///
/// The server then sees the proxy, not us: the address it observed is
/// the proxy's, so it serves no simultaneous open (the journey offers no
/// server-observed TCP candidate, and the plain socket here is not
/// reusable, so a simultaneous open from its port fails at once). The
/// welcome's addresses are the server's own where this computer can
/// resolve its name (for STUN, which may still get out), and the relay
/// on the server's port is reached through the proxy as well
/// ([`relay_route`]).
async fn connect_signal_via(
    spec: &str,
    proxy: &ProxyUrl,
) -> Result<(SignalClient, Welcome), SessionError> {
    let server = spec.split_once('#').map_or(spec, |(addr, _)| addr);
    let target: Target = server.parse().map_err(|e: ferry_proxy::TargetError| {
        SessionError::Signal(SignalError::Resolve {
            server: server.to_string(),
            reason: e.to_string(),
        })
    })?;
    let stream = match ferry_proxy::connect(proxy, &target, PROXY_CONNECT_WAIT).await {
        Ok(stream) => stream,
        // The proxy works, the server does not answer through it: as when
        // it does not answer directly, worth another try.
        Err(error) if error.is_target_unreachable() => {
            return Err(SessionError::Signal(SignalError::Connect {
                server: server.to_string(),
                reason: error.to_string(),
            }));
        }
        Err(error) => return Err(error.into()),
    };
    let (signal, mut welcome) = SignalClient::connect_over(spec, Some(stream)).await?;
    let proxy_addr = welcome.server_addr;
    // Resolving here may fail, or hang (a network with no DNS but the
    // proxy's): then there is no STUN, and the relay goes by name.
    let lookup = tokio::time::timeout(LOCAL_LOOKUP_WAIT, tokio::net::lookup_host(server));
    let resolved: Vec<SocketAddr> = match lookup.await {
        Ok(Ok(addrs)) => addrs.collect(),
        _ => Vec::new(),
    };
    let resolved = resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or(resolved.first())
        .copied();
    welcome.server_addr = match resolved {
        Some(addr) => addr,
        None => {
            welcome.stun_port = None;
            welcome.stun_second_port = None;
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, target.port))
        }
    };
    if welcome.relay_addr == proxy_addr {
        // No relay of its own advertised: the relay is the server.
        welcome.relay_addr = welcome.server_addr;
    }
    debug!(%proxy, server_addr = %welcome.server_addr, observed = %welcome.observed_addr, "connected to the rendezvous server through the proxy");
    Ok((signal, welcome))
}

/// SPAKE2 and key confirmation over the mailbox.
pub(crate) async fn pair(
    mut signal: SignalClient,
    code: &Code,
    role: Role,
) -> Result<(SignalClient, SecureChannel), SessionError> {
    let mut pairing = Pairing::new(&code.to_string(), role, AGENT).with_features(FEATURES);
    let deadline = tokio::time::Instant::now() + PAIR_TIMEOUT;
    loop {
        while let Some(body) = pairing.poll_outbound() {
            signal.send(body).await?;
        }
        let event = tokio::time::timeout_at(deadline, signal.recv())
            .await
            .map_err(|_| SessionError::PeerGone(PeerGone::PairingTimedOut))??;
        match event {
            SignalEvent::Message(body) => match pairing.handle_inbound(&body) {
                Ok(Some(channel)) => {
                    // Our own key confirmation may still be queued.
                    while let Some(body) = pairing.poll_outbound() {
                        signal.send(body).await?;
                    }
                    let (protocol, agent) = channel.peer_version();
                    info!(protocol, agent, "paired");
                    debug!(features = ?channel.peer_features(), "the peer's features");
                    return Ok((signal, channel));
                }
                Ok(None) => {}
                Err(PairingError::CodeMismatch) => {
                    let _ = signal.release(Some(ferry_rendezvous::BAD_CODE)).await;
                    return Err(SessionError::CodeMismatch);
                }
                Err(e) => return Err(e.into()),
            },
            SignalEvent::PeerLeft(reason) => {
                return Err(match reason {
                    Some(ferry_rendezvous::BAD_CODE) => SessionError::CodeMismatch,
                    other => SessionError::PeerGone(PeerGone::LeftDuringPairing(other)),
                });
            }
            SignalEvent::PeerJoined => {}
        }
    }
}

/// Waits for the peer's sealed `Hello`: its certificate fingerprint and
/// candidates.
pub(crate) async fn receive_hello(
    signal: &mut SignalClient,
    channel: &mut SecureChannel,
) -> Result<(String, Vec<Candidate>, NetworkHint), SessionError> {
    let deadline = tokio::time::Instant::now() + PAIR_TIMEOUT;
    loop {
        let event = tokio::time::timeout_at(deadline, signal.recv())
            .await
            .map_err(|_| SessionError::PeerGone(PeerGone::SilentAfterPairing))??;
        match event {
            SignalEvent::Message(body) => match channel.open(&body)? {
                PeerToPeer::Hello {
                    cert_fingerprint,
                    candidates,
                    network,
                } => return Ok((cert_fingerprint, candidates, network)),
                PeerToPeer::Abort { reason } => {
                    return Err(SessionError::PeerGone(PeerGone::Cancelled(reason)));
                }
                other => debug!(?other, "unexpected message while waiting for hello"),
            },
            SignalEvent::PeerLeft(reason) => {
                return Err(SessionError::PeerGone(PeerGone::LeftBeforeConnecting(
                    reason,
                )));
            }
            SignalEvent::PeerJoined => {}
        }
    }
}
