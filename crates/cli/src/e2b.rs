//! Construction of the E2B provider.

use std::path::PathBuf;

use crabbox_core::claims::ClaimStore;
use crabbox_core::config::LoadedConfig;
use crabbox_core::provider::Provider;
use crabbox_core::{Error, Result};

pub fn provider(
    _cfg: &LoadedConfig,
    _claims: ClaimStore,
    _state_dir: PathBuf,
) -> Result<Box<dyn Provider>> {
    Err(Error::Usage(
        "the e2b provider is not built into this binary yet".into(),
    ))
}
