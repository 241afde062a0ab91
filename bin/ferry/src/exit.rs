//! Exit codes (documented in `--help`, see `cli::EXIT_CODES_HELP`) and the
//! mapping from errors to them.

use std::fmt;

use ferry_session::SessionError;
use ferry_transfer::TransferError;

/// Success.
pub const OK: i32 = 0;
/// Anything not covered below.
pub const OTHER: i32 = 1;
/// Bad command-line usage.
pub const USAGE: i32 = 2;
/// The code did not match.
pub const CODE_MISMATCH: i32 = 3;
/// Could not reach the rendezvous server or the peer.
pub const NETWORK: i32 = 4;
/// Data failed verification.
pub const INTEGRITY: i32 = 5;
/// Declined, cancelled, or the peer went away.
pub const PEER: i32 = 6;
/// A local file problem.
pub const LOCAL: i32 = 7;
/// Interrupted by Ctrl-C.
pub const INTERRUPTED: i32 = 130;

/// What an interrupted command says.
pub const INTERRUPTED_MESSAGE: &str =
    "interrupted; run the same command again to resume (partial files are kept as .ferry-part)";

/// An error the CLI itself raises, with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code.
    pub code: i32,
    /// One line: what happened and what to do.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    fn error(code: i32, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            code,
            message: message.into(),
        })
    }
    /// Bad usage.
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Self::error(USAGE, message)
    }
    /// Network trouble.
    pub fn network(message: impl Into<String>) -> anyhow::Error {
        Self::error(NETWORK, message)
    }
    /// The peer declined, cancelled or vanished.
    pub fn peer_gone(message: impl Into<String>) -> anyhow::Error {
        Self::error(PEER, message)
    }
    /// A local file problem.
    pub fn local(message: impl Into<String>) -> anyhow::Error {
        Self::error(LOCAL, message)
    }
    pub fn interrupted() -> anyhow::Error {
        Self::error(INTERRUPTED, INTERRUPTED_MESSAGE)
    }
}

/// The exit code and the one-line message for an error: what happened,
/// and what to do when [`advice`](crate::advice) knows.
pub fn classify(err: &anyhow::Error) -> (i32, String) {
    let message = match crate::advice::for_error(err) {
        Some(advice) => format!("{err:#}; {advice}"),
        None => format!("{err:#}"),
    };
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return (f.code, message);
        }
        if let Some(e) = cause.downcast_ref::<TransferError>() {
            return (transfer_code(e), message);
        }
        if let Some(e) = cause.downcast_ref::<SessionError>() {
            return (session_code(e), message);
        }
        if cause
            .downcast_ref::<ferry_proto::pairing::PairingError>()
            .is_some()
        {
            return (CODE_MISMATCH, message);
        }
        if cause
            .downcast_ref::<ferry_rendezvous::SignalError>()
            .is_some()
            || cause
                .downcast_ref::<ferry_connect::ConnectError>()
                .is_some()
        {
            return (NETWORK, message);
        }
    }
    (OTHER, message)
}

fn transfer_code(e: &TransferError) -> i32 {
    use TransferError as T;
    match e {
        T::ChunkMismatch { .. } | T::FileMismatch { .. } => INTEGRITY,
        T::Declined(_)
        | T::PeerClosed
        | T::PeerError { .. }
        | T::OfferTooLarge { .. }
        | T::OfferChanged => PEER,
        T::GitDir { .. } | T::Unsendable { .. } => LOCAL,
        T::Stream(_) => NETWORK,
        T::Io { .. }
        | T::UnsafePath { .. }
        | T::Exists { .. }
        | T::NoSpace { .. }
        | T::DiskFull { .. } => LOCAL,
        _ => OTHER,
    }
}

fn session_code(e: &SessionError) -> i32 {
    match e {
        SessionError::CodeMismatch | SessionError::Pairing(_) => CODE_MISMATCH,
        SessionError::BadCode { .. } => USAGE,
        SessionError::PeerGone(_) => PEER,
        _ => NETWORK,
    }
}
