//! What can go wrong on the journey, as one error type.

use ferry_connect::ConnectError;
use ferry_connect::race::{PathFailure, PathKind};
use ferry_proto::code::CodeError;
use ferry_proto::pairing::PairingError;
use ferry_rendezvous::SignalError;

use crate::PeerGone;

/// What can go wrong between "connect to the server" and "secure stream".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Talking to the rendezvous server failed.
    #[error(transparent)]
    Signal(#[from] SignalError),
    /// The code the user chose is not a valid code.
    #[error("{text:?} is not a valid code ({problem}); a code looks like 7-orbit-lantern")]
    BadCode {
        /// What the user typed.
        text: String,
        /// Why it does not parse.
        problem: CodeError,
    },
    /// The two sides used different codes.
    #[error(
        "the code did not match: check it for typos and ask the sender for a new code \
         (this one is now used up)"
    )]
    CodeMismatch,
    /// The peer sent something pairing cannot accept.
    #[error("pairing with the peer failed: {0}")]
    Pairing(PairingError),
    /// The peer left, cancelled, or stopped answering.
    #[error("{0}")]
    PeerGone(PeerGone),
    /// A path could not be set up locally.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Every path failed.
    #[error("{}", no_path_message(.failures, *.relay_forced))]
    NoPath {
        /// Each path tried, and why it failed.
        failures: Vec<(PathKind, PathFailure)>,
        /// `--force-path relay` was asked for.
        relay_forced: bool,
    },
    /// The proxy did not get us to the rendezvous server (boxed: it is
    /// large and rare).
    #[error(transparent)]
    Proxy(Box<ferry_proxy::ProxyError>),
    /// A local socket problem.
    #[error("local network error: {0}")]
    Io(#[from] std::io::Error),
    /// The rendezvous server went away while we waited for the receiver
    /// and did not come back, or came back without our nameplate.
    #[error("{0}")]
    ServerLost(String),
}

pub(crate) fn no_path_message(failures: &[(PathKind, PathFailure)], relay_forced: bool) -> String {
    if relay_forced && failures.is_empty() {
        return "only the relay was allowed, but the rendezvous server offers no relay; \
                allow direct paths too, or use a server that relays"
            .into();
    }
    let tried: Vec<String> = failures
        .iter()
        .map(|(kind, why)| format!("{kind}: {why}"))
        .collect();
    format!(
        "no direct path to the peer ({}); both networks may block direct connections \
         (e.g. symmetric NATs on both sides); run `ferry nat` on each side to see why",
        if tried.is_empty() {
            "nothing could be tried".to_string()
        } else {
            tried.join("; ")
        }
    )
}

impl From<ferry_proxy::ProxyError> for SessionError {
    fn from(e: ferry_proxy::ProxyError) -> Self {
        SessionError::Proxy(Box::new(e))
    }
}

impl From<PairingError> for SessionError {
    fn from(e: PairingError) -> Self {
        match e {
            PairingError::CodeMismatch => SessionError::CodeMismatch,
            other => SessionError::Pairing(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_path_message_lists_every_path() {
        let text = no_path_message(
            &[
                (PathKind::Quic, PathFailure::Failed("no answer".into())),
                (PathKind::Tcp, PathFailure::Failed("refused".into())),
            ],
            false,
        );
        assert!(text.contains("direct QUIC over UDP: no answer"), "{text}");
        assert!(text.contains("direct TCP: refused"), "{text}");
        // No flag is named here: the binary says which flags (cli.rs).
        assert!(no_path_message(&[], true).contains("offers no relay"));
        assert!(!no_path_message(&[], true).contains("--"));
    }
}
