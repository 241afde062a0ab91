//! The code stays out of the process list: `FERRY_CODE` and `--code-file`
//! carry it on both sides (real transfers through a real `ferry serve` on
//! loopback), the sender's hint does not print a command with the code in
//! it, and a receiver without a code and without a terminal says how to
//! give one.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use rand::Rng;

/// A valid code of our own choosing (each test has its own server).
fn chosen_code() -> String {
    let mut rng = rand::thread_rng();
    let words = ferry_proto::code::WORDS;
    format!(
        "{}-{}-{}",
        rng.gen_range(100..100_000),
        words[rng.gen_range(0..words.len())],
        words[rng.gen_range(0..words.len())]
    )
}

/// `ferry receive --json` with no code on its command line.
fn receive_without_argument(server: &Server, out: &std::path::Path) -> std::process::Command {
    let mut cmd = ferry();
    cmd.args([
        "receive",
        "--json",
        "--yes",
        "--server",
        &server.addr,
        "--out",
    ])
    .arg(out);
    cmd
}

#[test]
fn ferry_code_on_the_sender_and_code_file_on_the_receiver_move_a_file() {
    let server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("report.pdf");
    random_file(&file, 300_000);
    let code = chosen_code();

    let mut cmd = ferry();
    cmd.args(["send", "--json", "--server", &server.addr])
        .arg(&file)
        .env("FERRY_CODE", &code);
    let mut send = Proc::spawn(cmd);
    let shown = send.wait_event("code", Duration::from_secs(30));
    assert_eq!(shown["code"], code.as_str());
    assert!(
        !shown["command"].as_str().unwrap().contains(&code),
        "the command to run holds the code: {shown}"
    );

    let code_file = src.path().join("code.txt");
    fs::write(&code_file, format!("{code}\n")).unwrap();
    let mut cmd = receive_without_argument(&server, dst.path());
    cmd.arg("--code-file").arg(&code_file);
    let mut recv = Proc::spawn(cmd);
    assert_eq!(recv.finish(), 0, "receiver: {:?}", recv.seen);
    assert_eq!(send.finish(), 0, "sender: {:?}", send.seen);
    assert_same_file(&file, &dst.path().join("report.pdf"));
}

#[test]
fn code_file_on_the_sender_and_ferry_code_on_the_receiver_move_a_file() {
    let server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("notes.txt");
    random_file(&file, 1000);
    let code = chosen_code();
    let code_file = src.path().join("code");
    fs::write(&code_file, &code).unwrap();

    let mut cmd = ferry();
    cmd.args(["send", "--json", "--server", &server.addr, "--code-file"])
        .arg(&code_file)
        .arg(&file);
    let mut send = Proc::spawn(cmd);
    assert_eq!(
        send.wait_event("code", Duration::from_secs(30))["code"],
        code.as_str()
    );

    let mut cmd = receive_without_argument(&server, dst.path());
    cmd.env("FERRY_CODE", &code);
    let mut recv = Proc::spawn(cmd);
    assert_eq!(recv.finish(), 0, "receiver: {:?}", recv.seen);
    assert_eq!(send.finish(), 0, "sender: {:?}", send.seen);
    assert_same_file(&file, &dst.path().join("notes.txt"));
}

#[test]
fn sender_hint_shows_the_code_once_and_says_to_type_it() {
    let server = Server::start();
    let mut cmd = ferry();
    cmd.args(["send", "--server", &server.addr, "--text", "hi"]);
    let mut send = Proc::spawn(cmd);
    let code_line = send.wait_line(|l| code_in(l).is_some(), Duration::from_secs(30));
    let code = code_in(&code_line).unwrap();
    let hint = send.wait_line(|l| l.contains("ferry receive"), Duration::from_secs(10));
    assert!(hint.contains("type the code"), "{hint}");
    assert!(hint.contains("FERRY_CODE"), "{hint}");
    send.kill();
    let shown = send.seen.iter().filter(|l| l.contains(&code)).count();
    assert_eq!(shown, 1, "the code shown {shown} times: {:?}", send.seen);
}

#[test]
fn receive_without_a_code_or_terminal_names_the_ways_to_give_one() {
    let server = Server::start();
    let dst = tempfile::tempdir().unwrap();
    // stdin is a pipe here, not a terminal: nothing to prompt on.
    let mut recv = Proc::spawn(receive_without_argument(&server, dst.path()));
    assert_eq!(recv.finish(), 2, "{:?}", recv.seen);
    let message = recv.events("error")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    for way in ["FERRY_CODE", "--code-file", "terminal", "process list"] {
        assert!(message.contains(way), "{way:?} missing: {message}");
    }

    let help = ferry().args(["receive", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("process list") && help.contains("--code-file"),
        "{help}"
    );
}
