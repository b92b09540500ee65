//! What `git ls-files` listed of a work tree, kept between runs so an unchanged tree is not
//! walked again (the untracked listing walks every directory: most of a warm run's local
//! time in a large repository).
//!
//! Never trusted on a guess. The tracked listing is reused only while `.git/index` is the
//! same file (device, inode, size, mtime, ctime); the untracked one only while, as well,
//! every directory git walked and the `.gitignore` in each, the repository's
//! `info/exclude` and config, the user's and the system's git config and the global excludes
//! file all have the stamps they had. A directory that gains, loses or renames an entry
//! changes its mtime and ctime, so a new untracked file anywhere git looks is seen; a file
//! edited in place changes no directory, and the stat pass that follows every listing reads
//! it. `GIT_CONFIG*` variables are part of the key (and a config file they name is stamped).
//! Where only a few directories below the root changed (or their `.gitignore`, which rules
//! only below it), git lists those again and the rest of the kept listing stands. A directory
//! or ignore file changed so recently that a later change could share its timestamp (counted
//! on the filesystem's own clock where it lags this machine's) is kept as changed, so it is
//! listed again on every run until one finds it settled. Any other doubt (`GIT_DIR`,
//! `GIT_INDEX_FILE` and the like in the environment, `.git` not a directory at the root, an
//! ignore source outside the tree changed recently, an unreadable cache) means git lists the
//! tree as before.

use std::collections::BTreeSet;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Format tag of a cache file.
const MAGIC: &[u8] = b"crabbox-listing-2\n";
/// A directory or ignore file changed less than this before the listing started is not
/// vouched for: a change right after the listing could leave it the same timestamp.
/// Two seconds: above the timestamp granularity of every common filesystem.
const RACY: Duration = Duration::from_secs(2);

/// What identifies one version of a file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// `None` for a path that is not there (or cannot be read: then it never matches a
    /// kept stamp of a file that was there).
    fn of(path: &Path) -> Option<Stamp> {
        Some(Stamp::of_meta(&std::fs::symlink_metadata(path).ok()?))
    }

    fn of_meta(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            // A directory's size says nothing the times do not, and differs between
            // filesystems' readings of the same directory.
            size: if m.is_dir() { 0 } else { m.size() },
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// The stamp of a file git reads its config or ignore rules from, through symlinks (as
    /// git reads it: a dotfile is often a link); a device (`/dev/null`, which isolated setups
    /// name as their config) reads empty whatever its times say.
    fn of_source(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::FileTypeExt;
        let m = std::fs::metadata(path).ok()?;
        let t = m.file_type();
        if t.is_char_device() || t.is_block_device() {
            return Some(Stamp {
                dev: 0,
                ino: 0,
                size: u64::MAX,
                mtime: (0, 0),
                ctime: (0, 0),
            });
        }
        Some(Stamp::of_meta(&m))
    }

    /// Kept for a directory changed too recently to vouch for: no directory has it (a real
    /// stamp's nanoseconds are never negative), so it is always found changed.
    const UNVOUCHED: Stamp = Stamp {
        dev: u64::MAX,
        ino: u64::MAX,
        size: u64::MAX,
        mtime: (0, -1),
        ctime: (0, -1),
    };

    /// Changed at or after `since` (as far as its timestamps tell).
    fn is_racy(&self, since: (i64, i64)) -> bool {
        self.mtime >= since || self.ctime >= since
    }
}

/// The listings git gave, as reused: the tracked files (`ls-files --cached -z`), and the
/// untracked ones once [`Unverified::verify`] finds the tree's directories and ignore rules as
/// they were.
pub(super) struct Reused {
    pub tracked: ListingBytes,
    pub others: Unverified,
}

/// A listing's bytes: as git printed them, or a part of a kept file (mapped, not copied).
pub(super) enum ListingBytes {
    Listed(Vec<u8>),
    Kept(Arc<crate::paths::KeptBytes>, std::ops::Range<usize>),
}

impl std::ops::Deref for ListingBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ListingBytes::Listed(v) => v,
            ListingBytes::Kept(file, range) => &file[range.clone()],
        }
    }
}

/// A kept untracked listing, and the stamps it holds while.
pub(super) struct Unverified {
    root: PathBuf,
    sources: Sources,
    dirs: Vec<(Vec<u8>, Stamp, Option<Stamp>)>,
    others: ListingBytes,
}

/// One work tree's kept listing, in `<cache dir>/<hash of the root>.listing`.
pub(super) struct ListingCache {
    file: PathBuf,
    root: PathBuf,
    /// [`cache_key`].
    key: Vec<u8>,
    /// The index's stamp, taken before git reads it (a later change makes it differ).
    index: Option<Stamp>,
    /// When listing started.
    started: SystemTime,
    /// [`RACY`] (tests make it shorter).
    racy: Duration,
    /// What time it is on the filesystem of the given directory ([`fs_clock`]; tests make
    /// one that lags).
    fs_now: fn(&Path) -> Option<SystemTime>,
}

impl ListingCache {
    /// The cache of the work tree at `root`, where one can be trusted: `None` when git could
    /// be told by the environment to read another index, tree or config, or `root` is not
    /// the top of a work tree with its own `.git` directory.
    pub(super) fn open(dir: &Path, root: &Path) -> Option<ListingCache> {
        if std::env::vars_os().any(|(k, _)| steers_git(k.as_bytes())) {
            return None;
        }
        if !std::fs::symlink_metadata(root.join(".git")).ok()?.is_dir() {
            return None;
        }
        use sha2::Digest;
        let key = hex::encode(&sha2::Sha256::digest(root.as_os_str().as_bytes())[..12]);
        Some(ListingCache {
            file: dir.join(format!("{key}.listing")),
            root: root.to_path_buf(),
            key: cache_key(root),
            index: Stamp::of(&root.join(".git/index")),
            started: SystemTime::now(),
            racy: RACY,
            fs_now: fs_clock,
        })
    }

    /// Where a file is made to read the tree's filesystem clock: the cache's own directory
    /// when it is on the same filesystem as the tree, else `.git` (so a file appears in the
    /// repository only where it must).
    fn clock_dir(&self) -> PathBuf {
        let dev = |p: &Path| std::fs::metadata(p).ok().map(|m| m.dev());
        match self.file.parent() {
            Some(dir)
                if std::fs::create_dir_all(dir).is_ok()
                    && dev(dir).is_some_and(|d| Some(d) == dev(&self.root)) =>
            {
                dir.to_path_buf()
            }
            _ => self.root.join(".git"),
        }
    }

    /// `.git/index` is no longer the file it was when this cache was opened.
    pub(super) fn index_moved(&self) -> bool {
        Stamp::of(&self.root.join(".git/index")) != self.index
    }

    /// What is kept for this index, if anything (the untracked listing still to verify).
    pub(super) fn reuse(&self) -> Option<Reused> {
        let bytes = Arc::new(crate::paths::read_kept(&self.file).ok()?);
        let kept = Kept::decode(&bytes)?;
        if kept.root != self.key || Some(kept.index) != self.index {
            return None;
        }
        // The listings stay where they were read (a large tree's are most of the file).
        let part = |listing: &[u8]| {
            let start = listing.as_ptr() as usize - bytes.as_ptr() as usize;
            ListingBytes::Kept(bytes.clone(), start..start + listing.len())
        };
        let (tracked, others) = (part(kept.tracked), part(kept.others));
        Some(Reused {
            tracked,
            others: Unverified {
                root: self.root.clone(),
                sources: kept.sources,
                dirs: kept.dirs,
                others,
            },
        })
    }

    /// Keeps what git just listed, with the stamps that make it reusable; nothing when the
    /// index was missing or an ignore source changed too recently to vouch for. With `held`,
    /// only the changed directories are walked and the ignore sources are those found
    /// holding (else git is asked).
    pub(super) fn keep(&self, tracked: &[u8], others: &[u8], held: Option<Held>) {
        let Some(index) = self.index else {
            return;
        };
        // Timestamps are the filesystem's, and its clock may lag this machine's (a network
        // filesystem's server): the window reaches back by the lag too. Not kept when that
        // cannot be told.
        let Some(fs_now) = (self.fs_now)(&self.clock_dir()) else {
            return;
        };
        let lag = SystemTime::now().duration_since(fs_now).unwrap_or_default();
        let since = racy_since(self.started, self.racy + lag).unwrap_or((0, 0));
        let (dirs, sources) = match held {
            Some(h) => {
                let Some(mut dirs) = walked_dirs(&self.root, tracked, others, &h.changed) else {
                    return;
                };
                dirs.extend(h.outside);
                (dirs, Some(h.sources))
            }
            None => match walked_dirs(&self.root, tracked, others, &[Vec::new()]) {
                Some(dirs) => (dirs, None),
                None => return,
            },
        };
        let mut stamped = Vec::with_capacity(dirs.len());
        for rel in dirs {
            let at = self.root.join(std::ffi::OsStr::from_bytes(&rel));
            let (Some(dir), ignore) = (Stamp::of(&at), Stamp::of(&at.join(".gitignore"))) else {
                return;
            };
            // Changed too recently to vouch for: kept as changed, so every later run lists
            // it again (the root: the whole tree) until one keeps it settled.
            let racy = dir.is_racy(since) || ignore.is_some_and(|s| s.is_racy(since));
            stamped.push((rel, if racy { Stamp::UNVOUCHED } else { dir }, ignore));
        }
        let sources = match sources {
            Some(held) => held,
            None => {
                let mut sources = Vec::new();
                for path in ignore_sources(&self.root) {
                    let stamp = Stamp::of_source(&path);
                    if stamp.is_some_and(|s| s.is_racy(since)) {
                        return;
                    }
                    sources.push((path.into_os_string().into_vec(), stamp));
                }
                sources
            }
        };
        let kept = Kept {
            root: self.key.clone(),
            index,
            sources,
            dirs: stamped,
            tracked,
            others,
        };
        // Replaced whole (a unique temporary file, renamed), so a reader never sees half.
        let _ = crate::paths::write_atomic(&self.file, &kept.encode());
    }
}

/// `window` before `t`, as a stamp's time: what changed at or after it is racy.
fn racy_since(t: SystemTime, window: Duration) -> Option<(i64, i64)> {
    let d = t
        .checked_sub(window)?
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?;
    Some((d.as_secs() as i64, i64::from(d.subsec_nanos())))
}

/// The time on the filesystem of `dir`, as it stamps a file made there now.
fn fs_clock(dir: &Path) -> Option<SystemTime> {
    let probe = tempfile::Builder::new()
        .prefix(".crabbox-clock-")
        .tempfile_in(dir)
        .ok()?;
    probe.as_file().metadata().ok()?.modified().ok()
}

/// An environment variable that makes git read another repository, index, work tree or
/// config, or match paths differently.
fn steers_git(name: &[u8]) -> bool {
    const NAMES: &[&[u8]] = &[
        b"GIT_DIR",
        b"GIT_WORK_TREE",
        b"GIT_INDEX_FILE",
        b"GIT_COMMON_DIR",
    ];
    NAMES.contains(&name) || (name.starts_with(b"GIT_") && name.ends_with(b"_PATHSPECS"))
}

/// The root, `HOME`, `XDG_CONFIG_HOME` and every `GIT_CONFIG*` variable (which config files git
/// reads, and settings given in the environment): a listing is reused only under the same.
fn cache_key(root: &Path) -> Vec<u8> {
    let mut vars: Vec<Vec<u8>> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.as_bytes();
            k.starts_with(b"GIT_CONFIG") || k == b"HOME" || k == b"XDG_CONFIG_HOME"
        })
        .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
        .collect();
    vars.sort();
    let mut key = root.as_os_str().as_bytes().to_vec();
    for v in vars {
        key.push(0);
        key.extend_from_slice(&v);
    }
    key
}

/// Files whose change can change what git ignores, besides each directory's `.gitignore`:
/// the repository's exclude file and config, the user's and the system's config, and the
/// global excludes file (where `core.excludesFile` does not move it: a config change is seen
/// by the config's own stamp).
fn ignore_sources(root: &Path) -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home.as_ref().map(|h| h.join(".config")));
    let mut paths = vec![
        root.join(".git/info/exclude"),
        root.join(".git/config"),
        PathBuf::from("/etc/gitconfig"),
    ];
    for var in ["GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_CONFIG"] {
        paths.extend(
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        );
    }
    if let Some(h) = &home {
        paths.push(h.join(".gitconfig"));
    }
    if let Some(x) = &xdg {
        paths.push(x.join("git/config"));
        paths.push(x.join("git/ignore"));
    }
    if let Some(file) = excludes_file(root) {
        paths.push(file);
    }
    paths.extend(config_files(root));
    paths
}

/// Every config file git reads here, includes too (`git config --list --show-origin`).
fn config_files(root: &Path) -> Vec<PathBuf> {
    let out = git_config(root, &["--list", "--show-origin", "-z"]).unwrap_or_default();
    let mut files: Vec<PathBuf> = out
        .split(|b| *b == 0)
        .filter_map(|f| f.strip_prefix(b"file:"))
        .map(|p| rooted(root, p))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// `core.excludesFile`, where set, as git resolves it.
fn excludes_file(root: &Path) -> Option<PathBuf> {
    let out = git_config(root, &["--get", "--path", "core.excludesFile"])?;
    let path = out.strip_suffix(b"\n").unwrap_or(&out);
    (!path.is_empty()).then(|| rooted(root, path))
}

/// What `git config <args>` prints in `root`, when it succeeds.
fn git_config(root: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .arg("config")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

/// A path git printed, relative ones taken from `root`.
fn rooted(root: &Path, path: &[u8]) -> PathBuf {
    let p = PathBuf::from(std::ffi::OsStr::from_bytes(path));
    if p.is_absolute() {
        p
    } else {
        root.join(p)
    }
}

/// Every directory git walked to list the tree (root-relative, `""` the root) in and below
/// `tops`: those on the way to a listed file, and, found by reading those, each directory
/// holding no listed file that git does not ignore (an empty one, or one of ignored files,
/// where a new file would be listed); never a `.git`, and never below a nested repository.
/// `None` when it cannot be told.
fn walked_dirs(
    root: &Path,
    tracked: &[u8],
    others: &[u8],
    tops: &[Vec<u8>],
) -> Option<BTreeSet<Vec<u8>>> {
    let mut dirs: BTreeSet<Vec<u8>> = tops.iter().cloned().collect();
    // On the way to a listed file (not a nested repository, listed as `dir/`): git walks
    // these whatever they hold.
    let mut holding: BTreeSet<Vec<u8>> = BTreeSet::new();
    for path in tracked.split(|b| *b == 0).chain(others.split(|b| *b == 0)) {
        if !tops.iter().any(|t| is_below(path, t)) {
            continue;
        }
        let file = !path.ends_with(b"/");
        let mut end = path.len();
        while let Some(slash) = path[..end].iter().rposition(|b| *b == b'/') {
            let dir = &path[..slash];
            let new_dir = dirs.insert(dir.to_vec());
            let new_holding = file && holding.insert(dir.to_vec());
            if !new_dir && !new_holding {
                break;
            }
            end = slash;
        }
    }
    let mut level: Vec<Vec<u8>> = dirs.iter().cloned().collect();
    while !level.is_empty() {
        let mut unlisted = Vec::new();
        for rel in &level {
            let at = root.join(std::ffi::OsStr::from_bytes(rel));
            // A repository of its own that git does not walk into (one holding a tracked or
            // listed file, or whose `.git` is not plainly a repository, git does walk).
            if !rel.is_empty() && !holding.contains(rel) && is_repository(&at) {
                continue;
            }
            let entries = std::fs::read_dir(&at).ok()?;
            for entry in entries {
                let entry = entry.ok()?;
                let name = entry.file_name();
                if name == ".git" || !entry.file_type().ok()?.is_dir() {
                    continue;
                }
                let child = if rel.is_empty() {
                    name.as_bytes().to_vec()
                } else {
                    [rel.as_slice(), b"/", name.as_bytes()].concat()
                };
                if !dirs.contains(&child) {
                    unlisted.push(child);
                }
            }
        }
        let kept = not_ignored(root, &unlisted)?;
        dirs.extend(kept.iter().cloned());
        level = kept;
    }
    Some(dirs)
}

/// `dir` holds a `.git` directory that is plainly a repository (`HEAD`, `objects`, `refs`).
fn is_repository(dir: &Path) -> bool {
    let git = dir.join(".git");
    ["HEAD", "objects", "refs"]
        .iter()
        .all(|p| std::fs::symlink_metadata(git.join(p)).is_ok())
}

/// The directories of `dirs` git does not ignore (`git check-ignore`, one process).
fn not_ignored(root: &Path, dirs: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    if dirs.is_empty() {
        return Some(Vec::new());
    }
    use std::io::Write;
    let mut child = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["check-ignore", "--stdin", "-z", "--no-index"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut input = Vec::new();
    for d in dirs {
        input.extend_from_slice(d);
        input.push(0);
    }
    let mut stdin = child.stdin.take()?;
    let writer = std::thread::spawn(move || stdin.write_all(&input).is_ok());
    let out = child.wait_with_output().ok()?;
    if !writer.join().ok()? {
        return None;
    }
    // Exit 1: none is ignored; 128: a failure.
    if !matches!(out.status.code(), Some(0 | 1)) {
        return None;
    }
    let ignored: BTreeSet<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    Some(
        dirs.iter()
            .filter(|d| !ignored.contains(d.as_slice()))
            .cloned()
            .collect(),
    )
}

#[path = "listing_format.rs"]
mod format;
#[path = "listing_relist.rs"]
mod relist;

use format::Kept;
use relist::{is_below, Sources};
pub(super) use relist::{Held, Verified};

#[cfg(test)]
#[path = "listing_cache_tests.rs"]
mod tests;
