//! Local snapshots and forks: copies of a box directory (and its sync record) under
//! `<state dir>/snapshots/<id>/`, with the snapshot's names in `names`. A box made from
//! one starts as a copy of it. Copies are made with `cp -a` (modes, times and links kept).

use std::path::{Path, PathBuf};

use crabbox_core::provider::{record_path, SnapshotInfo};
use crabbox_core::{Error, Result};

/// Where a snapshot keeps the box's files and its sync record.
const FILES: &str = "box";
const RECORD: &str = "record";
const NAMES: &str = "names";

pub struct Snapshots {
    dir: PathBuf,
}

pub(crate) fn copy(from: &Path, to: &Path) -> Result<()> {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from)
        .arg(to)
        .output()
        .map_err(Error::io("running cp -a for", from))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Transport(format!(
            "copying {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Snapshots {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn names_of(&self, id: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(id).join(NAMES))
            .map(|t| t.lines().map(String::from).collect())
            .unwrap_or_default()
    }

    /// Every snapshot, by id.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("listing snapshots in", &self.dir)(e)),
        };
        let mut out: Vec<SnapshotInfo> = entries
            .flatten()
            .filter_map(|e| {
                let id = e.file_name().to_string_lossy().into_owned();
                id.starts_with("snap_").then(|| SnapshotInfo {
                    names: self.names_of(&id),
                    id,
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The directory of the snapshot `id_or_name` names.
    pub fn find(&self, id_or_name: &str) -> Result<PathBuf> {
        self.list()?
            .into_iter()
            .find(|s| s.id == id_or_name || s.names.iter().any(|n| n == id_or_name))
            .map(|s| self.dir.join(s.id))
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no local snapshot {id_or_name:?} (in {})",
                    self.dir.display()
                ))
            })
    }

    /// Copies box directory `workdir` and its sync record into a new snapshot.
    pub fn take(&self, workdir: &Path, name: Option<&str>) -> Result<SnapshotInfo> {
        if let Some(name) = name {
            if self.find(name).is_ok() {
                return Err(Error::Usage(format!(
                    "a local snapshot named {name:?} exists already"
                )));
            }
        }
        let bytes: [u8; 6] = rand_bytes();
        let id = format!("snap_{}", hex::encode(bytes));
        let dir = self.dir.join(&id);
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let result = (|| {
            copy(workdir, &dir.join(FILES))?;
            let record = PathBuf::from(record_path(&workdir.to_string_lossy()));
            if record.exists() {
                copy(&record, &dir.join(RECORD))?;
            }
            let names = name.map(|n| format!("{n}\n")).unwrap_or_default();
            std::fs::write(dir.join(NAMES), names).map_err(Error::io("writing", dir.join(NAMES)))
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(SnapshotInfo {
            id,
            names: name.map(String::from).into_iter().collect(),
        })
    }

    /// Makes `workdir` (which must not exist) a copy of a snapshot's box.
    pub fn restore(snapshot: &Path, workdir: &Path) -> Result<()> {
        copy(&snapshot.join(FILES), workdir)?;
        let record = snapshot.join(RECORD);
        if record.exists() {
            copy(&record, Path::new(&record_path(&workdir.to_string_lossy())))?;
        }
        Ok(())
    }

    pub fn delete(&self, id: &str) -> Result<bool> {
        if !id.starts_with("snap_") || id.contains('/') {
            return Ok(false);
        }
        let dir = self.dir.join(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("removing snapshot", dir)(e)),
        }
    }
}

fn rand_bytes() -> [u8; 6] {
    use sha2::{Digest, Sha256};
    let seed = format!(
        "{:?}{}{:?}",
        std::time::SystemTime::now(),
        std::process::id(),
        std::thread::current().id()
    );
    let digest = Sha256::digest(seed.as_bytes());
    let mut out = [0u8; 6];
    out.copy_from_slice(&digest[..6]);
    out
}
