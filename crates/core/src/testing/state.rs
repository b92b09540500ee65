//! What the memory provider holds: its boxes, the processes started on them, the call log,
//! the scripts and the faults still to inject.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::watch;

use super::script::{Script, KILL_EXIT, TERM_EXIT};
use crate::error::Error;
use crate::provider::{ExecSpec, Signal};
use crate::sync::RemoteTree;

/// A primitive of [`crate::provider::Provider`] or [`crate::provider::BoxSession`], as the
/// call log names it and as faults target it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    DeleteLeaseBoxes,
    Inspect,
    FindUnclaimed,
    Open,
    Delete,
    List,
    Exists,
    Scan,
    MakeDir,
    Apply,
    Start,
    Signal,
    StopRun,
    ReadFile,
    WriteFile,
    Vouch,
}

impl Op {
    /// The first word of this primitive's lines in the call log.
    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::DeleteLeaseBoxes => "delete_lease_boxes",
            Op::Inspect => "inspect",
            Op::FindUnclaimed => "find_unclaimed",
            Op::Open => "open",
            Op::Delete => "delete",
            Op::List => "list",
            Op::Exists => "exists",
            Op::Scan => "scan",
            Op::MakeDir => "make_dir",
            Op::Apply => "apply",
            Op::Start => "start",
            Op::Signal => "signal",
            Op::StopRun => "stop_run",
            Op::ReadFile => "read_file",
            Op::WriteFile => "write_file",
            Op::Vouch => "unchanged_since",
        }
    }
}

/// A file on a memory box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File {
        data: Vec<u8>,
        mode: u32,
        /// Nanoseconds, as the archive carried it.
        mtime: i128,
    },
    Symlink {
        target: String,
    },
}

/// One archive a box received and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub workdir: String,
    /// The archive's files, by path relative to the workdir.
    pub entries: BTreeMap<String, Node>,
    /// The files it deleted first (its `Delete` ops).
    pub delete: Vec<String>,
    /// Every op that came with it, in order.
    pub ops: Vec<crate::sync::SyncOp>,
    /// The new sync record it brought (`None`: the box's record stayed).
    pub record: Option<Vec<u8>>,
}

impl Applied {
    /// The paths the archive held, sorted.
    pub fn paths(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }
}

/// A box held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemBox {
    pub remote_id: String,
    /// Its tags.
    pub lease_id: String,
    pub slug: String,
    pub keep: bool,
    pub workdir: String,
    /// Directories that exist, by absolute path.
    pub dirs: BTreeSet<String>,
    /// Files, by absolute path.
    pub files: BTreeMap<String, Node>,
    /// Every archive applied to it, in order.
    pub applied: Vec<Applied>,
    /// The sync record kept beside each workdir, by workdir.
    pub records: BTreeMap<String, Vec<u8>>,
}

/// A digest of everything a scan found.
fn fingerprint(tree: &RemoteTree) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("{tree:?}").as_bytes()))
}

impl MemBox {
    /// The files under the workdir, by path relative to it.
    pub fn tree(&self) -> BTreeMap<String, Node> {
        let prefix = format!("{}/", self.workdir);
        self.files
            .iter()
            .filter_map(|(p, n)| Some((p.strip_prefix(&prefix)?.to_string(), n.clone())))
            .collect()
    }

    /// The content of `rel` under the workdir, if it is a file.
    pub fn file(&self, rel: &str) -> Option<&[u8]> {
        match self.files.get(&format!("{}/{rel}", self.workdir)) {
            Some(Node::File { data, .. }) => Some(data),
            _ => None,
        }
    }

    pub(super) fn exists(&self, path: &str) -> bool {
        let under = format!("{path}/");
        self.dirs.contains(path)
            || self.files.contains_key(path)
            || self.files.keys().any(|p| p.starts_with(&under))
    }

    /// What a scan of `workdir` finds: the children of the workdir and of every directory
    /// its record names.
    pub(super) fn scan(&self, workdir: &str, checksum: bool) -> RemoteTree {
        use crate::sync::{RemoteEntry, RemoteKind, SyncRecord};
        if !self.dirs.contains(workdir) {
            return RemoteTree::default();
        }
        let record = self.records.get(workdir).map(|r| SyncRecord::decode(r));
        let mut scanned = std::collections::BTreeSet::from([String::new()]);
        if let Some(r) = &record {
            scanned.extend(
                r.dirs
                    .iter()
                    .filter(|d| self.dirs.contains(&format!("{workdir}/{d}")))
                    .cloned(),
            );
        }
        let prefix = format!("{workdir}/");
        let mut entries = BTreeMap::new();
        let mut put = |abs: &str, entry: RemoteEntry| {
            let Some(rel) = abs.strip_prefix(&prefix) else {
                return;
            };
            if scanned.contains(crate::sync::parent(rel)) {
                entries.insert(rel.to_string(), entry);
            }
        };
        for d in &self.dirs {
            put(
                d,
                RemoteEntry {
                    kind: RemoteKind::Dir,
                    mode: 0o755,
                    size: 0,
                    mtime_ns: 0,
                    link_target: None,
                    sha256: None,
                },
            );
        }
        for (path, node) in &self.files {
            let entry = match node {
                Node::File { data, mode, mtime } => RemoteEntry {
                    kind: RemoteKind::File,
                    mode: *mode,
                    size: data.len() as u64,
                    mtime_ns: *mtime,
                    link_target: None,
                    sha256: checksum.then(|| {
                        use sha2::Digest;
                        hex::encode(sha2::Sha256::digest(data))
                    }),
                },
                Node::Symlink { target } => RemoteEntry {
                    kind: RemoteKind::Symlink,
                    mode: 0o777,
                    size: 0,
                    mtime_ns: 0,
                    link_target: Some(target.clone()),
                    sha256: None,
                },
            };
            put(path, entry);
        }
        let mut tree = RemoteTree {
            exists: true,
            record,
            scanned,
            entries,
            state: None,
        };
        tree.state = Some(fingerprint(&tree));
        tree
    }

    /// The name of what a scan of `workdir` would find now: a watcher that never misses.
    pub(super) fn state_of(&self, workdir: &str) -> Option<String> {
        self.scan(workdir, false).state
    }

    /// Removes `path` and everything under it.
    pub(super) fn remove_path(&mut self, path: &str) {
        let under = format!("{path}/");
        self.dirs.retain(|d| d != path && !d.starts_with(&under));
        self.files
            .retain(|f, _| f != path && !f.starts_with(&under));
    }
}

/// A command started on a memory box.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub remote_id: String,
    /// What the engine asked to start.
    pub spec: ExecSpec,
    /// The signals it received while it ran (from `signal` and `stop_run`), in order.
    pub signals: Vec<Signal>,
    /// How it ended; `None` while it runs.
    pub exit: Option<i32>,
}

pub(super) struct Proc {
    pub record: Process,
    pub ignores_term: bool,
    pub ended: watch::Sender<Option<i32>>,
}

impl Proc {
    /// Delivers `signal`; returns whether it ended the process.
    pub fn deliver(&mut self, signal: Signal) -> bool {
        if self.record.exit.is_some() {
            return false;
        }
        self.record.signals.push(signal);
        let code = match signal {
            Signal::Kill => KILL_EXIT,
            Signal::Term if !self.ignores_term => TERM_EXIT,
            Signal::Term => return false,
        };
        self.end(code);
        true
    }

    /// Ends the process with `code` unless it has already ended; returns how it ended.
    pub fn end(&mut self, code: i32) -> i32 {
        let code = *self.record.exit.get_or_insert(code);
        self.ended.send_replace(Some(code));
        code
    }
}

pub(super) type Matcher = Arc<dyn Fn(&str) -> bool + Send + Sync>;
pub(super) type MakeError = Arc<dyn Fn() -> Error + Send + Sync>;

/// A fault waiting for its primitive.
pub(super) enum Fault {
    /// The next call fails.
    Once(Error),
    /// Every call fails.
    Every(MakeError),
    /// The next call never answers.
    Hang,
    /// The next create makes its box, then fails as if its answer was lost.
    LoseCreateAnswer(Error),
    /// The next call first changes the boxes, as something behind the engine's back would
    /// just as the call reaches the box; then it goes on.
    Tamper(Tamper),
}

pub(super) type Tamper = Box<dyn FnOnce(&mut BTreeMap<String, MemBox>) + Send>;

/// What a call meets.
pub(super) enum Injected {
    Fail(Error),
    Hang,
    LoseCreateAnswer(Error),
}

#[derive(Default)]
pub(super) struct State {
    pub boxes: BTreeMap<String, MemBox>,
    pub calls: Vec<String>,
    pub ops: Vec<Op>,
    pub faults: Vec<(Op, Fault)>,
    pub scripts: Vec<(Matcher, Script)>,
    pub processes: Vec<Proc>,
    pub boxes_made: u32,
    pub pids_given: u32,
}

impl State {
    /// Logs a call of `op` and takes the fault waiting for it, if any.
    pub fn call(&mut self, op: Op, detail: &str) -> Option<Injected> {
        self.calls.push(if detail.is_empty() {
            op.name().to_string()
        } else {
            format!("{} {detail}", op.name())
        });
        self.ops.push(op);
        let i = self.faults.iter().position(|(o, _)| *o == op)?;
        Some(match &self.faults[i].1 {
            Fault::Every(make) => Injected::Fail(make()),
            _ => match self.faults.remove(i).1 {
                Fault::Once(e) => Injected::Fail(e),
                Fault::Hang => Injected::Hang,
                Fault::LoseCreateAnswer(e) => Injected::LoseCreateAnswer(e),
                Fault::Tamper(change) => {
                    change(&mut self.boxes);
                    return None;
                }
                Fault::Every(_) => unreachable!("handled above"),
            },
        })
    }

    pub fn process(&mut self, remote_id: &str, pid: u32) -> Option<&mut Proc> {
        self.processes
            .iter_mut()
            .find(|p| p.record.pid == pid && p.record.remote_id == remote_id)
    }
}
