//! The box primitives every backend (local directories, E2B sandboxes, ...) implements.
//!
//! A provider knows how to make, find, inspect and delete its boxes, how to put an archive
//! of files on one, and how to start and signal processes there. It knows nothing of leases'
//! lifecycles: claims, sync planning, keep policies, cancellation and timings live once, in
//! [`crate::engine`], which drives these primitives for every provider alike.
//!
//! Contract, checked by [`crate::conformance`] for every provider:
//! - `create` tags the box with its lease so `delete_lease_boxes` finds it even when the
//!   create's answer was lost; `inspect`, `open` and `delete` refuse (`Error::NotOurs`) a box
//!   whose tags do not prove it is the lease's.
//! - `BoxSession::apply_archive` leaves the previous tree intact on failure, and removes what
//!   it put on the box (archive, staging) before returning, also when cancelled.
//! - `BoxSession::stop_run` leaves no process of the run alive, descendants included.
//! - Optional primitives (pause/resume, snapshots, fork, port URLs, `BoxSession::start_pty`)
//!   are implemented exactly when [`Capabilities`] declares them; the defaults refuse with
//!   [`unsupported`], and the engine refuses an undeclared one before touching any box.
//!   `open` wakes a paused box (and says so through `BoxSession::resumed`); a box made with
//!   `NewBox::idle_timeout` pauses instead of dying when that much time passes unused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::events::Reporter;
use crate::sync::{Codec, RemoteTree, SyncOp};

/// What a provider can do, so a front end can refuse an unsupported request before doing
/// any work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Accepts `--class` / `--type` (machine sizes). E2B sizes come from the template instead.
    pub machine_class: bool,
    /// Can stop the remote command on Ctrl-C rather than just dropping the stream.
    pub remote_kill: bool,
    /// Keeps build outputs between runs on a warm box.
    pub warm_reuse: bool,
    /// A box carries tags that prove it is crabbox's, so one no claim names can be found and
    /// released (`stop --reclaim`).
    pub reclaim: bool,
    /// Pause and resume a box.
    pub pause: bool,
    /// Snapshot a box and start new ones from the snapshot.
    pub snapshot: bool,
    /// Make new boxes that start as copies of one box, in one call.
    pub fork: bool,
    /// Public URLs of ports on the box.
    pub port_url: bool,
    /// An interactive terminal on the box.
    pub pty: bool,
}

/// A box to make for a lease the engine has reserved.
#[derive(Debug, Clone)]
pub struct NewBox<'a> {
    pub lease_id: &'a str,
    pub slug: &'a str,
    /// Already capped by [`Provider::ttl`].
    pub ttl: Duration,
    /// Made to be kept (warmup, `--keep`): recorded in the box's tags.
    pub keep: bool,
    pub repo_root: Option<&'a Path>,
    /// The workdir [`Provider::workdir`] chose.
    pub workdir: &'a str,
    /// Start from this snapshot (id or name) instead of an empty box.
    pub from_snapshot: Option<&'a str>,
    /// Pause instead of dying when `ttl` passes with no use, and wake on use (the box's
    /// lifetime is then this idle timeout, renewed by each run).
    pub idle_timeout: Option<Duration>,
}

/// A box that was made, and a session on it.
pub struct Created {
    /// The provider's id for it (sandbox id, directory name).
    pub remote_id: String,
    /// Extra facts for the claim (the template it came from, ...).
    pub labels: BTreeMap<String, String>,
    pub session: Box<dyn BoxSession>,
}

/// Why a create failed, and whether a box may exist anyway.
#[derive(Debug)]
pub struct CreateFailure {
    pub error: Error,
    /// The request may have reached the service: a box tagged with the lease may exist.
    pub maybe_created: bool,
    /// The request was abandoned in flight: the service may still be making the box, so a
    /// lookup that finds nothing is worth repeating a few times.
    pub in_flight: bool,
}

impl From<Error> for CreateFailure {
    fn from(error: Error) -> Self {
        CreateFailure {
            error,
            maybe_created: false,
            in_flight: false,
        }
    }
}

/// The box a lease names, as the engine resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxRef {
    pub lease_id: String,
    pub slug: String,
    pub remote_id: String,
    /// Resolved through a claim of this machine (else found on the service by its tags).
    pub claimed: bool,
    /// Its tags were already checked in this process (it was just made, or found by them),
    /// so `open` and `delete` need not ask again.
    pub verified: bool,
    /// The lease its tags name when that is not its own: a fork carries its source's tags
    /// (the service copies them and cannot change them after).
    pub tag_lease: Option<String>,
}

impl BoxRef {
    /// The lease the box's tags must name.
    pub fn tagged_lease(&self) -> &str {
        self.tag_lease.as_deref().unwrap_or(&self.lease_id)
    }
}

/// A snapshot of a box: new boxes can start from it.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    pub id: String,
    pub names: Vec<String>,
}

/// How to reach a port of a box from this machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortUrl {
    pub url: String,
    /// Headers every request must carry (a traffic token where the box is not public).
    pub headers: BTreeMap<String, String>,
}

/// An optional capability, for refusing a request a provider cannot honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    Pause,
    Snapshot,
    Fork,
    PortUrl,
    Pty,
}

impl Capabilities {
    pub fn has(&self, feature: Feature) -> bool {
        match feature {
            Feature::Pause => self.pause,
            Feature::Snapshot => self.snapshot,
            Feature::Fork => self.fork,
            Feature::PortUrl => self.port_url,
            Feature::Pty => self.pty,
        }
    }
}

/// The error for a feature `provider` does not have: what it cannot do and what to use
/// instead. The one text for it, whether the engine refuses up front or a primitive's
/// default answers.
pub fn unsupported(provider: &str, feature: Feature) -> Error {
    let (what, instead) = match feature {
        Feature::Pause => (
            "pause or resume boxes",
            "an idle box of it costs nothing: keep it and run on it, or release it",
        ),
        Feature::Snapshot => (
            "snapshot boxes",
            "keep a box warm and reuse it instead: what commands built there stays",
        ),
        Feature::Fork => (
            "fork boxes",
            "warm up new boxes instead and sync the tree to each",
        ),
        Feature::PortUrl => (
            "give port URLs",
            "its boxes run on this machine: reach the port at http://localhost:<port>",
        ),
        Feature::Pty => (
            "open a terminal on a box",
            "run commands on the box instead",
        ),
    };
    Error::Usage(format!("provider {provider} cannot {what}; {instead}"))
}

/// A box as its provider sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteBox {
    pub remote_id: String,
    /// The lease its tags name, if they name a valid one.
    pub lease_id: Option<String>,
    pub slug: Option<String>,
    /// `running`, `paused`, `ready`...
    pub state: String,
    /// It can run commands now (as far as its state says; see [`Provider::ready`]).
    pub running: bool,
    pub workdir: Option<String>,
    pub created_at: Option<String>,
    pub expires_at: Option<String>,
    /// Settings of the box the provider reports as they are in force (E2B: `network`, its
    /// egress rules), shown by `status` as they are: key -> JSON value.
    pub details: BTreeMap<String, serde_json::Value>,
}

/// A command to start on a box.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// Handed to `/bin/bash -l -c`.
    pub script: String,
    /// The whole environment crabbox gives the command (allow-listed variables plus the
    /// run's own, [`RUN_ID_VAR`] among them). Providers add only what a login on the box
    /// has anyway (`PATH`, `HOME`, ...).
    pub env: BTreeMap<String, String>,
    pub cwd: String,
    /// The run's id, also in `env` as [`RUN_ID_VAR`]: how a provider finds every process
    /// of the run.
    pub run_id: String,
}

/// Set in the environment of every command crabbox runs, to a fresh random value per run,
/// so a cancel can find every process the run started. Its value means nothing outside
/// that one run.
pub const RUN_ID_VAR: &str = "CRABBOX_RUN_ID";

/// One thing a running command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// The command's process started, with this pid on the box.
    Started {
        pid: u32,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command ended with this exit code (128 + n for signal n).
    Exited(i32),
}

/// The events of one started command, in order.
#[async_trait]
pub trait ExecStream: Send {
    /// The next event; `Ok(None)` when the stream ended (after `Exited`, or broken before it).
    async fn next_event(&mut self) -> Result<Option<ExecEvent>>;
}

/// An interactive program to start on a box under a pseudo-terminal.
#[derive(Debug, Clone)]
pub struct PtySpec {
    /// The program and its arguments; empty: an interactive login shell.
    pub argv: Vec<String>,
    /// Where it starts; empty: the user's home.
    pub cwd: String,
    /// On top of the box's login environment (`TERM`).
    pub env: BTreeMap<String, String>,
    pub cols: u16,
    pub rows: u16,
}

/// What a program under a pseudo-terminal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyEvent {
    /// Bytes the terminal showed.
    Output(Vec<u8>),
    /// The program ended with this exit code (128 + n for signal n).
    Exited(i32),
}

/// The output of a program under a pseudo-terminal, in order.
#[async_trait]
pub trait PtyStream: Send {
    /// The next event; `Ok(None)` when the stream ended.
    async fn next_event(&mut self) -> Result<Option<PtyEvent>>;
}

/// Typing into and resizing a pseudo-terminal.
#[async_trait]
pub trait PtyControl: Send + Sync {
    /// Sends keystrokes (bytes as the terminal would: Ctrl-C is 0x03).
    async fn input(&self, bytes: &[u8]) -> Result<()>;
    async fn resize(&self, cols: u16, rows: u16) -> Result<()>;
}

/// A program running under a pseudo-terminal on a box.
pub struct PtyHandle {
    pub stream: Box<dyn PtyStream>,
    pub control: std::sync::Arc<dyn PtyControl>,
}

/// Which run to stop.
#[derive(Debug, Clone)]
pub struct RunTarget {
    pub run_id: String,
    /// The command's pid once it was reported.
    pub pid: Option<u32>,
}

/// One packed chunk of a sync (a tar through its codec), spooled locally; the spool file is
/// removed when this is dropped.
#[derive(Debug)]
pub struct PackedChunk {
    pub file: tempfile::TempPath,
    pub codec: Codec,
    /// Bytes of the spool file: what goes over the wire.
    pub len: u64,
}

/// Chunks as the engine packs them; an `Err` means packing failed and the sync is abandoned.
pub type ChunkFeed = tokio::sync::mpsc::Receiver<Result<PackedChunk>>;

/// A sync to apply to a workdir.
#[derive(Debug)]
pub struct ApplySync<'a> {
    /// Changes to make first, in order, never through a symlink (see [`SyncOp`]).
    pub ops: &'a [SyncOp],
    /// The new sync record ([`crate::sync::SyncRecord::encode`]), kept beside the workdir
    /// once the files are in place (see [`record_path`]); `None` when the record the box
    /// holds (as read for this sync's plan) already lists exactly these paths, so it stays.
    pub record: Option<&'a [u8]>,
    /// The files the chunks carry, when few enough to list: a provider names the tree the sync
    /// left (the `apply_sync` result) only if it can tell that the box holds exactly these
    /// there and nothing else changed meanwhile.
    pub sent: Option<&'a [crate::sync::SyncEntry]>,
    pub workdir: &'a str,
    /// How many chunks the feed carries (a provider may apply a lone chunk and commit in one
    /// step).
    pub chunks: usize,
    /// Apply only onto the tree an earlier reading named this ([`RemoteTree::state`]), as
    /// the provider can tell when the box applies the sync (or just before): a tree that
    /// changed since, or one the provider cannot vouch for, is left as it is and the answer
    /// is [`Applied::TreeMoved`]. For a sync planned from what the last sync left.
    ///
    /// [`RemoteTree::state`]: crate::sync::RemoteTree::state
    pub if_unchanged_since: Option<&'a str>,
    /// Sending and applying together must finish within this.
    pub timeout: Duration,
    pub cancel: &'a CancellationToken,
}

/// What [`BoxSession::apply_sync`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The sync is on the box; the state it left the tree in, when the provider can name it.
    Done(Option<String>),
    /// Nothing: the tree is no longer the one [`ApplySync::if_unchanged_since`] named (or the
    /// provider could not tell), so the sync's plan may be wrong for it.
    TreeMoved,
}

/// Where a workdir's sync record lives on the box: beside it, `<parent>/.<name>.crabbox-synced`,
/// out of the command's way.
pub fn record_path(workdir: &str) -> String {
    let (parent, name) = workdir.rsplit_once('/').unwrap_or(("", workdir));
    format!("{parent}/.{name}.crabbox-synced")
}

/// Operations on one box that is up.
#[async_trait]
pub trait BoxSession: Send + Sync {
    /// Reads the synced tree in one pass: whether `workdir` exists, its sync record, and the
    /// children of the workdir and of every directory the record names (kind, permission
    /// bits, size, whole-second mtime, link target; content hashes when `checksum`). Never
    /// follows a symlink.
    async fn scan(&self, workdir: &str, checksum: bool) -> Result<RemoteTree>;
    /// The box's tree under `workdir` is still exactly the one an earlier [`scan`] named
    /// `state` ([`RemoteTree::state`]), known without reading it (a provider that keeps
    /// watch of the tree). `false` whenever that cannot be known for sure: the caller then
    /// scans.
    ///
    /// [`scan`]: BoxSession::scan
    async fn unchanged_since(&self, workdir: &str, state: &str) -> Result<bool> {
        let _ = (workdir, state);
        Ok(false)
    }
    /// [`BoxSession::apply_sync`] of `req` may name the tree it leaves (asked before it
    /// starts): the engine then writes the new manifest down while the box applies it. `false`
    /// where it never will, so no manifest is written for nothing.
    fn may_name_tree(&self, req: &ApplySync<'_>) -> bool {
        let _ = req;
        false
    }
    /// `path` exists on the box.
    async fn exists(&self, path: &str) -> Result<bool>;
    /// Creates `path` (and its parents) on the box.
    async fn make_dir(&self, path: &str) -> Result<()>;
    /// The codecs this box can unpack, best first. Asked only for large syncs, so a probe of
    /// the box costs small ones nothing.
    async fn codecs(&self) -> Vec<Codec> {
        vec![Codec::Gzip]
    }
    /// Sends and unpacks every chunk of `chunks` as it arrives (while the engine still packs
    /// the next ones); once the feed ends, applies `req.ops`, lays the files over
    /// `req.workdir` (or, when the workdir does not exist, makes them the workdir), then
    /// stores `req.record`. An `Err` in the feed, a cancel, the timeout or any failure
    /// abandons the sync: nothing of it is left on the box when this returns, and the previous
    /// tree is intact where the provider can stage (E2B). Returns the state the sync left the
    /// tree in (as [`RemoteTree::state`] names a reading) when the provider can later vouch
    /// for it with [`BoxSession::unchanged_since`] and can tell that the tree is exactly the
    /// one before with this sync's changes (no other writer's among them); `None` otherwise.
    /// With [`ApplySync::if_unchanged_since`], a tree that moved is [`Applied::TreeMoved`]
    /// (nothing of the sync applied or left behind).
    ///
    /// [`RemoteTree::state`]: crate::sync::RemoteTree::state
    async fn apply_sync(
        &self,
        req: &ApplySync<'_>,
        chunks: ChunkFeed,
        reporter: &dyn Reporter,
    ) -> Result<Applied>;
    /// Streams the regular file at the absolute `path` on the box into `into`, returning
    /// its length; `Error::NotFound` naming the path when it does not exist.
    async fn read_file(
        &self,
        path: &str,
        into: &mut (dyn tokio::io::AsyncWrite + Send + Unpin),
    ) -> Result<u64> {
        let _ = into;
        Err(Error::Usage(format!(
            "this provider cannot read {path} from its boxes"
        )))
    }
    /// Puts `body` at the absolute `path` on the box (parents made), replacing any file there.
    async fn write_file(&self, path: &str, body: &[u8]) -> Result<()> {
        let _ = body;
        Err(Error::Usage(format!(
            "this provider cannot write {path} on its boxes"
        )))
    }
    /// Starts a command; its events follow on the stream.
    async fn start(&self, spec: &ExecSpec) -> Result<Box<dyn ExecStream>>;
    /// Opening this session woke the box from a pause.
    fn resumed(&self) -> bool {
        false
    }
    /// Starts `spec` under a pseudo-terminal (providers declaring `pty`; the engine checks
    /// the capability first).
    async fn start_pty(&self, _spec: &PtySpec) -> Result<PtyHandle> {
        Err(Error::Usage(
            "this box cannot open a terminal; run commands on it instead".into(),
        ))
    }
    /// Sends `signal` to the command's own process (`target.pid`).
    async fn signal(&self, target: &RunTarget, signal: Signal) -> Result<()>;
    /// Makes sure no process of the run survives, descendants included: SIGTERM, up to
    /// `grace` for them to exit, then SIGKILL. Best effort, bounded by `grace` plus a few
    /// seconds.
    async fn stop_run(&self, target: &RunTarget, grace: Duration);
}

/// The signals the engine sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

/// A box backend: the primitives the engine needs. See the module docs for the contract.
#[async_trait]
pub trait Provider: Send + Sync {
    /// `local`, `e2b`...
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// The service the boxes live on (the E2B API URL, `local`): a claim made against one
    /// endpoint is never used against another.
    fn endpoint(&self) -> String;
    /// Refuses settings that would make every box of this provider fail (a bad workdir or
    /// user), before any box exists or any request is sent.
    fn preflight(&self) -> Result<()> {
        Ok(())
    }
    /// Why machine sizes (`--class`, `--type`) do not apply, when they do not
    /// (`capabilities().machine_class` is false) and the provider has a setting instead.
    fn machine_size_note(&self) -> Option<&'static str> {
        None
    }
    /// Where a lease's files go on its box.
    fn workdir(&self, lease_id: &str) -> Result<String>;
    /// The lifetime a box gets when `requested` is asked for (a provider may cap it).
    fn ttl(&self, requested: Duration) -> Duration {
        requested
    }
    /// Makes a box, tagged with its lease. `reporter` may hear provider facts ("from
    /// template base").
    async fn create(
        &self,
        new: &NewBox<'_>,
        reporter: &dyn Reporter,
    ) -> std::result::Result<Created, CreateFailure>;
    /// Deletes every box tagged with `lease_id` (a create whose answer was lost); `settle`:
    /// the create may still be in progress, so an empty answer is asked again a few times.
    /// Returns the ids deleted.
    async fn delete_lease_boxes(&self, lease_id: &str, settle: bool) -> Result<Vec<String>>;
    /// The box as the service sees it, `None` when it is gone; `Error::NotOurs` when its
    /// tags do not prove it is `target`'s lease's.
    async fn inspect(&self, target: &BoxRef) -> Result<Option<RemoteBox>>;
    /// A crabbox box no claim of this machine names, by a provider id (a sandbox id) or,
    /// with `by_tags`, also by the lease id or slug in its tags. `Error::Usage` when a slug
    /// names several.
    async fn find_unclaimed(&self, id: &str, by_tags: bool) -> Result<Option<RemoteBox>>;
    /// Opens a session on the box, refreshing its lifetime to `ttl`; `Error::NotFound` when
    /// it is gone, `Error::NotOurs` when it is not the lease's.
    async fn open(&self, target: &BoxRef, ttl: Duration) -> Result<Box<dyn BoxSession>>;
    /// Deletes the box after checking it is the lease's; `Ok(false)` when it was already
    /// gone.
    async fn delete(&self, target: &BoxRef) -> Result<bool>;
    /// Every crabbox box of this provider on its endpoint.
    async fn list(&self) -> Result<Vec<RemoteBox>>;
    /// The crabbox boxes whose tags name `lease_id` (its own box, and the forks of it,
    /// which carry its tags).
    async fn boxes_of_lease(&self, lease_id: &str) -> Result<Vec<RemoteBox>> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|b| b.lease_id.as_deref() == Some(lease_id))
            .collect())
    }
    /// The box answers commands now (`status --wait` polls this).
    async fn ready(&self, b: &RemoteBox) -> bool {
        b.running
    }
    /// Sets the box's remaining life to `ttl` from now (shorter or longer). Providers whose
    /// boxes have no lifetime do nothing.
    async fn set_ttl(&self, _target: &BoxRef, _ttl: Duration) -> Result<()> {
        Ok(())
    }
    /// Pauses the box, its files and processes kept; `Ok(false)` when it was already
    /// paused.
    async fn pause(&self, _target: &BoxRef) -> Result<bool> {
        Err(unsupported(self.name(), Feature::Pause))
    }
    /// Wakes a paused box with lifetime `ttl`; `Ok(false)` when it was running already (its
    /// lifetime refreshed).
    async fn resume(&self, _target: &BoxRef, _ttl: Duration) -> Result<bool> {
        Err(unsupported(self.name(), Feature::Pause))
    }
    /// Takes a snapshot of the box's files (and memory, where the service keeps it).
    async fn snapshot(&self, _target: &BoxRef, _name: Option<&str>) -> Result<SnapshotInfo> {
        Err(unsupported(self.name(), Feature::Snapshot))
    }
    /// Every snapshot of this provider on its endpoint.
    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        Err(unsupported(self.name(), Feature::Snapshot))
    }
    /// Deletes a snapshot; `Ok(false)` when there is none of that id.
    async fn delete_snapshot(&self, _id: &str) -> Result<bool> {
        Err(unsupported(self.name(), Feature::Snapshot))
    }
    /// Makes one new box per element of `forks`, each a copy of the box `source`, in one
    /// call where the service allows; each succeeds or fails on its own.
    async fn fork(
        &self,
        _source: &BoxRef,
        _forks: &[NewBox<'_>],
    ) -> Result<Vec<std::result::Result<Created, Error>>> {
        Err(unsupported(self.name(), Feature::Fork))
    }
    /// How to reach `port` of the box from this machine. Where learning it means reaching
    /// the box, a paused one is woken with `ttl` to live.
    async fn port_url(&self, _target: &BoxRef, _port: u16, _ttl: Duration) -> Result<PortUrl> {
        Err(unsupported(self.name(), Feature::PortUrl))
    }
    /// The provider's own checks for `crabbox doctor` (credentials present, endpoints
    /// answering, the configured image or template existing), each failure with its fix.
    /// Makes no box and changes nothing. None by default.
    async fn doctor(&self) -> Vec<crate::doctor::Check> {
        Vec::new()
    }
}

/// What a provider needs from the process that builds it.
#[derive(Clone)]
pub struct ProviderContext {
    /// crabbox's state directory (claims, sync state, local boxes).
    pub state_dir: PathBuf,
    /// The caller's environment (for what a login on a box inherits, like `PATH`).
    pub caller_env: BTreeMap<String, String>,
    /// Where a provider reports what happens outside any call that takes a reporter (a
    /// wait before retrying a call the service refused).
    pub reporter: std::sync::Arc<dyn Reporter>,
}

impl std::fmt::Debug for ProviderContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderContext")
            .field("state_dir", &self.state_dir)
            .field("caller_env", &self.caller_env.len())
            .finish_non_exhaustive()
    }
}
