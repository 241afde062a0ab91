//! The typed errors of UPnP discovery and port mapping, each worded so a
//! user knows what to do next.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use igd_next::SearchError;

use super::Protocol;

/// Errors from UPnP discovery and port mapping.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpnpError {
    /// Searching from an explicitly given address failed (not a timeout).
    #[error(
        "cannot search for a UPnP gateway from {bind}: {source}; \
         check that this address belongs to this host, or leave the bind address unset"
    )]
    Search {
        /// The local address the search was bound to.
        bind: SocketAddr,
        /// What igd-next reported.
        #[source]
        source: SearchError,
    },
    /// The router did not answer a request in time.
    #[error(
        "the UPnP gateway at {gateway} did not answer {action} within {timeout:?}; \
         the router may be busy or its UPnP service broken: try again, or run without UPnP"
    )]
    Timeout {
        /// The gateway's address.
        gateway: SocketAddr,
        /// The SOAP action, e.g. `AddPortMapping`.
        action: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
    /// The router refused the request for this host.
    #[error(
        "the UPnP gateway at {gateway} refused {action} (not authorized); \
         allow UPnP port forwarding for this computer in the router's settings"
    )]
    NotAuthorized {
        /// The gateway's address.
        gateway: SocketAddr,
        /// The SOAP action.
        action: &'static str,
    },
    /// The external port is mapped to another host and the router insists on
    /// equal internal and external ports.
    #[error(
        "the UPnP gateway at {gateway} maps external {protocol} port {port} to another host \
         and only allows equal internal and external ports; use another local port"
    )]
    PortInUse {
        /// The gateway's address.
        gateway: SocketAddr,
        /// The protocol.
        protocol: Protocol,
        /// The external port that is taken.
        port: u16,
    },
    /// The router found no free external port.
    #[error(
        "the UPnP gateway at {gateway} has no free external {protocol} port; \
         remove stale mappings in the router's settings"
    )]
    NoPortsAvailable {
        /// The gateway's address.
        gateway: SocketAddr,
        /// The protocol.
        protocol: Protocol,
    },
    /// The router reports no usable external IPv4 address (e.g. `0.0.0.0`
    /// while its WAN link is down, or an IPv6 address).
    #[error(
        "the UPnP gateway at {gateway} reports external address {ip}, which cannot be mapped; \
         the router's internet connection may be down"
    )]
    NoExternalAddress {
        /// The gateway's address.
        gateway: SocketAddr,
        /// What it reported.
        ip: IpAddr,
    },
    /// The local address given for a mapping cannot be used.
    #[error("cannot map local address {local}: {reason}")]
    InvalidLocal {
        /// The address given.
        local: SocketAddrV4,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// Any other failure reported by the router or the HTTP exchange.
    #[error(
        "the UPnP gateway at {gateway} failed {action}: {source}; \
         try again, or run without UPnP"
    )]
    Gateway {
        /// The gateway's address.
        gateway: SocketAddr,
        /// The SOAP action.
        action: &'static str,
        /// What igd-next reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
