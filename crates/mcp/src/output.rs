//! The command's output for a `run` result: the last `limit` bytes of each stream, with its
//! byte count; the whole stream goes to a file under the state directory as it arrives and is
//! kept only when the tail does not hold it all, so an agent's context is not flooded and
//! nothing is lost. Complete lines also go out as progress.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crabbox_core::events::OutputSink;
use crabbox_core::secret::{scrub, Secret};
use schemars::JsonSchema;
use serde::Serialize;

use crate::progress::CallReporter;

/// One stream as a result shows it.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StreamTail {
    /// The stream's last bytes (all of it unless `truncated`), as text (invalid UTF-8 replaced).
    pub tail: String,
    /// Bytes the command wrote to this stream in all.
    pub bytes: u64,
    /// `tail` is only the end of the stream.
    pub truncated: bool,
    /// Where the whole stream is, when `tail` is not all of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Extra bytes kept before the tail, so that a credential straddling the cut is masked whole
/// before the cut drops its beginning.
const MARGIN: usize = 1024;

struct Stream {
    name: &'static str,
    bytes: u64,
    /// The last `limit + MARGIN` bytes (more between trims).
    tail: Vec<u8>,
    /// The bytes of a line not yet ended, for progress.
    partial: Vec<u8>,
    path: PathBuf,
    file: Option<File>,
    /// Writing the file failed; the tail is still kept.
    file_error: Option<String>,
}

/// Captures a run's stdout and stderr.
pub(crate) struct OutputCapture {
    limit: usize,
    streams: [Stream; 2],
    reporter: Arc<CallReporter>,
}

impl OutputCapture {
    /// Streams spooled to `<dir>/<run>.stdout` and `.stderr`; tails of `limit` bytes.
    pub fn new(dir: &Path, limit: usize, reporter: Arc<CallReporter>) -> Self {
        let run = format!(
            "{}-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            &crabbox_core::engine::new_run_id()[..12]
        );
        let stream = |name: &'static str| Stream {
            name,
            bytes: 0,
            tail: Vec::new(),
            partial: Vec::new(),
            path: dir.join(format!("{run}.{name}")),
            file: None,
            file_error: None,
        };
        Self {
            limit,
            streams: [stream("stdout"), stream("stderr")],
            reporter,
        }
    }

    fn write(&mut self, index: usize, chunk: &[u8]) {
        let limit = self.limit;
        let s = &mut self.streams[index];
        s.bytes += chunk.len() as u64;
        if s.file.is_none() && s.file_error.is_none() {
            match open_spool(&s.path) {
                Ok(f) => s.file = Some(f),
                Err(e) => s.file_error = Some(e),
            }
        }
        if let Some(f) = s.file.as_mut() {
            if let Err(e) = f.write_all(chunk) {
                s.file_error = Some(format!("writing {}: {e}", s.path.display()));
                s.file = None;
            }
        }
        s.tail.extend_from_slice(chunk);
        let keep = limit + MARGIN;
        if s.tail.len() > 2 * keep {
            s.tail.drain(..s.tail.len() - keep);
        }
        if self.reporter.forwarding() {
            s.partial.extend_from_slice(chunk);
            while let Some(end) = s.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = s.partial.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                self.reporter.line(s.name, text.trim_end_matches('\r'));
            }
            if s.partial.len() > 64 * 1024 {
                s.partial.clear();
            }
        }
    }

    /// The tails, masked of `secrets`; the spool files of streams the tails hold whole are
    /// removed.
    pub fn finish(mut self, secrets: &[Secret]) -> (StreamTail, StreamTail) {
        for s in &mut self.streams {
            if !s.partial.is_empty() && self.reporter.forwarding() {
                let text = String::from_utf8_lossy(&s.partial).into_owned();
                self.reporter.line(s.name, &text);
            }
        }
        let limit = self.limit;
        let [out, err] = self.streams;
        (tail_of(out, limit, secrets), tail_of(err, limit, secrets))
    }
}

fn tail_of(mut s: Stream, limit: usize, secrets: &[Secret]) -> StreamTail {
    drop(s.file.take());
    let truncated = s.bytes > limit as u64;
    let start = s.tail.len().saturating_sub(limit + MARGIN);
    let text = scrub(&String::from_utf8_lossy(&s.tail[start..]), secrets);
    let tail = if truncated {
        // Cut on a character boundary, at most `limit` bytes.
        let mut cut = text.len().saturating_sub(limit);
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text[cut..].to_string()
    } else {
        text
    };
    let file = if truncated {
        Some(match s.file_error {
            None => s.path.display().to_string(),
            Some(e) => format!("(not kept: {e})"),
        })
    } else {
        let _ = std::fs::remove_file(&s.path);
        None
    };
    StreamTail {
        tail,
        bytes: s.bytes,
        truncated,
        file,
    }
}

fn open_spool(path: &Path) -> Result<File, String> {
    let dir = path.parent().expect("a spool file is in a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))
}

impl OutputSink for OutputCapture {
    fn stdout(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.write(0, chunk);
        Ok(())
    }
    fn stderr(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.write(1, chunk);
        Ok(())
    }
}

/// How long kept output files stay; older ones are removed when the server starts.
pub const KEEP_OUTPUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Removes the output files in `dir` older than `age`.
pub fn prune(dir: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|e| e > age);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(dir: &Path, limit: usize) -> OutputCapture {
        let ctx_less = crate::progress::detached();
        OutputCapture::new(dir, limit, ctx_less)
    }

    #[test]
    fn output_within_the_limit_is_whole_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = capture(dir.path(), 100);
        c.stdout(b"hello\n").unwrap();
        c.stderr(b"oops\n").unwrap();
        let (out, err) = c.finish(&[]);
        assert_eq!(out.tail, "hello\n");
        assert_eq!((out.bytes, out.truncated, out.file), (6, false, None));
        assert_eq!(err.tail, "oops\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn output_past_the_limit_keeps_its_tail_and_the_whole_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = capture(dir.path(), 10);
        let mut all = Vec::new();
        for i in 0..5000 {
            let line = format!("line {i}\n");
            all.extend_from_slice(line.as_bytes());
            c.stdout(line.as_bytes()).unwrap();
        }
        let (out, err) = c.finish(&[]);
        assert!(out.truncated);
        assert_eq!(out.bytes, all.len() as u64);
        assert_eq!(out.tail, "line 4999\n");
        assert_eq!(std::fs::read(out.file.unwrap()).unwrap(), all);
        assert_eq!((err.bytes, err.file), (0, None));
    }

    #[test]
    fn a_credential_across_the_cut_is_masked_not_half_shown() {
        let dir = tempfile::tempdir().unwrap();
        let key = Secret::new("e2b_abcdefghijklmnopqrstuvwxyz");
        let mut c = capture(dir.path(), 20);
        c.stdout(b"key=e2b_abcdefghijklmnopqrstuvwxyz!").unwrap();
        let (out, _) = c.finish(&[key]);
        assert!(!out.tail.contains("tuvwxyz"), "{}", out.tail);
        assert!(out.tail.ends_with("****!"), "{}", out.tail);
    }
}
