//! UPnP IGD port mapping: ask the home router to forward a public port to us.
//!
//! Built on `igd-next` (async, tokio). What this module adds on top of it:
//! bounded, retried discovery bound to the right LAN address; a mapping call
//! that prefers keeping the local port and falls back to a router-chosen
//! port; a guard that renews leases and removes mappings on exit; and a
//! one-shot [`probe`](fn@probe) for `ferry nat` reports.
//!
//! Message flow (SSDP over UDP multicast, then SOAP over HTTP to the router):
//!
//! ```text
//! discover:  us --M-SEARCH (239.255.255.250:1900, from each LAN address)--> LAN
//!            router --200 OK, LOCATION: http://gw:port/rootDesc.xml--> us
//!            us --GET device description + service description--> router
//!            (no answer within `search_timeout`: search again, `tries` times,
//!             then Ok(None): "no gateway" is normal, not an error)
//! external_ip:   us --GetExternalIPAddress--> router --> "a.b.c.d"
//! add_mapping:   us --GetExternalIPAddress--> router
//!                us --AddPortMapping(ext = local port)--> router
//!                   ok: done | port in use (another host): ↓
//!                us --AddAnyPortMapping / AddPortMapping(random port) ×N--> router
//! MappingGuard:  every lease/2: us --AddPortMapping(same ext port)--> router
//!                  (re-adding refreshes the lease)
//!                close()/drop:  us --DeletePortMapping--> router, per mapping
//!                  (deleting a missing mapping counts as success)
//! ```
//!
//! Choice of the search address: SSDP is multicast, and with an unbound
//! socket the kernel sends it out of whichever interface the multicast (or
//! default) route names, which on multi-homed hosts (VPN, docker, a second
//! NIC) is often not the LAN that has the router. So, unless
//! [`UpnpOptions::bind`] says otherwise, discovery searches from several
//! local IPv4 addresses at once, in this order: the address the kernel uses
//! towards the default gateway (found by `connect()`ing an unsent UDP socket
//! to a public address — no packet leaves), then every other private
//! (RFC 1918) interface address, then carrier-grade-NAT (100.64/10)
//! addresses; at most [`MAX_SEARCH_ADDRS`]. Linux sends multicast from a
//! socket bound to an address out of the interface owning that address, so
//! each search reaches exactly one LAN. The first gateway to answer wins.
//!
//! The external address the router reports is returned as-is and classified
//! with [`crate::addr::classify`]: a private or CGNAT "external" address means
//! a second NAT sits above the router and the mapping is not reachable from
//! the internet.
//!
//! Not here: NAT-PMP/PCP (igd-next does not speak them: see [`crate::pmp`]),
//! IPv6 pinholes.
//!
//! The renewal timing is a sans-IO schedule (time is passed in); the rest
//! is a thin driver over igd-next, and every network await has a timeout.
//!
//! Layers, one module each (everything public is re-exported here, so
//! callers write `ferry_nat::upnp::X`):
//!
//! ```text
//! probe: one-shot report          guard: MappingGuard, renews leases,
//!   |      \                        |     removes mappings on exit
//!   |       \                       |      \
//!   |        \                      |       schedule: when to renew
//!   |         v                     v                 (sans-IO)
//!   |        gateway: Gateway, the SOAP calls (external_ip,
//!   |                 add_mapping, renew, remove_mapping), with timeouts
//!   v           ^
//! search: discover(), SSDP from the right LAN addresses; makes a Gateway
//!
//! error: UpnpError, shared by all of them        (a -> b: a uses b)
//! ```

mod error;
mod gateway;
mod guard;
mod probe;
pub(crate) mod schedule;
pub(crate) mod search;
#[cfg(test)]
mod tests;

pub use error::UpnpError;
pub use gateway::{DEFAULT_REQUEST_TIMEOUT, Gateway, Mapping, Protocol};
pub use guard::MappingGuard;
pub use probe::{PROBE_LEASE, TestMapping, UpnpReport, probe};
pub use search::{DEFAULT_SEARCH_TIMEOUT, DEFAULT_TRIES, MAX_SEARCH_ADDRS, UpnpOptions, discover};
