//! Workspaces: each is its own synced tree on the box, synced and verified on its own, and
//! locked on its own on this machine.

use super::*;
use crate::engine::tree_lock::{Hold, TreeLock};
use crate::testing::Script;

fn in_workspace(mut req: RunRequest, name: &str) -> RunRequest {
    req.extras.workspace = Some(name.to_string());
    req
}

#[tokio::test]
async fn each_workspace_is_its_own_tree_and_main_keeps_the_workdir() {
    let b = Bench::new();
    b.fake.script("true", Script::exits(0));
    let warm = b.warmup().await;
    let lease = warm.lease_id.clone();
    let main_dir = format!("/crabbox/{lease}");
    let ws_dir = format!("/crabbox/.{lease}.crabbox-workspaces/agent-2");

    b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    b.write("only-in-agent.txt", "agent\n");
    let outcome = b
        .run(&in_workspace(b.request_on(&lease, "true"), "agent-2"))
        .await
        .0
        .unwrap();
    // A new workspace gets the whole tree, in its own directory, with its own record.
    assert_eq!(outcome.sync.unwrap().sent_files, 4);
    let synced = b.fake.get_box("sbx1").unwrap();
    assert_eq!(synced.applied[0].workdir, main_dir);
    assert_eq!(synced.applied[1].workdir, ws_dir);
    assert!(synced.records.contains_key(&main_dir));
    assert!(synced.records.contains_key(&ws_dir));
    assert!(synced
        .files
        .contains_key(&format!("{ws_dir}/only-in-agent.txt")));
    assert!(!synced
        .files
        .contains_key(&format!("{main_dir}/only-in-agent.txt")));

    // Main's tree was not touched: its next sync sends only the new file, deletes nothing.
    let outcome = b.run(&b.request_on(&lease, "true")).await.0.unwrap();
    let report = outcome.sync.unwrap();
    assert_eq!((report.sent_files, report.deleted_files), (1, 0));
    // The workspace is up to date on its own.
    let outcome = b
        .run(&in_workspace(b.request_on(&lease, "true"), "agent-2"))
        .await
        .0
        .unwrap();
    assert_eq!(outcome.sync.unwrap().sent_files, 0);
    // The claim keeps the lease's workdir.
    let claim = b.engine.claims.get(&lease).unwrap().unwrap();
    assert_eq!(claim.workdir, main_dir);
}

#[tokio::test]
async fn a_workspace_syncs_while_another_workspace_is_held() {
    let b = Bench::new();
    b.fake.script("true", Script::exits(0));
    let lease = b.warmup().await.lease_id;
    // Another run holds main's tree exclusively (a sync in progress) ...
    let mut main = TreeLock::open(b.state.path(), &lease, "main").unwrap();
    main.hold(Hold::Exclusive, &b.reporter, &CancellationToken::new())
        .await
        .unwrap();
    // ... a run in another workspace does not wait for it.
    let req = in_workspace(b.request_on(&lease, "true"), "other");
    let run = b.run(&req);
    let (result, _) = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the workspace's run did not wait for main's lock");
    assert_eq!(result.unwrap().exit_code, 0);
    drop(main);
    assert!(b
        .state
        .path()
        .join(format!("locks/{lease}@other.tree"))
        .exists());
}

#[tokio::test]
async fn bad_workspace_names_are_refused_before_any_box() {
    let b = Bench::new();
    for bad in ["..", "a/b", ".x", "a\0b"] {
        let err = b
            .run(&in_workspace(b.request("true"), bad))
            .await
            .0
            .unwrap_err();
        assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
    }
    assert!(
        b.fake.calls().iter().all(|c| !c.starts_with("create")),
        "{:?}",
        b.fake.calls()
    );
}
