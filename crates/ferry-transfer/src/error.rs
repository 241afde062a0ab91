//! The error type of this crate.

use std::io;
use std::path::PathBuf;

use crate::codec::{CodecError, KIND_CONTROL};
use crate::message::ErrorCode;
use crate::path::{UnsafePath, escape};

/// Everything that can go wrong in a transfer. Messages are meant to be
/// shown to the user as they are: any text from the peer in them (names,
/// reasons, messages) is escaped with [`escape`], while the fields hold
/// it raw.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// A local file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading from or writing to the connection failed.
    #[error("connection failed: {0}")]
    Stream(#[source] io::Error),
    /// The connection was idle for too long.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The offer contains a path that could land outside the output
    /// directory or is otherwise unacceptable.
    #[error("refusing unsafe path \"{}\": {reason}", escape(path))]
    UnsafePath {
        /// The path as offered.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// The offer is larger than this receiver accepts.
    #[error(
        "the offer is too large: {found} {what}, the limit is {limit}; \
         ask the sender to send fewer files at a time (or one archive)"
    )]
    OfferTooLarge {
        /// What was counted.
        what: &'static str,
        /// How many the offer has (at least).
        found: usize,
        /// The limit.
        limit: usize,
    },
    /// The offer has an entry inside a `.git` folder, whose hooks and
    /// config can run commands on this computer; refused unless
    /// [`ReceiveOptions::allow_git`](crate::ReceiveOptions::allow_git).
    /// The sender is told with [`ErrorCode::GitDir`].
    #[error(
        "refusing \"{}\": it is inside a .git folder, whose hooks and settings can run \
         commands on this computer",
        escape(path)
    )]
    GitDir {
        /// The entry as offered.
        path: String,
    },
    /// A local file or folder cannot be offered as it is named (the
    /// receiver would refuse the name); the user should rename it.
    #[error("cannot send \"{}\": {reason}; rename it and try again", escape(&path.to_string_lossy()))]
    Unsendable {
        /// The local file or folder.
        path: PathBuf,
        /// What is wrong with the name.
        reason: String,
    },
    /// A file of the offer already exists in the output directory, and
    /// [`ReceiveOptions::overwrite`](crate::ReceiveOptions::overwrite) is
    /// off. The sender is told with [`ErrorCode::Exists`].
    #[error("{} already exists", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Not enough free space for the offer.
    #[error("not enough free space: need {needed} bytes, {available} available")]
    NoSpace {
        /// Bytes still to be received.
        needed: u64,
        /// Bytes available on the output file system.
        available: u64,
    },
    /// The disk filled up while writing; the `.ferry-part` file is kept so
    /// a later run can resume.
    #[error("disk full while writing {}; free some space and run again to resume", path.display())]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// A chunk did not match its hash (corruption in transit).
    #[error("{path}: chunk at offset {offset} failed verification")]
    ChunkMismatch {
        /// The file (manifest path).
        path: String,
        /// Offset of the chunk in the file.
        offset: u64,
    },
    /// The whole file did not match its hash; nothing was kept.
    #[error("{path}: file failed verification")]
    FileMismatch {
        /// The file (manifest path).
        path: String,
    },
    /// The receiver declined the offer.
    #[error("the receiver declined: {}", escape(.0))]
    Declined(String),
    /// The peer broke the protocol.
    #[error("protocol error: {}", escape(.0))]
    Protocol(String),
    /// The peers speak different transfer protocols (see
    /// [`TRANSFER_VERSION`](crate::TRANSFER_VERSION)); nothing was sent.
    #[error(
        "the sender speaks transfer protocol {sender}, the receiver {receiver}: install the same \
         ferry release on both sides"
    )]
    Version {
        /// The sender's version.
        sender: u32,
        /// The receiver's version.
        receiver: u32,
    },
    /// The peer closed the connection early.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// The peer reported an error and gave up.
    #[error("the peer reported: {}", escape(.message))]
    PeerError {
        /// Its words, raw (`Display` escapes them).
        message: String,
        /// What the error is about, when the peer said (see [`ErrorCode`]).
        code: Option<ErrorCode>,
    },
    /// After a reconnect the sender offered something else than the
    /// first time; the new offer was declined and nothing more written.
    #[error(
        "after reconnecting, the sender offered different files; stopped (what was received \
         so far is kept)"
    )]
    OfferChanged,
    /// The sender moved the transfer to another path at a chunk
    /// boundary ([`send_moving`](crate::send_moving), [`Control::Move`](crate::Control::Move)):
    /// everything before the boundary is sent (and, on the receiver,
    /// written), and the transfer resumes on the new path from there.
    #[error("the transfer moves to another path")]
    Moved,
    /// A bug or a crashed worker thread on our side.
    #[error("internal error: {0}")]
    Internal(String),
}

impl TransferError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether we should tell the peer about this error (not when the peer
    /// is gone or is the one who failed).
    pub(crate) fn worth_reporting(&self) -> bool {
        !matches!(
            self,
            Self::Stream(_)
                | Self::PeerClosed
                | Self::PeerError { .. }
                | Self::Timeout(_)
                | Self::Moved
        )
    }

    /// The code that tells the peer what this error is about, for the
    /// errors its user can ask ours to fix.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Exists { .. } => Some(ErrorCode::Exists),
            Self::GitDir { .. } => Some(ErrorCode::GitDir),
            _ => None,
        }
    }

    /// The peer's error frame as an error.
    pub(crate) fn from_peer(message: String, code: Option<ErrorCode>) -> Self {
        Self::PeerError { message, code }
    }
}

impl From<UnsafePath> for TransferError {
    fn from(e: UnsafePath) -> Self {
        Self::UnsafePath {
            path: e.path,
            reason: e.reason,
        }
    }
}

impl From<CodecError> for TransferError {
    fn from(e: CodecError) -> Self {
        match e {
            // In practice only an offer can be that large.
            CodecError::TooLarge {
                kind: KIND_CONTROL,
                len,
                limit,
            } => Self::OfferTooLarge {
                what: "bytes in one message",
                found: len,
                limit,
            },
            e => Self::Protocol(e.to_string()),
        }
    }
}
