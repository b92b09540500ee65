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

/// Writes `body` to `path` through a temporary file beside it, renamed into place: a reader
/// sees the old file or the new one, never half of one.
pub fn write_atomic(path: &std::path::Path, body: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".crabbox-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(Error::io("creating a file in", dir))?;
    tmp.write_all(body).map_err(Error::io("writing", path))?;
    tmp.persist(path)
        .map_err(|e| Error::io("writing", path)(e.error))?;
    Ok(())
}
