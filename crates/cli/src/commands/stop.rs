//! `crabbox stop`: release a box, then drop its claim.

use crabbox_core::engine::StopRequest;
use crabbox_core::Result;

use crate::cli::{GlobalArgs, StopArgs};
use crate::context;

pub async fn run(g: &GlobalArgs, a: StopArgs) -> Result<i32> {
    let id = a.target.or(a.id).expect("clap requires one");
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let out = engine
        .stop(&StopRequest {
            id,
            reclaim: a.reclaim,
        })
        .await?;
    if a.json {
        super::print_json(&out);
    } else if out.already_gone {
        eprintln!(
            "crabbox: {} ({}) was already gone; claim dropped",
            out.lease_id, out.slug
        );
    } else {
        eprintln!("crabbox: stopped {} ({})", out.lease_id, out.slug);
    }
    if let (false, Some(u)) = (a.json, &out.usage) {
        eprintln!(
            "crabbox: lease {} used {} running, {} paused",
            out.lease_id,
            super::usage::human_secs(u.running_secs),
            super::usage::human_secs(u.paused_secs)
        );
    }
    Ok(0)
}
