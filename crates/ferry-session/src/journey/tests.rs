//! Both ends of the trickle over a real rendezvous server on loopback: one
//! side is ferry's own journey, the other a peer made by hand from
//! ferry-proto's pairing, so the test sees every sealed message.

use std::net::{Ipv4Addr, SocketAddr};

use ferry_connect::race::NOMINATION;
use ferry_connect::{DirectListener, Identity};
use ferry_proto::pairing::Pairing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::time::timeout;

use super::*;

const STEP: Duration = Duration::from_secs(15);

/// A rendezvous server on loopback (no relay, no STUN).
async fn server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(ferry_rendezvous::serve(
        listener,
        ferry_rendezvous::ServerConfig::default(),
        std::future::pending(),
    ));
    addr
}

/// The hand-made peer: pairs as `role`, listing the candidates feature.
async fn pair_by_hand(signal: &mut SignalClient, code: &str, role: Role) -> SecureChannel {
    let mut pairing = Pairing::new(code, role, "ferry-test/1").with_features(&[FEATURE_CANDIDATES]);
    loop {
        while let Some(body) = pairing.poll_outbound() {
            signal.send(body).await.unwrap();
        }
        let event = timeout(STEP, signal.recv()).await.unwrap().unwrap();
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

/// The next sealed message from the peer.
async fn next_message(signal: &mut SignalClient, channel: &mut SecureChannel) -> PeerToPeer {
    loop {
        let event = timeout(STEP, signal.recv()).await.unwrap().unwrap();
        if let SignalEvent::Message(body) = event {
            return channel.open(&body).unwrap();
        }
    }
}

fn candidate(addr: SocketAddr, transport: Transport, kind: CandidateKind) -> Candidate {
    Candidate {
        addr,
        transport,
        kind,
        priority: ferry_connect::priority::of(ferry_connect::priority::Origin::Upnp, transport),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_says_hello_before_upnp_is_done_and_sends_the_mapping_after() {
    let server = server().await;
    let (mut signal, welcome) = connect_signal(&server, None).await.unwrap();
    let nameplate = signal.allocate().await.unwrap();
    let code = Code::generate(nameplate, &mut rand::thread_rng());
    let mapped: SocketAddr = "198.51.100.2:41000".parse().unwrap();

    // The sender's UPnP mapping finishes only once the receiver holds the
    // sender's hello: a hello that waited for it would go out without it,
    // and no late candidates would follow.
    let (hello_seen, hello_seen_here) = oneshot::channel::<()>();
    let sender_code = code.clone();
    let sender_server = server.clone();
    let sender = tokio::spawn(async move {
        match timeout(STEP, signal.recv()).await.unwrap().unwrap() {
            SignalEvent::PeerJoined => {}
            other => panic!("{other:?}"),
        }
        let (signal, mut channel) = pair(signal, &sender_code, Role::Sender).await.unwrap();
        let gathering: Gathering = tokio::spawn(async move {
            let mut gathered =
                gather(ferry_nat::interfaces(), false, &[], None, true, false).await?;
            gathered.upnp = Some(tokio::spawn(async move {
                let _ = hello_seen_here.await;
                Some(Mapped {
                    candidates: vec![candidate(mapped, Transport::Tcp, CandidateKind::Upnp)],
                    guard: None,
                })
            }));
            Ok(gathered)
        });
        run_session(
            &sender_server,
            signal,
            &mut channel,
            welcome,
            gathering,
            SessionOptions::default(),
            true,
            Instant::now(),
            true,
        )
        .await
    });

    let (mut peer, _) = SignalClient::connect(&server).await.unwrap();
    peer.claim(nameplate).await.unwrap();
    let mut channel = pair_by_hand(&mut peer, &code.to_string(), Role::Receiver).await;
    peer.request_relay_token().await.unwrap();
    let PeerToPeer::Hello {
        cert_fingerprint,
        candidates,
        ..
    } = next_message(&mut peer, &mut channel).await
    else {
        panic!("no hello first")
    };
    assert!(
        candidates.iter().all(|c| c.kind != CandidateKind::Upnp),
        "the hello came before UPnP was done: {candidates:?}"
    );
    hello_seen.send(()).unwrap();
    let identity = Identity::generate().unwrap();
    let hello = PeerToPeer::Hello {
        cert_fingerprint: identity.fingerprint(),
        candidates: Vec::new(),
        network: NetworkHint::default(),
    };
    peer.send(channel.seal(&hello)).await.unwrap();
    let late = loop {
        match next_message(&mut peer, &mut channel).await {
            PeerToPeer::Candidates { candidates } => break candidates,
            other => debug!(?other, "before the late candidates"),
        }
    };
    assert_eq!(
        late,
        [candidate(mapped, Transport::Tcp, CandidateKind::Upnp)]
    );

    // The race goes on: connect to the sender's listener and be chosen.
    let targets: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| c.transport == Transport::Tcp && c.kind == CandidateKind::Host)
        .filter(|c| c.addr.ip() == Ipv4Addr::LOCALHOST)
        .collect();
    let connector = ferry_connect::tls_connector(&identity, &cert_fingerprint).unwrap();
    let (mut tls, _) = ferry_connect::connect_first(&targets, &connector, STEP)
        .await
        .unwrap();
    let mut word = [0u8; NOMINATION.len()];
    timeout(STEP, tls.read_exact(&mut word))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&word, NOMINATION);
    let link = timeout(STEP, sender).await.unwrap().unwrap().unwrap();
    assert_eq!(link.path, PathKind::Lan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_tries_the_candidates_the_sender_sends_late() {
    let server = server().await;
    let (mut signal, welcome) = SignalClient::connect(&server).await.unwrap();
    let nameplate = signal.allocate().await.unwrap();
    let code = Code::generate(nameplate, &mut rand::thread_rng());
    let receiver = {
        let (server, code) = (server.clone(), code.clone());
        tokio::spawn(async move { receive(&server, &code, SessionOptions::default()).await })
    };
    match timeout(STEP, signal.recv()).await.unwrap().unwrap() {
        SignalEvent::PeerJoined => {}
        other => panic!("{other:?}"),
    }
    let mut channel = pair_by_hand(&mut signal, &code.to_string(), Role::Sender).await;
    signal.request_relay_token().await.unwrap();

    // The hello names nothing the receiver can reach: our signalling
    // connection (both on loopback, so loopback candidates count) and a
    // UDP socket that never answers, which keeps its punch running.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let identity = Identity::generate().unwrap();
    let hello = PeerToPeer::Hello {
        cert_fingerprint: identity.fingerprint(),
        candidates: vec![
            candidate(
                welcome.observed_addr,
                Transport::Tcp,
                CandidateKind::ServerObserved,
            ),
            candidate(
                silent.local_addr().unwrap(),
                Transport::Udp,
                CandidateKind::Host,
            ),
        ],
        network: NetworkHint::default(),
    };
    signal.send(channel.seal(&hello)).await.unwrap();
    let receiver_fingerprint = loop {
        match next_message(&mut signal, &mut channel).await {
            PeerToPeer::Hello {
                cert_fingerprint, ..
            } => break cert_fingerprint,
            other => debug!(?other, "before the receiver's hello"),
        }
    };

    // Then, as if UPnP had just finished: a TCP listener and a UDP socket.
    let listener = DirectListener::bind().await.unwrap();
    let tcp: SocketAddr = (Ipv4Addr::LOCALHOST, listener.port()).into();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let late = PeerToPeer::Candidates {
        candidates: vec![
            candidate(tcp, Transport::Tcp, CandidateKind::Upnp),
            candidate(
                udp.local_addr().unwrap(),
                Transport::Udp,
                CandidateKind::Upnp,
            ),
        ],
    };
    signal.send(channel.seal(&late)).await.unwrap();

    // The running punch probes the late UDP address too.
    let mut probe = [0u8; 64];
    let (len, _) = timeout(STEP, udp.recv_from(&mut probe))
        .await
        .expect("a probe to the late UDP candidate")
        .unwrap();
    assert_eq!(len, ferry_connect::punch::PROBE_LEN);
    // And the late TCP address gets a connection, which we choose.
    let acceptor = ferry_connect::tls_acceptor(&identity, &receiver_fingerprint).unwrap();
    let (mut tls, _) = listener.accept(&acceptor, STEP).await.unwrap();
    tls.write_all(NOMINATION).await.unwrap();
    tls.flush().await.unwrap();
    let link = timeout(STEP, receiver).await.unwrap().unwrap().unwrap();
    assert_eq!(link.path, PathKind::Lan);
    assert_eq!(link.remote, tcp, "the late candidate carried the transfer");
}
