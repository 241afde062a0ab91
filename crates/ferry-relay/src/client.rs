//! The relay client.
//!
//! ```text
//! relay_join(relay, tls, token, timeout):
//!   TCP connect (or a tunnel through a proxy: relay_join_via) ->
//!   TLS when the relay's port runs it (tls.rs) ->
//!   `relay {protocol: 1, token}` ->
//!   read lines: relay-waiting (optional) ... relay-paired -> Ok(stream)
//!               error {code, message}                     -> Err(Refused)
//! ```
//!
//! Lines are read one byte at a time so that not a byte of the other
//! peer's data after `relay-paired` is consumed: the returned stream starts
//! exactly at the other side's first byte, ready for TLS.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::signal::{
    ClientToServer, ErrorCode, MAX_RELAY_FRAME, RELAY_PROTOCOL_VERSION, ServerToClient,
    decode_frame, encode_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::tls::{Carrier, RelayTls, TlsError};
use crate::token::{Token, token_to_hex};

/// Errors of [`relay_connect`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// No TCP connection to the relay could be made.
    #[error("could not reach the relay at {relay}: {reason}")]
    Connect {
        /// The relay address.
        relay: SocketAddr,
        /// Why, e.g. "connection refused".
        reason: String,
    },
    /// The proxy did not get us to the relay.
    #[error("could not reach the relay through the proxy: {0}")]
    Proxy(#[from] ferry_proxy::ProxyError),
    /// The TLS handshake with the relay failed: never retried in plain.
    #[error("{0}")]
    Tls(#[source] TlsError),
    /// The other side did not come (or the relay did not answer) in time.
    #[error("the relay at {relay} did not pair us with the other side within {secs} s")]
    Timeout {
        /// The relay address.
        relay: SocketAddr,
        /// How long we waited.
        secs: u64,
    },
    /// The relay refused the token, is full, or gave up waiting.
    #[error("the relay at {relay} refused: {message}")]
    Refused {
        /// The relay address.
        relay: SocketAddr,
        /// `relay-refused`, `server-full`, `relay-timeout`, ...
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
    },
    /// The relay closed the connection or sent something unexpected.
    #[error("the relay at {relay} broke the protocol: {reason}")]
    Protocol {
        /// The relay address.
        relay: SocketAddr,
        /// What was wrong.
        reason: String,
    },
}

/// The limits the relay set on a pair (`relay-paired`): when one is
/// reached, the relay ends the pipe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairLimits {
    /// Bytes the pair may move, both directions together.
    pub max_bytes: Option<u64>,
    /// How long the pair may last.
    pub max_lifetime: Option<Duration>,
}

impl PairLimits {
    /// Which limit explains a pipe that ended after `moved` bytes of
    /// payload and `lasted`. The relay counts more than the payload (TLS,
    /// framing, both directions), and a receiver counts only whole chunks:
    /// so within 10 % plus 512 KiB of the byte limit, or within 2 s of the
    /// lifetime.
    pub fn explains(&self, moved: u64, lasted: Duration) -> Option<crate::PairEnd> {
        const SLACK: u64 = 512 << 10;
        let near = |max: u64| (max - max / 10).saturating_sub(SLACK);
        if self.max_bytes.is_some_and(|max| moved >= near(max)) {
            return Some(crate::PairEnd::ByteLimit);
        }
        if self
            .max_lifetime
            .is_some_and(|max| lasted + Duration::from_secs(2) >= max)
        {
            return Some(crate::PairEnd::Lifetime);
        }
        None
    }
}

/// Connects to the relay, presents `token` and waits until the other side
/// presented it too. The returned stream is a raw pipe to the other peer.
///
/// `wait` bounds the whole exchange, connect included.
pub async fn relay_connect(
    relay: SocketAddr,
    token: &Token,
    wait: Duration,
) -> Result<TcpStream, RelayError> {
    match relay_join(relay, None, token, wait).await? {
        (Carrier::Plain(tcp), _) => Ok(tcp),
        (Carrier::Tls(_), _) => Err(RelayError::Protocol {
            relay,
            reason: "a plain join came back in TLS".into(),
        }),
    }
}

/// [`relay_connect`], inside TLS when `tls` says so (a relay on a TLS
/// server port; never plain instead), also returning the limits the
/// relay set on the pair.
pub async fn relay_join(
    relay: SocketAddr,
    tls: Option<&RelayTls>,
    token: &Token,
    wait: Duration,
) -> Result<(Carrier, PairLimits), RelayError> {
    relay_join_via(relay, None, tls, token, wait).await
}

/// [`relay_join`] through a proxy: with `through`, the connection is a
/// tunnel to that target (the relay's name or address, as the proxy
/// should see it) through that proxy; `relay` only names the relay in
/// errors then. TLS, when `tls` says so, runs inside the tunnel.
pub async fn relay_join_via(
    relay: SocketAddr,
    through: Option<(&ferry_proxy::ProxyUrl, &ferry_proxy::Target)>,
    tls: Option<&RelayTls>,
    token: &Token,
    wait: Duration,
) -> Result<(Carrier, PairLimits), RelayError> {
    timeout(wait, exchange(relay, through, tls, token))
        .await
        .map_err(|_| RelayError::Timeout {
            relay,
            secs: wait.as_secs(),
        })?
}

async fn exchange(
    relay: SocketAddr,
    through: Option<(&ferry_proxy::ProxyUrl, &ferry_proxy::Target)>,
    tls: Option<&RelayTls>,
    token: &Token,
) -> Result<(Carrier, PairLimits), RelayError> {
    let protocol = |reason: String| RelayError::Protocol { relay, reason };
    let tcp = match through {
        // The caller's `wait` bounds the proxy's handshake too.
        Some((proxy, target)) => ferry_proxy::connect(proxy, target, Duration::MAX).await?,
        None => TcpStream::connect(relay)
            .await
            .map_err(|e| RelayError::Connect {
                relay,
                reason: e.to_string(),
            })?,
    };
    let _ = tcp.set_nodelay(true);
    let mut stream = match tls {
        Some(tls) => tls
            .tls
            .connect(tcp, &tls.addr)
            .await
            .map_err(RelayError::Tls)?,
        None => Carrier::Plain(tcp),
    };
    let mut first = BytesMut::new();
    let hello = ClientToServer::Relay {
        protocol: RELAY_PROTOCOL_VERSION,
        token: token_to_hex(token),
    };
    encode_frame(&hello, &mut first).map_err(|e| protocol(e.to_string()))?;
    stream
        .write_all(&first)
        .await
        .map_err(|e| protocol(format!("sending the token failed: {e}")))?;
    let mut line = BytesMut::with_capacity(64);
    loop {
        let byte = stream
            .read_u8()
            .await
            .map_err(|e| protocol(format!("connection lost before pairing: {e}")))?;
        line.extend_from_slice(&[byte]);
        if byte != b'\n' {
            if line.len() >= MAX_RELAY_FRAME {
                return Err(protocol(format!(
                    "line longer than {MAX_RELAY_FRAME} bytes"
                )));
            }
            continue;
        }
        let msg = decode_frame::<ServerToClient>(&mut line)
            .map_err(|e| protocol(e.to_string()))?
            .ok_or_else(|| protocol("incomplete line".into()))?;
        line.clear();
        match msg {
            ServerToClient::RelayWaiting => {}
            ServerToClient::RelayPaired {
                max_bytes,
                max_secs,
            } => {
                let limits = PairLimits {
                    max_bytes,
                    max_lifetime: max_secs.map(Duration::from_secs),
                };
                return Ok((stream, limits));
            }
            ServerToClient::Error { code, message } => {
                return Err(RelayError::Refused {
                    relay,
                    code,
                    message,
                });
            }
            other => return Err(protocol(format!("unexpected {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PairEnd;

    #[test]
    fn limits_explain_an_end_only_near_them() {
        let limits = PairLimits {
            max_bytes: Some(8 << 20),
            max_lifetime: Some(Duration::from_secs(60)),
        };
        let s = Duration::from_secs;
        assert_eq!(limits.explains(8 << 20, s(1)), Some(PairEnd::ByteLimit));
        // A receiver that lost the last chunks in flight still counts.
        assert_eq!(limits.explains(7 << 20, s(1)), Some(PairEnd::ByteLimit));
        assert_eq!(limits.explains(4 << 20, s(1)), None);
        assert_eq!(limits.explains(0, s(59)), Some(PairEnd::Lifetime));
        assert_eq!(limits.explains(0, s(30)), None);
        assert_eq!(PairLimits::default().explains(u64::MAX, s(1 << 30)), None);
    }
}
