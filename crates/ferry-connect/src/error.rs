//! Errors of ferry-connect, and how they are told to the user: the error
//! type of every path ([`ConnectError`]), why one attempt failed
//! ([`FailureReason`], [`CandidateFailure`], [`PunchFailure`]), the mapping of
//! socket and TLS errors to those reasons, and the summaries and hints the
//! messages carry. Depends on nothing else in the crate: every path module
//! depends on this one.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rustls::AlertDescription;

/// Everything that can go wrong while setting up a direct connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The throw-away certificate could not be generated.
    #[error("could not create a certificate for this transfer: {reason}")]
    Identity {
        /// What the certificate generator reported.
        reason: String,
    },

    /// The peer's fingerprint is not 64 hexadecimal digits.
    #[error(
        "the peer's certificate fingerprint {fingerprint:?} is not a SHA-256 in hex; \
         the peer may run an incompatible version of ferry"
    )]
    InvalidFingerprint {
        /// The fingerprint as received.
        fingerprint: String,
    },

    /// The TLS configuration could not be built.
    #[error("could not set up TLS: {source}")]
    Tls {
        /// The underlying rustls error.
        #[source]
        source: rustls::Error,
    },

    /// No TCP listener could be opened for the peer to connect to.
    #[error(
        "could not open a TCP port for direct connections: {source}; \
         check that this process may open network sockets"
    )]
    Bind {
        /// The underlying socket error.
        #[source]
        source: std::io::Error,
    },

    /// No peer completed the pinned TLS handshake before the deadline.
    #[error(
        "the peer did not connect directly within {waited:?} ({rejected} connection attempt{} \
         failed the secure handshake); the peers may be on networks that cannot reach each other",
        if *.rejected == 1 { "" } else { "s" }
    )]
    AcceptTimeout {
        /// How long we waited.
        waited: Duration,
        /// How many incoming connections failed the handshake (wrong
        /// certificate, garbage, scanners) and were dropped.
        rejected: usize,
    },

    /// The peer's candidate list had no TCP address to try.
    #[error(
        "the peer offered no TCP address for a direct connection; \
         the peer may run an incompatible version of ferry"
    )]
    NoCandidates,

    /// Every candidate failed.
    #[error(
        "no direct connection to the peer: tried {} address{} ({}); {}",
        .failures.len(),
        if .failures.len() == 1 { "" } else { "es" },
        list_failures(.failures),
        hint(.failures)
    )]
    AllFailed {
        /// Each candidate and why it failed, best candidate first.
        failures: Vec<CandidateFailure>,
    },

    // ---- TCP simultaneous open (simopen.rs) ----
    /// The local address for TCP simultaneous open could not be bound,
    /// usually because the signalling connection holds the port without
    /// `SO_REUSEADDR`/`SO_REUSEPORT`.
    #[error(
        "could not reuse local TCP address {local} for a simultaneous open: {source}; \
         the signalling connection must be opened with simopen::connect_from so its port can be shared"
    )]
    SimultaneousOpenBind {
        /// The local address that was to be reused.
        local: std::net::SocketAddr,
        /// The underlying socket error.
        #[source]
        source: std::io::Error,
    },

    /// TCP simultaneous open gave no confirmed connection before the deadline.
    #[error(
        "TCP simultaneous open from {local} to {remote} failed after {waited:?}: {}; {}",
        describe_attempts(.attempts),
        failure_hint(.attempts)
    )]
    SimultaneousOpenFailed {
        /// Our local address (the signalling port).
        local: std::net::SocketAddr,
        /// The peer's public address that was connected to.
        remote: std::net::SocketAddr,
        /// From the agreed start time to giving up.
        waited: Duration,
        /// Why each attempt failed, in order.
        attempts: Vec<FailureReason>,
    },

    // ---- UDP hole punching and QUIC (punch.rs, quic.rs) ----
    /// UDP hole punching found no path both peers agree on.
    #[error(
        "UDP hole punching found no path to the peer within {waited:?}: {why}; \
         the peers' NATs may not allow it (another path may still work)"
    )]
    PunchFailed {
        /// What was seen.
        why: PunchFailure,
        /// How long we tried.
        waited: Duration,
    },

    /// Port spraying (one side's NAT maps a new port per destination)
    /// found no path, or could not open its sockets.
    #[error("{0} (another path may still work)")]
    Spray(#[from] crate::spray::SprayError),

    /// The UDP socket for punching or QUIC could not be used.
    #[error("could not use the UDP socket: {source}")]
    UdpSocket {
        /// The underlying socket error.
        #[source]
        source: std::io::Error,
    },

    /// QUIC over the punched path failed.
    #[error("QUIC over the punched UDP path to {remote} failed: {reason}")]
    Quic {
        /// The peer address QUIC ran to or accepted from.
        remote: SocketAddr,
        /// What went wrong.
        reason: FailureReason,
    },

    // ---- the relay (session.rs) ----
    /// The relay path could not be set up.
    #[error("the relay could not join us with the peer: {reason}")]
    Relay {
        /// What went wrong.
        reason: String,
    },
}

/// Why one candidate address failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateFailure {
    /// The address that was tried.
    pub addr: SocketAddr,
    /// What went wrong.
    pub reason: FailureReason,
}

/// What went wrong with one candidate address.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureReason {
    /// Nothing listens there (TCP RST).
    Refused,
    /// No answer in time (packets dropped by a firewall or NAT, or a slow path).
    TimedOut,
    /// No route to that network or host.
    Unreachable,
    /// The address cannot be connected to (unspecified, multicast...).
    NotConnectable,
    /// Someone answered, but with a certificate other than the peer's.
    WrongCertificate,
    /// The other end rejected our certificate.
    RejectedByPeer,
    /// The other end closed the connection without confirming it (it chose
    /// another connection, or is not a ferry peer).
    ClosedByPeer,
    /// Something answered, but not as a ferry peer (no `ferry/1` ALPN, no
    /// confirmation).
    NotFerry,
    /// Another TLS failure.
    Tls(String),
    /// Another socket error.
    Io(String),
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::Refused => f.write_str("refused"),
            FailureReason::TimedOut => f.write_str("timed out"),
            FailureReason::Unreachable => f.write_str("unreachable"),
            FailureReason::NotConnectable => f.write_str("not a connectable address"),
            FailureReason::WrongCertificate => f.write_str("wrong certificate"),
            FailureReason::RejectedByPeer => f.write_str("our certificate was rejected"),
            FailureReason::ClosedByPeer => f.write_str("closed without confirmation"),
            FailureReason::NotFerry => f.write_str("not a ferry peer"),
            FailureReason::Tls(message) => write!(f, "TLS error: {message}"),
            FailureReason::Io(message) => write!(f, "{message}"),
        }
    }
}

impl fmt::Display for CandidateFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.addr, self.reason)
    }
}

fn list_failures(failures: &[CandidateFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn hint(failures: &[CandidateFailure]) -> &'static str {
    let certificate_trouble = failures.iter().any(|f| {
        matches!(
            f.reason,
            FailureReason::WrongCertificate | FailureReason::RejectedByPeer
        )
    });
    if certificate_trouble {
        "something other than the paired peer answered; if this repeats, \
         start over with a new code"
    } else {
        "the peers may be on networks that cannot reach each other"
    }
}

/// Why hole punching failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PunchFailure {
    /// No valid probe from the peer ever arrived.
    NoAnswer,
    /// The peer's probes arrived but none of ours were answered: a typical
    /// sign of a symmetric NAT on one side and a filtering NAT on the other.
    OneWayOnly,
    /// Probes worked both ways, but the controlling side never nominated a
    /// path (we are the controlled side).
    NotNominated,
    /// We nominated a path but the peer never acknowledged it.
    NominationUnanswered,
}

impl fmt::Display for PunchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PunchFailure::NoAnswer => "no probe from the peer arrived",
            PunchFailure::OneWayOnly => {
                "the peer's probes arrived but ours were never answered (a symmetric NAT?)"
            }
            PunchFailure::NotNominated => "the peer never chose a path",
            PunchFailure::NominationUnanswered => "the peer never acknowledged the chosen path",
        })
    }
}

/// "3 attempts (refused x2, timed out)": consecutive equal reasons merged.
pub(crate) fn describe_attempts(attempts: &[FailureReason]) -> String {
    if attempts.is_empty() {
        return "no attempt was made before the deadline".to_owned();
    }
    let mut runs: Vec<(&FailureReason, usize)> = Vec::new();
    for reason in attempts {
        match runs.last_mut() {
            Some((last, count)) if *last == reason => *count += 1,
            _ => runs.push((reason, 1)),
        }
    }
    let runs: Vec<String> = runs
        .into_iter()
        .map(|(reason, count)| {
            if count == 1 {
                reason.to_string()
            } else {
                format!("{reason} x{count}")
            }
        })
        .collect();
    format!(
        "{} attempt{} ({})",
        attempts.len(),
        if attempts.len() == 1 { "" } else { "s" },
        runs.join(", ")
    )
}

/// What the user might do about a failed simultaneous open.
pub(crate) fn failure_hint(attempts: &[FailureReason]) -> &'static str {
    let certificate_trouble = attempts.iter().any(|reason| {
        matches!(
            reason,
            FailureReason::WrongCertificate | FailureReason::RejectedByPeer
        )
    });
    if certificate_trouble {
        "something other than the paired peer answered; if this repeats, start over with a new code"
    } else {
        "a NAT may change the port or block TCP simultaneous open; other paths may still work"
    }
}

/// Maps a socket or TLS error to what the user should hear about it.
pub(crate) fn classify_io(error: io::Error) -> FailureReason {
    if let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return match tls {
            rustls::Error::InvalidCertificate(_) => FailureReason::WrongCertificate,
            rustls::Error::AlertReceived(alert) if is_certificate_alert(*alert) => {
                FailureReason::RejectedByPeer
            }
            rustls::Error::NoApplicationProtocol
            | rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol) => {
                FailureReason::NotFerry
            }
            other => FailureReason::Tls(other.to_string()),
        };
    }
    match error.kind() {
        io::ErrorKind::ConnectionRefused => FailureReason::Refused,
        io::ErrorKind::TimedOut => FailureReason::TimedOut,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            FailureReason::Unreachable
        }
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => FailureReason::ClosedByPeer,
        _ => FailureReason::Io(error.to_string()),
    }
}

fn is_certificate_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_failed_lists_every_candidate_and_reason() {
        let error = ConnectError::AllFailed {
            failures: vec![
                CandidateFailure {
                    addr: "10.0.0.2:4100".parse().unwrap(),
                    reason: FailureReason::Refused,
                },
                CandidateFailure {
                    addr: "203.0.113.5:4100".parse().unwrap(),
                    reason: FailureReason::TimedOut,
                },
            ],
        };
        assert_eq!(
            error.to_string(),
            "no direct connection to the peer: tried 2 addresses (10.0.0.2:4100 refused, \
             203.0.113.5:4100 timed out); the peers may be on networks that cannot reach each other"
        );
    }

    #[test]
    fn certificate_failures_get_a_different_hint() {
        let error = ConnectError::AllFailed {
            failures: vec![CandidateFailure {
                addr: "127.0.0.1:4100".parse().unwrap(),
                reason: FailureReason::WrongCertificate,
            }],
        };
        let text = error.to_string();
        assert!(
            text.contains("tried 1 address (127.0.0.1:4100 wrong certificate)"),
            "{text}"
        );
        assert!(text.contains("new code"), "{text}");
    }

    #[test]
    fn attempts_are_described_with_runs_merged() {
        assert_eq!(
            describe_attempts(&[]),
            "no attempt was made before the deadline"
        );
        assert_eq!(
            describe_attempts(&[FailureReason::TimedOut]),
            "1 attempt (timed out)"
        );
        assert_eq!(
            describe_attempts(&[
                FailureReason::Refused,
                FailureReason::Refused,
                FailureReason::TimedOut,
                FailureReason::Refused,
            ]),
            "4 attempts (refused x2, timed out, refused)"
        );
    }

    #[test]
    fn classifies_socket_errors() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_io(refused), FailureReason::Refused);
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(classify_io(eof), FailureReason::ClosedByPeer);
        let unreachable = io::Error::from(io::ErrorKind::NetworkUnreachable);
        assert_eq!(classify_io(unreachable), FailureReason::Unreachable);
    }

    #[test]
    fn classifies_tls_errors() {
        let wrong = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ),
        );
        assert_eq!(classify_io(wrong), FailureReason::WrongCertificate);
        let rejected = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::AccessDenied),
        );
        assert_eq!(classify_io(rejected), FailureReason::RejectedByPeer);
        let other = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
        );
        assert!(matches!(classify_io(other), FailureReason::Tls(_)));
    }
}
