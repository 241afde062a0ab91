//! The relay client.
//!
//! ```text
//! relay_connect(relay, token, timeout):
//!   TCP connect -> `relay {protocol: 1, token}` ->
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

use crate::pairing::Token;
use crate::token_to_hex;

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

/// Connects to the relay, presents `token` and waits until the other side
/// presented it too. The returned stream is a raw pipe to the other peer.
///
/// `wait` bounds the whole exchange, connect included.
pub async fn relay_connect(
    relay: SocketAddr,
    token: &Token,
    wait: Duration,
) -> Result<TcpStream, RelayError> {
    timeout(wait, exchange(relay, token))
        .await
        .map_err(|_| RelayError::Timeout {
            relay,
            secs: wait.as_secs(),
        })?
}

async fn exchange(relay: SocketAddr, token: &Token) -> Result<TcpStream, RelayError> {
    let protocol = |reason: String| RelayError::Protocol { relay, reason };
    let mut stream = TcpStream::connect(relay)
        .await
        .map_err(|e| RelayError::Connect {
            relay,
            reason: e.to_string(),
        })?;
    let _ = stream.set_nodelay(true);
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
            ServerToClient::RelayPaired => return Ok(stream),
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
