//! The send/receive drivers over an in-memory duplex stream with real files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use ferry_transfer::codec::{self, Frame};
use ferry_transfer::{
    CHUNK_SIZE, Control, Entry, EntryKind, ErrorCode, Event, Incoming, Manifest, Offer,
    ReceiveOptions, Report, SendOutcome, Source, TRANSFER_VERSION, TransferError, chunk_hash,
    receive_offer, scan, send,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const BUF: usize = 4 << 20;
const LIMIT: Duration = Duration::from_secs(60);

/// Deterministic pseudo-random bytes.
fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn opts(out: &Path, overwrite: bool) -> ReceiveOptions {
    ReceiveOptions {
        out_dir: out.to_path_buf(),
        overwrite,
        ..Default::default()
    }
}

async fn receive_all(
    stream: DuplexStream,
    opts: ReceiveOptions,
) -> (Result<Report, TransferError>, Vec<Event>) {
    let mut events = Vec::new();
    let result = match receive_offer(stream, opts).await {
        Ok(incoming) => incoming.accept(|e| events.push(e)).await,
        Err(e) => Err(e),
    };
    (result, events)
}

struct Outcome {
    sent: Result<SendOutcome, TransferError>,
    send_events: Vec<Event>,
    received: Result<Report, TransferError>,
    receive_events: Vec<Event>,
}

/// Runs a whole transfer of `source` into `out`.
async fn transfer_source(source: Source, out: &Path, overwrite: bool) -> Outcome {
    let (a, b) = tokio::io::duplex(BUF);
    let receiver = tokio::spawn(receive_all(b, opts(out, overwrite)));
    let mut send_events = Vec::new();
    let sent = tokio::time::timeout(LIMIT, send(a, source, |e| send_events.push(e)))
        .await
        .expect("send hung");
    let (received, receive_events) = tokio::time::timeout(LIMIT, receiver)
        .await
        .expect("receive hung")
        .unwrap();
    Outcome {
        sent,
        send_events,
        received,
        receive_events,
    }
}

async fn transfer(paths: &[PathBuf], out: &Path, overwrite: bool) -> Outcome {
    transfer_source(scan(paths).unwrap(), out, overwrite).await
}

fn files_report(outcome: &Outcome) -> Report {
    match &outcome.sent {
        Ok(SendOutcome::Files(r)) => r.clone(),
        other => panic!("send: {other:?}, receive: {:?}", outcome.received),
    }
}

async fn send_file_of(len: usize) {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let data = random_bytes("file", len);
    let path = src.path().join("f.bin");
    fs::write(&path, &data).unwrap();
    let o = transfer(&[path], out.path(), false).await;
    let sent = files_report(&o);
    let received = o.received.as_ref().unwrap();
    assert_eq!(fs::read(out.path().join("f.bin")).unwrap(), data);
    assert!(!out.path().join("f.bin.ferry-part").exists());
    for r in [&sent, received] {
        assert_eq!(r.files, 1);
        assert_eq!(r.bytes_total, len as u64);
        assert_eq!(r.bytes_transferred, len as u64);
        assert_eq!(r.bytes_resumed, 0);
    }
    // Events: start, done, and a last progress with everything.
    for events in [&o.send_events, &o.receive_events] {
        assert_eq!(
            events.first(),
            Some(&Event::FileStarted {
                path: "f.bin".into(),
                size: len as u64,
                resumed_from: 0
            })
        );
        assert!(events.contains(&Event::FileDone {
            path: "f.bin".into()
        }));
        let last_progress = events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::Progress {
                    bytes_done,
                    bytes_total,
                } => Some((*bytes_done, *bytes_total)),
                _ => None,
            })
            .unwrap();
        assert_eq!(last_progress, (len as u64, len as u64));
    }
}

#[tokio::test]
async fn zero_byte_file() {
    send_file_of(0).await;
}

#[tokio::test]
async fn one_byte_file() {
    send_file_of(1).await;
}

#[tokio::test]
async fn few_mib_random_file() {
    send_file_of(3 * 1024 * 1024 + 12345).await;
}

#[tokio::test]
async fn tree_with_nested_and_empty_dirs_and_modes() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let root = src.path().join("photos");
    fs::create_dir_all(root.join("2024/summer")).unwrap();
    fs::create_dir_all(root.join("empty/deeper-empty")).unwrap();
    fs::write(root.join("a.txt"), b"alpha").unwrap();
    fs::write(root.join("2024/summer/b.bin"), random_bytes("b", 700_000)).unwrap();
    fs::write(root.join("2024/zero"), b"").unwrap();
    let single = src.path().join("notes.md");
    fs::write(&single, b"# notes").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&single, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(root.join("2024"), fs::Permissions::from_mode(0o750)).unwrap();
    }
    let o = transfer(&[root.clone(), single], out.path(), false).await;
    let r = files_report(&o);
    assert_eq!(r.files, 4);
    o.received.as_ref().unwrap();
    let got = out.path().join("photos");
    assert_eq!(fs::read(got.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(
        fs::read(got.join("2024/summer/b.bin")).unwrap(),
        random_bytes("b", 700_000)
    );
    assert_eq!(fs::read(got.join("2024/zero")).unwrap(), b"");
    assert!(got.join("empty/deeper-empty").is_dir());
    assert_eq!(fs::read(out.path().join("notes.md")).unwrap(), b"# notes");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&got.join("a.txt")), 0o600);
        assert_eq!(mode(&out.path().join("notes.md")), 0o755);
        assert_eq!(mode(&got.join("2024")), 0o750);
    }
}

#[cfg(unix)]
#[tokio::test]
async fn setuid_bits_are_never_applied() {
    use std::os::unix::fs::PermissionsExt;
    let out = TempDir::new().unwrap();
    let manifest = Manifest {
        entries: vec![Entry {
            path: "x".into(),
            kind: EntryKind::File {
                size: 0,
                mode: 0o4777,
            },
        }],
    };
    let (a, b) = tokio::io::duplex(BUF);
    let receiver = tokio::spawn(receive_all(b, opts(out.path(), false)));
    let mut s = RawSender::new(a);
    s.offer(manifest).await;
    s.expect_accept().await;
    s.control(Control::FileStart {
        index: 0,
        offset: 0,
    })
    .await;
    s.frame(Frame::FileEnd {
        hash: *blake3::hash(b"").as_bytes(),
    })
    .await;
    receiver.await.unwrap().0.unwrap();
    let mode = fs::metadata(out.path().join("x"))
        .unwrap()
        .permissions()
        .mode();
    // No setuid/setgid/sticky bit, and the receiver's umask applies.
    assert_eq!(mode & 0o7000, 0);
    assert_eq!(mode & 0o777, 0o777 & !test_umask());
}

/// This process's umask, as the kernel reports it.
#[cfg(unix)]
fn test_umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
        .unwrap_or(0o022)
}

#[tokio::test]
async fn text_message() {
    let (a, b) = tokio::io::duplex(BUF);
    let out = TempDir::new().unwrap();
    let opts = opts(out.path(), false);
    let receiver = tokio::spawn(async move {
        let incoming = receive_offer(b, opts).await.unwrap();
        let text = match incoming.offer() {
            Offer::Text(t) => t.clone(),
            other => panic!("{other:?}"),
        };
        incoming.accept(|_| {}).await.unwrap();
        text
    });
    let sent = send(a, Source::Text("hello, ferry".into()), |_| {})
        .await
        .unwrap();
    assert_eq!(sent, SendOutcome::TextDelivered);
    assert_eq!(receiver.await.unwrap(), "hello, ferry");
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn decline() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    fs::write(src.path().join("f"), b"data").unwrap();
    let (a, b) = tokio::io::duplex(BUF);
    let opts = opts(out.path(), false);
    let receiver = tokio::spawn(async move {
        let incoming = receive_offer(b, opts).await.unwrap();
        match incoming.offer() {
            Offer::Files(m) => assert_eq!((m.file_count(), m.total_bytes()), (1, 4)),
            other => panic!("{other:?}"),
        }
        incoming.decline("not today").await.unwrap();
    });
    let sent = send(a, scan(&[src.path().join("f")]).unwrap(), |_| {})
        .await
        .unwrap();
    assert_eq!(sent, SendOutcome::Declined("not today".into()));
    receiver.await.unwrap();
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn existing_file_without_overwrite_is_not_touched() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    fs::write(src.path().join("f"), b"new").unwrap();
    fs::write(out.path().join("f"), b"old").unwrap();
    let o = transfer(&[src.path().join("f")], out.path(), false).await;
    match &o.received {
        Err(TransferError::Exists { path }) => assert_eq!(path, &out.path().join("f")),
        other => panic!("{other:?}"),
    }
    // What to do (`ferry receive --overwrite` or `--out`) is the binary's
    // to say: bin/ferry/tests/cli.rs asserts it. The sender is told which
    // file, and by the code that the receiver could overwrite it.
    let msg = o.received.as_ref().unwrap_err().to_string();
    assert!(
        msg.ends_with("already exists") && !msg.contains("--"),
        "{msg}"
    );
    assert!(
        matches!(&o.sent, Err(TransferError::PeerError { message: m, code: Some(ErrorCode::Exists) })
            if m.contains("already exists")),
        "{:?}",
        o.sent
    );
    assert_eq!(fs::read(out.path().join("f")).unwrap(), b"old");
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 1);
}

#[tokio::test]
async fn existing_file_with_overwrite_is_replaced() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    fs::write(src.path().join("f"), b"new").unwrap();
    fs::write(out.path().join("f"), b"old, longer").unwrap();
    let o = transfer(&[src.path().join("f")], out.path(), true).await;
    files_report(&o);
    assert_eq!(fs::read(out.path().join("f")).unwrap(), b"new");
}

#[tokio::test]
async fn resume_from_correct_part_file() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let len = 2 * 1024 * 1024 + 999;
    let data = random_bytes("resume", len);
    fs::write(src.path().join("big"), &data).unwrap();
    let half = len / 2;
    fs::write(out.path().join("big.ferry-part"), &data[..half]).unwrap();
    // The part was cut inside a chunk: it resumes from its last whole one.
    let resumed = half - half % CHUNK_SIZE;
    assert!(resumed > 0 && resumed < half);
    let o = transfer(&[src.path().join("big")], out.path(), false).await;
    let sent = files_report(&o);
    let received = o.received.as_ref().unwrap();
    for r in [&sent, received] {
        assert_eq!(r.bytes_resumed, resumed as u64);
        assert_eq!(r.bytes_transferred, (len - resumed) as u64);
    }
    assert_eq!(
        o.receive_events.first(),
        Some(&Event::FileStarted {
            path: "big".into(),
            size: len as u64,
            resumed_from: resumed as u64
        })
    );
    assert_eq!(fs::read(out.path().join("big")).unwrap(), data);
    assert!(!out.path().join("big.ferry-part").exists());
}

#[tokio::test]
async fn wrong_part_file_restarts_from_zero() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let len = 1024 * 1024 + 5;
    let data = random_bytes("restart", len);
    fs::write(src.path().join("big"), &data).unwrap();
    let mut wrong = data[..len / 2].to_vec();
    wrong[100] ^= 1;
    fs::write(out.path().join("big.ferry-part"), &wrong).unwrap();
    let o = transfer(&[src.path().join("big")], out.path(), false).await;
    let sent = files_report(&o);
    let received = o.received.as_ref().unwrap();
    for r in [&sent, received] {
        assert_eq!(r.bytes_resumed, 0);
        assert_eq!(r.bytes_transferred, len as u64);
    }
    assert_eq!(fs::read(out.path().join("big")).unwrap(), data);
}

#[tokio::test]
async fn part_longer_than_file_restarts() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    fs::write(src.path().join("f"), b"short").unwrap();
    fs::write(
        out.path().join("f.ferry-part"),
        b"much longer than the file",
    )
    .unwrap();
    let o = transfer(&[src.path().join("f")], out.path(), false).await;
    assert_eq!(files_report(&o).bytes_resumed, 0);
    assert_eq!(fs::read(out.path().join("f")).unwrap(), b"short");
}

/// Sits between sender and receiver and passes the sender's frames on,
/// each data chunk through `on_data(n, chunk)` (n counts from 1): it may
/// change the chunk, or return `None` to cut both directions at once, like
/// a path that breaks. The receiver's frames pass unchanged.
async fn frame_proxy(
    sender_side: DuplexStream,
    receiver_side: DuplexStream,
    mut on_data: impl FnMut(usize, Vec<u8>) -> Option<Vec<u8>>,
) {
    let (mut s_rd, mut s_wr) = tokio::io::split(sender_side);
    let (mut r_rd, mut r_wr) = tokio::io::split(receiver_side);
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut r_rd, &mut s_wr).await;
        let _ = s_wr.shutdown().await;
    });
    let mut buf = BytesMut::new();
    let mut data_frames = 0;
    'outer: loop {
        while let Some(frame) = codec::decode(&mut buf).unwrap() {
            let frame = match frame {
                Frame::Data { hash, chunk } => {
                    data_frames += 1;
                    let Some(chunk) = on_data(data_frames, chunk.to_vec()) else {
                        // Dropping the halves closes both ends.
                        back.abort();
                        return;
                    };
                    Frame::Data {
                        hash,
                        chunk: chunk.into(),
                    }
                }
                other => other,
            };
            let mut out = BytesMut::new();
            codec::encode(&frame, &mut out);
            if r_wr.write_all(&out).await.is_err() {
                break 'outer;
            }
        }
        match s_rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = r_wr.shutdown().await;
    let _ = back.await;
}

/// Flips a bit in the `nth` data chunk.
async fn corrupting_proxy(sender_side: DuplexStream, receiver_side: DuplexStream, nth: usize) {
    frame_proxy(sender_side, receiver_side, |n, mut chunk| {
        if n == nth {
            chunk[1000] ^= 0x40;
        }
        Some(chunk)
    })
    .await;
}

#[tokio::test]
async fn corrupted_chunk_fails_and_keeps_only_verified_bytes() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let len = 5 * 256 * 1024 + 17;
    let data = random_bytes("corrupt", len);
    fs::write(src.path().join("f"), &data).unwrap();
    let (a, a_proxy) = tokio::io::duplex(BUF);
    let (b_proxy, b) = tokio::io::duplex(BUF);
    let proxy = tokio::spawn(corrupting_proxy(a_proxy, b_proxy, 3));
    let receiver = tokio::spawn(receive_all(b, opts(out.path(), false)));
    let sent = tokio::time::timeout(
        LIMIT,
        send(a, scan(&[src.path().join("f")]).unwrap(), |_| {}),
    )
    .await
    .unwrap();
    let (received, _) = receiver.await.unwrap();
    proxy.await.unwrap();
    match &received {
        Err(TransferError::ChunkMismatch { path, offset }) => {
            assert_eq!(path, "f");
            assert_eq!(*offset, 2 * 256 * 1024);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&sent, Err(TransferError::PeerError { message: m, .. }) if m.contains("verification")),
        "{sent:?}"
    );
    assert!(!out.path().join("f").exists());
    let part = fs::read(out.path().join("f.ferry-part")).unwrap();
    assert_eq!(part, data[..2 * 256 * 1024]);

    // Running again resumes from the verified bytes and completes.
    let o = transfer(&[src.path().join("f")], out.path(), false).await;
    assert_eq!(files_report(&o).bytes_resumed, 2 * 256 * 1024);
    assert_eq!(fs::read(out.path().join("f")).unwrap(), data);
}

/// A hand-written sender speaking raw frames.
struct RawSender {
    stream: DuplexStream,
    buf: BytesMut,
}

impl RawSender {
    fn new(stream: DuplexStream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    async fn frame(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        codec::encode(&frame, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    async fn control(&mut self, msg: Control) {
        self.frame(Frame::Control(msg)).await;
    }

    async fn offer(&mut self, manifest: Manifest) {
        self.control(Control::Offer {
            offer: Offer::Files(manifest),
            version: TRANSFER_VERSION,
        })
        .await;
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

    async fn expect_accept(&mut self) {
        match self.read().await {
            Some(Frame::Control(Control::Accept { .. })) => {}
            other => panic!("{other:?}"),
        }
    }
}

fn file_entry(path: &str, size: u64) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File { size, mode: 0o644 },
    }
}

#[tokio::test]
async fn malicious_offer_paths_are_refused() {
    for bad in ["../escape", "/etc/x", "a/../../b", "ok/../../escape"] {
        let top = TempDir::new().unwrap();
        let out = top.path().join("out");
        fs::create_dir(&out).unwrap();
        let (a, b) = tokio::io::duplex(BUF);
        let mut s = RawSender::new(a);
        s.offer(Manifest {
            entries: vec![file_entry("fine", 1), file_entry(bad, 5)],
        })
        .await;
        let got = receive_offer(b, opts(&out, false)).await;
        match got {
            Err(TransferError::UnsafePath { path, .. }) => assert_eq!(path, bad),
            other => panic!("{bad}: {other:?}"),
        }
        // The sender is told why.
        match s.read().await {
            Some(Frame::Control(Control::Error { message, .. })) => {
                assert!(message.contains("unsafe"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let names: Vec<_> = fs::read_dir(top.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out"]);
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
    }
}

#[cfg(unix)]
#[tokio::test]
async fn symlink_in_out_dir_cannot_redirect_writes() {
    let top = TempDir::new().unwrap();
    let out = top.path().join("out");
    let outside = top.path().join("outside");
    fs::create_dir(&out).unwrap();
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("link")).unwrap();
    let (a, b) = tokio::io::duplex(BUF);
    let mut s = RawSender::new(a);
    s.offer(Manifest {
        entries: vec![file_entry("link/x", 3)],
    })
    .await;
    assert!(matches!(
        receive_offer(b, opts(&out, true)).await,
        Err(TransferError::UnsafePath { .. })
    ));
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[tokio::test]
async fn whole_file_mismatch_leaves_nothing() {
    let out = TempDir::new().unwrap();
    let (a, b) = tokio::io::duplex(BUF);
    let receiver = tokio::spawn(receive_all(b, opts(out.path(), false)));
    let mut s = RawSender::new(a);
    s.offer(Manifest {
        entries: vec![file_entry("f", 4)],
    })
    .await;
    s.expect_accept().await;
    s.control(Control::FileStart {
        index: 0,
        offset: 0,
    })
    .await;
    s.frame(Frame::Data {
        hash: chunk_hash(0, b"abcd").unwrap(),
        chunk: bytes::Bytes::from_static(b"abcd"),
    })
    .await;
    s.frame(Frame::FileEnd {
        hash: *blake3::hash(b"abce").as_bytes(),
    })
    .await;
    let (received, _) = receiver.await.unwrap();
    assert!(
        matches!(&received, Err(TransferError::FileMismatch { path }) if path == "f"),
        "{received:?}"
    );
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn not_enough_space_is_refused_before_writing() {
    let out = TempDir::new().unwrap();
    let (a, b) = tokio::io::duplex(BUF);
    let mut s = RawSender::new(a);
    s.offer(Manifest {
        entries: vec![
            Entry {
                path: "d".into(),
                kind: EntryKind::Dir { mode: 0o755 },
            },
            file_entry("d/huge", u64::MAX / 4),
        ],
    })
    .await;
    let incoming: Incoming<_> = receive_offer(b, opts(out.path(), false)).await.unwrap();
    match incoming.accept(|_| {}).await {
        Err(e @ TransferError::NoSpace { needed, available }) => {
            // The file's bytes and room for its two entries.
            assert_eq!(needed, u64::MAX / 4 + 2 * ferry_transfer::ENTRY_SPACE);
            assert!(available < needed);
            assert!(e.to_string().contains("free space"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
    assert!(matches!(
        s.read().await,
        Some(Frame::Control(Control::Error { .. }))
    ));
}

#[tokio::test]
async fn missing_source_file_is_reported_to_the_receiver() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    fs::write(src.path().join("a"), b"aaa").unwrap();
    fs::write(src.path().join("b"), b"bbb").unwrap();
    let source = scan(&[src.path().join("a"), src.path().join("b")]).unwrap();
    fs::remove_file(src.path().join("b")).unwrap();
    let o = transfer_source(source, out.path(), false).await;
    match &o.sent {
        Err(TransferError::Io { path, .. }) => assert_eq!(path, &src.path().join("b")),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&o.received, Err(TransferError::PeerError { message: m, .. }) if m.contains("/b")),
        "{:?}",
        o.received
    );
    // The file that made it is complete and verified.
    assert_eq!(fs::read(out.path().join("a")).unwrap(), b"aaa");
    assert!(!out.path().join("b").exists());
}

#[tokio::test]
async fn receiver_that_vanishes_fails_the_sender() {
    let src = TempDir::new().unwrap();
    fs::write(src.path().join("a"), b"aaa").unwrap();
    let (a, b) = tokio::io::duplex(BUF);
    drop(b);
    let sent = send(a, scan(&[src.path().join("a")]).unwrap(), |_| {}).await;
    assert!(
        matches!(
            sent,
            Err(TransferError::Stream(_) | TransferError::PeerClosed)
        ),
        "{sent:?}"
    );
}

/// Passes `keep` data frames, then cuts both directions at once.
async fn cutting_proxy(sender_side: DuplexStream, receiver_side: DuplexStream, keep: usize) {
    frame_proxy(sender_side, receiver_side, |n, chunk| {
        (n <= keep).then_some(chunk)
    })
    .await;
}

#[tokio::test]
async fn after_a_break_the_next_attempt_keeps_finished_files_and_resumes() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let small = random_bytes("small", 300 * 1024);
    let big = random_bytes("big", 3 * 1024 * 1024 + 17);
    fs::write(src.path().join("a-small"), &small).unwrap();
    fs::write(src.path().join("b-big"), &big).unwrap();
    let source = scan(&[src.path().join("a-small"), src.path().join("b-big")]).unwrap();

    // First attempt: a-small (2 chunks) completes, b-big breaks after 3 chunks.
    let (a, a_proxy) = tokio::io::duplex(BUF);
    let (b_proxy, b) = tokio::io::duplex(BUF);
    let proxy = tokio::spawn(cutting_proxy(a_proxy, b_proxy, 5));
    let receiver = tokio::spawn(receive_all(b, opts(out.path(), false)));
    let sent = tokio::time::timeout(LIMIT, send(a, source.clone(), |_| {}))
        .await
        .expect("send hung");
    assert!(sent.is_err(), "the first attempt must fail: {sent:?}");
    let (received, events) = tokio::time::timeout(LIMIT, receiver)
        .await
        .expect("receive hung")
        .unwrap();
    assert!(received.is_err(), "{received:?}");
    proxy.await.unwrap();
    let finished: std::collections::HashSet<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::FileDone { path } => Some(path.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(finished, ["a-small".to_string()].into());
    let held = fs::metadata(out.path().join("b-big.ferry-part"))
        .unwrap()
        .len();
    assert!(held > 0, "part of b-big was kept");
    let small_mtime = fs::metadata(out.path().join("a-small"))
        .unwrap()
        .modified()
        .unwrap();

    // Without `finished`, the finished file is a clash.
    let o = transfer_source(source.clone(), out.path(), false).await;
    assert!(
        matches!(o.received, Err(TransferError::Exists { .. })),
        "{:?}",
        o.received
    );

    // The reconnect: finished files are offered back as complete.
    let (a, b) = tokio::io::duplex(BUF);
    let options = ReceiveOptions {
        finished,
        ..opts(out.path(), false)
    };
    let receiver = tokio::spawn(receive_all(b, options));
    let sent = tokio::time::timeout(LIMIT, send(a, source, |_| {}))
        .await
        .expect("send hung");
    let (received, _) = tokio::time::timeout(LIMIT, receiver)
        .await
        .expect("receive hung")
        .unwrap();
    let received = received.unwrap();
    assert!(matches!(sent, Ok(SendOutcome::Files(_))), "{sent:?}");
    assert_eq!(received.bytes_resumed, small.len() as u64 + held);
    assert_eq!(
        received.bytes_transferred,
        (small.len() + big.len()) as u64 - received.bytes_resumed
    );
    assert_eq!(fs::read(out.path().join("a-small")).unwrap(), small);
    assert_eq!(fs::read(out.path().join("b-big")).unwrap(), big);
    assert_eq!(
        fs::metadata(out.path().join("a-small"))
            .unwrap()
            .modified()
            .unwrap(),
        small_mtime,
        "the finished file was left alone"
    );
    assert!(!out.path().join("b-big.ferry-part").exists());
}

#[tokio::test]
async fn a_finished_file_that_changed_is_not_overwritten() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    fs::write(src.path().join("f"), random_bytes("f", 1000)).unwrap();
    // Same size, other bytes: not what the sender sends.
    fs::write(out.path().join("f"), random_bytes("other", 1000)).unwrap();
    let (a, b) = tokio::io::duplex(BUF);
    let options = ReceiveOptions {
        finished: ["f".to_string()].into(),
        ..opts(out.path(), false)
    };
    let receiver = tokio::spawn(receive_all(b, options));
    let source = scan(&[src.path().join("f")]).unwrap();
    let _ = tokio::time::timeout(LIMIT, send(a, source, |_| {}))
        .await
        .expect("send hung");
    let (received, _) = receiver.await.unwrap();
    assert!(
        matches!(received, Err(TransferError::Exists { .. })),
        "{received:?}"
    );
    assert_eq!(
        fs::read(out.path().join("f")).unwrap(),
        random_bytes("other", 1000)
    );
}

#[tokio::test]
async fn after_a_reconnect_a_different_offer_is_declined() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    fs::write(src.path().join("f"), b"data").unwrap();
    fs::write(src.path().join("g"), b"other").unwrap();
    let first = match scan(&[src.path().join("f")]).unwrap() {
        Source::Files { manifest, .. } => Offer::Files(manifest),
        other => panic!("{other:?}"),
    };
    // The same offer resumes.
    let (a, b) = tokio::io::duplex(BUF);
    let (o, f) = (opts(out.path(), false), first.clone());
    let receiver = tokio::spawn(async move {
        let incoming = ferry_transfer::resume_offer(b, o, &f).await.unwrap();
        incoming.accept(|_| {}).await.unwrap();
    });
    let sent = send(a, scan(&[src.path().join("f")]).unwrap(), |_| {}).await;
    assert!(matches!(sent, Ok(SendOutcome::Files(_))), "{sent:?}");
    receiver.await.unwrap();
    // Another offer is declined, and the receiver says why.
    let (a, b) = tokio::io::duplex(BUF);
    let o = opts(out.path(), true);
    let receiver = tokio::spawn(async move {
        let result = ferry_transfer::resume_offer(b, o, &first).await;
        assert!(matches!(result, Err(TransferError::OfferChanged)));
    });
    let sent = send(a, scan(&[src.path().join("g")]).unwrap(), |_| {})
        .await
        .unwrap();
    assert!(
        matches!(&sent, SendOutcome::Declined(why) if why.contains("differs")),
        "{sent:?}"
    );
    receiver.await.unwrap();
    assert!(!out.path().join("g").exists());
}

#[tokio::test]
async fn a_missing_output_folder_is_created() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    fs::write(src.path().join("d").join("f"), b"data").unwrap();
    let target = out.path().join("not").join("there");
    let o = transfer(&[src.path().join("d")], &target, false).await;
    assert!(o.received.is_ok(), "{:?}", o.received);
    assert_eq!(fs::read(target.join("d").join("f")).unwrap(), b"data");
}

/// Small files are made durable in batches (one `syncfs` each), large ones
/// on their own: across several batches, with large files between them,
/// every file arrives once, under its own name, and is reported done once.
#[tokio::test]
async fn many_small_files_across_batches_and_large_ones_all_arrive() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..300 {
        let rel = format!("d{}/f{i:03}", i % 7);
        let data = random_bytes(&rel, (i * 37) % 5000);
        fs::create_dir_all(src.path().join(format!("tree/d{}", i % 7))).unwrap();
        fs::write(src.path().join("tree").join(&rel), &data).unwrap();
        expected.insert(format!("tree/{rel}"), data);
    }
    for (name, len) in [("d3/big-a", 5 << 20), ("d5/big-b", (4 << 20) + 1)] {
        let data = random_bytes(name, len);
        fs::write(src.path().join("tree").join(name), &data).unwrap();
        expected.insert(format!("tree/{name}"), data);
    }
    let o = transfer(&[src.path().join("tree")], out.path(), false).await;
    let received = o.received.as_ref().unwrap();
    assert_eq!(received.files, expected.len());
    let mut done = o
        .receive_events
        .iter()
        .filter_map(|e| match e {
            Event::FileDone { path } => Some(path.clone()),
            _ => None,
        })
        .collect::<Vec<_>>();
    done.sort();
    assert_eq!(done, expected.keys().cloned().collect::<Vec<_>>());
    for (rel, data) in &expected {
        assert_eq!(&fs::read(out.path().join(rel)).unwrap(), data, "{rel}");
    }
    let parts = walk(out.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".ferry-part"))
        .collect::<Vec<_>>();
    assert!(parts.is_empty(), "left behind: {parts:?}");
}

/// A break in the middle of a batch: the files verified before it still
/// get their names and are reported done, so a resume need not send them.
#[tokio::test]
async fn a_break_mid_batch_still_finishes_the_verified_files() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let paths = (0..200)
        .map(|i| {
            let path = src.path().join(format!("f{i:03}"));
            fs::write(&path, random_bytes(&format!("f{i}"), 1024)).unwrap();
            path
        })
        .collect::<Vec<_>>();
    let (a, a_proxy) = tokio::io::duplex(BUF);
    let (b_proxy, b) = tokio::io::duplex(BUF);
    // One chunk per file: the 151st file's chunk never arrives.
    let proxy = tokio::spawn(cutting_proxy(a_proxy, b_proxy, 150));
    let receiver = tokio::spawn(receive_all(b, opts(out.path(), false)));
    let sent = tokio::time::timeout(LIMIT, send(a, scan(&paths).unwrap(), |_| {}))
        .await
        .expect("send hung");
    assert!(sent.is_err(), "{sent:?}");
    let (received, events) = tokio::time::timeout(LIMIT, receiver)
        .await
        .expect("receive hung")
        .unwrap();
    assert!(received.is_err(), "{received:?}");
    proxy.await.unwrap();
    let done = events
        .iter()
        .filter_map(|e| match e {
            Event::FileDone { path } => Some(path.clone()),
            _ => None,
        })
        .collect::<std::collections::BTreeSet<_>>();
    let whole = (0..200)
        .map(|i| format!("f{i:03}"))
        .filter(|name| out.path().join(name).exists())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(done.len(), 150, "{done:?}");
    assert_eq!(done, whole);
    for name in &whole {
        let i: usize = name[1..].parse().unwrap();
        assert_eq!(
            fs::read(out.path().join(name)).unwrap(),
            random_bytes(&format!("f{i}"), 1024)
        );
        assert!(!out.path().join(format!("{name}.ferry-part")).exists());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn a_move_mid_file_resumes_on_the_new_stream_and_sends_no_byte_twice() {
    let src = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let small = random_bytes("small", 300 * 1024);
    let big = random_bytes("big", 5 * 1024 * 1024 + 17);
    fs::write(src.path().join("a-small"), &small).unwrap();
    fs::write(src.path().join("b-big"), &big).unwrap();
    let source = scan(&[src.path().join("a-small"), src.path().join("b-big")]).unwrap();
    let total = (small.len() + big.len()) as u64;

    // The first stream: the move is asked for once the third chunk (b-big's
    // first) has passed. A small buffer keeps the sender from running far
    // ahead, so the boundary falls inside b-big.
    let (a, a_proxy) = tokio::io::duplex(64 * 1024);
    let (b_proxy, b) = tokio::io::duplex(64 * 1024);
    let (ask, asked) = tokio::sync::oneshot::channel::<()>();
    let mut ask = Some(ask);
    let passed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = passed.clone();
    let proxy = tokio::spawn(frame_proxy(a_proxy, b_proxy, move |n, chunk| {
        counted.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::SeqCst);
        if n == 3 {
            let _ = ask.take().map(|ask| ask.send(()));
        }
        Some(chunk)
    }));
    let receiver = tokio::spawn(receive_all(b, opts(out.path(), false)));
    let move_when = async {
        let _ = asked.await;
    };
    let sent = tokio::time::timeout(
        LIMIT,
        ferry_transfer::send_moving(a, source.clone(), |_| {}, move_when),
    )
    .await
    .expect("send hung");
    assert!(matches!(sent, Err(TransferError::Moved)), "{sent:?}");
    let (received, events) = tokio::time::timeout(LIMIT, receiver)
        .await
        .expect("receive hung")
        .unwrap();
    assert!(
        matches!(received, Err(TransferError::Moved)),
        "{received:?}"
    );
    proxy.await.unwrap();
    let on_first = passed.load(std::sync::atomic::Ordering::SeqCst);
    let held = fs::metadata(out.path().join("b-big.ferry-part"))
        .unwrap()
        .len();
    assert_eq!(
        on_first,
        small.len() as u64 + held,
        "the receiver wrote all that came before the move"
    );
    assert!(
        held > 0 && held < big.len() as u64 && held % CHUNK_SIZE as u64 == 0,
        "the move fell on a chunk boundary inside b-big: {held}"
    );
    let finished: std::collections::HashSet<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::FileDone { path } => Some(path.clone()),
            _ => None,
        })
        .collect();

    // The new stream: offer again, resume from the boundary.
    let (a, b) = tokio::io::duplex(BUF);
    let options = ReceiveOptions {
        finished,
        ..opts(out.path(), false)
    };
    let offered = match &source {
        Source::Files { manifest, .. } => Offer::Files(manifest.clone()),
        other => panic!("{other:?}"),
    };
    let receiver = tokio::spawn(async move {
        let incoming = ferry_transfer::resume_offer(b, options, &offered).await?;
        incoming.accept(|_| {}).await
    });
    let sent = tokio::time::timeout(LIMIT, send(a, source, |_| {}))
        .await
        .expect("send hung");
    assert!(matches!(sent, Ok(SendOutcome::Files(_))), "{sent:?}");
    let received = receiver.await.unwrap().unwrap();
    assert_eq!(received.bytes_resumed, on_first);
    assert_eq!(
        on_first + received.bytes_transferred,
        total,
        "every byte moved once"
    );
    assert_eq!(fs::read(out.path().join("a-small")).unwrap(), small);
    assert_eq!(fs::read(out.path().join("b-big")).unwrap(), big);
    assert!(!out.path().join("b-big.ferry-part").exists());
}
