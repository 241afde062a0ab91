//! Attacks on a relay on a listener of its own (as `ferry relay` runs it),
//! over real sockets on loopback, with many source addresses
//! (127.0.0.0/8): one address holding connections open, a raw pipe used
//! past its limits.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use ferry_metrics::Metrics;
use ferry_proto::signal::{
    ClientToServer, ErrorCode, RELAY_PROTOCOL_VERSION, ServerToClient, decode_frame, encode_frame,
};
use ferry_relay::token::unix_secs;
use ferry_relay::{RelayConfig, RelayServer, Token, TokenKey, token_to_hex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(10);

fn shared_key() -> TokenKey {
    TokenKey::from_hex(&"7a".repeat(32)).unwrap()
}

fn token_for(nameplate: u32) -> Token {
    let expires = unix_secs(SystemTime::now()) + 120;
    shared_key().issue(nameplate, expires, rand::random())
}

async fn start(config: RelayConfig) -> (SocketAddr, RelayServer) {
    let (addr, relay, _) = start_counted(config).await;
    (addr, relay)
}

/// [`start`], counting in metrics of its own.
async fn start_counted(config: RelayConfig) -> (SocketAddr, RelayServer, Metrics) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Metrics::new();
    let relay = RelayServer::with_metrics(config, shared_key(), metrics.relay());
    let server = relay.clone();
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
    (addr, relay, metrics)
}

/// Whether `text` (a scrape) has `series` at `value`.
fn has(text: &str, series: &str, value: u64) -> bool {
    text.lines().any(|line| line == format!("{series} {value}"))
}

fn lo(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to `relay` from source address `from`.
async fn connect_from(from: IpAddr, relay: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    timeout(WAIT, socket.connect(relay)).await.unwrap().unwrap()
}

/// Reads one line from the relay, byte by byte (so nothing after it is
/// consumed); `None` if the relay closed first.
async fn read_line(stream: &mut TcpStream) -> Option<ServerToClient> {
    let mut line = BytesMut::new();
    loop {
        let byte = match timeout(WAIT, stream.read_u8()).await.unwrap() {
            Ok(byte) => byte,
            Err(_) => return None,
        };
        line.extend_from_slice(&[byte]);
        if byte == b'\n' {
            return decode_frame::<ServerToClient>(&mut line).unwrap();
        }
    }
}

/// `relay_connect` from a chosen source address: presents `token` and
/// reads lines until `relay-paired`; the error line if refused.
async fn join_from(
    from: IpAddr,
    relay: SocketAddr,
    token: &Token,
) -> Result<TcpStream, Option<ServerToClient>> {
    let mut stream = connect_from(from, relay).await;
    let mut line = BytesMut::new();
    let hello = ClientToServer::Relay {
        protocol: RELAY_PROTOCOL_VERSION,
        token: token_to_hex(token),
    };
    encode_frame(&hello, &mut line).unwrap();
    if stream.write_all(&line).await.is_err() {
        return Err(None);
    }
    loop {
        match read_line(&mut stream).await {
            Some(ServerToClient::RelayWaiting) => {}
            Some(ServerToClient::RelayPaired { .. }) => return Ok(stream),
            other => return Err(other),
        }
    }
}

/// Attack 5: one address opens as many idle connections as the relay has
/// slots (2 x 64 + 64 = 192). Today they took every slot and a genuine pair
/// was dropped without a word; now the address gets its share, the rest are
/// told why, and a genuine pair from other addresses relays its bytes.
#[tokio::test]
async fn idle_flood_from_one_address_does_not_shut_out_a_genuine_pair() {
    let (addr, _relay) = start(RelayConfig::default()).await;
    let mut idle = Vec::new();
    for _ in 0..192 {
        idle.push(connect_from(lo(2), addr).await);
    }
    // Every connection past the address's share reads a refusal line.
    let mut refused = 0;
    for stream in idle
        .iter_mut()
        .skip(RelayConfig::default().max_connections_per_ip)
    {
        match read_line(stream).await {
            Some(ServerToClient::Error {
                code: ErrorCode::ServerFull,
                message,
            }) => {
                assert!(message.contains("too many"), "{message}");
                refused += 1;
            }
            other => panic!("an over-limit connection read {other:?}"),
        }
    }
    assert_eq!(refused, 192 - 8);

    // The flood's accepted share is still open; a genuine pair relays.
    let token = token_for(7);
    let (a, b) = tokio::join!(
        join_from(lo(3), addr, &token),
        join_from(lo(4), addr, &token)
    );
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        a.write_all(&sent).await.unwrap();
        a.shutdown().await.unwrap();
        a
    });
    let mut got = Vec::new();
    timeout(WAIT, b.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert!(got == data, "the genuine pair's bytes arrive intact");
}

/// The accepted share of an idle flood is cut after the short first-line
/// timeout, with a line saying why, and the address may connect again.
#[tokio::test]
async fn a_silent_connection_is_cut_after_the_first_line_timeout() {
    let (addr, _relay) = start(RelayConfig {
        first_line_timeout: Duration::from_millis(500),
        ..RelayConfig::default()
    })
    .await;
    let started = Instant::now();
    let mut silent = connect_from(lo(5), addr).await;
    match read_line(&mut silent).await {
        Some(ServerToClient::Error {
            code: ErrorCode::BadFrame,
            message,
        }) => assert!(message.contains("relay line"), "{message}"),
        other => panic!("a silent connection read {other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    // The default is short too: well under the old 10 s.
    assert!(RelayConfig::default().first_line_timeout <= Duration::from_secs(3));
}

/// A pair joined from two loopback addresses through `relay`.
async fn genuine_pair(relay: SocketAddr, nameplate: u32) -> (TcpStream, TcpStream) {
    let token = token_for(nameplate);
    let (a, b) = tokio::join!(
        join_from(lo(3), relay, &token),
        join_from(lo(4), relay, &token)
    );
    (a.unwrap(), b.unwrap())
}

/// Polls the relay's counters until `done` holds (bounded).
async fn wait_for_stats(relay: &RelayServer, done: impl Fn(&ferry_relay::Stats) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(&relay.stats()) {
        assert!(Instant::now() < deadline, "{:?}", relay.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Attack 8, bytes: a raw pipe may move no more than the byte limit per
/// pair; the pair is then ended, and the relay says why.
#[tokio::test]
async fn byte_limit_ends_a_pair_after_exactly_its_bytes() {
    const LIMIT: u64 = 300_000;
    let (addr, relay, metrics) = start_counted(RelayConfig {
        max_pair_bytes: Some(LIMIT),
        ..RelayConfig::default()
    })
    .await;
    let (mut a, mut b) = genuine_pair(addr, 11).await;
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
    let sent = data.clone();
    // The writer may be cut off midway: the relay stops reading.
    let writer = tokio::spawn(async move {
        let _ = a.write_all(&sent).await;
        a
    });
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match timeout(WAIT, b.read(&mut chunk)).await.unwrap() {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    assert_eq!(
        got.len() as u64,
        LIMIT,
        "the pair moved exactly its byte limit"
    );
    assert!(got[..] == data[..LIMIT as usize]);
    wait_for_stats(&relay, |s| s.byte_limit == 1).await;
    assert_eq!(relay.stats().lifetime_limit, 0);
    writer.abort();
    let text = metrics.encode();
    for (series, value) in [
        ("ferry_relay_pairs_total", 1),
        (r#"ferry_relay_pairs_ended_total{reason="byte_limit"}"#, 1),
        (r#"ferry_relay_pairs_ended_total{reason="closed"}"#, 0),
        ("ferry_relay_bytes_total", LIMIT),
        (r#"ferry_connections_accepted_total{listener="relay"}"#, 2),
    ] {
        assert!(has(&text, series, value), "{series} {value}:\n{text}");
    }
    // The relay says which limit in its own terms; `ferry` names the
    // option its operator sets (bin/ferry/src/session.rs, relay_limit_why).
    let message = ferry_relay::PairEnd::ByteLimit.message();
    assert!(
        message.contains("limit of bytes per transfer") && !message.contains("--"),
        "{message}"
    );
}

/// Attack 8, time: a pair that keeps moving bytes is still ended at its
/// lifetime limit, and the relay says why.
#[tokio::test]
async fn lifetime_limit_ends_a_busy_pair() {
    let (addr, relay) = start(RelayConfig {
        max_pair_lifetime: Some(Duration::from_millis(800)),
        ..RelayConfig::default()
    })
    .await;
    let (mut a, mut b) = genuine_pair(addr, 12).await;
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let mut echoed = 0u32;
    // A byte every 50 ms, so the idle timeout never fires; at most 5 s.
    let ended = loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the pair outlived its lifetime"
        );
        if a.write_all(&[7]).await.is_err() {
            break started.elapsed();
        }
        match timeout(WAIT, b.read(&mut byte)).await.unwrap() {
            Ok(0) | Err(_) => break started.elapsed(),
            Ok(_) => echoed += 1,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(echoed >= 5, "the pair relayed until its end: {echoed}");
    assert!(ended >= Duration::from_millis(700), "{ended:?}");
    wait_for_stats(&relay, |s| s.lifetime_limit == 1).await;
    assert_eq!(relay.stats().idle, 0);
    let message = ferry_relay::PairEnd::Lifetime.message();
    assert!(
        message.contains("time limit per transfer") && !message.contains("--"),
        "{message}"
    );
}

/// Attack 8, bandwidth: the relay's total rate holds across pairs (a
/// lower bound on the time N bytes take at rate R).
#[tokio::test]
async fn total_rate_limit_paces_all_pairs_together() {
    const RATE: u64 = 1 << 20;
    let (addr, _relay) = start(RelayConfig {
        rate_limit: None,
        total_rate_limit: Some(RATE),
        ..RelayConfig::default()
    })
    .await;
    let (a1, mut b1) = genuine_pair(addr, 21).await;
    let (a2, mut b2) = genuine_pair(addr, 22).await;
    let size = 3 * RATE as usize / 2;
    let data: Vec<u8> = (0..size).map(|i| (i % 239) as u8).collect();
    let started = Instant::now();
    for mut a in [a1, a2] {
        let sent = data.clone();
        tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.shutdown().await.unwrap();
            // Keep the socket until the relay is done with it.
            let mut rest = Vec::new();
            let _ = a.read_to_end(&mut rest).await;
        });
    }
    let (mut got1, mut got2) = (Vec::new(), Vec::new());
    let (r1, r2) = tokio::join!(
        timeout(Duration::from_secs(20), b1.read_to_end(&mut got1)),
        timeout(Duration::from_secs(20), b2.read_to_end(&mut got2))
    );
    r1.unwrap().unwrap();
    r2.unwrap().unwrap();
    let took = started.elapsed();
    assert!(got1 == data && got2 == data, "bytes intact");
    // 3 MiB in all at 1 MiB/s with a 1 s burst: at least about 2 s.
    assert!(took >= Duration::from_millis(1700), "{took:?}");
}
