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
}

impl ChunkSpec {
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
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
        chunks.push(ChunkSpec {
            codec,
            entries: Vec::new(),
        });
    }
    chunks
}

fn cut(entries: Vec<SyncEntry>, codec: Codec, target: u64) -> Vec<ChunkSpec> {
    let mut chunks = Vec::new();
    let mut current = ChunkSpec {
        codec,
        entries: Vec::new(),
    };
    let mut bytes = 0;
    for e in entries {
        if bytes >= target && !current.entries.is_empty() {
            chunks.push(std::mem::replace(
                &mut current,
                ChunkSpec {
                    codec,
                    entries: Vec::new(),
                },
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
    }
}
