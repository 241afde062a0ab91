//! Messages between the two peers.
//!
//! They travel only inside sealed mailbox bodies (see [`crate::pairing`]),
//! so the rendezvous server never reads them.
//!
//! ```text
//! sender                                   receiver
//!   | version {protocol, agent} --------->  |   first sealed message: key confirmation
//!   | <--------- version {protocol, agent}  |
//!   | hello {cert_fingerprint, candidates}> |
//!   | <-- hello {cert_fingerprint, candidates}
//!   | path-failed {path, why} (during the race)
//!   | candidates {candidates} (during the race, to a peer whose version
//!   |   lists the "candidates" feature: addresses learnt after the hello)
//!   | abort {reason} (either side, any time)|
//! ```
//!
//! Compatibility: fields added later carry `#[serde(default)]`, so older
//! peers' messages still parse; a message type a side does not know
//! decodes as [`PeerToPeer::Unknown`] (skipped). Older ferry fails on an
//! unknown type, so new types go only to a peer that named them in its
//! version's `features` (see [`FEATURE_CANDIDATES`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The feature a side lists in its [`PeerToPeer::Version`] when it takes
/// [`PeerToPeer::Candidates`] during the race.
pub const FEATURE_CANDIDATES: &str = "candidates";

/// The feature a side lists when it can move a running transfer from the
/// relay to a direct path that comes up later: direct attempts go on
/// behind the relay, the sender nominates the first one up, and the
/// transfer moves at a chunk boundary (the transfer protocol's `Move`).
pub const FEATURE_MOVE: &str = "move";

/// A message from one peer to the other, JSON inside a sealed body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum PeerToPeer {
    /// First sealed message of each side: proves both hold the same key.
    Version {
        /// The sender's protocol version.
        protocol: u32,
        /// Free-form software description, e.g. `ferry/0.1.0`.
        agent: String,
        /// The optional parts of the protocol the side understands, e.g.
        /// [`FEATURE_CANDIDATES`] (absent from older peers: none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
    },
    /// The side's TLS certificate fingerprint (hex SHA-256 of the DER) and
    /// its connection candidates.
    Hello {
        /// Lowercase hex SHA-256 of the side's certificate DER.
        cert_fingerprint: String,
        /// Where the side can be reached.
        candidates: Vec<Candidate>,
        /// What the side learnt about its network while gathering (absent
        /// from older peers: then nothing is known).
        #[serde(default, skip_serializing_if = "NetworkHint::is_unknown")]
        network: NetworkHint,
    },
    /// The side gives up; `reason` is shown to the user.
    Abort {
        /// Human-readable reason.
        reason: String,
    },
    /// During the race: this side's attempts on `path` all failed (e.g. the
    /// receiver could not connect to any of the sender's TCP addresses), so
    /// the other side need not wait for it.
    PathFailed {
        /// The path's short name (`tcp`, `quic`, ...).
        path: String,
        /// Why, for the log.
        why: String,
    },
    /// During the race: candidates the side learnt after its hello (a UPnP
    /// mapping that took longer than pairing), to try as well. Sent only to
    /// a peer whose version lists [`FEATURE_CANDIDATES`].
    Candidates {
        /// Where the side can (also) be reached.
        candidates: Vec<Candidate>,
    },
    /// A message type this side does not know (from a newer peer): never
    /// sent, skipped where it arrives.
    #[serde(other)]
    Unknown,
}

/// One address at which a peer may be reachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The address to connect or punch to.
    pub addr: SocketAddr,
    /// TCP or UDP.
    pub transport: Transport,
    /// How the address was learnt.
    pub kind: CandidateKind,
    /// Higher is tried first.
    pub priority: u32,
}

/// What one side learnt about its own network while gathering, so that
/// both can tell at once when no direct path can work and go straight to
/// the relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkHint {
    /// How its UDP socket is mapped.
    #[serde(default)]
    pub udp: UdpMapping,
    /// Whether the public TCP port of the signalling connection is the
    /// local one (a port-preserving NAT, or none): `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_port_kept: Option<bool>,
    /// When its UDP mapping [varies](UdpMapping::Varies): the public ports
    /// its socket got towards the server's first and second STUN port, in
    /// that order (a NAT that allocates by a fixed step can be predicted
    /// from them, see `ferry_connect::spray::predict_ports`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_ports: Option<[u16; 2]>,
}

impl NetworkHint {
    /// Nothing is known.
    pub fn is_unknown(&self) -> bool {
        *self == NetworkHint::default()
    }
}

/// How a side's UDP socket appears from outside, from STUN answers from
/// two ports of the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UdpMapping {
    /// Not measured (the server runs no STUN, or has one port only).
    #[default]
    Unknown,
    /// No STUN answer: UDP seems blocked.
    Blocked,
    /// The same public address towards both server ports: holes can be
    /// punched.
    Stable,
    /// A different public port towards each server port: a symmetric NAT,
    /// where punched holes lead nowhere.
    Varies,
}

/// The transport of a [`Candidate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// TCP (TLS on top).
    Tcp,
    /// UDP (QUIC on top).
    Udp,
}

/// How a [`Candidate`] address was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CandidateKind {
    /// A local interface address.
    Host,
    /// The address the rendezvous server saw on the signalling connection.
    ServerObserved,
    /// A public UDP mapping learnt by STUN.
    Stun,
    /// A port mapped on the gateway by UPnP IGD.
    Upnp,
    /// A relay address.
    Relay,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_hello() {
        let msg = PeerToPeer::Hello {
            cert_fingerprint: "ab01".into(),
            candidates: vec![Candidate {
                addr: "192.168.1.2:4000".parse().unwrap(),
                transport: Transport::Udp,
                kind: CandidateKind::ServerObserved,
                priority: 100,
            }],
            network: NetworkHint::default(),
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(
            json,
            "{\"type\":\"hello\",\"cert_fingerprint\":\"ab01\",\"candidates\":[{\"addr\":\"192.168.1.2:4000\",\"transport\":\"udp\",\"kind\":\"server-observed\",\"priority\":100}]}"
        );
        assert_eq!(serde_json::from_str::<PeerToPeer>(&json).unwrap(), msg);
    }

    #[test]
    fn snapshot_version_and_abort() {
        assert_eq!(
            serde_json::to_string(&PeerToPeer::Version {
                protocol: 1,
                agent: "ferry/0.1.0".into(),
                features: Vec::new(),
            })
            .unwrap(),
            "{\"type\":\"version\",\"protocol\":1,\"agent\":\"ferry/0.1.0\"}"
        );
        assert_eq!(
            serde_json::to_string(&PeerToPeer::Abort {
                reason: "cancelled".into()
            })
            .unwrap(),
            "{\"type\":\"abort\",\"reason\":\"cancelled\"}"
        );
    }

    #[test]
    fn features_travel_in_the_version_and_older_versions_still_parse() {
        let version = PeerToPeer::Version {
            protocol: 1,
            agent: "ferry/0.2.0".into(),
            features: vec![FEATURE_CANDIDATES.into()],
        };
        let json = serde_json::to_string(&version).unwrap();
        assert_eq!(
            json,
            "{\"type\":\"version\",\"protocol\":1,\"agent\":\"ferry/0.2.0\",\"features\":[\"candidates\"]}"
        );
        assert_eq!(serde_json::from_str::<PeerToPeer>(&json).unwrap(), version);
        // An older peer's version: no features.
        let older = "{\"type\":\"version\",\"protocol\":1,\"agent\":\"ferry/0.1.0\"}";
        assert_eq!(
            serde_json::from_str::<PeerToPeer>(older).unwrap(),
            PeerToPeer::Version {
                protocol: 1,
                agent: "ferry/0.1.0".into(),
                features: Vec::new(),
            }
        );
    }

    #[test]
    fn an_older_peer_reads_our_version() {
        // The Version as ferry knew it before features.
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(tag = "type", rename_all = "kebab-case")]
        enum Older {
            Version { protocol: u32, agent: String },
        }
        let ours = PeerToPeer::Version {
            protocol: 1,
            agent: "ferry/0.2.0".into(),
            features: vec![FEATURE_CANDIDATES.into()],
        };
        let json = serde_json::to_string(&ours).unwrap();
        assert_eq!(
            serde_json::from_str::<Older>(&json).unwrap(),
            Older::Version {
                protocol: 1,
                agent: "ferry/0.2.0".into()
            }
        );
    }

    #[test]
    fn snapshot_candidates() {
        let msg = PeerToPeer::Candidates {
            candidates: vec![Candidate {
                addr: "198.51.100.2:41000".parse().unwrap(),
                transport: Transport::Tcp,
                kind: CandidateKind::Upnp,
                priority: 850,
            }],
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(
            json,
            "{\"type\":\"candidates\",\"candidates\":[{\"addr\":\"198.51.100.2:41000\",\"transport\":\"tcp\",\"kind\":\"upnp\",\"priority\":850}]}"
        );
        assert_eq!(serde_json::from_str::<PeerToPeer>(&json).unwrap(), msg);
    }

    #[test]
    fn unknown_types_parse_as_unknown_but_known_ones_must_be_whole() {
        let newer = "{\"type\":\"something-new\",\"whatever\":[1,2]}";
        assert_eq!(
            serde_json::from_str::<PeerToPeer>(newer).unwrap(),
            PeerToPeer::Unknown
        );
        // A known type with a field missing is still an error.
        assert!(serde_json::from_str::<PeerToPeer>("{\"type\":\"abort\"}").is_err());
        assert!(serde_json::from_str::<PeerToPeer>("{\"reason\":\"x\"}").is_err());
    }

    #[test]
    fn ipv6_candidate_roundtrip() {
        let c = Candidate {
            addr: "[fd00::1]:443".parse().unwrap(),
            transport: Transport::Tcp,
            kind: CandidateKind::Relay,
            priority: 1,
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"[fd00::1]:443\""));
        assert_eq!(serde_json::from_str::<Candidate>(&json).unwrap(), c);
    }
}
