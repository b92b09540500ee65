//! The sync manifest: which files of the working tree go to the box.

use std::path::{Path, PathBuf};
use std::process::Command;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A regular file or a symlink (kept as a link, never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Symlink,
}

/// One file to sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncEntry {
    /// Relative to the root, `/`-separated, never empty, never with `..`.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// For symlinks, where they point (as stored, not resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// Size guardrails: warn past the soft limits, refuse past the hard ones unless forced.
#[derive(Debug, Clone, Copy)]
pub struct SyncLimits {
    pub warn_files: usize,
    pub warn_bytes: u64,
    pub max_files: usize,
    pub max_bytes: u64,
}

impl Default for SyncLimits {
    fn default() -> Self {
        const GIB: u64 = 1 << 30;
        Self {
            warn_files: 50_000,
            warn_bytes: 5 * GIB,
            max_files: 150_000,
            max_bytes: 20 * GIB,
        }
    }
}

/// How to choose files.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// gitignore-style patterns to leave out (`sync.exclude`).
    pub exclude: Vec<String>,
    /// gitignore-style patterns; when non-empty only matching files are synced (`sync.include`).
    pub include: Vec<String>,
    /// `--force-sync-large` / `CRABBOX_SYNC_ALLOW_LARGE=1`.
    pub allow_large: bool,
    pub limits: SyncLimits,
    /// Where git's listing of the tree may be kept between runs ([`ListingCache`]); none
    /// by default.
    pub listing_cache: Option<PathBuf>,
}

/// The files to sync, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncManifest {
    pub entries: Vec<SyncEntry>,
    pub total_bytes: u64,
    /// Soft-limit warnings for the front end to print.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Always left out, whatever the config says.
const BUILTIN_EXCLUDES: &[&str] = &[".git"];
/// crabbox's own files in a repository (fetched artifacts): never sent back to the box.
const OWN_DIR: &str = ".crabbox/";
const CRABBOXIGNORE: &str = ".crabboxignore";

impl SyncManifest {
    /// Chooses the files under `root`: in a git work tree, tracked plus untracked-not-ignored
    /// (deleted tracked files are skipped); elsewhere, a walk honouring `.gitignore`, `.ignore`
    /// and `.crabboxignore`. Then `.crabboxignore` and `sync.exclude` remove, `sync.include`
    /// narrows, and the size guardrails apply.
    pub fn build(root: &Path, opts: &SyncOptions) -> Result<Self> {
        let exclude = matcher(root, &opts.exclude, Some(&root.join(CRABBOXIGNORE)))?;
        let include = if opts.include.is_empty() {
            None
        } else {
            Some(matcher(root, &opts.include, None)?)
        };
        let filters = Filters {
            exclude: &exclude,
            include: include.as_ref(),
        };
        let cache_dir = opts.listing_cache.as_deref();
        let stated = match GitListing::start(root, cache_dir)? {
            Some(git) => git.stat(root, &filters)?,
            None => stat_parallel(root, &walk_files(root)?, &filters)?,
        };
        filters.refuse_not_utf8(root, &stated.not_utf8)?;
        let Stated {
            mut entries,
            sparse,
            ..
        } = stated;
        // Usually in order already (git lists in it, and an untracked file is rare): checked
        // in one pass.
        if !entries.is_sorted_by(|a, b| a.path < b.path) {
            entries.sort_unstable_by(|a: &SyncEntry, b: &SyncEntry| a.path.cmp(&b.path));
            entries.dedup_by(|a, b| a.path == b.path);
        }
        let total_bytes = entries.iter().map(|e| e.size).sum();
        let mut manifest = SyncManifest {
            entries,
            total_bytes,
            warnings: Vec::new(),
        };
        manifest.check_limits(root, opts)?;
        manifest.warn_sparse(&sparse);
        Ok(manifest)
    }

    /// A sparse file is synced whole: its holes become zeros on the wire (compressed) and on
    /// the box (not compressed). Said, naming the file, rather than done silently.
    fn warn_sparse(&mut self, sparse: &[(String, u64, u64)]) {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        for (path, size, allocated) in sparse.iter().take(5) {
            self.warnings.push(format!(
                "{path} is a sparse file: {:.1} MiB long but {:.1} MiB on disk; the sync sends \
                 its holes as zeros and the box stores all {:.1} MiB; leave it out with \
                 .crabboxignore or sync.exclude if the box does not need it",
                mib(*size),
                mib(*allocated),
                mib(*size)
            ));
        }
        if sparse.len() > 5 {
            self.warnings.push(format!(
                "{} more sparse files are synced whole",
                sparse.len() - 5
            ));
        }
    }

    fn check_limits(&mut self, root: &Path, opts: &SyncOptions) -> Result<()> {
        let l = opts.limits;
        let files = self.entries.len();
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        if (files > l.max_files || self.total_bytes > l.max_bytes) && !opts.allow_large {
            return Err(Error::Sync(format!(
                "{} would sync {files} files ({:.2} GiB), over the limit of {} files / {:.0} GiB; \
                 add excludes to .crabboxignore or sync.exclude, or pass --force-sync-large \
                 (CRABBOX_SYNC_ALLOW_LARGE=1)",
                root.display(),
                gib(self.total_bytes),
                l.max_files,
                gib(l.max_bytes)
            )));
        }
        if files > l.warn_files || self.total_bytes > l.warn_bytes {
            self.warnings.push(format!(
                "syncing a large tree: {files} files, {:.2} GiB; consider excluding build outputs",
                gib(self.total_bytes)
            ));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.path.as_str())
    }
}

/// What reading the files of a listing found: its entries (a [`Vec`], or while threads
/// read, the [`Window`] one of them fills, then the number it holds), and what was noted.
#[derive(Default)]
struct Stated<E = Vec<SyncEntry>> {
    entries: E,
    /// (path, size, bytes on disk) of each sparse file.
    sparse: Vec<(String, u64, u64)>,
    /// (lossy, escaped) of each listed name that is not UTF-8 (not read).
    not_utf8: Vec<(String, String)>,
}

impl<E> Stated<E> {
    fn map_entries<F>(self, f: impl FnOnce(E) -> F) -> Stated<F> {
        Stated {
            entries: f(self.entries),
            sparse: self.sparse,
            not_utf8: self.not_utf8,
        }
    }

    /// What was noted besides the entries, added to `self`'s.
    fn note<F>(&mut self, other: Stated<F>) {
        self.sparse.extend(other.sparse);
        self.not_utf8.extend(other.not_utf8);
    }
}

impl Stated {
    fn append(&mut self, mut other: Stated) {
        self.entries.append(&mut other.entries);
        self.note(other);
    }
}

/// Where [`stat_all`] puts the entries it finds.
trait EntrySink {
    fn push(&mut self, entry: SyncEntry);
}

impl EntrySink for Vec<SyncEntry> {
    fn push(&mut self, entry: SyncEntry) {
        Vec::push(self, entry);
    }
}

/// What leaves a file out besides the built-in rules.
struct Filters<'a> {
    exclude: &'a Gitignore,
    include: Option<&'a Gitignore>,
}

impl Filters<'_> {
    /// A name that is not UTF-8 cannot be synced faithfully: refused, naming it, unless the
    /// user left it out anyway. Never a file dropped silently.
    fn refuse_not_utf8(&self, root: &Path, not_utf8: &[(String, String)]) -> Result<()> {
        let refused: Vec<&String> = not_utf8
            .iter()
            .filter(|(lossy, _)| {
                !self
                    .exclude
                    .matched_path_or_any_parents(lossy, false)
                    .is_ignore()
                    && self
                        .include
                        .is_none_or(|inc| inc.matched_path_or_any_parents(lossy, false).is_ignore())
            })
            .map(|(_, shown)| shown)
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = refused.iter().take(5).map(|s| s.as_str()).collect();
        Err(Error::Sync(format!(
            "{} has {} file name{} that {} not valid UTF-8, which crabbox cannot sync: {}{}; \
             rename {}, or leave {} out with .crabboxignore or sync.exclude",
            root.display(),
            refused.len(),
            if refused.len() == 1 { "" } else { "s" },
            if refused.len() == 1 { "is" } else { "are" },
            shown.join(", "),
            if refused.len() > shown.len() {
                ", ..."
            } else {
                ""
            },
            if refused.len() == 1 { "it" } else { "them" },
            if refused.len() == 1 { "it" } else { "them" },
        )))
    }

    /// `rel` (`name` in a directory whose [`clean_dir`] is `parent_clean`) is one crabbox
    /// syncs (by name; the disk is not looked at). A directory's path is checked once for all
    /// its files, each file's name alone.
    fn keeps(&self, rel: &str, parent_clean: bool, name: &str) -> bool {
        if !parent_clean || !is_clean_part(name.as_bytes()) {
            return false;
        }
        // Asked of every file: an empty matcher (the usual case) is not walked up each path.
        if !self.exclude.is_empty()
            && self
                .exclude
                .matched_path_or_any_parents(rel, false)
                .is_ignore()
        {
            return false;
        }
        self.include
            .is_none_or(|inc| inc.matched_path_or_any_parents(rel, false).is_ignore())
    }
}

/// The entries of the NUL-separated `listing` (workdir-relative paths) that `filters` keep,
/// as they are on disk now; a path gone since it was listed, a directory (a submodule), a
/// special file, or one under a directory that is now a symlink (reading through it could
/// leave the tree) is left out. Each directory is opened from its parent's descriptor, never
/// through a symlink, once per run of its files, and names are looked up from it; nothing is
/// allocated per file but its entry.
fn stat_all<E: EntrySink>(
    root: &Path,
    listing: &[u8],
    filters: &Filters<'_>,
    entries: E,
) -> Result<Stated<E>> {
    let mut found = Stated {
        entries,
        sparse: Vec::new(),
        not_utf8: Vec::new(),
    };
    let mut dirs = OpenDirs::new(root)?;
    // The directory of the previous path, and whether it is open (else its files are skipped).
    let mut dir: Option<(&str, bool)> = None;
    let mut last: &[u8] = &[];
    let mut c_name = Vec::with_capacity(256);
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    // The directory of the previous UTF-8 path, and whether its files' paths may be synced.
    let mut clean: Option<(&str, bool)> = None;
    for (raw, text) in names(listing) {
        // git lists a path once per stage of a merge conflict.
        if raw.is_empty() || raw == last {
            continue;
        }
        last = raw;
        let Some(rel) = text else {
            found.not_utf8.push((
                String::from_utf8_lossy(raw).into_owned(),
                raw.escape_ascii().to_string(),
            ));
            continue;
        };
        // The directory's path with its final `/` ("" for the root's files).
        let (parent, name, prefix) = match memchr::memrchr(b'/', raw) {
            Some(i) => (&rel[..i], &rel[i + 1..], &rel[..=i]),
            None => ("", rel, ""),
        };
        let parent_clean = match clean {
            Some((p, c)) if p == prefix => c,
            _ => {
                let c = clean_dir(prefix);
                clean = Some((prefix, c));
                c
            }
        };
        if !filters.keeps(rel, parent_clean, name) {
            continue;
        }
        if dir.is_none_or(|(d, _)| d != parent) {
            dir = Some((parent, dirs.enter(parent)?));
        }
        if dir.is_some_and(|(_, open)| !open) {
            continue;
        }
        let at = dirs.current();
        let st = match lstat_at(at, name, &mut c_name) {
            Ok(st) => st,
            // Deleted but still tracked: not part of the tree any more.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("reading", root.join(rel))(e)),
        };
        let (kind, link_target) = match st.mode & libc::S_IFMT {
            libc::S_IFLNK => {
                let target = match read_link_at(at, &c_name) {
                    Ok(t) => t,
                    // Gone, or no longer a link, since it was stat'ed: as if listed after.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => {
                        continue
                    }
                    Err(e) => return Err(Error::io("reading link", root.join(rel))(e)),
                };
                (
                    EntryKind::Symlink,
                    Some(String::from_utf8_lossy(&target).into_owned()),
                )
            }
            libc::S_IFREG => (EntryKind::File, None),
            // Directories (submodules), sockets, fifos: not synced.
            _ => continue,
        };
        let size = if kind == EntryKind::File { st.size } else { 0 };
        let blocks = st.blocks;
        // Found now, before any box exists, rather than half way through a sync. The mode bits
        // answer for most files; access(2) for the rest (groups, ACLs).
        let mode = st.mode;
        let surely_readable =
            euid == 0 || mode & 0o004 != 0 || (st.uid == euid && mode & 0o400 != 0);
        if kind == EntryKind::File && !surely_readable && !readable_at(at, &c_name) {
            return Err(Error::Sync(format!(
                "cannot read {}: permission denied; make it readable, or leave it out with \
                 .crabboxignore or sync.exclude",
                root.join(rel).display()
            )));
        }
        if kind == EntryKind::File && is_sparse(size, blocks) {
            found
                .sparse
                .push((rel.to_string(), size, blocks.saturating_mul(512)));
        }
        let mtime_ns = i128::from(st.mtime.0) * 1_000_000_000 + i128::from(st.mtime.1);
        found.entries.push(SyncEntry {
            path: rel.to_string(),
            kind,
            mode: mode & super::SYNCED_MODE_BITS,
            size,
            mtime_ns,
            link_target,
        });
    }
    Ok(found)
}

/// The names of a NUL-separated listing (and an empty one after a final NUL), each with its
/// text where it is UTF-8. The listing is checked whole, once: a name of a listing that is
/// all UTF-8 is too (NUL, the separator, is a character of its own).
fn names(listing: &[u8]) -> impl Iterator<Item = (&[u8], Option<&str>)> {
    let text = std::str::from_utf8(listing).ok();
    let mut start = 0;
    memchr::memchr_iter(0, listing)
        .chain(std::iter::once(listing.len()))
        .map(move |end| {
            let name = &listing[start..end];
            let named = match text {
                Some(t) => t.get(start..end),
                None => std::str::from_utf8(name).ok(),
            };
            start = end + 1;
            (name, named)
        })
}

/// Walks up from `start` to the enclosing git work tree's root, if any.
pub fn git_root(start: &Path) -> Option<PathBuf> {
    let out = Command::new("git")
        .arg("-C")
        .arg(start)
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(s.trim_end_matches('\n')))
}

/// The files of a tree that is not git's (honouring `.gitignore`, `.ignore` and
/// `.crabboxignore`), as a NUL-separated listing.
fn walk_files(root: &Path) -> Result<Vec<u8>> {
    let mut files = Vec::new();
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .follow_links(false)
        .require_git(false)
        .git_global(false)
        .parents(false)
        .add_custom_ignore_filename(CRABBOXIGNORE)
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    for entry in walker {
        let entry = entry.map_err(|e| Error::Sync(format!("walking {}: {e}", root.display())))?;
        if entry.depth() == 0 {
            continue;
        }
        let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
        if is_dir {
            continue;
        }
        if let Ok(rel) = entry.path().strip_prefix(root) {
            use std::os::unix::ffi::OsStrExt;
            files.extend_from_slice(rel.as_os_str().as_bytes());
            files.push(0);
        }
    }
    Ok(files)
}

fn matcher(root: &Path, patterns: &[String], file: Option<&Path>) -> Result<Gitignore> {
    let mut b = GitignoreBuilder::new(root);
    if let Some(f) = file.filter(|f| f.is_file()) {
        if let Some(e) = b.add(f) {
            return Err(Error::Usage(format!("reading {}: {e}", f.display())));
        }
    }
    for p in patterns {
        b.add_line(None, p)
            .map_err(|e| Error::Usage(format!("bad sync pattern {p:?}: {e}")))?;
    }
    b.build()
        .map_err(|e| Error::Usage(format!("bad sync patterns: {e}")))
}

/// The files in directory `prefix` ("" for the root, else the directory's path and a final
/// `/`) are ones crabbox may sync, by their directory's path: relative, `/`-separated, with no
/// empty, `.` or `..` component, none of [`BUILTIN_EXCLUDES`], and not in crabbox's own
/// [`OWN_DIR`]. Asked once per directory of a listing.
fn clean_dir(prefix: &str) -> bool {
    match prefix.strip_suffix('/') {
        None => prefix.is_empty(),
        Some(dir) => {
            dir.as_bytes().split(|b| *b == b'/').all(is_clean_part) && !prefix.starts_with(OWN_DIR)
        }
    }
}

/// One component of a path crabbox syncs: not empty, `.` or `..`, nor one of
/// [`BUILTIN_EXCLUDES`]. Asked of every file's name.
fn is_clean_part(c: &[u8]) -> bool {
    !matches!(c, b"" | b"." | b"..") && !BUILTIN_EXCLUDES.iter().any(|x| x.as_bytes() == c)
}

#[path = "git_listing.rs"]
mod git_listing;
use git_listing::GitListing;

#[path = "stat_at.rs"]
mod at;
use at::{is_sparse, lstat_at, read_link_at, readable_at, OpenDirs};

#[path = "stat_parallel.rs"]
mod parallel;
use parallel::{stat_parallel, stat_spawn};

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
