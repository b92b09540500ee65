//! Tests of the on-box sync scripts, run locally with bash, GNU tar and coreutils.

use std::path::{Path, PathBuf};

use super::*;
use crabbox_core::sync::{ChunkSpec, SyncManifest, SyncRecord};

#[test]
fn staging_sits_next_to_the_workdir() {
    assert_eq!(
        staging_dir("/home/user/crabbox", "ab"),
        "/home/user/.crabbox.crabbox-stage-ab"
    );
    assert_eq!(staging_dir("/srv", "ab"), "/.srv.crabbox-stage-ab");
}

#[test]
fn sync_scripts_are_valid_bash() {
    crate::assert_valid_bash(UNPACK_SCRIPT);
    crate::assert_valid_bash(COMMIT_SCRIPT);
    crate::assert_valid_bash(REAP_SCRIPT);
    crate::assert_valid_bash(UNPACK_THEN_COMMIT);
    crate::assert_valid_bash(CLAIM_SCRIPT);
}

/// A box directory with a workdir, and a source tree to sync from.
struct Box_ {
    dir: tempfile::TempDir,
    src: tempfile::TempDir,
}

impl Box_ {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            src: tempfile::tempdir().unwrap(),
        }
    }

    fn wd(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn write_src(&self, rel: &str, text: &str) {
        let p = self.src.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Runs the scripts as `apply` does: the files of `send` in two chunks (the first one
    /// carrying ops and record), each unpacked, then the commit.
    fn apply(&self, send: &[&str], ops: &[SyncOp]) -> std::process::Output {
        self.apply_with(send, ops, true)
    }

    /// [`Box_::apply`]; with `record` false no new record is sent (the paths are the same),
    /// and a lone chunk is unpacked and committed by one process.
    fn apply_with(&self, send: &[&str], ops: &[SyncOp], record: bool) -> std::process::Output {
        let tag = hex::encode(rand::random::<[u8; 4]>());
        let m = SyncManifest::build(self.src.path(), &Default::default()).unwrap();
        let chosen: Vec<_> = m
            .entries
            .iter()
            .filter(|e| send.contains(&e.path.as_str()))
            .collect();
        let half = if record { chosen.len() / 2 } else { 0 };
        let wd = self.wd();
        let stage = staging_dir(wd.to_str().unwrap(), &tag);
        if !ops.is_empty() {
            std::fs::write(format!("{stage}.ops"), SyncOp::encode_all(ops)).unwrap();
        }
        if record {
            std::fs::write(format!("{stage}.rec"), SyncRecord::of(&m).encode()).unwrap();
        }
        let chunks = [
            (&chosen[..half], Codec::Zstd),
            (&chosen[half..], Codec::Gzip),
        ];
        for (n, (part, codec)) in chunks.into_iter().enumerate().skip(usize::from(!record)) {
            let upload = self.dir.path().join(format!("crabbox-{tag}-{n}.tar"));
            let mut bytes = Vec::new();
            // Two chunks name their directories, as a sync of several chunks does.
            let mut spec = ChunkSpec::new(codec, part.iter().map(|e| (*e).clone()).collect());
            spec.name_dirs = record;
            spec.write(self.src.path(), &mut bytes, |_| {}).unwrap();
            std::fs::write(&upload, bytes).unwrap();
            let mut cmd = if record {
                unpacking(UNPACK_SCRIPT, &upload, codec.name(), &stage, &wd)
            } else {
                unpack_then_commit(&upload, codec.name(), &stage, &wd, !ops.is_empty())
            };
            let out = cmd.output().unwrap();
            assert!(
                !upload.exists(),
                "an upload is removed however its unpack ends"
            );
            if !out.status.success() || !record {
                return out;
            }
        }
        std::process::Command::new("/bin/bash")
            .args(["-c", COMMIT_SCRIPT])
            .env("CBX_WORKDIR", &wd)
            .env("CBX_STAGE", &stage)
            .env("CBX_RECORD", record_path(wd.to_str().unwrap()))
            .env("CBX_OPS_SENT", if ops.is_empty() { "" } else { "1" })
            .env("CBX_REC_SENT", "1")
            .output()
            .unwrap()
    }

    fn apply_ok(&self, send: &[&str], ops: &[SyncOp]) {
        let out = self.apply(send, ops);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("crabbox-stage") || n.starts_with("crabbox-"))
            .collect()
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn apply_script_swaps_then_overlays_keeping_build_outputs_and_keeps_the_record() {
    let b = Box_::new();
    b.write_src("d/a.txt", "a1");
    b.write_src("b.txt", "b1");
    b.apply_ok(&["d/a.txt", "b.txt"], &[]);
    let wd = b.wd();
    assert_eq!(read(&wd.join("d/a.txt")), "a1");
    let record = std::fs::read(record_path(wd.to_str().unwrap())).unwrap();
    let record = SyncRecord::decode(&record);
    assert!(record.paths.contains("d/a.txt") && record.dirs.contains("d"));

    std::fs::create_dir_all(wd.join("target")).unwrap();
    std::fs::write(wd.join("target/out"), "built").unwrap();
    b.write_src("b.txt", "b2");
    std::fs::remove_file(b.src.path().join("d/a.txt")).unwrap();
    b.apply_ok(&["b.txt"], &[SyncOp::Delete("d/a.txt".into())]);
    assert_eq!(read(&wd.join("b.txt")), "b2");
    assert!(!wd.join("d").exists(), "emptied synced directory is pruned");
    assert_eq!(read(&wd.join("target/out")), "built");
    assert!(b.leftovers().is_empty(), "{:?}", b.leftovers());
}

#[test]
fn an_edit_keeps_the_record_on_the_box_and_unpacks_and_commits_in_one_process() {
    let b = Box_::new();
    b.write_src("d/a.txt", "a1");
    b.write_src("b.txt", "b1");
    b.apply_ok(&["d/a.txt", "b.txt"], &[]);
    let wd = b.wd();
    let record = PathBuf::from(record_path(wd.to_str().unwrap()));
    let before = std::fs::read(&record).unwrap();
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let ino = inode(&record);
    b.write_src("d/a.txt", "a2");
    let out = b.apply_with(&["d/a.txt"], &[], false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&wd.join("d/a.txt")), "a2");
    assert_eq!(read(&wd.join("b.txt")), "b1");
    assert_eq!(std::fs::read(&record).unwrap(), before);
    assert_eq!(
        inode(&record),
        ino,
        "the record is left in place, not rewritten"
    );
    assert!(b.leftovers().is_empty(), "{:?}", b.leftovers());

    // The plan's ops, beside a lone chunk, run in that one process too.
    b.write_src("b.txt", "b3");
    let out = b.apply_with(&["b.txt"], &[SyncOp::Delete("d/a.txt".into())], false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!wd.join("d").exists(), "the ops ran");
    assert_eq!(read(&wd.join("b.txt")), "b3");
    assert!(b.leftovers().is_empty(), "{:?}", b.leftovers());
}

#[test]
fn a_commit_whose_ops_or_record_went_missing_fails_and_changes_nothing() {
    let b = Box_::new();
    b.write_src("a.txt", "a1");
    b.apply_ok(&["a.txt"], &[]);
    let wd = b.wd();
    let stage = staging_dir(wd.to_str().unwrap(), "lost");
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::write(Path::new(&stage).join("a.txt"), "a2").unwrap();
    for missing in ["CBX_OPS_SENT", "CBX_REC_SENT"] {
        std::fs::create_dir_all(&stage).unwrap();
        std::fs::write(Path::new(&stage).join("a.txt"), "a2").unwrap();
        let out = std::process::Command::new("/bin/bash")
            .args(["-c", COMMIT_SCRIPT])
            .env("CBX_WORKDIR", &wd)
            .env("CBX_STAGE", &stage)
            .env("CBX_RECORD", record_path(wd.to_str().unwrap()))
            .env(missing, "1")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{missing}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("missing"),
            "{missing}"
        );
        assert_eq!(
            read(&wd.join("a.txt")),
            "a1",
            "{missing}: the workdir is as it was"
        );
        assert!(
            !Path::new(&stage).exists(),
            "{missing}: the staging directory is removed"
        );
    }
}

#[test]
fn nothing_is_deleted_or_written_through_a_symlink_planted_on_the_box() {
    let b = Box_::new();
    b.write_src("d/f.txt", "ours");
    b.write_src("e/g.txt", "ours");
    b.apply_ok(&["d/f.txt", "e/g.txt"], &[]);
    let wd = b.wd();
    // A command on the box swaps the synced directories for links to elsewhere.
    let outside = b.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("f.txt"), "not crabbox's").unwrap();
    std::fs::write(outside.join("g.txt"), "not crabbox's").unwrap();
    for d in ["d", "e"] {
        std::fs::remove_dir_all(wd.join(d)).unwrap();
        std::os::unix::fs::symlink(&outside, wd.join(d)).unwrap();
    }
    // d/f.txt is gone locally: deleting it must not go through the link.
    std::fs::remove_file(b.src.path().join("d/f.txt")).unwrap();
    b.apply_ok(&[], &[SyncOp::Delete("d/f.txt".into())]);
    assert_eq!(read(&outside.join("f.txt")), "not crabbox's");
    // e/g.txt is sent again: the link is cleared and the file lands in a real directory.
    b.write_src("e/g.txt", "ours again");
    b.apply_ok(&["e/g.txt"], &[SyncOp::Clear("e".into())]);
    assert_eq!(read(&outside.join("g.txt")), "not crabbox's");
    assert!(!std::fs::symlink_metadata(wd.join("e"))
        .unwrap()
        .is_symlink());
    assert_eq!(read(&wd.join("e/g.txt")), "ours again");
    // An unscanned chain with a link in it is made real before anything is written.
    b.write_src("n/m/h.txt", "new");
    std::fs::create_dir_all(wd.join("n")).unwrap();
    std::os::unix::fs::symlink(&outside, wd.join("n/m")).unwrap();
    b.apply_ok(
        &["n/m/h.txt"],
        &[
            SyncOp::EnsureDir("n/m".into()),
            SyncOp::ClearIfDir("n/m/h.txt".into()),
        ],
    );
    assert!(!outside.join("h.txt").exists());
    assert_eq!(read(&wd.join("n/m/h.txt")), "new");
}

#[test]
fn a_file_replaced_by_a_directory_on_the_box_is_restored() {
    let b = Box_::new();
    b.write_src("x", "file");
    b.apply_ok(&["x"], &[]);
    let wd = b.wd();
    std::fs::remove_file(wd.join("x")).unwrap();
    std::fs::create_dir_all(wd.join("x/inner")).unwrap();
    b.apply_ok(&["x"], &[SyncOp::Clear("x".into())]);
    assert_eq!(read(&wd.join("x")), "file");
}

/// `script` in bash with the unpack script's inputs: the upload, its codec, the staging
/// directory and the workdir.
fn unpacking(
    script: &str,
    upload: &Path,
    codec: &str,
    stage: &str,
    wd: &Path,
) -> std::process::Command {
    let mut cmd = std::process::Command::new("/bin/bash");
    cmd.args(["-c", script])
        .env("CBX_CHUNK", upload)
        .env("CBX_CODEC", codec)
        .env("CBX_STAGE", stage)
        .env("CBX_WORKDIR", wd);
    cmd
}

/// The unpack and commit of a lone chunk in one process, as the provider starts it.
fn unpack_then_commit(
    upload: &Path,
    codec: &str,
    stage: &str,
    wd: &Path,
    ops_sent: bool,
) -> std::process::Command {
    let mut cmd = unpacking(UNPACK_THEN_COMMIT, upload, codec, stage, wd);
    cmd.env("CBX_JOINED", "1")
        .env("CBX_UNPACK", UNPACK_SCRIPT)
        .env("CBX_COMMIT", COMMIT_SCRIPT)
        .env("CBX_RECORD", record_path(wd.to_str().unwrap()))
        .env("CBX_OPS_SENT", if ops_sent { "1" } else { "" });
    cmd
}

#[test]
fn chunks_unpacking_side_by_side_into_one_staging_directory_all_land() {
    // Files of the same directories spread over eight chunks, unpacked at once again and
    // again: GNU tar fails a file whose directories another tar made under it, unless the
    // chunk names them (without that, this failed in its first round).
    let b = Box_::new();
    for d in 0..60 {
        for f in 0..16 {
            b.write_src(&format!("pkg_{}/mod_{d}/sub/f{f}.ts", d % 6), "x");
        }
    }
    let m = SyncManifest::build(b.src.path(), &Default::default()).unwrap();
    let chunks: Vec<Vec<u8>> = (0..8)
        .map(|k| {
            let mine = m.entries.iter().skip(k).step_by(8).cloned().collect();
            let mut spec = ChunkSpec::new(Codec::Stored, mine);
            spec.name_dirs = true;
            let mut bytes = Vec::new();
            spec.write(b.src.path(), &mut bytes, |_| {}).unwrap();
            bytes
        })
        .collect();
    let wd = b.wd();
    for round in 0..8 {
        let stage = staging_dir(wd.to_str().unwrap(), &format!("r{round}"));
        std::fs::create_dir(&stage).unwrap();
        let running: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(n, bytes)| {
                let upload = b.dir.path().join(format!("crabbox-r{round}-{n}.tar"));
                std::fs::write(&upload, bytes).unwrap();
                unpacking(UNPACK_SCRIPT, &upload, "none", &stage, &wd)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in running {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let landed = SyncManifest::build(Path::new(&stage), &Default::default()).unwrap();
        assert_eq!(landed.len(), m.len(), "round {round}: every file lands");
        std::fs::remove_dir_all(&stage).unwrap();
    }
}

/// A workdir holding `keep.txt`, and an upload that is not the gzip it claims to be: (workdir,
/// upload, staging directory).
fn broken_upload(b: &Box_) -> (PathBuf, PathBuf, String) {
    let wd = b.wd();
    std::fs::create_dir_all(&wd).unwrap();
    std::fs::write(wd.join("keep.txt"), "old").unwrap();
    let upload = b.dir.path().join("crabbox-broken-0.tgz");
    std::fs::write(&upload, b"\x1f\x8bnot really gzip").unwrap();
    let stage = staging_dir(wd.to_str().unwrap(), "x");
    (wd, upload, stage)
}

#[test]
fn failed_extract_leaves_the_workdir_intact() {
    let b = Box_::new();
    let (wd, upload, stage) = broken_upload(&b);
    let out = unpacking(UNPACK_SCRIPT, &upload, "gzip", &stage, &wd)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("left as it was"));
    assert_eq!(read(&wd.join("keep.txt")), "old");
    assert!(!upload.exists(), "upload removed even on failure");
    assert!(!Path::new(&record_path(wd.to_str().unwrap())).exists());
}

#[test]
fn a_failed_extract_in_one_process_with_its_commit_leaves_the_workdir_and_nothing_else() {
    let b = Box_::new();
    let (wd, upload, stage) = broken_upload(&b);
    // As the provider sends it: the staging directory already made, the ops beside it.
    std::fs::create_dir_all(&stage).unwrap();
    let ops = format!("{stage}.ops");
    std::fs::write(
        &ops,
        SyncOp::encode_all(&[SyncOp::Delete("keep.txt".into())]),
    )
    .unwrap();
    let out = unpack_then_commit(&upload, "gzip", &stage, &wd, true)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("left as it was"));
    assert_eq!(read(&wd.join("keep.txt")), "old", "the ops never ran");
    for left in [upload.clone(), PathBuf::from(&stage), PathBuf::from(&ops)] {
        assert!(!left.exists(), "{} is removed", left.display());
    }
}

#[test]
fn reap_script_kills_what_works_on_the_sync_and_removes_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let tag = hex::encode(rand::random::<[u8; 8]>());
    // Uploads live in the box's /tmp, where the reaper looks for them by tag.
    let archive = PathBuf::from(format!("/tmp/crabbox-{tag}-0.tgz"));
    let stage = dir.path().join(format!(".wd.crabbox-stage-{tag}"));
    std::fs::write(&archive, "x").unwrap();
    std::fs::create_dir_all(stage.join("sub")).unwrap();
    std::fs::write(format!("{}.ops", stage.display()), "x").unwrap();
    // A request to the tree's watcher naming the sync, and one naming another.
    let ctl = dir.path().join(".wd.crabbox-watch");
    std::fs::create_dir(&ctl).unwrap();
    std::fs::write(ctl.join(format!("a-{tag}-t-5-ab")), "").unwrap();
    std::fs::write(ctl.join("a-0123456789abcdef-t-5-ab"), "").unwrap();
    // Stands in for a tail or tar left running after its script was SIGKILLed.
    let mut reader = std::process::Command::new("tail")
        .arg("-f")
        .arg(&archive)
        .spawn()
        .unwrap();
    let mut bystander = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let out = std::process::Command::new("/bin/bash")
        .args(["-c", REAP_SCRIPT])
        .env("CBX_TAG", &tag)
        .env("CBX_STAGE", &stage)
        .env("CBX_CTL", &ctl)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let reaped = loop {
        if let Some(status) = reader.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.kill();
    let alive = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(reaped.is_some(), "the upload's reader must be killed");
    assert!(alive, "unrelated processes are left alone");
    assert!(!archive.exists(), "the upload is removed");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from(".wd.crabbox-watch")]);
    let requests: Vec<_> = std::fs::read_dir(&ctl)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        requests,
        [std::ffi::OsString::from("a-0123456789abcdef-t-5-ab")],
        "only the sync's own request is removed"
    );
}

/// The box's tree under `wd`; with `watch`, a watcher of that id started first.
fn scan_box(wd: &Path, watch: Option<&str>) -> RemoteTree {
    let (tree, watcher) = super::watch_tests::scan_locally(wd, watch);
    assert_eq!(watcher.is_some(), watch.is_some(), "the watcher started");
    tree
}

#[test]
fn a_watcher_reports_what_a_sync_changed_so_the_kept_listing_stays_exact() {
    let b = Box_::new();
    for (p, t) in [("d/a.txt", "a1"), ("b.txt", "b1"), ("d/c.txt", "c1")] {
        b.write_src(p, t);
    }
    b.apply_ok(&["d/a.txt", "b.txt", "d/c.txt"], &[]);
    let wd = b.wd();
    let ctl = watch_dir(wd.to_str().unwrap());
    let id = "0a1b2c3d";
    let kept = scan_box(&wd, Some(id));

    // An edit of one file, synced: what the watcher then reports, laid over the kept listing,
    // is what a full reading finds (the record is left as it was: the watcher keeps count).
    b.write_src("d/a.txt", "a2, longer");
    b.apply_ok(&["d/a.txt"], &[]);
    let segment = super::watch_tests::changes(&ctl, id).expect("a report");
    assert!(!crate::scan::is_empty_segment(&segment));
    let mut patched = kept.clone();
    crate::scan::apply_patch(&mut patched, &segment).unwrap();
    assert_ne!(patched.entries, kept.entries, "the edit shows");
    assert_eq!(patched.entries, scan_box(&wd, None).entries);
    // It forgot what it reported: it vouches for the patched reading...
    assert_eq!(super::watch_tests::ask(&ctl, id), Some(true));
    let again = super::watch_tests::changes(&ctl, id).expect("a report");
    assert!(crate::scan::is_empty_segment(&again));
    // ...and still sees what changes after: a file removed on the box, another chmod-ed.
    std::fs::remove_file(wd.join("b.txt")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(wd.join("d/c.txt"), mode).unwrap();
    }
    assert_eq!(super::watch_tests::ask(&ctl, id), Some(false));
    let segment = super::watch_tests::changes(&ctl, id).expect("a report");
    crate::scan::apply_patch(&mut patched, &segment).unwrap();
    assert_eq!(patched.entries, scan_box(&wd, None).entries);
    let _ = std::fs::remove_dir_all(&ctl);
}

#[test]
fn a_sync_that_changes_the_synced_paths_leaves_the_watcher_lost() {
    let b = Box_::new();
    b.write_src("a.txt", "a1");
    b.apply_ok(&["a.txt"], &[]);
    let wd = b.wd();
    let ctl = watch_dir(wd.to_str().unwrap());
    scan_box(&wd, Some("0a1b2c3d"));
    b.write_src("new.txt", "n");
    b.apply_ok(&["new.txt"], &[]);
    assert!(
        super::watch_tests::changes(&ctl, "0a1b2c3d").is_none(),
        "a new record means a full reading"
    );
    assert_eq!(super::watch_tests::ask(&ctl, "0a1b2c3d"), Some(false));
    let _ = std::fs::remove_dir_all(&ctl);
}

#[test]
fn the_scripts_leave_a_sync_the_watcher_claimed_to_it() {
    let b = Box_::new();
    b.write_src("a.txt", "a1");
    b.apply_ok(&["a.txt"], &[]);
    let wd = b.wd();
    let upload = b.dir.path().join("crabbox-claimed-0.tar");
    std::fs::write(&upload, b"the watcher's").unwrap();
    let stage = staging_dir(wd.to_str().unwrap(), "claimed");
    // The watcher made the staging directory first: the scripts change and remove nothing.
    std::fs::create_dir_all(&stage).unwrap();
    let out = unpack_then_commit(&upload, "none", &stage, &wd, false)
        .env("CBX_CLAIM", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(CLAIMED_EXIT));
    assert!(upload.exists() && Path::new(&stage).exists());
    assert_eq!(read(&wd.join("a.txt")), "a1");
    // Unclaimed, the scripts claim it and apply it.
    std::fs::remove_dir(&stage).unwrap();
    b.write_src("a.txt", "a2");
    let mut bytes = Vec::new();
    let m = SyncManifest::build(b.src.path(), &Default::default()).unwrap();
    crabbox_core::sync::write_archive_with(
        b.src.path(),
        m.entries.iter(),
        Codec::Stored,
        &mut bytes,
        |_| {},
    )
    .unwrap();
    std::fs::write(&upload, bytes).unwrap();
    let out = unpack_then_commit(&upload, "none", &stage, &wd, false)
        .env("CBX_CLAIM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&wd.join("a.txt")), "a2");
    assert!(b.leftovers().is_empty(), "{:?}", b.leftovers());
}

#[test]
fn the_scripts_leave_a_sync_whose_upload_is_gone_to_the_watcher_that_applied_it() {
    let b = Box_::new();
    b.write_src("a.txt", "a1");
    b.apply_ok(&["a.txt"], &[]);
    let wd = b.wd();
    // The watcher applied it, removed the upload, answered, then removed its staging
    // directory: the scripts, claiming it after that, find no upload.
    let upload = b.dir.path().join("crabbox-applied-0.tar");
    let stage = staging_dir(wd.to_str().unwrap(), "applied");
    let out = unpack_then_commit(&upload, "none", &stage, &wd, false)
        .env("CBX_CLAIM", "1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(CLAIMED_EXIT),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !Path::new(&stage).exists(),
        "the claim made for nothing is undone"
    );
    assert_eq!(read(&wd.join("a.txt")), "a1");

    // The same, the watcher's staging directory still there when the scripts' `mkdir` met it
    // and gone by the time they looked (a `mkdir` on the path that fails once, as on a
    // directory that exists): still the watcher's sync, not a failure.
    use std::os::unix::fs::PermissionsExt;
    let shim = b.dir.path().join("shim");
    std::fs::create_dir(&shim).unwrap();
    let mark = b.dir.path().join("mkdir-failed-once");
    std::fs::write(
        shim.join("mkdir"),
        "#!/bin/sh\nif [ ! -e \"$MARK\" ]; then : > \"$MARK\"; \
         echo \"mkdir: cannot create directory: File exists\" >&2; exit 1; fi\n\
         exec /bin/mkdir \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(shim.join("mkdir"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap());
    let out = unpack_then_commit(&upload, "none", &stage, &wd, false)
        .env("CBX_CLAIM", "1")
        .env("PATH", path)
        .env("MARK", &mark)
        .output()
        .unwrap();
    assert!(mark.exists(), "the first mkdir was the shim's");
    assert_eq!(
        out.status.code(),
        Some(CLAIMED_EXIT),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new(&stage).exists());
    assert_eq!(read(&wd.join("a.txt")), "a1");
}

#[test]
fn a_claim_is_made_once() {
    let dir = tempfile::tempdir().unwrap();
    let stage = dir.path().join(".w.crabbox-stage-x");
    let claim = || {
        std::process::Command::new("/bin/bash")
            .args(["-c", CLAIM_SCRIPT])
            .env("CBX_STAGE", &stage)
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(claim(), Some(0));
    assert_eq!(claim(), Some(CLAIMED_EXIT));
    let missing = dir.path().join("no/such/parent/x");
    let failed = std::process::Command::new("/bin/bash")
        .args(["-c", CLAIM_SCRIPT])
        .env("CBX_STAGE", &missing)
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    assert!(!failed.stderr.is_empty(), "says why");
}
