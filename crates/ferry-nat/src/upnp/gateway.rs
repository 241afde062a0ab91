//! The gateway wrapper: one router found by the search, and the SOAP calls
//! ferry makes on it (external address, add, renew and remove a mapping),
//! each bounded by a timeout and mapped to a typed [`UpnpError`].
//!
//! ```text
//! add_mapping:   GetExternalIPAddress
//!                AddPortMapping(ext = local port)
//!                   ok: done | port in use (another host): |
//!                AddAnyPortMapping / AddPortMapping(random port) xN
//! renew:         AddPortMapping(same ext port)   (refreshes the lease)
//! remove_mapping: DeletePortMapping              (missing counts as success)
//! ```
//!
//! The external address the router reports is returned as-is and
//! classified with [`crate::addr::classify`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use igd_next::aio::Gateway as IgdGateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{
    AddAnyPortError, AddPortError, GetExternalIpError, PortMappingProtocol, RemovePortError,
    RequestError,
};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::UpnpError;
use super::search::route_source;
use crate::addr::{self, AddrClass};

/// Default time to wait for the router to answer one SOAP request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

impl Protocol {
    fn to_igd(self) -> PortMappingProtocol {
        match self {
            Protocol::Udp => PortMappingProtocol::UDP,
            Protocol::Tcp => PortMappingProtocol::TCP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Udp => "UDP",
            Protocol::Tcp => "TCP",
        })
    }
}

/// A UPnP IGD gateway (the router) found by [`discover`](super::discover).
#[derive(Debug, Clone)]
pub struct Gateway {
    pub(super) inner: IgdGateway<Tokio>,
    /// Our address on the gateway's LAN, used when a mapping's local address
    /// is `0.0.0.0`.
    local_ip: Option<Ipv4Addr>,
    request_timeout: Duration,
}

impl Gateway {
    pub(super) fn new(inner: IgdGateway<Tokio>, bind: SocketAddr) -> Gateway {
        let local_ip = match bind.ip() {
            IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
            _ => match route_source(inner.addr) {
                Some(IpAddr::V4(ip)) => Some(ip),
                _ => None,
            },
        };
        Gateway {
            inner,
            local_ip,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The URL of the gateway's WAN connection control service, e.g.
    /// `http://192.168.1.1:5000/ctl/IPConn`.
    pub fn control_url(&self) -> String {
        absolute_url(self.inner.addr, &self.inner.control_url)
    }

    /// The gateway's HTTP address, e.g. `192.168.1.1:5000`.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// This host's address on the gateway's LAN, when known (the address the
    /// search was sent from, or the route's source address).
    pub fn local_ip(&self) -> Option<Ipv4Addr> {
        self.local_ip
    }

    /// Sets how long to wait for the router to answer one request (default
    /// [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    /// Asks the router for its external address. The address is returned as
    /// reported; classify it with [`crate::addr::classify`] (a private or
    /// CGNAT address means another NAT above the router).
    pub async fn external_ip(&self) -> Result<IpAddr, UpnpError> {
        const ACTION: &str = "GetExternalIPAddress";
        match self.timed(ACTION, self.inner.get_external_ip()).await? {
            Ok(ip) => Ok(ip),
            Err(GetExternalIpError::ActionNotAuthorized) => Err(UpnpError::NotAuthorized {
                gateway: self.addr(),
                action: ACTION,
            }),
            Err(GetExternalIpError::RequestError(e)) => Err(self.request_error(ACTION, e)),
        }
    }

    /// Maps an external port to `local` for `lease`, and returns the mapping.
    ///
    /// Tries the external port equal to `local.port()` first; when that port
    /// is taken by another host, lets the router pick a port (or tries random
    /// ports when the router cannot pick). `local` with IP `0.0.0.0` means
    /// this host's address on the gateway's LAN. `lease` is rounded to whole
    /// seconds (at least 1); [`Duration::ZERO`] asks for a permanent mapping.
    /// A router that only supports permanent mappings gets one, and the
    /// returned [`Mapping::lease`] is then zero: remove it when done (a
    /// [`MappingGuard`](super::MappingGuard) does).
    ///
    /// Adding the same mapping again refreshes its lease.
    pub async fn add_mapping(
        &self,
        protocol: Protocol,
        local: SocketAddrV4,
        lease: Duration,
        description: &str,
    ) -> Result<Mapping, UpnpError> {
        let local = self.resolve_local(local)?;
        let ip = self.external_ipv4().await?;
        let (port, lease_secs) = self
            .map_port(protocol, local, lease_secs(lease), description)
            .await?;
        let mapping = Mapping {
            protocol,
            external: SocketAddrV4::new(ip, port),
            external_class: addr::classify(IpAddr::V4(ip)),
            local,
            lease: Duration::from_secs(u64::from(lease_secs)),
            description: description.to_owned(),
        };
        debug!(
            %protocol,
            external = %mapping.external,
            %local,
            lease = ?mapping.lease,
            "UPnP: mapping added"
        );
        Ok(mapping)
    }

    /// Removes the mapping of external `port`. Removing a mapping that does
    /// not exist (already expired or removed) succeeds.
    pub async fn remove_mapping(&self, protocol: Protocol, port: u16) -> Result<(), UpnpError> {
        const ACTION: &str = "DeletePortMapping";
        match self
            .timed(ACTION, self.inner.remove_port(protocol.to_igd(), port))
            .await?
        {
            Ok(()) | Err(RemovePortError::NoSuchPortMapping) => Ok(()),
            Err(RemovePortError::ActionNotAuthorized) => Err(UpnpError::NotAuthorized {
                gateway: self.addr(),
                action: ACTION,
            }),
            Err(RemovePortError::RequestError(e)) => Err(self.request_error(ACTION, e)),
        }
    }

    /// Re-adds an existing mapping with its own external port, which
    /// refreshes its lease on the router.
    pub(super) async fn renew(&self, mapping: &Mapping) -> Result<(), UpnpError> {
        let result = self
            .add_port(
                mapping.protocol,
                mapping.external.port(),
                mapping.local,
                lease_secs(mapping.lease),
                &mapping.description,
            )
            .await?;
        result.map_err(|e| self.add_port_error(mapping.protocol, mapping.external.port(), e))
    }

    fn resolve_local(&self, local: SocketAddrV4) -> Result<SocketAddrV4, UpnpError> {
        resolve_local(local, self.local_ip)
    }

    async fn external_ipv4(&self) -> Result<Ipv4Addr, UpnpError> {
        let ip = self.external_ip().await?;
        match ip {
            IpAddr::V4(v4) if !v4.is_unspecified() => Ok(v4),
            _ => Err(UpnpError::NoExternalAddress {
                gateway: self.addr(),
                ip,
            }),
        }
    }

    /// Returns the external port and the lease (seconds) actually granted.
    async fn map_port(
        &self,
        protocol: Protocol,
        local: SocketAddrV4,
        mut lease: u32,
        description: &str,
    ) -> Result<(u16, u32), UpnpError> {
        // Same port as the local one first: peers and logs are easier to read,
        // and some routers only allow equal ports.
        let same_port_taken = loop {
            match self
                .add_port(protocol, local.port(), local, lease, description)
                .await?
            {
                Ok(()) => return Ok((local.port(), lease)),
                Err(AddPortError::OnlyPermanentLeasesSupported) if lease != 0 => {
                    debug!("UPnP: router only supports permanent mappings");
                    lease = 0;
                }
                Err(AddPortError::PortInUse) => break true,
                Err(AddPortError::ActionNotAuthorized) => {
                    return Err(UpnpError::NotAuthorized {
                        gateway: self.addr(),
                        action: "AddPortMapping",
                    });
                }
                // Transport failures will not get better with another port.
                Err(AddPortError::RequestError(e)) if !matches!(e, RequestError::ErrorCode(..)) => {
                    return Err(self.request_error("AddPortMapping", e));
                }
                Err(e) => {
                    debug!(port = local.port(), "UPnP: same-port mapping refused: {e}");
                    break false;
                }
            }
        };
        debug!(same_port_taken, "UPnP: letting the router pick a port");
        const ACTION: &str = "AddAnyPortMapping";
        // igd-next may make up to 20 requests when the router cannot pick.
        let budget = self.request_timeout.saturating_mul(3);
        loop {
            let add = self.inner.add_any_port(
                protocol.to_igd(),
                SocketAddr::V4(local),
                lease,
                description,
            );
            let result =
                tokio::time::timeout(budget, add)
                    .await
                    .map_err(|_| UpnpError::Timeout {
                        gateway: self.addr(),
                        action: ACTION,
                        timeout: budget,
                    })?;
            return match result {
                Ok(port) => Ok((port, lease)),
                Err(AddAnyPortError::OnlyPermanentLeasesSupported) if lease != 0 => {
                    lease = 0;
                    continue;
                }
                Err(AddAnyPortError::ActionNotAuthorized) => Err(UpnpError::NotAuthorized {
                    gateway: self.addr(),
                    action: ACTION,
                }),
                Err(AddAnyPortError::ExternalPortInUse) => Err(UpnpError::PortInUse {
                    gateway: self.addr(),
                    protocol,
                    port: local.port(),
                }),
                Err(AddAnyPortError::NoPortsAvailable) => Err(UpnpError::NoPortsAvailable {
                    gateway: self.addr(),
                    protocol,
                }),
                Err(e) => Err(UpnpError::Gateway {
                    gateway: self.addr(),
                    action: ACTION,
                    source: Box::new(e),
                }),
            };
        }
    }

    /// One AddPortMapping request; the outer error is a timeout, the inner
    /// one is the router's answer.
    async fn add_port(
        &self,
        protocol: Protocol,
        external_port: u16,
        local: SocketAddrV4,
        lease: u32,
        description: &str,
    ) -> Result<Result<(), AddPortError>, UpnpError> {
        self.timed(
            "AddPortMapping",
            self.inner.add_port(
                protocol.to_igd(),
                external_port,
                SocketAddr::V4(local),
                lease,
                description,
            ),
        )
        .await
    }

    fn add_port_error(&self, protocol: Protocol, port: u16, e: AddPortError) -> UpnpError {
        const ACTION: &str = "AddPortMapping";
        match e {
            AddPortError::ActionNotAuthorized => UpnpError::NotAuthorized {
                gateway: self.addr(),
                action: ACTION,
            },
            AddPortError::PortInUse => UpnpError::PortInUse {
                gateway: self.addr(),
                protocol,
                port,
            },
            AddPortError::RequestError(e) => self.request_error(ACTION, e),
            other => UpnpError::Gateway {
                gateway: self.addr(),
                action: ACTION,
                source: Box::new(other),
            },
        }
    }

    fn request_error(&self, action: &'static str, e: RequestError) -> UpnpError {
        match e {
            RequestError::IoError(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                UpnpError::Timeout {
                    gateway: self.addr(),
                    action,
                    timeout: self.request_timeout,
                }
            }
            RequestError::ErrorCode(606, _) => UpnpError::NotAuthorized {
                gateway: self.addr(),
                action,
            },
            e => UpnpError::Gateway {
                gateway: self.addr(),
                action,
                source: Box::new(e),
            },
        }
    }

    async fn timed<T>(
        &self,
        action: &'static str,
        request: impl std::future::Future<Output = T>,
    ) -> Result<T, UpnpError> {
        tokio::time::timeout(self.request_timeout, request)
            .await
            .map_err(|_| UpnpError::Timeout {
                gateway: self.addr(),
                action,
                timeout: self.request_timeout,
            })
    }
}

/// A port mapping on the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// UDP or TCP.
    pub protocol: Protocol,
    /// The public address peers connect to: the router's reported external
    /// IP and the mapped port.
    pub external: SocketAddrV4,
    /// The class of the external IP: anything but `public` means another NAT
    /// above the router, so the mapping is not reachable from the internet.
    pub external_class: AddrClass,
    /// The local socket address the router forwards to.
    pub local: SocketAddrV4,
    /// The lease granted; zero means permanent (the router supports nothing
    /// else, or zero was asked for).
    pub lease: Duration,
    /// The description shown in the router's mapping table.
    pub description: String,
}

fn resolve_local(
    local: SocketAddrV4,
    gateway_local: Option<Ipv4Addr>,
) -> Result<SocketAddrV4, UpnpError> {
    if local.port() == 0 {
        return Err(UpnpError::InvalidLocal {
            local,
            reason: "port 0 cannot be mapped; bind the socket first and map its port",
        });
    }
    if !local.ip().is_unspecified() {
        return Ok(local);
    }
    match gateway_local {
        Some(ip) => Ok(SocketAddrV4::new(ip, local.port())),
        None => Err(UpnpError::InvalidLocal {
            local,
            reason: "this host's address on the gateway's LAN is unknown; \
                     give the LAN address instead of 0.0.0.0",
        }),
    }
}

/// Lease in whole seconds for the router: zero stays zero (permanent), any
/// other value is at least one second.
fn lease_secs(lease: Duration) -> u32 {
    if lease.is_zero() {
        0
    } else {
        u32::try_from(lease.as_secs()).unwrap_or(u32::MAX).max(1)
    }
}

fn absolute_url(addr: SocketAddr, url: &str) -> String {
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_owned()
    } else if url.starts_with('/') {
        format!("http://{addr}{url}")
    } else {
        format!("http://{addr}/{url}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::upnp::MappingGuard;
    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn lease_seconds() {
        assert_eq!(lease_secs(Duration::ZERO), 0);
        assert_eq!(lease_secs(Duration::from_millis(1)), 1);
        assert_eq!(lease_secs(Duration::from_millis(2500)), 2);
        assert_eq!(lease_secs(Duration::from_secs(3600)), 3600);
        assert_eq!(lease_secs(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn local_address_resolution() {
        let lan = Some(v4("192.168.1.20"));
        assert_eq!(
            resolve_local("0.0.0.0:4000".parse().unwrap(), lan).unwrap(),
            "192.168.1.20:4000".parse().unwrap()
        );
        assert_eq!(
            resolve_local("10.0.0.5:4000".parse().unwrap(), lan).unwrap(),
            "10.0.0.5:4000".parse().unwrap()
        );
        let e = resolve_local("10.0.0.5:0".parse().unwrap(), lan).unwrap_err();
        assert!(e.to_string().contains("port 0"), "{e}");
        let e = resolve_local("0.0.0.0:4000".parse().unwrap(), None).unwrap_err();
        assert!(e.to_string().contains("instead of 0.0.0.0"), "{e}");
    }

    #[test]
    fn control_url_is_absolute() {
        let a: SocketAddr = "192.168.1.1:5000".parse().unwrap();
        assert_eq!(
            absolute_url(a, "/ctl/IPConn"),
            "http://192.168.1.1:5000/ctl/IPConn"
        );
        assert_eq!(
            absolute_url(a, "ctl/IPConn"),
            "http://192.168.1.1:5000/ctl/IPConn"
        );
        assert_eq!(
            absolute_url(a, "http://192.168.1.1:1900/x"),
            "http://192.168.1.1:1900/x"
        );
    }

    /// A real igd-next gateway handle aimed at a loopback port: `control`
    /// is where its SOAP requests go.
    fn loopback_gateway(control: SocketAddr) -> Gateway {
        let schema: HashMap<String, Vec<String>> = [
            "AddPortMapping",
            "DeletePortMapping",
            "GetExternalIPAddress",
        ]
        .iter()
        .map(|a| (a.to_string(), Vec::new()))
        .collect();
        Gateway {
            inner: IgdGateway {
                addr: control,
                root_url: "/rootDesc.xml".into(),
                control_url: "/ctl/IPConn".into(),
                control_schema_url: "/WANIPCn.xml".into(),
                control_schema: schema,
                service_type: "urn:schemas-upnp-org:service:WANIPConnection:1".into(),
                provider: Tokio,
            },
            local_ip: Some(Ipv4Addr::LOCALHOST),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    #[tokio::test]
    async fn gateway_that_refuses_connections_fails_cleanly() {
        // Find a loopback port with nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let gateway = loopback_gateway(port);
        assert_eq!(gateway.control_url(), format!("http://{port}/ctl/IPConn"));
        let e = gateway.external_ip().await.unwrap_err();
        assert!(
            matches!(
                e,
                UpnpError::Gateway {
                    action: "GetExternalIPAddress",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = gateway
            .add_mapping(
                Protocol::Udp,
                "127.0.0.1:4000".parse().unwrap(),
                Duration::from_secs(60),
                "test",
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&port.to_string()), "{e}");
        // A guard with nothing in it closes without touching the network.
        MappingGuard::new(gateway).close().await.unwrap();
    }

    #[tokio::test]
    async fn silent_gateway_times_out() {
        // Accepts the TCP connection but never answers the SOAP request.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let mut gateway = loopback_gateway(addr);
        gateway.set_request_timeout(Duration::from_millis(300));
        let start = std::time::Instant::now();
        let e = gateway
            .remove_mapping(Protocol::Tcp, 4000)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                UpnpError::Timeout {
                    action: "DeletePortMapping",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        hold.abort();
    }
}
