//! Receiver-side path safety: manifest paths are untrusted.
//!
//! [`sanitize`] is pure and decides whether a path string is an acceptable
//! relative path. [`check_within`] then looks at the output directory (with
//! `symlink_metadata`, never following links) so that an existing symlink
//! or file inside it cannot redirect a write outside.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Longest accepted path (bytes).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest accepted path component (bytes).
pub const MAX_COMPONENT_LEN: usize = 255;

/// A relative path that passed [`sanitize`]: non-empty `/`-separated
/// components, none of them empty, `.`, `..`, or containing `\`, NUL or a
/// Windows drive prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelativePath(String);

/// Why a path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsafe path {path:?}: {reason}")]
pub struct UnsafePath {
    /// The offending path as received.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Checks that `path` is a safe relative path.
pub fn sanitize(path: &str) -> Result<RelativePath, UnsafePath> {
    let bad = |reason: &str| UnsafePath {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if path.is_empty() {
        return Err(bad("empty path"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(bad("path too long"));
    }
    if path.starts_with('/') {
        return Err(bad("absolute path"));
    }
    for (i, component) in path.split('/').enumerate() {
        match component {
            "" => return Err(bad("empty path component")),
            "." | ".." => return Err(bad("`.` or `..` component")),
            _ => {}
        }
        if component.len() > MAX_COMPONENT_LEN {
            return Err(bad("path component too long"));
        }
        if component.contains('\0') {
            return Err(bad("NUL byte in path"));
        }
        if component.contains('\\') {
            return Err(bad("backslash in path"));
        }
        let b = component.as_bytes();
        if i == 0 && b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
            return Err(bad("Windows drive prefix"));
        }
    }
    Ok(RelativePath(path.to_owned()))
}

impl RelativePath {
    /// The path as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The parent paths from the shortest up, without the path itself:
    /// `a/b/c` gives `a`, `a/b`.
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(move |(i, _)| &self.0[..i])
    }

    /// `base` joined with every component.
    pub fn join_to(&self, base: &Path) -> PathBuf {
        let mut p = base.to_path_buf();
        p.extend(self.components());
        p
    }
}

impl fmt::Display for RelativePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where `rel` lands under `out_dir`, after checking that no existing
/// ancestor of it inside `out_dir` is a symlink or a non-directory, and that
/// the path itself is not a symlink. Missing components are fine (they will
/// be created). `out_dir` itself is trusted: the user chose it.
pub fn check_within(out_dir: &Path, rel: &RelativePath) -> Result<PathBuf, UnsafePath> {
    let bad = |reason: String| UnsafePath {
        path: rel.as_str().to_owned(),
        reason,
    };
    let mut p = out_dir.to_path_buf();
    let mut components = rel.components().peekable();
    while let Some(c) = components.next() {
        p.push(c);
        let last = components.peek().is_none();
        match std::fs::symlink_metadata(&p) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(bad(format!("{} is a symbolic link", p.display())));
            }
            Ok(meta) if !last && !meta.is_dir() => {
                return Err(bad(format!("{} is not a directory", p.display())));
            }
            Ok(_) => {}
            // Nothing below a missing component can exist.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(rel.join_to(out_dir)),
            Err(e) => return Err(bad(format!("cannot inspect {}: {e}", p.display()))),
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths() {
        for p in [
            "a",
            "a/b",
            "photos/2024/img 1.jpg",
            ".hidden",
            "..dots",
            "a..b",
            "dir/...",
            "ü/日本",
        ] {
            assert_eq!(
                sanitize(p).map(|r| r.as_str().to_owned()),
                Ok(p.to_owned()),
                "{p}"
            );
        }
        // A colon later in a name is fine on unix.
        assert!(sanitize("notes/12:30.txt").is_ok());
        assert!(sanitize("ab:c").is_ok());
    }

    #[test]
    fn bad_paths() {
        for p in [
            "",
            "../escape",
            "/etc/x",
            "a/../../b",
            "a/..",
            "a\\b",
            "..\\x",
            "C:x",
            "c:/x",
            "c:",
            "a\0b",
            ".",
            "./a",
            "a/.",
            "a//b",
            "a/",
            "/",
            "//server/share",
        ] {
            assert!(sanitize(p).is_err(), "{p:?} should be rejected");
        }
        let long = "x".repeat(MAX_COMPONENT_LEN + 1);
        assert!(sanitize(&long).is_err());
        let deep = vec!["d"; MAX_PATH_LEN].join("/");
        assert!(sanitize(&deep).is_err());
    }

    #[test]
    fn error_names_the_path() {
        let e = sanitize("../escape").unwrap_err();
        assert_eq!(e.path, "../escape");
        assert!(e.to_string().contains("../escape"));
    }

    #[test]
    fn ancestors_and_join() {
        let r = sanitize("a/b/c").unwrap();
        assert_eq!(r.ancestors().collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(r.join_to(Path::new("/out")), PathBuf::from("/out/a/b/c"));
        assert_eq!(sanitize("a").unwrap().ancestors().count(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn symlink_in_out_dir_is_rejected() {
        let out = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), out.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), out.path().join("flink")).unwrap();
        let e = check_within(out.path(), &sanitize("link/x").unwrap()).unwrap_err();
        assert!(e.reason.contains("symbolic link"), "{e}");
        let e = check_within(out.path(), &sanitize("flink").unwrap()).unwrap_err();
        assert!(e.reason.contains("symbolic link"), "{e}");
        // A plain file in the way of a directory.
        std::fs::write(out.path().join("file"), b"x").unwrap();
        let e = check_within(out.path(), &sanitize("file/x").unwrap()).unwrap_err();
        assert!(e.reason.contains("not a directory"), "{e}");
        // Fine paths.
        std::fs::create_dir(out.path().join("real")).unwrap();
        assert_eq!(
            check_within(out.path(), &sanitize("real/new/x").unwrap()).unwrap(),
            out.path().join("real/new/x")
        );
        assert_eq!(
            check_within(out.path(), &sanitize("file").unwrap()).unwrap(),
            out.path().join("file")
        );
    }
}
