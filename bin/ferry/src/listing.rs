//! What the receiver is shown before it is asked: every top-level entry of
//! an offer (a file with its size, a folder with its file count and size),
//! and, never cut, every hidden path (a component starting with `.`) and
//! every executable file, flagged. Without it a sender could slip
//! `.git/hooks/post-checkout` (mode 0755) in after a screenful of decoys.
//!
//! The summary itself is `ferry_transfer::listing` (pure over the
//! manifest); this renders it, for people and as JSON.

pub use ferry_transfer::listing::{Listing, summarize};
use ferry_transfer::{EntryKind, Manifest};
use indicatif::HumanBytes;
use serde_json::{Value, json};

use crate::escape;
use crate::send::plural;

/// The most top-level entries listed before "... and N more" (flagged
/// paths are listed in full regardless; `--list` lists every entry).
pub const TOP_LIMIT: usize = 200;

/// The human lines: the summary, the top-level entries (up to
/// [`TOP_LIMIT`] unless `all`), then the flagged paths, all of them.
/// Every name is escaped.
pub fn render(manifest: &Manifest, listing: &Listing, all: bool) -> Vec<String> {
    let mut lines = vec![format!(
        "Offered: {} file{} and {} folder{}, {} in all:",
        manifest.file_count(),
        plural(manifest.file_count()),
        manifest.dir_count(),
        plural(manifest.dir_count()),
        HumanBytes(manifest.total_bytes())
    )];
    if all {
        for entry in &manifest.entries {
            lines.push(match entry.kind {
                EntryKind::File { size, .. } => {
                    format!("    {} ({})", escape::line(&entry.path), HumanBytes(size))
                }
                EntryKind::Dir { .. } => format!("    {}/", escape::line(&entry.path)),
            });
        }
    } else {
        for top in listing.top.iter().take(TOP_LIMIT) {
            let name = escape::line(&top.name);
            lines.push(if top.folder {
                format!(
                    "    {name}/ (folder: {} file{}, {})",
                    top.files,
                    plural(top.files),
                    HumanBytes(top.bytes)
                )
            } else {
                format!("    {name} ({})", HumanBytes(top.bytes))
            });
        }
        if listing.top.len() > TOP_LIMIT {
            lines.push(format!(
                "    ... and {} more top-level entries (run again with --list to see every entry)",
                listing.top.len() - TOP_LIMIT
            ));
        }
    }
    if !listing.flagged.is_empty() {
        let hidden = listing.flagged.iter().filter(|f| f.hidden).count();
        let executable = listing.flagged.iter().filter(|f| f.executable).count();
        let mut kinds = Vec::new();
        if hidden > 0 {
            kinds.push(format!("{hidden} hidden path{}", plural(hidden)));
        }
        if executable > 0 {
            kinds.push(format!(
                "{executable} executable file{}",
                plural(executable)
            ));
        }
        lines.push(format!("! {}:", kinds.join(" and ")));
        for flagged in &listing.flagged {
            let tag = match (flagged.hidden, flagged.executable) {
                (true, true) => "hidden, executable",
                (false, true) => "executable",
                _ if flagged.path.ends_with('/') => "hidden folder",
                _ => "hidden",
            };
            lines.push(format!("!   {} ({tag})", escape::line(&flagged.path)));
        }
    }
    lines
}

/// The `top` and `flagged` fields of the JSON `offer` event.
pub fn to_json(listing: &Listing) -> (Value, Value) {
    let top = listing
        .top
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "kind": if t.folder { "folder" } else { "file" },
                "files": t.files,
                "bytes": t.bytes,
            })
        })
        .collect();
    let flagged = listing
        .flagged
        .iter()
        .map(|f| json!({"path": f.path, "hidden": f.hidden, "executable": f.executable}))
        .collect();
    (Value::Array(top), Value::Array(flagged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_transfer::Entry;

    fn file(path: &str, size: u64, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File { size, mode },
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir { mode: 0o755 },
        }
    }

    #[test]
    fn groups_top_level_and_flags_hidden_and_executable() {
        let manifest = Manifest {
            entries: vec![
                dir("photos"),
                file("photos/a.jpg", 10, 0o644),
                file("photos/b.jpg", 20, 0o644),
                file("notes.txt", 5, 0o644),
                file("bin/run", 7, 0o755),
                dir(".git"),
                file(".git/config", 1, 0o644),
                file(".git/hooks/post-checkout", 2, 0o755),
                file("photos/.thumbs/x", 3, 0o600),
            ],
        };
        let listing = summarize(&manifest);
        let tops: Vec<_> = listing
            .top
            .iter()
            .map(|t| (t.name.as_str(), t.folder, t.files, t.bytes))
            .collect();
        assert_eq!(
            tops,
            [
                ("photos", true, 3, 33),
                ("notes.txt", false, 1, 5),
                ("bin", true, 1, 7),
                (".git", true, 2, 3),
            ]
        );
        let flagged: Vec<_> = listing
            .flagged
            .iter()
            .map(|f| (f.path.as_str(), f.hidden, f.executable))
            .collect();
        assert_eq!(
            flagged,
            [
                ("bin/run", false, true),
                (".git/", true, false),
                (".git/hooks/post-checkout", false, true),
                ("photos/.thumbs/", true, false),
            ]
        );
        let lines = render(&manifest, &listing, false);
        assert!(lines.contains(&"    photos/ (folder: 3 files, 33 B)".to_string()));
        assert!(lines.contains(&"! 2 hidden paths and 2 executable files:".to_string()));
        assert!(lines.contains(&"!   .git/hooks/post-checkout (executable)".to_string()));
        assert!(lines.contains(&"!   .git/ (hidden folder)".to_string()));
    }

    #[test]
    fn a_long_offer_is_cut_but_never_its_flagged_paths() {
        let mut entries: Vec<Entry> = (0..250)
            .map(|i| file(&format!("f{i:03}"), 1, 0o644))
            .collect();
        entries.push(file(".sneaky\x1b[2J", 1, 0o755));
        let manifest = Manifest { entries };
        let listing = summarize(&manifest);
        let lines = render(&manifest, &listing, false);
        assert_eq!(lines.len(), 1 + TOP_LIMIT + 1 + 2, "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("... and 51 more top-level entries"))
        );
        assert_eq!(
            lines.last().unwrap(),
            "!   .sneaky\\x1b[2J (hidden, executable)"
        );
        let every = render(&manifest, &listing, true);
        assert_eq!(every.len(), 1 + 251 + 2);
    }
}
