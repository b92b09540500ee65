//! End to end: what a run brings home and how it is shaped (artifacts, JUnit, captured
//! output, scripts, sync-only, lease handles, detached runs, `crabbox download`), through the
//! real binary, with the local provider and with e2b against the emulator.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use common::*;

const JUNIT: &str = r#"<testsuite name="s"><testcase classname="c" name="passes"/><testcase classname="c" name="breaks"><failure message="expected 1 got 2"/></testcase></testsuite>"#;

/// The outcome `run --json` printed after the command's own output.
fn outcome_of(out: &str) -> serde_json::Value {
    let at = out
        .find("{\n  \"provider\"")
        .expect("a JSON outcome on stdout");
    serde_json::from_str(&out[at..]).unwrap()
}

fn args<'a>(provider: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![rest[0], "--provider", provider];
    v.extend_from_slice(&rest[1..]);
    v
}

/// The suite, for one provider; `boxes` counts the provider's boxes.
fn outputs_work(sb: &Sandbox, provider: &str, boxes: &dyn Fn() -> usize) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.txt");
    let captured = tmp.path().join("stdout.txt");
    let script = format!(
        "mkdir -p out/sub rep && echo data > out/data.txt && echo deep > out/sub/deep.txt && \
         ln -s /etc out/etc && printf '%s' '{JUNIT}' > rep/r.xml && echo hello && exit 4"
    );
    let download = format!("out/data.txt={}", data.display());
    let o = sb.run(&args(
        provider,
        &[
            "run",
            "--shell",
            "--artifact-glob",
            "out/**",
            "--junit",
            "rep/*.xml",
            "--download",
            &download,
            "--capture-stdout",
            captured.to_str().unwrap(),
            "--json",
            "--",
            &script,
        ],
    ));
    assert_eq!(code(&o), 4, "the command's exit code: {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("hello\n"), "{out}");
    let outcome = outcome_of(&out);
    let lease = outcome["leaseId"].as_str().unwrap();
    let dir = sb.root().join(".crabbox/artifacts").join(lease);
    assert_eq!(
        std::fs::read_to_string(dir.join("out/data.txt")).unwrap(),
        "data\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out/sub/deep.txt")).unwrap(),
        "deep\n"
    );
    assert!(
        std::fs::symlink_metadata(dir.join("out/etc")).is_err(),
        "a symlink on the box is never fetched"
    );
    let refused = outcome["artifacts"]["refused"].to_string();
    assert!(refused.contains("out/etc (a symlink)"), "{refused}");
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "data\n");
    assert_eq!(std::fs::read_to_string(&captured).unwrap(), "hello\n");
    assert_eq!(outcome["junit"]["failed"], 1);
    assert_eq!(outcome["junit"]["passed"], 1);
    assert_eq!(outcome["junit"]["failures"][0]["name"], "breaks");
    let err = stderr(&o);
    assert!(err.contains("junit: 2 tests"), "{err}");
    assert!(err.contains("expected 1 got 2"), "{err}");
    assert_eq!(boxes(), 0, "the one-shot box was released after fetching");

    // A passing command whose required artifact is missing fails with 6, naming it.
    let o = sb.run(&args(
        provider,
        &[
            "run",
            "--require-artifact",
            "coverage/lcov.info",
            "--",
            "true",
        ],
    ));
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert!(stderr(&o).contains("coverage/lcov.info"), "{}", stderr(&o));

    // A command past its --timeout: its tree is stopped, exit 124, said so.
    let stubborn = if provider == "local" {
        "sleep 303"
    } else {
        "sleep 304"
    };
    let o = sb.run(&args(
        provider,
        &[
            "run",
            "--timeout",
            "3s",
            "--shell",
            "--",
            &format!("{stubborn} & wait"),
        ],
    ));
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
    assert!(
        survivors_after_grace(stubborn).is_empty(),
        "the whole tree was stopped"
    );

    // A script from stdin, with its arguments.
    let mut child = sb
        .cmd(&args(
            provider,
            &["run", "--script-stdin", "--", "one", "two words"],
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"printf '%s|' \"$@\"; echo; exit 3\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert_eq!(stdout(&o), "one|two words|\n");

    // Sync-only leaves a warm box with the tree, and its handle in a file.
    let handle = tmp.path().join("lease.json");
    ok(sb.run(&args(
        provider,
        &[
            "run",
            "--sync-only",
            "--lease-output",
            handle.to_str().unwrap(),
        ],
    )));
    let h: serde_json::Value = serde_json::from_slice(&std::fs::read(&handle).unwrap()).unwrap();
    let lease = h["leaseId"].as_str().unwrap().to_string();
    assert_eq!(h["provider"], provider);
    assert!(h["remoteId"].as_str().is_some_and(|r| !r.is_empty()));
    let listed = ok(sb.run(&args(
        provider,
        &[
            "run",
            "--id",
            &lease,
            "--no-sync",
            "--",
            "ls",
            "tracked.txt",
        ],
    )));
    assert_eq!(listed, "tracked.txt\n", "the synced tree is on the box");

    // A detached run: its output while nobody watched is all in `logs`.
    let run_id = ok(sb.run(&args(
        provider,
        &[
            "run",
            "--id",
            &lease,
            "--detach",
            "--shell",
            "--",
            "echo first; echo second >&2; while [ ! -e go ]; do sleep 0.05; done; echo after; exit 5",
        ],
    )))
    .trim()
    .to_string();
    assert_eq!(run_id.len(), 32, "{run_id}");
    let runs: serde_json::Value =
        serde_json::from_str(&ok(sb.run(&args(provider, &["runs", "--json"])))).unwrap();
    assert_eq!(runs[0]["runId"], run_id.as_str());
    ok(sb.run(&args(
        provider,
        &["run", "--id", &lease, "--no-sync", "--", "touch", "go"],
    )));
    let o = sb.run(&args(provider, &["wait", &run_id]));
    assert_eq!(
        code(&o),
        5,
        "wait exits with the run's code: {}",
        stderr(&o)
    );
    let logs = ok(sb.run(&args(provider, &["logs", &run_id[..10]])));
    assert_eq!(logs, "first\nsecond\nafter\n");
    let runs: serde_json::Value = serde_json::from_str(&ok(
        sb.run(&args(provider, &["runs", "--id", &lease, "--json"]))
    ))
    .unwrap();
    assert_eq!(runs[0]["state"], "exited");
    assert_eq!(runs[0]["exitCode"], 5);

    // A detached run that never ends is stopped by `kill`.
    let run_id = ok(sb.run(&args(
        provider,
        &["run", "--id", &lease, "--detach", "--", "sleep", "3600"],
    )))
    .trim()
    .to_string();
    ok(sb.run(&args(provider, &["kill", &run_id])));
    let o = sb.run(&args(provider, &["wait", &run_id]));
    assert_eq!(code(&o), 143, "{}", stderr(&o));

    // `crabbox download` from a kept box: a directory, and a missing path.
    let got = tmp.path().join("got");
    ok(sb.run(&args(
        provider,
        &[
            "run",
            "--id",
            &lease,
            "--shell",
            "--",
            "mkdir -p res/a && echo r > res/a/r.txt",
        ],
    )));
    ok(sb.run(&args(
        provider,
        &["download", &lease, "res", got.to_str().unwrap()],
    )));
    assert_eq!(std::fs::read_to_string(got.join("a/r.txt")).unwrap(), "r\n");
    let o = sb.run(&args(provider, &["download", &lease, "nope", "x"]));
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    ok(sb.run(&args(provider, &["stop", &lease])));
    assert_eq!(boxes(), 0);
    assert!(!Path::new(&got.join("../x")).exists());
}

#[test]
fn outputs_work_with_the_local_provider() {
    let sb = Sandbox::new();
    let boxes = || local_box_count(&sb);
    outputs_work(&sb, "local", &boxes);
}

#[test]
fn outputs_work_with_e2b() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let boxes = || e2b_box_count(&sb);
    outputs_work(&sb, "e2b", &boxes);
}

/// Peak resident set of a process that is still running, KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

#[test]
fn a_200_mb_artifact_comes_home_with_flat_memory() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("big.bin");
    let download = format!("big.bin={}", local.display());
    let mut child = sb
        .cmd(&[
            "run",
            "--provider",
            "e2b",
            "--shell",
            "--download",
            &download,
            "--",
            "head -c 200000000 /dev/zero > big.bin",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(v) = vm_hwm_kib(pid) {
            peak = peak.max(v);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        // Sampling a monotonic high-water mark, not waiting for an event.
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success());
    assert_eq!(std::fs::metadata(&local).unwrap().len(), 200_000_000);
    assert!(
        peak < 100 * 1024,
        "crabbox held {peak} KiB while downloading 200 MB: not streamed"
    );
}
