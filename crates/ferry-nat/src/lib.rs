//! ferry-nat: know the network, and say what will work from it.
//!
//! - [`addr`]: classify IP addresses (private LAN, carrier-grade NAT,
//!   link-local, public, ...) and list this host's interfaces.
//! - [`stun`]: a STUN (RFC 8489) Binding client and server with the RFC 5780
//!   behaviour-discovery attributes: sans-IO cores (no sockets, no clock)
//!   plus thin tokio drivers for UDP and TCP.
//! - [`behaviour`]: a sans-IO RFC 5780 NAT behaviour discovery procedure
//!   (mapping, filtering, port preservation) built on the STUN client.
//! - [`upnp`]: UPnP IGD port mapping, one module per layer behind one
//!   public API: search (gateway discovery), gateway (the SOAP calls that
//!   add, renew and remove mappings), guard (lease renewal on a sans-IO
//!   schedule, removal on exit), probe (a one-shot check for reports).
//! - [`pmp`]: NAT-PMP and PCP port mapping for gateways without UPnP
//!   IGD: a pure codec, a sans-IO request machine (PCP first, NAT-PMP
//!   fallback), and a guard that renews and deletes the mappings.
//! - [`drive`]: the one tokio driver of the sans-IO machines that talk
//!   over one UDP socket ([`UdpMachine`], [`drive_udp`]): the STUN
//!   transaction, behaviour discovery, and `ferry-connect`'s hole punching.
//! - [`hairpin`]: does the NAT hairpin (a second socket sends to the
//!   first one's public mapping): a sans-IO check and its driver.
//! - [`family`]: per address family (IPv4, IPv6), whether it works from
//!   here and why not: pure.
//! - [`verdict`]: the verdict about a network, pure and typed: from what
//!   the probes observed (rendezvous TCP, UDP behaviour, STUN over TCP,
//!   the UPnP test mapping) to a [`verdict::Verdict`] and its one-word
//!   [`verdict::Reach`] (`open`, `direct`, `direct-tcp`, `relay`,
//!   `unreachable`, `unknown`), and what works with each kind of peer
//!   ([`verdict::PeerKind`]), one sentence each.
//!
//! Not here: the `ferry nat` command, which runs the probes and words the
//! verdict for people and `--json` (it lives in the binary).
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod addr;
pub mod behaviour;
pub mod drive;
pub mod family;
pub mod hairpin;
pub mod pmp;
pub mod stun;
pub mod upnp;
pub mod verdict;

pub use addr::{AddrClass, Interface, classify, interfaces};
pub use drive::{DriveOptions, Transmit, UdpMachine, drive_udp};
