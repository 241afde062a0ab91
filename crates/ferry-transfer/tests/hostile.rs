//! A hostile sender against the real receiver: raw frames over an
//! in-memory stream, real files in temporary directories. Each test checks
//! what the user would see (a clear error) and that nothing was written
//! where it should not be.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry_transfer::codec::{self, Frame};
use ferry_transfer::{
    Control, Entry, EntryKind, Manifest, Offer, ReceiveOptions, TransferError, is_dangerous_char,
    receive_offer,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const BUF: usize = 4 << 20;

fn opts(out: &Path) -> ReceiveOptions {
    ReceiveOptions {
        out_dir: out.to_path_buf(),
        ..Default::default()
    }
}

fn file(path: &str, size: u64) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File { size, mode: 0o644 },
    }
}

fn dir(path: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::Dir { mode: 0o755 },
    }
}

fn offer_bytes(entries: Vec<Entry>) -> BytesMut {
    let mut out = BytesMut::new();
    codec::encode(
        &Frame::Control(Control::Offer {
            offer: Offer::Files(Manifest { entries }),
        }),
        &mut out,
    );
    out
}

/// Reads frames until the receiver's error message (or the end).
async fn error_message(stream: &mut DuplexStream) -> Option<String> {
    let mut buf = BytesMut::new();
    loop {
        while let Some(f) = codec::decode(&mut buf).unwrap() {
            if let Frame::Control(Control::Error { message }) = f {
                return Some(message);
            }
        }
        if stream.read_buf(&mut buf).await.unwrap() == 0 {
            return None;
        }
    }
}

/// Offers `entries` and returns the receiver's error and the message the
/// sender was told; checks that nothing was created in or next to `out`.
async fn refused(
    entries: Vec<Entry>,
    options: impl FnOnce(&Path) -> ReceiveOptions,
) -> (TransferError, String) {
    let top = TempDir::new().unwrap();
    let out = top.path().join("out");
    fs::create_dir(&out).unwrap();
    let (mut a, b) = tokio::io::duplex(BUF);
    let bytes = offer_bytes(entries);
    let writer = tokio::spawn(async move {
        let _ = a.write_all(&bytes).await;
        a
    });
    let got = receive_offer(b, options(&out)).await;
    let mut a = writer.await.unwrap();
    let e = got.expect_err("the offer should be refused");
    let told = error_message(&mut a).await.expect("the sender is told why");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "nothing created");
    assert_eq!(fs::read_dir(top.path()).unwrap().count(), 1);
    (e, told)
}

#[tokio::test]
async fn names_with_terminal_escapes_are_refused_and_shown_escaped() {
    for bad in [
        "x\x1b]52;c;ZWNobyBwd25lZA==\x07",
        "clear\x1b[2J\x1b[H",
        "list\nReceived 1 file, all verified",
        "invoice\u{202e}fdp.exe",
        "c1\u{9b}31m",
    ] {
        let (e, told) = refused(vec![file("fine", 1), file(bad, 5)], opts).await;
        assert!(
            matches!(&e, TransferError::UnsafePath { path, .. } if path == bad),
            "{e:?}"
        );
        for text in [e.to_string(), told] {
            assert!(!text.chars().any(is_dangerous_char), "{text:?}");
            assert!(text.contains("\\u{"), "{text}");
        }
    }
}

#[tokio::test]
async fn windows_names_and_case_collisions_are_refused() {
    for entries in [
        vec![file("CON", 1)],
        vec![dir("d"), file("d/aux.txt", 1)],
        vec![file("notes.", 1)],
        vec![file("what?", 1)],
        vec![file("README", 1), file("readme", 2)],
        vec![dir("Photos"), file("photos/a.jpg", 2)],
    ] {
        let (e, told) = refused(entries.clone(), opts).await;
        assert!(
            matches!(e, TransferError::UnsafePath { .. }),
            "{entries:?}: {e:?}"
        );
        assert!(told.contains("Windows"), "{told}");
    }
}

#[tokio::test]
async fn git_folders_are_refused_unless_allowed() {
    let entries = || {
        let mut v: Vec<Entry> = (0..10).map(|i| file(&format!("decoy{i}"), 1)).collect();
        v.push(dir("repo"));
        v.push(dir("repo/.git"));
        v.push(dir("repo/.git/hooks"));
        v.push(Entry {
            path: "repo/.git/hooks/post-checkout".into(),
            kind: EntryKind::File {
                size: 9,
                mode: 0o755,
            },
        });
        v
    };
    let (e, told) = refused(entries(), opts).await;
    assert!(
        matches!(&e, TransferError::GitDir { path } if path == "repo/.git"),
        "{e:?}"
    );
    assert!(told.contains("--allow-git"), "{told}");

    let out = TempDir::new().unwrap();
    let (mut a, b) = tokio::io::duplex(BUF);
    a.write_all(&offer_bytes(entries())).await.unwrap();
    let options = ReceiveOptions {
        allow_git: true,
        ..opts(out.path())
    };
    assert!(receive_offer(b, options).await.is_ok());
}

#[tokio::test]
async fn a_million_entry_manifest_is_refused_from_its_header() {
    let entries: Vec<Entry> = (0..1_000_000).map(|i| file(&format!("f{i}"), 1)).collect();
    let started = Instant::now();
    let (e, told) = refused(entries, opts).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(e, TransferError::OfferTooLarge { limit, found, .. } if limit == ferry_transfer::MAX_CONTROL_LEN && found > limit),
        "{e:?}"
    );
    assert!(told.contains("too large"), "{told}");
    assert!(told.contains("fewer files"), "{told}");
}

#[tokio::test]
async fn too_many_entries_within_the_frame_limit_are_refused() {
    let entries: Vec<Entry> = (0..150_000).map(|i| file(&format!("{i}"), 0)).collect();
    let (e, _) = refused(entries, opts).await;
    assert!(
        matches!(
            e,
            TransferError::OfferTooLarge {
                found: 150_000,
                limit: 100_000,
                ..
            }
        ),
        "{e:?}"
    );
    // The limit is the receiver's to raise.
    let out = TempDir::new().unwrap();
    let (mut a, b) = tokio::io::duplex(BUF);
    let bytes = offer_bytes((0..150_000).map(|i| file(&format!("{i}"), 0)).collect());
    tokio::spawn(async move { a.write_all(&bytes).await.map(|_| a) });
    let mut options = opts(out.path());
    options.limits.max_entries = 200_000;
    assert!(receive_offer(b, options).await.is_ok());
}

#[tokio::test]
async fn deep_chains_are_refused() {
    let deep = vec!["d"; 65].join("/");
    let (e, told) = refused(vec![file(&deep, 1)], opts).await;
    assert!(e.to_string().contains("65 folders deep"), "{e}");
    assert!(told.contains("limit is 64"), "{told}");

    // Thousands of distinct chains, each within the depth limit: the
    // folders they imply count as entries.
    let chains: Vec<Entry> = (0..2_000)
        .map(|i| file(&format!("{i}/{}", vec!["d"; 60].join("/")), 0))
        .collect();
    let (e, _) = refused(chains, opts).await;
    assert!(
        matches!(&e, TransferError::OfferTooLarge { limit: 100_000, .. }),
        "{e:?}"
    );
}
