//! The sync record: what the last completed sync put on a box, kept *on the box* beside the
//! workdir, so any machine using the lease knows which files crabbox synced there (and may
//! delete when they go locally), and which directories to scan to verify the tree.
//!
//! Format (a provider stores it as opaque bytes; scripts on a box read it with `grep -z`):
//! NUL-terminated entries, each a letter and a workdir-relative path: `f<path>` for a synced
//! file or symlink, `d<dir>` for each directory on the way to one.

use std::collections::BTreeSet;

use super::manifest::SyncManifest;

/// The paths one completed sync put on the box.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncRecord {
    /// Synced files and symlinks.
    pub paths: BTreeSet<String>,
    /// Every directory on the way to one of them (never the workdir itself).
    pub dirs: BTreeSet<String>,
}

impl SyncRecord {
    /// The record of a sync of `manifest`.
    pub fn of(manifest: &SyncManifest) -> Self {
        // Built in bulk from sorted runs (the manifest is sorted), not path by path.
        let mut dirs: Vec<&str> = manifest
            .entries
            .iter()
            .flat_map(|e| ancestors(&e.path))
            .collect();
        dirs.sort_unstable();
        dirs.dedup();
        SyncRecord {
            paths: manifest.entries.iter().map(|e| e.path.clone()).collect(),
            dirs: dirs.into_iter().map(str::to_string).collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (letter, set) in [(b'd', &self.dirs), (b'f', &self.paths)] {
            for p in set {
                out.push(letter);
                out.extend_from_slice(p.as_bytes());
                out.push(0);
            }
        }
        out
    }

    /// Reads a record; entries that are not valid UTF-8 or have an unknown letter are
    /// skipped (a damaged record only means more is verified or sent).
    pub fn decode(bytes: &[u8]) -> Self {
        let mut record = SyncRecord::default();
        for raw in bytes.split(|b| *b == 0) {
            let Some((&letter, path)) = raw.split_first() else {
                continue;
            };
            let Ok(path) = std::str::from_utf8(path) else {
                continue;
            };
            match letter {
                b'f' => {
                    record.paths.insert(path.to_string());
                }
                b'd' => {
                    record.dirs.insert(path.to_string());
                }
                _ => {}
            }
        }
        record
    }
}

/// The proper ancestors of a relative path, shallowest first: `a/b/c` -> `a`, `a/b`.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// The parent of a relative path (`""` for a top-level one).
pub fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{EntryKind, SyncEntry};

    #[test]
    fn a_record_round_trips_and_lists_every_ancestor() {
        let entry = |p: &str| SyncEntry {
            path: p.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size: 1,
            mtime_ns: 0,
            link_target: None,
        };
        let m = SyncManifest {
            entries: vec![entry("a/b/c.txt"), entry("top"), entry("a/x")],
            ..Default::default()
        };
        let r = SyncRecord::of(&m);
        assert_eq!(r.dirs.iter().collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(SyncRecord::decode(&r.encode()), r);
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(parent("a/b/c"), "a/b");
        assert_eq!(parent("c"), "");
        let damaged = SyncRecord::decode(b"fok\0zjunk\0f\xff\0\0");
        assert_eq!(damaged.paths.iter().collect::<Vec<_>>(), ["ok"]);
    }
}
