//! The verdict about a network: what will work from here (direct
//! connections, hole punching, only TCP, only the relay), decided from what
//! the probes observed. Pure and sans-IO: the caller runs the probes
//! (rendezvous connection, [`behaviour`](crate::behaviour) discovery, STUN
//! over TCP, the [`upnp`](crate::upnp) probe) and passes the results in.
//!
//! ```text
//! nothing answered (rendezvous, UDP STUN, TCP STUN)   -> Unreachable
//! no UDP mapping (blocked, or discovery failed):
//!   rendezvous ok, no TCP STUN                        -> FewTcpPortsOnly
//!   TCP keeps ports (STUN over TCP, else rendezvous)  -> UdpBlockedTcpPreserved
//!   otherwise                                         -> UdpBlockedTcpRewritten
//! UDP mapping:
//!   no NAT, endpoint-independent filtering            -> Open
//!   no NAT, filtered                                  -> NoNatFiltered
//!   endpoint-independent mapping                      -> EndpointIndependent
//!   address(-and-port)-dependent, UPnP test mapped    -> SymmetricWithUpnp
//!   address(-and-port)-dependent                      -> Symmetric
//!   mapping unknown, port preserved                   -> UnknownPortPreserved
//!   mapping unknown                                   -> Unknown
//! ```
//!
//! Each [`Verdict`] has a one-word [`Reach`] (`open`, `direct`,
//! `direct-tcp`, `relay`, `unreachable`, `unknown`), for most peers;
//! wording that overall verdict for people is the caller's job.
//!
//! What works depends on the peer too, so [`Verdict::with_peer`] says it
//! for each [`PeerKind`] (no NAT, a cone NAT, a symmetric NAT, UDP
//! blocked) as a [`Reach`] and one sentence. It counts what ferry does:
//! hole punching, port spraying (an endpoint-independent side and a
//! symmetric side meet by trying many ports), port mapping (UPnP,
//! NAT-PMP, PCP) on either side, direct TCP and TCP simultaneous open,
//! and the relay when none of them can work. A symmetric NAT is `direct`
//! overall: most peers are on cone NATs or none.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::behaviour::{Filtering, Mapping, NatReport};

/// What the probes observed; the input of [`Verdict::decide`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations {
    /// The rendezvous server answered over TCP.
    pub rendezvous_reachable: bool,
    /// Whether the rendezvous TCP connection kept its local port as the
    /// public one (`None`: not known, e.g. not reachable).
    pub rendezvous_port_preserved: Option<bool>,
    /// The UDP behaviour discovery report; `None` when discovery could not
    /// run or failed.
    pub udp: Option<NatReport>,
    /// STUN over TCP got a mapped address.
    pub tcp_mapped: bool,
    /// Whether STUN over TCP saw our local port kept (`None`: not known).
    pub tcp_port_preserved: Option<bool>,
    /// The UPnP probe's test mapping worked
    /// ([`TestMapping::Mapped`](crate::upnp::TestMapping::Mapped)).
    pub upnp_mapped: bool,
}

/// What works from this network, and why. See the module documentation
/// for how it is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Nothing answered: neither the rendezvous server nor STUN over UDP
    /// or TCP.
    Unreachable,
    /// The rendezvous server answers over TCP but neither UDP nor STUN
    /// over TCP gets out: only a few TCP ports are open, so only the relay.
    FewTcpPortsOnly,
    /// UDP is blocked but TCP keeps ports: direct over TCP with open or
    /// port-preserving peers, otherwise the relay.
    UdpBlockedTcpPreserved,
    /// UDP is blocked and TCP ports are rewritten: the relay.
    UdpBlockedTcpRewritten,
    /// No NAT and no inbound filtering.
    Open,
    /// No NAT, but a firewall filters inbound traffic.
    NoNatFiltered,
    /// An endpoint-independent ("cone") mapping: hole punching works.
    EndpointIndependent,
    /// A symmetric NAT whose UPnP gateway maps ports.
    SymmetricWithUpnp,
    /// A symmetric NAT (address- or address-and-port-dependent mapping).
    Symmetric,
    /// The mapping behaviour is unknown, but the NAT keeps ports.
    UnknownPortPreserved,
    /// The mapping behaviour is unknown.
    Unknown,
}

/// The one-word outcome of a [`Verdict`]; serializes (and displays) as
/// `open`, `direct`, `direct-tcp`, `relay`, `unreachable` or `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reach {
    /// Peers can connect to us directly.
    Open,
    /// Direct connections work with most peers.
    Direct,
    /// Direct connections only over TCP.
    DirectTcp,
    /// Only the relay works with most peers.
    Relay,
    /// The server cannot be reached.
    Unreachable,
    /// Could not tell.
    Unknown,
}

impl Verdict {
    /// Decides the verdict from what the probes observed.
    pub fn decide(o: &Observations) -> Verdict {
        let udp_answered = o.udp.as_ref().is_some_and(|r| r.mapped.is_some());
        if !o.rendezvous_reachable && !udp_answered && !o.tcp_mapped {
            return Verdict::Unreachable;
        }
        let Some(udp) = o
            .udp
            .as_ref()
            .filter(|r| !r.udp_blocked && r.mapped.is_some())
        else {
            if o.rendezvous_reachable && !o.tcp_mapped {
                return Verdict::FewTcpPortsOnly;
            }
            let tcp_preserved = o.tcp_port_preserved.or(o.rendezvous_port_preserved) == Some(true);
            return if tcp_preserved {
                Verdict::UdpBlockedTcpPreserved
            } else {
                Verdict::UdpBlockedTcpRewritten
            };
        };
        match (&udp.mapping, &udp.filtering) {
            (Mapping::NoNat, Filtering::EndpointIndependent) => Verdict::Open,
            (Mapping::NoNat, _) => Verdict::NoNatFiltered,
            (Mapping::EndpointIndependent, _) => Verdict::EndpointIndependent,
            (Mapping::AddressDependent | Mapping::AddressAndPortDependent, _) if o.upnp_mapped => {
                Verdict::SymmetricWithUpnp
            }
            (Mapping::AddressDependent | Mapping::AddressAndPortDependent, _) => Verdict::Symmetric,
            (Mapping::Unknown { .. }, _) if udp.port_preserved == Some(true) => {
                Verdict::UnknownPortPreserved
            }
            (Mapping::Unknown { .. }, _) => Verdict::Unknown,
        }
    }

    /// The one-word outcome.
    pub fn reach(self) -> Reach {
        match self {
            Verdict::Unreachable => Reach::Unreachable,
            Verdict::FewTcpPortsOnly | Verdict::UdpBlockedTcpRewritten => Reach::Relay,
            Verdict::UdpBlockedTcpPreserved => Reach::DirectTcp,
            Verdict::Open => Reach::Open,
            // Symmetric: direct with peers without NAT or on cone NATs (port
            // spraying), which are most; the relay only with symmetric and
            // UDP-blocked peers (see `with_peer`).
            Verdict::NoNatFiltered
            | Verdict::EndpointIndependent
            | Verdict::SymmetricWithUpnp
            | Verdict::Symmetric => Reach::Direct,
            Verdict::UnknownPortPreserved | Verdict::Unknown => Reach::Unknown,
        }
    }
}

/// The kinds of peer [`Verdict::with_peer`] speaks of. Serializes as
/// `no_nat`, `cone`, `symmetric`, `udp_blocked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerKind {
    /// A peer with a public address (perhaps behind a firewall).
    NoNat,
    /// A peer behind an endpoint-independent ("cone", including
    /// port-restricted cone) NAT: one public port per socket.
    Cone,
    /// A peer behind a symmetric NAT: a new public port per destination.
    Symmetric,
    /// A peer whose network blocks UDP.
    UdpBlocked,
}

impl PeerKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [PeerKind; 4] = [
        PeerKind::NoNat,
        PeerKind::Cone,
        PeerKind::Symmetric,
        PeerKind::UdpBlocked,
    ];

    /// The serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::NoNat => "no_nat",
            PeerKind::Cone => "cone",
            PeerKind::Symmetric => "symmetric",
            PeerKind::UdpBlocked => "udp_blocked",
        }
    }

    /// A label for people: "no NAT", "cone NAT", ...
    pub fn label(self) -> &'static str {
        match self {
            PeerKind::NoNat => "no NAT",
            PeerKind::Cone => "cone NAT",
            PeerKind::Symmetric => "symmetric NAT",
            PeerKind::UdpBlocked => "UDP blocked",
        }
    }
}

/// What works with one kind of peer: the code and one sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PeerOutcome {
    /// `code`: direct, direct-tcp, relay, ...
    #[serde(rename = "code")]
    pub reach: Reach,
    /// `text`: what will work and how, or why only the relay.
    pub text: &'static str,
}

const fn outcome(reach: Reach, text: &'static str) -> PeerOutcome {
    PeerOutcome { reach, text }
}

const TCP_SIMOPEN: PeerOutcome = outcome(
    Reach::DirectTcp,
    "over TCP (simultaneous open) if the peer's NAT keeps TCP ports too; otherwise the relay",
);
const YOU_CONNECT: PeerOutcome = outcome(
    Reach::Direct,
    "direct: you reach the peer's fixed public address",
);
const YOU_CONNECT_TCP: PeerOutcome = outcome(
    Reach::DirectTcp,
    "direct over TCP: you connect to the peer's fixed public address (no UDP here)",
);

impl Verdict {
    /// What works between a network with this verdict and a peer of kind
    /// `peer`. `tcp_port_kept`: whether this network's NAT keeps TCP ports
    /// (STUN over TCP, else the rendezvous connection), which decides TCP
    /// simultaneous open with a UDP-blocked peer.
    pub fn with_peer(self, peer: PeerKind, tcp_port_kept: bool) -> PeerOutcome {
        use PeerKind::{Cone, NoNat, Symmetric, UdpBlocked};
        let tcp_or_relay = |relay: &'static str| {
            if tcp_port_kept {
                TCP_SIMOPEN
            } else {
                outcome(Reach::Relay, relay)
            }
        };
        match (self, peer) {
            (Verdict::Unreachable, _) => outcome(
                Reach::Unreachable,
                "nothing: the server cannot be reached from here",
            ),
            (Verdict::FewTcpPortsOnly, _) => outcome(
                Reach::Relay,
                "only the relay: just a few TCP ports get out of this network",
            ),
            (Verdict::UdpBlockedTcpPreserved | Verdict::UdpBlockedTcpRewritten, NoNat) => {
                YOU_CONNECT_TCP
            }
            (Verdict::UdpBlockedTcpPreserved, Cone | UdpBlocked) => TCP_SIMOPEN,
            (Verdict::UdpBlockedTcpPreserved, Symmetric) => outcome(
                Reach::Relay,
                "the relay: no UDP here, and the peer's NAT changes ports",
            ),
            (Verdict::UdpBlockedTcpRewritten, _) => outcome(
                Reach::Relay,
                "the relay: no UDP here, and your NAT rewrites TCP ports",
            ),
            (Verdict::Open, NoNat | Cone | Symmetric) => outcome(
                Reach::Direct,
                "direct: the peer reaches your public address, whatever its NAT does",
            ),
            (Verdict::Open, UdpBlocked) => outcome(
                Reach::DirectTcp,
                "direct over TCP: the peer connects to your public address",
            ),
            (Verdict::NoNatFiltered, NoNat | Cone) => outcome(
                Reach::Direct,
                "direct by hole punching through your firewall",
            ),
            (Verdict::NoNatFiltered, Symmetric) => outcome(
                Reach::Direct,
                "direct by port spraying: your address stays fixed, many ports are tried towards the peer's changing one",
            ),
            (Verdict::NoNatFiltered, UdpBlocked) => TCP_SIMOPEN,
            (Verdict::EndpointIndependent, NoNat) => YOU_CONNECT,
            (Verdict::EndpointIndependent, Cone) => {
                outcome(Reach::Direct, "direct by UDP hole punching")
            }
            (Verdict::EndpointIndependent, Symmetric) => outcome(
                Reach::Direct,
                "direct by port spraying: your NAT keeps one port, many are tried towards the peer's changing one",
            ),
            (Verdict::EndpointIndependent | Verdict::Symmetric, UdpBlocked) => {
                tcp_or_relay("the relay: UDP is blocked there and your NAT rewrites TCP ports")
            }
            (Verdict::SymmetricWithUpnp, NoNat | Cone | Symmetric) => outcome(
                Reach::Direct,
                "direct through the port your gateway maps (UPnP, NAT-PMP or PCP)",
            ),
            (Verdict::SymmetricWithUpnp, UdpBlocked) => outcome(
                Reach::DirectTcp,
                "over TCP to the port your gateway maps; otherwise the relay",
            ),
            (Verdict::Symmetric, NoNat) => YOU_CONNECT,
            (Verdict::Symmetric, Cone) => outcome(
                Reach::Direct,
                "direct by port spraying: the peer's NAT keeps one port, many of yours are tried towards it",
            ),
            (Verdict::Symmetric, Symmetric) => outcome(
                Reach::Relay,
                "the relay: both NATs change ports, unless a gateway on either side maps ports (UPnP, NAT-PMP, PCP)",
            ),
            (Verdict::UnknownPortPreserved | Verdict::Unknown, NoNat) => YOU_CONNECT,
            (Verdict::UnknownPortPreserved, Cone) => outcome(
                Reach::Unknown,
                "likely direct by hole punching (your NAT keeps ports); not tested: the server needs two IPs",
            ),
            (Verdict::Unknown, Cone) => outcome(
                Reach::Unknown,
                "direct by hole punching or port spraying if your NAT allows; not tested: the server needs two IPs",
            ),
            (Verdict::UnknownPortPreserved | Verdict::Unknown, Symmetric) => outcome(
                Reach::Unknown,
                "direct by port spraying if your NAT keeps one port per socket, else the relay; not tested: the server needs two IPs",
            ),
            (Verdict::UnknownPortPreserved | Verdict::Unknown, UdpBlocked) => {
                tcp_or_relay("the relay: UDP is blocked there and your NAT rewrites TCP ports")
            }
        }
    }
}

impl Reach {
    /// The code: `open`, `direct`, `direct-tcp`, `relay`, `unreachable` or
    /// `unknown` (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Open => "open",
            Reach::Direct => "direct",
            Reach::DirectTcp => "direct-tcp",
            Reach::Relay => "relay",
            Reach::Unreachable => "unreachable",
            Reach::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn nat(mapping: Mapping, filtering: Filtering, port_preserved: Option<bool>) -> NatReport {
        let local: SocketAddr = "192.168.1.20:4000".parse().unwrap();
        NatReport {
            local,
            mapped: Some("203.0.113.7:4000".parse().unwrap()),
            udp_blocked: false,
            mapping,
            filtering,
            port_preserved,
        }
    }

    fn unknown(why: &str) -> Mapping {
        Mapping::Unknown { why: why.into() }
    }

    /// Everything reachable, UDP discovery returned `udp`.
    fn with_udp(udp: NatReport) -> Observations {
        Observations {
            rendezvous_reachable: true,
            rendezvous_port_preserved: Some(false),
            udp: Some(udp),
            tcp_mapped: true,
            tcp_port_preserved: Some(false),
            upnp_mapped: false,
        }
    }

    fn blocked_udp() -> NatReport {
        NatReport {
            mapped: None,
            udp_blocked: true,
            port_preserved: None,
            ..nat(
                unknown("no answer"),
                Filtering::Unknown {
                    why: "no answer".into(),
                },
                None,
            )
        }
    }

    #[test]
    fn nothing_answering_is_unreachable() {
        assert_eq!(
            Verdict::decide(&Observations::default()),
            Verdict::Unreachable
        );
        let o = Observations {
            udp: Some(blocked_udp()),
            upnp_mapped: true,
            ..Observations::default()
        };
        assert_eq!(Verdict::decide(&o), Verdict::Unreachable);
        assert_eq!(Verdict::Unreachable.reach(), Reach::Unreachable);
    }

    #[test]
    fn any_answer_is_not_unreachable() {
        let tcp_only = Observations {
            tcp_mapped: true,
            ..Observations::default()
        };
        assert_eq!(Verdict::decide(&tcp_only), Verdict::UdpBlockedTcpRewritten);
        let udp_only = Observations {
            udp: Some(nat(Mapping::NoNat, Filtering::EndpointIndependent, None)),
            ..Observations::default()
        };
        assert_eq!(Verdict::decide(&udp_only), Verdict::Open);
    }

    #[test]
    fn only_the_signalling_port_out_is_relay() {
        for udp in [None, Some(blocked_udp())] {
            let o = Observations {
                rendezvous_reachable: true,
                rendezvous_port_preserved: Some(true),
                udp,
                ..Observations::default()
            };
            assert_eq!(Verdict::decide(&o), Verdict::FewTcpPortsOnly);
        }
        assert_eq!(Verdict::FewTcpPortsOnly.reach(), Reach::Relay);
    }

    #[test]
    fn udp_blocked_depends_on_tcp_port_preservation() {
        let base = Observations {
            udp: Some(blocked_udp()),
            ..with_udp(blocked_udp())
        };
        assert_eq!(Verdict::decide(&base), Verdict::UdpBlockedTcpRewritten);
        let tcp_kept = Observations {
            tcp_port_preserved: Some(true),
            ..base.clone()
        };
        assert_eq!(Verdict::decide(&tcp_kept), Verdict::UdpBlockedTcpPreserved);
        // STUN over TCP wins over the rendezvous connection when it knows.
        let rendezvous_kept_tcp_not = Observations {
            rendezvous_port_preserved: Some(true),
            ..base.clone()
        };
        assert_eq!(
            Verdict::decide(&rendezvous_kept_tcp_not),
            Verdict::UdpBlockedTcpRewritten
        );
        // Without a STUN-over-TCP answer on preservation, the rendezvous
        // connection decides.
        let rendezvous_only = Observations {
            rendezvous_port_preserved: Some(true),
            tcp_port_preserved: None,
            ..base.clone()
        };
        assert_eq!(
            Verdict::decide(&rendezvous_only),
            Verdict::UdpBlockedTcpPreserved
        );
        // UDP discovery that failed counts as no UDP mapping.
        let failed = Observations {
            udp: None,
            ..tcp_kept
        };
        assert_eq!(Verdict::decide(&failed), Verdict::UdpBlockedTcpPreserved);
        assert_eq!(Verdict::UdpBlockedTcpPreserved.reach(), Reach::DirectTcp);
        assert_eq!(Verdict::UdpBlockedTcpRewritten.reach(), Reach::Relay);
    }

    #[test]
    fn udp_behaviour_decides_when_udp_works() {
        let eif = || Filtering::EndpointIndependent;
        let apdf = || Filtering::AddressAndPortDependent;
        let cases = [
            (Mapping::NoNat, eif(), Verdict::Open, Reach::Open),
            (
                Mapping::NoNat,
                Filtering::AddressDependent,
                Verdict::NoNatFiltered,
                Reach::Direct,
            ),
            (
                Mapping::EndpointIndependent,
                apdf(),
                Verdict::EndpointIndependent,
                Reach::Direct,
            ),
            (
                Mapping::EndpointIndependent,
                Filtering::Unknown { why: "x".into() },
                Verdict::EndpointIndependent,
                Reach::Direct,
            ),
            (
                Mapping::AddressDependent,
                eif(),
                Verdict::Symmetric,
                Reach::Direct,
            ),
            (
                Mapping::AddressAndPortDependent,
                apdf(),
                Verdict::Symmetric,
                Reach::Direct,
            ),
            (
                unknown("single IP"),
                eif(),
                Verdict::Unknown,
                Reach::Unknown,
            ),
        ];
        for (mapping, filtering, verdict, reach) in cases {
            let o = with_udp(nat(mapping.clone(), filtering.clone(), Some(false)));
            assert_eq!(Verdict::decide(&o), verdict, "{mapping:?} {filtering:?}");
            assert_eq!(verdict.reach(), reach);
        }
    }

    #[test]
    fn upnp_rescues_only_symmetric_nats() {
        for mapping in [Mapping::AddressDependent, Mapping::AddressAndPortDependent] {
            let o = Observations {
                upnp_mapped: true,
                ..with_udp(nat(mapping, Filtering::AddressAndPortDependent, None))
            };
            assert_eq!(Verdict::decide(&o), Verdict::SymmetricWithUpnp);
        }
        assert_eq!(Verdict::SymmetricWithUpnp.reach(), Reach::Direct);
        let o = Observations {
            upnp_mapped: true,
            ..with_udp(nat(
                unknown("single IP"),
                Filtering::EndpointIndependent,
                None,
            ))
        };
        assert_eq!(Verdict::decide(&o), Verdict::Unknown);
    }

    #[test]
    fn unknown_mapping_with_kept_port_is_hopeful() {
        let o = with_udp(nat(
            unknown("single IP"),
            Filtering::Unknown { why: "x".into() },
            Some(true),
        ));
        assert_eq!(Verdict::decide(&o), Verdict::UnknownPortPreserved);
        assert_eq!(Verdict::UnknownPortPreserved.reach(), Reach::Unknown);
        let o = with_udp(nat(
            unknown("single IP"),
            Filtering::EndpointIndependent,
            None,
        ));
        assert_eq!(Verdict::decide(&o), Verdict::Unknown);
    }

    #[test]
    fn a_report_with_an_address_but_marked_blocked_counts_as_blocked() {
        let odd = NatReport {
            udp_blocked: true,
            ..nat(Mapping::NoNat, Filtering::EndpointIndependent, Some(true))
        };
        let o = with_udp(odd);
        assert_eq!(Verdict::decide(&o), Verdict::UdpBlockedTcpRewritten);
    }

    const ALL: [Verdict; 11] = [
        Verdict::Unreachable,
        Verdict::FewTcpPortsOnly,
        Verdict::UdpBlockedTcpPreserved,
        Verdict::UdpBlockedTcpRewritten,
        Verdict::Open,
        Verdict::NoNatFiltered,
        Verdict::EndpointIndependent,
        Verdict::SymmetricWithUpnp,
        Verdict::Symmetric,
        Verdict::UnknownPortPreserved,
        Verdict::Unknown,
    ];

    /// The codes per peer kind (no NAT, cone, symmetric, UDP blocked),
    /// with this network's TCP ports kept and not.
    #[test]
    fn every_verdict_has_a_code_and_a_sentence_per_peer_kind() {
        use Reach::{Direct as D, DirectTcp as T, Relay as R, Unknown as U, Unreachable as X};
        let table: [(Verdict, [Reach; 4], [Reach; 4]); 11] = [
            (Verdict::Unreachable, [X, X, X, X], [X, X, X, X]),
            (Verdict::FewTcpPortsOnly, [R, R, R, R], [R, R, R, R]),
            (Verdict::UdpBlockedTcpPreserved, [T, T, R, T], [T, T, R, T]),
            (Verdict::UdpBlockedTcpRewritten, [T, R, R, R], [T, R, R, R]),
            (Verdict::Open, [D, D, D, T], [D, D, D, T]),
            (Verdict::NoNatFiltered, [D, D, D, T], [D, D, D, T]),
            (Verdict::EndpointIndependent, [D, D, D, T], [D, D, D, R]),
            (Verdict::SymmetricWithUpnp, [D, D, D, T], [D, D, D, T]),
            (Verdict::Symmetric, [D, D, R, T], [D, D, R, R]),
            (Verdict::UnknownPortPreserved, [D, U, U, T], [D, U, U, R]),
            (Verdict::Unknown, [D, U, U, T], [D, U, U, R]),
        ];
        for (verdict, kept, rewritten) in table {
            for (i, peer) in PeerKind::ALL.into_iter().enumerate() {
                for (tcp_kept, want) in [(true, kept[i]), (false, rewritten[i])] {
                    let got = verdict.with_peer(peer, tcp_kept);
                    assert_eq!(
                        got.reach, want,
                        "{verdict:?} with {peer:?}, TCP kept {tcp_kept}"
                    );
                    assert!(got.text.len() > 10, "{verdict:?} {peer:?}: {:?}", got.text);
                    // One sentence: no full stop inside, no newline.
                    assert!(!got.text.contains(". ") && !got.text.contains('\n'));
                    // The relay is named whenever it is the answer.
                    if want == Reach::Relay {
                        assert!(
                            got.text.contains("relay"),
                            "{verdict:?} {peer:?}: {}",
                            got.text
                        );
                    }
                }
            }
        }
        assert_eq!(ALL.len(), table.len());
    }

    #[test]
    fn a_symmetric_nat_goes_direct_with_a_cone_peer_by_port_spraying() {
        let with_cone = Verdict::Symmetric.with_peer(PeerKind::Cone, false);
        assert_eq!(with_cone.reach, Reach::Direct);
        assert!(
            with_cone.text.contains("port spraying"),
            "{}",
            with_cone.text
        );
        let with_symmetric = Verdict::Symmetric.with_peer(PeerKind::Symmetric, false);
        assert_eq!(with_symmetric.reach, Reach::Relay);
        assert!(
            with_symmetric.text.contains("maps ports"),
            "{}",
            with_symmetric.text
        );
        // The other way round: a cone NAT with a symmetric peer.
        let cone = Verdict::EndpointIndependent.with_peer(PeerKind::Symmetric, false);
        assert_eq!(cone.reach, Reach::Direct);
        assert!(cone.text.contains("port spraying"), "{}", cone.text);
        // Overall a symmetric NAT is direct with most peers.
        assert_eq!(Verdict::Symmetric.reach(), Reach::Direct);
    }

    #[test]
    fn the_sentences_differ_where_the_outcome_does() {
        let cone = Verdict::EndpointIndependent;
        let texts: std::collections::HashSet<_> = PeerKind::ALL
            .into_iter()
            .map(|p| cone.with_peer(p, true).text)
            .collect();
        assert_eq!(texts.len(), 4, "{texts:?}");
    }

    #[test]
    fn peer_outcomes_and_kinds_serialize_as_documented() {
        let o = Verdict::Symmetric.with_peer(PeerKind::Symmetric, false);
        let json = serde_json::to_value(o).unwrap();
        assert_eq!(json["code"], "relay");
        assert_eq!(json["text"], o.text);
        for kind in PeerKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
            assert!(!kind.label().is_empty());
        }
    }

    #[test]
    fn reach_codes_serialize_as_documented() {
        for (reach, code) in [
            (Reach::Open, "open"),
            (Reach::Direct, "direct"),
            (Reach::DirectTcp, "direct-tcp"),
            (Reach::Relay, "relay"),
            (Reach::Unreachable, "unreachable"),
            (Reach::Unknown, "unknown"),
        ] {
            assert_eq!(reach.as_str(), code);
            assert_eq!(reach.to_string(), code);
            assert_eq!(
                serde_json::to_value(reach).unwrap(),
                serde_json::json!(code)
            );
            let back: Reach = serde_json::from_value(serde_json::json!(code)).unwrap();
            assert_eq!(back, reach);
        }
    }
}
