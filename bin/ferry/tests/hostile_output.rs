//! A hostile peer tries to drive the other side's terminal: file names,
//! text messages, decline and error reasons carrying an OSC 52 clipboard
//! write, a clear-screen, C1 controls, bidi overrides and newlines that fake
//! a line. The real `ferry` binary against a real `ferry serve` on
//! loopback; the hostile side pairs through the library and then speaks
//! the transfer protocol by hand. What the user's terminal receives
//! (stdout and stderr) must hold none of those characters raw.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use ferry_session::Sender;
use ferry_transfer::codec::{self, Frame};
use ferry_transfer::{Control, Entry, EntryKind, Manifest, Offer, ReceiveOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Stream = ferry_connect::PeerStream;

const OSC52: &str = "\x1b]52;c;ZWNobyBwd25lZA==\x07";
const CLEAR: &str = "\x1b[2J\x1b[H";
const FAKE_DONE: &str = "Received 1 file, 1 B over LAN in 0.1 s at 1 B/s; all verified (BLAKE3).";

/// The names a hostile sender offers.
fn hostile_names() -> Vec<String> {
    vec![
        format!("clip{OSC52}.txt"),
        format!("cls{CLEAR}.txt"),
        format!("a.txt\n{FAKE_DONE}\nb.txt"),
        "c1\u{9b}2Jcsi.txt".into(),
        "invoice\u{202e}fdp.exe".into(),
        "iso\u{2066}late\u{2069}.txt".into(),
        "del\x7f\r.txt".into(),
    ]
}

/// Whether `c` would act on a terminal (C0 but tab, DEL, C1, bidi).
fn raw(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}'
        )
}

/// Asserts that nothing the process printed holds a raw control or bidi
/// character, nor a line the peer faked.
fn assert_terminal_safe(what: &str, stdout: &[String], stderr: &str) {
    for (stream, text) in [
        ("stdout", stdout.join("\n")),
        ("stderr", stderr.to_string()),
    ] {
        let bad: Vec<char> = text.chars().filter(|&c| c != '\n' && raw(c)).collect();
        assert!(bad.is_empty(), "{what}: raw {bad:?} on {stream}: {text:?}");
        assert!(
            !text.lines().any(|l| l.trim() == FAKE_DONE),
            "{what}: a faked line on {stream}: {text:?}"
        );
    }
}

async fn write_frame(stream: &mut Stream, frame: Frame) {
    let mut buf = BytesMut::new();
    codec::encode(&frame, &mut buf);
    stream.write_all(&buf).await.unwrap();
    stream.flush().await.unwrap();
}

async fn read_frame(stream: &mut Stream, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Ok(Some(frame)) = codec::decode(buf) {
            return Some(frame);
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read_buf(buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
    }
}

/// `ferry receive` (human output unless `args` say `--json`).
fn receive_cmd(server: &Server, code: &str, out: &Path, args: &[&str]) -> Command {
    let mut cmd = ferry();
    cmd.args(["receive", "--server", &server.addr, "--out"])
        .arg(out)
        .arg(code)
        .args(args);
    cmd
}

/// Pairs a hand-driven sender with a real receiver run with `args`.
async fn hostile_sender(server: &Server, out: &Path, args: &[&str]) -> (Stream, Proc) {
    let sender = Sender::start(&server.addr, None, Default::default())
        .await
        .unwrap();
    let mut recv = Proc::spawn(receive_cmd(server, &sender.code().to_string(), out, args));
    // The answer to the question, if asked (not with --yes).
    recv.answer("n");
    let link = tokio::time::timeout(Duration::from_secs(30), sender.connect(|_| {}))
        .await
        .expect("the receiver did not connect within 30 s")
        .unwrap();
    (link.stream, recv)
}

async fn finish(mut proc: Proc) -> (i32, Proc, String) {
    tokio::task::spawn_blocking(move || {
        let code = proc.finish();
        let stderr = proc.stderr_text();
        (code, proc, stderr)
    })
    .await
    .unwrap()
}

fn offer(names: &[String]) -> Frame {
    let entries = names
        .iter()
        .map(|n| Entry {
            path: n.clone(),
            kind: EntryKind::File {
                size: 1,
                mode: 0o644,
            },
        })
        .collect();
    Frame::Control(Control::Offer {
        offer: Offer::Files(Manifest { entries }),
        version: ferry_transfer::TRANSFER_VERSION,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_file_names_reach_the_terminal_escaped() {
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    // Asked, and the answer on stdin is no.
    let (mut stream, recv) = hostile_sender(&server, out.path(), &[]).await;
    write_frame(&mut stream, offer(&hostile_names())).await;
    let mut buf = BytesMut::new();
    let answer = read_frame(&mut stream, &mut buf).await;
    assert!(
        !matches!(answer, Some(Frame::Control(Control::Accept { .. }))),
        "{answer:?}"
    );
    drop(stream);
    let (code, recv, stderr) = finish(recv).await;
    assert_ne!(code, 0, "{:?}", recv.seen);
    assert_terminal_safe("receiver", &recv.seen, &stderr);
    // The hostile name is shown (listed, or named in the refusal), harmlessly.
    let shown = format!("{}\n{stderr}", recv.seen.join("\n"));
    assert!(shown.contains("]52;c;ZWNobyBwd25lZA=="), "{shown}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_file_names_in_json_keep_their_value_without_raw_bytes() {
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let (mut stream, recv) =
        hostile_sender(&server, out.path(), &["--json", "--yes", "--retries", "0"]).await;
    let names = hostile_names();
    write_frame(&mut stream, offer(&names)).await;
    let mut buf = BytesMut::new();
    let _ = read_frame(&mut stream, &mut buf).await;
    stream.close().await;
    let (code, recv, stderr) = finish(recv).await;
    assert_ne!(code, 0, "{:?}", recv.seen);
    assert_terminal_safe("receiver --json", &recv.seen, &stderr);
    // Scripts still get the exact names (the JSON escapes decode back), or
    // a refusal that names the first of them.
    match recv.events("offer").first() {
        Some(offer) => {
            let listed: Vec<&str> = offer["names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect();
            assert_eq!(listed, names.iter().map(String::as_str).collect::<Vec<_>>());
        }
        None => {
            let message = recv.events("error")[0]["message"].to_string();
            assert!(message.contains("]52;c;"), "{message}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_error_reason_from_the_sender_is_escaped() {
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let (mut stream, recv) = hostile_sender(&server, out.path(), &["--yes"]).await;
    write_frame(&mut stream, offer(&["fine.txt".to_string()])).await;
    let mut buf = BytesMut::new();
    let answer = read_frame(&mut stream, &mut buf).await;
    assert!(
        matches!(answer, Some(Frame::Control(Control::Accept { .. }))),
        "{answer:?}"
    );
    let message = format!("disk on fire{OSC52}{CLEAR}\n{FAKE_DONE}\u{9b}31m\u{202e}");
    write_frame(
        &mut stream,
        Frame::Control(Control::Error {
            message,
            code: None,
        }),
    )
    .await;
    let _ = read_frame(&mut stream, &mut buf).await;
    drop(stream);
    let (code, recv, stderr) = finish(recv).await;
    assert_eq!(code, 6, "{:?} {stderr}", recv.seen);
    assert!(stderr.contains("disk on fire"), "{stderr}");
    assert_terminal_safe("receiver", &recv.seen, &stderr);
}

#[test]
fn hostile_text_message_keeps_its_lines_but_no_controls() {
    let server = Server::start();
    let out = tempfile::tempdir().unwrap();
    let text = format!("first line\n\tsecond{OSC52}{CLEAR}\u{9b}31m\u{202e}end\r{FAKE_DONE}");
    let (mut send, code) = start_send(&server, &["--text", &text]);
    let mut recv = Proc::spawn(receive_cmd(&server, &code, out.path(), &[]));
    assert_eq!(recv.finish(), 0, "{:?}", recv.seen);
    let stderr = recv.stderr_text();
    assert_terminal_safe("receiver", &recv.seen, &stderr);
    assert!(
        recv.seen.iter().any(|l| l == "first line"),
        "{:?}",
        recv.seen
    );
    assert!(
        recv.seen
            .iter()
            .any(|l| l.starts_with("\tsecond\\x1b]52;c;")
                && l.contains("\\u{9b}31m\\u{202e}end\\rReceived 1 file")),
        "{:?}",
        recv.seen
    );
    assert_eq!(send.finish(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_decline_reason_reaches_the_sender_escaped() {
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("a.txt");
    std::fs::write(&file, b"abc").unwrap();
    let mut cmd = ferry();
    cmd.args(["send", "--server", &server.addr]).arg(&file);
    let mut send = Proc::spawn(cmd);
    let code = tokio::task::spawn_blocking(move || {
        let line = send.wait_line(|l| code_in(l).is_some(), Duration::from_secs(30));
        (send, code_in(&line).unwrap())
    });
    let (send, code) = code.await.unwrap();

    let link = ferry_session::receive(&server.addr, &code.parse().unwrap(), Default::default())
        .await
        .unwrap();
    let mut stream = link.stream;
    let scratch = tempfile::tempdir().unwrap();
    let options = ReceiveOptions {
        out_dir: scratch.path().to_path_buf(),
        ..Default::default()
    };
    let incoming = ferry_transfer::receive_offer(&mut stream, options)
        .await
        .unwrap();
    let reason = format!("nope{OSC52}{CLEAR}\n{FAKE_DONE}\n\u{9b}2J\u{202e}");
    incoming.decline(&reason).await.unwrap();
    stream.close().await;

    let (exit, send, stderr) = finish(send).await;
    assert_eq!(exit, 6, "{:?} {stderr}", send.seen);
    assert!(
        stderr.contains("declined") && stderr.contains("nope"),
        "{stderr}"
    );
    assert_terminal_safe("sender", &send.seen, &stderr);
}
