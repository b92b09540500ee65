//! A one-shot run releases its box on every path, and leaves no claim or sync state.

use super::*;
use crate::testing::Script;

#[tokio::test]
async fn one_shot_run_releases_its_box_after_success() {
    let b = Bench::new();
    b.fake
        .script("make test", Script::new().stdout("ok\n").exit(0));
    let (result, out) = b.run(&b.request("make test")).await;
    let outcome = result.unwrap();
    assert_eq!(outcome.exit_code, 0);
    assert!(outcome.created && !outcome.kept, "{outcome:?}");
    assert_eq!(out.stdout_str(), "ok\n");
    let lease = b.created_lease();
    assert_eq!(outcome.lease_id, lease);
    assert_eq!(
        b.fake.calls(),
        calls(&[
            &format!("create {lease}"),
            "apply sbx1",
            "start sbx1",
            "delete sbx1"
        ])
    );
    b.assert_nothing_left();
}

#[tokio::test]
async fn one_shot_run_releases_its_box_when_the_command_fails() {
    let b = Bench::new();
    b.fake
        .script("make test", Script::new().stderr("boom\n").exit(3));
    let (result, out) = b.run(&b.request("make test")).await;
    let outcome = result.unwrap();
    assert_eq!(outcome.exit_code, 3);
    assert!(!outcome.kept);
    assert_eq!(out.stderr_str(), "boom\n");
    assert_eq!(b.fake.calls().last().unwrap(), "delete sbx1");
    b.assert_nothing_left();
}

#[tokio::test]
async fn one_shot_run_releases_its_box_when_the_sync_fails() {
    let b = Bench::new();
    b.fake.fail(Op::Apply, Error::Sync("disk full".into()));
    let (result, _) = b.run(&b.request("make test")).await;
    let err = result.unwrap_err();
    assert_eq!(err.exit_code(), 6, "{err}");
    let lease = b.created_lease();
    assert_eq!(
        b.fake.calls(),
        calls(&[&format!("create {lease}"), "apply sbx1", "delete sbx1"])
    );
    b.assert_nothing_left();
}

#[tokio::test]
async fn one_shot_run_releases_its_box_when_the_command_cannot_start() {
    let b = Bench::new();
    b.fake
        .fail(Op::Start, Error::Transport("envd refused".into()));
    let (result, _) = b.run(&b.request("make test")).await;
    let err = result.unwrap_err();
    assert_eq!(err.to_string(), "envd refused");
    assert_eq!(
        b.fake.calls()[1..],
        calls(&["apply sbx1", "start sbx1", "delete sbx1"])
    );
    b.assert_nothing_left();
}

#[tokio::test]
async fn one_shot_run_releases_its_box_when_the_stream_breaks_before_the_end() {
    let b = Bench::new();
    b.fake
        .script("make test", Script::new().stdout("partial").break_stream());
    let (result, out) = b.run(&b.request("make test")).await;
    let err = result.unwrap_err();
    assert!(matches!(err.root(), Error::Transport(_)), "{err}");
    assert!(err.to_string().contains("exit status is unknown"), "{err}");
    assert_eq!(
        out.stdout_str(),
        "partial",
        "output before the break is kept"
    );
    assert_eq!(b.fake.calls().last().unwrap(), "delete sbx1");
    b.assert_nothing_left();
}

#[tokio::test]
async fn one_shot_run_releases_its_box_when_the_stream_fails() {
    let b = Bench::new();
    b.fake.script(
        "make test",
        Script::new()
            .stdout("partial")
            .fail_stream("connection reset"),
    );
    let (result, _) = b.run(&b.request("make test")).await;
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("lost the connection to the command")
            && err.contains("connection reset")
            && err.contains("run it again"),
        "{err}"
    );
    let calls = b.fake.calls();
    let stopped = calls.iter().position(|c| c.starts_with("stop_run"));
    let deleted = calls.iter().position(|c| c == "delete sbx1");
    assert!(
        stopped.is_some() && stopped < deleted,
        "the command is stopped before the box goes: {calls:?}"
    );
    b.assert_nothing_left();
}

/// On a reused box nothing else would stop a command whose stream broke: the run stops it
/// and says how to run it again.
#[tokio::test]
async fn a_broken_stream_on_a_reused_box_stops_the_command_and_hints_a_rerun() {
    let b = Bench::new();
    let lease = b.warmup().await.lease_id;
    b.fake.script(
        "make test",
        Script::new()
            .stdout("partial")
            .fail_stream("connection reset"),
    );
    let (result, _) = b.run(&b.request_on(&lease, "make test")).await;
    let err = result.unwrap_err();
    assert!(matches!(err.root(), Error::Transport(_)), "{err}");
    assert!(
        err.hints()
            .iter()
            .any(|h| matches!(h, crate::hint::Hint::Rerun { lease_id, .. } if *lease_id == lease)),
        "{:?}",
        err.hints()
    );
    assert!(
        b.fake.calls().iter().any(|c| c.starts_with("stop_run")),
        "{:?}",
        b.fake.calls()
    );
}

#[tokio::test]
async fn one_shot_run_releases_its_box_when_cancelled_during_the_command() {
    let b = Bench::new();
    b.fake.script(
        "sleep 60",
        Script::new().stdout("started\n").until_signalled(),
    );
    let err = b.run_cancelled_on_output(&b.request("sleep 60")).await;
    assert!(err.is_interrupted(), "{err}");
    assert_eq!(err.exit_code(), 130);
    assert_eq!(b.fake.calls().last().unwrap(), "delete sbx1");
    b.assert_nothing_left();
}

#[tokio::test]
async fn one_shot_run_releases_its_box_when_cancelled_during_the_sync() {
    let b = Bench::new();
    b.fake.hang(Op::Apply);
    let err = b.run_cancelled_at(&b.request("make test"), Op::Apply).await;
    assert!(err.is_interrupted(), "{err}");
    let lease = b.created_lease();
    assert_eq!(
        b.fake.calls(),
        calls(&[&format!("create {lease}"), "apply sbx1", "delete sbx1"]),
        "nothing starts after a cancelled sync"
    );
    b.assert_nothing_left();
}

#[tokio::test]
async fn one_shot_run_releases_its_box_when_cancelled_during_create() {
    let b = Bench::new();
    // The create reaches the service (its box exists) but never answers.
    b.fake.hang(Op::Create);
    let err = b
        .run_cancelled_at(&b.request("make test"), Op::Create)
        .await;
    assert!(err.is_interrupted(), "{err}");
    let lease = b.created_lease();
    assert_eq!(
        b.fake.calls(),
        calls(&[
            &format!("create {lease}"),
            &format!("delete_lease_boxes {lease} settle=true"),
        ]),
        "a create abandoned in flight is looked up by its lease tag, with settling"
    );
    b.assert_nothing_left();
}

#[tokio::test]
async fn one_shot_run_cancelled_before_it_begins_makes_nothing() {
    let b = Bench::new();
    let req = b.request("make test");
    req.cancel.cancel();
    let (result, _) = b.run(&req).await;
    assert!(result.unwrap_err().is_interrupted());
    assert!(b.fake.calls().is_empty(), "{:?}", b.fake.calls());
    b.assert_nothing_left();
}
