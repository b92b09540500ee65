//! Sync: everything on a new box; on a warm one only what changed, deleting what crabbox
//! synced and is gone locally; everything again when the record cannot be trusted.

use super::*;
use crate::engine::SyncReport;
use crate::testing::{Node, Script};

/// A bench with a warm lease that had one full sync; returns its lease id.
async fn warm_and_synced(b: &Bench) -> String {
    b.fake.script("true", Script::exits(0));
    let warm = b.warmup().await;
    b.run(&b.request_on(&warm.lease_id, "true"))
        .await
        .0
        .unwrap();
    let first = &b.fake.get_box("sbx1").unwrap().applied[0];
    assert_eq!(first.paths(), ["a.txt", "run.sh", "src/lib.rs"]);
    b.fake.clear_calls();
    warm.lease_id
}

fn content(b: &Bench, rel: &str) -> Option<String> {
    let found = b.fake.get_box("sbx1")?;
    Some(String::from_utf8_lossy(found.file(rel)?).into_owned())
}

#[tokio::test]
async fn a_new_box_gets_the_whole_tree_with_its_modes() {
    let b = Bench::new();
    b.fake.script("true", Script::exits(0));
    let mut req = b.request("true");
    req.keep = KeepPolicy::Always;
    let outcome = b.run(&req).await.0.unwrap();
    assert_eq!(
        outcome.sync,
        Some(SyncReport {
            files: 3,
            bytes: 6 + 14 + 10,
            sent_files: 3,
            deleted_files: 0,
            sent_bytes: 6 + 14 + 10,
            ..outcome.sync.clone().unwrap()
        })
    );
    let tree = b.fake.get_box("sbx1").unwrap().tree();
    assert_eq!(
        tree.get("run.sh"),
        Some(&Node::File {
            data: b"#!/bin/sh\n".to_vec(),
            mode: 0o755,
            mtime: b.mtime_of("run.sh")
        })
    );
    assert_eq!(content(&b, "a.txt").as_deref(), Some("alpha\n"));
    assert_eq!(
        content(&b, "src/lib.rs").as_deref(),
        Some("pub fn f() {}\n")
    );
    assert_eq!(tree.len(), 3);
}

#[tokio::test]
async fn a_warm_sync_sends_only_changed_files_and_deletes_removed_ones() {
    let b = Bench::new();
    let lease = warm_and_synced(&b).await;
    b.write("a.txt", "alpha, longer now\n");
    b.write("new.txt", "new\n");
    b.remove("src/lib.rs");
    let outcome = b.run(&b.request_on(&lease, "true")).await.0.unwrap();

    let report = outcome.sync.unwrap();
    assert_eq!((report.sent_files, report.deleted_files), (2, 1));
    let synced = b.fake.get_box("sbx1").unwrap();
    let second = &synced.applied[1];
    assert_eq!(second.paths(), ["a.txt", "new.txt"]);
    assert_eq!(second.delete, ["src/lib.rs"]);
    let record = crate::sync::SyncRecord::decode(second.record.as_deref().unwrap());
    let paths: Vec<&str> = record.paths.iter().map(String::as_str).collect();
    assert_eq!(
        paths,
        ["a.txt", "new.txt", "run.sh"],
        "new paths: a new record"
    );
    let tree: Vec<String> = synced.tree().into_keys().collect();
    assert_eq!(tree, ["a.txt", "new.txt", "run.sh"]);
    assert_eq!(content(&b, "a.txt").as_deref(), Some("alpha, longer now\n"));
    // The box vouched that it still holds what the first sync left: planned from that, the
    // box not read (and the apply checks it still does as it applies the sync).
    let vouch = format!("unchanged_since sbx1 {}", b.workdir(&lease));
    assert_eq!(
        b.fake.calls(),
        calls(&["open sbx1", &vouch, "apply sbx1", "start sbx1"])
    );
}

/// `(path, content or link target)` of each file of a tree.
type Listing = Vec<(String, String)>;

/// The box's tree and the local tree's.
fn trees(b: &Bench) -> (Listing, Listing) {
    let remote = b
        .fake
        .get_box("sbx1")
        .unwrap()
        .tree()
        .into_iter()
        .map(|(p, n)| {
            let text = match n {
                Node::File { data, .. } => String::from_utf8_lossy(&data).into_owned(),
                Node::Symlink { target } => format!("-> {target}"),
            };
            (p, text)
        })
        .collect();
    let m = SyncManifest::build(b.repo.path(), &SyncOptions::default()).unwrap();
    let local = m
        .entries
        .iter()
        .map(|e| {
            let full = b.repo.path().join(&e.path);
            let text = match &e.link_target {
                Some(t) => format!("-> {t}"),
                None => std::fs::read_to_string(full).unwrap(),
            };
            (e.path.clone(), text)
        })
        .collect();
    (remote, local)
}

#[tokio::test]
async fn a_sync_planned_from_the_last_one_makes_directories_changes_kind_and_deletes() {
    let b = Bench::new();
    let lease = found_up_to_date(&b).await;
    b.remove("a.txt");
    b.write("a.txt/inner.txt", "a directory now\n");
    b.write("new/deep/x.txt", "x\n");
    b.remove("src/lib.rs");
    std::os::unix::fs::symlink("../run.sh", b.repo.path().join("new/link")).unwrap();
    let outcome = b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    let report = outcome.sync.unwrap();
    assert_eq!((report.sent_files, report.deleted_files), (3, 2));
    assert_eq!(b.fake.count(Op::Scan), 0, "{:?}", b.fake.calls());
    let (remote, local) = trees(&b);
    assert_eq!(remote, local);
    let second = &b.fake.get_box("sbx1").unwrap().applied[1];
    assert!(
        second
            .ops
            .contains(&crate::sync::SyncOp::EnsureDir("a.txt".into())),
        "a file where a directory goes is removed first: {:?}",
        second.ops
    );
}

#[tokio::test]
async fn an_edit_after_the_box_changed_reads_the_box() {
    let b = Bench::new();
    let lease = found_up_to_date(&b).await;
    let path = format!("{}/run.sh", b.workdir(&lease));
    b.fake.write_file("sbx1", &path, b"clobbered\n");
    b.write("a.txt", "alpha, edited\n");
    let outcome = b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    assert_eq!(outcome.sync.unwrap().sent_files, 2);
    assert_eq!(b.fake.count(Op::Scan), 1, "{:?}", b.fake.calls());
    let (remote, local) = trees(&b);
    assert_eq!(remote, local);
}

#[tokio::test]
async fn a_lost_kept_manifest_reads_the_box() {
    let b = Bench::new();
    let lease = found_up_to_date(&b).await;
    let memo = b.state.path().join("sync-memo");
    let mut trees_removed = 0;
    for e in std::fs::read_dir(&memo).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "tree") {
            std::fs::remove_file(p).unwrap();
            trees_removed += 1;
        }
    }
    assert_eq!(trees_removed, 1);
    b.write("a.txt", "alpha, edited\n");
    let outcome = b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    assert_eq!(outcome.sync.unwrap().sent_files, 1);
    assert_eq!(b.fake.count(Op::Scan), 1, "{:?}", b.fake.calls());
    assert_eq!(content(&b, "a.txt").as_deref(), Some("alpha, edited\n"));
}

#[tokio::test]
async fn an_edit_keeps_the_record_the_box_holds() {
    let b = Bench::new();
    let lease = warm_and_synced(&b).await;
    let first = b.fake.get_box("sbx1").unwrap().records[&b.workdir(&lease)].clone();
    b.write("a.txt", "alpha, edited\n");
    b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    let synced = b.fake.get_box("sbx1").unwrap();
    assert_eq!(synced.applied[1].paths(), ["a.txt"]);
    assert_eq!(
        synced.applied[1].record, None,
        "the same paths: no record sent"
    );
    assert_eq!(synced.records[&b.workdir(&lease)], first);
    assert_eq!(content(&b, "a.txt").as_deref(), Some("alpha, edited\n"));
}

#[tokio::test]
async fn a_warm_sync_of_an_unchanged_tree_applies_nothing() {
    let b = Bench::new();
    let lease = warm_and_synced(&b).await;
    let outcome = b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    assert_eq!(outcome.sync.unwrap().sent_files, 0);
    assert_eq!(b.fake.count(Op::Apply), 0, "{:?}", b.fake.calls());
}

#[tokio::test]
async fn full_resync_sends_every_file_to_a_warm_box() {
    let b = Bench::new();
    let lease = warm_and_synced(&b).await;
    b.write("a.txt", "alpha, longer now\n");
    let mut req = b.request_on(&lease, "true");
    req.full_resync = true;
    b.run(&req).await.0.unwrap();
    let second = &b.fake.get_box("sbx1").unwrap().applied[1];
    assert_eq!(second.paths(), ["a.txt", "run.sh", "src/lib.rs"]);
    assert!(second.delete.is_empty());
}

#[tokio::test]
async fn a_workdir_missing_on_the_box_makes_a_full_sync() {
    let b = Bench::new();
    let lease = warm_and_synced(&b).await;
    b.fake.remove_path("sbx1", &b.workdir(&lease));
    b.remove("src/lib.rs");
    b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    let synced = b.fake.get_box("sbx1").unwrap();
    let second = &synced.applied[1];
    assert_eq!(second.paths(), ["a.txt", "run.sh"]);
    assert!(second.delete.is_empty(), "nothing is known to be there");
    assert_eq!(synced.tree().len(), 2);
}

#[tokio::test]
async fn a_failed_warm_sync_is_sent_again_by_the_next_run() {
    let b = Bench::new();
    let lease = warm_and_synced(&b).await;
    b.write("a.txt", "alpha, longer now\n");
    b.fake.fail(Op::Apply, Error::Sync("disk full".into()));
    let req = b.request_on(&lease, "true");
    assert_eq!(b.run(&req).await.0.unwrap_err().exit_code(), 6);
    b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    let synced = b.fake.get_box("sbx1").unwrap();
    assert_eq!(synced.applied.len(), 2, "the failed apply changed nothing");
    assert_eq!(synced.applied[1].paths(), ["a.txt"]);
}

#[tokio::test]
async fn an_edit_on_the_box_is_undone_by_the_next_sync() {
    let b = Bench::new();
    let lease = warm_and_synced(&b).await;
    let path = format!("{}/a.txt", b.workdir(&lease));
    b.fake.write_file("sbx1", &path, b"clobbered\n");
    let outcome = b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    assert_eq!(outcome.sync.unwrap().sent_files, 1);
    assert_eq!(content(&b, "a.txt").as_deref(), Some("alpha\n"));
}

#[tokio::test]
async fn a_lost_state_dir_costs_a_scan_not_a_resend() {
    let b = Bench::new();
    let lease = warm_and_synced(&b).await;
    // Another state dir (a new machine, a cleared one) with the lease's claim.
    let fresh = tempfile::tempdir().unwrap();
    let engine = Engine::new(
        Box::new(b.fake.clone()),
        crate::claims::ClaimStore::new(b.state.path().join("claims")),
        fresh.path().to_path_buf(),
    );
    let mut out = crate::events::CapturedOutput::default();
    let outcome = engine
        .run(&b.request_on(&lease, "true"), &mut out, &b.reporter)
        .await
        .unwrap();
    assert_eq!(outcome.sync.unwrap().sent_files, 0);
    assert_eq!(b.fake.count(Op::Apply), 0, "{:?}", b.fake.calls());
}

/// A warm lease whose last run found the tree up to date (so the next may skip reading it).
async fn found_up_to_date(b: &Bench) -> String {
    let lease = warm_and_synced(b).await;
    let outcome = b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    assert_eq!(outcome.sync.unwrap().sent_files, 0);
    b.fake.clear_calls();
    lease
}

#[tokio::test]
async fn an_unchanged_tree_the_box_vouches_for_is_not_read_again() {
    let b = Bench::new();
    let lease = found_up_to_date(&b).await;
    let outcome = b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    let report = outcome.sync.unwrap();
    assert_eq!((report.files, report.sent_files), (3, 0));
    let workdir = b.workdir(&lease);
    assert_eq!(
        b.fake.calls(),
        calls(&[
            "open sbx1",
            &format!("unchanged_since sbx1 {workdir}"),
            "start sbx1"
        ])
    );
}

#[tokio::test]
async fn a_change_on_the_box_after_a_vouched_run_is_found_and_undone() {
    let b = Bench::new();
    let lease = found_up_to_date(&b).await;
    let path = format!("{}/a.txt", b.workdir(&lease));
    b.fake.write_file("sbx1", &path, b"clobbered\n");
    let outcome = b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    assert_eq!(outcome.sync.unwrap().sent_files, 1);
    assert_eq!(content(&b, "a.txt").as_deref(), Some("alpha\n"));
    assert_eq!(b.fake.count(Op::Scan), 1, "{:?}", b.fake.calls());
}

#[tokio::test]
async fn a_local_edit_after_a_vouched_run_is_sent() {
    let b = Bench::new();
    let lease = found_up_to_date(&b).await;
    b.write("a.txt", "alpha, edited\n");
    let outcome = b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    assert_eq!(outcome.sync.unwrap().sent_files, 1);
    assert_eq!(content(&b, "a.txt").as_deref(), Some("alpha, edited\n"));
    // Vouched for, and the files differ: planned from the files the box holds, not read.
    assert_eq!(b.fake.count(Op::Scan), 0, "{:?}", b.fake.calls());
    // The sync named the tree it left: the next run needs neither a reading nor a sync.
    b.fake.clear_calls();
    let outcome = b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    assert_eq!(outcome.sync.unwrap().sent_files, 0);
    assert_eq!(b.fake.count(Op::Scan), 0, "{:?}", b.fake.calls());
    assert_eq!(b.fake.count(Op::Vouch), 1, "{:?}", b.fake.calls());
    assert_eq!(b.fake.count(Op::Apply), 0, "{:?}", b.fake.calls());
}

/// A run on `lease` whose box never answers whether its tree is still the one vouched for.
async fn run_with_the_question_unanswered(b: &Bench, lease: &str) -> crate::engine::RunOutcome {
    b.fake.hang(Op::Vouch);
    let req = b.request_on(lease, "true");
    tokio::time::timeout(Duration::from_secs(60), b.run(&req))
        .await
        .expect("the sync waited for an answer it did not need")
        .0
        .unwrap()
}

/// Not applied onto the tree changed on the box (a.txt clobbered there, b.txt edited here): the
/// box is read, and both files are sent.
fn read_and_restored(b: &Bench, outcome: crate::engine::RunOutcome) {
    assert_eq!(outcome.sync.unwrap().sent_files, 2);
    assert_eq!(content(b, "a.txt").as_deref(), Some("alpha\n"));
    assert_eq!(content(b, "b.txt").as_deref(), Some("beta, edited\n"));
    assert_eq!(b.fake.count(Op::Scan), 1, "{:?}", b.fake.calls());
    assert_eq!(b.fake.count(Op::Apply), 2, "{:?}", b.fake.calls());
}

/// A box that has not answered whether its tree is still the one vouched for by the time the
/// local files are chosen: a run with nothing to send waits for the answer, a run with
/// something to send does not. Its sync is applied only onto that tree, which the box checks
/// as it applies it.
#[tokio::test]
async fn a_local_edit_is_sent_while_the_box_is_still_asked_about_its_tree() {
    let b = Bench::new();
    let lease = found_up_to_date(&b).await;
    b.write("a.txt", "alpha, edited\n");
    let outcome = run_with_the_question_unanswered(&b, &lease).await;
    assert_eq!(outcome.sync.unwrap().sent_files, 1);
    assert_eq!(content(&b, "a.txt").as_deref(), Some("alpha, edited\n"));
    assert_eq!(b.fake.count(Op::Scan), 0, "{:?}", b.fake.calls());
    assert_eq!(b.fake.count(Op::Apply), 1, "{:?}", b.fake.calls());
}

#[tokio::test]
async fn a_box_changed_while_still_asked_about_its_tree_is_read_when_the_sync_reaches_it() {
    let b = Bench::new();
    let lease = found_up_to_date(&b).await;
    let path = format!("{}/a.txt", b.workdir(&lease));
    b.fake.write_file("sbx1", &path, b"clobbered\n");
    b.write("b.txt", "beta, edited\n");
    let outcome = run_with_the_question_unanswered(&b, &lease).await;
    read_and_restored(&b, outcome);
}

#[tokio::test]
async fn a_change_on_the_box_between_the_vouch_and_the_apply_is_found_and_undone() {
    let b = Bench::new();
    let lease = found_up_to_date(&b).await;
    b.write("b.txt", "beta, edited\n");
    // A command still running on the box rewrites a.txt after the box vouched for its tree,
    // just as the sync planned from that tree reaches it.
    let path = format!("{}/a.txt", b.workdir(&lease));
    b.fake
        .write_file_when(Op::Apply, "sbx1", &path, b"clobbered\n");
    let outcome = b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    read_and_restored(&b, outcome);
    assert!(b
        .reporter
        .statuses()
        .iter()
        .any(|s| s.contains("tree changed since the last sync")));
}

#[tokio::test]
async fn checksum_and_full_resync_never_skip_reading_the_box() {
    let b = Bench::new();
    let lease = found_up_to_date(&b).await;
    let mut req = b.request_on(&lease, "true");
    req.checksum = true;
    b.run(&req).await.0.unwrap();
    let mut req = b.request_on(&lease, "true");
    req.full_resync = true;
    let outcome = b.run(&req).await.0.unwrap();
    assert_eq!(outcome.sync.unwrap().sent_files, 3);
    assert_eq!(b.fake.count(Op::Vouch), 0, "{:?}", b.fake.calls());
    assert_eq!(b.fake.count(Op::Scan), 2, "{:?}", b.fake.calls());
}

#[tokio::test]
async fn a_run_has_recorded_its_use_in_the_claim_when_it_returns() {
    let b = Bench::new();
    let lease = warm_and_synced(&b).await;
    let mut before = b.claim(&lease).unwrap();
    before.last_used_at = "2000-01-01T00:00:00Z".into();
    b.engine.claims().write(&before).unwrap();
    b.write("a.txt", "edited\n");
    b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    // Written while the command started, and awaited before the run returned.
    let after = b.claim(&lease).unwrap();
    assert!(after.last_used_at > before.last_used_at, "{after:?}");
    assert_eq!(after.workdir, before.workdir);
}
