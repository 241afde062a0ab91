//! Port spraying: a direct UDP path between an *easy* NAT (one mapping for
//! all destinations) and a *hard* one (endpoint-dependent mapping: a new
//! public port per destination), where plain hole punching
//! ([`punch`](mod@crate::punch)) cannot work, because the easy side cannot
//! learn the port the hard NAT gives the flow towards it.
//!
//! Tailscale's method, as two sans-IO machines ([`HardSide`], [`EasySide`];
//! time and randomness are arguments) and their tokio drivers
//! ([`spray_hard`], [`spray_easy`]). The hard side opens N sockets and sends
//! from each to the easy side's mapped address `E`: its NAT opens N mappings
//! `p_0 .. p_{N-1}` that accept `E`. The easy side sends probes from its one
//! socket to the hard side's public IP at ports it cannot know: the
//! [predicted](predict_ports) ones first, then ports drawn without
//! repetition from a seeded generator, paced, within a budget of packets and
//! seconds. Each probe lands on one of the N mappings with probability
//! N / 64,512 (ports 1024..=65535): with N = 256, 256 probes find a path
//! 64% of the time, 1,024 98%, 2,048 99.97%.
//!
//! ```text
//! hard side: sockets 0..N, hard NAT          easy side: one socket, mapped to E
//!   ping ──▶ E from every socket i, again      (a port-restricted easy NAT drops
//!   every refresh_interval: the hard NAT        them until it has sent to p_i;
//!   maps socket i to p_i for E                  a full cone lets them in)
//!                                          ◀── ping ──▶ hard IP:q for q = predicted
//!                                              ports, then random ones, paced
//!   ping from E on socket i (q = p_i):
//!   pong ──▶ E from socket i
//!                                              the first authenticated ping or pong
//!                                              from the hard side, from X = hard IP:p_i:
//!                                              stop spraying; nominate ──▶ X
//!                                              (resent until acknowledged)
//!   nominate on socket i: nominate-ack ──▶ E
//!   from socket i;
//!   Event::Found { socket: i, remote: E }      nominate-ack from X (or any non-probe
//!                                              datagram from X, e.g. QUIC):
//!                                              Event::Found { socket: 0, remote: X }
//! ```
//!
//! Agreement: only the easy side decides, once (like punch's controlling
//! side), and the hard side confirms only the socket a nomination arrived
//! on, so both name the two ends of the same pair. Hand the winning socket
//! and remote to QUIC ([`quic_connect`](crate::quic::quic_connect)).
//!
//! Probes are punch's ([`PROBE_LEN`](crate::punch::PROBE_LEN) bytes, keyed
//! BLAKE3 tag, role byte: the easy side takes the controlling role), under
//! their own key ([`SPRAY_KEY_CONTEXT`]) so that a punch probe never counts
//! as a spray probe, or the other way round. Datagrams that fail the tag are
//! not ours (logged at debug) and never stop the spray.
//!
//! Budgets: the easy side sends at most [`SprayConfig::probe_budget`] probes
//! (predicted ports count), the k-th (from 0) never before `start + k /
//! rate`, and none at or after `start + time_budget`; it listens for answers
//! [`ANSWER_WAIT`] longer, then reports [`SprayFailure::NoAnswer`]. A
//! nomination is sent at most [`NOMINATE_TRIES`] times, outside the probe
//! budget. The hard side sends N probes per refresh round during the time
//! budget and listens until the easy side's last nomination could arrive.
//!
//! Timing: the hard side's first round must leave before the easy side's
//! first probes arrive (both start when signalling says so; the probes
//! take a one-way trip, the hard NAT maps at once). Probes that arrive
//! earlier find no mapping and are lost, which lowers the odds, nothing more.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::task::Poll;
use std::time::{Duration, Instant};

use ferry_nat::drive::{DriveOptions, UdpMachine, drive_udp};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tracing::debug;

use crate::punch::{Kind, Probe, Transmit, decode, encode};

pub mod both;

/// The context string for `SecureChannel::derive_secret` that gives the
/// spray key (from the same secret as punch's
/// [`PROBE_KEY_CONTEXT`](crate::punch::PROBE_KEY_CONTEXT)).
pub const SPRAY_KEY_CONTEXT: &str = "ferry v1 spray";

/// Most sockets a hard side opens (file descriptors are finite).
pub const MAX_SOCKETS: usize = 512;

/// The lowest port the easy side sprays at random (below are system ports
/// that NATs rarely hand out).
pub const FIRST_RANDOM_PORT: u16 = 1024;

/// How long the easy side listens after its time budget for answers to
/// its last probes.
pub const ANSWER_WAIT: Duration = Duration::from_millis(500);

/// Gap between the copies of a nomination.
pub const NOMINATE_RETRY: Duration = Duration::from_millis(100);

/// Most copies of a nomination the easy side sends.
pub const NOMINATE_TRIES: u32 = 10;

/// Ports [`predict_ports`] adds beyond one per socket, for mappings that
/// other flows through the hard NAT take meanwhile.
pub const PREDICTION_SLACK: usize = 64;

/// The largest step between the ports of consecutive mappings that
/// [`predict_ports`] believes: two random ports are a "step" apart too.
pub const MAX_PREDICTED_STEP: u16 = 32;

/// The easy side's role byte in punch's probe format: it nominates.
const EASY_ROLE: bool = true;
/// Ports FIRST_RANDOM_PORT..=65535.
const RANDOM_PORTS: usize = (u16::MAX - FIRST_RANDOM_PORT) as usize + 1;

/// Settings of both spray machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SprayConfig {
    /// Sockets the hard side opens (at most [`MAX_SOCKETS`]).
    pub sockets: usize,
    /// Most probes the easy side sends, predicted ports included.
    pub probe_budget: usize,
    /// How long the easy side sends probes and the hard side refreshes.
    pub time_budget: Duration,
    /// The easy side's pace, in probes per second (at least 1).
    pub rate: u32,
    /// Gap between the hard side's rounds (one probe from every socket),
    /// which keep its mappings open.
    pub refresh_interval: Duration,
    /// Seeds the easy side's ports and both sides' transaction ids.
    pub seed: u64,
}

impl Default for SprayConfig {
    /// 256 sockets, 2,048 probes at 600 per second (3.4 s) within 4 s,
    /// a refresh every second.
    fn default() -> Self {
        SprayConfig {
            sockets: 256,
            probe_budget: 2048,
            time_budget: Duration::from_secs(4),
            rate: 600,
            refresh_interval: Duration::from_secs(1),
            seed: 0,
        }
    }
}

/// What a spray machine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Both sides agreed on a path.
    Found {
        /// The hard side's socket index that the path uses (always 0 on the
        /// easy side, which has one socket).
        socket: usize,
        /// The peer's address as seen from that socket: where QUIC goes.
        remote: SocketAddr,
    },
    /// The budget ran out without an agreed path.
    Failed {
        /// What was seen.
        why: SprayFailure,
    },
}

/// Why spraying found no path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SprayFailure {
    /// Nothing authenticated arrived from the peer.
    #[error("no probe got through; the odds of port spraying ran out")]
    NoAnswer,
    /// The hard side answered probes, but no nomination arrived.
    #[error("the peer's probes arrived, but it never chose a path")]
    NotNominated,
    /// The easy side chose a path, but no acknowledgement came back.
    #[error("the peer never acknowledged the chosen path")]
    NominationUnanswered,
}

/// A datagram the hard side sends, and from which of its sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketTransmit {
    /// The socket's index, `0..sockets`.
    pub socket: usize,
    /// Where to send it.
    pub dst: SocketAddr,
    /// The bytes to send.
    pub payload: Vec<u8>,
}

/// The hard side's machine: N sockets, each probing the easy side's mapped
/// address; see the [module docs](self).
#[derive(Debug)]
pub struct HardSide {
    key: [u8; 32],
    config: SprayConfig,
    rng: StdRng,
    easy: SocketAddr,
    spray_end: Instant,
    deadline: Instant,
    next_round: Instant,
    heard: bool,
    state: HardState,
    transmits: VecDeque<SocketTransmit>,
    events: VecDeque<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HardState {
    Spraying,
    Found { socket: usize, remote: SocketAddr },
    Failed,
}

impl HardSide {
    /// Starts at `now` towards `easy_mapped`, the easy side's public
    /// mapping (from its STUN answer), with `config.sockets` sockets
    /// (clamped to 1..=[`MAX_SOCKETS`]). `key` is the spray key
    /// ([`SPRAY_KEY_CONTEXT`]). The first round is queued at once.
    pub fn new(now: Instant, key: [u8; 32], easy_mapped: SocketAddr, config: SprayConfig) -> Self {
        let config = SprayConfig {
            sockets: config.sockets.clamp(1, MAX_SOCKETS),
            ..config
        };
        let spray_end = now + config.time_budget;
        let mut hard = HardSide {
            key,
            config,
            rng: StdRng::seed_from_u64(config.seed ^ 0x6861_7264),
            easy: easy_mapped,
            spray_end,
            deadline: spray_end + ANSWER_WAIT + NOMINATE_RETRY * NOMINATE_TRIES,
            next_round: now,
            heard: false,
            state: HardState::Spraying,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        hard.handle_timeout(now);
        hard
    }

    /// How many sockets this machine sends from (`0..sockets()`).
    pub fn sockets(&self) -> usize {
        self.config.sockets
    }

    /// Feeds a datagram that arrived on socket `socket` from `from`.
    /// Returns `true` if it was a valid spray probe (consumed), `false` if
    /// it is not ours (QUIC, garbage, a forgery, a reflected probe).
    pub fn handle_datagram(
        &mut self,
        _now: Instant,
        socket: usize,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        if socket >= self.config.sockets {
            return false;
        }
        let Some(probe) = decode(&self.key, data) else {
            debug!(%from, socket, "spray: not a probe of ours");
            return false;
        };
        if probe.from_controlling != EASY_ROLE {
            debug!(%from, socket, "spray: dropping a probe with our own role (reflected?)");
            return false;
        }
        self.heard = true;
        match (probe.kind, self.state) {
            (Kind::Ping, HardState::Spraying) => {
                self.send(socket, from, Kind::Pong, probe.txid);
            }
            (Kind::Nominate, HardState::Spraying) => {
                debug!(%from, socket, "spray: the easy side chose this socket");
                self.send(socket, from, Kind::NominateAck, probe.txid);
                self.state = HardState::Found {
                    socket,
                    remote: from,
                };
                self.events.push_back(Event::Found {
                    socket,
                    remote: from,
                });
            }
            (Kind::Nominate, HardState::Found { socket: s, remote }) => {
                if s == socket && remote == from {
                    self.send(socket, from, Kind::NominateAck, probe.txid);
                } else {
                    debug!(%from, socket, "spray: ignoring a nomination of another path");
                }
            }
            _ => {}
        }
        true
    }

    /// The next datagram to send, and from which socket.
    pub fn poll_transmit(&mut self) -> Option<SocketTransmit> {
        self.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next;
    /// `None` once found or failed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            HardState::Spraying if self.next_round < self.spray_end => {
                Some(self.next_round.min(self.deadline))
            }
            HardState::Spraying => Some(self.deadline),
            HardState::Found { .. } | HardState::Failed => None,
        }
    }

    /// Runs the timers due at `now`: refresh rounds, giving up.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state != HardState::Spraying {
            return;
        }
        if now >= self.deadline {
            let why = if self.heard {
                SprayFailure::NotNominated
            } else {
                SprayFailure::NoAnswer
            };
            debug!(%why, "spray (hard side) gave up");
            self.state = HardState::Failed;
            self.events.push_back(Event::Failed { why });
            return;
        }
        if now >= self.next_round && now < self.spray_end {
            for socket in 0..self.config.sockets {
                let txid = txid(&mut self.rng);
                self.send(socket, self.easy, Kind::Ping, txid);
            }
            self.next_round = now + self.config.refresh_interval.max(Duration::from_millis(1));
        }
    }

    /// The socket and remote found, once there are.
    pub fn found(&self) -> Option<(usize, SocketAddr)> {
        match self.state {
            HardState::Found { socket, remote } => Some((socket, remote)),
            _ => None,
        }
    }

    fn send(&mut self, socket: usize, dst: SocketAddr, kind: Kind, txid: [u8; 12]) {
        let probe = Probe {
            kind,
            from_controlling: !EASY_ROLE,
            txid,
            argument: 0,
        };
        self.transmits.push_back(SocketTransmit {
            socket,
            dst,
            payload: encode(&self.key, &probe).to_vec(),
        });
    }
}

/// The easy side's machine: one socket, probes to the hard side's IP at
/// predicted, then random ports; see the [module docs](self).
#[derive(Debug)]
pub struct EasySide {
    key: [u8; 32],
    config: SprayConfig,
    rng: StdRng,
    hard_ip: IpAddr,
    schedule: ProbeSchedule,
    state: EasyState,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EasyState {
    Spraying,
    Nominating {
        remote: SocketAddr,
        txid: [u8; 12],
        tries: u32,
        next_retry: Instant,
    },
    Found {
        remote: SocketAddr,
    },
    Failed,
}

impl EasySide {
    /// Starts at `now` towards `hard_ip`, the hard side's public IP,
    /// probing the `predicted` ports first (in order; see
    /// [`predict_ports`]; port 0 and repeats are skipped). `key` is the
    /// spray key ([`SPRAY_KEY_CONTEXT`]). The first probe is queued at once.
    pub fn new(
        now: Instant,
        key: [u8; 32],
        hard_ip: IpAddr,
        predicted: &[u16],
        config: SprayConfig,
    ) -> Self {
        let mut easy = EasySide {
            key,
            config,
            rng: StdRng::seed_from_u64(config.seed),
            hard_ip,
            schedule: ProbeSchedule::new(now, unique_ports(predicted).into(), &config),
            state: EasyState::Spraying,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        easy.handle_timeout(now);
        easy
    }

    /// Feeds a datagram that arrived from `from`. Returns `true` if it was
    /// a valid spray probe (consumed), `false` if it is not ours (QUIC,
    /// garbage, a forgery, a reflected probe).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        let Some(probe) = decode(&self.key, data) else {
            if let EasyState::Nominating { remote, .. } = self.state {
                if remote == from {
                    debug!(%from, "spray: the hard side sent non-probe traffic: taking it as the acknowledgement");
                    self.found(remote);
                    return false;
                }
            }
            debug!(%from, "spray: not a probe of ours");
            return false;
        };
        if probe.from_controlling == EASY_ROLE {
            debug!(%from, "spray: dropping a probe with our own role (reflected?)");
            return false;
        }
        match (probe.kind, self.state) {
            (Kind::Ping | Kind::Pong, EasyState::Spraying) => {
                debug!(remote = %from, probes = self.schedule.sent, "spray: the hard side answered; choosing it");
                self.state = EasyState::Nominating {
                    remote: from,
                    txid: txid(&mut self.rng),
                    tries: 0,
                    next_retry: now,
                };
                self.handle_timeout(now);
            }
            (Kind::NominateAck, EasyState::Nominating { remote, txid, .. })
                if remote == from && txid == probe.txid =>
            {
                self.found(remote);
            }
            _ => {}
        }
        true
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next;
    /// `None` once found or failed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            EasyState::Spraying => {
                let listen_end = self.spray_end() + ANSWER_WAIT;
                match self.schedule.next_due(self.spray_end()) {
                    Some(at) => Some(at.min(listen_end)),
                    None => Some(listen_end),
                }
            }
            EasyState::Nominating { next_retry, .. } => Some(next_retry),
            EasyState::Found { .. } | EasyState::Failed => None,
        }
    }

    /// Runs the timers due at `now`: the probes due by then, nomination
    /// copies, giving up.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            EasyState::Spraying => {
                let end = self.spray_end();
                while let Some((_, port)) = self.schedule.due(now, end, &mut self.rng) {
                    let txid = txid(&mut self.rng);
                    self.send(SocketAddr::new(self.hard_ip, port), Kind::Ping, txid);
                }
                if now >= end + ANSWER_WAIT {
                    debug!(probes = self.schedule.sent, "spray (easy side) gave up");
                    self.fail(SprayFailure::NoAnswer);
                }
            }
            EasyState::Nominating {
                remote,
                txid,
                tries,
                next_retry,
            } if now >= next_retry => {
                if tries >= NOMINATE_TRIES {
                    self.fail(SprayFailure::NominationUnanswered);
                    return;
                }
                self.send(remote, Kind::Nominate, txid);
                self.state = EasyState::Nominating {
                    remote,
                    txid,
                    tries: tries + 1,
                    next_retry: now + NOMINATE_RETRY,
                };
            }
            _ => {}
        }
    }

    /// How many probes have been sent (nominations not counted).
    pub fn probes_sent(&self) -> usize {
        self.schedule.sent
    }

    /// The remote found, once there is one.
    pub fn remote(&self) -> Option<SocketAddr> {
        match self.state {
            EasyState::Found { remote } => Some(remote),
            _ => None,
        }
    }

    fn spray_end(&self) -> Instant {
        self.schedule.end(&self.config)
    }

    fn found(&mut self, remote: SocketAddr) {
        debug!(%remote, probes = self.schedule.sent, "spray found a path");
        self.state = EasyState::Found { remote };
        self.events.push_back(Event::Found { socket: 0, remote });
    }

    fn fail(&mut self, why: SprayFailure) {
        self.state = EasyState::Failed;
        self.events.push_back(Event::Failed { why });
    }

    fn send(&mut self, dst: SocketAddr, kind: Kind, txid: [u8; 12]) {
        let probe = Probe {
            kind,
            from_controlling: EASY_ROLE,
            txid,
            argument: 0,
        };
        self.transmits.push_back(Transmit {
            dst,
            payload: encode(&self.key, &probe).to_vec(),
        });
    }
}

/// Predicts the ports a hard NAT will give the hard side's `sockets` new
/// sockets, from its STUN answers: `observed` holds (mapped address,
/// destination) pairs in the order they were made, e.g. towards the STUN
/// server's two ports.
///
/// If the mapped ports grow (or shrink) by one fixed step per new
/// destination, at most [`MAX_PREDICTED_STEP`], the next mappings continue
/// the sequence: the result is the next `sockets + PREDICTION_SLACK` ports
/// of it, nearest first (the slack covers mappings other flows take
/// meanwhile; ports at or before the last observed one are taken). If every
/// destination got the same port (an easy NAT after all), that port. Empty
/// when nothing can be told: fewer than two destinations, mapped addresses
/// on different IPs, uneven or too large steps (a random allocator).
pub fn predict_ports(observed: &[(SocketAddr, SocketAddr)], sockets: usize) -> Vec<u16> {
    let mut destinations = HashSet::new();
    let mapped: Vec<SocketAddr> = observed
        .iter()
        .filter(|(_, dst)| destinations.insert(*dst))
        .map(|(mapped, _)| *mapped)
        .collect();
    let [first, .., last] = mapped[..] else {
        return Vec::new();
    };
    if mapped.iter().any(|m| m.ip() != first.ip()) {
        return Vec::new();
    }
    let steps: Vec<i32> = mapped
        .windows(2)
        .map(|w| i32::from(w[1].port()) - i32::from(w[0].port()))
        .collect();
    let step = steps[0];
    if steps.iter().any(|&s| s != step) || step.unsigned_abs() > u32::from(MAX_PREDICTED_STEP) {
        return Vec::new();
    }
    if step == 0 {
        return vec![last.port()];
    }
    (1..=sockets.saturating_add(PREDICTION_SLACK))
        .map_while(|k| {
            let k = i32::try_from(k).ok()?;
            let port = i32::from(last.port()) + k * step;
            u16::try_from(port).ok().filter(|&p| p != 0)
        })
        .collect()
}

/// The probe schedule of both probing sides ([`EasySide`] and
/// [`both::BothSide`]): the `predicted` ports first (each once), then
/// random ports of `FIRST_RANDOM_PORT..=65535` without repeats; probe k
/// never before `start + k / rate`, none at or after `start +
/// time_budget`, at most `probe_budget`.
#[derive(Debug, Clone)]
struct ProbeSchedule {
    predicted: VecDeque<u16>,
    tried: HashSet<u16>,
    /// How many of `tried` are in the random range.
    random_tried: usize,
    start: Instant,
    interval: Duration,
    budget: usize,
    sent: usize,
}

impl ProbeSchedule {
    fn new(now: Instant, predicted: VecDeque<u16>, config: &SprayConfig) -> ProbeSchedule {
        ProbeSchedule {
            predicted,
            tried: HashSet::new(),
            random_tried: 0,
            start: now,
            // Rounded up, so that the pace never exceeds the rate.
            interval: Duration::from_nanos(
                1_000_000_000_u64.div_ceil(u64::from(config.rate.max(1))),
            ),
            budget: config.probe_budget,
            sent: 0,
        }
    }

    /// When probing ends (the time budget).
    fn end(&self, config: &SprayConfig) -> Instant {
        self.start + config.time_budget
    }

    /// When the next probe is due, if there is one before `end`.
    fn next_due(&self, end: Instant) -> Option<Instant> {
        let at = self.next_probe()?;
        (self.may_send_more() && at < end).then_some(at)
    }

    /// The next probe due by `now` (before `end`): its number, from 0, and
    /// its port, drawn from `rng`; counted as sent.
    fn due(&mut self, now: Instant, end: Instant, rng: &mut StdRng) -> Option<(usize, u16)> {
        if !self.may_send_more() {
            return None;
        }
        let at = self.next_probe()?;
        if at > now || at >= end {
            return None;
        }
        let port = self.next_port(rng)?;
        self.sent += 1;
        Some((self.sent - 1, port))
    }

    fn may_send_more(&self) -> bool {
        self.sent < self.budget && (self.random_tried < RANDOM_PORTS || !self.predicted.is_empty())
    }

    /// When the next probe is due: the k-th never before `start + k / rate`.
    fn next_probe(&self) -> Option<Instant> {
        let k = u32::try_from(self.sent).ok()?;
        self.start.checked_add(self.interval.checked_mul(k)?)
    }

    fn next_port(&mut self, rng: &mut StdRng) -> Option<u16> {
        while let Some(port) = self.predicted.pop_front() {
            if self.tried.insert(port) {
                self.random_tried += usize::from(port >= FIRST_RANDOM_PORT);
                return Some(port);
            }
        }
        if self.random_tried >= RANDOM_PORTS {
            return None;
        }
        loop {
            let port = rng.gen_range(FIRST_RANDOM_PORT..=u16::MAX);
            if self.tried.insert(port) {
                self.random_tried += 1;
                return Some(port);
            }
        }
    }
}

/// `ports` without port 0 and without repeats, in order.
fn unique_ports(ports: &[u16]) -> Vec<u16> {
    let mut seen = HashSet::new();
    ports
        .iter()
        .copied()
        .filter(|&port| port != 0 && seen.insert(port))
        .collect()
}

/// What went wrong in [`bind_spray_sockets`], [`spray_hard`] or
/// [`spray_easy`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SprayError {
    /// Zero sockets, or more than [`MAX_SOCKETS`].
    #[error("port spraying needs 1 to {MAX_SOCKETS} sockets, not {asked}")]
    SocketCount {
        /// How many were asked for.
        asked: usize,
    },
    /// The process may not open that many more file descriptors.
    #[error(
        "port spraying needs {needed} more file descriptors but only {available} are left \
         under this process's limit; raise it (ulimit -n) or spray with fewer sockets"
    )]
    FileLimit {
        /// Sockets asked for, plus headroom for the rest of the transfer.
        needed: usize,
        /// Descriptors left under the soft limit.
        available: usize,
    },
    /// A socket could not be bound.
    #[error("could not open a UDP socket for port spraying: {source}")]
    Bind {
        /// The underlying socket error.
        #[source]
        source: io::Error,
    },
    /// The budget ran out.
    #[error("port spraying found no path within {waited:?}: {why}")]
    Failed {
        /// What was seen.
        why: SprayFailure,
        /// How long it ran.
        waited: Duration,
    },
}

/// What [`spray_easy`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EasySprayed {
    /// The hard side's address that answered: where QUIC goes.
    pub remote: SocketAddr,
    /// Probes sent until then (predicted ones included).
    pub probes: usize,
}

/// The hard side's winning socket, as [`spray_hard`] returns it.
#[derive(Debug)]
pub struct HardSprayed {
    /// The socket the path uses; hand it to QUIC (`into_std()`).
    pub socket: UdpSocket,
    /// Its index among the sockets given.
    pub index: usize,
    /// The easy side's address as seen from it: where QUIC goes.
    pub remote: SocketAddr,
}

/// File descriptors [`bind_spray_sockets`] leaves free for everything else
/// (QUIC, TCP paths, the signalling connection, files being sent).
pub const FILE_HEADROOM: usize = 64;

/// Binds `count` UDP sockets on `ip`, port 0, for [`spray_hard`] (inside a
/// tokio runtime, which registers them): errors
/// when `count` is 0 or above [`MAX_SOCKETS`], or when the process's file
/// limit leaves too few descriptors (checked first on Linux; elsewhere the
/// failing bind tells).
pub fn bind_spray_sockets(ip: IpAddr, count: usize) -> Result<Vec<UdpSocket>, SprayError> {
    if count == 0 || count > MAX_SOCKETS {
        return Err(SprayError::SocketCount { asked: count });
    }
    let needed = count + FILE_HEADROOM;
    if let Some(available) = descriptors_left() {
        if available < needed {
            return Err(SprayError::FileLimit { needed, available });
        }
    }
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let bound = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))
            .and_then(|socket| {
                socket.set_nonblocking(true)?;
                Ok(socket)
            })
            .and_then(UdpSocket::from_std);
        match bound {
            Ok(socket) => sockets.push(socket),
            // EMFILE / ENFILE: the limit is lower than it looked.
            Err(e) if matches!(e.raw_os_error(), Some(23 | 24)) => {
                return Err(SprayError::FileLimit {
                    needed,
                    available: sockets.len(),
                });
            }
            Err(source) => return Err(SprayError::Bind { source }),
        }
    }
    Ok(sockets)
}

/// Runs the hard side on `sockets` (from [`bind_spray_sockets`]; not
/// connected, read by no one else meanwhile) towards `easy_mapped` until
/// the easy side chose one of them; returns it, dropping the others.
/// `config.sockets` is taken from `sockets.len()`.
pub async fn spray_hard(
    mut sockets: Vec<UdpSocket>,
    easy_mapped: SocketAddr,
    key: [u8; 32],
    config: SprayConfig,
) -> Result<HardSprayed, SprayError> {
    if sockets.is_empty() || sockets.len() > MAX_SOCKETS {
        return Err(SprayError::SocketCount {
            asked: sockets.len(),
        });
    }
    let started = tokio::time::Instant::now();
    let config = SprayConfig {
        sockets: sockets.len(),
        ..config
    };
    let mut hard = HardSide::new(now(), key, easy_mapped, config);
    let options = DriveOptions::new("port spraying");
    let mut buffer = vec![0u8; options.buffer_len];
    let mut first = 0;
    loop {
        while let Some(transmit) = hard.poll_transmit() {
            let socket = &sockets[transmit.socket];
            let dst = transmit.dst;
            match tokio::time::timeout(options.send_timeout, socket.send_to(&transmit.payload, dst))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => debug!(%dst, "port spraying: send failed: {e}"),
                Err(_) => debug!(%dst, "port spraying: send timed out"),
            }
        }
        let failed = |why| SprayError::Failed {
            why,
            waited: started.elapsed(),
        };
        match hard.poll_event() {
            Some(Event::Found { socket, remote }) => {
                return Ok(HardSprayed {
                    socket: sockets.swap_remove(socket),
                    index: socket,
                    remote,
                });
            }
            Some(Event::Failed { why }) => return Err(failed(why)),
            None => {}
        }
        let Some(deadline) = hard.poll_timeout() else {
            return Err(failed(SprayFailure::NoAnswer));
        };
        tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                hard.handle_timeout(now());
            }
            (index, received) = recv_any(&sockets, &mut buffer, first) => {
                // Start the next scan after this socket: a busy one must
                // not starve the rest.
                first = index + 1;
                match received {
                    Ok((len, from)) => {
                        hard.handle_datagram(now(), index, from, &buffer[..len]);
                    }
                    Err(e) => {
                        debug!("port spraying: receive error on socket {index}: {e}");
                        tokio::time::sleep(options.receive_error_pause).await;
                    }
                }
            }
        }
    }
}

/// Runs the easy side on `socket` (the one whose mapping the hard side
/// sprays towards; not connected) towards `hard_ip`, `predicted` ports
/// first, until a path is agreed; returns the hard side's address as seen
/// from `socket`, where QUIC goes.
pub async fn spray_easy(
    socket: &UdpSocket,
    hard_ip: IpAddr,
    predicted: &[u16],
    key: [u8; 32],
    config: SprayConfig,
) -> Result<EasySprayed, SprayError> {
    let started = tokio::time::Instant::now();
    let mut easy = EasySide::new(now(), key, hard_ip, predicted, config);
    let options = DriveOptions {
        receive_error_pause: Duration::from_millis(5),
        ..DriveOptions::new("port spraying")
    };
    let why = match drive_udp(socket, &mut easy, options).await {
        Some(Event::Found { remote, .. }) => {
            return Ok(EasySprayed {
                remote,
                probes: easy.probes_sent(),
            });
        }
        Some(Event::Failed { why }) => why,
        None => SprayFailure::NoAnswer,
    };
    Err(SprayError::Failed {
        why,
        waited: started.elapsed(),
    })
}

/// [`spray_easy`] stops at the first event.
impl UdpMachine for EasySide {
    type Output = Event;

    fn poll_transmit(&mut self) -> Option<Transmit> {
        EasySide::poll_transmit(self)
    }

    fn poll_output(&mut self) -> Option<Event> {
        self.poll_event()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        EasySide::poll_timeout(self)
    }

    fn handle_timeout(&mut self, now: Instant) {
        EasySide::handle_timeout(self, now);
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        EasySide::handle_datagram(self, now, from, bytes);
    }
}

/// The first datagram on any of `sockets`, scanning from `first`.
async fn recv_any(
    sockets: &[UdpSocket],
    buffer: &mut [u8],
    first: usize,
) -> (usize, io::Result<(usize, SocketAddr)>) {
    std::future::poll_fn(|cx| {
        for k in 0..sockets.len() {
            let index = (first + k) % sockets.len();
            let mut read = ReadBuf::new(buffer);
            match sockets[index].poll_recv_from(cx, &mut read) {
                Poll::Ready(Ok(from)) => {
                    return Poll::Ready((index, Ok((read.filled().len(), from))));
                }
                Poll::Ready(Err(e)) => return Poll::Ready((index, Err(e))),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// File descriptors left under the soft limit, on Linux (from /proc);
/// `None` where that cannot be told (or there is no limit).
fn descriptors_left() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let soft: usize = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some(soft.saturating_sub(open))
}

fn txid(rng: &mut StdRng) -> [u8; 12] {
    let mut txid = [0u8; 12];
    rng.fill_bytes(&mut txid);
    txid
}

/// Tokio's clock, as the machines take it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests;
