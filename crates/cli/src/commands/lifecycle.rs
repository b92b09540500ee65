//! `crabbox pause ID` and `crabbox resume ID`.

use crabbox_core::engine::LifecycleOutcome;
use crabbox_core::Result;

use crate::cli::{GlobalArgs, LeaseArgs};
use crate::context;

fn render(out: &LifecycleOutcome, json: bool, did: &str, was: &str) {
    if json {
        super::print_json(out);
    } else if out.already {
        eprintln!(
            "crabbox: {} ({}) box {} was already {was}",
            out.lease_id, out.slug, out.remote_id
        );
    } else {
        eprintln!(
            "crabbox: {did} {} ({}) box {}",
            out.lease_id, out.slug, out.remote_id
        );
    }
}

pub async fn pause(g: &GlobalArgs, a: LeaseArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let out = engine.pause(&a.id).await?;
    render(&out, a.json, "paused", "paused");
    Ok(0)
}

pub async fn resume(g: &GlobalArgs, a: LeaseArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let out = engine.resume(&a.id, cfg.core.ttl).await?;
    render(&out, a.json, "resumed", "running");
    Ok(0)
}
