//! What front ends ask of the engine and what they get back: plain, serialisable data.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::command::RemoteCommand;
use crate::sync::{SyncManifest, SyncOptions};

/// When to keep a box that `run` created for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepPolicy {
    /// Release the box when the run ends, whatever happened (the default).
    #[default]
    Never,
    /// Keep it (`--keep`).
    Always,
    /// Keep it only if the command failed or the run broke (`--keep-on-failure`,
    /// `--stop-after success`).
    OnFailure,
    /// Keep it only if the command succeeded (`--stop-after failure`).
    OnSuccess,
}

impl KeepPolicy {
    pub fn keeps(self, success: bool) -> bool {
        match self {
            KeepPolicy::Never => false,
            KeepPolicy::Always => true,
            KeepPolicy::OnFailure => !success,
            KeepPolicy::OnSuccess => success,
        }
    }

    /// `--stop-after success|failure|always|never`: when a box `run` made is released.
    pub fn from_stop_after(v: &str) -> Option<Self> {
        Some(match v {
            "always" => KeepPolicy::Never,
            "never" => KeepPolicy::Always,
            "success" => KeepPolicy::OnFailure,
            "failure" => KeepPolicy::OnSuccess,
            _ => return None,
        })
    }
}

/// What a run does once the tree is synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunMode {
    /// Run the command and stream its output (the default).
    #[default]
    Attached,
    /// Sync and stop there (`--sync-only`): the box is ready for later runs.
    SyncOnly,
    /// Start the command in the background on the box and return its run id (`--detach`);
    /// its output goes to a log on the box.
    Detached,
}

/// A local script to run on the box instead of a command (`--script`, `--script-stdin`).
#[derive(Debug, Clone)]
pub struct Script {
    /// Its name, for messages and the file on the box.
    pub name: String,
    pub body: Vec<u8>,
    /// Arguments after `--`.
    pub args: Vec<String>,
}

/// `--download remote=local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// Relative to the workdir unless absolute.
    pub remote: String,
    pub local: PathBuf,
}

/// Where a run's outputs go.
#[derive(Debug, Clone, Default)]
pub struct RunExtras {
    pub mode: RunMode,
    pub script: Option<Script>,
    /// `--capture-stdout FILE`.
    pub capture_stdout: Option<PathBuf>,
    /// `--capture-stderr FILE`.
    pub capture_stderr: Option<PathBuf>,
    /// `--capture-on-fail`: keep the capture files only when the command failed.
    pub capture_on_fail: bool,
    pub downloads: Vec<Download>,
    /// `--artifact-glob`: workdir-relative globs (`**` crosses directories).
    pub artifact_globs: Vec<String>,
    /// `--artifact-dir`; `None`: `<repo>/.crabbox/artifacts/<lease>/`.
    pub artifact_dir: Option<PathBuf>,
    /// `--require-artifact`: workdir-relative paths that must exist after the command.
    pub require: Vec<String>,
    /// `--junit`: globs of JUnit XML reports, fetched with the artifacts and summarised.
    pub junit: Vec<String>,
    /// `--lease-output FILE`: the lease handle as JSON, written once the box is acquired.
    pub lease_output: Option<PathBuf>,
    /// `--timeout`: at the deadline the command's whole process tree is stopped and the run
    /// exits 124.
    pub timeout: Option<Duration>,
    /// `--workspace NAME`: the synced tree on the box to use (`None`: `main`, the workdir);
    /// see [`crate::workspace`].
    pub workspace: Option<String>,
}

impl RunExtras {
    /// Anything to fetch from the box after the command.
    pub fn fetches(&self) -> bool {
        !self.downloads.is_empty()
            || !self.artifact_globs.is_empty()
            || !self.require.is_empty()
            || !self.junit.is_empty()
    }
}

/// The local tree to put on the box: the repository root and the files chosen from it.
#[derive(Debug, Clone)]
pub struct SyncSource {
    pub root: PathBuf,
    /// The files, when already chosen; `None` lets the engine choose them with `options`
    /// while it reaches a warm box (a new box is only made once they are chosen, so a tree
    /// that cannot be synced costs nothing remote).
    pub manifest: Option<std::sync::Arc<SyncManifest>>,
    pub options: SyncOptions,
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
    /// Repository the lease is for (recorded in the claim and the box's tags).
    pub repo_root: Option<PathBuf>,
    /// Start the box from this snapshot (id or name).
    pub from_snapshot: Option<String>,
    /// Pause the box after this long without a run instead of letting it die; a run wakes
    /// it and renews the timeout (`idleTimeout`; providers with `pause` only).
    pub idle_timeout: Option<Duration>,
}

/// Run one command, on a new box or on the warm box named by `id`.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// `--id`: lease id, slug, or a provider-specific id. `None` creates a fresh box.
    pub id: Option<String>,
    pub command: RemoteCommand,
    /// `None` with `--no-sync`.
    pub sync: Option<SyncSource>,
    /// `--full-resync`: send the whole tree, whatever the box holds.
    pub full_resync: bool,
    /// `--checksum`: compare files by content hash instead of size and mtime.
    pub checksum: bool,
    pub keep: KeepPolicy,
    /// Allow-listed environment to give the command (never put on its command line).
    pub env: BTreeMap<String, String>,
    pub ttl: Duration,
    pub slug: Option<String>,
    pub repo_root: Option<PathBuf>,
    /// A new box starts from this snapshot (id or name).
    pub from_snapshot: Option<String>,
    /// Fired on Ctrl-C / SIGTERM: the engine stops the remote command, cleans up, and
    /// returns `Error::Interrupted`.
    pub cancel: CancellationToken,
    /// Scripts, sync-only and detached runs, captured output, artifacts.
    pub extras: RunExtras,
}

/// How a run went.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunOutcome {
    pub provider: String,
    pub lease_id: String,
    pub slug: String,
    /// The remote command's exit code.
    pub exit_code: i32,
    /// The box is still there after the run (warm box, `--keep`, kept on failure, or a
    /// release that failed).
    pub kept: bool,
    /// The box this run made was deleted when it ended.
    pub released: bool,
    /// Why the box this run made, which should have been deleted, could not be: it is still
    /// running (and costing). The front end must not report success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_error: Option<String>,
    /// The box was created by this run (not a `--id` reuse).
    pub created: bool,
    pub timing: Timing,
    /// What sync did.
    pub sync: Option<SyncReport>,
    /// What came home from the box after the command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<crate::engine::outputs::ArtifactReport>,
    /// The JUnit reports' summary (`--junit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub junit: Option<crate::engine::junit::JunitSummary>,
    /// A detached run's id (`--detach`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The run stopped after the sync (`--sync-only`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sync_only: bool,
    /// `--timeout` passed and the command was stopped (exit code 124).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
}

impl RunOutcome {
    /// The process exit code a front end reports: the command's, except that a command that
    /// succeeded on a box that could not be released is a failure (1): a paid box is left
    /// running.
    pub fn exit_code(&self) -> i32 {
        if self.exit_code != 0 {
            self.exit_code
        } else if self.release_error.is_some() {
            crate::error::exit::TRANSPORT
        } else if let Some(a) = &self.artifacts {
            if !a.missing_required.is_empty() {
                crate::error::exit::SYNC
            } else if a.error.is_some() {
                crate::error::exit::TRANSPORT
            } else {
                0
            }
        } else {
            0
        }
    }

    /// The outcome as one flat record of phase timings (`run --timing-json`).
    pub fn timing_report(&self) -> TimingReport {
        TimingReport {
            provider: self.provider.clone(),
            lease_id: self.lease_id.clone(),
            slug: self.slug.clone(),
            exit_code: self.exit_code,
            created: self.created,
            kept: self.kept,
            released: self.released,
            acquire_ms: self.timing.acquire_ms,
            sync_ms: self.timing.sync_ms,
            command_ms: self.timing.command_ms,
            release_ms: self.timing.release_ms,
            total_ms: self.timing.total_ms(),
            sync: self.sync.clone(),
        }
    }
}

/// A run's phase timings with who and what, as one flat JSON object.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimingReport {
    pub provider: String,
    pub lease_id: String,
    pub slug: String,
    pub exit_code: i32,
    pub created: bool,
    pub kept: bool,
    pub released: bool,
    pub acquire_ms: u64,
    pub sync_ms: u64,
    pub command_ms: u64,
    pub release_ms: u64,
    pub total_ms: u64,
    pub sync: Option<SyncReport>,
}

/// Wall-clock phases of a run, for `--timing-json`.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timing {
    pub acquire_ms: u64,
    pub sync_ms: u64,
    pub command_ms: u64,
    pub release_ms: u64,
}

impl Timing {
    pub fn total_ms(&self) -> u64 {
        self.acquire_ms + self.sync_ms + self.command_ms + self.release_ms
    }
}

/// What a sync sent.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    /// Files in the manifest.
    pub files: u64,
    /// Bytes of the whole tree.
    pub bytes: u64,
    /// Files sent this time (a warm sync only sends what differs on the box).
    pub sent_files: u64,
    pub deleted_files: u64,
    /// Bytes of the files sent (before compression).
    pub sent_bytes: u64,
    /// Bytes that went over the wire (the compressed archive).
    pub wire_bytes: u64,
    /// Paths removed on the box because something of another kind stood there.
    pub cleared: u64,
    /// Reading the box's tree, ms (0 for a new box).
    pub scan_ms: u64,
    /// Comparing and packing, ms.
    pub pack_ms: u64,
    /// Uploading and applying on the box, ms.
    pub apply_ms: u64,
    /// Waiting for another sync of the same lease, ms.
    pub wait_ms: u64,
}

/// A box as `status` and `list` show it.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
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
    /// The provider's own settings of the box as it reports them ([`RemoteBox::details`]),
    /// one JSON key each (E2B: `network`).
    ///
    /// [`RemoteBox::details`]: crate::provider::RemoteBox::details
    #[serde(flatten)]
    pub details: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `status` options.
#[derive(Debug, Clone)]
pub struct StatusRequest {
    /// `None`: the one lease this machine holds for the provider.
    pub id: Option<String>,
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
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StopOutcome {
    pub lease_id: String,
    pub slug: String,
    /// The box was already gone; only the claim was dropped.
    pub already_gone: bool,
    /// The lease's box-seconds, as crabbox recorded them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::usage::LeaseUsage>,
}
