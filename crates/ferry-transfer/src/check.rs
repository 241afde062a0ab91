//! Whole-manifest checks on the receiver, pure (no IO): bounded size,
//! depth and path bytes, safe names ([`sanitize`]), no `.git` folder unless
//! allowed, and a tree that means the same on every file system: no entry
//! listed twice, no two names that differ only by case, nothing inside a
//! file, no file whose `.ferry-part` name is another entry.
//!
//! The manifest itself is already bounded by the control frame limit
//! ([`crate::MAX_CONTROL_LEN`]), which the codec checks from the frame
//! header before reading or allocating anything; these limits bound what
//! the receiver builds from it (folders implied by paths included), and
//! they are checked before anything is created on disk.

use std::collections::HashMap;

use crate::error::TransferError;
use crate::message::{EntryKind, Manifest};
use crate::path::{PART_SUFFIX, RelativePath, sanitize};

/// Bounds on what an offered manifest may ask the receiver to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestLimits {
    /// Most files and folders, folders implied by paths included
    /// (default 100,000: twice a large photo library).
    pub max_entries: usize,
    /// Most components of one path (default 64).
    pub max_depth: usize,
    /// Most bytes of all paths together (default 16 MiB).
    pub max_total_path_bytes: usize,
}

/// Default of [`ManifestLimits::max_entries`].
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// Default of [`ManifestLimits::max_depth`].
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// Default of [`ManifestLimits::max_total_path_bytes`].
pub const DEFAULT_MAX_TOTAL_PATH_BYTES: usize = 16 * 1024 * 1024;

impl Default for ManifestLimits {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_total_path_bytes: DEFAULT_MAX_TOTAL_PATH_BYTES,
        }
    }
}

impl ManifestLimits {
    /// No bound on counts, depth or total bytes (names are still checked):
    /// what the sender uses on its own files, leaving the bounds to the
    /// receiver.
    pub fn unbounded() -> Self {
        Self {
            max_entries: usize::MAX,
            max_depth: usize::MAX,
            max_total_path_bytes: usize::MAX,
        }
    }
}

/// Checks every path of an offered manifest and its consistency (see the
/// module doc). Returns the sanitized paths in entry order. `allow_git`
/// accepts entries inside a `.git` folder.
pub fn validate_manifest(
    manifest: &Manifest,
    limits: &ManifestLimits,
    allow_git: bool,
) -> Result<Vec<RelativePath>, TransferError> {
    let entries = manifest.entries.len();
    if entries > limits.max_entries {
        return Err(too_large("files and folders", entries, limits.max_entries));
    }
    let mut total_bytes = 0usize;
    let mut paths = Vec::with_capacity(entries);
    let mut tree = Tree::default();
    for entry in &manifest.entries {
        total_bytes = total_bytes.saturating_add(entry.path.len());
        if total_bytes > limits.max_total_path_bytes {
            return Err(too_large(
                "bytes of file names",
                total_bytes,
                limits.max_total_path_bytes,
            ));
        }
        let rel = sanitize(&entry.path)?;
        let depth = rel.components().count();
        if depth > limits.max_depth {
            return Err(unsafe_path(
                &entry.path,
                format!(
                    "nested {depth} folders deep, the limit is {}",
                    limits.max_depth
                ),
            ));
        }
        if !allow_git && rel.components().any(is_git_dir) {
            return Err(TransferError::GitDir {
                path: entry.path.clone(),
            });
        }
        tree.insert(&rel, entry.kind, limits.max_entries)?;
        paths.push(rel);
    }
    tree.check_part_names()?;
    Ok(paths)
}

/// Whether a path component names a `.git` folder on some file system:
/// any case, characters HFS+ ignores (CVE-2014-9390), or the NTFS short
/// name `GIT~1`.
pub fn is_git_dir(component: &str) -> bool {
    let folded: String = component
        .chars()
        .filter(|&c| !is_ignorable(c))
        .collect::<String>()
        .to_lowercase();
    folded == ".git" || folded == "git~1"
}

/// Code points HFS+ drops when comparing names.
fn is_ignorable(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{206A}'..='\u{206F}' | '\u{FEFF}')
}

fn too_large(what: &'static str, found: usize, limit: usize) -> TransferError {
    TransferError::OfferTooLarge { what, found, limit }
}

fn unsafe_path(path: &str, reason: String) -> TransferError {
    TransferError::UnsafePath {
        path: path.to_owned(),
        reason,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    /// A folder only named as a parent.
    Implied,
    Dir,
    File,
}

#[derive(Debug)]
struct Node {
    parent: usize,
    name: Box<str>,
    kind: NodeKind,
    has_children: bool,
}

/// The manifest as a tree keyed by lowercase names, so memory grows with
/// the distinct names (bounded by `max_entries`), not with paths × depth.
#[derive(Debug, Default)]
struct Tree {
    nodes: Vec<Node>,
    /// (parent node or [`ROOT`], lowercase name) -> node.
    index: HashMap<(usize, Box<str>), usize>,
}

const ROOT: usize = usize::MAX;

impl Tree {
    fn insert(
        &mut self,
        rel: &RelativePath,
        kind: EntryKind,
        max_entries: usize,
    ) -> Result<(), TransferError> {
        let path = rel.as_str();
        let kind = match kind {
            EntryKind::File { .. } => NodeKind::File,
            EntryKind::Dir { .. } => NodeKind::Dir,
        };
        let depth = rel.components().count();
        let mut parent = ROOT;
        for (i, name) in rel.components().enumerate() {
            let last = i + 1 == depth;
            let key = (parent, Box::<str>::from(name.to_lowercase()));
            let id = match self.index.get(&key) {
                Some(&id) => id,
                None => {
                    if self.nodes.len() >= max_entries {
                        return Err(too_large(
                            "files and folders (counting the folders in paths)",
                            self.nodes.len() + 1,
                            max_entries,
                        ));
                    }
                    self.nodes.push(Node {
                        parent,
                        name: name.into(),
                        kind: if last { kind } else { NodeKind::Implied },
                        has_children: !last,
                    });
                    self.index.insert(key, self.nodes.len() - 1);
                    parent = self.nodes.len() - 1;
                    continue;
                }
            };
            let node = &mut self.nodes[id];
            if *node.name != *name {
                return Err(unsafe_path(
                    path,
                    format!(
                        "\"{}\" differs only by case from \"{}\" of another entry; \
                         on macOS and Windows one would overwrite the other",
                        crate::path::escape(name),
                        crate::path::escape(&node.name)
                    ),
                ));
            }
            if !last {
                if node.kind == NodeKind::File {
                    return Err(unsafe_path(
                        path,
                        format!(
                            "its parent \"{}\" is offered as a file",
                            crate::path::escape(name)
                        ),
                    ));
                }
                node.has_children = true;
                parent = id;
                continue;
            }
            if node.kind != NodeKind::Implied {
                return Err(unsafe_path(path, "listed twice in the offer".into()));
            }
            if kind == NodeKind::File && node.has_children {
                return Err(unsafe_path(
                    path,
                    "offered as a file, but other entries are inside it".into(),
                ));
            }
            node.kind = kind;
        }
        Ok(())
    }

    /// No file's `NAME.ferry-part` may be another entry (in any case).
    fn check_part_names(&self) -> Result<(), TransferError> {
        for node in self.nodes.iter().filter(|n| n.kind == NodeKind::File) {
            let part = format!("{}{PART_SUFFIX}", node.name.to_lowercase());
            let key = (node.parent, Box::<str>::from(part));
            if let Some(&other) = self.index.get(&key) {
                return Err(unsafe_path(
                    &self.path_of(other),
                    "collides with the part file of another entry".into(),
                ));
            }
        }
        Ok(())
    }

    fn path_of(&self, mut id: usize) -> String {
        let mut names = Vec::new();
        while let Some(node) = self.nodes.get(id) {
            names.push(&*node.name);
            id = node.parent;
        }
        names.reverse();
        names.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Entry;

    fn file(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                size: 1,
                mode: 0o644,
            },
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir { mode: 0o755 },
        }
    }

    fn check(entries: Vec<Entry>) -> Result<Vec<RelativePath>, TransferError> {
        validate_manifest(&Manifest { entries }, &ManifestLimits::default(), false)
    }

    #[test]
    fn consistent_trees_pass() {
        let paths = check(vec![
            dir("a"),
            file("a/x"),
            dir("a/b"),
            file("a/b/y"),
            file("c/d/z"),
            file("c/d/w"),
            file("x.ferry-part"),
        ])
        .unwrap();
        assert_eq!(paths.len(), 7);
        assert_eq!(paths[3].as_str(), "a/b/y");
    }

    #[test]
    fn case_collisions_are_refused() {
        for entries in [
            vec![file("Readme"), file("README")],
            vec![dir("Photos"), file("photos/x")],
            vec![file("A/x"), file("a/y")],
            vec![file("straße/x"), file("STRASSE/x"), file("Straße/y")],
            vec![file("Ä"), file("ä")],
        ] {
            let e = check(entries.clone()).unwrap_err();
            assert!(
                matches!(&e, TransferError::UnsafePath { reason, .. } if reason.contains("case")),
                "{entries:?}: {e}"
            );
        }
    }

    #[test]
    fn inconsistent_trees_are_refused() {
        for entries in [
            vec![file("a"), file("a")],
            vec![dir("a"), dir("a")],
            vec![file("a"), file("a/b")],
            vec![file("a/b"), file("a")],
            vec![file("a"), file("A.ferry-part")],
            vec![file("d/f.ferry-part"), file("d/f")],
        ] {
            assert!(
                matches!(
                    check(entries.clone()),
                    Err(TransferError::UnsafePath { .. })
                ),
                "{entries:?}"
            );
        }
    }

    #[test]
    fn git_folders_need_permission() {
        for p in [
            ".git/hooks/post-checkout",
            "repo/.git/config",
            "repo/.GIT/config",
            "repo/.g\u{200c}it/config",
            "repo/GIT~1/config",
        ] {
            let e = check(vec![file(p)]).unwrap_err();
            assert!(
                matches!(&e, TransferError::GitDir { path } if path == p),
                "{p}: {e}"
            );
            // The sender is told by code that the receiver may allow it;
            // the flag that does is the binary's to name
            // (bin/ferry/tests/listing.rs).
            assert_eq!(e.code(), Some(crate::ErrorCode::GitDir), "{e}");
            assert!(e.to_string().contains(".git folder"), "{e}");
            let manifest = Manifest {
                entries: vec![file(p)],
            };
            assert!(validate_manifest(&manifest, &ManifestLimits::default(), true).is_ok());
        }
        assert!(check(vec![file("repo/.gitignore"), file("git/x")]).is_ok());
    }

    #[test]
    fn limits_are_enforced() {
        let limits = ManifestLimits {
            max_entries: 5,
            max_depth: 3,
            max_total_path_bytes: 20,
        };
        let run = |entries: Vec<Entry>| validate_manifest(&Manifest { entries }, &limits, false);
        let many: Vec<_> = (0..6).map(|i| file(&i.to_string())).collect();
        assert!(matches!(
            run(many),
            Err(TransferError::OfferTooLarge {
                found: 6,
                limit: 5,
                ..
            })
        ));
        // Folders implied by paths count too.
        let e = run(vec![file("a/b/c"), file("d/e/f")]).unwrap_err();
        assert!(
            matches!(e, TransferError::OfferTooLarge { limit: 5, .. }),
            "{e}"
        );
        let e = run(vec![file("a/b/c/d")]).unwrap_err();
        assert!(e.to_string().contains("4 folders deep"), "{e}");
        let e = run(vec![file("aaaaaaaaaaaa"), file("bbbbbbbbbbbb")]).unwrap_err();
        assert!(
            matches!(
                e,
                TransferError::OfferTooLarge {
                    found: 24,
                    limit: 20,
                    ..
                }
            ),
            "{e}"
        );
        assert!(run(vec![dir("a"), dir("a/b"), file("a/b/c")]).is_ok());
    }

    proptest::proptest! {
        /// Any manifest: no panic, and what passes is safe to create.
        #[test]
        fn accepted_paths_are_safe(
            raw in proptest::collection::vec(
                ("[a-zA-Z.\\x00-\\x1f\\u{7f}-\\u{9f}\\u{202a}-\\u{202e}<>:|?* /-]{0,12}", proptest::bool::ANY),
                0..12,
            )
        ) {
            let entries: Vec<Entry> = raw
                .iter()
                .map(|(p, is_file)| if *is_file { file(p) } else { dir(p) })
                .collect();
            if let Ok(paths) = check(entries) {
                let mut lower = std::collections::HashSet::new();
                for p in &paths {
                    proptest::prop_assert!(!p.as_str().chars().any(crate::path::is_dangerous_char));
                    proptest::prop_assert!(p.components().all(|c| c != ".." && c != "." && !c.is_empty()));
                    proptest::prop_assert!(!p.components().any(is_git_dir));
                    proptest::prop_assert!(lower.insert(p.as_str().to_lowercase()));
                }
            }
        }
    }
}
