//! A whole server started in-process on 127.0.0.1: two signalling clients
//! pair through it and trade a message, relay through its listener, and
//! its STUN responder answers over UDP and TCP; then it shuts down.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferry_nat::stun::{BindingOptions, RetransmitConfig, binding_tcp, binding_udp};
use ferry_relay::relay_connect;
use ferry_rendezvous::{SignalClient, SignalEvent};
use ferry_server::{RelayMode, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_whole_server_pairs_relays_and_answers_stun() {
    let server = Server::start(ServerConfig::loopback()).await.unwrap();
    let listening = server.listening().clone();
    assert!(listening.relay_here);
    assert_eq!(listening.relay_url, None);
    assert!(!listening.rfc5780);
    assert_eq!(listening.stun.len(), 2, "primary and second port");
    assert_eq!(listening.stun_tcp, Some(listening.stun[0]));
    let signal = server.signal_addr().to_string();

    // Signalling: the welcome names the STUN ports; a nameplate pairs the
    // two and carries a message.
    let (mut sender, welcome) = SignalClient::connect(&signal).await.unwrap();
    assert_eq!(welcome.stun_port, Some(listening.stun[0].port()));
    assert_eq!(welcome.stun_second_port, Some(listening.stun[1].port()));
    assert_eq!(welcome.relay_addr, server.signal_addr());
    let (mut receiver, _) = SignalClient::connect(&signal).await.unwrap();
    let nameplate = sender.allocate().await.unwrap();
    receiver.claim(nameplate).await.unwrap();
    let joined = timeout(WAIT, sender.recv()).await.unwrap().unwrap();
    assert_eq!(joined, SignalEvent::PeerJoined);
    receiver
        .send("hello from the receiver".into())
        .await
        .unwrap();
    let got = timeout(WAIT, sender.recv()).await.unwrap().unwrap();
    assert_eq!(got, SignalEvent::Message("hello from the receiver".into()));

    // The relay on the same listener joins the holders of the pair's token.
    let (a, b) = tokio::join!(sender.request_relay_token(), receiver.request_relay_token());
    assert_eq!(a.unwrap(), b.unwrap());
    let token = receiver.relay_token().expect("a relay token");
    let (a, b) = tokio::join!(
        relay_connect(server.signal_addr(), &token, WAIT),
        relay_connect(server.signal_addr(), &token, WAIT)
    );
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    a.write_all(b"through the relay").await.unwrap();
    let mut buf = [0u8; 17];
    timeout(WAIT, b.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"through the relay");
    drop((a, b));

    // STUN over UDP and TCP: our loopback address comes back.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let opts = BindingOptions {
        retransmit: RetransmitConfig::reliable(Duration::from_secs(5)),
        ..BindingOptions::default()
    };
    let answer = binding_udp(&socket, listening.stun[0], opts).await.unwrap();
    assert_eq!(answer.mapped, socket.local_addr().unwrap());
    assert_eq!(answer.source, listening.stun[0]);
    let answer = binding_tcp(listening.stun[0], None, WAIT).await.unwrap();
    assert!(answer.mapped.ip().is_loopback());

    timeout(WAIT, server.shutdown()).await.unwrap().unwrap();
    assert!(
        SignalClient::connect(&signal).await.is_err(),
        "nothing listens after shutdown"
    );
}

#[tokio::test]
async fn without_stun_or_relay_the_welcome_says_so() {
    let server = Server::start(ServerConfig {
        stun: None,
        relay: RelayMode::Off,
        ..ServerConfig::loopback()
    })
    .await
    .unwrap();
    let listening = server.listening().clone();
    assert!(listening.stun.is_empty());
    assert!(!listening.relay_here);
    let (_client, welcome) = SignalClient::connect(&server.signal_addr().to_string())
        .await
        .unwrap();
    assert_eq!(welcome.stun_port, None);
    assert_eq!(welcome.stun_second_port, None);
    timeout(WAIT, server.shutdown()).await.unwrap().unwrap();
}
