//! `crabbox run -- <command>`: sync the working tree to a box and run the command there.

use crabbox_core::config::flag;
use crabbox_core::engine::{Download, KeepPolicy, RunExtras, RunMode, Script};
use crabbox_core::events::{DiscardOutput, OutputSink};
use crabbox_core::plan::{plan_run, RunOptions};
use crabbox_core::{Error, Result};
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
    let keep = if let Some(when) = &a.stop_after {
        KeepPolicy::from_stop_after(when).ok_or_else(|| {
            Error::Usage(format!(
                "--stop-after {when:?}: use success, failure, always or never"
            ))
        })?
    } else if a.keep {
        KeepPolicy::Always
    } else if a.keep_on_failure {
        KeepPolicy::OnFailure
    } else {
        KeepPolicy::Never
    };
    let extras = extras(&a)?;
    let (json, quiet) = (a.json, a.quiet);
    let command = if extras.script.is_some() {
        Vec::new()
    } else {
        a.command
    };
    let opts = RunOptions {
        id: a.id,
        from_snapshot: a.from_snapshot,
        command,
        shell: a.shell,
        no_sync: a.no_sync,
        full_resync: a.full_resync,
        checksum: a.checksum,
        keep,
        slug: a.slug,
        allow_env: a.allow_env,
        extras,
    };
    let cancel = CancellationToken::new();
    let plan = plan_run(&cfg, &std::env::vars().collect(), opts, cancel.clone()).await?;
    for w in &plan.warnings {
        eprintln!("crabbox: warning: {w}");
    }
    watch_signals(cancel);
    let sink: &mut dyn OutputSink = if quiet {
        // Nothing is kept: the capture files, if any, get the output.
        &mut DiscardOutput
    } else {
        &mut StdioSink
    };
    let outcome = engine.run(&plan.request, sink, reporter.as_ref()).await?;
    if a.timing_json {
        let line = serde_json::to_string(&outcome.timing_report()).expect("serializable");
        eprintln!("{line}");
    }
    if let Some(run_id) = &outcome.run_id {
        println!("{run_id}");
    }
    if json {
        super::print_json(&outcome);
    }
    Ok(outcome.exit_code())
}

/// Scripts, sync-only and detached runs, captured output and artifacts, from the flags.
fn extras(a: &RunArgs) -> Result<RunExtras> {
    let mode = if a.sync_only {
        RunMode::SyncOnly
    } else if a.detach {
        RunMode::Detached
    } else {
        RunMode::Attached
    };
    let script = if let Some(path) = &a.script {
        let body = std::fs::read(path).map_err(Error::io("reading --script", path))?;
        Some(Script {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "script".into()),
            body,
            args: a.command.clone(),
        })
    } else if a.script_stdin {
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)
            .map_err(Error::io("reading the script from", "<stdin>"))?;
        Some(Script {
            name: "stdin".into(),
            body,
            args: a.command.clone(),
        })
    } else {
        None
    };
    if a.sync_only && (script.is_some() || !a.command.is_empty()) {
        return Err(Error::Usage(
            "--sync-only runs no command: drop the command (or --script), or drop --sync-only"
                .into(),
        ));
    }
    let fetches = !a.download.is_empty()
        || !a.artifact_glob.is_empty()
        || !a.require_artifact.is_empty()
        || !a.junit.is_empty();
    if fetches && mode != RunMode::Attached {
        return Err(Error::Usage(
            "--download, --artifact-glob, --require-artifact and --junit fetch after the \
             command ends: not with --sync-only or --detach (use `crabbox download` later)"
                .into(),
        ));
    }
    let downloads = a
        .download
        .iter()
        .map(|d| parse_download(d))
        .collect::<Result<Vec<_>>>()?;
    Ok(RunExtras {
        mode,
        script,
        capture_stdout: a.capture_stdout.clone(),
        capture_stderr: a.capture_stderr.clone(),
        capture_on_fail: a.capture_on_fail,
        downloads,
        artifact_globs: a.artifact_glob.clone(),
        artifact_dir: a.artifact_dir.clone(),
        require: a.require_artifact.clone(),
        junit: a.junit.clone(),
        lease_output: a.lease_output.clone(),
        timeout: a
            .timeout
            .as_deref()
            .map(|t| {
                crabbox_core::config::parse_duration(t)
                    .map_err(|e| Error::Usage(format!("--timeout {t:?}: {e}")))
            })
            .transpose()?
            .filter(|t| !t.is_zero()),
        workspace: a.workspace.clone(),
    })
}

/// `REMOTE=LOCAL`.
pub fn parse_download(v: &str) -> Result<Download> {
    match v.split_once('=') {
        Some((remote, local)) if !remote.is_empty() && !local.is_empty() => Ok(Download {
            remote: remote.to_string(),
            local: local.into(),
        }),
        _ => Err(Error::Usage(format!(
            "--download {v:?}: give REMOTE=LOCAL, e.g. --download coverage=./coverage"
        ))),
    }
}

/// First Ctrl-C / SIGTERM: cancel the run (the engine stops the remote command and cleans
/// up). Second: exit at once.
pub fn watch_signals(cancel: CancellationToken) {
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
