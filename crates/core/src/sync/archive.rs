//! The sync archive: a tar written as a stream through a [`Codec`] (gzip, zstd, or stored
//! as is), and its safe extraction.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

use super::manifest::{EntryKind, SyncEntry};
use crate::error::{Error, Result};

/// What went into an archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    pub files: u64,
    /// Uncompressed content bytes.
    pub bytes: u64,
}

/// Writes `entries` (read from under `root`) as tar+gzip into `out`, in the given order (the
/// manifest's sorted order). Memory stays bounded: each file is copied through in chunks.
/// `on_progress` gets the running count of content bytes.
pub fn write_archive<'a, W: Write>(
    root: &Path,
    entries: impl IntoIterator<Item = &'a SyncEntry>,
    out: W,
    on_progress: impl FnMut(u64),
) -> Result<ArchiveStats> {
    write_archive_with(root, entries, Codec::Gzip, out, on_progress)
}

/// How a sync archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// gzip at its fastest level: every box can read it.
    Gzip,
    /// zstd at level 1: several times faster than gzip at a similar ratio, where the box has
    /// `zstd`.
    Zstd,
    /// Not compressed: for files that are compressed already.
    Stored,
}

impl Codec {
    /// The name scripts on a box use (`gzip`, `zstd`, `none`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
            Codec::Stored => "none",
        }
    }
}

/// A writer through one of the codecs, finished explicitly.
enum Encoder<W: Write> {
    Gzip(GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Stored(W),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
            Encoder::Stored(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
            Encoder::Stored(w) => w.flush(),
        }
    }
}

impl<W: Write> Encoder<W> {
    fn new(codec: Codec, out: W) -> std::io::Result<Self> {
        Ok(match codec {
            Codec::Gzip => Encoder::Gzip(GzEncoder::new(out, Compression::fast())),
            Codec::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(out, 1)?),
            Codec::Stored => Encoder::Stored(out),
        })
    }

    fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::Gzip(w) => w.finish(),
            Encoder::Zstd(w) => w.finish(),
            Encoder::Stored(w) => Ok(w),
        }
    }
}

/// [`write_archive`] through `codec`.
pub fn write_archive_with<'a, W: Write>(
    root: &Path,
    entries: impl IntoIterator<Item = &'a SyncEntry>,
    codec: Codec,
    out: W,
    on_progress: impl FnMut(u64),
) -> Result<ArchiveStats> {
    write_entries(root, entries, codec, false, out, on_progress)
}

/// [`write_archive_with`]; with `name_dirs`, each entry's directories not named yet are
/// named (as directory entries, mode 0755) before it, so that an unpacker never has to make
/// one on its own way to a file.
pub(super) fn write_entries<'a, W: Write>(
    root: &Path,
    entries: impl IntoIterator<Item = &'a SyncEntry>,
    codec: Codec,
    name_dirs: bool,
    out: W,
    mut on_progress: impl FnMut(u64),
) -> Result<ArchiveStats> {
    let write_err = |e: std::io::Error| Error::Sync(format!("writing sync archive: {e}"));
    let enc = Encoder::new(codec, out).map_err(write_err)?;
    let mut tar = tar::Builder::new(enc);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut stats = ArchiveStats::default();
    let mut dirs = name_dirs.then(NamedDirs::default);
    for entry in entries {
        if let Some(dirs) = dirs.as_mut() {
            dirs.name_parents(&mut tar, &entry.path)
                .map_err(write_err)?;
        }
        let full = root.join(&entry.path);
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode & super::SYNCED_MODE_BITS);
        header.set_mtime(u64::try_from(entry.mtime_ns / 1_000_000_000).unwrap_or(0));
        header.set_uid(0);
        header.set_gid(0);
        match entry.kind {
            EntryKind::File => {
                // The exact mtime travels as a pax extension (GNU tar and `extract_archive`
                // apply it), so a warm sync can compare it to the nanosecond: the header only
                // holds whole seconds, and an edit within the same second would hide.
                let mtime = format_pax_time(entry.mtime_ns);
                tar.append_pax_extensions([("mtime", mtime.as_bytes())])
                    .map_err(write_err)?;
                // O_NOFOLLOW: a file swapped for a symlink since the manifest was built must not
                // be read through.
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&full)
                    .map_err(|e| unreadable(&full, e))?;
                // Size from the open file, not the manifest: the tree may have changed since.
                let len = file.metadata().map_err(|e| unreadable(&full, e))?.len();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(len);
                tar.append_data(&mut header, &entry.path, ExactLen { inner: file.take(len), remaining: len })
                    .map_err(|e| {
                        Error::Sync(format!(
                            "adding {} to the sync archive: {e}; if it is being written to, run again or exclude it",
                            full.display()
                        ))
                    })?;
                stats.bytes += len;
            }
            EntryKind::Symlink => {
                let target = entry.link_target.as_deref().unwrap_or_default();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &entry.path, target)
                    .map_err(|e| {
                        Error::Sync(format!(
                            "adding link {} to the sync archive: {e}",
                            full.display()
                        ))
                    })?;
            }
        }
        stats.files += 1;
        on_progress(stats.bytes);
    }
    let enc = tar.into_inner().map_err(write_err)?;
    enc.finish()
        .map_err(write_err)?
        .flush()
        .map_err(write_err)?;
    Ok(stats)
}

/// The directories an archive has named so far (see [`write_entries`]).
#[derive(Default)]
struct NamedDirs {
    named: std::collections::HashSet<String>,
    /// The parent of the entry written last: its own entries need nothing named.
    last_parent: String,
    /// Their mtime: when the archive was written, as a directory made by an unpacker.
    mtime: u64,
}

impl NamedDirs {
    /// Names (parents first) each directory on the way to `path` that is not named yet.
    fn name_parents<W: Write>(
        &mut self,
        tar: &mut tar::Builder<W>,
        path: &str,
    ) -> std::io::Result<()> {
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        if parent.is_empty() || parent == self.last_parent {
            return Ok(());
        }
        if self.mtime == 0 {
            self.mtime = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs());
        }
        for (at, _) in parent.match_indices('/').chain([(parent.len(), "")]) {
            let dir = &parent[..at];
            if self.named.contains(dir) {
                continue;
            }
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_mtime(self.mtime);
            header.set_uid(0);
            header.set_gid(0);
            header.set_size(0);
            tar.append_data(&mut header, dir, std::io::empty())?;
            self.named.insert(dir.to_string());
        }
        self.last_parent.clear();
        self.last_parent.push_str(parent);
        Ok(())
    }
}

/// A file of the tree that cannot be read: the tree cannot be synced (exit 6).
fn unreadable(path: &Path, e: std::io::Error) -> Error {
    Error::Sync(format!(
        "cannot read {}: {e}; make it readable, or leave it out with .crabboxignore or \
         sync.exclude",
        path.display()
    ))
}

/// Yields exactly `remaining` bytes or fails: a file that shrinks while it is archived must
/// not leave the tar stream shorter than its header promised.
struct ExactLen<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactLen<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank while being synced",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Unpacks a tar+gzip stream under `dest`, refusing absolute paths, `..` components,
/// anything but regular files, directories and symlinks, an entry that names `dest` itself,
/// and an entry with a symlink on its way (nothing is removed or written through a link).
/// Existing files are replaced; files not in the archive are left alone. Returns the paths
/// written.
pub fn extract_archive<R: Read>(input: R, dest: &Path) -> Result<Vec<String>> {
    extract_archive_with(input, Codec::Gzip, dest)
}

/// [`extract_archive`] of an archive written through `codec`.
pub fn extract_archive_with<'a, R: Read + 'a>(
    input: R,
    codec: Codec,
    dest: &Path,
) -> Result<Vec<String>> {
    let bad = |e: std::io::Error| Error::Sync(format!("reading sync archive: {e}"));
    let input: Box<dyn Read + 'a> = match codec {
        Codec::Gzip => Box::new(flate2::read::GzDecoder::new(input)),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(input).map_err(bad)?),
        Codec::Stored => Box::new(input),
    };
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let mut written = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        if path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(Error::Sync(format!(
                "refusing sync archive entry {}: absolute paths and '..' are not allowed",
                path.display()
            )));
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            return Err(Error::Sync(format!(
                "refusing sync archive entry {}: unsupported type",
                path.display()
            )));
        }
        // Its place under `dest`: the normal components (`.` adds nothing).
        let rel: PathBuf = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        if rel.as_os_str().is_empty() {
            return Err(Error::Sync(format!(
                "refusing sync archive entry '{}': it names the destination itself",
                path.display()
            )));
        }
        // Nothing is removed or written through a symlink, wherever it points: every
        // directory on the way must be a real one (or not exist yet).
        if let Some(link) = symlink_on_the_way(dest, &rel) {
            return Err(Error::Sync(format!(
                "refusing sync archive entry {}: {} on its way is a symlink",
                path.display(),
                link.display()
            )));
        }
        let mtime_ns = entry_mtime_ns(&mut entry);
        let target = dest.join(&rel);
        // Replace whatever is there (a symlink must not redirect the write).
        if let Ok(meta) = std::fs::symlink_metadata(&target) {
            if !meta.is_dir() || !kind.is_dir() {
                let _ = if meta.is_dir() {
                    std::fs::remove_dir_all(&target)
                } else {
                    std::fs::remove_file(&target)
                };
            }
        }
        let ok = entry.unpack_in(dest).map_err(|e| {
            Error::Sync(format!(
                "extracting {} into {}: {e}",
                path.display(),
                dest.display()
            ))
        })?;
        if !ok {
            return Err(Error::Sync(format!(
                "refusing sync archive entry {}: it would land outside {}",
                path.display(),
                dest.display()
            )));
        }
        if kind.is_file() || kind.is_dir() {
            strip_privilege_bits(&target);
        }
        if kind.is_file() {
            if let Some(ns) = mtime_ns {
                set_mtime(&target, ns);
            }
        }
        written.push(path.to_string_lossy().into_owned());
    }
    Ok(written)
}

/// Clears setuid and setgid on what an archive just put at `path` (never through a
/// symlink): a synced tree carries no privilege, whatever the archive's headers say.
fn strip_privilege_bits(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode();
    if meta.file_type().is_symlink() || mode & 0o6000 == 0 {
        return;
    }
    let _ = std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(mode & super::SYNCED_MODE_BITS),
    );
}

/// The first directory on the way to `dest/rel` (`rel` itself excluded) that is a symlink.
fn symlink_on_the_way(dest: &Path, rel: &Path) -> Option<PathBuf> {
    let mut dir = dest.to_path_buf();
    for c in rel.parent()?.components() {
        dir.push(c);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => return Some(dir),
            Ok(_) => {}
            // Missing (so is everything below) or not a directory: nothing to go through.
            Err(_) => return None,
        }
    }
    None
}

/// An entry's exact mtime: its pax `mtime` when it has one, else the header's whole seconds.
pub fn entry_mtime_ns<R: Read>(entry: &mut tar::Entry<'_, R>) -> Option<i128> {
    if let Ok(Some(mut pax)) = entry.pax_extensions() {
        let found = pax.find_map(|ext| {
            let ext = ext.ok()?;
            (ext.key().ok()? == "mtime").then(|| parse_pax_time(ext.value().ok()?))?
        });
        if found.is_some() {
            return found;
        }
    }
    entry
        .header()
        .mtime()
        .ok()
        .map(|s| i128::from(s) * 1_000_000_000)
}

/// Nanoseconds -> a pax time: a decimal number of seconds whose sign applies to the whole
/// of it, as pax and GNU tar write it (`-1.5` is a second and a half before the epoch).
pub fn format_pax_time(ns: i128) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let abs = ns.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

/// A pax time (`1700000000.123456789`, `-1.5`, fewer or more fraction digits) ->
/// nanoseconds; `None` for anything else (a sign inside, no digits, out of range).
pub fn parse_pax_time(v: &str) -> Option<i128> {
    let (negative, body) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (secs, frac) = body.split_once('.').unwrap_or((body, ""));
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || !all_digits(secs) || !all_digits(frac) {
        return None;
    }
    let secs: i128 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos: i128 = format!("{digits:0<9}").parse().ok()?;
    // Out of range (no filesystem keeps such a time): none, rather than an overflow.
    let magnitude = secs.checked_mul(1_000_000_000)?.checked_add(nanos)?;
    Some(if negative { -magnitude } else { magnitude })
}

/// Sets a file's mtime to the nanosecond (best effort: a failure only costs a resend).
fn set_mtime(path: &Path, ns: i128) {
    let Ok(abs) = u64::try_from(ns.unsigned_abs() / 1_000_000_000) else {
        return;
    };
    let offset = std::time::Duration::new(abs, (ns.unsigned_abs() % 1_000_000_000) as u32);
    let when = if ns < 0 {
        std::time::UNIX_EPOCH.checked_sub(offset)
    } else {
        std::time::UNIX_EPOCH.checked_add(offset)
    };
    let Some(when) = when else {
        return;
    };
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
        let _ = f.set_modified(when);
    }
}

#[cfg(test)]
#[path = "archive_tests.rs"]
mod tests;
