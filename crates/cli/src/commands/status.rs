//! `crabbox status`: show a lease's box, optionally waiting until it is ready.

use crabbox_core::config::parse_duration;
use crabbox_core::provider::StatusRequest;
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
    let provider = context::provider(&cfg, g)?;
    let id = match a.id {
        Some(id) => id,
        None => only_lease(provider.name())?,
    };
    let st = provider.status(&StatusRequest { id, wait }).await?;
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
    }
    Ok(0)
}

/// Without `--id`: the lease this machine holds for `provider`, if there is exactly one.
fn only_lease(provider: &str) -> Result<String> {
    let (claims, _) = context::claim_store()?.list()?;
    let mine: Vec<_> = claims
        .into_iter()
        .filter(|c| c.provider == provider)
        .collect();
    match mine.as_slice() {
        [one] => Ok(one.lease_id.clone()),
        [] => Err(Error::NotFound(format!(
            "this machine holds no {provider} lease; `crabbox warmup --provider {provider}` makes one"
        ))),
        many => Err(Error::Usage(format!(
            "this machine holds {} {provider} leases; pick one with --id: {}",
            many.len(),
            many.iter()
                .map(|c| format!("{} ({})", c.lease_id, c.slug))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
