//! Files the receiver never saw listed: a hand-driven sender offers ten
//! decoys and then a hidden executable (`.git/hooks/post-checkout`, mode
//! 0755). The real `ferry receive` (against a real `ferry serve` on
//! loopback) lists every top-level entry and flags the hidden and
//! executable paths before it asks, also with `--yes`, and refuses `.git/`
//! unless `--allow-git` is given.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use ferry_session::Sender;
use ferry_transfer::codec::{self, Frame};
use ferry_transfer::{Control, Entry, EntryKind, ErrorCode, Manifest, Offer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Stream = ferry_connect::PeerStream;

async fn write_frame(stream: &mut Stream, frame: Frame) {
    let mut buf = BytesMut::new();
    codec::encode(&frame, &mut buf);
    stream.write_all(&buf).await.unwrap();
    stream.flush().await.unwrap();
}

async fn read_frame(stream: &mut Stream) -> Option<Frame> {
    let mut buf = BytesMut::new();
    loop {
        if let Ok(Some(frame)) = codec::decode(&mut buf) {
            return Some(frame);
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read_buf(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
    }
}

/// Ten decoy files, then `last` (mode 0755).
fn decoys_then(last: &str) -> Frame {
    let mut entries: Vec<Entry> = (1..=10)
        .map(|i| Entry {
            path: format!("doc{i:02}.txt"),
            kind: EntryKind::File {
                size: 100,
                mode: 0o644,
            },
        })
        .collect();
    entries.push(Entry {
        path: last.into(),
        kind: EntryKind::File {
            size: 30,
            mode: 0o755,
        },
    });
    Frame::Control(Control::Offer {
        offer: Offer::Files(Manifest { entries }),
        version: ferry_transfer::TRANSFER_VERSION,
    })
}

/// Offers `offer` to a real receiver run with `args` (human output unless
/// they say `--json`); returns the receiver's answer, exit code, stdout
/// lines and stderr.
async fn offer_to_receiver(
    offer: Frame,
    out: &Path,
    args: &[&str],
) -> (Option<Frame>, i32, Vec<String>, String) {
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let sender = Sender::start(&server.addr, None, Default::default())
        .await
        .unwrap();
    let mut cmd = ferry();
    cmd.args([
        "receive",
        "--retries",
        "0",
        "--server",
        &server.addr,
        "--out",
    ])
    .arg(out)
    .arg(sender.code().to_string())
    .args(args);
    let mut recv = Proc::spawn(cmd);
    // The answer to the question, if asked (not with --yes).
    recv.answer("n");
    let mut stream = tokio::time::timeout(Duration::from_secs(30), sender.connect(|_| {}))
        .await
        .expect("the receiver did not connect within 30 s")
        .unwrap()
        .stream;
    write_frame(&mut stream, offer).await;
    let answer = read_frame(&mut stream).await;
    stream.close().await;
    let (code, seen, stderr) = tokio::task::spawn_blocking(move || {
        let code = recv.finish();
        let stderr = recv.stderr_text();
        (code, recv.seen.clone(), stderr)
    })
    .await
    .unwrap();
    drop(server);
    (answer, code, seen, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleventh_entry_hidden_and_executable_is_listed_and_flagged_before_the_question() {
    let out = tempfile::tempdir().unwrap();
    // No --yes: asked, and the answer on stdin is no.
    let (answer, code, stdout, stderr) =
        offer_to_receiver(decoys_then(".config/autostart.sh"), out.path(), &[]).await;
    assert!(
        matches!(answer, Some(Frame::Control(Control::Decline { .. }))),
        "{answer:?}"
    );
    assert_eq!(code, 6, "{stdout:?} {stderr}");
    assert!(stderr.contains("Accept into"), "never asked: {stderr}");
    for line in [
        "    doc10.txt (100 B)",
        "    .config/ (folder: 1 file, 30 B)",
        "! 1 hidden path and 1 executable file:",
        "!   .config/ (hidden folder)",
        "!   .config/autostart.sh (executable)",
    ] {
        assert!(
            stdout.iter().any(|l| l == line),
            "{line:?} not in {stdout:#?}"
        );
    }
    assert!(!stdout.iter().any(|l| l.contains("more")), "{stdout:#?}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_hook_after_ten_decoys_is_refused_by_name_without_allow_git_even_with_yes() {
    let out = tempfile::tempdir().unwrap();
    let (answer, code, stdout, stderr) = offer_to_receiver(
        decoys_then(".git/hooks/post-checkout"),
        out.path(),
        &["--yes"],
    )
    .await;
    // The library's offer check refuses it before anything is listed or
    // asked, and tells the sender why: what it refused, and by the code
    // that the receiver may allow it (a sending `ferry` then names
    // --allow-git: see `a_sender_of_a_git_folder_is_told_the_receiver_can_allow_it`).
    assert!(
        matches!(&answer, Some(Frame::Control(Control::Error { message, code: Some(ErrorCode::GitDir) }))
            if message.contains(".git/hooks/post-checkout") && message.contains(".git folder")),
        "{answer:?}"
    );
    assert_eq!(code, 7, "{stdout:?} {stderr}");
    assert!(
        stderr.contains(".git/hooks/post-checkout") && stderr.contains("--allow-git"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_git_takes_the_offer_and_json_flags_the_hook() {
    let out = tempfile::tempdir().unwrap();
    let (answer, _, stdout, stderr) = offer_to_receiver(
        decoys_then(".git/hooks/post-checkout"),
        out.path(),
        &["--json", "--yes", "--allow-git"],
    )
    .await;
    assert!(
        matches!(answer, Some(Frame::Control(Control::Accept { .. }))),
        "{answer:?} {stderr}"
    );
    let offer = stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "offer")
        .unwrap();
    assert_eq!(offer["top"].as_array().unwrap().len(), 11, "{offer}");
    assert_eq!(offer["top"][10]["name"], ".git");
    assert_eq!(offer["top"][10]["kind"], "folder");
    let flagged = offer["flagged"].as_array().unwrap();
    assert!(
        flagged
            .iter()
            .any(|f| f["path"] == ".git/hooks/post-checkout" && f["executable"] == true)
            && flagged
                .iter()
                .any(|f| f["path"] == ".git/" && f["hidden"] == true),
        "{offer}"
    );
}

#[test]
fn a_sender_of_a_git_folder_is_told_the_receiver_can_allow_it() {
    // The real sender and receiver: the receiver refuses the .git folder
    // and says which flag takes it; the sender learns what was refused and
    // what the receiver can do.
    let server = Server::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let repo = src.path().join("repo");
    std::fs::create_dir_all(repo.join(".git/hooks")).unwrap();
    std::fs::write(repo.join("README"), b"hello").unwrap();
    std::fs::write(repo.join(".git/hooks/post-checkout"), b"#!/bin/sh\n").unwrap();
    let (mut send, code) = start_send(&server, &[repo.to_str().unwrap()]);
    let mut recv = start_receive(&server, &code, dst.path(), &["--yes"]);
    assert_eq!(recv.finish(), 7, "receiver: {:?}", recv.seen);
    assert_ne!(send.finish(), 0, "sender: {:?}", send.seen);
    let message = |side: &Proc| {
        side.events("error")[0]["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let received = message(&recv);
    assert!(
        received.contains("repo/.git")
            && received.ends_with("; pass --allow-git to receive it anyway"),
        "{received}"
    );
    let sent = message(&send);
    assert!(
        sent.contains("the peer reported: refusing \"repo/.git")
            && sent.ends_with("; the receiver can pass --allow-git to receive it anyway"),
        "{sent}"
    );
    assert_eq!(std::fs::read_dir(dst.path()).unwrap().count(), 0);
}
