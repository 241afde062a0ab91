//! Port spraying in virtual time on `ferry-netsim`: the easy side behind a
//! port-restricted NAT (Linux masquerade), the hard side behind a symmetric
//! one with random (or sequential) ports, a 20 ms wire between; and the
//! tokio drivers on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ferry_netsim::{Nat, NatConfig, PortAllocation, Wire};

use super::*;

const KEY: [u8; 32] = [9; 32];
const STUN_SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 3478);
const STUN_OTHER_PORT: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 3479);
const EASY_INTERNAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)), 5000);
const HARD_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
/// The hard side's socket i is HARD_HOST:(HARD_FIRST_PORT + i).
const HARD_FIRST_PORT: u16 = 6000;

fn hard_internal(socket: usize) -> SocketAddr {
    SocketAddr::new(HARD_HOST, HARD_FIRST_PORT + socket as u16)
}

struct Setup {
    easy_nat: NatConfig,
    hard_nat: NatConfig,
    config: SprayConfig,
    keys: [[u8; 32]; 2],
    loss: f64,
    seed: u64,
    /// Use the hard side's two STUN answers to predict its ports.
    predict: bool,
    /// New mappings other hosts behind the hard NAT make between its STUN
    /// answers and the spray.
    foreign_mappings: usize,
}

impl Setup {
    fn random(seed: u64, probe_budget: usize) -> Setup {
        Setup {
            easy_nat: NatConfig::PORT_RESTRICTED,
            hard_nat: NatConfig {
                // Not the easy side's seed: the same generator would draw
                // the very ports the NAT gave.
                allocation: PortAllocation::Random {
                    seed: seed ^ 0x5eed_f4a7,
                },
                ..NatConfig::SYMMETRIC
            },
            config: SprayConfig {
                probe_budget,
                seed,
                ..SprayConfig::default()
            },
            keys: [KEY, KEY],
            loss: 0.0,
            seed,
            predict: false,
            foreign_mappings: 0,
        }
    }
}

/// Index 0 is the easy side, 1 the hard side, in `keys` and `events`.
struct Sim {
    start: Instant,
    now: Instant,
    easy: EasySide,
    hard: HardSide,
    easy_nat: Nat,
    hard_nat: Nat,
    wire: Wire<Vec<u8>>,
    events: [Vec<(Instant, Event)>; 2],
    /// When the easy side sent each probe (pings only), and to where.
    easy_probes: Vec<(Instant, SocketAddr)>,
    /// Datagrams that got through the receiving side's NAT, per side.
    delivered: [usize; 2],
}

impl Sim {
    fn new(setup: Setup) -> Sim {
        let start = Instant::now();
        let mut easy_nat = Nat::new(setup.easy_nat, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)));
        let mut hard_nat = Nat::new(setup.hard_nat, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20)));
        // STUN before spraying: the easy side's mapping is the same for all;
        // the hard side asks from one more socket on the server's two ports.
        let easy_mapped = easy_nat.outbound(EASY_INTERNAL, STUN_SERVER).unwrap();
        let stun_socket = SocketAddr::new(HARD_HOST, 5999);
        let observed: Vec<(SocketAddr, SocketAddr)> = [STUN_SERVER, STUN_OTHER_PORT]
            .into_iter()
            .map(|dst| (hard_nat.outbound(stun_socket, dst).unwrap(), dst))
            .collect();
        for other in 0..setup.foreign_mappings {
            let host = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)), 7000);
            hard_nat.outbound(host, SocketAddr::from(([192, 0, 2, 1], 80 + other as u16)));
        }
        let predicted = if setup.predict {
            predict_ports(&observed, setup.config.sockets)
        } else {
            Vec::new()
        };
        let easy = EasySide::new(
            start,
            setup.keys[0],
            hard_nat.public_ip(),
            &predicted,
            setup.config,
        );
        let hard = HardSide::new(start, setup.keys[1], easy_mapped, setup.config);
        Sim {
            start,
            now: start,
            easy,
            hard,
            easy_nat,
            hard_nat,
            wire: Wire::new(Duration::from_millis(20), setup.loss, setup.seed),
            events: [Vec::new(), Vec::new()],
            easy_probes: Vec::new(),
            delivered: [0, 0],
        }
    }

    /// Runs until both sides reported an event or nothing is left to do.
    fn run(&mut self) {
        loop {
            self.flush();
            if self.events.iter().all(|e| !e.is_empty()) {
                return;
            }
            let Some(next) = [
                self.wire.next_due(),
                self.easy.poll_timeout(),
                self.hard.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min() else {
                return;
            };
            assert!(next - self.start < Duration::from_secs(60), "runs away");
            self.now = self.now.max(next);
            let now = self.now;
            for datagram in self.wire.take_due(now) {
                let to = datagram.to;
                if to.ip() == self.easy_nat.public_ip() {
                    if let Some(internal) = self.easy_nat.inbound(to.port(), datagram.from) {
                        assert_eq!(internal, EASY_INTERNAL);
                        self.delivered[0] += 1;
                        self.easy
                            .handle_datagram(now, datagram.from, &datagram.payload);
                    }
                } else if to.ip() == self.hard_nat.public_ip() {
                    if let Some(internal) = self.hard_nat.inbound(to.port(), datagram.from) {
                        let socket = usize::from(internal.port() - HARD_FIRST_PORT);
                        assert_eq!(internal, hard_internal(socket));
                        self.delivered[1] += 1;
                        self.hard
                            .handle_datagram(now, socket, datagram.from, &datagram.payload);
                    }
                }
            }
            if self.easy.poll_timeout().is_some_and(|t| t <= now) {
                self.easy.handle_timeout(now);
            }
            if self.hard.poll_timeout().is_some_and(|t| t <= now) {
                self.hard.handle_timeout(now);
            }
        }
    }

    /// Moves every pending transmit through its NAT onto the wire.
    fn flush(&mut self) {
        while let Some(transmit) = self.easy.poll_transmit() {
            if decode(&KEY, &transmit.payload).is_some_and(|p| p.kind == Kind::Ping) {
                self.easy_probes.push((self.now, transmit.dst));
            }
            if let Some(from) = self.easy_nat.outbound(EASY_INTERNAL, transmit.dst) {
                self.wire
                    .send(self.now, from, transmit.dst, transmit.payload);
            }
        }
        while let Some(transmit) = self.hard.poll_transmit() {
            let internal = hard_internal(transmit.socket);
            if let Some(from) = self.hard_nat.outbound(internal, transmit.dst) {
                self.wire
                    .send(self.now, from, transmit.dst, transmit.payload);
            }
        }
        while let Some(event) = self.easy.poll_event() {
            self.events[0].push((self.now, event));
        }
        while let Some(event) = self.hard.poll_event() {
            self.events[1].push((self.now, event));
        }
    }

    fn found(&self, side: usize) -> Option<(usize, SocketAddr)> {
        self.events[side].iter().find_map(|(_, e)| match e {
            Event::Found { socket, remote } => Some((*socket, *remote)),
            Event::Failed { .. } => None,
        })
    }

    fn failed(&self, side: usize) -> Option<(Instant, SprayFailure)> {
        self.events[side].iter().find_map(|(at, e)| match e {
            Event::Failed { why } => Some((*at, *why)),
            Event::Found { .. } => None,
        })
    }

    /// Both sides found the two ends of one pair: what the easy side sends
    /// to its remote arrives at the hard side's socket from the hard side's
    /// remote, and the other way round. Returns that socket.
    fn assert_agreed(&self) -> usize {
        let (_, easy_remote) = self.found(0).expect("the easy side found nothing");
        let (socket, hard_remote) = self.found(1).expect("the hard side found nothing");
        let internal = hard_internal(socket);
        assert_eq!(
            self.hard_nat.existing(internal, hard_remote),
            Some(easy_remote)
        );
        assert_eq!(
            self.easy_nat.existing(EASY_INTERNAL, easy_remote),
            Some(hard_remote)
        );
        assert_eq!(
            self.hard_nat.inbound(easy_remote.port(), hard_remote),
            Some(internal)
        );
        assert_eq!(
            self.easy_nat.inbound(hard_remote.port(), easy_remote),
            Some(EASY_INTERNAL)
        );
        socket
    }

    /// How many probes it took: the number of the first probe that went
    /// to the port the easy side found (from 1), and the probes it had sent
    /// when the answer stopped it (one round trip later).
    fn probes_to_success(&self) -> Option<(usize, usize)> {
        let (_, remote) = self.found(0)?;
        let hit = self
            .easy_probes
            .iter()
            .position(|&(_, dst)| dst == remote)?;
        Some((hit + 1, self.easy.probes_sent()))
    }
}

fn spray(setup: Setup) -> Sim {
    let mut sim = Sim::new(setup);
    sim.run();
    sim
}

/// Over 200 seeds per budget: successes, the median number of the probe
/// that hit, and the median probes sent by the time the answer came.
fn success_rate(probe_budget: usize) -> (usize, Option<usize>, Option<usize>) {
    let mut hits = Vec::new();
    let mut sent = Vec::new();
    for seed in 0..200 {
        let sim = spray(Setup::random(seed, probe_budget));
        match sim.probes_to_success() {
            Some((hit, sent_by_then)) => {
                sim.assert_agreed();
                assert!(sent_by_then <= probe_budget);
                hits.push(hit);
                sent.push(sent_by_then);
            }
            None => {
                assert_eq!(sim.found(1), None, "seed {seed}: only the hard side found");
                assert_eq!(sim.failed(0).unwrap().1, SprayFailure::NoAnswer);
            }
        }
    }
    hits.sort_unstable();
    sent.sort_unstable();
    let median = |v: &[usize]| v.get(v.len() / 2).copied();
    (hits.len(), median(&hits), median(&sent))
}

#[test]
fn random_ports_are_found_at_about_the_birthday_odds() {
    // 256 mappings among 64,512 ports: 1 - (1 - 256/64512)^k is 64% for
    // k = 256, 98% for 1,024, 99.97% for 2,048.
    let mut table = Vec::new();
    for (budget, at_least, at_most) in [
        (0, 0, 0),
        (256, 100, 156),
        (1024, 186, 200),
        (2048, 196, 200),
    ] {
        let (successes, median, sent) = success_rate(budget);
        eprintln!(
            "budget {budget:>5}: {successes}/200 found, median hit at probe {median:?}, \
             median probes sent by the answer {sent:?}"
        );
        table.push((budget, successes, median));
        assert!(
            (at_least..=at_most).contains(&successes),
            "budget {budget}: {successes}/200"
        );
    }
    // The median of a geometric wait with p = 256/64512 is about 175.
    let (_, _, median) = table[3];
    assert!((100..=260).contains(&median.unwrap()), "{table:?}");
}

#[test]
fn a_full_cone_easy_side_finds_without_spraying() {
    // Its NAT lets the hard side's first round in, from all 256 ports; the
    // first one that arrives is chosen.
    let mut setup = Setup::random(5, 0);
    setup.easy_nat = NatConfig::FULL_CONE;
    let sim = spray(setup);
    sim.assert_agreed();
    assert_eq!(sim.easy.probes_sent(), 0);
    assert!(sim.now - sim.start <= Duration::from_millis(100));
}

#[test]
fn the_budget_in_packets_and_seconds_is_kept() {
    let rate = 600;
    for (probe_budget, time_budget) in [
        (2048, Duration::from_secs(4)),
        (5000, Duration::from_secs(2)),
        (300, Duration::from_secs(4)),
    ] {
        let mut setup = Setup::random(1, probe_budget);
        // A wrong key on the hard side: nothing ever succeeds, the whole
        // budget is spent.
        setup.keys[1] = [1; 32];
        setup.config.time_budget = time_budget;
        setup.config.rate = rate;
        let sim = spray(setup);
        let expected = probe_budget.min(time_budget.as_millis() as usize * rate as usize / 1000);
        assert_eq!(sim.easy_probes.len(), expected);
        assert_eq!(sim.easy.probes_sent(), expected);
        let interval = Duration::from_secs(1) / rate;
        for (k, (at, dst)) in sim.easy_probes.iter().enumerate() {
            assert!(*at >= sim.start + interval * k as u32, "probe {k} early");
            assert!(*at < sim.start + time_budget, "probe {k} late");
            assert_eq!(dst.ip(), sim.hard_nat.public_ip());
            assert!(dst.port() >= FIRST_RANDOM_PORT);
        }
        let ports: HashSet<u16> = sim.easy_probes.iter().map(|(_, d)| d.port()).collect();
        assert_eq!(ports.len(), expected, "no port probed twice");
        let (at, why) = sim.failed(0).unwrap();
        assert_eq!(at - sim.start, time_budget + ANSWER_WAIT);
        assert_eq!(why, SprayFailure::NoAnswer);
        // The hard side heard forged-looking (wrong key) probes only.
        assert_eq!(sim.found(1), None);
        assert_eq!(sim.failed(1).unwrap().1, SprayFailure::NoAnswer);
    }
}

#[test]
fn the_hard_side_refreshes_its_mappings_within_the_time_budget() {
    let config = SprayConfig {
        sockets: 8,
        time_budget: Duration::from_millis(3500),
        ..SprayConfig::default()
    };
    let start = Instant::now();
    let mut hard = HardSide::new(start, KEY, "203.0.113.10:40001".parse().unwrap(), config);
    let mut rounds = Vec::new();
    let mut at = start;
    loop {
        let mut sockets = Vec::new();
        while let Some(transmit) = hard.poll_transmit() {
            assert_eq!(decode(&KEY, &transmit.payload).unwrap().kind, Kind::Ping);
            sockets.push(transmit.socket);
        }
        if !sockets.is_empty() {
            assert_eq!(sockets, (0..8).collect::<Vec<_>>());
            rounds.push(at);
        }
        let Some(next) = hard.poll_timeout() else {
            break;
        };
        at = next;
        hard.handle_timeout(at);
    }
    // At 0, 1, 2 and 3 s, then silence until it gives up.
    assert_eq!(rounds.len(), 4, "{rounds:?}");
    assert_eq!(
        hard.poll_event(),
        Some(Event::Failed {
            why: SprayFailure::NoAnswer
        })
    );
}

#[test]
fn forged_and_reflected_answers_are_ignored() {
    let now = Instant::now();
    let hard_ip: IpAddr = "203.0.113.20".parse().unwrap();
    let mut easy = EasySide::new(now, KEY, hard_ip, &[], SprayConfig::default());
    let first = easy.poll_transmit().unwrap();
    let from = first.dst;
    let later = now + Duration::from_millis(40);
    let pong = |key: &[u8; 32], from_controlling: bool| {
        encode(
            key,
            &Probe {
                kind: Kind::Pong,
                from_controlling,
                txid: [3; 12],
                argument: 0,
            },
        )
    };
    // A wrong key, a flipped bit, a probe with the easy side's own role,
    // a punch-keyed probe: none is an answer.
    assert!(!easy.handle_datagram(later, from, &pong(&[8; 32], false)));
    let mut flipped = pong(&KEY, false);
    flipped[10] ^= 1;
    assert!(!easy.handle_datagram(later, from, &flipped));
    assert!(!easy.handle_datagram(later, from, &pong(&KEY, true)));
    assert!(!easy.handle_datagram(later, from, &[0xc0; 1200]));
    easy.handle_timeout(later);
    while let Some(transmit) = easy.poll_transmit() {
        let probe = decode(&KEY, &transmit.payload).unwrap();
        assert_eq!(probe.kind, Kind::Ping, "still spraying");
    }
    assert_eq!(easy.poll_event(), None);
    // The real answer is taken.
    assert!(easy.handle_datagram(later, from, &pong(&KEY, false)));
    let nominate = easy.poll_transmit().unwrap();
    assert_eq!(nominate.dst, from);
    assert_eq!(
        decode(&KEY, &nominate.payload).unwrap().kind,
        Kind::Nominate
    );

    // The hard side: a forged nomination is neither answered nor taken.
    let mut hard = HardSide::new(
        now,
        KEY,
        "203.0.113.10:40001".parse().unwrap(),
        SprayConfig::default(),
    );
    while hard.poll_transmit().is_some() {}
    let forged = encode(
        &[8; 32],
        &Probe {
            kind: Kind::Nominate,
            from_controlling: true,
            txid: [4; 12],
            argument: 0,
        },
    );
    let easy_mapped: SocketAddr = "203.0.113.10:40001".parse().unwrap();
    assert!(!hard.handle_datagram(later, 3, easy_mapped, &forged));
    assert!(!hard.handle_datagram(later, 3, easy_mapped, &nominate.payload[..37]));
    assert!(hard.poll_transmit().is_none());
    assert_eq!(hard.poll_event(), None);
    assert!(hard.handle_datagram(later, 3, easy_mapped, &nominate.payload));
    assert_eq!(
        hard.poll_event(),
        Some(Event::Found {
            socket: 3,
            remote: easy_mapped
        })
    );
}

#[test]
fn a_wrong_key_never_finds_although_probes_arrive() {
    for seed in 0..5 {
        let mut setup = Setup::random(seed, 2048);
        setup.easy_nat = NatConfig::FULL_CONE;
        setup.keys[0] = [8; 32];
        let sim = spray(setup);
        assert!(sim.delivered[0] >= 256, "the hard side's probes arrived");
        assert_eq!(sim.found(0), None);
        assert_eq!(sim.found(1), None);
    }
}

#[test]
fn only_the_nominated_socket_is_found_when_many_ports_answer() {
    // With a full cone in front of the easy side every socket's probes get
    // through, and its probes hit some sockets too; both must still name
    // one pair.
    for seed in 0..20 {
        let mut setup = Setup::random(seed, 2048);
        setup.easy_nat = NatConfig::FULL_CONE;
        setup.config.rate = 5000;
        spray(setup).assert_agreed();
    }
}

#[test]
fn five_percent_loss_still_finds_with_the_full_budget() {
    let mut found = 0;
    for seed in 0..50 {
        let mut setup = Setup::random(seed, 2048);
        setup.loss = 0.05;
        let sim = spray(setup);
        if sim.found(0).is_some() {
            sim.assert_agreed();
            found += 1;
        }
    }
    assert!(found >= 47, "{found}/50");
}

#[test]
fn a_sequential_hard_nat_is_found_with_the_first_predicted_probes() {
    for foreign_mappings in [0, 5, 40] {
        let mut setup = Setup::random(1, 2048);
        setup.hard_nat = NatConfig::SYMMETRIC; // sequential, step 7
        setup.predict = true;
        setup.foreign_mappings = foreign_mappings;
        let sim = spray(setup);
        assert_eq!(sim.assert_agreed(), 0, "socket 0's port is hit first");
        // The first predicted port is the one socket 0 gets with no foreign
        // mappings; each foreign mapping shifts the sockets by one step.
        let (hit, _) = sim.probes_to_success().unwrap();
        assert_eq!(hit, foreign_mappings + 1);
    }
}

#[test]
fn prediction_continues_a_fixed_step_and_refuses_anything_else() {
    let stun = |port: u16| SocketAddr::from(([198, 51, 100, 1], port));
    let mapped = |port: u16| SocketAddr::from(([203, 0, 113, 20], port));
    assert_eq!(
        predict_ports(
            &[(mapped(40007), stun(3478)), (mapped(40014), stun(3479))],
            3
        )[..4],
        [40021, 40028, 40035, 40042]
    );
    assert_eq!(
        predict_ports(
            &[(mapped(40007), stun(3478)), (mapped(40014), stun(3479))],
            3
        )
        .len(),
        3 + PREDICTION_SLACK
    );
    // Downwards too, and not past port 1.
    assert_eq!(
        predict_ports(&[(mapped(10), stun(3478)), (mapped(8), stun(3479))], 10),
        [6, 4, 2]
    );
    // Three answers, one step.
    assert_eq!(
        predict_ports(
            &[
                (mapped(5000), stun(1)),
                (mapped(5001), stun(2)),
                (mapped(5002), stun(3))
            ],
            1
        )[0],
        5003
    );
    // An easy NAT after all: its one port.
    assert_eq!(
        predict_ports(&[(mapped(5000), stun(1)), (mapped(5000), stun(2))], 256),
        [5000]
    );
    // Nothing to tell: one answer, a repeated destination, uneven steps,
    // a random-looking step, two IPs, and no answers.
    assert!(predict_ports(&[(mapped(5000), stun(1))], 256).is_empty());
    assert!(predict_ports(&[(mapped(5000), stun(1)), (mapped(5001), stun(1))], 256).is_empty());
    assert!(
        predict_ports(
            &[
                (mapped(5000), stun(1)),
                (mapped(5001), stun(2)),
                (mapped(5003), stun(3))
            ],
            256
        )
        .is_empty()
    );
    assert!(predict_ports(&[(mapped(5000), stun(1)), (mapped(31337), stun(2))], 256).is_empty());
    let elsewhere = SocketAddr::from(([203, 0, 113, 21], 5001));
    assert!(predict_ports(&[(mapped(5000), stun(1)), (elsewhere, stun(2))], 256).is_empty());
    assert!(predict_ports(&[], 256).is_empty());
}

#[test]
fn predicted_ports_go_first_and_are_not_drawn_again() {
    let now = Instant::now();
    let config = SprayConfig {
        probe_budget: 600,
        ..SprayConfig::default()
    };
    let hard_ip: IpAddr = "203.0.113.20".parse().unwrap();
    let mut easy = EasySide::new(now, KEY, hard_ip, &[50_000, 0, 50_001, 50_000, 80], config);
    easy.handle_timeout(now + Duration::from_secs(2));
    let ports: Vec<u16> = std::iter::from_fn(|| easy.poll_transmit())
        .map(|t| t.dst.port())
        .collect();
    assert_eq!(ports.len(), 600);
    assert_eq!(ports[..3], [50_000, 50_001, 80]);
    assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 600);
}

#[test]
fn every_port_once_at_most_then_only_listening() {
    let now = Instant::now();
    let config = SprayConfig {
        probe_budget: 100_000,
        rate: 1_000_000,
        time_budget: Duration::from_secs(1),
        ..SprayConfig::default()
    };
    let mut easy = EasySide::new(now, KEY, "203.0.113.20".parse().unwrap(), &[80], config);
    easy.handle_timeout(now + Duration::from_millis(500));
    assert_eq!(easy.probes_sent(), 64_512 + 1);
    // Nothing left to send: the next timer is the end of listening, not a spin.
    assert_eq!(
        easy.poll_timeout(),
        Some(now + config.time_budget + ANSWER_WAIT)
    );
}

#[test]
fn the_same_seed_sprays_the_same_ports() {
    let now = Instant::now();
    let ports = |seed| {
        let config = SprayConfig {
            seed,
            ..SprayConfig::default()
        };
        let mut easy = EasySide::new(now, KEY, "203.0.113.20".parse().unwrap(), &[], config);
        easy.handle_timeout(now + Duration::from_millis(100));
        std::iter::from_fn(|| easy.poll_transmit())
            .map(|t| t.dst.port())
            .collect::<Vec<_>>()
    };
    assert_eq!(ports(1), ports(1));
    assert_ne!(ports(1), ports(2));
}

#[tokio::test]
async fn drivers_find_each_other_on_loopback() {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let sockets = bind_spray_sockets(localhost, 16).unwrap();
    let hard_ports: Vec<u16> = sockets
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    let easy_socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let easy_addr = easy_socket.local_addr().unwrap();
    // Only the hard side's own ports are probed: no stray datagrams to
    // other loopback services.
    let config = SprayConfig {
        probe_budget: hard_ports.len(),
        time_budget: Duration::from_secs(2),
        ..SprayConfig::default()
    };
    let hard = tokio::spawn(spray_hard(sockets, easy_addr, KEY, config));
    let found = tokio::time::timeout(
        Duration::from_secs(5),
        spray_easy(&easy_socket, localhost, &hard_ports, KEY, config),
    )
    .await
    .unwrap()
    .unwrap();
    let remote = found.remote;
    assert!((1..=hard_ports.len()).contains(&found.probes), "{found:?}");
    let hard = tokio::time::timeout(Duration::from_secs(5), hard)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(hard.remote, easy_addr);
    assert_eq!(remote, hard.socket.local_addr().unwrap());
    assert_eq!(hard_ports[hard.index], remote.port());
    // The winning socket works: a datagram each way.
    hard.socket.send_to(b"quic", hard.remote).await.unwrap();
    let mut buffer = [0u8; 16];
    let (len, from) = easy_socket.recv_from(&mut buffer).await.unwrap();
    assert_eq!((&buffer[..len], from), (&b"quic"[..], remote));
}

#[tokio::test]
async fn the_easy_driver_gives_up_after_its_budget() {
    let easy_socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let config = SprayConfig {
        probe_budget: 0,
        time_budget: Duration::from_millis(200),
        ..SprayConfig::default()
    };
    let started = std::time::Instant::now();
    let error = spray_easy(
        &easy_socket,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        &[],
        KEY,
        config,
    )
    .await
    .unwrap_err();
    assert!(matches!(
        error,
        SprayError::Failed {
            why: SprayFailure::NoAnswer,
            ..
        }
    ));
    assert!(started.elapsed() >= Duration::from_millis(700));
}

#[test]
fn socket_counts_outside_the_limit_are_refused() {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for asked in [0, MAX_SOCKETS + 1] {
        assert!(matches!(
            bind_spray_sockets(localhost, asked),
            Err(SprayError::SocketCount { asked: a }) if a == asked
        ));
    }
    // The limit is known on Linux, and the message says what to do.
    if cfg!(target_os = "linux") {
        assert!(descriptors_left().is_some());
    }
    let error = SprayError::FileLimit {
        needed: 320,
        available: 100,
    };
    assert!(error.to_string().contains("ulimit -n"));
}
