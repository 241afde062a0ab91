//! `ferry nat`: what network am I on? In the spirit of `tailscale
//! netcheck`: interfaces and their classes; IPv4 and IPv6 each (reachable
//! or not and why, the public UDP mapping, NAT mapping and filtering
//! behaviour by RFC 5780 when the server has two IPs, port preservation,
//! hairpinning); the TCP mapping (kept port, the same mapping towards two
//! server ports); which port-mapping protocols the gateway speaks (UPnP
//! IGD, NAT-PMP, PCP) and a test mapping; round-trip times to the
//! rendezvous server, its STUN responder and the relay; and a verdict,
//! overall and per kind of peer.
//!
//! This module runs the probes (the IO) and renders the report; the
//! decisions are pure and live in `ferry_nat`: [`Verdict::decide`] and
//! [`Verdict::with_peer`] (what works, per peer kind),
//! [`FamilyStatus::decide`] (does IPv4/IPv6 work, why not),
//! [`ferry_nat::hairpin::HairpinCheck`] and
//! [`ferry_nat::pmp::PresenceProbe`] (sans-IO machines).
//!
//! Order: the rendezvous connection first (its welcome names the STUN
//! port and the relay); then at once: UDP discovery per family (then, on
//! the same socket, STUN round trips and the hairpin check), STUN over
//! TCP from the rendezvous connection's local port, a TCP connect to the
//! relay. The gateway probes (UPnP, NAT-PMP/PCP presence and test
//! mapping) run from the start. Only the server's addresses and the
//! default gateway are ever sent to (and this host's own public mapping,
//! for hairpinning).
//!
//! JSON (`--json`, one object, event `nat`), fields (times in
//! milliseconds, `null` when not measured):
//! - `server`: the rendezvous server asked; `stun_server`: its STUN
//!   address (IPv4 when it has one)
//! - `interfaces`: `[{name, addr, class}]`
//! - `rendezvous`: `{reachable, local, observed, port_preserved, error}`:
//!   the TCP signalling connection and the address the server saw
//! - `ipv4`, `ipv6`: one per family: `{status, reachable, why,
//!   global_address, stun_server, blocked, local, mapped, mapping,
//!   mapping_why, filtering, filtering_why, port_preserved, rfc5780,
//!   error, hairpinning, stun_rtt_ms}`; `status` is one of `reachable`,
//!   `no_global_address`, `no_server_address`, `no_route`, `failed`,
//!   `no_answer` and `why` says it in words; `global_address`: this host
//!   has one of the family (for IPv4: any but loopback or link-local);
//!   `hairpinning`: `true` when a second socket reached the first one's
//!   public mapping, `false` when not, `null` when not tested
//! - `udp`: the IPv4 discovery alone (as before the families):
//!   `{blocked, local, mapped, mapping, filtering, port_preserved,
//!   rfc5780, error}`; `mapping` and `filtering` are one of `none`
//!   (mapping only: no NAT), `endpoint-independent`, `address-dependent`,
//!   `address-and-port-dependent`, `unknown`; `*_why` says why unknown
//! - `tcp`: `{local, mapped, port_preserved, mapping_varies_by_dest_port,
//!   compared, error}`: STUN over TCP from the rendezvous connection's
//!   local port; `mapping_varies_by_dest_port` is whether the public
//!   address:port STUN saw differs from the one the rendezvous port saw
//!   (two ports of the server's one IP; `null` when either failed), and
//!   `compared` names the two
//! - `portmap`: `{upnp, nat_pmp, pcp, gateway, error}`: which protocols
//!   the gateway answered (UPnP: an IGD answered the search; NAT-PMP,
//!   PCP: an answer in that version), asked at once within about 2 s
//! - `upnp`: `{gateway, external_ip, external_ip_class, test_mapping:
//!   {status: mapped|failed|not_tried, external, removed, error}, error}`
//! - `pmp`: the NAT-PMP/PCP test mapping: `{gateway, version, external,
//!   external_ip_class, removed, error}`
//! - `latency`: `{rendezvous_tcp_ms, rendezvous_welcome_ms, stun_ipv4_ms,
//!   stun_ipv6_ms, relay, relay_tcp_ms, relay_error}`: the TCP connect to
//!   the rendezvous server, its hello-to-welcome time, the best STUN
//!   round trip per family, the TCP connect to the relay the welcome
//!   names (`relay`; often the rendezvous address itself)
//! - `verdict`: `{code, text, peers}`; code is one of `open`, `direct`,
//!   `direct-tcp`, `relay`, `unreachable`, `unknown` (for most peers);
//!   `peers`: `{no_nat, cone, symmetric, udp_blocked}`, each `{code,
//!   text}`: what works with a peer of that kind, in one sentence
//!
//! Every string from the network (UPnP URLs, error texts) is escaped
//! before it reaches a terminal; addresses are parsed types.
//!
//! Exit code 0 with the report; 4 (network) when nothing answered (the
//! verdict `unreachable`), after the report, with one line naming the
//! server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_nat::behaviour::{DiscoveryConfig, Filtering, Mapping, NatReport, discover_udp};
use ferry_nat::family::{Facts, Family, FamilyStatus, has_global_address};
use ferry_nat::hairpin::{HairpinConfig, check_hairpin};
use ferry_nat::pmp::{PmpOptions, PmpReport, PresenceConfig};
use ferry_nat::stun::{BindingOptions, RetransmitConfig, binding_tcp, binding_udp};
use ferry_nat::upnp::{TestMapping, UpnpOptions, UpnpReport};
use ferry_nat::verdict::{Observations, PeerKind, PeerOutcome, Reach, Verdict};
use ferry_rendezvous::SignalClient;
use serde::Serialize;
use tokio::net::UdpSocket;

use crate::cli::NatArgs;
use crate::escape;
use crate::exit::Failure;
use crate::output::Output;
use crate::session;

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    server: String,
    stun_server: Option<String>,
    interfaces: Vec<InterfaceReport>,
    rendezvous: RendezvousReport,
    ipv4: FamilyReport,
    ipv6: FamilyReport,
    udp: UdpReport,
    tcp: TcpReport,
    portmap: PortmapReport,
    upnp: UpnpReport,
    pmp: PmpReport,
    latency: LatencyReport,
    verdict: VerdictReport,
}

#[derive(Debug, Serialize)]
struct InterfaceReport {
    name: String,
    addr: IpAddr,
    class: ferry_nat::AddrClass,
}

#[derive(Debug, Default, Serialize)]
struct RendezvousReport {
    reachable: bool,
    local: Option<SocketAddr>,
    observed: Option<SocketAddr>,
    port_preserved: Option<bool>,
    error: Option<String>,
    /// The proxy the server was reached through (credentials hidden).
    proxy: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct UdpReport {
    blocked: bool,
    local: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    mapping: &'static str,
    mapping_why: Option<String>,
    filtering: &'static str,
    filtering_why: Option<String>,
    port_preserved: Option<bool>,
    rfc5780: bool,
    error: Option<String>,
}

/// One address family's part of the report.
#[derive(Debug, Serialize)]
struct FamilyReport {
    status: FamilyStatus,
    reachable: bool,
    why: Option<String>,
    global_address: bool,
    stun_server: Option<SocketAddr>,
    #[serde(flatten)]
    udp: UdpReport,
    hairpinning: Option<bool>,
    stun_rtt_ms: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
struct TcpReport {
    local: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    port_preserved: Option<bool>,
    mapping_varies_by_dest_port: Option<bool>,
    compared: Option<String>,
    error: Option<String>,
}

/// Which port-mapping protocols the gateway answered.
#[derive(Debug, Default, Serialize)]
struct PortmapReport {
    upnp: bool,
    nat_pmp: bool,
    pcp: bool,
    gateway: Option<Ipv4Addr>,
    error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct LatencyReport {
    rendezvous_tcp_ms: Option<f64>,
    rendezvous_welcome_ms: Option<f64>,
    stun_ipv4_ms: Option<f64>,
    stun_ipv6_ms: Option<f64>,
    relay: Option<SocketAddr>,
    relay_tcp_ms: Option<f64>,
    relay_error: Option<String>,
}

/// The verdict as reported: `code` is the one-word [`Reach`], `text` the
/// sentence for people, `peers` the same per kind of peer.
#[derive(Debug, Serialize)]
struct VerdictReport {
    code: Reach,
    text: &'static str,
    peers: PeersReport,
}

#[derive(Debug, Serialize)]
struct PeersReport {
    no_nat: PeerOutcome,
    cone: PeerOutcome,
    symmetric: PeerOutcome,
    udp_blocked: PeerOutcome,
}

/// Runs `ferry nat`.
pub async fn run(args: NatArgs, out: &mut Output) -> Result<()> {
    let server = session::server_spec(&args.server)?;
    let proxy = session::proxy_rules(&args.server.proxy)?;
    let report = check(&server, args.stun_port, args.gateway, proxy).await?;
    if out.is_json() {
        out.event("nat", serde_json::to_value(&report)?);
    } else {
        print_human(&report, out);
    }
    if report.verdict.code == Reach::Unreachable {
        // The report says what was tried; the exit code, that nothing answered.
        return Err(unreachable(&server, &report.rendezvous));
    }
    Ok(())
}

/// The failure when nothing at `server` answered.
fn unreachable(server: &str, rendezvous: &RendezvousReport) -> anyhow::Error {
    Failure::network(format!(
        "cannot reach the server {server}: {}",
        rendezvous.error.clone().unwrap_or_default()
    ))
}

/// The STUN port asked when neither `--stun-port` nor the server's
/// welcome names one.
const DEFAULT_STUN_PORT: u16 = 3478;

/// The bound of one TCP connect or exchange (rendezvous aside, which has
/// its own).
const TCP_TIMEOUT: Duration = Duration::from_secs(3);

/// How many STUN round trips are timed per family (the best one counts).
const RTT_SAMPLES: usize = 3;

/// Runs every check against `server` (HOST:PORT of the rendezvous server,
/// whose STUN responder listens on the same host: on `stun_port` when
/// given, else on the port the server's welcome announces). The port
/// mapping probes ask `gateway`, else the default route's. With `proxy`,
/// the rendezvous server and the relay are reached through the proxy its
/// rules choose (STUN and the rest go direct, as a transfer's paths do).
pub async fn check(
    server: &str,
    stun_port: Option<u16>,
    gateway: Option<Ipv4Addr>,
    proxy: Option<&ferry_proxy::ProxyRules>,
) -> Result<Report> {
    let found = ferry_nat::interfaces();
    let global4 = has_global_address(&found, Family::Ipv4);
    let global6 = has_global_address(&found, Family::Ipv6);
    let interfaces = found
        .into_iter()
        .map(|i| InterfaceReport {
            name: i.name,
            addr: i.addr,
            class: i.class,
        })
        .collect();
    // The spec may carry TLS after '#': names and addresses without it.
    let spec = server;
    let server = server.split_once('#').map_or(server, |(addr, _)| addr);
    let host = server
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .unwrap_or_else(|| server.to_string());
    // The rendezvous server first: its welcome names the STUN port and
    // the relay (the gateway probes run meanwhile).
    let network = async {
        let through = server
            .parse::<ferry_proxy::Target>()
            .ok()
            .and_then(|target| Some((proxy?.select(&target.host)?.clone(), target)));
        let mut rendezvous = match &through {
            Some((proxy, target)) => check_rendezvous_via(spec, proxy, target).await,
            None => check_rendezvous(spec).await,
        };
        rendezvous.report.proxy = through.as_ref().map(|(proxy, _)| proxy.to_string());
        let stun_port = stun_port
            .or(rendezvous.stun_port)
            .unwrap_or(DEFAULT_STUN_PORT);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), stun_port))
            .await
            .map(|a| a.collect())
            .unwrap_or_default();
        let stun4 = addrs.iter().copied().find(SocketAddr::is_ipv4);
        let stun6 = addrs.iter().copied().find(SocketAddr::is_ipv6);
        // STUN over TCP asks the family the rendezvous connection used.
        let stun_tcp = match rendezvous.report.local {
            Some(SocketAddr::V6(_)) => stun6.or(stun4),
            _ => stun4.or(stun6),
        };
        let (v4, v6, tcp, relay) = tokio::join!(
            check_family(Family::Ipv4, stun4, global4),
            check_family(Family::Ipv6, stun6, global6),
            check_tcp(stun_tcp, &rendezvous),
            check_relay(rendezvous.relay, rendezvous.relay_through.clone()),
        );
        if let Some(signal) = rendezvous.client {
            let _ = signal.release(None).await;
        }
        (
            rendezvous.report,
            rendezvous.timing,
            stun4.or(stun6),
            v4,
            v6,
            tcp,
            relay,
        )
    };
    let (
        (rendezvous, timing, stun_server, (ipv4, nat4, rtt4), (ipv6, nat6, rtt6), tcp, relay),
        upnp,
        pmp,
        portmap,
    ) = tokio::join!(
        network,
        check_upnp(gateway),
        check_pmp(gateway),
        check_portmap(gateway)
    );
    if !rendezvous.reachable && stun_server.is_none() {
        return Err(unreachable(server, &rendezvous));
    }
    let portmap = PortmapReport {
        upnp: upnp.gateway.is_some(),
        ..portmap
    };
    let tcp_port_preserved = tcp.port_preserved;
    let rendezvous_port_preserved = rendezvous.port_preserved;
    let verdict = Verdict::decide(&Observations {
        rendezvous_reachable: rendezvous.reachable,
        rendezvous_port_preserved,
        // IPv4 decides when it answered (most peers have it), else IPv6.
        udp: nat4.filter(|r| r.mapped.is_some()).or(nat6),
        tcp_mapped: tcp.mapped.is_some(),
        tcp_port_preserved,
        // A port mapped by NAT-PMP/PCP counts as one mapped by UPnP.
        upnp_mapped: matches!(upnp.test_mapping, TestMapping::Mapped { .. })
            || pmp.external.is_some(),
    });
    let tcp_kept = tcp_port_preserved.or(rendezvous_port_preserved) == Some(true);
    let peer = |kind| verdict.with_peer(kind, tcp_kept);
    let verdict = VerdictReport {
        code: verdict.reach(),
        text: verdict_text(verdict),
        peers: PeersReport {
            no_nat: peer(PeerKind::NoNat),
            cone: peer(PeerKind::Cone),
            symmetric: peer(PeerKind::Symmetric),
            udp_blocked: peer(PeerKind::UdpBlocked),
        },
    };
    let (relay_addr, relay_tcp, relay_error) = relay;
    let latency = LatencyReport {
        rendezvous_tcp_ms: timing.0.map(millis),
        rendezvous_welcome_ms: timing.1.map(millis),
        stun_ipv4_ms: rtt4.map(millis),
        stun_ipv6_ms: rtt6.map(millis),
        relay: relay_addr,
        relay_tcp_ms: relay_tcp.map(millis),
        relay_error,
    };
    Ok(Report {
        server: server.to_string(),
        stun_server: stun_server.map(|a| a.to_string()),
        interfaces,
        rendezvous,
        udp: ipv4.udp.clone(),
        ipv4,
        ipv6,
        tcp,
        portmap,
        upnp,
        pmp,
        latency,
        verdict,
    })
}

/// Milliseconds, to the microsecond.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// What the rendezvous connection gave: the report, the still open
/// client (so that STUN over TCP can share its local port), the welcome's
/// STUN port and relay, and the connect and welcome times.
struct Rendezvous {
    report: RendezvousReport,
    client: Option<SignalClient>,
    stun_port: Option<u16>,
    relay: Option<SocketAddr>,
    /// The relay through the proxy: the proxy and the relay as it should
    /// see it.
    relay_through: Option<(ferry_proxy::ProxyUrl, ferry_proxy::Target)>,
    timing: (Option<Duration>, Option<Duration>),
}

impl Rendezvous {
    /// The server could not be reached (or did not welcome us): why, and
    /// the times measured until then.
    fn failed(error: String, timing: (Option<Duration>, Option<Duration>)) -> Rendezvous {
        Rendezvous {
            report: RendezvousReport {
                error: Some(error),
                ..RendezvousReport::default()
            },
            client: None,
            stun_port: None,
            relay: None,
            relay_through: None,
            timing,
        }
    }
}

/// [`check_rendezvous`] through `proxy`: the connect time is the
/// tunnel's, and the observed address is the proxy's mapping.
async fn check_rendezvous_via(
    server: &str,
    proxy: &ferry_proxy::ProxyUrl,
    target: &ferry_proxy::Target,
) -> Rendezvous {
    let failed = Rendezvous::failed;
    let started = Instant::now();
    let stream = match ferry_proxy::connect(proxy, target, TCP_TIMEOUT).await {
        Ok(stream) => stream,
        Err(e) => {
            let advice = crate::advice::for_proxy(&e);
            return failed(format!("{e}; {advice}"), (None, None));
        }
    };
    let connect_time = Some(started.elapsed());
    let started = Instant::now();
    match SignalClient::connect_over(server, Some(stream)).await {
        Ok((client, welcome)) => {
            // No relay advertised: the relay is the server, by its name.
            let own = welcome.relay_addr == welcome.server_addr;
            let relay_target = match &welcome.relay_name {
                Some(name) if !own => name.parse().unwrap_or_else(|_| welcome.relay_addr.into()),
                _ if own => target.clone(),
                _ => welcome.relay_addr.into(),
            };
            Rendezvous {
                report: RendezvousReport {
                    reachable: true,
                    local: Some(welcome.local_addr),
                    observed: Some(welcome.observed_addr),
                    port_preserved: None,
                    error: None,
                    proxy: None,
                },
                client: Some(client),
                stun_port: welcome.stun_port,
                relay: Some(welcome.relay_addr),
                relay_through: Some((proxy.clone(), relay_target)),
                timing: (connect_time, Some(started.elapsed())),
            }
        }
        Err(e) => failed(crate::advice::signal_text(&e), (connect_time, None)),
    }
}

/// Connects to the rendezvous server from a reusable local port (STUN
/// over TCP then asks from the same port), timing the TCP connect and the
/// hello-to-welcome exchange.
async fn check_rendezvous(spec: &str) -> Rendezvous {
    let server = spec.split_once('#').map_or(spec, |(addr, _)| addr);
    let failed = Rendezvous::failed;
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(server).await {
        Ok(addrs) => addrs.collect(),
        Err(e) => {
            let e = ferry_rendezvous::SignalError::Resolve {
                server: server.to_string(),
                reason: e.to_string(),
            };
            return failed(crate::advice::signal_text(&e), (None, None));
        }
    };
    let mut stream = None;
    let mut last_error = String::from("no address found");
    let mut connect_time = None;
    for addr in addrs {
        let local = unspecified(addr);
        let started = Instant::now();
        match ferry_connect::connect_from(local, addr, TCP_TIMEOUT).await {
            Ok(s) => {
                connect_time = Some(started.elapsed());
                stream = Some(s);
                break;
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    let Some(stream) = stream else {
        let e = ferry_rendezvous::SignalError::Connect {
            server: server.to_string(),
            reason: last_error,
        };
        return failed(crate::advice::signal_text(&e), (None, None));
    };
    let started = Instant::now();
    match SignalClient::connect_over(spec, Some(stream)).await {
        Ok((client, welcome)) => Rendezvous {
            report: RendezvousReport {
                reachable: true,
                local: Some(welcome.local_addr),
                observed: Some(welcome.observed_addr),
                port_preserved: Some(welcome.local_addr.port() == welcome.observed_addr.port()),
                error: None,
                proxy: None,
            },
            client: Some(client),
            stun_port: welcome.stun_port,
            relay: Some(welcome.relay_addr),
            relay_through: None,
            timing: (connect_time, Some(started.elapsed())),
        },
        Err(e) => failed(crate::advice::signal_text(&e), (connect_time, None)),
    }
}

/// The unspecified address of `addr`'s family, port 0.
fn unspecified(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// One family: is there a server address and a route, then UDP
/// discovery, STUN round trips and the hairpin check on one socket.
/// Returns the report, the discovery report (for the verdict) and the
/// best STUN round trip.
async fn check_family(
    family: Family,
    stun: Option<SocketAddr>,
    global_address: bool,
) -> (FamilyReport, Option<NatReport>, Option<Duration>) {
    // A route lookup sends nothing (a UDP connect()).
    let route = stun.map(|s| ferry_nat::addr::route_source(s).is_some());
    let (udp, nat) = match stun {
        Some(stun) if route == Some(true) => check_udp(family, stun).await,
        _ => (unknown_udp(), None),
    };
    let (nat, socket) = match nat {
        Some((nat, socket)) => (Some(nat), Some(socket)),
        None => (None, None),
    };
    let status = FamilyStatus::decide(&Facts {
        family,
        server_address: stun.is_some(),
        global_address,
        route,
        udp: nat.as_ref(),
    });
    let mut rtt = None;
    let mut hairpinning = None;
    if let (Some(socket), Some(stun), Some(mapped)) =
        (&socket, stun, nat.as_ref().and_then(|n| n.mapped))
    {
        rtt = stun_rtt(socket, stun).await;
        hairpinning = check_hairpin(socket, mapped, HairpinConfig::default())
            .await
            .ok()
            .map(|h| h.works());
    }
    let report = FamilyReport {
        status,
        reachable: status.is_reachable(),
        why: status.why(family),
        global_address,
        stun_server: stun,
        udp,
        hairpinning,
        stun_rtt_ms: rtt.map(millis),
    };
    (report, nat, rtt)
}

/// The best of a few STUN round trips on `socket` (discovery's own are
/// spread over its tests, some of them waiting on purpose).
async fn stun_rtt(socket: &UdpSocket, stun: SocketAddr) -> Option<Duration> {
    let options = BindingOptions {
        retransmit: RetransmitConfig {
            rto: Duration::from_millis(250),
            max_sends: 2,
            last_wait_factor: 2,
        },
        ..BindingOptions::default()
    };
    let mut best: Option<Duration> = None;
    for _ in 0..RTT_SAMPLES {
        if let Ok(r) = binding_udp(socket, stun, options).await {
            best = Some(best.map_or(r.elapsed, |b| b.min(r.elapsed)));
        }
    }
    best
}

/// UDP discovery against `stun` from a fresh socket of `family`; the
/// report, and the discovery report and the socket when discovery ran.
async fn check_udp(
    family: Family,
    stun: SocketAddr,
) -> (UdpReport, Option<(NatReport, UdpSocket)>) {
    let socket = match UdpSocket::bind(unspecified(stun)).await {
        Ok(s) => s,
        Err(e) => {
            let report = UdpReport {
                error: Some(format!("cannot open a {family} UDP socket: {e}")),
                ..unknown_udp()
            };
            return (report, None);
        }
    };
    match discover_udp(&socket, stun, DiscoveryConfig::default()).await {
        Ok(report) => (udp_report(report.clone()), Some((report, socket))),
        Err(e) => {
            let report = UdpReport {
                error: Some(e.to_string()),
                ..unknown_udp()
            };
            (report, None)
        }
    }
}

fn unknown_udp() -> UdpReport {
    UdpReport {
        mapping: "unknown",
        filtering: "unknown",
        ..UdpReport::default()
    }
}

fn udp_report(r: NatReport) -> UdpReport {
    let (mapping, mapping_why) = match r.mapping {
        Mapping::NoNat => ("none", None),
        Mapping::EndpointIndependent => ("endpoint-independent", None),
        Mapping::AddressDependent => ("address-dependent", None),
        Mapping::AddressAndPortDependent => ("address-and-port-dependent", None),
        Mapping::Unknown { why } => ("unknown", Some(why)),
    };
    let (filtering, filtering_why) = match r.filtering {
        Filtering::EndpointIndependent => ("endpoint-independent", None),
        Filtering::AddressDependent => ("address-dependent", None),
        Filtering::AddressAndPortDependent => ("address-and-port-dependent", None),
        Filtering::Unknown { why } => ("unknown", Some(why)),
    };
    let rfc5780 = mapping_why.is_none() && filtering_why.is_none() && !r.udp_blocked;
    UdpReport {
        blocked: r.udp_blocked,
        local: Some(r.local),
        mapped: r.mapped,
        mapping,
        mapping_why,
        filtering,
        filtering_why,
        port_preserved: r.port_preserved,
        rfc5780,
        error: None,
    }
}

/// STUN over TCP from the rendezvous connection's local port (still
/// open, so both mappings exist at once), compared with what the
/// rendezvous server saw; from a fresh port when there is no rendezvous
/// connection.
async fn check_tcp(stun: Option<SocketAddr>, rendezvous: &Rendezvous) -> TcpReport {
    let Some(stun) = stun else {
        return TcpReport::default();
    };
    let local = match rendezvous.report.local {
        Some(local) => local,
        // Learn a free port first so that port preservation can be judged.
        None => match std::net::TcpListener::bind(unspecified(stun)).and_then(|l| l.local_addr()) {
            Ok(addr) => addr,
            Err(e) => {
                return TcpReport {
                    error: Some(format!("cannot pick a local TCP port: {e}")),
                    ..TcpReport::default()
                };
            }
        },
    };
    match binding_tcp(stun, Some(local), TCP_TIMEOUT).await {
        Ok(result) => {
            let observed = rendezvous.report.observed;
            TcpReport {
                local: Some(local),
                mapped: Some(result.mapped),
                port_preserved: Some(result.mapped.port() == local.port()),
                mapping_varies_by_dest_port: observed.map(|o| o != result.mapped),
                compared: observed.map(|o| {
                    format!(
                        "from local port {}: the rendezvous port saw {o}, STUN at {stun} saw {}",
                        local.port(),
                        result.mapped
                    )
                }),
                error: None,
            }
        }
        Err(e) => TcpReport {
            local: Some(local),
            error: Some(e.to_string()),
            ..TcpReport::default()
        },
    }
}

/// Times a TCP connect to the relay the welcome names; the connection is
/// closed at once, before any frame.
async fn check_relay(
    relay: Option<SocketAddr>,
    through: Option<(ferry_proxy::ProxyUrl, ferry_proxy::Target)>,
) -> (Option<SocketAddr>, Option<Duration>, Option<String>) {
    let Some(relay) = relay else {
        return (None, None, None);
    };
    let started = Instant::now();
    if let Some((proxy, target)) = through {
        return match ferry_proxy::connect(&proxy, &target, TCP_TIMEOUT).await {
            Ok(stream) => {
                let took = started.elapsed();
                drop(stream);
                (Some(relay), Some(took), None)
            }
            Err(e) => (Some(relay), None, Some(e.to_string())),
        };
    }
    match tokio::time::timeout(TCP_TIMEOUT, tokio::net::TcpStream::connect(relay)).await {
        Ok(Ok(stream)) => {
            let took = started.elapsed();
            drop(stream);
            (Some(relay), Some(took), None)
        }
        Ok(Err(e)) => (Some(relay), None, Some(e.to_string())),
        Err(_) => (
            Some(relay),
            None,
            Some(format!("no TCP answer within {TCP_TIMEOUT:?}")),
        ),
    }
}

/// Tries a short-lived NAT-PMP/PCP test mapping of a fresh UDP port on
/// the default gateway.
async fn check_pmp(gateway: Option<Ipv4Addr>) -> PmpReport {
    let port = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0);
    ferry_nat::pmp::probe(&pmp_options(gateway), port).await
}

fn pmp_options(gateway: Option<Ipv4Addr>) -> PmpOptions {
    PmpOptions {
        gateway,
        ..PmpOptions::default()
    }
}

/// Asks the default gateway whether it speaks NAT-PMP and PCP (UPnP is
/// filled in from [`check_upnp`]).
async fn check_portmap(gateway: Option<Ipv4Addr>) -> PortmapReport {
    match ferry_nat::pmp::presence(&pmp_options(gateway), PresenceConfig::default()).await {
        Ok((gateway, seen)) => PortmapReport {
            upnp: false,
            nat_pmp: seen.nat_pmp,
            pcp: seen.pcp,
            gateway: Some(gateway),
            error: None,
        },
        Err(e) => PortmapReport {
            error: Some(e.to_string()),
            ..PortmapReport::default()
        },
    }
}

/// Looks for a UPnP gateway (two searches of one second; from the local
/// address towards `gateway` when given) and tries a short-lived test
/// mapping of a fresh UDP port.
async fn check_upnp(gateway: Option<Ipv4Addr>) -> UpnpReport {
    let port = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0);
    let local = std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    let options = UpnpOptions {
        search_timeout: Duration::from_secs(1),
        tries: 2,
        bind: gateway
            .and_then(|g| ferry_nat::addr::route_source(SocketAddr::from((g, 5351))))
            .map(|ip| SocketAddr::new(ip, 0)),
    };
    ferry_nat::upnp::probe(&options, local).await
}

/// The sentence for people, per verdict (the JSON `verdict.text`).
fn verdict_text(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Unreachable => {
            "the server cannot be reached from here: check the address, or the network blocks it"
        }
        Verdict::FewTcpPortsOnly => {
            "only a few TCP ports get out of this network (UDP and STUN are blocked): only the relay (TCP 443) will work"
        }
        Verdict::UdpBlockedTcpPreserved => {
            "UDP is blocked: direct connections only over TCP, with peers on open or port-preserving networks; otherwise the relay"
        }
        Verdict::UdpBlockedTcpRewritten => {
            "UDP is blocked and TCP ports are rewritten: only the relay (TCP 443) will work with most peers"
        }
        Verdict::Open => "open network, no NAT: peers can connect to you directly",
        Verdict::NoNatFiltered => {
            "no NAT, but a firewall filters inbound traffic: direct connections will work with most peers"
        }
        Verdict::EndpointIndependent => {
            "direct connections will work with most peers (your NAT keeps one public port per socket)"
        }
        Verdict::SymmetricWithUpnp => {
            "symmetric NAT, but its UPnP gateway maps ports: direct connections through the mapped port"
        }
        Verdict::Symmetric => {
            "symmetric NAT: direct connections with peers on open networks, and by port spraying with peers whose NAT keeps one port per socket; the relay with other symmetric NATs"
        }
        Verdict::UnknownPortPreserved => {
            "your NAT keeps ports, so direct connections will likely work; the server could not test NAT behaviour fully (it needs two IPs: ferry serve --stun-alt-ip)"
        }
        Verdict::Unknown => {
            "could not tell how your NAT behaves; the server needs two IPs for that (ferry serve --stun-alt-ip)"
        }
    }
}

/// The width of the labels in the human report.
const LABEL: usize = 14;

fn print_human(r: &Report, out: &Output) {
    let say =
        |label: &str, value: String| out.say(format!("{:<LABEL$}{value}", format!("{label}:")));
    let sub =
        |label: &str, value: String| out.say(format!("    {:<11}{value}", format!("{label}:")));
    let show = |v: Option<SocketAddr>| v.map_or_else(|| "-".to_string(), |a| a.to_string());
    let yes_no = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    let remote = |s: &str| escape::line(s).into_owned();
    let through = |proxy: &Option<String>| {
        proxy.as_deref().map_or(String::new(), |p| {
            format!(" through the proxy {}", remote(p))
        })
    };
    // Loopback and LAN round trips are well under a millisecond.
    let ms = |v: Option<f64>| match v {
        None => "-".to_string(),
        Some(v) if v < 1.0 => format!("{v:.3} ms"),
        Some(v) => format!("{v:.1} ms"),
    };
    say(
        "Server",
        format!(
            "{} (STUN {})",
            r.server,
            r.stun_server.as_deref().unwrap_or("-")
        ),
    );
    out.say("Interfaces:");
    for i in &r.interfaces {
        out.say(format!(
            "    {:<12} {:<40} {}",
            remote(&i.name),
            i.addr,
            i.class
        ));
    }
    say(
        "Rendezvous",
        match &r.rendezvous.error {
            None => format!(
                "reachable over TCP{}, {} seen as {} (port kept: {})",
                through(&r.rendezvous.proxy),
                show(r.rendezvous.local),
                show(r.rendezvous.observed),
                yes_no(r.rendezvous.port_preserved)
            ),
            Some(e) => format!(
                "not reachable{}: {}",
                through(&r.rendezvous.proxy),
                remote(e)
            ),
        },
    );
    for (label, f) in [("IPv4", &r.ipv4), ("IPv6", &r.ipv6)] {
        if !f.reachable {
            let why = f.why.clone().unwrap_or_default();
            let error = f
                .udp
                .error
                .as_deref()
                .map(|e| format!(" ({})", remote(e)))
                .unwrap_or_default();
            say(label, format!("{why}{error}"));
            continue;
        }
        say(
            label,
            format!(
                "yes, {} seen as {} (port kept: {})",
                show(f.udp.local),
                show(f.udp.mapped),
                yes_no(f.udp.port_preserved)
            ),
        );
        let why = |w: &Option<String>| {
            w.as_ref()
                .map(|w| format!(" ({})", remote(w)))
                .unwrap_or_default()
        };
        sub(
            "mapping",
            format!("{}{}", f.udp.mapping, why(&f.udp.mapping_why)),
        );
        sub(
            "filtering",
            format!("{}{}", f.udp.filtering, why(&f.udp.filtering_why)),
        );
        sub("hairpin", yes_no(f.hairpinning).to_string());
    }
    say(
        "TCP",
        match &r.tcp.error {
            None if r.tcp.mapped.is_some() => format!(
                "{} seen as {} (port kept: {}; mapping varies by destination port: {})",
                show(r.tcp.local),
                show(r.tcp.mapped),
                yes_no(r.tcp.port_preserved),
                yes_no(r.tcp.mapping_varies_by_dest_port)
            ),
            None => "not tested (no STUN address)".to_string(),
            Some(e) => format!("STUN over TCP failed: {}", remote(e)),
        },
    );
    let found: Vec<&str> = [
        (r.portmap.upnp, "UPnP"),
        (r.portmap.nat_pmp, "NAT-PMP"),
        (r.portmap.pcp, "PCP"),
    ]
    .into_iter()
    .filter_map(|(yes, name)| yes.then_some(name))
    .collect();
    say(
        "Port mapping",
        if found.is_empty() {
            "none found (asked UPnP, NAT-PMP, PCP)".to_string()
        } else {
            found.join(", ")
        },
    );
    say(
        "UPnP",
        match (&r.upnp.gateway, &r.upnp.test_mapping) {
            (None, _) => "no gateway found".to_string(),
            (Some(gateway), mapping) => {
                let ext = r
                    .upnp
                    .external_ip
                    .map_or_else(|| "-".into(), |ip| ip.to_string());
                let test = match mapping {
                    TestMapping::Mapped { external, .. } => {
                        format!("test mapping worked ({external})")
                    }
                    TestMapping::Failed { error } => {
                        format!("test mapping failed: {}", remote(error))
                    }
                    _ => "no test mapping".into(),
                };
                format!(
                    "gateway {}, external address {ext}; {test}",
                    remote(gateway)
                )
            }
        },
    );
    say(
        "NAT-PMP/PCP",
        match (&r.pmp.version, &r.pmp.external, &r.pmp.error) {
            (Some(version), Some(external), _) => format!(
                "gateway {}, {version} mapped a test port ({external})",
                r.pmp
                    .gateway
                    .map_or_else(|| "-".to_string(), |ip| ip.to_string())
            ),
            (_, _, Some(error)) => remote(error),
            _ => "no mapping".to_string(),
        },
    );
    let l = &r.latency;
    let mut latency = format!(
        "rendezvous TCP {}, welcome {}; STUN IPv4 {}, IPv6 {}",
        ms(l.rendezvous_tcp_ms),
        ms(l.rendezvous_welcome_ms),
        ms(l.stun_ipv4_ms),
        ms(l.stun_ipv6_ms)
    );
    match (&l.relay, &l.relay_error) {
        (Some(relay), None) => {
            latency.push_str(&format!("; relay TCP {} ({relay})", ms(l.relay_tcp_ms)))
        }
        (Some(relay), Some(e)) => latency.push_str(&format!("; relay {relay}: {}", remote(e))),
        _ => {}
    }
    say("Latency", latency);
    say("Verdict", r.verdict.text.to_string());
    let peers = &r.verdict.peers;
    for (kind, outcome) in [
        (PeerKind::NoNat, &peers.no_nat),
        (PeerKind::Cone, &peers.cone),
        (PeerKind::Symmetric, &peers.symmetric),
        (PeerKind::UdpBlocked, &peers.udp_blocked),
    ] {
        out.say(format!(
            "    {:<20}{:<12}{}",
            format!("peer {}:", kind.label()),
            outcome.reach.as_str(),
            outcome.text
        ));
    }
}
