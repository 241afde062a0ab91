//! Signalling between a client and the rendezvous server.
//!
//! One TCP connection per client carries newline-delimited JSON frames, each
//! at most [`MAX_FRAME`] bytes including the newline.
//!
//! ```text
//! sender                      server                      receiver
//!   | hello ------------------> |                             |
//!   | <----------------- welcome |                             |
//!   | allocate ---------------> |                             |
//!   | <------- allocated {7}     |                             |
//!   |                            | <------------------- hello  |
//!   |                            | welcome ------------------> |
//!   |                            | <--------------- claim {7}  |
//!   | <------------ peer-joined  | claimed {7} --------------> |
//!   | send {body} ------------> | message {body} -----------> |
//!   | <----------- message {..}  | <------------- send {body}  |
//!   | release ----------------> | peer-left ----------------> |
//! ```
//!
//! `release` may carry `path`, the [`PathOutcome`] the client's race
//! found, for the server's metrics; the server counts one report per
//! pairing and passes none on. Older servers ignore the field (no frame
//! here denies unknown fields), so it needs no new protocol version.
//!
//! Either side may send `ping {id}` at any time; the other answers
//! `pong {id}`. The server drops clients silent for three heartbeats.
//!
//! The first frame of a connection says what the connection is for: `hello`
//! starts signalling, `relay {protocol, token}` asks the relay on the same
//! listener to join this connection with the other one presenting `token`:
//!
//! ```text
//! peer A                       relay                       peer B
//!   | relay {token} ----------> |                             |
//!   | <------------ relay-waiting |                             |
//!   |                            | <----------- relay {token}  |
//!   |                            | relay-waiting ------------> |
//!   | <------------- relay-paired | relay-paired -------------> |
//!   | <======== raw bytes (end-to-end TLS) both ways ========> |
//! ```
//!
//! An unknown, expired or reused token gets `error {relay-refused}` and a
//! close. The token comes from `relay-token` (hex, 32 bytes), which the
//! server sends both paired sides once both have sent `relay-request`.
//! The relay answers on the rendezvous server's own address unless
//! `welcome` names another one (`relay_addr`, `host:port`): then it runs
//! on that host, with the same frames, and checks the tokens' signature
//! itself.

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The signalling protocol version carried in `hello` and `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame, in bytes, newline included.
pub const MAX_FRAME: usize = 64 * 1024;

/// The relay protocol version carried in [`ClientToServer::Relay`].
pub const RELAY_PROTOCOL_VERSION: u32 = 1;

/// The largest relay first line (`relay {..}`), in bytes, newline included.
pub const MAX_RELAY_FRAME: usize = 1024;

/// A frame sent by a client to the rendezvous server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientToServer {
    /// Must be the first frame of a signalling connection.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// Free-form client description, e.g. `ferry/0.1.0`.
        agent: String,
    },
    /// Allocate a fresh nameplate and claim it.
    Allocate,
    /// Allocate this particular nameplate (for a code the user chose) and
    /// claim it; `nameplate-taken` when it is in use.
    Reserve {
        /// The nameplate number from the chosen code.
        nameplate: u32,
    },
    /// Claim the nameplate another client allocated.
    Claim {
        /// The nameplate number from the code phrase.
        nameplate: u32,
    },
    /// Meet the peer of an earlier transfer again, to reconnect after its
    /// path broke: both sides send the same `channel`, a secret both
    /// derived from their pairing key. The first to arrive is answered
    /// `allocated` and waits; the second is answered `claimed` and the
    /// first hears `peer-joined` (a fresh relay token then follows
    /// `relay-request`, as after a claim). The
    /// mailbox then works as for a nameplate. Channel names are 32 to 64
    /// lowercase hex digits; `claim` cannot reach them.
    Rejoin {
        /// The secret meeting point.
        channel: String,
    },
    /// Forward `body` to the other side of the nameplate. Opaque to the server.
    Send {
        /// The mailbox body.
        body: String,
    },
    /// Leave the nameplate. Reason `bad-code` burns it at once.
    Release {
        /// Why the client leaves, passed on to the other side. A code
        /// outside [`ReleaseReason`] reads as [`ReleaseReason::Unknown`],
        /// which the server does not pass on.
        #[serde(default)]
        reason: Option<ReleaseReason>,
        /// Which path the race found, for the server's metrics (see
        /// [`PathOutcome`]); never passed on. Absent from older clients
        /// (and from releases that report nothing), and ignored by older
        /// servers, whose `release` has no such field. Any value outside
        /// [`PathOutcome`], a string or not, reads as
        /// [`PathOutcome::Unknown`].
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "lenient_path"
        )]
        path: Option<PathOutcome>,
    },
    /// Ask for the relay token of this nameplate, once the peers have
    /// paired (SPAKE2 key confirmation succeeded). The server answers
    /// both sides with `relay-token` when both are present and both have
    /// asked since the second one joined; a claimer that never learnt the
    /// code never pairs, so its peer never asks and it gets no token.
    RelayRequest,
    /// Liveness probe; the server answers with `pong`.
    Ping {
        /// Echoed in the answer.
        id: u64,
    },
    /// Answer to a server `ping`.
    Pong {
        /// The id of the ping being answered.
        id: u64,
    },
    /// The first (and only) frame of a relay connection: join this
    /// connection with the other one presenting the same token.
    Relay {
        /// The client's [`RELAY_PROTOCOL_VERSION`].
        protocol: u32,
        /// The relay token from `relay-token`, 64 hex digits.
        token: String,
    },
}

/// A frame sent by the rendezvous server to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerToClient {
    /// Answer to `hello`.
    Welcome {
        /// The server's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The client's address as the server saw it (`ip:port`): the
        /// client's public TCP mapping.
        observed_addr: String,
        /// How often the server pings, in seconds; clients should ping at
        /// the same rate and give up after three silent intervals.
        heartbeat_secs: u32,
        /// UDP port of the server's STUN responder on the same host, if it runs one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stun_port: Option<u16>,
        /// A second UDP port of the STUN responder on the same IP: answers
        /// from both ports tell whether a client's NAT maps each
        /// destination apart (symmetric), even without RFC 5780.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stun_second_port: Option<u16>,
        /// Where the relay answers, as `host:port` (a DNS name or an IP
        /// address), when it runs apart from this server. Absent: the
        /// relay, if any, answers on this server's own address and port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_addr: Option<String>,
        /// How long the server has been running, in seconds. A server
        /// that started moments ago has lost the nameplates it held
        /// before: a receiver told "no transfer is waiting" then gives a
        /// sender that is reconnecting a moment to reserve its nameplate
        /// again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uptime_secs: Option<u64>,
        /// `Some(true)` when this port also speaks TLS (`ferry serve
        /// --tls-cert`): a client that came in plain may use it. Absent
        /// from servers without TLS and from older servers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<bool>,
        /// `Some(true)` when the relay at `relay_addr` runs TLS on its
        /// port: a client that reached this server in TLS then joins the
        /// relay in TLS too, checked as it checked this server, or
        /// against `relay_sha256`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_tls: Option<bool>,
        /// The SHA-256 (hex) of the TLS certificate of the relay at
        /// `relay_addr`, for a self-signed relay: trustworthy only
        /// because it arrived over a verified TLS connection, so clients
        /// use it only then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_sha256: Option<String>,
    },
    /// Answer to `allocate`: the client now holds this nameplate.
    Allocated {
        /// The allocated nameplate.
        nameplate: u32,
    },
    /// Answer to `claim`: the client is the second side of this nameplate.
    Claimed {
        /// The claimed nameplate.
        nameplate: u32,
        /// The relay token of this nameplate (64 hex digits), when the
        /// server runs a relay.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_token: Option<String>,
    },
    /// Sent to the allocator when the second side claims the nameplate.
    PeerJoined {
        /// The relay token of this nameplate (64 hex digits), when the
        /// server runs a relay; the same one the claimer got.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_token: Option<String>,
    },
    /// A body the other side sent.
    Message {
        /// The mailbox body, as the other side sent it.
        body: String,
    },
    /// The other side released the nameplate or vanished.
    PeerLeft {
        /// The reason the other side gave, or the server's: a code from a
        /// fixed set, never free text, so a stranger cannot write to the
        /// user's terminal through it.
        #[serde(default)]
        reason: Option<ReleaseReason>,
    },
    /// Answer to `relay-request`, sent to both sides once both asked.
    RelayToken {
        /// The relay token of this pair (64 hex digits); `None` when the
        /// server issues no relay tokens.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_token: Option<String>,
        /// The relay of this pair, `host:port`, when it is not the one the
        /// welcome named: in a cluster the pair's home (the sender's
        /// instance) picks its relay and the other side follows it, so
        /// both meet at the same relay. Clients before this field join
        /// the relay of their welcome.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_addr: Option<String>,
        /// `Some(true)` when the relay at `relay_addr` runs TLS (as in
        /// the welcome).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_tls: Option<bool>,
        /// The SHA-256 (hex) of the TLS certificate of the relay at
        /// `relay_addr`, for a self-signed one (as in the welcome).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_sha256: Option<String>,
    },
    /// A request failed; `message` says what to do.
    Error {
        /// Machine-readable error kind.
        code: ErrorCode,
        /// Human-readable text for the user.
        message: String,
    },
    /// Liveness probe; the client answers with `pong`.
    Ping {
        /// Echoed in the answer.
        id: u64,
    },
    /// Answer to a client `ping`.
    Pong {
        /// The id of the ping being answered.
        id: u64,
    },
    /// The relay accepted the token; the other side has not arrived yet.
    RelayWaiting,
    /// Both sides are here: from the next byte on the connection is a raw
    /// pipe to the other side. The pair's limits come along, so that the
    /// peers can tell a limit that ended the pipe from a broken path (the
    /// pipe carries TLS from here on: the relay cannot say it later).
    RelayPaired {
        /// Bytes the pair may move, both directions together; then the
        /// relay ends it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_bytes: Option<u64>,
        /// Seconds the pair may last; then the relay ends it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_secs: Option<u64>,
    },
}

/// Machine-readable kinds of [`ServerToClient::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The nameplate already has two sides.
    NameplateTaken,
    /// Nobody allocated this nameplate (or it expired or was burnt).
    UnknownNameplate,
    /// The client speaks another protocol version.
    ProtocolVersion,
    /// A frame was larger than [`MAX_FRAME`].
    FrameTooLarge,
    /// A frame was not valid JSON of the expected shape, or came out of order.
    BadFrame,
    /// `send` or `release` without holding a nameplate.
    NotClaimed,
    /// `allocate` or `claim` while already holding a nameplate.
    AlreadyClaimed,
    /// The server has no room for more nameplates or connections.
    ServerFull,
    /// Too many messages are waiting for a peer that has not joined yet.
    QueueFull,
    /// The nameplate lived longer than the server allows.
    Expired,
    /// The server is shutting down.
    ShuttingDown,
    /// The relay refused the token: unknown, expired or already used twice.
    RelayRefused,
    /// The other side did not come to the relay in time.
    RelayTimeout,
    /// Too many failed claims, bad codes or connections from this
    /// connection or address: wait before trying again.
    RateLimited,
    /// The client held no nameplate for longer than the server allows.
    Idle,
    /// An error code this version does not know.
    #[serde(other)]
    Unknown,
}

/// Which path carried a transfer, as a client reports it in `release`
/// once it knows: a fixed set of codes, carried as kebab-case strings.
/// The server counts one report per pairing (the first, from either
/// side, of a nameplate both sides paired on) and shows the counts in its
/// metrics; a peer that lies can only skew the count of its own pairing.
/// Reports on rejoin channels are not counted: the pairing was counted
/// when its first path was found.
///
/// ```text
/// the race won on ...          release {path}      (after the race, at once)
///   LAN address                lan
///   public / mapped TCP        direct-tcp
///   TCP simultaneous open      simultaneous-open
///   UDP punch, QUIC            quic
///   relay, no direct attempt   relay
///    still running
///   relay, direct attempts     relay | moved-to-direct   (the signalling
///    still running                                        connection stays
///                                                         open until the
///                                                         transfer moved, or
///                                                         ended, or about
///                                                         35 s passed)
///   no path                    no-path
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PathOutcome {
    /// Direct TCP to a private (LAN) address.
    Lan,
    /// Direct TCP to a public or port-mapped address.
    DirectTcp,
    /// TCP simultaneous open through both NATs.
    SimultaneousOpen,
    /// QUIC over a punched (or sprayed) UDP path.
    Quic,
    /// The relay carried the whole transfer.
    Relay,
    /// The transfer started on the relay and moved to a direct path that
    /// came up later.
    MovedToDirect,
    /// The race found no path.
    NoPath,
    /// A code this version does not know (from a newer client), or a
    /// value that is not a code at all.
    #[serde(other)]
    Unknown,
}

impl PathOutcome {
    /// Every outcome, [`PathOutcome::Unknown`] last.
    pub const ALL: &'static [PathOutcome] = &[
        PathOutcome::Lan,
        PathOutcome::DirectTcp,
        PathOutcome::SimultaneousOpen,
        PathOutcome::Quic,
        PathOutcome::Relay,
        PathOutcome::MovedToDirect,
        PathOutcome::NoPath,
        PathOutcome::Unknown,
    ];

    /// The wire code, e.g. `"moved-to-direct"`.
    pub fn code(self) -> &'static str {
        match self {
            PathOutcome::Lan => "lan",
            PathOutcome::DirectTcp => "direct-tcp",
            PathOutcome::SimultaneousOpen => "simultaneous-open",
            PathOutcome::Quic => "quic",
            PathOutcome::Relay => "relay",
            PathOutcome::MovedToDirect => "moved-to-direct",
            PathOutcome::NoPath => "no-path",
            PathOutcome::Unknown => "unknown",
        }
    }
}

/// Reads `release`'s `path` without ever failing: a report is only for
/// the metrics, and a malformed one must not cost the release itself.
fn lenient_path<'de, D>(deserializer: D) -> Result<Option<PathOutcome>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        Known(PathOutcome),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Option::<Lenient>::deserialize(deserializer)? {
        None => None,
        Some(Lenient::Known(outcome)) => Some(outcome),
        Some(Lenient::Other(_)) => Some(PathOutcome::Unknown),
    })
}

/// Why a side left a nameplate: a fixed set of codes, carried in
/// `release` and `peer-left` as kebab-case strings. Clients show their own
/// text for each ([`ReleaseReason::describe`]); the server never passes on
/// text a client wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ReleaseReason {
    /// Key confirmation failed: the code was wrong. Burns the nameplate.
    BadCode,
    /// The user declined the offer.
    Declined,
    /// The transfer finished.
    Done,
    /// The user cancelled.
    Cancelled,
    /// The side failed.
    Error,
    /// Set by the server: the side stopped answering heartbeats.
    PeerVanished,
    /// Set by the server: the side's connection closed.
    PeerDisconnected,
    /// Set by the server: the nameplate outlived its time.
    Expired,
    /// A code this version does not know (or free text from an old
    /// client). The server drops it rather than pass it on.
    #[serde(other)]
    Unknown,
}

impl ReleaseReason {
    /// The wire code, e.g. `"bad-code"`.
    pub fn code(self) -> &'static str {
        match self {
            ReleaseReason::BadCode => "bad-code",
            ReleaseReason::Declined => "declined",
            ReleaseReason::Done => "done",
            ReleaseReason::Cancelled => "cancelled",
            ReleaseReason::Error => "error",
            ReleaseReason::PeerVanished => "peer-vanished",
            ReleaseReason::PeerDisconnected => "peer-disconnected",
            ReleaseReason::Expired => "expired",
            ReleaseReason::Unknown => "unknown",
        }
    }

    /// What a client tells its user.
    pub fn describe(self) -> &'static str {
        match self {
            ReleaseReason::BadCode => "the code did not match",
            ReleaseReason::Declined => "the peer declined",
            ReleaseReason::Done => "the peer finished",
            ReleaseReason::Cancelled => "the peer cancelled",
            ReleaseReason::Error => "the peer failed",
            ReleaseReason::PeerVanished => "peer vanished",
            ReleaseReason::PeerDisconnected => "peer disconnected",
            ReleaseReason::Expired => "nameplate expired",
            ReleaseReason::Unknown => "no reason given",
        }
    }
}

impl std::fmt::Display for ReleaseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Errors from [`encode_frame`] and [`decode_frame`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame would be, or the buffer already is, [`MAX_FRAME`] bytes
    /// without a newline.
    #[error("frame larger than {limit} bytes")]
    FrameTooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A complete line that is not a valid message. The line was consumed.
    #[error("malformed frame: {reason}")]
    BadFrame {
        /// What was wrong, from the JSON parser.
        reason: String,
    },
    /// The message could not be serialized (should not happen for ferry's types).
    #[error("could not encode frame: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Appends `msg` as one JSON line to `dst`.
///
/// Fails with [`FrameError::FrameTooLarge`], leaving `dst` untouched, when
/// the line would exceed [`MAX_FRAME`] bytes.
pub fn encode_frame<T: Serialize>(msg: &T, dst: &mut BytesMut) -> Result<(), FrameError> {
    let json = serde_json::to_vec(msg).map_err(FrameError::Encode)?;
    // serde_json escapes control characters, so `json` holds no newline.
    if json.len() + 1 > MAX_FRAME {
        return Err(FrameError::FrameTooLarge { limit: MAX_FRAME });
    }
    dst.reserve(json.len() + 1);
    dst.put_slice(&json);
    dst.put_u8(b'\n');
    Ok(())
}

/// Takes one JSON line off the front of `src`.
///
/// Returns `Ok(None)` when no complete line is buffered yet. Fails with
/// [`FrameError::FrameTooLarge`] as soon as `src` holds [`MAX_FRAME`] bytes
/// without a newline, so a caller that reads only after this returns
/// `Ok(None)` never buffers more than `MAX_FRAME` bytes. A line that does
/// not parse is consumed and reported as [`FrameError::BadFrame`]. A `\r`
/// before the newline is tolerated.
pub fn decode_frame<T: DeserializeOwned>(src: &mut BytesMut) -> Result<Option<T>, FrameError> {
    let window = src.len().min(MAX_FRAME);
    let Some(newline) = src[..window].iter().position(|&b| b == b'\n') else {
        if src.len() >= MAX_FRAME {
            return Err(FrameError::FrameTooLarge { limit: MAX_FRAME });
        }
        return Ok(None);
    };
    let line = src.split_to(newline + 1);
    let mut body = &line[..newline];
    if let Some(stripped) = body.strip_suffix(b"\r") {
        body = stripped;
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| FrameError::BadFrame {
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded<T: Serialize>(msg: &T) -> String {
        let mut buf = BytesMut::new();
        encode_frame(msg, &mut buf).unwrap();
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn snapshot_client_frames() {
        assert_eq!(
            encoded(&ClientToServer::Hello {
                protocol: 1,
                agent: "ferry/0.1.0".into()
            }),
            "{\"type\":\"hello\",\"protocol\":1,\"agent\":\"ferry/0.1.0\"}\n"
        );
        assert_eq!(
            encoded(&ClientToServer::Allocate),
            "{\"type\":\"allocate\"}\n"
        );
        assert_eq!(
            encoded(&ClientToServer::Claim { nameplate: 7 }),
            "{\"type\":\"claim\",\"nameplate\":7}\n"
        );
        assert_eq!(
            encoded(&ClientToServer::Send {
                body: "a\nb".into()
            }),
            "{\"type\":\"send\",\"body\":\"a\\nb\"}\n"
        );
        assert_eq!(
            encoded(&ClientToServer::Release {
                reason: Some(ReleaseReason::BadCode),
                path: None,
            }),
            "{\"type\":\"release\",\"reason\":\"bad-code\"}\n"
        );
        assert_eq!(
            encoded(&ClientToServer::Ping { id: 3 }),
            "{\"type\":\"ping\",\"id\":3}\n"
        );
        let token = "ab".repeat(32);
        let line = encoded(&ClientToServer::Relay {
            protocol: 1,
            token: token.clone(),
        });
        assert_eq!(
            line,
            format!("{{\"type\":\"relay\",\"protocol\":1,\"token\":\"{token}\"}}\n")
        );
        assert!(line.len() <= MAX_RELAY_FRAME);
    }

    #[test]
    fn snapshot_server_frames() {
        assert_eq!(
            encoded(&ServerToClient::Welcome {
                protocol: 1,
                observed_addr: "203.0.113.5:40000".into(),
                heartbeat_secs: 5,
                stun_port: None,
                stun_second_port: None,
                relay_addr: None,
                uptime_secs: None,
                tls: None,
                relay_tls: None,
                relay_sha256: None,
            }),
            "{\"type\":\"welcome\",\"protocol\":1,\"observed_addr\":\"203.0.113.5:40000\",\"heartbeat_secs\":5}\n"
        );
        assert_eq!(
            encoded(&ServerToClient::Welcome {
                protocol: 1,
                observed_addr: "203.0.113.5:40000".into(),
                heartbeat_secs: 5,
                stun_port: Some(3478),
                stun_second_port: None,
                relay_addr: Some("relay.example.org:443".into()),
                uptime_secs: None,
                tls: None,
                relay_tls: None,
                relay_sha256: None,
            }),
            "{\"type\":\"welcome\",\"protocol\":1,\"observed_addr\":\"203.0.113.5:40000\",\"heartbeat_secs\":5,\"stun_port\":3478,\"relay_addr\":\"relay.example.org:443\"}\n"
        );
        // Without a relay, peer-joined and claimed look as they always did.
        assert_eq!(
            encoded(&ServerToClient::PeerJoined { relay_token: None }),
            "{\"type\":\"peer-joined\"}\n"
        );
        assert_eq!(
            encoded(&ServerToClient::Claimed {
                nameplate: 7,
                relay_token: None
            }),
            "{\"type\":\"claimed\",\"nameplate\":7}\n"
        );
        assert_eq!(
            encoded(&ServerToClient::PeerJoined {
                relay_token: Some("0f".into())
            }),
            "{\"type\":\"peer-joined\",\"relay_token\":\"0f\"}\n"
        );
        assert_eq!(
            encoded(&ServerToClient::Claimed {
                nameplate: 7,
                relay_token: Some("0f".into())
            }),
            "{\"type\":\"claimed\",\"nameplate\":7,\"relay_token\":\"0f\"}\n"
        );
        assert_eq!(
            encoded(&ServerToClient::RelayWaiting),
            "{\"type\":\"relay-waiting\"}\n"
        );
        assert_eq!(
            encoded(&ServerToClient::RelayPaired {
                max_bytes: None,
                max_secs: None
            }),
            "{\"type\":\"relay-paired\"}\n"
        );
        assert_eq!(
            encoded(&ServerToClient::RelayPaired {
                max_bytes: Some(1 << 30),
                max_secs: Some(86400)
            }),
            "{\"type\":\"relay-paired\",\"max_bytes\":1073741824,\"max_secs\":86400}\n"
        );
        assert_eq!(
            encoded(&ServerToClient::Error {
                code: ErrorCode::RelayRefused,
                message: "m".into()
            }),
            "{\"type\":\"error\",\"code\":\"relay-refused\",\"message\":\"m\"}\n"
        );
        assert_eq!(
            encoded(&ServerToClient::PeerLeft { reason: None }),
            "{\"type\":\"peer-left\",\"reason\":null}\n"
        );
        assert_eq!(
            encoded(&ServerToClient::Error {
                code: ErrorCode::NameplateTaken,
                message: "x".into()
            }),
            "{\"type\":\"error\",\"code\":\"nameplate-taken\",\"message\":\"x\"}\n"
        );
    }

    #[test]
    fn old_peer_joined_and_claimed_still_decode() {
        let mut buf = BytesMut::from(
            &b"{\"type\":\"peer-joined\"}\n{\"type\":\"claimed\",\"nameplate\":3}\n"[..],
        );
        assert_eq!(
            decode_frame::<ServerToClient>(&mut buf).unwrap(),
            Some(ServerToClient::PeerJoined { relay_token: None })
        );
        assert_eq!(
            decode_frame::<ServerToClient>(&mut buf).unwrap(),
            Some(ServerToClient::Claimed {
                nameplate: 3,
                relay_token: None
            })
        );
    }

    #[test]
    fn welcome_without_relay_addr_still_decodes() {
        let mut buf = BytesMut::from(
            &b"{\"type\":\"welcome\",\"protocol\":1,\"observed_addr\":\"192.0.2.1:5\",\"heartbeat_secs\":5}\n"[..],
        );
        let Some(ServerToClient::Welcome { relay_addr, .. }) = decode_frame(&mut buf).unwrap()
        else {
            panic!("not a welcome");
        };
        assert_eq!(relay_addr, None);
    }

    #[test]
    fn release_without_reason_field_parses() {
        let mut buf = BytesMut::from(&b"{\"type\":\"release\"}\r\n"[..]);
        let msg: Option<ClientToServer> = decode_frame(&mut buf).unwrap();
        assert_eq!(
            msg,
            Some(ClientToServer::Release {
                reason: None,
                path: None
            })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn unknown_error_code_is_tolerated() {
        let mut buf = BytesMut::from(
            &b"{\"type\":\"error\",\"code\":\"from-the-future\",\"message\":\"m\"}\n"[..],
        );
        let msg: Option<ServerToClient> = decode_frame(&mut buf).unwrap();
        assert_eq!(
            msg,
            Some(ServerToClient::Error {
                code: ErrorCode::Unknown,
                message: "m".into()
            })
        );
    }

    #[test]
    fn partial_then_complete() {
        let mut buf = BytesMut::from(&b"{\"type\":\"allo"[..]);
        assert!(decode_frame::<ClientToServer>(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"cate\"}\n{\"type\":\"ping\",\"id\":1}\n");
        assert_eq!(
            decode_frame::<ClientToServer>(&mut buf).unwrap(),
            Some(ClientToServer::Allocate)
        );
        assert_eq!(
            decode_frame::<ClientToServer>(&mut buf).unwrap(),
            Some(ClientToServer::Ping { id: 1 })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_frame_is_consumed() {
        let mut buf = BytesMut::from(&b"not json\n{\"type\":\"allocate\"}\n"[..]);
        assert!(matches!(
            decode_frame::<ClientToServer>(&mut buf),
            Err(FrameError::BadFrame { .. })
        ));
        assert_eq!(
            decode_frame::<ClientToServer>(&mut buf).unwrap(),
            Some(ClientToServer::Allocate)
        );
    }

    #[test]
    fn too_large_without_newline() {
        let mut buf = BytesMut::from(&vec![b'a'; MAX_FRAME - 1][..]);
        assert!(decode_frame::<ClientToServer>(&mut buf).unwrap().is_none());
        buf.put_u8(b'a');
        assert!(matches!(
            decode_frame::<ClientToServer>(&mut buf),
            Err(FrameError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn frame_of_exactly_max_size_decodes() {
        let overhead = encoded(&ClientToServer::Send {
            body: String::new(),
        })
        .len();
        let body = "x".repeat(MAX_FRAME - overhead);
        let msg = ClientToServer::Send { body };
        let mut buf = BytesMut::new();
        encode_frame(&msg, &mut buf).unwrap();
        assert_eq!(buf.len(), MAX_FRAME);
        assert_eq!(decode_frame::<ClientToServer>(&mut buf).unwrap(), Some(msg));
    }

    #[test]
    fn encode_refuses_oversized() {
        let msg = ClientToServer::Send {
            body: "x".repeat(MAX_FRAME),
        };
        let mut buf = BytesMut::new();
        assert!(matches!(
            encode_frame(&msg, &mut buf),
            Err(FrameError::FrameTooLarge { .. })
        ));
        assert!(buf.is_empty());
    }

    fn any_client_msg() -> impl Strategy<Value = ClientToServer> {
        prop_oneof![
            (any::<u32>(), ".*")
                .prop_map(|(protocol, agent)| ClientToServer::Hello { protocol, agent }),
            Just(ClientToServer::Allocate),
            any::<u32>().prop_map(|nameplate| ClientToServer::Reserve { nameplate }),
            any::<u32>().prop_map(|nameplate| ClientToServer::Claim { nameplate }),
            "[0-9a-f]{32}".prop_map(|channel| ClientToServer::Rejoin { channel }),
            ".*".prop_map(|body| ClientToServer::Send { body }),
            (
                proptest::option::of(any_reason()),
                proptest::option::of(proptest::sample::select(PathOutcome::ALL))
            )
                .prop_map(|(reason, path)| ClientToServer::Release { reason, path }),
            Just(ClientToServer::RelayRequest),
            any::<u64>().prop_map(|id| ClientToServer::Ping { id }),
            any::<u64>().prop_map(|id| ClientToServer::Pong { id }),
            (any::<u32>(), "[0-9a-f]{0,64}")
                .prop_map(|(protocol, token)| ClientToServer::Relay { protocol, token }),
        ]
    }

    fn any_reason() -> impl Strategy<Value = ReleaseReason> {
        prop_oneof![
            Just(ReleaseReason::BadCode),
            Just(ReleaseReason::Declined),
            Just(ReleaseReason::Done),
            Just(ReleaseReason::Cancelled),
            Just(ReleaseReason::Error),
            Just(ReleaseReason::PeerVanished),
            Just(ReleaseReason::PeerDisconnected),
            Just(ReleaseReason::Expired),
            Just(ReleaseReason::Unknown),
        ]
    }

    #[test]
    fn release_reasons_are_codes_and_free_text_reads_as_unknown() {
        let mut buf = BytesMut::from(
            &b"{\"type\":\"release\",\"reason\":\"bad-code\"}\n{\"type\":\"release\",\"reason\":\"\\u001b]0;pwned\\u0007Received 1 file\"}\n{\"type\":\"peer-left\",\"reason\":\"peer disconnected\"}\n"[..],
        );
        assert_eq!(
            decode_frame::<ClientToServer>(&mut buf).unwrap(),
            Some(ClientToServer::Release {
                reason: Some(ReleaseReason::BadCode),
                path: None,
            })
        );
        assert_eq!(
            decode_frame::<ClientToServer>(&mut buf).unwrap(),
            Some(ClientToServer::Release {
                reason: Some(ReleaseReason::Unknown),
                path: None,
            })
        );
        // An old server's free text reads as unknown, not as text to print.
        assert_eq!(
            decode_frame::<ServerToClient>(&mut buf).unwrap(),
            Some(ServerToClient::PeerLeft {
                reason: Some(ReleaseReason::Unknown)
            })
        );
        for reason in [
            ReleaseReason::BadCode,
            ReleaseReason::PeerVanished,
            ReleaseReason::Unknown,
        ] {
            assert_eq!(
                encoded(&ServerToClient::PeerLeft {
                    reason: Some(reason)
                }),
                format!(
                    "{{\"type\":\"peer-left\",\"reason\":\"{}\"}}\n",
                    reason.code()
                )
            );
        }
        assert_eq!(
            encoded(&ClientToServer::RelayRequest),
            "{\"type\":\"relay-request\"}\n"
        );
        assert_eq!(
            encoded(&ServerToClient::RelayToken {
                relay_token: Some("0f".into()),
                relay_addr: None,
                relay_tls: None,
                relay_sha256: None,
            }),
            "{\"type\":\"relay-token\",\"relay_token\":\"0f\"}\n"
        );
        assert_eq!(
            encoded(&ServerToClient::RelayToken {
                relay_token: Some("0f".into()),
                relay_addr: Some("edge-1.example.org:443".into()),
                relay_tls: Some(true),
                relay_sha256: None,
            }),
            "{\"type\":\"relay-token\",\"relay_token\":\"0f\",\"relay_addr\":\"edge-1.example.org:443\",\"relay_tls\":true}\n"
        );
    }

    #[test]
    fn release_carries_the_path_outcome_as_a_code() {
        assert_eq!(
            encoded(&ClientToServer::Release {
                reason: None,
                path: Some(PathOutcome::MovedToDirect),
            }),
            "{\"type\":\"release\",\"reason\":null,\"path\":\"moved-to-direct\"}\n"
        );
        for &outcome in PathOutcome::ALL {
            let line = encoded(&ClientToServer::Release {
                reason: Some(ReleaseReason::Done),
                path: Some(outcome),
            });
            assert_eq!(
                line,
                format!(
                    "{{\"type\":\"release\",\"reason\":\"done\",\"path\":\"{}\"}}\n",
                    outcome.code()
                )
            );
            let mut buf = BytesMut::from(line.as_bytes());
            let Some(ClientToServer::Release { path, .. }) = decode_frame(&mut buf).unwrap() else {
                panic!("not a release: {line}");
            };
            assert_eq!(path, Some(outcome));
        }
    }

    #[test]
    fn any_path_value_a_newer_or_hostile_client_sends_reads_as_unknown() {
        let lines = [
            "{\"type\":\"release\",\"path\":\"carrier-pigeon\"}\n",
            "{\"type\":\"release\",\"path\":\"\\u001b]0;pwned\\u0007\"}\n",
            "{\"type\":\"release\",\"path\":7}\n",
            "{\"type\":\"release\",\"path\":{\"kind\":\"quic\",\"ms\":20}}\n",
            "{\"type\":\"release\",\"path\":[\"quic\"],\"reason\":\"done\"}\n",
        ];
        for line in lines {
            let mut buf = BytesMut::from(line.as_bytes());
            let Some(ClientToServer::Release { path, .. }) = decode_frame(&mut buf).unwrap() else {
                panic!("not a release: {line}");
            };
            assert_eq!(path, Some(PathOutcome::Unknown), "{line}");
        }
        let mut buf =
            BytesMut::from(&b"{\"type\":\"release\",\"path\":null,\"reason\":\"done\"}\n"[..]);
        assert_eq!(
            decode_frame::<ClientToServer>(&mut buf).unwrap(),
            Some(ClientToServer::Release {
                reason: Some(ReleaseReason::Done),
                path: None
            })
        );
    }

    #[test]
    fn a_server_without_path_reports_reads_a_reporting_release_as_before() {
        // The frames of a server from before `path`: unknown fields are
        // ignored, as this test's copy of its `release` shows.
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(tag = "type", rename_all = "kebab-case")]
        enum OldClientToServer {
            Release {
                #[serde(default)]
                reason: Option<ReleaseReason>,
            },
        }
        let line = encoded(&ClientToServer::Release {
            reason: Some(ReleaseReason::Done),
            path: Some(PathOutcome::Quic),
        });
        let mut buf = BytesMut::from(line.as_bytes());
        assert_eq!(
            decode_frame::<OldClientToServer>(&mut buf).unwrap(),
            Some(OldClientToServer::Release {
                reason: Some(ReleaseReason::Done)
            })
        );
        // And this version ignores fields a newer client may add.
        let mut buf = BytesMut::from(
            &b"{\"type\":\"release\",\"path\":\"lan\",\"path_ms\":12,\"more\":{}}\n"[..],
        );
        assert_eq!(
            decode_frame::<ClientToServer>(&mut buf).unwrap(),
            Some(ClientToServer::Release {
                reason: None,
                path: Some(PathOutcome::Lan)
            })
        );
    }

    fn any_server_msg() -> impl Strategy<Value = ServerToClient> {
        prop_oneof![
            (
                any::<u32>(),
                ".*",
                any::<u32>(),
                any::<Option<u16>>(),
                any::<Option<u16>>(),
                proptest::option::of(".*"),
                any::<Option<u64>>()
            )
                .prop_map(
                    |(
                        protocol,
                        observed_addr,
                        heartbeat_secs,
                        stun_port,
                        stun_second_port,
                        relay_addr,
                        uptime_secs,
                    )| {
                        ServerToClient::Welcome {
                            protocol,
                            observed_addr,
                            heartbeat_secs,
                            stun_port,
                            stun_second_port,
                            relay_addr,
                            uptime_secs,
                            tls: None,
                            relay_tls: None,
                            relay_sha256: None,
                        }
                    }
                ),
            any::<u32>().prop_map(|nameplate| ServerToClient::Allocated { nameplate }),
            (any::<u32>(), proptest::option::of("[0-9a-f]{64}")).prop_map(
                |(nameplate, relay_token)| ServerToClient::Claimed {
                    nameplate,
                    relay_token
                }
            ),
            proptest::option::of(".*")
                .prop_map(|relay_token| ServerToClient::PeerJoined { relay_token }),
            Just(ServerToClient::RelayWaiting),
            (any::<Option<u64>>(), any::<Option<u64>>()).prop_map(|(max_bytes, max_secs)| {
                ServerToClient::RelayPaired {
                    max_bytes,
                    max_secs,
                }
            }),
            ".*".prop_map(|body| ServerToClient::Message { body }),
            proptest::option::of(any_reason())
                .prop_map(|reason| ServerToClient::PeerLeft { reason }),
            (
                proptest::option::of("[0-9a-f]{64}"),
                proptest::option::of(".*"),
                proptest::option::of(any::<bool>()),
                proptest::option::of("[0-9a-f]{64}"),
            )
                .prop_map(|(relay_token, relay_addr, relay_tls, relay_sha256)| {
                    ServerToClient::RelayToken {
                        relay_token,
                        relay_addr,
                        relay_tls,
                        relay_sha256,
                    }
                }),
            ".*".prop_map(|message| ServerToClient::Error {
                code: ErrorCode::BadFrame,
                message
            }),
            any::<u64>().prop_map(|id| ServerToClient::Ping { id }),
        ]
    }

    proptest! {
        #[test]
        fn client_roundtrip(msgs in proptest::collection::vec(any_client_msg(), 1..5)) {
            let mut buf = BytesMut::new();
            for m in &msgs {
                encode_frame(m, &mut buf).unwrap();
            }
            for m in &msgs {
                let got = decode_frame::<ClientToServer>(&mut buf).unwrap();
                prop_assert_eq!(got.as_ref(), Some(m));
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn server_roundtrip(msg in any_server_msg()) {
            let mut buf = BytesMut::new();
            encode_frame(&msg, &mut buf).unwrap();
            prop_assert_eq!(decode_frame::<ServerToClient>(&mut buf).unwrap(), Some(msg));
        }

        #[test]
        fn decode_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut buf = BytesMut::from(&bytes[..]);
            // Drain until incomplete or an error that leaves the buffer alone.
            for _ in 0..bytes.len() + 1 {
                let before = buf.len();
                match decode_frame::<ClientToServer>(&mut buf) {
                    Ok(None) | Err(FrameError::FrameTooLarge { .. }) => break,
                    Ok(Some(_)) | Err(_) => prop_assert!(buf.len() < before),
                }
            }
        }

        #[test]
        fn never_ok_after_max_frame_without_newline(
            extra in 0usize..1024,
            byte in any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
        ) {
            let mut buf = BytesMut::from(&vec![byte; MAX_FRAME + extra][..]);
            buf.extend_from_slice(b"\n");
            let too_large = matches!(
                decode_frame::<ClientToServer>(&mut buf),
                Err(FrameError::FrameTooLarge { .. })
            );
            prop_assert!(too_large);
        }
    }
}
