//! `cleanup`: a dry run changes nothing; applied, it drops claims whose box is gone, finishes
//! leases whose creation broke, removes stale files, and leaves unclaimed boxes alone.

use super::*;
use crate::engine::StopRequest;

/// A half-made lease: its box exists, its claim has no box recorded, and the process that
/// made it is gone.
async fn half_made(b: &Bench) -> String {
    b.fake
        .lose_create_answer(Error::WaitTimeout("no answer".into()));
    b.fake
        .fail(Op::DeleteLeaseBoxes, Error::Transport("503".into()));
    let _ = b.run(&b.request("make test")).await;
    let (claims, _) = b.engine.claims().list().unwrap();
    let lease = claims
        .into_iter()
        .find(|c| c.remote_id.is_empty())
        .expect("a placeholder claim")
        .lease_id;
    owned_by_a_dead_process(b, &lease);
    lease
}

/// Rewrites a claim's owner to a process that does not exist (a crabbox killed outright).
fn owned_by_a_dead_process(b: &Bench, lease: &str) {
    let mut claim = b.claim(lease).unwrap();
    // Above Linux's largest pid.
    claim
        .labels
        .insert(crate::claims::OWNER_LABEL.into(), "4194305:1".into());
    b.engine.claims().write(&claim).unwrap();
}

/// What a live crabbox owns is left alone: a lease it is creating, a one-shot run's lease,
/// the locks it holds. Once its process is gone, cleanup finishes the lease, releases the
/// one-shot run's box and removes the files.
#[tokio::test]
async fn cleanup_leaves_a_live_process_s_leases_and_locks_alone_and_reaps_a_dead_one_s() {
    let b = Bench::new();
    // A one-shot run's lease whose release failed: the claim is this (live) process's.
    b.fake.fail(Op::Delete, Error::Transport("500".into()));
    let _ = b.run(&b.request("make test")).await;
    let (claims, _) = b.engine.claims().list().unwrap();
    let oneshot = claims
        .into_iter()
        .find(|c| !c.keep)
        .expect("the one-shot claim");
    assert!(oneshot.labels.contains_key(crate::claims::OWNER_LABEL));
    let held = b.engine.claims().lock_lease("cbx_aaaaaaaaaaaa").unwrap();
    let report = b.engine.cleanup(true).await.unwrap();
    assert!(report.actions.is_empty(), "{report:?}");
    assert!(b.claim(&oneshot.lease_id).is_some());

    drop(held);
    owned_by_a_dead_process(&b, &oneshot.lease_id);
    let report = b.engine.cleanup(true).await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(report.actions.iter().any(|a| matches!(a,
        CleanupAction::ReleaseLease { lease_id, .. } if *lease_id == oneshot.lease_id)));
    assert!(report.actions.iter().any(|a| matches!(a,
        CleanupAction::RemoveFile { path } if path.ends_with("cbx_aaaaaaaaaaaa.lock"))));
    assert!(b.claim(&oneshot.lease_id).is_none());
    b.assert_nothing_left();
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_apply_reconciles() {
    let b = Bench::new();
    let gone = b.warmup().await;
    b.fake.remove_box(&gone.remote_id);
    let half = half_made(&b).await;
    // A lock file of a lease with no claim, held by nobody.
    let stale = b.state.path().join("claims/cbx_0123456789ab.lock");
    std::fs::write(&stale, "").unwrap();

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
