//! `--metrics` on the real binaries: a real `ferry serve` (and `ferry
//! relay`) on loopback, real transfers through it, and `/metrics` read
//! with a real HTTP client (hyper's), checking that the counters moved as
//! the transfers and the refusals say they should.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// A `ferry serve` with `--metrics` on a loopback port; the server and the
/// metrics address.
fn serve_with_metrics(extra: &[&str]) -> (Server, String) {
    let server = Server::start_with(&[&["--metrics", "127.0.0.1:0"], extra].concat());
    let metrics = server.listening["metrics"].as_str().unwrap().to_string();
    (server, metrics)
}

/// A scrape of `/metrics`.
fn scrape(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of `series` (name and labels exactly as exposed) in `text`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Scrapes until `series` has `want` (at most 10 s: gauges and pair ends
/// move a moment after the processes exit); the last scrape.
fn wait_for(addr: &str, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(addr);
        if value(&text, series) == want {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {}, not {want}:\n{text}",
            value(&text, series)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one file of `len` random bytes with `path_args` on both sides;
/// the path both sides said they took (the `path` event's code).
fn transfer(server: &Server, len: usize, path_args: &[&str]) -> String {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("data.bin");
    random_file(&file, len);
    let (mut send, code) = start_send(server, &[path_args, &[file.to_str().unwrap()]].concat());
    let mut recv = start_receive(server, &code, dst.path(), &[path_args, &["--yes"]].concat());
    finish_both(&mut send, &mut recv);
    assert_same_file(&file, &dst.path().join("data.bin"));
    let path = |proc: &Proc| proc.events("path")[0]["path"].as_str().unwrap().to_string();
    assert_eq!(path(&send), path(&recv));
    path(&send)
}

/// The `path` label of `ferry_path_outcomes_total` for a transfer whose
/// `path` event said `code`.
fn outcome_label(code: &str) -> &'static str {
    match code {
        "lan" => "lan",
        "tcp" => "direct_tcp",
        "tcp-simultaneous-open" => "simultaneous_open",
        "quic" => "quic",
        "relay" => "relay",
        other => panic!("unknown path code {other}"),
    }
}

/// Every `ferry_path_outcomes_total` series of `text` with its value.
fn outcomes(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| line.starts_with("ferry_path_outcomes_total{"))
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// The sum of every path outcome counted.
fn outcomes_total(text: &str) -> f64 {
    outcomes(text).iter().map(|(_, n)| n).sum()
}

#[test]
fn health_answers_ok_and_other_paths_404() {
    let (_server, metrics) = serve_with_metrics(&[]);
    assert_eq!(http_get(&metrics, "/health"), (200, "ok\n".to_string()));
    assert_eq!(http_get(&metrics, "/nothing-here").0, 404);
}

#[test]
fn a_relayed_then_a_direct_transfer_move_the_counters() {
    let (server, metrics) = serve_with_metrics(&[]);
    let before = scrape(&metrics);
    assert_eq!(value(&before, "ferry_relay_pairs_total"), 0.0);
    assert_eq!(value(&before, r#"ferry_claims_total{outcome="ok"}"#), 0.0);
    // Every outcome is there from the start, at zero.
    assert_eq!(outcomes(&before).len(), 8, "{before}");
    assert_eq!(outcomes_total(&before), 0.0);

    let relayed = 1024 * 1024;
    let path = transfer(&server, relayed, &["--force-path", "relay"]);
    assert_eq!(path, "relay");
    // Both sides reported the relay; the pairing counts once.
    let text = wait_for(&metrics, r#"ferry_path_outcomes_total{path="relay"}"#, 1.0);
    assert_eq!(outcomes_total(&text), 1.0, "{text}");
    let text = wait_for(
        &metrics,
        r#"ferry_relay_pairs_ended_total{reason="closed"}"#,
        1.0,
    );
    assert_eq!(value(&text, "ferry_relay_pairs_total"), 1.0);
    assert_eq!(value(&text, "ferry_relay_pairs_open"), 0.0);
    let bytes = value(&text, "ferry_relay_bytes_total");
    assert!(bytes >= relayed as f64, "{bytes} bytes relayed");
    assert_eq!(
        value(&text, r#"ferry_nameplates_allocated_total{kind="random"}"#),
        1.0
    );
    assert_eq!(value(&text, r#"ferry_claims_total{outcome="ok"}"#), 1.0);
    assert!(value(&text, r#"ferry_signal_connections_total{kind="relay"}"#) >= 2.0);
    assert!(
        value(
            &text,
            r#"ferry_signal_connections_total{kind="signalling"}"#
        ) >= 2.0
    );

    let path = transfer(&server, 200_000, &[]);
    assert_ne!(path, "relay", "a direct path on loopback");
    let text = wait_for(&metrics, "ferry_nameplates_open", 0.0);
    // Both sides of the direct transfer reported it: counted once, as
    // the path they said they took.
    let series = format!(
        "ferry_path_outcomes_total{{path=\"{}\"}}",
        outcome_label(&path)
    );
    assert_eq!(value(&text, &series), 1.0, "{text}");
    assert_eq!(
        value(&text, r#"ferry_path_outcomes_total{path="relay"}"#),
        1.0
    );
    assert_eq!(outcomes_total(&text), 2.0, "{text}");
    assert_eq!(
        value(&text, r#"ferry_nameplates_allocated_total{kind="random"}"#),
        2.0
    );
    assert_eq!(value(&text, r#"ferry_claims_total{outcome="ok"}"#), 2.0);
    assert_eq!(
        value(&text, r#"ferry_nameplates_closed_total{reason="freed"}"#),
        2.0
    );
    assert_eq!(
        value(&text, r#"ferry_claims_total{outcome="unknown_nameplate"}"#),
        0.0
    );
    assert!(
        value(
            &text,
            r#"ferry_stun_requests_total{transport="udp",socket="primary"}"#
        ) >= 1.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            r#"ferry_connections_accepted_total{listener="signal"}"#
        ) >= 4.0
    );
    let text = wait_for(
        &metrics,
        r#"ferry_connections_open{listener="signal"}"#,
        0.0,
    );
    assert_eq!(value(&text, "ferry_signalling_clients"), 0.0);
}

#[test]
fn a_wrong_code_burns_and_a_late_claim_finds_no_nameplate() {
    let (server, metrics) = serve_with_metrics(&[]);
    let dst = tempfile::tempdir().unwrap();
    let (mut send, code) = start_send(&server, &["--text", "secret"]);
    let wrong = wrong_code_for(&code);
    let mut recv = start_receive(&server, &wrong, dst.path(), &["--yes"]);
    assert_eq!(recv.finish(), 3, "receiver: {:?}", recv.seen);
    assert_eq!(send.finish(), 3, "sender: {:?}", send.seen);
    let text = wait_for(
        &metrics,
        r#"ferry_nameplates_closed_total{reason="burnt"}"#,
        1.0,
    );
    // The wrong-code claim itself found the nameplate.
    assert_eq!(value(&text, r#"ferry_claims_total{outcome="ok"}"#), 1.0);
    assert_eq!(
        value(&text, r#"ferry_nameplates_closed_total{reason="freed"}"#),
        0.0
    );
    // A pairing that never was reports no path.
    assert_eq!(outcomes_total(&text), 0.0, "{text}");

    let mut late = start_receive(&server, &code, dst.path(), &["--yes"]);
    assert_ne!(late.finish(), 0);
    let text = scrape(&metrics);
    assert!(
        value(&text, r#"ferry_claims_total{outcome="unknown_nameplate"}"#) >= 1.0,
        "{text}"
    );
    assert_eq!(value(&text, "ferry_relay_pairs_total"), 0.0);
}

#[test]
fn connections_over_the_per_address_limit_count_as_refusals() {
    let (server, metrics) = serve_with_metrics(&["--max-connections-per-ip", "2"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let signal: SocketAddr = server.addr.parse().unwrap();
    // Two connections that say nothing hold the address's share...
    let held: Vec<_> = (0..2)
        .map(|_| {
            runtime
                .block_on(tokio::net::TcpStream::connect(signal))
                .unwrap()
        })
        .collect();
    wait_for(
        &metrics,
        r#"ferry_connections_open{listener="signal"}"#,
        2.0,
    );
    // ...so a third is refused (and told so).
    let refused = runtime.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut stream = tokio::net::TcpStream::connect(signal).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
        String::from_utf8_lossy(&got).into_owned()
    });
    assert!(refused.contains("server-full"), "{refused}");
    let text = scrape(&metrics);
    assert_eq!(
        value(
            &text,
            r#"ferry_refusals_total{limit="connections_per_address"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"ferry_connections_accepted_total{listener="signal"}"#
        ),
        2.0
    );
    assert_eq!(
        value(&text, r#"ferry_refusals_total{limit="max_connections"}"#),
        0.0
    );
    drop(held);
    wait_for(
        &metrics,
        r#"ferry_connections_open{listener="signal"}"#,
        0.0,
    );
}

#[test]
fn ferry_relay_counts_its_connections_and_refused_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("relay.secret");
    relay_secret(&secret);
    let mut cmd = ferry();
    cmd.args([
        "relay",
        "--json",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--relay-secret-file",
    ])
    .arg(&secret);
    let mut proc = Proc::spawn(cmd);
    let listening = proc.wait_event("listening", Duration::from_secs(20));
    let relay: SocketAddr = listening["relay"].as_str().unwrap().parse().unwrap();
    let metrics = listening["metrics"].as_str().unwrap().to_string();
    assert_eq!(http_get(&metrics, "/health").0, 200);

    // A token this relay did not sign.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let forged = ferry_relay::TokenKey::from_random([9; 32]).issue(
        1,
        ferry_relay::token::unix_secs(SystemTime::now()) + 60,
        [0; 8],
    );
    let refused = runtime.block_on(ferry_relay::relay_connect(
        relay,
        &forged,
        Duration::from_secs(5),
    ));
    assert!(refused.is_err(), "a forged token is refused");
    let text = wait_for(&metrics, r#"ferry_connections_open{listener="relay"}"#, 0.0);
    assert_eq!(
        value(
            &text,
            r#"ferry_relay_refused_total{reason="unknown_token"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"ferry_connections_accepted_total{listener="relay"}"#
        ),
        1.0
    );
    assert_eq!(value(&text, "ferry_relay_pairs_total"), 0.0);
    proc.kill();
}
