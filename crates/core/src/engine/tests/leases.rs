//! `status`, `stop` and `list`: which lease they pick, what they refuse, how they report.

use super::*;
use crate::engine::{StatusRequest, StopRequest};
use crate::hint::Hint;

fn status_of(id: Option<&str>) -> StatusRequest {
    StatusRequest {
        id: id.map(String::from),
        wait: None,
    }
}

#[tokio::test]
async fn status_without_an_id_picks_the_only_lease() {
    let b = Bench::new();
    let warm = b.warmup().await;
    let status = b.engine.status(&status_of(None)).await.unwrap();
    assert_eq!(status.lease_id, warm.lease_id);
    assert_eq!(status.state, "running");
    assert!(status.ready && status.claimed);
}

#[tokio::test]
async fn status_without_an_id_refuses_to_choose_between_two_leases() {
    let b = Bench::new();
    let one = b.warmup().await;
    let two = b.warmup().await;
    b.fake.clear_calls();
    let err = b.engine.status(&status_of(None)).await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    let mut leases = vec![(one.lease_id, one.slug), (two.lease_id, two.slug)];
    leases.sort();
    assert_eq!(
        err.hints(),
        [&Hint::PickLease {
            provider: MEMORY.into(),
            leases
        }]
    );
    assert_eq!(
        b.fake.count(Op::Inspect),
        0,
        "nothing is asked of the boxes"
    );
}

#[tokio::test]
async fn status_without_an_id_and_no_lease_says_to_warm_one_up() {
    let b = Bench::new();
    let err = b.engine.status(&status_of(None)).await.unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert_eq!(
        err.hints(),
        [&Hint::Warmup {
            provider: MEMORY.into()
        }]
    );
}

#[tokio::test]
async fn status_of_a_lease_whose_box_is_gone_hints_stop() {
    let b = Bench::new();
    let warm = b.warmup().await;
    b.fake.remove_box(&warm.remote_id);
    let err = b
        .engine
        .status(&status_of(Some(&warm.slug)))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert_eq!(err.hints(), [&stop_hint(&warm.lease_id)]);
}

#[tokio::test]
async fn stop_of_an_unknown_id_is_not_found_with_a_reclaim_hint() {
    let b = Bench::new();
    let err = b
        .engine
        .stop(&StopRequest {
            id: "sbx9".into(),
            reclaim: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert_eq!(
        err.hints(),
        [&Hint::Reclaim {
            provider: MEMORY.into(),
            id: "sbx9".into()
        }]
    );
    assert!(b.fake.calls().is_empty(), "{:?}", b.fake.calls());
}

#[tokio::test]
async fn stop_deletes_the_box_then_forgets_the_lease() {
    let b = Bench::new();
    let warm = b.warmup().await;
    b.fake.clear_calls();
    let stopped = b
        .engine
        .stop(&StopRequest {
            id: warm.slug.clone(),
            reclaim: false,
        })
        .await
        .unwrap();
    assert_eq!(stopped.lease_id, warm.lease_id);
    assert!(!stopped.already_gone);
    assert_eq!(b.fake.calls(), calls(&["delete sbx1"]));
    b.assert_nothing_left();
}

#[tokio::test]
async fn stop_keeps_the_claim_when_the_delete_fails() {
    let b = Bench::new();
    let warm = b.warmup().await;
    b.fake.fail(Op::Delete, Error::Transport("503".into()));
    let req = StopRequest {
        id: warm.lease_id.clone(),
        reclaim: false,
    };
    let err = b.engine.stop(&req).await.unwrap_err();
    assert_eq!(err.to_string(), "503");
    assert!(b.claim(&warm.lease_id).is_some());
    assert!(b.fake.get_box("sbx1").is_some());
}

#[tokio::test]
async fn list_shows_a_claim_whose_box_is_gone_as_gone() {
    let b = Bench::new();
    let kept = b.warmup().await;
    let expired = b.warmup().await;
    b.fake.remove_box(&expired.remote_id);
    let listed = b.engine.list().await.unwrap();
    let state_of = |lease: &str| {
        let s = listed.iter().find(|s| s.lease_id == lease).unwrap();
        (s.state.as_str(), s.claimed, s.ready)
    };
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(state_of(&kept.lease_id), ("running", true, true));
    assert_eq!(state_of(&expired.lease_id), ("gone", true, false));
}

#[tokio::test]
async fn usage_records_a_lease_from_warmup_to_stop_and_stop_reports_its_total() {
    let b = Bench::new();
    let warm = b.warmup().await;
    let before = b.engine.usage().unwrap();
    assert_eq!(before.leases.len(), 1);
    assert_eq!(before.leases[0].lease_id, warm.lease_id);
    assert_eq!(before.leases[0].state, "running");
    assert_eq!(
        before.repos[0].repo,
        b.repo.path().display().to_string(),
        "a lease counts for its repository"
    );
    let out = b
        .engine
        .stop(&StopRequest {
            id: warm.lease_id.clone(),
            reclaim: false,
        })
        .await
        .unwrap();
    let usage = out.usage.expect("stop reports the lease's usage");
    assert_eq!(
        (usage.lease_id.as_str(), usage.state.as_str()),
        (warm.lease_id.as_str(), "stopped")
    );
    assert_eq!(usage.paused_secs, 0);
    let after = b.engine.usage().unwrap();
    assert_eq!(
        after.leases[0].state, "stopped",
        "a stopped lease stays in the report"
    );
}

#[tokio::test]
async fn a_one_shot_run_records_its_box_created_and_stopped() {
    let b = Bench::new();
    b.fake.script("true", crate::testing::Script::exits(0));
    let (outcome, _) = b.run(&b.request("true")).await;
    outcome.unwrap();
    let usage = b.engine.usage().unwrap();
    assert_eq!(usage.leases.len(), 1);
    assert_eq!(usage.leases[0].state, "stopped");
}
