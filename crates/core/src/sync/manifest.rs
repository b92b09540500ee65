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
        entries.sort_unstable_by(|a: &SyncEntry, b: &SyncEntry| a.path.cmp(&b.path));
        entries.dedup_by(|a, b| a.path == b.path);
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

/// Files at least this long are checked for holes.
const SPARSE_MIN_BYTES: u64 = 16 << 20;

/// Threads reading metadata, at most, and files each at least. Two more threads than the
/// machine has cores (up to the most): the reading is all system calls, and a warm run's other
/// work (its requests, the runtime, on a shared machine everyone else's) takes cores from it
/// while it runs; on two cores a third thread gave a warm edit's run 1-4 ms back, a fourth
/// 1.5-2 ms more (medians of 15 and 20 alternating runs, either order first).
const STAT_THREADS: usize = 4;
const STAT_BATCH_MIN: usize = 2048;

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

/// One run's share of the vector every stat thread writes its entries into (its spare
/// capacity, one slot per name of the run), filled from the front. Entries written straight
/// into place: the threads' entries are not copied into one vector after they are read (a
/// serial copy of 2 MB of fresh memory at 20,000 files, 2-9 ms here, most of it page faults).
struct Window<'a> {
    slots: &'a mut [std::mem::MaybeUninit<SyncEntry>],
    len: usize,
}

impl EntrySink for Window<'_> {
    fn push(&mut self, entry: SyncEntry) {
        // A run yields at most one entry per name, and has a slot for each.
        self.slots[self.len].write(entry);
        self.len += 1;
    }
}

impl Window<'_> {
    /// The number of entries written, now owned by whoever adopts them ([`adopt`]).
    fn keep(self) -> usize {
        let len = self.len;
        std::mem::forget(self);
        len
    }
}

impl Drop for Window<'_> {
    /// A run that failed (or panicked) drops what it wrote.
    fn drop(&mut self) {
        for slot in &mut self.slots[..self.len] {
            // SAFETY: the first `len` slots were written by `push` and are owned by no one else.
            unsafe { slot.assume_init_drop() };
        }
    }
}

/// The entries runs of [`Window`]s kept in `out`'s spare capacity, each `(start, len)`, moved
/// together after its `len` entries (in listing order, closing the gaps the runs left).
///
/// # Safety
/// Each window's `len` entries from `start` (relative to `out.len()`) were written and kept
/// ([`Window::keep`]); the windows are in increasing order and do not overlap; nothing else
/// owns those entries.
unsafe fn adopt(out: &mut Vec<SyncEntry>, windows: &[(usize, usize)]) {
    let base = out.len();
    let mut len = base;
    let at = out.as_mut_ptr();
    for &(start, n) in windows {
        let from = base + start;
        debug_assert!(from >= len && from + n <= out.capacity());
        if from != len {
            // SAFETY (the caller's): `n` entries at `from` are initialized; `len <= from`, so
            // the move stays inside the capacity; `copy` allows the overlap.
            unsafe { std::ptr::copy(at.add(from), at.add(len), n) };
        }
        len += n;
    }
    // SAFETY: `len` entries from the start are initialized now.
    unsafe { out.set_len(len) };
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

    /// `rel` is one crabbox syncs (by name; the disk is not looked at).
    fn keeps(&self, rel: &str) -> bool {
        if !is_clean_unexcluded(rel) || rel.starts_with(OWN_DIR) {
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
    for raw in names(listing) {
        // git lists a path once per stage of a merge conflict.
        if raw.is_empty() || raw == last {
            continue;
        }
        last = raw;
        let Ok(rel) = std::str::from_utf8(raw) else {
            found.not_utf8.push((
                String::from_utf8_lossy(raw).into_owned(),
                raw.escape_ascii().to_string(),
            ));
            continue;
        };
        if !filters.keeps(rel) {
            continue;
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
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

/// The names of a NUL-separated listing (and an empty one after a final NUL).
fn names(listing: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(0, listing)
        .chain(std::iter::once(listing.len()))
        .map(move |end| {
            let name = &listing[start..end];
            start = end + 1;
            name
        })
}

/// The directories from a tree's root down to the one whose files are being read, each
/// opened from its parent's descriptor without following a symlink: a directory swapped for
/// a symlink (or a file) is never read through, whatever happens to the path meanwhile.
struct OpenDirs<'a> {
    root_path: &'a Path,
    root: std::fs::File,
    /// The current directory's components, each with its descriptor; shorter than the
    /// directory's path when a component could not be opened.
    open: Vec<(&'a str, std::fs::File)>,
}

impl<'a> OpenDirs<'a> {
    fn new(root_path: &'a Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        // The root as the user named it (it may be reached through a symlink).
        let root = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | DIR_LOOKUP)
            .open(root_path)
            .map_err(Error::io("reading", root_path))?;
        Ok(OpenDirs {
            root_path,
            root,
            open: Vec::new(),
        })
    }

    /// Opens `parent` (a clean relative path, "" for the root), reusing the components it
    /// shares with the directory open now: `false` when it is not a directory reachable
    /// without a symlink any more (its files are left out).
    fn enter(&mut self, parent: &'a str) -> Result<bool> {
        let mut parts = parent.split('/').filter(|c| !c.is_empty());
        let mut depth = 0;
        let mut next = None;
        for part in parts.by_ref() {
            if self.open.get(depth).is_some_and(|(p, _)| *p == part) {
                depth += 1;
            } else {
                next = Some(part);
                break;
            }
        }
        self.open.truncate(depth);
        for part in next.into_iter().chain(parts) {
            let at = self.open.last().map_or(&self.root, |(_, f)| f);
            match open_dir_at(at, part) {
                Ok(f) => self.open.push((part, f)),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    return Ok(false)
                }
                Err(e) => return Err(Error::io("reading", self.root_path.join(parent))(e)),
            }
        }
        Ok(true)
    }

    /// The directory [`OpenDirs::enter`] last opened whole.
    fn current(&self) -> &std::fs::File {
        self.open.last().map_or(&self.root, |(_, f)| f)
    }
}

/// How a directory is opened to look names up in: on Linux for lookups only (`O_PATH`), which
/// asks only for the search permission a lookup needs (an intermediate directory may be
/// `--x`, as stat-ing through it by path allows); elsewhere, for reading.
#[cfg(target_os = "linux")]
const DIR_LOOKUP: libc::c_int = libc::O_PATH;
#[cfg(not(target_os = "linux"))]
const DIR_LOOKUP: libc::c_int = libc::O_RDONLY;

/// The directory `name` in the open directory `dir`, never through a symlink.
fn open_dir_at(dir: &std::fs::File, name: &str) -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c_name` is NUL-terminated and `dir` an open descriptor for the duration of
    // the call; a descriptor returned is owned by nothing else.
    unsafe {
        let fd = libc::openat(
            dir.as_raw_fd(),
            c_name.as_ptr(),
            DIR_LOOKUP | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(std::fs::File::from_raw_fd(fd))
        }
    }
}

/// What the manifest reads of a file's metadata.
struct Meta {
    /// Type and permission bits (`st_mode`).
    mode: u32,
    uid: u32,
    size: u64,
    /// 512-byte blocks on disk.
    blocks: u64,
    mtime: (i64, u32),
}

/// lstat of `name` in the open directory `dir`; `c_name` is left holding `name`
/// NUL-terminated (for [`readable_at`]). On Linux by statx(2), asking only for the fields read
/// (measurably cheaper than a whole stat on 20,000 files); fstatat where statx is missing or
/// filtered out (old kernels, seccomp), or did not give every field asked for.
fn lstat_at(dir: &std::fs::File, name: &str, c_name: &mut Vec<u8>) -> std::io::Result<Meta> {
    use std::os::fd::AsRawFd;
    if name.contains('\0') {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    c_name.clear();
    c_name.extend_from_slice(name.as_bytes());
    c_name.push(0);
    #[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
    if let Some(meta) = statx_at(dir.as_raw_fd(), c_name)? {
        return Ok(meta);
    }
    // SAFETY: a zeroed stat is a valid out-parameter; `c_name` is NUL-terminated (and holds no
    // other NUL) and `dir` an open descriptor for the duration of the call.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstatat(
            dir.as_raw_fd(),
            c_name.as_ptr().cast(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ) == 0
        {
            Ok(Meta {
                mode: st.st_mode,
                uid: st.st_uid,
                size: st.st_size as u64,
                blocks: st.st_blocks as u64,
                mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            })
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// statx(2) of the NUL-terminated `c_name` in `dir`, not following a final symlink: `None`
/// when statx cannot be used (then it is not tried again) or did not give every field.
#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
fn statx_at(dir: std::os::fd::RawFd, c_name: &[u8]) -> std::io::Result<Option<Meta>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static UNUSABLE: AtomicBool = AtomicBool::new(false);
    const WANTED: u32 = libc::STATX_TYPE
        | libc::STATX_MODE
        | libc::STATX_UID
        | libc::STATX_SIZE
        | libc::STATX_BLOCKS
        | libc::STATX_MTIME;
    if UNUSABLE.load(Ordering::Relaxed) {
        return Ok(None);
    }
    // SAFETY: a zeroed statx is a valid out-parameter; `c_name` is NUL-terminated and `dir`
    // an open descriptor for the duration of the call. The system call itself, not glibc's
    // wrapper (2.28 and later): the binary still loads on an older glibc, and falls back.
    let (rc, sx) = unsafe {
        let mut sx: libc::statx = std::mem::zeroed();
        let rc = libc::syscall(
            libc::SYS_statx,
            dir,
            c_name.as_ptr().cast::<libc::c_char>(),
            libc::AT_SYMLINK_NOFOLLOW,
            WANTED,
            &mut sx as *mut libc::statx,
        );
        (rc, sx)
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EPERM | libc::EINVAL) => {
                UNUSABLE.store(true, Ordering::Relaxed);
                Ok(None)
            }
            _ => Err(e),
        };
    }
    if sx.stx_mask & WANTED != WANTED {
        return Ok(None);
    }
    Ok(Some(Meta {
        mode: u32::from(sx.stx_mode),
        uid: sx.stx_uid,
        size: sx.stx_size,
        blocks: sx.stx_blocks,
        mtime: (sx.stx_mtime.tv_sec, sx.stx_mtime.tv_nsec),
    }))
}

/// The target of the symlink `c_name` (NUL-terminated, as [`lstat_at`] leaves it) in the
/// open directory `dir`: read from the directory the link was found in, not by its path.
fn read_link_at(dir: &std::fs::File, c_name: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    if c_name.last() != Some(&0) {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `c_name` is NUL-terminated, `buf` is writable for its length, and `dir` is
        // an open descriptor for the duration of the call.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                c_name.as_ptr().cast(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        // A target that filled the buffer may have been cut: read again with more room.
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 4, 0);
    }
}

/// A file whose disk blocks hold less than half its length (and that is worth mentioning).
fn is_sparse(size: u64, blocks: u64) -> bool {
    size >= SPARSE_MIN_BYTES && blocks.saturating_mul(512) < size / 2
}

/// The calling user may read `c_name` (NUL-terminated, as [`lstat_at`] leaves it) in the
/// open directory `dir` (a cheap check, no file is opened).
fn readable_at(dir: &std::fs::File, c_name: &[u8]) -> bool {
    use std::os::fd::AsRawFd;
    if c_name.last() != Some(&0) {
        return false;
    }
    // SAFETY: `c_name` is NUL-terminated and `dir` an open descriptor for the duration of the
    // call.
    unsafe { libc::faccessat(dir.as_raw_fd(), c_name.as_ptr().cast(), libc::R_OK, 0) == 0 }
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

/// `listing` (NUL-separated) cut into at most `parts` runs of whole names, of about equal
/// length.
fn split_listing(listing: &[u8], parts: usize) -> Vec<&[u8]> {
    let mut runs = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 1..parts {
        let at = (listing.len() * i / parts).max(start);
        let mut cut = listing[at..]
            .iter()
            .position(|b| *b == 0)
            .map_or(listing.len(), |p| at + p + 1);
        // A name listed again (git lists one per stage of a merge conflict) stays in the run
        // of its first listing, where it is read once.
        if cut < listing.len() {
            let before = listing[..cut - 1]
                .iter()
                .rposition(|b| *b == 0)
                .map_or(0, |p| p + 1);
            let last = &listing[before..cut - 1];
            while let Some(end) = listing[cut..].iter().position(|b| *b == 0) {
                if &listing[cut..cut + end] != last {
                    break;
                }
                cut += end + 1;
            }
        }
        runs.push(&listing[start..cut]);
        start = cut;
    }
    runs.push(&listing[start..]);
    runs.retain(|r| !r.is_empty());
    runs
}

/// Runs of neighbouring paths each thread takes at a time, at least (so a thread slowed
/// by the rest of the machine leaves more of the runs to the others).
const STAT_RUNS_PER_THREAD: usize = 8;
/// Names in a run, at least.
const STAT_RUN_MIN: usize = 512;

/// [`stat_all`] of `listing` on a few threads of `scope`, which take its runs of
/// neighbouring paths one at a time until none is left, writing the entries into `out`'s
/// spare capacity (reserved here) for [`Joined::adopt`] to take in.
fn stat_spawn<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    root: &'env Path,
    listing: &'env [u8],
    filters: &'env Filters<'env>,
    out: &'env mut Vec<SyncEntry>,
) -> StatJob<'scope> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let names = memchr::memchr_iter(0, listing).count() + 1;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get() + 2)
        .clamp(1, STAT_THREADS)
        .min(names.div_ceil(STAT_BATCH_MIN));
    let parts = (threads * STAT_RUNS_PER_THREAD)
        .min(names.div_ceil(STAT_RUN_MIN))
        .max(threads);
    // Each run with its window: a slot for each of its names (the empty one after a final
    // NUL counted too), from `start` in the spare capacity.
    let runs = split_listing(listing, parts);
    let sizes: Vec<usize> = runs
        .iter()
        .map(|r| memchr::memchr_iter(0, r).count() + 1)
        .collect();
    out.reserve(sizes.iter().sum());
    let mut spare = &mut out.spare_capacity_mut()[..];
    let mut start = 0;
    let mut queue = Vec::with_capacity(runs.len());
    for (i, (run, size)) in runs.into_iter().zip(sizes).enumerate() {
        let (slots, rest) = std::mem::take(&mut spare).split_at_mut(size);
        spare = rest;
        queue.push((i, start, run, slots));
        start += size;
    }
    let queue = std::sync::Arc::new(std::sync::Mutex::new(queue.into_iter()));
    let failed = std::sync::Arc::new(AtomicBool::new(false));
    let handles = (0..threads)
        .map(|_| {
            let (queue, failed) = (queue.clone(), failed.clone());
            scope.spawn(move || {
                let mut done = Vec::new();
                while !failed.load(Ordering::Relaxed) {
                    let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                    let Some((i, start, run, slots)) = next else {
                        break;
                    };
                    let found = stat_all(root, run, filters, Window { slots, len: 0 });
                    failed.fetch_or(found.is_err(), Ordering::Relaxed);
                    done.push((i, start, found.map(|f| f.map_entries(Window::keep))));
                }
                done
            })
        })
        .collect();
    StatJob { handles }
}

/// What one of [`stat_spawn`]'s threads read: each run's index, where its window starts,
/// and what it found (the number of entries kept in its window).
type RunsRead = Vec<(usize, usize, Result<Stated<usize>>)>;

/// [`stat_spawn`]'s threads, each with the runs it read.
struct StatJob<'scope> {
    handles: Vec<std::thread::ScopedJoinHandle<'scope, RunsRead>>,
}

impl StatJob<'_> {
    /// Waits for the threads: what they found, in listing order (the error of the first run
    /// that failed), and the windows they kept entries in, for [`Joined::adopt`] once `out`
    /// is no longer lent to them.
    fn join(self) -> Joined {
        let mut runs: RunsRead = self
            .handles
            .into_iter()
            .flat_map(|h| h.join().expect("a stat thread panicked"))
            .collect();
        runs.sort_unstable_by_key(|(i, ..)| *i);
        let mut windows = Vec::with_capacity(runs.len());
        let mut noted = Ok(Stated::default());
        for (_, start, found) in runs {
            match found {
                Ok(f) => {
                    windows.push((start, f.entries));
                    if let Ok(n) = &mut noted {
                        n.note(f);
                    }
                }
                Err(e) => {
                    if noted.is_ok() {
                        noted = Err(e);
                    }
                }
            }
        }
        Joined { windows, noted }
    }
}

/// What [`StatJob::join`] found: the entries are still in the windows of `out`.
#[must_use = "the entries are owned by no one until adopted"]
struct Joined {
    windows: Vec<(usize, usize)>,
    noted: Result<Stated<()>>,
}

impl Joined {
    /// The entries, in listing order, taken into `out`, and what was noted.
    ///
    /// # Safety
    /// `out` is the vector lent to [`stat_spawn`] for this job, untouched since.
    unsafe fn adopt(self, out: &mut Vec<SyncEntry>) -> Result<Stated<()>> {
        // SAFETY: each window holds the entries its run kept, from its start in the spare
        // capacity of `out` as `stat_spawn` found it (the caller's), in increasing order and
        // apart; no one else owns them (a run that failed dropped its own).
        unsafe { adopt(out, &self.windows) };
        self.noted
    }
}

/// [`stat_all`] of `listing` on a few threads.
fn stat_parallel(root: &Path, listing: &[u8], filters: &Filters<'_>) -> Result<Stated> {
    let mut entries = Vec::new();
    let joined =
        std::thread::scope(|scope| stat_spawn(scope, root, listing, filters, &mut entries).join());
    // SAFETY: `entries` is the vector the job was lent, untouched since.
    let noted = unsafe { joined.adopt(&mut entries) }?;
    Ok(noted.map_entries(|()| entries))
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

/// Relative, `/`-separated, with no empty, `.` or `..` component, and none of
/// [`BUILTIN_EXCLUDES`] (one pass: it is asked of every file).
fn is_clean_unexcluded(rel: &str) -> bool {
    !rel.is_empty()
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !BUILTIN_EXCLUDES.contains(&c))
}

#[path = "git_listing.rs"]
mod git_listing;
use git_listing::GitListing;

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
