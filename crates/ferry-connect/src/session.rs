//! One side's journey from the rendezvous server to a secure stream with
//! the peer. This is the glue between signalling (`ferry-rendezvous`),
//! pairing (`ferry-proto`) and the direct paths of this crate.
//!
//! ```text
//! sender                          server                         receiver
//!   | hello / allocate -------------> |                               |
//!   | <------------- allocated N      |                               |
//!   |   (shows N-word-word)           | <------------ hello / claim N |
//!   | <------------- peer-joined      | claimed --------------------> |
//!   | pake ---------------------------------------------------> pake |  SPAKE2, password = the code
//!   | version (sealed) <------------------------------> version (sealed)  key confirmation
//!   | hello{cert fp, candidates} (sealed) <---> hello{cert fp} (sealed)
//!   | release                         |                       release |
//!   | <================ TLS 1.3, certificates pinned ==================|  direct TCP
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_proto::code::{Code, CodeError};
use ferry_proto::pairing::{Pairing, PairingError, Role, SecureChannel};
use ferry_proto::peer::{Candidate, PeerToPeer};
use ferry_rendezvous::{SignalClient, SignalError, SignalEvent, Welcome};
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::{ConnectError, DirectListener, Identity};

/// ferry's agent string, sent to the server and the peer.
pub const AGENT: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

/// How long pairing and the candidate exchange may take once both sides
/// are present.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the direct connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A secure stream to the peer and how it was made.
pub struct PeerLink {
    /// The TLS stream (certificates pinned both ways).
    pub stream: tokio_rustls::TlsStream<TcpStream>,
    /// Human description of the path, e.g. "direct TCP".
    pub path: String,
    /// Our address on the path.
    pub local: SocketAddr,
    /// The peer's address on the path.
    pub remote: SocketAddr,
    /// From "both peers present" to the secure stream.
    pub connect_time: Duration,
}

/// What can go wrong between "connect to the server" and "secure stream".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Talking to the rendezvous server failed.
    #[error(transparent)]
    Signal(#[from] SignalError),
    /// The code the user chose is not a valid code.
    #[error("{text:?} is not a valid code ({source}); a code looks like 7-orbit-lantern")]
    BadCode {
        /// What the user typed.
        text: String,
        /// Why it does not parse.
        #[source]
        source: CodeError,
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
    /// No direct connection could be made.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A local socket problem.
    #[error("local network error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<PairingError> for SessionError {
    fn from(e: PairingError) -> Self {
        match e {
            PairingError::CodeMismatch => SessionError::CodeMismatch,
            other => SessionError::Pairing(other),
        }
    }
}

/// The sender's side, in two steps so the caller can show the code while
/// waiting: [`Sender::start`] then [`Sender::connect`].
pub struct Sender {
    signal: SignalClient,
    code: Code,
    welcome: Welcome,
}

impl Sender {
    /// Connects to the server and allocates a nameplate: a fresh one, or the
    /// one of `chosen` (a code the user picked).
    pub async fn start(server: &str, chosen: Option<&str>) -> Result<Sender, SessionError> {
        let (mut signal, welcome) = SignalClient::connect(server).await?;
        debug!(observed = %welcome.observed_addr, "connected to the rendezvous server");
        let code = match chosen {
            Some(text) => {
                let code: Code = text.parse().map_err(|source| SessionError::BadCode {
                    text: text.to_string(),
                    source,
                })?;
                signal.reserve(code.nameplate).await?;
                code
            }
            None => {
                let nameplate = signal.allocate().await?;
                Code::generate(nameplate, &mut rand::thread_rng())
            }
        };
        Ok(Sender {
            signal,
            code,
            welcome,
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
    /// pairs, and accepts its direct connection. `on_joined` is called
    /// when the receiver has claimed the nameplate.
    pub async fn connect(self, on_joined: impl FnOnce()) -> Result<PeerLink, SessionError> {
        let Sender {
            mut signal, code, ..
        } = self;
        // Wait for the receiver to claim the nameplate.
        loop {
            match signal.recv().await? {
                SignalEvent::PeerJoined => break,
                SignalEvent::PeerLeft(reason) => {
                    return Err(SessionError::PeerGone(format!(
                        "the receiver left before pairing ({})",
                        reason.unwrap_or_else(|| "no reason given".into())
                    )));
                }
                SignalEvent::Message(_) => debug!("message before the peer joined; ignored"),
            }
        }
        on_joined();
        let started = Instant::now();
        let (mut signal, mut channel) = pair(signal, &code, Role::Sender).await?;
        let identity = Identity::generate()?;
        let listener = DirectListener::bind().await?;
        let candidates = listener.candidates();
        debug!(?candidates, "our TCP candidates");
        let hello = PeerToPeer::Hello {
            cert_fingerprint: identity.fingerprint(),
            candidates,
        };
        signal.send(channel.seal(&hello)).await?;
        let (peer_fingerprint, _) = receive_hello(&mut signal, &mut channel).await?;
        let acceptor = crate::tls_acceptor(&identity, &peer_fingerprint)?;
        let (stream, remote) = listener.accept(&acceptor, CONNECT_TIMEOUT).await?;
        let local = stream.get_ref().0.local_addr()?;
        // The nameplate is no longer needed: free it for others.
        let _ = signal.release(None).await;
        Ok(PeerLink {
            stream,
            path: "direct TCP".into(),
            local,
            remote,
            connect_time: started.elapsed(),
        })
    }
}

/// The receiver's side: claims the nameplate, pairs, connects to the sender.
pub async fn receive(server: &str, code: &Code) -> Result<PeerLink, SessionError> {
    let (mut signal, welcome) = SignalClient::connect(server).await?;
    debug!(observed = %welcome.observed_addr, "connected to the rendezvous server");
    signal.claim(code.nameplate).await?;
    let started = Instant::now();
    let (mut signal, mut channel) = pair(signal, code, Role::Receiver).await?;
    let identity = Identity::generate()?;
    let hello = PeerToPeer::Hello {
        cert_fingerprint: identity.fingerprint(),
        candidates: Vec::new(),
    };
    signal.send(channel.seal(&hello)).await?;
    let (peer_fingerprint, candidates) = receive_hello(&mut signal, &mut channel).await?;
    let connector = crate::tls_connector(&identity, &peer_fingerprint)?;
    let (stream, remote) = crate::connect_first(&candidates, &connector, CONNECT_TIMEOUT).await?;
    let local = stream.get_ref().0.local_addr()?;
    let _ = signal.release(None).await;
    Ok(PeerLink {
        stream,
        path: "direct TCP".into(),
        local,
        remote,
        connect_time: started.elapsed(),
    })
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
                return Err(match reason.as_deref() {
                    Some(ferry_rendezvous::BAD_CODE) => SessionError::CodeMismatch,
                    other => SessionError::PeerGone(format!(
                        "the peer left during pairing ({})",
                        other.unwrap_or("no reason given")
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
) -> Result<(String, Vec<Candidate>), SessionError> {
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
                } => return Ok((cert_fingerprint, candidates)),
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
                    reason.unwrap_or_else(|| "no reason given".into())
                )));
            }
            SignalEvent::PeerJoined => {}
        }
    }
}
