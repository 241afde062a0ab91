//! ferry-server: a whole ferry server, composed in-process: the rendezvous
//! server on a TCP listener (with the relay on the same listener unless
//! the relay runs elsewhere) and the STUN responder (UDP, plus STUN over
//! TCP), as `ferry serve` runs them; and the relay alone on a listener of
//! its own, as `ferry relay` runs it.
//!
//! - [`config`]: [`ServerConfig`] (everything the `ferry serve` flags
//!   set), [`StunConfig`], [`RelayMode`], and [`RelayNodeConfig`] for the
//!   relay alone.
//! - [`server`]: [`Server::start`] binds every socket and runs the parts
//!   as tasks; the running [`Server`] tells where it listens
//!   ([`Listening`]) and [`Server::shutdown`] stops it gracefully.
//! - [`relay`]: [`RelayNode`], the same for the relay alone.
//! - [`error`]: [`StartError`] (a socket could not be bound) and
//!   [`ServerError`] (a part failed while running).
//!
//! ```text
//! Server::start(config)
//!   bind signal listener --> ferry_rendezvous::serve (task; relay inside
//!                            unless RelayMode::Elsewhere / Off)
//!   bind STUN sockets    --> ferry_nat::stun::StunServer::run (task)
//!   bind --metrics       --> ferry_metrics::http::serve (task), reading
//!                            the one Metrics every part counts in
//!   the rendezvous core learns the STUN ports and where the relay is
//! Server::shutdown()
//!   both parts stop accepting; open connections get shutdown_grace
//! ```
//!
//! With [`ServerConfig::tls`] (and [`RelayNodeConfig::tls`]) the TCP
//! listener serves TLS and plain clients side by side, told apart by the
//! first byte (`ferry_relay::tls`); the same [`ServerTls`] handle reloads
//! the certificate for new connections.
//!
//! Flags, output, signals and exit codes stay in the `ferry` binary; this
//! crate is what a test (or a multi-server set-up) starts in-process.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod relay;
pub mod server;

pub use config::{RelayMode, RelayNodeConfig, ServerConfig, StunConfig};
pub use error::{ServerError, StartError};
pub use ferry_relay::{RelayConfig, ServerTls, Stats as RelayStats, TokenKey};
pub use relay::RelayNode;
pub use server::{Listening, Server};
