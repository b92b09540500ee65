//! What every front end does before it calls the engine, written once: load the config layers
//! for a directory (the CLI's current directory, an MCP call's `root`), and build the engine
//! over the provider the config names, with the claim store and state directory of this
//! machine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::claims::ClaimStore;
use crate::config::{FlagValue, LoadOptions, LoadedConfig};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::Reporter;
use crate::provider::ProviderContext;
use crate::registry::Registry;
use crate::secret::Secret;

/// Where a front end's call starts from.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Where the repository is looked for (its git top level is the root).
    pub cwd: PathBuf,
    /// The caller's environment: config layers, credentials, what `env.allow` forwards.
    pub env: BTreeMap<String, String>,
    /// Flag values laid over every other layer.
    pub flags: Vec<FlagValue>,
}

impl Invocation {
    /// The process's own current directory and environment.
    pub fn from_process(flags: Vec<FlagValue>) -> Result<Self> {
        let cwd = std::env::current_dir().map_err(Error::io("reading current directory", "."))?;
        Ok(Self {
            cwd,
            env: std::env::vars().collect(),
            flags,
        })
    }
}

/// The config layers for `inv` with the sections of `registry`'s providers. Warnings (unknown
/// keys) are in the result for the front end to show.
pub fn load_config(registry: &Registry, inv: &Invocation) -> Result<LoadedConfig> {
    LoadedConfig::load(&LoadOptions {
        cwd: inv.cwd.clone(),
        env: inv.env.clone(),
        flags: inv.flags.clone(),
        user_file: crate::paths::user_config_file(),
        sections: registry.sections(),
    })
}

/// The engine over the provider `cfg` names. `reporter` hears what the provider says outside
/// any call (waits before a retry) and about corrupt claim files, which are skipped.
pub fn engine(
    registry: &Registry,
    cfg: &LoadedConfig,
    env: &BTreeMap<String, String>,
    reporter: Arc<dyn Reporter>,
) -> Result<Engine> {
    let state_dir = crate::paths::state_dir()?;
    let claims = ClaimStore::open_default()?;
    if let Ok((_, corrupt)) = claims.list() {
        for c in corrupt {
            reporter.status(&format!("warning: {c}"));
        }
    }
    let ctx = ProviderContext {
        state_dir: state_dir.clone(),
        caller_env: env.clone(),
        reporter,
    };
    let provider = registry.build(cfg, &ctx)?;
    Ok(Engine::new(provider, claims, state_dir).configured(cfg))
}

/// The values of crabbox's own credentials in `env` (every secret setting's variables): what
/// a front end masks in anything it hands back that it did not write itself.
pub fn credentials(cfg: &LoadedConfig, env: &BTreeMap<String, String>) -> Vec<Secret> {
    cfg.secret_env_vars()
        .iter()
        .filter_map(|var| env.get(var))
        .filter(|v| !v.is_empty())
        .map(|v| Secret::new(v.clone()))
        .collect()
}
