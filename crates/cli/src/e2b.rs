//! Construction of the E2B provider.

use std::path::PathBuf;

use crabbox_core::claims::ClaimStore;
use crabbox_core::config::LoadedConfig;
use crabbox_core::provider::Provider;
use crabbox_core::Result;

pub fn provider(
    cfg: &LoadedConfig,
    claims: ClaimStore,
    state_dir: PathBuf,
) -> Result<Box<dyn Provider>> {
    Ok(Box::new(crabbox_provider_e2b::E2bProvider::from_config(
        cfg, claims, state_dir,
    )?))
}
