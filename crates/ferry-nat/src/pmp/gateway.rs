//! The thin tokio driver: one UDP socket bound to our LAN address, one
//! [`MapClient`] per request, run by [`drive_udp`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::net::UdpSocket;
use tracing::debug;

use super::client::{MapClient, Mapping, Request, Retransmit};
use super::codec::{SERVER_PORT, Version};
use super::{PmpError, route};
use crate::drive::{DriveOptions, drive_udp};
use crate::upnp::Protocol;
use crate::upnp::search::route_source;

/// How to find and ask the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PmpOptions {
    /// The gateway's address; `None`: the IPv4 default route's gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Retransmissions per step (PCP, then NAT-PMP's).
    pub retransmit: Retransmit,
}

/// A NAT-PMP/PCP gateway: its address and ours on its LAN. Requests are
/// made with [`map`](Self::map), [`renew`](Self::renew) and
/// [`remove`](Self::remove); each opens its own socket, so they may run
/// at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmpGateway {
    gateway: Ipv4Addr,
    local_ip: Ipv4Addr,
    retransmit: Retransmit,
}

impl PmpGateway {
    /// The gateway named in `options`, else the default route's; and the
    /// address the kernel uses towards it (no packet is sent).
    pub fn find(options: &PmpOptions) -> Result<PmpGateway, PmpError> {
        let gateway = options
            .gateway
            .or_else(route::default_gateway)
            .ok_or(PmpError::NoGateway)?;
        let server = SocketAddr::from((gateway, SERVER_PORT));
        let local_ip = match route_source(server) {
            Some(IpAddr::V4(ip)) => ip,
            _ => {
                return Err(PmpError::Socket {
                    gateway: server,
                    source: std::io::Error::new(
                        std::io::ErrorKind::AddrNotAvailable,
                        "no IPv4 route to the gateway",
                    ),
                });
            }
        };
        Ok(PmpGateway {
            gateway,
            local_ip,
            retransmit: options.retransmit,
        })
    }

    /// The gateway's address.
    pub fn addr(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Our address on its LAN.
    pub fn local_ip(&self) -> Ipv4Addr {
        self.local_ip
    }

    /// Maps `internal_port` for `lifetime` (whole seconds, at least 1),
    /// asking for the same external port; PCP first, then NAT-PMP.
    pub async fn map(
        &self,
        protocol: Protocol,
        internal_port: u16,
        lifetime: Duration,
    ) -> Result<Mapping, PmpError> {
        self.map_starting_at(Version::Pcp, protocol, internal_port, lifetime)
            .await
    }

    /// [`map`](Self::map), trying `start` first: [`Version::NatPmp`] skips
    /// PCP (for a gateway known to speak only NAT-PMP, or to test it).
    pub async fn map_starting_at(
        &self,
        start: Version,
        protocol: Protocol,
        internal_port: u16,
        lifetime: Duration,
    ) -> Result<Mapping, PmpError> {
        self.request(Request {
            gateway: self.gateway,
            client_ip: self.local_ip,
            protocol,
            internal_port,
            suggested: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, internal_port),
            lifetime: lifetime_secs(lifetime),
            nonce: rand::random(),
            start,
            retransmit: self.retransmit,
        })
        .await
    }

    /// Asks for `mapping` again (same nonce, external port and version),
    /// which extends its lifetime; returns the mapping granted, whose
    /// external port may differ.
    pub async fn renew(&self, mapping: &Mapping) -> Result<Mapping, PmpError> {
        self.request(self.again(mapping, lifetime_secs(mapping.lifetime)))
            .await
    }

    /// Deletes `mapping` (lifetime 0).
    pub async fn remove(&self, mapping: &Mapping) -> Result<(), PmpError> {
        self.request(self.again(mapping, 0)).await.map(|_| ())
    }

    fn again(&self, mapping: &Mapping, lifetime: u32) -> Request {
        Request {
            gateway: self.gateway,
            client_ip: self.local_ip,
            protocol: mapping.protocol,
            internal_port: mapping.internal_port,
            suggested: mapping.external,
            lifetime,
            nonce: mapping.nonce,
            start: mapping.version,
            retransmit: self.retransmit,
        }
    }

    async fn request(&self, request: Request) -> Result<Mapping, PmpError> {
        let server = SocketAddr::from((self.gateway, SERVER_PORT));
        let socket = UdpSocket::bind((self.local_ip, 0))
            .await
            .map_err(|source| PmpError::Socket {
                gateway: server,
                source,
            })?;
        let now = tokio::time::Instant::now().into_std();
        let mut client = MapClient::new(now, request);
        let result = drive_udp(&socket, &mut client, DriveOptions::new("PCP/NAT-PMP"))
            .await
            .unwrap_or(Err(PmpError::BadAnswer {
                gateway: server,
                reason: "the request stalled",
            }));
        match &result {
            Ok(m) => debug!(
                version = %m.version, protocol = %m.protocol, internal = m.internal_port,
                external = %m.external, lifetime = ?m.lifetime, "PCP/NAT-PMP: answered"
            ),
            Err(error) => debug!(%error, "PCP/NAT-PMP: request failed"),
        }
        result
    }
}

/// Whole seconds, at least 1, at most `u32::MAX`.
fn lifetime_secs(lifetime: Duration) -> u32 {
    u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX).max(1)
}
