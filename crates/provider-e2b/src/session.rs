//! [`E2bSession`]: commands and files on one running sandbox, through its envd.

use std::time::Duration;

use async_trait::async_trait;
use crabbox_core::events::Reporter;
use crabbox_core::provider::{
    ApplySync, BoxSession, ChunkFeed, ExecEvent, ExecSpec, ExecStream, RunTarget, Signal,
};
use crabbox_core::sync::{Codec, RemoteTree};
use crabbox_core::Result;
use crabbox_e2b_wire::process::{DataEvent, ProcessConfig, ProcessEvent, StartRequest};

use crate::envd::{exit_code_of, Envd, ProcessStream};

/// One sandbox's envd, as the engine uses it.
pub struct E2bSession {
    sandbox_id: String,
    envd: Envd,
    /// What the box can unpack, once asked.
    codecs: tokio::sync::Mutex<Vec<Codec>>,
}

impl E2bSession {
    pub fn new(sandbox_id: &str, envd: Envd) -> Self {
        Self {
            sandbox_id: sandbox_id.to_string(),
            envd,
            codecs: tokio::sync::Mutex::default(),
        }
    }

    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }
}

#[async_trait]
impl BoxSession for E2bSession {
    async fn exists(&self, path: &str) -> Result<bool> {
        self.envd.exists(path).await
    }

    async fn scan(&self, workdir: &str, checksum: bool) -> Result<RemoteTree> {
        crate::remote_sync::scan(&self.envd, workdir, checksum).await
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
    ) -> Result<()> {
        crate::remote_sync::apply(&self.envd, req, chunks, reporter).await
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

/// envd's process events as the engine's.
struct E2bExecStream {
    stream: ProcessStream,
    ended: bool,
}

#[async_trait]
impl ExecStream for E2bExecStream {
    async fn next_event(&mut self) -> Result<Option<ExecEvent>> {
        if self.ended {
            return Ok(None);
        }
        loop {
            let Some(event) = self.stream.next_event().await? else {
                return Ok(None);
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
