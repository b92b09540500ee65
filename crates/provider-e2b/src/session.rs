//! [`E2bSession`]: commands and files on one running sandbox, through its envd.

use std::time::Duration;

use async_trait::async_trait;
use crabbox_core::events::Reporter;
use crabbox_core::provider::{
    ApplySync, BoxSession, ChunkFeed, ExecEvent, ExecSpec, ExecStream, RunTarget, Signal,
};
use crabbox_core::sync::{Codec, RemoteTree};
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::control::SandboxState;
use crabbox_e2b_wire::process::{DataEvent, ProcessConfig, ProcessEvent, StartRequest};

use crate::control::ControlPlane;
use crate::envd::{exit_code_of, gone, Envd, ProcessStream};
use crate::scan_cache::ScanCache;

/// How long the control plane gets to say whether a sandbox whose command stream broke is
/// still running.
const LIVENESS_BUDGET: Duration = Duration::from_secs(15);

/// Bound of writing one small file (a script) to the box.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

/// One sandbox's envd, as the engine uses it.
pub struct E2bSession {
    sandbox_id: String,
    envd: Envd,
    /// Asked whether the sandbox still runs when a command's stream breaks.
    control: ControlPlane,
    /// What the box can unpack, once asked.
    codecs: tokio::sync::Mutex<Vec<Codec>>,
    /// What this machine last read of the box's tree.
    scans: Option<ScanCache>,
    /// Opening it woke the sandbox from a pause.
    resumed: bool,
}

impl E2bSession {
    pub fn new(sandbox_id: &str, envd: Envd, control: ControlPlane) -> Self {
        Self {
            sandbox_id: sandbox_id.to_string(),
            envd,
            control,
            codecs: tokio::sync::Mutex::default(),
            scans: None,
            resumed: false,
        }
    }

    /// Keeps what scans read of the box's tree in `cache`, so an unchanged tree is confirmed
    /// by hash rather than sent again.
    pub fn with_scan_cache(mut self, cache: Option<ScanCache>) -> Self {
        self.scans = cache;
        self
    }

    /// Marks the session as the one whose opening woke the sandbox.
    pub fn resumed_now(mut self, resumed: bool) -> Self {
        self.resumed = resumed;
        self
    }

    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }
}

#[async_trait]
impl BoxSession for E2bSession {
    fn resumed(&self) -> bool {
        self.resumed
    }

    async fn start_pty(
        &self,
        spec: &crabbox_core::provider::PtySpec,
    ) -> Result<crabbox_core::provider::PtyHandle> {
        crate::pty::start(&self.envd, spec).await
    }

    async fn exists(&self, path: &str) -> Result<bool> {
        self.envd.exists(path).await
    }

    async fn scan(&self, workdir: &str, checksum: bool) -> Result<RemoteTree> {
        let cache = self.scans.as_ref().map(|c| (c, self.sandbox_id.as_str()));
        match crate::remote_sync::scan(&self.envd, workdir, checksum, cache).await {
            Err(Error::Transport(e)) => {
                let broken = Error::Transport(format!(
                    "reading the synced tree on sandbox {} failed: {e}; nothing on the box \
                     was changed, retry later",
                    self.sandbox_id
                ));
                why_broken(&self.control, &self.sandbox_id, Err(broken)).await
            }
            other => other,
        }
    }

    async fn unchanged_since(&self, workdir: &str, state: &str) -> Result<bool> {
        let cache = self.scans.as_ref().map(|c| (c, self.sandbox_id.as_str()));
        Ok(crate::remote_sync::unchanged_since(&self.envd, workdir, state, cache).await)
    }

    async fn make_dir(&self, path: &str) -> Result<()> {
        self.envd.make_dir(path).await
    }

    async fn codecs(&self) -> Vec<Codec> {
        let mut codecs = self.codecs.lock().await;
        if codecs.is_empty() {
            *codecs = crate::remote_sync::probe_codecs(&self.envd).await;
        }
        codecs.clone()
    }

    async fn apply_sync(
        &self,
        req: &ApplySync<'_>,
        chunks: ChunkFeed,
        reporter: &dyn Reporter,
    ) -> Result<Option<String>> {
        // The tree is about to change: what its watcher vouched for is void until the commit
        // reports what changed (a sync cut short leaves no note, so the next scan reads all).
        let noted = self.scans.as_ref().and_then(|c| {
            let w = c.watched(&self.sandbox_id, req.workdir);
            c.forget_watch(&self.sandbox_id, req.workdir);
            w
        });
        match crate::remote_sync::apply(&self.envd, req, chunks, reporter).await {
            Err(Error::Transport(e)) => {
                let broken = if e.contains("retry later") {
                    Error::Transport(e)
                } else {
                    Error::Transport(format!(
                        "the sync to sandbox {} failed: {e}; the workdir is unchanged, retry \
                         later",
                        self.sandbox_id
                    ))
                };
                why_broken(&self.control, &self.sandbox_id, Err(broken)).await
            }
            Err(e) => Err(e),
            Ok(()) => {
                let mut state = None;
                if let Some(c) = &self.scans {
                    if let Some(record) = req.record {
                        c.keep_record(&self.sandbox_id, req.workdir, record);
                    }
                    // What the sync changed, read afresh by the watcher (which then forgets it):
                    // the next run need not read the tree. A watcher that cannot say (the record
                    // changed, say) leaves no note, and the next run reads it all.
                    let locked = match &noted {
                        Some(_) => c.lock(&self.sandbox_id, req.workdir).await,
                        None => None,
                    };
                    if let (Some(w), Some(_locked)) = (&noted, locked) {
                        let ctl = crate::remote_sync::watch_dir(req.workdir);
                        let changes = crate::remote_sync::watcher_changes(&self.envd, &ctl, &w.id);
                        if let Some(segment) = changes.await {
                            let noted = c.extend_patch(&self.sandbox_id, req.workdir, w, &segment);
                            state = noted.map(|n| n.state());
                        }
                    }
                }
                Ok(state)
            }
        }
    }

    async fn read_file(
        &self,
        path: &str,
        into: &mut (dyn tokio::io::AsyncWrite + Send + Unpin),
    ) -> Result<u64> {
        self.envd.download(path, into).await
    }

    async fn write_file(&self, path: &str, body: &[u8]) -> Result<()> {
        let len = body.len() as u64;
        self.envd
            .upload(path, reqwest::Body::from(body.to_vec()), len, WRITE_TIMEOUT)
            .await
    }

    async fn start(&self, spec: &ExecSpec) -> Result<Box<dyn ExecStream>> {
        let start = StartRequest {
            process: Some(ProcessConfig {
                cmd: "/bin/bash".into(),
                args: vec!["-l".into(), "-c".into(), spec.script.clone()],
                envs: spec.env.clone(),
                cwd: Some(spec.cwd.clone()),
            }),
            pty: None,
            tag: None,
            stdin: Some(false),
        };
        let stream = self.envd.start(&start).await?;
        Ok(Box::new(E2bExecStream {
            stream,
            ended: false,
            sandbox_id: self.sandbox_id.clone(),
            control: self.control.clone(),
        }))
    }

    async fn signal(&self, target: &RunTarget, signal: Signal) -> Result<()> {
        let Some(pid) = target.pid else {
            return Ok(());
        };
        let signal = match signal {
            Signal::Term => crabbox_e2b_wire::process::Signal::Sigterm,
            Signal::Kill => crabbox_e2b_wire::process::Signal::Sigkill,
        };
        self.envd.send_signal(pid, signal).await
    }

    /// envd signals only one pid, so a reaper on the box finds the run's processes by the
    /// run id in their environment (see [`crate::run_tree`]).
    async fn stop_run(&self, target: &RunTarget, grace: Duration) {
        crate::run_tree::reap(&self.envd, &target.run_id, grace).await;
    }
}

/// envd's process events as the engine's. A stream that breaks (or ends without the
/// command's end) because the sandbox died says so: the control plane is asked.
struct E2bExecStream {
    stream: ProcessStream,
    ended: bool,
    sandbox_id: String,
    control: ControlPlane,
}

/// `Error::NotFound` when the control plane says the sandbox is gone or no longer running;
/// otherwise `broken` (also when it cannot tell within [`LIVENESS_BUDGET`]).
async fn why_broken<T: Send>(
    control: &ControlPlane,
    sandbox_id: &str,
    broken: Result<T>,
) -> Result<T> {
    match tokio::time::timeout(LIVENESS_BUDGET, control.get(sandbox_id)).await {
        Ok(Ok(None)) => Err(gone(sandbox_id)),
        Ok(Ok(Some(d))) if d.state != SandboxState::Running => Err(gone(sandbox_id)),
        _ => broken,
    }
}

#[async_trait]
impl ExecStream for E2bExecStream {
    async fn next_event(&mut self) -> Result<Option<ExecEvent>> {
        if self.ended {
            return Ok(None);
        }
        loop {
            let event = match self.stream.next_event().await {
                Ok(Some(event)) => event,
                Ok(None) => return why_broken(&self.control, &self.sandbox_id, Ok(None)).await,
                Err(e @ Error::Transport(_)) => {
                    return why_broken(&self.control, &self.sandbox_id, Err(e)).await
                }
                Err(e) => return Err(e),
            };
            return Ok(Some(match event {
                ProcessEvent::Start(s) => ExecEvent::Started { pid: s.pid },
                ProcessEvent::Data(DataEvent::Stdout(b))
                | ProcessEvent::Data(DataEvent::Pty(b)) => ExecEvent::Stdout(b),
                ProcessEvent::Data(DataEvent::Stderr(b)) => ExecEvent::Stderr(b),
                ProcessEvent::End(end) => {
                    self.ended = true;
                    ExecEvent::Exited(exit_code_of(&end))
                }
                ProcessEvent::Keepalive(_) => continue,
            }));
        }
    }
}
