//! Splitting what one sync sends into chunks that are packed, sent and unpacked side by
//! side: files already compressed (images, archives, random data) go into stored chunks,
//! the rest into chunks of the box's best codec, each of a size that keeps every stage busy.

use std::io::Read;
use std::path::Path;

use super::archive::Codec;
use super::manifest::{EntryKind, SyncEntry};

/// A chunk aims at this many bytes of files...
const CHUNK_MIN: u64 = 4 << 20;
const CHUNK_MAX: u64 = 32 << 20;
/// ...and a sync is cut into about this many, so packing, sending and unpacking overlap.
const CHUNKS_WANTED: u64 = 8;
/// Files from this size on are sampled to see whether they compress.
const SAMPLE_FROM: u64 = 64 << 10;
const SAMPLE: usize = 16 << 10;

/// Files to pack together, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSpec {
    pub codec: Codec,
    pub entries: Vec<SyncEntry>,
    /// The chunk names the directories of its entries (see [`ChunkSpec::write`]).
    pub name_dirs: bool,
}

impl ChunkSpec {
    /// Files to pack through `codec`, naming no directory.
    pub fn new(codec: Codec, entries: Vec<SyncEntry>) -> Self {
        ChunkSpec {
            codec,
            entries,
            name_dirs: false,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Writes the chunk's archive. One chunk of several names every directory on the way to
    /// its entries before them: chunks unpack side by side into one directory, and GNU tar
    /// (1.34 at least) fails a file, "Cannot open: No such file or directory", when another
    /// tar made the directories on its way between its own failed open and its attempt to
    /// make them; a named directory it finds made is no failure.
    pub fn write<W: std::io::Write>(
        &self,
        root: &Path,
        out: W,
        on_progress: impl FnMut(u64),
    ) -> crate::error::Result<super::archive::ArchiveStats> {
        super::archive::write_entries(
            root,
            &self.entries,
            self.codec,
            self.name_dirs,
            out,
            on_progress,
        )
    }
}

/// Cuts `entries` into chunks: incompressible files stored, the others through `codec`.
/// Always at least one chunk (possibly empty), in a stable order.
pub fn split(root: &Path, entries: Vec<SyncEntry>, codec: Codec) -> Vec<ChunkSpec> {
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let target = (total / CHUNKS_WANTED).clamp(CHUNK_MIN, CHUNK_MAX);
    let (mut stored, mut packed) = (Vec::new(), Vec::new());
    for e in entries {
        if codec != Codec::Stored && e.kind == EntryKind::File && is_compressed(root, &e) {
            stored.push(e);
        } else {
            packed.push(e);
        }
    }
    let mut chunks = cut(packed, codec, target);
    chunks.extend(cut(stored, Codec::Stored, target));
    if chunks.is_empty() {
        chunks.push(ChunkSpec::new(codec, Vec::new()));
    }
    let several = chunks.len() > 1;
    for c in &mut chunks {
        c.name_dirs = several;
    }
    chunks
}

fn cut(entries: Vec<SyncEntry>, codec: Codec, target: u64) -> Vec<ChunkSpec> {
    let mut chunks = Vec::new();
    let mut current = ChunkSpec::new(codec, Vec::new());
    let mut bytes = 0;
    for e in entries {
        if bytes >= target && !current.entries.is_empty() {
            chunks.push(std::mem::replace(
                &mut current,
                ChunkSpec::new(codec, Vec::new()),
            ));
            bytes = 0;
        }
        bytes += e.size;
        current.entries.push(e);
    }
    if !current.entries.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Extensions of formats that are compressed already.
const COMPRESSED: &[&str] = &[
    "7z", "avif", "br", "bz2", "gif", "gz", "heic", "jar", "jpeg", "jpg", "lz4", "lzma", "mkv",
    "mov", "mp3", "mp4", "ogg", "pdf", "png", "rar", "tgz", "webm", "webp", "whl", "woff", "woff2",
    "xz", "zip", "zst",
];

/// The file is compressed already: by its extension, or (for a large one) because a sample
/// of it does not shrink.
fn is_compressed(root: &Path, e: &SyncEntry) -> bool {
    let ext = e.path.rsplit_once('.').map(|(_, x)| x.to_ascii_lowercase());
    if ext.is_some_and(|x| COMPRESSED.contains(&x.as_str())) {
        return true;
    }
    if e.size < SAMPLE_FROM {
        return false;
    }
    let mut sample = vec![0u8; SAMPLE];
    let Ok(mut f) = std::fs::File::open(root.join(&e.path)) else {
        return false;
    };
    let Ok(n) = f.read(&mut sample) else {
        return false;
    };
    sample.truncate(n);
    match zstd::bulk::compress(&sample, 1) {
        Ok(c) => c.len() * 100 > n * 95,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> SyncEntry {
        SyncEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size,
            mtime_ns: 0,
            link_target: None,
        }
    }

    #[test]
    fn compressed_files_are_stored_and_the_rest_is_cut_into_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let random: Vec<u8> = (0..100_000).map(|_| rand::random::<u8>()).collect();
        std::fs::write(dir.path().join("blob.bin"), &random).unwrap();
        std::fs::write(dir.path().join("text.txt"), "abc ".repeat(30_000)).unwrap();
        let mut entries = vec![
            entry("blob.bin", 100_000),
            entry("text.txt", 120_000),
            entry("pic.png", 10),
        ];
        for i in 0..40 {
            // Not on disk: not sampled, packed.
            entries.push(entry(&format!("src/{i}.rs"), 1 << 20));
        }
        let all_entries = entries.len();
        let chunks = split(dir.path(), entries, Codec::Zstd);
        let stored: Vec<&str> = chunks
            .iter()
            .filter(|c| c.codec == Codec::Stored)
            .flat_map(|c| c.entries.iter().map(|e| e.path.as_str()))
            .collect();
        assert_eq!(stored, ["blob.bin", "pic.png"]);
        let packed: Vec<_> = chunks.iter().filter(|c| c.codec == Codec::Zstd).collect();
        assert!(packed.len() >= 4, "{} chunks", packed.len());
        let all: usize = chunks.iter().map(|c| c.entries.len()).sum();
        assert_eq!(all, all_entries);
        assert_eq!(split(dir.path(), Vec::new(), Codec::Gzip).len(), 1);
        assert!(
            chunks.iter().all(|c| c.name_dirs),
            "several chunks name dirs"
        );
        let lone = split(dir.path(), vec![entry("text.txt", 120_000)], Codec::Zstd);
        assert!(!lone[0].name_dirs, "a lone chunk unpacks alone");
    }

    #[test]
    fn a_chunk_that_names_dirs_names_each_once_before_anything_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = [
            "a/b/c/1.txt",
            "a/b/c/2.txt",
            "a/b-x/3.txt",
            "a/b/d/4.txt",
            "top.txt",
        ];
        for p in paths {
            let full = dir.path().join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, "x").unwrap();
        }
        let mut spec = ChunkSpec::new(Codec::Stored, paths.iter().map(|p| entry(p, 1)).collect());
        let names = |spec: &ChunkSpec| {
            let mut bytes = Vec::new();
            spec.write(dir.path(), &mut bytes, |_| {}).unwrap();
            let mut archive = tar::Archive::new(&bytes[..]);
            let names: Vec<(bool, String)> = archive
                .entries()
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let dir = e.header().entry_type().is_dir();
                    let path = e.path().unwrap().to_string_lossy().into_owned();
                    (dir, path.trim_end_matches('/').to_string())
                })
                .collect();
            names
        };
        let plain = names(&spec);
        assert!(plain.iter().all(|(dir, _)| !dir), "{plain:?}");
        spec.name_dirs = true;
        let named = names(&spec);
        let dirs: Vec<&str> = named
            .iter()
            .filter(|(d, _)| *d)
            .map(|(_, p)| p.as_str())
            .collect();
        assert_eq!(dirs, ["a", "a/b", "a/b/c", "a/b-x", "a/b/d"]);
        for (i, (is_dir, path)) in named.iter().enumerate() {
            if !is_dir {
                let mut up = path.as_str();
                while let Some((parent, _)) = up.rsplit_once('/') {
                    let at = named.iter().position(|(d, p)| *d && p == parent);
                    assert!(at.is_some_and(|at| at < i), "{parent} before {path}");
                    up = parent;
                }
            }
        }
        let files: Vec<&str> = named
            .iter()
            .filter(|(d, _)| !d)
            .map(|(_, p)| p.as_str())
            .collect();
        assert_eq!(files, paths);
    }
}
