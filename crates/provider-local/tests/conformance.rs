//! The core provider conformance suite, run against the local provider.

use std::collections::BTreeMap;

use crabbox_core::claims::ClaimStore;
use crabbox_core::conformance;
use crabbox_core::engine::Engine;
use crabbox_core::provider::ProviderContext;
use crabbox_provider_local::LocalProvider;

fn engine_with(caller_env: BTreeMap<String, String>) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_path_buf();
    let provider = LocalProvider::new(&ProviderContext {
        state_dir: state.clone(),
        caller_env,
        reporter: std::sync::Arc::new(crabbox_core::events::SilentReporter),
    });
    let p = Engine::new(
        Box::new(provider),
        ClaimStore::new(state.join("claims")),
        state,
    );
    (dir, p)
}

fn provider() -> (tempfile::TempDir, Engine) {
    engine_with(std::env::vars().collect())
}

#[tokio::test]
async fn local_provider_passes_the_conformance_suite() {
    let (_dir, p) = provider();
    let caps = p.provider().capabilities();
    assert!(
        caps.remote_kill && caps.warm_reuse && !caps.machine_class,
        "{caps:?}"
    );
    conformance::run_all(&p).await;
}

#[tokio::test]
async fn command_sees_only_allow_listed_and_base_environment() {
    let mut caller: BTreeMap<String, String> = std::env::vars().collect();
    caller.insert("CRABBOX_TEST_SECRET".into(), "leak".into());
    let (_dir, p) = engine_with(caller);
    let repo = conformance::RepoFixture::new();
    let mut req = conformance::request(
        &repo,
        None,
        &[
            "/bin/sh",
            "-c",
            "echo \"secret=${CRABBOX_TEST_SECRET:-unset} path=${PATH:+set}\"",
        ],
    );
    req.sync = None;
    let (o, out) = conformance::run_captured(&p, &req).await;
    assert_eq!(o.exit_code, 0);
    assert_eq!(out.stdout_str(), "secret=unset path=set\n");
}

#[tokio::test]
async fn killed_command_reports_signal_exit_code() {
    let (_dir, p) = provider();
    let repo = conformance::RepoFixture::new();
    let mut req = conformance::request(&repo, None, &["/bin/sh", "-c", "kill -9 $$"]);
    req.sync = None;
    let (o, _) = conformance::run_captured(&p, &req).await;
    assert_eq!(o.exit_code, 137);
}

#[tokio::test]
async fn cancel_kills_the_whole_process_group() {
    let (_dir, p) = provider();
    let repo = conformance::RepoFixture::new();
    let token = format!("crabbox-pgroup-{}", crabbox_core::lease::new_lease_id());
    let script = format!("(trap '' TERM; sleep 30; echo {token}) & echo started; wait");
    let mut req = conformance::request(&repo, None, &["/bin/sh", "-c", &script]);
    req.sync = None;
    let err = conformance::run_and_cancel(&p, &req).await;
    assert!(err.is_interrupted(), "{err}");
    let survivors = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
                let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                (String::from_utf8_lossy(&cmd).contains(&token) && pid != std::process::id())
                    .then_some(pid)
            })
            .collect()
    };
    // SIGKILL is delivered at once, but a busy machine may take a moment to finish the exits.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !survivors().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let survivors = survivors();
    assert!(
        survivors.is_empty(),
        "processes of the cancelled command survived: {survivors:?}"
    );
}
