//! `git ls-files` of a work tree (tracked, and untracked-not-ignored), each listing reused
//! from the [`ListingCache`] while it holds, and the listed files stat'ed while git still
//! walks (a part of [`super`], manifest.rs).

use std::path::Path;
use std::process::Command;

use super::super::listing_cache::{Held, ListingBytes, ListingCache, Unverified, Verified};
use super::{git_root, stat_all, stat_parallel, stat_spawn, walk_files, Filters, Stated};
use crate::error::{Error, Result};

/// `git ls-files` of the tracked files and, side by side, of the untracked ones git does not
/// ignore (the slower of the two: it walks the tree); either reused from `cache` while what
/// it depends on is unchanged.
pub(super) struct GitListing {
    cached: Listing,
    others: Listing,
    cache: Option<ListingCache>,
}

/// One `git ls-files`: running, its output reused, or a kept output to verify (and list
/// afresh if it no longer holds).
enum Listing {
    Running(std::process::Child),
    Kept(ListingBytes),
    Unverified(Unverified),
}

/// Whether a listing is kept for the next run, and how.
enum Keep {
    /// Not: reused as kept, or listed again with nothing to keep that the kept one lacks.
    Not,
    /// Listed whole: kept walking the whole tree.
    Anew,
    /// Listed again in a few directories: kept walking only those.
    With(Held),
}

impl Listing {
    /// What it listed (`None` when git will not read a work tree here), whether git listed
    /// (some of) it now, and how it is to be kept.
    fn output(self, root: &Path) -> Result<(Option<ListingBytes>, bool, Keep)> {
        let running = match self {
            Listing::Kept(bytes) => return Ok((Some(bytes), false, Keep::Not)),
            Listing::Unverified(kept) => match kept.verify() {
                Verified::Holds(bytes) => return Ok((Some(bytes), false, Keep::Not)),
                // Only the changed directories are listed again (git walks them alone).
                Verified::Stale(stale) => match stale.relist() {
                    Some(listed) => {
                        // Changed so lately that they cannot be vouched for yet, and listing
                        // the same: keeping them again would change nothing (an edit saved by
                        // rename, run after run).
                        let keep = if stale.settling_as_kept(&listed) {
                            Keep::Not
                        } else {
                            Keep::With(stale.into_held())
                        };
                        return Ok((Some(ListingBytes::Listed(listed)), true, keep));
                    }
                    None => ls_files(root, OTHERS)
                        .map_err(Error::io("running git ls-files in", root))?,
                },
                Verified::Void => {
                    ls_files(root, OTHERS).map_err(Error::io("running git ls-files in", root))?
                }
            },
            Listing::Running(child) => child,
        };
        let listed = git_output(root, running.wait_with_output())?;
        Ok((listed.map(ListingBytes::Listed), true, Keep::Anew))
    }

    fn stop(self) {
        if let Listing::Running(mut child) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl GitListing {
    /// Both listings started (or reused); `None` where there is no git to ask.
    pub(super) fn start(root: &Path, cache_dir: Option<&Path>) -> Result<Option<Self>> {
        let cache = cache_dir.and_then(|d| ListingCache::open(d, root));
        let reused = cache.as_ref().and_then(ListingCache::reuse);
        let (tracked, others) = match reused {
            // Verified while the tracked files are read.
            Some(r) => (Some(r.tracked), Some(r.others)),
            None => (None, None),
        };
        let others = match others {
            Some(kept) => Listing::Unverified(kept),
            None => match ls_files(root, OTHERS) {
                Ok(c) => Listing::Running(c),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io("running git ls-files in", root)(e)),
            },
        };
        let cached = match tracked {
            Some(bytes) => Listing::Kept(bytes),
            None => match ls_files(root, &["--cached"]) {
                Ok(c) => Listing::Running(c),
                Err(e) => {
                    others.stop();
                    return Err(Error::io("running git ls-files in", root)(e));
                }
            },
        };
        Ok(Some(GitListing {
            cached,
            others,
            cache,
        }))
    }

    /// The entries of every listed file `filters` keep: the tracked ones are read on a few
    /// threads while git still lists the untracked ones. Outside a work tree git will read
    /// (none, or one it refuses), the tree is walked instead.
    pub(super) fn stat(self, root: &Path, filters: &Filters<'_>) -> Result<Stated> {
        let GitListing {
            cached,
            others,
            cache,
        } = self;
        let (tracked_bytes, tracked_fresh, _) = cached.output(root)?;
        let Some(tracked_bytes) = tracked_bytes else {
            others.stop();
            return stat_parallel(root, &walk_files(root)?, filters);
        };
        let mut mixed = false;
        let mut entries = Vec::new();
        let (joined, untracked) = std::thread::scope(|scope| {
            let tracked = stat_spawn(scope, root, &tracked_bytes, filters, &mut entries);
            let listed = others.output(root);
            let untracked = listed.and_then(|(o, others_fresh, keep)| {
                let o = o.ok_or_else(|| {
                    Error::Sync(format!(
                        "git ls-files --others failed in {} after --cached worked",
                        root.display()
                    ))
                })?;
                // A reused tracked listing beside a fresh untracked one: the index must not have
                // moved between them (a file `git add`ed meanwhile would be in neither).
                mixed = !tracked_fresh && others_fresh;
                // Kept for the next run while the tracked files are read (a fresh tracked
                // listing comes with a fresh untracked one: nothing was reused).
                let keep = match keep {
                    Keep::Not => None,
                    Keep::Anew => Some(None),
                    Keep::With(held) => Some(Some(held)),
                };
                let keeping = cache.as_ref().zip(keep).map(|(c, held)| {
                    // The tracked listing outlives the scope; the untracked one is copied.
                    let (tracked, others) = (&tracked_bytes[..], o.to_vec());
                    scope.spawn(move || c.keep(tracked, &others, held))
                });
                let stated = stat_all(root, &o, filters, Vec::new());
                if let Some(k) = keeping {
                    let _ = k.join();
                }
                stated
            });
            (tracked.join(), untracked)
        });
        // SAFETY: `entries` is the vector the tracked files' job was lent, untouched since.
        let tracked = unsafe { joined.adopt(&mut entries) };
        let mut found = tracked?.map_entries(|()| entries);
        found.append(untracked?);
        if mixed && cache.as_ref().is_some_and(ListingCache::index_moved) {
            return match GitListing::start(root, None)? {
                Some(git) => git.stat(root, filters),
                None => Err(Error::Sync(format!(
                    "git stopped listing {} while it was being read",
                    root.display()
                ))),
            };
        }
        Ok(found)
    }
}

/// `git ls-files` of the untracked files git does not ignore.
const OTHERS: &[&str] = &["--others", "--exclude-standard"];

/// `git ls-files <which> -z` in `root`, started.
fn ls_files(root: &Path, which: &[&str]) -> std::io::Result<std::process::Child> {
    Command::new("git")
        .arg("-C")
        .arg(root)
        .arg("ls-files")
        .args(which)
        .arg("-z")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
}

/// What one `git ls-files` printed; `None` when git will not read a work tree here.
fn git_output(root: &Path, out: std::io::Result<std::process::Output>) -> Result<Option<Vec<u8>>> {
    let out = out.map_err(Error::io("running git ls-files in", root))?;
    if !out.status.success() {
        if git_root(root).is_none() {
            return Ok(None);
        }
        return Err(Error::Sync(format!(
            "git ls-files failed in {}: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(Some(out.stdout))
}
