//! Hole-punch probe micro-benchmarks, through the public [`Puncher`] API
//! (the probe codec itself is private): a controlled puncher answering a
//! valid ping (verify its keyed BLAKE3 tag, encode and tag the pong), and
//! rejecting a forged probe (verify only). Throughput is the probe's
//! [`PROBE_LEN`] bytes. Run with `scripts/bench-micro.sh`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_connect::punch::{PROBE_LEN, PunchConfig, Puncher};

fn probes(c: &mut Criterion) {
    let now = Instant::now();
    let sender_addr: SocketAddr = "127.0.0.1:40001".parse().expect("a literal address");
    let receiver_addr: SocketAddr = "127.0.0.1:40002".parse().expect("a literal address");
    let key = [9; 32];
    let config = PunchConfig::default();
    // The controlling side's first ping to the receiver, as it goes out.
    let mut sender = Puncher::new(now, key, true, &[(receiver_addr, 100)], config, 1);
    let ping = sender
        .poll_transmit()
        .expect("a puncher pings at once")
        .payload;
    assert_eq!(ping.len(), PROBE_LEN);
    let mut forged = ping.clone();
    forged[PROBE_LEN - 1] ^= 1;

    let mut receiver = Puncher::new(now, key, false, &[(sender_addr, 100)], config, 2);
    while receiver.poll_transmit().is_some() {}

    let mut group = c.benchmark_group("punch/probe");
    group.throughput(Throughput::Bytes(PROBE_LEN as u64));
    // The same `now` each time: after the first ping the triggered check is
    // "recent", so each iteration is one verify and one pong.
    group.bench_function("answer_ping", |b| {
        b.iter(|| {
            assert!(receiver.handle_datagram(now, sender_addr, black_box(&ping)));
            receiver.poll_transmit()
        })
    });
    group.bench_function("reject_forged", |b| {
        b.iter(|| receiver.handle_datagram(now, sender_addr, black_box(&forged)))
    });
    group.finish();
}

// criterion_group! makes a `pub fn` without docs: kept in a private module.
mod group {
    use super::*;
    criterion_group!(benches, probes);
}
criterion_main!(group::benches);
