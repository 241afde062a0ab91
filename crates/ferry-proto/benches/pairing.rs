//! Signalling micro-benchmarks: one whole SPAKE2 pairing of two
//! [`Pairing`]s (both sides' key exchange and key confirmation, in memory),
//! and [`SecureChannel`] seal and open of a typical [`PeerToPeer::Hello`]
//! (a certificate fingerprint and five candidates), whose throughput is the
//! message's JSON bytes. Run with `scripts/bench-micro.sh`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferry_proto::peer::NetworkHint;
use ferry_proto::{Candidate, CandidateKind, Pairing, PeerToPeer, Role, SecureChannel, Transport};

const CODE: &str = "7-orbit-lantern";

fn pairing(c: &mut Criterion) {
    c.bench_function("pairing/spake2_pair", |b| b.iter(|| pair(black_box(CODE))));
}

fn sealed_channel(c: &mut Criterion) {
    let (mut sender, mut receiver) = pair(CODE);
    let hello = hello();
    let json_len = serde_json::to_vec(&hello)
        .expect("plain data serializes")
        .len();
    let mut group = c.benchmark_group("pairing/hello");
    group.throughput(Throughput::Bytes(json_len as u64));
    group.bench_function("seal", |b| b.iter(|| sender.seal(black_box(&hello))));
    // Every body opens once (replays are refused): seal a fresh one per
    // iteration outside the timing, in sequence order.
    group.bench_function("open", |b| {
        b.iter_batched(
            || sender.seal(&hello),
            |body| receiver.open(&body).expect("a body sealed for us opens"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Two sides paired with `code`: (sender, receiver).
fn pair(code: &str) -> (SecureChannel, SecureChannel) {
    let mut sides = [
        Pairing::new(code, Role::Sender, "ferry/bench"),
        Pairing::new(code, Role::Receiver, "ferry/bench"),
    ];
    let mut channels: [Option<SecureChannel>; 2] = [None, None];
    while channels.iter().any(Option::is_none) {
        let mut moved = false;
        for from in 0..2 {
            while let Some(body) = sides[from].poll_outbound() {
                moved = true;
                let to = 1 - from;
                if let Some(channel) = sides[to].handle_inbound(&body).expect("same code pairs") {
                    channels[to] = Some(channel);
                }
            }
        }
        assert!(moved, "pairing stalled");
    }
    let [Some(sender), Some(receiver)] = channels else {
        unreachable!("both channels are set when the loop ends");
    };
    (sender, receiver)
}

/// A hello as a sender behind a home NAT sends it: host, server-observed,
/// STUN and UPnP candidates.
fn hello() -> PeerToPeer {
    let candidate = |addr: &str, transport, kind, priority| Candidate {
        addr: addr.parse().expect("a literal address"),
        transport,
        kind,
        priority,
    };
    PeerToPeer::Hello {
        cert_fingerprint: "ab".repeat(32),
        candidates: vec![
            candidate(
                "192.168.1.20:40123",
                Transport::Tcp,
                CandidateKind::Host,
                300,
            ),
            candidate(
                "192.168.1.20:40124",
                Transport::Udp,
                CandidateKind::Host,
                300,
            ),
            candidate(
                "203.0.113.7:40123",
                Transport::Tcp,
                CandidateKind::ServerObserved,
                200,
            ),
            candidate(
                "203.0.113.7:51000",
                Transport::Udp,
                CandidateKind::Stun,
                200,
            ),
            candidate(
                "203.0.113.7:40125",
                Transport::Tcp,
                CandidateKind::Upnp,
                250,
            ),
        ],
        network: NetworkHint::default(),
    }
}

// criterion_group! makes a `pub fn` without docs: kept in a private module.
mod group {
    use super::*;
    criterion_group!(benches, pairing, sealed_channel);
}
criterion_main!(group::benches);
