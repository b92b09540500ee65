//! What comes home after the command: artifacts (also after a failure), a hostile listing
//! that writes nothing outside the target, required artifacts, captured output, scripts,
//! sync-only and detached runs.

use super::*;
use crate::engine::{Download, RunExtras, RunMode, Script as LocalScript};
use crate::testing::Script;

/// The listing script the engine runs on the box (it lists with `find`).
fn is_listing(s: &str) -> bool {
    s.starts_with("cd -- \"$CBX_WD\"")
}

fn listing(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, path) in entries {
        out.extend_from_slice(kind.as_bytes());
        out.push(0);
        out.extend_from_slice(b"644\0");
        out.extend_from_slice(path.as_bytes());
        out.push(0);
    }
    out
}

#[tokio::test]
async fn artifacts_come_home_after_a_failure_and_a_hostile_listing_writes_nothing_outside() {
    let b = Bench::new();
    let warm = b.warmup().await;
    let wd = b.workdir(&warm.lease_id);
    b.fake
        .write_file(&warm.remote_id, &format!("{wd}/out/ok.txt"), b"report");
    b.fake
        .write_file(&warm.remote_id, &format!("{wd}/out/deep/x.txt"), b"deep");
    b.fake.script("make test", Script::exits(3));
    b.fake.script_matching(
        is_listing,
        Script::new()
            .stdout(listing(&[
                ("d", "out"),
                ("f", "out/ok.txt"),
                ("f", "out/deep/x.txt"),
                ("f", "out/../../escaped.txt"),
                ("f", "/etc/passwd"),
                ("l", "out/etc-link"),
            ]))
            .exit(0),
    );
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("artifacts");
    let mut req = b.request_on(&warm.lease_id, "make test");
    req.extras = RunExtras {
        artifact_globs: vec!["out/**".into(), "**".into()],
        artifact_dir: Some(dir.clone()),
        ..RunExtras::default()
    };
    let outcome = b.run(&req).await.0.unwrap();
    assert_eq!(outcome.exit_code(), 3, "the command's failure is the run's");
    let report = outcome.artifacts.expect("artifacts were fetched");
    let mut got: Vec<_> = report.files.iter().map(|f| f.remote.as_str()).collect();
    got.sort();
    assert_eq!(got, ["out/deep/x.txt", "out/ok.txt"]);
    assert_eq!(std::fs::read(dir.join("out/ok.txt")).unwrap(), b"report");
    assert_eq!(std::fs::read(dir.join("out/deep/x.txt")).unwrap(), b"deep");
    assert_eq!(report.refused.len(), 3, "{:?}", report.refused);
    // Nothing beside the artifact directory.
    let beside: Vec<_> = std::fs::read_dir(target.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["artifacts"]);
    assert!(!b.repo.path().join("escaped.txt").exists());
}

#[tokio::test]
async fn a_missing_required_artifact_fails_a_passing_run_with_exit_6() {
    let b = Bench::new();
    let warm = b.warmup().await;
    b.fake.script("true", Script::exits(0));
    b.fake.script_matching(
        is_listing,
        Script::new()
            .stdout(listing(&[("m", "coverage/lcov.info")]))
            .exit(0),
    );
    let mut req = b.request_on(&warm.lease_id, "true");
    req.extras.require = vec!["coverage/lcov.info".into()];
    let outcome = b.run(&req).await.0.unwrap();
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(outcome.exit_code(), 6);
    let report = outcome.artifacts.unwrap();
    assert_eq!(report.missing_required, ["coverage/lcov.info"]);
    assert!(
        b.reporter
            .statuses()
            .iter()
            .any(|s| s.contains("required artifact coverage/lcov.info")),
        "{:?}",
        b.reporter.statuses()
    );
}

#[tokio::test]
async fn a_download_of_a_missing_path_is_reported_and_a_dotdot_is_refused() {
    let b = Bench::new();
    let warm = b.warmup().await;
    b.fake.script("true", Script::exits(0));
    b.fake
        .script_matching(is_listing, Script::new().stdout(Vec::new()).exit(0));
    let mut req = b.request_on(&warm.lease_id, "true");
    req.extras.downloads = vec![Download {
        remote: "nope.txt".into(),
        local: b.repo.path().join("got.txt"),
    }];
    let outcome = b.run(&req).await.0.unwrap();
    assert_eq!(outcome.artifacts.unwrap().missing_downloads, ["nope.txt"]);

    req.extras.downloads = vec![Download {
        remote: "../../etc/passwd".into(),
        local: b.repo.path().join("got.txt"),
    }];
    let outcome = b.run(&req).await.0.unwrap();
    let report = outcome.artifacts.clone().unwrap();
    assert!(
        report
            .error
            .as_deref()
            .unwrap_or("")
            .contains("may not leave the workdir"),
        "{report:?}"
    );
    assert_eq!(
        outcome.exit_code(),
        1,
        "a fetch that failed is not a success"
    );
}

#[tokio::test]
async fn captured_output_is_kept_on_failure_only_with_capture_on_fail() {
    let b = Bench::new();
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out.txt"), dir.path().join("err.txt"));
    b.fake.script(
        "ok",
        Script::new().stdout("fine\n").stderr("warn\n").exit(0),
    );
    b.fake.script(
        "bad",
        Script::new().stdout("oops\n").stderr("boom\n").exit(1),
    );
    let mut req = b.request("ok");
    req.extras.capture_stdout = Some(out.clone());
    req.extras.capture_stderr = Some(err.clone());
    let (result, live) = b.run(&req).await;
    result.unwrap();
    assert_eq!(live.stdout_str(), "fine\n", "still streamed live");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "fine\n");
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "warn\n");

    req.extras.capture_on_fail = true;
    b.run(&req).await.0.unwrap();
    assert!(!out.exists() && !err.exists(), "a success keeps no capture");
    let mut bad = b.request("bad");
    bad.extras = req.extras.clone();
    b.run(&bad).await.0.unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "oops\n");
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "boom\n");
}

#[tokio::test]
async fn a_script_is_put_on_the_box_and_run_with_its_arguments() {
    let b = Bench::new();
    b.fake
        .script_matching(|s| s.starts_with("exec bash "), Script::exits(0));
    let mut req = b.request("unused");
    req.extras.script = Some(LocalScript {
        name: "check.sh".into(),
        body: b"echo hi\n".to_vec(),
        args: vec!["a b".into(), "c".into()],
    });
    b.run(&req).await.0.unwrap();
    let spec = &b.fake.processes()[0].spec;
    assert!(
        spec.script.starts_with("exec bash '/crabbox/.cbx_")
            && spec.script.ends_with("-check.sh' 'a b' 'c'"),
        "{}",
        spec.script
    );
    assert_eq!(b.fake.count(Op::WriteFile), 1);
}

#[tokio::test]
async fn sync_only_keeps_the_box_it_made_and_runs_nothing() {
    let b = Bench::new();
    let mut req = b.request("never");
    req.extras.mode = RunMode::SyncOnly;
    let outcome = b.run(&req).await.0.unwrap();
    assert!(outcome.sync_only && outcome.kept && !outcome.released);
    assert_eq!(outcome.exit_code(), 0);
    assert!(b.fake.processes().is_empty(), "no command ran");
    let lease = b.created_lease();
    assert_eq!(b.fake.boxes().len(), 1);
    assert!(b
        .fake
        .get_box(&b.fake.boxes()[0].remote_id)
        .unwrap()
        .file("a.txt")
        .is_some());
    assert!(b.engine.claims().get(&lease).unwrap().unwrap().keep);
}

#[tokio::test]
async fn a_detached_run_is_started_recorded_and_its_box_kept() {
    let b = Bench::new();
    b.fake
        .script_matching(|s| s.contains("setsid bash -c"), Script::exits(0));
    let mut req = b.request("make test");
    req.extras.mode = RunMode::Detached;
    let outcome = b.run(&req).await.0.unwrap();
    let run_id = outcome.run_id.clone().expect("a run id");
    assert!(outcome.kept);
    let spec = &b.fake.processes()[0].spec;
    assert_eq!(spec.env["CBX_SCRIPT"], "make test");
    assert_eq!(spec.env[RUN_ID_VAR_NAME], run_id);
    let run = b.engine.detached_run(&run_id[..8]).unwrap();
    assert_eq!(run.lease_id, outcome.lease_id);
    assert!(run.dir.ends_with(&run_id));
    assert!(matches!(
        b.engine.detached_run("zzzzzz").unwrap_err(),
        Error::NotFound(_)
    ));
}

const RUN_ID_VAR_NAME: &str = crate::provider::RUN_ID_VAR;

#[tokio::test(start_paused = true)]
async fn a_run_past_its_timeout_is_stopped_and_exits_124_with_artifacts_fetched() {
    let b = Bench::new();
    let warm = b.warmup().await;
    b.fake
        .script("hang", Script::new().stdout("working\n").until_signalled());
    b.fake.script_matching(
        is_listing,
        Script::new()
            .stdout(listing(&[("m", "report.xml")]))
            .exit(0),
    );
    let mut req = b.request_on(&warm.lease_id, "hang");
    req.extras.timeout = Some(Duration::from_secs(600));
    req.extras.require = vec!["report.xml".into()];
    let (result, out) = b.run(&req).await;
    let outcome = result.unwrap();
    assert_eq!(out.stdout_str(), "working\n");
    assert!(outcome.timed_out);
    assert_eq!(outcome.exit_code(), 124);
    assert!(
        outcome.artifacts.is_some(),
        "the outputs are still fetched after a timeout"
    );
    let hang = b
        .fake
        .processes()
        .into_iter()
        .find(|p| p.spec.script == "hang")
        .unwrap();
    assert!(hang.exit.is_some(), "the command was stopped: {hang:?}");
    assert!(
        b.reporter
            .statuses()
            .iter()
            .any(|s| s.contains("timed out")),
        "{:?}",
        b.reporter.statuses()
    );
}
