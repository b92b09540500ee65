//! `crabbox shell ID [-- PROGRAM...]`: a terminal on a box. The local terminal goes raw
//! (every key, Ctrl-C included, goes to the box), window resizes are forwarded, and the
//! remote program's exit code is crabbox's.

use std::io::{Read, Write};

use crabbox_core::engine::ShellRequest;
use crabbox_core::provider::PtyEvent;
use crabbox_core::{Error, Result};

use crate::cli::{GlobalArgs, ShellArgs};
use crate::context;

/// The terminal on `fd`'s size as (cols, rows), when it is one.
fn window_size(fd: i32) -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we pass.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Puts stdin's terminal in raw mode until dropped.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a termios we own.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawMode { saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enter`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

pub async fn run(g: &GlobalArgs, a: ShellArgs) -> Result<i32> {
    let cfg = context::load_config(g, vec![])?;
    let engine = context::engine(&cfg, g)?;
    let reporter = context::reporter();
    let (cols, rows) = window_size(0).unwrap_or((80, 24));
    let term = std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty() && t != "dumb")
        .unwrap_or_else(|| "xterm-256color".into());
    let shell = engine
        .shell(
            &ShellRequest {
                id: a.id,
                argv: a.program,
                cols,
                rows,
                term,
                ttl: cfg.core.ttl,
            },
            reporter.as_ref(),
        )
        .await?;
    eprintln!(
        "crabbox: terminal on {} box {} (lease {}, {}); exit the shell to leave",
        engine.name(),
        shell.remote_id,
        shell.lease_id,
        shell.slug
    );
    let _raw = RawMode::enter();
    let control = shell.pty.control.clone();

    // Keystrokes: a blocking reader thread feeds a task that types them on the box.
    let (keys_tx, mut keys_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if keys_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let typing = {
        let control = control.clone();
        tokio::spawn(async move {
            while let Some(keys) = keys_rx.recv().await {
                if control.input(&keys).await.is_err() {
                    return;
                }
            }
        })
    };
    let resizing = {
        let control = control.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut winch) = signal(SignalKind::window_change()) else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some((cols, rows)) = window_size(0) {
                    let _ = control.resize(cols, rows).await;
                }
            }
        })
    };

    let mut stream = shell.pty.stream;
    let mut stdout = std::io::stdout();
    let result = loop {
        match stream.next_event().await {
            Ok(Some(PtyEvent::Output(bytes))) => {
                let _ = stdout.write_all(&bytes);
                let _ = stdout.flush();
            }
            Ok(Some(PtyEvent::Exited(code))) => break Ok(code),
            Ok(None) => {
                break Err(Error::Transport(format!(
                    "the terminal on box {} closed without its program's end",
                    shell.remote_id
                )))
            }
            Err(e) => break Err(e),
        }
    };
    typing.abort();
    resizing.abort();
    if let Err(e) = engine.end_shell(&shell.end).await {
        eprintln!("crabbox: warning: could not restart the box's idle timeout: {e}");
    }
    result
}
