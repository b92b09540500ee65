//! `cleanup`: reconciling this machine's claims with the boxes that exist, and removing what
//! crashes left behind. A dry run says what it would do; nothing is touched without `apply`.
//! Whatever a live crabbox process still owns is left alone: a lease it is creating or a
//! one-shot run's (its claim's owner label names the process), a lock it holds, a spool it
//! writes.

use serde::Serialize;

use super::Engine;
use crate::claims::{lock_is_free, owner_alive, Claim, OWNER_LABEL};
use crate::error::Result;
use crate::provider::RemoteBox;

/// What `cleanup` found, and whether it acted.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CleanupReport {
    pub applied: bool,
    pub actions: Vec<CleanupAction>,
    /// Unclaimed crabbox boxes: left alone (they may be another machine's); `stop --reclaim`
    /// releases one.
    pub unclaimed: Vec<UnclaimedBox>,
    /// Actions that failed, with why.
    pub errors: Vec<String>,
}

/// One thing to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum CleanupAction {
    /// A claim whose box is gone (expired, deleted elsewhere): drop it.
    #[serde(rename_all = "camelCase")]
    DropClaim { lease_id: String, slug: String },
    /// A lease whose creation never finished: delete the boxes tagged with it, drop its claim.
    #[serde(rename_all = "camelCase")]
    FinishLease {
        lease_id: String,
        slug: String,
        boxes: Vec<String>,
    },
    /// A one-shot run's lease whose process died before releasing it: delete its box,
    /// drop its claim.
    #[serde(rename_all = "camelCase")]
    ReleaseLease {
        lease_id: String,
        slug: String,
        remote_id: String,
    },
    /// A file a crash or an ended lease left behind.
    RemoveFile { path: std::path::PathBuf },
}

/// A crabbox box no claim of this machine names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnclaimedBox {
    pub remote_id: String,
    pub lease_id: Option<String>,
    pub slug: Option<String>,
}

impl Engine {
    /// Finds claims with no box, leases whose creation never finished and stale files, and
    /// (with `apply`) fixes them. Unclaimed boxes are only reported.
    pub async fn cleanup(&self, apply: bool) -> Result<CleanupReport> {
        let remote = self.provider.list().await?;
        let claims = self.my_claims()?;
        let mut report = CleanupReport {
            applied: apply,
            ..CleanupReport::default()
        };
        for claim in &claims {
            // A lease a running process owns (being created, or a one-shot run's) is that
            // process's to finish; one whose process died is cleanup's.
            let owner = claim.labels.get(OWNER_LABEL);
            let owned = owner.is_some_and(|o| owner_alive(o));
            if owned {
                continue;
            }
            if claim.remote_id.is_empty() {
                let boxes = tagged(&remote, &claim.lease_id);
                report.actions.push(CleanupAction::FinishLease {
                    lease_id: claim.lease_id.clone(),
                    slug: claim.slug.clone(),
                    boxes,
                });
                continue;
            }
            let target = self.claimed_target(claim)?;
            match self.provider.inspect(&target).await {
                Ok(None) => report.actions.push(CleanupAction::DropClaim {
                    lease_id: claim.lease_id.clone(),
                    slug: claim.slug.clone(),
                }),
                Ok(Some(_)) if owner.is_some() && !claim.keep => {
                    report.actions.push(CleanupAction::ReleaseLease {
                        lease_id: claim.lease_id.clone(),
                        slug: claim.slug.clone(),
                        remote_id: claim.remote_id.clone(),
                    })
                }
                Ok(Some(_)) => {}
                Err(e) => report
                    .errors
                    .push(format!("checking lease {}: {e}", claim.lease_id)),
            }
        }
        report.unclaimed = remote
            .iter()
            .filter(|b| !claims.iter().any(|c| c.remote_id == b.remote_id))
            .filter(|b| {
                // A half-made lease's box is the FinishLease action's, not unclaimed.
                !claims.iter().any(|c| {
                    c.remote_id.is_empty() && b.lease_id.as_deref() == Some(c.lease_id.as_str())
                })
            })
            .map(|b| UnclaimedBox {
                remote_id: b.remote_id.clone(),
                lease_id: b.lease_id.clone(),
                slug: b.slug.clone(),
            })
            .collect();
        if apply {
            for action in &report.actions {
                if let Err(e) = self.carry_out(action).await {
                    report.errors.push(e.to_string());
                }
            }
        }
        // After the leases above are settled, so that their own lock files go too.
        let claims = if apply { self.my_claims()? } else { claims };
        let mut files = self.claims.stale_files();
        files.extend(super::sync::stale_spools(&self.state_dir.join("spool")));
        files.extend(orphan_tree_locks(&self.state_dir.join("locks"), &claims));
        for path in files {
            let action = CleanupAction::RemoveFile { path };
            if apply {
                if let Err(e) = self.carry_out(&action).await {
                    report.errors.push(e.to_string());
                }
            }
            report.actions.push(action);
        }
        Ok(report)
    }

    async fn carry_out(&self, action: &CleanupAction) -> Result<()> {
        match action {
            CleanupAction::DropClaim { lease_id, .. } => self.forget(lease_id),
            CleanupAction::FinishLease { lease_id, .. } => {
                self.provider.delete_lease_boxes(lease_id, false).await?;
                // A fork whose answer was lost: its box carries the source's tags.
                if let Some(claim) = self.claims.get(lease_id)? {
                    self.delete_lost_forks(&claim).await?;
                }
                self.forget(lease_id)
            }
            CleanupAction::ReleaseLease { lease_id, .. } => {
                let claim = self.claims.get(lease_id)?;
                if let Some(claim) = claim {
                    let target = self.claimed_target(&claim)?;
                    self.provider.delete(&target).await?;
                }
                self.forget(lease_id)
            }
            CleanupAction::RemoveFile { path } => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(crate::Error::io("removing", path.clone())(e)),
            },
        }
    }
}

/// The boxes tagged with `lease_id`.
fn tagged(remote: &[RemoteBox], lease_id: &str) -> Vec<String> {
    remote
        .iter()
        .filter(|b| b.lease_id.as_deref() == Some(lease_id))
        .map(|b| b.remote_id.clone())
        .collect()
}

/// Tree locks (`<lease>.tree`, `<lease>@<workspace>.tree`) of leases with no claim that no
/// run holds.
fn orphan_tree_locks(dir: &std::path::Path, claims: &[Claim]) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".tree")
                .map(|name| name.split('@').next().unwrap_or(name).to_string())
                .is_some_and(|lease| !claims.iter().any(|c| c.lease_id == lease))
        })
        .filter(|e| lock_is_free(&e.path()))
        .map(|e| e.path())
        .collect()
}
