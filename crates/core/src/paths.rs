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
    write_atomic_with(path, |w| w.write_all(body))
}

/// [`write_atomic`] of what `write` writes (through a buffer: a large file is never held
/// whole in memory).
pub fn write_atomic_with(
    path: &std::path::Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<()> {
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
    let mut out = std::io::BufWriter::with_capacity(64 << 10, tmp.as_file_mut());
    write(&mut out)
        .and_then(|()| out.flush())
        .map_err(Error::io("writing", path))?;
    drop(out);
    tmp.persist(path)
        .map_err(|e| Error::io("writing", path)(e.error))?;
    Ok(())
}

/// The bytes of a file crabbox keeps in its state directory, read without a copy.
pub enum KeptBytes {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl std::ops::Deref for KeptBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            KeptBytes::Mapped(m) => m,
            KeptBytes::Read(v) => v,
        }
    }
}

/// The bytes of `path`, a file crabbox replaces only whole ([`write_atomic`]), mapped where it
/// can be: a large kept listing or tree is then read from the page cache, not copied into
/// fresh memory (which costs more than the reading on many virtual machines).
pub fn read_kept(path: &std::path::Path) -> std::io::Result<KeptBytes> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(KeptBytes::Read(Vec::new()));
    }
    // SAFETY: a mapped file must not change while it is mapped. Crabbox never writes one of
    // its kept files in place: it writes a new file and renames it over the old one
    // ([`write_atomic`]), so the mapped one is never written again.
    match unsafe { memmap2::Mmap::map(&file) } {
        Ok(m) => Ok(KeptBytes::Mapped(m)),
        Err(_) => std::fs::read(path).map(KeptBytes::Read),
    }
}
