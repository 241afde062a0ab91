//! The sans-IO STUN Binding client transaction.
//!
//! ```text
//! new(now, id, server, request, config)   -> first request due at `now`
//! loop {
//!     poll_transmit()   -> Some(Transmit)   send it
//!     poll_timeout()    -> Some(deadline)   sleep until then, then handle_timeout(now)
//!     handle_datagram(now, from, bytes)     for each datagram received
//!     poll_event()      -> Some(result)     done
//! }
//! ```
//!
//! UDP retransmission follows RFC 8489 section 6.2.1: with the default
//! RTO = 500 ms and Rc = 7, requests go out at 0, 0.5, 1.5, 3.5, 7.5, 15.5
//! and 31.5 s, and the transaction fails at 31.5 + Rm·RTO = 39.5 s. Over TCP
//! use [`RetransmitConfig::reliable`]: one send, one wait.
//!
//! Answers are matched by transaction id only, not by source address,
//! because RFC 5780 answers to CHANGE-REQUEST come from another address.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_rs::attributes::discovery::{
    ChangeRequest, ChangeRequestFlags, OtherAddress, ResponseOrigin,
};
use stun_rs::attributes::stun::{
    ErrorCode, Fingerprint, MappedAddress, Software, XorMappedAddress,
};
use stun_rs::methods::BINDING;
use stun_rs::{MessageClass, StunMessageBuilder, TransactionId};
use tracing::debug;

use super::{BindingResult, StunError, Transmit};

/// Retransmission parameters (RFC 8489 section 6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitConfig {
    /// The initial retransmission timeout; it doubles after every send.
    pub rto: Duration,
    /// Rc: how many requests to send in total (at least 1).
    pub max_sends: u32,
    /// Rm: after the last send, wait `last_wait_factor × rto` for an answer.
    pub last_wait_factor: u32,
}

impl Default for RetransmitConfig {
    /// RTO 500 ms, Rc 7, Rm 16: the RFC 8489 defaults (39.5 s in total).
    fn default() -> Self {
        Self {
            rto: Duration::from_millis(500),
            max_sends: 7,
            last_wait_factor: 16,
        }
    }
}

impl RetransmitConfig {
    /// For reliable transports (TCP): one send, then wait `timeout`.
    pub fn reliable(timeout: Duration) -> Self {
        Self {
            rto: timeout,
            max_sends: 1,
            last_wait_factor: 1,
        }
    }

    /// How long after the `sends`-th send (1-based) the next step happens:
    /// `rto × 2^(sends-1)`, or `rto × Rm` after the last send.
    fn wait_after(&self, sends: u32) -> Duration {
        if sends >= self.max_sends.max(1) {
            self.rto.saturating_mul(self.last_wait_factor)
        } else {
            self.rto
                .saturating_mul(1u32.checked_shl(sends - 1).unwrap_or(u32::MAX))
        }
    }

    /// The time from the first send to giving up.
    pub fn total_wait(&self) -> Duration {
        (1..=self.max_sends.max(1)).fold(Duration::ZERO, |acc, n| {
            acc.saturating_add(self.wait_after(n))
        })
    }
}

/// What to ask in a Binding request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindingRequest {
    /// RFC 5780 CHANGE-REQUEST "change IP": answer from the other IP.
    pub change_ip: bool,
    /// RFC 5780 CHANGE-REQUEST "change port": answer from the other port.
    pub change_port: bool,
}

/// Encodes a Binding request with transaction id `id`: CHANGE-REQUEST when
/// a flag is set, then FINGERPRINT.
pub fn encode_binding_request(
    id: [u8; 12],
    request: &BindingRequest,
) -> Result<Vec<u8>, StunError> {
    let mut builder = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(TransactionId::from(id));
    use ChangeRequestFlags::{ChangeIp, ChangePort};
    let flags = match (request.change_ip, request.change_port) {
        (true, true) => Some(ChangeIp | ChangePort),
        (true, false) => Some(ChangeIp.into()),
        (false, true) => Some(ChangePort.into()),
        (false, false) => None,
    };
    if flags.is_some() {
        builder = builder.with_attribute(ChangeRequest::new(flags));
    }
    let msg = builder.with_attribute(Fingerprint::default()).build();
    super::encode(&msg).map_err(StunError::Encode)
}

/// One STUN Binding transaction, sans-IO.
#[derive(Debug)]
pub struct StunTransaction {
    id: [u8; 12],
    server: SocketAddr,
    request: Vec<u8>,
    config: RetransmitConfig,
    started: Instant,
    sends: u32,
    deadline: Instant,
    transmit_pending: bool,
    done: bool,
    event: Option<Result<BindingResult, StunError>>,
}

impl StunTransaction {
    /// Starts a transaction whose first request is due at `now`. `id` is the
    /// 96-bit transaction id: pass fresh random bytes for every transaction.
    pub fn new(
        now: Instant,
        id: [u8; 12],
        server: SocketAddr,
        request: BindingRequest,
        config: RetransmitConfig,
    ) -> Result<Self, StunError> {
        let config = RetransmitConfig {
            max_sends: config.max_sends.max(1),
            ..config
        };
        Ok(Self {
            id,
            server,
            request: encode_binding_request(id, &request)?,
            config,
            started: now,
            sends: 1,
            deadline: now + config.wait_after(1),
            transmit_pending: true,
            done: false,
            event: None,
        })
    }

    /// The transaction id.
    pub fn id(&self) -> [u8; 12] {
        self.id
    }

    /// The server this transaction asks.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Whether the transaction has finished (its result may still be
    /// waiting in [`poll_event`](Self::poll_event)).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next datagram to send, if one is due.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.done || !self.transmit_pending {
            return None;
        }
        self.transmit_pending = false;
        Some(Transmit {
            dst: self.server,
            payload: self.request.clone(),
        })
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.done).then_some(self.deadline)
    }

    /// Advances the retransmission timer: queues a retransmission, or fails
    /// the transaction with [`StunError::Timeout`] after the last wait.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done || now < self.deadline {
            return;
        }
        if self.sends < self.config.max_sends {
            self.sends += 1;
            self.transmit_pending = true;
            self.deadline = now + self.config.wait_after(self.sends);
        } else {
            self.finish(Err(StunError::Timeout {
                server: self.server,
                sends: self.sends,
                waited: now.saturating_duration_since(self.started),
            }));
        }
    }

    /// Feeds a received datagram (or a TCP-framed message). Returns whether
    /// it carried this transaction's id (so a caller running several
    /// transactions on one socket knows it was consumed). Wrong ids,
    /// malformed messages and answers after completion are ignored.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> bool {
        if !super::is_stun(bytes) || bytes[8..20] != self.id {
            debug!(%from, len = bytes.len(), "STUN: ignoring datagram that is not our transaction");
            return false;
        }
        if self.done {
            debug!(%from, "STUN: ignoring late or duplicate answer");
            return true;
        }
        let msg = match super::decode(bytes) {
            Ok(msg) => msg,
            Err(why) => {
                debug!(%from, %why, "STUN: ignoring malformed answer");
                return true;
            }
        };
        if msg.method() != BINDING {
            debug!(%from, "STUN: ignoring answer with a method other than Binding");
            return true;
        }
        match msg.class() {
            MessageClass::SuccessResponse => {
                let result = self.parse_success(now, from, &msg);
                self.finish(result);
            }
            MessageClass::ErrorResponse => {
                let (code, reason) = msg
                    .get::<ErrorCode>()
                    .and_then(|a| a.as_error_code().ok())
                    .map(|e| {
                        (
                            e.error_code().error_code(),
                            e.error_code().reason().to_owned(),
                        )
                    })
                    .unwrap_or((0, "no ERROR-CODE attribute".to_owned()));
                self.finish(Err(StunError::ErrorResponse {
                    server: self.server,
                    code,
                    reason,
                }));
            }
            MessageClass::Request | MessageClass::Indication => {
                debug!(%from, "STUN: ignoring a request/indication carrying our id");
            }
        }
        true
    }

    /// Takes the result once the transaction has finished.
    pub fn poll_event(&mut self) -> Option<Result<BindingResult, StunError>> {
        self.event.take()
    }

    fn finish(&mut self, result: Result<BindingResult, StunError>) {
        self.done = true;
        self.transmit_pending = false;
        self.event = Some(result);
    }

    fn parse_success(
        &self,
        now: Instant,
        from: SocketAddr,
        msg: &stun_rs::StunMessage,
    ) -> Result<BindingResult, StunError> {
        let xor = msg
            .get::<XorMappedAddress>()
            .and_then(|a| a.as_xor_mapped_address().ok())
            .map(|a| *a.socket_address());
        let legacy = msg
            .get::<MappedAddress>()
            .and_then(|a| a.as_mapped_address().ok())
            .map(|a| *a.socket_address());
        let (mapped, legacy) = match (xor, legacy) {
            (Some(addr), _) => (addr, false),
            (None, Some(addr)) => (addr, true),
            (None, None) => {
                return Err(StunError::NoMappedAddress {
                    server: self.server,
                });
            }
        };
        Ok(BindingResult {
            mapped,
            legacy,
            other_address: msg
                .get::<OtherAddress>()
                .and_then(|a| a.as_other_address().ok())
                .map(|a| *a.socket_address()),
            response_origin: msg
                .get::<ResponseOrigin>()
                .and_then(|a| a.as_response_origin().ok())
                .map(|a| *a.socket_address()),
            source: from,
            software: msg
                .get::<Software>()
                .and_then(|a| a.as_software().ok())
                .map(|s| s.as_str().to_owned()),
            elapsed: now.saturating_duration_since(self.started),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::server::{AltConfig, respond};

    const ID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn server() -> SocketAddr {
        "192.0.2.10:3478".parse().unwrap()
    }
    fn client() -> SocketAddr {
        "198.51.100.7:40000".parse().unwrap()
    }
    fn local() -> SocketAddr {
        "192.0.2.10:3478".parse().unwrap()
    }

    fn start(now: Instant) -> StunTransaction {
        StunTransaction::new(
            now,
            ID,
            server(),
            BindingRequest::default(),
            RetransmitConfig::default(),
        )
        .unwrap()
    }

    /// Runs the request through our own responder: a real answer.
    fn answer(tx: &[u8], alt: Option<AltConfig>) -> Vec<u8> {
        respond(tx, client(), local(), alt).unwrap().payload
    }

    #[test]
    fn retransmission_schedule_is_rfc8489_and_times_out_after_last_wait() {
        let t0 = Instant::now();
        let mut t = start(t0);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        assert!(t.poll_transmit().is_some(), "first request at t0");
        assert!(t.poll_transmit().is_none());
        let mut sent_at = vec![0u64];
        let expected_deadlines = [500u64, 1500, 3500, 7500, 15500, 31500, 39500];
        for (i, &deadline) in expected_deadlines.iter().enumerate() {
            assert_eq!(t.poll_timeout(), Some(ms(deadline)), "deadline {i}");
            // One millisecond early: nothing happens.
            t.handle_timeout(ms(deadline - 1));
            assert!(t.poll_transmit().is_none());
            t.handle_timeout(ms(deadline));
            if let Some(tx) = t.poll_transmit() {
                assert_eq!(tx.dst, server());
                assert_eq!(&tx.payload[8..20], &ID);
                sent_at.push(deadline);
            }
        }
        assert_eq!(sent_at, vec![0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert!(t.is_done());
        assert_eq!(t.poll_timeout(), None);
        match t.poll_event() {
            Some(Err(StunError::Timeout { sends, waited, .. })) => {
                assert_eq!(sends, 7);
                assert_eq!(waited, Duration::from_millis(39500));
            }
            other => panic!("expected timeout, got {other:?}"),
        }
        assert_eq!(
            RetransmitConfig::default().total_wait(),
            Duration::from_millis(39500)
        );
    }

    #[test]
    fn custom_schedule_is_configurable() {
        let t0 = Instant::now();
        let cfg = RetransmitConfig {
            rto: Duration::from_millis(100),
            max_sends: 3,
            last_wait_factor: 2,
        };
        let mut t = StunTransaction::new(t0, ID, server(), BindingRequest::default(), cfg).unwrap();
        assert!(t.poll_transmit().is_some());
        let mut times = vec![];
        while let Some(deadline) = t.poll_timeout() {
            t.handle_timeout(deadline);
            times.push((deadline - t0).as_millis());
            assert!(t.poll_transmit().is_some() || t.is_done());
        }
        // sends at 0, 100, 300; give up 200 ms after the last.
        assert_eq!(times, vec![100, 300, 500]);
        assert_eq!(cfg.total_wait(), Duration::from_millis(500));
        let reliable = RetransmitConfig::reliable(Duration::from_secs(5));
        assert_eq!(reliable.total_wait(), Duration::from_secs(5));
    }

    #[test]
    fn success_after_retransmission_reports_mapped_address() {
        let t0 = Instant::now();
        let mut t = start(t0);
        let req = t.poll_transmit().unwrap().payload;
        t.handle_timeout(t0 + Duration::from_millis(500));
        assert!(t.poll_transmit().is_some());
        let resp = answer(&req, None);
        assert!(t.handle_datagram(t0 + Duration::from_millis(600), server(), &resp));
        let result = t.poll_event().unwrap().unwrap();
        assert_eq!(result.mapped, client());
        assert!(!result.legacy);
        assert_eq!(result.source, server());
        assert_eq!(result.other_address, None);
        assert_eq!(result.response_origin, None);
        assert!(result.software.unwrap().starts_with("ferry"));
        assert_eq!(result.elapsed, Duration::from_millis(600));
        assert_eq!(t.poll_timeout(), None);
        assert!(t.poll_transmit().is_none());
        assert!(t.poll_event().is_none());
    }

    #[test]
    fn rfc5780_attributes_are_reported() {
        let t0 = Instant::now();
        let mut t = start(t0);
        let req = t.poll_transmit().unwrap().payload;
        let alt = AltConfig {
            primary: local(),
            alternate: "192.0.2.11:3479".parse().unwrap(),
        };
        let resp = answer(&req, Some(alt));
        t.handle_datagram(t0, server(), &resp);
        let result = t.poll_event().unwrap().unwrap();
        assert_eq!(
            result.other_address,
            Some("192.0.2.11:3479".parse().unwrap())
        );
        assert_eq!(result.response_origin, Some(local()));
    }

    #[test]
    fn late_response_after_timeout_is_ignored() {
        let t0 = Instant::now();
        let mut t = start(t0);
        let req = t.poll_transmit().unwrap().payload;
        while let Some(deadline) = t.poll_timeout() {
            t.handle_timeout(deadline);
            t.poll_transmit();
        }
        assert!(matches!(
            t.poll_event(),
            Some(Err(StunError::Timeout { .. }))
        ));
        let resp = answer(&req, None);
        assert!(t.handle_datagram(t0 + Duration::from_secs(60), server(), &resp));
        assert!(t.poll_event().is_none(), "no second result");
    }

    #[test]
    fn duplicate_response_yields_one_result() {
        let t0 = Instant::now();
        let mut t = start(t0);
        let req = t.poll_transmit().unwrap().payload;
        let resp = answer(&req, None);
        assert!(t.handle_datagram(t0, server(), &resp));
        assert!(t.handle_datagram(t0, server(), &resp));
        assert!(t.poll_event().unwrap().is_ok());
        assert!(t.poll_event().is_none());
    }

    #[test]
    fn wrong_transaction_id_is_ignored() {
        let t0 = Instant::now();
        let mut t = start(t0);
        let mut other = encode_binding_request([9; 12], &BindingRequest::default()).unwrap();
        other = answer(&other, None);
        assert!(!t.handle_datagram(t0, server(), &other));
        assert!(t.poll_event().is_none());
        assert!(!t.is_done());
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    }

    #[test]
    fn malformed_bytes_are_ignored() {
        let t0 = Instant::now();
        let mut t = start(t0);
        let req = t.poll_transmit().unwrap().payload;
        let resp = answer(&req, None);
        // Garbage, a truncated answer, an answer with a lying length and
        // an answer with trailing bytes.
        assert!(!t.handle_datagram(t0, server(), b"hello, not stun"));
        assert!(!t.handle_datagram(t0, server(), &[]));
        assert!(t.handle_datagram(t0, server(), &resp[..resp.len() - 4]));
        let mut long = resp.clone();
        long[3] = long[3].wrapping_add(4);
        assert!(t.handle_datagram(t0, server(), &long));
        let mut trailing = resp.clone();
        trailing.extend_from_slice(&[0, 0, 0, 0]);
        assert!(t.handle_datagram(t0, server(), &trailing));
        assert!(t.poll_event().is_none());
        assert!(!t.is_done());
        // The genuine answer still works afterwards.
        assert!(t.handle_datagram(t0, server(), &resp));
        assert_eq!(t.poll_event().unwrap().unwrap().mapped, client());
    }

    #[test]
    fn fingerprint_is_checked() {
        let t0 = Instant::now();
        let mut t = start(t0);
        let req = t.poll_transmit().unwrap().payload;
        let resp = answer(&req, None);
        // The answer ends with FINGERPRINT (type 0x8028, length 4).
        let n = resp.len();
        assert_eq!(&resp[n - 8..n - 4], &[0x80, 0x28, 0x00, 0x04]);
        let mut bad = resp.clone();
        bad[n - 1] ^= 0xff;
        assert!(t.handle_datagram(t0, server(), &bad));
        assert!(t.poll_event().is_none(), "bad FINGERPRINT must be dropped");
        // A flipped bit in the mapped address is caught by the fingerprint too.
        let mut tampered = resp.clone();
        tampered[HEADER_OFFSET_FIRST_ATTR_VALUE + 3] ^= 1;
        assert!(t.handle_datagram(t0, server(), &tampered));
        assert!(t.poll_event().is_none());
        assert!(t.handle_datagram(t0, server(), &resp));
        assert!(t.poll_event().unwrap().is_ok());
    }

    const HEADER_OFFSET_FIRST_ATTR_VALUE: usize = 24;

    #[test]
    fn mapped_address_only_response_from_rfc3489_server() {
        let t0 = Instant::now();
        let mut t = start(t0);
        t.poll_transmit();
        // Hand-built RFC 3489 style answer: MAPPED-ADDRESS only, no
        // FINGERPRINT; the server echoes our 16-byte id (cookie + 12 bytes).
        let mut resp = vec![0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        resp.extend_from_slice(&ID);
        resp.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0x00, 0x01]);
        resp.extend_from_slice(&40000u16.to_be_bytes());
        resp.extend_from_slice(&[198, 51, 100, 7]);
        assert!(t.handle_datagram(t0, server(), &resp));
        let result = t.poll_event().unwrap().unwrap();
        assert_eq!(result.mapped, client());
        assert!(result.legacy);
    }

    #[test]
    fn error_response_fails_the_transaction() {
        let t0 = Instant::now();
        let req = BindingRequest {
            change_ip: true,
            change_port: false,
        };
        let mut t =
            StunTransaction::new(t0, ID, server(), req, RetransmitConfig::default()).unwrap();
        let bytes = t.poll_transmit().unwrap().payload;
        // Our server without alternate address refuses CHANGE-REQUEST.
        let resp = answer(&bytes, None);
        assert!(t.handle_datagram(t0, server(), &resp));
        match t.poll_event() {
            Some(Err(StunError::ErrorResponse { code, .. })) => assert_eq!(code, 420),
            other => panic!("expected 420, got {other:?}"),
        }
    }

    #[test]
    fn success_without_address_is_an_error() {
        let t0 = Instant::now();
        let mut t = start(t0);
        t.poll_transmit();
        let msg = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(TransactionId::from(ID))
            .with_attribute(Fingerprint::default())
            .build();
        let resp = crate::stun::encode(&msg).unwrap();
        assert!(t.handle_datagram(t0, server(), &resp));
        assert!(matches!(
            t.poll_event(),
            Some(Err(StunError::NoMappedAddress { .. }))
        ));
    }

    #[test]
    fn request_bytes_are_exact() {
        let plain = encode_binding_request(ID, &BindingRequest::default()).unwrap();
        // Binding request, length 8 (FINGERPRINT only), cookie, id.
        assert_eq!(
            &plain[..8],
            &[0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42]
        );
        assert_eq!(&plain[8..20], &ID);
        assert_eq!(&plain[20..24], &[0x80, 0x28, 0x00, 0x04]);
        assert_eq!(plain.len(), 28);
        let both = encode_binding_request(
            ID,
            &BindingRequest {
                change_ip: true,
                change_port: true,
            },
        )
        .unwrap();
        assert_eq!(&both[2..4], &[0x00, 0x10]);
        // CHANGE-REQUEST type 0x0003, length 4, flags A|B = 0x06.
        assert_eq!(&both[20..28], &[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0x06]);
        let port_only = encode_binding_request(
            ID,
            &BindingRequest {
                change_ip: false,
                change_port: true,
            },
        )
        .unwrap();
        assert_eq!(&port_only[24..28], &[0, 0, 0, 0x02]);
    }
}
