//! A real `ferry receive` against a sender that pairs exactly like ferry
//! (SPAKE2 over a real server on loopback) and then names, as its
//! candidates, addresses on the receiver's own machine: a TCP listener and
//! a UDP socket of this test on 127.0.0.1. A peer elsewhere must not be
//! able to point the receiver at its own loopback services.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use ferry_proto::code::Code;
use ferry_proto::pairing::{Pairing, Role, SecureChannel};
use ferry_proto::peer::{Candidate, CandidateKind, NetworkHint, PeerToPeer, Transport};
use ferry_rendezvous::{SignalClient, SignalEvent};

const STEP: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_make_the_receiver_dial_loopback() {
    let server = Server::start();
    let tcp_trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let udp_trap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let (mut signal, _welcome) = SignalClient::connect(&server.addr).await.unwrap();
    let nameplate = signal.allocate().await.unwrap();
    let code = Code::generate(nameplate, &mut rand::thread_rng()).to_string();
    let out = tempfile::tempdir().unwrap();
    let _recv = start_receive(&server, &code, out.path(), &["--yes"]);
    let mut channel = pair(&mut signal, &code).await;
    // Paired: the server hands out the relay token once both sides asked,
    // and the receiver waits for that before it gathers and says hello.
    signal.request_relay_token().await.unwrap();

    // No server-observed candidate: a peer that says nothing of where the
    // server saw it is not known to be on this machine.
    let candidate = |addr, transport| Candidate {
        addr,
        transport,
        kind: CandidateKind::Host,
        priority: 1_000_000,
    };
    let hello = PeerToPeer::Hello {
        cert_fingerprint: "00".repeat(32),
        candidates: vec![
            candidate(tcp_trap.local_addr().unwrap(), Transport::Tcp),
            candidate(udp_trap.local_addr().unwrap(), Transport::Udp),
        ],
        network: NetworkHint::default(),
    };
    signal.send(channel.seal(&hello)).await.unwrap();
    // The receiver's own hello shows it got our candidates and is racing.
    loop {
        let event = tokio::time::timeout(STEP, signal.recv())
            .await
            .unwrap()
            .unwrap();
        if let SignalEvent::Message(body) = event {
            if let Ok(PeerToPeer::Hello { .. }) = channel.open(&body) {
                break;
            }
        }
    }
    let mut datagram = [0u8; 2048];
    tokio::select! {
        accepted = tcp_trap.accept() => {
            panic!("the receiver connected to a loopback address the peer named: {accepted:?}")
        }
        received = udp_trap.recv_from(&mut datagram) => {
            panic!("the receiver punched to a loopback address the peer named: {received:?}")
        }
        // Its TCP attempts start at once and its punching within
        // milliseconds of the hello; give it ample time on a busy machine.
        () = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
}

/// SPAKE2 and key confirmation as the sender, over the mailbox.
async fn pair(signal: &mut SignalClient, code: &str) -> SecureChannel {
    let mut pairing = Pairing::new(code, Role::Sender, "ferry/0.1.0");
    loop {
        while let Some(body) = pairing.poll_outbound() {
            signal.send(body).await.unwrap();
        }
        let event = tokio::time::timeout(STEP, signal.recv())
            .await
            .unwrap()
            .unwrap();
        if let SignalEvent::Message(body) = event {
            if let Some(channel) = pairing.handle_inbound(&body).unwrap() {
                while let Some(body) = pairing.poll_outbound() {
                    signal.send(body).await.unwrap();
                }
                return channel;
            }
        }
    }
}
