//! RFC 5780 NAT behaviour discovery, sans-IO, plus a tokio driver (the
//! shared [`drive_udp`] loop).
//!
//! All tests run from one local UDP socket against one RFC 5780 server
//! with primary address `P` (IP `Pi`, port `Pp`) and alternate `A`
//! (`Ai`, `Ap`, learnt from OTHER-ADDRESS), one after another:
//!
//! ```text
//! 1. Binding -> P                            no answer: UDP blocked
//!                                            mapped M1, OTHER-ADDRESS A
//!                                            (no A: Unknown, single-IP server)
//! 2. Binding -> P, change IP + port          answer from A:      filtering endpoint-independent
//! 3. Binding -> P, change port (if 2 failed) answer from Pi:Ap:  address-dependent
//!                                            no answer:          address-and-port-dependent
//! 4. if M1 == local address: no NAT, stop
//!    Binding -> Ai:Pp  -> M2                 M2 == M1:           mapping endpoint-independent
//! 5. Binding -> A      -> M3                 M3 == M2:           address-dependent
//!                                            otherwise:          address-and-port-dependent
//! port preservation: M1's port == the local port
//! ```
//!
//! The filtering tests run before the mapping tests on purpose: once we have
//! sent to `A`, a restricted NAT lets `A`'s answers in and every NAT would
//! look endpoint-independent.
//!
//! A test that expects "no answer" waits for the whole retransmission
//! schedule, so [`DiscoveryConfig::default`] uses a short one (3.75 s).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::drive::{DriveOptions, UdpMachine, drive_udp};
use crate::stun::{
    BindingRequest, BindingResult, RetransmitConfig, StunError, StunTransaction, Transmit,
};

/// How the NAT chooses the public address:port for our outgoing traffic
/// (RFC 4787 / RFC 5780 section 4.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Mapping {
    /// The server saw our own address: no NAT between us and it.
    NoNat,
    /// One public port for all destinations ("cone"): hole punching works.
    EndpointIndependent,
    /// A new public port per destination IP.
    AddressDependent,
    /// A new public port per destination IP and port ("symmetric").
    AddressAndPortDependent,
    /// Could not be determined.
    Unknown {
        /// Why.
        why: String,
    },
}

/// Which inbound packets the NAT lets through to a mapping (RFC 5780
/// section 4.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Filtering {
    /// From anywhere ("full cone").
    EndpointIndependent,
    /// Only from IPs we sent to ("restricted cone").
    AddressDependent,
    /// Only from IP:ports we sent to ("port-restricted cone").
    AddressAndPortDependent,
    /// Could not be determined.
    Unknown {
        /// Why.
        why: String,
    },
}

/// The outcome of behaviour discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatReport {
    /// The local socket address the tests ran from.
    pub local: SocketAddr,
    /// Our public address:port as the primary server address saw it.
    pub mapped: Option<SocketAddr>,
    /// True when the server never answered: UDP is blocked (or the server
    /// is down).
    pub udp_blocked: bool,
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Filtering behaviour.
    pub filtering: Filtering,
    /// Whether the NAT kept our local port as the public port (`None` when
    /// there was no answer).
    pub port_preserved: Option<bool>,
}

/// Parameters of the discovery procedure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Retransmission schedule of each test. Tests that expect silence wait
    /// for all of it.
    pub retransmit: RetransmitConfig,
    /// This host's IPs: when the local socket is bound to the wildcard
    /// address, a mapped address equal to one of these (with the local
    /// port) means "no NAT".
    pub host_ips: Vec<IpAddr>,
}

impl Default for DiscoveryConfig {
    /// RTO 250 ms, 4 sends, last wait 8·RTO: sends at 0, 0.25, 0.75 and
    /// 1.75 s, gives up at 3.75 s.
    fn default() -> Self {
        Self {
            retransmit: RetransmitConfig {
                rto: std::time::Duration::from_millis(250),
                max_sends: 4,
                last_wait_factor: 8,
            },
            host_ips: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Primary,
    FilterChangeBoth,
    FilterChangePort,
    MapAltIp,
    MapAlt,
}

/// The RFC 5780 discovery procedure, sans-IO. Drive it like a
/// [`StunTransaction`]: `poll_transmit`, `poll_timeout`/`handle_timeout`,
/// `handle_datagram`, then [`poll_report`](Self::poll_report).
#[derive(Debug)]
pub struct NatDiscovery {
    local: SocketAddr,
    server: SocketAddr,
    config: DiscoveryConfig,
    id_base: [u8; 12],
    tests_started: u32,
    step: Step,
    current: Option<StunTransaction>,
    mapped1: Option<SocketAddr>,
    other: Option<SocketAddr>,
    mapped2: Option<SocketAddr>,
    mapped3: Option<SocketAddr>,
    filtering: Option<Filtering>,
    report: Option<NatReport>,
    finished: bool,
}

impl NatDiscovery {
    /// Starts discovery from local socket `local` against the server's
    /// primary address `server`. `id_seed` must be fresh random bytes; each
    /// test's transaction id is derived from it.
    pub fn new(
        now: Instant,
        local: SocketAddr,
        server: SocketAddr,
        config: DiscoveryConfig,
        id_seed: [u8; 12],
    ) -> Result<Self, StunError> {
        let mut this = Self {
            local,
            server,
            config,
            id_base: id_seed,
            tests_started: 0,
            step: Step::Primary,
            current: None,
            mapped1: None,
            other: None,
            mapped2: None,
            mapped3: None,
            filtering: None,
            report: None,
            finished: false,
        };
        this.start(now, Step::Primary)?;
        Ok(this)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.current.as_mut()?.poll_transmit()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.current.as_ref()?.poll_timeout()
    }

    /// Advances timers; may finish the current test and start the next.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(tx) = self.current.as_mut() {
            tx.handle_timeout(now);
        }
        self.advance(now);
    }

    /// Feeds a received datagram. Returns whether it belonged to the
    /// current test.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> bool {
        let Some(tx) = self.current.as_mut() else {
            return false;
        };
        let ours = tx.handle_datagram(now, from, bytes);
        self.advance(now);
        ours
    }

    /// Takes the report once discovery has finished.
    pub fn poll_report(&mut self) -> Option<NatReport> {
        self.report.take()
    }

    /// Whether discovery has finished.
    pub fn is_done(&self) -> bool {
        self.finished
    }

    fn start(&mut self, now: Instant, step: Step) -> Result<(), StunError> {
        let (dst, request) = match step {
            Step::Primary => (self.server, BindingRequest::default()),
            Step::FilterChangeBoth => (
                self.server,
                BindingRequest {
                    change_ip: true,
                    change_port: true,
                },
            ),
            Step::FilterChangePort => (
                self.server,
                BindingRequest {
                    change_ip: false,
                    change_port: true,
                },
            ),
            Step::MapAltIp | Step::MapAlt => {
                let other = self.other.unwrap_or(self.server);
                let dst = if step == Step::MapAltIp {
                    SocketAddr::new(other.ip(), self.server.port())
                } else {
                    other
                };
                (dst, BindingRequest::default())
            }
        };
        let mut id = self.id_base;
        let counter =
            u32::from_be_bytes([id[8], id[9], id[10], id[11]]).wrapping_add(self.tests_started);
        id[8..12].copy_from_slice(&counter.to_be_bytes());
        self.tests_started += 1;
        self.step = step;
        self.current = Some(StunTransaction::new(
            now,
            id,
            dst,
            request,
            self.config.retransmit,
        )?);
        Ok(())
    }

    /// Moves to the next step when the current test has a result.
    fn advance(&mut self, now: Instant) {
        let Some(result) = self.current.as_mut().and_then(|tx| tx.poll_event()) else {
            return;
        };
        self.current = None;
        let next = self.next_step(result);
        match next {
            Some(step) => {
                if let Err(e) = self.start(now, step) {
                    self.finish_unknown(format!("cannot encode request: {e}"));
                }
            }
            None => self.finish(),
        }
    }

    fn next_step(&mut self, result: Result<BindingResult, StunError>) -> Option<Step> {
        match self.step {
            Step::Primary => {
                let r = match result {
                    Ok(r) => r,
                    Err(StunError::Timeout { .. }) => {
                        self.report = Some(NatReport {
                            local: self.local,
                            mapped: None,
                            udp_blocked: true,
                            mapping: Mapping::Unknown {
                                why: "no answer from the STUN server: UDP is blocked or the server is down".into(),
                            },
                            filtering: Filtering::Unknown {
                                why: "no answer from the STUN server".into(),
                            },
                            port_preserved: None,
                        });
                        self.finished = true;
                        return None;
                    }
                    Err(e) => {
                        self.finish_unknown(format!("the STUN server failed: {e}"));
                        return None;
                    }
                };
                self.mapped1 = Some(r.mapped);
                match r.other_address {
                    Some(o)
                        if o.ip() != self.server.ip()
                            && o.port() != self.server.port()
                            && o.is_ipv4() == self.server.is_ipv4() =>
                    {
                        self.other = Some(o);
                        Some(Step::FilterChangeBoth)
                    }
                    Some(o) => {
                        debug!(other = %o, "NAT discovery: unusable OTHER-ADDRESS");
                        self.finish_unknown(format!(
                            "the STUN server's OTHER-ADDRESS {o} does not differ from {} in both IP and port",
                            self.server
                        ));
                        None
                    }
                    None => {
                        self.finish_unknown(
                            "the STUN server has a single address (no OTHER-ADDRESS), so NAT behaviour cannot be tested; give it a second IP and port".into(),
                        );
                        None
                    }
                }
            }
            Step::FilterChangeBoth => match result {
                Ok(r)
                    if r.source.ip() != self.server.ip()
                        && r.source.port() != self.server.port() =>
                {
                    self.filtering = Some(Filtering::EndpointIndependent);
                    self.mapping_step()
                }
                Ok(r) => {
                    self.filtering = Some(Filtering::Unknown {
                        why: format!(
                            "the server ignored CHANGE-REQUEST (answered from {})",
                            r.source
                        ),
                    });
                    self.mapping_step()
                }
                Err(StunError::Timeout { .. }) => Some(Step::FilterChangePort),
                Err(e) => {
                    self.filtering = Some(Filtering::Unknown {
                        why: format!("the server refused CHANGE-REQUEST: {e}"),
                    });
                    self.mapping_step()
                }
            },
            Step::FilterChangePort => {
                self.filtering = Some(match result {
                    Ok(r)
                        if r.source.ip() == self.server.ip()
                            && r.source.port() != self.server.port() =>
                    {
                        Filtering::AddressDependent
                    }
                    Ok(r) => Filtering::Unknown {
                        why: format!(
                            "the server ignored CHANGE-REQUEST (answered from {})",
                            r.source
                        ),
                    },
                    Err(StunError::Timeout { .. }) => Filtering::AddressAndPortDependent,
                    Err(e) => Filtering::Unknown {
                        why: format!("the server refused CHANGE-REQUEST: {e}"),
                    },
                });
                self.mapping_step()
            }
            Step::MapAltIp => match result {
                Ok(r) => {
                    self.mapped2 = Some(r.mapped);
                    if Some(r.mapped) == self.mapped1 {
                        None
                    } else {
                        Some(Step::MapAlt)
                    }
                }
                Err(e) => {
                    self.mapping_failed(e);
                    None
                }
            },
            Step::MapAlt => {
                match result {
                    Ok(r) => self.mapped3 = Some(r.mapped),
                    Err(e) => self.mapping_failed(e),
                }
                None
            }
        }
    }

    /// After the filtering tests: skip the mapping tests when there is no NAT.
    fn mapping_step(&mut self) -> Option<Step> {
        if self.is_local(self.mapped1) {
            None
        } else {
            Some(Step::MapAltIp)
        }
    }

    fn is_local(&self, mapped: Option<SocketAddr>) -> bool {
        let Some(m) = mapped else { return false };
        if m == self.local {
            return true;
        }
        self.local.ip().is_unspecified()
            && m.port() == self.local.port()
            && self.config.host_ips.contains(&m.ip())
    }

    fn mapping_failed(&mut self, e: StunError) {
        let why = format!("the server's alternate address did not answer: {e}");
        self.report = Some(self.build_report(Mapping::Unknown { why }));
        self.finished = true;
    }

    fn finish(&mut self) {
        if self.finished {
            return;
        }
        let mapping = if self.is_local(self.mapped1) {
            Mapping::NoNat
        } else if self.mapped2.is_some() && self.mapped2 == self.mapped1 {
            Mapping::EndpointIndependent
        } else if let (Some(m2), Some(m3)) = (self.mapped2, self.mapped3) {
            if m2 == m3 {
                Mapping::AddressDependent
            } else {
                Mapping::AddressAndPortDependent
            }
        } else {
            Mapping::Unknown {
                why: "the mapping tests did not complete".into(),
            }
        };
        self.report = Some(self.build_report(mapping));
        self.finished = true;
    }

    fn finish_unknown(&mut self, why: String) {
        let mut report = self.build_report(Mapping::Unknown { why: why.clone() });
        if self.filtering.is_none() {
            report.filtering = Filtering::Unknown { why };
        }
        self.report = Some(report);
        self.finished = true;
    }

    fn build_report(&self, mapping: Mapping) -> NatReport {
        NatReport {
            local: self.local,
            mapped: self.mapped1,
            udp_blocked: false,
            mapping,
            filtering: self.filtering.clone().unwrap_or(Filtering::Unknown {
                why: "the filtering tests did not run".into(),
            }),
            port_preserved: self.mapped1.map(|m| m.port() == self.local.port()),
        }
    }
}

impl Mapping {
    /// Whether UDP hole punching can use the port the server saw: no NAT,
    /// or an endpoint-independent mapping.
    pub fn is_punchable(&self) -> bool {
        matches!(self, Mapping::NoNat | Mapping::EndpointIndependent)
    }
}

/// Runs [`NatDiscovery`] on `socket` (unconnected, not read by anyone else
/// meanwhile) against the RFC 5780 server whose primary address is
/// `server`. Takes a few seconds with the default configuration; when
/// `config.host_ips` is empty, this host's interface addresses are used.
pub async fn discover_udp(
    socket: &tokio::net::UdpSocket,
    server: SocketAddr,
    mut config: DiscoveryConfig,
) -> Result<NatReport, StunError> {
    use tokio::time::Instant as TokioInstant;
    let local = socket.local_addr().map_err(|source| StunError::Io {
        context: "cannot read the local UDP address".into(),
        source,
    })?;
    if config.host_ips.is_empty() {
        config.host_ips = crate::addr::interfaces()
            .into_iter()
            .map(|i| i.addr)
            .collect();
    }
    let mut discovery = NatDiscovery::new(
        TokioInstant::now().into_std(),
        local,
        server,
        config,
        rand::random(),
    )?;
    let options = DriveOptions {
        buffer_len: crate::stun::MAX_MESSAGE_LEN,
        ..DriveOptions::new("NAT discovery")
    };
    drive_udp(socket, &mut discovery, options)
        .await
        // Finished without a report cannot happen; be safe anyway.
        .ok_or(StunError::Timeout {
            server,
            sends: 0,
            waited: std::time::Duration::ZERO,
        })
}

/// Discovery ends with its report; [`discover_udp`] drives it.
impl UdpMachine for NatDiscovery {
    type Output = NatReport;

    fn poll_transmit(&mut self) -> Option<Transmit> {
        NatDiscovery::poll_transmit(self)
    }

    fn poll_output(&mut self) -> Option<NatReport> {
        self.poll_report()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        NatDiscovery::poll_timeout(self)
    }

    fn handle_timeout(&mut self, now: Instant) {
        NatDiscovery::handle_timeout(self, now);
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        NatDiscovery::handle_datagram(self, now, from, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{AltConfig, respond};
    use ferry_netsim::{Behaviour, Nat, NatConfig, PortAllocation};
    use std::time::Duration;

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Kind {
        EndpointIndependent,
        AddressDependent,
        AddressAndPortDependent,
    }

    /// An in-memory NAT (`ferry-netsim`'s) in front of one host, talking
    /// to our real responder with the RFC 5780 layout. The flags may be
    /// set until the first datagram; the NAT is made then.
    struct Net {
        mapping: Kind,
        filtering: Kind,
        /// Keep the local port as the public port for the first mapping.
        preserve_port: bool,
        /// Drop all UDP.
        blocked: bool,
        /// The server has only one address (no alternate).
        single_ip: bool,
        nat: Option<Nat>,
    }

    const LOCAL: &str = "10.0.0.2:5000";

    fn alt() -> AltConfig {
        AltConfig {
            primary: "192.0.2.1:3478".parse().unwrap(),
            alternate: "192.0.2.2:3479".parse().unwrap(),
        }
    }

    fn behaviour(kind: Kind) -> Behaviour {
        match kind {
            Kind::EndpointIndependent => Behaviour::EndpointIndependent,
            Kind::AddressDependent => Behaviour::AddressDependent,
            Kind::AddressAndPortDependent => Behaviour::AddressAndPortDependent,
        }
    }

    impl Net {
        fn new(mapping: Kind, filtering: Kind) -> Self {
            Self {
                mapping,
                filtering,
                preserve_port: false,
                blocked: false,
                single_ip: false,
                nat: None,
            }
        }

        fn nat(&mut self) -> &mut Nat {
            let config = NatConfig {
                mapping: behaviour(self.mapping),
                filtering: behaviour(self.filtering),
                allocation: if self.preserve_port {
                    PortAllocation::PreserveThenSequential {
                        first: 61000,
                        step: 7,
                    }
                } else {
                    PortAllocation::Sequential {
                        first: 61000,
                        step: 7,
                    }
                },
                blocked: self.blocked,
            };
            self.nat
                .get_or_insert_with(|| Nat::new(config, "203.0.113.9".parse().unwrap()))
        }

        /// Sends one datagram through the NAT; returns the answer that gets
        /// back in, if any.
        fn send(&mut self, t: Transmit) -> Option<(SocketAddr, Vec<u8>)> {
            let local: SocketAddr = LOCAL.parse().unwrap();
            let from = self.nat().outbound(local, t.dst)?;
            if self.single_ip && t.dst != alt().primary {
                return None;
            }
            let layout = (!self.single_ip).then(alt);
            let r = respond(&t.payload, from, t.dst, layout)?;
            self.nat()
                .inbound(from.port(), r.send_from)
                .map(|_| (r.send_from, r.payload))
        }
    }

    fn run(net: &mut Net) -> (NatReport, Duration) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut d = NatDiscovery::new(
            now,
            LOCAL.parse().unwrap(),
            alt().primary,
            DiscoveryConfig::default(),
            [0x5a; 12],
        )
        .unwrap();
        for _ in 0..1000 {
            while let Some(t) = d.poll_transmit() {
                if let Some((from, bytes)) = net.send(t) {
                    assert!(d.handle_datagram(now, from, &bytes));
                }
            }
            if let Some(report) = d.poll_report() {
                assert!(d.is_done());
                return (report, now - t0);
            }
            now = d.poll_timeout().expect("a running procedure has a timer");
            d.handle_timeout(now);
        }
        panic!("discovery did not finish");
    }

    #[test]
    fn port_restricted_cone_like_linux_masquerade() {
        let mut net = Net::new(Kind::EndpointIndependent, Kind::AddressAndPortDependent);
        net.preserve_port = true;
        let (r, took) = run(&mut net);
        assert_eq!(r.mapping, Mapping::EndpointIndependent);
        assert_eq!(r.filtering, Filtering::AddressAndPortDependent);
        assert_eq!(r.port_preserved, Some(true));
        assert_eq!(r.mapped, Some("203.0.113.9:5000".parse().unwrap()));
        assert!(!r.udp_blocked);
        assert!(r.mapping.is_punchable());
        // Two filtering tests waited out the whole 3.75 s schedule.
        assert_eq!(took, Duration::from_millis(7500));
    }

    #[test]
    fn full_cone() {
        let mut net = Net::new(Kind::EndpointIndependent, Kind::EndpointIndependent);
        let (r, took) = run(&mut net);
        assert_eq!(r.mapping, Mapping::EndpointIndependent);
        assert_eq!(r.filtering, Filtering::EndpointIndependent);
        assert_eq!(r.port_preserved, Some(false));
        assert_eq!(took, Duration::ZERO, "every test answered at once");
    }

    #[test]
    fn restricted_cone() {
        let mut net = Net::new(Kind::EndpointIndependent, Kind::AddressDependent);
        let (r, _) = run(&mut net);
        assert_eq!(r.mapping, Mapping::EndpointIndependent);
        assert_eq!(r.filtering, Filtering::AddressDependent);
    }

    #[test]
    fn symmetric_nat() {
        let mut net = Net::new(Kind::AddressAndPortDependent, Kind::AddressAndPortDependent);
        let (r, _) = run(&mut net);
        assert_eq!(r.mapping, Mapping::AddressAndPortDependent);
        assert_eq!(r.filtering, Filtering::AddressAndPortDependent);
        assert!(!r.mapping.is_punchable());
    }

    #[test]
    fn address_dependent_mapping() {
        let mut net = Net::new(Kind::AddressDependent, Kind::AddressDependent);
        let (r, _) = run(&mut net);
        assert_eq!(r.mapping, Mapping::AddressDependent);
        assert_eq!(r.filtering, Filtering::AddressDependent);
    }

    #[test]
    fn udp_blocked() {
        let mut net = Net::new(Kind::EndpointIndependent, Kind::EndpointIndependent);
        net.blocked = true;
        let (r, took) = run(&mut net);
        assert!(r.udp_blocked);
        assert_eq!(r.mapped, None);
        assert_eq!(r.port_preserved, None);
        assert!(matches!(r.mapping, Mapping::Unknown { .. }));
        assert_eq!(took, Duration::from_millis(3750));
    }

    #[test]
    fn single_ip_server_gives_unknown_with_reason() {
        let mut net = Net::new(Kind::EndpointIndependent, Kind::EndpointIndependent);
        net.single_ip = true;
        let (r, _) = run(&mut net);
        assert!(!r.udp_blocked);
        assert!(r.mapped.is_some());
        match (&r.mapping, &r.filtering) {
            (Mapping::Unknown { why }, Filtering::Unknown { why: why2 }) => {
                assert!(why.contains("single address"), "{why}");
                assert_eq!(why, why2);
            }
            other => panic!("expected Unknown, got {other:?}"),
        }
    }

    #[test]
    fn no_nat_when_mapped_is_local() {
        // A host with a public address and no NAT or firewall.
        let server = alt();
        let local: SocketAddr = "198.51.100.20:5000".parse().unwrap();
        let t0 = Instant::now();
        let mut d = NatDiscovery::new(
            t0,
            local,
            server.primary,
            DiscoveryConfig::default(),
            [1; 12],
        )
        .unwrap();
        let mut sent = vec![];
        for _ in 0..10 {
            while let Some(t) = d.poll_transmit() {
                sent.push(t.dst);
                let r = respond(&t.payload, local, t.dst, Some(server)).unwrap();
                d.handle_datagram(t0, r.send_from, &r.payload);
            }
        }
        let r = d.poll_report().unwrap();
        assert_eq!(r.mapping, Mapping::NoNat);
        assert_eq!(r.filtering, Filtering::EndpointIndependent);
        // Primary, then the change-IP+port filtering test; no mapping tests.
        assert_eq!(sent, vec![server.primary, server.primary]);
    }

    #[tokio::test]
    async fn discover_on_loopback_against_our_server() {
        use crate::stun::{StunServer, StunServerConfig};
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let config = StunServerConfig {
            second_port: Some(0),
            alternate_ip: Some("127.0.0.2".parse().unwrap()),
            ..StunServerConfig::new(SocketAddr::new(lo, 0))
        };
        let server = StunServer::bind(config).await.unwrap();
        let primary = server.udp_addrs()[0];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let socket = tokio::net::UdpSocket::bind((lo, 0)).await.unwrap();
        let report = discover_udp(&socket, primary, DiscoveryConfig::default())
            .await
            .unwrap();
        assert_eq!(report.mapping, Mapping::NoNat);
        assert_eq!(report.filtering, Filtering::EndpointIndependent);
        assert_eq!(report.mapped, Some(socket.local_addr().unwrap()));
        assert_eq!(report.port_preserved, Some(true));
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }
}
