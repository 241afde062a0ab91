//! STUN (RFC 8489) Binding client and server, with the RFC 5780 NAT
//! behaviour discovery attributes.
//!
//! Message flow:
//!
//! ```text
//!  client (StunTransaction)                 server (respond)
//!    | Binding request [CHANGE-REQUEST] FINGERPRINT
//!    |------------------------------------------->|  from client socket
//!    |      (UDP: resent at 0, RTO, 3·RTO, ...)   |  to server socket `local`
//!    |                                            |
//!    | Binding success: XOR-MAPPED-ADDRESS,       |  sent from `local`, or from the
//!    |   MAPPED-ADDRESS, [RESPONSE-ORIGIN,        |  socket CHANGE-REQUEST asks for
//!    |   OTHER-ADDRESS], SOFTWARE, FINGERPRINT    |  (other IP and/or other port)
//!    |<-------------------------------------------|
//!    | or Binding error 420 (unknown attribute)   |
//! ```
//!
//! - [`client`]: the sans-IO client transaction ([`StunTransaction`]): the
//!   caller passes time and the transaction id in, and drains datagrams to
//!   send and timer deadlines out. No sockets, no clock.
//! - [`server`]: the sans-IO responder ([`respond`]): request bytes in,
//!   response bytes and "send from which socket" out.
//! - The tokio drivers ([`binding_udp`], [`binding_tcp`], [`serve_stun`])
//!   run those against real sockets. Over TCP, messages are framed by the
//!   20-byte header's length field.
//!
//! `stun-rs` is only the encoder/decoder; retransmission, matching and
//! address selection live here.

pub mod client;
mod driver;
pub mod server;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stun_rs::{DecoderContextBuilder, MessageDecoderBuilder, StunMessage};

pub use client::{BindingRequest, RetransmitConfig, StunTransaction, encode_binding_request};
pub use driver::{
    BindingOptions, StunServer, StunServerConfig, binding_tcp, binding_udp, serve_stun,
};
pub use server::{AltConfig, Response, SourceLimiter, SourceLimits, respond};

// The client's datagrams to send (encoded STUN messages) are the one type
// every UDP machine in ferry hands its driver.
pub use crate::drive::Transmit;

/// The largest STUN message we accept or produce, in bytes. Binding
/// messages are far smaller; anything bigger is dropped (UDP) or closes the
/// connection (TCP) before allocating.
pub const MAX_MESSAGE_LEN: usize = 2048;

/// The size of a STUN message header; its bytes 2..4 give the length of the
/// rest, which is how STUN over TCP is framed.
pub const HEADER_LEN: usize = 20;

/// What a successful Binding transaction learnt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingResult {
    /// Our address as the server saw it (XOR-MAPPED-ADDRESS, or
    /// MAPPED-ADDRESS from an RFC 3489 server).
    pub mapped: SocketAddr,
    /// True when the server sent only the old MAPPED-ADDRESS (RFC 3489).
    pub legacy: bool,
    /// The server's alternate address and port (RFC 5780 OTHER-ADDRESS):
    /// present only on servers that can do behaviour discovery.
    pub other_address: Option<SocketAddr>,
    /// The address the server says it sent the answer from (RESPONSE-ORIGIN).
    pub response_origin: Option<SocketAddr>,
    /// The address the answer actually came from (for UDP, the datagram's
    /// source; for TCP, the server we connected to).
    pub source: SocketAddr,
    /// The server's SOFTWARE attribute, if any.
    pub software: Option<String>,
    /// Time from the first transmission to the answer.
    pub elapsed: Duration,
}

/// Errors of the STUN client and drivers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// No answer at all: UDP may be blocked or the server is down.
    #[error(
        "no STUN answer from {server} after {sends} request(s) over {waited:?}: \
         the server may be down or this network may block its port"
    )]
    Timeout {
        /// The server we asked.
        server: SocketAddr,
        /// How many requests were sent.
        sends: u32,
        /// How long we waited in total.
        waited: Duration,
    },
    /// The server answered with a Binding error response.
    #[error("STUN server {server} refused the request: error {code} {reason}")]
    ErrorResponse {
        /// The server.
        server: SocketAddr,
        /// The STUN error code, e.g. 420.
        code: u16,
        /// The server's reason phrase.
        reason: String,
    },
    /// The server's success answer carried no mapped address.
    #[error("STUN server {server} answered without a mapped address")]
    NoMappedAddress {
        /// The server.
        server: SocketAddr,
    },
    /// The server's answer over TCP could not be parsed or was too large.
    #[error("STUN server {server} sent a malformed answer: {why}")]
    Malformed {
        /// The server.
        server: SocketAddr,
        /// What was wrong.
        why: String,
    },
    /// The server closed the TCP connection before answering.
    #[error("STUN server {server} closed the connection before answering")]
    Closed {
        /// The server.
        server: SocketAddr,
    },
    /// Encoding our own request failed (a bug, or an invalid argument).
    #[error("cannot encode STUN request: {0}")]
    Encode(String),
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Whether `bytes` looks like a STUN message (RFC 8489 section 6: top two
/// bits zero and the magic cookie), cheaply, before any decoding. Lets a
/// socket shared with other protocols (QUIC, punching) demultiplex.
pub fn is_stun(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN
        && bytes[0] & 0xC0 == 0
        && bytes[4..8] == stun_rs::MAGIC_COOKIE.as_u32().to_be_bytes()
}

/// The total length (header included) of the STUN message whose header
/// starts `bytes`, or `None` when fewer than [`HEADER_LEN`] bytes are given.
/// This is how STUN over TCP is framed.
pub fn framed_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < HEADER_LEN {
        return None;
    }
    Some(HEADER_LEN + usize::from(u16::from_be_bytes([bytes[2], bytes[3]])))
}

/// Decodes exactly one STUN message filling `bytes`, checking FINGERPRINT
/// when present. Trailing bytes are an error.
fn decode(bytes: &[u8]) -> Result<StunMessage, String> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(format!("{} bytes is over the limit", bytes.len()));
    }
    if !is_stun(bytes) {
        return Err("not a STUN message".into());
    }
    let ctx = DecoderContextBuilder::default().with_validation().build();
    let decoder = MessageDecoderBuilder::default().with_context(ctx).build();
    let (msg, size) = decoder.decode(bytes).map_err(|e| e.to_string())?;
    if size != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - size));
    }
    Ok(msg)
}

/// Encodes a message into a fresh buffer of at most [`MAX_MESSAGE_LEN`].
fn encode(msg: &StunMessage) -> Result<Vec<u8>, String> {
    let encoder = stun_rs::MessageEncoderBuilder::default().build();
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    let len = encoder.encode(&mut buf, msg).map_err(|e| e.to_string())?;
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_reads_the_header_length() {
        let mut header = [0u8; 20];
        header[2..4].copy_from_slice(&12u16.to_be_bytes());
        assert_eq!(framed_len(&header), Some(32));
        assert_eq!(framed_len(&header[..19]), None);
    }

    #[test]
    fn is_stun_needs_cookie_and_zero_bits() {
        let req = encode_binding_request([7; 12], &BindingRequest::default()).unwrap();
        assert!(is_stun(&req));
        let mut bad = req.clone();
        bad[0] |= 0x40;
        assert!(!is_stun(&bad));
        let mut bad = req.clone();
        bad[5] ^= 1;
        assert!(!is_stun(&bad));
        assert!(!is_stun(&req[..19]));
    }

    proptest::proptest! {
        /// No input makes the responder or the client panic, including
        /// inputs that start with a valid STUN header and our id.
        #[test]
        fn arbitrary_bytes_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            len in proptest::prelude::any::<u16>(),
            class in 0u8..4,
            exact in proptest::prelude::any::<bool>(),
        ) {
            let len = if exact { body.len() as u16 } else { len };
            let from: SocketAddr = "198.51.100.7:40000".parse().unwrap();
            let local: SocketAddr = "192.0.2.1:3478".parse().unwrap();
            let alt = AltConfig { primary: local, alternate: "192.0.2.2:3479".parse().unwrap() };
            let _ = respond(&body, from, local, Some(alt));
            let id = [3u8; 12];
            let mut framed = vec![0x00, 0x01 | (class & 1) << 4, 0, 0, 0x21, 0x12, 0xa4, 0x42];
            framed[0] = (class >> 1) & 1;
            framed[2..4].copy_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&id);
            framed.extend_from_slice(&body);
            let _ = respond(&framed, from, local, Some(alt));
            let _ = respond(&framed, from, local, None);
            let now = std::time::Instant::now();
            let mut tx = StunTransaction::new(now, id, local, BindingRequest::default(), RetransmitConfig::default()).unwrap();
            tx.poll_transmit();
            tx.handle_datagram(now, local, &body);
            tx.handle_datagram(now, local, &framed);
            let _ = tx.poll_event();
        }
    }
}
