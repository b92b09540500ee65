//! `crabbox cleanup`: reconcile this machine's claims with the provider's boxes.

use crabbox_core::engine::CleanupAction;
use crabbox_core::Result;

use crate::cli::{CleanupArgs, GlobalArgs};
use crate::context;

pub async fn run(g: &GlobalArgs, a: CleanupArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let report = engine.cleanup(a.yes).await?;
    let code = i32::from(!report.errors.is_empty());
    if a.json {
        super::print_json(&report);
        return Ok(code);
    }
    let verb = |now: &str, later: &str| {
        if a.yes {
            now.to_string()
        } else {
            later.to_string()
        }
    };
    for action in &report.actions {
        let line = match action {
            CleanupAction::DropClaim { lease_id, slug } => format!(
                "{} the claim of {lease_id} ({slug}): its box is gone",
                verb("dropped", "would drop")
            ),
            CleanupAction::FinishLease {
                lease_id,
                slug,
                boxes,
            } => format!(
                "{} the unfinished lease {lease_id} ({slug}){}",
                verb("finished", "would finish"),
                if boxes.is_empty() {
                    String::new()
                } else {
                    format!(", deleting box {}", boxes.join(", "))
                }
            ),
            CleanupAction::ReleaseLease {
                lease_id,
                slug,
                remote_id,
            } => format!(
                "{} box {remote_id} of lease {lease_id} ({slug}): the run that made it ended \
                 without releasing it",
                verb("released", "would release")
            ),
            CleanupAction::RemoveFile { path } => format!(
                "{} stale file {}",
                verb("removed", "would remove"),
                path.display()
            ),
        };
        eprintln!("crabbox: {line}");
    }
    for b in &report.unclaimed {
        eprintln!(
            "crabbox: box {} is crabbox's but no claim here names it (lease {}); left alone, \
             it may be another machine's: `crabbox stop --provider {} --reclaim {}` releases it",
            b.remote_id,
            b.lease_id.as_deref().unwrap_or("-"),
            engine.name(),
            b.remote_id
        );
    }
    for e in &report.errors {
        eprintln!("crabbox: error: {e}");
    }
    if report.actions.is_empty() && report.unclaimed.is_empty() {
        eprintln!("crabbox: nothing to clean up");
    } else if !a.yes && !report.actions.is_empty() {
        eprintln!("crabbox: dry run: pass --yes to do this");
    }
    Ok(code)
}
