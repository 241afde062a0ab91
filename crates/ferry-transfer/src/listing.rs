//! What a receiver should be shown of an offer before it is asked: every
//! top-level entry (a file with its size, a folder with its file count
//! and size) and, flagged, every hidden path (a component starting with
//! `.`) and every executable file. Without it a sender could slip
//! `.git/hooks/post-checkout` (mode 0755) in after a screenful of decoys.
//!
//! Pure over the manifest; the binary renders the [`Listing`] (names are
//! untrusted: escape them before showing).

use std::collections::HashMap;

use crate::{EntryKind, Manifest};

/// An offer, summed up for the receiver.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The top-level entries, in offer order.
    pub top: Vec<Top>,
    /// Hidden paths and executable files, in offer order.
    pub flagged: Vec<Flagged>,
}

/// One top-level entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Top {
    /// Its name (untrusted: escape before showing).
    pub name: String,
    /// A folder (anything below it), or a single file.
    pub folder: bool,
    /// Files at or below it.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// A path the receiver should notice.
#[derive(Debug, PartialEq, Eq)]
pub struct Flagged {
    /// The path: a hidden prefix (`.git/`, with a slash for a folder) or
    /// an executable file.
    pub path: String,
    /// It is the shortest hidden prefix of an offered path: its last
    /// component starts with `.`.
    pub hidden: bool,
    /// A file with an execute bit.
    pub executable: bool,
}

/// Sums `manifest` up.
pub fn summarize(manifest: &Manifest) -> Listing {
    let mut listing = Listing::default();
    let mut top_index: HashMap<&str, usize> = HashMap::new();
    let mut flag_index: HashMap<String, usize> = HashMap::new();
    for entry in &manifest.entries {
        let (size, file, mode) = match entry.kind {
            EntryKind::File { size, mode } => (size, true, mode),
            EntryKind::Dir { mode } => (0, false, mode),
        };
        let (first, below) = match entry.path.split_once('/') {
            Some((first, _)) => (first, true),
            None => (entry.path.as_str(), false),
        };
        let at = *top_index.entry(first).or_insert_with(|| {
            listing.top.push(Top {
                name: first.to_string(),
                folder: false,
                files: 0,
                bytes: 0,
            });
            listing.top.len() - 1
        });
        let top = &mut listing.top[at];
        top.folder |= below || !file;
        if file {
            top.files += 1;
            top.bytes = top.bytes.saturating_add(size);
        }

        let components: Vec<&str> = entry.path.split('/').collect();
        let mut flag = |path: String, hidden: bool, executable: bool| {
            let at = *flag_index.entry(path.clone()).or_insert_with(|| {
                listing.flagged.push(Flagged {
                    path,
                    hidden: false,
                    executable: false,
                });
                listing.flagged.len() - 1
            });
            listing.flagged[at].hidden |= hidden;
            listing.flagged[at].executable |= executable;
        };
        // The shortest hidden prefix stands for everything below it.
        if let Some(i) = components.iter().position(|c| c.starts_with('.')) {
            let mut prefix = components[..=i].join("/");
            if i + 1 < components.len() || !file {
                prefix.push('/');
            }
            flag(prefix, true, false);
        }
        // Hidden as well only when it is that prefix itself (`.run.sh`);
        // below a hidden folder, the folder's line says it.
        if file && mode & 0o111 != 0 {
            flag(entry.path.clone(), false, true);
        }
    }
    listing
}
