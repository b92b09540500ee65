//! A session on a memory box: its files, the archives laid over them, and scripted
//! commands with their signals.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::provider::Shared;
use super::script::MemStream;
use super::state::{Applied, Injected, MemBox, Node, Op, Proc, Process, State};
use crate::error::{Error, Result};
use crate::events::Reporter;
use crate::provider::{ApplySync, BoxSession, ChunkFeed, ExecSpec, ExecStream, RunTarget, Signal};
use crate::sync::{ancestors, is_safe_relative, Codec, RemoteTree, SyncOp};

pub(super) struct MemSession {
    shared: Arc<Shared>,
    remote_id: String,
}

impl MemSession {
    pub(super) fn new(shared: Arc<Shared>, remote_id: &str) -> Self {
        Self {
            shared,
            remote_id: remote_id.to_string(),
        }
    }

    /// This session's box, `Error::NotFound` once it is gone.
    fn on_box<T>(&self, f: impl FnOnce(&mut MemBox) -> Result<T>) -> Result<T> {
        let mut st = self.shared.lock();
        match st.boxes.get_mut(&self.remote_id) {
            Some(b) => f(b),
            None => Err(self.gone()),
        }
    }

    fn gone(&self) -> Error {
        Error::NotFound(format!("memory box {} is gone", self.remote_id))
    }
}

#[async_trait]
impl BoxSession for MemSession {
    async fn exists(&self, path: &str) -> Result<bool> {
        let detail = format!("{} {path}", self.remote_id);
        self.shared.enter(Op::Exists, &detail).await?;
        self.on_box(|b| Ok(b.exists(path)))
    }

    async fn make_dir(&self, path: &str) -> Result<()> {
        let detail = format!("{} {path}", self.remote_id);
        self.shared.enter(Op::MakeDir, &detail).await?;
        self.on_box(|b| {
            b.dirs.insert(path.to_string());
            Ok(())
        })
    }

    fn may_name_tree(&self, _req: &ApplySync<'_>) -> bool {
        true
    }

    async fn apply_sync(
        &self,
        req: &ApplySync<'_>,
        mut chunks: ChunkFeed,
        _reporter: &dyn Reporter,
    ) -> Result<crate::provider::Applied> {
        let injected = self.shared.lock().call(Op::Apply, &self.remote_id);
        self.shared.bump();
        match injected {
            None => {}
            Some(Injected::Fail(e)) => return Err(e),
            Some(Injected::Hang) => {
                req.cancel.cancelled().await;
                return Err(Error::Interrupted);
            }
            Some(Injected::LoseCreateAnswer(_)) => unreachable!("only create loses answers"),
        }
        if req.cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        if let Some(bad) = req.ops.iter().map(op_path).find(|p| !is_safe_relative(p)) {
            return Err(Error::Sync(format!("refusing to touch {bad:?} on the box")));
        }
        // Read every chunk before touching the box: a bad one leaves the tree as it was.
        let (mut entries, mut dirs) = (BTreeMap::new(), BTreeSet::new());
        loop {
            let chunk = tokio::select! {
                _ = req.cancel.cancelled() => return Err(Error::Interrupted),
                c = chunks.recv() => c,
            };
            let Some(chunk) = chunk else { break };
            let chunk = chunk?;
            let bytes = std::fs::read(&chunk.file)
                .map_err(Error::io("reading the archive", chunk.file.to_path_buf()))?;
            let (e, d) = read_archive(&bytes, chunk.codec)?;
            entries.extend(e);
            dirs.extend(d);
        }
        let workdir = req.workdir.trim_end_matches('/');
        self.on_box(|b| {
            // Checked as the box applies it: a tree changed since is left as it is.
            if let Some(state) = req.if_unchanged_since {
                if b.state_of(workdir).as_deref() != Some(state) {
                    return Ok(crate::provider::Applied::TreeMoved);
                }
            }
            let at = |rel: &str| format!("{workdir}/{rel}");
            let mut deleted = Vec::new();
            for op in req.ops {
                match op {
                    SyncOp::Clear(p) => b.remove_path(&at(p.as_str())),
                    SyncOp::EnsureDir(d) => {
                        for dir in ancestors(d.as_str()).chain([d.as_str()]) {
                            b.files.remove(&at(dir));
                        }
                    }
                    SyncOp::ClearIfDir(p) => {
                        if b.dirs.contains(&at(p)) {
                            b.remove_path(&at(p));
                        }
                    }
                    SyncOp::Delete(p) => {
                        let through_link = ancestors(p)
                            .any(|d| matches!(b.files.get(&at(d)), Some(Node::Symlink { .. })));
                        if !through_link && b.files.remove(&at(p)).is_some() {
                            deleted.push(p.clone());
                        }
                    }
                }
            }
            b.dirs.insert(workdir.to_string());
            b.dirs.extend(dirs.iter().map(|d| at(d)));
            for (p, n) in &entries {
                b.dirs.extend(ancestors(p).map(at));
                b.files.insert(at(p), n.clone());
            }
            if let Some(record) = req.record {
                b.records.insert(workdir.to_string(), record.to_vec());
            }
            b.applied.push(Applied {
                workdir: workdir.to_string(),
                entries,
                delete: deleted,
                ops: req.ops.to_vec(),
                record: req.record.map(<[u8]>::to_vec),
            });
            Ok(crate::provider::Applied::Done(b.state_of(workdir)))
        })
    }

    async fn scan(&self, workdir: &str, checksum: bool) -> Result<RemoteTree> {
        let detail = format!("{} {workdir}", self.remote_id);
        self.shared.enter(Op::Scan, &detail).await?;
        self.on_box(|b| Ok(b.scan(workdir.trim_end_matches('/'), checksum)))
    }

    async fn unchanged_since(&self, workdir: &str, state: &str) -> Result<bool> {
        let detail = format!("{} {workdir}", self.remote_id);
        self.shared.enter(Op::Vouch, &detail).await?;
        self.on_box(|b| Ok(b.state_of(workdir.trim_end_matches('/')).as_deref() == Some(state)))
    }

    async fn read_file(
        &self,
        path: &str,
        into: &mut (dyn tokio::io::AsyncWrite + Send + Unpin),
    ) -> Result<u64> {
        let detail = format!("{} {path}", self.remote_id);
        self.shared.enter(Op::ReadFile, &detail).await?;
        let data = self.on_box(|b| match b.files.get(path) {
            Some(Node::File { data, .. }) => Ok(data.clone()),
            _ => Err(Error::NotFound(format!("{path} is not on memory box"))),
        })?;
        tokio::io::AsyncWriteExt::write_all(into, &data)
            .await
            .map_err(Error::io("writing", path))?;
        Ok(data.len() as u64)
    }

    async fn write_file(&self, path: &str, body: &[u8]) -> Result<()> {
        let detail = format!("{} {path}", self.remote_id);
        self.shared.enter(Op::WriteFile, &detail).await?;
        self.on_box(|b| {
            b.files.insert(
                path.to_string(),
                Node::File {
                    data: body.to_vec(),
                    mode: 0o644,
                    mtime: 0,
                },
            );
            Ok(())
        })
    }

    async fn start(&self, spec: &ExecSpec) -> Result<Box<dyn ExecStream>> {
        self.shared.enter(Op::Start, &self.remote_id).await?;
        let (pid, script, ended) = {
            let mut st = self.shared.lock();
            if !st.boxes.contains_key(&self.remote_id) {
                return Err(self.gone());
            }
            let script = st
                .scripts
                .iter()
                .find(|(matches, _)| matches(&spec.script))
                .map(|(_, s)| s.clone())
                .ok_or_else(|| {
                    Error::Transport(format!(
                        "memory box {}: no script registered for command {:?}",
                        self.remote_id, spec.script
                    ))
                })?;
            st.pids_given += 1;
            let pid = st.pids_given;
            let (ended, watching) = watch::channel(None);
            st.processes.push(Proc {
                record: Process {
                    pid,
                    remote_id: self.remote_id.clone(),
                    spec: spec.clone(),
                    signals: Vec::new(),
                    exit: None,
                },
                ignores_term: script.ignores_term(),
                ended,
            });
            (pid, script, watching)
        };
        self.shared.bump();
        Ok(Box::new(MemStream::new(
            self.shared.clone(),
            pid,
            script,
            ended,
        )))
    }

    async fn signal(&self, target: &RunTarget, signal: Signal) -> Result<()> {
        let pid = target.pid.map_or("none".to_string(), |p| p.to_string());
        let detail = format!("{} {} pid={pid}", self.remote_id, signal_name(signal));
        self.shared.enter(Op::Signal, &detail).await?;
        if let Some(pid) = target.pid {
            if let Some(p) = self.shared.lock().process(&self.remote_id, pid) {
                p.deliver(signal);
            }
        }
        self.shared.bump();
        Ok(())
    }

    /// SIGTERM to every live process of the run, up to `grace` for them to end, then SIGKILL
    /// to the survivors. A fault on `stop_run` makes it do nothing.
    async fn stop_run(&self, target: &RunTarget, grace: Duration) {
        if self
            .shared
            .enter(Op::StopRun, &self.remote_id)
            .await
            .is_err()
        {
            return;
        }
        let waiting = self.signal_run(target, Signal::Term);
        let all_ended = async {
            for mut ended in waiting {
                let _ = ended.wait_for(Option::is_some).await;
            }
        };
        if tokio::time::timeout(grace, all_ended).await.is_err() {
            self.signal_run(target, Signal::Kill);
        }
    }
}

impl MemSession {
    /// Delivers `signal` to every live process of the run on this box; returns a way to wait
    /// for each of those still alive to end.
    fn signal_run(&self, target: &RunTarget, signal: Signal) -> Vec<watch::Receiver<Option<i32>>> {
        let mut st = self.shared.lock();
        let alive = run_processes(&mut st, &self.remote_id, &target.run_id);
        let waiting = alive
            .into_iter()
            .filter_map(|p| (!p.deliver(signal)).then(|| p.ended.subscribe()))
            .collect();
        drop(st);
        self.shared.bump();
        waiting
    }
}

fn run_processes<'a>(st: &'a mut State, remote_id: &str, run_id: &str) -> Vec<&'a mut Proc> {
    st.processes
        .iter_mut()
        .filter(|p| {
            p.record.remote_id == remote_id
                && p.record.spec.run_id == run_id
                && p.record.exit.is_none()
        })
        .collect()
}

pub(super) fn signal_name(signal: Signal) -> &'static str {
    match signal {
        Signal::Term => "TERM",
        Signal::Kill => "KILL",
    }
}

/// The files and directories of a gzipped tar, by path relative to where it is laid,
/// refusing what a provider must refuse (absolute paths, `..`, devices and the like).
fn read_archive(bytes: &[u8], codec: Codec) -> Result<(BTreeMap<String, Node>, BTreeSet<String>)> {
    let bad = |e: std::io::Error| Error::Sync(format!("reading the sync archive: {e}"));
    let input: Box<dyn Read + '_> = match codec {
        Codec::Gzip => Box::new(flate2::read::GzDecoder::new(bytes)),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(bytes).map_err(bad)?),
        Codec::Stored => Box::new(bytes),
    };
    let mut archive = tar::Archive::new(input);
    let (mut files, mut dirs) = (BTreeMap::new(), BTreeSet::new());
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let path = path.trim_end_matches('/').to_string();
        if !is_safe_relative(&path) {
            return Err(Error::Sync(format!("refusing archive entry {path:?}")));
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            dirs.insert(path);
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(bad)?
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.insert(path, Node::Symlink { target });
        } else if kind.is_file() {
            let mode = entry.header().mode().map_err(bad)?;
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(bad)?;
            let mtime = crate::sync::entry_mtime_ns(&mut entry).unwrap_or(0);
            files.insert(path, Node::File { data, mode, mtime });
        } else {
            return Err(Error::Sync(format!(
                "refusing archive entry {path:?}: unsupported type"
            )));
        }
    }
    Ok((files, dirs))
}

fn op_path(op: &SyncOp) -> &str {
    match op {
        SyncOp::Clear(p) | SyncOp::EnsureDir(p) | SyncOp::ClearIfDir(p) | SyncOp::Delete(p) => p,
    }
}
