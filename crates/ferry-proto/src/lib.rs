//! ferry-proto: the messages ferry speaks, their framing, code phrases,
//! the SPAKE2 pairing state machine and the one rule for showing untrusted
//! text. Every other ferry crate builds on it.
//!
//! Everything here is sans-IO: no sockets, no clock, no tasks. Callers feed
//! bytes and strings in and take bytes and strings out. The drivers that
//! move them live elsewhere: `ferry-rendezvous` (the server and its client),
//! `ferry-relay` (the relay's first frames), `ferry-session` (pairing and
//! the sealed peer messages over the server's mailbox); `ferry-transfer`
//! and the CLI use [`escape`].
//!
//! - [`signal`]: client ⇄ rendezvous-server messages, newline-delimited
//!   JSON: nameplates, the mailbox, rejoin channels, relay tokens (asked
//!   for once paired), release reasons as fixed codes, heartbeats, and the
//!   frames that open a relay connection on the same listener.
//! - [`code`]: code phrases such as `7-orbit-lantern`.
//! - [`pairing`]: SPAKE2 over the server's mailbox, key confirmation and the
//!   sealed channel that carries [`peer`] messages.
//! - [`peer`]: messages between the two peers (always sealed): version,
//!   hello (certificate fingerprint, candidates, network hints), failed
//!   paths during the race, abort.
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
