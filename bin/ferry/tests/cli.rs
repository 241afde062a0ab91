//! End to end on loopback: a real `ferry serve` and real `ferry send` /
//! `ferry receive` processes.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn sends_empty_one_byte_and_100_mib_files() {
    let server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    fs::write(src.path().join("empty"), b"").unwrap();
    fs::write(src.path().join("one"), b"x").unwrap();
    random_file(&src.path().join("big.bin"), 100 * 1024 * 1024);

    let paths: Vec<String> = ["empty", "one", "big.bin"]
        .iter()
        .map(|n| src.path().join(n).to_string_lossy().into_owned())
        .collect();
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    let (mut send, code) = start_send(&server, &args);
    let mut recv = start_receive(&server, &code, dst.path(), &["--yes"]);

    let offer = recv.wait_event("offer", Duration::from_secs(30));
    assert_eq!(offer["files"], 3);
    assert_eq!(offer["bytes"], 100 * 1024 * 1024 + 1);
    finish_both(&mut send, &mut recv);

    for name in ["empty", "one", "big.bin"] {
        assert_same_file(&src.path().join(name), &dst.path().join(name));
    }
    let done = recv.events("done");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["files"], 3);
    assert_eq!(done[0]["bytes_resumed"], 0);
    // Same machine: a direct path on the LAN (TCP to a private or
    // loopback address) is preferred over QUIC.
    assert_eq!(
        recv.events("path")[0]["path"],
        "lan",
        "{:?}",
        recv.events("path")
    );
    assert_eq!(send.events("path")[0]["path"], "lan");
    assert_eq!(send.events("done")[0]["bytes_total"], 100 * 1024 * 1024 + 1);
    // No leftovers.
    let names: Vec<_> = fs::read_dir(dst.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn sends_a_tree_with_nested_and_empty_directories_and_modes() {
    let server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let root = src.path().join("album");
    fs::create_dir_all(root.join("2024/summer")).unwrap();
    fs::create_dir_all(root.join("empty/deeper-empty")).unwrap();
    random_file(&root.join("2024/summer/beach.jpg"), 300_000);
    fs::write(root.join("readme.txt"), b"hello").unwrap();
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(root.join("readme.txt"), fs::Permissions::from_mode(0o600)).unwrap();

    let (mut send, code) = start_send(&server, &[root.to_str().unwrap()]);
    let mut recv = start_receive(&server, &code, dst.path(), &["--yes"]);
    assert_eq!(
        recv.finish(),
        0,
        "receiver: {:?} {}",
        recv.seen,
        recv.stderr_text()
    );
    assert_eq!(send.finish(), 0, "sender: {:?}", send.seen);

    let got = dst.path().join("album");
    assert_same_file(
        &root.join("2024/summer/beach.jpg"),
        &got.join("2024/summer/beach.jpg"),
    );
    assert_same_file(&root.join("readme.txt"), &got.join("readme.txt"));
    assert!(got.join("empty/deeper-empty").is_dir());
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&got.join("run.sh")), 0o755);
    assert_eq!(mode(&got.join("readme.txt")), 0o600);
}

#[test]
fn text_message_is_delivered() {
    let server = Server::start();
    let dst = tempfile::tempdir().unwrap();
    let (mut send, code) = start_send(&server, &["--text", "meet at the ferry at 9 ✓"]);
    let mut recv = start_receive(&server, &code, dst.path(), &[]);
    let text = recv.wait_event("text", Duration::from_secs(30));
    assert_eq!(text["text"], "meet at the ferry at 9 ✓");
    assert_eq!(recv.finish(), 0);
    assert_eq!(send.finish(), 0, "sender: {:?}", send.seen);
    assert_eq!(
        fs::read_dir(dst.path()).unwrap().count(),
        0,
        "a text writes no file"
    );
}

#[test]
fn wrong_code_fails_on_both_sides() {
    let server = Server::start();
    let dst = tempfile::tempdir().unwrap();
    let (mut send, code) = start_send(&server, &["--text", "secret"]);
    let wrong = wrong_code_for(&code);
    let mut recv = start_receive(&server, &wrong, dst.path(), &["--yes"]);
    assert_eq!(recv.finish(), 3, "receiver: {:?}", recv.seen);
    assert_eq!(send.finish(), 3, "sender: {:?}", send.seen);
    for p in [&recv, &send] {
        let err = &p.events("error")[0];
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("the code did not match"),
            "{err}"
        );
    }
    // The nameplate is burnt: the right code no longer finds a sender.
    let mut late = start_receive(&server, &code, dst.path(), &["--yes"]);
    assert_ne!(late.finish(), 0);
}

#[test]
fn declined_offer_fails_on_both_sides_and_writes_nothing() {
    let server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a.txt"), b"abc").unwrap();
    let (mut send, code) = start_send(&server, &[src.path().join("a.txt").to_str().unwrap()]);
    let mut recv = start_receive(&server, &code, dst.path(), &[]);
    recv.wait_event("offer", Duration::from_secs(30));
    recv.answer("n");
    assert_eq!(recv.finish(), 6, "receiver: {:?}", recv.seen);
    assert_eq!(send.finish(), 6, "sender: {:?}", send.seen);
    assert_eq!(fs::read_dir(dst.path()).unwrap().count(), 0);
}

#[test]
fn existing_file_is_not_overwritten_without_the_flag() {
    let server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a.txt"), b"new").unwrap();
    fs::write(dst.path().join("a.txt"), b"old").unwrap();
    let a = src.path().join("a.txt");

    let (mut send, code) = start_send(&server, &[a.to_str().unwrap()]);
    let mut recv = start_receive(&server, &code, dst.path(), &["--yes"]);
    assert_eq!(recv.finish(), 7, "receiver: {:?}", recv.seen);
    let message = recv.events("error")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("a.txt") && message.contains("--overwrite") && message.contains("--out"),
        "{message}"
    );
    // The sender learns which file, and what the receiver can do.
    assert_ne!(send.finish(), 0);
    let told = send.events("error")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        told.contains("a.txt already exists") && told.contains("the receiver can pass --overwrite"),
        "{told}"
    );
    assert_eq!(fs::read(dst.path().join("a.txt")).unwrap(), b"old");

    let (mut send, code) = start_send(&server, &[a.to_str().unwrap()]);
    let mut recv = start_receive(&server, &code, dst.path(), &["--yes", "--overwrite"]);
    assert_eq!(recv.finish(), 0, "receiver: {:?}", recv.seen);
    assert_eq!(send.finish(), 0);
    assert_eq!(fs::read(dst.path().join("a.txt")).unwrap(), b"new");
}

#[test]
fn transfer_killed_halfway_resumes_from_the_received_bytes() {
    let server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("video.bin");
    random_file(&file, 24 * 1024 * 1024);
    let part = dst.path().join("video.bin.ferry-part");

    // Slow first run (8 MiB/s), receiver killed once a few MiB are in. The
    // sender does not wait for it to come back (it cannot: a restarted
    // receiver is a new pairing).
    let (mut send, code) = start_send(
        &server,
        &[
            "--limit-rate",
            "8M",
            "--retries",
            "0",
            file.to_str().unwrap(),
        ],
    );
    let mut recv = start_receive(&server, &code, dst.path(), &["--yes"]);
    wait_for_part(&part, 4 * 1024 * 1024, &recv);
    recv.kill();
    assert_ne!(
        send.finish(),
        0,
        "the sender must notice the receiver vanished"
    );
    let held = fs::metadata(&part).unwrap().len();
    assert!(held > 0 && held < 24 * 1024 * 1024, "part holds {held}");
    assert!(!dst.path().join("video.bin").exists());

    // Second run at full speed picks up where the first stopped.
    let (mut send, code) = start_send(&server, &[file.to_str().unwrap()]);
    let mut recv = start_receive(&server, &code, dst.path(), &["--yes"]);
    assert_eq!(
        recv.finish(),
        0,
        "receiver: {:?} {}",
        recv.seen,
        recv.stderr_text()
    );
    assert_eq!(send.finish(), 0, "sender: {:?}", send.seen);
    assert_same_file(&file, &dst.path().join("video.bin"));
    assert!(!part.exists());
    let done = &recv.events("done")[0];
    let resumed = done["bytes_resumed"].as_u64().unwrap();
    assert!(resumed > 0, "nothing resumed: {done}");
    assert_eq!(
        resumed + done["bytes_transferred"].as_u64().unwrap(),
        24 * 1024 * 1024,
        "{done}"
    );
    let resume = &recv.events("resume")[0];
    assert!(resume["offset"].as_u64().unwrap() > 0);
}

#[test]
fn relay_restarted_halfway_reconnects_and_resumes_on_its_own() {
    let mut server = Server::start();
    let relay = ["--force-path", "relay"];
    let mut t = Halfway::start(&server, "film.bin", 24 << 20, "8M", &relay, 4 << 20);
    // The relay (with the rendezvous) dies mid-transfer and comes back.
    server.restart(Duration::from_secs(1), &[]);
    assert_eq!(
        t.recv.finish(),
        0,
        "receiver: {:?} {}",
        t.recv.seen,
        t.recv.stderr_text()
    );
    assert_eq!(
        t.send.finish(),
        0,
        "sender: {:?} {}",
        t.send.seen,
        t.send.stderr_text()
    );
    assert_same_file(&t.file, &t.dst.path().join("film.bin"));
    assert!(!t.part.exists());
    for side in [&t.send, &t.recv] {
        assert!(!side.events("reconnect").is_empty(), "{:?}", side.seen);
        assert_eq!(side.events("reconnected").len(), 1, "{:?}", side.seen);
        let paths = side.events("path");
        assert_eq!(paths.len(), 2, "{:?}", side.seen);
        assert!(paths.iter().all(|p| p["path"] == "relay"), "{paths:?}");
    }
    let done = &t.recv.events("done")[0];
    let resumed = done["bytes_resumed"].as_u64().unwrap();
    assert!(resumed >= 4 * 1024 * 1024, "resumed only {resumed}: {done}");
    assert_eq!(
        resumed + done["bytes_transferred"].as_u64().unwrap(),
        24 * 1024 * 1024,
        "{done}"
    );
}

#[test]
fn a_relay_byte_limit_is_told_apart_from_a_broken_path_and_the_transfer_resumes() {
    // The relay ends each pair after 8 MiB; a 20 MiB relayed transfer
    // takes three pairs. Both sides say it was the relay's limit, not a
    // broken path, and the file arrives whole.
    let server = Server::start_with(&["--relay-max-bytes", "8M"]);
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    random_file(&file, 20 << 20);
    let args = ["--force-path", "relay", "--retries", "5"];
    let (mut send, code) = start_send(&server, &[&args[..], &[file.to_str().unwrap()]].concat());
    let mut recv = start_receive(
        &server,
        &code,
        dst.path(),
        &[&args[..], &["--yes"]].concat(),
    );
    finish_both(&mut send, &mut recv);
    assert_same_file(&file, &dst.path().join("big.bin"));
    for side in [&send, &recv] {
        let paths = side.events("path");
        assert!(paths.len() >= 3, "{:?}", side.seen);
        assert_eq!(paths[0]["relay_limits"]["max_bytes"], 8 << 20, "{paths:?}");
        let reconnects = side.events("reconnect");
        assert!(!reconnects.is_empty(), "{:?}", side.seen);
        assert!(
            reconnects.iter().all(|r| r["relay_limit"] == "bytes"),
            "{reconnects:?}"
        );
    }
}

#[test]
fn without_retries_a_broken_path_fails_cleanly() {
    let mut server = Server::start();
    let args = ["--force-path", "relay", "--retries", "0"];
    let mut t = Halfway::start(&server, "f.bin", 16 << 20, "8M", &args, 2 << 20);
    server.restart(Duration::ZERO, &[]);
    assert_eq!(t.recv.finish(), 4, "receiver: {:?}", t.recv.seen);
    assert_ne!(t.send.finish(), 0, "sender: {:?}", t.send.seen);
    assert!(t.recv.events("reconnect").is_empty());
    assert!(
        t.part.exists(),
        "the verified part is kept for a later resume"
    );
    assert!(!t.dst.path().join("f.bin").exists());
}

/// Ctrl-C on one side (the sender when `sender`) halfway through: that
/// side exits 130, the other at once with 6 (peer gone), and neither tries
/// to reconnect: a deliberate stop is not a broken path.
fn interrupt_halfway(sender: bool) {
    let server = Server::start();
    let mut t = Halfway::start(&server, "f.bin", 16 << 20, "4M", &[], 1 << 20);
    let (stopped, other) = if sender {
        (&mut t.send, &mut t.recv)
    } else {
        (&mut t.recv, &mut t.send)
    };
    let interrupted = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-INT", &stopped.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        stopped.finish(),
        130,
        "interrupted side: {:?}",
        stopped.seen
    );
    assert_eq!(
        other.finish(),
        6,
        "other side: {:?} {}",
        other.seen,
        other.stderr_text()
    );
    assert!(
        interrupted.elapsed() < Duration::from_secs(10),
        "the other side took {:?} to notice",
        interrupted.elapsed()
    );
    assert!(other.events("reconnect").is_empty(), "{:?}", other.seen);
    assert!(t.part.exists(), "the verified part is kept");
}

#[test]
fn ctrl_c_on_the_receiver_ends_the_sender_at_once() {
    interrupt_halfway(false);
}

#[test]
fn ctrl_c_on_the_sender_ends_the_receiver_at_once() {
    interrupt_halfway(true);
}

#[test]
fn server_flag_is_required_and_errors_say_what_to_do() {
    let out = ferry().args(["receive", "1-x-y"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--server") && stderr.contains("FERRY_SERVER"),
        "{stderr}"
    );

    // Nothing listens on this port: a clear network error, exit 4.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = ferry()
        .args([
            "send",
            "--text",
            "x",
            "--server",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "could not reach the rendezvous server at 127.0.0.1:{port}"
        )) && stderr
            .contains("is `ferry serve` running there, on that port? set --server or FERRY_SERVER"),
        "{stderr}"
    );

    let help = ferry().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes"));
}

#[test]
fn serve_reports_a_port_it_cannot_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = ferry().args(["serve", "--listen", &addr]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--listen"), "{stderr}");
}

/// Sends a random file with `--force-path FORCE` on both sides; checks
/// the bytes and that both sides report `path`. Returns the receiver's
/// `path` event.
fn forced_path_moves_a_file(server: &Server, force: &str, path: &str) -> serde_json::Value {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("f.bin");
    random_file(&file, 6 * 1024 * 1024 + 17);
    let (mut send, code) = start_send(server, &["--force-path", force, file.to_str().unwrap()]);
    let mut recv = start_receive(server, &code, dst.path(), &["--yes", "--force-path", force]);
    assert_eq!(
        recv.finish(),
        0,
        "receiver: {:?} {}",
        recv.seen,
        recv.stderr_text()
    );
    assert_eq!(send.finish(), 0, "sender: {:?}", send.seen);
    assert_same_file(&file, &dst.path().join("f.bin"));
    assert_eq!(send.events("path")[0]["path"], path);
    let event = recv.events("path")[0].clone();
    assert_eq!(event["path"], path);
    event
}

#[test]
fn forced_udp_path_moves_the_file_over_quic() {
    let server = Server::start();
    forced_path_moves_a_file(&server, "udp", "quic");
}

#[test]
fn forced_relay_path_moves_the_file_through_the_server() {
    let server = Server::start();
    let event = forced_path_moves_a_file(&server, "relay", "relay");
    assert_eq!(event["remote"], server.addr.as_str());
}

#[test]
fn forced_relay_path_fails_clearly_when_the_server_does_not_relay() {
    let server = Server::start_with(&["--no-relay"]);
    let dst = tempfile::tempdir().unwrap();
    let (mut send, code) = start_send(&server, &["--force-path", "relay", "--text", "x"]);
    let mut recv = start_receive(
        &server,
        &code,
        dst.path(),
        &["--yes", "--force-path", "relay"],
    );
    assert_eq!(recv.finish(), 4, "receiver: {:?}", recv.seen);
    assert_eq!(send.finish(), 4, "sender: {:?}", send.seen);
    let message = recv.events("error")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("offers no relay"), "{message}");
    assert!(message.contains("--no-relay"), "{message}");
}

#[test]
fn forced_relay_path_goes_through_a_relay_on_another_host() {
    // The relay alone on 127.0.0.2, the rendezvous server on 127.0.0.1
    // sending clients there; they share only the secret file.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("relay.secret");
    relay_secret(&secret);
    let relay = Relay::start("127.0.0.2:0", &secret);
    assert!(relay.addr.starts_with("127.0.0.2:"), "{}", relay.addr);
    let server = Server::start_with(&[
        "--relay-url",
        &relay.addr,
        "--relay-secret-file",
        secret.to_str().unwrap(),
    ]);
    assert_eq!(server.listening["relay"], false, "{}", server.listening);
    assert_eq!(server.listening["relay_url"], relay.addr.as_str());
    let event = forced_path_moves_a_file(&server, "relay", "relay");
    assert_eq!(event["remote"], relay.addr.as_str(), "{event}");
}

#[test]
fn relay_with_another_secret_refuses_and_the_error_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.secret");
    let theirs = dir.path().join("theirs.secret");
    relay_secret(&ours);
    relay_secret(&theirs);
    let relay = Relay::start("127.0.0.2:0", &theirs);
    let server = Server::start_with(&[
        "--relay-url",
        &relay.addr,
        "--relay-secret-file",
        ours.to_str().unwrap(),
    ]);
    let dst = tempfile::tempdir().unwrap();
    let (mut send, code) = start_send(&server, &["--force-path", "relay", "--text", "x"]);
    let mut recv = start_receive(
        &server,
        &code,
        dst.path(),
        &["--yes", "--force-path", "relay"],
    );
    assert_eq!(recv.finish(), 4, "receiver: {:?}", recv.seen);
    assert_ne!(send.finish(), 0, "sender: {:?}", send.seen);
    let message = recv.events("error")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("unknown relay token") && message.contains("--relay-secret-file"),
        "{message}"
    );
}

#[test]
fn relay_setup_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("relay.secret");
    relay_secret(&secret);
    let short = dir.path().join("short.secret");
    fs::write(&short, "00112233").unwrap();
    let run = |args: &[&str]| {
        let out = ferry().args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let secret = secret.to_str().unwrap();
    let listen = ["--listen", "127.0.0.1:0", "--no-stun"];

    let (code, stderr) = run(&[
        &["serve"][..],
        &listen,
        &[
            "--no-relay",
            "--relay-url",
            "127.0.0.1:9",
            "--relay-secret-file",
            secret,
        ],
    ]
    .concat());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("drop one of the two"), "{stderr}");

    let (code, stderr) = run(&[&["serve"][..], &listen, &["--relay-url", "127.0.0.1:9"]].concat());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--relay-secret-file"), "{stderr}");

    let (code, stderr) = run(&[&["serve"][..], &listen, &["--relay-secret-file", secret]].concat());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("add --relay-url"), "{stderr}");

    let (code, stderr) = run(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--relay-secret-file",
        short.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(7), "{stderr}");
    assert!(
        stderr.contains("4 bytes") && stderr.contains("openssl rand -hex 32"),
        "{stderr}"
    );

    let missing = dir.path().join("missing.secret");
    let (code, stderr) = run(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--relay-secret-file",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(7), "{stderr}");
    assert!(
        stderr.contains("cannot read the relay secret file") && stderr.contains("openssl rand"),
        "{stderr}"
    );

    let (code, stderr) = run(&[
        &["serve"][..],
        &listen,
        &[
            "--relay-url",
            "relay.invalid:443",
            "--relay-secret-file",
            secret,
        ],
    ]
    .concat());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot resolve --relay-url"), "{stderr}");
}
