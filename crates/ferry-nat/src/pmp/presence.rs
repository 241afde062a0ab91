//! Which of NAT-PMP and PCP the gateway speaks, asked at once and without
//! mapping anything (for `ferry nat`'s "port mapping" line, as `tailscale
//! netcheck` reports it).
//!
//! ```text
//! us --PCP ANNOUNCE (version 2)---------> gateway:5351
//! us --NAT-PMP external address (v0)----> gateway:5351
//!    (both resent every `interval` until answered, `sends` times)
//! a version-2 answer          -> PCP
//! a version-0 answer (to either: a NAT-PMP server answers PCP with
//!   UNSUPP_VERSION in NAT-PMP's format)   -> NAT-PMP
//! both seen, or `wait` over               -> done
//! ```
//!
//! Only answers from the gateway's port 5351 count; anything else is
//! dropped unread.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tracing::debug;

use super::codec::{ClientToServer, PmpResult, SERVER_PORT, ServerToClient};
use super::{PmpError, PmpGateway, PmpOptions};
use crate::drive::{DriveOptions, Transmit, UdpMachine, drive_udp};

/// What answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The gateway answered in NAT-PMP (version 0).
    pub nat_pmp: bool,
    /// The gateway answered in PCP (version 2).
    pub pcp: bool,
    /// The external address NAT-PMP reported, when it did (untrusted:
    /// classify before use).
    pub external_ip: Option<Ipv4Addr>,
}

/// The schedule of [`PresenceProbe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceConfig {
    /// Pause between two rounds of sends.
    pub interval: Duration,
    /// Rounds (at least 1).
    pub sends: u32,
    /// From the first send to giving up.
    pub wait: Duration,
}

impl Default for PresenceConfig {
    /// Three rounds 250 ms apart; give up after 1.25 s.
    fn default() -> Self {
        PresenceConfig {
            interval: Duration::from_millis(250),
            sends: 3,
            wait: Duration::from_millis(1250),
        }
    }
}

/// The probe, sans-IO, as a [`UdpMachine`] whose output is the
/// [`Presence`] seen.
#[derive(Debug)]
pub struct PresenceProbe {
    gateway: SocketAddr,
    client_ip: Ipv4Addr,
    config: PresenceConfig,
    rounds: u32,
    queue: Vec<ClientToServer>,
    next_round: Instant,
    deadline: Instant,
    seen: Presence,
    output: Option<Presence>,
    done: bool,
}

impl PresenceProbe {
    /// Starts asking `gateway` (port 5351) from `client_ip`; the first
    /// round is due at `now`.
    pub fn new(
        now: Instant,
        gateway: Ipv4Addr,
        client_ip: Ipv4Addr,
        config: PresenceConfig,
    ) -> PresenceProbe {
        let mut probe = PresenceProbe {
            gateway: SocketAddr::from((gateway, SERVER_PORT)),
            client_ip,
            config: PresenceConfig {
                sends: config.sends.max(1),
                ..config
            },
            rounds: 0,
            queue: Vec::new(),
            next_round: now,
            deadline: now + config.wait,
            seen: Presence::default(),
            output: None,
            done: false,
        };
        probe.round(now);
        probe
    }

    /// Queues one request per protocol not yet seen.
    fn round(&mut self, now: Instant) {
        self.rounds += 1;
        self.next_round = now + self.config.interval;
        if !self.seen.pcp {
            self.queue.push(ClientToServer::PcpAnnounce {
                client_ip: self.client_ip,
            });
        }
        if !self.seen.nat_pmp {
            self.queue.push(ClientToServer::PmpExternalAddress);
        }
    }

    fn finish(&mut self) {
        self.done = true;
        self.queue.clear();
        self.output = Some(self.seen);
    }
}

impl UdpMachine for PresenceProbe {
    type Output = Presence;

    fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.done || self.queue.is_empty() {
            return None;
        }
        let request = self.queue.remove(0);
        Some(Transmit {
            dst: self.gateway,
            payload: request.encode(),
        })
    }

    fn poll_output(&mut self) -> Option<Presence> {
        self.output.take()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        if self.rounds < self.config.sends {
            return Some(self.next_round.min(self.deadline));
        }
        Some(self.deadline)
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if now >= self.deadline {
            self.finish();
        } else if self.rounds < self.config.sends && now >= self.next_round {
            self.round(now);
        }
    }

    fn handle_datagram(&mut self, _now: Instant, from: SocketAddr, bytes: &[u8]) {
        if self.done || from != self.gateway {
            debug!(%from, "PCP/NAT-PMP presence: ignoring a datagram not from the gateway");
            return;
        }
        match ServerToClient::decode(bytes) {
            Ok(ServerToClient::PmpExternalAddress {
                result,
                external_ip,
                ..
            }) => {
                self.seen.nat_pmp = true;
                if result == PmpResult::SUCCESS {
                    self.seen.external_ip = Some(external_ip);
                }
            }
            Ok(ServerToClient::PmpMap { .. } | ServerToClient::PmpError { .. }) => {
                self.seen.nat_pmp = true;
            }
            Ok(ServerToClient::PcpMap { .. } | ServerToClient::PcpOther { .. }) => {
                // A PCP server of another version answers in its own
                // version: still PCP. (decode only accepts version 2 and
                // UNSUPP_VERSION answers here.)
                self.seen.pcp = true;
            }
            Err(why) => debug!(%from, %why, "PCP/NAT-PMP presence: ignoring a bad answer"),
        }
        if self.seen.nat_pmp && self.seen.pcp {
            self.finish();
        }
    }
}

/// Asks the gateway (as [`PmpGateway::find`] finds it) whether it speaks
/// NAT-PMP and PCP; returns the gateway asked and what answered. Bounded
/// by `config.wait`.
pub async fn presence(
    options: &PmpOptions,
    config: PresenceConfig,
) -> Result<(Ipv4Addr, Presence), PmpError> {
    let gateway = PmpGateway::find(options)?;
    let server = SocketAddr::from((gateway.addr(), SERVER_PORT));
    let socket = UdpSocket::bind((gateway.local_ip(), 0))
        .await
        .map_err(|source| PmpError::Socket {
            gateway: server,
            source,
        })?;
    let now = tokio::time::Instant::now().into_std();
    let mut probe = PresenceProbe::new(now, gateway.addr(), gateway.local_ip(), config);
    let seen = drive_udp(
        &socket,
        &mut probe,
        DriveOptions::new("PCP/NAT-PMP presence"),
    )
    .await
    .unwrap_or_default();
    Ok((gateway.addr(), seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);

    /// A gateway that speaks the given protocols, in virtual time.
    /// Returns what the probe saw, the datagrams it sent, and how long it
    /// took.
    fn run(nat_pmp: bool, pcp: bool) -> (Presence, usize, Duration) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut probe = PresenceProbe::new(now, GATEWAY, CLIENT, PresenceConfig::default());
        let from = SocketAddr::from((GATEWAY, SERVER_PORT));
        let mut sent = 0;
        for _ in 0..100 {
            while let Some(t) = probe.poll_transmit() {
                assert_eq!(t.dst, from, "only the gateway is asked");
                sent += 1;
                let answer: Option<Vec<u8>> = match t.payload[0] {
                    2 if pcp => {
                        let mut a = vec![2, 0x80, 0, 0];
                        a.extend_from_slice(&[0; 20]);
                        Some(a)
                    }
                    // A NAT-PMP server's UNSUPP_VERSION to PCP.
                    2 if nat_pmp => Some(vec![0, 128, 0, 1, 0, 0, 0, 9]),
                    0 if nat_pmp => Some(vec![0, 128, 0, 0, 0, 0, 0, 9, 198, 51, 100, 2]),
                    _ => None,
                };
                if let Some(a) = answer {
                    probe.handle_datagram(now, from, &a);
                }
            }
            if let Some(seen) = probe.poll_output() {
                return (seen, sent, now - t0);
            }
            now = probe.poll_timeout().expect("a running probe has a timer");
            probe.handle_timeout(now);
        }
        panic!("the probe did not finish");
    }

    #[test]
    fn a_gateway_with_both_answers_both_at_once() {
        let (seen, sent, took) = run(true, true);
        assert_eq!(
            seen,
            Presence {
                nat_pmp: true,
                pcp: true,
                external_ip: Some(Ipv4Addr::new(198, 51, 100, 2)),
            }
        );
        assert_eq!((sent, took), (2, Duration::ZERO));
    }

    #[test]
    fn a_nat_pmp_only_gateway_is_not_taken_for_pcp() {
        let (seen, sent, took) = run(true, false);
        assert!(seen.nat_pmp && !seen.pcp, "{seen:?}");
        // Its UNSUPP_VERSION answers do not stop the PCP resends.
        assert_eq!(sent, 2 + 2);
        assert_eq!(took, Duration::from_millis(1250));
    }

    #[test]
    fn a_pcp_only_gateway() {
        let (seen, _, _) = run(false, true);
        assert!(!seen.nat_pmp && seen.pcp, "{seen:?}");
        assert_eq!(seen.external_ip, None);
    }

    #[test]
    fn a_silent_gateway_costs_the_whole_wait_and_three_rounds() {
        let (seen, sent, took) = run(false, false);
        assert_eq!(seen, Presence::default());
        assert_eq!(sent, 6);
        assert_eq!(took, Duration::from_millis(1250));
    }

    #[test]
    fn answers_from_elsewhere_do_not_count() {
        let now = Instant::now();
        let mut probe = PresenceProbe::new(now, GATEWAY, CLIENT, PresenceConfig::default());
        let answer = [0, 128, 0, 0, 0, 0, 0, 9, 198, 51, 100, 2];
        probe.handle_datagram(now, "10.0.1.1:5350".parse().unwrap(), &answer);
        probe.handle_datagram(now, "10.0.1.99:5351".parse().unwrap(), &answer);
        probe.handle_datagram(now, SocketAddr::from((GATEWAY, SERVER_PORT)), b"junk");
        probe.handle_timeout(now + Duration::from_secs(2));
        assert_eq!(probe.poll_output(), Some(Presence::default()));
    }
}
