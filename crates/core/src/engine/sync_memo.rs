//! What the last sync of a lease's tree left on the box, remembered on this machine
//! (`<state dir>/sync-memo/<lease>[@workspace].json`, and the manifest itself beside it as
//! `.tree`): these local files (by digest) on a box tree the provider named `state`. Only a
//! hint: it is used while the provider confirms the box still holds that very tree
//! ([`crate::provider::BoxSession::unchanged_since`]); then an unchanged manifest needs no
//! sync, and a changed one is planned against the kept manifest
//! ([`crate::sync::SyncPlan::delta`]) without reading the box.

use std::path::{Path, PathBuf};

use crate::sync::{EntryKind, SyncEntry, SyncManifest};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct SyncMemo {
    pub manifest: String,
    pub state: String,
    pub workdir: String,
    pub delete: bool,
}

/// Format tag of a kept manifest.
const TREE_MAGIC: &[u8] = b"crabbox-tree-1\n";

impl SyncMemo {
    pub fn path(state_dir: &Path, lease: &str, workspace: &str) -> PathBuf {
        state_dir.join("sync-memo").join(format!(
            "{}.json",
            crate::workspace::lock_name(lease, workspace)
        ))
    }

    pub fn read(path: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    pub fn fits(&self, workdir: &str, delete: bool) -> bool {
        self.workdir == workdir && self.delete == delete
    }

    /// Remembers that the box's tree named `state` holds `manifest`'s files (`digest` is
    /// [`SyncManifest::digest`]). Kept if it can be; a memo that cannot be written is one
    /// sync less skipped.
    pub fn keep(
        path: &Path,
        manifest: &SyncManifest,
        digest: String,
        state: String,
        workdir: &str,
        delete: bool,
    ) {
        let memo = SyncMemo {
            manifest: digest,
            state,
            workdir: workdir.to_string(),
            delete,
        };
        let (Ok(body), tree) = (serde_json::to_vec(&memo), encode(manifest)) else {
            return Self::forget(path);
        };
        // The tree first: a memo is never read beside another memo's tree (its digest says).
        if crate::paths::write_atomic(&tree_path(path), &tree).is_err()
            || crate::paths::write_atomic(path, &body).is_err()
        {
            Self::forget(path);
        }
    }

    /// The manifest this memo names, if it is kept whole (its digest is the memo's).
    pub fn tree(&self, path: &Path) -> Option<SyncManifest> {
        let m = decode(&std::fs::read(tree_path(path)).ok()?)?;
        (m.digest() == self.manifest).then_some(m)
    }

    pub fn forget(path: &Path) {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(tree_path(path));
    }
}

fn tree_path(memo: &Path) -> PathBuf {
    memo.with_extension("tree")
}

/// A manifest's entries, compactly (the JSON of a large tree would cost more to read than the
/// plan saves).
fn encode(m: &SyncManifest) -> Vec<u8> {
    let mut out = TREE_MAGIC.to_vec();
    out.extend_from_slice(&(m.entries.len() as u64).to_le_bytes());
    let text = |b: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    };
    for e in &m.entries {
        text(e.path.as_bytes(), &mut out);
        out.push(match e.kind {
            EntryKind::File => 0,
            EntryKind::Symlink => 1,
        });
        out.extend_from_slice(&e.mode.to_le_bytes());
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.mtime_ns.to_le_bytes());
        match &e.link_target {
            Some(t) => {
                out.push(1);
                text(t.as_bytes(), &mut out);
            }
            None => out.push(0),
        }
    }
    out
}

/// [`encode`]'s output read back; `None` when damaged or not sorted by path.
fn decode(bytes: &[u8]) -> Option<SyncManifest> {
    let mut rest = bytes.strip_prefix(TREE_MAGIC)?;
    let r = &mut rest;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = r.split_at_checked(n)?;
        *r = tail;
        Some(head)
    };
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let count = usize::try_from(u64_of(take(8)?)).ok()?;
    let mut entries = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let len = usize::try_from(u64_of(take(8)?)).ok()?;
        let path = String::from_utf8(take(len)?.to_vec()).ok()?;
        let kind = match take(1)?[0] {
            0 => EntryKind::File,
            1 => EntryKind::Symlink,
            _ => return None,
        };
        let mode = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let size = u64_of(take(8)?);
        let mtime_ns = i128::from_le_bytes(take(16)?.try_into().ok()?);
        let link_target = match take(1)?[0] {
            0 => None,
            1 => {
                let len = usize::try_from(u64_of(take(8)?)).ok()?;
                Some(String::from_utf8(take(len)?.to_vec()).ok()?)
            }
            _ => return None,
        };
        entries.push(SyncEntry {
            path,
            kind,
            mode,
            size,
            mtime_ns,
            link_target,
        });
    }
    if !rest.is_empty() || !entries.is_sorted_by(|a, b| a.path < b.path) {
        return None;
    }
    let total_bytes = entries.iter().map(|e| e.size).sum();
    Some(SyncManifest {
        entries,
        total_bytes,
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_tree_reads_back_and_a_damaged_or_foreign_one_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m/cbx_a.json");
        let entry = |p: &str, link: Option<&str>| SyncEntry {
            path: p.into(),
            kind: if link.is_some() {
                EntryKind::Symlink
            } else {
                EntryKind::File
            },
            mode: 0o755,
            size: 7,
            mtime_ns: -1_500_000_000,
            link_target: link.map(String::from),
        };
        let m = SyncManifest {
            entries: vec![entry("a/é.txt", None), entry("b", Some("../x"))],
            total_bytes: 14,
            warnings: Vec::new(),
        };
        SyncMemo::keep(&path, &m, m.digest(), "s1".into(), "/w", true);
        let memo = SyncMemo::read(&path).unwrap();
        assert!(memo.fits("/w", true) && !memo.fits("/w", false));
        assert_eq!(memo.state, "s1");
        assert_eq!(memo.tree(&path), Some(m.clone()));

        let bytes = std::fs::read(tree_path(&path)).unwrap();
        for cut in [1, 9, bytes.len() / 2] {
            std::fs::write(tree_path(&path), &bytes[..bytes.len() - cut]).unwrap();
            assert_eq!(memo.tree(&path), None, "cut {cut}");
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(tree_path(&path), &flipped).unwrap();
        assert_eq!(memo.tree(&path), None, "a changed entry: another digest");
        let other = SyncManifest {
            entries: vec![entry("c", None)],
            ..m.clone()
        };
        std::fs::write(tree_path(&path), encode(&other)).unwrap();
        assert_eq!(memo.tree(&path), None, "another manifest's tree");
        std::fs::write(tree_path(&path), &bytes).unwrap();
        SyncMemo::forget(&path);
        assert!(SyncMemo::read(&path).is_none() && !tree_path(&path).exists());
    }
}
