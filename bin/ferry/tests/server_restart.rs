//! The rendezvous server goes away while clients wait, or while they
//! transfer: a waiting sender reconnects with back-off, holds its nameplate
//! again and keeps its code; a receiver that arrives right after the
//! restart gives that sender a moment; a transfer already on a direct path
//! does not need the server at all.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_waiting_sender_reconnects_after_a_restart_and_its_code_still_works() {
    let mut server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("notes.bin");
    random_file(&file, 300_000);
    let (mut send, code) = start_send(&server, &[file.to_str().unwrap()]);
    server.restart(Duration::from_secs(1), &[]);
    let lost = send.wait_event("server-lost", Duration::from_secs(10));
    assert_eq!(lost["try"], 1, "{lost}");
    let back = send.wait_event("server-back", Duration::from_secs(20));
    assert!(back["after_secs"].as_f64().unwrap() >= 1.0, "{back}");
    let mut recv = start_receive(&server, &code, dst.path(), &["--yes"]);
    finish_both(&mut send, &mut recv);
    assert_same_file(&file, &dst.path().join("notes.bin"));
    assert!(
        recv.events("sender-returning").is_empty(),
        "{:?}",
        recv.seen
    );
}

#[test]
fn a_waiting_sender_rides_out_a_graceful_restart_too() {
    // SIGTERM, as systemd restarts a service: the server says
    // `shutting-down` before it closes, which is a restart, not a refusal.
    let grace = ["--shutdown-grace", "1"];
    let mut server = Server::start_with(&grace);
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("notes.bin");
    random_file(&file, 300_000);
    let (mut send, code) = start_send(&server, &[file.to_str().unwrap()]);
    server.restart_gracefully(Duration::from_millis(500), &grace);
    send.wait_event("server-lost", Duration::from_secs(10));
    send.wait_event("server-back", Duration::from_secs(20));
    let mut recv = start_receive(&server, &code, dst.path(), &["--yes"]);
    finish_both(&mut send, &mut recv);
    assert_same_file(&file, &dst.path().join("notes.bin"));
}

#[test]
fn a_receiver_right_after_the_restart_waits_for_the_sender_to_come_back() {
    let mut server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("notes.bin");
    random_file(&file, 300_000);
    let (mut send, code) = start_send(&server, &[file.to_str().unwrap()]);
    // Down for 4 s: the sender's tries at 0.25, 0.75, 1.75 and 3.75 s are
    // refused and the next comes at 7.75 s, so the receiver started now
    // claims first and hears "no transfer is waiting" from a server that
    // has just started.
    server.restart(Duration::from_secs(4), &[]);
    let mut recv = start_receive(&server, &code, dst.path(), &["--yes"]);
    let returning = recv.wait_event("sender-returning", Duration::from_secs(10));
    assert!(
        returning["wait_secs"].as_f64().unwrap() > 0.0,
        "{returning}"
    );
    finish_both(&mut send, &mut recv);
    assert_same_file(&file, &dst.path().join("notes.bin"));
    assert_eq!(send.events("server-back").len(), 1, "{:?}", send.seen);
}

#[test]
fn a_transfer_on_a_direct_path_carries_on_without_the_server() {
    let mut server = Server::start();
    let mut t = Halfway::start(&server, "film.bin", 12 << 20, "8M", &[], 2 << 20);
    server.stop();
    finish_both(&mut t.send, &mut t.recv);
    assert_same_file(&t.file, &t.dst.path().join("film.bin"));
    for side in [&t.send, &t.recv] {
        assert!(side.events("reconnect").is_empty(), "{:?}", side.seen);
        let paths = side.events("path");
        assert_eq!(paths.len(), 1, "{:?}", side.seen);
        assert_ne!(paths[0]["path"], "relay", "{paths:?}");
    }
}

#[test]
fn a_sender_whose_server_never_comes_back_says_so() {
    // The first connection: a few quick tries, then a clear error.
    let mut cmd = ferry();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = format!("127.0.0.1:{port}");
    cmd.args(["send", "--json", "--server", &server, "--text", "hi"]);
    let mut send = Proc::spawn(cmd);
    let started = std::time::Instant::now();
    let code = send.finish();
    assert_ne!(code, 0);
    let tries = send.events("server-lost");
    assert_eq!(tries.len(), 3, "{:?}", send.seen);
    assert!(started.elapsed() >= Duration::from_millis(3500));
    let error = &send.events("error")[0];
    assert_eq!(error["exit_code"], 4, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("could not reach the rendezvous server"),
        "{message}"
    );
}
