//! Hard ⇄ hard: both NATs map a new public port per destination, so
//! neither side has an address the other could spray towards. Each side
//! opens N sockets and sends probes from them (round robin) to ports of the
//! other side's public IP: the other side's [predicted](super::predict_ports)
//! ports first, then ports drawn without repetition, paced, within
//! [`SprayConfig`]'s budgets; both start when signalling says so.
//!
//! ```text
//! side A (controlling)                        side B (controlled)
//!   ping ──▶ B_IP:q from socket i               ping ──▶ A_IP:r from socket j
//!   (A's NAT maps (i, B_IP:q) to A_IP:r')        (B's NAT maps (j, A_IP:r) to B_IP:q')
//!                 a probe passes B's NAT only if q = q' and r' = r: then
//!                 the pair is open both ways
//!   the first authenticated ping or pong      the first authenticated ping on
//!   on socket i from X: stop; nominate ──▶ X  socket j from X: stop; pong ──▶ X
//!   (resent until acknowledged)               (resent until nominated)
//!                                             nominate on socket j from X:
//!                                             nominate-ack ──▶ X;
//!   nominate-ack (or non-probe traffic)       Event::Found { socket: j, remote: X }
//!   from X on socket i:
//!   Event::Found { socket: i, remote: X }
//! ```
//!
//! Probes, key ([`SPRAY_KEY_CONTEXT`](super::SPRAY_KEY_CONTEXT)) and
//! nomination are [`EasySide`](super::EasySide)'s and
//! [`HardSide`](super::HardSide)'s: the controlling side plays the easy
//! side's role byte and decides once; the controlled side confirms only the
//! socket and remote a nomination arrived on. Exactly one side passes
//! `controlling = true`.
//!
//! # The odds
//!
//! With random per-destination ports on both sides, a probe from A to
//! `B_IP:q` leaves from a fresh random port `r'`; it passes only if B has a
//! mapping *at* `q` that was made *towards* `A_IP:r'`, i.e. B sent a probe
//! to `r'` and its NAT happened to give that one the port `q`. Every probe
//! is such a (destination, source) ticket with a uniformly random source, so
//! a probe pair matches with odds 1 / 64,512² (ports 1024..=65535), and over
//! `k_A` and `k_B` probes the chance of at least one match is
//!
//! ```text
//! P ≈ 1 − exp(−k_A · k_B / 64,512²)
//!   k = 2,048 each:  0.10 %     k = 8,192 each:  1.6 %
//!   k = 32,768 each: 22.7 %     50 % needs k ≈ 53,700 each, 99 % is out of
//!                               reach (k_A · k_B = 4.6 · 64,512²)
//! ```
//!
//! The number of sockets N does not enter: every probe makes its own
//! mapping whatever socket it leaves from (N matters only where the NAT
//! keeps one port per socket, i.e. an easy NAT). This is the "1/64,512 ×
//! the mappings the other side holds towards us" estimate with the catch
//! that each of those mappings accepts one source port only.
//!
//! With *sequential* ports the other side's next mappings are predicted
//! from its two STUN answers. If A's probe `k` leaves from A's predicted
//! port `k + f_A` and B's probe `m` from `m + f_B` (`f` = mappings other
//! flows took since STUN), lockstep (probe `k` to predicted port `k` on
//! both sides) matches only when `f_A + f_B = 0`. So the controlled side
//! walks the predicted ports in order and the controlling side takes every
//! other one (0, 2, 4, …, then 1, 3, 5, …): its probe `k` to port `2k` meets
//! the controlled side's probe `k + f_A` exactly when `k = f_A + f_B`, for
//! any number of foreign mappings the prediction covers. Pass
//! `predict_ports(observed, PREDICTION_DEPTH)`.
//!
//! # Measured, and the decision
//!
//! In `ferry-netsim` (20 ms one way, both NATs address-and-port-dependent,
//! 5,000 probes per second per side, time budget 7 s so that the probe
//! budget binds: 32,768 probes take 6.6 s; 200 seeds per row;
//! `tests::sweep_of_budgets_sockets_and_nats`). Probes: the larger side's
//! count when both had found; seconds: virtual time until both had found;
//! medians over the successful seeds.
//!
//! ```text
//! NAT kind           sockets  budget/side  found    estimate  med. probes  med. s
//! random ⇄ random    256      2,048          1/200   0.10 %        531     0.15
//! random ⇄ random    256      8,192          3/200   1.6 %       4,982     1.02
//! random ⇄ random    256      32,768        44/200  22.7 %      25,663     5.17
//! random ⇄ random    512      (identical rows: the socket count does not enter)
//! sequential ⇄ seq.  256      2,048        200/200                 163     0.073
//! sequential ⇄ seq.  256/512  8,192/32,768 200/200 (same: found before 2,048)
//! sequential ⇄ rand. 256      2,048          4/200   1.8 %*        995     0.24
//! sequential ⇄ rand. 256      8,192          6/200   3.3 %*      1,113     0.26
//! ```
//!
//! (* 1.7 % from the 1,088 predicted ports, see below, plus what the
//! random probes after them add, as random ⇄ random: 0.1 % and 1.6 %.)
//!
//! (sequential: step 1..=7, 0..49 and 0..29 foreign mappings on the two
//! NATs, varying with the seed.)
//!
//! Decision: **random ⇄ random: no** (neither a default nor an advertised
//! opt-in). 32,768 probes per side (6.6 s at 5,000/s, and 32,768 NAT
//! mappings on each side, more than many home routers' whole connection
//! table) find a path about one time in five (44/200; the estimate says
//! 22.7 %), 8,192 one time in sixty; the relay carries the transfer
//! meanwhile and is the right answer. **Predictable ⇄ predictable: default
//! on** (`predict_ports` non-empty for both sides' STUN answers): every
//! seed found its path, after a median 163 probes and 73 ms, well inside
//! [`SprayConfig::default`]'s 2,048 probes. The simulation makes other
//! flows' mappings before the spray only; flows that take ports *during* it
//! shift the sequence further (covered while it stays within
//! [`PREDICTION_DEPTH`] / 2), and past the predicted ports the rest of the
//! budget is as hopeless as random ⇄ random, so keep the default budget
//! and let the relay run meanwhile. One predictable and one random side:
//! relay too. The random side's probe `k + f` reaches the predictable
//! side's next mapping, but only the predictable side's probe `k` to that
//! probe's random source port opens the pair, so the odds are linear,
//! about 1 / 64,512 per predicted port walked (1.7 % for the 1,088 that
//! `predict_ports(observed, PREDICTION_DEPTH)` gives; measured 4/200 at
//! 2,048 and 6/200 at 8,192; walking 32,768 predicted ports would give
//! about 40 %, at random ⇄ random's cost in mappings). The socket count does not matter here (each probe
//! makes its own mapping), so a handful of sockets would do as well as 256.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tracing::debug;

use super::{
    ANSWER_WAIT, Event, MAX_SOCKETS, NOMINATE_RETRY, NOMINATE_TRIES, ProbeSchedule, SocketTransmit,
    SprayConfig, SprayFailure, txid, unique_ports,
};
use crate::punch::{Kind, Probe, decode, encode};

/// How many of the other side's ports to predict for hard ⇄ hard
/// (`predict_ports(observed, PREDICTION_DEPTH)`): the controlling side
/// takes every other one, so this covers about 500 mappings taken by other
/// flows on the two NATs together.
pub const PREDICTION_DEPTH: usize = 1024;

/// One side of hard ⇄ hard spraying: N sockets, probes to the other side's
/// IP; see the [module docs](self).
#[derive(Debug)]
pub struct BothSide {
    key: [u8; 32],
    config: SprayConfig,
    controlling: bool,
    rng: StdRng,
    peer_ip: IpAddr,
    schedule: ProbeSchedule,
    heard: bool,
    state: State,
    transmits: VecDeque<SocketTransmit>,
    events: VecDeque<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Spraying,
    /// Controlling: the nomination on `socket` to `remote`, resent.
    /// Controlled: the pong, resent until a nomination arrives.
    Answering {
        socket: usize,
        remote: SocketAddr,
        txid: [u8; 12],
        tries: u32,
        next_retry: Instant,
    },
    Found {
        socket: usize,
        remote: SocketAddr,
    },
    Failed,
}

impl BothSide {
    /// Starts at `now` towards `peer_ip`, the other side's public IP,
    /// from `config.sockets` sockets (clamped to 1..=[`MAX_SOCKETS`]),
    /// probing `predicted` (the other side's ports from
    /// [`predict_ports`](super::predict_ports); port 0 and repeats are
    /// skipped) first: in order when controlled, every other one first when
    /// `controlling`. `key` is the spray key. The first probe is queued at
    /// once.
    pub fn new(
        now: Instant,
        key: [u8; 32],
        controlling: bool,
        peer_ip: IpAddr,
        predicted: &[u16],
        config: SprayConfig,
    ) -> Self {
        let config = SprayConfig {
            sockets: config.sockets.clamp(1, MAX_SOCKETS),
            ..config
        };
        let unique = unique_ports(predicted);
        let predicted = if controlling {
            unique
                .iter()
                .step_by(2)
                .chain(unique.iter().skip(1).step_by(2))
                .copied()
                .collect()
        } else {
            unique.into()
        };
        let mut side = BothSide {
            key,
            config,
            controlling,
            // Not the other side's sequence, which has the same seed.
            rng: StdRng::seed_from_u64(config.seed ^ u64::from(controlling) << 63 ^ 0x626f_7468),
            peer_ip,
            schedule: ProbeSchedule::new(now, predicted, &config),
            heard: false,
            state: State::Spraying,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        side.handle_timeout(now);
        side
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
        now: Instant,
        socket: usize,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        if socket >= self.config.sockets {
            return false;
        }
        let Some(probe) = decode(&self.key, data) else {
            if let State::Answering {
                socket: s, remote, ..
            } = self.state
            {
                if self.controlling && s == socket && remote == from {
                    debug!(%from, socket, "spray: non-probe traffic on the nominated path: taking it as the acknowledgement");
                    self.found(socket, remote);
                    return false;
                }
            }
            debug!(%from, socket, "spray: not a probe of ours");
            return false;
        };
        if probe.from_controlling == self.controlling {
            debug!(%from, socket, "spray: dropping a probe with our own role (reflected?)");
            return false;
        }
        self.heard = true;
        match (self.controlling, probe.kind, self.state) {
            (true, Kind::Ping | Kind::Pong, State::Spraying) => {
                debug!(remote = %from, socket, probes = self.schedule.sent, "spray: the other side got through; choosing it");
                self.answer(now, socket, from);
            }
            (
                true,
                Kind::NominateAck,
                State::Answering {
                    socket: s,
                    remote,
                    txid,
                    ..
                },
            ) if s == socket && remote == from && txid == probe.txid => {
                self.found(socket, from);
            }
            (false, Kind::Ping, State::Spraying) => {
                debug!(remote = %from, socket, probes = self.schedule.sent, "spray: the other side got through; answering");
                self.send(socket, from, Kind::Pong, probe.txid);
                self.answer(now, socket, from);
            }
            (false, Kind::Ping, State::Answering { .. }) => {
                self.send(socket, from, Kind::Pong, probe.txid);
            }
            (false, Kind::Nominate, State::Spraying | State::Answering { .. }) => {
                debug!(%from, socket, "spray: the other side chose this socket");
                self.send(socket, from, Kind::NominateAck, probe.txid);
                self.found(socket, from);
            }
            (false, Kind::Nominate, State::Found { socket: s, remote }) => {
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
            State::Spraying => {
                let listen_end = self.listen_end();
                match self.schedule.next_due(self.spray_end()) {
                    Some(at) => Some(at.min(listen_end)),
                    None => Some(listen_end),
                }
            }
            State::Answering { next_retry, .. } => Some(next_retry),
            State::Found { .. } | State::Failed => None,
        }
    }

    /// Runs the timers due at `now`: the probes due by then, copies of the
    /// nomination or the pong, giving up.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Spraying => {
                let end = self.spray_end();
                while let Some((k, port)) = self.schedule.due(now, end, &mut self.rng) {
                    let txid = txid(&mut self.rng);
                    let socket = k % self.config.sockets;
                    self.send(
                        socket,
                        SocketAddr::new(self.peer_ip, port),
                        Kind::Ping,
                        txid,
                    );
                }
                if now >= self.listen_end() {
                    let why = if self.heard {
                        SprayFailure::NotNominated
                    } else {
                        SprayFailure::NoAnswer
                    };
                    debug!(probes = self.schedule.sent, %why, "spray (hard ⇄ hard) gave up");
                    self.fail(why);
                }
            }
            State::Answering {
                socket,
                remote,
                txid,
                tries,
                next_retry,
            } if now >= next_retry => {
                if tries >= NOMINATE_TRIES {
                    self.fail(if self.controlling {
                        SprayFailure::NominationUnanswered
                    } else {
                        SprayFailure::NotNominated
                    });
                    return;
                }
                let kind = if self.controlling {
                    Kind::Nominate
                } else {
                    Kind::Pong
                };
                self.send(socket, remote, kind, txid);
                self.state = State::Answering {
                    socket,
                    remote,
                    txid,
                    tries: tries + 1,
                    next_retry: now + NOMINATE_RETRY,
                };
            }
            _ => {}
        }
    }

    /// How many probes have been sent (nominations and answers not
    /// counted).
    pub fn probes_sent(&self) -> usize {
        self.schedule.sent
    }

    /// The socket and remote found, once there are.
    pub fn found_path(&self) -> Option<(usize, SocketAddr)> {
        match self.state {
            State::Found { socket, remote } => Some((socket, remote)),
            _ => None,
        }
    }

    /// Stops spraying: the controlling side starts nominating the path,
    /// the controlled one repeats its pong (the first copy is sent already)
    /// until a nomination comes.
    fn answer(&mut self, now: Instant, socket: usize, remote: SocketAddr) {
        let (tries, next_retry) = if self.controlling {
            (0, now)
        } else {
            (1, now + NOMINATE_RETRY)
        };
        self.state = State::Answering {
            socket,
            remote,
            txid: txid(&mut self.rng),
            tries,
            next_retry,
        };
        self.handle_timeout(now);
    }

    fn spray_end(&self) -> Instant {
        self.schedule.end(&self.config)
    }

    /// The controlled side also waits for the controlling side's last
    /// nomination copies.
    fn listen_end(&self) -> Instant {
        let end = self.spray_end() + ANSWER_WAIT;
        if self.controlling {
            end
        } else {
            end + NOMINATE_RETRY * NOMINATE_TRIES
        }
    }

    fn found(&mut self, socket: usize, remote: SocketAddr) {
        debug!(%remote, socket, probes = self.schedule.sent, "spray (hard ⇄ hard) found a path");
        self.state = State::Found { socket, remote };
        self.events.push_back(Event::Found { socket, remote });
    }

    fn fail(&mut self, why: SprayFailure) {
        self.state = State::Failed;
        self.events.push_back(Event::Failed { why });
    }

    fn send(&mut self, socket: usize, dst: SocketAddr, kind: Kind, txid: [u8; 12]) {
        let probe = Probe {
            kind,
            // The controlling side takes the easy side's role byte.
            from_controlling: self.controlling,
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

#[cfg(test)]
#[path = "tests_both.rs"]
mod tests;
