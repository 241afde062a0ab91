//! The server and client drivers over real sockets on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::signal::{
    ClientToServer, ErrorCode, PROTOCOL_VERSION, ServerToClient, decode_frame, encode_frame,
};
use ferry_rendezvous::{
    Config, ReleaseReason, ServerConfig, SignalClient, SignalError, SignalEvent, serve,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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

    async fn quick() -> Server {
        Server::start(ServerConfig {
            rendezvous: Config {
                heartbeat: Duration::from_secs(1),
                ..Config::default()
            },
            ..ServerConfig::default()
        })
        .await
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

async fn pair(server: &Server) -> (SignalClient, SignalClient, u32) {
    let (mut sender, _) = SignalClient::connect(&server.addr).await.unwrap();
    let (mut receiver, _) = SignalClient::connect(&server.addr).await.unwrap();
    let nameplate = sender.allocate().await.unwrap();
    receiver.claim(nameplate).await.unwrap();
    let joined = timeout(Duration::from_secs(5), sender.recv())
        .await
        .unwrap();
    assert_eq!(joined.unwrap(), SignalEvent::PeerJoined);
    (sender, receiver, nameplate)
}

/// A raw connection that speaks frames by hand.
struct Raw {
    stream: TcpStream,
    input: BytesMut,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            input: BytesMut::new(),
        }
    }

    async fn send(&mut self, msg: &ClientToServer) {
        let mut out = BytesMut::new();
        encode_frame(msg, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next frame, or None at end of stream.
    async fn recv(&mut self) -> Option<ServerToClient> {
        loop {
            if let Some(msg) = decode_frame(&mut self.input).unwrap() {
                return Some(msg);
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

    async fn hello(&mut self) {
        self.send(&ClientToServer::Hello {
            protocol: PROTOCOL_VERSION,
            agent: "raw".into(),
        })
        .await;
        assert!(matches!(
            self.recv().await,
            Some(ServerToClient::Welcome { .. })
        ));
    }
}

#[tokio::test]
async fn two_clients_pair_and_exchange_messages() {
    let server = Server::quick().await;
    let (mut sender, welcome) = SignalClient::connect(&server.addr).await.unwrap();
    assert_eq!(welcome.observed_addr, welcome.local_addr);
    assert_eq!(welcome.server_addr.to_string(), server.addr);
    let (mut receiver, _) = SignalClient::connect(&server.addr).await.unwrap();
    let nameplate = sender.allocate().await.unwrap();
    assert!((1..=99).contains(&nameplate));
    // The sender may talk before the receiver arrives: the server holds it.
    sender.send("early".into()).await.unwrap();
    receiver.claim(nameplate).await.unwrap();
    assert_eq!(sender.recv().await.unwrap(), SignalEvent::PeerJoined);
    assert_eq!(
        receiver.recv().await.unwrap(),
        SignalEvent::Message("early".into())
    );
    receiver.send("pake from receiver".into()).await.unwrap();
    sender.send("pake from sender".into()).await.unwrap();
    assert_eq!(
        sender.recv().await.unwrap(),
        SignalEvent::Message("pake from receiver".into())
    );
    assert_eq!(
        receiver.recv().await.unwrap(),
        SignalEvent::Message("pake from sender".into())
    );
    // recv is cancel-safe: a recv abandoned in select! loses nothing.
    tokio::select! {
        _ = receiver.recv() => panic!("nothing was sent yet"),
        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
    sender.send("after cancel".into()).await.unwrap();
    assert_eq!(
        receiver.recv().await.unwrap(),
        SignalEvent::Message("after cancel".into())
    );
    sender.release(Some(ReleaseReason::Done)).await.unwrap();
    assert_eq!(
        receiver.recv().await.unwrap(),
        SignalEvent::PeerLeft(Some(ReleaseReason::Done))
    );
    server.stop().await;
}

#[tokio::test]
async fn third_claimant_gets_nameplate_taken() {
    let server = Server::quick().await;
    let (_sender, _receiver, nameplate) = pair(&server).await;
    let (mut third, _) = SignalClient::connect(&server.addr).await.unwrap();
    let err = third.claim(nameplate).await.unwrap_err();
    assert!(
        matches!(err, SignalError::NameplateTaken { nameplate: n, .. } if n == nameplate),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("ask the sender for a new code"),
        "{err}"
    );
    let err = third.claim(nameplate + 1000).await.unwrap_err();
    assert!(
        matches!(err, SignalError::UnknownNameplate { .. }),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn oversized_frame_gets_error_and_close() {
    let server = Server::quick().await;
    let mut raw = Raw::connect(&server.addr).await;
    raw.hello().await;
    raw.stream.write_all(&vec![b'a'; 70 * 1024]).await.unwrap();
    match raw.recv().await {
        Some(ServerToClient::Error { code, .. }) => assert_eq!(code, ErrorCode::FrameTooLarge),
        other => panic!("expected frame-too-large, got {other:?}"),
    }
    assert_eq!(raw.recv().await, None, "the server closes the connection");
    server.stop().await;
}

#[tokio::test]
async fn garbage_before_hello_is_refused() {
    let server = Server::quick().await;
    let mut raw = Raw::connect(&server.addr).await;
    raw.stream
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    match raw.recv().await {
        Some(ServerToClient::Error { code, .. }) => assert_eq!(code, ErrorCode::BadFrame),
        other => panic!("expected bad-frame, got {other:?}"),
    }
    assert_eq!(raw.recv().await, None);
    server.stop().await;
}

#[tokio::test]
async fn silent_peer_makes_recv_return_peer_left() {
    let server = Server::quick().await;
    let mut raw = Raw::connect(&server.addr).await;
    raw.hello().await;
    raw.send(&ClientToServer::Allocate).await;
    let Some(ServerToClient::Allocated { nameplate }) = raw.recv().await else {
        panic!("no nameplate");
    };
    let (mut receiver, _) = SignalClient::connect(&server.addr).await.unwrap();
    receiver.claim(nameplate).await.unwrap();
    // `raw` now neither reads nor answers pings.
    let started = tokio::time::Instant::now();
    let event = timeout(Duration::from_secs(6), receiver.recv())
        .await
        .expect("peer-left within a few seconds")
        .unwrap();
    assert_eq!(
        event,
        SignalEvent::PeerLeft(Some(ReleaseReason::PeerVanished))
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the heartbeats ran out"
    );
    // The receiver itself answers pings, so it stays connected meanwhile.
    receiver.send("still here".into()).await.unwrap();
    drop(raw);
    server.stop().await;
}

#[tokio::test]
async fn bad_code_release_reaches_peer_and_burns() {
    let server = Server::quick().await;
    let (mut sender, receiver, nameplate) = pair(&server).await;
    receiver
        .release(Some(ReleaseReason::BadCode))
        .await
        .unwrap();
    assert_eq!(
        sender.recv().await.unwrap(),
        SignalEvent::PeerLeft(Some(ReleaseReason::BadCode))
    );
    // The server closed the sender too.
    let err = timeout(Duration::from_secs(5), sender.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, SignalError::ServerGone { .. }), "{err:?}");
    let (mut guesser, _) = SignalClient::connect(&server.addr).await.unwrap();
    let err = guesser.claim(nameplate).await.unwrap_err();
    assert!(
        matches!(err, SignalError::UnknownNameplate { .. }),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn unreachable_server_error_says_which_server_and_why() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = SignalClient::connect(&addr).await.unwrap_err();
    assert!(
        matches!(&err, SignalError::Connect { server, .. } if *server == addr),
        "{err:?}"
    );
    assert!(err.is_connection_lost(), "{err:?}");
    // What to do (is `ferry serve` running, which option names the server)
    // is the binary's to say: bin/ferry/tests/cli.rs asserts it.
    let text = err.to_string();
    assert!(
        text.contains(&addr) && text.contains("could not reach the rendezvous server"),
        "{text}"
    );
}

#[tokio::test]
async fn server_shutdown_ends_recv() {
    let server = Server::quick().await;
    let (mut client, _) = SignalClient::connect(&server.addr).await.unwrap();
    client.allocate().await.unwrap();
    server.stop().await;
    let err = timeout(Duration::from_secs(5), client.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            SignalError::Server {
                code: ErrorCode::ShuttingDown,
                ..
            }
        ),
        "{err:?}"
    );
    let err = timeout(Duration::from_secs(5), client.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, SignalError::ServerGone { .. }), "{err:?}");
}

#[tokio::test]
async fn dead_server_is_noticed_by_heartbeat() {
    // A fake server that welcomes with a 1 s heartbeat and then says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await.unwrap();
        let mut out = BytesMut::new();
        let welcome = ServerToClient::Welcome {
            protocol: PROTOCOL_VERSION,
            observed_addr: peer.to_string(),
            heartbeat_secs: 1,
            stun_port: None,
            stun_second_port: None,
            relay_addr: None,
            uptime_secs: None,
            tls: None,
            relay_tls: None,
            relay_sha256: None,
        };
        encode_frame(&welcome, &mut out).unwrap();
        stream.write_all(&out).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(stream);
    });
    let (mut client, _) = SignalClient::connect(&addr).await.unwrap();
    let err = timeout(Duration::from_secs(8), client.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, SignalError::ServerGone { .. }), "{err:?}");
    fake.abort();
}

#[tokio::test]
async fn per_address_limit_refuses_with_server_full() {
    let server = Server::start(ServerConfig {
        max_connections_per_ip: 2,
        ..ServerConfig::default()
    })
    .await;
    let (_a, _) = SignalClient::connect(&server.addr).await.unwrap();
    let (_b, _) = SignalClient::connect(&server.addr).await.unwrap();
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
    drop(_a);
    // The slot frees once the server notices the close.
    let mut connected = false;
    for _ in 0..50 {
        if SignalClient::connect(&server.addr).await.is_ok() {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(connected, "a freed slot can be used again");
    server.stop().await;
}
