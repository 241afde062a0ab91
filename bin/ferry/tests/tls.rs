//! TLS on the server port, end to end with the real binary on loopback: a
//! CA and a leaf made here (rcgen), a self-signed server and its pin,
//! plain clients on a TLS port, the relay inside TLS, SIGHUP reloads.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::certs::{Pem, ca_and_leaf};
use common::*;

/// A self-signed certificate written to `dir/NAME.pem` and `NAME.key`.
fn self_signed(dir: &Path, name: &str) -> Pem {
    let made = rcgen::generate_simple_self_signed(vec!["ferry.invalid".to_string()]).unwrap();
    let pem = Pem {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pem.cert, made.cert.pem()).unwrap();
    std::fs::write(&pem.key, made.signing_key.serialize_pem()).unwrap();
    pem
}

fn tls_server(pem: &Pem) -> Server {
    Server::start_with(&[
        "--tls-cert",
        pem.cert.to_str().unwrap(),
        "--tls-key",
        pem.key.to_str().unwrap(),
    ])
}

fn fingerprint(server: &Server) -> String {
    server.listening["tls_sha256"].as_str().unwrap().to_string()
}

/// Sends a text with `send_args` and receives it with `recv_args`; both
/// must succeed and the text arrive.
fn text_goes_through(server: &Server, send_args: &[&str], recv_args: &[&str]) {
    let dst = tempfile::tempdir().unwrap();
    let mut args = send_args.to_vec();
    args.extend(["--text", "over tls"]);
    let (mut send, code) = start_send(server, &args);
    let mut args = recv_args.to_vec();
    args.push("--yes");
    let mut recv = start_receive(server, &code, dst.path(), &args);
    finish_both(&mut send, &mut recv);
    let text = recv.events("text");
    assert_eq!(text[0]["text"], "over tls", "{:?}", recv.seen);
}

#[test]
fn a_whole_transfer_through_the_relay_runs_inside_tls_verified_against_a_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, pem) = ca_and_leaf(dir.path());
    let server = tls_server(&pem);
    assert_eq!(server.listening["tls"], true, "{}", server.listening);
    assert_eq!(fingerprint(&server).len(), 64);

    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("f.bin");
    random_file(&file, 3 * 1024 * 1024 + 5);
    let ca = ca.to_str().unwrap();
    let (mut send, code) = start_send(
        &server,
        &[
            "--tls-ca",
            ca,
            "--force-path",
            "relay",
            file.to_str().unwrap(),
        ],
    );
    let mut recv = start_receive(
        &server,
        &code,
        dst.path(),
        &["--tls-ca", ca, "--yes", "--force-path", "relay"],
    );
    finish_both(&mut send, &mut recv);
    assert_same_file(&file, &dst.path().join("f.bin"));
    assert_eq!(recv.events("path")[0]["path"], "relay");
    assert_eq!(send.events("path")[0]["path"], "relay");
}

#[test]
fn a_certificate_from_another_ca_is_refused_and_never_falls_back_to_plain() {
    let dir = tempfile::tempdir().unwrap();
    let (_, pem) = ca_and_leaf(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _) = ca_and_leaf(other.path());
    let server = tls_server(&pem);
    let mut cmd = ferry();
    cmd.args(["send", "--json", "--server", &server.addr, "--tls-ca"])
        .arg(&other_ca)
        .args(["--text", "x"]);
    let mut send = Proc::spawn(cmd);
    assert_eq!(send.finish(), 4, "{:?}", send.seen);
    let message = send.events("error")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("TLS handshake"), "{message}");
    assert!(message.contains("not valid"), "{message}");
    assert!(send.events("code").is_empty(), "{:?}", send.seen);
}

#[test]
fn a_self_signed_server_works_with_its_pin_and_a_wrong_pin_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let pem = self_signed(dir.path(), "self");
    let server = tls_server(&pem);
    let pin = fingerprint(&server);
    // The pin on --server, and as --server-sha256 with colons and capitals.
    let on_server = format!("{}#sha256={pin}", server.addr);
    let colons = pin
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let mut cmd = ferry();
    cmd.args(["send", "--json", "--server", &on_server, "--text", "pinned"]);
    let mut send = Proc::spawn(cmd);
    let code = send.wait_event("code", Duration::from_secs(30))["code"]
        .as_str()
        .unwrap()
        .to_string();
    let dst = tempfile::tempdir().unwrap();
    let mut recv = start_receive(
        &server,
        &code,
        dst.path(),
        &["--yes", "--server-sha256", &colons],
    );
    finish_both(&mut send, &mut recv);
    assert_eq!(recv.events("text")[0]["text"], "pinned");

    let wrong = "ab".repeat(32);
    let mut cmd = ferry();
    cmd.args([
        "send",
        "--json",
        "--server",
        &server.addr,
        "--server-sha256",
        &wrong,
    ])
    .args(["--text", "x"]);
    let mut send = Proc::spawn(cmd);
    assert_eq!(send.finish(), 4, "{:?}", send.seen);
    let message = send.events("error")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains(&format!("fingerprint {pin}")), "{message}");
    assert!(
        message.contains(&format!("not the pinned {wrong}")),
        "{message}"
    );
}

#[test]
fn the_uri_carries_the_pin_and_receive_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let pem = self_signed(dir.path(), "self");
    let server = tls_server(&pem);
    let pin = fingerprint(&server);
    let (mut send, _) = start_send(&server, &["--server-sha256", &pin, "--text", "pinned"]);
    let uri = send.events("code")[0]["uri"].as_str().unwrap().to_string();
    assert!(uri.ends_with(&format!("#sha256={pin}")), "{uri}");
    let dst = tempfile::tempdir().unwrap();
    let mut cmd = ferry();
    cmd.args(["receive", "--json", "--yes", "--out"])
        .arg(dst.path())
        .arg(&uri);
    let mut recv = Proc::spawn(cmd);
    finish_both(&mut send, &mut recv);
    assert_eq!(recv.events("text")[0]["text"], "pinned");
}

#[test]
fn plain_clients_keep_working_on_a_tls_port_and_through_its_relay() {
    let dir = tempfile::tempdir().unwrap();
    let pem = self_signed(dir.path(), "self");
    let server = tls_server(&pem);
    // A plain sender is told TLS is there.
    let (mut send, _) = start_send(&server, &["--text", "x"]);
    let note = send.events("note");
    assert!(
        note[0]["message"].as_str().unwrap().contains("offers TLS"),
        "{note:?}"
    );
    send.kill();
    // One side plain, the other in TLS, meeting at the same relay.
    let pin = fingerprint(&server);
    text_goes_through(
        &server,
        &["--force-path", "relay"],
        &["--server-sha256", &pin, "--force-path", "relay"],
    );
}

#[test]
fn a_tls_client_of_a_plain_server_is_told_the_server_speaks_no_tls() {
    let server = Server::start();
    let mut cmd = ferry();
    cmd.args([
        "send",
        "--json",
        "--server",
        &server.addr,
        "--tls",
        "--text",
        "x",
    ]);
    let mut send = Proc::spawn(cmd);
    assert_eq!(send.finish(), 4, "{:?}", send.seen);
    let message = send.events("error")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("TLS"), "{message}");
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_and_keeps_it_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let first = self_signed(dir.path(), "first");
    let second = self_signed(dir.path(), "second");
    let live = Pem {
        cert: dir.path().join("live.pem"),
        key: dir.path().join("live.key"),
    };
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let mut cmd = ferry();
    cmd.args([
        "serve",
        "--json",
        "--listen",
        "127.0.0.1:0",
        "--stun-listen",
        "127.0.0.1:0",
        "--stun-second-port",
        "0",
        "--tls-cert",
        live.cert.to_str().unwrap(),
        "--tls-key",
        live.key.to_str().unwrap(),
    ]);
    let mut serve = Proc::spawn(cmd);
    let listening = serve.wait_event("listening", Duration::from_secs(20));
    let addr = listening["signal"].as_str().unwrap().to_string();
    let old_pin = listening["tls_sha256"].as_str().unwrap().to_string();

    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    hangup(&serve);
    let new_pin = pin_of_second(dir.path());
    assert_ne!(new_pin, old_pin);
    wait_until_pin_works(&addr, &new_pin);
    assert!(
        !pin_works(&addr, &old_pin),
        "the old certificate is still served"
    );

    // A broken file: logged, and the certificate in use stays.
    std::fs::write(&live.cert, "not a certificate").unwrap();
    hangup(&serve);
    std::thread::sleep(Duration::from_millis(500));
    assert!(pin_works(&addr, &new_pin));
    serve.kill();
    let log = serve.stderr_text();
    assert!(log.contains("still using the old one"), "{log}");
}

fn pin_of_second(dir: &Path) -> String {
    // What `ferry serve` would print: the SHA-256 of the leaf's DER.
    let pem = std::fs::read(dir.join("second.pem")).unwrap();
    ferry_relay::tls::sha256_hex(&pem_der(&pem))
}

fn pem_der(pem: &[u8]) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .unwrap()
        .to_vec()
}

fn hangup(proc: &Proc) {
    let status = Command::new("kill")
        .args(["-HUP", &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Whether a new signalling connection with this pin gets a welcome: it
/// sees the certificate served now.
fn pin_works(addr: &str, pin: &str) -> bool {
    let server = format!("{addr}#sha256={pin}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        ferry_rendezvous::SignalClient::connect(&server)
            .await
            .is_ok()
    })
}

fn wait_until_pin_works(addr: &str, pin: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pin_works(addr, pin) {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_tls_options_come_from_the_environment_and_the_config_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, "tls_key = \"/etc/ferry/privkey.pem\"\n").unwrap();
    for sub in ["serve", "relay"] {
        let mut cmd = ferry();
        cmd.args([sub, "--print-config"])
            .env("FERRY_CONFIG", &config)
            .env("FERRY_TLS_CERT", "/etc/ferry/fullchain.pem");
        if sub == "relay" {
            cmd.args(["--relay-secret-file", "/nonexistent"]);
        }
        let output = cmd.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(
            text.contains("tls_cert = \"/etc/ferry/fullchain.pem\"  # environment FERRY_TLS_CERT"),
            "{sub}: {text}"
        );
        assert!(
            text.contains("tls_key = \"/etc/ferry/privkey.pem\"  # config file"),
            "{sub}: {text}"
        );
    }
}

#[test]
fn a_pin_from_the_environment_or_the_client_file_is_checked_as_one_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let pem = self_signed(dir.path(), "self");
    let server = tls_server(&pem);
    let wrong = "cd".repeat(32);
    let config = tempfile::tempdir().unwrap();
    std::fs::create_dir(config.path().join("ferry")).unwrap();
    std::fs::write(
        config.path().join("ferry/config.toml"),
        format!(
            "server = \"{}\"\nserver_sha256 = \"{wrong}\"\n",
            server.addr
        ),
    )
    .unwrap();
    let from_file = {
        let mut cmd = ferry();
        cmd.env("XDG_CONFIG_HOME", config.path())
            .args(["send", "--json", "--text", "x"]);
        cmd
    };
    let from_env = {
        let mut cmd = ferry();
        cmd.env("FERRY_SERVER_SHA256", &wrong).args([
            "send",
            "--json",
            "--server",
            &server.addr,
            "--text",
            "x",
        ]);
        cmd
    };
    for cmd in [from_file, from_env] {
        let mut send = Proc::spawn(cmd);
        assert_eq!(send.finish(), 4, "{:?}", send.seen);
        let message = send.events("error")[0]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains(&format!("not the pinned {wrong}")),
            "{message}"
        );
    }
    // And the right pin from the environment works.
    let pin = fingerprint(&server);
    let mut cmd = ferry();
    cmd.env("FERRY_SERVER_SHA256", &pin).args([
        "send",
        "--json",
        "--server",
        &server.addr,
        "--text",
        "x",
    ]);
    let mut send = Proc::spawn(cmd);
    send.wait_event("code", Duration::from_secs(30));
}

/// `ferry relay` with a self-signed certificate on a port of its own; the
/// relay's address and its certificate's SHA-256.
fn tls_relay(dir: &Path, secret: &Path) -> (Proc, String, String) {
    let pem = self_signed(dir, "relay");
    let mut cmd = ferry();
    cmd.args(["relay", "--json", "--listen", "127.0.0.1:0"])
        .arg("--relay-secret-file")
        .arg(secret)
        .arg("--tls-cert")
        .arg(&pem.cert)
        .arg("--tls-key")
        .arg(&pem.key);
    let mut proc = Proc::spawn(cmd);
    let listening = proc.wait_event("listening", Duration::from_secs(20));
    let relay = listening["relay"].as_str().unwrap().to_string();
    let pin = listening["tls_sha256"].as_str().unwrap().to_string();
    (proc, relay, pin)
}

#[test]
fn a_self_signed_relay_on_a_host_of_its_own_is_reached_in_tls_by_its_pin() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("relay.secret");
    relay_secret(&secret);
    let (_relay, relay_addr, pin) = tls_relay(dir.path(), &secret);
    // The relay's TLS is for clients whose signalling runs in TLS (a plain
    // client's token crossed the path in the clear already): a TLS server,
    // self-signed too, its clients pinning it.
    let server_pem = self_signed(dir.path(), "server");
    let serve = |pin: &str| {
        Server::start_with(&[
            "--tls-cert",
            server_pem.cert.to_str().unwrap(),
            "--tls-key",
            server_pem.key.to_str().unwrap(),
            "--relay-url",
            &relay_addr,
            "--relay-secret-file",
            secret.to_str().unwrap(),
            "--relay-tls",
            "--relay-sha256",
            pin,
        ])
    };
    let server = serve(&pin);
    let server_pin = fingerprint(&server);
    let dst = tempfile::tempdir().unwrap();
    let relay = ["--force-path", "relay", "--server-sha256", &server_pin];
    let (mut send, code) = start_send(
        &server,
        &[&relay[..], &["--text", "via tls relay"]].concat(),
    );
    let mut recv = start_receive(
        &server,
        &code,
        dst.path(),
        &[&relay[..], &["--yes"]].concat(),
    );
    finish_both(&mut send, &mut recv);
    assert_eq!(recv.events("text")[0]["text"], "via tls relay");
    for side in [&send, &recv] {
        let path = &side.events("path")[0];
        assert_eq!(path["path"], "relay", "{path}");
        assert_eq!(path["remote"], relay_addr.as_str(), "{path}");
    }

    // A server that gives its clients the wrong pin: the relay is refused
    // (never reached without TLS), and both sides say why.
    let wrong = serve(&"ab".repeat(32));
    let wrong_pin = fingerprint(&wrong);
    let relay = ["--force-path", "relay", "--server-sha256", &wrong_pin];
    let (mut send, code) = start_send(&wrong, &[&relay[..], &["--text", "never"]].concat());
    let mut recv = start_receive(
        &wrong,
        &code,
        dst.path(),
        &[&relay[..], &["--yes"]].concat(),
    );
    let recv_rc = recv.finish();
    let send_rc = send.finish();
    assert_ne!(recv_rc, 0, "{:?}", recv.seen);
    assert_ne!(send_rc, 0, "{:?}", send.seen);
    assert!(recv.events("text").is_empty());
    let error = &recv.events("error")[0];
    eprintln!("wrong relay pin: {error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("relay") && message.contains("SHA-256"),
        "{error}"
    );
}
