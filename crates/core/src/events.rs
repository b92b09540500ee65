//! How the library tells a front end what is happening: the command's output chunk by chunk
//! ([`OutputSink`]), and status lines, hints and transfer progress ([`Reporter`]).

use crate::hint::Hint;

/// Where the command's output goes, chunk by chunk, as it arrives.
pub trait OutputSink: Send {
    fn stdout(&mut self, chunk: &[u8]) -> std::io::Result<()>;
    fn stderr(&mut self, chunk: &[u8]) -> std::io::Result<()>;
}

/// Status, hints and progress of long steps, for the front end to render (lines on stderr,
/// a bar on a TTY, notifications over MCP).
pub trait Reporter: Send + Sync {
    /// A one-line status message ("creating sandbox", "sync: 120 files up to date").
    fn status(&self, message: &str);
    /// Something the user can do next ("release the kept box").
    fn hint(&self, _hint: &Hint) {}
    /// Byte progress of a transfer; `total` when known.
    fn progress(&self, _phase: &str, _done: u64, _total: Option<u64>) {}
    /// The transfer is over.
    fn finish_progress(&self) {}
}

/// A reporter that says nothing (tests, `--json`).
pub struct SilentReporter;

impl Reporter for SilentReporter {
    fn status(&self, _message: &str) {}
}

/// Drops the command's output (`--quiet`: only capture files, if any, get it).
pub struct DiscardOutput;

impl OutputSink for DiscardOutput {
    fn stdout(&mut self, _chunk: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn stderr(&mut self, _chunk: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

/// Collects a command's output per stream, in arrival order.
#[derive(Debug, Default, Clone)]
pub struct CapturedOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CapturedOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl OutputSink for CapturedOutput {
    fn stdout(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.stdout.extend_from_slice(chunk);
        Ok(())
    }
    fn stderr(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.stderr.extend_from_slice(chunk);
        Ok(())
    }
}
