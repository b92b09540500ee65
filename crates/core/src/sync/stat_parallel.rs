//! The stat pass on a few threads (a part of [`super`], manifest.rs): a listing cut into runs
//! of neighbouring paths, read by threads that take them one at a time, each writing its
//! entries straight into place in one vector.

use std::path::Path;

use super::{stat_all, EntrySink, Filters, Stated, SyncEntry};
use crate::error::Result;

/// Threads reading metadata, at most, and files each at least. Two more threads than the
/// machine has cores (up to the most): the reading is all system calls, and a warm run's other
/// work (its requests, the runtime, on a shared machine everyone else's) takes cores from it
/// while it runs; on two cores a third thread gave a warm edit's run 1-4 ms back, a fourth
/// 1.5-2 ms more (medians of 15 and 20 alternating runs, either order first).
pub(super) const STAT_THREADS: usize = 4;
pub(super) const STAT_BATCH_MIN: usize = 2048;

/// One run's share of the vector every stat thread writes its entries into (its spare
/// capacity, one slot per name of the run), filled from the front. Entries written straight
/// into place: the threads' entries are not copied into one vector after they are read (a
/// serial copy of 2 MB of fresh memory at 20,000 files, 2-9 ms here, most of it page faults).
pub(super) struct Window<'a> {
    slots: &'a mut [std::mem::MaybeUninit<SyncEntry>],
    len: usize,
}

impl EntrySink for Window<'_> {
    fn push(&mut self, entry: SyncEntry) {
        // A run yields at most one entry per name, and has a slot for each.
        self.slots[self.len].write(entry);
        self.len += 1;
    }
}

impl Window<'_> {
    /// The number of entries written, now owned by whoever adopts them ([`adopt`]).
    fn keep(self) -> usize {
        let len = self.len;
        std::mem::forget(self);
        len
    }
}

impl Drop for Window<'_> {
    /// A run that failed (or panicked) drops what it wrote.
    fn drop(&mut self) {
        for slot in &mut self.slots[..self.len] {
            // SAFETY: the first `len` slots were written by `push` and are owned by no one else.
            unsafe { slot.assume_init_drop() };
        }
    }
}

/// The entries runs of [`Window`]s kept in `out`'s spare capacity, each `(start, len)`, moved
/// together after its `len` entries (in listing order, closing the gaps the runs left).
///
/// # Safety
/// Each window's `len` entries from `start` (relative to `out.len()`) were written and kept
/// ([`Window::keep`]); the windows are in increasing order and do not overlap; nothing else
/// owns those entries.
pub(super) unsafe fn adopt(out: &mut Vec<SyncEntry>, windows: &[(usize, usize)]) {
    let base = out.len();
    let mut len = base;
    let at = out.as_mut_ptr();
    for &(start, n) in windows {
        let from = base + start;
        debug_assert!(from >= len && from + n <= out.capacity());
        if from != len {
            // SAFETY (the caller's): `n` entries at `from` are initialized; `len <= from`, so
            // the move stays inside the capacity; `copy` allows the overlap.
            unsafe { std::ptr::copy(at.add(from), at.add(len), n) };
        }
        len += n;
    }
    // SAFETY: `len` entries from the start are initialized now.
    unsafe { out.set_len(len) };
}

/// `listing` (NUL-separated) cut into at most `parts` runs of whole names, of about equal
/// length.
pub(super) fn split_listing(listing: &[u8], parts: usize) -> Vec<&[u8]> {
    let mut runs = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 1..parts {
        let at = (listing.len() * i / parts).max(start);
        let mut cut = listing[at..]
            .iter()
            .position(|b| *b == 0)
            .map_or(listing.len(), |p| at + p + 1);
        // A name listed again (git lists one per stage of a merge conflict) stays in the run
        // of its first listing, where it is read once.
        if cut < listing.len() {
            let before = listing[..cut - 1]
                .iter()
                .rposition(|b| *b == 0)
                .map_or(0, |p| p + 1);
            let last = &listing[before..cut - 1];
            while let Some(end) = listing[cut..].iter().position(|b| *b == 0) {
                if &listing[cut..cut + end] != last {
                    break;
                }
                cut += end + 1;
            }
        }
        runs.push(&listing[start..cut]);
        start = cut;
    }
    runs.push(&listing[start..]);
    runs.retain(|r| !r.is_empty());
    runs
}

/// Runs of neighbouring paths each thread takes at a time, at least (so a thread slowed
/// by the rest of the machine leaves more of the runs to the others).
pub(super) const STAT_RUNS_PER_THREAD: usize = 8;
/// Names in a run, at least.
pub(super) const STAT_RUN_MIN: usize = 512;

/// [`stat_all`] of `listing` on a few threads of `scope`, which take its runs of
/// neighbouring paths one at a time until none is left, writing the entries into `out`'s
/// spare capacity (reserved here) for [`Joined::adopt`] to take in.
pub(super) fn stat_spawn<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    root: &'env Path,
    listing: &'env [u8],
    filters: &'env Filters<'env>,
    out: &'env mut Vec<SyncEntry>,
) -> StatJob<'scope> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let names = memchr::memchr_iter(0, listing).count() + 1;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get() + 2)
        .clamp(1, STAT_THREADS)
        .min(names.div_ceil(STAT_BATCH_MIN));
    let parts = (threads * STAT_RUNS_PER_THREAD)
        .min(names.div_ceil(STAT_RUN_MIN))
        .max(threads);
    // Each run with its window: a slot for each of its names (the empty one after a final
    // NUL counted too), from `start` in the spare capacity.
    let runs = split_listing(listing, parts);
    let sizes: Vec<usize> = runs
        .iter()
        .map(|r| memchr::memchr_iter(0, r).count() + 1)
        .collect();
    out.reserve(sizes.iter().sum());
    let mut spare = &mut out.spare_capacity_mut()[..];
    let mut start = 0;
    let mut queue = Vec::with_capacity(runs.len());
    for (i, (run, size)) in runs.into_iter().zip(sizes).enumerate() {
        let (slots, rest) = std::mem::take(&mut spare).split_at_mut(size);
        spare = rest;
        queue.push((i, start, run, slots));
        start += size;
    }
    let queue = std::sync::Arc::new(std::sync::Mutex::new(queue.into_iter()));
    let failed = std::sync::Arc::new(AtomicBool::new(false));
    let handles = (0..threads)
        .map(|_| {
            let (queue, failed) = (queue.clone(), failed.clone());
            scope.spawn(move || {
                let mut done = Vec::new();
                while !failed.load(Ordering::Relaxed) {
                    let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                    let Some((i, start, run, slots)) = next else {
                        break;
                    };
                    let found = stat_all(root, run, filters, Window { slots, len: 0 });
                    failed.fetch_or(found.is_err(), Ordering::Relaxed);
                    done.push((i, start, found.map(|f| f.map_entries(Window::keep))));
                }
                done
            })
        })
        .collect();
    StatJob { handles }
}

/// What one of [`stat_spawn`]'s threads read: each run's index, where its window starts,
/// and what it found (the number of entries kept in its window).
pub(super) type RunsRead = Vec<(usize, usize, Result<Stated<usize>>)>;

/// [`stat_spawn`]'s threads, each with the runs it read.
pub(super) struct StatJob<'scope> {
    handles: Vec<std::thread::ScopedJoinHandle<'scope, RunsRead>>,
}

impl StatJob<'_> {
    /// Waits for the threads: what they found, in listing order (the error of the first run
    /// that failed), and the windows they kept entries in, for [`Joined::adopt`] once `out`
    /// is no longer lent to them.
    pub(super) fn join(self) -> Joined {
        let mut runs: RunsRead = self
            .handles
            .into_iter()
            .flat_map(|h| h.join().expect("a stat thread panicked"))
            .collect();
        runs.sort_unstable_by_key(|(i, ..)| *i);
        let mut windows = Vec::with_capacity(runs.len());
        let mut noted = Ok(Stated::default());
        for (_, start, found) in runs {
            match found {
                Ok(f) => {
                    windows.push((start, f.entries));
                    if let Ok(n) = &mut noted {
                        n.note(f);
                    }
                }
                Err(e) => {
                    if noted.is_ok() {
                        noted = Err(e);
                    }
                }
            }
        }
        Joined { windows, noted }
    }
}

/// What [`StatJob::join`] found: the entries are still in the windows of `out`.
#[must_use = "the entries are owned by no one until adopted"]
pub(super) struct Joined {
    windows: Vec<(usize, usize)>,
    noted: Result<Stated<()>>,
}

impl Joined {
    /// The entries, in listing order, taken into `out`, and what was noted.
    ///
    /// # Safety
    /// `out` is the vector lent to [`stat_spawn`] for this job, untouched since.
    pub(super) unsafe fn adopt(self, out: &mut Vec<SyncEntry>) -> Result<Stated<()>> {
        // SAFETY: each window holds the entries its run kept, from its start in the spare
        // capacity of `out` as `stat_spawn` found it (the caller's), in increasing order and
        // apart; no one else owns them (a run that failed dropped its own).
        unsafe { adopt(out, &self.windows) };
        self.noted
    }
}

/// [`stat_all`] of `listing` on a few threads.
pub(super) fn stat_parallel(root: &Path, listing: &[u8], filters: &Filters<'_>) -> Result<Stated> {
    let mut entries = Vec::new();
    let joined =
        std::thread::scope(|scope| stat_spawn(scope, root, listing, filters, &mut entries).join());
    // SAFETY: `entries` is the vector the job was lent, untouched since.
    let noted = unsafe { joined.adopt(&mut entries) }?;
    Ok(noted.map_entries(|()| entries))
}
