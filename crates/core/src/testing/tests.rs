use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::conformance;
use crate::error::Error;
use crate::events::SilentReporter;
use crate::provider::{BoxRef, BoxSession, ExecSpec, NewBox, Provider};

async fn made_box(p: &MemoryProvider, lease_id: &str) -> (BoxRef, Box<dyn BoxSession>) {
    let workdir = p.workdir(lease_id).unwrap();
    let new = NewBox {
        lease_id,
        slug: "blue-crab",
        ttl: Duration::from_secs(60),
        keep: false,
        repo_root: None,
        workdir: &workdir,
        from_snapshot: None,
        idle_timeout: None,
    };
    let created = p
        .create(&new, &SilentReporter)
        .await
        .unwrap_or_else(|f| panic!("{}", f.error));
    let target = BoxRef {
        lease_id: lease_id.into(),
        slug: "blue-crab".into(),
        remote_id: created.remote_id,
        claimed: true,
        verified: true,
        tag_lease: None,
    };
    (target, created.session)
}

/// The conformance checks whose commands need no shell, their commands scripted by text.
/// The rest of `conformance::run_all` runs real shell commands (`find`, `printf`, pipes,
/// background children), which this provider does not fake.
#[tokio::test]
async fn memory_provider_passes_the_conformance_checks_that_need_no_shell() {
    let dir = tempfile::tempdir().unwrap();
    let fake = MemoryProvider::new();
    fake.script("'true'", Script::exits(0));
    fake.script("'/bin/sh' '-c' 'exit 3'", Script::exits(3));
    let engine = fake.engine(dir.path());
    conformance::stop_unknown_is_not_found(&engine).await;
    conformance::one_shot_run_leaves_nothing(&engine).await;
    conformance::keep_on_failure_keeps_failed_box(&engine).await;
}

#[tokio::test]
async fn a_box_refuses_a_target_naming_another_lease() {
    let fake = MemoryProvider::new();
    let (target, _) = made_box(&fake, "cbx_aaaaaaaaaaaa").await;
    let other = BoxRef {
        lease_id: "cbx_bbbbbbbbbbbb".into(),
        ..target.clone()
    };
    for err in [
        fake.delete(&other).await.unwrap_err(),
        fake.inspect(&other).await.unwrap_err(),
        fake.open(&other, Duration::from_secs(1))
            .await
            .err()
            .unwrap(),
    ] {
        assert!(matches!(err, Error::NotOurs(_)), "{err}");
    }
    assert!(fake.get_box(&target.remote_id).is_some());
}

#[tokio::test]
async fn a_bad_archive_leaves_the_tree_as_it_was() {
    let fake = MemoryProvider::new();
    let (target, session) = made_box(&fake, "cbx_aaaaaaaaaaaa").await;
    let spool = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(spool.path(), b"not a gzipped tar").unwrap();
    let cancel = CancellationToken::new();
    let keep = [crate::sync::SyncOp::Delete("kept.txt".to_string())];
    let req = crate::provider::ApplySync {
        ops: &keep,
        record: Some(b""),
        sent: None,
        workdir: "/crabbox/cbx_aaaaaaaaaaaa",
        chunks: 1,
        if_unchanged_since: None,
        timeout: Duration::from_secs(5),
        cancel: &cancel,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(Ok(crate::provider::PackedChunk {
        file: spool.into_temp_path(),
        codec: crate::sync::Codec::Gzip,
        len: 17,
    }))
    .await
    .unwrap();
    drop(tx);
    let before = fake.get_box(&target.remote_id).unwrap();
    let err = session
        .apply_sync(&req, rx, &SilentReporter)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 6, "{err}");
    assert_eq!(fake.get_box(&target.remote_id).unwrap(), before);
}

#[tokio::test]
async fn a_command_without_a_script_does_not_start() {
    let fake = MemoryProvider::new();
    let (_, session) = made_box(&fake, "cbx_aaaaaaaaaaaa").await;
    let spec = ExecSpec {
        script: "make".into(),
        env: Default::default(),
        cwd: "/crabbox/cbx_aaaaaaaaaaaa".into(),
        run_id: "r".into(),
    };
    let err = session.start(&spec).await.err().unwrap();
    assert!(err.to_string().contains("no script"), "{err}");
    assert!(fake.processes().is_empty());
}

/// A provider that declares none of the lifecycle capabilities is refused up front: the
/// engine names the provider and the alternative, and calls no primitive.
#[tokio::test]
async fn lifecycle_requests_to_a_provider_without_them_are_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let fake = MemoryProvider::new();
    let engine = fake.engine(dir.path());
    let repo = conformance::RepoFixture::new();
    let b = conformance::warm_box(&engine, &repo).await;
    fake.clear_calls();
    let refusals = [
        engine.pause(&b.lease_id).await.err(),
        engine
            .resume(&b.lease_id, Duration::from_secs(60))
            .await
            .err(),
        engine.snapshot(&b.lease_id, None).await.err(),
        engine.snapshots().await.err(),
        engine
            .fork(
                &crate::engine::ForkRequest {
                    id: b.lease_id.clone(),
                    count: 2,
                    ttl: Duration::from_secs(60),
                },
                &SilentReporter,
            )
            .await
            .err(),
        engine
            .port_url(&b.lease_id, 80, Duration::from_secs(60))
            .await
            .err(),
        engine
            .shell(
                &crate::engine::ShellRequest {
                    id: b.lease_id.clone(),
                    argv: Vec::new(),
                    cols: 80,
                    rows: 24,
                    term: "xterm".into(),
                    ttl: Duration::from_secs(60),
                },
                &SilentReporter,
            )
            .await
            .err(),
    ];
    for e in refusals {
        let e = e.expect("refused");
        assert!(matches!(e.root(), Error::Usage(_)), "{e}");
        let text = e.to_string();
        assert!(text.contains("provider memory cannot"), "{text}");
        assert!(text.contains("; "), "names what to use instead: {text}");
    }
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

/// A refusal says what to do instead as a hint the front end renders.
#[tokio::test]
async fn a_refused_pause_hints_at_running_on_the_box_and_a_refused_fork_at_a_warmup() {
    let dir = tempfile::tempdir().unwrap();
    let fake = MemoryProvider::new();
    let engine = fake.engine(dir.path());
    let repo = conformance::RepoFixture::new();
    let b = conformance::warm_box(&engine, &repo).await;
    let e = engine.pause(&b.lease_id).await.unwrap_err();
    assert_eq!(
        e.hints(),
        [&crate::hint::Hint::RunOn {
            provider: "memory".into(),
            id: b.lease_id.clone()
        }]
    );
    let e = engine.snapshots().await.unwrap_err();
    assert_eq!(
        e.hints(),
        [&crate::hint::Hint::Warmup {
            provider: "memory".into()
        }]
    );
}
