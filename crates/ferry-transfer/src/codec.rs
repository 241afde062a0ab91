//! Frame codec: `[u8 kind][u32 big-endian length][payload]`. Pure, no IO.
//!
//! | kind | name     | payload                                   | max length          |
//! |------|----------|-------------------------------------------|---------------------|
//! | 1    | control  | JSON [`Control`]                           | [`MAX_CONTROL_LEN`] (16 MiB) |
//! | 2    | data     | 32-byte `chunk_hash`, chunk bytes          | [`MAX_DATA_LEN`] (1 MiB + 32) |
//! | 3    | file-end | 32-byte BLAKE3 of the whole file           | exactly 32          |
//!
//! The length is checked against the limit of its kind from the 5-byte
//! header alone, before anything is allocated or waited for, so a hostile
//! peer cannot make the receiver buffer more than one maximal frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::message::Control;

/// Size of the frame header (kind + length).
pub const HEADER_LEN: usize = 5;
/// Size of a BLAKE3 hash.
pub const HASH_LEN: usize = 32;
/// Largest chunk a data frame may carry (1 MiB).
pub const MAX_CHUNK: usize = 1024 * 1024;
/// Largest data frame payload: hash plus [`MAX_CHUNK`].
pub const MAX_DATA_LEN: usize = MAX_CHUNK + HASH_LEN;
/// Largest control frame payload (16 MiB, enough for a manifest of ~100k files).
pub const MAX_CONTROL_LEN: usize = 16 * 1024 * 1024;
/// The protocol's chunk size (256 KiB): every data frame but a file's last
/// carries exactly this many bytes, so that each chunk is one subtree of
/// the file's BLAKE3 tree (see [`chunk_hash`](crate::chunk_hash)).
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Frame kind byte of control frames.
pub const KIND_CONTROL: u8 = 1;
/// Frame kind byte of data frames.
pub const KIND_DATA: u8 = 2;
/// Frame kind byte of file-end frames.
pub const KIND_FILE_END: u8 = 3;

/// One frame of the transfer protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON control message.
    Control(Control),
    /// A chunk of the current file and its BLAKE3 hash.
    Data {
        /// [`chunk_hash`](crate::chunk_hash) of `chunk` at its offset.
        hash: [u8; HASH_LEN],
        /// The bytes (1..=[`MAX_CHUNK`]).
        chunk: Bytes,
    },
    /// End of the current file, with the BLAKE3 of the whole file.
    FileEnd {
        /// BLAKE3 of the whole file.
        hash: [u8; HASH_LEN],
    },
}

/// Why bytes could not be decoded into a [`Frame`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The kind byte is not one of the known kinds.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The length field exceeds the limit of its kind.
    #[error("frame of kind {kind} too large: {len} bytes (limit {limit})")]
    TooLarge {
        /// Frame kind.
        kind: u8,
        /// Announced length.
        len: usize,
        /// Limit for this kind.
        limit: usize,
    },
    /// The length field is too small for its kind.
    #[error("frame of kind {kind} has bad length {len}")]
    BadLength {
        /// Frame kind.
        kind: u8,
        /// Announced length.
        len: usize,
    },
    /// A control frame is not valid JSON of a known message.
    #[error("bad control message: {0}")]
    BadControl(String),
}

/// Appends the encoding of `frame` to `dst`.
///
/// Control messages always serialize; a message larger than
/// [`MAX_CONTROL_LEN`] encodes but the peer will reject it.
pub fn encode(frame: &Frame, dst: &mut BytesMut) {
    match frame {
        Frame::Control(msg) => {
            // Serializing our own plain data types cannot fail.
            let json = serde_json::to_vec(msg).unwrap_or_default();
            put_header(dst, KIND_CONTROL, json.len());
            dst.extend_from_slice(&json);
        }
        Frame::Data { hash, chunk } => {
            encode_data_header(hash, chunk.len(), dst);
            dst.extend_from_slice(chunk);
        }
        Frame::FileEnd { hash } => {
            put_header(dst, KIND_FILE_END, HASH_LEN);
            dst.extend_from_slice(hash);
        }
    }
}

/// Appends the header and hash of a data frame whose chunk is `chunk_len`
/// bytes long; the caller writes the chunk itself (saves a copy).
pub fn encode_data_header(hash: &[u8; HASH_LEN], chunk_len: usize, dst: &mut BytesMut) {
    put_header(dst, KIND_DATA, HASH_LEN + chunk_len);
    dst.extend_from_slice(hash);
}

/// The number of bytes of an encoded frame.
pub fn encoded_len(frame: &Frame) -> usize {
    HEADER_LEN
        + match frame {
            Frame::Control(msg) => serde_json::to_vec(msg).map(|v| v.len()).unwrap_or(0),
            Frame::Data { chunk, .. } => HASH_LEN + chunk.len(),
            Frame::FileEnd { .. } => HASH_LEN,
        }
}

/// Decodes one frame from the front of `src`, consuming its bytes.
///
/// Returns `Ok(None)` when `src` holds only part of a frame (nothing is
/// consumed); the header is validated as soon as its 5 bytes are present.
/// Data chunks are split off `src` without copying.
pub fn decode(src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
    let Some(total) = frame_len(src)? else {
        return Ok(None);
    };
    if src.len() < total {
        return Ok(None);
    }
    let kind = src[0];
    src.advance(HEADER_LEN);
    let mut payload = src.split_to(total - HEADER_LEN);
    match kind {
        KIND_CONTROL => serde_json::from_slice(&payload)
            .map(|msg| Some(Frame::Control(msg)))
            .map_err(|e| CodecError::BadControl(e.to_string())),
        KIND_DATA => {
            let hash = take_hash(&mut payload);
            Ok(Some(Frame::Data {
                hash,
                chunk: payload.freeze(),
            }))
        }
        _ => Ok(Some(Frame::FileEnd {
            hash: take_hash(&mut payload),
        })),
    }
}

/// From the first bytes of `src`: the total length (header included) of the
/// frame that starts there, or `None` if the header is incomplete. Validates
/// the kind and the length limit, so callers may reserve that much.
pub fn frame_len(src: &[u8]) -> Result<Option<usize>, CodecError> {
    if src.len() < HEADER_LEN {
        return Ok(None);
    }
    let kind = src[0];
    let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
    let (min, limit) = match kind {
        KIND_CONTROL => (0, MAX_CONTROL_LEN),
        KIND_DATA => (HASH_LEN + 1, MAX_DATA_LEN),
        KIND_FILE_END => (HASH_LEN, HASH_LEN),
        other => return Err(CodecError::UnknownKind(other)),
    };
    if len > limit {
        return Err(CodecError::TooLarge { kind, len, limit });
    }
    if len < min {
        return Err(CodecError::BadLength { kind, len });
    }
    Ok(Some(HEADER_LEN + len))
}

fn put_header(dst: &mut BytesMut, kind: u8, len: usize) {
    dst.reserve(HEADER_LEN + len);
    dst.put_u8(kind);
    // Lengths of frames we build are bounded by the limits above (< 4 GiB).
    dst.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

fn take_hash(payload: &mut BytesMut) -> [u8; HASH_LEN] {
    let mut hash = [0u8; HASH_LEN];
    payload.copy_to_slice(&mut hash);
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{
        Entry, EntryKind, ErrorCode, Manifest, Offer, ResumePoint, TRANSFER_VERSION,
    };
    use proptest::prelude::*;

    fn enc(frame: &Frame) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode(frame, &mut b);
        assert_eq!(b.len(), encoded_len(frame));
        b.to_vec()
    }

    #[test]
    fn control_frame_snapshot() {
        let bytes = enc(&Frame::Control(Control::Done { ok: true }));
        let json = br#"{"type":"done","ok":true}"#;
        let mut want = vec![1, 0, 0, 0, json.len() as u8];
        want.extend_from_slice(json);
        assert_eq!(bytes, want);
    }

    #[test]
    fn offer_json_snapshot() {
        let offer = Control::Offer {
            offer: Offer::Files(Manifest {
                entries: vec![
                    Entry {
                        path: "d".into(),
                        kind: EntryKind::Dir { mode: 0o755 },
                    },
                    Entry {
                        path: "d/a".into(),
                        kind: EntryKind::File {
                            size: 3,
                            mode: 0o644,
                        },
                    },
                ],
            }),
            version: TRANSFER_VERSION,
        };
        let bytes = enc(&Frame::Control(offer));
        assert_eq!(
            std::str::from_utf8(&bytes[5..]).unwrap(),
            r#"{"type":"offer","offer":{"files":[{"path":"d","kind":{"type":"dir","mode":493}},{"path":"d/a","kind":{"type":"file","size":3,"mode":420}}]},"version":2}"#
        );
        let accept = Control::Accept {
            files: vec![ResumePoint {
                offset: 2,
                prefix_hash: "ab".into(),
            }],
            version: TRANSFER_VERSION,
        };
        let bytes = enc(&Frame::Control(accept));
        assert_eq!(
            std::str::from_utf8(&bytes[5..]).unwrap(),
            r#"{"type":"accept","files":[{"offset":2,"prefix_hash":"ab"}],"version":2}"#
        );
        // Peers from before the version field speak version 1.
        let old = br#"{"type":"accept","files":[]}"#;
        let mut frame = BytesMut::from(&[1, 0, 0, 0, old.len() as u8][..]);
        frame.extend_from_slice(old);
        assert_eq!(
            decode(&mut frame).unwrap(),
            Some(Frame::Control(Control::Accept {
                files: vec![],
                version: 1
            }))
        );
    }

    #[test]
    fn error_json_snapshot_and_older_and_newer_peers() {
        let json = |control: Control| {
            let bytes = enc(&Frame::Control(control));
            String::from_utf8(bytes[5..].to_vec()).unwrap()
        };
        // No code: the frame is byte for byte what peers before codes sent.
        assert_eq!(
            json(Control::Error {
                message: "disk full".into(),
                code: None,
            }),
            r#"{"type":"error","message":"disk full"}"#
        );
        assert_eq!(
            json(Control::Error {
                message: "x".into(),
                code: Some(ErrorCode::GitDir),
            }),
            r#"{"type":"error","message":"x","code":"git_dir"}"#
        );
        let decoded = |json: &str| {
            let mut b = BytesMut::new();
            b.put_u8(KIND_CONTROL);
            b.put_u32(json.len() as u32);
            b.extend_from_slice(json.as_bytes());
            decode(&mut b).unwrap().unwrap()
        };
        let error = |message: &str, code| {
            Frame::Control(Control::Error {
                message: message.into(),
                code,
            })
        };
        assert_eq!(
            decoded(r#"{"type":"error","message":"old"}"#),
            error("old", None)
        );
        assert_eq!(
            decoded(r#"{"type":"error","message":"e","code":"exists"}"#),
            error("e", Some(ErrorCode::Exists))
        );
        // A code from a newer peer is kept as unknown, not a protocol error.
        assert_eq!(
            decoded(r#"{"type":"error","message":"new","code":"out_of_tea"}"#),
            error("new", Some(ErrorCode::Unknown))
        );
    }

    #[test]
    fn data_frame_snapshot() {
        let bytes = enc(&Frame::Data {
            hash: [0xAA; 32],
            chunk: Bytes::from_static(b"xyz"),
        });
        let mut want = vec![2, 0, 0, 0, 35];
        want.extend_from_slice(&[0xAA; 32]);
        want.extend_from_slice(b"xyz");
        assert_eq!(bytes, want);
    }

    #[test]
    fn file_end_frame_snapshot() {
        let bytes = enc(&Frame::FileEnd { hash: [7; 32] });
        let mut want = vec![3, 0, 0, 0, 32];
        want.extend_from_slice(&[7; 32]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn partial_frame_is_incomplete_and_not_consumed() {
        let full = enc(&Frame::FileEnd { hash: [1; 32] });
        for cut in 0..full.len() {
            let mut b = BytesMut::from(&full[..cut]);
            assert_eq!(decode(&mut b), Ok(None));
            assert_eq!(b.len(), cut);
        }
    }

    #[test]
    fn oversized_lengths_rejected_from_header_alone() {
        for (kind, len) in [
            (KIND_CONTROL, MAX_CONTROL_LEN + 1),
            (KIND_DATA, MAX_DATA_LEN + 1),
            (KIND_FILE_END, 33),
            (KIND_DATA, u32::MAX as usize),
        ] {
            let mut b = BytesMut::new();
            b.put_u8(kind);
            b.put_u32(len as u32);
            let cap = b.capacity();
            assert!(matches!(decode(&mut b), Err(CodecError::TooLarge { .. })));
            assert_eq!(b.capacity(), cap, "decode must not allocate");
        }
    }

    #[test]
    fn bad_kinds_and_short_lengths_rejected() {
        let mut b = BytesMut::from(&[9u8, 0, 0, 0, 0][..]);
        assert_eq!(decode(&mut b), Err(CodecError::UnknownKind(9)));
        let mut b = BytesMut::from(&[KIND_DATA, 0, 0, 0, 32][..]);
        assert!(matches!(decode(&mut b), Err(CodecError::BadLength { .. })));
        let mut b = BytesMut::from(&[KIND_FILE_END, 0, 0, 0, 31][..]);
        assert!(matches!(decode(&mut b), Err(CodecError::BadLength { .. })));
        let mut b = BytesMut::from(&[KIND_CONTROL, 0, 0, 0, 2, b'{', b'}'][..]);
        assert!(matches!(decode(&mut b), Err(CodecError::BadControl(_))));
    }

    fn arb_control() -> impl Strategy<Value = Control> {
        prop_oneof![
            any::<bool>().prop_map(|ok| Control::Done { ok }),
            ".*".prop_map(|reason| Control::Decline { reason }),
            (
                ".*",
                proptest::option::of(prop_oneof![
                    Just(ErrorCode::Exists),
                    Just(ErrorCode::GitDir),
                    Just(ErrorCode::Unknown),
                ])
            )
                .prop_map(|(message, code)| Control::Error { message, code }),
            Just(Control::Ack),
            (any::<usize>(), any::<u64>())
                .prop_map(|(index, offset)| Control::FileStart { index, offset }),
            proptest::collection::vec((any::<u64>(), "[0-9a-f]{0,64}"), 0..4).prop_map(|v| {
                Control::Accept {
                    files: v
                        .into_iter()
                        .map(|(offset, prefix_hash)| ResumePoint {
                            offset,
                            prefix_hash,
                        })
                        .collect(),
                    version: TRANSFER_VERSION,
                }
            }),
            (".*", any::<u32>()).prop_map(|(t, version)| Control::Offer {
                offer: Offer::Text(t),
                version,
            }),
            proptest::collection::vec((".*", any::<u64>(), any::<u32>(), any::<bool>()), 0..4)
                .prop_map(|v| Control::Offer {
                    offer: Offer::Files(Manifest {
                        entries: v
                            .into_iter()
                            .map(|(path, size, mode, dir)| Entry {
                                path,
                                kind: if dir {
                                    EntryKind::Dir { mode }
                                } else {
                                    EntryKind::File { size, mode }
                                },
                            })
                            .collect(),
                    }),
                    version: TRANSFER_VERSION,
                }),
        ]
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            arb_control().prop_map(Frame::Control),
            (
                any::<[u8; 32]>(),
                proptest::collection::vec(any::<u8>(), 1..2048)
            )
                .prop_map(|(hash, chunk)| Frame::Data {
                    hash,
                    chunk: chunk.into()
                }),
            any::<[u8; 32]>().prop_map(|hash| Frame::FileEnd { hash }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(frames in proptest::collection::vec(arb_frame(), 1..6)) {
            let mut b = BytesMut::new();
            for f in &frames {
                encode(f, &mut b);
            }
            for f in &frames {
                prop_assert_eq!(decode(&mut b).unwrap(), Some(f.clone()));
            }
            prop_assert!(b.is_empty());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut b = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut b) {}
        }

        #[test]
        fn decode_never_panics_with_valid_headers(
            kind in 0u8..5,
            len in any::<u32>(),
            rest in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut b = BytesMut::new();
            b.put_u8(kind);
            b.put_u32(len);
            b.extend_from_slice(&rest);
            let _ = decode(&mut b);
        }
    }
}
