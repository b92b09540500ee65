//! End to end: the `crabbox` binary with the local provider, in temporary git repositories.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn run_syncs_tracked_and_untracked_but_not_ignored_or_deleted() {
    let sb = Sandbox::new();
    let out = ok(sb.run(&[
        "run",
        "--",
        "/bin/sh",
        "-c",
        "find . -type f | sed 's|^./||' | sort",
    ]));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        RepoFixture::expected_files()
    );
}

#[test]
fn exit_code_and_split_streams_pass_through() {
    let sb = Sandbox::new();
    let o = sb.run(&[
        "run",
        "--",
        "/bin/sh",
        "-c",
        "echo out-line; echo err-line >&2; exit 7",
    ]);
    assert_eq!(code(&o), 7);
    assert_eq!(stdout(&o), "out-line\n");
    let err = stderr(&o);
    assert!(err.contains("err-line\n"), "{err}");
    assert!(
        !stdout(&o).contains("crabbox:"),
        "status lines must stay off stdout"
    );
    assert!(sb.claims().is_empty(), "one-shot run must leave no claim");
    let boxes = std::fs::read_dir(sb.state.join("crabbox/boxes"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(boxes, 0, "one-shot run must remove its box");
}

#[test]
fn warm_reuse_keeps_build_outputs_and_stop_releases() {
    let sb = Sandbox::new();
    let lease = ok(sb.run(&["warmup"])).trim().to_string();
    assert!(crabbox_core::lease::is_lease_id(&lease), "{lease}");
    ok(sb.run(&[
        "run",
        "--id",
        &lease,
        "--",
        "/bin/sh",
        "-c",
        "mkdir -p target && echo cached > target/dep",
    ]));
    std::fs::write(sb.root().join("tracked.txt"), "edited\n").unwrap();
    let out = ok(sb.run(&[
        "run",
        "--id",
        &lease,
        "--",
        "cat",
        "target/dep",
        "tracked.txt",
    ]));
    assert_eq!(out, "cached\nedited\n");

    let list: serde_json::Value = serde_json::from_str(&ok(sb.run(&["list", "--json"]))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["leaseId"], lease.as_str());
    let st: serde_json::Value =
        serde_json::from_str(&ok(sb.run(&["status", "--id", &lease, "--wait", "--json"]))).unwrap();
    assert_eq!(st["ready"], true);

    let slug = st["slug"].as_str().unwrap().to_string();
    ok(sb.run(&["stop", "--id", &slug]));
    assert!(sb.claims().is_empty());
    let o = sb.run(&["status", "--id", &lease]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
}

#[test]
fn stop_of_unknown_lease_exits_4_naming_it() {
    let sb = Sandbox::new();
    let o = sb.run(&["stop", "cbx_0123456789ab"]);
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("cbx_0123456789ab"), "{}", stderr(&o));
}

#[test]
fn bad_yaml_exits_2_naming_the_file_and_line() {
    let sb = Sandbox::new();
    std::fs::write(
        sb.root().join(".crabbox.yaml"),
        "provider: local\nsync:\n  exclude: [oops\n",
    )
    .unwrap();
    let o = sb.run(&["run", "--", "true"]);
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert!(err.contains(".crabbox.yaml:"), "{err}");
}

#[test]
fn unknown_config_key_warns() {
    let sb = Sandbox::new();
    std::fs::write(sb.root().join("crabbox.yaml"), "provder: local\n").unwrap();
    let o = sb.run(&["run", "--", "true"]);
    assert_eq!(code(&o), 0);
    assert!(
        stderr(&o).contains("unknown key `provder`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn twenty_concurrent_warmups_leave_twenty_distinct_claims() {
    let sb = Sandbox::new();
    let children: Vec<_> = (0..20)
        .map(|_| {
            sb.cmd(&["warmup"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut leases = std::collections::HashSet::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        leases.insert(ok(o).trim().to_string());
    }
    assert_eq!(leases.len(), 20);
    let claims = sb.claims();
    assert_eq!(claims.len(), 20);
    let slugs: std::collections::HashSet<_> = claims
        .iter()
        .map(|c| c["slug"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(slugs.len(), 20, "slugs must be distinct");
    for c in &claims {
        assert!(leases.contains(c["leaseId"].as_str().unwrap()));
    }
}

#[test]
fn keep_on_failure_keeps_the_box_and_says_how_to_stop_it() {
    let sb = Sandbox::new();
    let o = sb.run(&["run", "--keep-on-failure", "--", "false"]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains("crabbox stop"), "{err}");
    assert_eq!(sb.claims().len(), 1);
}

#[test]
fn shell_flag_runs_shell_source() {
    let sb = Sandbox::new();
    let out = ok(sb.run(&[
        "run",
        "--shell",
        "--no-sync",
        "--",
        "echo a && echo b | tr b B",
    ]));
    assert_eq!(out, "a\nB\n");
}

#[test]
fn machine_class_flag_is_refused_with_exit_2() {
    let sb = Sandbox::new();
    let o = sb.run(&["run", "--class", "big", "--", "true"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--class"));
    assert!(sb.claims().is_empty(), "no box before refusing");
}

#[test]
fn timing_json_is_one_json_line_on_stderr() {
    let sb = Sandbox::new();
    let o = sb.run(&["run", "--timing-json", "--", "true"]);
    let line = stderr(&o)
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("timing line")
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["exitCode"], 0);
    assert!(v["totalMs"].is_u64());
}

#[test]
fn non_git_directory_is_synced_by_walking() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep.txt"), "k").unwrap();
    std::fs::write(dir.path().join(".gitignore"), "skip.txt\n").unwrap();
    std::fs::write(dir.path().join("skip.txt"), "s").unwrap();
    let sb = Sandbox::new();
    let out = ok(sb
        .cmd(&["run", "--", "ls", "-A"])
        .current_dir(dir.path())
        .output()
        .unwrap());
    assert_eq!(out, ".gitignore\nkeep.txt\n");
}

#[test]
fn config_show_names_origins_and_masks_secrets() {
    let sb = Sandbox::new()
        .with_env("E2B_API_KEY", "e2b_supersecret")
        .with_env("CRABBOX_TTL", "20m");
    let out = ok(sb.run(&["config", "show"]));
    assert!(!out.contains("supersecret"), "{out}");
    assert!(out.contains("environment CRABBOX_TTL"), "{out}");
    assert!(out.contains("environment E2B_API_KEY"), "{out}");
}

#[test]
fn ctrl_c_stops_the_command_and_removes_the_box() {
    let sb = Sandbox::new();
    let marker = sb.state.join("should-not-exist");
    // A background subshell (same command line, so findable) that outlives its parent unless
    // the whole process group is killed.
    let script = format!(
        "(sleep 20; touch {}) & echo started; wait",
        marker.display()
    );
    let mut child = sb
        .cmd(&["run", "--", "/bin/sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    let t = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(t.elapsed() < Duration::from_secs(15));
    let left = survivors_after_grace(&marker.display().to_string());
    assert!(
        left.is_empty(),
        "remote command still running after Ctrl-C: {left:?}"
    );
    assert!(!marker.exists());
    assert!(
        sb.claims().is_empty(),
        "interrupted one-shot run must drop its claim"
    );
}

#[test]
fn completions_are_generated() {
    let sb = Sandbox::new();
    let out = ok(sb.run(&["completions", "bash"]));
    assert!(out.contains("crabbox"));
}

/// Starts `crabbox run` of a SIGTERM-ignoring command tagged with `token`; returns once the
/// command printed `started`.
fn start_stubborn(sb: &Sandbox, token: &str) -> std::process::Child {
    let script = format!("trap '' TERM; echo started; while :; do sleep 0.2; done # {token}");
    let mut child = sb
        .cmd(&["run", "--no-sync", "--", "/bin/sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    child
}

#[test]
fn sigterm_is_handled_like_ctrl_c() {
    let sb = Sandbox::new();
    let token = format!("crabbox-sigterm-{}", std::process::id());
    let mut child = start_stubborn(&sb, &token);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(
        survivors_after_grace(&token).is_empty(),
        "command survived SIGTERM to crabbox"
    );
    assert!(sb.claims().is_empty());
}

#[test]
fn second_ctrl_c_exits_at_once() {
    let sb = Sandbox::new();
    let token = format!("crabbox-twice-{}", std::process::id());
    let mut child = start_stubborn(&sb, &token);
    let mut status_lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // The second Ctrl-C goes once crabbox has taken the first (two signals sent together may
    // arrive as one).
    loop {
        let line = status_lines
            .next()
            .expect("crabbox exited without reporting the first Ctrl-C")
            .unwrap();
        if line.contains("interrupted: stopping") {
            break;
        }
    }
    let t = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    // The first Ctrl-C's cleanup waits out a 3 s grace for this command; the second skips it
    // (the bound leaves a loaded machine room, and is still well short of the grace).
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "second Ctrl-C took {:?}",
        t.elapsed()
    );
    for pid in processes_mentioning(&token) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

#[test]
fn claims_are_private_and_leave_no_temp_files() {
    let sb = Sandbox::new();
    ok(sb.run(&["warmup"]));
    ok(sb.run(&["warmup"]));
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(sb.claims_dir()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "leftover temp file {name}");
        if name.ends_with(".json") {
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600,
                "{name}"
            );
        }
    }
}

#[test]
fn corrupt_claim_is_reported_with_its_path_and_kept() {
    let sb = Sandbox::new();
    let lease = ok(sb.run(&["warmup"])).trim().to_string();
    let bad = sb.claims_dir().join("cbx_badbadbadbad.json");
    std::fs::write(&bad, "{truncated").unwrap();
    let o = sb.run(&["list", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&bad.display().to_string()),
        "{}",
        stderr(&o)
    );
    let list: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["leaseId"], lease.as_str());
    assert!(bad.exists(), "a corrupt claim must never be deleted");
}

#[test]
fn sync_delete_false_keeps_files_removed_locally() {
    let sb = Sandbox::new();
    std::fs::write(sb.root().join(".crabbox.yaml"), "sync:\n  delete: false\n").unwrap();
    let lease = ok(sb.run(&["warmup"])).trim().to_string();
    ok(sb.run(&["run", "--id", &lease, "--", "true"]));
    std::fs::remove_file(sb.root().join("untracked.txt")).unwrap();
    let out = ok(sb.run(&["run", "--id", &lease, "--", "cat", "untracked.txt"]));
    assert_eq!(
        out, "untracked\n",
        "sync.delete=false must not delete remotely"
    );
    std::fs::write(sb.root().join(".crabbox.yaml"), "sync:\n  delete: true\n").unwrap();
    std::fs::remove_file(sb.root().join("src/lib.txt")).unwrap();
    let o = sb.run(&["run", "--id", &lease, "--", "test", "-e", "src/lib.txt"]);
    assert_eq!(
        code(&o),
        1,
        "sync.delete=true must delete a file removed locally"
    );
}

#[test]
fn status_without_id_uses_the_only_lease_or_asks_for_one() {
    let sb = Sandbox::new();
    let o = sb.run(&["status"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    let first = ok(sb.run(&["warmup"])).trim().to_string();
    let st: serde_json::Value = serde_json::from_str(&ok(sb.run(&["status", "--json"]))).unwrap();
    assert_eq!(st["leaseId"], first.as_str());
    let second = ok(sb.run(&["warmup"])).trim().to_string();
    let o = sb.run(&["status"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains(&first) && stderr(&o).contains(&second),
        "{}",
        stderr(&o)
    );
}

/// Values planted in the caller's environment; fake, but handled as secrets would be: the
/// assertions below name variables and never print their values.
const PLANTED: &[(&str, &str)] = &[
    ("E2B_API_KEY", "e2b_planted_fake_key_0001"),
    ("CRABBOX_E2B_API_KEY", "e2b_planted_fake_key_0002"),
    ("GITHUB_TOKEN", "ghp_planted_fake_token_0003"),
    ("AWS_SECRET_ACCESS_KEY", "aws_planted_fake_secret_0004"),
    ("DB_PASSWORD", "planted_fake_password_0005"),
    ("LEAKME", "planted_leak_0006"),
    ("SSH_AUTH_SOCK", "/tmp/planted-agent-0007"),
    ("FOO", "planted_foo_0008"),
    ("CI", "planted_ci_0009"),
    ("NODE_OPTIONS", "--planted-node-options-0010"),
];

fn planted_sandbox() -> Sandbox {
    PLANTED
        .iter()
        .fold(Sandbox::new(), |sb, (k, v)| sb.with_env(k, v))
}

fn planted(name: &str) -> &'static str {
    PLANTED.iter().find(|(k, _)| *k == name).unwrap().1
}

/// Asserts `text` holds none of the planted values, naming the variable (not the value).
fn assert_no_planted_value(text: &str, except: &[&str], what: &str) {
    for (name, value) in PLANTED {
        if !except.contains(name) {
            assert!(!text.contains(value), "{what} holds the value of {name}");
        }
    }
}

#[test]
fn repository_config_cannot_forward_secrets() {
    let sb = planted_sandbox();
    std::fs::write(
        sb.root().join(".crabbox.yaml"),
        "env:\n  allow: [E2B_API_KEY, GITHUB_TOKEN, CI]\n",
    )
    .unwrap();

    let o = sb.run(&["run", "--no-sync", "--", "env", "-0"]);
    let err = stderr(&o);
    assert_no_planted_value(&err, &[], "crabbox's stderr");
    ok_quiet(&o);
    let env = env_of(&o);
    let names: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(env.get("CI").map(String::as_str), Some(planted("CI")));
    for absent in ["E2B_API_KEY", "GITHUB_TOKEN", "LEAKME", "NODE_OPTIONS"] {
        assert!(
            !env.contains_key(absent),
            "{absent} reached the box; box env names: {names:?}"
        );
    }
    assert_no_planted_value(&stdout(&o), &["CI"], "the box's environment");
    assert!(
        err.contains("not forwarding E2B_API_KEY to the box: it is crabbox's own credential"),
        "{err}"
    );
    assert!(
        err.contains("not forwarding GITHUB_TOKEN to the box: its name marks it secret")
            && err.contains(".crabbox.yaml"),
        "{err}"
    );
    assert!(
        !err.contains("LEAKME") && !err.contains("not forwarding CI"),
        "{err}"
    );

    let o = sb.run(&[
        "run",
        "--no-sync",
        "--allow-env",
        "GITHUB_TOKEN",
        "--allow-env",
        "E2B_API_KEY",
        "--",
        "env",
        "-0",
    ]);
    let err = stderr(&o);
    assert_no_planted_value(&err, &[], "crabbox's stderr");
    ok_quiet(&o);
    let env = env_of(&o);
    assert!(
        env.get("GITHUB_TOKEN").map(String::as_str) == Some(planted("GITHUB_TOKEN")),
        "GITHUB_TOKEN did not arrive intact with --allow-env"
    );
    assert!(
        !env.contains_key("E2B_API_KEY"),
        "--allow-env must not forward crabbox's own credential"
    );
    assert!(err.contains("not forwarding E2B_API_KEY"), "{err}");
    assert!(!err.contains("GITHUB_TOKEN"), "{err}");
}

/// The names a bare login shell on this machine has when started with only the variables a
/// local box always gets (`BASE_ENV` in provider-local): profile scripts may export their own
/// (pyenv, for one), and those are the machine's, not the caller's.
fn login_shell_names() -> std::collections::BTreeSet<String> {
    let mut c = std::process::Command::new("/bin/bash");
    c.args(["-l", "-c", "env -0"]).env_clear();
    for k in ["PATH", "HOME", "USER", "LANG", "TERM"] {
        if let Ok(v) = std::env::var(k) {
            c.env(k, v);
        }
    }
    let o = c.output().unwrap();
    ok_quiet(&o);
    env_of(&o).into_keys().collect()
}

#[test]
fn the_box_sees_exactly_the_allow_list_and_the_base_variables() {
    let sb = planted_sandbox();
    std::fs::write(
        sb.root().join(".crabbox.yaml"),
        "env:\n  allow: [CI, FOO, GITHUB_TOKEN, E2B_API_KEY, DB_PASSWORD]\n",
    )
    .unwrap();
    let o = sb.run(&["run", "--no-sync", "--", "env", "-0"]);
    ok_quiet(&o);
    // bash sets these itself (and `_` is the last command): not the caller's.
    let bash_own = ["PWD", "OLDPWD", "SHLVL", "_"];
    let got: std::collections::BTreeSet<String> = env_of(&o)
        .into_keys()
        .filter(|k| !bash_own.contains(&k.as_str()))
        .collect();
    let baseline = login_shell_names();
    for (name, _) in PLANTED {
        assert!(
            !baseline.contains(*name),
            "this machine's login shell sets {name}; the test cannot tell"
        );
    }
    let mut want: std::collections::BTreeSet<String> = baseline
        .into_iter()
        .filter(|k| !bash_own.contains(&k.as_str()))
        .collect();
    // The repository list replaced the default [CI, NODE_OPTIONS]; its secret names are refused.
    // CRABBOX_RUN_ID is the run's own (how a cancel finds every process of the run).
    want.extend([
        "CI".to_string(),
        "FOO".to_string(),
        "CRABBOX_RUN_ID".to_string(),
    ]);
    for base in ["PATH", "HOME"] {
        assert!(want.contains(base), "{base} is missing from the baseline");
    }
    assert_eq!(got, want, "the box's environment names");
    assert_no_planted_value(&stdout(&o), &["CI", "FOO"], "the box's environment");
}

/// `cat` of the generated files, hashed, as a command sees them (in `dir`, or on the box).
const TREE_DIGEST: &str = "LC_ALL=C; cat gen/f*.txt | sha256sum | cut -c1-16";

fn local_digest(dir: &std::path::Path) -> String {
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", TREE_DIGEST])
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn concurrent_runs_on_one_lease_never_mix_trees_and_all_succeed() {
    let sb = Sandbox::new();
    let gen = sb.root().join("gen");
    std::fs::create_dir_all(&gen).unwrap();
    for i in 0..300 {
        std::fs::write(gen.join(format!("f{i}.txt")), format!("A{i}\n")).unwrap();
    }
    // A second checkout of the same repository with every file edited.
    let other = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", sb.root().display()))
        .arg(other.path())
        .status()
        .unwrap();
    assert!(status.success());
    for i in 0..300 {
        std::fs::write(
            other.path().join(format!("gen/f{i}.txt")),
            format!("B{i}\n"),
        )
        .unwrap();
    }
    let (a, b) = (local_digest(sb.root()), local_digest(other.path()));
    assert_ne!(a, b);

    let lease = ok(sb.run(&["warmup"])).trim().to_string();
    // Many first syncs at once: every one succeeds (no clashing hard links or state files).
    let many: Vec<_> = (0..8)
        .map(|_| {
            sb.cmd(&["run", "--id", &lease, "--shell", "--", TREE_DIGEST])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in many {
        let o = child.wait_with_output().unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert_eq!(stdout(&o).trim(), a);
    }
    // Two checkouts with different edits at once: each command sees one whole tree.
    let runs: Vec<_> = [sb.root(), other.path()]
        .into_iter()
        .map(|dir| {
            sb.cmd(&["run", "--id", &lease, "--shell", "--", TREE_DIGEST])
                .current_dir(dir)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in runs {
        let o = child.wait_with_output().unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let seen = stdout(&o).trim().to_string();
        assert!(
            seen == a || seen == b,
            "a command saw a mix of trees: {seen}"
        );
    }
    let after = ok(sb.run(&[
        "run",
        "--id",
        &lease,
        "--no-sync",
        "--shell",
        "--",
        TREE_DIGEST,
    ]));
    assert!(
        after.trim() == a || after.trim() == b,
        "the box holds a mix of trees: {after}"
    );
    ok(sb.run(&["stop", &lease]));
}

#[test]
fn cleanup_is_a_dry_run_until_yes_and_drops_claims_whose_box_is_gone() {
    let sb = Sandbox::new();
    let o = sb.run(&["cleanup"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing to clean up"), "{}", stderr(&o));
    let lease = ok(sb.run(&["warmup"])).trim().to_string();
    std::fs::remove_dir_all(sb.state.join("crabbox/boxes").join(&lease)).unwrap();
    let o = sb.run(&["cleanup"]);
    assert!(
        stderr(&o).contains("would drop the claim of"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
    assert_eq!(sb.claims().len(), 1, "a dry run changes nothing");
    let o = sb.run(&["cleanup", "--yes", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["applied"], true);
    assert_eq!(report["actions"][0]["kind"], "dropClaim");
    assert!(sb.claims().is_empty());
}

#[test]
fn doctor_checks_git_config_layers_and_the_workdir_for_local() {
    let sb = Sandbox::new();
    std::fs::write(sb.root().join(".crabbox.yaml"), "ttl: 2h\n").unwrap();
    let o = sb.run(&["doctor", "--json"]);
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["provider"], "local");
    let checks = v["checks"].as_array().unwrap();
    let named = |n: &'static str| checks.iter().filter(move |c| c["name"] == n);
    assert!(named("git").all(|c| c["status"] == "pass"));
    assert!(named("repository").all(|c| c["status"] == "pass"));
    assert!(
        named("config layer").any(|c| c["detail"]
            .as_str()
            .unwrap()
            .contains(".crabbox.yaml sets ttl")),
        "{checks:?}"
    );
    assert!(named("workdir").all(|c| c["status"] == "pass"));

    // A config file that does not parse: exit 1, the file and line named, with the fix.
    std::fs::write(sb.root().join(".crabbox.yaml"), "ttl: [unclosed\n").unwrap();
    let o = sb.run(&["doctor"]);
    assert_eq!(code(&o), 1, "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("FAIL config") && out.contains(".crabbox.yaml:"),
        "{out}"
    );
    assert!(out.contains("fix:"), "{out}");
}

#[test]
fn doctor_warns_outside_a_git_repository() {
    let sb = Sandbox::new();
    let plain = tempfile::tempdir().unwrap();
    let o = sb
        .cmd(&["doctor", "--json"])
        .current_dir(plain.path())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "a warning is no failure: {}", stdout(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let repo = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "repository")
        .unwrap()
        .clone();
    assert_eq!(repo["status"], "warn", "{repo}");
    assert!(repo["fix"].as_str().unwrap().contains("git init"), "{repo}");
}

/// A sparse file is not turned into a box full of zeros silently: the run names it.
#[test]
fn a_sparse_file_is_named_before_it_is_synced_whole() {
    use std::os::unix::fs::MetadataExt;
    let sb = Sandbox::new();
    let f = std::fs::File::create(sb.root().join("holes.img")).unwrap();
    f.set_len(64 << 20).unwrap();
    assert!(
        f.metadata().unwrap().blocks() * 512 < 32 << 20,
        "the test's filesystem keeps no holes: this test needs one that does"
    );
    let o = sb.run(&["run", "--", "stat", "-c", "%s", "holes.img"]);
    assert_eq!(stdout(&o), format!("{}\n", 64 << 20), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("warning: holes.img is a sparse file: 64.0 MiB long"),
        "{err}"
    );
}
