//! A real `ferry receive` against senders that misbehave on purpose: they
//! pair and connect exactly like ferry (through the library), then speak
//! the transfer protocol by hand.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use ferry_session::Sender;
use ferry_transfer::codec::{self, Frame};
use ferry_transfer::{Control, Entry, EntryKind, Manifest, Offer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Stream = ferry_connect::PeerStream;

async fn write_frame(stream: &mut Stream, frame: Frame) {
    let mut buf = BytesMut::new();
    codec::encode(&frame, &mut buf);
    stream.write_all(&buf).await.unwrap();
    stream.flush().await.unwrap();
}

async fn read_frame(stream: &mut Stream, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(frame) = codec::decode(buf).unwrap() {
            return Some(frame);
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read_buf(buf))
            .await
            .unwrap()
            .ok()?;
        if n == 0 {
            return None;
        }
    }
}

/// Pairs with a real receiver saving into `out`; returns the secure stream
/// and the receiver process.
async fn rogue_sender(server: &Server, out: &Path) -> (Stream, Proc) {
    let sender = Sender::start(&server.addr, None, Default::default())
        .await
        .unwrap();
    let recv = start_receive(server, &sender.code().to_string(), out, &["--yes"]);
    let link = sender.connect(|_| {}).await.unwrap();
    (link.stream, recv)
}

async fn finish(mut proc: Proc) -> (i32, Proc) {
    tokio::task::spawn_blocking(move || {
        let code = proc.finish();
        (code, proc)
    })
    .await
    .unwrap()
}

fn file(path: &str, size: u64) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File { size, mode: 0o644 },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_sender_cannot_write_outside_out() {
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let outer = tempfile::tempdir().unwrap();
    let out = outer.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for bad in ["../escape", "/etc/x", "ok/../../escape2"] {
        let (mut stream, recv) = rogue_sender(&server, &out).await;
        let manifest = Manifest {
            entries: vec![file("fine.txt", 1), file(bad, 5)],
        };
        write_frame(
            &mut stream,
            Frame::Control(Control::Offer {
                offer: Offer::Files(manifest),
                version: ferry_transfer::TRANSFER_VERSION,
            }),
        )
        .await;
        // Whatever the receiver answers, push the data as if accepted.
        let mut buf = BytesMut::new();
        let answer = read_frame(&mut stream, &mut buf).await;
        assert!(
            !matches!(answer, Some(Frame::Control(Control::Accept { .. }))),
            "the receiver accepted {bad:?}: {answer:?}"
        );
        let (code, recv) = finish(recv).await;
        assert_eq!(code, 7, "{bad}: {:?}", recv.seen);
        let message = recv.events("error")[0]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains("unsafe") || message.contains("outside"),
            "{message}"
        );
        assert!(!outer.path().join("escape").exists());
        assert!(!outer.path().join("escape2").exists());
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            0,
            "{bad}: something was written"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_chunk_is_detected_and_no_final_file_appears() {
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let (mut stream, recv) = rogue_sender(&server, out.path()).await;

    let chunk = ferry_transfer::CHUNK_SIZE;
    let data: Vec<u8> = (0..3 * chunk).map(|i| (i * 7 % 251) as u8).collect();
    let manifest = Manifest {
        entries: vec![file("f.bin", data.len() as u64)],
    };
    write_frame(
        &mut stream,
        Frame::Control(Control::Offer {
            offer: Offer::Files(manifest),
            version: ferry_transfer::TRANSFER_VERSION,
        }),
    )
    .await;
    let mut buf = BytesMut::new();
    let answer = read_frame(&mut stream, &mut buf).await;
    assert!(
        matches!(answer, Some(Frame::Control(Control::Accept { .. }))),
        "{answer:?}"
    );
    write_frame(
        &mut stream,
        Frame::Control(Control::FileStart {
            index: 0,
            offset: 0,
        }),
    )
    .await;
    for (i, part) in data.chunks(chunk).enumerate() {
        let hash = ferry_transfer::chunk_hash((i * chunk) as u64, part).unwrap();
        let mut bytes = part.to_vec();
        if i == 1 {
            bytes[100] ^= 0x01; // corrupted after hashing
        }
        write_frame(
            &mut stream,
            Frame::Data {
                hash,
                chunk: Bytes::from(bytes),
            },
        )
        .await;
    }
    let whole = *blake3::hash(&data).as_bytes();
    write_frame(&mut stream, Frame::FileEnd { hash: whole }).await;

    let (code, recv) = finish(recv).await;
    assert_eq!(code, 5, "{:?}", recv.seen);
    let message = recv.events("error")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("f.bin"), "{message}");
    assert!(
        !out.path().join("f.bin").exists(),
        "a corrupted file got its final name"
    );
    // Only the verified first chunk is kept for a resume.
    let part = std::fs::metadata(out.path().join("f.bin.ferry-part")).map(|m| m.len());
    assert_eq!(part.unwrap_or(0), chunk as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_file_hash_mismatch_leaves_no_file() {
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let (mut stream, recv) = rogue_sender(&server, out.path()).await;
    let data = vec![42u8; 1000];
    let manifest = Manifest {
        entries: vec![file("g.bin", 1000)],
    };
    write_frame(
        &mut stream,
        Frame::Control(Control::Offer {
            offer: Offer::Files(manifest),
            version: ferry_transfer::TRANSFER_VERSION,
        }),
    )
    .await;
    let mut buf = BytesMut::new();
    read_frame(&mut stream, &mut buf).await;
    write_frame(
        &mut stream,
        Frame::Control(Control::FileStart {
            index: 0,
            offset: 0,
        }),
    )
    .await;
    let hash = ferry_transfer::chunk_hash(0, &data).unwrap();
    write_frame(
        &mut stream,
        Frame::Data {
            hash,
            chunk: Bytes::from(data),
        },
    )
    .await;
    write_frame(&mut stream, Frame::FileEnd { hash: [0u8; 32] }).await;
    let (code, recv) = finish(recv).await;
    assert_eq!(code, 5, "{:?}", recv.seen);
    assert!(!out.path().join("g.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_claimant_is_refused() {
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    // The sender holds the nameplate; a second side claims it and stays.
    let sender = Sender::start(&server.addr, None, Default::default())
        .await
        .unwrap();
    let code = sender.code().clone();
    let (mut second, _) = ferry_rendezvous::SignalClient::connect(&server.addr)
        .await
        .unwrap();
    second.claim(code.nameplate).await.unwrap();
    // A third, with the right code, is turned away by the server.
    let third = start_receive(&server, &code.to_string(), out.path(), &["--yes"]);
    let (exit, third) = finish(third).await;
    assert_eq!(exit, 4, "{:?}", third.seen);
    let message = third.events("error")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("in use"), "{message}");
    drop(sender);
}
