//! The fault matrix: the real `crabbox` binary against the emulator binary with faults
//! programmed into it (overload answers, stalls past the control timeout, connections reset
//! before and after the request reached the service, a command stream dropped after some
//! output, a sandbox killed under a request, a failing DELETE), over warmup, one-shot `run`,
//! `run --id`, `status`, `stop` and `list`. Each case asserts the exit code, a message that
//! names the sandbox or lease and the next step, that every fault it programs fired, and
//! then: no sandbox leaked (every sandbox left is claimed), every claim parses and names a
//! sandbox that runs (unless the error told to `crabbox stop` it), no secret in any output
//! or state file.

mod common;

use common::*;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Warmup,
    RunOneShot,
    RunId,
    Status,
    Stop,
    List,
}

struct Case {
    name: &'static str,
    op: Op,
    /// The command's sync is skipped, so the only process Start is the command's own.
    no_sync: bool,
    faults: Value,
    code: i32,
    /// Substrings stderr must hold.
    says: &'static [&'static str],
}

fn fault(plane: &str, method: &str, path: &str, count: u32, action: Value) -> Value {
    json!({"plane": plane, "method": method, "path": path, "count": count, "action": action})
}

fn status(code: u16) -> Value {
    json!({"status": {"status": code}})
}

fn status_after(code: u16, secs: u64) -> Value {
    json!({"status": {"status": code, "retryAfter": secs}})
}

/// Longer than the control timeout the tests configure (2 s).
fn stall() -> Value {
    json!({"stall": {"ms": 2500}})
}

const CREATE: (&str, &str, &str) = ("control", "POST", "/v2/sandboxes");
const GET: (&str, &str, &str) = ("control", "GET", "/sandboxes/*");
const DELETE: (&str, &str, &str) = ("control", "DELETE", "/sandboxes/*");
const CONNECT: (&str, &str, &str) = ("control", "POST", "/v2/sandboxes/*/connect");
const LIST: (&str, &str, &str) = ("control", "GET", "/v2/sandboxes");
const START: (&str, &str, &str) = ("envd", "POST", "/process.Process/Start");
const UPLOAD: (&str, &str, &str) = ("envd", "POST", "/files");

fn on(call: (&str, &str, &str), count: u32, action: Value) -> Value {
    json!([fault(call.0, call.1, call.2, count, action)])
}

/// What the user is told to do next, in one of its forms.
const NEXT_STEPS: &[&str] = &[
    "retry later",
    "crabbox stop",
    "run it again",
    "crabbox run",
    "run on a new one",
];

fn cases() -> Vec<Case> {
    use Op::*;
    let c = |name, op, faults, code, says| Case {
        name,
        op,
        no_sync: false,
        faults,
        code,
        says,
    };
    let quiet = |name, op, faults, code, says| Case {
        name,
        op,
        no_sync: true,
        faults,
        code,
        says,
    };
    vec![
        // warmup: a create is never retried; whatever E2B may have made is found by its tag.
        c(
            "warmup/create 503",
            Warmup,
            on(CREATE, 1, status_after(503, 1)),
            1,
            &["E2B is unavailable", "retry later"],
        ),
        c(
            "warmup/create 429",
            Warmup,
            on(CREATE, 1, status(429)),
            1,
            &["E2B is rate limiting", "retry later"],
        ),
        c(
            "warmup/create reset before",
            Warmup,
            on(CREATE, 1, json!("resetBefore")),
            1,
            &["retry later"],
        ),
        c(
            "warmup/create reset after",
            Warmup,
            on(CREATE, 1, json!("resetAfter")),
            1,
            &["deleted box", "retry later"],
        ),
        c(
            "warmup/create stall",
            Warmup,
            on(CREATE, 1, stall()),
            1,
            &["timed out", "retry later"],
        ),
        // one-shot run
        c(
            "run/create 503",
            RunOneShot,
            on(CREATE, 1, status(503)),
            1,
            &["E2B is unavailable"],
        ),
        c(
            "run/upload 502",
            RunOneShot,
            on(UPLOAD, 1, status(502)),
            1,
            &["workdir is unchanged", "retry later"],
        ),
        quiet(
            "run/command stream dropped",
            RunOneShot,
            on(START, 1, json!({"dropStreamAfter": {"chunks": 2}})),
            1,
            &["lost the connection to the command", "run it again"],
        ),
        quiet(
            "run/sandbox killed at start",
            RunOneShot,
            on(START, 1, json!("killSandbox")),
            4,
            &["is no longer running"],
        ),
        quiet(
            "run/delete 500",
            RunOneShot,
            on(DELETE, 1, status(500)),
            1,
            &["could not delete", "crabbox stop --provider e2b cbx_"],
        ),
        quiet(
            "run/delete 503 twice",
            RunOneShot,
            on(DELETE, 2, status(503)),
            0,
            &[],
        ),
        quiet(
            "run/delete reset before",
            RunOneShot,
            on(DELETE, 1, json!("resetBefore")),
            0,
            &[],
        ),
        quiet(
            "run/delete reset after",
            RunOneShot,
            on(DELETE, 1, json!("resetAfter")),
            0,
            &[],
        ),
        // run --id: lookups and connects are retried, the command's stream is not.
        c(
            "run --id/get 503 twice",
            RunId,
            on(GET, 2, status(503)),
            0,
            &[],
        ),
        c(
            "run --id/get 503 Retry-After 3600",
            RunId,
            on(GET, 3, status_after(503, 3600)),
            1,
            &[
                "gave up after 3 attempts",
                "E2B asked to wait 3600s",
                "crabbox waits at most 100ms",
            ],
        ),
        c(
            "run --id/connect stall",
            RunId,
            on(CONNECT, 3, stall()),
            1,
            &["timed out", "retry later"],
        ),
        c(
            "run --id/connect reset before",
            RunId,
            on(CONNECT, 1, json!("resetBefore")),
            0,
            &[],
        ),
        c(
            "run --id/scan stream dropped",
            RunId,
            on(START, 1, json!({"dropStreamAfter": {"chunks": 1}})),
            1,
            &["retry"],
        ),
        quiet(
            "run --id/command stream dropped",
            RunId,
            on(START, 1, json!({"dropStreamAfter": {"chunks": 2}})),
            1,
            &[
                "lost the connection to the command",
                "crabbox run --provider e2b --id cbx_",
            ],
        ),
        quiet(
            "run --id/sandbox killed at start",
            RunId,
            on(START, 1, json!("killSandbox")),
            4,
            &["is no longer running", "crabbox stop --provider e2b cbx_"],
        ),
        // status
        c(
            "status/get 503",
            Status,
            on(GET, 3, status(503)),
            1,
            &["E2B is unavailable", "retry later"],
        ),
        c(
            "status/get reset before",
            Status,
            on(GET, 1, json!("resetBefore")),
            0,
            &[],
        ),
        c("status/get stall once", Status, on(GET, 1, stall()), 0, &[]),
        c(
            "status/sandbox killed",
            Status,
            on(GET, 1, json!("killSandbox")),
            4,
            &["crabbox stop --provider e2b cbx_"],
        ),
        // stop: a claim goes only once its sandbox is gone.
        c(
            "stop/delete 500",
            Stop,
            on(DELETE, 1, status(500)),
            1,
            &["HTTP 500", "crabbox stop"],
        ),
        c(
            "stop/delete reset before",
            Stop,
            on(DELETE, 1, json!("resetBefore")),
            0,
            &[],
        ),
        c(
            "stop/delete reset after",
            Stop,
            on(DELETE, 1, json!("resetAfter")),
            0,
            &[],
        ),
        c(
            "stop/get 429",
            Stop,
            on(GET, 3, status(429)),
            1,
            &["E2B is rate limiting", "retry later"],
        ),
        // list
        c(
            "list/429 Retry-After 3600",
            List,
            on(LIST, 3, status_after(429, 3600)),
            1,
            &["E2B is rate limiting", "retry later"],
        ),
        c(
            "list/stall",
            List,
            on(LIST, 3, stall()),
            1,
            &["timed out", "retry later"],
        ),
        c(
            "list/reset before twice",
            List,
            on(LIST, 2, json!("resetBefore")),
            0,
            &[],
        ),
        c("list/503 once", List, on(LIST, 1, status(503)), 0, &[]),
    ]
}

fn fast(sb: Sandbox) -> Sandbox {
    sb.with_env("CRABBOX_PROVIDER", "e2b")
        // Short, so that stalls cost little, yet room for a loaded machine's sandbox start
        // (every control call has it, create included).
        .with_env("CRABBOX_E2B_CONTROL_TIMEOUT", "2s")
        .with_env("CRABBOX_E2B_RETRY_MAX_WAIT", "100ms")
}

fn warmup(sb: &Sandbox) -> (String, String) {
    let out = ok(sb.run(&["warmup", "--json"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    (
        v["leaseId"].as_str().unwrap().to_string(),
        v["remoteId"].as_str().unwrap().to_string(),
    )
}

fn run_case(emu: &Emulator, case: &Case) -> Result<(), String> {
    let sb = fast(emu.sandbox());
    let held = match case.op {
        Op::RunId | Op::Status | Op::Stop => Some(warmup(&sb)),
        _ => None,
    };
    let lease = held.as_ref().map(|h| h.0.clone()).unwrap_or_default();
    let mut args: Vec<&str> = match case.op {
        Op::Warmup => vec!["warmup"],
        Op::RunOneShot => vec!["run"],
        Op::RunId => vec!["run", "--id", &lease],
        Op::Status => vec!["status", "--id", &lease],
        Op::Stop => vec!["stop", &lease],
        Op::List => vec!["list"],
    };
    if matches!(case.op, Op::RunOneShot | Op::RunId) {
        if case.no_sync {
            args.push("--no-sync");
        }
        args.extend(["--", "sh", "-c", "echo first; sleep 1; echo second"]);
    }
    emu.arm(case.faults.clone());
    let o = sb.run(&args);
    let fired = emu.faults();
    emu.clear_faults();
    let (out, err) = (stdout(&o), stderr(&o));
    let context = format!("exit {}\nstdout: {out}\nstderr: {err}", code(&o));

    if code(&o) != case.code {
        return Err(format!("expected exit {}; {context}", case.code));
    }
    for f in &fired {
        if f["fired"] != f["count"] {
            return Err(format!(
                "fault {f} did not fire as often as programmed; {context}"
            ));
        }
    }
    for s in case.says {
        if !err.contains(s) {
            return Err(format!("stderr lacks {s:?}; {context}"));
        }
    }
    if case.code != 0 {
        let names = match &held {
            Some((lease, sandbox)) => {
                err.contains(lease.as_str()) || err.contains(sandbox.as_str())
            }
            None if case.op == Op::List => err.contains("listing sandboxes"),
            None => err.contains("cbx_") || err.contains("sandbox i"),
        };
        if !names {
            return Err(format!("the error names no sandbox or lease; {context}"));
        }
        if !NEXT_STEPS.iter().any(|s| err.contains(s)) {
            return Err(format!("the error gives no next step; {context}"));
        }
    }
    assert_no_secret(&emu.key, &[&out, &err], &sb.state);

    // Claims and sandboxes agree: no sandbox without a claim, every claim parses and names a
    // running sandbox unless the error said to stop its lease.
    let running = emu.sandbox_ids();
    let claims = sb.claims();
    let claimed: Vec<String> = claims
        .iter()
        .map(|c| c["remoteId"].as_str().unwrap_or_default().to_string())
        .collect();
    for id in &running {
        if !claimed.contains(id) {
            return Err(format!("sandbox {id} leaked: no claim names it; {context}"));
        }
    }
    for (claim, id) in claims.iter().zip(&claimed) {
        let lease = claim["leaseId"].as_str().unwrap();
        if !running.contains(id) && !err.contains(&format!("crabbox stop --provider e2b {lease}")) {
            return Err(format!("claim {lease} names sandbox {id:?}, which is gone, and nobody said to stop it; {context}"));
        }
    }
    // `crabbox cleanup --yes` then leaves nothing behind.
    ok(sb.run(&["cleanup", "--yes"]));
    for claim in sb.claims() {
        ok(sb.run(&["stop", claim["leaseId"].as_str().unwrap()]));
    }
    if !emu.sandbox_ids().is_empty() || !sb.claims().is_empty() {
        return Err(format!(
            "cleanup and stop left {:?} and {} claims; {context}",
            emu.sandbox_ids(),
            sb.claims().len()
        ));
    }
    Ok(())
}

#[test]
fn every_fault_over_every_command_keeps_the_promises() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let mut failures = Vec::new();
    for case in cases() {
        let t = std::time::Instant::now();
        let result = run_case(&emu, &case);
        eprintln!(
            "{:<40} {:>5} ms {}",
            case.name,
            t.elapsed().as_millis(),
            if result.is_ok() { "ok" } else { "FAILED" }
        );
        if let Err(e) = result {
            failures.push(format!("{}: {e}", case.name));
        }
        // The next case starts with no sandbox, whatever this one left.
        for id in emu.sandbox_ids() {
            emu.kill_sandbox(&id);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A sandbox deleted while its command runs: E2B's proxy drops the command's stream (the
/// emulator does too), and crabbox asks the control plane and says the sandbox is gone,
/// exit 4, naming the lease to stop.
#[test]
fn a_sandbox_deleted_mid_command_is_reported_gone_with_exit_4() {
    use std::io::{BufRead, BufReader};
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = fast(emu.sandbox());
    let (lease, sandbox) = warmup(&sb);
    let mut child = sb
        .cmd(&[
            "run",
            "--id",
            &lease,
            "--no-sync",
            "--",
            "sh",
            "-c",
            "echo up; sleep 60",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "up");
    emu.kill_sandbox(&sandbox);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains(&format!("sandbox {sandbox} is no longer running")),
        "{err}"
    );
    assert!(
        err.contains(&format!("crabbox stop --provider e2b {lease}")),
        "{err}"
    );
    ok(sb.run(&["stop", &lease]));
    assert!(sb.claims().is_empty());
}

/// When the command's stream breaks while its sandbox still runs, nobody would see the
/// command any more: crabbox stops it (and everything it started) on the kept box, and says
/// how to run it again.
#[test]
fn a_dropped_command_stream_stops_the_command_on_a_kept_box() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = fast(emu.sandbox());
    let (lease, _) = warmup(&sb);
    let token = format!("crabbox-dropped-{}", std::process::id());
    let script = format!("echo first; sleep 300 & wait # {token}");
    emu.arm(on(START, 1, json!({"dropStreamAfter": {"chunks": 2}})));
    let o = sb.run(&[
        "run",
        "--id",
        &lease,
        "--no-sync",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(stdout(&o), "first\n");
    let err = stderr(&o);
    assert!(err.contains("the command was stopped"), "{err}");
    assert!(
        err.contains(&format!("crabbox run --provider e2b --id {lease}")),
        "{err}"
    );
    assert!(
        survivors_after_grace(&token).is_empty(),
        "the command outlived its lost stream"
    );
    ok(sb.run(&["stop", &lease]));
}
