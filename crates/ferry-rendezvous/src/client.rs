//! The tokio client of the rendezvous server.
//!
//! ```text
//! SignalClient::connect("host:port")  -- TCP connect (then TLS when the
//!                                        spec says #sha256= / #tls /
//!                                        #tls-ca=), hello, welcome (10 s);
//!                                        resolves the relay the welcome names
//!   background task owns the socket:
//!     answers server pings, pings the server every heartbeat,
//!     gives up (ServerGone) after 3 silent heartbeats,
//!     hands other frames to the SignalClient over a bounded channel
//!   allocate() / claim(n)  -- request, wait for the answer (10 s)
//!   request_relay_token()  -- once paired: the relay token, when both asked
//!   send(body)             -- queue a mailbox body
//!   recv()                 -- next PeerJoined / Message / PeerLeft (cancel-safe)
//!   release(reason)        -- leave the nameplate and close
//!   release_reporting(reason, path) -- the same, reporting the path found
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::signal::{
    ClientToServer, ErrorCode, FrameError, MAX_FRAME, PROTOCOL_VERSION, PathOutcome, ReleaseReason,
    ServerToClient, decode_frame, encode_frame,
};
use ferry_relay::{Carrier, ClientTls, RelayTls, ServerSpec, TlsError, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tracing::debug;

/// Connect plus hello must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Allocate and claim answers must arrive within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames from the server waiting for [`SignalClient::recv`]; beyond this the
/// connection is given up.
pub const INCOMING_QUEUE: usize = 1024;

const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const READ_CHUNK: usize = 8 * 1024;
const AGENT: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

/// What the server told us on connecting.
#[derive(Debug, Clone)]
pub struct Welcome {
    /// Our address as the server saw it: the public TCP mapping.
    pub observed_addr: SocketAddr,
    /// The server address we are connected to.
    pub server_addr: SocketAddr,
    /// Our end of the signalling connection.
    pub local_addr: SocketAddr,
    /// UDP port of the server's STUN responder, when it runs one.
    pub stun_port: Option<u16>,
    /// A second UDP port of that responder on the same IP, if any.
    pub stun_second_port: Option<u16>,
    /// Where the relay answers (when the server issues relay tokens): the
    /// address the server advertised in its welcome, resolved, or else
    /// the server's own address ([`server_addr`](Self::server_addr)).
    /// Through a proxy, the relay's address may stay unresolved (the
    /// unspecified IP with its port): only the proxy may know the name,
    /// see [`relay_name`](Self::relay_name).
    pub relay_addr: SocketAddr,
    /// The relay's `host:port` as the server advertised it, when the
    /// relay runs apart from the server: through a proxy, the relay is
    /// reached by this name, so the proxy resolves it (`socks5h://`,
    /// `http://`) and `NO_PROXY` sees the name.
    pub relay_name: Option<String>,
    /// How long the server had been running when it welcomed us (servers
    /// before this field say nothing): a server that started moments ago
    /// has lost the nameplates it held before.
    pub uptime: Option<Duration>,
    /// Whether this connection runs inside TLS (the server spec asked for
    /// it: a pin, `#tls` or `#tls-ca=`).
    pub tls: bool,
    /// Whether the server's port offers TLS (it said so in the welcome):
    /// worth telling a client that came in plain.
    pub tls_offered: bool,
    /// How to join the relay in TLS, when this connection is TLS and the
    /// relay runs TLS: here on the server's port (same trust), or
    /// elsewhere (the trust of this connection, or the relay's pin from
    /// the welcome). `None`: join it plain.
    pub relay_tls: Option<RelayTls>,
}

/// Something the other side of the nameplate did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalEvent {
    /// The receiver claimed our nameplate.
    PeerJoined,
    /// A mailbox body from the other side.
    Message(String),
    /// The other side left; the reason code it or the server gave (show
    /// [`ReleaseReason::describe`], never text from the wire).
    PeerLeft(Option<ReleaseReason>),
}

/// Errors of [`SignalClient`]. They say what happened; what the user can
/// do about it (which option names the server) is for the program to add.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The server name did not resolve.
    #[error("could not resolve the rendezvous server {server}: {reason}")]
    Resolve {
        /// The `host:port` given.
        server: String,
        /// Why.
        reason: String,
    },
    /// No TCP connection could be made.
    #[error("could not reach the rendezvous server at {server}: {reason}")]
    Connect {
        /// The `host:port` given.
        server: String,
        /// Why, e.g. "connection refused".
        reason: String,
    },
    /// The server did not answer in time.
    #[error("the rendezvous server at {server} did not answer {what} within {secs} s")]
    Timeout {
        /// The server.
        server: String,
        /// What we waited for.
        what: &'static str,
        /// How long we waited.
        secs: u64,
    },
    /// The server closed the connection or stopped answering.
    #[error("lost the connection to the rendezvous server at {server}: {reason}")]
    ServerGone {
        /// The server.
        server: String,
        /// Why, e.g. "no answer for 15 s".
        reason: String,
    },
    /// The nameplate already has two sides.
    #[error("{message}")]
    NameplateTaken {
        /// The nameplate.
        nameplate: u32,
        /// The server's explanation.
        message: String,
    },
    /// Nobody is waiting under this nameplate.
    #[error("{message}")]
    UnknownNameplate {
        /// The nameplate.
        nameplate: u32,
        /// The server's explanation.
        message: String,
    },
    /// Any other error the server reported.
    #[error("the rendezvous server said: {message}")]
    Server {
        /// The server's error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The relay the server advertised did not resolve: this computer's
    /// DNS fails, or the server's operator named a relay that does not
    /// exist.
    #[error(
        "could not resolve the relay {relay} that the rendezvous server at {server} names: {reason}"
    )]
    RelayResolve {
        /// The server.
        server: String,
        /// The relay's `host:port`, as advertised.
        relay: String,
        /// Why.
        reason: String,
    },
    /// The server spec is malformed, or the TLS handshake with the server
    /// failed (its certificate did not verify, or it does not speak TLS).
    /// Not retried, and never retried in plain.
    #[error("{reason}")]
    Tls {
        /// The server's HOST:PORT.
        server: String,
        /// What went wrong and what to do.
        reason: String,
    },
    /// The server sent something this client does not understand.
    #[error("the rendezvous server at {server} broke the protocol: {reason}")]
    Protocol {
        /// The server.
        server: String,
        /// What was wrong.
        reason: String,
    },
    /// A body too large to fit one frame.
    #[error("message of {len} bytes does not fit in a {limit}-byte frame")]
    TooLarge {
        /// The frame size the message would need.
        len: usize,
        /// [`MAX_FRAME`].
        limit: usize,
    },
}

impl SignalError {
    /// Whether the server could not be reached or the connection to it was
    /// lost, or the server said it is shutting down (a restart, e.g. by
    /// SIGTERM): worth another try after a pause, unlike any other answer
    /// the server gave.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            SignalError::Connect { .. }
                | SignalError::Timeout { .. }
                | SignalError::ServerGone { .. }
                | SignalError::Server {
                    code: ErrorCode::ShuttingDown,
                    ..
                }
        )
    }
}

/// A connection to the rendezvous server.
#[derive(Debug)]
pub struct SignalClient {
    server: String,
    commands: mpsc::Sender<Command>,
    incoming: mpsc::Receiver<Result<ServerToClient, SignalError>>,
    /// Events that arrived while waiting for a request's answer.
    stash: VecDeque<SignalEvent>,
    relay_token: Option<[u8; 32]>,
    /// How to follow a relay a token names.
    relay_context: RelayContext,
    /// The relay the latest relay token named, if it named one.
    named_relay: Option<NamedRelay>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
enum Command {
    Frame(ClientToServer),
    Close(oneshot::Sender<()>),
}

impl SignalClient {
    /// Connects to `server` ("host:port"), says hello and waits for welcome.
    pub async fn connect(server: &str) -> Result<(SignalClient, Welcome), SignalError> {
        Self::connect_over(server, None).await
    }

    /// Like [`connect`](Self::connect), over a TCP connection the caller
    /// already opened to `server` (e.g. from a reusable local port whose
    /// public mapping then serves TCP simultaneous open).
    ///
    /// `server` is a [`ServerSpec`]: `HOST:PORT`, plain, or with
    /// `#sha256=HEX`, `#tls` or `#tls-ca=FILE` for TLS (then TLS or an
    /// error, never plain).
    pub async fn connect_over(
        server: &str,
        stream: Option<TcpStream>,
    ) -> Result<(SignalClient, Welcome), SignalError> {
        let spec = parse_spec(server)?;
        let server = spec.addr.as_str();
        let name = server.to_string();
        let timed_out = || SignalError::Timeout {
            server: name.clone(),
            what: "connect and hello",
            secs: CONNECT_TIMEOUT.as_secs(),
        };
        let (stream, input, welcome, heartbeat, relay_context) =
            timeout(CONNECT_TIMEOUT, handshake(&spec, stream))
                .await
                .map_err(|_| timed_out())??;
        let (commands, command_rx) = mpsc::channel(64);
        let (incoming_tx, incoming) = mpsc::channel(INCOMING_QUEUE);
        let task = tokio::spawn(run(
            name.clone(),
            stream,
            input,
            heartbeat,
            command_rx,
            incoming_tx,
        ));
        let client = SignalClient {
            server: name,
            commands,
            incoming,
            stash: VecDeque::new(),
            relay_token: None,
            relay_context,
            named_relay: None,
            task,
        };
        Ok((client, welcome))
    }

    /// Asks the server for a fresh nameplate, which we then hold.
    pub async fn allocate(&mut self) -> Result<u32, SignalError> {
        self.command(ClientToServer::Allocate).await?;
        self.answer("allocated", |msg| match msg {
            ServerToClient::Allocated { nameplate } => Some(*nameplate),
            _ => None,
        })
        .await
    }

    /// Allocates the nameplate of a code the user chose, which we then hold.
    pub async fn reserve(&mut self, nameplate: u32) -> Result<(), SignalError> {
        self.command(ClientToServer::Reserve { nameplate }).await?;
        self.answer("allocated", |msg| match msg {
            ServerToClient::Allocated { nameplate: n } if *n == nameplate => Some(()),
            _ => None,
        })
        .await
    }

    /// Claims the nameplate the sender allocated. When the server runs a
    /// relay, [`relay_token`](Self::relay_token) is set afterwards.
    pub async fn claim(&mut self, nameplate: u32) -> Result<(), SignalError> {
        self.command(ClientToServer::Claim { nameplate }).await?;
        let result = self
            .answer("claimed", |msg| match msg {
                ServerToClient::Claimed {
                    nameplate: n,
                    relay_token,
                } if *n == nameplate => Some(relay_token.clone()),
                _ => None,
            })
            .await;
        let result = match result {
            Ok(token) => {
                self.note_relay_token(token.as_deref());
                Ok(())
            }
            Err(error) => Err(error),
        };
        match result {
            Err(SignalError::Server { code, message }) => Err(match code {
                ErrorCode::NameplateTaken => SignalError::NameplateTaken { nameplate, message },
                ErrorCode::UnknownNameplate => SignalError::UnknownNameplate { nameplate, message },
                code => SignalError::Server { code, message },
            }),
            other => other,
        }
    }

    /// Meets the peer of an earlier transfer on a secret `channel` (see
    /// [`ClientToServer::Rejoin`]). `Ok(true)` when the peer was already
    /// there (and [`relay_token`](Self::relay_token) is fresh), `Ok(false)`
    /// when we wait for it: [`SignalEvent::PeerJoined`] follows.
    pub async fn rejoin(&mut self, channel: &str) -> Result<bool, SignalError> {
        self.relay_token = None;
        self.command(ClientToServer::Rejoin {
            channel: channel.to_string(),
        })
        .await?;
        let answer = self
            .answer("rejoined", |msg| match msg {
                ServerToClient::Allocated { .. } => Some(None),
                ServerToClient::Claimed { relay_token, .. } => Some(Some(relay_token.clone())),
                _ => None,
            })
            .await?;
        Ok(match answer {
            None => false,
            Some(token) => {
                self.note_relay_token(token.as_deref());
                true
            }
        })
    }

    /// Asks for the relay token once paired (see
    /// [`ClientToServer::RelayRequest`]) and waits, up to
    /// [`REQUEST_TIMEOUT`], until the other side has asked too. `Ok(None)`
    /// when the server issues no relay tokens, or at once when the other
    /// side leaves meanwhile (its [`SignalEvent::PeerLeft`] then comes
    /// from [`recv`](Self::recv)); afterwards
    /// [`relay_token`](Self::relay_token) says the same.
    pub async fn request_relay_token(&mut self) -> Result<Option<[u8; 32]>, SignalError> {
        enum Answer {
            Token(ServerToClient),
            Left(Option<ReleaseReason>),
        }
        self.command(ClientToServer::RelayRequest).await?;
        let answer = self
            .answer("relay-token", |msg| match msg {
                ServerToClient::RelayToken { .. } => Some(Answer::Token(msg.clone())),
                ServerToClient::PeerLeft { reason } => Some(Answer::Left(*reason)),
                _ => None,
            })
            .await?;
        self.relay_token = None;
        match answer {
            Answer::Token(token) => self.note_relay_answer(&token),
            Answer::Left(reason) => self.stash.push_back(SignalEvent::PeerLeft(reason)),
        }
        Ok(self.relay_token)
    }

    /// Sends a mailbox body to the other side.
    pub async fn send(&mut self, body: String) -> Result<(), SignalError> {
        let msg = ClientToServer::Send { body };
        let mut probe = BytesMut::new();
        if let Err(FrameError::FrameTooLarge { .. }) = encode_frame(&msg, &mut probe) {
            let len = serde_json::to_vec(&msg)
                .map(|v| v.len() + 1)
                .unwrap_or(usize::MAX);
            return Err(SignalError::TooLarge {
                len,
                limit: MAX_FRAME,
            });
        }
        self.command(msg).await
    }

    /// The relay token of our pair: set by
    /// [`request_relay_token`](Self::request_relay_token) once both sides
    /// asked; `None` before, or when the server runs no relay.
    pub fn relay_token(&self) -> Option<[u8; 32]> {
        self.relay_token
    }

    /// The next event from the other side. Cancel-safe: dropping the future
    /// loses nothing.
    pub async fn recv(&mut self) -> Result<SignalEvent, SignalError> {
        if let Some(event) = self.stash.pop_front() {
            return Ok(event);
        }
        loop {
            let Some(next) = self.incoming.recv().await else {
                return Err(self.gone("connection closed"));
            };
            match next? {
                ServerToClient::PeerJoined { relay_token } => {
                    self.note_relay_token(relay_token.as_deref());
                    return Ok(SignalEvent::PeerJoined);
                }
                ServerToClient::Message { body } => return Ok(SignalEvent::Message(body)),
                ServerToClient::PeerLeft { reason } => return Ok(SignalEvent::PeerLeft(reason)),
                answer @ ServerToClient::RelayToken { .. } => self.note_relay_answer(&answer),
                ServerToClient::Error { code, message } => {
                    return Err(SignalError::Server { code, message });
                }
                other => debug!(?other, "unexpected frame from the server ignored"),
            }
        }
    }

    /// Leaves the nameplate (reason [`ReleaseReason::BadCode`] burns it)
    /// and closes.
    pub async fn release(self, reason: Option<ReleaseReason>) -> Result<(), SignalError> {
        self.release_reporting(reason, None).await
    }

    /// Like [`release`](Self::release), telling the server which path the
    /// race found (`path`, for its metrics: see [`PathOutcome`]). A server
    /// from before path reports ignores it.
    pub async fn release_reporting(
        self,
        reason: Option<ReleaseReason>,
        path: Option<PathOutcome>,
    ) -> Result<(), SignalError> {
        let release = ClientToServer::Release { reason, path };
        self.command(release).await?;
        let (ack_tx, ack_rx) = oneshot::channel();
        if self.commands.send(Command::Close(ack_tx)).await.is_ok() {
            let _ = timeout(WRITE_TIMEOUT, ack_rx).await;
        }
        self.task.abort();
        Ok(())
    }

    async fn command(&self, msg: ClientToServer) -> Result<(), SignalError> {
        self.commands
            .send(Command::Frame(msg))
            .await
            .map_err(|_| self.gone("connection closed"))
    }

    /// Waits for the answer `pick` accepts, stashing peer events meanwhile.
    async fn answer<T>(
        &mut self,
        what: &'static str,
        pick: impl Fn(&ServerToClient) -> Option<T>,
    ) -> Result<T, SignalError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.incoming.recv())
                .await
                .map_err(|_| SignalError::Timeout {
                    server: self.server.clone(),
                    what,
                    secs: REQUEST_TIMEOUT.as_secs(),
                })?;
            let Some(next) = next else {
                return Err(self.gone("connection closed"));
            };
            let msg = next?;
            if let Some(answer) = pick(&msg) {
                return Ok(answer);
            }
            match msg {
                ServerToClient::Error { code, message } => {
                    return Err(SignalError::Server { code, message });
                }
                ServerToClient::PeerJoined { relay_token } => {
                    self.note_relay_token(relay_token.as_deref());
                    self.stash.push_back(SignalEvent::PeerJoined);
                }
                ServerToClient::Message { body } => {
                    self.stash.push_back(SignalEvent::Message(body))
                }
                ServerToClient::PeerLeft { reason } => {
                    self.stash.push_back(SignalEvent::PeerLeft(reason));
                }
                other => debug!(?other, "unexpected frame from the server ignored"),
            }
        }
    }

    /// Notes a `relay-token` answer: the token, and the relay it names.
    fn note_relay_answer(&mut self, answer: &ServerToClient) {
        let ServerToClient::RelayToken {
            relay_token,
            relay_addr,
            relay_tls,
            relay_sha256,
        } = answer
        else {
            return;
        };
        self.note_relay_token(relay_token.as_deref());
        self.named_relay = match (relay_token, relay_addr) {
            (Some(_), Some(addr)) => Some(NamedRelay {
                addr: addr.clone(),
                tls: *relay_tls,
                sha256: relay_sha256.clone(),
            }),
            _ => None,
        };
    }

    /// Points `welcome` at the relay of our pair when the latest relay
    /// token named one (its `relay_addr`: in a
    /// cluster, the relay of the pair's home, where the other side joins
    /// too); otherwise leaves it as it is. Resolving the name is bounded
    /// by the connect timeout.
    pub async fn follow_pair_relay(&self, welcome: &mut Welcome) -> Result<(), SignalError> {
        let Some(named) = self.named_relay.clone() else {
            return Ok(());
        };
        if welcome.relay_name.as_deref() == Some(named.addr.as_str()) {
            return Ok(());
        }
        let part = relay_part(
            &self.relay_context,
            Some(named.addr.clone()),
            named.tls,
            named.sha256,
        );
        let part = timeout(CONNECT_TIMEOUT, part)
            .await
            .map_err(|_| SignalError::Timeout {
                server: self.server.clone(),
                what: "resolving the pair's relay",
                secs: CONNECT_TIMEOUT.as_secs(),
            })??;
        debug!(relay = %named.addr, addr = %part.addr, "following the relay the pair's home named");
        welcome.relay_addr = part.addr;
        welcome.relay_name = part.name;
        welcome.relay_tls = part.tls;
        Ok(())
    }

    fn note_relay_token(&mut self, token: Option<&str>) {
        let Some(token) = token else { return };
        let mut bytes = [0u8; 32];
        match hex::decode_to_slice(token, &mut bytes) {
            Ok(()) => self.relay_token = Some(bytes),
            Err(error) => debug!(%error, "relay token from the server ignored"),
        }
    }

    fn gone(&self, reason: &str) -> SignalError {
        SignalError::ServerGone {
            server: self.server.clone(),
            reason: reason.to_string(),
        }
    }
}

impl Drop for SignalClient {
    fn drop(&mut self) {
        // Closing the command channel ends the task too; abort makes it prompt.
        self.task.abort();
    }
}

/// Resolves, connects, says hello, reads welcome.
async fn handshake(
    spec: &ServerSpec,
    stream: Option<TcpStream>,
) -> Result<(Carrier, BytesMut, Welcome, Duration, RelayContext), SignalError> {
    let server = spec.addr.as_str();
    // A stream handed in came through a proxy.
    let proxied = stream.is_some();
    let tls_failed = |error: TlsError| SignalError::Tls {
        server: server.to_string(),
        reason: error.to_string(),
    };
    let client_tls = spec.client_tls().map_err(tls_failed)?;
    let addrs: Vec<SocketAddr> = match stream {
        Some(_) => Vec::new(),
        None => tokio::net::lookup_host(server)
            .await
            .map_err(|e| SignalError::Resolve {
                server: server.to_string(),
                reason: e.to_string(),
            })?
            .collect(),
    };
    let mut last_error = String::from("no addresses found");
    let mut connected = stream;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    let Some(tcp) = connected else {
        return Err(SignalError::Connect {
            server: server.to_string(),
            reason: last_error,
        });
    };
    let _ = tcp.set_nodelay(true);
    let mut stream = match &client_tls {
        Some(tls) => tls.connect(tcp, server).await.map_err(tls_failed)?,
        None => Carrier::Plain(tcp),
    };
    let gone = |reason: String| SignalError::ServerGone {
        server: server.to_string(),
        reason,
    };
    let protocol = |reason: String| SignalError::Protocol {
        server: server.to_string(),
        reason,
    };
    let mut output = BytesMut::new();
    let hello = ClientToServer::Hello {
        protocol: PROTOCOL_VERSION,
        agent: AGENT.to_string(),
    };
    encode_frame(&hello, &mut output).map_err(|e| protocol(e.to_string()))?;
    stream
        .write_all(&output)
        .await
        .map_err(|e| gone(e.to_string()))?;
    let mut input = BytesMut::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let first = loop {
        match decode_frame::<ServerToClient>(&mut input) {
            Ok(Some(msg)) => break msg,
            Ok(None) => {}
            Err(e) => return Err(protocol(e.to_string())),
        }
        let limit = READ_CHUNK.min(MAX_FRAME - input.len());
        match stream.read(&mut chunk[..limit]).await {
            Ok(0) => return Err(gone("closed before welcome".into())),
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(gone(e.to_string())),
        }
    };
    let ServerToClient::Welcome {
        observed_addr: observed,
        heartbeat_secs,
        stun_port,
        stun_second_port,
        relay_addr: relay,
        uptime_secs: uptime,
        tls: tls_offered,
        relay_tls,
        relay_sha256,
        ..
    } = first
    else {
        return Err(match first {
            ServerToClient::Error { code, message } => SignalError::Server { code, message },
            other => protocol(format!("expected welcome, got {other:?}")),
        });
    };
    // A server listening on [::] (both families on one socket) sees an
    // IPv4 client as ::ffff:a.b.c.d: that is the IPv4 address.
    let observed_addr = observed
        .parse()
        .map(|a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .map_err(|_| protocol(format!("bad observed address {observed:?}")))?;
    let server_addr = stream.tcp().peer_addr().map_err(|e| gone(e.to_string()))?;
    let context = RelayContext {
        server: server.to_string(),
        client_tls,
        proxied,
        server_addr,
    };
    let part = relay_part(&context, relay, relay_tls, relay_sha256).await?;
    let welcome = Welcome {
        observed_addr,
        server_addr,
        local_addr: stream.tcp().local_addr().map_err(|e| gone(e.to_string()))?,
        stun_port,
        stun_second_port,
        relay_addr: part.addr,
        relay_name: part.name,
        uptime: uptime.map(Duration::from_secs),
        tls: stream.is_tls(),
        tls_offered: tls_offered == Some(true),
        relay_tls: part.tls,
    };
    let heartbeat = Duration::from_secs(u64::from(heartbeat_secs.clamp(1, 300)));
    Ok((stream, input, welcome, heartbeat, context))
}

/// What a client needs to follow a relay the server names: in the
/// welcome, or with a relay token (a cluster's pair relay).
#[derive(Debug, Clone)]
struct RelayContext {
    /// The server as the user gave it (`host:port`), for errors.
    server: String,
    /// How we reached the server in TLS, if we did.
    client_tls: Option<ClientTls>,
    /// Whether the connection came through a proxy.
    proxied: bool,
    /// The server's address as we connected to it.
    server_addr: SocketAddr,
}

/// A relay a relay token named, not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NamedRelay {
    addr: String,
    tls: Option<bool>,
    sha256: Option<String>,
}

/// Where the relay answers, by which name, and how to join it in TLS.
struct RelayPart {
    addr: SocketAddr,
    name: Option<String>,
    tls: Option<RelayTls>,
}

/// The relay the server named (`relay`: `None` for its own, on its
/// address), resolved: see [`Welcome::relay_addr`], [`Welcome::relay_name`]
/// and [`Welcome::relay_tls`].
async fn relay_part(
    context: &RelayContext,
    relay: Option<String>,
    relay_tls: Option<bool>,
    relay_sha256: Option<String>,
) -> Result<RelayPart, SignalError> {
    let server = context.server.as_str();
    let protocol = |reason: String| SignalError::Protocol {
        server: server.to_string(),
        reason,
    };
    let tls = match (&context.client_tls, &relay) {
        // A plain connection joins the relay plain (a TLS port takes both).
        (None, _) => None,
        (Some(tls), None) => Some(RelayTls {
            addr: server.to_string(),
            tls: tls.clone(),
        }),
        (Some(_), Some(_)) if relay_tls != Some(true) => None,
        (Some(tls), Some(relay)) => Some(RelayTls {
            addr: relay.clone(),
            tls: match relay_sha256 {
                // Trustworthy: it came over the verified connection.
                Some(pin) => Trust::pin(&pin)
                    .and_then(|trust| ClientTls::new(&trust))
                    .map_err(|e| protocol(format!("the relay's fingerprint: {e}")))?,
                None => tls.clone(),
            },
        }),
    };
    let server_addr = context.server_addr;
    let addr = match &relay {
        // Through a proxy the name may resolve only there: bounded, and a
        // failure leaves the address unspecified (the route goes by name).
        Some(relay) if context.proxied => {
            let lookup = timeout(
                PROXIED_RELAY_LOOKUP,
                resolve_relay(server, relay, server_addr),
            );
            match lookup.await {
                Ok(Ok(addr)) => addr,
                _ => SocketAddr::new(
                    std::net::Ipv4Addr::UNSPECIFIED.into(),
                    relay_port(relay).ok_or_else(|| {
                        protocol(format!("the relay address {relay:?} has no port"))
                    })?,
                ),
            }
        }
        Some(relay) => resolve_relay(server, relay, server_addr).await?,
        None => server_addr,
    };
    Ok(RelayPart {
        addr,
        name: relay,
        tls,
    })
}

/// Parses the server spec, or says what is wrong with it.
fn parse_spec(server: &str) -> Result<ServerSpec, SignalError> {
    ServerSpec::parse(server).map_err(|error| SignalError::Tls {
        server: server.to_string(),
        reason: error.to_string(),
    })
}

/// How long a client behind a proxy tries to resolve the relay's name
/// itself (a network with only the proxy's DNS may not answer at all).
const PROXIED_RELAY_LOOKUP: Duration = Duration::from_secs(2);

/// The port of a `host:port` (`[v6]:port` too).
fn relay_port(relay: &str) -> Option<u16> {
    relay.rsplit_once(':')?.1.parse().ok()
}

/// Resolves the relay's `host:port`, preferring the address family of the
/// server we reached (the network that worked for it likely works for
/// the relay too).
async fn resolve_relay(
    server: &str,
    relay: &str,
    server_addr: SocketAddr,
) -> Result<SocketAddr, SignalError> {
    let failed = |reason: String| SignalError::RelayResolve {
        server: server.to_string(),
        relay: relay.to_string(),
        reason,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(relay)
        .await
        .map_err(|e| failed(e.to_string()))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4() == server_addr.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| failed("no addresses found".into()))
}

/// The background task owning the socket.
async fn run(
    server: String,
    mut stream: Carrier,
    mut input: BytesMut,
    heartbeat: Duration,
    mut commands: mpsc::Receiver<Command>,
    incoming: mpsc::Sender<Result<ServerToClient, SignalError>>,
) {
    let fail = |reason: String| {
        let _ = incoming.try_send(Err(SignalError::ServerGone {
            server: server.clone(),
            reason,
        }));
    };
    let mut ticker = interval_at(Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut next_ping: u64 = 1;
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut output = BytesMut::new();
    loop {
        // Deliver complete frames; answer pings ourselves.
        loop {
            match decode_frame::<ServerToClient>(&mut input) {
                Ok(Some(ServerToClient::Ping { id })) => {
                    let _ = encode_frame(&ClientToServer::Pong { id }, &mut output);
                }
                Ok(Some(ServerToClient::Pong { .. })) => {}
                Ok(Some(msg)) => {
                    if incoming.try_send(Ok(msg)).is_err() {
                        fail(format!("more than {INCOMING_QUEUE} unread messages"));
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = incoming.try_send(Err(SignalError::Protocol {
                        server: server.clone(),
                        reason: e.to_string(),
                    }));
                    return;
                }
            }
        }
        if !output.is_empty() {
            match timeout(WRITE_TIMEOUT, stream.write_all(&output)).await {
                Ok(Ok(())) => output.clear(),
                Ok(Err(e)) => return fail(e.to_string()),
                Err(_) => return fail("write timed out".into()),
            }
        }
        let limit = READ_CHUNK.min(MAX_FRAME - input.len());
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Frame(msg)) => {
                    if let Err(e) = encode_frame(&msg, &mut output) {
                        debug!(%e, "frame not sent");
                    }
                }
                Some(Command::Close(ack)) => {
                    let _ = timeout(WRITE_TIMEOUT, stream.shutdown()).await;
                    let _ = ack.send(());
                    return;
                }
                None => return,
            },
            read = stream.read(&mut chunk[..limit]) => match read {
                Ok(0) => return fail("the server closed the connection".into()),
                Ok(n) => {
                    last_heard = Instant::now();
                    input.extend_from_slice(&chunk[..n]);
                }
                Err(e) => return fail(e.to_string()),
            },
            _ = ticker.tick() => {
                let silent = last_heard.elapsed();
                if silent >= heartbeat * 3 {
                    return fail(format!("no answer for {} s", silent.as_secs()));
                }
                let _ = encode_frame(&ClientToServer::Ping { id: next_ping }, &mut output);
                next_ping += 1;
            }
        }
    }
}
