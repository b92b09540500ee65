//! `crabbox warmup`: lease a box to reuse.

use crabbox_core::engine::WarmupRequest;
use crabbox_core::Result;

use crate::cli::{GlobalArgs, WarmupArgs};
use crate::context;

pub async fn run(g: &GlobalArgs, a: WarmupArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let reporter = context::reporter();
    let b = engine
        .warmup(
            &WarmupRequest {
                slug: a.slug,
                ttl: cfg.core.ttl,
                repo_root: Some(cfg.repo_root.clone()),
                from_snapshot: a.from_snapshot,
                idle_timeout: Some(cfg.core.idle_timeout).filter(|d| !d.is_zero()),
            },
            reporter.as_ref(),
        )
        .await?;
    if a.json {
        super::print_json(&b);
    } else {
        eprintln!(
            "crabbox: warm {} box {} ({}) ready, workdir {}",
            b.provider, b.lease_id, b.slug, b.workdir
        );
        eprintln!(
            "crabbox: use it with: crabbox run --provider {} --id {} -- <command>",
            b.provider, b.lease_id
        );
        println!("{}", b.lease_id);
    }
    Ok(0)
}
