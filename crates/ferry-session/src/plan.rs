//! The path plan, sans-IO: from both sides' candidates and network
//! reports, which paths to try, to which targets, with which head start
//! ([`plan_paths`]), and whether a direct path can work at all
//! ([`direct_hopeless`]), and what candidates that arrive during the race
//! add to it ([`late_steps`]). Pure functions: the driver (`attempt`)
//! turns each [`Step`] into a socket operation.
//!
//! ```text
//! controlling (sender)                 controlled (receiver)
//!   AcceptTcp (if it listens)            AcceptTcp (if it listens)
//!   ConnectTcp { the peer's host + UPnP TCP targets }   (both; an older
//!       receiver offers none: its sender only accepts)
//!   SimultaneousOpen { peer's server-observed TCP mapping }   (both; not
//!       when both share one public address, nor with --force-path lan)
//!   PunchQuic { peer's UDP targets, best first, no duplicates }  (both)
//!     or, when one side's NAT maps a new port per destination and the
//!     other's does not ([`spray_role`]), instead:
//!   SprayQuic { Hard: many sockets towards the easy side's mapping |
//!               Easy: probes to (predicted, then random) ports of the hard side }
//!   Relay { head start 1.5 s (4 s when spraying); 0 when it is the only path
//!           or direct is hopeless }
//!
//! candidates the peer sends during the race ([`late_steps`]):
//!   new host/UPnP TCP addresses -> one more ConnectTcp (either side)
//!   new UDP addresses           -> PunchQuic: extra targets for the punch
//! ```

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ferry_connect::race::PathKind;
use ferry_proto::peer::{Candidate, CandidateKind, NetworkHint, Transport, UdpMapping};

use crate::{Hopeless, RELAY_HEAD_START, SessionOptions, UdpObstacle};

/// What the plan is made from.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// We are the sender (the side that nominates).
    pub controlling: bool,
    /// The paths the user allows.
    pub options: SessionOptions,
    /// The peer's candidates (already filtered).
    pub theirs: &'a [Candidate],
    /// Our public TCP mapping as the server saw it.
    pub our_observed: SocketAddr,
    /// We listen for direct TCP (when we could bind; an older receiver
    /// does not listen).
    pub listening: bool,
    /// The server gave us a relay token.
    pub relay_token: bool,
    /// Both networks rule out a direct path ([`direct_hopeless`]).
    pub hopeless: bool,
    /// Port spraying instead of a plain punch ([`spray_role`]).
    pub spray: Option<&'a Spray>,
    /// Both sides can move a running transfer from the relay to a direct
    /// path that comes up later (`ferry_proto::peer::FEATURE_MOVE`).
    pub can_move: bool,
}

/// Our part in port spraying, when exactly one of the two NATs maps a new
/// port per destination (see `ferry_connect::spray`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spray {
    /// Ours does: many sockets send towards the peer's one mapping.
    Hard {
        /// The peer's public UDP mapping (its STUN candidate).
        easy: SocketAddr,
    },
    /// The peer's does: probes to ports of its public address, the
    /// predicted ones first.
    Easy {
        /// The peer's public address.
        hard_ip: IpAddr,
        /// Ports its NAT will likely give its sockets next (empty when
        /// its ports are random).
        predicted: Vec<u16>,
    },
}

/// One path to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Accept the peer's direct TCP connection on our listener.
    AcceptTcp,
    /// Connect to the first of these TCP addresses that answers.
    ConnectTcp {
        /// The peer's host and UPnP TCP candidates.
        targets: Vec<Candidate>,
    },
    /// TCP simultaneous open from our signalling port to `remote`.
    SimultaneousOpen {
        /// The peer's public TCP mapping.
        remote: SocketAddr,
    },
    /// Punch towards these UDP addresses (best first), then QUIC.
    PunchQuic {
        /// The peer's UDP candidates, by priority, without duplicates.
        targets: Vec<SocketAddr>,
    },
    /// Port spraying in our part, then QUIC on the socket pair found.
    SprayQuic {
        /// Our part.
        spray: Spray,
    },
    /// The relay, after `head_start`.
    Relay {
        /// How long the direct paths run alone first.
        head_start: Duration,
    },
}

impl Step {
    /// The kind of path this step makes (a direct TCP step may still turn
    /// out a LAN path, see [`tcp_kind`]).
    pub fn kind(&self) -> PathKind {
        match self {
            Step::AcceptTcp | Step::ConnectTcp { .. } => PathKind::Tcp,
            Step::SimultaneousOpen { .. } => PathKind::SimultaneousOpen,
            Step::PunchQuic { .. } | Step::SprayQuic { .. } => PathKind::Quic,
            Step::Relay { .. } => PathKind::Relay,
        }
    }
}

/// The paths to try, in this order, from `input`.
pub fn plan_paths(input: &PlanInput<'_>) -> Vec<Step> {
    let options = input.options;
    let lan_only = options.force_path == Some(PathKind::Lan);
    let mut steps = Vec::new();
    // Direct TCP: each side that listens accepts, and each connects to all
    // of the other's host and UPnP addresses, so that either side's gateway
    // mapping opens the way. Whoever connects, the controlling side still
    // nominates (in band, on the TLS stream), so two TCP paths at once are
    // just two candidates for the race.
    if options.allows(PathKind::Tcp) {
        if input.listening {
            steps.push(Step::AcceptTcp);
        }
        let targets: Vec<Candidate> = input
            .theirs
            .iter()
            .filter(|c| c.transport == Transport::Tcp)
            .filter(|c| matches!(c.kind, CandidateKind::Host | CandidateKind::Upnp))
            .filter(|c| !lan_only || tcp_kind(c.addr) == PathKind::Lan)
            .cloned()
            .collect();
        if !targets.is_empty() {
            steps.push(Step::ConnectTcp { targets });
        }
    }
    // TCP simultaneous open between the signalling ports' public mappings.
    // Pointless when both sit behind the same public address (NATs rarely
    // hairpin): the LAN path covers that.
    let peer_observed = input
        .theirs
        .iter()
        .find(|c| c.transport == Transport::Tcp && c.kind == CandidateKind::ServerObserved)
        .map(|c| c.addr);
    if let Some(remote) = peer_observed {
        if options.allows(PathKind::SimultaneousOpen)
            && !lan_only
            && remote.ip() != input.our_observed.ip()
        {
            steps.push(Step::SimultaneousOpen { remote });
        }
    }
    // UDP hole punching from the very socket whose mapping we sent, then
    // QUIC on it.
    let mut udp: Vec<&Candidate> = input
        .theirs
        .iter()
        .filter(|c| c.transport == Transport::Udp)
        .collect();
    udp.sort_by_key(|c| std::cmp::Reverse(c.priority));
    let mut seen = HashSet::new();
    let targets: Vec<SocketAddr> = udp
        .into_iter()
        .map(|c| c.addr)
        .filter(|a| seen.insert(*a))
        .collect();
    if options.allows(PathKind::Quic) && !lan_only {
        if let Some(spray) = input.spray {
            steps.push(Step::SprayQuic {
                spray: spray.clone(),
            });
        } else if !targets.is_empty() {
            steps.push(Step::PunchQuic { targets });
        }
    }
    // The relay, after a head start for the direct paths (none when it is
    // the only path, or when both networks rule out a direct one).
    if input.relay_token && options.allows(PathKind::Relay) {
        let spraying = steps.iter().any(|s| matches!(s, Step::SprayQuic { .. }));
        let head_start = if steps.is_empty() || input.hopeless {
            Duration::ZERO
        } else if spraying && input.can_move {
            // Spraying takes seconds: the transfer starts on the relay and
            // moves to the sprayed path when it comes.
            Duration::ZERO
        } else if spraying {
            SPRAY_RELAY_HEAD_START
        } else {
            RELAY_HEAD_START
        };
        steps.push(Step::Relay { head_start });
    }
    steps
}

/// What candidates the peer sent during the race (`late`, as received)
/// add to it, given the plan's `input` (whose `theirs` are the candidates
/// known so far, filtered). Returns the newly accepted candidates, for the
/// caller to add to the known ones, and the steps they add:
/// [`Step::ConnectTcp`] to new host and UPnP TCP addresses (either side,
/// as in [`plan_paths`]), and [`Step::PunchQuic`] whose targets
/// are new UDP addresses for the punch under way.
///
/// The late candidates pass [`ferry_connect::address::peer_candidates`]
/// together with the known ones (so the loopback rule and the cap of
/// [`ferry_connect::address::MAX_PEER_CANDIDATES`] hold for all of them),
/// and `--force-path` limits them as it limits the plan. They never add a
/// simultaneous open or the relay: the peer's server-observed address came
/// with its hello (a late one is ignored), and the relay keeps the start
/// that [`direct_hopeless`] gave it. A hopeless verdict does not stop a
/// late TCP address, though: a UPnP mapping is just what the verdict
/// lacked.
pub fn late_steps(input: &PlanInput<'_>, late: Vec<Candidate>) -> (Vec<Candidate>, Vec<Step>) {
    use ferry_connect::address::{MAX_PEER_CANDIDATES, peer_candidates};
    let known = input.theirs;
    let is_known = |c: &Candidate| {
        known
            .iter()
            .any(|k| k.addr == c.addr && k.transport == c.transport)
    };
    let late = late
        .into_iter()
        .filter(|c| !matches!(c.kind, CandidateKind::ServerObserved | CandidateKind::Relay));
    let room = MAX_PEER_CANDIDATES.saturating_sub(known.len());
    let new: Vec<Candidate> = peer_candidates(
        known.iter().cloned().chain(late).collect(),
        input.our_observed,
    )
    .into_iter()
    .filter(|c| !is_known(c))
    .take(room)
    .collect();
    if new.is_empty() {
        return (new, Vec::new());
    }
    let steps = plan_paths(&PlanInput {
        theirs: &new,
        listening: false,
        relay_token: false,
        ..*input
    })
    .into_iter()
    .filter(|step| matches!(step, Step::ConnectTcp { .. } | Step::PunchQuic { .. }))
    .collect();
    (new, steps)
}

/// Why no direct path can work, when both sides' networks say so: UDP
/// useless on both sides (blocked, or a symmetric NAT whose punched holes
/// lead nowhere), no TCP address reachable from outside, and TCP
/// simultaneous open impossible (a side whose NAT changes TCP ports).
/// Then the relay starts at once instead of after its head start.
pub fn direct_hopeless(
    ours: &NetworkHint,
    theirs: &NetworkHint,
    our_candidates: &[Candidate],
    their_candidates: &[Candidate],
) -> Option<Hopeless> {
    fn udp_words(mapping: UdpMapping) -> Option<UdpObstacle> {
        match mapping {
            UdpMapping::Varies => Some(UdpObstacle::SymmetricNat),
            UdpMapping::Blocked => Some(UdpObstacle::Blocked),
            UdpMapping::Stable | UdpMapping::Unknown => None,
        }
    }
    let here = udp_words(ours.udp)?;
    let there = udp_words(theirs.udp)?;
    let reachable_tcp = our_candidates.iter().chain(their_candidates).any(|c| {
        c.transport == Transport::Tcp
            && match c.kind {
                CandidateKind::Upnp => true,
                CandidateKind::Host => matches!(
                    ferry_nat::classify(c.addr.ip()),
                    ferry_nat::AddrClass::Public | ferry_nat::AddrClass::Documentation
                ),
                _ => false,
            }
    });
    if reachable_tcp {
        return None;
    }
    let simultaneous_open_fails =
        ours.tcp_port_kept == Some(false) || theirs.tcp_port_kept == Some(false);
    if !simultaneous_open_fails {
        return None;
    }
    Some(Hopeless { here, there })
}

/// Whether any of our candidates and any of the peer's share an address
/// family (IPv4-mapped IPv6 counts as IPv4; loopback, link-local and
/// unspecified addresses do not count: they say nothing about the
/// networks). When none do (an IPv6-only peer facing an IPv4-only one),
/// no direct path can exist and the relay need not wait. Sides that offer
/// nothing countable (an older peer, `--force-path relay`) are given the
/// benefit of the doubt.
pub fn share_a_family(ours: &[Candidate], theirs: &[Candidate]) -> bool {
    let families = |candidates: &[Candidate]| {
        let mut v4 = false;
        let mut v6 = false;
        for c in candidates {
            let ip = c.addr.ip().to_canonical();
            if matches!(
                ferry_nat::classify(ip),
                ferry_nat::AddrClass::Loopback
                    | ferry_nat::AddrClass::LinkLocal
                    | ferry_nat::AddrClass::Unspecified
            ) {
                continue;
            }
            match ip {
                IpAddr::V4(_) => v4 = true,
                IpAddr::V6(_) => v6 = true,
            }
        }
        (v4, v6)
    };
    let (our4, our6) = families(ours);
    let (their4, their6) = families(theirs);
    if !(our4 || our6) || !(their4 || their6) {
        return true;
    }
    (our4 && their4) || (our6 && their6)
}

/// The relay's head start when the plan sprays ports: the spray's whole
/// time budget (2,048 probes at 600 a second take 3.4 s; within 1.5 s,
/// the usual head start, about 97% of sprays find a pair, and in the lab
/// one in ten lost the race to the relay).
pub const SPRAY_RELAY_HEAD_START: Duration = Duration::from_secs(4);

/// Our part in port spraying, from both sides' network reports: when one
/// NAT maps a new port per destination ([`UdpMapping::Varies`]) and the
/// other keeps one ([`UdpMapping::Stable`]), a plain punch fails where the
/// easy side filters by port, and spraying finds a pair of ports (see
/// `ferry_connect::spray`). `None` otherwise, or when the peer sent no
/// public UDP mapping. Both sides reach the same answer, mirrored.
pub fn spray_role(
    ours: &NetworkHint,
    theirs: &NetworkHint,
    their_candidates: &[Candidate],
) -> Option<Spray> {
    let their_mapping = their_candidates
        .iter()
        .find(|c| c.transport == Transport::Udp && c.kind == CandidateKind::Stun)?
        .addr;
    match (ours.udp, theirs.udp) {
        (UdpMapping::Varies, UdpMapping::Stable) => Some(Spray::Hard {
            easy: their_mapping,
        }),
        (UdpMapping::Stable, UdpMapping::Varies) => {
            let hard_ip = their_mapping.ip();
            let predicted = theirs
                .udp_ports
                .map(|[first, second]| {
                    // Two different destinations; which ones does not matter.
                    let to = |port| SocketAddr::new(hard_ip, port);
                    ferry_connect::spray::predict_ports(
                        &[
                            (SocketAddr::new(hard_ip, first), to(1)),
                            (SocketAddr::new(hard_ip, second), to(2)),
                        ],
                        ferry_connect::spray::SprayConfig::default().sockets,
                    )
                })
                .unwrap_or_default();
            Some(Spray::Easy { hard_ip, predicted })
        }
        _ => None,
    }
}

/// A TCP path to a private, link-local or loopback address is a LAN path.
pub fn tcp_kind(remote: SocketAddr) -> PathKind {
    use ferry_nat::AddrClass as C;
    match ferry_nat::classify(remote.ip()) {
        C::Private | C::UniqueLocal | C::LinkLocal | C::Loopback => PathKind::Lan,
        _ => PathKind::Tcp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(addr: &str, transport: Transport, kind: CandidateKind, priority: u32) -> Candidate {
        Candidate {
            addr: addr.parse().unwrap(),
            transport,
            kind,
            priority,
        }
    }

    fn peer() -> Vec<Candidate> {
        vec![
            cand(
                "192.168.1.20:5000",
                Transport::Tcp,
                CandidateKind::Host,
                900,
            ),
            cand(
                "198.51.100.9:41000",
                Transport::Tcp,
                CandidateKind::ServerObserved,
                100,
            ),
            cand(
                "198.51.100.9:6000",
                Transport::Tcp,
                CandidateKind::Upnp,
                850,
            ),
            cand(
                "192.168.1.20:7000",
                Transport::Udp,
                CandidateKind::Host,
                900,
            ),
            cand(
                "198.51.100.9:7001",
                Transport::Udp,
                CandidateKind::Stun,
                500,
            ),
            cand(
                "192.168.1.20:7000",
                Transport::Udp,
                CandidateKind::Host,
                300,
            ),
        ]
    }

    /// The sender listens; the receiver does not (as an older one, or one
    /// that could not bind: see `a_listening_receiver_accepts_and_connects`).
    fn input(theirs: &[Candidate], controlling: bool) -> PlanInput<'_> {
        PlanInput {
            controlling,
            options: SessionOptions::default(),
            theirs,
            our_observed: "203.0.113.5:40000".parse().unwrap(),
            listening: controlling,
            relay_token: true,
            hopeless: false,
            spray: None,
            can_move: false,
        }
    }

    #[test]
    fn the_receiver_connects_the_sender_accepts_both_punch_and_relay_last() {
        let theirs = peer();
        let steps = plan_paths(&input(&theirs, false));
        let kinds: Vec<PathKind> = steps.iter().map(Step::kind).collect();
        assert_eq!(
            kinds,
            [
                PathKind::Tcp,
                PathKind::SimultaneousOpen,
                PathKind::Quic,
                PathKind::Relay
            ]
        );
        let Step::ConnectTcp { targets } = &steps[0] else {
            panic!("{steps:?}")
        };
        let addrs: Vec<String> = targets.iter().map(|c| c.addr.to_string()).collect();
        assert_eq!(addrs, ["192.168.1.20:5000", "198.51.100.9:6000"]);
        assert_eq!(
            steps[1],
            Step::SimultaneousOpen {
                remote: "198.51.100.9:41000".parse().unwrap()
            }
        );
        assert_eq!(
            steps[2],
            Step::PunchQuic {
                targets: vec![
                    "192.168.1.20:7000".parse().unwrap(),
                    "198.51.100.9:7001".parse().unwrap()
                ]
            }
        );
        assert_eq!(
            steps[3],
            Step::Relay {
                head_start: RELAY_HEAD_START
            }
        );
        let sender = plan_paths(&input(&theirs, true));
        assert_eq!(sender[0], Step::AcceptTcp);
        assert_eq!(
            sender[1], steps[0],
            "the sender connects to the same targets"
        );
        let not_listening = PlanInput {
            listening: false,
            ..input(&theirs, true)
        };
        assert_eq!(plan_paths(&not_listening)[0], steps[0]);
    }

    #[test]
    fn a_listening_receiver_accepts_and_connects() {
        let theirs = peer();
        let listening = PlanInput {
            listening: true,
            ..input(&theirs, false)
        };
        let steps = plan_paths(&listening);
        assert_eq!(steps[0], Step::AcceptTcp);
        let Step::ConnectTcp { targets } = &steps[1] else {
            panic!("{steps:?}")
        };
        assert_eq!(targets.len(), 2);
        // Nothing known about the sender yet: it may still connect to us,
        // so the relay keeps its head start.
        let alone = PlanInput {
            listening: true,
            ..input(&[], false)
        };
        assert_eq!(
            plan_paths(&alone),
            [
                Step::AcceptTcp,
                Step::Relay {
                    head_start: RELAY_HEAD_START
                }
            ]
        );
    }

    #[test]
    fn a_sender_whose_receiver_offers_no_tcp_address_only_accepts() {
        // An older receiver: no listener, so no host or UPnP TCP candidate
        // (its server-observed one is no listener).
        let theirs: Vec<Candidate> = peer()
            .into_iter()
            .filter(|c| c.transport != Transport::Tcp || c.kind == CandidateKind::ServerObserved)
            .collect();
        let kinds: Vec<PathKind> = plan_paths(&input(&theirs, true))
            .iter()
            .map(Step::kind)
            .collect();
        assert_eq!(
            kinds,
            [
                PathKind::Tcp,
                PathKind::SimultaneousOpen,
                PathKind::Quic,
                PathKind::Relay
            ]
        );
        assert_eq!(plan_paths(&input(&theirs, true))[0], Step::AcceptTcp);
    }

    #[test]
    fn forced_and_lan_only_plans_hold_what_they_say() {
        let theirs = peer();
        let forced = |kind| PlanInput {
            options: SessionOptions {
                force_path: Some(kind),
                ..SessionOptions::default()
            },
            ..input(&theirs, false)
        };
        let relay = plan_paths(&forced(PathKind::Relay));
        assert_eq!(
            relay,
            [Step::Relay {
                head_start: Duration::ZERO
            }]
        );
        let lan = plan_paths(&forced(PathKind::Lan));
        let [Step::ConnectTcp { targets }] = &lan[..] else {
            panic!("{lan:?}")
        };
        assert_eq!(targets.len(), 1, "only the private address");
        let quic = plan_paths(&forced(PathKind::Quic));
        assert_eq!(
            quic.iter().map(Step::kind).collect::<Vec<_>>(),
            [PathKind::Quic]
        );
    }

    #[test]
    fn no_simultaneous_open_behind_one_public_address_and_no_head_start_when_hopeless() {
        let theirs = peer();
        let same = PlanInput {
            our_observed: "198.51.100.9:40000".parse().unwrap(),
            ..input(&theirs, false)
        };
        assert!(
            !plan_paths(&same)
                .iter()
                .any(|s| s.kind() == PathKind::SimultaneousOpen)
        );
        let hopeless = PlanInput {
            hopeless: true,
            ..input(&theirs, false)
        };
        assert_eq!(
            plan_paths(&hopeless).last(),
            Some(&Step::Relay {
                head_start: Duration::ZERO
            })
        );
        let no_token = PlanInput {
            relay_token: false,
            ..input(&theirs, false)
        };
        assert!(
            !plan_paths(&no_token)
                .iter()
                .any(|s| s.kind() == PathKind::Relay)
        );
        // Nothing known about the peer: the relay alone, at once.
        let alone = plan_paths(&input(&[], false));
        assert_eq!(
            alone,
            [Step::Relay {
                head_start: Duration::ZERO
            }]
        );
    }

    fn upnp(addr: &str, transport: Transport) -> Candidate {
        cand(addr, transport, CandidateKind::Upnp, 850)
    }

    #[test]
    fn late_upnp_candidates_add_a_connect_and_punch_targets() {
        let theirs = peer();
        let late = vec![
            upnp("198.51.100.9:6100", Transport::Tcp),
            upnp("198.51.100.9:7100", Transport::Udp),
            // Known already: nothing new.
            cand(
                "192.168.1.20:5000",
                Transport::Tcp,
                CandidateKind::Host,
                900,
            ),
            cand(
                "198.51.100.9:7001",
                Transport::Udp,
                CandidateKind::Stun,
                500,
            ),
        ];
        let (new, steps) = late_steps(&input(&theirs, false), late);
        assert_eq!(
            new.iter().map(|c| c.addr.to_string()).collect::<Vec<_>>(),
            ["198.51.100.9:6100", "198.51.100.9:7100"]
        );
        assert_eq!(
            steps,
            [
                Step::ConnectTcp {
                    targets: vec![upnp("198.51.100.9:6100", Transport::Tcp)]
                },
                Step::PunchQuic {
                    targets: vec!["198.51.100.9:7100".parse().unwrap()]
                },
            ]
        );
        // The sender connects to a late mapping of the receiver's too.
        let (_, steps) = late_steps(
            &input(&theirs, true),
            vec![
                upnp("198.51.100.9:6100", Transport::Tcp),
                upnp("198.51.100.9:7100", Transport::Udp),
            ],
        );
        assert_eq!(
            steps,
            [
                Step::ConnectTcp {
                    targets: vec![upnp("198.51.100.9:6100", Transport::Tcp)]
                },
                Step::PunchQuic {
                    targets: vec!["198.51.100.9:7100".parse().unwrap()]
                },
            ]
        );
        // Nothing new: nothing to do.
        assert_eq!(late_steps(&input(&theirs, false), peer()), (vec![], vec![]));
    }

    #[test]
    fn late_candidates_respect_forced_paths_and_never_add_simultaneous_open_or_relay() {
        let theirs = peer();
        let late = || {
            vec![
                upnp("198.51.100.9:6100", Transport::Tcp),
                upnp("198.51.100.9:7100", Transport::Udp),
                cand(
                    "192.168.1.21:5000",
                    Transport::Tcp,
                    CandidateKind::Host,
                    900,
                ),
                // A late server-observed address is ignored: no new
                // simultaneous open.
                cand(
                    "198.51.100.77:41000",
                    Transport::Tcp,
                    CandidateKind::ServerObserved,
                    100,
                ),
                cand("198.51.100.78:443", Transport::Tcp, CandidateKind::Relay, 1),
            ]
        };
        let forced = |kind| PlanInput {
            options: SessionOptions {
                force_path: Some(kind),
                ..SessionOptions::default()
            },
            ..input(&theirs, false)
        };
        let kinds = |steps: &[Step]| steps.iter().map(Step::kind).collect::<Vec<_>>();
        let (new, steps) = late_steps(&input(&theirs, false), late());
        assert_eq!(new.len(), 3);
        assert_eq!(kinds(&steps), [PathKind::Tcp, PathKind::Quic]);
        assert_eq!(late_steps(&forced(PathKind::Relay), late()).1, []);
        let (_, quic) = late_steps(&forced(PathKind::Quic), late());
        assert_eq!(kinds(&quic), [PathKind::Quic]);
        let (_, lan) = late_steps(&forced(PathKind::Lan), late());
        assert_eq!(
            lan,
            [Step::ConnectTcp {
                targets: vec![cand(
                    "192.168.1.21:5000",
                    Transport::Tcp,
                    CandidateKind::Host,
                    900
                )]
            }]
        );
        let (_, tcp) = late_steps(&forced(PathKind::Tcp), late());
        let [Step::ConnectTcp { targets }] = &tcp[..] else {
            panic!("{tcp:?}")
        };
        assert_eq!(targets.len(), 2);
        // Hopeless (the relay started at once): a late UPnP TCP mapping is
        // what the verdict lacked, so it is tried; no relay step either way.
        let hopeless = PlanInput {
            hopeless: true,
            ..input(&theirs, false)
        };
        let (_, steps) = late_steps(&hopeless, late());
        assert_eq!(kinds(&steps), [PathKind::Tcp, PathKind::Quic]);
    }

    #[test]
    fn late_candidates_are_filtered_like_the_hello() {
        use ferry_connect::address::MAX_PEER_CANDIDATES;
        let theirs = peer();
        // Loopback from a peer on another machine, port 0, link-local: refused.
        let refused = vec![
            upnp("127.0.0.1:6100", Transport::Tcp),
            upnp("198.51.100.9:0", Transport::Udp),
            upnp("169.254.1.1:7100", Transport::Udp),
        ];
        assert_eq!(
            late_steps(&input(&theirs, false), refused),
            (vec![], vec![])
        );
        // Both on this machine (both seen by the server on loopback):
        // loopback is fine, as in the hello.
        let local = vec![cand(
            "127.0.0.1:41000",
            Transport::Tcp,
            CandidateKind::ServerObserved,
            100,
        )];
        let on_loopback = PlanInput {
            our_observed: "127.0.0.1:40000".parse().unwrap(),
            ..input(&local, false)
        };
        let (new, steps) = late_steps(&on_loopback, vec![upnp("127.0.0.1:6100", Transport::Tcp)]);
        assert_eq!(new.len(), 1);
        assert_eq!(steps.len(), 1);
        // However many come, the peer's candidates stay within the cap.
        let many: Vec<Candidate> = (0..100)
            .map(|i| upnp(&format!("198.51.100.{}:6100", i + 100), Transport::Tcp))
            .collect();
        let (new, _) = late_steps(&input(&theirs, false), many);
        assert_eq!(new.len(), MAX_PEER_CANDIDATES - theirs.len());
    }

    #[test]
    fn lan_paths_are_told_apart() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(tcp_kind(addr("10.0.1.10:1")), PathKind::Lan);
        assert_eq!(tcp_kind(addr("192.168.2.10:1")), PathKind::Lan);
        assert_eq!(tcp_kind(addr("127.0.0.1:1")), PathKind::Lan);
        assert_eq!(tcp_kind(addr("[fd00::2]:1")), PathKind::Lan);
        assert_eq!(tcp_kind(addr("198.51.100.2:1")), PathKind::Tcp);
    }

    #[test]
    fn direct_is_hopeless_only_when_both_networks_say_so() {
        let hint = |udp, kept| NetworkHint {
            udp,
            tcp_port_kept: Some(kept),
            udp_ports: None,
        };
        let tcp = |addr: &str, kind| Candidate {
            addr: addr.parse().unwrap(),
            transport: Transport::Tcp,
            kind,
            priority: 1,
        };
        let behind_nat = [tcp("10.0.1.10:4000", CandidateKind::Host)];
        let symmetric = hint(UdpMapping::Varies, false);
        assert_eq!(
            direct_hopeless(&symmetric, &symmetric, &behind_nat, &behind_nat)
                .map(|h| h.to_string())
                .as_deref(),
            Some("symmetric NAT on both sides")
        );
        let blocked = hint(UdpMapping::Blocked, true);
        assert_eq!(
            direct_hopeless(&symmetric, &blocked, &behind_nat, &[])
                .map(|h| h.to_string())
                .as_deref(),
            Some("symmetric NAT here, UDP blocked at the peer")
        );
        // A cone NAT on one side: punching may work.
        let cone = hint(UdpMapping::Stable, true);
        assert_eq!(
            direct_hopeless(&symmetric, &cone, &behind_nat, &behind_nat),
            None
        );
        // Nothing known about the peer (an older version): try everything.
        assert_eq!(
            direct_hopeless(
                &symmetric,
                &NetworkHint::default(),
                &behind_nat,
                &behind_nat
            ),
            None
        );
        // UDP blocked on both sides, but port-preserving NATs: simultaneous open.
        assert_eq!(
            direct_hopeless(&blocked, &blocked, &behind_nat, &behind_nat),
            None
        );
        // A public TCP address or a UPnP mapping: direct TCP.
        let public = [tcp("198.51.100.66:4000", CandidateKind::Host)];
        assert_eq!(
            direct_hopeless(&symmetric, &symmetric, &public, &behind_nat),
            None
        );
        let mapped = [tcp("198.51.100.2:4000", CandidateKind::Upnp)];
        assert_eq!(
            direct_hopeless(&symmetric, &symmetric, &behind_nat, &mapped),
            None
        );
        // The server-observed address is no listener.
        let observed = [tcp("198.51.100.2:4000", CandidateKind::ServerObserved)];
        assert!(direct_hopeless(&symmetric, &symmetric, &observed, &observed).is_some());
    }

    #[test]
    fn one_varying_nat_sprays_in_mirrored_parts_instead_of_punching() {
        let hint = |udp, ports| NetworkHint {
            udp,
            tcp_port_kept: Some(false),
            udp_ports: ports,
        };
        let easy = hint(UdpMapping::Stable, None);
        let random = hint(UdpMapping::Varies, Some([40001, 51234]));
        let stepping = hint(UdpMapping::Varies, Some([40001, 40003]));
        let easy_candidates = [cand(
            "198.51.100.2:7000",
            Transport::Udp,
            CandidateKind::Stun,
            900,
        )];
        let hard_candidates = [cand(
            "203.0.113.9:40001",
            Transport::Udp,
            CandidateKind::Stun,
            900,
        )];
        // The hard side sprays towards the easy side's mapping.
        assert_eq!(
            spray_role(&random, &easy, &easy_candidates),
            Some(Spray::Hard {
                easy: "198.51.100.2:7000".parse().unwrap()
            })
        );
        // The easy side probes the hard side's address, predicted ports
        // first when its NAT steps.
        assert_eq!(
            spray_role(&easy, &random, &hard_candidates),
            Some(Spray::Easy {
                hard_ip: "203.0.113.9".parse().unwrap(),
                predicted: Vec::new()
            })
        );
        match spray_role(&easy, &stepping, &hard_candidates) {
            Some(Spray::Easy { predicted, .. }) => {
                assert_eq!(predicted[..3], [40005, 40007, 40009])
            }
            other => panic!("expected the easy part, got {other:?}"),
        }
        // Both easy, both hard, unknown, or no mapping of the peer: no spraying.
        assert_eq!(spray_role(&easy, &easy, &easy_candidates), None);
        assert_eq!(spray_role(&random, &random, &hard_candidates), None);
        assert_eq!(
            spray_role(&easy, &NetworkHint::default(), &hard_candidates),
            None
        );
        assert_eq!(spray_role(&easy, &random, &[]), None);

        // In the plan the spray takes the punch's place; TCP and the relay stay.
        let spray = Spray::Easy {
            hard_ip: "203.0.113.9".parse().unwrap(),
            predicted: Vec::new(),
        };
        let theirs = peer();
        let steps = plan_paths(&PlanInput {
            spray: Some(&spray),
            ..input(&theirs, true)
        });
        assert!(
            steps.contains(&Step::SprayQuic {
                spray: spray.clone()
            }),
            "{steps:?}"
        );
        assert!(
            !steps.iter().any(|s| matches!(s, Step::PunchQuic { .. })),
            "{steps:?}"
        );
        assert!(steps.contains(&Step::AcceptTcp));
        assert_eq!(
            steps.last(),
            Some(&Step::Relay {
                head_start: SPRAY_RELAY_HEAD_START
            })
        );
        // Between peers that can move a running transfer, the relay starts
        // at once and the transfer moves to the sprayed path later.
        let moving = plan_paths(&PlanInput {
            spray: Some(&spray),
            can_move: true,
            ..input(&theirs, true)
        });
        assert_eq!(
            moving.last(),
            Some(&Step::Relay {
                head_start: Duration::ZERO
            })
        );
        // Not when QUIC is not allowed.
        let tcp_only = plan_paths(&PlanInput {
            spray: Some(&spray),
            options: SessionOptions {
                force_path: Some(PathKind::Tcp),
                ..SessionOptions::default()
            },
            ..input(&theirs, true)
        });
        assert!(
            !tcp_only.iter().any(|s| s.kind() == PathKind::Quic),
            "{tcp_only:?}"
        );
    }

    #[test]
    fn an_ipv6_only_peer_and_an_ipv4_only_peer_share_no_family() {
        let c = |a: &str| cand(a, Transport::Tcp, CandidateKind::Host, 1);
        let v6_only = [
            c("[2001:db8:a1::10]:4000"),
            c("[::1]:4000"),
            c("127.0.0.1:4000"),
        ];
        let v4_only = [c("192.168.2.10:4000"), c("198.51.100.18:4001")];
        let dual = [c("10.0.1.10:4000"), c("[2001:db8:a1::10]:4000")];
        assert!(!share_a_family(&v6_only, &v4_only));
        assert!(!share_a_family(&v4_only, &v6_only));
        assert!(share_a_family(&dual, &v4_only));
        assert!(share_a_family(&dual, &v6_only));
        // IPv4-mapped is IPv4; a side with nothing countable may still
        // share one.
        assert!(share_a_family(&[c("[::ffff:198.51.100.2]:4000")], &v4_only));
        assert!(share_a_family(&[c("127.0.0.1:4000")], &v6_only));
        assert!(share_a_family(&[], &v4_only));
    }
}
