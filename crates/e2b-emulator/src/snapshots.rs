//! Snapshots and forks: copies of a sandbox's files that new sandboxes start from.
//!
//! A snapshot is a copy of the sandbox's private `/home`, `/root` and `/tmp`, taken while
//! its processes are frozen (SIGSTOP) and thawed after, so the copy is consistent. Its id
//! is a template id: a create whose `templateID` is the snapshot's id (or one of its names)
//! starts with those files. A fork is the same copy, taken once, started `count` times.
//!
//! Where this is not E2B: E2B snapshots memory too, so a sandbox started from a snapshot
//! or forked carries on the processes that ran; here only files are kept and a new
//! sandbox starts with no process. (A paused sandbox does keep its processes: pausing
//! freezes them in place.)

use crate::error::HttpError;
use crate::isolation::SandboxLayout;
use crate::sandbox::{random_id, Registry, Sandbox};
use crabbox_e2b_wire::control::{
    ApiError, ForkResult, NewSandbox, SnapshotInfo, DEFAULT_FORK_TIMEOUT_SECS, MAX_FORK_COUNT,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// The directories of a sandbox a snapshot keeps.
const KEPT: [&str; 3] = ["home", "root", "tmp"];

#[derive(Debug, Clone)]
struct Snapshot {
    info: SnapshotInfo,
    /// The sandbox it was taken of.
    sandbox_id: String,
    dir: PathBuf,
    taken_at: OffsetDateTime,
}

/// Every snapshot of one emulator; they outlive their sandboxes.
pub struct SnapshotStore {
    dir: PathBuf,
    snapshots: Mutex<BTreeMap<String, Snapshot>>,
}

impl SnapshotStore {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            snapshots: Mutex::new(BTreeMap::new()),
        }
    }

    /// The id and files of the snapshot `id_or_name` names.
    pub fn files_of(&self, id_or_name: &str) -> Option<(String, PathBuf)> {
        let snapshots = self.snapshots.lock().expect("snapshots lock");
        snapshots
            .values()
            .find(|s| {
                s.info.snapshot_id == id_or_name || s.info.names.iter().any(|n| n == id_or_name)
            })
            .map(|s| (s.info.snapshot_id.clone(), s.dir.clone()))
    }

    /// Snapshots, oldest first, of `sandbox_id` and named `name` when given.
    pub fn list(&self, sandbox_id: Option<&str>, name: Option<&str>) -> Vec<SnapshotInfo> {
        let snapshots = self.snapshots.lock().expect("snapshots lock");
        let mut found: Vec<&Snapshot> = snapshots
            .values()
            .filter(|s| sandbox_id.is_none_or(|id| s.sandbox_id == id))
            .filter(|s| name.is_none_or(|n| s.info.names.iter().any(|m| m == n)))
            .collect();
        found.sort_by_key(|s| (s.taken_at, s.info.snapshot_id.clone()));
        found.into_iter().map(|s| s.info.clone()).collect()
    }

    /// Deletes a snapshot and its files; `false` when there is none of that id.
    pub async fn delete(&self, id: &str) -> bool {
        let removed = self.snapshots.lock().expect("snapshots lock").remove(id);
        match removed {
            Some(s) => {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(s.dir)).await;
                true
            }
            None => false,
        }
    }

    fn add(&self, snapshot: Snapshot) {
        self.snapshots
            .lock()
            .expect("snapshots lock")
            .insert(snapshot.info.snapshot_id.clone(), snapshot);
    }

    fn name_taken(&self, name: &str) -> bool {
        self.files_of(name).is_some()
    }
}

/// Runs `cp -a` (owners, modes, times, links kept).
async fn cp(args: &[&Path]) -> std::io::Result<()> {
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .args(args)
        .output()
        .await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "cp -a failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Lays the files under `seed` over a freshly made sandbox layout.
pub async fn restore_files(seed: &Path, layout: &SandboxLayout) -> std::io::Result<()> {
    for dir in KEPT {
        let from = seed.join(dir).join(".");
        cp(&[&from, &layout.root.join(dir)]).await?;
    }
    Ok(())
}

/// Copies the kept directories of `sandbox` into `to`, with its processes frozen meanwhile.
async fn capture_files(sandbox: &Sandbox, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let was_running = sandbox.is_running();
    if was_running {
        sandbox.signal_namespace(libc::SIGSTOP);
    }
    let mut result = Ok(());
    for dir in KEPT {
        result = cp(&[&sandbox.layout.root.join(dir), to]).await;
        if result.is_err() {
            break;
        }
    }
    if was_running && sandbox.is_running() {
        sandbox.signal_namespace(libc::SIGCONT);
    }
    if result.is_err() {
        let _ = std::fs::remove_dir_all(to);
    }
    result
}

impl Registry {
    fn existing(&self, id: &str) -> Result<Arc<Sandbox>, HttpError> {
        self.get(id)
            .ok_or_else(|| HttpError::not_found(format!("sandbox {id} not found")))
    }

    /// Takes a snapshot of sandbox `id`'s files, named `name` when given.
    pub async fn snapshot(
        &self,
        id: &str,
        name: Option<String>,
    ) -> Result<SnapshotInfo, HttpError> {
        let sandbox = self.existing(id)?;
        if let Some(name) = &name {
            if self.snapshots.name_taken(name) {
                return Err(HttpError::conflict(format!(
                    "a snapshot named '{name}' already exists"
                )));
            }
        }
        let snapshot_id = random_id();
        let dir = self.snapshots.dir.join(&snapshot_id);
        capture_files(&sandbox, &dir)
            .await
            .map_err(|e| HttpError::internal(format!("snapshot of sandbox {id} failed: {e}")))?;
        let info = SnapshotInfo {
            snapshot_id,
            names: name.into_iter().collect(),
        };
        self.snapshots.add(Snapshot {
            info: info.clone(),
            sandbox_id: id.to_string(),
            dir,
            taken_at: OffsetDateTime::now_utc(),
        });
        Ok(info)
    }

    /// Starts `count` new sandboxes from one copy of sandbox `id`'s files, each with its
    /// template, metadata and environment; the source runs on, its id and end time kept.
    pub async fn fork(
        &self,
        id: &str,
        timeout: Option<u64>,
        count: Option<u32>,
    ) -> Result<Vec<ForkResult>, HttpError> {
        let count = count.unwrap_or(1);
        if !(1..=MAX_FORK_COUNT).contains(&count) {
            return Err(HttpError::bad_request(format!(
                "count must be between 1 and {MAX_FORK_COUNT}, got {count}"
            )));
        }
        let timeout = timeout.unwrap_or(DEFAULT_FORK_TIMEOUT_SECS);
        self.check_timeout(timeout)?;
        let source = self.existing(id)?;
        let staging = self.snapshots.dir.join(format!("fork-{}", random_id()));
        capture_files(&source, &staging)
            .await
            .map_err(|e| HttpError::internal(format!("fork of sandbox {id} failed: {e}")))?;
        let request = NewSandbox {
            template_id: source.template_id.clone(),
            timeout: Some(timeout),
            metadata: Some(source.metadata.clone()),
            env_vars: Some(source.env_vars.clone()),
            ..NewSandbox::default()
        };
        // A fork keeps its source's egress rules.
        let egress = source.egress();
        let mut results = Vec::new();
        for _ in 0..count {
            results.push(
                match self
                    .create_seeded(request.clone(), Some(staging.clone()))
                    .await
                {
                    Ok(sandbox) => {
                        *sandbox.egress.lock().expect("egress lock") = egress.clone();
                        ForkResult {
                            sandbox: Some(sandbox.body()),
                            error: None,
                        }
                    }
                    Err(e) => ForkResult {
                        sandbox: None,
                        error: Some(ApiError::new(e.status.as_u16(), e.message.clone())),
                    },
                },
            );
        }
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(staging)).await;
        Ok(results)
    }
}
