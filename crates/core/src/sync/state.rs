//! What was last synced to a lease, so a warm sync sends only what changed and deletes only
//! files that crabbox itself put there (build outputs on the box are left alone).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::{SyncEntry, SyncManifest};
use crate::error::{Error, Result};

/// The manifest last synced to one lease, kept beside its claim.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncState {
    pub entries: BTreeMap<String, SyncEntry>,
}

/// The changes between the last sync and now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncDelta {
    /// New or changed files, in manifest order.
    pub changed: Vec<SyncEntry>,
    /// Previously synced files that are gone locally (to delete on the box).
    pub deleted: Vec<String>,
}

impl SyncState {
    pub fn from_manifest(m: &SyncManifest) -> Self {
        Self {
            entries: m
                .entries
                .iter()
                .map(|e| (e.path.clone(), e.clone()))
                .collect(),
        }
    }

    /// `<state dir>/sync/<lease>.json`.
    pub fn path_for(state_dir: &Path, lease_id: &str) -> PathBuf {
        state_dir.join("sync").join(format!("{lease_id}.json"))
    }

    /// The saved state, or empty when there is none or it is unreadable (a full sync follows).
    pub fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io("creating", parent))?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).expect("state serializes"))
            .map_err(Error::io("writing sync state", &tmp))?;
        std::fs::rename(&tmp, path).map_err(Error::io("writing sync state", path))
    }

    pub fn remove(path: &Path) {
        let _ = std::fs::remove_file(path);
    }

    /// Files of `now` that differ from this state (by kind, size, mode, mtime or link target),
    /// and files of this state missing from `now`.
    pub fn delta(&self, now: &SyncManifest) -> SyncDelta {
        let changed = now
            .entries
            .iter()
            .filter(|e| self.entries.get(&e.path) != Some(*e))
            .cloned()
            .collect();
        let current: std::collections::HashSet<&str> = now.paths().collect();
        let deleted = self
            .entries
            .keys()
            .filter(|p| !current.contains(p.as_str()))
            .cloned()
            .collect();
        SyncDelta { changed, deleted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::EntryKind;

    fn entry(path: &str, size: u64, mtime: i128) -> SyncEntry {
        SyncEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size,
            mtime_ns: mtime,
            link_target: None,
        }
    }

    #[test]
    fn delta_sends_changed_and_new_and_deletes_removed() {
        let before = SyncManifest {
            entries: vec![entry("a", 1, 1), entry("b", 1, 1), entry("c", 1, 1)],
            ..Default::default()
        };
        let now = SyncManifest {
            entries: vec![entry("a", 1, 1), entry("b", 2, 5), entry("d", 1, 1)],
            ..Default::default()
        };
        let d = SyncState::from_manifest(&before).delta(&now);
        let changed: Vec<_> = d.changed.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(changed, ["b", "d"]);
        assert_eq!(d.deleted, ["c"]);
    }

    #[test]
    fn empty_state_sends_everything() {
        let now = SyncManifest {
            entries: vec![entry("a", 1, 1)],
            ..Default::default()
        };
        let d = SyncState::default().delta(&now);
        assert_eq!(d.changed.len(), 1);
        assert!(d.deleted.is_empty());
    }
}
