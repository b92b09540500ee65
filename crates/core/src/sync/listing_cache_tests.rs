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

    /// Waits until nothing in the tree is recent enough to be racy (the clock is waited
    /// for, not a guess), with room for the filesystem clock's lag a listing adds to its
    /// window (a coarse clock's tick, and any pause of a loaded machine while it reads it).
    fn settle(&self) {
        let mark = newest(self.root()) + Duration::from_millis(150);
        while SystemTime::now() < mark {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lists the tree with git and keeps it, once settled.
    fn keep(&self) {
        self.settle();
        let others = self.list_into(&self.open());
        let r = self.open().reuse().expect("kept");
        let Verified::Holds(kept) = r.others.verify() else {
            panic!("not reused at once");
        };
        assert_eq!(kept[..], others[..], "reused at once");
    }

    /// Saves `text` as `rel` the way many editors do: written beside it, renamed over it.
    fn save_by_rename(&self, rel: &str, text: &str) {
        let tmp = format!("{rel}.swp");
        self.write(&tmp, text);
        std::fs::rename(self.root().join(tmp), self.root().join(rel)).unwrap();
    }

    /// Lists the tree with git now and has `c` keep it (if it will); the untracked listing.
    fn list_into(&self, c: &ListingCache) -> Vec<u8> {
        let tracked = git(self.root(), &["ls-files", "--cached", "-z"]);
        let others = self.others();
        c.keep(&tracked, &others, None);
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
    /// Returns (tracked reused, untracked reused as kept).
    fn reused(&self) -> (bool, bool) {
        let (tracked, relisted) = self.relisted();
        (tracked, relisted.as_deref() == Some(&[][..]))
    }

    /// What the cache offers now, checked against git as [`Tree::reused`]: (tracked reused,
    /// the directories listed again: none when the untracked listing holds as kept, `None`
    /// when git lists the whole tree).
    fn relisted(&self) -> (bool, Option<Vec<String>>) {
        let Some(r) = self.open().reuse() else {
            return (false, None);
        };
        assert_eq!(
            r.tracked[..],
            git(self.root(), &["ls-files", "--cached", "-z"])[..]
        );
        let (others, dirs) = match r.others.verify() {
            Verified::Holds(o) => (o.to_vec(), Vec::new()),
            Verified::Stale(stale) => {
                let dirs = stale
                    .dirs()
                    .iter()
                    .map(|d| String::from_utf8_lossy(d).into_owned());
                (
                    stale.relist().expect("git lists the directories"),
                    dirs.collect(),
                )
            }
            Verified::Void => return (true, None),
        };
        let fresh = self.others();
        assert_eq!(
            String::from_utf8_lossy(&others),
            String::from_utf8_lossy(&fresh),
            "a reused listing differs from git's (directories listed again: {dirs:?})"
        );
        (true, Some(dirs))
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
fn a_directory_changed_just_before_the_listing_is_kept_as_changed() {
    let t = Tree::new();
    t.keep();
    t.write("src/new.txt", "x");
    // No waiting: src changed within the racy window of this listing. It is listed again
    // by every run (the rest of the listing stands) until a listing finds it settled.
    t.list_into(&t.open());
    assert_eq!(t.relisted(), (true, Some(vec!["src".to_string()])));
    write_in_place(&t.root().join("src/new.txt"), b"y");
    assert_eq!(t.relisted(), (true, Some(vec!["src".to_string()])));
    t.keep();
    assert_eq!(t.relisted(), (true, Some(Vec::new())));
    // The root too: then git lists the whole tree, the tracked listing still reused.
    t.write("new.txt", "x");
    t.list_into(&t.open());
    assert_eq!(t.relisted(), (true, None));
}

#[test]
fn a_change_recent_on_a_filesystem_whose_clock_lags_is_not_vouched_for() {
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
    // (Not kept at all while the repository's own config is as recent.)
    assert!(!t.reused().1, "vouched for though recent on the filesystem");
    // The same listing on a filesystem whose clock agrees is vouched for.
    t.list_into(&t.open());
    assert_eq!(t.reused(), (true, true));
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

#[test]
fn a_change_below_the_root_lists_only_its_directories_again_as_git_would() {
    type Relisted = (&'static str, fn(&Tree), &'static [&'static str]);
    let cases: [Relisted; 8] = [
        (
            "a file made in a directory",
            |t| t.write("src/new.txt", "x"),
            &["src"],
        ),
        (
            "an untracked file saved by rename",
            |t| t.save_by_rename("src/notes.txt", "x"),
            &["src"],
        ),
        (
            "a tracked file saved by rename",
            |t| t.save_by_rename("src/lib.txt", "y"),
            &["src"],
        ),
        (
            "a new directory in a directory",
            |t| t.write("src/deep/er/a.txt", "x"),
            &["src"],
        ),
        (
            "a directory removed",
            |t| std::fs::remove_dir_all(t.root().join("src/sub")).unwrap(),
            &["src"],
        ),
        (
            "a .gitignore edited in place",
            |t| write_in_place(&t.root().join("src/sub/.gitignore"), b"*.md\n"),
            &["src/sub"],
        ),
        (
            "names that read as patterns",
            |t| t.write("[ab]*?/:(glob)x/new.txt", "x"),
            &["[ab]*?/:(glob)x"],
        ),
        (
            "two directories, one below another",
            |t| {
                t.write("src/new.txt", "x");
                t.write("src/sub/new.txt", "x");
                t.write("other/new.txt", "x");
            },
            &["other", "src"],
        ),
    ];
    for (what, change, dirs) in cases {
        let t = Tree::new();
        t.write("src/sub/.gitignore", "*.txt\n");
        t.write("src/sub/a.txt", "ignored\n");
        t.write("src/sub/b.md", "listed\n");
        t.write("src/left.txt", "untracked\n");
        t.write("other/keep.txt", "untracked\n");
        t.write("[ab]*?/:(glob)x/old.txt", "untracked\n");
        t.write("[ab]*?/:(glob)y/old.txt", "untracked\n");
        t.keep();
        change(&t);
        let (tracked, relisted) = t.relisted();
        let mut want: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();
        want.sort();
        let got = relisted.map(|mut d| {
            d.sort();
            d
        });
        assert_eq!((tracked, got), (true, Some(want)), "{what}");
    }
    // The root's own entries: the whole tree is listed again.
    let t = Tree::new();
    t.keep();
    t.write("new.txt", "x");
    assert_eq!(t.relisted(), (true, None));
}

#[test]
fn a_manifest_built_over_a_changed_directory_is_the_tree_as_it_is_and_keeps_the_rest() {
    let t = Tree::new();
    t.write("src/deep/old.txt", "untracked\n");
    t.write("other/keep.txt", "untracked\n");
    // Walked, though no listed file is there: a new one would be.
    t.write("logs/x.log", "ignored\n");
    t.write("src/deep/er/x.log", "ignored\n");
    // The builds keep their own cache (their racy window is two seconds, the tests' 50 ms).
    let builds = tempfile::tempdir().unwrap();
    let opts = crate::sync::SyncOptions {
        listing_cache: Some(builds.path().to_path_buf()),
        ..Default::default()
    };
    let build = |opts: &crate::sync::SyncOptions| {
        let m = crate::sync::SyncManifest::build(t.root(), opts).unwrap();
        m.entries.iter().map(|e| e.path.clone()).collect::<Vec<_>>()
    };
    t.keep();
    build(&opts);
    t.write("src/deep/new.txt", "x");
    std::fs::remove_file(t.root().join("src/deep/old.txt")).unwrap();
    // Listed again under src/deep only (the builds' cache: the root too is recent to it).
    assert_eq!(t.relisted(), (true, Some(vec!["src/deep".to_string()])));
    let relisted = build(&opts);
    assert_eq!(relisted, build(&Default::default()));
    assert!(relisted.contains(&"src/deep/new.txt".to_string()));
    assert!(!relisted.contains(&"src/deep/old.txt".to_string()));
    // A relisted listing kept with what the kept one held (the ignore sources, the walked
    // directories outside src/deep) holds as it is once settled.
    t.settle();
    let Verified::Stale(stale) = t.open().reuse().unwrap().others.verify() else {
        panic!("src/deep is still as kept before");
    };
    let relisted = stale.relist().unwrap();
    let tracked = git(t.root(), &["ls-files", "--cached", "-z"]);
    t.open().keep(&tracked, &relisted, Some(stale.into_held()));
    assert_eq!(t.relisted(), (true, Some(Vec::new())));
    t.write("other/new.txt", "x");
    t.write("logs/a.txt", "x");
    t.write("src/deep/er/a.txt", "x");
    let (tracked, dirs) = t.relisted();
    let mut dirs = dirs.unwrap();
    dirs.sort();
    assert_eq!(
        (tracked, dirs),
        (
            true,
            vec!["logs".into(), "other".into(), "src/deep/er".into()]
        )
    );
}

#[test]
fn a_directory_still_settling_that_lists_the_same_is_not_kept_again() {
    let t = Tree::new();
    t.keep();
    let stale = |t: &Tree| match t.open().reuse().unwrap().others.verify() {
        Verified::Stale(stale) => stale,
        _ => panic!("src changed"),
    };
    // A tracked file saved by rename: src lists the same, and changed just now.
    t.save_by_rename("src/lib.txt", "y");
    let s = stale(&t);
    let relisted = s.relist().unwrap();
    assert!(s.settling_as_kept(&relisted));
    // A new untracked file there lists differently: kept again.
    t.write("src/new.txt", "x");
    let s = stale(&t);
    let relisted = s.relist().unwrap();
    assert!(!s.settling_as_kept(&relisted));
}

#[test]
fn directories_holding_a_git_of_their_own_are_walked_as_git_walks_them() {
    // A tracked directory that holds a repository of its own: git walks it (it has tracked
    // files), though given one pathspec below it, it lists nothing there.
    let t = Tree::new();
    t.write("T/a.txt", "tracked\n");
    git(t.root(), &["add", "T/a.txt"]);
    git(&t.root().join("T"), &["init", "-q"]);
    t.write("T/e/new2.txt", "x");
    std::fs::create_dir_all(t.root().join("T/h")).unwrap();
    t.keep();
    t.write("T/e/x.txt", "y");
    assert_eq!(
        t.relisted(),
        (true, None),
        "a change below T lists the tree"
    );
    t.keep();
    t.write("T/h/new.txt", "x");
    assert_eq!(
        t.reused(),
        (true, false),
        "an empty directory in T is stamped"
    );
    // An untracked directory whose `.git` is no repository: git walks it.
    let t = Tree::new();
    t.write("E/b.txt", "x");
    std::fs::create_dir_all(t.root().join("E/.git")).unwrap();
    std::fs::create_dir_all(t.root().join("E/empty")).unwrap();
    t.keep();
    t.write("E/empty/new.txt", "x");
    assert_eq!(
        t.reused(),
        (true, false),
        "an empty directory in E is stamped"
    );
}
