//! Attacks on the rendezvous server, each over real sockets on loopback:
//! what a hostile client tries, and what the user (or a genuine pair
//! running at the same time) sees.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::signal::{
    ClientToServer, ErrorCode, PROTOCOL_VERSION, ReleaseReason, ServerToClient, decode_frame,
    encode_frame,
};
use ferry_relay::RelayConfig;
use ferry_rendezvous::{Config, ServerConfig, SignalClient, SignalError, SignalEvent, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

struct Server {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(config: ServerConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, config, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// A raw connection that speaks frames by hand, from a chosen loopback
/// source address.
struct Raw {
    stream: TcpStream,
    input: BytesMut,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        Raw::connect_from(addr, [127, 0, 0, 1]).await
    }

    async fn connect_from(addr: &str, source: [u8; 4]) -> Raw {
        Raw::try_connect_from(addr, source).await.unwrap()
    }

    async fn try_connect_from(addr: &str, source: [u8; 4]) -> std::io::Result<Raw> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        let stream = socket.connect(addr.parse().unwrap()).await?;
        Ok(Raw {
            stream,
            input: BytesMut::new(),
        })
    }

    async fn send(&mut self, msg: &ClientToServer) {
        let mut out = BytesMut::new();
        encode_frame(msg, &mut out).unwrap();
        let _ = self.stream.write_all(&out).await;
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next frame (pings answered on the way), or None at end of
    /// stream or on a reset.
    async fn recv(&mut self) -> Option<ServerToClient> {
        loop {
            match decode_frame(&mut self.input).unwrap() {
                Some(ServerToClient::Ping { id }) => {
                    self.send(&ClientToServer::Pong { id }).await;
                    continue;
                }
                Some(msg) => return Some(msg),
                None => {}
            }
            let mut chunk = [0u8; 4096];
            let n = timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
                .await
                .expect("server answers")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.input.extend_from_slice(&chunk[..n]);
        }
    }

    async fn hello(&mut self) -> Option<ServerToClient> {
        self.send(&ClientToServer::Hello {
            protocol: PROTOCOL_VERSION,
            agent: "raw".into(),
        })
        .await;
        self.recv().await
    }

    async fn greet(&mut self) {
        let welcome = self.hello().await;
        assert!(
            matches!(welcome, Some(ServerToClient::Welcome { .. })),
            "{welcome:?}"
        );
    }
}

/// Attack 2: a claimer who does not know the code releases with a reason
/// full of terminal escapes; the sender hears a code, never that text.
#[tokio::test]
async fn free_text_release_reason_never_reaches_the_peer() {
    let server = Server::start(ServerConfig::default()).await;
    let (mut sender, _) = SignalClient::connect(&server.addr).await.unwrap();
    let nameplate = sender.allocate().await.unwrap();
    let mut stranger = Raw::connect(&server.addr).await;
    stranger.greet().await;
    stranger.send(&ClientToServer::Claim { nameplate }).await;
    assert!(matches!(
        stranger.recv().await,
        Some(ServerToClient::Claimed { .. })
    ));
    assert_eq!(sender.recv().await.unwrap(), SignalEvent::PeerJoined);
    let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2K\rReceived 1 file, all verified\n";
    let line = format!(
        "{{\"type\":\"release\",\"reason\":{}}}\n",
        serde_json::to_string(evil).unwrap()
    );
    stranger.send_bytes(line.as_bytes()).await;
    let event = timeout(Duration::from_secs(5), sender.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event, SignalEvent::PeerLeft(None));

    // A second stranger on a fresh nameplate, this time with a known
    // code: that code, and only it, comes through.
    let (mut sender, _) = SignalClient::connect(&server.addr).await.unwrap();
    let nameplate = sender.allocate().await.unwrap();
    let mut raw = Raw::connect(&server.addr).await;
    raw.greet().await;
    raw.send(&ClientToServer::Claim { nameplate }).await;
    raw.recv().await;
    assert_eq!(sender.recv().await.unwrap(), SignalEvent::PeerJoined);
    raw.send_bytes(b"{\"type\":\"release\",\"reason\":\"declined\"}\n")
        .await;
    let event = sender.recv().await.unwrap();
    assert_eq!(event, SignalEvent::PeerLeft(Some(ReleaseReason::Declined)));
    let SignalEvent::PeerLeft(Some(reason)) = event else {
        unreachable!()
    };
    assert!(reason.describe().chars().all(|c| !c.is_control()));
    server.stop().await;
}

#[derive(Debug, Default)]
struct SniperReport {
    claims: u32,
    sniped: u32,
    rate_limited: u32,
}

/// Loops `claim 1..=99` from `source` until `stop`, reconnecting whenever
/// the server closes the connection.
async fn snipe(
    addr: String,
    source: [u8; 4],
    stop: tokio::sync::watch::Receiver<bool>,
) -> SniperReport {
    let mut report = SniperReport::default();
    let mut next = 0u32;
    while !*stop.borrow() {
        let Ok(mut raw) = Raw::try_connect_from(&addr, source).await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if !matches!(raw.hello().await, Some(ServerToClient::Welcome { .. })) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        while !*stop.borrow() {
            next = next % 99 + 1;
            raw.send(&ClientToServer::Claim { nameplate: next }).await;
            report.claims += 1;
            match raw.recv().await {
                Some(ServerToClient::Claimed { .. }) => {
                    report.sniped += 1;
                    break;
                }
                Some(ServerToClient::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }) => report.rate_limited += 1,
                Some(_) => {}
                None => break,
            }
        }
    }
    report
}

/// Attack 1: snipers loop claims over the small nameplates while a genuine
/// pair pairs; the pair still pairs and talks, the snipers never get a
/// nameplate and are told they are rate-limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snipers_looping_claims_do_not_take_a_genuine_nameplate() {
    let server = Server::start(ServerConfig::default()).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let snipers: Vec<_> = (2..=4u8)
        .map(|last| {
            tokio::spawn(snipe(
                server.addr.clone(),
                [127, 0, 0, last],
                stop_rx.clone(),
            ))
        })
        .collect();
    // The snipers have been at it for a while when the sender comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut sender, _) = SignalClient::connect(&server.addr).await.unwrap();
    let (mut receiver, _) = SignalClient::connect(&server.addr).await.unwrap();
    let nameplate = sender.allocate().await.unwrap();
    // The user reads the code out; the snipers keep trying meanwhile.
    tokio::time::sleep(Duration::from_millis(700)).await;
    receiver
        .claim(nameplate)
        .await
        .expect("the genuine receiver claims its nameplate");
    assert_eq!(
        timeout(Duration::from_secs(5), sender.recv())
            .await
            .unwrap()
            .unwrap(),
        SignalEvent::PeerJoined
    );
    sender.send("hello receiver".into()).await.unwrap();
    assert_eq!(
        receiver.recv().await.unwrap(),
        SignalEvent::Message("hello receiver".into())
    );
    receiver.send("hello sender".into()).await.unwrap();
    assert_eq!(
        sender.recv().await.unwrap(),
        SignalEvent::Message("hello sender".into())
    );
    stop_tx.send(true).unwrap();
    for sniper in snipers {
        let report = timeout(Duration::from_secs(10), sniper)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.sniped, 0, "{report:?}");
        assert!(report.rate_limited > 0, "{report:?}");
    }
    server.stop().await;
}

/// Attack 4: greeted connections that hold no nameplate (and answer
/// pings) no longer hold the server's slots for as long as they like.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_greeted_connections_are_evicted_and_a_genuine_client_gets_in() {
    let server = Server::start(ServerConfig {
        rendezvous: Config {
            idle_timeout: Duration::from_secs(1),
            ..Config::default()
        },
        max_connections: 16,
        ..ServerConfig::default()
    })
    .await;
    let mut squatters = Vec::new();
    for _ in 0..16 {
        let mut raw = Raw::connect_from(&server.addr, [127, 0, 0, 2]).await;
        raw.greet().await;
        squatters.push(raw);
    }
    // Full: a client from another address is told so at once.
    let err = SignalClient::connect(&server.addr).await.unwrap_err();
    assert!(
        matches!(
            err,
            SignalError::Server {
                code: ErrorCode::ServerFull,
                ..
            }
        ),
        "{err:?}"
    );
    // Every squatter hears why it is closed (pings answered meanwhile).
    for raw in &mut squatters {
        let said = raw.recv().await;
        assert!(
            matches!(
                said,
                Some(ServerToClient::Error {
                    code: ErrorCode::Idle,
                    ..
                })
            ),
            "{said:?}"
        );
        assert_eq!(raw.recv().await, None);
    }
    let mut genuine = None;
    for _ in 0..50 {
        if let Ok((client, _)) = SignalClient::connect(&server.addr).await {
            genuine = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut genuine = genuine.expect("a genuine client gets a slot once the squatters are gone");
    genuine.allocate().await.unwrap();
    server.stop().await;
}

/// Attack 4: a flood of new connections from one address is refused with
/// a reason, and does not keep another address out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_from_one_address_is_rate_limited_with_a_reason() {
    // The per-address cap is out of the way: this is about the rate.
    let server = Server::start(ServerConfig {
        max_connections_per_ip: 1000,
        ..ServerConfig::default()
    })
    .await;
    let mut refused = None;
    for _ in 0..40 {
        let mut raw = Raw::connect_from(&server.addr, [127, 0, 0, 5]).await;
        match raw.hello().await {
            Some(ServerToClient::Welcome { .. }) => drop(raw),
            other => {
                refused = other;
                break;
            }
        }
    }
    assert!(
        matches!(
            refused,
            Some(ServerToClient::Error {
                code: ErrorCode::RateLimited,
                ..
            })
        ),
        "{refused:?}"
    );
    let (mut other, _) = SignalClient::connect(&server.addr).await.unwrap();
    other.allocate().await.unwrap();
    server.stop().await;
}

/// Attack 8: a claimer that guessed the nameplate but not the code gets no
/// relay token, however often it asks; the genuine pair gets one.
#[tokio::test]
async fn a_claimer_that_never_pairs_gets_no_relay_token() {
    let server = Server::start(ServerConfig {
        relay: Some(RelayConfig::default()),
        ..ServerConfig::default()
    })
    .await;
    let (mut sender, _) = SignalClient::connect(&server.addr).await.unwrap();
    let nameplate = sender.allocate().await.unwrap();
    let mut sniper = Raw::connect_from(&server.addr, [127, 0, 0, 6]).await;
    sniper.greet().await;
    sniper.send(&ClientToServer::Claim { nameplate }).await;
    let claimed = sniper.recv().await;
    assert!(
        matches!(
            claimed,
            Some(ServerToClient::Claimed {
                relay_token: None,
                ..
            })
        ),
        "{claimed:?}"
    );
    assert_eq!(sender.recv().await.unwrap(), SignalEvent::PeerJoined);
    assert_eq!(sender.relay_token(), None);
    for _ in 0..3 {
        sniper.send(&ClientToServer::RelayRequest).await;
    }
    // The sender never pairs with it, so never asks: nothing comes back.
    sniper.send(&ClientToServer::Ping { id: 77 }).await;
    assert_eq!(sniper.recv().await, Some(ServerToClient::Pong { id: 77 }));
    drop(sniper);
    server.stop().await;
}

/// Attack 9: a peer that never reads while its partner floods it is
/// dropped once its queue holds a bounded number of bytes; the partner
/// hears it left and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_dropped_and_the_server_serves_on() {
    let server = Server::start(ServerConfig::default()).await;
    let (mut sender, _) = SignalClient::connect(&server.addr).await.unwrap();
    let nameplate = sender.allocate().await.unwrap();
    let mut sink = Raw::connect(&server.addr).await;
    sink.greet().await;
    sink.send(&ClientToServer::Claim { nameplate }).await;
    assert_eq!(sender.recv().await.unwrap(), SignalEvent::PeerJoined);
    // `sink` reads nothing from here on.
    let body = "x".repeat(60_000);
    let started = tokio::time::Instant::now();
    let mut left = None;
    for _ in 0..1000 {
        sender.send(body.clone()).await.unwrap();
        if let Ok(event) = timeout(Duration::from_millis(2), sender.recv()).await {
            left = Some(event.unwrap());
            break;
        }
    }
    let left = match left {
        Some(event) => event,
        None => timeout(Duration::from_secs(8), sender.recv())
            .await
            .expect("the sender hears its peer was dropped")
            .unwrap(),
    };
    assert_eq!(
        left,
        SignalEvent::PeerLeft(Some(ReleaseReason::PeerDisconnected))
    );
    // Not the write timeout (10 s): the byte bound.
    assert!(started.elapsed() < Duration::from_secs(9));
    drop(sink);
    let (mut a, _) = SignalClient::connect(&server.addr).await.unwrap();
    let (mut b, _) = SignalClient::connect(&server.addr).await.unwrap();
    let nameplate = a.allocate().await.unwrap();
    b.claim(nameplate).await.unwrap();
    assert_eq!(a.recv().await.unwrap(), SignalEvent::PeerJoined);
    server.stop().await;
}

/// Hostile frames: each gets a clear error (and a close where the
/// connection cannot go on), and the server goes on serving.
#[tokio::test]
async fn malformed_unknown_and_trickled_frames() {
    let server = Server::start(ServerConfig::default()).await;
    // A hello trickled in byte by byte is still a hello.
    let mut slow = Raw::connect(&server.addr).await;
    let mut hello = BytesMut::new();
    encode_frame(
        &ClientToServer::Hello {
            protocol: PROTOCOL_VERSION,
            agent: "slow".into(),
        },
        &mut hello,
    )
    .unwrap();
    for byte in hello.iter() {
        slow.send_bytes(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(matches!(
        slow.recv().await,
        Some(ServerToClient::Welcome { .. })
    ));
    // Sending for a nameplate it does not hold.
    slow.send(&ClientToServer::Send {
        body: "to whom?".into(),
    })
    .await;
    assert!(matches!(
        slow.recv().await,
        Some(ServerToClient::Error {
            code: ErrorCode::NotClaimed,
            ..
        })
    ));
    slow.send(&ClientToServer::RelayRequest).await;
    assert!(matches!(
        slow.recv().await,
        Some(ServerToClient::Error {
            code: ErrorCode::NotClaimed,
            ..
        })
    ));
    // An unknown message type after hello: error and close.
    slow.send_bytes(b"{\"type\":\"steal\",\"nameplate\":7}\n")
        .await;
    assert!(matches!(
        slow.recv().await,
        Some(ServerToClient::Error {
            code: ErrorCode::BadFrame,
            ..
        })
    ));
    assert_eq!(slow.recv().await, None);
    // Malformed JSON.
    let mut broken = Raw::connect(&server.addr).await;
    broken
        .send_bytes(b"{\"type\":\"hello\",\"protocol\":\n")
        .await;
    assert!(matches!(
        broken.recv().await,
        Some(ServerToClient::Error {
            code: ErrorCode::BadFrame,
            ..
        })
    ));
    assert_eq!(broken.recv().await, None);
    // Another protocol version.
    let mut future = Raw::connect(&server.addr).await;
    future
        .send(&ClientToServer::Hello {
            protocol: 99,
            agent: "future".into(),
        })
        .await;
    let said = future.recv().await;
    let Some(ServerToClient::Error {
        code: ErrorCode::ProtocolVersion,
        message,
    }) = said
    else {
        panic!("{said:?}");
    };
    assert!(message.contains("same ferry version"), "{message}");
    // Still serving.
    let (mut client, _) = SignalClient::connect(&server.addr).await.unwrap();
    client.allocate().await.unwrap();
    server.stop().await;
}
