//! `crabbox fork ID --count K`: K new leases whose boxes start as copies of one box.

use crabbox_core::engine::ForkRequest;
use crabbox_core::{Error, Result};

use crate::cli::{ForkArgs, GlobalArgs};
use crate::context;

pub async fn run(g: &GlobalArgs, a: ForkArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let reporter = context::reporter();
    let out = engine
        .fork(
            &ForkRequest {
                id: a.id,
                count: a.count,
                ttl: cfg.core.ttl,
            },
            reporter.as_ref(),
        )
        .await?;
    for why in &out.failed {
        eprintln!("crabbox: a fork failed: {why}");
    }
    if a.json {
        super::print_json(&out);
    } else {
        for f in &out.forks {
            println!("{}", f.lease_id);
        }
    }
    if out.forks.is_empty() {
        return Err(Error::Transport(format!(
            "no fork of {} started",
            out.source_lease_id
        )));
    }
    Ok(if out.failed.is_empty() { 0 } else { 1 })
}
