//! A box's life between runs: pause and resume, snapshots, forks, port URLs, usage.
//!
//! Each is an optional capability; a provider without it is refused before any work, with
//! what to use instead ([`unsupported`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::leases::{idle_timeout_of, LeaseSpec, FORK_OF_LABEL, TAG_LEASE_LABEL};
use super::Engine;
use crate::claims::{now_rfc3339, Claim};
use crate::engine::BoxStatus;
use crate::error::{Error, Result};
use crate::events::Reporter;
use crate::hint::Hint;
use crate::provider::{unsupported, BoxRef, Feature, NewBox, SnapshotInfo};
use crate::usage::{UsageEventKind, UsageReport};

/// What `pause` or `resume` did.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleOutcome {
    pub lease_id: String,
    pub slug: String,
    pub remote_id: String,
    /// `paused` or `running`: the box's state now.
    pub state: String,
    /// It was in that state already.
    pub already: bool,
}

/// What `snapshot` made.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotOutcome {
    pub lease_id: String,
    pub slug: String,
    pub snapshot: SnapshotInfo,
}

/// `fork` options.
#[derive(Debug, Clone)]
pub struct ForkRequest {
    /// The box to copy: lease id, slug or provider id.
    pub id: String,
    pub count: u32,
    pub ttl: Duration,
}

/// What `fork` made: one new lease per fork that started, and why the others did not.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ForkOutcome {
    pub source_lease_id: String,
    pub forks: Vec<BoxStatus>,
    pub failed: Vec<String>,
}

/// A port of a box, and how to reach it.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortOutcome {
    pub lease_id: String,
    pub slug: String,
    pub port: u16,
    pub url: String,
    pub headers: BTreeMap<String, String>,
}

/// `shell` options.
#[derive(Debug, Clone)]
pub struct ShellRequest {
    pub id: String,
    /// Empty: an interactive login shell.
    pub argv: Vec<String>,
    pub cols: u16,
    pub rows: u16,
    /// `TERM` on the box.
    pub term: String,
    pub ttl: Duration,
}

/// A program under a pseudo-terminal on a lease's box; the front end pumps it.
pub struct Shell {
    pub lease_id: String,
    pub slug: String,
    pub remote_id: String,
    pub pty: crate::provider::PtyHandle,
    /// Hand it to [`Engine::end_shell`] when the program ended.
    pub end: ShellEnd,
}

/// What is left to do when a shell ends.
pub struct ShellEnd {
    target: BoxRef,
    /// The box pauses when idle: its idle timeout restarts when the shell ends.
    idle: Option<Duration>,
}

/// Largest number of forks of one call.
pub const MAX_FORKS: u32 = 20;

impl Engine {
    /// Refuses `feature` up front when the provider lacks it, with what to do instead
    /// about box `id` (when the request names one).
    fn require(&self, feature: Feature, id: Option<&str>) -> Result<()> {
        if self.provider.capabilities().has(feature) {
            return Ok(());
        }
        let provider = self.name().to_string();
        let refusal = unsupported(&provider, feature);
        Err(match (feature, id) {
            (Feature::Pause | Feature::Pty, Some(id)) => refusal.with_hint(Hint::RunOn {
                provider,
                id: id.to_string(),
            }),
            (Feature::Snapshot | Feature::Fork, _) => refusal.with_hint(Hint::Warmup { provider }),
            _ => refusal,
        })
    }

    /// The box `id` names, with this machine's claim on it.
    async fn target_of(&self, id: &str) -> Result<(Option<Claim>, BoxRef)> {
        let located = self.locate(id).await?;
        Ok((located.claim, located.target))
    }

    fn repo_of(claim: &Option<Claim>) -> Option<&Path> {
        claim.as_ref().and_then(|c| c.repo_root.as_deref())
    }

    /// Pauses a lease's box: its files (and, where the service keeps them, its processes)
    /// stay; it costs no compute until resumed.
    pub async fn pause(&self, id: &str) -> Result<LifecycleOutcome> {
        self.require(Feature::Pause, Some(id))?;
        let (claim, target) = self.target_of(id).await?;
        let paused = self
            .provider
            .pause(&target)
            .await
            .map_err(|e| self.hint_stop_if_gone(e, claim.is_some(), &target.lease_id))?;
        if paused {
            self.record(
                UsageEventKind::Paused,
                None,
                &target.lease_id,
                &target.slug,
                Self::repo_of(&claim),
            );
        }
        Ok(LifecycleOutcome {
            lease_id: target.lease_id,
            slug: target.slug,
            remote_id: target.remote_id,
            state: "paused".into(),
            already: !paused,
        })
    }

    /// Wakes a lease's paused box, with `ttl` (or the idle timeout it was made with) to live.
    pub async fn resume(&self, id: &str, ttl: Duration) -> Result<LifecycleOutcome> {
        self.require(Feature::Pause, Some(id))?;
        let (claim, target) = self.target_of(id).await?;
        let ttl = idle_timeout_of(claim.as_ref()).unwrap_or_else(|| self.provider.ttl(ttl));
        let resumed = self
            .provider
            .resume(&target, ttl)
            .await
            .map_err(|e| self.hint_stop_if_gone(e, claim.is_some(), &target.lease_id))?;
        if resumed {
            self.record(
                UsageEventKind::Resumed,
                None,
                &target.lease_id,
                &target.slug,
                Self::repo_of(&claim),
            );
        }
        Ok(LifecycleOutcome {
            lease_id: target.lease_id,
            slug: target.slug,
            remote_id: target.remote_id,
            state: "running".into(),
            already: !resumed,
        })
    }

    /// Takes a snapshot of a lease's box; new boxes can start from it
    /// (`WarmupRequest::from_snapshot`, `RunRequest::from_snapshot`).
    pub async fn snapshot(&self, id: &str, name: Option<&str>) -> Result<SnapshotOutcome> {
        self.require(Feature::Snapshot, Some(id))?;
        let (_claim, target) = self.target_of(id).await?;
        let snapshot = self.provider.snapshot(&target, name).await?;
        Ok(SnapshotOutcome {
            lease_id: target.lease_id,
            slug: target.slug,
            snapshot,
        })
    }

    /// Every snapshot of this provider.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        self.require(Feature::Snapshot, None)?;
        self.provider.list_snapshots().await
    }

    /// Deletes a snapshot named by id or name; `Error::NotFound` when the provider lists
    /// none such. Only what the snapshot list holds is ever deleted: on E2B a snapshot is a
    /// template, and a template id that is not a snapshot must never reach the delete.
    pub async fn delete_snapshot(&self, id: &str) -> Result<SnapshotInfo> {
        self.require(Feature::Snapshot, None)?;
        let not_found = || {
            Error::NotFound(format!(
                "no {} snapshot {id:?} on {}",
                self.name(),
                self.provider.endpoint()
            ))
        };
        let snapshot = self
            .provider
            .list_snapshots()
            .await?
            .into_iter()
            .find(|s| s.id == id || s.names.iter().any(|n| n == id))
            .ok_or_else(not_found)?;
        if self.provider.delete_snapshot(&snapshot.id).await? {
            Ok(snapshot)
        } else {
            Err(not_found())
        }
    }

    /// Makes `count` new leases whose boxes start as copies of the box `req.id` names, in
    /// one call; each gets its own claim and slug. Claims are reserved before the call, as
    /// for any new lease; those whose fork failed are dropped again.
    pub async fn fork(&self, req: &ForkRequest, reporter: &dyn Reporter) -> Result<ForkOutcome> {
        self.require(Feature::Fork, Some(&req.id))?;
        if !(1..=MAX_FORKS).contains(&req.count) {
            return Err(Error::Usage(format!(
                "--count must be between 1 and {MAX_FORKS}, got {}",
                req.count
            )));
        }
        let (source_claim, source) = self.target_of(&req.id).await?;
        let repo_root: Option<PathBuf> = source_claim.as_ref().and_then(|c| c.repo_root.clone());
        let spec = LeaseSpec {
            slug: None,
            ttl: self.provider.ttl(req.ttl),
            keep: true,
            repo_root: repo_root.as_deref(),
            from_snapshot: None,
            idle_timeout: None,
        };
        let mut claims = Vec::new();
        for _ in 0..req.count {
            match self.reserve_lease(&spec) {
                Ok(c) => claims.push(c),
                Err(e) => {
                    for c in &claims {
                        let _ = self.forget(&c.lease_id);
                    }
                    return Err(e);
                }
            }
        }
        let forks: Vec<NewBox<'_>> = claims
            .iter()
            .map(|c| NewBox {
                lease_id: &c.lease_id,
                slug: &c.slug,
                ttl: spec.ttl,
                keep: true,
                repo_root: spec.repo_root,
                workdir: &c.workdir,
                from_snapshot: None,
                idle_timeout: None,
            })
            .collect();
        reporter.status(&format!(
            "forking {} box {} (lease {}) {} time(s)",
            self.name(),
            source.remote_id,
            source.lease_id,
            req.count
        ));
        let results = match self.provider.fork(&source, &forks).await {
            Ok(r) => r,
            Err(e) if matches!(e.root(), Error::Transport(_)) => {
                // The call may have made forks whose answer was lost. They carry the
                // source's tags, so the placeholder claims stay, marked with them: stopping
                // one deletes the forks of the source no claim names, made since.
                let mut e = e;
                for mut c in claims {
                    c.labels.insert("state".into(), "forking".into());
                    c.labels
                        .insert(FORK_OF_LABEL.into(), source.lease_id.clone());
                    c.labels
                        .insert(TAG_LEASE_LABEL.into(), source.tagged_lease().to_string());
                    if self.claims.write(&c).is_ok() {
                        e = e.with_hint(self.stop_hint(&c.lease_id));
                    }
                }
                return Err(e);
            }
            Err(e) => {
                for c in &claims {
                    let _ = self.forget(&c.lease_id);
                }
                return Err(e);
            }
        };
        let mut outcome = ForkOutcome {
            source_lease_id: source.lease_id.clone(),
            forks: Vec::new(),
            failed: Vec::new(),
        };
        let mut results = results.into_iter();
        for mut claim in claims {
            match results.next() {
                Some(Ok(created)) => {
                    claim.remote_id = created.remote_id.clone();
                    claim.labels.remove("state");
                    // A fork is a kept lease: the user's now, not this process's.
                    claim.labels.remove(crate::claims::OWNER_LABEL);
                    claim.labels.extend(created.labels);
                    claim
                        .labels
                        .insert(FORK_OF_LABEL.into(), source.lease_id.clone());
                    claim
                        .labels
                        .insert(TAG_LEASE_LABEL.into(), source.tagged_lease().to_string());
                    claim.last_used_at = now_rfc3339();
                    if let Err(e) = self.claims.write(&claim) {
                        outcome.failed.push(format!(
                            "fork {} could not be claimed: {e}",
                            created.remote_id
                        ));
                        continue;
                    }
                    self.record(
                        UsageEventKind::Created,
                        None,
                        &claim.lease_id,
                        &claim.slug,
                        claim.repo_root.as_deref(),
                    );
                    reporter.status(&format!(
                        "created {} box {} (lease {}, {}) as a fork of {}",
                        self.name(),
                        created.remote_id,
                        claim.lease_id,
                        claim.slug,
                        source.lease_id
                    ));
                    outcome.forks.push(BoxStatus {
                        lease_id: claim.lease_id.clone(),
                        slug: claim.slug.clone(),
                        provider: self.name().to_string(),
                        remote_id: claim.remote_id.clone(),
                        state: "running".into(),
                        ready: true,
                        workdir: claim.workdir.clone(),
                        created_at: Some(claim.claimed_at.clone()),
                        expires_at: None,
                        claimed: true,
                        details: Default::default(),
                    });
                }
                Some(Err(e)) => {
                    let _ = self.forget(&claim.lease_id);
                    outcome.failed.push(e.to_string());
                }
                None => {
                    let _ = self.forget(&claim.lease_id);
                    outcome
                        .failed
                        .push("the service answered for fewer forks than asked".into());
                }
            }
        }
        Ok(outcome)
    }

    /// Deletes the forks a fork call whose answer was lost may have made, for its
    /// placeholder claim `claim`: boxes tagged with the source's lease that no claim of this
    /// machine names and that started after the claim was reserved. Returns their ids.
    pub(super) async fn delete_lost_forks(&self, claim: &Claim) -> Result<Vec<String>> {
        let Some(tag_lease) = claim.labels.get(TAG_LEASE_LABEL) else {
            return Ok(Vec::new());
        };
        let parse = |t: &str| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        };
        let Some(reserved) = parse(&claim.claimed_at) else {
            return Ok(Vec::new());
        };
        let claimed: Vec<String> = self
            .my_claims()?
            .into_iter()
            .map(|c| c.remote_id)
            .filter(|r| !r.is_empty())
            .collect();
        let mut deleted = Vec::new();
        for b in self.provider.boxes_of_lease(tag_lease).await? {
            let made_since = b
                .created_at
                .as_deref()
                .and_then(parse)
                .is_some_and(|t| t >= reserved);
            if made_since && !claimed.contains(&b.remote_id) {
                let target = self.unclaimed_target(&b);
                if self.provider.delete(&target).await? {
                    deleted.push(b.remote_id.clone());
                }
            }
        }
        Ok(deleted)
    }

    /// How to reach `port` of a lease's box (a paused box is woken: traffic would wake it
    /// anyway), with `ttl` (or its idle timeout) to live.
    pub async fn port_url(&self, id: &str, port: u16, ttl: Duration) -> Result<PortOutcome> {
        self.require(Feature::PortUrl, Some(id))?;
        let (claim, target) = self.target_of(id).await?;
        let ttl = idle_timeout_of(claim.as_ref()).unwrap_or_else(|| self.provider.ttl(ttl));
        let url = self.provider.port_url(&target, port, ttl).await?;
        Ok(PortOutcome {
            lease_id: target.lease_id,
            slug: target.slug,
            port,
            url: url.url,
            headers: url.headers,
        })
    }

    /// Starts `req.argv` (or a login shell) under a pseudo-terminal on a lease's box, in its
    /// workdir once something was synced there; a paused box is woken first.
    pub async fn shell(&self, req: &ShellRequest, reporter: &dyn Reporter) -> Result<Shell> {
        self.require(Feature::Pty, Some(&req.id))?;
        let (claim, target) = self.target_of(&req.id).await?;
        let idle = idle_timeout_of(claim.as_ref());
        // It lives for the TTL while the shell is open; see `end_shell`.
        let session = self
            .provider
            .open(&target, self.provider.ttl(req.ttl))
            .await?;
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
                Self::repo_of(&claim),
            );
        }
        let workdir = self.provider.workdir(&target.lease_id)?;
        let cwd = if session.exists(&workdir).await? {
            workdir
        } else {
            String::new()
        };
        let pty = session
            .start_pty(&crate::provider::PtySpec {
                argv: req.argv.clone(),
                cwd,
                env: BTreeMap::from([("TERM".to_string(), req.term.clone())]),
                cols: req.cols,
                rows: req.rows,
            })
            .await?;
        Ok(Shell {
            lease_id: target.lease_id.clone(),
            slug: target.slug.clone(),
            remote_id: target.remote_id.clone(),
            pty,
            end: ShellEnd { target, idle },
        })
    }

    /// After a shell: a box that pauses when idle gets its idle timeout again from now.
    pub async fn end_shell(&self, end: &ShellEnd) -> Result<()> {
        match end.idle {
            Some(idle) => self.provider.set_ttl(&end.target, idle).await,
            None => Ok(()),
        }
    }

    /// Box-seconds per lease and repository, from what this machine recorded.
    pub fn usage(&self) -> Result<UsageReport> {
        self.usage.report(time::OffsetDateTime::now_utc())
    }
}
