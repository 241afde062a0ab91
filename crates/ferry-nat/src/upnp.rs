//! UPnP IGD port mapping: ask the home router to forward a public port to us.
//!
//! Built on `igd-next` (async, tokio). What this module adds on top of it:
//! bounded, retried discovery bound to the right LAN address; a mapping call
//! that prefers keeping the local port and falls back to a router-chosen
//! port; a guard that renews leases and removes mappings on exit; and a
//! one-shot [`probe`] for `ferry nat` reports.
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
//! Not here: NAT-PMP/PCP (igd-next does not speak them), IPv6 pinholes.
//!
//! The renewal timing is a sans-IO schedule (time is passed in); the rest
//! is a thin driver over igd-next, and every network await has a timeout.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use igd_next::aio::Gateway as IgdGateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{
    AddAnyPortError, AddPortError, GatewayIpVersion, GetExternalIpError, PortMappingProtocol,
    RemovePortError, RequestError, SearchError, SearchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use crate::addr::{self, AddrClass, Interface};

/// Default time to wait for a gateway to answer one SSDP search.
pub const DEFAULT_SEARCH_TIMEOUT: Duration = Duration::from_millis(2500);
/// Default number of SSDP searches before concluding there is no gateway.
pub const DEFAULT_TRIES: u32 = 2;
/// Default time to wait for the router to answer one SOAP request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many local addresses are searched from at once.
pub const MAX_SEARCH_ADDRS: usize = 4;
/// Lease used by [`probe`]'s test mapping.
pub const PROBE_LEASE: Duration = Duration::from_secs(60);

/// A renewal that failed is retried no later than this.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Renewals are never scheduled closer together than this.
const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);
/// Used to find the local address of the default route: `connect()` on a UDP
/// socket picks a route and a source address without sending anything.
/// 198.51.100.1 (TEST-NET-2) is off-link everywhere, so it follows the
/// default route.
const DEFAULT_ROUTE_PROBE: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 9));
/// Bound on the renewal task's inbox; `add` waits when it is full.
const RENEW_INBOX: usize = 32;

/// How to look for a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpnpOptions {
    /// How long one SSDP search waits for an answer (default 2.5 s).
    pub search_timeout: Duration,
    /// How many searches to make before giving up (default 2; 0 counts as 1).
    /// Discovery takes at most about `tries × search_timeout`.
    pub tries: u32,
    /// Search only from this local address (e.g. `192.168.1.20:0`). `None`
    /// (the default) picks LAN addresses automatically; see the module
    /// documentation.
    pub bind: Option<SocketAddr>,
}

impl Default for UpnpOptions {
    fn default() -> Self {
        UpnpOptions {
            search_timeout: DEFAULT_SEARCH_TIMEOUT,
            tries: DEFAULT_TRIES,
            bind: None,
        }
    }
}

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

/// Looks for a UPnP IGD gateway on the LAN.
///
/// Returns `Ok(None)` when no gateway answers within about
/// `opts.tries × opts.search_timeout` — the normal case on many networks, so
/// it is logged at debug level only. Returns an error only when an explicit
/// [`UpnpOptions::bind`] address cannot be searched from at all.
pub async fn discover(opts: &UpnpOptions) -> Result<Option<Gateway>, UpnpError> {
    let binds: Vec<SocketAddr> = match opts.bind {
        Some(bind) => vec![bind],
        None => {
            let route = match route_source(DEFAULT_ROUTE_PROBE) {
                Some(IpAddr::V4(ip)) => Some(ip),
                _ => None,
            };
            search_addrs(route, &addr::interfaces())
                .into_iter()
                .map(|ip| SocketAddr::new(IpAddr::V4(ip), 0))
                .collect()
        }
    };
    if binds.is_empty() {
        debug!("UPnP: no IPv4 LAN address to search from; no gateway");
        return Ok(None);
    }
    let tries = opts.tries.max(1);
    let mut last_error = None;
    for attempt in 1..=tries {
        debug!(attempt, tries, ?binds, "UPnP: searching for a gateway");
        let mut searches = JoinSet::new();
        for &bind in &binds {
            searches.spawn(search_once(bind, opts.search_timeout));
        }
        while let Some(joined) = searches.join_next().await {
            match joined {
                Ok((bind, Ok(found))) => {
                    // Dropping the JoinSet aborts the other searches.
                    let gateway = Gateway::new(found, bind);
                    debug!(gateway = %gateway.addr(), %bind, "UPnP: gateway found");
                    return Ok(Some(gateway));
                }
                Ok((bind, Err(SearchError::NoResponseWithinTimeout))) => {
                    debug!(%bind, "UPnP: no gateway answered");
                    last_error = None;
                }
                Ok((bind, Err(e))) => {
                    debug!(%bind, "UPnP: search failed: {e}");
                    last_error = Some((bind, e));
                }
                Err(e) => debug!("UPnP: search task failed: {e}"),
            }
        }
    }
    match (opts.bind, last_error) {
        (Some(_), Some((bind, source))) => Err(UpnpError::Search { bind, source }),
        _ => {
            debug!("UPnP: no gateway found");
            Ok(None)
        }
    }
}

/// A UPnP IGD gateway (the router) found by [`discover`].
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: IgdGateway<Tokio>,
    /// Our address on the gateway's LAN, used when a mapping's local address
    /// is `0.0.0.0`.
    local_ip: Option<Ipv4Addr>,
    request_timeout: Duration,
}

impl Gateway {
    fn new(inner: IgdGateway<Tokio>, bind: SocketAddr) -> Gateway {
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
    /// [`MappingGuard`] does).
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
    async fn renew(&self, mapping: &Mapping) -> Result<(), UpnpError> {
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

/// Keeps mappings alive: renews each at half its lease in a background task,
/// and removes them all on [`close`](MappingGuard::close) — or, best effort,
/// on drop (a removal task is spawned if a tokio runtime is running;
/// otherwise the mappings expire with their leases).
///
/// ```text
/// add() --Mapping--> renewal task (mpsc inbox, bounded)
///                      sleeps until the next RenewSchedule deadline,
///                      re-adds due mappings, reschedules (lease/2, or a
///                      retry after a failure)
/// close() -- aborts the task, then DeletePortMapping for each mapping
/// ```
#[derive(Debug)]
pub struct MappingGuard {
    gateway: Gateway,
    mappings: Vec<Mapping>,
    renewer: Option<Renewer>,
}

#[derive(Debug)]
struct Renewer {
    inbox: mpsc::Sender<Mapping>,
    task: JoinHandle<()>,
}

impl MappingGuard {
    /// A guard for mappings on `gateway`; it holds none yet.
    pub fn new(gateway: Gateway) -> Self {
        MappingGuard {
            gateway,
            mappings: Vec::new(),
            renewer: None,
        }
    }

    /// Adds a mapping (see [`Gateway::add_mapping`]) and keeps it alive until
    /// the guard is closed or dropped. Must be called inside a tokio runtime.
    pub async fn add(
        &mut self,
        protocol: Protocol,
        local: SocketAddrV4,
        lease: Duration,
        description: &str,
    ) -> Result<Mapping, UpnpError> {
        let mapping = self
            .gateway
            .add_mapping(protocol, local, lease, description)
            .await?;
        let key = (mapping.protocol, mapping.external.port());
        self.mappings
            .retain(|m| (m.protocol, m.external.port()) != key);
        self.mappings.push(mapping.clone());
        if !mapping.lease.is_zero() {
            self.track(mapping.clone()).await;
        }
        Ok(mapping)
    }

    /// The mappings held, in the order they were added.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// The gateway the mappings live on.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Stops renewing and removes every mapping from the router. Tries them
    /// all; returns the first error, if any.
    pub async fn close(mut self) -> Result<(), UpnpError> {
        if let Some(renewer) = self.renewer.take() {
            renewer.task.abort();
            // Wait for it to stop so no renewal races the removals.
            let _ = renewer.task.await;
        }
        let mappings = std::mem::take(&mut self.mappings);
        remove_all(&self.gateway, &mappings).await
    }

    /// Hands `mapping` (already in `self.mappings`) to the renewal task,
    /// starting the task if needed.
    async fn track(&mut self, mapping: Mapping) {
        let delivered = match &self.renewer {
            Some(renewer) => renewer.inbox.send(mapping).await.is_ok(),
            None => false,
        };
        if !delivered {
            self.start_renewer();
        }
    }

    /// Starts a renewal task for every leased mapping this guard holds.
    fn start_renewer(&mut self) {
        if let Some(old) = self.renewer.take() {
            debug!("UPnP: restarting the renewal task");
            old.task.abort();
        }
        let (inbox, rx) = mpsc::channel(RENEW_INBOX);
        let initial: Vec<Mapping> = self
            .mappings
            .iter()
            .filter(|m| !m.lease.is_zero())
            .cloned()
            .collect();
        let task = tokio::spawn(renew_loop(self.gateway.clone(), initial, rx));
        self.renewer = Some(Renewer { inbox, task });
    }
}

impl Drop for MappingGuard {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.task.abort();
        }
        if self.mappings.is_empty() {
            return;
        }
        let mappings = std::mem::take(&mut self.mappings);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let gateway = self.gateway.clone();
                handle.spawn(async move {
                    if let Err(e) = remove_all(&gateway, &mappings).await {
                        debug!("UPnP: removing mappings on drop failed: {e}");
                    }
                });
            }
            Err(_) => debug!(
                count = mappings.len(),
                "UPnP: guard dropped outside a runtime; mappings expire with their leases"
            ),
        }
    }
}

/// What [`probe`] found, for `ferry nat` reports. Serializes (JSON) with
/// these snake_case field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpnpReport {
    /// `gateway`: the gateway's control URL, or `null` when none answered.
    pub gateway: Option<String>,
    /// `external_ip`: the external address the gateway reported.
    pub external_ip: Option<IpAddr>,
    /// `external_ip_class`: its class (`public`, `private`, `shared_cgnat`,
    /// `documentation`, ...); anything but public means a NAT above the
    /// gateway.
    pub external_ip_class: Option<AddrClass>,
    /// `test_mapping`: the outcome of mapping a UDP port for a minute.
    pub test_mapping: TestMapping,
    /// `error`: why discovery or the external-address query failed, if it did.
    pub error: Option<String>,
}

/// The outcome of [`probe`]'s test mapping. Serializes as an object with a
/// `status` field: `{"status":"mapped","external":"203.0.113.7:4000",
/// "removed":true}`, `{"status":"failed","error":"..."}` or
/// `{"status":"not_tried"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TestMapping {
    /// The gateway mapped a port.
    Mapped {
        /// `external`: the mapped external address.
        external: SocketAddrV4,
        /// `removed`: whether the test mapping was removed again.
        removed: bool,
    },
    /// The gateway refused or failed.
    Failed {
        /// `error`: what went wrong.
        error: String,
    },
    /// No gateway, or its external address was unusable.
    NotTried,
}

/// One-shot UPnP check for reports: discover a gateway, read its external
/// address, map `local` (UDP, lease [`PROBE_LEASE`]) and remove the mapping
/// again. Never fails; failures are described in the report.
pub async fn probe(opts: &UpnpOptions, local: SocketAddrV4) -> UpnpReport {
    let mut report = UpnpReport {
        gateway: None,
        external_ip: None,
        external_ip_class: None,
        test_mapping: TestMapping::NotTried,
        error: None,
    };
    let gateway = match discover(opts).await {
        Ok(Some(gateway)) => gateway,
        Ok(None) => return report,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    report.gateway = Some(gateway.control_url());
    match gateway.external_ip().await {
        Ok(ip) => {
            report.external_ip = Some(ip);
            report.external_ip_class = Some(addr::classify(ip));
        }
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    }
    report.test_mapping = match gateway
        .add_mapping(Protocol::Udp, local, PROBE_LEASE, "ferry nat probe")
        .await
    {
        Ok(mapping) => {
            let removed = gateway
                .remove_mapping(mapping.protocol, mapping.external.port())
                .await;
            if let Err(e) = &removed {
                debug!("UPnP: removing the probe mapping failed: {e}");
            }
            TestMapping::Mapped {
                external: mapping.external,
                removed: removed.is_ok(),
            }
        }
        Err(e) => TestMapping::Failed {
            error: e.to_string(),
        },
    };
    report
}

// ---------------------------------------------------------------- helpers

async fn search_once(
    bind: SocketAddr,
    timeout: Duration,
) -> (SocketAddr, Result<IgdGateway<Tokio>, SearchError>) {
    let mut options = SearchOptions::default();
    options.bind_addr = bind;
    options.timeout = Some(timeout);
    options.single_search_timeout = Some(timeout);
    options.gateway_ip_version = GatewayIpVersion::V4;
    // igd-next bounds the search by `timeout` itself; this outer bound only
    // guards against that changing.
    let search = igd_next::aio::tokio::search_gateway(options);
    let result = match tokio::time::timeout(timeout + Duration::from_millis(500), search).await {
        Ok(result) => result,
        Err(_) => Err(SearchError::NoResponseWithinTimeout),
    };
    (bind, result)
}

async fn remove_all(gateway: &Gateway, mappings: &[Mapping]) -> Result<(), UpnpError> {
    let mut first_error = None;
    for mapping in mappings {
        match gateway
            .remove_mapping(mapping.protocol, mapping.external.port())
            .await
        {
            Ok(()) => {
                debug!(external = %mapping.external, protocol = %mapping.protocol, "UPnP: mapping removed")
            }
            Err(e) => {
                debug!(external = %mapping.external, "UPnP: removing mapping failed: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

type MappingKey = (Protocol, u16);

async fn renew_loop(gateway: Gateway, initial: Vec<Mapping>, mut inbox: mpsc::Receiver<Mapping>) {
    let mut schedule = RenewSchedule::default();
    let mut held: HashMap<MappingKey, Mapping> = HashMap::new();
    let now = tokio::time::Instant::now().into_std();
    for mapping in initial {
        let key = (mapping.protocol, mapping.external.port());
        schedule.insert(key, mapping.lease, now);
        held.insert(key, mapping);
    }
    loop {
        let deadline = schedule.next_deadline();
        tokio::select! {
            biased;
            message = inbox.recv() => match message {
                Some(mapping) => {
                    let key = (mapping.protocol, mapping.external.port());
                    schedule.insert(key, mapping.lease, tokio::time::Instant::now().into_std());
                    held.insert(key, mapping);
                }
                None => return,
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                let now = tokio::time::Instant::now().into_std();
                for key in schedule.due(now) {
                    let Some(mapping) = held.get(&key) else {
                        schedule.remove(&key);
                        continue;
                    };
                    let result = gateway.renew(mapping).await;
                    let now = tokio::time::Instant::now().into_std();
                    match result {
                        Ok(()) => {
                            debug!(external = %mapping.external, "UPnP: lease renewed");
                            schedule.renewed(&key, now);
                        }
                        Err(UpnpError::PortInUse { .. }) => {
                            debug!(external = %mapping.external,
                                "UPnP: mapping lost to another host; no longer renewed");
                            schedule.remove(&key);
                            held.remove(&key);
                        }
                        Err(e) => {
                            debug!(external = %mapping.external, "UPnP: renewal failed: {e}");
                            schedule.failed(&key, now);
                        }
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}

/// When to renew which lease (sans-IO: the caller passes the time in).
///
/// A lease is renewed at half its length; a failed renewal is retried after
/// half the time left (between 1 s and 30 s), or every 30 s once the lease has
/// run out (the router may come back). Permanent mappings (lease zero) are
/// never renewed.
#[derive(Debug)]
struct RenewSchedule<K = MappingKey> {
    entries: Vec<ScheduleEntry<K>>,
}

impl<K> Default for RenewSchedule<K> {
    fn default() -> Self {
        RenewSchedule {
            entries: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct ScheduleEntry<K> {
    key: K,
    lease: Duration,
    renew_at: Instant,
    expires_at: Instant,
}

impl<K: PartialEq + Clone> RenewSchedule<K> {
    /// Starts (or restarts) tracking a lease just granted at `now`.
    fn insert(&mut self, key: K, lease: Duration, now: Instant) {
        self.remove(&key);
        if lease.is_zero() {
            return;
        }
        self.entries.push(ScheduleEntry {
            key,
            lease,
            renew_at: now + (lease / 2).max(MIN_RENEW_INTERVAL),
            expires_at: now + lease,
        });
    }

    fn remove(&mut self, key: &K) {
        self.entries.retain(|e| e.key != *key);
    }

    /// The earliest renewal time, if any lease is tracked.
    fn next_deadline(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.renew_at).min()
    }

    /// The keys whose renewal is due at `now`.
    fn due(&self, now: Instant) -> Vec<K> {
        self.entries
            .iter()
            .filter(|e| e.renew_at <= now)
            .map(|e| e.key.clone())
            .collect()
    }

    /// The router granted the lease again at `now`.
    fn renewed(&mut self, key: &K, now: Instant) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.key == *key) {
            entry.renew_at = now + (entry.lease / 2).max(MIN_RENEW_INTERVAL);
            entry.expires_at = now + entry.lease;
        }
    }

    /// The renewal attempted at `now` failed.
    fn failed(&mut self, key: &K, now: Instant) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.key == *key) {
            let left = entry.expires_at.saturating_duration_since(now);
            let wait = if left.is_zero() {
                MAX_RETRY
            } else {
                (left / 2).clamp(MIN_RENEW_INTERVAL, MAX_RETRY)
            };
            entry.renew_at = now + wait;
        }
    }
}

/// The local addresses to search from, best first (see the module doc):
/// the default route's source address, then private, then CGNAT interface
/// addresses; IPv4 only, no duplicates, at most [`MAX_SEARCH_ADDRS`].
fn search_addrs(route_source: Option<Ipv4Addr>, interfaces: &[Interface]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    let push = |ip: Ipv4Addr, out: &mut Vec<Ipv4Addr>| {
        if !out.contains(&ip) && out.len() < MAX_SEARCH_ADDRS {
            out.push(ip);
        }
    };
    if let Some(ip) = route_source {
        if matches!(
            addr::classify(IpAddr::V4(ip)),
            AddrClass::Private
                | AddrClass::SharedCgnat
                | AddrClass::Public
                | AddrClass::Documentation
        ) {
            push(ip, &mut out);
        }
    }
    for wanted in [AddrClass::Private, AddrClass::SharedCgnat] {
        for iface in interfaces {
            if let IpAddr::V4(ip) = iface.addr {
                if iface.class == wanted {
                    push(ip, &mut out);
                }
            }
        }
    }
    out
}

/// The local source address the kernel would use towards `dst`. No packet
/// is sent: `connect()` on a UDP socket only picks a route.
fn route_source(dst: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match dst {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(dst).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
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
    use super::*;

    fn iface(name: &str, ip: &str) -> Interface {
        let addr: IpAddr = ip.parse().unwrap();
        Interface {
            name: name.into(),
            addr,
            class: addr::classify(addr),
        }
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn search_addrs_prefer_default_route_then_private_then_cgnat() {
        let ifaces = [
            iface("lo", "127.0.0.1"),
            iface("tun0", "100.72.1.2"),
            iface("eth0", "192.168.1.20"),
            iface("eth0", "fe80::1"),
            iface("wlan0", "169.254.3.4"),
            iface("docker0", "172.17.0.1"),
            iface("eth1", "8.8.4.4"),
        ];
        assert_eq!(
            search_addrs(Some(v4("192.168.1.20")), &ifaces),
            [v4("192.168.1.20"), v4("172.17.0.1"), v4("100.72.1.2")],
            "route source first and not repeated; loopback, link-local, IPv6 and \
             non-route public addresses left out"
        );
        assert_eq!(
            search_addrs(Some(v4("100.72.1.2")), &ifaces),
            [v4("100.72.1.2"), v4("192.168.1.20"), v4("172.17.0.1")]
        );
        assert_eq!(
            search_addrs(None, &ifaces),
            [v4("192.168.1.20"), v4("172.17.0.1"), v4("100.72.1.2")]
        );
        // A loopback or link-local "route source" is never used.
        assert_eq!(
            search_addrs(Some(v4("127.0.0.1")), &ifaces[..1]),
            Vec::<Ipv4Addr>::new()
        );
        assert_eq!(
            search_addrs(Some(v4("169.254.3.4")), &[]),
            Vec::<Ipv4Addr>::new()
        );
        // A public route source is still searched from (the host may be the
        // DMZ host of a router).
        assert_eq!(search_addrs(Some(v4("8.8.4.4")), &[]), [v4("8.8.4.4")]);
    }

    #[test]
    fn search_addrs_are_capped() {
        let ifaces: Vec<Interface> = (1..=10)
            .map(|i| iface(&format!("eth{i}"), &format!("10.0.{i}.2")))
            .collect();
        let addrs = search_addrs(None, &ifaces);
        assert_eq!(addrs.len(), MAX_SEARCH_ADDRS);
        assert_eq!(addrs[0], v4("10.0.1.2"));
    }

    #[test]
    fn route_source_of_loopback_is_loopback() {
        // connect() on UDP sends nothing; loopback keeps this test local.
        assert_eq!(
            route_source("127.0.0.1:9".parse().unwrap()),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
    }

    #[test]
    fn schedule_renews_at_half_lease() {
        let t0 = Instant::now();
        let mut s = RenewSchedule::<u8>::default();
        assert_eq!(s.next_deadline(), None);
        s.insert(1, Duration::from_secs(120), t0);
        s.insert(2, Duration::from_secs(60), t0);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(30)));
        assert!(s.due(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(s.due(t0 + Duration::from_secs(30)), [2]);
        s.renewed(&2, t0 + Duration::from_secs(30));
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(s.due(t0 + Duration::from_secs(60)), [1, 2]);
        s.remove(&1);
        assert_eq!(s.due(t0 + Duration::from_secs(60)), [2]);
    }

    #[test]
    fn schedule_ignores_permanent_and_floors_tiny_leases() {
        let t0 = Instant::now();
        let mut s = RenewSchedule::<u8>::default();
        s.insert(1, Duration::ZERO, t0);
        assert_eq!(s.next_deadline(), None);
        s.insert(2, Duration::from_millis(100), t0);
        assert_eq!(s.next_deadline(), Some(t0 + MIN_RENEW_INTERVAL));
        // Re-inserting replaces rather than duplicates.
        s.insert(2, Duration::from_secs(10), t0);
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn schedule_retries_failed_renewal_within_the_lease_then_every_30s() {
        let t0 = Instant::now();
        let mut s = RenewSchedule::<u8>::default();
        s.insert(1, Duration::from_secs(120), t0);
        let t = t0 + Duration::from_secs(60);
        s.failed(&1, t);
        // 60 s left: retry after 30 s (capped).
        assert_eq!(s.next_deadline(), Some(t + Duration::from_secs(30)));
        let t = t0 + Duration::from_secs(110);
        s.failed(&1, t);
        // 10 s left: retry after 5 s, before the lease ends.
        assert_eq!(s.next_deadline(), Some(t + Duration::from_secs(5)));
        let t = t0 + Duration::from_millis(119_500);
        s.failed(&1, t);
        assert_eq!(s.next_deadline(), Some(t + MIN_RENEW_INTERVAL));
        let t = t0 + Duration::from_secs(200);
        s.failed(&1, t);
        // Expired: keep trying, slowly.
        assert_eq!(s.next_deadline(), Some(t + MAX_RETRY));
        s.renewed(&1, t);
        assert_eq!(s.next_deadline(), Some(t + Duration::from_secs(60)));
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

    #[test]
    fn report_serializes_with_documented_field_names() {
        let report = UpnpReport {
            gateway: Some("http://10.77.0.1:5000/ctl/IPConn".into()),
            external_ip: Some("203.0.113.77".parse().unwrap()),
            external_ip_class: Some(AddrClass::Documentation),
            test_mapping: TestMapping::Mapped {
                external: "203.0.113.77:4000".parse().unwrap(),
                removed: true,
            },
            error: None,
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "gateway": "http://10.77.0.1:5000/ctl/IPConn",
                "external_ip": "203.0.113.77",
                "external_ip_class": "documentation",
                "test_mapping": {"status": "mapped", "external": "203.0.113.77:4000", "removed": true},
                "error": null,
            })
        );
        let back: UpnpReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        assert_eq!(
            serde_json::to_value(TestMapping::Failed { error: "no".into() }).unwrap(),
            serde_json::json!({"status": "failed", "error": "no"})
        );
        assert_eq!(
            serde_json::to_value(TestMapping::NotTried).unwrap(),
            serde_json::json!({"status": "not_tried"})
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
    async fn discover_without_gateway_is_quiet_none_within_tries_times_timeout() {
        // Bound to 127.0.0.1, Linux sends the SSDP multicast out of `lo`
        // only (the interface owning the source address), so nothing leaves
        // this host. Real gateways are covered by scripts/upnp-check.sh.
        let opts = UpnpOptions {
            search_timeout: Duration::from_millis(300),
            tries: 2,
            bind: Some("127.0.0.1:0".parse().unwrap()),
        };
        let start = std::time::Instant::now();
        let found = discover(&opts).await.expect("no gateway is not an error");
        let took = start.elapsed();
        assert!(found.is_none());
        assert!(
            took >= Duration::from_millis(600),
            "searched twice: {took:?}"
        );
        assert!(took < Duration::from_millis(1800), "bounded: {took:?}");
    }

    #[tokio::test]
    async fn discover_from_a_foreign_bind_address_is_an_error() {
        // 192.0.2.1 is not on this host, so bind fails before anything is sent.
        let opts = UpnpOptions {
            search_timeout: Duration::from_millis(200),
            tries: 1,
            bind: Some("192.0.2.1:0".parse().unwrap()),
        };
        let e = discover(&opts).await.unwrap_err();
        assert!(matches!(e, UpnpError::Search { .. }), "{e:?}");
        assert!(e.to_string().contains("192.0.2.1"), "{e}");
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

    #[tokio::test]
    async fn probe_without_gateway_reports_nothing_found() {
        let opts = UpnpOptions {
            search_timeout: Duration::from_millis(200),
            tries: 1,
            bind: Some("127.0.0.1:0".parse().unwrap()),
        };
        let report = probe(&opts, "127.0.0.1:4000".parse().unwrap()).await;
        assert_eq!(report.gateway, None);
        assert_eq!(report.external_ip, None);
        assert_eq!(report.test_mapping, TestMapping::NotTried);
        assert_eq!(report.error, None);
    }

    // ------------------------------------------------ against a real router

    /// Runs against a real UPnP IGD (miniupnpd): run via
    /// `scripts/upnp-check.sh`, which builds the network namespaces, starts
    /// miniupnpd and sets the environment. Never run on a real LAN: it
    /// searches with multicast from the default interface.
    #[tokio::test]
    #[ignore = "needs a real UPnP gateway: scripts/upnp-check.sh"]
    async fn upnp_against_real_gateway() {
        let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
        let expect_ext: Ipv4Addr = env("FERRY_UPNP_EXTERNAL_IP").parse().unwrap();
        let lan_ip: Ipv4Addr = env("FERRY_UPNP_LAN_IP").parse().unwrap();
        let port: u16 = env("FERRY_UPNP_PORT").parse().unwrap();
        let other_host: Ipv4Addr = env("FERRY_UPNP_OTHER_HOST").parse().unwrap();

        // Automatic bind address selection (default route source).
        let start = std::time::Instant::now();
        let gateway = discover(&UpnpOptions::default())
            .await
            .unwrap()
            .expect("gateway found");
        eprintln!(
            "found {} in {:?} (local {:?})",
            gateway.control_url(),
            start.elapsed(),
            gateway.local_ip()
        );
        assert_eq!(gateway.local_ip(), Some(lan_ip));
        let ip = gateway.external_ip().await.unwrap();
        assert_eq!(ip, IpAddr::V4(expect_ext));

        // Same-port UDP mapping of a real socket; an outside host's datagram
        // arrives through it (the script sends them).
        let socket = tokio::net::UdpSocket::bind((lan_ip, port)).await.unwrap();
        let mut guard = MappingGuard::new(gateway.clone());
        let udp = guard
            .add(
                Protocol::Udp,
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
                Duration::from_secs(120),
                "ferry upnp-check udp",
            )
            .await
            .unwrap();
        assert_eq!(udp.external, SocketAddrV4::new(expect_ext, port));
        assert_eq!(udp.local, SocketAddrV4::new(lan_ip, port));
        assert_eq!(udp.external_class, AddrClass::Documentation);
        let mut buf = [0u8; 64];
        let (n, from) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
            .await
            .expect("a datagram through the mapping within 10 s")
            .unwrap();
        eprintln!(
            "received {:?} from {from}",
            String::from_utf8_lossy(&buf[..n])
        );
        assert!(buf[..n].starts_with(b"ferry-upnp-ping"));

        // Another host holds external TCP port `port`: we get another port.
        gateway
            .inner
            .add_port(
                PortMappingProtocol::TCP,
                port,
                SocketAddr::new(IpAddr::V4(other_host), port),
                120,
                "someone else",
            )
            .await
            .unwrap();
        let tcp = guard
            .add(
                Protocol::Tcp,
                SocketAddrV4::new(lan_ip, port),
                Duration::from_secs(120),
                "ferry upnp-check tcp",
            )
            .await
            .unwrap();
        assert_ne!(tcp.external.port(), port, "port in use by another host");
        assert_eq!(tcp.external.ip(), &expect_ext);
        assert_eq!(guard.mappings(), &[udp.clone(), tcp.clone()]);
        let listed = list_mappings(&gateway).await;
        assert!(listed.contains(&(Protocol::Udp, port, lan_ip.to_string())));
        assert!(listed.contains(&(Protocol::Tcp, tcp.external.port(), lan_ip.to_string())));
        assert!(listed.contains(&(Protocol::Tcp, port, other_host.to_string())));

        // close() removes ours and only ours; removing twice is fine.
        guard.close().await.unwrap();
        let listed = list_mappings(&gateway).await;
        assert_eq!(listed, [(Protocol::Tcp, port, other_host.to_string())]);
        gateway.remove_mapping(Protocol::Udp, port).await.unwrap();
        gateway.remove_mapping(Protocol::Tcp, port).await.unwrap();
        assert!(list_mappings(&gateway).await.is_empty());

        // Renewal: a 4 s lease held by a guard outlives 7 s; an unguarded
        // one expires.
        let mut guard = MappingGuard::new(gateway.clone());
        let kept = guard
            .add(
                Protocol::Udp,
                SocketAddrV4::new(lan_ip, port),
                Duration::from_secs(4),
                "kept",
            )
            .await
            .unwrap();
        let lapsed = gateway
            .add_mapping(
                Protocol::Udp,
                SocketAddrV4::new(lan_ip, port + 1),
                Duration::from_secs(4),
                "lapsed",
            )
            .await
            .unwrap();
        assert_eq!(kept.lease, Duration::from_secs(4));
        tokio::time::sleep(Duration::from_secs(7)).await;
        let listed = list_mappings(&gateway).await;
        assert!(
            listed.contains(&(Protocol::Udp, port, lan_ip.to_string())),
            "{listed:?}"
        );
        assert!(
            !listed.iter().any(|m| m.1 == lapsed.external.port()),
            "unrenewed lease expired: {listed:?}"
        );
        // Drop removes best effort in the background.
        drop(guard);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(list_mappings(&gateway).await.is_empty());

        // The probe maps and unmaps.
        let report = probe(&UpnpOptions::default(), SocketAddrV4::new(lan_ip, port)).await;
        eprintln!("{}", serde_json::to_string(&report).unwrap());
        assert_eq!(
            report.test_mapping,
            TestMapping::Mapped {
                external: SocketAddrV4::new(expect_ext, port),
                removed: true
            }
        );
        assert_eq!(report.external_ip_class, Some(AddrClass::Documentation));
        assert!(list_mappings(&gateway).await.is_empty());
    }

    async fn list_mappings(gateway: &Gateway) -> Vec<(Protocol, u16, String)> {
        let mut out = Vec::new();
        for i in 0..64 {
            match gateway.inner.get_generic_port_mapping_entry(i).await {
                Ok(e) => out.push((
                    match e.protocol {
                        PortMappingProtocol::UDP => Protocol::Udp,
                        PortMappingProtocol::TCP => Protocol::Tcp,
                    },
                    e.external_port,
                    e.internal_client,
                )),
                Err(_) => break,
            }
        }
        out
    }
}
