//! ferry-nat: know the network.
//!
//! - [`addr`]: classify IP addresses (private LAN, carrier-grade NAT,
//!   link-local, public, ...) and list this host's interfaces.
//! - [`stun`]: a STUN (RFC 8489) Binding client and server with the RFC 5780
//!   behaviour-discovery attributes: sans-IO cores (no sockets, no clock)
//!   plus thin tokio drivers for UDP and TCP.
//! - [`behaviour`]: a sans-IO RFC 5780 NAT behaviour discovery procedure
//!   (mapping, filtering, port preservation) built on the STUN client.
//! - [`upnp`]: UPnP IGD port mapping (discovery, mappings with lease
//!   renewal and removal on exit, a one-shot probe for reports).
//!
//! Not here: the `ferry nat` command (it lives in the binary).
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod addr;
pub mod behaviour;
pub mod stun;
pub mod upnp;

pub use addr::{AddrClass, Interface, classify, interfaces};
