//! What a command started on a memory box does: a [`Script`] of events, played by a stream
//! that a signal can end.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use super::provider::Shared;
use crate::error::{Error, Result};
use crate::provider::{ExecEvent, ExecStream};

/// Exit code of a command ended by SIGTERM (128 + 15).
pub const TERM_EXIT: i32 = 143;
/// Exit code of a command ended by SIGKILL (128 + 9).
pub const KILL_EXIT: i32 = 137;

/// The behaviour of a scripted command, step by step. The stream always begins with
/// `Started { pid }`; then the steps play in order. A signal that ends the command (SIGKILL,
/// or SIGTERM unless [`Script::ignore_term`]) cuts the rest short: the next event is its
/// `Exited`. Steps that run out end the command with exit code 0.
///
/// ```
/// use crabbox_core::testing::Script;
/// let fails = Script::exits(3);
/// let prints_then_waits = Script::new().stdout("started\n").until_signalled();
/// let stubborn = Script::new().stdout("started\n").ignore_term().until_signalled();
/// let lost = Script::new().stdout("partial").break_stream();
/// # let _ = (fails, prints_then_waits, stubborn, lost);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Script {
    steps: Vec<Step>,
    ignores_term: bool,
}

#[derive(Debug, Clone)]
enum Step {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
    UntilSignalled,
    BreakStream,
    FailStream(String),
}

impl Script {
    /// A command that exits 0 at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// A command that exits with `code` at once.
    pub fn exits(code: i32) -> Self {
        Self::new().exit(code)
    }

    /// Writes `chunk` to stdout (one `Stdout` event).
    pub fn stdout(mut self, chunk: impl Into<Vec<u8>>) -> Self {
        self.steps.push(Step::Stdout(chunk.into()));
        self
    }

    /// Writes `chunk` to stderr (one `Stderr` event).
    pub fn stderr(mut self, chunk: impl Into<Vec<u8>>) -> Self {
        self.steps.push(Step::Stderr(chunk.into()));
        self
    }

    /// Ends with `code`.
    pub fn exit(mut self, code: i32) -> Self {
        self.steps.push(Step::Exit(code));
        self
    }

    /// Runs until a signal ends it ([`TERM_EXIT`] or [`KILL_EXIT`]).
    pub fn until_signalled(mut self) -> Self {
        self.steps.push(Step::UntilSignalled);
        self
    }

    /// The stream ends here without an `Exited` event (the connection was lost); the command
    /// itself is still running on the box.
    pub fn break_stream(mut self) -> Self {
        self.steps.push(Step::BreakStream);
        self
    }

    /// The stream fails here with `Error::Transport(message)`; the command is still running.
    pub fn fail_stream(mut self, message: impl Into<String>) -> Self {
        self.steps.push(Step::FailStream(message.into()));
        self
    }

    /// SIGTERM does not end it (only SIGKILL does).
    pub fn ignore_term(mut self) -> Self {
        self.ignores_term = true;
        self
    }

    pub(super) fn ignores_term(&self) -> bool {
        self.ignores_term
    }
}

/// The events of one scripted command.
pub(super) struct MemStream {
    shared: Arc<Shared>,
    pid: u32,
    steps: VecDeque<Step>,
    ended: watch::Receiver<Option<i32>>,
    started: bool,
    done: bool,
}

impl MemStream {
    pub(super) fn new(
        shared: Arc<Shared>,
        pid: u32,
        script: Script,
        ended: watch::Receiver<Option<i32>>,
    ) -> Self {
        Self {
            shared,
            pid,
            steps: script.steps.into(),
            ended,
            started: false,
            done: false,
        }
    }

    fn exited(&mut self, code: i32) -> Result<Option<ExecEvent>> {
        self.done = true;
        Ok(Some(ExecEvent::Exited(code)))
    }
}

#[async_trait]
impl ExecStream for MemStream {
    async fn next_event(&mut self) -> Result<Option<ExecEvent>> {
        if self.done {
            return Ok(None);
        }
        if !self.started {
            self.started = true;
            return Ok(Some(ExecEvent::Started { pid: self.pid }));
        }
        let signalled = *self.ended.borrow();
        if let Some(code) = signalled {
            return self.exited(code);
        }
        match self.steps.pop_front() {
            Some(Step::Stdout(b)) => Ok(Some(ExecEvent::Stdout(b))),
            Some(Step::Stderr(b)) => Ok(Some(ExecEvent::Stderr(b))),
            Some(Step::Exit(code)) => {
                let code = self.shared.end_process(self.pid, code);
                self.exited(code)
            }
            None => {
                let code = self.shared.end_process(self.pid, 0);
                self.exited(code)
            }
            Some(Step::UntilSignalled) => {
                let code = self
                    .ended
                    .wait_for(Option::is_some)
                    .await
                    .map(|c| c.unwrap_or_default())
                    .map_err(|_| Error::Transport("memory provider dropped".into()))?;
                self.exited(code)
            }
            Some(Step::BreakStream) => {
                self.done = true;
                Ok(None)
            }
            Some(Step::FailStream(message)) => {
                self.done = true;
                Err(Error::Transport(message))
            }
        }
    }
}
