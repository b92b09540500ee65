//! The local provider: a box is a directory `<state dir>/boxes/<lease>/` on this machine.
//!
//! It needs no account and no setup, which makes it the default provider and the reference
//! implementation of the box primitives. It behaves like a remote box where that matters:
//! the command sees only the environment crabbox gives it plus what a login has (`PATH`,
//! `HOME`, `USER`, `LANG`, `TERM`), and runs in its own process group so a cancel reaches
//! everything it started.

mod exec;
mod pty;
mod snapshots;
mod tree;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use crabbox_core::events::Reporter;
use crabbox_core::provider::{
    Applied, ApplySync, BoxRef, BoxSession, Capabilities, ChunkFeed, CreateFailure, Created,
    ExecSpec, ExecStream, NewBox, Provider, ProviderContext, RemoteBox, RunTarget, Signal,
    SnapshotInfo,
};
use crabbox_core::sync::{Codec, RemoteTree};
use crabbox_core::{Error, Result};

const PROVIDER: &str = "local";

/// Boxes as directories under `<state dir>/boxes`.
pub struct LocalProvider {
    boxes: PathBuf,
    snapshots: snapshots::Snapshots,
    caller_env: Arc<BTreeMap<String, String>>,
}

impl LocalProvider {
    pub fn new(ctx: &ProviderContext) -> Self {
        Self {
            boxes: ctx.state_dir.join("boxes"),
            snapshots: snapshots::Snapshots::new(ctx.state_dir.join("snapshots")),
            caller_env: Arc::new(ctx.caller_env.clone()),
        }
    }

    fn box_dir(&self, lease_id: &str) -> PathBuf {
        self.boxes.join(lease_id)
    }

    fn session(&self) -> LocalSession {
        LocalSession {
            caller_env: self.caller_env.clone(),
            groups: Arc::default(),
        }
    }

    fn remote(&self, lease_id: &str) -> Option<RemoteBox> {
        let dir = self.box_dir(lease_id);
        let meta = std::fs::metadata(&dir).ok().filter(|m| m.is_dir())?;
        let created_at = meta.modified().ok().and_then(|t| {
            time::OffsetDateTime::from(t)
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
        Some(RemoteBox {
            remote_id: lease_id.to_string(),
            lease_id: Some(lease_id.to_string()),
            slug: None,
            state: "ready".into(),
            running: true,
            workdir: Some(dir.to_string_lossy().into_owned()),
            created_at,
            expires_at: None,
            details: Default::default(),
        })
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            remote_kill: true,
            warm_reuse: true,
            snapshot: true,
            fork: true,
            pty: true,
            ..Capabilities::default()
        }
    }

    fn endpoint(&self) -> String {
        PROVIDER.to_string()
    }

    fn workdir(&self, lease_id: &str) -> Result<String> {
        Ok(self.box_dir(lease_id).to_string_lossy().into_owned())
    }

    async fn create(
        &self,
        new: &NewBox<'_>,
        _reporter: &dyn Reporter,
    ) -> std::result::Result<Created, CreateFailure> {
        let dir = self.box_dir(new.lease_id);
        match new.from_snapshot {
            Some(snapshot) => {
                std::fs::create_dir_all(&self.boxes)
                    .map_err(Error::io("creating boxes directory", &self.boxes))?;
                let from = self.snapshots.find(snapshot)?;
                snapshots::Snapshots::restore(&from, &dir)?;
            }
            None => {
                std::fs::create_dir_all(&dir).map_err(Error::io("creating box directory", &dir))?
            }
        }
        Ok(Created {
            remote_id: new.lease_id.to_string(),
            labels: BTreeMap::new(),
            session: Box::new(self.session()),
        })
    }

    async fn delete_lease_boxes(&self, lease_id: &str, _settle: bool) -> Result<Vec<String>> {
        Ok(if self.delete_dir(lease_id)? {
            vec![lease_id.to_string()]
        } else {
            Vec::new()
        })
    }

    async fn inspect(&self, target: &BoxRef) -> Result<Option<RemoteBox>> {
        Ok(self.remote(&target.remote_id))
    }

    async fn find_unclaimed(&self, _id: &str, _by_tags: bool) -> Result<Option<RemoteBox>> {
        // A local box without a claim has nothing to prove it is crabbox's but its place.
        Ok(None)
    }

    async fn open(
        &self,
        target: &BoxRef,
        _ttl: std::time::Duration,
    ) -> Result<Box<dyn BoxSession>> {
        let dir = self.box_dir(&target.remote_id);
        if !dir.is_dir() {
            return Err(Error::NotFound(format!(
                "local box {} ({}) has no directory {} any more",
                target.lease_id,
                target.slug,
                dir.display()
            )));
        }
        Ok(Box::new(self.session()))
    }

    async fn delete(&self, target: &BoxRef) -> Result<bool> {
        self.delete_dir(&target.remote_id)
    }

    async fn snapshot(&self, target: &BoxRef, name: Option<&str>) -> Result<SnapshotInfo> {
        let dir = self.existing_dir(target)?;
        self.snapshots.take(&dir, name)
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        self.snapshots.list()
    }

    async fn delete_snapshot(&self, id: &str) -> Result<bool> {
        self.snapshots.delete(id)
    }

    async fn fork(
        &self,
        source: &BoxRef,
        forks: &[NewBox<'_>],
    ) -> Result<Vec<std::result::Result<Created, Error>>> {
        let dir = self.existing_dir(source)?;
        let record = PathBuf::from(crabbox_core::provider::record_path(&dir.to_string_lossy()));
        Ok(forks
            .iter()
            .map(|f| {
                let to = self.box_dir(f.lease_id);
                snapshots::copy(&dir, &to)?;
                if record.exists() {
                    snapshots::copy(
                        &record,
                        Path::new(&crabbox_core::provider::record_path(&to.to_string_lossy())),
                    )?;
                }
                Ok(Created {
                    remote_id: f.lease_id.to_string(),
                    labels: BTreeMap::new(),
                    session: Box::new(self.session()) as Box<dyn BoxSession>,
                })
            })
            .collect())
    }

    async fn list(&self) -> Result<Vec<RemoteBox>> {
        let entries = match std::fs::read_dir(&self.boxes) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("listing boxes in", &self.boxes)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if crabbox_core::lease::is_lease_id(&name) {
                out.extend(self.remote(&name));
            }
        }
        Ok(out)
    }
}

impl LocalProvider {
    /// The directory of `target`'s box, which must exist.
    fn existing_dir(&self, target: &BoxRef) -> Result<PathBuf> {
        let dir = self.box_dir(&target.remote_id);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(Error::NotFound(format!(
                "local box {} ({}) has no directory {} any more",
                target.lease_id,
                target.slug,
                dir.display()
            )))
        }
    }

    /// Removes a box directory; `false` when there was none.
    fn delete_dir(&self, lease_id: &str) -> Result<bool> {
        let dir = self.box_dir(lease_id);
        let _ = std::fs::remove_file(crabbox_core::provider::record_path(&dir.to_string_lossy()));
        // Detached runs go with their box, as they would with a sandbox: main's and each
        // named workspace's.
        let main = dir.to_string_lossy().into_owned();
        let mut workdirs = vec![main.clone()];
        if let Ok(entries) = std::fs::read_dir(crabbox_core::workspace::workspaces_dir(&main)) {
            workdirs.extend(
                entries
                    .flatten()
                    .filter(|e| {
                        e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.')
                    })
                    .map(|e| e.path().to_string_lossy().into_owned()),
            );
        }
        for workdir in &workdirs {
            let runs = PathBuf::from(crabbox_core::engine::detach::runs_dir(workdir));
            stop_detached_runs(&runs);
            let _ = std::fs::remove_dir_all(&runs);
        }
        // Its named workspaces (and their records and detached runs' files) go with it.
        let _ = std::fs::remove_dir_all(crabbox_core::workspace::workspaces_dir(
            &dir.to_string_lossy(),
        ));
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("removing box directory", dir)(e)),
        }
    }
}

/// Kills the detached runs recorded under `runs` that still run (their session leader, found
/// by its run id in its environment: a recycled pid is someone else's).
fn stop_detached_runs(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    for e in entries.flatten() {
        let pid = std::fs::read_to_string(e.path().join("pid")).ok();
        let Some(pid) = pid.and_then(|p| p.trim().parse::<i32>().ok()) else {
            continue;
        };
        let mine = format!(
            "{}={}",
            crabbox_core::provider::RUN_ID_VAR,
            e.file_name().to_string_lossy()
        );
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if pid > 1 && environ.split(|b| *b == 0).any(|v| v == mine.as_bytes()) {
            exec::signal_group(pid, Signal::Kill);
        }
    }
}

/// Chunks unpacked side by side.
const UNPACKERS: usize = 2;

async fn join_unpack(task: tokio::task::JoinHandle<Result<()>>) -> Result<()> {
    task.await
        .map_err(|e| Error::Sync(format!("sync task failed: {e}")))?
}

/// Commands and files of one local box.
struct LocalSession {
    caller_env: Arc<BTreeMap<String, String>>,
    /// Process group of each started run, by run id.
    groups: Arc<Mutex<BTreeMap<String, i32>>>,
}

#[async_trait]
impl BoxSession for LocalSession {
    async fn exists(&self, path: &str) -> Result<bool> {
        Ok(Path::new(path).exists())
    }

    async fn make_dir(&self, path: &str) -> Result<()> {
        std::fs::create_dir_all(path).map_err(Error::io("creating", path))
    }

    async fn scan(&self, workdir: &str, checksum: bool) -> Result<RemoteTree> {
        let workdir = PathBuf::from(workdir);
        tokio::task::spawn_blocking(move || tree::scan(&workdir, checksum))
            .await
            .map_err(|e| Error::Sync(format!("scanning the box: {e}")))?
    }

    async fn codecs(&self) -> Vec<Codec> {
        vec![Codec::Zstd, Codec::Gzip]
    }

    async fn apply_sync(
        &self,
        req: &ApplySync<'_>,
        mut chunks: ChunkFeed,
        _reporter: &dyn Reporter,
    ) -> Result<Applied> {
        // A local box's tree has no watcher to vouch for it: a sync planned for a named tree
        // is never applied (the engine then reads the tree).
        if req.if_unchanged_since.is_some() {
            return Ok(Applied::TreeMoved);
        }
        let workdir = PathBuf::from(req.workdir);
        let mut ops = Some(req.ops.to_vec());
        let mut unpacking: Vec<tokio::task::JoinHandle<Result<()>>> = Vec::new();
        // Every blocking task is awaited, even on failure or cancel, so nothing writes into
        // the box after this returns (the caller may be about to delete it).
        let fed = loop {
            let next = tokio::select! {
                _ = req.cancel.cancelled() => break Err(Error::Interrupted),
                c = chunks.recv() => c,
            };
            let chunk = match next {
                None => break Ok(()),
                Some(Err(e)) => break Err(e),
                Some(Ok(c)) => c,
            };
            if let Some(ops) = ops.take() {
                // The ops come first: nothing is unpacked before the way is safe.
                let wd = workdir.clone();
                let made = tokio::task::spawn_blocking(move || tree::prepare(&wd, &ops)).await;
                if let Err(e) = made.map_err(|e| Error::Sync(format!("sync task failed: {e}")))? {
                    break Err(e);
                }
            }
            if unpacking.len() >= UNPACKERS {
                let first = unpacking.remove(0);
                if let Err(e) = join_unpack(first).await {
                    break Err(e);
                }
            }
            let wd = workdir.clone();
            unpacking.push(tokio::task::spawn_blocking(move || {
                tree::unpack(&wd, &chunk.file, chunk.codec)
            }));
        };
        let mut result = fed;
        for task in unpacking {
            let r = join_unpack(task).await;
            if result.is_ok() {
                result = r;
            }
        }
        result?;
        let wd = workdir.clone();
        let record = req.record.map(<[u8]>::to_vec);
        tokio::task::spawn_blocking(move || tree::finish(&wd, record.as_deref()))
            .await
            .map_err(|e| Error::Sync(format!("sync task failed: {e}")))??;
        Ok(Applied::Done(None))
    }

    async fn read_file(
        &self,
        path: &str,
        into: &mut (dyn tokio::io::AsyncWrite + Send + Unpin),
    ) -> Result<u64> {
        let mut f = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!("{path} is not on the local box")))
            }
            Err(e) => return Err(Error::io("opening", path)(e)),
        };
        tokio::io::copy(&mut f, into)
            .await
            .map_err(Error::io("copying", path))
    }

    async fn write_file(&self, path: &str, body: &[u8]) -> Result<()> {
        if let Some(parent) = Path::new(path).parent() {
            std::fs::create_dir_all(parent).map_err(Error::io("creating", parent))?;
        }
        std::fs::write(path, body).map_err(Error::io("writing", path))
    }

    async fn start_pty(
        &self,
        spec: &crabbox_core::provider::PtySpec,
    ) -> Result<crabbox_core::provider::PtyHandle> {
        pty::start(spec, &self.caller_env)
    }

    async fn start(&self, spec: &ExecSpec) -> Result<Box<dyn ExecStream>> {
        let stream = exec::LocalStream::spawn(spec, &self.caller_env)?;
        self.groups
            .lock()
            .expect("groups lock")
            .insert(spec.run_id.clone(), stream.pgid());
        Ok(Box::new(stream))
    }

    async fn signal(&self, target: &RunTarget, signal: Signal) -> Result<()> {
        if let Some(pid) = target.pid {
            exec::signal_group(pid as i32, signal);
        }
        Ok(())
    }

    async fn stop_run(&self, target: &RunTarget, grace: std::time::Duration) {
        let pgid = self
            .groups
            .lock()
            .expect("groups lock")
            .get(&target.run_id)
            .copied();
        if let Some(pgid) = pgid {
            exec::stop_group(pgid, grace).await;
        }
    }
}

/// The registry entry of the local provider.
pub const ENTRY: crabbox_core::registry::ProviderEntry = crabbox_core::registry::ProviderEntry {
    name: PROVIDER,
    section: crabbox_core::config::ConfigSection {
        name: PROVIDER,
        settings: &[],
        defaults_yaml: "{}",
    },
    build: |_cfg, ctx| Ok(Box::new(LocalProvider::new(ctx))),
};
