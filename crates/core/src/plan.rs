//! Turning what a front end was asked into the engine's request: the sync manifest (built
//! before any box exists, so a tree that cannot be synced costs nothing remote), the
//! environment the command gets, and the keep policy.

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use crate::command::RemoteCommand;
use crate::config::LoadedConfig;
use crate::engine::{KeepPolicy, RunExtras, RunRequest, SyncSource};
use crate::error::{Error, Result};
use crate::sync::{SyncManifest, SyncOptions};

/// A run as a front end describes it.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Reuse this lease (id, slug or provider id); `None` makes a fresh box.
    pub id: Option<String>,
    pub command: Vec<String>,
    /// The words are shell source (`--shell`).
    pub shell: bool,
    pub no_sync: bool,
    pub full_resync: bool,
    /// Compare files by content hash (`--checksum`).
    pub checksum: bool,
    pub keep: KeepPolicy,
    pub slug: Option<String>,
    /// Extra variables to forward, named by the user (`--allow-env`).
    pub allow_env: Vec<String>,
    /// Scripts, sync-only and detached runs, captured output, artifacts.
    pub extras: RunExtras,
    /// A new box starts from this snapshot (`--from-snapshot`).
    pub from_snapshot: Option<String>,
}

/// The engine's request, and what the user should hear before it runs.
#[derive(Debug)]
pub struct RunPlan {
    pub request: RunRequest,
    /// Manifest warnings and variables refused to the box (by name only).
    pub warnings: Vec<String>,
}

/// Builds the run request for `opts` under `cfg`, with `caller_env` as the caller's
/// environment and `cancel` as the run's cancel token.
pub async fn plan_run(
    cfg: &LoadedConfig,
    caller_env: &BTreeMap<String, String>,
    opts: RunOptions,
    cancel: CancellationToken,
) -> Result<RunPlan> {
    let mut warnings = Vec::new();
    let sync = if opts.no_sync {
        None
    } else {
        let options = cfg.core.sync.options();
        // For a new box the files are chosen here, before anything exists remotely; for a
        // warm box the engine chooses them while it reaches the box.
        let manifest = match opts.id {
            Some(_) => None,
            None => {
                let manifest = build_manifest(&cfg.repo_root, &options).await?;
                warnings.extend(manifest.warnings.iter().cloned());
                Some(std::sync::Arc::new(manifest))
            }
        };
        Some(SyncSource {
            root: cfg.repo_root.clone(),
            manifest,
            options,
            delete: cfg.core.sync.delete,
        })
    };
    let env = forwarded(cfg, caller_env, &opts.allow_env, &mut warnings);
    Ok(RunPlan {
        request: RunRequest {
            id: opts.id,
            command: RemoteCommand::new(opts.command, opts.shell),
            sync,
            full_resync: opts.full_resync,
            checksum: opts.checksum,
            keep: opts.keep,
            env,
            ttl: cfg.core.ttl,
            slug: opts.slug,
            repo_root: Some(cfg.repo_root.clone()),
            from_snapshot: opts.from_snapshot,
            cancel,
            extras: RunExtras {
                timeout: opts
                    .extras
                    .timeout
                    .or((!cfg.core.timeout.is_zero()).then_some(cfg.core.timeout)),
                workspace: Some(crate::workspace::resolve(
                    opts.extras
                        .workspace
                        .as_deref()
                        .or(Some(cfg.core.workspace.as_str())),
                )?),
                ..opts.extras
            },
        },
        warnings,
    })
}

fn forwarded(
    cfg: &LoadedConfig,
    caller_env: &BTreeMap<String, String>,
    extra: &[String],
    warnings: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let env = crate::env_policy::forwarded_env(cfg, caller_env, extra);
    warnings.extend(env.refused.iter().map(ToString::to_string));
    env.vars
}

/// Chooses the files of `root` on a blocking thread.
pub async fn build_manifest(root: &std::path::Path, options: &SyncOptions) -> Result<SyncManifest> {
    let (root, options) = (root.to_path_buf(), options.clone());
    tokio::task::spawn_blocking(move || SyncManifest::build(&root, &options))
        .await
        .map_err(|e| Error::Sync(format!("building the sync manifest: {e}")))?
}
