//! Putting files on a sandbox: the archive the engine packed is streamed to
//! `/tmp/crabbox-<hex>.tgz` on the box, and a small script ([`APPLY_SCRIPT`]) extracts it into
//! a staging directory next to the workdir first, so a broken upload or extraction never
//! touches the workspace. Then either the staging directory becomes the workdir (first sync)
//! or the staged files are hard-linked over the existing workdir (`cp -al`, no new disk
//! space) after deleting the files crabbox synced before and that are gone locally. Files
//! crabbox never synced (build outputs) are left alone. The remote archive is removed however
//! the script ends, and an abandoned sync's leftovers are removed before [`apply`] returns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use crabbox_core::events::{OutputSink, Reporter};
use crabbox_core::provider::{record_path, ApplyArchive};
use crabbox_core::sync::{RemoteTree, SyncOp};
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::filesystem;
use crabbox_e2b_wire::process::{DataEvent, ProcessConfig, ProcessEvent, StartRequest};
use tokio::io::AsyncReadExt;

use crate::envd::{exit_code_of, Envd};

/// Chunk size of the upload stream.
const UPLOAD_CHUNK: usize = 256 * 1024;
/// Bound of the remote cleanup after an abandoned sync, and of each of its calls.
pub const CLEANUP_BUDGET: Duration = Duration::from_secs(10);
const CLEANUP_STEP: Duration = Duration::from_secs(3);

/// Extracts into staging, then swaps in (first sync) or lays over the workdir (warm sync).
pub const APPLY_SCRIPT: &str = include_str!("scripts/sync_apply.sh");

/// Run after the apply script was SIGKILLed: envd signals only that pid, so a `tar` it
/// started may still be extracting. Kills every process whose command line names this
/// sync's archive (the path has a random tag, so nothing else matches; this script's own
/// command line does not contain it), then removes the sync's files.
const REAP_SCRIPT: &str = include_str!("scripts/sync_reap.sh");

/// Puts `req.archive` on the box and applies it to `req.workdir`, within `req.timeout` for
/// upload and apply together. On cancel (`Error::Interrupted`), the deadline or any failure,
/// the apply script is killed and the archive, delete list and staging directory are removed
/// from the box (bounded by [`CLEANUP_BUDGET`]) before this returns.
pub async fn apply(envd: &Envd, req: &ApplyArchive<'_>, reporter: &dyn Reporter) -> Result<()> {
    let (workdir, timeout, cancel) = (req.workdir, req.timeout, req.cancel);
    let tag = hex::encode(rand::random::<[u8; 8]>());
    let remote_archive = format!("/tmp/crabbox-{tag}.tgz");
    let stage = staging_dir(workdir, &tag);
    // One upload: the ops and the record ride in front of the archive.
    let ops = SyncOp::encode_all(req.ops);
    let mut header = ops.clone();
    header.extend_from_slice(req.record);
    // The apply script's pid once it started (0 before): killed if the sync is abandoned.
    let apply_pid = AtomicU32::new(0);

    let work = async {
        upload_file(
            envd,
            &header,
            req.archive,
            &remote_archive,
            reporter,
            timeout,
        )
        .await?;
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        let envs = BTreeMap::from([
            ("CBX_ARCHIVE".to_string(), remote_archive.clone()),
            ("CBX_OPS_LEN".to_string(), ops.len().to_string()),
            ("CBX_RECORD_LEN".to_string(), req.record.len().to_string()),
            ("CBX_WORKDIR".to_string(), workdir.to_string()),
            ("CBX_STAGE".to_string(), stage.clone()),
            ("CBX_RECORD".to_string(), record_path(workdir)),
        ]);
        let (code, _out, err) =
            run_tracked(envd, APPLY_SCRIPT, envs, &apply_pid, CAPTURE_LIMIT).await?;
        if code != 0 {
            return Err(Error::Sync(format!(
                "sync to {workdir} failed (exit {code}): {}",
                String::from_utf8_lossy(&err).trim()
            )));
        }
        Ok(())
    };
    // Upload and apply share one deadline; a cancel or the deadline drops `work` here, so
    // the remote leftovers are removed below rather than by the script's trap.
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Interrupted),
        r = tokio::time::timeout(timeout, work) => r.unwrap_or_else(|_| {
            Err(Error::Sync(format!(
                "sync to {workdir} did not finish within {}s (sync.timeout)",
                timeout.as_secs()
            )))
        }),
    };
    if result.is_err() {
        // The script's trap removes them when it ends by itself; this covers an upload that
        // broke before it ran, and a script stopped (SIGKILL skips its trap) or abandoned.
        let pid = apply_pid.load(Ordering::SeqCst);
        let leftovers = Leftovers {
            tag: &tag,
            archive: &remote_archive,
            stage: &stage,
        };
        let _ = tokio::time::timeout(
            CLEANUP_BUDGET,
            remove_leftovers(envd, (pid != 0).then_some(pid), &leftovers),
        )
        .await;
    }
    result
}

/// Reads the synced tree under `workdir` in one pass (see [`crate::scan`]).
pub async fn scan(envd: &Envd, workdir: &str, checksum: bool) -> Result<RemoteTree> {
    let envs = BTreeMap::from([
        ("CBX_WORKDIR".to_string(), workdir.to_string()),
        ("CBX_RECORD".to_string(), record_path(workdir)),
        (
            "CBX_CHECKSUM".to_string(),
            if checksum { "1" } else { "" }.to_string(),
        ),
    ]);
    let (code, out, err) = run_tracked(
        envd,
        crate::scan::SCAN_SCRIPT,
        envs,
        &AtomicU32::new(0),
        crate::scan::SCAN_LIMIT,
    )
    .await?;
    if code != 0 {
        return Err(Error::Transport(format!(
            "reading the box's tree under {workdir} failed (exit {code}): {}",
            String::from_utf8_lossy(&err).trim()
        )));
    }
    if out.len() >= crate::scan::SCAN_LIMIT {
        return Err(Error::Sync(format!(
            "the box's tree under {workdir} is too large to read in one pass"
        )));
    }
    crate::scan::parse(&out)
}

/// SIGKILLs the apply script (it must not go on changing the workdir after we gave up on
/// it) and whatever `tar` it left running, then removes the sync's temporary files on the
/// box: by the reaper script, and through the file API in case that could not run.
async fn remove_leftovers(envd: &Envd, pid: Option<u32>, leftovers: &Leftovers<'_>) {
    if let Some(pid) = pid {
        let _ = tokio::time::timeout(
            CLEANUP_STEP,
            envd.send_signal(pid, crabbox_e2b_wire::process::Signal::Sigkill),
        )
        .await;
        let envs = BTreeMap::from([
            ("CBX_TAG".to_string(), leftovers.tag.to_string()),
            ("CBX_ARCHIVE".to_string(), leftovers.archive.to_string()),
            ("CBX_STAGE".to_string(), leftovers.stage.to_string()),
        ]);
        let _ = tokio::time::timeout(CLEANUP_STEP, run_captured(envd, REAP_SCRIPT, envs)).await;
    }
    let ops = format!("{}.ops", leftovers.stage);
    let rec = format!("{}.rec", leftovers.stage);
    let paths = [leftovers.archive, leftovers.stage, &ops, &rec];
    let removes = paths.into_iter().map(|path| async move {
        let _ = tokio::time::timeout(
            CLEANUP_STEP,
            envd.unary::<_, serde_json::Value>(
                filesystem::SERVICE,
                "Remove",
                &filesystem::RemoveRequest {
                    path: path.to_string(),
                },
            ),
        )
        .await;
    });
    futures::future::join_all(removes).await;
}

/// The remote paths one sync creates.
struct Leftovers<'a> {
    tag: &'a str,
    archive: &'a str,
    stage: &'a str,
}

/// `<parent>/.<name>.crabbox-stage-<tag>`, next to the workdir so the final move is a rename.
fn staging_dir(workdir: &str, tag: &str) -> String {
    let (parent, name) = workdir.rsplit_once('/').unwrap_or(("", workdir));
    format!("{parent}/.{name}.crabbox-stage-{tag}")
}

/// Streams `header` then a local file to `remote` in chunks, reporting progress; memory stays
/// bounded.
async fn upload_file(
    envd: &Envd,
    header: &[u8],
    local: &std::path::Path,
    remote: &str,
    reporter: &dyn Reporter,
    timeout: Duration,
) -> Result<()> {
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(Error::io("opening sync archive", local))?;
    let len = file
        .metadata()
        .await
        .map_err(Error::io("reading sync archive", local))?
        .len()
        + header.len() as u64;
    let header = Bytes::copy_from_slice(header);
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let feed = async move {
        let mut done = header.len() as u64;
        reporter.progress("upload", 0, Some(len));
        if !header.is_empty() && tx.send(Ok(header)).await.is_err() {
            return;
        }
        loop {
            let mut buf = vec![0u8; UPLOAD_CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    done += n as u64;
                    if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        break;
                    }
                    reporter.progress("upload", done, Some(len));
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    };
    let (_, result) = tokio::join!(feed, envd.upload(remote, body, len, timeout));
    reporter.finish_progress();
    result
}

/// Runs a helper script with `/bin/bash -c` and collects its exit code and output.
pub async fn run_captured(
    envd: &Envd,
    script: &str,
    envs: BTreeMap<String, String>,
) -> Result<(i32, Vec<u8>, Vec<u8>)> {
    run_tracked(envd, script, envs, &AtomicU32::new(0), CAPTURE_LIMIT).await
}

/// [`run_captured`], storing the script's pid in `pid` as soon as envd reports it.
async fn run_tracked(
    envd: &Envd,
    script: &str,
    envs: BTreeMap<String, String>,
    pid: &AtomicU32,
    limit: usize,
) -> Result<(i32, Vec<u8>, Vec<u8>)> {
    let req = StartRequest {
        process: Some(ProcessConfig {
            cmd: "/bin/bash".into(),
            args: vec!["-c".into(), script.into()],
            envs,
            cwd: None,
        }),
        pty: None,
        tag: None,
        stdin: Some(false),
    };
    let mut stream = envd.start(&req).await?;
    let mut sink = Captured {
        limit,
        ..Captured::default()
    };
    while let Some(event) = stream.next_event().await? {
        match event {
            ProcessEvent::Data(DataEvent::Stdout(b)) | ProcessEvent::Data(DataEvent::Pty(b)) => {
                let _ = sink.stdout(&b);
            }
            ProcessEvent::Data(DataEvent::Stderr(b)) => {
                let _ = sink.stderr(&b);
            }
            ProcessEvent::End(end) => {
                // Drain to the end-of-stream message, if any.
                let _ = stream.next_event().await;
                return Ok((exit_code_of(&end), sink.out, sink.err));
            }
            ProcessEvent::Start(start) => pid.store(start.pid, Ordering::SeqCst),
            ProcessEvent::Keepalive(_) => {}
        }
    }
    Err(Error::Transport(
        "helper command stream ended without an end event".into(),
    ))
}

/// Output of a helper script, capped so a runaway one cannot fill memory.
#[derive(Default)]
struct Captured {
    out: Vec<u8>,
    err: Vec<u8>,
    /// Bytes kept of each stream.
    limit: usize,
}

/// What a helper script's output is capped at.
const CAPTURE_LIMIT: usize = 64 * 1024;

impl OutputSink for Captured {
    fn stdout(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let room = self.limit.saturating_sub(self.out.len());
        self.out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        Ok(())
    }
    fn stderr(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let room = CAPTURE_LIMIT.saturating_sub(self.err.len());
        self.err.extend_from_slice(&chunk[..chunk.len().min(room)]);
        Ok(())
    }
}

#[cfg(test)]
#[path = "remote_sync_tests.rs"]
mod tests;
