//! The core provider conformance suite, run against the local provider.

use crabbox_core::claims::ClaimStore;
use crabbox_core::conformance;
use crabbox_provider_local::LocalProvider;

fn provider() -> (tempfile::TempDir, LocalProvider) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_path_buf();
    let p = LocalProvider::new(
        ClaimStore::new(state.join("claims")),
        state,
        std::env::vars().collect(),
    );
    (dir, p)
}

#[tokio::test]
async fn local_provider_passes_the_conformance_suite() {
    let (_dir, p) = provider();
    let caps = crabbox_core::provider::Provider::capabilities(&p);
    assert!(
        caps.remote_kill && caps.warm_reuse && !caps.machine_class,
        "{caps:?}"
    );
    conformance::run_all(&p).await;
}

#[tokio::test]
async fn command_sees_only_allow_listed_and_base_environment() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_path_buf();
    let mut caller: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    caller.insert("CRABBOX_TEST_SECRET".into(), "leak".into());
    let p = LocalProvider::new(ClaimStore::new(state.join("claims")), state, caller);
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
    let cancel = req.cancel.clone();
    let run = async {
        let mut out = conformance::CapturedOutput::default();
        crabbox_core::provider::Provider::run(
            &p,
            &req,
            &mut out,
            &crabbox_core::provider::SilentReporter,
        )
        .await
    };
    let trigger = async {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(run, trigger);
    assert!(matches!(result, Err(crabbox_core::Error::Interrupted)));
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
