//! The engine: the lease lifecycle, written once for every provider.
//!
//! It owns everything that is not a box primitive: claims (reserved before a box exists,
//! completed when it does, dropped only once it is gone), the sync plan and what was last
//! synced, the run (acquire -> sync -> exec -> release by keep policy), cancellation
//! (SIGTERM the run's whole process tree, then SIGKILL), timings and outcomes. Providers
//! supply the primitives ([`crate::provider::Provider`]); front ends call [`Engine`]'s
//! methods and render what it reports.
//!
//! The one rule every path keeps: a box this run created is released when the run ends,
//! whatever happened, unless the keep policy says otherwise; a release that fails is
//! reported with the lease to stop.

mod boxcmd;
mod boxes;
mod cleanup;
pub mod detach;
mod exec;
mod extras;
pub mod junit;
mod leases;
mod lifecycle;
pub mod outputs;
pub mod request;
mod run;
pub mod shard;
mod sync;
mod sync_memo;
#[cfg(test)]
mod tests;
mod tree_lock;
mod workspaces;

use std::path::PathBuf;
use std::time::Duration;

use crate::claims::{Claim, ClaimStore};
use crate::error::Result;
use crate::provider::Provider;
use crate::usage::{UsageEventKind, UsageLog};

pub use cleanup::{CleanupAction, CleanupReport, UnclaimedBox};
pub use detach::{DetachedRun, RunState};
pub use exec::new_run_id;
pub use junit::JunitSummary;
pub use lifecycle::*;
pub use outputs::ArtifactReport;
pub use request::*;
pub use shard::{ShardOutcome, ShardPlan, ShardRequest, ShardResult};
pub use sync::human_bytes;
pub use workspaces::{WorkspaceInfo, WorkspaceList};

/// How long a SIGTERMed command gets before SIGKILL, by default.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(3);
/// Whole budget of the cleanup after Ctrl-C: signals, waiting, releasing the box.
const CANCEL_BUDGET: Duration = Duration::from_secs(30);
/// How long a SIGKILLed command gets to report its end before we stop waiting.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// Poll interval of `status --wait`.
const WAIT_POLL: Duration = Duration::from_millis(500);
/// Bound of the lookup and delete of a box whose create did not complete.
const ORPHAN_BUDGET: Duration = Duration::from_secs(20);
/// Lifetime of a box opened outside a run when no `ttl` is configured.
const DEFAULT_TTL: Duration = Duration::from_secs(90 * 60);
/// Default bound of one sync's upload and apply.
const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(600);

/// One provider's leases, driven through their whole lifecycle.
pub struct Engine {
    provider: Box<dyn Provider>,
    claims: ClaimStore,
    state_dir: PathBuf,
    sync_timeout: Duration,
    cancel_grace: Duration,
    /// The lifetime a box gets when a command outside a run opens it (`ttl`).
    ttl: Duration,
    usage: UsageLog,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("provider", &self.provider.name())
            .field("claims", &self.claims)
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

impl Engine {
    /// `state_dir` holds sync spools and per-lease sync locks.
    pub fn new(provider: Box<dyn Provider>, claims: ClaimStore, state_dir: PathBuf) -> Self {
        Self {
            provider,
            claims,
            usage: UsageLog::new(state_dir.join("usage")),
            state_dir,
            sync_timeout: DEFAULT_SYNC_TIMEOUT,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            ttl: DEFAULT_TTL,
        }
    }

    /// Bound of one sync's upload and apply (`sync.timeout`; zero keeps the default).
    pub fn with_sync_timeout(mut self, timeout: Duration) -> Self {
        if !timeout.is_zero() {
            self.sync_timeout = timeout;
        }
        self
    }

    /// The engine settings of `cfg` (`sync.timeout`).
    pub fn configured(mut self, cfg: &crate::config::LoadedConfig) -> Self {
        if !cfg.core.ttl.is_zero() {
            self.ttl = cfg.core.ttl;
        }
        self.with_sync_timeout(cfg.core.sync.timeout)
    }

    /// How long a SIGTERMed command gets before SIGKILL on cancel.
    pub fn with_cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    pub fn provider(&self) -> &dyn Provider {
        self.provider.as_ref()
    }

    pub fn name(&self) -> &'static str {
        self.provider.name()
    }

    /// Refuses machine sizes (`--class`, `--type`: `(flag, value)` pairs) a provider without
    /// them cannot honour, before any work.
    pub fn refuse_machine_sizes(&self, asked: &[(&str, Option<&str>)]) -> Result<()> {
        if self.provider.capabilities().machine_class {
            return Ok(());
        }
        match asked.iter().find(|(_, v)| v.is_some()) {
            None => Ok(()),
            Some((flag, _)) => Err(crate::Error::Usage(format!(
                "{flag} is not supported by provider {}{}",
                self.name(),
                self.provider
                    .machine_size_note()
                    .map(|n| format!("; {n}"))
                    .unwrap_or_default()
            ))),
        }
    }

    pub fn claims(&self) -> &ClaimStore {
        &self.claims
    }

    /// Records what happened to a lease's box in its usage file. Best effort: a failure to
    /// record never fails the lease's operation (the box matters more than its accounting).
    fn record(
        &self,
        kind: UsageEventKind,
        at: Option<time::OffsetDateTime>,
        lease_id: &str,
        slug: &str,
        repo: Option<&std::path::Path>,
    ) {
        let _ = self
            .usage
            .record(kind, at, lease_id, slug, self.name(), repo);
    }

    /// Drops a lease's claim (what was synced is recorded on its box, which is gone).
    fn forget(&self, lease_id: &str) -> Result<()> {
        self.claims.remove(lease_id)
    }

    /// The claims of this provider on its endpoint.
    fn my_claims(&self) -> Result<Vec<Claim>> {
        let endpoint = self.provider.endpoint();
        let (claims, _corrupt) = self.claims.list()?;
        Ok(claims
            .into_iter()
            .filter(|c| c.provider == self.provider.name() && c.endpoint == endpoint)
            .collect())
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
