//! The manifest a sender offers (JSON inside the first control frame) and
//! the receiver's check of it (`validate_manifest`, through `ReceiverCore`).
//!
//! Invariants: nothing panics; an accepted manifest yields one sanitized
//! path per entry, none listed twice, none below a file, none colliding
//! with another file's `.ferry-part`; the counts add up; the receiver core
//! agrees with `validate_manifest` and accepts with one resume point per
//! file.
#![no_main]

use std::collections::HashSet;

use ferry_transfer::protocol::{ManifestLimits, ReceiverCore, validate_manifest};
use ferry_transfer::{
    Control, EntryKind, Frame, Manifest, Offer, PART_SUFFIX, ResumePoint, sanitize,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = serde_json::from_slice::<Manifest>(data) else {
        return;
    };
    let n = manifest.entries.len();
    assert_eq!(manifest.file_count() + manifest.dir_count(), n);
    let total = manifest.total_bytes();
    assert!(manifest.files().all(|(_, size, _)| size <= total));

    let checked = validate_manifest(&manifest, &ManifestLimits::default(), false);
    let mut core = ReceiverCore::new();
    let offered = core.handle_frame(Frame::Control(Control::Offer {
        offer: Offer::Files(manifest.clone()),
        version: ferry_transfer::TRANSFER_VERSION,
    }));
    assert_eq!(
        checked.is_ok(),
        offered.is_ok(),
        "ReceiverCore and validate_manifest disagree"
    );
    let Ok(paths) = checked else {
        return;
    };
    assert_eq!(paths.len(), n);
    assert_eq!(core.paths(), paths.as_slice());
    let mut seen = HashSet::new();
    let files: HashSet<&str> = manifest.files().map(|(path, _, _)| path).collect();
    for (entry, rel) in manifest.entries.iter().zip(&paths) {
        assert_eq!(rel.as_str(), entry.path);
        assert_eq!(sanitize(&entry.path).as_ref(), Ok(rel));
        assert!(seen.insert(rel.as_str()), "{rel} listed twice");
        for ancestor in rel.ancestors() {
            assert!(
                !files.contains(ancestor),
                "{rel} lies below the file {ancestor}"
            );
        }
        if let Some(base) = rel.as_str().strip_suffix(PART_SUFFIX) {
            assert!(!files.contains(base), "{rel} is the part file of {base}");
        }
        if let EntryKind::File { .. } = entry.kind {
            assert!(files.contains(rel.as_str()));
        }
    }
    let resume = vec![ResumePoint::fresh(); manifest.file_count()];
    match core.accept(resume.clone()) {
        Ok(Control::Accept { files, .. }) => assert_eq!(files, resume),
        other => panic!("a valid manifest was not accepted: {other:?}"),
    }
});
