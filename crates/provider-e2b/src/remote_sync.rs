//! Putting the working tree on a sandbox.
//!
//! The archive (only the changed files on a warm sync) is written to a local temp file, then
//! streamed to `/tmp/crabbox-<hex>.tgz` on the box. A small script extracts it into a staging
//! directory next to the workdir first, so a broken upload or extraction never touches the
//! workspace. Then either the staging directory becomes the workdir (first sync) or the
//! staged files are hard-linked over the existing workdir (`cp -al`, no new disk space)
//! after deleting the files crabbox synced before and that are gone locally. Files crabbox never synced (build outputs) are left alone.
//! The remote archive is removed however the script ends.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use crabbox_core::provider::{OutputSink, Reporter, SyncReport, SyncSource};
use crabbox_core::sync::{write_archive, SyncEntry, SyncState};
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::filesystem;
use crabbox_e2b_wire::process::{DataEvent, ProcessConfig, ProcessEvent, StartRequest};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::envd::{exit_code_of, Envd};

/// Chunk size of the upload stream.
const UPLOAD_CHUNK: usize = 256 * 1024;
/// Bound of the remote cleanup after an abandoned sync, and of each of its calls.
pub const CLEANUP_BUDGET: Duration = Duration::from_secs(10);
const CLEANUP_STEP: Duration = Duration::from_secs(3);

/// Extracts into staging, then swaps in (first sync) or lays over the workdir (warm sync).
const APPLY_SCRIPT: &str = r#"set -u
fail() { printf 'crabbox sync: %s\n' "$*" >&2; exit 1; }
cleanup() {
  rm -rf -- "$CBX_STAGE"
  rm -f -- "$CBX_ARCHIVE"
  if [ -n "${CBX_DELETE:-}" ]; then rm -f -- "$CBX_DELETE"; fi
}
trap cleanup EXIT
wd=$CBX_WORKDIR
mkdir -p -- "$(dirname -- "$wd")" || fail "cannot create the parent directory of $wd"
rm -rf -- "$CBX_STAGE"
mkdir -p -- "$CBX_STAGE" || fail "cannot create staging directory $CBX_STAGE"
tar -xzpf "$CBX_ARCHIVE" -C "$CBX_STAGE" --no-same-owner \
  || fail "extracting the sync archive failed; $wd was left as it was"
if [ ! -e "$wd" ] && [ ! -L "$wd" ]; then
  mv -T -- "$CBX_STAGE" "$wd" || fail "moving $CBX_STAGE into place as $wd failed"
  exit 0
fi
[ -d "$wd" ] || fail "$wd exists and is not a directory"
cd -- "$wd" || fail "cannot enter $wd"
if [ -n "${CBX_DELETE:-}" ]; then
  while IFS= read -r -d '' f; do
    if [ -L "$f" ] || [ ! -d "$f" ]; then
      rm -f -- "$f" || fail "cannot delete $wd/$f"
    fi
    d=${f%/*}
    if [ "$d" != "$f" ]; then rmdir -p --ignore-fail-on-non-empty -- "$d" 2>/dev/null || true; fi
  done < "$CBX_DELETE"
fi
# Hard-link the extracted files over the workdir: no second decompression, and no new
# disk space is needed, so a half-applied update is as unlikely as it can be.
cp -al --remove-destination -- "$CBX_STAGE/." "$wd/" || fail "updating $wd from the staged files failed"
"#;

/// Run after the apply script was SIGKILLed: envd signals only that pid, so a `tar` it
/// started may still be extracting. Kills every process whose command line names this
/// sync's archive (the path has a random tag, so nothing else matches; this script's own
/// command line does not contain it), then removes the sync's files.
const REAP_SCRIPT: &str = r#"for d in /proc/[0-9]*; do
  [ "${d#/proc/}" = "$$" ] && continue
  c=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null) || continue
  case $c in *"$CBX_ARCHIVE"*) kill -KILL "${d#/proc/}" 2>/dev/null ;; esac
done
rm -rf -- "$CBX_STAGE"
rm -f -- "$CBX_ARCHIVE"
if [ -n "${CBX_DELETE:-}" ]; then rm -f -- "$CBX_DELETE"; fi
exit 0
"#;

/// What one sync must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPlan {
    /// Files to send.
    pub send: Vec<SyncEntry>,
    /// Files crabbox synced before that are gone locally.
    pub delete: Vec<String>,
    /// No trustworthy record of the box's tree: everything is sent.
    pub full: bool,
}

impl SyncPlan {
    /// Everything when there is no previous state, else only the delta.
    pub fn new(source: &SyncSource, previous: Option<&SyncState>) -> Self {
        match previous.filter(|s| !s.entries.is_empty()) {
            Some(state) => {
                let delta = state.delta(&source.manifest);
                SyncPlan {
                    send: delta.changed,
                    delete: delta
                        .deleted
                        .into_iter()
                        .filter(|p| source.delete && is_safe_relative(p))
                        .collect(),
                    full: false,
                }
            }
            None => SyncPlan {
                send: source.manifest.entries.clone(),
                delete: Vec::new(),
                full: true,
            },
        }
    }

    pub fn is_noop(&self) -> bool {
        !self.full && self.send.is_empty() && self.delete.is_empty()
    }
}

/// A relative path with no `..`, no empty or `.` segments and no NUL: safe to delete under
/// the workdir.
pub fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// Syncs `source` to `workdir` on the box per `plan`, within `timeout` for upload and
/// apply together. On `cancel` (`Error::Interrupted`), the deadline or any failure, the
/// apply script is killed and the archive, delete list and staging directory are removed
/// from the box (bounded by [`CLEANUP_BUDGET`]) before this returns.
pub async fn sync_tree(
    envd: &Envd,
    source: &SyncSource,
    plan: &SyncPlan,
    workdir: &str,
    reporter: &dyn Reporter,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<SyncReport> {
    let report = SyncReport {
        files: source.manifest.len() as u64,
        bytes: source.manifest.total_bytes,
        sent_files: plan.send.len() as u64,
        deleted_files: plan.delete.len() as u64,
    };
    if plan.is_noop() {
        reporter.status(&format!(
            "sync: {} files up to date on the sandbox",
            report.files
        ));
        return Ok(report);
    }
    reporter.status(&format!(
        "sync: sending {} of {} files{}",
        plan.send.len(),
        source.manifest.len(),
        if plan.delete.is_empty() {
            String::new()
        } else {
            format!(", deleting {}", plan.delete.len())
        }
    ));

    let (archive, _) = build_archive(source, &plan.send).await?;
    let tag = hex::encode(rand::random::<[u8; 8]>());
    let remote_archive = format!("/tmp/crabbox-{tag}.tgz");
    let remote_delete = format!("/tmp/crabbox-{tag}.del");
    let stage = staging_dir(workdir, &tag);
    let has_delete = !plan.delete.is_empty();
    // The apply script's pid once it started (0 before): killed if the sync is abandoned.
    let apply_pid = AtomicU32::new(0);
    let interrupted = || -> Result<()> {
        if cancel.is_cancelled() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    };

    let work = async {
        upload_file(envd, archive.path(), &remote_archive, reporter, timeout).await?;
        interrupted()?;
        if has_delete {
            let mut list = Vec::new();
            for p in &plan.delete {
                list.extend_from_slice(p.as_bytes());
                list.push(0);
            }
            let len = list.len() as u64;
            envd.upload(&remote_delete, reqwest::Body::from(list), len, timeout)
                .await?;
            interrupted()?;
        }
        let mut envs = BTreeMap::from([
            ("CBX_ARCHIVE".to_string(), remote_archive.clone()),
            ("CBX_WORKDIR".to_string(), workdir.to_string()),
            ("CBX_STAGE".to_string(), stage.clone()),
        ]);
        if has_delete {
            envs.insert("CBX_DELETE".into(), remote_delete.clone());
        }
        let (code, _out, err) = run_tracked(envd, APPLY_SCRIPT, envs, &apply_pid).await?;
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
            archive: &remote_archive,
            stage: &stage,
            delete: has_delete.then_some(remote_delete.as_str()),
        };
        let _ = tokio::time::timeout(
            CLEANUP_BUDGET,
            remove_leftovers(envd, (pid != 0).then_some(pid), &leftovers),
        )
        .await;
    }
    result.map(|()| report)
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
        let mut envs = BTreeMap::from([
            ("CBX_ARCHIVE".to_string(), leftovers.archive.to_string()),
            ("CBX_STAGE".to_string(), leftovers.stage.to_string()),
        ]);
        if let Some(delete) = leftovers.delete {
            envs.insert("CBX_DELETE".into(), delete.to_string());
        }
        let _ = tokio::time::timeout(CLEANUP_STEP, run_captured(envd, REAP_SCRIPT, envs)).await;
    }
    let paths = [
        Some(leftovers.archive),
        Some(leftovers.stage),
        leftovers.delete,
    ];
    let removes = paths.into_iter().flatten().map(|path| async move {
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
    archive: &'a str,
    stage: &'a str,
    delete: Option<&'a str>,
}

/// `<parent>/.<name>.crabbox-stage-<tag>`, next to the workdir so the final move is a rename.
fn staging_dir(workdir: &str, tag: &str) -> String {
    let (parent, name) = workdir.rsplit_once('/').unwrap_or(("", workdir));
    format!("{parent}/.{name}.crabbox-stage-{tag}")
}

async fn build_archive(
    source: &SyncSource,
    entries: &[SyncEntry],
) -> Result<(tempfile::NamedTempFile, crabbox_core::sync::ArchiveStats)> {
    let root = source.root.clone();
    let entries = entries.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut tmp = tempfile::Builder::new()
            .prefix("crabbox-sync-")
            .suffix(".tgz")
            .tempfile()
            .map_err(Error::io(
                "creating a temporary sync archive in",
                std::env::temp_dir(),
            ))?;
        let stats = {
            let mut out = std::io::BufWriter::new(tmp.as_file_mut());
            let stats = write_archive(&root, &entries, &mut out, |_| {})?;
            out.flush()
                .map_err(|e| Error::Sync(format!("writing sync archive: {e}")))?;
            stats
        };
        Ok((tmp, stats))
    })
    .await
    .map_err(|e| Error::Sync(format!("building the sync archive: {e}")))?
}

/// Streams a local file to `remote` in chunks, reporting progress; memory stays bounded.
async fn upload_file(
    envd: &Envd,
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
        .len();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let feed = async move {
        let mut done = 0u64;
        reporter.progress("upload", 0, Some(len));
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
    run_tracked(envd, script, envs, &AtomicU32::new(0)).await
}

/// [`run_captured`], storing the script's pid in `pid` as soon as envd reports it.
async fn run_tracked(
    envd: &Envd,
    script: &str,
    envs: BTreeMap<String, String>,
    pid: &AtomicU32,
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
    let mut sink = Captured::default();
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
}

const CAPTURE_LIMIT: usize = 64 * 1024;

impl OutputSink for Captured {
    fn stdout(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let room = CAPTURE_LIMIT.saturating_sub(self.out.len());
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
mod tests {
    use super::*;
    use crabbox_core::sync::{EntryKind, SyncManifest};

    fn entry(path: &str, size: u64) -> SyncEntry {
        SyncEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size,
            mtime_ns: 1,
            link_target: None,
        }
    }

    fn source(entries: Vec<SyncEntry>) -> SyncSource {
        SyncSource {
            root: "/nonexistent".into(),
            delete: true,
            manifest: SyncManifest {
                entries,
                ..Default::default()
            },
        }
    }

    #[test]
    fn plan_deletes_nothing_when_sync_delete_is_off() {
        let e = |p: &str| SyncEntry {
            path: p.into(),
            kind: crabbox_core::sync::EntryKind::File,
            mode: 0o644,
            size: 1,
            mtime_ns: 1,
            link_target: None,
        };
        let before = SyncState::from_manifest(&source(vec![e("a"), e("b")]).manifest);
        let mut now = source(vec![e("a")]);
        assert_eq!(SyncPlan::new(&now, Some(&before)).delete, ["b"]);
        now.delete = false;
        assert!(SyncPlan::new(&now, Some(&before)).delete.is_empty());
    }

    #[test]
    fn no_state_means_full_sync() {
        let s = source(vec![entry("a", 1), entry("b", 1)]);
        let plan = SyncPlan::new(&s, None);
        assert!(plan.full);
        assert_eq!(plan.send.len(), 2);
        let plan = SyncPlan::new(&s, Some(&SyncState::default()));
        assert!(plan.full, "an empty state is no record of the box");
    }

    #[test]
    fn warm_plan_sends_changes_and_deletes_only_synced_files() {
        let before = source(vec![entry("a", 1), entry("b", 1), entry("gone", 1)]);
        let state = SyncState::from_manifest(&before.manifest);
        let now = source(vec![entry("a", 1), entry("b", 2), entry("new", 1)]);
        let plan = SyncPlan::new(&now, Some(&state));
        assert!(!plan.full);
        let sent: Vec<_> = plan.send.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(sent, ["b", "new"]);
        assert_eq!(plan.delete, ["gone"]);
        let same = SyncPlan::new(&before, Some(&state));
        assert!(same.is_noop());
    }

    #[test]
    fn unsafe_delete_paths_are_dropped() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a//b",
            "./a",
            "a\0b",
        ] {
            assert!(!is_safe_relative(bad), "{bad:?}");
        }
        assert!(is_safe_relative("src/lib.rs"));
        assert!(is_safe_relative(".gitignore"));
    }

    #[test]
    fn staging_sits_next_to_the_workdir() {
        assert_eq!(
            staging_dir("/home/user/crabbox", "ab"),
            "/home/user/.crabbox.crabbox-stage-ab"
        );
        assert_eq!(staging_dir("/srv", "ab"), "/.srv.crabbox-stage-ab");
    }

    #[test]
    fn apply_script_is_valid_bash() {
        crate::assert_valid_bash(APPLY_SCRIPT);
    }

    #[test]
    fn apply_script_swaps_then_overlays_keeping_build_outputs() {
        // Exercise the script locally with GNU tar: first sync swaps in, warm sync overlays.
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("d")).unwrap();
        std::fs::write(src.path().join("d/a.txt"), "a1").unwrap();
        std::fs::write(src.path().join("b.txt"), "b1").unwrap();
        let box_dir = tempfile::tempdir().unwrap();
        let wd = box_dir.path().join("work");
        let run = |entries: &[&str], delete: &[&str]| {
            let tag = hex::encode(rand::random::<[u8; 4]>());
            let archive = box_dir.path().join(format!("a-{tag}.tgz"));
            let m = SyncManifest::build(src.path(), &Default::default()).unwrap();
            let chosen: Vec<_> = m
                .entries
                .iter()
                .filter(|e| entries.contains(&e.path.as_str()))
                .collect();
            write_archive(
                src.path(),
                chosen,
                std::fs::File::create(&archive).unwrap(),
                |_| {},
            )
            .unwrap();
            let mut cmd = std::process::Command::new("/bin/bash");
            cmd.args(["-c", APPLY_SCRIPT])
                .env("CBX_ARCHIVE", &archive)
                .env("CBX_WORKDIR", &wd)
                .env("CBX_STAGE", staging_dir(wd.to_str().unwrap(), &tag));
            if !delete.is_empty() {
                let del = box_dir.path().join(format!("d-{tag}"));
                let mut list = Vec::new();
                for d in delete {
                    list.extend_from_slice(d.as_bytes());
                    list.push(0);
                }
                std::fs::write(&del, list).unwrap();
                cmd.env("CBX_DELETE", &del);
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!archive.exists(), "archive must be removed");
        };
        run(&["d/a.txt", "b.txt"], &[]);
        assert_eq!(std::fs::read_to_string(wd.join("d/a.txt")).unwrap(), "a1");
        std::fs::create_dir_all(wd.join("target")).unwrap();
        std::fs::write(wd.join("target/out"), "built").unwrap();
        std::fs::write(src.path().join("b.txt"), "b2").unwrap();
        std::fs::remove_file(src.path().join("d/a.txt")).unwrap();
        run(&["b.txt"], &["d/a.txt"]);
        assert_eq!(std::fs::read_to_string(wd.join("b.txt")).unwrap(), "b2");
        assert!(!wd.join("d").exists(), "emptied synced directory is pruned");
        assert_eq!(
            std::fs::read_to_string(wd.join("target/out")).unwrap(),
            "built"
        );
        let leftovers: Vec<_> = std::fs::read_dir(box_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("crabbox-stage"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn reap_script_kills_what_reads_the_archive_and_removes_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join(format!(
            "crabbox-{}.tgz",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let delete = dir.path().join("list.del");
        let stage = dir.path().join(".wd.crabbox-stage-x");
        std::fs::write(&archive, "x").unwrap();
        std::fs::write(&delete, "x").unwrap();
        std::fs::create_dir_all(stage.join("sub")).unwrap();
        // Stands in for a tar left running after its script was SIGKILLed.
        let mut reader = std::process::Command::new("tail")
            .arg("-f")
            .arg(&archive)
            .spawn()
            .unwrap();
        let mut bystander = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let out = std::process::Command::new("/bin/bash")
            .args(["-c", REAP_SCRIPT])
            .env("CBX_ARCHIVE", &archive)
            .env("CBX_STAGE", &stage)
            .env("CBX_DELETE", &delete)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let reaped = loop {
            if let Some(status) = reader.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = reader.kill();
        let alive = bystander.try_wait().unwrap().is_none();
        let _ = bystander.kill();
        let _ = bystander.wait();
        assert!(reaped.is_some(), "the archive's reader must be killed");
        assert!(alive, "unrelated processes are left alone");
        assert!(!archive.exists() && !delete.exists() && !stage.exists());
    }

    #[test]
    fn failed_extract_leaves_the_workdir_intact() {
        let box_dir = tempfile::tempdir().unwrap();
        let wd = box_dir.path().join("work");
        std::fs::create_dir_all(&wd).unwrap();
        std::fs::write(wd.join("keep.txt"), "old").unwrap();
        let archive = box_dir.path().join("broken.tgz");
        std::fs::write(&archive, b"\x1f\x8bnot really gzip").unwrap();
        let out = std::process::Command::new("/bin/bash")
            .args(["-c", APPLY_SCRIPT])
            .env("CBX_ARCHIVE", &archive)
            .env("CBX_WORKDIR", &wd)
            .env("CBX_STAGE", staging_dir(wd.to_str().unwrap(), "x"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("left as it was"));
        assert_eq!(std::fs::read_to_string(wd.join("keep.txt")).unwrap(), "old");
        assert!(!archive.exists(), "archive removed even on failure");
    }
}
