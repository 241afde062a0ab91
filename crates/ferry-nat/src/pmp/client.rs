//! The sans-IO client: one mapping request (create, renew or delete) as a
//! state machine. Time and the nonce are arguments; no sockets here.
//!
//! ```text
//! start at PCP (or at the version that made the mapping):
//!   Pcp          --PCP MAP-->            gateway:5351
//!                <--MAP SUCCESS, our nonce/protocol/port--   done
//!                <--UNSUPP_VERSION (PCP or NAT-PMP form)--   NAT-PMP at once
//!                silence after the last retransmission:      NAT-PMP
//!   PmpExternal  --external address request-->     (creates only: NAT-PMP's
//!                <--external address--               map answer has no address)
//!   PmpMap       --map request-->
//!                <--map answer, our protocol/port--          done
//! each step: sends at 0, 250 ms, 750 ms, ... (doubling), `max_sends` in all,
//! then waits one more doubled interval; any other result code ends it.
//! ```
//!
//! Every datagram is hostile until proven ours: it must come from the
//! gateway's port 5351, decode, and echo our opcode, protocol, port and
//! (PCP) nonce; anything else is ignored (logged at debug). A success with
//! an unusable external address (unspecified, multicast, IPv6) ends the
//! request with an error; a private or CGNAT one is returned, classified.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use tracing::debug;

use super::PmpError;
use super::codec::{
    ClientToServer, NONCE_LEN, PcpResult, PmpResult, SERVER_PORT, ServerToClient, Version,
};
use crate::addr::{self, AddrClass};
use crate::drive::{Transmit, UdpMachine};
use crate::upnp::Protocol;

/// The retransmission schedule of one step (RFC 6886 section 3.1: 250 ms,
/// doubling; bounded here so a silent gateway costs little).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retransmit {
    /// The first wait.
    pub initial: Duration,
    /// Sends per step (at least 1).
    pub max_sends: u32,
}

impl Default for Retransmit {
    /// 250 ms doubling, 3 sends: a silent step gives up after 1.75 s.
    fn default() -> Self {
        Retransmit {
            initial: Duration::from_millis(250),
            max_sends: 3,
        }
    }
}

/// A port mapping granted by a NAT-PMP or PCP gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// UDP or TCP.
    pub protocol: Protocol,
    /// Our port.
    pub internal_port: u16,
    /// The external address and port (unspecified in a delete's answer).
    pub external: SocketAddrV4,
    /// The external address's class: anything but public (or the lab's
    /// documentation ranges) means another NAT above the gateway.
    pub external_class: AddrClass,
    /// How long the gateway keeps it; zero after a delete.
    pub lifetime: Duration,
    /// Which protocol made it (renewals and the delete use the same).
    pub version: Version,
    /// The PCP nonce that names it.
    pub nonce: [u8; NONCE_LEN],
}

/// What to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The gateway (its port 5351 is used).
    pub gateway: Ipv4Addr,
    /// Our address on the gateway's LAN (PCP checks it).
    pub client_ip: Ipv4Addr,
    /// UDP or TCP.
    pub protocol: Protocol,
    /// Our port.
    pub internal_port: u16,
    /// The external address and port we would like (unspecified: any).
    pub suggested: SocketAddrV4,
    /// Seconds wanted; zero deletes.
    pub lifetime: u32,
    /// Names the mapping (PCP); repeat it to renew or delete.
    pub nonce: [u8; NONCE_LEN],
    /// The version to try first: PCP, or what made the mapping.
    pub start: Version,
    /// Retransmissions per step.
    pub retransmit: Retransmit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Pcp,
    PmpExternal,
    PmpMap { external_ip: Ipv4Addr },
}

/// One mapping request as a [`UdpMachine`]: its output is the mapping
/// granted (or, for a delete, confirmed with lifetime zero).
#[derive(Debug)]
pub struct MapClient {
    request: Request,
    step: Step,
    sends: u32,
    wait: Duration,
    deadline: Instant,
    queued: Option<Transmit>,
    output: Option<Result<Mapping, PmpError>>,
    /// An output was made (and may have been taken).
    done: bool,
    started: Instant,
}

impl MapClient {
    /// Starts the request at `now`; the first datagram is queued.
    pub fn new(now: Instant, request: Request) -> MapClient {
        let step = match request.start {
            Version::Pcp => Step::Pcp,
            Version::NatPmp => Self::first_pmp_step(&request),
        };
        let mut client = MapClient {
            request,
            step,
            sends: 0,
            wait: request.retransmit.initial,
            deadline: now,
            queued: None,
            output: None,
            done: false,
            started: now,
        };
        client.enter(now, step);
        client
    }

    fn first_pmp_step(request: &Request) -> Step {
        if request.lifetime == 0 {
            // A delete needs no external address.
            Step::PmpMap {
                external_ip: Ipv4Addr::UNSPECIFIED,
            }
        } else {
            Step::PmpExternal
        }
    }

    fn gateway(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.request.gateway, SERVER_PORT))
    }

    fn enter(&mut self, now: Instant, step: Step) {
        self.step = step;
        self.sends = 0;
        self.wait = self.request.retransmit.initial;
        self.send(now);
    }

    fn send(&mut self, now: Instant) {
        let r = &self.request;
        let message = match self.step {
            Step::Pcp => ClientToServer::PcpMap {
                lifetime: r.lifetime,
                client_ip: r.client_ip,
                nonce: r.nonce,
                protocol: r.protocol,
                internal_port: r.internal_port,
                suggested_external_port: r.suggested.port(),
                suggested_external_ip: *r.suggested.ip(),
            },
            Step::PmpExternal => ClientToServer::PmpExternalAddress,
            Step::PmpMap { .. } => ClientToServer::PmpMap {
                protocol: r.protocol,
                internal_port: r.internal_port,
                // RFC 6886 section 3.4: a delete names external port 0.
                suggested_external_port: if r.lifetime == 0 {
                    0
                } else {
                    r.suggested.port()
                },
                lifetime: r.lifetime,
            },
        };
        self.queued = Some(Transmit {
            dst: self.gateway(),
            payload: message.encode(),
        });
        self.sends += 1;
        self.deadline = now + self.wait;
        self.wait = self.wait.saturating_mul(2);
    }

    fn finish(&mut self, result: Result<Mapping, PmpError>) {
        self.queued = None;
        self.output = Some(result);
        self.done = true;
    }

    fn fall_back(&mut self, now: Instant, why: &str) {
        debug!(gateway = %self.gateway(), "PCP: {why}; trying NAT-PMP");
        let step = Self::first_pmp_step(&self.request);
        self.enter(now, step);
    }

    fn refused(&mut self, version: Version, code: u16, name: &'static str) {
        let gateway = self.gateway();
        self.finish(Err(PmpError::Refused {
            gateway,
            version,
            code,
            name,
        }));
    }

    fn granted(&mut self, version: Version, external: SocketAddrV4, lifetime: u32) {
        let r = &self.request;
        let deleting = r.lifetime == 0;
        if !deleting {
            let ip = *external.ip();
            let class = addr::classify(IpAddr::V4(ip));
            if matches!(
                class,
                AddrClass::Unspecified | AddrClass::Multicast | AddrClass::Broadcast
            ) {
                let gateway = self.gateway();
                return self.finish(Err(PmpError::NoExternalAddress {
                    gateway,
                    ip: IpAddr::V4(ip),
                }));
            }
            if external.port() == 0 || lifetime == 0 {
                let gateway = self.gateway();
                return self.finish(Err(PmpError::BadAnswer {
                    gateway,
                    reason: "a mapping with external port 0 or no lifetime",
                }));
            }
        }
        let mapping = Mapping {
            protocol: r.protocol,
            internal_port: r.internal_port,
            external,
            external_class: addr::classify(IpAddr::V4(*external.ip())),
            lifetime: Duration::from_secs(u64::from(if deleting { 0 } else { lifetime })),
            version,
            nonce: r.nonce,
        };
        self.finish(Ok(mapping));
    }

    fn on_response(&mut self, now: Instant, response: ServerToClient) {
        let r = self.request;
        match (self.step, response) {
            // A NAT-PMP server's answer to PCP, in either length.
            (
                Step::Pcp,
                ServerToClient::PmpError {
                    result: PmpResult::UNSUPPORTED_VERSION,
                    ..
                }
                | ServerToClient::PmpMap {
                    result: PmpResult::UNSUPPORTED_VERSION,
                    ..
                }
                | ServerToClient::PmpExternalAddress {
                    result: PmpResult::UNSUPPORTED_VERSION,
                    ..
                }
                | ServerToClient::PcpMap {
                    result: PcpResult::UNSUPP_VERSION,
                    ..
                }
                | ServerToClient::PcpOther {
                    result: PcpResult::UNSUPP_VERSION,
                    ..
                },
            ) => self.fall_back(now, "the gateway does not speak it"),
            (
                Step::Pcp,
                ServerToClient::PcpMap {
                    result,
                    lifetime,
                    map,
                    ..
                },
            ) => {
                match map {
                    Some(map)
                        if map.nonce == r.nonce
                            && map.protocol() == Some(r.protocol)
                            && map.internal_port == r.internal_port => {}
                    // A header-only error names no mapping: it answers
                    // the one request we have out.
                    None if result != PcpResult::SUCCESS => {}
                    _ => return debug!("PCP: an answer for another mapping; ignored"),
                }
                if result != PcpResult::SUCCESS {
                    return self.refused(Version::Pcp, result.0.into(), result.name());
                }
                let Some(map) = map else { return };
                let Some(ip) = map.external_ip.to_ipv4_mapped() else {
                    let gateway = self.gateway();
                    return self.finish(Err(PmpError::NoExternalAddress {
                        gateway,
                        ip: IpAddr::V6(map.external_ip),
                    }));
                };
                self.granted(
                    Version::Pcp,
                    SocketAddrV4::new(ip, map.external_port),
                    lifetime,
                );
            }
            (
                Step::PmpExternal,
                ServerToClient::PmpExternalAddress {
                    result,
                    external_ip,
                    ..
                },
            ) => {
                if result != PmpResult::SUCCESS {
                    return self.refused(Version::NatPmp, result.0, result.name());
                }
                if addr::classify(IpAddr::V4(external_ip)) == AddrClass::Unspecified {
                    let gateway = self.gateway();
                    return self.finish(Err(PmpError::NoExternalAddress {
                        gateway,
                        ip: IpAddr::V4(external_ip),
                    }));
                }
                self.enter(now, Step::PmpMap { external_ip });
            }
            (
                Step::PmpExternal,
                ServerToClient::PmpError {
                    opcode: 0, result, ..
                },
            ) => self.refused(Version::NatPmp, result.0, result.name()),
            (
                Step::PmpMap { external_ip },
                ServerToClient::PmpMap {
                    protocol,
                    result,
                    internal_port,
                    external_port,
                    lifetime,
                    ..
                },
            ) => {
                if protocol != r.protocol || internal_port != r.internal_port {
                    return debug!("NAT-PMP: an answer for another mapping; ignored");
                }
                if result != PmpResult::SUCCESS {
                    return self.refused(Version::NatPmp, result.0, result.name());
                }
                self.granted(
                    Version::NatPmp,
                    SocketAddrV4::new(external_ip, external_port),
                    lifetime,
                );
            }
            (Step::PmpMap { .. }, ServerToClient::PmpError { opcode, result })
                if opcode == pmp_opcode(r.protocol) =>
            {
                self.refused(Version::NatPmp, result.0, result.name())
            }
            (step, response) => {
                debug!(
                    ?step,
                    ?response,
                    "PCP/NAT-PMP: an unexpected answer; ignored"
                );
            }
        }
    }
}

/// NAT-PMP's map opcode for `protocol`.
fn pmp_opcode(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Udp => 1,
        Protocol::Tcp => 2,
    }
}

impl UdpMachine for MapClient {
    type Output = Result<Mapping, PmpError>;

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.queued.take()
    }

    fn poll_output(&mut self) -> Option<Self::Output> {
        self.output.take()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        (!self.done).then_some(self.deadline)
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.done || now < self.deadline {
            return;
        }
        if self.sends < self.request.retransmit.max_sends.max(1) {
            return self.send(now);
        }
        match self.step {
            Step::Pcp => self.fall_back(now, "no answer"),
            _ => {
                let gateway = self.gateway();
                let waited = now.saturating_duration_since(self.started);
                self.finish(Err(PmpError::NoAnswer { gateway, waited }));
            }
        }
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if self.done {
            return;
        }
        if from != self.gateway() {
            return debug!(%from, "PCP/NAT-PMP: a datagram not from the gateway; ignored");
        }
        match ServerToClient::decode(bytes) {
            Ok(response) => self.on_response(now, response),
            Err(error) => debug!(%from, %error, "PCP/NAT-PMP: an undecodable answer; ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
    const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
    const EXT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const NONCE: [u8; 12] = [7; 12];

    fn gw() -> SocketAddr {
        SocketAddr::from((GW, SERVER_PORT))
    }

    fn request(start: Version, lifetime: u32) -> Request {
        Request {
            gateway: GW,
            client_ip: ME,
            protocol: Protocol::Tcp,
            internal_port: 4000,
            suggested: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4000),
            lifetime,
            nonce: NONCE,
            start,
            retransmit: Retransmit::default(),
        }
    }

    fn pcp_answer(result: u8, nonce: [u8; 12], protocol: u8, port: u16, ext: Ipv4Addr) -> Vec<u8> {
        let mut b = vec![2, 0x81, 0, result];
        b.extend_from_slice(&600u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&nonce);
        b.extend_from_slice(&[protocol, 0, 0, 0]);
        b.extend_from_slice(&4000u16.to_be_bytes());
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&ext.to_ipv6_mapped().octets());
        b
    }

    fn pmp_map_answer(op: u8, result: u16, port: u16, lifetime: u32) -> Vec<u8> {
        let mut b = vec![0, 128 + op];
        b.extend_from_slice(&result.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&4000u16.to_be_bytes());
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&lifetime.to_be_bytes());
        b
    }

    fn sent(c: &mut MapClient) -> Vec<u8> {
        let t = c.poll_transmit().expect("a datagram");
        assert_eq!(t.dst, gw());
        t.payload
    }

    #[test]
    fn pcp_map_succeeds_on_the_matching_answer_only() {
        let t0 = Instant::now();
        let mut c = MapClient::new(t0, request(Version::Pcp, 600));
        let first = sent(&mut c);
        assert_eq!(first.len(), 60);
        assert_eq!(first[0], 2);
        // Not from the gateway's port, another nonce, another protocol,
        // garbage: all ignored.
        let good = pcp_answer(0, NONCE, 6, 4001, EXT);
        c.handle_datagram(t0, SocketAddr::from((GW, 5350)), &good);
        c.handle_datagram(t0, gw(), &pcp_answer(0, [8; 12], 6, 4001, EXT));
        c.handle_datagram(t0, gw(), &pcp_answer(0, NONCE, 17, 4001, EXT));
        c.handle_datagram(t0, gw(), &good[..59]);
        c.handle_datagram(t0, gw(), b"\x02");
        assert!(c.poll_output().is_none());
        c.handle_datagram(t0, gw(), &good);
        let mapping = c.poll_output().unwrap().unwrap();
        assert_eq!(
            mapping,
            Mapping {
                protocol: Protocol::Tcp,
                internal_port: 4000,
                external: SocketAddrV4::new(EXT, 4001),
                external_class: AddrClass::Documentation,
                lifetime: Duration::from_secs(600),
                version: Version::Pcp,
                nonce: NONCE,
            }
        );
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn retransmits_at_250_ms_doubling_then_falls_back_then_gives_up() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = MapClient::new(t0, request(Version::Pcp, 600));
        let mut sends = vec![(Duration::ZERO, sent(&mut c)[0])];
        let mut output = None;
        while output.is_none() {
            let at = c.poll_timeout().unwrap();
            c.handle_timeout(at);
            if let Some(t) = c.poll_transmit() {
                sends.push((at - t0, t.payload[0]));
            }
            output = c.poll_output();
        }
        assert_eq!(
            sends,
            [
                (ms(0), 2),
                (ms(250), 2),
                (ms(750), 2),
                // Silence: NAT-PMP, starting with the external address.
                (ms(1750), 0),
                (ms(2000), 0),
                (ms(2500), 0),
            ]
        );
        match output.unwrap() {
            Err(PmpError::NoAnswer { waited, .. }) => assert_eq!(waited, ms(3500)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_nat_pmp_server_answering_unsupported_version_gets_nat_pmp() {
        let t0 = Instant::now();
        let mut c = MapClient::new(t0, request(Version::Pcp, 600));
        sent(&mut c);
        // RFC 6886's answer to version 2: version 0, result 1.
        c.handle_datagram(t0, gw(), &[0, 129, 0, 1, 0, 0, 0, 5]);
        assert_eq!(sent(&mut c), [0, 0], "external address request at once");
        let mut ext = vec![0, 128, 0, 0, 0, 0, 0, 5];
        ext.extend_from_slice(&EXT.octets());
        c.handle_datagram(t0, gw(), &ext);
        assert_eq!(
            sent(&mut c),
            [0, 2, 0, 0, 0x0f, 0xa0, 0x0f, 0xa0, 0, 0, 2, 0x58]
        );
        // The UDP answer is not ours (we asked for TCP).
        c.handle_datagram(t0, gw(), &pmp_map_answer(1, 0, 4002, 300));
        assert!(c.poll_output().is_none());
        c.handle_datagram(t0, gw(), &pmp_map_answer(2, 0, 4002, 300));
        let mapping = c.poll_output().unwrap().unwrap();
        assert_eq!(mapping.external, SocketAddrV4::new(EXT, 4002));
        assert_eq!(mapping.lifetime, Duration::from_secs(300));
        assert_eq!(mapping.version, Version::NatPmp);
    }

    #[test]
    fn refusals_end_the_request_with_the_code() {
        let t0 = Instant::now();
        let mut c = MapClient::new(t0, request(Version::Pcp, 600));
        c.handle_datagram(t0, gw(), &pcp_answer(2, NONCE, 6, 0, Ipv4Addr::UNSPECIFIED));
        match c.poll_output().unwrap() {
            Err(PmpError::Refused {
                version,
                code,
                name,
                ..
            }) => {
                assert_eq!((version, code, name), (Version::Pcp, 2, "NOT_AUTHORIZED"))
            }
            other => panic!("{other:?}"),
        }
        let mut c = MapClient::new(t0, request(Version::NatPmp, 600));
        c.handle_datagram(t0, gw(), &[0, 128, 0, 3, 0, 0, 0, 5]);
        match c.poll_output().unwrap() {
            Err(PmpError::Refused { version, code, .. }) => {
                assert_eq!((version, code), (Version::NatPmp, 3))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unusable_external_addresses_are_errors_and_private_ones_are_classified() {
        let t0 = Instant::now();
        let mut c = MapClient::new(t0, request(Version::Pcp, 600));
        c.handle_datagram(
            t0,
            gw(),
            &pcp_answer(0, NONCE, 6, 4001, Ipv4Addr::UNSPECIFIED),
        );
        assert!(matches!(
            c.poll_output(),
            Some(Err(PmpError::NoExternalAddress { .. }))
        ));
        let mut c = MapClient::new(t0, request(Version::Pcp, 600));
        let mut v6 = pcp_answer(0, NONCE, 6, 4001, EXT);
        v6[44..60].copy_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        c.handle_datagram(t0, gw(), &v6);
        assert!(matches!(
            c.poll_output(),
            Some(Err(PmpError::NoExternalAddress { .. }))
        ));
        let mut c = MapClient::new(t0, request(Version::Pcp, 600));
        c.handle_datagram(t0, gw(), &pcp_answer(0, NONCE, 6, 0, EXT));
        assert!(matches!(
            c.poll_output(),
            Some(Err(PmpError::BadAnswer { .. }))
        ));
        let mut c = MapClient::new(t0, request(Version::Pcp, 600));
        let cgnat = Ipv4Addr::new(100, 64, 1, 2);
        c.handle_datagram(t0, gw(), &pcp_answer(0, NONCE, 6, 4001, cgnat));
        let mapping = c.poll_output().unwrap().unwrap();
        assert_eq!(mapping.external_class, AddrClass::SharedCgnat);
    }

    #[test]
    fn delete_by_nat_pmp_skips_the_external_address_and_names_port_zero() {
        let t0 = Instant::now();
        let mut c = MapClient::new(t0, request(Version::NatPmp, 0));
        assert_eq!(sent(&mut c), [0, 2, 0, 0, 0x0f, 0xa0, 0, 0, 0, 0, 0, 0]);
        c.handle_datagram(t0, gw(), &pmp_map_answer(2, 0, 0, 0));
        let gone = c.poll_output().unwrap().unwrap();
        assert_eq!(gone.lifetime, Duration::ZERO);
    }

    #[test]
    fn delete_by_pcp_repeats_the_nonce_with_lifetime_zero() {
        let t0 = Instant::now();
        let mut r = request(Version::Pcp, 0);
        r.suggested = SocketAddrV4::new(EXT, 4001);
        let mut c = MapClient::new(t0, r);
        let b = sent(&mut c);
        assert_eq!(b[4..8], [0, 0, 0, 0]);
        assert_eq!(b[24..36], NONCE);
        let mut answer = pcp_answer(0, NONCE, 6, 0, Ipv4Addr::UNSPECIFIED);
        answer[4..8].copy_from_slice(&[0; 4]);
        c.handle_datagram(t0, gw(), &answer);
        assert_eq!(c.poll_output().unwrap().unwrap().lifetime, Duration::ZERO);
    }
}
