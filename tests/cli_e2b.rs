//! End to end: the `crabbox` binary with `--provider e2b` against the local E2B emulator, in
//! temporary git repositories.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::*;

fn e2b_list(sb: &Sandbox) -> Vec<serde_json::Value> {
    let out = ok(sb.run(&["list", "--provider", "e2b", "--json"]));
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn the_documented_command_sequence_works() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let out = ok(sb.run(&["run", "--provider", "e2b", "--", "echo", "crabbox-e2b-ok"]));
    assert_eq!(out, "crabbox-e2b-ok\n");
    assert!(
        e2b_list(&sb).is_empty(),
        "one-shot run must leave no sandbox"
    );

    let lease = ok(sb.run(&["warmup", "--provider", "e2b", "--e2b-template", "base"]))
        .trim()
        .to_string();
    assert!(crabbox_core::lease::is_lease_id(&lease), "{lease}");
    let out = ok(sb.run(&["run", "--provider", "e2b", "--id", &lease, "--", "pwd"]));
    assert_eq!(out, "/home/user/crabbox\n");
    let st: serde_json::Value = serde_json::from_str(&ok(sb.run(&[
        "status",
        "--provider",
        "e2b",
        "--id",
        &lease,
        "--wait",
        "--json",
    ])))
    .unwrap();
    assert_eq!(st["ready"], true);
    assert_eq!(e2b_list(&sb).len(), 1);
    ok(sb.run(&["stop", "--provider", "e2b", &lease]));
    assert!(e2b_list(&sb).is_empty());
    assert!(sb.claims().is_empty());

    let out = ok(sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--e2b-workdir",
        "repo",
        "--",
        "pwd",
    ]));
    assert_eq!(out, "/home/user/repo\n");
    assert!(e2b_list(&sb).is_empty());
}

#[test]
fn synced_files_exit_code_and_split_streams() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let out = ok(sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--",
        "/bin/sh",
        "-c",
        "find . -type f | sed 's|^./||' | sort",
    ]));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        RepoFixture::expected_files()
    );
    let o = sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--",
        "/bin/sh",
        "-c",
        "echo out-line; echo err-line >&2; exit 7",
    ]);
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert_eq!(stdout(&o), "out-line\n");
    assert!(stderr(&o).contains("err-line\n"));
    assert!(e2b_list(&sb).is_empty());
}

#[test]
fn unsafe_workdir_and_user_exit_2_before_any_sandbox() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    for args in [
        vec![
            "run",
            "--provider",
            "e2b",
            "--e2b-workdir",
            "/etc",
            "--",
            "true",
        ],
        vec![
            "run",
            "--provider",
            "e2b",
            "--e2b-workdir",
            "/",
            "--",
            "true",
        ],
        vec![
            "run",
            "--provider",
            "e2b",
            "--e2b-user",
            "../root",
            "--",
            "true",
        ],
        vec!["warmup", "--provider", "e2b", "--e2b-user", "a/b"],
    ] {
        let o = sb.run(&args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
    assert!(e2b_list(&sb).is_empty(), "no sandbox may be created");
    assert!(sb.claims().is_empty());
}

#[test]
fn api_key_precedence_and_secrecy() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let wrong = "e2b_wrongwrongwrongwrong1234";
    // CRABBOX_E2B_API_KEY wins over E2B_API_KEY.
    let sb = emu
        .sandbox()
        .with_env("E2B_API_KEY", wrong)
        .with_env("CRABBOX_E2B_API_KEY", &emu.key);
    ok(sb.run(&["run", "--provider", "e2b", "--no-sync", "--", "true"]));
    let sb = emu.sandbox().with_env("CRABBOX_E2B_API_KEY", wrong);
    let o = sb.run(&["run", "--provider", "e2b", "--no-sync", "--", "true"]);
    assert_ne!(code(&o), 0);
    assert!(
        !stderr(&o).contains(wrong) && !stdout(&o).contains(wrong),
        "key echoed: {}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("wrongwrong"), "{}", stderr(&o));
}

#[test]
fn missing_key_exits_2_naming_the_variable() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = Sandbox::new()
        .with_env("E2B_API_URL", &emu.api_url)
        .with_env("E2B_SANDBOX_URL", &emu.sandbox_url);
    let o = sb.run(&["run", "--provider", "e2b", "--", "true"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("E2B_API_KEY"), "{}", stderr(&o));
}

#[test]
fn repository_config_may_not_redirect_an_inherited_key() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = Sandbox::new().with_env("E2B_API_KEY", &emu.key);
    std::fs::write(
        sb.root().join(".crabbox.yaml"),
        format!("provider: e2b\ne2b:\n  apiUrl: {}\n", emu.api_url),
    )
    .unwrap();
    let o = sb.run(&["run", "--", "true"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(!stderr(&o).contains(&emu.key));
}

#[test]
fn repository_config_cannot_forward_the_api_key_to_the_sandbox() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    // The provider needs the key in the caller's environment: exactly the case where a
    // repository's env.allow could hand it to the sandbox.
    let token = "ghp_planted_fake_token_e2b_0001";
    let sb = emu
        .sandbox()
        .with_env("CRABBOX_E2B_API_KEY", &emu.key)
        .with_env("GITHUB_TOKEN", token)
        .with_env("CI", "planted-ci");
    std::fs::write(
        sb.root().join(".crabbox.yaml"),
        "env:\n  allow: [E2B_API_KEY, CRABBOX_E2B_API_KEY, GITHUB_TOKEN, CI]\n",
    )
    .unwrap();
    let no_key = |o: &std::process::Output, what: &str| {
        assert!(
            !stdout(o).contains(&emu.key) && !stderr(o).contains(&emu.key),
            "{what}: the API key's value was shown"
        );
        assert!(
            !stderr(o).contains(token),
            "{what}: GITHUB_TOKEN's value was shown"
        );
    };

    let o = sb.run(&["run", "--provider", "e2b", "--no-sync", "--", "env", "-0"]);
    no_key(&o, "repository allow-list");
    ok_quiet(&o);
    let env = env_of(&o);
    let names: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(env.get("CI").map(String::as_str), Some("planted-ci"));
    for absent in ["E2B_API_KEY", "CRABBOX_E2B_API_KEY", "GITHUB_TOKEN"] {
        assert!(
            !env.contains_key(absent),
            "{absent} reached the sandbox; its env names: {names:?}"
        );
    }
    let err = stderr(&o);
    for refused in ["E2B_API_KEY", "CRABBOX_E2B_API_KEY"] {
        assert!(
            err.contains(&format!(
                "not forwarding {refused} to the box: it is crabbox's own credential"
            )),
            "{err}"
        );
    }
    assert!(
        err.contains("not forwarding GITHUB_TOKEN to the box: its name marks it secret"),
        "{err}"
    );

    let o = sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--no-sync",
        "--allow-env",
        "GITHUB_TOKEN",
        "--allow-env",
        "E2B_API_KEY",
        "--",
        "env",
        "-0",
    ]);
    no_key(&o, "--allow-env");
    ok_quiet(&o);
    let env = env_of(&o);
    assert!(
        env.get("GITHUB_TOKEN").map(String::as_str) == Some(token),
        "GITHUB_TOKEN did not arrive intact with --allow-env"
    );
    assert!(!env.contains_key("E2B_API_KEY") && !env.contains_key("CRABBOX_E2B_API_KEY"));
    assert!(e2b_list(&sb).is_empty());
}

#[test]
fn keep_on_failure_keeps_the_sandbox() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let o = sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--keep-on-failure",
        "--",
        "/bin/sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(code(&o), 3);
    assert!(stderr(&o).contains("crabbox stop"), "{}", stderr(&o));
    let boxes = e2b_list(&sb);
    assert_eq!(boxes.len(), 1);
    let lease = boxes[0]["leaseId"].as_str().unwrap().to_string();
    ok(sb.run(&["stop", "--provider", "e2b", &lease]));
    assert!(e2b_list(&sb).is_empty());
}

#[test]
fn ctrl_c_stops_the_remote_process_and_deletes_the_sandbox() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let token = format!("crabbox-ctrlc-{}", std::process::id());
    let script = format!("echo started; sleep 45 # {token}");
    let mut child = sb
        .cmd(&[
            "run",
            "--provider",
            "e2b",
            "--no-sync",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    assert!(
        !processes_mentioning(&token).is_empty(),
        "remote command should be running"
    );
    let t = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(
        survivors_after_grace(&token).is_empty(),
        "remote process survived Ctrl-C"
    );
    assert!(e2b_list(&sb).is_empty(), "sandbox must be deleted");
    assert!(sb.claims().is_empty());
}

#[test]
fn class_flag_is_refused_for_e2b() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let o = sb.run(&["run", "--provider", "e2b", "--class", "large", "--", "true"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--e2b-template"), "{}", stderr(&o));
}

#[test]
fn id_accepts_slug_sandbox_id_and_synthetic_id_and_reclaim_releases_unclaimed() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let warm: serde_json::Value =
        serde_json::from_str(&ok(sb.run(&["warmup", "--provider", "e2b", "--json"]))).unwrap();
    let slug = warm["slug"].as_str().unwrap().to_string();
    let sandbox = warm["remoteId"].as_str().unwrap().to_string();
    let synthetic = format!("e2b_{sandbox}");
    for id in [&slug, &sandbox, &synthetic] {
        let out = ok(sb.run(&[
            "run",
            "--provider",
            "e2b",
            "--no-sync",
            "--id",
            id,
            "--",
            "echo",
            "same-box",
        ]));
        assert_eq!(out, "same-box\n", "--id {id}");
    }
    // Lose the claim: the sandbox is still crabbox's, but this machine no longer holds it.
    for entry in std::fs::read_dir(sb.claims_dir()).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let listed = e2b_list(&sb);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["claimed"], false);
    let o = sb.run(&["stop", "--provider", "e2b", "--reclaim", &sandbox]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(e2b_list(&sb).is_empty());
}

/// The API key never appears anywhere crabbox writes: stdout, stderr, claims, state files,
/// across every command, succeeding and failing, with the key's tail and encodings too.
#[test]
fn the_api_key_appears_in_no_output_and_no_state_file() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox().with_env("CRABBOX_PROVIDER", "e2b");
    let tail = emu.key.trim_start_matches("e2b_").to_string();
    let mut outputs = Vec::new();
    let lease = ok(sb.run(&["warmup"])).trim().to_string();
    for args in [
        vec!["run", "--", "true"],
        vec![
            "run",
            "--id",
            &lease,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        vec![
            "run",
            "--id",
            &lease,
            "--timing-json",
            "--checksum",
            "--",
            "true",
        ],
        vec!["run", "--keep-on-failure", "--", "false"],
        vec!["status", "--id", &lease, "--json"],
        vec!["list", "--json"],
        vec!["config", "show", "--json"],
        vec!["run", "--id", "nope", "--", "true"],
        vec!["stop", "--reclaim", "no-such-sandbox"],
        vec!["cleanup", "--json"],
        vec!["cleanup", "--yes"],
        vec!["pause", &lease, "--json"],
        vec!["resume", &lease, "--json"],
        vec!["snapshot", &lease, "--json"],
        vec!["snapshot", "list", "--json"],
        vec!["fork", &lease, "--count", "1", "--json"],
        vec!["url", &lease, "8080", "--json"],
        vec!["usage", "--json"],
        vec!["pause", "no-such-lease"],
    ] {
        outputs.push(sb.run(&args));
    }
    for lease in sb
        .claims()
        .iter()
        .map(|c| c["leaseId"].as_str().unwrap().to_string())
    {
        outputs.push(sb.run(&["stop", &lease]));
    }
    for o in &outputs {
        for text in [stdout(o), stderr(o)] {
            assert!(!text.contains(&tail), "the key leaked: {text}");
        }
    }
    let mut files = vec![sb.state.clone()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            let leaked = bytes.windows(tail.len()).any(|w| w == tail.as_bytes());
            assert!(!leaked, "the key is in {}", p.display());
        }
    }
    assert!(e2b_list(&sb).is_empty(), "nothing left running");
}

fn doctor_checks(o: &std::process::Output) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&stdout(o))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(o), stderr(o)));
    v["checks"].as_array().unwrap().clone()
}

fn check<'a>(checks: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
}

/// `doctor` passes against a working E2B, says where the key came from without showing it,
/// and checks the endpoints and the template.
#[test]
fn doctor_passes_against_the_emulator_and_never_shows_the_key() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox().with_env("CRABBOX_PROVIDER", "e2b");
    let o = sb.run(&["doctor", "--json"]);
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let checks = doctor_checks(&o);
    assert!(checks.iter().all(|c| c["status"] != "fail"), "{checks:?}");
    assert!(check(&checks, "e2b.apiKey")["detail"]
        .as_str()
        .unwrap()
        .contains("E2B_API_KEY"));
    assert_eq!(check(&checks, "e2b.apiUrl")["status"], "pass");
    assert_eq!(check(&checks, "e2b.sandboxUrl")["status"], "pass");
    assert_eq!(check(&checks, "e2b.template")["status"], "pass");
    assert_eq!(check(&checks, "workdir")["status"], "pass");
    let text = sb.run(&["doctor"]);
    assert_eq!(code(&text), 0);
    assert!(
        stdout(&text).contains("every check passed"),
        "{}",
        stdout(&text)
    );
    assert_no_secret(
        &emu.key,
        &[&stdout(&o), &stderr(&o), &stdout(&text)],
        &sb.state,
    );
    assert!(e2b_list(&sb).is_empty(), "doctor makes no sandbox");
}

/// Each failing check exits 1 and names its fix: an unknown template, a missing key, an
/// endpoint that does not answer, a rejected key, a workdir the rules refuse.
#[test]
fn doctor_fails_naming_the_fix() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu
        .sandbox()
        .with_env("CRABBOX_PROVIDER", "e2b")
        .with_env("CRABBOX_E2B_RETRY_MAX_WAIT", "50ms");
    let fails = |args: &[&str], sb: &Sandbox, name: &str, fix: &str| {
        let o = sb.run(args);
        assert_eq!(code(&o), 1, "{args:?}: {}\n{}", stdout(&o), stderr(&o));
        let checks = doctor_checks(&o);
        let c = check(&checks, name);
        assert_eq!(c["status"], "fail", "{args:?}: {c}");
        let said = format!("{} {}", c["detail"], c["fix"]);
        assert!(said.contains(fix), "{args:?}: {c}");
        assert_no_secret(&emu.key, &[&stdout(&o), &stderr(&o)], &sb.state);
    };
    fails(
        &["doctor", "--json", "--e2b-template", "no-such-template"],
        &sb,
        "e2b.template",
        "--e2b-template",
    );
    fails(
        &["doctor", "--json", "--e2b-workdir", "/etc"],
        &sb,
        "workdir",
        "/etc",
    );
    let unreachable = sb.env.clone();
    let mut dead = Sandbox::new();
    dead.env = unreachable;
    // A port nothing listens on (the emulator's own, after it is gone, could be reused).
    let dead = dead
        .with_env("E2B_API_URL", "http://127.0.0.1:9")
        .with_env("E2B_SANDBOX_URL", "http://127.0.0.1:9");
    fails(&["doctor", "--json"], &dead, "e2b.apiUrl", "E2B_API_URL");
    let o = dead.run(&["doctor", "--json"]);
    assert_eq!(check(&doctor_checks(&o), "e2b.template")["status"], "skip");

    // Plain http to anything but loopback is refused before any request: the key would
    // travel in clear.
    let mut clear = Sandbox::new();
    clear.env = sb.env.clone();
    let clear = clear.with_env("E2B_API_URL", "http://api.e2b.example");
    fails(&["doctor", "--json"], &clear, "provider", "https");

    let no_key = Sandbox::new()
        .with_env("CRABBOX_PROVIDER", "e2b")
        .with_env("E2B_API_URL", &emu.api_url);
    fails(&["doctor", "--json"], &no_key, "provider", "E2B_API_KEY");
    let wrong_key = emu
        .sandbox()
        .with_env("CRABBOX_PROVIDER", "e2b")
        .with_env("CRABBOX_E2B_API_KEY", "e2b_wrongwrongwrong0000");
    fails(
        &["doctor", "--json"],
        &wrong_key,
        "e2b.apiKey",
        "E2B_API_KEY",
    );
}
