//! What a kept untracked listing of [`super`] (listing_cache.rs) is worth now: as kept, with
//! only a few changed directories listed again by git, or nothing.

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::{ListingBytes, Stamp, Unverified};

/// Directories changed since a listing, at most, for the rest of it to be kept and only
/// theirs listed again (more, and git lists the whole tree).
const RELIST_AT_MOST: usize = 16;

/// What a kept untracked listing is worth now.
pub(in crate::sync) enum Verified {
    /// Everything it depends on has its stamp: the listing as kept.
    Holds(ListingBytes),
    /// All holds but a few directories below the root (a file made, removed or renamed in
    /// one, or its `.gitignore` changed, which rules only below it): what is kept outside
    /// them stands, and git lists them again ([`Stale::relist`]).
    Stale(Stale),
    /// Git lists the whole tree again: the root or an ignore rule outside the tree changed,
    /// or too many directories.
    Void,
}

/// The files git reads ignore rules from besides the tree's `.gitignore`s, and their stamps.
pub(super) type Sources = Vec<(Vec<u8>, Option<Stamp>)>;

/// What a listing kept again after [`Stale::relist`] takes from the one before: the ignore
/// sources, found holding (finding them asks git twice), and the directories walked outside
/// the changed ones (only those are read again).
pub(in crate::sync) struct Held {
    pub(super) sources: Sources,
    pub(super) outside: Vec<Vec<u8>>,
    pub(super) changed: Vec<Vec<u8>>,
}

/// A kept untracked listing whose directories `dirs` changed.
pub(in crate::sync) struct Stale {
    root: PathBuf,
    /// Found holding: kept again as they are.
    sources: Sources,
    /// Every directory the kept listing's git walked.
    walked: Vec<Vec<u8>>,
    others: ListingBytes,
    /// Root-relative, none the root, none below another.
    dirs: Vec<Vec<u8>>,
}

impl Stale {
    /// `relisted` (from [`Stale::relist`]) is the kept listing, and every changed directory
    /// changed within the racy window of now (so a listing kept now could not vouch for it
    /// either).
    pub(in crate::sync) fn settling_as_kept(&self, relisted: &[u8]) -> bool {
        let Some(since) = super::racy_since(std::time::SystemTime::now(), super::RACY) else {
            return false;
        };
        relisted == &self.others[..]
            && self.dirs.iter().all(|d| {
                let at = self.root.join(std::ffi::OsStr::from_bytes(d));
                Stamp::of(&at).is_some_and(|s| s.is_racy(since))
            })
    }

    /// What a listing kept again takes from this one.
    pub(in crate::sync) fn into_held(self) -> Held {
        let dirs = &self.dirs;
        let outside = self
            .walked
            .into_iter()
            .filter(|w| !dirs.iter().any(|d| w == d || is_below(w, d)))
            .collect();
        Held {
            sources: self.sources,
            outside,
            changed: self.dirs,
        }
    }

    /// The changed directories.
    #[cfg(test)]
    pub(in crate::sync) fn dirs(&self) -> &[Vec<u8>] {
        &self.dirs
    }

    /// The kept listing with what git lists now under each changed directory in place of
    /// what was kept there (`git ls-files --others` given them as literal pathspecs: git
    /// reads the ignore rules on the way to each as a whole listing does); `None` when git
    /// fails.
    pub(in crate::sync) fn relist(&self) -> Option<Vec<u8>> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&self.root)
            .args(["ls-files", "-z", "--others", "--exclude-standard", "--"])
            .args(self.dirs.iter().map(|d| {
                let mut spec = d.clone();
                spec.push(b'/');
                std::ffi::OsString::from_vec(spec)
            }))
            .env("GIT_LITERAL_PATHSPECS", "1")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let under = |p: &[u8]| self.dirs.iter().any(|d| is_below(p, d));
        let mut names: Vec<&[u8]> = self
            .others
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty() && !under(p))
            .chain(out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut listing = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for n in names {
            listing.extend_from_slice(n);
            listing.push(0);
        }
        Some(listing)
    }
}

impl Unverified {
    /// The listing, as far as everything it depends on keeps its stamp.
    pub(in crate::sync) fn verify(self) -> Verified {
        let sources = self.sources.iter().all(|(path, stamp)| {
            Stamp::of_source(Path::new(std::ffi::OsStr::from_bytes(path))) == *stamp
        });
        if !sources {
            return Verified::Void;
        }
        let mut changed: Vec<&[u8]> = Vec::new();
        for (rel, dir, ignore) in &self.dirs {
            // A `.gitignore` made since changed its directory; one that was there may have
            // been edited in place.
            let at = self.root.join(std::ffi::OsStr::from_bytes(rel));
            let holds = Stamp::of(&at) == Some(*dir)
                && ignore.is_none_or(|s| Stamp::of(&at.join(".gitignore")) == Some(s));
            if holds {
                continue;
            }
            if rel.is_empty() || changed.len() == 4 * RELIST_AT_MOST {
                return Verified::Void;
            }
            // Below (or at) a directory holding a `.git` of its own, git given the one
            // pathspec may list nothing where a whole listing lists files: git lists the tree.
            if below_a_git(&self.root, rel) {
                return Verified::Void;
            }
            changed.push(rel);
        }
        if changed.is_empty() {
            return Verified::Holds(self.others);
        }
        // Shortest first, so a directory below another changed one is seen to be.
        changed.sort_unstable_by_key(|d| d.len());
        let mut dirs: Vec<Vec<u8>> = Vec::new();
        for d in changed {
            if !dirs.iter().any(|top| is_below(d, top)) {
                dirs.push(d.to_vec());
            }
        }
        if dirs.len() > RELIST_AT_MOST {
            return Verified::Void;
        }
        Verified::Stale(Stale {
            root: self.root,
            sources: self.sources,
            walked: self.dirs.into_iter().map(|(rel, _, _)| rel).collect(),
            others: self.others,
            dirs,
        })
    }
}

/// `rel` (a directory below the root) or a directory on the way to it holds a `.git`.
fn below_a_git(root: &Path, rel: &[u8]) -> bool {
    let mut at = root.to_path_buf();
    rel.split(|b| *b == b'/').any(|part| {
        at.push(std::ffi::OsStr::from_bytes(part));
        std::fs::symlink_metadata(at.join(".git")).is_ok()
    })
}

/// `path` is below directory `dir` (root-relative; everything but the root is below `""`).
pub(super) fn is_below(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() && !path.is_empty()
        || path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}
