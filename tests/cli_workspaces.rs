//! End to end: workspaces on one lease (`run --workspace`, `crabbox workspaces`, `workspaces
//! rm`), through the real binary, with the local provider and with e2b against the emulator.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::*;

fn args<'a>(provider: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![rest[0], "--provider", provider];
    v.extend_from_slice(&rest[1..]);
    v
}

fn listed(sb: &Sandbox, provider: &str, lease: &str) -> serde_json::Value {
    serde_json::from_str(&ok(
        sb.run(&args(provider, &["workspaces", lease, "--json"]))
    ))
    .unwrap()
}

fn names(list: &serde_json::Value) -> Vec<String> {
    list["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect()
}

/// The suite, for one provider.
fn workspaces_work(sb: &Sandbox, provider: &str) {
    let lease = ok(sb.run(&args(provider, &["warmup"]))).trim().to_string();
    let marker = format!("/tmp/crabbox-ws-test-{lease}");
    // Run A, in workspace `a`, with a tree that has a-only.txt: it says when its command
    // started, then waits (up to 20 s) for run B's command before listing its tree.
    std::fs::write(sb.root().join("a-only.txt"), "a\n").unwrap();
    let script_a = format!(
        "echo started; for i in $(seq 200); do [ -e {marker} ] && echo saw-b && break; \
         sleep 0.1; done; ls; cat tracked.txt"
    );
    let mut a = sb
        .cmd(&args(
            provider,
            &[
                "run",
                "--id",
                &lease,
                "--workspace",
                "a",
                "--shell",
                "--",
                &script_a,
            ],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut a_out = BufReader::new(a.stdout.take().unwrap());
    let mut first = String::new();
    a_out.read_line(&mut first).unwrap();
    assert_eq!(first, "started\n", "run A's command did not start");
    // Run B, in workspace `b`, with another tree, while A's command runs.
    std::fs::remove_file(sb.root().join("a-only.txt")).unwrap();
    std::fs::write(sb.root().join("b-only.txt"), "b\n").unwrap();
    std::fs::write(sb.root().join("tracked.txt"), "changed for b\n").unwrap();
    let out_b = ok(sb.run(&args(
        provider,
        &[
            "run",
            "--id",
            &lease,
            "--workspace",
            "b",
            "--shell",
            "--",
            &format!("touch {marker}; ls; cat tracked.txt"),
        ],
    )));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut a_out, &mut rest).unwrap();
    let status = a.wait().unwrap();
    assert!(status.success(), "run A failed: {rest}");
    assert!(
        rest.starts_with("saw-b\n"),
        "the runs did not overlap: {rest}"
    );
    assert!(rest.contains("a-only.txt"), "{rest}");
    assert!(!rest.contains("b-only.txt"), "{rest}");
    assert!(
        rest.ends_with("tracked\n"),
        "A's tree was changed under it: {rest}"
    );
    assert!(out_b.contains("b-only.txt"), "{out_b}");
    assert!(!out_b.contains("a-only.txt"), "{out_b}");
    assert!(out_b.ends_with("changed for b\n"), "{out_b}");

    // Main is the workdir, untouched by either.
    let out = ok(sb.run(&args(provider, &["run", "--id", &lease, "--", "ls"])));
    assert!(
        out.contains("b-only.txt") && !out.contains("a-only.txt"),
        "{out}"
    );

    let list = listed(sb, provider, &lease);
    assert_eq!(list["leaseId"], lease.as_str());
    assert_eq!(names(&list), ["main", "a", "b"], "{list}");
    for w in list["workspaces"].as_array().unwrap() {
        assert!(w["lastSync"].is_string(), "{w}");
    }
    let text = ok(sb.run(&args(provider, &["workspaces", &lease])));
    assert!(text.lines().any(|l| l.starts_with("a ")), "{text}");

    ok(sb.run(&args(provider, &["workspaces", "rm", &lease, "a"])));
    assert_eq!(names(&listed(sb, provider, &lease)), ["main", "b"]);
    let o = sb.run(&args(provider, &["workspaces", "rm", &lease, "a"]));
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    let o = sb.run(&args(provider, &["workspaces", "rm", &lease, "main"]));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    for bad in ["../x", "a/b", ".hidden"] {
        let o = sb.run(&args(
            provider,
            &["run", "--id", &lease, "--workspace", bad, "--", "true"],
        ));
        assert_eq!(code(&o), 2, "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("workspace name"), "{}", stderr(&o));
    }
    // `workspace:` in YAML picks one too.
    std::fs::write(sb.root().join(".crabbox.yaml"), "workspace: b\n").unwrap();
    let out = ok(sb.run(&args(provider, &["run", "--id", &lease, "--", "pwd"])));
    assert!(out.trim_end().ends_with("/b"), "{out}");
    std::fs::remove_file(sb.root().join(".crabbox.yaml")).unwrap();

    ok(sb.run(&args(provider, &["stop", &lease])));
    let _ = std::fs::remove_file(&marker);
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn workspaces_work_with_the_local_provider() {
    let sb = Sandbox::new();
    workspaces_work(&sb, "local");
    let left: Vec<_> = std::fs::read_dir(sb.state.join("crabbox/boxes"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a stopped box leaves nothing: {left:?}");
}

#[test]
fn workspaces_work_with_e2b() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    workspaces_work(&sb, "e2b");
}
