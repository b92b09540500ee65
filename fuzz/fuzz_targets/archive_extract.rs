//! The sync archive extractor over arbitrary bytes.
//!
//! The first byte picks the codec (stored, gzip, zstd); the rest is the archive. It is
//! extracted into `tmp/inner`, beside `tmp/outside/canary`. Checks: no panic; nothing but
//! `inner` and `outside` is in `tmp` afterwards, `outside` holds only the canary, unchanged,
//! and `inner` is still a real directory; every path reported written is relative and free of
//! `..`.

#![no_main]

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use crabbox_core::sync::{extract_archive_with, Codec};
use libfuzzer_sys::fuzz_target;

const CANARY: &[u8] = b"outside the destination";

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("listing")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Makes every directory under `dir` writable and listable again, so the temp dir can go.
fn unlock(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o755));
            unlock(&e.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, archive)) = data.split_first() else {
        return;
    };
    let codec = match selector % 3 {
        0 => Codec::Stored,
        1 => Codec::Gzip,
        _ => Codec::Zstd,
    };
    let tmp = tempfile::tempdir().expect("a temp dir");
    let inner = tmp.path().join("inner");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&inner).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("canary"), CANARY).unwrap();

    let result = extract_archive_with(archive, codec, &inner);

    assert!(
        std::fs::symlink_metadata(&inner).unwrap().is_dir(),
        "the destination is no longer a directory"
    );
    let _ = std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755));
    unlock(&inner);
    assert_eq!(
        names(tmp.path()),
        ["inner", "outside"],
        "written beside the destination"
    );
    assert_eq!(
        names(&outside),
        ["canary"],
        "written outside the destination"
    );
    let canary = outside.join("canary");
    assert!(std::fs::symlink_metadata(&canary).unwrap().is_file());
    assert_eq!(
        std::fs::read(&canary).unwrap(),
        CANARY,
        "the canary changed"
    );
    if let Ok(written) = result {
        for p in written {
            assert!(
                Path::new(&p)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
                "reported written: {p:?}"
            );
        }
    }
});
