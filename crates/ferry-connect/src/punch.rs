//! UDP hole punching: authenticated probes until both peers agree on one
//! working address pair.
//!
//! [`Puncher`] is a sans-IO state machine (time and randomness are
//! arguments); [`punch`] drives it on a tokio [`UdpSocket`] with ferry-nat's
//! one UDP loop ([`drive_udp`]), and [`punch_with_late`] also feeds it the
//! peer's addresses that arrive while it runs
//! ([`Puncher::add_peer_address`]). Each peer sends probes from the one socket
//! it will later hand to QUIC, to every UDP candidate of the other peer, so
//! each NAT sees outgoing traffic and lets the answers in.
//!
//! ```text
//! controlling (sender)                              controlled (receiver)
//!   ping(t1) ──▶ every candidate of the peer  ◀── ping(t2) to every candidate
//!   on a valid ping from X: pong(t) ──▶ X, and ping X too (X may be new:
//!                          a peer-reflexive address behind a NAT)
//!   pong(t1) from X, where ping t1 went to X: the pair works both ways
//!   nominate(n, rtt) ──▶ X (first such X only, resent until answered)
//!                                            ◀── nominate-ack(n)
//!   Event::Confirmed { remote: X }              Event::Confirmed { remote: Y }
//!                                               (Y = where the nomination came from)
//!   keepalive pings every few seconds until the caller stops the puncher
//!   a candidate of the peer that arrives late: pinged at once, then in
//!   every round like the others
//! ```
//!
//! Agreement: only the controlling side nominates, exactly once, and only a
//! pair it has proven both ways (its ping to X was answered from X). The
//! controlled side accepts the first nomination, answers every copy of it,
//! and ignores nominations from any other address; it confirms the address
//! the nomination came from, which is the controlling side's socket as seen
//! through its NAT for destination X. So both sides name the two ends of the
//! same pair. Lost nominations and acknowledgements are resent; if the
//! controlled side has already moved on (QUIC on the socket) when an ack is
//! lost, the first non-probe datagram from X counts as the acknowledgement
//! (only the peer sends non-probe traffic from X during punching).
//!
//! A probe is [`PROBE_LEN`] bytes: magic `3f 46 59 50` (`?FYP`), kind, the
//! sender's role, a 12-byte transaction id, a 4-byte argument (the RTT in
//! microseconds in a nomination), and the first 16 bytes of
//! `blake3::keyed_hash(probe key, everything before)`. The role byte stops a
//! reflected probe of our own from counting as the peer's. The first byte has
//! the QUIC fixed bit clear, so quinn drops late probes without answering.
//! Datagrams with the wrong magic, length or tag are not ours (logged at debug).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_nat::drive::{DriveOptions, UdpMachine, drive_udp_with};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

use crate::error::ConnectError;
pub use crate::error::PunchFailure;
// A datagram to send is ferry-nat's one type, which every UDP machine hands
// its driver.
pub use ferry_nat::drive::Transmit;

/// Length of every probe datagram.
pub const PROBE_LEN: usize = 38;

/// The context string for `SecureChannel::derive_secret` that gives the probe key.
pub const PROBE_KEY_CONTEXT: &str = "ferry v1 punch";

/// Most peer addresses (given plus learnt) a puncher probes; more are ignored.
pub const MAX_PEER_ADDRESSES: usize = 32;

const MAGIC: [u8; 4] = [0x3f, b'F', b'Y', b'P'];
const TAG_LEN: usize = 16;
const AUTHENTICATED_LEN: usize = PROBE_LEN - TAG_LEN;
/// Gaps between probe rounds after the burst at t=0; the last one repeats.
const SCHEDULE: [u64; 8] = [50, 50, 100, 100, 150, 200, 250, 250];
const NOMINATE_RETRY: Duration = Duration::from_millis(100);
/// A ping that a pong arrived for sooner than this after the last one to the
/// same address is not resent as a triggered check.
const TRIGGERED_MIN_GAP: Duration = Duration::from_millis(40);
const MAX_OUTSTANDING: usize = 256;

/// Settings of a [`Puncher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PunchConfig {
    /// How long to probe before giving up.
    pub give_up_after: Duration,
    /// Gap between keepalive pings after confirmation.
    pub keepalive_interval: Duration,
}

impl Default for PunchConfig {
    fn default() -> Self {
        PunchConfig {
            give_up_after: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
        }
    }
}

/// What the puncher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Both sides agreed on a path; QUIC should go to `remote`.
    Confirmed {
        /// The peer's address as seen from our socket.
        remote: SocketAddr,
        /// Round-trip time of a probe on that path.
        rtt: Duration,
    },
    /// The schedule ran out without an agreed path.
    Failed {
        /// What was seen, to tell the user why.
        why: PunchFailure,
    },
}

/// The sans-IO hole punching state machine; see the [module docs](self).
#[derive(Debug)]
pub struct Puncher {
    key: [u8; 32],
    controlling: bool,
    config: PunchConfig,
    rng: StdRng,
    deadline: Instant,
    peers: Vec<PeerAddress>,
    outstanding: VecDeque<Outstanding>,
    round: usize,
    next_round: Instant,
    heard_from_peer: bool,
    state: State,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

#[derive(Debug, Clone)]
struct PeerAddress {
    addr: SocketAddr,
    priority: u32,
    last_ping: Option<Instant>,
    /// Set when a ping to this address was answered from it.
    rtt: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    txid: [u8; 12],
    dst: SocketAddr,
    sent_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Checking,
    Nominating {
        remote: SocketAddr,
        rtt: Duration,
        txid: [u8; 12],
        next_retry: Instant,
    },
    Confirmed {
        remote: SocketAddr,
        next_keepalive: Instant,
    },
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Ping = 1,
    Pong = 2,
    Nominate = 3,
    NominateAck = 4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) kind: Kind,
    pub(crate) from_controlling: bool,
    pub(crate) txid: [u8; 12],
    pub(crate) argument: u32,
}

impl Puncher {
    /// Starts punching at `now` towards `peer_addresses` (address and
    /// priority; higher priorities are probed first within each round).
    ///
    /// `controlling` breaks the symmetry: exactly one side (the sender) must
    /// pass `true`. `key` is the shared probe key (see [`PROBE_KEY_CONTEXT`]);
    /// `seed` seeds transaction ids. Addresses that cannot be sent to
    /// (unspecified, multicast, port 0) and duplicates are skipped.
    pub fn new(
        now: Instant,
        key: [u8; 32],
        controlling: bool,
        peer_addresses: &[(SocketAddr, u32)],
        config: PunchConfig,
        seed: u64,
    ) -> Puncher {
        let mut puncher = Puncher {
            key,
            controlling,
            config,
            rng: StdRng::seed_from_u64(seed),
            deadline: now + config.give_up_after,
            peers: Vec::new(),
            outstanding: VecDeque::new(),
            round: 0,
            next_round: now,
            heard_from_peer: false,
            state: State::Checking,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        for &(addr, priority) in peer_addresses {
            if addr.ip().is_unspecified() || addr.ip().is_multicast() || addr.port() == 0 {
                debug!(%addr, "skipping an unusable punch candidate");
                continue;
            }
            puncher.add_peer(addr, priority);
        }
        puncher.handle_timeout(now);
        puncher
    }

    /// Adds a peer address learnt after the start (a candidate the peer
    /// sent late) and pings it at once; later rounds probe it like the
    /// others. Returns whether it is probed: not when it cannot be sent to,
    /// is known already, would exceed [`MAX_PEER_ADDRESSES`], or when
    /// checking is over (nominating, confirmed, failed).
    pub fn add_peer_address(&mut self, now: Instant, addr: SocketAddr, priority: u32) -> bool {
        if self.state != State::Checking {
            debug!(%addr, "punching is past checking; not probing a late address");
            return false;
        }
        if addr.ip().is_unspecified() || addr.ip().is_multicast() || addr.port() == 0 {
            debug!(%addr, "skipping an unusable late punch candidate");
            return false;
        }
        if self.peers.iter().any(|p| p.addr == addr) {
            return false;
        }
        let Some(index) = self.add_peer(addr, priority) else {
            return false;
        };
        self.send_ping(now, index);
        true
    }

    /// Feeds a datagram that arrived on the socket from `from`. Returns
    /// `true` if it was a valid probe (consumed), `false` if it is not ours
    /// (QUIC, STUN, garbage, a forgery) and the caller may pass it on.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        let Some(probe) = decode(&self.key, data) else {
            if let State::Nominating { remote, rtt, .. } = self.state {
                if remote == from {
                    debug!(%from, "peer sent non-probe traffic: taking it as the acknowledgement");
                    self.confirm(now, remote, rtt);
                }
            }
            if data.len() == PROBE_LEN && data[..MAGIC.len()] == MAGIC {
                debug!(%from, "dropping a probe with a bad tag");
            }
            return false;
        };
        if probe.from_controlling == self.controlling {
            debug!(%from, "dropping a probe with our own role (reflected?)");
            return false;
        }
        self.heard_from_peer = true;
        match probe.kind {
            Kind::Ping => self.on_ping(now, from, probe),
            Kind::Pong => self.on_pong(now, from, probe),
            Kind::Nominate => self.on_nominate(now, from, probe),
            Kind::NominateAck => self.on_nominate_ack(now, from, probe),
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
    /// `None` once punching has failed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Checking => Some(self.next_round.min(self.deadline)),
            State::Nominating { next_retry, .. } => Some(next_retry.min(self.deadline)),
            State::Confirmed { next_keepalive, .. } => Some(next_keepalive),
            State::Failed => None,
        }
    }

    /// Runs the timers due at `now`: probe rounds, nomination resends,
    /// keepalives, giving up.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Checking | State::Nominating { .. } if now >= self.deadline => {
                let why = match self.state {
                    State::Nominating { .. } => PunchFailure::NominationUnanswered,
                    _ if !self.heard_from_peer => PunchFailure::NoAnswer,
                    _ if self.peers.iter().any(|p| p.rtt.is_some()) => PunchFailure::NotNominated,
                    _ => PunchFailure::OneWayOnly,
                };
                debug!(%why, "hole punching gave up");
                self.state = State::Failed;
                self.events.push_back(Event::Failed { why });
            }
            State::Checking => {
                if now >= self.next_round {
                    for index in 0..self.peers.len() {
                        if self.peers[index].rtt.is_none() {
                            self.send_ping(now, index);
                        }
                    }
                    let gap = SCHEDULE[self.round.min(SCHEDULE.len() - 1)];
                    self.round += 1;
                    self.next_round = now + Duration::from_millis(gap);
                }
            }
            State::Nominating {
                remote,
                rtt,
                txid,
                next_retry,
            } => {
                if now >= next_retry {
                    let argument = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
                    self.send(remote, Kind::Nominate, txid, argument);
                    self.state = State::Nominating {
                        remote,
                        rtt,
                        txid,
                        next_retry: now + NOMINATE_RETRY,
                    };
                }
            }
            State::Confirmed {
                remote,
                next_keepalive,
            } => {
                if now >= next_keepalive {
                    let txid = self.txid();
                    self.send(remote, Kind::Ping, txid, 0);
                    self.state = State::Confirmed {
                        remote,
                        next_keepalive: now + self.config.keepalive_interval,
                    };
                }
            }
            State::Failed => {}
        }
    }

    /// The confirmed remote address, once there is one.
    pub fn remote(&self) -> Option<SocketAddr> {
        match self.state {
            State::Confirmed { remote, .. } => Some(remote),
            _ => None,
        }
    }

    fn on_ping(&mut self, now: Instant, from: SocketAddr, probe: Probe) {
        self.send(from, Kind::Pong, probe.txid, 0);
        if self.state != State::Checking {
            return;
        }
        // A triggered check: the peer's NAT has just let our answer out, so
        // probing `from` now is the fastest way to prove the other direction.
        let index = match self.peers.iter().position(|p| p.addr == from) {
            Some(index) => index,
            None => {
                debug!(%from, "learnt a peer-reflexive address");
                match self.add_peer(from, u32::MAX) {
                    Some(index) => index,
                    None => return,
                }
            }
        };
        let peer = &self.peers[index];
        let recently = peer
            .last_ping
            .is_some_and(|at| now.saturating_duration_since(at) < TRIGGERED_MIN_GAP);
        if peer.rtt.is_none() && !recently {
            self.send_ping(now, index);
        }
    }

    fn on_pong(&mut self, now: Instant, from: SocketAddr, probe: Probe) {
        let Some(position) = self.outstanding.iter().position(|o| o.txid == probe.txid) else {
            debug!(%from, "pong for no ping of ours");
            return;
        };
        let ping = self.outstanding[position];
        if ping.dst != from {
            // Our ping reached the peer, but the answer came from elsewhere:
            // this pair is not proven both ways.
            debug!(%from, sent_to = %ping.dst, "pong from another address than the ping went to");
            return;
        }
        self.outstanding.remove(position);
        let rtt = now.saturating_duration_since(ping.sent_at);
        if let Some(peer) = self.peers.iter_mut().find(|p| p.addr == from) {
            peer.rtt.get_or_insert(rtt);
        }
        if self.controlling && self.state == State::Checking {
            debug!(remote = %from, ?rtt, "path works both ways; nominating it");
            let txid = self.txid();
            self.state = State::Nominating {
                remote: from,
                rtt,
                txid,
                next_retry: now,
            };
            self.handle_timeout(now);
        }
    }

    fn on_nominate(&mut self, now: Instant, from: SocketAddr, probe: Probe) {
        if self.controlling {
            return;
        }
        match self.state {
            State::Checking => {
                let own = self
                    .peers
                    .iter()
                    .find(|p| p.addr == from)
                    .and_then(|p| p.rtt);
                let rtt = own.unwrap_or(Duration::from_micros(u64::from(probe.argument)));
                self.send(from, Kind::NominateAck, probe.txid, 0);
                self.confirm(now, from, rtt);
            }
            State::Confirmed { remote, .. } if remote == from => {
                self.send(from, Kind::NominateAck, probe.txid, 0);
            }
            _ => debug!(%from, "ignoring a nomination of another path"),
        }
    }

    fn on_nominate_ack(&mut self, now: Instant, from: SocketAddr, probe: Probe) {
        if let State::Nominating {
            remote, rtt, txid, ..
        } = self.state
        {
            if remote == from && txid == probe.txid {
                self.confirm(now, remote, rtt);
            }
        }
    }

    fn confirm(&mut self, now: Instant, remote: SocketAddr, rtt: Duration) {
        debug!(%remote, ?rtt, "hole punched");
        self.state = State::Confirmed {
            remote,
            next_keepalive: now + self.config.keepalive_interval,
        };
        self.outstanding.clear();
        self.events.push_back(Event::Confirmed { remote, rtt });
    }

    fn add_peer(&mut self, addr: SocketAddr, priority: u32) -> Option<usize> {
        if let Some(index) = self.peers.iter().position(|p| p.addr == addr) {
            return Some(index);
        }
        if self.peers.len() >= MAX_PEER_ADDRESSES {
            debug!(%addr, "too many peer addresses; not probing this one");
            return None;
        }
        // Kept sorted, best first, so each round probes the best first;
        // learnt (peer-reflexive) addresses come first, they are proven.
        let index = self
            .peers
            .iter()
            .position(|p| p.priority < priority)
            .unwrap_or(self.peers.len());
        self.peers.insert(
            index,
            PeerAddress {
                addr,
                priority,
                last_ping: None,
                rtt: None,
            },
        );
        Some(index)
    }

    fn send_ping(&mut self, now: Instant, index: usize) {
        let txid = self.txid();
        let dst = self.peers[index].addr;
        self.peers[index].last_ping = Some(now);
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(Outstanding {
            txid,
            dst,
            sent_at: now,
        });
        self.send(dst, Kind::Ping, txid, 0);
    }

    fn send(&mut self, dst: SocketAddr, kind: Kind, txid: [u8; 12], argument: u32) {
        let probe = Probe {
            kind,
            from_controlling: self.controlling,
            txid,
            argument,
        };
        self.transmits.push_back(Transmit {
            dst,
            payload: encode(&self.key, &probe).to_vec(),
        });
    }

    fn txid(&mut self) -> [u8; 12] {
        let mut txid = [0u8; 12];
        self.rng.fill_bytes(&mut txid);
        txid
    }

    #[cfg(test)]
    fn priorities(&self) -> Vec<(SocketAddr, u32)> {
        self.peers.iter().map(|p| (p.addr, p.priority)).collect()
    }
}

/// Also the probe of `spray`, under its own key.
pub(crate) fn encode(key: &[u8; 32], probe: &Probe) -> [u8; PROBE_LEN] {
    let mut out = [0u8; PROBE_LEN];
    out[..4].copy_from_slice(&MAGIC);
    out[4] = probe.kind as u8;
    out[5] = u8::from(probe.from_controlling);
    out[6..18].copy_from_slice(&probe.txid);
    out[18..22].copy_from_slice(&probe.argument.to_be_bytes());
    let tag = blake3::keyed_hash(key, &out[..AUTHENTICATED_LEN]);
    out[AUTHENTICATED_LEN..].copy_from_slice(&tag.as_bytes()[..TAG_LEN]);
    out
}

pub(crate) fn decode(key: &[u8; 32], data: &[u8]) -> Option<Probe> {
    if data.len() != PROBE_LEN || data[..4] != MAGIC {
        return None;
    }
    let tag = blake3::keyed_hash(key, &data[..AUTHENTICATED_LEN]);
    // Constant time: the tag must not be guessable byte by byte.
    if !constant_time_eq(&tag.as_bytes()[..TAG_LEN], &data[AUTHENTICATED_LEN..]) {
        return None;
    }
    let kind = match data[4] {
        1 => Kind::Ping,
        2 => Kind::Pong,
        3 => Kind::Nominate,
        4 => Kind::NominateAck,
        _ => return None,
    };
    let from_controlling = match data[5] {
        0 => false,
        1 => true,
        _ => return None,
    };
    let mut txid = [0u8; 12];
    txid.copy_from_slice(&data[6..18]);
    let argument = u32::from_be_bytes([data[18], data[19], data[20], data[21]]);
    Some(Probe {
        kind,
        from_controlling,
        txid,
        argument,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A punched path, as [`punch`] returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PunchResult {
    /// The peer's address as seen from our socket: where QUIC goes.
    pub remote: SocketAddr,
    /// Round-trip time of a probe on the path.
    pub rtt: Duration,
}

/// Punches a hole from `socket` to the peer: drives a [`Puncher`] (default
/// schedule, giving up after `timeout`) until both sides agree on a path.
///
/// `peer_candidates` are the peer's UDP addresses, best first. The socket
/// must not be connected; datagrams that are not valid probes are dropped.
/// Afterwards hand the same socket to [`quic_connect`](crate::quic::quic_connect)
/// (via `into_std()`), promptly: the peer may already be sending QUIC.
pub async fn punch(
    socket: &UdpSocket,
    key: [u8; 32],
    controlling: bool,
    peer_candidates: &[SocketAddr],
    timeout: Duration,
) -> Result<PunchResult, ConnectError> {
    // No late addresses: the inbox closes at once.
    let (_, mut late) = mpsc::channel(1);
    punch_with_late(
        socket,
        key,
        controlling,
        peer_candidates,
        &mut late,
        timeout,
    )
    .await
}

/// [`punch`], also probing the peer's addresses that arrive on `late`
/// while it runs (candidates the peer sent after its hello), after the
/// ones given at the start. Dropping the other end of `late` changes
/// nothing else.
pub async fn punch_with_late(
    socket: &UdpSocket,
    key: [u8; 32],
    controlling: bool,
    peer_candidates: &[SocketAddr],
    late: &mut mpsc::Receiver<Vec<SocketAddr>>,
    timeout: Duration,
) -> Result<PunchResult, ConnectError> {
    let started = tokio::time::Instant::now();
    let count = u32::try_from(peer_candidates.len()).unwrap_or(u32::MAX);
    let addresses: Vec<(SocketAddr, u32)> = peer_candidates
        .iter()
        .zip((0..count).rev())
        .map(|(&addr, priority)| (addr, priority))
        .collect();
    let config = PunchConfig {
        give_up_after: timeout,
        ..PunchConfig::default()
    };
    let mut puncher = Puncher::new(
        started.into_std(),
        key,
        controlling,
        &addresses,
        config,
        rand::random(),
    );
    // Probes are PROBE_LEN bytes; anything longer is not ours but must not
    // fail the read either: the default 2048-byte buffer.
    let options = DriveOptions {
        receive_error_pause: Duration::from_millis(5),
        ..DriveOptions::new("hole punching")
    };
    // Late addresses rank below the first ones: they are no better known.
    let add_late = |puncher: &mut Puncher, now: Instant, addresses: Vec<SocketAddr>| {
        for addr in addresses {
            if puncher.add_peer_address(now, addr, 0) {
                debug!(%addr, "punching towards a late candidate too");
            }
        }
    };
    match drive_udp_with(socket, &mut puncher, options, late, add_late).await {
        Some(Event::Confirmed { remote, rtt }) => Ok(PunchResult { remote, rtt }),
        Some(Event::Failed { why }) => Err(ConnectError::PunchFailed {
            why,
            waited: started.elapsed(),
        }),
        None => Err(ConnectError::PunchFailed {
            why: PunchFailure::NoAnswer,
            waited: started.elapsed(),
        }),
    }
}

/// [`punch`] stops at the first event: confirmed or failed. (A confirmed
/// puncher would go on with keepalives; the socket goes to QUIC instead.)
impl UdpMachine for Puncher {
    type Output = Event;

    fn poll_transmit(&mut self) -> Option<Transmit> {
        Puncher::poll_transmit(self)
    }

    fn poll_output(&mut self) -> Option<Event> {
        self.poll_event()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Puncher::poll_timeout(self)
    }

    fn handle_timeout(&mut self, now: Instant) {
        Puncher::handle_timeout(self, now);
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        Puncher::handle_datagram(self, now, from, bytes);
    }
}

#[cfg(test)]
mod tests;
