//! The cache file of [`super`] (listing_cache.rs): its stamps and listings, written and read
//! back whole (a damaged file reads as none).

use super::{Stamp, MAGIC};

/// A cache file's content (the listings borrowed from where they are).
pub(super) struct Kept<'a> {
    pub(super) root: Vec<u8>,
    pub(super) index: Stamp,
    pub(super) sources: Vec<(Vec<u8>, Option<Stamp>)>,
    pub(super) dirs: Vec<(Vec<u8>, Stamp, Option<Stamp>)>,
    pub(super) tracked: &'a [u8],
    pub(super) others: &'a [u8],
}

impl<'a> Kept<'a> {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut w = Writer(MAGIC.to_vec());
        w.bytes(&self.root);
        w.stamp(Some(self.index));
        w.u64(self.sources.len() as u64);
        for (path, stamp) in &self.sources {
            w.bytes(path);
            w.stamp(*stamp);
        }
        w.u64(self.dirs.len() as u64);
        for (rel, dir, ignore) in &self.dirs {
            w.bytes(rel);
            w.stamp(Some(*dir));
            w.stamp(*ignore);
        }
        w.bytes(self.tracked);
        w.bytes(self.others);
        w.0
    }

    pub(super) fn decode(bytes: &'a [u8]) -> Option<Kept<'a>> {
        let mut r = Reader(bytes.strip_prefix(MAGIC)?);
        let root = r.bytes()?.to_vec();
        let index = r.stamp()??;
        let mut sources = Vec::new();
        for _ in 0..r.u64()? {
            sources.push((r.bytes()?.to_vec(), r.stamp()?));
        }
        let mut dirs = Vec::new();
        for _ in 0..r.u64()? {
            dirs.push((r.bytes()?.to_vec(), r.stamp()??, r.stamp()?));
        }
        let tracked = r.bytes()?;
        let others = r.bytes()?;
        r.0.is_empty().then_some(Kept {
            root,
            index,
            sources,
            dirs,
            tracked,
            others,
        })
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn stamp(&mut self, s: Option<Stamp>) {
        match s {
            None => self.0.push(0),
            Some(s) => {
                self.0.push(1);
                for v in [s.dev, s.ino, s.size] {
                    self.u64(v);
                }
                for (secs, nanos) in [s.mtime, s.ctime] {
                    self.u64(secs as u64);
                    self.u64(nanos as u64);
                }
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u64(&mut self) -> Option<u64> {
        let (v, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*v))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        let (b, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(b)
    }
    /// `None` when damaged; `Some(None)` for a path that was not there.
    fn stamp(&mut self) -> Option<Option<Stamp>> {
        let (tag, rest) = self.0.split_first()?;
        self.0 = rest;
        match tag {
            0 => Some(None),
            1 => {
                let (dev, ino, size) = (self.u64()?, self.u64()?, self.u64()?);
                let mtime = (self.u64()? as i64, self.u64()? as i64);
                let ctime = (self.u64()? as i64, self.u64()? as i64);
                Some(Some(Stamp {
                    dev,
                    ino,
                    size,
                    mtime,
                    ctime,
                }))
            }
            _ => None,
        }
    }
}
