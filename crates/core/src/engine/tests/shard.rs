//! `shard` over a provider without forks: every shard gets its own box and sync, runs its
//! substituted command, and every box is released on every path.

use std::sync::{Arc, Mutex};

use super::*;
use crate::engine::ShardRequest;
use crate::events::OutputSink;
use crate::testing::Script;

fn shard_req(b: &Bench, count: u32, template: &str) -> ShardRequest {
    ShardRequest {
        count,
        max_count: 20,
        id: None,
        from_snapshot: None,
        command: RemoteCommand::new(vec![template.to_string()], true),
        sync: Some(b.source()),
        env: BTreeMap::new(),
        ttl: Duration::from_secs(600),
        repo_root: Some(b.repo.path().to_path_buf()),
        fail_fast: false,
        keep: false,
        junit: Vec::new(),
        artifact_dir: None,
        cancel: CancellationToken::new(),
    }
}

fn sink() -> (Arc<Mutex<CapturedOutput>>, Arc<Mutex<dyn OutputSink>>) {
    let out: Arc<Mutex<CapturedOutput>> = Arc::default();
    let dynamic: Arc<Mutex<dyn OutputSink>> = out.clone();
    (out, dynamic)
}

#[tokio::test]
async fn every_shard_runs_its_own_command_and_every_box_is_released() {
    let b = Bench::new();
    for i in 1..=3 {
        b.fake.script(
            &format!("test --shard {i}/3"),
            Script::new().stdout(format!("ran {i}\n")).exit(0),
        );
    }
    let (out, dynamic) = sink();
    let req = shard_req(&b, 3, "test --shard {{index}}/{{total}}");
    let o = b.engine.shard(&req, dynamic, &b.reporter).await.unwrap();
    assert_eq!(o.exit_code, 0);
    assert_eq!(
        o.uploads, 3,
        "without forks each shard is synced on its own"
    );
    assert!(!o.plan.forked);
    let mut lines: Vec<String> = out
        .lock()
        .unwrap()
        .stdout_str()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(lines, ["[1/3] ran 1", "[2/3] ran 2", "[3/3] ran 3"]);
    for p in b.fake.processes() {
        let i = &p.spec.env[crate::engine::shard::SHARD_INDEX_VAR];
        assert!(
            p.spec.script.ends_with(&format!("{i}/3")),
            "{}",
            p.spec.script
        );
        assert_eq!(p.spec.env[crate::engine::shard::SHARD_TOTAL_VAR], "3");
    }
    assert!(b.fake.boxes().is_empty(), "no box is left");
    assert!(
        b.engine.claims().list().unwrap().0.is_empty(),
        "no claim is left"
    );
}

#[tokio::test]
async fn the_first_failing_shards_code_is_the_verdict() {
    let b = Bench::new();
    b.fake.script("t 1", Script::exits(0));
    b.fake.script("t 2", Script::exits(7));
    b.fake.script("t 3", Script::exits(9));
    let (_, dynamic) = sink();
    let o = b
        .engine
        .shard(&shard_req(&b, 3, "t {{index}}"), dynamic, &b.reporter)
        .await
        .unwrap();
    assert_eq!(o.exit_code, 7);
    assert_eq!(o.shards.len(), 3);
    assert!(b.fake.boxes().is_empty());
}

#[tokio::test]
async fn a_shard_that_cannot_start_orphans_none_of_its_siblings() {
    let b = Bench::new();
    b.fake
        .fail(Op::Create, Error::Transport("quota exceeded".into()));
    let (_, dynamic) = sink();
    let err = b
        .engine
        .shard(&shard_req(&b, 3, "t {{index}}"), dynamic, &b.reporter)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("quota exceeded"), "{err}");
    assert!(
        b.fake.processes().is_empty(),
        "no shard ran a partial suite"
    );
    assert!(
        b.fake.boxes().is_empty(),
        "the boxes that were made are released"
    );
    assert!(b.engine.claims().list().unwrap().0.is_empty());
}

#[tokio::test]
async fn fail_fast_stops_the_other_shards() {
    let b = Bench::new();
    b.fake.script("t 1", Script::exits(4));
    b.fake.script_matching(
        |s| s == "t 2" || s == "t 3",
        Script::new().until_signalled(),
    );
    let (_, dynamic) = sink();
    let mut req = shard_req(&b, 3, "t {{index}}");
    req.fail_fast = true;
    let o = b.engine.shard(&req, dynamic, &b.reporter).await.unwrap();
    assert_eq!(o.exit_code, 4);
    let stopped = o
        .shards
        .iter()
        .filter(|r| r.error.as_deref() == Some("stopped"))
        .count();
    assert_eq!(stopped, 2, "{:?}", o.shards);
    assert!(b.fake.boxes().is_empty());
}

#[tokio::test]
async fn a_count_over_the_cap_is_refused_before_anything_is_made() {
    let b = Bench::new();
    let (_, dynamic) = sink();
    let mut req = shard_req(&b, 5, "t");
    req.max_count = 4;
    let err = b
        .engine
        .shard(&req, dynamic, &b.reporter)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Usage(_)));
    assert!(err.to_string().contains("shard.maxCount"), "{err}");
    assert_eq!(b.fake.count(Op::Create), 0);
}
