//! The sync phase: scan what is on the box, plan what differs, pack it into a spooled
//! archive, and have the provider apply it. One sync of a lease at a time on this machine.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::run::{cancellable, Acquired};
use super::{ms, Engine};
use crate::claims::now_rfc3339;
use crate::engine::{RunRequest, SyncReport, SyncSource};
use crate::error::{Error, Result};
use crate::events::Reporter;
use crate::provider::{Applied, ApplySync, PackedChunk};
use crate::sync::{
    split, ChunkSpec, Codec, PlanOptions, RemoteTree, SyncManifest, SyncOp, SyncPlan,
};

use super::sync_memo::SyncMemo;
use super::tree_lock::{Hold, TreeLock};

/// How often packing progress is reported.
const TICK: Duration = Duration::from_millis(100);
/// Threads packing chunks side by side.
const PACKERS: usize = 2;
/// Chunks packed ahead of the one being sent.
const PACKED_AHEAD: usize = 2;
/// From this many bytes to send, the box is asked which codecs it has (zstd is much faster
/// than gzip, but asking costs a round trip a small sync does not need).
const PROBE_CODECS_FROM: u64 = 8 << 20;
/// A sync sending less than this travels as a plain tar: compressing it saves less time on
/// the wire than starting a decompressor costs on the box.
const STORE_BELOW: u64 = 16 << 10;
/// A sync of at most this many files lists them for the provider ([`ApplySync::sent`]);
/// a larger one's tree is read by the next run.
const LIST_SENT_AT_MOST: usize = 4096;

/// Where a sync's tree is remembered: the manifest sent, the memo's path, the box workdir.
struct Sent<'a> {
    manifest: &'a Arc<SyncManifest>,
    memo: &'a std::path::Path,
    workdir: &'a str,
    /// Apply only onto the tree so named (see [`ApplySync::if_unchanged_since`]).
    if_unchanged_since: Option<&'a str>,
}

/// The files of a run's sync, chosen on a blocking thread while the engine reaches and
/// reads the box.
pub(super) struct Choosing {
    task: Option<tokio::task::JoinHandle<Result<SyncManifest>>>,
    done: Option<Arc<SyncManifest>>,
}

impl Choosing {
    /// Starts choosing the files of `req` unless they are given (or there is no sync).
    pub(super) fn start(req: &RunRequest, state_dir: &std::path::Path) -> Self {
        let task = match &req.sync {
            Some(src) if src.manifest.is_none() => {
                let (root, mut options) = (src.root.clone(), src.options.clone());
                options
                    .listing_cache
                    .get_or_insert_with(|| state_dir.join("listings"));
                Some(tokio::spawn(async move {
                    crate::plan::build_manifest(&root, &options).await
                }))
            }
            _ => None,
        };
        Choosing { task, done: None }
    }

    /// The chosen files, once chosen (`None` when the request gave them or has no sync);
    /// soft-limit warnings are reported once.
    pub(super) async fn wait(
        &mut self,
        cancel: &CancellationToken,
        reporter: &dyn Reporter,
    ) -> Result<Option<Arc<SyncManifest>>> {
        if let Some(task) = self.task.take() {
            let built = tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Interrupted),
                r = task => r.map_err(|e| Error::Sync(format!("building the sync manifest: {e}")))??,
            };
            for w in &built.warnings {
                reporter.status(&format!("warning: {w}"));
            }
            self.done = Some(Arc::new(built));
        }
        Ok(self.done.clone())
    }

    /// The files `source` syncs: given with it, or chosen ([`Choosing::wait`]).
    async fn files(
        &mut self,
        source: &SyncSource,
        cancel: &CancellationToken,
        reporter: &dyn Reporter,
    ) -> Result<Arc<SyncManifest>> {
        let chosen = self.wait(cancel, reporter).await?;
        source
            .manifest
            .clone()
            .or(chosen)
            .ok_or_else(|| Error::Sync("the files to sync were never chosen".into()))
    }
}

impl Engine {
    /// Syncs (or creates the workdir with `--no-sync`), then records when the lease was used.
    pub(super) async fn sync_phase(
        &self,
        acquired: &mut Acquired,
        req: &RunRequest,
        chosen: &mut Choosing,
        reporter: &dyn Reporter,
    ) -> Result<(Option<SyncReport>, TreeLock)> {
        let session = acquired.session.as_ref();
        let workdir = acquired.workdir.clone();
        let lease = acquired.target.lease_id.clone();
        let t = Instant::now();
        let mut lock = TreeLock::open(&self.state_dir, &lease, &acquired.workspace)?;
        lock.hold(Hold::Shared, reporter, &req.cancel).await?;
        let Some(source) = &req.sync else {
            cancellable(&req.cancel, session.make_dir(&workdir)).await?;
            self.touch_claim(acquired);
            return Ok((None, lock));
        };
        let mut wait_ms = ms(t.elapsed());
        let memo = SyncMemo::path(&self.state_dir, &lease, &acquired.workspace);
        if !acquired.created && !req.checksum && !req.full_resync {
            if let Some(m) = SyncMemo::read(&memo).filter(|m| m.fits(&workdir, source.delete)) {
                // The last sync left these files on the box; if the box can vouch that its
                // tree has not changed since, it need not be read. The box is asked while the
                // local files are chosen and the kept tree is read (and checked).
                let t = Instant::now();
                let kept = {
                    let (m, memo) = (m.clone(), memo.clone());
                    tokio::task::spawn_blocking(move || m.kept(&memo))
                };
                // Planned from the files the box holds (`Some(None)`: it holds these), or
                // `None` to read the box. Nothing to send needs the box's word; a plan to
                // send does not wait for it: it is applied only onto the tree vouched for
                // (`if_unchanged_since`, checked by the provider as the box applies it), so
                // a box still being asked costs no round trip. (A block of its own: a question
                // still unanswered is dropped before the box is asked anything else.)
                let (manifest, plan) = {
                    let local = chosen.files(source, &req.cancel, reporter);
                    let question =
                        cancellable(&req.cancel, session.unchanged_since(&workdir, &m.state));
                    tokio::pin!(local, question);
                    let mut answer = None;
                    let manifest = loop {
                        tokio::select! {
                            // The question first: asked at once, and its answer taken when
                            // it came with the files.
                            biased;
                            a = &mut question, if answer.is_none() => answer = Some(a?),
                            m = &mut local => break m?,
                        }
                    };
                    let delta = kept
                        .await
                        .ok()
                        .flatten()
                        .map(|prev| SyncPlan::delta(prev.entries(), &manifest, source.delete));
                    let plan = match delta {
                        Some(plan) if plan.is_noop() => {
                            let unchanged = match answer {
                                Some(a) => a,
                                None => question.await?,
                            };
                            unchanged.then_some(None)
                        }
                        Some(plan) if answer != Some(false) => Some(Some(plan)),
                        _ => None,
                    };
                    (manifest, plan)
                };
                let mut report = SyncReport {
                    files: manifest.len() as u64,
                    bytes: manifest.total_bytes,
                    scan_ms: ms(t.elapsed()),
                    wait_ms,
                    ..SyncReport::default()
                };
                match plan {
                    Some(None) => {
                        reporter.status(&format!(
                            "sync: {} files up to date on the box (verified in {} ms)",
                            report.files, report.scan_ms
                        ));
                        self.synced(acquired, workdir);
                        return Ok((Some(report), lock));
                    }
                    Some(Some(plan)) => {
                        // Changing the tree: no other run of this lease syncing or running a
                        // command, and still nothing changed on the box when it applies the
                        // sync (else the box is read, below).
                        let t = Instant::now();
                        lock.hold(Hold::Exclusive, reporter, &req.cancel).await?;
                        report.wait_ms += ms(t.elapsed());
                        wait_ms = report.wait_ms;
                        if !lock.waited {
                            let plan = self.record_plan(plan, &mut report);
                            let sent = Instant::now();
                            let to = Sent {
                                manifest: &manifest,
                                memo: &memo,
                                workdir: &workdir,
                                if_unchanged_since: Some(&m.state),
                            };
                            let applied = self
                                .send(acquired, source, plan, to, &mut report, req, reporter)
                                .await?;
                            if applied {
                                report.apply_ms = ms(sent.elapsed());
                                self.synced(acquired, workdir);
                                lock.hold(Hold::Shared, reporter, &req.cancel).await?;
                                return Ok((Some(report), lock));
                            }
                            reporter.status(
                                "sync: the box's tree changed since the last sync; reading it",
                            );
                        }
                    }
                    None => {}
                }
            }
        }
        // The box is read while the local files are chosen (and hashed): neither waits for
        // the other. A box this run just made holds nothing yet; any other is read, not
        // remembered.
        let local = async {
            let manifest = chosen.files(source, &req.cancel, reporter).await?;
            let hashes = if req.checksum {
                Some(hash_files(&source.root, &manifest, &req.cancel).await?)
            } else {
                None
            };
            Ok((manifest, hashes))
        };
        let t = Instant::now();
        let reading = async {
            let remote = if acquired.created {
                RemoteTree::default()
            } else {
                cancellable(&req.cancel, session.scan(&workdir, req.checksum)).await?
            };
            Ok::<_, Error>((remote, ms(t.elapsed())))
        };
        let ((manifest, hashes), (mut remote, mut scan_ms)) = tokio::try_join!(local, reading)?;
        let options = PlanOptions {
            delete: source.delete,
            resend_all: req.full_resync,
            hashes: hashes.as_ref(),
        };
        let t = Instant::now();
        let mut plan = SyncPlan::new(&manifest, &remote, options);
        if !plan.is_noop() {
            // Changing the tree: wait until no other run of this lease is syncing or running
            // a command, then read the box again (it may have changed meanwhile).
            let t = Instant::now();
            lock.hold(Hold::Exclusive, reporter, &req.cancel).await?;
            wait_ms += ms(t.elapsed());
            if lock.waited && !acquired.created {
                let t = Instant::now();
                remote = cancellable(&req.cancel, session.scan(&workdir, req.checksum)).await?;
                scan_ms += ms(t.elapsed());
                plan = SyncPlan::new(&manifest, &remote, options);
            }
        }
        let plan_ms = ms(t.elapsed());
        let mut report = SyncReport {
            files: manifest.len() as u64,
            bytes: manifest.total_bytes,
            scan_ms,
            wait_ms,
            pack_ms: plan_ms,
            ..SyncReport::default()
        };
        if plan.is_noop() {
            reporter.status(&format!(
                "sync: {} files up to date on the box (verified in {} ms)",
                report.files, report.scan_ms
            ));
            // Kept only where the box's record lists these very paths: a later plan from the
            // kept manifest deletes and keeps the record as if it did.
            let state = remote.state.filter(|_| !req.checksum && plan.keeps_record);
            self.keep_memo(&memo, &manifest, state, &workdir, source.delete);
        } else {
            let plan = self.record_plan(plan, &mut report);
            let to = Sent {
                manifest: &manifest,
                memo: &memo,
                workdir: &workdir,
                if_unchanged_since: None,
            };
            let applied = self
                .send(acquired, source, plan, to, &mut report, req, reporter)
                .await?;
            if !applied {
                return Err(Error::Sync(format!(
                    "the sync to {workdir} was refused as planned for another tree, though it \
                     named none"
                )));
            }
            report.apply_ms = ms(t.elapsed()).saturating_sub(report.pack_ms);
        }
        self.synced(acquired, workdir);
        // The command runs while the tree is held shared: other runs' commands may run
        // beside it, but no other sync changes the tree under it.
        lock.hold(Hold::Shared, reporter, &req.cancel).await?;
        Ok((Some(report), lock))
    }

    /// Counts what `plan` sends, deletes and clears into `report`.
    fn record_plan(&self, plan: SyncPlan, report: &mut SyncReport) -> SyncPlan {
        report.sent_files = plan.send.len() as u64;
        report.deleted_files = plan.deleted() as u64;
        report.sent_bytes = plan.send.iter().map(|e| e.size).sum();
        report.cleared = plan
            .ops
            .iter()
            .filter(|op| matches!(op, SyncOp::Clear(_)))
            .count() as u64;
        plan
    }

    /// Remembers what the box holds now, where its provider named the tree; else forgets.
    fn keep_memo(
        &self,
        memo: &std::path::Path,
        manifest: &SyncManifest,
        state: Option<String>,
        workdir: &str,
        delete: bool,
    ) {
        match state {
            Some(state) => SyncMemo::keep(memo, manifest, state, workdir, delete),
            None => SyncMemo::forget(memo),
        }
    }

    /// Packs what `plan` sends and has the box apply it (the tree lock held exclusively);
    /// then remembers the tree the box holds where the provider names it (see [`SyncMemo`]).
    /// `false` when the box's tree was no longer the one `to.if_unchanged_since` named, and
    /// nothing was applied.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        acquired: &Acquired,
        source: &SyncSource,
        mut plan: SyncPlan,
        to: Sent<'_>,
        report: &mut SyncReport,
        req: &RunRequest,
        reporter: &dyn Reporter,
    ) -> Result<bool> {
        let session = acquired.session.as_ref();
        let t = Instant::now();
        // What the last sync left is void until this one completes. The new tree is written
        // while the box applies it, and named once the provider says what it left.
        SyncMemo::forget(to.memo);
        reporter.status(&describe(&plan, report));
        let codec = if report.sent_bytes >= PROBE_CODECS_FROM {
            session
                .codecs()
                .await
                .first()
                .copied()
                .unwrap_or(Codec::Gzip)
        } else if report.sent_bytes < STORE_BELOW {
            Codec::Stored
        } else {
            Codec::Gzip
        };
        // What was sent, for the provider to check the tree it left against (a small sync's).
        let sent = (plan.send.len() <= LIST_SENT_AT_MOST).then(|| plan.send.clone());
        // The plan's list moves into the chunks: one copy of a large tree's entries, not two.
        let chunks = split(&source.root, std::mem::take(&mut plan.send), codec);
        // The box's record stays when it already lists these very paths (an edit): a large
        // tree's record is not sent again for each changed file.
        let record = (!plan.keeps_record).then(|| plan.record.encode());
        let apply = ApplySync {
            ops: &plan.ops,
            record: record.as_deref(),
            sent: sent.as_deref(),
            workdir: &acquired.workdir,
            chunks: chunks.len(),
            if_unchanged_since: to.if_unchanged_since,
            timeout: self.sync_timeout,
            cancel: &req.cancel,
        };
        let wire = Arc::new(AtomicU64::new(0));
        let (tx, rx) = tokio::sync::mpsc::channel(PACKED_AHEAD);
        // The new tree is written once the last chunk is packed, while the box applies it,
        // where the box may name it: not beside the packing (a small sync's one chunk waited
        // for it).
        let may_name = session.may_name_tree(&apply);
        let packing = async {
            let packed = self
                .pack(source, chunks, tx, wire.clone(), reporter, &req.cancel)
                .await;
            let keeping = (may_name && packed.is_ok()).then(|| {
                let (memo, manifest) = (to.memo.to_path_buf(), to.manifest.clone());
                tokio::task::spawn_blocking(move || SyncMemo::keep_tree(&memo, &manifest))
            });
            (packed, keeping)
        };
        // The packing first: its first chunk is on its way while the provider prepares.
        let ((packed, keeping), applied) =
            tokio::join!(packing, session.apply_sync(&apply, rx, reporter));
        reporter.finish_progress();
        let kept = match keeping {
            Some(k) => k.await.ok().flatten(),
            None => None,
        };
        let state = match (packed, applied) {
            // Refused before it took every chunk: the packing's failure to hand them over is
            // no error of its own.
            (_, Ok(Applied::TreeMoved)) => {
                SyncMemo::forget(to.memo);
                return Ok(false);
            }
            // A packing failure is the cause of the apply's abandonment: report it first.
            (Err(e), _) | (_, Err(e)) => {
                SyncMemo::forget(to.memo);
                return Err(e);
            }
            (Ok(()), Ok(Applied::Done(state))) => state,
        };
        match (state, kept) {
            (Some(state), Some(tree)) => {
                SyncMemo::name(to.memo, tree, state, to.workdir, source.delete)
            }
            _ => SyncMemo::forget(to.memo),
        }
        report.wire_bytes = wire.load(Ordering::Relaxed);
        reporter.status(&format!(
            "sync: done in {} ms (read the box {} ms, packed and sent {} as {}, applied)",
            report.scan_ms + report.pack_ms + ms(t.elapsed()),
            report.scan_ms,
            human_bytes(report.sent_bytes),
            human_bytes(report.wire_bytes),
        ));
        Ok(true)
    }

    /// Records a sync of `workdir`: the claim keeps the lease's workdir (main's, never a
    /// workspace's) and its last use.
    fn synced(&self, acquired: &mut Acquired, workdir: String) {
        if let Some(claim) = acquired
            .claim
            .as_mut()
            .filter(|_| acquired.workspace == crate::workspace::MAIN)
        {
            claim.workdir = workdir;
        }
        self.touch_claim(acquired);
    }

    /// Records the lease's last use (and workdir) in its claim. The claim is written (and
    /// flushed to disk, two fsyncs) on the blocking pool while the command starts rather
    /// than before it: [`Engine::touched`] waits for it before the run releases the box.
    fn touch_claim(&self, acquired: &mut Acquired) {
        let Some(claim) = &mut acquired.claim else {
            return;
        };
        claim.last_used_at = now_rfc3339();
        let (claims, claim) = (self.claims.clone(), claim.clone());
        acquired.touching = Some(tokio::task::spawn_blocking(move || claims.write(&claim)));
    }

    /// Waits for the claim [`Engine::touch_claim`] is writing; a write that failed is said
    /// (the claim on disk is the one before it: a whole file, the lease still claimed), but
    /// does not fail a run whose command ran.
    pub(super) async fn touched(&self, acquired: &mut Acquired, reporter: &dyn Reporter) {
        let Some(touching) = acquired.touching.take() else {
            return;
        };
        let written = touching
            .await
            .unwrap_or_else(|e| Err(Error::Sync(format!("the claim's writer stopped: {e}"))));
        if let Err(e) = written {
            reporter.status(&format!(
                "warning: could not record this use of lease {} in its claim: {e}",
                acquired.target.lease_id
            ));
        }
    }

    /// Packs `chunks` into spool files under the state directory (not a possibly small
    /// `/tmp`) on a few threads, feeding each to `tx` as soon as it is written, so packing,
    /// sending and unpacking overlap. Reports packing progress; on a failure sends it down the
    /// feed (the provider abandons the sync) and returns it.
    async fn pack(
        &self,
        source: &SyncSource,
        chunks: Vec<ChunkSpec>,
        tx: tokio::sync::mpsc::Sender<Result<PackedChunk>>,
        wire: Arc<AtomicU64>,
        reporter: &dyn Reporter,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let spool_dir = self.state_dir.join("spool");
        std::fs::create_dir_all(&spool_dir).map_err(Error::io("creating", &spool_dir))?;
        remove_stale_spools(&spool_dir);
        let total: u64 = chunks.iter().map(ChunkSpec::bytes).sum();
        let workers = PACKERS.min(chunks.len()).max(1);
        let queue = Arc::new(std::sync::Mutex::new(
            chunks
                .into_iter()
                .collect::<std::collections::VecDeque<_>>(),
        ));
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (queue, done, stop, wire, tx) = (
                queue.clone(),
                done.clone(),
                stop.clone(),
                wire.clone(),
                tx.clone(),
            );
            let (root, spool_dir) = (source.root.clone(), spool_dir.clone());
            tasks.push(tokio::task::spawn_blocking(move || -> Result<()> {
                loop {
                    let next = queue.lock().expect("chunk queue").pop_front();
                    let Some(spec) = next else { return Ok(()) };
                    if stop.load(Ordering::Relaxed) {
                        return Err(Error::Interrupted);
                    }
                    let packed = pack_chunk(&root, &spool_dir, &spec, &done);
                    let failed = packed.as_ref().err().map(|e| Error::Sync(e.to_string()));
                    if let Ok(c) = &packed {
                        wire.fetch_add(c.len, Ordering::Relaxed);
                    }
                    if tx.blocking_send(packed).is_err() {
                        // The provider gave up on the sync; it says why.
                        return Ok(());
                    }
                    if let Some(e) = failed {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }));
        }
        drop(tx);
        let all = futures_join(tasks);
        tokio::pin!(all);
        let result = loop {
            tokio::select! {
                r = &mut all => break r,
                _ = cancel.cancelled(), if !stop.load(Ordering::Relaxed) => {
                    stop.store(true, Ordering::Relaxed);
                }
                _ = tokio::time::sleep(TICK) => {
                    reporter.progress("sync", done.load(Ordering::Relaxed), Some(total));
                }
            }
        };
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        result
    }
}

/// Removes spool files a crabbox killed outright (kill -9) left behind.
fn remove_stale_spools(dir: &std::path::Path) {
    for path in stale_spools(dir) {
        let _ = std::fs::remove_file(path);
    }
}

/// The start of a spool file's name: `sync-<pid>_<start time>-`, so that whoever finds it
/// can tell whether the process that writes it still runs.
fn spool_prefix() -> String {
    format!("sync-{}-", crate::claims::this_process().replace(':', "_"))
}

/// Spool files whose process is gone (or, for names that do not say, older than any sync).
pub(super) fn stale_spools(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    const STALE: Duration = Duration::from_secs(3600);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stale = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix("sync-")
            .and_then(|rest| rest.split_once('-'))
            .map(|(owner, _)| owner.replace('_', ":"))
            .filter(|owner| owner.contains(':'));
        let abandoned = match owner {
            Some(owner) => !crate::claims::owner_alive(&owner),
            None => e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE),
        };
        if abandoned {
            stale.push(e.path());
        }
    }
    stale
}

/// Awaits every packer; the first error wins.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<Result<()>>>) -> Result<()> {
    let mut first = Ok(());
    for t in tasks {
        let r = t
            .await
            .map_err(|e| Error::Sync(format!("packing the sync archive: {e}")))
            .and_then(|r| r);
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// Writes one chunk to a spool file.
fn pack_chunk(
    root: &std::path::Path,
    spool_dir: &std::path::Path,
    spec: &ChunkSpec,
    done: &AtomicU64,
) -> Result<PackedChunk> {
    let mut spool = tempfile::Builder::new()
        .prefix(&spool_prefix())
        .tempfile_in(spool_dir)
        .map_err(Error::io("creating a sync archive in", spool_dir))?;
    let mut last = 0;
    {
        let mut w = std::io::BufWriter::with_capacity(256 << 10, spool.as_file_mut());
        spec.write(root, &mut w, |b| {
            done.fetch_add(b - last, Ordering::Relaxed);
            last = b;
        })?;
        std::io::Write::flush(&mut w)
            .map_err(|e| Error::Sync(format!("writing the sync archive: {e}")))?;
    }
    let len = spool
        .as_file()
        .metadata()
        .map_err(Error::io("reading", spool.path()))?
        .len();
    Ok(PackedChunk {
        file: spool.into_temp_path(),
        codec: spec.codec,
        len,
    })
}

/// `sync: sending 3 of 120 files (41.0 KiB), deleting 1, replacing 1`.
fn describe(plan: &SyncPlan, report: &SyncReport) -> String {
    let mut line = format!(
        "sync: sending {} of {} files ({})",
        report.sent_files,
        report.files,
        human_bytes(report.sent_bytes)
    );
    if plan.full {
        line.push_str(" to a new workdir");
    }
    if report.deleted_files > 0 {
        line.push_str(&format!(", deleting {}", report.deleted_files));
    }
    if report.cleared > 0 {
        line.push_str(&format!(
            ", replacing {} changed on the box",
            report.cleared
        ));
    }
    line
}

/// `1.5 MiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// SHA-256 of every regular file of the manifest, by path (`--checksum`).
async fn hash_files(
    root: &std::path::Path,
    manifest: &SyncManifest,
    cancel: &CancellationToken,
) -> Result<BTreeMap<String, String>> {
    let root = root.to_path_buf();
    let files: Vec<String> = manifest
        .entries
        .iter()
        .filter(|e| e.kind == crate::sync::EntryKind::File)
        .map(|e| e.path.clone())
        .collect();
    let task = tokio::task::spawn_blocking(move || -> Result<BTreeMap<String, String>> {
        use sha2::Digest;
        let mut out = BTreeMap::new();
        for rel in files {
            let path = root.join(&rel);
            // O_NOFOLLOW: a file swapped for a symlink is not read through.
            let mut file = std::os::unix::fs::OpenOptionsExt::custom_flags(
                std::fs::OpenOptions::new().read(true),
                libc::O_NOFOLLOW,
            )
            .open(&path)
            .map_err(Error::io("hashing", &path))?;
            let mut hasher = sha2::Sha256::new();
            std::io::copy(&mut file, &mut hasher).map_err(Error::io("hashing", &path))?;
            out.insert(rel, hex::encode(hasher.finalize()));
        }
        Ok(out)
    });
    tokio::select! {
        _ = cancel.cancelled() => Err(Error::Interrupted),
        r = task => r.map_err(|e| Error::Sync(format!("hashing the tree: {e}")))?,
    }
}
