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
const TREE_MAGIC: &[u8] = b"crabbox-tree-4\n";

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
        // Read through once: whole (every record, all the text), and sorted by path (as a
        // manifest is).
        let (count, text, records) = tree.parts()?;
        let (mut n, mut used) = (0usize, 0usize);
        let mut last: Option<&str> = None;
        for e in read_entries(text, records) {
            let e = e?;
            if last.is_some_and(|l| l >= e.path) {
                return None;
            }
            last = Some(e.path);
            n += 1;
            used += e.path.len() + e.link_target.map_or(0, str::len);
        }
        (n == count && used == text.len()).then_some(tree)
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
/// of a large tree would cost more than the plan saves). After the tag and the number of
/// entries, every entry's path and link target as one text (checked as UTF-8 whole when read,
/// not path by path), then each entry's fixed-size record ([`RECORD`]).
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

/// Bytes of an entry's record: the lengths of its path and its link target (`NO_LINK` for
/// none) in the text, its kind, mode, size and mtime.
const RECORD: usize = 4 + 4 + 1 + 4 + 8 + 16;
/// The link-target length of an entry that is no symlink.
const NO_LINK: u32 = u32::MAX;

/// [`encode`], given to `write` in pieces of about [`PIECE`] bytes; an error for a path or
/// link target too long to record (then nothing is kept).
fn encode_to(
    m: &SyncManifest,
    mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let too_long = || std::io::Error::other("a path too long to keep");
    let len32 = |s: &str| u32::try_from(s.len()).ok().filter(|n| *n != NO_LINK);
    let text_len: usize = m
        .entries
        .iter()
        .map(|e| e.path.len() + e.link_target.as_ref().map_or(0, String::len))
        .sum();
    let mut out = Vec::with_capacity(PIECE + 4096);
    out.extend_from_slice(TREE_MAGIC);
    out.extend_from_slice(&(m.entries.len() as u64).to_le_bytes());
    out.extend_from_slice(&(text_len as u64).to_le_bytes());
    for e in &m.entries {
        out.extend_from_slice(e.path.as_bytes());
        if let Some(t) = &e.link_target {
            out.extend_from_slice(t.as_bytes());
        }
        if out.len() >= PIECE {
            write(&out)?;
            out.clear();
        }
    }
    for e in &m.entries {
        let path = len32(&e.path).ok_or_else(too_long)?;
        let link = match &e.link_target {
            Some(t) => len32(t).ok_or_else(too_long)?,
            None => NO_LINK,
        };
        out.extend_from_slice(&path.to_le_bytes());
        out.extend_from_slice(&link.to_le_bytes());
        out.push(match e.kind {
            EntryKind::File => 0,
            EntryKind::Symlink => 1,
        });
        out.extend_from_slice(&e.mode.to_le_bytes());
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.mtime_ns.to_le_bytes());
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
    /// The number of entries, the text of their paths and link targets, and their records;
    /// `None` where the tree is damaged (its text not UTF-8 among others).
    fn parts(&self) -> Option<(usize, &str, &[u8])> {
        let body = self.bytes.strip_prefix(TREE_MAGIC)?;
        let (count, body) = body.split_at_checked(8)?;
        let (text_len, body) = body.split_at_checked(8)?;
        let count = usize::try_from(u64::from_le_bytes(count.try_into().ok()?)).ok()?;
        let text_len = usize::try_from(u64::from_le_bytes(text_len.try_into().ok()?)).ok()?;
        let (text, records) = body.split_at_checked(text_len)?;
        let text = std::str::from_utf8(text).ok()?;
        (records.len() == count.checked_mul(RECORD)?).then_some((count, text, records))
    }

    /// The entries in order (the tree was checked whole when kept; its text is checked as
    /// UTF-8 again, whole, once).
    pub fn entries(&self) -> impl Iterator<Item = KeptEntry<'_>> {
        let (text, records) = self
            .parts()
            .map_or(("", &[][..]), |(_, text, records)| (text, records));
        read_entries(text, records).map_while(|e| e)
    }
}

/// The entries of `records`, in order, their paths and link targets read from `text`; `None`
/// for a damaged one, then nothing more.
fn read_entries<'a>(
    text: &'a str,
    records: &'a [u8],
) -> impl Iterator<Item = Option<KeptEntry<'a>>> {
    let mut records = Some(records.chunks(RECORD));
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let entry = read_entry(records.as_mut()?.next()?, text, &mut at);
        if entry.is_none() {
            records = None;
        }
        Some(entry)
    })
}

/// The entry of `record` (its path and link target read from `text` at `at`, moved past
/// them).
fn read_entry<'a>(record: &[u8], text: &'a str, at: &mut usize) -> Option<KeptEntry<'a>> {
    let record: &[u8; RECORD] = record.try_into().ok()?;
    let u32_at = |i: usize| u32::from_le_bytes(record[i..i + 4].try_into().expect("4 bytes"));
    let mut take = |n: u32| -> Option<&'a str> {
        let end = at.checked_add(usize::try_from(n).ok()?)?;
        let s = text.get(*at..end)?;
        *at = end;
        Some(s)
    };
    let path = take(u32_at(0))?;
    let link_target = match u32_at(4) {
        NO_LINK => None,
        n => Some(take(n)?),
    };
    let kind = match record[8] {
        0 => EntryKind::File,
        1 => EntryKind::Symlink,
        _ => return None,
    };
    Some(KeptEntry {
        path,
        kind,
        mode: u32_at(9),
        size: u64::from_le_bytes(record[13..21].try_into().expect("8 bytes")),
        mtime_ns: i128::from_le_bytes(record[21..37].try_into().expect("16 bytes")),
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

    impl SyncMemo {
        /// A memo naming `bytes` as its tree, kept in `dir`, read back.
        fn read_tree_for_test(dir: &tempfile::TempDir, bytes: &[u8]) -> Option<Vec<String>> {
            let path = dir.path().join("cbx_t.json");
            std::fs::write(tree_path(&path), bytes).unwrap();
            let memo = SyncMemo {
                tree: tree_hash(bytes),
                state: "s".into(),
                workdir: "/w".into(),
                delete: true,
            };
            let kept = memo.kept(&path)?;
            Some(kept.entries().map(|e| e.path.to_string()).collect())
        }
    }

    #[test]
    fn a_damaged_or_unsorted_tree_is_never_read_even_with_a_matching_hash() {
        let dir = tempfile::tempdir().unwrap();
        let unsorted = SyncManifest {
            entries: vec![entry("b", None), entry("a", None)],
            ..Default::default()
        };
        let mut short = encode(&SyncManifest {
            entries: vec![entry("a", None)],
            ..Default::default()
        });
        short[TREE_MAGIC.len()] = 2; // claims two entries
        let one = encode(&SyncManifest {
            entries: vec![entry("ab", None)],
            ..Default::default()
        });
        let text_at = TREE_MAGIC.len() + 16;
        // Text no record reads: one more byte in it, and counted.
        let mut extra = one.clone();
        extra.insert(text_at + 2, b'c');
        extra[TREE_MAGIC.len() + 8] = 3;
        // Text that is not UTF-8.
        let mut not_utf8 = one.clone();
        not_utf8[text_at] = 0xff;
        // A record whose path runs past the text.
        let mut past = one.clone();
        past[text_at + 2] = 3;
        assert_eq!(
            SyncMemo::read_tree_for_test(&dir, &one),
            Some(vec!["ab".to_string()])
        );
        for (what, bytes) in [
            ("unsorted", encode(&unsorted)),
            ("short", short),
            ("extra text", extra),
            ("not UTF-8", not_utf8),
            ("a path past the text", past),
        ] {
            assert_eq!(SyncMemo::read_tree_for_test(&dir, &bytes), None, "{what}");
        }
    }
}
