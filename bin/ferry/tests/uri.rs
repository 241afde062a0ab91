//! The ferry:// URI end to end: the sender's `code` event carries it, a
//! receiver given only the URI (no --server) finds the server from it and
//! gets the bytes, and a bad URI is a usage error that says why.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

/// `ferry receive --json --yes --out OUT` with no --server.
fn receive_without_server(out: &std::path::Path) -> std::process::Command {
    let mut cmd = ferry();
    cmd.args(["receive", "--json", "--yes", "--out"]).arg(out);
    cmd
}

/// Starts `ferry send --json --qr FILE` and returns it with its `code` event.
fn send_file(server: &Server, file: &std::path::Path) -> (Proc, serde_json::Value) {
    let mut cmd = ferry();
    cmd.args(["send", "--json", "--qr", "--server", &server.addr])
        .arg(file);
    let mut send = Proc::spawn(cmd);
    let event = send.wait_event("code", Duration::from_secs(30));
    (send, event)
}

#[test]
fn a_receiver_with_only_the_uri_finds_the_server_and_gets_the_file() {
    let server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("photo.jpg");
    random_file(&file, 200_000);
    let (mut send, event) = send_file(&server, &file);
    let uri = event["uri"].as_str().unwrap().to_string();
    let code = event["code"].as_str().unwrap();
    assert_eq!(uri, format!("ferry://{}/{code}", server.addr), "{event}");
    // --json draws no QR code: every stdout line is a JSON object.
    assert!(
        send.seen.iter().all(|l| l.starts_with('{')),
        "{:?}",
        send.seen
    );

    let mut cmd = receive_without_server(dst.path());
    cmd.arg(&uri);
    let mut recv = Proc::spawn(cmd);
    finish_both(&mut send, &mut recv);
    assert_same_file(&file, &dst.path().join("photo.jpg"));
}

#[test]
fn the_uri_works_from_ferry_code_and_the_set_server_wins_with_a_warning() {
    let server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("notes.txt");
    random_file(&file, 5_000);
    let (mut send, event) = send_file(&server, &file);
    let code = event["code"].as_str().unwrap();
    // A URI naming a server that is not there: --server overrides it.
    let uri = format!("ferry://elsewhere.invalid:9/{code}");
    let mut cmd = receive_without_server(dst.path());
    cmd.args(["--server", &server.addr]).env("FERRY_CODE", &uri);
    let mut recv = Proc::spawn(cmd);
    finish_both(&mut send, &mut recv);
    let warnings = recv.events("warning");
    assert_eq!(warnings.len(), 1, "{:?}", recv.seen);
    let message = warnings[0]["message"].as_str().unwrap();
    assert!(message.contains("elsewhere.invalid:9"), "{message}");
    assert_same_file(&file, &dst.path().join("notes.txt"));
}

#[test]
fn human_send_with_qr_draws_the_code_and_prints_the_uri() {
    let server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("a.txt");
    random_file(&file, 100);
    let mut cmd = ferry();
    cmd.args(["send", "--qr", "--server", &server.addr])
        .arg(&file);
    let mut send = Proc::spawn(cmd);
    let line = send.wait_line(|l| l.starts_with("URI: "), Duration::from_secs(30));
    let uri = line.strip_prefix("URI: ").unwrap();
    assert!(
        uri.starts_with(&format!("ferry://{}/", server.addr)),
        "{uri}"
    );
    // Not a terminal: no colour codes, blocks in the plain style, and a
    // quiet zone (a blank-free line of full blocks) above the code.
    let drawn: Vec<&String> = send
        .seen
        .iter()
        .filter(|l| l.contains('\u{2588}'))
        .collect();
    assert!(drawn.len() > 10, "{:?}", send.seen);
    assert!(drawn.iter().all(|l| !l.contains('\x1b')));
    assert!(drawn[0].chars().all(|c| c == '\u{2588}'), "{}", drawn[0]);
    send.kill();
}

#[test]
fn a_bad_uri_is_a_usage_error_that_says_what_is_wrong() {
    let cases = [
        ("ferry://127.0.0.1:1/7-orbit-lantern?x=1", "query"),
        ("ferry://user@127.0.0.1/7-orbit-lantern", "user"),
        ("ferry://127.0.0.1:99999/7-orbit-lantern", "port"),
        ("ferry://127.0.0.1/7-orbit", "not a ferry code"),
        ("http://127.0.0.1/7-orbit-lantern", "not ferry://"),
        ("ferry://127.0.0.1/7-orbit-lantern/x", "path segment"),
        (
            "ferry://exa\u{1b}]0;pwned\u{7}mple.org/7-orbit-lantern",
            "control character",
        ),
    ];
    for (uri, why) in cases {
        let dst = tempfile::tempdir().unwrap();
        let output = receive_without_server(dst.path())
            .arg(uri)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{uri:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let error: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(error["event"], "error");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(why), "{uri:?}: {message}");
        assert!(
            message.contains("ferry://example.org:443/7-orbit-lantern"),
            "{message}"
        );
        assert!(
            !stdout.contains('\x1b') && !stdout.contains('\u{7}'),
            "{stdout:?}"
        );
    }
    // Human output too: one line on stderr, nothing raw.
    let dst = tempfile::tempdir().unwrap();
    let output = ferry()
        .args(["receive", "--out"])
        .arg(dst.path())
        .arg("ferry://x\u{1b}[2J/7-orbit-lantern")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let all = [output.stdout, output.stderr].concat();
    let text = String::from_utf8(all).unwrap();
    assert!(text.contains("not a ferry URI"), "{text}");
    assert!(!text.contains('\x1b'), "{text:?}");
}

#[test]
fn a_plain_code_without_a_server_says_the_uri_would_do() {
    let dst = tempfile::tempdir().unwrap();
    let output = receive_without_server(dst.path())
        .arg("7-orbit-lantern")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("--server") && stdout.contains("ferry://"),
        "{stdout}"
    );
}
