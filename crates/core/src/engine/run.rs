//! `run`: acquire a box, sync, run the command, release by keep policy.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::exec::{Ran, TIMEOUT_EXIT};
use super::leases::LeaseSpec;
use super::leases::{idle_timeout_of, IDLE_TIMEOUT_LABEL};
use super::sync::Choosing;
use super::{ms, Engine, CANCEL_BUDGET};
use crate::claims::Claim;
use crate::engine::{KeepPolicy, RunMode, RunOutcome, RunRequest, Timing};
use crate::error::{Error, Result};
use crate::events::{OutputSink, Reporter};
use crate::hint::Hint;
use crate::provider::{unsupported, BoxRef, BoxSession, Feature};
use crate::usage::UsageEventKind;

/// The box one run works on.
pub(super) struct Acquired {
    pub target: BoxRef,
    pub claim: Option<Claim>,
    /// Made by this run (so this run releases it).
    pub created: bool,
    /// The run's workspace's directory ([`crate::workspace::workdir_of`]).
    pub workdir: String,
    /// The run's workspace (`main` unless `--workspace` named another).
    pub workspace: String,
    pub session: Box<dyn BoxSession>,
    /// The claim's record of this use, being written (see [`Engine::touched`]).
    pub touching: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl Engine {
    /// Syncs the tree (unless `req.sync` is `None`), runs the command streaming its output
    /// into `out`, and releases the box per `req.keep` when this run created it. The remote
    /// exit code is in the outcome; transport failures are errors. On `req.cancel` the
    /// command's whole process tree is stopped and a box this run made is released before
    /// `Error::Interrupted` comes back.
    pub async fn run(
        &self,
        req: &RunRequest,
        out: &mut dyn OutputSink,
        reporter: &dyn Reporter,
    ) -> Result<RunOutcome> {
        self.provider.preflight()?;
        crate::workspace::resolve(req.extras.workspace.as_deref())?;
        let mut timing = Timing::default();

        // The files are chosen while the box is reached and read: before a new box is made
        // (a tree that cannot be synced costs nothing remote), alongside a warm one.
        let t = Instant::now();
        let mut chosen = Choosing::start(req, &self.state_dir);
        if req.id.is_none() {
            chosen.wait(&req.cancel, reporter).await?;
        }
        let mut acquired = self.acquire(req, reporter).await?;
        timing.acquire_ms = ms(t.elapsed());
        if let Err(e) = self.write_lease_output(&acquired, req) {
            self.release_within(CANCEL_BUDGET / 2, &acquired, req, reporter)
                .await;
            return Err(e);
        }

        let t = Instant::now();
        // The sync watches the token itself, so that an interrupted sync still removes its
        // files from the box before it returns.
        let synced = if req.cancel.is_cancelled() {
            Err(Error::Interrupted)
        } else {
            self.sync_phase(&mut acquired, req, &mut chosen, reporter)
                .await
        };
        timing.sync_ms = ms(t.elapsed());
        // Held until the command ends: no other sync changes the tree under it.
        let (sync, _tree) = match synced {
            Ok(synced) => synced,
            Err(e) => {
                self.touched(&mut acquired, reporter).await;
                self.release_within(CANCEL_BUDGET / 2, &acquired, req, reporter)
                    .await;
                return Err(self.gone_hint(&acquired, e));
            }
        };

        let t = Instant::now();
        let mut artifacts = None;
        let mut junit = None;
        let mut run_id = None;
        let mut timed_out = false;
        let ran = match req.extras.mode {
            RunMode::SyncOnly => Ok(Ran::Exited(0)),
            RunMode::Detached => match self.detach(&acquired, req, reporter).await {
                Ok(id) => {
                    run_id = Some(id);
                    Ok(Ran::Exited(0))
                }
                Err(e) => Err(e),
            },
            RunMode::Attached => {
                let mut ran = self.exec_attached(&acquired, req, out, reporter).await;
                if let Ok(Ran::TimedOut) = &ran {
                    timed_out = true;
                    reporter.status(&format!(
                        "timed out: the command ran longer than --timeout {}; its processes \
                         were stopped (exit {TIMEOUT_EXIT})",
                        crate::config::format_duration(req.extras.timeout.unwrap_or_default())
                    ));
                    ran = Ok(Ran::Exited(TIMEOUT_EXIT));
                }
                if let Ok(Ran::Exited(_)) = &ran {
                    if req.extras.fetches() {
                        let (a, j) = self.fetch_outputs(&acquired, req, reporter).await;
                        artifacts = Some(a);
                        junit = j;
                    }
                }
                ran
            }
        };
        timing.command_ms = ms(t.elapsed());
        self.touched(&mut acquired, reporter).await;

        let t = Instant::now();
        // A box made for a sync-only or detached run stays: that is what it was made for.
        let stays = req.extras.mode != RunMode::Attached;
        let result = match ran {
            Ok(Ran::Exited(code)) if stays => {
                let released = self.release(&acquired, true, req, reporter, true).await;
                Ok((code, released))
            }
            Ok(Ran::Exited(code)) => {
                let released = self
                    .release(&acquired, code == 0, req, reporter, false)
                    .await;
                Ok((code, released))
            }
            Ok(Ran::TimedOut) => {
                let released = self.release(&acquired, false, req, reporter, false).await;
                Ok((TIMEOUT_EXIT, released))
            }
            Ok(Ran::Interrupted) => {
                self.release_within(CANCEL_BUDGET / 2, &acquired, req, reporter)
                    .await;
                Err(Error::Interrupted)
            }
            Err(e) => {
                self.release(&acquired, false, req, reporter, false).await;
                Err(self.gone_hint(&acquired, e))
            }
        };
        timing.release_ms = ms(t.elapsed());
        let (exit_code, released) = result?;
        Ok(RunOutcome {
            provider: self.name().to_string(),
            lease_id: acquired.target.lease_id.clone(),
            slug: acquired.target.slug.clone(),
            exit_code,
            kept: !matches!(released, Release::Deleted),
            released: matches!(released, Release::Deleted),
            release_error: match released {
                Release::Failed(why) => Some(why),
                _ => None,
            },
            created: acquired.created,
            timing,
            sync,
            artifacts,
            junit,
            run_id,
            sync_only: req.extras.mode == RunMode::SyncOnly,
            timed_out,
        })
    }

    /// The box for `req`: a new one, or the warm one `req.id` names (lifetime refreshed).
    async fn acquire(&self, req: &RunRequest, reporter: &dyn Reporter) -> Result<Acquired> {
        let ttl = self.provider.ttl(req.ttl);
        let Some(id) = req.id.as_deref() else {
            if req.from_snapshot.is_some() && !self.provider.capabilities().snapshot {
                return Err(unsupported(self.name(), Feature::Snapshot));
            }
            let spec = LeaseSpec {
                slug: req.slug.as_deref(),
                ttl,
                keep: req.keep == KeepPolicy::Always,
                repo_root: req.repo_root.as_deref(),
                from_snapshot: req.from_snapshot.as_deref(),
                idle_timeout: None,
            };
            let (claim, target, session) = self
                .create_lease(&spec, Some(&req.cancel), reporter)
                .await?;
            let workspace = crate::workspace::resolve(req.extras.workspace.as_deref())?;
            return Ok(Acquired {
                target,
                workdir: crate::workspace::workdir_of(&claim.workdir, &workspace),
                workspace,
                claim: Some(claim),
                created: true,
                session,
                touching: None,
            });
        };
        if let Some(snapshot) = &req.from_snapshot {
            return Err(Error::Usage(format!(
                "a box from snapshot {snapshot} is a new box; it cannot be the existing box {id}: \
                 ask for one or the other"
            )));
        }
        // Nothing is made here, so a cancel has nothing to undo.
        let located = cancellable(&req.cancel, self.locate(id)).await?;
        let (claim, target) = (located.claim, located.target);
        // A box that pauses when idle: its pause (made by the service at its timeout) is
        // recorded before this run wakes it. It lives for the run's TTL while the run lasts;
        // the idle timeout starts again when the run ends (`release`).
        if let Some(c) = claim
            .as_ref()
            .filter(|c| c.labels.contains_key(IDLE_TIMEOUT_LABEL))
        {
            if let Ok(Some(remote)) = self.provider.inspect(&target).await {
                self.observe(c, &remote);
            }
        }
        let session = cancellable(&req.cancel, self.provider.open(&target, ttl))
            .await
            .map_err(|e| self.hint_stop_if_gone(e, claim.is_some(), &target.lease_id))?;
        if session.resumed() {
            reporter.status(&format!(
                "resumed paused {} box {} (lease {}, {})",
                self.name(),
                target.remote_id,
                target.lease_id,
                target.slug
            ));
            self.record(
                UsageEventKind::Resumed,
                None,
                &target.lease_id,
                &target.slug,
                claim.as_ref().and_then(|c| c.repo_root.as_deref()),
            );
        }
        reporter.status(&format!(
            "reusing {} box {} (lease {}, {})",
            self.name(),
            target.remote_id,
            target.lease_id,
            target.slug
        ));
        let workspace = crate::workspace::resolve(req.extras.workspace.as_deref())?;
        Ok(Acquired {
            workdir: crate::workspace::workdir_of(
                &self.provider.workdir(&target.lease_id)?,
                &workspace,
            ),
            workspace,
            target,
            claim,
            created: false,
            session,
            touching: None,
        })
    }

    /// Releases a box this run created unless the keep policy says otherwise. A release
    /// that fails is reported with the lease to stop, never silently.
    async fn release(
        &self,
        acquired: &Acquired,
        success: bool,
        req: &RunRequest,
        reporter: &dyn Reporter,
        keep_anyway: bool,
    ) -> Release {
        let target = &acquired.target;
        if !acquired.created {
            self.renew_idle_timeout(acquired, reporter).await;
            return Release::Kept;
        }
        if keep_anyway || req.keep.keeps(success) {
            if let Some(claim) = &acquired.claim {
                if !claim.keep {
                    let mut kept = claim.clone();
                    kept.keep = true;
                    kept.labels.remove(crate::claims::OWNER_LABEL);
                    let _ = self.claims.write(&kept);
                }
            }
            if !success && req.keep == KeepPolicy::OnFailure {
                reporter.status(&format!(
                    "kept {} box {} (lease {}, {}) after the failure",
                    self.name(),
                    target.remote_id,
                    target.lease_id,
                    target.slug
                ));
                reporter.hint(&Hint::Rerun {
                    provider: self.name().to_string(),
                    lease_id: target.lease_id.clone(),
                    command: req.command.clone(),
                });
                reporter.hint(&self.stop_hint(&target.lease_id));
            }
            return Release::Kept;
        }
        match self.provider.delete(target).await {
            Ok(_) => {
                self.record(
                    UsageEventKind::Stopped,
                    None,
                    &target.lease_id,
                    &target.slug,
                    None,
                );
                if let Err(e) = self.forget(&target.lease_id) {
                    reporter.status(&format!(
                        "box {} deleted, but its claim could not be removed: {e}",
                        target.remote_id
                    ));
                }
                Release::Deleted
            }
            Err(e) => {
                let why = format!(
                    "could not delete {} box {} (lease {}): {e}",
                    self.name(),
                    target.remote_id,
                    target.lease_id
                );
                reporter.status(&why);
                reporter.hint(&self.stop_hint(&target.lease_id));
                Release::Failed(why)
            }
        }
    }

    /// A reused box that pauses when idle gets its idle timeout again from now, the end of
    /// this run's use (best effort: it is reported, and the box's TTL still bounds it).
    async fn renew_idle_timeout(&self, acquired: &Acquired, reporter: &dyn Reporter) {
        let Some(idle) = idle_timeout_of(acquired.claim.as_ref()) else {
            return;
        };
        if let Err(e) = self.provider.set_ttl(&acquired.target, idle).await {
            reporter.status(&format!(
                "could not restart the idle timeout of box {}: {e}",
                acquired.target.remote_id
            ));
        }
    }

    /// `e` with the lease to stop when it says the box is gone (it died during the run)
    /// while this machine still claims it, as it does a kept or reused box: stopping drops
    /// the claim. A box the run released has no claim left, and no hint.
    fn gone_hint(&self, acquired: &Acquired, e: Error) -> Error {
        let lease_id = &acquired.target.lease_id;
        let claimed = matches!(self.claims.get(lease_id), Ok(Some(_)));
        if claimed && matches!(e.root(), Error::NotFound(_)) && e.hints().is_empty() {
            e.with_hint(self.stop_hint(lease_id))
        } else {
            e
        }
    }

    /// Releases after a run that failed, giving up after `budget`; a release that gets no
    /// answer is reported like one that failed, never dropped silently.
    async fn release_within(
        &self,
        budget: Duration,
        acquired: &Acquired,
        req: &RunRequest,
        reporter: &dyn Reporter,
    ) {
        let released = self.release(acquired, false, req, reporter, false);
        if tokio::time::timeout(budget, released).await.is_err() {
            let target = &acquired.target;
            reporter.status(&format!(
                "could not delete {} box {} (lease {}): no answer within {}s",
                self.name(),
                target.remote_id,
                target.lease_id,
                budget.as_secs()
            ));
            reporter.hint(&self.stop_hint(&target.lease_id));
        }
    }
}

/// What became of a run's box.
enum Release {
    /// Kept: a reused box, or the keep policy said so.
    Kept,
    Deleted,
    /// It should have gone and could not: the box is still there, costing money.
    Failed(String),
}

/// `fut`, or `Interrupted` as soon as `cancel` fires (`fut` is dropped).
pub(super) async fn cancellable<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Interrupted),
        r = fut => r,
    }
}
