//! `crabbox run -- <command>`: sync the working tree to a box and run the command there.

use crabbox_core::command::RemoteCommand;
use crabbox_core::config::flag;
use crabbox_core::env_policy::forwarded_env;
use crabbox_core::provider::{KeepPolicy, RunRequest, SyncSource};
use crabbox_core::sync::{SyncManifest, SyncState};
use crabbox_core::{Error, Result};
use tokio_util::sync::CancellationToken;

use crate::cli::{GlobalArgs, RunArgs};
use crate::context::{self, StdioSink, TermReporter};

pub async fn run(g: &GlobalArgs, a: RunArgs) -> Result<i32> {
    let mut extra = Vec::new();
    if a.force_sync_large {
        extra.push(flag("sync.allowLarge", "--force-sync-large", true));
    }
    let cfg = context::load_config(g, extra)?;
    let provider = context::provider(&cfg, g)?;
    let reporter = TermReporter::new(false);

    // The archive's file list is settled before any box exists, so a tree that cannot be
    // synced costs nothing remote.
    let sync = if a.no_sync {
        None
    } else {
        let root = cfg.repo_root.clone();
        let opts = cfg.core.sync.options();
        let manifest = tokio::task::spawn_blocking(move || SyncManifest::build(&root, &opts))
            .await
            .map_err(|e| Error::Sync(format!("building the sync manifest: {e}")))??;
        for w in &manifest.warnings {
            eprintln!("crabbox: warning: {w}");
        }
        Some(SyncSource {
            root: cfg.repo_root.clone(),
            manifest,
            delete: cfg.core.sync.delete,
        })
    };

    if a.full_resync {
        if let Some(id) = &a.id {
            // Forgetting what was synced makes the next sync send everything.
            if let Some(claim) = context::claim_store()?.resolve(provider.name(), id)? {
                let state_dir = crabbox_core::paths::state_dir()?;
                SyncState::remove(&SyncState::path_for(&state_dir, &claim.lease_id));
            }
        }
    }

    let cancel = CancellationToken::new();
    watch_signals(cancel.clone());
    let keep = if a.keep {
        KeepPolicy::Always
    } else if a.keep_on_failure {
        KeepPolicy::OnFailure
    } else {
        KeepPolicy::Never
    };
    let env = forwarded_env(&cfg, &std::env::vars().collect(), &a.allow_env);
    for refused in &env.refused {
        eprintln!("crabbox: warning: {refused}");
    }
    let req = RunRequest {
        id: a.id,
        command: RemoteCommand::new(a.command, a.shell),
        sync,
        keep,
        env: env.vars,
        ttl: cfg.core.ttl,
        slug: a.slug,
        repo_root: Some(cfg.repo_root.clone()),
        cancel,
    };
    let outcome = provider.run(&req, &mut StdioSink, &reporter).await?;
    if a.timing_json {
        let line = serde_json::json!({
            "provider": provider.name(),
            "leaseId": outcome.lease_id,
            "slug": outcome.slug,
            "exitCode": outcome.exit_code,
            "created": outcome.created,
            "kept": outcome.kept,
            "acquireMs": outcome.timing.acquire_ms,
            "syncMs": outcome.timing.sync_ms,
            "commandMs": outcome.timing.command_ms,
            "releaseMs": outcome.timing.release_ms,
            "totalMs": outcome.timing.acquire_ms + outcome.timing.sync_ms + outcome.timing.command_ms + outcome.timing.release_ms,
            "sync": outcome.sync,
        });
        eprintln!("{line}");
    }
    Ok(outcome.exit_code)
}

/// First Ctrl-C / SIGTERM: cancel the run (the provider stops the remote command and cleans
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
