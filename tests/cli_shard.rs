//! End to end: `crabbox shard` through the real binary, with the local provider and with e2b
//! against the emulator (both fork the one synced box).

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::*;

fn args<'a>(provider: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![rest[0], "--provider", provider];
    v.extend_from_slice(&rest[1..]);
    v
}

const REPORT: &str = "mkdir -p rep && if [ {{index}} = 2 ]; then printf '<testsuite><testcase classname=\"k\" name=\"t{{index}}\"><failure message=\"broke in {{index}}\"/></testcase></testsuite>' > rep/r.xml; exit 3; fi; printf '<testsuite><testcase classname=\"k\" name=\"t{{index}}\"/></testsuite>' > rep/r.xml";

fn shard_works(sb: &Sandbox, provider: &str, boxes: &dyn Fn() -> usize) {
    let template = format!(
        "echo \"{{{{index}}}}/{{{{total}}}} $CRABBOX_SHARD_INDEX/$CRABBOX_SHARD_TOTAL {{{{lease}}}}\" && cat tracked.txt >/dev/null && {REPORT}"
    );
    let o = sb.run(&args(
        provider,
        &[
            "shard",
            "--count",
            "3",
            "--shell",
            "--junit",
            "rep/*.xml",
            "--json",
            "--",
            &template,
        ],
    ));
    assert_eq!(code(&o), 3, "the failing shard's code: {}", stderr(&o));
    let out = stdout(&o);
    let at = out.find("{\n").expect("a JSON verdict");
    let verdict: serde_json::Value = serde_json::from_str(&out[at..]).unwrap();
    for i in 1..=3 {
        let lease = verdict["shards"][i - 1]["leaseId"].as_str().unwrap();
        let line = format!("[{i}/3] {i}/3 {i}/3 {lease}\n");
        assert!(out.contains(&line), "{line:?} in {out}");
    }
    assert_eq!(verdict["uploads"], 1, "synced once, then forked");
    assert_eq!(verdict["plan"]["forked"], true);
    assert_eq!(verdict["junit"]["tests"], 3);
    assert_eq!(verdict["junit"]["failed"], 1);
    assert_eq!(verdict["failedCases"][0][0], 2);
    let err = stderr(&o);
    assert!(
        err.contains("shard: 3 shards on"),
        "the plan is said first: {err}"
    );
    assert!(err.contains("[2/3] FAILURE k.t2: broke in 2"), "{err}");
    assert!(err.contains("2 of 3 shards passed"), "{err}");
    assert_eq!(boxes(), 0, "every shard's box and the source are released");

    // Over the cap: refused before anything exists.
    let o = sb.run(&args(provider, &["shard", "--count", "21", "--", "true"]));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("shard.maxCount"));

    // Ctrl-C while every shard runs: 130, and nothing is left.
    let stubborn = format!("echo started-{{{{index}}}}; sleep {}", sleep_for(provider));
    let mut child = sb
        .cmd(&args(
            provider,
            &["shard", "--count", "2", "--shell", "--", &stubborn],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut started = 0;
    while started < 2 {
        let line = lines.next().expect("a line").unwrap();
        if line.contains("started-") {
            started += 1;
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(boxes(), 0, "Ctrl-C releases every shard");
}

/// A sleep only this provider's test runs (the tests run side by side).
fn sleep_for(provider: &str) -> u32 {
    if provider == "local" {
        3601
    } else {
        3602
    }
}

#[test]
fn shard_works_with_the_local_provider() {
    let sb = Sandbox::new();
    let boxes = || local_box_count(&sb);
    shard_works(&sb, "local", &boxes);
    assert!(
        survivors_after_grace(&format!("sleep {}", sleep_for("local"))).is_empty(),
        "no shard's command survives"
    );
}

#[test]
fn shard_works_with_e2b() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let boxes = || e2b_box_count(&sb);
    shard_works(&sb, "e2b", &boxes);
}
