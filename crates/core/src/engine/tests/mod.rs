//! The engine's promises, pinned against [`crate::testing::MemoryProvider`]: every path of a
//! run releases (or keeps, by policy) its box, cancels stop the command, failed creates and
//! deletes are cleaned up or reported, warm syncs send only what changed, and the lease
//! commands pick, refuse and report as documented.
//!
//! Tests synchronise on events (output, a primitive being reached), never on sleeps.

mod cancel;
mod cleanup;
mod command;
mod create;
mod keep;
mod leases;
mod outputs;
mod release;
mod shard;
mod sync;
mod workspaces;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::claims::Claim;
use crate::command::RemoteCommand;
use crate::conformance::CancelOnOutput;
use crate::engine::{
    BoxStatus, CleanupAction, Engine, KeepPolicy, RunOutcome, RunRequest, SyncSource, WarmupRequest,
};
use crate::error::{Error, Result};
use crate::events::CapturedOutput;
use crate::sync::{SyncManifest, SyncOptions};
use crate::testing::{MemoryProvider, Op, RecordingReporter, MEMORY};

/// SIGTERM-to-SIGKILL grace in these tests: short, since nothing really runs.
const GRACE: Duration = Duration::from_millis(50);

/// An engine over a memory provider, a local tree to sync, and what the engine reported.
struct Bench {
    fake: MemoryProvider,
    engine: Engine,
    reporter: RecordingReporter,
    state: tempfile::TempDir,
    repo: tempfile::TempDir,
}

impl Bench {
    /// A tree of `a.txt`, `run.sh` (0755) and `src/lib.rs`.
    fn new() -> Self {
        let state = tempfile::tempdir().unwrap();
        let repo = tempfile::tempdir().unwrap();
        let fake = MemoryProvider::new();
        let engine = fake.engine(state.path()).with_cancel_grace(GRACE);
        let b = Self {
            fake,
            engine,
            reporter: RecordingReporter::new(),
            state,
            repo,
        };
        b.write("a.txt", "alpha\n");
        b.write("src/lib.rs", "pub fn f() {}\n");
        b.write("run.sh", "#!/bin/sh\n");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            b.repo.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        b
    }

    fn write(&self, rel: &str, content: &str) {
        let path = self.repo.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// The exact mtime of a file of the local tree, as an archive carries it.
    fn mtime_of(&self, rel: &str) -> i128 {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(self.repo.path().join(rel)).unwrap();
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
    }

    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.repo.path().join(rel)).unwrap();
    }

    fn source(&self) -> SyncSource {
        SyncSource {
            root: self.repo.path().to_path_buf(),
            manifest: Some(std::sync::Arc::new(
                SyncManifest::build(self.repo.path(), &SyncOptions::default()).unwrap(),
            )),
            options: SyncOptions::default(),
            delete: true,
        }
    }

    /// A one-shot run of `script` (shell source, so the box sees exactly `script`) that
    /// syncs the tree.
    fn request(&self, script: &str) -> RunRequest {
        RunRequest {
            id: None,
            command: RemoteCommand::new(vec![script.to_string()], true),
            sync: Some(self.source()),
            full_resync: false,
            checksum: false,
            keep: KeepPolicy::Never,
            env: BTreeMap::new(),
            ttl: Duration::from_secs(600),
            slug: None,
            repo_root: Some(self.repo.path().to_path_buf()),
            from_snapshot: None,
            cancel: CancellationToken::new(),
            extras: Default::default(),
        }
    }

    /// `request(script)` on the lease `id`.
    fn request_on(&self, id: &str, script: &str) -> RunRequest {
        RunRequest {
            id: Some(id.to_string()),
            ..self.request(script)
        }
    }

    async fn run(&self, req: &RunRequest) -> (Result<RunOutcome>, CapturedOutput) {
        let mut out = CapturedOutput::default();
        let result = self.engine.run(req, &mut out, &self.reporter).await;
        (result, out)
    }

    /// Runs `req`, cancelling it when its command first prints; returns the run's error.
    async fn run_cancelled_on_output(&self, req: &RunRequest) -> Error {
        let mut sink = CancelOnOutput {
            inner: CapturedOutput::default(),
            cancel: req.cancel.clone(),
        };
        let result = self.engine.run(req, &mut sink, &self.reporter).await;
        assert!(req.cancel.is_cancelled(), "the command never printed");
        result.expect_err("a cancelled run fails")
    }

    /// Runs `req`, cancelling it as soon as the provider is asked to `op`.
    async fn run_cancelled_at(&self, req: &RunRequest, op: Op) -> Error {
        let cancel_there = async {
            self.fake.reached(op).await;
            req.cancel.cancel();
        };
        let ((result, _), ()) = tokio::join!(self.run(req), cancel_there);
        result.expect_err("a cancelled run fails")
    }

    async fn warmup(&self) -> BoxStatus {
        let req = WarmupRequest {
            slug: None,
            ttl: Duration::from_secs(600),
            repo_root: Some(self.repo.path().to_path_buf()),
            from_snapshot: None,
            idle_timeout: None,
        };
        self.engine.warmup(&req, &self.reporter).await.unwrap()
    }

    fn claims(&self) -> Vec<Claim> {
        self.engine.claims().list().unwrap().0
    }

    fn claim(&self, lease_id: &str) -> Option<Claim> {
        self.engine.claims().get(lease_id).unwrap()
    }

    /// Lease ids with a sync-state record.
    fn sync_states(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.state.path().join("sync")) else {
            return Vec::new();
        };
        dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The lease of the first box the engine asked for.
    fn created_lease(&self) -> String {
        let calls = self.fake.calls();
        let create = calls.iter().find_map(|c| c.strip_prefix("create "));
        create.expect("a create call").to_string()
    }

    /// No box, no claim and no sync state is left.
    fn assert_nothing_left(&self) {
        assert!(self.fake.boxes().is_empty(), "{:?}", self.fake.boxes());
        assert!(self.claims().is_empty(), "{:?}", self.claims());
        assert!(self.sync_states().is_empty(), "{:?}", self.sync_states());
    }

    fn workdir(&self, lease_id: &str) -> String {
        format!("/crabbox/{lease_id}")
    }
}

/// `calls` as owned strings, for comparing with [`MemoryProvider::calls`].
fn calls(calls: &[&str]) -> Vec<String> {
    calls.iter().map(|c| c.to_string()).collect()
}

fn stop_hint(lease_id: &str) -> crate::hint::Hint {
    crate::hint::Hint::Stop {
        provider: MEMORY.into(),
        lease_id: lease_id.into(),
    }
}
