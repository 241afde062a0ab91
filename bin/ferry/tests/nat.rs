//! `ferry nat` end to end on loopback: the real binary against a real
//! `ferry serve` (signalling and STUN on 127.0.0.1). Loopback has no NAT,
//! so every mapped address is the local one, every port is kept, and
//! everything answers; a closed port answers nothing.
//!
//! The server's STUN responder listens on a port of its choosing: `ferry
//! nat` must ask at the port the welcome announces (`--stun-port` only
//! overrides it). The port-mapping probes ask `--gateway 127.0.0.1`, so
//! nothing leaves the host and none answers.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// How long one `ferry nat` may take to report (its probes time out in
/// a few seconds).
const REPORT_WITHIN: Duration = Duration::from_secs(60);

#[test]
fn nat_json_on_loopback_sees_no_nat_and_reaches_everything() {
    // A second IP (127.0.0.2 is loopback too) lets the server run the
    // RFC 5780 tests, so mapping and filtering are known, not guessed.
    let server = Server::start_with(&["--stun-alt-ip", "127.0.0.2"]);
    assert_eq!(server.listening["rfc5780"], true);
    let stun = stun_addr(&server);
    let mut nat = nat(&server.addr, None, true);
    let report = nat.wait_event("nat", REPORT_WITHIN);
    assert_eq!(nat.finish(), 0, "{report} {}", nat.stderr_text());

    assert_eq!(report["server"], server.addr.as_str());
    assert_eq!(report["stun_server"], stun.to_string());

    let rendezvous = &report["rendezvous"];
    assert_eq!(rendezvous["reachable"], true, "{rendezvous}");
    assert_eq!(rendezvous["error"], Value::Null);
    let local = addr(&rendezvous["local"]);
    assert!(local.ip().is_loopback(), "{rendezvous}");
    assert_eq!(
        addr(&rendezvous["observed"]),
        local,
        "no NAT: seen as itself"
    );
    assert_eq!(rendezvous["port_preserved"], true);

    let udp = &report["udp"];
    assert_eq!(udp["blocked"], false, "{udp}");
    assert_eq!(udp["error"], Value::Null, "{udp}");
    assert_mapped_to_itself(udp);
    assert_eq!(udp["mapping"], "none", "{udp}");
    assert_eq!(udp["mapping_why"], Value::Null);
    assert_eq!(udp["filtering"], "endpoint-independent", "{udp}");
    assert_eq!(udp["filtering_why"], Value::Null);
    assert_eq!(udp["rfc5780"], true);

    let tcp = &report["tcp"];
    assert_eq!(tcp["error"], Value::Null, "{tcp}");
    assert_mapped_to_itself(tcp);
    // STUN over TCP asked from the rendezvous connection's port, and saw
    // the same mapping (no NAT).
    assert_eq!(tcp["local"], rendezvous["local"], "{tcp}");
    assert_eq!(tcp["mapping_varies_by_dest_port"], false, "{tcp}");
    assert!(
        tcp["compared"].as_str().unwrap().contains("STUN at"),
        "{tcp}"
    );

    // IPv4 per family: the same discovery as `udp`, plus what only the
    // family report has.
    let ipv4 = &report["ipv4"];
    assert_eq!(ipv4["status"], "reachable", "{ipv4}");
    assert_eq!(ipv4["reachable"], true);
    assert_eq!(ipv4["why"], Value::Null);
    assert_eq!(ipv4["stun_server"], stun.to_string());
    for field in [
        "mapped",
        "mapping",
        "filtering",
        "port_preserved",
        "rfc5780",
    ] {
        assert_eq!(ipv4[field], udp[field], "{field}: {ipv4} vs {udp}");
    }
    // Loopback "hairpins": a second socket reaches the first one's
    // address.
    assert_eq!(ipv4["hairpinning"], true, "{ipv4}");
    assert_positive(&ipv4["stun_rtt_ms"]);
    // The server is 127.0.0.1 only: IPv6 is not tried, and says why.
    let ipv6 = &report["ipv6"];
    assert_eq!(ipv6["reachable"], false, "{ipv6}");
    assert_eq!(ipv6["hairpinning"], Value::Null, "{ipv6}");
    assert_eq!(ipv6["mapped"], Value::Null, "{ipv6}");
    let status = ipv6["status"].as_str().unwrap();
    assert!(
        ["no_global_address", "no_server_address"].contains(&status),
        "{ipv6}"
    );
    assert!(ipv6["why"].as_str().unwrap().contains("IPv6"), "{ipv6}");

    let latency = &report["latency"];
    for field in [
        "rendezvous_tcp_ms",
        "rendezvous_welcome_ms",
        "stun_ipv4_ms",
        "relay_tcp_ms",
    ] {
        assert_positive(&latency[field]);
    }
    assert_eq!(latency["stun_ipv6_ms"], Value::Null, "{latency}");
    assert_eq!(latency["stun_ipv4_ms"], ipv4["stun_rtt_ms"]);
    // This server relays itself: the relay is its own address.
    assert_eq!(latency["relay"], server.addr.as_str(), "{latency}");
    assert_eq!(latency["relay_error"], Value::Null, "{latency}");

    // Nothing on loopback speaks a port-mapping protocol.
    let portmap = &report["portmap"];
    assert_eq!(portmap["gateway"], "127.0.0.1", "{portmap}");
    for protocol in ["upnp", "nat_pmp", "pcp"] {
        assert_eq!(portmap[protocol], false, "{portmap}");
    }

    let interfaces = report["interfaces"].as_array().unwrap();
    for interface in interfaces {
        assert!(interface["name"].is_string(), "{interface}");
        assert!(interface["class"].is_string(), "{interface}");
        interface["addr"]
            .as_str()
            .unwrap()
            .parse::<IpAddr>()
            .unwrap();
    }
    assert!(
        interfaces
            .iter()
            .any(|i| i["addr"] == "127.0.0.1" && i["class"] == "loopback"),
        "{interfaces:?}"
    );

    // Whatever gateway this machine has: the fields are there, typed.
    let upnp = &report["upnp"];
    assert!(
        upnp["gateway"].is_null() || upnp["gateway"].is_string(),
        "{upnp}"
    );
    assert!(upnp["test_mapping"]["status"].is_string(), "{upnp}");

    assert_eq!(report["verdict"]["code"], "open", "{report}");
    let text = report["verdict"]["text"].as_str().unwrap();
    assert!(text.contains("no NAT"), "{text}");
    // No NAT: every peer reaches us, the UDP-blocked one over TCP.
    let peers = &report["verdict"]["peers"];
    for (kind, code) in [
        ("no_nat", "direct"),
        ("cone", "direct"),
        ("symmetric", "direct"),
        ("udp_blocked", "direct-tcp"),
    ] {
        assert_eq!(peers[kind]["code"], code, "{kind}: {peers}");
        assert!(peers[kind]["text"].as_str().unwrap().len() > 10, "{peers}");
    }
}

#[test]
fn nat_over_ipv6_loopback_reports_ipv6_reachable_and_ipv4_not_tried() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: this host cannot bind [::1]");
        return;
    }
    let server = Server::start_on("[::1]:0", "[::1]:0", &[]);
    let stun = stun_addr(&server);
    assert!(stun.is_ipv6(), "{stun}");
    let mut nat = nat(&server.addr, None, true);
    let report = nat.wait_event("nat", REPORT_WITHIN);
    assert_eq!(nat.finish(), 0, "{report} {}", nat.stderr_text());

    let ipv6 = &report["ipv6"];
    assert_eq!(ipv6["status"], "reachable", "{ipv6}");
    assert_eq!(ipv6["reachable"], true, "{ipv6}");
    assert_eq!(ipv6["stun_server"], stun.to_string(), "{ipv6}");
    let mapped = addr(&ipv6["mapped"]);
    assert_eq!(mapped.ip(), "::1".parse::<IpAddr>().unwrap(), "{ipv6}");
    assert_eq!(mapped.port(), addr(&ipv6["local"]).port(), "{ipv6}");
    assert_eq!(ipv6["port_preserved"], true, "{ipv6}");
    // One STUN address: behaviour unknown, and said why.
    assert_eq!(ipv6["mapping"], "unknown", "{ipv6}");
    assert!(ipv6["mapping_why"].is_string(), "{ipv6}");
    assert_eq!(ipv6["hairpinning"], true, "{ipv6}");
    assert_positive(&ipv6["stun_rtt_ms"]);
    assert_positive(&report["latency"]["stun_ipv6_ms"]);

    // The server's name is [::1]: nothing is sent over IPv4.
    let ipv4 = &report["ipv4"];
    assert_eq!(ipv4["reachable"], false, "{ipv4}");
    assert_eq!(ipv4["stun_server"], Value::Null, "{ipv4}");
    assert_eq!(ipv4["local"], Value::Null, "{ipv4}");
    let status = ipv4["status"].as_str().unwrap();
    assert!(
        ["no_global_address", "no_server_address"].contains(&status),
        "{ipv4}"
    );
    assert_eq!(report["latency"]["stun_ipv4_ms"], Value::Null);

    // The rendezvous and STUN over TCP went over IPv6 too.
    assert_eq!(report["rendezvous"]["reachable"], true, "{report}");
    assert!(addr(&report["tcp"]["mapped"]).is_ipv6(), "{report}");
    assert_eq!(report["verdict"]["code"], "unknown", "{report}");
}

#[test]
fn nat_human_output_on_loopback_says_reachable_and_ports_kept() {
    // The plain layout: one STUN address, so NAT behaviour cannot be
    // tested, and the verdict says what the server needs for that.
    let server = Server::start();
    let stun = stun_addr(&server);
    let mut nat = nat(&server.addr, None, false);
    let verdict = nat.wait_line(|l| l.starts_with("Verdict: "), REPORT_WITHIN);
    assert_eq!(nat.finish(), 0, "{:?} {}", nat.seen, nat.stderr_text());
    let said = nat.seen.join("\n");

    // Labels are aligned: every value starts in the same column.
    assert!(
        said.contains(&format!("Server:       {} (STUN {stun})", server.addr)),
        "{said}"
    );
    let rendezvous = line_starting(&nat.seen, "Rendezvous:   ");
    assert!(
        rendezvous.contains("reachable over TCP, 127.0.0.1:"),
        "{rendezvous}"
    );
    assert!(rendezvous.ends_with("(port kept: yes)"), "{rendezvous}");
    let ipv4 = line_starting(&nat.seen, "IPv4:         ");
    assert!(ipv4.starts_with("IPv4:         yes, "), "{ipv4}");
    assert!(ipv4.contains(" seen as 127.0.0.1:"), "{ipv4}");
    assert!(ipv4.ends_with("(port kept: yes)"), "{ipv4}");
    let ipv6 = line_starting(&nat.seen, "IPv6:         ");
    assert!(ipv6.contains("IPv6"), "{ipv6}");
    let tcp = line_starting(&nat.seen, "TCP:          ");
    assert!(tcp.contains(" seen as 127.0.0.1:"), "{tcp}");
    assert!(
        tcp.ends_with("(port kept: yes; mapping varies by destination port: no)"),
        "{tcp}"
    );
    let mapping = line_starting(&nat.seen, "    mapping:   ");
    assert!(
        mapping.contains("unknown (the STUN server has a single address"),
        "{mapping}"
    );
    assert_eq!(
        line_starting(&nat.seen, "    hairpin:   "),
        "    hairpin:   yes"
    );
    assert_eq!(
        line_starting(&nat.seen, "Port mapping: "),
        "Port mapping: none found (asked UPnP, NAT-PMP, PCP)"
    );
    assert!(line_starting(&nat.seen, "UPnP:         ").len() > 14);
    let latency = line_starting(&nat.seen, "Latency:      ");
    assert!(latency.contains("rendezvous TCP "), "{latency}");
    assert!(
        latency.contains("relay TCP ") && latency.contains(&server.addr),
        "{latency}"
    );
    assert!(verdict.starts_with("Verdict:      "), "{verdict}");
    assert!(
        verdict.contains("direct connections will likely work"),
        "{verdict}"
    );
    assert!(verdict.contains("--stun-alt-ip"), "{verdict}");
    // One line per kind of peer after the verdict, code then sentence.
    for label in ["no NAT", "cone NAT", "symmetric NAT", "UDP blocked"] {
        let line = line_starting(&nat.seen, &format!("    peer {label}:"));
        assert!(line.len() > 40, "{line}");
    }
}

#[test]
fn stun_port_overrides_the_announced_one() {
    let server = Server::start();
    let announced = stun_addr(&server);
    // Nothing listens on this UDP port.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_ne!(closed, announced.port());
    let mut nat = nat(&server.addr, Some(closed), true);
    let report = nat.wait_event("nat", REPORT_WITHIN);
    assert_eq!(nat.finish(), 0, "{report} {}", nat.stderr_text());
    assert_eq!(
        report["stun_server"],
        format!("127.0.0.1:{closed}"),
        "{report}"
    );
    assert_eq!(report["udp"]["blocked"], true, "{report}");
    assert_eq!(report["rendezvous"]["reachable"], true, "{report}");
}

#[test]
fn nat_at_a_closed_port_exits_4_and_names_the_address() {
    // Nothing listens here, for TCP (signalling, STUN over TCP) or UDP.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stun_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("127.0.0.1:{port}");
    // Both at once: each waits out its probes.
    let mut json = nat(&server, Some(stun_port), true);
    let mut human = nat(&server, Some(stun_port), false);

    let report = json.wait_event("nat", REPORT_WITHIN);
    assert_eq!(report["verdict"]["code"], "unreachable", "{report}");
    assert_eq!(report["rendezvous"]["reachable"], false);
    let why = report["rendezvous"]["error"].as_str().unwrap();
    assert!(why.contains(&server), "{why}");
    assert!(report["udp"]["mapped"].is_null() && report["tcp"]["mapped"].is_null());
    let error = json.wait_event("error", REPORT_WITHIN);
    assert_eq!(json.finish(), 4, "{:?}", json.seen);
    assert_eq!(error["exit_code"], 4, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("cannot reach the server {server}")),
        "{message}"
    );

    human.wait_line(|l| l.starts_with("Verdict: "), REPORT_WITHIN);
    assert_eq!(human.finish(), 4, "{:?}", human.seen);
    let rendezvous = line_starting(&human.seen, "Rendezvous: ");
    assert!(rendezvous.contains("not reachable"), "{rendezvous}");
    let stderr = human.stderr_text();
    assert!(
        stderr.contains(&format!("error: cannot reach the server {server}")),
        "{stderr}"
    );
}

/// Starts `ferry nat` against `server`, asking STUN at `stun_port` when
/// given (else where the server's welcome says).
fn nat(server: &str, stun_port: Option<u16>, json: bool) -> Proc {
    let mut cmd = ferry();
    cmd.args(["nat", "--server", server, "--gateway", "127.0.0.1"]);
    if let Some(port) = stun_port {
        cmd.arg("--stun-port").arg(port.to_string());
    }
    if json {
        cmd.arg("--json");
    }
    Proc::spawn(cmd)
}

/// The server's first STUN address, from its `listening` event.
fn stun_addr(server: &Server) -> SocketAddr {
    addr(&server.listening["stun"][0])
}

fn addr(value: &Value) -> SocketAddr {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not an address: {value}"))
        .parse()
        .unwrap()
}

/// Asserts that a `udp` or `tcp` report's mapped address is its own local
/// one: the same port, seen from loopback (the socket is bound to
/// 0.0.0.0).
fn assert_mapped_to_itself(report: &Value) {
    let local = addr(&report["local"]);
    let mapped = addr(&report["mapped"]);
    assert!(mapped.ip().is_loopback(), "{report}");
    assert_eq!(mapped.port(), local.port(), "{report}");
    assert_eq!(report["port_preserved"], true, "{report}");
}

fn assert_positive(value: &Value) {
    let v = value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"));
    assert!(v > 0.0 && v < 10_000.0, "{v}");
}

fn line_starting<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in {lines:?}"))
}
