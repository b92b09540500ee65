//! `crabbox download <id> <remote> <local>`: fetch files or a directory from a lease's box.

use crabbox_core::engine::Download;
use crabbox_core::Result;

use crate::cli::{DownloadArgs, GlobalArgs};
use crate::context;

pub async fn run(g: &GlobalArgs, a: DownloadArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let reporter = context::reporter();
    let report = engine
        .download(
            &a.id,
            Download {
                remote: a.remote,
                local: a.local,
            },
            reporter.as_ref(),
        )
        .await?;
    if a.json {
        super::print_json(&report);
    }
    Ok(0)
}
