//! The `Provider` trait: what every backend (local directories, E2B sandboxes, ...) implements.
//!
//! The CLI and other front ends only ever talk to `&dyn Provider`. A provider owns its leases
//! end to end (creating the box, writing the claim, syncing, running, releasing); core supplies
//! the shared pieces (claims, slugs, the sync manifest and archive, command quoting).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::command::RemoteCommand;
use crate::error::Result;
use crate::sync::SyncManifest;

/// What a provider can do, so a front end can refuse an unsupported flag before doing any work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Accepts `--class` / `--type` (machine sizes). E2B sizes come from the template instead.
    pub machine_class: bool,
    /// Can stop the remote command on Ctrl-C rather than just dropping the stream.
    pub remote_kill: bool,
    /// Keeps build outputs between runs on a warm box.
    pub warm_reuse: bool,
}

/// When to keep a box that `run` created for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepPolicy {
    /// Release the box when the run ends, whatever happened (the default).
    #[default]
    Never,
    /// Keep it (`--keep`).
    Always,
    /// Keep it only if the command failed or the run broke (`--keep-on-failure`).
    OnFailure,
}

impl KeepPolicy {
    pub fn keeps(self, success: bool) -> bool {
        match self {
            KeepPolicy::Never => false,
            KeepPolicy::Always => true,
            KeepPolicy::OnFailure => !success,
        }
    }
}

/// The local tree to put on the box: the repository root and the files chosen from it.
#[derive(Debug, Clone)]
pub struct SyncSource {
    pub root: PathBuf,
    pub manifest: SyncManifest,
    /// `sync.delete`: remove from the box the files crabbox synced before that are gone
    /// locally. Files crabbox never synced are left alone either way.
    pub delete: bool,
}

/// Lease a box to reuse later.
#[derive(Debug, Clone)]
pub struct WarmupRequest {
    /// A slug the user asked for (`--slug`); otherwise one is derived from the lease id.
    pub slug: Option<String>,
    pub ttl: Duration,
    /// Repository the lease is for (recorded in the claim and metadata).
    pub repo_root: Option<PathBuf>,
}

/// Run one command, on a new box or on the warm box named by `id`.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// `--id`: lease id, slug, or a provider-specific id. `None` creates a fresh box.
    pub id: Option<String>,
    pub command: RemoteCommand,
    /// `None` with `--no-sync`.
    pub sync: Option<SyncSource>,
    pub keep: KeepPolicy,
    /// Allow-listed environment to give the command (never put on its command line).
    pub env: BTreeMap<String, String>,
    pub ttl: Duration,
    pub slug: Option<String>,
    pub repo_root: Option<PathBuf>,
    /// Fired on Ctrl-C / SIGTERM: the provider stops the remote command, cleans up, and
    /// returns `Error::Interrupted`.
    pub cancel: CancellationToken,
}

/// Where the command's output goes, chunk by chunk, as it arrives.
pub trait OutputSink: Send {
    fn stdout(&mut self, chunk: &[u8]) -> std::io::Result<()>;
    fn stderr(&mut self, chunk: &[u8]) -> std::io::Result<()>;
}

/// Progress of a long step, for the front end to draw (bar on a TTY, lines otherwise).
pub trait Reporter: Send + Sync {
    /// A one-line status message ("creating sandbox", "synced 120 files").
    fn status(&self, message: &str);
    /// Byte progress of a transfer; `total` when known.
    fn progress(&self, _phase: &str, _done: u64, _total: Option<u64>) {}
    /// The transfer is over.
    fn finish_progress(&self) {}
}

/// A reporter that says nothing (tests, `--json`).
pub struct SilentReporter;

impl Reporter for SilentReporter {
    fn status(&self, _message: &str) {}
}

/// How a run went.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunOutcome {
    pub lease_id: String,
    pub slug: String,
    /// The remote command's exit code.
    pub exit_code: i32,
    /// The box is still there after the run (warm box, `--keep`, or kept on failure).
    pub kept: bool,
    /// The box was created by this run (not a `--id` reuse).
    pub created: bool,
    pub timing: Timing,
    /// What sync did.
    pub sync: Option<SyncReport>,
}

/// Wall-clock phases of a run, for `--timing-json`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timing {
    pub acquire_ms: u64,
    pub sync_ms: u64,
    pub command_ms: u64,
    pub release_ms: u64,
}

/// What a sync sent.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    pub files: u64,
    pub bytes: u64,
    /// Files sent this time (a warm sync only sends what changed).
    pub sent_files: u64,
    pub deleted_files: u64,
}

/// A box as `status` and `list` show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BoxStatus {
    pub lease_id: String,
    pub slug: String,
    pub provider: String,
    /// Provider-specific id (the sandbox id for E2B, the directory for local).
    pub remote_id: String,
    /// `running`, `paused`, `ready`, `gone`...
    pub state: String,
    pub ready: bool,
    pub workdir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// A claim for it exists on this machine.
    pub claimed: bool,
}

/// `status` options.
#[derive(Debug, Clone)]
pub struct StatusRequest {
    pub id: String,
    /// `--wait`: poll until ready, failing with `Error::WaitTimeout` after this long.
    pub wait: Option<Duration>,
}

/// `stop` options.
#[derive(Debug, Clone)]
pub struct StopRequest {
    pub id: String,
    /// `--reclaim`: release a box whose claim was lost or belongs to another checkout, as long
    /// as the provider can prove it is a crabbox box.
    pub reclaim: bool,
}

/// What `stop` did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StopOutcome {
    pub lease_id: String,
    pub slug: String,
    /// The box was already gone; only the claim was dropped.
    pub already_gone: bool,
}

/// A box backend.
#[async_trait]
pub trait Provider: Send + Sync {
    /// `local`, `e2b`...
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// Create a box to reuse, record its claim, and return it.
    async fn warmup(&self, req: &WarmupRequest, reporter: &dyn Reporter) -> Result<BoxStatus>;
    /// Sync (unless `req.sync` is `None`), run the command streaming its output into `out`,
    /// release the box per `req.keep` when the run created it. Returns the remote exit code in
    /// the outcome; transport failures are errors.
    async fn run(
        &self,
        req: &RunRequest,
        out: &mut dyn OutputSink,
        reporter: &dyn Reporter,
    ) -> Result<RunOutcome>;
    async fn status(&self, req: &StatusRequest) -> Result<BoxStatus>;
    async fn stop(&self, req: &StopRequest) -> Result<StopOutcome>;
    async fn list(&self) -> Result<Vec<BoxStatus>>;
}
