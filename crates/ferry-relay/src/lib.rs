//! ferry-relay: the TCP relay that joins two ferry peers which cannot reach
//! each other directly (symmetric NATs, networks that only let TCP 443 out).
//!
//! - [`token`]: relay tokens signed with a secret the rendezvous server and
//!   the relay share ([`TokenKey`]), so a relay on another host can check
//!   them on its own. Pure functions; uses no other module here.
//! - [`pairing`]: the pairing rules as a sans-IO state machine ([`Relay`]): token
//!   checks (MAC, expiry, single use), limits, wait timeouts, refusal
//!   counters. No sockets, no clock. Builds on [`token`].
//! - [`server`]: the tokio driver ([`RelayServer`]): takes a connection whose
//!   first line was `relay {token}`, waits for its partner and copies bytes
//!   both ways with large buffers, under an idle timeout and, by default,
//!   a rate per pair and in all, a byte limit and a lifetime per pair
//!   ([`PairBudget`], [`PairEnd`]). On a listener of its own it caps
//!   connections per address bucket at accept and drains pairs for a grace
//!   period on shutdown.
//! - [`client`]: [`relay_connect`], which hands back a TCP stream that is a
//!   raw pipe to the other peer, ready for TLS.
//!
//! - [`tls`]: TLS on the server port ([`Carrier`], plain or TLS, told
//!   apart by the first byte; [`ServerTls`], the server's reloadable
//!   certificate; [`ServerSpec`] and [`ClientTls`], how a client names and
//!   verifies a server: a pin, a CA file or the public roots).
//!
//! ```text
//! rendezvous core --claim--> token = (nameplate, expiry, nonce, MAC under the shared key)
//!        |
//!  relay-token {relay_token} to both paired sides (and welcome
//!        |                 {relay_addr} when the relay runs on another host)
//!        v
//! peer A: relay_connect --first line relay{token}--> RelayServer::handle -+- Relay::handle_join:
//! peer B: relay_connect --first line relay{token}--> RelayServer::handle -+  MAC, expiry, 2 joins
//!        A and B joined: copy_bidirectional (256 KiB buffers, backpressure)
//! ```
//!
//! The relay runs inside `ferry serve` (on the signalling listener, with a
//! random key made at start-up) or on its own ([`RelayServer::serve`],
//! with a key from a secret file the rendezvous server holds too). Either
//! way it is not an open proxy: only the two connections presenting a
//! token signed with its key, not expired and not yet used by two, are
//! joined. It sees only the peers' TLS ciphertext. It does not parse
//! anything after the first line.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod client;
pub mod pairing;
pub mod server;
pub mod tls;
pub mod token;

pub use client::{PairLimits, RelayError, relay_connect, relay_join, relay_join_via};
pub use pairing::{ConnId, Join, PairBudget, PairEnd, Refusal, Relay, RelayConfig, Stats};
pub use server::RelayServer;
pub use tls::{Carrier, ClientTls, RelayTls, ServerSpec, ServerTls, TlsError, Trust};
pub use token::{SecretError, Token, TokenKey, token_from_hex, token_to_hex};
