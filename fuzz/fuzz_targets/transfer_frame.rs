//! The peer frame codec (`ferry_transfer::codec::decode`): what a hostile
//! peer sends over the established TLS/QUIC stream.
//!
//! Invariants: decoding never panics; `frame_len` agrees with what
//! `decode` consumes; feeding the bytes one at a time, or in chunks, gives
//! the same frames and the same first error as feeding them at once; an
//! incomplete frame consumes nothing; every decoded frame re-encodes to
//! `encoded_len` bytes that decode equal.
#![no_main]

use bytes::BytesMut;
use ferry_transfer::codec::{self, CodecError, Frame, HASH_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = decode_all(data, data.len().max(1));
    let step = 1 + usize::from(data.first().copied().unwrap_or(0) % 13);
    assert_eq!(whole, decode_all(data, 1), "byte-by-byte differs");
    assert_eq!(whole, decode_all(data, step), "chunks of {step} differ");
});

fn decode_all(data: &[u8], step: usize) -> Vec<Result<Frame, CodecError>> {
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            let announced = codec::frame_len(&buf);
            match codec::decode(&mut buf) {
                Ok(None) => {
                    assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                    if let Ok(Some(total)) = announced {
                        assert!(before < total, "a complete frame was not decoded");
                    }
                    break;
                }
                Ok(Some(frame)) => {
                    assert_eq!(
                        announced,
                        Ok(Some(before - buf.len())),
                        "frame_len disagrees"
                    );
                    check_frame(&frame);
                    out.push(Ok(frame));
                }
                Err(e) => {
                    // A reader closes the stream on any codec error.
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }
    out
}

fn check_frame(frame: &Frame) {
    if let Frame::Data { chunk, .. } = frame {
        assert!(!chunk.is_empty(), "empty data chunk decoded");
        assert!(chunk.len() <= codec::MAX_CHUNK, "oversized chunk decoded");
    }
    let mut buf = BytesMut::new();
    codec::encode(frame, &mut buf);
    assert_eq!(
        buf.len(),
        codec::encoded_len(frame),
        "encoded_len disagrees"
    );
    if let Frame::Control(_) = frame {
        // Control frames over the limit encode but are refused by the peer.
        if buf.len() > codec::HEADER_LEN + codec::MAX_CONTROL_LEN {
            return;
        }
    } else {
        assert!(buf.len() >= codec::HEADER_LEN + HASH_LEN);
    }
    let again = codec::decode(&mut buf)
        .expect("re-encoded frame decodes")
        .expect("re-encoded frame is complete");
    assert_eq!(*frame, again, "re-encoded frame decodes to something else");
    assert!(buf.is_empty(), "decode left bytes of its own frame behind");
}
