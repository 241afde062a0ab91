//! Hairpinning: can a host behind this NAT reach the NAT's public mapping
//! of another host (here: of another socket) behind the same NAT? The
//! check `tailscale netcheck` makes, sans-IO, plus a tokio driver.
//!
//! ```text
//! first socket  F: its public mapping M is known (STUN said so)
//! second socket S: --Binding request (our id)--> M, resent every interval
//! NAT hairpins:    M --> F: F receives a request with our id  -> Works
//! NAT does not:    dropped (most Linux NATs, many home routers)
//!                  nothing by the deadline                    -> NotSeen
//! ```
//!
//! Only the address STUN reported for the first socket is ever sent to:
//! that is this host's own mapping, so no third party gets a packet. The
//! check decides nothing about direct connections: two peers behind one
//! NAT use their LAN addresses. It tells whether a peer behind the same
//! NAT could also reach us through the public address.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tracing::debug;

use crate::drive::Transmit;
use crate::stun::{BindingRequest, StunError, encode_binding_request, is_stun};

/// What the hairpinning check saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hairpin {
    /// The request sent to the public mapping arrived at the first socket.
    Works {
        /// Time from the first send to its arrival.
        after: Duration,
    },
    /// Nothing arrived by the deadline.
    NotSeen,
}

impl Hairpin {
    /// Whether the NAT hairpins.
    pub fn works(self) -> bool {
        matches!(self, Hairpin::Works { .. })
    }
}

/// The schedule of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HairpinConfig {
    /// Pause between two sends.
    pub interval: Duration,
    /// How many requests to send (at least 1).
    pub sends: u32,
    /// From the first send to giving up.
    pub wait: Duration,
}

impl Default for HairpinConfig {
    /// Three sends 100 ms apart; give up after 800 ms (Tailscale waits
    /// about as long).
    fn default() -> Self {
        HairpinConfig {
            interval: Duration::from_millis(100),
            sends: 3,
            wait: Duration::from_millis(800),
        }
    }
}

/// The check, sans-IO. Its transmits leave from the *second* socket;
/// [`handle_datagram`](Self::handle_datagram) takes what arrives at the
/// *first* one.
#[derive(Debug)]
pub struct HairpinCheck {
    target: SocketAddr,
    id: [u8; 12],
    request: Vec<u8>,
    config: HairpinConfig,
    started: Instant,
    sent: u32,
    transmit_pending: bool,
    next_send: Instant,
    deadline: Instant,
    outcome: Option<Hairpin>,
    done: bool,
}

impl HairpinCheck {
    /// Starts the check towards `target` (the first socket's public
    /// mapping); the first request is due at `now`. `id` must be fresh
    /// random bytes.
    pub fn new(
        now: Instant,
        target: SocketAddr,
        id: [u8; 12],
        config: HairpinConfig,
    ) -> Result<HairpinCheck, StunError> {
        Ok(HairpinCheck {
            target,
            id,
            request: encode_binding_request(id, &BindingRequest::default())?,
            config: HairpinConfig {
                sends: config.sends.max(1),
                ..config
            },
            started: now,
            sent: 0,
            transmit_pending: true,
            next_send: now + config.interval,
            deadline: now + config.wait,
            outcome: None,
            done: false,
        })
    }

    /// The next request to send from the second socket, if one is due.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.done || !self.transmit_pending {
            return None;
        }
        self.transmit_pending = false;
        self.sent += 1;
        Some(Transmit {
            dst: self.target,
            payload: self.request.clone(),
        })
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        if self.more_to_send() {
            return Some(self.next_send.min(self.deadline));
        }
        Some(self.deadline)
    }

    /// Runs the timers due at `now`: queues the next send, or gives up at
    /// the deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if now >= self.deadline {
            self.finish(Hairpin::NotSeen);
        } else if self.more_to_send() && now >= self.next_send {
            self.transmit_pending = true;
            self.next_send = now + self.config.interval;
        }
    }

    /// Feeds a datagram that arrived at the first socket from `from`.
    /// Returns whether it was our request (then the check is done).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> bool {
        // Our own Binding request (class request, method Binding), with
        // our transaction id: nothing else counts.
        let ours = is_stun(bytes) && bytes[0..2] == [0x00, 0x01] && bytes[8..20] == self.id;
        if !ours {
            debug!(%from, len = bytes.len(), "hairpin: ignoring a datagram that is not ours");
            return false;
        }
        if !self.done {
            self.finish(Hairpin::Works {
                after: now.saturating_duration_since(self.started),
            });
        }
        true
    }

    /// Takes the outcome once the check is done.
    pub fn poll_outcome(&mut self) -> Option<Hairpin> {
        self.outcome.take()
    }

    fn more_to_send(&self) -> bool {
        !self.transmit_pending && self.sent < self.config.sends
    }

    fn finish(&mut self, outcome: Hairpin) {
        self.done = true;
        self.transmit_pending = false;
        self.outcome = Some(outcome);
    }
}

/// Runs [`HairpinCheck`]: sends from a fresh socket of `first`'s family to
/// `mapped` (the public mapping STUN reported for `first`) and watches
/// `first`, which nobody else may read meanwhile. Returns the outcome, or
/// the error that kept the check from running (no second socket).
pub async fn check_hairpin(
    first: &UdpSocket,
    mapped: SocketAddr,
    config: HairpinConfig,
) -> Result<Hairpin, StunError> {
    let io = |context: &str| {
        let context = context.to_string();
        move |source| StunError::Io { context, source }
    };
    let local = first
        .local_addr()
        .map_err(io("cannot read the local UDP address"))?;
    let unspecified: SocketAddr = if local.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let second = UdpSocket::bind(unspecified)
        .await
        .map_err(io("cannot open a second UDP socket"))?;
    let mut check = HairpinCheck::new(now(), mapped, rand::random(), config)?;
    let mut buffer = vec![0u8; crate::stun::MAX_MESSAGE_LEN];
    loop {
        while let Some(t) = check.poll_transmit() {
            if let Err(e) = second.send_to(&t.payload, t.dst).await {
                debug!(dst = %t.dst, "hairpin: send failed: {e}");
            }
        }
        if let Some(outcome) = check.poll_outcome() {
            return Ok(outcome);
        }
        let Some(deadline) = check.poll_timeout() else {
            return Ok(Hairpin::NotSeen);
        };
        tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                check.handle_timeout(now());
            }
            received = first.recv_from(&mut buffer) => match received {
                Ok((len, from)) => {
                    check.handle_datagram(now(), from, &buffer[..len]);
                }
                Err(e) => {
                    debug!("hairpin: receive error: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// Tokio's clock, as the machine takes it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPPED: &str = "198.51.100.2:40000";

    fn check(now: Instant) -> HairpinCheck {
        HairpinCheck::new(
            now,
            MAPPED.parse().unwrap(),
            [7; 12],
            HairpinConfig::default(),
        )
        .unwrap()
    }

    /// Runs the check in virtual time; `hairpins` says whether the NAT
    /// delivers each request back to the first socket (`delay` later).
    fn run(hairpins: bool, delay: Duration) -> (Hairpin, u32, Duration) {
        let t0 = Instant::now();
        let mut c = check(t0);
        let mut now = t0;
        let mut sent = 0;
        let mut in_flight: Vec<(Instant, Vec<u8>)> = Vec::new();
        for _ in 0..100 {
            c.handle_timeout(now);
            while let Some(t) = c.poll_transmit() {
                assert_eq!(
                    t.dst,
                    MAPPED.parse().unwrap(),
                    "only the mapping is sent to"
                );
                sent += 1;
                if hairpins {
                    in_flight.push((now + delay, t.payload));
                }
            }
            for (_, bytes) in in_flight.iter().filter(|(at, _)| *at <= now) {
                c.handle_datagram(now, "10.0.1.1:5000".parse().unwrap(), bytes);
            }
            in_flight.retain(|(at, _)| *at > now);
            if let Some(outcome) = c.poll_outcome() {
                return (outcome, sent, now - t0);
            }
            let mut next = c.poll_timeout().expect("a running check has a timer");
            if let Some((at, _)) = in_flight.first() {
                next = next.min(*at);
            }
            now = next;
        }
        panic!("the check did not finish");
    }

    #[test]
    fn a_hairpinning_nat_delivers_the_request() {
        let (outcome, sent, took) = run(true, Duration::from_millis(30));
        assert_eq!(
            outcome,
            Hairpin::Works {
                after: Duration::from_millis(30)
            }
        );
        assert!(outcome.works());
        assert_eq!(sent, 1, "the answer came before the second send");
        assert_eq!(took, Duration::from_millis(30));
    }

    #[test]
    fn a_nat_without_hairpinning_is_not_seen_after_the_whole_wait() {
        let (outcome, sent, took) = run(false, Duration::ZERO);
        assert_eq!(outcome, Hairpin::NotSeen);
        assert!(!outcome.works());
        assert_eq!(sent, 3, "every scheduled send went out");
        assert_eq!(took, Duration::from_millis(800));
    }

    #[test]
    fn a_late_hairpin_after_a_resend_still_counts() {
        let (outcome, sent, _) = run(true, Duration::from_millis(150));
        assert_eq!(
            outcome,
            Hairpin::Works {
                after: Duration::from_millis(150)
            }
        );
        assert_eq!(sent, 2);
    }

    #[test]
    fn other_datagrams_do_not_count() {
        let t0 = Instant::now();
        let mut c = check(t0);
        let from: SocketAddr = "203.0.113.10:3478".parse().unwrap();
        // Another transaction's request, an answer carrying our id, noise.
        let other = encode_binding_request([8; 12], &BindingRequest::default()).unwrap();
        let mut answer = encode_binding_request([7; 12], &BindingRequest::default()).unwrap();
        answer[0..2].copy_from_slice(&[0x01, 0x01]);
        for bytes in [
            other.as_slice(),
            answer.as_slice(),
            b"hello".as_slice(),
            &[],
        ] {
            assert!(!c.handle_datagram(t0, from, bytes));
        }
        assert_eq!(c.poll_outcome(), None);
        c.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(c.poll_outcome(), Some(Hairpin::NotSeen));
    }

    #[test]
    fn outcome_serializes_as_snake_case() {
        assert_eq!(
            serde_json::to_value(Hairpin::NotSeen).unwrap(),
            serde_json::json!("not_seen")
        );
    }

    #[tokio::test]
    async fn loopback_delivers_to_itself() {
        // No NAT: "the mapping" is the socket's own address, which any
        // second socket reaches.
        let first = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mapped = first.local_addr().unwrap();
        let outcome = check_hairpin(&first, mapped, HairpinConfig::default())
            .await
            .unwrap();
        assert!(outcome.works(), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_not_seen() {
        let first = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Somewhere else on loopback, where nothing listens.
        let elsewhere = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mapped = elsewhere.local_addr().unwrap();
        drop(elsewhere);
        let config = HairpinConfig {
            wait: Duration::from_millis(300),
            ..HairpinConfig::default()
        };
        let outcome = check_hairpin(&first, mapped, config).await.unwrap();
        assert_eq!(outcome, Hairpin::NotSeen);
    }
}
