//! The tree watcher (`scripts/sync_watch.py`), started by the scan script run locally with
//! bash and python3: whatever changes in the synced tree after the scan read it is reported,
//! and nothing else is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;
use crate::scan::{parse_with, Known, Watched};
use crabbox_core::sync::RemoteTree;

/// A workdir `w` with a record naming `a.txt`, `src/b.rs` and `src/deep/c.rs`, next to its
/// watcher's control directory.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let wd = dir.path().join("w");
        std::fs::create_dir_all(wd.join("src/deep")).unwrap();
        std::fs::write(wd.join("a.txt"), "a\n").unwrap();
        std::fs::write(wd.join("src/b.rs"), "b\n").unwrap();
        std::fs::write(wd.join("src/deep/c.rs"), "c\n").unwrap();
        std::fs::write(
            dir.path().join(".w.crabbox-synced"),
            "dsrc\0dsrc/deep\0fa.txt\0fsrc/b.rs\0fsrc/deep/c.rs\0",
        )
        .unwrap();
        Tree { dir }
    }

    fn wd(&self) -> PathBuf {
        self.dir.path().join("w")
    }

    fn ctl(&self) -> String {
        watch_dir(self.wd().to_str().unwrap())
    }

    /// Scans with a watcher; its id.
    fn scan(&self, id: &str) -> String {
        let (tree, watch) = scan_locally(&self.wd(), Some(id));
        let watch = watch.expect("the scan started a watcher");
        assert_eq!(tree.state, Some(watch.state()));
        assert_eq!(watch.record.is_some(), tree.record.is_some());
        watch.id
    }

    fn ask(&self, id: &str) -> Option<bool> {
        ask(&self.ctl(), id)
    }
}

/// The scan script run locally on `wd` (its record beside it, where crabbox keeps it), with
/// watcher `id` started first when given: the tree, and the watcher the scan names.
pub(super) fn scan_locally(wd: &Path, id: Option<&str>) -> (RemoteTree, Option<Watched>) {
    let wd_s = wd.to_str().unwrap();
    let mut cmd = Command::new("/bin/bash");
    cmd.args(["-c", crate::scan::SCAN_SCRIPT])
        .env("CBX_WORKDIR", wd)
        .env("CBX_RECORD", crabbox_core::provider::record_path(wd_s));
    if let Some(id) = id {
        // Its start waited for up to 30 s: a loaded machine's python may take seconds.
        cmd.env("CBX_WATCHER", WATCHER)
            .env("CBX_WATCH_CTL", watch_dir(wd_s))
            .env("CBX_WATCH_ID", id)
            .env("CBX_WATCH_WAIT_TICKS", "6000");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let known = Known::default();
    let (tree, fresh) = parse_with(&out.stdout, &known).unwrap();
    (tree, fresh.watch)
}

/// Asks watcher `id` as crabbox does (a request directory in `ctl`, then its state file):
/// whether it saw no change. `None`: no answer within 30 s.
pub(super) fn ask(ctl: &str, id: &str) -> Option<bool> {
    let (state, nonce) = request(ctl, "p")?;
    watcher_answer(&state, id, &nonce)
}

/// Asks watcher `id` for what changed, and to forget it, as crabbox does: the patch segment;
/// `None` when it does not answer that (lost, another watcher) or not within 30 s.
pub(super) fn changes(ctl: &str, id: &str) -> Option<Vec<u8>> {
    let (state, nonce) = request(ctl, "r")?;
    (keeps_count(&state, id) && answered(&state, &nonce))
        .then(|| crate::scan::watcher_segment(&state))
        .flatten()
}

/// Makes request `<kind>-<nonce>` and reads the state until it answers it or can no longer.
fn request(ctl: &str, kind: &str) -> Option<(Vec<u8>, String)> {
    let nonce = hex::encode(rand::random::<[u8; 8]>());
    let ctl = PathBuf::from(ctl);
    std::fs::create_dir(ctl.join(format!("{kind}-{nonce}"))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(state) = std::fs::read(ctl.join("state")) {
            if answered(&state, &nonce) || state.split(|b| *b == 0).nth(3) == Some(b"lost") {
                return Some((state, nonce));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

impl Drop for Tree {
    fn drop(&mut self) {
        // The watcher ends when its control directory goes.
        let _ = std::fs::remove_dir_all(self.ctl());
    }
}

fn python3() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Each change, made after a fresh scan: the watcher must report it.
fn changed(what: &str, change: impl FnOnce(&Path)) {
    assert!(python3(), "python3 is needed to test the tree watcher");
    let t = Tree::new();
    let id = t.scan("0123abcd");
    assert_eq!(t.ask(&id), Some(true), "{what}: nothing changed yet");
    change(&t.wd());
    assert_eq!(t.ask(&id), Some(false), "{what} went unreported");
    // Reported for good, and to nobody else's id.
    assert_eq!(t.ask(&id), Some(false), "{what}: asked again");
    assert_eq!(t.ask("ffff"), Some(false), "{what}: another watcher's id");
}

#[test]
fn every_kind_of_change_after_the_scan_is_reported() {
    changed("a rewritten file", |w| {
        std::fs::write(w.join("a.txt"), "x\n").unwrap()
    });
    changed("an appended file", |w| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(w.join("src/deep/c.rs"))
            .unwrap();
        f.write_all(b"more").unwrap();
    });
    changed("a new mtime alone", |w| {
        let f = std::fs::File::options()
            .write(true)
            .open(w.join("a.txt"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    });
    changed("a chmod", |w| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(w.join("src/b.rs"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
    });
    changed("a removed file", |w| {
        std::fs::remove_file(w.join("src/b.rs")).unwrap()
    });
    changed("a new file", |w| {
        std::fs::write(w.join("src/new.rs"), "").unwrap()
    });
    changed("a rename within", |w| {
        std::fs::rename(w.join("a.txt"), w.join("src/a.txt")).unwrap()
    });
    changed("a new directory", |w| {
        std::fs::create_dir(w.join("target")).unwrap()
    });
    changed("a listed directory removed", |w| {
        std::fs::remove_dir_all(w.join("src/deep")).unwrap()
    });
    changed("a listed directory replaced by a symlink", |w| {
        std::fs::remove_dir_all(w.join("src")).unwrap();
        std::os::unix::fs::symlink("/tmp", w.join("src")).unwrap();
    });
    changed("the record rewritten", |w| {
        let rec = w.parent().unwrap().join(".w.crabbox-synced");
        std::fs::write(&rec, "fa.txt\0").unwrap();
    });
    changed("the workdir moved away", |w| {
        std::fs::rename(w, w.with_file_name("elsewhere")).unwrap()
    });
}

#[test]
fn reading_the_tree_or_writing_beside_it_is_no_change() {
    assert!(python3(), "python3 is needed to test the tree watcher");
    let t = Tree::new();
    let id = t.scan("0123abcd");
    let w = t.wd();
    std::fs::read(w.join("src/deep/c.rs")).unwrap();
    std::fs::read_dir(w.join("src")).unwrap().for_each(drop);
    std::fs::write(t.dir.path().join("beside.txt"), "x").unwrap();
    assert_eq!(t.ask(&id), Some(true));
    // A newer scan's watcher replaces it: the old id is answered no more, and the newer
    // watcher's answer to "what changed?" is nobody else's.
    let newer = t.scan("4567cdef");
    assert_eq!(t.ask(&newer), Some(true));
    assert_eq!(t.ask(&id), Some(false));
    assert_eq!(changes(&t.ctl(), &id), None);
    assert!(changes(&t.ctl(), &newer).is_some_and(|s| crate::scan::is_empty_segment(&s)));
}

#[test]
fn a_watcher_answer_is_read_only_for_its_own_request() {
    let state = b"cbxw1\0ab\0n1\0ok\0";
    assert_eq!(watcher_answer(state, "ab", "n1"), Some(true));
    assert_eq!(watcher_answer(state, "ab", "n2"), None, "not answered yet");
    assert_eq!(
        watcher_answer(state, "cd", "n1"),
        Some(false),
        "another watcher"
    );
    let dirty = b"cbxw1\0ab\0n1\0ok\0src/b.rs\0";
    assert_eq!(watcher_answer(dirty, "ab", "n1"), Some(false));
    let lost = b"cbxw1\0ab\0\0lost\0";
    assert_eq!(
        watcher_answer(lost, "ab", "n1"),
        Some(false),
        "lost is final"
    );
    assert_eq!(watcher_answer(b"", "ab", "n1"), Some(false));
    assert_eq!(watcher_answer(b"cbxw1\0ab\0n1\0ok", "ab", "n1"), Some(true));
}

#[test]
fn a_watcher_that_lost_track_tells_nothing_but_that() {
    assert!(python3(), "python3 is needed to test the tree watcher");
    let t = Tree::new();
    let id = t.scan("0123abcd");
    // A listed directory's name taken by a symlink: what a full scan lists differs.
    std::fs::remove_dir_all(t.wd().join("src")).unwrap();
    std::os::unix::fs::symlink("/tmp", t.wd().join("src")).unwrap();
    assert_eq!(changes(&t.ctl(), &id), None);
    assert_eq!(t.ask(&id), Some(false));
}

/// A sync laid out for the watcher as crabbox lays it out: the archive of `files` (written
/// under a local root, with these modes and exact mtimes) in /tmp, the ops and the record
/// beside the staging directory. The request's spec (`<tag>-<flags>`) and those paths.
struct Staged {
    spec: String,
    stage: PathBuf,
    paths: Vec<PathBuf>,
}

fn stage_sync(
    t: &Tree,
    files: &[(&str, &str, u32, i128)],
    ops: &[crabbox_core::sync::SyncOp],
    record: Option<&[u8]>,
    codec: crabbox_core::sync::Codec,
) -> Staged {
    use crabbox_core::sync::{write_archive_with, Codec, EntryKind, SyncEntry};
    let local = t.dir.path().join("local");
    let mut entries = Vec::new();
    for (path, body, mode, mtime_ns) in files {
        let full = local.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, body).unwrap();
        entries.push(SyncEntry {
            path: path.to_string(),
            kind: EntryKind::File,
            mode: *mode,
            size: body.len() as u64,
            mtime_ns: *mtime_ns,
            link_target: None,
        });
    }
    let tag = hex::encode(rand::random::<[u8; 8]>());
    let (ext, flag) = match codec {
        Codec::Stored => ("tar", "t"),
        _ => ("tgz", "z"),
    };
    let chunk = PathBuf::from(format!("/tmp/crabbox-{tag}-0.{ext}"));
    let out = std::fs::File::create(&chunk).unwrap();
    write_archive_with(&local, &entries, codec, out, |_| {}).unwrap();
    let stage = PathBuf::from(staging_dir(t.wd().to_str().unwrap(), &tag));
    let mut spec = format!("{tag}-{flag}");
    let mut paths = vec![chunk];
    if !ops.is_empty() {
        let p = PathBuf::from(format!("{}.ops", stage.display()));
        std::fs::write(&p, crabbox_core::sync::SyncOp::encode_all(ops)).unwrap();
        spec.push('o');
        paths.push(p);
    }
    if let Some(record) = record {
        let p = PathBuf::from(format!("{}.rec", stage.display()));
        std::fs::write(&p, record).unwrap();
        spec.push('r');
        paths.push(p);
    }
    Staged { spec, stage, paths }
}

/// The id of the watchers these tests start: one that applies syncs.
const W: &str = "5-0123abcd";

/// Asks watcher [`W`] to apply `spec` (`<tag>-<flags>`) and waits (30 s at most) for its
/// The sync of one edit (`src/b.rs`), staged for the watcher: a plain tar, no ops, no record.
fn stage_edit(t: &Tree) -> Staged {
    let edit = [("src/b.rs", "edited\n", 0o644, 1_700_000_000_000_000_000)];
    stage_sync(t, &edit, &[], None, crabbox_core::sync::Codec::Stored)
}

/// answer to it.
fn apply_request(ctl: &str, spec: &str) -> Option<Vec<u8>> {
    apply_request_of(ctl, spec, W)
}

fn apply_request_of(ctl: &str, spec: &str, id: &str) -> Option<Vec<u8>> {
    let ctl = PathBuf::from(ctl);
    let request = format!("{spec}-{id}");
    // A file, as the last part of an upload.
    std::fs::write(ctl.join(format!("a-{request}")), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(state) = std::fs::read(ctl.join("state")) {
            if answered(&state, &request) {
                return Some(state);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

fn mtime_ns(p: &Path) -> i128 {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_watcher_applies_a_small_sync_itself_and_answers_what_it_changed() {
    use crabbox_core::sync::{Codec, SyncOp};
    assert!(python3(), "python3 is needed to test the tree watcher");
    for codec in [Codec::Stored, Codec::Gzip] {
        let t = Tree::new();
        let id = t.scan(W);
        let w = t.wd();
        // An edit, a new file, a deletion; a new record naming the same directories.
        let new_record = b"dsrc\0dsrc/deep\0fsrc/b.rs\0fsrc/deep/c.rs\0fsrc/deep/d.txt\0";
        let s = stage_sync(
            &t,
            &[
                ("src/b.rs", "edited\n", 0o755, 1_700_000_000_123_456_789),
                ("src/deep/d.txt", "new\n", 0o640, -1_500_000_000),
            ],
            &[
                SyncOp::ClearIfDir("src/deep/d.txt".into()),
                SyncOp::Delete("a.txt".into()),
            ],
            Some(new_record),
            codec,
        );
        let state = apply_request(&t.ctl(), &s.spec).expect("the watcher answered");
        let applied = apply_answer(&state).expect("a readable answer");
        let ApplyAnswer::Applied(segment) = applied.expect("applied") else {
            panic!("not applied ({codec:?})");
        };
        let segment =
            segment.expect("the watcher still keeps count: the record is the one it stored");
        assert_eq!(
            std::fs::read_to_string(w.join("src/b.rs")).unwrap(),
            "edited\n"
        );
        assert_eq!(mode(&w.join("src/b.rs")), 0o755);
        assert_eq!(mtime_ns(&w.join("src/b.rs")), 1_700_000_000_123_456_789);
        assert_eq!(
            std::fs::read_to_string(w.join("src/deep/d.txt")).unwrap(),
            "new\n"
        );
        assert_eq!(mode(&w.join("src/deep/d.txt")), 0o640);
        assert_eq!(mtime_ns(&w.join("src/deep/d.txt")), -1_500_000_000);
        assert!(!w.join("a.txt").exists(), "deleted");
        assert_eq!(
            std::fs::read(t.dir.path().join(".w.crabbox-synced")).unwrap(),
            new_record
        );
        for p in &s.paths {
            assert!(!p.exists(), "{} left behind ({codec:?})", p.display());
        }
        // Its answer is what changed, as the box holds it now; then it counts from there.
        let (changed, now) = crate::scan::segment_changes(&segment).unwrap();
        for p in ["a.txt", "src/b.rs", "src/deep/d.txt"] {
            assert!(changed.iter().any(|c| c == p), "{p} not in {changed:?}");
        }
        let b = &now.entries["src/b.rs"];
        assert_eq!((b.size, b.mode & 0o777), (7, 0o755));
        assert!(!now.entries.contains_key("a.txt"));
        assert_eq!(
            t.ask(&id),
            Some(true),
            "forgotten once answered ({codec:?})"
        );
        // The staging directory goes once the answer is written (before the next question).
        assert!(!s.stage.exists(), "staging left behind ({codec:?})");
        // The record touched by anyone else afterwards is still a loss of count.
        std::fs::write(t.dir.path().join(".w.crabbox-synced"), "fa.txt\0").unwrap();
        assert_eq!(t.ask(&id), Some(false));
        // The request file went once the next request was answered (and before the one after).
        let request = PathBuf::from(t.ctl()).join(format!("a-{}-{W}", s.spec));
        assert!(!request.exists(), "request left behind ({codec:?})");
    }
}

#[test]
fn a_sync_that_makes_a_directory_is_applied_but_ends_the_count() {
    use crabbox_core::sync::{Codec, SyncOp};
    assert!(python3(), "python3 is needed to test the tree watcher");
    let t = Tree::new();
    let id = t.scan(W);
    // Files in a new directory are not watched: only a full scan may vouch for them.
    let new_record =
        b"dsrc\0dsrc/deep\0dsrc/new\0fa.txt\0fsrc/b.rs\0fsrc/deep/c.rs\0fsrc/new/d.txt\0";
    let s = stage_sync(
        &t,
        &[("src/new/d.txt", "new\n", 0o644, 1_700_000_000_000_000_000)],
        &[
            SyncOp::EnsureDir("src/new".into()),
            SyncOp::ClearIfDir("src/new/d.txt".into()),
        ],
        Some(new_record),
        Codec::Stored,
    );
    let state = apply_request(&t.ctl(), &s.spec).expect("the watcher answered");
    assert_eq!(
        apply_answer(&state),
        Some(Ok(ApplyAnswer::Applied(None))),
        "applied, count lost"
    );
    assert_eq!(
        std::fs::read_to_string(t.wd().join("src/new/d.txt")).unwrap(),
        "new\n"
    );
    assert_eq!(t.ask(&id), Some(false));
}

#[test]
fn a_sync_the_watcher_cannot_apply_leaves_the_tree_and_says_why() {
    use crabbox_core::sync::{Codec, SyncOp};
    assert!(python3(), "python3 is needed to test the tree watcher");
    let t = Tree::new();
    let id = t.scan(W);
    let w = t.wd();
    // The ops were announced but never arrived: nothing may change.
    let s = stage_sync(
        &t,
        &[("src/b.rs", "edited\n", 0o644, 1_700_000_000_000_000_000)],
        &[SyncOp::Delete("a.txt".into())],
        None,
        Codec::Stored,
    );
    std::fs::remove_file(&s.paths[1]).unwrap();
    let state = apply_request(&t.ctl(), &s.spec).expect("the watcher answered");
    let why = apply_answer(&state).unwrap().unwrap_err();
    assert!(
        why.contains("ops") && why.contains("left as it was"),
        "{why}"
    );
    assert_eq!(std::fs::read_to_string(w.join("src/b.rs")).unwrap(), "b\n");
    assert!(w.join("a.txt").exists());
    assert!(!s.paths[0].exists(), "the upload removed");
    // A failure forgets nothing, and its staging directory goes after the answer.
    assert_eq!(t.ask(&id), Some(true), "nothing changed");
    assert!(!s.stage.exists(), "the staging directory removed");

    // A file in the way of a staged one, with no op to clear it: the failure names it.
    let s = stage_sync(
        &t,
        &[("a.txt/inner", "x\n", 0o644, 0)],
        &[],
        None,
        Codec::Stored,
    );
    let state = apply_request(&t.ctl(), &s.spec).expect("the watcher answered");
    let why = apply_answer(&state).unwrap().unwrap_err();
    assert!(why.contains("a.txt/inner"), "{why}");
    assert_eq!(std::fs::read_to_string(w.join("a.txt")).unwrap(), "a\n");
}

#[test]
fn a_sync_claimed_by_another_gone_or_asked_of_another_watcher_is_left_alone() {
    assert!(python3(), "python3 is needed to test the tree watcher");
    let t = Tree::new();
    let id = t.scan(W);
    let ctl = PathBuf::from(t.ctl());
    // Claimed first by the scripts (or taken back by crabbox): they made the staging
    // directory. Requests are taken in order: once a later question is answered, the
    // claimed one was seen, and neither answered nor touched.
    let claimed = stage_edit(&t);
    std::fs::create_dir(&claimed.stage).unwrap();
    let request = format!("{}-{W}", claimed.spec);
    // A request directory, as an older crabbox makes it.
    std::fs::create_dir(ctl.join(format!("a-{request}"))).unwrap();
    // Asked of another watcher (one this watcher replaced).
    let other = stage_edit(&t);
    let other_request = format!("{}-5-ffffffff", other.spec);
    std::fs::write(ctl.join(format!("a-{other_request}")), b"").unwrap();
    // Applied and removed already: its upload is gone, so making its directory claims nothing.
    let gone = stage_edit(&t);
    std::fs::remove_file(&gone.paths[0]).unwrap();
    let gone_request = format!("{}-{W}", gone.spec);
    std::fs::write(ctl.join(format!("a-{gone_request}")), b"").unwrap();
    assert_eq!(t.ask(&id), Some(true), "nothing changed");
    let state = std::fs::read(ctl.join("state")).unwrap();
    for r in [&request, &other_request, &gone_request] {
        assert!(!answered(&state, r), "{r} answered");
    }
    assert!(
        claimed.paths[0].exists() && claimed.stage.exists(),
        "the claimer's files stay"
    );
    assert!(
        other.paths[0].exists() && !other.stage.exists(),
        "another's sync untouched"
    );
    assert!(
        !gone.stage.exists(),
        "no staging directory left for a sync that is gone"
    );
    assert_eq!(
        std::fs::read_to_string(t.wd().join("src/b.rs")).unwrap(),
        "b\n"
    );
    std::fs::remove_dir(&claimed.stage).unwrap();
    std::fs::remove_file(&claimed.paths[0]).unwrap();
    std::fs::remove_file(&other.paths[0]).unwrap();
}

/// Watcher processes stopped (SIGSTOP) until dropped: requests made meanwhile all reach the
/// watcher in one read.
struct Paused(Vec<String>);

impl Paused {
    /// Stops every process whose arguments name `ctl` (the watcher of that control directory).
    fn watcher(ctl: &str) -> Self {
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            if cmdline.split(|b| *b == 0).any(|a| a == ctl.as_bytes()) {
                pids.push(pid);
            }
        }
        assert!(!pids.is_empty(), "no watcher of {ctl} found");
        let paused = Paused(pids);
        paused.signal("-STOP");
        paused
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(sig)
            .args(&self.0)
            .status()
            .unwrap();
        assert!(ok.success(), "kill {sig} {:?}", self.0);
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-CONT").args(&self.0).status();
    }
}

#[test]
fn requests_are_taken_in_the_order_they_were_made() {
    assert!(python3(), "python3 is needed to test the tree watcher");
    let t = Tree::new();
    let id = t.scan(W);
    let ctl = PathBuf::from(t.ctl());
    let s = stage_edit(&t);
    // An apply, then a question, both read by the watcher at once: the question is answered
    // after the apply, so whoever asked sees the tree as applied.
    let paused = Paused::watcher(&t.ctl());
    std::fs::write(ctl.join(format!("a-{}-{W}", s.spec)), b"").unwrap();
    let nonce = "0badc0ffee";
    std::fs::create_dir(ctl.join(format!("p-{nonce}"))).unwrap();
    drop(paused);
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let state = std::fs::read(ctl.join("state")).unwrap_or_default();
        if answered(&state, nonce) {
            break state;
        }
        assert!(Instant::now() < deadline, "the question went unanswered");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(
        watcher_answer(&state, &id, nonce),
        Some(true),
        "nothing else changed"
    );
    assert_eq!(
        std::fs::read_to_string(t.wd().join("src/b.rs")).unwrap(),
        "edited\n",
        "the apply made before the question was taken before it"
    );
}

#[test]
fn a_watcher_that_loses_track_after_applying_still_answers_the_apply() {
    assert!(python3(), "python3 is needed to test the tree watcher");
    let t = Tree::new();
    let id = t.scan(W);
    let s = stage_edit(&t);
    let state = apply_request(&t.ctl(), &s.spec).expect("an answer");
    assert!(matches!(
        apply_answer(&state),
        Some(Ok(ApplyAnswer::Applied(Some(_))))
    ));
    // A listed directory removed: lost for good, said with the last answer's nonce, so that
    // whoever still waits for the apply's answer reads it.
    std::fs::remove_dir_all(t.wd().join("src/deep")).unwrap();
    assert_eq!(t.ask(&id), Some(false));
    let state = std::fs::read(PathBuf::from(t.ctl()).join("state")).unwrap();
    assert!(!keeps_count(&state, &id));
    assert_eq!(
        state.split(|b| *b == 0).nth(2),
        Some(format!("{}-{W}", s.spec).as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&state)
    );
    assert_eq!(apply_answer(&state), Some(Ok(ApplyAnswer::Applied(None))));
}

#[test]
fn an_apply_answer_is_read_whole() {
    assert_eq!(
        apply_answer(b"cbxw1\0ab\0n\0ok\0Aok\0C0\0E0\0"),
        Some(Ok(ApplyAnswer::Applied(Some(b"C0\0E0\0".to_vec()))))
    );
    assert_eq!(
        apply_answer(b"cbxw1\0ab\0n\0lost\0Aok\0C0\0E0\0"),
        Some(Ok(ApplyAnswer::Applied(None))),
        "applied, but the watcher lost count"
    );
    assert_eq!(
        apply_answer(b"cbxw1\0ab\0n\0ok\0A!no room\0C0\0E0\0"),
        Some(Err("no room".into()))
    );
    assert_eq!(apply_answer(b"cbxw1\0ab\0n\0ok\0C0\0E0\0"), None);
    assert_eq!(
        apply_answer(b"cbxw1\0ab\0n\0ok\0Aok\0C1\0"),
        Some(Ok(ApplyAnswer::Applied(None)))
    );
    assert_eq!(
        apply_answer(b"cbxw1\0ab\0n\0ok\0A~\0a.txt\0"),
        Some(Ok(ApplyAnswer::Moved))
    );
    assert!(watcher_applies("5-0123abcd"));
    assert!(!watcher_applies("0123abcd"), "an older crabbox's watcher");
    assert!(
        !watcher_applies("4-0123abcd"),
        "one that takes only a request directory made after the upload"
    );
    assert!(
        !watcher_applies("3-0123abcd"),
        "one that takes requests naming no watcher"
    );
}

#[test]
fn a_watcher_applies_nothing_through_a_symlink_planted_on_the_box() {
    use crabbox_core::sync::{Codec, SyncOp};
    assert!(python3(), "python3 is needed to test the tree watcher");
    let t = Tree::new();
    let w = t.wd();
    // A command on the box left links to elsewhere where synced paths go.
    let outside = t.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("f.txt"), "not crabbox's").unwrap();
    std::os::unix::fs::symlink(&outside, w.join("l")).unwrap();
    std::fs::create_dir_all(w.join("n")).unwrap();
    std::os::unix::fs::symlink(&outside, w.join("n/m")).unwrap();
    t.scan(W);
    let s = stage_sync(
        &t,
        &[("n/m/h.txt", "new\n", 0o644, 1_700_000_000_000_000_000)],
        &[
            SyncOp::EnsureDir("n/m".into()),
            SyncOp::ClearIfDir("n/m/h.txt".into()),
            SyncOp::Delete("l/f.txt".into()),
        ],
        Some(b"dn\0dn/m\0fn/m/h.txt\0"),
        Codec::Stored,
    );
    let state = apply_request(&t.ctl(), &s.spec).expect("the watcher answered");
    assert!(apply_answer(&state).unwrap().is_ok());
    assert_eq!(
        std::fs::read_to_string(outside.join("f.txt")).unwrap(),
        "not crabbox's",
        "nothing deleted through a link"
    );
    assert!(
        !outside.join("h.txt").exists(),
        "nothing written through a link"
    );
    assert!(!std::fs::symlink_metadata(w.join("n/m"))
        .unwrap()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(w.join("n/m/h.txt")).unwrap(),
        "new\n"
    );
}

#[test]
fn a_sync_for_the_tree_as_last_answered_is_not_applied_onto_a_changed_one() {
    use crabbox_core::sync::Codec;
    assert!(python3(), "python3 is needed to test the tree watcher");
    let t = Tree::new();
    let id = t.scan(W);
    let w = t.wd();
    // Nothing changed since the watcher last answered: applied.
    let s = stage_sync(
        &t,
        &[("src/b.rs", "one\n", 0o644, 1_700_000_000_000_000_000)],
        &[],
        None,
        Codec::Stored,
    );
    let state = apply_request(&t.ctl(), &format!("{}u", s.spec)).expect("an answer");
    assert!(matches!(
        apply_answer(&state),
        Some(Ok(ApplyAnswer::Applied(Some(_))))
    ));
    assert_eq!(
        std::fs::read_to_string(w.join("src/b.rs")).unwrap(),
        "one\n"
    );
    // A command rewrites a file, then a sync planned from the tree as it was arrives.
    std::fs::write(w.join("a.txt"), "changed on the box\n").unwrap();
    let s = stage_sync(
        &t,
        &[("src/b.rs", "two\n", 0o644, 1_700_000_001_000_000_000)],
        &[],
        None,
        Codec::Stored,
    );
    let state = apply_request(&t.ctl(), &format!("{}u", s.spec)).expect("an answer");
    assert_eq!(apply_answer(&state), Some(Ok(ApplyAnswer::Moved)));
    assert_eq!(
        std::fs::read_to_string(w.join("src/b.rs")).unwrap(),
        "one\n"
    );
    assert!(!s.stage.exists(), "not claimed");
    assert!(s.paths[0].exists(), "the upload is its sender's to remove");
    std::fs::remove_file(&s.paths[0]).unwrap();
    // The change is still counted, and told to whoever asks what changed.
    assert_eq!(t.ask(&id), Some(false));
    let (changed, _) = crate::scan::segment_changes(&changes(&t.ctl(), &id).unwrap()).unwrap();
    assert!(changed.iter().any(|p| p == "a.txt"), "{changed:?}");
}

#[test]
fn a_watcher_runs_the_ops_as_the_commit_script_does() {
    use crabbox_core::sync::{Codec, SyncOp};
    assert!(python3(), "python3 is needed to test the tree watcher");
    let t = Tree::new();
    t.scan(W);
    let w = t.wd();
    // A directory cleared whole, then the last file of its parent deleted: the emptied
    // parent goes too, the workdir stays.
    let s = stage_sync(
        &t,
        &[("a.txt", "a, again\n", 0o644, 1_700_000_000_000_000_000)],
        &[
            SyncOp::Clear("src/deep".into()),
            SyncOp::Delete("src/b.rs".into()),
        ],
        Some(b"fa.txt\0"),
        Codec::Stored,
    );
    let state = apply_request(&t.ctl(), &s.spec).expect("an answer");
    assert!(apply_answer(&state).unwrap().is_ok());
    assert!(
        !w.join("src").exists(),
        "emptied synced directory is pruned"
    );
    assert_eq!(
        std::fs::read_to_string(w.join("a.txt")).unwrap(),
        "a, again\n"
    );
}
