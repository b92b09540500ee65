//! The synced tree of a local box: scanning it, and applying a sync to it, never through a
//! symlink.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crabbox_core::provider::record_path;
use crabbox_core::sync::{
    ancestors, extract_archive_with, parent, Codec, RemoteEntry, RemoteKind, RemoteTree, SyncOp,
    SyncRecord,
};
use crabbox_core::{Error, Result};

/// The workdir's state: its record, and the children of it and of every recorded directory.
pub fn scan(workdir: &Path, checksum: bool) -> Result<RemoteTree> {
    match std::fs::symlink_metadata(workdir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(RemoteTree::default()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RemoteTree::default()),
        Err(e) => return Err(Error::io("reading", workdir)(e)),
    }
    let record_file = PathBuf::from(record_path(&workdir.to_string_lossy()));
    let record = match std::fs::read(&record_file) {
        Ok(bytes) => Some(SyncRecord::decode(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("reading the sync record", record_file)(e)),
    };
    let mut wanted = BTreeSet::from([String::new()]);
    if let Some(r) = &record {
        wanted.extend(r.dirs.iter().cloned());
    }
    let mut scanned = BTreeSet::new();
    let mut entries = BTreeMap::new();
    for dir in wanted {
        // Only a directory reached through real directories is listed.
        if !dir.is_empty() && !real_dirs_to(workdir, &dir, true) {
            continue;
        }
        let abs = if dir.is_empty() {
            workdir.to_path_buf()
        } else {
            workdir.join(&dir)
        };
        let Ok(children) = std::fs::read_dir(&abs) else {
            continue;
        };
        for child in children.flatten() {
            let Ok(name) = child.file_name().into_string() else {
                continue;
            };
            let rel = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let Ok(meta) = std::fs::symlink_metadata(child.path()) else {
                continue;
            };
            entries.insert(rel, entry_of(&child.path(), &meta, checksum));
        }
        scanned.insert(dir);
    }
    Ok(RemoteTree {
        exists: true,
        record,
        scanned,
        entries,
        state: None,
    })
}

fn entry_of(path: &Path, meta: &std::fs::Metadata, checksum: bool) -> RemoteEntry {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        RemoteKind::Symlink
    } else if ft.is_dir() {
        RemoteKind::Dir
    } else if ft.is_file() {
        RemoteKind::File
    } else {
        RemoteKind::Other
    };
    RemoteEntry {
        kind,
        mode: meta.permissions().mode() & 0o7777,
        size: if kind == RemoteKind::File {
            meta.len()
        } else {
            0
        },
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        link_target: (kind == RemoteKind::Symlink)
            .then(|| std::fs::read_link(path).ok())
            .flatten()
            .map(|t| t.to_string_lossy().into_owned()),
        sha256: (checksum && kind == RemoteKind::File)
            .then(|| sha256_of(path))
            .flatten(),
    }
}

fn sha256_of(path: &Path) -> Option<String> {
    use sha2::Digest;
    let mut file = std::os::unix::fs::OpenOptionsExt::custom_flags(
        std::fs::OpenOptions::new().read(true),
        libc::O_NOFOLLOW,
    )
    .open(path)
    .ok()?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Some(hex::encode(hasher.finalize())),
            Ok(n) => hasher.update(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// Every component of `rel` (the last one too when `inclusive`) under `workdir` is a real
/// directory, not a symlink.
fn real_dirs_to(workdir: &Path, rel: &str, inclusive: bool) -> bool {
    let last = inclusive.then_some(rel);
    ancestors(rel)
        .chain(last)
        .all(|d| std::fs::symlink_metadata(workdir.join(d)).is_ok_and(|m| m.file_type().is_dir()))
}

/// Removes whatever is at `path` (a whole directory too) without following a link.
fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => {
            std::fs::remove_dir_all(path).map_err(Error::io("removing", path))
        }
        Ok(_) => std::fs::remove_file(path).map_err(Error::io("removing", path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("reading", path)(e)),
    }
}

/// Makes the way safe for a sync: the ops, in order, none through a symlink.
pub fn prepare(workdir: &Path, ops: &[SyncOp]) -> Result<()> {
    std::fs::create_dir_all(workdir).map_err(Error::io("creating", workdir))?;
    for op in ops {
        match op {
            SyncOp::Clear(p) => {
                if real_dirs_to(workdir, p, false) {
                    remove_any(&workdir.join(p))?;
                }
            }
            SyncOp::EnsureDir(d) => {
                for dir in ancestors(d).chain([d.as_str()]) {
                    let abs = workdir.join(dir);
                    match std::fs::symlink_metadata(&abs) {
                        Ok(m) if !m.file_type().is_dir() => std::fs::remove_file(&abs)
                            .map_err(Error::io("removing what stands in the way", &abs))?,
                        _ => {}
                    }
                }
            }
            SyncOp::ClearIfDir(p) => {
                let abs = workdir.join(p);
                if real_dirs_to(workdir, p, false)
                    && std::fs::symlink_metadata(&abs).is_ok_and(|m| m.file_type().is_dir())
                {
                    remove_any(&abs)?;
                }
            }
            SyncOp::Delete(p) => {
                let abs = workdir.join(p);
                if real_dirs_to(workdir, p, false)
                    && std::fs::symlink_metadata(&abs).is_ok_and(|m| !m.file_type().is_dir())
                {
                    std::fs::remove_file(&abs)
                        .map_err(Error::io("removing stale synced file", &abs))?;
                    prune_empty_parents(workdir, p);
                }
            }
        }
    }
    Ok(())
}

/// Lays one chunk over the workdir.
pub fn unpack(workdir: &Path, chunk: &Path, codec: Codec) -> Result<()> {
    let file = std::fs::File::open(chunk).map_err(Error::io("opening", chunk))?;
    extract_archive_with(std::io::BufReader::new(file), codec, workdir)?;
    Ok(())
}

/// Stores the record of the completed sync beside the workdir.
pub fn finish(workdir: &Path, record: Option<&[u8]>) -> Result<()> {
    let Some(record) = record else {
        return Ok(());
    };
    let record_file = PathBuf::from(record_path(&workdir.to_string_lossy()));
    let tmp = record_file.with_extension("tmp");
    std::fs::write(&tmp, record).map_err(Error::io("writing the sync record", &tmp))?;
    std::fs::rename(&tmp, &record_file).map_err(Error::io("writing the sync record", &record_file))
}

/// Removes the now empty directories on the way to a deleted file.
fn prune_empty_parents(workdir: &Path, rel: &str) {
    let mut dir = parent(rel);
    while !dir.is_empty() {
        if std::fs::remove_dir(workdir.join(dir)).is_err() {
            return;
        }
        dir = parent(dir);
    }
}
