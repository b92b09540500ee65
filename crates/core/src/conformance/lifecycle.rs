//! Conformance of the optional lifecycle capabilities: each runs when the provider declares
//! it, and otherwise the engine must refuse it up front, naming the provider.

use super::{request, run_captured, warm_box, RepoFixture};
use crate::engine::{Engine, ForkRequest, StopRequest, WarmupRequest};
use crate::error::Error;
use crate::events::SilentReporter;
use crate::provider::Feature;

fn assert_refused<T: std::fmt::Debug>(p: &Engine, r: crate::Result<T>, what: &str) {
    match r {
        Err(e) if matches!(e.root(), Error::Usage(_)) => assert!(
            e.to_string()
                .contains(&format!("provider {} cannot", p.name())),
            "{what}: the refusal must name the provider: {e}"
        ),
        other => panic!("{what}: a provider without it must refuse it: {other:?}"),
    }
}

async fn stop(p: &Engine, lease: &str) {
    p.stop(&StopRequest {
        id: lease.to_string(),
        reclaim: false,
    })
    .await
    .expect("stop");
}

/// Pause keeps the files; a run on the paused box wakes it and sees them.
pub async fn pause_keeps_the_box_and_a_run_wakes_it(p: &Engine) {
    let repo = RepoFixture::new();
    let b = warm_box(p, &repo).await;
    if !p.provider().capabilities().has(Feature::Pause) {
        assert_refused(p, p.pause(&b.lease_id).await, "pause");
        stop(p, &b.lease_id).await;
        return;
    }
    let mut req = request(
        &repo,
        Some(&b.lease_id),
        &["/bin/sh", "-c", "echo kept > kept.txt"],
    );
    req.sync = None;
    run_captured(p, &req).await;
    let paused = p.pause(&b.lease_id).await.expect("pause");
    assert!(!paused.already);
    assert!(p.pause(&b.lease_id).await.expect("pause again").already);
    let st = p
        .status(&crate::engine::StatusRequest {
            id: Some(b.lease_id.clone()),
            wait: None,
        })
        .await
        .expect("status");
    assert_eq!(st.state, "paused");
    let mut req = request(&repo, Some(&b.lease_id), &["cat", "kept.txt"]);
    req.sync = None;
    let (outcome, out) = run_captured(p, &req).await;
    assert_eq!(
        (outcome.exit_code, out.stdout_str()),
        (0, "kept\n".to_string())
    );
    stop(p, &b.lease_id).await;
}

/// A snapshot's box starts with the files; snapshots list and delete.
pub async fn a_box_from_a_snapshot_has_its_files(p: &Engine) {
    let repo = RepoFixture::new();
    let b = warm_box(p, &repo).await;
    if !p.provider().capabilities().has(Feature::Snapshot) {
        assert_refused(p, p.snapshot(&b.lease_id, None).await, "snapshot");
        assert_refused(p, p.snapshots().await, "snapshot list");
        stop(p, &b.lease_id).await;
        return;
    }
    let mut req = request(
        &repo,
        Some(&b.lease_id),
        &["/bin/sh", "-c", "echo snap > snap.txt"],
    );
    req.sync = None;
    run_captured(p, &req).await;
    let snap = p.snapshot(&b.lease_id, None).await.expect("snapshot");
    assert!(p
        .snapshots()
        .await
        .expect("list")
        .iter()
        .any(|s| s.id == snap.snapshot.id));
    let child = p
        .warmup(
            &WarmupRequest {
                slug: None,
                ttl: std::time::Duration::from_secs(600),
                repo_root: Some(repo.root().into()),
                from_snapshot: Some(snap.snapshot.id.clone()),
                idle_timeout: None,
            },
            &SilentReporter,
        )
        .await
        .expect("warmup from the snapshot");
    let mut req = request(&repo, Some(&child.lease_id), &["cat", "snap.txt"]);
    req.sync = None;
    let (_, out) = run_captured(p, &req).await;
    assert_eq!(out.stdout_str(), "snap\n");
    p.delete_snapshot(&snap.snapshot.id).await.expect("delete");
    assert!(matches!(
        p.delete_snapshot(&snap.snapshot.id).await,
        Err(Error::NotFound(_))
    ));
    stop(p, &child.lease_id).await;
    stop(p, &b.lease_id).await;
}

/// A fork makes new leases, each a copy of the box with its own claim.
pub async fn fork_makes_leases_that_copy_the_box(p: &Engine) {
    let repo = RepoFixture::new();
    let b = warm_box(p, &repo).await;
    let fork = ForkRequest {
        id: b.lease_id.clone(),
        count: 2,
        ttl: std::time::Duration::from_secs(600),
    };
    if !p.provider().capabilities().has(Feature::Fork) {
        assert_refused(p, p.fork(&fork, &SilentReporter).await, "fork");
        stop(p, &b.lease_id).await;
        return;
    }
    let mut req = request(
        &repo,
        Some(&b.lease_id),
        &["/bin/sh", "-c", "echo fork > fork.txt"],
    );
    req.sync = None;
    run_captured(p, &req).await;
    let out = p.fork(&fork, &SilentReporter).await.expect("fork");
    assert_eq!(out.forks.len(), 2, "{:?}", out.failed);
    assert_ne!(out.forks[0].lease_id, out.forks[1].lease_id);
    for f in &out.forks {
        let mut req = request(&repo, Some(&f.lease_id), &["cat", "fork.txt"]);
        req.sync = None;
        let (_, o) = run_captured(p, &req).await;
        assert_eq!(o.stdout_str(), "fork\n");
        stop(p, &f.lease_id).await;
    }
    stop(p, &b.lease_id).await;
}

/// A port URL names the port.
pub async fn port_urls_name_the_port(p: &Engine) {
    let repo = RepoFixture::new();
    let b = warm_box(p, &repo).await;
    let url = p
        .port_url(&b.lease_id, 8080, std::time::Duration::from_secs(600))
        .await;
    if p.provider().capabilities().has(Feature::PortUrl) {
        let url = url.expect("port url");
        assert!(url.url.contains("8080"), "{}", url.url);
    } else {
        assert_refused(p, url, "port url");
    }
    stop(p, &b.lease_id).await;
}

/// A program under a pseudo-terminal prints to it, sees a terminal, and its exit code
/// comes back.
pub async fn a_terminal_runs_a_program_to_its_exit_code(p: &Engine) {
    use crate::provider::PtyEvent;
    let repo = RepoFixture::new();
    let b = warm_box(p, &repo).await;
    let req = crate::engine::ShellRequest {
        id: b.lease_id.clone(),
        argv: vec![
            "sh".into(),
            "-c".into(),
            "test -t 0 && echo pty-ok; exit 4".into(),
        ],
        cols: 80,
        rows: 24,
        term: "xterm".into(),
        ttl: std::time::Duration::from_secs(600),
    };
    let shell = p.shell(&req, &SilentReporter).await;
    if !p.provider().capabilities().has(Feature::Pty) {
        assert_refused(p, shell.map(|s| s.lease_id), "shell");
        stop(p, &b.lease_id).await;
        return;
    }
    let mut stream = shell.expect("shell").pty.stream;
    let mut seen = Vec::new();
    let code = loop {
        match stream.next_event().await.expect("terminal stream") {
            Some(PtyEvent::Output(bytes)) => seen.extend(bytes),
            Some(PtyEvent::Exited(code)) => break code,
            None => panic!("the terminal closed without its program's end"),
        }
    };
    assert_eq!(code, 4);
    assert!(
        String::from_utf8_lossy(&seen).contains("pty-ok"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    stop(p, &b.lease_id).await;
}
