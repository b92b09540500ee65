//! `crabbox run -- <command>`: sync the working tree to a box and run the command there.

use crabbox_core::config::flag;
use crabbox_core::engine::KeepPolicy;
use crabbox_core::plan::{plan_run, RunOptions};
use crabbox_core::Result;
use tokio_util::sync::CancellationToken;

use crate::cli::{GlobalArgs, RunArgs};
use crate::context::{self, StdioSink};

pub async fn run(g: &GlobalArgs, a: RunArgs) -> Result<i32> {
    let mut extra = Vec::new();
    if a.force_sync_large {
        extra.push(flag("sync.allowLarge", "--force-sync-large", true));
    }
    let cfg = context::load_config(g, extra)?;
    let engine = context::engine(&cfg, g)?;
    let reporter = context::reporter();
    let keep = if a.keep {
        KeepPolicy::Always
    } else if a.keep_on_failure {
        KeepPolicy::OnFailure
    } else {
        KeepPolicy::Never
    };
    let opts = RunOptions {
        id: a.id,
        from_snapshot: a.from_snapshot,
        command: a.command,
        shell: a.shell,
        no_sync: a.no_sync,
        full_resync: a.full_resync,
        checksum: a.checksum,
        keep,
        slug: a.slug,
        allow_env: a.allow_env,
    };
    let cancel = CancellationToken::new();
    let plan = plan_run(&cfg, &std::env::vars().collect(), opts, cancel.clone()).await?;
    for w in &plan.warnings {
        eprintln!("crabbox: warning: {w}");
    }
    watch_signals(cancel);
    let outcome = engine
        .run(&plan.request, &mut StdioSink, reporter.as_ref())
        .await?;
    if a.timing_json {
        let line = serde_json::to_string(&outcome.timing_report()).expect("serializable");
        eprintln!("{line}");
    }
    Ok(outcome.exit_code())
}

/// First Ctrl-C / SIGTERM: cancel the run (the engine stops the remote command and cleans
/// up). Second: exit at once.
fn watch_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            seen += 1;
            if seen == 1 {
                eprintln!("crabbox: interrupted: stopping the remote command and cleaning up (Ctrl-C again to exit now)");
                cancel.cancel();
            } else {
                eprintln!("crabbox: interrupted again: exiting without cleanup");
                std::process::exit(crabbox_core::error::exit::INTERRUPTED);
            }
        }
    });
}
