//! Small shell scripts the engine runs on a box for itself (listing artifacts, detached
//! runs' state), through the provider's ordinary command primitive, so every provider that
//! can run a command supports them.

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use super::exec::new_run_id;
use super::run::cancellable;
use crate::error::{Error, Result};
use crate::provider::{BoxSession, ExecEvent, ExecSpec, RUN_ID_VAR};

/// What a script printed and how it ended.
#[derive(Debug, Default)]
pub(super) struct Captured {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `script` with `bash -l -c` in `cwd` and collects its output, refusing more than
/// `limit` bytes of stdout (a listing that large is not what a script of ours prints).
pub(super) async fn capture(
    session: &dyn BoxSession,
    cwd: &str,
    script: &str,
    env: BTreeMap<String, String>,
    limit: usize,
    cancel: &CancellationToken,
) -> Result<Captured> {
    let run_id = new_run_id();
    let mut env = env;
    env.insert(RUN_ID_VAR.to_string(), run_id.clone());
    let spec = ExecSpec {
        script: script.to_string(),
        env,
        cwd: cwd.to_string(),
        run_id,
    };
    let work = async {
        let mut stream = session.start(&spec).await?;
        let mut out = Captured::default();
        while let Some(event) = stream.next_event().await? {
            match event {
                ExecEvent::Stdout(b) => {
                    if out.stdout.len() + b.len() > limit {
                        return Err(Error::Transport(format!(
                            "a script crabbox ran on the box printed more than {limit} bytes"
                        )));
                    }
                    out.stdout.extend_from_slice(&b);
                }
                ExecEvent::Stderr(b) => {
                    if out.stderr.len() < 64 << 10 {
                        out.stderr.extend_from_slice(&b);
                    }
                }
                ExecEvent::Exited(code) => {
                    out.code = code;
                    return Ok(out);
                }
                ExecEvent::Started { .. } => {}
            }
        }
        Err(Error::Transport(
            "a script crabbox ran on the box ended without its exit status".into(),
        ))
    };
    cancellable(cancel, work).await
}

/// NUL-separated fields.
pub(super) fn fields(out: &[u8]) -> impl Iterator<Item = &[u8]> {
    let trimmed = out.strip_suffix(b"\0").unwrap_or(out);
    trimmed.split(|b| *b == 0).filter(move |_| !out.is_empty())
}
