//! Per address family (IPv4, IPv6): does UDP to the server work from
//! here, and if not, why not. Pure: the caller gathers the facts (the
//! server name's addresses, this host's interfaces, a route lookup that
//! sends nothing, the STUN answer) and [`FamilyStatus::decide`] orders
//! them.
//!
//! ```text
//! the server's name has no address of the family
//!     this host has no global address of it either   -> NoGlobalAddress
//!     otherwise                                       -> NoServerAddress
//! no route to the server's address                    -> NoRoute
//! STUN could not run (socket error, ...)              -> Failed
//! STUN got no answer                                  -> NoAnswer
//! STUN answered                                       -> Reachable
//! ```
//!
//! Nothing is ever sent to another address than the server's: a family
//! the server has no address of is not tried at all.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::addr::{AddrClass, Interface};
use crate::behaviour::NatReport;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// What the caller found out for one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The family.
    pub family: Family,
    /// The server's name has an address of this family (or the user gave
    /// one).
    pub server_address: bool,
    /// This host has an address of this family that can reach the
    /// internet ([`has_global_address`]).
    pub global_address: bool,
    /// The kernel has a route to the server's address (`None`: not
    /// looked up, e.g. no server address).
    pub route: Option<bool>,
    /// The UDP discovery report, when discovery ran.
    pub udp: Option<&'a NatReport>,
}

/// Whether a family works from here, and if not, why. Serializes as
/// `reachable`, `no_global_address`, `no_server_address`, `no_route`,
/// `failed`, `no_answer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FamilyStatus {
    /// The server's STUN responder answered over this family.
    Reachable,
    /// Not tried: this host has no global address of the family, and the
    /// server's name none either.
    NoGlobalAddress,
    /// Not tried: the server's name has no address of the family, though
    /// this host has a global one.
    NoServerAddress,
    /// Not tried: no route to the server's address of this family.
    NoRoute,
    /// Discovery could not run.
    Failed,
    /// Sent, but nothing came back.
    NoAnswer,
}

impl FamilyStatus {
    /// Orders the facts; see the module documentation.
    pub fn decide(facts: &Facts<'_>) -> FamilyStatus {
        if !facts.server_address {
            return if facts.global_address {
                FamilyStatus::NoServerAddress
            } else {
                FamilyStatus::NoGlobalAddress
            };
        }
        if facts.route == Some(false) {
            return FamilyStatus::NoRoute;
        }
        match facts.udp {
            None => FamilyStatus::Failed,
            Some(r) if r.udp_blocked || r.mapped.is_none() => FamilyStatus::NoAnswer,
            Some(_) => FamilyStatus::Reachable,
        }
    }

    /// Whether the family works.
    pub fn is_reachable(self) -> bool {
        self == FamilyStatus::Reachable
    }

    /// Whether anything was sent over the family.
    pub fn was_tried(self) -> bool {
        matches!(
            self,
            FamilyStatus::Reachable | FamilyStatus::NoAnswer | FamilyStatus::Failed
        )
    }

    /// Why the family does not work, for people (`None` when it does).
    pub fn why(self, family: Family) -> Option<String> {
        Some(match self {
            FamilyStatus::Reachable => return None,
            FamilyStatus::NoGlobalAddress => match family {
                Family::Ipv6 => {
                    "no IPv6: this host has no global IPv6 address (and the server's name none)"
                        .to_string()
                }
                Family::Ipv4 => {
                    "no IPv4: this host has no IPv4 address (and the server's name none)"
                        .to_string()
                }
            },
            FamilyStatus::NoServerAddress => {
                format!("not tested: the server's name has no {family} address")
            }
            FamilyStatus::NoRoute => {
                format!("no {family}: no route to the server's {family} address")
            }
            FamilyStatus::Failed => format!("not tested: {family} discovery could not run"),
            FamilyStatus::NoAnswer => {
                format!("no answer from the server's STUN responder over {family} UDP")
            }
        })
    }
}

/// Whether `interfaces` has an address of `family` that can reach the
/// internet: for IPv6 a global (public) one, the documentation range
/// 2001:db8::/32 included (it stands for public addresses in labs, as
/// 203.0.113.0/24 does for IPv4); for IPv4 any but loopback, link-local
/// and unspecified, since a private IPv4 address behind a NAT is the
/// normal case.
pub fn has_global_address(interfaces: &[Interface], family: Family) -> bool {
    interfaces.iter().any(|i| {
        Family::of(i.addr) == family
            && match family {
                Family::Ipv6 => matches!(i.class, AddrClass::Public | AddrClass::Documentation),
                Family::Ipv4 => !matches!(
                    i.class,
                    AddrClass::Loopback | AddrClass::LinkLocal | AddrClass::Unspecified
                ),
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::behaviour::{Filtering, Mapping};

    fn report(mapped: bool) -> NatReport {
        NatReport {
            local: "[::]:4000".parse().unwrap(),
            mapped: mapped.then(|| "[2001:db8::7]:4000".parse().unwrap()),
            udp_blocked: !mapped,
            mapping: Mapping::NoNat,
            filtering: Filtering::EndpointIndependent,
            port_preserved: mapped.then_some(true),
        }
    }

    fn facts(udp: Option<&NatReport>) -> Facts<'_> {
        Facts {
            family: Family::Ipv6,
            server_address: true,
            global_address: true,
            route: Some(true),
            udp,
        }
    }

    #[test]
    fn a_server_without_an_ipv6_address_is_not_tried() {
        let no_server = Facts {
            server_address: false,
            route: None,
            ..facts(None)
        };
        assert_eq!(
            FamilyStatus::decide(&no_server),
            FamilyStatus::NoServerAddress
        );
        let neither = Facts {
            global_address: false,
            ..no_server
        };
        let status = FamilyStatus::decide(&neither);
        assert_eq!(status, FamilyStatus::NoGlobalAddress);
        assert!(!status.was_tried() && !status.is_reachable());
        let why = status.why(Family::Ipv6).unwrap();
        assert!(
            why.starts_with("no IPv6: this host has no global IPv6 address"),
            "{why}"
        );
    }

    #[test]
    fn no_route_wins_over_anything_discovery_said() {
        let r = report(true);
        let f = Facts {
            route: Some(false),
            ..facts(Some(&r))
        };
        assert_eq!(FamilyStatus::decide(&f), FamilyStatus::NoRoute);
        assert!(
            FamilyStatus::NoRoute
                .why(Family::Ipv6)
                .unwrap()
                .contains("no route")
        );
    }

    #[test]
    fn an_answer_is_reachable_even_without_a_global_address() {
        // E.g. the server at [::1] or a unique-local address.
        let r = report(true);
        let f = Facts {
            global_address: false,
            ..facts(Some(&r))
        };
        let status = FamilyStatus::decide(&f);
        assert_eq!(status, FamilyStatus::Reachable);
        assert!(status.is_reachable() && status.was_tried());
        assert_eq!(status.why(Family::Ipv6), None);
    }

    #[test]
    fn silence_and_failure_are_told_apart() {
        let r = report(false);
        assert_eq!(
            FamilyStatus::decide(&facts(Some(&r))),
            FamilyStatus::NoAnswer
        );
        assert_eq!(FamilyStatus::decide(&facts(None)), FamilyStatus::Failed);
        assert!(FamilyStatus::NoAnswer.was_tried());
    }

    #[test]
    fn global_addresses_are_public_ones_of_the_family() {
        let iface = |addr: &str| {
            let addr: IpAddr = addr.parse().unwrap();
            Interface {
                name: "eth0".into(),
                addr,
                class: crate::addr::classify(addr),
            }
        };
        let list = [iface("fd00::2"), iface("fe80::1"), iface("10.0.1.10")];
        assert!(!has_global_address(&list, Family::Ipv6));
        assert!(has_global_address(&list, Family::Ipv4), "a NATed IPv4 host");
        let list = [iface("::1"), iface("127.0.0.1"), iface("169.254.0.7")];
        assert!(!has_global_address(&list, Family::Ipv4));
        let list = [iface("2a00:1450:4001::1")];
        assert!(has_global_address(&list, Family::Ipv6));
        // The lab's "public" IPv6 hosts live in the documentation range.
        let list = [iface("fe80::1"), iface("2001:db8:a1::10")];
        assert!(has_global_address(&list, Family::Ipv6));
    }

    #[test]
    fn statuses_serialize_as_documented() {
        assert_eq!(
            serde_json::to_value(FamilyStatus::NoGlobalAddress).unwrap(),
            serde_json::json!("no_global_address")
        );
        assert_eq!(
            serde_json::to_value(Family::Ipv6).unwrap(),
            serde_json::json!("ipv6")
        );
    }
}
