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
//! `direct-tcp`, `relay`, `unreachable`, `unknown`); wording it for people
//! is the caller's job.

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
            Verdict::FewTcpPortsOnly | Verdict::UdpBlockedTcpRewritten | Verdict::Symmetric => {
                Reach::Relay
            }
            Verdict::UdpBlockedTcpPreserved => Reach::DirectTcp,
            Verdict::Open => Reach::Open,
            Verdict::NoNatFiltered | Verdict::EndpointIndependent | Verdict::SymmetricWithUpnp => {
                Reach::Direct
            }
            Verdict::UnknownPortPreserved | Verdict::Unknown => Reach::Unknown,
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
                Reach::Relay,
            ),
            (
                Mapping::AddressAndPortDependent,
                apdf(),
                Verdict::Symmetric,
                Reach::Relay,
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
