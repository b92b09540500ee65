//! Leases: reserving one and making its box, and finding the box an id names.
//!
//! A new lease's claim is written before its box exists (with no remote id), so a crash or a
//! cancel between the two leaves a claim that `stop` can finish, never an untracked box.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Engine, ORPHAN_BUDGET};
use crate::claims::{now_rfc3339, Claim, OWNER_LABEL};
use crate::error::{Error, Result};
use crate::events::Reporter;
use crate::hint::Hint;
use crate::lease;
use crate::provider::{BoxRef, BoxSession, CreateFailure, NewBox, RemoteBox};
use crate::usage::UsageEventKind;

/// What a new lease is for.
pub(super) struct LeaseSpec<'a> {
    pub slug: Option<&'a str>,
    pub ttl: Duration,
    pub keep: bool,
    pub repo_root: Option<&'a Path>,
    pub from_snapshot: Option<&'a str>,
    pub idle_timeout: Option<Duration>,
}

/// Claim label: the idle timeout a box was made with (seconds); a run renews it by that much.
pub(super) const IDLE_TIMEOUT_LABEL: &str = "idleTimeoutSecs";

/// The idle timeout a lease's box was made with (its claim's label), if any.
pub(super) fn idle_timeout_of(claim: Option<&Claim>) -> Option<Duration> {
    claim
        .and_then(|c| c.labels.get(IDLE_TIMEOUT_LABEL))
        .and_then(|secs| secs.parse().ok())
        .map(Duration::from_secs)
}

impl Engine {
    /// `e`, with the lease to stop attached when it says the box of a lease this machine
    /// claims is gone.
    pub(super) fn hint_stop_if_gone(&self, e: Error, claimed: bool, lease_id: &str) -> Error {
        match (&e, claimed) {
            (Error::NotFound(_), true) => e.with_hint(self.stop_hint(lease_id)),
            _ => e,
        }
    }
}
/// Claim label: the lease a box's tags name when not its own (a fork's source).
pub(super) const TAG_LEASE_LABEL: &str = "tagLease";
/// Claim label: the lease a fork was made from.
pub(super) const FORK_OF_LABEL: &str = "forkOf";
/// Claim label: the snapshot a box started from.
pub(super) const SNAPSHOT_LABEL: &str = "fromSnapshot";

/// The box an id names.
pub(super) struct Located {
    /// This machine's claim on it, if any.
    pub claim: Option<Claim>,
    pub target: BoxRef,
    /// What the provider answered when it was found on the service (no claim).
    pub remote: Option<RemoteBox>,
}

impl Engine {
    /// Reserves a lease (claim without a box), makes its box, and completes the claim. A
    /// create that failed or was cancelled after it may have reached the service is followed
    /// by a lookup of the lease's tag, deleting what it finds; if that lookup fails the
    /// placeholder claim stays so `stop` can finish it.
    pub(super) async fn create_lease(
        &self,
        spec: &LeaseSpec<'_>,
        cancel: Option<&CancellationToken>,
        reporter: &dyn Reporter,
    ) -> Result<(Claim, BoxRef, Box<dyn BoxSession>)> {
        if cancel.is_some_and(CancellationToken::is_cancelled) {
            return Err(Error::Interrupted);
        }
        let provider = self.provider.as_ref();
        let mut claim = self.reserve_lease(spec)?;
        let workdir = claim.workdir.clone();
        let new = NewBox {
            lease_id: &claim.lease_id,
            slug: &claim.slug,
            ttl: spec.ttl,
            keep: spec.keep,
            repo_root: spec.repo_root,
            workdir: &workdir,
            from_snapshot: spec.from_snapshot,
            idle_timeout: spec.idle_timeout,
        };
        let created = match cancel {
            Some(cancel) => tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(CreateFailure {
                    error: Error::Interrupted,
                    maybe_created: true,
                    in_flight: true,
                }),
                r = provider.create(&new, reporter) => r,
            },
            None => provider.create(&new, reporter).await,
        };
        let created = match created {
            Ok(c) => c,
            Err(failure) => return Err(self.abandon_create(&claim, failure, reporter).await),
        };
        claim.remote_id = created.remote_id.clone();
        claim.labels.remove("state");
        if spec.keep {
            // A kept lease is the user's now; a one-shot run's stays this process's until it
            // releases it (so cleanup can tell one whose run died).
            claim.labels.remove(OWNER_LABEL);
        }
        claim.labels.extend(created.labels);
        let target = BoxRef {
            lease_id: claim.lease_id.clone(),
            slug: claim.slug.clone(),
            remote_id: created.remote_id,
            claimed: true,
            verified: true,
            tag_lease: None,
        };
        if let Err(e) = self.claims.write(&claim) {
            // Without its claim the box would be invisible to this machine: delete it.
            let deleted = tokio::time::timeout(ORPHAN_BUDGET, provider.delete(&target)).await;
            if matches!(deleted, Ok(Ok(_))) {
                let _ = self.claims.remove(&claim.lease_id);
                reporter.status(&format!(
                    "box {} was deleted again since it could not be claimed",
                    target.remote_id
                ));
                return Err(e);
            }
            let why = match deleted {
                Ok(Err(d)) => d.to_string(),
                _ => format!("no answer within {}s", ORPHAN_BUDGET.as_secs()),
            };
            reporter.status(&format!(
                "box {} was created but could not be deleted again ({why})",
                target.remote_id
            ));
            return Err(e.with_hint(Hint::Reclaim {
                provider: provider.name().to_string(),
                id: target.remote_id,
            }));
        }
        self.record(
            UsageEventKind::Created,
            None,
            &claim.lease_id,
            &claim.slug,
            claim.repo_root.as_deref(),
        );
        reporter.status(&format!(
            "created {} box {} (lease {}, {}){}",
            provider.name(),
            target.remote_id,
            claim.lease_id,
            claim.slug,
            spec.from_snapshot
                .map(|s| format!(" from snapshot {s}"))
                .unwrap_or_default()
        ));
        Ok((claim, target, created.session))
    }

    /// Reserves a lease: a claim with its slug and workdir, and no box yet.
    pub(super) fn reserve_lease(&self, spec: &LeaseSpec<'_>) -> Result<Claim> {
        let provider = self.provider.as_ref();
        let now = now_rfc3339();
        let mut claim = self.claims.create(spec.slug, |lease_id, slug| Claim {
            lease_id: lease_id.to_string(),
            slug: slug.to_string(),
            provider: provider.name().to_string(),
            remote_id: String::new(),
            endpoint: provider.endpoint(),
            repo_root: spec.repo_root.map(Path::to_path_buf),
            workdir: String::new(),
            claimed_at: now.clone(),
            last_used_at: now.clone(),
            keep: spec.keep,
            labels: BTreeMap::from([
                ("state".to_string(), "creating".to_string()),
                (OWNER_LABEL.to_string(), crate::claims::this_process()),
            ]),
        })?;
        if let Some(idle) = spec.idle_timeout {
            claim
                .labels
                .insert(IDLE_TIMEOUT_LABEL.into(), idle.as_secs().to_string());
        }
        if let Some(snapshot) = spec.from_snapshot {
            claim.labels.insert(SNAPSHOT_LABEL.into(), snapshot.into());
        }
        let workdir = match provider.workdir(&claim.lease_id) {
            Ok(w) => w,
            Err(e) => {
                let _ = self.claims.remove(&claim.lease_id);
                return Err(e);
            }
        };
        claim.workdir = workdir.clone();
        Ok(claim)
    }

    /// After a failed or cancelled create: releases the reserved lease, first deleting any
    /// box the service made for it anyway. Returns the error to report.
    async fn abandon_create(
        &self,
        claim: &Claim,
        failure: CreateFailure,
        reporter: &dyn Reporter,
    ) -> Error {
        let CreateFailure {
            error,
            maybe_created,
            in_flight,
        } = failure;
        if !maybe_created {
            let _ = self.claims.remove(&claim.lease_id);
            return error;
        }
        reporter.status(&format!(
            "creating the box for lease {} did not complete; looking for one tagged with it to \
             delete",
            claim.lease_id
        ));
        let cleanup = tokio::time::timeout(
            ORPHAN_BUDGET,
            self.provider.delete_lease_boxes(&claim.lease_id, in_flight),
        )
        .await;
        let why = match cleanup {
            Ok(Ok(deleted)) => {
                for id in &deleted {
                    reporter.status(&format!(
                        "deleted box {id} of the unfinished lease {}",
                        claim.lease_id
                    ));
                }
                let _ = self.forget(&claim.lease_id);
                return error;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", ORPHAN_BUDGET.as_secs()),
        };
        reporter.status(&format!(
            "a box for lease {} ({}) may exist and could not be checked ({why}); the claim is \
             kept",
            claim.lease_id, claim.slug
        ));
        error.with_hint(Hint::Stop {
            provider: self.name().to_string(),
            lease_id: claim.lease_id.clone(),
        })
    }

    /// The local claim `id` names on this provider's endpoint. A claim made against another
    /// endpoint is never used.
    pub(super) fn resolve_claim(&self, id: &str) -> Result<Option<Claim>> {
        let endpoint = self.provider.endpoint();
        match self.claims.resolve(self.name(), id)? {
            Some(c) if c.endpoint == endpoint => Ok(Some(c)),
            Some(c) => Err(Error::NotFound(format!(
                "lease {} ({}) belongs to {} endpoint {}, not {endpoint}; point the provider \
                 there to use it",
                c.lease_id,
                c.slug,
                self.name(),
                c.endpoint
            ))),
            None => Ok(None),
        }
    }

    /// The box a claim names; an error (with the lease to stop) when its creation never
    /// finished.
    pub(super) fn claimed_target(&self, claim: &Claim) -> Result<BoxRef> {
        if claim.remote_id.is_empty() {
            return Err(Error::NotFound(format!(
                "lease {} ({}) has no box: its creation did not finish",
                claim.lease_id, claim.slug
            ))
            .with_hint(self.stop_hint(&claim.lease_id)));
        }
        Ok(BoxRef {
            lease_id: claim.lease_id.clone(),
            slug: claim.slug.clone(),
            remote_id: claim.remote_id.clone(),
            claimed: true,
            verified: false,
            tag_lease: claim.labels.get(TAG_LEASE_LABEL).cloned(),
        })
    }

    /// The box `id` names: by local claim, else by asking the provider for an unclaimed
    /// crabbox box with that id.
    pub(super) async fn locate(&self, id: &str) -> Result<Located> {
        if let Some(claim) = self.resolve_claim(id)? {
            let target = self.claimed_target(&claim)?;
            return Ok(Located {
                claim: Some(claim),
                target,
                remote: None,
            });
        }
        let unknown = || {
            Error::NotFound(format!(
                "no {} lease, slug or box {id:?} known on this machine ({})",
                self.name(),
                self.provider.endpoint()
            ))
            .with_hint(Hint::List {
                provider: self.name().to_string(),
            })
        };
        if lease::is_lease_id(id) {
            return Err(unknown());
        }
        let found = self.provider.find_unclaimed(id, false).await?;
        let remote = found.ok_or_else(unknown)?;
        Ok(Located {
            claim: None,
            target: self.unclaimed_target(&remote),
            remote: Some(remote),
        })
    }

    /// Names for a box no claim of this machine names, from its tags.
    pub(super) fn unclaimed_target(&self, b: &RemoteBox) -> BoxRef {
        BoxRef {
            lease_id: b
                .lease_id
                .clone()
                .filter(|l| lease::is_lease_id(l))
                .unwrap_or_else(|| format!("{}_{}", self.name(), b.remote_id)),
            slug: b.slug.clone().unwrap_or_default(),
            remote_id: b.remote_id.clone(),
            claimed: false,
            verified: true,
            tag_lease: None,
        }
    }

    /// Without an id: the one lease this machine holds for this provider.
    pub(super) fn only_lease(&self) -> Result<String> {
        let mine = self.my_claims()?;
        let provider = self.name().to_string();
        match mine.as_slice() {
            [one] => Ok(one.lease_id.clone()),
            [] => Err(
                Error::NotFound(format!("this machine holds no {provider} lease"))
                    .with_hint(Hint::Warmup { provider }),
            ),
            many => Err(Error::Usage(format!(
                "this machine holds {} {provider} leases; name one",
                many.len()
            ))
            .with_hint(Hint::PickLease {
                provider,
                leases: many
                    .iter()
                    .map(|c| (c.lease_id.clone(), c.slug.clone()))
                    .collect(),
            })),
        }
    }

    pub(super) fn stop_hint(&self, lease_id: &str) -> Hint {
        Hint::Stop {
            provider: self.name().to_string(),
            lease_id: lease_id.to_string(),
        }
    }
}
