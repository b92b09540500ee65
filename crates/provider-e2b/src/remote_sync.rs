//! Putting files on a sandbox. The engine packs a sync into chunks; each is streamed to
//! `/tmp/crabbox-<tag>-<n>.<ext>` on the box as soon as it is packed, and unpacked into a
//! staging directory next to the workdir by [`UNPACK_SCRIPT`] while the next one travels, so
//! a broken upload or extraction never touches the workspace. Once every chunk is in,
//! [`COMMIT_SCRIPT`] either makes the staging directory the workdir (first sync), or runs the
//! plan's ops and hard-links the staged files over the workdir (`cp -al`, no new disk space);
//! files crabbox never synced (build outputs) are left alone. The plan's ops and the new sync
//! record (none when the box's record already lists the same paths) travel in the first
//! chunk's request, as files beside the staging directory. An abandoned sync's processes are killed and its
//! files removed before [`apply`] returns.

use crate::scan_cache::ScanCache;
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use crabbox_core::engine::human_bytes;
use crabbox_core::events::{OutputSink, Reporter};
use crabbox_core::provider::{record_path, ApplySync, ChunkFeed};
use crabbox_core::sync::{Codec, RemoteTree, SyncOp};
use crabbox_core::{Error, Result};
use crabbox_e2b_wire::filesystem;
use crabbox_e2b_wire::process::{DataEvent, ProcessConfig, ProcessEvent, StartRequest};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use crate::envd::{exit_code_of, Envd};

/// Chunk size of the upload stream.
const UPLOAD_CHUNK: usize = 256 * 1024;
/// A sync archive this small is read whole before its upload (see [`upload_file`]).
const READ_WHOLE_UP_TO: u64 = 64 * 1024;
/// Bound of the remote cleanup after an abandoned sync, and of each of its calls.
pub const CLEANUP_BUDGET: Duration = Duration::from_secs(10);
const CLEANUP_STEP: Duration = Duration::from_secs(3);

/// Unpacks one chunk into the staging directory.
pub const UNPACK_SCRIPT: &str = include_str!("scripts/sync_unpack.sh");

/// Swaps the staging directory in, or runs the ops and lays it over the workdir.
pub const COMMIT_SCRIPT: &str = include_str!("scripts/sync_commit.sh");

/// Chunks unpacking on the box at once.
const UNPACKERS: usize = 2;
/// Leftovers of a sync killed outright (kill -9 of crabbox) older than this are removed by
/// the next scan: no sync may take longer (`sync.timeout` is 10 minutes by default).
const STALE_MINUTES: u32 = 60;
/// Syncs sending at least this much say what they sent before the box applies it.
const REPORT_FROM: u64 = 1 << 20;

/// Run after a sync's scripts were SIGKILLed: envd signals only their pids, so a `tar` they
/// started may still be extracting. Kills every process whose command line names this
/// sync's random tag (this script's own command line does not contain it), then removes the
/// sync's files.
const REAP_SCRIPT: &str = include_str!("scripts/sync_reap.sh");
/// Runs the unpack script (in a subshell, so its `exit` on a failure is its own), then the
/// commit script (each given in the environment), in one process on the box. With
/// `CBX_JOINED` set neither removes the upload alone: one `rm` at the end removes everything
/// (this trap if the unpack failed, the commit's if it ran), unless the unpack found the sync
/// claimed by the tree's watcher (exit 75): then the files are the watcher's.
const UNPACK_THEN_COMMIT: &str = r#"trap 'rm -rf -- "$CBX_CHUNK" "$CBX_STAGE" "$CBX_STAGE.ops" "$CBX_STAGE.rec"' EXIT
( eval "$CBX_UNPACK" ) || { s=$?; [ "$s" -ne 75 ] || trap - EXIT; exit "$s"; }
eval "$CBX_COMMIT""#;

/// How a sync was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// By the unpack and commit scripts, run on the box.
    ByScripts,
    /// By the tree's watcher, which started no process: what changed with it (a patch
    /// segment, the sync's own changes and any other since the watcher last answered), when
    /// the watcher still keeps count.
    ByWatcher { segment: Option<Vec<u8>> },
    /// Not at all: asked to apply only onto an unchanged tree, the watcher saw it change (or
    /// could not be asked); nothing of the sync is left on the box.
    TreeMoved,
}

/// The tree's watcher, asked to apply a small sync, or whether the tree changed.
#[derive(Debug, Clone, Copy)]
pub struct Watcher<'a> {
    pub id: &'a str,
    /// It may apply a small sync itself (else it is only asked whether the tree changed).
    pub may_apply: bool,
    /// Only if it saw nothing change since it last answered (the sync was planned from the
    /// tree it vouched for then).
    pub if_unchanged: bool,
    /// How long it is given to answer (past it, the scripts apply the sync).
    pub patience: Duration,
}

/// Syncs of at most this many bytes on the wire may be applied by the tree's watcher.
const WATCHER_APPLIES_AT_MOST: u64 = 1 << 20;
/// The unpack script's exit when the staging directory it was to claim is taken (by the
/// watcher, which then applies the sync).
const CLAIMED_EXIT: i32 = 75;
/// How long a watcher that took a sync is given to answer: its apply of at most
/// [`WATCHER_APPLIES_AT_MOST`] takes milliseconds, so this is a killed watcher.
const TAKEN_PATIENCE: Duration = Duration::from_secs(30);

/// Sends and unpacks each chunk as it arrives, then commits, within `req.timeout` for all of
/// it. A lone small chunk is applied by the tree's `watcher` (its id), when given, with no
/// process started on the box; the scripts apply it if that watcher cannot. On cancel
/// (`Error::Interrupted`), the deadline, an `Err` in the feed or any failure, the scripts are killed and every upload, the staging directory and the plan's copies are
/// removed from the box (bounded by [`CLEANUP_BUDGET`]) before this returns.
pub async fn apply(
    envd: &Envd,
    req: &ApplySync<'_>,
    mut chunks: ChunkFeed,
    reporter: &dyn Reporter,
    watcher: Option<Watcher<'_>>,
) -> Result<Applied> {
    let (workdir, timeout, cancel) = (req.workdir, req.timeout, req.cancel);
    let tag = hex::encode(rand::random::<[u8; 8]>());
    let stage = staging_dir(workdir, &tag);
    // The plan's ops and the new record (if any) go with the first chunk, as files beside
    // the staging directory.
    let mut beside = Vec::new();
    if !req.ops.is_empty() {
        beside.push((format!("{stage}.ops"), SyncOp::encode_all(req.ops)));
    }
    if let Some(record) = req.record {
        beside.push((format!("{stage}.rec"), record.to_vec()));
    }
    // The commit fails rather than take a missing file for "none sent".
    let sent_beside: BTreeMap<String, String> = [
        ("CBX_OPS_SENT", !req.ops.is_empty()),
        ("CBX_REC_SENT", req.record.is_some()),
    ]
    .into_iter()
    .filter(|(_, sent)| *sent)
    .map(|(k, _)| (k.to_string(), "1".to_string()))
    .collect();
    // Pids of the scripts started (0 before): killed if the sync is abandoned.
    let pids = std::sync::Mutex::new(Vec::<u32>::new());

    let slots = tokio::sync::Semaphore::new(UNPACKERS);
    let work = async {
        let mut unpacking = futures::stream::FuturesUnordered::new();
        let (mut n, mut sent, mut committed) = (0usize, 0u64, false);
        let mut applied = Applied::ByScripts;
        let started = std::time::Instant::now();
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk?;
            sent += chunk.len;
            let remote = format!("/tmp/crabbox-{tag}-{n}.{}", extension(chunk.codec));
            let small: &[_] = if n == 0 { &beside } else { &[] };
            let mut envs = BTreeMap::from([
                ("CBX_CHUNK".to_string(), remote.clone()),
                ("CBX_CODEC".to_string(), chunk.codec.name().to_string()),
                ("CBX_STAGE".to_string(), stage.clone()),
                ("CBX_WORKDIR".to_string(), workdir.to_string()),
            ]);
            // A lone chunk is unpacked and committed by one process: one round trip less.
            if req.chunks == 1 {
                committed = true;
                // The commit's cleanup removes the upload too: one `rm` less.
                envs.insert("CBX_JOINED".into(), "1".into());
                envs.insert("CBX_RECORD".into(), record_path(workdir));
                envs.extend(sent_beside.clone());
                envs.insert("CBX_UNPACK".into(), UNPACK_SCRIPT.into());
                envs.insert("CBX_COMMIT".into(), COMMIT_SCRIPT.into());
            }
            // A small lone chunk: the tree's watcher applies it, or else the scripts.
            let by_watcher = watcher.filter(|w| {
                w.may_apply
                    && req.chunks == 1
                    && chunk.len <= WATCHER_APPLIES_AT_MOST
                    && matches!(chunk.codec, Codec::Stored | Codec::Gzip)
            });
            if let Some(w) = by_watcher {
                let flags = [
                    if chunk.codec == Codec::Stored {
                        "t"
                    } else {
                        "z"
                    },
                    if req.ops.is_empty() { "" } else { "o" },
                    if req.record.is_some() { "r" } else { "" },
                    if w.if_unchanged { "u" } else { "" },
                ]
                .concat();
                let request = format!("{tag}-{flags}-{}", w.id);
                // The request is the upload's last file: the watcher sees it once the rest is
                // written (envd writes the parts in order).
                let asking = [(format!("{}/a-{request}", watch_dir(workdir)), Vec::new())];
                let uploaded =
                    upload_file(envd, small, &chunk.file, &remote, &asking, timeout).await;
                drop(chunk.file);
                // The scripts, if they run, claim the sync first.
                envs.insert("CBX_CLAIM".into(), "1".into());
                let asked = Asked {
                    workdir,
                    stage: &stage,
                    upload: &remote,
                    request: &request,
                };
                applied = apply_by_watcher(envd, &asked, uploaded, w, envs, &pids).await?;
                n += 1;
                continue;
            }
            // Planned for the tree the watcher vouched for, applied by the scripts: the watcher
            // is asked first whether it saw a change since (the scripts cannot tell).
            if let Some(w) = watcher.filter(|w| n == 0 && w.if_unchanged) {
                if !watcher_saw_no_change(envd, &watch_dir(workdir), w.id, w.patience).await {
                    return Ok(Applied::TreeMoved);
                }
            }
            let upload = upload_file(envd, small, &chunk.file, &remote, &[], timeout);
            if n == 0 {
                // The staging directory is made beside the first upload, so the box starts no
                // `mkdir` for it (the script makes it if this failed).
                let (uploaded, _) = tokio::join!(upload, envd.make_dir(&stage));
                uploaded?;
            } else {
                upload.await?;
            }
            drop(chunk.file);
            let script = if req.chunks == 1 {
                UNPACK_THEN_COMMIT
            } else {
                UNPACK_SCRIPT
            };
            // Unpacks wait for a slot without holding up the next upload.
            let slots = &slots;
            let pids = &pids;
            unpacking.push(async move {
                let _slot = slots.acquire().await.expect("semaphore open");
                run_script(envd, script, envs, pids).await
            });
            // Reap the unpacks that ended, so a failure stops the sync early.
            while let Some(Some(done)) = futures::FutureExt::now_or_never(unpacking.next()) {
                finished(envd, done)?;
            }
            n += 1;
        }
        if sent >= REPORT_FROM {
            let secs = started.elapsed().as_secs_f64().max(0.001);
            reporter.status(&format!(
                "sync: sent {n} chunks, {} at {}/s; unpacking and applying on the box",
                human_bytes(sent),
                human_bytes((sent as f64 / secs) as u64)
            ));
        }
        while let Some(done) = unpacking.next().await {
            finished(envd, done)?;
        }
        if n == 0 {
            return Err(Error::Sync("the sync had no chunk to send".into()));
        }
        if committed {
            return if n == 1 {
                Ok(applied)
            } else {
                Err(Error::Sync(format!(
                    "the sync was planned as one chunk but {n} were sent"
                )))
            };
        }
        let mut envs = BTreeMap::from([
            ("CBX_WORKDIR".to_string(), workdir.to_string()),
            ("CBX_STAGE".to_string(), stage.clone()),
            ("CBX_RECORD".to_string(), record_path(workdir)),
        ]);
        envs.extend(sent_beside);
        finished(envd, run_script(envd, COMMIT_SCRIPT, envs, &pids).await)?;
        Ok(Applied::ByScripts)
    };
    // One deadline for all of it; a cancel or the deadline drops `work` here, so the remote
    // leftovers are removed below rather than by the scripts' traps.
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
        let pids = pids.lock().expect("pids").clone();
        let leftovers = Leftovers {
            tag: &tag,
            stage: &stage,
            ctl: &watch_dir(workdir),
        };
        let _ =
            tokio::time::timeout(CLEANUP_BUDGET, remove_leftovers(envd, &pids, &leftovers)).await;
    }
    result
}

/// A sync uploaded for the watcher to apply.
struct Asked<'a> {
    workdir: &'a str,
    stage: &'a str,
    upload: &'a str,
    /// `<tag>-<flags>-<watcher id>` (see `scripts/sync_watch.py`).
    request: &'a str,
}

/// Has watcher `w` apply the sync `asked` names (`uploaded` with its request file), answered
/// in its state file. A watcher that cannot answer (another watcher's, a lost one, none within
/// its patience) leaves it to the unpack and commit scripts (`envs`), which claim the
/// sync first; when the watcher claimed it already, its answer is awaited (for
/// [`TAKEN_PATIENCE`] at most). Asked to apply only onto an unchanged tree, a watcher that saw a
/// change, or that cannot answer, means [`Applied::TreeMoved`] (the scripts cannot tell). An
/// upload that failed but whose request (its last part) is on the box reached it whole, and is
/// answered as any; one whose request is not there is taken back, or, when the watcher has it,
/// its answer awaited; taken back, the upload's error is the sync's.
async fn apply_by_watcher(
    envd: &Envd,
    asked: &Asked<'_>,
    uploaded: Result<()>,
    w: Watcher<'_>,
    envs: BTreeMap<String, String>,
    pids: &std::sync::Mutex<Vec<u32>>,
) -> Result<Applied> {
    let (workdir, request) = (asked.workdir, asked.request);
    let ctl = watch_dir(workdir);
    let (ops, rec) = (
        format!("{}.ops", asked.stage),
        format!("{}.rec", asked.stage),
    );
    // An upload cut short may still have reached the box whole: its request, the last part,
    // is there only then (envd writes the parts in order).
    let uploaded = match uploaded {
        Err(e) => match envd.exists(&format!("{ctl}/a-{request}")).await {
            Ok(true) => Ok(()),
            _ => Err(e),
        },
        ok => ok,
    };
    let answer = match uploaded {
        Ok(()) => await_answer(envd, &ctl, w.id, request, w.patience, false).await,
        Err(_) => None,
    };
    let state = match answer {
        Some(state) => state,
        None if w.if_unchanged || uploaded.is_err() => {
            // The sync is taken back (its staging directory made here) so the watcher, if it
            // still sees the request, leaves it; if the watcher has it, its answer is awaited.
            // A failed upload's error is the sync's, whatever the claim meets next.
            let claimed = match claim(envd, asked.stage).await {
                Ok(claimed) => claimed,
                Err(e) => return Err(uploaded.err().unwrap_or(e)),
            };
            if !claimed {
                awaited(envd, &ctl, w.id, request, workdir).await?
            } else if let Some(state) =
                await_answer(envd, &ctl, w.id, request, Duration::ZERO, false).await
            {
                // Applied and answered before the claim (the staging directory goes last).
                remove_files(envd, &[asked.stage]).await;
                state
            } else {
                // The upload first: a watcher that makes the directory anew finds none.
                remove_files(envd, &[asked.upload, &ops, &rec]).await;
                remove_files(envd, &[asked.stage]).await;
                return uploaded.map(|()| Applied::TreeMoved);
            }
        }
        None => {
            let ran = run_script(envd, UNPACK_THEN_COMMIT, envs, pids).await;
            if !matches!(ran, Ok((CLAIMED_EXIT, _, _))) {
                finished(envd, ran)?;
                return Ok(Applied::ByScripts);
            }
            awaited(envd, &ctl, w.id, request, workdir).await?
        }
    };
    match apply_answer(&state) {
        Some(Ok(ApplyAnswer::Applied(segment))) => Ok(Applied::ByWatcher { segment }),
        Some(Ok(ApplyAnswer::Moved)) => {
            remove_files(envd, &[asked.upload, &ops, &rec]).await;
            Ok(Applied::TreeMoved)
        }
        Some(Err(why)) => Err(Error::Sync(
            envd.scrub(&format!("sync failed on the box: {why}")),
        )),
        None => Err(Error::Sync(format!(
            "the watcher of {workdir} on the box answered the sync unreadably; the next run \
             reads the box's tree whole"
        ))),
    }
}

/// The answer of a watcher that took the sync, awaited within [`TAKEN_PATIENCE`].
async fn awaited(
    envd: &Envd,
    ctl: &str,
    id: &str,
    request: &str,
    workdir: &str,
) -> Result<Vec<u8>> {
    match await_answer(envd, ctl, id, request, TAKEN_PATIENCE, true).await {
        Some(state) => Ok(state),
        None => Err(Error::Sync(format!(
            "the watcher of {workdir} on the box took the sync but gave no answer; the next \
             run reads the box's tree whole"
        ))),
    }
}

/// Claims a sync by making its staging directory `path` on the box: `true` when this call
/// made it, `false` when it was there already. A process's `mkdir`: envd's `MakeDir` also
/// succeeds on a directory made between its look and its making, so it cannot tell.
async fn claim(envd: &Envd, path: &str) -> Result<bool> {
    let envs = BTreeMap::from([("CBX_STAGE".to_string(), path.to_string())]);
    match run_captured(envd, CLAIM_SCRIPT, envs).await? {
        (0, _, _) => Ok(true),
        (CLAIMED_EXIT, _, _) => Ok(false),
        (code, _, err) => Err(Error::Sync(envd.scrub(&format!(
            "claiming the sync's staging directory {path} failed (exit {code}): {}",
            String::from_utf8_lossy(&err).trim()
        )))),
    }
}

/// Makes `$CBX_STAGE`: exit 0 when made here, [`CLAIMED_EXIT`] when it was there.
const CLAIM_SCRIPT: &str = r#"mkdir -- "$CBX_STAGE" 2>/dev/null && exit 0
[ -d "$CBX_STAGE" ] && exit 75
mkdir -- "$CBX_STAGE""#;

/// Removes `paths` through envd (a directory with what it holds), side by side, each
/// bounded by [`CLEANUP_STEP`]; failures are left to the next scan's sweep.
async fn remove_files(envd: &Envd, paths: &[&str]) {
    let removes = paths.iter().map(|path| async move {
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

/// What a watcher said of a sync it was asked to apply.
#[derive(Debug, PartialEq, Eq)]
enum ApplyAnswer {
    /// Applied: the patch segment of what changed, when it still keeps count.
    Applied(Option<Vec<u8>>),
    /// Not applied: it saw the tree change since it last answered.
    Moved,
}

/// A watcher's answer to an apply request (`Aok`, `A~` or `A!why` after the four fields,
/// then a patch segment): what it did, or why it failed; `None` when unreadable.
fn apply_answer(state: &[u8]) -> Option<std::result::Result<ApplyAnswer, String>> {
    let mut rest = state;
    let mut fields = Vec::with_capacity(5);
    for _ in 0..5 {
        let at = rest.iter().position(|b| *b == 0)?;
        fields.push(&rest[..at]);
        rest = &rest[at + 1..];
    }
    match fields[4] {
        b"Aok" => {}
        b"A~" => return Some(Ok(ApplyAnswer::Moved)),
        f => {
            let why = f.strip_prefix(b"A!")?;
            return Some(Err(String::from_utf8_lossy(why).into_owned()));
        }
    }
    if fields[3] != b"ok" {
        return Some(Ok(ApplyAnswer::Applied(None)));
    }
    Some(Ok(ApplyAnswer::Applied(crate::scan::segment_of(rest))))
}

/// The codecs the box can unpack, best first: zstd where it has `zstd`, always gzip.
pub async fn probe_codecs(envd: &Envd) -> Vec<Codec> {
    let probe = "command -v zstd >/dev/null 2>&1 && echo zstd";
    match run_captured(envd, probe, BTreeMap::new()).await {
        Ok((0, out, _)) if out.starts_with(b"zstd") => vec![Codec::Zstd, Codec::Gzip],
        _ => vec![Codec::Gzip],
    }
}

/// A sync script's end: what it printed, or an error unless it exited 0.
fn finished(envd: &Envd, done: Result<Ran>) -> Result<Vec<u8>> {
    let (code, out, err) = done?;
    if code != 0 {
        return Err(Error::Sync(envd.scrub(&format!(
            "sync failed on the box (exit {code}): {}",
            String::from_utf8_lossy(&err).trim()
        ))));
    }
    Ok(out)
}

/// How a helper script ended: its exit code, stdout and stderr (capped).
type Ran = (i32, Vec<u8>, Vec<u8>);

/// Runs a sync script, recording its pid in `pids` as soon as envd reports it.
async fn run_script(
    envd: &Envd,
    script: &str,
    envs: BTreeMap<String, String>,
    pids: &std::sync::Mutex<Vec<u32>>,
) -> Result<(i32, Vec<u8>, Vec<u8>)> {
    let on_start = |pid: u32| pids.lock().expect("pids").push(pid);
    run_tracked(envd, script, envs, &on_start, CAPTURE_LIMIT).await
}

/// The upload's name ending for a codec.
fn extension(codec: Codec) -> &'static str {
    match codec {
        Codec::Gzip => "tgz",
        Codec::Zstd => "tar.zst",
        Codec::Stored => "tar",
    }
}

/// Reads the synced tree under `workdir` in one pass (see [`crate::scan`]).
/// Reads the box's tree under `workdir`. What `cache` holds of it is offered by hash, and
/// what the box sends whole is kept there for the next scan.
pub async fn scan(
    envd: &Envd,
    workdir: &str,
    checksum: bool,
    cache: Option<(&ScanCache, &str)>,
    patience: Duration,
) -> Result<RemoteTree> {
    // One scan of this workdir at a time on this machine (see `ScanCache::lock`).
    let locked = match cache {
        Some((c, sandbox)) => c.lock(sandbox, workdir).await,
        None => None,
    };
    let cache = cache.filter(|_| locked.is_some());
    let known = cache
        .map(|(c, sandbox)| c.load(sandbox, workdir))
        .unwrap_or_default();
    let ctl = watch_dir(workdir);
    // The tree this machine last read, while its watcher saw nothing change since (and the
    // kept bytes are still those it read): no need to read it again.
    if let Some(w) = known.watch.as_ref().filter(|_| !checksum) {
        let kept = |part: &Option<crate::scan::Part>| part.as_ref().map(|p| p.sha256.clone());
        let intact =
            kept(&known.listing).as_ref() == Some(&w.listing) && kept(&known.record) == w.record;
        if let (true, Some((c, sandbox))) = (intact, cache) {
            // What changed since is read afresh and laid over the kept listing; the note is
            // void meanwhile (the watcher forgets what it answers).
            c.forget_watch(sandbox, workdir);
            if let Some(segment) = watcher_changes(envd, &ctl, &w.id, patience).await {
                let mut out = b"W\0".to_vec();
                if w.record.is_some() {
                    out.extend_from_slice(b"r\0");
                }
                out.extend_from_slice(b"e\0");
                let kept_patch = match (&w.patch, &known.patch) {
                    (None, _) => Some(&[][..]),
                    (Some(sha), Some(p)) if *sha == p.sha256 => Some(&p.bytes[..]),
                    _ => None,
                };
                if let (Some(kept_patch), Ok((mut tree, _))) =
                    (kept_patch, crate::scan::parse_with(&out, &known))
                {
                    let laid = crate::scan::apply_patch(&mut tree, kept_patch)
                        .and_then(|_| crate::scan::apply_patch(&mut tree, &segment));
                    let noted = match laid {
                        Ok(()) if crate::scan::is_empty_segment(&segment) => {
                            c.keep_watch(sandbox, workdir, w);
                            Some(w.clone())
                        }
                        Ok(()) => c.extend_patch(sandbox, workdir, w, &segment),
                        Err(_) => None,
                    };
                    if let Some(noted) = noted {
                        tree.state = Some(noted.state());
                        return Ok(tree);
                    }
                }
            }
        }
    }
    let sha =
        |p: &Option<crate::scan::Part>| p.as_ref().map(|p| p.sha256.clone()).unwrap_or_default();
    let mut envs = BTreeMap::from([
        ("CBX_WORKDIR".to_string(), workdir.to_string()),
        ("CBX_RECORD".to_string(), record_path(workdir)),
        (
            "CBX_CHECKSUM".to_string(),
            if checksum { "1" } else { "" }.to_string(),
        ),
        ("CBX_STALE_MINUTES".to_string(), STALE_MINUTES.to_string()),
    ]);
    envs.insert("CBX_KNOWN_RECORD".into(), sha(&known.record));
    envs.insert("CBX_KNOWN_LIST".into(), sha(&known.listing));
    if cache.is_some() && !checksum {
        envs.insert("CBX_WATCHER".into(), WATCHER.into());
        envs.insert("CBX_WATCH_CTL".into(), ctl);
        envs.insert("CBX_WATCH_ID".into(), new_watcher_id());
        // Its start waited for in ticks of 5 ms: 2 s at least, longer with more patience.
        let ticks = (patience.as_millis() / 5).max(400);
        envs.insert("CBX_WATCH_WAIT_TICKS".into(), ticks.to_string());
    }
    let (code, out, err) = run_tracked(
        envd,
        crate::scan::SCAN_SCRIPT,
        envs,
        &|_| {},
        crate::scan::SCAN_LIMIT,
    )
    .await?;
    if code != 0 {
        return Err(Error::Transport(envd.scrub(&format!(
            "reading the box's tree under {workdir} failed (exit {code}): {}",
            String::from_utf8_lossy(&err).trim()
        ))));
    }
    if out.len() >= crate::scan::SCAN_LIMIT {
        return Err(Error::Sync(format!(
            "the box's tree under {workdir} is too large to read in one pass"
        )));
    }
    let (tree, fresh) = crate::scan::parse_with(&out, &known)?;
    if let Some((c, sandbox)) = cache {
        c.keep(sandbox, workdir, &fresh);
    }
    Ok(tree)
}

/// Watches a synced tree between scans (see the script's header).
const WATCHER: &str = include_str!("scripts/sync_watch.py");
/// How long a watcher is given to answer, unless the provider says otherwise: past it, the
/// tree is read whole (or a sync left to the scripts).
pub const WATCHER_PATIENCE: Duration = Duration::from_millis(250);

/// The version of the watcher this crabbox starts, first in its id: a watcher started by an
/// older crabbox (an id of hex digits alone, or an older version) is never asked to apply a
/// sync. 4: applies a sync (`a-`, naming the watcher), only onto the tree as it last answered
/// with `u`. 5: takes an `a-` request as a file, the last part of the sync's upload (one round
/// trip less than a directory made after it).
const WATCHER_VERSION: u32 = 5;

/// A new watcher's id: `<version>-<16 hex digits>`.
fn new_watcher_id() -> String {
    format!(
        "{WATCHER_VERSION}-{}",
        hex::encode(rand::random::<[u8; 8]>())
    )
}

/// Watcher `id` can apply a sync (see [`WATCHER_VERSION`]).
pub fn watcher_applies(id: &str) -> bool {
    id.split_once('-')
        .is_some_and(|(version, _)| version.parse::<u32>().is_ok_and(|v| v >= WATCHER_VERSION))
}

/// `<parent>/.<name>.crabbox-watch`: the control directory of `workdir`'s watcher.
pub fn watch_dir(workdir: &str) -> String {
    let (parent, name) = workdir.rsplit_once('/').unwrap_or(("", workdir));
    format!("{parent}/.{name}.crabbox-watch")
}

/// The tree under `workdir` is still the one named `state` (see [`Watched::state`]): its
/// watcher, noted in `cache`, saw no change since it was read.
///
/// [`Watched::state`]: crate::scan::Watched::state
pub async fn unchanged_since(
    envd: &Envd,
    workdir: &str,
    state: &str,
    cache: Option<(&ScanCache, &str)>,
    patience: Duration,
) -> bool {
    let Some((c, sandbox)) = cache else {
        return false;
    };
    // Under the cache's lock: a scan of another run may otherwise make the watcher forget
    // changes (its `r-`) between this note's reading and this question.
    let Some(_locked) = c.lock(sandbox, workdir).await else {
        return false;
    };
    let Some(w) = c.watched(sandbox, workdir) else {
        return false;
    };
    w.state() == state && watcher_saw_no_change(envd, &watch_dir(workdir), &w.id, patience).await
}

/// Asks watcher `id` (by making a request directory in `ctl`, which it sees after every
/// change made before) whether it saw any change since it started (or last forgot). Anything
/// but a clear "none" (another watcher, a lost one, no answer in time, a failed call) is false:
/// the caller then reads the tree whole.
pub async fn watcher_saw_no_change(envd: &Envd, ctl: &str, id: &str, patience: Duration) -> bool {
    ask_watcher(envd, ctl, id, "p", patience)
        .await
        .is_some_and(|(state, nonce)| watcher_answer(&state, id, &nonce) == Some(true))
}

/// Asks watcher `id` for what changed since it started (or last forgot), with those paths'
/// entries now, and to forget it: a patch segment for the kept listing
/// ([`crate::scan::apply_patch`]); `None` when it cannot say.
pub async fn watcher_changes(
    envd: &Envd,
    ctl: &str,
    id: &str,
    patience: Duration,
) -> Option<Vec<u8>> {
    let (state, _) = ask_watcher(envd, ctl, id, "r", patience).await?;
    crate::scan::watcher_segment(&state)
}

/// Makes request `<kind>-<nonce>` of watcher `id` and reads its state file until it answered
/// it: the state and the nonce; `None` when it never will (another watcher, a lost one, past
/// `patience`, a failed call).
async fn ask_watcher(
    envd: &Envd,
    ctl: &str,
    id: &str,
    kind: &str,
    patience: Duration,
) -> Option<(Vec<u8>, String)> {
    let nonce = hex::encode(rand::random::<[u8; 8]>());
    make_request(envd, ctl, kind, &nonce).await?;
    match await_answer(envd, ctl, id, &nonce, patience, false).await {
        Some(state) if keeps_count(&state, id) => Some((state, nonce)),
        _ => None,
    }
}

/// Makes the request directory `<ctl>/<kind>-<nonce>`; `None` when the call failed.
async fn make_request(envd: &Envd, ctl: &str, kind: &str, nonce: &str) -> Option<()> {
    let req = filesystem::MakeDirRequest {
        path: format!("{ctl}/{kind}-{nonce}"),
    };
    match envd
        .unary::<_, filesystem::MakeDirResponse>(filesystem::SERVICE, "MakeDir", &req)
        .await
    {
        Ok(_) => Some(()),
        // envd looks at the directory it made before it answers; the watcher may have taken
        // it already. Made or not, the state file says whether the question was seen.
        Err(crate::envd::RpcFailure::Rpc(e))
            if e.code == crabbox_e2b_wire::connect::Code::NotFound =>
        {
            Some(())
        }
        Err(_) => None,
    }
}

/// Reads watcher `id`'s state file until it answers request `nonce`: that state; `None`
/// once it never will (another watcher's state, or a lost one's unless `taken`: a watcher
/// that took the request answers it whatever else it says meanwhile) or `patience` is past.
async fn await_answer(
    envd: &Envd,
    ctl: &str,
    id: &str,
    nonce: &str,
    patience: Duration,
    taken: bool,
) -> Option<Vec<u8>> {
    let state = format!("{ctl}/state");
    let started = std::time::Instant::now();
    // Read again at once, twice (a read is a round trip, which paces it; the watcher usually
    // answers within one), then after 1 ms, 2, 4 and so on.
    let mut again = 2;
    let mut pause = Duration::from_millis(1);
    loop {
        let mut buf = Vec::new();
        envd.download(&state, &mut buf).await.ok()?;
        let mut f = buf.split(|b| *b == 0);
        let ours = f.next() == Some(b"cbxw1") && f.next() == Some(id.as_bytes());
        if ours && answered(&buf, nonce) {
            return Some(buf);
        }
        // Another watcher's state answers nothing of ours, ever; nor does a lost one's, unless
        // it took the request before.
        if !ours || (!taken && !keeps_count(&buf, id)) || started.elapsed() >= patience {
            return None;
        }
        if again > 0 {
            again -= 1;
            continue;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The state names `nonce` as the request it answers.
fn answered(state: &[u8], nonce: &str) -> bool {
    state.split(|b| *b == 0).nth(2) == Some(nonce.as_bytes())
}

/// The state is watcher `id`'s, and it still keeps count (not lost).
fn keeps_count(state: &[u8], id: &str) -> bool {
    let mut f = state.split(|b| *b == 0);
    f.next() == Some(b"cbxw1")
        && f.next() == Some(id.as_bytes())
        && f.next().is_some()
        && f.next() == Some(b"ok")
}

/// A watcher's state file read against a request: `Some(no change)` once it answers it (or
/// can no longer answer anything), `None` while it has not yet.
fn watcher_answer(state: &[u8], id: &str, nonce: &str) -> Option<bool> {
    let mut fields = state.split(|b| *b == 0);
    if fields.next() != Some(b"cbxw1") || fields.next() != Some(id.as_bytes()) {
        return Some(false);
    }
    let answered = fields.next();
    match fields.next() {
        Some(b"ok") => {}
        _ => return Some(false),
    }
    if answered != Some(nonce.as_bytes()) {
        return None;
    }
    Some(fields.all(|f| f.is_empty()))
}

/// SIGKILLs the sync's scripts (they must not go on changing the box after we gave up on
/// them) and whatever they left running, then removes the sync's files on the box: by the
/// reaper script, and through the file API for the staging directory and the plan's copies
/// in case that could not run.
async fn remove_leftovers(envd: &Envd, pids: &[u32], leftovers: &Leftovers<'_>) {
    let kills = pids.iter().map(|pid| async move {
        let _ = tokio::time::timeout(
            CLEANUP_STEP,
            envd.send_signal(*pid, crabbox_e2b_wire::process::Signal::Sigkill),
        )
        .await;
    });
    futures::future::join_all(kills).await;
    let envs = BTreeMap::from([
        ("CBX_TAG".to_string(), leftovers.tag.to_string()),
        ("CBX_STAGE".to_string(), leftovers.stage.to_string()),
        ("CBX_CTL".to_string(), leftovers.ctl.to_string()),
    ]);
    let _ = tokio::time::timeout(CLEANUP_STEP, run_captured(envd, REAP_SCRIPT, envs)).await;
    let ops = format!("{}.ops", leftovers.stage);
    let rec = format!("{}.rec", leftovers.stage);
    remove_files(envd, &[leftovers.stage, &ops, &rec]).await;
}

/// The remote paths one sync creates: uploads named by its tag, its staging directory, and
/// a request to the tree's watcher in its control directory `ctl`.
struct Leftovers<'a> {
    tag: &'a str,
    stage: &'a str,
    ctl: &'a str,
}

/// `<parent>/.<name>.crabbox-stage-<tag>`, next to the workdir so the final move is a rename.
fn staging_dir(workdir: &str, tag: &str) -> String {
    let (parent, name) = workdir.rsplit_once('/').unwrap_or(("", workdir));
    format!("{parent}/.{name}.crabbox-stage-{tag}")
}

/// Streams a local file to `remote` in pieces (memory stays bounded), with the `small` files
/// before it and the `after` ones after it in the same request. A file of at most
/// [`READ_WHOLE_UP_TO`] is read at once, here (one read of a few pages, rather than three
/// trips through the blocking pool).
async fn upload_file(
    envd: &Envd,
    small: &[(String, Vec<u8>)],
    local: &std::path::Path,
    remote: &str,
    after: &[(String, Vec<u8>)],
    timeout: Duration,
) -> Result<()> {
    let mut file = std::fs::File::open(local).map_err(Error::io("opening sync archive", local))?;
    let len = file
        .metadata()
        .map_err(Error::io("reading sync archive", local))?
        .len();
    if len <= READ_WHOLE_UP_TO {
        let mut bytes = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut file, &mut bytes)
            .map_err(Error::io("reading sync archive", local))?;
        let len = bytes.len() as u64;
        let body = reqwest::Body::from(bytes);
        return envd
            .upload_with(small, remote, body, len, after, timeout)
            .await;
    }
    let mut file = tokio::fs::File::from_std(file);
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let feed = async move {
        loop {
            // No larger than the file: a small sync's upload touches no unused memory.
            let mut buf = vec![0u8; UPLOAD_CHUNK.min(len.max(1) as usize)];
            match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    };
    let (_, result) = tokio::join!(
        feed,
        envd.upload_with(small, remote, body, len, after, timeout)
    );
    result
}

/// Runs a helper script with `/bin/bash -c` and collects its exit code and output.
pub async fn run_captured(
    envd: &Envd,
    script: &str,
    envs: BTreeMap<String, String>,
) -> Result<(i32, Vec<u8>, Vec<u8>)> {
    run_tracked(envd, script, envs, &|_| {}, CAPTURE_LIMIT).await
}

/// [`run_captured`], calling `on_start` with the script's pid as soon as envd reports it, and
/// keeping up to `limit` bytes of each stream.
async fn run_tracked(
    envd: &Envd,
    script: &str,
    envs: BTreeMap<String, String>,
    on_start: &(dyn Fn(u32) + Sync),
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
            ProcessEvent::Start(start) => on_start(start.pid),
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

#[cfg(test)]
#[path = "watch_tests.rs"]
mod watch_tests;
