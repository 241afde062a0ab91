//! Sender side: turning command-line paths into a [`Manifest`].

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::check::{ManifestLimits, validate_manifest};
use crate::error::TransferError;
use crate::message::{Entry, EntryKind, Manifest};
use crate::path::sanitize;

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Files and directories.
    Files {
        /// The manifest offered to the receiver.
        manifest: Manifest,
        /// Where each manifest entry lives locally (same order and length
        /// as `manifest.entries`).
        local_paths: Vec<PathBuf>,
    },
    /// A text message.
    Text(String),
}

/// Walks `paths` (files and directories, recursively) into a [`Source`].
///
/// A directory argument `photos/` becomes entries `photos`, `photos/...`; a
/// file argument becomes its file name. Empty directories and unix modes
/// are kept; symbolic links are skipped with a warning (never followed).
/// Directory contents are sorted by name, so the manifest is deterministic.
pub fn scan(paths: &[PathBuf]) -> Result<Source, TransferError> {
    let mut manifest = Manifest::default();
    let mut local_paths = Vec::new();
    let mut top_names = HashSet::new();
    for path in paths {
        let meta = fs::symlink_metadata(path).map_err(|e| TransferError::io(path, e))?;
        if meta.file_type().is_symlink() {
            warn!(path = %path.display(), "skipping symbolic link");
            continue;
        }
        let name = top_name(path)?;
        if !top_names.insert(name.clone()) {
            return Err(bad_name(path, "has the same name as another argument"));
        }
        walk(path, name, &meta, &mut manifest, &mut local_paths)?;
    }
    // Two names that differ only by case, and the like: the receiver would
    // refuse them (the bounds on counts are the receiver's to set).
    validate_manifest(&manifest, &ManifestLimits::unbounded(), true).map_err(|e| match e {
        TransferError::UnsafePath { path, reason } => {
            let local = manifest
                .entries
                .iter()
                .position(|entry| entry.path == path)
                .and_then(|i| local_paths.get(i).cloned())
                .unwrap_or_else(|| PathBuf::from(&path));
            bad_name(&local, &reason)
        }
        e => e,
    })?;
    Ok(Source::Files {
        manifest,
        local_paths,
    })
}

fn walk(
    path: &Path,
    rel: String,
    meta: &fs::Metadata,
    manifest: &mut Manifest,
    local_paths: &mut Vec<PathBuf>,
) -> Result<(), TransferError> {
    // Names the receiver would refuse are refused here, with the local
    // path and a hint to rename: skipping them would send an incomplete
    // folder without the user noticing.
    sanitize(&rel).map_err(|e| bad_name(path, &e.reason))?;
    if meta.is_file() {
        manifest.entries.push(Entry {
            path: rel,
            kind: EntryKind::File {
                size: meta.len(),
                mode: mode(meta, 0o644),
            },
        });
        local_paths.push(path.to_path_buf());
        return Ok(());
    }
    if !meta.is_dir() {
        warn!(path = %path.display(), "skipping special file");
        return Ok(());
    }
    manifest.entries.push(Entry {
        path: rel.clone(),
        kind: EntryKind::Dir {
            mode: mode(meta, 0o755),
        },
    });
    local_paths.push(path.to_path_buf());
    let mut children = fs::read_dir(path)
        .map_err(|e| TransferError::io(path, e))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransferError::io(path, e))?;
    children.sort();
    for child in children {
        let meta = fs::symlink_metadata(&child).map_err(|e| TransferError::io(&child, e))?;
        if meta.file_type().is_symlink() {
            warn!(path = %child.display(), "skipping symbolic link");
            continue;
        }
        let name = child
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| bad_name(&child, "its name is not valid UTF-8"))?;
        walk(
            &child,
            format!("{rel}/{name}"),
            &meta,
            manifest,
            local_paths,
        )?;
    }
    Ok(())
}

fn top_name(path: &Path) -> Result<String, TransferError> {
    let named = match path.file_name() {
        Some(n) => Some(n.to_owned()),
        // `.` or `..`: use the real directory name.
        None => fs::canonicalize(path)
            .map_err(|e| TransferError::io(path, e))?
            .file_name()
            .map(|n| n.to_owned()),
    };
    let named = named.ok_or_else(|| bad_name(path, "has no name"))?;
    named
        .into_string()
        .map_err(|_| bad_name(path, "its name is not valid UTF-8"))
}

fn bad_name(path: &Path, reason: &str) -> TransferError {
    TransferError::Unsendable {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    }
}

#[cfg(unix)]
fn mode(meta: &fs::Metadata, _default: u32) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn mode(_meta: &fs::Metadata, default: u32) -> u32 {
    default
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_files_dirs_and_skips_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("photos");
        fs::create_dir_all(root.join("b/empty")).unwrap();
        fs::write(root.join("a.jpg"), b"12345").unwrap();
        fs::write(root.join("b/c.txt"), b"").unwrap();
        let single = t.path().join("single.bin");
        fs::write(&single, b"xy").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&single, root.join("link")).unwrap();

        let Source::Files {
            manifest,
            local_paths,
        } = scan(&[root.clone(), single.clone()]).unwrap()
        else {
            panic!("files expected")
        };
        let paths: Vec<_> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "photos",
                "photos/a.jpg",
                "photos/b",
                "photos/b/c.txt",
                "photos/b/empty",
                "single.bin"
            ]
        );
        assert_eq!(local_paths[1], root.join("a.jpg"));
        assert_eq!(local_paths[5], single);
        assert_eq!(manifest.file_count(), 3);
        assert_eq!(manifest.dir_count(), 3);
        assert_eq!(manifest.total_bytes(), 7);
    }

    #[test]
    fn missing_path_error_names_it() {
        let e = scan(&[PathBuf::from("/nonexistent/ferry-test")]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ferry-test"), "{e}");
    }

    #[test]
    fn duplicate_top_level_names_are_rejected() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("x")).unwrap();
        fs::create_dir_all(t.path().join("y")).unwrap();
        fs::write(t.path().join("x/f"), b"1").unwrap();
        fs::write(t.path().join("y/f"), b"2").unwrap();
        assert!(scan(&[t.path().join("x/f"), t.path().join("y/f")]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn names_the_receiver_would_refuse_are_refused_with_a_hint() {
        for name in [
            "bad\x1b]0;title\x07",
            "line\nbreak",
            "rtl\u{202e}txt",
            "CON.txt",
            "back\\slash",
        ] {
            let t = tempfile::tempdir().unwrap();
            let root = t.path().join("dir");
            fs::create_dir(&root).unwrap();
            fs::write(root.join(name), b"x").unwrap();
            let e = scan(&[root]).unwrap_err();
            assert!(matches!(e, TransferError::Unsendable { .. }), "{e:?}");
            let text = e.to_string();
            assert!(text.contains("rename it"), "{text}");
            assert!(
                !text.chars().any(crate::path::is_dangerous_char),
                "{text:?}"
            );
        }
    }

    #[test]
    fn names_that_differ_only_by_case_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("dir");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("Notes"), b"1").unwrap();
        if fs::write(root.join("notes"), b"2").is_ok() && fs::read_dir(&root).unwrap().count() == 2
        {
            let e = scan(&[root]).unwrap_err();
            assert!(e.to_string().contains("only by case"), "{e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn keeps_modes() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("run.sh");
        fs::write(&f, b"#!/bin/sh").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o750)).unwrap();
        let Source::Files { manifest, .. } = scan(&[f]).unwrap() else {
            panic!()
        };
        assert_eq!(
            manifest.entries[0].kind,
            EntryKind::File {
                size: 9,
                mode: 0o750
            }
        );
    }
}
