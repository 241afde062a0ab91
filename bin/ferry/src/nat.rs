//! `ferry nat`: what network am I on? In the spirit of `tailscale
//! netcheck`: interfaces and their classes, the public UDP and TCP
//! mappings, NAT mapping and filtering behaviour (RFC 5780, when the server
//! has two IPs), port preservation, UPnP, NAT-PMP/PCP, and a one-line verdict.
//!
//! This module runs the probes and renders the report; the verdict itself
//! is decided by [`ferry_nat::verdict::Verdict::decide`] from what they
//! observed, and worded here ([`verdict_text`]).
//!
//! JSON (`--json`, one object, event `nat`), fields:
//! - `server`: the rendezvous server asked; `stun_server`: its STUN address
//! - `interfaces`: `[{name, addr, class}]`
//! - `rendezvous`: `{reachable, local, observed, port_preserved, error}`:
//!   the TCP signalling connection and the address the server saw
//! - `udp`: `{blocked, local, mapped, mapping, filtering, port_preserved,
//!   rfc5780, error}`; `mapping` and `filtering` are one of `none`
//!   (mapping only: no NAT), `endpoint-independent`, `address-dependent`,
//!   `address-and-port-dependent`, `unknown`; `*_why` says why unknown
//! - `tcp`: `{local, mapped, port_preserved, error}` (STUN over TCP from a
//!   chosen port)
//! - `upnp`: `{gateway, external_ip, external_ip_class, test_mapping:
//!   {status: mapped|failed|not_tried, external, removed, error}, error}`
//! - `verdict`: `{code, text}`; code is one of `open`, `direct`,
//!   `direct-tcp`, `relay`, `unreachable`, `unknown`
//!
//! Exit code 0 with the report; 4 (network) when nothing answered (the
//! verdict `unreachable`), after the report, with one line naming the
//! server.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use ferry_nat::behaviour::{DiscoveryConfig, Filtering, Mapping, NatReport, discover_udp};
use ferry_nat::pmp::{PmpOptions, PmpReport};
use ferry_nat::stun::binding_tcp;
use ferry_nat::upnp::{TestMapping, UpnpOptions, UpnpReport};
use ferry_nat::verdict::{Observations, Reach, Verdict};
use ferry_rendezvous::SignalClient;
use serde::Serialize;
use tokio::net::UdpSocket;

use crate::cli::NatArgs;
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
    udp: UdpReport,
    tcp: TcpReport,
    upnp: UpnpReport,
    pmp: PmpReport,
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
}

#[derive(Debug, Default, Serialize)]
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

#[derive(Debug, Default, Serialize)]
struct TcpReport {
    local: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    port_preserved: Option<bool>,
    error: Option<String>,
}

/// The verdict as reported: `code` is the one-word [`Reach`], `text` the
/// sentence for people.
#[derive(Debug, Serialize)]
struct VerdictReport {
    code: Reach,
    text: &'static str,
}

/// Runs `ferry nat`.
pub async fn run(args: NatArgs, out: &mut Output) -> Result<()> {
    let server = session::server_address(&args.server.server)?;
    let report = check(&server, args.stun_port).await?;
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

/// Runs every check against `server` (HOST:PORT of the rendezvous server,
/// whose STUN responder listens on the same host: on `stun_port` when
/// given, else on the port the server's welcome announces).
pub async fn check(server: &str, stun_port: Option<u16>) -> Result<Report> {
    let interfaces = ferry_nat::interfaces()
        .into_iter()
        .map(|i| InterfaceReport {
            name: i.name,
            addr: i.addr,
            class: i.class,
        })
        .collect();
    let host = server
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .unwrap_or_else(|| server.to_string());
    // The rendezvous server first: its welcome names the STUN port (the
    // gateway probes run meanwhile).
    let network = async {
        let (rendezvous, announced) = check_rendezvous(server).await;
        let stun_port = stun_port.or(announced).unwrap_or(DEFAULT_STUN_PORT);
        let stun_server = tokio::net::lookup_host((host.as_str(), stun_port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.find(SocketAddr::is_ipv4));
        let (udp, tcp) = tokio::join!(check_udp(stun_server), check_tcp(stun_server));
        (rendezvous, stun_server, udp, tcp)
    };
    let ((rendezvous, stun_server, (udp, nat), tcp), upnp, pmp) =
        tokio::join!(network, check_upnp(), check_pmp());
    if !rendezvous.reachable && stun_server.is_none() {
        return Err(unreachable(server, &rendezvous));
    }
    let verdict = Verdict::decide(&Observations {
        rendezvous_reachable: rendezvous.reachable,
        rendezvous_port_preserved: rendezvous.port_preserved,
        udp: nat,
        tcp_mapped: tcp.mapped.is_some(),
        tcp_port_preserved: tcp.port_preserved,
        // A port mapped by NAT-PMP/PCP counts as one mapped by UPnP.
        upnp_mapped: matches!(upnp.test_mapping, TestMapping::Mapped { .. })
            || pmp.external.is_some(),
    });
    let verdict = VerdictReport {
        code: verdict.reach(),
        text: verdict_text(verdict),
    };
    Ok(Report {
        server: server.to_string(),
        stun_server: stun_server.map(|a| a.to_string()),
        interfaces,
        rendezvous,
        udp,
        tcp,
        upnp,
        pmp,
        verdict,
    })
}

/// The rendezvous part of the report, and the STUN port the welcome
/// announces.
async fn check_rendezvous(server: &str) -> (RendezvousReport, Option<u16>) {
    match SignalClient::connect(server).await {
        Ok((client, welcome)) => {
            let _ = client.release(None).await;
            let report = RendezvousReport {
                reachable: true,
                local: Some(welcome.local_addr),
                observed: Some(welcome.observed_addr),
                port_preserved: Some(welcome.local_addr.port() == welcome.observed_addr.port()),
                error: None,
            };
            (report, welcome.stun_port)
        }
        Err(e) => {
            let report = RendezvousReport {
                error: Some(crate::advice::signal_text(&e)),
                ..RendezvousReport::default()
            };
            (report, None)
        }
    }
}

/// The UDP part of the report, and the discovery report itself when
/// discovery ran (for the verdict).
async fn check_udp(stun: Option<SocketAddr>) -> (UdpReport, Option<NatReport>) {
    let Some(stun) = stun else {
        let report = UdpReport {
            error: Some("the server's name did not resolve to an IPv4 address".into()),
            ..unknown_udp()
        };
        return (report, None);
    };
    let socket = match UdpSocket::bind("0.0.0.0:0").await {
        Ok(s) => s,
        Err(e) => {
            let report = UdpReport {
                error: Some(format!("cannot open a UDP socket: {e}")),
                ..unknown_udp()
            };
            return (report, None);
        }
    };
    match discover_udp(&socket, stun, DiscoveryConfig::default()).await {
        Ok(report) => (udp_report(report.clone()), Some(report)),
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

async fn check_tcp(stun: Option<SocketAddr>) -> TcpReport {
    let Some(stun) = stun else {
        return TcpReport::default();
    };
    // Learn a free port first so that port preservation can be judged.
    let local = match std::net::TcpListener::bind("0.0.0.0:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr,
        Err(e) => {
            return TcpReport {
                error: Some(format!("cannot pick a local TCP port: {e}")),
                ..TcpReport::default()
            };
        }
    };
    match binding_tcp(stun, Some(local), Duration::from_secs(3)).await {
        Ok(result) => TcpReport {
            local: Some(local),
            mapped: Some(result.mapped),
            port_preserved: Some(result.mapped.port() == local.port()),
            error: None,
        },
        Err(e) => TcpReport {
            local: Some(local),
            error: Some(e.to_string()),
            ..TcpReport::default()
        },
    }
}

/// Tries a short-lived NAT-PMP/PCP test mapping of a fresh UDP port on
/// the default gateway.
async fn check_pmp() -> PmpReport {
    let port = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0);
    ferry_nat::pmp::probe(&PmpOptions::default(), port).await
}

/// Looks for a UPnP gateway and tries a short-lived test mapping of a
/// fresh UDP port.
async fn check_upnp() -> UpnpReport {
    let port = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0);
    let local = std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port);
    ferry_nat::upnp::probe(&UpnpOptions::default(), local).await
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

fn print_human(r: &Report, out: &Output) {
    let show = |v: Option<SocketAddr>| v.map_or_else(|| "-".to_string(), |a| a.to_string());
    let yes_no = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    out.say(format!(
        "Server: {} (STUN {})",
        r.server,
        r.stun_server.as_deref().unwrap_or("-")
    ));
    out.say("Interfaces:");
    for i in &r.interfaces {
        out.say(format!("    {:<12} {:<40} {}", i.name, i.addr, i.class));
    }
    match &r.rendezvous.error {
        None => out.say(format!(
            "Rendezvous (TCP): reachable, {} seen as {} (port kept: {})",
            show(r.rendezvous.local),
            show(r.rendezvous.observed),
            yes_no(r.rendezvous.port_preserved)
        )),
        Some(e) => out.say(format!("Rendezvous (TCP): not reachable: {e}")),
    }
    if r.udp.blocked {
        out.say("UDP: blocked (no STUN answer)");
    } else if let Some(e) = &r.udp.error {
        out.say(format!("UDP: {e}"));
    } else {
        out.say(format!(
            "UDP: {} seen as {} (port kept: {})",
            show(r.udp.local),
            show(r.udp.mapped),
            yes_no(r.udp.port_preserved)
        ));
        out.say(format!(
            "    mapping:   {}{}",
            r.udp.mapping,
            r.udp
                .mapping_why
                .as_ref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        ));
        out.say(format!(
            "    filtering: {}{}",
            r.udp.filtering,
            r.udp
                .filtering_why
                .as_ref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        ));
    }
    match &r.tcp.error {
        None => out.say(format!(
            "TCP: {} seen as {} (port kept: {})",
            show(r.tcp.local),
            show(r.tcp.mapped),
            yes_no(r.tcp.port_preserved)
        )),
        Some(e) => out.say(format!("TCP (STUN): {e}")),
    }
    match (&r.upnp.gateway, &r.upnp.test_mapping) {
        (None, _) => out.say("UPnP: no gateway found"),
        (Some(gateway), mapping) => {
            let ext = r
                .upnp
                .external_ip
                .map_or_else(|| "-".into(), |ip| ip.to_string());
            let test = match mapping {
                TestMapping::Mapped { external, .. } => format!("test mapping worked ({external})"),
                TestMapping::Failed { error } => format!("test mapping failed: {error}"),
                _ => "no test mapping".into(),
            };
            out.say(format!(
                "UPnP: gateway {gateway}, external address {ext}; {test}"
            ));
        }
    }
    match (&r.pmp.version, &r.pmp.external, &r.pmp.error) {
        (Some(version), Some(external), _) => out.say(format!(
            "NAT-PMP/PCP: gateway {}, {version} mapped a test port ({external})",
            r.pmp
                .gateway
                .map_or_else(|| "-".to_string(), |ip| ip.to_string())
        )),
        (_, _, Some(error)) => out.say(format!("NAT-PMP/PCP: {error}")),
        _ => out.say("NAT-PMP/PCP: no mapping"),
    }
    out.say(format!("Verdict: {}", r.verdict.text));
}
