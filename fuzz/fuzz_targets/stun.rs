//! The STUN parsers: the server's `respond` (what anyone on the internet
//! can send to `ferry serve`, over UDP or framed over TCP) and the client's
//! `StunTransaction::handle_datagram` (what arrives on a gathering socket).
//!
//! Invariants: nothing panics; an answer goes back to the source, from one
//! of our own sockets, carries the request's transaction id and fits
//! `MAX_MESSAGE_LEN`; an answer to an RFC 8489 request is accepted by our
//! own client, which then reports the requester's address (or the 420 the
//! server chose); a client reports at most one result per transaction.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use ferry_nat::stun::{
    AltConfig, BindingRequest, HEADER_LEN, MAX_MESSAGE_LEN, RetransmitConfig, StunError,
    StunTransaction, framed_len, is_stun, respond,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let v4 = AltConfig {
        primary: addr("192.0.2.1:3478"),
        alternate: addr("192.0.2.2:3479"),
    };
    let v6 = AltConfig {
        primary: addr("[2001:db8::1]:3478"),
        alternate: addr("[2001:db8::2]:3479"),
    };
    let clients = [
        (addr("198.51.100.7:40000"), v4),
        (addr("[2001:db8:1::7]:40000"), v6),
    ];
    for (from, alt) in clients {
        for local in alt.sockets() {
            server(data, from, local, Some(alt));
        }
        server(data, from, alt.primary, None);
    }
    // A dual-stack socket sees IPv4 clients as IPv4-mapped IPv6.
    let mapped = addr("[::ffff:198.51.100.7]:40000");
    server(data, mapped, addr("[::]:3478"), None);
    server(data, mapped, addr("[::]:3478"), Some(v6));
    client(data);
    if let Some(len) = framed_len(data) {
        assert!(data.len() >= HEADER_LEN && len >= HEADER_LEN);
    }
});

fn server(request: &[u8], from: SocketAddr, local: SocketAddr, alt: Option<AltConfig>) {
    let Some(answer) = respond(request, from, local, alt) else {
        return;
    };
    assert_eq!(answer.dst, from, "answer not sent back to the source");
    let mut ours = vec![local];
    ours.extend(alt.iter().flat_map(|a| a.sockets()));
    assert!(
        ours.contains(&answer.send_from),
        "answer from a socket we do not have"
    );
    assert!(
        answer.payload.len() <= MAX_MESSAGE_LEN,
        "answer over MAX_MESSAGE_LEN"
    );
    assert!(request.len() >= HEADER_LEN, "answer to less than a header");
    assert_eq!(
        answer.payload[8..20],
        request[8..20],
        "answer lost the transaction id"
    );
    if !is_stun(request) {
        // A classic RFC 3489 request: our client never sends those.
        return;
    }
    assert!(
        is_stun(&answer.payload),
        "answer to an RFC 8489 request is not RFC 8489"
    );
    let id: [u8; 12] = request[8..20].try_into().expect("12 bytes");
    let now = Instant::now();
    let mut tx = StunTransaction::new(
        now,
        id,
        answer.send_from,
        BindingRequest::default(),
        RetransmitConfig::default(),
    )
    .expect("a Binding request encodes");
    assert!(tx.handle_datagram(now, answer.send_from, &answer.payload));
    match tx
        .poll_event()
        .expect("our client takes our server's answer")
    {
        Ok(result) => {
            let canonical = SocketAddr::new(from.ip().to_canonical(), from.port());
            assert_eq!(result.mapped, canonical, "server reported another address");
            assert!(!result.legacy);
        }
        Err(StunError::ErrorResponse { code, .. }) => assert_eq!(code, 420),
        Err(other) => panic!("our client refuses our server's answer: {other}"),
    }
}

fn client(datagram: &[u8]) {
    let id: [u8; 12] = datagram
        .get(8..20)
        .and_then(|id| id.try_into().ok())
        .unwrap_or([0; 12]);
    let server = addr("192.0.2.1:3478");
    let now = Instant::now();
    let mut tx = StunTransaction::new(
        now,
        id,
        server,
        BindingRequest::default(),
        RetransmitConfig::default(),
    )
    .expect("a Binding request encodes");
    assert!(tx.poll_transmit().is_some());
    let consumed = tx.handle_datagram(now, server, datagram);
    if !consumed {
        assert!(
            tx.poll_event().is_none(),
            "a result from a datagram that was not ours"
        );
        return;
    }
    let first = tx.poll_event();
    if first.is_some() {
        assert!(tx.is_done());
        assert!(tx.handle_datagram(now, server, datagram));
        assert!(tx.poll_event().is_none(), "two results for one transaction");
    }
    if let Some(Ok(result)) = first {
        assert_eq!(result.source, server);
        let _: IpAddr = result.mapped.ip();
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal address")
}
