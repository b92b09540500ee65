//! What the engine reports during a call, as MCP progress notifications: status lines, sync
//! transfer progress and the command's output lines, in order, each masked of the call's
//! credentials. Sent only when the client asked (a progress token); status lines also go to
//! stderr, which an agent keeps as the server's log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crabbox_core::engine::human_bytes;
use crabbox_core::events::Reporter;
use crabbox_core::hint::Hint;
use crabbox_core::secret::{scrub, Secret};
use rmcp::model::ProgressNotificationParam;
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Messages waiting to be sent; past this, output lines are counted, not queued, so a chatty
/// command cannot grow the server's memory or flood the client.
const QUEUE: usize = 512;
/// How often a transfer's byte count is reported.
const BYTES_EVERY: Duration = Duration::from_millis(250);
/// Longest output line sent as it is; longer ones are cut.
const LINE_MAX: usize = 400;

/// One call's reporter.
pub(crate) struct CallReporter {
    tx: Mutex<Option<mpsc::Sender<String>>>,
    secrets: OnceLock<Vec<Secret>>,
    dropped: AtomicU64,
    last_bytes: Mutex<Option<Instant>>,
}

/// Sends the queued messages; [`Forwarder::finish`] waits until the last is out, so that every
/// notification precedes the call's response.
pub(crate) struct Forwarder {
    task: Option<JoinHandle<()>>,
    reporter: Arc<CallReporter>,
}

/// A reporter for the call `ctx` and the task that forwards what it hears.
pub(crate) fn start(ctx: &RequestContext<RoleServer>) -> (Arc<CallReporter>, Forwarder) {
    let (tx, task) = match ctx.meta.get_progress_token() {
        Some(token) => {
            let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
            let peer = ctx.peer.clone();
            let task = tokio::spawn(async move {
                let mut n = 0u64;
                while let Some(message) = rx.recv().await {
                    n += 1;
                    let param = ProgressNotificationParam::new(token.clone(), n as f64)
                        .with_message(message);
                    // A client that went away stops hearing; the call goes on regardless.
                    let _ = peer.notify_progress(param).await;
                }
            });
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let reporter = Arc::new(CallReporter::new(tx));
    let forwarder = Forwarder {
        task,
        reporter: reporter.clone(),
    };
    (reporter, forwarder)
}

impl Forwarder {
    /// Closes the queue and waits until everything in it was sent.
    pub async fn finish(mut self) {
        let dropped = self.reporter.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            self.reporter.send(format!(
                "({dropped} output lines were not sent as progress)"
            ));
        }
        self.reporter.tx.lock().unwrap().take();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// A reporter whose messages go nowhere but stderr (no client asked for progress).
#[cfg(test)]
pub(crate) fn detached() -> Arc<CallReporter> {
    Arc::new(CallReporter::new(None))
}

impl CallReporter {
    fn new(tx: Option<mpsc::Sender<String>>) -> Self {
        Self {
            tx: Mutex::new(tx),
            secrets: OnceLock::new(),
            dropped: AtomicU64::new(0),
            last_bytes: Mutex::new(None),
        }
    }

    /// The credentials to mask in everything sent from now on.
    pub fn mask(&self, secrets: Vec<Secret>) {
        let _ = self.secrets.set(secrets);
    }

    fn masked(&self, text: &str) -> String {
        match self.secrets.get() {
            Some(s) if !s.is_empty() => scrub(text, s),
            _ => text.to_string(),
        }
    }

    /// Queues a message; `false` when the queue is full (the message is not sent).
    fn send(&self, message: String) -> bool {
        let guard = self.tx.lock().unwrap();
        let Some(tx) = guard.as_ref() else {
            return true;
        };
        !matches!(
            tx.try_send(self.masked(&message)),
            Err(mpsc::error::TrySendError::Full(_))
        )
    }

    /// One line of the command's output (`stream` is `stdout` or `stderr`).
    pub fn line(&self, stream: &str, line: &str) {
        let line = if line.len() > LINE_MAX {
            let mut cut = LINE_MAX;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}... ({} bytes)", &line[..cut], line.len())
        } else {
            line.to_string()
        };
        if !self.send(format!("{stream}: {line}")) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether anyone hears the progress (the client sent a token).
    pub fn forwarding(&self) -> bool {
        self.tx.lock().unwrap().is_some()
    }
}

impl Reporter for CallReporter {
    fn status(&self, message: &str) {
        eprintln!("crabbox mcp: {}", self.masked(message));
        self.send(message.to_string());
    }

    fn hint(&self, hint: &Hint) {
        self.status(&format!("hint: {}", crate::failure::hint(hint)));
    }

    fn progress(&self, phase: &str, done: u64, total: Option<u64>) {
        {
            let mut last = self.last_bytes.lock().unwrap();
            let due = last.is_none_or(|t| t.elapsed() >= BYTES_EVERY);
            if !due && total != Some(done) {
                return;
            }
            *last = Some(Instant::now());
        }
        let message = match total {
            Some(t) => format!("{phase}: {} of {}", human_bytes(done), human_bytes(t)),
            None => format!("{phase}: {}", human_bytes(done)),
        };
        self.send(message);
    }

    fn finish_progress(&self) {
        *self.last_bytes.lock().unwrap() = None;
    }
}
