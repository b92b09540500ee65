//! `crabbox list`: the boxes of the configured provider.

use crabbox_core::Result;

use crate::cli::{GlobalArgs, ListArgs};
use crate::context;

pub async fn run(g: &GlobalArgs, a: ListArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let boxes = engine.list().await?;
    if a.json {
        super::print_json(&boxes);
        return Ok(0);
    }
    if boxes.is_empty() {
        eprintln!("crabbox: no {} boxes", engine.name());
        return Ok(0);
    }
    println!(
        "{:<18} {:<24} {:<8} {:<8} {:<7} REMOTE",
        "LEASE", "SLUG", "PROVIDER", "STATE", "CLAIMED"
    );
    for b in boxes {
        println!(
            "{:<18} {:<24} {:<8} {:<8} {:<7} {}",
            b.lease_id,
            b.slug,
            b.provider,
            b.state,
            if b.claimed { "yes" } else { "no" },
            b.remote_id
        );
    }
    Ok(0)
}
