//! What the last sync of a lease's tree left on the box, remembered on this machine
//! (`<state dir>/sync-memo/<lease>[@workspace].json`, and the manifest itself beside it as
//! `.tree`): these local files on a box tree the provider named `state`. Only a hint: it is
//! used while the provider confirms the box still holds that very tree
//! ([`crate::provider::BoxSession::unchanged_since`]); then the new manifest is planned against
//! the kept one ([`crate::sync::SyncPlan::delta`]) without reading the box, and nothing is
//! sent when they are the same.

use std::path::{Path, PathBuf};

use crate::sync::{EntryKind, KeptEntry, SyncManifest};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct SyncMemo {
    /// [`tree_hash`] of the `.tree` file: the manifest the box holds.
    pub tree: String,
    pub state: String,
    pub workdir: String,
    pub delete: bool,
}

/// Format tag of a kept manifest.
const TREE_MAGIC: &[u8] = b"crabbox-tree-3\n";

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

    /// Remembers that the box's tree named `state` holds `manifest`'s files. Kept if it can
    /// be; a memo that cannot be written is one sync less skipped.
    pub fn keep(path: &Path, manifest: &SyncManifest, state: String, workdir: &str, delete: bool) {
        match Self::keep_tree(path, manifest) {
            Some(tree) => Self::name(path, tree, state, workdir, delete),
            None => Self::forget(path),
        }
    }

    /// Writes a memo's tree, before the memo that names it (a sync writes it while the box
    /// applies), a piece at a time. Its hash, if it was written.
    pub fn keep_tree(path: &Path, manifest: &SyncManifest) -> Option<String> {
        let mut hash = twox_hash::XxHash3_128::new();
        crate::paths::write_atomic_with(&tree_path(path), |out| {
            encode_to(manifest, |piece| {
                hash.write(piece);
                out.write_all(piece)
            })
        })
        .ok()?;
        Some(hex128(hash.finish_128()))
    }

    /// Remembers that the box's tree named `state` holds the tree [`SyncMemo::keep_tree`] wrote
    /// (hash `tree`). The tree first: a memo is never read beside another memo's tree (its
    /// hash says).
    pub fn name(path: &Path, tree: String, state: String, workdir: &str, delete: bool) {
        let memo = SyncMemo {
            tree,
            state,
            workdir: workdir.to_string(),
            delete,
        };
        let written = serde_json::to_vec(&memo)
            .ok()
            .is_some_and(|body| crate::paths::write_atomic(path, &body).is_ok());
        if !written {
            Self::forget(path);
        }
    }

    /// The manifest this memo names, if it is kept whole (the very bytes written with it).
    pub fn kept(&self, path: &Path) -> Option<KeptTree> {
        let bytes = crate::paths::read_kept(&tree_path(path)).ok()?;
        if tree_hash(&bytes) != self.tree {
            return None;
        }
        let tree = KeptTree { bytes };
        // Read through once: whole, and sorted by path (as a manifest is).
        let mut count = 0usize;
        let mut last: Option<&str> = None;
        for e in tree.iter() {
            let e = e?;
            if last.is_some_and(|l| l >= e.path) {
                return None;
            }
            last = Some(e.path);
            count += 1;
        }
        (count == tree.len()?).then_some(tree)
    }

    pub fn forget(path: &Path) {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(tree_path(path));
    }
}

/// A kept tree's hash: XXH3-128, which tells a tree from another (a memo beside another
/// memo's tree) and a damaged one from a whole one (it is no defence against a forger, who
/// could write the memo as well); tens of times cheaper than SHA-256 on a large tree's
/// megabytes, read and written by every warm run.
fn tree_hash(bytes: &[u8]) -> String {
    hex128(twox_hash::XxHash3_128::oneshot(bytes))
}

fn hex128(hash: u128) -> String {
    format!("{hash:032x}")
}

fn tree_path(memo: &Path) -> PathBuf {
    memo.with_extension("tree")
}

/// A manifest's entries, compactly: read back without a copy of each path (reading the JSON
/// of a large tree would cost more than the plan saves).
#[cfg(test)]
fn encode(m: &SyncManifest) -> Vec<u8> {
    let mut out = Vec::new();
    encode_to(m, |piece| {
        out.extend_from_slice(piece);
        Ok(())
    })
    .expect("writing to memory");
    out
}

/// [`encode`], given to `write` in pieces of about [`PIECE`] bytes.
fn encode_to(
    m: &SyncManifest,
    mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(PIECE + 4096);
    out.extend_from_slice(TREE_MAGIC);
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
        if out.len() >= PIECE {
            write(&out)?;
            out.clear();
        }
    }
    write(&out)
}

/// How much of a tree is encoded before it is written.
const PIECE: usize = 64 << 10;

/// A kept manifest's bytes, checked whole ([`SyncMemo::kept`]).
pub(super) struct KeptTree {
    bytes: crate::paths::KeptBytes,
}

impl KeptTree {
    fn len(&self) -> Option<usize> {
        let body = self.bytes.strip_prefix(TREE_MAGIC)?;
        usize::try_from(u64::from_le_bytes(body.get(..8)?.try_into().ok()?)).ok()
    }

    /// The entries in order, borrowed from the bytes; `None` where they are damaged.
    fn iter(&self) -> impl Iterator<Item = Option<KeptEntry<'_>>> {
        let mut rest = self.bytes.strip_prefix(TREE_MAGIC).and_then(|b| b.get(8..));
        std::iter::from_fn(move || {
            let r = rest.as_mut()?;
            if r.is_empty() {
                return None;
            }
            let e = read_entry(r);
            if e.is_none() {
                rest = None;
            }
            Some(e)
        })
    }

    /// The entries in order (the tree was checked whole when kept).
    pub fn entries(&self) -> impl Iterator<Item = KeptEntry<'_>> {
        self.iter().map_while(|e| e)
    }
}

/// One entry of [`encode`]'s output, moving `r` past it.
fn read_entry<'a>(r: &mut &'a [u8]) -> Option<KeptEntry<'a>> {
    let mut take = |n: usize| -> Option<&'a [u8]> {
        let (head, tail) = r.split_at_checked(n)?;
        *r = tail;
        Some(head)
    };
    let mut len = || usize::try_from(u64::from_le_bytes(take(8)?.try_into().ok()?)).ok();
    let n = len()?;
    let path = std::str::from_utf8(take(n)?).ok()?;
    let kind = match take(1)?[0] {
        0 => EntryKind::File,
        1 => EntryKind::Symlink,
        _ => return None,
    };
    let mode = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let size = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let mtime_ns = i128::from_le_bytes(take(16)?.try_into().ok()?);
    let link_target = match take(1)?[0] {
        0 => None,
        1 => {
            let n = usize::try_from(u64::from_le_bytes(take(8)?.try_into().ok()?)).ok()?;
            Some(std::str::from_utf8(take(n)?).ok()?)
        }
        _ => return None,
    };
    Some(KeptEntry {
        path,
        kind,
        mode,
        size,
        mtime_ns,
        link_target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::SyncEntry;

    fn entry(p: &str, link: Option<&str>) -> SyncEntry {
        SyncEntry {
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
        }
    }

    #[test]
    fn a_kept_tree_reads_back_and_a_damaged_or_foreign_one_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m/cbx_a.json");
        let m = SyncManifest {
            entries: vec![entry("a/é.txt", None), entry("b", Some("../x"))],
            total_bytes: 14,
            warnings: Vec::new(),
        };
        SyncMemo::keep(&path, &m, "s1".into(), "/w", true);
        let memo = SyncMemo::read(&path).unwrap();
        assert!(memo.fits("/w", true) && !memo.fits("/w", false));
        assert_eq!(memo.state, "s1");
        let kept = memo.kept(&path).unwrap();
        let back: Vec<KeptEntry<'_>> = kept.entries().collect();
        let want: Vec<KeptEntry<'_>> = m.entries.iter().map(KeptEntry::from).collect();
        assert_eq!(back, want);
        // Mapped: not held while the file is written in place below.
        drop(back);
        drop(kept);

        let bytes = std::fs::read(tree_path(&path)).unwrap();
        for cut in [1, 9, bytes.len() / 2] {
            std::fs::write(tree_path(&path), &bytes[..bytes.len() - cut]).unwrap();
            assert!(memo.kept(&path).is_none(), "cut {cut}");
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(tree_path(&path), &flipped).unwrap();
        assert!(memo.kept(&path).is_none(), "changed bytes");
        let other = SyncManifest {
            entries: vec![entry("c", None)],
            ..m.clone()
        };
        std::fs::write(tree_path(&path), encode(&other)).unwrap();
        assert!(memo.kept(&path).is_none(), "another manifest's tree");
        std::fs::write(tree_path(&path), &bytes).unwrap();
        SyncMemo::forget(&path);
        assert!(SyncMemo::read(&path).is_none() && !tree_path(&path).exists());
    }

    #[test]
    fn a_damaged_or_unsorted_tree_is_never_read_even_with_a_matching_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cbx_b.json");
        let unsorted = SyncManifest {
            entries: vec![entry("b", None), entry("a", None)],
            ..Default::default()
        };
        let mut short = encode(&SyncManifest {
            entries: vec![entry("a", None)],
            ..Default::default()
        });
        short[TREE_MAGIC.len()] = 2; // claims two entries
        for bytes in [encode(&unsorted), short] {
            std::fs::create_dir_all(dir.path()).unwrap();
            std::fs::write(tree_path(&path), &bytes).unwrap();
            let memo = SyncMemo {
                tree: tree_hash(&bytes),
                state: "s".into(),
                workdir: "/w".into(),
                delete: true,
            };
            assert!(memo.kept(&path).is_none());
        }
    }
}
