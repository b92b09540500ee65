//! Tests of the on-box sync scripts, run locally with bash and GNU tar.

use super::*;
use crabbox_core::sync::{write_archive, SyncManifest};

#[test]
fn staging_sits_next_to_the_workdir() {
    assert_eq!(
        staging_dir("/home/user/crabbox", "ab"),
        "/home/user/.crabbox.crabbox-stage-ab"
    );
    assert_eq!(staging_dir("/srv", "ab"), "/.srv.crabbox-stage-ab");
}

#[test]
fn apply_script_is_valid_bash() {
    crate::assert_valid_bash(APPLY_SCRIPT);
}

#[test]
fn apply_script_swaps_then_overlays_keeping_build_outputs() {
    // Exercise the script locally with GNU tar: first sync swaps in, warm sync overlays.
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("d")).unwrap();
    std::fs::write(src.path().join("d/a.txt"), "a1").unwrap();
    std::fs::write(src.path().join("b.txt"), "b1").unwrap();
    let box_dir = tempfile::tempdir().unwrap();
    let wd = box_dir.path().join("work");
    let run = |entries: &[&str], delete: &[&str]| {
        let tag = hex::encode(rand::random::<[u8; 4]>());
        let archive = box_dir.path().join(format!("a-{tag}.tgz"));
        let m = SyncManifest::build(src.path(), &Default::default()).unwrap();
        let chosen: Vec<_> = m
            .entries
            .iter()
            .filter(|e| entries.contains(&e.path.as_str()))
            .collect();
        write_archive(
            src.path(),
            chosen,
            std::fs::File::create(&archive).unwrap(),
            |_| {},
        )
        .unwrap();
        let mut cmd = std::process::Command::new("/bin/bash");
        cmd.args(["-c", APPLY_SCRIPT])
            .env("CBX_ARCHIVE", &archive)
            .env("CBX_WORKDIR", &wd)
            .env("CBX_STAGE", staging_dir(wd.to_str().unwrap(), &tag));
        if !delete.is_empty() {
            let del = box_dir.path().join(format!("d-{tag}"));
            let mut list = Vec::new();
            for d in delete {
                list.extend_from_slice(d.as_bytes());
                list.push(0);
            }
            std::fs::write(&del, list).unwrap();
            cmd.env("CBX_DELETE", &del);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!archive.exists(), "archive must be removed");
    };
    run(&["d/a.txt", "b.txt"], &[]);
    assert_eq!(std::fs::read_to_string(wd.join("d/a.txt")).unwrap(), "a1");
    std::fs::create_dir_all(wd.join("target")).unwrap();
    std::fs::write(wd.join("target/out"), "built").unwrap();
    std::fs::write(src.path().join("b.txt"), "b2").unwrap();
    std::fs::remove_file(src.path().join("d/a.txt")).unwrap();
    run(&["b.txt"], &["d/a.txt"]);
    assert_eq!(std::fs::read_to_string(wd.join("b.txt")).unwrap(), "b2");
    assert!(!wd.join("d").exists(), "emptied synced directory is pruned");
    assert_eq!(
        std::fs::read_to_string(wd.join("target/out")).unwrap(),
        "built"
    );
    let leftovers: Vec<_> = std::fs::read_dir(box_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("crabbox-stage"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn reap_script_kills_what_reads_the_archive_and_removes_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join(format!(
        "crabbox-{}.tgz",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    let delete = dir.path().join("list.del");
    let stage = dir.path().join(".wd.crabbox-stage-x");
    std::fs::write(&archive, "x").unwrap();
    std::fs::write(&delete, "x").unwrap();
    std::fs::create_dir_all(stage.join("sub")).unwrap();
    // Stands in for a tar left running after its script was SIGKILLed.
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
        .env("CBX_ARCHIVE", &archive)
        .env("CBX_STAGE", &stage)
        .env("CBX_DELETE", &delete)
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
    assert!(reaped.is_some(), "the archive's reader must be killed");
    assert!(alive, "unrelated processes are left alone");
    assert!(!archive.exists() && !delete.exists() && !stage.exists());
}

#[test]
fn failed_extract_leaves_the_workdir_intact() {
    let box_dir = tempfile::tempdir().unwrap();
    let wd = box_dir.path().join("work");
    std::fs::create_dir_all(&wd).unwrap();
    std::fs::write(wd.join("keep.txt"), "old").unwrap();
    let archive = box_dir.path().join("broken.tgz");
    std::fs::write(&archive, b"\x1f\x8bnot really gzip").unwrap();
    let out = std::process::Command::new("/bin/bash")
        .args(["-c", APPLY_SCRIPT])
        .env("CBX_ARCHIVE", &archive)
        .env("CBX_WORKDIR", &wd)
        .env("CBX_STAGE", staging_dir(wd.to_str().unwrap(), "x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("left as it was"));
    assert_eq!(std::fs::read_to_string(wd.join("keep.txt")).unwrap(), "old");
    assert!(!archive.exists(), "archive removed even on failure");
}
