//! NAT-PMP (RFC 6886) and PCP (RFC 6887) port mapping: for gateways that
//! offer these instead of (or besides) UPnP IGD.
//!
//! ```text
//! PmpGateway::find: the gateway = the IPv4 default route's (/proc/net/route)
//!                   or the one given; our address = the route's source
//! map:    us --PCP MAP (nonce, protocol, port, lifetime)--> gateway:5351
//!         gateway --MAP SUCCESS (external ip:port, lifetime)--> us     done
//!         gateway --UNSUPP_VERSION (version 0: a NAT-PMP server)--> us
//!           us --NAT-PMP external address--> <--ip--
//!           us --NAT-PMP map TCP/UDP--> <--external port, lifetime--  done
//!         (each step resent at 250 ms, doubling, 3 sends; PCP's silence
//!          also falls back to NAT-PMP)
//! PmpGuard: every lifetime/2 the same request again (same nonce and
//!           external port: a renewal); close()/drop: lifetime 0 (delete)
//! ```
//!
//! Layers: [`codec`] (pure wire formats), [`client`] (the sans-IO request
//! machine, a [`UdpMachine`](crate::drive::UdpMachine)), [`route`] (the
//! default gateway), then the thin drivers: gateway ([`PmpGateway`], one
//! socket per request through [`drive_udp`](crate::drive::drive_udp)) and
//! guard ([`PmpGuard`], renewal and deletion), probe (a one-shot check for
//! `ferry nat`), presence (which of the two the gateway speaks, asked at
//! once, mapping nothing: [`presence()`]). The external address is
//! returned classified ([`crate::addr::classify`]); unusable ones
//! (unspecified, multicast, IPv6 for an IPv4 mapping) are errors.
//!
//! Not here: PCP's PEER opcode (ANNOUNCE only as the presence probe), IPv6 mappings, THIRD_PARTY.
#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
mod error;
mod gateway;
mod guard;
mod presence;
mod probe;
pub mod route;
#[cfg(test)]
mod tests;

pub use client::{MapClient, Mapping, Request, Retransmit};
pub use codec::{SERVER_PORT, Version};
pub use error::PmpError;
pub use gateway::{PmpGateway, PmpOptions};
pub use guard::PmpGuard;
pub use presence::{Presence, PresenceConfig, PresenceProbe, presence};
pub use probe::{PROBE_LIFETIME, PmpReport, probe};
