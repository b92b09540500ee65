//! Tests of [`super`] (listing_cache.rs): a kept listing is reused only while git would list
//! the same, whatever changed in the tree.

use super::*;
use crate::conformance::RepoFixture;

/// A named change to a tree.
type Case = (&'static str, fn(&Tree));

/// A work tree and a cache directory.
struct Tree {
    repo: RepoFixture,
    cache: tempfile::TempDir,
}

fn git(root: &Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    out.stdout
}

/// Writes `bytes` over the start of the existing file `path` (no new inode, no directory change).
fn write_in_place(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, bytes))
        .unwrap();
}

/// The newest change time of anything under `dir`.
fn newest(dir: &Path) -> SystemTime {
    let mut at = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let m = entry.path().symlink_metadata().unwrap();
        let ctime = SystemTime::UNIX_EPOCH + Duration::new(m.ctime() as u64, m.ctime_nsec() as u32);
        at = at.max(m.modified().unwrap()).max(ctime);
        if m.is_dir() {
            at = at.max(newest(&entry.path()));
        }
    }
    at
}

impl Tree {
    fn new() -> Self {
        Tree {
            repo: RepoFixture::new(),
            cache: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> &Path {
        self.repo.root()
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn open(&self) -> ListingCache {
        let mut c = ListingCache::open(self.cache.path(), self.root()).expect("a cache");
        c.racy = Duration::from_millis(50);
        c
    }

    /// Lists the tree with git and keeps it, once nothing in it is recent enough to be
    /// racy (the clock is waited for, not a guess).
    fn keep(&self) {
        let mark = newest(self.root()) + Duration::from_millis(60);
        while SystemTime::now() < mark {
            std::thread::sleep(Duration::from_millis(5));
        }
        let others = self.list_into(&self.open());
        let r = self.open().reuse().expect("kept");
        assert_eq!(
            r.others.verify().as_deref(),
            Some(&others[..]),
            "reused at once"
        );
    }

    /// Lists the tree with git now and has `c` keep it (if it will); the untracked listing.
    fn list_into(&self, c: &ListingCache) -> Vec<u8> {
        let tracked = git(self.root(), &["ls-files", "--cached", "-z"]);
        let others = self.others();
        c.keep(&tracked, &others);
        others
    }

    /// `git ls-files` of the untracked files git does not ignore.
    fn others(&self) -> Vec<u8> {
        git(
            self.root(),
            &["ls-files", "--others", "--exclude-standard", "-z"],
        )
    }

    /// What the cache offers now, checked against git: never a listing git would not give.
    /// Returns (tracked reused, untracked reused).
    fn reused(&self) -> (bool, bool) {
        let Some(r) = self.open().reuse() else {
            return (false, false);
        };
        assert_eq!(
            r.tracked[..],
            git(self.root(), &["ls-files", "--cached", "-z"])[..]
        );
        let Some(others) = r.others.verify() else {
            return (true, false);
        };
        let fresh = self.others();
        assert_eq!(
            String::from_utf8_lossy(&others),
            String::from_utf8_lossy(&fresh),
            "a reused listing differs from git's"
        );
        (true, true)
    }
}

#[test]
fn an_unchanged_tree_and_files_edited_in_place_reuse_both_listings() {
    let t = Tree::new();
    t.keep();
    assert_eq!(t.reused(), (true, true));
    t.write("tracked.txt", "edited in place\n");
    t.write("untracked.txt", "edited too\n");
    t.write("build/out.o", "an ignored directory is not walked\n");
    t.write("build/new.o", "nor is a new file in it\n");
    assert_eq!(t.reused(), (true, true));
}

#[test]
fn a_new_or_removed_file_anywhere_git_looks_lists_the_untracked_files_again() {
    let cases: [Case; 5] = [
        ("new at the root", |t| t.write("new.txt", "x")),
        ("new in a directory", |t| t.write("src/new.txt", "x")),
        ("removed", |t| {
            std::fs::remove_file(t.root().join("untracked.txt")).unwrap()
        }),
        ("renamed", |t| {
            std::fs::rename(t.root().join("src/lib.txt"), t.root().join("src/lib2.txt")).unwrap()
        }),
        ("a new directory", |t| t.write("fresh/dir/a.txt", "x")),
    ];
    for (what, change) in cases {
        let t = Tree::new();
        t.keep();
        change(&t);
        assert_eq!(t.reused(), (true, false), "{what}");
    }
}

#[test]
fn a_new_file_in_a_directory_with_no_listed_file_is_seen() {
    for (prepare, then) in [
        // An empty directory, and one holding only ignored files: git walks both.
        ("empty/.keep-dir", "empty/a.txt"),
        ("logs/x.log", "logs/a.txt"),
        ("deep/er/x.log", "deep/er/a.txt"),
    ] {
        let t = Tree::new();
        if prepare.starts_with("empty") {
            std::fs::create_dir_all(t.root().join("empty")).unwrap();
        } else {
            t.write(prepare, "ignored\n");
        }
        t.keep();
        assert_eq!(t.reused(), (true, true), "{prepare}");
        t.write(then, "x");
        assert_eq!(t.reused(), (true, false), "{then}");
    }
}

#[test]
fn a_change_to_the_ignore_rules_lists_the_untracked_files_again() {
    let cases: [Case; 3] = [
        ("the root .gitignore", |t| t.write(".gitignore", "build/\n")),
        ("a new .gitignore in a directory", |t| {
            t.write("src/.gitignore", "*.txt\n")
        }),
        ("info/exclude", |t| {
            t.write(".git/info/exclude", "untracked.txt\n")
        }),
    ];
    for (what, change) in cases {
        let t = Tree::new();
        t.keep();
        change(&t);
        assert_eq!(t.reused(), (true, false), "{what}");
    }
    // A .gitignore edited in place, where its directory does not change.
    let t = Tree::new();
    t.write("logs/.gitignore", "*.log\n");
    t.write("logs/a.log", "x");
    t.keep();
    write_in_place(&t.root().join("logs/.gitignore"), b"*.tmp\n");
    assert_eq!(t.reused(), (true, false));
}

#[test]
fn an_ignore_source_is_read_through_its_symlink_and_a_device_is_stable() {
    let t = Tree::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("exclude");
    std::fs::write(&target, "# nothing\n").unwrap();
    let exclude = t.root().join(".git/info/exclude");
    let _ = std::fs::remove_file(&exclude);
    std::fs::create_dir_all(exclude.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&target, &exclude).unwrap();
    t.keep();
    assert_eq!(t.reused(), (true, true));
    // The link stays as it was; what it points at changes (a dotfile manager's layout).
    std::fs::write(&target, "untracked.txt\n").unwrap();
    assert_eq!(t.reused(), (true, false));

    let null = Path::new("/dev/null");
    let before = Stamp::of_source(null);
    write_in_place(null, b"x");
    assert_eq!(Stamp::of_source(null), before);
    assert!(before.is_some());
}

#[test]
fn a_config_file_included_from_another_is_stamped_too() {
    let t = Tree::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let extra = elsewhere.path().join("extra.gitconfig");
    std::fs::write(&extra, "[core]\n\tpager = cat\n").unwrap();
    let ignore = elsewhere.path().join("ignore");
    std::fs::write(&ignore, "untracked.txt\n").unwrap();
    git(
        t.root(),
        &["config", "include.path", extra.to_str().unwrap()],
    );
    t.keep();
    assert_eq!(t.reused(), (true, true));
    // The included file now names an excludes file: the untracked listing changes.
    std::fs::write(
        &extra,
        format!("[core]\n\texcludesFile = {}\n", ignore.display()),
    )
    .unwrap();
    assert_eq!(t.reused(), (true, false));
}

#[test]
fn a_changed_index_lists_both_again() {
    let t = Tree::new();
    t.keep();
    git(t.root(), &["add", "untracked.txt"]);
    assert_eq!(t.reused(), (false, false));
}

#[test]
fn a_tree_changed_just_before_the_listing_is_not_kept() {
    let t = Tree::new();
    t.write("src/new.txt", "x");
    // No waiting: src changed within the racy window of this listing.
    t.list_into(&t.open());
    assert!(t.open().reuse().is_none());
}

#[test]
fn a_change_recent_on_a_filesystem_whose_clock_lags_is_not_kept() {
    let t = Tree::new();
    t.write("src/new.txt", "x");
    // Past the racy window by this machine's clock...
    let mark = newest(t.root()) + Duration::from_millis(200);
    while SystemTime::now() < mark {
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...but not by the clock of a filesystem a second behind it.
    let mut c = t.open();
    c.fs_now = |_| SystemTime::now().checked_sub(Duration::from_secs(1));
    t.list_into(&c);
    assert!(
        t.open().reuse().is_none(),
        "kept though recent on the filesystem"
    );
    // The same listing on a filesystem whose clock agrees is kept.
    t.list_into(&t.open());
    assert!(t.open().reuse().is_some());
}

#[test]
fn a_nested_repository_is_not_walked_and_a_damaged_cache_is_not_used() {
    let t = Tree::new();
    std::fs::create_dir_all(t.root().join("nested")).unwrap();
    git(&t.root().join("nested"), &["init", "-q"]);
    t.write("nested/sub/inner.txt", "x");
    t.keep();
    t.write("nested/sub/more.txt", "x");
    assert_eq!(
        t.reused(),
        (true, true),
        "inside a nested repository git lists nothing"
    );
    for entry in std::fs::read_dir(t.cache.path()).unwrap() {
        let p = entry.unwrap().path();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&p, bytes).unwrap();
    }
    assert!(t.open().reuse().is_none());
}

#[test]
fn a_cache_names_its_root_and_the_manifest_is_the_same_with_it() {
    let t = Tree::new();
    let opts = crate::sync::SyncOptions {
        listing_cache: Some(t.cache.path().to_path_buf()),
        ..Default::default()
    };
    let without =
        crate::sync::SyncManifest::build(t.root(), &crate::sync::SyncOptions::default()).unwrap();
    let first = crate::sync::SyncManifest::build(t.root(), &opts).unwrap();
    t.keep();
    let reused = crate::sync::SyncManifest::build(t.root(), &opts).unwrap();
    assert_eq!(first, without);
    assert_eq!(reused, without);
    let other = RepoFixture::new();
    assert!(ListingCache::open(t.cache.path(), other.root())
        .unwrap()
        .reuse()
        .is_none());
}

#[test]
fn a_directory_whose_name_is_not_utf8_is_stamped_too() {
    use std::os::unix::ffi::OsStrExt;
    let t = Tree::new();
    let dir = t.root().join(std::ffi::OsStr::from_bytes(b"raw-\xff"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), "x").unwrap();
    t.keep();
    assert_eq!(t.reused(), (true, true));
    std::fs::write(dir.join("b.txt"), "x").unwrap();
    assert_eq!(t.reused(), (true, false));
}
