//! The sync plan against scans of boxes that drifted from the tree in every way tests make.

use super::*;

fn file(path: &str, size: u64, mtime_s: i64) -> SyncEntry {
    SyncEntry {
        path: path.into(),
        kind: EntryKind::File,
        mode: 0o644,
        size,
        mtime_ns: i128::from(mtime_s) * 1_000_000_000 + 123,
        link_target: None,
    }
}

fn manifest(entries: Vec<SyncEntry>) -> SyncManifest {
    SyncManifest {
        entries,
        ..Default::default()
    }
}

fn remote_file(size: u64, mtime_ns: i128) -> RemoteEntry {
    RemoteEntry {
        kind: RemoteKind::File,
        mode: 0o644,
        size,
        mtime_ns,
        link_target: None,
        sha256: None,
    }
}

fn remote_of(kind: RemoteKind) -> RemoteEntry {
    RemoteEntry {
        kind,
        ..remote_file(0, 0)
    }
}

/// The box exactly as a sync of `m` leaves it.
fn synced(m: &SyncManifest) -> RemoteTree {
    let record = SyncRecord::of(m);
    let mut scanned: BTreeSet<String> = record.dirs.clone();
    scanned.insert(String::new());
    let mut entries = BTreeMap::new();
    for d in &record.dirs {
        entries.insert(d.clone(), remote_of(RemoteKind::Dir));
    }
    for e in &m.entries {
        entries.insert(e.path.clone(), remote_file(e.size, e.mtime_ns));
    }
    RemoteTree {
        exists: true,
        record: Some(record),
        scanned,
        entries,
        state: None,
    }
}

fn sent(p: &SyncPlan) -> Vec<&str> {
    p.send.iter().map(|e| e.path.as_str()).collect()
}

const DELETE: PlanOptions<'static> = PlanOptions {
    delete: true,
    resend_all: false,
    hashes: None,
};

#[test]
fn a_box_that_holds_the_tree_needs_nothing() {
    let m = manifest(vec![file("a", 1, 10), file("d/b", 2, 10)]);
    let plan = SyncPlan::new(&m, &synced(&m), DELETE);
    assert!(plan.is_noop(), "{plan:?}");
}

#[test]
fn a_missing_workdir_means_a_full_sync() {
    let m = manifest(vec![file("a", 1, 10)]);
    let plan = SyncPlan::new(&m, &RemoteTree::default(), DELETE);
    assert!(plan.full);
    assert_eq!(sent(&plan), ["a"]);
}

#[test]
fn edits_deletions_and_mode_changes_on_the_box_are_restored() {
    let m = manifest(vec![file("a", 1, 10), file("d/b", 2, 10), file("c", 3, 10)]);
    let mut box_ = synced(&m);
    box_.entries.get_mut("a").unwrap().mtime_ns = 99; // rewritten on the box
    box_.entries.remove("d/b"); // deleted on the box
    box_.entries.get_mut("c").unwrap().mode = 0o755; // chmod on the box
    let plan = SyncPlan::new(&m, &box_, DELETE);
    assert_eq!(sent(&plan), ["a", "d/b", "c"]);
    assert!(plan.ops.is_empty(), "{:?}", plan.ops);
}

#[test]
fn a_file_replaced_by_a_directory_or_a_dir_by_a_symlink_is_cleared_first() {
    let m = manifest(vec![
        file("a", 1, 10),
        file("d/b", 2, 10),
        file("d/e/f", 2, 10),
    ]);
    let mut box_ = synced(&m);
    box_.entries.insert("a".into(), remote_of(RemoteKind::Dir));
    box_.entries
        .insert("d".into(), remote_of(RemoteKind::Symlink));
    let plan = SyncPlan::new(&m, &box_, DELETE);
    assert_eq!(sent(&plan), ["a", "d/b", "d/e/f"]);
    assert_eq!(
        plan.ops,
        [SyncOp::Clear("a".into()), SyncOp::Clear("d".into())]
    );
}

#[test]
fn a_retargeted_symlink_is_sent_again() {
    let mut link = file("l", 0, 10);
    link.kind = EntryKind::Symlink;
    link.link_target = Some("a".into());
    let m = manifest(vec![link]);
    let mut box_ = synced(&m);
    let r = box_.entries.get_mut("l").unwrap();
    r.kind = RemoteKind::Symlink;
    r.link_target = Some("a".into());
    assert!(SyncPlan::new(&m, &box_, DELETE).is_noop());
    box_.entries.get_mut("l").unwrap().link_target = Some("/etc".into());
    assert_eq!(sent(&SyncPlan::new(&m, &box_, DELETE)), ["l"]);
}

#[test]
fn deletes_only_recorded_files_gone_locally_and_only_safe_paths() {
    let before = manifest(vec![
        file("a", 1, 10),
        file("gone", 1, 10),
        file("d/x", 1, 10),
    ]);
    let mut box_ = synced(&before);
    box_.entries.insert("built.o".into(), remote_file(5, 50)); // a build output
    let mut record = box_.record.clone().unwrap();
    record.paths.insert("../evil".into());
    box_.record = Some(record);
    let now = manifest(vec![file("a", 1, 10), file("d/x", 1, 10)]);
    let plan = SyncPlan::new(&now, &box_, DELETE);
    assert_eq!(plan.ops, [SyncOp::Delete("gone".into())]);
    let keep = PlanOptions {
        delete: false,
        ..DELETE
    };
    assert!(SyncPlan::new(&now, &box_, keep).is_noop());
}

#[test]
fn without_a_record_nothing_is_deleted_and_unscanned_dirs_are_made_safe() {
    let m = manifest(vec![file("a", 1, 10), file("new/dir/f", 1, 10)]);
    let mut box_ = synced(&manifest(vec![file("a", 1, 10)]));
    box_.record = None;
    box_.entries
        .insert("new".into(), remote_of(RemoteKind::Dir));
    let plan = SyncPlan::new(&m, &box_, DELETE);
    assert_eq!(sent(&plan), ["new/dir/f"]);
    assert_eq!(
        plan.ops,
        [
            SyncOp::EnsureDir("new/dir".into()),
            SyncOp::ClearIfDir("new/dir/f".into())
        ]
    );
}

#[test]
fn full_resync_sends_everything_and_checksum_compares_content() {
    let m = manifest(vec![file("a", 1, 10)]);
    let box_ = synced(&m);
    let all = PlanOptions {
        resend_all: true,
        ..DELETE
    };
    assert_eq!(sent(&SyncPlan::new(&m, &box_, all)), ["a"]);
    let hashes = BTreeMap::from([("a".to_string(), "h1".to_string())]);
    let by_hash = PlanOptions {
        hashes: Some(&hashes),
        ..DELETE
    };
    assert_eq!(
        sent(&SyncPlan::new(&m, &box_, by_hash)),
        ["a"],
        "no remote hash"
    );
    let mut hashed = box_.clone();
    hashed.entries.get_mut("a").unwrap().sha256 = Some("h1".into());
    hashed.entries.get_mut("a").unwrap().mtime_ns = 12345; // mtime no longer matters
    assert!(SyncPlan::new(&m, &hashed, by_hash).is_noop());
    hashed.entries.get_mut("a").unwrap().sha256 = Some("h2".into());
    assert_eq!(sent(&SyncPlan::new(&m, &hashed, by_hash)), ["a"]);
}

#[test]
fn unsafe_paths_are_never_touched() {
    for bad in [
        "",
        "/etc/passwd",
        "../x",
        "a/../../b",
        "a//b",
        "./a",
        "a\0b",
    ] {
        assert!(!is_safe_relative(bad), "{bad:?}");
    }
    assert!(is_safe_relative("src/lib.rs"));
    assert!(is_safe_relative(".gitignore"));
}

#[test]
fn ops_encode_as_letters_and_nul_terminated_paths() {
    let ops = [
        SyncOp::Clear("a".into()),
        SyncOp::EnsureDir("b/c".into()),
        SyncOp::ClearIfDir("d".into()),
        SyncOp::Delete("e f".into()),
    ];
    assert_eq!(SyncOp::encode_all(&ops), b"ca\0pb/c\0ud\0xe f\0");
}

#[test]
fn an_edit_within_the_same_second_is_seen_and_whole_second_boxes_still_match() {
    let m = manifest(vec![file("a", 1, 10)]);
    let mut box_ = synced(&m);
    // The box holds the previous version's exact mtime, 1 ns earlier, same size.
    box_.entries.get_mut("a").unwrap().mtime_ns -= 1;
    assert_eq!(sent(&SyncPlan::new(&m, &box_, DELETE)), ["a"]);
    // A box that keeps whole seconds holds the local second exactly: up to date.
    box_.entries.get_mut("a").unwrap().mtime_ns = 10 * 1_000_000_000;
    assert!(SyncPlan::new(&m, &box_, DELETE).is_noop());
    assert!(same_mtime(5, 5) && !same_mtime(5, 6));
}
