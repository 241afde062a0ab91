//! ferry-transfer: chunked, BLAKE3-verified transfer of files, folders or a
//! text message, with resume, over any `AsyncRead + AsyncWrite` stream (in
//! practice the secure stream between the two peers: TLS 1.3 over TCP or
//! the relay, or QUIC). It does not connect, encrypt or authenticate: that
//! is done before the stream reaches it (`ferry-session`, with the path
//! mechanics of `ferry-connect`), and it depends on neither. The receiver
//! treats everything from the peer as hostile: paths are sanitized and
//! bounded before anything is written, nothing below the output directory
//! is followed through a link, and every chunk and file is verified before
//! a file takes its final name. After a broken path, a new stream resumes
//! from the `.ferry-part` files ([`ReceiveOptions::finished`] keeps the
//! files completed before the break).
//!
//! Layers:
//! - [`codec`]: pure frame codec `[u8 kind][u32 BE length][payload]`.
//! - [`message`]: JSON control messages and the [`Manifest`].
//! - [`protocol`]: sans-IO state machines ([`SenderCore`], [`ReceiverCore`]).
//! - [`path`]: receiver-side name safety (no escapes, controls, bidi
//!   overrides or Windows-reserved names), and [`escape`] for showing
//!   untrusted text.
//! - [`validate_manifest`]: whole-manifest bounds ([`ManifestLimits`]), case
//!   collisions, `.git` folders.
//! - `fsx` (private): file operations that never follow a link below the
//!   output directory (`openat`/`O_NOFOLLOW`, no-replace rename, `fchmod`
//!   with the umask).
//! - [`scan()`], [`send()`], [`receive_offer`] + [`Incoming`]: the file-system side
//!   and thin tokio drivers.
//!
//! Message flow:
//!
//! ```text
//! sender                                          receiver
//!   | -- Offer{Files(manifest) | Text(msg)} ---------> |  sanitize paths, check
//!   |                                                  |  existing files
//!   | <-- Accept{files:[{offset, prefix_hash}]} ------ |  .ferry-part lengths + BLAKE3
//!   |     (Text: Ack)   or   Decline{reason}           |  of their bytes; free space
//!   | for every file, in manifest order:               |
//!   |   hash own first `offset` bytes; match -> resume |
//!   | -- FileStart{index, offset | 0 = restart} -----> |  truncate part if 0
//!   | -- Data[32-byte chunk_hash | chunk] * n -------> |  verify, write NAME.ferry-part
//!   | -- FileEnd[32-byte BLAKE3(whole file)] --------> |  verify, fsync, chmod, rename
//!   | <---------------------------------- Done{ok} --- |
//!   either side, at any time: Error{message}, then close
//!   sender, at a chunk boundary (send_moving): Move, then close; both
//!   continue on another stream with Offer / Accept as after a break
//! ```
//!
//! Every data frame but a file's last carries exactly [`CHUNK_SIZE`] bytes,
//! at multiples of it. Each chunk is hashed once: its [`chunk_hash`] is the
//! chaining value of its subtree in the file's BLAKE3 tree, and the
//! whole-file hash is merged from those ([`FileHash`], module `hash`), on
//! both sides. It is computed while streaming (only a resumed prefix is
//! hashed before its file's first byte moves). On both sides a blocking
//! disk thread and the network task are connected by a bounded channel of
//! [`PIPELINE_DEPTH`] chunks, so hashing, disk and network overlap.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

mod check;
pub mod codec;
mod error;
mod fsx;
mod hash;
mod io;
pub mod listing;
pub mod message;
pub mod path;
pub mod protocol;
mod receive;
mod scan;
mod send;

use std::time::Duration;

pub use check::{
    DEFAULT_MAX_DEPTH, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_TOTAL_PATH_BYTES, ManifestLimits,
    is_git_dir,
};
pub use codec::{CHUNK_SIZE, CodecError, Frame, MAX_CHUNK, MAX_CONTROL_LEN, MAX_DATA_LEN};
pub use error::TransferError;
pub use hash::{FileHash, HashError, chunk_hash};
pub use io::{ANSWER_TIMEOUT, FINISH_TIMEOUT, IO_TIMEOUT, PIPELINE_DEPTH, WRITE_TIMEOUT};
pub use message::{
    Control, Entry, EntryKind, ErrorCode, Manifest, Offer, ResumePoint, TRANSFER_VERSION,
};
pub use path::{RelativePath, UnsafePath, escape, is_dangerous_char, sanitize};
pub use protocol::{PART_SUFFIX, ReceiverCore, SenderCore, validate_manifest};
pub use receive::{
    ENTRY_SPACE, Incoming, ReceiveOptions, cancel_receiving, receive_offer, resume_offer,
};
pub use scan::{Source, scan};
pub use send::{SendOutcome, send, send_moving};

/// Progress of a transfer, reported to the caller's callback: file
/// boundaries always, [`Event::Progress`] at most about ten times a second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A file starts (possibly resumed).
    FileStarted {
        /// Manifest path.
        path: String,
        /// File size.
        size: u64,
        /// Bytes the receiver already had.
        resumed_from: u64,
    },
    /// Bytes done over the whole transfer, resumed bytes included.
    Progress {
        /// Bytes done (resumed or moved).
        bytes_done: u64,
        /// Bytes in the whole transfer.
        bytes_total: u64,
    },
    /// A file is complete (sender: all sent; receiver: verified and renamed).
    FileDone {
        /// Manifest path.
        path: String,
    },
}

/// Summary of a completed file transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Number of files.
    pub files: usize,
    /// Size of all files.
    pub bytes_total: u64,
    /// Bytes actually moved over the connection this time.
    pub bytes_transferred: u64,
    /// Bytes that were already on the receiver and not sent again.
    pub bytes_resumed: u64,
    /// Time from the start of the call to the end.
    pub elapsed: Duration,
}
