//! The signalling codec (`ferry_proto::signal::decode_frame`), on both
//! sides of the rendezvous connection, and the peer messages that travel
//! sealed inside mailbox bodies.
//!
//! Invariants: decoding never panics; feeding the bytes one at a time gives
//! the same frames and errors as feeding them at once (a peer that dribbles
//! bytes sees the same parser); the buffer never holds `MAX_FRAME` bytes
//! without an error; whatever decodes re-encodes to one line that decodes
//! equal.
#![no_main]

use bytes::BytesMut;
use ferry_proto::signal::{ClientToServer, MAX_FRAME, ServerToClient, decode_frame, encode_frame};
use ferry_proto::{FrameError, PeerToPeer};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

fuzz_target!(|data: &[u8]| {
    check::<ClientToServer>(data);
    check::<ServerToClient>(data);
    check::<PeerToPeer>(data);
    // A mailbox body, once opened, is one JSON document.
    if let Ok(msg) = serde_json::from_slice::<PeerToPeer>(data) {
        let json = serde_json::to_vec(&msg).expect("a decoded message encodes");
        let again: PeerToPeer = serde_json::from_slice(&json).expect("re-encoded message decodes");
        assert_eq!(msg, again);
    }
});

fn check<T>(data: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let whole = decode_all::<T>(data, data.len().max(1));
    // The split point comes from the input, so the fuzzer explores it.
    let step = 1 + usize::from(data.first().copied().unwrap_or(0) % 7);
    assert_eq!(whole, decode_all::<T>(data, 1), "byte-by-byte differs");
    assert_eq!(
        whole,
        decode_all::<T>(data, step),
        "chunks of {step} differ"
    );
}

/// Feeds `data` in chunks of `step`, decoding after each, as a reader
/// would; stops at the first error a reader must close on. Returns what
/// came out, with errors as their kind.
fn decode_all<T>(data: &[u8], step: usize) -> Vec<Result<T, &'static str>>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match decode_frame::<T>(&mut buf) {
                Ok(None) => {
                    assert!(
                        buf.len() < MAX_FRAME,
                        "MAX_FRAME bytes buffered without an error"
                    );
                    break;
                }
                Ok(Some(msg)) => {
                    round_trip(&msg);
                    out.push(Ok(msg));
                }
                Err(FrameError::BadFrame { .. }) => out.push(Err("bad frame")),
                Err(FrameError::FrameTooLarge { .. }) => {
                    out.push(Err("too large"));
                    return out;
                }
                Err(other) => panic!("decode_frame returned an encoder error: {other}"),
            }
        }
    }
    out
}

fn round_trip<T>(msg: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut buf = BytesMut::new();
    match encode_frame(msg, &mut buf) {
        Ok(()) => {}
        // Defaults filled in on decode can make the line longer than the input.
        Err(FrameError::FrameTooLarge { .. }) => {
            assert!(buf.is_empty(), "a refused frame left bytes behind");
            return;
        }
        Err(other) => panic!("a decoded message does not encode: {other}"),
    }
    assert_eq!(
        buf.iter().filter(|&&b| b == b'\n').count(),
        1,
        "one frame, one line"
    );
    assert_eq!(buf.last(), Some(&b'\n'));
    let again = decode_frame::<T>(&mut buf)
        .expect("re-encoded frame decodes")
        .expect("re-encoded frame is complete");
    assert_eq!(*msg, again, "re-encoded frame decodes to something else");
    assert!(buf.is_empty(), "decode left bytes of its own frame behind");
}
