//! What this machine last read of a sandbox's synced tree (its sync record and the scan's
//! listing), kept under the state directory so the next scan can confirm an unchanged part by
//! its SHA-256 instead of sending it again. Never trusted alone: the box hashes what it holds
//! now and sends it whole unless the hashes match, so a lost, stale or damaged cache costs a
//! full read, never a wrong tree.

use std::path::PathBuf;

use sha2::Digest;

use crate::scan::{Fresh, Known, Part, Watched};

/// Parts larger than this are not kept (the scan limit is far above any real tree's listing,
/// but a cache file should stay a cache).
const KEEP_AT_MOST: usize = 64 << 20;
/// How long a watcher is taken at its word: past this, a full reading (it also clears what
/// syncs killed outright left on the box, once they are older than any sync may take).
pub const TRUST_WATCH_FOR: std::time::Duration = std::time::Duration::from_secs(70 * 60);
/// A patch past this is dropped for a fresh full reading.
const KEEP_PATCH_AT_MOST: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct ScanCache {
    dir: PathBuf,
}

#[derive(Clone, Copy)]
enum What {
    Record,
    Listing,
    Watch,
    Patch,
    Lock,
}

impl ScanCache {
    pub fn new(dir: PathBuf) -> Self {
        ScanCache { dir }
    }

    fn path(&self, sandbox: &str, workdir: &str, what: What) -> PathBuf {
        let key = hex::encode(&sha2::Sha256::digest(workdir.as_bytes())[..8]);
        let ext = match what {
            What::Record => "record",
            What::Listing => "listing",
            What::Watch => "watch",
            What::Patch => "patch",
            What::Lock => "lock",
        };
        self.dir.join(format!("{}-{key}.{ext}", file_safe(sandbox)))
    }

    /// This machine's lock on what is kept for `workdir` on `sandbox`, held while a scan reads
    /// and updates it: two runs of one lease would otherwise each ask the watcher for (and make
    /// it forget) changes the other's patch then lacks, or each start a watcher. `None` when it
    /// cannot be taken (then nothing kept is used).
    pub async fn lock(&self, sandbox: &str, workdir: &str) -> Option<std::fs::File> {
        std::fs::create_dir_all(&self.dir).ok()?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path(sandbox, workdir, What::Lock))
            .ok()?;
        // Free (the usual case): taken here, with no hop to a blocking thread.
        if fs4::fs_std::FileExt::try_lock_exclusive(&file).ok()? {
            return Some(file);
        }
        tokio::task::spawn_blocking(move || {
            fs4::fs_std::FileExt::lock_exclusive(&file).ok()?;
            Some(file)
        })
        .await
        .ok()?
    }

    /// What is kept for `workdir` on `sandbox` (nothing when unreadable).
    pub fn load(&self, sandbox: &str, workdir: &str) -> Known {
        let read = |what| {
            std::fs::read(self.path(sandbox, workdir, what))
                .ok()
                .map(Part::of)
        };
        let watch = self.watched(sandbox, workdir);
        Known {
            record: read(What::Record),
            listing: read(What::Listing),
            patch: watch
                .as_ref()
                .filter(|w| w.patch.is_some())
                .and_then(|_| read(What::Patch)),
            watch,
        }
    }

    /// The watcher noted for `workdir` on `sandbox`, and what the scan that started it read.
    /// One older than [`TRUST_WATCH_FOR`] is not used: the tree is then read whole (which
    /// also clears what syncs killed outright left on the box).
    pub fn watched(&self, sandbox: &str, workdir: &str) -> Option<Watched> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        std::fs::read_to_string(self.path(sandbox, workdir, What::Watch))
            .ok()
            .and_then(|s| Watched::decode(&s))
            .filter(|w| now.saturating_sub(w.since) < TRUST_WATCH_FOR.as_secs() && w.since <= now)
    }

    /// Keeps what a scan sent whole, and which watcher (if any) watches since: the watcher's
    /// note is removed first and written last, so a crash between leaves none.
    pub fn keep(&self, sandbox: &str, workdir: &str, fresh: &Fresh<'_>) {
        let watch = self.path(sandbox, workdir, What::Watch);
        let _ = std::fs::remove_file(&watch);
        if let Some(record) = fresh.record {
            self.write(sandbox, workdir, What::Record, record);
        }
        if let Some(listing) = fresh.listing {
            self.write(sandbox, workdir, What::Listing, listing);
        }
        if let Some(w) = &fresh.watch {
            self.write(sandbox, workdir, What::Watch, w.encode().as_bytes());
        }
    }

    /// Forgets the watcher's note (the tree is about to change).
    pub fn forget_watch(&self, sandbox: &str, workdir: &str) {
        let _ = std::fs::remove_file(self.path(sandbox, workdir, What::Watch));
    }

    /// Lays what a sync changed (read afresh after watcher `w` forgot it) over the kept
    /// listing: the patch grows by `segment` and the note names it. A patch that cannot be
    /// read back or grows too large leaves no note (the next scan reads all).
    /// The new note, if kept.
    pub fn extend_patch(
        &self,
        sandbox: &str,
        workdir: &str,
        w: &Watched,
        segment: &[u8],
    ) -> Option<Watched> {
        let path = self.path(sandbox, workdir, What::Patch);
        let mut patch = match &w.patch {
            None => Vec::new(),
            Some(sha) => match std::fs::read(&path) {
                Ok(bytes) if Part::sha256_of(&bytes) == *sha => bytes,
                _ => return None,
            },
        };
        let kept = !patch.is_empty();
        patch.extend_from_slice(segment);
        if patch.len() > KEEP_PATCH_AT_MOST {
            return None;
        }
        // A kept patch (read and checked above, under the cache's lock) grows in place: an
        // append is much cheaper than a new file renamed over it, and the note still naming
        // the shorter patch until it is replaced (or a write cut short) only makes a reader
        // find the patch changed and read the box.
        let appended = kept
            && std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, segment))
                .is_ok();
        if !appended {
            self.write(sandbox, workdir, What::Patch, &patch);
        }
        let noted = Watched {
            patch: Some(Part::sha256_of(&patch)),
            ..w.clone()
        };
        self.keep_watch(sandbox, workdir, &noted);
        Some(noted)
    }

    /// Notes watcher `w` (written last, after what it vouches for).
    pub fn keep_watch(&self, sandbox: &str, workdir: &str, w: &Watched) {
        self.write(sandbox, workdir, What::Watch, w.encode().as_bytes());
    }

    /// Keeps the record a completed sync wrote to the box.
    /// The sync changed the tree: what its watcher saw is of no more use.
    pub fn keep_record(&self, sandbox: &str, workdir: &str, record: &[u8]) {
        let _ = std::fs::remove_file(self.path(sandbox, workdir, What::Watch));
        self.write(sandbox, workdir, What::Record, record);
    }

    /// Forgets everything kept of `sandbox` (it was deleted).
    pub fn forget(&self, sandbox: &str) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!("{}-", file_safe(sandbox));
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Writes atomically; a failure only means the next scan reads everything.
    fn write(&self, sandbox: &str, workdir: &str, what: What, bytes: &[u8]) {
        let path = self.path(sandbox, workdir, what);
        if bytes.len() > KEEP_AT_MOST {
            let _ = std::fs::remove_file(&path);
            return;
        }
        let written = std::fs::create_dir_all(&self.dir).and_then(|_| {
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            std::io::Write::write_all(&mut tmp, bytes)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// A sandbox id as a file name (E2B's are alphanumeric; anything else is replaced).
fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache in a directory of its own (removed when the first is dropped).
    fn cache() -> (tempfile::TempDir, ScanCache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = ScanCache::new(dir.path().join("scans"));
        (dir, cache)
    }

    /// Seconds since the epoch, as a note's `since`.
    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn parts_are_kept_per_sandbox_and_workdir_and_forgotten_with_the_sandbox() {
        let (_dir, cache) = cache();
        let now = now();
        assert!(cache.load("sbx", "/w").record.is_none());
        cache.keep(
            "sbx",
            "/w",
            &Fresh {
                record: Some(b"fa\0"),
                listing: Some(b"E\0"),
                watch: Some(Watched {
                    id: "ab12".into(),
                    listing: "cd34".into(),
                    record: None,
                    patch: None,
                    since: now,
                }),
            },
        );
        cache.keep_record("sbx", "/other", b"fb\0");
        let known = cache.load("sbx", "/w");
        let record = known.record.unwrap();
        assert_eq!(record.bytes, b"fa\0");
        assert_eq!(
            record.sha256,
            hex::encode(sha2::Sha256::digest(b"fa\0")),
            "the hash is of the bytes read back, not remembered"
        );
        assert_eq!(known.listing.unwrap().bytes, b"E\0");
        assert_eq!(
            known.watch.clone(),
            Some(Watched {
                id: "ab12".into(),
                listing: "cd34".into(),
                record: None,
                patch: None,
                since: now,
            })
        );
        // A watcher's word is taken for so long only.
        let old = Watched {
            since: now - TRUST_WATCH_FOR.as_secs(),
            ..known.watch.clone().unwrap()
        };
        cache.keep_watch("sbx", "/w", &old);
        assert_eq!(cache.load("sbx", "/w").watch, None);
        assert_eq!(cache.load("sbx", "/other").record.unwrap().bytes, b"fb\0");
        assert!(cache.load("other", "/w").record.is_none());
        cache.forget("sbx");
        assert!(cache.load("sbx", "/w").record.is_none());
        assert!(cache.load("sbx", "/other").record.is_none());
    }

    /// Each sync's segment grows the patch its note names (in place once there is one); a
    /// patch that is not the one its note names, or is gone, grows no more.
    #[test]
    fn a_patch_grows_by_each_segment_and_only_while_it_is_the_one_noted() {
        let (_dir, cache) = cache();
        let now = now();
        let w = Watched {
            id: "ab12".into(),
            listing: "cd34".into(),
            record: None,
            patch: None,
            since: now,
        };
        let sha = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
        let first = cache.extend_patch("sbx", "/w", &w, b"P\0a\0").unwrap();
        assert_eq!(first.patch, Some(sha(b"P\0a\0")));
        let second = cache.extend_patch("sbx", "/w", &first, b"P\0b\0").unwrap();
        assert_eq!(second.patch, Some(sha(b"P\0a\0P\0b\0")));
        let known = cache.load("sbx", "/w");
        assert_eq!(known.patch.unwrap().bytes, b"P\0a\0P\0b\0");
        assert_eq!(known.watch, Some(second.clone()));
        // The note before: its patch is no longer the one on disk.
        assert_eq!(cache.extend_patch("sbx", "/w", &first, b"P\0c\0"), None);
        let path = cache.path("sbx", "/w", What::Patch);
        std::fs::write(&path, b"P\0x\0P\0b\0").unwrap();
        assert_eq!(cache.extend_patch("sbx", "/w", &second, b"P\0c\0"), None);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(cache.extend_patch("sbx", "/w", &second, b"P\0c\0"), None);
        assert!(
            !path.exists(),
            "nothing is made for a note whose patch is gone"
        );
    }
}
