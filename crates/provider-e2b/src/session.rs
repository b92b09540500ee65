//! [`E2bSession`]: commands and files on one running sandbox, through its envd.

use std::time::Duration;

use async_trait::async_trait;
use crabbox_core::events::Reporter;
use crabbox_core::provider::{
    Applied, ApplySync, BoxSession, ChunkFeed, ExecEvent, ExecSpec, ExecStream, RunTarget, Signal,
};
use crabbox_core::sync::{Codec, RemoteTree};
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::control::SandboxState;
use crabbox_e2b_wire::process::{DataEvent, ProcessConfig, ProcessEvent, StartRequest};

use crate::control::ControlPlane;
use crate::envd::{exit_code_of, gone, Envd, ProcessStream};
use crate::scan_cache::ScanCache;

/// How long the control plane gets to say whether a sandbox whose command stream broke is
/// still running.
const LIVENESS_BUDGET: Duration = Duration::from_secs(15);

/// Bound of writing one small file (a script) to the box.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

/// One sandbox's envd, as the engine uses it.
pub struct E2bSession {
    sandbox_id: String,
    envd: Envd,
    /// Asked whether the sandbox still runs when a command's stream breaks.
    control: ControlPlane,
    /// What the box can unpack, once asked.
    codecs: tokio::sync::Mutex<Vec<Codec>>,
    /// What this machine last read of the box's tree.
    scans: Option<ScanCache>,
    /// Opening it woke the sandbox from a pause.
    resumed: bool,
    /// How long the tree's watcher is given to answer.
    watcher_patience: Duration,
}

impl E2bSession {
    pub fn new(sandbox_id: &str, envd: Envd, control: ControlPlane) -> Self {
        Self {
            sandbox_id: sandbox_id.to_string(),
            envd,
            control,
            codecs: tokio::sync::Mutex::default(),
            scans: None,
            resumed: false,
            watcher_patience: crate::remote_sync::WATCHER_PATIENCE,
        }
    }

    /// Keeps what scans read of the box's tree in `cache`, so an unchanged tree is confirmed
    /// by hash rather than sent again.
    pub fn with_scan_cache(mut self, cache: Option<ScanCache>) -> Self {
        self.scans = cache;
        self
    }

    /// How long the tree's watcher is given to answer before the tree is read whole or a sync
    /// left to the scripts ([`crate::remote_sync::WATCHER_PATIENCE`] unless set).
    pub fn with_watcher_patience(mut self, patience: Duration) -> Self {
        self.watcher_patience = patience;
        self
    }

    /// Marks the session as the one whose opening woke the sandbox.
    pub fn resumed_now(mut self, resumed: bool) -> Self {
        self.resumed = resumed;
        self
    }

    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }
}

#[async_trait]
impl BoxSession for E2bSession {
    fn resumed(&self) -> bool {
        self.resumed
    }

    async fn start_pty(
        &self,
        spec: &crabbox_core::provider::PtySpec,
    ) -> Result<crabbox_core::provider::PtyHandle> {
        crate::pty::start(&self.envd, spec).await
    }

    async fn exists(&self, path: &str) -> Result<bool> {
        self.envd.exists(path).await
    }

    async fn scan(&self, workdir: &str, checksum: bool) -> Result<RemoteTree> {
        let cache = self.scans.as_ref().map(|c| (c, self.sandbox_id.as_str()));
        let patience = self.watcher_patience;
        match crate::remote_sync::scan(&self.envd, workdir, checksum, cache, patience).await {
            Err(Error::Transport(e)) => {
                let broken = Error::Transport(format!(
                    "reading the synced tree on sandbox {} failed: {e}; nothing on the box \
                     was changed, retry later",
                    self.sandbox_id
                ));
                why_broken(&self.control, &self.sandbox_id, Err(broken)).await
            }
            other => other,
        }
    }

    async fn unchanged_since(&self, workdir: &str, state: &str) -> Result<bool> {
        let cache = self.scans.as_ref().map(|c| (c, self.sandbox_id.as_str()));
        let patience = self.watcher_patience;
        Ok(crate::remote_sync::unchanged_since(&self.envd, workdir, state, cache, patience).await)
    }

    async fn make_dir(&self, path: &str) -> Result<()> {
        self.envd.make_dir(path).await
    }

    async fn codecs(&self) -> Vec<Codec> {
        let mut codecs = self.codecs.lock().await;
        if codecs.is_empty() {
            *codecs = crate::remote_sync::probe_codecs(&self.envd).await;
        }
        codecs.clone()
    }

    fn may_name_tree(&self, req: &ApplySync<'_>) -> bool {
        // Named only from a watcher's answer, and only for a sync that lists what it sent.
        req.sent.is_some()
            && self
                .scans
                .as_ref()
                .is_some_and(|c| c.watched(&self.sandbox_id, req.workdir).is_some())
    }

    async fn apply_sync(
        &self,
        req: &ApplySync<'_>,
        chunks: ChunkFeed,
        reporter: &dyn Reporter,
    ) -> Result<Applied> {
        use crate::remote_sync::{self as rs, Applied as By};
        let scans = self.scans.as_ref();
        let sandbox = self.sandbox_id.as_str();
        // Where the tree has a watcher, the scans' lock is held from here and its note read
        // again under it: another run's scan must not make the watcher forget changes between
        // this sync and its question to the watcher.
        let locked = match scans {
            Some(c) if c.watched(sandbox, req.workdir).is_some() => {
                c.lock(sandbox, req.workdir).await
            }
            _ => None,
        };
        let noted = scans
            .filter(|_| locked.is_some())
            .and_then(|c| c.watched(sandbox, req.workdir));
        // Planned for a named tree: the watcher's note still names it (and the watcher, asked
        // as the sync is applied, saw no change since).
        if let Some(state) = req.if_unchanged_since {
            if noted.as_ref().is_none_or(|w| w.state() != state) {
                return Ok(Applied::TreeMoved);
            }
        }
        // The tree is about to change: what its watcher vouched for is void until the commit
        // reports what changed (a sync cut short leaves no note, so the next scan reads all).
        if let Some(c) = scans {
            c.forget_watch(sandbox, req.workdir);
        }
        let watcher = noted.as_ref().map(|w| rs::Watcher {
            id: &w.id,
            // A small sync is applied by the watcher itself (no process on the box), when
            // the tree it leaves may be named.
            may_apply: req.sent.is_some() && rs::watcher_applies(&w.id),
            if_unchanged: req.if_unchanged_since.is_some(),
            patience: self.watcher_patience,
        });
        let applied = match rs::apply(&self.envd, req, chunks, reporter, watcher).await {
            Err(Error::Transport(e)) => {
                let broken = if e.contains("retry later") {
                    Error::Transport(e)
                } else {
                    Error::Transport(format!(
                        "the sync to sandbox {} failed: {e}; the workdir is unchanged, retry \
                         later",
                        self.sandbox_id
                    ))
                };
                return why_broken(&self.control, &self.sandbox_id, Err(broken)).await;
            }
            Err(e) => return Err(e),
            Ok(applied) => applied,
        };
        let answered = match applied {
            // Nothing applied, and the watcher forgot nothing: its note stands.
            By::TreeMoved => {
                if let (Some(c), Some(w)) = (scans, &noted) {
                    c.keep_watch(sandbox, req.workdir, w);
                }
                return Ok(Applied::TreeMoved);
            }
            By::ByWatcher { segment } => Some(segment),
            By::ByScripts => None,
        };
        let Some(c) = scans else {
            return Ok(Applied::Done(None));
        };
        if let Some(record) = req.record {
            c.keep_record(sandbox, req.workdir, record);
        }
        let Some(w) = noted.as_ref() else {
            return Ok(Applied::Done(None));
        };
        let segment = match answered {
            Some(segment) => segment,
            // What the sync changed, read afresh by the watcher (which then forgets it): the
            // next run need not read the tree. A watcher that cannot say (the record changed
            // under the scripts, say) leaves no note, and the next run reads it all.
            None => {
                let ctl = rs::watch_dir(req.workdir);
                rs::watcher_changes(&self.envd, &ctl, &w.id, self.watcher_patience).await
            }
        };
        let mut state = None;
        if let Some(segment) = segment {
            // A watcher that kept count saw the record the box holds now: the one sent (its
            // own storing of it is no loss of count).
            let w = match req.record {
                Some(record) => crate::scan::Watched {
                    record: Some(crate::scan::Part::sha256_of(record)),
                    ..w.clone()
                },
                None => w.clone(),
            };
            let noted = c.extend_patch(sandbox, req.workdir, &w, &segment);
            // The tree is named only when the watcher saw this sync's changes and no one
            // else's (a command still running, another machine).
            let own = req
                .sent
                .is_some_and(|sent| only_the_syncs(&segment, sent, req.ops));
            state = noted.filter(|_| own).map(|n| n.state());
        }
        drop(locked);
        Ok(Applied::Done(state))
    }

    async fn read_file(
        &self,
        path: &str,
        into: &mut (dyn tokio::io::AsyncWrite + Send + Unpin),
    ) -> Result<u64> {
        self.envd.download(path, into).await
    }

    async fn write_file(&self, path: &str, body: &[u8]) -> Result<()> {
        let len = body.len() as u64;
        self.envd
            .upload(path, reqwest::Body::from(body.to_vec()), len, WRITE_TIMEOUT)
            .await
    }

    async fn start(&self, spec: &ExecSpec) -> Result<Box<dyn ExecStream>> {
        let start = StartRequest {
            process: Some(ProcessConfig {
                cmd: "/bin/bash".into(),
                args: vec!["-l".into(), "-c".into(), spec.script.clone()],
                envs: spec.env.clone(),
                cwd: Some(spec.cwd.clone()),
            }),
            pty: None,
            tag: None,
            stdin: Some(false),
        };
        let stream = self.envd.start(&start).await?;
        Ok(Box::new(E2bExecStream {
            stream,
            ended: false,
            sandbox_id: self.sandbox_id.clone(),
            control: self.control.clone(),
        }))
    }

    async fn signal(&self, target: &RunTarget, signal: Signal) -> Result<()> {
        let Some(pid) = target.pid else {
            return Ok(());
        };
        let signal = match signal {
            Signal::Term => crabbox_e2b_wire::process::Signal::Sigterm,
            Signal::Kill => crabbox_e2b_wire::process::Signal::Sigkill,
        };
        self.envd.send_signal(pid, signal).await
    }

    /// envd signals only one pid, so a reaper on the box finds the run's processes by the
    /// run id in their environment (see [`crate::run_tree`]).
    async fn stop_run(&self, target: &RunTarget, grace: Duration) {
        crate::run_tree::reap(&self.envd, &target.run_id, grace).await;
    }
}

/// Every change a watcher saw during a sync is the sync's own: each path it names is a file
/// the sync sent, now holding what was sent, a directory on the way to one, or a path the
/// sync's ops removed or cleared (or a directory emptied on the way to one); and every sent
/// file is among them.
fn only_the_syncs(
    segment: &[u8],
    sent: &[crabbox_core::sync::SyncEntry],
    ops: &[crabbox_core::sync::SyncOp],
) -> bool {
    use crabbox_core::sync::{ancestors, same_mtime, EntryKind, RemoteKind, SyncOp};
    use std::collections::{HashMap, HashSet};
    let Some((changed, now)) = crate::scan::segment_changes(segment) else {
        return false;
    };
    let by_path: HashMap<&str, &crabbox_core::sync::SyncEntry> =
        sent.iter().map(|e| (e.path.as_str(), e)).collect();
    let on_the_way: HashSet<&str> = sent.iter().flat_map(|e| ancestors(&e.path)).collect();
    let op_paths: HashSet<&str> = ops
        .iter()
        .map(|op| match op {
            SyncOp::Clear(p) | SyncOp::EnsureDir(p) | SyncOp::ClearIfDir(p) | SyncOp::Delete(p) => {
                p.as_str()
            }
        })
        .collect();
    let op_ways: HashSet<&str> = op_paths.iter().flat_map(|p| ancestors(p)).collect();
    let changed_set: HashSet<&str> = changed.iter().map(String::as_str).collect();
    let holds = |p: &str, e: &crabbox_core::sync::SyncEntry| {
        now.entries.get(p).is_some_and(|r| match e.kind {
            EntryKind::File => {
                r.kind == RemoteKind::File
                    && r.size == e.size
                    && same_mtime(r.mtime_ns, e.mtime_ns)
                    && r.mode & 0o777 == e.mode & 0o777
            }
            EntryKind::Symlink => r.kind == RemoteKind::Symlink && r.link_target == e.link_target,
        })
    };
    let explained = |p: &str| match by_path.get(p) {
        Some(e) => holds(p, e),
        None => {
            let dir_now = now.entries.get(p).is_none_or(|r| r.kind == RemoteKind::Dir);
            (on_the_way.contains(p) && dir_now)
                || op_paths.contains(p)
                || op_ways.contains(p)
                || ancestors(p).any(|a| op_paths.contains(a))
        }
    };
    changed.iter().all(|p| explained(p))
        && sent.iter().all(|e| changed_set.contains(e.path.as_str()))
}

/// envd's process events as the engine's. A stream that breaks (or ends without the
/// command's end) because the sandbox died says so: the control plane is asked.
struct E2bExecStream {
    stream: ProcessStream,
    ended: bool,
    sandbox_id: String,
    control: ControlPlane,
}

/// `Error::NotFound` when the control plane says the sandbox is gone or no longer running;
/// otherwise `broken` (also when it cannot tell within [`LIVENESS_BUDGET`]).
async fn why_broken<T: Send>(
    control: &ControlPlane,
    sandbox_id: &str,
    broken: Result<T>,
) -> Result<T> {
    match tokio::time::timeout(LIVENESS_BUDGET, control.get(sandbox_id)).await {
        Ok(Ok(None)) => Err(gone(sandbox_id)),
        Ok(Ok(Some(d))) if d.state != SandboxState::Running => Err(gone(sandbox_id)),
        _ => broken,
    }
}

#[async_trait]
impl ExecStream for E2bExecStream {
    async fn next_event(&mut self) -> Result<Option<ExecEvent>> {
        if self.ended {
            return Ok(None);
        }
        loop {
            let event = match self.stream.next_event().await {
                Ok(Some(event)) => event,
                Ok(None) => return why_broken(&self.control, &self.sandbox_id, Ok(None)).await,
                Err(e @ Error::Transport(_)) => {
                    return why_broken(&self.control, &self.sandbox_id, Err(e)).await
                }
                Err(e) => return Err(e),
            };
            return Ok(Some(match event {
                ProcessEvent::Start(s) => ExecEvent::Started { pid: s.pid },
                ProcessEvent::Data(DataEvent::Stdout(b))
                | ProcessEvent::Data(DataEvent::Pty(b)) => ExecEvent::Stdout(b),
                ProcessEvent::Data(DataEvent::Stderr(b)) => ExecEvent::Stderr(b),
                ProcessEvent::End(end) => {
                    self.ended = true;
                    ExecEvent::Exited(exit_code_of(&end))
                }
                ProcessEvent::Keepalive(_) => continue,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::only_the_syncs;
    use crabbox_core::sync::{EntryKind, SyncEntry, SyncOp};

    fn file(path: &str, size: u64) -> SyncEntry {
        SyncEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size,
            mtime_ns: 1_700_000_000_123_456_789,
            link_target: None,
        }
    }

    /// A watcher's segment: the changed paths, then the entries of those there now.
    fn segment(changed: &[&str], now: &[(&str, &str, u64)]) -> Vec<u8> {
        let mut s = format!("C{}\0", changed.len()).into_bytes();
        for p in changed {
            s.extend_from_slice(format!("{p}\0").as_bytes());
        }
        s.extend_from_slice(format!("E{}\0", now.len()).as_bytes());
        for (kind, path, size) in now {
            s.extend_from_slice(
                format!("{kind}\0644\0{size}\01700000000.123456789\0./{path}\0\0").as_bytes(),
            );
        }
        s
    }

    #[test]
    fn a_tree_is_named_after_a_sync_only_when_every_change_seen_is_the_syncs() {
        let sent = [file("src/b.txt", 5)];
        let ops = [SyncOp::Delete("gone/old.txt".into())];
        let own = segment(
            &["src/b.txt", "gone/old.txt", "gone"],
            &[("f", "src/b.txt", 5)],
        );
        assert!(only_the_syncs(&own, &sent, &ops));
        // Another writer's file changed meanwhile.
        let other = segment(
            &["src/b.txt", "a.txt"],
            &[("f", "src/b.txt", 5), ("f", "a.txt", 1)],
        );
        assert!(!only_the_syncs(&other, &sent, &ops));
        // The sent file was rewritten after the sync (another size now).
        let rewritten = segment(&["src/b.txt"], &[("f", "src/b.txt", 6)]);
        assert!(!only_the_syncs(&rewritten, &sent, &ops));
        // A sent file the watcher never saw change cannot be vouched for.
        assert!(!only_the_syncs(&segment(&[], &[]), &sent, &ops));
        // A directory made on the way to a sent file is the sync's; a file there is not.
        let way = segment(
            &["src", "src/b.txt"],
            &[("d", "src", 0), ("f", "src/b.txt", 5)],
        );
        assert!(only_the_syncs(&way, &sent, &[]));
        let not_a_dir = segment(
            &["src", "src/b.txt"],
            &[("f", "src", 0), ("f", "src/b.txt", 5)],
        );
        assert!(!only_the_syncs(&not_a_dir, &sent, &[]));
        assert!(!only_the_syncs(b"damaged", &sent, &[]));
    }
}
