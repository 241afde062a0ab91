//! Chunk hashing micro-benchmarks: [`chunk_hash`] of one [`CHUNK_SIZE`]
//! chunk and [`FileHash`] over a 64 MiB buffer in such chunks (what each
//! side does once per byte), each beside plain BLAKE3 over the same bytes
//! as the baseline: `blake3::hash`, and one `blake3::Hasher::update`
//! (single-threaded, no rayon). Throughput is the bytes hashed. Run with
//! `scripts/bench-micro.sh`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_transfer::{CHUNK_SIZE, FileHash, chunk_hash};

/// The whole-buffer size: large enough that the tree above the chunks counts.
const WHOLE: usize = 64 * 1024 * 1024;

fn one_chunk(c: &mut Criterion) {
    let chunk: Vec<u8> = (0..CHUNK_SIZE).map(|i| (i % 251) as u8).collect();
    let mut group = c.benchmark_group("hash/chunk_256k");
    group.throughput(Throughput::Bytes(chunk.len() as u64));
    // At a later offset, as most chunks of a file are.
    let offset = 8 * CHUNK_SIZE as u64;
    group.bench_function("chunk_hash", |b| {
        b.iter(|| chunk_hash(black_box(offset), black_box(&chunk)).expect("a whole subtree"))
    });
    group.bench_function("blake3_hash", |b| {
        b.iter(|| blake3::hash(black_box(&chunk)))
    });
    group.finish();
}

fn whole_buffer(c: &mut Criterion) {
    let buf: Vec<u8> = (0..WHOLE).map(|i| (i % 251) as u8).collect();
    let mut group = c.benchmark_group("hash/whole_64m");
    group.throughput(Throughput::Bytes(buf.len() as u64));
    group.sample_size(10);
    group.bench_function("file_hash_256k_chunks", |b| {
        b.iter(|| {
            let mut hash = FileHash::new(CHUNK_SIZE).expect("a valid chunk size");
            for chunk in black_box(&buf).chunks(CHUNK_SIZE) {
                hash.update(chunk).expect("chunks in order");
            }
            hash.finalize()
        })
    });
    group.bench_function("blake3_hash", |b| b.iter(|| blake3::hash(black_box(&buf))));
    group.bench_function("blake3_hasher_update", |b| {
        b.iter(|| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(black_box(&buf));
            hasher.finalize()
        })
    });
    group.finish();
}

// criterion_group! makes a `pub fn` without docs: kept in a private module.
mod group {
    use super::*;
    criterion_group!(benches, one_chunk, whole_buffer);
}
criterion_main!(group::benches);
