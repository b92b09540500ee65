//! The sync plan: which files one sync sends and which it deletes, from the local manifest
//! and the record of what was synced before.

use super::manifest::SyncEntry;
use super::state::SyncState;
use crate::engine::SyncSource;

/// What one sync must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPlan {
    /// Files to send.
    pub send: Vec<SyncEntry>,
    /// Files crabbox synced before that are gone locally (safe relative paths only).
    pub delete: Vec<String>,
    /// No trustworthy record of the box's tree: everything is sent.
    pub full: bool,
}

impl SyncPlan {
    /// Everything when there is no previous state, else only the delta.
    pub fn new(source: &SyncSource, previous: Option<&SyncState>) -> Self {
        match previous.filter(|s| !s.entries.is_empty()) {
            Some(state) => {
                let delta = state.delta(&source.manifest);
                SyncPlan {
                    send: delta.changed,
                    delete: delta
                        .deleted
                        .into_iter()
                        .filter(|p| source.delete && is_safe_relative(p))
                        .collect(),
                    full: false,
                }
            }
            None => SyncPlan {
                send: source.manifest.entries.clone(),
                delete: Vec::new(),
                full: true,
            },
        }
    }

    pub fn is_noop(&self) -> bool {
        !self.full && self.send.is_empty() && self.delete.is_empty()
    }
}

/// A relative path with no `..`, no empty or `.` segments and no NUL: safe to delete under
/// the workdir.
pub fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{EntryKind, SyncManifest};

    fn entry(path: &str, size: u64) -> SyncEntry {
        SyncEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size,
            mtime_ns: 1,
            link_target: None,
        }
    }

    fn source(entries: Vec<SyncEntry>) -> SyncSource {
        SyncSource {
            root: "/nonexistent".into(),
            delete: true,
            manifest: SyncManifest {
                entries,
                ..Default::default()
            },
        }
    }

    #[test]
    fn plan_deletes_nothing_when_sync_delete_is_off() {
        let before = SyncState::from_manifest(&source(vec![entry("a", 1), entry("b", 1)]).manifest);
        let mut now = source(vec![entry("a", 1)]);
        assert_eq!(SyncPlan::new(&now, Some(&before)).delete, ["b"]);
        now.delete = false;
        assert!(SyncPlan::new(&now, Some(&before)).delete.is_empty());
    }

    #[test]
    fn no_state_means_full_sync() {
        let s = source(vec![entry("a", 1), entry("b", 1)]);
        let plan = SyncPlan::new(&s, None);
        assert!(plan.full);
        assert_eq!(plan.send.len(), 2);
        let plan = SyncPlan::new(&s, Some(&SyncState::default()));
        assert!(plan.full, "an empty state is no record of the box");
    }

    #[test]
    fn warm_plan_sends_changes_and_deletes_only_synced_files() {
        let before = source(vec![entry("a", 1), entry("b", 1), entry("gone", 1)]);
        let state = SyncState::from_manifest(&before.manifest);
        let now = source(vec![entry("a", 1), entry("b", 2), entry("new", 1)]);
        let plan = SyncPlan::new(&now, Some(&state));
        assert!(!plan.full);
        let sent: Vec<_> = plan.send.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(sent, ["b", "new"]);
        assert_eq!(plan.delete, ["gone"]);
        let same = SyncPlan::new(&before, Some(&state));
        assert!(same.is_noop());
    }

    #[test]
    fn unsafe_delete_paths_are_dropped() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a//b",
            "./a",
            "a\0b",
        ] {
            assert!(!is_safe_relative(bad), "{bad:?}");
        }
        assert!(is_safe_relative("src/lib.rs"));
        assert!(is_safe_relative(".gitignore"));
        let before = SyncState::from_manifest(&source(vec![entry("../evil", 1)]).manifest);
        let now = source(vec![]);
        assert!(SyncPlan::new(&now, Some(&before)).delete.is_empty());
    }
}
