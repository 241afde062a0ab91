//! Hole punching and QUIC over real UDP sockets, on loopback only.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_connect::punch::PunchFailure;
use ferry_connect::{
    ConnectError, DirectListener, FailureReason, Identity, PunchResult, QuicStream, punch,
    quic_connect, tls_acceptor, tls_connector,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;

const KEY: [u8; 32] = [42; 32];
const GENEROUS: Duration = Duration::from_secs(10);

async fn bind() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A UDP port on 127.0.0.1 that nothing listens on.
async fn dead_port() -> SocketAddr {
    let (socket, addr) = bind().await;
    drop(socket);
    addr
}

/// Deterministic pseudo-random bytes (xorshift), so a corrupted or reordered
/// byte would be noticed.
fn pattern(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Punches between two fresh loopback sockets, each offered a dead
/// candidate first.
async fn punched_pair() -> ((UdpSocket, PunchResult), (UdpSocket, PunchResult)) {
    let (a, a_addr) = bind().await;
    let (b, b_addr) = bind().await;
    let dead = dead_port().await;
    let (to_b, to_a) = ([dead, b_addr], [dead, a_addr]);
    let (ra, rb) = tokio::join!(
        punch(&a, KEY, true, &to_b, GENEROUS),
        punch(&b, KEY, false, &to_a, GENEROUS),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.remote, b_addr);
    assert_eq!(rb.remote, a_addr);
    ((a, ra), (b, rb))
}

async fn quic_pair(
    sender_pins: &str,
    receiver_pins: &str,
    sender: &Identity,
    receiver: &Identity,
) -> (
    Result<QuicStream, ConnectError>,
    Result<QuicStream, ConnectError>,
) {
    let ((a, ra), (b, rb)) = punched_pair().await;
    tokio::join!(
        quic_connect(
            a.into_std().unwrap(),
            ra.remote,
            sender,
            sender_pins,
            true,
            None,
            GENEROUS
        ),
        quic_connect(
            b.into_std().unwrap(),
            rb.remote,
            receiver,
            receiver_pins,
            false,
            None,
            GENEROUS
        ),
    )
}

/// Writes `outgoing` and reads everything the peer sends until it finishes,
/// at the same time (so neither side's window can deadlock the other).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: S, outgoing: &[u8]) -> Vec<u8> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = async {
        writer.write_all(outgoing).await.unwrap();
        writer.shutdown().await.unwrap();
    };
    let read = async {
        let mut incoming = Vec::new();
        reader.read_to_end(&mut incoming).await.unwrap();
        incoming
    };
    let ((), incoming) = tokio::join!(write, read);
    incoming
}

#[tokio::test]
async fn loopback_peers_punch_past_a_dead_candidate_and_agree_on_the_pair() {
    let started = Instant::now();
    let ((_a, ra), (_b, rb)) = punched_pair().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(ra.rtt < Duration::from_secs(1));
    assert!(rb.rtt < Duration::from_secs(1));
}

#[tokio::test]
async fn garbage_and_strangers_during_punching_are_ignored() {
    let (a, a_addr) = bind().await;
    let (b, b_addr) = bind().await;
    let (stranger, _) = bind().await;
    let noise = async {
        for _ in 0..20 {
            stranger.send_to(b"not a probe", a_addr).await.unwrap();
            stranger.send_to(&[0x3f; 38], b_addr).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (to_b, to_a) = ([b_addr], [a_addr]);
    let (ra, rb, ()) = tokio::join!(
        punch(&a, KEY, true, &to_b, GENEROUS),
        punch(&b, KEY, false, &to_a, GENEROUS),
        noise,
    );
    assert_eq!(ra.unwrap().remote, b_addr);
    assert_eq!(rb.unwrap().remote, a_addr);
}

#[tokio::test]
async fn wrong_key_never_confirms() {
    let (a, a_addr) = bind().await;
    let (b, b_addr) = bind().await;
    let started = Instant::now();
    let (to_b, to_a) = ([b_addr], [a_addr]);
    let (ra, rb) = tokio::join!(
        punch(&a, KEY, true, &to_b, Duration::from_secs(1)),
        punch(&b, [1; 32], false, &to_a, Duration::from_secs(1)),
    );
    for result in [ra, rb] {
        match result {
            Err(ConnectError::PunchFailed { why, waited }) => {
                assert_eq!(why, PunchFailure::NoAnswer);
                assert!(waited >= Duration::from_secs(1));
            }
            other => panic!("expected a punch failure, got {other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn quic_over_punched_sockets_moves_32_mib_both_ways() {
    let sender = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let (s, r) = quic_pair(
        &receiver.fingerprint(),
        &sender.fingerprint(),
        &sender,
        &receiver,
    )
    .await;
    let (s, r) = (s.unwrap(), r.unwrap());
    let to_receiver = pattern(32 << 20, 1);
    let to_sender = pattern(32 << 20, 2);
    let (got_by_sender, got_by_receiver) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(exchange(s, &to_receiver), exchange(r, &to_sender))
    })
    .await
    .unwrap();
    assert!(got_by_receiver == to_receiver, "receiver got other bytes");
    assert!(got_by_sender == to_sender, "sender got other bytes");
}

#[tokio::test]
async fn last_bytes_arrive_when_the_writer_drops_at_once() {
    let sender = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let (s, r) = quic_pair(
        &receiver.fingerprint(),
        &sender.fingerprint(),
        &sender,
        &receiver,
    )
    .await;
    let (mut s, mut r) = (s.unwrap(), r.unwrap());
    let data = pattern(4 << 20, 3);
    // More than the windows hold before the peer reads, so the reader runs
    // meanwhile.
    let writer = tokio::spawn({
        let data = data.clone();
        async move {
            s.write_all(&data).await.unwrap();
            // No shutdown, no close: dropping must still deliver and finish.
            drop(s);
        }
    });
    let mut got = Vec::new();
    tokio::time::timeout(GENEROUS, r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert!(got == data);
    r.close().await;
}

#[tokio::test]
async fn late_probes_and_garbage_do_not_disturb_quic() {
    let sender = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let ((a, ra), (b, rb)) = punched_pair().await;
    let a_addr = a.local_addr().unwrap();
    let b_addr = b.local_addr().unwrap();
    let (pin_receiver, pin_sender) = (receiver.fingerprint(), sender.fingerprint());
    let (s, r) = tokio::join!(
        quic_connect(
            a.into_std().unwrap(),
            ra.remote,
            &sender,
            &pin_receiver,
            true,
            None,
            GENEROUS
        ),
        quic_connect(
            b.into_std().unwrap(),
            rb.remote,
            &receiver,
            &pin_sender,
            false,
            None,
            GENEROUS
        ),
    );
    let (s, r) = (s.unwrap(), r.unwrap());
    let (stranger, _) = bind().await;
    for len in [1, 38, 100, 1200] {
        stranger.send_to(&vec![0x3f; len], a_addr).await.unwrap();
        stranger.send_to(&vec![0x47; len], b_addr).await.unwrap();
        stranger.send_to(&vec![0xc3; len], b_addr).await.unwrap();
    }
    let one = pattern(1 << 20, 4);
    let two = pattern(1 << 20, 5);
    let (got_two, got_one) = tokio::time::timeout(GENEROUS, async {
        tokio::join!(exchange(s, &one), exchange(r, &two))
    })
    .await
    .unwrap();
    assert!(got_one == one && got_two == two);
}

#[tokio::test]
async fn quic_with_a_wrong_pin_fails_on_both_sides() {
    let sender = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let stranger = Identity::generate().unwrap();

    // The receiver (client) pins someone else.
    let started = Instant::now();
    let (s, r) = quic_pair(
        &receiver.fingerprint(),
        &stranger.fingerprint(),
        &sender,
        &receiver,
    )
    .await;
    assert_quic_failure(r, FailureReason::WrongCertificate);
    assert_quic_failure(s, FailureReason::RejectedByPeer);
    assert!(started.elapsed() < Duration::from_secs(5), "fails fast");

    // The sender (server) pins someone else.
    let (s, r) = quic_pair(
        &stranger.fingerprint(),
        &sender.fingerprint(),
        &sender,
        &receiver,
    )
    .await;
    assert_quic_failure(s, FailureReason::WrongCertificate);
    assert_quic_failure(r, FailureReason::RejectedByPeer);
    assert!(started.elapsed() < Duration::from_secs(10), "fails fast");
}

fn assert_quic_failure(result: Result<QuicStream, ConnectError>, expected: FailureReason) {
    match result {
        Err(ConnectError::Quic { reason, .. }) => assert_eq!(reason, expected),
        Err(other) => panic!("expected {expected}, got {other}"),
        Ok(_) => panic!("expected {expected}, got a connection"),
    }
}

/// Measures, does not assert: `cargo test -p ferry-connect --release --test
/// punch -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement, run by hand"]
async fn throughput_256_mib_quic_versus_tls_over_tcp() {
    const SIZE: usize = 256 << 20;
    let sender = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let data = pattern(SIZE, 9);

    let (s, r) = quic_pair(
        &receiver.fingerprint(),
        &sender.fingerprint(),
        &sender,
        &receiver,
    )
    .await;
    let (mut s, mut r) = (s.unwrap(), r.unwrap());
    let started = Instant::now();
    let write = async {
        s.write_all(&data).await.unwrap();
        s.shutdown().await.unwrap();
        s
    };
    let read = async {
        let mut sink = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            let n = r.read(&mut sink).await.unwrap();
            if n == 0 {
                break total;
            }
            total += n;
        }
    };
    let (s, total) = tokio::join!(write, read);
    let quic = started.elapsed();
    assert_eq!(total, SIZE);
    s.close().await;

    let listener = DirectListener::bind().await.unwrap();
    let acceptor = tls_acceptor(&sender, &receiver.fingerprint()).unwrap();
    let connector = tls_connector(&receiver, &sender.fingerprint()).unwrap();
    let candidates = vec![ferry_connect::Candidate {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, listener.port())),
        transport: ferry_connect::Transport::Tcp,
        kind: ferry_connect::CandidateKind::Host,
        priority: 1,
    }];
    let (accepted, connected) = tokio::join!(
        listener.accept(&acceptor, GENEROUS),
        ferry_connect::connect_first(&candidates, &connector, GENEROUS),
    );
    let (mut tls_s, _) = accepted.unwrap();
    let (mut tls_r, _) = connected.unwrap();
    let started = Instant::now();
    let write = async {
        tls_s.write_all(&data).await.unwrap();
        tls_s.shutdown().await.unwrap();
    };
    let read = async {
        let mut sink = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            let n = tls_r.read(&mut sink).await.unwrap();
            if n == 0 {
                break total;
            }
            total += n;
        }
    };
    let ((), total) = tokio::join!(write, read);
    let tcp = started.elapsed();
    assert_eq!(total, SIZE);

    let rate = |d: Duration| SIZE as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!(
        "256 MiB on loopback: QUIC {:.0} MiB/s ({quic:?}), TLS over TCP {:.0} MiB/s ({tcp:?})",
        rate(quic),
        rate(tcp)
    );
}
