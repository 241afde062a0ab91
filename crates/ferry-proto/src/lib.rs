//! ferry-proto: the messages ferry speaks, their framing, code phrases and
//! the SPAKE2 pairing state machine.
//!
//! Everything here is sans-IO: no sockets, no clock, no tasks. Callers feed
//! bytes and strings in and take bytes and strings out; the tokio drivers in
//! `ferry-rendezvous` and the CLI move them over the network.
//!
//! - [`signal`]: client ⇄ rendezvous-server messages, newline-delimited JSON.
//! - [`code`]: code phrases such as `7-orbit-lantern`.
//! - [`pairing`]: SPAKE2 over the server's mailbox, key confirmation and the
//!   sealed channel that carries [`peer`] messages.
//! - [`peer`]: messages between the two peers (always sealed).
//! - [`escape`]: how anything a peer or a stranger sent is shown, so that
//!   it cannot drive a terminal.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod code;
pub mod escape;
pub mod pairing;
pub mod peer;
pub mod signal;

pub use code::{Code, CodeError, WORDS};
pub use pairing::{Pairing, PairingError, Role, SecureChannel};
pub use peer::{Candidate, CandidateKind, PeerToPeer, Transport};
pub use signal::{
    ClientToServer, ErrorCode, FrameError, MAX_FRAME, PROTOCOL_VERSION, ServerToClient,
    decode_frame, encode_frame,
};
