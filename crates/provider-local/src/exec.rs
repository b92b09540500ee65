//! Commands on a local box: `/bin/bash -l -c` in its own process group, and the signals that
//! reach the whole group.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use crabbox_core::provider::{ExecEvent, ExecSpec, ExecStream, Signal};
use crabbox_core::{Error, Result};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout};

/// Variables a command always gets from the caller, as a login on a remote box would have.
pub const BASE_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "TERM"];
/// How often a stopping group is checked for survivors.
const GROUP_POLL: Duration = Duration::from_millis(50);
const READ_CHUNK: usize = 16 * 1024;

/// A started command's output and end, as events.
pub struct LocalStream {
    child: Child,
    pgid: i32,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    started: bool,
    ended: bool,
}

impl LocalStream {
    pub fn spawn(spec: &ExecSpec, caller_env: &BTreeMap<String, String>) -> Result<Self> {
        let mut env: BTreeMap<String, String> = BASE_ENV
            .iter()
            .filter_map(|k| caller_env.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut child = tokio::process::Command::new("/bin/bash")
            .arg("-l")
            .arg("-c")
            .arg(&spec.script)
            .current_dir(&spec.cwd)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Transport(format!("starting /bin/bash in {}: {e}", spec.cwd)))?;
        let pgid = child.id().map_or(0, |p| p as i32);
        Ok(Self {
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            pgid,
            started: false,
            ended: false,
        })
    }

    pub fn pgid(&self) -> i32 {
        self.pgid
    }
}

#[async_trait]
impl ExecStream for LocalStream {
    async fn next_event(&mut self) -> Result<Option<ExecEvent>> {
        if !self.started {
            self.started = true;
            return Ok(Some(ExecEvent::Started {
                pid: self.pgid as u32,
            }));
        }
        if self.ended {
            return Ok(None);
        }
        let (mut obuf, mut ebuf) = (vec![0u8; READ_CHUNK], vec![0u8; READ_CHUNK]);
        while self.stdout.is_some() || self.stderr.is_some() {
            tokio::select! {
                n = read_some(&mut self.stdout, &mut obuf), if self.stdout.is_some() => match n {
                    Some(n) => return Ok(Some(ExecEvent::Stdout(obuf[..n].to_vec()))),
                    None => self.stdout = None,
                },
                n = read_some(&mut self.stderr, &mut ebuf), if self.stderr.is_some() => match n {
                    Some(n) => return Ok(Some(ExecEvent::Stderr(ebuf[..n].to_vec()))),
                    None => self.stderr = None,
                },
            }
        }
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| Error::Transport(format!("waiting for the command: {e}")))?;
        self.ended = true;
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(1);
        Ok(Some(ExecEvent::Exited(code)))
    }
}

/// Reads what is there; `None` at the end of the stream or on a read error.
async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut [u8],
) -> Option<usize> {
    match pipe.as_mut()?.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

fn signo(signal: Signal) -> i32 {
    match signal {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    }
}

/// Sends `signal` to every process of group `pgid`.
pub fn signal_group(pgid: i32, signal: Signal) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group this provider created.
        unsafe { libc::kill(-pgid, signo(signal)) };
    }
}

/// A member of group `pgid` is still there.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    pgid > 0 && unsafe { libc::kill(-pgid, 0) } == 0
}

/// SIGTERM to the group, up to `grace` for it to empty, then SIGKILL to what is left.
pub async fn stop_group(pgid: i32, grace: Duration) {
    signal_group(pgid, Signal::Term);
    let deadline = tokio::time::Instant::now() + grace;
    while group_alive(pgid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(GROUP_POLL).await;
    }
    signal_group(pgid, Signal::Kill);
}
