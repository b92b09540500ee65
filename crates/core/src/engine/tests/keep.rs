//! Keep policies, reuse by id, and a release that fails: the box stays only when the policy
//! says so or the delete failed, and a kept box is always reported.

use super::*;
use crate::hint::Hint;
use crate::testing::Script;

#[tokio::test]
async fn keep_always_keeps_the_box_and_marks_its_claim_kept() {
    let b = Bench::new();
    b.fake.script("make test", Script::exits(0));
    let mut req = b.request("make test");
    req.keep = KeepPolicy::Always;
    let outcome = b.run(&req).await.0.unwrap();
    assert!(outcome.kept && outcome.created, "{outcome:?}");
    assert_eq!(b.fake.count(Op::Delete), 0);
    let claim = b.claim(&outcome.lease_id).unwrap();
    assert!(claim.keep);
    assert_eq!(claim.remote_id, "sbx1");
    assert!(b.fake.get_box("sbx1").unwrap().keep);
    assert!(b.reporter.hints().is_empty(), "{:?}", b.reporter.hints());
}

#[tokio::test]
async fn keep_on_failure_keeps_a_failed_box_and_hints_rerun_and_stop() {
    let b = Bench::new();
    b.fake.script("make test", Script::exits(3));
    let mut req = b.request("make test");
    req.keep = KeepPolicy::OnFailure;
    let outcome = b.run(&req).await.0.unwrap();
    assert_eq!(outcome.exit_code, 3);
    assert!(outcome.kept, "{outcome:?}");
    let lease = outcome.lease_id;
    assert!(b.claim(&lease).unwrap().keep, "the claim says kept");
    assert!(b.fake.get_box("sbx1").is_some());
    assert_eq!(
        b.reporter.hints(),
        [
            Hint::Rerun {
                provider: MEMORY.into(),
                lease_id: lease.clone(),
                command: req.command.clone(),
            },
            stop_hint(&lease),
        ]
    );
    assert!(b
        .reporter
        .statuses()
        .iter()
        .any(|s| s.starts_with("kept memory box sbx1")));
}

#[tokio::test]
async fn keep_on_failure_keeps_the_box_when_the_sync_fails() {
    let b = Bench::new();
    b.fake.fail(Op::Apply, Error::Sync("disk full".into()));
    let mut req = b.request("make test");
    req.keep = KeepPolicy::OnFailure;
    let err = b.run(&req).await.0.unwrap_err();
    assert_eq!(err.exit_code(), 6);
    let lease = b.created_lease();
    assert!(b.claim(&lease).unwrap().keep);
    assert_eq!(b.fake.count(Op::Delete), 0);
    assert!(b.reporter.hints().contains(&stop_hint(&lease)));
}

#[tokio::test]
async fn keep_on_failure_releases_a_successful_run() {
    let b = Bench::new();
    b.fake.script("make test", Script::exits(0));
    let mut req = b.request("make test");
    req.keep = KeepPolicy::OnFailure;
    let outcome = b.run(&req).await.0.unwrap();
    assert!(!outcome.kept);
    assert!(b.reporter.hints().is_empty());
    b.assert_nothing_left();
}

#[tokio::test]
async fn a_reused_box_is_never_released_whatever_happens() {
    let b = Bench::new();
    b.fake.script("ok", Script::exits(0));
    b.fake.script("fails", Script::exits(3));
    b.fake
        .script("serve", Script::new().stdout("up\n").until_signalled());
    let warm = b.warmup().await;
    let on_warm = |script| b.request_on(&warm.lease_id, script);

    for script in ["ok", "fails"] {
        let outcome = b.run(&on_warm(script)).await.0.unwrap();
        assert!(outcome.kept && !outcome.created, "{script}: {outcome:?}");
    }
    b.fake.fail(Op::Apply, Error::Sync("disk full".into()));
    b.write("a.txt", "changed, so there is something to send\n");
    assert_eq!(b.run(&on_warm("ok")).await.0.unwrap_err().exit_code(), 6);
    let err = b.run_cancelled_on_output(&on_warm("serve")).await;
    assert!(err.is_interrupted());

    assert_eq!(b.fake.count(Op::Delete), 0, "{:?}", b.fake.calls());
    assert!(b.fake.get_box("sbx1").is_some());
    let claim = b.claim(&warm.lease_id).unwrap();
    assert!(claim.keep && claim.remote_id == "sbx1", "{claim:?}");
}

#[tokio::test]
async fn a_failed_delete_is_reported_and_keeps_the_box_and_claim() {
    let b = Bench::new();
    b.fake.script("make test", Script::exits(0));
    b.fake.fail(Op::Delete, Error::Transport("503".into()));
    let outcome = b.run(&b.request("make test")).await.0.unwrap();
    let lease = outcome.lease_id.clone();
    assert!(
        outcome.kept,
        "a box that could not be deleted is still there"
    );
    assert!(!outcome.released);
    assert_eq!(
        outcome.exit_code(),
        1,
        "a command that succeeded on a box left running is not a success"
    );
    assert!(outcome.release_error.as_deref().unwrap().contains("sbx1"));
    assert_eq!(
        b.reporter.statuses().last().unwrap(),
        &format!("could not delete memory box sbx1 (lease {lease}): 503")
    );
    assert_eq!(b.reporter.hints(), [stop_hint(&lease)]);
    assert_eq!(b.claim(&lease).unwrap().remote_id, "sbx1");
    assert!(b.fake.get_box("sbx1").is_some());
}

/// The engine bounds the release after a failed sync or a cancel; a delete that outlasts the
/// bound is a release that failed, and is reported like one. (Time is paused: the bound
/// passes without being waited out.)
#[tokio::test(start_paused = true)]
async fn a_delete_that_never_answers_after_a_failed_sync_is_reported() {
    let b = Bench::new();
    b.fake.fail(Op::Apply, Error::Sync("disk full".into()));
    b.fake.hang(Op::Delete);
    let err = b.run(&b.request("make test")).await.0.unwrap_err();
    assert_eq!(err.exit_code(), 6, "the sync's error: {err}");
    let lease = b.created_lease();
    assert_eq!(b.fake.count(Op::Delete), 1);
    assert!(
        b.reporter
            .statuses()
            .iter()
            .any(|s| s.starts_with("could not delete memory box sbx1")),
        "{:?}",
        b.reporter.statuses()
    );
    assert_eq!(b.reporter.hints(), [stop_hint(&lease)]);
    assert!(b.claim(&lease).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_delete_that_never_answers_after_a_cancel_is_reported() {
    let b = Bench::new();
    b.fake
        .script("serve", Script::new().stdout("up\n").until_signalled());
    b.fake.hang(Op::Delete);
    let err = b.run_cancelled_on_output(&b.request("serve")).await;
    assert!(err.is_interrupted(), "{err}");
    let lease = b.created_lease();
    assert_eq!(b.reporter.hints(), [stop_hint(&lease)]);
    assert!(b.claim(&lease).is_some());
}

#[tokio::test]
async fn a_box_gone_under_a_run_names_the_lease_to_stop_while_it_is_still_claimed() {
    let b = Bench::new();
    let warm = b.warmup().await;
    let gone = || Error::NotFound("box sbx1 is no longer running".into());
    // A reused box dies during its sync, then during its command: the claim outlives it.
    for op in [Op::Apply, Op::Start] {
        b.fake.fail(op, gone());
        let (result, _) = b.run(&b.request_on(&warm.lease_id, "make test")).await;
        let err = result.unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        assert_eq!(err.hints(), [&stop_hint(&warm.lease_id)], "{op:?}");
        assert!(b.claim(&warm.lease_id).is_some());
    }
    // A one-shot run released the box and its claim: nothing is left to stop.
    b.fake.fail(Op::Start, gone());
    let (result, _) = b.run(&b.request("make test")).await;
    let err = result.unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.hints().is_empty(), "{:?}", err.hints());
    assert_eq!(b.claims().len(), 1, "only the warm lease's");
}
