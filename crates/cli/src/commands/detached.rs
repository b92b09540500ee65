//! `crabbox logs`, `wait`, `kill` and `runs`: detached runs (`run --detach`).

use crabbox_core::Result;
use tokio_util::sync::CancellationToken;

use crate::cli::{GlobalArgs, LogsArgs, RunRefArgs, RunsArgs};
use crate::context::{self, StdioSink};

/// Cancelled on Ctrl-C / SIGTERM (a second one exits at once).
fn interrupt() -> CancellationToken {
    let cancel = CancellationToken::new();
    super::run::watch_signals(cancel.clone());
    cancel
}

pub async fn logs(g: &GlobalArgs, a: LogsArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let cancel = interrupt();
    engine
        .run_logs(&a.run, a.follow, &mut StdioSink, &cancel)
        .await?;
    Ok(if cancel.is_cancelled() {
        crabbox_core::error::exit::INTERRUPTED
    } else {
        0
    })
}

pub async fn wait(g: &GlobalArgs, a: RunRefArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let cancel = interrupt();
    match engine.run_wait(&a.run, &cancel).await? {
        Some(code) => Ok(code),
        None => {
            eprintln!(
                "crabbox: run {} ended without recording its exit status (killed with its \
                 wrapper, or the box restarted)",
                a.run
            );
            Ok(crabbox_core::error::exit::TRANSPORT)
        }
    }
}

pub async fn kill(g: &GlobalArgs, a: RunRefArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let reporter = context::reporter();
    engine.run_kill(&a.run, reporter.as_ref()).await?;
    Ok(0)
}

pub async fn runs(g: &GlobalArgs, a: RunsArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let runs = engine.runs(a.id.as_deref()).await?;
    if a.json {
        super::print_json(&runs);
        return Ok(0);
    }
    for r in &runs {
        println!(
            "{} {} {} {} {}{}",
            r.run_id,
            r.lease_id,
            r.state,
            r.started_at,
            r.exit_code
                .map(|c| format!("exit={c} "))
                .unwrap_or_default(),
            r.command
        );
    }
    Ok(0)
}
