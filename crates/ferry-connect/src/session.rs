//! One side's journey from the rendezvous server to a secure stream with
//! the peer: signalling (`ferry-rendezvous`), pairing (`ferry-proto`),
//! candidate gathering (`ferry-nat`: STUN, UPnP), then the race of direct
//! paths of this crate.
//!
//! ```text
//! sender (controlling)            server                  receiver (controlled)
//!   | hello / allocate -----------> |  (signalling from a reusable port:
//!   | <----------- allocated N      |   its public mapping serves TCP
//!   |  gather: UDP socket + STUN,    |   simultaneous open)
//!   |  TCP listener, UPnP mappings   | <------------ hello / claim N |
//!   | <----------- peer-joined      |                               |  gather: UDP + STUN
//!   | pake / version (sealed) <--------------------------> pake / version  SPAKE2 + confirmation
//!   | hello{cert fp, candidates} <-----------------> hello{cert fp, candidates}  (sealed)
//!   | race: accept TCP, simultaneous open, punch+QUIC  | race: connect TCP, simultaneous open, punch+QUIC
//!   | "ferry-go" on the best authenticated path ======> uses the path that says "ferry-go"
//!   | release                       |                       release |
//! ```

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_nat::stun::{BindingOptions, RetransmitConfig, binding_udp};
use ferry_nat::upnp::{MappingGuard, Protocol, UpnpOptions};
use ferry_proto::code::{Code, CodeError};
use ferry_proto::pairing::{Pairing, PairingError, Role, SecureChannel};
use ferry_proto::peer::{Candidate, CandidateKind, NetworkHint, PeerToPeer, Transport, UdpMapping};
use ferry_proto::signal::ErrorCode;
use ferry_rendezvous::{SignalClient, SignalError, SignalEvent, Welcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::race::{Action, NOMINATION, PathId, PathKind, PeerStream, Race, RaceConfig};
use crate::{Backoff, ConnectError, DirectListener, Identity};

/// ferry's agent string, sent to the server and the peer.
pub const AGENT: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

/// How long pairing and the candidate exchange may take once both sides
/// are present.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the whole race may take.
pub const RACE_DEADLINE: Duration = Duration::from_secs(20);
/// How long the sender waits for the receiver's direct TCP connection.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(12);
/// How long TCP simultaneous open keeps trying.
const SIMOPEN_DEADLINE: Duration = Duration::from_secs(8);
/// How long hole punching keeps trying.
const PUNCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the QUIC handshake on a punched socket may take.
const QUIC_TIMEOUT: Duration = Duration::from_secs(8);
/// How long the controlled side waits for the nomination on a path.
const NOMINATION_TIMEOUT: Duration = Duration::from_secs(RACE_DEADLINE.as_secs() + 5);
/// UPnP lease for the sender's mappings (removed when the race is over).
const UPNP_LEASE: Duration = Duration::from_secs(600);
/// How long direct paths run before the relay joins the race.
const RELAY_HEAD_START: Duration = Duration::from_millis(1500);
/// How long the relay may take to join us with the peer.
const RELAY_WAIT: Duration = Duration::from_secs(15);
/// How long the race waits for UPnP once pairing is done.
const UPNP_WAIT: Duration = Duration::from_millis(300);
/// How long a side that reconnects waits for the peer to come back.
pub const REJOIN_WAIT: Duration = Duration::from_secs(40);
/// How long a TCP path may go without an acknowledgement (of data, or of a
/// keepalive probe) before it counts as broken. QUIC uses
/// [`crate::quic::IDLE_TIMEOUT`].
pub const TCP_DEAD_AFTER: Duration = Duration::from_secs(15);
/// The context of the rejoin meeting point derived from the pairing key.
const REJOIN_CONTEXT: &str = "ferry v1 rejoin meeting";

/// Which paths to try.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// Only this kind of path (`--force-path`): [`PathKind::Lan`],
    /// [`PathKind::Tcp`] (direct TCP and simultaneous open),
    /// [`PathKind::Quic`] or [`PathKind::Relay`].
    pub force_path: Option<PathKind>,
    /// Skip UPnP.
    pub no_upnp: bool,
}

impl SessionOptions {
    fn allows(&self, kind: PathKind) -> bool {
        match (self.force_path, kind) {
            (None, _) => true,
            (Some(PathKind::Tcp), PathKind::Lan | PathKind::Tcp | PathKind::SimultaneousOpen) => {
                true
            }
            (Some(PathKind::Lan), PathKind::Lan | PathKind::Tcp) => true,
            (Some(forced), kind) => forced == kind,
        }
    }
}

/// A secure stream to the peer and how it was made.
pub struct PeerLink {
    /// The secure stream (certificates pinned both ways).
    pub stream: PeerStream,
    /// The path that won.
    pub path: PathKind,
    /// Our address on the path.
    pub local: SocketAddr,
    /// The peer's address on the path.
    pub remote: SocketAddr,
    /// From "both peers present" to the secure stream.
    pub connect_time: Duration,
    /// The paths that failed, and why (the others lost the race).
    pub lost: Vec<(PathKind, String)>,
    /// When the relay carries the transfer: why no direct path did.
    pub relay_reason: Option<String>,
    /// When the relay carries the transfer: the limits it set on the pair
    /// (reaching one ends the pipe; [`ferry_relay::PairLimits::explains`]
    /// tells such an end from a broken path).
    pub relay_limits: Option<ferry_relay::PairLimits>,
    /// How to find the peer again if this path breaks: set on the link of
    /// the first connection ([`Sender::connect`], [`receive`]), `None` on
    /// the links [`Rejoin::reconnect`] returns (keep using that `Rejoin`).
    pub rejoin: Option<Rejoin>,
}

/// What both sides keep after pairing so that they can reconnect when the
/// path breaks mid-transfer, without the code (its nameplate is released
/// by then) and without asking the user: they meet again on a channel
/// derived from the pairing key, exchange fresh candidates sealed with
/// that key, and race the paths afresh (the relay included, with a fresh
/// token).
pub struct Rejoin {
    server: String,
    channel: SecureChannel,
    meeting: String,
    controlling: bool,
    options: SessionOptions,
}

impl std::fmt::Debug for Rejoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejoin")
            .field("server", &self.server)
            .field("controlling", &self.controlling)
            .finish_non_exhaustive()
    }
}

impl Rejoin {
    fn new(
        server: &str,
        channel: SecureChannel,
        controlling: bool,
        options: SessionOptions,
    ) -> Self {
        let secret = channel.derive_secret(REJOIN_CONTEXT);
        Rejoin {
            server: server.to_string(),
            meeting: hex::encode(&secret[..16]),
            channel,
            controlling,
            options,
        }
    }

    /// Meets the peer again through the rendezvous server (waiting up to
    /// [`REJOIN_WAIT`] for it) and races the paths afresh. One attempt: the
    /// caller decides how often to try, and how long to back off.
    pub async fn reconnect(&mut self) -> Result<PeerLink, SessionError> {
        let (mut signal, welcome) = connect_signal(&self.server).await?;
        let gathering = start_gathering(
            &welcome,
            self.controlling,
            self.controlling && !self.options.no_upnp,
        );
        if !signal.rejoin(&self.meeting).await? {
            let joined = async {
                loop {
                    match signal.recv().await? {
                        SignalEvent::PeerJoined => return Ok(()),
                        other => debug!(?other, "while waiting for the peer to rejoin"),
                    }
                }
            };
            match tokio::time::timeout(REJOIN_WAIT, joined).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    gathering.abort();
                    return Err(SessionError::Signal(error));
                }
                Err(_) => {
                    gathering.abort();
                    let _ = signal.release(None).await;
                    return Err(SessionError::PeerGone(format!(
                        "the peer did not come back within {} s",
                        REJOIN_WAIT.as_secs()
                    )));
                }
            }
        }
        let started = Instant::now();
        run_session(
            signal,
            &mut self.channel,
            welcome,
            gathering,
            self.options,
            self.controlling,
            started,
        )
        .await
    }
}

/// What can go wrong between "connect to the server" and "secure stream".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Talking to the rendezvous server failed.
    #[error(transparent)]
    Signal(#[from] SignalError),
    /// The code the user chose is not a valid code.
    #[error("{text:?} is not a valid code ({problem}); a code looks like 7-orbit-lantern")]
    BadCode {
        /// What the user typed.
        text: String,
        /// Why it does not parse.
        problem: CodeError,
    },
    /// The two sides used different codes.
    #[error(
        "the code did not match: check it for typos and ask the sender for a new code \
         (this one is now used up)"
    )]
    CodeMismatch,
    /// The peer sent something pairing cannot accept.
    #[error("pairing with the peer failed: {0}")]
    Pairing(PairingError),
    /// The peer left, cancelled, or stopped answering.
    #[error("{0}")]
    PeerGone(String),
    /// A path could not be set up locally.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Every path failed.
    #[error("{}", no_path_message(.failures, *.relay_forced))]
    NoPath {
        /// Each path tried, and why it failed.
        failures: Vec<(PathKind, String)>,
        /// `--force-path relay` was asked for.
        relay_forced: bool,
    },
    /// A local socket problem.
    #[error("local network error: {0}")]
    Io(#[from] std::io::Error),
    /// The rendezvous server went away while we waited for the receiver
    /// and did not come back, or came back without our nameplate.
    #[error("{0}")]
    ServerLost(String),
}

fn no_path_message(failures: &[(PathKind, String)], relay_forced: bool) -> String {
    if relay_forced && failures.is_empty() {
        return "--force-path relay, but the rendezvous server offers no relay \
                (it runs with --no-relay); run without --force-path"
            .into();
    }
    let tried: Vec<String> = failures
        .iter()
        .map(|(kind, why)| format!("{kind}: {why}"))
        .collect();
    format!(
        "no direct path to the peer ({}); both networks may block direct connections \
         (e.g. symmetric NATs on both sides); run `ferry nat` on each side to see why",
        if tried.is_empty() {
            "nothing could be tried".to_string()
        } else {
            tried.join("; ")
        }
    )
}

impl From<PairingError> for SessionError {
    fn from(e: PairingError) -> Self {
        match e {
            PairingError::CodeMismatch => SessionError::CodeMismatch,
            other => SessionError::Pairing(other),
        }
    }
}

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
        /// Why (our own error text, not the server's).
        reason: String,
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

/// A receiver told "no transfer is waiting" by a server that has run for
/// less than this asks once more after [`RESTART_GRACE`] of uptime: the
/// sender may be reconnecting after the restart.
pub const RESTARTED_WITHIN: Duration = Duration::from_secs(30);
/// The uptime by which a waiting sender has reserved its nameplate again
/// after a restart: [`Backoff::SERVER_RESTART`] pauses at most 5 s, plus
/// the connection.
pub const RESTART_GRACE: Duration = Duration::from_secs(8);

/// The sender's side, in two steps so the caller can show the code while
/// waiting: [`Sender::start`] then [`Sender::connect`].
pub struct Sender {
    server: String,
    signal: SignalClient,
    code: Code,
    welcome: Welcome,
    options: SessionOptions,
    gathering: Gathering,
}

impl Sender {
    /// Connects to the server, allocates a nameplate (a fresh one, or the
    /// one of `chosen`, a code the user picked) and starts gathering
    /// candidates while the receiver is on its way.
    pub async fn start(
        server: &str,
        chosen: Option<&str>,
        options: SessionOptions,
    ) -> Result<Sender, SessionError> {
        Self::start_with(server, chosen, options, |_| {}).await
    }

    /// Like [`start`](Self::start), telling `on_wait` about retries of the
    /// first connection ([`Backoff::SERVER_CONNECT`]).
    pub async fn start_with(
        server: &str,
        chosen: Option<&str>,
        options: SessionOptions,
        mut on_wait: impl FnMut(Waiting),
    ) -> Result<Sender, SessionError> {
        let chosen = chosen
            .map(|text| {
                text.parse::<Code>()
                    .map_err(|problem| SessionError::BadCode {
                        text: text.to_string(),
                        problem,
                    })
            })
            .transpose()?;
        let (mut signal, welcome) = connect_signal_retrying(server, &mut on_wait).await?;
        let code = match chosen {
            Some(code) => {
                signal.reserve(code.nameplate).await?;
                code
            }
            None => {
                let nameplate = signal.allocate().await?;
                Code::generate(nameplate, &mut rand::thread_rng())
            }
        };
        let gathering = start_gathering(&welcome, true, !options.no_upnp);
        Ok(Sender {
            server: server.to_string(),
            signal,
            code,
            welcome,
            options,
            gathering,
        })
    }

    /// The code to give to the receiver.
    pub fn code(&self) -> &Code {
        &self.code
    }

    /// What the server told us about ourselves.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Waits for the receiver (as long as the server keeps the nameplate),
    /// pairs, and races the paths. `on_wait` hears when the receiver has
    /// claimed the nameplate ([`Waiting::Joined`]), and when the server
    /// went away and we reconnect ([`Waiting::ServerLost`],
    /// [`Waiting::ServerBack`]): a restarted server has forgotten the
    /// nameplate, so we reserve it again, and the code stays good.
    pub async fn connect(self, mut on_wait: impl FnMut(Waiting)) -> Result<PeerLink, SessionError> {
        let Sender {
            server,
            mut signal,
            code,
            mut welcome,
            options,
            gathering,
        } = self;
        // Wait for the receiver to claim the nameplate.
        loop {
            match signal.recv().await {
                Ok(SignalEvent::PeerJoined) => break,
                Ok(SignalEvent::PeerLeft(reason)) => {
                    gathering.abort();
                    return Err(SessionError::PeerGone(format!(
                        "the receiver left before pairing ({})",
                        reason.map_or("no reason given", |r| r.describe())
                    )));
                }
                Ok(SignalEvent::Message(_)) => debug!("message before the peer joined; ignored"),
                Err(error) if error.is_connection_lost() => {
                    info!(%error, "lost the rendezvous server while waiting; reconnecting");
                    match hold_again(&server, code.nameplate, error, &mut on_wait).await {
                        Ok((again, new_welcome)) => {
                            // Simultaneous open uses the new connection's
                            // mapping; the gathered UDP socket stays.
                            signal = again;
                            welcome = new_welcome;
                        }
                        Err(error) => {
                            gathering.abort();
                            return Err(error);
                        }
                    }
                }
                Err(error) => {
                    gathering.abort();
                    return Err(error.into());
                }
            }
        }
        on_wait(Waiting::Joined);
        let started = Instant::now();
        let (signal, mut channel) = pair(signal, &code, Role::Sender).await?;
        let mut link = run_session(
            signal,
            &mut channel,
            welcome,
            gathering,
            options,
            true,
            started,
        )
        .await?;
        link.rejoin = Some(Rejoin::new(&server, channel, true, options));
        Ok(link)
    }
}

/// After the connection to the server was lost (`error`) while waiting:
/// reconnects on [`Backoff::SERVER_RESTART`] and reserves `nameplate`
/// again.
async fn hold_again(
    server: &str,
    nameplate: u32,
    error: SignalError,
    on_wait: &mut impl FnMut(Waiting),
) -> Result<(SignalClient, Welcome), SessionError> {
    let lost = Instant::now();
    let mut reason = error.to_string();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(pause) = Backoff::SERVER_RESTART.next(attempt, lost.elapsed()) else {
            return Err(SessionError::ServerLost(format!(
                "lost the rendezvous server at {server} while waiting for the receiver, and it \
                 did not come back within {} s (last: {reason}); run `ferry send` again when \
                 the server is back",
                Backoff::SERVER_RESTART.budget.as_secs()
            )));
        };
        on_wait(Waiting::ServerLost {
            reason: reason.clone(),
            attempt,
            retry_in: pause,
        });
        tokio::time::sleep(pause).await;
        let (mut signal, welcome) = match connect_signal(server).await {
            Ok(connected) => connected,
            Err(SessionError::Signal(error)) if error.is_connection_lost() => {
                reason = error.to_string();
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
            Err(error) if error.is_connection_lost() => reason = error.to_string(),
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
async fn connect_signal_retrying(
    server: &str,
    on_wait: &mut impl FnMut(Waiting),
) -> Result<(SignalClient, Welcome), SessionError> {
    let first = Instant::now();
    let mut attempt = 0;
    loop {
        let error = match connect_signal(server).await {
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
            reason: error.to_string(),
            attempt,
            retry_in: pause,
        });
        tokio::time::sleep(pause).await;
    }
}

/// The receiver's side: claims the nameplate, pairs, races the paths.
pub async fn receive(
    server: &str,
    code: &Code,
    options: SessionOptions,
) -> Result<PeerLink, SessionError> {
    receive_with(server, code, options, |_| {}).await
}

/// Like [`receive`], telling `on_wait` about retries of the connection
/// and about a server that restarted moments ago
/// ([`Waiting::SenderReturning`]).
pub async fn receive_with(
    server: &str,
    code: &Code,
    options: SessionOptions,
    mut on_wait: impl FnMut(Waiting),
) -> Result<PeerLink, SessionError> {
    let (mut signal, welcome) = connect_signal_retrying(server, &mut on_wait).await?;
    // Gather while pairing; the receiver maps nothing with UPnP (the
    // sender's mappings serve both directions) to save the search time.
    let gathering = start_gathering(&welcome, false, false);
    let claimed = match signal.claim(code.nameplate).await {
        Err(SignalError::UnknownNameplate { .. })
            if welcome.uptime.is_some_and(|up| up < RESTARTED_WITHIN) =>
        {
            // A server that has just restarted: a sender that waited on it
            // is reconnecting and reserves the nameplate again.
            let up = welcome.uptime.unwrap_or_default();
            let wait = RESTART_GRACE.saturating_sub(up).max(Duration::from_secs(1));
            info!(?up, ?wait, "the server restarted moments ago; asking again");
            on_wait(Waiting::SenderReturning { wait });
            tokio::time::sleep(wait).await;
            signal.claim(code.nameplate).await
        }
        other => other,
    };
    if let Err(error) = claimed {
        gathering.abort();
        return Err(error.into());
    }
    let started = Instant::now();
    let (signal, mut channel) = pair(signal, code, Role::Receiver).await?;
    let mut link = run_session(
        signal,
        &mut channel,
        welcome,
        gathering,
        options,
        false,
        started,
    )
    .await?;
    link.rejoin = Some(Rejoin::new(server, channel, false, options));
    Ok(link)
}

/// Opens the signalling connection from a reusable local port, so that
/// its public mapping (what the server observes) can later serve TCP
/// simultaneous open.
async fn connect_signal(server: &str) -> Result<(SignalClient, Welcome), SessionError> {
    let resolved = tokio::net::lookup_host(server).await.map_err(|e| {
        SessionError::Signal(SignalError::Resolve {
            server: server.to_string(),
            reason: e.to_string(),
        })
    })?;
    let mut stream = None;
    let mut last_error = None;
    for addr in resolved {
        let local = match addr {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        };
        match crate::simopen::connect_from(local, addr, Duration::from_secs(10)).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let Some(stream) = stream else {
        return Err(SessionError::Signal(SignalError::Connect {
            server: server.to_string(),
            reason: last_error.map_or_else(|| "no address found".into(), |e| e.to_string()),
        }));
    };
    let (signal, welcome) = SignalClient::connect_over(server, Some(stream)).await?;
    debug!(observed = %welcome.observed_addr, local = %welcome.local_addr, "connected to the rendezvous server");
    Ok((signal, welcome))
}

/// Gathering in the background (see [`gather`]) while the peer is on its way.
type Gathering = tokio::task::JoinHandle<Result<Gathered, SessionError>>;

fn start_gathering(welcome: &Welcome, listen: bool, upnp: bool) -> Gathering {
    tokio::spawn(gather(
        stun_server(welcome),
        welcome.stun_second_port,
        listen,
        upnp,
    ))
}

fn stun_server(welcome: &Welcome) -> Option<SocketAddr> {
    welcome
        .stun_port
        .map(|port| SocketAddr::new(welcome.server_addr.ip(), port))
}

/// What one side offers the other.
struct Gathered {
    udp: UdpSocket,
    udp_mapping: UdpMapping,
    listener: Option<DirectListener>,
    candidates: Vec<Candidate>,
    upnp: Option<tokio::task::JoinHandle<Mapped>>,
}

/// Binds the UDP socket (and, for the sender, the TCP listener), learns the
/// UDP mapping from the server's STUN responder and, for the sender, maps
/// both ports on a UPnP gateway when there is one.
async fn gather(
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
                    priority: interface.class.candidate_priority(),
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
            priority: 900,
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
type Mapped = Option<(MappingGuard, Vec<(Protocol, SocketAddrV4)>)>;

/// Maps our UDP port (and TCP port) on a UPnP gateway, if there is one.
async fn map_ports(udp_port: u16, tcp_port: Option<u16>) -> Mapped {
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
async fn upnp_result(task: Option<tokio::task::JoinHandle<Mapped>>) -> Mapped {
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

/// Exchanges hellos, races the paths, releases the nameplate.
async fn run_session(
    mut signal: SignalClient,
    channel: &mut SecureChannel,
    welcome: Welcome,
    gathering: Gathering,
    options: SessionOptions,
    controlling: bool,
    started: Instant,
) -> Result<PeerLink, SessionError> {
    // Paired (or rejoined) on both sides: only now does the server hand
    // out the relay token, once both of us asked.
    signal.request_relay_token().await?;
    let gathered = gathering
        .await
        .map_err(|e| SessionError::Io(std::io::Error::other(e)))??;
    let identity = Arc::new(Identity::generate()?);
    let mut ours = gathered.candidates.clone();
    let upnp = upnp_result(gathered.upnp).await;
    let mut guard = None;
    if let Some((g, mapped)) = upnp {
        for (protocol, external) in mapped {
            ours.push(Candidate {
                addr: SocketAddr::V4(external),
                transport: match protocol {
                    Protocol::Udp => Transport::Udp,
                    Protocol::Tcp => Transport::Tcp,
                },
                kind: CandidateKind::Upnp,
                priority: 850,
            });
        }
        guard = Some(g);
    }
    ours.push(Candidate {
        addr: welcome.observed_addr,
        transport: Transport::Tcp,
        kind: CandidateKind::ServerObserved,
        priority: 100,
    });
    let ours = crate::address::offered_candidates(ours, welcome.server_addr);
    let network = NetworkHint {
        udp: gathered.udp_mapping,
        tcp_port_kept: Some(welcome.observed_addr.port() == welcome.local_addr.port()),
    };
    let hello = PeerToPeer::Hello {
        cert_fingerprint: identity.fingerprint(),
        candidates: ours.clone(),
        network,
    };
    signal.send(channel.seal(&hello)).await?;
    let (peer_fingerprint, theirs, their_network) = receive_hello(&mut signal, channel).await?;
    let theirs = crate::address::peer_candidates(theirs, welcome.observed_addr);
    debug!(?theirs, ?their_network, "peer candidates");
    let hopeless = direct_hopeless(&network, &their_network, &ours, &theirs);
    if let Some(why) = &hopeless {
        info!(why, "no direct path can work: the relay starts at once");
    }
    let relay_token = signal.relay_token();
    if options.force_path == Some(PathKind::Relay) && relay_token.is_none() {
        let _ = signal.release(None).await;
        return Err(SessionError::NoPath {
            failures: Vec::new(),
            relay_forced: true,
        });
    }
    let plan = Plan {
        identity,
        peer_fingerprint,
        theirs,
        welcome,
        punch_key: channel.derive_secret(crate::punch::PROBE_KEY_CONTEXT),
        relay_token,
        // Shown as our end of a QUIC path: the socket itself is bound to
        // the wildcard address.
        udp_mapped: gathered
            .candidates
            .iter()
            .find(|c| c.transport == Transport::Udp && c.kind == CandidateKind::Stun)
            .map(|c| c.addr),
        controlling,
        options,
        hopeless: hopeless.is_some(),
    };
    let result = plan
        .race(gathered.udp, gathered.listener, &mut signal, channel)
        .await;
    if let Some(guard) = guard {
        // Established flows outlive the port mapping in the NAT's table.
        if let Err(error) = guard.close().await {
            debug!(%error, "removing the UPnP mappings failed");
        }
    }
    let _ = signal.release(None).await;
    let (established, lost) = result?;
    for (kind, why) in &lost {
        info!(path = %kind, why, "path lost");
    }
    if let PeerStream::Tls(tls) = &established.stream {
        detect_breaks(tls.get_ref().0);
    }
    let relay_reason = (established.kind == PathKind::Relay).then(|| {
        let within = format!(
            "none answered within {:.1} s",
            started.elapsed().as_secs_f64()
        );
        match hopeless {
            _ if options.force_path == Some(PathKind::Relay) => "--force-path relay".to_string(),
            Some(why) => why,
            None if lost.is_empty() => within,
            None => {
                let failed: Vec<String> = lost
                    .iter()
                    .map(|(kind, why)| format!("{kind}: {why}"))
                    .collect();
                format!("{within}; {}", failed.join("; "))
            }
        }
    });
    Ok(PeerLink {
        stream: established.stream,
        path: established.kind,
        local: established.local,
        remote: established.remote,
        connect_time: started.elapsed(),
        lost,
        relay_reason,
        relay_limits: established.relay_limits,
        rejoin: None,
    })
}

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
    fn udp_words(mapping: UdpMapping) -> Option<&'static str> {
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

/// Makes a broken TCP path fail within about [`TCP_DEAD_AFTER`] instead of
/// hanging: keepalive probes while we only read, and a user timeout while
/// our data goes unacknowledged (a NAT that lost its state, a link down).
fn detect_breaks(tcp: &tokio::net::TcpStream) {
    let socket = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2))
        .with_retries(4);
    if let Err(error) = socket.set_tcp_keepalive(&keepalive) {
        debug!(%error, "cannot enable TCP keepalive");
    }
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if let Err(error) = socket.set_tcp_user_timeout(Some(TCP_DEAD_AFTER)) {
        debug!(%error, "cannot set the TCP user timeout");
    }
}

/// One authenticated, confirmed path.
struct Established {
    stream: PeerStream,
    kind: PathKind,
    local: SocketAddr,
    remote: SocketAddr,
    /// On the relay path: the limits the relay set on the pair.
    relay_limits: Option<ferry_relay::PairLimits>,
}

type Attempt = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Established, ConnectError>> + Send + 'static>,
>;

/// Everything the path attempts need.
struct Plan {
    identity: Arc<Identity>,
    peer_fingerprint: String,
    theirs: Vec<Candidate>,
    welcome: Welcome,
    punch_key: [u8; 32],
    relay_token: Option<[u8; 32]>,
    udp_mapped: Option<SocketAddr>,
    controlling: bool,
    options: SessionOptions,
    /// Both networks rule out a direct path: no head start for them.
    hopeless: bool,
}

impl Plan {
    fn attempts(
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
                    let acceptor = crate::tls_acceptor(&self.identity, &self.peer_fingerprint)?;
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
                    let connector = crate::tls_connector(&self.identity, &self.peer_fingerprint)?;
                    attempts.push((
                        PathKind::Tcp,
                        Box::pin(async move {
                            let (tls, remote) =
                                crate::connect_first(&targets, &connector, ACCEPT_TIMEOUT).await?;
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
                        let (tls, remote) = crate::simultaneous_open(
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
                        crate::punch(&udp, key, controlling, &udp_targets, PUNCH_TIMEOUT).await?;
                    let local = match (mapped, udp.local_addr()) {
                        (Some(mapped), _) => mapped,
                        (None, Ok(local)) => local,
                        (None, Err(_)) => UNSPECIFIED,
                    };
                    let socket = udp
                        .into_std()
                        .map_err(|source| ConnectError::UdpSocket { source })?;
                    let quic = crate::quic_connect(
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

    async fn race(
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

/// Joins the peer through the relay, then runs pinned TLS over it (the
/// relay sees only ciphertext): the sender is the TLS server.
async fn relay_path(
    relay: SocketAddr,
    token: [u8; 32],
    identity: Arc<Identity>,
    fingerprint: String,
    controlling: bool,
    head_start: Duration,
) -> Result<Established, ConnectError> {
    tokio::time::sleep(head_start).await;
    let failed = |reason: String| ConnectError::Relay { reason };
    let (tcp, limits) = ferry_relay::relay_join(relay, &token, RELAY_WAIT)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let local = local_of(&tcp);
    let handshake = async {
        let tls: tokio_rustls::TlsStream<tokio::net::TcpStream> = if controlling {
            crate::tls_acceptor(&identity, &fingerprint)?
                .accept(tcp)
                .await
                .map_err(|e| failed(format!("TLS through the relay: {e}")))?
                .into()
        } else {
            let name = rustls::pki_types::ServerName::try_from(crate::tls::CERTIFICATE_NAME)
                .map_err(|e| failed(e.to_string()))?;
            crate::tls_connector(&identity, &fingerprint)?
                .connect(name, tcp)
                .await
                .map_err(|e| failed(format!("TLS through the relay: {e}")))?
                .into()
        };
        Ok::<_, ConnectError>(tls)
    };
    let tls = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .map_err(|_| failed("the TLS handshake through the relay timed out".into()))??;
    Ok(Established {
        stream: PeerStream::Tls(Box::new(tls)),
        kind: PathKind::Relay,
        local,
        remote: relay,
        relay_limits: Some(limits),
    })
}

const UNSPECIFIED: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// Our address on a TCP path (informational only).
fn local_of(tcp: &tokio::net::TcpStream) -> SocketAddr {
    tcp.local_addr().unwrap_or(UNSPECIFIED)
}

/// A TCP path to a private, link-local or loopback address is a LAN path.
fn tcp_kind(remote: SocketAddr) -> PathKind {
    use ferry_nat::AddrClass as C;
    match ferry_nat::classify(remote.ip()) {
        C::Private | C::UniqueLocal | C::LinkLocal | C::Loopback => PathKind::Lan,
        _ => PathKind::Tcp,
    }
}

/// The signalling connection during the race: the receiver reports paths
/// it gave up on, and either side notices the other leaving.
struct Mailbox<'a> {
    signal: &'a mut SignalClient,
    channel: &'a mut SecureChannel,
}

impl Mailbox<'_> {
    async fn path_failed(&mut self, kind: PathKind, why: &str) {
        let msg = PeerToPeer::PathFailed {
            path: kind.code().to_string(),
            why: why.to_string(),
        };
        let body = self.channel.seal(&msg);
        if let Err(error) = self.signal.send(body).await {
            debug!(%error, "could not report a failed path");
        }
    }

    /// The next thing the peer says during the race: `Ok(Some(path))` for
    /// a path it gave up on, `Ok(None)` for anything else.
    async fn next(&mut self) -> Result<Option<(String, String)>, SessionError> {
        match self.signal.recv().await? {
            SignalEvent::Message(body) => match self.channel.open(&body)? {
                PeerToPeer::PathFailed { path, why } => Ok(Some((path, why))),
                PeerToPeer::Abort { reason } => Err(SessionError::PeerGone(format!(
                    "the peer cancelled: {reason}"
                ))),
                other => {
                    debug!(?other, "unexpected message during the race");
                    Ok(None)
                }
            },
            SignalEvent::PeerLeft(reason) => Err(SessionError::PeerGone(format!(
                "the peer gave up on connecting ({})",
                reason.map_or("no reason given", |r| r.describe())
            ))),
            SignalEvent::PeerJoined => Ok(None),
        }
    }
}

/// The sender picks the best authenticated path and nominates it.
async fn race_controlling(
    mut set: JoinSet<(PathId, Result<Established, ConnectError>)>,
    kinds: &[PathKind],
    mut mailbox: Mailbox<'_>,
) -> Result<(Established, Vec<(PathKind, String)>), SessionError> {
    let mut mailbox_open = true;
    let mut race = Race::new(
        Instant::now(),
        RaceConfig {
            deadline: RACE_DEADLINE,
            ..RaceConfig::default()
        },
    );
    for (id, kind) in kinds.iter().enumerate() {
        race.handle_started(id, *kind);
    }
    let mut established: Vec<Option<Established>> = kinds.iter().map(|_| None).collect();
    if kinds.is_empty() {
        race.handle_timeout(Instant::now());
    }
    loop {
        while let Some(action) = race.poll_action() {
            match action {
                Action::Nominate(id) => {
                    let Some(mut winner) = established.get_mut(id).and_then(Option::take) else {
                        continue;
                    };
                    let nominated = async {
                        winner.stream.write_all(NOMINATION).await?;
                        winner.stream.flush().await
                    };
                    match tokio::time::timeout(Duration::from_secs(5), nominated).await {
                        Ok(Ok(())) => {
                            info!(path = %winner.kind, remote = %winner.remote, "path nominated");
                            return Ok((winner, race.failures().to_vec()));
                        }
                        _ => {
                            return Err(SessionError::PeerGone(format!(
                                "the peer went away as the {} path was chosen",
                                winner.kind
                            )));
                        }
                    }
                }
                Action::Close(id) => {
                    if let Some(loser) = established.get_mut(id).and_then(Option::take) {
                        debug!(path = %loser.kind, "closing a path that lost the race");
                    }
                }
                Action::GiveUp => {
                    return Err(SessionError::NoPath {
                        failures: race.failures().to_vec(),
                        relay_forced: false,
                    });
                }
            }
        }
        let wake = race
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + RACE_DEADLINE);
        tokio::select! {
            joined = set.join_next(), if !set.is_empty() => {
                let now = Instant::now();
                match joined {
                    Some(Ok((id, Ok(path)))) => {
                        debug!(path = %path.kind, remote = %path.remote, "path established");
                        let kind = path.kind;
                        if let Some(slot) = established.get_mut(id) {
                            *slot = Some(path);
                        }
                        race.handle_established(now, id, kind);
                    }
                    Some(Ok((id, Err(error)))) => {
                        debug!(path = ?kinds.get(id), %error, "path failed");
                        race.handle_failed(now, id, error.to_string());
                    }
                    Some(Err(error)) => debug!(%error, "path task failed"),
                    None => {}
                }
            }
            () = tokio::time::sleep_until(wake) => race.handle_timeout(Instant::now()),
            said = mailbox.next(), if mailbox_open => match said {
                Ok(Some((path, why))) => {
                    // The receiver gave up on a path we are still waiting on.
                    let now = Instant::now();
                    for (id, kind) in kinds.iter().enumerate() {
                        if kind.code() == path && established.get(id).is_some_and(Option::is_none) {
                            race.handle_failed(now, id, format!("the receiver: {why}"));
                        }
                    }
                }
                Ok(None) => {}
                Err(SessionError::Signal(error)) => {
                    // The direct paths may still work without the server.
                    debug!(%error, "lost the rendezvous server during the race");
                    mailbox_open = false;
                }
                Err(SessionError::PeerGone(why)) => {
                    // The receiver found no path and left.
                    let mut failures = race.failures().to_vec();
                    for kind in kinds {
                        if !failures.iter().any(|(k, _)| k == kind) {
                            failures.push((*kind, format!("abandoned: {why}")));
                        }
                    }
                    return Err(SessionError::NoPath { failures, relay_forced: false });
                }
                Err(error) => return Err(error),
            },
        }
    }
}

/// The receiver waits for the sender to say "ferry-go" on one of the
/// paths it established.
async fn race_controlled(
    mut set: JoinSet<(PathId, Result<Established, ConnectError>)>,
    kinds: &[PathKind],
    mut mailbox: Mailbox<'_>,
) -> Result<(Established, Vec<(PathKind, String)>), SessionError> {
    let mut failures: Vec<(PathKind, String)> = Vec::new();
    let mut mailbox_open = true;
    let mut waiting: JoinSet<Result<Established, (PathKind, String)>> = JoinSet::new();
    let mut deadline = tokio::time::Instant::now() + NOMINATION_TIMEOUT;
    loop {
        if set.is_empty() && waiting.is_empty() {
            return Err(SessionError::NoPath {
                failures,
                relay_forced: false,
            });
        }
        tokio::select! {
            joined = set.join_next(), if !set.is_empty() => match joined {
                Some(Ok((_, Ok(mut path)))) => {
                    debug!(path = %path.kind, remote = %path.remote, "path established; waiting for the nomination");
                    waiting.spawn(async move {
                        let mut word = [0u8; NOMINATION.len()];
                        match tokio::time::timeout_at(deadline, path.stream.read_exact(&mut word)).await {
                            Ok(Ok(_)) if &word == NOMINATION => Ok(path),
                            _ => Err((path.kind, "the sender chose another path".to_string())),
                        }
                    });
                }
                Some(Ok((id, Err(error)))) => {
                    let kind = kinds.get(id).copied().unwrap_or(PathKind::Tcp);
                    debug!(path = %kind, %error, "path failed");
                    if kind == PathKind::Tcp {
                        mailbox.path_failed(kind, &error.to_string()).await;
                    }
                    failures.push((kind, error.to_string()));
                }
                Some(Err(error)) => debug!(%error, "path task failed"),
                None => {}
            },
            nominated = waiting.join_next(), if !waiting.is_empty() => match nominated {
                Some(Ok(Ok(path))) => {
                    info!(path = %path.kind, remote = %path.remote, "the sender chose this path");
                    return Ok((path, failures));
                }
                Some(Ok(Err((kind, why)))) => {
                    debug!(path = %kind, why, "path not chosen");
                }
                Some(Err(error)) => debug!(%error, "nomination task failed"),
                None => {}
            },
            () = tokio::time::sleep_until(deadline) => {
                return Err(SessionError::NoPath { failures, relay_forced: false });
            }
            said = mailbox.next(), if mailbox_open => match said {
                Ok(_) => {}
                Err(SessionError::Signal(error)) => {
                    debug!(%error, "lost the rendezvous server during the race");
                    mailbox_open = false;
                }
                // The sender left: either it gave up (no path), or it
                // nominated a path and released the nameplate. Wait briefly
                // for that nomination, then stop.
                Err(SessionError::PeerGone(why)) => {
                    debug!(why, "the sender left the rendezvous");
                    mailbox_open = false;
                    deadline = deadline.min(tokio::time::Instant::now() + Duration::from_secs(3));
                }
                Err(error) => return Err(error),
            },
        }
    }
}

/// SPAKE2 and key confirmation over the mailbox.
async fn pair(
    mut signal: SignalClient,
    code: &Code,
    role: Role,
) -> Result<(SignalClient, SecureChannel), SessionError> {
    let mut pairing = Pairing::new(&code.to_string(), role, AGENT);
    let deadline = tokio::time::Instant::now() + PAIR_TIMEOUT;
    loop {
        while let Some(body) = pairing.poll_outbound() {
            signal.send(body).await?;
        }
        let event = tokio::time::timeout_at(deadline, signal.recv())
            .await
            .map_err(|_| {
                SessionError::PeerGone("pairing timed out: the peer stopped answering".into())
            })??;
        match event {
            SignalEvent::Message(body) => match pairing.handle_inbound(&body) {
                Ok(Some(channel)) => {
                    // Our own key confirmation may still be queued.
                    while let Some(body) = pairing.poll_outbound() {
                        signal.send(body).await?;
                    }
                    let (protocol, agent) = channel.peer_version();
                    info!(protocol, agent, "paired");
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
                    other => SessionError::PeerGone(format!(
                        "the peer left during pairing ({})",
                        other.map_or("no reason given", |r| r.describe())
                    )),
                });
            }
            SignalEvent::PeerJoined => {}
        }
    }
}

/// Waits for the peer's sealed `Hello`: its certificate fingerprint and
/// candidates.
async fn receive_hello(
    signal: &mut SignalClient,
    channel: &mut SecureChannel,
) -> Result<(String, Vec<Candidate>, NetworkHint), SessionError> {
    let deadline = tokio::time::Instant::now() + PAIR_TIMEOUT;
    loop {
        let event = tokio::time::timeout_at(deadline, signal.recv())
            .await
            .map_err(|_| {
                SessionError::PeerGone("the peer stopped answering after pairing".into())
            })??;
        match event {
            SignalEvent::Message(body) => match channel.open(&body)? {
                PeerToPeer::Hello {
                    cert_fingerprint,
                    candidates,
                    network,
                } => return Ok((cert_fingerprint, candidates, network)),
                PeerToPeer::Abort { reason } => {
                    return Err(SessionError::PeerGone(format!(
                        "the peer cancelled: {reason}"
                    )));
                }
                other => debug!(?other, "unexpected message while waiting for hello"),
            },
            SignalEvent::PeerLeft(reason) => {
                return Err(SessionError::PeerGone(format!(
                    "the peer left before connecting ({})",
                    reason.map_or("no reason given", |r| r.describe())
                )));
            }
            SignalEvent::PeerJoined => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_paths_allow_what_they_say() {
        let only = |kind| SessionOptions {
            force_path: Some(kind),
            no_upnp: false,
        };
        let all = SessionOptions::default();
        assert!(all.allows(PathKind::Tcp) && all.allows(PathKind::Quic));
        assert!(all.allows(PathKind::Relay));
        assert!(only(PathKind::Relay).allows(PathKind::Relay));
        assert!(!only(PathKind::Relay).allows(PathKind::Tcp));
        assert!(only(PathKind::Tcp).allows(PathKind::SimultaneousOpen));
        assert!(!only(PathKind::Tcp).allows(PathKind::Quic));
        assert!(only(PathKind::Quic).allows(PathKind::Quic));
        assert!(!only(PathKind::Quic).allows(PathKind::Tcp));
        assert!(only(PathKind::Lan).allows(PathKind::Tcp));
        assert!(!only(PathKind::Lan).allows(PathKind::SimultaneousOpen));
    }

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

    #[test]
    fn no_path_message_lists_every_path() {
        let text = no_path_message(
            &[
                (PathKind::Quic, "no answer".into()),
                (PathKind::Tcp, "refused".into()),
            ],
            false,
        );
        assert!(text.contains("direct QUIC over UDP: no answer"), "{text}");
        assert!(text.contains("direct TCP: refused"), "{text}");
        assert!(no_path_message(&[], true).contains("--no-relay"));
    }
}
