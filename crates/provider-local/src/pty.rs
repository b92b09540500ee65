//! A program under a pseudo-terminal on a local box: `openpty`, `/bin/bash` (`-i -l`, or
//! `-l -c` with the program) as the leader of a new session whose controlling terminal is
//! the pty, in the box directory. Output is read from the master on a thread of its own.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use crabbox_core::command::shell_quote;
use crabbox_core::provider::{PtyControl, PtyEvent, PtyHandle, PtySpec, PtyStream};
use crabbox_core::{Error, Result};

use crate::exec::BASE_ENV;

fn winsize(cols: u16, rows: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

pub fn start(spec: &PtySpec, caller_env: &BTreeMap<String, String>) -> Result<PtyHandle> {
    let (mut master, mut slave) = (0, 0);
    let size = winsize(spec.cols, spec.rows);
    // SAFETY: openpty writes two new descriptors, owned from here on.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc != 0 {
        return Err(Error::Transport(format!(
            "opening a pseudo-terminal: {}",
            std::io::Error::last_os_error()
        )));
    }
    let master = unsafe { std::fs::File::from_raw_fd(master) };
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    let mut env: BTreeMap<String, String> = BASE_ENV
        .iter()
        .filter_map(|k| caller_env.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    env.extend(spec.env.clone());
    let mut cmd = std::process::Command::new("/bin/bash");
    if spec.argv.is_empty() {
        cmd.args(["-i", "-l"]);
    } else {
        let script: Vec<String> = spec.argv.iter().map(|w| shell_quote(w)).collect();
        cmd.args(["-l", "-c", &script.join(" ")]);
    }
    if !spec.cwd.is_empty() {
        cmd.current_dir(&spec.cwd);
    }
    let io = |fd: &OwnedFd| -> Result<std::process::Stdio> {
        fd.try_clone()
            .map(std::process::Stdio::from)
            .map_err(|e| Error::Transport(format!("sharing the pseudo-terminal: {e}")))
    };
    cmd.env_clear()
        .envs(env)
        .stdin(io(&slave)?)
        .stdout(io(&slave)?)
        .stderr(io(&slave)?);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::Transport(format!("starting /bin/bash under a terminal: {e}")))?;
    drop(slave);
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let mut reader = master
        .try_clone()
        .map_err(|e| Error::Transport(format!("reading the pseudo-terminal: {e}")))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        // EIO once the program and every holder of the terminal are gone.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.blocking_send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    // The program's end, whether or not something it left behind still holds the terminal.
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    let mut child = child;
    std::thread::spawn(move || {
        use std::os::unix::process::ExitStatusExt;
        let code = match child.wait() {
            Ok(status) => status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            Err(_) => -1,
        };
        let _ = exit_tx.send(code);
    });
    let master = Arc::new(Mutex::new(master));
    Ok(PtyHandle {
        stream: Box::new(LocalPtyStream {
            output: rx,
            exit: Some(exit_rx),
            exited: None,
        }),
        control: Arc::new(LocalPtyControl { master }),
    })
}

struct LocalPtyStream {
    output: tokio::sync::mpsc::Receiver<Vec<u8>>,
    exit: Option<tokio::sync::oneshot::Receiver<i32>>,
    /// The program ended with this code; what it printed last is still being read.
    exited: Option<i32>,
}

/// How long output is still collected after the program ended (its last words may still
/// be in the terminal when its end is known).
const DRAIN: std::time::Duration = std::time::Duration::from_millis(100);

#[async_trait]
impl PtyStream for LocalPtyStream {
    async fn next_event(&mut self) -> Result<Option<PtyEvent>> {
        if let Some(code) = self.exited {
            return Ok(
                match tokio::time::timeout(DRAIN, self.output.recv()).await {
                    Ok(Some(bytes)) => Some(PtyEvent::Output(bytes)),
                    _ => {
                        self.exited = None;
                        self.exit = None;
                        Some(PtyEvent::Exited(code))
                    }
                },
            );
        }
        let Some(exit) = self.exit.as_mut() else {
            return Ok(None);
        };
        let output = tokio::select! {
            bytes = self.output.recv() => Some(bytes),
            code = exit => {
                self.exited = Some(code.unwrap_or(-1));
                None
            }
        };
        match output {
            Some(Some(bytes)) => Ok(Some(PtyEvent::Output(bytes))),
            // The terminal closed before the end was known: the end follows.
            Some(None) => {
                let code = self.exit.take().expect("checked above").await.unwrap_or(-1);
                Ok(Some(PtyEvent::Exited(code)))
            }
            None => self.next_event().await,
        }
    }
}

struct LocalPtyControl {
    master: Arc<Mutex<std::fs::File>>,
}

#[async_trait]
impl PtyControl for LocalPtyControl {
    async fn input(&self, bytes: &[u8]) -> Result<()> {
        self.master
            .lock()
            .expect("pty lock")
            .write_all(bytes)
            .map_err(|e| Error::Transport(format!("typing into the terminal: {e}")))
    }

    async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        let size = winsize(cols, rows);
        let fd = self.master.lock().expect("pty lock").as_raw_fd();
        // SAFETY: TIOCSWINSZ reads one winsize.
        if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) } != 0 {
            return Err(Error::Transport(format!(
                "resizing the terminal: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }
}
