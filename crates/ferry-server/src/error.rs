//! What can go wrong starting a server ([`StartError`]: a socket could not
//! be bound, or the configuration cannot work) and running it
//! ([`ServerError`]: a part failed).

use std::io;
use std::net::SocketAddr;

/// Why [`Server::start`](crate::Server::start) or
/// [`RelayNode::start`](crate::RelayNode::start) did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The signalling (or relay) listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The bound listener's address could not be read.
    #[error("cannot read the listener's address: {0}")]
    LocalAddr(#[source] io::Error),
    /// RFC 5780 behaviour tests (a STUN alternate IP) need the primary
    /// STUN address to name one IP, not the wildcard.
    #[error("the STUN alternate IP needs a specific primary IP, not {0}")]
    StunAltNeedsIp(SocketAddr),
    /// The STUN responder's sockets could not be bound.
    #[error("cannot start the STUN responder: {0}")]
    Stun(#[source] io::Error),
}

/// A part of a running server that failed (seen at shutdown).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The rendezvous server (signalling, and the relay on its listener).
    #[error("the rendezvous server failed")]
    Rendezvous(#[source] io::Error),
    /// The STUN responder.
    #[error("the STUN responder failed")]
    Stun(#[source] io::Error),
    /// The relay on a listener of its own.
    #[error("the relay failed")]
    Relay(#[source] io::Error),
    /// A part's task panicked or was cancelled.
    #[error("the {part} task ended abnormally")]
    Task {
        /// Which part: "rendezvous", "STUN" or "relay".
        part: &'static str,
        /// What the runtime said.
        #[source]
        source: tokio::task::JoinError,
    },
}
