//! A create that failed: the reserved claim is dropped, after deleting whatever box the
//! service may have made for the lease; when that cannot be checked the claim stays, with the
//! lease to stop.

use super::*;
use crate::engine::StopRequest;

#[tokio::test]
async fn a_create_that_failed_cleanly_drops_the_claim_without_a_lookup() {
    let b = Bench::new();
    b.fake
        .fail(Op::Create, Error::Transport("quota exceeded".into()));
    let (result, _) = b.run(&b.request("make test")).await;
    assert_eq!(result.unwrap_err().to_string(), "quota exceeded");
    let lease = b.created_lease();
    assert_eq!(b.fake.calls(), calls(&[&format!("create {lease}")]));
    b.assert_nothing_left();
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_deletes_the_lease_boxes_and_drops_the_claim() {
    let b = Bench::new();
    b.fake
        .lose_create_answer(Error::Transport("connection reset".into()));
    let (result, _) = b.run(&b.request("make test")).await;
    let err = result.unwrap_err();
    assert_eq!(err.to_string(), "connection reset");
    assert!(err.hints().is_empty(), "{:?}", err.hints());
    let lease = b.created_lease();
    assert_eq!(
        b.fake.calls(),
        calls(&[
            &format!("create {lease}"),
            &format!("delete_lease_boxes {lease} settle=false"),
        ])
    );
    assert!(b
        .reporter
        .statuses()
        .contains(&format!("deleted box sbx1 of the unfinished lease {lease}")));
    b.assert_nothing_left();
}

#[tokio::test]
async fn a_lost_create_whose_lookup_fails_keeps_the_claim_and_hints_stop() {
    let b = Bench::new();
    b.fake.lose_create_answer(Error::WaitTimeout(
        "the sandbox did not start within 60s".into(),
    ));
    b.fake
        .fail(Op::DeleteLeaseBoxes, Error::Transport("503".into()));
    let (result, _) = b.run(&b.request("make test")).await;
    let err = result.unwrap_err();
    let lease = b.created_lease();
    assert_eq!(err.exit_code(), 5, "the original error's exit code: {err}");
    assert!(matches!(err.root(), Error::WaitTimeout(_)), "{err}");
    assert_eq!(err.hints(), [&stop_hint(&lease)]);
    let claim = b.claim(&lease).expect("the claim stays for stop to finish");
    assert_eq!(claim.remote_id, "", "no box was ever recorded");
    assert!(b.fake.get_box("sbx1").is_some());
    assert!(
        b.reporter
            .statuses()
            .iter()
            .any(|s| s.contains("could not be checked (503)")),
        "{:?}",
        b.reporter.statuses()
    );

    // The kept claim is how `stop` finds and deletes the box later.
    let stopped = b
        .engine
        .stop(&StopRequest {
            id: lease.clone(),
            reclaim: false,
        })
        .await
        .unwrap();
    assert!(!stopped.already_gone);
    b.assert_nothing_left();
}

#[tokio::test]
async fn warmup_keeps_its_box_and_records_a_kept_claim() {
    let b = Bench::new();
    let warm = b.warmup().await;
    assert_eq!(warm.remote_id, "sbx1");
    assert!(warm.claimed && warm.ready, "{warm:?}");
    let claim = b.claim(&warm.lease_id).unwrap();
    assert!(claim.keep);
    assert_eq!(claim.remote_id, "sbx1");
    assert_eq!(claim.workdir, b.workdir(&warm.lease_id));
    assert!(claim.labels.is_empty(), "the creating mark is gone");
    let made = b.fake.get_box("sbx1").unwrap();
    assert!(made.keep, "the box's tags say it is kept");
    assert_eq!((made.lease_id, made.slug), (warm.lease_id, warm.slug));
}
