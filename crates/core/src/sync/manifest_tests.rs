//! Tests of [`super`] (manifest.rs).

use super::parallel::{split_listing, STAT_BATCH_MIN};
use super::*;
use crate::conformance::RepoFixture;

fn paths(m: &SyncManifest) -> Vec<&str> {
    m.paths().collect()
}

#[test]
fn git_tree_is_tracked_plus_untracked_not_ignored_minus_deleted() {
    let repo = RepoFixture::new();
    let m = SyncManifest::build(repo.root(), &SyncOptions::default()).unwrap();
    assert_eq!(paths(&m), RepoFixture::expected_files());
    let run = m.entries.iter().find(|e| e.path == "run.sh").unwrap();
    assert_eq!(run.mode & 0o777, 0o755);
    assert_eq!(m.total_bytes, m.entries.iter().map(|e| e.size).sum::<u64>());
}

/// A 1 GiB file of holes is synced whole, and the manifest says so naming it; a dense
/// file of the same kind is not mentioned.
#[test]
fn a_sparse_file_is_named_in_a_warning() {
    let repo = RepoFixture::new();
    let f = std::fs::File::create(repo.root().join("disk.img")).unwrap();
    f.set_len(1 << 30).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        f.metadata().unwrap().blocks() * 512 < 1 << 29,
        "the test's filesystem keeps no holes: this test needs one that does"
    );
    std::fs::write(repo.root().join("dense.bin"), vec![7u8; 17 << 20]).unwrap();
    let m = SyncManifest::build(repo.root(), &SyncOptions::default()).unwrap();
    assert!(m.paths().any(|p| p == "disk.img"), "still synced");
    let sparse: Vec<_> = m.warnings.iter().filter(|w| w.contains("sparse")).collect();
    assert_eq!(sparse.len(), 1, "{:?}", m.warnings);
    assert!(
        sparse[0].starts_with("disk.img is a sparse file: 1024.0 MiB long"),
        "{}",
        sparse[0]
    );
    assert!(sparse[0].contains(".crabboxignore"), "{}", sparse[0]);
    assert!(is_sparse(1 << 30, 0));
    assert!(!is_sparse(1 << 30, (1 << 30) / 512));
    assert!(
        !is_sparse(1 << 20, 0),
        "small files are not worth a warning"
    );
}

#[test]
fn a_name_that_is_not_utf8_is_refused_by_name_unless_left_out() {
    use std::os::unix::ffi::OsStrExt;
    let repo = RepoFixture::new();
    let name = std::ffi::OsStr::from_bytes(b"nonutf8-\xff.txt");
    std::fs::write(repo.root().join(name), "x").unwrap();
    for walk in [false, true] {
        if walk {
            std::fs::remove_dir_all(repo.root().join(".git")).unwrap();
        }
        let err = SyncManifest::build(repo.root(), &SyncOptions::default()).unwrap_err();
        assert_eq!(err.exit_code(), 6, "{err}");
        let text = err.to_string();
        assert!(text.contains(r"nonutf8-\xff.txt"), "{text}");
        assert!(text.contains("sync.exclude"), "{text}");
        let opts = SyncOptions {
            exclude: vec!["nonutf8-*".into()],
            ..Default::default()
        };
        let m = SyncManifest::build(repo.root(), &opts).unwrap();
        assert!(!paths(&m).iter().any(|p| p.starts_with("nonutf8")));
    }
}

#[test]
fn crabboxignore_and_exclude_remove_include_narrows() {
    let repo = RepoFixture::new();
    std::fs::write(repo.root().join(".crabboxignore"), "untracked.txt\n").unwrap();
    let opts = SyncOptions {
        exclude: vec!["*.sh".into()],
        ..Default::default()
    };
    let m = SyncManifest::build(repo.root(), &opts).unwrap();
    assert_eq!(
        paths(&m),
        [".crabboxignore", ".gitignore", "src/lib.txt", "tracked.txt"]
    );
    let opts = SyncOptions {
        include: vec!["src/".into(), "tracked.txt".into()],
        ..Default::default()
    };
    let m = SyncManifest::build(repo.root(), &opts).unwrap();
    assert_eq!(paths(&m), ["src/lib.txt", "tracked.txt"]);
}

#[test]
fn symlinks_stay_links_and_are_not_followed() {
    let repo = RepoFixture::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "x").unwrap();
    std::os::unix::fs::symlink(outside.path(), repo.root().join("escape")).unwrap();
    let m = SyncManifest::build(repo.root(), &SyncOptions::default()).unwrap();
    let link = m
        .entries
        .iter()
        .find(|e| e.path == "escape")
        .expect("link synced as a link");
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(
        link.link_target.as_deref(),
        Some(outside.path().to_str().unwrap())
    );
    assert!(
        !m.paths().any(|p| p.starts_with("escape/")),
        "link target must not be walked"
    );
}

#[test]
fn a_long_link_target_is_read_whole() {
    let repo = RepoFixture::new();
    std::fs::create_dir(repo.root().join("d")).unwrap();
    // Longer than a first read's buffer, and a multiple of it.
    for (name, len) in [("d/long", 1000), ("d/exact", 256), ("d/short", 3)] {
        let target = "x".repeat(len);
        std::os::unix::fs::symlink(&target, repo.root().join(name)).unwrap();
        let m = SyncManifest::build(repo.root(), &SyncOptions::default()).unwrap();
        let link = m.entries.iter().find(|e| e.path == name).expect("the link");
        assert_eq!(link.link_target.as_deref(), Some(target.as_str()), "{name}");
    }
}

#[test]
fn tracked_files_behind_a_directory_now_a_symlink_are_skipped() {
    let repo = RepoFixture::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("lib.txt"), "outside").unwrap();
    std::fs::remove_dir_all(repo.root().join("src")).unwrap();
    std::os::unix::fs::symlink(outside.path(), repo.root().join("src")).unwrap();
    let m = SyncManifest::build(repo.root(), &SyncOptions::default()).unwrap();
    assert!(
        !m.paths().any(|p| p == "src/lib.txt"),
        "must not read through the link"
    );
}

#[test]
fn outside_git_the_walk_honours_ignore_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join(".gitignore"), "*.log\n").unwrap();
    std::fs::write(root.join(".ignore"), "tmp/\n").unwrap();
    std::fs::write(root.join(".crabboxignore"), "secret.txt\n").unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::create_dir_all(root.join(".git-not")).unwrap();
    for f in [
        "a.txt",
        "b.log",
        "tmp/x",
        "secret.txt",
        ".hidden",
        ".git-not/y",
    ] {
        std::fs::write(root.join(f), "1").unwrap();
    }
    let m = SyncManifest::build(root, &SyncOptions::default()).unwrap();
    assert_eq!(
        paths(&m),
        [
            ".crabboxignore",
            ".git-not/y",
            ".gitignore",
            ".hidden",
            ".ignore",
            "a.txt"
        ]
    );
}

#[test]
fn size_guardrails_refuse_unless_forced_and_warn() {
    let repo = RepoFixture::new();
    let limits = SyncLimits {
        warn_files: 2,
        warn_bytes: u64::MAX,
        max_files: 3,
        max_bytes: u64::MAX,
    };
    let err = SyncManifest::build(
        repo.root(),
        &SyncOptions {
            limits,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.exit_code(), 6);
    assert!(err.to_string().contains("--force-sync-large"), "{err}");
    let m = SyncManifest::build(
        repo.root(),
        &SyncOptions {
            limits,
            allow_large: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(m.warnings.len(), 1);
    let small = SyncLimits {
        warn_files: 100,
        warn_bytes: 10,
        max_files: 100,
        max_bytes: 1 << 20,
    };
    let m = SyncManifest::build(
        repo.root(),
        &SyncOptions {
            limits: small,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(m.warnings.len(), 1, "byte soft limit must warn");
}

#[test]
fn a_listing_cut_for_threads_keeps_every_name_whole() {
    let listing: Vec<u8> = (0..5000)
        .flat_map(|i| format!("d{}/file-{i}\0", i % 7).into_bytes())
        .collect();
    for parts in 1..=5 {
        let runs = split_listing(&listing, parts);
        assert!(
            !runs.is_empty() && runs.len() <= parts,
            "{parts}: {}",
            runs.len()
        );
        assert_eq!(runs.concat(), listing, "{parts}");
        assert!(runs.iter().all(|r| r.last() == Some(&0)), "{parts}");
    }
    assert!(split_listing(b"", 3).is_empty());
    assert_eq!(split_listing(b"one", 3), [b"one"]);
    // A name listed again right where a cut falls stays with its first listing.
    let mut conflicted = Vec::new();
    for name in ["a/1", "a/2", "a/3", "b/x", "b/x", "b/x", "c/1", "c/2"] {
        conflicted.extend_from_slice(name.as_bytes());
        conflicted.push(0);
    }
    for parts in 2..=8 {
        for run in split_listing(&conflicted, parts) {
            let n = run.windows(4).filter(|w| w == b"b/x\0").count();
            assert!(
                n == 0 || n == 3,
                "{parts}: {}",
                String::from_utf8_lossy(run)
            );
        }
    }
}

#[test]
fn files_read_on_several_threads_are_each_read_once_with_their_own_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut want = Vec::new();
    // Enough files for more than one thread, in directories of a few sizes.
    for i in 0..(3 * STAT_BATCH_MIN) {
        let rel = format!("d{}/sub{}/f{i:05}", i % 5, i % 3);
        std::fs::create_dir_all(root.join(&rel).parent().unwrap()).unwrap();
        std::fs::write(root.join(&rel), "x".repeat(i % 97)).unwrap();
        want.push((rel, (i % 97) as u64));
    }
    want.sort();
    let m = SyncManifest::build(root, &SyncOptions::default()).unwrap();
    let got: Vec<(String, u64)> = m.entries.iter().map(|e| (e.path.clone(), e.size)).collect();
    assert_eq!(got, want);
    // git lists a path once per stage of a merge conflict: read once, wherever the listing
    // is cut for the threads (read here before any sort or dedup).
    let mut listing = Vec::new();
    for (rel, _) in &want {
        let times = if rel.ends_with('0') { 3 } else { 1 };
        for _ in 0..times {
            listing.extend_from_slice(rel.as_bytes());
            listing.push(0);
        }
    }
    let filters = Filters {
        exclude: &Gitignore::empty(),
        include: None,
    };
    let found = stat_parallel(root, &listing, &filters).unwrap();
    let paths: Vec<&str> = found.entries.iter().map(|e| e.path.as_str()).collect();
    let once: Vec<&str> = want.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, once);
}

#[test]
fn entries_read_on_several_threads_close_the_gaps_their_runs_leave_in_listing_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut listing = Vec::new();
    let mut want = Vec::new();
    // Every run leaves slots unused: names that are gone, directories, excluded files.
    for i in 0..(3 * STAT_BATCH_MIN) {
        let rel = format!("d{}/f{i:05}", i / 700);
        std::fs::create_dir_all(root.join(&rel).parent().unwrap()).unwrap();
        match i % 4 {
            0 => {}
            1 => std::fs::create_dir(root.join(&rel)).unwrap(),
            2 if i % 3 == 0 => std::fs::write(root.join(&rel), "left out").unwrap(),
            _ => {
                std::fs::write(root.join(&rel), "x".repeat(i % 13)).unwrap();
                want.push(rel.clone());
            }
        }
        listing.extend_from_slice(rel.as_bytes());
        listing.push(0);
    }
    let mut ignore = GitignoreBuilder::new(root);
    for i in (0..(3 * STAT_BATCH_MIN)).filter(|i| i % 4 == 2 && i % 3 == 0) {
        ignore.add_line(None, &format!("f{i:05}")).unwrap();
    }
    let exclude = ignore.build().unwrap();
    let filters = Filters {
        exclude: &exclude,
        include: None,
    };
    let found = stat_parallel(root, &listing, &filters).unwrap();
    let paths: Vec<&str> = found.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, want);
    assert!(found
        .entries
        .iter()
        .all(|e| e.size == e.path[4..].parse::<u64>().unwrap() % 13));
}

#[test]
fn a_run_that_fails_fails_the_read_and_names_its_file_whatever_the_others_found() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut listing = Vec::new();
    for i in 0..(3 * STAT_BATCH_MIN) {
        let rel = format!("f{i:05}");
        std::fs::write(root.join(&rel), "x").unwrap();
        listing.extend_from_slice(rel.as_bytes());
        listing.push(0);
        if i == 2 * STAT_BATCH_MIN {
            // Longer than any file name may be: its stat fails (not "gone").
            listing.extend_from_slice("n".repeat(300).as_bytes());
            listing.push(0);
        }
    }
    let filters = Filters {
        exclude: &Gitignore::empty(),
        include: None,
    };
    let err = stat_parallel(root, &listing, &filters).err().unwrap();
    assert!(err.to_string().contains(&"n".repeat(300)), "{err}");
}

/// Whatever a listing names, only clean relative paths outside `.git` and crabbox's own
/// directory are read, whether the listing is all UTF-8 (checked once, whole) or not (then
/// name by name, the others still read); a directory's path is judged once for its files.
#[test]
fn a_listing_yields_only_clean_paths_outside_git_and_crabboxs_own_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for rel in [
        "ok.txt",
        "a/b/ok.txt",
        "a/b/c.git",
        "a/.gitx/ok.txt",
        "x.crabbox/ok.txt",
        "sub/.crabbox/ok.txt",
        ".git/config",
        "a/.git/config",
        ".crabbox/art.txt",
        ".crabbox.yaml",
        "w/.git",
        "w/..x",
    ] {
        std::fs::create_dir_all(root.join(rel).parent().unwrap()).unwrap();
        std::fs::write(root.join(rel), "x").unwrap();
    }
    let named: &[&[u8]] = &[
        b"ok.txt",
        b"/ok.txt",
        b"./ok.txt",
        b"a/./b/ok.txt",
        b"a/b/../b/ok.txt",
        b"a//b/ok.txt",
        b"a/b/",
        b"a/b/ok.txt",
        b"a/b/c.git",
        b".git/config",
        b"a/.git/config",
        b"a/.gitx/ok.txt",
        b".crabbox/art.txt",
        b"sub/.crabbox/ok.txt",
        b"x.crabbox/ok.txt",
        b".git",
        b"..",
        b".",
        // Files, not directories: left out by their names alone.
        b"w/.git",
        b"w/..x",
        b".crabbox.yaml",
    ];
    let want = [
        "ok.txt",
        "a/b/ok.txt",
        "a/b/c.git",
        "a/.gitx/ok.txt",
        "sub/.crabbox/ok.txt",
        "x.crabbox/ok.txt",
        "w/..x",
        ".crabbox.yaml",
    ];
    let filters = Filters {
        exclude: &Gitignore::empty(),
        include: None,
    };
    for not_utf8 in [false, true] {
        let mut listing = Vec::new();
        for name in named {
            listing.extend_from_slice(name);
            listing.push(0);
        }
        if not_utf8 {
            listing.extend_from_slice(b"bad-\xff.txt\0");
        }
        let found = stat_all(root, &listing, &filters, Vec::new()).unwrap();
        let mut got: Vec<&str> = found.entries.iter().map(|e| e.path.as_str()).collect();
        got.sort_unstable();
        let mut want = want.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "listing all UTF-8: {}", !not_utf8);
        let refused: Vec<&str> = found.not_utf8.iter().map(|(_, s)| s.as_str()).collect();
        let none: [&str; 0] = [];
        if not_utf8 {
            assert_eq!(refused, ["bad-\\xff.txt"]);
        } else {
            assert_eq!(refused, none);
        }
    }
}
