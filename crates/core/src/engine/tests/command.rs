//! What the command gets: its script, its workdir, and exactly the request's environment plus
//! the run id.

use super::*;
use crate::provider::RUN_ID_VAR;
use crate::testing::Script;

#[tokio::test]
async fn the_command_gets_exactly_the_request_env_plus_the_run_id() {
    let b = Bench::new();
    b.fake.script("make test", Script::exits(0));
    let mut req = b.request("make test");
    req.env = BTreeMap::from([
        ("CI".to_string(), "1".to_string()),
        ("RUST_LOG".to_string(), "debug".to_string()),
    ]);
    b.run(&req).await.0.unwrap();
    let spec = &b.fake.processes()[0].spec;
    let mut expected = req.env.clone();
    expected.insert(RUN_ID_VAR.to_string(), spec.run_id.clone());
    assert_eq!(spec.env, expected);
    assert_eq!(spec.run_id.len(), 32, "{}", spec.run_id);
    assert!(spec.run_id.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(spec.script, "make test");
    assert_eq!(spec.cwd, b.workdir(&b.created_lease()));
}

#[tokio::test]
async fn each_run_gets_its_own_run_id() {
    let b = Bench::new();
    b.fake.script("true", Script::exits(0));
    let warm = b.warmup().await;
    let req = b.request_on(&warm.lease_id, "true");
    b.run(&req).await.0.unwrap();
    b.run(&req).await.0.unwrap();
    let ids: Vec<String> = b
        .fake
        .processes()
        .into_iter()
        .map(|p| p.spec.run_id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn a_run_without_sync_makes_the_workdir_and_sends_nothing() {
    let b = Bench::new();
    b.fake.script("true", Script::exits(0));
    let mut req = b.request("true");
    req.sync = None;
    let outcome = b.run(&req).await.0.unwrap();
    assert!(outcome.sync.is_none());
    let lease = b.created_lease();
    assert_eq!(
        b.fake.calls()[1..],
        calls(&[
            &format!("make_dir sbx1 {}", b.workdir(&lease)),
            "start sbx1",
            "delete sbx1"
        ])
    );
}
