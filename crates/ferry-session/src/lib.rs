//! ferry-session: one side's journey from the rendezvous server to a
//! secure stream with the peer, and back to it when the path breaks:
//! signalling (`ferry-rendezvous`), pairing (`ferry-proto`), candidate
//! gathering (`ferry-nat`: STUN, UPnP), the path plan, and the race of the
//! paths whose mechanics live in `ferry-connect`.
//!
//! ```text
//! sender (controlling)            server                  receiver (controlled)
//!   | hello / allocate -----------> |  (signalling from a reusable port:
//!   | <----------- allocated N      |   its public mapping serves TCP
//!   |  gather: UDP socket + STUN,    |   simultaneous open)
//!   |  TCP listener, UPnP mappings   | <------------ hello / claim N |
//!   | <----------- peer-joined      |                               |  gather: UDP + STUN
//!   | pake / version (sealed) <--------------------------> pake / version  SPAKE2 + confirmation
//!   | hello{cert fp, candidates} <-----------------> hello{cert fp, candidates}  (sealed)
//!   | race: accept TCP, simultaneous open, punch+QUIC  | race: connect TCP, simultaneous open, punch+QUIC
//!   | candidates{UPnP mappings done after the hello} (sealed) ---> one more connect, more punch targets
//!   | "ferry-go" on the best authenticated path ======> uses the path that says "ferry-go"
//!   | release                       |                       release |
//! ```
//!
//! Modules, in the order of the journey: [`journey`] (the two sides'
//! entry points), `signal` (server connection, retries when it is down or
//! restarts, pairing), `gather` (our candidates), [`plan`] (sans-IO: which
//! paths, to which targets, with which head start), `attempt` (each
//! planned path as a socket operation), `race` (the drivers around
//! `ferry_connect::race`'s cores), `relay` (the relay path), [`upgrade`]
//! (relay first, then a direct path that comes up later), [`report`]
//! (the path, told to the server for its metrics), [`rejoin`]
//! (finding the peer again), [`mend`] (reconnecting after a break
//! mid-transfer), [`backoff`] (every retry schedule), [`reason`] (why, as
//! types the binary renders), `error`.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use ferry_connect::{PathFailure, PathKind, PeerStream};

mod attempt;
pub mod backoff;
mod error;
mod gather;
pub mod journey;
pub mod mend;
pub mod plan;
mod race;
pub mod reason;
pub mod rejoin;
mod relay;
pub mod report;
mod signal;
pub mod upgrade;

pub use backoff::Backoff;
pub use error::SessionError;
pub use ferry_relay::PairLimits;
pub use journey::{Sender, receive, receive_with};
pub use mend::{MendError, MendEvent, Mender, PathEnd, mendable};
pub use plan::{PlanInput, Spray, Step, direct_hopeless, plan_paths, spray_role};
pub use reason::{Hopeless, PeerGone, RelayReason, UdpObstacle};
pub use rejoin::Rejoin;
pub use report::PathReport;
pub use signal::{RESTART_GRACE, RESTARTED_WITHIN, Waiting};
pub use upgrade::{MOVE_WAIT, Upgrade};

pub(crate) use attempt::*;
pub(crate) use gather::*;
pub(crate) use journey::*;
pub(crate) use plan::*;
pub(crate) use race::*;
pub(crate) use relay::*;
pub(crate) use report::*;
pub(crate) use signal::*;
pub(crate) use upgrade::*;

/// ferry's agent string, sent to the server and the peer.
pub const AGENT: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

/// How long pairing and the candidate exchange may take once both sides
/// are present.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the whole race may take.
pub const RACE_DEADLINE: Duration = Duration::from_secs(20);
/// How long the sender waits for the receiver's direct TCP connection.
pub(crate) const ACCEPT_TIMEOUT: Duration = Duration::from_secs(12);
/// How long TCP simultaneous open keeps trying.
pub(crate) const SIMOPEN_DEADLINE: Duration = Duration::from_secs(8);
/// How long hole punching keeps trying.
pub(crate) const PUNCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the QUIC handshake on a punched socket may take.
pub(crate) const QUIC_TIMEOUT: Duration = Duration::from_secs(8);
/// How long the controlled side waits for the nomination on a path.
pub(crate) const NOMINATION_TIMEOUT: Duration = Duration::from_secs(RACE_DEADLINE.as_secs() + 5);
/// UPnP lease for the sender's mappings (removed when the race is over).
pub(crate) const UPNP_LEASE: Duration = Duration::from_secs(600);
/// How long direct paths run before the relay joins the race.
pub(crate) const RELAY_HEAD_START: Duration = Duration::from_millis(1500);
/// How long the relay may take to join us with the peer.
pub(crate) const RELAY_WAIT: Duration = Duration::from_secs(15);
/// How long the hello waits for UPnP once pairing is done, for a peer
/// that cannot take candidates during the race (an older ferry); a newer
/// one gets the hello at once and the UPnP candidates when they are done.
pub(crate) const UPNP_WAIT: Duration = Duration::from_millis(300);
/// What we understand beyond the base protocol, listed in our Version.
pub const FEATURES: &[&str] = &[
    ferry_proto::peer::FEATURE_CANDIDATES,
    ferry_proto::peer::FEATURE_MOVE,
];
/// How long a side that reconnects waits for the peer to come back.
pub const REJOIN_WAIT: Duration = Duration::from_secs(40);
/// How long a TCP path may go without an acknowledgement (of data, or of a
/// keepalive probe) before it counts as broken. QUIC uses
/// [`ferry_connect::quic::IDLE_TIMEOUT`].
pub const TCP_DEAD_AFTER: Duration = Duration::from_secs(15);
/// The context of the rejoin meeting point derived from the pairing key.
pub(crate) const REJOIN_CONTEXT: &str = "ferry v1 rejoin meeting";

/// Which paths to try.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// Only this kind of path (`--force-path`): [`PathKind::Lan`],
    /// [`PathKind::Tcp`] (direct TCP and simultaneous open),
    /// [`PathKind::Quic`] or [`PathKind::Relay`].
    pub force_path: Option<PathKind>,
    /// Skip port mapping (UPnP / NAT-PMP / PCP).
    pub no_upnp: bool,
    /// The proxy for the rendezvous server and the relay (`--proxy`,
    /// `HTTPS_PROXY`, ...; `NO_PROXY` sends some hosts direct); `None`:
    /// both direct. The direct paths to the peer are raced as ever. The
    /// rules are made once per process, so a reference keeps these
    /// options `Copy`.
    pub proxy: Option<&'static ferry_proxy::ProxyRules>,
}

impl SessionOptions {
    pub(crate) fn allows(&self, kind: PathKind) -> bool {
        match (self.force_path, kind) {
            (None, _) => true,
            (Some(PathKind::Tcp), PathKind::Lan | PathKind::Tcp | PathKind::SimultaneousOpen) => {
                true
            }
            (Some(PathKind::Lan), PathKind::Lan | PathKind::Tcp) => true,
            (Some(forced), kind) => forced == kind,
        }
    }
}

/// A secure stream to the peer and how it was made.
pub struct PeerLink {
    /// The secure stream (certificates pinned both ways).
    pub stream: PeerStream,
    /// The path that won.
    pub path: PathKind,
    /// Our address on the path.
    pub local: SocketAddr,
    /// The peer's address on the path.
    pub remote: SocketAddr,
    /// From "both peers present" to the secure stream.
    pub connect_time: Duration,
    /// The paths that failed, and why (the others lost the race).
    pub lost: Vec<(PathKind, PathFailure)>,
    /// When the relay carries the transfer: why no direct path did.
    pub relay_reason: Option<RelayReason>,
    /// When the relay carries the transfer: the limits it set on the pair
    /// (reaching one ends the pipe; [`ferry_relay::PairLimits::explains`]
    /// tells such an end from a broken path).
    pub relay_limits: Option<ferry_relay::PairLimits>,
    /// How the direct path was found, where ferry has more than one way.
    pub found_by: Option<FoundBy>,
    /// How to find the peer again if this path breaks: set on the link of
    /// the first connection ([`Sender::connect`], [`receive`]), `None` on
    /// the links [`Rejoin::reconnect`] returns (keep using that `Rejoin`).
    pub rejoin: Option<Rejoin>,
    /// When the relay carries the transfer while direct attempts still
    /// run: the direct path that may replace it ([`Upgrade`]; the sender
    /// moves with `ferry_transfer::send_moving`).
    pub upgrade: Option<Upgrade>,
    /// With [`upgrade`](Self::upgrade) on the first link: the report of
    /// the path to the server, which waits to learn whether the transfer
    /// moves; call [`PathReport::finish`] when the transfer is over.
    pub report: Option<PathReport>,
}

/// How a direct path was found, where there is more than one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    /// A plain UDP hole punch.
    Punch,
    /// Port spraying (one NAT maps a new port per destination).
    Spray {
        /// Ours is that NAT (we sprayed from many sockets); otherwise we
        /// probed the peer's ports.
        hard_here: bool,
        /// The probes we sent, when we probed.
        probes: Option<usize>,
        /// The port that answered was one we predicted.
        predicted: bool,
    },
    /// A port the peer's gateway mapped for it (UPnP IGD, NAT-PMP or PCP).
    PeerPortMapping,
    /// A port our gateway mapped for us, which the peer connected to.
    OwnPortMapping {
        /// "UPnP IGD" or "NAT-PMP/PCP".
        protocol: &'static str,
    },
}

impl FoundBy {
    /// The code in `--json` output: `punch`, `spray` or `port-mapping`.
    pub fn code(&self) -> &'static str {
        match self {
            FoundBy::Punch => "punch",
            FoundBy::Spray { .. } => "spray",
            FoundBy::PeerPortMapping | FoundBy::OwnPortMapping { .. } => "port-mapping",
        }
    }
}

impl std::fmt::Display for FoundBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FoundBy::Punch => f.write_str("hole punching"),
            FoundBy::Spray {
                hard_here: true, ..
            } => f.write_str("port spraying from 256 sockets"),
            FoundBy::Spray {
                probes, predicted, ..
            } => {
                f.write_str("port spraying")?;
                if let Some(n) = probes {
                    write!(f, ", {n} probe{}", if *n == 1 { "" } else { "s" })?;
                }
                if *predicted {
                    f.write_str(", predicted port")?;
                }
                Ok(())
            }
            FoundBy::PeerPortMapping => f.write_str("the peer's mapped port"),
            FoundBy::OwnPortMapping { protocol } => {
                write!(f, "our gateway's port mapping ({protocol})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn how_a_path_was_found_reads_well() {
        let easy = FoundBy::Spray {
            hard_here: false,
            probes: Some(1),
            predicted: true,
        };
        assert_eq!(easy.to_string(), "port spraying, 1 probe, predicted port");
        let easy = FoundBy::Spray {
            hard_here: false,
            probes: Some(219),
            predicted: false,
        };
        assert_eq!(easy.to_string(), "port spraying, 219 probes");
        let hard = FoundBy::Spray {
            hard_here: true,
            probes: None,
            predicted: false,
        };
        assert_eq!(hard.to_string(), "port spraying from 256 sockets");
        assert_eq!(hard.code(), "spray");
        assert_eq!(FoundBy::Punch.code(), "punch");
        assert_eq!(FoundBy::PeerPortMapping.code(), "port-mapping");
        let ours = FoundBy::OwnPortMapping {
            protocol: "NAT-PMP/PCP",
        };
        assert_eq!(ours.code(), "port-mapping");
        assert_eq!(ours.to_string(), "our gateway's port mapping (NAT-PMP/PCP)");
    }

    #[test]
    fn forced_paths_allow_what_they_say() {
        let only = |kind| SessionOptions {
            force_path: Some(kind),
            ..SessionOptions::default()
        };
        let all = SessionOptions::default();
        assert!(all.allows(PathKind::Tcp) && all.allows(PathKind::Quic));
        assert!(all.allows(PathKind::Relay));
        assert!(only(PathKind::Relay).allows(PathKind::Relay));
        assert!(!only(PathKind::Relay).allows(PathKind::Tcp));
        assert!(only(PathKind::Tcp).allows(PathKind::SimultaneousOpen));
        assert!(!only(PathKind::Tcp).allows(PathKind::Quic));
        assert!(only(PathKind::Quic).allows(PathKind::Quic));
        assert!(!only(PathKind::Quic).allows(PathKind::Tcp));
        assert!(only(PathKind::Lan).allows(PathKind::Tcp));
        assert!(!only(PathKind::Lan).allows(PathKind::SimultaneousOpen));
    }
}
