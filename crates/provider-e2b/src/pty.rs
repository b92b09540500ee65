//! A program under a pseudo-terminal on a sandbox, through envd's process API: `Start`
//! with `pty` (output arrives as `data.pty`), `SendInput` with `pty` bytes, `Update` to
//! resize. Like the SDK's `pty.create`, with no deadline on the stream.

use std::sync::Arc;

use async_trait::async_trait;
use crabbox_core::command::shell_quote;
use crabbox_core::provider::{PtyControl, PtyEvent, PtyHandle, PtySpec, PtyStream};
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::process::{
    DataEvent, ProcessConfig, ProcessEvent, ProcessInput, ProcessSelector, Pty, PtySize,
    SendInputRequest, StartRequest, UpdateRequest, SERVICE,
};

use crate::envd::{exit_code_of, Envd, ProcessStream};

/// Starts `spec` and waits for its pid (the first event), which input and resizes name.
pub async fn start(envd: &Envd, spec: &PtySpec) -> Result<PtyHandle> {
    let args = if spec.argv.is_empty() {
        vec!["-i".to_string(), "-l".to_string()]
    } else {
        let script: Vec<String> = spec.argv.iter().map(|w| shell_quote(w)).collect();
        vec!["-l".into(), "-c".into(), script.join(" ")]
    };
    let request = StartRequest {
        process: Some(ProcessConfig {
            cmd: "/bin/bash".into(),
            args,
            envs: spec.env.clone(),
            cwd: Some(spec.cwd.clone()).filter(|c| !c.is_empty()),
        }),
        pty: Some(Pty {
            size: Some(PtySize {
                cols: u32::from(spec.cols),
                rows: u32::from(spec.rows),
            }),
        }),
        tag: None,
        stdin: None,
    };
    let mut stream = envd.start(&request).await?;
    let pid = loop {
        match stream.next_event().await? {
            Some(ProcessEvent::Start(s)) => break s.pid,
            Some(ProcessEvent::Keepalive(_)) => {}
            Some(other) => {
                return Err(Error::Transport(format!(
                    "sandbox {}: the terminal's stream began with {other:?} instead of its start",
                    envd.sandbox_id()
                )))
            }
            None => {
                return Err(Error::Transport(format!(
                    "sandbox {}: the terminal's program ended before it started",
                    envd.sandbox_id()
                )))
            }
        }
    };
    Ok(PtyHandle {
        stream: Box::new(E2bPtyStream { stream }),
        control: Arc::new(E2bPtyControl {
            envd: envd.clone(),
            pid,
        }),
    })
}

struct E2bPtyStream {
    stream: ProcessStream,
}

#[async_trait]
impl PtyStream for E2bPtyStream {
    async fn next_event(&mut self) -> Result<Option<PtyEvent>> {
        loop {
            return Ok(match self.stream.next_event().await? {
                None => None,
                Some(ProcessEvent::Data(DataEvent::Pty(bytes)))
                | Some(ProcessEvent::Data(DataEvent::Stdout(bytes)))
                | Some(ProcessEvent::Data(DataEvent::Stderr(bytes))) => {
                    Some(PtyEvent::Output(bytes))
                }
                Some(ProcessEvent::End(end)) => Some(PtyEvent::Exited(exit_code_of(&end))),
                Some(ProcessEvent::Start(_)) | Some(ProcessEvent::Keepalive(_)) => continue,
            });
        }
    }
}

struct E2bPtyControl {
    envd: Envd,
    pid: u32,
}

#[async_trait]
impl PtyControl for E2bPtyControl {
    async fn input(&self, bytes: &[u8]) -> Result<()> {
        let req = SendInputRequest {
            process: Some(ProcessSelector::Pid(self.pid)),
            input: Some(ProcessInput::Pty(bytes.to_vec())),
        };
        self.envd
            .unary::<_, serde_json::Value>(SERVICE, "SendInput", &req)
            .await
            .map(|_| ())
            .map_err(|e| e.into_error(&format!("typing into pid {}", self.pid)))
    }

    async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        let req = UpdateRequest {
            process: Some(ProcessSelector::Pid(self.pid)),
            pty: Some(Pty {
                size: Some(PtySize {
                    cols: u32::from(cols),
                    rows: u32::from(rows),
                }),
            }),
        };
        self.envd
            .unary::<_, serde_json::Value>(SERVICE, "Update", &req)
            .await
            .map(|_| ())
            .map_err(|e| e.into_error(&format!("resizing the terminal of pid {}", self.pid)))
    }
}
