//! The control messages of the transfer protocol and the manifest they carry.
//!
//! These are the JSON payloads of control frames (see [`crate::codec`]).
//! Bulk data never travels as JSON.

use serde::{Deserialize, Serialize};

/// The transfer protocol version, carried in [`Control::Offer`] and
/// [`Control::Accept`]; the peers refuse each other unless both speak the
/// same one. 2: a data frame's hash is the chaining value of its chunk's
/// subtree in the file's BLAKE3 tree ([`chunk_hash`](crate::chunk_hash)),
/// chunks are exactly [`CHUNK_SIZE`](crate::CHUNK_SIZE) bytes. 1 (peers
/// that send no version): a data frame's hash was `blake3::hash` of the
/// chunk, so a chunk from one would fail verification at the other.
pub const TRANSFER_VERSION: u32 = 2;

/// The version of peers from before the version field.
fn first_version() -> u32 {
    1
}

/// What a sender offers: a set of files and directories, or a text message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Offer {
    /// Files and directories, described by their manifest.
    Files(Manifest),
    /// A short text message (bounded by the control frame limit).
    Text(String),
}

/// The list of entries a sender offers, in the order the files are sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Manifest {
    /// Every file and directory, with relative `/`-separated paths.
    pub entries: Vec<Entry>,
}

/// One file or directory of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path, components separated by `/`. Untrusted on the receiver:
    /// always pass it through [`crate::path::sanitize`].
    pub path: String,
    /// File (with size) or directory.
    pub kind: EntryKind,
}

/// Whether an [`Entry`] is a file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file.
    File {
        /// Size in bytes.
        size: u64,
        /// Unix permission bits (masked to `0o777` on apply).
        mode: u32,
    },
    /// A directory (listed so that empty directories survive).
    Dir {
        /// Unix permission bits (masked to `0o777` on apply).
        mode: u32,
    },
}

impl Manifest {
    /// Number of file entries.
    pub fn file_count(&self) -> usize {
        self.files().count()
    }

    /// Number of directory entries.
    pub fn dir_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Dir { .. }))
            .count()
    }

    /// Sum of all file sizes (saturating, a hostile manifest cannot overflow it).
    pub fn total_bytes(&self) -> u64 {
        self.files()
            .fold(0u64, |acc, (_, size, _)| acc.saturating_add(size))
    }

    /// The file entries in send order as `(path, size, mode)`. The n-th item
    /// is file index `n` in [`Control::FileStart`] and [`Control::Accept`].
    pub fn files(&self) -> impl Iterator<Item = (&str, u64, u32)> {
        self.entries.iter().filter_map(|e| match e.kind {
            EntryKind::File { size, mode } => Some((e.path.as_str(), size, mode)),
            EntryKind::Dir { .. } => None,
        })
    }
}

/// How much of one file the receiver already holds (from a `.ferry-part`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// Bytes already held; 0 for a fresh start. A multiple of
    /// [`CHUNK_SIZE`](crate::CHUNK_SIZE), or the whole file.
    pub offset: u64,
    /// Hex BLAKE3 of those `offset` bytes (empty when `offset` is 0).
    pub prefix_hash: String,
}

impl ResumePoint {
    /// A fresh start at offset 0.
    pub fn fresh() -> Self {
        Self {
            offset: 0,
            prefix_hash: String::new(),
        }
    }
}

/// A JSON control message. The direction each one travels is documented on
/// the variant; see the flow diagram in the crate docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Sender → receiver, first message.
    Offer {
        /// What is offered.
        offer: Offer,
        /// The sender's [`TRANSFER_VERSION`] (1 when absent).
        #[serde(default = "first_version")]
        version: u32,
    },
    /// Receiver → sender: go ahead; one [`ResumePoint`] per file, in
    /// manifest file order.
    Accept {
        /// Resume points, one per file entry.
        files: Vec<ResumePoint>,
        /// The receiver's [`TRANSFER_VERSION`] (1 when absent).
        #[serde(default = "first_version")]
        version: u32,
    },
    /// Receiver → sender: refused.
    Decline {
        /// Human-readable reason.
        reason: String,
    },
    /// Receiver → sender: text message received.
    Ack,
    /// Sender → receiver: the data frames that follow belong to file `index`
    /// starting at `offset`; `offset` is either the receiver's resume offset
    /// (prefix matched) or 0 (restart: the receiver truncates its part file).
    FileStart {
        /// Index among the manifest's files.
        index: usize,
        /// Where the data frames start.
        offset: u64,
    },
    /// Sender → receiver, between two data frames or two files: the
    /// transfer moves to another path here (a direct one that came up
    /// after the relay); nothing more comes on this stream. The sender
    /// offers again on the new path and the receiver answers with what it
    /// holds, so no byte is lost or sent twice. Only sent to a peer that
    /// said it understands it (ferry-session's "move" feature).
    Move,
    /// Receiver → sender: everything written and verified.
    Done {
        /// Whether all files verified.
        ok: bool,
    },
    /// Either direction: the peer gives up, with its reason.
    Error {
        /// Human-readable reason.
        message: String,
        /// What the error is about, when it is one the other side's user
        /// can act on (peers before this field send none; it is then left
        /// out of the JSON).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<ErrorCode>,
    },
}

/// What an [`Control::Error`] is about, beside its message for people: the
/// peer's program can then tell its user what to do in its own terms (the
/// receiver's options are not the sender's to name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// A file of the offer already exists where the receiver writes
    /// ([`TransferError::Exists`](crate::TransferError::Exists)): the
    /// receiver may allow overwriting or choose another folder.
    Exists,
    /// The offer has an entry inside a `.git` folder
    /// ([`TransferError::GitDir`](crate::TransferError::GitDir)): the
    /// receiver may allow them.
    GitDir,
    /// A code from a newer peer that this version does not know.
    #[serde(other)]
    Unknown,
}
