//! The receiver's path check: `sanitize` (pure) and `check_within` (looks
//! at the output directory without following links).
//!
//! Invariants for every path `sanitize` accepts: not empty, not absolute,
//! no empty, `.` or `..` component, no NUL or backslash, within the length
//! limits, idempotent, and joined under a directory it stays under it (as
//! `std::path` sees it: only normal components). `check_within`, run
//! against a real directory holding a symlink to `/`, a file and a
//! directory with a symlink inside, only ever answers a path under the
//! output directory whose existing ancestors are real directories.
#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use ferry_transfer::path::{MAX_COMPONENT_LEN, MAX_PATH_LEN, RelativePath, check_within, sanitize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rel) = sanitize(text) else {
        return;
    };
    check_sanitized(text, &rel);
    let out = out_dir();
    if let Ok(target) = check_within(out, &rel) {
        assert!(target.starts_with(out), "{target:?} is outside {out:?}");
        assert_eq!(target, rel.join_to(out));
        // Every existing ancestor below `out` is a real directory.
        let mut p = out.to_path_buf();
        let components: Vec<&str> = rel.components().collect();
        for (i, c) in components.iter().enumerate() {
            p.push(c);
            match std::fs::symlink_metadata(&p) {
                Ok(meta) => {
                    assert!(!meta.file_type().is_symlink(), "{p:?} is a symlink");
                    if i + 1 < components.len() {
                        assert!(meta.is_dir(), "{p:?} is not a directory");
                    }
                }
                Err(_) => break,
            }
        }
    }
});

fn check_sanitized(text: &str, rel: &RelativePath) {
    let s = rel.as_str();
    assert_eq!(s, text, "sanitize changed the path");
    assert!(!s.is_empty() && s.len() <= MAX_PATH_LEN);
    assert!(!s.starts_with('/'), "absolute path accepted");
    assert!(!s.contains('\0') && !s.contains('\\'));
    for c in rel.components() {
        assert!(!c.is_empty(), "empty component accepted");
        assert!(c != "." && c != "..", "dot component accepted");
        assert!(c.len() <= MAX_COMPONENT_LEN);
    }
    assert_eq!(sanitize(s).as_ref(), Ok(rel), "sanitize is not idempotent");
    let base = Path::new("/base/out");
    let joined = rel.join_to(base);
    assert!(joined.starts_with(base));
    let below = joined.strip_prefix(base).expect("joined under base");
    assert!(
        below
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "{below:?} has a component that is not a plain name"
    );
    assert_eq!(below.components().count(), rel.components().count());
    let ancestors: Vec<&str> = rel.ancestors().collect();
    assert_eq!(ancestors.len() + 1, rel.components().count());
    for a in ancestors {
        assert!(s.starts_with(a) && s.as_bytes()[a.len()] == b'/');
    }
}

/// A real output directory, made once per fuzzing process:
/// `link -> /`, `file`, `dir/`, `dir/link -> ..`, `dir/sub/`.
fn out_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("ferry-fuzz-path-{}", std::process::id()));
        let out = root.join("out");
        std::fs::create_dir_all(out.join("dir/sub")).expect("make the fuzz output directory");
        std::fs::write(out.join("file"), b"x").expect("write a file");
        std::os::unix::fs::symlink("/", out.join("link")).expect("make a symlink");
        std::os::unix::fs::symlink("..", out.join("dir/link")).expect("make a symlink");
        out
    })
}
