//! The sans-IO STUN Binding responder.
//!
//! ```text
//! request bytes, from, local, alt  ->  respond()  ->  Some(Response { send_from, dst, payload })
//!                                                  or None (not a Binding request: drop silently)
//! ```
//!
//! Answers carry XOR-MAPPED-ADDRESS, MAPPED-ADDRESS (for RFC 3489 clients),
//! SOFTWARE and FINGERPRINT. With an [`AltConfig`] (RFC 5780: two IPs × two
//! ports = four sockets) they also carry RESPONSE-ORIGIN and OTHER-ADDRESS,
//! and CHANGE-REQUEST picks the socket to answer from.
//!
//! Decisions:
//! - CHANGE-REQUEST with a flag set, when the server has no alternate
//!   address (or the request arrived on a socket outside the configured
//!   four), gets error 420 (Unknown Attribute) listing CHANGE-REQUEST. This
//!   is what an RFC 8489 server that does not implement RFC 5780 answers
//!   (CHANGE-REQUEST is comprehension-required), and what coturn does when
//!   RFC 5780 is off; clients then know behaviour discovery is unavailable
//!   instead of silently getting an answer from the wrong address. A
//!   CHANGE-REQUEST with no flag set is simply answered.
//! - Other unknown comprehension-required attributes, and the RFC 5780
//!   RESPONSE-PORT and PADDING which we do not implement, also get 420.
//! - Non-STUN bytes, bad FINGERPRINT, responses, indications and methods
//!   other than Binding are dropped (`None`), logged at debug. Requests with
//!   MESSAGE-INTEGRITY are dropped too: this server has no credentials.
//! - Classic RFC 3489 requests (no magic cookie, a 128-bit transaction id;
//!   e.g. the `stun` client of the stun-client package) get a classic
//!   answer, encoded here by hand since stun-rs only speaks RFC 8489:
//!   MAPPED-ADDRESS, SOURCE-ADDRESS and, with an [`AltConfig`],
//!   CHANGED-ADDRESS; CHANGE-REQUEST picks the socket as above (and is
//!   ignored when there is no alternate address, as RFC 3489 servers did).
//! - An answer is larger than its request (3.4 times for a plain Binding,
//!   more with RFC 5780), so a spoofed source could aim the server at a
//!   victim. [`SourceLimiter`] gives each source bucket (one IPv4 address,
//!   one IPv6 /64) a budget of answers; over it, requests are dropped
//!   silently (logged at debug), as for any other unanswered packet.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_limits::{AddrBucket, Bucketing, RateTable};
use stun_rs::attributes::discovery::{ChangeRequest, ChangeRequestFlags, OtherAddress};
use stun_rs::attributes::discovery::{Padding, ResponseOrigin, ResponsePort};
use stun_rs::attributes::stun::{
    ErrorCode, Fingerprint, MappedAddress, Software, UnknownAttributes, XorMappedAddress,
};
use stun_rs::methods::BINDING;
use stun_rs::{MessageClass, StunAttribute, StunAttributeType, StunMessageBuilder};
use tracing::debug;

/// The SOFTWARE attribute our server sends.
pub const SOFTWARE: &str = concat!("ferry ", env!("CARGO_PKG_VERSION"));

/// The RFC 5780 server layout: sockets on `{primary.ip, alternate.ip} ×
/// {primary.port, alternate.port}`. Both IPs must differ and be of the same
/// family, and both ports must differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AltConfig {
    /// The primary address and port.
    pub primary: SocketAddr,
    /// The alternate address and port.
    pub alternate: SocketAddr,
}

impl AltConfig {
    /// Whether the layout is usable: different IPs of one family, different
    /// ports.
    pub fn is_valid(&self) -> bool {
        self.primary.ip() != self.alternate.ip()
            && self.primary.is_ipv4() == self.alternate.is_ipv4()
            && self.primary.port() != self.alternate.port()
    }

    /// The four server sockets: primary, primary IP + alternate port,
    /// alternate IP + primary port, alternate.
    pub fn sockets(&self) -> [SocketAddr; 4] {
        let (p, a) = (self.primary, self.alternate);
        [
            p,
            SocketAddr::new(p.ip(), a.port()),
            SocketAddr::new(a.ip(), p.port()),
            a,
        ]
    }

    /// The socket that differs from `local` in the IP (if `change_ip`) and
    /// in the port (if `change_port`), or `None` when `local` is not one of
    /// the four sockets.
    pub fn changed(
        &self,
        local: SocketAddr,
        change_ip: bool,
        change_port: bool,
    ) -> Option<SocketAddr> {
        let (p, a) = (self.primary, self.alternate);
        let ip = match local.ip() {
            ip if ip == p.ip() => (if change_ip { a } else { p }).ip(),
            ip if ip == a.ip() => (if change_ip { p } else { a }).ip(),
            _ => return None,
        };
        let port = match local.port() {
            port if port == p.port() => (if change_port { a } else { p }).port(),
            port if port == a.port() => (if change_port { p } else { a }).port(),
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }
}

/// An answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Which of the server's sockets must send it.
    pub send_from: SocketAddr,
    /// Where to send it (the request's source).
    pub dst: SocketAddr,
    /// The encoded STUN message.
    pub payload: Vec<u8>,
}

/// Answers one STUN request that arrived from `from` on our socket `local`.
/// See the module documentation for what is answered and how.
pub fn respond(
    request: &[u8],
    from: SocketAddr,
    local: SocketAddr,
    alt: Option<AltConfig>,
) -> Option<Response> {
    if let Some(response) = respond_rfc3489(request, from, local, alt) {
        return Some(response);
    }
    let msg = match super::decode(request) {
        Ok(msg) => msg,
        Err(why) => {
            debug!(%from, %why, "STUN server: dropping undecodable packet");
            return None;
        }
    };
    if msg.class() != MessageClass::Request || msg.method() != BINDING {
        debug!(%from, class = ?msg.class(), method = msg.method().as_u16(), "STUN server: dropping non-Binding-request");
        return None;
    }
    let id = *msg.transaction_id();
    // Report IPv4 clients of a dual-stack socket as IPv4.
    let from_canonical = SocketAddr::new(from.ip().to_canonical(), from.port());

    let mut unknown = UnknownAttributes::default();
    let mut change = None;
    for attr in msg.attributes() {
        match attr {
            StunAttribute::ChangeRequest(c) => change = Some(c.flags()),
            StunAttribute::Unknown(u) if u.attribute_type().is_comprehension_required() => {
                unknown.add(u.attribute_type().as_u16());
            }
            StunAttribute::ResponsePort(_) => unknown.add(ResponsePort::get_type().as_u16()),
            StunAttribute::Padding(_) => unknown.add(Padding::get_type().as_u16()),
            _ => {}
        }
    }

    let alt = alt.filter(|a| a.is_valid());
    let (change_ip, change_port) = change.map_or((false, false), |f| {
        (
            f.contains(ChangeRequestFlags::ChangeIp),
            f.contains(ChangeRequestFlags::ChangePort),
        )
    });
    let send_from = match alt.and_then(|a| a.changed(local, change_ip, change_port)) {
        Some(addr) => addr,
        None if change_ip || change_port => {
            unknown.add(ChangeRequest::get_type().as_u16());
            local
        }
        None => local,
    };

    let builder = if unknown.is_empty() {
        let mut b = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(id)
            .with_attribute(XorMappedAddress::from(from_canonical))
            .with_attribute(MappedAddress::from(from_canonical));
        if let Some(other) = alt.and_then(|a| a.changed(local, true, true)) {
            b = b
                .with_attribute(ResponseOrigin::from(send_from))
                .with_attribute(OtherAddress::from(other));
        }
        b
    } else {
        debug!(%from, unknown = ?unknown.attributes(), "STUN server: 420 for unknown attributes");
        let code = stun_rs::ErrorCode::new(420, "Unknown Attribute").ok()?;
        StunMessageBuilder::new(BINDING, MessageClass::ErrorResponse)
            .with_transaction_id(id)
            .with_attribute(ErrorCode::from(code))
            .with_attribute(unknown)
    };
    let software = Software::new(SOFTWARE).ok()?;
    let response = builder
        .with_attribute(software)
        .with_attribute(Fingerprint::default())
        .build();
    match super::encode(&response) {
        Ok(payload) => Some(Response {
            send_from,
            dst: from,
            payload,
        }),
        Err(why) => {
            debug!(%from, %why, "STUN server: cannot encode response");
            None
        }
    }
}

/// How many answers one source may get: a token bucket per address
/// bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// Answers per second per source bucket (default 20).
    pub rate: u32,
    /// Answers a source may get at once after a quiet spell (default 40).
    pub burst: u32,
    /// Which addresses count as one source (default: one IPv4 address,
    /// one IPv6 /64).
    pub bucketing: Bucketing,
    /// Sources remembered at once (default 65 536); when all of them are
    /// mid-budget, a new source is not answered until some have rested.
    pub max_sources: usize,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            rate: 20,
            burst: 40,
            bucketing: Bucketing::default(),
            max_sources: 65_536,
        }
    }
}

/// Decides, per request, whether its source still has budget for an
/// answer. Sans-IO: `now` is any monotonic time since a fixed origin.
#[derive(Debug)]
pub struct SourceLimiter {
    bucketing: Bucketing,
    table: RateTable<AddrBucket>,
}

impl SourceLimiter {
    /// A limiter with these limits and every source's budget full.
    pub fn new(limits: SourceLimits) -> Self {
        SourceLimiter {
            bucketing: limits.bucketing,
            table: RateTable::new(
                f64::from(limits.rate),
                f64::from(limits.burst),
                limits.max_sources,
            ),
        }
    }

    /// Whether a request from `from` at `now` may be answered (and takes
    /// one answer from its budget if so).
    pub fn allow(&mut self, from: SocketAddr, now: Duration) -> bool {
        let bucket = self.bucketing.bucket(from.ip());
        let allowed = self.table.allow(&bucket, now);
        if !allowed {
            debug!(%from, %bucket, "STUN server: source over its answer budget; dropping");
        }
        allowed
    }

    /// Forgets sources whose budget is full again; call now and then.
    pub fn forget_rested(&mut self, now: Duration) {
        self.table.forget_full(now);
    }
}

/// RFC 3489 attribute types.
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_CHANGE_REQUEST: u16 = 0x0003;
const ATTR_SOURCE_ADDRESS: u16 = 0x0004;
const ATTR_CHANGED_ADDRESS: u16 = 0x0005;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// Answers a classic RFC 3489 Binding request (no magic cookie); `None` for
/// anything else, which then goes to the RFC 8489 path.
fn respond_rfc3489(
    request: &[u8],
    from: SocketAddr,
    local: SocketAddr,
    alt: Option<AltConfig>,
) -> Option<Response> {
    if request.len() < 20 || request[4..8] == MAGIC_COOKIE || request[0..2] != [0x00, 0x01] {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([request[2], request[3]]));
    if length % 4 != 0 || request.len() != 20 + length {
        return None;
    }
    let mut change = 0u32;
    let mut attrs = &request[20..];
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let value = attrs.get(4..4 + len)?;
        if kind == ATTR_CHANGE_REQUEST && len == 4 {
            change = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
        }
        attrs = attrs.get(4 + len.next_multiple_of(4)..).unwrap_or_default();
    }
    let (change_ip, change_port) = (change & 0x4 != 0, change & 0x2 != 0);
    let alt = alt.filter(|a| a.is_valid());
    let send_from = alt
        .and_then(|a| a.changed(local, change_ip, change_port))
        .unwrap_or(local);
    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
    let (SocketAddr::V4(mapped), SocketAddr::V4(source)) = (from, send_from) else {
        return None; // RFC 3489 is IPv4 only
    };
    let mut body = Vec::with_capacity(36);
    let mut put = |kind: u16, addr: std::net::SocketAddrV4| {
        body.extend_from_slice(&kind.to_be_bytes());
        body.extend_from_slice(&8u16.to_be_bytes());
        body.extend_from_slice(&[0, 1]);
        body.extend_from_slice(&addr.port().to_be_bytes());
        body.extend_from_slice(&addr.ip().octets());
    };
    put(ATTR_MAPPED_ADDRESS, mapped);
    put(ATTR_SOURCE_ADDRESS, source);
    if let Some(SocketAddr::V4(changed)) = alt.and_then(|a| a.changed(local, true, true)) {
        put(ATTR_CHANGED_ADDRESS, changed);
    }
    let mut payload = Vec::with_capacity(20 + body.len());
    payload.extend_from_slice(&[0x01, 0x01]);
    payload.extend_from_slice(&u16::try_from(body.len()).ok()?.to_be_bytes());
    payload.extend_from_slice(&request[4..20]);
    payload.extend_from_slice(&body);
    Some(Response {
        send_from,
        dst: from,
        payload,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn classic_rfc3489_request_gets_classic_answer() {
        use std::net::{Ipv4Addr, SocketAddrV4};
        let v4 = |a, b, c, d, p| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), p));
        let alt = AltConfig {
            primary: v4(203, 0, 113, 10, 3478),
            alternate: v4(203, 0, 113, 11, 3479),
        };
        // Binding request, 8 bytes of attributes: CHANGE-REQUEST change IP + port.
        let mut request = vec![0x00, 0x01, 0x00, 0x08];
        request.extend_from_slice(&[7u8; 16]);
        request.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 6]);
        let from = v4(198, 51, 100, 2, 40000);
        let response = super::respond(&request, from, alt.primary, Some(alt)).unwrap();
        assert_eq!(response.send_from, v4(203, 0, 113, 11, 3479));
        assert_eq!(response.dst, from);
        let mut want = vec![0x01, 0x01, 0x00, 36];
        want.extend_from_slice(&[7u8; 16]);
        want.extend_from_slice(&[0, 1, 0, 8, 0, 1, 0x9c, 0x40, 198, 51, 100, 2]);
        want.extend_from_slice(&[0, 4, 0, 8, 0, 1, 0x0d, 0x97, 203, 0, 113, 11]);
        want.extend_from_slice(&[0, 5, 0, 8, 0, 1, 0x0d, 0x97, 203, 0, 113, 11]);
        assert_eq!(response.payload, want);
        // Without the alternate address: answered from where it came, no CHANGED-ADDRESS.
        let response = super::respond(&request, from, alt.primary, None).unwrap();
        assert_eq!(response.send_from, alt.primary);
        assert_eq!(response.payload.len(), 20 + 24);
        // A truncated classic request is dropped.
        assert!(super::respond(&request[..24], from, alt.primary, None).is_none());
    }

    use super::*;
    use crate::stun::{BindingRequest, encode_binding_request};

    const ID: [u8; 12] = [0xA0; 12];

    fn client() -> SocketAddr {
        "198.51.100.7:40000".parse().unwrap()
    }
    fn alt() -> AltConfig {
        AltConfig {
            primary: "192.0.2.1:3478".parse().unwrap(),
            alternate: "192.0.2.2:3479".parse().unwrap(),
        }
    }
    fn req(change_ip: bool, change_port: bool) -> Vec<u8> {
        encode_binding_request(
            ID,
            &BindingRequest {
                change_ip,
                change_port,
            },
        )
        .unwrap()
    }

    /// Splits a message into (type, value) attributes, checking lengths.
    fn attrs(msg: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let len = usize::from(u16::from_be_bytes([msg[2], msg[3]]));
        assert_eq!(msg.len(), 20 + len);
        let mut out = vec![];
        let mut i = 20;
        while i < msg.len() {
            let t = u16::from_be_bytes([msg[i], msg[i + 1]]);
            let l = usize::from(u16::from_be_bytes([msg[i + 2], msg[i + 3]]));
            out.push((t, msg[i + 4..i + 4 + l].to_vec()));
            i += 4 + l.div_ceil(4) * 4;
        }
        out
    }

    fn addr_value(addr: SocketAddr) -> Vec<u8> {
        let mut v = vec![0, 1];
        v.extend_from_slice(&addr.port().to_be_bytes());
        match addr.ip() {
            std::net::IpAddr::V4(ip) => v.extend_from_slice(&ip.octets()),
            std::net::IpAddr::V6(_) => unreachable!(),
        }
        v
    }

    fn types(msg: &[u8]) -> Vec<u16> {
        attrs(msg).into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn plain_binding_answer_bytes() {
        let local: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let r = respond(&req(false, false), client(), local, None).unwrap();
        assert_eq!(r.send_from, local);
        assert_eq!(r.dst, client());
        let p = &r.payload;
        // Binding success response, cookie, our transaction id.
        assert_eq!(&p[..2], &[0x01, 0x01]);
        assert_eq!(&p[4..8], &[0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(&p[8..20], &ID);
        let a = attrs(p);
        assert_eq!(types(p), vec![0x0020, 0x0001, 0x8022, 0x8028]);
        // XOR-MAPPED-ADDRESS: port ^ 0x2112, address ^ cookie.
        let port = 40000u16 ^ 0x2112;
        let ip = u32::from_be_bytes([198, 51, 100, 7]) ^ 0x2112_a442;
        let mut xor = vec![0, 1];
        xor.extend_from_slice(&port.to_be_bytes());
        xor.extend_from_slice(&ip.to_be_bytes());
        assert_eq!(a[0].1, xor);
        assert_eq!(a[1].1, addr_value(client()));
        assert_eq!(a[2].1, SOFTWARE.as_bytes());
        // FINGERPRINT = CRC-32 of everything before it, xor 0x5354554e.
        let n = p.len();
        let crc = crc32(&p[..n - 8]) ^ 0x5354_554e;
        assert_eq!(a[3].1, crc.to_be_bytes());
    }

    /// Bitwise CRC-32 (ISO HDLC), written out so the test does not trust
    /// the library it checks.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn rfc5780_answers_carry_origin_and_other_address() {
        let alt = alt();
        for local in alt.sockets() {
            let r = respond(&req(false, false), client(), local, Some(alt)).unwrap();
            assert_eq!(r.send_from, local);
            let a = attrs(&r.payload);
            assert_eq!(
                types(&r.payload),
                vec![0x0020, 0x0001, 0x802b, 0x802c, 0x8022, 0x8028]
            );
            assert_eq!(a[2].1, addr_value(local), "RESPONSE-ORIGIN");
            let other = alt.changed(local, true, true).unwrap();
            assert_ne!(other.ip(), local.ip());
            assert_ne!(other.port(), local.port());
            assert_eq!(a[3].1, addr_value(other), "OTHER-ADDRESS");
        }
    }

    #[test]
    fn change_request_picks_the_sending_socket() {
        let alt = alt();
        let p: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let cases = [
            (false, false, "192.0.2.1:3478"),
            (true, false, "192.0.2.2:3478"),
            (false, true, "192.0.2.1:3479"),
            (true, true, "192.0.2.2:3479"),
        ];
        for (ip, port, expected) in cases {
            let r = respond(&req(ip, port), client(), p, Some(alt)).unwrap();
            let expected: SocketAddr = expected.parse().unwrap();
            assert_eq!(r.send_from, expected, "change ip {ip} port {port}");
            assert_eq!(
                attrs(&r.payload)[2].1,
                addr_value(expected),
                "RESPONSE-ORIGIN"
            );
            // OTHER-ADDRESS is relative to where the request arrived.
            assert_eq!(
                attrs(&r.payload)[3].1,
                addr_value("192.0.2.2:3479".parse().unwrap())
            );
        }
        // From the alternate socket, change-ip goes back to the primary IP.
        let a: SocketAddr = "192.0.2.2:3479".parse().unwrap();
        let r = respond(&req(true, false), client(), a, Some(alt)).unwrap();
        assert_eq!(r.send_from, "192.0.2.1:3479".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn change_request_without_alternate_gets_420() {
        let local: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        for (ip, port) in [(true, false), (false, true), (true, true)] {
            let r = respond(&req(ip, port), client(), local, None).unwrap();
            assert_eq!(r.send_from, local);
            assert_eq!(&r.payload[..2], &[0x01, 0x11], "Binding error response");
            let a = attrs(&r.payload);
            assert_eq!(types(&r.payload), vec![0x0009, 0x000a, 0x8022, 0x8028]);
            // ERROR-CODE: class 4, number 20.
            assert_eq!(&a[0].1[..4], &[0, 0, 4, 20]);
            assert_eq!(
                a[1].1,
                vec![0x00, 0x03],
                "UNKNOWN-ATTRIBUTES lists CHANGE-REQUEST"
            );
        }
        // A socket outside the configured four cannot honour it either.
        let stray: SocketAddr = "192.0.2.9:3478".parse().unwrap();
        let r = respond(&req(true, false), client(), stray, Some(alt())).unwrap();
        assert_eq!(&r.payload[..2], &[0x01, 0x11]);
    }

    #[test]
    fn unknown_comprehension_required_attribute_gets_420() {
        // Binding request with attribute 0x7777 (comprehension-required).
        let mut m = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
        m.extend_from_slice(&ID);
        m.extend_from_slice(&[0x77, 0x77, 0x00, 0x04, 1, 2, 3, 4]);
        let local: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let r = respond(&m, client(), local, None).unwrap();
        let a = attrs(&r.payload);
        assert_eq!(&r.payload[..2], &[0x01, 0x11]);
        assert_eq!(a[1].1, vec![0x77, 0x77]);
        // An unknown comprehension-optional attribute (0xC001) is ignored.
        m[20] = 0xC0;
        m[21] = 0x01;
        let r = respond(&m, client(), local, None).unwrap();
        assert_eq!(&r.payload[..2], &[0x01, 0x01]);
    }

    #[test]
    fn non_stun_and_non_requests_are_dropped() {
        let local: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        assert!(respond(b"GET / HTTP/1.1\r\n\r\n", client(), local, None).is_none());
        assert!(respond(&[], client(), local, None).is_none());
        let good = req(false, false);
        assert!(respond(&good[..good.len() - 1], client(), local, None).is_none());
        // A success response (e.g. reflected back at us) is not answered.
        let resp = respond(&good, client(), local, None).unwrap().payload;
        assert!(respond(&resp, client(), local, None).is_none());
        // A bad FINGERPRINT is dropped.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(respond(&bad, client(), local, None).is_none());
        // Another method (Allocate = 0x003) is not ours.
        let mut alloc = good.clone();
        alloc[1] = 0x03;
        let n = alloc.len();
        let crc = crc32(&alloc[..n - 8]) ^ 0x5354_554e;
        alloc[n - 4..].copy_from_slice(&crc.to_be_bytes());
        assert!(respond(&alloc, client(), local, None).is_none());
        // Oversized input is refused before decoding.
        let mut huge = good.clone();
        huge.resize(crate::stun::MAX_MESSAGE_LEN + 1, 0);
        assert!(respond(&huge, client(), local, None).is_none());
    }

    #[test]
    fn rfc3489_request_without_fingerprint_is_answered() {
        let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        m.extend_from_slice(&ID);
        let local: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let r = respond(&m, client(), local, None).unwrap();
        assert_eq!(attrs(&r.payload)[1], (0x0001, addr_value(client())));
    }

    #[test]
    fn ipv4_mapped_client_is_reported_as_ipv4() {
        let local: SocketAddr = "[::]:3478".parse().unwrap();
        let from: SocketAddr = "[::ffff:198.51.100.7]:40000".parse().unwrap();
        let r = respond(&req(false, false), from, local, None).unwrap();
        assert_eq!(r.dst, from);
        assert_eq!(attrs(&r.payload)[1].1, addr_value(client()));
    }

    #[test]
    fn alt_config_validation() {
        assert!(alt().is_valid());
        let same_ip = AltConfig {
            primary: "192.0.2.1:3478".parse().unwrap(),
            alternate: "192.0.2.1:3479".parse().unwrap(),
        };
        assert!(!same_ip.is_valid());
        let same_port = AltConfig {
            primary: "192.0.2.1:3478".parse().unwrap(),
            alternate: "192.0.2.2:3478".parse().unwrap(),
        };
        assert!(!same_port.is_valid());
        let mixed = AltConfig {
            primary: "192.0.2.1:3478".parse().unwrap(),
            alternate: "[2001:db8::1]:3479".parse().unwrap(),
        };
        assert!(!mixed.is_valid());
    }

    #[test]
    fn source_limiter_gives_each_source_its_budget() {
        let mut limiter = SourceLimiter::new(SourceLimits {
            rate: 20,
            burst: 40,
            ..SourceLimits::default()
        });
        let flood: SocketAddr = "198.51.100.7:1000".parse().unwrap();
        let same_64: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let other_in_64: SocketAddr = "[2001:db8::ffff:2]:2".parse().unwrap();
        let t0 = Duration::from_secs(100);
        let answered = (0..1000).filter(|_| limiter.allow(flood, t0)).count();
        assert_eq!(answered, 40);
        // Another port of the same address is the same source.
        assert!(!limiter.allow("198.51.100.7:2000".parse().unwrap(), t0));
        // Another source is unaffected.
        assert!(limiter.allow("198.51.100.8:1000".parse().unwrap(), t0));
        // One second later: 20 more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..1000).filter(|_| limiter.allow(flood, t1)).count(), 20);
        // An IPv6 /64 is one source.
        assert_eq!((0..100).filter(|_| limiter.allow(same_64, t0)).count(), 40);
        assert!(!limiter.allow(other_in_64, t0));
    }
}
