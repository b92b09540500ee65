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
    if file.metadata()?.len() == 0 || !on_local_disk(&file) {
        return std::fs::read(path).map(KeptBytes::Read);
    }
    // SAFETY: a mapped file must not change while it is mapped. Crabbox never writes one of
    // its kept files in place: it writes a new file and renames it over the old one
    // ([`write_atomic`]), so the mapped one is never written again, and on a local
    // filesystem ([`on_local_disk`]) the replaced file lives on while mapped. Only another
    // program truncating a file in crabbox's own state directory could break this.
    match unsafe { memmap2::Mmap::map(&file) } {
        Ok(m) => Ok(KeptBytes::Mapped(m)),
        Err(_) => std::fs::read(path).map(KeptBytes::Read),
    }
}

/// `file` is on a filesystem of this machine's own disks or memory, where a file renamed over
/// stays readable to whoever has it open (a network filesystem may drop it, and a mapping of
/// it would then fault).
#[cfg(target_os = "linux")]
fn on_local_disk(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // ext2/3/4, xfs, btrfs, tmpfs, overlayfs, zfs, f2fs, bcachefs.
    const LOCAL: [i64; 8] = [
        0xEF53,
        0x5846_5342,
        0x9123_683E,
        0x0102_1994,
        0x794C_7630,
        0x2FC1_2FC1,
        0xF2F5_2010,
        0xCA45_1A4E,
    ];
    // SAFETY: a zeroed statfs is a valid out-parameter and `file` an open descriptor for the
    // duration of the call.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::fstatfs(file.as_raw_fd(), &mut st) == 0 && LOCAL.contains(&(st.f_type as i64))
    }
}

#[cfg(not(target_os = "linux"))]
fn on_local_disk(_file: &std::fs::File) -> bool {
    false
}
