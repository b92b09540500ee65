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
        cmd.env("CBX_WATCHER", WATCHER)
            .env("CBX_WATCH_CTL", watch_dir(wd_s))
            .env("CBX_WATCH_ID", id);
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
/// whether it saw no change. `None`: no answer within 10 s.
pub(super) fn ask(ctl: &str, id: &str) -> Option<bool> {
    let (state, nonce) = request(ctl, "p")?;
    watcher_answer(&state, id, &nonce)
}

/// Asks watcher `id` for what changed, and to forget it, as crabbox does: the patch segment;
/// `None` when it does not answer that (lost, another watcher) or not within 10 s.
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(state) = std::fs::read(ctl.join("state")) {
            if answered(&state, &nonce) || state.split(|b| *b == 0).nth(3) == Some(b"lost") {
                return Some((state, nonce));
            }
        }
        std::thread::yield_now();
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
