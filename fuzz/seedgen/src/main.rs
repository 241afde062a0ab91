//! Writes the seed corpora of the fuzz targets into `fuzz/seeds/<target>/`
//! (or the directory given as the first argument): a few real messages
//! each, binary ones encoded by ferry's own encoders. The output is
//! committed; rerun after a protocol change (`scripts/fuzz.sh --seeds`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use ferry_nat::stun::{AltConfig, BindingRequest, encode_binding_request, respond};
use ferry_transfer::codec::{self, Frame};
use ferry_transfer::{Control, Entry, EntryKind, Manifest, Offer, ResumePoint};

fn main() -> std::io::Result<()> {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds"));

    // Signalling: JSON lines as the client and the server send them.
    let signal: &[(&str, &str)] = &[
        (
            "client-hello-claim",
            "{\"type\":\"hello\",\"protocol\":1,\"agent\":\"ferry/0.1.0\"}\n{\"type\":\"claim\",\"nameplate\":7}\n",
        ),
        (
            "client-allocate-send-release",
            "{\"type\":\"allocate\"}\n{\"type\":\"send\",\"body\":\"3q2+7w==\"}\n{\"type\":\"release\",\"reason\":\"done\"}\n",
        ),
        (
            "client-ping-relay",
            "{\"type\":\"ping\",\"id\":3}\r\n{\"type\":\"relay\",\"protocol\":1,\"token\":\"00ff\"}\n",
        ),
        (
            "server-welcome-claimed",
            "{\"type\":\"welcome\",\"protocol\":1,\"observed_addr\":\"198.51.100.7:40000\",\"heartbeat_secs\":30,\"stun_port\":3478,\"relay_addr\":\"192.0.2.1:443\"}\n{\"type\":\"claimed\",\"nameplate\":7,\"relay_token\":\"abcd\"}\n",
        ),
        (
            "server-peer-left-error",
            "{\"type\":\"peer-joined\"}\n{\"type\":\"message\",\"body\":\"AA==\"}\n{\"type\":\"peer-left\",\"reason\":null}\n{\"type\":\"error\",\"code\":\"unknown-nameplate\",\"message\":\"no transfer is waiting\"}\n",
        ),
        (
            "peer-hello",
            "{\"type\":\"hello\",\"cert_fingerprint\":\"00\",\"candidates\":[{\"addr\":\"192.0.2.5:4000\",\"transport\":\"tcp\",\"kind\":\"host\",\"priority\":100},{\"addr\":\"[2001:db8::5]:4001\",\"transport\":\"udp\",\"kind\":\"stun\",\"priority\":50}],\"network\":{\"udp\":\"stable\",\"tcp_port_kept\":true}}\n",
        ),
        (
            "peer-version-abort",
            "{\"type\":\"version\",\"protocol\":1,\"agent\":\"ferry/0.1.0\"}\n{\"type\":\"abort\",\"reason\":\"cancelled\"}\n{\"type\":\"path-failed\",\"path\":\"tcp\",\"why\":\"refused\"}\n",
        ),
    ];
    for (name, text) in signal {
        write(&root, "signal_frame", name, text.as_bytes())?;
    }

    // Transfer frames: a whole small conversation, and pieces of it.
    let manifest = Manifest {
        entries: vec![
            entry("docs", EntryKind::Dir { mode: 0o755 }),
            entry(
                "docs/a.txt",
                EntryKind::File {
                    size: 5,
                    mode: 0o644,
                },
            ),
            entry(
                "docs/sub/b.bin",
                EntryKind::File {
                    size: 0,
                    mode: 0o600,
                },
            ),
            entry(
                "c",
                EntryKind::File {
                    size: 3,
                    mode: 0o755,
                },
            ),
        ],
    };
    let chunk = b"hello";
    let frames = [
        Frame::Control(Control::Offer {
            offer: Offer::Files(manifest.clone()),
            version: ferry_transfer::TRANSFER_VERSION,
        }),
        Frame::Control(Control::FileStart {
            index: 0,
            offset: 0,
        }),
        Frame::Data {
            hash: ferry_transfer::chunk_hash(0, chunk).expect("a chunk at offset 0"),
            chunk: bytes::Bytes::from_static(chunk),
        },
        Frame::FileEnd {
            hash: blake3_hash(chunk),
        },
        Frame::Control(Control::Done { ok: true }),
    ];
    write(
        &root,
        "transfer_frame",
        "sender-conversation",
        &encode(&frames),
    )?;
    let answers = [
        Frame::Control(Control::Accept {
            files: vec![
                ResumePoint::fresh(),
                ResumePoint {
                    offset: 3,
                    prefix_hash: "ab".repeat(32),
                },
                ResumePoint::fresh(),
            ],
            version: ferry_transfer::TRANSFER_VERSION,
        }),
        Frame::Control(Control::Decline {
            reason: "no".into(),
        }),
        Frame::Control(Control::Error {
            message: "disk full".into(),
            code: None,
        }),
        Frame::Control(Control::Ack),
    ];
    write(
        &root,
        "transfer_frame",
        "receiver-answers",
        &encode(&answers),
    )?;
    let text = [Frame::Control(Control::Offer {
        offer: Offer::Text("hi there".into()),
        version: ferry_transfer::TRANSFER_VERSION,
    })];
    write(&root, "transfer_frame", "text-offer", &encode(&text))?;

    // STUN: requests our client sends, and what our server answers them.
    let local: SocketAddr = "192.0.2.1:3478".parse().expect("literal");
    let alt = AltConfig {
        primary: local,
        alternate: "192.0.2.2:3479".parse().expect("literal"),
    };
    let from: SocketAddr = "198.51.100.7:40000".parse().expect("literal");
    for (name, change_ip, change_port) in [
        ("binding", false, false),
        ("change-port", false, true),
        ("change-both", true, true),
    ] {
        let request = encode_binding_request(
            [7; 12],
            &BindingRequest {
                change_ip,
                change_port,
            },
        )
        .map_err(std::io::Error::other)?;
        write(&root, "stun", &format!("request-{name}"), &request)?;
        if let Some(answer) = respond(&request, from, local, Some(alt)) {
            write(&root, "stun", &format!("answer-{name}"), &answer.payload)?;
        }
    }
    // A classic RFC 3489 request (no magic cookie).
    let mut classic = vec![0x00, 0x01, 0x00, 0x08];
    classic.extend_from_slice(&[9; 16]);
    classic.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0x06]);
    write(&root, "stun", "request-rfc3489", &classic)?;

    // Manifests: JSON as it travels inside the offer.
    let json = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
    write(&root, "manifest", "small-tree", &json)?;
    let hostile = Manifest {
        entries: vec![
            entry(
                "a",
                EntryKind::File {
                    size: 1,
                    mode: 0o644,
                },
            ),
            entry(
                "a/b",
                EntryKind::File {
                    size: 1,
                    mode: 0o644,
                },
            ),
            entry(
                "c.ferry-part",
                EntryKind::File {
                    size: 1,
                    mode: 0o644,
                },
            ),
            entry(
                "c",
                EntryKind::File {
                    size: u64::MAX,
                    mode: 0o7777,
                },
            ),
        ],
    };
    let json = serde_json::to_vec(&hostile).map_err(std::io::Error::other)?;
    write(&root, "manifest", "collisions", &json)?;
    write(&root, "manifest", "empty", b"[]")?;

    // Paths, as a hostile manifest might name them.
    for (name, path) in [
        ("plain", "docs/sub/file.txt"),
        ("dotdot", "a/../../etc/passwd"),
        ("absolute", "/etc/passwd"),
        ("through-link", "link/etc/passwd"),
        ("below-file", "file/x"),
        ("dir-link", "dir/link/x"),
        ("backslash", "a\\..\\b"),
        ("drive", "C:/x"),
    ] {
        write(&root, "path", name, path.as_bytes())?;
    }
    Ok(())
}

fn entry(path: &str, kind: EntryKind) -> Entry {
    Entry {
        path: path.into(),
        kind,
    }
}

fn blake3_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for frame in frames {
        codec::encode(frame, &mut buf);
    }
    buf.to_vec()
}

fn write(root: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)
}
