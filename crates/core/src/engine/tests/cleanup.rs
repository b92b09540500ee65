//! `cleanup`: a dry run changes nothing; applied, it drops claims whose box is gone, finishes
//! leases whose creation broke, removes stale files, and leaves unclaimed boxes alone.

use super::*;
use crate::engine::StopRequest;

/// A half-made lease: its box exists, its claim has no box recorded.
async fn half_made(b: &Bench) -> String {
    b.fake
        .lose_create_answer(Error::WaitTimeout("no answer".into()));
    b.fake
        .fail(Op::DeleteLeaseBoxes, Error::Transport("503".into()));
    let _ = b.run(&b.request("make test")).await;
    let (claims, _) = b.engine.claims().list().unwrap();
    claims
        .into_iter()
        .find(|c| c.remote_id.is_empty())
        .expect("a placeholder claim")
        .lease_id
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_apply_reconciles() {
    let b = Bench::new();
    let gone = b.warmup().await;
    b.fake.remove_box(&gone.remote_id);
    let half = half_made(&b).await;
    let stale = b.state.path().join("claims/cbx_0123456789ab.lock");
    std::fs::write(&stale, "").unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::open(&stale)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();

    let dry = b.engine.cleanup(false).await.unwrap();
    assert!(!dry.applied && dry.errors.is_empty(), "{dry:?}");
    assert!(dry.actions.contains(&CleanupAction::DropClaim {
        lease_id: gone.lease_id.clone(),
        slug: gone.slug.clone(),
    }));
    let finish = dry
        .actions
        .iter()
        .find(|a| matches!(a, CleanupAction::FinishLease { lease_id, .. } if *lease_id == half))
        .expect("the half-made lease is finished");
    assert!(matches!(finish, CleanupAction::FinishLease { boxes, .. } if boxes.len() == 1));
    assert!(dry.actions.contains(&CleanupAction::RemoveFile {
        path: stale.clone()
    }));
    assert!(dry.unclaimed.is_empty(), "{:?}", dry.unclaimed);
    assert!(b.claim(&gone.lease_id).is_some() && b.claim(&half).is_some());
    assert!(stale.exists());

    let done = b.engine.cleanup(true).await.unwrap();
    assert!(done.errors.is_empty(), "{:?}", done.errors);
    assert!(b.claim(&gone.lease_id).is_none() && b.claim(&half).is_none());
    assert!(!stale.exists());
    b.assert_nothing_left();
    assert!(b.engine.cleanup(false).await.unwrap().actions.is_empty());
}

#[tokio::test]
async fn an_unclaimed_box_is_reported_and_left_alone_and_reclaim_drops_a_placeholder() {
    let b = Bench::new();
    let warm = b.warmup().await;
    // The claim is lost (another machine holds it, or it was removed by hand).
    std::fs::remove_file(
        b.state
            .path()
            .join(format!("claims/{}.json", warm.lease_id)),
    )
    .unwrap();
    let report = b.engine.cleanup(true).await.unwrap();
    assert_eq!(report.unclaimed.len(), 1, "{report:?}");
    assert_eq!(report.unclaimed[0].remote_id, warm.remote_id);
    assert!(b.fake.get_box(&warm.remote_id).is_some(), "left alone");

    // A placeholder claim goes with its box when the box is reclaimed by id.
    let half = half_made(&b).await;
    let half_box = b
        .fake
        .boxes()
        .into_iter()
        .find(|x| x.lease_id == half)
        .unwrap()
        .remote_id;
    b.engine
        .stop(&StopRequest {
            id: half_box,
            reclaim: true,
        })
        .await
        .unwrap();
    assert!(b.claim(&half).is_none(), "the placeholder claim is dropped");
}
