//! The sync phase: plan what to send from the manifest and the record of the last sync, pack
//! it into a spooled archive, and have the provider lay it over the workdir.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::run::{cancellable, Acquired};
use super::Engine;
use crate::claims::now_rfc3339;
use crate::engine::{RunRequest, SyncReport, SyncSource};
use crate::error::{Error, Result};
use crate::events::Reporter;
use crate::provider::ApplyArchive;
use crate::sync::{write_archive, SyncEntry, SyncPlan, SyncState};

/// How often archive-building progress is reported.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

impl Engine {
    /// Syncs (or creates the workdir with `--no-sync`), then records what was synced and
    /// when the lease was used.
    pub(super) async fn sync_phase(
        &self,
        acquired: &mut Acquired,
        req: &RunRequest,
        reporter: &dyn Reporter,
    ) -> Result<Option<SyncReport>> {
        let session = acquired.session.as_ref();
        let workdir = acquired.workdir.clone();
        let Some(source) = &req.sync else {
            cancellable(&req.cancel, session.make_dir(&workdir)).await?;
            self.touch_claim(acquired, None)?;
            return Ok(None);
        };
        // What the box holds is only known for a lease this machine synced into the same
        // workdir; anything else gets everything (laid over, never deleting unknown files).
        let mut previous = match &acquired.claim {
            Some(c) if !acquired.created && !req.full_resync && c.workdir == workdir => {
                Some(SyncState::load(&self.state_path(&c.lease_id)))
            }
            _ => None,
        };
        // A workdir removed on the box behind our back invalidates the record.
        if previous.as_ref().is_some_and(|s| !s.entries.is_empty())
            && !cancellable(&req.cancel, session.exists(&workdir)).await?
        {
            previous = None;
        }
        let plan = SyncPlan::new(source, previous.as_ref());
        let report = SyncReport {
            files: source.manifest.len() as u64,
            bytes: source.manifest.total_bytes,
            sent_files: plan.send.len() as u64,
            deleted_files: plan.delete.len() as u64,
        };
        if plan.is_noop() {
            reporter.status(&format!(
                "sync: {} files up to date on the box",
                report.files
            ));
        } else {
            reporter.status(&format!(
                "sync: sending {} of {} files{}",
                plan.send.len(),
                source.manifest.len(),
                if plan.delete.is_empty() {
                    String::new()
                } else {
                    format!(", deleting {}", plan.delete.len())
                }
            ));
            let spool = self.pack(source, &plan.send, reporter, &req.cancel).await?;
            let apply = ApplyArchive {
                archive: spool.path(),
                delete: &plan.delete,
                workdir: &workdir,
                timeout: self.sync_timeout,
                cancel: &req.cancel,
            };
            session.apply_archive(&apply, reporter).await?;
        }
        self.touch_claim(acquired, Some(source))?;
        Ok(Some(report))
    }

    /// Records the sync (when there was one) and the lease's last use in its claim.
    fn touch_claim(&self, acquired: &mut Acquired, synced: Option<&SyncSource>) -> Result<()> {
        let Some(claim) = &mut acquired.claim else {
            return Ok(());
        };
        if let Some(source) = synced {
            SyncState::from_manifest(&source.manifest).save(&self.state_path(&claim.lease_id))?;
            claim.workdir = acquired.workdir.clone();
        }
        claim.last_used_at = now_rfc3339();
        self.claims.write(claim)
    }

    /// Writes the archive of `entries` to a spool file under the state directory (not a
    /// possibly small `/tmp`: the archive is as big as the changed files), reporting
    /// progress. A cancel abandons it at once: nothing has touched the box yet.
    async fn pack(
        &self,
        source: &SyncSource,
        entries: &[SyncEntry],
        reporter: &dyn Reporter,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<tempfile::NamedTempFile> {
        let spool_dir = self.state_dir.join("spool");
        std::fs::create_dir_all(&spool_dir).map_err(Error::io("creating", &spool_dir))?;
        let total: u64 = entries.iter().map(|e| e.size).sum();
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, entries) = (source.root.clone(), entries.to_vec());
        let (done_w, stop_w) = (done.clone(), stop.clone());
        let mut task = tokio::task::spawn_blocking(move || -> Result<tempfile::NamedTempFile> {
            let mut spool = tempfile::Builder::new()
                .prefix("sync-")
                .suffix(".tgz")
                .tempfile_in(&spool_dir)
                .map_err(Error::io("creating a sync archive in", &spool_dir))?;
            {
                let mut w = std::io::BufWriter::new(spool.as_file_mut());
                write_archive(&root, &entries, &mut w, |b| {
                    done_w.store(b, Ordering::Relaxed);
                })?;
                std::io::Write::flush(&mut w)
                    .map_err(|e| Error::Sync(format!("writing the sync archive: {e}")))?;
            }
            if stop_w.load(Ordering::Relaxed) {
                return Err(Error::Interrupted);
            }
            Ok(spool)
        });
        let result = loop {
            tokio::select! {
                r = &mut task => break r,
                _ = cancel.cancelled() => {
                    stop.store(true, Ordering::Relaxed);
                    reporter.finish_progress();
                    return Err(Error::Interrupted);
                }
                _ = tokio::time::sleep(PROGRESS_TICK) => {
                    reporter.progress("pack", done.load(Ordering::Relaxed), Some(total));
                }
            }
        };
        reporter.finish_progress();
        result.map_err(|e| Error::Sync(format!("building the sync archive: {e}")))?
    }
}
