//! The relay driver on its own listener (as `ferry relay` runs it), over
//! real sockets on 127.0.0.1: signed tokens from a rendezvous it never
//! talks to, idle timeout and rate limit.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ferry_proto::signal::ErrorCode;
use ferry_relay::token::unix_secs;
use ferry_relay::{Refusal, RelayConfig, RelayError, RelayServer, Token, TokenKey, relay_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(10);

/// The secret the relay and the (absent) rendezvous server share.
fn shared_key() -> TokenKey {
    TokenKey::from_hex(&"5e".repeat(32)).unwrap()
}

/// A token as the rendezvous server would sign it, expiring `secs` from
/// now (negative: already expired).
fn token_for(key: &TokenKey, nameplate: u32, secs: i64) -> Token {
    let now = unix_secs(SystemTime::now());
    let expires = now.saturating_add_signed(secs);
    key.issue(nameplate, expires, rand::random())
}

/// A relay on a listener of its own.
async fn start(config: RelayConfig) -> (SocketAddr, RelayServer) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let relay = RelayServer::new(config, shared_key());
    let server = relay.clone();
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
    (addr, relay)
}

async fn pair(addr: SocketAddr, nameplate: u32) -> (TcpStream, TcpStream) {
    let token = token_for(&shared_key(), nameplate, 120);
    let (a, b) = tokio::join!(
        relay_connect(addr, &token, WAIT),
        relay_connect(addr, &token, WAIT)
    );
    (a.unwrap(), b.unwrap())
}

#[tokio::test]
async fn idle_pair_is_closed_and_a_busy_one_is_not() {
    let (addr, _relay) = start(RelayConfig {
        idle_timeout: Duration::from_millis(400),
        ..RelayConfig::default()
    })
    .await;
    let (mut a, mut b) = pair(addr, 1).await;
    // Busy: a byte every 100 ms for 1.2 s keeps the pair open.
    let mut byte = [0u8; 1];
    for i in 0..12u8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.write_all(&[i]).await.unwrap();
        timeout(WAIT, b.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(byte[0], i);
    }
    // Idle: both ends see the relay close within a moment of the timeout.
    let started = Instant::now();
    let n = timeout(Duration::from_secs(3), a.read(&mut byte))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let n = timeout(Duration::from_secs(3), b.read(&mut byte))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
}

#[tokio::test]
async fn rate_limit_paces_a_pair() {
    const RATE: u64 = 1 << 20;
    let (addr, _relay) = start(RelayConfig {
        rate_limit: Some(RATE),
        ..RelayConfig::default()
    })
    .await;
    let (a, mut b) = pair(addr, 2).await;
    let data: Vec<u8> = (0..3 * RATE as usize).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut a = a;
        a.write_all(&sent).await.unwrap();
        a.shutdown().await.unwrap();
        a
    });
    let mut got = Vec::new();
    timeout(Duration::from_secs(20), b.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    writer.await.unwrap();
    assert!(got == data, "bytes intact");
    // One second of burst, then 2 MiB at 1 MiB/s.
    assert!(took >= Duration::from_millis(1700), "{took:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
}

async fn ping_pong(a: &mut TcpStream, b: &mut TcpStream, text: &[u8]) {
    a.write_all(text).await.unwrap();
    let mut got = vec![0u8; text.len()];
    timeout(WAIT, b.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, text);
}

fn refusal(result: Result<TcpStream, RelayError>) -> (ErrorCode, String) {
    match result {
        Err(RelayError::Refused { code, message, .. }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn standalone_relay_refuses_foreign_expired_and_reused_tokens() {
    let (addr, relay) = start(RelayConfig::default()).await;
    // A genuine pair, signed with the shared secret.
    let token = token_for(&shared_key(), 7, 120);
    let (a, b) = tokio::join!(
        relay_connect(addr, &token, WAIT),
        relay_connect(addr, &token, WAIT)
    );
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    ping_pong(&mut a, &mut b, b"genuine").await;

    // Well-formed and fresh, but signed with another secret.
    let other = TokenKey::from_hex(&"a7".repeat(32)).unwrap();
    let foreign = token_for(&other, 7, 120);
    let refused = relay_connect(addr, &foreign, WAIT).await;
    let shown = refused.as_ref().map_err(ToString::to_string).err();
    let (code, message) = refusal(refused);
    assert_eq!(code, ErrorCode::RelayRefused);
    assert!(message.contains("unknown relay token"), "{message}");
    // The client finds which refusal it was, here and in the error that
    // carries the message on; `ferry` then names the secret file option
    // (bin/ferry/tests/cli.rs asserts it).
    assert!(message.contains("different relay secrets"), "{message}");
    assert_eq!(Refusal::in_text(&message), Some(Refusal::UnknownToken));
    let shown = shown.unwrap();
    assert_eq!(
        Refusal::in_text(&shown),
        Some(Refusal::UnknownToken),
        "{shown}"
    );

    // Signed with the right secret, but its time is up.
    let expired = token_for(&shared_key(), 8, -1);
    let (code, message) = refusal(relay_connect(addr, &expired, WAIT).await);
    assert_eq!(code, ErrorCode::RelayRefused);
    assert!(message.contains("expired"), "{message}");

    // The genuine token, a third time.
    let (code, message) = refusal(relay_connect(addr, &token, WAIT).await);
    assert_eq!(code, ErrorCode::RelayRefused);
    assert!(message.contains("already used"), "{message}");

    // The pair did not notice, and each refusal was counted.
    ping_pong(&mut b, &mut a, b"still fine").await;
    let stats = relay.stats();
    assert_eq!(
        (
            stats.paired,
            stats.unknown_token,
            stats.expired,
            stats.reused
        ),
        (1, 1, 1, 1)
    );
}

#[tokio::test]
async fn malformed_token_is_refused_as_unknown() {
    let (addr, relay) = start(RelayConfig::default()).await;
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"{\"type\":\"relay\",\"protocol\":1,\"token\":\"zz\"}\n")
        .await
        .unwrap();
    let mut answer = String::new();
    timeout(WAIT, raw.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.contains("relay-refused"), "{answer}");
    assert_eq!(relay.stats().unknown_token, 1);
    let err = relay_connect(addr, &[9; 32], WAIT).await.unwrap_err();
    assert!(
        matches!(
            err,
            RelayError::Refused {
                code: ErrorCode::RelayRefused,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("unknown relay token"), "{err}");
}

#[tokio::test]
async fn serve_refuses_a_connection_that_is_not_relay() {
    let (addr, _relay) = start(RelayConfig::default()).await;
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"{\"type\":\"hello\",\"protocol\":1,\"agent\":\"x\"}\n")
        .await
        .unwrap();
    let mut answer = String::new();
    timeout(WAIT, raw.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.contains("bad-frame"), "{answer}");
    assert!(answer.contains("relay only"), "{answer}");
    // A line longer than 1 KiB is refused too.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    let _ = raw.write_all(&[b'x'; 2048]).await;
    let mut answer = String::new();
    let _ = timeout(WAIT, raw.read_to_string(&mut answer))
        .await
        .unwrap();
    assert!(answer.contains("bad-frame"), "{answer}");
}

#[tokio::test]
async fn relay_connect_times_out_when_nobody_answers() {
    // A listener that accepts but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(stream);
    });
    let err = relay_connect(addr, &[3; 32], Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, RelayError::Timeout { .. }), "{err:?}");
    hold.abort();
}
