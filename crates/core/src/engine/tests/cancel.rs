//! Cancel: SIGTERM to the command, SIGKILL after the grace if it ignores it, and the whole
//! run stopped through `stop_run`; the run returns `Error::Interrupted`.

use std::time::Instant;

use super::*;
use crate::provider::Signal;
use crate::testing::{Script, KILL_EXIT, TERM_EXIT};

#[tokio::test]
async fn cancel_terms_the_command_and_stops_its_run() {
    let b = Bench::new();
    b.fake.script(
        "serve",
        Script::new().stdout("listening\n").until_signalled(),
    );
    let err = b.run_cancelled_on_output(&b.request("serve")).await;
    assert!(err.is_interrupted(), "{err}");
    let calls_after_start: Vec<String> = b
        .fake
        .calls()
        .into_iter()
        .skip_while(|c| c != "start sbx1")
        .skip(1)
        .collect();
    assert_eq!(
        calls_after_start,
        calls(&["signal sbx1 TERM pid=1", "stop_run sbx1", "delete sbx1"]),
        "no SIGKILL for a command that ends on SIGTERM"
    );
    let process = &b.fake.processes()[0];
    assert_eq!(process.signals, [Signal::Term]);
    assert_eq!(process.exit, Some(TERM_EXIT));
}

#[tokio::test]
async fn cancel_kills_a_command_that_ignores_term_after_the_grace() {
    let b = Bench::new();
    b.fake.script(
        "serve",
        Script::new()
            .stdout("listening\n")
            .ignore_term()
            .until_signalled(),
    );
    // Without a working stop_run only the engine's own signals can stop the command.
    b.fake
        .fail(Op::StopRun, Error::Transport("no reaper on the box".into()));
    let started = Instant::now();
    let err = b.run_cancelled_on_output(&b.request("serve")).await;
    assert!(err.is_interrupted(), "{err}");
    assert!(started.elapsed() >= GRACE, "SIGKILL came before the grace");
    let calls_after_start: Vec<String> = b
        .fake
        .calls()
        .into_iter()
        .skip_while(|c| c != "start sbx1")
        .skip(1)
        .collect();
    assert_eq!(
        calls_after_start,
        calls(&[
            "signal sbx1 TERM pid=1",
            "stop_run sbx1",
            "signal sbx1 KILL pid=1",
            "delete sbx1"
        ])
    );
    let process = &b.fake.processes()[0];
    assert_eq!(process.signals, [Signal::Term, Signal::Kill]);
    assert_eq!(process.exit, Some(KILL_EXIT));
}

#[tokio::test]
async fn cancel_leaves_no_process_of_the_run_alive_even_one_that_ignores_term() {
    let b = Bench::new();
    b.fake.script(
        "serve",
        Script::new()
            .stdout("listening\n")
            .ignore_term()
            .until_signalled(),
    );
    let warm = b.warmup().await;
    let err = b
        .run_cancelled_on_output(&b.request_on(&warm.lease_id, "serve"))
        .await;
    assert!(err.is_interrupted(), "{err}");
    assert_eq!(b.fake.processes()[0].exit, Some(KILL_EXIT));
    assert_eq!(b.fake.count(Op::StopRun), 1);
    assert!(b.fake.get_box("sbx1").is_some(), "a reused box stays");
}

#[tokio::test]
async fn cancel_while_the_command_starts_stops_the_run_and_releases_the_box() {
    let b = Bench::new();
    b.fake.hang(Op::Start);
    let err = b.run_cancelled_at(&b.request("serve"), Op::Start).await;
    assert!(err.is_interrupted(), "{err}");
    assert_eq!(
        b.fake.calls()[1..],
        calls(&["apply sbx1", "start sbx1", "stop_run sbx1", "delete sbx1"]),
        "the start may have reached the box: the run is stopped by its id"
    );
    b.assert_nothing_left();
}

/// Output that can no longer be written (a closed pipe).
struct ClosedOutput;

impl crate::events::OutputSink for ClosedOutput {
    fn stdout(&mut self, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
    fn stderr(&mut self, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
}

#[tokio::test]
async fn an_output_failure_stops_the_command_on_a_kept_box() {
    let b = Bench::new();
    b.fake
        .script("serve", Script::new().stdout("up\n").until_signalled());
    let warm = b.warmup().await;
    let req = b.request_on(&warm.lease_id, "serve");
    let err = b
        .engine
        .run(&req, &mut ClosedOutput, &b.reporter)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("broken pipe"), "{err}");
    assert_eq!(b.fake.processes()[0].exit, Some(TERM_EXIT));
    assert_eq!(b.fake.count(Op::StopRun), 1);
    assert!(b.fake.get_box("sbx1").is_some(), "a reused box stays");
}
