//! Frame codec micro-benchmarks: encoding and decoding one full data frame
//! (a [`CHUNK_SIZE`] chunk, what every data frame but a file's last
//! carries), and the offer of a folder of 1000 files as a control frame,
//! with the receiver's [`listing::summarize`] of it. Throughput is the
//! frame's bytes. Run with `scripts/bench-micro.sh`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferry_transfer::codec::{self, HASH_LEN, HEADER_LEN, encode_data_header};
use ferry_transfer::{
    CHUNK_SIZE, Control, Entry, EntryKind, Frame, Manifest, Offer, TRANSFER_VERSION, listing,
};

/// Files in the benchmarked offer: a source tree's worth.
const OFFER_FILES: usize = 1000;

fn data_frames(c: &mut Criterion) {
    let chunk = Bytes::from((0..CHUNK_SIZE).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let frame = Frame::Data {
        hash: [7; 32],
        chunk: chunk.clone(),
    };
    let mut encoded = BytesMut::new();
    codec::encode(&frame, &mut encoded);

    let mut group = c.benchmark_group("codec/data_256k");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    let mut dst = BytesMut::with_capacity(encoded.len());
    group.bench_function("encode", |b| {
        b.iter(|| {
            dst.clear();
            codec::encode(black_box(&frame), &mut dst);
            black_box(dst.len())
        })
    });
    // What the sender's writer does: only the header and hash are encoded,
    // the chunk is written from its own buffer. Throughput: those bytes.
    let mut header = BytesMut::with_capacity(64);
    group.throughput(Throughput::Bytes((HEADER_LEN + HASH_LEN) as u64));
    group.bench_function("encode_header", |b| {
        b.iter(|| {
            header.clear();
            encode_data_header(black_box(&[7; 32]), black_box(chunk.len()), &mut header);
            black_box(header.len())
        })
    });
    // Decoding splits the chunk off without copying it: the figure is per
    // frame, whatever its size. The input is copied outside the timing.
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("decode", |b| {
        b.iter_batched(
            || encoded.clone(),
            |mut src| codec::decode(&mut src).expect("a frame we encoded decodes"),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn offer_frames(c: &mut Criterion) {
    let entries = (0..OFFER_FILES)
        .map(|i| Entry {
            path: format!("project/src/module_{:02}/file_{i:04}.rs", i % 50),
            kind: EntryKind::File {
                size: 4096 + i as u64,
                mode: 0o644,
            },
        })
        .collect();
    let manifest = Manifest { entries };
    let frame = Frame::Control(Control::Offer {
        offer: Offer::Files(manifest.clone()),
        version: TRANSFER_VERSION,
    });
    let mut encoded = BytesMut::new();
    codec::encode(&frame, &mut encoded);

    let mut group = c.benchmark_group("codec/offer_1000_files");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    let mut dst = BytesMut::new();
    group.bench_function("encode", |b| {
        b.iter(|| {
            dst.clear();
            codec::encode(black_box(&frame), &mut dst);
            black_box(dst.len())
        })
    });
    group.bench_function("decode", |b| {
        b.iter_batched(
            || encoded.clone(),
            |mut src| codec::decode(&mut src).expect("a frame we encoded decodes"),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("summarize", |b| {
        b.iter(|| listing::summarize(black_box(&manifest)))
    });
    group.finish();
}

// criterion_group! makes a `pub fn` without docs: kept in a private module.
mod group {
    use super::*;
    criterion_group!(benches, data_frames, offer_frames);
}
criterion_main!(group::benches);
