//! ferry-rendezvous: the rendezvous server that pairs two ferry peers under
//! a nameplate and forwards their mailbox messages, and the client side that
//! talks to it.
//!
//! - [`state`]: the server logic as a sans-IO state machine (no sockets, no
//!   clock: time and the rng seed are arguments), a module per concern:
//!   nameplates (allocation, claims, mailbox, rejoin, relay tokens),
//!   budgets (failed claims, bad codes), timers.
//! - [`server`]: the tokio driver around it: [`serve`] on a bound listener;
//!   with a relay configured, the same listener also serves `ferry-relay`
//!   connections (told apart by their first frame).
//!   With a cluster directory (`ferry_cluster`), several servers share
//!   nameplates: see [`server`]'s module doc and [`state::cluster`].
//! - [`client`]: [`SignalClient`], the tokio client used by `ferry send` and
//!   `ferry receive`.
//!
//! ```text
//!  accept loop --spawn--> connection task (one per TCP connection)
//!                           | frames in (64 KiB limit)   ^ frames out (bounded queue)
//!                           v                            |
//!                        actor (owns state::Rendezvous, one timer)
//! ```
//!
//! The server never learns the code words: it sees nameplates and opaque
//! mailbox bodies only.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod admission;
pub mod client;
mod hop;
mod link;
pub mod server;
pub mod state;

pub use client::{SignalClient, SignalError, SignalEvent, Welcome};
pub use ferry_proto::signal::{PathOutcome, ReleaseReason};
pub use server::{ServerConfig, serve, serve_with_relay};
pub use state::{
    BAD_CODE, ClientId, Config, PEER_DISCONNECTED, PEER_VANISHED, PairRelay, PathCounts,
    Rendezvous, Stats,
};
