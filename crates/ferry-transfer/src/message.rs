//! The control messages of the transfer protocol and the manifest they carry.
//!
//! These are the JSON payloads of control frames (see [`crate::codec`]).
//! Bulk data never travels as JSON.

use serde::{Deserialize, Serialize};

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

    /// Every top-level entry, in the order it first appears, with its
    /// size, file count, hidden entries and executables: what a receiver
    /// should show before asking, since a sender can hide anything after
    /// the first few names. Linear in the manifest size.
    pub fn top_level(&self) -> Vec<TopLevelEntry> {
        let mut out: Vec<TopLevelEntry> = Vec::new();
        let mut index = std::collections::HashMap::new();
        for entry in &self.entries {
            let (top, rest) = match entry.path.split_once('/') {
                Some((top, rest)) => (top, Some(rest)),
                None => (entry.path.as_str(), None),
            };
            let i = *index.entry(top).or_insert_with(|| {
                out.push(TopLevelEntry {
                    name: top.to_owned(),
                    is_dir: false,
                    bytes: 0,
                    files: 0,
                    hidden_entries: 0,
                    executables: 0,
                });
                out.len() - 1
            });
            let t = &mut out[i];
            if rest.is_some() || matches!(entry.kind, EntryKind::Dir { .. }) {
                t.is_dir = true;
            }
            if entry.path.split('/').any(|c| c.starts_with('.')) {
                t.hidden_entries += 1;
            }
            if let EntryKind::File { size, mode } = entry.kind {
                t.files += 1;
                t.bytes = t.bytes.saturating_add(size);
                if mode & 0o111 != 0 {
                    t.executables += 1;
                }
            }
        }
        out
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

/// One top-level entry of a [`Manifest`] with what lies below it, for the
/// listing a receiver shows before asking (see [`Manifest::top_level`]).
/// `name` is as offered: escape it before showing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopLevelEntry {
    /// The first path component, as offered (untrusted text).
    pub name: String,
    /// A folder (listed as one, or with entries inside).
    pub is_dir: bool,
    /// Bytes of all files in it (or of the file itself), saturating.
    pub bytes: u64,
    /// Number of files in it (1 for a file).
    pub files: usize,
    /// Entries in it (itself included) with a component starting with
    /// `.`, hidden from a usual listing.
    pub hidden_entries: usize,
    /// Files in it (itself included) with an execute bit.
    pub executables: usize,
}

impl TopLevelEntry {
    /// Whether anything here is hidden.
    pub fn has_hidden(&self) -> bool {
        self.hidden_entries > 0
    }

    /// Whether any file here is executable.
    pub fn has_executable(&self) -> bool {
        self.executables > 0
    }
}

/// How much of one file the receiver already holds (from a `.ferry-part`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// Bytes already held; 0 for a fresh start.
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
    },
    /// Receiver → sender: go ahead; one [`ResumePoint`] per file, in
    /// manifest file order.
    Accept {
        /// Resume points, one per file entry.
        files: Vec<ResumePoint>,
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
    /// Receiver → sender: everything written and verified.
    Done {
        /// Whether all files verified.
        ok: bool,
    },
    /// Either direction: the peer gives up, with its reason.
    Error {
        /// Human-readable reason.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            kind,
        }
    }

    #[test]
    fn top_level_summarises_every_top_entry() {
        let file = |size, mode| EntryKind::File { size, mode };
        let dir = EntryKind::Dir { mode: 0o755 };
        let mut entries: Vec<Entry> = (0..10)
            .map(|i| entry(&format!("decoy{i}.jpg"), file(10, 0o644)))
            .collect();
        entries.extend([
            entry("repo", dir),
            entry("repo/src", dir),
            entry("repo/src/main.rs", file(100, 0o644)),
            entry("repo/.git", dir),
            entry("repo/.git/hooks", dir),
            entry("repo/.git/hooks/post-checkout", file(50, 0o755)),
            entry(".bashrc", file(7, 0o644)),
            entry("run.sh", file(3, 0o700)),
            entry("implied/x", file(1, 0o644)),
        ]);
        let top = Manifest { entries }.top_level();
        assert_eq!(top.len(), 14);
        assert_eq!(top[0].name, "decoy0.jpg");
        let repo = &top[10];
        assert_eq!(
            repo,
            &TopLevelEntry {
                name: "repo".into(),
                is_dir: true,
                bytes: 150,
                files: 2,
                hidden_entries: 3,
                executables: 1,
            }
        );
        assert!(repo.has_hidden() && repo.has_executable());
        assert!(top[11].has_hidden() && !top[11].is_dir && top[11].files == 1);
        assert!(top[12].has_executable() && !top[12].has_hidden());
        assert!(top[13].is_dir && top[13].files == 1);
        assert!(!top[0].has_hidden() && !top[0].has_executable());
    }
}
