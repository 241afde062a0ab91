//! Attacks on the STUN responder over real sockets on loopback, with many
//! source addresses (127.0.0.0/8): a UDP flood from one source (answers
//! are larger than requests: an amplifier for a spoofed source) and one
//! source holding STUN-over-TCP connections.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ferry_nat::stun::{
    BindingOptions, BindingRequest, RetransmitConfig, StunServer, StunServerConfig, binding_tcp,
    binding_udp, encode_binding_request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::time::{Instant, timeout};

fn lo(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn start() -> (
    SocketAddr,
    Option<SocketAddr>,
    tokio::sync::oneshot::Sender<()>,
) {
    let server = StunServer::bind(StunServerConfig::new(SocketAddr::new(lo(1), 0)))
        .await
        .unwrap();
    let udp = server.udp_addrs()[0];
    let tcp = server.tcp_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (udp, tcp, stop)
}

fn request(n: u32) -> Vec<u8> {
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&n.to_be_bytes());
    encode_binding_request(id, &BindingRequest::default()).unwrap()
}

fn fast() -> BindingOptions {
    BindingOptions {
        retransmit: RetransmitConfig {
            rto: Duration::from_millis(200),
            max_sends: 5,
            last_wait_factor: 4,
        },
        ..Default::default()
    }
}

/// A flood of 2000 requests from one source gets at most its budget of
/// answers (40 at once, then 20 a second), not 2000; another source is
/// still answered during the flood.
#[tokio::test]
async fn udp_flood_from_one_source_gets_only_its_budget() {
    let (server, _, _stop) = start().await;
    let flood = UdpSocket::bind(SocketAddr::new(lo(2), 0)).await.unwrap();
    let started = Instant::now();
    for n in 0..2000u32 {
        flood.send_to(&request(n), server).await.unwrap();
        if n % 100 == 99 {
            // Let the server keep up, so its socket drops nothing itself.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Another source, mid-flood, is answered.
    let other = UdpSocket::bind(SocketAddr::new(lo(3), 0)).await.unwrap();
    let answer = binding_udp(&other, server, fast()).await.unwrap();
    assert_eq!(answer.mapped, other.local_addr().unwrap());

    // Count the flood's answers until 300 ms pass without one (at most 3 s).
    let mut answers = 0u32;
    let mut buf = [0u8; 2048];
    while started.elapsed() < Duration::from_secs(3) {
        match timeout(Duration::from_millis(300), flood.recv_from(&mut buf)).await {
            Ok(Ok(_)) => answers += 1,
            _ => break,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let budget = 40.0 + 20.0 * elapsed;
    assert!(
        answers >= 20,
        "the flooding source still gets some answers: {answers}"
    );
    assert!(
        f64::from(answers) <= budget + 1.0,
        "{answers} answers in {elapsed:.2} s, budget {budget:.0}"
    );
}

async fn tcp_from(from: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    timeout(Duration::from_secs(5), socket.connect(server))
        .await
        .unwrap()
        .unwrap()
}

/// One source may hold 8 STUN-over-TCP connections; the 9th is closed
/// unanswered, and another source is still answered.
#[tokio::test]
async fn tcp_connections_are_capped_per_source() {
    let (_, tcp, _stop) = start().await;
    let tcp = tcp.unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tcp_from(lo(2), tcp).await);
    }
    // The held ones are served: one answers a request.
    held[0].write_all(&request(1)).await.unwrap();
    let mut header = [0u8; 20];
    timeout(Duration::from_secs(5), held[0].read_exact(&mut header))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&header[..2], &[0x01, 0x01], "a Binding success response");

    let mut ninth = tcp_from(lo(2), tcp).await;
    let _ = ninth.write_all(&request(2)).await;
    let mut byte = [0u8; 1];
    let read = timeout(Duration::from_secs(5), ninth.read(&mut byte))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the 9th connection is closed: {read:?}"
    );

    let answer = binding_tcp(tcp, Some(SocketAddr::new(lo(3), 0)), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answer.mapped.ip(), lo(3));
}
