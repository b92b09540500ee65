//! `warmup`, `status`, `stop` and `list`: leases and their boxes outside a run.

use std::time::Instant;

use super::leases::LeaseSpec;
use super::{Engine, WAIT_POLL};
use crate::claims::Claim;
use crate::engine::{BoxStatus, StatusRequest, StopOutcome, StopRequest, WarmupRequest};
use crate::error::{Error, Result};
use crate::events::Reporter;
use crate::hint::Hint;
use crate::provider::{unsupported, BoxRef, Feature, RemoteBox};
use crate::usage::UsageEventKind;

impl Engine {
    /// Makes a box to reuse, records its claim, and returns it.
    pub async fn warmup(&self, req: &WarmupRequest, reporter: &dyn Reporter) -> Result<BoxStatus> {
        self.provider.preflight()?;
        let spec = LeaseSpec {
            slug: req.slug.as_deref(),
            ttl: self.provider.ttl(req.ttl),
            keep: true,
            repo_root: req.repo_root.as_deref(),
            from_snapshot: req.from_snapshot.as_deref(),
            idle_timeout: req.idle_timeout.map(|idle| self.provider.ttl(idle)),
        };
        if req.from_snapshot.is_some() && !self.provider.capabilities().snapshot {
            return Err(unsupported(self.name(), Feature::Snapshot));
        }
        if req.idle_timeout.is_some() && !self.provider.capabilities().pause {
            return Err(Error::Usage(format!(
                "idleTimeout asks for a box that pauses when idle, and {}; set idleTimeout to 0 \
                 for this provider",
                unsupported(self.name(), Feature::Pause)
            )));
        }
        let (claim, target, _session) = self.create_lease(&spec, None, reporter).await?;
        let remote = self.provider.inspect(&target).await.ok().flatten();
        Ok(self.box_status(Some(&claim), &target, remote.as_ref(), true))
    }

    /// The box `req.id` names (or the one lease this machine holds), optionally waiting
    /// until it is ready.
    pub async fn status(&self, req: &StatusRequest) -> Result<BoxStatus> {
        let id = match &req.id {
            Some(id) => id.clone(),
            None => self.only_lease()?,
        };
        let located = self.locate(&id).await?;
        let (claim, target, mut found) = (located.claim, located.target, located.remote);
        let deadline = req.wait.map(|w| Instant::now() + w);
        loop {
            let remote = match found.take() {
                Some(r) => r,
                None => self
                    .provider
                    .inspect(&target)
                    .await?
                    .ok_or_else(|| self.gone(&target, claim.is_some()))?,
            };
            let ready = self.provider.ready(&remote).await;
            let Some(deadline) = deadline else {
                return Ok(self.box_status(claim.as_ref(), &target, Some(&remote), ready));
            };
            if ready {
                return Ok(self.box_status(claim.as_ref(), &target, Some(&remote), ready));
            }
            if Instant::now() >= deadline {
                return Err(Error::WaitTimeout(format!(
                    "{} box {} (lease {}) was not ready within {}s (state {})",
                    self.name(),
                    target.remote_id,
                    if target.claimed {
                        target.lease_id.as_str()
                    } else {
                        "unclaimed"
                    },
                    req.wait.unwrap_or_default().as_secs(),
                    remote.state
                )));
            }
            tokio::time::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
    }

    /// Releases a lease's box, then drops its claim (only once the box is gone). With
    /// `reclaim`, also a crabbox box no claim of this machine names.
    pub async fn stop(&self, req: &StopRequest) -> Result<StopOutcome> {
        if let Some(claim) = self.resolve_claim(&req.id)? {
            if claim.remote_id.is_empty() {
                // Creation broke between reserving the lease and recording the box: what the
                // service made for it carries its lease tag, or, for a fork, its source's.
                let mut deleted = self
                    .provider
                    .delete_lease_boxes(&claim.lease_id, false)
                    .await?;
                deleted.extend(self.delete_lost_forks(&claim).await?);
                self.forget(&claim.lease_id)?;
                return Ok(self.stopped(claim.lease_id, claim.slug, deleted.is_empty()));
            }
            let target = self.claimed_target(&claim)?;
            let existed = self.provider.delete(&target).await.map_err(|e| {
                match e.root() {
                    Error::NotOurs(_) => e.with_hint(Hint::StaleClaim {
                        path: self.claims.dir().join(format!("{}.json", claim.lease_id)),
                    }),
                    // The box may still be running: the claim stays, and stopping again
                    // later finishes the job.
                    Error::Transport(_) if e.hints().is_empty() => {
                        e.with_hint(self.stop_hint(&claim.lease_id))
                    }
                    _ => e,
                }
            })?;
            self.forget(&claim.lease_id)?;
            return Ok(self.stopped(claim.lease_id, claim.slug, !existed));
        }
        let can_reclaim = self.provider.capabilities().reclaim;
        if !req.reclaim || !can_reclaim {
            let unknown = format!(
                "no {} lease {:?} on this machine ({})",
                self.name(),
                req.id,
                self.provider.endpoint()
            );
            let provider = self.name().to_string();
            return Err(if can_reclaim {
                Error::NotFound(format!(
                    "{unknown}; if its box still exists and the claim was lost, it can be \
                     reclaimed"
                ))
                .with_hint(Hint::Reclaim {
                    provider,
                    id: req.id.clone(),
                })
            } else {
                Error::NotFound(unknown).with_hint(Hint::List { provider })
            });
        }
        let remote = self
            .provider
            .find_unclaimed(&req.id, true)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no crabbox box {:?} on {} to reclaim",
                    req.id,
                    self.provider.endpoint()
                ))
            })?;
        let target = self.unclaimed_target(&remote);
        let existed = self.provider.delete(&target).await?;
        // A placeholder claim of the lease (its creation never finished) goes with its box.
        if let Some(claim) = self.claims.get(&target.lease_id).ok().flatten() {
            if claim.remote_id.is_empty() && claim.provider == self.name() {
                self.forget(&claim.lease_id)?;
            }
        }
        Ok(self.stopped(target.lease_id, target.slug, !existed))
    }

    /// A stop's outcome, with the lease's box-seconds once its stop is recorded.
    fn stopped(&self, lease_id: String, slug: String, already_gone: bool) -> StopOutcome {
        self.record(UsageEventKind::Stopped, None, &lease_id, &slug, None);
        let usage = self.usage.lease(&lease_id, time::OffsetDateTime::now_utc());
        StopOutcome {
            lease_id,
            slug,
            already_gone,
            usage,
        }
    }

    /// Records a change of state the service made on its own (an idle box paused at its
    /// timeout, a paused one woken by traffic) once crabbox sees it.
    pub(super) fn observe(&self, claim: &Claim, remote: &RemoteBox) {
        let Some(last) = self.usage.last(&claim.lease_id) else {
            return;
        };
        let was_running = matches!(
            last.event,
            UsageEventKind::Created | UsageEventKind::Resumed
        );
        let now = time::OffsetDateTime::now_utc();
        if was_running && remote.state == "paused" {
            // The service paused it when its time ran out.
            let at = remote
                .expires_at
                .as_deref()
                .and_then(|e| {
                    time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map_or(now, |e| e.min(now));
            self.record(
                UsageEventKind::Paused,
                Some(at),
                &claim.lease_id,
                &claim.slug,
                claim.repo_root.as_deref(),
            );
        } else if last.event == UsageEventKind::Paused && remote.running {
            self.record(
                UsageEventKind::Resumed,
                None,
                &claim.lease_id,
                &claim.slug,
                claim.repo_root.as_deref(),
            );
        }
    }

    /// Every box of this provider, with the claims of this machine: a box no claim names is
    /// shown unclaimed; a claim whose box is gone is shown `gone`.
    pub async fn list(&self) -> Result<Vec<BoxStatus>> {
        let remote = self.provider.list().await?;
        let claims = self.my_claims()?;
        let mut out: Vec<BoxStatus> = remote
            .iter()
            .map(|b| {
                let claim = claims.iter().find(|c| c.remote_id == b.remote_id);
                let target = match claim {
                    Some(c) => BoxRef {
                        lease_id: c.lease_id.clone(),
                        slug: c.slug.clone(),
                        remote_id: c.remote_id.clone(),
                        claimed: true,
                        verified: false,
                        tag_lease: None,
                    },
                    None => self.unclaimed_target(b),
                };
                self.box_status(claim, &target, Some(b), b.running)
            })
            .collect();
        for c in &claims {
            if !remote.iter().any(|b| b.remote_id == c.remote_id) {
                let target = BoxRef {
                    lease_id: c.lease_id.clone(),
                    slug: c.slug.clone(),
                    remote_id: c.remote_id.clone(),
                    claimed: true,
                    verified: false,
                    tag_lease: None,
                };
                out.push(self.box_status(Some(c), &target, None, false));
            }
        }
        out.sort_by(|a, b| a.lease_id.cmp(&b.lease_id));
        Ok(out)
    }

    /// The error for a box that is gone, with the lease to stop when a claim names it.
    fn gone(&self, target: &BoxRef, claimed: bool) -> Error {
        let e = Error::NotFound(format!(
            "{} box {} of lease {} ({}) is gone (expired or deleted)",
            self.name(),
            target.remote_id,
            target.lease_id,
            target.slug
        ));
        if claimed {
            e.with_hint(self.stop_hint(&target.lease_id))
        } else {
            e
        }
    }

    fn box_status(
        &self,
        claim: Option<&Claim>,
        target: &BoxRef,
        remote: Option<&RemoteBox>,
        ready: bool,
    ) -> BoxStatus {
        if let (Some(claim), Some(remote)) = (claim, remote) {
            self.observe(claim, remote);
        }
        BoxStatus {
            lease_id: target.lease_id.clone(),
            slug: target.slug.clone(),
            provider: self.name().to_string(),
            remote_id: target.remote_id.clone(),
            state: remote.map_or_else(|| "gone".to_string(), |r| r.state.clone()),
            ready,
            workdir: claim
                .map(|c| c.workdir.clone())
                .or_else(|| remote.and_then(|r| r.workdir.clone()))
                .unwrap_or_default(),
            created_at: remote
                .and_then(|r| r.created_at.clone())
                .or_else(|| claim.map(|c| c.claimed_at.clone())),
            expires_at: remote.and_then(|r| r.expires_at.clone()),
            claimed: claim.is_some(),
            details: remote.map(|r| r.details.clone()).unwrap_or_default(),
        }
    }
}
