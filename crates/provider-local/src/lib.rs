//! The local provider: a box is a directory `<state dir>/boxes/<lease>/` on this machine.
//!
//! It needs no account and no setup, which makes it the default provider and the reference
//! implementation of the `Provider` trait. It behaves like a remote box where that matters:
//! the command sees only the allow-listed environment, a warm box keeps what commands built
//! there, and a sync replaces only the files crabbox itself put there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crabbox_core::claims::{now_rfc3339, Claim, ClaimStore};
use crabbox_core::provider::{
    BoxStatus, Capabilities, OutputSink, Provider, Reporter, RunOutcome, RunRequest, StatusRequest,
    StopOutcome, StopRequest, SyncReport, SyncSource, Timing, WarmupRequest,
};
use crabbox_core::sync::{extract_archive, write_archive, SyncState};
use crabbox_core::{Error, Result};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

const PROVIDER: &str = "local";
/// Variables a command always gets from the caller, as a login on a remote box would have.
const BASE_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "TERM"];
/// How long a cancelled command gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// Boxes as directories under `state_dir/boxes`.
pub struct LocalProvider {
    claims: ClaimStore,
    state_dir: PathBuf,
    caller_env: BTreeMap<String, String>,
}

impl LocalProvider {
    /// `state_dir` holds `boxes/` and `sync/`; `caller_env` is where `PATH`, `HOME` & co. come from.
    pub fn new(
        claims: ClaimStore,
        state_dir: PathBuf,
        caller_env: BTreeMap<String, String>,
    ) -> Self {
        Self {
            claims,
            state_dir,
            caller_env,
        }
    }

    fn box_dir(&self, lease_id: &str) -> PathBuf {
        self.state_dir.join("boxes").join(lease_id)
    }

    fn sync_state_path(&self, lease_id: &str) -> PathBuf {
        SyncState::path_for(&self.state_dir, lease_id)
    }

    fn status_of(&self, claim: &Claim) -> BoxStatus {
        let dir = self.box_dir(&claim.lease_id);
        let exists = dir.is_dir();
        BoxStatus {
            lease_id: claim.lease_id.clone(),
            slug: claim.slug.clone(),
            provider: PROVIDER.into(),
            remote_id: claim.remote_id.clone(),
            state: if exists {
                "ready".into()
            } else {
                "gone".into()
            },
            ready: exists,
            workdir: claim.workdir.clone(),
            created_at: Some(claim.claimed_at.clone()),
            expires_at: None,
            claimed: true,
        }
    }

    fn create_box(
        &self,
        slug: Option<&str>,
        repo_root: Option<&Path>,
        keep: bool,
    ) -> Result<Claim> {
        let boxes = self.state_dir.join("boxes");
        let claim = self.claims.create(slug, |lease_id, slug| {
            let dir = boxes.join(lease_id);
            let now = now_rfc3339();
            Claim {
                lease_id: lease_id.into(),
                slug: slug.into(),
                provider: PROVIDER.into(),
                remote_id: lease_id.into(),
                endpoint: PROVIDER.into(),
                repo_root: repo_root.map(Path::to_path_buf),
                workdir: dir.to_string_lossy().into_owned(),
                claimed_at: now.clone(),
                last_used_at: now,
                keep,
                labels: BTreeMap::new(),
            }
        })?;
        let dir = self.box_dir(&claim.lease_id);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            let _ = self.claims.remove(&claim.lease_id);
            return Err(Error::io("creating box directory", dir)(e));
        }
        Ok(claim)
    }

    fn find(&self, id: &str) -> Result<Claim> {
        self.claims.resolve(PROVIDER, id)?.ok_or_else(|| {
            Error::NotFound(format!(
                "no local box {id:?}: `crabbox list --provider local` shows the leases this machine holds"
            ))
        })
    }

    fn release(&self, lease_id: &str) -> Result<()> {
        let dir = self.box_dir(lease_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing box directory", dir)(e)),
        }
        SyncState::remove(&self.sync_state_path(lease_id));
        self.claims.remove(lease_id)
    }

    /// Sends what changed since the last sync to this box and deletes what crabbox synced
    /// before and is gone now; everything else in the box (build outputs) stays.
    async fn sync(
        &self,
        lease_id: &str,
        src: &SyncSource,
        reporter: &dyn Reporter,
        cancel: &CancellationToken,
    ) -> Result<SyncReport> {
        let state_path = self.sync_state_path(lease_id);
        let cancelled = Arc::new(AtomicBool::new(false));
        let cancelled_in_task = cancelled.clone();
        let workdir = self.box_dir(lease_id);
        let spool_dir = self.state_dir.join("boxes");
        let src = src.clone();
        let total = src.manifest.total_bytes;
        let (report, progress_rx) = {
            let (tx, rx) = std::sync::mpsc::channel::<u64>();
            let handle = tokio::task::spawn_blocking(move || -> Result<SyncReport> {
                let previous = SyncState::load(&state_path);
                let delta = previous.delta(&src.manifest);
                let deletions: &[String] = if src.delete { &delta.deleted } else { &[] };
                for gone in deletions {
                    let p = workdir.join(gone);
                    if std::fs::symlink_metadata(&p).is_ok() {
                        std::fs::remove_file(&p)
                            .map_err(Error::io("removing stale synced file", &p))?;
                    }
                }
                // Spool next to the boxes, not in a possibly small /tmp: the archive is as big
                // as the changed files.
                let spool = tempfile::tempfile_in(&spool_dir)
                    .map_err(Error::io("creating sync spool in", &spool_dir))?;
                let mut spool_w = std::io::BufWriter::new(&spool);
                let stats = write_archive(&src.root, &delta.changed, &mut spool_w, |b| {
                    let _ = tx.send(b);
                })?;
                drop(spool_w);
                // Stop before touching the box if the run was interrupted meanwhile.
                if cancelled_in_task.load(Ordering::SeqCst) {
                    return Err(Error::Interrupted);
                }
                use std::io::Seek;
                let mut reader = &spool;
                reader
                    .seek(std::io::SeekFrom::Start(0))
                    .map_err(|e| Error::Sync(format!("rewinding sync spool: {e}")))?;
                extract_archive(std::io::BufReader::new(reader), &workdir)?;
                SyncState::from_manifest(&src.manifest).save(&state_path)?;
                Ok(SyncReport {
                    files: src.manifest.len() as u64,
                    bytes: src.manifest.total_bytes,
                    sent_files: stats.files,
                    deleted_files: deletions.len() as u64,
                })
            });
            (handle, rx)
        };
        let mut report = report;
        // The blocking task is always awaited, even on cancel, so nothing writes into the
        // box after this returns (the caller may be about to delete it).
        let result = loop {
            tokio::select! {
                r = &mut report => break r,
                _ = cancel.cancelled(), if !cancelled.load(Ordering::SeqCst) => {
                    cancelled.store(true, Ordering::SeqCst);
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Some(done) = progress_rx.try_iter().last() {
                        reporter.progress("sync", done, Some(total));
                    }
                }
            }
        };
        reporter.finish_progress();
        result.map_err(|e| Error::Sync(format!("sync task failed: {e}")))?
    }

    fn command_env(&self, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = BASE_ENV
            .iter()
            .filter_map(|k| self.caller_env.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    async fn exec(
        &self,
        req: &RunRequest,
        workdir: &Path,
        out: &mut dyn OutputSink,
    ) -> Result<i32> {
        let mut cmd = tokio::process::Command::new("/bin/bash");
        cmd.arg("-l")
            .arg("-c")
            .arg(req.command.script())
            .current_dir(workdir)
            .env_clear()
            .envs(self.command_env(&req.env))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            Error::Transport(format!("starting /bin/bash in {}: {e}", workdir.display()))
        })?;
        let pgid = child.id().map(|p| p as i32);
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (mut obuf, mut ebuf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
        let (mut o_open, mut e_open) = (true, true);
        let write_err =
            |e: std::io::Error| Error::Transport(format!("writing command output: {e}"));
        while o_open || e_open {
            tokio::select! {
                n = stdout.read(&mut obuf), if o_open => match n {
                    Ok(0) | Err(_) => o_open = false,
                    Ok(n) => out.stdout(&obuf[..n]).map_err(write_err)?,
                },
                n = stderr.read(&mut ebuf), if e_open => match n {
                    Ok(0) | Err(_) => e_open = false,
                    Ok(n) => out.stderr(&ebuf[..n]).map_err(write_err)?,
                },
                _ = req.cancel.cancelled() => {
                    terminate(pgid, &mut child).await;
                    return Err(Error::Interrupted);
                }
            }
        }
        let status = tokio::select! {
            s = child.wait() => s.map_err(|e| Error::Transport(format!("waiting for command: {e}")))?,
            _ = req.cancel.cancelled() => {
                terminate(pgid, &mut child).await;
                return Err(Error::Interrupted);
            }
        };
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(1))
    }
}

/// SIGTERM to the whole process group, SIGKILL after a grace period.
async fn terminate(pgid: Option<i32>, child: &mut tokio::process::Child) {
    if let Some(pgid) = pgid {
        // SAFETY: kill(2) with a negative pid signals a process group we created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        if tokio::time::timeout(KILL_GRACE, child.wait())
            .await
            .is_err()
        {
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        } else {
            // The leader is gone; make sure nothing else in its group lingers.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
    let _ = child.kill().await;
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            machine_class: false,
            remote_kill: true,
            warm_reuse: true,
        }
    }

    async fn warmup(&self, req: &WarmupRequest, reporter: &dyn Reporter) -> Result<BoxStatus> {
        let claim = self.create_box(req.slug.as_deref(), req.repo_root.as_deref(), true)?;
        reporter.status(&format!(
            "leased local box {} ({})",
            claim.lease_id, claim.slug
        ));
        Ok(self.status_of(&claim))
    }

    async fn run(
        &self,
        req: &RunRequest,
        out: &mut dyn OutputSink,
        reporter: &dyn Reporter,
    ) -> Result<RunOutcome> {
        let t0 = Instant::now();
        let (claim, created) = match &req.id {
            Some(id) => {
                let claim = self.find(id)?;
                let dir = self.box_dir(&claim.lease_id);
                if !dir.is_dir() {
                    return Err(Error::NotFound(format!(
                        "local box {} ({}) has no directory {} any more; `crabbox stop {}` drops the claim",
                        claim.lease_id,
                        claim.slug,
                        dir.display(),
                        claim.lease_id
                    )));
                }
                let mut c = claim.clone();
                c.last_used_at = now_rfc3339();
                self.claims.write(&c)?;
                (c, false)
            }
            None => {
                let c = self.create_box(req.slug.as_deref(), req.repo_root.as_deref(), false)?;
                reporter.status(&format!("created local box {} ({})", c.lease_id, c.slug));
                (c, true)
            }
        };
        let acquire = t0.elapsed();
        let workdir = self.box_dir(&claim.lease_id);
        let t1 = Instant::now();
        let body = async {
            let sync = match &req.sync {
                Some(src) => {
                    let r = self
                        .sync(&claim.lease_id, src, reporter, &req.cancel)
                        .await?;
                    reporter.status(&format!(
                        "synced {} files ({} sent, {} deleted)",
                        r.files, r.sent_files, r.deleted_files
                    ));
                    Some(r)
                }
                None => None,
            };
            let sync_time = t1.elapsed();
            if req.cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            let t2 = Instant::now();
            let code = self.exec(req, &workdir, out).await?;
            Ok::<_, Error>((sync, sync_time, code, t2.elapsed()))
        };
        // Cancellation is handled inside sync and exec, which clean up before returning;
        // racing the whole body against the token here would drop them half-way.
        let result = body.await;
        let success = matches!(&result, Ok((_, _, 0, _)));
        let keep = !created || req.keep.keeps(success);
        let t3 = Instant::now();
        if !keep {
            self.release(&claim.lease_id)?;
        } else if created {
            let mut c = claim.clone();
            c.keep = true;
            self.claims.write(&c)?;
            if !success {
                reporter.status(&format!(
                    "kept local box {} ({}) for debugging; rerun: crabbox run --provider local --id {} -- <cmd>; release: crabbox stop --provider local {}",
                    claim.lease_id, claim.slug, claim.lease_id, claim.lease_id
                ));
            }
        }
        let (sync, sync_time, exit_code, cmd_time) = result?;
        Ok(RunOutcome {
            lease_id: claim.lease_id.clone(),
            slug: claim.slug.clone(),
            exit_code,
            kept: keep,
            created,
            timing: Timing {
                acquire_ms: ms(acquire),
                sync_ms: ms(sync_time),
                command_ms: ms(cmd_time),
                release_ms: ms(t3.elapsed()),
            },
            sync,
        })
    }

    async fn status(&self, req: &StatusRequest) -> Result<BoxStatus> {
        let claim = self.find(&req.id)?;
        let st = self.status_of(&claim);
        if !st.ready {
            return Err(Error::NotFound(format!(
                "local box {} ({}) is gone: its directory {} was removed; `crabbox stop {}` drops the claim",
                claim.lease_id, claim.slug, st.workdir, claim.lease_id
            )));
        }
        Ok(st)
    }

    async fn stop(&self, req: &StopRequest) -> Result<StopOutcome> {
        let claim = self.find(&req.id)?;
        let already_gone = !self.box_dir(&claim.lease_id).is_dir();
        self.release(&claim.lease_id)?;
        Ok(StopOutcome {
            lease_id: claim.lease_id,
            slug: claim.slug,
            already_gone,
        })
    }

    async fn list(&self) -> Result<Vec<BoxStatus>> {
        let (claims, _corrupt) = self.claims.list()?;
        Ok(claims
            .iter()
            .filter(|c| c.provider == PROVIDER)
            .map(|c| self.status_of(c))
            .collect())
    }
}
