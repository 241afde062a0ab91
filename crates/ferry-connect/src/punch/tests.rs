//! Deterministic tests of the puncher in virtual time, on `ferry-netsim`'s
//! in-memory network: one NAT in front of each peer, and its wire (20 ms
//! one way, seeded loss) between the NATs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ferry_netsim::{Nat, NatConfig, Wire};

use super::*;

const KEY: [u8; 32] = [7; 32];
const STUN_SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 3478);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NatType {
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering
    /// (Linux masquerade).
    PortRestricted,
    /// A new external port per destination, address-and-port-dependent
    /// filtering (masquerade fully-random).
    Symmetric,
}

impl NatType {
    /// The shared network model's NAT of this type.
    fn config(self) -> NatConfig {
        match self {
            NatType::FullCone => NatConfig::FULL_CONE,
            NatType::AddressRestricted => NatConfig::ADDRESS_RESTRICTED,
            NatType::PortRestricted => NatConfig::PORT_RESTRICTED,
            NatType::Symmetric => NatConfig::SYMMETRIC,
        }
    }
}

fn nat(kind: NatType, public_ip: [u8; 4]) -> Nat {
    Nat::new(kind.config(), IpAddr::V4(public_ip.into()))
}

struct Side {
    puncher: Puncher,
    internal: SocketAddr,
    nat: Nat,
    events: Vec<(Instant, Event)>,
    /// Drop every outgoing probe of this kind (to test lost messages).
    drop_kind: Option<u8>,
}

struct Sim {
    start: Instant,
    now: Instant,
    sides: [Side; 2],
    wire: Wire<Vec<u8>>,
    /// Datagrams that got through the receiving side's NAT.
    delivered: usize,
}

struct Setup {
    nats: [NatType; 2],
    keys: [[u8; 32]; 2],
    controlling: [bool; 2],
    loss: f64,
    seed: u64,
    /// Side `i`'s STUN mapping is kept from the other side at the start.
    stun_withheld: [bool; 2],
}

impl Setup {
    fn new(a: NatType, b: NatType) -> Setup {
        Setup {
            nats: [a, b],
            keys: [KEY, KEY],
            controlling: [true, false],
            loss: 0.0,
            seed: 1,
            stun_withheld: [false, false],
        }
    }
}

impl Sim {
    fn new(setup: Setup) -> Sim {
        let start = Instant::now();
        let internal = [
            SocketAddr::from(([192, 168, 1, 2], 5000)),
            SocketAddr::from(([10, 0, 0, 2], 5000)),
        ];
        let mut nats = [
            nat(setup.nats[0], [203, 0, 113, 10]),
            nat(setup.nats[1], [203, 0, 113, 20]),
        ];
        // What each peer learnt by STUN before punching: its mapping towards
        // the STUN server (for a symmetric NAT, useless towards anyone else).
        let stun = [
            nats[0].outbound(internal[0], STUN_SERVER).unwrap(),
            nats[1].outbound(internal[1], STUN_SERVER).unwrap(),
        ];
        let candidates = |other: usize| {
            let mut known = vec![(internal[other], 100)];
            if !setup.stun_withheld[other] {
                known.push((stun[other], 50));
            }
            known
        };
        let [nat0, nat1] = nats;
        let side = |i: usize, nat: Nat| Side {
            puncher: Puncher::new(
                start,
                setup.keys[i],
                setup.controlling[i],
                &candidates(1 - i),
                PunchConfig::default(),
                setup.seed.wrapping_mul(31).wrapping_add(i as u64),
            ),
            internal: internal[i],
            nat,
            events: Vec::new(),
            drop_kind: None,
        };
        Sim {
            start,
            now: start,
            sides: [side(0, nat0), side(1, nat1)],
            wire: Wire::new(Duration::from_millis(20), setup.loss, setup.seed),
            delivered: 0,
        }
    }

    /// Runs until both sides reported an event or `limit` of virtual time passed.
    fn run(&mut self, limit: Duration) {
        loop {
            self.flush();
            if self.sides.iter().all(|s| !s.events.is_empty()) {
                return;
            }
            let next_timer = self
                .sides
                .iter()
                .filter_map(|s| s.puncher.poll_timeout())
                .min();
            let Some(next) = [self.wire.next_due(), next_timer]
                .into_iter()
                .flatten()
                .min()
            else {
                return;
            };
            if next > self.start + limit {
                return;
            }
            self.now = self.now.max(next);
            let now = self.now;
            for datagram in self.wire.take_due(now) {
                // Only public NAT addresses are routable; private ones go nowhere.
                let Some(side) = self
                    .sides
                    .iter_mut()
                    .find(|s| s.nat.public_ip() == datagram.to.ip())
                else {
                    continue;
                };
                if let Some(internal) = side.nat.inbound(datagram.to.port(), datagram.from) {
                    assert_eq!(internal, side.internal);
                    self.delivered += 1;
                    side.puncher
                        .handle_datagram(now, datagram.from, &datagram.payload);
                }
            }
            for side in &mut self.sides {
                if side.puncher.poll_timeout().is_some_and(|t| t <= now) {
                    side.puncher.handle_timeout(now);
                }
            }
        }
    }

    /// Moves every pending transmit into the network and collects events.
    fn flush(&mut self) {
        for i in 0..2 {
            while let Some(transmit) = self.sides[i].puncher.poll_transmit() {
                self.route(i, transmit);
            }
            while let Some(event) = self.sides[i].puncher.poll_event() {
                self.sides[i].events.push((self.now, event));
            }
        }
    }

    /// Through the sender's NAT onto the wire (which may lose it).
    fn route(&mut self, from_side: usize, transmit: Transmit) {
        let side = &mut self.sides[from_side];
        let Some(from) = side.nat.outbound(side.internal, transmit.dst) else {
            return;
        };
        if side.drop_kind == Some(transmit.payload[4]) {
            return;
        }
        self.wire
            .send(self.now, from, transmit.dst, transmit.payload);
    }

    fn confirmed(&self, i: usize) -> Option<(SocketAddr, Duration)> {
        self.sides[i].events.iter().find_map(|(_, e)| match e {
            Event::Confirmed { remote, rtt } => Some((*remote, *rtt)),
            Event::Failed { .. } => None,
        })
    }

    fn failed(&self, i: usize) -> Option<(Instant, PunchFailure)> {
        self.sides[i].events.iter().find_map(|(at, e)| match e {
            Event::Failed { why } => Some((*at, *why)),
            Event::Confirmed { .. } => None,
        })
    }

    /// Both sides confirmed the two ends of the same pair: what A sends to
    /// its remote arrives at B from B's remote, and the other way round.
    fn assert_agreed(&self) -> (Duration, Duration) {
        let (remote_a, rtt_a) = self.confirmed(0).expect("A did not confirm");
        let (remote_b, rtt_b) = self.confirmed(1).expect("B did not confirm");
        let [a, b] = &self.sides;
        assert_eq!(remote_a.ip(), b.nat.public_ip(), "A's remote is B's NAT");
        assert_eq!(remote_b.ip(), a.nat.public_ip(), "B's remote is A's NAT");
        assert_eq!(a.nat.existing(a.internal, remote_a), Some(remote_b));
        assert_eq!(b.nat.existing(b.internal, remote_b), Some(remote_a));
        assert_eq!(b.nat.inbound(remote_a.port(), remote_b), Some(b.internal));
        assert_eq!(a.nat.inbound(remote_b.port(), remote_a), Some(a.internal));
        (rtt_a, rtt_b)
    }
}

fn punch_between(a: NatType, b: NatType) -> Sim {
    let mut sim = Sim::new(Setup::new(a, b));
    sim.run(Duration::from_secs(15));
    sim
}

#[test]
fn full_cone_to_full_cone_confirms_quickly() {
    let sim = punch_between(NatType::FullCone, NatType::FullCone);
    let (rtt_a, rtt_b) = sim.assert_agreed();
    assert_eq!(rtt_a, Duration::from_millis(40));
    assert_eq!(rtt_b, Duration::from_millis(40));
    // Burst, answer, nominate, ack: a few round trips, not rounds of the schedule.
    assert!(
        sim.now - sim.start <= Duration::from_millis(200),
        "{:?}",
        sim.now - sim.start
    );
}

#[test]
fn port_restricted_to_port_restricted_confirms() {
    let sim = punch_between(NatType::PortRestricted, NatType::PortRestricted);
    sim.assert_agreed();
    assert!(sim.now - sim.start <= Duration::from_millis(300));
}

#[test]
fn address_restricted_to_address_restricted_confirms() {
    punch_between(NatType::AddressRestricted, NatType::AddressRestricted).assert_agreed();
}

#[test]
fn port_restricted_and_full_cone_confirm_whoever_controls() {
    punch_between(NatType::PortRestricted, NatType::FullCone).assert_agreed();
    punch_between(NatType::FullCone, NatType::PortRestricted).assert_agreed();
}

#[test]
fn symmetric_and_full_cone_confirm_through_the_peer_reflexive_address() {
    // The symmetric side's STUN mapping is useless, but its probes reach the
    // full cone, whose answer and probes go back to the new mapping.
    for (a, b) in [
        (NatType::Symmetric, NatType::FullCone),
        (NatType::FullCone, NatType::Symmetric),
    ] {
        let sim = punch_between(a, b);
        sim.assert_agreed();
        let symmetric = if a == NatType::Symmetric { 0 } else { 1 };
        let seen_by_cone = sim.confirmed(1 - symmetric).unwrap().0;
        let stun = sim.sides[symmetric]
            .nat
            .existing(sim.sides[symmetric].internal, STUN_SERVER)
            .unwrap();
        assert_ne!(seen_by_cone, stun, "learnt, not the advertised candidate");
    }
}

#[test]
fn symmetric_and_address_restricted_confirm() {
    // Address-dependent filtering lets the symmetric side's new port in once
    // the restricted side has probed the symmetric side's IP at any port.
    punch_between(NatType::Symmetric, NatType::AddressRestricted).assert_agreed();
}

#[test]
fn symmetric_to_symmetric_fails_within_the_schedule() {
    let sim = punch_between(NatType::Symmetric, NatType::Symmetric);
    for i in 0..2 {
        assert_eq!(sim.confirmed(i), None);
        let (at, why) = sim.failed(i).expect("no failure reported");
        assert_eq!(at - sim.start, PunchConfig::default().give_up_after);
        assert_eq!(why, PunchFailure::NoAnswer);
    }
}

#[test]
fn symmetric_to_port_restricted_fails_one_way() {
    let sim = punch_between(NatType::Symmetric, NatType::PortRestricted);
    assert_eq!(sim.confirmed(0), None);
    assert_eq!(sim.confirmed(1), None);
    // The restricted side's probes to the symmetric side's STUN mapping are
    // filtered by the symmetric NAT; the symmetric side's probes come from a
    // new port the restricted side never sent to, so they are filtered too.
    assert_eq!(sim.failed(0).unwrap().1, PunchFailure::NoAnswer);
    assert_eq!(sim.failed(1).unwrap().1, PunchFailure::NoAnswer);
}

#[test]
fn wrong_key_never_confirms() {
    let mut setup = Setup::new(NatType::FullCone, NatType::FullCone);
    setup.keys[1] = [8; 32];
    let mut sim = Sim::new(setup);
    sim.run(Duration::from_secs(15));
    assert!(sim.delivered > 10, "probes did arrive: {}", sim.delivered);
    for i in 0..2 {
        assert_eq!(sim.confirmed(i), None);
        assert_eq!(sim.failed(i).unwrap().1, PunchFailure::NoAnswer);
    }
}

#[test]
fn twenty_percent_loss_still_confirms() {
    for seed in 0..50 {
        let mut setup = Setup::new(NatType::PortRestricted, NatType::PortRestricted);
        setup.loss = 0.2;
        setup.seed = seed;
        let mut sim = Sim::new(setup);
        sim.run(Duration::from_secs(15));
        sim.assert_agreed();
        assert!(
            sim.now - sim.start < Duration::from_secs(3),
            "seed {seed}: {:?}",
            sim.now - sim.start
        );
    }
}

#[test]
fn two_controlled_sides_never_agree() {
    let mut setup = Setup::new(NatType::FullCone, NatType::FullCone);
    setup.controlling = [false, false];
    let mut sim = Sim::new(setup);
    sim.run(Duration::from_secs(15));
    // Both see only the other's pings as reflected roles: nothing is ours.
    for i in 0..2 {
        assert_eq!(sim.confirmed(i), None);
        assert_eq!(sim.failed(i).unwrap().1, PunchFailure::NoAnswer);
    }
}

#[test]
fn lost_acknowledgements_fail_the_controlling_side_only_on_silence() {
    let mut setup = Setup::new(NatType::FullCone, NatType::FullCone);
    setup.seed = 3;
    let mut sim = Sim::new(setup);
    sim.sides[1].drop_kind = Some(Kind::NominateAck as u8);
    sim.run(Duration::from_secs(15));
    assert!(sim.confirmed(1).is_some(), "the controlled side accepted");
    assert_eq!(sim.failed(0).unwrap().1, PunchFailure::NominationUnanswered);
}

#[test]
fn non_probe_traffic_from_the_nominee_counts_as_acknowledgement() {
    let now = Instant::now();
    let peer: SocketAddr = "203.0.113.20:40001".parse().unwrap();
    let mut a = Puncher::new(now, KEY, true, &[(peer, 1)], PunchConfig::default(), 1);
    let ping = a.poll_transmit().unwrap();
    let txid = decode(&KEY, &ping.payload).unwrap().txid;
    let pong = encode(
        &KEY,
        &Probe {
            kind: Kind::Pong,
            from_controlling: false,
            txid,
            argument: 0,
        },
    );
    let later = now + Duration::from_millis(30);
    assert!(a.handle_datagram(later, peer, &pong));
    let nominate = a.poll_transmit().unwrap();
    assert_eq!(
        decode(&KEY, &nominate.payload).unwrap().kind,
        Kind::Nominate
    );
    assert_eq!(a.poll_event(), None);
    // A QUIC Initial from someone else changes nothing; from the peer it does.
    let other: SocketAddr = "203.0.113.99:1".parse().unwrap();
    assert!(!a.handle_datagram(later, other, &[0xc0; 1200]));
    assert_eq!(a.poll_event(), None);
    assert!(!a.handle_datagram(later, peer, &[0xc0; 1200]));
    assert_eq!(
        a.poll_event(),
        Some(Event::Confirmed {
            remote: peer,
            rtt: Duration::from_millis(30)
        })
    );
}

#[test]
fn confirmed_side_sends_keepalives_and_reacknowledges() {
    let mut sim = punch_between(NatType::FullCone, NatType::FullCone);
    sim.assert_agreed();
    let remote = sim.confirmed(1).unwrap().0;
    let confirmed_at = sim.sides[1].events[0].0;
    let b = &mut sim.sides[1].puncher;
    while b.poll_transmit().is_some() {}
    let next = b.poll_timeout().unwrap();
    assert_eq!(
        next - confirmed_at,
        PunchConfig::default().keepalive_interval
    );
    b.handle_timeout(next);
    let keepalive = b.poll_transmit().unwrap();
    assert_eq!(keepalive.dst, remote);
    assert_eq!(decode(&KEY, &keepalive.payload).unwrap().kind, Kind::Ping);
    // A resent nomination is answered again, one of another path is not.
    let nominate = Probe {
        kind: Kind::Nominate,
        from_controlling: true,
        txid: [1; 12],
        argument: 0,
    };
    assert!(b.handle_datagram(next, remote, &encode(&KEY, &nominate)));
    let ack = b.poll_transmit().unwrap();
    assert_eq!(ack.dst, remote);
    assert_eq!(decode(&KEY, &ack.payload).unwrap().kind, Kind::NominateAck);
    let elsewhere: SocketAddr = "203.0.113.10:1".parse().unwrap();
    assert!(b.handle_datagram(next, elsewhere, &encode(&KEY, &nominate)));
    assert_eq!(b.poll_transmit(), None);
    assert_eq!(b.remote(), Some(remote));
}

#[test]
fn schedule_bursts_then_ramps_to_250_ms() {
    let now = Instant::now();
    let peers: Vec<(SocketAddr, u32)> = vec![
        ("198.51.100.7:1".parse().unwrap(), 1),
        ("198.51.100.8:1".parse().unwrap(), 9),
    ];
    let mut p = Puncher::new(now, KEY, true, &peers, PunchConfig::default(), 1);
    // The burst at t=0 goes to every candidate, best first.
    let burst: Vec<_> = std::iter::from_fn(|| p.poll_transmit())
        .map(|t| t.dst)
        .collect();
    assert_eq!(burst, vec![peers[1].0, peers[0].0]);
    let mut gaps = Vec::new();
    let mut last = now;
    let mut rounds = 0;
    while let Some(at) = p.poll_timeout() {
        p.handle_timeout(at);
        let sent = std::iter::from_fn(|| p.poll_transmit()).count();
        if sent > 0 {
            gaps.push((at - last).as_millis());
            last = at;
            rounds += 1;
            assert_eq!(sent, 2);
        }
    }
    assert_eq!(&gaps[..8], &[50, 50, 100, 100, 150, 200, 250, 250]);
    assert!(gaps[8..].iter().all(|&g| g == 250));
    assert!(rounds > 30 && rounds < 60, "{rounds}");
    assert_eq!(
        p.poll_event(),
        Some(Event::Failed {
            why: PunchFailure::NoAnswer
        })
    );
}

#[test]
fn unusable_and_duplicate_candidates_are_skipped_and_learnt_ones_are_bounded() {
    let now = Instant::now();
    let good: SocketAddr = "198.51.100.7:9".parse().unwrap();
    let peers = [
        ("0.0.0.0:9".parse().unwrap(), 5),
        ("224.0.0.1:9".parse().unwrap(), 5),
        ("198.51.100.7:0".parse().unwrap(), 5),
        (good, 5),
        (good, 4),
    ];
    let mut p = Puncher::new(now, KEY, false, &peers, PunchConfig::default(), 1);
    assert_eq!(p.priorities(), vec![(good, 5)]);
    for port in 1..100u16 {
        let from = SocketAddr::from(([198, 51, 100, 9], port));
        let ping = Probe {
            kind: Kind::Ping,
            from_controlling: true,
            txid: [port as u8; 12],
            argument: 0,
        };
        assert!(p.handle_datagram(now, from, &encode(&KEY, &ping)));
    }
    assert_eq!(p.priorities().len(), MAX_PEER_ADDRESSES);
    let priorities = p.priorities();
    assert_eq!(priorities[0].1, u32::MAX, "peer-reflexive goes first");
    assert_eq!(priorities[MAX_PEER_ADDRESSES - 1], (good, 5));
}

#[test]
fn probe_codec_round_trips_and_rejects_tampering() {
    let probe = Probe {
        kind: Kind::Nominate,
        from_controlling: true,
        txid: [0xab; 12],
        argument: 40_000,
    };
    let bytes = encode(&KEY, &probe);
    assert_eq!(&bytes[..6], &[0x3f, b'F', b'Y', b'P', 3, 1]);
    assert_eq!(&bytes[18..22], &40_000u32.to_be_bytes());
    assert_eq!(decode(&KEY, &bytes), Some(probe));
    assert_eq!(decode(&[8; 32], &bytes), None);
    for i in 0..PROBE_LEN {
        let mut bad = bytes;
        bad[i] ^= 1;
        assert_eq!(decode(&KEY, &bad), None, "byte {i}");
    }
    assert_eq!(decode(&KEY, &bytes[..PROBE_LEN - 1]), None);
    let mut long = bytes.to_vec();
    long.push(0);
    assert_eq!(decode(&KEY, &long), None);
    assert_eq!(decode(&KEY, &[]), None);
}

#[test]
fn reflected_probes_of_our_own_role_are_ignored() {
    let now = Instant::now();
    let peer: SocketAddr = "198.51.100.7:9".parse().unwrap();
    let mut p = Puncher::new(now, KEY, true, &[(peer, 1)], PunchConfig::default(), 1);
    let ping = p.poll_transmit().unwrap();
    assert!(!p.handle_datagram(now, peer, &ping.payload));
    assert_eq!(p.poll_transmit(), None, "no pong to our own ping");
}

#[test]
fn a_late_candidate_lets_the_punch_through() {
    // Port-restricted on both sides, and the controlled side knows only the
    // controlling side's private address: its NAT never lets the other's
    // probes in.
    let setup = || {
        let mut setup = Setup::new(NatType::PortRestricted, NatType::PortRestricted);
        setup.stun_withheld = [true, false];
        setup
    };
    let mut sim = Sim::new(setup());
    sim.run(Duration::from_secs(15));
    assert_eq!(sim.confirmed(0), None);
    assert_eq!(sim.confirmed(1), None);
    // The same, but the STUN mapping arrives a second in.
    let mut sim = Sim::new(setup());
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.confirmed(1), None);
    let late = sim.sides[0]
        .nat
        .existing(sim.sides[0].internal, STUN_SERVER)
        .unwrap();
    let now = sim.now;
    let b = &mut sim.sides[1].puncher;
    assert!(b.add_peer_address(now, late, 50));
    assert!(!b.add_peer_address(now, late, 50), "known already");
    let ping = b.poll_transmit().expect("pinged at once");
    assert_eq!(ping.dst, late);
    sim.route(1, ping);
    sim.run(Duration::from_secs(15));
    sim.assert_agreed();
    assert!(sim.now - sim.start < Duration::from_millis(1500));
    // Once confirmed, late addresses are not probed.
    let now = sim.now;
    let unused: SocketAddr = "203.0.113.10:1".parse().unwrap();
    assert!(!sim.sides[1].puncher.add_peer_address(now, unused, 1));
}
