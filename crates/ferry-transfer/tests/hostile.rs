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
    CHUNK_SIZE, Control, Entry, EntryKind, ErrorCode, Manifest, Offer, ReceiveOptions,
    TransferError, is_dangerous_char, receive_offer,
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
            version: ferry_transfer::TRANSFER_VERSION,
        }),
        &mut out,
    );
    out
}

/// Reads frames until the receiver's error message (or the end).
async fn error_message(stream: &mut DuplexStream) -> Option<String> {
    error_frame(stream).await.map(|(message, _)| message)
}

/// Reads frames until the receiver's error (or the end): its message and
/// its code.
async fn error_frame(stream: &mut DuplexStream) -> Option<(String, Option<ErrorCode>)> {
    let mut buf = BytesMut::new();
    loop {
        while let Some(f) = codec::decode(&mut buf).unwrap() {
            if let Frame::Control(Control::Error { message, code }) = f {
                return Some((message, code));
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
    let (e, told, _) = refused_with_code(entries, options).await;
    (e, told)
}

/// [`refused`], also returning the code the sender was told.
async fn refused_with_code(
    entries: Vec<Entry>,
    options: impl FnOnce(&Path) -> ReceiveOptions,
) -> (TransferError, String, Option<ErrorCode>) {
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
    let (told, code) = error_frame(&mut a).await.expect("the sender is told why");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "nothing created");
    assert_eq!(fs::read_dir(top.path()).unwrap().count(), 1);
    (e, told, code)
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
            assert!(
                text.contains("\\x1b") || text.contains("\\n") || text.contains("\\u{"),
                "{text}"
            );
        }
    }
}

#[tokio::test]
async fn windows_names_and_case_collisions_are_refused() {
    for entries in [
        vec![file("CON", 1)],
        vec![dir("d"), file("d/aux.txt", 1)],
        vec![file("back\\slash", 1)],
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
    let (e, told, code) = refused_with_code(entries(), opts).await;
    assert!(
        matches!(&e, TransferError::GitDir { path } if path == "repo/.git"),
        "{e:?}"
    );
    // The sender learns what was refused, and by the code that the
    // receiver may allow it (its program names how: `ferry` says
    // --allow-git, see bin/ferry/tests/listing.rs).
    assert!(
        told.contains("repo/.git") && told.contains(".git folder"),
        "{told}"
    );
    assert_eq!(code, Some(ErrorCode::GitDir), "{told}");

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
    /// Where the next data frame of the current file starts.
    pos: u64,
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
            pos: 0,
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
        self.pos = offset;
        self.frame(Frame::Control(Control::FileStart { index, offset }))
            .await;
    }

    /// A data frame with a correct hash.
    async fn data(&mut self, bytes: &[u8]) {
        let offset = self.pos;
        self.pos += bytes.len() as u64;
        self.frame(Frame::Data {
            hash: ferry_transfer::chunk_hash(offset, bytes).unwrap(),
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

/// Deterministic pseudo-random bytes.
fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Only the part file is in `out`, holding exactly `bytes`.
fn only_part_kept(out: &Path, name: &str, bytes: &[u8]) {
    let names: Vec<_> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [format!("{name}.ferry-part")]);
    assert_eq!(
        fs::read(out.join(format!("{name}.ferry-part"))).unwrap(),
        bytes
    );
}

#[tokio::test]
async fn more_bytes_than_offered_are_refused_and_nothing_is_renamed() {
    let (_top, out, outside) = out_and_outside();
    let first = random_bytes("first", CHUNK_SIZE);
    let mut s = Raw::accepted(vec![file("f", CHUNK_SIZE as u64 + 2)], &out, false).await;
    s.start(0, 0).await;
    s.data(&first).await;
    s.data(b"efgh").await;
    s.end(&[&first[..], b"efgh"].concat()).await;
    let e = s.result().await.unwrap_err();
    assert!(
        matches!(&e, TransferError::Protocol(m) if m.contains("beyond the end")),
        "{e:?}"
    );
    only_part_kept(&out, "f", &first);
    assert_untouched(&outside);
}

#[tokio::test]
async fn a_file_shorter_than_offered_is_refused_and_its_part_kept() {
    let (_top, out, outside) = out_and_outside();
    let first = random_bytes("first", CHUNK_SIZE);
    let size = CHUNK_SIZE as u64 + 4;
    let mut s = Raw::accepted(vec![file("f", size), file("g", 1)], &out, false).await;
    s.start(0, 0).await;
    s.data(&first).await;
    s.end(&first).await;
    let e = s.result().await.unwrap_err();
    assert!(
        matches!(&e, TransferError::Protocol(m) if m.contains("before all its bytes")),
        "{e:?}"
    );
    only_part_kept(&out, "f", &first);
    assert_untouched(&outside);
}

#[tokio::test]
async fn a_chunk_with_a_wrong_hash_keeps_only_verified_bytes() {
    let (_top, out, outside) = out_and_outside();
    let first = random_bytes("first", CHUNK_SIZE);
    let c = CHUNK_SIZE as u64;
    let mut s = Raw::accepted(vec![file("f", c + 4)], &out, false).await;
    s.start(0, 0).await;
    s.data(&first).await;
    s.frame(Frame::Data {
        hash: ferry_transfer::chunk_hash(c, b"efgh").unwrap(),
        chunk: bytes::Bytes::from_static(b"efgX"),
    })
    .await;
    s.end(&[&first[..], b"efgX"].concat()).await;
    let e = s.result().await.unwrap_err();
    assert!(
        matches!(&e, TransferError::ChunkMismatch { path, offset } if path == "f" && *offset == c),
        "{e:?}"
    );
    only_part_kept(&out, "f", &first);
    assert_untouched(&outside);
}

#[tokio::test]
async fn chunks_of_another_size_are_refused_and_nothing_is_written() {
    let (_top, out, outside) = out_and_outside();
    let mut s = Raw::accepted(vec![file("f", 8)], &out, false).await;
    s.start(0, 0).await;
    // Half of a file of 8 bytes: its one chunk must hold all 8.
    s.data(b"abcd").await;
    let e = s.result().await.unwrap_err();
    assert!(
        matches!(&e, TransferError::Protocol(m) if m.contains("chunks are")),
        "{e:?}"
    );
    only_part_kept(&out, "f", b"");
    assert_untouched(&outside);
}

#[tokio::test]
async fn a_sender_of_another_transfer_version_is_refused_clearly() {
    let (_top, out, _outside) = out_and_outside();
    let (mut a, b) = tokio::io::duplex(BUF);
    let options = opts(&out);
    let receiver = tokio::spawn(async move { receive_offer(b, options).await.map(|_| ()) });
    // An offer without a version field, as senders of version 1 wrote it.
    let json = br#"{"type":"offer","offer":{"text":"hi"}}"#;
    let mut frame = vec![1, 0, 0, 0, json.len() as u8];
    frame.extend_from_slice(json);
    a.write_all(&frame).await.unwrap();
    let e = receiver.await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            TransferError::Version {
                sender: 1,
                receiver: 2
            }
        ),
        "{e:?}"
    );
    // The old sender is told why, in words it can show.
    let told = error_message(&mut a).await.unwrap();
    assert!(told.contains("transfer protocol 1"), "{told}");
    assert!(told.contains("same ferry release"), "{told}");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
}

#[tokio::test]
async fn a_source_file_that_grows_or_shrinks_after_the_offer_is_not_delivered() {
    for grow in [true, false] {
        let src = TempDir::new().unwrap();
        let (_top, out, outside) = out_and_outside();
        let data = random_bytes("lying", 600_000);
        let path = src.path().join("f");
        fs::write(&path, &data).unwrap();
        let source = ferry_transfer::scan(std::slice::from_ref(&path)).unwrap();
        if grow {
            fs::write(&path, random_bytes("lying", 900_000)).unwrap();
        } else {
            fs::write(&path, &data[..100_000]).unwrap();
        }
        let (a, b) = tokio::io::duplex(BUF);
        let options = opts(&out);
        let receiver =
            tokio::spawn(async move { receive_offer(b, options).await?.accept(|_| {}).await });
        let sent = ferry_transfer::send(a, source, |_| {}).await;
        let received = receiver.await.unwrap();
        let e = sent.unwrap_err();
        assert!(e.to_string().contains("changed while sending"), "{e}");
        assert!(
            matches!(&received, Err(TransferError::PeerError { message: m, .. }) if m.contains("changed")),
            "{received:?}"
        );
        assert!(!out.join("f").exists(), "nothing renamed");
        assert_untouched(&outside);
    }
}

/// A small tmpfs mounted for one test, unmounted on drop (also when the
/// test fails). `None` (with a note) unless running as root.
struct SmallFs {
    dir: TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0");
        if !root {
            eprintln!("note: not root, skipping the small tmpfs test");
            return None;
        }
        let dir = TempDir::new().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("note: cannot mount a tmpfs here, skipping the small tmpfs test");
            return None;
        }
        Some(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the file system is full.
    fn fill(&self) {
        let mut f = fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![7u8; 64 * 1024];
        for _ in 0..10_000 {
            if std::io::Write::write_all(&mut f, &block).is_err() {
                return;
            }
        }
        panic!("the small file system never filled up");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_nearly_full_small_tmpfs_refuses_early_or_keeps_the_part_to_resume() {
    let Some(small) = SmallFs::mount("2m") else {
        return;
    };
    let out = small.path().join("out");
    fs::create_dir(&out).unwrap();

    // Larger than the whole file system: refused before anything is written.
    let (mut a, b) = tokio::io::duplex(BUF);
    a.write_all(&offer_bytes(vec![file("big", 3 << 20)]))
        .await
        .unwrap();
    let e = receive_offer(b, opts(&out))
        .await
        .unwrap()
        .accept(|_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, TransferError::NoSpace { .. }), "{e:?}");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);

    // Fits when accepted, then something else fills the disk.
    let chunk = CHUNK_SIZE;
    let data = random_bytes("tmpfs", 4 * chunk);
    let mut s = Raw::accepted(vec![file("f", data.len() as u64)], &out, false).await;
    s.start(0, 0).await;
    s.data(&data[..chunk]).await;
    let part = out.join("f.ferry-part");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < chunk as u64 {
        assert!(Instant::now() < deadline, "the first chunk never landed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    small.fill();
    for c in data[chunk..].chunks(chunk) {
        s.data(c).await;
    }
    s.end(&data).await;
    let e = s.result().await.unwrap_err();
    assert!(matches!(e, TransferError::DiskFull { .. }), "{e:?}");
    assert!(e.to_string().contains("run again to resume"), "{e}");
    assert!(!out.join("f").exists());
    let kept = fs::read(&part).unwrap();
    assert!(kept.len() >= chunk && data.starts_with(&kept));

    // Space freed: a real sender resumes and the file arrives whole.
    fs::remove_file(small.path().join("filler")).unwrap();
    let src = TempDir::new().unwrap();
    fs::write(src.path().join("f"), &data).unwrap();
    let source = ferry_transfer::scan(&[src.path().join("f")]).unwrap();
    let (a, b) = tokio::io::duplex(BUF);
    let options = opts(&out);
    let receiver =
        tokio::spawn(async move { receive_offer(b, options).await?.accept(|_| {}).await });
    ferry_transfer::send(a, source, |_| {}).await.unwrap();
    let report = receiver.await.unwrap().unwrap();
    assert_eq!(report.bytes_resumed, kept.len() as u64);
    assert_eq!(fs::read(out.join("f")).unwrap(), data);
    let names: Vec<_> = fs::read_dir(small.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["out"], "nothing written outside --out");
}

#[tokio::test]
async fn the_peers_words_in_errors_are_escaped() {
    let out = TempDir::new().unwrap();
    let (mut a, b) = tokio::io::duplex(BUF);
    let mut frame = BytesMut::new();
    codec::encode(
        &Frame::Control(Control::Error {
            message: "\x1b]0;pwned\x07\x1b[2K\rReceived 1 file, all verified".into(),
            code: None,
        }),
        &mut frame,
    );
    a.write_all(&frame).await.unwrap();
    let e = receive_offer(b, opts(out.path())).await.unwrap_err();
    assert!(matches!(e, TransferError::PeerError { .. }), "{e:?}");
    let text = e.to_string();
    assert!(!text.chars().any(is_dangerous_char), "{text:?}");
    assert!(text.contains("\\x1b]0;pwned"), "{text}");

    // A control frame naming an unknown message type.
    let (mut a, b) = tokio::io::duplex(BUF);
    let json = br#"{"type":"\u001b[2Jboom"}"#;
    let mut raw = vec![codec::KIND_CONTROL];
    raw.extend_from_slice(&(json.len() as u32).to_be_bytes());
    raw.extend_from_slice(json);
    a.write_all(&raw).await.unwrap();
    let e = receive_offer(b, opts(out.path())).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, TransferError::Protocol(_)), "{e:?}");
    assert!(!text.chars().any(is_dangerous_char), "{text:?}");
}

#[cfg(unix)]
#[tokio::test]
async fn a_part_file_hard_linked_to_another_file_is_not_resumed_into() {
    let (_top, out, outside) = out_and_outside();
    fs::hard_link(outside.join("target"), out.join("f.ferry-part")).unwrap();
    let (mut a, b) = tokio::io::duplex(BUF);
    a.write_all(&offer_bytes(vec![file("f", 100)]))
        .await
        .unwrap();
    let e = receive_offer(b, opts(&out))
        .await
        .unwrap()
        .accept(|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TransferError::UnsafePath { reason, .. } if reason.contains("hard links")),
        "{e:?}"
    );
    // The sender learnt nothing about the file: no accept, an error.
    let told = error_message(&mut a).await.unwrap();
    assert!(told.contains("hard links"), "{told}");
    assert_untouched(&outside);
}
