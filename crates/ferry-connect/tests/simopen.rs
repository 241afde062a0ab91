//! TCP simultaneous open over real sockets on loopback only (127.x).
//!
//! A filtering NAT drops SYNs it did not see a reason for. On loopback the
//! same behaviour comes from a listener on the port whose accept queue is
//! full ([`Filter`]): the kernel silently drops unsolicited SYNs to the port,
//! while a SYN matching one of our own connecting sockets still reaches it.
//! Without the filter the kernel answers with RST (connection refused), as a
//! host or NAT that rejects does.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ferry_connect::simopen::{ATTEMPT_TIMEOUT, RETRY_INTERVAL};
use ferry_connect::{
    ConnectError, FailureReason, Identity, bind_reusable, connect_from, simultaneous_open,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsStream;

const GENEROUS: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_secs(6);

/// Deterministic pseudo-random bytes (xorshift).
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

/// A little "rendezvous server" and one side's long-lived signalling
/// connection to it, opened from a shareable port on `ip`.
struct Signalling {
    client: TcpStream,
    server_side: TcpStream,
    _server: TcpListener,
}

impl Signalling {
    async fn open(ip: &str) -> Signalling {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let local: SocketAddr = format!("{ip}:0").parse().unwrap();
        let (client, accepted) =
            tokio::join!(connect_from(local, server_addr, GENEROUS), server.accept());
        let client = client.unwrap();
        let (server_side, observed) = accepted.unwrap();
        // What the server observed is what the peer will be told.
        assert_eq!(observed, client.local_addr().unwrap());
        Signalling {
            client,
            server_side,
            _server: server,
        }
    }

    fn local(&self) -> SocketAddr {
        self.client.local_addr().unwrap()
    }

    /// Proves the signalling connection still works both ways.
    async fn still_works(&mut self) {
        self.client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        self.server_side.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        self.server_side.write_all(b"pong").await.unwrap();
        self.client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }
}

/// Makes the kernel drop (not refuse) unsolicited SYNs to `local`, like a
/// filtering NAT: a listener on the shared port whose accept queue (length
/// 0, plus the one connection the kernel always allows) is full.
struct Filter {
    _listener: std::net::TcpListener,
    _queued: std::net::TcpStream,
}

fn filter(local: SocketAddr) -> Filter {
    let socket = bind_reusable(local).unwrap();
    socket.listen(0).unwrap();
    let listener = std::net::TcpListener::from(socket);
    let queued = std::net::TcpStream::connect_timeout(&local, GENEROUS).unwrap();
    Filter {
        _listener: listener,
        _queued: queued,
    }
}

struct Peer {
    id: Identity,
    signalling: Signalling,
}

async fn peer(ip: &str) -> Peer {
    Peer {
        id: Identity::generate().unwrap(),
        signalling: Signalling::open(ip).await,
    }
}

fn tcp_addrs(stream: &TlsStream<TcpStream>) -> (SocketAddr, SocketAddr) {
    let tcp = stream.get_ref().0;
    (tcp.local_addr().unwrap(), tcp.peer_addr().unwrap())
}

/// Each side writes `len` bytes and reads the other's, at the same time.
async fn exchange(a: TlsStream<TcpStream>, b: TlsStream<TcpStream>, len: usize) {
    async fn run(stream: TlsStream<TcpStream>, send: Vec<u8>, expect: Vec<u8>) {
        let (mut read, mut write) = tokio::io::split(stream);
        let writer = async {
            write.write_all(&send).await.unwrap();
            write.shutdown().await.unwrap();
        };
        let reader = async {
            let mut got = Vec::new();
            read.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(writer, reader);
        assert!(got == expect, "received bytes differ from what was sent");
    }
    let from_a = pattern(len, 0x1234_5678_9abc_def1);
    let from_b = pattern(len, 0x0fed_cba9_8765_4321);
    tokio::time::timeout(GENEROUS, async {
        tokio::join!(
            run(a, from_a.clone(), from_b.clone()),
            run(b, from_b, from_a)
        )
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn filter_drops_unsolicited_syns_instead_of_refusing() {
    // The test fixture itself: without it, the other tests would not
    // emulate a filtering NAT.
    let side = Signalling::open("127.0.0.4").await;
    let _filter = filter(side.local());
    let attempt =
        tokio::time::timeout(Duration::from_millis(400), TcpStream::connect(side.local())).await;
    assert!(attempt.is_err(), "expected a silent drop, got {attempt:?}");
}

#[tokio::test]
async fn both_sides_connect_at_once_on_one_tcp_connection_and_move_4_mib_each_way() {
    let mut sender = peer("127.0.0.2").await;
    let mut receiver = peer("127.0.0.3").await;
    let (s_addr, r_addr) = (sender.signalling.local(), receiver.signalling.local());
    let _f1 = filter(s_addr);
    let _f2 = filter(r_addr);
    let start = Instant::now() + Duration::from_millis(100);
    let (s_pin, r_pin) = (receiver.id.fingerprint(), sender.id.fingerprint());

    let (s, r) = tokio::join!(
        simultaneous_open(s_addr, r_addr, start, true, &sender.id, &s_pin, WINDOW),
        simultaneous_open(r_addr, s_addr, start, false, &receiver.id, &r_pin, WINDOW),
    );
    let (s_stream, s_peer) = s.unwrap();
    let (r_stream, r_peer) = r.unwrap();
    assert_eq!(s_peer, r_addr);
    assert_eq!(r_peer, s_addr);
    // One TCP connection, between the two signalling ports.
    assert_eq!(tcp_addrs(&s_stream), (s_addr, r_addr));
    assert_eq!(tcp_addrs(&r_stream), (r_addr, s_addr));
    // TLS roles follow the ferry roles.
    assert!(matches!(s_stream, TlsStream::Server(_)));
    assert!(matches!(r_stream, TlsStream::Client(_)));

    exchange(s_stream, r_stream, 4 << 20).await;
    // The signalling connections from the same ports were not disturbed.
    sender.signalling.still_works().await;
    receiver.signalling.still_works().await;
}

#[tokio::test]
async fn late_peer_is_caught_by_retries_after_refusals() {
    let early = peer("127.0.0.5").await;
    let late = peer("127.0.0.6").await;
    let (e_addr, l_addr) = (early.signalling.local(), late.signalling.local());
    // The early side filters; the late side's host refuses while it has no
    // connecting socket, so the early side's first attempts are refused.
    let _filter = filter(e_addr);
    let skew = Duration::from_millis(300);
    let start = Instant::now() + Duration::from_millis(50);

    let early_side = async {
        let result = simultaneous_open(
            e_addr,
            l_addr,
            start,
            false,
            &early.id,
            &late.id.fingerprint(),
            WINDOW,
        )
        .await;
        (result, start.elapsed())
    };
    let late_side = async {
        tokio::time::sleep_until(start + skew).await;
        simultaneous_open(
            l_addr,
            e_addr,
            start + skew,
            true,
            &late.id,
            &early.id.fingerprint(),
            WINDOW,
        )
        .await
    };
    let ((early_result, early_took), late_result) = tokio::join!(early_side, late_side);
    let (e_stream, _) = early_result.unwrap();
    let (l_stream, _) = late_result.unwrap();
    // Its first attempt was refused at once, so it connected on a retry,
    // no earlier than the late side started.
    assert!(early_took >= skew, "connected after only {early_took:?}");
    assert!(
        early_took < skew + ATTEMPT_TIMEOUT,
        "took {early_took:?}; retries are {RETRY_INTERVAL:?} apart"
    );
    assert_eq!(tcp_addrs(&e_stream), (e_addr, l_addr));
    assert_eq!(tcp_addrs(&l_stream), (l_addr, e_addr));
    exchange(l_stream, e_stream, 64 << 10).await;
}

#[tokio::test]
async fn wrong_pin_fails_on_both_sides_with_certificate_errors() {
    let sender = peer("127.0.0.7").await;
    let receiver = peer("127.0.0.8").await;
    let stranger = Identity::generate().unwrap();
    let (s_addr, r_addr) = (sender.signalling.local(), receiver.signalling.local());
    let _f1 = filter(s_addr);
    let _f2 = filter(r_addr);
    let start = Instant::now() + Duration::from_millis(50);
    let (s_pin, wrong_pin) = (receiver.id.fingerprint(), stranger.fingerprint());

    let (s, r) = tokio::join!(
        simultaneous_open(s_addr, r_addr, start, true, &sender.id, &s_pin, WINDOW),
        // The receiver pins someone else.
        simultaneous_open(
            r_addr,
            s_addr,
            start,
            false,
            &receiver.id,
            &wrong_pin,
            WINDOW
        ),
    );
    match r {
        Err(ConnectError::SimultaneousOpenFailed { attempts, .. }) => {
            assert_eq!(attempts.last(), Some(&FailureReason::WrongCertificate));
        }
        other => panic!("expected a certificate failure, got {other:?}"),
    }
    match s {
        Err(ref error @ ConnectError::SimultaneousOpenFailed { ref attempts, .. }) => {
            assert_eq!(attempts.last(), Some(&FailureReason::RejectedByPeer));
            assert!(error.to_string().contains("new code"), "{error}");
        }
        other => panic!("expected the peer to reject us, got {other:?}"),
    }
}

#[tokio::test]
async fn nobody_on_the_other_side_fails_after_the_deadline_listing_the_attempts() {
    let me = peer("127.0.0.9").await;
    let local = me.signalling.local();
    // A port on another loopback address that nothing uses: refused.
    let nobody = std::net::TcpListener::bind("127.0.0.10:0").unwrap();
    let remote = nobody.local_addr().unwrap();
    drop(nobody);
    let other = Identity::generate().unwrap();
    let window = Duration::from_millis(1200);

    let start = Instant::now();
    let result = simultaneous_open(
        local,
        remote,
        start,
        true,
        &me.id,
        &other.fingerprint(),
        window,
    )
    .await;
    let took = start.elapsed();
    match result {
        Err(ref error @ ConnectError::SimultaneousOpenFailed { ref attempts, .. }) => {
            // One attempt per retry interval: 0, 250, ..., 1000 ms.
            assert_eq!(attempts, &vec![FailureReason::Refused; 5], "{error}");
            let text = error.to_string();
            assert!(
                text.contains(&format!("from {local} to {remote}")),
                "{text}"
            );
            assert!(text.contains("5 attempts (refused x5)"), "{text}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(1000),
        "gave up after {took:?}"
    );
    assert!(took < window + Duration::from_millis(500), "took {took:?}");
}

#[tokio::test]
async fn silent_peer_attempts_time_out_and_are_replaced() {
    // The remote drops SYNs (filtered, nobody connecting): each attempt
    // waits ATTEMPT_TIMEOUT, then a fresh socket tries again.
    let me = peer("127.0.0.11").await;
    let silent = Signalling::open("127.0.0.12").await;
    let _filter = filter(silent.local());
    let other = Identity::generate().unwrap();
    let window = ATTEMPT_TIMEOUT + Duration::from_millis(500);

    let start = Instant::now();
    let result = simultaneous_open(
        me.signalling.local(),
        silent.local(),
        start,
        false,
        &me.id,
        &other.fingerprint(),
        window,
    )
    .await;
    match result {
        Err(ConnectError::SimultaneousOpenFailed {
            attempts, waited, ..
        }) => {
            assert_eq!(
                attempts,
                vec![FailureReason::TimedOut, FailureReason::TimedOut]
            );
            assert!(waited >= window, "{waited:?}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn port_held_without_reuse_is_a_clear_error_at_once() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Signalling opened the ordinary way: its port cannot be shared.
    let plain = TcpStream::connect(server.local_addr().unwrap())
        .await
        .unwrap();
    let local = plain.local_addr().unwrap();
    let me = Identity::generate().unwrap();
    let other = Identity::generate().unwrap();

    let started = Instant::now();
    let result = simultaneous_open(
        local,
        "127.0.0.1:9".parse().unwrap(),
        Instant::now() + Duration::from_secs(5),
        true,
        &me,
        &other.fingerprint(),
        WINDOW,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    match result {
        Err(error @ ConnectError::SimultaneousOpenBind { .. }) => {
            assert!(error.to_string().contains("connect_from"), "{error}");
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
}
