//! Where crabbox keeps its state on this machine.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// `$XDG_STATE_HOME/crabbox` (or `~/.local/state/crabbox`).
pub fn state_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir).join("crabbox"));
    }
    dirs::state_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".local/state")))
        .map(|d| d.join("crabbox"))
        .ok_or_else(|| {
            Error::Usage("cannot find a state directory: set XDG_STATE_HOME or HOME".into())
        })
}

/// `<config dir>/crabbox/config.yaml`: `$XDG_CONFIG_HOME` or `~/.config`.
pub fn user_config_file() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir).join("crabbox/config.yaml"));
    }
    dirs::config_dir().map(|d| d.join("crabbox/config.yaml"))
}
