//! Why things happened on the journey, as types: why the relay carries a
//! transfer ([`RelayReason`]), why no direct path can work ([`Hopeless`]),
//! why the peer is gone ([`PeerGone`]). The binary renders them; the
//! `Display` texts here name no command-line flag, and text from the peer
//! is escaped.

use std::fmt;
use std::time::Duration;

use ferry_connect::race::{PathFailure, PathKind};
use ferry_proto::escape;
use ferry_proto::signal::ReleaseReason;

/// What rules out punching on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpObstacle {
    /// A NAT that maps each destination apart: punched holes lead nowhere.
    SymmetricNat,
    /// No UDP gets through.
    Blocked,
}

impl fmt::Display for UdpObstacle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UdpObstacle::SymmetricNat => "symmetric NAT",
            UdpObstacle::Blocked => "UDP blocked",
        })
    }
}

/// Both networks rule out a direct path (see
/// [`direct_hopeless`](crate::direct_hopeless)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hopeless {
    /// Our side.
    pub here: UdpObstacle,
    /// The peer's side.
    pub there: UdpObstacle,
}

impl fmt::Display for Hopeless {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.here == self.there {
            write!(f, "{} on both sides", self.here)
        } else {
            write!(f, "{} here, {} at the peer", self.here, self.there)
        }
    }
}

/// Why the relay carries the transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayReason {
    /// The caller allowed the relay only.
    Forced,
    /// Both networks rule out a direct path: the relay started at once.
    Hopeless(Hopeless),
    /// The two sides have no address family in common (one IPv6 only,
    /// the other IPv4 only): the relay started at once, each side reaching
    /// it over its own family.
    NoCommonFamily,
    /// No direct path answered within `within`; `failed` are those that
    /// failed (the others were still trying).
    NoneAnswered {
        /// From "both peers present" to the relay's stream.
        within: Duration,
        /// The paths that failed, and why.
        failed: Vec<(PathKind, PathFailure)>,
    },
}

impl fmt::Display for RelayReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayReason::Forced => f.write_str("only the relay was allowed"),
            RelayReason::Hopeless(why) => why.fmt(f),
            RelayReason::NoCommonFamily => {
                f.write_str("no address family in common (one side IPv4 only, the other IPv6 only)")
            }
            RelayReason::NoneAnswered { within, failed } => {
                write!(f, "none answered within {:.1} s", within.as_secs_f64())?;
                if !failed.is_empty() {
                    let failed: Vec<String> = failed
                        .iter()
                        .map(|(kind, why)| format!("{kind}: {why}"))
                        .collect();
                    write!(f, "; {}", failed.join("; "))?;
                }
                Ok(())
            }
        }
    }
}

/// Why the peer is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerGone {
    /// The receiver left before pairing.
    LeftBeforePairing(Option<ReleaseReason>),
    /// The peer left during pairing.
    LeftDuringPairing(Option<ReleaseReason>),
    /// Pairing timed out.
    PairingTimedOut,
    /// The peer stopped answering between pairing and its hello.
    SilentAfterPairing,
    /// The peer left before connecting.
    LeftBeforeConnecting(Option<ReleaseReason>),
    /// The peer gave up on connecting during the race.
    GaveUpConnecting(Option<ReleaseReason>),
    /// The peer cancelled, in its own words (shown escaped).
    Cancelled(String),
    /// The peer went away just as a path was chosen.
    WentAwayAsChosen(PathKind),
    /// After a break, the peer did not come back in time.
    DidNotComeBack(Duration),
}

fn left(reason: &Option<ReleaseReason>) -> &'static str {
    reason.map_or("no reason given", |r| r.describe())
}

impl fmt::Display for PeerGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerGone::LeftBeforePairing(r) => {
                write!(f, "the receiver left before pairing ({})", left(r))
            }
            PeerGone::LeftDuringPairing(r) => {
                write!(f, "the peer left during pairing ({})", left(r))
            }
            PeerGone::PairingTimedOut => {
                f.write_str("pairing timed out: the peer stopped answering")
            }
            PeerGone::SilentAfterPairing => f.write_str("the peer stopped answering after pairing"),
            PeerGone::LeftBeforeConnecting(r) => {
                write!(f, "the peer left before connecting ({})", left(r))
            }
            PeerGone::GaveUpConnecting(r) => {
                write!(f, "the peer gave up on connecting ({})", left(r))
            }
            PeerGone::Cancelled(reason) => {
                write!(f, "the peer cancelled: {}", escape::line(reason))
            }
            PeerGone::WentAwayAsChosen(kind) => {
                write!(f, "the peer went away as the {kind} path was chosen")
            }
            PeerGone::DidNotComeBack(wait) => {
                write!(f, "the peer did not come back within {} s", wait.as_secs())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_before_and_escape_the_peer() {
        let both = Hopeless {
            here: UdpObstacle::SymmetricNat,
            there: UdpObstacle::SymmetricNat,
        };
        assert_eq!(both.to_string(), "symmetric NAT on both sides");
        let mixed = Hopeless {
            here: UdpObstacle::Blocked,
            there: UdpObstacle::SymmetricNat,
        };
        assert_eq!(
            mixed.to_string(),
            "UDP blocked here, symmetric NAT at the peer"
        );
        let none = RelayReason::NoneAnswered {
            within: Duration::from_millis(1520),
            failed: vec![(
                PathKind::Quic,
                PathFailure::Failed("no answer\x1b[2J".into()),
            )],
        };
        assert_eq!(
            none.to_string(),
            "none answered within 1.5 s; direct QUIC over UDP: no answer\\x1b[2J"
        );
        let cancelled = PeerGone::Cancelled("bye\n\u{202e}".into());
        assert!(!cancelled.to_string().contains('\n'));
        assert!(!RelayReason::Forced.to_string().contains("--"));
    }
}
