//! The provider conformance suite: behaviour every provider must show, written once against
//! the [`Engine`] over a provider's primitives. A provider crate runs it from its own tests
//! (against the real backend or an emulator of it) by calling [`run_all`] or the individual
//! checks.
//!
//! Each check panics with a message naming the behaviour that broke.

mod lifecycle;
pub use lifecycle::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::command::RemoteCommand;
use crate::engine::{
    Engine, KeepPolicy, RunOutcome, RunRequest, StatusRequest, StopRequest, SyncSource,
    WarmupRequest,
};
pub use crate::events::CapturedOutput;
use crate::events::{OutputSink, SilentReporter};
use crate::sync::{SyncManifest, SyncOptions};
use crate::Error;

/// A temporary git repository with tracked, untracked, ignored and deleted files.
pub struct RepoFixture {
    dir: tempfile::TempDir,
}

/// Runs git in `dir` with a fixed identity and no user/global config.
pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=crabbox-test",
            "-c",
            "user.email=test@crabbox.invalid",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl RepoFixture {
    /// `tracked.txt`, `src/lib.txt`, `run.sh` (0755), `gone.txt` (tracked, deleted from the
    /// work tree), `untracked.txt`, and `ignored.log` + `build/` ignored by `.gitignore`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        git(root, &["init", "-q"]);
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("tracked.txt"), "tracked\n").unwrap();
        std::fs::write(root.join("src/lib.txt"), "lib\n").unwrap();
        std::fs::write(root.join("run.sh"), "#!/bin/sh\necho script-ran\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(root.join("gone.txt"), "soon gone\n").unwrap();
        std::fs::write(root.join(".gitignore"), "*.log\nbuild/\n").unwrap();
        git(root, &["add", "."]);
        git(root, &["commit", "-q", "-m", "fixture"]);
        std::fs::remove_file(root.join("gone.txt")).unwrap();
        std::fs::write(root.join("untracked.txt"), "untracked\n").unwrap();
        std::fs::write(root.join("ignored.log"), "ignored\n").unwrap();
        std::fs::create_dir_all(root.join("build")).unwrap();
        std::fs::write(root.join("build/out.o"), "object\n").unwrap();
        Self { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The files a sync of this fixture must put on the box.
    pub fn expected_files() -> Vec<&'static str> {
        vec![
            ".gitignore",
            "run.sh",
            "src/lib.txt",
            "tracked.txt",
            "untracked.txt",
        ]
    }

    pub fn sync_source(&self) -> SyncSource {
        SyncSource {
            root: self.root().to_path_buf(),
            manifest: Some(std::sync::Arc::new(
                SyncManifest::build(self.root(), &SyncOptions::default()).expect("manifest"),
            )),
            options: SyncOptions::default(),
            delete: true,
        }
    }
}

impl Default for RepoFixture {
    fn default() -> Self {
        Self::new()
    }
}

/// A run request with the suite's defaults.
pub fn request(repo: &RepoFixture, id: Option<&str>, argv: &[&str]) -> RunRequest {
    RunRequest {
        id: id.map(String::from),
        command: RemoteCommand::new(argv.iter().map(|s| s.to_string()).collect(), false),
        sync: Some(repo.sync_source()),
        full_resync: false,
        checksum: false,
        keep: KeepPolicy::Never,
        env: BTreeMap::new(),
        ttl: Duration::from_secs(600),
        slug: None,
        repo_root: Some(repo.root().to_path_buf()),
        from_snapshot: None,
        cancel: CancellationToken::new(),
        extras: Default::default(),
    }
}

/// Leases a box for `repo` (the suite's TTL), panicking if warmup fails.
pub async fn warm_box(p: &Engine, repo: &RepoFixture) -> crate::engine::BoxStatus {
    p.warmup(
        &WarmupRequest {
            slug: None,
            ttl: Duration::from_secs(600),
            repo_root: Some(repo.root().into()),
            from_snapshot: None,
            idle_timeout: None,
        },
        &SilentReporter,
    )
    .await
    .expect("warmup")
}

/// Runs `req` to completion, collecting its output; panics if the run fails.
pub async fn run_captured(p: &Engine, req: &RunRequest) -> (RunOutcome, CapturedOutput) {
    let mut out = CapturedOutput::default();
    let outcome = p
        .run(req, &mut out, &SilentReporter)
        .await
        .unwrap_or_else(|e| panic!("run {:?} failed: {e}", req.command.argv));
    (outcome, out)
}

async fn lease_ids(p: &Engine) -> Vec<String> {
    let mut ids: Vec<String> = p
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|b| b.lease_id)
        .collect();
    ids.sort();
    ids
}

/// Exit code of the remote command comes back; stdout and stderr stay separate.
pub async fn exit_code_and_split_streams(p: &Engine) {
    let repo = RepoFixture::new();
    let req = request(
        &repo,
        None,
        &["/bin/sh", "-c", "echo to-out; echo to-err >&2; exit 7"],
    );
    let (outcome, out) = run_captured(p, &req).await;
    assert_eq!(outcome.exit_code, 7, "remote exit code must be returned");
    assert_eq!(out.stdout_str(), "to-out\n", "stdout must hold only stdout");
    assert_eq!(out.stderr_str(), "to-err\n", "stderr must hold only stderr");
    assert!(!outcome.kept, "a one-shot run must not keep its box");
}

/// The synced tree is tracked + untracked-not-ignored, minus deleted files; modes survive; the
/// command runs in the workdir.
pub async fn sync_sends_the_manifest(p: &Engine) {
    let repo = RepoFixture::new();
    let req = request(
        &repo,
        None,
        &[
            "/bin/sh",
            "-c",
            "find . -type f -o -type l | sed 's|^\\./||' | sort; ./run.sh",
        ],
    );
    let (outcome, out) = run_captured(p, &req).await;
    assert_eq!(outcome.exit_code, 0, "stderr: {}", out.stderr_str());
    let mut lines: Vec<&str> = out.stdout_str().leak().lines().collect();
    assert_eq!(
        lines.pop(),
        Some("script-ran"),
        "executable mode must survive sync"
    );
    assert_eq!(lines, RepoFixture::expected_files(), "synced file set");
    let report = outcome.sync.expect("sync report");
    assert_eq!(report.files, RepoFixture::expected_files().len() as u64);
}

/// Quoting: argv words arrive intact; `--shell` words are shell source.
pub async fn argv_is_quoted_and_shell_mode_is_raw(p: &Engine) {
    let repo = RepoFixture::new();
    let mut req = request(&repo, None, &["printf", "%s|", "a b", "it's", "$HOME"]);
    req.sync = None;
    let (_, out) = run_captured(p, &req).await;
    assert_eq!(out.stdout_str(), "a b|it's|$HOME|");
    let mut req = request(
        &repo,
        None,
        &["echo", "one", "&&", "echo", "two", "|", "tr", "a-z", "A-Z"],
    );
    req.command.shell = true;
    req.sync = None;
    let (_, out) = run_captured(p, &req).await;
    assert_eq!(out.stdout_str(), "one\nTWO\n");
}

/// Only the allow-listed environment reaches the command.
pub async fn env_reaches_the_command(p: &Engine) {
    let repo = RepoFixture::new();
    let mut req = request(&repo, None, &["/bin/sh", "-c", "echo \"ci=$CI\""]);
    req.env.insert("CI".into(), "from-caller".into());
    req.sync = None;
    let (_, out) = run_captured(p, &req).await;
    assert_eq!(out.stdout_str(), "ci=from-caller\n");
}

/// A one-shot run leaves no box behind.
pub async fn one_shot_run_leaves_nothing(p: &Engine) {
    let before = lease_ids(p).await;
    let repo = RepoFixture::new();
    run_captured(p, &request(&repo, None, &["true"])).await;
    assert_eq!(
        lease_ids(p).await,
        before,
        "one-shot run must release its box"
    );
}

/// warmup, reuse by lease id and by slug (build outputs survive, deleted files go), status,
/// list, stop; afterwards the lease is unknown (exit 4).
pub async fn warm_box_lifecycle(p: &Engine) {
    let repo = RepoFixture::new();
    let warm = warm_box(p, &repo).await;
    assert!(
        crate::lease::is_lease_id(&warm.lease_id),
        "lease id shape: {}",
        warm.lease_id
    );
    assert!(!warm.slug.is_empty());
    assert!(
        lease_ids(p).await.contains(&warm.lease_id),
        "list must show a warm box"
    );

    let (o, out) = run_captured(
        p,
        &request(
            &repo,
            Some(&warm.lease_id),
            &[
                "/bin/sh",
                "-c",
                "mkdir -p target && echo built > target/artifact && pwd",
            ],
        ),
    )
    .await;
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert!(o.kept && !o.created, "reuse must keep the warm box");
    assert_eq!(
        out.stdout_str().trim_end(),
        warm.workdir,
        "command must run in the workdir"
    );

    std::fs::remove_file(repo.root().join("untracked.txt")).unwrap();
    std::fs::write(repo.root().join("tracked.txt"), "changed\n").unwrap();
    let (o, out) = run_captured(p, &request(&repo, Some(&warm.slug), &["/bin/sh", "-c", "cat target/artifact tracked.txt; test -e untracked.txt && echo stale || echo removed"])).await;
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(
        out.stdout_str(),
        "built\nchanged\nremoved\n",
        "warm reuse keeps build outputs, updates and deletes synced files"
    );

    let st = p
        .status(&StatusRequest {
            id: Some(warm.lease_id.clone()),
            wait: Some(Duration::from_secs(30)),
        })
        .await
        .expect("status");
    assert!(st.ready, "status of a warm box: {st:?}");
    assert_eq!(st.slug, warm.slug);

    let stopped = p
        .stop(&StopRequest {
            id: warm.slug.clone(),
            reclaim: false,
        })
        .await
        .expect("stop by slug");
    assert_eq!(stopped.lease_id, warm.lease_id);
    assert!(
        !lease_ids(p).await.contains(&warm.lease_id),
        "stopped box must leave the list"
    );
    let err = p
        .status(&StatusRequest {
            id: Some(warm.lease_id.clone()),
            wait: None,
        })
        .await
        .expect_err("status after stop");
    assert_eq!(err.exit_code(), 4, "{err}");
}

/// A warm sync checks the box, not a memory of it: whatever commands changed there (an edit
/// of the same size within the same second, a deletion, a chmod, a file turned into a
/// directory, a retargeted symlink) is restored; a synced directory swapped for a symlink to
/// elsewhere is never deleted or written through; build outputs stay.
pub async fn warm_sync_restores_what_the_box_changed(p: &Engine) {
    let repo = RepoFixture::new();
    let root = repo.root();
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::write(root.join("d/f.txt"), "f\n").unwrap();
    std::os::unix::fs::symlink("tracked.txt", root.join("link")).unwrap();
    let warm = warm_box(p, &repo).await;
    let (o, out) = run_captured(
        p,
        &request(
            &repo,
            Some(&warm.lease_id),
            &[
                "/bin/sh",
                "-c",
                "mkdir -p target && echo built > target/out",
            ],
        ),
    )
    .await;
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());

    let vandal = "echo clobber > tracked.txt && rm src/lib.txt && chmod 644 run.sh && \
                  rm untracked.txt && mkdir -p untracked.txt/inner && ln -sfn /etc link && \
                  mkdir -p \"$PWD.outside\" && echo keep > \"$PWD.outside/f.txt\" && \
                  rm -rf d && ln -s \"$PWD.outside\" d";
    let mut req = request(&repo, Some(&warm.lease_id), &["/bin/sh", "-c", vandal]);
    req.sync = None;
    let (o, out) = run_captured(p, &req).await;
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());

    // d/f.txt goes locally: its deletion must not reach through the planted link.
    std::fs::remove_file(root.join("d/f.txt")).unwrap();
    let probe = "cat tracked.txt src/lib.txt untracked.txt target/out \"$PWD.outside/f.txt\"; \
                 stat -c %a run.sh; readlink link; rm -rf \"$PWD.outside\"";
    let (o, out) = run_captured(
        p,
        &request(&repo, Some(&warm.lease_id), &["/bin/sh", "-c", probe]),
    )
    .await;
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(
        out.stdout_str(),
        "tracked\nlib\nuntracked\nbuilt\nkeep\n755\ntracked.txt\n",
        "the box must hold the local tree again, and nothing outside the workdir may change"
    );
    let report = o.sync.expect("sync report");
    assert_eq!(report.sent_files, 5, "{report:?}");
    p.stop(&StopRequest {
        id: warm.lease_id.clone(),
        reclaim: false,
    })
    .await
    .expect("stop");
}

/// `stop` of a lease nobody has: not found, exit 4.
pub async fn stop_unknown_is_not_found(p: &Engine) {
    let err = p
        .stop(&StopRequest {
            id: "cbx_000000000000".into(),
            reclaim: false,
        })
        .await
        .expect_err("stop unknown");
    assert!(matches!(err.root(), Error::NotFound(_)), "{err}");
    let err = p
        .stop(&StopRequest {
            id: "no-such-slug".into(),
            reclaim: false,
        })
        .await
        .expect_err("stop unknown slug");
    assert_eq!(err.exit_code(), 4);
}

/// `--keep-on-failure` keeps the box when the command fails, and it can be stopped after.
pub async fn keep_on_failure_keeps_failed_box(p: &Engine) {
    let repo = RepoFixture::new();
    let mut req = request(&repo, None, &["/bin/sh", "-c", "exit 3"]);
    req.keep = KeepPolicy::OnFailure;
    let (o, _) = run_captured(p, &req).await;
    assert_eq!(o.exit_code, 3);
    assert!(o.kept, "failed run with keep-on-failure must keep the box");
    assert!(lease_ids(p).await.contains(&o.lease_id));
    p.stop(&StopRequest {
        id: o.lease_id.clone(),
        reclaim: false,
    })
    .await
    .expect("stop kept box");
    let mut req = request(&repo, None, &["true"]);
    req.keep = KeepPolicy::OnFailure;
    let (o, _) = run_captured(p, &req).await;
    assert!(
        !o.kept,
        "successful run with keep-on-failure must release the box"
    );
}

/// Cancelling a run stops the remote command — even one that ignores SIGTERM — and returns
/// `Interrupted`; a one-shot box is released, a reused (`--id`) box is kept.
pub async fn cancel_stops_the_command(p: &Engine) {
    let repo = RepoFixture::new();
    // One-shot: the box goes away.
    let before = lease_ids(p).await;
    let mut req = request(&repo, None, &["/bin/sh", "-c", "echo started; sleep 30"]);
    req.sync = None;
    let started = std::time::Instant::now();
    let err = run_and_cancel(p, &req).await;
    assert!(err.is_interrupted(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "cancel must not wait for the command"
    );
    assert_eq!(
        lease_ids(p).await,
        before,
        "cancelled one-shot run must release its box"
    );

    // Reused box: the command (whose child ignores SIGTERM and beats every 100 ms) must stop,
    // and the box must stay for the next run to inspect.
    let warm = warm_box(p, &repo).await;
    // The beating loop is a background child that ignores SIGTERM: stopping only the top
    // process is not enough, the provider must stop the command's whole tree.
    let heartbeat = "(trap '' TERM; while :; do date +%s%N > .heartbeat; sleep 0.1; done) & \
                     while [ ! -s .heartbeat ]; do sleep 0.05; done; echo started; wait";
    let req = request(&repo, Some(&warm.lease_id), &["/bin/sh", "-c", heartbeat]);
    let err = run_and_cancel(p, &req).await;
    assert!(err.is_interrupted(), "{err}");
    let mut probe = request(&repo, Some(&warm.lease_id), &["/bin/sh", "-c", "a=$(cat .heartbeat); sleep 1; b=$(cat .heartbeat); [ \"$a\" = \"$b\" ] && echo stopped || echo still-beating"]);
    probe.sync = None;
    let (o, out) = run_captured(p, &probe).await;
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(
        out.stdout_str(),
        "stopped\n",
        "a cancelled command must not keep running (SIGKILL after the grace period)"
    );
    p.stop(&StopRequest {
        id: warm.lease_id.clone(),
        reclaim: false,
    })
    .await
    .expect("stop");
}

/// Cancels a token when the first stdout chunk arrives, so the cancel lands while the command
/// runs (not during sync, however slow the machine).
pub struct CancelOnOutput {
    pub inner: CapturedOutput,
    pub cancel: CancellationToken,
}

impl OutputSink for CancelOnOutput {
    fn stdout(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.cancel.cancel();
        self.inner.stdout(chunk)
    }
    fn stderr(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.inner.stderr(chunk)
    }
}

/// Runs `req` (whose command prints once it has started), cancels it at that first output,
/// and returns the error.
pub async fn run_and_cancel(p: &Engine, req: &RunRequest) -> Error {
    let mut sink = CancelOnOutput {
        inner: CapturedOutput::default(),
        cancel: req.cancel.clone(),
    };
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        p.run(req, &mut sink, &SilentReporter),
    )
    .await
    .expect("the command never printed, or cancel did not end the run");
    assert!(
        sink.cancel.is_cancelled(),
        "the command ended before printing: {result:?}"
    );
    result.expect_err("cancelled run must fail")
}

/// Every check, in order. Checks of what a provider declares it can do run only when its
/// capabilities say so; a provider that declares them must pass them.
pub async fn run_all(p: &Engine) {
    let caps = p.provider().capabilities();
    exit_code_and_split_streams(p).await;
    sync_sends_the_manifest(p).await;
    argv_is_quoted_and_shell_mode_is_raw(p).await;
    env_reaches_the_command(p).await;
    one_shot_run_leaves_nothing(p).await;
    if caps.warm_reuse {
        warm_box_lifecycle(p).await;
        warm_sync_restores_what_the_box_changed(p).await;
    }
    stop_unknown_is_not_found(p).await;
    keep_on_failure_keeps_failed_box(p).await;
    if caps.remote_kill {
        cancel_stops_the_command(p).await;
    }
    // Each runs its capability, or checks the refusal of a provider without it.
    if caps.warm_reuse {
        lifecycle::pause_keeps_the_box_and_a_run_wakes_it(p).await;
        lifecycle::a_box_from_a_snapshot_has_its_files(p).await;
        lifecycle::fork_makes_leases_that_copy_the_box(p).await;
        lifecycle::port_urls_name_the_port(p).await;
        lifecycle::a_terminal_runs_a_program_to_its_exit_code(p).await;
    }
}
