//! Receiver-side path safety: manifest paths are untrusted.
//!
//! [`sanitize`] is pure and decides whether a path string is an acceptable
//! relative path. [`check_within`] then looks at the output directory (with
//! `symlink_metadata`, never following links) so that an existing symlink
//! or file inside it cannot redirect a write outside.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Suffix of partially received files.
pub const PART_SUFFIX: &str = ".ferry-part";

/// Longest accepted path (bytes).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest accepted path component (bytes).
pub const MAX_COMPONENT_LEN: usize = 255;

/// A relative path that passed [`sanitize`]: non-empty `/`-separated
/// components, none of them empty, `.`, `..`, a Windows device name, ending
/// in a dot or a space, or containing a control character, a bidirectional
/// override, or a character Windows forbids (`<>:"|?*\`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelativePath(String);

/// Why a path was rejected. Its message shows the path escaped (see
/// [`escape`]), never raw.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsafe path \"{}\": {reason}", escape(path))]
pub struct UnsafePath {
    /// The offending path as received (raw: escape it before showing it).
    pub path: String,
    /// What is wrong with it (already escaped).
    pub reason: String,
}

/// Names Windows reserves for devices, whatever the extension or case.
const WINDOWS_DEVICES: &[&str] = &[
    "con", "prn", "aux", "nul", "conin$", "conout$", "com0", "com1", "com2", "com3", "com4",
    "com5", "com6", "com7", "com8", "com9", "com¹", "com²", "com³", "lpt0", "lpt1", "lpt2", "lpt3",
    "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9", "lpt¹", "lpt²", "lpt³",
];

/// Characters Windows does not allow in a name (besides controls and `/`).
const WINDOWS_FORBIDDEN: &[char] = &['<', '>', ':', '"', '|', '?', '*'];

/// What may not appear in a name, and how names are shown in errors: one
/// rule for the whole of ferry ([`ferry_proto::escape`]).
pub use ferry_proto::escape::{line as escape, must_escape as is_dangerous_char};

/// Checks that `path` is a safe relative path. Windows device names
/// (`CON`, `nul.txt`), backslashes and drive prefixes are refused on every
/// operating system, since they are dangerous where the folder may travel
/// next; characters that are merely invalid on Windows (`12:30.txt`) are
/// refused only on Windows.
pub fn sanitize(path: &str) -> Result<RelativePath, UnsafePath> {
    let bad = |reason: String| UnsafePath {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(bad("empty path".into()));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(bad(format!(
            "path too long ({} bytes, the limit is {MAX_PATH_LEN})",
            path.len()
        )));
    }
    if path.starts_with('/') {
        return Err(bad("absolute path".into()));
    }
    for component in path.split('/') {
        check_component(component).map_err(bad)?;
    }
    Ok(RelativePath(path.to_owned()))
}

/// Checks one name (a path component), for [`sanitize`] and for the
/// sender's scan. The error says why, with any character escaped.
pub fn check_component(component: &str) -> Result<(), String> {
    match component {
        "" => return Err("empty path component".into()),
        "." | ".." => return Err("`.` or `..` component".into()),
        _ => {}
    }
    if component.len() > MAX_COMPONENT_LEN {
        return Err(format!(
            "name too long ({} bytes, the limit is {MAX_COMPONENT_LEN})",
            component.len()
        ));
    }
    if let Some(c) = component.chars().find(|&c| is_dangerous_char(c)) {
        let what = if c.is_control() {
            "control character"
        } else {
            "bidirectional text control"
        };
        return Err(format!("contains the {what} {}", escape(&c.to_string())));
    }
    if component.contains('\\') {
        // A path separator on Windows: `a\\..\\..\\x` would climb out there.
        return Err("contains `\\\\`, a path separator on Windows".into());
    }
    let b = component.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err("starts with a Windows drive prefix".into());
    }
    if cfg!(windows) {
        // These name nothing on Windows, but are ordinary on unix
        // (`12:30.txt`): refused only where they cannot be created.
        if let Some(c) = component.chars().find(|c| WINDOWS_FORBIDDEN.contains(c)) {
            return Err(format!(
                "contains `{c}`, which Windows does not allow in a name"
            ));
        }
        if component.ends_with('.') || component.ends_with(' ') {
            return Err("ends in a dot or a space, which Windows drops from a name".into());
        }
    }
    let stem = component
        .split('.')
        .next()
        .unwrap_or(component)
        .trim_end_matches(' ');
    if WINDOWS_DEVICES.contains(&stem.to_lowercase().as_str()) {
        return Err(format!(
            "`{stem}` is a device name on Windows, with any extension"
        ));
    }
    Ok(())
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
    use std::borrow::Cow;

    #[test]
    fn good_paths() {
        for p in [
            "a",
            "a/b",
            "photos/2024/img 1.jpg",
            ".hidden",
            "..dots",
            "a..b",
            "ü/日本",
        ] {
            assert_eq!(
                sanitize(p).map(|r| r.as_str().to_owned()),
                Ok(p.to_owned()),
                "{p}"
            );
        }
        // A colon later in a name, or a trailing dot, is fine on unix.
        #[cfg(unix)]
        for p in ["notes/12:30.txt", "ab:c", "dir/..."] {
            assert!(sanitize(p).is_ok(), "{p}");
        }
        // Names close to reserved ones are fine.
        for p in [
            "console",
            "com10",
            "lpt",
            "aux_",
            "nul-x.txt",
            "a.con",
            "x. y",
            "a b",
        ] {
            assert!(sanitize(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn control_and_bidi_characters_are_refused_and_escaped() {
        for (p, shown) in [
            ("a\x1b]52;c;SGVsbG8=\x07", "\\x1b"),
            ("dir/line\nfake", "\\n"),
            ("del\x7f", "\\x7f"),
            ("c1\u{9b}2J", "\\u{9b}"),
            ("evil\u{202e}gpj.exe", "\\u{202e}"),
            ("iso\u{2066}x", "\\u{2066}"),
            ("tab\tname", "\\t"),
        ] {
            let e = sanitize(p).unwrap_err();
            assert_eq!(e.path, p);
            let text = e.to_string();
            assert!(text.contains(shown), "{text}");
            assert!(!text.chars().any(is_dangerous_char), "{text:?}");
        }
    }

    #[test]
    fn windows_reserved_names_are_refused_everywhere() {
        for p in [
            "CON",
            "con",
            "Con.txt",
            "prn.tar.gz",
            "AUX",
            "nul",
            "d/NUL.x",
            "COM1",
            "com9.log",
            "LPT1",
            "lpt9.txt",
            "COM\u{b9}",
            "conin$",
            "CON .txt",
        ] {
            let e = sanitize(p).unwrap_err();
            assert!(e.to_string().contains("Windows"), "{p}: {e}");
        }
        // Invalid on Windows only: refused there, ordinary names on unix.
        for p in [
            "trailing.",
            "trailing ",
            "d/x./y",
            "a<b",
            "a>b",
            "12:30.txt",
            "a\"b",
            "a|b",
            "a?b",
            "a*b",
        ] {
            assert_eq!(sanitize(p).is_err(), cfg!(windows), "{p}");
        }
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
            "d/c:x",
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
    fn escape_leaves_plain_text_alone() {
        assert!(matches!(escape("ü/日本 x.txt"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1bb\u{202e}c"), "a\\x1bb\\u{202e}c");
        assert_eq!(escape(&escape("\x07\n")), "\\x07\\n");
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
