//! `crabbox usage`: box-seconds running vs paused per lease and repository, from what this
//! machine recorded when it made, paused, resumed and released boxes.

use crabbox_core::Result;

use crate::cli::{GlobalArgs, JsonArgs};
use crate::context;

/// `3725` -> `1h2m5s`.
pub fn human_secs(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

pub fn run(g: &GlobalArgs, a: JsonArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let report = engine.usage()?;
    if a.json {
        super::print_json(&report);
        return Ok(0);
    }
    if report.leases.is_empty() {
        eprintln!("crabbox: no usage recorded yet");
        return Ok(0);
    }
    println!(
        "{:<18} {:<24} {:<8} {:<8} {:>10} {:>10}  REPO",
        "LEASE", "SLUG", "PROVIDER", "STATE", "RUNNING", "PAUSED"
    );
    for l in &report.leases {
        println!(
            "{:<18} {:<24} {:<8} {:<8} {:>10} {:>10}  {}",
            l.lease_id,
            l.slug,
            l.provider,
            l.state,
            human_secs(l.running_secs),
            human_secs(l.paused_secs),
            l.repo
                .as_ref()
                .map_or("-".into(), |r| r.display().to_string())
        );
    }
    println!();
    for r in &report.repos {
        println!(
            "repo {}: {} lease(s), {} running, {} paused",
            r.repo,
            r.leases,
            human_secs(r.running_secs),
            human_secs(r.paused_secs)
        );
    }
    println!(
        "total: {} running, {} paused",
        human_secs(report.running_secs),
        human_secs(report.paused_secs)
    );
    Ok(0)
}
