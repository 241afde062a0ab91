//! Direct connections over real sockets on loopback only.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_connect::{
    Candidate, CandidateKind, ConnectError, DirectListener, FailureReason, Identity, Transport,
    connect_first, tls_acceptor, tls_connector,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GENEROUS: Duration = Duration::from_secs(10);

fn candidate(addr: SocketAddr, priority: u32) -> Candidate {
    Candidate {
        addr,
        transport: Transport::Tcp,
        kind: CandidateKind::Host,
        priority,
    }
}

fn loopback(port: u16) -> Candidate {
    candidate(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port), 100)
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

/// A port on 127.0.0.1 that nothing listens on.
async fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

#[tokio::test]
async fn pinned_peers_connect_and_exchange_4_mib_both_ways() {
    let sender = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let listener = DirectListener::bind().await.unwrap();
    let acceptor = tls_acceptor(&sender, &receiver.fingerprint()).unwrap();
    let connector = tls_connector(&receiver, &sender.fingerprint()).unwrap();
    let candidates = vec![loopback(listener.port())];

    let server = async {
        let (stream, peer) = listener.accept(&acceptor, GENEROUS).await.unwrap();
        assert!(peer.ip().is_loopback());
        // Echo everything back until the client closes its side.
        let (mut read, mut write) = tokio::io::split(stream);
        let copied = tokio::io::copy(&mut read, &mut write).await.unwrap();
        write.shutdown().await.unwrap();
        copied
    };
    let client = async {
        let (stream, addr) = connect_first(&candidates, &connector, GENEROUS)
            .await
            .unwrap();
        assert_eq!(addr, candidates[0].addr);
        let data = pattern(4 << 20, 0x1234_5678_9abc_def1);
        let (mut read, mut write) = tokio::io::split(stream);
        let writer = async {
            write.write_all(&data).await.unwrap();
            write.shutdown().await.unwrap();
        };
        let reader = async {
            let mut back = Vec::new();
            read.read_to_end(&mut back).await.unwrap();
            back
        };
        let ((), back) = tokio::join!(writer, reader);
        assert!(back == data, "echoed bytes differ from what was sent");
    };
    let (copied, ()) = tokio::join!(server, client);
    assert_eq!(copied, 4 << 20);
}

#[tokio::test]
async fn wrong_pin_on_the_client_fails_with_a_certificate_error_on_both_sides() {
    let sender = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let stranger = Identity::generate().unwrap();
    let listener = DirectListener::bind().await.unwrap();
    let acceptor = tls_acceptor(&sender, &receiver.fingerprint()).unwrap();
    // The receiver expects someone else's certificate.
    let connector = tls_connector(&receiver, &stranger.fingerprint()).unwrap();
    let candidates = vec![loopback(listener.port())];

    let (accepted, connected) = tokio::join!(
        listener.accept(&acceptor, Duration::from_millis(1500)),
        connect_first(&candidates, &connector, GENEROUS),
    );
    match connected {
        Err(ConnectError::AllFailed { failures }) => {
            assert_eq!(failures.len(), 1);
            assert_eq!(failures[0].reason, FailureReason::WrongCertificate);
        }
        other => panic!("expected a certificate failure, got {other:?}"),
    }
    match accepted {
        Err(ConnectError::AcceptTimeout { rejected, .. }) => assert_eq!(rejected, 1),
        other => panic!("expected the listener to time out, got {other:?}"),
    }
}

#[tokio::test]
async fn client_with_an_unpinned_certificate_is_rejected_and_the_listener_keeps_waiting() {
    let sender = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let impostor = Identity::generate().unwrap();
    let listener = DirectListener::bind().await.unwrap();
    let acceptor = tls_acceptor(&sender, &receiver.fingerprint()).unwrap();
    // The impostor knows the sender's fingerprint but presents its own certificate.
    let connector = tls_connector(&impostor, &sender.fingerprint()).unwrap();
    let candidates = vec![loopback(listener.port())];

    let started = Instant::now();
    let (accepted, connected) = tokio::join!(
        listener.accept(&acceptor, Duration::from_millis(1500)),
        connect_first(&candidates, &connector, GENEROUS),
    );
    match connected {
        Err(ConnectError::AllFailed { failures }) => {
            assert_eq!(failures.len(), 1);
            assert_eq!(failures[0].reason, FailureReason::RejectedByPeer);
        }
        other => panic!("expected the impostor to be rejected, got {other:?}"),
    }
    match accepted {
        Err(ConnectError::AcceptTimeout { rejected, waited }) => {
            assert_eq!(rejected, 1);
            assert_eq!(waited, Duration::from_millis(1500));
        }
        other => panic!("expected the listener to keep waiting and time out, got {other:?}"),
    }
    // It waited for the full timeout instead of giving up at the first rejection.
    assert!(started.elapsed() >= Duration::from_millis(1400));
}

#[tokio::test]
async fn rejected_impostor_does_not_stop_the_real_peer() {
    let sender = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let impostor = Identity::generate().unwrap();
    let listener = DirectListener::bind().await.unwrap();
    let acceptor = tls_acceptor(&sender, &receiver.fingerprint()).unwrap();
    let candidates = vec![loopback(listener.port())];
    let bad = tls_connector(&impostor, &sender.fingerprint()).unwrap();
    let good = tls_connector(&receiver, &sender.fingerprint()).unwrap();

    let server = listener.accept(&acceptor, GENEROUS);
    let clients = async {
        let failed = connect_first(&candidates, &bad, GENEROUS).await;
        assert!(failed.is_err());
        let (mut stream, _) = connect_first(&candidates, &good, GENEROUS).await.unwrap();
        stream.write_all(b"real peer").await.unwrap();
        stream.flush().await.unwrap();
        stream
    };
    let (accepted, _client_stream) = tokio::join!(server, clients);
    let (mut stream, _) = accepted.unwrap();
    let mut buf = [0u8; 9];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"real peer");
}

#[tokio::test]
async fn garbage_and_silent_clients_do_not_stop_the_real_peer() {
    let sender = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let listener = DirectListener::bind().await.unwrap();
    let acceptor = tls_acceptor(&sender, &receiver.fingerprint()).unwrap();
    let connector = tls_connector(&receiver, &sender.fingerprint()).unwrap();
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listener.port());

    let server = listener.accept(&acceptor, GENEROUS);
    let clients = async {
        // A silent client holds its connection open for the whole test: its
        // handshake must not block the others.
        let silent = TcpStream::connect(addr).await.unwrap();
        // A scanner writes junk and then waits.
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03\x01\xff\xff junk")
            .await
            .unwrap();
        let local = {
            let (mut stream, winner) =
                connect_first(&[loopback(listener.port())], &connector, GENEROUS)
                    .await
                    .unwrap();
            assert_eq!(winner, addr);
            stream.write_all(b"ping").await.unwrap();
            stream.flush().await.unwrap();
            let mut reply = [0u8; 4];
            stream.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"pong");
            stream.get_ref().0.local_addr().unwrap()
        };
        (silent, garbage, local)
    };
    let server = async {
        let (mut stream, peer) = server.await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        stream.write_all(b"pong").await.unwrap();
        stream.flush().await.unwrap();
        (stream, peer)
    };
    let started = Instant::now();
    let ((_stream, peer), (_silent, _garbage, client_local)) = tokio::join!(server, clients);
    // The accepted connection is the real peer's, not the junk one's.
    assert_eq!(peer, client_local);
    // And it did not wait for the silent client's handshake timeout.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn dead_candidate_is_skipped_for_the_live_one() {
    let sender = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let listener = DirectListener::bind().await.unwrap();
    let acceptor = tls_acceptor(&sender, &receiver.fingerprint()).unwrap();
    let connector = tls_connector(&receiver, &sender.fingerprint()).unwrap();
    let dead = dead_port().await;
    let live = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listener.port());
    // The dead one has the better priority, so it is tried first.
    let candidates = vec![candidate(live, 10), candidate(dead, 1000)];

    let (accepted, connected) = tokio::join!(
        listener.accept(&acceptor, GENEROUS),
        connect_first(&candidates, &connector, GENEROUS),
    );
    let (_server_stream, _) = accepted.unwrap();
    let (_client_stream, winner) = connected.unwrap();
    assert_eq!(winner, live);
}

#[tokio::test]
async fn all_dead_candidates_are_listed_in_the_error() {
    let receiver = Identity::generate().unwrap();
    let sender = Identity::generate().unwrap();
    let connector = tls_connector(&receiver, &sender.fingerprint()).unwrap();
    let first = dead_port().await;
    let second = dead_port().await;
    let candidates = vec![candidate(first, 200), candidate(second, 100)];

    let err = connect_first(&candidates, &connector, GENEROUS)
        .await
        .unwrap_err();
    let text = err.to_string();
    match &err {
        ConnectError::AllFailed { failures } => {
            assert_eq!(failures.len(), 2);
            assert_eq!(failures[0].addr, first);
            assert_eq!(failures[1].addr, second);
            assert!(
                failures.iter().all(|f| f.reason == FailureReason::Refused),
                "{text}"
            );
        }
        other => panic!("expected AllFailed, got {other:?}"),
    }
    assert!(text.contains(&format!("{first} refused")), "{text}");
    assert!(text.contains(&format!("{second} refused")), "{text}");
    assert!(text.contains("tried 2 addresses"), "{text}");
}

#[tokio::test]
async fn without_tcp_candidates_there_is_nothing_to_try() {
    let a = Identity::generate().unwrap();
    let b = Identity::generate().unwrap();
    let connector = tls_connector(&a, &b.fingerprint()).unwrap();
    let udp_only = Candidate {
        addr: "127.0.0.1:9".parse().unwrap(),
        transport: Transport::Udp,
        kind: CandidateKind::Host,
        priority: 1,
    };
    let err = connect_first(&[udp_only], &connector, GENEROUS)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::NoCandidates), "{err}");
}

#[tokio::test]
async fn several_paths_to_one_listener_end_on_the_same_connection() {
    // 127.0.0.1, .2 and .3 all reach the listener on 0.0.0.0: both sides must
    // agree on one connection, whichever handshake finishes first.
    for round in 0..5 {
        let sender = Identity::generate().unwrap();
        let receiver = Identity::generate().unwrap();
        let listener = DirectListener::bind().await.unwrap();
        let acceptor = tls_acceptor(&sender, &receiver.fingerprint()).unwrap();
        let connector = tls_connector(&receiver, &sender.fingerprint()).unwrap();
        let port = listener.port();
        let candidates: Vec<Candidate> = (1..=3)
            .map(|last| {
                candidate(
                    SocketAddr::new(Ipv4Addr::new(127, 0, 0, last).into(), port),
                    5,
                )
            })
            .collect();

        let (accepted, connected) = tokio::join!(
            listener.accept(&acceptor, GENEROUS),
            connect_first(&candidates, &connector, GENEROUS),
        );
        let (mut server, server_peer) = accepted.unwrap();
        let (mut client, _) = connected.unwrap();
        assert_eq!(
            client.get_ref().0.local_addr().unwrap(),
            server_peer,
            "round {round}: the two sides chose different connections"
        );
        client.write_all(b"over").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"over");
    }
}

#[tokio::test]
async fn accept_without_a_peer_times_out() {
    let a = Identity::generate().unwrap();
    let b = Identity::generate().unwrap();
    let listener = DirectListener::bind().await.unwrap();
    let acceptor = tls_acceptor(&a, &b.fingerprint()).unwrap();
    let started = Instant::now();
    let err = listener
        .accept(&acceptor, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::AcceptTimeout { rejected: 0, .. }),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        err.to_string().contains("did not connect directly"),
        "{err}"
    );
}

#[tokio::test]
async fn candidates_list_host_addresses_with_loopback_last() {
    let listener = DirectListener::bind().await.unwrap();
    let candidates = listener.candidates();
    let port = listener.port();
    assert_ne!(port, 0);
    let v4_loopback = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    assert!(
        candidates.iter().any(|c| c.addr == v4_loopback),
        "{candidates:?}"
    );
    for c in &candidates {
        assert_eq!(c.transport, Transport::Tcp);
        assert_eq!(c.kind, CandidateKind::Host);
        let expected_port = if c.addr.is_ipv4() {
            port
        } else {
            listener.port_v6().unwrap()
        };
        assert_eq!(c.addr.port(), expected_port);
        if let IpAddr::V6(v6) = c.addr.ip() {
            assert_ne!(v6.segments()[0] & 0xffc0, 0xfe80, "link-local offered");
        }
    }
    // Best first, loopback only at the end.
    assert!(
        candidates
            .windows(2)
            .all(|w| w[0].priority >= w[1].priority)
    );
    let first_loopback = candidates
        .iter()
        .position(|c| c.addr.ip().is_loopback())
        .unwrap();
    assert!(
        candidates[first_loopback..]
            .iter()
            .all(|c| c.addr.ip().is_loopback())
    );
}

#[tokio::test]
async fn ipv6_loopback_works_when_available() {
    let listener = DirectListener::bind().await.unwrap();
    let Some(port_v6) = listener.port_v6() else {
        eprintln!("no IPv6 listener on this host; skipping");
        return;
    };
    if std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_err() {
        eprintln!("no ::1 on this host; skipping");
        return;
    }
    let sender = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let acceptor = tls_acceptor(&sender, &receiver.fingerprint()).unwrap();
    let connector = tls_connector(&receiver, &sender.fingerprint()).unwrap();
    let v6 = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port_v6);
    let candidates = [candidate(v6, 1)];
    let (accepted, connected) = tokio::join!(
        listener.accept(&acceptor, GENEROUS),
        connect_first(&candidates, &connector, GENEROUS),
    );
    let (_, peer) = accepted.unwrap();
    let (_, winner) = connected.unwrap();
    assert!(peer.is_ipv6());
    assert_eq!(winner, v6);
}

/// Rough one-way throughput over loopback: `cargo test -p ferry-connect
/// --release -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn throughput_256_mib_over_loopback() {
    let sender = Identity::generate().unwrap();
    let receiver = Identity::generate().unwrap();
    let listener = DirectListener::bind().await.unwrap();
    let acceptor = tls_acceptor(&sender, &receiver.fingerprint()).unwrap();
    let connector = tls_connector(&receiver, &sender.fingerprint()).unwrap();
    let candidates = vec![loopback(listener.port())];
    let (accepted, connected) = tokio::join!(
        listener.accept(&acceptor, GENEROUS),
        connect_first(&candidates, &connector, GENEROUS),
    );
    let (mut server, _) = accepted.unwrap();
    let (mut client, _) = connected.unwrap();
    const TOTAL: usize = 256 << 20;
    let chunk = pattern(1 << 20, 7);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..TOTAL / chunk.len() {
            server.write_all(&chunk).await.unwrap();
        }
        server.shutdown().await.unwrap();
    });
    let mut buf = vec![0u8; 256 << 10];
    let mut received = 0usize;
    loop {
        let n = client.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        received += n;
    }
    writer.await.unwrap();
    assert_eq!(received, TOTAL);
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("256 MiB in {seconds:.2} s = {:.0} MiB/s", 256.0 / seconds);
}
