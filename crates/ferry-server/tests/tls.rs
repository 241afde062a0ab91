//! TLS on the server port, in-process on 127.0.0.1: a pinned client gets
//! TLS and the relay inside it, a plain client on the same port stays
//! plain and is told TLS is there, a wrong pin is an error (never plain),
//! a reload serves the new certificate to new connections, and a silent
//! connection is let go after the bounded first-byte wait.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferry_relay::{RelayTls, ServerTls, relay_join};
use ferry_rendezvous::{SignalClient, SignalError, SignalEvent};
use ferry_server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn self_signed() -> ServerTls {
    let made = rcgen::generate_simple_self_signed(vec!["ferry.invalid".to_string()]).unwrap();
    ServerTls::from_pem(
        made.cert.pem().as_bytes(),
        made.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap()
}

async fn tls_server() -> (Server, String) {
    let tls = self_signed();
    let fingerprint = tls.fingerprint();
    let server = Server::start(ServerConfig {
        tls: Some(tls),
        ..ServerConfig::loopback()
    })
    .await
    .unwrap();
    assert_eq!(
        server.listening().tls_fingerprint.as_deref(),
        Some(fingerprint.as_str())
    );
    (server, fingerprint)
}

#[tokio::test]
async fn pinned_clients_signal_and_relay_inside_tls_beside_plain_ones() {
    let (server, pin) = tls_server().await;
    let addr = server.signal_addr().to_string();
    let pinned = format!("{addr}#sha256={pin}");

    let (mut sender, welcome) = SignalClient::connect(&pinned).await.unwrap();
    assert!(welcome.tls);
    assert!(welcome.tls_offered);
    let relay_tls: RelayTls = welcome.relay_tls.clone().expect("the relay in TLS too");
    assert_eq!(relay_tls.addr, addr);
    // A plain client of the same port: served, told TLS is there.
    let (mut receiver, plain) = SignalClient::connect(&addr).await.unwrap();
    assert!(!plain.tls);
    assert!(plain.tls_offered);
    assert!(plain.relay_tls.is_none());

    let nameplate = sender.allocate().await.unwrap();
    receiver.claim(nameplate).await.unwrap();
    let joined = timeout(WAIT, sender.recv()).await.unwrap().unwrap();
    assert_eq!(joined, SignalEvent::PeerJoined);
    let (a, b) = tokio::join!(sender.request_relay_token(), receiver.request_relay_token());
    let token = a.unwrap().unwrap();
    assert_eq!(b.unwrap(), Some(token));

    // One side joins the relay in TLS, the other plain: same pair.
    let (a, b) = tokio::join!(
        relay_join(server.signal_addr(), Some(&relay_tls), &token, WAIT),
        relay_join(server.signal_addr(), None, &token, WAIT)
    );
    let ((mut a, _), (mut b, _)) = (a.unwrap(), b.unwrap());
    assert!(a.is_tls());
    assert!(!b.is_tls());
    a.write_all(b"through the relay, in TLS").await.unwrap();
    let mut buf = [0u8; 25];
    timeout(WAIT, b.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"through the relay, in TLS");
    drop((a, b));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wrong_pin_is_a_tls_error_that_names_both_fingerprints() {
    let (server, pin) = tls_server().await;
    let wrong = "00".repeat(32);
    let spec = format!("{}#sha256={wrong}", server.signal_addr());
    let error = SignalClient::connect(&spec).await.unwrap_err();
    let SignalError::Tls { reason, .. } = &error else {
        panic!("{error:?}")
    };
    assert!(reason.contains(&format!("fingerprint {pin}")), "{reason}");
    assert!(
        reason.contains(&format!("not the pinned {wrong}")),
        "{reason}"
    );
    assert!(
        !error.is_connection_lost(),
        "not retried as if the server were down"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_tls_client_of_a_plain_server_fails_instead_of_going_plain() {
    let server = Server::start(ServerConfig::loopback()).await.unwrap();
    let spec = format!("{}#sha256={}", server.signal_addr(), "11".repeat(32));
    let error = SignalClient::connect(&spec).await.unwrap_err();
    assert!(matches!(error, SignalError::Tls { .. }), "{error:?}");
    // The plain welcome offers no TLS.
    let (_, welcome) = SignalClient::connect(&server.signal_addr().to_string())
        .await
        .unwrap();
    assert!(!welcome.tls_offered);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_to_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let write = |made: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    };
    let names = vec!["ferry.invalid".to_string()];
    write(&rcgen::generate_simple_self_signed(names.clone()).unwrap());
    let tls = ServerTls::load(&cert, &key).unwrap();
    let old = tls.fingerprint();
    let server = Server::start(ServerConfig {
        tls: Some(tls.clone()),
        ..ServerConfig::loopback()
    })
    .await
    .unwrap();
    let addr = server.signal_addr();
    let (kept, _) = SignalClient::connect(&format!("{addr}#sha256={old}"))
        .await
        .unwrap();
    write(&rcgen::generate_simple_self_signed(names).unwrap());
    let new = tls.reload().unwrap();
    assert_ne!(new, old);
    assert!(
        SignalClient::connect(&format!("{addr}#sha256={new}"))
            .await
            .is_ok()
    );
    assert!(
        SignalClient::connect(&format!("{addr}#sha256={old}"))
            .await
            .is_err()
    );
    // A file that does not load leaves the certificate in use.
    std::fs::write(&cert, "garbage").unwrap();
    assert!(tls.reload().is_err());
    assert_eq!(tls.fingerprint(), new);
    assert!(
        SignalClient::connect(&format!("{addr}#sha256={new}"))
            .await
            .is_ok()
    );
    drop(kept);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_silent_connection_on_a_tls_port_is_let_go_after_the_first_byte_wait() {
    let (server, _) = tls_server().await;
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.signal_addr())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = timeout(
        ferry_relay::tls::PEEK_WAIT + Duration::from_secs(5),
        silent.read(&mut buf),
    )
    .await
    .expect("closed within the wait");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(
        waited + Duration::from_millis(500) >= ferry_relay::tls::PEEK_WAIT,
        "{waited:?}"
    );
    server.shutdown().await.unwrap();
}
