//! `crabbox status`: show a lease's box, optionally waiting until it is ready.

use crabbox_core::config::parse_duration;
use crabbox_core::engine::StatusRequest;
use crabbox_core::{Error, Result};

use crate::cli::{GlobalArgs, StatusArgs};
use crate::context;

pub async fn run(g: &GlobalArgs, a: StatusArgs) -> Result<i32> {
    let wait = if a.wait {
        Some(
            parse_duration(&a.wait_timeout)
                .map_err(|e| Error::Usage(format!("--wait-timeout: {e}")))?,
        )
    } else {
        None
    };
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let st = engine.status(&StatusRequest { id: a.id, wait }).await?;
    if a.json {
        super::print_json(&st);
    } else {
        println!(
            "{} {} provider={} id={} state={} ready={} workdir={}{}",
            st.lease_id,
            st.slug,
            st.provider,
            st.remote_id,
            st.state,
            st.ready,
            st.workdir,
            st.expires_at
                .as_deref()
                .map(|e| format!(" expires={e}"))
                .unwrap_or_default()
        );
        for (key, value) in &st.details {
            println!("  {key}: {value}");
        }
    }
    Ok(0)
}
