//! The path plan, sans-IO: from both sides' candidates and network
//! reports, which paths to try, to which targets, with which head start
//! ([`plan_paths`]), and whether a direct path can work at all
//! ([`direct_hopeless`]). A pure function: the driver (`attempt`) turns
//! each [`Step`] into a socket operation.
//!
//! ```text
//! controlling (sender)                 controlled (receiver)
//!   AcceptTcp (if it listens)            ConnectTcp { host + UPnP TCP targets }
//!   SimultaneousOpen { peer's server-observed TCP mapping }   (both; not
//!       when both share one public address, nor with --force-path lan)
//!   PunchQuic { peer's UDP targets, best first, no duplicates }  (both)
//!   Relay { head start 1.5 s; 0 when it is the only path or direct is hopeless }
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
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
    /// We listen for direct TCP (the sender, when it could bind).
    pub listening: bool,
    /// The server gave us a relay token.
    pub relay_token: bool,
    /// Both networks rule out a direct path ([`direct_hopeless`]).
    pub hopeless: bool,
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
            Step::PunchQuic { .. } => PathKind::Quic,
            Step::Relay { .. } => PathKind::Relay,
        }
    }
}

/// The paths to try, in this order, from `input`.
pub fn plan_paths(input: &PlanInput<'_>) -> Vec<Step> {
    let options = input.options;
    let lan_only = options.force_path == Some(PathKind::Lan);
    let mut steps = Vec::new();
    // Direct TCP: the sender listens, the receiver connects to all of the
    // sender's host and UPnP addresses.
    if options.allows(PathKind::Tcp) {
        if input.controlling {
            if input.listening {
                steps.push(Step::AcceptTcp);
            }
        } else {
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
    if options.allows(PathKind::Quic) && !lan_only && !targets.is_empty() {
        steps.push(Step::PunchQuic { targets });
    }
    // The relay, after a head start for the direct paths (none when it is
    // the only path, or when both networks rule out a direct one).
    if input.relay_token && options.allows(PathKind::Relay) {
        let head_start = if steps.is_empty() || input.hopeless {
            Duration::ZERO
        } else {
            RELAY_HEAD_START
        };
        steps.push(Step::Relay { head_start });
    }
    steps
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

    fn input(theirs: &[Candidate], controlling: bool) -> PlanInput<'_> {
        PlanInput {
            controlling,
            options: SessionOptions::default(),
            theirs,
            our_observed: "203.0.113.5:40000".parse().unwrap(),
            listening: true,
            relay_token: true,
            hopeless: false,
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
        let not_listening = PlanInput {
            listening: false,
            ..input(&theirs, true)
        };
        assert_eq!(
            plan_paths(&not_listening)[0].kind(),
            PathKind::SimultaneousOpen
        );
    }

    #[test]
    fn forced_and_lan_only_plans_hold_what_they_say() {
        let theirs = peer();
        let forced = |kind| PlanInput {
            options: SessionOptions {
                force_path: Some(kind),
                no_upnp: false,
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
}
