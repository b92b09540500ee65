//! `shard`: one suite across many boxes at once. The tree is synced once, to one box (a warm
//! lease, a box from a snapshot, or a new one), which is then forked into the shards (where
//! the provider cannot fork, each shard gets its own box and sync). Every shard runs the
//! command template with `{{index}}`, `{{total}}`, `{{lease}}`, `{{slug}}` substituted and
//! `CRABBOX_SHARD_INDEX` / `CRABBOX_SHARD_TOTAL` in its environment, streams its output with
//! a `[i/N]` prefix, fetches its JUnit reports, and is released when it ends, whatever
//! happened. One verdict comes back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::command::RemoteCommand;
use crate::engine::junit::{FailedCase, JunitSummary};
use crate::engine::lifecycle::ForkRequest;
use crate::engine::{KeepPolicy, RunExtras, RunMode, RunRequest, StopRequest, SyncSource};
use crate::error::{exit, Error, Result};
use crate::events::{OutputSink, Reporter};
use crate::hint::Hint;
use crate::provider::Feature;

/// Set in each shard's environment.
pub const SHARD_INDEX_VAR: &str = "CRABBOX_SHARD_INDEX";
pub const SHARD_TOTAL_VAR: &str = "CRABBOX_SHARD_TOTAL";

/// A sharded run.
#[derive(Debug, Clone)]
pub struct ShardRequest {
    pub count: u32,
    /// The configured cap (`shard.maxCount`).
    pub max_count: u32,
    /// Sync to this warm lease and fork it; `None`: a new box (or one from `from_snapshot`).
    pub id: Option<String>,
    pub from_snapshot: Option<String>,
    /// The command template (placeholders in its words).
    pub command: RemoteCommand,
    pub sync: Option<SyncSource>,
    pub env: BTreeMap<String, String>,
    pub ttl: Duration,
    pub repo_root: Option<PathBuf>,
    /// Stop the other shards at the first failure.
    pub fail_fast: bool,
    /// Keep every shard's box (and a source box this shard made).
    pub keep: bool,
    /// JUnit globs fetched from each shard.
    pub junit: Vec<String>,
    /// Where each shard's reports go: `<dir>/<index>/...`; `None`: `.crabbox/artifacts/shards/`.
    pub artifact_dir: Option<PathBuf>,
    pub cancel: CancellationToken,
}

impl ShardRequest {
    /// `count` shards of a planned run's command, tree, environment and lifetime (everything
    /// else off: a new source box, no fail-fast, nothing kept, no JUnit).
    pub fn of_run(
        run: super::RunRequest,
        count: u32,
        max_count: u32,
        cancel: CancellationToken,
    ) -> Self {
        ShardRequest {
            count,
            max_count,
            id: None,
            from_snapshot: None,
            command: run.command,
            sync: run.sync,
            env: run.env,
            ttl: run.ttl,
            repo_root: run.repo_root,
            fail_fast: false,
            keep: false,
            junit: Vec::new(),
            artifact_dir: None,
            cancel,
        }
    }
}

/// What was planned, said before anything is made.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ShardPlan {
    pub count: u32,
    pub provider: String,
    /// `lease cbx_...`, `snapshot S` or `a new box`.
    pub source: String,
    pub max_count: u32,
    /// Shards are forks of the one synced box (else each is synced on its own).
    pub forked: bool,
}

/// One shard's end.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ShardResult {
    pub index: u32,
    pub lease_id: String,
    pub slug: String,
    /// `None`: it never ran its command (it failed to start, or was stopped first).
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub junit: Option<JunitSummary>,
}

/// The verdict.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ShardOutcome {
    pub plan: ShardPlan,
    pub shards: Vec<ShardResult>,
    /// 0 when every shard passed; else the lowest-indexed failing shard's code (1 for a
    /// shard that could not run), 130 when interrupted.
    pub exit_code: i32,
    pub wall_ms: u64,
    /// Sum of the shards' durations: the suite's time on one box, roughly.
    pub suite_ms: u64,
    /// Times the tree went over the wire (1 with forks).
    pub uploads: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub junit: Option<JunitSummary>,
    /// Each failing test case with the shard it ran in.
    pub failed_cases: Vec<(u32, FailedCase)>,
}

/// A run that syncs the tree to the box `id` names (or a new one) and keeps it.
fn sync_only(req: &ShardRequest, id: Option<String>) -> RunRequest {
    RunRequest {
        id,
        command: RemoteCommand::new(Vec::new(), false),
        sync: req.sync.clone(),
        full_resync: false,
        checksum: false,
        keep: KeepPolicy::Always,
        env: BTreeMap::new(),
        ttl: req.ttl,
        slug: None,
        repo_root: req.repo_root.clone(),
        from_snapshot: req.from_snapshot.clone(),
        cancel: req.cancel.clone(),
        extras: RunExtras {
            mode: RunMode::SyncOnly,
            ..RunExtras::default()
        },
    }
}

/// Substitutes the placeholders in one word.
pub fn substitute(word: &str, index: u32, total: u32, lease: &str, slug: &str) -> String {
    word.replace("{{index}}", &index.to_string())
        .replace("{{total}}", &total.to_string())
        .replace("{{lease}}", lease)
        .replace("{{slug}}", slug)
}

/// Writes whole lines into a shared sink, each prefixed with its shard.
struct Prefixed {
    prefix: String,
    out: Arc<Mutex<dyn OutputSink>>,
    pending: [Vec<u8>; 2],
}

impl Prefixed {
    fn write(&mut self, stream: usize, chunk: &[u8]) -> std::io::Result<()> {
        self.pending[stream].extend_from_slice(chunk);
        let Some(last) = self.pending[stream].iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        let rest = self.pending[stream].split_off(last + 1);
        let lines = std::mem::replace(&mut self.pending[stream], rest);
        self.emit(stream, &lines)
    }

    fn emit(&mut self, stream: usize, lines: &[u8]) -> std::io::Result<()> {
        let mut text = Vec::with_capacity(lines.len() + 16);
        for line in lines.split_inclusive(|b| *b == b'\n') {
            text.extend_from_slice(self.prefix.as_bytes());
            text.extend_from_slice(line);
        }
        let mut out = self.out.lock().expect("output lock");
        if stream == 0 {
            out.stdout(&text)
        } else {
            out.stderr(&text)
        }
    }

    fn finish(&mut self) {
        for stream in 0..2 {
            let mut tail = std::mem::take(&mut self.pending[stream]);
            if !tail.is_empty() {
                tail.push(b'\n');
                let _ = self.emit(stream, &tail);
            }
        }
    }
}

impl OutputSink for Prefixed {
    fn stdout(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.write(0, chunk)
    }
    fn stderr(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.write(1, chunk)
    }
}

/// A shard's status lines, prefixed.
struct PrefixedReporter<'a> {
    prefix: String,
    inner: &'a dyn Reporter,
}

impl Reporter for PrefixedReporter<'_> {
    fn status(&self, message: &str) {
        self.inner.status(&format!("{}{message}", self.prefix));
    }
    fn hint(&self, hint: &Hint) {
        self.inner.hint(hint);
    }
}

impl Engine {
    /// The plan `req` makes, checked against the cap; said before anything is created.
    pub fn shard_plan(&self, req: &ShardRequest) -> Result<ShardPlan> {
        if req.count == 0 {
            return Err(Error::Usage("--count must be at least 1".into()));
        }
        if req.count > req.max_count {
            return Err(Error::Usage(format!(
                "--count {} is over the cap of {} shards (shard.maxCount; a repository's \
                 .crabbox.yaml may lower it, your own config or CRABBOX_SHARD_MAX_COUNT may \
                 raise it)",
                req.count, req.max_count
            )));
        }
        let source = match (&req.id, &req.from_snapshot) {
            (Some(id), _) => format!("lease {id}"),
            (None, Some(s)) => format!("a new box from snapshot {s}"),
            (None, None) => "a new box".to_string(),
        };
        Ok(ShardPlan {
            count: req.count,
            provider: self.name().to_string(),
            source,
            max_count: req.max_count,
            forked: self.provider.capabilities().has(Feature::Fork),
        })
    }

    /// Runs the shards; see the module docs. Output goes to `out` line by line, prefixed.
    pub async fn shard(
        &self,
        req: &ShardRequest,
        out: Arc<Mutex<dyn OutputSink>>,
        reporter: &dyn Reporter,
    ) -> Result<ShardOutcome> {
        let plan = self.shard_plan(req)?;
        let started = Instant::now();
        let total = req.count;
        // The leases the shards run on, and whether this shard made (and so releases) them.
        let mut leases: Vec<(String, String)> = Vec::new();
        let mut made_source: Option<String> = None;
        let mut uploads = 0;
        let mut setup_error = None;

        if plan.forked {
            // Sync once, to the source box.
            let source = sync_only(req, req.id.clone());
            let mut none = crate::events::CapturedOutput::default();
            let synced = self.run(&source, &mut none, reporter).await?;
            if synced.sync.as_ref().is_some_and(|s| s.sent_files > 0) || synced.created {
                uploads += 1;
            }
            if synced.created {
                made_source = Some(synced.lease_id.clone());
            }
            let forked = self
                .fork(
                    &ForkRequest {
                        id: synced.lease_id.clone(),
                        count: total,
                        ttl: req.ttl,
                    },
                    reporter,
                )
                .await;
            match forked {
                Ok(f) => {
                    leases.extend(f.forks.into_iter().map(|b| (b.lease_id, b.slug)));
                    if let Some(why) = f.failed.first() {
                        setup_error =
                            Some(format!("{} of {total} forks failed: {why}", f.failed.len()));
                    }
                }
                Err(e) => setup_error = Some(e.to_string()),
            }
        } else {
            // No forks: each shard gets its own box, synced on its own.
            let makes = (0..total).map(|i| {
                let req = sync_only(req, None);
                async move {
                    let rep = PrefixedReporter {
                        prefix: format!("[{}/{total}] ", i + 1),
                        inner: reporter,
                    };
                    let mut none = crate::events::CapturedOutput::default();
                    self.run(&req, &mut none, &rep).await
                }
            });
            for made in futures::future::join_all(makes).await {
                match made {
                    Ok(o) => {
                        uploads += 1;
                        leases.push((o.lease_id, o.slug));
                    }
                    Err(e) => {
                        setup_error.get_or_insert(e.to_string());
                    }
                }
            }
        }

        let mut results = Vec::new();
        if let Some(why) = &setup_error {
            reporter.status(&format!("shard: not every shard could start: {why}"));
        }
        if setup_error.is_none() && !req.cancel.is_cancelled() {
            results = self.run_shards(req, &leases, out, reporter).await;
        }

        // Release everything this shard made, on every path.
        if !req.keep {
            let stops = leases
                .iter()
                .map(|(lease, _)| lease.clone())
                .chain(made_source.clone())
                .map(|lease| async move {
                    let stopped = self
                        .stop(&StopRequest {
                            id: lease.clone(),
                            reclaim: false,
                        })
                        .await;
                    if let Err(e) = stopped {
                        reporter.status(&format!("shard: could not release lease {lease}: {e}"));
                        reporter.hint(&self.stop_hint(&lease));
                    }
                });
            futures::future::join_all(stops).await;
        }

        let interrupted = req.cancel.is_cancelled();
        let mut junit: Option<JunitSummary> = None;
        let mut failed_cases = Vec::new();
        for r in &results {
            if let Some(j) = &r.junit {
                let merged = junit.get_or_insert_with(JunitSummary::default);
                merged.reports += j.reports;
                merged.tests += j.tests;
                merged.passed += j.passed;
                merged.failed += j.failed;
                merged.errors += j.errors;
                merged.skipped += j.skipped;
                merged.time_secs += j.time_secs;
                merged.unreadable.extend(j.unreadable.iter().cloned());
                failed_cases.extend(j.failures.iter().cloned().map(|f| (r.index, f)));
            }
        }
        let exit_code = if interrupted {
            exit::INTERRUPTED
        } else if setup_error.is_some() {
            exit::TRANSPORT
        } else {
            results
                .iter()
                .find_map(|r| match r.exit_code {
                    Some(0) => None,
                    Some(c) => Some(c),
                    None => Some(exit::TRANSPORT),
                })
                .unwrap_or(0)
        };
        if let Some(why) = setup_error {
            if results.is_empty() && !interrupted {
                return Err(Error::Transport(format!("shard: {why}")));
            }
        }
        Ok(ShardOutcome {
            plan,
            suite_ms: results.iter().map(|r| r.duration_ms).sum(),
            shards: results,
            exit_code,
            wall_ms: super::ms(started.elapsed()),
            uploads,
            junit,
            failed_cases,
        })
    }

    /// Runs shard `i` of `leases` each, side by side.
    async fn run_shards(
        &self,
        req: &ShardRequest,
        leases: &[(String, String)],
        out: Arc<Mutex<dyn OutputSink>>,
        reporter: &dyn Reporter,
    ) -> Vec<ShardResult> {
        let total = leases.len() as u32;
        // Stops every shard on Ctrl-C, or on the first failure with --fail-fast.
        let stop_all = req.cancel.child_token();
        let runs = leases.iter().enumerate().map(|(i, (lease, slug))| {
            let index = i as u32 + 1;
            let stop_all = stop_all.clone();
            let out = out.clone();
            async move {
                let argv = req
                    .command
                    .argv
                    .iter()
                    .map(|w| substitute(w, index, total, lease, slug))
                    .collect();
                let mut env = req.env.clone();
                env.insert(SHARD_INDEX_VAR.into(), index.to_string());
                env.insert(SHARD_TOTAL_VAR.into(), total.to_string());
                let dir = req
                    .artifact_dir
                    .clone()
                    .unwrap_or_else(|| {
                        req.repo_root
                            .clone()
                            .unwrap_or_default()
                            .join(".crabbox/artifacts/shards")
                    })
                    .join(index.to_string());
                let run = RunRequest {
                    id: Some(lease.clone()),
                    command: RemoteCommand::new(argv, req.command.shell),
                    sync: None,
                    full_resync: false,
                    checksum: false,
                    keep: KeepPolicy::Always,
                    env,
                    ttl: req.ttl,
                    slug: None,
                    repo_root: req.repo_root.clone(),
                    from_snapshot: None,
                    cancel: stop_all.clone(),
                    extras: RunExtras {
                        junit: req.junit.clone(),
                        artifact_dir: (!req.junit.is_empty()).then_some(dir),
                        ..RunExtras::default()
                    },
                };
                let prefix = format!("[{index}/{total}] ");
                let rep = PrefixedReporter {
                    prefix: prefix.clone(),
                    inner: reporter,
                };
                let mut sink = Prefixed {
                    prefix,
                    out,
                    pending: [Vec::new(), Vec::new()],
                };
                let t = Instant::now();
                let ran = self.run(&run, &mut sink, &rep).await;
                sink.finish();
                let mut result = ShardResult {
                    index,
                    lease_id: lease.clone(),
                    slug: slug.clone(),
                    exit_code: None,
                    duration_ms: super::ms(t.elapsed()),
                    error: None,
                    junit: None,
                };
                match ran {
                    Ok(o) => {
                        let code = o.exit_code();
                        result.exit_code = Some(code);
                        result.junit = o.junit;
                        rep.status(&format!(
                            "exited {} in {:.1}s",
                            code,
                            result.duration_ms as f64 / 1000.0
                        ));
                    }
                    Err(e) if e.is_interrupted() => {
                        result.error = Some("stopped".into());
                        rep.status("stopped");
                    }
                    Err(e) => {
                        result.error = Some(e.to_string());
                        rep.status(&format!("failed: {e}"));
                    }
                }
                if req.fail_fast && result.exit_code != Some(0) && !stop_all.is_cancelled() {
                    rep.status("failed: stopping the other shards (--fail-fast)");
                    stop_all.cancel();
                }
                result
            }
        });
        futures::future::join_all(runs).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::CapturedOutput;

    #[test]
    fn placeholders_are_substituted() {
        assert_eq!(
            substitute(
                "--shard={{index}}/{{total}} {{lease}} {{slug}}",
                3,
                8,
                "cbx_1",
                "s"
            ),
            "--shard=3/8 cbx_1 s"
        );
    }

    #[test]
    fn output_is_prefixed_line_by_line() {
        let out: Arc<Mutex<CapturedOutput>> = Arc::default();
        let mut p = Prefixed {
            prefix: "[2/4] ".into(),
            out: out.clone(),
            pending: [Vec::new(), Vec::new()],
        };
        p.stdout(b"one\ntw").unwrap();
        p.stderr(b"err\n").unwrap();
        p.stdout(b"o\nthree").unwrap();
        p.finish();
        let got = out.lock().unwrap().clone();
        assert_eq!(got.stdout_str(), "[2/4] one\n[2/4] two\n[2/4] three\n");
        assert_eq!(got.stderr_str(), "[2/4] err\n");
    }
}
