//! ferry-connect: direct connections between two paired peers.
//!
//! After SPAKE2 pairing over the rendezvous mailbox, each side makes a
//! throw-away certificate ([`Identity::generate`]) and sends its
//! [fingerprint](Identity::fingerprint) to the peer under the shared key.
//! The sender binds a [`DirectListener`] and sends its
//! [candidates](DirectListener::candidates); the receiver calls
//! [`connect_first`], which tries all of them at once and keeps the first
//! connection that completes the TLS 1.3 handshake with the pinned peer.
//!
//! ```text
//! sender                                          receiver
//! id = Identity::generate()                       id = Identity::generate()
//!   ──────── fingerprints, under the SPAKE2 key ────────▶ / ◀
//! listener = DirectListener::bind()
//!   ──────── listener.candidates() ──────────────────────▶
//! listener.accept(tls_acceptor(id, peer_fp))      connect_first(candidates,
//!                                                   tls_connector(id, peer_fp))
//!   ◀════════ TLS 1.3 stream, both certificates pinned ══▶
//! ```
//!
//! Modules: [`tls`] (identities, pinned rustls configurations),
//! [`direct`] (the TCP listener and the candidate race), [`simopen`] (TCP
//! simultaneous open), [`punch`](mod@punch) (authenticated UDP hole punching),
//! [`quic`] (QUIC on a punched socket), [`race`] (the sans-IO core of the
//! path race and the secured stream type), [`address`] (host candidates and
//! the filter for a peer's candidates), [`priority`] (the one priority table
//! of every kind of candidate); privately `error` (the error types
//! and how they are told) and `confirm` (the listener's confirmation,
//! shared by `direct` and `simopen`). Dependencies point one way:
//!
//! ```text
//! race ──▶ quic ──▶ tls ──▶ error
//! direct ──▶ address ──▶ priority     punch ──▶ error, ferry_nat::drive
//! direct, simopen ──▶ confirm, tls, error      confirm ──▶ error
//! ```
//!
//! What this crate does not do:
//! signalling, key agreement, gathering or path policy (`ferry-session`),
//! NAT discovery (`ferry-nat`), relaying (`ferry-relay`), or the transfer
//! itself (`ferry-transfer`).

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod address;
pub mod confirm;
pub mod direct;
mod error;
pub mod eyeballs;
pub mod priority;
pub mod punch;
pub mod quic;
pub mod race;
pub mod simopen;
pub mod spray;
pub mod tls;
pub mod window;

pub use confirm::{Secure, secure_client, secure_server, secure_tcp};
pub use direct::{DirectListener, connect_first};
pub use error::{CandidateFailure, ConnectError, FailureReason};
pub use ferry_proto::peer::{Candidate, CandidateKind, Transport};
pub use punch::{PunchResult, punch, punch_with_late};
pub use quic::{QuicStream, quic_connect};
pub use race::{PathFailure, PathKind, PeerStream};
pub use simopen::{SimOpenSchedule, bind_reusable, connect_from, simultaneous_open};
pub use tls::{Identity, certificate_fingerprint, tls_acceptor, tls_connector};
