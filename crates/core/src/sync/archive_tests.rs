//! Tests of [`super`] (archive.rs).

use super::*;
use crate::sync::{SyncManifest, SyncOptions};
use std::os::unix::fs::PermissionsExt;

#[test]
fn a_file_that_cannot_be_read_fails_the_sync_with_exit_6_naming_it() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a.txt"), "a").unwrap();
    let m = SyncManifest::build(src.path(), &SyncOptions::default()).unwrap();
    // Gone (or unreadable) between choosing the files and packing them.
    std::fs::remove_file(src.path().join("a.txt")).unwrap();
    let err = write_archive(src.path(), &m.entries, Vec::new(), |_| {}).unwrap_err();
    assert_eq!(err.exit_code(), 6, "{err}");
    assert!(err.to_string().contains("a.txt"), "{err}");
}

#[test]
fn round_trip_keeps_content_modes_and_links() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("d")).unwrap();
    std::fs::write(src.path().join("d/a.txt"), "hello").unwrap();
    std::fs::write(src.path().join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        src.path().join("run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("d/a.txt", src.path().join("link")).unwrap();
    let m = SyncManifest::build(src.path(), &SyncOptions::default()).unwrap();
    let mut buf = Vec::new();
    let stats = write_archive(src.path(), &m.entries, &mut buf, |_| {}).unwrap();
    assert_eq!(stats.files, 3);
    assert_eq!(stats.bytes, 5 + 10);
    let dst = tempfile::tempdir().unwrap();
    let written = extract_archive(&buf[..], dst.path()).unwrap();
    assert_eq!(written.len(), 3);
    assert_eq!(
        std::fs::read_to_string(dst.path().join("d/a.txt")).unwrap(),
        "hello"
    );
    let mode = std::fs::metadata(dst.path().join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(dst.path().join("link")).unwrap(),
        Path::new("d/a.txt")
    );
}

#[test]
fn a_file_that_shrinks_fails_the_archive_instead_of_corrupting_it() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("log"), "0123456789").unwrap();
    let m = SyncManifest::build(src.path(), &SyncOptions::default()).unwrap();
    let mut r = ExactLen {
        inner: &b"01234"[..],
        remaining: 10,
    };
    let mut sink = Vec::new();
    let err = std::io::copy(&mut r, &mut sink).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    // Through the archive writer: a manifest entry whose file is now shorter still works,
    // because the size is taken from the open file, and the content is complete.
    std::fs::write(src.path().join("log"), "01").unwrap();
    let mut buf = Vec::new();
    let stats = write_archive(src.path(), &m.entries, &mut buf, |_| {}).unwrap();
    assert_eq!(stats.bytes, 2);
}

#[test]
fn a_file_replaced_by_a_symlink_is_not_read_through() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), "x").unwrap();
    let m = SyncManifest::build(src.path(), &SyncOptions::default()).unwrap();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), "secret").unwrap();
    std::fs::remove_file(src.path().join("f")).unwrap();
    std::os::unix::fs::symlink(outside.path(), src.path().join("f")).unwrap();
    let err = write_archive(src.path(), &m.entries, Vec::new(), |_| {}).unwrap_err();
    assert!(err.to_string().contains("f"), "{err}");
}

#[test]
fn archive_is_deterministic() {
    let src = tempfile::tempdir().unwrap();
    for i in 0..5 {
        std::fs::write(src.path().join(format!("f{i}")), format!("{i}")).unwrap();
    }
    let m = SyncManifest::build(src.path(), &SyncOptions::default()).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    write_archive(src.path(), &m.entries, &mut a, |_| {}).unwrap();
    write_archive(src.path(), &m.entries, &mut b, |_| {}).unwrap();
    assert_eq!(a, b);
}

fn raw_tar_with_path(path: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    // Write the name bytes directly: the builder itself refuses '..'.
    header.as_old_mut().name[..path.len()].copy_from_slice(path);
    header.set_size(1);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut tar_bytes = Vec::new();
    tar_bytes.extend_from_slice(header.as_bytes());
    let mut block = [0u8; 512];
    block[0] = b'x';
    tar_bytes.extend_from_slice(&block);
    tar_bytes.extend_from_slice(&[0u8; 1024]);
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&tar_bytes).unwrap();
    gz.finish().unwrap()
}

#[test]
fn extraction_refuses_parent_components() {
    let dst = tempfile::tempdir().unwrap();
    let inner = dst.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    let err = extract_archive(&raw_tar_with_path(b"../escape.txt")[..], &inner).unwrap_err();
    assert_eq!(err.exit_code(), 6, "{err}");
    assert!(!dst.path().join("escape.txt").exists());
}

/// A tar (stored) of `entries`: `(path, Some(link target))` for a symlink, else a file.
fn tar_of(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        match link {
            Some(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(3);
                b.append_data(&mut h, path, &b"new"[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

#[test]
fn extraction_never_removes_or_writes_through_a_symlink() {
    // The file in place of an entry was removed before tar's own outside-the-destination
    // check, through the link (fuzz seed `through_a_link`: the canary check fails).
    let tmp = tempfile::tempdir().unwrap();
    let (dest, outside) = (tmp.path().join("inner"), tmp.path().join("outside"));
    std::fs::create_dir(&dest).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("canary"), "old").unwrap();
    let archive = tar_of(&[("l", Some("../outside")), ("l/canary", None)]);
    let err = extract_archive_with(&archive[..], Codec::Stored, &dest).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_eq!(
        std::fs::read_to_string(outside.join("canary")).unwrap(),
        "old"
    );

    // Nor through one that stays inside.
    std::fs::create_dir(dest.join("d")).unwrap();
    std::fs::write(dest.join("d/f"), "old").unwrap();
    let archive = tar_of(&[("in", Some("d")), ("in/f", None)]);
    assert!(extract_archive_with(&archive[..], Codec::Stored, &dest).is_err());
    assert_eq!(std::fs::read_to_string(dest.join("d/f")).unwrap(), "old");
}

#[test]
fn an_entry_naming_the_destination_itself_is_refused() {
    // An entry `.` of a file was "replaced": the destination's whole content removed
    // (fuzz seed `the_destination_itself`).
    for name in [&b"."[..], b"./", b"./."] {
        let dst = tempfile::tempdir().unwrap();
        std::fs::write(dst.path().join("keep"), "x").unwrap();
        let err = extract_archive(&raw_tar_with_path(name)[..], dst.path()).unwrap_err();
        assert!(err.to_string().contains("destination itself"), "{err}");
        assert!(dst.path().join("keep").exists(), "{name:?}");
    }
}

/// A pax time's sign is the whole number's: what the writer puts in an archive reads
/// back to the same nanosecond, before the epoch too, and extraction sets it.
#[test]
fn pax_mtimes_before_the_epoch_round_trip() {
    for ns in [
        -1_500_000_000i128,
        -500_000_000,
        -1,
        -2_000_000_000,
        0,
        1,
        1_700_000_000_123_456_789,
    ] {
        assert_eq!(parse_pax_time(&format_pax_time(ns)), Some(ns), "{ns}");
    }
    assert_eq!(format_pax_time(-1_500_000_000), "-1.500000000");
    assert_eq!(parse_pax_time("-0.5"), Some(-500_000_000));
    for bad in ["", "-", "+1", "1.-5", "--1", "1.5.5", "1e3", ".5"] {
        assert_eq!(parse_pax_time(bad), None, "{bad:?}");
    }

    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("old"), "x").unwrap();
    let mut archive = Vec::new();
    let entry = crate::sync::SyncEntry {
        path: "old".into(),
        kind: EntryKind::File,
        mode: 0o644,
        size: 1,
        mtime_ns: -1_500_000_000,
        link_target: None,
    };
    write_archive(src.path(), [&entry], &mut archive, |_| {}).unwrap();
    let dst = tempfile::tempdir().unwrap();
    extract_archive(&archive[..], dst.path()).unwrap();
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dst.path().join("old")).unwrap();
    assert_eq!(
        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        -1_500_000_000
    );
}

/// An archive's setuid and setgid bits never reach the extracted tree, on files or
/// directories; the rest of the mode does.
#[test]
fn extraction_strips_setuid_and_setgid() {
    use std::os::unix::fs::PermissionsExt;
    let mut raw = Vec::new();
    {
        let mut tar = tar::Builder::new(&mut raw);
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o2775);
        dir.set_size(0);
        tar.append_data(&mut dir, "d", &[][..]).unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_mode(0o6755);
        file.set_size(2);
        tar.append_data(&mut file, "d/tool", &b"#!"[..]).unwrap();
        let mut sticky = tar::Header::new_gnu();
        sticky.set_mode(0o1777);
        sticky.set_entry_type(tar::EntryType::Directory);
        sticky.set_size(0);
        tar.append_data(&mut sticky, "shared", &[][..]).unwrap();
        tar.finish().unwrap();
    }
    let dst = tempfile::tempdir().unwrap();
    extract_archive_with(&raw[..], Codec::Stored, dst.path()).unwrap();
    let mode = |p: &str| {
        std::fs::symlink_metadata(dst.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("d/tool"), 0o755);
    assert_eq!(mode("d"), 0o775);
    assert_eq!(mode("shared"), 0o1777, "the sticky bit is no privilege");
}

/// A local setuid file is synced without the bit, so a box never gets it and a warm sync
/// does not see a difference to resend every time.
#[test]
fn the_manifest_leaves_setuid_and_setgid_out() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("tool"), "x").unwrap();
    std::fs::set_permissions(
        root.path().join("tool"),
        std::fs::Permissions::from_mode(0o6755),
    )
    .unwrap();
    let manifest =
        crate::sync::SyncManifest::build(root.path(), &crate::sync::SyncOptions::default())
            .unwrap();
    let tool = manifest.entries.iter().find(|e| e.path == "tool").unwrap();
    assert_eq!(tool.mode, 0o755);
}

#[test]
fn a_pax_mtime_out_of_range_falls_back_to_the_header() {
    assert_eq!(
        parse_pax_time("1700000000.5"),
        Some(1_700_000_000_500_000_000)
    );
    assert_eq!(parse_pax_time("-1.5"), Some(-1_500_000_000));
    // The multiplication overflowed, a panic in debug builds (fuzz seed `huge_pax_mtime`).
    assert_eq!(parse_pax_time(&"9".repeat(35)), None);
    assert_eq!(parse_pax_time(&format!("-{}.5", "9".repeat(35))), None);
}

#[test]
fn extraction_refuses_absolute_paths() {
    let dst = tempfile::tempdir().unwrap();
    let err =
        extract_archive(&raw_tar_with_path(b"/tmp/crabbox-abs-test")[..], dst.path()).unwrap_err();
    assert!(err.to_string().contains("absolute"), "{err}");
}
