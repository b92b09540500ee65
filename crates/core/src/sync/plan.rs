//! The sync plan: what one sync sends and what it changes on the box first, from the local
//! manifest and a scan of what is actually on the box (never a local memory of it).
//!
//! A file is sent when the box lacks it or it differs (kind, size, mtime to the nanosecond,
//! permission bits, link target; content hash with `--checksum`). Before the files are laid
//! over the workdir, the box is made safe to write into: whatever stands where the tree has
//! something of another kind is removed, and no directory on the way to a sent file may be a
//! symlink, so nothing is ever written or deleted through a link. Deletions are limited to
//! files the box's [`SyncRecord`] says crabbox synced and that are gone locally.

use std::collections::{BTreeMap, BTreeSet};

use super::manifest::{EntryKind, SyncEntry, SyncManifest};
use super::record::{ancestors, parent, SyncRecord};

/// What a scan of the box's workdir found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteTree {
    /// The workdir exists as a real directory.
    pub exists: bool,
    /// The record of the last completed sync into this workdir, if there is one.
    pub record: Option<SyncRecord>,
    /// Directories whose children were listed (`""` is the workdir itself).
    pub scanned: BTreeSet<String>,
    /// Every entry of a scanned directory, by workdir-relative path.
    pub entries: BTreeMap<String, RemoteEntry>,
    /// Names this exact reading, when the provider can later confirm, without reading the
    /// tree again, that the box still holds it ([`crate::provider::BoxSession::unchanged_since`]).
    pub state: Option<String>,
}

/// One path on the box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    pub kind: RemoteKind,
    /// Permission bits.
    pub mode: u32,
    pub size: u64,
    /// Nanoseconds since the epoch, as precise as the box's filesystem keeps it.
    pub mtime_ns: i128,
    pub link_target: Option<String>,
    /// Hex SHA-256 of a regular file's content (`--checksum` scans only).
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    File,
    Dir,
    Symlink,
    /// A socket, fifo or device.
    Other,
}

/// A change to the box's workdir before the sent files are laid over it. Paths are relative
/// to the workdir; a provider applies them without following any symlink.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncOp {
    /// Remove the path whatever it is (a file, a link, a whole directory): the tree has
    /// something of another kind there.
    Clear(String),
    /// Make every component of this directory a real directory or absent: a symlink or a file
    /// in the way is removed, so nothing below is written through it.
    EnsureDir(String),
    /// Remove the path if it is a real directory (where a sent file goes and the box's state
    /// was not scanned).
    ClearIfDir(String),
    /// Delete a file crabbox synced before that is gone locally, unless a directory on the
    /// way is a symlink.
    Delete(String),
}

impl SyncOp {
    /// NUL-terminated `<letter><path>` entries, for scripts on the box: `c`, `p`, `u`, `x`.
    pub fn encode_all(ops: &[SyncOp]) -> Vec<u8> {
        let mut out = Vec::new();
        for op in ops {
            let (letter, path) = match op {
                SyncOp::Clear(p) => (b'c', p),
                SyncOp::EnsureDir(p) => (b'p', p),
                SyncOp::ClearIfDir(p) => (b'u', p),
                SyncOp::Delete(p) => (b'x', p),
            };
            out.push(letter);
            out.extend_from_slice(path.as_bytes());
            out.push(0);
        }
        out
    }
}

/// How to compare.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions<'a> {
    /// `sync.delete`: remove files crabbox synced before that are gone locally.
    pub delete: bool,
    /// `--full-resync`: send every file, whatever the box holds.
    pub resend_all: bool,
    /// `--checksum`: the local files' content hashes; compare those instead of size and mtime.
    pub hashes: Option<&'a BTreeMap<String, String>>,
}

/// What one sync must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPlan {
    /// Files to send.
    pub send: Vec<SyncEntry>,
    /// Changes to make on the box first, in order.
    pub ops: Vec<SyncOp>,
    /// The workdir is missing: everything is sent and swapped in whole.
    pub full: bool,
    /// The record to keep on the box once the sync completed (left empty by
    /// [`SyncPlan::delta`] when `keeps_record`).
    pub record: SyncRecord,
    /// The box's record already lists exactly the manifest's paths: it need not be sent again.
    pub keeps_record: bool,
}

impl SyncPlan {
    pub fn new(manifest: &SyncManifest, remote: &RemoteTree, opts: PlanOptions<'_>) -> Self {
        let record = SyncRecord::of(manifest);
        if !remote.exists {
            return SyncPlan {
                send: manifest.entries.clone(),
                ops: Vec::new(),
                full: true,
                record,
                keeps_record: false,
            };
        }
        let mut send = Vec::new();
        let mut ops = BTreeSet::new();
        // Directories already found to be real, scanned directories on the box: most files
        // share theirs, so each is looked up once.
        let mut sound = std::collections::HashSet::new();
        for e in &manifest.entries {
            if let Some(op_and_send) = compare(e, remote, opts, &mut sound) {
                ops.extend(op_and_send);
                send.push(e.clone());
            }
        }
        let mut ops: Vec<SyncOp> = ops.into_iter().collect();
        ops.sort_by_key(op_order);
        if opts.delete {
            if let Some(previous) = &remote.record {
                let gone: Vec<&String> = if manifest.entries.is_sorted_by(|a, b| a.path < b.path) {
                    // Both sorted: one walk finds what the record holds and the manifest not.
                    let mut now = manifest.paths().peekable();
                    let gone = previous.paths.iter().filter(|p| {
                        while now.next_if(|n| *n < p.as_str()).is_some() {}
                        now.peek() != Some(&p.as_str())
                    });
                    gone.collect()
                } else {
                    let now: std::collections::HashSet<&str> = manifest.paths().collect();
                    let gone = previous.paths.iter().filter(|p| !now.contains(p.as_str()));
                    gone.collect()
                };
                ops.extend(
                    gone.into_iter()
                        .filter(|p| is_safe_relative(p))
                        .filter(|p| remote_may_hold(remote, p))
                        .map(|p| SyncOp::Delete(p.clone())),
                );
            }
        }
        let keeps_record = remote.record.as_ref() == Some(&record);
        SyncPlan {
            send,
            ops,
            full: false,
            record,
            keeps_record,
        }
    }

    /// The plan from `prev` (entries sorted by path) to `now` for a box known to hold exactly `prev`'s synced files
    /// (its provider vouched that nothing changed since a sync left them so), without reading
    /// the box: what is new or differs is sent, what is gone deleted (with `delete`). The box
    /// was not read, so a new path is sent as into an unscanned directory: every directory on
    /// its way made real (a file or link a command left there removed) and a directory in its
    /// place removed, as [`SyncPlan::new`] does where it did not scan.
    pub fn delta<'a>(
        prev: impl IntoIterator<Item = KeptEntry<'a>>,
        now: &SyncManifest,
        delete: bool,
    ) -> Self {
        let mut send = Vec::new();
        let mut ops = BTreeSet::new();
        let mut gone = Vec::new();
        let mut prev_len = 0;
        let mut old = prev.into_iter().inspect(|_| prev_len += 1);
        let mut next = old.next();
        for e in &now.entries {
            // One comparison of the paths per kept entry passed.
            let mut kept = None;
            while let Some(o) = next {
                match o.path.cmp(e.path.as_str()) {
                    std::cmp::Ordering::Less => gone.push(o.path),
                    std::cmp::Ordering::Equal => kept = Some(o),
                    std::cmp::Ordering::Greater => break,
                }
                next = old.next();
                if kept.is_some() {
                    break;
                }
            }
            match kept {
                Some(o) if o.same_as(e) => {}
                Some(_) => send.push(e.clone()),
                None => {
                    if !parent(&e.path).is_empty() {
                        ops.insert(SyncOp::EnsureDir(parent(&e.path).to_string()));
                    }
                    ops.insert(SyncOp::ClearIfDir(e.path.clone()));
                    send.push(e.clone());
                }
            }
        }
        gone.extend(next.into_iter().chain(old).map(|o| o.path));
        let keeps_record = gone.is_empty() && prev_len == now.len();
        let mut ops: Vec<SyncOp> = ops.into_iter().collect();
        ops.sort_by_key(op_order);
        if delete {
            ops.extend(
                gone.into_iter()
                    .filter(|p| is_safe_relative(p))
                    .map(|p| SyncOp::Delete(p.to_string())),
            );
        }
        SyncPlan {
            send,
            ops,
            full: false,
            record: if keeps_record {
                SyncRecord::default()
            } else {
                SyncRecord::of(now)
            },
            keeps_record,
        }
    }

    /// Files this sync deletes.
    pub fn deleted(&self) -> usize {
        self.ops
            .iter()
            .filter(|op| matches!(op, SyncOp::Delete(_)))
            .count()
    }

    /// Nothing to send, remove or delete: the box already holds the tree.
    pub fn is_noop(&self) -> bool {
        !self.full && self.send.is_empty() && self.ops.is_empty()
    }
}

/// Where an op runs among a plan's: shallow clears first (a deeper one under a cleared path
/// is then skipped on the box), then directories made real, then directories cleared where
/// files go, deletions last.
fn op_order(op: &SyncOp) -> (u8, usize, String) {
    match op {
        SyncOp::Clear(p) => (0, p.matches('/').count(), p.clone()),
        SyncOp::EnsureDir(p) => (1, p.matches('/').count(), p.clone()),
        SyncOp::ClearIfDir(p) => (2, 0, p.clone()),
        SyncOp::Delete(p) => (3, 0, p.clone()),
    }
}

/// An entry of a manifest kept from an earlier sync, borrowed (see [`SyncPlan::delta`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptEntry<'a> {
    pub path: &'a str,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i128,
    pub link_target: Option<&'a str>,
}

impl<'a> From<&'a SyncEntry> for KeptEntry<'a> {
    fn from(e: &'a SyncEntry) -> Self {
        KeptEntry {
            path: &e.path,
            kind: e.kind,
            mode: e.mode,
            size: e.size,
            mtime_ns: e.mtime_ns,
            link_target: e.link_target.as_deref(),
        }
    }
}

impl KeptEntry<'_> {
    /// The same file as `e`, as a sync tells (as [`compare`] tells the box's from the local).
    fn same_as(&self, e: &SyncEntry) -> bool {
        self.kind == e.kind
            && match self.kind {
                EntryKind::Symlink => self.link_target == e.link_target.as_deref(),
                EntryKind::File => {
                    self.size == e.size
                        && self.mtime_ns == e.mtime_ns
                        && self.mode & 0o777 == e.mode & 0o777
                }
            }
    }
}

/// `None` when the box holds `e` as it is; else the ops it needs before it is sent.
fn compare<'a>(
    e: &'a SyncEntry,
    remote: &RemoteTree,
    opts: PlanOptions<'_>,
    sound: &mut std::collections::HashSet<&'a str>,
) -> Option<Vec<SyncOp>> {
    let known = |p: &str| remote.scanned.contains(parent(p));
    let dir_of = parent(&e.path);
    let parents_sound = !dir_of.is_empty() && sound.contains(dir_of);
    for dir in ancestors(&e.path).filter(|_| !parents_sound) {
        if !known(dir) {
            // Below here the box was not scanned: make the way safe and send.
            return Some(vec![
                SyncOp::EnsureDir(parent(&e.path).to_string()),
                SyncOp::ClearIfDir(e.path.clone()),
            ]);
        }
        match remote.entries.get(dir) {
            None => return Some(Vec::new()),
            Some(r) if r.kind == RemoteKind::Dir => {}
            Some(_) => return Some(vec![SyncOp::Clear(dir.to_string())]),
        }
    }
    if !known(&e.path) {
        return Some(vec![SyncOp::ClearIfDir(e.path.clone())]);
    }
    if !dir_of.is_empty() {
        // Every directory on the way is a real directory the scan listed.
        sound.insert(dir_of);
    }
    let Some(r) = remote.entries.get(&e.path) else {
        return Some(Vec::new());
    };
    let same_kind = matches!(
        (e.kind, r.kind),
        (EntryKind::File, RemoteKind::File) | (EntryKind::Symlink, RemoteKind::Symlink)
    );
    if matches!(r.kind, RemoteKind::Dir | RemoteKind::Other) {
        return Some(vec![SyncOp::Clear(e.path.clone())]);
    }
    if !same_kind || opts.resend_all {
        return Some(Vec::new());
    }
    let differs = match e.kind {
        EntryKind::Symlink => r.link_target != e.link_target,
        EntryKind::File => {
            let content_differs = match opts.hashes {
                Some(hashes) => r.sha256.is_none() || hashes.get(&e.path) != r.sha256.as_ref(),
                None => r.size != e.size || !same_mtime(r.mtime_ns, e.mtime_ns),
            };
            content_differs || r.mode & 0o777 != e.mode & 0o777
        }
    };
    differs.then(Vec::new)
}

/// A recorded path may still be on the box: it was seen, or its directory was not scanned.
fn remote_may_hold(remote: &RemoteTree, path: &str) -> bool {
    !remote.scanned.contains(parent(path)) || remote.entries.contains_key(path)
}

/// The box's mtime is the local one: to the nanosecond, or to the second where the box keeps
/// whole seconds only (a filesystem without finer times, or a file put there by an older sync).
pub fn same_mtime(remote_ns: i128, local_ns: i128) -> bool {
    const S: i128 = 1_000_000_000;
    remote_ns == local_ns
        || (remote_ns.rem_euclid(S) == 0 && remote_ns == local_ns.div_euclid(S) * S)
}

/// A relative path with no `..`, no empty or `.` segments and no NUL: safe to touch under
/// the workdir.
pub fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
