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

/// A raw sender talking to a real receiver that accepts whatever passes
/// its checks.
struct Raw {
    stream: DuplexStream,
    buf: BytesMut,
    receiver: tokio::task::JoinHandle<Result<ferry_transfer::Report, TransferError>>,
}

impl Raw {
    /// Offers `entries` to a receiver writing into `out`, and waits for
    /// its acceptance (its folders then exist).
    async fn accepted(entries: Vec<Entry>, out: &Path, overwrite: bool) -> Raw {
        let (mut a, b) = tokio::io::duplex(BUF);
        let options = ReceiveOptions {
            overwrite,
            ..opts(out)
        };
        let receiver =
            tokio::spawn(async move { receive_offer(b, options).await?.accept(|_| {}).await });
        a.write_all(&offer_bytes(entries)).await.unwrap();
        let mut raw = Raw {
            stream: a,
            buf: BytesMut::new(),
            receiver,
        };
        match raw.read().await {
            Some(Frame::Control(Control::Accept { .. })) => {}
            other => panic!("{other:?}"),
        }
        raw
    }

    async fn read(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = codec::decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            if self.stream.read_buf(&mut self.buf).await.unwrap() == 0 {
                return None;
            }
        }
    }

    async fn frame(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        codec::encode(&frame, &mut out);
        // The receiver may have given up already.
        let _ = self.stream.write_all(&out).await;
    }

    async fn start(&mut self, index: usize, offset: u64) {
        self.frame(Frame::Control(Control::FileStart { index, offset }))
            .await;
    }

    /// A data frame with a correct hash.
    async fn data(&mut self, bytes: &[u8]) {
        self.frame(Frame::Data {
            hash: *blake3::hash(bytes).as_bytes(),
            chunk: bytes.to_vec().into(),
        })
        .await;
    }

    async fn end(&mut self, whole: &[u8]) {
        self.frame(Frame::FileEnd {
            hash: *blake3::hash(whole).as_bytes(),
        })
        .await;
    }

    /// Sends file `index` with `bytes` in one chunk.
    async fn file(&mut self, index: usize, bytes: &[u8]) {
        self.start(index, 0).await;
        if !bytes.is_empty() {
            self.data(bytes).await;
        }
        self.end(bytes).await;
    }

    async fn result(self) -> Result<ferry_transfer::Report, TransferError> {
        let Raw {
            stream, receiver, ..
        } = self;
        let result = tokio::time::timeout(Duration::from_secs(30), receiver)
            .await
            .expect("receiver hung")
            .unwrap();
        drop(stream);
        result
    }
}

/// An output folder and a folder beside it that must stay untouched.
fn out_and_outside() -> (TempDir, std::path::PathBuf, std::path::PathBuf) {
    let top = TempDir::new().unwrap();
    let out = top.path().join("out");
    let outside = top.path().join("outside");
    fs::create_dir(&out).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("target"), b"precious").unwrap();
    (top, out, outside)
}

fn assert_untouched(outside: &Path) {
    let names: Vec<_> = fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["target"], "nothing new outside --out");
    assert_eq!(fs::read(outside.join("target")).unwrap(), b"precious");
}

#[cfg(unix)]
#[tokio::test]
async fn a_folder_swapped_for_a_link_while_receiving_is_not_followed() {
    let (_top, out, outside) = out_and_outside();
    let mut s = Raw::accepted(vec![dir("d"), file("d/f", 4)], &out, false).await;
    fs::remove_dir(out.join("d")).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("d")).unwrap();
    s.file(0, b"abcd").await;
    let e = s.result().await.unwrap_err();
    assert!(
        matches!(&e, TransferError::UnsafePath { reason, .. } if reason.contains("symbolic link")),
        "{e:?}"
    );
    assert_untouched(&outside);
}

#[cfg(unix)]
#[tokio::test]
async fn a_part_file_planted_as_a_link_is_not_followed() {
    let (_top, out, outside) = out_and_outside();
    let mut s = Raw::accepted(vec![file("f", 4)], &out, false).await;
    std::os::unix::fs::symlink(outside.join("target"), out.join("f.ferry-part")).unwrap();
    s.file(0, b"abcd").await;
    s.result().await.unwrap();
    assert_eq!(fs::read(out.join("f")).unwrap(), b"abcd");
    assert!(fs::symlink_metadata(out.join("f")).unwrap().is_file());
    assert_untouched(&outside);
}

#[cfg(unix)]
#[tokio::test]
async fn a_link_planted_as_the_final_name_is_not_followed_nor_replaced() {
    for overwrite in [false, true] {
        let (_top, out, outside) = out_and_outside();
        let mut s = Raw::accepted(vec![file("f", 4)], &out, overwrite).await;
        std::os::unix::fs::symlink(outside.join("target"), out.join("f")).unwrap();
        s.file(0, b"abcd").await;
        let result = s.result().await;
        if overwrite {
            // --overwrite replaces the link itself, not what it points to.
            result.unwrap();
            assert!(fs::symlink_metadata(out.join("f")).unwrap().is_file());
            assert_eq!(fs::read(out.join("f")).unwrap(), b"abcd");
        } else {
            assert!(
                matches!(result, Err(TransferError::Exists { .. })),
                "{result:?}"
            );
            assert!(fs::symlink_metadata(out.join("f")).unwrap().is_symlink());
            // The verified bytes wait in the part file.
            assert_eq!(fs::read(out.join("f.ferry-part")).unwrap(), b"abcd");
        }
        assert_untouched(&outside);
    }
}

#[cfg(unix)]
#[tokio::test]
async fn folder_modes_are_not_applied_through_a_link() {
    use std::os::unix::fs::PermissionsExt;
    let (_top, out, outside) = out_and_outside();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
    let entries = vec![
        Entry {
            path: "d".into(),
            kind: EntryKind::Dir { mode: 0o700 },
        },
        file("f", 4),
    ];
    let mut s = Raw::accepted(entries, &out, false).await;
    fs::remove_dir(out.join("d")).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("d")).unwrap();
    s.file(0, b"abcd").await;
    let e = s.result().await.unwrap_err();
    assert!(matches!(e, TransferError::UnsafePath { .. }), "{e:?}");
    let mode = fs::metadata(&outside).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755);
    assert_untouched(&outside);
}
