//! The relay on the rendezvous listener, over real sockets on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ferry_proto::signal::ErrorCode;
use ferry_relay::{RelayConfig, RelayError, RelayServer, TokenKey, relay_connect};
use ferry_rendezvous::{Config, ServerConfig, SignalClient, SignalEvent, serve, serve_with_relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    relay: Option<RelayServer>,
    _stop: oneshot::Sender<()>,
    _task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(relay: Option<RelayConfig>) -> Server {
        Self::start_with(relay, ServerConfig::default()).await
    }

    async fn start_with(relay: Option<RelayConfig>, config: ServerConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let relay =
            relay.map(|config| RelayServer::new(config, TokenKey::from_random(rand::random())));
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve_with_relay(listener, config, relay.clone(), shutdown));
        Server {
            addr,
            relay,
            _stop: stop,
            _task: task,
        }
    }

    fn stats(&self) -> ferry_relay::Stats {
        self.relay.as_ref().unwrap().stats()
    }

    /// Pairs two signalling clients; returns them and the relay token both got.
    async fn pair(&self) -> (SignalClient, SignalClient, [u8; 32]) {
        let server = self.addr.to_string();
        let (mut sender, _) = SignalClient::connect(&server).await.unwrap();
        let (mut receiver, _) = SignalClient::connect(&server).await.unwrap();
        let nameplate = sender.allocate().await.unwrap();
        assert_eq!(sender.relay_token(), None);
        receiver.claim(nameplate).await.unwrap();
        let joined = timeout(WAIT, sender.recv()).await.unwrap().unwrap();
        assert_eq!(joined, SignalEvent::PeerJoined);
        assert_eq!(receiver.relay_token(), None, "no token before pairing");
        let (a, b) = tokio::join!(sender.request_relay_token(), receiver.request_relay_token());
        assert_eq!(a.unwrap(), b.unwrap());
        let token = receiver
            .relay_token()
            .expect("the claimer got a relay token");
        assert_eq!(
            sender.relay_token(),
            Some(token),
            "both sides got the same token"
        );
        (sender, receiver, token)
    }

    async fn relay_pair(&self, token: [u8; 32]) -> (TcpStream, TcpStream) {
        let (a, b) = tokio::join!(
            relay_connect(self.addr, &token, WAIT),
            relay_connect(self.addr, &token, WAIT)
        );
        (a.unwrap(), b.unwrap())
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    // xorshift: cheap, incompressible enough, and different per seed.
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Sends `data` on `stream` while reading `expect_len` bytes from it.
async fn exchange(stream: TcpStream, data: Vec<u8>, expect_len: usize) -> Vec<u8> {
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&data).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut received = Vec::with_capacity(expect_len);
    read.read_to_end(&mut received).await.unwrap();
    writer.await.unwrap();
    received
}

async fn ping_pong(a: &mut TcpStream, b: &mut TcpStream, text: &[u8]) {
    a.write_all(text).await.unwrap();
    let mut got = vec![0u8; text.len()];
    timeout(WAIT, b.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, text);
    b.write_all(text).await.unwrap();
    timeout(WAIT, a.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, text);
}

fn refused_code(result: Result<TcpStream, RelayError>) -> (ErrorCode, String) {
    match result {
        Err(RelayError::Refused { code, message, .. }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn pair_exchanges_32_mib_both_ways_through_the_relay() {
    let server = Server::start(Some(RelayConfig::default())).await;
    let (_sender, _receiver, token) = server.pair().await;
    let (a, b) = server.relay_pair(token).await;
    const LEN: usize = 32 << 20;
    let to_b = pattern(1, LEN);
    let to_a = pattern(2, LEN);
    let (at_a, at_b) = timeout(Duration::from_secs(120), async {
        tokio::join!(
            exchange(a, to_b.clone(), LEN),
            exchange(b, to_a.clone(), LEN)
        )
    })
    .await
    .expect("32 MiB each way within 2 minutes");
    assert_eq!(at_b.len(), LEN);
    assert!(at_b == to_b, "bytes A sent arrived intact at B");
    assert_eq!(at_a.len(), LEN);
    assert!(at_a == to_a, "bytes B sent arrived intact at A");
    let stats = server.stats();
    assert_eq!(stats.paired, 1);
    assert_eq!(stats.refused(), 0);
}

#[tokio::test]
async fn bogus_reused_and_expired_tokens_are_refused_while_the_pair_works() {
    // Expiry is in whole seconds of wall-clock time.
    let ttl = Duration::from_secs(1);
    let config = ServerConfig {
        rendezvous: Config {
            relay_token_ttl: ttl,
            ..Config::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::start_with(Some(RelayConfig::default()), config).await;
    let (_s1, _r1, token) = server.pair().await;
    let (mut a, mut b) = server.relay_pair(token).await;
    ping_pong(&mut a, &mut b, b"before").await;

    let (code, message) = refused_code(relay_connect(server.addr, &[7u8; 32], WAIT).await);
    assert_eq!(code, ErrorCode::RelayRefused);
    assert!(message.contains("unknown relay token"), "{message}");

    let (code, message) = refused_code(relay_connect(server.addr, &token, WAIT).await);
    assert_eq!(code, ErrorCode::RelayRefused);
    assert!(message.contains("already used"), "{message}");

    // A second nameplate's token, presented after its TTL.
    let (_s2, _r2, late) = server.pair().await;
    tokio::time::sleep(ttl + Duration::from_millis(1100)).await;
    let (code, message) = refused_code(relay_connect(server.addr, &late, WAIT).await);
    assert_eq!(code, ErrorCode::RelayRefused);
    assert!(message.contains("expired"), "{message}");

    // The genuine pair did not notice any of it.
    ping_pong(&mut a, &mut b, b"after").await;
    let stats = server.stats();
    assert_eq!(
        (
            stats.unknown_token,
            stats.reused,
            stats.expired,
            stats.paired
        ),
        (1, 1, 1, 1)
    );
}

#[tokio::test]
async fn unpaired_connection_is_dropped_after_the_wait_timeout() {
    let server = Server::start(Some(RelayConfig {
        wait_timeout: Duration::from_millis(500),
        ..RelayConfig::default()
    }))
    .await;
    let (_sender, _receiver, token) = server.pair().await;
    let started = Instant::now();
    let (code, message) = refused_code(relay_connect(server.addr, &token, WAIT).await);
    let waited = started.elapsed();
    assert_eq!(code, ErrorCode::RelayTimeout);
    assert!(message.contains("did not come"), "{message}");
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(server.stats().wait_timeout, 1);
    // The token is still good for both sides afterwards.
    let (mut a, mut b) = server.relay_pair(token).await;
    ping_pong(&mut a, &mut b, b"late but fine").await;
}

#[tokio::test]
async fn per_ip_limit_refuses_the_excess() {
    let server = Server::start(Some(RelayConfig {
        max_connections_per_ip: 2,
        ..RelayConfig::default()
    }))
    .await;
    let (_s1, _r1, first) = server.pair().await;
    let (_s2, _r2, second) = server.pair().await;
    let (mut a, mut b) = server.relay_pair(first).await;
    let (code, message) = refused_code(relay_connect(server.addr, &second, WAIT).await);
    assert_eq!(code, ErrorCode::ServerFull);
    assert!(message.contains("too many relay connections"), "{message}");
    assert_eq!(server.stats().per_ip_limit, 1);
    ping_pong(&mut a, &mut b, b"still here").await;
    // Once the pair is over, the address has room again.
    drop((a, b));
    let deadline = Instant::now() + WAIT;
    loop {
        let attempt = tokio::join!(
            relay_connect(server.addr, &second, WAIT),
            relay_connect(server.addr, &second, WAIT)
        );
        match attempt {
            (Ok(mut c), Ok(mut d)) => {
                ping_pong(&mut c, &mut d, b"room again").await;
                break;
            }
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("no room after the pair ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn bytes_sent_before_relay_paired_are_delivered() {
    let server = Server::start(Some(RelayConfig::default())).await;
    let (_sender, _receiver, token) = server.pair().await;
    // A careless client: token line and payload in one write.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let first = format!(
        "{{\"type\":\"relay\",\"protocol\":1,\"token\":\"{}\"}}\nearly bytes",
        ferry_relay::token_to_hex(&token)
    );
    raw.write_all(first.as_bytes()).await.unwrap();
    let mut other = relay_connect(server.addr, &token, WAIT).await.unwrap();
    let mut got = [0u8; 11];
    timeout(WAIT, other.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"early bytes");
    // And the careless client sees both control lines, then the pipe.
    other.write_all(b"hi").await.unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"hi") {
        timeout(WAIT, raw.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        seen.push(byte[0]);
    }
    assert_eq!(
        String::from_utf8(seen).unwrap(),
        "{\"type\":\"relay-waiting\"}\n\
         {\"type\":\"relay-paired\",\"max_bytes\":68719476736,\"max_secs\":86400}\nhi"
    );
}

#[tokio::test]
async fn without_a_relay_no_token_is_issued_and_relay_frames_are_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, ServerConfig::default(), async {
        let _ = stopped.await;
    }));
    let server = addr.to_string();
    let (mut sender, _) = SignalClient::connect(&server).await.unwrap();
    let (mut receiver, _) = SignalClient::connect(&server).await.unwrap();
    let nameplate = sender.allocate().await.unwrap();
    receiver.claim(nameplate).await.unwrap();
    assert_eq!(
        timeout(WAIT, sender.recv()).await.unwrap().unwrap(),
        SignalEvent::PeerJoined
    );
    let (a, b) = tokio::join!(sender.request_relay_token(), receiver.request_relay_token());
    assert_eq!(a.unwrap(), None);
    assert_eq!(b.unwrap(), None);
    assert_eq!(receiver.relay_token(), None);
    assert_eq!(sender.relay_token(), None);
    let (code, message) = refused_code(relay_connect(addr, &[1u8; 32], WAIT).await);
    assert_eq!(code, ErrorCode::RelayRefused);
    assert!(message.contains("no relay"), "{message}");
}

#[tokio::test]
async fn serve_config_relay_enables_the_relay() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = oneshot::channel::<()>();
    let config = ServerConfig {
        relay: Some(RelayConfig::default()),
        ..ServerConfig::default()
    };
    tokio::spawn(serve(listener, config, async {
        let _ = stopped.await;
    }));
    let server = addr.to_string();
    let (mut sender, _) = SignalClient::connect(&server).await.unwrap();
    let (mut receiver, _) = SignalClient::connect(&server).await.unwrap();
    let nameplate = sender.allocate().await.unwrap();
    receiver.claim(nameplate).await.unwrap();
    let (_, token) = tokio::join!(sender.request_relay_token(), receiver.request_relay_token());
    let token = token.unwrap().unwrap();
    let (a, b) = tokio::join!(
        relay_connect(addr, &token, WAIT),
        relay_connect(addr, &token, WAIT)
    );
    ping_pong(&mut a.unwrap(), &mut b.unwrap(), b"via serve()").await;
}

#[tokio::test]
async fn relay_on_another_listener_pairs_with_tokens_from_the_rendezvous() {
    // The relay on its own listener, as `ferry relay` runs it, sharing only
    // the secret with the rendezvous server, which advertises it.
    let secret = "0123456789abcdef".repeat(4);
    let relay_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay_listener.local_addr().unwrap();
    let relay = RelayServer::new(RelayConfig::default(), TokenKey::from_hex(&secret).unwrap());
    let standalone = relay.clone();
    tokio::spawn(async move {
        standalone
            .serve(relay_listener, std::future::pending())
            .await
    });
    let config = ServerConfig {
        rendezvous: Config {
            relay_key: Some(TokenKey::from_hex(&secret).unwrap()),
            relay_addr: Some(format!("localhost:{}", relay_addr.port())),
            ..Config::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::start_with(None, config).await;
    let name = server.addr.to_string();
    let (mut sender, welcome) = SignalClient::connect(&name).await.unwrap();
    assert_eq!(welcome.relay_addr.port(), relay_addr.port(), "{welcome:?}");
    assert!(welcome.relay_addr.ip().is_loopback(), "{welcome:?}");
    assert_ne!(welcome.relay_addr, welcome.server_addr);
    let (mut receiver, _) = SignalClient::connect(&name).await.unwrap();
    let nameplate = sender.allocate().await.unwrap();
    receiver.claim(nameplate).await.unwrap();
    timeout(WAIT, sender.recv()).await.unwrap().unwrap();
    let (a, b) = tokio::join!(sender.request_relay_token(), receiver.request_relay_token());
    a.unwrap();
    b.unwrap();
    let token = receiver.relay_token().expect("tokens for the remote relay");
    assert_eq!(sender.relay_token(), Some(token));
    // The rendezvous listener itself relays nothing.
    let (code, _) = refused_code(relay_connect(server.addr, &token, WAIT).await);
    assert_eq!(code, ErrorCode::RelayRefused);
    let (a, b) = tokio::join!(
        relay_connect(welcome.relay_addr, &token, WAIT),
        relay_connect(welcome.relay_addr, &token, WAIT)
    );
    ping_pong(&mut a.unwrap(), &mut b.unwrap(), b"across hosts").await;
    assert_eq!(relay.stats().paired, 1);
}

#[tokio::test]
async fn welcome_with_the_server_address_when_the_relay_is_here() {
    let server = Server::start(Some(RelayConfig::default())).await;
    let (_client, welcome) = SignalClient::connect(&server.addr.to_string())
        .await
        .unwrap();
    assert_eq!(welcome.relay_addr, server.addr);
}

#[tokio::test]
async fn asking_for_the_relay_token_stops_waiting_when_the_peer_leaves() {
    let server = Server::start(Some(RelayConfig::default())).await;
    let addr = server.addr.to_string();
    let (mut sender, _) = SignalClient::connect(&addr).await.unwrap();
    let (mut receiver, _) = SignalClient::connect(&addr).await.unwrap();
    let nameplate = sender.allocate().await.unwrap();
    receiver.claim(nameplate).await.unwrap();
    assert_eq!(
        timeout(WAIT, sender.recv()).await.unwrap().unwrap(),
        SignalEvent::PeerJoined
    );
    // The receiver goes before asking: the sender's request ends at once
    // (not after the 10 s request timeout), without a token, and the
    // departure is what recv says next.
    receiver.release(None).await.unwrap();
    let asked = Instant::now();
    let token = timeout(WAIT, sender.request_relay_token()).await.unwrap();
    assert_eq!(token.unwrap(), None);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert!(matches!(
        timeout(WAIT, sender.recv()).await.unwrap().unwrap(),
        SignalEvent::PeerLeft(_)
    ));
}
