//! The sync manifest: which files of the working tree go to the box.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
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
        let Candidates {
            files: candidates,
            not_utf8,
        } = match git_files(root)? {
            Some(found) => found,
            None => walk_files(root)?,
        };
        let exclude = matcher(root, &opts.exclude, Some(&root.join(CRABBOXIGNORE)))?;
        let include = if opts.include.is_empty() {
            None
        } else {
            Some(matcher(root, &opts.include, None)?)
        };
        // A name that is not UTF-8 cannot be synced faithfully: refuse, naming it, unless the
        // user left it out anyway. Never drop a file silently.
        let refused: Vec<&String> = not_utf8
            .iter()
            .filter(|(lossy, _)| {
                !exclude
                    .matched_path_or_any_parents(lossy, false)
                    .is_ignore()
                    && include
                        .as_ref()
                        .is_none_or(|inc| inc.matched_path_or_any_parents(lossy, false).is_ignore())
            })
            .map(|(_, shown)| shown)
            .collect();
        if !refused.is_empty() {
            let shown: Vec<&str> = refused.iter().take(5).map(|s| s.as_str()).collect();
            return Err(Error::Sync(format!(
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
            )));
        }
        let mut entries = BTreeMap::new();
        let mut real_dirs = std::collections::HashSet::new();
        let mut sparse = Vec::new();
        for rel in candidates {
            if !is_clean_relative(&rel)
                || rel.split('/').any(|c| BUILTIN_EXCLUDES.contains(&c))
                || rel.starts_with(OWN_DIR)
            {
                continue;
            }
            if exclude.matched_path_or_any_parents(&rel, false).is_ignore() {
                continue;
            }
            if let Some(inc) = &include {
                if !inc.matched_path_or_any_parents(&rel, false).is_ignore() {
                    continue;
                }
            }
            if !parents_are_real_dirs(root, &rel, &mut real_dirs) {
                // A directory on the way is now a symlink (or gone): reading through it could
                // leave the tree.
                continue;
            }
            let full = root.join(&rel);
            let meta = match std::fs::symlink_metadata(&full) {
                Ok(m) => m,
                // Deleted but still tracked: not part of the tree any more.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("reading", full)(e)),
            };
            let ft = meta.file_type();
            let (kind, link_target) = if ft.is_symlink() {
                let target = std::fs::read_link(&full).map_err(Error::io("reading link", &full))?;
                (
                    EntryKind::Symlink,
                    Some(target.to_string_lossy().into_owned()),
                )
            } else if ft.is_file() {
                (EntryKind::File, None)
            } else {
                // Directories (submodules), sockets, fifos: not synced.
                continue;
            };
            let size = if kind == EntryKind::File {
                meta.len()
            } else {
                0
            };
            // Found now, before any box exists, rather than half way through a sync.
            if kind == EntryKind::File && !readable(&full) {
                return Err(Error::Sync(format!(
                    "cannot read {}: permission denied; make it readable, or leave it out with \
                     .crabboxignore or sync.exclude",
                    full.display()
                )));
            }
            if kind == EntryKind::File && is_sparse(size, meta.blocks()) {
                sparse.push((rel.clone(), size, meta.blocks().saturating_mul(512)));
            }
            let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
            entries.insert(
                rel.clone(),
                SyncEntry {
                    path: rel,
                    kind,
                    mode: meta.permissions().mode() & super::SYNCED_MODE_BITS,
                    size,
                    mtime_ns,
                    link_target,
                },
            );
        }
        let entries: Vec<SyncEntry> = entries.into_values().collect();
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

/// A file whose disk blocks hold less than half its length (and that is worth mentioning).
fn is_sparse(size: u64, blocks: u64) -> bool {
    size >= SPARSE_MIN_BYTES && blocks.saturating_mul(512) < size / 2
}

/// The calling user may read `path` (a cheap check, no file is opened).
fn readable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::R_OK) == 0 }
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

/// The files a tree offers, and those whose names are not UTF-8 (as `(lossy, escaped)`).
struct Candidates {
    files: Vec<String>,
    not_utf8: Vec<(String, String)>,
}

impl Candidates {
    fn push(&mut self, raw: &[u8]) {
        match std::str::from_utf8(raw) {
            Ok(s) => self.files.push(s.to_string()),
            Err(_) => self.not_utf8.push((
                String::from_utf8_lossy(raw).into_owned(),
                raw.escape_ascii().to_string(),
            )),
        }
    }
}

fn git_files(root: &Path) -> Result<Option<Candidates>> {
    if git_root(root).is_none() {
        return Ok(None);
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "-z",
        ])
        .output()
        .map_err(Error::io("running git ls-files in", root))?;
    if !out.status.success() {
        return Err(Error::Sync(format!(
            "git ls-files failed in {}: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut found = Candidates {
        files: Vec::new(),
        not_utf8: Vec::new(),
    };
    for raw in out.stdout.split(|b| *b == 0).filter(|s| !s.is_empty()) {
        found.push(raw);
    }
    found.files.dedup();
    Ok(Some(found))
}

fn walk_files(root: &Path) -> Result<Candidates> {
    let mut files = Candidates {
        files: Vec::new(),
        not_utf8: Vec::new(),
    };
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
            files.push(rel.as_os_str().as_bytes());
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

/// Every directory between `root` and `rel` is a real directory, not a symlink.
fn parents_are_real_dirs(
    root: &Path,
    rel: &str,
    known: &mut std::collections::HashSet<String>,
) -> bool {
    let mut prefix = String::new();
    let mut parts = rel.split('/').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            return true;
        }
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        if known.contains(&prefix) {
            continue;
        }
        match std::fs::symlink_metadata(root.join(&prefix)) {
            Ok(m) if m.is_dir() => {
                known.insert(prefix.clone());
            }
            _ => return false,
        }
    }
    true
}

fn is_clean_relative(rel: &str) -> bool {
    !rel.is_empty()
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
