//! E2B-specific behaviour against the in-process emulator: secrets, config safety, warm delta
//! sync, ownership checks, reclaim (and an ambiguous slug), cancellation (also mid-sync), TTL
//! and keep-on-failure hints.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{edit, raw_create, raw_delete, raw_exists, raw_list, write, Recorder, World, KEY};
use crabbox_core::conformance::{request, CapturedOutput, RepoFixture};
use crabbox_core::engine::{KeepPolicy, StatusRequest, StopRequest, WarmupRequest};
use crabbox_core::events::SilentReporter;
use crabbox_core::hint::Hint;
use crabbox_core::Error;

fn warm_req(repo: &RepoFixture) -> WarmupRequest {
    WarmupRequest {
        slug: None,
        ttl: Duration::from_secs(600),
        repo_root: Some(repo.root().to_path_buf()),
        from_snapshot: None,
        idle_timeout: None,
    }
}

/// Stops the test's lease (it must stop), then the emulator.
async fn stop_and_shut_down(
    p: &crabbox_core::engine::Engine,
    lease: &str,
    emu: e2b_emulator::EmulatorHandle,
) {
    p.stop(&StopRequest {
        id: lease.to_string(),
        reclaim: false,
    })
    .await
    .unwrap();
    emu.shutdown().await;
}

/// How [`leased`] warms its lease.
enum Warmed {
    /// Warmed up, never synced.
    Plain,
    /// Synced twice, so its tree has a watcher ([`watched_lease`]).
    Watched,
}

/// A test's emulator, world, provider and repository, and a lease warmed up for it (`None`
/// where no emulator runs here).
async fn leased(
    how: Warmed,
) -> Option<(
    e2b_emulator::EmulatorHandle,
    World,
    crabbox_core::engine::Engine,
    RepoFixture,
    crabbox_core::engine::BoxStatus,
)> {
    let emu = common::emulator().await?;
    let world = World::new();
    let p = world.provider(&emu, &[]).unwrap();
    let repo = RepoFixture::new();
    let warm = match how {
        Warmed::Plain => p.warmup(&warm_req(&repo), &SilentReporter).await.unwrap(),
        Warmed::Watched => watched_lease(&p, &repo).await,
    };
    Some((emu, world, p, repo, warm))
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_key_is_refused_without_echoing_it() {
    let Some(emu) = common::emulator().await else {
        return;
    };
    let world = World::new();
    let wrong = "e2b_wrongwrongwrongwrong1234";
    let p = world
        .provider(&emu, &[("CRABBOX_E2B_API_KEY", wrong)])
        .unwrap();
    let err = p.list().await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(wrong), "key leaked: {text}");
    assert!(text.contains("E2B_API_KEY"), "{text}");
    assert_eq!(err.exit_code(), 2, "{text}");

    let repo = RepoFixture::new();
    let mut out = CapturedOutput::default();
    let err = p
        .run(&request(&repo, None, &["true"]), &mut out, &SilentReporter)
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(wrong), "key leaked: {text}");
    assert!(
        world.claims().list().unwrap().0.is_empty(),
        "failed create must not leave a claim"
    );

    let right = world.provider(&emu, &[]).unwrap();
    let debug = format!("{right:?}");
    assert!(!debug.contains(KEY), "Debug leaks the key: {debug}");
    emu.shutdown().await;
}

#[tokio::test]
async fn missing_key_is_a_usage_error_naming_both_variables() {
    let world = World::new();
    let cfg = world.config(&[]).unwrap();
    let err = crabbox_provider_e2b::E2bProvider::from_config(&cfg).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    assert!(
        msg.contains("E2B_API_KEY") && msg.contains("CRABBOX_E2B_API_KEY"),
        "{msg}"
    );
}

#[tokio::test]
async fn repository_config_may_not_redirect_the_users_key() {
    for key in [
        "apiUrl: http://127.0.0.1:9",
        "domain: evil.example",
        "sandboxUrl: http://127.0.0.1:9",
    ] {
        let world = World::new();
        write(
            world.cwd.path(),
            ".crabbox.yaml",
            &format!("e2b:\n  {key}\n"),
        );
        let cfg = world.config(&[("E2B_API_KEY", KEY)]).expect("config loads");
        let err = crabbox_provider_e2b::E2bProvider::from_config(&cfg).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{key}: {err}");
        assert!(err.to_string().contains(".crabbox.yaml"), "{err}");
        assert!(!err.to_string().contains(KEY));
    }
    // The same redirect from the user's own environment is theirs to make.
    let world = World::new();
    let cfg = world
        .config(&[("E2B_API_KEY", KEY), ("E2B_API_URL", "http://127.0.0.1:9")])
        .unwrap();
    assert!(crabbox_provider_e2b::E2bProvider::from_config(&cfg).is_ok());
    // A repository that restates the default is harmless.
    let world = World::new();
    write(
        world.cwd.path(),
        ".crabbox.yaml",
        "e2b:\n  domain: e2b.app\n  template: base\n",
    );
    let cfg = world.config(&[("E2B_API_KEY", KEY)]).unwrap();
    assert!(crabbox_provider_e2b::E2bProvider::from_config(&cfg).is_ok());
}

#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused() {
    let world = World::new();
    let err = world
        .provider_at("http://api.e2b.app", "", &[])
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    let err = world
        .provider_at("https://api.e2b.app", "http://10.1.2.3:49983", &[])
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsafe_workdir_or_user_is_refused_before_any_sandbox_exists() {
    let Some(emu) = common::emulator().await else {
        return;
    };
    let repo = RepoFixture::new();
    for (key, value) in [
        ("CRABBOX_E2B_WORKDIR", "/etc"),
        ("CRABBOX_E2B_WORKDIR", "../.."),
        ("CRABBOX_E2B_WORKDIR", "/usr/"),
        ("CRABBOX_E2B_USER", ".."),
        ("CRABBOX_E2B_USER", "a/b"),
    ] {
        let world = World::new();
        let p = world.provider(&emu, &[(key, value)]).unwrap();
        let mut out = CapturedOutput::default();
        let err = p
            .run(&request(&repo, None, &["true"]), &mut out, &SilentReporter)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 2, "{key}={value}: {err}");
        let err = p
            .warmup(&warm_req(&repo), &SilentReporter)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 2, "{key}={value}: {err}");
        assert!(world.claims().list().unwrap().0.is_empty());
    }
    assert!(raw_list(&emu).await.is_empty(), "no sandbox may be created");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_sync_sends_only_changes_and_keeps_build_outputs() {
    let Some((emu, world, p, repo, warm)) = leased(Warmed::Plain).await else {
        return;
    };

    let first = request(
        &repo,
        Some(&warm.lease_id),
        &["/bin/sh", "-c", "mkdir -p target node_modules/x && echo built > target/out && echo dep > node_modules/x/i.js"],
    );
    let mut out = CapturedOutput::default();
    let o = p.run(&first, &mut out, &SilentReporter).await.unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    let s = o.sync.unwrap();
    assert_eq!(
        s.sent_files,
        RepoFixture::expected_files().len() as u64,
        "first sync sends all"
    );

    // Unchanged tree: nothing is sent.
    let mut out = CapturedOutput::default();
    let o = p
        .run(
            &request(&repo, Some(&warm.lease_id), &["true"]),
            &mut out,
            &SilentReporter,
        )
        .await
        .unwrap();
    let s = o.sync.unwrap();
    assert_eq!((s.sent_files, s.deleted_files), (0, 0));

    // One edit, one new file, one deletion.
    edit(repo.root(), "tracked.txt", "edited\n");
    write(repo.root(), "src/new.txt", "new\n");
    std::fs::remove_file(repo.root().join("untracked.txt")).unwrap();
    let mut out = CapturedOutput::default();
    let o = p
        .run(
            &request(
                &repo,
                Some(&warm.slug),
                &["/bin/sh", "-c", "cat tracked.txt src/new.txt target/out node_modules/x/i.js; test -e untracked.txt && echo stale || echo removed"],
            ),
            &mut out,
            &SilentReporter,
        )
        .await
        .unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "edited\nnew\nbuilt\ndep\nremoved\n");
    let s = o.sync.unwrap();
    assert_eq!(s.sent_files, 2, "only the edited and the new file travel");
    assert_eq!(s.deleted_files, 1);
    assert_eq!(s.files, 5, "5 synced - 1 deleted + 1 new");

    // No sync archives are left in /tmp.
    let mut out = CapturedOutput::default();
    let mut req = request(
        &repo,
        Some(&warm.lease_id),
        &["/bin/sh", "-c", "ls /tmp | grep -c crabbox- || true"],
    );
    req.sync = None;
    p.run(&req, &mut out, &SilentReporter).await.unwrap();
    assert_eq!(
        out.stdout_str().trim(),
        "0",
        "remote archives must be removed"
    );

    p.stop(&StopRequest {
        id: warm.lease_id.clone(),
        reclaim: false,
    })
    .await
    .unwrap();
    assert!(world.claims().get(&warm.lease_id).unwrap().is_none());
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_refuses_a_sandbox_whose_metadata_does_not_match_the_claim() {
    let Some((emu, world, p, _repo, warm)) = leased(Warmed::Plain).await else {
        return;
    };
    let foreign = raw_create(&emu, BTreeMap::from([("owner", "someone-else")])).await;
    let foreign_id = foreign["sandboxID"].as_str().unwrap().to_string();

    // Point the claim at a sandbox crabbox did not make.
    let store = world.claims();
    let mut claim = store.get(&warm.lease_id).unwrap().unwrap();
    claim.remote_id = foreign_id.clone();
    store.write(&claim).unwrap();
    let err = p
        .stop(&StopRequest {
            id: warm.lease_id.clone(),
            reclaim: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(
        raw_exists(&emu, &foreign_id).await,
        "foreign sandbox must survive"
    );
    assert!(store.get(&warm.lease_id).unwrap().is_some(), "claim kept");
    let err = p
        .status(&StatusRequest {
            id: Some(warm.lease_id.clone()),
            wait: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "status checks ownership too: {err}");

    // A raw id of a non-crabbox sandbox is not usable either.
    let err = p
        .status(&StatusRequest {
            id: Some(foreign_id.clone()),
            wait: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4);
    let err = p
        .stop(&StopRequest {
            id: foreign_id.clone(),
            reclaim: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4);
    assert!(raw_exists(&emu, &foreign_id).await);

    // Restore and stop properly.
    claim.remote_id = warm.remote_id.clone();
    store.write(&claim).unwrap();
    p.stop(&StopRequest {
        id: warm.slug.clone(),
        reclaim: false,
    })
    .await
    .unwrap();
    assert!(!raw_exists(&emu, &warm.remote_id).await);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_of_a_vanished_sandbox_drops_the_claim() {
    let Some((emu, world, p, _repo, warm)) = leased(Warmed::Plain).await else {
        return;
    };
    raw_delete(&emu, &warm.remote_id).await;
    let o = p
        .stop(&StopRequest {
            id: warm.lease_id.clone(),
            reclaim: false,
        })
        .await
        .unwrap();
    assert!(o.already_gone);
    assert!(world.claims().get(&warm.lease_id).unwrap().is_none());
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reclaim_releases_a_crabbox_sandbox_whose_claim_was_lost() {
    let Some((emu, world, p, _repo, warm)) = leased(Warmed::Plain).await else {
        return;
    };
    world.claims().remove(&warm.lease_id).unwrap();

    let listed = p.list().await.unwrap();
    let entry = listed
        .iter()
        .find(|b| b.remote_id == warm.remote_id)
        .unwrap();
    assert!(!entry.claimed);
    assert_eq!(
        entry.lease_id, warm.lease_id,
        "lease comes from the metadata"
    );

    let err = p
        .stop(&StopRequest {
            id: warm.lease_id.clone(),
            reclaim: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4);
    assert_eq!(
        err.hints(),
        [&Hint::Reclaim {
            provider: "e2b".into(),
            id: warm.lease_id.clone()
        }],
        "{err}"
    );
    assert!(raw_exists(&emu, &warm.remote_id).await);

    let o = p
        .stop(&StopRequest {
            id: warm.lease_id.clone(),
            reclaim: true,
        })
        .await
        .unwrap();
    assert_eq!(o.lease_id, warm.lease_id);
    assert!(!raw_exists(&emu, &warm.remote_id).await);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_and_synthetic_sandbox_ids_reach_an_unclaimed_crabbox_sandbox() {
    let Some((emu, world, p, repo, warm)) = leased(Warmed::Plain).await else {
        return;
    };
    world.claims().remove(&warm.lease_id).unwrap();
    for id in [warm.remote_id.clone(), format!("e2b_{}", warm.remote_id)] {
        let st = p
            .status(&StatusRequest {
                id: Some(id.clone()),
                wait: None,
            })
            .await
            .unwrap();
        assert_eq!(st.lease_id, warm.lease_id);
        assert!(!st.claimed);
        let mut req = request(&repo, Some(&id), &["pwd"]);
        req.sync = None;
        let mut out = CapturedOutput::default();
        let o = p.run(&req, &mut out, &SilentReporter).await.unwrap();
        assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
        assert!(o.kept && !o.created);
    }
    // A canonical lease id never falls back to anything but its own claim.
    let err = p
        .status(&StatusRequest {
            id: Some(warm.lease_id.clone()),
            wait: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4);
    raw_delete(&emu, &warm.remote_id).await;
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_from_another_endpoint_is_never_used() {
    let Some((emu, world, p, _repo, warm)) = leased(Warmed::Plain).await else {
        return;
    };
    let store = world.claims();
    let mut claim = store.get(&warm.lease_id).unwrap().unwrap();
    claim.endpoint = "https://api.other.example".into();
    store.write(&claim).unwrap();
    let err = p
        .stop(&StopRequest {
            id: warm.lease_id.clone(),
            reclaim: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(raw_exists(&emu, &warm.remote_id).await);
    raw_delete(&emu, &warm.remote_id).await;
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_wait_times_out_on_a_paused_sandbox() {
    let Some((emu, _world, p, _repo, warm)) = leased(Warmed::Plain).await else {
        return;
    };
    let st = p
        .status(&StatusRequest {
            id: Some(warm.slug.clone()),
            wait: Some(Duration::from_secs(10)),
        })
        .await
        .unwrap();
    assert!(st.ready && st.claimed);
    let res = reqwest::Client::new()
        .post(format!(
            "{}/sandboxes/{}/pause",
            emu.api_url(),
            warm.remote_id
        ))
        .header("X-API-Key", KEY)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let err = p
        .status(&StatusRequest {
            id: Some(warm.slug.clone()),
            wait: Some(Duration::from_millis(800)),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WaitTimeout(_)), "{err}");
    assert_eq!(err.exit_code(), 5);
    p.stop(&StopRequest {
        id: warm.slug.clone(),
        reclaim: false,
    })
    .await
    .unwrap();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_is_capped_by_max_ttl_unless_raised() {
    let Some(emu) = common::emulator().await else {
        return;
    };
    let repo = RepoFixture::new();
    let lifetime = |b: &crabbox_core::engine::BoxStatus| {
        let parse = |s: &Option<String>| {
            time::OffsetDateTime::parse(
                s.as_deref().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        };
        (parse(&b.expires_at) - parse(&b.created_at)).whole_seconds()
    };
    let world = World::new();
    let p = world.provider(&emu, &[]).unwrap();
    let mut req = warm_req(&repo);
    req.ttl = Duration::from_secs(90 * 60);
    let warm = p.warmup(&req, &SilentReporter).await.unwrap();
    let st = p
        .status(&StatusRequest {
            id: Some(warm.lease_id.clone()),
            wait: None,
        })
        .await
        .unwrap();
    let secs = lifetime(&st);
    assert!((3590..=3600).contains(&secs), "90m clamps to 1h: {secs}");
    p.stop(&StopRequest {
        id: warm.lease_id.clone(),
        reclaim: false,
    })
    .await
    .unwrap();

    let p = world
        .provider(&emu, &[("CRABBOX_E2B_MAX_TTL", "30m")])
        .unwrap();
    let warm = p.warmup(&req, &SilentReporter).await.unwrap();
    let st = p
        .status(&StatusRequest {
            id: Some(warm.lease_id.clone()),
            wait: None,
        })
        .await
        .unwrap();
    let secs = lifetime(&st);
    assert!((1790..=1800).contains(&secs), "30m cap: {secs}");
    stop_and_shut_down(&p, &warm.lease_id, emu).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_carries_crabbox_tags() {
    let Some(emu) = common::emulator().await else {
        return;
    };
    let world = World::new();
    let p = world
        .provider(&emu, &[("CRABBOX_E2B_WORKDIR", "proj")])
        .unwrap();
    let repo = RepoFixture::new();
    let warm = p.warmup(&warm_req(&repo), &SilentReporter).await.unwrap();
    assert_eq!(warm.workdir, "/home/user/proj");
    let listed = raw_list(&emu).await;
    let meta = &listed[0]["metadata"];
    assert_eq!(meta["crabbox"], "true");
    assert_eq!(meta["provider"], "e2b");
    assert_eq!(meta["lease"], warm.lease_id.as_str());
    assert_eq!(meta["slug"], warm.slug.as_str());
    assert_eq!(meta["keep"], "true");
    assert_eq!(meta["template"], "base");
    assert_eq!(meta["workdir"], "_home_user_proj");
    for k in ["created_at", "expires_at", "repo"] {
        assert!(meta[k].as_str().is_some_and(|v| !v.is_empty()), "{k}");
    }
    let claim = world.claims().get(&warm.lease_id).unwrap().unwrap();
    assert_eq!(claim.endpoint, emu.api_url());
    assert_eq!(claim.remote_id, warm.remote_id);
    let claim_text =
        std::fs::read_to_string(world.claims().dir().join(format!("{}.json", warm.lease_id)))
            .unwrap();
    assert!(!claim_text.contains(KEY));
    stop_and_shut_down(&p, &warm.lease_id, emu).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_on_failure_prints_how_to_rerun_and_stop() {
    let Some(emu) = common::emulator().await else {
        return;
    };
    let world = World::new();
    let p = world.provider(&emu, &[]).unwrap();
    let repo = RepoFixture::new();
    let mut req = request(&repo, None, &["/bin/sh", "-c", "exit 3"]);
    req.keep = KeepPolicy::OnFailure;
    let rec = Recorder::default();
    let mut out = CapturedOutput::default();
    let o = p.run(&req, &mut out, &rec).await.unwrap();
    assert!(o.kept && o.created);
    assert_eq!(
        rec.hints(),
        [
            Hint::Rerun {
                provider: "e2b".into(),
                lease_id: o.lease_id.clone(),
                command: req.command.clone(),
            },
            Hint::Stop {
                provider: "e2b".into(),
                lease_id: o.lease_id.clone(),
            },
        ],
        "{}",
        rec.text()
    );
    stop_and_shut_down(&p, &o.lease_id, emu).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn env_travels_as_envs_and_signals_reach_the_remote_command() {
    let Some(emu) = common::emulator().await else {
        return;
    };
    let world = World::new();
    let p = world
        .provider(&emu, &[])
        .unwrap()
        .with_cancel_grace(Duration::from_secs(2));
    let repo = RepoFixture::new();
    let warm = p.warmup(&warm_req(&repo), &SilentReporter).await.unwrap();

    // A kept box survives the cancel, so what the command saw can be read afterwards.
    let mut req = request(
        &repo,
        Some(&warm.lease_id),
        &[
            "/bin/bash",
            "-c",
            "trap 'echo \"$SECRET_ISH\" > got-term; exit 0' TERM; echo started; sleep 30 & wait",
        ],
    );
    req.sync = None;
    req.env.insert("SECRET_ISH".into(), "from-env".into());
    // Cancelled once the command printed `started`: its TERM trap is set by then.
    let mut out = CancelOnOutput {
        out: CapturedOutput::default(),
        needle: "started",
        cancel: req.cancel.clone(),
    };
    let started = std::time::Instant::now();
    let res = p.run(&req, &mut out, &SilentReporter).await;
    assert!(matches!(res, Err(Error::Interrupted)), "{res:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.out.stdout_str().contains("started"));

    let mut req = request(&repo, Some(&warm.lease_id), &["cat", "got-term"]);
    req.sync = None;
    let mut out = CapturedOutput::default();
    let o = p.run(&req, &mut out, &SilentReporter).await.unwrap();
    assert_eq!(
        o.exit_code,
        0,
        "SIGTERM must reach the command: {}",
        out.stderr_str()
    );
    assert_eq!(out.stdout_str(), "from-env\n");
    stop_and_shut_down(&p, &warm.lease_id, emu).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_of_a_one_shot_run_deletes_its_sandbox() {
    let Some(emu) = common::emulator().await else {
        return;
    };
    let world = World::new();
    let p = world
        .provider(&emu, &[])
        .unwrap()
        .with_cancel_grace(Duration::from_millis(500));
    let repo = RepoFixture::new();
    // Ignores SIGTERM: only the SIGKILL after the grace ends it.
    let mut req = request(
        &repo,
        None,
        &["/bin/bash", "-c", "trap '' TERM; echo started; sleep 60"],
    );
    req.sync = None;
    // Cancelled once the command printed `started`: it is running and ignores SIGTERM.
    let mut out = CancelOnOutput {
        out: CapturedOutput::default(),
        needle: "started",
        cancel: req.cancel.clone(),
    };
    let started = std::time::Instant::now();
    let res = p.run(&req, &mut out, &SilentReporter).await;
    assert!(matches!(res, Err(Error::Interrupted)), "{res:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        raw_list(&emu).await.is_empty(),
        "cancelled one-shot sandbox must be deleted"
    );
    assert!(
        world.claims().list().unwrap().0.is_empty(),
        "and its claim dropped"
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_command_reports_128_plus_signal() {
    let Some(emu) = common::emulator().await else {
        return;
    };
    let world = World::new();
    let p = world.provider(&emu, &[]).unwrap();
    let repo = RepoFixture::new();
    let mut req = request(&repo, None, &["/bin/bash", "-c", "kill -KILL $$"]);
    req.sync = None;
    let mut out = CapturedOutput::default();
    let o = p.run(&req, &mut out, &SilentReporter).await.unwrap();
    assert_eq!(o.exit_code, 137);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_sync_resends_everything_when_the_workdir_vanished_on_the_box() {
    let Some((emu, _world, p, repo, warm)) = leased(Warmed::Plain).await else {
        return;
    };
    let mut out = CapturedOutput::default();
    p.run(
        &request(&repo, Some(&warm.lease_id), &["true"]),
        &mut out,
        &SilentReporter,
    )
    .await
    .unwrap();
    let mut req = request(
        &repo,
        Some(&warm.lease_id),
        &["/bin/sh", "-c", "rm -rf \"$PWD\""],
    );
    req.sync = None;
    p.run(&req, &mut out, &SilentReporter).await.unwrap();
    let mut out = CapturedOutput::default();
    let o = p
        .run(
            &request(&repo, Some(&warm.lease_id), &["cat", "tracked.txt"]),
            &mut out,
            &SilentReporter,
        )
        .await
        .unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(
        o.sync.unwrap().sent_files,
        RepoFixture::expected_files().len() as u64
    );
    assert_eq!(out.stdout_str(), "tracked\n");
    stop_and_shut_down(&p, &warm.lease_id, emu).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reclaim_by_a_slug_two_machines_share_is_refused() {
    let Some(emu) = common::emulator().await else {
        return;
    };
    let repo = RepoFixture::new();
    // Two machines pick the same slug; a third, with no claims, reclaims by it.
    let mut warm = Vec::new();
    for _ in 0..2 {
        let world = World::new();
        let p = world.provider(&emu, &[]).unwrap();
        let mut req = warm_req(&repo);
        req.slug = Some("blue-lobster".into());
        warm.push(p.warmup(&req, &SilentReporter).await.unwrap());
    }
    let third = World::new();
    let p = third.provider(&emu, &[]).unwrap();
    let err = p
        .stop(&StopRequest {
            id: "blue-lobster".into(),
            reclaim: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    let text = err.to_string();
    for w in &warm {
        assert!(text.contains(&w.remote_id), "{text}");
        assert!(raw_exists(&emu, &w.remote_id).await, "nothing is deleted");
    }
    assert!(text.contains("sandbox id or lease id"), "{text}");
    assert!(!text.contains("  "), "one line of prose: {text}");

    // Named exactly, each goes.
    let o = p
        .stop(&StopRequest {
            id: warm[0].remote_id.clone(),
            reclaim: true,
        })
        .await
        .unwrap();
    assert_eq!(o.lease_id, warm[0].lease_id);
    let o = p
        .stop(&StopRequest {
            id: warm[1].lease_id.clone(),
            reclaim: true,
        })
        .await
        .unwrap();
    assert_eq!(o.lease_id, warm[1].lease_id);
    assert!(raw_list(&emu).await.is_empty());
    emu.shutdown().await;
}

/// Cancels the run as soon as the sync archive is on the box (its upload finished).
struct CancelAfterUpload(tokio_util::sync::CancellationToken);

impl crabbox_core::events::Reporter for CancelAfterUpload {
    fn status(&self, _message: &str) {}
    fn finish_progress(&self) {
        self.0.cancel();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_warm_sync_leaves_no_archive_on_the_box() {
    let Some((emu, _world, p, repo, warm)) = leased(Warmed::Plain).await else {
        return;
    };
    let mut out = CapturedOutput::default();
    p.run(
        &request(&repo, Some(&warm.lease_id), &["true"]),
        &mut out,
        &SilentReporter,
    )
    .await
    .unwrap();

    // A warm sync with a change and a deletion, cancelled once the archive is uploaded.
    edit(repo.root(), "tracked.txt", "edited\n");
    std::fs::remove_file(repo.root().join("untracked.txt")).unwrap();
    let req = request(&repo, Some(&warm.lease_id), &["true"]);
    let started = std::time::Instant::now();
    let mut out = CapturedOutput::default();
    let err = p
        .run(&req, &mut out, &CancelAfterUpload(req.cancel.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Interrupted), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));

    // The kept box holds no upload or staging directory (the sync record beside the workdir
    // is the last completed sync's, and stays, as does the control directory of the watcher
    // that keeps watch of the tree between scans).
    let mut probe = request(
        &repo,
        Some(&warm.lease_id),
        &[
            "/bin/sh",
            "-c",
            "ls -a /tmp \"$(dirname \"$PWD\")\" | grep crabbox- | grep -v -e '^.crabbox.crabbox-synced$' -e '^.crabbox.crabbox-watch$' || true",
        ],
    );
    probe.sync = None;
    let mut out = CapturedOutput::default();
    let o = p.run(&probe, &mut out, &SilentReporter).await.unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "", "leftovers on the box");

    // The next sync still brings the box up to date.
    let mut out = CapturedOutput::default();
    let o = p
        .run(
            &request(
                &repo,
                Some(&warm.lease_id),
                &[
                    "/bin/sh",
                    "-c",
                    "cat tracked.txt; test -e untracked.txt && echo stale || echo removed",
                ],
            ),
            &mut out,
            &SilentReporter,
        )
        .await
        .unwrap();
    assert_eq!(
        out.stdout_str(),
        "edited\nremoved\n",
        "{}",
        out.stderr_str()
    );
    assert_eq!(o.exit_code, 0);
    stop_and_shut_down(&p, &warm.lease_id, emu).await;
}

/// Captures output and cancels the run once stdout contains `needle`.
struct CancelOnOutput {
    out: CapturedOutput,
    needle: &'static str,
    cancel: tokio_util::sync::CancellationToken,
}

impl crabbox_core::events::OutputSink for CancelOnOutput {
    fn stdout(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.out.stdout(chunk)?;
        if self.out.stdout_str().contains(self.needle) {
            self.cancel.cancel();
        }
        Ok(())
    }
    fn stderr(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.out.stderr(chunk)
    }
}

/// envd's SendSignal reaches only the command's own process: a cancel must also stop what
/// the command started, here a background loop that ignores SIGTERM, on a box that is kept.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_commands_background_children_on_a_kept_sandbox() {
    let Some(emu) = common::emulator().await else {
        return;
    };
    let world = World::new();
    let p = world
        .provider(&emu, &[])
        .unwrap()
        .with_cancel_grace(Duration::from_secs(1));
    let repo = RepoFixture::new();
    let warm = p.warmup(&warm_req(&repo), &SilentReporter).await.unwrap();

    let mut req = request(
        &repo,
        Some(&warm.lease_id),
        &[
            "sh",
            "-c",
            "(trap '' TERM; while :; do date +%s%N > beat; sleep 0.1; done) & echo started; wait",
        ],
    );
    req.sync = None;
    let mut out = CancelOnOutput {
        out: CapturedOutput::default(),
        needle: "started",
        cancel: req.cancel.clone(),
    };
    let started = std::time::Instant::now();
    let res = p.run(&req, &mut out, &SilentReporter).await;
    let cancel_took = started.elapsed();
    assert!(matches!(res, Err(Error::Interrupted)), "{res:?}");
    assert!(cancel_took < Duration::from_secs(30), "{cancel_took:?}");
    assert!(out.out.stdout_str().contains("started"));

    // The heartbeat must have stopped: the file no longer changes.
    let mut probe = request(
        &repo,
        Some(&warm.lease_id),
        &[
            "/bin/sh",
            "-c",
            "a=$(cat beat); sleep 1; b=$(cat beat); \
             if [ \"$a\" = \"$b\" ]; then echo stopped; else echo beating; fi",
        ],
    );
    probe.sync = None;
    let mut out = CapturedOutput::default();
    let o = p.run(&probe, &mut out, &SilentReporter).await.unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(
        out.stdout_str(),
        "stopped\n",
        "the command's background child outlived the cancel ({cancel_took:?})"
    );
    // Even so the sandbox goes on working.
    let mut again = request(&repo, Some(&warm.lease_id), &["echo", "ok"]);
    again.sync = None;
    let mut out = CapturedOutput::default();
    let o = p.run(&again, &mut out, &SilentReporter).await.unwrap();
    assert_eq!((o.exit_code, out.stdout_str().as_str()), (0, "ok\n"));
    stop_and_shut_down(&p, &warm.lease_id, emu).await;
}

/// A warm lease synced from `repo`, then read once more: the box's tree watcher is in place.
async fn watched_lease(
    p: &crabbox_core::engine::Engine,
    repo: &RepoFixture,
) -> crabbox_core::engine::BoxStatus {
    let warm = p.warmup(&warm_req(repo), &SilentReporter).await.unwrap();
    for _ in 0..2 {
        let mut out = CapturedOutput::default();
        let o = p
            .run(
                &request(repo, Some(&warm.lease_id), &["true"]),
                &mut out,
                &SilentReporter,
            )
            .await
            .unwrap();
        assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    }
    warm
}

/// Every process start on the box refused (a sync that needs none still lands).
fn no_process_starts() -> e2b_emulator::faults::Fault {
    use e2b_emulator::faults::{Fault, FaultAction, Plane};
    let refused = FaultAction::Status {
        status: 500,
        retry_after: None,
        message: Some("no process may start".into()),
    };
    Fault::new(Plane::Envd, "POST", "/process.Process/Start", refused).times(1000)
}

/// Every question to a tree's watcher (`p-`, made through envd's `MakeDir`) held until the
/// faults are cleared.
fn held_questions() -> e2b_emulator::faults::Fault {
    use e2b_emulator::faults::{Fault, FaultAction, Plane};
    let stall = FaultAction::Stall { ms: 600_000 };
    Fault::new(Plane::Envd, "POST", "/filesystem.Filesystem/MakeDir", stall)
        .with_body(".crabbox-watch/p-")
        .times(1000)
}

/// A small warm sync is applied by the tree's watcher on the box, without starting a
/// process: with every process start refused, an edit, a new file and a deletion still
/// reach the box, and the runs after it read the tree it left.
#[tokio::test(flavor = "multi_thread")]
async fn a_small_warm_sync_is_applied_without_a_process_on_the_box() {
    let Some((emu, _world, p, repo, warm)) = leased(Warmed::Watched).await else {
        return;
    };

    edit(repo.root(), "tracked.txt", "edited by the watcher\n");
    write(repo.root(), "src/also.txt", "new\n");
    std::fs::remove_file(repo.root().join("untracked.txt")).unwrap();
    emu.faults().add([no_process_starts()]);
    let mut req = request(&repo, Some(&warm.lease_id), &["true"]);
    req.extras.mode = crabbox_core::engine::RunMode::SyncOnly;
    let mut out = CapturedOutput::default();
    let o = p.run(&req, &mut out, &SilentReporter).await;
    let fired: u32 = emu.faults().list().iter().map(|f| f.fired).sum();
    emu.faults().clear();
    let o = o.unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    let s = o.sync.unwrap();
    assert_eq!((s.sent_files, s.deleted_files), (2, 1));
    assert_eq!(fired, 0, "no process was started for the sync");

    let mut out = CapturedOutput::default();
    let o = p
        .run(
            &request(
                &repo,
                Some(&warm.lease_id),
                &[
                    "/bin/sh",
                    "-c",
                    "cat tracked.txt src/also.txt; test -e untracked.txt && echo stale || echo removed; ls -a /tmp .. | grep crabbox- | grep -v -e '^.crabbox.crabbox-synced$' -e '^.crabbox.crabbox-watch$' || true",
                ],
            ),
            &mut out,
            &SilentReporter,
        )
        .await
        .unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(
        out.stdout_str(),
        "edited by the watcher\nnew\nremoved\n",
        "the box holds the edit, and nothing of the sync is left"
    );
    assert_eq!(o.sync.unwrap().sent_files, 0, "verified up to date");
    stop_and_shut_down(&p, &warm.lease_id, emu).await;
}

/// A command run on `lease`: its outcome and output.
async fn run_on(
    p: &crabbox_core::engine::Engine,
    repo: &RepoFixture,
    lease: &str,
    argv: &[&str],
) -> (
    crabbox_core::Result<crabbox_core::engine::RunOutcome>,
    CapturedOutput,
) {
    let mut out = CapturedOutput::default();
    let o = p
        .run(&request(repo, Some(lease), argv), &mut out, &SilentReporter)
        .await;
    (o, out)
}

/// Two small warm syncs to `lease` (watched), each with a `fault` armed: one planned from the
/// tree the watcher vouched for, one from a reading (a command changed the box first). Each
/// lands, its command seeing the edits, and the fault fired once each time.
async fn small_syncs_land_despite(
    emu: &e2b_emulator::EmulatorHandle,
    p: &crabbox_core::engine::Engine,
    repo: &RepoFixture,
    lease: &str,
    fault: impl Fn() -> e2b_emulator::faults::Fault,
) {
    let fired = || -> u32 { emu.faults().list().iter().map(|f| f.fired).sum() };
    edit(repo.root(), "tracked.txt", "edited\n");
    emu.faults().add([fault()]);
    let (o, out) = run_on(p, repo, lease, &["cat", "tracked.txt"]).await;
    assert_eq!(fired(), 1);
    emu.faults().clear();
    let o = o.unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "edited\n");
    assert_eq!(o.sync.unwrap().sent_files, 1);

    let clobber = ["/bin/sh", "-c", "echo clobbered > tracked.txt"];
    let (o, out) = run_on(p, repo, lease, &clobber).await;
    assert_eq!(o.unwrap().exit_code, 0, "{}", out.stderr_str());
    edit(repo.root(), "src/lib.txt", "edited too\n");
    emu.faults().add([fault()]);
    let (o, out) = run_on(p, repo, lease, &["cat", "tracked.txt", "src/lib.txt"]).await;
    assert_eq!(fired(), 1);
    emu.faults().clear();
    let o = o.unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "edited\nedited too\n");
    assert_eq!(o.sync.unwrap().sent_files, 2);
}

/// A small warm sync is uploaded with its request to the watcher as the upload's last file.
/// An upload whose answer is lost after envd wrote it all (the request with it) still lands,
/// applied once, by the watcher: its request is on the box, so its answer is awaited. One cut
/// before it reached the box fails with the transport's error, leaving the box's tree as it
/// was, and the next run sends it.
#[tokio::test(flavor = "multi_thread")]
async fn a_small_warm_sync_whose_upload_answer_is_lost_lands_once() {
    use e2b_emulator::faults::{Fault, FaultAction, Plane};
    let Some((emu, _world, p, repo, warm)) = leased(Warmed::Watched).await else {
        return;
    };
    let upload = |action| Fault::new(Plane::Envd, "POST", "/files", action);
    small_syncs_land_despite(&emu, &p, &repo, &warm.lease_id, || {
        upload(FaultAction::ResetAfter)
    })
    .await;

    // Cut before it reached the box: the run fails naming the sync, the tree is as it was.
    edit(repo.root(), "tracked.txt", "edited again\n");
    emu.faults().add([upload(FaultAction::ResetBefore)]);
    let (o, _) = run_on(&p, &repo, &warm.lease_id, &["cat", "tracked.txt"]).await;
    assert_eq!(emu.faults().list()[0].fired, 1);
    emu.faults().clear();
    let e = o.expect_err("a sync whose upload never arrived");
    assert!(e.to_string().contains("sync"), "{e}");
    let (o, out) = run_on(&p, &repo, &warm.lease_id, &["cat", "tracked.txt"]).await;
    let o = o.unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "edited again\n");
    assert_eq!(o.sync.unwrap().sent_files, 1);
    stop_and_shut_down(&p, &warm.lease_id, emu).await;
}

/// A warm run with an edit to send does not wait for the watcher's answer to whether the
/// tree is still the one the last sync left (every such question is held here): the sync is
/// applied only onto that tree, which the watcher checks as it applies it. A tree changed on
/// the box meanwhile is read and restored.
#[tokio::test(flavor = "multi_thread")]
async fn a_small_warm_sync_does_not_wait_for_the_question_before_it() {
    let Some((emu, _world, p, repo, warm)) = leased(Warmed::Watched).await else {
        return;
    };

    // Held far longer than the runs are given (30 s, where envd's call would give up and the
    // tree be read): each must go on without the answer.
    edit(repo.root(), "tracked.txt", "edited\n");
    // No process may start either: the tree is not read instead of waiting.
    emu.faults().add([held_questions(), no_process_starts()]);
    let mut req = request(&repo, Some(&warm.lease_id), &["true"]);
    req.extras.mode = crabbox_core::engine::RunMode::SyncOnly;
    let mut out = CapturedOutput::default();
    let o = tokio::time::timeout(
        Duration::from_secs(30),
        p.run(&req, &mut out, &SilentReporter),
    )
    .await
    .expect("the sync waited for the held question");
    emu.faults().clear();
    let o = o.unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(o.sync.unwrap().sent_files, 1);
    let (o, out) = run_on(&p, &repo, &warm.lease_id, &["cat", "tracked.txt"]).await;
    assert_eq!(o.unwrap().exit_code, 0, "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "edited\n");

    let clobber = ["/bin/sh", "-c", "echo clobbered > src/lib.txt"];
    let (o, out) = run_on(&p, &repo, &warm.lease_id, &clobber).await;
    assert_eq!(o.unwrap().exit_code, 0, "{}", out.stderr_str());
    edit(repo.root(), "tracked.txt", "edited again\n");
    emu.faults().add([held_questions()]);
    let argv = ["cat", "tracked.txt", "src/lib.txt"];
    let (o, out) = tokio::time::timeout(
        Duration::from_secs(30),
        run_on(&p, &repo, &warm.lease_id, &argv),
    )
    .await
    .expect("the sync waited for the held question");
    emu.faults().clear();
    let o = o.unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    let lib = std::fs::read_to_string(repo.root().join("src/lib.txt")).unwrap();
    assert_eq!(out.stdout_str(), format!("edited again\n{lib}"));
    assert_eq!(o.sync.unwrap().sent_files, 2);
    stop_and_shut_down(&p, &warm.lease_id, emu).await;
}

/// When the watcher's answer to a small sync cannot be read (here the first read of its state
/// after the upload fails), the sync still lands, applied once: planned from the tree the
/// watcher vouched for, it is claimed back (or, taken by the watcher already, its answer read
/// again), and a sync that was claimed back sends the run on to reading the box; planned from
/// a reading, the scripts claim it first and apply it, or leave it to the watcher that has it.
#[tokio::test(flavor = "multi_thread")]
async fn a_small_warm_sync_whose_answer_cannot_be_read_still_lands() {
    use e2b_emulator::faults::{Fault, FaultAction, Plane};
    let Some((emu, _world, p, repo, warm)) = leased(Warmed::Watched).await else {
        return;
    };
    // The first read of a file after the sync's upload (the watcher's state) is refused.
    let unread = || {
        Fault::new(
            Plane::Envd,
            "GET",
            "/files",
            FaultAction::Status {
                status: 500,
                retry_after: None,
                message: None,
            },
        )
        .after("POST /files")
    };
    small_syncs_land_despite(&emu, &p, &repo, &warm.lease_id, unread).await;
    stop_and_shut_down(&p, &warm.lease_id, emu).await;
}

/// A warm sync too large for the watcher to apply, planned from the tree the watcher vouched
/// for, is applied by the scripts only after the watcher says nothing changed since: here a
/// command of another workspace rewrites a synced file just before that question, so the run
/// reads the box and restores it.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_warm_sync_is_not_applied_onto_a_tree_changed_since_it_was_vouched_for() {
    let Some(emu) = common::emulator().await else {
        return;
    };
    let world = World::new();
    let p = std::sync::Arc::new(world.provider(&emu, &[]).unwrap());
    let repo = RepoFixture::new();
    let noise = |n: usize| (0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>();
    std::fs::write(repo.root().join("big.bin"), noise(2 << 20)).unwrap();
    let warm = watched_lease(&p, &repo).await;
    // 2 MiB that do not compress: more than the watcher applies.
    std::fs::write(repo.root().join("big.bin"), noise(2 << 20)).unwrap();
    // Every question to the watcher waits (held until the faults are cleared), the one before
    // the scripts apply among them, while another workspace's command rewrites a synced file
    // of the main tree. (The run's first question, before it planned, it may or may not make
    // and need: with something to send it goes on without its answer.)
    emu.faults().add([held_questions()]);
    let syncing = {
        let (p, req) = (
            p.clone(),
            request(&repo, Some(&warm.lease_id), &["cat", "tracked.txt"]),
        );
        tokio::spawn(async move {
            let mut out = CapturedOutput::default();
            let o = p.run(&req, &mut out, &SilentReporter).await;
            (o, out)
        })
    };
    while emu.faults().list().iter().map(|f| f.fired).sum::<u32>() == 0 {
        assert!(!syncing.is_finished(), "the sync never asked the watcher");
        tokio::task::yield_now().await;
    }
    let mut other = request(
        &repo,
        Some(&warm.lease_id),
        &[
            "/bin/sh",
            "-c",
            "echo clobbered > /home/user/crabbox/tracked.txt",
        ],
    );
    other.sync = None;
    other.extras.workspace = Some("other".into());
    let mut out = CapturedOutput::default();
    let o = p.run(&other, &mut out, &SilentReporter).await.unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert!(!syncing.is_finished(), "the question was held");
    emu.faults().clear();
    let (o, out) = syncing.await.unwrap();
    let o = o.unwrap();
    assert_eq!(o.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(
        out.stdout_str(),
        std::fs::read_to_string(repo.root().join("tracked.txt")).unwrap(),
        "the rewritten file is restored"
    );
    let s = o.sync.unwrap();
    assert_eq!(s.sent_files, 2, "the large file and the restored one");
    stop_and_shut_down(&p, &warm.lease_id, emu).await;
}
